//! Issue 20, client certificates (`client_auth`, mTLS): real rustls clients with and without a
//! certificate, one from another CA, `optional` mode, the `{tls.client.*}` placeholders reaching
//! the backend (client-sent copies replaced), `421` for a `client_auth` site on a connection
//! whose handshake did not verify a certificate for it (HTTP/1.1 and HTTP/2), no certificate
//! asked for by sites without `client_auth`, a replaced CA file picked up on reload, and
//! `gatehouse check` errors. Real binary, certificates from throwaway CAs made per test.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{
    echo_backend, eventually_async, run_gatehouse, with_timeout, AcceptAnyCert, Backend, Echo,
    TestProxy,
};
use tokio::net::TcpStream;

/// Exit status for an invalid config (EX_DATAERR).
const CONFIG_ERROR: i32 = 64;

// ---------------------------------------------------------------------------------------------
// Test PKI
// ---------------------------------------------------------------------------------------------

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names`: chain PEM and key PEM.
    fn server(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (format!("{}{}", cert.pem(), self.pem()), key.serialize_pem())
    }

    /// A client certificate: CN `cn`, O "Example Corp", SANs `dns` and a SPIFFE URI.
    fn client(&self, cn: &str, dns: &str) -> ClientCert {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example Corp");
        params.distinguished_name.push(DnType::CommonName, cn);
        let uri = format!("spiffe://example.org/{cn}");
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().unwrap()));
        params.serial_number = Some(vec![0x0a, 0x1b, 0x2c].into());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        ClientCert {
            chain: vec![cert.der().clone(), self.cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientCert {
    /// SHA-256 of the leaf, lower-case hex.
    fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.chain[0]);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The files and certificates of one test: a server CA whose one certificate covers every
/// site, the clients' CA (`clients-ca.pem`), a partner CA (`partners-ca.pem`, for a second
/// `client_auth` site) and a client certificate from each.
struct Pki {
    dir: tempfile::TempDir,
    partners_ca: Ca,
    /// From `clients_ca`.
    svc: ClientCert,
    /// From `partners_ca`: another CA to `api.test`.
    partner: ClientCert,
}

const SITES: &[&str] = &["api.test", "opt.test", "partner.test", "www.test"];

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = Ca::new("Server CA");
        let (chain, key) = server_ca.server(SITES);
        std::fs::write(dir.path().join("server.pem"), chain).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        let clients_ca = Ca::new("Clients CA");
        let partners_ca = Ca::new("Partners CA");
        std::fs::write(dir.path().join("clients-ca.pem"), clients_ca.pem()).unwrap();
        std::fs::write(dir.path().join("partners-ca.pem"), partners_ca.pem()).unwrap();
        let svc = clients_ca.client("svc-a", "svc-a.internal");
        let partner = partners_ca.client("partner-1", "partner-1.example");
        Pki {
            dir,
            partners_ca,
            svc,
            partner,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// Sets every placeholder (and overwrites the client's copy of `X-Client-Subject`).
const RULES: &str = r#"request_headers = { set = { "X-Client-Subject" = "{tls.client.subject}", "X-Client-San" = "{tls.client.san}", "X-Client-Fingerprint" = "{tls.client.fingerprint}", "X-Client-Serial" = "{tls.client.serial}", "X-Client-Verified" = "{tls.client.verified}" } }"#;

/// api.test: `client_auth` (require) against the clients' CA; opt.test: optional, same CA;
/// partner.test: require, the partners' CA; www.test: no `client_auth`. All proxy to `backend`
/// with the placeholders as headers (from `[server]`, so every site has them).
fn config(pki: &Pki, backend: &Backend) -> String {
    let site = |host: &str, client_auth: &str| {
        format!(
            r#"
[[site]]
hosts = ["{host}"]
tls = {{ cert = "{cert}", key = "{key}" }}
{client_auth}

  [[site.route]]
  path = "/"
  upstream = "backend"
"#,
            cert = pki.path("server.pem"),
            key = pki.path("server.key"),
        )
    };
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\n[server]\nworkers = 2\n{RULES}\n{}{}{}{}\n[upstream.backend]\nservers = [\"{}\"]\n",
        site(
            "api.test",
            &format!(r#"client_auth = {{ ca = "{}" }}"#, pki.path("clients-ca.pem"))
        ),
        site(
            "opt.test",
            &format!(
                r#"client_auth = {{ ca = "{}", mode = "optional" }}"#,
                pki.path("clients-ca.pem")
            )
        ),
        site(
            "partner.test",
            &format!(
                r#"client_auth = {{ ca = "{}", mode = "require" }}"#,
                pki.path("partners-ca.pem")
            )
        ),
        site("www.test", ""),
        backend.addr,
    )
}

async fn start(pki: &Pki) -> (TestProxy, Backend) {
    let backend = echo_backend("echo").await;
    let proxy = TestProxy::start_tls(&config(pki, &backend)).await;
    (proxy, backend)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Presents `cert` when asked (any server certificate accepted), and counts how often the
/// server asked.
#[derive(Debug)]
struct Presents {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicUsize,
}

impl ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

fn presents(cert: Option<&ClientCert>) -> Arc<Presents> {
    let provider = rustls::crypto::ring::default_provider();
    let key = cert.map(|c| {
        let signing = provider
            .key_provider
            .load_private_key(c.key.clone_key())
            .unwrap();
        Arc::new(CertifiedKey::new(c.chain.clone(), signing))
    });
    Arc::new(Presents {
        key,
        asked: AtomicUsize::new(0),
    })
}

fn client_config(presents: Arc<Presents>, alpn: &str) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_client_cert_resolver(presents);
    config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    // every connection makes a full handshake: resumption is not what is tested here
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Tls, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// A connection's requests, HTTP/1.1 or HTTP/2 as ALPN chose.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2,
}

/// A TLS connection with `sni` presenting `cert` (if asked), speaking `proto`: the requests
/// sender, or why the handshake or the HTTP handshake failed.
async fn open(
    proxy: &TestProxy,
    sni: &str,
    cert: Option<&ClientCert>,
    proto: Proto,
) -> Result<Sender, String> {
    let alpn = match proto {
        Proto::H1 => "http/1.1",
        Proto::H2 => "h2",
    };
    let tls = connect(proxy.https(), sni, client_config(presents(cert), alpn)).await?;
    let io = hyper_util::rt::TokioIo::new(tls);
    match proto {
        Proto::H1 => {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
        Proto::H2 => {
            let exec = hyper_util::rt::TokioExecutor::new();
            let (sender, conn) = hyper::client::conn::http2::handshake(exec, io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        }
    }
}

/// GET / for `host` on the connection, with a forged `X-Client-Subject`: status and body, or
/// what failed (in TLS 1.3 a refused client certificate shows on the first read).
async fn get(sender: &mut Sender, host: &str) -> Result<(u16, String), String> {
    let req = |uri: &str| {
        hyper::Request::get(uri)
            .header("x-client-subject", "CN=admin")
            .header("x-client-verified", "true")
    };
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let req = req("/").header("host", host).body(Empty::new()).unwrap();
            s.send_request(req).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let uri = format!("https://{host}/");
            s.send_request(req(&uri).body(Empty::new()).unwrap()).await
        }
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// One request on a new connection (SNI = host).
async fn get_new(
    proxy: &TestProxy,
    host: &str,
    cert: Option<&ClientCert>,
    proto: Proto,
) -> Result<(u16, String), String> {
    let mut sender = open(proxy, host, cert, proto).await?;
    get(&mut sender, host).await
}

/// Asserts a 200 from the backend: what it saw.
fn echoed(what: &str, answer: Result<(u16, String), String>) -> Echo {
    let (status, body) = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(status, 200, "{what}: {body}");
    Echo::parse(&body)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_client_certificate_reaches_the_backend_and_forged_copies_do_not() {
    with_timeout(30, async {
        let pki = Pki::new();
        let (proxy, _backend) = start(&pki).await;
        for proto in [Proto::H1, Proto::H2] {
            let what = format!("api.test with a certificate over {proto:?}");
            let echo = echoed(
                &what,
                get_new(&proxy, "api.test", Some(&pki.svc), proto).await,
            );
            assert_eq!(
                echo.all("x-client-subject"),
                ["CN=svc-a,O=Example Corp"],
                "{what}: the forged copy must be replaced"
            );
            assert_eq!(
                echo.header("x-client-san").as_deref(),
                Some("svc-a.internal, spiffe://example.org/svc-a")
            );
            assert_eq!(
                echo.header("x-client-fingerprint"),
                Some(pki.svc.fingerprint())
            );
            assert_eq!(echo.header("x-client-serial").as_deref(), Some("0A1B2C"));
            assert_eq!(echo.all("x-client-verified"), ["true"]);
        }
        // a site without client_auth never shows a certificate, even on a connection that has one
        let mut sender = open(&proxy, "api.test", Some(&pki.svc), Proto::H2)
            .await
            .unwrap();
        let echo = echoed(
            "www.test on api.test's connection",
            get(&mut sender, "www.test").await,
        );
        assert_eq!(echo.all("x-client-verified"), ["false"]);
        assert_eq!(echo.header("x-client-subject").unwrap_or_default(), "");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_mode_refuses_no_certificate_and_one_from_another_ca() {
    with_timeout(30, async {
        let pki = Pki::new();
        let (proxy, backend) = start(&pki).await;
        for proto in [Proto::H1, Proto::H2] {
            let none = get_new(&proxy, "api.test", None, proto).await;
            assert!(none.is_err(), "{proto:?} without a certificate: {none:?}");
            let other = get_new(&proxy, "api.test", Some(&pki.partner), proto).await;
            assert!(
                other.is_err(),
                "{proto:?} with another CA's certificate: {other:?}"
            );
        }
        // the partners' site takes the partner's certificate and refuses the clients' one
        let echo = echoed(
            "partner.test",
            get_new(&proxy, "partner.test", Some(&pki.partner), Proto::H1).await,
        );
        assert_eq!(
            echo.header("x-client-subject").as_deref(),
            Some("CN=partner-1,O=Example Corp")
        );
        let svc = get_new(&proxy, "partner.test", Some(&pki.svc), Proto::H1).await;
        assert!(
            svc.is_err(),
            "the clients' certificate on partner.test: {svc:?}"
        );
        assert_eq!(
            backend.connections(),
            1,
            "only the partner's request got through"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mode_lets_a_client_without_a_certificate_in() {
    with_timeout(30, async {
        let pki = Pki::new();
        let (proxy, _backend) = start(&pki).await;
        for proto in [Proto::H1, Proto::H2] {
            let echo = echoed(
                "opt.test without",
                get_new(&proxy, "opt.test", None, proto).await,
            );
            assert_eq!(echo.all("x-client-verified"), ["false"], "{proto:?}");
            assert_eq!(echo.header("x-client-subject").unwrap_or_default(), "");
            assert_eq!(echo.header("x-client-fingerprint").unwrap_or_default(), "");
            let what = "opt.test with a certificate";
            let echo = echoed(
                what,
                get_new(&proxy, "opt.test", Some(&pki.svc), proto).await,
            );
            assert_eq!(echo.all("x-client-verified"), ["true"]);
            assert_eq!(
                echo.header("x-client-subject").as_deref(),
                Some("CN=svc-a,O=Example Corp")
            );
            // a certificate that is sent must verify, optional or not
            let other = get_new(&proxy, "opt.test", Some(&pki.partner), proto).await;
            assert!(
                other.is_err(),
                "{proto:?} opt.test with another CA's: {other:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_auth_site_on_a_connection_not_verified_for_it_is_misdirected() {
    with_timeout(30, async {
        let pki = Pki::new();
        let (proxy, backend) = start(&pki).await;
        for proto in [Proto::H1, Proto::H2] {
            // (SNI, certificate, Host, status)
            let cases: [(&str, Option<&ClientCert>, &str, u16); 6] = [
                // the handshake of a site without client_auth asked for no certificate
                ("www.test", Some(&pki.svc), "api.test", 421),
                ("www.test", None, "opt.test", 421),
                // optional without a certificate does not pass for require (same CA)
                ("opt.test", None, "api.test", 421),
                // verified, but by another CA
                ("api.test", Some(&pki.svc), "partner.test", 421),
                ("partner.test", Some(&pki.partner), "opt.test", 421),
                // verified for the same CA: fine either way
                ("opt.test", Some(&pki.svc), "api.test", 200),
            ];
            for (sni, cert, host, want) in cases {
                let mut sender = open(&proxy, sni, cert, proto).await.unwrap();
                let (status, body) = get(&mut sender, host).await.unwrap();
                assert_eq!(status, want, "{proto:?}: SNI {sni}, Host {host}: {body}");
                if want == 421 {
                    assert!(body.contains("client certificate"), "{body}");
                }
                // the connection serves its own site still
                let (status, _) = get(&mut sender, sni).await.unwrap();
                assert_eq!(status, 200, "{proto:?}: SNI {sni}, then its own Host");
            }
        }
        assert!(backend.connections() >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_without_client_auth_ask_for_no_certificate() {
    with_timeout(30, async {
        let pki = Pki::new();
        let (proxy, _backend) = start(&pki).await;
        let asked = |sni: &'static str| {
            let proxy = &proxy;
            let cert = &pki.svc;
            async move {
                let presents = presents(Some(cert));
                let config = client_config(presents.clone(), "http/1.1");
                let tls = connect(proxy.https(), sni, config).await.unwrap();
                drop(tls);
                presents.asked.load(Ordering::Relaxed)
            }
        };
        assert_eq!(asked("www.test").await, 0, "www.test has no client_auth");
        assert_eq!(asked("api.test").await, 1, "api.test asks");
        assert_eq!(asked("opt.test").await, 1, "opt.test asks");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_ca_file_is_read_on_reload() {
    with_timeout(40, async {
        let pki = Pki::new();
        let (proxy, _backend) = start(&pki).await;
        let ok = get_new(&proxy, "api.test", Some(&pki.svc), Proto::H1).await;
        assert_eq!(ok.map(|(s, _)| s), Ok(200));
        let refused = get_new(&proxy, "api.test", Some(&pki.partner), Proto::H1).await;
        assert!(
            refused.is_err(),
            "the partner's before the CA changes: {refused:?}"
        );
        // the clients' CA file now holds the partners' CA
        let path = pki.path("clients-ca.pem");
        let tmp = format!("{path}.new");
        std::fs::write(&tmp, pki.partners_ca.pem()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        proxy.send_signal("HUP");
        let took = eventually_async(Duration::from_secs(10), "the new CA applies", || async {
            get_new(&proxy, "api.test", Some(&pki.partner), Proto::H1)
                .await
                .is_ok_and(|(status, _)| status == 200)
        })
        .await;
        let old = get_new(&proxy, "api.test", Some(&pki.svc), Proto::H1).await;
        assert!(
            old.is_err(),
            "the old CA's certificate after the reload: {old:?}"
        );
        let reloaded = proxy
            .logs()
            .iter()
            .any(|l| l.contains("client CA files read again"));
        assert!(reloaded, "the reload says why it applied; took {took:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// gatehouse check
// ---------------------------------------------------------------------------------------------

/// `site` (lines after `[[site]]`) in a config with an HTTPS listener and the route; the CA and
/// certificate files next to it.
fn check(site: &str, ca_pem: &str) -> (String, String, support::CmdOutput) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Server CA");
    let (chain, key) = ca.server(&["app.test"]);
    std::fs::write(dir.path().join("server.pem"), chain).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    std::fs::write(dir.path().join("clients-ca.pem"), ca_pem).unwrap();
    let config = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n\n[[site]]\nhosts = [\"app.test\"]\n{site}\n\n  [[site.route]]\n  path = \"/\"\n  respond = {{ status = 200, body = \"ok\" }}\n"
    );
    let path = dir.path().join("mtls.toml");
    std::fs::write(&path, &config).unwrap();
    let path = path.to_str().unwrap().to_string();
    let out = run_gatehouse(&["check", "--config", &path], &[], &[]);
    drop(dir);
    (config, path, out)
}

const TLS: &str = r#"tls = { cert = "server.pem", key = "server.key" }"#;

#[test]
fn check_accepts_client_auth_and_its_placeholders() {
    let ca = Ca::new("Clients CA").pem();
    let site = format!(
        "{TLS}\nclient_auth = {{ ca = \"clients-ca.pem\", mode = \"optional\" }}\nresponse_headers = {{ set = {{ \"X-Who\" = \"{{tls.client.subject}}\" }} }}"
    );
    let (_, _, out) = check(&site, &ca);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}

#[test]
fn check_reports_client_auth_errors_at_their_line() {
    let ca = Ca::new("Clients CA").pem();
    let cases: [(&str, String, &str, &str, &[&str]); 7] = [
        (
            "no tls",
            "client_auth = { ca = \"clients-ca.pem\" }".into(),
            &ca,
            "client_auth",
            &["`site.client_auth`", "needs `tls`"],
        ),
        (
            "bad mode",
            format!("{TLS}\nclient_auth = {{ ca = \"clients-ca.pem\", mode = \"sometimes\" }}"),
            &ca,
            "sometimes",
            &["`site.client_auth.mode`", "`sometimes`", "\"require\"", "\"optional\""],
        ),
        (
            "plain HTTP served",
            format!("{TLS}\nredirect_https = false\nclient_auth = {{ ca = \"clients-ca.pem\" }}"),
            &ca,
            "redirect_https",
            &["`site.redirect_https`", "client_auth", "plain HTTP"],
        ),
        (
            "missing CA file",
            format!("{TLS}\nclient_auth = {{ ca = \"nowhere.pem\" }}"),
            &ca,
            "nowhere.pem",
            &["`site.client_auth.ca`", "nowhere.pem"],
        ),
        (
            "no certificate in the CA file",
            format!("{TLS}\nclient_auth = {{ ca = \"clients-ca.pem\" }}"),
            "not a certificate\n",
            "clients-ca.pem",
            &["`site.client_auth.ca`", "clients-ca.pem", "BEGIN CERTIFICATE"],
        ),
        (
            "unknown key",
            format!("{TLS}\nclient_auth = {{ ca = \"clients-ca.pem\", verify_depth = 2 }}"),
            &ca,
            "verify_depth",
            &["verify_depth", "`ca`", "`mode`"],
        ),
        (
            "unknown placeholder",
            format!("{TLS}\nclient_auth = {{ ca = \"clients-ca.pem\" }}\nresponse_headers = {{ set = {{ \"X-Who\" = \"{{tls.client.issuer}}\" }} }}"),
            &ca,
            "tls.client.issuer",
            &["{tls.client.issuer}", "{tls.client.subject}", "{tls.client.fingerprint}"],
        ),
    ];
    for (what, site, ca_pem, marker, needles) in cases {
        let (config, path, out) = check(&site, ca_pem);
        assert_eq!(
            out.status.code(),
            Some(CONFIG_ERROR),
            "{what}: {}",
            out.stderr
        );
        let line = config.lines().position(|l| l.contains(marker)).unwrap() + 1;
        let at = format!("{path}:{line}:");
        assert!(
            out.stderr.contains(&at),
            "{what}: want {at} in:\n{}",
            out.stderr
        );
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "{what}: want {needle:?} in:\n{}",
                out.stderr
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cost (run by hand: `cargo test --test mtls handshake_cost -- --ignored --nocapture`)
// ---------------------------------------------------------------------------------------------

/// The proxy's CPU time so far (user + system), from /proc.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10 // USER_HZ = 100
}

/// CPU ms per full handshake (TLS 1.3, no resumption) plus one HTTP/1.1 request, over `n`.
async fn per_handshake(proxy: &TestProxy, sni: &str, cert: Option<&ClientCert>, n: u32) -> f64 {
    let before = cpu_ms(proxy.pid);
    for _ in 0..n {
        let answer = get_new(proxy, sni, cert, Proto::H1).await;
        assert_eq!(answer.map(|(s, _)| s), Ok(200), "{sni}");
    }
    (cpu_ms(proxy.pid) - before) as f64 / f64::from(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn handshake_cost() {
    let pki = Pki::new();
    let backend = echo_backend("echo").await;
    let with = config(&pki, &backend);
    let without = with
        .lines()
        .filter(|l| !l.starts_with("client_auth"))
        .collect::<Vec<_>>()
        .join("\n");
    let n = 400;
    let plain = TestProxy::start_tls(&without).await;
    per_handshake(&plain, "www.test", None, 20).await;
    let base = per_handshake(&plain, "www.test", None, n).await;
    drop(plain);
    let proxy = TestProxy::start_tls(&with).await;
    per_handshake(&proxy, "www.test", None, 20).await;
    let other = per_handshake(&proxy, "www.test", None, n).await;
    let mtls = per_handshake(&proxy, "api.test", Some(&pki.svc), n).await;
    println!(
        "CPU per handshake + request: no client_auth anywhere {base:.2} ms; a site without it next to client_auth sites {other:.2} ms; a client_auth site with a certificate {mtls:.2} ms"
    );
}
