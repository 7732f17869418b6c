//! The cluster store (`[cluster] store`, Redis) as the rate limits use it (`docs/cluster.md`).
//!
//! Owns: the one connection a process keeps to the store, made and remade in the background
//! (the process starts and serves without it, and `/ready` never asks about it); whether global
//! limits count in the store now ("up") or fall back; and the one call they make, the lease
//! script, never awaited longer than `timeout`. A call that fails or times out marks the store
//! down at once: every limit then falls back without calling it, and a watcher pings it every
//! `PROBE_EVERY` until it answers again, when limits count globally again. How the store is
//! reached (TLS, Sentinel) is [`connect`]'s.

pub mod acme;
pub mod challenges;
pub mod connect;
pub mod crypt;
pub mod members;
pub mod status;

use crate::config::{Cluster, Fallback, Secret};
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use connect::Endpoint;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often a store that is down (or not yet reached) is tried.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Failed probes after which the connection is made anew rather than left to reconnect.
const RENEW_AFTER: u32 = 10;

/// GCRA over leases, evaluated in the store on its own clock (`TIME`), so instances' clocks do
/// not matter. A budget's state is its theoretical arrival time (TAT, microseconds), kept
/// under KEYS[1] only while it is ahead of now (`PX`). ARGV: the emission interval (µs, may be
/// fractional), the burst, the tokens wanted, the tokens given back (an expired lease's
/// leftovers), and 1 for a flooding client (else 0). Of the `avail` tokens the budget holds now
/// it grants a quarter, at least one and at most `want`: leases shrink to one token as the
/// client nears its limit. A flooding client is granted all of them (up to `want`): it spends
/// them at once, and asks again only every `REASK` (`rate_limit::global`). Returns
/// `{granted, wait}`: with nothing granted, `wait` is the µs until the next token.
const LEASE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = interval * tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(ARGV[4]) * interval
if tat < now then tat = now end
local avail = math.floor((now + tau - tat) / interval)
local grant = 0
if avail >= 1 and want >= 1 then
  if ARGV[5] == '1' then
    grant = math.min(want, avail)
  else
    grant = math.min(want, math.max(1, math.floor(avail / 4)))
  end
  tat = tat + grant * interval
end
if tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
if grant > 0 then return {grant, 0} end
return {0, math.ceil(tat + interval - tau - now)}
";

/// What one lease call got: `tokens` (0: refused), and with none the wait for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub tokens: u32,
    pub wait: Duration,
}

/// One lease call's request: up to `want` tokens, `give_back` returned, `greedy` for a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAsk {
    pub want: u32,
    pub give_back: u32,
    pub greedy: bool,
}

/// One budget's rate as the script takes it.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Microseconds between two tokens.
    pub interval_us: f64,
    pub burst: u32,
}

/// The store connection and its health, shared by every global limit of a process.
pub struct Store {
    settings: Cluster,
    endpoint: Endpoint,
    secret: Secret,
    conn: ArcSwapOption<ConnectionManager>,
    /// Where `conn` goes (for Sentinel: the master when it was made; compared on each probe).
    at: Mutex<String>,
    up: AtomicBool,
    wake: Arc<Notify>,
    script: redis::Script,
    metrics: Arc<Metrics>,
    /// Tokens leased by this instance and neither spent nor given back (for `/cluster`).
    leased: AtomicI64,
}

impl Store {
    /// A store for `settings`; connects (and reconnects) in the background, until dropped.
    pub fn start(
        settings: &Cluster,
        endpoint: Endpoint,
        secret: Secret,
        metrics: Arc<Metrics>,
    ) -> Arc<Store> {
        endpoint.announce();
        let store = Arc::new(Store {
            settings: settings.clone(),
            endpoint,
            secret,
            conn: ArcSwapOption::empty(),
            at: Mutex::new(String::new()),
            up: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            script: redis::Script::new(LEASE_SCRIPT),
            metrics,
            leased: AtomicI64::new(0),
        });
        store.metrics.cluster.store_up.set(0);
        if settings.global_limits() {
            tracing::info!(
                cluster = %settings.name,
                instance = %settings.instance,
                "cluster: connecting to the store in the background; rate limits fall back to `{}` until it answers",
                fallback_word(settings.rate_limit_fallback),
            );
        } else {
            // `rate_limits = "local"`: this connection carries only the ACME challenge answers
            tracing::info!(
                cluster = %settings.name,
                instance = %settings.instance,
                "cluster: connecting to the store in the background (for ACME challenge answers; rate limits count locally)",
            );
        }
        tokio::spawn(watch(Arc::downgrade(&store), store.wake.clone()));
        store
    }

