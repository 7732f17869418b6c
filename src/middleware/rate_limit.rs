//! Per-client rate limits: governor's GCRA over a key table bounded in size (`table`).
//!
//! Owns: the `Limiter` a route checks, and the `Limiters` registry that hands the same limiter
//! to every snapshot whose definition did not change (so a reload keeps the budgets) and sweeps
//! refilled keys. What a request is counted under (an address, or a header's value) is `key`'s;
//! how the table stays bounded without refusing anyone is `table`'s. A limit counted for the
//! whole cluster (`[cluster] rate_limits = "global"`) asks the store through `global`, and falls
//! back to this instance's own count (or `allow`, or `deny`) while the store cannot answer.

mod global;
mod key;
mod table;

pub use key::{client_key, BudgetKey};
pub use table::KeyCaps;

use crate::cluster::{Rate, Store};
use crate::config::{Fallback, RateKey, RateLimit};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, Method};
use key::KeyBy;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use table::{Ask, CappedStore};

/// How often refilled keys are dropped from every live limiter.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

type Gcra =
    RateLimiter<Ask, CappedStore, DefaultClock, NoOpMiddleware<<DefaultClock as Clock>::Instant>>;

/// One budget: a definition from the config and its live state.
pub struct Limiter {
    spec: RateLimit,
    key_by: KeyBy,
    gcra: Gcra,
    store: CappedStore,
    clock: DefaultClock,
    /// `store.evicted()` when the sweeper last reported it.
    reported_evictions: AtomicU64,
    /// Counted for the whole cluster; `None` for a limit of this instance alone.
    global: Option<Shared>,
}

/// A global limit's parts: its table of leases, and the secret its header values are keyed with.
struct Shared {
    leases: global::Global,
    secret: ring::hmac::Key,
    fallback: Fallback,
}

/// A refusal: retry after this many whole seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

