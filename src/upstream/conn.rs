//! Keep-alive connections to the backends, Gatehouse's own: each `Backend` keeps its idle
//! HTTP/1.1 connections in a small stack (`IdleConns`) and its shared HTTP/2 ones in `h2`; the
//! pool's `Dialer` opens new ones, speaking the upstream's `protocol`.
//!
//! A request takes the most recently used idle connection that is ready (LIFO keeps the hot ones
//! hot and lets the cold ones age out), else opens one: TCP and, for a TLS upstream, the
//! handshake (`tls::Connector`), then hyper's HTTP/1.1 handshake, the connection itself running
//! in a task of its own (with upgrades, for WebSocket). The connection goes back to its backend
//! when the response body has ended and the response did not close it (`http::body`); a body
//! dropped early drops the connection instead (hyper then closes it). Nothing is hashed, there
//! is no lock but the backend's own stack's, and no task per request.
//!
//! With `[server] http1_engine = "native"`, HTTP/1.1 connections are Gatehouse's own client
//! (`native`) instead of hyper's: no task per connection, the request's task drives it, and the
//! connection travels in the response body (`RespBody::Native`) until it goes back.
//!
//! An HTTP/2 upstream (`h2`, `h2c`, or `auto` where ALPN chose `h2`) sends each request as a
//! stream on a connection the backend's other requests share (`h2`); the request goes in the
//! form HTTP/2 wants (absolute URI, its `Host` as `:authority`).

pub mod h2;
pub mod native;

use super::forward::Added;
use super::io::UpstreamIo;
use super::tls::{Connector, UpstreamStream};
use super::{Backend, BackendAddr};
use crate::config::Protocol;
use crate::http::CountedBody;
use futures_util::future::Either;
use h2::{H2Body, H2Conn, Learned, Stream};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tower_service::Service;

/// The sending half of one upstream HTTP/1.1 connection, or one request's place on a shared
/// HTTP/2 one.
pub enum Sender {
    Http1(http1::SendRequest<CountedBody>),
    Http2(Stream),
    /// A native HTTP/1.1 connection: it travels inside the response body (`RespBody::Native`),
    /// which hands it back once the body has ended (`Backend::reuse`).
    Native,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::Http1(_) => f.write_str("Sender(HTTP/1.1)"),
            Sender::Http2(_) => f.write_str("Sender(HTTP/2)"),
            Sender::Native => f.write_str("Sender(native HTTP/1.1)"),
        }
    }
}

impl Sender {
    /// An HTTP/2 stream: nothing to read off when its response is dropped (the stream is reset,
    /// the connection goes on).
    pub fn is_multiplexed(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }
}

type H1 = http1::SendRequest<CountedBody>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// At least as many as requests a busy moment has in flight to one backend: a cap of 32 closed
/// and reopened ~1,500 connections per 5 s under h2load -m32 (512 in flight).
pub const MAX_IDLE: usize = 1024;
/// How often `UpstreamPool::spawn_sweeper` sweeps every backend's idle connections.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Sweeps an idle connection survives: it is closed after 90 to 100 s without use.
pub const IDLE_SWEEPS: u32 = 9;

/// A backend's idle connections, most recently used on top.
#[derive(Default)]
pub struct IdleConns {
    stack: Mutex<Vec<Idle>>,
    /// Sweeps so far; a connection put back is stamped with it (no clock read per request).
    sweeps: AtomicU32,
}

struct Idle {
    conn: IdleConn,
    sweeps: u32,
}

/// An idle HTTP/1.1 connection of either engine (`server.http1_engine`).
pub enum IdleConn {
    Hyper(H1),
    Native(native::Conn),
}

/// Whether an idle connection can take a request.
#[derive(PartialEq, Eq)]
enum Readiness {
    Ready,
    /// Still finishing its last exchange (hyper's task not back to idle yet).
    NotYet,
    Closed,
}

impl IdleConn {
    fn readiness(&mut self) -> Readiness {
        match self {
            IdleConn::Hyper(sender) if sender.is_ready() => Readiness::Ready,
            IdleConn::Hyper(sender) if sender.is_closed() => Readiness::Closed,
            IdleConn::Hyper(_) => Readiness::NotYet,
            IdleConn::Native(conn) => match conn.is_usable() {
                true => Readiness::Ready,
                false => Readiness::Closed,
            },
        }
    }
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
    pub fn take(&self) -> Option<IdleConn> {
        let mut stack = self.stack();
        let mut i = stack.len();
        while i > 0 {
            i -= 1;
            match stack[i].conn.readiness() {
                Readiness::Ready => return Some(stack.remove(i).conn),
                Readiness::Closed => drop(stack.remove(i)),
                Readiness::NotYet => {}
            }
        }
        None
    }

