//! Compression's memory budget (`[server] max_encoders`): with 1,000 compressed responses in
//! flight at once, only `max_encoders` of them get an encoder, the others go out uncompressed
//! (counted), and the proxy's RSS stays under a stated figure.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const RESPONSES: usize = 1_000;
const CAP: usize = 64;

/// About 100 KB of JSON records (as the README's compression measurements used).
fn json_piece() -> Bytes {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < 100_000 {
        out.push_str(&format!(
            r#"{{"id":{i},"name":"user-{i}","email":"user-{i}@example.com","score":{}}},"#,
            (i * 7919) % 1000
        ));
        i += 1;
    }
    Bytes::from(out)
}

/// Each response: 100 KB of JSON at once, the rest (`]`) once `gate` opens.
async fn held_backend(gate: Gate) -> Backend {
    let piece = json_piece();
    serve("held", move |_req| {
        let (gate, piece) = (gate.clone(), piece.clone());
        async move {
            let parts = futures_util::stream::unfold(0, move |step| {
                let (gate, piece) = (gate.clone(), piece.clone());
                async move {
                    let data = match step {
                        0 => piece,
                        1 if gate.wait(Duration::from_secs(120)).await => Bytes::from_static(b"]"),
                        _ => return None,
                    };
                    Some((Ok::<_, Infallible>(Frame::data(data)), step + 1))
                }
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(StreamBody::new(parts).boxed())
                .unwrap()
        }
    })
    .await
}

fn config(backend: SocketAddr, max_encoders: usize) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 2
encode = ["br"]
max_encoders = {max_encoders}
# a debug build compresses slowly: 1,000 brotli responses keep both cores busy for minutes
timeouts = {{ header_read = "600s", upstream_connect = "600s", upstream_response = "600s" }}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["{backend}"]
"#
    )
}

async fn metric(admin: SocketAddr, key: &str) -> f64 {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == key)
        .map_or(0.0, |(_, v)| v.parse().unwrap())
}

struct Measured {
    /// The proxy's RSS before and with all responses in flight, in KiB.
    idle_kb: u64,
    loaded_kb: u64,
    compressed: usize,
    encoders_active: f64,
    skipped: f64,
}

/// 1,000 `br` responses held in flight at once (each has sent its first 100 KB), measured.
async fn thousand_in_flight(max_encoders: usize) -> Measured {
    let gate = Gate::new();
    let backend = held_backend(gate.clone()).await;
    let proxy = TestProxy::start(&config(backend.addr, max_encoders)).await;
    let admin = proxy.admin_addr().await;
    let idle_kb = proc_status_kb(proxy.pid, "VmRSS");
    let started = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let responses: Vec<_> = (0..RESPONSES)
        .map(|i| {
            let (http, url, started) =
                (http.clone(), proxy.url(&format!("/r/{i}")), started.clone());
            tokio::spawn(async move {
                let mut resp = http
                    .get(url)
                    .header("accept-encoding", "br")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let coding = header(&resp, "content-encoding");
                assert!(resp.chunk().await.unwrap().is_some(), "a first piece");
                started.fetch_add(1, Ordering::SeqCst);
                while resp.chunk().await.unwrap().is_some() {}
                coding
            })
        })
        .collect();
    eventually(Duration::from_secs(900), "every response under way", || {
        started.load(Ordering::SeqCst) == RESPONSES
    })
    .await;
    let loaded_kb = proc_status_kb(proxy.pid, "VmRSS");
    let encoders_active = metric(admin, "gatehouse_encoders_active").await;
    let skipped = metric(admin, "gatehouse_encode_skipped_total{reason=\"budget\"}").await;
    gate.open();
    let mut compressed = 0;
    for response in responses {
        match response.await.unwrap().as_deref() {
            Some("br") => compressed += 1,
            None => {}
            other => panic!("content-encoding {other:?}"),
        }
    }
    eprintln!(
        "max_encoders = {max_encoders}: RSS {} MiB idle, {} MiB with {RESPONSES} responses in flight; {compressed} compressed, {skipped} skipped, {encoders_active} encoders alive",
        idle_kb / 1024,
        loaded_kb / 1024
    );
    Measured {
        idle_kb,
        loaded_kb,
        compressed,
        encoders_active,
        skipped,
    }
}

/// The figure the cap holds RSS under with 1,000 responses in flight. Measured (debug build, 2
/// cores): 157 MiB with `max_encoders = 1` (what 1,000 responses with 100 KB under way cost
/// uncompressed), 284 MiB with 64, 1,785 MiB with no cap (about 1.6 MiB per brotli encoder
/// that has taken 100 KB; up to 4.4 MiB on longer bodies).
const CAPPED_RSS_MIB: u64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encoder_cap_holds_rss_with_a_thousand_compressed_responses_in_flight() {
    with_timeout(600, async {
        let m = thousand_in_flight(CAP).await;
        assert_eq!(m.compressed, CAP, "only the first {CAP} got an encoder");
        assert_eq!(m.encoders_active, CAP as f64);
        assert_eq!(m.skipped, (RESPONSES - CAP) as f64);
        assert!(
            m.loaded_kb < CAPPED_RSS_MIB << 10,
            "RSS {} MiB (idle {} MiB) over {CAPPED_RSS_MIB} MiB",
            m.loaded_kb >> 10,
            m.idle_kb >> 10
        );
    })
    .await;
}

/// The same without a cap, for the figure to compare with (several GiB: run it alone, by hand,
/// `cargo test --test encode_budget -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes several GiB of memory"]
async fn without_the_cap_every_response_holds_an_encoder() {
    with_timeout(1800, async {
        let m = thousand_in_flight(0).await;
        assert_eq!(m.compressed, RESPONSES);
        assert_eq!(m.skipped, 0.0);
        assert!(
            m.loaded_kb > CAPPED_RSS_MIB << 10,
            "{} MiB",
            m.loaded_kb >> 10
        );
    })
    .await;
}
