//! Upgraded connections (WebSocket tunnels) are connections: they keep their slot under
//! `max_connections` and `max_connections_per_ip`, show in `gatehouse_connections_open` and
//! `gatehouse_tunnels_open`, are closed after `timeouts.tunnel_idle` without a byte either way,
//! and are closed once the grace period after their listener's shutdown has passed.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

fn config(http: &str, backend: SocketAddr, extra_server: &str) -> String {
    format!(
        r#"
[listen]
http = "{http}"
admin = "127.0.0.1:0"

[server]
workers = 2
{extra_server}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "ws"

[upstream.ws]
servers = ["{backend}"]
"#
    )
}

/// A WebSocket through the proxy at `addr`, from the local address `ip`; `Err` when the proxy
/// closes the connection instead of answering.
async fn ws_from(ip: &str, addr: SocketAddr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let handshake = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp);
    match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Ok(Ok((ws, resp))) if resp.status() == 101 => Ok(ws),
        Ok(Ok((_, resp))) => Err(format!("status {}", resp.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// One message there and back.
async fn echoes(ws: &mut Ws, text: &str) -> bool {
    if ws.send(Message::Text(text.into())).await.is_err() {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(back)))) => back == text,
        _ => false,
    }
}

/// How long until the tunnel is closed under the client (`None`: still open after `max`).
async fn closed_within(ws: &mut Ws, max: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let left = max.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return Some(start.elapsed()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A value from the admin listener's `/metrics`, 0 if absent.
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

const OPEN: &str = "gatehouse_connections_open{listener=\"http\"}";
const TUNNELS: &str = "gatehouse_tunnels_open{listener=\"http\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_keep_their_slots_under_both_connection_limits_and_show_in_the_gauges() {
    with_timeout(60, async {
        let backend = ws_echo_backend().await;
        let limits = "max_connections = 3\nmax_connections_per_ip = 2";
        let proxy = TestProxy::start(&config("127.0.0.1:0", backend.addr, limits)).await;
        let admin = proxy.admin_addr().await;

        let mut first = ws_from("127.0.0.9", proxy.addr).await.unwrap();
        let mut second = ws_from("127.0.0.9", proxy.addr).await.unwrap();
        assert!(echoes(&mut first, "one").await && echoes(&mut second, "two").await);
        // the per-address limit holds with both tunnels open (hyper let go of their sockets)
        let third = ws_from("127.0.0.9", proxy.addr).await;
        assert!(third.is_err(), "a third tunnel from one address was let in");
        let mut other = ws_from("127.0.0.10", proxy.addr).await.unwrap();
        assert!(echoes(&mut other, "other").await);
        // and the total
        let fourth = ws_from("127.0.0.11", proxy.addr).await;
        assert!(fourth.is_err(), "a fourth tunnel in all was let in");
        assert_eq!(metric(admin, OPEN).await, 3.0);
        assert_eq!(metric(admin, TUNNELS).await, 3.0);

        // a tunnel that ends gives its slot back
        second.close(None).await.unwrap();
        drop(second);
        eventually_async(Duration::from_secs(5), "a slot given back", || async {
            metric(admin, TUNNELS).await == 2.0
        })
        .await;
        let mut again = ws_from("127.0.0.9", proxy.addr).await.unwrap();
        assert!(echoes(&mut again, "again").await);
        assert!(echoes(&mut first, "still").await);
        for mut ws in [first, again, other] {
            ws.close(None).await.unwrap();
        }
        eventually_async(Duration::from_secs(5), "all tunnels closed", || async {
            metric(admin, TUNNELS).await == 0.0 && metric(admin, OPEN).await == 0.0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_closed_after_tunnel_idle_and_a_talking_one_is_not() {
    with_timeout(60, async {
        let backend = ws_echo_backend().await;
        let idle = "timeouts = { idle = \"60s\", tunnel_idle = \"1s\" }";
        let proxy = TestProxy::start(&config("127.0.0.1:0", backend.addr, idle)).await;
        let admin = proxy.admin_addr().await;

        let mut silent = ws_from("127.0.0.1", proxy.addr).await.unwrap();
        let mut talking = ws_from("127.0.0.1", proxy.addr).await.unwrap();
        let talk = async {
            // a message every 300 ms for 3 s: never quiet for the idle period
            for i in 0..10 {
                assert!(echoes(&mut talking, &format!("ping {i}")).await, "echo {i}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        let (closed, ()) = tokio::join!(closed_within(&mut silent, Duration::from_secs(10)), talk);
        let closed = closed.expect("the silent tunnel was closed");
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_secs(5),
            "closed after {closed:?}"
        );
        assert!(
            echoes(&mut talking, "after").await,
            "the talking one is open"
        );
        assert_eq!(metric(admin, TUNNELS).await, 1.0);
        // quiet from now on: it goes too
        let closed = closed_within(&mut talking, Duration::from_secs(10)).await;
        assert!(
            closed.is_some(),
            "the talking tunnel, once silent, was closed"
        );
        eventually_async(Duration::from_secs(5), "gauges back to 0", || async {
            metric(admin, TUNNELS).await == 0.0 && metric(admin, OPEN).await == 0.0
        })
        .await;
    })
    .await;
}

/// Writes `text` to `path`, then `POST /reload` on `admin`: the answer's status.
async fn post_reload(admin: SocketAddr, path: &Path, text: &str) -> u16 {
    std::fs::write(path, text).unwrap();
    let resp = client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_get_the_grace_period_at_shutdown_then_are_closed() {
    with_timeout(60, async {
        let backend = ws_echo_backend().await;
        let first = closed_port_addr().await;
        let grace = "shutdown_grace = \"2s\"";
        let proxy = TestProxy::start(&config(&first.to_string(), backend.addr, grace)).await;
        let admin = proxy.admin_addr().await;

        // the tunnel's listener is removed by a reload: it drains like a request in flight
        let mut moved = ws_from("127.0.0.1", first).await.unwrap();
        let text = config("127.0.0.1:0", backend.addr, grace);
        assert_eq!(post_reload(admin, &proxy.config_path, &text).await, 200);
        let removed = Instant::now();
        assert!(echoes(&mut moved, "during the grace period").await);
        let closed = closed_within(&mut moved, Duration::from_secs(10)).await;
        let closed = closed.map(|_| removed.elapsed());
        let closed = closed.expect("closed after its listener's grace period");
        assert!(
            closed >= Duration::from_millis(1900) && closed < Duration::from_secs(6),
            "closed {closed:?} after the reload"
        );

        // SIGTERM: the same, and the process exits once the tunnel is gone
        let new_listener = || {
            let logs = proxy.logs();
            let mut bound = logs.iter().filter_map(|l| parse_listening_line(l, "http"));
            bound.find(|addr| *addr != first)
        };
        eventually(Duration::from_secs(5), "the new listener", || {
            new_listener().is_some()
        })
        .await;
        let second = new_listener().unwrap();
        let mut last = ws_from("127.0.0.1", second).await.unwrap();
        let mut proxy = proxy;
        proxy.send_signal("TERM");
        let term = Instant::now();
        assert!(echoes(&mut last, "while shutting down").await);
        let closed = closed_within(&mut last, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "closed at the end of the grace period");
        let status = proxy.wait_exit(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert!(
            term.elapsed() < Duration::from_secs(6),
            "{:?}",
            term.elapsed()
        );
    })
    .await;
}
