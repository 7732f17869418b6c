//! The admin listener: `/live` and `/ready` for orchestrators (metrics join it in the
//! observability issue). Loopback-only unless `listen.admin_allow` names other peers.

use crate::state::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the admin endpoints until shutdown.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let answer = answer(&shared, peer, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with error");
            }
        });
    }
}

fn answer(shared: &Shared, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let state = shared.load();
    let listen = &state.config.listen;
    let ip = peer.ip().to_canonical();
    let allowed = if listen.admin_allow.is_empty() {
        ip.is_loopback()
    } else {
        listen.admin_allow.iter().any(|net| net.contains(&ip))
    };
    if !allowed {
        return text(StatusCode::FORBIDDEN, "forbidden\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => {
            let missing: Vec<&str> = state
                .upstreams
                .iter()
                .filter(|(_, pool)| pool.spec().required && !pool.has_healthy())
                .map(|(name, _)| name.as_str())
                .collect();
            if missing.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let body = format!(
                    "not ready: no healthy server in upstream {}\n",
                    missing.join(", ")
                );
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live or /ready\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
