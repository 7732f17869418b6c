//! Automatic certificates (`tls = "acme"`) against a real ACME CA: pebble, started per test from
//! `tests/acme-testbed/` on its own block of ports, validating HTTP-01 and TLS-ALPN-01 challenges
//! against the real binary. Issuance, the issued chain over HTTP/1.1 and HTTP/2, reuse of the
//! stored certificate after a restart, renewal under an open connection, and a CA that is down at
//! start. Clients trust only pebble's issuing root, never the system store.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    echo_backend, header, json_str_field, run_gatehouse, with_timeout, AcceptAnyCert, Backend,
    Echo, TestProxy,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The names of the ACME site; both go on one certificate.
const APP: &str = "app.test";
const WWW: &str = "www.app.test";

/// Each test runs its own pebble on `base..base+6` (see [`Pebble::start`]). Tests run two at a
/// time and other test binaries only use ephemeral ports, so fixed blocks below 32768 are free.
const BASE_HTTP01: u16 = 24100;
const BASE_TLS_ALPN01: u16 = 24110;
const BASE_RESTART: u16 = 24120;
const BASE_RENEWAL: u16 = 24130;
const BASE_CA_DOWN: u16 = 24140;
const BASE_ONE_FAILS: u16 = 24150;
const BASE_EAB: u16 = 24160;
const BASE_PROFILE: u16 = 24180;

/// Limit for a certificate to be issued once gatehouse listens (pebble issues in ~1 s).
const ISSUANCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Pebble
// ---------------------------------------------------------------------------------------------

const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/acme-testbed");

/// What pebble 2.4 logs for every request to the ACME newOrder endpoint (successful or not).
const NEW_ORDER_LOG: &str = "POST /order-plz -> calling handler()";

/// A pebble + pebble-challtestsrv pair from `start-pebble.sh`, stopped on drop. Ports:
/// ACME API `base`, management `base+1`, HTTP-01 `base+2`, TLS-ALPN-01 `base+3`, DNS `base+4`,
/// challtestsrv `base+5`.
struct Pebble {
    dir: tempfile::TempDir,
    base: u16,
    extra_env: Vec<(String, String)>,
    /// `KEY=value` pairs from `STATE/env`, as of the last start.
    env: HashMap<String, String>,
    running: bool,
}

impl Pebble {
    /// Starts pebble in a new state dir; `extra_env` goes to `start-pebble.sh` (e.g.
    /// `ACME_TESTBED_CERT_VALIDITY`).
    fn start(base: u16, extra_env: &[(&str, &str)]) -> Pebble {
        let mut pebble = Pebble {
            dir: tempfile::tempdir().expect("pebble state dir"),
            base,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env: HashMap::new(),
            running: false,
        };
        pebble.launch();
        pebble
    }

    fn launch(&mut self) {
        let ports = [
            ("ACME_TESTBED_ACME_PORT", 0),
            ("ACME_TESTBED_MGMT_PORT", 1),
            ("ACME_TESTBED_HTTP01_PORT", 2),
            ("ACME_TESTBED_TLSALPN01_PORT", 3),
            ("ACME_TESTBED_DNS_PORT", 4),
            ("ACME_TESTBED_CTS_PORT", 5),
        ];
        let mut cmd = Command::new("bash");
        cmd.arg(format!("{TESTBED}/start-pebble.sh"))
            .arg(self.dir.path());
        for (key, offset) in ports {
            cmd.env(key, (self.base + offset).to_string());
        }
        for (key, value) in &self.extra_env {
            cmd.env(key, value);
        }
        let out = cmd.output().expect("run start-pebble.sh");
        assert!(
            out.status.success(),
            "start-pebble.sh (ports {}..{}) failed with {}:\n{}{}",
            self.base,
            self.base + 5,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
        let env = std::fs::read_to_string(self.dir.path().join("env")).expect("pebble env file");
        self.env = env
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Stops pebble (idempotent); the state dir, its API CA and logs stay.
    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let _ = Command::new("bash")
            .arg(format!("{TESTBED}/stop-pebble.sh"))
            .arg(self.dir.path())
            .output();
    }

    /// Stops (if running) and starts again in the same state dir: same ports and API CA, but a
    /// new issuing root and no accounts or orders (pebble keeps those in memory).
    fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from pebble's env file"))
    }

