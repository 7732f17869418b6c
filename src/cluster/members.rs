//! Who is in the cluster (`/cluster`, `gatehouse cluster status`, `docs/cluster.md`).
//!
//! Owns the heartbeat: while `[cluster]` is configured, a background task writes this instance's
//! `Member` record to `NAME:member:INSTANCE` every `BEAT_EVERY`, expiring after `BEAT_TTL` (an
//! instance that stops, or whose `[cluster]` a reload removes, drops out by itself), then reads
//! every member's record and keeps the result as a `View` that `/cluster` answers from memory.
//! Nothing on the request path reads or waits for any of it; the task has its own connection.

use super::acme::{parse_holder, Holder};
use super::connect::Endpoint;
use super::Store;
use crate::config::{Cluster, Config};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// How often an instance writes its record and reads the others'.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a record outlives its last heartbeat: three beats, so one slow beat drops no one.
pub const BEAT_TTL: Duration = Duration::from_secs(6);
/// The most one beat (connect, write, read) may take.
const BEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// The most records read (a cluster has a handful; this bounds a polluted namespace).
const MAX_MEMBERS: usize = 1000;

/// One instance as it describes itself in the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub instance: String,
    pub version: String,
    /// When the process started (Unix seconds).
    pub started: u64,
    /// Digest of its rate limits and `[cluster] rate_limits`/`rate_limit_fallback`.
    pub rate_limits_digest: String,
    /// Digest of its `[acme]`, its sites' certificates and `[cluster] acme`.
    pub acme_digest: String,
    /// How its limits count now: `global`, `fallback` (store failed) or `local`.
    pub rate_limits: String,
    /// Tokens leased from the store and not yet spent or given back.
    pub leased_tokens: i64,
    /// Times its global limits fell back since it started.
    pub fallbacks: u64,
}

/// The store as the heartbeat last found it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreHealth {
    pub up: bool,
    /// The last heartbeat's write, answered (milliseconds).
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

/// What `/cluster` answers (its JSON shape is documented in `docs/cluster.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub cluster: String,
    pub instance: String,
    /// When the store was last read (Unix seconds; 0: not yet).
    pub checked_at: u64,
    pub store: StoreHealth,
    /// Every member's digests equal this instance's.
    pub agree: bool,
    /// One line per member whose config differs from this instance's.
    pub disagreements: Vec<String>,
    /// By instance name; the last ones read while the store is down.
    pub members: Vec<Member>,
    /// Shared-ACME locks held now (`acme = "shared"`), by what they lock.
    #[serde(default)]
    pub locks: Vec<Holder>,
}

impl View {
    /// All is well: the store answers and every member runs the same limits and ACME config.
    pub fn healthy(&self) -> bool {
        self.store.up && self.agree
    }
}

/// What an instance publishes that does not change while it runs its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub settings: Cluster,
    pub rate_limits_digest: String,
    pub acme_digest: String,
}

impl Identity {
    pub fn of(settings: &Cluster, config: &Config) -> Identity {
        Identity {
            settings: settings.clone(),
            rate_limits_digest: rate_limits_digest(config),
            acme_digest: acme_digest(config),
        }
    }
}

