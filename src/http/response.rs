//! The one place proxy failures become HTTP answers: status, a short plain body, the request id.

use super::hygiene::Malformed;
use bytes::Bytes;
use http::StatusCode;
use std::error::Error as _;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("upstream `{0}` has no server available")]
    NoBackend(String),
    #[error("upstream refused or failed the connection")]
    ConnectFailed(#[source] hyper_util::client::legacy::Error),
    #[error("upstream did not accept the connection in time")]
    ConnectTimeout,
    #[error("upstream did not answer in time")]
    ResponseTimeout,
    #[error("upstream closed or reset the connection")]
    UpstreamFailed(#[source] hyper_util::client::legacy::Error),
    #[error("bad request target")]
    BadTarget,
    #[error("this host is not served over HTTPS")]
    Misdirected,
    #[error("malformed request: {0}")]
    Malformed(#[from] Malformed),
    #[error("the request body is malformed or ended early")]
    BadRequestBody,
}

impl ProxyError {
    /// Sorts a failed upstream exchange: the client's own request body broke it (400), the
    /// connection was refused (502) or timed out (504), or anything else (502).
    pub fn from_client(
        err: hyper_util::client::legacy::Error,
        request_body_failed: bool,
    ) -> ProxyError {
        if request_body_failed {
            return ProxyError::BadRequestBody;
        }
        if !err.is_connect() {
            return ProxyError::UpstreamFailed(err);
        }
        let mut source = err.source();
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return ProxyError::ConnectTimeout;
                }
            }
            source = e.source();
        }
        ProxyError::ConnectFailed(err)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed(_) | ProxyError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadTarget | ProxyError::Malformed(_) | ProxyError::BadRequestBody => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
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
                | ProxyError::Malformed(_)
                | ProxyError::BadRequestBody
        )
    }

    /// Whether an HTTP/1 connection may not carry another request after this answer: its framing
    /// can no longer be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::Malformed(_) | ProxyError::BadRequestBody)
    }
}
