//! Static files (`files`): the real binary serving a real folder (a 1 MiB file, precompressed
//! siblings, links out of and inside the root, dotfiles, folders with and without an index) to
//! real clients: reqwest (built without decoders, so bodies arrive as sent) and raw sockets for
//! the paths a client library would clean up first.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use support::{client, header, raw_request, run_gatehouse, with_timeout, TestProxy};

/// In a file next to the root: no request may ever see it, except through `follow_symlinks`.
const SECRET: &str = "TOP-SECRET-outside-the-root";
const BIG: usize = 1 << 20;

/// A folder `site/` holding `root/` (served) and `secret.txt` (not).
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        // no leading dot: a path through it must be refused for being outside, not hidden
        let dir = tempfile::Builder::new()
            .prefix("files-test")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        let write = |name: &str, bytes: &[u8]| {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
        write("index.html", b"<h1>home</h1>\n");
        write("app.js", js().as_bytes());
        write("app.js.br", b"brotli-bytes");
        write("app.js.zst", b"zstd-bytes");
        write("app.js.gz", b"gzip-bytes");
        write("style.css", css().as_bytes());
        write("big.bin", &big());
        write("my file.txt", b"spaced");
        write(".env", b"DB_PASSWORD=hunter2");
        write(".git/config", b"[core]");
        write(
            ".well-known/security.txt",
            b"Contact: mailto:sec@example.com",
        );
        write("docs/index.html", b"docs index");
        write("empty/notes.txt", b"not listed");
        write("spa/index.html", b"<div id=app>SPA shell</div>");
        write("spa/assets/app.css", b"body{}");
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("out.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("app.js"), root.join("link.js")).unwrap();
        Tree { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn secret_path(&self) -> PathBuf {
        self.dir.path().join("secret.txt")
    }

    /// `encoded_slashes = "keep"` and `merge_slashes = false` let through what a naive join of
    /// root and path would get wrong; on the routes with `follow_symlinks`, only the path's own
    /// checks keep it inside the root (no real-path check).
    fn config(&self) -> String {
        let root = self.root();
        let root = root.display();
        format!(
            r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
encoded_slashes = "keep"
merge_slashes = false

[[site]]
  [[site.route]]
  path = "/"
  files = {{ root = "{root}", precompressed = ["br", "zstd", "gzip"], dotfiles = [".well-known"] }}

  [[site.route]]
  path = "/spa/"
  strip_prefix = true
  files = {{ root = "{root}/spa", fallback = "/index.html" }}

  [[site.route]]
  path = "/static"
  strip_prefix = true
  files = {{ root = "{root}", follow_symlinks = true }}

  [[site.route]]
  path = "/follow/"
  strip_prefix = true
  files = {{ root = "{root}", follow_symlinks = true }}

  [[site.route]]
  path = "/both/"
  strip_prefix = true
  encode = ["gzip"]
  files = {{ root = "{root}", precompressed = ["br"] }}
"#
        )
    }

    async fn start(&self) -> TestProxy {
        TestProxy::start(&self.config()).await
    }
}

fn js() -> String {
    "function add(a, b) { return a + b; }\n".repeat(120)
}

fn css() -> String {
    ".button { color: #333; padding: 4px 8px; }\n".repeat(100)
}

fn big() -> Vec<u8> {
    (0..BIG).map(|i| (i * 31 % 251) as u8).collect()
}

async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(proxy.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request")
}

/// Status, and the body as text.
async fn fetch(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let resp = get(proxy, path, headers).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// A raw `GET` of `target` exactly as written.
async fn raw_get(proxy: &TestProxy, target: &str) -> support::RawResponse {
    let request = format!("GET {target} HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n");
    raw_request(proxy.addr, &request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_indexes_types_and_methods() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;

        let resp = get(&proxy, "/app.js", &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            header(&resp, "content-length"),
            Some(js().len().to_string())
        );
        assert_eq!(header(&resp, "accept-ranges").as_deref(), Some("bytes"));
        assert_eq!(header(&resp, "vary").as_deref(), Some("Accept-Encoding"));
        assert!(header(&resp, "etag").unwrap().starts_with('"'));
        assert!(header(&resp, "last-modified").unwrap().ends_with(" GMT"));
        assert!(header(&resp, "content-encoding").is_none());
        assert_eq!(resp.text().await.unwrap(), js());

        assert_eq!(
            fetch(&proxy, "/", &[]).await,
            (200, "<h1>home</h1>\n".into())
        );
        assert_eq!(
            fetch(&proxy, "/docs/", &[]).await,
            (200, "docs index".into())
        );
        assert_eq!(
            fetch(&proxy, "/my%20file.txt", &[]).await,
            (200, "spaced".into())
        );
        let css = get(&proxy, "/style.css", &[]).await;
        assert_eq!(
            header(&css, "content-type").as_deref(),
            Some("text/css; charset=utf-8")
        );

        // a folder asked for without its slash: 301 to it, query kept (nginx)
        for (path, location) in [("/docs", "/docs/"), ("/docs?x=1", "/docs/?x=1")] {
            let resp = get(&proxy, path, &[]).await;
            assert_eq!(resp.status(), 301, "{path}");
            assert_eq!(header(&resp, "location").as_deref(), Some(location));
        }
        // never a listing: a folder without index, a missing file, a file as a folder
        for path in ["/empty/", "/empty", "/nope.html", "/app.js/", "/docs/nope"] {
            let (status, body) = fetch(&proxy, path, &[]).await;
            assert_eq!(status, 404, "{path}");
            assert!(!body.contains("notes.txt"), "{path}: {body}");
        }

        // HEAD: the GET's head, no body
        let resp = client().head(proxy.url("/big.bin")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-length"), Some(BIG.to_string()));
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("application/octet-stream")
        );
        assert!(resp.bytes().await.unwrap().is_empty());

        // a 1 MiB file, every byte
        let resp = get(&proxy, "/big.bin", &[]).await;
        assert_eq!(header(&resp, "content-length"), Some(BIG.to_string()));
        assert!(resp.bytes().await.unwrap() == big());

        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = client()
                .request(method.clone(), proxy.url("/app.js"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 405, "{method}");
            assert_eq!(header(&resp, "allow").as_deref(), Some("GET, HEAD"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outside_the_root_nor_hidden() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;
        let secret = tree.secret_path();
        let secret = secret.display();
        // (raw target, expected status): each would reach the secret through a naive join of
        // root and path, or through a link
        let cases = [
            // the canonical step refuses what climbs above `/`
            ("/../secret.txt".to_string(), 400),
            ("/%2e%2e/secret.txt".into(), 400),
            ("/%2E%2E/%2e%2e/secret.txt".into(), 400),
            ("/..%2Fsecret.txt".into(), 400),
            ("/a/..%2F..%2Fsecret.txt".into(), 400),
            // `//abs/path` (kept by merge_slashes = false) must not replace the root
            (format!("/{secret}"), 404),
            (format!("/{}", secret.to_string().replace('/', "%2F")), 404),
            (format!("/follow/{secret}"), 404),
            (
                format!("/follow/{}", secret.to_string().replace('/', "%2F")),
                404,
            ),
            // a prefix without its slash leaves `..` behind (nginx's `alias` trap)
            ("/static../secret.txt".into(), 404),
            ("/static..".into(), 404),
            // links that lead out of the root
            ("/out.txt".into(), 404),
            ("/up/secret.txt".into(), 404),
            // hidden files, however spelt
            ("/.env".into(), 404),
            ("/%2Eenv".into(), 404),
            ("/.git/config".into(), 404),
            ("/static/.env".into(), 404),
            ("/follow/.env".into(), 404),
        ];
        let mut wrong = Vec::new();
        for (target, status) in &cases {
            let resp = raw_get(&proxy, target).await;
            let body = resp.body_text();
            if resp.status != *status || body.contains(SECRET) || body.contains("hunter2") {
                wrong.push(format!("GET {target}: {} {body}", resp.status));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // what is allowed: a listed dotfile, a link inside the root, links with follow_symlinks
        let ok = [
            (
                "/.well-known/security.txt",
                "Contact: mailto:sec@example.com".to_string(),
            ),
            ("/link.js", js()),
            ("/static/docs/", "docs index".into()),
            ("/follow/out.txt", SECRET.into()),
            // out through a link and back in: the real path is inside
            ("/up/root/my%20file.txt", "spaced".into()),
        ];
        for (target, body) in ok {
            let resp = raw_get(&proxy, target).await;
            assert_eq!((resp.status, resp.body_text()), (200, body), "GET {target}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompressed_siblings_by_accept_encoding() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;
        // (Accept-Encoding, Content-Encoding, body): q-values first, then the route's order
        let cases = [
            ("gzip, br, zstd", Some("br"), "brotli-bytes".to_string()),
            ("gzip", Some("gzip"), "gzip-bytes".into()),
            ("zstd;q=1, br;q=0.5", Some("zstd"), "zstd-bytes".into()),
            ("br;q=0, gzip;q=0.5", Some("gzip"), "gzip-bytes".into()),
            ("*", Some("br"), "brotli-bytes".into()),
            ("identity", None, js()),
            ("deflate", None, js()),
        ];
        let mut tags = Vec::new();
        for (accept, coding, body) in cases {
            let resp = get(&proxy, "/app.js", &[("accept-encoding", accept)]).await;
            assert_eq!(resp.status(), 200, "{accept}");
            assert_eq!(
                header(&resp, "content-encoding").as_deref(),
                coding,
                "{accept}"
            );
            assert_eq!(header(&resp, "vary").as_deref(), Some("Accept-Encoding"));
            assert_eq!(
                header(&resp, "content-type").as_deref(),
                Some("text/javascript; charset=utf-8"),
                "the type of the file asked for, not of its sibling"
            );
            assert_eq!(
                header(&resp, "content-length"),
                Some(body.len().to_string())
            );
            tags.push((coding, header(&resp, "etag").unwrap()));
            assert_eq!(resp.text().await.unwrap(), body, "{accept}");
        }
        // one validator per encoding
        let distinct: std::collections::HashSet<_> = tags.iter().map(|(_, t)| t).collect();
        assert_eq!(distinct.len(), 4, "{tags:?}");
        // no sibling: the file itself
        let resp = get(&proxy, "/style.css", &[("accept-encoding", "br")]).await;
        assert!(header(&resp, "content-encoding").is_none());
        assert_eq!(resp.text().await.unwrap(), css());
        // HEAD gets the sibling's head
        let resp = client()
            .head(proxy.url("/app.js"))
            .header("accept-encoding", "br")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("br"));
        assert_eq!(header(&resp, "content-length").as_deref(), Some("12"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_compresses_files_without_a_sibling() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;
        let accept = [("accept-encoding", "br, gzip")];
        // a sibling: sent as it is, never compressed again
        let resp = get(&proxy, "/both/app.js", &accept).await;
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("br"));
        assert_eq!(resp.text().await.unwrap(), "brotli-bytes");
        // none: the route's `encode` compresses it on the way
        let resp = get(&proxy, "/both/style.css", &accept).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
        assert!(header(&resp, "content-length").is_none());
        assert!(header(&resp, "etag").unwrap().starts_with("W/\""));
        let mut text = String::new();
        let bytes = resp.bytes().await.unwrap();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, css());
        // a range is of the file, never compressed
        let resp = get(
            &proxy,
            "/both/style.css",
            &[accept[0], ("range", "bytes=0-9")],
        )
        .await;
        assert_eq!(resp.status(), 206);
        assert!(header(&resp, "content-encoding").is_none());
        assert_eq!(resp.text().await.unwrap(), &css()[..10]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;
        let first = get(&proxy, "/app.js", &[]).await;
        let etag = header(&first, "etag").unwrap();
        let modified = header(&first, "last-modified").unwrap();

        let resp = get(&proxy, "/app.js", &[("if-none-match", &etag)]).await;
        assert_eq!(resp.status(), 304);
        assert_eq!(header(&resp, "etag"), Some(etag.clone()));
        assert_eq!(header(&resp, "vary").as_deref(), Some("Accept-Encoding"));
        assert!(resp.bytes().await.unwrap().is_empty());
        let list = format!("\"nope\", W/{etag}");
        assert_eq!(
            get(&proxy, "/app.js", &[("if-none-match", &list)])
                .await
                .status(),
            304
        );
        assert_eq!(
            get(&proxy, "/app.js", &[("if-none-match", "\"other\"")])
                .await
                .status(),
            200
        );
        assert_eq!(
            get(&proxy, "/app.js", &[("if-modified-since", &modified)])
                .await
                .status(),
            304
        );
        let long_ago = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            get(&proxy, "/app.js", &[("if-modified-since", long_ago)])
                .await
                .status(),
            200
        );
        // If-None-Match decides when both are sent
        let both = [
            ("if-none-match", "\"other\""),
            ("if-modified-since", &modified),
        ];
        assert_eq!(get(&proxy, "/app.js", &both).await.status(), 200);
        // the identity tag does not match the brotli sibling
        let br = [("if-none-match", etag.as_str()), ("accept-encoding", "br")];
        assert_eq!(get(&proxy, "/app.js", &br).await.status(), 200);
        // If-Match and If-Unmodified-Since
        assert_eq!(
            get(&proxy, "/app.js", &[("if-match", &etag)])
                .await
                .status(),
            200
        );
        assert_eq!(
            get(&proxy, "/app.js", &[("if-match", "\"other\"")])
                .await
                .status(),
            412
        );
        assert_eq!(
            get(&proxy, "/app.js", &[("if-unmodified-since", long_ago)])
                .await
                .status(),
            412
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_ranges() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;
        let all = big();
        let len = BIG;
        // (Range, first, last)
        let cases = [
            ("bytes=0-99", 0, 99),
            ("bytes=-500", len - 500, len - 1),
            ("bytes=100-", 100, len - 1),
            ("bytes=1000-999999999", 1000, len - 1),
        ];
        for (range, first, last) in cases {
            let resp = get(&proxy, "/big.bin", &[("range", range)]).await;
            assert_eq!(resp.status(), 206, "{range}");
            let content_range = format!("bytes {first}-{last}/{len}");
            assert_eq!(header(&resp, "content-range"), Some(content_range));
            assert_eq!(
                header(&resp, "content-length"),
                Some((last - first + 1).to_string())
            );
            assert!(resp.bytes().await.unwrap() == all[first..=last], "{range}");
        }
        let resp = get(&proxy, "/big.bin", &[("range", "bytes=2000000-")]).await;
        assert_eq!(resp.status(), 416);
        assert_eq!(
            header(&resp, "content-range"),
            Some(format!("bytes */{len}"))
        );
        // several ranges: the whole file
        let resp = get(&proxy, "/big.bin", &[("range", "bytes=0-1,10-11")]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().len(), len);

        let head = get(&proxy, "/big.bin", &[]).await;
        let etag = header(&head, "etag").unwrap();
        let modified = header(&head, "last-modified").unwrap();
        drop(head);
        let range = ("range", "bytes=-10");
        for (if_range, status) in [
            (etag.as_str(), 206),
            (modified.as_str(), 206),
            ("\"stale\"", 200),
            ("Sun, 06 Nov 1994 08:49:37 GMT", 200),
        ] {
            let resp = get(&proxy, "/big.bin", &[range, ("if-range", if_range)]).await;
            assert_eq!(resp.status(), status, "If-Range: {if_range}");
            let want = if status == 206 { 10 } else { len };
            assert_eq!(resp.bytes().await.unwrap().len(), want);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_page_app_fallback() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;
        let shell = "<div id=app>SPA shell</div>".to_string();
        for path in [
            "/spa/",
            "/spa/settings/profile",
            "/spa/nope.js",
            "/spa/.env",
        ] {
            let resp = get(&proxy, path, &[]).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(
                header(&resp, "content-type").as_deref(),
                Some("text/html; charset=utf-8"),
                "{path}"
            );
            assert_eq!(resp.text().await.unwrap(), shell, "{path}");
        }
        assert_eq!(
            fetch(&proxy, "/spa/assets/app.css", &[]).await,
            (200, "body{}".into())
        );
        // the route's own folder without its slash, as any folder with an index
        let resp = get(&proxy, "/spa", &[]).await;
        assert_eq!(resp.status(), 301);
        assert_eq!(header(&resp, "location").as_deref(), Some("/spa/"));
        // the fallback is a file like any other: validators, conditional requests
        let resp = get(&proxy, "/spa/deep/link", &[]).await;
        let etag = header(&resp, "etag").unwrap();
        let resp = get(&proxy, "/spa/other/link", &[("if-none-match", &etag)]).await;
        assert_eq!(resp.status(), 304);
    })
    .await;
}

/// `gatehouse check` on a config whose `root` is `root`: the error, if any.
fn check_root(root: &Path) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  files = {{ root = \"{}\" }}\n",
        root.display()
    );
    let path = dir.path().join("g.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    (out.status.code().unwrap_or(-1), out.stderr + &out.stdout)
}

#[test]
fn a_root_that_is_no_folder_is_a_config_error() {
    let tree = Tree::new();
    let (code, out) = check_root(&tree.root());
    assert_eq!(code, 0, "{out}");
    let missing = tree.dir.path().join("missing");
    let (code, out) = check_root(&missing);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("g.toml:7:"), "{out}");
    assert!(out.contains("site.route.files.root"), "{out}");
    assert!(out.contains("cannot read the folder"), "{out}");
    let (code, out) = check_root(&tree.secret_path());
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("is not a folder"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_too() {
    with_timeout(60, async {
        let tree = Tree::new();
        let proxy = tree.start().await;
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .no_proxy()
            .build()
            .unwrap();
        let resp = h2.get(proxy.url("/big.bin")).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(header(&resp, "content-length"), Some(BIG.to_string()));
        assert!(resp.bytes().await.unwrap() == big());
        let resp = h2
            .get(proxy.url("/big.bin"))
            .header("range", "bytes=-70000")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        assert!(resp.bytes().await.unwrap() == big()[BIG - 70000..]);
        let resp = h2.head(proxy.url("/app.js")).send().await.unwrap();
        assert_eq!(
            header(&resp, "content-length"),
            Some(js().len().to_string())
        );
    })
    .await;
}

/// Clients that stop reading a large file hold the proxy to a few chunks each, not the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_stream_in_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    with_timeout(60, async {
        let tree = Tree::new();
        // sparse: 256 MiB of zeros that take no disk
        let huge = std::fs::File::create(tree.root().join("huge.bin")).unwrap();
        huge.set_len(256 << 20).unwrap();
        let proxy = tree.start().await;
        assert_eq!(get(&proxy, "/app.js", &[]).await.status(), 200);
        let before = support::proc_status_kb(proxy.pid, "VmRSS");
        let mut conns = Vec::new();
        for _ in 0..20 {
            let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            let req = "GET /huge.bin HTTP/1.1\r\nHost: files.test\r\n\r\n";
            conn.write_all(req.as_bytes()).await.unwrap();
            let mut head = [0u8; 1024];
            let n = conn.read(&mut head).await.unwrap();
            assert!(head[..n].starts_with(b"HTTP/1.1 200"));
            conns.push(conn);
        }
        // the socket buffers fill, then each response waits with its chunks in hand
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let grown_kib = support::proc_status_kb(proxy.pid, "VmRSS").saturating_sub(before);
        assert!(
            grown_kib < 32 << 10,
            "RSS grew by {grown_kib} KiB for 20 stalled 256 MiB downloads"
        );
        eprintln!("RSS grew by {grown_kib} KiB for 20 stalled 256 MiB downloads");
    })
    .await;
}

/// `files` and `upstream` on one route (nginx `try_files $uri @app`, Caddy `try_files` before
/// `reverse_proxy`): a `GET`/`HEAD` for a path naming a file is served from the folder; a
/// missing file, a hidden one, a folder without an index and any other method go upstream,
/// with the path (and `strip_prefix`) as a proxy route sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_first_then_the_upstream() {
    with_timeout(60, async {
        let tree = Tree::new();
        let app = support::echo_backend("app").await;
        let root = tree.root();
        let config = format!(
            r#"
[listen]
http = "127.0.0.1:0"

[upstream.app]
servers = ["{app}"]

[[site]]
  [[site.route]]
  path = "/"
  upstream = "app"
  files = {{ root = "{root}", precompressed = ["br"] }}

  [[site.route]]
  path = "/assets/"
  strip_prefix = true
  upstream = "app"
  files = {{ root = "{root}", index = [] }}
"#,
            app = app.addr,
            root = root.display()
        );
        let proxy = TestProxy::start(&config).await;
        // files there: served by Gatehouse, the upstream never asked
        assert_eq!(fetch(&proxy, "/app.js", &[]).await, (200, js()));
        let resp = get(&proxy, "/app.js", &[("accept-encoding", "br")]).await;
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("br"));
        assert_eq!(fetch(&proxy, "/", &[]).await.1, "<h1>home</h1>\n");
        assert_eq!(fetch(&proxy, "/assets/style.css", &[]).await, (200, css()));
        let head = client().head(proxy.url("/style.css")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert!(header(&head, "x-backend").is_none());
        assert_eq!(app.connections(), 0, "a file was asked of the upstream");
        // nothing servable: the upstream answers, with the path a proxy route sends
        for (path, upstream_sees) in [
            ("/api/users?page=2", "GET /api/users?page=2 "),
            ("/nope.js", "GET /nope.js "),
            ("/.env", "GET /.env "),
            ("/.git/config", "GET /.git/config "),
            ("/assets/missing.png", "GET /missing.png "),
            ("/assets/", "GET / "),
        ] {
            let resp = get(&proxy, path, &[]).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(header(&resp, "x-backend").as_deref(), Some("app"), "{path}");
            let body = resp.text().await.unwrap();
            assert!(body.starts_with(upstream_sees), "{path}: {body}");
            assert!(
                !body.contains("hunter2") && !body.contains("[core]"),
                "{body}"
            );
        }
        // other methods are the application's, even on a file's path
        let resp = client()
            .post(proxy.url("/app.js"))
            .body("x=1")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-backend").as_deref(), Some("app"));
        let body = resp.text().await.unwrap();
        assert!(
            body.starts_with("POST /app.js ") && body.ends_with("x=1"),
            "{body}"
        );
    })
    .await;
}

/// `gatehouse check` on a route with `files` and `upstream`: `fallback` would leave the
/// upstream nothing, so it is refused at its key.
#[test]
fn files_first_refuses_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let config = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n  files = {{ root = \"{}\", fallback = \"/index.html\" }}\n",
        root.display()
    );
    let path = dir.path().join("g.toml");
    std::fs::write(&path, &config).unwrap();
    let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    let text = out.stderr + &out.stdout;
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(text.contains("g.toml:11:"), "{text}");
    assert!(text.contains("site.route.files.fallback"), "{text}");
    assert!(text.contains("the upstream answers every path"), "{text}");
    // without the fallback the same route is valid
    std::fs::write(&path, config.replace(", fallback = \"/index.html\"", "")).unwrap();
    let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stderr, out.stdout);
}
