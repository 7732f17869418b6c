//! The admin listener: `/live` and `/ready` for orchestrators, `/metrics` for Prometheus,
//! `/config` for people, `/cluster` (the members `[cluster]`'s heartbeat last read, as JSON),
//! `POST /reload`, and `POST /acme/self-test/<token>` for
//! `gatehouse certs doctor` (serve an HTTP-01 test token for a while).
//!
//! A closed door: loopback peers only unless `listen.admin_allow` names others; requests
//! addressed to its own names only, and no cross-origin `POST` (`guard`); `[server] timeouts`
//! `header_read` and `idle` (`conn`); at most `MAX_CONNECTIONS` at once. `client` is the other
//! side, for `gatehouse health` (`probe`) and `gatehouse reload`.

pub mod client;
mod conn;
mod guard;
pub mod probe;

use crate::http::ConnContext;
use crate::metrics::Scrape;
use crate::middleware::Reason;
use crate::reload::{Outcome, Trigger};
use crate::state::RuntimeState;
use bytes::Bytes;
use conn::{Deadlines, Noticed, Watchdog};
use guard::{Names, Refusal};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

/// Connections from allowed peers served at once: probes, a scraper and an operator need a
/// handful; beyond it a new connection is closed at once (a probe retries).
pub const MAX_CONNECTIONS: usize = 16;
/// Connections from refused peers served at once (each only gets its `403`), counted apart so
/// that they cannot crowd out the allowed peers' probes.
pub const MAX_REFUSED: usize = 4;

/// Serves the admin endpoints until shutdown.
pub async fn serve(
    listener: TcpListener,
    cx: Arc<ConnContext>,
    reload: mpsc::Sender<Trigger>,
    mut shutdown: watch::Receiver<bool>,
) {
    let allowed_slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refused_slots = Arc::new(Semaphore::new(MAX_REFUSED));
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
        let slots = if peer_allowed(&cx, peer) {
            &allowed_slots
        } else {
            &refused_slots
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection closed: too many open");
            continue;
        };
        tokio::spawn(connection(stream, peer, cx.clone(), reload.clone(), slot));
    }
}

/// One connection, until the client closes it or a deadline passes; it holds `_slot` till then.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    cx: Arc<ConnContext>,
    reload: mpsc::Sender<Trigger>,
    _slot: OwnedSemaphorePermit,
) {
    let Ok(local) = stream.local_addr().map(|a| a.ip()) else {
        return;
    };
    let deadlines = {
        let state = cx.shared.load();
        let t = &state.config.server.timeouts;
        Deadlines::new(t.header_read, t.idle)
    };
    let busy = deadlines.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (cx, reload, busy) = (cx.clone(), reload.clone(), busy.busy());
        async move {
            let resp = respond(&cx, &reload, (peer, local), &req).await;
            drop(busy);
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(Noticed::new(stream, deadlines.clone()));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    tokio::select! {
        // the connection first: the watchdog reads the deadlines it has just moved
        biased;
        ended = conn => if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "admin connection ended with error");
        },
        expiry = Watchdog::new(deadlines) => {
            tracing::debug!(%peer, ?expiry, "admin connection closed: timed out");
        }
    }
}

