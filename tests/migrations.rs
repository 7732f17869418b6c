//! The migrations in `config/examples/migrations/`: reverse-proxy configs that public projects ship
//! or document (nginx, Caddy, Traefik), each translated to a `gatehouse.toml`. Every translation
//! passes `gatehouse check`, and each has one end-to-end test on the translated file itself (never
//! a copy): its `${VAR}`s point the listeners at 127.0.0.1:0, the upstreams at recording backends
//! on loopback (TCP or Unix sockets), the file roots at temp folders, and the certificates at
//! files made here (or an ACME state dir that already holds them, so the CA is never asked). Each
//! test asserts what the original config promised: what the backend receives (path, Host,
//! forwarded headers, headers set or removed), what the browser receives (headers, files with
//! conditional and range requests, SPA fallbacks, redirects, X-Accel-Redirect, error pages).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{
    any_cert_client, header, raw_request, raw_request_on, render_echo, run_gatehouse, serve,
    with_timeout, Backend, Echo, RawResponse, Resp, TestProxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples/migrations");
const NAMES: [&str; 14] = [
    "mastodon-nginx",
    "mastodon-caddy",
    "synapse-nginx",
    "synapse-caddy",
    "jellyfin-nginx",
    "jellyfin-traefik",
    "gitea-nginx",
    "gitea-traefik",
    "discourse-nginx",
    "seafile-nginx",
    "mattermost-nginx",
    "hoppscotch-caddy",
    "plane-caddy",
    "fastapi-template-traefik",
];

fn translation(name: &str) -> PathBuf {
    Path::new(MIGRATIONS).join(name).join("gatehouse.toml")
}

// ---------------------------------------------------------------------------------------------
// The environment a translation runs with
// ---------------------------------------------------------------------------------------------

