//! `[listen] proxy_protocol = true`: a v1 or v2 PROXY header from a trusted peer names the client
//! (X-Forwarded-For, access log), over HTTP and before TLS; anyone else, and a trusted peer
//! without a valid header, is disconnected without a response; `gatehouse check` wants
//! `trusted_proxies` with it. Real binary, raw TCP clients.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use support::{
    any_cert_client, echo_backend, json_str_field, run_gatehouse, with_timeout, Backend, Echo,
    TestProxy,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Long enough for any honest header, short enough that the "no header" test is quick.
const HEADER_READ_SECS: u64 = 3;
const CLIENT: &str = "203.0.113.9";

fn config(backend: &Backend) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
proxy_protocol = true

[server]
workers = 2
trusted_proxies = ["127.0.0.1"]
timeouts = {{ header_read = "{HEADER_READ_SECS}s" }}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
        backend.addr
    )
}

fn tls_config(backend: &Backend) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
proxy_protocol = true

[server]
trusted_proxies = ["127.0.0.1"]

[[site]]
hosts = ["pp.test"]
tls = {{ cert = "pp.pem", key = "pp.key" }}
redirect_https = false

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
        backend.addr
    )
}

fn request(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: pp.test\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

fn v1(source: &str, sport: u16) -> Vec<u8> {
    let family = if source.contains(':') { "TCP6" } else { "TCP4" };
    let destination = if source.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {family} {source} {destination} {sport} 80\r\n").into_bytes()
}

/// A v2 PROXY (or, with `local`, LOCAL) header for TCP over IPv4 from `source`, with a TLV.
fn v2(source: [u8; 4], sport: u16, local: bool) -> Vec<u8> {
    let mut block = source.to_vec();
    block.extend_from_slice(&[127, 0, 0, 1]);
    block.extend_from_slice(&sport.to_be_bytes());
    block.extend_from_slice(&80u16.to_be_bytes());
    block.extend_from_slice(&[0x01, 0x00, 0x08]); // ALPN TLV, skipped
    block.extend_from_slice(b"http/1.1");
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[if local { 0x20 } else { 0x21 }, 0x11]);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// A TCP connection to `addr`, from the local address `from` (e.g. 127.0.0.2) if given.
async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0)).expect("bind client");
    }
    socket.connect(addr).await.expect("connect")
}

