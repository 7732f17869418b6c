//! hyper serving glue: one client connection, HTTP/1.1 or HTTP/2 (prior knowledge), with its
//! deadlines and its part in graceful shutdown.

mod body;
mod conn;
pub mod hygiene;
mod response;
mod service;

pub use body::CountedBody;
pub use response::ProxyError;

use crate::acme::Challenges;
use crate::config::ServerLimits;
use crate::listener::conn_limit::ConnLimiter;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::middleware::Rejections;
use crate::state::Shared;
use conn::{ConnState, Expiry, Watchdog, WatchedIo};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use service::ProxyService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// hyper's own limits are the outer fence (a head that cannot fit its buffer gets 431 from
/// hyper); the exact `max_header_size` and `max_uri` checks are the service's.
pub fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper refuses a read buffer under 8 KiB
    let head_buf = (limits.max_header_size + limits.max_uri + 4096).max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        // our own deadlines in `conn` replace this; see there why
        .header_read_timeout(None)
        .max_buf_size(head_buf)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        // HPACK-decoded size of one header block, CONTINUATION frames included
        .max_header_list_size(u32::try_from(head_buf).unwrap_or(u32::MAX))
        // rapid reset (CVE-2023-44487): streams a client opens and resets before we answer
        .max_pending_accept_reset_streams(Some(limits.http2_max_streams.div_ceil(4) as usize))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
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

pub async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    cx: Arc<ConnContext>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (builder, grace, state) = {
        let snapshot = cx.shared.load();
        let server = &snapshot.config.server;
        let t = &server.timeouts;
        let state = ConnState::new(t.header_read, t.idle, t.send);
        (snapshot.http.clone(), server.shutdown_grace, state)
    };
    let io = TokioIo::new(WatchedIo::new(stream, state.clone()));
    let svc = ProxyService {
        cx: cx.clone(),
        peer,
        peer_ip: crate::upstream::forward::ip_header(peer.ip().to_canonical()),
        conn: state.clone(),
        transport,
    };
    let svc = hyper::service::service_fn(move |req| svc.clone().call(req));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut watchdog = Watchdog::new(state);
    let mut drain_deadline = None;
    loop {
        tokio::select! {
            // the connection first: the watchdog must see the deadlines this very poll set
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                break;
            }
            expiry = &mut watchdog, if drain_deadline.is_none() => {
                if expiry == Expiry::HeaderRead {
                    tracing::debug!(%peer, "closing connection: request head not received in time");
                    break;
                }
                conn.as_mut().graceful_shutdown();
                drain_deadline = Some(tokio::time::Instant::now() + grace);
            }
            _ = shutdown.changed(), if drain_deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                drain_deadline = Some(tokio::time::Instant::now() + grace);
            }
            _ = sleep_until(drain_deadline) => break,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
