//! The admin listener as a closed door: only requests addressed to its own names (DNS rebinding
//! gets `421`), no cross-origin `POST` (`403`), `[server] timeouts.header_read` and `idle` on its
//! connections, at most 16 of them at once (refused peers counted apart), and a refused peer's
//! connection closed after its `403`. Raw sockets against the real binary.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// The allowed peers' cap, `admin::MAX_CONNECTIONS`.
const CAP: usize = 16;

fn config(listen_extra: &str, server_extra: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
{listen_extra}

[server]
workers = 2
{server_extra}

[[site]]
  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "ok" }}
"#
    )
}

type Conn = BufReader<TcpStream>;

async fn connect(admin: SocketAddr) -> Conn {
    BufReader::new(TcpStream::connect(admin).await.expect("connect to admin"))
}

/// A connection from `from` (another loopback address: 127.0.0.0/8 is all local).
async fn connect_from(from: &str, admin: SocketAddr) -> Conn {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    BufReader::new(socket.connect(admin).await.expect("connect to admin"))
}

/// Sends `method path` with `headers` (each "Name: value") on `conn`; the status and body.
async fn ask(conn: &mut Conn, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    conn.get_mut().write_all(head.as_bytes()).await.unwrap();
    let resp = read_response(conn).await.expect("an answer");
    (resp.status, resp.body_text())
}

