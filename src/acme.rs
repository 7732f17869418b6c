//! Automatic certificates: every `tls = "acme"` site's `CertSlot` starts with the stored
//! certificate (read while the snapshot is built, before it serves), and a background task
//! orders one if there is none, publishes it in the slot, and renews it inside the window the CA
//! suggests (ARI, RFC 9773), or when a third of its lifetime is left ([`renewal`]). Failures
//! are retried with capped exponential backoff and jitter; the site keeps its last good
//! certificate meanwhile, and other sites never wait on it.
//!
//! The `Manager` outlives config snapshots: building a snapshot asks it for slots, and a name set
//! it already manages gets the same slot and task back.
//!
//! Every touch of the disk (the stored certificate and account, their atomic writes with their
//! fsyncs, the system root store for the CA's API) runs on tokio's blocking pool
//! ([`off_runtime`]): an fsync can wait behind a disk's whole queue, and the task that waits
//! must not be a thread serving traffic.

mod dns;
pub mod doctor;
pub mod on_demand;
mod order;
pub mod renewal;
mod shared;
pub mod store;

use crate::cluster::acme::SharedAcme;
use crate::cluster::challenges::{self, Challenge, SharedAnswers};
use crate::cluster::Store as ClusterStore;
use crate::config;
use crate::metrics::Metrics;
use crate::tls::{self, CertSlot};
use arc_swap::ArcSwapOption;
use on_demand::OnDemand;
use order::Issuer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};
use store::{CertInfo, Store};

pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// A whole order (account, validation, finalize, download) gets this long.
const ORDER_DEADLINE: Duration = Duration::from_secs(180);
/// Renewal checks wake at least this often, so a changed clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("authorization is {0}, not pending")]
    Authorization(String),
    #[error("the CA offers no matching challenge for {0}; try the other `challenge` type")]
    NoChallenge(String),
    #[error("the CA rejected the order: {0}")]
    Rejected(String),
    #[error(
        "the CA offers no certificate profile `{asked}` (`acme.profile`); it offers: {offered}"
    )]
    Profile { asked: String, offered: String },
    #[error("key or CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Stored(String),
    #[error("cannot read CA root {}: {message}", path.display())]
    Root { path: PathBuf, message: String },
    #[error("no trusted root certificates: install ca-certificates or set `acme.ca_root`")]
    NoRoots,
    #[error("the order took longer than {0:?}")]
    Deadline(Duration),
    #[error("DNS-01: {0}")]
    Dns(#[from] dns::DnsError),
    #[error("file work stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

/// Runs `work` (file reads and writes) on tokio's blocking pool and waits for it.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AcmeError> + Send + 'static,
) -> Result<T, AcmeError> {
    tokio::task::spawn_blocking(work).await?
}

/// Reads every certificate in a PEM file (for `acme.ca_root`).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    let root_err = |message: String| AcmeError::Root {
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| root_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(root_err("no PEM `BEGIN CERTIFICATE` block".into()));
    }
    Ok(certs)
}

/// Challenge answers in flight, shared by the order tasks (writers) and the listeners (readers).
/// With `[cluster]` each answer is also written to the cluster store, and a challenge this
/// instance has no answer for is looked up there (`cluster::challenges`).
#[derive(Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Where answers are shared with the other instances (`[cluster]`); empty without.
    shared: ArcSwapOption<SharedAnswers>,
    /// acme-tls/1 certificates made here from digests the store gave, by name.
    fetched: RwLock<HashMap<String, Fetched>>,
}

/// A certificate made for another instance's TLS-ALPN-01 answer, reused while the store gives
/// the same digest (the CA validates from several places within seconds).
struct Fetched {
    digest: [u8; 32],
    cert: Arc<CertifiedKey>,
    made: Instant,
}

/// How long a certificate made from the store's digest is reused.
const FETCHED_FOR: Duration = Duration::from_secs(60);
/// At most this many of them are kept (a full table is emptied of stale ones, then cleared).
const FETCHED_MAX: usize = 256;

