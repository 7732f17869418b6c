//! HTTPS: certificates per site chosen by SNI, ALPN (h2 / http/1.1), TLS 1.2 and 1.3 only (1.3
//! alone with `tls_min_version`), HTTP→HTTPS redirects (except ACME HTTP-01 challenges), HSTS,
//! and `gatehouse check` errors for TLS settings. Real binary, real TLS clients, certificates from
//! a throwaway CA made per test.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::{
    any_cert_client, echo_backend, eventually, eventually_async, header, run_gatehouse,
    with_timeout, Backend, Echo, TestProxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Exit status for an invalid config (EX_DATAERR).
const CONFIG_ERROR: i32 = 64;
const HSTS: &str = "max-age=31536000";

// ---------------------------------------------------------------------------------------------
// Test PKI
// ---------------------------------------------------------------------------------------------

/// A CA and two leaves signed by it, written as PEM files into a temp dir.
struct Pki {
    /// Keeps the PEM files alive for the test's length.
    _dir: tempfile::TempDir,
    ca_pem: String,
    /// `app.test` + `*.app.test`: chain (leaf, CA) and key.
    app: Leaf,
    /// `other.test`: chain (leaf, CA) and key.
    other: Leaf,
    /// The CA and its key, kept to issue more leaves (certificate reload tests).
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A leaf issued by the test CA, in memory only.
struct Issued {
    /// Leaf then CA, PEM.
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

/// Issues a leaf for `sans` (the first is also the CN) with a fresh key, signed by `ca`.
fn issue(ca: &rcgen::Certificate, ca_key: &KeyPair, sans: &[&str]) -> Issued {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, sans[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca, ca_key).expect("sign leaf");
    Issued {
        chain_pem: format!("{}{}", cert.pem(), ca.pem()),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

struct Leaf {
    chain_pem: String,
    key_pem: String,
    chain_path: PathBuf,
    key_path: PathBuf,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Gatehouse Test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let ca_pem = ca.pem();

        let leaf = |name: &str, sans: &[&str]| -> Leaf {
            let Issued {
                chain_pem,
                key_pem,
                der,
            } = issue(&ca, &ca_key, sans);
            let chain_path = dir.path().join(format!("{name}.chain.pem"));
            let key_path = dir.path().join(format!("{name}.key.pem"));
            std::fs::write(&chain_path, &chain_pem).expect("write chain");
            std::fs::write(&key_path, &key_pem).expect("write key");
            Leaf {
                chain_pem,
                key_pem,
                chain_path,
                key_path,
                der,
            }
        };
        let app = leaf("app", &["app.test", "*.app.test"]);
        let other = leaf("other", &["other.test"]);
        Pki {
            _dir: dir,
            ca_pem,
            app,
            other,
            ca,
            ca_key,
        }
    }

    /// Another leaf for `sans` from the same CA, with its own key.
    fn issue(&self, sans: &[&str]) -> Issued {
        issue(&self.ca, &self.ca_key, sans)
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The contract's example config: app.test (+ wildcard, HSTS, redirect) proxied to `backend`,
/// other.test (tls, no redirect) and plain.test (no tls) answered by the proxy.
fn config(pki: &Pki, backend: &Backend) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"

[server]
workers = 2

[[site]]
hosts = ["app.test", "*.app.test"]
tls = {{ cert = "{app_cert}", key = "{app_key}" }}
redirect_https = true
hsts = "{HSTS}"

  [[site.route]]
  path = "/"
  upstream = "backend"

  [[site.route]]
  path = "/down/"
  upstream = "dead"

[[site]]
hosts = ["other.test"]
tls = {{ cert = "{other_cert}", key = "{other_key}" }}
redirect_https = false

  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "other\n" }}

[[site]]
hosts = ["plain.test"]

  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "plain\n" }}

[upstream.backend]
servers = ["{upstream}"]

[upstream.dead]
servers = ["{dead}"]
"#,
        dead = dead_addr(),
        app_cert = path_str(&pki.app.chain_path),
        app_key = path_str(&pki.app.key_path),
        other_cert = path_str(&pki.other.chain_path),
        other_key = path_str(&pki.other.key_path),
        upstream = backend.addr,
    )
}

/// A local port nothing listens on (bound, then released), for a 502 upstream.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr")
}

async fn start(pki: &Pki, backend: &Backend) -> TestProxy {
    TestProxy::start_tls(&config(pki, backend)).await
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A reqwest builder that trusts only the test CA, resolves every name in `hosts` to `addr`,
/// never follows redirects and never uses a system proxy.
fn builder(ca_pem: &str, addr: SocketAddr, hosts: &[&str]) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem"))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    for host in hosts {
        builder = builder.resolve(host, addr);
    }
    builder
}

const ALL_HOSTS: &[&str] = &[
    "app.test",
    "x.app.test",
    "other.test",
    "plain.test",
    "unknown.test",
    "app.test.evil",
    "xapp.test",
];

fn https_client(pki: &Pki, proxy: &TestProxy) -> reqwest::Client {
    builder(&pki.ca_pem, proxy.https(), ALL_HOSTS)
        .build()
        .expect("client")
}

/// A plain-HTTP client resolving every test name to the proxy's HTTP listener.
fn http_client(pki: &Pki, proxy: &TestProxy) -> reqwest::Client {
    builder(&pki.ca_pem, proxy.addr, ALL_HOSTS)
        .build()
        .expect("client")
}

fn https_url(proxy: &TestProxy, host: &str, path: &str) -> String {
    format!("https://{host}:{}{path}", proxy.https().port())
}

fn http_url(proxy: &TestProxy, host: &str, path: &str) -> String {
    format!("http://{host}:{}{path}", proxy.addr.port())
}

/// What a finished raw handshake negotiated.
#[derive(Debug)]
struct Handshake {
    /// DER of the served leaf certificate.
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

/// A TLS connection to `addr` with `sni`, offering `alpn`, accepting any certificate. `Err`
/// describes the handshake failure.
async fn connect_any_cert(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&str],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    connect_offering(addr, sni, alpn, rustls::DEFAULT_VERSIONS).await
}