/// The heartbeat task and its latest view; the task stops when this is dropped.
pub struct Membership {
    identity: Identity,
    endpoint: Endpoint,
    store: Option<Arc<Store>>,
    view: Arc<ArcSwap<View>>,
    task: JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Membership {
    /// Starts beating for `identity`; `store` (global limits) tells its state and leases.
    pub fn start(
        identity: Identity,
        endpoint: Endpoint,
        store: Option<Arc<Store>>,
        metrics: Arc<Metrics>,
        started: u64,
    ) -> Arc<Membership> {
        let view = Arc::new(ArcSwap::from_pointee(View {
            cluster: identity.settings.name.clone(),
            instance: identity.settings.instance.clone(),
            checked_at: 0,
            store: StoreHealth {
                up: false,
                latency_ms: None,
                error: Some("not reached yet".into()),
            },
            agree: false,
            disagreements: Vec::new(),
            members: Vec::new(),
            locks: Vec::new(),
        }));
        if store.is_none() {
            endpoint.announce();
        }
        let beat = Beat {
            identity: identity.clone(),
            endpoint: endpoint.clone(),
            store: store.clone(),
            metrics,
            started,
            view: view.clone(),
            conn: None,
        };
        Arc::new(Membership {
            identity,
            endpoint,
            store,
            view,
            task: tokio::spawn(beat.run()),
        })
    }

    /// Whether this heartbeat already publishes `identity` at `endpoint` with `store` (a
    /// reload keeps it).
    pub fn publishes(
        &self,
        identity: &Identity,
        endpoint: &Endpoint,
        store: Option<&Arc<Store>>,
    ) -> bool {
        let same_store = match (&self.store, store) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.identity == *identity && self.endpoint == *endpoint && same_store
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }
}

struct Beat {
    identity: Identity,
    endpoint: Endpoint,
    store: Option<Arc<Store>>,
    metrics: Arc<Metrics>,
    started: u64,
    view: Arc<ArcSwap<View>>,
    conn: Option<MultiplexedConnection>,
}

impl Beat {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let answer = tokio::time::timeout(BEAT_TIMEOUT, self.beat()).await;
            let answer =
                answer.unwrap_or_else(|_| Err(format!("no answer within {BEAT_TIMEOUT:?}")));
            if answer.is_err() {
                // a fresh connection next time: this one may be half-dead
                self.conn = None;
            }
            self.publish(answer);
        }
    }

    /// Writes this instance's record, reads every member's; the write's latency and the records.
    async fn beat(&mut self) -> Result<(Duration, Vec<Member>, Vec<Holder>), String> {
        let me = serde_json::to_string(&self.me()).map_err(|e| e.to_string())?;
        let settings = &self.identity.settings;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.endpoint.multiplexed().await?.conn),
        };
        let key = format!("{}:member:{}", settings.name, settings.instance);
        let started = Instant::now();
        redis::cmd("SET")
            .arg(&key)
            .arg(me)
            .arg("PX")
            .arg(BEAT_TTL.as_millis() as u64)
            .query_async::<()>(conn)
            .await
            .map_err(|e| e.to_string())?;
        let latency = started.elapsed();
        let members = read_members(conn, &settings.name).await?;
        let locks = read_locks(conn, &settings.name).await?;
        Ok((latency, members, locks))
    }

    fn me(&self) -> Member {
        let rate_limits = match &self.store {
            None => "local",
            Some(store) if store.is_up() => "global",
            Some(_) => "fallback",
        };
        Member {
            instance: self.identity.settings.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started,
            rate_limits_digest: self.identity.rate_limits_digest.clone(),
            acme_digest: self.identity.acme_digest.clone(),
            rate_limits: rate_limits.into(),
            leased_tokens: self.store.as_ref().map_or(0, |s| s.leased()),
            fallbacks: self.metrics.cluster.fallbacks.get(),
        }
    }

    fn publish(&self, answer: Result<(Duration, Vec<Member>, Vec<Holder>), String>) {
        let last = self.view.load_full();
        let mut view = (*last).clone();
        match answer {
            Ok((latency, members, locks)) => {
                view.locks = locks;
                view.checked_at = unix_now();
                view.store = StoreHealth {
                    up: true,
                    latency_ms: Some(latency.as_secs_f64() * 1e3),
                    error: None,
                };
                view.members = members;
            }
            Err(error) => {
                if last.store.up {
                    tracing::warn!(cluster = %view.cluster, %error, "cluster heartbeat failed; /cluster shows the members last read");
                }
                view.store.up = false;
                view.store.error = Some(error);
            }
        }
        view.disagreements = disagreements(&self.identity, &view.members);
        view.agree = view.disagreements.is_empty();
        let m = &self.metrics.cluster;
        m.members.set(view.members.len() as i64);
        m.config_disagreements
            .set(differing(&self.identity, &view.members) as i64);
        if last.agree && !view.agree {
            tracing::warn!(cluster = %view.cluster, disagreements = ?view.disagreements, "cluster members run different rate-limit or ACME configs");
        }
        self.view.store(Arc::new(view));
    }
}

/// Every record under `NAME:member:` (SCAN, not KEYS: the store serves limits meanwhile).
async fn read_members(conn: &mut MultiplexedConnection, name: &str) -> Result<Vec<Member>, String> {
    let (keys, records) = read_all(conn, &format!("{}:member:*", glob_escape(name))).await?;
    drop(keys);
    // a record that does not parse (another version's, or not ours) is left out
    let mut members: Vec<Member> = records
        .iter()
        .flatten()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect();
    members.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(members)
}

