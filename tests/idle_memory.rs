//! What an idle keep-alive connection costs: once idle, an HTTP/1.1 connection is parked outside
//! hyper and holds no read or write buffer, and it still serves its next request.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;
use support::{with_timeout, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNS: usize = 800;
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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Sends one request on `conn` and reads its whole answer ("local", 5 bytes of body).
async fn exchange(conn: &mut TcpStream) -> String {
    conn.write_all(GET).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nlocal") {
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_hold_no_buffers_and_still_serve() {
    with_timeout(60, async {
        let proxy = TestProxy::start(&config()).await;
        // warm up the allocator and the runtime on a few connections first
        for _ in 0..20 {
            let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
            exchange(&mut conn).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib(proxy.pid);
        let mut conns = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
            let answer = exchange(&mut conn).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            conns.push(conn);
        }
        // parked 50 ms after their response; give the last ones time
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = rss_kib(proxy.pid);
        let per_conn = after.saturating_sub(before) as f64 / CONNS as f64;
        eprintln!("RSS {before} -> {after} KiB: {per_conn:.2} KiB per idle connection");
        // hyper's buffers alone are 16-25 KiB per connection (18 KiB here without parking);
        // parked, a connection is its task, socket registration and state (~7 KiB here, some
        // of it the buffers of the connections not parked yet)
        assert!(
            per_conn < 11.0,
            "{per_conn:.2} KiB per idle keep-alive connection (RSS {before} -> {after} KiB)"
        );
        // parked connections answer their next request, two of them pipelined
        for conn in conns.iter_mut().step_by(97) {
            let answer = exchange(conn).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let conn = &mut conns[1];
        conn.write_all(&[GET, GET].concat()).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.windows(5).filter(|w| w == b"local").count() < 2 {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    })
    .await;
}