/// A wait, rounded up to whole seconds (at least 1).
fn retry_after(wait: Duration) -> RetryAfter {
    RetryAfter((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
}

fn quota(spec: &RateLimit) -> Quota {
    let one = NonZeroU32::MIN;
    // validation guarantees requests >= 1 and per / requests >= 1ns
    let period = spec.per / spec.requests.max(1);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(one))
        .allow_burst(NonZeroU32::new(spec.burst).unwrap_or(one))
}

/// A name for a definition that every instance computes alike: the same budget in the store.
fn digest(spec: &RateLimit) -> String {
    let methods: Vec<&str> = spec.methods.iter().map(http::Method::as_str).collect();
    let key = match &spec.key {
        RateKey::Ip => "ip",
        RateKey::Header(name) => name.as_str(),
    };
    let text = format!(
        "{}|{}|{}|{}|{}|{key}",
        spec.scope,
        spec.requests,
        spec.per.as_nanos(),
        spec.burst,
        methods.join(",")
    );
    let sum = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    sum.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn shared(spec: &RateLimit, caps: KeyCaps, store: Arc<Store>) -> Shared {
    let rate = Rate {
        interval_us: spec.per.as_secs_f64() * 1e6 / f64::from(spec.requests.max(1)),
        burst: spec.burst.max(1),
    };
    let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &store.secret().0);
    let fallback = store.settings().rate_limit_fallback;
    Shared {
        leases: global::Global::new(store, &digest(spec), rate, caps.total),
        secret,
        fallback,
    }
}

impl Limiter {
    fn new(spec: &RateLimit, caps: KeyCaps, cluster: Option<Arc<Store>>) -> Limiter {
        let clock = DefaultClock::default();
        let key_by = KeyBy::new(&spec.key);
        // made before the governor, so the table's clock starts no later than governor's
        let store = CappedStore::new(caps, key_by.reads_headers(), &clock);
        Limiter {
            spec: spec.clone(),
            key_by,
            gcra: RateLimiter::new(quota(spec), store.clone(), clock.clone()),
            store,
            clock,
            reported_evictions: AtomicU64::new(0),
            global: cluster.map(|store| shared(spec, caps, store)),
        }
    }

    /// Whether this budget is counted for the whole cluster (`check_global` then decides).
    pub fn is_global(&self) -> bool {
        self.global.is_some()
    }

    /// [`Limiter::check`] for a budget that may be counted for the whole cluster: then the
    /// store decides (from this instance's lease when it can, else within `[cluster] timeout`),
    /// and `rate_limit_fallback` when it cannot.
    pub async fn check_global(
        &self,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<(), RetryAfter> {
        let Some(global) = &self.global else {
            return self.check(client, headers);
        };
        let key = self.key_by.budget_key(client, headers);
        let suffix = || self.key_by.store_suffix(client, headers, &global.secret);
        match global.leases.check(key, suffix).await {
            global::Verdict::Admit => Ok(()),
            global::Verdict::Refuse(wait) => Err(retry_after(wait)),
            global::Verdict::Fallback => match global.fallback {
                Fallback::Local => self.check(client, headers),
                Fallback::Allow => Ok(()),
                Fallback::Deny => Err(RetryAfter(1)),
            },
        }
    }

    /// A failed password's charge: for a global budget, a token of this instance's lease if it
    /// holds one (no store call on that path), else this instance's own count.
    pub fn charge(&self, client: IpAddr, headers: &HeaderMap) {
        match &self.global {
            Some(global) if global.leases.store().is_up() => {
                global
                    .leases
                    .charge(self.key_by.budget_key(client, headers));
            }
            _ => {
                let _ = self.check(client, headers);
            }
        }
    }

    /// Whether this budget counts requests with `method`.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.spec.methods.is_empty() || self.spec.methods.contains(method)
    }

    /// Takes one request from its budget, or says when the next one would be allowed. `client`
    /// is the grouped address (`client_key`); `headers` are read only by a header-keyed limit.
    pub fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), RetryAfter> {
        let key = self.key_by.budget_key(client, headers);
        self.gcra
            .check_key(&Ask { key, client })
            .map_err(|not_until| retry_after(not_until.wait_time_from(self.clock.now())))
    }

    /// Drops refilled keys; reports the evictions a full table made since the last sweep.
    fn sweep(&self) {
        if let Some(global) = &self.global {
            global.leases.sweep();
        }
        let before = self.gcra.len();
        self.gcra.retain_recent();
        if self.gcra.len() < before / 2 {
            self.gcra.shrink_to_fit();
        }
        let evicted = self.store.evicted();
        let reported = self.reported_evictions.swap(evicted, Ordering::Relaxed);
        if evicted > reported {
            let stats = self.stats();
            tracing::warn!(
                scope = %self.spec.scope,
                tracked = stats.tracked,
                cap = stats.caps.total,
                per_ip = stats.caps.per_client,
                evicted = evicted - reported,
                "rate limit key table full: the keys with the most budget left were evicted to make room (server.rate_limit_keys, rate_limit_keys_per_ip)"
            );
        }
    }

    /// Keys tracked now, the caps, and keys evicted to make room so far.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            tracked: self.gcra.len(),
            caps: self.store.caps(),
            evicted: self.store.evicted(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    pub tracked: usize,
    pub caps: KeyCaps,
    pub evicted: u64,
}

/// Every live limiter by definition: a snapshot asks for its limits here, and gets the same
/// `Limiter` (with its budgets) as the previous snapshot when the definition is unchanged.
/// A definition, its table's caps, and the store it counts in (by address; `None`: local).
type LiveKey = (RateLimit, KeyCaps, Option<usize>);

#[derive(Default)]
pub struct Limiters {
    live: Mutex<HashMap<LiveKey, Weak<Limiter>>>,
}

impl Limiters {
    /// `store`: the cluster store the budget counts in, `None` for this instance alone. A
    /// limiter holds its store, so a live one's address names it.
    pub fn get(&self, spec: &RateLimit, caps: KeyCaps, store: Option<&Arc<Store>>) -> Arc<Limiter> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = (spec.clone(), caps, store.map(|s| Arc::as_ptr(s) as usize));
        if let Some(limiter) = live.get(&key).and_then(Weak::upgrade) {
            return limiter;
        }
        let limiter = Arc::new(Limiter::new(spec, caps, store.cloned()));
        live.insert(key, Arc::downgrade(&limiter));
        limiter
    }

    fn alive(&self) -> Vec<Arc<Limiter>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, weak| weak.strong_count() > 0);
        live.values().filter_map(Weak::upgrade).collect()
    }

    /// Drops idle clients from every live limiter every few seconds, until the registry is gone.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else {
                    break;
                };
                for limiter in registry.alive() {
                    limiter.sweep();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
