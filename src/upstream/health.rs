//! Whether a server may take traffic: its active-check verdict and its passive ejection, both in
//! atomics on the `Backend` so the balancer reads them without a lock; the active checker task
//! that probes every server of a pool (a GET of the check's `path`, or the gRPC health
//! protocol's `Check`, `grpc`); and the log line for every change, written once.

pub mod counter;
mod grpc;

use super::{Backend, BackendAddr, UpstreamPool};
use crate::clock;
use crate::config::{Eject, HealthCheck, Timeouts};
use bytes::Bytes;
use counter::{ActiveCounter, Outcome, State};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

#[derive(Debug)]
pub struct Health {
    /// The active checks' verdict; always true for a pool without them.
    active_up: AtomicBool,
    failures: AtomicU32,
    server_errors: AtomicU32,
    /// Milliseconds (see `now_ms`) until which the server is ejected; 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections in a row, for the growing cool-down.
    ejections: AtomicU32,
    /// A half-open trial request is out.
    trial: AtomicBool,
}

/// What the balancer may do with a server right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Yes,
    /// Ejected, cool-down over, no active checks: one trial request may go.
    Trial,
    No,
}

impl Health {
    pub fn new(active_checks: bool) -> Health {
        Health {
            active_up: AtomicBool::new(!active_checks),
            failures: AtomicU32::new(0),
            server_errors: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            trial: AtomicBool::new(false),
        }
    }

    /// `active_checks`: with them, an ejected server comes back through a passing check.
    pub fn availability(&self, active_checks: bool) -> Availability {
        if !self.active_up.load(Ordering::Relaxed) {
            return Availability::No;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            Availability::Yes
        } else if active_checks || clock::millis() < until || self.trial.load(Ordering::Relaxed) {
            Availability::No
        } else {
            Availability::Trial
        }
    }

    /// Claims the one trial request of a half-open server.
    pub fn claim_trial(&self) -> bool {
        !self.trial.swap(true, Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.active_up.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) == 0
    }

    /// Milliseconds until an ejected server may be tried again (0 if not ejected).
    pub fn ejected_for_ms(&self) -> u64 {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => 0,
            until => until.saturating_sub(clock::millis()),
        }
    }
}

/// Passive checks: what a real request said about `backend`.
pub fn report(pool: &UpstreamPool, backend: &Backend, outcome: Outcome) {
    let h = &backend.health;
    let eject = &pool.spec.eject;
    match outcome {
        Outcome::Success => {
            h.failures.store(0, Ordering::Relaxed);
            h.server_errors.store(0, Ordering::Relaxed);
            if h.trial.load(Ordering::Relaxed) && h.ejected_until.swap(0, Ordering::Relaxed) != 0 {
                h.ejections.store(0, Ordering::Relaxed);
                h.trial.store(false, Ordering::Relaxed);
                tracing::info!(upstream = %pool.name, server = %backend.addr, "upstream server back: trial request succeeded");
            }
        }
        Outcome::Failure | Outcome::ServerError => {
            let (counter, threshold, reason) = if outcome == Outcome::Failure {
                (&h.failures, eject.failures, "connect failures or resets")
            } else {
                (&h.server_errors, eject.server_errors, "5xx answers")
            };
            let other = if outcome == Outcome::Failure {
                &h.server_errors
            } else {
                &h.failures
            };
            other.store(0, Ordering::Relaxed);
            let seen = counter.fetch_add(1, Ordering::Relaxed) + 1;
            let trial_failed = h.trial.swap(false, Ordering::Relaxed);
            if trial_failed || (threshold > 0 && seen >= threshold) {
                eject_backend(pool, backend, eject, seen, reason, trial_failed);
            }
        }
    }
}

