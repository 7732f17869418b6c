//! Password hashes for `basic_auth`, run on tokio's blocking pool a bounded number at once, and
//! the credentials verified recently, so a page's 30 asset requests cost one hash, not 30.
//!
//! One `Verifier` serves every route and outlives snapshots (it lives in `state::Keep`): the
//! bound is on the whole process, and a reload does not make every user pay a hash again. A
//! cache entry is a 128-bit keyed hash of the route, user, password and the stored hash, never
//! the password itself; a changed password hash in the config is a different key, so the old
//! password stops working at once.

use crate::config::PasswordHash;
use dashmap::DashMap;
use prometheus::IntCounter;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a verified credential is accepted without a hash.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Credentials remembered at most (a full cache remembers nothing new until entries expire).
pub const CACHE_MAX: usize = 10_000;
/// Checks that may wait for a hash; past that they are refused at once (503).
pub const WAITING_MAX: usize = 1024;

/// Too many checks are waiting already.
#[derive(Debug)]
pub struct Busy;

pub struct Verifier {
    /// Hashes running now, at most half the CPUs (at least one): the other half stays free for
    /// the traffic while a brute-forcer's guesses are checked.
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Cache key to when it was verified.
    verified: DashMap<u128, Instant>,
    keys: (RandomState, RandomState),
    hashes: IntCounter,
    hits: IntCounter,
}

impl Verifier {
    /// `hashes` counts hashes computed, `hits` checks the cache answered.
    pub fn new(hashes: IntCounter, hits: IntCounter) -> Arc<Verifier> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Verifier {
            running: Arc::new(Semaphore::new((cpus / 2).max(1))),
            waiting: AtomicUsize::new(0),
            verified: DashMap::new(),
            keys: (RandomState::new(), RandomState::new()),
            hashes,
            hits,
        })
    }

    /// The cache key of a check: two independently keyed SipHashes (keys random per process).
    pub fn key(&self, route: u64, user: &[u8], password: &[u8], stored: &PasswordHash) -> u128 {
        let parts = (route, user, password, stored.as_str());
        let high = self.keys.0.hash_one(parts);
        let low = self.keys.1.hash_one(parts);
        (u128::from(high) << 64) | u128::from(low)
    }

    /// Whether `key` was verified less than `CACHE_TTL` ago.
    pub fn cached(&self, key: u128) -> bool {
        let fresh = self
            .verified
            .get(&key)
            .is_some_and(|at| at.elapsed() < CACHE_TTL);
        if fresh {
            self.hits.inc();
        }
        fresh
    }

    /// Remembers a verified key; a full cache first drops what expired, and if it is still full
    /// remembers nothing (the next check pays a hash again, nothing worse).
    pub fn remember(&self, key: u128) {
        if self.verified.len() >= CACHE_MAX {
            self.verified.retain(|_, at| at.elapsed() < CACHE_TTL);
            if self.verified.len() >= CACHE_MAX {
                return;
            }
        }
        self.verified.insert(key, Instant::now());
    }

    /// Checks `password` against `stored` on the blocking pool once a slot is free. The slot
    /// goes with the hash, so a client that gives up does not free it before the hash ends.
    pub async fn verify(&self, stored: PasswordHash, password: Vec<u8>) -> Result<bool, Busy> {
        let permit = {
            let _waiting = Waiting::enter(&self.waiting)?;
            match self.running.clone().acquire_owned().await {
                Ok(permit) => permit,
                // never closed
                Err(_) => return Ok(false),
            }
        };
        self.hashes.inc();
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            super::matches(&stored, &password)
        });
        Ok(checked.await.unwrap_or(false))
    }
}

/// A place among the checks waiting for a slot, given back on drop.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Result<Waiting<'a>, Busy> {
        if count.fetch_add(1, Ordering::Relaxed) >= WAITING_MAX {
            count.fetch_sub(1, Ordering::Relaxed);
            return Err(Busy);
        }
        Ok(Waiting(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Arc<Verifier> {
        let counter = |n: &str| IntCounter::new(n, "test").unwrap();
        Verifier::new(counter("hashes"), counter("hits"))
    }

    #[test]
    fn keys_depend_on_every_part() {
        let v = verifier();
        let a = PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        let b = PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        let k = v.key(1, b"alice", b"pw", &a);
        assert_eq!(k, v.key(1, b"alice", b"pw", &a));
        assert_ne!(k, v.key(2, b"alice", b"pw", &a));
        assert_ne!(k, v.key(1, b"alicf", b"pw", &a));
        assert_ne!(k, v.key(1, b"alice", b"px", &a));
        assert_ne!(k, v.key(1, b"alice", b"pw", &b));
        assert!(!v.cached(k));
        v.remember(k);
        assert!(v.cached(k));
        assert_eq!(v.hits.get(), 1);
    }

    #[tokio::test]
    async fn hashes_run_off_the_runtime_and_are_counted() {
        let v = verifier();
        let hash = PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        assert!(v.verify(hash.clone(), b"pw".to_vec()).await.unwrap());
        assert!(!v.verify(hash, b"px".to_vec()).await.unwrap());
        assert_eq!(v.hashes.get(), 2);
    }
}
