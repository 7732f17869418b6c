//! HTTP/2 connections to one backend, shared by many requests at once: each carries up to
//! `max_streams` requests (the upstream's `max_streams`), a request takes the first open one with
//! room, and another is opened when all are full. A `Stream` is one request's place on a
//! connection, given back when its response body ends or is dropped (hyper then resets the
//! stream: the backend sees the cancellation). A connection the backend closed or sent GOAWAY on
//! is dropped when next met; one without streams for 90 to 100 s is closed by the sweeper.

use crate::http::CountedBody;
use hyper::client::conn::http2;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A request body as HTTP/2 connections carry it: the same body under a type of its own. hyper's
/// client plumbing (its request channel) is generic over the body; with one body type for both
/// protocols it is shared by the HTTP/1.1 and HTTP/2 connections and no longer inlined into the
/// HTTP/1.1 one (~320 instructions a request on HTTP/1.1 upstreams, by callgrind).
pub struct H2Body(pub CountedBody);

impl http_body::Body for H2Body {
    type Data = <CountedBody as http_body::Body>::Data;
    type Error = <CountedBody as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// One HTTP/2 connection and the requests on it now.
pub struct H2Conn {
    sender: http2::SendRequest<H2Body>,
    streams: AtomicU32,
    /// The sweep count when a stream last went on it (see `H2Conns::sweep`).
    used: AtomicU32,
}

impl H2Conn {
    pub fn new(sender: http2::SendRequest<H2Body>) -> Arc<H2Conn> {
        Arc::new(H2Conn {
            sender,
            streams: AtomicU32::new(0),
            used: AtomicU32::new(0),
        })
    }

    /// A place for one request; `None` when the connection is full or closed.
    fn claim(self: &Arc<Self>, max: u32) -> Option<Stream> {
        if self.sender.is_closed() {
            return None;
        }
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Stream { conn: self.clone() })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// One request's place on an HTTP/2 connection; dropped, it frees the place.
pub struct Stream {
    conn: Arc<H2Conn>,
}

impl Stream {
    /// A handle to send the request with (a cheap clone of the connection's).
    pub fn sender(&self) -> http2::SendRequest<H2Body> {
        self.conn.sender.clone()
    }

    pub fn conn(&self) -> &Arc<H2Conn> {
        &self.conn
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

/// What an `auto` upstream's server chose in ALPN, learned on the first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    Unknown = 0,
    Http1 = 1,
    Http2 = 2,
}

/// A backend's HTTP/2 connections.
#[derive(Default)]
pub struct H2Conns {
    conns: Mutex<Vec<Arc<H2Conn>>>,
    /// One connection is opened at a time: requests arriving together wait for it and share
    /// it, rather than each opening its own.
    pub dialing: tokio::sync::Mutex<()>,
    sweeps: AtomicU32,
    learned: AtomicU8,
}

impl std::fmt::Debug for H2Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "H2Conns({})", self.count())
    }
}

impl H2Conns {
    fn conns(&self) -> std::sync::MutexGuard<'_, Vec<Arc<H2Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place on the first open connection with room; closed connections met are dropped.
    pub fn take(&self, max: u32) -> Option<Stream> {
        let sweeps = self.sweeps.load(Ordering::Relaxed);
        let mut conns = self.conns();
        conns.retain(|c| !c.is_closed());
        let stream = conns.iter().find_map(|c| c.claim(max))?;
        stream.conn.used.store(sweeps, Ordering::Relaxed);
        Some(stream)
    }

    /// A new connection, with the place on it for the request that opened it.
    pub fn add(&self, conn: Arc<H2Conn>) -> Stream {
        conn.streams.fetch_add(1, Ordering::AcqRel);
        let sweeps = self.sweeps.load(Ordering::Relaxed);
        conn.used.store(sweeps, Ordering::Relaxed);
        self.conns().push(conn.clone());
        Stream { conn }
    }

    /// Forgets a connection that failed a request (the next request opens a new one).
    pub fn remove(&self, conn: &Arc<H2Conn>) {
        self.conns().retain(|c| !Arc::ptr_eq(c, conn));
    }

    /// Drops closed connections and those without a stream for longer than `idle_sweeps`
    /// sweeps (the last handle gone, hyper closes the connection).
    pub fn sweep(&self, idle_sweeps: u32) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let stale: Vec<Arc<H2Conn>> = {
            let mut conns = self.conns();
            let (keep, stale) = std::mem::take(&mut *conns).into_iter().partition(|c| {
                let busy = c.streams.load(Ordering::Acquire) > 0;
                let recent = now.wrapping_sub(c.used.load(Ordering::Relaxed)) <= idle_sweeps;
                !c.is_closed() && (busy || recent)
            });
            *conns = keep;
            stale
        };
        // closed outside the lock
        drop(stale);
    }

    pub fn count(&self) -> usize {
        self.conns().len()
    }

    pub fn learned(&self) -> Learned {
        match self.learned.load(Ordering::Relaxed) {
            1 => Learned::Http1,
            2 => Learned::Http2,
            _ => Learned::Unknown,
        }
    }

    pub fn learn(&self, learned: Learned) {
        self.learned.store(learned as u8, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// A real HTTP/2 client connection over an in-memory pipe, its server end answering
    /// nothing; dropping the server end closes it.
    async fn conn() -> (Arc<H2Conn>, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        (H2Conn::new(sender), served)
    }

    #[tokio::test]
    async fn streams_share_a_connection_up_to_the_limit() {
        let conns = H2Conns::default();
        assert!(conns.take(2).is_none());
        let (c, _server) = conn().await;
        let first = conns.add(c);
        let second = conns.take(2).unwrap();
        assert!(Arc::ptr_eq(first.conn(), second.conn()));
        assert!(conns.take(2).is_none(), "full at two streams");
        drop(first);
        let third = conns.take(2).unwrap();
        assert!(Arc::ptr_eq(third.conn(), second.conn()));
    }

    #[tokio::test]
    async fn closed_and_idle_connections_are_dropped() {
        let conns = H2Conns::default();
        let (c, server) = conn().await;
        drop(conns.add(c));
        conns.sweep(1);
        assert_eq!(conns.count(), 1, "idle for one sweep");
        conns.sweep(1);
        assert_eq!(conns.count(), 0);

        let (c, server_b) = conn().await;
        drop(conns.add(c.clone()));
        server_b.abort();
        drop(server);
        for _ in 0..1000 {
            if c.is_closed() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(conns.take(10).is_none());
        assert_eq!(conns.count(), 0);
    }
}