    /// Whether this store serves `settings` with `secret`, reached at `endpoint` (a reload
    /// keeps it, and its budgets).
    pub fn serves(&self, settings: &Cluster, endpoint: &Endpoint, secret: &Secret) -> bool {
        self.settings == *settings && self.endpoint == *endpoint && self.secret == *secret
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn settings(&self) -> &Cluster {
        &self.settings
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Counts tokens into (or, negative, out of) the leases this instance holds.
    pub fn add_leased(&self, tokens: i64) {
        if tokens != 0 {
            self.leased.fetch_add(tokens, Ordering::Relaxed);
        }
    }

    /// Tokens leased and neither spent nor given back yet (expired ones until their slot goes).
    pub fn leased(&self) -> i64 {
        self.leased.load(Ordering::Relaxed).max(0)
    }

    /// Whether global limits count in the store now (else they fall back without calling it).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Asks the budget under `key` for up to `want` tokens (all it holds if `greedy`, else a
    /// quarter), giving `give_back` unspent ones back. `None` when the store failed or did not
    /// answer within `timeout`: it is then down.
    pub async fn lease(&self, key: &str, rate: Rate, ask: LeaseAsk) -> Option<Grant> {
        let LeaseAsk {
            want,
            give_back,
            greedy,
        } = ask;
        let Some(conn) = self.conn.load_full() else {
            self.fail("error", "no connection yet");
            return None;
        };
        let mut conn = (*conn).clone();
        let mut call = self.script.key(key);
        call.arg(rate.interval_us)
            .arg(rate.burst)
            .arg(want)
            .arg(give_back)
            .arg(u8::from(greedy));
        let started = Instant::now();
        let answer = tokio::time::timeout(
            self.settings.timeout,
            call.invoke_async::<(u32, u64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((tokens, wait_us))) => {
                let m = &self.metrics.cluster;
                m.store_seconds.observe(started.elapsed().as_secs_f64());
                let result = match (tokens, want) {
                    (0, 0) => "returned",
                    (0, _) => "refused",
                    _ => "granted",
                };
                m.store_calls.with_label_values(&[result]).inc();
                let wait = Duration::from_micros(wait_us);
                Some(Grant { tokens, wait })
            }
            Ok(Err(e)) => {
                self.fail("error", &e.to_string());
                None
            }
            Err(_) => {
                self.fail("timeout", "no answer within [cluster] timeout");
                None
            }
        }
    }

    /// A failed call: counted, and the first one since the store was up makes every limit
    /// fall back until the watcher sees it answer again.
    fn fail(&self, result: &str, error: &str) {
        let m = &self.metrics.cluster;
        m.store_calls.with_label_values(&[result]).inc();
        if self.up.swap(false, Ordering::Relaxed) {
            m.fallbacks.inc();
            m.store_up.set(0);
            tracing::warn!(
                cluster = %self.settings.name,
                error,
                "cluster store did not answer; rate limits fall back to `{}` until it does",
                fallback_word(self.settings.rate_limit_fallback),
            );
            self.wake.notify_one();
        }
    }

    fn set_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.metrics.cluster.store_up.set(1);
            tracing::info!(cluster = %self.settings.name, "cluster store answers; rate limits are counted for the whole cluster");
        }
    }
}

fn fallback_word(fallback: Fallback) -> &'static str {
    match fallback {
        Fallback::Local => "local",
        Fallback::Allow => "allow",
        Fallback::Deny => "deny",
    }
}

/// Keeps the connection, and says when the store answers again: every `PROBE_EVERY` while it is
/// down, else when a call fails (or every few seconds, to notice the store is gone). Why it
/// cannot connect (a wrong CA, a sentinel that does not answer) is logged at the first failed
/// probe, then when it changes but at most every `SAY_AGAIN`, not every probe.
async fn watch(store: Weak<Store>, wake: Arc<Notify>) {
    const SAY_AGAIN: Duration = Duration::from_secs(10);
    let mut failed = 0u32;
    let mut said = String::new();
    let mut said_at = Instant::now();
    loop {
        let up = match store.upgrade() {
            Some(store) => {
                let probed = probe(&store).await;
                failed = if probed.is_ok() { 0 } else { failed + 1 };
                if failed.is_multiple_of(RENEW_AFTER) && failed > 0 {
                    // the manager reconnects by itself; a fresh one is the belt to its braces
                    store.conn.store(None);
                }
                if let Err(why) = &probed {
                    if said.is_empty() || (*why != said && said_at.elapsed() >= SAY_AGAIN) {
                        tracing::warn!(cluster = %store.settings.name, error = %why, "cluster store not reachable; retrying every {PROBE_EVERY:?}");
                        said.clone_from(why);
                        said_at = Instant::now();
                    }
                } else {
                    said.clear();
                }
                probed.is_ok()
            }
            None => return,
        };
        if up {
            let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
        } else {
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// Connects if there is no connection yet (or, for Sentinel, the sentinels name another
/// master now); while the store is down, pings it (and loads the script, so the first lease
/// after it comes back is one round trip). `Ok` when it is up.
async fn probe(store: &Store) -> Result<(), String> {
    if store.is_up() {
        return Ok(());
    }
    if store.endpoint.is_sentinel() && store.conn.load().is_some() {
        let moved = match store.endpoint.master_now().await {
            Some(now) => *store.at.lock().unwrap_or_else(|e| e.into_inner()) != now,
            None => false,
        };
        if moved {
            store.conn.store(None);
        }
    }
    let conn = match store.conn.load_full() {
        Some(conn) => conn,
        None => {
            let made = store.endpoint.manager().await?;
            tracing::info!(cluster = %store.settings.name, at = %made.at, "cluster store connected");
            *store.at.lock().unwrap_or_else(|e| e.into_inner()) = made.at;
            let conn = Arc::new(made.conn);
            store.conn.store(Some(conn.clone()));
            conn
        }
    };
    let mut conn = (*conn).clone();
    let wait = store.settings.timeout.max(Duration::from_millis(500));
    let load = store.script.prepare_invoke();
    match tokio::time::timeout(wait, load.load_async(&mut conn)).await {
        Ok(Ok(_)) => {
            store.set_up();
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}
