//! Bodies on the proxy path: the request body counted on its way upstream, and the response body
//! that, when it ends or is dropped, releases its slots and writes the access-log event.

use super::client_body::{ClientBody, ClientBodyError};
use crate::access_log::{AccessLog, Entry};
use crate::request_id::RequestId;
use crate::upstream::conn::{RespBody, RespError, Sender};
use crate::upstream::BackendAddr;
use crate::upstream::{ActiveGuard, Backend};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::conn::InFlight;
use super::pace::{Pace, Stall};
use super::stream::SendClock;
use crate::config::MinRate;
use crate::files::FileBody;
use crate::metrics::RouteMetrics;
use crate::middleware::body_limit::{Budget, TooLarge};
use crate::middleware::encode::body::{Compressed, Encoder};
use crate::middleware::encode::budget::EncoderTicket;

/// What the access log needs to know about a request; shared by its request and response bodies.
#[derive(Debug)]
pub struct RequestLog {
    pub start: Instant,
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub host: Option<HeaderValue>,
    pub request_id: RequestId,
    version: Version,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    access_log: AccessLog,
    /// Whether the request gets a log line (`AccessLog::is_on`, asked once): without one, the
    /// fields only a line shows are not looked up.
    logged: bool,
    bytes_in: AtomicU64,
    /// Signalled once the request body has been sent upstream completely.
    body_sent: Notify,
    /// Why the request body stopped early, if it did (`BodyFault as u8`, 0 for none).
    body_fault: AtomicU8,
    /// The route's metric handles, set once the route (or its absence) is known.
    pub metrics: OnceLock<Arc<RouteMetrics>>,
}

/// Why a request body was cut short on its way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    TooLarge = 1,
    Stalled = 2,
    Malformed = 3,
    /// Slower than the route's `body_min_rate`.
    TooSlow = 4,
}

impl RequestLog {
    pub fn new<B>(
        client: IpAddr,
        req: &Request<B>,
        host: Option<HeaderValue>,
        request_id: RequestId,
        access_log: AccessLog,
    ) -> Self {
        let logged = access_log.is_on();
        let field = |name| match logged {
            true => req.headers().get(name).cloned(),
            false => None,
        };
        RequestLog {
            start: Instant::now(),
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host,
            request_id,
            version: req.version(),
            user_agent: field(header::USER_AGENT),
            referer: field(header::REFERER),
            access_log,
            logged,
            bytes_in: AtomicU64::new(0),
            body_sent: Notify::new(),
            body_fault: AtomicU8::new(0),
            metrics: OnceLock::new(),
        }
    }

    pub fn body_fault(&self) -> Option<BodyFault> {
        match self.body_fault.load(Ordering::Relaxed) {
            1 => Some(BodyFault::TooLarge),
            2 => Some(BodyFault::Stalled),
            3 => Some(BodyFault::Malformed),
            4 => Some(BodyFault::TooSlow),
            _ => None,
        }
    }

    /// The access-log line's facts, with what only the response knows.
    fn entry<'a>(
        &'a self,
        status: u16,
        upstream: Option<&'a BackendAddr>,
        (bytes_in, bytes_out): (u64, u64),
        duration: Duration,
    ) -> Entry<'a> {
        Entry {
            time: SystemTime::now(),
            client: self.client,
            method: &self.method,
            uri: &self.uri,
            version: self.version,
            host: self.host.as_ref(),
            status,
            bytes_in,
            bytes_out,
            duration,
            upstream,
            request_id: &self.request_id,
            user_agent: self.user_agent.as_ref(),
            referer: self.referer.as_ref(),
        }
    }

    /// Resolves once the request body is fully sent (at once for an empty body).
    pub async fn body_sent(&self) {
        self.body_sent.notified().await
    }
}

