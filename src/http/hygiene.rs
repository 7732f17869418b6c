//! Request hygiene: the framing checks a request passes before any of it goes upstream, and the
//! rule that the upstream request's framing is Gatehouse's own, never the client's.
//!
//! Most malformed requests never get here (each case is pinned in `tests/hygiene.rs`):
//! - hyper's HTTP/1 parser (httparse) answers 400 and closes the connection for obs-fold, bare CR,
//!   NUL and other control bytes in the head, whitespace around header names, an invalid or
//!   conflicting `Content-Length`, a `Transfer-Encoding` whose last coding is not `chunked`, and
//!   any `Transfer-Encoding` in HTTP/1.0;
//! - hyper's chunked decoder fails the body on a malformed chunk (answered 400 as
//!   `ProxyError::BadRequestBody`, the upstream request aborted mid-body);
//! - with both `Content-Length` and `Transfer-Encoding`, hyper frames the body by the chunked
//!   coding, removes the `Content-Length` before the service sees the request, and closes the
//!   connection after the response (RFC 9112 6.3). The service cannot tell, so it cannot answer
//!   400; the body is still framed one way only and nothing after it is read;
//! - the h2 crate resets a stream with connection-specific fields, a `te` other than `trailers`,
//!   or a `content-length` its DATA contradicts; invalid header bytes end the connection.
//!
//! What is left is here. [`check`] refuses what hyper lets through (and, cheaply, re-checks what
//! it should not have); [`regenerate_framing`] replaces the client's framing headers with ones
//! derived from the body Gatehouse actually forwards.

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;
use http_body::SizeHint;

/// Why a request is refused with 400 (and, on HTTP/1, a closed connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// hyper accepts any list that ends in `chunked` (`gzip, chunked`); forwarding the body
    /// without the other codings would change its meaning, and repeating `chunked` is invalid.
    #[error("Transfer-Encoding is not exactly `chunked`")]
    TransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingHttp10,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    /// RFC 9112 3.2: a server must reject more than one Host line; we route on the first while a
    /// backend might pick another.
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("connection-specific header `{0}` in an HTTP/2 request")]
    ConnectionSpecific(&'static str),
}

