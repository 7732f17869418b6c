//! Per-client rate limits: governor's GCRA over a key table with a hard cap on its size.
//!
//! Owns: the capped state store, the `Limiter` a route checks, and the `Limiters` registry that
//! hands the same limiter to every snapshot whose definition did not change (so a reload keeps
//! the budgets) and sweeps idle keys. What a request is counted under (an address, or a header's
//! value) is `key`'s.

mod key;

pub use key::{client_key, BudgetKey};

use crate::clock;
use crate::config::RateLimit;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, Method};
use key::KeyBy;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often idle keys are dropped from every live limiter.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// When a full table meets a new client, idle keys are swept at most this often.
const FULL_SWEEP_GAP: Duration = Duration::from_secs(1);

/// GCRA states (theoretical arrival times, nanoseconds since the limiter started) per client
/// (an address, or a header value's hash), at most `cap` of them; clients beyond the cap share
/// one state, so a flood of addresses or made-up values costs a bounded amount of memory and
/// still meets a limit. Shared with the `Limiter` that owns the
/// governor around it, which needs the counts.
#[derive(Clone)]
pub struct CappedStore(Arc<Table>);

struct Table {
    map: DashMap<BudgetKey, AtomicU64>,
    len: AtomicUsize,
    cap: usize,
    overflow: AtomicU64,
    overflowed: AtomicU64,
}

impl CappedStore {
    fn new(cap: usize) -> Self {
        CappedStore(Arc::new(Table {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            cap,
            overflow: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }))
    }

    fn is_full(&self) -> bool {
        self.0.len.load(Ordering::Relaxed) >= self.0.cap
    }
}

/// Compare-and-swap loop over one GCRA state, as governor's own in-memory state does it.
fn measure<T, E>(
    cell: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let mut prev = cell.load(Ordering::Acquire);
    loop {
        let (result, next) = f(NonZeroU64::new(prev).map(|n| Nanos::new(n.get())))?;
        let swapped =
            cell.compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed);
        match swapped {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
    }
}

impl StateStore for CappedStore {
    type Key = BudgetKey;

    fn measure_and_replace<T, F, E>(&self, key: &BudgetKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let table = &self.0;
        if let Some(cell) = table.map.get(key) {
            return measure(&cell, f);
        }
        if self.is_full() {
            table.overflowed.fetch_add(1, Ordering::Relaxed);
            return measure(&table.overflow, f);
        }
        let cell = table.map.entry(*key).or_insert_with(|| {
            table.len.fetch_add(1, Ordering::Relaxed);
            AtomicU64::new(0)
        });
        measure(&cell, f)
    }
}