/// Who may ask, then what: `POST /reload`, or one of the `GET` endpoints. A refused request is
/// answered and its connection closed.
async fn respond(
    cx: &ConnContext,
    reload: &mpsc::Sender<Trigger>,
    (peer, local): (SocketAddr, IpAddr),
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Err(refusal) = admitted(cx, peer, local, req) {
        tracing::debug!(%peer, ?refusal, "admin request refused");
        let mut resp = text(refusal.status(), refusal.message().into());
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    if req.method() == Method::POST && req.uri().path() == "/reload" {
        return post_reload(reload).await;
    }
    if let Some(token) = req.uri().path().strip_prefix("/acme/self-test/") {
        if req.method() == Method::POST {
            return self_test(cx, token);
        }
    }
    answer(cx, req)
}

fn admitted(
    cx: &ConnContext,
    peer: SocketAddr,
    local: IpAddr,
    req: &Request<Incoming>,
) -> Result<(), Refusal> {
    if !peer_allowed(cx, peer) {
        return Err(Refusal::Peer);
    }
    let state = cx.shared.load();
    let extra = &state.config.listen.admin_hosts;
    guard::check(req, &Names { local, extra })
}

fn peer_allowed(cx: &ConnContext, peer: SocketAddr) -> bool {
    let state = cx.shared.load();
    guard::peer_allowed(&state.config.listen.admin_allow, peer.ip())
}

/// `POST /reload`: 200 with what changed, 200 "unchanged", or 400 with why it was refused.
async fn post_reload(reload: &mpsc::Sender<Trigger>) -> Response<Full<Bytes>> {
    let (tx, rx) = oneshot::channel();
    if reload.send(Trigger::Admin(tx)).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "reload task gone\n".into());
    }
    match rx.await {
        Ok(Outcome::Applied(summary)) => text(StatusCode::OK, format!("reloaded: {summary}\n")),
        Ok(Outcome::Unchanged) => text(StatusCode::OK, "unchanged\n".into()),
        Ok(Outcome::Rejected(why)) => text(
            StatusCode::BAD_REQUEST,
            format!("rejected; the running config stays:\n{why}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "reload task gone\n".into()),
    }
}

/// `POST /acme/self-test/<token>`: answer the token on the HTTP listeners for a while, so that
/// `gatehouse certs doctor` can fetch it by name while this instance holds `[listen] http`.
fn self_test(cx: &ConnContext, token: &str) -> Response<Full<Bytes>> {
    use crate::acme::doctor;
    if doctor::serve_self_test(&cx.challenges, token) {
        let ttl = doctor::SELF_TEST_TTL;
        text(
            StatusCode::OK,
            format!("serving the test token for {ttl:?}\n"),
        )
    } else {
        text(
            StatusCode::BAD_REQUEST,
            "a token is 16 to 128 letters, digits, `-` or `_`\n".into(),
        )
    }
}

fn answer(cx: &ConnContext, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let state = cx.shared.load();
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
        "/metrics" => metrics(cx, &state),
        "/cluster" => cluster(&state),
        // the validated config as the proxy uses it; `Eab` and other secrets print redacted
        "/config" => text(StatusCode::OK, format!("{:#?}\n", state.config)),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready, /metrics, /config or /cluster\n".into(),
        ),
    }
}

/// `/cluster`: the heartbeat's last view, from memory (the store is not asked here).
fn cluster(state: &RuntimeState) -> Response<Full<Bytes>> {
    let Some(membership) = &state.cluster else {
        return text(
            StatusCode::NOT_FOUND,
            "no [cluster] in the config: this instance runs alone\n".into(),
        );
    };
    match serde_json::to_string_pretty(&*membership.view()) {
        Ok(mut body) => {
            body.push('\n');
            let mut resp = text(StatusCode::OK, body);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// The Prometheus text format, with the state kept elsewhere copied in first.
fn metrics(cx: &ConnContext, state: &RuntimeState) -> Response<Full<Bytes>> {
    let body = state.metrics.render(|scrape| fill(scrape, cx, state));
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn fill(scrape: &Scrape<'_>, cx: &ConnContext, state: &RuntimeState) {
    let servers: Vec<(String, String, bool)> = state
        .upstreams
        .iter()
        .flat_map(|(name, pool)| {
            pool.backends()
                .into_iter()
                .map(move |b| (name.clone(), b.addr.to_string(), b.health().is_up()))
        })
        .collect();
    scrape.upstream_health(&servers);
    let certs: Vec<(String, i64)> = state
        .certs
        .iter()
        .filter_map(|(name, slot)| {
            let key = slot.load_full()?;
            let leaf = key.cert.first()?;
            let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
            Some((name.clone(), cert.validity().not_after.timestamp()))
        })
        .collect();
    scrape.certificate_expiry(&certs);
    let refused: Vec<(&str, u64)> = Reason::ALL
        .iter()
        .map(|r| (r.as_str(), cx.rejections.count(*r)))
        .collect();
    scrape.rejections(&refused);
    scrape.access_log_dropped(state.access_log.dropped());
    scrape.tasks_alive(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    );
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