impl Challenges {
    /// The key authorization for an HTTP-01 token this instance set.
    pub fn http01(&self, token: &str) -> Option<String> {
        let map = self.http01.read().unwrap_or_else(PoisonError::into_inner);
        map.get(token).cloned()
    }

    /// The key authorization for an HTTP-01 token: this instance's, else (with `[cluster]`)
    /// the one another instance wrote to the store, within `[cluster] timeout`.
    pub async fn find_http01(&self, token: &str) -> Option<String> {
        if let Some(local) = self.http01(token) {
            return Some(local);
        }
        let shared = self.shared.load_full()?;
        // boxed: the lookup's future would otherwise size every request's
        Box::pin(shared.get(Challenge::Http01(token))).await
    }

    /// Shares answers through `store` from now on (`None`: not at all). The same store keeps
    /// its guard (lookups in flight) across reloads.
    pub fn share_through(&self, store: Option<Arc<ClusterStore>>) {
        let Some(store) = store else {
            self.shared.store(None);
            return;
        };
        let current = self.shared.load();
        if current.as_ref().is_some_and(|s| s.uses(&store)) {
            return;
        }
        self.shared.store(Some(Arc::new(SharedAnswers::new(store))));
    }

    /// Before a TLS-ALPN-01 handshake for `name`: with `[cluster]` and no local answer, the
    /// digest another instance wrote to the store (within `[cluster] timeout`) becomes an
    /// acme-tls/1 certificate made here, which the handshake's resolver then finds.
    pub async fn fetch_tls_alpn(&self, name: Option<&str>) {
        let Some(shared) = self.shared.load_full() else {
            return;
        };
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return;
        };
        if self.local_tls_alpn(&name).is_some() {
            return;
        }
        let Some(value) = shared.get(Challenge::TlsAlpn01(&name)).await else {
            return;
        };
        let Some(digest) = challenges::tls_alpn_digest(&value) else {
            return;
        };
        if self.fetched_cert(&name, Some(&digest)).is_some() {
            return;
        }
        match order::alpn_certificate(&name, &digest) {
            Ok(cert) => self.keep_fetched(name, digest, cert),
            Err(e) => tracing::warn!(%name, error = %e, "cannot make the acme-tls/1 certificate"),
        }
    }

    fn local_tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.tls_alpn.read().unwrap_or_else(PoisonError::into_inner);
        map.get(name).cloned()
    }

    /// A fresh certificate made from the store's digest for `name` (that digest, if given).
    fn fetched_cert(&self, name: &str, digest: Option<&[u8; 32]>) -> Option<Arc<CertifiedKey>> {
        let map = self.fetched.read().unwrap_or_else(PoisonError::into_inner);
        let fetched = map.get(name)?;
        let same = digest.is_none_or(|d| *d == fetched.digest);
        (same && fetched.made.elapsed() < FETCHED_FOR).then(|| fetched.cert.clone())
    }

    fn keep_fetched(&self, name: String, digest: [u8; 32], cert: Arc<CertifiedKey>) {
        let mut map = self.fetched.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= FETCHED_MAX {
            map.retain(|_, f| f.made.elapsed() < FETCHED_FOR);
            if map.len() >= FETCHED_MAX {
                map.clear();
            }
        }
        let made = Instant::now();
        map.insert(name, Fetched { digest, cert, made });
    }

    /// The config for a handshake that offered `acme-tls/1`: only challenge certificates, only
    /// that protocol.
    pub fn tls_alpn_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, tls::TlsError> {
        tls::config_with(
            Arc::new(AlpnResolver(self.clone())),
            vec![ACME_TLS_ALPN.to_vec()],
        )
    }

    fn answer_http01(self: &Arc<Self>, token: String, key_auth: String) -> Answer {
        let mut map = self.http01.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(token.clone(), key_auth);
        Answer {
            challenges: self.clone(),
            key: AnswerKey::Http01(token),
            shared: None,
        }
    }

    fn answer_tls_alpn(self: &Arc<Self>, name: String, cert: Arc<CertifiedKey>) -> Answer {
        // as the resolver looks it up, and as the store keeps it
        let name = name.to_ascii_lowercase();
        let mut map = self
            .tls_alpn
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(name.clone(), cert);
        Answer {
            challenges: self.clone(),
            key: AnswerKey::TlsAlpn(name),
            shared: None,
        }
    }
}

