//! Acceptance items 9-11: hop-by-hop stripping (both directions), X-Forwarded-*, X-Request-Id.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
mod wire;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::{
    client, echo_backend, one_upstream_config, raw_request, render_echo, serve, with_timeout,
    Backend, Echo, TestProxy,
};

fn config(backend: &Backend, trusted_proxies: &str) -> String {
    one_upstream_config(
        backend.addr,
        &format!("trusted_proxies = {trusted_proxies}"),
    )
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "proxy-connection",
    "upgrade",
    "x-secret",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_stripped() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend, "[]")).await;

        let resp = raw_request(
            proxy.addr,
            "GET /hop HTTP/1.1\r\n\
             Host: hop.example.com\r\n\
             Connection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             TE: trailers\r\n\
             Proxy-Connection: keep-alive\r\n\
             X-Keep: yes\r\n\
             \r\n",
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        let echo = Echo::parse(&resp.body_text());
        for name in HOP_BY_HOP {
            assert_eq!(
                echo.header(name),
                None,
                "hop-by-hop header {name} reached the backend; backend saw {:?}",
                echo.headers
            );
        }
        assert_eq!(echo.header("x-keep").as_deref(), Some("yes"));
        assert_eq!(echo.header("host").as_deref(), Some("hop.example.com"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_header_without_connection_upgrade_is_not_forwarded() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend, "[]")).await;

        let resp = raw_request(
            proxy.addr,
            "GET /up HTTP/1.1\r\n\
             Host: up.example.com\r\n\
             Upgrade: foo\r\n\
             X-Keep: yes\r\n\
             \r\n",
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.body_text());
        let echo = Echo::parse(&resp.body_text());
        assert_eq!(
            echo.header("upgrade"),
            None,
            "Upgrade without `Connection: upgrade` must not be forwarded; backend saw {:?}",
            echo.headers
        );
        assert_eq!(echo.header("x-keep").as_deref(), Some("yes"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_stripped() {
    with_timeout(30, async {
        let backend = serve("resp", |req| async move {
            let body = render_echo(req).await;
            Response::builder()
                .header("connection", "X-Resp-Secret")
                .header("x-resp-secret", "1")
                .header("keep-alive", "timeout=9")
                .header("x-resp-keep", "yes")
                .body(Full::new(Bytes::from(body)))
                .expect("response")
        })
        .await;
        let proxy = TestProxy::start(&config(&backend, "[]")).await;

        let resp = raw_request(
            proxy.addr,
            "GET /resp HTTP/1.1\r\nHost: resp.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 200);
        assert!(
            resp.all("x-resp-secret").is_empty(),
            "header named in the backend's Connection reached the client: {:?}",
            resp.headers
        );
        assert!(
            !resp
                .all("keep-alive")
                .iter()
                .any(|v| v.contains("timeout=9")),
            "backend's Keep-Alive reached the client: {:?}",
            resp.headers
        );
        assert!(
            !resp
                .all("connection")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("x-resp-secret")),
            "backend's Connection header reached the client: {:?}",
            resp.headers
        );
        assert_eq!(resp.header("x-resp-keep"), Some("yes"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_untrusted_client_are_replaced() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend, "[]")).await;
        let resp = client()
            .get(proxy.url("/fwd"))
            .header("host", "App.Example.com:8443")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example.net")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            echo.header("x-forwarded-host").as_deref(),
            Some("app.example.com:8443"),
            "X-Forwarded-Host must be the request's canonical Host"
        );
        assert_eq!(
            echo.header("host").as_deref(),
            Some("app.example.com:8443"),
            "Host must be the canonical authority (lower-cased)"
        );

        // No client-sent X-Forwarded-* at all.
        let resp = client()
            .get(proxy.url("/fwd"))
            .header("host", "plain.example.com")
            .send()
            .await
            .expect("request");
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            echo.header("x-forwarded-host").as_deref(),
            Some("plain.example.com")
        );
        assert_eq!(echo.header("host").as_deref(), Some("plain.example.com"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_trusted_proxy_are_believed() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend, r#"["127.0.0.1/32"]"#)).await;

        let resp = client()
            .get(proxy.url("/fwd"))
            .header("host", "inner.example.com")
            .header("x-forwarded-for", "1.2.3.4")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(
            echo.header("x-forwarded-for").as_deref(),
            Some("1.2.3.4, 127.0.0.1")
        );
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            echo.header("x-forwarded-host").as_deref(),
            Some("inner.example.com")
        );
        assert_eq!(echo.header("host").as_deref(), Some("inner.example.com"));

        // A trusted hop's claims about the original scheme and host are kept.
        let resp = client()
            .get(proxy.url("/fwd"))
            .header("host", "inner.example.com")
            .header("x-forwarded-for", "5.6.7.8")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "public.example.com")
            .send()
            .await
            .expect("request");
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(
            echo.header("x-forwarded-for").as_deref(),
            Some("5.6.7.8, 127.0.0.1")
        );
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(
            echo.header("x-forwarded-host").as_deref(),
            Some("public.example.com")
        );
        assert_eq!(echo.header("host").as_deref(), Some("inner.example.com"));
    })
    .await;
}

fn request_id_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_propagated_or_generated() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend, "[]")).await;
        let http = client();

        // Client-supplied id: passed to the backend and echoed on the response.
        let resp = http
            .get(proxy.url("/rid"))
            .header("x-request-id", "abc-123")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(request_id_of(&resp).as_deref(), Some("abc-123"));
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.all("x-request-id"), vec!["abc-123"]);

        // No id: one is generated, the same on both sides, and unique per request.
        let mut seen = Vec::new();
        for _ in 0..2 {
            let resp = http.get(proxy.url("/rid")).send().await.expect("request");
            assert_eq!(resp.status(), 200);
            let on_response = request_id_of(&resp).expect("x-request-id on response");
            assert!(!on_response.trim().is_empty(), "empty generated request id");
            let echo = Echo::parse(&resp.text().await.expect("body"));
            assert_eq!(
                echo.all("x-request-id"),
                vec![on_response.as_str()],
                "backend must see the same generated id as the response carries"
            );
            seen.push(on_response);
        }
        assert_ne!(seen[0], seen[1], "generated request ids must differ");
    })
    .await;
}

