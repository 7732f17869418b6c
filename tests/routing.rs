//! Acceptance items 1-3: host routing, path routing, `respond` and `redirect`.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{client, echo_backend, header, with_timeout, Echo, TestProxy};

/// GETs `path` with an explicit Host header and returns (status, body).
async fn get_with_host(proxy: &TestProxy, host: &str, path: &str) -> (u16, String) {
    let resp = client()
        .get(proxy.url(path))
        .header("host", host)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routing_prefers_exact_then_longest_wildcard_then_catch_all() {
    with_timeout(30, async {
        // Deliberately listed least-specific first: priority must not depend on file order.
        let proxy = TestProxy::start(
            r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[[site]]
hosts = ["*"]
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "catch-all" }

[[site]]
hosts = ["*.example.com"]
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "wildcard" }

[[site]]
hosts = ["*.deep.example.com"]
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "deep-wildcard" }

[[site]]
hosts = ["app.example.com", "other.test"]
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "exact" }
"#,
        )
        .await;

        let cases = [
            ("app.example.com", "exact"),
            ("APP.Example.COM", "exact"),
            ("app.example.com:8080", "exact"),
            ("other.test", "exact"),
            ("x.example.com", "wildcard"),
            ("a.b.example.com", "wildcard"),
            ("deep.example.com", "wildcard"),
            ("x.deep.example.com", "deep-wildcard"),
            ("a.b.deep.example.com", "deep-wildcard"),
            ("example.com", "catch-all"),
            ("notexample.com", "catch-all"),
            ("unrelated.test", "catch-all"),
            ("127.0.0.1", "catch-all"),
        ];
        for (host, want) in cases {
            let (status, body) = get_with_host(&proxy, host, "/").await;
            assert_eq!(
                (status, body.as_str()),
                (200, want),
                "Host: {host} routed to the wrong site"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_without_catch_all_is_not_routed_elsewhere() {
    with_timeout(30, async {
        let proxy = TestProxy::start(
            r#"
[listen]
http = "127.0.0.1:0"

[[site]]
hosts = ["only.example.com"]
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "only" }
"#,
        )
        .await;
        assert_eq!(
            get_with_host(&proxy, "only.example.com", "/").await,
            (200, "only".to_string())
        );
        let (status, body) = get_with_host(&proxy, "stranger.example.com", "/").await;
        assert_ne!(status, 200, "unknown host must not be served: {body}");
        assert!(
            (400..500).contains(&status),
            "unknown host should be a 4xx, got {status}: {body}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_routing_longest_prefix_exact_and_strip_prefix() {
    with_timeout(30, async {
        let root = echo_backend("root").await;
        let api = echo_backend("api").await;
        let v2 = echo_backend("v2").await;
        let config = format!(
            r#"
[listen]
http = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "/"
  upstream = "root"

  [[site.route]]
  path = "/api/v2/"
  upstream = "v2"
  strip_prefix = true

  [[site.route]]
  path = "/api/"
  upstream = "api"

  [[site.route]]
  exact = "/api/health"
  respond = {{ status = 200, body = "exact-health" }}

  [[site.route]]
  path = "/static/"
  upstream = "root"
  strip_prefix = true

  [[site.route]]
  path = "/pfx"
  upstream = "root"
  strip_prefix = true

[upstream.root]
servers = ["{}"]

[upstream.api]
servers = ["{}"]

[upstream.v2]
servers = ["{}"]
"#,
            root.addr, api.addr, v2.addr
        );
        let proxy = TestProxy::start(&config).await;
        let http = client();

        // (request path, backend, path+query the backend must receive)
        let cases = [
            ("/", "root", "/"),
            ("/other?q=1", "root", "/other?q=1"),
            ("/api/users?x=1", "api", "/api/users?x=1"),
            ("/api/", "api", "/api/"),
            ("/api/health/deeper", "api", "/api/health/deeper"),
            ("/api/healthz", "api", "/api/healthz"),
            ("/api/v2/items?y=2&z=3", "v2", "/items?y=2&z=3"),
            ("/api/v2/", "v2", "/"),
            ("/static/css/site.css?v=3", "root", "/css/site.css?v=3"),
            ("/static/", "root", "/"),
            ("/pfx/a/b", "root", "/a/b"),
            ("/pfx?q=1", "root", "/?q=1"),
            ("/pfx", "root", "/"),
        ];
        for (path, backend, want_uri) in cases {
            let resp = http.get(proxy.url(path)).send().await.expect("request");
            assert_eq!(resp.status(), 200, "GET {path}");
            let got_backend = header(&resp, "x-backend");
            let echo = Echo::parse(&resp.text().await.expect("body"));
            assert_eq!(
                got_backend.as_deref(),
                Some(backend),
                "GET {path} went to the wrong upstream"
            );
            assert_eq!(echo.uri, want_uri, "GET {path}: path+query seen by backend");
            assert_eq!(echo.method, "GET");
        }

        // Exact match beats the longer-matching prefix route.
        let resp = http
            .get(proxy.url("/api/health"))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), "exact-health");

        // Method and body pass through.
        let resp = http
            .post(proxy.url("/api/items"))
            .body("payload-123")
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.method, "POST");
        assert_eq!(echo.uri, "/api/items");
        assert_eq!(echo.body, "payload-123");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_returns_configured_status_body_and_content_type() {
    with_timeout(30, async {
        let proxy = TestProxy::start(
            r#"
[listen]
http = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "hello from gatehouse\n" }

  [[site.route]]
  exact = "/maintenance"
  respond = { status = 503, body = "{\"down\":true}", content_type = "application/json" }
"#,
        )
        .await;
        let http = client();

        let resp = http.get(proxy.url("/anything")).send().await.expect("req");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(resp.text().await.expect("body"), "hello from gatehouse\n");

        let resp = http
            .get(proxy.url("/maintenance"))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 503);
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(resp.text().await.expect("body"), "{\"down\":true}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_sets_status_and_expands_placeholders() {
    with_timeout(30, async {
        let proxy = TestProxy::start(
            r#"
[listen]
http = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "/old/"
  redirect = { to = "https://example.com{uri}", status = 308 }

  [[site.route]]
  path = "/legacy/"
  redirect = { to = "https://{host}/new{path}?from={query}", status = 301 }

  [[site.route]]
  path = "/temp/"
  redirect = { to = "/elsewhere", status = 302 }

  [[site.route]]
  path = "/see/"
  redirect = { to = "/other{path}", status = 303 }

  [[site.route]]
  path = "/keep/"
  redirect = { to = "/kept{uri}", status = 307 }

  [[site.route]]
  path = "/default/"
  redirect = { to = "/target" }
"#,
        )
        .await;
        let http = client();

        // (host, request path+query, status, Location)
        let cases = [
            (
                "www.example.com",
                "/old/a/b?x=1&y=2",
                308,
                "https://example.com/old/a/b?x=1&y=2",
            ),
            (
                "www.example.com",
                "/old/a",
                308,
                "https://example.com/old/a",
            ),
            (
                "shop.example.com:8080",
                "/legacy/item?id=7",
                301,
                "https://shop.example.com/new/legacy/item?from=id=7",
            ),
            ("www.example.com", "/temp/x", 302, "/elsewhere"),
            ("www.example.com", "/see/y?z=1", 303, "/other/see/y"),
            ("www.example.com", "/keep/z?q=2", 307, "/kept/keep/z?q=2"),
            ("www.example.com", "/default/", 308, "/target"),
        ];
        for (host, path, status, location) in cases {
            let resp = http
                .get(proxy.url(path))
                .header("host", host)
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status().as_u16(), status, "GET {path} (Host: {host})");
            assert_eq!(
                header(&resp, "location").as_deref(),
                Some(location),
                "Location for GET {path} (Host: {host})"
            );
        }
    })
    .await;
}
