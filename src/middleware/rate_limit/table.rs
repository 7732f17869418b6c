//! One rate limit's key table: a GCRA state (the theoretical arrival time, "TAT") per budget
//! key, at most `total` of them and, for a header-keyed limit, at most `per_client` header
//! values brought in by one client address.
//!
//! No client ever shares a budget with another: a new key always gets a state of its own. When
//! there is no room, room is made by evicting the states whose budget is fullest (the lowest
//! TAT): a refilled state is exactly a fresh one, so evicting it loses nothing, and among the
//! rest the one with the most budget left loses the least (if it comes back, it gets back only
//! what it had not spent). What eviction can never do is refuse anyone: a client's requests are
//! judged by its own state or by a fresh one. So a flood of new keys, from many addresses or
//! of made-up header values, costs bounded memory and denies no one; at worst it makes the
//! limit forget the least-spent clients.
//!
//! Hot path: a known key is one read of one DashMap shard, as before. A new key on a full table
//! makes room for many at once: one pass over the table drops every refilled state and, if that
//! is not enough, the lowest TATs down to 7/8 of `total` (a few milliseconds for 100,000 keys,
//! once per 12,500 new keys). One pass runs at a time per limit; requests that meet a pass in
//! progress insert anyway, up to `total + total / 16`, and wait beyond.

use super::key::BudgetKey;
use crate::config::ServerLimits;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How many states a table keeps at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyCaps {
    /// Every key together (`[server] rate_limit_keys`).
    pub total: usize,
    /// Header values first seen from one client address (`[server] rate_limit_keys_per_ip`).
    pub per_client: usize,
}

impl From<&ServerLimits> for KeyCaps {
    fn from(limits: &ServerLimits) -> KeyCaps {
        KeyCaps {
            total: limits.rate_limit_keys,
            per_client: limits.rate_limit_keys_per_ip,
        }
    }
}

/// What governor asks the table about: the budget and the (grouped) address asking for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ask {
    pub key: BudgetKey,
    pub client: IpAddr,
}

struct Cell {
    /// Nanoseconds since `Table::start` (0: never measured), as governor's own states.
    tat: AtomicU64,
    /// The address that brought the key in (for a header value: whose `per_client` it counts in).
    owner: IpAddr,
}

/// Shared by the `Limiter`'s governor and the `Limiter` itself (for the counts and sweeps).
#[derive(Clone)]
pub struct CappedStore(Arc<Table>);

struct Table {
    map: DashMap<BudgetKey, Cell>,
    /// For a header-keyed limit: the values each address brought in (some perhaps gone since,
    /// pruned when it matters).
    owners: Option<DashMap<IpAddr, Vec<u64>>>,
    len: AtomicUsize,
    caps: KeyCaps,
    clock: DefaultClock,
    start: <DefaultClock as Clock>::Instant,
    /// Held by the one pass that makes room.
    evicting: Mutex<()>,
    evicted: AtomicU64,
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

impl CappedStore {
    /// `by_header`: keys may be header values, which are bounded per client address.
    pub fn new(caps: KeyCaps, by_header: bool, clock: &DefaultClock) -> Self {
        CappedStore(Arc::new(Table {
            map: DashMap::new(),
            owners: by_header.then(DashMap::new),
            len: AtomicUsize::new(0),
            caps: KeyCaps {
                total: caps.total.max(1),
                per_client: caps.per_client.max(1),
            },
            clock: clock.clone(),
            start: clock.now(),
            evicting: Mutex::new(()),
            evicted: AtomicU64::new(0),
        }))
    }

    pub fn caps(&self) -> KeyCaps {
        self.0.caps
    }

    /// States dropped to make room so far (refilled ones swept when idle are not counted).
    pub fn evicted(&self) -> u64 {
        self.0.evicted.load(Ordering::Relaxed)
    }
}

impl Table {
    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Now, on the clock the states are kept in. `start` is taken just before governor's own,
    /// so this is at most a few nanoseconds ahead of governor's idea of now.
    fn now(&self) -> u64 {
        self.clock.now().duration_since(self.start).as_u64()
    }

    fn tat_of(&self, value: u64) -> Option<u64> {
        let cell = self.map.get(&BudgetKey::Value(value))?;
        Some(cell.tat.load(Ordering::Relaxed))
    }

