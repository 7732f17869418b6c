//! Shared ACME's side of the store (`[cluster] acme = "shared"`, `docs/cluster.md`).
//!
//! Owns every key shared ACME keeps under `NAME:acme:` and the rules for writing them:
//! - `fence`: a counter; each lock taken gets the next value, its fencing token.
//! - `lock:ID`: who orders for the name set (or account) `ID` now: `TOKEN|SINCE|INSTANCE`,
//!   with a TTL (`[cluster] lock_ttl`) the holder renews every third of it.
//! - `cert:ID`: the certificate (a hash: `blob`, sealed chain and key; `not_after`; `token`).
//! - `order:ID`: the journal of the order in flight (sealed: order URL, the new key, names).
//! - `account:DIR`: the CA account's credentials (sealed), one per directory for the cluster.
//!
//! Every write a lock holder makes goes through one Lua script that first checks the lock still
//! holds the holder's token: a holder that was paused or cut off past its TTL, and whose lock
//! another instance took since, writes nothing. The only unfenced write is the re-seed of an
//! emptied store from an instance's local copy, which only ever fills a missing or older entry.
//! New certificates are announced on the channel `NAME:acme:certs` (the message is the `ID`).
//!
//! Everything here runs in background tasks; no request reads or waits for it.

use super::connect::Endpoint;
use super::crypt::{CryptError, Sealer};
use crate::config::{Cluster, Secret};
use crate::metrics::Metrics;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// One store call (background work) gets this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon the subscription is made again after it failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// Takes `KEYS[1]` (the lock) if nobody holds it: the next fencing token from `KEYS[2]`, the
/// store's time, the instance; returns the token, 0 when held.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
redis.call('SET', KEYS[1], token .. '|' .. t[1] .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
";

/// The check every fenced script starts with: the lock still holds ARGV[1].
const HELD: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or tonumber(string.match(v, '^(%d+)|')) ~= tonumber(ARGV[1]) then return 0 end
";

/// Renews (ARGV[2]: `renew`, with the TTL in ARGV[3]) or releases (`release`) the lock.
const KEEP: &str = r"
if ARGV[2] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// A fenced write: `set` KEYS[2] to ARGV[3]; `del` KEYS[2]; `cert`: the certificate hash at
/// KEYS[2] (blob ARGV[3], not_after ARGV[4]), the journal KEYS[3] dropped, and ARGV[5]
/// announced on the channel ARGV[6].
const WRITE: &str = r"
if ARGV[2] == 'set' then
  redis.call('SET', KEYS[2], ARGV[3])
elseif ARGV[2] == 'del' then
  redis.call('DEL', KEYS[2])
else
  redis.call('HSET', KEYS[2], 'blob', ARGV[3], 'not_after', ARGV[4], 'token', ARGV[1])
  redis.call('DEL', KEYS[3])
  redis.call('PUBLISH', ARGV[6], ARGV[5])
end
return 1
";

/// The re-seed from a local copy: fills KEYS[1] only if it is missing or older (ARGV[2] is
/// `not_after`), announcing it like a fenced write.
const RESEED: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'not_after') or '0')
if cur >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'blob', ARGV[1], 'not_after', ARGV[2], 'token', '0')
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
";

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("the cluster store did not answer: {0}")]
    Down(String),
    #[error("the cluster store refused the write: this instance no longer holds the lock for {0} (fencing token {1}); another instance took over")]
    Fenced(String, u64),
    #[error("{0}")]
    Crypt(#[from] CryptError),
    #[error("a stored entry is unreadable: {0}")]
    Bad(String),
}

impl From<redis::RedisError> for SharedError {
    fn from(e: redis::RedisError) -> SharedError {
        SharedError::Down(e.to_string())
    }
}

/// A certificate as the store holds it, opened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertBlob {
    pub chain_pem: String,
    pub key_pem: String,
}

/// The order in flight for a name set, as journaled by its lock holder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Journal {
    pub url: String,
    /// The new certificate's key (PEM): the CSR of a resumed order must use it too.
    pub key_pem: String,
    pub names: Vec<String>,
    /// The token of the lock it was written under.
    pub token: u64,
    pub instance: String,
}

/// One lock as `/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// What is locked: `account:DIR` or `DIR:NAMES`.
    pub lock: String,
    pub instance: String,
    pub token: u64,
    /// Since when (Unix seconds, the store's clock).
    pub since: u64,
}