/// Everything readable until the peer closes (EOF or reset).
async fn read_all(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` (ignoring a write the closed connection refuses), then reads until closed.
async fn exchange(addr: SocketAddr, from: Option<IpAddr>, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr, from).await;
    let _ = stream.write_all(bytes).await;
    read_all(&mut stream).await
}

/// The status and what the echo backend saw, from a raw HTTP/1.1 response.
fn echoed(raw: &[u8]) -> (u16, Echo) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, Echo::parse(body))
}

/// The first log line matching `wanted`, waiting (5 s max) for the proxy to write it and the
/// test's reader thread to collect it.
async fn logged(proxy: &TestProxy, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = proxy.logs();
        if let Some(line) = logs.iter().find(|l| wanted(l)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no log line {what}; logs:\n{}",
            logs.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `client` of the access-log line for `path`.
async fn access_client(proxy: &TestProxy, path: &str) -> String {
    let line = logged(proxy, &format!("for {path}"), |l| {
        json_str_field(l, "message").as_deref() == Some("request")
            && json_str_field(l, "path").as_deref() == Some(path)
    })
    .await;
    json_str_field(&line, "client").expect("client field")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_header_names_the_client() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend)).await;
        for (source, path) in [(CLIENT, "/v1-tcp4"), ("2001:db8::9", "/v1-tcp6")] {
            let bytes = [v1(source, 40000), request(path, "")].concat();
            let (status, echo) = echoed(&exchange(proxy.addr, None, &bytes).await);
            assert_eq!(status, 200);
            assert_eq!(echo.uri, path, "the request after the header is intact");
            assert_eq!(echo.header("x-forwarded-for").as_deref(), Some(source));
            assert_eq!(access_client(&proxy, path).await, source);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_header_names_the_client_and_local_keeps_the_peer() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend)).await;
        let bytes = [v2([203, 0, 113, 9], 40000, false), request("/v2", "")].concat();
        let (status, echo) = echoed(&exchange(proxy.addr, None, &bytes).await);
        assert_eq!(status, 200);
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some(CLIENT));
        assert_eq!(access_client(&proxy, "/v2").await, CLIENT);

        // LOCAL (a load balancer's health check): the socket peer is the client
        let bytes = [v2([198, 51, 100, 1], 1, true), request("/v2-local", "")].concat();
        let (status, echo) = echoed(&exchange(proxy.addr, None, &bytes).await);
        assert_eq!(status, 200);
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(access_client(&proxy, "/v2-local").await, "127.0.0.1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_rule_applies_to_the_proxy_source() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend)).await;
        // the PROXY source is not a trusted proxy: its X-Forwarded-For is replaced
        let xff = "X-Forwarded-For: 1.2.3.4\r\n";
        let bytes = [v1(CLIENT, 40000), request("/xff-untrusted", xff)].concat();
        let (_, echo) = echoed(&exchange(proxy.addr, None, &bytes).await);
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some(CLIENT));
        assert_eq!(access_client(&proxy, "/xff-untrusted").await, CLIENT);

        // the PROXY source is itself trusted: its X-Forwarded-For is believed and extended
        let xff = "X-Forwarded-For: 198.51.100.7\r\n";
        let bytes = [v1("127.0.0.1", 40000), request("/xff-trusted", xff)].concat();
        let (_, echo) = echoed(&exchange(proxy.addr, None, &bytes).await);
        assert_eq!(
            echo.header("x-forwarded-for").as_deref(),
            Some("198.51.100.7, 127.0.0.1")
        );
        assert_eq!(access_client(&proxy, "/xff-trusted").await, "198.51.100.7");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_before_tls_on_the_https_listener() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let cert = rcgen::generate_simple_self_signed(vec!["pp.test".to_string()]).unwrap();
        let files = [
            ("pp.pem", cert.cert.pem()),
            ("pp.key", cert.key_pair.serialize_pem()),
        ];
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        let proxy = TestProxy::start_tls_with_files(&tls_config(&backend), &files).await;

        for (header, path) in [
            (v1(CLIENT, 40000), "/tls-v1"),
            (v2([203, 0, 113, 9], 40000, false), "/tls-v2"),
        ] {
            let mut tcp = connect(proxy.https(), None).await;
            tcp.write_all(&header).await.unwrap();
            let mut tls = tls_connector()
                .connect(ServerName::try_from("pp.test").unwrap(), tcp)
                .await
                .expect("TLS handshake after the PROXY header");
            tls.write_all(&request(path, "")).await.unwrap();
            let (status, echo) = echoed(&read_all(&mut tls).await);
            assert_eq!(status, 200);
            assert_eq!(echo.header("x-forwarded-for").as_deref(), Some(CLIENT));
            assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
            assert_eq!(access_client(&proxy, path).await, CLIENT);
        }

        // a TLS ClientHello where the header should be is refused like any garbage
        let tcp = connect(proxy.https(), None).await;
        let handshake = tls_connector()
            .connect(ServerName::try_from("pp.test").unwrap(), tcp)
            .await;
        assert!(handshake.is_err(), "TLS without a PROXY header must fail");
    })
    .await;
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(any_cert_client(rustls::DEFAULT_VERSIONS, &[]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peer_is_closed_without_a_response() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let env = [("RUST_LOG", "info,gatehouse=debug")];
        let proxy = TestProxy::start_with_env(&config(&backend), &env).await;
        let outsider: IpAddr = "127.0.0.2".parse().unwrap();

        // a valid header and request from a peer outside trusted_proxies
        let bytes = [v1(CLIENT, 40000), request("/untrusted", "")].concat();
        let answer = exchange(proxy.addr, Some(outsider), &bytes).await;
        assert!(
            answer.is_empty(),
            "got {:?}",
            String::from_utf8_lossy(&answer)
        );

        // closed at once, not after header_read: nothing is read from it
        let start = Instant::now();
        let mut silent = connect(proxy.addr, Some(outsider)).await;
        assert!(read_all(&mut silent).await.is_empty());
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_secs(HEADER_READ_SECS) / 2,
            "closed after {waited:?}"
        );

        logged(&proxy, "refusing 127.0.0.2", |l| {
            json_str_field(l, "peer").is_some_and(|p| p.starts_with("127.0.0.2:"))
                && l.contains("not in trusted_proxies")
        })
        .await;
        assert!(!proxy.logs().iter().any(|l| l.contains("/untrusted")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peer_without_a_valid_header_is_closed() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let env = [("RUST_LOG", "info,gatehouse=debug")];
        let proxy = TestProxy::start_with_env(&config(&backend), &env).await;

        let bad_headers: [&[u8]; 3] = [
            b"",
            b"PROXY TCP4 203.0.113.9 nonsense 1 2\r\n",
            b"PROXY TCP4 203.0.113.9\n",
        ];
        for bad in bad_headers {
            let bytes = [bad, &request("/no-header", "")].concat();
            let answer = exchange(proxy.addr, None, &bytes).await;
            assert!(
                answer.is_empty(),
                "{bad:?} got {:?}",
                String::from_utf8_lossy(&answer)
            );
        }

        // silence: closed once header_read is over
        let start = Instant::now();
        let mut silent = connect(proxy.addr, None).await;
        assert!(read_all(&mut silent).await.is_empty());
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(HEADER_READ_SECS) - Duration::from_millis(500),
            "closed after only {waited:?}"
        );

        for reason in [
            "not a PROXY protocol header",
            "malformed PROXY v1 line",
            "PROXY header not received in time",
        ] {
            logged(&proxy, &format!("with {reason:?}"), |l| l.contains(reason)).await;
        }
        assert!(!proxy.logs().iter().any(|l| l.contains("/no-header")));
    })
    .await;
}

#[test]
fn check_rejects_proxy_protocol_without_trusted_proxies() {
    let config = "[listen]\nhttp = \"127.0.0.1:0\"\nproxy_protocol = true\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200, body = \"x\" }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let out = run_gatehouse(&["check", "--config", path], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{}", out.stderr);
    for wanted in [
        format!("{path}:3:18: `listen.proxy_protocol`"),
        "trusted_proxies = [".to_string(),
    ] {
        assert!(
            out.stderr.contains(&wanted),
            "stderr should contain {wanted:?}:\n{}",
            out.stderr
        );
    }

    let fixed = config.replace(
        "\n\n[[site]]",
        "\n\n[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\n[[site]]",
    );
    std::fs::write(path, fixed).unwrap();
    let out = run_gatehouse(&["check", "--config", path], &[], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", out.stderr);
}

/// The per-address connection limit counts the client the header names, not the load balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_counts_the_client_the_header_names() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let config =
            config(&backend).replace("workers = 2\n", "workers = 2\nmax_connections_per_ip = 1\n");
        let proxy = TestProxy::start(&config).await;
        // one connection from 203.0.113.9 held open with a request in flight...
        let mut held = connect(proxy.addr, None).await;
        let keep = b"GET /held HTTP/1.1\r\nHost: pp.test\r\n\r\n";
        held.write_all(&[v1(CLIENT, 40000), keep.to_vec()].concat())
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = held.read(&mut buf).await.expect("response");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // ...so a second one from the same client, through the same balancer, is refused
        let refused = exchange(
            proxy.addr,
            None,
            &[v1(CLIENT, 40001), request("/2", "")].concat(),
        )
        .await;
        assert!(refused.is_empty(), "closed without a response");
        // while another client through the same balancer is served
        let other = exchange(
            proxy.addr,
            None,
            &[v1("203.0.113.10", 40002), request("/3", "")].concat(),
        )
        .await;
        assert_eq!(echoed(&other).0, 200);
    })
    .await;
}
