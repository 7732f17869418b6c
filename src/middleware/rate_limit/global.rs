//! One budget counted for the whole cluster (`[cluster] rate_limits = "global"`): the store is
//! the one authority (GCRA on its clock, `crate::cluster`), and this instance spends what it
//! leased from it without asking again (`docs/cluster.md`).
//!
//! Owns, per budget key seen lately, a `Slot`: the tokens this instance leased and has not
//! spent, until when they may be spent (`LEASE_FOR`; left over, they are given back with the
//! next call), and, after a refusal, until when the client is refused without asking. So a
//! client under its limit costs one store call per lease (a quarter of what its budget holds,
//! at most `MAX_LEASE`), and one near its limit one call per token its budget refills.
//!
//! A client refused `FLOOD_REFUSALS` times or more between two calls is flooding: this instance
//! then calls the store for it at most once per `REASK` (0.75 s: at most 2 calls in any second however
//! hard it floods), and each call takes all the budget holds (up to `MAX_LEASE`), spent at once.
//! The flood ends at the first call before which fewer were refused.
//!
//! The table is bounded like the local one (`[server] rate_limit_keys`): a key that finds it
//! full is judged by the store alone (one token per call, nothing kept).

use super::key::BudgetKey;
use crate::cluster::{Grant, LeaseAsk, Rate, Store};
use dashmap::DashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most tokens one lease holds. Bounds what a lease can move in time (see `docs/cluster.md`).
const MAX_LEASE: u32 = 32;
/// How long leased tokens may be spent; left over, they go back with the next call.
const LEASE_FOR: Duration = Duration::from_secs(1);
/// Requests refused between two calls that make a client a flooding one: one at twice its limit
/// sees one or two; one at 100 times, about a hundred.
const FLOOD_REFUSALS: u32 = 8;
/// The least time between two calls for a flooding client: over 0.5 s, so that no second holds
/// more than 2 of its calls (the flood bound), with room to spare: n calls span at least
/// (n - 1) * 0.75 s, so any stretch of 1.5 s or more averages at most 2 a second.
const REASK: Duration = Duration::from_millis(750);

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
    /// Requests refused since the last call (the flood detector).
    refused: u32,
    /// When the last call was made, and whether the client was flooding then.
    last_call: Option<Instant>,
    flooding: bool,
}

/// What a slot can answer alone.
enum Local {
    Admit,
    Refuse(Duration),
    /// Ask the store, giving back expired tokens, greedily for a flood.
    Ask(LeaseAsk),
}

impl Lease {
    fn take(&mut self, now: Instant) -> Local {
        if let Some(until) = self.refused_until {
            if until > now {
                return self.refuse(until - now);
            }
            self.refused_until = None;
        }
        if self.tokens > 0 && self.spend_by.is_some_and(|by| by > now) {
            self.tokens -= 1;
            return Local::Admit;
        }
        // a flood's lease is spent: refused until it may call again
        if let Some(next) = self.last_call.map(|at| at + REASK) {
            if self.flooding && next > now {
                self.refused_until = Some(next);
                return self.refuse(next - now);
            }
        }
        // set now, so that requests meeting this call in flight see it
        self.flooding = self.refused >= FLOOD_REFUSALS;
        self.refused = 0;
        self.last_call = Some(now);
        Local::Ask(LeaseAsk {
            want: MAX_LEASE,
            give_back: std::mem::take(&mut self.tokens),
            greedy: self.flooding,
        })
    }

    fn refuse(&mut self, wait: Duration) -> Local {
        self.refused = self.refused.saturating_add(1);
        Local::Refuse(wait)
    }

    /// A grant for one request: its first token is spent now, the rest kept. A flood's refusal
    /// lasts until it may call again.
    fn record(&mut self, grant: Grant, now: Instant) -> Verdict {
        if grant.tokens == 0 {
            let wait = if self.flooding {
                grant.wait.max(REASK)
            } else {
                grant.wait
            };
            self.refused = self.refused.saturating_add(1);
            self.refused_until = Some(now + wait);
            return Verdict::Refuse(wait);
        }
        self.tokens += grant.tokens - 1;
        self.spend_by = Some(now + LEASE_FOR);
        Verdict::Admit
    }

