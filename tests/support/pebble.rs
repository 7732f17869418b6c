//! Pebble (the ACME test CA, Debian package `pebble`) with pebble-challtestsrv, started by
//! `tests/acme-testbed/start-pebble.sh` on a fixed block of ports `base..base+6` (ACME API
//! `base`, management `base+1`, HTTP-01 `base+2`, TLS-ALPN-01 `base+3`, DNS `base+4`,
//! challtestsrv `base+5`) and stopped on drop. Each test file keeps its own blocks so files never
//! share a CA. (`tests/acme.rs` has its own, which restarts pebble in place.)

use std::collections::HashMap;
use std::process::Command;

const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/acme-testbed");
/// What pebble 2.4 logs for every request to the ACME newOrder endpoint (successful or not).
const NEW_ORDER_LOG: &str = "POST /order-plz -> calling handler()";

pub struct Pebble {
    dir: tempfile::TempDir,
    pub base: u16,
    env: HashMap<String, String>,
}

impl Pebble {
    /// `extra_env` goes to `start-pebble.sh` (e.g. `ACME_TESTBED_CERT_VALIDITY`, or
    /// `ACME_TESTBED_PEBBLE_DNS` to resolve through a test DNS server).
    pub fn start(base: u16, extra_env: &[(&str, &str)]) -> Pebble {
        let dir = tempfile::tempdir().expect("pebble state dir");
        let ports = [
            "ACME_TESTBED_ACME_PORT",
            "ACME_TESTBED_MGMT_PORT",
            "ACME_TESTBED_HTTP01_PORT",
            "ACME_TESTBED_TLSALPN01_PORT",
            "ACME_TESTBED_DNS_PORT",
            "ACME_TESTBED_CTS_PORT",
        ];
        let mut cmd = Command::new("bash");
        cmd.arg(format!("{TESTBED}/start-pebble.sh"))
            .arg(dir.path());
        for (offset, key) in (0u16..).zip(ports) {
            cmd.env(key, (base + offset).to_string());
        }
        cmd.envs(extra_env.iter().copied());
        let out = cmd.output().expect("run start-pebble.sh");
        assert!(
            out.status.success(),
            "start-pebble.sh (ports {base}..) failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env")).expect("pebble env file");
        let env = env
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Pebble { dir, base, env }
    }

    /// A `KEY=value` of the state dir's `env` file (`ACME_DIRECTORY_URL`, `ACME_CA_FILE`, ...).
    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("pebble env has no {key}"))
    }

    /// The root the issued certificates chain to (PEM).
    pub fn root(&self) -> Vec<u8> {
        std::fs::read(self.var("PEBBLE_ROOT_FILE")).expect("pebble-root.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// newOrder requests pebble has seen so far.
    pub fn new_orders(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(NEW_ORDER_LOG))
            .count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(format!("{TESTBED}/stop-pebble.sh"))
            .arg(self.dir.path())
            .output();
    }
}

/// The leaf certificate a TLS handshake to `addr` with SNI `sni` is served, verified against
/// `root_pem` only (Pebble's issuing root): an error says why the handshake failed.
pub async fn served_leaf(
    addr: std::net::SocketAddr,
    sni: &str,
    root_pem: &[u8],
) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem) {
        roots.add(cert.expect("root PEM")).expect("add root");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake with SNI {sni}: {e}"))?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .ok_or("no certificate")?;
    Ok(certs[0].as_ref().to_vec())
}