/// Owned `(NAME, value)` pairs for a translation's `${NAME}`s.
#[derive(Default, Clone)]
struct Env(Vec<(&'static str, String)>);

impl Env {
    /// The listeners on 127.0.0.1:0.
    fn loopback() -> Env {
        Env::default()
            .set("GATEHOUSE_HTTP", "127.0.0.1:0")
            .set("GATEHOUSE_HTTPS", "127.0.0.1:0")
            .set("GATEHOUSE_ADMIN", "127.0.0.1:0")
    }

    fn set(mut self, name: &'static str, value: impl ToString) -> Env {
        self.0.push((name, value.to_string()));
        self
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    async fn start(&self, name: &str, https: bool) -> TestProxy {
        TestProxy::start_at_with_env(&translation(name), &self.pairs(), https).await
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates: files, or an ACME state dir that already holds them
// ---------------------------------------------------------------------------------------------

/// Where the ACME translations' CA is pointed: nothing listens there, and it is never asked while
/// the stored certificate is valid.
const ACME_DIRECTORY: &str = "https://127.0.0.1:9/directory";
/// That CA's folder in the state dir (`certs/<directory, as a file name>/<first host>/`).
const ACME_CERTS: &str = "certs/127.0.0.1-9-directory";

/// Self-signed certificates in a temp dir, one per site: as certificate files and in an ACME
/// state dir (under the site's first host), and a client trusting all of them.
struct Tls {
    dir: tempfile::TempDir,
    pems: Vec<String>,
}

impl Tls {
    fn new() -> Tls {
        Tls {
            dir: tempfile::tempdir().unwrap(),
            pems: Vec::new(),
        }
    }

    /// A certificate for `hosts`, stored for the site whose first host is `hosts[0]`; returns
    /// its `(cert.pem, key.pem)` paths.
    fn site(&mut self, hosts: &[&str]) -> (String, String) {
        let names = hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let made = rcgen::generate_simple_self_signed(names).unwrap();
        let folder = self.dir.path().join(ACME_CERTS).join(hosts[0]);
        std::fs::create_dir_all(&folder).unwrap();
        let (cert, key) = (folder.join("cert.pem"), folder.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        self.pems.push(made.cert.pem());
        (cert.display().to_string(), key.display().to_string())
    }

    /// Waits until `proxy` has loaded the stored certificate of each of this state dir's sites
    /// (ACME sites answer handshakes only from then on).
    async fn loaded(&self, proxy: &TestProxy) {
        let want = self.pems.len();
        support::eventually(
            Duration::from_secs(5),
            "the stored certificates loaded",
            || {
                proxy
                    .logs()
                    .iter()
                    .filter(|l| l.contains("certificate loaded"))
                    .count()
                    >= want
            },
        )
        .await;
    }

    /// `env` with the ACME state dir and the unreachable CA.
    fn acme(&self, env: Env) -> Env {
        env.set("GATEHOUSE_STATE_DIR", self.dir.path().display())
            .set("ACME_DIRECTORY", ACME_DIRECTORY)
    }

    /// An HTTPS client trusting these certificates only, reaching every one of `hosts` at `addr`.
    fn client(&self, hosts: &[&str], addr: SocketAddr) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_built_in_root_certs(false);
        for pem in &self.pems {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        for host in hosts {
            builder = builder.resolve(host, addr);
        }
        builder.build().unwrap()
    }
}

/// A plain-HTTP client reaching every one of `hosts` at `addr`.
fn http_client(hosts: &[&str], addr: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    for host in hosts {
        builder = builder.resolve(host, addr);
    }
    builder.build().unwrap()
}

/// `request` (a whole HTTP/1.1 request, "\r\n" line ends) over TLS to `addr` as `sni`.
async fn tls_raw(addr: SocketAddr, sni: &str, request: &str) -> RawResponse {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(any_cert_client(rustls::ALL_VERSIONS, &[]))
        .connect(name, tcp)
        .await
        .unwrap();
    raw_request_on(tls, request).await
}

/// The head of a request declaring a body of `len` bytes, sent without it: the answer must come
/// before the body (`413` for one over the limit).
fn declared_body(method: &str, host: &str, path: &str, len: u64) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
}

const MB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Recording backends
// ---------------------------------------------------------------------------------------------

/// What a recording backend answers: `x-backend: NAME` and, as the body, what it received
/// ([`render_echo`], read back with [`seen`]). The query steers the answer, so a test can have the
/// app say what the original config reacts to: `status=NNN`, `accel=PATH` (`X-Accel-Redirect`),
/// `cookie=1` (`Set-Cookie`), `xcto=VALUE` (`X-Content-Type-Options`), `len=N` (N more bytes of
/// body), `location=URL`, `ctype=TYPE` (`Content-Type`, else `text/plain`).
async fn app_answer(name: String, req: Request<Incoming>) -> Resp {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut body = render_echo(req).await;
    if let Some(len) = get("len") {
        body.push_str(&"x".repeat(len.parse().unwrap()));
    }
    let status: u16 = get("status").map_or(200, |s| s.parse().unwrap());
    let ctype = get("ctype").unwrap_or_else(|| "text/plain".to_string());
    let mut resp = Response::builder()
        .status(status)
        .header("x-backend", name)
        .header("content-type", ctype);
    for (key, header) in [
        ("accel", "x-accel-redirect"),
        ("xcto", "x-content-type-options"),
        ("location", "location"),
    ] {
        if let Some(value) = get(key) {
            resp = resp.header(header, value);
        }
    }
    if get("cookie").is_some() {
        resp = resp.header("set-cookie", "_forum_session=secret; path=/");
    }
    resp.body(Full::new(Bytes::from(body))).unwrap()
}

/// A recording backend on 127.0.0.1:0 (see [`app_answer`]).
async fn app(name: &str) -> Backend {
    let label = name.to_string();
    serve(name, move |req| app_answer(label.clone(), req)).await
}

/// [`app`] that closes each connection after its answer, so that once it is dropped nothing of it
/// is left to answer (no kept-alive connection in the proxy's pool): the next request finds it
/// down.
async fn app_closing(name: &str) -> Backend {
    let label = name.to_string();
    serve(name, move |req| {
        let label = label.clone();
        async move {
            let mut resp = app_answer(label, req).await;
            resp.headers_mut().insert(
                "connection",
                hyper::header::HeaderValue::from_static("close"),
            );
            resp
        }
    })
    .await
}

/// A recording backend on a Unix socket at `path`; stops on drop.
struct UnixApp(tokio::task::JoinHandle<()>);

impl UnixApp {
    fn start(path: &Path, name: &str) -> UnixApp {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let name = name.to_string();
        UnixApp(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let name = name.clone();
                        async move { Ok::<_, std::convert::Infallible>(app_answer(name, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }))
    }
}

impl Drop for UnixApp {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A backend speaking raw HTTP/1.1: an upgrade request (`Upgrade:` in the head) gets `101` and
/// then every byte echoed back; any other request `200` with its head as the body.
async fn tunnel_app(name: &str) -> Backend {
    support::serve_raw(name, |mut stream| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        if text.to_ascii_lowercase().contains("\r\nupgrade:") {
            let accept = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
            stream.write_all(accept.as_bytes()).await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        } else {
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        }
    })
    .await
}

/// What the backend received, from a recording backend's answer.
async fn seen(resp: reqwest::Response) -> Echo {
    assert_eq!(resp.status(), 200, "the backend's answer");
    Echo::parse(&resp.text().await.unwrap())
}

async fn get(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client.get(url).send().await.unwrap()
}

/// `(status, x-backend, body)` of a GET.
async fn fetch(client: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
    let resp = get(client, url).await;
    let backend = header(&resp, "x-backend");
    (resp.status().as_u16(), backend, resp.text().await.unwrap())
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// A folder of files for a `files` route, made in a temp dir.
struct Files(tempfile::TempDir);

impl Files {
    fn new(files: &[(&str, &[u8])]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        for (rel, contents) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        Files(dir)
    }

    fn path(&self) -> String {
        self.0.path().display().to_string()
    }
}

/// `len` bytes of JavaScript-looking text (compressible, not a repetition of one byte).
fn script(len: usize) -> Vec<u8> {
    let line = b"export function f(a, b) { return a + b * 42; } // static asset\n";
    line.iter().copied().cycle().take(len).collect()
}

/// The file at `url` is `body`, with a validator the browser can revalidate with (`304`), and a
/// single `Range` gets `206` with those bytes.
async fn assert_file(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> reqwest::header::HeaderMap {
    let resp = get(client, url).await;
    assert_eq!(resp.status(), 200, "GET {url}");
    let headers = resp.headers().clone();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), body, "GET {url}");
    let etag = headers.get("etag").cloned();
    let modified = headers.get("last-modified").cloned();
    let revalidate = match (&etag, &modified) {
        (Some(etag), _) => client.get(url).header("if-none-match", etag),
        (None, Some(date)) => client.get(url).header("if-modified-since", date),
        (None, None) => panic!("{url}: neither ETag nor Last-Modified: {headers:?}"),
    };
    let resp = revalidate.send().await.unwrap();
    assert_eq!(resp.status(), 304, "{url} revalidated");
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = client
        .get(url)
        .header("range", "bytes=2-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206, "{url} with Range");
    let (total, last) = (body.len(), 9.min(body.len() - 1));
    assert_eq!(
        header(&resp, "content-range").as_deref(),
        Some(format!("bytes 2-{last}/{total}").as_str())
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[2..=last]);
    headers
}

fn hv(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Every translation passes `gatehouse check`
// ---------------------------------------------------------------------------------------------

#[test]
fn every_translation_passes_gatehouse_check() {
    let mut found: Vec<String> = std::fs::read_dir(MIGRATIONS)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("gatehouse.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want = NAMES.map(String::from).to_vec();
    want.sort();
    assert_eq!(
        found, want,
        "every translation has a test here, and every test a translation"
    );

    // What the defaults cannot give on a test machine: the file roots and certificate files
    // (they are read by `check`), nothing else.
    let files = Files::new(&[("index.html", b"<!doctype html>"), ("500.html", b"sorry")]);
    let mut tls = Tls::new();
    let (cert, key) = tls.site(&["example.org"]);
    let mut env = Env::default();
    for root in [
        "MASTODON_PUBLIC",
        "GITEA_PUBLIC",
        "DISCOURSE_PUBLIC",
        "SEAHUB_DIR",
        "HOPP_ADMIN_SITE",
        "HOPP_WEB_SITE",
    ] {
        env = env.set(root, files.path());
    }
    for site in ["SYNAPSE", "JELLYFIN"] {
        let (c, k) = match site {
            "SYNAPSE" => ("SYNAPSE_TLS_CERT", "SYNAPSE_TLS_KEY"),
            _ => ("JELLYFIN_TLS_CERT", "JELLYFIN_TLS_KEY"),
        };
        env = env.set(c, &cert).set(k, &key);
    }
    for name in NAMES {
        let path = translation(name);
        let out = run_gatehouse(
            &["check", "--config", path.to_str().unwrap()],
            &env.pairs(),
            &[],
        );
        assert!(
            out.status.success(),
            "gatehouse check {name}: {:?}\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
    }
    // and the README names every one, with its original
    let readme = std::fs::read_to_string(Path::new(MIGRATIONS).join("README.md")).unwrap();
    for name in NAMES {
        assert!(
            readme.contains(&format!("[{name}/]({name}/)")),
            "README.md lists {name}"
        );
        let original = std::fs::read_dir(Path::new(MIGRATIONS).join(name))
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with("original."))
            .unwrap_or_else(|| panic!("{name}: no original.*"));
        let text = std::fs::read_to_string(original.path())
            .unwrap()
            .to_lowercase();
        assert!(
            text.contains("repository:") && text.contains("commit") && text.contains("path"),
            "{name}: the original names its repository, path and commit"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Mastodon: nginx (static files from public/, Rails, streaming, error page) and Caddy
// ---------------------------------------------------------------------------------------------

const MASTODON: &str = "mastodon.example.com";
const SORRY: &[u8] = b"<h1>We're sorry, but something went wrong.</h1>";

/// Mastodon's public/ folder: the service worker, a pack, an uploaded file and 500.html.
fn mastodon_public() -> Files {
    Files::new(&[
        ("sw.js", b"self.addEventListener('fetch', () => {});"),
        ("packs/js/application.js", &script(8 * 1024)),
        (
            "system/media_attachments/files/1/original/a.png",
            b"\x89PNG fake",
        ),
        ("500.html", SORRY),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mastodon_nginx_files_rails_streaming_and_error_page() {
    with_timeout(30, async {
        let public = mastodon_public();
        let (web, streaming) = (app_closing("rails").await, app("streaming").await);
        let mut tls = Tls::new();
        tls.site(&[MASTODON]);
        let env = tls
            .acme(Env::loopback())
            .set("MASTODON_DOMAIN", MASTODON)
            .set("MASTODON_PUBLIC", public.path())
            .set("MASTODON_WEB", web.addr)
            .set("MASTODON_STREAMING", streaming.addr);
        let proxy = env.start("mastodon-nginx", true).await;
        tls.loaded(&proxy).await;
        let https = tls.client(&[MASTODON], proxy.https());
        let url = |path: &str| format!("https://{MASTODON}{path}");

        // plain HTTP only redirects
        let resp = get(
            &http_client(&[MASTODON], proxy.addr),
            &format!("http://{MASTODON}/about?x=1"),
        )
        .await;
        assert!(resp.status().is_redirection(), "{}", resp.status());
        let port = proxy.https().port();
        assert_eq!(
            header(&resp, "location"),
            Some(format!("https://{MASTODON}:{port}/about?x=1"))
        );

        // public/ straight from disk, with the cache and HSTS headers of each location
        const HSTS: &str = "max-age=63072000; includeSubDomains";
        let pack = script(8 * 1024);
        let headers = assert_file(&https, &url("/packs/js/application.js"), &pack).await;
        assert_eq!(
            hv(&headers, "cache-control").as_deref(),
            Some("public, max-age=2419200, must-revalidate")
        );
        assert_eq!(
            hv(&headers, "strict-transport-security").as_deref(),
            Some(HSTS)
        );
        assert!(hv(&headers, "x-backend").is_none(), "not from Rails");
        let resp = get(&https, &url("/sw.js")).await;
        assert_eq!(
            header(&resp, "cache-control").as_deref(),
            Some("public, max-age=604800, must-revalidate")
        );
        assert_eq!(
            header(&resp, "strict-transport-security").as_deref(),
            Some(HSTS)
        );
        let png = "/system/media_attachments/files/1/original/a.png";
        let resp = get(&https, &url(png)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "cache-control").as_deref(),
            Some("public, max-age=2419200, immutable")
        );
        // gzip for the listed types
        let resp = https
            .get(url("/packs/js/application.js"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
        assert!(resp.bytes().await.unwrap().len() < pack.len() / 4);

        // a missing static file: 404 with public/500.html (error_page 404 ... /500.html), Rails
        // never asked
        let resp = get(&https, &url("/packs/js/missing.js")).await;
        assert_eq!(resp.status(), 404);
        assert!(header(&resp, "x-backend").is_none());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), SORRY);

        // Rails: Host, X-Real-IP, X-Forwarded-*, WebSocket headers; never a Proxy header
        let resp = https
            .get(url("/api/v1/timelines/home?limit=5"))
            .header("proxy", "http://evil.example:8080")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-backend").as_deref(), Some("rails"));
        let rails = seen(resp).await;
        assert_eq!(rails.uri, "/api/v1/timelines/home?limit=5");
        assert_eq!(rails.header("host").as_deref(), Some(MASTODON));
        assert_eq!(rails.header("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            rails.header("x-forwarded-for").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(rails.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(
            rails.header("proxy"),
            None,
            "httpoxy: no Proxy header upstream"
        );
        // proxy_redirect off: a Location naming the app's own address is passed on as written
        let own = format!("http://{}/auth/sign_in", web.addr);
        let resp = get(&https, &url(&format!("/auth?status=302&location={own}"))).await;
        assert_eq!(header(&resp, "location"), Some(own));
        // the app's own 404 is passed on as it is (no proxy_intercept_errors)
        let resp = get(&https, &url("/@nobody?status=404")).await;
        assert_eq!(
            (resp.status().as_u16(), header(&resp, "x-backend")),
            (404, Some("rails".into()))
        );

        // the streaming server, with HSTS
        let resp = get(&https, &url("/api/v1/streaming/health")).await;
        assert_eq!(header(&resp, "x-backend").as_deref(), Some("streaming"));
        assert_eq!(
            header(&resp, "strict-transport-security").as_deref(),
            Some(HSTS)
        );

        // 80 MB bodies, not one byte more
        let head = declared_body("POST", MASTODON, "/api/v2/media", 80 * MB + 1);
        assert_eq!(tls_raw(proxy.https(), MASTODON, &head).await.status, 413);

        // Rails down: 502 with public/500.html
        drop(web);
        let resp = get(&https, &url("/about")).await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), SORRY);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mastodon_caddy_headers_cache_control_and_handle_errors() {
    with_timeout(30, async {
        let public = mastodon_public();
        let (web, streaming) = (app_closing("rails").await, app("streaming").await);
        let mut tls = Tls::new();
        tls.site(&[MASTODON]);
        let env = tls
            .acme(Env::loopback())
            .set("MASTODON_DOMAIN", MASTODON)
            .set("MASTODON_PUBLIC", public.path())
            .set("MASTODON_WEB", web.addr)
            .set("MASTODON_STREAMING", streaming.addr);
        let proxy = env.start("mastodon-caddy", true).await;
        tls.loaded(&proxy).await;
        let https = tls.client(&[MASTODON], proxy.https());
        let url = |path: &str| format!("https://{MASTODON}{path}");
        const HSTS: &str = "max-age=63072000; includeSubDomains; preload";

        // every response: HSTS with preload, nosniff unless the app chose its own
        for (path, backend, cache) in [
            (
                "/packs/js/app.js",
                "rails",
                Some("public, max-age=2419200, must-revalidate"),
            ),
            (
                "/ocr/lang.traineddata",
                "rails",
                Some("public, max-age=2419200, must-revalidate"),
            ),
            (
                "/sw.js",
                "rails",
                Some("public, max-age=604800, must-revalidate"),
            ),
            (
                "/system/cache/a.png",
                "rails",
                Some("public, max-age=2419200, immutable"),
            ),
            ("/api/v1/streaming?stream=user", "streaming", None),
            ("/api/v1/instance", "rails", None),
        ] {
            let resp = get(&https, &url(path)).await;
            assert_eq!(
                header(&resp, "x-backend").as_deref(),
                Some(backend),
                "{path}"
            );
            assert_eq!(header(&resp, "cache-control").as_deref(), cache, "{path}");
            assert_eq!(
                header(&resp, "strict-transport-security").as_deref(),
                Some(HSTS),
                "{path}"
            );
            assert_eq!(
                header(&resp, "x-content-type-options").as_deref(),
                Some("nosniff"),
                "{path}"
            );
        }
        let resp = get(&https, &url("/system/cache/a.png")).await;
        assert_eq!(
            header(&resp, "content-security-policy").as_deref(),
            Some("default-src 'none'; form-action 'none'")
        );
        let resp = get(&https, &url("/api/v1/instance?xcto=app-choice")).await;
        assert_eq!(
            header(&resp, "x-content-type-options").as_deref(),
            Some("app-choice")
        );

        // header_up: Host, X-Real-IP, no Proxy
        let resp = https
            .get(url("/api/v1/instance"))
            .header("proxy", "http://evil.example:8080")
            .send()
            .await
            .unwrap();
        let rails = seen(resp).await;
        assert_eq!(rails.header("host").as_deref(), Some(MASTODON));
        assert_eq!(rails.header("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(rails.header("proxy"), None);

        // encode: zstd first, gzip next, nothing under 1 KiB
        for (accept, want) in [("zstd, gzip", Some("zstd")), ("gzip", Some("gzip"))] {
            let resp = https
                .get(url("/api/v1/instance?len=4000"))
                .header("accept-encoding", accept)
                .send()
                .await
                .unwrap();
            assert_eq!(
                header(&resp, "content-encoding").as_deref(),
                want,
                "{accept}"
            );
        }
        let resp = https
            .get(url("/api/v1/instance"))
            .header("accept-encoding", "zstd, gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "content-encoding"), None, "under 1 KiB");

        // handle_errors: Rails down, public/500.html
        drop(web);
        let resp = get(&https, &url("/about")).await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), SORRY);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Synapse: nginx (client and federation ports, one regex location) and Caddy (delegation)
// ---------------------------------------------------------------------------------------------

/// A `gatehouse run` with HTTPS listeners only (TestProxy waits for an HTTP one), up to its
/// `count` HTTPS listening lines; killed on drop.
struct HttpsOnly {
    child: std::process::Child,
    https: Vec<SocketAddr>,
}

impl HttpsOnly {
    fn start(name: &str, env: &Env, count: usize) -> HttpsOnly {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(support::BIN);
        cmd.args([
            "run",
            "--config",
            translation(name).to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        for (key, value) in env.pairs() {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let (mut https, mut seen) = (Vec::new(), Vec::new());
        while https.len() < count {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    https.extend(support::parse_listening_line(&line, "https"));
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("{name}: not {count} https listeners:\n{}", seen.join("\n"));
                }
            }
        }
        HttpsOnly { child, https }
    }
}

impl Drop for HttpsOnly {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MATRIX: &str = "matrix.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_nginx_client_and_federation_ports() {
    with_timeout(30, async {
        let synapse = app("synapse").await;
        let mut tls = Tls::new();
        let (cert, key) = tls.site(&[MATRIX]);
        let env = Env::loopback()
            .set("SYNAPSE_FEDERATION_LISTEN", "127.0.0.1:0")
            .set("SYNAPSE_DOMAIN", MATRIX)
            .set("SYNAPSE_TLS_CERT", cert)
            .set("SYNAPSE_TLS_KEY", key)
            .set("SYNAPSE_SERVER", synapse.addr);
        let proxy = HttpsOnly::start("synapse-nginx", &env, 2);
        assert_ne!(proxy.https[0], proxy.https[1]);

        for addr in &proxy.https {
            let port = addr.port();
            let client = tls.client(&[MATRIX], *addr);
            let url = |path: &str| format!("https://{MATRIX}:{port}{path}");
            // /_matrix and /_synapse/client go to Synapse, with the client's address alone in
            // X-Forwarded-For, whatever it sent
            for path in ["/_matrix/client/versions", "/_synapse/client/oidc/callback?code=1"] {
                let resp = client
                    .get(url(path))
                    .header("x-forwarded-for", "10.6.6.6")
                    .send()
                    .await
                    .unwrap();
                let got = seen(resp).await;
                assert_eq!(got.uri, path);
                assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"), "{path}");
                assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
            }
            // anything else, /_synapse/admin included, is not Synapse's
            for path in ["/_synapse/admin/v1/users", "/", "/.well-known/matrix/server"] {
                assert_eq!(fetch(&client, &url(path)).await.0, 404, "{path}");
            }
            // Host as the client sent it (nginx's `$host:$server_port` has no equivalent)
            for (sent, want) in [
                (format!("{MATRIX}:{port}"), format!("{MATRIX}:{port}")),
                (MATRIX.to_string(), MATRIX.to_string()),
            ] {
                let head = format!("GET /_matrix/key/v2/server HTTP/1.1\r\nHost: {sent}\r\nConnection: close\r\n\r\n");
                let resp = tls_raw(*addr, MATRIX, &head).await;
                let got = Echo::parse(&resp.body_text());
                assert_eq!(got.header("host"), Some(want), "Host: {sent}");
            }
            // signed federation paths go on as they came: %24, %3A and %2F (a base64 event id)
            let path = "/_matrix/federation/v1/event/%24Rqnc%2Fgqz2Y6U%2BzWg%3Aexample.org";
            let got = seen(get(&client, &url(path)).await).await;
            assert_eq!(got.uri, path);
        }

        // 50 MB uploads, not a byte more
        let head = declared_body("POST", MATRIX, "/_matrix/media/v3/upload", 50 * MB + 1);
        assert_eq!(tls_raw(proxy.https[0], MATRIX, &head).await.status, 413);
    })
    .await;
}

const MATRIX_NAME: &str = "example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_caddy_well_known_delegation_and_client_api() {
    with_timeout(30, async {
        let synapse = app("synapse").await;
        let mut tls = Tls::new();
        tls.site(&[MATRIX_NAME]);
        tls.site(&[MATRIX]);
        let env = tls
            .acme(Env::loopback())
            .set("MATRIX_SERVER_NAME", MATRIX_NAME)
            .set("SYNAPSE_DOMAIN", MATRIX)
            .set("SYNAPSE_SERVER", synapse.addr);
        let proxy = env.start("synapse-caddy", true).await;
        tls.loaded(&proxy).await;
        let https = tls.client(&[MATRIX_NAME, MATRIX], proxy.https());

        // example.com answers the .well-known documents itself, as JSON any web client may read
        for (path, want) in [
            ("/.well-known/matrix/server", serde_json::json!({"m.server": "matrix.example.com:443"})),
            (
                "/.well-known/matrix/client",
                serde_json::json!({"m.homeserver": {"base_url": "https://matrix.example.com"},
                                   "m.identity_server": {"base_url": "https://identity.example.com"}}),
            ),
        ] {
            let resp = get(&https, &format!("https://{MATRIX_NAME}{path}")).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert!(header(&resp, "x-backend").is_none());
            assert_eq!(header(&resp, "content-type").as_deref(), Some("application/json"));
            assert_eq!(header(&resp, "access-control-allow-origin").as_deref(), Some("*"));
            let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            assert_eq!(body, want, "{path}");
        }
        // and proxies nothing
        assert_eq!(fetch(&https, &format!("https://{MATRIX_NAME}/_matrix/client/versions")).await.0, 404);

        // matrix.example.com: /_matrix/ and /_synapse/client/ to Synapse, nothing else
        for path in ["/_matrix/client/versions", "/_synapse/client/sso_register"] {
            let (status, backend, _) = fetch(&https, &format!("https://{MATRIX}{path}")).await;
            assert_eq!((status, backend.as_deref()), (200, Some("synapse")), "{path}");
        }
        for path in ["/_synapse/admin/v1/users", "/"] {
            assert_eq!(fetch(&https, &format!("https://{MATRIX}{path}")).await.0, 404, "{path}");
        }

        // automatic HTTPS: plain HTTP is redirected
        let resp = get(&http_client(&[MATRIX_NAME], proxy.addr), &format!("http://{MATRIX_NAME}/.well-known/matrix/server")).await;
        assert!(resp.status().is_redirection());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Jellyfin: nginx (security headers, WebSocket) and Traefik (headers middleware, port 9999)
// ---------------------------------------------------------------------------------------------

const JELLYFIN: &str = "jellyfin.example.org";

/// Opens a WebSocket-style upgrade at `path` over `stream` and checks bytes come back through
/// the tunnel (the backend is a [`tunnel_app`]).
async fn assert_tunnel<S>(mut stream: S, host: &str, path: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_ne!(
            stream.read(&mut byte).await.unwrap(),
            0,
            "closed before the answer"
        );
        got.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{path}: {text}");
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut back = [0u8; 23];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping through the tunnel");
}

async fn tls_stream(addr: SocketAddr, sni: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(any_cert_client(rustls::ALL_VERSIONS, &[]))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jellyfin_nginx_security_headers_forwarding_and_websocket() {
    with_timeout(30, async {
        let jellyfin = app("jellyfin").await;
        let mut tls = Tls::new();
        let (cert, key) = tls.site(&[JELLYFIN]);
        let env = Env::loopback()
            .set("JELLYFIN_DOMAIN", JELLYFIN)
            .set("JELLYFIN_TLS_CERT", cert)
            .set("JELLYFIN_TLS_KEY", key)
            .set("JELLYFIN_SERVER", jellyfin.addr);
        let proxy = env.start("jellyfin-nginx", true).await;
        let https = tls.client(&[JELLYFIN], proxy.https());
        let url = |path: &str| format!("https://{JELLYFIN}{path}");
        let security = [
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "SAMEORIGIN"),
            ("cross-origin-opener-policy", "same-origin"),
            ("cross-origin-resource-policy", "same-origin"),
            ("cross-origin-embedder-policy", "require-corp"),
        ];
        let check = |headers: &reqwest::header::HeaderMap, what: &str| {
            for (name, value) in security {
                assert_eq!(
                    hv(headers, name).as_deref(),
                    Some(value),
                    "{name} on {what}"
                );
            }
            assert!(hv(headers, "permissions-policy")
                .unwrap()
                .starts_with("accelerometer=(), "));
            assert!(hv(headers, "content-security-policy")
                .unwrap()
                .contains("object-src 'none'"));
        };

        // the app's answers, and Gatehouse's own (a 20 MB + 1 upload refused)
        let resp = get(&https, &url("/web/index.html")).await;
        check(resp.headers(), "a proxied page");
        let got = seen(resp).await;
        assert_eq!(got.header("host").as_deref(), Some(JELLYFIN));
        assert_eq!(got.header("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(got.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(got.header("x-forwarded-protocol").as_deref(), Some("https"));
        assert_eq!(got.header("x-forwarded-host").as_deref(), Some(JELLYFIN));
        let resp = get(&https, &url("/Items/1?status=404")).await;
        check(resp.headers(), "the app's 404");
        let head = declared_body("POST", JELLYFIN, "/Items/1/Images/Primary", 20 * MB + 1);
        let refused = tls_raw(proxy.https(), JELLYFIN, &head).await;
        assert_eq!(refused.status, 413);
        for (name, value) in security {
            assert_eq!(
                refused.header(name),
                Some(value),
                "{name} on Gatehouse's own 413"
            );
        }

        // plain HTTP is redirected
        let resp = get(
            &http_client(&[JELLYFIN], proxy.addr),
            &format!("http://{JELLYFIN}/web/"),
        )
        .await;
        assert!(resp.status().is_redirection());

        // /socket is a WebSocket
        drop(jellyfin);
        let ws = tunnel_app("jellyfin-ws").await;
        let env = env.set("JELLYFIN_SERVER", ws.addr);
        let proxy = env.start("jellyfin-nginx", true).await;
        assert_tunnel(
            tls_stream(proxy.https(), JELLYFIN).await,
            JELLYFIN,
            "/socket?api_key=k",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jellyfin_traefik_headers_middleware_on_port_9999() {
    with_timeout(30, async {
        let jellyfin = app("jellyfin").await;
        let mut tls = Tls::new();
        tls.site(&[JELLYFIN]);
        let env = tls
            .acme(Env::loopback())
            .set("JELLYFIN_DOMAIN", JELLYFIN)
            .set("JELLYFIN_PARENT_DOMAIN", "example.org")
            .set("JELLYFIN_SERVER", jellyfin.addr);
        let proxy = env.start("jellyfin-traefik", true).await;
        tls.loaded(&proxy).await;
        let https = tls.client(&[JELLYFIN], proxy.https());
        let want = [
            (
                "x-robots-tag",
                "noindex,nofollow,nosnippet,noarchive,notranslate,noimageindex",
            ),
            (
                "strict-transport-security",
                "max-age=315360000; includeSubDomains; preload",
            ),
            ("x-frame-options", "allow-from https://example.org"),
            ("x-content-type-options", "nosniff"),
            ("x-xss-protection", "1"),
        ];
        let resp = get(&https, &format!("https://{JELLYFIN}/web/index.html")).await;
        for (name, value) in want {
            assert_eq!(header(&resp, name).as_deref(), Some(value), "{name}");
        }
        let got = seen(resp).await;
        assert_eq!(
            got.header("host").as_deref(),
            Some(JELLYFIN),
            "passHostHeader"
        );

        // plain HTTP: redirected to the HTTPS port, with HSTS too (forceSTSHeader)
        let resp = get(
            &http_client(&[JELLYFIN], proxy.addr),
            &format!("http://{JELLYFIN}/web/"),
        )
        .await;
        assert!(resp.status().is_redirection());
        let https_port = proxy.https().port();
        assert_eq!(
            header(&resp, "location"),
            Some(format!("https://{JELLYFIN}:{https_port}/web/"))
        );
        assert_eq!(
            header(&resp, "strict-transport-security").as_deref(),
            Some("max-age=315360000; includeSubDomains; preload")
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Gitea: nginx (static resources, sub-path, registry, CDN) and Traefik (sub-path)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_nginx_static_resources_sub_path_registry_and_cdn() {
    with_timeout(30, async {
        let css = script(3000);
        let public = Files::new(&[("css/index.css", &css), ("img/logo.svg", b"<svg/>")]);
        let gitea = app("gitea").await;
        let env = Env::loopback()
            .set("GITEA_PUBLIC", public.path())
            .set("GITEA_SERVER", gitea.addr);
        let proxy = env.start("gitea-nginx", false).await;
        let (git, common, cdn) = ("git.example.com", "common.example.com", "cdn.example.com");
        let http = http_client(&[git, common, cdn], proxy.addr);

        // git.example.com: /_/static/assets/ from public/, the rest to Gitea
        let headers = assert_file(
            &http,
            &format!("http://{git}/_/static/assets/css/index.css"),
            &css,
        )
        .await;
        assert!(hv(&headers, "x-backend").is_none());
        assert!(hv(&headers, "content-type")
            .unwrap()
            .starts_with("text/css"));
        let got = seen(get(&http, &format!("http://{git}/user/repo/src/branch/main")).await).await;
        assert_eq!(got.uri, "/user/repo/src/branch/main");
        assert_eq!(got.header("host").as_deref(), Some(git));
        assert_eq!(got.header("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
        // "/a%2Fb should be passed as /a%2Fb"
        let got = seen(
            get(
                &http,
                &format!("http://{git}/api/v1/repos/o/r/contents/a%2Fb"),
            )
            .await,
        )
        .await;
        assert_eq!(got.uri, "/api/v1/repos/o/r/contents/a%2Fb");
        // 512 MB pushes and uploads, not a byte more
        let resp = raw_request(
            proxy.addr,
            &declared_body("POST", git, "/o/r.git/git-receive-pack", 512 * MB + 1),
        )
        .await;
        assert_eq!(resp.status, 413);

        // common.example.com/gitea/foo is Gitea's /foo, undecoded; /v2 in the root is Gitea's too
        for (path, want) in [
            ("/gitea/user/repo?tab=issues", "/user/repo?tab=issues"),
            (
                "/gitea/api/v1/repos/o/r/contents/a%2Fb",
                "/api/v1/repos/o/r/contents/a%2Fb",
            ),
            ("/gitea/", "/"),
            (
                "/gitea/o/r/src/branch/main/my%20notes.md",
                "/o/r/src/branch/main/my%20notes.md",
            ),
            (
                "/v2/o/image/manifests/latest",
                "/v2/o/image/manifests/latest",
            ),
        ] {
            let got = seen(get(&http, &format!("http://{common}{path}")).await).await;
            assert_eq!(got.uri, want, "{path}");
        }
        assert_eq!(
            fetch(&http, &format!("http://{common}/")).await.0,
            404,
            "the rest is another site's"
        );

        // cdn.example.com: /gitea/ from public/, anything else 404
        assert_file(&http, &format!("http://{cdn}/gitea/css/index.css"), &css).await;
        let (status, backend, _) = fetch(&http, &format!("http://{cdn}/user/repo")).await;
        assert_eq!((status, backend), (404, None));
        assert_eq!(
            fetch(&http, &format!("http://{cdn}/gitea/css/missing.css"))
                .await
                .0,
            404
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_traefik_strip_prefix_with_forwarded_prefix() {
    with_timeout(30, async {
        let gitea = app("gitea").await;
        let env = Env::loopback().set("GITEA_SERVER", gitea.addr);
        let proxy = env.start("gitea-traefik", false).await;
        let host = "example.com";
        let http = http_client(&[host], proxy.addr);
        let url = |path: &str| format!("http://{host}{path}");

        for (path, want) in [
            ("/gitea/explore/repos?page=2", "/explore/repos?page=2"),
            (
                "/gitea/api/v1/repos/o/r/contents/docs%2Freadme.md",
                "/api/v1/repos/o/r/contents/docs%2Freadme.md",
            ),
            ("/gitea", "/"),
            (
                "/gitea/o/r/raw/branch/main/my%20notes.md",
                "/o/r/raw/branch/main/my%20notes.md",
            ),
        ] {
            let got = seen(get(&http, &url(path)).await).await;
            assert_eq!(got.uri, want, "{path}");
            assert_eq!(got.header("host").as_deref(), Some(host));
            assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));
            // Traefik's stripprefix tells the app what it took off
            assert_eq!(
                got.header("x-forwarded-prefix").as_deref(),
                Some("/gitea"),
                "{path}"
            );
        }
        let got = seen(get(&http, &url("/v2/")).await).await;
        assert_eq!(
            (got.uri.as_str(), got.header("x-forwarded-prefix")),
            ("/v2/", None)
        );
        assert_eq!(fetch(&http, &url("/giteafoo")).await.0, 404);
        assert_eq!(fetch(&http, &url("/")).await.0, 404);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Discourse: Unix-socket app servers, public/ files, X-Accel-Redirect, the avatar service
// ---------------------------------------------------------------------------------------------

const DISCOURSE: &str = "forum.example.com";

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discourse_nginx_unix_sockets_files_and_x_accel_redirect() {
    with_timeout(30, async {
        let asset = script(6000);
        let pdf = b"%PDF-1.4 an upload only the app may hand out".to_vec();
        let backup = b"a backup, sent by the app to admins only".to_vec();
        let public = Files::new(&[
            ("assets/application-5f3a.js", &asset),
            ("assets/application-5f3a.js.gz", &gzip(&asset)),
            ("assets/fonts/Roboto.woff2", b"wOF2 font"),
            ("plugins/chat/chat.js", b"plugin();"),
            ("uploads/default/original/1X/cat.png", b"\x89PNG cat"),
            (
                "uploads/default/optimized/1X/cat_2_100x100.webp",
                b"RIFF small cat",
            ),
            ("uploads/default/original/1X/doc.pdf", &pdf),
            ("backups/default/forum-2024.tar.gz", &backup),
        ]);
        let sockets = tempfile::tempdir().unwrap();
        let _apps: Vec<UnixApp> = (0..4)
            .map(|i| {
                UnixApp::start(
                    &sockets.path().join(format!("thin.{i}.sock")),
                    &format!("thin.{i}"),
                )
            })
            .collect();
        let avatars = app("avatars").await;
        let env = Env::loopback()
            .set("DISCOURSE_HOSTNAME", DISCOURSE)
            .set("DISCOURSE_PUBLIC", public.path())
            .set("DISCOURSE_SOCKETS", sockets.path().display())
            .set("DISCOURSE_AVATARS", format!("http://{}", avatars.addr));
        let proxy = env.start("discourse-nginx", false).await;
        let http = http_client(&[DISCOURSE], proxy.addr);
        let url = |path: &str| format!("http://{DISCOURSE}{path}");

        // the four app servers on their Unix sockets all take requests
        let mut servers = std::collections::BTreeSet::new();
        for _ in 0..12 {
            servers.insert(fetch(&http, &url("/latest.json")).await.1.unwrap());
        }
        assert_eq!(servers.len(), 4, "{servers:?}");
        let got = seen(get(&http, &url("/t/welcome/1")).await).await;
        assert_eq!(got.header("host").as_deref(), Some(DISCOURSE));
        assert_eq!(got.header("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("http"));

        // public/ from disk, cached a year, without ETags: Last-Modified revalidates
        const YEAR: &str = "max-age=31536000, public, immutable";
        for (path, body) in [
            ("/assets/application-5f3a.js", &asset[..]),
            ("/plugins/chat/chat.js", b"plugin();"),
            ("/uploads/default/original/1X/cat.png", b"\x89PNG cat"),
            (
                "/uploads/default/optimized/1X/cat_2_100x100.webp",
                b"RIFF small cat",
            ),
        ] {
            let headers = assert_file(&http, &url(path), body).await;
            assert_eq!(
                hv(&headers, "cache-control").as_deref(),
                Some(YEAR),
                "{path}"
            );
            assert!(hv(&headers, "etag").is_none(), "etag off: {path}");
            assert!(
                hv(&headers, "x-backend").is_none(),
                "{path} not from the app"
            );
        }
        let resp = get(&http, &url("/assets/fonts/Roboto.woff2")).await;
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some("*")
        );
        // gzip_static: the .gz sibling for a client that takes gzip
        let resp = http
            .get(url("/assets/application-5f3a.js"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
        assert!(header(&resp, "vary")
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding"));
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            gzip(&asset).as_slice()
        );

        // uploads the app hands out: it is told how (X-Sendfile-Type, X-Accel-Mapping) ...
        let doc = "/uploads/default/original/1X/doc.pdf";
        let got = seen(get(&http, &url(doc)).await).await;
        assert_eq!(
            got.header("x-sendfile-type").as_deref(),
            Some("X-Accel-Redirect")
        );
        assert_eq!(
            got.header("x-accel-mapping"),
            Some(format!("{}/=/downloads/", public.path()))
        );
        // ... and answers X-Accel-Redirect: the file comes from public/ by the internal route
        let resp = get(&http, &url(&format!("{doc}?accel=/downloads{doc}"))).await;
        assert_eq!(resp.status(), 200);
        assert!(header(&resp, "x-accel-redirect").is_none());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), pdf.as_slice());
        let archive = "/backups/default/forum-2024.tar.gz";
        let resp = get(
            &http,
            &url(&format!(
                "/admin/backups/forum-2024.tar.gz?accel=/downloads{archive}"
            )),
        )
        .await;
        assert_eq!(resp.bytes().await.unwrap().as_ref(), backup.as_slice());
        // neither the internal route nor the backups are reachable by a client
        for path in [
            format!("/downloads{doc}"),
            format!("/downloads{archive}"),
            archive.to_string(),
        ] {
            let (status, backend, _) = fetch(&http, &url(&path)).await;
            assert_eq!((status, backend), (404, None), "{path}");
        }

        // favicon.ico without the app
        let (status, backend, _) = fetch(&http, &url("/favicon.ico")).await;
        assert_eq!((status, backend), (204, None));

        // cacheable avatars: no Set-Cookie passed back
        let resp = get(&http, &url("/user_avatar/forum/alice/120/1_2.png?cookie=1")).await;
        assert!(header(&resp, "x-backend").unwrap().starts_with("thin."));
        assert!(header(&resp, "set-cookie").is_none());
        let resp = get(&http, &url("/latest.json?cookie=1")).await;
        assert!(
            header(&resp, "set-cookie").is_some(),
            "elsewhere the session cookie is the app's business"
        );

        // the letter-avatar service: the prefix replaced by its /, its own name as Host, none of
        // the client's credentials, no cookie back
        let resp = http
            .get(url(
                "/letter_avatar_proxy/v4/letter/a/f0a364/120.png?cookie=1",
            ))
            .header("cookie", "_forum_session=secret")
            .header("authorization", "Bearer secret")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-backend").as_deref(), Some("avatars"));
        assert!(header(&resp, "set-cookie").is_none());
        let got = seen(resp).await;
        assert_eq!(got.uri, "/v4/letter/a/f0a364/120.png?cookie=1");
        assert_eq!(got.header("host").as_deref(), Some("avatars.discourse.org"));
        assert_eq!(
            (got.header("cookie"), got.header("authorization")),
            (None, None)
        );

        // gzip for JSON of 1000 bytes or more (text/plain is not on the list)
        for (query, want) in [
            ("ctype=application/json&len=3000", Some("gzip")),
            ("ctype=application/json", None),
            ("len=3000", None),
        ] {
            let resp = http
                .get(url(&format!("/latest.json?{query}")))
                .header("accept-encoding", "gzip")
                .send()
                .await
                .unwrap();
            assert_eq!(
                header(&resp, "content-encoding").as_deref(),
                want,
                "{query}"
            );
        }
        // 10 MB uploads, not a byte more
        let resp = raw_request(
            proxy.addr,
            &declared_body("POST", DISCOURSE, "/uploads.json", 10 * MB + 1),
        )
        .await;
        assert_eq!(resp.status, 413);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Seafile: Seahub, the file server under /seafhttp, /media from disk, per-route timeouts
// ---------------------------------------------------------------------------------------------

const SEAFILE: &str = "seafile.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seafile_nginx_seahub_fileserver_media_and_timeouts() {
    with_timeout(30, async {
        let css = script(2500);
        let seahub_dir = Files::new(&[("media/css/seahub.min.css", &css)]);
        let (seahub, fileserver) = (app("seahub").await, support::counting_backend().await);
        let env = Env::loopback()
            .set("SEAFILE_DOMAIN", SEAFILE)
            .set("SEAHUB_DIR", seahub_dir.path())
            .set("SEAHUB_SERVER", seahub.addr)
            .set("SEAFILE_FILESERVER", fileserver.addr);
        let proxy = env.start("seafile-nginx", false).await;
        let http = http_client(&[SEAFILE], proxy.addr);
        let url = |path: &str| format!("http://{SEAFILE}{path}");

        // Seahub: X-Forwarded-Host is the server's name, whatever Host the client used
        let resp = http
            .get(url("/library/1/"))
            .header("x-forwarded-host", "evil.example")
            .send()
            .await
            .unwrap();
        let got = seen(resp).await;
        assert_eq!(got.header("x-forwarded-host").as_deref(), Some(SEAFILE));
        assert_eq!(got.header("x-real-ip").as_deref(), Some("127.0.0.1"));
        assert_eq!(got.header("host").as_deref(), Some(SEAFILE));

        // the file server, without its prefix, takes any size (3 MiB, over the 1 MB default)
        let upload = http
            .post(url("/seafhttp/upload-api/4a1b?ret-json=1"))
            .body(vec![b'x'; 3 << 20])
            .send()
            .await
            .unwrap();
        assert_eq!(upload.status(), 200);
        assert_eq!(
            upload.text().await.unwrap(),
            (3 << 20).to_string(),
            "every byte reached it"
        );
        let resp = http
            .post(url("/api2/repos/"))
            .body(vec![b'x'; 3 << 20])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "no limit on Seahub either");
        drop(fileserver);
        let echo = app("fileserver").await;
        let proxy = env
            .set("SEAFILE_FILESERVER", echo.addr)
            .start("seafile-nginx", false)
            .await;
        let http = http_client(&[SEAFILE], proxy.addr);
        for (path, want) in [
            ("/seafhttp/files/a1b2/report.pdf", "/files/a1b2/report.pdf"),
            (
                "/seafhttp/files/a1b2/Q3%20report.pdf",
                "/files/a1b2/Q3%20report.pdf",
            ),
        ] {
            assert_eq!(seen(get(&http, &url(path)).await).await.uri, want, "{path}");
        }

        // /media from disk
        assert_file(&http, &url("/media/css/seahub.min.css"), &css).await;

        // the timeouts, as Gatehouse read them: 20 minutes for Seahub, 10 hours for the file server
        let config = reqwest::get(format!("http://{}/config", proxy.admin_addr().await))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for key in ["1200s", "36000s"] {
            assert!(config.contains(key), "{key} in:\n{config}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Mattermost: the WebSocket regex location, the request headers, 50 MB, 600 s
// ---------------------------------------------------------------------------------------------

const MATTERMOST: &str = "mattermost.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mattermost_nginx_websocket_regex_and_headers() {
    with_timeout(30, async {
        let backend = tunnel_app("mattermost").await;
        let env = Env::loopback()
            .set("MATTERMOST_DOMAIN", MATTERMOST)
            .set("MATTERMOST_SERVER", backend.addr);
        let proxy = env.start("mattermost-nginx", false).await;

        // the WebSocket endpoints, the plugins' included (the regex is not anchored at the start)
        for path in [
            "/api/v4/websocket",
            "/api/v4/users/websocket",
            "/plugins/com.example.calls/api/v1/websocket",
        ] {
            assert_tunnel(
                TcpStream::connect(proxy.addr).await.unwrap(),
                MATTERMOST,
                path,
            )
            .await;
        }
        // what Mattermost receives
        let head = format!(
            "GET /api/v4/users/me HTTP/1.1\r\nHost: {MATTERMOST}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_request(proxy.addr, &head).await;
        let received = resp.body_text().to_ascii_lowercase();
        for line in [
            "host: mattermost.example.com\r\n",
            "x-real-ip: 127.0.0.1\r\n",
            "x-forwarded-for: 127.0.0.1\r\n",
            "x-forwarded-proto: http\r\n",
            "x-frame-options: sameorigin\r\n",
        ] {
            assert!(received.contains(line), "{line:?} in:\n{received}");
        }
        // 50 MB bodies
        let resp = raw_request(
            proxy.addr,
            &declared_body("POST", MATTERMOST, "/api/v4/files", 50 * MB + 1),
        )
        .await;
        assert_eq!(resp.status, 413);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Hoppscotch: two single-page apps, the backend under /backend (and its mock host), sub-paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hoppscotch_caddy_spa_fallbacks_sub_paths_and_mock_rewrite() {
    with_timeout(30, async {
        let web_index = b"<!doctype html><title>Hoppscotch</title>".to_vec();
        let admin_index = b"<!doctype html><title>Hoppscotch Admin</title>".to_vec();
        let bundle = script(5000);
        let web = Files::new(&[
            ("index.html", &web_index),
            ("assets/index-3f2a.js", &bundle),
        ]);
        let admin = Files::new(&[
            ("index.html", &admin_index),
            ("assets/admin-9c1d.js", b"admin();"),
        ]);
        let (backend, desktop) = (app("backend").await, app("desktop").await);
        let env = Env::loopback()
            .set("HOPP_WEB_SITE", web.path())
            .set("HOPP_ADMIN_SITE", admin.path())
            .set("HOPP_BACKEND", backend.addr)
            .set("HOPP_DESKTOP_SERVER", desktop.addr);
        let proxy = env.start("hoppscotch-caddy", false).await;
        let (host, mock) = (
            "hoppscotch.example.com",
            "team1.mock.hoppscotch.example.com",
        );
        let http = http_client(&[host, mock], proxy.addr);
        let url = |path: &str| format!("http://{host}{path}");

        // the app: its files, and index.html for any path that is not one (a reload deep in it)
        assert_file(&http, &url("/assets/index-3f2a.js"), &bundle).await;
        for path in ["/", "/graphql", "/settings/profile?tab=2"] {
            let resp = get(&http, &url(path)).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert!(
                header(&resp, "content-type")
                    .unwrap()
                    .starts_with("text/html"),
                "{path}"
            );
            assert_eq!(
                resp.bytes().await.unwrap().as_ref(),
                web_index.as_slice(),
                "{path}"
            );
        }
        // the admin app under /admin, with its own fallback
        let resp = get(&http, &url("/admin/assets/admin-9c1d.js")).await;
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b"admin();");
        // (/admin is the folder without its slash: redirected to /admin/, as Caddy's file_server does)
        let resp = get(&http, &url("/admin?tab=1")).await;
        assert_eq!(resp.status(), 301);
        assert_eq!(header(&resp, "location").as_deref(), Some("/admin/?tab=1"));
        for path in ["/admin/", "/admin/users/42"] {
            let resp = get(&http, &url(path)).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(
                resp.bytes().await.unwrap().as_ref(),
                admin_index.as_slice(),
                "{path}"
            );
        }

        // the backend and the desktop app server without their prefixes
        for (path, backend, want) in [
            ("/backend/graphql", "backend", "/graphql"),
            (
                "/backend/v1/auth/providers?x=1",
                "backend",
                "/v1/auth/providers?x=1",
            ),
            (
                "/desktop-app-server/api/v1/bundle",
                "desktop",
                "/api/v1/bundle",
            ),
        ] {
            let resp = get(&http, &url(path)).await;
            assert_eq!(
                header(&resp, "x-backend").as_deref(),
                Some(backend),
                "{path}"
            );
            assert_eq!(seen(resp).await.uri, want, "{path}");
        }
        // a mock host: the backend's mock server paths
        let got = seen(get(&http, &format!("http://{mock}/backend/users/1")).await).await;
        assert_eq!(got.uri, "/mock/users/1");
        assert_eq!(got.header("host").as_deref(), Some(mock));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Plane: one address in front of six services, trailing-slash redirects, trusted proxies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plane_caddy_path_routing_redirects_and_client_address() {
    with_timeout(30, async {
        let mut backends = HashMap::new();
        let mut env = Env::loopback()
            .set("FILE_SIZE_LIMIT", "5MB")
            .set("BUCKET_NAME", "uploads");
        for (var, name) in [
            ("PLANE_SPACE", "space"),
            ("PLANE_ADMIN", "admin"),
            ("PLANE_LIVE", "live"),
            ("PLANE_API", "api"),
            ("PLANE_MINIO", "minio"),
            ("PLANE_WEB", "web"),
        ] {
            let backend = app(name).await;
            env = env.set(var, backend.addr);
            backends.insert(name, backend);
        }
        let proxy = env.start("plane-caddy", false).await;
        let http = support::client();

        let routes: BTreeMap<&str, &str> = [
            ("/spaces/issues/1", "space"),
            ("/god-mode/general/", "admin"),
            ("/live/collaboration", "live"),
            ("/api/v1/workspaces/", "api"),
            ("/auth/sign-in/", "api"),
            ("/static/logo.png", "api"),
            ("/uploads/ws-1/attachment.png", "minio"),
            ("/uploads", "minio"),
            ("/acme/projects/", "web"),
            ("/", "web"),
        ]
        .into_iter()
        .collect();
        for (path, want) in routes {
            let resp = get(&http, &proxy.url(path)).await;
            assert_eq!(header(&resp, "x-backend").as_deref(), Some(want), "{path}");
            assert_eq!(seen(resp).await.uri, path, "{path} passed on whole");
        }
        for path in ["/spaces", "/god-mode"] {
            let resp = get(&http, &proxy.url(path)).await;
            assert_eq!(resp.status(), 301, "{path}");
            assert_eq!(header(&resp, "location"), Some(format!("{path}/")));
        }

        // FILE_SIZE_LIMIT
        let resp = raw_request(
            proxy.addr,
            &declared_body("POST", "plane.example.com", "/api/assets/", 5 * MB + 1),
        )
        .await;
        assert_eq!(resp.status, 413);
        // the client's address from X-Forwarded-For: TRUSTED_PROXIES is everyone by default
        let resp = http
            .get(proxy.url("/api/v1/users/me/"))
            .header("x-forwarded-for", "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(
            seen(resp).await.header("x-real-ip").as_deref(),
            Some("203.0.113.7")
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// FastAPI full-stack template: three hosts over ACME HTTPS, redirect, the backend's health check
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_template_traefik_hosts_https_and_health() {
    with_timeout(30, async {
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = healthy.clone();
        let backend = serve("backend", move |req: Request<Incoming>| {
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if req.uri().path() == "/api/v1/utils/health-check/" && !ok {
                    return support::text_response(503, "down");
                }
                app_answer("backend".into(), req).await
            }
        })
        .await;
        let (frontend, adminer) = (app("frontend").await, app("adminer").await);
        let domain = "example.com";
        let (api, dashboard, db) = (
            "api.example.com",
            "dashboard.example.com",
            "adminer.example.com",
        );
        let mut tls = Tls::new();
        for host in [api, dashboard, db] {
            tls.site(&[host]);
        }
        let env = tls
            .acme(Env::loopback())
            .set("DOMAIN", domain)
            .set("FASTAPI_BACKEND", backend.addr)
            .set("FASTAPI_FRONTEND", frontend.addr)
            .set("FASTAPI_ADMINER", adminer.addr)
            .set("GATEHOUSE_HEALTH_INTERVAL", "100ms")
            .set("GATEHOUSE_HEALTH_TIMEOUT", "100ms");
        let proxy = env.start("fastapi-template-traefik", true).await;
        tls.loaded(&proxy).await;
        let https = tls.client(&[api, dashboard, db], proxy.https());
        let http = http_client(&[api, dashboard, db], proxy.addr);

        for (host, want) in [(api, "backend"), (dashboard, "frontend"), (db, "adminer")] {
            let (status, backend, _) =
                fetch(&https, &format!("https://{host}/items/?skip=0")).await;
            assert_eq!((status, backend.as_deref()), (200, Some(want)), "{host}");
            // https-redirect, permanent
            let resp = get(&http, &format!("http://{host}/items/?skip=0")).await;
            assert!(
                matches!(resp.status().as_u16(), 301 | 308),
                "{host}: {}",
                resp.status()
            );
            let port = proxy.https().port();
            assert_eq!(
                header(&resp, "location"),
                Some(format!("https://{host}:{port}/items/?skip=0"))
            );
        }
        // the access log, one line per request on stdout
        support::eventually(Duration::from_secs(5), "access log lines", || {
            proxy
                .stdout_lines()
                .iter()
                .any(|l| l.contains("\"host\":\"api.example.com\""))
        })
        .await;

        // an unhealthy backend gets no requests
        healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        support::eventually_async(
            Duration::from_secs(5),
            "503 once the check fails",
            || async { fetch(&https, &format!("https://{api}/items/")).await.0 == 503 },
        )
        .await;
        assert_eq!(
            fetch(&https, &format!("https://{dashboard}/")).await.0,
            200,
            "the others go on"
        );
    })
    .await;
}
