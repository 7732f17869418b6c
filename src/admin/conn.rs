//! An admin connection's deadlines, `[server] timeouts.header_read` and `timeouts.idle` as on
//! the other listeners: a request head must be complete within `header_read` of its first byte
//! (of the connection's opening, for the first one), and a connection with no request in flight
//! closes after `idle`.
//!
//! A plainer cousin of `http::conn`: admin connections are few and slow, so the phase sits behind
//! an uncontended lock and idle connections stay inside hyper (no parking). The `Watchdog` must be
//! polled right after the connection, in its task: every phase change happens while hyper polls
//! the connection (its reads, its calls of the service), so the watchdog sees each one then.

use crate::read_notice::OnRead;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A request head took longer than `header_read`.
    HeaderRead,
    /// No request for `idle`.
    Idle,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for the rest of a request head, since then.
    Head(Instant),
    /// A request in the service.
    Busy,
    /// Nothing in flight since then.
    Idle(Instant),
}

#[derive(Debug)]
pub struct Deadlines {
    header_read: Duration,
    idle: Duration,
    phase: Mutex<Phase>,
}

impl Deadlines {
    pub fn new(header_read: Duration, idle: Duration) -> Arc<Deadlines> {
        Arc::new(Deadlines {
            header_read,
            idle,
            phase: Mutex::new(Phase::Head(Instant::now())),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The service has a request until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        *self.phase() = Phase::Busy;
        Busy(self.clone())
    }

    /// Bytes arrived: on an idle connection, they start a request head.
    fn on_read(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
        }
    }

    fn deadline(&self) -> Option<(Instant, Expiry)> {
        match *self.phase() {
            Phase::Head(since) => Some((since + self.header_read, Expiry::HeaderRead)),
            Phase::Busy => None,
            Phase::Idle(since) => Some((since + self.idle, Expiry::Idle)),
        }
    }
}

/// A request in the service; dropping it starts the idle clock.
#[must_use]
pub struct Busy(Arc<Deadlines>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.phase() = Phase::Idle(Instant::now());
    }
}

/// Resolves when the connection's current deadline has passed.
pub struct Watchdog {
    deadlines: Arc<Deadlines>,
    timer: Pin<Box<Sleep>>,
}

impl Watchdog {
    pub fn new(deadlines: Arc<Deadlines>) -> Watchdog {
        let first = Instant::now() + deadlines.header_read;
        Watchdog {
            deadlines,
            timer: Box::pin(tokio::time::sleep_until(first)),
        }
    }
}

impl Future for Watchdog {
    type Output = Expiry;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Expiry> {
        // busy: no deadline, and hyper wakes the task when the request is answered
        let Some((at, expiry)) = self.deadlines.deadline() else {
            return Poll::Pending;
        };
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        self.timer.as_mut().poll(cx).map(|()| expiry)
    }
}

/// The socket, telling its `Deadlines` when bytes arrive.
pub type Noticed<T> = crate::read_notice::Noticed<T, Arc<Deadlines>>;

impl OnRead for Arc<Deadlines> {
    fn on_read(&self) {
        Deadlines::on_read(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_head_has_header_read_from_the_connections_opening() {
        let deadlines = Deadlines::new(HEAD, IDLE);
        let start = Instant::now();
        assert_eq!(Watchdog::new(deadlines).await, Expiry::HeaderRead);
        assert_eq!(start.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_answer_idle_runs_and_new_bytes_start_a_head() {
        let deadlines = Deadlines::new(HEAD, IDLE);
        drop(deadlines.busy());
        let start = Instant::now();
        assert_eq!(Watchdog::new(deadlines.clone()).await, Expiry::Idle);
        assert_eq!(start.elapsed(), IDLE);

        drop(deadlines.busy());
        tokio::time::advance(Duration::from_secs(10)).await;
        deadlines.on_read();
        let start = Instant::now();
        assert_eq!(Watchdog::new(deadlines).await, Expiry::HeaderRead);
        assert_eq!(start.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_the_service_has_no_deadline() {
        let deadlines = Deadlines::new(HEAD, IDLE);
        let busy = deadlines.busy();
        let watchdog = Watchdog::new(deadlines);
        assert!(tokio::time::timeout(IDLE * 2, watchdog).await.is_err());
        drop(busy);
    }
}
