//! The access log: one line per finished request, never written on the request path.
//!
//! `AccessLog::record` (called when a response body ends or is dropped) formats the line and hands
//! it to a bounded queue with `try_send`: it never waits. A full queue drops the line and counts
//! it (`AccessLog::dropped`, with a warning at most every 10 s). One thread (`writer`) empties
//! the queue into stdout or a file, which SIGUSR1 reopens for logrotate. The default target,
//! `stderr`, is the `gatehouse::access` event of the process log, as before `[log]` existed.
//!
//! The line is formatted on the request path (one allocation: the line) rather than by the
//! writer from a queued `Arc<RequestLog>` (none): the URI and header values are slices of hyper's
//! read buffer (8 KiB or more), so a full queue of requests would pin 8192 of those buffers,
//! 64 MiB or more, where 8192 formatted lines are about 3 MiB.

mod format;
mod writer;

use crate::config::{AccessFormat, AccessTarget, Log};
use crate::upstream::BackendAddr;
use http::{HeaderValue, Method, Uri, Version};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use writer::{Msg, Target, Writer};

/// How long shutdown waits for the writer to empty the queue.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One finished request, borrowed from its `RequestLog` for as long as it takes to format it.
pub struct Entry<'a> {
    /// When the response ended (nginx logs that time too).
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub host: Option<&'a HeaderValue>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    /// The server that answered (its address, or a Unix socket's path); `None` for local
    /// answers and refusals.
    pub upstream: Option<&'a BackendAddr>,
    pub request_id: &'a crate::request_id::RequestId,
    pub user_agent: Option<&'a HeaderValue>,
    pub referer: Option<&'a HeaderValue>,
}

/// The handle the request path writes through; clones share one queue and one count.
#[derive(Clone)]
pub struct AccessLog(Arc<Inner>);

struct Inner {
    sink: Sink,
    /// Lines lost: queue full, or (counted by the writer) a failed write.
    dropped: Arc<AtomicU64>,
    full: Every,
}

enum Sink {
    Off,
    Stderr,
    Queue {
        tx: mpsc::Sender<Msg>,
        format: AccessFormat,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {}: {source}", path.display())]
pub struct AccessLogError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl AccessLog {
    /// Opens the file (so an unwritable path fails start-up or the reload) and starts the
    /// writer thread, which ends once every clone of the handle is gone and the queue is
    /// written out. `dropped` counts lost lines across every log the process opens.
    pub fn start(config: &Log, dropped: Arc<AtomicU64>) -> Result<AccessLog, AccessLogError> {
        let target = match &config.access {
            AccessTarget::Off => return Ok(AccessLog::new(Sink::Off, dropped)),
            AccessTarget::Stderr => return Ok(AccessLog::new(Sink::Stderr, dropped)),
            AccessTarget::Stdout => Target::Stdout,
            AccessTarget::File(path) => Target::File(path.clone()),
        };
        let out: Box<dyn std::io::Write + Send> = match &target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => {
                Box::new(writer::open(path).map_err(|source| AccessLogError {
                    path: path.clone(),
                    source,
                })?)
            }
        };
        let (tx, rx) = mpsc::channel(config.buffer);
        let log = AccessLog::new(
            Sink::Queue {
                tx,
                format: config.format,
            },
            dropped,
        );
        let writer = Writer::new(target, out, log.0.dropped.clone());
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            // the queue fills up and every line is counted as dropped; serving goes on
            tracing::error!(error = %e, "cannot start the access-log writer thread");
        }
        Ok(log)
    }

    /// No access log at all.
    pub fn off() -> AccessLog {
        AccessLog::new(Sink::Off, Arc::default())
    }

    fn new(sink: Sink, dropped: Arc<AtomicU64>) -> AccessLog {
        AccessLog(Arc::new(Inner {
            sink,
            dropped,
            full: Every::ten_seconds(),
        }))
    }

    /// Writes (or queues) the line for a finished request. Never blocks on the queue: when it is
    /// full the line is dropped and counted.
    /// Whether a line would be written anywhere (`access = "off"` writes none).
    pub fn is_on(&self) -> bool {
        match self.0.sink {
            Sink::Off => false,
            // through tracing: nothing to write when its filter drops the event anyway
            Sink::Stderr => tracing::enabled!(target: "gatehouse::access", tracing::Level::INFO),
            Sink::Queue { .. } => true,
        }
    }

    pub fn record(&self, entry: &Entry<'_>) {
        match &self.0.sink {
            Sink::Off => {}
            Sink::Stderr => trace(entry),
            Sink::Queue { tx, format } => {
                let line = match format {
                    AccessFormat::Json => format::json(entry),
                    AccessFormat::Combined => format::combined(entry),
                };
                if tx.try_send(Msg::Line(line)).is_err() {
                    self.lost();
                }
            }
        }
    }

    fn lost(&self) {
        let total = self.0.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if self.0.full.ready() {
            tracing::warn!(
                dropped_total = total,
                "access log: the queue to the writer is full, lines are being dropped (at most one warning per 10 s; raise [log] buffer or use a faster target)"
            );
        }
    }

    /// Access-log lines lost since start: the queue was full, or the write failed. For the
    /// metrics (`gatehouse_access_log_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen the file, after the lines already queued (it waits for room in
    /// the queue, never on the request path).
    pub async fn reopen(&self) {
        if let Sink::Queue { tx, .. } = &self.0.sink {
            let _ = tx.send(Msg::Reopen).await;
        } else {
            tracing::info!("SIGUSR1: the access log is not a file; nothing to reopen");
        }
    }

    /// Lets the writer empty the queue and flush (at most `CLOSE_WAIT`), at shutdown. Lines
    /// recorded after this are dropped.
    pub async fn close(&self) {
        let Sink::Queue { tx, .. } = &self.0.sink else {
            return;
        };
        let (ack, done) = oneshot::channel();
        let closed = async {
            tx.send(Msg::Close(ack)).await.ok()?;
            done.await.ok()
        };
        let flushed = matches!(tokio::time::timeout(CLOSE_WAIT, closed).await, Ok(Some(())));
        let dropped = self.dropped();
        if flushed {
            tracing::info!(dropped, "access log closed");
        } else {
            tracing::warn!(dropped, "access log: the writer did not finish within {CLOSE_WAIT:?}; queued lines are lost");
        }
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sink = match &self.0.sink {
            Sink::Off => "off",
            Sink::Stderr => "stderr",
            Sink::Queue { .. } => "queue",
        };
        f.debug_struct("AccessLog")
            .field("sink", &sink)
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// The `stderr` target: the event the process log has always carried, fields unchanged.
fn trace(e: &Entry<'_>) {
    tracing::info!(
        target: "gatehouse::access",
        client = %e.client,
        method = %e.method,
        host = e.host.and_then(|h| h.to_str().ok()).unwrap_or("-"),
        path = e.uri.path(),
        status = e.status,
        bytes_in = e.bytes_in,
        bytes_out = e.bytes_out,
        duration_ms = e.duration.as_secs_f64() * 1000.0,
        upstream = e.upstream.map(tracing::field::display),
        request_id = e.request_id.as_str(),
        "request"
    );
}

/// Lets one event through per period, from any thread, without a lock.
struct Every {
    period: Duration,
    start: Instant,
    /// Milliseconds after `start` of the last event let through, plus one; 0 is never.
    last: AtomicU64,
}

impl Every {
    fn ten_seconds() -> Every {
        Every {
            period: Duration::from_secs(10),
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn ready(&self) -> bool {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.period.as_millis() as u64;
        due && self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests;