    /// Keeps a connection whose last exchange ended cleanly; over the cap it is dropped (closed).
    pub fn put(&self, conn: IdleConn) {
        let sweeps = self.sweeps.load(Ordering::Relaxed);
        let mut stack = self.stack();
        if stack.len() < MAX_IDLE {
            stack.push(Idle { conn, sweeps });
        }
    }

    /// Drops the connections idle for longer than `IDLE_SWEEPS` sweeps and the closed ones.
    pub fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let stale: Vec<Idle> = {
            let mut stack = self.stack();
            let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut *stack)
                .into_iter()
                .map(|mut idle| (idle.conn.readiness() != Readiness::Closed, idle))
                .partition(|(open, idle)| *open && now.wrapping_sub(idle.sweeps) <= IDLE_SWEEPS);
            *stack = keep.into_iter().map(|(_, idle)| idle).collect();
            stale.into_iter().map(|(_, idle)| idle).collect()
        };
        // closed outside the lock
        drop(stale);
    }

    /// How many are kept now.
    pub fn count(&self) -> usize {
        self.stack().len()
    }
}

/// RFC 9110 9.2.2: a request the client may send again without a different outcome, so a proxy
/// may too.
fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
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
    /// The native client's exchange failed: IO, or a head that cannot be trusted
    /// (`Failure::is_malformed`).
    #[error("the upstream connection failed")]
    Native(#[source] native::Failure),
}

impl From<native::Failed> for SendError {
    fn from(failed: native::Failed) -> SendError {
        SendError::Native(failed.error)
    }
}

/// An upstream response body from either HTTP/1.1 engine (or an HTTP/2 stream, hyper's).
#[derive(Debug)]
pub enum RespBody {
    Hyper(Incoming),
    Native(native::Body),
}

impl RespBody {
    /// What the response's hop-by-hop fields said, when the native client left them out of the
    /// head's map already (`None`: they are in it, for `forward::strip_hop_by_hop`).
    pub fn stripped(&self) -> Option<super::forward::ConnectionSays> {
        match self {
            RespBody::Native(b) => b.stripped(),
            RespBody::Hyper(_) => None,
        }
    }
}

/// Why an upstream response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Native(#[from] std::io::Error),
}

impl http_body::Body for RespBody {
    type Data = bytes::Bytes;
    type Error = RespError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, RespError>>> {
        match self.get_mut() {
            RespBody::Hyper(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(RespError::from))),
            RespBody::Native(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(RespError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Hyper(b) => b.is_end_stream(),
            RespBody::Native(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RespBody::Hyper(b) => b.size_hint(),
            RespBody::Native(b) => b.size_hint(),
        }
    }
}

/// The upstream side of a `101`: hyper's pending upgrade, or a native connection with what was
/// read past the head.
pub enum Upgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Native(bytes::Bytes, Box<native::Io>),
    /// The body had no connection to give (cannot happen for a `101` the codec let through).
    None,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upgrade::Hyper(_) => f.write_str("Upgrade(hyper)"),
            Upgrade::Native(..) => f.write_str("Upgrade(native)"),
            Upgrade::None => f.write_str("Upgrade(none)"),
        }
    }
}

/// The upstream connection of a `101` response, for the tunnel.
pub fn upgrade(resp: &mut Response<RespBody>) -> Upgrade {
    match resp.body_mut() {
        RespBody::Hyper(_) => Upgrade::Hyper(hyper::upgrade::on(resp)),
        RespBody::Native(body) => match body.take_upgraded() {
            Some((read, io)) => Upgrade::Native(read, io),
            None => Upgrade::None,
        },
    }
}

/// Opens connections to one upstream's backends and sends requests over them.
pub struct Dialer {
    connector: Connector,
    scheme: Scheme,
    protocol: Protocol,
    /// HTTP/2 streams per connection (`max_streams`).
    max_streams: u32,
    h2: http2::Builder<TokioExecutor>,
    /// HTTP/1.1 on the native client (`server.http1_engine = "native"`), else hyper's.
    native: bool,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dialer({}, {:?})", self.scheme, self.protocol)
    }
}

