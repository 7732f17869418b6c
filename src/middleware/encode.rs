//! Response compression (`encode`): which coding a request may get, whether a response is worth
//! compressing, and the head changes that go with it. The body itself is wrapped by
//! `body::Compressed`. A route without `encode` never reaches this module.

pub mod body;
pub mod budget;
pub mod negotiate;

use super::{has_token, vary};
use crate::config::{Coding, Encode};
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    ETAG,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// What a request asked for, read from its head before the head is sent upstream.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated<'a> {
    pub rule: &'a Encode,
    /// `None`: the client takes none of the route's codings (the response may still vary).
    pub coding: Option<Coding>,
    /// A `HEAD` request: its answer gets the head a `GET` would (`Content-Encoding`, `Vary`),
    /// with no body to compress.
    pub head: bool,
}

impl<'a> Negotiated<'a> {
    /// `None` for `CONNECT`, whose successful answer is a tunnel.
    pub fn new(rule: &'a Encode, method: &Method, headers: &HeaderMap) -> Option<Negotiated<'a>> {
        if method == Method::CONNECT {
            return None;
        }
        let coding = negotiate::negotiate(headers.get_all(ACCEPT_ENCODING), &rule.codings);
        let head = method == Method::HEAD;
        Some(Negotiated { rule, coding, head })
    }
}

/// What becomes of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not a candidate: sent as it is.
    Untouched,
    /// A candidate the client cannot take: sent as it is, with `Vary: Accept-Encoding` so a cache
    /// does not hand it to a client that could.
    VaryOnly,
    Compress(Coding),
}

/// The response's body length when known, and whether it is known to be empty.
#[derive(Debug, Clone, Copy)]
pub struct BodyShape {
    pub len: Option<u64>,
    pub empty: bool,
}

impl BodyShape {
    /// The body a `GET` would get, as the answer to a `HEAD` declares it (`Content-Length`).
    pub fn declared(headers: &HeaderMap) -> BodyShape {
        let len = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        BodyShape { len, empty: false }
    }
}

/// Whether and how the response with `status` and `headers` is compressed for `neg`.
pub fn decide(
    neg: &Negotiated<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    body: BodyShape,
) -> Decision {
    if !compressible(neg.rule, status, headers, body) {
        return Decision::Untouched;
    }
    match neg.coding {
        Some(coding) => Decision::Compress(coding),
        None => Decision::VaryOnly,
    }
}

/// Statuses without a body or with a partial one, an encoding already applied, a
/// `no-transform` directive, a type not listed, or a known length under the threshold: no.
fn compressible(rule: &Encode, status: StatusCode, headers: &HeaderMap, body: BodyShape) -> bool {
    let bodiless = status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        );
    if bodiless || body.empty || body.len.is_some_and(|n| n == 0 || n < rule.min_size) {
        return false;
    }
    if headers.contains_key(CONTENT_ENCODING)
        || has_token(headers.get_all(CACHE_CONTROL).iter(), b"no-transform")
    {
        return false;
    }
    let Some(media_type) = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| ct.split(';').next().unwrap_or("").trim())
    else {
        return false;
    };
    rule.types.iter().any(|range| range.matches(media_type))
}

/// Applies `decision` to the response head (for `Compress`, once the encoder exists).
pub fn rewrite_head(headers: &mut HeaderMap, decision: Decision) {
    if decision == Decision::Untouched {
        return;
    }
    vary::add(headers, "Accept-Encoding");
    let Decision::Compress(coding) = decision else {
        return;
    };
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    headers.remove(CONTENT_LENGTH);
    // byte ranges of the compressed stream are not ranges of the representation
    headers.remove(ACCEPT_RANGES);
    weaken_etag(headers);
}

/// A strong validator promises the same bytes; compressed bytes are not (nginx does the same).
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(ETAG) else {
        return;
    };
    if !etag.as_bytes().starts_with(b"\"") {
        return;
    }
    let mut weak = Vec::with_capacity(etag.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(etag.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&weak) {
        headers.insert(ETAG, value);
    }
}

#[cfg(test)]
mod tests;
