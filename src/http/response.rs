//! The one place proxy failures become HTTP answers: status, a short plain body, the request id.

use super::canonical::{BadMethod, Uncanonical};
use super::hygiene::Malformed;
use crate::files::accel::BadRedirect;
use crate::middleware::cors::PreflightRefusal;
use crate::middleware::forward_auth::AuthError;
use crate::middleware::Reason;
use crate::upstream::conn::SendError;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::error::Error as StdError;

type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("upstream `{0}` has no healthy server; retry in {1} s")]
    NoHealthy(String, u64),
    #[error("upstream refused or failed the connection")]
    ConnectFailed(#[source] BoxError),
    #[error("upstream did not accept the connection in time")]
    ConnectTimeout,
    #[error("upstream did not answer in time")]
    ResponseTimeout,
    #[error("the call's deadline (grpc-timeout) passed before the upstream answered")]
    DeadlineExceeded,
    #[error("upstream closed or reset the connection")]
    UpstreamFailed(#[source] BoxError),
    /// A head that does not parse (a bad or doubled `Content-Length`, obs-fold, a bare CR), or
    /// a `101` to a request that asked for no upgrade: the connection is dropped with it.
    #[error("upstream sent a malformed response")]
    UpstreamMalformed(#[source] BoxError),
    #[error("bad request target")]
    BadTarget,
    #[error("this host is not served over HTTPS")]
    Misdirected,
    /// A `client_auth` site on a connection whose handshake did not verify a certificate for it.
    #[error("this host needs a client certificate verified for it: connect again with its name")]
    MisdirectedCert,
    #[error("your address may not use this path")]
    Forbidden,
    #[error("CORS preflight refused: {0}")]
    CorsRefused(PreflightRefusal),
    #[error("rate limit reached; retry in {0} s")]
    TooManyRequests(u64),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("request body did not arrive in time")]
    BodyTimeout,
    #[error("request body arrived slower than {0} bytes/s")]
    BodyTooSlow(u32),
    #[error("malformed request body")]
    BadBody,
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    #[error("request headers larger than {0} bytes or too many")]
    HeadersTooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(#[from] Malformed),
    #[error("{0}")]
    Uncanonical(#[from] Uncanonical),
    #[error("no file for this path")]
    NoFile,
    #[error("reading a file failed")]
    FileFailed,
    #[error("the upstream's X-Accel-Redirect is not followed: {0}")]
    BadAccelRedirect(#[from] BadRedirect),
    /// `basic_auth`: the challenge for `WWW-Authenticate`; `wrong` when credentials were given
    /// (counted as a refusal), not when they were missing (a browser's first request).
    #[error("this path needs a user name and password")]
    Unauthorized { challenge: HeaderValue, wrong: bool },
    #[error("too many password checks are waiting; retry in 1 s")]
    AuthBusy,
    #[error("{0}")]
    Auth(#[from] AuthError),
}

impl ProxyError {
    /// Sorts a failed attempt into refused (502) vs connect timeout (504) vs everything else
    /// (502): a connection that could not be made (retried on another server) or one that broke.
    pub fn from_send(err: SendError) -> ProxyError {
        match err {
            SendError::Connect(e) if timed_out(&*e) => ProxyError::ConnectTimeout,
            SendError::Connect(e) => ProxyError::ConnectFailed(e),
            SendError::Request(e) if e.is_parse() => ProxyError::UpstreamMalformed(Box::new(e)),
            SendError::Request(e) => ProxyError::UpstreamFailed(Box::new(e)),
            SendError::Native(e) if e.is_malformed() => ProxyError::UpstreamMalformed(Box::new(e)),
            SendError::Native(e) => ProxyError::UpstreamFailed(Box::new(e)),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute | ProxyError::NoFile => StatusCode::NOT_FOUND,
            ProxyError::FileFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::BadAccelRedirect(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoHealthy(..) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed(_)
            | ProxyError::UpstreamFailed(_)
            | ProxyError::UpstreamMalformed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout
            | ProxyError::ResponseTimeout
            | ProxyError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadTarget | ProxyError::Malformed(_) => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected | ProxyError::MisdirectedCert => {
                StatusCode::MISDIRECTED_REQUEST
            }
            ProxyError::Forbidden | ProxyError::CorsRefused(_) => StatusCode::FORBIDDEN,
            ProxyError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout | ProxyError::BodyTooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadBody => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Uncanonical(Uncanonical::Method(BadMethod::NotAllowed)) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            ProxyError::Uncanonical(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::AuthBusy => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Auth(AuthError::Unreachable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Auth(AuthError::TimedOut(_)) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Auth(AuthError::BadAnswer(_)) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The client's side of the connection cannot be trusted to be at a request boundary (a
    /// body left unread or cut), so the connection ends after this answer.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BodyTooLarge(_)
                | ProxyError::BodyTimeout
                | ProxyError::BodyTooSlow(_)
                | ProxyError::BadBody
                | ProxyError::Malformed(_)
                | ProxyError::UriTooLong(_)
                | ProxyError::HeadersTooLarge(_)
        ) || matches!(self, ProxyError::Uncanonical(u) if u.closes_connection())
    }

    /// The refusal reason it is counted under, if it is one of the edge's own refusals.
    pub fn rejection(&self) -> Option<Reason> {
        Some(match self {
            ProxyError::Forbidden => Reason::DeniedIp,
            ProxyError::CorsRefused(_) => Reason::Cors,
            ProxyError::TooManyRequests(_) => Reason::RateLimit,
            ProxyError::BodyTooLarge(_) => Reason::BodyTooLarge,
            ProxyError::BodyTimeout => Reason::BodyTimeout,
            ProxyError::BodyTooSlow(_) => Reason::BodyTooSlow,
            ProxyError::BadBody | ProxyError::Malformed(_) => Reason::BadRequest,
            ProxyError::UriTooLong(_) => Reason::UriTooLong,
            ProxyError::HeadersTooLarge(_) => Reason::HeaderTooLarge,
            ProxyError::Uncanonical(Uncanonical::Path(_)) => Reason::BadPath,
            ProxyError::Uncanonical(Uncanonical::Host(_)) => Reason::BadHost,
            ProxyError::Uncanonical(Uncanonical::Method(_)) => Reason::BadMethod,
            ProxyError::Uncanonical(Uncanonical::Underscore) => Reason::BadHeader,
            ProxyError::Unauthorized { wrong: true, .. } => Reason::Unauthorized,
            _ => return None,
        })
    }

    /// e.g. "502 Bad Gateway: upstream refused or failed the connection\nrequest id: 5f0c...\n"
    pub fn body(&self, request_id: &str) -> Bytes {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("");
        Bytes::from(format!(
            "{} {reason}: {self}\nrequest id: {request_id}\n",
            status.as_u16()
        ))
    }

    /// Whether the error says something about the upstream worth a warning in the log.
    pub fn is_upstream(&self) -> bool {
        !matches!(
            self,
            ProxyError::NoRoute
                | ProxyError::BadTarget
                | ProxyError::Misdirected
                | ProxyError::MisdirectedCert
                | ProxyError::NoFile
                | ProxyError::FileFailed
                | ProxyError::Unauthorized { .. }
                | ProxyError::AuthBusy
                // the client's own deadline, not the upstream's failure
                | ProxyError::DeadlineExceeded
        ) && self.rejection().is_none()
    }
}

/// Whether `err` or one of its sources is an I/O time-out (TCP connect or TLS handshake).
fn timed_out(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        let io = e.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        next = e.source();
    }
    false
}

/// An error's sources joined by ": " ("upstream `api`: TLS handshake with 10.0.0.7:8443 as `api`
/// failed: invalid peer certificate: UnknownIssuer"), for log lines; empty when it has none.
pub fn causes(err: &dyn StdError) -> String {
    let mut out = String::new();
    let mut source = err.source();
    while let Some(e) = source {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
