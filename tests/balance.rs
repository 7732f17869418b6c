//! Acceptance items 4-5: round_robin spread, least_conn preferring the idle backend (and ip_hash
//! stickiness).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{client, echo_backend, gated_backend, with_timeout, Backend, Gate, TestProxy};
use tokio::sync::mpsc;

fn balanced_config(balance: &str, backends: &[&Backend]) -> String {
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[[site]]
  [[site.route]]
  path = "/"
  upstream = "pool"

[upstream.pool]
servers = [{}]
balance = "{balance}"
"#,
        servers.join(", ")
    )
}

fn backend_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_string()
}

/// Sends `n` sequential GETs and counts responses per `x-backend`.
async fn tally(proxy: &TestProxy, n: usize) -> BTreeMap<String, usize> {
    let http = client();
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let resp = http
            .get(proxy.url(&format!("/r/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
        *counts.entry(backend_of(&resp)).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_across_three_backends() {
    with_timeout(60, async {
        let (a, b, c) = (
            echo_backend("a").await,
            echo_backend("b").await,
            echo_backend("c").await,
        );
        let proxy = TestProxy::start(&balanced_config("round_robin", &[&a, &b, &c])).await;
        let counts = tally(&proxy, 300).await;
        for name in ["a", "b", "c"] {
            let n = counts.get(name).copied().unwrap_or(0);
            assert!(
                (90..=110).contains(&n),
                "backend {name} got {n} of 300 requests (want 90..=110): {counts:?}"
            );
        }
        assert_eq!(counts.len(), 3, "unexpected backends: {counts:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_quick_requests_to_the_idle_backend() {
    with_timeout(60, async {
        let gate = Gate::new();
        let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel();
        let one = gated_backend("one", gate.clone(), arrived_tx.clone(), Bytes::from("slow")).await;
        let two = gated_backend("two", gate.clone(), arrived_tx, Bytes::from("slow")).await;
        let proxy = TestProxy::start(&balanced_config("least_conn", &[&one, &two])).await;

        // Warm both backends so connection setup does not skew anything.
        let _ = tally(&proxy, 4).await;

        let slow_url = proxy.url("/slow");
        let slow = tokio::spawn(async move {
            let resp = client().get(slow_url).send().await.expect("slow request");
            let backend = backend_of(&resp);
            (resp.status().as_u16(), backend, resp.text().await.expect("body"))
        });
        let busy = tokio::time::timeout(Duration::from_secs(10), arrived_rx.recv())
            .await
            .expect("slow request never reached a backend")
            .expect("channel");
        let idle = if busy == "one" { "two" } else { "one" };

        let http = client();
        for i in 0..20 {
            let resp = http
                .get(proxy.url(&format!("/quick/{i}")))
                .send()
                .await
                .expect("quick request");
            assert_eq!(resp.status(), 200, "quick request {i}");
            assert_eq!(
                backend_of(&resp),
                idle,
                "quick request {i} went to the busy backend {busy} while its slow request was in flight"
            );
        }

        gate.open();
        let (status, backend, body) = slow.await.expect("slow task");
        assert_eq!((status, body.as_str()), (200, "slow"));
        assert_eq!(backend, busy);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_one_client_on_one_backend() {
    with_timeout(60, async {
        let (a, b, c) = (
            echo_backend("a").await,
            echo_backend("b").await,
            echo_backend("c").await,
        );
        let proxy = TestProxy::start(&balanced_config("ip_hash", &[&a, &b, &c])).await;
        let counts = tally(&proxy, 30).await;
        assert_eq!(
            counts.len(),
            1,
            "one client IP should always map to one backend: {counts:?}"
        );
    })
    .await;
}
