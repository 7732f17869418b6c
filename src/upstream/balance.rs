//! Load-balancing choices over a pool's current members: only servers that may take traffic,
//! weighted, never one already tried for this request. Pure apart from the atomics they read.

use super::health::Availability;
use super::{Backend, BackendAddr};
use crate::config::Balance;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A pool's servers and, for weighted round robin, the order they take turns in.
#[derive(Debug, Default)]
pub struct Members {
    pub backends: Vec<Arc<Backend>>,
    /// Indexes into `backends`, each appearing `weight` times, spread out (nginx's smooth
    /// weighted round robin, run once when the members change).
    schedule: Vec<u32>,
}

impl Members {
    pub fn new(backends: Vec<Arc<Backend>>) -> Members {
        let weights: Vec<i64> = backends.iter().map(|b| i64::from(b.weight)).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let Some((best, _)) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, -(*i as i64)))
            else {
                break;
            };
            current[best] -= total;
            schedule.push(best as u32);
        }
        Members { backends, schedule }
    }
}

/// The request being placed: who asks, and which servers it already failed on.
pub struct Ask<'a> {
    pub client: IpAddr,
    pub tried: &'a [BackendAddr],
    /// Active checks decide when an ejected server returns (no trial requests).
    pub active_checks: bool,
    /// Ignore health (every server down and `when_all_down = "try_all"`).
    pub any: bool,
}

impl Ask<'_> {
    /// Whether `b` may take this request; claims the half-open trial when that is what it is.
    fn admits(&self, b: &Backend, claim: bool) -> bool {
        if self.tried.contains(&b.addr) {
            return false;
        }
        if self.any {
            return true;
        }
        match b.health.availability(self.active_checks) {
            Availability::Yes => true,
            Availability::Trial => !claim || b.health.claim_trial(),
            Availability::No => false,
        }
    }
}

pub(super) fn choose(
    balance: Balance,
    m: &Members,
    cursor: &AtomicUsize,
    ask: &Ask,
) -> Option<usize> {
    if m.backends.is_empty() {
        return None;
    }
    match balance {
        Balance::RoundRobin => round_robin(m, cursor, ask),
        Balance::LeastConn => least_conn(m, cursor.fetch_add(1, Ordering::Relaxed), ask),
        Balance::IpHash => ip_hash(m, ask),
    }
}

fn round_robin(m: &Members, cursor: &AtomicUsize, ask: &Ask) -> Option<usize> {
    let n = m.schedule.len();
    let start = cursor.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| m.schedule[(start + i) % n] as usize)
        .find(|&i| ask.admits(&m.backends[i], true))
}

/// Fewest requests in flight per unit of weight; ties go round-robin from `start`. A server due
/// for its trial request gets it first.
fn least_conn(m: &Members, start: usize, ask: &Ask) -> Option<usize> {
    let n = m.backends.len();
    let order = (0..n).map(|i| (start + i) % n);
    let load = |i: usize| {
        let b = &m.backends[i];
        (b.active() as u64 + 1) * 1_000_000 / u64::from(b.weight.max(1))
    };
    let candidates: Vec<usize> = order
        .filter(|&i| ask.admits(&m.backends[i], false))
        .collect();
    let best = candidates.iter().copied().min_by_key(|&i| load(i))?;
    let trial = candidates.iter().copied().find(|&i| {
        !ask.any && m.backends[i].health.availability(ask.active_checks) == Availability::Trial
    });
    match trial {
        Some(i) if m.backends[i].health.claim_trial() => Some(i),
        _ => Some(best),
    }
}

/// The client's hash picks a server; if it may not take the request, the next one does, so
/// healthy servers keep their clients.
fn ip_hash(m: &Members, ask: &Ask) -> Option<usize> {
    let n = m.backends.len();
    let start = (hash_ip(ask.client) % n as u64) as usize;
    (0..n)
        .map(|i| (start + i) % n)
        .find(|&i| ask.admits(&m.backends[i], true))
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

    fn members(weights: &[u32]) -> Members {
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)).into();
                Arc::new(Backend::new(addr, *w, false).unwrap())
            })
            .collect();
        Members::new(backends)
    }

    fn ask(tried: &[BackendAddr]) -> Ask<'_> {
        Ask {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tried,
            active_checks: false,
            any: false,
        }
    }

    #[test]
    fn round_robin_cycles() {
        let m = members(&[1, 1, 1]);
        let cursor = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| choose(Balance::RoundRobin, &m, &cursor, &ask(&[])).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_spread_smoothly() {
        let m = members(&[5, 1, 1]);
        assert_eq!(m.schedule, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn tried_and_down_servers_are_skipped() {
        let m = members(&[1, 1, 1]);
        let cursor = AtomicUsize::new(0);
        let tried = [m.backends[0].addr.clone()];
        for _ in 0..4 {
            assert_ne!(
                choose(Balance::RoundRobin, &m, &cursor, &ask(&tried)),
                Some(0)
            );
            assert_ne!(
                choose(Balance::LeastConn, &m, &cursor, &ask(&tried)),
                Some(0)
            );
            assert_ne!(choose(Balance::IpHash, &m, &cursor, &ask(&tried)), Some(0));
        }
        let all: Vec<_> = m.backends.iter().map(|b| b.addr.clone()).collect();
        assert_eq!(choose(Balance::RoundRobin, &m, &cursor, &ask(&all)), None);
    }

    #[test]
    fn least_conn_avoids_busy() {
        let m = members(&[1, 1, 1]);
        let cursor = AtomicUsize::new(0);
        let _busy0 = ActiveGuard::new(m.backends[0].clone());
        let _busy2 = ActiveGuard::new(m.backends[2].clone());
        for _ in 0..5 {
            assert_eq!(choose(Balance::LeastConn, &m, &cursor, &ask(&[])), Some(1));
        }
    }

    #[test]
    fn ip_hash_is_sticky() {
        let m = members(&[1, 1, 1, 1, 1]);
        let cursor = AtomicUsize::new(0);
        let a = Ask {
            client: "203.0.113.9".parse().unwrap(),
            ..ask(&[])
        };
        let first = choose(Balance::IpHash, &m, &cursor, &a);
        assert!((0..10).all(|_| choose(Balance::IpHash, &m, &cursor, &a) == first));
        assert_eq!(
            choose(Balance::IpHash, &Members::default(), &cursor, &a),
            None
        );
    }
}
