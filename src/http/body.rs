//! Bodies on the proxy path: the request body counted on its way upstream, and the response body
//! that, when it ends or is dropped, releases its slots and writes the access-log event.

use crate::upstream::ActiveGuard;
use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::conn::InFlight;

/// What the access log needs to know about a request; shared by its request and response bodies.
#[derive(Debug)]
pub struct RequestLog {
    pub start: Instant,
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub host: Option<HeaderValue>,
    pub request_id: HeaderValue,
    bytes_in: AtomicU64,
    /// The client's request body failed (malformed chunk, cut short): its fault, not the upstream's.
    body_failed: AtomicBool,
    /// Signalled once the request body has been sent upstream completely.
    body_sent: Notify,
}

impl RequestLog {
    pub fn new(
        client: IpAddr,
        method: Method,
        uri: Uri,
        host: Option<HeaderValue>,
        request_id: HeaderValue,
    ) -> Self {
        RequestLog {
            start: Instant::now(),
            client,
            method,
            uri,
            host,
            request_id,
            bytes_in: AtomicU64::new(0),
            body_failed: AtomicBool::new(false),
            body_sent: Notify::new(),
        }
    }

    /// Resolves once the request body is fully sent (at once for an empty body).
    pub async fn body_sent(&self) {
        self.body_sent.notified().await
    }

    pub fn body_failed(&self) -> bool {
        self.body_failed.load(Ordering::Relaxed)
    }
}

/// The client's request body on its way upstream, counted.
#[derive(Debug)]
pub struct CountedBody {
    inner: Incoming,
    log: Arc<RequestLog>,
}

impl CountedBody {
    pub fn new(inner: Incoming, log: Arc<RequestLog>) -> Self {
        if inner.is_end_stream() {
            log.body_sent.notify_one();
        }
        CountedBody { inner, log }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    self.log.bytes_in.fetch_add(len, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.log.body_sent.notify_one();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.log.body_failed.store(true, Ordering::Relaxed);
                self.log.body_sent.notify_one();
            }
            Poll::Ready(None) => self.log.body_sent.notify_one(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug)]
enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// An upstream response body with a limit on the wait between two frames (nginx's
/// `proxy_read_timeout`); the timer exists only while a read is pending.
#[derive(Debug)]
struct UpstreamBody {
    body: Incoming,
    read_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

impl UpstreamBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Polled {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            self.stalled = None;
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
}

/// Why a response body stopped early; the client connection is then cut (the head is out).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body: {0}")]
    Upstream(hyper::Error),
    #[error("upstream sent nothing for {0:?} in the middle of a response body")]
    ReadTimeout(Duration),
}

/// The response body sent to the client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    done: Completion,
}

/// Everything held until the response is finished.
#[derive(Debug)]
pub struct Completion {
    pub log: Arc<RequestLog>,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
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
            upstream: active.as_ref().map(|a| a.backend().addr),
            bytes_out: 0,
            _active: active,
            _in_flight: in_flight,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let log = &self.log;
        tracing::info!(
            target: "gatehouse::access",
            client = %log.client,
            method = %log.method,
            host = log.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            path = log.uri.path(),
            status = self.status,
            bytes_in = log.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            duration_ms = log.start.elapsed().as_secs_f64() * 1000.0,
            upstream = self.upstream.map(tracing::field::display),
            request_id = log.request_id.to_str().unwrap_or("-"),
            "request"
        );
    }
}

impl ProxyBody {
    pub fn upstream(body: Incoming, read_timeout: Duration, done: Completion) -> Self {
        let body = UpstreamBody {
            body,
            read_timeout,
            stalled: None,
        };
        ProxyBody {
            inner: Inner::Upstream(body),
            done,
        }
    }

    pub fn full(bytes: Bytes, done: Completion) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(bytes).filter(|b| !b.is_empty())),
            done,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(body) => body.poll_frame(cx),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.done.bytes_out += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(up) => up.body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(up) => up.body.size_hint(),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
