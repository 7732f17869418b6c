//! TLS to upstreams: `https://` servers verified against `ca_root` (plus the system roots) under
//! the name `sni` or the server's host as written (an IP literal against its IP SAN), an optional
//! client certificate (mTLS), 502s that name the upstream and the reason, keep-alive over TLS, and
//! the `gatehouse check` error for TLS keys on a plain upstream. Real binary, real rustls backends
//! on 127.0.0.1:0, certificates from throwaway CAs made per test with rcgen.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{client, eventually_async, render_echo, run_gatehouse, with_timeout, TestProxy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Exit status for an invalid config (EX_DATAERR).
const CONFIG_ERROR: i32 = 64;

// ---------------------------------------------------------------------------------------------
// Test PKI
// ---------------------------------------------------------------------------------------------

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate issued by a test CA, with its key.
struct Leaf {
    der: CertificateDer<'static>,
    ca_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    /// Leaf then CA, PEM.
    chain_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `sans` (DNS names or IP addresses; the first is also the CN).
    fn issue(&self, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, sans[0]);
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Leaf {
            der: cert.der().clone(),
            ca_der: self.der(),
            key_der: key.serialize_der(),
            chain_pem: format!("{}{}", cert.pem(), self.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    fn server(&self, sans: &[&str]) -> Leaf {
        self.issue(sans, ExtendedKeyUsagePurpose::ServerAuth)
    }
}

/// Files the proxy config refers to, by absolute path; gone with the value.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------------
// An HTTPS backend that records what each handshake carried
// ---------------------------------------------------------------------------------------------

/// What the backend saw on one TLS connection.
#[derive(Clone, Debug)]
struct Seen {
    sni: Option<String>,
    alpn: Option<String>,
    /// The client certificate's common name, if one was presented.
    client_cn: Option<String>,
}

struct TlsBackend {
    addr: SocketAddr,
    /// TCP connections accepted (handshake or not).
    accepted: Arc<AtomicUsize>,
    /// One entry per completed handshake.
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `leaf` over TLS 1.2/1.3 (offering ALPN h2 and http/1.1, so the proxy's offer decides);
/// with `client_ca`, a client certificate signed by it is required. Answers every request 200 with
/// what it received (`support::render_echo`).
async fn tls_backend(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsBackend {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der()).expect("client CA");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
    let mut config = builder
        .with_single_cert(vec![leaf.der.clone(), leaf.ca_der.clone()], key)
        .expect("server cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, record) = (accepted.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let session = tls.get_ref().1;
                record.lock().unwrap().push(Seen {
                    sni: session.server_name().map(str::to_string),
                    alpn: session
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                    client_cn: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|der| common_name(der)),
                });
                let service = service_fn(|req| async move {
                    let body = render_echo(req).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsBackend {
        addr,
        accepted,
        seen,
        task,
    }
}

fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// Everything to upstream `secure`, whose one server is `https://{server}`, with `extra` keys.
fn config(server: &str, extra: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[[site]]
  [[site.route]]
  path = "/"
  upstream = "secure"

[upstream.secure]
servers = ["https://{server}"]
{extra}
"#
    )
}

/// `ca_root = "<files>/ca.pem"` for `ca`.
fn ca_root(files: &Files, ca: &Ca) -> String {
    let path = files.write("ca.pem", &ca.pem());
    format!("ca_root = \"{}\"", path_str(&path))
}

async fn get(proxy: &TestProxy, path: &str) -> (u16, String) {
    let resp = client()
        .get(proxy.url(path))
        .send()
        .await
        .expect("request to proxy");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// The proxy's first `upstream error` log line, waiting for it up to 5 s (stderr is read by a
/// thread, so it can trail the response).
async fn upstream_error_line(proxy: &TestProxy) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = proxy
            .logs()
            .into_iter()
            .find(|line| line.contains("\"upstream error\""));
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no `upstream error` log line; logs:\n{}",
            proxy.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_mentions(line: &str, needles: &[&str]) {
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} not in log line:\n{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sni_is_sent_and_verified_and_alpn_is_http1() {
    with_timeout(30, async {
        let ca = Ca::new("Upstream Test CA");
        let files = Files::new();
        let backend = tls_backend(&ca.server(&["api.internal"]), None).await;
        let extra = format!("{}\nsni = \"api.internal\"", ca_root(&files, &ca));
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &extra)).await;

        let (status, body) = get(&proxy, "/hello?x=1").await;
        assert_eq!(status, 200, "body: {body}");
        assert!(
            body.starts_with("GET /hello?x=1 HTTP/1.1"),
            "backend saw: {body}"
        );
        assert!(
            body.contains("x-forwarded-proto: http\n"),
            "backend saw: {body}"
        );
        let seen = backend.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].sni.as_deref(), Some("api.internal"));
        assert_eq!(
            seen[0].alpn.as_deref(),
            Some("http/1.1"),
            "only http/1.1 offered"
        );
        assert_eq!(seen[0].client_cn, None);
    })
    .await;
}

#[tokio::test]
async fn ip_literal_server_is_verified_against_its_ip_san() {
    with_timeout(30, async {
        let ca = Ca::new("Upstream Test CA");
        let files = Files::new();
        let backend = tls_backend(&ca.server(&["127.0.0.1"]), None).await;
        let proxy =
            TestProxy::start(&config(&backend.addr.to_string(), &ca_root(&files, &ca))).await;

        let (status, body) = get(&proxy, "/").await;
        assert_eq!(status, 200, "body: {body}");
        let seen = backend.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        // an IP address is verified, never sent as SNI (RFC 6066 allows host names only)
        assert_eq!(seen[0].sni, None);
    })
    .await;
}

#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_a_502_naming_the_upstream() {
    with_timeout(30, async {
        let (ca, stranger) = (Ca::new("Upstream Test CA"), Ca::new("Stranger CA"));
        let files = Files::new();
        let backend = tls_backend(&stranger.server(&["api.internal"]), None).await;
        let extra = format!("{}\nsni = \"api.internal\"", ca_root(&files, &ca));
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &extra)).await;

        let (status, body) = get(&proxy, "/").await;
        assert_eq!(status, 502, "body: {body}");
        assert!(backend.seen().is_empty(), "no request reached the backend");
        let line = upstream_error_line(&proxy).await;
        assert_mentions(
            &line,
            &[
                "upstream `secure`",
                "api.internal",
                "not trusted",
                "UnknownIssuer",
            ],
        );
    })
    .await;
}

