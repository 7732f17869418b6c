//! The tunnel after a `101 Switching Protocols` (WebSocket): bytes copied both ways between the
//! client's upgraded connection and the upstream's until either side closes, nothing passes
//! either way for `timeouts.tunnel_idle`, or the listener shuts down and `shutdown_grace` has
//! passed. It runs in the client connection's own task (`serve_connection` picks it up once
//! hyper has handed the socket over), so the connection keeps its slot under `max_connections`
//! and `max_connections_per_ip` and its place in `connections_open` for as long as it lasts.
//! Tunnel bytes are not HTTP: `max_body`, `body_timeout` and compression do not apply to them.

use super::conn::now_ms;
use super::rewind::Rewind;
use crate::read_notice::{Noticed, OnRead};
use crate::upstream::conn::Upgrade;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// How long closing both sides may take (a TLS `close_notify`, a FIN on a full socket).
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// Both halves of an upgrade, handed from the service to the connection's task.
#[derive(Debug)]
pub struct Pending {
    pub client: OnUpgrade,
    /// hyper's upgrade, or a native connection (ready at once, with what it read past the
    /// `101` head).
    pub upstream: Upgrade,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// One side closed (or failed); the other was closed after it.
    Closed,
    /// No byte either way for the idle period.
    Idle,
    /// The listener shut down and the grace period passed.
    Shutdown,
    /// A side never completed its upgrade.
    NotUpgraded,
}

/// Runs the tunnel until it ends; `stop` resolves when it must end for shutdown.
pub async fn run(pending: Pending, idle: Duration, stop: impl Future<Output = ()>) -> End {
    tokio::pin!(stop);
    let client = tokio::select! {
        client = pending.client => match client {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return End::NotUpgraded;
            }
        },
        () = &mut stop => return End::Shutdown,
    };
    with_upstream(TokioIo::new(client), pending.upstream, idle, stop).await
}

/// The tunnel of a native-engine connection (`http::native`), whose client side is the
/// connection itself (the bytes it read past the `101` head first).
pub async fn run_native<C>(
    client: C,
    upstream: Upgrade,
    idle: Duration,
    stop: impl Future<Output = ()>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    tokio::pin!(stop);
    with_upstream(client, upstream, idle, stop).await
}

/// The tunnel once the client's side is in hand: the upstream's is hyper's upgrade (awaited), or
/// a native connection (ready at once, with what it read past the `101` head).
async fn with_upstream<C>(
    client: C,
    upstream: Upgrade,
    idle: Duration,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match upstream {
        Upgrade::Hyper(upstream) => {
            let upstream = tokio::select! {
                upgraded = upstream => match upgraded {
                    Ok(upgraded) => upgraded,
                    Err(e) => {
                        tracing::debug!(error = %e, "upgrade failed");
                        return End::NotUpgraded;
                    }
                },
                () = &mut stop => return End::Shutdown,
            };
            copy(client, TokioIo::new(upstream), idle, stop).await
        }
        Upgrade::Native(read, io) => copy(client, Rewind::new(read, io), idle, stop).await,
        Upgrade::None => End::NotUpgraded,
    }
}

/// Copies both ways until one side closes, both are quiet for `idle`, or `stop`; then closes both.
async fn copy<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let last = AtomicU64::new(now_ms());
    let mut client = Noticed::new(client, LastRead(&last));
    let mut upstream = Noticed::new(upstream, LastRead(&last));
    let end = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!(error = %e, "tunnel closed with error");
            }
            End::Closed
        }
        () = idle_for(&last, idle) => End::Idle,
        () = &mut stop => End::Shutdown,
    };
    let close = async {
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_WITHIN, close).await;
    end
}

/// Resolves once nothing was read from either side for `idle`. Re-arms its timer at most once
/// per idle period, however many bytes pass.
async fn idle_for(last: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis() as u64;
    loop {
        let quiet = now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
    }
}

/// A tunnel's clock of its last delivered bytes: each side is a `Noticed` with one, both
/// sharing the same clock.
#[derive(Clone, Copy)]
struct LastRead<'a>(&'a AtomicU64);

impl OnRead for LastRead<'_> {
    fn on_read(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn quiet_for_the_idle_period_resolves_and_traffic_pushes_it_back() {
        let last = AtomicU64::new(now_ms());
        let start = tokio::time::Instant::now();
        let (mut a, b) = tokio::io::duplex(64);
        let mut watched = Noticed::new(b, LastRead(&last));
        let traffic = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                a.write_all(b"x").await.unwrap();
                let mut byte = [0u8; 1];
                watched.read_exact(&mut byte).await.unwrap();
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = idle_for(&last, Duration::from_secs(1)) => {}
            () = traffic => unreachable!(),
        }
        // the last byte came at 2.1 s; quiet for 1 s after it
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(3090) && took <= Duration::from_millis(3200),
            "{took:?}"
        );
    }
}
