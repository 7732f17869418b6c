//! hyper serving glue: one client connection, HTTP/1.1 or HTTP/2 (prior knowledge), with its
//! deadlines, its part in graceful shutdown, idle HTTP/1.1 connections parked outside hyper, the
//! tunnel an upgrade turns a connection into (`tunnel`), and HTTP/2 streams' send deadline
//! (`stream`).

mod body;
pub mod canonical;
mod client_body;
mod conn;
pub mod grpc;
pub mod hygiene;
mod native;
mod pace;
mod response;
mod rewind;
pub mod rewrite;
mod service;
mod stream;
mod tunnel;

pub use body::CountedBody;
pub use response::ProxyError;

use crate::acme::Challenges;
use crate::listener::conn_limit::ConnLimiter;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::middleware::encode::budget::EncoderBudget;
use crate::middleware::{Reason, Rejections};
use crate::state::Shared;
use crate::tls::client::ClientTls;
use bytes::Bytes;
use client_body::ClientBody;
use conn::{ConnState, Expiry, Watchdog, WatchedIo};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use rewind::Rewind;
use service::ProxyService;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use stream::StreamExec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// The HTTP/1.1 and HTTP/2 servers a connection is served with, and the rest of how it is
/// served, as the config sets them: kept once per snapshot, not in every connection's task.
#[derive(Clone)]
pub struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<StreamExec>,
    /// The native engine's bounds on a head; `None`: HTTP/1.1 is served by hyper.
    native: Option<crate::h1::Limits>,
    tunnel_idle: Duration,
    /// `shutdown_grace`.
    grace: Duration,
}

/// Response bytes h2 queues per stream for the client, beyond the piece of body in hand (hyper's
/// default is 400 KiB). The queue only evens out the socket's pace; with `http2_max_streams` at
/// 256, 256 x 64 KiB = 16 MiB is the most one connection queues.
pub const H2_SEND_BUF: usize = 64 << 10;

/// hyper's own limits are the outer fence (a head that cannot fit its buffer gets 431 from
/// hyper); the exact `max_header_size` and `max_uri` checks are the service's. `timeouts.send`
/// is the HTTP/2 streams' send deadline (see `stream`).
pub fn builder(server: &crate::config::Server) -> Protocols {
    let (limits, send) = (&server.limits, server.timeouts.send);
    let mut h1 = http1::Builder::new();
    // hyper refuses a read buffer under 8 KiB
    let head_buf = (limits.max_header_size + limits.max_uri + 4096).max(8192);
    h1.timer(TokioTimer::new())
        // our own deadlines in `conn` replace this; see there why
        .header_read_timeout(None)
        .max_buf_size(head_buf)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(StreamExec { send });
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_send_buf_size(H2_SEND_BUF)
        // HPACK-decoded size of one header block, CONTINUATION frames included
        .max_header_list_size(u32::try_from(head_buf).unwrap_or(u32::MAX))
        // rapid reset (CVE-2023-44487): streams a client opens and resets before we answer
        .max_pending_accept_reset_streams(Some(limits.http2_max_streams.div_ceil(4) as usize))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let native =
        (server.http1_engine == crate::config::Http1Engine::Native).then(|| native::limits(limits));
    Protocols {
        h1,
        h2,
        native,
        tunnel_idle: server.timeouts.tunnel_idle,
        grace: server.shutdown_grace,
    }
}

/// Everything a connection needs from its listener.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub tracker: TaskTracker,
    /// The bound HTTPS port, for redirects from plain HTTP; 0 while there is no HTTPS listener.
    pub https_port: AtomicU16,
    /// ACME challenge answers (HTTP-01 here, TLS-ALPN-01 in the listener).
    pub challenges: Arc<Challenges>,
    /// Certificates ordered in the handshake for `tls = "on_demand"` sites.
    pub on_demand: Arc<crate::acme::on_demand::OnDemand>,
    pub conns: Arc<ConnLimiter>,
    pub rejections: Arc<Rejections>,
    pub metrics: Arc<Metrics>,
    /// Connection gauges and counters of the plain and the TLS listener.
    pub listeners: [ListenerMetrics; 2],
    /// Response encoders alive, against `[server] max_encoders`.
    pub encoders: Arc<EncoderBudget>,
}

