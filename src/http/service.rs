//! The root service: one request from arrival to response head. Order: snapshot, request id,
//! client address, route, the route's checks, then the route's action (respond, redirect,
//! files or proxy, and for a proxy route with `accel_redirect` the route its upstream's
//! `X-Accel-Redirect` names), or for a preflight on a route with `cors` the CORS answer; that
//! route's CORS headers then go on whatever answer resulted. A route with `basic_auth` or
//! `forward_auth` authenticates the request between its checks and its action.

use super::body::{
    discard, BodyFault, BodyRules, BodySlot, Completion, CountedBody, ProxyBody, Reads, RequestLog,
};
use super::canonical::{self, Addrs};
use super::client_body::ClientBody;
use super::conn::{ConnState, InFlight};
use super::grpc;
use super::hygiene;
use super::response::ProxyError;
use super::rewrite::{ClientOrigin, Rewrite, UpstreamSelf};
use super::{ConnContext, Transport};
use crate::acme;
use crate::config::RouteHeaders;
use crate::config::{Coding, Redirect, Respond, ServerLimits};
use crate::error_pages::{self, Page, Pages};
use crate::files::{self, accel, FileBody, FileError, FileRequest, FilesRoute};
use crate::middleware::basic_auth::{BasicGuard, Denied};
use crate::middleware::cors::Verdict;
use crate::middleware::encode::budget::{EncoderBudget, EncoderTicket};
use crate::middleware::encode::{self, body::Encoder, BodyShape, Decision, Negotiated};
use crate::middleware::forward_auth;
use crate::middleware::header_rules::{self, Expanded, ResponseRules};
use crate::middleware::{rate_limit, Refusal, RouteAuth, RoutePolicy};
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::routing;
use crate::state::{RouteAction, RuntimeState};
use crate::template::Vars;
use crate::tls::client::{ClientCert, ClientTls};
use crate::upstream::conn::{RespBody, Sender};
use crate::upstream::{forward, ActiveGuard, BackendAddr, Outcome, UpstreamPool};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::SizeHint;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

/// The standard methods Gatehouse forwards (any upper-case extension method passes too).
const PASSED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

#[derive(Clone)]
pub struct ProxyService {
    pub cx: Arc<ConnContext>,
    /// Whether the peer may speak for others through `X-Forwarded-For` if trusted: not on a
    /// PROXY protocol `LOCAL`/`UNKNOWN` connection.
    pub vouches: bool,
    pub conn: Arc<ConnState>,
    pub transport: Transport,
    /// What the TLS handshake verified, on a connection made with a `client_auth` site's
    /// config; `None` for every other connection.
    pub client: Option<Arc<ClientTls>>,
}

/// Where a request arrived: its canonical host and port, the listener, and the client
/// certificate verified for its site (`None` unless the site has `client_auth`).
type On<'a> = (&'a str, Option<u16>, Transport, Option<&'a ClientCert>);

/// Where a routed request goes: the snapshot, the site the router chose, the request's
/// canonical host and port.
struct Dispatch<'s, 'r> {
    state: &'s RuntimeState,
    site: usize,
    host: &'r str,
    port: Option<u16>,
    /// A hop-by-hop header is present (`Canonical::hop_by_hop`).
    hop_by_hop: bool,
    log: &'r Arc<RequestLog>,
    /// For the `{tls.client.*}` placeholders.
    client_cert: Option<&'r ClientCert>,
}

/// What a route's action produced, before it is wrapped for the client.
enum Answer {
    /// With the connection it came on, unless that one must not be reused, and the limits on
    /// the reads of its body (the route's `upstream_response`, a gRPC call's deadline).
    Upstream(Response<RespBody>, ActiveGuard, Option<Sender>, Reads),
    Local(Response<Bytes>),
    /// From a `files` route.
    File(Response<FileBody>),
}

impl Answer {
    fn headers_mut(&mut self) -> &mut http::HeaderMap {
        match self {
            Answer::Upstream(resp, ..) => resp.headers_mut(),
            Answer::Local(resp) => resp.headers_mut(),
            Answer::File(resp) => resp.headers_mut(),
        }
    }
}

