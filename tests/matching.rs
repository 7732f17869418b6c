//! Issue 19, matching and rewrites, end to end on the real binary: `regex` routes with their
//! captures in `rewrite` and `redirect`, `methods`/`headers`/`query` conditions passing a route
//! over, `upstream_path`, `rewrite` with and without its own query, upstream `Location`s mapped
//! back, a rewrite that would leave the canonical path refused, 5,000 prefix routes, and a bad
//! regex reported with file and line by `gatehouse check`.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use std::fmt::Write;
use support::{
    client, echo_backend, header, raw_request, run_gatehouse, serve_on, with_timeout, Echo,
    TestProxy,
};
use tokio::net::TcpListener;

/// `[listen]`, one catch-all site with `routes`, and one upstream per `(name, addr)`.
fn config(routes: &str, upstreams: &[(&str, std::net::SocketAddr)]) -> String {
    let mut text = format!("[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n{routes}\n");
    for (name, addr) in upstreams {
        let _ = writeln!(text, "[upstream.{name}]\nservers = [\"{addr}\"]");
    }
    text
}

/// What backend a request went to, and the path and query it received.
async fn sent(
    proxy: &TestProxy,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let mut req = client().request(method.parse().unwrap(), proxy.url(target));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let backend = header(&resp, "x-backend");
    let body = resp.text().await.expect("body");
    let uri = match backend {
        Some(_) => Echo::parse(&body).uri,
        None => body,
    };
    (status, backend, uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_routes_rewrite_and_redirect_with_their_captures() {
    with_timeout(30, async {
        let app = echo_backend("app").await;
        let routes = r#"
  [[site.route]]
  regex = "^/u/(?<id>[0-9]+)/avatar$"
  upstream = "app"
  rewrite = "/avatars/{id}?size={query.s}"

  [[site.route]]
  regex = "^/files/([a-z]+)/(.+)$"
  upstream = "app"
  rewrite = "/store/{1}/{2}"

  [[site.route]]
  regex = "(?i)\\.PHP$"
  respond = { status = 403, body = "no php" }

  [[site.route]]
  regex = "^/old/(?<rest>.*)$"
  redirect = { to = "https://new.example.com/{rest}?from={host}", status = 301 }

  [[site.route]]
  path = "/"
  upstream = "app"
"#;
        let proxy = TestProxy::start(&config(routes, &[("app", app.addr)])).await;
        let cases = [
            // the captures, and a query that the template writes itself replaces the client's
            ("/u/42/avatar?s=64&x=1", "/avatars/42?size=64"),
            // the canonical path is what the regex sees: %34%32 is 42
            ("/u/%34%32/avatar?s=8", "/avatars/42?size=8"),
            // without `?` in the template the client's query is kept
            ("/files/img/a/b.png?v=3", "/store/img/a/b.png?v=3"),
            ("/u/x/avatar", "/u/x/avatar"),
        ];
        for (target, want) in cases {
            let (status, backend, uri) = sent(&proxy, "GET", target, &[]).await;
            assert_eq!((status, backend.as_deref()), (200, Some("app")), "{target}");
            assert_eq!(uri, want, "{target}");
        }
        let (status, _, body) = sent(&proxy, "GET", "/x/index.Php", &[]).await;
        assert_eq!((status, body.as_str()), (403, "no php"));

        let resp = client().get(proxy.url("/old/a/b")).send().await.unwrap();
        assert_eq!(resp.status(), 301);
        assert_eq!(
            header(&resp, "location").as_deref(),
            Some("https://new.example.com/a/b?from=127.0.0.1")
        );
    })
    .await;
}

/// Method, target, request headers, the backend that must get it.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_pass_a_route_over_for_the_next() {
    with_timeout(30, async {
        let (writes, ws, json, rest) = (
            echo_backend("writes").await,
            echo_backend("ws").await,
            echo_backend("json").await,
            echo_backend("rest").await,
        );
        let routes = r#"
  [[site.route]]
  exact = "/items"
  methods = ["POST", "PUT"]
  upstream = "writes"

  [[site.route]]
  exact = "/items"
  query = { "format" = "json" }
  upstream = "json"

  [[site.route]]
  path = "/live/"
  headers = { "Upgrade" = "websocket", "X-Client" = "*" }
  upstream = "ws"

  [[site.route]]
  regex = "^/api/"
  headers = { "Accept" = "~^application/json" }
  upstream = "json"

  [[site.route]]
  path = "/"
  upstream = "rest"
"#;
        let proxy = TestProxy::start(&config(
            routes,
            &[
                ("writes", writes.addr),
                ("ws", ws.addr),
                ("json", json.addr),
                ("rest", rest.addr),
            ],
        ))
        .await;
        let cases: [Case; 10] = [
            ("POST", "/items", &[], "writes"),
            ("PUT", "/items/", &[], "writes"),
            ("GET", "/items", &[], "rest"),
            ("GET", "/items?format=json", &[], "json"),
            ("GET", "/items?a=1&format=json", &[], "json"),
            ("GET", "/items?format=xml", &[], "rest"),
            ("GET", "/live/feed", &[("X-Client", "1")], "rest"),
            // exact header values are compared case-insensitively
            (
                "GET",
                "/live/feed",
                &[("Upgrade", "WebSocket"), ("X-Client", "")],
                "ws",
            ),
            (
                "GET",
                "/api/users",
                &[("Accept", "application/json; charset=utf-8")],
                "json",
            ),
            ("GET", "/api/users", &[("Accept", "text/html")], "rest"),
        ];
        for (method, target, headers, want) in cases {
            let (status, backend, _) = sent(&proxy, method, target, headers).await;
            assert_eq!(
                (status, backend.as_deref()),
                (200, Some(want)),
                "{method} {target} {headers:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_path_replaces_the_prefix() {
    with_timeout(30, async {
        let app = echo_backend("app").await;
        let routes = r#"
  [[site.route]]
  path = "/api/"
  upstream = "app"
  upstream_path = "/v2/"

  [[site.route]]
  exact = "/status"
  upstream = "app"
  upstream_path = "/internal/health"

  [[site.route]]
  path = "/legacy"
  upstream = "app"
  rewrite = "/new{path}?"
"#;
        let proxy = TestProxy::start(&config(routes, &[("app", app.addr)])).await;
        let cases = [
            ("/api/users?x=1", "/v2/users?x=1"),
            ("/api/", "/v2/"),
            ("/api", "/v2/"),
            ("/api/a/b", "/v2/a/b"),
            ("/status?full=1", "/internal/health?full=1"),
            // a trailing `?` in the template: no query at all
            ("/legacy/x?y=1", "/new/legacy/x"),
        ];
        for (target, want) in cases {
            let (status, _, uri) = sent(&proxy, "GET", target, &[]).await;
            assert_eq!((status, uri.as_str()), (200, want), "{target}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_leaving_the_canonical_path_is_refused() {
    with_timeout(30, async {
        let app = echo_backend("app").await;
        let routes = r#"
  [[site.route]]
  path = "/dl/"
  upstream = "app"
  rewrite = "/files/{query.name}"
"#;
        let proxy = TestProxy::start(&config(routes, &[("app", app.addr)])).await;
        let (status, _, uri) = sent(&proxy, "GET", "/dl/?name=report.pdf", &[]).await;
        assert_eq!(
            (status, uri.as_str()),
            (200, "/files/report.pdf?name=report.pdf")
        );
        for target in [
            "/dl/?name=../../etc/passwd",
            "/dl/?name=a%2Fb",
            "/dl/?name=a/./b",
        ] {
            let resp = raw_request(
                proxy.addr,
                &format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(resp.status, 400, "{target}");
        }
        assert_eq!(
            app.connections(),
            1,
            "no refused target reached the upstream"
        );
    })
    .await;
}

/// A backend that answers `GET /v2/login` with a redirect to its own address (`http://IP:PORT`)
/// and `GET /v2/here` with one naming the `Host` it got, and `/v2/rel` with a relative one.
async fn redirecting_backend() -> support::Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own = listener.local_addr().unwrap();
    serve_on(listener, "redirects", move |req| async move {
        let host = req.headers()["host"].to_str().unwrap().to_string();
        let location = match req.uri().path() {
            "/v2/login" => format!("http://{own}/v2/welcome?next=/v2/x"),
            "/v2/here" => format!("http://{host}/v2/there"),
            "/v2/other" => "http://elsewhere.test/v2/x".to_string(),
            _ => "/v2/relative".to_string(),
        };
        Response::builder()
            .status(302)
            .header("location", location)
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_locations_are_mapped_back_to_the_client() {
    with_timeout(30, async {
        let app = redirecting_backend().await;
        let routes = r#"
  [[site.route]]
  path = "/api/"
  upstream = "app"
  upstream_path = "/v2/"

  [[site.route]]
  path = "/raw/"
  upstream = "app"
  upstream_path = "/v2/"
  rewrite_location = false
"#;
        let proxy = TestProxy::start(&config(routes, &[("app", app.addr)])).await;
        let me = format!("http://{}", proxy.addr);
        let own = format!("http://{}", app.addr);
        let cases = [
            ("/api/login", format!("{me}/api/welcome?next=/v2/x")),
            ("/api/here", format!("{me}/api/there")),
            ("/api/other", "http://elsewhere.test/v2/x".to_string()),
            ("/api/rel", "/v2/relative".to_string()),
            ("/raw/login", format!("{own}/v2/welcome?next=/v2/x")),
        ];
        for (target, want) in cases {
            let resp = client().get(proxy.url(target)).send().await.unwrap();
            assert_eq!(resp.status(), 302, "{target}");
            assert_eq!(header(&resp, "location"), Some(want), "{target}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_prefix_routes_route_correctly() {
    with_timeout(60, async {
        let app = echo_backend("app").await;
        let mut routes = String::new();
        for n in 0..5_000 {
            let _ = writeln!(
                routes,
                "  [[site.route]]\n  path = \"/t/{n}/\"\n  respond = {{ status = 200, body = \"r{n}\" }}"
            );
        }
        // conditions and a regex among them, and the upstream for the rest
        routes.push_str(
            "  [[site.route]]\n  path = \"/t/42/a/\"\n  methods = [\"POST\"]\n  respond = { status = 200, body = \"post42\" }\n\
             \x20 [[site.route]]\n  regex = \"^/t/[0-9]+/special$\"\n  respond = { status = 200, body = \"special\" }\n\
             \x20 [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n",
        );
        let proxy = TestProxy::start(&config(&routes, &[("app", app.addr)])).await;
        for (method, target, want) in [
            ("GET", "/t/0/", "r0"),
            ("GET", "/t/4999/x/y", "r4999"),
            ("GET", "/t/123", "r123"),
            ("GET", "/t/12/3", "r12"),
            ("POST", "/t/42/a/b", "post42"),
            ("GET", "/t/42/a/b", "r42"),
            ("GET", "/t/7/special", "special"),
        ] {
            let (status, _, body) = sent(&proxy, method, target, &[]).await;
            assert_eq!((status, body.as_str()), (200, want), "{method} {target}");
        }
        let (_, backend, uri) = sent(&proxy, "GET", "/t/5000/x", &[]).await;
        assert_eq!((backend.as_deref(), uri.as_str()), (Some("app"), "/t/5000/x"));
    })
    .await;
}

#[test]
fn a_bad_regex_is_reported_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let text = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  regex = \"^/u/(?<id>[0-9]+/avatar$\"\n  respond = { status = 200 }\n";
    std::fs::write(&path, text).unwrap();
    let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let at = format!("{}:6:11: `site.route.regex`", path.display());
    assert!(out.stderr.contains(&at), "{}", out.stderr);
    assert!(out.stderr.contains("unclosed group"), "{}", out.stderr);
}
