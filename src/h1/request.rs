//! A client's request head: parsed by `httparse` (strict: no obs-fold, no whitespace before a
//! colon, no control bytes), indexed into [`Field`]s, and judged by our framing rules (the hyper
//! path's, `http::hygiene`), so what the engine forwards is framed one way only.

use super::{
    index, write_fields, Body, ConnectionSays, Field, Framing, Kind, Limits, Span, MAX_FIELDS,
};
use crate::http::hygiene::Malformed;
use std::mem::MaybeUninit;

/// Why a head is refused; the connection closes after the answer, as its framing cannot be
/// trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request head: {0}")]
    Parse(httparse::Error),
    #[error("HTTP version not supported")]
    Version,
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("more header fields than the limit")]
    TooManyFields,
    #[error("request target longer than the limit")]
    TargetTooLong,
    #[error("request target not in a form its method allows")]
    TargetForm,
    /// A framing or `Host` refusal the hyper path makes too, named by the same type.
    #[error(transparent)]
    Malformed(Malformed),
}

impl RequestError {
    /// The status the refusal is answered with.
    pub fn status(self) -> u16 {
        match self {
            RequestError::HeadTooLarge | RequestError::TooManyFields => 431,
            RequestError::TargetTooLong => 414,
            _ => 400,
        }
    }
}

/// RFC 9112 3.2's four forms of request-target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`
    Origin,
    /// `http://authority/path`
    Absolute,
    /// `host:port`, for `CONNECT` only
    Authority,
    /// `*`, for `OPTIONS` only
    Asterisk,
}

/// A parsed request head: spans into the buffer it was parsed from, reused from one request to
/// the next (its index keeps its capacity).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Span,
    pub target: Span,
    pub form: Target,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub fields: Vec<Field>,
    pub body: Body,
    /// The authority the request is for: the target's in absolute and authority form (RFC 9112
    /// 3.2.2: `Host` is then ignored), else the `Host` value (empty span: none).
    pub authority: Span,
    pub connection: ConnectionSays,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
    /// Bytes of the head, blank line included: where the body starts.
    pub len: usize,
}

impl Default for RequestHead {
    fn default() -> RequestHead {
        RequestHead {
            method: Span::default(),
            target: Span::default(),
            form: Target::Origin,
            minor_version: 1,
            fields: Vec::new(),
            body: Body::None,
            authority: Span::default(),
            connection: ConnectionSays::default(),
            expects_continue: false,
            len: 0,
        }
    }
}

