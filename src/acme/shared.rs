//! The life of one certificate under `[cluster] acme = "shared"` (`docs/cluster.md`): the
//! store holds the cluster's copy, and each instance's `state_dir` a local one, read at start
//! (the slot serves it at once, as without `[cluster]`).
//!
//! The task keeps the slot in step with the store: a newer certificate there (announced on the
//! channel, or found by the check every `CHECK_EVERY`) goes into the slot and the local copy;
//! a store without one, or with an older one, is re-seeded from the local copy, so an emptied
//! store costs no order. When renewal is due (a third of the lifetime left, from the
//! certificate itself, so every instance agrees), the instance that takes the name set's lock
//! checks the store again, then orders (resuming a journaled order, if a former holder left
//! one) and stores the result under its fencing token; the others wait for the announcement.
//! While the store does not answer nothing is ordered: the current certificate keeps serving.
//!
//! ARI (RFC 9773) windows are not used here: each instance would draw its own time in them.

use super::order::{self, Issuer};
use super::store::{self, CertInfo};
use super::{doctor, off_runtime, rfc3339, AcmeError, Backoff, Causes, ORDER_DEADLINE};
use crate::cluster::acme::{CertBlob, Lock, SharedAcme, SharedError};
use crate::metrics::Metrics;
use crate::tls::CertSlot;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// The store is read this often even without an announcement (a lost message, a restarted
/// subscription).
const CHECK_EVERY: Duration = Duration::from_secs(30);
/// While another instance holds the lock, or the store does not answer, it is tried this often.
const RETRY: Duration = Duration::from_secs(2);

/// One name set's task, for good.
pub(super) async fn maintain(
    issuer: Arc<Issuer>,
    shared: Arc<SharedAcme>,
    names: Vec<String>,
    slot: CertSlot,
    current: Option<CertInfo>,
    metrics: Option<Arc<Metrics>>,
) {
    let id = SharedAcme::cert_id(&issuer.settings.directory, &names);
    let dir = issuer.store.cert_dir(&issuer.settings.directory, &names);
    if let Some(dns) = issuer.dns() {
        super::dns::clean_leftovers(dns, &dir, metrics.as_deref()).await;
    }
    let mut task = Task {
        wake: shared.watch(&id),
        list: names.join(","),
        issuer,
        shared,
        id,
        dir,
        names,
        slot,
        current,
        metrics,
    };
    task.run().await;
}

struct Task {
    issuer: Arc<Issuer>,
    shared: Arc<SharedAcme>,
    id: String,
    dir: std::path::PathBuf,
    names: Vec<String>,
    list: String,
    slot: CertSlot,
    current: Option<CertInfo>,
    metrics: Option<Arc<Metrics>>,
    wake: Arc<Notify>,
}

impl Task {
    async fn run(&mut self) {
        let s = &self.issuer.settings;
        let mut backoff = Backoff::new(s.retry_initial, s.retry_max);
        let mut diagnosed = false;
        let mut said_down = false;
        loop {
            let Some(lock) = self.turn(&mut said_down).await else {
                continue;
            };
            if let Some(info) = &self.current {
                tracing::info!(names = %self.list, not_after = %rfc3339(info.not_after), token = lock.token(), "renewing certificate for the cluster");
            }
            match self.order(&lock).await {
                Ok(info) => {
                    self.count("success");
                    tracing::info!(names = %self.list, issuer = %info.issuer, not_after = %rfc3339(info.not_after), token = lock.token(), "certificate issued and stored for the cluster");
                    self.current = Some(info);
                    backoff.reset();
                    diagnosed = false;
                }
                Err(e) => {
                    drop(lock);
                    let delay = backoff.next();
                    self.failed(&e, delay, &mut diagnosed);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One look at the store and the clock: the name set's lock when this instance should
    /// order now, else `None` after waiting as long as there is nothing to do (until the
    /// renewal time, an announcement, or the next try).
    async fn turn(&mut self, said_down: &mut bool) -> Option<Lock> {
        let up = self.sync().await;
        let now = SystemTime::now();
        let due = self.current.as_ref().map_or(now, CertInfo::renew_at);
        if let Ok(wait) = due.duration_since(now) {
            if !wait.is_zero() {
                self.wait(wait.min(CHECK_EVERY)).await;
                return None;
            }
        }
        if !up {
            if !std::mem::replace(said_down, true) {
                tracing::warn!(names = %self.list, "certificate due, but the cluster store does not answer: nothing is ordered until it does (the current certificate, if any, keeps serving)");
            }
            self.wait(RETRY).await;
            return None;
        }
        *said_down = false;
        let Ok(Some(lock)) = self.shared.try_lock(&self.id).await else {
            // another instance orders it (its announcement wakes this task), or the store
            // just failed
            self.wait(RETRY).await;
            return None;
        };
        // another instance may have stored it just before this one took the lock (and a
        // store gone meanwhile would refuse the journal anyway: try again later)
        if !self.sync().await || !self.is_due() {
            return None;
        }
        Some(lock)
    }

    /// A failed order: counted, logged, and the doctor's checks once per streak.
    fn failed(&self, e: &AcmeError, delay: Duration, diagnosed: &mut bool) {
        self.count("failure");
        tracing::warn!(names = %self.list, error = %Causes(e), retry_in = ?delay, "certificate order failed");
        if !std::mem::replace(diagnosed, true) {
            tokio::spawn(doctor::after_failure(
                self.issuer.clone(),
                self.names.clone(),
            ));
        }
    }

    fn is_due(&self) -> bool {
        self.current
            .as_ref()
            .is_none_or(|c| c.renew_at() <= SystemTime::now())
    }

    async fn wait(&self, max: Duration) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(max) => {}
        }
    }

    fn count(&self, result: &str) {
        if let Some(m) = &self.metrics {
            m.acme_orders.with_label_values(&[result]).inc();
        }
    }

    /// Brings the slot and the store in step; whether the store answered.
    async fn sync(&mut self) -> bool {
        let stored = match self.shared.load_cert(&self.id).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(names = %self.list, error = %e, "cluster store not read");
                return false;
            }
        };
        let parsed = stored
            .as_ref()
            .map(|blob| store::parse_pair(blob.chain_pem.as_bytes(), blob.key_pem.as_bytes()));
        let ours = self.current.as_ref().map(|c| c.not_after);
        match (stored, parsed) {
            (Some(blob), Some(Ok((key, info))))
                if ours.is_none_or(|ours| info.not_after > ours)
                    && info.covers(&self.names)
                    && info.not_after > SystemTime::now() =>
            {
                self.adopt(blob, key, info).await;
            }
            (_, Some(Ok((_, info)))) if ours.is_some_and(|ours| ours > info.not_after) => {
                self.reseed().await;
            }
            (_, Some(Err(e))) => {
                tracing::warn!(names = %self.list, error = e, "the cluster store's certificate is unusable");
                self.reseed().await;
            }
            (None, _) if ours.is_some() => self.reseed().await,
            _ => {}
        }
        true
    }