    fn directory_url(&self) -> &str {
        self.var("ACME_DIRECTORY_URL")
    }

    /// The CA of pebble's ACME API (not of the certificates it issues).
    fn api_ca_file(&self) -> &str {
        self.var("ACME_CA_FILE")
    }

    /// The root of the certificates pebble issues; new on every start.
    fn issuing_root_pem(&self) -> Vec<u8> {
        std::fs::read(self.var("PEBBLE_ROOT_FILE")).expect("read pebble-root.pem")
    }

    fn http01_port(&self) -> u16 {
        self.base + 2
    }

    fn tls_alpn01_port(&self) -> u16 {
        self.base + 3
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// newOrder requests pebble received since its last start.
    fn new_orders(&self) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(NEW_ORDER_LOG))
            .count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Gatehouse config and logs
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Challenge {
    Http01,
    TlsAlpn01,
}

/// A pebble, a state dir, an echo backend and the proxy with the ACME site in front of it.
/// Destructure it with every field bound: a field left to `..` would be dropped at once.
struct Acme {
    pebble: Pebble,
    proxy: TestProxy,
    /// Pebble's issuing root, as PEM.
    root: Vec<u8>,
    _state: tempfile::TempDir,
    _backend: Backend,
}

impl Acme {
    async fn start(base: u16, pebble_env: &[(&str, &str)], challenge: Challenge) -> Acme {
        let pebble = Pebble::start(base, pebble_env);
        let state = tempfile::tempdir().expect("state dir");
        let backend = echo_backend("echo").await;
        let config = config(&pebble, state.path(), challenge, &backend, "");
        let proxy = TestProxy::start_tls(&config).await;
        Acme {
            root: pebble.issuing_root_pem(),
            pebble,
            proxy,
            _state: state,
            _backend: backend,
        }
    }
}

/// The ACME site (`app.test` + `www.app.test`, proxied to `upstream`) validated by `challenge`
/// against `pebble`; the listener pebble connects to is on pebble's port for that challenge, the
/// other on port 0. `extra_sites` (TOML `[[site]]` tables) is appended after the ACME site.
fn config(
    pebble: &Pebble,
    state_dir: &Path,
    challenge: Challenge,
    upstream: &Backend,
    extra_sites: &str,
) -> String {
    let (http, https, challenge) = match challenge {
        Challenge::Http01 => (pebble.http01_port(), 0, "http-01"),
        Challenge::TlsAlpn01 => (0, pebble.tls_alpn01_port(), "tls-alpn-01"),
    };
    format!(
        r#"
[listen]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{https}"

[server]
state_dir = "{state_dir}"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
email = "ops@app.test"
challenge = "{challenge}"
retry_initial = "1s"
retry_max = "4s"

[[site]]
hosts = ["{APP}", "{WWW}"]
tls = "acme"

  [[site.route]]
  path = "/"
  upstream = "app"
{extra_sites}
[upstream.app]
servers = ["{upstream}"]
"#,
        state_dir = path_str(state_dir),
        directory = pebble.directory_url(),
        ca_root = pebble.api_ca_file(),
        upstream = upstream.addr,
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Gatehouse's log lines whose `message` is `message`.
fn log_lines(proxy: &TestProxy, message: &str) -> Vec<String> {
    proxy
        .logs()
        .into_iter()
        .filter(|line| json_str_field(line, "message").as_deref() == Some(message))
        .collect()
}

/// The tail of gatehouse's and pebble's logs, for failure messages.
fn diagnostics(proxy: &TestProxy, pebble: &Pebble) -> String {
    fn tail(text: &str, n: usize) -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
    format!(
        "\n--- gatehouse stderr (last 40 lines):\n{}\n--- pebble.log (last 30 lines):\n{}",
        tail(&proxy.logs().join("\n"), 40),
        tail(&pebble.log(), 30)
    )
}

/// Polls every 200 ms (up to `limit`) for a log line with `message`, at least `count` of them.
async fn wait_for_log(
    proxy: &TestProxy,
    pebble: &Pebble,
    message: &str,
    count: usize,
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let lines = log_lines(proxy, message);
        if lines.len() >= count {
            return lines;
        }
        if Instant::now() >= deadline {
            panic!(
                "gatehouse logged {} {message:?} line(s) within {limit:?}, wanted {count}{}",
                lines.len(),
                diagnostics(proxy, pebble)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// TLS clients
// ---------------------------------------------------------------------------------------------

/// What a test client trusts.
#[derive(Clone, Copy)]
enum Trust<'a> {
    /// Only this PEM root (pebble's issuing root): the full chain must be served and valid.
    Root(&'a [u8]),
    /// Any certificate (handshake signatures still checked): shows whether one is served at all.
    Anything,
}

/// A TLS connection to `addr` with SNI `sni`, offering `alpn`. `Err` describes the failure.
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    trust: Trust<'_>,
    alpn: &[&str],
) -> Result<TlsStream<TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let mut config = match trust {
        Trust::Root(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.expect("root PEM")).expect("add root");
            }
            builder.with_root_certificates(roots)
        }
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
    }
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect to {addr}: {err}"))?;
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|err| format!("handshake with SNI {sni} failed: {err}"))
}

/// DER of the leaf certificate a connection was served.
fn leaf_of(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| cert.as_ref().to_vec())
        .expect("peer certificate")
}