/// Whether the server closes `conn` within `within` (EOF or reset, nothing more sent).
async fn closed_within(conn: &mut Conn, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, conn.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected bytes after the answer"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_addressed_to_another_name_get_421_and_are_closed() {
    with_timeout(30, async {
        let proxy = TestProxy::start(&config("admin_hosts = [\"admin.internal\"]", "")).await;
        let admin = proxy.admin_addr().await;
        let port = admin.port();
        // what a DNS-rebinding page sends: its own name, resolved to 127.0.0.1
        for path in ["/metrics", "/config", "/live"] {
            let mut conn = connect(admin).await;
            let host = format!("Host: rebind.evil.example:{port}");
            let (status, body) = ask(&mut conn, "GET", path, &[&host]).await;
            assert_eq!(status, 421, "{path}: {body}");
            assert!(!body.contains("upstream"), "{path} leaked: {body}");
            assert!(closed_within(&mut conn, Duration::from_secs(5)).await);
        }
        let mut conn = connect(admin).await;
        let (status, _) = ask(&mut conn, "POST", "/reload", &["Host: evil.example"]).await;
        assert_eq!(status, 421);
        // its own names, on one kept-alive connection
        let mut conn = connect(admin).await;
        for host in [
            format!("Host: localhost:{port}"),
            "Host: localhost".to_string(),
            format!("Host: 127.0.0.1:{port}"),
            format!("Host: [::1]:{port}"),
            "Host: Admin.Internal".to_string(),
        ] {
            let (status, body) = ask(&mut conn, "GET", "/live", &[&host]).await;
            assert_eq!((status, body.as_str()), (200, "live\n"), "{host}");
        }
        let (status, _) = ask(&mut conn, "GET", "/live", &[]).await;
        assert_eq!(status, 400, "HTTP/1.1 without Host");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_post_is_refused() {
    with_timeout(30, async {
        let proxy = TestProxy::start(&config("", "")).await;
        let admin = proxy.admin_addr().await;
        let host = format!("Host: 127.0.0.1:{}", admin.port());
        for origin in [
            "Origin: http://evil.example".to_string(),
            format!("Origin: http://localhost:{}", admin.port() ^ 1),
            "Origin: null".to_string(),
        ] {
            let mut conn = connect(admin).await;
            let (status, body) = ask(&mut conn, "POST", "/reload", &[&host, &origin]).await;
            assert_eq!(status, 403, "{origin}: {body}");
            assert!(!body.contains("unchanged"), "{origin}: {body}");
        }
        // the admin page itself, and `gatehouse reload` (no Origin)
        let same = format!("Origin: http://localhost:{}", admin.port());
        let mut conn = connect(admin).await;
        let (status, body) = ask(&mut conn, "POST", "/reload", &[&host, &same]).await;
        assert_eq!((status, body.as_str()), (200, "unchanged\n"));
        let (status, body) = ask(&mut conn, "POST", "/reload", &[&host]).await;
        assert_eq!((status, body.as_str()), (200, "unchanged\n"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_peer_gets_its_403_and_the_connection_is_closed() {
    with_timeout(30, async {
        let proxy = TestProxy::start(&config("admin_allow = [\"127.0.0.2\"]", "")).await;
        let admin = proxy.admin_addr().await;
        let mut refused = connect_from("127.0.0.3", admin).await;
        let (status, _) = ask(&mut refused, "GET", "/live", &["Host: localhost"]).await;
        assert_eq!(status, 403);
        assert!(
            closed_within(&mut refused, Duration::from_secs(5)).await,
            "a refused peer's connection stayed open after its 403"
        );
        let mut allowed = connect_from("127.0.0.2", admin).await;
        let (status, _) = ask(&mut allowed, "GET", "/live", &["Host: localhost"]).await;
        assert_eq!(status, 200);
        assert!(!closed_within(&mut allowed, Duration::from_millis(500)).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed() {
    with_timeout(60, async {
        let timeouts = "timeouts = { header_read = \"1s\", idle = \"4s\" }";
        let proxy = TestProxy::start(&config("", timeouts)).await;
        let admin = proxy.admin_addr().await;

        // nothing at all, and half a head: cut at header_read
        let mut silent = connect(admin).await;
        let mut slow = connect(admin).await;
        let start = Instant::now();
        slow.get_mut()
            .write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(8)).await);
        assert!(closed_within(&mut slow, Duration::from_secs(8)).await);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(900), "cut too soon: {took:?}");

        // after an answer the idle clock runs, longer than header_read; then the connection goes
        let mut conn = connect(admin).await;
        assert_eq!(
            ask(&mut conn, "GET", "/live", &["Host: localhost"]).await.0,
            200
        );
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(
            ask(&mut conn, "GET", "/live", &["Host: localhost"]).await.0,
            200
        );
        let start = Instant::now();
        assert!(
            closed_within(&mut conn, Duration::from_secs(15)).await,
            "an idle admin connection stayed open"
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(3500),
            "closed before idle: {took:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_16_connections_at_once_and_refused_peers_apart() {
    with_timeout(60, async {
        let proxy = TestProxy::start(&config("admin_allow = [\"127.0.0.1\"]", "")).await;
        let admin = proxy.admin_addr().await;
        // refused peers hold their own few places, not the allowed ones'
        let mut refused = Vec::new();
        for _ in 0..8 {
            refused.push(connect_from("127.0.0.3", admin).await);
        }
        let mut open = Vec::new();
        for i in 0..CAP {
            let mut conn = connect(admin).await;
            let (status, _) = ask(&mut conn, "GET", "/live", &["Host: localhost"]).await;
            assert_eq!(status, 200, "connection {i}");
            open.push(conn);
        }
        // one too many: closed before any answer
        let mut extra = connect(admin).await;
        let _ = extra
            .get_mut()
            .write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert!(
            closed_within(&mut extra, Duration::from_secs(5)).await,
            "connection {} was served",
            CAP + 1
        );
        // a place freed is a place to take
        drop(open.pop());
        let served = poll_until(Duration::from_secs(5), || async {
            let mut conn = connect(admin).await;
            let _ = conn
                .get_mut()
                .write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            read_response(&mut conn)
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        assert!(served.is_some(), "a freed place was not taken");
        drop(refused);
    })
    .await;
}

/// `gatehouse health` and `gatehouse reload` name an address the door answers to, also when the
/// listener is bound to every address (they ask it on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatehouse_health_and_reload_still_get_in() {
    with_timeout(60, async {
        let text = config("", "").replace(
            "admin = \"127.0.0.1:0\"",
            "admin = \"0.0.0.0:0\"\nadmin_allow = [\"127.0.0.0/8\"]",
        );
        let proxy = TestProxy::start(&text).await;
        let admin = proxy.admin_addr().await;
        assert!(admin.ip().is_unspecified(), "{admin}");
        let (admin, path) = (admin.to_string(), proxy.config_path.clone());
        let (health, reload) = tokio::task::spawn_blocking(move || {
            let path = path.to_str().unwrap();
            let health = run_gatehouse(&["health", "--admin", &admin, "--live"], &[], &[]);
            let reload = run_gatehouse(&["reload", "--config", path, "--admin", &admin], &[], &[]);
            (health, reload)
        })
        .await
        .unwrap();
        assert_eq!(health.status.code(), Some(0), "{}", health.stderr);
        assert!(health.stdout.contains("live"), "{}", health.stdout);
        assert_eq!(reload.status.code(), Some(0), "{}", reload.stderr);
        assert!(reload.stdout.contains("unchanged"), "{}", reload.stdout);
    })
    .await;
}
