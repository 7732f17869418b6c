//! TLS termination: certificates loaded from files, a resolver that picks one by SNI, and the
//! rustls server config (TLS 1.2 and 1.3, or 1.3 alone with `[server] tls_min_version = "1.3"`;
//! rustls's safe suites, ALPN `h2` + `http/1.1`).
//!
//! A name no TLS site serves gets no certificate: the handshake fails with an alert rather than
//! showing another site's certificate. A catch-all TLS site (`hosts = ["*"]` or none) is the
//! exception: its certificate answers any name.
//!
//! A client that sends no SNI (it connected by IP address: rustls reports no name for an IP
//! either) gets the default certificate: `[server] default_sni`'s, as if the client had sent that
//! name; without it, the only TLS site's; else a catch-all TLS site's; else none (the handshake
//! fails as for an unknown name).
//!
//! Every certificate sits in a `CertSlot` that outlives nothing but its snapshot: certificate files
//! are polled and a changed pair is swapped in; ACME slots are filled and renewed by `acme`. A slot
//! that is still empty (an ACME certificate not issued yet) fails the handshake cleanly.
//!
//! Sites with `client_auth` are served by configs of their own (`ServerConfigs`), one per CA and
//! mode, chosen from the ClientHello's SNI before the handshake goes on; without `client_auth`
//! anywhere there is one config and no lookup (see `client` for what a verified handshake
//! leaves on its connection).

pub mod client;

use crate::config::{ClientAuthMode, HostPattern, Site, SiteTls, TlsFiles, TlsVersion};
use arc_swap::{ArcSwap, ArcSwapOption};
use client::{CaId, ClientCa};
use rustls::crypto::ring;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// The current certificate for some names; `None` until one exists.
pub type CertSlot = Arc<ArcSwapOption<CertifiedKey>>;

/// How often certificate files are checked for changes. Polling `stat` survives what file
/// watches miss: editors' rename-on-save and Kubernetes secret symlink swaps.
const FILE_POLL: Duration = Duration::from_secs(2);

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
    #[error("cannot read CA roots {}: {source}", path.display())]
    Roots {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)", .0.display())]
    NoRoots(PathBuf),
    #[error("CA root in {} is not usable: {source}", path.display())]
    BadRoot {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client CA {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    /// A bug, not a config problem: `crate::load` reads every file a config names.
    #[error("{0}: not read with the config")]
    NotLoaded(String),
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
    certified_key(chain, key).map_err(|e| match e {
        KeyError::Unusable(source) => TlsError::BadKey {
            path: files.key.clone(),
            source,
        },
        KeyError::Mismatch => TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
    })
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("private key is not usable: {0}")]
    Unusable(rustls::Error),
    #[error("private key does not match the certificate")]
    Mismatch,
}

/// Pairs a chain (leaf first) with its key, checking that they belong together.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, KeyError> {
    let signing_key = ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(KeyError::Unusable)?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(_) => Err(KeyError::Mismatch),
    }
}

/// Every certificate in a PEM file (`ca_root`).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let roots: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|source| TlsError::Roots {
            path: path.to_path_buf(),
            source,
        })?;
    if roots.is_empty() {
        return Err(TlsError::NoRoots(path.to_path_buf()));
    }
    Ok(roots)
}

/// A slot serving `key` (read from `files` when they had `stamp`) and kept current: a changed
/// pair that loads is swapped in for new handshakes; one that does not (say, the cert written
/// before the key) is retried on the next poll while the old certificate keeps serving. The
/// watcher ends with the slot.
pub fn watched_slot(files: &TlsFiles, stamp: FileStamp, key: Arc<CertifiedKey>) -> CertSlot {
    let slot: CertSlot = Arc::new(ArcSwapOption::new(Some(key)));
    tokio::spawn(watch_files(files.clone(), stamp, Arc::downgrade(&slot)));
    slot
}