impl ConnContext {
    pub fn https_port(&self) -> Option<u16> {
        Some(self.https_port.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    pub fn set_https_port(&self, port: Option<u16>) {
        self.https_port.store(port.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn listener_metrics(&self, transport: Transport) -> &ListenerMetrics {
        match transport {
            Transport::Plain => &self.listeners[0],
            Transport::Tls => &self.listeners[1],
        }
    }
}

/// Who is at the other end of a connection: the socket peer, or the client a PROXY header
/// named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether this connection may speak for others (`X-Forwarded-For`, if its address is in
    /// `trusted_proxies`): not a PROXY protocol `LOCAL`/`UNKNOWN` one, whose requests are the
    /// load balancer's own.
    pub vouches: bool,
}

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

impl Transport {
    /// The scheme as `X-Forwarded-Proto` reports it.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls => "https",
        }
    }

    /// The port a client reaches this scheme on when its authority names none.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Plain => 80,
            Transport::Tls => 443,
        }
    }
}

/// One client connection: HTTP/2 if it opens with the HTTP/2 preface, else HTTP/1.1, which is
/// parked between requests once idle (see `Expiry::Park`) and served again when bytes arrive.
/// A TLS connection made with a `client_auth` site's config comes with what its handshake
/// verified (`client`).
///
/// The connection's task holds this future for the connection's whole life, and a task is as
/// large as its future's largest state. So the future holds only what lasts (`Conn`), the
/// socket and the parked wait; each activation (telling HTTP/2 from HTTP/1.1, a hyper
/// connection, the native engine's request path, an HTTP/2 session, a tunnel) is boxed and
/// freed when the connection parks or ends: one allocation per activation, none per request.
/// `held` (the connection's slot under the limits) is dropped when the connection ends.
pub fn serve_connection<S, H>(
    stream: S,
    peer: Peer,
    (transport, client): (Transport, Option<Arc<ClientTls>>),
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
    held: H,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
{
    let conn = Conn::new(peer, (transport, client), cx, shutdown);
    let socket = Socket::Fresh(WatchedIo::new(stream, conn.svc.conn.clone()));
    serve_parked_between(conn, socket, held)
}

// an `async` block, not an `async fn`: `conn` and `socket` are held once, where an `async fn`
// keeps its arguments twice (as given, and moved into its locals)
#[allow(clippy::manual_async_fn)]
fn serve_parked_between<S, H>(
    mut conn: Conn,
    mut socket: Socket<S>,
    held: H,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Send + 'static,
{
    async move {
        // kept (in place) until the connection ends
        let _held = &held;
        let mut pre = Bytes::new();
        loop {
            if !Box::pin(conn.activate(&mut socket, pre)).await {
                return;
            }
            tracing::trace!(peer = %conn.guard.peer(), "idle connection parked");
            // not a `match` whose arm awaits the shutdown: its scrutinee would be kept in the
            // task's every state, the parked one's too (+40 bytes, measured)
            let Some(bytes) = conn.guard.wait_for_bytes(&mut socket).await else {
                break;
            };
            pre = bytes;
        }
        if let Some(io) = socket.io() {
            let _ = tokio::time::timeout(conn.guard.grace(), io.shutdown()).await;
        }
    }
}

/// What a client connection keeps for its whole life. Kept small: a parked connection's task
/// is mostly this (what is the same for every connection is in `Protocols`, once).
struct Conn {
    guard: Guard,
    svc: ProxyService,
}

/// A connection's socket between activations.
enum Socket<S> {
    /// Not served yet: HTTP/2 or HTTP/1.1 is still to be told.
    Fresh(WatchedIo<S>),
    /// HTTP/1.1 parked out of hyper.
    Hyper(WatchedIo<S>),
    /// HTTP/1.1 served by the native engine, its read buffer with it.
    Native(native::Handle),
    /// HTTP/1.1 parked by the native engine, without its read buffer (see `Handle::into_io`).
    NativeIdle(Box<dyn native::Io>),
    /// With an activation that has not given it back (it ended the connection).
    Lent,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Socket<S> {
    fn io(&mut self) -> Option<&mut dyn native::Io> {
        match self {
            Socket::Fresh(io) | Socket::Hyper(io) => Some(io),
            Socket::Native(handle) => Some(handle),
            Socket::NativeIdle(io) => Some(&mut **io),
            Socket::Lent => None,
        }
    }
}

impl Conn {
    fn new(
        peer: Peer,
        (transport, client): (Transport, Option<Arc<ClientTls>>),
        cx: Arc<ConnContext>,
        shutdown: watch::Receiver<bool>,
    ) -> Conn {
        let snapshot = cx.shared.load();
        let server = &snapshot.config.server;
        let t = &server.timeouts;
        let addr = peer.addr;
        let state = ConnState::of(addr, t.header_read, t.idle, t.send);
        state.set_default_send_rate(server.send_min_rate);
        Conn {
            guard: Guard {
                watchdog: Watchdog::new(state.clone()),
                shutdown,
                drain: None,
                http: snapshot.http.clone(),
            },
            svc: ProxyService {
                cx: cx.clone(),
                vouches: peer.vouches,
                conn: state,
                transport,
                client,
            },
        }
    }

    /// Serves the connection from `pre` (bytes it sent while parked) until it parks (`true`:
    /// `socket` is given back) or ends. The first activation tells HTTP/2 from HTTP/1.1.
    async fn activate<S>(&mut self, socket: &mut Socket<S>, pre: Bytes) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match std::mem::replace(socket, Socket::Lent) {
            Socket::Fresh(mut io) => {
                let sniffed = tokio::select! {
                    sniffed = read_preface(&mut io) => sniffed,
                    _ = &mut self.guard.watchdog => return false,
                    _ = self.guard.shutdown.changed() => return false,
                };
                let Ok((is_h2, pre)) = sniffed else {
                    return false;
                };
                if is_h2 {
                    self.serve_h2(io, pre).await;
                    return false;
                }
                if self.guard.http.native.is_some() {
                    *socket = Socket::Native(native::wire(Box::new(io), &pre));
                    return self.serve_native(socket).await;
                }
                self.serve_hyper(socket, io, pre).await
            }
            Socket::Hyper(io) => self.serve_hyper(socket, io, pre).await,
            Socket::Native(handle) => {
                handle.refill(&pre);
                *socket = Socket::Native(handle);
                self.serve_native(socket).await
            }
            Socket::NativeIdle(io) => {
                *socket = Socket::Native(native::wire(io, &pre));
                self.serve_native(socket).await
            }
            Socket::Lent => false,
        }
    }

    async fn serve_h2<S>(&mut self, io: WatchedIo<S>, pre: Bytes)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { guard, svc } = self;
        let http = guard.http.clone();
        let io = TokioIo::new(Rewind::new(pre, io));
        let svc = &*svc;
        // Each stream's future is boxed at once: hyper and tokio move a stream task several
        // times (into its `H2Stream`, `StreamExec`'s `Deadline`, the task cell, and the cell's
        // stage on completion), and each move of the whole proxy future is a memcpy of its
        // size; a box makes them pointer moves for one allocation. (An HTTP/1.1 request's
        // future is moved once, into the dispatcher's slot, so it stays unboxed.)
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            Box::pin(svc.clone().call(req.map(ClientBody::Hyper)))
        });
        let mut conn = Box::pin(http.h2.serve_connection(io, svc));
        guard.drive(&mut conn).await;
    }

    async fn serve_native<S>(&mut self, socket: &mut Socket<S>) -> bool {
        let (Socket::Native(handle), Some(limits)) = (&*socket, self.guard.http.native) else {
            return false;
        };
        let setup = native::Setup {
            guard: &mut self.guard,
            svc: &self.svc,
            limits,
        };
        if native::serve_requests(handle, setup).await == native::Run::Ended {
            return false;
        }
        if let Socket::Native(handle) = std::mem::replace(socket, Socket::Lent) {
            *socket = match handle.into_io() {
                Ok(io) => Socket::NativeIdle(io),
                Err(handle) => Socket::Native(handle),
            };
        }
        true
    }

    /// HTTP/1.1 with hyper, until the connection parks with nothing sent since (`true`, the
    /// socket given back) or ends.
    async fn serve_hyper<S>(
        &mut self,
        socket: &mut Socket<S>,
        mut io: WatchedIo<S>,
        mut pre: Bytes,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { guard, svc } = self;
        let (http, tunnel_idle) = (guard.http.clone(), guard.http.tunnel_idle);
        let svc = &*svc;
        let h1_svc =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                svc.clone().call(req.map(ClientBody::Hyper))
            });
        loop {
            let io_in = TokioIo::new(Rewind::new(pre, io));
            let mut conn = http.h1.serve_connection(io_in, h1_svc).with_upgrades();
            let end = guard.drive(&mut conn).await;
            if let Some(pending) = guard.state().take_tunnel() {
                // hyper has handed the socket over (or failed to): what is left of it is the tunnel's
                drop(conn);
                guard.state().set_parking(false);
                let tunnels = &svc.cx.listener_metrics(svc.transport).tunnels;
                // boxed: the tunnel's state (~1.5 KiB) is not kept beside hyper's connection
                Box::pin(guard.tunnel(pending, tunnel_idle, tunnels)).await;
                return false;
            }
            if end != End::Parked {
                return false;
            }
            let Some(parts) = conn.into_parts() else {
                return false;
            };
            guard.state().set_parking(false);
            let (unread, watched) = parts.io.into_inner().into_parts();
            io = watched;
            pre = join(unread, parts.read_buf);
            if pre.is_empty() {
                *socket = Socket::Hyper(io);
                return true;
            }
        }
    }
}

