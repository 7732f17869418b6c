//! Accept loops: take connections until shutdown, hand each to the HTTP layer as a tracked task.

use crate::http::{serve_connection, ConnContext};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    cx: Arc<ConnContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                cx.tracker
                    .spawn(serve_connection(stream, peer, cx.clone(), shutdown.clone()));
            }
            Err(e) if is_resource_exhaustion(&e) => {
                // out of file descriptors or memory: back off instead of spinning on accept
                tracing::warn!(listener = name, error = %e, "accept failed; pausing 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::debug!(listener = name, error = %e, "accept failed"),
        }
    }
    tracing::info!(listener = name, "listener closed");
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == 24 || code == 23 || code == 12 || code == 105)
}