/// Every shared-ACME lock under `NAME:acme:lock:` and who holds it.
async fn read_locks(conn: &mut MultiplexedConnection, name: &str) -> Result<Vec<Holder>, String> {
    let prefix = format!("{name}:acme:lock:");
    let (keys, values) = read_all(conn, &format!("{}:acme:lock:*", glob_escape(name))).await?;
    let mut locks: Vec<Holder> = keys
        .iter()
        .zip(values)
        .filter_map(|(key, value)| parse_holder(key.strip_prefix(&prefix)?, &value?))
        .collect();
    locks.sort_by(|a, b| a.lock.cmp(&b.lock));
    Ok(locks)
}

/// The keys matching `pattern` (at most `MAX_MEMBERS`) and their values.
async fn read_all(
    conn: &mut MultiplexedConnection,
    pattern: &str,
) -> Result<(Vec<String>, Vec<Option<String>>), String> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        keys.extend(found);
        cursor = next;
        if cursor == 0 || keys.len() >= MAX_MEMBERS {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys.truncate(MAX_MEMBERS);
    if keys.is_empty() {
        return Ok((keys, Vec::new()));
    }
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok((keys, values))
}

fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Members whose rate-limit or ACME digest is not this instance's.
fn differing(me: &Identity, members: &[Member]) -> usize {
    members
        .iter()
        .filter(|m| {
            m.rate_limits_digest != me.rate_limits_digest || m.acme_digest != me.acme_digest
        })
        .count()
}

/// A line per member whose config differs from this instance's.
fn disagreements(me: &Identity, members: &[Member]) -> Vec<String> {
    let mut lines = Vec::new();
    for m in members {
        if m.rate_limits_digest != me.rate_limits_digest {
            lines.push(format!(
                "{}: rate limits differ (digest {}, {} here)",
                m.instance, m.rate_limits_digest, me.rate_limits_digest
            ));
        }
        if m.acme_digest != me.acme_digest {
            lines.push(format!(
                "{}: ACME config differs (digest {}, {} here)",
                m.instance, m.acme_digest, me.acme_digest
            ));
        }
    }
    lines
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every rate limit of every route (as validated, so inherited ones count where they apply),
/// and how the cluster counts them.
fn rate_limits_digest(config: &Config) -> String {
    let mut text = String::new();
    if let Some(c) = &config.cluster {
        text.push_str(&format!(
            "{:?}|{:?}\n",
            c.rate_limits, c.rate_limit_fallback
        ));
    }
    for site in &config.sites {
        for route in &site.routes {
            text.push_str(&format!("{:?}\n", route.policy.rate_limits));
        }
    }
    digest(&text)
}

/// `[acme]`, each site's certificate source and names, and `[cluster] acme`.
fn acme_digest(config: &Config) -> String {
    let mut text = format!("{:?}\n", config.acme);
    if let Some(c) = &config.cluster {
        text.push_str(&format!("{:?}\n", c.acme));
        // only where it applies: the digest of a config without shared ACME is as before
        if c.shared_acme() {
            text.push_str(&format!("lock_ttl {:?}\n", c.lock_ttl));
        }
    }
    for site in &config.sites {
        text.push_str(&format!(
            "{:?}|{:?}|{:?}\n",
            site.hosts, site.tls, site.acme
        ));
    }
    digest(&text)
}

fn digest(text: &str) -> String {
    let sum = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    sum.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, rl: &str, acme: &str) -> Member {
        Member {
            instance: name.into(),
            version: "0".into(),
            started: 0,
            rate_limits_digest: rl.into(),
            acme_digest: acme.into(),
            rate_limits: "global".into(),
            leased_tokens: 0,
            fallbacks: 0,
        }
    }

    #[test]
    fn members_with_other_digests_are_named() {
        let text = "[listen]\nhttp = \"127.0.0.1:0\"\n[cluster]\nstore = \"redis://localhost\"\nsecret = \"0123456789abcdef0123\"\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200 }\n";
        let config = crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid");
        let settings = config.cluster.clone().expect("[cluster]");
        let me = Identity::of(&settings, &config);
        let (rl, acme) = (me.rate_limits_digest.clone(), me.acme_digest.clone());
        let same = [member("a", &rl, &acme), member("b", &rl, &acme)];
        assert!(disagreements(&me, &same).is_empty());
        let other = [member("a", &rl, &acme), member("c", "x", &acme)];
        let lines = disagreements(&me, &other);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("c: rate limits differ"), "{lines:?}");
        assert_eq!(differing(&me, &other), 1);
    }

    #[test]
    fn glob_characters_in_the_name_are_escaped() {
        assert_eq!(glob_escape("gh"), "gh");
        assert_eq!(glob_escape("a*b[1]"), "a\\*b\\[1\\]");
    }
}
