//! Concurrent connection limits, in total and per client address: a slot is taken at accept and
//! given back when the connection's task ends (`ConnSlot` drops). Sharded so accepts on
//! different cores rarely meet on one lock; the request path never touches it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

#[derive(Default)]
pub struct ConnLimiter {
    total: AtomicUsize,
    per_ip: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections open in total")]
    Total(usize),
    #[error("{0} connections open from this address")]
    PerIp(usize),
}

/// One open connection; dropping it frees the slot.
#[must_use]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    key: Option<IpAddr>,
}

fn shard(ip: &IpAddr) -> usize {
    let n = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    };
    (n ^ (n >> 64) ^ (n >> 32) ^ (n >> 16) ^ (n >> 8)) as usize % SHARDS
}

impl ConnLimiter {
    /// `key` is the client address to count against `per_ip` (`None`: not limited per address,
    /// e.g. a trusted proxy); a limit of 0 is no limit.
    pub fn acquire(
        self: &Arc<Self>,
        key: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnSlot, Refused> {
        let before = self.total.fetch_add(1, Ordering::Relaxed);
        let mut slot = ConnSlot {
            limiter: self.clone(),
            key: None,
        };
        if max_total > 0 && before >= max_total {
            return Err(Refused::Total(before));
        }
        let Some(ip) = key.filter(|_| max_per_ip > 0) else {
            return Ok(slot);
        };
        let mut counts = self.per_ip[shard(&ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            return Err(Refused::PerIp(*count));
        }
        *count += 1;
        slot.key = Some(ip);
        Ok(slot)
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::Relaxed);
        let Some(ip) = self.key else { return };
        let mut counts = self.limiter.per_ip[shard(&ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back() {
        let limiter = Arc::new(ConnLimiter::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limiter.acquire(Some(a), 3, 2).unwrap();
        let _second = limiter.acquire(Some(a), 3, 2).unwrap();
        assert_eq!(
            limiter.acquire(Some(a), 3, 2).err(),
            Some(Refused::PerIp(2))
        );
        let _other = limiter.acquire(Some(b), 3, 2).unwrap();
        assert_eq!(limiter.acquire(None, 3, 2).err(), Some(Refused::Total(3)));
        drop(first);
        let _again = limiter.acquire(Some(a), 3, 2).unwrap();
        assert_eq!(limiter.open(), 3);
    }
}
