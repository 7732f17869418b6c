//! hyper serving glue: one client connection, HTTP/1.1 or HTTP/2 (prior knowledge), with its
//! deadlines, its part in graceful shutdown, and idle HTTP/1.1 connections parked outside hyper.

mod body;
pub mod canonical;
mod conn;
pub mod hygiene;
mod response;
mod rewind;
mod service;

pub use body::CountedBody;
pub use response::ProxyError;

use crate::acme::Challenges;
use crate::config::ServerLimits;
use crate::listener::conn_limit::ConnLimiter;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::middleware::Rejections;
use crate::state::Shared;
use bytes::Bytes;
use conn::{ConnState, Expiry, Watchdog, WatchedIo};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rewind::Rewind;
use service::ProxyService;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// The HTTP/1.1 and HTTP/2 servers a connection is served with, as the config sets them.
#[derive(Clone)]
pub struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// hyper's own limits are the outer fence (a head that cannot fit its buffer gets 431 from
/// hyper); the exact `max_header_size` and `max_uri` checks are the service's.
pub fn builder(limits: &ServerLimits) -> Protocols {
    let mut h1 = http1::Builder::new();
    // hyper refuses a read buffer under 8 KiB
    let head_buf = (limits.max_header_size + limits.max_uri + 4096).max(8192);
    h1.timer(TokioTimer::new())
        // our own deadlines in `conn` replace this; see there why
        .header_read_timeout(None)
        .max_buf_size(head_buf)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        // HPACK-decoded size of one header block, CONTINUATION frames included
        .max_header_list_size(u32::try_from(head_buf).unwrap_or(u32::MAX))
        // rapid reset (CVE-2023-44487): streams a client opens and resets before we answer
        .max_pending_accept_reset_streams(Some(limits.http2_max_streams.div_ceil(4) as usize))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    Protocols { h1, h2 }
}

/// Everything a connection needs from its listener.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub tracker: TaskTracker,
    /// The bound HTTPS port, for redirects from plain HTTP; 0 while there is no HTTPS listener.
    pub https_port: AtomicU16,
    /// ACME challenge answers (HTTP-01 here, TLS-ALPN-01 in the listener).
    pub challenges: Arc<Challenges>,
    pub conns: Arc<ConnLimiter>,
    pub rejections: Arc<Rejections>,
    pub metrics: Arc<Metrics>,
    /// Connection gauges and counters of the plain and the TLS listener.
    pub listeners: [ListenerMetrics; 2],
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
}

/// One client connection: HTTP/2 if it opens with the HTTP/2 preface, else HTTP/1.1, which is
/// parked between requests once idle (see `Expiry::Park`) and served again when bytes arrive.
pub async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    cx: Arc<ConnContext>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (http, grace, state) = {
        let snapshot = cx.shared.load();
        let server = &snapshot.config.server;
        let t = &server.timeouts;
        let state = ConnState::new(t.header_read, t.idle, t.send);
        (snapshot.http.clone(), server.shutdown_grace, state)
    };
    let mut io = WatchedIo::new(stream, state.clone());
    let svc = ProxyService {
        cx: cx.clone(),
        peer,
        peer_ip: crate::upstream::forward::ip_header(peer.ip().to_canonical()),
        conn: state.clone(),
        transport,
    };
    let svc = hyper::service::service_fn(move |req| svc.clone().call(req));
    let mut guard = Guard {
        watchdog: Watchdog::new(state.clone()),
        shutdown: &mut shutdown,
        grace,
        peer,
        state: &state,
    };
    let sniffed = tokio::select! {
        sniffed = read_preface(&mut io) => sniffed,
        _ = &mut guard.watchdog => return,
        _ = guard.shutdown.changed() => return,
    };
    let Ok((is_h2, mut pre)) = sniffed else {
        return;
    };
    if is_h2 {
        let io = TokioIo::new(Rewind::new(pre, io));
        let mut conn = Box::pin(http.h2.serve_connection(io, svc));
        guard.drive(&mut conn).await;
        return;
    }
    loop {
        let io_in = TokioIo::new(Rewind::new(pre, io));
        let mut conn = Box::new(http.h1.serve_connection(io_in, svc.clone()).with_upgrades());
        if guard.drive(&mut *conn).await != End::Parked {
            return;
        }
        // upgraded connections are the tunnel's; `Parked` is only reached without one
        let Some(parts) = conn.into_parts() else {
            return;
        };
        state.set_parking(false);
        tracing::trace!(%peer, "idle connection parked");
        let (unread, watched) = parts.io.into_inner().into_parts();
        io = watched;
        pre = join(unread, parts.read_buf);
        if pre.is_empty() {
            match guard.wait_for_bytes(&mut io).await {
                Some(bytes) => pre = bytes,
                None => {
                    let _ = tokio::time::timeout(grace, io.shutdown()).await;
                    return;
                }
            }
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
struct Guard<'a> {
    watchdog: Watchdog,
    shutdown: &'a mut watch::Receiver<bool>,
    grace: Duration,
    peer: SocketAddr,
    state: &'a ConnState,
}

impl Guard<'_> {
    /// Serves `conn` until it ends: closed (by either side, a deadline or shutdown), or parked.
    async fn drive<C: Graceful>(&mut self, conn: &mut C) -> End {
        let peer = self.peer;
        let mut drain_deadline = None;
        loop {
            tokio::select! {
                // the connection first: the watchdog must see the deadlines this very poll set
                biased;
                result = &mut *conn => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    return if self.state.is_parking() { End::Parked } else { End::Closed };
                }
                expiry = &mut self.watchdog, if drain_deadline.is_none() && !self.state.is_parking() => {
                    match expiry {
                        Expiry::HeaderRead => {
                            tracing::debug!(%peer, "closing connection: request head not received in time");
                            return End::Closed;
                        }
                        Expiry::Park => {
                            self.state.set_parking(true);
                            conn.graceful();
                        }
                        Expiry::Idle => {
                            conn.graceful();
                            drain_deadline = Some(tokio::time::Instant::now() + self.grace);
                        }
                    }
                }
                _ = self.shutdown.changed(), if drain_deadline.is_none() => {
                    self.state.set_parking(false);
                    conn.graceful();
                    drain_deadline = Some(tokio::time::Instant::now() + self.grace);
                }
                _ = sleep_until(drain_deadline) => return End::Closed,
            }
        }
    }

    /// A parked connection's wait for its next request, holding no buffer: the bytes that came,
    /// or `None` when the client closed, the idle period ran out or the server shuts down.
    async fn wait_for_bytes<S: AsyncRead + Unpin>(&mut self, io: &mut S) -> Option<Bytes> {
        let read = std::future::poll_fn(|cx| {
            // on the stack while polled, not kept in the connection's task while it waits
            let mut buf = [0u8; 4096];
            let mut filled = ReadBuf::new(&mut buf);
            match Pin::new(&mut *io).poll_read(cx, &mut filled) {
                Poll::Ready(Ok(())) if !filled.filled().is_empty() => {
                    Poll::Ready(Some(Bytes::copy_from_slice(filled.filled())))
                }
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        });
        tokio::select! {
            bytes = read => bytes,
            _ = tokio::time::sleep(self.state.idle_left()) => None,
            _ = self.shutdown.changed() => None,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
