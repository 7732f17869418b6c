//! `forward_auth`: before a request goes on, an auth service (Authelia, authentik,
//! oauth2-proxy...) is asked about it, as nginx `auth_request`, Caddy `forward_auth` and Traefik
//! `forwardAuth` do.
//!
//! Owns: the question (a `GET` with no body carrying the original request in the headers those
//! services read), and what the answer means. A `2xx` lets the request through with the
//! `copy_headers` of the answer (the caller removes the client's own copies first) and its
//! `Set-Cookie`s for the client's response (Traefik's `addAuthCookiesToResponse`, for every
//! cookie); any other answer goes to the client as the service wrote it, hop-by-hop headers
//! stripped and the body bounded. A service that cannot be reached is a 503, one slower than
//! `timeout` a 504: a request is never let through because the service did not say no.
//!
//! The connections to the services are pooled in one `AuthClient` per snapshot.

use crate::config::ForwardAuth;
use crate::upstream::forward::strip_hop_by_hop;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// The largest answer body read from an auth service (a login page's redirect or a short
/// refusal; a service that sends more is broken).
pub const BODY_MAX: usize = 64 * 1024;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled connections to every auth service of a snapshot.
pub struct AuthClient {
    client: Client<Connector, Empty<Bytes>>,
}

impl AuthClient {
    /// `roots` are checked against for an `https://` service (`None`: no service speaks TLS,
    /// and an empty store is enough).
    pub fn new(roots: Option<Arc<RootCertStore>>) -> Result<AuthClient, rustls::Error> {
        let roots = roots.unwrap_or_else(|| Arc::new(RootCertStore::empty()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(AuthClient { client })
    }
}

/// A route's `forward_auth` compiled for the request path.
pub struct ForwardGuard {
    spec: ForwardAuth,
    client: Arc<AuthClient>,
}

/// The request being asked about, as Gatehouse made it canonical.
pub struct Original<'a> {
    pub method: &'a Method,
    /// `http` or `https`: how the client reached Gatehouse.
    pub scheme: &'static str,
    /// The canonical authority (`Host`).
    pub authority: Option<&'a HeaderValue>,
    /// The canonical target (origin form).
    pub uri: &'a Uri,
    pub client: IpAddr,
    pub headers: &'a HeaderMap,
    pub request_id: &'a crate::request_id::RequestId,
}

/// What the auth service said.
pub enum Verdict {
    /// `2xx`: the headers to copy into the upstream request, and cookies for the client.
    Allow(Allowed),
    /// Anything else, as the client gets it.
    Refuse(Response<Bytes>),
}

#[derive(Default)]
pub struct Allowed {
    pub copied: Vec<(HeaderName, HeaderValue)>,
    pub cookies: Vec<HeaderValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the auth service cannot be reached")]
    Unreachable(#[source] BoxError),
    #[error("the auth service did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("the auth service's answer broke off or was larger than {BODY_MAX} bytes")]
    BadAnswer(#[source] BoxError),
}

impl ForwardGuard {
    pub fn new(spec: &ForwardAuth, client: Arc<AuthClient>) -> ForwardGuard {
        ForwardGuard {
            spec: spec.clone(),
            client,
        }
    }

    /// The header names whose client-sent copies never reach the upstream.
    pub fn copy_headers(&self) -> &[HeaderName] {
        &self.spec.copy_headers
    }

    /// Asks the auth service about `original`, within `timeout` for the whole answer.
    pub async fn ask(&self, original: &Original<'_>) -> Result<Verdict, AuthError> {
        let req = self.question(original);
        let exchange = async {
            let resp = self.client.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    AuthError::Unreachable(Box::new(e))
                } else {
                    AuthError::BadAnswer(Box::new(e))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, BODY_MAX)
                .collect()
                .await
                .map_err(AuthError::BadAnswer)?
                .to_bytes();
            Ok::<_, AuthError>(Response::from_parts(parts, body))
        };
        let timeout = self.spec.timeout;
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AuthError::TimedOut(timeout))??;
        Ok(self.verdict(answer))
    }

    /// `GET` on the service's URL with the original request in the `X-Forwarded-*` headers
    /// (Authelia's `/api/authz/forward-auth`, authentik, oauth2-proxy), `X-Original-URL` and
    /// `X-Original-Method` (nginx `auth_request`'s convention, which Authelia's
    /// `/api/authz/auth-request` reads), and what identifies the client: `Cookie`,
    /// `Authorization`; `Accept` lets the service choose between a redirect and a 401.
    fn question(&self, o: &Original<'_>) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.spec.url.clone();
        let h = req.headers_mut();
        let pq = o.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let method = HeaderValue::from_str(o.method.as_str()).ok();
        let uri = HeaderValue::from_str(pq).ok();
        let proto = HeaderValue::from_static(o.scheme);
        let url = o.authority.and_then(|host| {
            let host = host.to_str().ok()?;
            HeaderValue::from_str(&format!("{}://{host}{pq}", o.scheme)).ok()
        });
        let set = [
            ("x-forwarded-method", method.clone()),
            ("x-original-method", method),
            ("x-forwarded-proto", Some(proto)),
            ("x-forwarded-host", o.authority.cloned()),
            ("x-forwarded-uri", uri),
            ("x-original-url", url),
            (
                "x-forwarded-for",
                HeaderValue::from_str(&o.client.to_string()).ok(),
            ),
            ("x-request-id", Some(o.request_id.value())),
        ];
        for (name, value) in set {
            if let Some(value) = value {
                h.insert(HeaderName::from_static(name), value);
            }
        }
        for name in [header::COOKIE, header::AUTHORIZATION, header::ACCEPT] {
            for value in o.headers.get_all(&name) {
                h.append(name.clone(), value.clone());
            }
        }
        req
    }

    fn verdict(&self, answer: Response<Bytes>) -> Verdict {
        if !answer.status().is_success() {
            return Verdict::Refuse(refusal(answer));
        }
        let headers = answer.headers();
        let mut allowed = Allowed::default();
        for name in &self.spec.copy_headers {
            for value in headers.get_all(name) {
                allowed.copied.push((name.clone(), value.clone()));
            }
        }
        allowed.cookies = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        Verdict::Allow(allowed)
    }
}

/// The service's refusal as the client gets it: its status, headers (but the hop-by-hop ones
/// and the framing, which the body as read makes anew) and body.
fn refusal(answer: Response<Bytes>) -> Response<Bytes> {
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, body)
}
