//! The writer thread: takes lines off the queue, writes them through a `BufWriter`, flushes
//! whenever the queue is momentarily empty (so `tail -f` sees a line as soon as the burst it came
//! in is written), and reopens the file when asked.
//!
//! A thread rather than a tokio task: file writes block, and a slow disk must stall nobody but
//! this thread.

use super::Every;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::oneshot;

pub(super) enum Msg {
    Line(Vec<u8>),
    /// Reopen the file by its path (logrotate moved it away).
    Reopen,
    /// Flush, acknowledge, stop.
    Close(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub(super) enum Target {
    Stdout,
    File(PathBuf),
}

/// Append mode: a `copytruncate` rotation leaves no hole of zeros at the start of the file, and
/// other writers' lines are never overwritten. New files are `0640`: lines name client addresses.
pub(super) fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

pub(super) struct Writer {
    target: Target,
    out: BufWriter<Box<dyn Write + Send>>,
    /// Lines lost, shared with the request path's queue-full count.
    lost: Arc<AtomicU64>,
    failing: Every,
}

impl Writer {
    pub(super) fn new(target: Target, out: Box<dyn Write + Send>, lost: Arc<AtomicU64>) -> Self {
        Writer {
            target,
            out: BufWriter::with_capacity(32 << 10, out),
            lost,
            failing: Every::ten_seconds(),
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => {
                    self.flush();
                    match rx.blocking_recv() {
                        Some(msg) => msg,
                        None => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            match msg {
                Msg::Line(line) => self.write(&line),
                Msg::Reopen => self.reopen(),
                Msg::Close(ack) => {
                    self.flush();
                    let _ = ack.send(());
                    return;
                }
            }
        }
        self.flush();
    }

    /// A line that cannot be written (disk full, closed pipe) is counted as lost; what is already
    /// in the buffer stays there for the next try.
    fn write(&mut self, line: &[u8]) {
        if let Err(e) = self.out.write_all(line) {
            self.lost.fetch_add(1, Ordering::Relaxed);
            self.failed("write", &e);
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.failed("flush", &e);
        }
    }

    fn failed(&self, what: &str, e: &io::Error) {
        if self.failing.ready() {
            let target = self.target.describe();
            tracing::warn!(%target, error = %e, "cannot {what} the access log (at most one warning per 10 s)");
        }
    }

    /// logrotate's `create` style moved the file away: what is buffered goes to the old file,
    /// later lines to a new one at the path. If it cannot be opened, the old file is kept.
    fn reopen(&mut self) {
        let Target::File(path) = self.target.clone() else {
            tracing::info!("SIGUSR1: the access log is not a file; nothing to reopen");
            return;
        };
        self.flush();
        match open(&path) {
            Ok(file) => {
                // the old buffer was just flushed; a failed flush keeps its lines for the new file
                let old = std::mem::replace(self.out.get_mut(), Box::new(file));
                drop(old);
                tracing::info!(path = %path.display(), "access log reopened");
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file");
            }
        }
    }
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Stdout => "stdout".to_string(),
            Target::File(path) => path.display().to_string(),
        }
    }
}