/// Counts (and logs) a connection cut for taking a response slower than `send_min_rate` when
/// its task ends, whichever way it ends.
impl Drop for Conn {
    fn drop(&mut self) {
        if self.guard.state().cut_too_slow() {
            let ip = self.guard.peer().ip().to_canonical();
            let detail =
                "connection closed: the client took the response slower than send_min_rate";
            self.svc
                .cx
                .rejections
                .record(Reason::SendTooSlow, ip, detail);
        }
    }
}

/// `a` then `b`. An empty `Bytes` cut from hyper's read buffer still keeps that whole buffer
/// alive, so nothing empty is handed on.
fn join(a: Bytes, b: Bytes) -> Bytes {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Bytes::new(),
        (true, false) => b,
        (false, true) => a,
        (false, false) => [a, b].concat().into(),
    }
}

/// Reads until the bytes are the HTTP/2 preface or cannot be; gives them back to be read again.
async fn read_preface<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<(bool, Bytes)> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    let mut filled = 0;
    while filled < PREFACE.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if buf[..filled] != PREFACE[..filled] {
            break;
        }
    }
    let is_h2 = filled == PREFACE.len() && buf == *PREFACE;
    Ok((is_h2, Bytes::copy_from_slice(&buf[..filled])))
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    Parked,
}

