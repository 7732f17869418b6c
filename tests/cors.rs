//! Per-route CORS, end to end: preflights answered by Gatehouse (the backend counts what reaches
//! it), actual requests decorated, the upstream's own CORS headers replaced, Gatehouse's own
//! refusals (429, 413, 502) readable by the page, HTTP/1.1 raw and reqwest, HTTP/2.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::*;

const APP: &str = "https://app.example.com";
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// An echo backend that counts requests and answers with CORS headers of its own (as an API
/// with its own CORS middleware does) and `Vary: Accept-Encoding`.
struct Upstream {
    backend: Backend,
    seen: Arc<AtomicUsize>,
}

impl Upstream {
    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

async fn upstream() -> Upstream {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let backend = serve("api", move |req| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut resp = text_response(200, render_echo(req).await);
            let h = resp.headers_mut();
            h.insert(
                "access-control-allow-origin",
                "https://upstream.example".parse().unwrap(),
            );
            h.insert("access-control-allow-methods", "PUT".parse().unwrap());
            h.insert("vary", "Accept-Encoding".parse().unwrap());
            h.insert("x-total", "42".parse().unwrap());
            resp
        }
    })
    .await;
    Upstream { backend, seen }
}

/// The site's `cors` is inherited by `/api/`, `/limited/` and `/down/` (a closed port); `/public/`
/// has its own; `/plain/` turns it off (CORS left to the upstream).
fn config(api: SocketAddr, down: SocketAddr) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[[site]]
cors = {{ origins = ["{APP}", "https://*.example.org"], methods = ["GET", "POST", "PATCH"], headers = ["Authorization", "Content-Type"], credentials = true, expose = ["X-Total"], max_age = "10m" }}

  [[site.route]]
  path = "/api/"
  upstream = "api"
  max_body = "1KB"

  [[site.route]]
  path = "/limited/"
  upstream = "api"
  rate_limit = {{ requests = 1, per = "1m" }}

  [[site.route]]
  path = "/public/"
  upstream = "api"
  cors = {{ origins = ["*"], headers = ["*"] }}

  [[site.route]]
  path = "/plain/"
  upstream = "api"
  cors = "off"

  [[site.route]]
  path = "/down/"
  upstream = "down"

[upstream.api]
servers = ["{api}"]

[upstream.down]
servers = ["{down}"]
"#
    )
}

async fn start() -> (TestProxy, Upstream) {
    let up = upstream().await;
    let down = closed_port_addr().await;
    let proxy = TestProxy::start(&config(up.backend.addr, down)).await;
    (proxy, up)
}

fn preflight(path: &str, origin: &str, method: &str, headers: &str) -> String {
    format!(
        "OPTIONS {path} HTTP/1.1\r\nHost: api.test\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\nConnection: close\r\n\r\n"
    )
}

fn get(path: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n{origin}Connection: close\r\n\r\n")
}

