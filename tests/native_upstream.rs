//! The native upstream HTTP/1.1 client (`[server] http1_engine = "native"`, issue 23) where it
//! differs from hyper's on purpose, and the upgrade hand-over on both engines. Everything else
//! is the whole suite run with `GATEHOUSE_HTTP1_ENGINE=native`.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::{one_upstream_config, read_response, serve_raw, with_timeout, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(server: SocketAddr, engine: &str) -> String {
    one_upstream_config(server, &format!("http1_engine = \"{engine}\""))
}

/// Reads until `end` is in what was read (or the close); returns all of it.
async fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(end.len()).any(|w| w == end) {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    got
}

/// Answers the first request on each connection and drops the second one unanswered, as a
/// server whose keep-alive timeout ran out just as the request came does.
async fn one_per_connection(mut stream: TcpStream) {
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    if head.is_empty() {
        return;
    }
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    if stream.write_all(ok).await.is_err() {
        return;
    }
    // the next request is read, then the connection closed with no answer
    read_until(&mut stream, b"\r\n\r\n").await;
}

/// A request the upstream drops unanswered on a connection taken from the idle ones (nothing of
/// an answer came, its body untouched) goes once more on a new connection if it is idempotent
/// (RFC 9110 9.2.2): the client sees none of it. A `POST` is not sent twice (the upstream may
/// have acted on it): `502`, as nginx answers. (hyper's client hands back only a request it had
/// not written.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_unanswered_on_a_reused_connection_goes_again() {
    with_timeout(60, async {
        let backend = serve_raw("one-per-connection", one_per_connection).await;
        let proxy = TestProxy::start(&config(backend.addr, "native")).await;
        let mut client = tokio::io::BufStream::new(TcpStream::connect(proxy.addr).await.unwrap());
        let mut opened = 0;
        for (i, method) in ["GET", "PUT", "DELETE", "GET", "POST", "GET"]
            .iter()
            .enumerate()
        {
            let request =
                format!("{method} /{i} HTTP/1.1\r\nHost: n.test\r\nContent-Length: 0\r\n\r\n");
            client.write_all(request.as_bytes()).await.unwrap();
            client.flush().await.unwrap();
            let resp = read_response(&mut client).await.unwrap();
            if *method == "POST" {
                // sent once, on the stale connection, and not again
                assert_eq!(resp.status, 502, "{method} /{i}");
                assert_eq!(backend.connections(), opened, "{method} /{i}");
                continue;
            }
            assert_eq!(
                (resp.status, resp.body_text().as_str()),
                (200, "ok"),
                "{method} /{i}"
            );
            // the first one opened a connection; each later one found it stale and opened one
            opened += 1;
            assert_eq!(backend.connections(), opened, "{method} /{i}");
        }
    })
    .await;
}

/// Answers an upgrade with `101` and, in the same write, the first bytes of the new protocol;
/// then echoes what it reads.
async fn switching(mut stream: TcpStream) {
    read_until(&mut stream, b"\r\n\r\n").await;
    let switch =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\nhello";
    if stream.write_all(switch).await.is_err() {
        return;
    }
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 || stream.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// The bytes that came with the `101` head reach the client first, then the tunnel carries
/// both ways, on either engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_a_101_open_the_tunnel() {
    with_timeout(60, async {
        let backend = serve_raw("switching", switching).await;
        for engine in ["hyper", "native"] {
            let proxy = TestProxy::start(&config(backend.addr, engine)).await;
            let mut client = TcpStream::connect(proxy.addr).await.unwrap();
            let request =
                "GET /up HTTP/1.1\r\nHost: n.test\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n";
            client.write_all(request.as_bytes()).await.unwrap();
            let got = read_until(&mut client, b"hello").await;
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 101 "), "{engine}: {text}");
            assert!(text.ends_with("\r\n\r\nhello"), "{engine}: {text}");
            client.write_all(b"ping").await.unwrap();
            let echo =
                tokio::time::timeout(Duration::from_secs(10), read_until(&mut client, b"ping"))
                    .await
                    .unwrap();
            assert_eq!(echo, b"ping", "{engine}");
        }
    })
    .await;
}