impl ProxyService {
    // not `async fn`: see the comment on the block
    #[allow(clippy::manual_async_fn)]
    pub fn call(
        self,
        mut req: Request<ClientBody>,
    ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static
    {
        // an `async` block, not an `async fn`: the block holds `self` and `req` where they were
        // moved to, where an `async fn` keeps its arguments twice (as given, and moved into
        // its body's locals), a copy of ~400 bytes per request and as much on every future
        // that holds this one
        async move {
            let in_flight = self.conn.begin();
            let version = req.version();
            // served by the native engine, which can write the answer's `X-Request-Id` itself
            let native = matches!(req.body(), ClientBody::Native(_));
            // gRPC runs over HTTP/2 only: an HTTP/1.1 request costs no look at its content type
            let grpc = version == Version::HTTP_2 && grpc::is_call(req.headers());
            let state = self.cx.shared.load();
            let server = &state.config.server;
            let peer = self.conn.peer.ip().to_canonical();
            let addrs = Addrs::new(req.headers(), peer, &server.trusted_proxies, self.vouches);
            // inline for the native engine, which writes it beside its maps; one shared value
            // for the others, whose maps all carry it
            let request_id = RequestId::of(req.headers(), !native);
            // the one place the request is made canonical (once its head passed the framing and
            // size checks): everything below reads only that
            let canonical = screen(&req, &server.limits).and_then(|()| {
                canonical::request(&mut req, server, addrs.peer_trusted).map_err(ProxyError::from)
            });
            let (canonical, screened) = match canonical {
                Ok(c) => (Some(c), Ok(())),
                Err(e) => (None, Err(e)),
            };
            // the authority moves into the log; the host is read back from there
            let (authority, host_len, port, hop_by_hop) = match canonical {
                Some(c) => (c.authority, c.host_len, c.port, c.hop_by_hop),
                None => (None, 0, None, false),
            };
            let routable = screened.is_ok();
            let log = Arc::new(RequestLog::new(
                addrs.client,
                &req,
                authority,
                request_id,
                state.access_log.clone(),
            ));
            let host = canonical::host_of(log.host.as_ref(), host_len);
            let site = routable.then(|| state.router.site_for(host)).flatten();
            // only a `client_auth` site's requests see the certificate, and only one verified for it
            let client_cert = site.and_then(|s| state.sites[s].client_cert(self.client.as_deref()));
            let hsts = match (self.transport, site) {
                (Transport::Tls, Some(site)) => state.sites[site].hsts.clone(),
                _ => None,
            };
            // set once a route with `cors` is found; it then decorates whatever answer follows
            let mut cors = None;
            // the route matched, whose error pages an error answer gets
            let mut routed = None;
            // `Set-Cookie`s of a `forward_auth` service that let the request through
            let mut auth_cookies = Vec::new();
            // the site's (or the server's) response rules, until `dispatch` finds the route
            let mut response_rules = ResponseRules::new(match site {
                Some(site) => &state.sites[site].response_headers,
                None => &server.response_headers,
            });
            if response_rules.needs_vars() {
                let on = (host, port, self.transport, client_cert);
                let client = (addrs.client, self.client_value(addrs.client));
                let vars = placeholders(
                    (req.uri(), req.headers()),
                    client,
                    on,
                    &log.request_id,
                    None,
                );
                response_rules.expand(&vars, &state.metrics.header_values_dropped);
            }
            let answer = match (screened, site) {
                (Err(refused), _) => Err(refused),
                // a plain site asked for through another site's TLS connection (SNI != Host), or a
                // `client_auth` site on a connection whose handshake did not verify a certificate
                // against its CA (another site's, coalesced by HTTP/2)
                (_, Some(site))
                    if self.transport == Transport::Tls
                        && !state.sites[site].served_over(self.client.as_deref()) =>
                {
                    Err(match state.sites[site].tls {
                        true => ProxyError::MisdirectedCert,
                        false => ProxyError::Misdirected,
                    })
                }
                (_, Some(site)) => {
                    let to = Dispatch {
                        state: &state,
                        site,
                        host,
                        port,
                        hop_by_hop,
                        log: &log,
                        client_cert,
                    };
                    self.dispatch(
                        to,
                        req,
                        addrs,
                        (
                            &mut cors,
                            &mut response_rules,
                            &mut routed,
                            &mut auth_cookies,
                        ),
                    )
                    .await
                }
                // a challenge for a name no site here serves: another instance of the cluster
                // may have placed the order (`[cluster]`), and the CA reached this one
                (_, None) if self.transport == Transport::Plain => {
                    match self.challenge_answer(req.uri().path()).await {
                        Some(answer) => Ok((Answer::Local(answer), None)),
                        None => Err(ProxyError::NoRoute),
                    }
                }
                (_, None) => Err(ProxyError::NoRoute),
            };
            let (answer, encode) = match answer {
                Ok((answer, encode)) => (Ok(answer), encode),
                Err(err) => (Err(err), None),
            };
            if !state.unrouted_metrics.is_empty() && log.metrics.get().is_none() {
                let index = site.unwrap_or(state.unrouted_metrics.len() - 1);
                if let Some(metrics) = state.unrouted_metrics.get(index) {
                    let _ = log.metrics.set(metrics.clone());
                }
            }
            let mut response = match answer {
                Ok(Answer::Upstream(resp, active, conn, read_timeout)) => {
                    match intercepts(&state, routed, resp.status()) {
                        Some(page) => intercept(resp, page, (active, conn), log, in_flight),
                        None => {
                            let (parts, body) = resp.into_parts();
                            let status = parts.status.as_u16();
                            let done = Completion::new(log, status, Some(active), in_flight);
                            let body = ProxyBody::upstream(body, conn, read_timeout, done);
                            Response::from_parts(parts, body)
                        }
                    }
                }
                Ok(Answer::Local(resp)) => {
                    let (parts, body) = resp.into_parts();
                    let done = Completion::new(log, parts.status.as_u16(), None, in_flight);
                    Response::from_parts(parts, ProxyBody::full(body, done))
                }
                Ok(Answer::File(resp)) => {
                    let (parts, body) = resp.into_parts();
                    let done = Completion::new(log, parts.status.as_u16(), None, in_flight);
                    Response::from_parts(parts, ProxyBody::file(body, done))
                }
                Err(err) => {
                    let pages = match routed.and_then(|id| state.routes.get(id)) {
                        Some(route) => route.error_pages.as_deref(),
                        None => state.error_pages.unrouted(site),
                    };
                    self.refuse(&err, (log, in_flight), (version, grpc), pages)
                }
            };
            if let Some(negotiated) = encode {
                let max = state.config.server.limits.max_encoders;
                response = compress(response, &negotiated, (&self.cx.encoders, max));
            }
            // the native engine writes it from the log where nothing below reads or replaces it
            // in the map (response rules may); HTTP/2 marks it never indexed
            match native && response_rules.is_empty() {
                true => response.body_mut().leave_request_id(),
                false => {
                    let id = never_indexed(response.body().request_id().value());
                    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
                }
            }
            if let Some(hsts) = hsts {
                response
                    .headers_mut()
                    .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
            }
            if let Some(cors) = &cors {
                cors.apply(&mut response);
            }
            for cookie in auth_cookies {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response_rules.apply(response.headers_mut());
            Ok(response)
        }
    }

    /// The answer to an HTTP-01 challenge at `path`: this instance's, else (with `[cluster]`)
    /// another instance's from the store. Other paths cost a prefix test.
    async fn challenge_answer(&self, path: &str) -> Option<Response<Bytes>> {
        let token = path.strip_prefix(acme::HTTP01_PREFIX)?;
        let key_auth = self.cx.challenges.find_http01(token).await?;
        Some(acme_answer(key_auth))
    }

    /// The connection's formatted peer address when `client` is the peer (not a client a
    /// trusted proxy spoke for), for `{client_ip}` without formatting it again.
    fn client_value(&self, client: IpAddr) -> Option<&HeaderValue> {
        (client == self.conn.peer.ip().to_canonical()).then_some(&self.conn.peer_ip)
    }

    /// Routes the request and runs its route's checks and action; the answer comes with what the
    /// request asked for in compression if the route does it. `cors` is set when the route has
    /// `cors`, and the response rules become the route's, before any check can refuse, so
    /// refusals carry the route's CORS headers and header rules too.
    /// `routed` is set to the route matched, whose error pages refusals get; `auth_cookies` to
    /// the cookies a `forward_auth` service set when it let the request through.
    #[allow(clippy::manual_async_fn)] // an async block holds the arguments once (see `call`)
    fn dispatch<'a, 's, 'd, 'r>(
        &'a self,
        to: Dispatch<'s, 'd>,
        mut req: Request<ClientBody>,
        addrs: Addrs,
        (cors, response_rules, routed, auth_cookies): (
            &'r mut Option<Verdict<'s>>,
            &'r mut ResponseRules<'s>,
            &'r mut Option<usize>,
            &'r mut Vec<HeaderValue>,
        ),
    ) -> impl std::future::Future<Output = Result<(Answer, Option<Negotiated<'s>>), ProxyError>>
           + use<'a, 's, 'd, 'r> {
        async move {
            let Dispatch {
                state,
                site,
                host,
                port,
                hop_by_hop,
                log,
                client_cert,
            } = to;
            let path = req.uri().path();
            if self.transport == Transport::Plain {
                // only a token being answered now is served over plain HTTP on an HTTPS-only site
                if let Some(answer) = self.challenge_answer(path).await {
                    return Ok((Answer::Local(answer), None));
                }
                if state.sites[site].redirect_https {
                    let redirect = https_redirect(req.uri(), host, self.cx.https_port());
                    return Ok((Answer::Local(redirect), None));
                }
            }
            let matched = {
                let by = routing::Request::new(req.method(), req.uri(), req.headers());
                state
                    .router
                    .route_in(site, &by)
                    .ok_or(ProxyError::NoRoute)?
            };
            let route = state.routes.get(matched.route).ok_or(ProxyError::NoRoute)?;
            // reachable only through `X-Accel-Redirect` (nginx `internal`): to a client, no route
            if route.internal {
                return Err(ProxyError::NoRoute);
            }
            *routed = Some(matched.route);
            if let Some(metrics) = &route.metrics {
                let _ = log.metrics.set(metrics.clone());
            }
            // made only for rules with placeholders
            // a macro, not a closure: the placeholders borrow from the request as it is when they
            // are made, and `authenticate` may change its headers in between
            macro_rules! vars {
                ($req:expr) => {
                    placeholders(
                        ($req.uri(), $req.headers()),
                        (addrs.client, self.client_value(addrs.client)),
                        (host, port, self.transport, client_cert),
                        &log.request_id,
                        matched.captures.as_ref(),
                    )
                };
            }
            let (headers, dropped) = (&route.headers, &state.metrics.header_values_dropped);
            if !headers.response_as_site {
                *response_rules = ResponseRules::new(&headers.response);
                if response_rules.needs_vars() {
                    response_rules.expand(&vars!(req), dropped);
                }
            }
            let policy = &route.policy;
            self.conn.hold_to_send_rate(policy.send_min_rate);
            *cors = route
                .cors
                .as_ref()
                .map(|c| c.judge(req.method(), req.headers()));
            let key = rate_limit::client_key(addrs.client, state.config.server.limits.ipv6_prefix);
            let client = addrs.known.then_some(addrs.client);
            // one branch for routes without a global limit; boxed, as it may wait for the store
            let checked = if policy.global {
                Box::pin(policy.check_global(client, key, req.method(), req.headers())).await
            } else {
                policy.check(client, key, req.method(), req.headers())
            };
            checked.map_err(|refusal| match refusal {
                Refusal::Denied => ProxyError::Forbidden,
                Refusal::RateLimited(after) => ProxyError::TooManyRequests(after.0),
                Refusal::TooLarge(e) => ProxyError::BodyTooLarge(e.limit),
            })?;
            // a preflight is Gatehouse's to answer, whatever the route's action
            if let Some(preflight) = cors.as_ref().and_then(Verdict::preflight) {
                return preflight
                    .map(|()| (Answer::Local(no_content()), None))
                    .map_err(ProxyError::CorsRefused);
            }
            // after the preflight, which carries no credentials; boxed, as the proxying part below
            if let Some(auth) = &route.auth {
                let at = AuthAt {
                    policy,
                    key,
                    host: log.host.as_ref(),
                    client: addrs.client,
                    request_id: &log.request_id,
                };
                match Box::pin(self.authenticate(auth, &mut req, at)).await? {
                    Passed::Through(cookies) => *auth_cookies = cookies,
                    Passed::Answered(resp) => return Ok((Answer::Local(resp), None)),
                }
            }
            let encode = route
                .encode
                .as_ref()
                .and_then(|rule| Negotiated::new(rule, req.method(), req.headers()));
            let answer = match &route.action {
                RouteAction::Respond(r) => Answer::Local(respond(r)),
                RouteAction::Redirect(r) => Answer::Local(redirect(r, &vars!(req))),
                RouteAction::Files(files) => {
                    let file = file_request(&req, matched.matched_len);
                    Answer::File(serve_file(files, file).await?)
                }
                RouteAction::Proxy(route) => {
                    if let Some(files) = &route.files_first {
                        let file = file_request(&req, matched.matched_len);
                        if let Some(resp) = file_first(files, file).await? {
                            return Ok((Answer::File(resp), encode));
                        }
                    }
                    // boxed: it waits across the upstream exchange, in a future every connection
                    // holds room for
                    let kept = route
                        .accel_redirect
                        .then(|| Box::new(accel::Kept::of(&req)));
                    let addrs_client = addrs.client;
                    // placeholders take the request as the client sent it (nginx `$http_*`), before
                    // Gatehouse's own headers are set and before its target is rewritten
                    let expanded = match headers.request.templates {
                        0 => Expanded::new(),
                        _ => header_rules::expand(&headers.request, &vars!(req), dropped),
                    };
                    let rewrite = &route.rewrite;
                    // `matched` moves in: nothing of the routing is kept across the await below
                    let target = {
                        let place = (host, port, self.transport, client_cert);
                        let rules = state.config.server.paths;
                        upstream_target(rewrite, &req, matched, (addrs, place, log), rules)
                    };
                    if let Some(target) = target? {
                        *req.uri_mut() = Uri::from(target);
                    }
                    let hop = Hop {
                        proto: self.transport.scheme(),
                        port,
                        hop_by_hop,
                        policy,
                        pool: &route.pool,
                        rewrite,
                        addrs,
                        peer_ip: &self.conn.peer_ip,
                        log,
                        headers,
                        expanded,
                        deadline: None,
                        h2_stream: false,
                    };
                    // not boxed: hyper's slot for this service's future is held only while a
                    // request is in flight (an idle HTTP/1.1 connection is parked out of hyper
                    // after `PARK_AFTER_MS`, an HTTP/2 stream's task ends with it), and a box per
                    // request cost an allocation, a free and a copy of the future
                    let answer = self.proxy(hop, req).await?;
                    match kept {
                        Some(kept) => {
                            let at = (state, site);
                            let on = (host, port, self.transport, client_cert);
                            let client = (addrs_client, on, &log.request_id);
                            return Box::pin(follow_accel(at, client, kept, answer, encode)).await;
                        }
                        None => answer,
                    }
                }
            };
            Ok((answer, encode))
        }
    }

    /// Sends the request upstream, on another server when an attempt failed safely (see
    /// `Retry`), and reports each attempt's outcome to the pool's passive health.
    #[allow(clippy::manual_async_fn)] // an async block holds the arguments once (see `call`)
    fn proxy<'a, 'h>(
        &'a self,
        mut hop: Hop<'h>,
        mut req: Request<ClientBody>,
    ) -> impl std::future::Future<Output = Result<Answer, ProxyError>> + use<'a, 'h> {
        async move {
            let upgrade = forward::requested_upgrade(req.headers())
                .filter(|_| req.version() == Version::HTTP_11);
            let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
            let (mut parts, body) = req.into_parts();
            hop.h2_stream = parts.version == Version::HTTP_2;
            // a gRPC call's deadline caps the waits for its answer (only HTTP/2 carries one)
            hop.deadline = match parts.version {
                Version::HTTP_2 => {
                    grpc::timeout(&parts.headers).map(|t| tokio::time::Instant::now() + t)
                }
                _ => None,
            };
            let port = match (hop.port, self.transport) {
                (Some(port), _) => self.conn.port_header(port),
                (None, Transport::Tls) => HeaderValue::from_static("443"),
                (None, Transport::Plain) => HeaderValue::from_static("80"),
            };
            // filled in place (a return would copy it, ~250 bytes)
            let mut added = forward::Added::default();
            {
                // dropped here, not kept in this future across its awaits
                let mut expanded = std::mem::take(&mut hop.expanded);
                let headers = &mut parts.headers;
                let asked = (upgrade.clone(), port);
                prepare_request_headers(headers, &hop, asked, &mut expanded, &mut added);
                // after the hop-by-hop strip, which would take the `Transfer-Encoding` it may add
                hygiene::regenerate_framing(headers, &http_body::Body::size_hint(&body));
            }
            parts.version = Version::HTTP_11;
            let retries = if upgrade.is_some() {
                0
            } else {
                hop.pool.spec().retries
            };
            let mut retry = Retry::new(&parts.method, body, retries);
            hop.pool.deposit_retry_share();
            let mut tried: Vec<BackendAddr> = Vec::new();
            let mut failed = None;
            let (mut resp, conn, active) = loop {
                let (active, servers) = match hop.pool.pick(hop.addrs.client, &tried) {
                    Ok(picked) => picked,
                    // no server left: the last attempt's error, or none was healthy at all
                    Err(none) => {
                        let name = hop.pool.name.clone();
                        return Err(failed.unwrap_or(ProxyError::NoHealthy(name, none.retry_after)));
                    }
                };
                // no copy of the head when no other attempt can follow (a single server included)
                let last = tried.len() >= retries as usize || tried.len() + 1 >= servers;
                let head = if last {
                    std::mem::replace(&mut parts, Request::new(()).into_parts().0)
                } else {
                    copy_head(&parts)
                };
                match self
                    .attempt(&hop, (head, &added), &active, &mut retry)
                    .await
                {
                    Ok((resp, conn)) => break (resp, conn, active),
                    Err(err) if !last && retry.may_retry(&err) && hop.pool.withdraw_retry() => {
                        tracing::debug!(upstream = %hop.pool.name, server = %active.backend().addr, error = %err, "retrying on another server");
                        tried.push(active.backend().addr.clone());
                        failed = Some(err);
                    }
                    Err(err) => return Err(err),
                }
            };
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() {
                // nothing asked to switch: what follows on the connection is no HTTP we can frame
                let err = "101 Switching Protocols to a request that asked for no upgrade";
                return Err(ProxyError::UpstreamMalformed(err.into()));
            }
            map_location(&hop, &mut resp, &active);
            let says = match resp.body().stripped() {
                Some(says) => says,
                None => forward::strip_hop_by_hop(resp.headers_mut()),
            };
            if says.transfer_encoding && !says.only_chunked {
                // hyper read the body by its last coding (`chunked`) or to the close, and another
                // coding would reach the client undone and unannounced (nginx: 502 as well)
                let err = "Transfer-Encoding other than a lone `chunked`";
                return Err(ProxyError::UpstreamMalformed(err.into()));
            }
            // both framings (RFC 9112 6.3): the body was read by `Transfer-Encoding`, so the length
            // goes, and so does the connection: a peer that sends both may mean something else by
            // them than we did, and the next response on it could start anywhere
            let both = says.transfer_encoding
                && resp.headers_mut().remove(header::CONTENT_LENGTH).is_some();
            // an upgraded connection is the tunnel's; one the response closes is no use
            let reusable = resp.status() != StatusCode::SWITCHING_PROTOCOLS
                && says.keeps_alive(resp.version())
                && !both;
            if resp.version() == Version::HTTP_10 {
                // a proxy speaks its own version (RFC 9110 6.2): HTTP/1.1 framing from here on
                *resp.version_mut() = Version::HTTP_11;
            }
            if let (StatusCode::SWITCHING_PROTOCOLS, Some(proto), Some(client_upgrade)) =
                (resp.status(), upgrade, client_upgrade)
            {
                forward::restore_upgrade(resp.headers_mut(), proto);
                self.tunnel(client_upgrade, crate::upstream::conn::upgrade(&mut resp));
            }
            let read_timeout = Reads {
                timeout: hop.policy.upstream_response,
                deadline: hop.deadline,
            };
            Ok(Answer::Upstream(
                resp,
                active,
                reusable.then_some(conn),
                read_timeout,
            ))
        }
    }

    /// One attempt on `active`, its outcome reported to passive health.
    ///
    /// An `async` block rather than an `async fn`, so the head is held once (see `call`).
    #[allow(clippy::manual_async_fn)]
    fn attempt<'a, 'h>(
        &'a self,
        hop: &'a Hop<'h>,
        (mut head, added): (http::request::Parts, &'a forward::Added),
        active: &'a ActiveGuard,
        retry: &'a mut Retry,
    ) -> impl std::future::Future<Output = Result<(Response<RespBody>, Sender), ProxyError>> + use<'a, 'h>
    {
        async move {
            head.uri = upstream_uri(&head.uri, &head.method, active)?;
            let upstream_req = Request::from_parts(head, retry.body(hop.log, hop.policy));
            let timeout = hop.policy.upstream_response;
            let (log, conn, h2_stream) = (hop.log.clone(), &self.conn, hop.h2_stream);
            // the clock starts once the whole body is sent: a slow upload is not a slow upstream;
            // a gRPC call's deadline runs from the start (boxed: only such calls pay for its timer)
            let deadline = hop
                .deadline
                .map(|at| Box::pin(tokio::time::sleep_until(at)));
            let too_late = async move {
                let answer_time = async {
                    log.body_sent().await;
                    match h2_stream {
                        true => tokio::time::sleep(timeout).await,
                        false => conn.response_due(timeout).await,
                    }
                };
                match deadline {
                    None => {
                        answer_time.await;
                        ProxyError::ResponseTimeout
                    }
                    Some(deadline) => tokio::select! {
                        () = answer_time => ProxyError::ResponseTimeout,
                        () = deadline => ProxyError::DeadlineExceeded,
                    },
                }
            };
            // timed only for the upstream's latency histogram
            let started = hop.pool.timed().then(std::time::Instant::now);
            // pinned where they are made: `select!` would move both futures into its own tuple
            let connect = hop.policy.upstream_connect;
            let send = hop
                .pool
                .send(active.backend(), upstream_req, added, connect);
            tokio::pin!(send, too_late);
            let sent = tokio::select! {
                sent = &mut send => sent.map_err(|e| match hop.log.body_fault() {
                    Some(BodyFault::TooLarge) => ProxyError::BodyTooLarge(hop.policy.max_body.unwrap_or(0)),
                    Some(BodyFault::Stalled) => ProxyError::BodyTimeout,
                    Some(BodyFault::TooSlow) => ProxyError::BodyTooSlow(hop.policy.body_min_rate.map_or(0, |r| r.bytes_per_sec)),
                    Some(BodyFault::Malformed) => ProxyError::BadBody,
                    None => ProxyError::from_send(e),
                }),
                late = &mut too_late => Err(late),
            };
            let outcome = match &sent {
                Ok((resp, _)) if resp.status().is_server_error() => Outcome::ServerError,
                Ok(_) => Outcome::Success,
                Err(e) if e.is_upstream() => Outcome::Failure,
                Err(_) => Outcome::Success,
            };
            let took = started.filter(|_| sent.is_ok()).map(|at| at.elapsed());
            hop.pool.report(active.backend(), outcome, took);
            sent
        }
    }

    /// After a 101: the connection's own task copies bytes both ways between the two upgraded
    /// connections once hyper hands the client's over (see `http::tunnel`), so the tunnel keeps
    /// the connection's slot under the limits.
    fn tunnel(&self, client: hyper::upgrade::OnUpgrade, upstream: crate::upstream::conn::Upgrade) {
        self.conn
            .start_tunnel(super::tunnel::Pending { client, upstream });
    }
}

/// What `authenticate` needs of the request besides its head.
struct AuthAt<'a> {
    policy: &'a RoutePolicy,
    /// The client's rate-limit key, charged for a wrong password.
    key: IpAddr,
    /// The canonical authority.
    host: Option<&'a HeaderValue>,
    client: IpAddr,
    request_id: &'a RequestId,
}

/// A request `authenticate` let through, with the cookies for its answer; or the auth
/// service's own answer to it.
enum Passed {
    Through(Vec<HeaderValue>),
    Answered(Response<Bytes>),
}

impl ProxyService {
    /// A route's `basic_auth`, then its `forward_auth`. Let through, the request loses the
    /// headers its upstream must not trust from the client: `Authorization` (unless
    /// `forward_credentials`), the `copy_headers` (replaced by the auth service's).
    async fn authenticate(
        &self,
        auth: &RouteAuth,
        req: &mut Request<ClientBody>,
        at: AuthAt<'_>,
    ) -> Result<Passed, ProxyError> {
        if let Some(basic) = &auth.basic {
            if let Err(denied) = basic.check(req.headers()).await {
                return Err(self.basic_denied(basic, denied, req, &at));
            }
        }
        let mut cookies = Vec::new();
        if let Some(forward) = &auth.forward {
            let original = forward_auth::Original {
                method: req.method(),
                scheme: self.transport.scheme(),
                authority: at.host,
                uri: req.uri(),
                client: at.client,
                headers: req.headers(),
                request_id: at.request_id,
            };
            let allowed = match forward.ask(&original).await? {
                forward_auth::Verdict::Allow(allowed) => allowed,
                forward_auth::Verdict::Refuse(resp) => return Ok(Passed::Answered(resp)),
            };
            let headers = req.headers_mut();
            for name in forward.copy_headers() {
                headers.remove(name);
            }
            for (name, value) in allowed.copied {
                headers.append(name, value);
            }
            cookies = allowed.cookies;
        }
        if auth.basic.as_ref().is_some_and(|b| !b.forward_credentials) {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        Ok(Passed::Through(cookies))
    }

    /// The refusal for a `basic_auth` check that failed; a wrong password is charged to the
    /// client's rate limits.
    fn basic_denied(
        &self,
        basic: &BasicGuard,
        denied: Denied,
        req: &Request<ClientBody>,
        at: &AuthAt<'_>,
    ) -> ProxyError {
        let challenge = basic.challenge().clone();
        match denied {
            Denied::NoCredentials => ProxyError::Unauthorized {
                challenge,
                wrong: false,
            },
            Denied::Wrong => {
                at.policy
                    .charge_failure(at.key, req.method(), req.headers());
                ProxyError::Unauthorized {
                    challenge,
                    wrong: true,
                }
            }
            Denied::Busy => ProxyError::AuthBusy,
        }
    }
}

/// What a request needs to be sent again: its body kept aside until first read, and whether
/// its method is safe to repeat after the upstream may have seen it.
struct Retry {
    slot: Option<BodySlot>,
    hint: SizeHint,
    /// The body, when no retry can need it back.
    direct: Option<ClientBody>,
    idempotent: bool,
}

impl Retry {
    fn new(method: &http::Method, body: ClientBody, retries: u32) -> Retry {
        let hint = http_body::Body::size_hint(&body);
        let empty = http_body::Body::is_end_stream(&body);
        let (slot, direct) = match (retries, empty) {
            (0, _) => (None, Some(body)),
            (_, true) => (None, None),
            _ => (Some(Arc::new(std::sync::Mutex::new(Some(body)))), None),
        };
        Retry {
            slot,
            hint,
            direct,
            idempotent: matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            ),
        }
    }

    fn body(&mut self, log: &Arc<RequestLog>, policy: &RoutePolicy) -> CountedBody {
        let rules = BodyRules {
            limit: policy.max_body,
            timeout: policy.body_timeout,
            min_rate: policy.body_min_rate,
        };
        match self.direct.take() {
            Some(body) => CountedBody::new(body, log.clone(), rules),
            None => CountedBody::retryable(self.slot.clone(), self.hint, log.clone(), rules),
        }
    }

    /// Whether the body is still whole (never read, or empty).
    fn body_unsent(&self) -> bool {
        match &self.slot {
            Some(slot) => slot.lock().map(|b| b.is_some()).unwrap_or(false),
            None => self.direct.is_none(),
        }
    }

    /// A failed connect never reached the server; any other failure before a response may have,
    /// so only an idempotent request goes again. Either way the body must still be whole.
    fn may_retry(&self, err: &ProxyError) -> bool {
        let safe = match err {
            ProxyError::ConnectFailed(_) | ProxyError::ConnectTimeout => true,
            ProxyError::UpstreamFailed(_) | ProxyError::UpstreamMalformed(_) => self.idempotent,
            _ => false,
        };
        safe && self.body_unsent()
    }
}

/// The head for one attempt, copied so another attempt can still be made.
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

struct Hop<'a> {
    proto: &'static str,
    /// The canonical authority's port, if it names one (`X-Forwarded-Port`).
    port: Option<u16>,
    /// A hop-by-hop header is present: only then is the removal pass made.
    hop_by_hop: bool,
    policy: &'a RoutePolicy,
    pool: &'a UpstreamPool,
    /// The route's target rewriting, done already, and its `Location` mapping.
    rewrite: &'a Rewrite,
    addrs: Addrs,
    peer_ip: &'a HeaderValue,
    log: &'a Arc<RequestLog>,
    /// The route's header rules, `upstream_host`, `X-Forwarded-Prefix`.
    headers: &'a RouteHeaders,
    /// The request rules' placeholders, expanded (empty when they have none).
    expanded: Expanded,
    /// When a gRPC call's `grpc-timeout` runs out.
    deadline: Option<tokio::time::Instant>,
    /// An HTTP/2 stream, whose future runs in a task of its own: its waits need timers of their
    /// own (an HTTP/1.1 request's future runs in its connection's task, beside the watchdog).
    h2_stream: bool,
}

/// `port` is `X-Forwarded-Port`'s value. Gatehouse's own headers (`X-Forwarded-*`,
/// `X-Real-IP`, `X-Request-Id`) are kept in `added`, beside the map, when nothing reads them
/// there (see `forward::Added`), else go into it.
fn prepare_request_headers(
    headers: &mut http::HeaderMap,
    hop: &Hop<'_>,
    (upgrade, port): (Option<HeaderValue>, HeaderValue),
    expanded: &mut Expanded,
    added: &mut forward::Added,
) {
    if hop.hop_by_hop {
        // `te: trailers` says the client takes trailers (gRPC needs them): it goes on to an
        // HTTP/2 upstream, the one `te` value HTTP/2 carries (RFC 9113 8.2.2); an HTTP/1.1
        // upstream gets the request as before
        let h2 = hop.pool.spec().protocol != crate::config::Protocol::Http1;
        let trailers = h2 && forward::takes_trailers(headers);
        forward::strip_hop_by_hop(headers);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if let Some(proto) = upgrade {
        forward::restore_upgrade(headers, proto);
    }
    // `Host` is the canonical authority already (`canonical::request`)
    let Hop { addrs, log, .. } = hop;
    // from an untrusted peer the client is the peer, whose address is formatted once per
    // connection
    let real_ip = match (addrs.known, addrs.peer_trusted) {
        (false, _) => None,
        (true, false) => Some(hop.peer_ip.clone()),
        (true, true) => Some(forward::ip_header(addrs.client)),
    };
    let client = forward::Client {
        peer: hop.peer_ip,
        peer_trusted: addrs.peer_trusted,
        host: log.host.as_ref(),
        proto: hop.proto,
        real_ip,
        port,
        request_id: &log.request_id,
    };
    // beside the map only where nothing but the native client reads them: a rule reads and
    // may override any of them (it runs on the map), and hyper's clients write the map alone
    let beside = hop.headers.request.is_empty() && hop.pool.writes_added();
    added.set(headers, client, beside);
    // last: a rule may override any of the above but `Host` (`upstream_host`)
    header_rules::upstream_request(headers, hop.headers, expanded, addrs.peer_trusted);
}

/// The request target as the backend gets it: origin-form (`/path?query`, as the route's
/// `rewrite::Rewrite` made it), authority-form (the backend's address) for CONNECT.
fn upstream_uri(uri: &Uri, method: &Method, active: &ActiveGuard) -> Result<Uri, ProxyError> {
    if method == Method::CONNECT {
        return Uri::builder()
            .authority(active.backend().authority.clone())
            .build()
            .map_err(|_| ProxyError::BadTarget);
    }
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or(PathAndQuery::from_static("/"));
    Ok(Uri::from(path_and_query))
}

/// What placeholders expand to for a request (canonical by now) with `uri` and `headers`, from
/// `client` at `host` and `port` (the authority's, else the scheme's default); `captures` are a
/// regex route's. The one place a `Vars` is made.
fn placeholders<'v>(
    (uri, headers): (&'v Uri, &'v http::HeaderMap),
    (client, client_value): (IpAddr, Option<&'v HeaderValue>),
    (host, port, transport, client_cert): On<'v>,
    request_id: &'v RequestId,
    captures: Option<&'v regex::CaptureLocations>,
) -> Vars<'v> {
    Vars {
        client_ip: client,
        client_ip_value: client_value,
        host,
        port: port.unwrap_or(transport.default_port()),
        scheme: transport.scheme(),
        uri,
        request_id,
        headers,
        captures,
        client_cert,
    }
}

/// The target `rewrite` sends upstream instead of the canonical one, if any (see
/// `rewrite::Rewrite::target`); the placeholders are made only for a template.
fn upstream_target(
    rewrite: &Rewrite,
    req: &Request<ClientBody>,
    matched: routing::RouteMatch,
    (addrs, on, log): (Addrs, On<'_>, &RequestLog),
    rules: canonical::PathRules,
) -> Result<Option<PathAndQuery>, ProxyError> {
    if rewrite.keeps_target() {
        return Ok(None);
    }
    let vars = rewrite.uses_vars().then(|| {
        let (message, captures) = ((req.uri(), req.headers()), matched.captures.as_ref());
        placeholders(message, (addrs.client, None), on, &log.request_id, captures)
    });
    rewrite.target(req.uri(), matched.matched_len, vars.as_ref(), rules)
}

/// An upstream `Location` naming the upstream itself, mapped back to the client (see
/// `rewrite::Rewrite::map_location`).
fn map_location<B>(hop: &Hop<'_>, resp: &mut Response<B>, active: &ActiveGuard) {
    let Some(authority) = hop.log.host.as_ref() else {
        return;
    };
    if !hop.rewrite.maps_location(resp.status()) {
        return;
    }
    let spec = hop.pool.spec();
    let upstream = UpstreamSelf {
        scheme: if spec.tls.is_some() { "https" } else { "http" },
        // the `Host` sent upstream: `upstream_host`, else the canonical authority
        // (`prepare_request_headers`)
        host: Some(hop.headers.upstream_host.as_ref().unwrap_or(authority)),
        server: match active.backend().addr {
            BackendAddr::Tcp(addr) => Some(addr),
            BackendAddr::Unix(_) => None,
        },
        servers: &spec.servers,
    };
    let client = ClientOrigin {
        scheme: hop.proto,
        authority,
    };
    let status = resp.status();
    hop.rewrite
        .map_location(status, resp.headers_mut(), &upstream, &client);
}

/// A `files` route's answer; boxed for the same reason as the proxying part (the lookup waits
/// on the blocking pool). Nothing to serve is a `404`; a read that failed is logged and a `500`.
async fn serve_file(
    files: &Arc<FilesRoute>,
    req: FileRequest<'_>,
) -> Result<Response<FileBody>, ProxyError> {
    match Box::pin(files::serve(files, req)).await {
        Ok(resp) => Ok(resp),
        Err(FileError::NotFound) => Err(ProxyError::NoFile),
        Err(FileError::Io(e)) => {
            tracing::warn!(error = %e, path = req.path, "cannot serve a file");
            Err(ProxyError::FileFailed)
        }
    }
}

/// What a `files` folder reads of the request (its canonical path and query as they are now).
fn file_request<B>(req: &Request<B>, matched_len: usize) -> FileRequest<'_> {
    FileRequest {
        method: req.method(),
        headers: req.headers(),
        path: req.uri().path(),
        query: req.uri().query(),
        matched_len,
    }
}

/// A `files` folder tried before the route's upstream: the file's answer, or `None` when the
/// upstream is to answer: a method other than `GET`/`HEAD` (the application's, never a static
/// folder's), or a path that names nothing servable (a hidden or missing file, a folder
/// without its index).
async fn file_first(
    files: &Arc<FilesRoute>,
    req: FileRequest<'_>,
) -> Result<Option<Response<FileBody>>, ProxyError> {
    if !matches!(*req.method, Method::GET | Method::HEAD) {
        return Ok(None);
    }
    match serve_file(files, req).await {
        Ok(resp) => Ok(Some(resp)),
        Err(ProxyError::NoFile) => Ok(None),
        Err(e) => Err(e),
    }
}

/// With `accel_redirect`: an upstream answer carrying `X-Accel-Redirect` is replaced by what
/// the site's route for that path serves (see `files::accel`), with the upstream's body
/// discarded and a few of its headers kept; any other answer goes as it is. `at` is the
/// snapshot and the site; `client` what a redirect's placeholders need of
/// the request besides its kept headers.
async fn follow_accel<'s>(
    (state, site): (&'s RuntimeState, usize),
    client: (IpAddr, On<'_>, &RequestId),
    kept: Box<accel::Kept>,
    answer: Answer,
    encode: Option<Negotiated<'s>>,
) -> Result<(Answer, Option<Negotiated<'s>>), ProxyError> {
    let Answer::Upstream(resp, active, conn, read_timeout) = answer else {
        return Ok((answer, encode));
    };
    let target = match accel::target(resp.headers(), state.config.server.paths) {
        Some(target) if resp.status() != StatusCode::SWITCHING_PROTOCOLS => target,
        _ => {
            let answer = Answer::Upstream(resp, active, conn, read_timeout);
            return Ok((answer, encode));
        }
    };
    let (upstream, body) = resp.into_parts();
    super::body::discard(body, conn, &active);
    drop(active);
    let target = target?;
    let matched = state
        .router
        .route_in(
            site,
            &routing::Request {
                path: &target.path,
                query: target.query.as_deref(),
                method: &kept.method,
                headers: &kept.headers,
            },
        )
        .ok_or(ProxyError::NoRoute)?;
    let route = state.routes.get(matched.route).ok_or(ProxyError::NoRoute)?;
    let encode = route
        .encode
        .as_ref()
        .and_then(|rule| Negotiated::new(rule, &kept.method, &kept.headers));
    let mut answer = match &route.action {
        RouteAction::Files(files) => {
            let req = FileRequest {
                method: &kept.method,
                headers: &kept.headers,
                path: &target.path,
                query: target.query.as_deref(),
                matched_len: matched.matched_len,
            };
            Answer::File(serve_file(files, req).await?)
        }
        RouteAction::Respond(r) => Answer::Local(respond(r)),
        RouteAction::Redirect(r) => {
            let uri = match &target.query {
                Some(query) => Uri::try_from(format!("{}?{query}", target.path)),
                None => Uri::try_from(target.path.as_str()),
            };
            let uri =
                uri.map_err(|_| ProxyError::BadAccelRedirect(accel::BadRedirect::NotAPath))?;
            let (client_ip, on, request_id) = client;
            let client = (client_ip, None);
            let vars = placeholders((&uri, &kept.headers), client, on, request_id, None);
            Answer::Local(redirect(r, &vars))
        }
        RouteAction::Proxy(_) => return Err(accel::BadRedirect::ToProxy.into()),
    };
    accel::carry(&upstream.headers, answer.headers_mut());
    Ok((answer, encode))
}

/// The answer to an allowed CORS preflight; `cors::Verdict::apply` adds the grant.
fn no_content() -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn respond(r: &Respond) -> Response<Bytes> {
    let mut resp = Response::new(r.body.clone());
    *resp.status_mut() = r.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, r.content_type.clone());
    resp
}

/// The key authorization for a pending HTTP-01 challenge (RFC 8555 §8.3).
fn acme_answer(key_auth: String) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(key_auth));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// The route's redirect, its placeholders expanded; a target that is no valid header value (a
/// placeholder's value with a control byte) is a 400 (`location_response`).
fn redirect(r: &Redirect, vars: &Vars<'_>) -> Response<Bytes> {
    let mut location = Vec::with_capacity(64);
    r.to.render(vars, &mut location);
    location_response(r.status, location)
}

/// 308 to the same host and URI over HTTPS (with the HTTPS port unless it is 443).
fn https_redirect(uri: &Uri, host: &str, https_port: Option<u16>) -> Response<Bytes> {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = match https_port {
        Some(443) | None => format!("https://{host}{pq}"),
        Some(port) => format!("https://{host}:{port}{pq}"),
    };
    location_response(StatusCode::PERMANENT_REDIRECT, location)
}

/// A redirect; a target that is no valid header value (from a hostile Host) is a 400 instead.
fn location_response(status: StatusCode, location: impl Into<Bytes>) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    match HeaderValue::from_maybe_shared(location.into()) {
        Ok(value) => {
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

impl ProxyService {
    /// The answer for a request that goes no further; refusals are counted, and a connection
    /// whose request body was left unread or cut ends after the answer.
    /// `pages` are the error pages that apply (the route's, else the site's, else the
    /// server's): one for the status replaces the body, the head stays as it is.
    fn refuse(
        &self,
        err: &ProxyError,
        (log, in_flight): (Arc<RequestLog>, InFlight),
        (version, grpc): (Version, bool),
        pages: Option<&Pages>,
    ) -> Response<ProxyBody> {
        let request_id = log.request_id.as_str();
        if err.is_upstream() {
            let cause = super::response::causes(err);
            tracing::warn!(error = %err, cause, request_id, "upstream error");
        }
        if let Some(reason) = err.rejection() {
            self.cx
                .rejections
                .record(reason, log.client, log.uri.path());
        }
        let status = err.status();
        if grpc {
            return grpc_refusal(err, status, log, in_flight);
        }
        let page = pages.and_then(|pages| pages.get(status));
        let (body, content_type) = match page {
            Some(page) => (
                page.body(request_id.as_bytes()),
                page.content_type().clone(),
            ),
            None => (
                err.body(request_id),
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
        };
        let done = Completion::new(log, status.as_u16(), None, in_flight);
        let mut resp = Response::new(ProxyBody::full(body, done));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, content_type);
        if let ProxyError::TooManyRequests(secs) | ProxyError::NoHealthy(_, secs) = err {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        match err {
            ProxyError::Unauthorized { challenge, .. } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            ProxyError::AuthBusy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            // RFC 9110 15.5.6; what the upstream allows is its to say, this is what passes
            headers.insert(header::ALLOW, HeaderValue::from_static(PASSED_METHODS));
        }
        if err.closes_connection() && version < Version::HTTP_2 {
            hygiene::close_after(headers, version);
            self.conn.linger_on_close();
        }
        resp
    }
}

/// A refusal of a gRPC call, as gRPC clients read one: 200, no body, the code and message in
/// the head (`grpc::refusal_head`); the access log keeps the HTTP status Gatehouse meant.
fn grpc_refusal(
    err: &ProxyError,
    status: StatusCode,
    log: Arc<RequestLog>,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let message = err.to_string();
    let done = Completion::new(log, status.as_u16(), None, in_flight);
    let mut resp = Response::new(ProxyBody::full(Bytes::new(), done));
    grpc::refusal_head(resp.headers_mut(), grpc::code_for(status), &message);
    if let ProxyError::TooManyRequests(secs) | ProxyError::NoHealthy(_, secs) = err {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
    }
    resp
}

/// The page that replaces an upstream answer with `status` on the route matched, if that route
/// has `intercept_errors` (`state::Route::intercepts`).
fn intercepts(state: &RuntimeState, routed: Option<usize>, status: StatusCode) -> Option<&Page> {
    state.routes.get(routed?)?.intercepts(status)
}

/// An upstream's error answer replaced by the route's page (`intercept_errors`): the same
/// status, the page's body and type, of the upstream's head only what acting on the status needs
/// (`error_pages::intercepted_head`). The upstream body is dropped unread: its connection is kept
/// only if the rest is short and comes at once (`body::discard`).
fn intercept(
    resp: Response<RespBody>,
    page: &Page,
    (active, conn): (ActiveGuard, Option<Sender>),
    log: Arc<RequestLog>,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let (parts, body) = resp.into_parts();
    discard(body, conn, &active);
    let bytes = page.body(log.request_id.as_bytes());
    let done = Completion::new(log, parts.status.as_u16(), Some(active), in_flight);
    let mut out = Response::new(ProxyBody::full(bytes, done));
    *out.status_mut() = parts.status;
    *out.headers_mut() = error_pages::intercepted_head(&parts.headers, page);
    out
}

/// The response compressed as `negotiated` asks, if it is a candidate (see `middleware::encode`)
/// and an encoder fits the budget (`max_encoders`; else it goes as it is, with `Vary`). The
/// answer to a `HEAD` gets the head a `GET` would get now, and nothing to compress.
fn compress(
    response: Response<ProxyBody>,
    negotiated: &Negotiated<'_>,
    (budget, max): (&Arc<EncoderBudget>, usize),
) -> Response<ProxyBody> {
    use http_body::Body;
    let (mut parts, body) = response.into_parts();
    let shape = match negotiated.head {
        true => BodyShape::declared(&parts.headers),
        false => BodyShape {
            len: body.size_hint().exact(),
            empty: body.is_end_stream(),
        },
    };
    let decision = encode::decide(negotiated, parts.status, &parts.headers, shape);
    let (decision, body) = match decision {
        Decision::Compress(_) if negotiated.head && budget.is_full(max) => {
            (Decision::VaryOnly, body)
        }
        Decision::Compress(_) if negotiated.head => (decision, body),
        Decision::Compress(coding) => match start_encoder(coding, budget, max) {
            Some((encoder, ticket)) => (decision, body.compress(encoder, ticket)),
            None => (Decision::VaryOnly, body),
        },
        _ => (decision, body),
    };
    encode::rewrite_head(&mut parts.headers, decision);
    Response::from_parts(parts, body)
}

/// An encoder for `coding` with its place in the budget; `None` over the budget (counted) or
/// when the encoder cannot start (logged).
fn start_encoder(
    coding: Coding,
    budget: &Arc<EncoderBudget>,
    max: usize,
) -> Option<(Encoder, EncoderTicket)> {
    let ticket = budget.take(max)?;
    match Encoder::new(coding) {
        Ok(encoder) => Some((encoder, ticket)),
        Err(e) => {
            tracing::warn!(error = %e, coding = coding.token(), "cannot start an encoder; response sent as it is");
            None
        }
    }
}

/// Requests refused on their head alone, before routing: malformed framing (400), a target or
/// header fields over the server's limits (414, 431).
fn screen<B>(req: &Request<B>, limits: &ServerLimits) -> Result<(), ProxyError> {
    hygiene::check(req.headers(), req.version())?;
    head_too_large(req, limits).map_or(Ok(()), Err)
}

/// 414 or 431 for a request head over the server's limits (hyper enforces a looser fence).
fn head_too_large<B>(req: &Request<B>, limits: &ServerLimits) -> Option<ProxyError> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > limits.max_uri {
        return Some(ProxyError::UriTooLong(limits.max_uri));
    }
    let headers = req.headers();
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limits.max_header_size || headers.len() > limits.max_headers {
        return Some(ProxyError::HeadersTooLarge(limits.max_header_size));
    }
    None
}

/// The id as the response carries it: marked sensitive, so HTTP/2's HPACK sends it as a literal
/// never indexed. A value unique to each response never gains from the dynamic table, and
/// indexing it evicts entries that would (callgrind: 2,045 instructions per h2 request). HTTP/1.1
/// writes sensitive values like any other.
fn never_indexed(mut id: HeaderValue) -> HeaderValue {
    id.set_sensitive(true);
    id
}