    fn owned_by(&self, value: u64, client: IpAddr) -> bool {
        let cell = self.map.get(&BudgetKey::Value(value));
        cell.is_some_and(|c| c.owner == client)
    }

    fn remove_if(&self, key: &BudgetKey, drop: impl FnOnce(&Cell) -> bool) {
        if self.map.remove_if(key, |_, cell| drop(cell)).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes room for a new key when the table is full (see the module doc).
    fn make_room(&self) {
        let total = self.caps.total;
        if self.len() < total {
            return;
        }
        let _pass = match self.evicting.try_lock() {
            Ok(pass) => pass,
            // another request's pass is making room; a few may get in meanwhile
            Err(_) if self.len() < total + total / 16 => return,
            Err(_) => self.evicting.lock().unwrap_or_else(|e| e.into_inner()),
        };
        if self.len() >= total {
            self.evict_down_to(total - (total / 8).max(1));
        }
    }

    /// Drops every refilled state, then the fullest budgets until at most `keep` are left.
    fn evict_down_to(&self, keep: usize) {
        let now = self.now();
        let mut live: Vec<u64> = self
            .map
            .iter()
            .map(|cell| cell.tat.load(Ordering::Relaxed))
            .filter(|&tat| tat > now)
            .collect();
        let threshold = match live.len().checked_sub(keep) {
            Some(over) if over > 0 => *live.select_nth_unstable(over - 1).1,
            _ => now,
        };
        drop(live);
        let mut dropped = 0;
        self.map.retain(|_, cell| {
            let keep = cell.tat.load(Ordering::Relaxed) > threshold;
            dropped += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        self.evicted.fetch_add(dropped as u64, Ordering::Relaxed);
        self.prune_owners();
    }

    /// Forgets the values no longer in the table (or now brought in by another address).
    fn prune_owners(&self) {
        if let Some(owners) = &self.owners {
            owners.retain(|client, values| {
                values.retain(|v| self.owned_by(*v, *client));
                !values.is_empty()
            });
        }
    }

    /// A new key: room made, the address's share of header values held to `per_client` (its
    /// value with the most budget left evicted), the state inserted and measured.
    fn admit<T, E>(
        &self,
        ask: &Ask,
        f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    ) -> Result<T, E> {
        self.make_room();
        let insert = || {
            let cell = self.map.entry(ask.key).or_insert_with(|| {
                self.len.fetch_add(1, Ordering::Relaxed);
                Cell {
                    tat: AtomicU64::new(0),
                    owner: ask.client,
                }
            });
            measure(&cell.tat, f)
        };
        let (Some(owners), BudgetKey::Value(value)) = (&self.owners, ask.key) else {
            return insert();
        };
        // held while inserting, so two new values from one address are admitted one by one
        let mut values = owners
            .entry(ask.client)
            .or_insert_with(|| Vec::with_capacity(1));
        values.retain(|v| *v != value);
        if values.len() >= self.caps.per_client {
            values.retain(|v| self.owned_by(*v, ask.client));
        }
        if values.len() >= self.caps.per_client {
            self.evict_fullest_of(&mut values, ask.client);
        }
        values.push(value);
        insert()
    }

    /// Evicts, of `values` (one address's), the one whose budget is fullest.
    fn evict_fullest_of(&self, values: &mut Vec<u64>, client: IpAddr) {
        let fullest = values
            .iter()
            .enumerate()
            .min_by_key(|(_, v)| self.tat_of(**v).unwrap_or(0))
            .map(|(i, _)| i);
        if let Some(i) = fullest {
            let value = values.swap_remove(i);
            self.remove_if(&BudgetKey::Value(value), |cell| cell.owner == client);
        }
    }
}

impl StateStore for CappedStore {
    type Key = Ask;

    fn measure_and_replace<T, F, E>(&self, ask: &Ask, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(cell) = self.0.map.get(&ask.key) {
            return measure(&cell.tat, f);
        }
        self.0.admit(ask, f)
    }
}

impl ShrinkableKeyedStateStore<Ask> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = drop_below.as_u64();
        let table = &self.0;
        let mut dropped = 0;
        table.map.retain(|_, cell| {
            let keep = cell.tat.load(Ordering::Relaxed) > below;
            dropped += usize::from(!keep);
            keep
        });
        table.len.fetch_sub(dropped, Ordering::Relaxed);
        table.prune_owners();
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
        if let Some(owners) = &self.0.owners {
            owners.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