/// Parses a lock's value `TOKEN|SINCE|INSTANCE`.
pub fn parse_holder(lock: &str, value: &str) -> Option<Holder> {
    let mut parts = value.splitn(3, '|');
    let token = parts.next()?.parse().ok()?;
    let since = parts.next()?.parse().ok()?;
    let instance = parts.next()?.to_string();
    Some(Holder {
        lock: lock.to_string(),
        instance,
        token,
        since,
    })
}

/// The shared-ACME connection to the store of one `[cluster]`, its key and its subscription.
pub struct SharedAcme {
    settings: Cluster,
    /// How the store is reached (TLS, Sentinel): the same way as the rate limits reach it.
    endpoint: Endpoint,
    secret: Secret,
    sealer: Sealer,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    metrics: Arc<Metrics>,
    /// Each name set's wake-up, notified when the channel announces its certificate.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    subscription: Mutex<Option<tokio::task::AbortHandle>>,
    acquire: redis::Script,
    write: redis::Script,
    keep: redis::Script,
    reseed: redis::Script,
}

impl Drop for SharedAcme {
    fn drop(&mut self) {
        let task = self
            .subscription
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for SharedAcme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAcme")
            .field("cluster", &self.settings.name)
            .finish()
    }
}

impl SharedAcme {
    /// Shared ACME for `settings`; subscribes to new certificates in the background.
    pub fn start(
        settings: &Cluster,
        endpoint: Endpoint,
        secret: Secret,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<SharedAcme>, SharedError> {
        let fenced = |body: &str| redis::Script::new(&format!("{HELD}{body}"));
        let shared = Arc::new(SharedAcme {
            settings: settings.clone(),
            endpoint,
            sealer: Sealer::new(&secret.0)?,
            secret,
            conn: tokio::sync::Mutex::new(None),
            metrics,
            waiters: Mutex::default(),
            subscription: Mutex::default(),
            acquire: redis::Script::new(ACQUIRE),
            write: fenced(WRITE),
            keep: fenced(KEEP),
            reseed: redis::Script::new(RESEED),
        });
        let task = tokio::spawn(subscribe(Arc::downgrade(&shared)));
        *shared
            .subscription
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        Ok(shared)
    }

    /// Whether this serves `settings` with `secret` (a reload keeps it).
    pub fn serves(&self, settings: &Cluster, endpoint: &Endpoint, secret: &Secret) -> bool {
        self.settings == *settings && self.endpoint == *endpoint && self.secret == *secret
    }

    pub fn instance(&self) -> &str {
        &self.settings.instance
    }

    pub fn lock_ttl(&self) -> Duration {
        self.settings.lock_ttl
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:acme:{kind}:{id}", self.settings.name)
    }

    fn channel(&self) -> String {
        format!("{}:acme:certs", self.settings.name)
    }

    /// The `ID` of a name set ordered from `directory`.
    pub fn cert_id(directory: &str, names: &[String]) -> String {
        format!("{}:{}", directory_id(directory), names.join(","))
    }

    /// The wake-up of the name set `id`: notified when a certificate for it is announced.
    pub fn watch(&self, id: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters.entry(id.to_string()).or_default().clone()
    }

    async fn conn(&self) -> Result<ConnectionManager, SharedError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        let made = self.endpoint.manager().await.map_err(SharedError::Down)?;
        *conn = Some(made.conn.clone());
        Ok(made.conn)
    }