/// A connection just opened.
enum Opened {
    Http1(H1),
    Http2(Arc<H2Conn>),
    Native(native::Conn),
}

impl Dialer {
    /// HTTP/1.1 goes on the native client, which writes Gatehouse's own headers held beside a
    /// request's map (`forward::Added`) itself: for hyper's clients they go into the map.
    pub fn writes_added(&self) -> bool {
        self.native
    }

    pub fn new(
        connector: Connector,
        tls: bool,
        protocol: Protocol,
        max_streams: u32,
        native: bool,
    ) -> Dialer {
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            // a dead connection is noticed even while no request is on it
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .max_concurrent_reset_streams(1024);
        Dialer {
            connector,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            protocol,
            max_streams,
            h2,
            native,
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) with Gatehouse's own headers `added` (those not
    /// in its map already: the native client writes them after the map's fields, the others put
    /// them into the map) to `backend` on an idle connection, else a new one; returns the response head and the connection, for `IdleConns::put` once the body has
    /// ended. A reused connection that hands the request back unsent (the upstream closed it as we
    /// took it) costs the request nothing: it goes once more, on a new connection.
    ///
    /// Not an `async fn` but the path's own future: a wrapper future would hold the request
    /// once more and move it into the path's future (a copy of ~300 bytes per request), and
    /// its state would size every future that awaits this one.
    pub fn send<'a>(
        &'a self,
        backend: &'a Backend,
        req: Request<CountedBody>,
        added: &'a Added,
        connect: Duration,
    ) -> impl Future<Output = Result<(Response<RespBody>, Sender), SendError>> + Send + 'a {
        let http1 = match self.protocol {
            Protocol::Http1 => true,
            Protocol::Auto => backend.h2.learned() == Learned::Http1,
            Protocol::H2 | Protocol::H2c => false,
        };
        // HTTP/2 boxed: the HTTP/1.1 path's future stays small
        match http1 {
            true => Either::Left(self.send_h1(backend, req, added, connect)),
            false => Either::Right(Box::pin(self.send_h2(backend, req, added, connect))),
        }
    }

    /// On a kept connection, the native or hyper path's own future (the common case: nothing
    /// boxed, no wrapper holding the request once more); a new connection's path is boxed.
    fn send_h1<'a>(
        &'a self,
        backend: &'a Backend,
        mut req: Request<CountedBody>,
        added: &'a Added,
        connect: Duration,
    ) -> impl Future<Output = Result<(Response<RespBody>, Sender), SendError>> + Send + 'a {
        match backend.idle.take() {
            Some(IdleConn::Native(conn)) => Either::Left(Either::Left(
                self.send_native(backend, conn, true, req, added, connect),
            )),
            Some(IdleConn::Hyper(sender)) => Either::Left(Either::Right({
                added.put_into(req.headers_mut());
                self.send_hyper(backend, sender, req, connect)
            })),
            // boxed: connecting is rare, the common paths' futures stay small
            None => Either::Right(Box::pin(self.send_new(backend, req, added, connect))),
        }
    }

    /// hyper's client on a kept connection; one the upstream closed as we took it hands the
    /// request back unsent, and it goes once more on a new connection.
    async fn send_hyper(
        &self,
        backend: &Backend,
        mut sender: http1::SendRequest<CountedBody>,
        req: Request<CountedBody>,
        connect: Duration,
    ) -> Result<(Response<RespBody>, Sender), SendError> {
        let req = match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp.map(RespBody::Hyper), Sender::Http1(sender))),
            Err(mut err) => match err.take_message() {
                Some(req) => {
                    tracing::debug!(server = %backend.addr, error = %err.error(), "idle upstream connection closed; sending on a new one");
                    req
                }
                None => return Err(SendError::Request(err.into_error())),
            },
        };
        // the request's headers are all in its map already
        Box::pin(self.send_fresh(backend, req, Added::none(), connect)).await
    }

    /// On a connection opened for this request (none was kept): nothing to send again.
    async fn send_new(
        &self,
        backend: &Backend,
        mut req: Request<CountedBody>,
        added: &Added,
        connect: Duration,
    ) -> Result<(Response<RespBody>, Sender), SendError> {
        match self.open(backend, connect).await? {
            Opened::Http1(sender) => send_opened(sender, req, added).await,
            Opened::Native(conn) => {
                self.send_native(backend, conn, false, req, added, connect)
                    .await
            }
            // boxed, like the dial: HTTP/2 found by ALPN is the rare way here
            Opened::Http2(conn) => {
                added.put_into(req.headers_mut());
                Box::pin(self.first_h2(backend, conn, req)).await
            }
        }
    }

    /// On a new connection, whatever it turns out to be.
    async fn send_fresh(
        &self,
        backend: &Backend,
        mut req: Request<CountedBody>,
        added: &Added,
        connect: Duration,
    ) -> Result<(Response<RespBody>, Sender), SendError> {
        match Box::pin(self.open(backend, connect)).await? {
            Opened::Http1(sender) => send_opened(sender, req, added).await,
            Opened::Native(conn) => {
                let (parts, mut body) = req.into_parts();
                let resp = native::send(conn, (&parts, added), &mut body).await?;
                crate::h1::maps::give(parts.headers);
                Ok((resp.map(RespBody::Native), Sender::Native))
            }
            Opened::Http2(conn) => {
                added.put_into(req.headers_mut());
                Box::pin(self.first_h2(backend, conn, req)).await
            }
        }
    }

    /// The native client on `conn`; a connection taken from the idle ones that the upstream
    /// closed before anything of the request was read (nothing came back, the body untouched)
    /// costs an idempotent request nothing: it goes once more, on a new connection (nginx does
    /// the same). A `POST`, `PATCH` or other non-idempotent request is not sent twice: the
    /// upstream may have acted on it before it closed (nginx's rule since 1.9.13; hyper's client
    /// sends none again once written); it gets `502`.
    async fn send_native(
        &self,
        backend: &Backend,
        conn: native::Conn,
        reused: bool,
        req: Request<CountedBody>,
        added: &Added,
        connect: Duration,
    ) -> Result<(Response<RespBody>, Sender), SendError> {
        let (parts, mut body) = req.into_parts();
        match native::send(conn, (&parts, added), &mut body).await {
            Ok(resp) => {
                // the head is written: its map is kept for the next head this thread reads
                crate::h1::maps::give(parts.headers);
                Ok((resp.map(RespBody::Native), Sender::Native))
            }
            Err(failed) if reused && failed.unsent && idempotent(&parts.method) => {
                tracing::debug!(server = %backend.addr, error = %failed.error, "idle upstream connection closed; sending on a new one");
                let req = Request::from_parts(parts, body);
                Box::pin(self.send_fresh(backend, req, added, connect)).await
            }
            Err(failed) => Err(failed.into()),
        }
    }

    /// HTTP/2: a place on an open connection with room, else on a new one (opened by one
    /// request at a time, see `H2Conns::dialing`). A request a shared connection hands back
    /// unsent (it closed, or said GOAWAY) goes once more, on a new connection.
    async fn send_h2(
        &self,
        backend: &Backend,
        mut req: Request<CountedBody>,
        added: &Added,
        connect: Duration,
    ) -> Result<(Response<RespBody>, Sender), SendError> {
        added.put_into(req.headers_mut());
        h2_form(&mut req, &self.scheme, &backend.authority);
        if let Some(stream) = backend.h2.take(self.max_streams) {
            match stream.sender().try_send_request(req.map(H2Body)).await {
                Ok(resp) => return Ok((h1_head(resp).map(RespBody::Hyper), Sender::Http2(stream))),
                Err(mut err) => match err.take_message() {
                    Some(back) => {
                        tracing::debug!(server = %backend.addr, error = %err.error(), "upstream HTTP/2 connection closed; sending on a new one");
                        backend.h2.remove(stream.conn());
                        req = back.map(|body| body.0);
                    }
                    None => return Err(SendError::Request(err.into_error())),
                },
            }
        }
        // a request waits for another's dial no longer than for its own: a server that does not
        // answer fails the queue one `connect` at a time, not one after the other
        let dialing = tokio::time::timeout(connect, backend.h2.dialing.lock())
            .await
            .map_err(|_| connect_timed_out(connect))?;
        if let Some(stream) = backend.h2.take(self.max_streams) {
            drop(dialing);
            return send_on(stream, req).await;
        }
        let opened = self.open(backend, connect).await;
        drop(dialing);
        match opened? {
            Opened::Http2(conn) => Box::pin(self.first_h2(backend, conn, req)).await,
            // `auto` and the server chose HTTP/1.1
            Opened::Http1(mut sender) => {
                h1_form(&mut req);
                match sender.try_send_request(req).await {
                    Ok(resp) => Ok((resp.map(RespBody::Hyper), Sender::Http1(sender))),
                    Err(err) => Err(SendError::Request(err.into_error())),
                }
            }
            Opened::Native(conn) => {
                h1_form(&mut req);
                let (parts, mut body) = req.into_parts();
                // its headers all in its map (above)
                let resp = native::send(conn, (&parts, Added::none()), &mut body).await?;
                crate::h1::maps::give(parts.headers);
                Ok((resp.map(RespBody::Native), Sender::Native))
            }
        }
    }

    /// The first request on a connection just opened, which joins the backend's shared ones.
    async fn first_h2(
        &self,
        backend: &Backend,
        conn: Arc<H2Conn>,
        mut req: Request<CountedBody>,
    ) -> Result<(Response<RespBody>, Sender), SendError> {
        if req.uri().scheme().is_none() {
            h2_form(&mut req, &self.scheme, &backend.authority);
        }
        send_on(backend.h2.add(conn), req).await
    }

    /// A new connection to `backend`, its task spawned; connecting (TCP and, for a TLS
    /// upstream, the handshake; or a Unix socket's) must be done within `connect`.
    async fn open(&self, backend: &Backend, connect: Duration) -> Result<Opened, SendError> {
        if let BackendAddr::Unix(path) = &backend.addr {
            let connecting = tokio::net::UnixStream::connect(path);
            let io = match tokio::time::timeout(connect, connecting).await {
                Ok(io) => io.map_err(|e| SendError::Connect(Box::new(e)))?,
                Err(_) => return Err(connect_timed_out(connect)),
            };
            // no ALPN on a socket: `auto` is HTTP/1.1 there
            if self.protocol == Protocol::Auto {
                backend.h2.learn(Learned::Http1);
            }
            let h2 = self.protocol == Protocol::H2c;
            return self
                .handshake(UpstreamIo::Unix(TokioIo::new(io)), h2, backend)
                .await;
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
        let h2 = match self.protocol {
            Protocol::Http1 => false,
            Protocol::H2 | Protocol::H2c => true,
            Protocol::Auto => {
                let h2 = negotiated_h2(&io);
                let learned = if h2 { Learned::Http2 } else { Learned::Http1 };
                backend.h2.learn(learned);
                h2
            }
        };
        self.handshake(UpstreamIo::Tcp(io), h2, backend).await
    }

    /// hyper's HTTP/1.1 (upgrades included) or HTTP/2 client over `io`, the connection driven
    /// by a task of its own until it closes. One stream type for every kind of upstream, so
    /// hyper's client is compiled once: see `upstream::io`.
    async fn handshake(
        &self,
        io: UpstreamIo,
        h2: bool,
        backend: &Backend,
    ) -> Result<Opened, SendError> {
        let server = backend.addr.clone();
        if h2 {
            let (sender, conn) = self.h2.handshake(io).await.map_err(SendError::Request)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%server, error = %e, "upstream HTTP/2 connection ended with error");
                }
            });
            return Ok(Opened::Http2(H2Conn::new(sender)));
        }
        if self.native {
            // no task: each request drives the connection it holds
            return Ok(Opened::Native(native::Conn::new(io)));
        }
        let (sender, conn) = http1::handshake(io).await.map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%server, error = %e, "upstream connection ended with error");
            }
        });
        Ok(Opened::Http1(sender))
    }
}