/// [`connect_any_cert`] offering only the TLS `versions` given.
async fn connect_offering(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let connector = tokio_rustls::TlsConnector::from(any_cert_client(versions, alpn));
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to https port");
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    connector
        .connect(name, tcp)
        .await
        .map_err(|err| format!("handshake failed: {err}"))
}

/// A TLS handshake with `sni`, offering `alpn`, accepting any certificate. `Err` describes the
/// handshake failure.
async fn raw_handshake(addr: SocketAddr, sni: &str, alpn: &[&str]) -> Result<Handshake, String> {
    let mut tls = connect_any_cert(addr, sni, alpn).await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| "no peer certificate".to_string())?;
    let handshake = Handshake {
        leaf,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
    };
    let _ = tls.shutdown().await;
    Ok(handshake)
}

/// Which of the test certificates `der` is, for readable failures.
fn cert_name(pki: &Pki, der: &[u8]) -> &'static str {
    if der == pki.app.der.as_slice() {
        "the app.test certificate"
    } else if der == pki.other.der.as_slice() {
        "the other.test certificate"
    } else {
        "an unknown certificate"
    }
}

// ---------------------------------------------------------------------------------------------
// 1. HTTPS to exact and wildcard hosts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_request_reaches_backend_with_forwarded_proto_https() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let client = https_client(&pki, &proxy);
        let port = proxy.https().port();

        for host in ["app.test", "x.app.test"] {
            let resp = client
                .get(https_url(&proxy, host, "/hello?q=1"))
                // A client's own claim about the scheme is not believed (untrusted peer).
                .header("x-forwarded-proto", "http")
                .send()
                .await
                .unwrap_or_else(|err| panic!("HTTPS request to {host} failed: {err:?}"));
            assert_eq!(resp.status(), 200, "HTTPS {host}");
            assert_eq!(header(&resp, "x-backend").as_deref(), Some("echo"));
            let echo = Echo::parse(&resp.text().await.expect("body"));
            assert_eq!(echo.method, "GET");
            assert_eq!(echo.uri, "/hello?q=1");
            assert_eq!(
                echo.header("x-forwarded-proto").as_deref(),
                Some("https"),
                "backend must see X-Forwarded-Proto: https for an HTTPS request to {host}; saw {echo:?}"
            );
            let want_host = format!("{host}:{port}");
            assert_eq!(
                echo.header("host").as_deref(),
                Some(want_host.as_str()),
                "Host must pass through unchanged over HTTPS"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_cert_paths_are_relative_to_the_config_file() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let config = format!(
            r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"

[[site]]
hosts = ["app.test", "*.app.test"]
tls = {{ cert = "app-chain.pem", key = "app-key.pem" }}

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{}"]
"#,
            backend.addr
        );
        // The test process's cwd is the crate root, not the config's directory.
        let proxy = TestProxy::start_tls_with_files(
            &config,
            &[
                ("app-chain.pem", &pki.app.chain_pem),
                ("app-key.pem", &pki.app.key_pem),
            ],
        )
        .await;
        let resp = https_client(&pki, &proxy)
            .get(https_url(&proxy, "app.test", "/rel"))
            .send()
            .await
            .expect("HTTPS request with relative cert paths");
        assert_eq!(resp.status(), 200);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2-3. SNI selects the certificate; unknown names get no certificate at all
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_site_certificate() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;

        let resp = https_client(&pki, &proxy)
            .get(https_url(&proxy, "other.test", "/"))
            .send()
            .await
            .expect("HTTPS request to other.test (verifying its certificate) failed");
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "strict-transport-security"), None);
        assert_eq!(resp.text().await.expect("body"), "other\n");

        for (sni, want, want_name) in [
            ("app.test", &pki.app.der, "the app.test certificate"),
            (
                "deep.sub.app.test",
                &pki.app.der,
                "the app.test certificate",
            ),
            ("other.test", &pki.other.der, "the other.test certificate"),
        ] {
            let hs = raw_handshake(proxy.https(), sni, &[])
                .await
                .unwrap_or_else(|err| panic!("SNI {sni}: {err}"));
            assert!(
                &hs.leaf == want,
                "SNI {sni} should be served {want_name}, got {}",
                cert_name(&pki, &hs.leaf)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_and_sites_without_tls_fail_the_handshake() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let client = https_client(&pki, &proxy);

        for host in ["unknown.test", "plain.test", "app.test.evil", "xapp.test"] {
            // Even a client that would accept any certificate must not get one.
            match raw_handshake(proxy.https(), host, &["h2", "http/1.1"]).await {
                Err(_) => {}
                Ok(hs) => panic!(
                    "SNI {host} (no site with tls) completed a handshake and was served {}",
                    cert_name(&pki, &hs.leaf)
                ),
            }
            let result = client.get(https_url(&proxy, host, "/")).send().await;
            match result {
                Err(err) => assert!(
                    (err.is_connect() || err.is_request())
                        && !format!("{err:?}").contains("dns error"),
                    "{host}: expected a handshake error, got {err:?}"
                ),
                Ok(resp) => panic!(
                    "HTTPS to {host} got an HTTP response {} instead of a handshake failure",
                    resp.status()
                ),
            }
        }

        // No SNI at all (rustls sends none for an IP address) and no catch-all TLS site: no certificate.
        if let Ok(hs) = raw_handshake(proxy.https(), "127.0.0.1", &[]).await {
            panic!(
                "a client without SNI completed a handshake and was served {}",
                cert_name(&pki, &hs.leaf)
            );
        }

        // The listener survives failed handshakes.
        let resp = client
            .get(https_url(&proxy, "app.test", "/after"))
            .send()
            .await
            .expect("app.test after failed handshakes");
        assert_eq!(resp.status(), 200);
    })
    .await;
}

