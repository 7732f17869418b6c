//! Load-balancing choices over a pool's current backends. Pure apart from the atomics they read.

use super::Backend;
use crate::config::Balance;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub(super) fn choose(
    balance: Balance,
    backends: &[Arc<Backend>],
    cursor: &AtomicUsize,
    client: IpAddr,
) -> Option<usize> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    Some(match balance {
        Balance::RoundRobin => cursor.fetch_add(1, Ordering::Relaxed) % n,
        Balance::LeastConn => least_conn(backends, cursor.fetch_add(1, Ordering::Relaxed) % n),
        Balance::IpHash => (hash_ip(client) % n as u64) as usize,
    })
}

/// The backend with the fewest requests in flight; ties go round-robin from `start`.
fn least_conn(backends: &[Arc<Backend>], start: usize) -> usize {
    let n = backends.len();
    (0..n)
        .map(|i| (start + i) % n)
        .min_by_key(|&i| backends[i].active())
        .unwrap_or(start)
}

/// FNV-1a over the address bytes: stable across restarts so a client keeps its backend.
fn hash_ip(ip: IpAddr) -> u64 {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Counts a request against its backend until dropped (when the response body ends).
#[must_use]
#[derive(Debug)]
pub struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    pub(super) fn new(backend: Arc<Backend>) -> ActiveGuard {
        backend.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(backend)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn backends(n: u16) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| Arc::new(Backend::new(SocketAddr::from(([127, 0, 0, 1], 8000 + i))).unwrap()))
            .collect()
    }

    #[test]
    fn round_robin_cycles() {
        let b = backends(3);
        let cursor = AtomicUsize::new(0);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let picks: Vec<_> = (0..6)
            .map(|_| choose(Balance::RoundRobin, &b, &cursor, ip).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_conn_avoids_busy() {
        let b = backends(3);
        let cursor = AtomicUsize::new(0);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let _busy0 = ActiveGuard::new(b[0].clone());
        let _busy2 = ActiveGuard::new(b[2].clone());
        for _ in 0..5 {
            assert_eq!(choose(Balance::LeastConn, &b, &cursor, ip), Some(1));
        }
    }

    #[test]
    fn ip_hash_is_sticky() {
        let b = backends(5);
        let cursor = AtomicUsize::new(0);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let first = choose(Balance::IpHash, &b, &cursor, ip);
        assert!((0..10).all(|_| choose(Balance::IpHash, &b, &cursor, ip) == first));
        assert_eq!(choose(Balance::IpHash, &[], &cursor, ip), None);
    }
}
