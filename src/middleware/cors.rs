//! CORS for a route with `cors`: Gatehouse is the authority. A preflight (`OPTIONS` with `Origin`
//! and `Access-Control-Request-Method`) is answered here and never goes upstream; every other
//! response of the route (the upstream's, or Gatehouse's own: 429, 413, 502...) loses the
//! upstream's `Access-Control-*` headers, gets ours when the origin and method are allowed, and
//! always `Vary: Origin`. Everything a response carries is built when the snapshot is compiled;
//! per request there is the origin's `HeaderValue` (a reference-count clone) and no allocation
//! but the header map's own, and the merged `Vary` line when the response has one already.
//!
//! Routes without `cors` never reach this module.

use super::vary;
use crate::config::{Cors, CorsHeaders, CorsOrigins, OriginPattern};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};

/// A route's `cors`, compiled for the request path.
#[derive(Debug)]
pub struct CorsPolicy {
    /// `None` is any origin (answered `*`, never with credentials).
    origins: Option<Vec<OriginPattern>>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// `None` is any header, echoed from the preflight.
    headers: Option<Vec<HeaderName>>,
    /// The configured list joined, `None` when it is empty.
    allow_headers: Option<HeaderValue>,
    credentials: bool,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

static TRUE: HeaderValue = HeaderValue::from_static("true");
static STAR: HeaderValue = HeaderValue::from_static("*");
static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// The upstream's CORS headers, removed from every response of a route with `cors`.
const UPSTREAM_CORS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

/// Why a preflight is answered 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreflightRefusal {
    #[error("the origin is not allowed")]
    Origin,
    #[error("the method is not allowed")]
    Method,
    #[error("a requested header is not allowed")]
    Header,
}

/// One request as CORS sees it, decided once the route is known.
#[derive(Debug)]
pub struct Verdict<'a> {
    policy: &'a CorsPolicy,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// No `Origin`, or an origin or method not allowed: no CORS headers, `Vary: Origin`.
    Plain,
    /// An allowed request: `Access-Control-Allow-Origin` is this.
    Actual(HeaderValue),
    Preflight(Result<Preflight, PreflightRefusal>),
}

#[derive(Debug)]
struct Preflight {
    allow_origin: HeaderValue,
    /// `Access-Control-Request-Headers`, echoed when any header is allowed.
    requested: Option<HeaderValue>,
}

impl CorsPolicy {
    pub fn compile(cors: &Cors) -> CorsPolicy {
        // names and methods were validated as tokens, so only an empty list gives `None`
        let join = |names: &mut dyn Iterator<Item = &str>| {
            let text = names.collect::<Vec<_>>().join(", ");
            HeaderValue::from_str(&text).ok().filter(|v| !v.is_empty())
        };
        let headers = match &cors.headers {
            CorsHeaders::Any => None,
            CorsHeaders::List(list) => Some(list.clone()),
        };
        CorsPolicy {
            origins: match &cors.origins {
                CorsOrigins::Any => None,
                CorsOrigins::List(list) => Some(list.clone()),
            },
            allow_methods: join(&mut cors.methods.iter().map(Method::as_str))
                .unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            methods: cors.methods.clone(),
            allow_headers: headers
                .as_ref()
                .and_then(|list| join(&mut list.iter().map(HeaderName::as_str))),
            headers,
            credentials: cors.credentials,
            expose: join(&mut cors.expose.iter().map(HeaderName::as_str)),
            max_age: HeaderValue::from(cors.max_age.as_secs()),
        }
    }

