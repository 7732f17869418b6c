//! Per-connection timing: the header-read deadline (slowloris) and the idle keep-alive deadline.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, which would make `idle` meaningless, so the deadlines live here: the IO wrapper notices
//! the first byte of a new request head, the service marks requests in flight, and one watchdog
//! future per connection sleeps until the current deadline.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

const IDLE: u8 = 0;
const READING_HEAD: u8 = 1;
const ACTIVE: u8 = 2;
const NO_DEADLINE: u64 = u64::MAX;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not arrive in time: close at once.
    HeaderRead,
    /// Nothing in flight for the idle period: close gracefully.
    Idle,
}

#[derive(Debug)]
pub struct ConnState {
    in_flight: AtomicUsize,
    phase: AtomicU8,
    deadline_ms: AtomicU64,
    seen_first_read: AtomicBool,
    is_h2: AtomicBool,
    header_read_ms: u64,
    idle_ms: u64,
    /// Wakes the watchdog when a deadline is set, so it never sleeps past one.
    deadline_set: Notify,
}

impl ConnState {
    pub fn new(header_read: Duration, idle: Duration) -> Arc<ConnState> {
        let header_read_ms = header_read.as_millis() as u64;
        Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            phase: AtomicU8::new(READING_HEAD),
            deadline_ms: AtomicU64::new(now_ms() + header_read_ms),
            seen_first_read: AtomicBool::new(false),
            is_h2: AtomicBool::new(false),
            header_read_ms,
            idle_ms: idle.as_millis() as u64,
            deadline_set: Notify::new(),
        })
    }

    fn on_read(&self, data: &[u8]) {
        if !self.seen_first_read.swap(true, Ordering::Relaxed) && data.starts_with(H2_PREFACE) {
            // h2 multiplexes: between streams the connection is idle, never "reading a head"
            self.is_h2.store(true, Ordering::Relaxed);
            self.enter(IDLE, self.idle_ms);
            return;
        }
        if self.phase.load(Ordering::Relaxed) == IDLE && !self.is_h2.load(Ordering::Relaxed) {
            self.enter(READING_HEAD, self.header_read_ms);
        }
    }

    fn enter(&self, phase: u8, timeout_ms: u64) {
        self.phase.store(phase, Ordering::Relaxed);
        self.deadline_ms
            .store(now_ms() + timeout_ms, Ordering::Relaxed);
        self.deadline_set.notify_one();
    }

    /// Marks a request in flight until the returned guard drops (when its response body ends).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.phase.store(ACTIVE, Ordering::Relaxed);
        self.deadline_ms.store(NO_DEADLINE, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves when the connection has outlived its current deadline. While a request is in
    /// flight there is no deadline and no timer: it waits for the next `enter`.
    pub async fn expired(&self) -> Expiry {
        loop {
            let changed = self.deadline_set.notified();
            let deadline = self.deadline_ms.load(Ordering::Relaxed);
            let now = now_ms();
            if deadline == NO_DEADLINE || self.in_flight.load(Ordering::Relaxed) > 0 {
                changed.await;
            } else if now < deadline {
                let wait = Duration::from_millis(deadline - now);
                let _ = tokio::time::timeout(wait, changed).await;
            } else if self.phase.load(Ordering::Relaxed) == READING_HEAD {
                return Expiry::HeaderRead;
            } else {
                return Expiry::Idle;
            }
        }
    }
}

/// A request in flight on a connection; dropping it may start the idle clock.
#[must_use]
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.enter(IDLE, self.0.idle_ms);
        }
    }
}

/// The client socket, reporting reads to its `ConnState`.
pub struct WatchedIo<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        WatchedIo { inner, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_after_last_response() {
        let state = ConnState::new(Duration::from_secs(10), Duration::from_secs(60));
        let guard = state.begin();
        drop(guard);
        assert_eq!(state.expired().await, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_expires_as_header_read() {
        let state = ConnState::new(Duration::from_secs(10), Duration::from_secs(60));
        state.on_read(b"GET / HT");
        assert_eq!(state.expired().await, Expiry::HeaderRead);
    }

    #[test]
    fn h2_preface_never_reads_head() {
        let state = ConnState::new(Duration::from_secs(10), Duration::from_secs(60));
        state.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        state.on_read(b"frames");
        assert_eq!(state.phase.load(Ordering::Relaxed), IDLE);
    }
}
