//! Accept loops: take connections until shutdown, hand each (after the TLS handshake, on the
//! HTTPS listener) to the HTTP layer as a tracked task.

use crate::http::{serve_connection, ConnContext, Transport};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    transport: Transport,
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
                let (cx2, shutdown) = (cx.clone(), shutdown.clone());
                match transport {
                    Transport::Plain => cx
                        .tracker
                        .spawn(serve_connection(stream, peer, transport, cx2, shutdown)),
                    Transport::Tls => cx.tracker.spawn(serve_tls(stream, peer, cx2, shutdown)),
                };
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

/// The TLS handshake, bounded by `header_read`, then HTTP on the decrypted stream. The server
/// config comes from the current snapshot, so a new certificate applies to the next handshake.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    let state = cx.shared.load();
    let Some(config) = state.tls.clone() else {
        return;
    };
    let timeout = state.config.server.timeouts.header_read;
    drop(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_connection(tls, peer, Transport::Tls, cx, shutdown).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
