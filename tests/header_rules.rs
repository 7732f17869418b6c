//! Issue 19, header rules: `request_headers` reaching the backend (after Gatehouse's own
//! forwarding headers), `response_headers` on the upstream's answers and on Gatehouse's own
//! (404, 429, 502, redirects, `respond`), inheritance per header name, placeholders,
//! `upstream_host`, `X-Forwarded-Prefix`, and no line break smuggled through a placeholder.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::{
    client, closed_port_addr, echo_backend, raw_request, render_echo, run_gatehouse, serve,
    with_timeout, Backend, Echo, TestProxy,
};

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    let values: Vec<&str> = resp
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// `[listen]` on loopback, `server` in `[server]`, then `rest` (sites and upstreams).
fn config(server: &str, rest: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
{server}

{rest}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rules_reach_the_backend_after_gatehouse_headers() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let text = config(
            r#"request_headers = { set = { "X-Env" = "prod", "X-Level" = "server" }, remove = ["X-Debug"] }"#,
            &format!(
                r#"
[[site]]
request_headers = {{ add = {{ "X-Tag" = "site" }}, set = {{ "X-Level" = "site" }} }}

  [[site.route]]
  path = "/rules/"
  upstream = "backend"
  request_headers = {{ set = {{ "X-Forwarded-Proto" = "https", "X-Level" = "route", "X-Client" = "{{client_ip}}|{{host}}|{{port}}|{{scheme}}|{{path}}|{{query}}|{{request_id}}|{{header.X-In}}|{{query.q}}|{{header.X-Forwarded-For}}" }}, add = {{ "X-Tag" = ["route-1", "route-2"] }}, remove = ["X-Env"] }}

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
                backend.addr
            ),
        );
        let proxy = TestProxy::start(&text).await;
        let http = client();
        let resp = http
            .get(proxy.url("/rules/x?q=1"))
            .header("host", "App.Example.com:8080")
            .header("x-debug", "1")
            .header("x-tag", "client")
            .header("x-in", "hello")
            .header("x-request-id", "rid-1")
            .header("x-forwarded-for", "198.51.100.1")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.unwrap());
        assert_eq!(echo.header("x-debug"), None, "server's remove: {:?}", echo.headers);
        assert_eq!(echo.header("x-env"), None, "the route's remove beats the server's set");
        assert_eq!(echo.header("x-level").as_deref(), Some("route"));
        // the route's `add` replaces the site's for that name; the client's value stays
        assert_eq!(echo.all("x-tag"), ["client", "route-1", "route-2"]);
        // after Gatehouse's own: a rule overrides X-Forwarded-Proto, the others are Gatehouse's
        assert_eq!(echo.all("x-forwarded-proto"), ["https"]);
        assert_eq!(echo.all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(echo.all("x-real-ip"), ["127.0.0.1"]);
        assert_eq!(echo.all("x-request-id"), ["rid-1"]);
        assert_eq!(echo.all("host"), ["app.example.com:8080"]);
        // placeholders take the request as the client sent it (its own X-Forwarded-For, which
        // Gatehouse then replaces, since the peer is not trusted)
        assert_eq!(
            echo.all("x-client"),
            ["127.0.0.1|app.example.com|8080|http|/rules/x|q=1|rid-1|hello|1|198.51.100.1"]
        );

        let resp = http
            .get(proxy.url("/other"))
            .header("x-debug", "1")
            .send()
            .await
            .unwrap();
        let echo = Echo::parse(&resp.text().await.unwrap());
        assert_eq!(echo.header("x-debug"), None);
        assert_eq!(echo.all("x-env"), ["prod"]);
        assert_eq!(echo.all("x-level"), ["site"]);
        assert_eq!(echo.all("x-tag"), ["site"]);
        assert_eq!(echo.all("x-forwarded-proto"), ["http"]);
        assert_eq!(echo.header("x-client"), None);
    })
    .await;
}