fn eject_backend(
    pool: &UpstreamPool,
    backend: &Backend,
    eject: &Eject,
    seen: u32,
    reason: &str,
    trial_failed: bool,
) {
    let h = &backend.health;
    let current = h.ejected_until.load(Ordering::Relaxed);
    if current != 0 && !trial_failed {
        return; // already out; requests in flight before the ejection are still reporting
    }
    let nth = h.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let wait = counter::cooldown(eject, nth);
    let until = clock::millis() + wait.as_millis() as u64;
    if h.ejected_until
        .compare_exchange(current, until, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        h.failures.store(0, Ordering::Relaxed);
        h.server_errors.store(0, Ordering::Relaxed);
        let why = if trial_failed {
            "trial request failed".to_string()
        } else {
            format!("{seen} {reason} in a row")
        };
        tracing::warn!(upstream = %pool.name, server = %backend.addr, reason = %why, cooldown = ?wait, ejections = nth, "upstream server ejected");
    }
}

type CheckClient = Client<super::tls::Connector, Full<Bytes>>;

/// Probes every server of `pool` now, then every `interval` (with jitter) while the pool lives.
pub async fn start_checks(
    pool: &Arc<UpstreamPool>,
    check: HealthCheck,
    timeouts: &Timeouts,
    tls: Option<Arc<super::tls::Handshake>>,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    // HTTP/2 for an `h2`/`h2c` upstream; an `auto` one's ALPN chooses
    let h2_only = pool.spec().protocol.is_h2();
    let client: CheckClient = super::client(timeouts, tls, h2_only);
    let mut counters = HashMap::new();
    round(pool, &check, &client, scheme, &mut counters).await;
    let weak: Weak<UpstreamPool> = Arc::downgrade(pool);
    tokio::spawn(async move {
        loop {
            let jitter = 0.9 + fastrand::f64() * 0.2;
            tokio::time::sleep(check.interval.mul_f64(jitter)).await;
            let Some(pool) = weak.upgrade() else { break };
            round(&pool, &check, &client, scheme, &mut counters).await;
        }
    });
}

/// One check of every current server, in parallel; verdicts published, changes logged.
async fn round(
    pool: &Arc<UpstreamPool>,
    check: &HealthCheck,
    client: &CheckClient,
    scheme: &'static str,
    counters: &mut HashMap<BackendAddr, ActiveCounter>,
) {
    let backends = pool.backends();
    let mut probes = tokio::task::JoinSet::new();
    for backend in backends.iter() {
        let (client, check, backend) = (client.clone(), check.clone(), backend.clone());
        probes.spawn(async move {
            let verdict = probe(&client, &check, scheme, &backend.addr).await;
            (backend, verdict)
        });
    }
    while let Some(Ok((backend, verdict))) = probes.join_next().await {
        let counter = counters.entry(backend.addr.clone()).or_default();
        let passed = verdict.is_ok();
        let h = &backend.health;
        if passed && h.ejected_for_ms() == 0 && h.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            h.ejections.store(0, Ordering::Relaxed);
            tracing::info!(upstream = %pool.name, server = %backend.addr, "upstream server back: active check passed after its ejection");
        }
        if let Some(state) = counter.record(passed, check.healthy, check.unhealthy) {
            h.active_up.store(state == State::Up, Ordering::Relaxed);
            match verdict {
                Ok(status) => {
                    tracing::info!(upstream = %pool.name, server = %backend.addr, status, "upstream server up: health check passed")
                }
                Err(reason) => {
                    tracing::warn!(upstream = %pool.name, server = %backend.addr, %reason, "upstream server down: health check failed")
                }
            }
        }
    }
    counters.retain(|addr, _| backends.iter().any(|b| b.addr == *addr));
}