/// Polls on the runtime's timer, but `stat`s and reads on the blocking pool: a slow disk (or
/// a few hundred certificates) never holds up a thread serving traffic.
async fn watch_files(
    files: TlsFiles,
    mut seen: FileStamp,
    slot: Weak<ArcSwapOption<CertifiedKey>>,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(FILE_POLL).await;
        if slot.strong_count() == 0 {
            return;
        }
        let (at, before) = (files.clone(), seen.clone());
        let Ok(change) = tokio::task::spawn_blocking(move || reread(&at, &before)).await else {
            return; // the runtime is shutting down
        };
        let Some((stamp, loaded)) = change else {
            continue;
        };
        let Some(slot) = slot.upgrade() else { return };
        match loaded {
            Ok(key) => {
                slot.store(Some(key));
                seen = stamp;
                failing = false;
                tracing::info!(cert = %files.cert.display(), "certificate files changed; new handshakes use the new certificate");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "certificate files changed but do not load; the previous certificate keeps serving");
            }
            Err(_) => {}
        }
    }
}

/// `None` while the files are as `seen`; else their new stamp and what they load to now.
fn reread(
    files: &TlsFiles,
    seen: &FileStamp,
) -> Option<(FileStamp, Result<Arc<CertifiedKey>, TlsError>)> {
    let stamp = FileStamp::of(files);
    (stamp != *seen).then(|| (stamp, load_certified_key(files)))
}

/// What `stat` says about some files (following symlinks); any change means "read again".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStamp(Vec<Option<(SystemTime, u64, u64)>>);

impl FileStamp {
    pub fn of(files: &TlsFiles) -> FileStamp {
        FileStamp::of_paths([files.cert.as_path(), files.key.as_path()])
    }

    /// The stamps of several sets of files, in order, as one.
    pub fn join(stamps: impl IntoIterator<Item = FileStamp>) -> FileStamp {
        FileStamp(stamps.into_iter().flat_map(|s| s.0).collect())
    }

    pub fn of_paths<'a>(paths: impl IntoIterator<Item = &'a Path>) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let one = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        };
        FileStamp(paths.into_iter().map(one).collect())
    }
}

/// Which TLS site answers an SNI name: exact, longest wildcard, then a catch-all site; for no
/// name, the default one (see the module doc). The certificate resolver and the choice of a
/// `client_auth` config read the same answer, so a handshake's certificate and its client
/// verification always come from one site.
#[derive(Debug, Default)]
struct Names {
    exact: HashMap<String, usize>,
    wildcard: Vec<(String, usize)>,
    any: Option<usize>,
    /// For handshakes without SNI.
    default: Option<usize>,
}

/// The longest name a lookup lower-cases on the stack (a DNS name has at most 253 bytes).
const NAME_MAX: usize = 256;

impl Names {
    /// The TLS sites (`slots` holds one entry per site, `None` for plain ones); `default_sni`
    /// (validated to name a TLS site's host) picks the site for clients without SNI.
    fn new(sites: &[Site], slots: &[Option<CertSlot>], default_sni: Option<&str>) -> Names {
        let mut names = Names::default();
        for (index, (site, slot)) in sites.iter().zip(slots).enumerate() {
            if slot.is_none() {
                continue;
            }
            for host in &site.hosts {
                match host {
                    HostPattern::Any => names.any = Some(index),
                    HostPattern::Exact(h) => {
                        names.exact.insert(h.clone(), index);
                    }
                    HostPattern::Wildcard(s) => names.wildcard.push((s.clone(), index)),
                }
            }
        }
        names
            .wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        names.default = match default_sni {
            Some(name) => names.site(Some(name)),
            None => only_one(slots),
        }
        .or(names.any);
        names
    }

    /// The site answering `name` (as the client sent it; no allocation for a DNS name).
    fn site(&self, name: Option<&str>) -> Option<usize> {
        let Some(name) = name else {
            return self.default;
        };
        lowered(name, |lower| self.site_lower(lower)).flatten()
    }

    fn site_lower(&self, name: &str) -> Option<usize> {
        if let Some(&site) = self.exact.get(name) {
            return Some(site);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|&(_, site)| site)
            .or(self.any)
    }
}

/// `f` of `name` in lower case without trailing dots (on the stack for a DNS name); `None` for a
/// name that is not UTF-8 after all.
fn lowered<R>(name: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
    let name = name.trim_end_matches('.');
    let mut buf = [0u8; NAME_MAX];
    let Some(lower) = buf.get_mut(..name.len()) else {
        return Some(f(&name.to_ascii_lowercase()));
    };
    lower.copy_from_slice(name.as_bytes());
    lower.make_ascii_lowercase();
    std::str::from_utf8(lower).ok().map(f)
}

