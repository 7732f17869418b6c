//! Per-connection timing: the header-read deadline (slowloris), the idle keep-alive deadline,
//! and the send timeout and minimum send rate (`send_min_rate`, see `pace`) on writes.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, which would make `idle` meaningless, so the deadlines live here: the IO wrapper notices
//! the first byte of a new request head, the service marks requests in flight, and one
//! `Watchdog` future per connection sleeps until the current deadline.
//!
//! The watchdog is polled in the connection's own task right after the connection itself, so it
//! sees every deadline an HTTP/1.1 request sets without any wake-up of its own (a wake per request
//! cost ~1.9 us of CPU, 10% of a proxied request). HTTP/2 streams run in tasks of their own: for
//! them a deadline change wakes the watchdog explicitly.

use super::pace::{Pace, Stall};
use super::tunnel;
use crate::config::MinRate;
use atomic_waker::AtomicWaker;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const IDLE: u8 = 0;
const READING_HEAD: u8 = 1;
const ACTIVE: u8 = 2;
const NO_DEADLINE: u64 = u64::MAX;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// No route has set a send rate since the connection was last idle: the default applies.
const UNSET_RATE: u64 = u64::MAX;

/// A send rate in one atomic: bytes per second above, the window's milliseconds below (a
/// window is at least a second and at most an hour, so 0 is free for "the send timeout's");
/// 0 is no rate. Lower is more lenient in rate, so the lowest of several is the one that cuts
/// least.
fn pack_rate(rate: Option<MinRate>) -> u64 {
    rate.map_or(0, |r| {
        let window_ms = r.window.map_or(0, |w| w.as_millis());
        let window_ms = u64::try_from(window_ms).unwrap_or(u64::MAX);
        u64::from(r.bytes_per_sec) << 32 | window_ms.min(u64::from(u32::MAX))
    })
}

fn unpack_rate(packed: u64) -> Option<MinRate> {
    let window_ms = packed & u64::from(u32::MAX);
    (packed != 0).then(|| MinRate {
        bytes_per_sec: (packed >> 32) as u32,
        window: (window_ms != 0).then(|| Duration::from_millis(window_ms)),
    })
}

pub(super) fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not arrive in time: close at once.
    HeaderRead,
    /// Nothing in flight for the idle period: close gracefully.
    Idle,
    /// An HTTP/1.1 connection with nothing in flight for `PARK_AFTER_MS`: take it out of hyper,
    /// whose read and write buffers (8-17 KiB each) it would otherwise hold while idle, and wait
    /// for its next request with no buffer at all.
    Park,
}

/// How long an idle HTTP/1.1 connection keeps hyper's buffers before it is parked: long enough
/// that a client sending request after request never pays for leaving and re-entering hyper.
pub const PARK_AFTER_MS: u64 = 50;

/// The same after a connection's first request: a connection that has served one request is
/// most often one a client keeps open in case (a browser's, a pool's), and while many of them
/// are opened at once, those not parked yet hold buffers and request paths that set the
/// process's peak memory (the RSS keeps the peak). Busier connections park after
/// `PARK_AFTER_MS`, as the watchdog then fires at most once per that period while they work.
pub const PARK_AFTER_FIRST_MS: u64 = 5;

