//! One budget counted for the whole cluster (`[cluster] rate_limits = "global"`): the store is
//! the one authority (GCRA on its clock, `crate::cluster`), and this instance spends what it
//! leased from it without asking again (`docs/cluster.md`).
//!
//! Owns, per budget key seen lately, a `Slot`: the tokens this instance leased and has not
//! spent, until when they may be spent (`LEASE_FOR`; left over, they are given back with the
//! next call), and, after a refusal, until when the client is refused without asking. So a
//! client under its limit costs one store call per lease (a quarter of what its budget holds,
//! at most `MAX_LEASE`), and a refused one one call per token its budget refills.
//!
//! The table is bounded like the local one (`[server] rate_limit_keys`): a key that finds it
//! full is judged by the store alone (one token per call, nothing kept).

use super::key::BudgetKey;
use crate::cluster::{Grant, Rate, Store};
use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most tokens one lease holds. Bounds what a lease can move in time (see `docs/cluster.md`).
const MAX_LEASE: u32 = 32;
/// How long leased tokens may be spent; left over, they go back with the next call.
const LEASE_FOR: Duration = Duration::from_secs(1);

/// What the store decided, or that it could not (then `rate_limit_fallback` decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Refused; the next token is this far away.
    Refuse(Duration),
    Fallback,
}

pub struct Global {
    store: Arc<Store>,
    /// `NAME:rl:DIGEST:`: every instance with the same definition counts under it.
    prefix: String,
    rate: Rate,
    slots: DashMap<BudgetKey, Arc<Slot>>,
    len: AtomicUsize,
    cap: usize,
}

struct Slot {
    /// The budget's key in the store.
    key: Box<str>,
    lease: Mutex<Lease>,
}

#[derive(Default)]
struct Lease {
    tokens: u32,
    /// Until when `tokens` may be spent.
    spend_by: Option<Instant>,
    /// Until when the client is refused without a call.
    refused_until: Option<Instant>,
}

/// What a slot can answer alone.
enum Local {
    Admit,
    Refuse(Duration),
    /// Ask the store, giving back this many expired tokens.
    Ask(u32),
}

impl Lease {
    fn take(&mut self, now: Instant) -> Local {
        if let Some(until) = self.refused_until {
            if until > now {
                return Local::Refuse(until - now);
            }
            self.refused_until = None;
        }
        if self.tokens > 0 && self.spend_by.is_some_and(|by| by > now) {
            self.tokens -= 1;
            return Local::Admit;
        }
        Local::Ask(std::mem::take(&mut self.tokens))
    }

    /// A grant for one request: its first token is spent now, the rest kept.
    fn record(&mut self, grant: Grant, now: Instant) -> Verdict {
        if grant.tokens == 0 {
            self.refused_until = Some(now + grant.wait);
            return Verdict::Refuse(grant.wait);
        }
        self.tokens += grant.tokens - 1;
        self.spend_by = Some(now + LEASE_FOR);
        Verdict::Admit
    }

    /// Nothing to keep: no tokens that may still be spent, no refusal running.
    fn idle(&self, now: Instant) -> bool {
        let spendable = self.tokens > 0 && self.spend_by.is_some_and(|by| by > now);
        !spendable && self.refused_until.map_or(true, |until| until <= now)
    }
}

impl Global {
    /// `digest` names the definition; `cap` bounds the slots kept.
    pub fn new(store: Arc<Store>, digest: &str, rate: Rate, cap: usize) -> Global {
        let prefix = format!("{}:rl:{digest}:", store.settings().name);
        Global {
            store,
            prefix,
            rate,
            slots: DashMap::new(),
            len: AtomicUsize::new(0),
            cap: cap.max(1),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes one token for `key` (`suffix` makes its name in the store, only when first seen).
    pub async fn check(&self, key: BudgetKey, suffix: impl FnOnce() -> String) -> Verdict {
        let (slot, kept) = self.slot(key, suffix);
        let give_back = match lock(&slot).take(Instant::now()) {
            Local::Admit => return Verdict::Admit,
            Local::Refuse(wait) => return Verdict::Refuse(wait),
            Local::Ask(give_back) => give_back,
        };
        if !self.store.is_up() {
            return Verdict::Fallback;
        }
        // a slot not kept could not spend the rest
        let want = if kept { MAX_LEASE } else { 1 };
        match self
            .store
            .lease(&slot.key, self.rate, want, give_back)
            .await
        {
            Some(grant) => lock(&slot).record(grant, Instant::now()),
            None => Verdict::Fallback,
        }
    }

    /// The key's slot, and whether it is kept in the table.
    fn slot(&self, key: BudgetKey, suffix: impl FnOnce() -> String) -> (Arc<Slot>, bool) {
        if let Some(slot) = self.slots.get(&key) {
            return (slot.clone(), true);
        }
        let slot = Arc::new(Slot {
            key: format!("{}{}", self.prefix, suffix()).into_boxed_str(),
            lease: Mutex::default(),
        });
        if self.len.load(Ordering::Relaxed) >= self.cap {
            // not kept: judged by the store alone
            return (slot, false);
        }
        let kept = self.slots.entry(key).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            slot
        });
        (kept.clone(), true)
    }

    /// Spends a token already leased, if there is one (a failed password's charge: no call).
    pub fn charge(&self, key: BudgetKey) {
        if let Some(slot) = self.slots.get(&key) {
            let _ = lock(&slot).take(Instant::now());
        }
    }

    /// Drops the slots with nothing left to keep (their unspent tokens lapse in the store).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut dropped = 0;
        self.slots.retain(|_, slot| {
            let keep = !lock(slot).idle(now);
            dropped += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(dropped, Ordering::Relaxed);
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Lease> {
    slot.lease.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(tokens: u32, wait_ms: u64) -> Grant {
        Grant {
            tokens,
            wait: Duration::from_millis(wait_ms),
        }
    }

    #[test]
    fn a_lease_is_spent_locally_until_it_runs_out_or_expires() {
        let mut lease = Lease::default();
        let t0 = Instant::now();
        assert!(matches!(lease.take(t0), Local::Ask(0)));
        assert_eq!(lease.record(grant(3, 0), t0), Verdict::Admit);
        assert!(matches!(lease.take(t0), Local::Admit));
        assert!(matches!(lease.take(t0), Local::Admit));
        assert!(matches!(lease.take(t0), Local::Ask(0)));
        assert_eq!(lease.record(grant(4, 0), t0), Verdict::Admit);
        // three left over when the lease expires: given back with the next call
        let late = t0 + LEASE_FOR + Duration::from_millis(1);
        assert!(matches!(lease.take(late), Local::Ask(3)));
        assert!(lease.idle(late));
    }

    #[test]
    fn a_refusal_is_answered_locally_until_the_next_token() {
        let mut lease = Lease::default();
        let t0 = Instant::now();
        assert_eq!(
            lease.record(grant(0, 300), t0),
            Verdict::Refuse(Duration::from_millis(300))
        );
        let later = t0 + Duration::from_millis(100);
        assert!(matches!(lease.take(later), Local::Refuse(d) if d == Duration::from_millis(200)));
        assert!(!lease.idle(later));
        let after = t0 + Duration::from_millis(300);
        assert!(lease.idle(after));
        assert!(matches!(lease.take(after), Local::Ask(0)));
    }
}