/// Certificates of `tls = "on_demand"` sites, one per name (lower case, no trailing dot): filled
/// and renewed by `acme`, read by every snapshot's resolver (it outlives snapshots). A handshake
/// reads the map without a lock; a new name copies it (names arrive at most
/// `max_per_minute` a minute, or once each from the disk after a restart).
#[derive(Default)]
pub struct OnDemandCerts(ArcSwap<HashMap<String, CertSlot>>);

impl OnDemandCerts {
    /// The certificate for `name` (already lower case, no trailing dot).
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.0.load().get(name)?.load_full()
    }

    /// Whether `name` has a slot (filled or being renewed).
    pub fn contains(&self, name: &str) -> bool {
        self.0.load().contains_key(name)
    }

    pub fn insert(&self, name: String, slot: CertSlot) {
        self.0.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.clone(), slot.clone());
            map
        });
    }

    /// Forgets every name (their certificates stay on disk and are read again on demand).
    pub fn clear(&self) {
        self.0.store(Arc::default());
    }

    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which sites are `tls = "on_demand"`, and their certificates.
struct OnDemandSites {
    certs: Arc<OnDemandCerts>,
    /// Per site, in config order.
    sites: Vec<bool>,
}

/// The index of the only TLS site, if there is exactly one.
fn only_one(slots: &[Option<CertSlot>]) -> Option<usize> {
    let mut tls = slots.iter().enumerate().filter(|(_, s)| s.is_some());
    let (first, _) = tls.next()?;
    tls.next().is_none().then_some(first)
}

/// Picks the certificate for an SNI name: the slot of the site `Names` picks, or for an
/// on-demand site the name's own certificate.
pub struct CertResolver {
    names: Arc<Names>,
    /// Per site, in config order; `None` for plain sites (an on-demand site has an empty slot).
    slots: Vec<Option<CertSlot>>,
    /// `None` when no site is `tls = "on_demand"`: every lookup is the slot's, as before.
    on_demand: Option<OnDemandSites>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("names", &self.names)
            .finish()
    }
}

impl CertResolver {
    fn slot(&self, name: Option<&str>) -> Option<&CertSlot> {
        self.slots.get(self.names.site(name)?)?.as_ref()
    }

    /// The certificate for `name`; `Err(())` when it falls to an on-demand site that has none
    /// for it yet.
    fn key(&self, name: Option<&str>) -> Result<Option<Arc<CertifiedKey>>, ()> {
        let (Some(on_demand), Some(name)) = (&self.on_demand, name) else {
            return Ok(self.slot(name).and_then(|slot| slot.load_full()));
        };
        let found = lowered(name, |lower| {
            let site = self.names.site_lower(lower)?;
            if on_demand.sites.get(site) != Some(&true) {
                return Some(Ok(self.slots.get(site)?.as_ref()?.load_full()));
            }
            Some(on_demand.certs.get(lower).map(Some).ok_or(()))
        });
        found.flatten().unwrap_or(Ok(None))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key(hello.server_name()).ok().flatten()
    }
}

/// The server configs of one snapshot: one for the sites without `client_auth` (and names no
/// site serves), and one per group of `client_auth` sites that trust the same CA in the same
/// mode, chosen by the ClientHello's SNI before the handshake goes on (client verification is
/// set per `ServerConfig`). Every config shares the certificate resolver, so a site's
/// certificate is the same whichever config serves it.
pub struct ServerConfigs {
    base: Arc<ServerConfig>,
    /// `None` when no site has `client_auth`: every handshake takes `base` without a lookup.
    client_auth: Option<Box<ClientAuthConfigs>>,
    /// Set when a site is `tls = "on_demand"`, to tell a name that needs a certificate ordered.
    on_demand: Option<Arc<CertResolver>>,
}

struct ClientAuthConfigs {
    names: Arc<Names>,
    /// Per site, in config order: the index of its group in `groups`.
    site_group: Vec<Option<usize>>,
    groups: Vec<(Arc<ServerConfig>, CaId)>,
}

