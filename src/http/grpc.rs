//! gRPC on the proxy path: which requests are gRPC calls, the deadline a call carries
//! (`grpc-timeout`), and Gatehouse's own refusals written the gRPC way: HTTP 200 with
//! `grpc-status` and `grpc-message` in the head and no body ("trailers-only", as gRPC servers
//! answer a call they fail at once), since gRPC clients read the status there, not in the HTTP
//! status line (grpc/grpc `doc/PROTOCOL-HTTP2.md`).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use std::time::Duration;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes Gatehouse answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Whether the request is a gRPC call: `content-type: application/grpc`, alone or with a
/// `+format` or parameters (gRPC-Web, `application/grpc-web`, is not: its status goes in the
/// body).
pub fn is_call(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    let prefix = b"application/grpc";
    ct.len() >= prefix.len()
        && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(ct.get(prefix.len()), None | Some(b'+' | b';'))
}

/// The call's deadline from `grpc-timeout` (1 to 8 digits and a unit: `H`, `M`, `S`, `m`,
/// `u`, `n`); `None` when absent or malformed (a malformed one is the backend's to refuse).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC code for an HTTP status Gatehouse would have answered with.
pub fn code_for(status: StatusCode) -> Code {
    match status.as_u16() {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 405 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        413 | 414 | 429 | 431 => Code::ResourceExhausted,
        400 => Code::InvalidArgument,
        421 | 502 | 503 => Code::Unavailable,
        500 => Code::Internal,
        _ => Code::Unknown,
    }
}

/// The head of a trailers-only answer: 200, `content-type: application/grpc`, the code and
/// `message` (percent-encoded as gRPC wants).
pub fn refusal_head(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE.clone(), message);
    }
}

/// The trailers that end a call whose deadline passed while its response streamed.
pub fn deadline_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(Code::DeadlineExceeded as u16),
    );
    trailers.insert(
        GRPC_MESSAGE.clone(),
        HeaderValue::from_static("deadline exceeded (grpc-timeout)"),
    );
    trailers
}

/// `grpc-message` encoding: printable ASCII but `%` as it is, every other byte `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_call(&headers(&[("content-type", ct)])), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_call(&headers(&[("content-type", ct)])), "{ct}");
        }
        assert!(!is_call(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn refusals_map_to_grpc_codes() {
        let code = |s: u16| code_for(StatusCode::from_u16(s).unwrap()) as u16;
        assert_eq!(code(429), 8);
        assert_eq!(code(503), 14);
        assert_eq!(code(502), 14);
        assert_eq!(code(504), 4);
        assert_eq!(code(403), 7);
        assert_eq!(code(401), 16);
        assert_eq!(code(404), 12);
        assert_eq!(code(413), 8);
        assert_eq!(code(418), 2);
    }

    #[test]
    fn messages_are_percent_encoded() {
        let mut h = HeaderMap::new();
        refusal_head(&mut h, Code::Unavailable, "50% down\né");
        assert_eq!(h["grpc-message"], "50%25 down%0A%C3%A9");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["content-type"], "application/grpc");
    }
}