/// The client's request body on its way upstream: counted, held to the route's size limit, to
/// its body timeout (the longest wait for the next piece) and to its minimum rate (`pace`); the
/// timer exists only while a read is pending. A body that breaks one of them ends with an
/// error, which aborts the upstream request; the fault is noted in the `RequestLog` for the
/// answer to the client.
#[derive(Debug)]
pub struct CountedBody {
    inner: Option<ClientBody>,
    /// Where `inner` is taken from at the first poll, when a retry may need the body back.
    shared: Option<BodySlot>,
    hint: SizeHint,
    log: Arc<RequestLog>,
    budget: Option<Budget>,
    timeout: Duration,
    pace: Option<Pace>,
    /// Running while a read is pending.
    stalled: Option<Stall>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("client body: {0}")]
    Client(ClientBodyError),
    #[error(transparent)]
    TooLarge(TooLarge),
    #[error("client sent no body bytes for {0:?}")]
    Stalled(Duration),
    #[error("client sent its body slower than {0} bytes/s")]
    TooSlow(u32),
}

/// A request body kept aside until an attempt first reads it: while it is still here, the
/// request can go to another server (no byte of it was sent).
pub type BodySlot = Arc<Mutex<Option<ClientBody>>>;

/// The route's limits for a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    pub limit: Option<u64>,
    pub timeout: Duration,
    pub min_rate: Option<MinRate>,
}

impl CountedBody {
    pub fn new(inner: ClientBody, log: Arc<RequestLog>, rules: BodyRules) -> Self {
        let hint = inner.size_hint();
        Self::build(Some(inner), None, hint, log, rules)
    }

    /// An attempt whose body (empty, or waiting in `slot`) may be sent again on failure.
    pub fn retryable(
        slot: Option<BodySlot>,
        hint: SizeHint,
        log: Arc<RequestLog>,
        rules: BodyRules,
    ) -> Self {
        Self::build(None, slot, hint, log, rules)
    }

    fn build(
        inner: Option<ClientBody>,
        shared: Option<BodySlot>,
        hint: SizeHint,
        log: Arc<RequestLog>,
        rules: BodyRules,
    ) -> Self {
        if hint.exact() == Some(0) {
            log.body_sent.notify_one();
        }
        CountedBody {
            inner,
            shared,
            hint,
            log,
            budget: rules.limit.map(Budget::new),
            timeout: rules.timeout,
            pace: rules.min_rate.map(|rate| Pace::new(rate, rules.timeout)),
            stalled: None,
        }
    }

    /// The body to read, taking it from the slot on first use.
    fn source(&mut self) -> Option<&mut ClientBody> {
        if self.inner.is_none() {
            if let Some(slot) = self.shared.take() {
                self.inner = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        }
        self.inner.as_mut()
    }

    /// A read is pending: the client is being waited on, until the body timeout or the
    /// minimum rate's budget runs out, whichever is sooner.
    fn wait(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let stall = match &mut self.stalled {
            Some(stall) => stall,
            None => self
                .stalled
                .insert(Stall::arm(self.timeout, self.pace.as_mut())),
        };
        if stall.poll(cx).is_pending() {
            return Poll::Pending;
        }
        match &self.pace {
            Some(pace) if stall.slow => {
                let rate = pace.rate().bytes_per_sec;
                self.fail(BodyFault::TooSlow, RequestBodyError::TooSlow(rate))
            }
            _ => self.fail(BodyFault::Stalled, RequestBodyError::Stalled(self.timeout)),
        }
    }

    fn fail(
        &self,
        fault: BodyFault,
        err: RequestBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        self.log.body_fault.store(fault as u8, Ordering::Relaxed);
        self.log.body_sent.notify_one();
        Poll::Ready(Some(Err(err)))
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.source() else {
            return Poll::Ready(None);
        };
        let polled = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => return this.wait(cx),
            Poll::Ready(polled) => polled,
        };
        if this.stalled.take().is_some() {
            if let Some(pace) = &mut this.pace {
                pace.waited(tokio::time::Instant::now());
            }
        }
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len();
                    this.log.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
                    if let Some(pace) = &mut this.pace {
                        pace.moved(len);
                    }
                    if let Some(Err(e)) = this.budget.as_mut().map(|b| b.take(len)) {
                        return this.fail(BodyFault::TooLarge, RequestBodyError::TooLarge(e));
                    }
                }
                if this.inner.as_ref().is_some_and(ClientBody::is_end_stream) {
                    this.log.body_sent.notify_one();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => this.fail(BodyFault::Malformed, RequestBodyError::Client(e)),
            None => {
                this.log.body_sent.notify_one();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.shared.is_none() || self.hint.exact() == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => self.hint,
        }
    }
}

