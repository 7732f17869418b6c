//! ACME challenge answers shared through the cluster store (`docs/cluster.md`, "Challenge
//! answers"): two real Gatehouse processes on different loopback addresses sharing one real
//! `redis-server`, and a real Pebble whose DNS (pebble-challtestsrv) sends the CA to the instance
//! that did NOT place the order. Instance A (127.0.0.1, ports 0) has the ACME site and orders;
//! instance B (127.0.0.2, on Pebble's HTTP-01 and TLS-ALPN-01 ports) has no such site, so the
//! CA can only be answered by B, from the store. Then the guards of B's lookups: a store that
//! does not answer costs a request no more than `[cluster] timeout`, a flood of made-up tokens
//! no more than `MAX_PER_SECOND` store calls a second, and an answer is served only under the
//! cluster name and token it was written for, and a reload that removes `[cluster]` stops them.
//!
//! Needs `redis-server` and `pebble` (Debian packages; `tests/run.sh` installs them).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};
use support::pebble::{served_leaf, Pebble};
use support::redis::Redis;
use support::*;

const SECRET: &str = "cluster-test-secret-0123456789";
/// The ACME site's name; challtestsrv resolves it to instance B.
const NAME: &str = "shared.app.test";
/// Pebble blocks (`base..base+6`) of this file; other files use 24100-24449.
const BASE_HTTP01: u16 = 24600;
const BASE_TLS_ALPN01: u16 = 24610;
/// `cluster::challenges::MAX_PER_SECOND`.
const MAX_PER_SECOND: u64 = 100;
/// A token as Pebble makes them (43 base64url characters).
const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";

/// `[cluster]` for both instances.
fn cluster(redis: &Redis, name: &str, instance: &str, extra: &str) -> String {
    format!(
        r#"
[cluster]
name = "{name}"
store = "{store}"
secret = "{SECRET}"
instance = "{instance}"
{extra}
"#,
        store = redis.url()
    )
}

/// Instance A: the ACME site, on ports 0 (the CA cannot reach it), ordering with `challenge`.
fn instance_a(pebble: &Pebble, state: &std::path::Path, challenge: &str, cluster: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
state_dir = "{state}"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
email = "ops@app.test"
challenge = "{challenge}"
retry_initial = "1s"
retry_max = "2s"
{cluster}
[[site]]
hosts = ["{NAME}"]
tls = "acme"

  [[site.route]]
  path = "/"
  respond = {{ status = 204 }}
"#,
        state = state.display(),
        directory = pebble.var("ACME_DIRECTORY_URL"),
        ca_root = pebble.var("ACME_CA_FILE"),
    )
}

/// Instance B: on 127.0.0.2 at `http` and `https`, no ACME and no site for `NAME` (a site with
/// a certificate of its own for `other.test`: an HTTPS listener needs one).
fn instance_b(http: u16, https: u16, cluster: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.2:{http}"
https = "127.0.0.2:{https}"
admin = "127.0.0.1:0"
{cluster}
[[site]]
hosts = ["other.test"]
tls = {{ cert = "other.crt", key = "other.key" }}

  [[site.route]]
  path = "/"
  respond = {{ status = 204 }}
"#
    )
}

