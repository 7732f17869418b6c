//! `error_pages` and `intercept_errors`, end to end: Gatehouse's own answers (404 with no site or
//! no route, 403, 429, 502) get the page that applies (the route's, the site's, the server's; an
//! exact code over its class; `"off"`), with their status and headers (`Retry-After`) kept and
//! `{request_id}` filled in; a route with `intercept_errors` replaces its upstream's error
//! answers (keeping `WWW-Authenticate`, dropping the rest of the head and the body, and the
//! upstream connection only when that body was large), a route without does not; a reload reads
//! changed pages; `gatehouse check` locates a missing file and a bad status. Real binary.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use support::*;

/// The pages, in `errors/` next to the config.
const PAGES: [(&str, &str); 6] = [
    ("404.html", "<h1>Not here</h1><p>request {request_id}</p>"),
    ("5xx.html", "<h1>Down for a moment</h1>"),
    (
        "4xx.json",
        "{\"error\": \"refused\", \"id\": \"{request_id}\"}",
    ),
    ("429.txt", "slow down"),
    ("401.html", "<h1>Who are you?</h1>"),
    ("unused.html", "never sent"),
];

/// Writes `config` and the pages into a fresh folder and starts the proxy there.
async fn start(config: &str) -> (TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("errors")).unwrap();
    for (name, text) in PAGES {
        std::fs::write(dir.path().join("errors").join(name), text).unwrap();
    }
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    (TestProxy::start_at(&path).await, dir)
}

async fn get(proxy: &TestProxy, host: &str, path: &str) -> RawResponse {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: rid-{}\r\nConnection: close\r\n\r\n",
        path.trim_start_matches('/').replace('/', "-")
    );
    raw_request(proxy.addr, &request).await
}

fn own_config(dead: std::net::SocketAddr) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
error_pages = {{ 404 = "errors/404.html", "5xx" = "errors/5xx.html" }}

[[site]]
hosts = ["a.test"]
  [[site.route]]
  path = "/limited"
  respond = {{ status = 200, body = "ok" }}
  rate_limit = {{ requests = 1, per = "1m", burst = 1 }}
  error_pages = {{ 429 = "errors/429.txt", "4xx" = "errors/4xx.json" }}

  [[site.route]]
  path = "/down"
  upstream = "dead"

  [[site.route]]
  path = "/api"
  upstream = "dead"
  allow = ["10.0.0.0/8"]
  error_pages = {{ "4xx" = "errors/4xx.json" }}

  [[site.route]]
  path = "/plain"
  upstream = "dead"
  error_pages = "off"

[upstream.dead]
servers = ["{dead}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatehouses_own_answers_get_the_page_that_applies() {
    with_timeout(30, async {
        let dead = closed_port_addr().await;
        let (proxy, _dir) = start(&own_config(dead)).await;

        // no site serves the host: the server's 404, the request id filled in
        let resp = get(&proxy, "nobody.test", "/x").await;
        assert_eq!(resp.status, 404);
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(resp.body_text(), "<h1>Not here</h1><p>request rid-x</p>");
        assert_eq!(resp.header("x-request-id"), Some("rid-x"));
        // the site has no route for the path: the site's pages, inherited from the server
        let resp = get(&proxy, "a.test", "/nowhere").await;
        assert_eq!(
            (resp.status, resp.body_text().contains("rid-nowhere")),
            (404, true)
        );

        // 429: the route's exact code over its class, Retry-After kept
        assert_eq!(get(&proxy, "a.test", "/limited").await.status, 200);
        let resp = get(&proxy, "a.test", "/limited").await;
        assert_eq!(resp.status, 429);
        assert_eq!(resp.body_text(), "slow down");
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);

        // 403 on a route with a 4xx page
        let resp = get(&proxy, "a.test", "/api").await;
        assert_eq!(resp.status, 403);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.body_text(),
            "{\"error\": \"refused\", \"id\": \"rid-api\"}"
        );

        // 502: the server's 5xx, inherited
        let resp = get(&proxy, "a.test", "/down").await;
        assert_eq!(resp.status, 502);
        assert_eq!(resp.body_text(), "<h1>Down for a moment</h1>");
        // "off": Gatehouse's own plain answer
        let resp = get(&proxy, "a.test", "/plain").await;
        assert_eq!(resp.status, 502);
        assert!(
            resp.body_text().starts_with("502 Bad Gateway"),
            "{}",
            resp.body_text()
        );
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    })
    .await;
}

fn intercept_config(backend: std::net::SocketAddr) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
error_pages = {{ 404 = "errors/404.html", 401 = "errors/401.html", "5xx" = "errors/5xx.html" }}

[[site]]
  [[site.route]]
  path = "/on/"
  upstream = "app"
  strip_prefix = true
  intercept_errors = true

  [[site.route]]
  path = "/off/"
  upstream = "app"
  strip_prefix = true

[upstream.app]
servers = ["{backend}"]
"#
    )
}