/// One handshake; the served leaf's DER.
async fn handshake_leaf(addr: SocketAddr, sni: &str, trust: Trust<'_>) -> Result<Vec<u8>, String> {
    let mut tls = tls_connect(addr, sni, trust, &[]).await?;
    let leaf = leaf_of(&tls);
    let _ = tls.shutdown().await;
    Ok(leaf)
}

/// Polls every 200 ms (up to `limit`) until a handshake with SNI `sni` on the proxy's HTTPS
/// listener verifies against `root_pem`; returns the served leaf's DER.
async fn wait_for_cert(
    proxy: &TestProxy,
    pebble: &Pebble,
    sni: &str,
    root_pem: &[u8],
    limit: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match handshake_leaf(proxy.https(), sni, Trust::Root(root_pem)).await {
            Ok(leaf) => return leaf,
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            panic!(
                "no certificate chaining to pebble's root for SNI {sni} within {limit:?} \
                 (last attempt: {last}){}",
                diagnostics(proxy, pebble)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A reqwest client trusting only `root_pem`, resolving both ACME names to `addr`, never
/// following redirects.
fn client(root_pem: &[u8], addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem).expect("root PEM"))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .resolve(APP, addr)
        .resolve(WWW, addr);
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

/// GETs `https://HOST:PORT/PATH` and checks it reached the echo backend over HTTPS with `version`.
async fn assert_proxied(
    client: &reqwest::Client,
    proxy: &TestProxy,
    host: &str,
    path: &str,
    version: reqwest::Version,
) {
    let url = format!("https://{host}:{}{path}", proxy.https().port());
    let resp = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {url} ({version:?}) failed: {err:?}"));
    assert_eq!(resp.status(), 200, "GET {url} ({version:?})");
    assert_eq!(resp.version(), version, "GET {url}: negotiated protocol");
    assert_eq!(header(&resp, "x-backend").as_deref(), Some("echo"));
    let echo = Echo::parse(&resp.text().await.expect("body"));
    assert_eq!(echo.uri, path);
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
}

/// Whether a file called `name` is anywhere under `dir`.
fn has_file(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let path = entry.path();
            path.file_name().is_some_and(|n| n == name) || (path.is_dir() && has_file(&path, name))
        })
}