#[tokio::test]
async fn certificate_for_another_name_is_a_502() {
    with_timeout(30, async {
        let ca = Ca::new("Upstream Test CA");
        let files = Files::new();
        let backend = tls_backend(&ca.server(&["api.internal"]), None).await;
        let extra = format!("{}\nsni = \"other.internal\"", ca_root(&files, &ca));
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &extra)).await;

        let (status, body) = get(&proxy, "/").await;
        assert_eq!(status, 502, "body: {body}");
        let line = upstream_error_line(&proxy).await;
        assert_mentions(
            &line,
            &["upstream `secure`", "other.internal", "not valid for"],
        );
    })
    .await;
}

#[tokio::test]
async fn client_certificate_is_presented_when_configured() {
    with_timeout(30, async {
        let ca = Ca::new("Upstream Test CA");
        let files = Files::new();
        let server = ca.server(&["api.internal"]);
        let client_leaf = ca.issue(&["gatehouse-client"], ExtendedKeyUsagePurpose::ClientAuth);
        let cert = files.write("client.pem", &client_leaf.chain_pem);
        let key = files.write("client.key", &client_leaf.key_pem);
        let trust = format!("{}\nsni = \"api.internal\"", ca_root(&files, &ca));

        // without a client certificate the backend refuses the connection
        let backend = tls_backend(&server, Some(&ca)).await;
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &trust)).await;
        let (status, body) = get(&proxy, "/").await;
        assert_eq!(status, 502, "body: {body}");
        assert!(backend.seen().is_empty(), "{:?}", backend.seen());
        drop(proxy);

        let with_cert = format!(
            "{trust}\nclient_cert = {{ cert = \"{}\", key = \"{}\" }}",
            path_str(&cert),
            path_str(&key)
        );
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &with_cert)).await;
        let (status, body) = get(&proxy, "/").await;
        assert_eq!(status, 200, "body: {body}");
        let seen = backend.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].client_cn.as_deref(), Some("gatehouse-client"));
    })
    .await;
}

