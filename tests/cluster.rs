//! Three real Gatehouse processes in front of one backend, sharing one real `redis-server`
//! (`[cluster]`, `docs/cluster.md`): a client spread over them gets its budget once, not three
//! times; one under its limit is never refused and costs few store calls; and a store that is
//! killed or paused costs no request an error or a wait longer than `[cluster] timeout`.
//!
//! Needs `redis-server` (Debian package `redis-server`; `tests/run.sh` installs it). Each test
//! starts its own on a unix socket in a temporary folder, without persistence.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::redis::Redis;
use support::*;

/// The tests whose figures are rates and latencies take turns (the harness runs two at once):
/// a flood driven at 300 requests a second next to another test's traffic falls below what a
/// flood is on a 2-core machine, and its store-call bound then measures the neighbour.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &str = "cluster-test-secret-0123456789";

struct Cluster {
    proxies: Vec<TestProxy>,
    admins: Vec<std::net::SocketAddr>,
    _backend: Backend,
}

fn config(backend: &Backend, store: &str, cluster: &str, limit: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 2

[cluster]
store = "{store}"
secret = "{SECRET}"
{cluster}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"
  rate_limit = {limit}

[upstream.backend]
servers = ["{}"]
"#,
        backend.addr
    )
}

async fn cluster(store: &str, cluster: &str, limit: &str) -> Cluster {
    let backend = serve("backend", |_req| async { text_response(200, "ok") }).await;
    let text = config(&backend, store, cluster, limit);
    let mut proxies = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..3 {
        let proxy = TestProxy::start(&text).await;
        admins.push(proxy.admin_addr().await);
        proxies.push(proxy);
    }
    Cluster {
        proxies,
        admins,
        _backend: backend,
    }
}

impl Cluster {
    fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(|p| p.url("/x")).collect()
    }

    /// One metric of each instance (0 when absent).
    async fn metric(&self, name: &str) -> Vec<f64> {
        let client = client();
        let mut values = Vec::new();
        for admin in &self.admins {
            let text = match client.get(format!("http://{admin}/metrics")).send().await {
                Ok(resp) => resp.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            values.push(value);
        }
        values
    }

    /// Until every instance counts in the store (each connects in the background).
    async fn wait_global(&self) {
        let up = poll_until(Duration::from_secs(10), || async {
            self.metric("gatehouse_cluster_store_up")
                .await
                .iter()
                .all(|v| *v == 1.0)
        })
        .await;
        assert!(up.is_some(), "the instances never reached the store");
    }
}

/// One request of a run: when it was sent (since the run began), its status (0: no answer),
/// how long it took.
#[derive(Clone, Copy, Debug)]
struct Sent {
    at: Duration,
    status: u16,
    took: Duration,
}

/// `rate` requests a second for `secs`, from one client address, round robin over `urls`.
async fn drive(urls: &[String], rate: f64, secs: f64) -> Vec<Sent> {
    let client = client();
    let t0 = tokio::time::Instant::now();
    let n = (rate * secs) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        let (client, url) = (client.clone(), urls[i % urls.len()].clone());
        tasks.spawn(async move {
            let sent = tokio::time::Instant::now();
            let status = match client.get(&url).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let _ = resp.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            Sent {
                at: sent - t0,
                status,
                took: sent.elapsed(),
            }
        });
    }
    let mut sent = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        sent.push(done.expect("request task"));
    }
    sent.sort_by_key(|s| s.at);
    sent
}

fn count(sent: &[Sent], status: u16) -> usize {
    sent.iter().filter(|s| s.status == status).count()
}