/// Every file in `state_dir` that holds a secret (by name: contains "key", or an account `.json`;
/// by content: a PEM private key or instant-acme's `key_pkcs8`) must be mode 0600, and there
/// must be at least a certificate key and account credentials.
fn assert_secrets_are_private(state_dir: &Path) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read state dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(state_dir, &mut files);
    let mut pem_keys = 0;
    let mut accounts = 0;
    let mut report = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let content =
            String::from_utf8_lossy(&std::fs::read(path).expect("read state file")).into_owned();
        let mode = std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        report.push(format!("{mode:o} {}", path.display()));
        let is_pem_key = content.contains("PRIVATE KEY");
        let is_account =
            content.contains("key_pkcs8") || (name.contains("account") && name.ends_with(".json"));
        pem_keys += usize::from(is_pem_key);
        accounts += usize::from(is_account);
        if is_pem_key || is_account || name.contains("key") {
            assert_eq!(
                mode,
                0o600,
                "{} holds a secret but has mode {mode:o}",
                path.display()
            );
        }
    }
    assert!(
        pem_keys > 0 && accounts > 0,
        "state_dir should hold a certificate private key (PEM) and the ACME account credentials; \
         found {pem_keys} key file(s) and {accounts} account file(s):\n{}",
        report.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 1-2. Issuance with HTTP-01 and TLS-ALPN-01
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_certificate_served_over_h1_and_h2() {
    with_timeout(60, async {
        let Acme {
            pebble,
            proxy,
            root,
            _state: state,
            _backend,
        } = Acme::start(BASE_HTTP01, &[], Challenge::Http01).await;

        let leaf = wait_for_cert(&proxy, &pebble, APP, &root, ISSUANCE).await;
        let www_leaf = handshake_leaf(proxy.https(), WWW, Trust::Root(&root))
            .await
            .unwrap_or_else(|err| panic!("{WWW}: {err}{}", diagnostics(&proxy, &pebble)));
        assert!(
            www_leaf == leaf,
            "{APP} and {WWW} must be served the same certificate (both names as SANs)"
        );
        let issued = log_lines(&proxy, "certificate issued");
        assert!(
            issued
                .iter()
                .any(|l| l.contains(APP) && l.contains(WWW) && l.contains("not_after")),
            "expected a \"certificate issued\" line with both names and not_after, got {issued:?}"
        );
        assert!(
            pebble.new_orders() >= 1,
            "pebble logged no new order{}",
            diagnostics(&proxy, &pebble)
        );

        let h1 = client(&root, proxy.https(), true);
        let h2 = client(&root, proxy.https(), false);
        for host in [APP, WWW] {
            assert_proxied(&h1, &proxy, host, "/h1?q=1", reqwest::Version::HTTP_11).await;
            assert_proxied(&h2, &proxy, host, "/h2?q=2", reqwest::Version::HTTP_2).await;
        }

        assert_secrets_are_private(state.path());

        // Plain HTTP: redirected to HTTPS, except ACME challenge paths (even unknown tokens).
        let plain = client(&root, proxy.addr, false);
        let http_port = proxy.addr.port();
        let resp = plain
            .get(format!("http://{APP}:{http_port}/plain?x=1"))
            .send()
            .await
            .expect("plain HTTP request");
        assert_eq!(resp.status(), 308, "plain HTTP to a TLS site");
        let want = format!("https://{APP}:{}/plain?x=1", proxy.https().port());
        assert_eq!(header(&resp, "location"), Some(want));
        let resp = plain
            .get(format!(
                "http://{APP}:{http_port}/.well-known/acme-challenge/xyz"
            ))
            .send()
            .await
            .expect("plain HTTP challenge request");
        // only a token an order is waiting on is served over plain HTTP (issue 17): any other
        // path under the challenge prefix is redirected like every other path
        assert_eq!(
            resp.status(),
            308,
            "an unknown ACME challenge token is redirected to HTTPS"
        );
        let want = format!(
            "https://{APP}:{}/.well-known/acme-challenge/xyz",
            proxy.https().port()
        );
        assert_eq!(header(&resp, "location"), Some(want));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_a_certificate() {
    with_timeout(60, async {
        let Acme {
            pebble,
            proxy,
            root,
            _state,
            _backend,
        } = Acme::start(BASE_TLS_ALPN01, &[], Challenge::TlsAlpn01).await;

        wait_for_cert(&proxy, &pebble, APP, &root, ISSUANCE).await;
        handshake_leaf(proxy.https(), WWW, Trust::Root(&root))
            .await
            .unwrap_or_else(|err| panic!("{WWW}: {err}{}", diagnostics(&proxy, &pebble)));
        let h2 = client(&root, proxy.https(), false);
        assert_proxied(&h2, &proxy, APP, "/alpn", reqwest::Version::HTTP_2).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. The stored certificate is reused after a restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_the_stored_certificate() {
    with_timeout(60, async {
        // pebble keeps its accounts in memory only: it stays up across the proxy's restart.
        let pebble = Pebble::start(BASE_RESTART, &[]);
        let state = tempfile::tempdir().expect("state dir");
        let backend = echo_backend("echo").await;
        let config = config(&pebble, state.path(), Challenge::Http01, &backend, "");
        let root = pebble.issuing_root_pem();

        let mut first = TestProxy::start_tls(&config).await;
        let issued = wait_for_cert(&first, &pebble, APP, &root, ISSUANCE).await;
        let orders = pebble.new_orders();
        assert!(orders >= 1, "pebble logged no new order");
        // the renewal schedule is stored right after the certificate
        let schedule = state.path().join("certs");
        let stored = support::poll_until(Duration::from_secs(10), || {
            let found = has_file(&schedule, "renewal.json");
            async move { found }
        })
        .await;
        assert!(
            stored.is_some(),
            "no renewal.json{}",
            diagnostics(&first, &pebble)
        );
        first.send_signal("TERM");
        let exit = first
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("gatehouse did not exit within 10s of SIGTERM");
        assert!(
            exit.success(),
            "gatehouse exited with {exit:?} after SIGTERM"
        );
        // `gatehouse certs` reads the stored certificate without the proxy running
        let listed = run_gatehouse(
            &["certs", "--config", path_str(&first.config_path)],
            &[],
            &[],
        );
        assert!(
            listed.status.success(),
            "gatehouse certs: {}",
            listed.stderr
        );
        let row = listed
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{APP},{WWW} ")))
            .unwrap_or_else(|| panic!("no row for the ACME site in:\n{}", listed.stdout));
        assert!(
            row.contains(" acme ") && row.contains("Pebble Intermediate CA"),
            "row: {row}"
        );
        // pebble 2.4.0's directory has no `renewalInfo` (no ARI): the running proxy stored a
        // third of the lifetime as the schedule, and `certs` says so under the row
        let renewal = listed
            .stdout
            .lines()
            .skip_while(|l| *l != row)
            .nth(1)
            .unwrap_or_default();
        assert!(
            renewal.starts_with("  renewal: a third of the lifetime (the CA offers no ARI)"),
            "no renewal line under the row:\n{}",
            listed.stdout
        );
        drop(first);

        let second = TestProxy::start_tls(&config).await;
        // the first handshake already gets it: the stored certificate is in place before the
        // listener serves, not loaded by a task racing the first clients
        let first_try = handshake_leaf(second.https(), APP, Trust::Root(&root)).await;
        let served = first_try.unwrap_or_else(|err| {
            panic!(
                "the first handshake after a restart: {err}{}",
                diagnostics(&second, &pebble)
            )
        });
        assert!(
            served == issued,
            "after a restart the stored certificate must be served, not a new one"
        );
        wait_for_log(
            &second,
            &pebble,
            "certificate loaded",
            1,
            Duration::from_secs(1),
        )
        .await;
        // Give a stray background order time to show up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            pebble.new_orders(),
            orders,
            "the restarted proxy ordered a certificate although a valid one was stored{}",
            diagnostics(&second, &pebble)
        );
        assert!(
            log_lines(&second, "certificate issued").is_empty(),
            "the restarted proxy logged \"certificate issued\"{}",
            diagnostics(&second, &pebble)
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Renewal: new handshakes get the new certificate, an open connection keeps working
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_while_a_connection_stays_open() {
    with_timeout(90, async {
        // 15 s certificates: renewal is due when a third of that (5 s) remains.
        let Acme {
            pebble,
            proxy,
            root,
            _state,
            _backend,
        } = Acme::start(
            BASE_RENEWAL,
            &[("ACME_TESTBED_CERT_VALIDITY", "15")],
            Challenge::Http01,
        )
        .await;
        let first = wait_for_cert(&proxy, &pebble, APP, &root, ISSUANCE).await;

        // One TLS connection, one HTTP/1.1 client on it: if it broke, requests would fail.
        let tls = tls_connect(proxy.https(), APP, Trust::Root(&root), &["http/1.1"])
            .await
            .unwrap_or_else(|err| panic!("{err}{}", diagnostics(&proxy, &pebble)));
        assert!(
            leaf_of(&tls) == first,
            "the kept connection has the first certificate"
        );
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        let conn = tokio::spawn(conn);

        let started = Instant::now();
        let limit = Duration::from_secs(45);
        let mut renewed_after = None;
        let mut sent = 0;
        let mut after_swap = 0;
        while after_swap < 5 {
            sent += 1;
            let path = format!("/keepalive/{sent}");
            let req = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, APP)
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = sender.send_request(req).await.unwrap_or_else(|err| {
                panic!(
                    "request {sent} on the kept-open connection failed after {:?} (renewed: {}): \
                     {err}{}",
                    started.elapsed(),
                    renewed_after.is_some(),
                    diagnostics(&proxy, &pebble)
                )
            });
            assert_eq!(
                resp.status(),
                200,
                "request {sent} on the kept-open connection"
            );
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let echo = Echo::parse(&String::from_utf8_lossy(&body));
            assert_eq!(echo.uri, path);

            if renewed_after.is_some() {
                after_swap += 1;
            } else if let Ok(leaf) = handshake_leaf(proxy.https(), APP, Trust::Root(&root)).await {
                if leaf != first {
                    renewed_after = Some(started.elapsed());
                }
            }
            if renewed_after.is_none() && started.elapsed() > limit {
                panic!(
                    "no new certificate on new handshakes within {limit:?} of the first \
                     ({sent} requests on the kept connection succeeded){}",
                    diagnostics(&proxy, &pebble)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            log_lines(&proxy, "certificate issued").len() >= 2,
            "a renewal should log \"certificate issued\" again{}",
            diagnostics(&proxy, &pebble)
        );
        assert!(
            !conn.is_finished(),
            "the kept connection closed{}",
            diagnostics(&proxy, &pebble)
        );
        drop(sender);
        eprintln!(
            "renewed {:?} after the first certificate was seen; {sent} requests on one connection",
            renewed_after.unwrap_or_default()
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. The CA is down at start: everything else serves, the ACME site follows once it is back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_unreachable_at_start_then_back() {
    with_timeout(90, async {
        // Start once for its API CA (kept in the state dir, reused by the next start), then stop.
        let mut pebble = Pebble::start(BASE_CA_DOWN, &[]);
        let old_root = pebble.issuing_root_pem();
        pebble.stop();

        let state = tempfile::tempdir().expect("state dir");
        let files = tempfile::tempdir().expect("cert dir");
        let static_cert = rcgen::generate_simple_self_signed(vec!["static.test".to_string()])
            .expect("static cert");
        let cert_path = files.path().join("static.pem");
        let key_path = files.path().join("static.key");
        std::fs::write(&cert_path, static_cert.cert.pem()).expect("write cert");
        std::fs::write(&key_path, static_cert.key_pair.serialize_pem()).expect("write key");
        let extra_sites = format!(
            r#"
[[site]]
hosts = ["plain.test"]

  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "plain\n" }}

[[site]]
hosts = ["static.test"]
tls = {{ cert = "{cert}", key = "{key}" }}

  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "static\n" }}
"#,
            cert = path_str(&cert_path),
            key = path_str(&key_path),
        );
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start_tls(&config(
            &pebble,
            state.path(),
            Challenge::Http01,
            &backend,
            &extra_sites,
        ))
        .await;

        // Failures are logged, and retried.
        let failed = wait_for_log(
            &proxy,
            &pebble,
            "certificate order failed",
            2,
            Duration::from_secs(15),
        )
        .await;
        assert!(
            failed
                .iter()
                .all(|l| l.contains("WARN") && l.contains("retry_in") && l.contains("error")),
            "\"certificate order failed\" lines should be warnings with error and retry_in: {failed:?}"
        );

        // The rest of the proxy serves meanwhile.
        let resp = reqwest::Client::builder()
            .no_proxy()
            .resolve("plain.test", proxy.addr)
            .build()
            .expect("client")
            .get(format!("http://plain.test:{}/", proxy.addr.port()))
            .send()
            .await
            .expect("plain site over HTTP");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), "plain\n");
        let leaf = handshake_leaf(proxy.https(), "static.test", Trust::Anything)
            .await
            .unwrap_or_else(|err| panic!("static site: {err}{}", diagnostics(&proxy, &pebble)));
        assert!(
            leaf.as_slice() == static_cert.cert.der().as_ref(),
            "static.test must be served its own certificate"
        );
        if let Ok(leaf) = handshake_leaf(proxy.https(), APP, Trust::Anything).await {
            panic!(
                "{APP} completed a handshake (leaf of {} bytes) before any certificate was issued",
                leaf.len()
            );
        }

        pebble.restart();
        let new_root = pebble.issuing_root_pem();
        assert!(new_root != old_root, "pebble made a new issuing root");
        wait_for_cert(&proxy, &pebble, APP, &new_root, ISSUANCE).await;
        wait_for_log(
            &proxy,
            &pebble,
            "certificate issued",
            1,
            Duration::from_secs(1),
        )
        .await;
        // The static site is unaffected.
        handshake_leaf(proxy.https(), "static.test", Trust::Anything)
            .await
            .unwrap_or_else(|err| panic!("static site after issuance: {err}"));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. One site's failing validation does not hold up another's certificate
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_site_does_not_block_another() {
    with_timeout(60, async {
        let pebble = Pebble::start(BASE_ONE_FAILS, &[]);
        // pebble's DNS sends `broken.test` to 127.0.0.2, where nothing answers HTTP-01
        let cts = pebble.var("CHALLTESTSRV_URL").to_string();
        let added = reqwest::Client::new()
            .post(format!("{cts}/add-a"))
            .body(r#"{"host":"broken.test","addresses":["127.0.0.2"]}"#)
            .send()
            .await
            .expect("challtestsrv add-a");
        assert!(added.status().is_success(), "add-a: {}", added.status());
        let state = tempfile::tempdir().expect("state dir");
        let backend = echo_backend("echo").await;
        let broken = r#"
[[site]]
hosts = ["broken.test"]
tls = "acme"
  [[site.route]]
  path = "/"
  respond = { body = "broken\n" }
"#;
        let proxy = TestProxy::start_tls(&config(
            &pebble,
            state.path(),
            Challenge::Http01,
            &backend,
            broken,
        ))
        .await;
        let root = pebble.issuing_root_pem();

        wait_for_cert(&proxy, &pebble, APP, &root, ISSUANCE).await;
        let failures = wait_for_log(&proxy, &pebble, "certificate order failed", 1, ISSUANCE).await;
        let failure = &failures[0];
        assert!(
            failure.contains("broken.test") && failure.contains("127.0.0.2"),
            "the failure names the site and carries the CA's reason: {failure}"
        );
        assert!(
            handshake_leaf(proxy.https(), "broken.test", Trust::Anything)
                .await
                .is_err(),
            "broken.test has no certificate, so its handshake must fail"
        );
        let h1 = client(&root, proxy.https(), true);
        assert_proxied(&h1, &proxy, APP, "/still-fine", reqwest::Version::HTTP_11).await;

        // a reload without the broken site stops its orders; app.test's work is not restarted
        let without = config(&pebble, state.path(), Challenge::Http01, &backend, "");
        std::fs::write(&proxy.config_path, without).unwrap();
        proxy.send_signal("HUP");
        wait_for_log(
            &proxy,
            &pebble,
            "certificate no longer configured; its ACME task stops",
            1,
            Duration::from_secs(5),
        )
        .await;
        let stopped = log_lines(
            &proxy,
            "certificate no longer configured; its ACME task stops",
        );
        assert!(
            stopped[0].contains("broken.test") && !stopped[0].contains(APP),
            "{stopped:?}"
        );
        let (orders, failures) = (
            pebble.new_orders(),
            log_lines(&proxy, "certificate order failed").len(),
        );
        // retry_max is 4 s: a live task would have ordered again within 6 s
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            pebble.new_orders(),
            orders,
            "no order after the reload{}",
            diagnostics(&proxy, &pebble)
        );
        assert_eq!(
            log_lines(&proxy, "certificate order failed").len(),
            failures
        );
        assert_eq!(
            log_lines(&proxy, "certificate issued").len(),
            1,
            "app.test was not ordered again"
        );
        assert_proxied(&h1, &proxy, APP, "/after-reload", reqwest::Version::HTTP_11).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. External account binding: required by the CA, given in [acme]
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_sent_when_the_ca_requires_it() {
    with_timeout(60, async {
        const KID: &str = "gatehouse-test";
        // 32 random-looking bytes, base64url as a CA hands them out
        const KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
        let env = [
            ("ACME_TESTBED_EAB_KID", KID),
            ("ACME_TESTBED_EAB_HMAC_KEY", KEY),
        ];
        let pebble = Pebble::start(BASE_EAB, &env);
        let backend = echo_backend("echo").await;
        let root = pebble.issuing_root_pem();
        let with_eab = |state: &Path, kid: &str, key: &str| {
            config(&pebble, state, Challenge::Http01, &backend, "").replace(
                "[acme]\n",
                &format!("[acme]\neab_kid = \"{kid}\"\neab_hmac_key = \"{key}\"\n"),
            )
        };

        // a wrong key: the CA refuses the account, and the log says why
        let state = tempfile::tempdir().expect("state dir");
        let wrong = "AAAAZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
        let proxy = TestProxy::start_tls(&with_eab(state.path(), KID, wrong)).await;
        let failed = wait_for_log(&proxy, &pebble, "certificate order failed", 1, ISSUANCE).await;
        assert!(
            failed[0].contains("unauthorized") || failed[0].to_lowercase().contains("external"),
            "the CA's reason is logged: {}",
            failed[0]
        );
        drop(proxy);

        let state = tempfile::tempdir().expect("state dir");
        let proxy = TestProxy::start_tls(&with_eab(state.path(), KID, KEY)).await;
        wait_for_cert(&proxy, &pebble, APP, &root, ISSUANCE).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. `acme.profile`: asked of the CA only when its directory lists it
// ---------------------------------------------------------------------------------------------

/// Debian's Pebble (2.4) lists no profiles: an order for one fails before it is placed, saying
/// what the CA offers, and nothing is ordered. (A CA that lists it gets `profile` in the
/// newOrder; that side is instant-acme's `NewOrder::profile`, not provable with this Pebble.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_the_ca_does_not_list_is_not_ordered_and_says_why() {
    with_timeout(60, async {
        let pebble = Pebble::start(BASE_PROFILE, &[]);
        let state = tempfile::tempdir().expect("state dir");
        let backend = echo_backend("echo").await;
        let config = config(&pebble, state.path(), Challenge::Http01, &backend, "").replace(
            "retry_max = \"4s\"",
            "retry_max = \"4s\"\nprofile = \"shortlived\"",
        );
        let proxy = TestProxy::start_tls(&config).await;
        let failures = wait_for_log(&proxy, &pebble, "certificate order failed", 1, ISSUANCE).await;
        let failure = &failures[0];
        assert!(
            failure.contains("no certificate profile `shortlived`")
                && failure.contains("does not offer profiles"),
            "the failure names the profile and what the CA offers: {failure}"
        );
        assert_eq!(
            pebble.new_orders(),
            0,
            "no order may be placed for a profile the CA does not list{}",
            diagnostics(&proxy, &pebble)
        );
    })
    .await;
}
