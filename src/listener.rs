//! Accept loops: take connections until shutdown, hand each (after the PROXY header when
//! `proxy_protocol` is on, and the TLS handshake on the HTTPS listener) to the HTTP layer as a
//! tracked task.

mod proxy_protocol;
mod set;

pub mod conn_limit;

pub use set::{BindError, Listeners};

use crate::acme::ACME_TLS_ALPN;
use crate::http::{serve_connection, ConnContext, Peer, Transport};
use crate::middleware::{rate_limit, Reason};
use crate::tls::client::{ClientCert, ClientTls};
use crate::upstream::forward;
use conn_limit::ConnSlot;
use proxy_protocol::Header;
use rustls::server::Acceptor;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;

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
                spawn_connection(stream, peer, transport, &cx, &shutdown);
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

/// Serves an accepted connection as a tracked task. Without a PROXY header to wait for, it
/// is admitted here and its task is its plain HTTP or TLS future itself: a task is as large as
/// its future's largest state, held for the connection's life, so nothing else is awaited in
/// it (`serve_connection` holds only what lasts, between activations).
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    cx: &Arc<ConnContext>,
    shutdown: &watch::Receiver<bool>,
) {
    if cx.shared.load().config.listen.proxy_protocol {
        cx.tracker.spawn(serve_proxied(
            stream,
            peer,
            transport,
            cx.clone(),
            shutdown.clone(),
        ));
        return;
    }
    let peer = Peer {
        addr: peer,
        vouches: true,
    };
    let Some(held) = admit(cx, peer.addr, transport) else {
        return;
    };
    let (cx, shutdown) = (cx.clone(), shutdown.clone());
    match transport {
        Transport::Plain => {
            let serving =
                serve_connection(stream, peer, (transport, None), cx.clone(), shutdown, held);
            cx.tracker.spawn(serving);
        }
        Transport::Tls => {
            cx.tracker
                .clone()
                .spawn(serve_tls(stream, peer, cx, shutdown, held));
        }
    }
}

/// A connection behind a load balancer speaking the PROXY protocol: its header first, then a
/// slot under the connection limits for the client it names, then TLS or HTTP.
async fn serve_proxied(
    mut stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(peer) = client_addr(&mut stream, peer, &cx).await else {
        return;
    };
    let Some(held) = admit(&cx, peer.addr, transport) else {
        return;
    };
    match transport {
        Transport::Plain => {
            serve_connection(stream, peer, (transport, None), cx, shutdown, held).await
        }
        // boxed: the handshake and TLS stream would otherwise size every connection's task
        Transport::Tls => Box::pin(serve_tls(stream, peer, cx, shutdown, held)).await,
    }
}

/// The address the connection is served as: the socket peer, or with `proxy_protocol` the
/// source its PROXY header names. `None` closes it: with `proxy_protocol` only a trusted proxy
/// may connect (nothing is read from anyone else), and it must send a valid header within
/// `header_read`. A LOCAL or UNKNOWN header (the load balancer's health check) keeps the peer.
async fn client_addr(stream: &mut TcpStream, peer: SocketAddr, cx: &ConnContext) -> Option<Peer> {
    let state = cx.shared.load();
    if !state.config.listen.proxy_protocol {
        return Some(Peer {
            addr: peer,
            vouches: true,
        });
    }
    let trusted = &state.config.server.trusted_proxies;
    if !forward::is_trusted(trusted, peer.ip().to_canonical()) {
        tracing::debug!(%peer, "closing connection: PROXY protocol is on and the peer is not in trusted_proxies");
        return None;
    }
    let timeout = state.config.server.timeouts.header_read;
    drop(state);
    match tokio::time::timeout(timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok(Header::Proxy {
            source,
            destination,
        })) => {
            tracing::trace!(%peer, client = %source, %destination, "PROXY header read");
            Some(Peer {
                addr: source,
                vouches: true,
            })
        }
        // the load balancer speaking for itself: nothing it forwards is believed
        Ok(Ok(Header::Local)) => Some(Peer {
            addr: peer,
            vouches: false,
        }),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "closing connection: no valid PROXY header");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "closing connection: PROXY header not received in time");
            None
        }
    }
}

/// What an admitted connection holds until its task ends: its slot under the connection limits
/// and its place on the open gauge.
pub struct Admitted {
    _slot: ConnSlot,
    _open: OpenGuard,
}

