//! TLS termination: certificates loaded from files, a resolver that picks one by SNI, and the
//! rustls server config (TLS 1.2 and 1.3 only, rustls's safe suites, ALPN `h2` + `http/1.1`).
//!
//! A name no TLS site serves gets no certificate: the handshake fails with an alert rather than
//! showing another site's certificate. A catch-all TLS site (`hosts = ["*"]` or none) is the
//! exception: its certificate answers any name, including clients that send no SNI.

use crate::config::{HostPattern, Site, TlsFiles};
use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {}: {source}", path.display())]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks, leaf first)", .0.display())]
    NoCert(PathBuf),
    #[error("cannot read private key {}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("private key {} is not usable: {source}", path.display())]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// Reads a PEM chain and key and checks that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|source| TlsError::Cert {
            path: files.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    let provider = ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: files.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(_) => Err(TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
    }
}

/// Picks the certificate for an SNI name: exact, longest wildcard, then a catch-all site's.
#[derive(Default)]
pub struct CertResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    any: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field(
                "wildcard",
                &self.wildcard.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .field("any", &self.any.is_some())
            .finish()
    }
}

impl CertResolver {
    pub fn new(sites: &[Site]) -> Result<CertResolver, TlsError> {
        let mut resolver = CertResolver::default();
        for site in sites {
            let Some(files) = &site.tls else { continue };
            let key = load_certified_key(files)?;
            for host in &site.hosts {
                match host {
                    HostPattern::Any => resolver.any = Some(key.clone()),
                    HostPattern::Exact(h) => {
                        resolver.exact.insert(h.clone(), key.clone());
                    }
                    HostPattern::Wildcard(s) => resolver.wildcard.push((s.clone(), key.clone())),
                }
            }
        }
        resolver
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(resolver)
    }

    fn find(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.any.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, key)| key.clone())
            .or_else(|| self.any.clone())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(hello.server_name())
    }
}

/// The server config for one snapshot; `None` when no site has TLS.
pub fn server_config(sites: &[Site]) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    if sites.iter().all(|s| s.tls.is_none()) {
        return Ok(None);
    }
    let resolver = CertResolver::new(sites)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}