/// A served connection hyper can be asked to wind down.
trait Graceful: Future<Output = hyper::Result<()>> + Unpin {
    fn graceful(&mut self);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Self: Unpin,
{
    fn graceful(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for Pin<Box<hyper::server::conn::http2::Connection<I, S, E>>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(&mut self) {
        self.as_mut().graceful_shutdown();
    }
}

/// A connection's deadlines and its part in graceful shutdown.
struct Guard {
    watchdog: Watchdog,
    shutdown: watch::Receiver<bool>,
    /// When a connection that was asked to wind down is closed regardless.
    drain: Option<tokio::time::Instant>,
    /// How the connection is served (`shutdown_grace` here).
    http: Arc<Protocols>,
}

impl Guard {
    fn state(&self) -> &Arc<ConnState> {
        self.watchdog.state()
    }

    fn peer(&self) -> SocketAddr {
        self.state().peer
    }

    fn grace(&self) -> Duration {
        self.http.grace
    }

    /// Serves `conn` until it ends: closed (by either side, a deadline or shutdown), or parked.
    async fn drive<C: Graceful>(&mut self, conn: &mut C) -> End {
        let (peer, state, grace) = (self.peer(), self.state().clone(), self.grace());
        loop {
            let drain_deadline = self.drain;
            tokio::select! {
                // the connection first: the watchdog must see the deadlines this very poll set
                biased;
                result = &mut *conn => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    return if state.is_parking() { End::Parked } else { End::Closed };
                }
                // while draining, polled only for a request in flight: its answer time
                // (`ConnState::response_due`) still holds
                expiry = &mut self.watchdog, if (drain_deadline.is_none() || state.is_busy()) && !state.is_parking() => {
                    if drain_deadline.is_some() {
                        // (the request ended meanwhile: the connection closes as it drains)
                        continue;
                    }
                    match expiry {
                        Expiry::HeaderRead => {
                            tracing::debug!(%peer, "closing connection: request head not received in time");
                            return End::Closed;
                        }
                        Expiry::Park => {
                            state.set_parking(true);
                            conn.graceful();
                        }
                        Expiry::Idle => {
                            conn.graceful();
                            self.drain = Some(tokio::time::Instant::now() + grace);
                        }
                    }
                }
                _ = self.shutdown.changed(), if drain_deadline.is_none() => {
                    state.set_parking(false);
                    conn.graceful();
                    self.drain = Some(tokio::time::Instant::now() + grace);
                }
                _ = sleep_until(drain_deadline) => return End::Closed,
            }
        }
    }

    /// The tunnel an upgrade turned this connection into, counted in `tunnels` while it runs;
    /// at shutdown it gets the grace period, as a request in flight would.
    async fn tunnel(&mut self, pending: tunnel::Pending, idle: Duration, tunnels: &IntGauge) {
        let peer = self.peer();
        let stop = self.tunnel_stop();
        tunnels.inc();
        let _open = Decrements(tunnels);
        let end = tunnel::run(pending, idle, stop).await;
        tracing::debug!(%peer, ?end, "tunnel ended");
    }

    /// `tunnel` for the native engine, whose client side is the connection itself.
    async fn tunnel_native<C>(
        &mut self,
        client: C,
        pending: tunnel::Pending,
        idle: Duration,
        tunnels: &IntGauge,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let peer = self.peer();
        let stop = self.tunnel_stop();
        tunnels.inc();
        let _open = Decrements(tunnels);
        let end = tunnel::run_native(client, pending.upstream, idle, stop).await;
        tracing::debug!(%peer, ?end, "tunnel ended");
    }

    /// Resolves when a tunnel must end for shutdown: the grace period after it began.
    fn tunnel_stop(&mut self) -> impl Future<Output = ()> + '_ {
        let (grace, drain) = (self.grace(), self.drain);
        let shutdown = &mut self.shutdown;
        async move {
            let at = match drain {
                Some(at) => at,
                None => {
                    // a listener whose sender is gone is shutting down too
                    let _ = shutdown.changed().await;
                    tokio::time::Instant::now() + grace
                }
            };
            tokio::time::sleep_until(at).await
        }
    }

    /// A parked connection's wait for its next request, holding no buffer: the bytes that came,
    /// or `None` when the client closed, the idle period ran out or the server shuts down.
    async fn wait_for_bytes<S>(&mut self, socket: &mut Socket<S>) -> Option<Bytes>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let read = std::future::poll_fn(|cx| {
            let Some(io) = socket.io() else {
                return Poll::Ready(None);
            };
            // on the stack while polled, not kept in the connection's task while it waits
            let mut buf = [0u8; 4096];
            let mut filled = ReadBuf::new(&mut buf);
            match Pin::new(io).poll_read(cx, &mut filled) {
                Poll::Ready(Ok(())) if !filled.filled().is_empty() => {
                    Poll::Ready(Some(Bytes::copy_from_slice(filled.filled())))
                }
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        });
        let left = self.state().idle_left();
        let idle = self.watchdog.lend_timer(left);
        tokio::select! {
            bytes = read => bytes,
            _ = idle => None,
            _ = self.shutdown.changed() => None,
        }
    }
}

/// Takes one off a gauge when dropped, however the task holding it ends.
struct Decrements<'a>(&'a IntGauge);

impl Drop for Decrements<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