    /// Serves the store's newer certificate and keeps it as the local copy.
    async fn adopt(
        &mut self,
        blob: CertBlob,
        key: Arc<rustls::sign::CertifiedKey>,
        info: CertInfo,
    ) {
        let dir = self.dir.clone();
        let saved = off_runtime(move || {
            Ok(store::save_cert(
                &dir,
                blob.chain_pem.as_bytes(),
                blob.key_pem.as_bytes(),
            )?)
        })
        .await;
        if let Err(e) = saved {
            tracing::warn!(names = %self.list, error = %e, "cannot keep a local copy of the certificate from the cluster store; serving it from memory");
        }
        self.slot.store(Some(key));
        self.shared.metrics().cluster.acme_certs_received.inc();
        tracing::info!(names = %self.list, not_after = %rfc3339(info.not_after), "certificate received from the cluster store");
        self.current = Some(info);
    }

    /// Fills the store from the local copy (it has none, or an older one).
    async fn reseed(&self) {
        let dir = self.dir.clone();
        let read = off_runtime(move || {
            let chain = std::fs::read_to_string(dir.join("cert.pem"));
            let key = std::fs::read_to_string(dir.join("key.pem"));
            Ok(chain.and_then(|c| key.map(|k| (c, k))))
        })
        .await;
        let (Ok(Ok((chain_pem, key_pem))), Some(info)) = (read, &self.current) else {
            return;
        };
        let blob = CertBlob { chain_pem, key_pem };
        match self
            .shared
            .reseed_cert(&self.id, &blob, unix(info.not_after))
            .await
        {
            Ok(true) => {
                tracing::info!(names = %self.list, not_after = %rfc3339(info.not_after), "the cluster store lacked this certificate; filled it from the local copy (no order)")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(names = %self.list, error = %e, "cannot re-seed the cluster store")
            }
        }
    }

    /// One order under `lock`, its result stored for the cluster, then served.
    async fn order(&mut self, lock: &Lock) -> Result<CertInfo, AcmeError> {
        let deadline = ORDER_DEADLINE
            + self
                .issuer
                .dns()
                .map_or(Duration::ZERO, |d| d.propagation_timeout);
        let issue = self.issuer.issue(&self.names, &self.dir, None, Some(lock));
        let issued = tokio::time::timeout(deadline, issue)
            .await
            .unwrap_or(Err(AcmeError::Deadline(deadline)))?;
        let order::Issued { chain_pem, key_pem } = issued;
        let (key, info) = store::parse_pair(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(AcmeError::Stored)?;
        let blob = CertBlob { chain_pem, key_pem };
        match lock.write_cert(&blob, unix(info.not_after)).await {
            Ok(()) => {}
            // a former holder: the store keeps the new holder's certificate, and so does this
            // instance (it reads the store next)
            Err(e @ SharedError::Fenced(..)) => return Err(super::order::shared_error(e)),
            Err(e) => {
                tracing::warn!(names = %self.list, error = %e, "cannot store the new certificate for the cluster; serving it here, and it re-seeds the store when it answers");
            }
        }
        let (dir, names) = (self.dir.clone(), self.names.clone());
        let saved = off_runtime(move || {
            store::save_cert(&dir, blob.chain_pem.as_bytes(), blob.key_pem.as_bytes())?;
            if let Err(e) = store::log_issued(&dir, &names, SystemTime::now()) {
                tracing::warn!(error = %e, "cannot log the issuance");
            }
            Ok(())
        })
        .await;
        if let Err(e) = saved {
            tracing::error!(names = %self.list, error = %e, "cannot keep a local copy of the new certificate; serving it from memory");
        }
        self.slot.store(Some(key));
        Ok(info)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
