//! HTTP/2 streams' send deadline: a stream whose response makes no progress to the client for
//! `timeouts.send` is reset, and what it holds (the upstream connection, an encoder, buffers)
//! is released.
//!
//! hyper's HTTP/2 server takes a frame from the response body, then waits for flow-control
//! capacity before it sends that frame and asks the body for the next one. A client that grants
//! no window (or a socket that takes nothing, which leaves h2's queue full) stops the stream
//! there, with the body never polled again, so no timer of the body's own could fire. Instead,
//! each stream's task is spawned through `StreamExec`, which wraps it in a `Deadline`: the body
//! (`ProxyBody`) notes on the stream's `SendClock` when it hands hyper a frame and when hyper
//! comes back, and `Deadline` drops the whole stream task once a handed frame has waited for
//! `timeouts.send`. Dropping it drops hyper's send handle, on which h2 resets the stream
//! (`RST_STREAM` with `CANCEL`) and frees its queued data.
//!
//! The clock reaches the body through a task-local set around each poll of the stream's task,
//! so the service needs no change of signature. An HTTP/1.1 response has no clock (its send
//! deadline is `WatchedIo`'s, on the socket). A stream that never waits for the client costs
//! one clock (an `Arc`) and no timer.

use super::conn::now_ms;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    static CLOCK: Arc<SendClock>;
}

/// Not waiting on the client.
const PROGRESSING: u64 = 0;

/// Whether a stream's body is waiting for hyper to take its next frame, and since when.
#[derive(Debug, Default)]
pub struct SendClock {
    /// `now_ms` when the body handed over a frame hyper has not come back after; `PROGRESSING`
    /// while hyper waits on the body instead.
    waiting_since_ms: AtomicU64,
}

impl SendClock {
    /// The clock of the HTTP/2 stream being served in this task; `None` for HTTP/1.1.
    pub fn current() -> Option<Arc<SendClock>> {
        CLOCK.try_with(Arc::clone).ok()
    }

    /// The body just handed hyper a frame of data: the client's turn to take it.
    pub fn handed(&self) {
        self.waiting_since_ms
            .store(now_ms().max(1), Ordering::Relaxed);
    }

    /// hyper came back for more, or the body has nothing to give yet (its source's turn).
    pub fn progressing(&self) {
        self.waiting_since_ms.store(PROGRESSING, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<u64> {
        Some(self.waiting_since_ms.load(Ordering::Relaxed)).filter(|&t| t != PROGRESSING)
    }
}

/// hyper's executor for a connection's HTTP/2 streams: each on a task of its own (as
/// `TokioExecutor` does), under a `Deadline`.
#[derive(Clone, Copy, Debug)]
pub struct StreamExec {
    pub send: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let clock = Arc::new(SendClock::default());
        tokio::spawn(Deadline {
            inner: Some(CLOCK.scope(clock.clone(), fut)),
            clock,
            send_ms: self.send.as_millis() as u64,
            timer: None,
        });
    }
}

pin_project_lite::pin_project! {
    /// A stream's task, ended (dropped, so reset) once it has waited `send_ms` for the client.
    struct Deadline<F: Future> {
        #[pin]
        inner: Option<TaskLocalFuture<Arc<SendClock>, F>>,
        clock: Arc<SendClock>,
        send_ms: u64,
        // Armed only while the stream waits on the client. It may fire early (a frame handed
        // since pushed the deadline back): it is then re-armed, so it moves at most once per
        // send period however many frames pass.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future<Output = ()>> Future for Deadline<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut me = self.project();
        let Some(inner) = me.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        if inner.poll(cx).is_ready() {
            me.inner.set(None);
            return Poll::Ready(());
        }
        let Some(since) = me.clock.waiting_since() else {
            return Poll::Pending;
        };
        let due_ms = since + *me.send_ms;
        loop {
            let now = now_ms();
            if now >= due_ms {
                tracing::debug!(
                    send_timeout_ms = *me.send_ms,
                    "HTTP/2 stream reset: the client took no response bytes within the send timeout"
                );
                me.inner.set(None);
                *me.timer = None;
                return Poll::Ready(());
            }
            let at = Instant::now() + Duration::from_millis(due_ms - now);
            let timer = me
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.is_elapsed() || timer.deadline() > at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicBool;

    /// A stream task that hands one frame at once, then waits forever (no window), noting
    /// whether it was dropped.
    struct Stalled(Arc<AtomicBool>);

    impl Drop for Stalled {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    async fn stalled_stream(dropped: Arc<AtomicBool>, hand_every: Option<Duration>) {
        let _guard = Stalled(dropped);
        let clock = SendClock::current().unwrap();
        clock.handed();
        match hand_every {
            None => std::future::pending::<()>().await,
            Some(period) => loop {
                tokio::time::sleep(period).await;
                clock.progressing();
                clock.handed();
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_on_the_client_is_dropped_after_the_send_timeout() {
        let exec = StreamExec {
            send: Duration::from_secs(5),
        };
        let dropped = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        exec.execute(stalled_stream(dropped.clone(), None));
        while !dropped.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_millis(5100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_taking_frames_is_kept() {
        let exec = StreamExec {
            send: Duration::from_secs(5),
        };
        let dropped = Arc::new(AtomicBool::new(false));
        exec.execute(stalled_stream(
            dropped.clone(),
            Some(Duration::from_secs(4)),
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!dropped.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn outside_a_stream_there_is_no_clock() {
        assert!(SendClock::current().is_none());
    }
}
