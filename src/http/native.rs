//! The native HTTP/1.1 engine (`[server] http1_engine = "native"`, issue 23): one task per client
//! connection reads each request head with the codec (`crate::h1`), hands the request to the same
//! proxy core hyper's connections use (`ProxyService`), and writes the answer with framing of its
//! own making. Nothing of the connection lives in another task: the request body is read straight
//! off the connection's buffer by whoever polls it (`RequestBody`), the answer is written by this
//! task, and an upgrade becomes a tunnel on the same socket.
//!
//! The connection's socket and read buffer sit in one `Wire` behind a mutex, because two parties
//! take turns on them: this task (heads, answers) and the request body's reader (which may be the
//! upstream connection's task). Each holds the lock only inside one poll, never across an await.
//! A body belongs to one request: once the connection has moved on (`Wire::request`), a body
//! left behind reads nothing more, so it can never read the next request's bytes as its own.
//!
//! Deadlines, parking and shutdown are the hyper path's (`conn::Watchdog`, `Guard`): an idle
//! connection gives its buffers back after `PARK_AFTER_MS` (`PARK_AFTER_FIRST_MS` after its first
//! request) and waits for its next request with none.

use super::conn::Expiry;
use super::service::ProxyService;
use super::{ClientBody, Guard};
use crate::h1::chunked::{self, Decoder};
use crate::h1::request::{RequestError, RequestHead, Target};
use crate::h1::{Body as Framing, Kind, Limits};
use crate::request_id::{RequestId, X_REQUEST_ID};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// What a connection's socket must be, boxed once per connection so the body type is not
/// generic over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How much room a read first makes in the buffer: a request head, most often a few hundred
/// bytes (nginx's `client_header_buffer_size` is 1 KiB). It doubles while reads fill it (a body
/// coming fast), up to `READ_MAX`: a large upload comes in large reads, and a connection being
/// set up holds a small buffer (many set up at once, freed when they park, leave that much free
/// memory behind in the allocator).
const READ_CHUNK: usize = 4 * 1024;
/// The largest read the room grows to.
const READ_MAX: usize = 64 * 1024;
/// Pipelined bytes read ahead while a request is served, at most.
const INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The connection's socket, the bytes read from it and not yet used, and the state of the body
/// of the request being served.
struct Wire {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// Counts requests: a body reads only while this is still its request's number.
    request: u64,
    body: BodyState,
    /// Bytes of `100 Continue` still to write before the body is read (0: none due).
    interim_left: usize,
    eof: bool,
    /// How much the next read makes room for (`READ_CHUNK` to `READ_MAX`).
    room: usize,
}

#[derive(Debug)]
enum BodyState {
    /// Read to its end (or there was none).
    Done,
    Length(u64),
    Chunked(Box<Decoder>),
    /// Broken: the connection cannot be read as HTTP after it.
    Failed,
}

type Shared = Arc<Mutex<Wire>>;

fn lock(wire: &Shared) -> MutexGuard<'_, Wire> {
    wire.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wire {
    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(self.room);
        }
        let space = self.buf.capacity() - self.buf.len();
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == 0 {
            self.eof = true;
        }
        if n == space && self.room < READ_MAX {
            self.room *= 2;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.interim_left > 0 {
            let from = INTERIM.len() - self.interim_left;
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &INTERIM[from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.interim_left -= n;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// The next piece of the current request's body out of the buffer, reading when it is empty.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, NativeBodyError>>> {
        if self.interim_left > 0 {
            if let Err(e) = std::task::ready!(self.poll_interim(cx)) {
                self.body = BodyState::Failed;
                return Poll::Ready(Some(Err(NativeBodyError::Io(e))));
            }
        }
        loop {
            match &mut self.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Failed => return Poll::Ready(Some(Err(NativeBodyError::Broken))),
                BodyState::Length(left) if !self.buf.is_empty() => {
                    let n = (*left).min(self.buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.body = BodyState::Done;
                    }
                    return Poll::Ready(Some(Ok(self.buf.split_to(n).freeze())));
                }
                BodyState::Chunked(decoder) if !self.buf.is_empty() => {
                    let decoded = match decoder.decode(&self.buf) {
                        Ok(d) => d,
                        Err(e) => {
                            self.body = BodyState::Failed;
                            return Poll::Ready(Some(Err(NativeBodyError::Chunked(e))));
                        }
                    };
                    let done = decoder.is_done();
                    let used = self.buf.split_to(decoded.consumed).freeze();
                    if done {
                        self.body = BodyState::Done;
                    }
                    if !decoded.data.is_empty() {
                        return Poll::Ready(Some(Ok(used.slice(decoded.data))));
                    }
                    if done {
                        return Poll::Ready(None);
                    }
                    if decoded.consumed > 0 {
                        continue;
                    }
                }
                _ => {}
            }
            if self.eof {
                self.body = BodyState::Failed;
                return Poll::Ready(Some(Err(NativeBodyError::Incomplete)));
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(NativeBodyError::Incomplete)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.body = BodyState::Failed;
                    return Poll::Ready(Some(Err(NativeBodyError::Io(e))));
                }
            }
        }
    }
}