/// Gatehouse's own headers are held beside a request's map when the client sent none of them
/// (`forward::Added`): a route's rules on them still win (set once, removed for good), and a
/// route without rules still sends each of them exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_gatehouse_headers_hold_when_the_client_sent_none_of_them() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let text = config(
            "",
            &format!(
                r#"
[[site]]

  [[site.route]]
  path = "/rules/"
  upstream = "backend"
  request_headers = {{ set = {{ "X-Forwarded-Proto" = "https", "X-Request-Id" = "fixed" }}, remove = ["X-Real-IP", "X-Forwarded-Port"] }}

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
                backend.addr
            ),
        );
        let proxy = TestProxy::start(&text).await;
        let http = client();
        let resp = http.get(proxy.url("/rules/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.unwrap());
        assert_eq!(echo.all("x-forwarded-proto"), ["https"], "{:?}", echo.headers);
        assert_eq!(echo.all("x-request-id"), ["fixed"]);
        assert_eq!(echo.header("x-real-ip"), None);
        assert_eq!(echo.header("x-forwarded-port"), None);
        assert_eq!(echo.all("x-forwarded-for"), ["127.0.0.1"]);

        let resp = http.get(proxy.url("/plain")).send().await.unwrap();
        let echo = Echo::parse(&resp.text().await.unwrap());
        assert_eq!(echo.all("x-forwarded-for"), ["127.0.0.1"], "{:?}", echo.headers);
        assert_eq!(echo.all("x-forwarded-proto"), ["http"]);
        assert_eq!(echo.all("x-real-ip"), ["127.0.0.1"]);
        assert_eq!(echo.all("x-forwarded-port").len(), 1);
        assert_eq!(echo.all("x-forwarded-host").len(), 1);
        let id = echo.all("x-request-id");
        assert!(id.len() == 1 && id[0].len() == 32, "{id:?}");
    })
    .await;
}

