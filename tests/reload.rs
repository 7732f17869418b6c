//! Hot reload end to end: the config file rewritten under load (atomic rename and in place,
//! valid and invalid in turn), a Kubernetes-style `..data` symlink swap, SIGHUP and
//! `POST /reload`; state that must survive a reload (rate-limit budgets, health verdicts).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

fn config(version: &str, extra_route: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 2

[[site]]
  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "{version}" }}
{extra_route}
"#
    )
}

/// Replaces the file by rename (what most editors and config tools do).
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Truncates and rewrites the file in place.
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Polls `/` until it answers `want`; how long that took.
async fn observed(proxy: &TestProxy, want: &str, max: Duration) -> Duration {
    if let Some(took) = poll_until(max, || async { body(proxy, "/").await == want }).await {
        return took;
    }
    let still = body(proxy, "/").await;
    let logs: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| !l.contains("\"request\""))
        .collect();
    panic!("{want:?} not served within {max:?} (still {still:?}); {logs:#?}");
}

/// What the valid rewrites of the 20-rewrite test change, one thing at a time.
#[derive(Clone)]
struct Varied {
    version: String,
    /// `/extra0` .. `/extraN` exist.
    routes: usize,
    /// Which of the two backends `/up` goes to.
    backend: usize,
    /// `max_body` of `/up`, in KB.
    body_kb: usize,
}