/// Why a request body read on the native engine failed.
#[derive(Debug, thiserror::Error)]
pub enum NativeBodyError {
    #[error("client closed the connection before the end of its body")]
    Incomplete,
    #[error("malformed chunked body: {0}")]
    Chunked(chunked::ChunkError),
    #[error("client connection: {0}")]
    Io(io::Error),
    #[error("the request body could not be read")]
    Broken,
}

/// A request's body on the native engine, read off the connection's buffer.
#[derive(Debug)]
pub struct RequestBody {
    wire: Option<Shared>,
    request: u64,
    hint: SizeHint,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("request", &self.request)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = NativeBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, NativeBodyError>>> {
        let Some(wire) = &self.wire else {
            return Poll::Ready(None);
        };
        let polled = {
            let mut w = lock(wire);
            if w.request != self.request {
                // the connection moved on without this body: nothing of it is left to read
                return Poll::Ready(Some(Err(NativeBodyError::Broken)));
            }
            std::task::ready!(w.poll_body(cx))
        };
        match polled {
            Some(Ok(data)) => {
                if let Some(left) = self.hint.exact() {
                    self.hint.set_exact(left.saturating_sub(data.len() as u64));
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                self.wire = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.wire = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.wire.is_none() || self.hint.exact() == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// The connection as this task reads and writes it: the buffered bytes first, then the socket.
pub(super) struct Handle(Shared);

impl AsyncRead for Handle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut w = lock(&self.0);
        if !w.buf.is_empty() {
            let n = w.buf.len().min(out.remaining());
            out.put_slice(&w.buf[..n]);
            w.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut w.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Handle {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut lock(&self.0).io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut lock(&self.0).io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.0).io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_shutdown(cx)
    }
}

/// What the connection lends its request path for one activation, besides its socket.
pub(super) struct Setup<'g> {
    pub guard: &'g mut Guard,
    pub svc: &'g ProxyService,
    pub limits: Limits,
}

/// How reading the next head ended.
enum HeadRead {
    Complete,
    /// Idle for the parking delay with nothing buffered.
    Parked,
    /// The client closed, a deadline passed, or the server shuts down: close quietly.
    Closed,
    Refused(RequestError),
}

/// How a run of requests on a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Run {
    /// Idle long enough to park: wait for the next request without the request path's state.
    Parked,
    Ended,
}

/// The connection as the native engine serves it: its socket and `pre`, bytes already read
/// from it.
pub(super) fn wire(io: Box<dyn Io>, pre: &[u8]) -> Handle {
    Handle(Arc::new(Mutex::new(Wire {
        io,
        buf: BytesMut::from(pre),
        request: 0,
        body: BodyState::Done,
        interim_left: 0,
        eof: false,
        room: READ_CHUNK,
    })))
}

impl Handle {
    /// The socket alone, for a parked connection to wait on, when nothing else holds the wire
    /// (no body of an earlier request is left anywhere) and nothing is buffered; else the
    /// handle back. A parked connection then keeps no wire: `wire` makes one when it wakes.
    pub(super) fn into_io(self) -> Result<Box<dyn Io>, Handle> {
        let wire = Arc::try_unwrap(self.0).map_err(Handle)?;
        let wire = wire.into_inner().unwrap_or_else(|e| e.into_inner());
        if !wire.buf.is_empty() || wire.eof || !matches!(wire.body, BodyState::Done) {
            return Err(Handle(Arc::new(Mutex::new(wire))));
        }
        Ok(wire.io)
    }

    /// Bytes a parked connection received, to be read before the socket.
    pub(super) fn refill(&self, bytes: &[u8]) {
        lock(&self.0).buf.extend_from_slice(bytes);
    }
}

/// Serves requests until the connection ends (closed here) or parks (its read buffer given
/// back when empty: a parked connection waits for its next request with no buffer).
///
/// The caller boxes this with the rest of an activation (the head's field index, the write
/// buffer, the answer and body futures, several KiB): a parked connection holds none of it.
pub(super) async fn serve_requests(handle: &Handle, setup: Setup<'_>) -> Run {
    let Setup { guard, svc, limits } = setup;
    let (wire, state, limits) = (&handle.0, &svc.conn, &limits);
    let mut head = RequestHead::default();
    let mut out = Vec::new();
    // one wait for shutdown for the whole activation, polled by each request's waits: a new
    // `changed()` per wait enters the channel's waiter list and leaves it (a lock each way,
    // ~700 instructions per request); fused, as it is polled no more once it has fired
    let mut shutdown = guard.shutdown.clone();
    let stop = shutdown.changed().fuse();
    tokio::pin!(stop);
    loop {
        match read_head(wire, &mut head, limits, (guard, stop.as_mut())).await {
            HeadRead::Complete => {}
            HeadRead::Parked => {
                let mut w = lock(wire);
                if w.buf.is_empty() {
                    w.buf = BytesMut::new();
                }
                return Run::Parked;
            }
            HeadRead::Closed => {
                close(wire, guard).await;
                return Run::Ended;
            }
            HeadRead::Refused(err) => {
                tracing::debug!(peer = %guard.peer(), error = %err, "request head refused");
                let _ = refuse(wire, err, &mut out).await;
                state.linger_on_close();
                close(wire, guard).await;
                return Run::Ended;
            }
        }
        let (req, asked) = match request(wire, &head) {
            Ok(req) => req,
            Err(()) => {
                let _ = refuse(wire, RequestError::Parse(httparse::Error::Token), &mut out).await;
                state.linger_on_close();
                close(wire, guard).await;
                return Run::Ended;
            }
        };
        let Some((resp, closing)) =
            answer(svc.clone(), req, (&mut *guard, wire, limits), stop.as_mut()).await
        else {
            close(wire, guard).await;
            return Run::Ended;
        };
        let body_done = matches!(lock(wire).body, BodyState::Done);
        let keep = asked.keep_alive && !closing && body_done;
        // pinned here and lent to `write_in_grace`, not moved into it: the answer's future is
        // several KiB, and each move of it is a copy
        let written = {
            let write = write_response(wire, resp, &asked, keep, &mut out);
            tokio::pin!(write);
            write_in_grace(write, guard, stop.as_mut()).await
        };
        lock(wire).request += 1;
        match written {
            // the server began shutting down while the answer was written
            Ok(Written::KeepAlive) if guard.drain.is_some() => {
                close(wire, guard).await;
                return Run::Ended;
            }
            Ok(Written::Upgraded) => {
                if let Some(pending) = state.take_tunnel() {
                    // both from what the connection already holds
                    let idle = guard.http.tunnel_idle;
                    let tunnels = &svc.cx.listener_metrics(svc.transport).tunnels;
                    guard
                        .tunnel_native(Handle(wire.clone()), pending, idle, tunnels)
                        .await;
                }
                return Run::Ended;
            }
            Ok(Written::KeepAlive) => {}
            Ok(Written::Close) => {
                if !matches!(lock(wire).body, BodyState::Done) {
                    state.linger_on_close();
                }
                close(wire, guard).await;
                return Run::Ended;
            }
            Err(e) => {
                tracing::debug!(peer = %guard.peer(), error = %e, "connection ended with error");
                return Run::Ended;
            }
        }
        if out.capacity() > 64 * 1024 {
            out = Vec::new();
        }
    }
}

/// Writes an answer, within the grace period once the server is shutting down (a client taking
/// its answer slowly does not hold shutdown up, as with hyper's connections).
async fn write_in_grace(
    mut write: Pin<&mut impl std::future::Future<Output = io::Result<Written>>>,
    guard: &mut Guard,
    mut stop: Pin<&mut impl Stop>,
) -> io::Result<Written> {
    loop {
        let drain = guard.drain;
        tokio::select! {
            biased;
            written = &mut write => return written,
            _ = stop.as_mut(), if drain.is_none() => {
                guard.drain = Some(tokio::time::Instant::now() + guard.grace());
            }
            _ = super::sleep_until(drain), if drain.is_some() => {
                return Err(io::Error::other("shutdown: the grace period ran out mid-answer"));
            }
        }
    }
}

/// A connection's wait for shutdown, made once per activation (`serve_requests`) and polled by
/// each of its requests' waits; fused: once fired, it is pending for good.
trait Stop: std::future::Future + futures_util::future::FusedFuture {}
impl<T: std::future::Future + futures_util::future::FusedFuture> Stop for T {}

/// Closes the connection: its write side shut down (lingering if the connection says so),
/// within the grace period.
async fn close(wire: &Shared, guard: &Guard) {
    let mut handle = Handle(wire.clone());
    let _ = tokio::time::timeout(guard.grace(), handle.shutdown()).await;
}

/// Reads until `head` holds a complete request head, under the connection's deadlines; an idle
/// connection comes back `Parked` for `serve` to wait without the request path's state.
async fn read_head(
    wire: &Shared,
    head: &mut RequestHead,
    limits: &Limits,
    (guard, mut stop): (&mut Guard, Pin<&mut impl Stop>),
) -> HeadRead {
    loop {
        {
            let w = lock(wire);
            if !w.buf.is_empty() {
                match head.parse(&w.buf, limits) {
                    Ok(true) => return HeadRead::Complete,
                    Ok(false) => {}
                    Err(e) => return HeadRead::Refused(e),
                }
            }
            if w.eof {
                return HeadRead::Closed;
            }
        }
        let fill = poll_fn(|cx| lock(wire).poll_fill(cx));
        tokio::select! {
            biased;
            filled = fill => match filled {
                Ok(0) | Err(_) => return HeadRead::Closed,
                Ok(_) => {}
            },
            expiry = &mut guard.watchdog => match expiry {
                Expiry::HeaderRead => {
                    tracing::debug!(peer = %guard.peer(), "closing connection: request head not received in time");
                    return HeadRead::Closed;
                }
                Expiry::Idle => return HeadRead::Closed,
                Expiry::Park => return HeadRead::Parked,
            },
            _ = stop.as_mut() => return HeadRead::Closed,
        }
    }
}

/// What the request asked of its answer's framing.
struct Asked {
    head: bool,
    minor_version: u8,
    keep_alive: bool,
    /// The request asked to switch protocols (`Connection: upgrade` with `Upgrade`), or is a
    /// `CONNECT`: a `101` (or a `2xx` to `CONNECT`) ends HTTP on the connection.
    upgrade: bool,
}

/// The codec's bounds on a head, from the server's: as with hyper, the outer fence only (a head
/// that cannot fit is `431`); the exact `max_header_size` and `max_uri` checks are the service's.
pub(super) fn limits(limits: &crate::config::ServerLimits) -> Limits {
    let max_head = (limits.max_header_size + limits.max_uri + 4096).max(8192);
    Limits {
        max_head,
        max_fields: limits.max_headers,
        max_target: max_head,
    }
}

/// The parsed head as an `http::Request` whose body reads the rest of the request off the wire;
/// the head's bytes leave the buffer (its field values share them).
fn request(wire: &Shared, head: &RequestHead) -> Result<(Request<ClientBody>, Asked), ()> {
    let mut w = lock(wire);
    let bytes = w.buf.split_to(head.len).freeze();
    let method = Method::from_bytes(head.method.of(&bytes)).map_err(|_| ())?;
    let asked = Asked {
        head: method == Method::HEAD,
        minor_version: head.minor_version,
        keep_alive: head.keeps_alive(),
        upgrade: head.connection.upgrade,
    };
    let target = bytes.slice(head.target.start as usize..head.target.end as usize);
    let uri = match head.form {
        Target::Asterisk => Uri::from_static("*"),
        _ => Uri::from_maybe_shared(target).map_err(|_| ())?,
    };
    // room for the fields the proxy may add upstream (`X-Forwarded-*`, `X-Real-IP`,
    // `X-Request-Id` when they go into the map: see `forward::Added`), so it never grows
    let mut headers = crate::h1::maps::take(head.fields.len() + 6);
    let chunked = head.body == Framing::Chunked;
    for field in &head.fields {
        if chunked && field.kind == Kind::ContentLength {
            // framed by the chunked coding: a length beside it means nothing (and is not
            // forwarded; hyper drops it too)
            continue;
        }
        let name = match field.kind.header_name() {
            Some(name) => name,
            None => crate::h1::names::name(field.name.of(&bytes)).map_err(|_| ())?,
        };
        let value = bytes.slice(field.value.start as usize..field.value.end as usize);
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| ())?;
        headers.append(name, value);
    }
    let (state, hint) = match head.body {
        Framing::Length(n) if n > 0 => (BodyState::Length(n), SizeHint::with_exact(n)),
        Framing::Chunked => (
            BodyState::Chunked(Box::new(Decoder::new(chunked::Limits::default()))),
            SizeHint::default(),
        ),
        _ => (BodyState::Done, SizeHint::with_exact(0)),
    };
    let has_body = !matches!(state, BodyState::Done);
    w.interim_left = if has_body && head.expects_continue && head.minor_version == 1 {
        INTERIM.len()
    } else {
        0
    };
    w.body = state;
    let body = RequestBody {
        wire: has_body.then(|| wire.clone()),
        request: w.request,
        hint,
    };
    drop(w);
    let mut req = Request::new(ClientBody::Native(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = match head.minor_version {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    *req.headers_mut() = headers;
    Ok((req, asked))
}

/// Runs the request through the proxy core. The answer comes with whether the connection must
/// close after it (the server began shutting down meanwhile); `None` if the grace period ran out
/// first.
/// A client that hangs up meanwhile (seen once its body has been read) cancels the request:
/// the proxy future is dropped, and with it the upstream request (nginx's
/// `proxy_ignore_client_abort off`).
// an `async` block, not an `async fn`: `svc` and `req` are held once, where an `async fn`
// keeps its arguments twice (as given, and moved into its locals)
#[allow(clippy::manual_async_fn)]
fn answer<'a, S: Stop>(
    svc: ProxyService,
    req: Request<ClientBody>,
    (guard, wire, limits): (&'a mut Guard, &'a Shared, &'a Limits),
    mut stop: Pin<&'a mut S>,
) -> impl std::future::Future<Output = Option<(Response<super::body::ProxyBody>, bool)>> + use<'a, S>
{
    async move {
        // inline, in the activation's box (allocated once per activation, freed when the
        // connection parks), not a box of its own per request: an allocation of several KiB,
        // outside the allocator's per-thread cache, and its free, per request (~300
        // instructions, callgrind)
        let call = svc.call(req);
        tokio::pin!(call);
        let mut closing = guard.drain.is_some();
        loop {
            let drain = guard.drain;
            tokio::select! {
                biased;
                Ok(resp) = &mut call => return Some((resp, closing)),
                () = hang_up(wire, limits.max_head) => {
                    tracing::debug!(peer = %guard.peer(), "client closed the connection; request dropped");
                    return None;
                }
                _ = stop.as_mut(), if drain.is_none() => {
                    closing = true;
                    guard.drain = Some(tokio::time::Instant::now() + guard.grace());
                }
                _ = super::sleep_until(drain), if drain.is_some() => return None,
                // never ready while a request is in flight: polled for the upstream's answer
                // time (`ConnState::response_due`), which it arms its timer for, draining or not
                _ = &mut guard.watchdog => {}
            }
        }
    }
}

/// Resolves when the client closes its side while its request is served. Reads only once the
/// request's body is all read (what comes then is the next request, pipelined: kept, up to a
/// head's worth); until then the body's reader owns the socket's reads. Not woken while it does
/// not read: the task is polled again by whatever the request's future waits on.
async fn hang_up(wire: &Shared, max: usize) {
    poll_fn(|cx| {
        let mut w = lock(wire);
        if !matches!(w.body, BodyState::Done) || w.buf.len() >= max || w.eof {
            return Poll::Pending;
        }
        match w.poll_fill(cx) {
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
            Poll::Ready(Ok(_)) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// How a response left the connection.
enum Written {
    KeepAlive,
    Close,
    /// A `101`: the connection is a tunnel from here.
    Upgraded,
}

/// The framing the engine gives an answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes the answer: its head with framing of the engine's own making, then its body.
async fn write_response(
    wire: &Shared,
    resp: Response<super::body::ProxyBody>,
    asked: &Asked,
    keep: bool,
    out: &mut Vec<u8>,
) -> io::Result<Written> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS && asked.upgrade;
    let (framing, length_kept) = framing(status, asked, &body);
    out.clear();
    // the upstream's own reason phrase, when it was not the usual one, as hyper's server and
    // nginx pass it on
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    let fields = write_head(
        (asked.minor_version, status, reason.map(|r| r.as_bytes())),
        (&parts.headers, body.request_id_beside()),
        Skip {
            length: !length_kept,
            // a 101's `Connection: upgrade` is the upstream's, restored by the service
            connection: !upgraded,
        },
        out,
    );
    // written out: the map is kept for the next head this thread reads
    crate::h1::maps::give(parts.headers);
    let keep = keep && !fields.close && framing != Out::UntilClose && !upgraded;
    // the framing and connection fields are the engine's own, written straight to the head
    match framing {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_number(out, n, 10);
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::UntilClose => {}
    }
    if !upgraded {
        if !keep && asked.minor_version == 1 {
            out.extend_from_slice(b"connection: close\r\n");
        } else if keep && asked.minor_version == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !fields.date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut handle = Handle(wire.clone());
    let sent = write_body(&mut handle, body, framing, out).await?;
    if let Out::Length(n) = framing {
        if sent != n {
            // the body ended short (or long) of its length: the client must not wait for more
            return Err(io::Error::other("response body length mismatch"));
        }
    }
    handle.flush().await?;
    Ok(if upgraded {
        Written::Upgraded
    } else if keep {
        Written::KeepAlive
    } else {
        Written::Close
    })
}

/// Decides the answer's framing, and whether the answer's own `Content-Length` stays: only
/// after `HEAD` and in a `304`, where it tells what a `GET` would have had. The engine writes
/// every other framing field itself (`write_head` leaves the answer's out).
fn framing(status: StatusCode, asked: &Asked, body: &super::body::ProxyBody) -> (Out, bool) {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return (Out::None, false);
    }
    if asked.head || status == StatusCode::NOT_MODIFIED {
        // the length of what a GET would have had, as the upstream said it
        return (Out::None, true);
    }
    let out = match body.size_hint().exact() {
        Some(n) => Out::Length(n),
        None if asked.minor_version == 0 => Out::UntilClose,
        None => Out::Chunked,
    };
    (out, false)
}

/// Which of the answer's fields the head leaves out (`Transfer-Encoding` always).
struct Skip {
    length: bool,
    connection: bool,
}

/// What the head's writing saw among the answer's fields.
#[derive(Default)]
struct Fields {
    /// A `Connection` field left out said `close`.
    close: bool,
    date: bool,
}

/// The status line and fields, not the blank line. An HTTP/1.0 client is answered in HTTP/1.0
/// (as hyper does): it may not know what an HTTP/1.1 answer allows. The reason phrase is
/// `reason` when given (the upstream's, checked by the parser that read it), the status's usual
/// one otherwise. The fields the engine writes itself are skipped in the same pass (no hashed
/// removal from the map for each).
fn write_head(
    (minor_version, status, reason): (u8, StatusCode, Option<&[u8]>),
    (headers, request_id): (&HeaderMap, Option<&RequestId>),
    skip: Skip,
    out: &mut Vec<u8>,
) -> Fields {
    out.extend_from_slice(match minor_version {
        0 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(match reason {
        Some(reason) => reason,
        None => status.canonical_reason().unwrap_or("Unknown").as_bytes(),
    });
    out.extend_from_slice(b"\r\n");
    let mut fields = Fields::default();
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || (skip.length && name == header::CONTENT_LENGTH) {
            continue;
        }
        if skip.connection && name == header::CONNECTION {
            fields.close |= has_token(value.as_bytes(), b"close");
            continue;
        }
        // the id beside the map is the answer's: an upstream's own goes, as the insert it
        // stands for would have replaced it
        if request_id.is_some() && *name == X_REQUEST_ID {
            continue;
        }
        fields.date |= name == header::DATE;
        crate::h1::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(id) = request_id {
        crate::h1::put_field(out, X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
    }
    fields
}

/// Bytes of body copied into the head's write, so a small answer goes in one write.
const COALESCE: usize = 16 * 1024;

/// Frames up to this size are gathered in `out` (several small ones go in one write); larger
/// ones after the first are written from their own bytes.
const SMALL_FRAME: usize = 1024;

/// What the body had when asked.
enum Next<T> {
    /// Nothing yet: write what is gathered while waiting.
    Flush,
    Frame(T),
}

/// Writes `out` (the head) and the body; the bytes of body sent.
async fn write_body(
    handle: &mut Handle,
    body: super::body::ProxyBody,
    framing: Out,
    out: &mut Vec<u8>,
) -> io::Result<u64> {
    if framing == Out::None {
        // dropped before the head goes out: an upstream connection whose answer had no body
        // is back among the idle ones before the client can send its next request (on this
        // connection or another), as with hyper's server
        drop(body);
        handle.write_all(out).await?;
        return Ok(0);
    }
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    loop {
        let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            // nothing in hand yet: what is gathered goes out first
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::Flush),
            Poll::Pending => Poll::Pending,
            Poll::Ready(f) => Poll::Ready(Next::Frame(f)),
        })
        .await;
        let frame = match next {
            Next::Flush => {
                handle.write_all(out).await?;
                out.clear();
                continue;
            }
            Next::Frame(f) => f,
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // trailers: not sent over HTTP/1.1 (as hyper's server, without `TE: trailers`)
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        // a small frame, or the first one (it joins the head's write), is copied into `out`;
        // a larger one is written from where it is (no copy of a large body)
        let copy = data.len() <= SMALL_FRAME || (sent == 0 && data.len() <= COALESCE);
        sent += data.len() as u64;
        if framing == Out::Chunked {
            push_number(out, data.len() as u64, 16);
            out.extend_from_slice(b"\r\n");
        }
        if copy {
            out.extend_from_slice(&data);
            if framing == Out::Chunked {
                out.extend_from_slice(b"\r\n");
            }
        } else {
            handle.write_all(out).await?;
            out.clear();
            handle.write_all(&data).await?;
            if framing == Out::Chunked {
                out.extend_from_slice(b"\r\n");
            }
        }
        if out.len() >= COALESCE {
            handle.write_all(out).await?;
            out.clear();
        }
    }
    if framing == Out::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        handle.write_all(out).await?;
        out.clear();
    }
    Ok(sent)
}

/// The answer to a head the codec refused; the connection closes after it.
async fn refuse(wire: &Shared, err: RequestError, out: &mut Vec<u8>) -> io::Result<()> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let text = format!("{}\n", status.canonical_reason().unwrap_or("Bad Request"));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::DATE, date());
    out.clear();
    let keep_all = Skip {
        length: false,
        connection: false,
    };
    write_head((1, status, None), (&headers, None), keep_all, out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    let mut handle = Handle(wire.clone());
    handle.write_all(out).await?;
    handle.flush().await
}

/// `n` in base 10 or 16 (lower-case), without a formatter's allocation.
fn push_number(out: &mut Vec<u8>, mut n: u64, base: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % base) as usize];
        n /= base;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `Date` header, made at most once a second per thread.
fn date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        match &c.1 {
            Some(v) if c.0 == secs => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                *c = (secs, Some(v.clone()));
                v
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head is read into a small buffer; a body coming faster than it is read is read in
    /// reads that double up to `READ_MAX`.
    #[tokio::test]
    async fn reads_start_small_and_grow_while_they_fill_the_room() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&vec![b'x'; 512 * 1024]).await.unwrap();
        let handle = wire(Box::new(server), b"");
        let mut rooms = Vec::new();
        for _ in 0..6 {
            let read = poll_fn(|cx| lock(&handle.0).poll_fill(cx)).await.unwrap();
            let mut w = lock(&handle.0);
            if rooms.is_empty() {
                assert_eq!(read, READ_CHUNK, "the first read");
            }
            rooms.push(w.room);
            // handed on, as a body's frame is: the buffer has no room left
            drop(w.buf.split());
        }
        assert_eq!(rooms, [8192, 16384, 32768, 65536, 65536, 65536]);
    }

    /// The framing and connection fields are the engine's: the answer's own are left out in
    /// the one pass that writes the rest, a `close` in any `Connection` field is seen, and a
    /// `Date` the answer has is kept (none is added then).
    #[test]
    fn the_head_leaves_out_the_fields_the_engine_writes() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("connection", "keep-alive"),
            ("connection", "x, Close"),
            ("date", "then"),
            ("x-app", "1"),
            ("x-request-id", "the upstream's"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let head_with = |skip: Skip, id: Option<&RequestId>| {
            let mut out = Vec::new();
            let fields = write_head((1, StatusCode::OK, None), (&headers, id), skip, &mut out);
            (String::from_utf8(out).unwrap(), fields.close, fields.date)
        };
        let head = |skip: Skip| head_with(skip, None);
        let (text, close, date) = head(Skip {
            length: true,
            connection: true,
        });
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ndate: then\r\nx-app: 1\r\nx-request-id: the upstream's\r\n"
        );
        assert!(close && date);
        // after HEAD or in a 304 the length stays; a 101 keeps its `Connection: upgrade`
        let (text, close, _) = head(Skip {
            length: false,
            connection: false,
        });
        assert!(
            text.contains("content-length: 5\r\n") && text.contains("connection: x, Close\r\n")
        );
        assert!(!text.contains("transfer-encoding") && !close);
        // an id the service left beside the map follows its fields
        let id = RequestId::from_static("abc");
        let skip = Skip {
            length: true,
            connection: true,
        };
        let (text, _, _) = head_with(skip, Some(&id));
        assert_eq!(text.matches("x-request-id").count(), 1, "{text}");
        assert!(
            text.ends_with("x-app: 1\r\nx-request-id: abc\r\n"),
            "{text}"
        );
    }

    #[test]
    fn numbers_are_written_in_either_base() {
        let written = |n: u64, base: u64| {
            let mut out = Vec::new();
            push_number(&mut out, n, base);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(written(0, 10), "0");
        assert_eq!(written(1234567890, 10), "1234567890");
        assert_eq!(written(u64::MAX, 10), u64::MAX.to_string());
        assert_eq!(written(0, 16), "0");
        assert_eq!(written(0x1f40, 16), "1f40");
        assert_eq!(written(u64::MAX, 16), "ffffffffffffffff");
    }
}