    /// What this request is to CORS: a preflight (allowed or not), an allowed cross-origin
    /// request, or neither.
    pub fn judge(&self, method: &Method, headers: &HeaderMap) -> Verdict<'_> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Verdict {
                policy: self,
                kind: Kind::Plain,
            };
        };
        let asked = (method == Method::OPTIONS)
            .then(|| headers.get(header::ACCESS_CONTROL_REQUEST_METHOD))
            .flatten();
        let kind = match asked {
            Some(asked) => {
                let requested = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
                Kind::Preflight(self.preflight(origin, asked, requested))
            }
            None if self.allows_origin(origin) && self.methods.contains(method) => {
                Kind::Actual(self.allow_origin(origin))
            }
            None => Kind::Plain,
        };
        Verdict { policy: self, kind }
    }

    fn preflight(
        &self,
        origin: &HeaderValue,
        method: &HeaderValue,
        requested: Option<&HeaderValue>,
    ) -> Result<Preflight, PreflightRefusal> {
        if !self.allows_origin(origin) {
            return Err(PreflightRefusal::Origin);
        }
        // compared as sent: browsers compare `Access-Control-Allow-Methods` case-sensitively
        let method = method.as_bytes();
        if !self.methods.iter().any(|m| m.as_str().as_bytes() == method) {
            return Err(PreflightRefusal::Method);
        }
        if let (Some(allowed), Some(requested)) = (&self.headers, requested) {
            let listed = |name: &[u8]| {
                allowed
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
            };
            let all_listed = requested
                .as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|name| !name.is_empty())
                .all(listed);
            if !all_listed {
                return Err(PreflightRefusal::Header);
            }
        }
        Ok(Preflight {
            allow_origin: self.allow_origin(origin),
            requested: requested.filter(|_| self.headers.is_none()).cloned(),
        })
    }

    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        let Some(patterns) = &self.origins else {
            return true;
        };
        let origin = origin.as_bytes();
        patterns.iter().any(|pattern| match pattern {
            OriginPattern::Exact(allowed) => origin.eq_ignore_ascii_case(allowed.as_bytes()),
            OriginPattern::Subdomains { scheme, suffix } => subdomain_of(origin, scheme, suffix),
        })
    }

    /// The request's origin, or `*` for any origin (which validation keeps from credentials).
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        match self.origins {
            None => STAR.clone(),
            Some(_) => origin.clone(),
        }
    }
}

/// `https://a.b.example.com` for `https://` and `.example.com`: one or more labels before the
/// suffix, made of letters, digits, `-` and `.`.
fn subdomain_of(origin: &[u8], scheme: &str, suffix: &str) -> bool {
    let (scheme, suffix) = (scheme.as_bytes(), suffix.as_bytes());
    if origin.len() <= scheme.len() + suffix.len() {
        return false;
    }
    let (head, rest) = origin.split_at(scheme.len());
    let (labels, tail) = rest.split_at(rest.len() - suffix.len());
    head.eq_ignore_ascii_case(scheme)
        && tail.eq_ignore_ascii_case(suffix)
        && !labels.starts_with(b".")
        && labels
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

impl Verdict<'_> {
    /// `Some` for a preflight: whether to answer it 204 or 403. It never goes upstream.
    pub fn preflight(&self) -> Option<Result<(), PreflightRefusal>> {
        match &self.kind {
            Kind::Preflight(answer) => Some(answer.as_ref().map(|_| ()).map_err(|why| *why)),
            _ => None,
        }
    }

    /// Puts the route's CORS headers on `resp`, whoever produced it. A preflight gets its grant
    /// only on a 2xx answer (not when a rate limit or the address filter refused it).
    pub fn apply<B>(&self, resp: &mut Response<B>) {
        let success = resp.status().is_success();
        let headers = resp.headers_mut();
        let p = self.policy;
        match &self.kind {
            Kind::Preflight(Ok(grant)) if success => {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    grant.allow_origin.clone(),
                );
                if p.credentials {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
                }
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    p.allow_methods.clone(),
                );
                let allow_headers = grant.requested.as_ref().or(p.allow_headers.as_ref());
                if let Some(value) = allow_headers {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value.clone());
                }
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, p.max_age.clone());
                headers.insert(header::VARY, VARY_PREFLIGHT.clone());
            }
            Kind::Preflight(_) => {
                headers.insert(header::VARY, VARY_PREFLIGHT.clone());
            }
            Kind::Plain => {
                strip_upstream(headers);
                vary::add(headers, "Origin");
            }
            Kind::Actual(allow_origin) => {
                strip_upstream(headers);
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone());
                if p.credentials {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
                }
                if let Some(expose) = &p.expose {
                    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
                }
                vary::add(headers, "Origin");
            }
        }
    }
}

fn strip_upstream(headers: &mut HeaderMap) {
    for name in &UPSTREAM_CORS {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests;