/// A backend answering like a typical application server: `Server`, `X-Powered-By`, its own
/// `X-Frame-Options`, and `Cache-Control` on `/cached`.
async fn app_backend() -> Backend {
    serve("app", |req| async move {
        let cached = req.uri().path() == "/cached";
        let body = render_echo(req).await;
        let mut resp = Response::builder()
            .header("server", "backend/1.0")
            .header("x-powered-by", "PHP/8.3")
            .header("x-frame-options", "ALLOWALL");
        if cached {
            resp = resp.header("cache-control", "max-age=60");
        }
        resp.body(Full::new(Bytes::from(body))).unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules_on_upstream_answers_inherit_per_name() {
    with_timeout(30, async {
        let backend = app_backend().await;
        let text = config(
            r#"response_headers = { remove = ["Server", "X-Powered-By"] }"#,
            &format!(
                r#"
[[site]]
response_headers = {{ set = {{ "X-Frame-Options" = "DENY" }}, default = {{ "Cache-Control" = "no-store" }} }}

  [[site.route]]
  path = "/legacy/"
  upstream = "backend"
  response_headers = {{ set = {{ "X-Frame-Options" = "SAMEORIGIN" }}, add = {{ "X-Route" = "{{path}}" }}, remove = ["Cache-Control"] }}

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
                backend.addr
            ),
        );
        let proxy = TestProxy::start(&text).await;
        let http = client();

        let resp = http.get(proxy.url("/page")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "server"), None, "{:?}", resp.headers());
        assert_eq!(header(&resp, "x-powered-by"), None);
        assert_eq!(header(&resp, "x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(header(&resp, "cache-control").as_deref(), Some("no-store"));
        assert!(header(&resp, "x-request-id").is_some());

        // `default` leaves the upstream's own value
        let resp = http.get(proxy.url("/cached")).send().await.unwrap();
        assert_eq!(header(&resp, "cache-control").as_deref(), Some("max-age=60"));

        // the route's rule for a name wins; names it does not name come from the site and server
        let resp = http.get(proxy.url("/legacy/x?y=1")).send().await.unwrap();
        assert_eq!(header(&resp, "x-frame-options").as_deref(), Some("SAMEORIGIN"));
        assert_eq!(header(&resp, "x-route").as_deref(), Some("/legacy/x"));
        assert_eq!(header(&resp, "cache-control"), None);
        assert_eq!(header(&resp, "server"), None);
        assert_eq!(header(&resp, "x-powered-by"), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rules_on_gatehouse_own_answers() {
    with_timeout(30, async {
        let dead = closed_port_addr().await;
        let text = config(
            r#"response_headers = { set = { "X-Served-By" = "gatehouse", "X-Level" = "server" } }"#,
            &format!(
                r#"
[[site]]
hosts = ["app.example.com"]
response_headers = {{ set = {{ "X-Level" = "site", "X-Id" = "{{request_id}}" }}, default = {{ "Cache-Control" = "no-store" }} }}

  [[site.route]]
  path = "/limited/"
  respond = {{ status = 200, body = "ok" }}
  rate_limit = {{ requests = 1, per = "1h" }}
  response_headers = {{ set = {{ "X-Level" = "limited" }} }}

  [[site.route]]
  path = "/down/"
  upstream = "dead"
  response_headers = {{ set = {{ "X-Level" = "down" }} }}

  [[site.route]]
  path = "/old/"
  redirect = {{ to = "https://new.example.com{{uri}}", status = 301 }}
  response_headers = {{ set = {{ "X-Level" = "redirect" }} }}

  [[site.route]]
  exact = "/ok"
  respond = {{ status = 200, body = "fine" }}
  response_headers = {{ remove = ["X-Request-Id"] }}

[upstream.dead]
servers = ["{dead}"]
"#
            ),
        );
        let proxy = TestProxy::start(&text).await;
        let http = client();
        let get = |path: &str, host: &str| {
            http.get(proxy.url(path))
                .header("host", host)
                .header("x-request-id", "rid-9")
                .send()
        };

        // no route in the site: the site's rules (over the server's)
        let resp = get("/nothing", "app.example.com").await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(header(&resp, "x-level").as_deref(), Some("site"));
        assert_eq!(header(&resp, "x-served-by").as_deref(), Some("gatehouse"));
        assert_eq!(header(&resp, "x-id").as_deref(), Some("rid-9"));
        assert_eq!(header(&resp, "cache-control").as_deref(), Some("no-store"));

        // no site: the server's
        let resp = get("/", "elsewhere.example.com").await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(header(&resp, "x-level").as_deref(), Some("server"));
        assert_eq!(header(&resp, "x-served-by").as_deref(), Some("gatehouse"));
        assert_eq!(header(&resp, "x-id"), None);

        // a refusal on a route: the route's
        let resp = get("/limited/a", "app.example.com").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-level").as_deref(), Some("limited"));
        let resp = get("/limited/a", "app.example.com").await.unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(header(&resp, "x-level").as_deref(), Some("limited"));
        assert_eq!(header(&resp, "x-id").as_deref(), Some("rid-9"));
        assert_eq!(header(&resp, "cache-control").as_deref(), Some("no-store"));
        assert!(header(&resp, "retry-after").is_some());

        let resp = get("/down/x", "app.example.com").await.unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(header(&resp, "x-level").as_deref(), Some("down"));
        assert_eq!(header(&resp, "x-served-by").as_deref(), Some("gatehouse"));

        let resp = get("/old/page?a=1", "app.example.com").await.unwrap();
        assert_eq!(resp.status(), 301);
        assert_eq!(
            header(&resp, "location").as_deref(),
            Some("https://new.example.com/old/page?a=1")
        );
        assert_eq!(header(&resp, "x-level").as_deref(), Some("redirect"));

        // rules come after Gatehouse's own response headers: they may remove X-Request-Id
        let resp = get("/ok", "app.example.com").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-request-id"), None);
        assert_eq!(header(&resp, "x-level").as_deref(), Some("site"));
        assert_eq!(resp.text().await.unwrap(), "fine");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_host_replaces_host_only() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let text = config(
            "",
            &format!(
                r#"
[[site]]
upstream_host = "api.internal"

  [[site.route]]
  path = "/own/"
  upstream = "backend"
  upstream_host = "other.internal:8080"

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
                backend.addr
            ),
        );
        let proxy = TestProxy::start(&text).await;
        let http = client();
        for (path, host) in [("/x", "api.internal"), ("/own/x", "other.internal:8080")] {
            let resp = http
                .get(proxy.url(path))
                .header("host", "App.Example.com")
                .send()
                .await
                .unwrap();
            let echo = Echo::parse(&resp.text().await.unwrap());
            assert_eq!(echo.all("host"), [host], "{path}");
            assert_eq!(echo.all("x-forwarded-host"), ["app.example.com"], "{path}");
        }
    })
    .await;
}

fn prefix_config(backend: &Backend, trusted: &str) -> String {
    config(
        &format!("trusted_proxies = {trusted}"),
        &format!(
            r#"
[[site]]
  [[site.route]]
  path = "/api/"
  upstream = "backend"
  strip_prefix = true

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
            backend.addr
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_sends_x_forwarded_prefix() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let http = client();
        let proxy = TestProxy::start(&prefix_config(&backend, "[]")).await;
        let send = |path: &'static str, proxy: &TestProxy| {
            http.get(proxy.url(path))
                .header("x-forwarded-prefix", "/outer")
                .send()
        };
        let echo = Echo::parse(
            &send("/api/users?x=1", &proxy)
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(echo.uri, "/users?x=1");
        assert_eq!(
            echo.all("x-forwarded-prefix"),
            ["/api"],
            "a client's own is replaced"
        );
        let echo = Echo::parse(&send("/api", &proxy).await.unwrap().text().await.unwrap());
        assert_eq!(echo.uri, "/");
        assert_eq!(echo.all("x-forwarded-prefix"), ["/api"]);
        // nothing stripped: nothing claimed (a client's own is removed, as before)
        let echo = Echo::parse(&send("/home", &proxy).await.unwrap().text().await.unwrap());
        assert_eq!(echo.header("x-forwarded-prefix"), None);
        drop(proxy);

        // behind a trusted proxy that stripped a prefix of its own, the two make one path
        let proxy = TestProxy::start(&prefix_config(&backend, r#"["127.0.0.1/32"]"#)).await;
        let echo = Echo::parse(
            &send("/api/users", &proxy)
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        assert_eq!(echo.all("x-forwarded-prefix"), ["/outer/api"]);
        let echo = Echo::parse(&send("/home", &proxy).await.unwrap().text().await.unwrap());
        assert_eq!(echo.all("x-forwarded-prefix"), ["/outer"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_cannot_smuggle_line_breaks() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let text = config(
            "",
            &format!(
                r#"
[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"
  request_headers = {{ set = {{ "X-Q" = "{{query.x}}", "X-H" = "{{header.X-In}}" }} }}
  response_headers = {{ set = {{ "X-Q" = "{{query.x}}", "X-H" = "{{header.X-In}}" }} }}

[upstream.backend]
servers = ["{}"]
"#,
                backend.addr
            ),
        );
        let proxy = TestProxy::start(&text).await;
        let resp = raw_request(
            proxy.addr,
            "GET /?x=a%0d%0aInjected:%201 HTTP/1.1\r\nHost: a.test\r\nX-In: b%0d%0aInjected: 2\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.all("x-q"), ["a%0d%0aInjected:%201"]);
        assert_eq!(resp.all("x-h"), ["b%0d%0aInjected: 2"]);
        assert!(resp.all("injected").is_empty(), "{:?}", resp.headers);
        let echo = Echo::parse(&resp.body_text());
        assert_eq!(echo.all("x-q"), ["a%0d%0aInjected:%201"]);
        assert_eq!(echo.all("x-h"), ["b%0d%0aInjected: 2"]);
        assert_eq!(echo.header("injected"), None, "{:?}", echo.headers);

        // a raw CR or NUL in a header never gets as far as a placeholder
        for bad in ["X-In: b\rInjected: 3\r\n", "X-In: b\0c\r\n"] {
            let resp = raw_request(
                proxy.addr,
                &format!("GET / HTTP/1.1\r\nHost: a.test\r\n{bad}\r\n"),
            )
            .await;
            assert_eq!(resp.status, 400, "{bad:?}");
            assert!(resp.all("injected").is_empty());
        }
    })
    .await;
}

#[test]
fn forbidden_names_are_config_errors_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let text = config(
        r#"response_headers = { set = { "Content-Length" = "0" } }"#,
        r#"
[[site]]
  [[site.route]]
  path = "/"
  upstream = "app"
  request_headers = { remove = ["Connection"], set = { "Host" = "x", "X-Bad" = "{nope}" } }

[upstream.app]
servers = ["127.0.0.1:9"]
"#,
    );
    std::fs::write(&path, &text).unwrap();
    let path = path.to_str().unwrap();
    let out = run_gatehouse(&["check", "--config", path], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let line = |marker: &str| text.lines().position(|l| l.contains(marker)).unwrap() + 1;
    let err = &out.stderr;
    let at = |marker: &str| format!("{path}:{}:", line(marker));
    assert!(err.contains(&at("Content-Length")), "{err}");
    assert!(
        err.contains("`server.response_headers.set`: `Content-Length` cannot be set"),
        "{err}"
    );
    assert!(err.contains(&at("\"Connection\"")), "{err}");
    assert!(
        err.contains("`site.route.request_headers.remove`: `Connection` cannot be"),
        "{err}"
    );
    assert!(err.contains("hop-by-hop"), "{err}");
    assert!(
        err.contains("`site.route.request_headers.set`: `Host` cannot be changed"),
        "{err}"
    );
    assert!(
        err.contains("`X-Bad`: unknown placeholder `{nope}`"),
        "{err}"
    );
    assert!(err.contains("4 errors in config"), "{err}");
}

/// A regex route's captures reach its header rules both ways, by name and by number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_take_the_routes_regex_captures() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let text = config(
            "",
            &format!(
                r#"
[[site]]

  [[site.route]]
  regex = "^/u/(?<id>[0-9]+)/(avatar|banner)$"
  upstream = "backend"
  request_headers = {{ set = {{ "X-User" = "{{id}}", "X-Kind" = "{{2}}" }} }}
  response_headers = {{ set = {{ "X-Served" = "{{id}}-{{2}}" }} }}

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
                backend.addr
            ),
        );
        let proxy = TestProxy::start(&text).await;
        let resp = client()
            .get(proxy.url("/u/42/banner"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-served").as_deref(), Some("42-banner"));
        let echo = Echo::parse(&resp.text().await.unwrap());
        assert_eq!(echo.all("x-user"), ["42"]);
        assert_eq!(echo.all("x-kind"), ["banner"]);

        // another route: no rules, nothing set
        let resp = client().get(proxy.url("/u/x/banner")).send().await.unwrap();
        assert_eq!(header(&resp, "x-served"), None);
        let echo = Echo::parse(&resp.text().await.unwrap());
        assert_eq!(echo.header("x-user"), None);
    })
    .await;
}