/// Fields that describe one HTTP/1 connection and are malformed in HTTP/2 (RFC 9113 8.2.2).
static H2_FORBIDDEN: [&str; 5] = [
    "connection",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

/// Whether a request may be forwarded at all, judged on its head alone.
pub fn check(headers: &HeaderMap, version: Version) -> Result<(), Malformed> {
    if version == Version::HTTP_2 {
        check_h2_fields(headers)?;
    }
    // one pass over the fields, comparing standard names (two small integers each), where a
    // lookup per name would hash it: three lookups cost ~290 instructions per request
    let framing = Framing::of(headers);
    if framing.transfer_encoding {
        if version < Version::HTTP_11 {
            return Err(Malformed::TransferEncodingHttp10);
        }
        if framing.content_length {
            return Err(Malformed::LengthAndEncoding);
        }
        check_transfer_encoding(headers)?;
    }
    if framing.bad_length {
        return Err(Malformed::ContentLength);
    }
    if framing.hosts > 1 {
        return Err(Malformed::DuplicateHost);
    }
    Ok(())
}

/// What a request's fields say about its framing and `Host`, read in one pass.
#[derive(Default)]
struct Framing {
    transfer_encoding: bool,
    content_length: bool,
    /// A `Content-Length` value (or list element) that is not a decimal number, or numbers
    /// that differ.
    bad_length: bool,
    hosts: usize,
}

impl Framing {
    fn of(headers: &HeaderMap) -> Framing {
        let mut framing = Framing::default();
        let mut length: Option<u64> = None;
        for (name, value) in headers {
            if *name == header::HOST {
                framing.hosts += 1;
            } else if *name == header::TRANSFER_ENCODING {
                framing.transfer_encoding = true;
            } else if *name == header::CONTENT_LENGTH {
                framing.content_length = true;
                framing.bad_length |= !same_length(value, &mut length);
            }
        }
        framing
    }
}

/// Whether every element of a `Content-Length` value is a decimal number, the same one as
/// before (`length`, set from the first).
fn same_length(value: &HeaderValue, length: &mut Option<u64>) -> bool {
    for element in value.as_bytes().split(|b| *b == b',') {
        let Some(n) = parse_decimal(trim_ows(element)) else {
            return false;
        };
        if length.is_some_and(|seen| seen != n) {
            return false;
        }
        *length = Some(n);
    }
    true
}

/// Replaces the client's `Content-Length`/`Transfer-Encoding` with framing derived from the body
/// Gatehouse forwards: its exact length when the decoder knows it (so an explicit
/// `Content-Length: 0` stays explicit), else `Transfer-Encoding: chunked`, whatever the method.
/// Written out because both HTTP/1.1 clients would otherwise send an unsized `GET`, `HEAD` or
/// `CONNECT` body as no body at all (hyper's client rule), losing what the client sent; nginx
/// forwards it. A request that had no framing headers and a body known empty gets none. An
/// HTTP/2 upstream's client drops `Transfer-Encoding` and sends the body as DATA frames.
pub fn regenerate_framing(headers: &mut HeaderMap, body: &SizeHint) {
    // one pass of cheap name comparisons; the hashed removals only for what is there (most
    // requests carry neither)
    let (mut had_length, mut had_encoding) = (false, false);
    for name in headers.keys() {
        had_length |= name == header::CONTENT_LENGTH;
        had_encoding |= name == header::TRANSFER_ENCODING;
    }
    if had_length {
        headers.remove(header::CONTENT_LENGTH);
    }
    if had_encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    match body.exact() {
        Some(len) if had_length || had_encoding || len > 0 => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        Some(_) => {}
        None => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
    }
}

/// Asks hyper to close an HTTP/1 connection after this response (HTTP/2 has no such header; a
/// refused stream does not affect its connection).
pub fn close_after(response: &mut HeaderMap, request_version: Version) {
    if request_version < Version::HTTP_2 {
        response.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Malformed> {
    if is_only_chunked(headers) {
        Ok(())
    } else {
        Err(Malformed::TransferEncoding)
    }
}

/// Exactly one coding, `chunked`, over all `Transfer-Encoding` lines; like nginx, stricter than
/// the list syntax (which would also allow empty elements such as `, chunked`). The rule for
/// both directions: a request is refused otherwise, an upstream response is a 502.
pub fn is_only_chunked(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    let only = values.next().filter(|_| values.next().is_none());
    only.is_some_and(|v| trim_ows(v.as_bytes()).eq_ignore_ascii_case(b"chunked"))
}

fn check_h2_fields(headers: &HeaderMap) -> Result<(), Malformed> {
    if let Some(name) = H2_FORBIDDEN.iter().find(|n| headers.contains_key(**n)) {
        return Err(Malformed::ConnectionSpecific(name));
    }
    if headers.get_all(header::TE).iter().any(|v| v != "trailers") {
        return Err(Malformed::ConnectionSpecific("te"));
    }
    Ok(())
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

/// Digits only: no sign, no hex, no spaces, no overflow.
fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d < 10)?);
        n.checked_mul(10)?.checked_add(digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn h1(pairs: &[(&str, &str)]) -> Result<(), Malformed> {
        check(&map(pairs), Version::HTTP_11)
    }

    #[test]
    fn only_a_lone_chunked_is_accepted() {
        for ok in ["chunked", "Chunked", " chunked\t"] {
            assert_eq!(h1(&[("transfer-encoding", ok)]), Ok(()), "{ok:?}");
        }
        for bad in [
            "gzip, chunked",
            "chunked, chunked",
            ", chunked",
            "chunked,",
            "x",
            "",
        ] {
            assert_eq!(
                h1(&[("transfer-encoding", bad)]),
                Err(Malformed::TransferEncoding),
                "{bad:?}"
            );
        }
        let two_lines = [
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ];
        assert_eq!(h1(&two_lines), Err(Malformed::TransferEncoding));
        let te10 = check(&map(&[("transfer-encoding", "chunked")]), Version::HTTP_10);
        assert_eq!(te10, Err(Malformed::TransferEncodingHttp10));
    }

    #[test]
    fn length_and_encoding_together_are_refused() {
        let both = [("content-length", "3"), ("transfer-encoding", "chunked")];
        assert_eq!(h1(&both), Err(Malformed::LengthAndEncoding));
    }

    #[test]
    fn content_length_must_be_one_decimal_number() {
        for ok in ["0", "5", " 5 ", "5, 5", "18446744073709551615"] {
            assert_eq!(h1(&[("content-length", ok)]), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "+5",
            "-1",
            "0x5",
            "1 0",
            "5, 6",
            "abc",
            "18446744073709551616",
        ] {
            assert_eq!(
                h1(&[("content-length", bad)]),
                Err(Malformed::ContentLength),
                "{bad:?}"
            );
        }
        let differ = [("content-length", "5"), ("content-length", "6")];
        assert_eq!(h1(&differ), Err(Malformed::ContentLength));
        // lines of one name apart from each other are all read
        let apart = [
            ("content-length", "5"),
            ("x-a", "1"),
            ("content-length", "5"),
        ];
        assert_eq!(h1(&apart), Ok(()));
        let apart = [
            ("content-length", "5"),
            ("x-a", "1"),
            ("content-length", "7"),
        ];
        assert_eq!(h1(&apart), Err(Malformed::ContentLength));
    }

    #[test]
    fn one_host_only() {
        assert_eq!(h1(&[("host", "a")]), Ok(()));
        assert_eq!(
            h1(&[("host", "a"), ("host", "b")]),
            Err(Malformed::DuplicateHost)
        );
        assert_eq!(
            h1(&[("host", "a"), ("accept", "*/*"), ("host", "a")]),
            Err(Malformed::DuplicateHost)
        );
    }

    #[test]
    fn h2_refuses_connection_specific_fields() {
        let h2 = |pairs: &[(&str, &str)]| check(&map(pairs), Version::HTTP_2);
        assert_eq!(h2(&[("te", "trailers")]), Ok(()));
        assert_eq!(
            h2(&[("te", "gzip")]),
            Err(Malformed::ConnectionSpecific("te"))
        );
        for name in [
            "connection",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
        ] {
            assert_eq!(
                h2(&[(name, "x")]),
                Err(Malformed::ConnectionSpecific(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn framing_comes_from_the_body_and_close_is_h1_only() {
        let mut h = map(&[("content-length", "5"), ("x", "1")]);
        regenerate_framing(&mut h, &SizeHint::with_exact(7));
        assert_eq!(h[header::CONTENT_LENGTH], "7");
        // an unsized body is sent chunked, on a GET too (nothing else would carry it)
        let mut h = map(&[("transfer-encoding", "chunked"), ("x", "1")]);
        regenerate_framing(&mut h, &SizeHint::new());
        assert_eq!(h[header::TRANSFER_ENCODING], "chunked");
        assert_eq!(h.len(), 2);
        let mut h = map(&[("content-length", "0")]);
        regenerate_framing(&mut h, &SizeHint::with_exact(0));
        assert_eq!(h[header::CONTENT_LENGTH], "0");
        let mut h = map(&[("x", "1")]);
        regenerate_framing(&mut h, &SizeHint::with_exact(0));
        assert_eq!(h.len(), 1);
        let mut resp = HeaderMap::new();
        close_after(&mut resp, Version::HTTP_2);
        assert!(resp.is_empty());
        close_after(&mut resp, Version::HTTP_11);
        assert_eq!(resp[header::CONNECTION], "close");
    }
}