impl Varied {
    fn render(&self, backends: &[std::net::SocketAddr; 2]) -> String {
        let mut extra = format!(
            "  [[site.route]]\n  path = \"/up\"\n  upstream = \"app\"\n  max_body = \"{}KB\"\n",
            self.body_kb
        );
        for r in 0..self.routes {
            extra.push_str(&format!(
                "  [[site.route]]\n  exact = \"/extra{r}\"\n  respond = {{ body = \"extra{r}\" }}\n"
            ));
        }
        let upstream = format!(
            "\n[upstream.app]\nservers = [\"{}\"]\n",
            backends[self.backend]
        );
        config(&self.version, &extra) + &upstream
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rewrites_under_load_drop_nothing_and_never_serve_a_bad_config() {
    with_timeout(120, async {
        let proxy = TestProxy::start(&config("v0", "")).await;
        let path = proxy.config_path.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (stop, failed, ok, seen) = (stop.clone(), failed.clone(), ok.clone(), seen.clone());
            let url = proxy.url("/");
            tasks.push(tokio::spawn(async move {
                // two tasks keep their connection, two open a new one per request
                let keep = client();
                while !stop.load(Ordering::Relaxed) {
                    let http = if i % 2 == 0 { keep.clone() } else { client() };
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let body = r.text().await.unwrap_or_default();
                            seen.lock().unwrap().insert(body);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        let invalid = [
            "[listen\nhttp = ",                                        // syntax error
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"nope\"\n", // unknown upstream
        ];
        let backends = [echo_backend("one").await, echo_backend("two").await];
        let addrs = [backends[0].addr, backends[1].addr];
        let mut state = Varied { version: "v0".into(), routes: 0, backend: 0, body_kb: 4 };
        let mut valid = Vec::new();
        let mut slowest = Duration::ZERO;
        for n in 1..=20 {
            let in_place = n % 3 == 0;
            if n % 2 == 0 {
                let bad = if n % 4 == 0 {
                    invalid[0].to_string()
                } else if n % 4 == 2 && n > 10 {
                    // a certificate file that does not exist
                    config("bad", "") + "\n[[site]]\nhosts = [\"x.test\"]\ntls = { cert = \"missing.pem\", key = \"missing.key\" }\n  [[site.route]]\n  path = \"/\"\n  respond = { body = \"bad\" }\n"
                } else {
                    invalid[1].to_string()
                };
                if in_place { write_in_place(&path, &bad) } else { write_atomic(&path, &bad) }
                tokio::time::sleep(Duration::from_millis(400)).await;
                continue;
            }
            // each valid rewrite: a new version on `/`, and one of a new route, a changed
            // upstream, a changed limit
            let step = (n - 1) / 2;
            state.version = format!("v{n}");
            match step % 3 {
                0 => state.routes += 1,
                1 => state.backend = 1 - state.backend,
                _ => state.body_kb = if state.body_kb == 4 { 1 } else { 4 },
            }
            let text = state.render(&addrs);
            if in_place { write_in_place(&path, &text) } else { write_atomic(&path, &text) }
            let took = observed(&proxy, &state.version, Duration::from_secs(1)).await;
            let second = Duration::from_secs(1);
            let change = match step % 3 {
                0 => {
                    let route = format!("/extra{}", state.routes - 1);
                    let want = format!("extra{}", state.routes - 1);
                    eventually_async(second, &route, || async { body(&proxy, &route).await == want }).await
                }
                1 => {
                    let want = ["one", "two"][state.backend];
                    eventually_async(second, "the new upstream", || async {
                        let resp = client().get(proxy.url("/up")).send().await.unwrap();
                        header(&resp, "x-backend").as_deref() == Some(want)
                    }).await
                }
                _ => {
                    let want = if state.body_kb == 1 { 413 } else { 200 };
                    eventually_async(second, "the new max_body", || async {
                        let resp = client().post(proxy.url("/up")).body(vec![b'x'; 2048]).send().await.unwrap();
                        resp.status().as_u16() == want
                    }).await
                }
            };
            slowest = slowest.max(took).max(change);
            valid.push(state.version.clone());
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        eprintln!("ok {}, failed {}, slowest change seen after {slowest:?}, bodies {seen:?}", ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        assert_eq!(failed.load(Ordering::Relaxed), 0);
        for body in &seen {
            assert!(body == "v0" || valid.contains(body), "served {body:?}, which no valid config had");
        }
        let logs = proxy.logs();
        let rejected = logs.iter().filter(|l| l.contains("config reload rejected")).count();
        assert!(rejected >= 10, "each invalid write rejected ({rejected})");
        assert!(logs.iter().any(|l| l.contains("missing.pem")), "the unreadable certificate is named");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_post_reload_and_a_symlinked_data_dir_swap() {
    with_timeout(60, async {
        // Kubernetes ConfigMap layout: gatehouse.toml -> ..data/gatehouse.toml, ..data -> ..v1
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write_version = |name: &str, text: &str| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("gatehouse.toml"), text).unwrap();
        };
        write_version("..v1", &config("k1", ""));
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gatehouse.toml", root.join("gatehouse.toml")).unwrap();
        let proxy = TestProxy::start_at(&root.join("gatehouse.toml")).await;
        observed(&proxy, "k1", Duration::from_secs(1)).await;
        // the swap: a new version dir, a new symlink renamed over ..data
        write_version("..v2", &config("k2", ""));
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        observed(&proxy, "k2", Duration::from_secs(1)).await;

        // SIGHUP and POST /reload, with the watcher's view unchanged (written behind its back
        // into the version dir the symlink already points at)
        let admin = proxy.admin_addr().await;
        std::fs::write(root.join("..v2/gatehouse.toml"), config("k3", "")).unwrap();
        proxy.send_signal("HUP");
        observed(&proxy, "k3", Duration::from_secs(2)).await;
        let file = root.join("..v2/gatehouse.toml");
        let (status, text) = post_reload(admin, &file, &config("k4", "")).await;
        assert!(
            status == 200 && (text.starts_with("reloaded") || text.starts_with("unchanged")),
            "{status} {text}"
        );
        observed(&proxy, "k4", Duration::from_secs(1)).await;
        let (status, text) = post_reload(admin, &file, "not toml [").await;
        assert_eq!(status, 400);
        assert!(text.contains("gatehouse.toml:1:"), "{text}");
        assert_eq!(body(&proxy, "/").await, "k4");
        let metrics = client()
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("gatehouse_config_reloads_total{result=\"failure\"}"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_health_state_survive_a_reload_elsewhere() {
    with_timeout(60, async {
        let good = echo_backend("good").await;
        let dead = closed_port_addr().await;
        let make = |other_body: &str| {
            format!(
                r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[[site]]
  [[site.route]]
  path = "/limited/"
  respond = {{ body = "limited" }}
  rate_limit = {{ requests = 3, per = "1h" }}

  [[site.route]]
  path = "/api/"
  upstream = "api"

  [[site.route]]
  path = "/other"
  respond = {{ body = "{other_body}" }}

[upstream.api]
servers = ["{}", "{dead}"]
health = {{ path = "/", interval = "300ms", unhealthy = 1, healthy = 1 }}
"#,
                good.addr
            )
        };
        let proxy = TestProxy::start(&make("a")).await;
        let http = client();
        for _ in 0..3 {
            assert_eq!(
                http.get(proxy.url("/limited/x"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
        assert_eq!(
            http.get(proxy.url("/limited/x"))
                .send()
                .await
                .unwrap()
                .status(),
            429
        );
        let downs = |p: &TestProxy| {
            p.logs()
                .iter()
                .filter(|l| l.contains("upstream server down"))
                .count()
        };
        assert_eq!(downs(&proxy), 1, "the dead server was found down at start");

        write_atomic(&proxy.config_path, &make("b"));
        observed_path(&proxy, "/other", "b").await;
        assert_eq!(
            http.get(proxy.url("/limited/x"))
                .send()
                .await
                .unwrap()
                .status(),
            429,
            "a client at its limit stays limited"
        );
        for _ in 0..10 {
            assert_eq!(
                http.get(proxy.url("/api/x")).send().await.unwrap().status(),
                200,
                "the down server stays out"
            );
        }
        assert_eq!(
            downs(&proxy),
            1,
            "the pool and its checker were kept, not restarted"
        );
        assert_eq!(
            proxy
                .logs()
                .iter()
                .filter(|l| l.contains("upstream server up"))
                .count(),
            1,
            "no new first-round checks"
        );
    })
    .await;
}

async fn observed_path(proxy: &TestProxy, path: &str, want: &str) {
    eventually_async(
        Duration::from_secs(2),
        &format!("{path} answering {want:?}"),
        || async { body(proxy, path).await == want },
    )
    .await;
}

/// A thousand reloads, each building a new snapshot (and, every other time, a new upstream pool
/// with its resolver and health checker): memory and live tasks come back to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_leak_neither_memory_nor_tasks() {
    with_timeout(240, async {
        let backend = echo_backend("api").await;
        let make = |n: usize| {
            // odd and even reloads differ in the upstream's health interval: a new pool each time
            let interval = if n.is_multiple_of(2) { "1s" } else { "2s" };
            format!(
                r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "/"
  respond = {{ body = "r{n}" }}
  rate_limit = {{ requests = {}, per = "1m" }}

  [[site.route]]
  path = "/api/"
  upstream = "api"

[upstream.api]
servers = ["{}"]
health = {{ path = "/", interval = "{interval}" }}
"#,
                1000 + n,
                backend.addr
            )
        };
        let proxy = TestProxy::start(&make(0)).await;
        let admin = proxy.admin_addr().await;
        let http = client();
        let reload_to = |n: usize| {
            std::fs::write(&proxy.config_path, make(n)).unwrap();
            http.post(format!("http://{admin}/reload")).send()
        };
        let gauge = |text: &str, name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let sample = || async {
            let text = client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
            (gauge(&text, "gatehouse_runtime_tasks_alive"), proc_status_kb(proxy.pid, "VmRSS"))
        };
        for n in 1..=50 {
            assert_eq!(reload_to(n).await.unwrap().status(), 200);
        }
        // the warm-up's dropped pools end their tasks within one health interval (2 s)
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (tasks_before, rss_before) = sample().await;
        let started = std::time::Instant::now();
        for n in 51..=1050 {
            let resp = reload_to(n).await.unwrap();
            assert_eq!(resp.status(), 200, "reload {n}: {}", resp.text().await.unwrap());
        }
        // each save is followed by `POST /reload`, which ends the file watcher's 150 ms
        // debounce at once: waiting it out would take 150 s by itself
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(100),
            "1000 saves, each with POST /reload, took {took:?}: the reload waited for the debounce"
        );
        assert_eq!(body(&proxy, "/").await, "r1050");
        // dropped snapshots' tasks notice within one interval (they sleep, then find their pool gone)
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (tasks_after, rss_after) = sample().await;
        eprintln!("tasks {tasks_before} -> {tasks_after}, RSS {rss_before} -> {rss_after} kB over 1000 reloads");
        assert!(tasks_after <= tasks_before + 3.0, "tasks {tasks_before} -> {tasks_after}");
        assert!(rss_after < rss_before + 16 * 1024, "RSS {rss_before} -> {rss_after} kB");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatehouse_reload_checks_first_then_asks_the_running_instance() {
    with_timeout(60, async {
        let proxy = TestProxy::start(&config("c1", "")).await;
        let admin = proxy.admin_addr().await.to_string();
        let path = proxy.config_path.to_str().unwrap().to_string();
        let reload = {
            let (path, admin) = (path.clone(), admin.clone());
            move || run_gatehouse(&["reload", "--config", &path, "--admin", &admin], &[], &[])
        };
        std::fs::write(&proxy.config_path, config("c2", "")).unwrap();
        let out = tokio::task::spawn_blocking(reload.clone()).await.unwrap();
        assert!(out.status.success(), "{}", out.stderr);
        assert!(
            out.stdout.starts_with("reloaded") || out.stdout.starts_with("unchanged"),
            "{}",
            out.stdout
        );
        observed(&proxy, "c2", Duration::from_secs(1)).await;
        // an invalid file is refused here, before the running instance is asked
        std::fs::write(&proxy.config_path, "[listen\n").unwrap();
        let out = tokio::task::spawn_blocking(reload).await.unwrap();
        assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
        assert!(out.stderr.contains("gatehouse.toml:1:"), "{}", out.stderr);
        assert_eq!(body(&proxy, "/").await, "c2");
        // no admin listener and no --admin: says what to do instead
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.toml");
        std::fs::write(
            &plain,
            config("x", "").replace("admin = \"127.0.0.1:0\"\n", ""),
        )
        .unwrap();
        let out = run_gatehouse(&["reload", "--config", plain.to_str().unwrap()], &[], &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stderr.contains("SIGHUP"), "{}", out.stderr);
    })
    .await;
}

/// The body `path` answers now.
/// Writes `text` to `path`, then `POST /reload` on `admin`: the answer's status and text.
async fn post_reload(admin: std::net::SocketAddr, path: &Path, text: &str) -> (u16, String) {
    std::fs::write(path, text).unwrap();
    let resp = client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn body(proxy: &TestProxy, path: &str) -> String {
    let resp = client().get(proxy.url(path)).send().await.unwrap();
    resp.text().await.unwrap()
}

fn listener_config(
    http: std::net::SocketAddr,
    admin: &str,
    backend: std::net::SocketAddr,
) -> String {
    format!(
        r#"
[listen]
http = "{http}"
{admin}

[upstream.held]
servers = ["{backend}"]

[[site]]
  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "on {http}" }}
  [[site.route]]
  path = "/slow"
  upstream = "held"
"#
    )
}

/// Waits until connecting to `addr` is refused.
async fn refused(addr: std::net::SocketAddr) {
    eventually_async(
        Duration::from_secs(2),
        &format!("{addr} refusing connections"),
        || async {
            matches!(
                tokio::net::TcpStream::connect(addr).await,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_added_and_removed_by_reload_bind_and_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    with_timeout(60, async {
        let gate = Gate::new();
        let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        let backend = gated_backend("held", gate.clone(), arrived_tx, "finished".into()).await;
        let first = closed_port_addr().await;
        let mut second = closed_port_addr().await;
        while second == first {
            second = closed_port_addr().await;
        }
        let admin = "admin = \"127.0.0.1:0\"";
        let proxy = TestProxy::start(&listener_config(first, admin, backend.addr)).await;
        let admin_addr = proxy.admin_addr().await;
        assert_eq!(proxy.addr, first);

        // a request in flight on the first listener, on a keep-alive connection
        let mut held = tokio::net::TcpStream::connect(first).await.unwrap();
        held.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        arrived.recv().await.unwrap();

        // an address already taken: the reload is refused, the first listener keeps serving
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = squatter.local_addr().unwrap();
        let path = &proxy.config_path;
        let (status, why) = post_reload(
            admin_addr,
            path,
            &listener_config(taken, admin, backend.addr),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            why.contains(&format!("cannot bind the http listener on {taken}")),
            "{why}"
        );
        assert_eq!(body(&proxy, "/").await, format!("on {first}"));
        drop(squatter);
        // our own listener in the way (the address moves from http to admin in one reload):
        // the answer says how to move it. (One config naming it twice is a config error.)
        let clash = format!("admin = \"{first}\"");
        let (_, why) = post_reload(
            admin_addr,
            path,
            &listener_config(second, &clash, backend.addr),
        )
        .await;
        assert!(
            why.contains(&format!("this Gatehouse's http listener holds {first}")),
            "{why}"
        );

        // the move: the second address serves the new config, the first stops accepting
        let (status, text) = post_reload(
            admin_addr,
            path,
            &listener_config(second, admin, backend.addr),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let on_second = client()
            .get(format!("http://{second}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(on_second.text().await.unwrap(), format!("on {second}"));
        refused(first).await;
        let log = proxy.logs().join("\n");
        assert!(log.contains("listener removed"), "{log}");

        // the request in flight on the removed listener completes, then its connection closes
        gate.open();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), held.read_to_end(&mut answer))
            .await
            .expect("the drained connection closes")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("finished"), "{answer}");

        // removing the admin listener (asked by SIGHUP: there is no admin left to POST to)
        std::fs::write(
            &proxy.config_path,
            listener_config(second, "", backend.addr),
        )
        .unwrap();
        proxy.send_signal("HUP");
        refused(admin_addr).await;
        assert_eq!(
            client()
                .get(format!("http://{second}/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_limits_change_for_connections_opened_after_a_reload() {
    with_timeout(30, async {
        let limits = |uri: usize| {
            config("v", "").replace("workers = 2", &format!("workers = 2\nmax_uri = \"{uri}B\""))
        };
        let proxy = TestProxy::start(&limits(8192)).await;
        let long = format!("/{}", "a".repeat(2000));
        assert_eq!(
            client()
                .get(proxy.url(&long))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        write_atomic(&proxy.config_path, &limits(1024));
        // a new connection each time: limits apply to connections opened after the reload
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        eventually_async(Duration::from_secs(1), "414 for a 2 KB URI", || async {
            fresh.get(proxy.url(&long)).send().await.unwrap().status() == 414
        })
        .await;
    })
    .await;
}