impl ServerConfigs {
    /// Whether `sni` falls to a `tls = "on_demand"` site that has no certificate for it yet
    /// (the handshake then waits for one). Without such a site, one branch.
    pub fn on_demand_miss(&self, sni: Option<&str>) -> bool {
        match &self.on_demand {
            None => false,
            Some(resolver) => resolver.key(sni).is_err(),
        }
    }

    /// The config for a ClientHello naming `sni`, and for a `client_auth` site's config the CA
    /// it verifies client certificates against.
    pub fn pick(&self, sni: Option<&str>) -> (&Arc<ServerConfig>, Option<CaId>) {
        let Some(groups) = &self.client_auth else {
            return (&self.base, None);
        };
        let group = groups
            .names
            .site(sni)
            .and_then(|site| *groups.site_group.get(site)?);
        match group.and_then(|g| groups.groups.get(g)) {
            Some((config, ca)) => (config, Some(*ca)),
            None => (&self.base, None),
        }
    }
}

/// The server configs for one snapshot; `None` when no site has TLS. `cas` holds one entry per
/// site (config order), the site's `client_auth` as read. `min` and `default_sni` are
/// server-wide.
pub fn server_configs(
    sites: &[Site],
    slots: &[Option<CertSlot>],
    cas: &[Option<ClientCa>],
    resumption: &Resumptions,
    (min, default_sni): (TlsVersion, Option<&str>),
    on_demand: &Arc<OnDemandCerts>,
) -> Result<Option<Arc<ServerConfigs>>, TlsError> {
    if slots.iter().all(Option::is_none) {
        return Ok(None);
    }
    let names = Arc::new(Names::new(sites, slots, default_sni));
    let demand: Vec<bool> = sites
        .iter()
        .map(|s| s.tls == Some(SiteTls::OnDemand))
        .collect();
    let on_demand = demand.contains(&true).then(|| OnDemandSites {
        certs: on_demand.clone(),
        sites: demand,
    });
    let resolver = Arc::new(CertResolver {
        names: names.clone(),
        slots: slots.to_vec(),
        on_demand,
    });
    let base = server_config(resolver.clone(), &resumption.base, min, None)?;
    let mut client_auth = None;
    if cas.iter().any(Option::is_some) {
        let mut groups: Vec<(Arc<ServerConfig>, CaId)> = Vec::new();
        let mut keys = Vec::new();
        let mut site_group = Vec::with_capacity(cas.len());
        for ca in cas {
            let Some(ca) = ca else {
                site_group.push(None);
                continue;
            };
            let key = (ca.id, ca.mode);
            let index = match keys.iter().position(|k| *k == key) {
                Some(index) => index,
                None => {
                    let resumed = resumption.group(key)?;
                    let config = server_config(resolver.clone(), &resumed, min, Some(ca))?;
                    groups.push((config, ca.id));
                    keys.push(key);
                    groups.len() - 1
                }
            };
            site_group.push(Some(index));
        }
        resumption.retain(&keys);
        client_auth = Some(Box::new(ClientAuthConfigs {
            names,
            site_group,
            groups,
        }));
    } else {
        resumption.retain(&[]);
    }
    let on_demand = resolver.on_demand.is_some().then_some(resolver);
    Ok(Some(Arc::new(ServerConfigs {
        base,
        client_auth,
        on_demand,
    })))
}

/// One config: every site's certificate, ALPN `h2` and `http/1.1`, and client certificates
/// verified against `ca` if given.
fn server_config(
    resolver: Arc<CertResolver>,
    resumption: &Resumption,
    min: TlsVersion,
    ca: Option<&ClientCa>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let protocols = [b"h2".to_vec(), b"http/1.1".to_vec()];
    let verifier = ca.map(|ca| ca.verifier.clone());
    let mut config = builder(resolver, protocols.into(), versions(min), verifier)?;
    config.ticketer = resumption.ticketer.clone();
    config.session_storage = resumption.sessions.clone();
    // one ticket per handshake, as nginx sends: a client resumes with one, and each costs an
    // encryption on every handshake
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// What lets a client resume a TLS session instead of a full handshake, kept across reloads
/// (a reload builds a new `ServerConfig`; a new ticket key would make every ticket useless):
/// stateless tickets (TLS 1.3, and TLS 1.2 clients that ask), keys rotated every 6 hours, and
/// a session-id cache for TLS 1.2 clients without ticket support.
#[derive(Clone)]
pub struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
}