fn percentile(mut took: Vec<Duration>, p: f64) -> Duration {
    took.sort();
    took[((took.len() as f64 * p) as usize).min(took.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_twice_its_limit_over_three_instances_gets_its_budget_once() {
    let _alone = TIMED.lock().await;
    with_timeout(60, async {
        let redis = Redis::start();
        // 40 a second, 20 at once; a generous timeout: this test is about counting
        let limit = r#"{ requests = 40, per = "1s", burst = 20 }"#;
        let c = cluster(&redis.url(), r#"timeout = "250ms""#, limit).await;
        c.wait_global().await;
        let sent = drive(&c.urls(), 80.0, 4.0).await;
        let admitted = count(&sent, 200);
        assert_eq!(admitted + count(&sent, 429), sent.len(), "{sent:?}");
        // what one GCRA admits from the first request to the last
        let window = sent[sent.len() - 1].at - sent[0].at;
        let budget = 20.0 + 40.0 * window.as_secs_f64();
        let ratio = admitted as f64 / budget;
        eprintln!(
            "admitted {admitted} of {} sent; budget {budget:.1}; ratio {ratio:.3}",
            sent.len()
        );
        let fallbacks = c.metric("gatehouse_cluster_fallbacks_total").await;
        assert_eq!(
            fallbacks, [0.0; 3],
            "the store fell behind: the count is not the store's"
        );
        assert!(
            (0.95..=1.01).contains(&ratio),
            "admitted {admitted}, budget {budget:.1}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_80_percent_is_never_refused_and_costs_few_store_calls() {
    let _alone = TIMED.lock().await;
    with_timeout(60, async {
        let redis = Redis::start();
        let limit = r#"{ requests = 50, per = "1s", burst = 50 }"#;
        let c = cluster(&redis.url(), r#"timeout = "250ms""#, limit).await;
        c.wait_global().await;
        let before = redis.script_calls();
        let sent = drive(&c.urls(), 40.0, 4.0).await;
        let calls = redis.script_calls() - before;
        let admitted = count(&sent, 200);
        let per_request = calls as f64 / admitted as f64;
        eprintln!("{admitted} admitted with {calls} store calls: {per_request:.3} per request");
        assert_eq!(admitted, sent.len(), "{sent:?}");
        assert!(
            calls > 0,
            "the store was never asked: the limit is not global"
        );
        assert!(per_request <= 0.2, "{calls} calls for {admitted} requests");
    })
    .await;
}

/// Watches every instance's `name` (every 50 ms) until each has met `cond` or `max` passed; the
/// time each took (`None`: never).
async fn time_until(
    c: &Cluster,
    name: &str,
    max: Duration,
    cond: impl Fn(f64) -> bool,
) -> Vec<Option<Duration>> {
    let start = Instant::now();
    let mut met = vec![None; c.admins.len()];
    while start.elapsed() < max && met.iter().any(Option::is_none) {
        for (i, value) in c.metric(name).await.into_iter().enumerate() {
            if met[i].is_none() && cond(value) {
                met[i] = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    met
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_store_costs_no_error_and_limits_fall_back_and_come_back() {
    let _alone = TIMED.lock().await;
    with_timeout(80, async {
        let mut redis = Redis::start();
        // at 1.5 times its limit the client's leases are one token: every instance calls often
        let limit = r#"{ requests = 40, per = "1s", burst = 20 }"#;
        let c = Arc::new(cluster(&redis.url(), "", limit).await);
        c.wait_global().await;
        let urls = c.urls();
        let traffic = tokio::spawn(async move { drive(&urls, 60.0, 7.0).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.kill();
        let down = time_until(
            &c,
            "gatehouse_cluster_fallbacks_total",
            Duration::from_secs(3),
            |v| v >= 1.0,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.restart();
        let back = time_until(
            &c,
            "gatehouse_cluster_store_up",
            Duration::from_secs(4),
            |v| v == 1.0,
        )
        .await;
        let sent = traffic.await.expect("traffic");
        eprintln!("fell back after {down:?}; global again after {back:?}");
        let failed: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.status == 0 || s.status >= 500)
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        for (i, d) in down.iter().enumerate() {
            assert!(
                d.is_some_and(|d| d <= Duration::from_secs(1)),
                "instance {i} fell back after {d:?}"
            );
        }
        for (i, b) in back.iter().enumerate() {
            assert!(
                b.is_some_and(|b| b <= Duration::from_secs(2)),
                "instance {i} global again after {b:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_store_delays_no_request_beyond_the_timeout() {
    let _alone = TIMED.lock().await;
    with_timeout(80, async {
        let redis = Redis::start();
        let limit = r#"{ requests = 40, per = "1s", burst = 20 }"#;
        let timeout = Duration::from_millis(50);
        let c = cluster(&redis.url(), r#"timeout = "50ms""#, limit).await;
        c.wait_global().await;
        let urls = c.urls();
        let traffic = tokio::spawn(async move { drive(&urls, 60.0, 6.0).await });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.signal("STOP");
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.signal("CONT");
        let sent = traffic.await.expect("traffic");
        let during: Vec<Duration> = sent
            .iter()
            .filter(|s| (Duration::from_millis(1500)..Duration::from_millis(4500)).contains(&s.at))
            .map(|s| s.took)
            .collect();
        let max = during.iter().max().copied().unwrap_or_default();
        eprintln!(
            "while paused: {} requests, p50 {:?}, p99 {:?}, max {max:?}",
            during.len(),
            percentile(during.clone(), 0.5),
            percentile(during.clone(), 0.99)
        );
        let failed: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.status == 0 || s.status >= 500)
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        let fallbacks = c.metric("gatehouse_cluster_fallbacks_total").await;
        assert!(
            fallbacks.iter().all(|f| *f >= 1.0),
            "no fallback while paused: {fallbacks:?}"
        );
        // the timeout, and slack for a loaded machine running debug builds
        let slack = Duration::from_millis(300);
        assert!(
            max <= timeout + slack,
            "a request took {max:?} while the store was paused"
        );
    })
    .await;
}

/// The figures of `docs/cluster.md` (bounds only loose: a loaded debug build): the same client
/// under its limit, against a global cluster and a local one, alternately.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_against_local_limits() {
    let _alone = TIMED.lock().await;
    with_timeout(80, async {
        let redis = Redis::start();
        let limit = r#"{ requests = 10000, per = "1s", burst = 10000 }"#;
        let global = cluster(&redis.url(), r#"timeout = "250ms""#, limit).await;
        let local = cluster(&redis.url(), r#"rate_limits = "local""#, limit).await;
        global.wait_global().await;
        let client = client();
        let (mut g, mut l) = (Vec::new(), Vec::new());
        let (gu, lu) = (global.urls(), local.urls());
        for i in 0..1500 {
            for (urls, took) in [(&gu, &mut g), (&lu, &mut l)] {
                let start = Instant::now();
                let resp = client.get(&urls[i % 3]).send().await.expect("request");
                assert_eq!(resp.status(), 200);
                let _ = resp.bytes().await;
                if i >= 100 {
                    took.push(start.elapsed());
                }
            }
        }
        let show = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
        let (g50, l50) = (percentile(g.clone(), 0.5), percentile(l.clone(), 0.5));
        let calls = redis.script_calls();
        eprintln!(
            "global: p50 {} p99 {}; local: p50 {} p99 {}; store calls {calls}",
            show(g50),
            show(percentile(g.clone(), 0.99)),
            show(l50),
            show(percentile(l.clone(), 0.99)),
        );
        // loose, for a loaded machine: the figures are the point
        assert!(
            calls * 10 <= 1500,
            "{calls} store calls for 1,500 requests: no leases"
        );
        assert!(
            g50 <= l50 + Duration::from_millis(1),
            "p50 {g50:?} against {l50:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keyed_budget_is_one_for_the_whole_cluster() {
    with_timeout(60, async {
        let redis = Redis::start();
        let limit = r#"{ requests = 5, per = "1m", key = "header:X-Tenant" }"#;
        let c = cluster(&redis.url(), "", limit).await;
        c.wait_global().await;
        let client = client();
        let urls = c.urls();
        let mut statuses = Vec::new();
        for i in 0..9 {
            let resp = client
                .get(&urls[i % 3])
                .header("X-Tenant", "acme")
                .send()
                .await
                .expect("request");
            statuses.push(resp.status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429]);
        let other = client
            .get(&urls[0])
            .header("X-Tenant", "globex")
            .send()
            .await
            .expect("request");
        assert_eq!(other.status(), 200, "another tenant has its own budget");
        // the value is kept only as a keyed hash
        let keys = redis.cli(&["KEYS", "*"]);
        assert!(!keys.contains("acme") && keys.contains(":h:"), "{keys}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_store_an_instance_serves_is_ready_and_falls_back_as_configured() {
    with_timeout(60, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let nowhere = format!("unix://{}", dir.path().join("none.sock").display());
        let limit = r#"{ requests = 2, per = "1m" }"#;
        let backend = serve("backend", |_req| async { text_response(200, "ok") }).await;
        let client = client();
        for (fallback, expected) in [
            ("local", [200, 200, 429, 429]),
            ("allow", [200, 200, 200, 200]),
            ("deny", [429, 429, 429, 429]),
        ] {
            let cluster = format!("rate_limit_fallback = \"{fallback}\"");
            let proxy = TestProxy::start(&config(&backend, &nowhere, &cluster, limit)).await;
            let admin = proxy.admin_addr().await;
            let ready = client
                .get(format!("http://{admin}/ready"))
                .send()
                .await
                .expect("ready");
            assert_eq!(ready.status(), 200, "/ready does not depend on the store");
            let mut statuses = Vec::new();
            let mut retry = None;
            for _ in 0..4 {
                let resp = client.get(proxy.url("/x")).send().await.expect("request");
                retry = header(&resp, "retry-after").or(retry);
                statuses.push(resp.status().as_u16());
            }
            assert_eq!(statuses, expected, "rate_limit_fallback = {fallback}");
            if fallback == "deny" {
                assert_eq!(retry.as_deref(), Some("1"));
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_cluster_keeps_the_budgets_in_the_store() {
    with_timeout(60, async {
        let redis = Redis::start();
        let backend = serve("backend", |_req| async { text_response(200, "ok") }).await;
        let limit = r#"{ requests = 3, per = "1m" }"#;
        let proxy = TestProxy::start(&config(&backend, &redis.url(), "", limit)).await;
        let admin = proxy.admin_addr().await;
        let client = client();
        let up = || async {
            let text = client
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            Some(text.lines().any(|l| l == "gatehouse_cluster_store_up 1"))
        };
        let wait_up = || async {
            poll_until(Duration::from_secs(10), || async {
                up().await == Some(true)
            })
            .await
        };
        assert!(wait_up().await.is_some(), "never reached the store");
        for _ in 0..2 {
            assert_eq!(
                client
                    .get(proxy.url("/x"))
                    .send()
                    .await
                    .expect("request")
                    .status(),
                200
            );
        }
        // another timeout: a new connection, the same budget
        std::fs::write(
            &proxy.config_path,
            config(&backend, &redis.url(), "timeout = \"80ms\"", limit),
        )
        .expect("write");
        let (path, admin_s) = (
            proxy.config_path.to_str().expect("utf-8").to_string(),
            admin.to_string(),
        );
        let out = tokio::task::spawn_blocking(move || {
            run_gatehouse(
                &["reload", "--config", &path, "--admin", &admin_s],
                &[],
                &[],
            )
        })
        .await
        .expect("reload");
        assert!(
            out.stdout.starts_with("reloaded"),
            "{} {}",
            out.stdout,
            out.stderr
        );
        assert!(
            wait_up().await.is_some(),
            "the new connection never reached the store"
        );
        let after: Vec<u16> = {
            let mut v = Vec::new();
            for _ in 0..2 {
                v.push(
                    client
                        .get(proxy.url("/x"))
                        .send()
                        .await
                        .expect("request")
                        .status()
                        .as_u16(),
                );
            }
            v
        };
        assert_eq!(
            after,
            [200, 429],
            "the budget spent before the reload still counts"
        );
    })
    .await;
}

impl Cluster {
    /// Every instance's store calls so far, whatever their result.
    async fn store_calls(&self) -> Vec<f64> {
        let client = client();
        let mut calls = Vec::new();
        for admin in &self.admins {
            let text = match client.get(format!("http://{admin}/metrics")).send().await {
                Ok(resp) => resp.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let sum: f64 = text
                .lines()
                .filter(|l| l.starts_with("gatehouse_cluster_store_calls_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            calls.push(sum);
        }
        calls
    }
}

/// A client flooding at 100 times its limit, first one instance, then all three: after the
/// first second (the flood is recognised there), each instance asks the store at most twice a
/// second, and the cluster admits no more than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_at_100_times_the_limit_costs_at_most_2_store_calls_a_second() {
    let _alone = TIMED.lock().await;
    with_timeout(60, async {
        let redis = Redis::start();
        let limit = r#"{ requests = 3, per = "1s", burst = 3 }"#;
        let c = cluster(&redis.url(), r#"timeout = "250ms""#, limit).await;
        c.wait_global().await;
        let urls = c.urls();
        for (phase, targets) in [("one instance", &urls[..1]), ("three", &urls[..])] {
            let targets = targets.to_vec();
            let flood = tokio::spawn(async move { drive(&targets, 300.0, 3.5).await });
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (t1, before) = (Instant::now(), c.store_calls().await);
            let sent = flood.await.expect("flood");
            let (after, t2) = (c.store_calls().await, Instant::now());
            let secs = (t2 - t1).as_secs_f64();
            let rates: Vec<f64> = before
                .iter()
                .zip(&after)
                .map(|(b, a)| (a - b) / secs)
                .collect();
            let admitted = count(&sent, 200);
            let window = sent[sent.len() - 1].at - sent[0].at;
            let budget = 3.0 + 3.0 * window.as_secs_f64();
            eprintln!(
                "{phase}: {} sent, {admitted} admitted (budget {budget:.1}); store calls a second per instance over {secs:.2} s: {rates:?}",
                sent.len()
            );
            assert_eq!(admitted + count(&sent, 429), sent.len(), "{phase}");
            assert!(
                rates.iter().all(|r| *r <= 2.0),
                "{phase}: {rates:?} calls a second"
            );
            assert!(
                admitted as f64 <= budget + 1.0,
                "{phase}: admitted {admitted}, budget {budget:.1}"
            );
            assert!(
                admitted as f64 >= budget * 0.3,
                "{phase}: admitted only {admitted} of a budget of {budget:.1}"
            );
        }
    })
    .await;
}

/// `/cluster` of the instance at `admin`, parsed (`None` until it answers JSON).
async fn cluster_view(admin: std::net::SocketAddr) -> Option<serde_json::Value> {
    let resp = client()
        .get(format!("http://{admin}/cluster"))
        .send()
        .await
        .ok()?;
    serde_json::from_str(&resp.text().await.ok()?).ok()
}

fn member_names(view: &serde_json::Value) -> Vec<String> {
    view["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["instance"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `admin`'s `/cluster` until `cond` holds (the heartbeat is every 2 s); the view then.
async fn view_until(
    admin: std::net::SocketAddr,
    max: Duration,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + max;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(view) = cluster_view(admin).await {
            if cond(&view) {
                return view;
            }
            last = Some(view);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never; last /cluster: {last:?}")
}

/// `gatehouse cluster status --admin ADDR`: its exit code and output.
async fn status_cli(admin: std::net::SocketAddr) -> (Option<i32>, String) {
    let admin = admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_gatehouse(&["cluster", "status", "--admin", &admin], &[], &[])
    })
    .await
    .expect("cluster status");
    (out.status.code(), format!("{}{}", out.stdout, out.stderr))
}

/// Three instances list each other with the same digests; one reloaded with another limit is
/// reported (warning, non-zero exit, metric); one stopped and one whose `[cluster]` a reload
/// removed drop out after the heartbeat TTL; a store gone is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_members_disagreement_departures_and_a_store_gone() {
    with_timeout(60, async {
        let mut redis = Redis::start();
        let backend = serve("backend", |_req| async { text_response(200, "ok") }).await;
        let limit = r#"{ requests = 50, per = "1s" }"#;
        let text = |i: usize, limit: &str| {
            config(
                &backend,
                &redis.url(),
                &format!("instance = \"gh-{i}\""),
                limit,
            )
        };
        let mut proxies = Vec::new();
        let mut admins = Vec::new();
        for i in 0..3 {
            let proxy = TestProxy::start(&text(i, limit)).await;
            admins.push(proxy.admin_addr().await);
            proxies.push(proxy);
        }
        let all = ["gh-0", "gh-1", "gh-2"];
        let settled = |v: &serde_json::Value| {
            let global = (0..3).all(|i| v["members"][i]["rate_limits"] == "global");
            member_names(v) == all && v["agree"] == true && global
        };
        let view = view_until(admins[0], Duration::from_secs(10), "3 members", settled).await;
        assert_eq!(view["store"]["up"], true, "{view}");
        // each instance reads the members on its own heartbeat: gh-1's view may lag gh-0's
        view_until(
            admins[1],
            Duration::from_secs(10),
            "3 members at gh-1",
            settled,
        )
        .await;
        let (code, out) = status_cli(admins[1]).await;
        eprintln!("{out}");
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("ok: 3 members agree"), "{out}");
        assert!(all.iter().all(|n| out.contains(n)), "{out}");

        // gh-2 with another limit: a disagreement, seen from gh-0
        let other = r#"{ requests = 60, per = "1s" }"#;
        std::fs::write(&proxies[2].config_path, text(2, other)).expect("write");
        reload(&proxies[2], admins[2]).await;
        view_until(admins[0], Duration::from_secs(10), "disagreement", |v| {
            v["agree"] == false
                && v["disagreements"][0]
                    .as_str()
                    .is_some_and(|d| d.starts_with("gh-2: rate limits differ"))
        })
        .await;
        let (code, out) = status_cli(admins[0]).await;
        eprintln!("{out}");
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("warning: gh-2: rate limits differ"), "{out}");
        let metrics = client()
            .get(format!("http://{}/metrics", admins[0]))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics");
        assert!(
            metrics.contains("gatehouse_cluster_config_disagreements 1"),
            "{metrics}"
        );

        // gh-2 stopped, gh-1's [cluster] removed by a reload: both drop out within the TTL
        let left = Instant::now();
        drop(proxies.pop());
        let alone = config(&backend, &redis.url(), "", limit).replace(
            &format!(
                "[cluster]\nstore = \"{}\"\nsecret = \"{SECRET}\"\n",
                redis.url()
            ),
            "",
        );
        assert!(!alone.contains("[cluster]"), "{alone}");
        std::fs::write(&proxies[1].config_path, alone).expect("write");
        reload(&proxies[1], admins[1]).await;
        view_until(admins[0], Duration::from_secs(12), "departures", |v| {
            member_names(v) == ["gh-0"] && v["agree"] == true
        })
        .await;
        eprintln!(
            "gh-1 and gh-2 gone from /cluster after {:?}",
            left.elapsed()
        );

        // the store gone: said so, and a non-zero exit
        redis.kill();
        view_until(admins[0], Duration::from_secs(6), "store down", |v| {
            v["store"]["up"] == false
        })
        .await;
        let (code, out) = status_cli(admins[0]).await;
        eprintln!("{out}");
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("store DOWN"), "{out}");
        assert!(out.contains("not ok: the store does not answer"), "{out}");
    })
    .await;
}

/// `gatehouse reload` of `proxy`'s config file through its admin listener.
async fn reload(proxy: &TestProxy, admin: std::net::SocketAddr) {
    let (path, admin) = (
        proxy.config_path.to_str().expect("utf-8").to_string(),
        admin.to_string(),
    );
    let out = tokio::task::spawn_blocking(move || {
        run_gatehouse(&["reload", "--config", &path, "--admin", &admin], &[], &[])
    })
    .await
    .expect("reload");
    assert!(
        out.stdout.starts_with("reloaded"),
        "{} {}",
        out.stdout,
        out.stderr
    );
}