#[tokio::test]
async fn sequential_requests_reuse_one_tls_connection() {
    with_timeout(30, async {
        let ca = Ca::new("Upstream Test CA");
        let files = Files::new();
        let backend = tls_backend(&ca.server(&["api.internal"]), None).await;
        let extra = format!("{}\nsni = \"api.internal\"", ca_root(&files, &ca));
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &extra)).await;

        for path in ["/one", "/two", "/three"] {
            let (status, body) = get(&proxy, path).await;
            assert_eq!(status, 200, "body: {body}");
        }
        assert_eq!(backend.accepted(), 1, "one TCP connection to the backend");
        assert_eq!(backend.seen().len(), 1, "one TLS handshake");
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_never_answers_the_handshake_is_a_504() {
    with_timeout(30, async {
        let ca = Ca::new("Upstream Test CA");
        let files = Files::new();
        // accepts TCP and holds the sockets without a byte of TLS
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let extra = format!("{}\nsni = \"api.internal\"", ca_root(&files, &ca));
        let config = config(&addr.to_string(), &extra).replace(
            "workers = 2",
            "workers = 2\ntimeouts = { upstream_connect = \"500ms\" }",
        );
        let proxy = TestProxy::start(&config).await;

        let started = Instant::now();
        let (status, body) = get(&proxy, "/").await;
        assert_eq!(status, 504, "body: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        silent.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// gatehouse check
// ---------------------------------------------------------------------------------------------

/// Runs `gatehouse check` on `config` and asserts a config error located on the first line
/// containing `marker` whose message mentions every string in `mentions`.
fn assert_check_error(config: &str, marker: &str, mentions: &[&str]) {
    let files = Files::new();
    let path = files.write("gatehouse.toml", config);
    let out = run_gatehouse(&["check", "--config", path_str(&path)], &[], &[]);
    assert_eq!(
        out.status.code(),
        Some(CONFIG_ERROR),
        "stderr:\n{}",
        out.stderr
    );
    let line = config
        .lines()
        .position(|l| l.contains(marker))
        .expect("marker in config")
        + 1;
    let location = format!("{}:{line}:", path_str(&path));
    assert!(
        out.stderr.contains(&location),
        "no {location} in:\n{}",
        out.stderr
    );
    for needle in mentions {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn check_rejects_ca_root_on_a_plain_upstream() {
    let files = Files::new();
    let ca = files.write("ca.pem", &Ca::new("Upstream Test CA").pem());
    let plain = config(
        "127.0.0.1:8443",
        &format!("ca_root = \"{}\"", path_str(&ca)),
    )
    .replace("https://", "");
    assert_check_error(
        &plain,
        "ca_root",
        &["`upstream.secure.ca_root`", "https://HOST:PORT"],
    );
}

#[test]
fn check_rejects_an_sni_that_is_no_server_name() {
    let bad = config("127.0.0.1:8443", "sni = \"not a name\"");
    assert_check_error(&bad, "sni", &["`upstream.secure.sni`", "`not a name`"]);
}

/// Active health checks speak TLS to a TLS upstream too: the probe completes a handshake with
/// the configured name, and a server whose certificate fails verification is marked down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_go_over_tls_and_verify_the_certificate() {
    with_timeout(30, async {
        let ca = Ca::new("Upstream Test CA");
        let files = Files::new();
        let backend = tls_backend(&ca.server(&["api.internal"]), None).await;
        let check = "health = { path = \"/health\", interval = \"200ms\", unhealthy = 1 }";
        let extra = format!("{}\nsni = \"api.internal\"\n{check}", ca_root(&files, &ca));
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &extra)).await;
        assert!(
            proxy
                .logs()
                .iter()
                .any(|l| l.contains("upstream server up")),
            "the first check passed over TLS"
        );
        assert!(
            !backend.seen().is_empty(),
            "the probe completed a handshake"
        );
        assert_eq!(backend.seen()[0].sni.as_deref(), Some("api.internal"));
        assert_eq!(get(&proxy, "/").await.0, 200);

        let wrong = format!(
            "{}\nsni = \"other.internal\"\n{check}",
            ca_root(&files, &ca)
        );
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &wrong)).await;
        let down = proxy
            .logs()
            .into_iter()
            .find(|l| l.contains("upstream server down"));
        let down = down.expect("marked down by its first check");
        assert!(down.contains("refused or failed"), "{down}");
        assert_eq!(get(&proxy, "/").await.0, 503);
    })
    .await;
}

#[tokio::test]
async fn a_reload_reads_a_replaced_ca_file_under_the_same_name() {
    with_timeout(30, async {
        let (ca, replacement) = (Ca::new("Upstream Test CA"), Ca::new("Replacement CA"));
        let files = Files::new();
        let backend = tls_backend(&replacement.server(&["api.internal"]), None).await;
        let extra = format!("{}\nsni = \"api.internal\"", ca_root(&files, &ca));
        let proxy = TestProxy::start(&config(&backend.addr.to_string(), &extra)).await;
        assert_eq!(get(&proxy, "/").await.0, 502, "not trusted yet");

        // same config text, new file contents: SIGHUP reads it again
        files.write("ca.pem", &replacement.pem());
        proxy.send_signal("HUP");
        eventually_async(Duration::from_secs(2), "200 through the new CA", || async {
            get(&proxy, "/").await.0 == 200
        })
        .await;
        let reloaded = proxy.logs().join("\n");
        assert!(reloaded.contains("config reloaded"), "{reloaded}");
    })
    .await;
}