/// Every `Access-Control-*` header of a response.
fn cors_headers(resp: &RawResponse) -> Vec<(String, String)> {
    resp.headers
        .iter()
        .filter(|(n, _)| n.starts_with("access-control-"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_preflight_is_answered_here_with_exactly_the_grant() {
    with_timeout(20, async {
        let (proxy, up) = start().await;
        let req = preflight("/api/items", APP, "PATCH", "content-type,authorization");
        let resp = raw_request(proxy.addr, &req).await;
        assert_eq!(resp.status, 204, "{resp:?}");
        let expected: Vec<(String, String)> = [
            ("access-control-allow-origin", APP),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", "GET, POST, PATCH"),
            (
                "access-control-allow-headers",
                "authorization, content-type",
            ),
            ("access-control-max-age", "600"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let mut got = cors_headers(&resp);
        got.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(resp.all("vary"), [PREFLIGHT_VARY]);
        assert!(resp.body.is_empty());
        assert!(resp.header("x-request-id").is_some());
        assert_eq!(up.seen(), 0, "the preflight must not reach the upstream");

        // control: on a route with `cors = "off"` the preflight is the upstream's business
        let resp = raw_request(proxy.addr, &preflight("/plain/x", APP, "PATCH", "x-any")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(up.seen(), 1);
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some("https://upstream.example")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_preflights_get_403_and_never_reach_the_upstream() {
    with_timeout(20, async {
        let (proxy, up) = start().await;
        let cases = [
            (
                "origin",
                preflight("/api/x", "https://evil.example", "GET", "content-type"),
            ),
            ("method", preflight("/api/x", APP, "DELETE", "content-type")),
            (
                "header",
                preflight("/api/x", APP, "POST", "content-type, x-debug"),
            ),
        ];
        for (what, req) in cases {
            let resp = raw_request(proxy.addr, &req).await;
            assert_eq!(resp.status, 403, "{what}: {resp:?}");
            assert_eq!(cors_headers(&resp), [], "{what}: no grant at all");
            assert_eq!(resp.all("vary"), [PREFLIGHT_VARY], "{what}");
            let body = resp.body_text();
            assert!(body.contains("CORS preflight refused"), "{what}: {body}");
            assert!(body.contains(what), "{what}: {body}");
        }
        assert_eq!(up.seen(), 0);
        eventually(
            std::time::Duration::from_secs(5),
            "a cors refusal logged",
            || {
                proxy
                    .logs()
                    .iter()
                    .any(|l| l.contains("\"reason\":\"cors\""))
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_get_the_origin_echoed_and_replace_the_upstreams_headers() {
    with_timeout(20, async {
        let (proxy, up) = start().await;
        let resp = raw_request(proxy.addr, &get("/api/items", Some(APP))).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.all("access-control-allow-origin"), [APP]);
        assert_eq!(resp.all("access-control-allow-credentials"), ["true"]);
        assert_eq!(resp.all("access-control-expose-headers"), ["x-total"]);
        assert_eq!(resp.all("access-control-allow-methods"), Vec::<&str>::new());
        assert_eq!(resp.all("vary"), ["Accept-Encoding, Origin"]);
        let echo = Echo::parse(&resp.body_text());
        assert_eq!(
            echo.header("origin").as_deref(),
            Some(APP),
            "the request goes on unchanged"
        );
        assert_eq!(up.seen(), 1);

        let resp = client()
            .post(proxy.url("/api/items"))
            .header("origin", APP)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        assert_eq!(
            header(&resp, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
        let vary: Vec<_> = resp.headers().get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Encoding, Origin"]);
        assert!(Echo::parse(&resp.text().await.unwrap()).body == "{}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_origins_and_originless_requests_are_proxied_without_a_grant() {
    with_timeout(20, async {
        let (proxy, up) = start().await;
        for origin in [Some("https://evil.example"), None] {
            let resp = raw_request(proxy.addr, &get("/api/x", origin)).await;
            assert_eq!(resp.status, 200, "{origin:?}");
            assert_eq!(cors_headers(&resp), [], "{origin:?}: the upstream's are gone too");
            // a shared cache must not hand this answer to an allowed origin
            assert_eq!(resp.all("vary"), ["Accept-Encoding, Origin"], "{origin:?}");
        }
        // a method the route's cors does not list gets no grant either
        let put = "PUT /api/x HTTP/1.1\r\nHost: api.test\r\nOrigin: https://app.example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let resp = raw_request(proxy.addr, put).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("access-control-allow-origin"), None);
        assert_eq!(up.seen(), 3);

        // without cors on the route, nothing is touched
        let resp = raw_request(proxy.addr, &get("/plain/x", Some(APP))).await;
        assert_eq!(resp.header("access-control-allow-origin"), Some("https://upstream.example"));
        assert_eq!(resp.all("vary"), ["Accept-Encoding"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_without_credentials_answers_star() {
    with_timeout(20, async {
        let (proxy, up) = start().await;
        let resp = raw_request(proxy.addr, &get("/public/x", Some("https://anyone.test"))).await;
        assert_eq!(resp.all("access-control-allow-origin"), ["*"]);
        assert_eq!(resp.header("access-control-allow-credentials"), None);
        // `headers = ["*"]` echoes what the preflight asks for
        let req = preflight(
            "/public/x",
            "https://anyone.test",
            "POST",
            "x-anything,authorization",
        );
        let resp = raw_request(proxy.addr, &req).await;
        assert_eq!(resp.status, 204);
        assert_eq!(resp.all("access-control-allow-origin"), ["*"]);
        assert_eq!(
            resp.all("access-control-allow-headers"),
            ["x-anything,authorization"]
        );
        assert_eq!(
            resp.all("access-control-allow-methods"),
            ["GET, HEAD, POST"]
        );
        assert_eq!(up.seen(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subdomain_wildcard_matches_subdomains_only() {
    with_timeout(20, async {
        let (proxy, _up) = start().await;
        let cases = [
            ("https://a.example.org", true),
            ("https://deep.a.example.org", true),
            ("https://example.org", false),
            ("http://a.example.org", false),
            ("https://a.example.org.evil.test", false),
            ("https://a.example.org:8443", false),
        ];
        for (origin, allowed) in cases {
            let resp = raw_request(proxy.addr, &get("/api/x", Some(origin))).await;
            let want = allowed.then_some(origin);
            assert_eq!(resp.header("access-control-allow-origin"), want, "{origin}");
            let resp = raw_request(proxy.addr, &preflight("/api/x", origin, "GET", "")).await;
            assert_eq!(resp.status, if allowed { 204 } else { 403 }, "{origin}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatehouses_own_refusals_carry_the_grant() {
    with_timeout(20, async {
        let (proxy, up) = start().await;
        let first = raw_request(proxy.addr, &get("/limited/x", Some(APP))).await;
        assert_eq!(first.status, 200);
        let limited = raw_request(proxy.addr, &get("/limited/x", Some(APP))).await;
        assert_eq!(limited.status, 429);
        assert!(limited.header("retry-after").is_some());
        assert_eq!(limited.all("access-control-allow-origin"), [APP]);
        assert_eq!(limited.all("access-control-allow-credentials"), ["true"]);
        assert_eq!(limited.all("vary"), ["Origin"]);
        // a preflight counts against the limit too; refused, it gets no grant
        let pre = raw_request(proxy.addr, &preflight("/limited/x", APP, "POST", "")).await;
        assert_eq!(pre.status, 429);
        assert_eq!(cors_headers(&pre), []);

        let big = format!(
            "POST /api/x HTTP/1.1\r\nHost: api.test\r\nOrigin: {APP}\r\nContent-Length: 4096\r\n\r\n"
        );
        let resp = raw_request(proxy.addr, &big).await;
        assert_eq!(resp.status, 413);
        assert_eq!(resp.all("access-control-allow-origin"), [APP]);

        let resp = raw_request(proxy.addr, &get("/down/x", Some(APP))).await;
        assert_eq!(resp.status, 502);
        assert_eq!(resp.all("access-control-allow-origin"), [APP]);
        assert_eq!(up.seen(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_the_same_answers() {
    with_timeout(20, async {
        let (proxy, up) = start().await;
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .no_proxy()
            .build()
            .unwrap();
        let resp = h2
            .request(reqwest::Method::OPTIONS, proxy.url("/api/items"))
            .header("origin", APP)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 204);
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        assert_eq!(
            header(&resp, "access-control-allow-methods").as_deref(),
            Some("GET, POST, PATCH")
        );
        assert_eq!(up.seen(), 0);

        let resp = h2
            .get(proxy.url("/api/items"))
            .header("origin", APP)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        assert_eq!(
            header(&resp, "access-control-expose-headers").as_deref(),
            Some("x-total")
        );
        assert_eq!(up.seen(), 1);
    })
    .await;
}
