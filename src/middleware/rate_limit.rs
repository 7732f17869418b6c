//! Per-client rate limits: governor's GCRA over a key table bounded in size (`table`).
//!
//! Owns: the `Limiter` a route checks, and the `Limiters` registry that hands the same limiter
//! to every snapshot whose definition did not change (so a reload keeps the budgets) and sweeps
//! refilled keys. What a request is counted under (an address, or a header's value) is `key`'s;
//! how the table stays bounded without refusing anyone is `table`'s.

mod key;
mod table;

pub use key::{client_key, BudgetKey};
pub use table::KeyCaps;

use crate::config::RateLimit;
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
}

/// A refusal: retry after this many whole seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

fn quota(spec: &RateLimit) -> Quota {
    let one = NonZeroU32::MIN;
    // validation guarantees requests >= 1 and per / requests >= 1ns
    let period = spec.per / spec.requests.max(1);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(one))
        .allow_burst(NonZeroU32::new(spec.burst).unwrap_or(one))
}

impl Limiter {
    fn new(spec: &RateLimit, caps: KeyCaps) -> Limiter {
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
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                RetryAfter((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
            })
    }

    /// Drops refilled keys; reports the evictions a full table made since the last sweep.
    fn sweep(&self) {
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
#[derive(Default)]
pub struct Limiters {
    live: Mutex<HashMap<(RateLimit, KeyCaps), Weak<Limiter>>>,
}

impl Limiters {
    pub fn get(&self, spec: &RateLimit, caps: KeyCaps) -> Arc<Limiter> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = (spec.clone(), caps);
        if let Some(limiter) = live.get(&key).and_then(Weak::upgrade) {
            return limiter;
        }
        let limiter = Arc::new(Limiter::new(spec, caps));
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