    /// Nothing to keep: no tokens that may still be spent, no refusal running.
    fn idle(&self, now: Instant) -> bool {
        let spendable = self.tokens > 0 && self.spend_by.is_some_and(|by| by > now);
        !spendable && self.refused_until.is_none_or(|until| until <= now)
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
        let mut ask = match self.with_lease(&slot, |l| l.take(Instant::now())) {
            Local::Admit => return Verdict::Admit,
            Local::Refuse(wait) => return Verdict::Refuse(wait),
            Local::Ask(ask) => ask,
        };
        if !self.store.is_up() {
            return Verdict::Fallback;
        }
        if !kept {
            // a slot not kept could not spend the rest
            ask.want = 1;
        }
        match self.store.lease(&slot.key, self.rate, ask).await {
            Some(grant) => self.with_lease(&slot, |l| l.record(grant, Instant::now())),
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
            let _ = self.with_lease(&slot, |l| l.take(Instant::now()));
        }
    }

    /// Drops the slots with nothing left to keep (their unspent tokens lapse in the store).
    pub fn sweep(&self) {
        let now = Instant::now();
        let (mut dropped, mut lapsed) = (0, 0);
        self.slots.retain(|_, slot| {
            let lease = lock(slot);
            let keep = !lease.idle(now);
            if !keep {
                dropped += 1;
                lapsed += i64::from(lease.tokens);
            }
            keep
        });
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        self.store.add_leased(-lapsed);
    }

    /// `f` on the slot's lease, its change in tokens held counted in the store's total.
    fn with_lease<R>(&self, slot: &Slot, f: impl FnOnce(&mut Lease) -> R) -> R {
        let mut lease = lock(slot);
        let before = lease.tokens;
        let result = f(&mut lease);
        self.store
            .add_leased(i64::from(lease.tokens) - i64::from(before));
        result
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
        assert!(matches!(lease.take(t0), Local::Ask(a) if a.give_back == 0 && !a.greedy));
        assert_eq!(lease.record(grant(3, 0), t0), Verdict::Admit);
        assert!(matches!(lease.take(t0), Local::Admit));
        assert!(matches!(lease.take(t0), Local::Admit));
        assert!(matches!(lease.take(t0), Local::Ask(a) if a.give_back == 0));
        assert_eq!(lease.record(grant(4, 0), t0), Verdict::Admit);
        // three left over when the lease expires: given back with the next call
        let late = t0 + LEASE_FOR + Duration::from_millis(1);
        assert!(matches!(lease.take(late), Local::Ask(a) if a.give_back == 3));
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
        assert!(matches!(lease.take(after), Local::Ask(a) if !a.greedy));
    }

    /// Refused `n` times by the store's last answer (`wait_ms`), then asking again: a flood.
    fn refused_times(lease: &mut Lease, at: Instant, n: u32) -> Instant {
        let _ = lease.record(grant(0, 25), at);
        for _ in 1..n {
            assert!(matches!(lease.take(at), Local::Refuse(_)));
        }
        at + Duration::from_millis(25)
    }

    #[test]
    fn a_client_refused_a_little_asks_again_at_the_next_token() {
        let mut lease = Lease::default();
        let t0 = Instant::now();
        let _ = lease.take(t0);
        let next = refused_times(&mut lease, t0, 2);
        assert!(matches!(lease.take(next), Local::Ask(a) if !a.greedy));
        assert_eq!(
            lease.record(grant(0, 25), next),
            Verdict::Refuse(Duration::from_millis(25))
        );
    }

    #[test]
    fn a_flooding_client_is_asked_for_at_most_once_per_reask() {
        let mut lease = Lease::default();
        let t0 = Instant::now();
        let _ = lease.take(t0);
        let next = refused_times(&mut lease, t0, FLOOD_REFUSALS);
        // a flood: it takes all there is, and its refusal lasts REASK
        assert!(matches!(lease.take(next), Local::Ask(a) if a.greedy));
        assert_eq!(lease.record(grant(0, 25), next), Verdict::Refuse(REASK));
        for _ in 0..FLOOD_REFUSALS {
            assert!(matches!(lease.take(next), Local::Refuse(_)));
        }
        // still flooding: granted 3 at the next call: spent, then refused until REASK after that call
        let again = next + REASK;
        assert!(matches!(lease.take(again), Local::Ask(a) if a.greedy));
        assert_eq!(lease.record(grant(3, 0), again), Verdict::Admit);
        assert!(matches!(lease.take(again), Local::Admit));
        assert!(matches!(lease.take(again), Local::Admit));
        let soon = again + Duration::from_millis(100);
        assert!(
            matches!(lease.take(soon), Local::Refuse(d) if d == REASK - Duration::from_millis(100))
        );
        // it calmed down: fewer than FLOOD_REFUSALS refused since, so no longer a flood
        let later = again + REASK;
        assert!(matches!(lease.take(later), Local::Ask(a) if !a.greedy));
    }
}
