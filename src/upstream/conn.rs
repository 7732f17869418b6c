//! Keep-alive HTTP/1.1 connections to the backends, Gatehouse's own: each `Backend` keeps its
//! idle connections in a small stack (`IdleConns`), the pool's `Dialer` opens new ones.
//!
//! A request takes the most recently used idle connection that is ready (LIFO keeps the hot ones
//! hot and lets the cold ones age out), else opens one: TCP and, for a TLS upstream, the
//! handshake (`tls::Connector`), then hyper's HTTP/1.1 handshake, the connection itself running
//! in a task of its own (with upgrades, for WebSocket). The connection goes back to its backend
//! when the response body has ended and the response did not close it (`http::body`); a body
//! dropped early drops the connection instead (hyper then closes it). Nothing is hashed, there
//! is no lock but the backend's own stack's, and no task per request.

use super::io::UpstreamIo;
use super::tls::{Connector, UpstreamStream};
use super::{Backend, BackendAddr};
use crate::http::CountedBody;
use http::uri::Scheme;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tower_service::Service;

/// The sending half of one upstream connection.
pub type Sender = http1::SendRequest<CountedBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// At least as many as requests a busy moment has in flight to one backend: a cap of 32 closed
/// and reopened ~1,500 connections per 5 s under h2load -m32 (512 in flight).
pub const MAX_IDLE: usize = 1024;
/// How often `UpstreamPool::spawn_sweeper` sweeps every backend's idle connections.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Sweeps an idle connection survives: it is closed after 90 to 100 s without use.
const IDLE_SWEEPS: u32 = 9;

/// A backend's idle connections, most recently used on top.
#[derive(Default)]
pub struct IdleConns {
    stack: Mutex<Vec<Idle>>,
    /// Sweeps so far; a connection put back is stamped with it (no clock read per request).
    sweeps: AtomicU32,
}

struct Idle {
    sender: Sender,
    sweeps: u32,
}

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleConns({})", self.count())
    }
}

impl IdleConns {
    fn stack(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that can take a request now. Closed ones met on the way
    /// (the upstream closed them, their task ended) are dropped; one still finishing its last
    /// exchange (hyper not yet back to idle) stays for a later request.
    pub fn take(&self) -> Option<Sender> {
        let mut stack = self.stack();
        let mut i = stack.len();
        while i > 0 {
            i -= 1;
            let sender = &stack[i].sender;
            if sender.is_ready() {
                return Some(stack.remove(i).sender);
            }
            if sender.is_closed() {
                stack.remove(i);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange ended cleanly; over the cap it is dropped (closed).
    pub fn put(&self, sender: Sender) {
        let sweeps = self.sweeps.load(Ordering::Relaxed);
        let mut stack = self.stack();
        if stack.len() < MAX_IDLE {
            stack.push(Idle { sender, sweeps });
        }
    }

    /// Drops the connections idle for longer than `IDLE_SWEEPS` sweeps and the closed ones.
    pub fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let stale: Vec<Idle> = {
            let mut stack = self.stack();
            let (keep, stale) = std::mem::take(&mut *stack).into_iter().partition(|idle| {
                !idle.sender.is_closed() && now.wrapping_sub(idle.sweeps) <= IDLE_SWEEPS
            });
            *stack = keep;
            stale
        };
        // closed outside the lock
        drop(stale);
    }

    /// How many are kept now.
    pub fn count(&self) -> usize {
        self.stack().len()
    }
}

/// Why a request got no response from its backend.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: TCP connect or TLS handshake failed (the request was never sent).
    #[error("connecting to the upstream server failed")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or its response head awaited.
    #[error("the upstream connection failed")]
    Request(#[source] hyper::Error),
}

/// Opens connections to one upstream's backends and sends requests over them.
pub struct Dialer {
    connector: Connector,
    scheme: Scheme,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dialer({})", self.scheme)
    }
}

impl Dialer {
    pub fn new(connector: Connector, tls: bool) -> Dialer {
        Dialer {
            connector,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `backend` on an idle connection, else a new
    /// one; returns the response head and the connection, for `IdleConns::put` once the body has
    /// ended. A reused connection that hands the request back unsent (the upstream closed it as we
    /// took it) costs the request nothing: it goes once more, on a new connection.
    pub async fn send(
        &self,
        backend: &Backend,
        req: Request<CountedBody>,
        connect: Duration,
    ) -> Result<(Response<Incoming>, Sender), SendError> {
        let (mut sender, reused) = match backend.idle.take() {
            Some(sender) => (sender, true),
            // boxed: connecting is rare, the common path's future stays small
            None => (Box::pin(self.open(backend, connect)).await?, false),
        };
        let req = match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, sender)),
            Err(mut err) => match err.take_message() {
                Some(req) if reused => {
                    tracing::debug!(server = %backend.addr, error = %err.error(), "idle upstream connection closed; sending on a new one");
                    req
                }
                _ => return Err(SendError::Request(err.into_error())),
            },
        };
        let mut sender = Box::pin(self.open(backend, connect)).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, sender)),
            Err(err) => Err(SendError::Request(err.into_error())),
        }
    }

    /// A new connection to `backend`, its task spawned; connecting (TCP and, for a TLS
    /// upstream, the handshake; or a Unix socket's) must be done within `connect`.
    async fn open(&self, backend: &Backend, connect: Duration) -> Result<Sender, SendError> {
        if let BackendAddr::Unix(path) = &backend.addr {
            let connecting = tokio::net::UnixStream::connect(path);
            let io = match tokio::time::timeout(connect, connecting).await {
                Ok(io) => io.map_err(|e| SendError::Connect(Box::new(e)))?,
                Err(_) => return Err(connect_timed_out(connect)),
            };
            return handshake(UpstreamIo::Unix(TokioIo::new(io)), &backend.addr).await;
        }
        let dst = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(backend.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let connecting = self.connector.clone().call(dst);
        let io: UpstreamStream = match tokio::time::timeout(connect, connecting).await {
            Ok(io) => io.map_err(SendError::Connect)?,
            Err(_) => return Err(connect_timed_out(connect)),
        };
        handshake(UpstreamIo::Tcp(io), &backend.addr).await
    }
}