/// `Ok(status)` for a passing check, else why it failed.
async fn probe(
    client: &CheckClient,
    check: &HealthCheck,
    scheme: &str,
    addr: &BackendAddr,
) -> Result<u16, String> {
    if let Some(service) = &check.grpc {
        let asked = match addr {
            BackendAddr::Tcp(addr) => {
                let uri = format!("{scheme}://{addr}{}", check.path);
                let req = grpc_request(uri, service)?;
                let ask = async {
                    let resp = client
                        .request(req)
                        .await
                        .map_err(|e| check_failure(&e).to_string())?;
                    grpc_answer(resp).await
                };
                tokio::time::timeout(check.timeout, ask).await
            }
            BackendAddr::Unix(path) => {
                tokio::time::timeout(check.timeout, unix_grpc(check, service, path)).await
            }
        };
        return asked.unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)));
    }
    let status = match addr {
        BackendAddr::Tcp(addr) => tcp_status(client, check, scheme, *addr).await?,
        BackendAddr::Unix(path) => unix_status(check, path).await?,
    };
    let (lo, hi) = check.expect;
    if (lo..=hi).contains(&status) {
        Ok(status)
    } else {
        Err(format!("status {status}, expected {lo}-{hi}"))
    }
}

/// The check's answer from a TCP server, through the pooled client.
async fn tcp_status(
    client: &CheckClient,
    check: &HealthCheck,
    scheme: &str,
    addr: SocketAddr,
) -> Result<u16, String> {
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let req = http::Request::get(format!("{scheme}://{addr}{}", check.path))
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "gatehouse-health-check")
        .body(Full::default())
        .map_err(|e| format!("bad check request: {e}"))?;
    let sent = tokio::time::timeout(check.timeout, client.request(req)).await;
    let status = match sent {
        Err(_) => return Err(format!("no answer within {:?}", check.timeout)),
        Ok(Err(e)) => return Err(check_failure(&e).to_string()),
        Ok(Ok(resp)) => resp.status().as_u16(),
    };
    Ok(status)
}

/// The check's answer from a Unix socket server: one connection per check, closed after it (a
/// local connect costs next to nothing), `Host` the check's `host` or `localhost`.
async fn unix_status(check: &HealthCheck, path: &Path) -> Result<u16, String> {
    let ask = async {
        let io = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let io = hyper_util::rt::TokioIo::new(io);
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        let host = check.host.as_deref().unwrap_or("localhost");
        let req = http::Request::get(check.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "gatehouse-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Full::default())
            .map_err(|e| format!("bad check request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("the connection failed: {e}"))?;
        Ok(resp.status().as_u16())
    };
    match tokio::time::timeout(check.timeout, ask).await {
        Ok(status) => status,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

/// `Check` for `service`, as a gRPC client sends it.
fn grpc_request(uri: String, service: &str) -> Result<http::Request<Full<Bytes>>, String> {
    http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "gatehouse-health-check")
        .body(Full::new(grpc::request_body(service)))
        .map_err(|e| format!("bad check request: {e}"))
}

/// 200 for an answer saying `SERVING`, else why not.
async fn grpc_answer<B>(resp: http::Response<B>) -> Result<u16, String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    if resp.status() != http::StatusCode::OK {
        return Err(format!(
            "status {}, expected 200 from a gRPC server",
            resp.status().as_u16()
        ));
    }
    let (head, body) = resp.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("the answer broke off: {e}"))?;
    // a trailers-only answer carries its status in the head
    let trailers = collected.trailers().cloned().unwrap_or(head.headers);
    grpc::verdict(&collected.to_bytes(), &trailers).map(|()| 200)
}

/// `Check` over HTTP/2 (h2c) on a Unix socket: one connection per check, as for a GET.
async fn unix_grpc(check: &HealthCheck, service: &str, path: &Path) -> Result<u16, String> {
    let io = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(io);
    let exec = hyper_util::rt::TokioExecutor::new();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(exec, io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = grpc_request(format!("http://localhost{}", check.path), service)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("the connection failed: {e}"))?;
    grpc_answer(resp).await
}

impl Backend {
    pub fn health(&self) -> &Health {
        &self.health
    }
}
/// What a failed check says, in the words the proxy uses for the same failure (the
/// `http` module's errors are not this module's to build).
fn check_failure(err: &hyper_util::client::legacy::Error) -> &'static str {
    if !err.is_connect() {
        return "upstream closed or reset the connection";
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let io = e.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return "upstream did not accept the connection in time";
        }
        next = e.source();
    }
    "upstream refused or failed the connection"
}