/// Withdraws its challenge answer when dropped (from the store too, if it was shared).
struct Answer {
    challenges: Arc<Challenges>,
    key: AnswerKey,
    /// Where it was written, and as what.
    shared: Option<(Arc<SharedAnswers>, String)>,
}

enum AnswerKey {
    Http01(String),
    TlsAlpn(String),
}

impl Answer {
    fn challenge(&self) -> Challenge<'_> {
        match &self.key {
            AnswerKey::Http01(token) => Challenge::Http01(token),
            AnswerKey::TlsAlpn(name) => Challenge::TlsAlpn01(name),
        }
    }

    /// With `[cluster]`, writes the answer (`value`, as `cluster::challenges` keeps it) to the
    /// store for the other instances, until the order's deadline at the latest. Awaited before
    /// the CA is told to validate.
    async fn share(&mut self, value: String) {
        let Some(shared) = self.challenges.shared.load_full() else {
            return;
        };
        if shared.put(self.challenge(), &value, ORDER_DEADLINE).await {
            self.shared = Some((shared, value));
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some((shared, value)) = self.shared.take() {
            shared.remove(self.challenge(), value);
        }
        let c = &self.challenges;
        match &self.key {
            AnswerKey::Http01(token) => {
                let mut map = c.http01.write().unwrap_or_else(PoisonError::into_inner);
                map.remove(token);
            }
            AnswerKey::TlsAlpn(name) => {
                let mut map = c.tls_alpn.write().unwrap_or_else(PoisonError::into_inner);
                map.remove(name);
            }
        }
    }
}

#[derive(Debug)]
struct AlpnResolver(Arc<Challenges>);

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let local = self.0.local_tls_alpn(&name);
        local.or_else(|| self.0.fetched_cert(&name, None))
    }
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

/// Owns the certificate tasks and the accounts; lives as long as the process.
#[derive(Default)]
pub struct Manager {
    challenges: Arc<Challenges>,
    /// The name sets, by directory and names. Their issuers (one per directory + state dir +
    /// settings, shared by every name set they serve; a changed `[acme]` section gets a new
    /// one) are found through them, so an issuer lives exactly as long as a name set uses it.
    certs: Mutex<HashMap<(String, Vec<String>), Maintained>>,
    metrics: OnceLock<Arc<Metrics>>,
    /// The certificates of `tls = "on_demand"` sites, a name at a time.
    on_demand: Arc<OnDemand>,
}

/// One name set's slot and the task that fills it; dropping it stops the task.
struct Maintained {
    issuer: Arc<Issuer>,
    slot: CertSlot,
    task: tokio::task::AbortHandle,
}

impl Drop for Maintained {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Manager {
    pub fn challenges(&self) -> Arc<Challenges> {
        self.challenges.clone()
    }

    /// Where orders are counted (`gatehouse_acme_orders_total`).
    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        self.on_demand.set_metrics(metrics.clone());
        let _ = self.metrics.set(metrics);
    }

    pub fn on_demand(&self) -> &Arc<OnDemand> {
        &self.on_demand
    }

    /// Takes a new config's `[acme] on_demand` (see `OnDemand::configure`).
    pub fn configure_on_demand(&self, config: &config::Config) {
        self.on_demand.configure(config, &self.challenges);
    }