impl ShrinkableKeyedStateStore<BudgetKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = drop_below.as_u64();
        let table = &self.0;
        table.map.retain(|_, tat| {
            let keep = tat.load(Ordering::Relaxed) > below;
            if !keep {
                table.len.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
        // the shared state is dropped with the rest once it has refilled
        if table.overflow.load(Ordering::Relaxed) <= below {
            table.overflow.store(0, Ordering::Relaxed);
        }
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Gcra = RateLimiter<
    BudgetKey,
    CappedStore,
    DefaultClock,
    NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

/// One budget: a definition from the config and its live state.
pub struct Limiter {
    spec: RateLimit,
    key_by: KeyBy,
    gcra: Gcra,
    store: CappedStore,
    clock: DefaultClock,
    /// `clock::millis()` of the last sweep forced by a full table (0: never).
    last_full_sweep: AtomicU64,
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
    fn new(spec: &RateLimit, cap: usize) -> Limiter {
        let clock = DefaultClock::default();
        let store = CappedStore::new(cap);
        Limiter {
            spec: spec.clone(),
            key_by: KeyBy::new(&spec.key),
            gcra: RateLimiter::new(quota(spec), store.clone(), clock.clone()),
            store,
            clock,
            last_full_sweep: AtomicU64::new(0),
        }
    }

    /// Whether this budget counts requests with `method`.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.spec.methods.is_empty() || self.spec.methods.contains(method)
    }

    /// Takes one request from its budget, or says when the next one would be allowed. `client`
    /// is the grouped address (`client_key`); `headers` are read only by a header-keyed limit.
    pub fn check(&self, client: IpAddr, headers: &HeaderMap) -> Result<(), RetryAfter> {
        self.take(self.key_by.budget_key(client, headers))
    }

    fn take(&self, key: BudgetKey) -> Result<(), RetryAfter> {
        if self.store.is_full() {
            self.sweep_when_full();
        }
        self.gcra.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            RetryAfter((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
        })
    }

    /// A full table first drops the clients whose budget has refilled (they lose nothing), at
    /// most once a second; only clients beyond that share the overflow budget.
    fn sweep_when_full(&self) {
        let now = clock::millis();
        let last = self.last_full_sweep.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= FULL_SWEEP_GAP.as_millis() as u64;
        let won = || {
            self.last_full_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        };
        if due && won() {
            self.gcra.retain_recent();
            let stats = self.stats();
            tracing::warn!(
                scope = %self.spec.scope,
                tracked = stats.tracked,
                cap = stats.cap,
                overflowed = stats.overflowed,
                "rate limit key table full: idle clients dropped; new clients beyond the cap share one budget (server.rate_limit_keys)"
            );
        }
    }

    fn sweep(&self) {
        let before = self.gcra.len();
        self.gcra.retain_recent();
        if self.gcra.len() < before / 2 {
            self.gcra.shrink_to_fit();
        }
    }

    /// Clients tracked now, and requests so far that met the shared overflow budget.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            tracked: self.gcra.len(),
            cap: self.store.0.cap,
            overflowed: self.store.0.overflowed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterStats {
    pub tracked: usize,
    pub cap: usize,
    pub overflowed: u64,
}

/// Every live limiter by definition: a snapshot asks for its limits here, and gets the same
/// `Limiter` (with its budgets) as the previous snapshot when the definition is unchanged.
#[derive(Default)]
pub struct Limiters {
    live: Mutex<HashMap<(RateLimit, usize), Weak<Limiter>>>,
}

impl Limiters {
    pub fn get(&self, spec: &RateLimit, cap: usize) -> Arc<Limiter> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let key = (spec.clone(), cap);
        if let Some(limiter) = live.get(&key).and_then(Weak::upgrade) {
            return limiter;
        }
        let limiter = Arc::new(Limiter::new(spec, cap));
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
mod tests {
    use super::*;
    use crate::config::RateKey;
    use http::{HeaderName, HeaderValue};

    fn spec(requests: u32, per_secs: u64, burst: u32) -> RateLimit {
        RateLimit {
            requests,
            per: Duration::from_secs(per_secs),
            burst,
            methods: vec![Method::POST],
            key: RateKey::Ip,
            scope: "test".into(),
        }
    }

    fn per_tenant(requests: u32, per_secs: u64, burst: u32) -> RateLimit {
        RateLimit {
            key: RateKey::Header(HeaderName::from_static("x-tenant")),
            ..spec(requests, per_secs, burst)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tenant(name: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_str(name).unwrap());
        headers
    }

    /// A request from `client` without headers.
    fn bare(limiter: &Limiter, client: &str) -> Result<(), RetryAfter> {
        limiter.check(ip(client), &HeaderMap::new())
    }

    #[test]
    fn burst_then_refusal_with_the_wait() {
        let limiter = Limiter::new(&spec(60, 60, 3), 100);
        assert!(limiter.applies_to(&Method::POST) && !limiter.applies_to(&Method::GET));
        for _ in 0..3 {
            assert!(bare(&limiter, "192.0.2.1").is_ok());
        }
        assert_eq!(bare(&limiter, "192.0.2.1"), Err(RetryAfter(1)));
        assert!(bare(&limiter, "192.0.2.2").is_ok());
        let slow = Limiter::new(&spec(1, 3600, 1), 100);
        assert!(bare(&slow, "192.0.2.1").is_ok());
        let Err(RetryAfter(secs)) = bare(&slow, "192.0.2.1") else {
            panic!("refused")
        };
        assert!((3599..=3600).contains(&secs), "{secs}");
    }

    #[test]
    fn the_table_never_grows_past_its_cap() {
        let limiter = Limiter::new(&spec(1, 3600, 1), 10);
        for i in 0..100u32 {
            let _ = limiter.check(IpAddr::from(i.to_be_bytes()), &HeaderMap::new());
        }
        let stats = limiter.stats();
        assert_eq!(stats.tracked, 10);
        assert_eq!(stats.overflowed, 90);
        // the clients beyond the cap share one budget: one got through, the rest wait
        assert!(bare(&limiter, "198.51.100.1").is_err());
    }

    #[test]
    fn header_keyed_budgets_are_per_value_and_fall_back_to_the_address() {
        let limiter = Limiter::new(&per_tenant(60, 60, 2), 100);
        let client = ip("192.0.2.1");
        for _ in 0..2 {
            assert!(limiter.check(client, &tenant("acme")).is_ok());
        }
        assert!(limiter.check(client, &tenant("acme")).is_err());
        // another tenant from the same address, and the same tenant from anywhere
        assert!(limiter.check(client, &tenant("globex")).is_ok());
        assert!(limiter.check(ip("192.0.2.7"), &tenant("acme")).is_err());
        // no header: the address's own budget in the same table
        for _ in 0..2 {
            assert!(limiter.check(client, &HeaderMap::new()).is_ok());
        }
        assert!(limiter.check(client, &tenant("")).is_err());
        assert_eq!(limiter.stats().tracked, 3);
    }

    #[test]
    fn made_up_header_values_stay_within_the_cap() {
        let limiter = Limiter::new(&per_tenant(1, 3600, 1), 10);
        let client = ip("192.0.2.1");
        for i in 0..100 {
            let _ = limiter.check(client, &tenant(&format!("tenant-{i}")));
        }
        let stats = limiter.stats();
        assert_eq!((stats.tracked, stats.overflowed), (10, 90));
        assert!(limiter.check(client, &tenant("tenant-new")).is_err());
    }

    #[test]
    fn registry_keeps_a_limiter_while_a_snapshot_holds_it() {
        let registry = Limiters::default();
        let a = registry.get(&spec(5, 60, 5), 100);
        let b = registry.get(&spec(5, 60, 5), 100);
        assert!(Arc::ptr_eq(&a, &b));
        let c = registry.get(&spec(6, 60, 6), 100);
        assert!(!Arc::ptr_eq(&a, &c));
        let d = registry.get(&per_tenant(5, 60, 5), 100);
        assert!(!Arc::ptr_eq(&a, &d), "a new key is a new budget");
        drop((a, b, d));
        assert_eq!(registry.alive().len(), 1);
    }
}