/// `/missing` 404, `/auth` 401 with `WWW-Authenticate`, `/boom` 500 (short bodies),
/// `/bigboom` 500 with 256 KiB, anything else 200 "fine"; every answer with `x-secret`.
async fn erring_backend() -> Backend {
    serve(
        "app",
        |req: hyper::Request<hyper::body::Incoming>| async move {
            let (status, body) = match req.uri().path() {
                "/missing" => (404, Bytes::from_static(b"backend 404 body")),
                "/auth" => (401, Bytes::from_static(b"backend 401 body")),
                "/boom" => (500, Bytes::from_static(b"backend 500 body")),
                "/bigboom" => (500, Bytes::from(vec![b'x'; 256 << 10])),
                _ => (200, Bytes::from_static(b"fine")),
            };
            hyper::Response::builder()
                .status(status)
                .header("x-secret", "stack trace")
                .header("www-authenticate", "Basic realm=\"app\"")
                .body(Full::new(body))
                .unwrap()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercept_errors_replaces_the_upstreams_error_answers_on_its_route_only() {
    with_timeout(30, async {
        let backend = erring_backend().await;
        let (proxy, _dir) = start(&intercept_config(backend.addr)).await;

        let resp = get(&proxy, "a.test", "/on/missing").await;
        assert_eq!(resp.status, 404);
        assert_eq!(
            resp.body_text(),
            "<h1>Not here</h1><p>request rid-on-missing</p>"
        );
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            resp.header("x-secret"),
            None,
            "the upstream's head is dropped"
        );
        let resp = get(&proxy, "a.test", "/on/auth").await;
        assert_eq!(
            (resp.status, resp.body_text().as_str()),
            (401, "<h1>Who are you?</h1>")
        );
        assert_eq!(resp.header("www-authenticate"), Some("Basic realm=\"app\""));
        let resp = get(&proxy, "a.test", "/on/boom").await;
        assert_eq!(
            (resp.status, resp.body_text().as_str()),
            (500, "<h1>Down for a moment</h1>")
        );
        let resp = get(&proxy, "a.test", "/on/fine").await;
        assert_eq!((resp.status, resp.body_text().as_str()), (200, "fine"));
        assert_eq!(resp.header("x-secret"), Some("stack trace"));
        // short bodies were read off: no upstream connection was closed (the read-off happens
        // beside the answer, so the next request may find it not yet back in the pool and open
        // a second one: three requests on at most two connections)
        assert_eq!(backend.closed(), 0);
        assert!(backend.connections() <= 2, "{}", backend.connections());

        // without intercept_errors the upstream's answer passes
        let resp = get(&proxy, "a.test", "/off/missing").await;
        assert_eq!(
            (resp.status, resp.body_text().as_str()),
            (404, "backend 404 body")
        );
        assert_eq!(resp.header("x-secret"), Some("stack trace"));

        // a large body is not read for nothing: its connection is closed
        let resp = get(&proxy, "a.test", "/on/bigboom").await;
        assert_eq!(
            (resp.status, resp.body_text().as_str()),
            (500, "<h1>Down for a moment</h1>")
        );
        eventually(
            Duration::from_secs(5),
            "the upstream connection closed",
            || backend.closed() == 1,
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_a_changed_page() {
    with_timeout(30, async {
        let dead = closed_port_addr().await;
        let (proxy, dir) = start(&own_config(dead)).await;
        assert_eq!(
            get(&proxy, "a.test", "/down").await.body_text(),
            "<h1>Down for a moment</h1>"
        );
        std::fs::write(dir.path().join("errors/5xx.html"), "<h1>Back soon</h1>").unwrap();
        proxy.send_signal("HUP");
        eventually_async(Duration::from_secs(10), "the new page", || async {
            get(&proxy, "a.test", "/down").await.body_text() == "<h1>Back soon</h1>"
        })
        .await;
        // the new state is served before the reload's summary is logged (and read off stderr
        // by another thread): waited for, not asserted at once
        eventually(
            Duration::from_secs(5),
            "the reload's summary in the log",
            || {
                proxy
                    .logs()
                    .iter()
                    .any(|l| l.contains("error pages read again"))
            },
        )
        .await;
    })
    .await;
}

/// `gatehouse check` on `config` (with the pages next to it): exit 64 at the line containing
/// `marker`, naming `key` and saying every one of `mentions`, and nothing else.
fn assert_check_error(config: &str, marker: &str, key: &str, mentions: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("errors")).unwrap();
    std::fs::write(dir.path().join("errors/404.html"), "x").unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let out = run_gatehouse(&["check", "--config", path], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let line = config.lines().position(|l| l.contains(marker)).unwrap() + 1;
    assert!(
        out.stderr.contains(&format!("{path}:{line}:")),
        "not at line {line}:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains(&format!("`{key}`")), "{}", out.stderr);
    for m in mentions {
        assert!(out.stderr.contains(m), "{m:?} not in:\n{}", out.stderr);
    }
    assert!(out.stderr.contains("\n1 error in config"), "{}", out.stderr);
}

fn route_with(route_keys: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n  {route_keys}\n\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n"
    )
}

#[test]
fn error_page_mistakes_are_config_errors() {
    assert_check_error(
        &route_with("error_pages = { 404 = \"errors/gone.html\" }"),
        "gone.html",
        "site.route.error_pages",
        &["cannot read error page", "errors/gone.html"],
    );
    assert_check_error(
        &route_with("error_pages = { 200 = \"errors/404.html\" }"),
        "200 =",
        "site.route.error_pages",
        &[
            "`200` is not a status an error page can answer",
            "\"4xx\" or \"5xx\"",
        ],
    );
    assert_check_error(
        &route_with("error_pages = { \"6xx\" = \"errors/404.html\" }"),
        "6xx",
        "site.route.error_pages",
        &["`6xx` is not a status"],
    );
    assert_check_error(
        &route_with("error_pages = \"none\""),
        "\"none\"",
        "error_pages",
        &["or \"off\""],
    );
    assert_check_error(
        &route_with("intercept_errors = true"),
        "intercept_errors",
        "site.route.intercept_errors",
        &["no `error_pages` apply to this route"],
    );
    let respond = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[server]\nerror_pages = { 404 = \"errors/404.html\" }\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200 }\n  intercept_errors = true\n";
    assert_check_error(
        respond,
        "intercept_errors",
        "site.route.intercept_errors",
        &["this route has no `upstream`"],
    );
}