/// Tells Pebble's DNS to send `NAME` to instance B.
async fn resolve_to_b(pebble: &Pebble) {
    let url = format!("{}/add-a", pebble.var("CHALLTESTSRV_URL"));
    let body = format!(r#"{{"host":"{NAME}","addresses":["127.0.0.2"]}}"#);
    let resp = client().post(url).body(body).send().await.expect("add-a");
    assert!(resp.status().is_success(), "challtestsrv add-a: {resp:?}");
}

/// One metric line's value on an admin listener (0 when absent): `name` with every `labels`.
async fn metric(admin: std::net::SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let url = format!("http://{admin}/metrics");
    let text = match client().get(url).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Until the instance's store connection answers.
async fn wait_store_up(admin: std::net::SocketAddr) {
    let up = poll_until(Duration::from_secs(10), || async {
        metric(admin, "gatehouse_cluster_store_up", &[]).await == 1.0
    })
    .await;
    assert!(up.is_some(), "the instance never reached the store");
}

/// A orders `NAME` with `challenge`; the CA validates through B only. The certificate must be
/// issued (A serves it) and B must have answered from the store; then the answer is withdrawn.
async fn validated_through_the_other_instance(base: u16, challenge: &str, kind: &str, extra: &str) {
    let pebble = Pebble::start(base, &[]);
    resolve_to_b(&pebble).await;
    let redis = Redis::start();
    let state = tempfile::tempdir().expect("state dir");
    let b = start_b(&instance_b(
        base + 2,
        base + 3,
        &cluster(&redis, "one", "b", extra),
    ))
    .await;
    let b_admin = b.admin_addr().await;
    wait_store_up(b_admin).await;
    let a_config = instance_a(
        &pebble,
        state.path(),
        challenge,
        &cluster(&redis, "one", "a", extra),
    );
    let a = TestProxy::start_tls(&a_config).await;
    let a_admin = a.admin_addr().await;
    let root = pebble.root();
    let started = Instant::now();
    let (issued, last) = loop {
        match served_leaf(a.https(), NAME, &root).await {
            Ok(_) => break (Some(started.elapsed()), String::new()),
            Err(e) if started.elapsed() > Duration::from_secs(30) => break (None, e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let diagnostics = || {
        format!(
            "\n--- A:\n{}\n--- B:\n{}\n--- pebble:\n{}",
            a.logs().join("\n"),
            b.logs().join("\n"),
            pebble.log()
        )
    };
    assert!(
        issued.is_some(),
        "A serves no certificate for {NAME} from Pebble ({last}){}",
        diagnostics()
    );
    let type_label = format!("type=\"{kind}\"");
    let written = metric(
        a_admin,
        "gatehouse_acme_challenges_to_store_total",
        &[&type_label, "result=\"written\""],
    )
    .await;
    let hits = metric(
        b_admin,
        "gatehouse_acme_challenges_from_store_total",
        &[&type_label, "result=\"hit\""],
    )
    .await;
    eprintln!("{kind}: issued after {issued:?}; A wrote {written} answer(s), B answered {hits} lookup(s) from the store");
    assert!(written >= 1.0, "A wrote no answer{}", diagnostics());
    assert!(
        hits >= 1.0,
        "B answered nothing from the store{}",
        diagnostics()
    );
    let withdrawn = poll_until(Duration::from_secs(5), || async {
        redis.keys("one:challenge:*").is_empty()
    })
    .await;
    assert!(
        withdrawn.is_some(),
        "answers left in the store after the order: {:?}",
        redis.keys("one:challenge:*")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_validated_through_an_instance_that_did_not_order_passes() {
    // local limits: the store is there for the answers alone
    with_timeout(60, async {
        let extra = r#"rate_limits = "local""#;
        validated_through_the_other_instance(BASE_HTTP01, "http-01", "http-01", extra).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_validated_through_an_instance_that_did_not_order_passes() {
    // global limits: the answers share the limits' store; B has no ACME at all
    with_timeout(60, async {
        validated_through_the_other_instance(BASE_TLS_ALPN01, "tls-alpn-01", "tls-alpn-01", "")
            .await;
    })
    .await;
}

/// Instance B alone, answering challenges from the store only, with `timeout` for it.
async fn lone_b(redis: &Redis, name: &str, timeout: &str) -> (TestProxy, std::net::SocketAddr) {
    let extra = format!("timeout = \"{timeout}\"\nrate_limits = \"local\"");
    let b = start_b(&instance_b(0, 0, &cluster(redis, name, "b", &extra))).await;
    let admin = b.admin_addr().await;
    wait_store_up(admin).await;
    (b, admin)
}

/// Starts B (`config` from `instance_b`) with its certificate files beside the config.
async fn start_b(config: &str) -> TestProxy {
    let made = rcgen::generate_simple_self_signed(vec!["other.test".to_string()]).expect("cert");
    let (cert, key) = (made.cert.pem(), made.key_pair.serialize_pem());
    TestProxy::start_tls_with_files(config, &[("other.crt", &cert), ("other.key", &key)]).await
}

async fn get_challenge(b: &TestProxy, token: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let path = format!("/.well-known/acme-challenge/{token}");
    let resp = client().get(b.url(&path)).send().await.expect("request");
    let status = resp.status().as_u16();
    (
        status,
        resp.text().await.unwrap_or_default(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_served_only_under_the_cluster_name_and_token_it_was_written_for() {
    with_timeout(30, async {
        let redis = Redis::start();
        let (one, _) = lone_b(&redis, "one", "250ms").await;
        let (two, _) = lone_b(&redis, "two", "250ms").await;
        let answer = format!("{TOKEN}.thumbprint");
        let key = format!("one:challenge:http-01:{TOKEN}");
        redis.cli(&["SET", &key, &answer]);
        let (status, body, _) = get_challenge(&one, TOKEN).await;
        assert_eq!((status, body.as_str()), (200, answer.as_str()));
        let (status, _, _) = get_challenge(&two, TOKEN).await;
        assert_eq!(status, 404, "served under another cluster's name");
        // a value under one token's key that answers another token is not served
        let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        redis.cli(&["SET", &format!("one:challenge:http-01:{other}"), &answer]);
        let (status, _, _) = get_challenge(&one, other).await;
        assert_eq!(status, 404, "served an answer written for another token");
        // nor is anything under a key that is no valid token (never looked up)
        let before = redis.calls("get");
        let (status, _, _) = get_challenge(&one, "one:rl:x").await;
        assert_eq!(status, 404);
        assert_eq!(redis.calls("get"), before, "an invalid token was looked up");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_answer_costs_a_challenge_at_most_the_timeout() {
    with_timeout(30, async {
        let redis = Redis::start();
        let (b, admin) = lone_b(&redis, "one", "100ms").await;
        let answer = format!("{TOKEN}.thumbprint");
        redis.cli(&["SET", &format!("one:challenge:http-01:{TOKEN}"), &answer]);
        let (status, _, _) = get_challenge(&b, TOKEN).await;
        assert_eq!(status, 200, "B does not answer from the store");
        redis.signal("STOP");
        let mut took = Vec::new();
        for i in 0..20 {
            let token = format!("{TOKEN}{i:02}");
            let (status, _, elapsed) = get_challenge(&b, &token).await;
            assert_eq!(status, 404);
            took.push(elapsed);
        }
        redis.signal("CONT");
        let max = took.iter().max().copied().unwrap_or_default();
        let waited = metric(
            admin,
            "gatehouse_acme_challenges_from_store_total",
            &["result=\"timeout\""],
        )
        .await;
        eprintln!(
            "store paused: 20 lookups, max {max:?}, {waited} waited for the timeout: {took:?}"
        );
        // 100 ms timeout, plus a loaded debug build's request
        assert!(max < Duration::from_millis(600), "{took:?}");
        // the first marks the store down; the others do not wait for it
        assert!(waited <= 2.0, "{waited} lookups waited for a paused store");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_tokens_costs_a_bounded_number_of_store_calls() {
    with_timeout(45, async {
        let redis = Redis::start();
        let (b, admin) = lone_b(&redis, "one", "250ms").await;
        let before = redis.calls("get");
        let started = Instant::now();
        let url = b.url("/.well-known/acme-challenge/");
        let client = client();
        let mut tasks = tokio::task::JoinSet::new();
        // 32 clients, 60 made-up tokens each
        for c in 0..32 {
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..60 {
                    let token = format!("{TOKEN}{c:02}{i:02}");
                    let resp = client.get(format!("{url}{token}")).send().await;
                    statuses.push(resp.map(|r| r.status().as_u16()).unwrap_or(0));
                }
                statuses
            });
        }
        let mut statuses = Vec::new();
        while let Some(done) = tasks.join_next().await {
            statuses.extend(done.expect("client"));
        }
        let elapsed = started.elapsed();
        let calls = redis.calls("get") - before;
        let busy = metric(
            admin,
            "gatehouse_acme_challenges_from_store_total",
            &["result=\"busy\""],
        )
        .await;
        let rate = statuses.len() as f64 / elapsed.as_secs_f64();
        eprintln!(
            "{} requests in {elapsed:?} ({rate:.0}/s): {calls} store calls, {busy} refused at once",
            statuses.len()
        );
        assert!(statuses.iter().all(|s| *s == 404), "{statuses:?}");
        // the seconds the run touched: its whole ones and the two it began and ended in
        let bound = MAX_PER_SECOND * (elapsed.as_secs() + 2);
        assert!(
            statuses.len() as u64 > bound,
            "the flood was slower than the bound: it shows nothing"
        );
        assert!(
            calls <= bound,
            "{calls} store calls in {elapsed:?}, bound {bound}"
        );
        assert!(busy > 0.0, "no lookup was refused at once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_cluster_stops_the_lookups() {
    with_timeout(30, async {
        let redis = Redis::start();
        let (b, _) = lone_b(&redis, "one", "250ms").await;
        let answer = format!("{TOKEN}.thumbprint");
        redis.cli(&["SET", &format!("one:challenge:http-01:{TOKEN}"), &answer]);
        assert_eq!(get_challenge(&b, TOKEN).await.0, 200);
        // the same instance without `[cluster]`: its certificate files stay beside the config
        // (the listeners as written before: the same sockets are kept)
        let alone = instance_b(0, 0, "");
        std::fs::write(&b.config_path, alone).expect("rewrite config");
        b.send_signal("HUP");
        let gone = poll_until(Duration::from_secs(10), || async {
            get_challenge(&b, TOKEN).await.0 == 404
        })
        .await;
        assert!(
            gone.is_some(),
            "still answered from the store:\n{}",
            b.logs().join("\n")
        );
        let before = redis.calls("get");
        for _ in 0..5 {
            assert_eq!(get_challenge(&b, TOKEN).await.0, 404);
        }
        assert_eq!(redis.calls("get"), before, "looked up without [cluster]");
    })
    .await;
}