    /// The slot for these names. A name set not managed yet has its stored certificate read
    /// (off the runtime) and put in the slot before this returns, so a start or reload never
    /// serves a moment of failed handshakes for a certificate that is on disk; then its task
    /// starts, to order and renew. Changed `[acme]` settings or `state_dir` start a new task
    /// in place of the old one. With `shared` (`[cluster] acme = "shared"`) the certificate is
    /// ordered once for the cluster, through the store ([`shared`]).
    pub async fn slot(
        &self,
        settings: &config::Acme,
        state_dir: &Path,
        names: Vec<String>,
        shared: Option<&Arc<SharedAcme>>,
    ) -> CertSlot {
        let store = Store::new(state_dir);
        let key = (settings.directory.clone(), names);
        if let Some(slot) = self.kept_slot(&key, settings, &store, shared) {
            return slot;
        }
        let list = key.1.join(",");
        let dir = store.cert_dir(&settings.directory, &key.1);
        let slot: CertSlot = Arc::new(ArcSwapOption::empty());
        let current = load_stored(&dir, &key.1, &slot, &list).await;
        let mut certs = self.certs.lock().unwrap_or_else(PoisonError::into_inner);
        // the account of another name set with the same settings, else a new one
        let issuer_of = certs
            .values()
            .map(|kept| &kept.issuer)
            .find(|issuer| issuer.serves(settings, &store) && issuer.serves_shared(shared))
            .cloned();
        let issuer = issuer_of.unwrap_or_else(|| {
            Arc::new(
                Issuer::new(settings.clone(), store, self.challenges.clone())
                    .with_metrics(self.metrics.get().cloned())
                    .with_shared(shared.cloned()),
            )
        });
        let metrics = self.metrics.get().cloned();
        let (names, task_slot) = (key.1.clone(), slot.clone());
        let task = match shared {
            Some(shared) => tokio::spawn(shared::maintain(
                issuer.clone(),
                shared.clone(),
                names,
                task_slot,
                current,
                metrics,
            )),
            None => tokio::spawn(maintain(issuer.clone(), names, task_slot, current, metrics)),
        };
        let maintained = Maintained {
            issuer,
            slot: slot.clone(),
            task: task.abort_handle(),
        };
        // snapshots are built one at a time, so nothing took this key meanwhile; were it
        // otherwise, the newer entry simply replaces (and stops) the other
        certs.insert(key, maintained);
        slot
    }

    /// The slot of a name set already managed with these settings.
    fn kept_slot(
        &self,
        key: &(String, Vec<String>),
        settings: &config::Acme,
        store: &Store,
        shared: Option<&Arc<SharedAcme>>,
    ) -> Option<CertSlot> {
        let certs = self.certs.lock().unwrap_or_else(PoisonError::into_inner);
        certs
            .get(key)
            .filter(|k| k.issuer.serves(settings, store) && k.issuer.serves_shared(shared))
            .map(|kept| kept.slot.clone())
    }

    /// Stops the work for every name set whose slot is not in `used` (the snapshot just
    /// built): a site removed by a reload no longer orders or renews. Its stored certificate
    /// stays on disk for when it comes back.
    pub fn retain(&self, used: &[&CertSlot]) {
        let mut certs = self.certs.lock().unwrap_or_else(PoisonError::into_inner);
        certs.retain(|(_, names), kept| {
            let keep = used.iter().any(|slot| Arc::ptr_eq(slot, &kept.slot));
            if !keep {
                tracing::info!(names = %names.join(","), "certificate no longer configured; its ACME task stops");
            }
            keep
        });
    }
}

