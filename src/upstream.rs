//! Upstream pools: the servers behind a name, kept resolved, each with its keep-alive
//! connections (`conn`).

mod addr;
mod balance;
pub mod conn;
pub mod forward;
pub mod health;
mod io;
mod resolve;
pub mod tls;

pub use addr::BackendAddr;
pub use balance::ActiveGuard;
pub use health::counter::Outcome;

use crate::config::{AllDown, Balance, Endpoint, Http1Engine, Timeouts, Upstream, UpstreamServer};
use crate::http::CountedBody;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use balance::{Ask, Members};
use conn::{Dialer, IdleConn, IdleConns, RespBody, SendError, Sender};
use health::Health;
use http::uri::Authority;
use http::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prometheus::{Histogram, IntCounter};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// One resolved address of an upstream server, or its Unix socket.
#[derive(Debug)]
pub struct Backend {
    pub addr: BackendAddr,
    /// The address as a URI authority (for a CONNECT target and the connector); `localhost`
    /// for a Unix socket.
    pub authority: Authority,
    /// The weight of the `servers` entry it was resolved from.
    pub weight: u32,
    /// Requests in flight (response not yet finished), for `least_conn`.
    active: AtomicUsize,
    health: Health,
    /// Attempts by outcome (success, server_error, failure), resolved on first use.
    outcomes: OnceLock<[IntCounter; 3]>,
    /// Keep-alive connections to it waiting for a request.
    idle: IdleConns,
    /// Its HTTP/2 connections, shared by the requests on them (an `h2`, `h2c` or `auto`
    /// upstream).
    h2: conn::h2::H2Conns,
}

impl Backend {
    fn new(addr: BackendAddr, weight: u32, active_checks: bool) -> Option<Backend> {
        let authority = match &addr {
            BackendAddr::Tcp(tcp) => Authority::try_from(tcp.to_string()).ok()?,
            BackendAddr::Unix(_) => Authority::from_static("localhost"),
        };
        Some(Backend {
            addr,
            authority,
            weight,
            active: AtomicUsize::new(0),
            health: Health::new(active_checks),
            outcomes: OnceLock::new(),
            idle: IdleConns::default(),
            h2: conn::h2::H2Conns::default(),
        })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Keeps the connection of a response that ended cleanly for the next request (an
    /// HTTP/2 stream's place is simply freed).
    /// A native connection is in its response's `body`, which gives it up only if it ended
    /// cleanly.
    pub fn reuse(&self, conn: Sender, body: Option<&mut RespBody>) {
        match (conn, body) {
            (Sender::Http1(conn), _) => self.idle.put(IdleConn::Hyper(conn)),
            (Sender::Http2(stream), _) => drop(stream),
            (Sender::Native, Some(RespBody::Native(body))) => {
                if let Some(conn) = body.take_reusable() {
                    self.idle.put(IdleConn::Native(conn));
                }
            }
            (Sender::Native, _) => {}
        }
    }

    /// Its open HTTP/2 connections (for tests and the admin view).
    pub fn h2_conns(&self) -> usize {
        self.h2.count()
    }
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: String,
    balance: Balance,
    spec: Upstream,
    members: ArcSwap<Members>,
    cursor: AtomicUsize,
    resolve_failing: AtomicBool,
    /// Retry budget in thousandths of a retry: each request adds `retry_budget` percent of one.
    retry_tokens: AtomicI64,
    metrics: OnceLock<PoolMetrics>,
    /// Opens connections to the servers (TLS for an `https://` upstream) and sends requests.
    dialer: Dialer,
    /// Dropped with the pool: its sweeper task ends at once (not a sweep interval later).
    sweeper: OnceLock<tokio::sync::oneshot::Sender<()>>,
}

struct PoolMetrics {
    metrics: Arc<Metrics>,
    duration: Histogram,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolMetrics")
    }
}

/// No server may take the request; the client may try again in `retry_after` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoServer {
    pub retry_after: u64,
}

const RETRY_BANK_MAX: i64 = 10_000;

impl UpstreamPool {
    /// Builds the pool with the servers that are IP literals or Unix sockets; names are filled
    /// in by `resolve`.
    /// Connections to them are TLS for a TLS upstream (`tls`); how long one may take is the
    /// route's to say (`send`).
    pub fn new(
        name: &str,
        spec: &Upstream,
        tls: Option<Arc<tls::Handshake>>,
        engine: Http1Engine,
    ) -> Arc<UpstreamPool> {
        let checks = spec.health.is_some();
        let literal: Vec<Arc<Backend>> = spec
            .servers
            .iter()
            .filter_map(|s| Backend::new(known_addr(s)?, s.weight, checks).map(Arc::new))
            .collect();
        Arc::new(UpstreamPool {
            name: name.to_string(),
            balance: spec.balance,
            spec: spec.clone(),
            members: ArcSwap::from_pointee(Members::new(literal)),
            cursor: AtomicUsize::new(0),
            resolve_failing: AtomicBool::new(false),
            retry_tokens: AtomicI64::new(3_000),
            metrics: OnceLock::new(),
            dialer: Dialer::new(
                tls::Connector::new(http_connector(None), tls.clone()),
                tls.is_some(),
                spec.protocol,
                spec.max_streams,
                engine == Http1Engine::Native,
            ),
            sweeper: OnceLock::new(),
        })
    }