/// A client that sends no SNI (rustls sends none when it connects by IP address, as load
/// balancer health checks and `curl https://203.0.113.7/` do): `default_sni`'s certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_without_sni_gets_the_default_sni_certificate() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let config = config(&pki, &backend)
            .replace("workers = 2", "workers = 2\ndefault_sni = \"other.test\"");
        let proxy = TestProxy::start_tls(&config).await;
        let hs = raw_handshake(proxy.https(), "127.0.0.1", &[])
            .await
            .unwrap_or_else(|err| panic!("no SNI with default_sni = other.test: {err}"));
        assert!(
            hs.leaf == pki.other.der,
            "no SNI should be served the other.test certificate, got {}",
            cert_name(&pki, &hs.leaf)
        );
        // a name sent is still chosen by: default_sni is only for clients that send none
        let hs = raw_handshake(proxy.https(), "app.test", &[]).await.unwrap();
        assert!(hs.leaf == pki.app.der, "{}", cert_name(&pki, &hs.leaf));
        assert!(raw_handshake(proxy.https(), "unknown.test", &[])
            .await
            .is_err());
    })
    .await;
}

/// With a single TLS site, that site's certificate answers clients without SNI, no key needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_without_sni_gets_the_only_tls_sites_certificate() {
    with_timeout(30, async {
        let pki = Pki::new();
        let files = tls_files(&pki.app.chain_path, &pki.app.key_path);
        let config = tls_site_config(true, &files)
            + "\n[[site]]\nhosts = [\"plain.test\"]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200 }\n";
        let proxy = TestProxy::start_tls(&config).await;
        let hs = raw_handshake(proxy.https(), "127.0.0.1", &[])
            .await
            .unwrap_or_else(|err| panic!("no SNI, one TLS site: {err}"));
        assert!(
            hs.leaf == pki.app.der,
            "no SNI should be served the only TLS site's certificate, got {}",
            cert_name(&pki, &hs.leaf)
        );
    })
    .await;
}

/// plain.test has no `tls`, so per the contract it is "reachable only over http". A client that
/// completes a handshake with SNI app.test and then sends `Host: plain.test` must not be served
/// plain.test's content over HTTPS (RFC 9110 §15.5.20 suggests 421 Misdirected Request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_without_tls_is_not_served_over_https_behind_another_sni() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let port = proxy.https().port();
        for client in [
            https_client(&pki, &proxy),
            builder(&pki.ca_pem, proxy.https(), ALL_HOSTS)
                .http1_only()
                .build()
                .expect("client"),
        ] {
            let resp = client
                .get(https_url(&proxy, "app.test", "/"))
                .header("host", format!("plain.test:{port}"))
                .send()
                .await
                .expect("request over the app.test TLS connection");
            let status = resp.status();
            let version = resp.version();
            let body = resp.text().await.expect("body");
            assert!(
                status.is_client_error() && !body.contains("plain"),
                "{version:?}: HTTPS with SNI app.test and Host plain.test (a site without tls) \
                 was answered {status} {body:?}; plain.test must be reachable only over HTTP"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. ALPN
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_or_http1() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let port = proxy.https().port();

        let h2 = https_client(&pki, &proxy);
        let resp = h2
            .get(https_url(&proxy, "app.test", "/h2"))
            .send()
            .await
            .expect("h2 request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.version(),
            reqwest::Version::HTTP_2,
            "a client offering h2 via ALPN should get HTTP/2"
        );
        assert_eq!(
            header(&resp, "strict-transport-security").as_deref(),
            Some(HSTS)
        );
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.uri, "/h2");
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
        let want_host = format!("app.test:{port}");
        assert_eq!(
            echo.header("host").as_deref(),
            Some(want_host.as_str()),
            "the HTTP/2 :authority must reach the HTTP/1.1 backend as Host"
        );

        let h1 = builder(&pki.ca_pem, proxy.https(), ALL_HOSTS)
            .http1_only()
            .build()
            .expect("client");
        let resp = h1
            .get(https_url(&proxy, "app.test", "/h1"))
            .send()
            .await
            .expect("http/1.1 request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);

        // What the server picks, seen on the wire.
        for (offer, want) in [
            (&["h2", "http/1.1"][..], Some(&b"h2"[..])),
            (&["http/1.1"][..], Some(&b"http/1.1"[..])),
            (&[][..], None),
        ] {
            let hs = raw_handshake(proxy.https(), "app.test", offer)
                .await
                .unwrap_or_else(|err| panic!("ALPN offer {offer:?}: {err}"));
            assert_eq!(
                hs.alpn.as_deref(),
                want,
                "ALPN offer {offer:?}: server chose {:?}",
                hs.alpn.as_deref().map(String::from_utf8_lossy)
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Protocol versions
// ---------------------------------------------------------------------------------------------

/// reqwest clients (rustls) offering TLS 1.2 only and TLS 1.3 only.
fn clients_by_version(pki: &Pki, proxy: &TestProxy) -> (reqwest::Client, reqwest::Client) {
    let tls12 = builder(&pki.ca_pem, proxy.https(), ALL_HOSTS)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .expect("client");
    let tls13 = builder(&pki.ca_pem, proxy.https(), ALL_HOSTS)
        .min_tls_version(reqwest::tls::Version::TLS_1_3)
        .build()
        .expect("client");
    (tls12, tls13)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_work() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;

        let (tls12, tls13) = clients_by_version(&pki, &proxy);
        for (name, client) in [("TLS 1.2", tls12), ("TLS 1.3", tls13)] {
            for host in ["app.test", "other.test"] {
                let resp = client
                    .get(https_url(&proxy, host, "/v"))
                    .send()
                    .await
                    .unwrap_or_else(|err| panic!("{name} request to {host} failed: {err:?}"));
                assert_eq!(resp.status(), 200, "{name} {host}");
            }
        }

        // The raw client (both versions offered) lands on 1.3.
        let hs = raw_handshake(proxy.https(), "app.test", &[])
            .await
            .expect("handshake");
        assert_eq!(hs.version, Some(rustls::ProtocolVersion::TLSv1_3));
    })
    .await;
}

/// An idle HTTP/1.1 connection is taken out of hyper after 50 ms and served again when its next
/// request comes: over TLS too, where the decrypted bytes may already wait inside rustls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_parked_while_idle_serves_its_next_requests() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let tls = connect_any_cert(proxy.https(), "app.test", &["http/1.1"])
            .await
            .expect("handshake");
        let mut tls = tokio::io::BufReader::new(tls);
        let get = "GET /v HTTP/1.1\r\nHost: app.test\r\n\r\n";
        for (n, pipelined) in [(1, 1), (2, 1), (3, 2)] {
            tls.get_mut()
                .write_all(get.repeat(pipelined).as_bytes())
                .await
                .expect("write");
            for _ in 0..pipelined {
                let resp = support::read_response(&mut tls)
                    .await
                    .unwrap_or_else(|e| panic!("round {n}: {e}"));
                assert_eq!(resp.status, 200, "round {n}: {resp:?}");
            }
            // idle past the parking delay
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// A hand-written ClientHello with legacy version `version` (no supported_versions extension),
/// offering ECDHE suites usable with TLS 1.0-1.2 and the extensions a TLS 1.2 server needs.
fn client_hello(version: [u8; 2], sni: &str) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }
    fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&u16be(data.len()));
        out.extend_from_slice(data);
        out
    }
    let mut server_name = vec![0u8]; // host_name
    server_name.extend_from_slice(&u16be(sni.len()));
    server_name.extend_from_slice(sni.as_bytes());
    let mut sni_data = u16be(server_name.len()).to_vec();
    sni_data.extend_from_slice(&server_name);

    let groups: &[u8] = &[0x00, 0x1d, 0x00, 0x17]; // x25519, secp256r1
    let mut groups_data = u16be(groups.len()).to_vec();
    groups_data.extend_from_slice(groups);
    // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    let sigs: &[u8] = &[0x04, 0x03, 0x08, 0x04, 0x04, 0x01];
    let mut sigs_data = u16be(sigs.len()).to_vec();
    sigs_data.extend_from_slice(sigs);

    let mut extensions = Vec::new();
    extensions.extend(ext(0x0000, &sni_data));
    extensions.extend(ext(0x000a, &groups_data));
    extensions.extend(ext(0x000b, &[1, 0])); // ec_point_formats: uncompressed
    extensions.extend(ext(0x000d, &sigs_data));

    let suites: &[u8] = &[
        0xc0, 0x2b, // ECDHE_ECDSA_AES_128_GCM_SHA256 (1.2)
        0xc0, 0x2f, // ECDHE_RSA_AES_128_GCM_SHA256 (1.2)
        0xcc, 0xa9, // ECDHE_ECDSA_CHACHA20_POLY1305 (1.2)
        0xc0, 0x09, // ECDHE_ECDSA_AES_128_CBC_SHA (1.0+)
        0xc0, 0x13, // ECDHE_RSA_AES_128_CBC_SHA (1.0+)
        0x00, 0x2f, // RSA_AES_128_CBC_SHA (1.0+)
    ];
    let mut body = version.to_vec();
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&u16be(suites.len()));
    body.extend_from_slice(suites);
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&u16be(extensions.len()));
    body.extend_from_slice(&extensions);

    let mut handshake = vec![1u8]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// The server's first answer to a raw ClientHello.