/// hyper's HTTP/1.1 client on a connection opened for this request: Gatehouse's own headers
/// go into the map (hyper writes the map alone), and nothing is sent again.
async fn send_opened(
    mut sender: H1,
    mut req: Request<CountedBody>,
    added: &Added,
) -> Result<(Response<RespBody>, Sender), SendError> {
    added.put_into(req.headers_mut());
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp.map(RespBody::Hyper), Sender::Http1(sender))),
        Err(err) => Err(SendError::Request(err.into_error())),
    }
}

/// Sends on a place just claimed; the place comes back with the response.
async fn send_on(
    stream: Stream,
    req: Request<CountedBody>,
) -> Result<(Response<RespBody>, Sender), SendError> {
    match stream.sender().send_request(req.map(H2Body)).await {
        Ok(resp) => Ok((h1_head(resp).map(RespBody::Hyper), Sender::Http2(stream))),
        Err(e) => Err(SendError::Request(e)),
    }
}

/// Whether ALPN chose HTTP/2 on a TLS connection.
fn negotiated_h2(io: &UpstreamStream) -> bool {
    match io {
        hyper_rustls::MaybeHttpsStream::Https(tls) => {
            tls.inner().get_ref().1.alpn_protocol() == Some(b"h2")
        }
        hyper_rustls::MaybeHttpsStream::Http(_) => false,
    }
}

