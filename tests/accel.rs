//! Internal redirects: an upstream (a real hyper backend) answers with `X-Accel-Redirect`, and
//! the real binary serves the named path from the site's `internal` files route instead; that
//! route is unreachable to clients.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use support::{client, header, serve, with_timeout, Backend, TestProxy};

const FILE: &str = "the protected file's bytes, 0123456789";

/// Answers `/download/NAME` with `X-Accel-Redirect` per NAME, and anything else plainly.
async fn app() -> Backend {
    serve("app", |req: Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        let accel = |to: &str| {
            Response::builder()
                .header("x-accel-redirect", to)
                .header("content-disposition", "attachment; filename=\"f.bin\"")
                .header("cache-control", "private, max-age=60")
                .header("set-cookie", "seen=1")
                .header("set-cookie", "other=2")
                .header("x-app", "dropped")
                .header("etag", "\"upstream-tag\"")
        };
        let resp = match path.as_str() {
            "/download/ok" => accel("/protected/f.bin").body(Full::new(Bytes::new())),
            "/download/typed" => accel("/protected/f.bin")
                .header("content-type", "application/x-custom")
                .body(Full::new(Bytes::new())),
            // a body nobody reads: discarded, never sent to the client
            "/download/with-body" => {
                accel("/protected/f.bin").body(Full::new(Bytes::from(vec![b'x'; 200_000])))
            }
            "/download/missing" => accel("/protected/nope.bin").body(Full::new(Bytes::new())),
            "/download/bad" => accel("/protected/../../etc/passwd").body(Full::new(Bytes::new())),
            "/download/named" => accel("@files").body(Full::new(Bytes::new())),
            "/download/loop" => accel("/download/ok").body(Full::new(Bytes::new())),
            "/download/note" => accel("/note").body(Full::new(Bytes::new())),
            _ => Response::builder()
                .header("x-accel-redirect", "/protected/f.bin")
                .body(Full::new(Bytes::from_static(b"plain answer"))),
        };
        resp.unwrap()
    })
    .await
}

fn config(app: &Backend, root: &std::path::Path) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "/download/"
  upstream = "app"
  accel_redirect = true

  [[site.route]]
  path = "/plain/"
  upstream = "app"

  [[site.route]]
  path = "/protected/"
  internal = true
  strip_prefix = true
  files = {{ root = "{}" }}

  [[site.route]]
  exact = "/note"
  internal = true
  respond = {{ status = 200, body = "a note" }}

[upstream.app]
servers = ["{}"]
"#,
        root.display(),
        app.addr
    )
}

async fn start() -> (TestProxy, Backend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), FILE).unwrap();
    let app = app().await;
    let proxy = TestProxy::start(&config(&app, dir.path())).await;
    (proxy, app, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_names_a_file_and_the_proxy_serves_it() {
    with_timeout(60, async {
        let (proxy, app, _dir) = start().await;
        let http = client();

        let resp = http.get(proxy.url("/download/ok")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(header(&resp, "x-accel-redirect").is_none());
        assert!(
            header(&resp, "x-app").is_none(),
            "only nginx's few headers are kept"
        );
        assert_eq!(
            header(&resp, "content-disposition").as_deref(),
            Some("attachment; filename=\"f.bin\"")
        );
        assert_eq!(
            header(&resp, "cache-control").as_deref(),
            Some("private, max-age=60")
        );
        let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["seen=1", "other=2"]);
        assert_ne!(header(&resp, "etag").as_deref(), Some("\"upstream-tag\""));
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(resp.text().await.unwrap(), FILE);

        // the upstream's Content-Type wins over the file's (nginx)
        let resp = http.get(proxy.url("/download/typed")).send().await.unwrap();
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("application/x-custom")
        );
        assert_eq!(resp.text().await.unwrap(), FILE);

        // the upstream's body is discarded
        let resp = http
            .get(proxy.url("/download/with-body"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), FILE);

        // the client's own headers apply to the file: ranges, conditional requests
        let resp = http
            .get(proxy.url("/download/ok"))
            .header("range", "bytes=4-12")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        let etag = header(&resp, "etag").unwrap();
        assert_eq!(resp.text().await.unwrap(), &FILE[4..=12]);
        let resp = http
            .get(proxy.url("/download/ok"))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304);

        // any method becomes GET (nginx); HEAD stays HEAD
        let resp = http
            .post(proxy.url("/download/ok"))
            .body("form")
            .send()
            .await
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), resp.text().await.unwrap()),
            (200, FILE.into())
        );
        let resp = http.head(proxy.url("/download/ok")).send().await.unwrap();
        assert_eq!(
            header(&resp, "content-length"),
            Some(FILE.len().to_string())
        );
        assert!(resp.bytes().await.unwrap().is_empty());

        // a `respond` route may be the target too
        let resp = http.get(proxy.url("/download/note")).send().await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "a note");

        // empty upstream answers leave their connection for the next request; the one whose
        // 200 KB body was discarded was closed rather than read (over 64 KiB)
        assert_eq!(
            app.connections(),
            2,
            "one connection, then one after the big body"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_are_unreachable_and_bad_redirects_fail() {
    with_timeout(60, async {
        let (proxy, _app, _dir) = start().await;
        let http = client();
        let status = |path: &'static str| {
            let http = http.clone();
            let url = proxy.url(path);
            async move { http.get(url).send().await.unwrap().status().as_u16() }
        };
        // a client never reaches an internal route, whatever it serves
        assert_eq!(status("/protected/f.bin").await, 404);
        assert_eq!(status("/protected/").await, 404);
        assert_eq!(status("/note").await, 404);
        // what the upstream names must exist, be a path, and not proxy again
        assert_eq!(status("/download/missing").await, 404);
        assert_eq!(status("/download/bad").await, 502);
        assert_eq!(status("/download/named").await, 502);
        assert_eq!(status("/download/loop").await, 502);
        // without `accel_redirect` the header is the upstream's business: passed on
        let resp = http.get(proxy.url("/plain/x")).send().await.unwrap();
        assert_eq!(
            header(&resp, "x-accel-redirect").as_deref(),
            Some("/protected/f.bin")
        );
        assert_eq!(resp.text().await.unwrap(), "plain answer");
    })
    .await;
}