#[derive(Debug, PartialEq)]
enum FirstAnswer {
    ServerHello { version: [u8; 2] },
    Alert { description: u8 },
    Closed,
    Other(Vec<u8>),
}

async fn first_answer(addr: SocketAddr, hello: &[u8]) -> FirstAnswer {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(hello).await.expect("write hello");
    let mut head = [0u8; 5];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head)).await {
        Err(_) => panic!("no answer to a ClientHello within 5s"),
        Ok(Err(_)) => return FirstAnswer::Closed,
        Ok(Ok(_)) => {}
    }
    let len = u16::from_be_bytes([head[3], head[4]]) as usize;
    let mut payload = vec![0u8; len.min(16 * 1024)];
    if tcp.read_exact(&mut payload).await.is_err() {
        return FirstAnswer::Other(head.to_vec());
    }
    match (head[0], payload.as_slice()) {
        // handshake record starting with ServerHello: type 2, 3-byte length, server_version
        (0x16, [2, _, _, _, v0, v1, ..]) => FirstAnswer::ServerHello {
            version: [*v0, *v1],
        },
        (0x15, [_, description, ..]) => FirstAnswer::Alert {
            description: *description,
        },
        _ => FirstAnswer::Other(head.to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_and_tls10_client_hellos_are_refused() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;

        // Control: the same hello as TLS 1.2 gets a TLS 1.2 ServerHello.
        let answer = first_answer(proxy.https(), &client_hello([3, 3], "app.test")).await;
        assert_eq!(
            answer,
            FirstAnswer::ServerHello { version: [3, 3] },
            "a TLS 1.2 ClientHello should get a TLS 1.2 ServerHello"
        );

        for (name, version) in [("TLS 1.1", [3, 2]), ("TLS 1.0", [3, 1])] {
            let answer = first_answer(proxy.https(), &client_hello(version, "app.test")).await;
            assert!(
                matches!(answer, FirstAnswer::Alert { .. } | FirstAnswer::Closed),
                "a {name} ClientHello must be refused (alert or close), got {answer:?}"
            );
        }
    })
    .await;
}