    /// Sends `req` with Gatehouse's own headers not in its map (`added`) to `backend` over one
    /// of its keep-alive connections (or a new one, made within `connect`: the route's
    /// `upstream_connect`); the connection comes back with the response, for `Backend::reuse`
    /// once the body has ended.
    pub fn send<'a>(
        &'a self,
        backend: &'a Backend,
        req: Request<CountedBody>,
        added: &'a forward::Added,
        connect: Duration,
    ) -> impl std::future::Future<Output = Result<(Response<RespBody>, Sender), SendError>> + Send + 'a
    {
        // the dialer's own future, not one wrapping it (see `Dialer::send`)
        self.dialer.send(backend, req, added, connect)
    }

    fn needs_dns(&self) -> bool {
        self.spec.servers.iter().any(|s| known_addr(s).is_none())
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.members.load().backends.clone()
    }

    pub fn spec(&self) -> &Upstream {
        &self.spec
    }

    /// Picks a server that may take the request and was not `tried` for it yet, counting it
    /// active until the guard drops; with how many servers the pool has now (read with the
    /// pick: one load of the members per attempt). With none: all servers anyway under
    /// `when_all_down = "try_all"` (if any is untried), else `NoServer`.
    pub fn pick(
        &self,
        client: IpAddr,
        tried: &[BackendAddr],
    ) -> Result<(ActiveGuard, usize), NoServer> {
        let members = self.members.load();
        let mut ask = Ask {
            client,
            tried,
            active_checks: self.spec.health.is_some(),
            any: false,
        };
        let mut index = balance::choose(self.balance, &members, &self.cursor, &ask);
        if index.is_none() && self.spec.when_all_down == AllDown::TryAll && tried.is_empty() {
            ask.any = true;
            index = balance::choose(self.balance, &members, &self.cursor, &ask);
        }
        match index {
            Some(i) => Ok((
                ActiveGuard::new(members.backends[i].clone()),
                members.backends.len(),
            )),
            None => Err(NoServer {
                retry_after: self.retry_after(&members),
            }),
        }
    }

    /// Seconds until a server may be back: the shortest ejection left, or one check interval.
    fn retry_after(&self, members: &Members) -> u64 {
        let ejected = members
            .backends
            .iter()
            .map(|b| b.health.ejected_for_ms())
            .filter(|ms| *ms > 0)
            .min();
        let wait_ms = match (&self.spec.health, ejected) {
            (Some(check), _) => check.interval.as_millis() as u64,
            (None, Some(ms)) => ms,
            (None, None) => 1000,
        };
        wait_ms.div_ceil(1000).max(1)
    }

    /// Whether any server may take traffic now (for `/ready`).
    pub fn has_healthy(&self) -> bool {
        self.members
            .load()
            .backends
            .iter()
            .any(|b| b.health.is_up())
    }

    /// Counts attempts and upstream latency in `metrics` from now on.
    pub fn set_metrics(&self, metrics: &Arc<Metrics>) {
        let duration = metrics.upstream_duration(&self.name);
        let _ = self.metrics.set(PoolMetrics {
            metrics: metrics.clone(),
            duration,
        });
    }

    /// Passive health and metrics: what an attempt said about the server it went to, and how
    /// long the response head took (`None` when there was no response).
    /// Whether requests to it may keep Gatehouse's own headers beside their map
    /// (`forward::Added`): its HTTP/1.1 client writes them itself.
    pub fn writes_added(&self) -> bool {
        self.dialer.writes_added()
    }

    /// Whether attempts are timed (for the latency histogram, once metrics are on).
    pub fn timed(&self) -> bool {
        self.metrics.get().is_some()
    }

    pub fn report(&self, backend: &Backend, outcome: Outcome, took: Option<std::time::Duration>) {
        health::report(self, backend, outcome);
        let Some(m) = self.metrics.get() else { return };
        if let Some(took) = took {
            m.duration.observe(took.as_secs_f64());
        }
        let counters = backend.outcomes.get_or_init(|| {
            let server = backend.addr.to_string();
            ["success", "server_error", "failure"].map(|outcome| {
                m.metrics.upstream_requests.with_label_values(&[
                    self.name.as_str(),
                    server.as_str(),
                    outcome,
                ])
            })
        });
        let i = match outcome {
            Outcome::Success => 0,
            Outcome::ServerError => 1,
            Outcome::Failure => 2,
        };
        counters[i].inc();
    }

    /// Counts a request towards the retry budget.
    pub fn deposit_retry_share(&self) {
        let share = i64::from(self.spec.retry_budget) * 10;
        let before = self.retry_tokens.fetch_add(share, Ordering::Relaxed);
        if before + share > RETRY_BANK_MAX {
            self.retry_tokens.fetch_sub(share, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw_retry(&self) -> bool {
        let before = self.retry_tokens.fetch_sub(1000, Ordering::Relaxed);
        if before < 1000 {
            self.retry_tokens.fetch_add(1000, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Resolves every server name, all at once, each within `resolve_timeout` (and never longer
    /// than `resolve_every`, so rounds do not overlap); keeps the backends (and their counters)
    /// whose address stays. A failed lookup removes nothing: the last known addresses keep
    /// serving (a DNS hiccup must not empty a pool). Failures are logged when they start and
    /// when they end, not on every round.
    pub async fn resolve(&self) {
        let spec = &self.spec;
        let budget = spec.resolve_timeout.min(spec.resolve_every);
        let lookups = spec.servers.iter().map(|entry| async move {
            let found = match (&entry.addr, known_addr(entry)) {
                (_, Some(known)) => Ok(vec![known]),
                (Endpoint::Tcp(server), None) => resolve::lookup(&spec.resolver, server, budget)
                    .await
                    .map(|found| found.into_iter().map(BackendAddr::Tcp).collect()),
                (Endpoint::Unix(_), None) => Ok(Vec::new()),
            };
            (entry, found)
        });
        let mut addrs: Vec<(BackendAddr, u32)> = Vec::new();
        let mut failed = false;
        for (entry, found) in futures_util::future::join_all(lookups).await {
            let server = &entry.addr;
            match found {
                Ok(found) => addrs.extend(found.into_iter().map(|a| (a, entry.weight))),
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
        let members = self.members.load();
        let current = &members.backends;
        if failed {
            addrs.extend(current.iter().map(|b| (b.addr.clone(), b.weight)));
        }
        addrs.sort();
        addrs.dedup_by(|(a, _), (b, _)| a == b);
        let same = current.len() == addrs.len()
            && current
                .iter()
                .zip(&addrs)
                .all(|(b, (a, w))| b.addr == *a && b.weight == *w);
        if same {
            return;
        }
        let checks = self.spec.health.is_some();
        let next: Vec<Arc<Backend>> = addrs
            .iter()
            .filter_map(
                |(a, w)| match current.iter().find(|b| b.addr == *a && b.weight == *w) {
                    Some(existing) => Some(existing.clone()),
                    None => Backend::new(a.clone(), *w, checks).map(Arc::new),
                },
            )
            .collect();
        let servers: Vec<&BackendAddr> = addrs.iter().map(|(a, _)| a).collect();
        tracing::info!(upstream = %self.name, servers = ?servers, "upstream servers resolved");
        self.members.store(Arc::new(Members::new(next)));
    }

    /// Closes connections idle for 90 to 100 s (and those the servers closed) every
    /// `conn::SWEEP_EVERY` for as long as the pool is alive.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        if self.sweeper.set(stop).is_err() {
            return;
        }
        let weak: Weak<UpstreamPool> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(conn::SWEEP_EVERY) => {}
                }
                let Some(pool) = weak.upgrade() else { break };
                for backend in pool.members.load().backends.iter() {
                    backend.idle.sweep();
                    backend.h2.sweep(conn::IDLE_SWEEPS);
                }
            }
        });
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

/// A server's address when no lookup is needed: an IP literal or a Unix socket.
fn known_addr(server: &UpstreamServer) -> Option<BackendAddr> {
    match &server.addr {
        Endpoint::Tcp(tcp) => {
            let ip = tcp.host.parse::<IpAddr>().ok()?;
            Some(BackendAddr::Tcp(SocketAddr::new(ip, tcp.port)))
        }
        Endpoint::Unix(path) => Some(BackendAddr::unix(path)),
    }
}

/// TCP to the servers: nodelay, keepalive probes after 60 s, and `connect` as the connect
/// timeout if given (the request path bounds connect and handshake together itself).
fn http_connector(connect: Option<Duration>) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(connect);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector
}

/// hyper-util's pooled client, over the same kind of connection as the traffic (HTTP/2 only
/// when `h2_only`), for the active health checks (the request path uses the pools' own
/// connections, `conn`).
pub fn client<B>(
    timeouts: &Timeouts,
    tls: Option<Arc<tls::Handshake>>,
    h2_only: bool,
) -> Client<tls::Connector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connector = http_connector(Some(timeouts.upstream_connect));
    Client::builder(TokioExecutor::new())
        .http2_only(h2_only)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .retry_canceled_requests(true)
        .set_host(false)
        .build(tls::Connector::new(connector, tls))
}