/// The life of one certificate after its stored copy (`current`) was read: order, renew, retry,
/// forever.
async fn maintain(
    issuer: Arc<Issuer>,
    names: Vec<String>,
    slot: CertSlot,
    mut current: Option<CertInfo>,
    metrics: Option<Arc<Metrics>>,
) {
    let count = |result: &str| {
        if let Some(m) = &metrics {
            m.acme_orders.with_label_values(&[result]).inc();
        }
    };
    let list = names.join(",");
    let dir = issuer.store.cert_dir(&issuer.settings.directory, &names);
    let mut backoff = Backoff::new(issuer.settings.retry_initial, issuer.settings.retry_max);
    // the doctor's checks run once per streak of failures, not at every retry
    let mut diagnosed = false;
    // records a crash (or a failed removal) left behind, even when no order is due
    if let Some(dns) = issuer.dns() {
        dns::clean_leftovers(dns, &dir, metrics.as_deref()).await;
    }
    let mut schedule = renewal::Schedule::load(&dir).await;
    loop {
        let leaf = slot.load_full().and_then(|key| key.cert.first().cloned());
        if let Some(info) = &current {
            let due = schedule.due(&issuer, leaf.as_ref(), info, &list).await;
            let now = SystemTime::now();
            let wait = due.renew_at.duration_since(now).unwrap_or_default();
            if !wait.is_zero() {
                // awake for the CA's next check too, which may move the window
                let check = due.next_check.duration_since(now).unwrap_or_default();
                let check = Some(check).filter(|c| !c.is_zero()).unwrap_or(MAX_SLEEP);
                tokio::time::sleep(wait.min(check).min(MAX_SLEEP)).await;
                continue;
            }
            tracing::info!(names = %list, not_after = %rfc3339(info.not_after), by = ?due.source, "renewing certificate");
        }
        let replaces = schedule.replaces(leaf.as_ref());
        // DNS-01 waits for each record to be answered on top of the CA's work
        let deadline = ORDER_DEADLINE
            + issuer
                .dns()
                .map_or(Duration::ZERO, |d| d.propagation_timeout);
        let issue = issuer.issue(&names, &dir, replaces.as_ref(), None);
        let issued = tokio::time::timeout(deadline, issue).await;
        let result = match issued.unwrap_or(Err(AcmeError::Deadline(deadline))) {
            Ok(cert) => {
                let (dir, slot) = (dir.clone(), slot.clone());
                off_runtime(move || publish(&dir, cert, &slot)).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(info) => {
                count("success");
                tracing::info!(names = %list, issuer = %info.issuer, not_after = %rfc3339(info.not_after), "certificate issued");
                current = Some(info);
                backoff.reset();
                diagnosed = false;
            }
            Err(e) => {
                count("failure");
                let delay = if is_rate_limited(&e) {
                    backoff.max()
                } else {
                    backoff.next()
                };
                let meanwhile = if current.is_some() {
                    "the current certificate keeps serving"
                } else {
                    "handshakes for these names fail"
                };
                tracing::warn!(names = %list, error = %Causes(&e), retry_in = ?delay, meanwhile, "certificate order failed");
                if !std::mem::replace(&mut diagnosed, true) {
                    tokio::spawn(doctor::after_failure(issuer.clone(), names.clone()));
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn load_stored(
    dir: &Path,
    names: &[String],
    slot: &CertSlot,
    list: &str,
) -> Option<CertInfo> {
    let at = dir.to_path_buf();
    let stored = off_runtime(move || Ok(store::load_cert(&at)?)).await;
    match stored {
        Ok(Some(stored))
            if stored.info.covers(names) && stored.info.not_after > SystemTime::now() =>
        {
            tracing::info!(names = %list, not_after = %rfc3339(stored.info.not_after), "certificate loaded");
            slot.store(Some(stored.key));
            Some(stored.info)
        }
        Ok(Some(stored)) => {
            tracing::info!(names = %list, stored = %stored.info.names.join(","), "stored certificate is expired or lacks a name; ordering a new one");
            None
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(names = %list, error = %e, "cannot use the stored certificate; ordering a new one");
            None
        }
    }
}

/// Checks the new pair, stores it, then swaps it in. A failed write still serves the new
/// certificate (and says so); the next start simply orders again.
fn publish(dir: &Path, cert: order::Issued, slot: &CertSlot) -> Result<CertInfo, AcmeError> {
    let (key, info) = store::parse_pair(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes())
        .map_err(AcmeError::Stored)?;
    if let Err(e) = store::save_cert(dir, cert.chain_pem.as_bytes(), cert.key_pem.as_bytes()) {
        tracing::error!(error = %e, "cannot store the new certificate; serving it from memory");
    }
    // what `certs doctor` counts against the CA's rate limits
    if let Err(e) = store::log_issued(dir, &info.names, SystemTime::now()) {
        tracing::warn!(error = %e, "cannot log the issuance; `certs doctor` will count it from the certificate alone");
    }
    slot.store(Some(key));
    Ok(info)
}

/// An error with its causes: hyper's "client error (Connect)" alone does not say the CA refused.
struct Causes<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let more = cause.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

fn is_rate_limited(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Acme(instant_acme::Error::Api(p))
        if p.r#type.as_deref().is_some_and(|t| t.ends_with(":rateLimited")))
}

/// Doubling delays from `initial` to `max`, each scaled by a random 0.5–1.0 so that many
/// instances restarted together do not hit the CA in step.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(self.max);
        base.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    fn max(&mut self) -> Duration {
        self.next = self.max;
        self.max
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

pub use crate::clock::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        let bases = [10, 20, 40, 60, 60, 60];
        for (d, base) in delays.iter().zip(bases) {
            let base = Duration::from_secs(base);
            assert!(
                *d >= base / 2 && *d <= base,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_secs(10));
    }

    /// A start or reload serves a stored certificate from its first handshake: the slot is
    /// filled when `slot` returns, not some time later by the background task.
    #[tokio::test]
    async fn a_new_slot_holds_the_stored_certificate_when_it_is_handed_out() {
        let state = tempfile::tempdir().expect("state dir");
        // a CA nobody answers at: the task must not be what fills the slot
        let settings = config::Acme {
            directory: "https://127.0.0.1:9/directory".into(),
            ..config::Acme::default()
        };
        let names = vec!["stored.example".to_string()];
        let made = rcgen::generate_simple_self_signed(names.clone()).expect("certificate");
        let dir = Store::new(state.path()).cert_dir(&settings.directory, &names);
        let (chain, key) = (made.cert.pem(), made.key_pair.serialize_pem());
        store::save_cert(&dir, chain.as_bytes(), key.as_bytes()).expect("store");

        let manager = Manager::default();
        let slot = manager
            .slot(&settings, state.path(), names.clone(), None)
            .await;
        let served = slot.load_full().expect("the stored certificate, at once");
        assert_eq!(served.cert[0].as_ref(), made.cert.der().as_ref());
        // the same name set again: the same slot, not a second read and task
        let again = manager.slot(&settings, state.path(), names, None).await;
        assert!(Arc::ptr_eq(&slot, &again));
    }

    /// A certificate made from the store's digest serves only while the store gives that digest
    /// (a new order's answer for the same name gets a new one), and only for a while.
    #[test]
    fn a_fetched_certificate_is_reused_only_for_the_same_digest() {
        let challenges = Challenges::default();
        let cert = order::alpn_certificate("app.test", &[1; 32]).expect("certificate");
        challenges.keep_fetched("app.test".into(), [1; 32], cert.clone());
        let same = challenges.fetched_cert("app.test", Some(&[1; 32]));
        assert!(same.is_some_and(|c| Arc::ptr_eq(&c, &cert)));
        assert!(challenges
            .fetched_cert("app.test", Some(&[2; 32]))
            .is_none());
        assert!(challenges.fetched_cert("www.app.test", None).is_none());
        let mut map = challenges.fetched.write().expect("lock");
        if let Some(f) = map.get_mut("app.test") {
            f.made -= FETCHED_FOR;
        }
        drop(map);
        assert!(challenges.fetched_cert("app.test", None).is_none(), "stale");
    }

    #[test]
    fn http01_answers_are_withdrawn_on_drop() {
        let challenges = Arc::new(Challenges::default());
        let answer = challenges.answer_http01("tok".into(), "tok.thumb".into());
        assert_eq!(challenges.http01("tok").as_deref(), Some("tok.thumb"));
        drop(answer);
        assert_eq!(challenges.http01("tok"), None);
    }
}