impl RequestHead {
    /// Parses the head at the start of `buf`: `Ok(false)` if it is not complete yet (read more
    /// and call again with the longer buffer), `Ok(true)` with `self` describing it.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<bool, RequestError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let max_fields = limits.max_fields.min(MAX_FIELDS);
        let mut req = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut slots[..max_fields],
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= limits.max_head => {
                return Err(RequestError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyFields),
            Err(httparse::Error::Version) => return Err(RequestError::Version),
            Err(e) => return Err(RequestError::Parse(e)),
        };
        if len > limits.max_head {
            return Err(RequestError::HeadTooLarge);
        }
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(RequestError::Parse(httparse::Error::Token));
        };
        if target.len() > limits.max_target {
            return Err(RequestError::TargetTooLong);
        }
        self.method = Span::within(buf, method.as_bytes());
        self.target = Span::within(buf, target.as_bytes());
        self.minor_version = minor;
        self.len = len;
        index(buf, req.headers, &mut self.fields);
        self.judge(buf)?;
        Ok(true)
    }

    /// The rules beyond syntax: target form, `Host`, framing, `Connection`, `Expect`.
    fn judge(&mut self, buf: &[u8]) -> Result<(), RequestError> {
        self.form = target_form(self.target.of(buf))?;
        self.authority = self.authority_of(buf);
        self.body = self.framing(buf)?;
        self.connection = ConnectionSays::default();
        // both framings: the next request on the connection could start anywhere
        self.connection.close =
            self.body == Body::Chunked && self.fields.iter().any(|f| f.kind == Kind::ContentLength);
        self.expects_continue = false;
        for field in &self.fields {
            let value = field.value.of(buf);
            match field.kind {
                Kind::Connection => self.connection.read(value),
                Kind::Expect => {
                    self.expects_continue |= value.eq_ignore_ascii_case(b"100-continue")
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The authority the request names. `Host` is not judged here: a missing, repeated or
    /// invalid one is the service's to refuse (`http::hygiene`, `http::canonical`), counted
    /// and logged the same way for both engines.
    fn authority_of(&self, buf: &[u8]) -> Span {
        let host = self.fields.iter().find(|f| f.kind == Kind::Host);
        let target = self.target;
        match self.form {
            Target::Absolute => {
                let (from, to) = absolute_authority(target.of(buf));
                Span {
                    start: target.start + from as u32,
                    end: target.start + to as u32,
                }
            }
            Target::Authority => target,
            _ => host.map(|h| h.value).unwrap_or_default(),
        }
    }

    fn framing(&self, buf: &[u8]) -> Result<Body, RequestError> {
        let framing = Framing::read(&self.fields, buf);
        if framing.encodings > 0 {
            return if self.minor_version == 0 {
                Err(RequestError::Malformed(Malformed::TransferEncodingHttp10))
            } else if !framing.only_chunked {
                Err(RequestError::Malformed(Malformed::TransferEncoding))
            } else {
                // with a `Content-Length` too, the chunked coding frames the body and the
                // connection closes after it (RFC 9112 6.3; what the hyper path does, pinned by
                // `tests/hygiene.rs`): `judge` sees `both_framings`
                Ok(Body::Chunked)
            };
        }
        let listed = self
            .fields
            .iter()
            .any(|f| f.kind == Kind::ContentLength && f.value.of(buf).contains(&b','));
        if listed {
            // `5, 5` is one length to RFC 9110, but hyper refuses a list, and so do we
            return Err(RequestError::Malformed(Malformed::ContentLength));
        }
        match (framing.length, framing.length_bad) {
            (_, true) => Err(RequestError::Malformed(Malformed::ContentLength)),
            (Some(n), false) => Ok(Body::Length(n)),
            (None, false) => Ok(Body::None),
        }
    }

    /// Whether the connection may carry another request after this one.
    pub fn keeps_alive(&self) -> bool {
        self.connection.keeps_alive(self.minor_version)
    }

    /// The value of the first field of `kind`, if any.
    pub fn get<'b>(&self, kind: Kind, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.fields
            .iter()
            .find(|f| f.kind == kind)
            .map(|f| f.value.of(buf))
    }

    /// The head as parsed, written out again: request line, every field line, blank line.
    pub fn write(&self, buf: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.of(buf));
        out.push(b' ');
        out.extend_from_slice(self.target.of(buf));
        out.extend_from_slice(if self.minor_version == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        write_fields(&self.fields, buf, out);
        out.extend_from_slice(b"\r\n");
    }
}

/// Which of RFC 9112's four forms `target` is in. Whether its method takes that form
/// (`CONNECT /x`, `GET *`) is the service's to judge (`405`, `400`), counted and logged as on
/// the hyper path.
fn target_form(target: &[u8]) -> Result<Target, RequestError> {
    let form = if target.first() == Some(&b'/') {
        Target::Origin
    } else if target == b"*" {
        Target::Asterisk
    } else if is_absolute(target) {
        Target::Absolute
    } else if is_host_port(target) {
        Target::Authority
    } else {
        return Err(RequestError::TargetForm);
    };
    Ok(form)
}

/// `scheme://authority...` with a letter-first scheme and a non-empty, valid authority.
fn is_absolute(target: &[u8]) -> bool {
    let Some(colon) = target.iter().position(|b| *b == b':') else {
        return false;
    };
    let scheme = &target[..colon];
    let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b));
    let (from, to) = absolute_authority(target);
    scheme_ok
        && target[colon..].starts_with(b"://")
        && to > from
        && target[from..to].iter().all(|b| is_authority_byte(*b))
}

/// Where the authority of an absolute-form target lies: after `://`, to the next `/`, `?`, `#`.
fn absolute_authority(target: &[u8]) -> (usize, usize) {
    let Some(start) = target.windows(3).position(|w| w == b"://").map(|at| at + 3) else {
        return (0, 0);
    };
    let len = target[start..]
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(target.len() - start);
    (start, start + len)
}

/// `host:port` with a non-empty host and a decimal port (authority-form).
fn is_host_port(target: &[u8]) -> bool {
    let Some(colon) = target.iter().rposition(|b| *b == b':') else {
        return false;
    };
    let (host, port) = (&target[..colon], &target[colon + 1..]);
    !host.is_empty()
        && host.iter().all(|b| is_authority_byte(*b))
        && !port.is_empty()
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
}

/// A byte of `host [":" port]`: reg-name (unreserved, sub-delims, `%`), IP literals' `[`, `]`,
/// `:`. No `@`: a userinfo has no place in `Host`.
fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b)
}

#[cfg(test)]
mod tests;