/// Where a response body's bytes come from.
#[derive(Debug)]
enum Source {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
    /// A `files` route's answer, read off the runtime's threads (`crate::files`).
    File(FileBody),
}

#[derive(Debug)]
enum Inner {
    Plain(Source),
    /// Boxed: the encoder is large, and only routes with `encode` pay for it. The ticket is
    /// the encoder's place under `max_encoders`, given back with the body.
    Compressed {
        body: Box<Compressed<Source>>,
        _ticket: EncoderTicket,
    },
}

/// An upstream response body with a limit on the wait between two frames (nginx's
/// `proxy_read_timeout`); the timer exists only while a read is pending. It holds the connection
/// it comes on: back to the backend's idle ones once the body has ended (compressed or not). A
/// body dropped before its end (the client went away, or an HTTP/2 stream was reset) leaves
/// the connection mid-response: with at most `DRAIN_MAX` known bytes left, they are read off
/// in the background (within `DRAIN_WITHIN`) and the connection is reused; else it is closed.
#[derive(Debug)]
struct UpstreamBody {
    /// `None` once handed to a drain.
    body: Option<RespBody>,
    read_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    /// A gRPC call's deadline: when it passes, the upstream stream is reset and the client's
    /// call ends with `DEADLINE_EXCEEDED` trailers.
    deadline: Option<Pin<Box<Sleep>>>,
    /// `None` when the connection cannot be reused (the response closes it, or upgraded it).
    conn: Option<(Sender, Arc<Backend>)>,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

/// The limits on reading an upstream response body.
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    /// The longest wait for the next frame (the route's `upstream_response`).
    pub timeout: Duration,
    /// A gRPC call's deadline (`grpc-timeout`), if it has one.
    pub deadline: Option<tokio::time::Instant>,
}

/// The most a dropped response may still have to come for its connection to be kept: about
/// what one read takes off a socket, so a response cut short near its end costs no reconnect.
const DRAIN_MAX: u64 = 64 << 10;
/// How long reading that rest may take; a healthy upstream has usually sent it already.
const DRAIN_WITHIN: Duration = Duration::from_secs(1);