#[derive(Debug)]
pub struct ConnState {
    /// The socket peer (or with the PROXY protocol, the client its header names). Here rather
    /// than in the connection's task, which a parked connection keeps as small as it can.
    pub peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` carries it, formatted once per connection.
    pub peer_ip: http::HeaderValue,
    in_flight: AtomicUsize,
    phase: AtomicU8,
    deadline_ms: AtomicU64,
    seen_first_read: AtomicBool,
    is_h2: AtomicBool,
    header_read_ms: u64,
    idle_ms: u64,
    /// The watchdog's task, woken on deadline changes made by HTTP/2 stream tasks.
    watchdog: AtomicWaker,
    /// Read and discard what the client still sends before closing (see `Linger`).
    linger: AtomicBool,
    send_timeout: Duration,
    /// When the last request in flight ended (ms on `now_ms`'s clock).
    idle_since_ms: AtomicU64,
    /// Requests begun on the connection, up to 2 (`PARK_AFTER_FIRST_MS`).
    begun: AtomicU8,
    /// Set while an idle HTTP/1.1 connection is being taken out of hyper (see `Expiry::Park`):
    /// the IO is not shut down then, it is kept.
    parking: AtomicBool,
    /// `X-Forwarded-Port` for the port this connection's requests name, made once: a header
    /// value made from a number is an allocation, and a connection's requests name one port.
    forwarded_port: std::sync::OnceLock<(u16, http::HeaderValue)>,
    /// An upgrade the service agreed to (a `101` on its way): the connection's task runs the
    /// tunnel once hyper hands the socket over (see `tunnel`). Boxed: few connections ever
    /// hold one, and every connection holds the room for it (48 bytes).
    tunnel: Mutex<Option<Box<tunnel::Pending>>>,
    /// The `send_min_rate` writes are held to (`pack_rate`): the lowest that the routes of the
    /// requests in flight set (HTTP/2 may have several), else `UNSET_RATE`.
    send_rate: AtomicU64,
    /// For what no route claims (`[server] send_min_rate`).
    default_send_rate: AtomicU64,
    /// The connection was cut for taking a response slower than its `send_min_rate`.
    too_slow: AtomicBool,
    /// When the upstream's answer to the HTTP/1.1 request in flight is due (`ResponseDue`), ms on
    /// `now_ms`'s clock; `NO_DEADLINE` when nothing waits for one.
    response_due_ms: AtomicU64,
}

impl ConnState {
    /// A connection's state without its peer (for tests).
    #[cfg(test)]
    pub fn new(header_read: Duration, idle: Duration, send: Duration) -> Arc<ConnState> {
        let nobody = SocketAddr::from(([0, 0, 0, 0], 0));
        ConnState::of(nobody, header_read, idle, send)
    }

    /// The state of a connection from `peer`, under these timeouts.
    pub fn of(
        peer: SocketAddr,
        header_read: Duration,
        idle: Duration,
        send: Duration,
    ) -> Arc<ConnState> {
        let header_read_ms = header_read.as_millis() as u64;
        Arc::new(ConnState {
            peer,
            peer_ip: crate::upstream::forward::ip_header(peer.ip().to_canonical()),
            in_flight: AtomicUsize::new(0),
            phase: AtomicU8::new(READING_HEAD),
            deadline_ms: AtomicU64::new(now_ms() + header_read_ms),
            seen_first_read: AtomicBool::new(false),
            is_h2: AtomicBool::new(false),
            response_due_ms: AtomicU64::new(NO_DEADLINE),
            header_read_ms,
            idle_ms: idle.as_millis() as u64,
            watchdog: AtomicWaker::new(),
            linger: AtomicBool::new(false),
            send_timeout: send,
            idle_since_ms: AtomicU64::new(0),
            begun: AtomicU8::new(0),
            parking: AtomicBool::new(false),
            forwarded_port: std::sync::OnceLock::new(),
            tunnel: Mutex::new(None),
            send_rate: AtomicU64::new(UNSET_RATE),
            default_send_rate: AtomicU64::new(0),
            too_slow: AtomicBool::new(false),
        })
    }

    /// `port` as a header value, the connection's first one kept for its later requests.
    pub fn port_header(&self, port: u16) -> http::HeaderValue {
        let made = self
            .forwarded_port
            .get_or_init(|| (port, http::HeaderValue::from(port)));
        if made.0 == port {
            made.1.clone()
        } else {
            http::HeaderValue::from(port)
        }
    }

    /// The send rate for what no route claims (a `404`, the first bytes of a connection).
    pub fn set_default_send_rate(&self, rate: Option<MinRate>) {
        self.default_send_rate
            .store(pack_rate(rate), Ordering::Relaxed);
    }

    /// A request's route holds the connection's writes to `rate` (or to a lower one another
    /// request in flight set) until the connection is next idle.
    pub fn hold_to_send_rate(&self, rate: Option<MinRate>) {
        self.send_rate.fetch_min(pack_rate(rate), Ordering::Relaxed);
    }

    fn send_min_rate(&self) -> Option<MinRate> {
        match self.send_rate.load(Ordering::Relaxed) {
            UNSET_RATE => unpack_rate(self.default_send_rate.load(Ordering::Relaxed)),
            packed => unpack_rate(packed),
        }
    }

    /// Whether the connection was cut for taking a response slower than its `send_min_rate`.
    pub fn cut_too_slow(&self) -> bool {
        self.too_slow.load(Ordering::Relaxed)
    }

    /// The connection closes after an answer sent while the client may still be sending a
    /// body: keep reading (and dropping) for a moment, so the client sees the answer and not a
    /// reset caused by unread data (nginx's lingering close).
    pub fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
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
        let now = now_ms();
        let mut timeout_ms = timeout_ms;
        if phase == IDLE {
            self.idle_since_ms.store(now, Ordering::Relaxed);
            if !self.is_h2.load(Ordering::Relaxed) {
                let park_after = match self.begun.load(Ordering::Relaxed) {
                    1 => PARK_AFTER_FIRST_MS,
                    _ => PARK_AFTER_MS,
                };
                timeout_ms = timeout_ms.min(park_after);
            }
        }
        self.phase.store(phase, Ordering::Relaxed);
        self.deadline_ms.store(now + timeout_ms, Ordering::Relaxed);
        if self.is_h2.load(Ordering::Relaxed) {
            self.watchdog.wake();
        }
    }

    /// Marks a request in flight until the returned guard drops (when its response body ends).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        if self.begun.load(Ordering::Relaxed) < 2 {
            self.begun.fetch_add(1, Ordering::Relaxed);
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            // the routes of the requests before have no say in this one's
            self.send_rate.store(UNSET_RATE, Ordering::Relaxed);
        }
        self.phase.store(ACTIVE, Ordering::Relaxed);
        self.deadline_ms.store(NO_DEADLINE, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn expiry(&self, now: u64) -> Option<Expiry> {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        if deadline == NO_DEADLINE || now < deadline || self.in_flight.load(Ordering::Relaxed) > 0 {
            None
        } else if self.phase.load(Ordering::Relaxed) == READING_HEAD {
            Some(Expiry::HeaderRead)
        } else if now < self.idle_since_ms.load(Ordering::Relaxed) + self.idle_ms
            && !self.linger.load(Ordering::Relaxed)
        {
            // a connection that is to close (see `linger_on_close`) is not kept
            Some(Expiry::Park)
        } else {
            Some(Expiry::Idle)
        }
    }

    /// Resolves `timeout` after its first poll unless dropped first: how long an upstream may
    /// take to answer an HTTP/1.1 request, timed by the connection's watchdog rather than a
    /// timer of its own (a `Sleep` per request, put into tokio's timer wheel and taken out
    /// again, cost ~750 instructions). Only for a future polled in the connection's own task,
    /// as an HTTP/1.1 request's are on either engine: the watchdog is polled there too, arms its
    /// timer for the due time and wakes the task when it has passed.
    pub fn response_due(&self, timeout: Duration) -> ResponseDue<'_> {
        ResponseDue {
            state: self,
            timeout_ms: timeout.as_millis() as u64,
            at_ms: None,
        }
    }

    /// How long a parked connection may still wait for its next request.
    pub fn idle_left(&self) -> Duration {
        let until = self.idle_since_ms.load(Ordering::Relaxed) + self.idle_ms;
        Duration::from_millis(until.saturating_sub(now_ms()))
    }

    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    pub fn is_parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// A request is in flight (its response body not yet ended).
    pub fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Hands an upgrade to the connection's task, which runs it once hyper lets go of the socket.
    pub fn start_tunnel(&self, pending: tunnel::Pending) {
        *self.tunnel.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(pending));
    }

    /// The upgrade agreed on this connection, if any.
    pub fn take_tunnel(&self) -> Option<tunnel::Pending> {
        let pending = self.tunnel.lock().unwrap_or_else(|e| e.into_inner()).take();
        pending.map(|p| *p)
    }
}

/// Resolves when the connection has outlived its current deadline. Re-reads the deadline on every
/// poll; its timer only moves earlier, a later deadline is picked up when the timer fires, so a
/// keep-alive connection re-arms it about once per `idle` period rather than once per request.
pub struct Watchdog {
    state: Arc<ConnState>,
    timer: Pin<Box<Sleep>>,
    armed_ms: u64,
}

impl Watchdog {
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    pub fn new(state: Arc<ConnState>) -> Watchdog {
        let timer = Box::pin(tokio::time::sleep(Duration::from_millis(
            state.header_read_ms,
        )));
        Watchdog {
            state,
            timer,
            // "to be armed": the first poll arms the timer and polls it, which is what makes
            // it wake this task (`nothing_before_timer` counts on that)
            armed_ms: 0,
        }
    }

    /// The timer, lent to a parked connection's wait for its next request and set `left` from
    /// now (a second timer would be kept in every parked connection's task); the watchdog
    /// re-arms it when it is next polled.
    pub fn lend_timer(&mut self, left: Duration) -> Pin<&mut Sleep> {
        self.timer.as_mut().reset(Instant::now() + left);
        self.armed_ms = 0;
        self.timer.as_mut()
    }

    /// Whether nothing can expire before the armed timer fires: every deadline (the answer
    /// time's too) is at or after it. The timer, armed and polled in this same task before
    /// (`armed_ms` is 0 until then), then wakes the task when it fires, and a poll has nothing
    /// to do before (a full one costs ~250 instructions, the timer's poll most of it).
    fn nothing_before_timer(&self) -> bool {
        let state = &self.state;
        let next = state.deadline_ms.load(Ordering::Relaxed);
        let next = next.min(state.response_due_ms.load(Ordering::Relaxed));
        self.armed_ms != 0 && next >= self.armed_ms && !self.timer.is_elapsed()
    }

    fn arm(&mut self, at_ms: u64, now: u64) {
        let wait = Duration::from_millis(at_ms.saturating_sub(now));
        self.timer.as_mut().reset(Instant::now() + wait);
        self.armed_ms = at_ms;
    }
}

impl Future for Watchdog {
    type Output = Expiry;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expiry> {
        if self.state.is_h2.load(Ordering::Relaxed) {
            self.state.watchdog.register(cx.waker());
        }
        if self.nothing_before_timer() {
            return Poll::Pending;
        }
        loop {
            let now = now_ms();
            if let Some(expiry) = self.state.expiry(now) {
                return Poll::Ready(expiry);
            }
            let mut deadline = self.state.deadline_ms.load(Ordering::Relaxed);
            match self.state.response_due_ms.load(Ordering::Relaxed) {
                NO_DEADLINE => {}
                // an upstream's answer is late: the request's `ResponseDue`, polled in this task
                // (perhaps before this poll, in the same one), says so when polled again
                due if due <= now => cx.waker().wake_by_ref(),
                due => deadline = deadline.min(due),
            }
            if deadline < self.armed_ms || self.armed_ms <= now {
                // nothing pending (a request in flight): look again after a full idle period
                let at = if deadline == NO_DEADLINE || deadline <= now {
                    now + self.state.idle_ms
                } else {
                    deadline
                };
                self.arm(at, now);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // fired: a spent timer must be re-armed before it is polled again
            self.armed_ms = 0;
        }
    }
}

/// See `ConnState::response_due`.
#[derive(Debug)]
pub struct ResponseDue<'a> {
    state: &'a ConnState,
    timeout_ms: u64,
    /// Set by the first poll (ms on `now_ms`'s clock).
    at_ms: Option<u64>,
}

impl Future for ResponseDue<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        // no waker kept: the watchdog, polled in this task, wakes it once the time has come
        let now = now_ms();
        let at = match self.at_ms {
            Some(at) => at,
            None => {
                let at = now.saturating_add(self.timeout_ms);
                // one request is in flight at a time on HTTP/1.1: a later one's (a retry's)
                // replaces it
                self.state.response_due_ms.store(at, Ordering::Relaxed);
                *self.at_ms.insert(at)
            }
        };
        match now >= at {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Drop for ResponseDue<'_> {
    fn drop(&mut self) {
        if let Some(at) = self.at_ms {
            let due = &self.state.response_due_ms;
            let _ = due.compare_exchange(at, NO_DEADLINE, Ordering::Relaxed, Ordering::Relaxed);
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

/// How long a lingering close keeps discarding the client's bytes at most.
const LINGER: Duration = Duration::from_secs(5);

/// The client socket: reports reads to its `ConnState`, cuts a client that takes no response
/// bytes for `send_timeout` or takes them slower than its `send_min_rate`, and closes by
/// lingering when asked to.
pub struct WatchedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    /// Running while a write is pending.
    send_stalled: Option<Stall>,
    /// Made at the first pending write with a send rate on; boxed, as most connections never
    /// make one and every parked connection would carry its room.
    send_pace: Option<Box<Pace>>,
    linger: Option<Pin<Box<Sleep>>>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        WatchedIo {
            inner,
            state,
            send_stalled: None,
            send_pace: None,
            linger: None,
        }
    }

    /// Bytes the client took: they earn it waiting time under its send rate.
    fn sent(&mut self, polled: &Poll<io::Result<usize>>) {
        if let (Some(pace), Poll::Ready(Ok(n))) = (&mut self.send_pace, polled) {
            pace.moved(*n);
        }
    }

    fn written<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            if self.send_stalled.take().is_some() {
                if let Some(pace) = &mut self.send_pace {
                    pace.waited(Instant::now());
                }
            }
            return polled;
        }
        let stall = match &mut self.send_stalled {
            Some(stall) => stall,
            None => {
                let stall = self.stall();
                self.send_stalled.insert(stall)
            }
        };
        if stall.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let message = if stall.slow {
            self.state.too_slow.store(true, Ordering::Relaxed);
            "client took the response slower than its send_min_rate"
        } else {
            "client took no response bytes within the send timeout"
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)))
    }

    /// A write is pending: the client is waited on until the send timeout or its send rate's
    /// budget runs out, whichever is sooner.
    fn stall(&mut self) -> Stall {
        let timeout = self.state.send_timeout;
        let pace = self.state.send_min_rate().map(|rate| {
            let pace = self
                .send_pace
                .get_or_insert_with(|| Box::new(Pace::new(rate, timeout)));
            if pace.rate() != rate {
                pace.set_rate(rate, timeout);
            }
            &mut **pace
        });
        Stall::arm(timeout, pace)
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

impl<T: AsyncRead + AsyncWrite + Unpin> WatchedIo<T> {
    /// After our FIN: discard input until the client closes too, or `LINGER` runs out.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.sent(&polled);
        self.written(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.sent(&polled);
        self.written(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.written(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.is_parking() {
            // hyper ends a parked connection's HTTP/1.1 part; the connection itself goes on
            return Poll::Ready(Ok(()));
        }
        if self.linger.is_none() {
            let shut = Pin::new(&mut self.inner).poll_shutdown(cx);
            let shut = std::task::ready!(self.written(cx, shut));
            if shut.is_err() || !self.state.linger.load(Ordering::Relaxed) {
                return Poll::Ready(shut);
            }
        }
        self.poll_linger(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn parked_soon_after_last_response_and_idle_after_the_idle_period() {
        let state = ConnState::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        // after its first request, a connection parks sooner (`PARK_AFTER_FIRST_MS`)
        drop(state.begin());
        let start = Instant::now();
        assert_eq!(Watchdog::new(state.clone()).await, Expiry::Park);
        assert_eq!(start.elapsed(), Duration::from_millis(PARK_AFTER_FIRST_MS));
        // after its second and later ones, `PARK_AFTER_MS`
        drop(state.begin());
        let start = Instant::now();
        assert_eq!(Watchdog::new(state.clone()).await, Expiry::Park);
        assert_eq!(start.elapsed(), Duration::from_millis(PARK_AFTER_MS));
        assert_eq!(
            state.idle_left(),
            Duration::from_millis(60_000 - PARK_AFTER_MS)
        );
        tokio::time::sleep(state.idle_left()).await;
        assert_eq!(Watchdog::new(state).await, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_due_is_timed_by_the_watchdog_polled_beside_it() {
        let (header_read, idle) = (Duration::from_secs(10), Duration::from_secs(300));
        let state = ConnState::new(header_read, idle, Duration::from_secs(60));
        let in_flight = state.begin();
        let mut watchdog = Watchdog::new(state.clone());
        // (the first longer than the header read, the deadline a fresh watchdog starts from)
        for wait in [15_000, 1_500, 20, 7_000, 30, 9_000] {
            let start = Instant::now();
            let due = state.response_due(Duration::from_millis(wait));
            let watch = &mut watchdog;
            let waited = tokio::time::timeout(Duration::from_secs(20), async {
                tokio::select! {
                    biased;
                    () = due => {}
                    _ = watch => panic!("nothing expires while a request is in flight"),
                }
            });
            assert!(waited.await.is_ok(), "{wait} ms: never woken");
            assert_eq!(start.elapsed().as_millis(), u128::from(wait));
            assert_eq!(state.response_due_ms.load(Ordering::Relaxed), NO_DEADLINE);
        }
        // a due time dropped before it came leaves the watchdog nothing to arm for
        drop(state.response_due(Duration::from_millis(5)));
        assert_eq!(state.response_due_ms.load(Ordering::Relaxed), NO_DEADLINE);
        drop(in_flight);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_period_shorter_than_parking_closes_without_parking() {
        let state = ConnState::new(
            Duration::from_secs(10),
            Duration::from_millis(PARK_AFTER_FIRST_MS - 2),
            Duration::from_secs(60),
        );
        drop(state.begin());
        assert_eq!(Watchdog::new(state).await, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_expires_as_header_read() {
        let state = ConnState::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        state.on_read(b"GET / HT");
        assert_eq!(Watchdog::new(state).await, Expiry::HeaderRead);
    }

    #[tokio::test(start_paused = true)]
    async fn h2_stream_end_in_another_task_wakes_the_watchdog() {
        let state = ConnState::new(
            Duration::from_secs(10),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        state.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let guard = state.begin();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(guard);
        });
        assert_eq!(Watchdog::new(state).await, Expiry::Idle);
        // idle (1s) after the stream ended, not the 10s timer armed when the connection opened
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    const KB_PER_SEC: MinRate = MinRate {
        bytes_per_sec: 1024,
        window: Some(Duration::from_secs(5)),
    };

    /// Writes 1 MB through a `WatchedIo` held to `rate` (send timeout 60 s) to a reader taking
    /// `chunk` bytes every `gap`: how long until the write failed, if it did within 2 minutes.
    async fn cut_after(rate: Option<MinRate>, chunk: usize, gap: Duration) -> Option<Duration> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(4096);
        let state = ConnState::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        state.set_default_send_rate(rate);
        let mut io = WatchedIo::new(near, state.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; chunk];
            while far.read(&mut buf).await.is_ok_and(|n| n > 0) {
                tokio::time::sleep(gap).await;
            }
        });
        let start = Instant::now();
        let body = vec![b'x'; 1 << 20];
        let written = tokio::time::timeout(Duration::from_secs(120), io.write_all(&body)).await;
        match written {
            Ok(Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                assert_eq!(state.cut_too_slow(), rate.is_some());
                Some(start.elapsed())
            }
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_slower_than_the_send_rate_is_cut_and_a_faster_one_is_not() {
        let crawl = cut_after(Some(KB_PER_SEC), 64, Duration::from_secs(1)).await;
        let crawl = crawl.expect("64 B/s is cut");
        assert!((5..=6).contains(&crawl.as_secs()), "{crawl:?}");
        // without a rate only the send timeout could: not while bytes keep being taken
        assert_eq!(cut_after(None, 64, Duration::from_secs(1)).await, None);
        let fast = cut_after(Some(KB_PER_SEC), 2048, Duration::from_millis(100)).await;
        assert_eq!(fast, None, "20 KB/s is not cut");
    }

    #[test]
    fn the_lowest_send_rate_in_flight_holds_until_the_connection_is_next_idle() {
        let state = ConnState::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        state.set_default_send_rate(Some(KB_PER_SEC));
        assert_eq!(state.send_min_rate(), Some(KB_PER_SEC));
        let slower = MinRate {
            bytes_per_sec: 512,
            ..KB_PER_SEC
        };
        let a = state.begin();
        state.hold_to_send_rate(Some(KB_PER_SEC));
        let b = state.begin();
        state.hold_to_send_rate(Some(slower));
        assert_eq!(state.send_min_rate(), Some(slower));
        state.hold_to_send_rate(None);
        assert_eq!(state.send_min_rate(), None, "a route without a rate");
        drop((a, b));
        let c = state.begin();
        assert_eq!(
            state.send_min_rate(),
            Some(KB_PER_SEC),
            "unrouted: the default"
        );
        state.hold_to_send_rate(Some(slower));
        assert_eq!(state.send_min_rate(), Some(slower));
        drop(c);
        assert_eq!(unpack_rate(pack_rate(Some(slower))), Some(slower));
        let timeouts = MinRate {
            window: None,
            ..slower
        };
        assert_eq!(unpack_rate(pack_rate(Some(timeouts))), Some(timeouts));
    }

    #[test]
    fn h2_preface_never_reads_head() {
        let state = ConnState::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        state.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        state.on_read(b"frames");
        assert_eq!(state.phase.load(Ordering::Relaxed), IDLE);
    }
}