    /// Runs one call with the deadline; a failure forgets the connection (a fresh one next).
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = tokio::time::timeout(CALL_TIMEOUT, self.conn())
            .await
            .map_err(|_| SharedError::Down("no connection within 2s".into()))??;
        match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *self.conn.lock().await = None;
                Err(e.into())
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err(SharedError::Down("no answer within 2s".into()))
            }
        }
    }

    /// The certificate stored for `id`, opened; `None` when there is none.
    pub async fn load_cert(&self, id: &str) -> Result<Option<CertBlob>, SharedError> {
        let key = self.key("cert", id);
        let k = key.clone();
        let blob: Option<Vec<u8>> = self
            .call(|mut c| async move {
                redis::cmd("HGET")
                    .arg(&k)
                    .arg("blob")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let Some(blob) = blob else { return Ok(None) };
        let plain = self.sealer.open(&key, &blob)?;
        let cert = serde_json::from_slice(&plain).map_err(|e| SharedError::Bad(e.to_string()))?;
        Ok(Some(cert))
    }

    /// Puts a local copy into the store where it has no certificate for `id`, or an older one
    /// (an emptied store is filled again without ordering). Whether it was written.
    pub async fn reseed_cert(
        &self,
        id: &str,
        cert: &CertBlob,
        not_after: u64,
    ) -> Result<bool, SharedError> {
        let key = self.key("cert", id);
        let blob = self.seal_json(&key, cert)?;
        let mut call = self.reseed.key(&key);
        call.arg(blob).arg(not_after).arg(id).arg(self.channel());
        let written: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(written == 1)
    }

    /// The journal of the order in flight for `id`, if any.
    pub async fn load_journal(&self, id: &str) -> Result<Option<Journal>, SharedError> {
        let key = self.key("order", id);
        let k = key.clone();
        let blob: Option<Vec<u8>> = self
            .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
            .await?;
        let Some(blob) = blob else { return Ok(None) };
        let plain = self.sealer.open(&key, &blob)?;
        let journal =
            serde_json::from_slice(&plain).map_err(|e| SharedError::Bad(e.to_string()))?;
        Ok(Some(journal))
    }

    /// The cluster's account for `directory` (its credentials' JSON), if stored.
    pub async fn load_account(&self, directory: &str) -> Result<Option<Vec<u8>>, SharedError> {
        let key = self.key("account", &directory_id(directory));
        let k = key.clone();
        let blob: Option<Vec<u8>> = self
            .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
            .await?;
        match blob {
            Some(blob) => Ok(Some(self.sealer.open(&key, &blob)?)),
            None => Ok(None),
        }
    }

    /// Takes the lock for `id` if nobody holds it (then renewed in the background until the
    /// returned `Lock` is dropped); `None` when another instance holds it.
    pub async fn try_lock(self: &Arc<Self>, id: &str) -> Result<Option<Lock>, SharedError> {
        let key = self.key("lock", id);
        let mut call = self.acquire.key(&key);
        call.key(format!("{}:acme:fence", self.settings.name))
            .arg(&self.settings.instance)
            .arg(self.settings.lock_ttl.as_millis() as u64);
        let token: u64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        if token == 0 {
            return Ok(None);
        }
        self.count_lock("taken");
        tracing::info!(lock = %id, token, "cluster: ACME lock taken");
        let lost = Arc::new(AtomicBool::new(false));
        let renew = tokio::spawn(renew(
            Arc::downgrade(self),
            id.to_string(),
            token,
            lost.clone(),
        ));
        Ok(Some(Lock {
            shared: self.clone(),
            id: id.to_string(),
            token,
            lost,
            renew: renew.abort_handle(),
        }))
    }

    fn count_lock(&self, event: &str) {
        let m = &self.metrics.cluster;
        m.acme_lock_changes.with_label_values(&[event]).inc();
    }

    /// Renews (`true`) or releases the lock `id` held with `token`; whether it still was ours.
    async fn keep_lock(&self, id: &str, token: u64, renew: bool) -> Result<bool, SharedError> {
        let mut call = self.keep.key(self.key("lock", id));
        call.arg(token)
            .arg(if renew { "renew" } else { "release" })
            .arg(self.settings.lock_ttl.as_millis() as u64);
        let kept: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(kept == 1)
    }

    fn seal_json<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, SharedError> {
        let json = serde_json::to_vec(value).map_err(|e| SharedError::Bad(e.to_string()))?;
        Ok(self.sealer.seal(key, &json)?)
    }
}

/// A short, stable name for an ACME directory in keys (12 hex digits of SHA-256).
pub fn directory_id(directory: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, directory.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A lock this instance holds; renewed every third of the TTL until dropped, then released.
pub struct Lock {
    shared: Arc<SharedAcme>,
    id: String,
    token: u64,
    lost: Arc<AtomicBool>,
    renew: tokio::task::AbortHandle,
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.renew.abort();
        if self.lost.load(Ordering::Relaxed) {
            return;
        }
        let (shared, id, token) = (self.shared.clone(), self.id.clone(), self.token);
        tokio::spawn(async move {
            if let Ok(true) = shared.keep_lock(&id, token, false).await {
                shared.count_lock("released");
                tracing::debug!(lock = %id, token, "cluster: ACME lock released");
            }
        });
    }
}

impl Lock {
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the lock was found expired or taken over (writes would be refused).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    pub fn shared(&self) -> &Arc<SharedAcme> {
        &self.shared
    }

    async fn fenced(&self, op: &str, target: &str, args: &[Vec<u8>]) -> Result<(), SharedError> {
        let s = &self.shared;
        let mut call = s.write.key(s.key("lock", &self.id));
        call.key(target).key(s.key("order", &self.id));
        call.arg(self.token).arg(op);
        for a in args {
            call.arg(a.as_slice());
        }
        let written: i64 = s
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        if written == 1 {
            return Ok(());
        }
        s.metrics.cluster.acme_fenced_refusals.inc();
        if !self.lost.swap(true, Ordering::Relaxed) {
            s.count_lock("lost");
        }
        let e = SharedError::Fenced(self.id.clone(), self.token);
        tracing::error!(lock = %self.id, token = self.token, op, error = %e, "cluster: fenced write refused; nothing was written");
        Err(e)
    }

    /// Stores the certificate (dropping the journal) and announces it.
    pub async fn write_cert(&self, cert: &CertBlob, not_after: u64) -> Result<(), SharedError> {
        let s = &self.shared;
        let key = s.key("cert", &self.id);
        let blob = s.seal_json(&key, cert)?;
        let args = [
            blob,
            not_after.to_string().into_bytes(),
            self.id.clone().into_bytes(),
            s.channel().into_bytes(),
        ];
        self.fenced("cert", &key, &args).await
    }

    /// Journals the order in flight.
    pub async fn write_journal(&self, journal: &Journal) -> Result<(), SharedError> {
        let key = self.shared.key("order", &self.id);
        let blob = self.shared.seal_json(&key, journal)?;
        self.fenced("set", &key, &[blob]).await
    }

    /// Drops the journal (its order is invalid or gone).
    pub async fn drop_journal(&self) -> Result<(), SharedError> {
        let key = self.shared.key("order", &self.id);
        self.fenced("del", &key, &[]).await
    }

    /// Stores the cluster's account for `directory` (held under the account's lock).
    pub async fn write_account(&self, directory: &str, json: &[u8]) -> Result<(), SharedError> {
        let s = &self.shared;
        let key = s.key("account", &directory_id(directory));
        let blob = s.sealer.seal(&key, json)?;
        self.fenced("set", &key, &[blob]).await
    }
}

/// Renews the lock every third of its TTL; a renewal refused (the lock expired or another
/// instance took it) marks it lost. A store that does not answer is retried: the TTL decides.
async fn renew(shared: std::sync::Weak<SharedAcme>, id: String, token: u64, lost: Arc<AtomicBool>) {
    loop {
        let every = match shared.upgrade() {
            Some(s) => s.settings.lock_ttl / 3,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(s) = shared.upgrade() else { return };
        match s.keep_lock(&id, token, true).await {
            Ok(true) => {}
            Ok(false) => {
                if !lost.swap(true, Ordering::Relaxed) {
                    s.count_lock("lost");
                }
                tracing::warn!(lock = %id, token, "cluster: ACME lock lost (expired or taken over); this instance's writes under it will be refused");
                return;
            }
            Err(e) => {
                tracing::warn!(lock = %id, token, error = %e, "cluster: cannot renew the ACME lock; retrying");
            }
        }
    }
}

/// Listens for announced certificates and wakes the name set's task; made again on failure.
async fn subscribe(shared: std::sync::Weak<SharedAcme>) {
    loop {
        let (endpoint, channel) = match shared.upgrade() {
            Some(s) => (s.endpoint.clone(), s.channel()),
            None => return,
        };
        if let Err(e) = listen(&shared, &endpoint, &channel).await {
            tracing::debug!(error = %e, "cluster: certificate announcements not received; subscribing again");
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

async fn listen(
    shared: &std::sync::Weak<SharedAcme>,
    endpoint: &Endpoint,
    channel: &str,
) -> Result<(), redis::RedisError> {
    let io = |e: String| redis::RedisError::from((redis::ErrorKind::IoError, "pubsub", e));
    let pubsub = tokio::time::timeout(CALL_TIMEOUT, endpoint.pubsub())
        .await
        .map_err(|_| io("no connection within 2s".into()))?;
    let mut pubsub = pubsub.map_err(io)?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Some(s) = shared.upgrade() else {
            return Ok(());
        };
        let Ok(id) = msg.get_payload::<String>() else {
            continue;
        };
        let waiter = {
            let waiters = s.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            waiters.get(&id).cloned()
        };
        if let Some(w) = waiter {
            w.notify_one();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_value_names_its_holder() {
        let h = parse_holder("abc:a.test", "17|1796579603|gh-1:443").expect("holder");
        assert_eq!(
            h,
            Holder {
                lock: "abc:a.test".into(),
                instance: "gh-1:443".into(),
                token: 17,
                since: 1796579603
            }
        );
        assert_eq!(parse_holder("x", "garbage"), None);
    }

    #[test]
    fn a_directory_has_a_short_stable_id() {
        let a = directory_id("https://acme-v02.api.letsencrypt.org/directory");
        assert_eq!(a.len(), 12);
        assert_eq!(
            a,
            directory_id("https://acme-v02.api.letsencrypt.org/directory")
        );
        assert_ne!(a, directory_id("https://127.0.0.1:14000/dir"));
    }
}