impl UpstreamBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Polled {
        if let Some(deadline) = &mut self.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return self.deadline_passed();
            }
        }
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
            self.stalled = None;
            match &frame {
                Some(Err(_)) => self.conn = None,
                // the last frame: the connection can take the next request at once
                None => self.give_back(),
                Some(Ok(_)) if body.is_end_stream() => self.give_back(),
                Some(Ok(_)) => {}
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::Upstream)));
        }
        let timeout = self.read_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::ReadTimeout(timeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Resets the upstream stream (body and connection dropped: an HTTP/2 stream is reset, an
    /// HTTP/1.1 connection closed) and ends the call with `DEADLINE_EXCEEDED`.
    fn deadline_passed(&mut self) -> Polled {
        self.deadline = None;
        self.conn = None;
        match self.body.take() {
            Some(_) => Poll::Ready(Some(Ok(Frame::trailers(super::grpc::deadline_trailers())))),
            None => Poll::Ready(None),
        }
    }

    fn give_back(&mut self) {
        if let Some((conn, backend)) = self.conn.take() {
            backend.reuse(conn, self.body.as_mut());
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(RespBody::is_end_stream)
    }
}

impl Drop for UpstreamBody {
    /// A body with nothing to read (HEAD, 204, 304, `Content-Length: 0`) may never be polled;
    /// one dropped before its end may leave a short rest to read off (see `DRAIN_MAX`).
    fn drop(&mut self) {
        if self.conn.is_none() {
            return;
        }
        // an HTTP/2 stream dropped early is reset (the backend sees the cancellation); the
        // connection's other streams go on
        if self.is_end_stream() || self.conn.as_ref().is_some_and(|(c, _)| c.is_multiplexed()) {
            return self.give_back();
        }
        let short = self.body.as_ref().and_then(|b| b.size_hint().exact());
        let runtime = tokio::runtime::Handle::try_current();
        if let (Some(..=DRAIN_MAX), Ok(runtime), Some(body), Some(conn)) =
            (short, runtime, self.body.take(), self.conn.take())
        {
            runtime.spawn(drain(body, conn));
        }
    }
}

/// An upstream answer nobody will read (one that carried `X-Accel-Redirect`): its connection
/// goes back at once if the body is empty, after reading off a short rest (`DRAIN_MAX`), or is
/// closed, exactly as for a body the client stopped reading.
pub fn discard(body: RespBody, conn: Option<Sender>, active: &ActiveGuard) {
    drop(UpstreamBody {
        body: Some(body),
        read_timeout: DRAIN_WITHIN,
        stalled: None,
        deadline: None,
        conn: conn.map(|conn| (conn, active.backend().clone())),
    });
}

/// Reads off the rest of a response nobody wants, then gives its connection back.
async fn drain(mut body: RespBody, (conn, backend): (Sender, Arc<Backend>)) {
    use http_body_util::BodyExt;
    let rest = async {
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok::<_, RespError>(())
    };
    if let Ok(Ok(())) = tokio::time::timeout(DRAIN_WITHIN, rest).await {
        backend.reuse(conn, Some(&mut body));
    }
}

/// Why a response body stopped early; the client connection is then cut (the head is out).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body: {0}")]
    Upstream(RespError),
    #[error("upstream sent nothing for {0:?} in the middle of a response body")]
    ReadTimeout(Duration),
    #[error("compressing the response body: {0}")]
    Encode(#[from] std::io::Error),
    #[error("reading the file served: {0}")]
    File(std::io::Error),
}

/// The response body sent to the client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    done: Completion,
    /// On HTTP/2, the stream's send clock (see `stream`): told when a frame is handed over.
    clock: Option<Arc<SendClock>>,
}

/// Everything held until the response is finished.
#[derive(Debug)]
pub struct Completion {
    pub log: Arc<RequestLog>,
    pub status: u16,
    /// The answer's `X-Request-Id` is left for the native engine to write (`log.request_id`),
    /// not in its map: see `ProxyBody::leave_request_id`.
    id_beside: bool,
    bytes_out: u64,
    _active: Option<ActiveGuard>,
    _in_flight: InFlight,
}

impl Completion {
    pub fn new(
        log: Arc<RequestLog>,
        status: u16,
        active: Option<ActiveGuard>,
        in_flight: InFlight,
    ) -> Self {
        Completion {
            log,
            status,
            id_beside: false,
            bytes_out: 0,
            _active: active,
            _in_flight: in_flight,
        }
    }
}

impl Drop for Completion {
    /// The clock is read once, and the wall clock only for a log line.
    fn drop(&mut self) {
        let log = &self.log;
        let (metrics, logged) = (log.metrics.get(), log.logged);
        if metrics.is_none() && !logged {
            return;
        }
        let took = log.start.elapsed();
        let bytes_in = log.bytes_in.load(Ordering::Relaxed);
        if let Some(metrics) = metrics {
            metrics.record(&log.method, self.status, took, bytes_in, self.bytes_out);
        }
        if logged {
            let upstream = self._active.as_ref().map(|a| &a.backend().addr);
            let entry = log.entry(self.status, upstream, (bytes_in, self.bytes_out), took);
            log.access_log.record(&entry);
        }
    }
}

impl ProxyBody {
    /// `conn` is the connection `body` comes on, `None` when it must not be reused.
    pub fn upstream(body: RespBody, conn: Option<Sender>, reads: Reads, done: Completion) -> Self {
        let backend = done._active.as_ref().map(|a| a.backend().clone());
        let body = UpstreamBody {
            body: Some(body),
            read_timeout: reads.timeout,
            stalled: None,
            deadline: reads
                .deadline
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            conn: conn.zip(backend),
        };
        ProxyBody {
            inner: Inner::Plain(Source::Upstream(body)),
            done,
            clock: SendClock::current(),
        }
    }

    pub fn full(bytes: Bytes, done: Completion) -> Self {
        ProxyBody {
            inner: Inner::Plain(Source::Full(Some(bytes).filter(|b| !b.is_empty()))),
            done,
            clock: SendClock::current(),
        }
    }

    /// A file's bytes (or none, for a `files` answer without a body).
    pub fn file(body: FileBody, done: Completion) -> Self {
        ProxyBody {
            inner: Inner::Plain(Source::File(body)),
            done,
            clock: SendClock::current(),
        }
    }

    /// Leaves the answer's `X-Request-Id` (its log's id) to the native engine, which writes it
    /// after the map's fields: one map insert less (~250 instructions) where nothing reads the
    /// map for it after the service.
    pub fn leave_request_id(&mut self) {
        self.done.id_beside = true;
    }

    /// The `X-Request-Id` to write beside the answer's map (`leave_request_id`).
    pub fn request_id_beside(&self) -> Option<&RequestId> {
        self.done.id_beside.then_some(&self.done.log.request_id)
    }

    /// The request's id (its log's).
    pub fn request_id(&self) -> &RequestId {
        &self.done.log.request_id
    }

    /// The same body compressed by `encoder` (the head must say so); the bytes counted for the
    /// access log and metrics are then the compressed ones, as sent.
    pub fn compress(self, encoder: Encoder, ticket: EncoderTicket) -> Self {
        let inner = match self.inner {
            Inner::Plain(source) => {
                let body = Box::new(Compressed::new(source, encoder));
                Inner::Compressed {
                    body,
                    _ticket: ticket,
                }
            }
            compressed @ Inner::Compressed { .. } => compressed,
        };
        ProxyBody {
            inner,
            done: self.done,
            clock: self.clock,
        }
    }
}

impl Body for Source {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match &mut *self {
            Source::Upstream(body) => body.poll_frame(cx),
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::File(file) => Pin::new(file).poll_frame(cx).map_err(BodyError::File),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Upstream(up) => up.is_end_stream(),
            Source::Full(bytes) => bytes.is_none(),
            Source::File(file) => file.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Upstream(up) => up
                .body
                .as_ref()
                .map_or_else(SizeHint::default, RespBody::size_hint),
            Source::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::File(file) => file.size_hint(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Plain(source) => Pin::new(source).poll_frame(cx),
            Inner::Compressed { body, .. } => Pin::new(&mut **body).poll_frame(cx),
        };
        let handed = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.data_ref().map_or(0, Bytes::len),
            _ => 0,
        };
        this.done.bytes_out += handed as u64;
        if let Some(clock) = &this.clock {
            // hyper is back for more: the previous frame went out (or into h2's bounded queue)
            match handed {
                0 => clock.progressing(),
                _ => clock.handed(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain(source) => source.is_end_stream(),
            Inner::Compressed { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Plain(source) => source.size_hint(),
            Inner::Compressed { body, .. } => body.size_hint(),
        }
    }
}
