//! What an idle keep-alive connection costs: once idle, an HTTP/1.1 connection is parked outside
//! hyper and holds no read or write buffer, and it still serves its next request.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;
use support::{proc_status_kb, raw_connect, read_response, with_timeout, RawConn, TestProxy};
use tokio::io::AsyncWriteExt;

const CONNS: usize = 800;
/// Connections opened at once before they are given time to park.
const BATCH: usize = 50;
const GET: &[u8] = b"GET /local HTTP/1.1\r\nHost: t\r\n\r\n";

fn config() -> String {
    r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 1
timeouts = { idle = "60s" }

[[site]]
  [[site.route]]
  exact = "/local"
  respond = { status = 200, body = "local", content_type = "text/plain" }
"#
    .to_string()
}

/// Sends `requests` requests at once on `conn`; each must be answered 200 "local".
async fn exchange(conn: &mut RawConn, requests: usize) {
    conn.get_mut()
        .write_all(&GET.repeat(requests))
        .await
        .expect("write");
    for n in 0..requests {
        let resp = read_response(conn)
            .await
            .unwrap_or_else(|e| panic!("response {n}: {e}"));
        assert_eq!((resp.status, resp.body_text().as_str()), (200, "local"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_hold_no_buffers_and_still_serve() {
    with_timeout(60, async {
        let proxy = TestProxy::start(&config()).await;
        // warm up the allocator and the runtime on a few connections first
        for _ in 0..20 {
            exchange(&mut raw_connect(&proxy).await, 1).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = proc_status_kb(proxy.pid, "VmRSS");
        let mut conns = Vec::with_capacity(CONNS);
        for n in 0..CONNS {
            let mut conn = raw_connect(&proxy).await;
            exchange(&mut conn, 1).await;
            conns.push(conn);
            if n % BATCH == BATCH - 1 {
                // let the batch park: a connection keeps its buffers for a few ms after its
                // answer (`PARK_AFTER_FIRST_MS`), and the RSS keeps its peak, so connections
                // opened faster than they park would be measured with their buffers (more so
                // on a loaded machine)
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        }
        // parked 50 ms after their response; give the last ones time
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = proc_status_kb(proxy.pid, "VmRSS");
        let per_conn = after.saturating_sub(before) as f64 / CONNS as f64;
        eprintln!("RSS {before} -> {after} KiB: {per_conn:.2} KiB per idle connection");
        // hyper's buffers alone are 16-25 KiB per connection (18 KiB here without parking);
        // parked, a connection is its task, socket registration and state: 1.9-2.0 KiB on
        // hyper, 1.8 on the native engine (debug build, session 8: the task holds only what
        // lasts, each activation is boxed, and a connection parks 5 ms after its first answer);
        // 3.6 and 2.3 when it parked after 50 ms, 5.5 and 4.0 with the task of session 7 (same
        // machine, this test)
        let native = std::env::var("GATEHOUSE_HTTP1_ENGINE").is_ok_and(|e| e == "native");
        let bound = if native { 2.2 } else { 2.6 };
        assert!(
            per_conn < bound,
            "{per_conn:.2} KiB per idle keep-alive connection (RSS {before} -> {after} KiB)"
        );
        // parked connections answer their next request, two of them pipelined
        for conn in conns.iter_mut().step_by(97) {
            exchange(conn, 1).await;
        }
        exchange(&mut conns[1], 2).await;
    })
    .await;
}