/// A backend that answers with an `X-Request-Id` of its own (many echo the request's, some make
/// their own): the client gets exactly one, Gatehouse's, on either engine (the native one writes
/// it beside the answer's map and leaves the upstream's out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_request_id_gives_way_to_gatehouses_own() {
    with_timeout(30, async {
        let backend = serve("rid", |req| async move {
            let body = render_echo(req).await;
            Response::builder()
                .header("x-request-id", "the-backend-made-this")
                .header("x-request-id", "and-this")
                .body(Full::new(Bytes::from(body)))
                .expect("response")
        })
        .await;
        let proxy = TestProxy::start(&config(&backend, "[]")).await;
        let resp = raw_request(
            proxy.addr,
            "GET /rid HTTP/1.1\r\nHost: rid.example.com\r\nX-Request-Id: client-1\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.all("x-request-id"), ["client-1"], "{:?}", resp.headers);
        let resp = raw_request(
            proxy.addr,
            "GET /rid HTTP/1.1\r\nHost: rid.example.com\r\n\r\n",
        )
        .await;
        let ids = resp.all("x-request-id");
        assert!(ids.len() == 1 && ids[0].len() == 32, "{:?}", resp.headers);
    })
    .await;
}

/// The response's id is marked sensitive: HTTP/2 sends it as an HPACK literal never indexed (a
/// value unique to each response would only churn the dynamic table), still the same value;
/// HTTP/1.1 writes exactly the line it always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_request_id_is_never_indexed_over_h2_and_unchanged_over_h1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(&backend, "[]")).await;

        let got = wire::exchange(
            proxy.addr,
            b"GET /rid HTTP/1.1\r\nHost: h.test\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(got.text().starts_with("HTTP/1.1 200 "), "{}", got.text());
        assert!(got.text().contains("\r\nx-request-id: abc-123\r\n"), "{}", got.text());

        // the h2 crate decodes the value as sent
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = hyper::Request::get("http://h.test/rid")
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-request-id"], "abc-123");
        drop(client);
        conn.abort();

        // and its HPACK block, two responses on one connection: one never-indexed field each
        let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let mut out = wire::h2_start();
        for stream in [1, 3] {
            out.extend(wire::h2_headers(
                stream,
                &[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/rid"),
                    (":authority", "h.test"),
                ],
                true,
            ));
        }
        tcp.write_all(&out).await.unwrap();
        let mut blocks = Vec::new();
        while blocks.len() < 2 {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.unwrap();
            match head[3] {
                // SETTINGS (not an ACK): acknowledged
                0x4 if head[4] & 0x1 == 0 => tcp
                    .write_all(&wire::frame(0x4, 0x1, 0, &[]))
                    .await
                    .unwrap(),
                0x1 => {
                    assert_eq!(head[4] & 0x28, 0, "padded or prioritised HEADERS");
                    assert_ne!(head[4] & 0x4, 0, "a CONTINUATION follows");
                    blocks.push(payload);
                }
                _ => {}
            }
        }
        for block in &blocks {
            let kinds = hpack_kinds(block);
            assert_eq!(
                kinds.iter().filter(|k| **k == Hpack::NeverIndexed).count(),
                1,
                "{kinds:?}"
            );
        }
    })
    .await;
}

/// How an HPACK field representation asks the decoder to treat its table (RFC 7541 section 6).
#[derive(Debug, PartialEq)]
enum Hpack {
    Indexed,
    Added,
    NeverIndexed,
    NotIndexed,
    SizeUpdate,
}

/// The representations of a header block, in order (names and values skipped, not decoded).
fn hpack_kinds(block: &[u8]) -> Vec<Hpack> {
    let mut at = 0;
    let mut kinds = Vec::new();
    while at < block.len() {
        let b = block[at];
        let (kind, prefix) = match b {
            _ if b & 0x80 != 0 => (Hpack::Indexed, 7),
            _ if b & 0x40 != 0 => (Hpack::Added, 6),
            _ if b & 0x20 != 0 => (Hpack::SizeUpdate, 5),
            _ if b & 0x10 != 0 => (Hpack::NeverIndexed, 4),
            _ => (Hpack::NotIndexed, 4),
        };
        let (index, next) = hpack_int(block, at, prefix);
        at = next;
        if matches!(kind, Hpack::Added | Hpack::NeverIndexed | Hpack::NotIndexed) {
            if index == 0 {
                let (len, next) = hpack_int(block, at, 7);
                at = next + len;
            }
            let (len, next) = hpack_int(block, at, 7);
            at = next + len;
        }
        kinds.push(kind);
    }
    kinds
}

/// An HPACK integer with an N-bit prefix starting at `at`: its value and the index after it.
fn hpack_int(block: &[u8], at: usize, prefix: u32) -> (usize, usize) {
    let max = (1usize << prefix) - 1;
    let mut value = block[at] as usize & max;
    let mut at = at + 1;
    if value == max {
        let mut shift = 0;
        loop {
            let b = block[at];
            at += 1;
            value += ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    (value, at)
}