/// Runs `openssl s_client` against `addr` with extra `args`; `None` if openssl is not installed.
async fn openssl_s_client(addr: SocketAddr, args: &[&str]) -> Option<(bool, String)> {
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("app.test")
        .args(args)
        .stdin(std::process::Stdio::null());
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join");
    let output = match output {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => panic!("running openssl: {err}"),
    };
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // "New, TLSv1.2, Cipher is ECDHE-..." once a handshake completed; "(NONE)" otherwise.
    let negotiated = text
        .lines()
        .any(|l| l.starts_with("New, ") && !l.contains("(NONE)"));
    Some((negotiated, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_tls11_is_refused() {
    with_timeout(60, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;

        let Some((ok12, out12)) = openssl_s_client(proxy.https(), &["-tls1_2"]).await else {
            eprintln!("SKIPPED openssl_tls11_is_refused: `openssl` is not installed");
            return;
        };
        assert!(ok12, "control: openssl -tls1_2 should connect; output:\n{out12}");

        // OpenSSL 3 only offers TLS 1.1 at security level 0.
        let (ok11, out11) =
            openssl_s_client(proxy.https(), &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
                .await
                .expect("openssl present");
        if out11.contains("no protocols available") || out11.contains("unsupported protocol") {
            eprintln!(
                "SKIPPED TLS 1.1 part of openssl_tls11_is_refused: this openssl refuses to offer TLS 1.1 locally:\n{out11}"
            );
            return;
        }
        assert!(
            !ok11,
            "openssl -tls1_1 must not complete a handshake; output:\n{out11}"
        );
        // Refused by the server (an alert or a hang-up), not by openssl before sending anything.
        assert!(
            out11.contains("alert") || out11.contains("unexpected eof"),
            "openssl -tls1_1 should be refused by the server; output:\n{out11}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5b. TLS 1.3 only: `[server] tls_min_version`
// ---------------------------------------------------------------------------------------------

static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The version a new handshake offering only `versions` (SNI app.test) lands on, or why it failed.
async fn handshake_offering(
    proxy: &TestProxy,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ProtocolVersion, String> {
    let mut tls = connect_offering(proxy.https(), "app.test", &[], versions).await?;
    let version = tls.get_ref().1.protocol_version().expect("negotiated");
    let _ = tls.shutdown().await;
    Ok(version)
}

/// A TLS 1.2-only handshake fails with the server's `protocol_version` alert.
async fn assert_tls12_refused(proxy: &TestProxy, when: &str) {
    let err = handshake_offering(proxy, TLS12_ONLY)
        .await
        .expect_err(&format!(
            "{when}: a TLS 1.2-only client must not complete a handshake"
        ));
    assert!(
        err.contains("ProtocolVersion"),
        "{when}: refused by the server's protocol_version alert, got: {err}"
    );
}

/// `GET /v` on app.test with `client`: the status, or the error's text.
async fn status_of(client: &reqwest::Client, proxy: &TestProxy) -> Result<u16, String> {
    client
        .get(https_url(proxy, "app.test", "/v"))
        .send()
        .await
        .map(|resp| resp.status().as_u16())
        .map_err(|err| format!("{err:?}"))
}

/// Rewrites the proxy's config with `edit`, sends SIGHUP and waits for the `n`th reload.
async fn reload_with(proxy: &TestProxy, n: usize, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&proxy.config_path).expect("read config");
    std::fs::write(&proxy.config_path, edit(text)).expect("write config");
    proxy.send_signal("HUP");
    eventually(Duration::from_secs(5), "config reloaded", || {
        log_lines(proxy, "config reloaded").len() >= n
    })
    .await;
}

const MIN_13: &str = "workers = 2\ntls_min_version = \"1.3\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_min_version_13_refuses_tls12_clients() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let config = config(&pki, &backend).replace("workers = 2", MIN_13);
        let proxy = TestProxy::start_tls(&config).await;

        assert_tls12_refused(&proxy, "tls_min_version = \"1.3\"").await;
        assert_eq!(
            handshake_offering(&proxy, TLS13_ONLY).await,
            Ok(rustls::ProtocolVersion::TLSv1_3)
        );
        // the same through a real HTTP client: no answer over 1.2, the backend's 200 over 1.3
        let (tls12, tls13) = clients_by_version(&pki, &proxy);
        let refused = status_of(&tls12, &proxy).await;
        assert!(refused.is_err(), "TLS 1.2 request: {refused:?}");
        assert_eq!(status_of(&tls13, &proxy).await, Ok(200));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_tls_min_version_applies_to_new_handshakes() {
    with_timeout(40, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let (tls12, tls13) = clients_by_version(&pki, &proxy);
        assert_eq!(status_of(&tls12, &proxy).await, Ok(200), "default: TLS 1.2");
        assert_eq!(status_of(&tls13, &proxy).await, Ok(200), "default: TLS 1.3");
        // a TLS 1.2 connection opened before the change, kept open across it
        let held = connect_offering(proxy.https(), "app.test", &["http/1.1"], TLS12_ONLY)
            .await
            .expect("TLS 1.2 handshake under the default");
        let mut held = http1_on(held).await;
        assert_eq!(get_on(&mut held, "/v").await.0, 200);

        reload_with(&proxy, 1, |text| text.replace("workers = 2", MIN_13)).await;
        assert_tls12_refused(&proxy, "after the reload to 1.3").await;
        // a fresh client: the one above may hold a kept-alive 1.2 connection
        let (tls12, _) = clients_by_version(&pki, &proxy);
        assert!(status_of(&tls12, &proxy).await.is_err());
        assert_eq!(status_of(&tls13, &proxy).await, Ok(200));
        assert_eq!(
            get_on(&mut held, "/v").await.0,
            200,
            "a connection made before the reload keeps its session"
        );

        // and back: TLS 1.2 handshakes are accepted again
        reload_with(&proxy, 2, |text| text.replace(MIN_13, "workers = 2")).await;
        assert_eq!(
            handshake_offering(&proxy, TLS12_ONLY).await,
            Ok(rustls::ProtocolVersion::TLSv1_2)
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. HTTP → HTTPS redirect
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_tls_site_redirects_to_https() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let client = http_client(&pki, &proxy);
        let https_port = proxy.https().port();

        for (host, path) in [
            ("app.test", "/a/b?c=1"),
            ("x.app.test", "/"),
            ("app.test", "/p%20q?x=%2F&y"),
        ] {
            for method in [reqwest::Method::GET, reqwest::Method::POST] {
                let resp = client
                    .request(method.clone(), http_url(&proxy, host, path))
                    .send()
                    .await
                    .expect("plain HTTP request");
                assert_eq!(resp.status(), 308, "{method} http://{host}{path}");
                assert_eq!(
                    header(&resp, "location"),
                    Some(format!("https://{host}:{https_port}{path}")),
                    "{method} http://{host}{path}"
                );
                assert_eq!(
                    header(&resp, "strict-transport-security"),
                    None,
                    "HSTS must not be sent over plain HTTP"
                );
                assert_eq!(
                    header(&resp, "x-backend"),
                    None,
                    "redirect must not be proxied"
                );
            }
        }

        // The Location actually works: following it over HTTPS reaches the backend.
        let resp = https_client(&pki, &proxy)
            .get(format!("https://app.test:{https_port}/a/b?c=1"))
            .send()
            .await
            .expect("follow redirect");
        assert_eq!(resp.status(), 200);
        let echo = Echo::parse(&resp.text().await.expect("body"));
        assert_eq!(echo.uri, "/a/b?c=1");
    })
    .await;
}

/// Behind `docker run -p 443:8443` the listener's own port is not the one clients use:
/// `public_https_port` names the right one in redirects, and a reload can change or drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_name_the_public_https_port() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let with_port = |port: &str| {
            config(&pki, &backend).replacen(
                "https = \"127.0.0.1:0\"",
                &format!("https = \"127.0.0.1:0\"\n{port}"),
                1,
            )
        };
        let proxy = TestProxy::start_tls(&with_port("public_https_port = 443")).await;
        let client = http_client(&pki, &proxy);
        let location = |resp: &reqwest::Response| header(resp, "location");
        let resp = client
            .get(http_url(&proxy, "app.test", "/a?b=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 308);
        assert_eq!(location(&resp).as_deref(), Some("https://app.test/a?b=1"));

        for (setting, want) in [
            (
                "public_https_port = 8443".to_string(),
                "https://app.test:8443/a".to_string(),
            ),
            (
                String::new(),
                format!("https://app.test:{}/a", proxy.https().port()),
            ),
        ] {
            std::fs::write(&proxy.config_path, with_port(&setting)).unwrap();
            proxy.send_signal("HUP");
            eventually_async(
                Duration::from_secs(10),
                &format!("redirect to {want}"),
                || async {
                    let resp = client
                        .get(http_url(&proxy, "app.test", "/a"))
                        .send()
                        .await
                        .unwrap();
                    location(&resp).as_deref() == Some(want.as_str())
                },
            )
            .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pending_acme_challenges_and_non_redirecting_sites_are_served_over_http() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let client = http_client(&pki, &proxy);

        // A challenge path for a token Gatehouse is not answering is no exemption: it redirects
        // like any other path, in whatever raw form it comes (only pending tokens are served,
        // by Gatehouse itself: tests/acme.rs)
        for host in ["app.test", "x.app.test"] {
            for path in [
                "/.well-known/acme-challenge/tok",
                "/.well-known/./acme-challenge/tok",
                "/%2Ewell-known/acme-challenge/tok",
                "/.well-known//acme-challenge/tok",
            ] {
                let resp = client
                    .get(http_url(&proxy, host, path))
                    .send()
                    .await
                    .expect("acme request");
                assert_eq!(resp.status(), 308, "{path} on {host} must redirect");
                assert_eq!(
                    header(&resp, "location").as_deref(),
                    Some(
                        format!(
                            "https://{host}:{}/.well-known/acme-challenge/tok",
                            proxy.https().port()
                        )
                        .as_str()
                    ),
                    "{path} on {host}: redirected to the canonical path"
                );
            }
        }

        // Only the challenge directory is exempt.
        for path in ["/.well-known/other", "/.well-known/acme-challengex"] {
            let resp = client
                .get(http_url(&proxy, "app.test", path))
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 308, "{path} should still redirect");
        }

        // redirect_https = false and a site without tls: served over plain HTTP.
        for (host, body) in [("other.test", "other\n"), ("plain.test", "plain\n")] {
            let resp = client
                .get(http_url(&proxy, host, "/x?y=1"))
                .send()
                .await
                .expect("plain HTTP request");
            assert_eq!(resp.status(), 200, "http://{host}");
            assert_eq!(header(&resp, "strict-transport-security"), None);
            assert_eq!(resp.text().await.expect("body"), body);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. HSTS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_only_on_https_responses_of_sites_that_set_it() {
    with_timeout(30, async {
        let pki = Pki::new();
        let backend = echo_backend("echo").await;
        let proxy = start(&pki, &backend).await;
        let https = https_client(&pki, &proxy);

        for host in ["app.test", "x.app.test"] {
            let resp = https
                .get(https_url(&proxy, host, "/"))
                .send()
                .await
                .expect("https request");
            assert_eq!(resp.status(), 200);
            assert_eq!(
                header(&resp, "strict-transport-security").as_deref(),
                Some(HSTS),
                "HTTPS response from {host}"
            );
            assert_eq!(
                resp.headers()
                    .get_all("strict-transport-security")
                    .iter()
                    .count(),
                1,
                "exactly one HSTS header"
            );
        }

        // Responses the proxy makes itself (here a 502) are responses of the site too.
        let resp = https
            .get(https_url(&proxy, "app.test", "/down/x"))
            .send()
            .await
            .expect("https request");
        assert_eq!(resp.status(), 502);
        assert_eq!(
            header(&resp, "strict-transport-security").as_deref(),
            Some(HSTS),
            "HTTPS 502 from app.test"
        );

        let resp = https
            .get(https_url(&proxy, "other.test", "/"))
            .send()
            .await
            .expect("https request");
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "strict-transport-security"), None);

        let http = http_client(&pki, &proxy);
        for (host, path) in [
            ("app.test", "/"),
            ("app.test", "/.well-known/acme-challenge/t"),
            ("other.test", "/"),
            ("plain.test", "/"),
        ] {
            let resp = http
                .get(http_url(&proxy, host, path))
                .send()
                .await
                .expect("http request");
            assert_eq!(
                header(&resp, "strict-transport-security"),
                None,
                "plain-HTTP response from {host}{path} ({})",
                resp.status()
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. gatehouse check
// ---------------------------------------------------------------------------------------------

fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker:?} not in config"))
        + 1
}

/// Writes `config` (and `files`) into a fresh dir and runs `gatehouse check` on it.
fn check(config: &str, files: &[(&str, &str)]) -> (String, support::CmdOutput) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).expect("write file");
    }
    let path = dir.path().join("tls.toml");
    std::fs::write(&path, config).expect("write config");
    let path = path_str(&path).to_string();
    let out = run_gatehouse(&["check", "--config", &path], &[], &[]);
    (path, out)
}

fn tls_site_config(listen_https: bool, tls: &str) -> String {
    let https = if listen_https {
        "https = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        r#"[listen]
http = "127.0.0.1:0"
{https}
[[site]]
hosts = ["app.test"]
tls = {tls}

  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "ok" }}
"#
    )
}

#[test]
fn check_accepts_a_valid_tls_config_with_relative_paths() {
    let pki = Pki::new();
    let config = tls_site_config(true, r#"{ cert = "c.pem", key = "k.pem" }"#);
    let (_, out) = check(
        &config,
        &[("c.pem", &pki.app.chain_pem), ("k.pem", &pki.app.key_pem)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "valid TLS config should pass check; stderr:\n{}",
        out.stderr
    );
}

/// Asserts `gatehouse check` failed as a config error (exit 64) with every needle in its message.
fn assert_check_error(out: &support::CmdOutput, needles: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(CONFIG_ERROR),
        "check should fail; stderr:\n{}",
        out.stderr
    );
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr should contain {needle:?}; got:\n{}",
            out.stderr
        );
    }
}

/// `{ cert = "...", key = "..." }` for two files of the test PKI.
fn tls_files(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        r#"{{ cert = "{}", key = "{}" }}"#,
        path_str(cert),
        path_str(key)
    )
}

#[test]
fn check_reports_a_missing_certificate_file() {
    let pki = Pki::new();
    let config = tls_site_config(true, r#"{ cert = "missing.pem", key = "k.pem" }"#);
    let (path, out) = check(&config, &[("k.pem", &pki.app.key_pem)]);
    // located at the `tls` line, naming the file
    let location = format!("{path}:{}:", line_of(&config, "missing.pem"));
    assert_check_error(&out, &[&location, "missing.pem"]);
}

#[test]
fn check_requires_an_https_listener_for_tls_sites() {
    let pki = Pki::new();
    let files = tls_files(&pki.app.chain_path, &pki.app.key_path);
    let (path, out) = check(&tls_site_config(false, &files), &[]);
    assert_check_error(&out, &[&path, "listen.https", "no HTTPS listener"]);
}

#[test]
fn check_requires_default_sni_to_name_a_tls_sites_host() {
    let pki = Pki::new();
    let files = tls_files(&pki.app.chain_path, &pki.app.key_path);
    let site = tls_site_config(true, &files)
        + "\n[[site]]\nhosts = [\"plain.test\"]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200 }\n";
    for (name, why) in [
        ("nope.test", "no site lists it in `hosts`"),
        ("plain.test", "its site has no `tls`"),
    ] {
        let config = format!("[server]\ndefault_sni = \"{name}\"\n\n{site}");
        let (path, out) = check(&config, &[]);
        let location = format!("{path}:{}:", line_of(&config, "default_sni"));
        assert_check_error(
            &out,
            &[&location, "server.default_sni", why, "\"app.test\""],
        );
    }
    let config = format!("[server]\ndefault_sni = \"APP.test\"\n\n{site}");
    let (_, out) = check(&config, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}

#[test]
fn check_rejects_a_key_that_does_not_match_the_certificate() {
    let pki = Pki::new();
    let files = tls_files(&pki.app.chain_path, &pki.other.key_path);
    let (path, out) = check(&tls_site_config(true, &files), &[]);
    let (cert, key) = (path_str(&pki.app.chain_path), path_str(&pki.other.key_path));
    assert_check_error(&out, &[&path, "does not match", cert, key]);
}

// ---------------------------------------------------------------------------------------------
// 9. Certificate files replaced while running
// ---------------------------------------------------------------------------------------------

const RELOAD_FAILED: &str =
    "certificate files changed but do not load; the previous certificate keeps serving";

/// One site, app.test, with its certificate in `site.pem` / `site.key` next to the config.
async fn start_reloadable(pki: &Pki) -> TestProxy {
    let config = r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"

[[site]]
hosts = ["app.test"]
tls = { cert = "site.pem", key = "site.key" }

  [[site.route]]
  path = "/"
  respond = { status = 200, body = "ok\n" }
"#;
    TestProxy::start_tls_with_files(
        config,
        &[
            ("site.pem", &pki.app.chain_pem),
            ("site.key", &pki.app.key_pem),
        ],
    )
    .await
}

/// `name` in the folder of the proxy's config (where `start_tls_with_files` put the files).
fn site_file(proxy: &TestProxy, name: &str) -> PathBuf {
    proxy
        .config_path
        .parent()
        .expect("config folder")
        .join(name)
}

/// Replaces `path` the way certbot, editors and `kubectl cp` do: write a temp file in the same
/// folder, then rename it over the old one (a new inode; readers never see half a file).
fn replace_file(path: &Path, contents: &str) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the old file");
}

/// The leaf DER a new handshake with SNI app.test is served.
async fn served_leaf(proxy: &TestProxy) -> Vec<u8> {
    raw_handshake(proxy.https(), "app.test", &[])
        .await
        .unwrap_or_else(|err| panic!("new handshake with SNI app.test failed: {err}"))
        .leaf
}

/// Makes new handshakes every 200 ms until one is served `want` (returning how long that took),
/// panicking after `max`. Every handshake before must be served `old`.
async fn wait_for_leaf(proxy: &TestProxy, old: &[u8], want: &[u8], max: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let leaf = served_leaf(proxy).await;
        if leaf == want {
            return start.elapsed();
        }
        assert!(
            leaf == old,
            "after {:?} a new handshake was served neither the old nor the new certificate",
            start.elapsed()
        );
        assert!(
            start.elapsed() < max,
            "new handshakes still get the old certificate {max:?} after the files were replaced; logs:\n{}",
            proxy.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Log lines whose message is `message`.
fn log_lines(proxy: &TestProxy, message: &str) -> Vec<String> {
    proxy
        .logs()
        .into_iter()
        .filter(|line| support::json_str_field(line, "message").as_deref() == Some(message))
        .collect()
}

/// An HTTP/1.1 connection over TLS (SNI app.test, any certificate accepted), kept open by the
/// caller: the sender, and the leaf DER its handshake was served.
async fn open_http1_over_tls(
    proxy: &TestProxy,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    Vec<u8>,
) {
    let tls = connect_any_cert(proxy.https(), "app.test", &["http/1.1"])
        .await
        .expect("TLS handshake");
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.as_ref().to_vec())
        .expect("peer certificate");
    (http1_on(tls).await, leaf)
}

/// HTTP/1.1 over an established TLS stream, the connection driven by a task of its own.
async fn http1_on(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

/// GET `path` with `Host: app.test` on `sender`'s connection: status and body.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    sender
        .ready()
        .await
        .expect("the held connection is still usable");
    let req = hyper::Request::get(path)
        .header("host", "app.test")
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = sender
        .send_request(req)
        .await
        .expect("request on the held connection");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_certificate_files_switches_new_handshakes() {
    with_timeout(40, async {
        let pki = Pki::new();
        let proxy = start_reloadable(&pki).await;
        assert!(
            served_leaf(&proxy).await == pki.app.der,
            "before the change the site should serve the certificate it started with"
        );

        // A connection made before the change, kept open across it.
        let (mut held, held_leaf) = open_http1_over_tls(&proxy).await;
        assert!(held_leaf == pki.app.der);
        assert_eq!(get_on(&mut held, "/before").await, (200, "ok\n".into()));

        // New leaf, same names, same CA, new key: key first, then the chain, each renamed into place.
        let new = pki.issue(&["app.test"]);
        assert!(new.der != pki.app.der);
        replace_file(&site_file(&proxy, "site.key"), &new.key_pem);
        replace_file(&site_file(&proxy, "site.pem"), &new.chain_pem);

        let took = wait_for_leaf(&proxy, &pki.app.der, &new.der, Duration::from_secs(10)).await;
        eprintln!("new handshakes got the new certificate {took:?} after the files were replaced");

        // The new chain verifies against the CA for a normal client, end to end.
        let resp = https_client(&pki, &proxy)
            .get(https_url(&proxy, "app.test", "/after"))
            .send()
            .await
            .expect("verified HTTPS request after the swap");
        assert_eq!(resp.status(), 200);

        // The connection from before still works, on its old session.
        assert_eq!(
            get_on(&mut held, "/held").await,
            (200, "ok\n".into()),
            "a connection made before the swap must keep working"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_files_keep_the_old_certificate() {
    with_timeout(40, async {
        let pki = Pki::new();
        let proxy = start_reloadable(&pki).await;
        assert!(served_leaf(&proxy).await == pki.app.der);

        // Only the chain is replaced; the key on disk is still the old one and does not match it.
        let new = pki.issue(&["app.test"]);
        replace_file(&site_file(&proxy, "site.pem"), &new.chain_pem);

        // Over 5 s (at least two polls) every new handshake still gets the old certificate.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            let leaf = served_leaf(&proxy).await;
            assert!(
                leaf == pki.app.der,
                "{:?} after a mismatched chain was written, a new handshake was served {}",
                start.elapsed(),
                if leaf == new.der {
                    "the new (keyless) certificate"
                } else {
                    "an unknown certificate"
                }
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let warnings = log_lines(&proxy, RELOAD_FAILED);
        assert_eq!(
            warnings.len(),
            1,
            "the failed reload should be logged exactly once over repeated polls; logs:\n{}",
            proxy.logs().join("\n")
        );
        assert_eq!(
            support::json_str_field(&warnings[0], "level").as_deref(),
            Some("WARN"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].contains("does not match"),
            "the warning should say why the files do not load: {}",
            warnings[0]
        );

        // Once the matching key lands, new handshakes switch over.
        replace_file(&site_file(&proxy, "site.key"), &new.key_pem);
        let took = wait_for_leaf(&proxy, &pki.app.der, &new.der, Duration::from_secs(10)).await;
        eprintln!("new handshakes got the new certificate {took:?} after the key was fixed");
        let resp = https_client(&pki, &proxy)
            .get(https_url(&proxy, "app.test", "/after"))
            .send()
            .await
            .expect("verified HTTPS request after the fix");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            log_lines(&proxy, RELOAD_FAILED).len(),
            1,
            "no further warnings once the files load"
        );
    })
    .await;
}

/// One request over a new TLS connection made with `config` (so with its session store); how
/// the handshake went. Reading the response to the end takes in the server's session tickets.
async fn request_with(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> rustls::HandshakeKind {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("other.test").expect("server name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tls.get_ref().1.handshake_kind().expect("handshake done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_for_many_clients_and_across_a_reload() {
    with_timeout(60, async {
        let pki = Pki::new();
        let backend = echo_backend("backend").await;
        let proxy = start(&pki, &backend).await;
        // more clients than rustls's default server cache could keep tickets for (256 entries)
        let clients: Vec<Arc<rustls::ClientConfig>> = (0..300)
            .map(|_| any_cert_client(&[&rustls::version::TLS13], &[]))
            .collect();
        for client in &clients {
            assert_eq!(
                request_with(client, proxy.https()).await,
                rustls::HandshakeKind::Full
            );
        }
        // a reload builds a new TLS config; the ticket key must outlive it
        let text = std::fs::read_to_string(&proxy.config_path).unwrap();
        std::fs::write(
            &proxy.config_path,
            text.replace("other\\n", "other, reloaded\\n"),
        )
        .unwrap();
        proxy.send_signal("HUP");
        eventually(Duration::from_secs(5), "config reloaded", || {
            proxy.logs().iter().any(|l| l.contains("config reloaded"))
        })
        .await;
        let mut resumed = 0;
        for client in &clients {
            if request_with(client, proxy.https()).await == rustls::HandshakeKind::Resumed {
                resumed += 1;
            }
        }
        assert_eq!(resumed, clients.len());
    })
    .await;
}
