//! Acceptance items 9-11: hop-by-hop stripping (both directions), X-Forwarded-*, X-Request-Id.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

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
