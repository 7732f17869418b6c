//! The deployment examples in `config/examples/`, run as shipped: `gatehouse check` on each, and
//! one end-to-end test per example on the example file itself (never a copy), its `${VAR}`s
//! pointing the listeners at 127.0.0.1:0, the upstreams at stand-in backends on loopback, DNS at
//! a test server, and the ACME CA at an address nothing listens on: the certificate is already in
//! the state dir, as after a first issuance, so the CA is never asked. Each test asserts what its
//! example's comments promise; change a route, a limit or a path in an example and its test fails.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use rustls::pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::dns::{listeners_on_one_port, TestDns};
use support::{
    any_cert_client, eventually_async, header, raw_request, raw_request_on, run_gatehouse,
    serve_on, text_response, with_timeout, Backend, Resp, TestProxy,
};
use tokio::net::{TcpListener, TcpStream};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples");
const NAMES: [&str; 6] = [
    "tessera-selfhosted",
    "tessera-k8s",
    "dits",
    "deepersensor",
    "oyl",
    "cluster",
];

fn example(name: &str) -> PathBuf {
    Path::new(EXAMPLES).join(name).join("gatehouse.toml")
}

/// Owned `(NAME, value)` pairs for an example's `${NAME}`s.
#[derive(Default)]
struct Env(Vec<(&'static str, String)>);

impl Env {
    /// Every listener on 127.0.0.1:0 (the examples default to 0.0.0.0:80, :443, :9900).
    fn loopback() -> Env {
        let mut env = Env::default();
        for name in ["GATEHOUSE_HTTP", "GATEHOUSE_HTTPS", "GATEHOUSE_ADMIN"] {
            env = env.set(name, "127.0.0.1:0");
        }
        env
    }

    fn set(mut self, name: &'static str, value: impl ToString) -> Env {
        self.0.push((name, value.to_string()));
        self
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    async fn start(&self, name: &str, https: bool) -> TestProxy {
        TestProxy::start_at_with_env(&example(name), &self.pairs(), https).await
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates: an ACME state dir with the certificate in place, and plain certificate files
// ---------------------------------------------------------------------------------------------

/// Where the ACME examples' CA is pointed in tests: nothing listens there, and it is never asked
/// while the stored certificate is valid.
const ACME_DIRECTORY: &str = "https://127.0.0.1:9/directory";
/// That CA's folder in the state dir (`certs/<directory, as a file name>/<first host>/`, see
/// src/acme/store.rs).
const ACME_CERTS: &str = "certs/127.0.0.1-9-directory";

/// A self-signed certificate for `host`, in a temp dir: as an ACME state dir holding it, and as
/// plain `cert.pem` / `key.pem` files.
struct Cert {
    dir: tempfile::TempDir,
    pem: String,
    der: Vec<u8>,
    files: (PathBuf, PathBuf),
}

impl Cert {
    fn new(host: &str) -> Cert {
        let dir = tempfile::tempdir().expect("cert dir");
        let made = rcgen::generate_simple_self_signed(vec![host.to_string()]).expect("cert");
        let folder = dir.path().join(ACME_CERTS).join(host);
        std::fs::create_dir_all(&folder).expect("certs folder");
        let files = (folder.join("cert.pem"), folder.join("key.pem"));
        std::fs::write(&files.0, made.cert.pem()).expect("write cert");
        std::fs::write(&files.1, made.key_pair.serialize_pem()).expect("write key");
        Cert {
            pem: made.cert.pem(),
            der: made.cert.der().to_vec(),
            dir,
            files,
        }
    }

    /// `env` with the ACME state dir holding this certificate and the unreachable CA.
    fn acme(&self, env: Env) -> Env {
        env.set("GATEHOUSE_STATE_DIR", self.dir.path().display())
            .set("ACME_DIRECTORY", ACME_DIRECTORY)
    }

    /// An HTTPS client that trusts only this certificate and reaches `host` at the proxy.
    fn client(&self, host: &str, proxy: &TestProxy) -> reqwest::Client {
        self.client_builder(host, proxy).build().unwrap()
    }

    fn client_builder(&self, host: &str, proxy: &TestProxy) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .tls_info(true)
            .resolve(host, proxy.https())
    }

    /// The certificate `resp` came with is this one.
    fn assert_served(&self, resp: &reqwest::Response) {
        let info = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
        assert_eq!(info.peer_certificate(), Some(self.der.as_slice()));
    }
}

/// A TLS connection offering only `versions`, accepting any certificate, for raw requests.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(any_cert_client(versions, &[]))
        .connect(name, tcp)
        .await
}

/// `head` (a request without its body) over HTTPS as `host`; the proxy must answer without it.
async fn https_head_only(proxy: &TestProxy, host: &str, head: &str) -> support::RawResponse {
    let stream = tls_connect(proxy.https(), host, rustls::ALL_VERSIONS)
        .await
        .unwrap();
    raw_request_on(stream, head).await
}

// ---------------------------------------------------------------------------------------------
// Stand-in backends and what is asserted of every example
// ---------------------------------------------------------------------------------------------

/// A stand-in app server: `health` answers 200 while `up` holds and 503 after; any other request
/// has its body read to the end and gets 200 with `x-backend: NAME`, `x-body-bytes: N` and the
/// `X-Forwarded-For` it got as `x-seen-xff`; with `?json=N` the answer is N bytes of JSON.
struct App {
    up: Arc<AtomicBool>,
    backend: Backend,
}

impl App {
    async fn start(name: &str, health: &'static str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        App::on(listener, name, health)
    }

    fn on(listener: TcpListener, name: &str, health: &'static str) -> App {
        let up = Arc::new(AtomicBool::new(true));
        let (flag, label) = (up.clone(), name.to_string());
        let backend = serve_on(listener, name, move |req| {
            let (up, name) = (flag.load(Ordering::SeqCst), label.clone());
            async move { app_answer(req, health, up, name).await }
        });
        App { up, backend }
    }

    fn addr(&self) -> String {
        self.backend.addr.to_string()
    }
}

async fn app_answer(req: Request<Incoming>, health: &str, up: bool, name: String) -> Resp {
    let mut resp = if req.uri().path() == health {
        text_response(if up { 200 } else { 503 }, "health\n")
    } else {
        let json = req.uri().query().and_then(|q| q.strip_prefix("json="));
        let json: Option<usize> = json.map(|n| n.parse().unwrap());
        let xff = req.headers().get("x-forwarded-for").cloned();
        let what = format!("{} {}\n", req.method(), req.uri());
        let mut body = req.into_body();
        let mut bytes = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => bytes += frame.data_ref().map_or(0, |d| d.len()),
                Err(e) => return text_response(500, format!("body error after {bytes}: {e}")),
            }
        }
        let mut resp = match json {
            Some(n) => {
                let mut resp = Response::new(Full::new(Bytes::from(json_of_len(n))));
                resp.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                resp
            }
            None => Response::new(Full::new(Bytes::from(what))),
        };
        let headers = resp.headers_mut();
        headers.insert("x-body-bytes", bytes.to_string().parse().unwrap());
        if let Some(xff) = xff {
            headers.insert("x-seen-xff", xff);
        }
        resp
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp
}

/// `len` bytes of a JSON array of model records, as an API's list endpoint answers.
fn json_of_len(len: usize) -> String {
    let mut out = String::from("[");
    for i in 0.. {
        let item = format!("{{\"id\":{i},\"name\":\"model-{i}\",\"ready\":true}},");
        if out.len() + item.len() + 1 > len {
            break;
        }
        out.push_str(&item);
    }
    if out.ends_with(',') {
        out.pop();
    }
    out.push_str(&" ".repeat(len - out.len() - 1));
    out.push(']');
    out
}

/// The stand-in that answered a 200 `GET url`.
async fn backend_of(http: &reqwest::Client, url: &str) -> String {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    header(&resp, "x-backend").unwrap_or_else(|| panic!("no x-backend on GET {url}"))
}

/// How many of `n` GETs of `url` each stand-in answered.
async fn tally(
    http: &reqwest::Client,
    url: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        *counts.entry(backend_of(http, url).await).or_insert(0) += 1;
    }
    counts
}

/// Plain HTTP to a TLS site: 308 to the same host and URI on the HTTPS listener.
async fn assert_redirects_to_https(proxy: &TestProxy, host: &str) {
    let resp = raw_request(
        proxy.addr,
        &format!("GET /a/page?x=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 308, "plain HTTP is redirected");
    let want = format!("https://{host}:{}/a/page?x=1", proxy.https().port());
    assert_eq!(
        resp.header("location"),
        Some(want.as_str()),
        "{}",
        proxy.logs().join("\n")
    );
}

/// Requests made by `make`, eight at a time, until one gets 429: how many got a 2xx before that,
/// and the 429's `Retry-After`. Asserts the count is `limit`, give or take what the budget
/// refilled (one request per `refill`) while they were sent.
async fn assert_limit<F>(limit: usize, refill: Duration, make: F) -> String
where
    F: Fn() -> reqwest::RequestBuilder,
{
    let start = Instant::now();
    let passed = AtomicUsize::new(0);
    let refused = Mutex::new(None);
    let worker = || async {
        while refused.lock().unwrap().is_none() {
            let resp = make().send().await.unwrap();
            match resp.status().as_u16() {
                429 => *refused.lock().unwrap() = header(&resp, "retry-after"),
                200..=299 => {
                    let n = passed.fetch_add(1, Ordering::SeqCst);
                    assert!(n < limit * 2 + 100, "no 429 after {n} requests");
                }
                other => panic!("status {other} while counting to the rate limit"),
            }
        }
    };
    futures_util::future::join_all((0..8).map(|_| worker())).await;
    let (passed, took) = (passed.into_inner(), start.elapsed());
    let refilled = (took.as_secs_f64() / refill.as_secs_f64()).ceil() as usize;
    assert!(
        (limit..=limit + refilled).contains(&passed),
        "{passed} requests passed before the first 429; the limit is {limit} (+{refilled} refilled in {took:?})"
    );
    refused.into_inner().unwrap().expect("429 has Retry-After")
}

async fn get_text(url: &str) -> (u16, String) {
    let resp = support::client().get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// `/metrics` of the admin listener: Prometheus text with the request counter for `site`.
async fn assert_metrics(proxy: &TestProxy, site: &str) -> String {
    let (status, text) = get_text(&format!("http://{}/metrics", proxy.admin_addr().await)).await;
    assert_eq!(status, 200, "/metrics");
    assert!(
        text.contains("# TYPE gatehouse_requests_total counter"),
        "{text}"
    );
    let label = format!("site=\"{site}\"");
    let counted = text
        .lines()
        .any(|l| l.starts_with("gatehouse_requests_total{") && l.contains(&label));
    assert!(
        counted,
        "no gatehouse_requests_total with {label} in:\n{text}"
    );
    text
}

/// `/config` of the admin listener: the effective config, as Gatehouse reads the example.
async fn effective_config(proxy: &TestProxy) -> String {
    let (status, text) = get_text(&format!("http://{}/config", proxy.admin_addr().await)).await;
    assert_eq!(status, 200, "/config");
    text
}

/// A body of `len` bytes sent in 64 KiB chunks (chunked encoding: no Content-Length).
fn streamed(len: usize) -> reqwest::Body {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = (0..len.div_ceil(chunk.len())).map(move |i| {
        let left = len - i * chunk.len();
        Ok::<_, std::io::Error>(chunk.slice(..left.min(chunk.len())))
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

fn body_bytes(resp: &reqwest::Response) -> usize {
    header(resp, "x-body-bytes").unwrap().parse().unwrap()
}

const MIB: usize = 1 << 20;

/// Replicas of one compose service: stand-ins on 127.0.0.1..=n, one port, and a DNS server that
/// answers `name` with their addresses.
struct Replicas {
    apps: Vec<App>,
    dns: TestDns,
    port: u16,
}

impl Replicas {
    async fn start(name: &str, n: u8, health: &'static str) -> Replicas {
        let (port, listeners) = listeners_on_one_port(n).await;
        let apps = listeners
            .into_iter()
            .map(|l| {
                let ip = l.local_addr().unwrap().ip().to_string();
                App::on(l, &ip, health)
            })
            .collect();
        let dns = TestDns::start().await;
        dns.set(name, &(1..=n).map(ip).collect::<Vec<_>>());
        Replicas { apps, dns, port }
    }
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, i)
}

// ---------------------------------------------------------------------------------------------
// Every example passes `gatehouse check`
// ---------------------------------------------------------------------------------------------

#[test]
fn every_example_passes_gatehouse_check() {
    let mut found: Vec<String> = std::fs::read_dir(EXAMPLES)
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
        "every example has a test here, and every test an example"
    );

    // Only what the defaults cannot provide on a test machine: the TLS Secret's files
    // (tessera-k8s) and the access log's folder (deepersensor: /var/log/gatehouse).
    let cert = Cert::new("tessera.example.com");
    let log = cert.dir.path().join("access.log");
    let (cert_file, key_file) = (cert.files.0.display(), cert.files.1.display());
    let env = Env::default()
        .set("TESSERA_TLS_CERT", &cert_file)
        .set("TESSERA_TLS_KEY", &key_file)
        .set("GATEHOUSE_ACCESS_LOG", log.display())
        .set("GATEHOUSE_CLUSTER_SECRET", CLUSTER_SECRET);
    for name in NAMES {
        let path = example(name);
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
}

/// The compose files run the example next to them in the image `docker build -t gatehouse .`
/// makes, the way its Dockerfile expects: config at /etc/gatehouse/gatehouse.toml, state in a
/// volume at /var/lib/gatehouse, /ready on 127.0.0.1:9900 for its HEALTHCHECK; and every
/// variable they pass to Gatehouse is one the example reads.
#[test]
fn compose_files_run_their_example_in_the_gatehouse_image() {
    let passed = regex::Regex::new(r"(?m)^ +([A-Z][A-Z0-9_]*): \$\{").unwrap();
    let mut with_compose = Vec::new();
    for name in NAMES {
        let config = std::fs::read_to_string(example(name)).unwrap();
        let Ok(compose) =
            std::fs::read_to_string(example(name).with_file_name("docker-compose.yml"))
        else {
            continue;
        };
        with_compose.push(name);
        for needle in [
            "image: gatehouse:latest",
            "- ./gatehouse.toml:/etc/gatehouse/gatehouse.toml:ro",
            "net.ipv4.ip_unprivileged_port_start: 0",
            "- \"80:80\"",
        ] {
            assert!(
                compose.contains(needle),
                "{name}/docker-compose.yml lacks {needle}"
            );
        }
        assert!(
            config.contains("\"${GATEHOUSE_HTTP:-0.0.0.0:80}\""),
            "{name}: HTTP on 80"
        );
        assert!(
            config.contains(":9900}\""),
            "{name}: admin on 9900 for the HEALTHCHECK"
        );
        if config.lines().any(|l| l.starts_with("tls = \"acme\"")) {
            assert!(
                compose.contains("- gatehouse-state:/var/lib/gatehouse"),
                "{name}: state volume"
            );
            assert!(compose.contains("- \"443:443\""), "{name}: 443 published");
            assert!(
                config.contains("\"${GATEHOUSE_HTTPS:-0.0.0.0:443}\""),
                "{name}: HTTPS on 443"
            );
        }
        for var in passed.captures_iter(&compose) {
            let var = &var[1];
            assert!(
                config.contains(&format!("${{{var}")),
                "{name}: compose sets {var}, unused"
            );
        }
    }
    assert_eq!(
        with_compose,
        ["tessera-selfhosted", "dits", "oyl", "cluster"]
    );
    let readme = std::fs::read_to_string(Path::new(EXAMPLES).join("README.md")).unwrap();
    for name in NAMES {
        assert!(
            readme.contains(&format!("[{name}/]({name}/)")),
            "README.md lists {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Tessera self-hosted: frontend + backend, 100 MB uploads with per-IP limits, ACME, redirect
// ---------------------------------------------------------------------------------------------

const TESSERA: &str = "tessera.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_selfhosted_routes_uploads_and_redirects() {
    with_timeout(30, async {
        let backend = App::start("backend", "/unused").await;
        let frontend = App::start("frontend", "/unused").await;
        let cert = Cert::new(TESSERA);
        let env = cert
            .acme(Env::loopback())
            .set("TESSERA_BACKEND", backend.addr())
            .set("TESSERA_FRONTEND", frontend.addr());
        let proxy = env.start("tessera-selfhosted", true).await;
        assert_redirects_to_https(&proxy, TESSERA).await;

        let http = cert.client(TESSERA, &proxy);
        let url = |path: &str| format!("https://{TESSERA}{path}");
        let resp = http.get(url("/")).send().await.unwrap();
        cert.assert_served(&resp); // the stored ACME certificate: the CA was never needed
        for (path, want) in [
            ("/api/projects?page=2", "backend"),
            ("/api/upload", "backend"),
            ("/health", "backend"),
            ("/healthz", "frontend"),
            ("/", "frontend"),
            ("/assets/index.js", "frontend"),
        ] {
            assert_eq!(backend_of(&http, &url(path)).await, want, "GET {path}");
        }

        // 100 MB on the upload route only: 2 MiB streams through there, elsewhere it is 413
        let resp = http
            .post(url("/api/upload"))
            .body(streamed(2 * MIB))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "2 MiB upload");
        assert_eq!(body_bytes(&resp), 2 * MIB, "the backend got all of it");
        let resp = http
            .post(url("/api/projects"))
            .body(vec![b'x'; 2 * MIB])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413, "the 1 MB default elsewhere");
        // a declared 100 MiB + 1 is refused at once, the body never sent (second upload today)
        let head = format!(
            "POST /api/upload HTTP/1.1\r\nHost: {TESSERA}\r\nContent-Length: {}\r\n\r\n",
            100 * MIB + 1
        );
        assert_eq!(https_head_only(&proxy, TESSERA, &head).await.status, 413);

        // 2 uploads an hour per address: the third POST is refused; reading still works
        let resp = http
            .post(url("/api/upload"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429, "third upload within the hour");
        let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
        assert!((1..=30 * 60).contains(&retry), "Retry-After {retry}");
        assert_eq!(backend_of(&http, &url("/api/upload")).await, "backend");

        // the access log: JSON lines on stdout, the refusal included
        eventually_async(
            Duration::from_secs(5),
            "the 429 in the access log",
            || async {
                proxy
                    .stdout_lines()
                    .iter()
                    .any(|l| l.contains("\"path\":\"/api/upload\"") && l.contains("\"status\":429"))
            },
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Tessera on Kubernetes: rate limits, CORS, probes, health checks, metrics, TLS + redirect
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_k8s_limits_cors_health_and_metrics() {
    with_timeout(60, async {
        let api = App::start("tessera", "/health/ready").await;
        let cert = Cert::new(TESSERA);
        let (cert_file, key_file) = (cert.files.0.display(), cert.files.1.display());
        let env = Env::loopback()
            .set("TESSERA_TLS_CERT", cert_file)
            .set("TESSERA_TLS_KEY", key_file)
            .set("TESSERA_API", api.addr())
            .set("GATEHOUSE_HEALTH_INTERVAL", "100ms");
        let proxy = env.start("tessera-k8s", true).await;
        assert_redirects_to_https(&proxy, TESSERA).await;
        let http = cert.client(TESSERA, &proxy);
        let url = |path: &str| format!("https://{TESSERA}{path}");
        let resp = http.get(url("/api/v1/contracts")).send().await.unwrap();
        cert.assert_served(&resp); // the Secret's files
        assert_eq!(header(&resp, "x-backend").as_deref(), Some("tessera"));

        // CORS: a preflight from the configured origin is answered here, another origin's is 403
        let preflight = |origin: &str| {
            http.request(reqwest::Method::OPTIONS, url("/api/v1/teams"))
                .header("origin", origin)
                .header("access-control-request-method", "PATCH")
                .header("access-control-request-headers", "content-type,x-api-key")
                .send()
        };
        let resp = preflight("https://example.com").await.unwrap();
        assert_eq!(resp.status(), 204, "preflight from the configured origin");
        let grant = |name: &str| header(&resp, name).unwrap_or_default();
        assert_eq!(grant("access-control-allow-origin"), "https://example.com");
        assert_eq!(grant("access-control-allow-credentials"), "true");
        assert!(grant("access-control-allow-methods").contains("PATCH"));
        assert!(grant("access-control-allow-headers")
            .to_ascii_lowercase()
            .contains("x-api-key"));
        let resp = preflight("https://evil.example").await.unwrap();
        assert_eq!(resp.status(), 403, "preflight from another origin");
        assert!(header(&resp, "access-control-allow-origin").is_none());

        // per client address: writes 100/min, the admin prefix 50/min (its own budget), reads 1000/min
        let retry = assert_limit(100, Duration::from_millis(600), || {
            http.post(url("/api/v1/teams")).body("{}")
        })
        .await;
        assert!(!retry.is_empty());
        assert_limit(50, Duration::from_millis(1200), || {
            http.post(url("/api/v1/api-keys")).body("{}")
        })
        .await;
        // (from another address: this one spent some of its read budget above)
        let other = cert
            .client_builder(TESSERA, &proxy)
            .local_address(IpAddr::V4(ip(2)))
            .build()
            .unwrap();
        assert_limit(1000, Duration::from_millis(60), || {
            other.get(url("/api/v1/assets"))
        })
        .await;
        // the probes are never limited
        let resp = http.get(url("/health/ready")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "/health/ready through the limit");
        let resp = http.get(url("/health/live")).send().await.unwrap();
        assert_eq!(header(&resp, "x-backend").as_deref(), Some("tessera"));

        // the replica fails /health/ready: it is taken out, and Gatehouse's own /ready says so
        let admin = proxy.admin_addr().await;
        api.up.store(false, Ordering::SeqCst);
        eventually_async(
            Duration::from_secs(5),
            "503 with no ready replica",
            || async {
                let resp = http.get(url("/health/live")).send().await.unwrap();
                resp.status() == 503
            },
        )
        .await;
        assert_eq!(get_text(&format!("http://{admin}/ready")).await.0, 503);
        api.up.store(true, Ordering::SeqCst);
        eventually_async(
            Duration::from_secs(5),
            "back after passing checks",
            || async { get_text(&format!("http://{admin}/ready")).await.0 == 200 },
        )
        .await;
        assert_eq!(backend_of(&http, &url("/health/live")).await, "tessera");

        let metrics = assert_metrics(&proxy, TESSERA).await;
        assert!(metrics.contains("code=\"429\""), "the refusals are counted");
        assert!(metrics.contains("gatehouse_upstream_healthy{"), "{metrics}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Dits: three replicas found by DNS, health checks on /ready, 10 GB uploads, 5 min timeouts
// ---------------------------------------------------------------------------------------------

const DITS: &str = "dits.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dits_replicas_health_checks_and_large_uploads() {
    with_timeout(30, async {
        let replicas = Replicas::start("dits-server", 3, "/ready").await;
        let cert = Cert::new(DITS);
        let env = cert
            .acme(Env::loopback())
            .set("GATEHOUSE_DNS", replicas.dns.addr)
            .set("DITS_SERVER", format!("dits-server:{}", replicas.port))
            .set("GATEHOUSE_HEALTH_INTERVAL", "100ms");
        let proxy = env.start("dits", true).await;
        assert_redirects_to_https(&proxy, DITS).await;
        let http = cert.client(DITS, &proxy);
        let url = |path: &str| format!("https://{DITS}{path}");
        let resp = http.get(url("/health")).send().await.unwrap();
        cert.assert_served(&resp);

        // the three replicas share the work
        let counts = tally(&http, &url("/v1/repos"), 30).await;
        let want: Vec<String> = (1..=3).map(|i| ip(i).to_string()).collect();
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            want,
            "{counts:?}"
        );
        assert!(counts.values().all(|&n| n == 10), "evenly: {counts:?}");

        // one fails /ready: no new requests go to it, and none fails
        replicas.apps[1].up.store(false, Ordering::SeqCst);
        let down = ip(2).to_string();
        eventually_async(
            Duration::from_secs(5),
            "the unready replica left",
            || async { !tally(&http, &url("/v1/repos"), 6).await.contains_key(&down) },
        )
        .await;
        let counts = tally(&http, &url("/v1/repos"), 20).await;
        assert_eq!(counts.len(), 2, "two replicas left: {counts:?}");
        assert!(!counts.contains_key(&down));

        // a large upload streams through (over the 1 MB default); a declared 10 GiB + 1 is
        // refused at once, before a byte of it is sent
        let resp = http
            .post(url("/v1/upload"))
            .body(streamed(3 * MIB))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "3 MiB upload");
        assert_eq!(body_bytes(&resp), 3 * MIB);
        let head = format!(
            "PUT /v1/chunks/1 HTTP/1.1\r\nHost: {DITS}\r\nContent-Length: {}\r\n\r\n",
            (10u64 << 30) + 1
        );
        assert_eq!(https_head_only(&proxy, DITS, &head).await.status, 413);

        // 10 GB and the 5 minute timeouts, as Gatehouse read them
        let config = effective_config(&proxy).await;
        assert!(
            config.contains(&(10u64 << 30).to_string()),
            "max_body 10 GiB:\n{config}"
        );
        for key in [
            "body_timeout: 300s",
            "upstream_response: 300s",
            "send: 300s",
        ] {
            assert!(config.contains(key), "{key} in:\n{config}");
        }
        let metrics = assert_metrics(&proxy, DITS).await;
        let server = format!("server=\"{down}:{}\"", replicas.port);
        let gauge = metrics
            .lines()
            .find(|l| l.starts_with("gatehouse_upstream_healthy{") && l.contains(&server))
            .unwrap_or_else(|| panic!("no health gauge for {server}:\n{metrics}"));
        assert!(gauge.ends_with(" 0"), "{gauge}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. DeeperSensor: the Caddyfile (reverse_proxy, encode gzip, log), TLS 1.2/1.3, the .env limits
// ---------------------------------------------------------------------------------------------

const DEEPERSENSOR: &str = "api.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deepersensor_caddyfile_tls_gzip_limits_and_log() {
    with_timeout(30, async {
        let api = App::start("api", "/health").await;
        let cert = Cert::new(DEEPERSENSOR);
        let log = cert.dir.path().join("access.log");
        let env = cert
            .acme(Env::loopback())
            .set("DEEPERSENSOR_API", api.addr())
            .set("GATEHOUSE_ACCESS_LOG", log.display());
        let proxy = env.start("deepersensor", true).await;
        assert_redirects_to_https(&proxy, DEEPERSENSOR).await;

        // TLS 1.2 and TLS 1.3 are both served (and nothing older exists in rustls to try)
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let tls = tls_connect(proxy.https(), DEEPERSENSOR, &[version])
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
            let head = format!(
                "GET /v1/ping HTTP/1.1\r\nHost: {DEEPERSENSOR}\r\nConnection: close\r\n\r\n"
            );
            let resp = raw_request_on(tls, &head).await;
            assert_eq!(resp.header("x-backend"), Some("api"), "over {version:?}");
        }

        // encode gzip: a JSON answer is compressed for a client that accepts gzip, and only then
        let http = cert.client(DEEPERSENSOR, &proxy);
        let url = |path: &str| format!("https://{DEEPERSENSOR}{path}");
        let resp = http
            .get(url("/v1/models?json=4096"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        cert.assert_served(&resp);
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
        let zipped = resp.bytes().await.unwrap();
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut plain)
            .unwrap();
        assert_eq!(plain, json_of_len(4096));
        assert!(
            zipped.len() < 1024,
            "4 KiB of JSON in {} bytes",
            zipped.len()
        );
        let resp = http.get(url("/v1/models?json=4096")).send().await.unwrap();
        assert!(
            header(&resp, "content-encoding").is_none(),
            "no Accept-Encoding"
        );
        assert_eq!(resp.bytes().await.unwrap().len(), 4096);

        // MAX_REQUEST_SIZE_BYTES=1048576: exactly that passes, one byte more is 413
        let post = |len: usize| http.post(url("/v1/chat")).body(vec![b'x'; len]).send();
        let resp = post(MIB).await.unwrap();
        assert_eq!((resp.status().as_u16(), body_bytes(&resp)), (200, MIB));
        assert_eq!(post(MIB + 1).await.unwrap().status(), 413);

        // X-Forwarded-For is believed from the trusted ranges only; loopback is not one of them
        let resp = http
            .get(url("/v1/ping"))
            .header("x-forwarded-for", "10.9.9.9")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-seen-xff").as_deref(), Some("127.0.0.1"));

        // 60 a minute per client address, bursts of 20 (another address, a budget of its own)
        let other = cert
            .client_builder(DEEPERSENSOR, &proxy)
            .local_address(IpAddr::V4(ip(2)))
            .build()
            .unwrap();
        assert_limit(20, Duration::from_secs(1), || other.get(url("/v1/ping"))).await;

        // the .env timeouts, as Gatehouse read them
        let config = effective_config(&proxy).await;
        for key in [
            "header_read: 15s",
            "send: 30s",
            "idle: 120s",
            "body_timeout: 15s",
        ] {
            assert!(config.contains(key), "{key} in:\n{config}");
        }
        assert_metrics(&proxy, DEEPERSENSOR).await;
        // the access log file: one JSON object per line, the refusals included
        eventually_async(
            Duration::from_secs(5),
            "a 429 in the access log file",
            || async {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("\"status\":429")
            },
        )
        .await;
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(entry["host"], DEEPERSENSOR, "{line}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Oyl: `--scale api=3` by DNS, /health probes, per-address and per-token limits, metrics, logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oyl_scaled_replicas_by_dns_limits_metrics_and_json_logs() {
    with_timeout(30, async {
        let replicas = Replicas::start("api", 3, "/health").await;
        let env = Env::loopback()
            .set("GATEHOUSE_DNS", replicas.dns.addr)
            .set("OYL_API", format!("api:{}", replicas.port))
            .set("GATEHOUSE_RESOLVE_EVERY", "200ms")
            .set("GATEHOUSE_HEALTH_INTERVAL", "100ms");
        let proxy = env.start("oyl", false).await;
        let http = support::client();
        let url = proxy.url("/api/v1/tenants");
        // paced, so that polling stays well inside this client's rate limit
        let seen = || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tally(&http, &url, 6).await
        };

        // --scale api=3: all three replicas take requests
        let counts = tally(&http, &url, 30).await;
        let all: Vec<String> = (1..=3).map(|i| ip(i).to_string()).collect();
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            all,
            "{counts:?}"
        );

        // --scale api=2: the third leaves within a resolve_every
        replicas.dns.set("api", &[ip(1), ip(2)]);
        let gone = ip(3).to_string();
        eventually_async(
            Duration::from_secs(5),
            "replica 3 left with its DNS record",
            || async { !seen().await.contains_key(&gone) },
        )
        .await;

        // a replica failing /health gets no requests
        replicas.apps[0].up.store(false, Ordering::SeqCst);
        let sick = ip(1).to_string();
        eventually_async(
            Duration::from_secs(5),
            "replica 1 out after failing /health",
            || async { !seen().await.contains_key(&sick) },
        )
        .await;
        let left: Vec<String> = seen().await.into_keys().collect();
        assert_eq!(left, vec![ip(2).to_string()]);

        // per client address (not per tenant: see the example), 600/min with bursts of 100
        let from = |i: u8| {
            reqwest::Client::builder()
                .no_proxy()
                .local_address(IpAddr::V4(ip(i)))
                .build()
                .unwrap()
        };
        let other = from(9);
        assert_limit(100, Duration::from_millis(100), || other.get(&url)).await;
        let resp = other.get(proxy.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "/health is not limited");
        assert_eq!(
            backend_of(&http, &url).await,
            ip(2).to_string(),
            "other clients unaffected"
        );

        // and per bearer token: one token from two addresses (50 each, half their own budgets)
        // meets one budget of 100; those addresses without the token are still served
        let (left, right) = (from(10), from(11));
        let turn = AtomicUsize::new(0);
        assert_limit(100, Duration::from_millis(100), || {
            let client = if turn.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                &left
            } else {
                &right
            };
            client.get(&url).bearer_auth("tenant-a.jwt")
        })
        .await;
        for client in [&left, &right] {
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "no token: the address's own budget");
        }

        let metrics = assert_metrics(&proxy, "*").await;
        assert!(metrics.contains("code=\"429\""), "the refusals are counted");
        // scraped by its compose service's name (admin_hosts), and by no other
        let admin = proxy.admin_addr().await;
        let scrape = |host: &str| {
            format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        };
        let by_name = support::raw_request(admin, &scrape("gatehouse:9900")).await;
        assert_eq!(by_name.status, 200, "{}", by_name.body_text());
        assert_eq!(
            support::raw_request(admin, &scrape("evil.example"))
                .await
                .status,
            421
        );
        // the access log: one JSON object per line on stdout, the refusals included
        eventually_async(
            Duration::from_secs(5),
            "a 429 in the access log",
            || async {
                proxy
                    .stdout_lines()
                    .iter()
                    .any(|l| l.contains("\"status\":429"))
            },
        )
        .await;
        for line in proxy.stdout_lines() {
            let entry: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(
                entry["status"].is_u64() && entry["client"].is_string(),
                "{line}"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Three instances sharing rate limits through one Redis ([cluster])
// ---------------------------------------------------------------------------------------------

const CLUSTER_SECRET: &str = "example-cluster-secret-0123456789";

/// The example's three instances on one real `redis-server` (a unix socket in a temp dir) and
/// one app: `/cluster` lists all three agreeing, and a client spread over them gets the burst of
/// 20 once, not three times; `/health` is never limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_three_instances_share_one_budget_and_list_each_other() {
    with_timeout(60, async {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("redis.sock");
        let mut redis = std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        let app = App::start("app", "/health").await;
        let store = format!("unix://{}", sock.display());
        let mut proxies = Vec::new();
        for i in 1..=3 {
            let env = Env::loopback()
                .set("GATEHOUSE_CLUSTER_STORE", &store)
                .set("GATEHOUSE_CLUSTER_SECRET", CLUSTER_SECRET)
                .set("GATEHOUSE_INSTANCE", format!("gatehouse-{i}"))
                .set("CLUSTER_APP", app.addr());
            proxies.push(env.start("cluster", false).await);
        }
        let admin = proxies[0].admin_addr().await;
        eventually_async(
            Duration::from_secs(15),
            "the three instances listed each other",
            || async {
                let (status, body) = get_text(&format!("http://{admin}/cluster")).await;
                let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let global = view["members"].as_array().is_some_and(|m| {
                    m.len() == 3 && m.iter().all(|m| m["rate_limits"] == "global")
                });
                status == 200 && view["agree"] == true && global
            },
        )
        .await;
        let http = reqwest::Client::new();
        let mut admitted = 0;
        let started = std::time::Instant::now();
        for i in 0..45 {
            let url = proxies[i % 3].url("/");
            let status = http.get(&url).send().await.unwrap().status();
            admitted += usize::from(status == 200);
        }
        // 20 at once (not 60: one burst for the three), plus what refills (10/s) while the 45
        // are sent, however long a loaded machine takes to send them
        let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        assert!(
            (20..=21 + refilled).contains(&admitted),
            "admitted {admitted} of 45 in {:?}",
            started.elapsed()
        );
        for proxy in &proxies {
            let status = http
                .get(proxy.url("/health"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "/health is not limited");
        }
        let _ = redis.kill();
        let _ = redis.wait();
    })
    .await;
}