/// TLS 1.2 sessions remembered by id; each entry is a few hundred bytes.
const SESSION_CACHE: usize = 10_000;

impl Resumption {
    pub fn new() -> Result<Resumption, TlsError> {
        Ok(Resumption {
            ticketer: ring::Ticketer::new().map_err(TlsError::Setup)?,
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
        })
    }
}

/// Resumption for the sites without `client_auth`, and one of its own for each `client_auth`
/// group (CA and mode). A resumed session keeps the client certificate of the handshake that
/// made it, and rustls only checks that the SNI is the same: with one ticket key for all, a
/// ticket from a handshake that verified nothing (or verified against another CA) would resume
/// on a `client_auth` config as if it had been verified there.
pub struct Resumptions {
    base: Resumption,
    groups: std::sync::Mutex<HashMap<(CaId, ClientAuthMode), Resumption>>,
}

impl Resumptions {
    pub fn new() -> Result<Resumptions, TlsError> {
        Ok(Resumptions {
            base: Resumption::new()?,
            groups: std::sync::Mutex::default(),
        })
    }

    /// The group's, kept from the last snapshot that had it, else new.
    fn group(&self, key: (CaId, ClientAuthMode)) -> Result<Resumption, TlsError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = groups.get(&key) {
            return Ok(kept.clone());
        }
        let new = Resumption::new()?;
        groups.insert(key, new.clone());
        Ok(new)
    }

    /// Forgets the groups not in `keys` (the snapshot just built has no site in them).
    fn retain(&self, keys: &[(CaId, ClientAuthMode)]) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|key, _| keys.contains(key));
    }
}

/// TLS 1.2 and 1.3 with rustls's default (safe) suites, no client auth. For ACME TLS-ALPN-01
/// validations, which come from the CA whatever `tls_min_version` says about clients.
pub fn config_with(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    builder(resolver, alpn, versions(TlsVersion::Tls12), None).map(Arc::new)
}

static TLS12_UP: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

/// The versions offered from `min` up.
fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls12 => &TLS12_UP,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

fn builder(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
    versions: &[&'static SupportedProtocolVersion],
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .map_err(TlsError::Setup)?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(hosts: &[HostPattern]) -> Site {
        Site {
            hosts: hosts.to_vec(),
            tls: None,
            redirect_https: false,
            hsts: None,
            routes: Vec::new(),
            error_pages: Default::default(),
            response_headers: Default::default(),
            client_auth: None,
            acme: None,
        }
    }

    fn exact(name: &str) -> HostPattern {
        HostPattern::Exact(name.into())
    }

    fn slot() -> Option<CertSlot> {
        Some(Arc::new(ArcSwapOption::empty()))
    }

    /// Which site answers a client without SNI.
    fn no_sni(sites: &[Site], slots: &[Option<CertSlot>], default: Option<&str>) -> Option<usize> {
        Names::new(sites, slots, default).site(None)
    }

    #[test]
    fn the_only_tls_site_is_the_default() {
        let sites = [
            site(&[exact("plain.example")]),
            site(&[exact("app.example")]),
        ];
        assert_eq!(no_sni(&sites, &[None, slot()], None), Some(1));
    }

    #[test]
    fn several_tls_sites_have_no_default_unless_named_or_catch_all() {
        let sites = [
            site(&[exact("a.example")]),
            site(&[HostPattern::Wildcard(".b.example".into())]),
        ];
        let slots = [slot(), slot()];
        assert_eq!(no_sni(&sites, &slots, None), None);
        assert_eq!(no_sni(&sites, &slots, Some("a.example")), Some(0));
        assert_eq!(no_sni(&sites, &slots, Some("www.b.example")), Some(1));
        let with_any = [
            sites[0].clone(),
            sites[1].clone(),
            site(&[HostPattern::Any]),
        ];
        assert_eq!(no_sni(&with_any, &[slot(), slot(), slot()], None), Some(2));
    }
}