/// The request as HTTP/2 sends it (RFC 9113 8.3.1): `:scheme` and `:authority` (from `Host`,
/// which an intermediary turns into `:authority`; the backend's address if there is none)
/// instead of `Host`. CONNECT keeps its authority-form target.
fn h2_form<B>(req: &mut Request<B>, scheme: &Scheme, backend: &Authority) {
    *req.version_mut() = Version::HTTP_2;
    let host = req.headers_mut().remove(header::HOST);
    if req.method() == Method::CONNECT {
        return;
    }
    let authority = host
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| backend.clone());
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or(PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Back from `h2_form` for a server that chose HTTP/1.1 after all (`auto`).
fn h1_form<B>(req: &mut Request<B>) {
    *req.version_mut() = Version::HTTP_11;
    if let Some(authority) = req.uri().authority() {
        if let Ok(host) = http::HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or(PathAndQuery::from_static("/"));
    if req.method() != Method::CONNECT {
        *req.uri_mut() = Uri::from(path);
    }
}

/// An HTTP/2 response head as the rest of the proxy reads an HTTP/1.1 one that keeps its
/// connection (it carries no `Connection` header; its stream ends with its body).
fn h1_head<B>(mut resp: Response<B>) -> Response<B> {
    *resp.version_mut() = Version::HTTP_11;
    resp
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
    async fn idle_conn() -> (H1, DuplexStream) {
        let (client, server) = tokio::io::duplex(4096);
        let (mut sender, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        (sender, server)
    }

    fn hyper(conn: IdleConn) -> H1 {
        match conn {
            IdleConn::Hyper(sender) => sender,
            IdleConn::Native(_) => panic!("a native connection"),
        }
    }

    fn hyper_ref(conn: &IdleConn) -> &H1 {
        match conn {
            IdleConn::Hyper(sender) => sender,
            IdleConn::Native(_) => panic!("a native connection"),
        }
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
        idle.put(IdleConn::Hyper(a));
        idle.put(IdleConn::Hyper(b));
        let taken = hyper(idle.take().unwrap());
        drop(b_end);
        until(|| taken.is_closed()).await;
        assert_eq!(idle.count(), 1);

        let (c, c_end) = idle_conn().await;
        idle.put(IdleConn::Hyper(c));
        drop(c_end);
        until(|| hyper_ref(&idle.stack()[1].conn).is_closed()).await;
        let taken = hyper(idle.take().unwrap());
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
        idle.put(IdleConn::Hyper(sender));
        assert!(idle.take().is_none());
        assert_eq!(idle.count(), 1);
        tokio::spawn(conn);
        until(|| hyper_ref(&idle.stack()[0].conn).is_ready()).await;
        assert!(idle.take().is_some());
    }

    #[tokio::test]
    async fn idle_connections_go_after_ten_sweeps_and_over_the_cap() {
        let idle = IdleConns::default();
        let (a, _a_end) = idle_conn().await;
        idle.put(IdleConn::Hyper(a));
        for _ in 0..IDLE_SWEEPS {
            idle.sweep();
        }
        assert_eq!(idle.count(), 1, "idle for {IDLE_SWEEPS} sweeps");
        idle.sweep();
        assert_eq!(idle.count(), 0);

        let mut ends = Vec::new();
        for _ in 0..=MAX_IDLE {
            let (conn, end) = idle_conn().await;
            idle.put(IdleConn::Hyper(conn));
            ends.push(end);
        }
        assert_eq!(idle.count(), MAX_IDLE);
    }
}