/// hyper's HTTP/1.1 client over `io`, the connection driven by a task of its own (upgrades
/// included) until it closes. One stream type for every kind of upstream: see `upstream::io`.
async fn handshake(io: UpstreamIo, server: &BackendAddr) -> Result<Sender, SendError> {
    let (sender, conn) = http1::handshake(io).await.map_err(SendError::Request)?;
    let server = server.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%server, error = %e, "upstream connection ended with error");
        }
    });
    Ok(sender)
}

/// A timed-out I/O error as the source: `ProxyError::from_send` makes it a 504.
fn connect_timed_out(connect: Duration) -> SendError {
    let msg = format!("no connection within {connect:?} (`timeouts.upstream_connect`)");
    SendError::Connect(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        msg,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// A real HTTP/1.1 client connection over an in-memory pipe, its task running and idle;
    /// dropping the returned server end closes it.
    async fn idle_conn() -> (Sender, DuplexStream) {
        let (client, server) = tokio::io::duplex(4096);
        let (mut sender, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        (sender, server)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..1000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition never met");
    }

    #[tokio::test]
    async fn the_most_recent_connection_goes_first_and_closed_ones_are_dropped() {
        let idle = IdleConns::default();
        let (a, a_end) = idle_conn().await;
        let (b, b_end) = idle_conn().await;
        idle.put(a);
        idle.put(b);
        let taken = idle.take().unwrap();
        drop(b_end);
        until(|| taken.is_closed()).await;
        assert_eq!(idle.count(), 1);

        let (c, c_end) = idle_conn().await;
        idle.put(c);
        drop(c_end);
        until(|| idle.stack()[1].sender.is_closed()).await;
        let taken = idle.take().unwrap();
        assert_eq!(idle.count(), 0, "the closed one on top was dropped");
        drop(a_end);
        until(|| taken.is_closed()).await;
    }

    #[tokio::test]
    async fn a_connection_not_ready_yet_stays_for_later() {
        let idle = IdleConns::default();
        let (client, _server) = tokio::io::duplex(4096);
        let (sender, conn) = http1::handshake::<_, CountedBody>(TokioIo::new(client))
            .await
            .unwrap();
        // its task has not run yet: neither ready nor closed
        idle.put(sender);
        assert!(idle.take().is_none());
        assert_eq!(idle.count(), 1);
        tokio::spawn(conn);
        until(|| idle.stack()[0].sender.is_ready()).await;
        assert!(idle.take().is_some());
    }

    #[tokio::test]
    async fn idle_connections_go_after_ten_sweeps_and_over_the_cap() {
        let idle = IdleConns::default();
        let (a, _a_end) = idle_conn().await;
        idle.put(a);
        for _ in 0..IDLE_SWEEPS {
            idle.sweep();
        }
        assert_eq!(idle.count(), 1, "idle for {IDLE_SWEEPS} sweeps");
        idle.sweep();
        assert_eq!(idle.count(), 0);

        let mut ends = Vec::new();
        for _ in 0..=MAX_IDLE {
            let (conn, end) = idle_conn().await;
            idle.put(conn);
            ends.push(end);
        }
        assert_eq!(idle.count(), MAX_IDLE);
    }
}
