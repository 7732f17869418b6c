//! Upstream pools: the servers behind a name, kept resolved, and the shared keep-alive HTTP client.

mod balance;
pub mod forward;
pub mod tls;

pub use balance::ActiveGuard;

use crate::config::{Balance, ServerAddr, Timeouts, Upstream};
use arc_swap::ArcSwap;
use http::uri::Authority;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// One resolved address of an upstream server.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub authority: Authority,
    /// Requests in flight (response not yet finished), for `least_conn`.
    active: AtomicUsize,
}

impl Backend {
    fn new(addr: SocketAddr) -> Option<Backend> {
        let authority = Authority::try_from(addr.to_string()).ok()?;
        Some(Backend {
            addr,
            authority,
            active: AtomicUsize::new(0),
        })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: String,
    balance: Balance,
    spec: Upstream,
    backends: ArcSwap<Vec<Arc<Backend>>>,
    cursor: AtomicUsize,
    resolve_failing: AtomicBool,
}

impl UpstreamPool {
    /// Builds the pool with the servers that are IP literals; names are filled in by `resolve`.
    pub fn new(name: &str, spec: &Upstream) -> Arc<UpstreamPool> {
        let literal: Vec<Arc<Backend>> = spec
            .servers
            .iter()
            .map(|s| &s.addr)
            .filter_map(|s| Some(SocketAddr::new(s.host.parse::<IpAddr>().ok()?, s.port)))
            .filter_map(|addr| Backend::new(addr).map(Arc::new))
            .collect();
        Arc::new(UpstreamPool {
            name: name.to_string(),
            balance: spec.balance,
            spec: spec.clone(),
            backends: ArcSwap::from_pointee(literal),
            cursor: AtomicUsize::new(0),
            resolve_failing: AtomicBool::new(false),
        })
    }

    fn needs_dns(&self) -> bool {
        self.spec
            .servers
            .iter()
            .any(|s| s.addr.host.parse::<IpAddr>().is_err())
    }

    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    /// Picks a backend for a client, counting it active until the guard drops.
    pub fn pick(&self, client: IpAddr) -> Option<ActiveGuard> {
        let backends = self.backends.load();
        let index = balance::choose(self.balance, &backends, &self.cursor, client)?;
        Some(ActiveGuard::new(backends[index].clone()))
    }

    /// Resolves every server name; keeps the backends (and their counters) whose address stays.
    /// A failed lookup removes nothing: the last known addresses keep serving (a DNS hiccup must not
    /// empty a pool). Failures are logged when they start and when they end, not on every round.
    pub async fn resolve(&self) {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut failed = false;
        for server in &self.spec.servers {
            let server = &server.addr;
            match lookup(server).await {
                Ok(found) => addrs.extend(found),
                Err(e) => {
                    failed = true;
                    if !self.resolve_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(upstream = %self.name, server = %server, error = %e, "cannot resolve upstream server; keeping its last known addresses, retrying every {:?}", self.spec.resolve_every);
                    }
                }
            }
        }
        if !failed && self.resolve_failing.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %self.name, "upstream servers resolve again");
        }
        let current = self.backends.load();
        if failed {
            addrs.extend(current.iter().map(|b| b.addr));
        }
        addrs.sort();
        addrs.dedup();
        let same =
            current.len() == addrs.len() && current.iter().zip(&addrs).all(|(b, a)| b.addr == *a);
        if same {
            return;
        }
        let next: Vec<Arc<Backend>> = addrs
            .iter()
            .filter_map(|a| match current.iter().find(|b| b.addr == *a) {
                Some(existing) => Some(existing.clone()),
                None => Backend::new(*a).map(Arc::new),
            })
            .collect();
        tracing::info!(upstream = %self.name, servers = ?addrs, "upstream servers resolved");
        self.backends.store(Arc::new(next));
    }

    /// Re-resolves names every `resolve_every` (the first time was at build) for as long as the
    /// pool is alive.
    pub fn spawn_resolver(self: &Arc<Self>) {
        if !self.needs_dns() {
            return;
        }
        let weak: Weak<UpstreamPool> = Arc::downgrade(self);
        let every = self.spec.resolve_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { break };
                pool.resolve().await;
            }
        });
    }
}

async fn lookup(server: &ServerAddr) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = server.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, server.port)]);
    }
    Ok(tokio::net::lookup_host((server.host.as_str(), server.port))
        .await?
        .collect())
}

/// One client for all plain upstreams: its pool keys connections by address, so keep-alive is per
/// backend. A TLS upstream gets a client of its own, with its `tls::Handshake`.
pub fn client<B>(timeouts: &Timeouts, tls: Option<Arc<tls::Handshake>>) -> Client<tls::Connector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeouts.upstream_connect));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .retry_canceled_requests(true)
        .set_host(false)
        .build(tls::Connector::new(connector, tls))
}