/// A slot under the connection limits (counted as open), or `None` and the connection is
/// dropped at once (a trusted proxy carries many clients, so it is only held to the total).
fn admit(cx: &ConnContext, peer: SocketAddr, transport: Transport) -> Option<Admitted> {
    let state = cx.shared.load();
    let server = &state.config.server;
    let limits = &server.limits;
    let ip = peer.ip().to_canonical();
    let key = (!forward::is_trusted(&server.trusted_proxies, ip))
        .then(|| rate_limit::client_key(ip, limits.ipv6_prefix));
    match cx
        .conns
        .acquire(key, limits.max_connections, limits.max_connections_per_ip)
    {
        Ok(slot) => {
            let counted = cx.listener_metrics(transport);
            counted.total.inc();
            counted.open.inc();
            Some(Admitted {
                _slot: slot,
                _open: OpenGuard(counted.open.clone()),
            })
        }
        Err(refused) => {
            let detail = refused.to_string();
            cx.rejections.record(Reason::ConnLimit, ip, &detail);
            None
        }
    }
}

/// Takes the connection off the open gauge when its task ends, however it ends.
struct OpenGuard(prometheus::IntGauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == 24 || code == 23 || code == 12 || code == 105)
}

/// The TLS handshake, bounded by `tls_handshake`, then HTTP on the decrypted stream. The server
/// config comes from the current snapshot, so a new certificate applies to the next handshake;
/// a name served by a `client_auth` site gets that site group's config, which asks for (and
/// verifies) a client certificate, and what it verified goes with the connection.
/// A ClientHello offering `acme-tls/1` is a CA validating TLS-ALPN-01: it gets the challenge
/// certificate and the connection ends after the handshake.
async fn serve_tls(
    stream: TcpStream,
    peer: Peer,
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
    held: Admitted,
) {
    let state = cx.shared.load();
    let Some(configs) = state.tls.clone() else {
        return;
    };
    let mut deadline = Instant::now() + state.config.server.timeouts.tls_handshake;
    drop(state);
    let handshake = async {
        let accept = LazyConfigAcceptor::new(Acceptor::default(), stream);
        let start = bounded(deadline, accept).await?;
        let hello = start.client_hello();
        let offers_acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if offers_acme {
            // another instance's answer, from the store (`[cluster]`), if none is set here
            let sni = hello.server_name().map(str::to_string);
            let fetch = cx.challenges.fetch_tls_alpn(sni.as_deref());
            let _ = tokio::time::timeout_at(deadline, fetch).await;
            let config = cx.challenges.tls_alpn_config().map_err(io::Error::other)?;
            let mut tls = bounded(deadline, start.into_stream(config)).await?;
            let _ = tls.shutdown().await;
            return Ok(None);
        }
        if configs.on_demand_miss(hello.server_name()) {
            // an on-demand site without this name's certificate: wait for it (the wait has a
            // bound of its own and does not count against `tls_handshake`); without one the
            // handshake below fails as for an unknown name
            let sni = hello.server_name().map(str::to_string);
            let waiting = Instant::now();
            cx.on_demand.obtain(sni.as_deref()).await;
            deadline += waiting.elapsed();
        }
        let hello = start.client_hello();
        let (config, client_ca) = configs.pick(hello.server_name());
        let tls = bounded(deadline, start.into_stream(config.clone())).await?;
        let client = client_ca.map(|ca| {
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            Arc::new(ClientTls {
                ca,
                cert: leaf.map(|leaf| ClientCert::of(leaf)),
            })
        });
        Ok::<_, io::Error>(Some((Box::new(tls), client)))
    };
    // Both boxed, for the memory of a connection that stays open: the handshake's state
    // (~4 KiB) is freed once it is done, and the TLS stream (~1.2 KiB) is not moved into (and
    // sized into) each of the connection's futures that holds it on the way.
    match Box::pin(handshake).await {
        Ok(Some((tls, client))) => {
            cx.metrics.tls_handshake(true);
            let transport = (Transport::Tls, client);
            serve_connection(tls, peer, transport, cx, shutdown, held).await
        }
        Ok(None) => tracing::debug!(peer = %peer.addr, "answered a TLS-ALPN-01 challenge"),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            cx.metrics.tls_handshake(false);
            tracing::debug!(peer = %peer.addr, "TLS handshake timed out")
        }
        Err(e) => {
            cx.metrics.tls_handshake(false);
            tracing::debug!(peer = %peer.addr, error = %e, "TLS handshake failed")
        }
    }
}

/// `step` of a handshake, failed with `TimedOut` when `deadline` passes first.
async fn bounded<T>(
    deadline: Instant,
    step: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(done) => done,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}
