//! The native HTTP/1.1 codec of issue 23: pure code, no IO. Under `[server] http1_engine =
//! "native"` its request side drives the server engine (`http::native`) and its response side
//! the upstream client (`upstream::conn::native`); hyper's connections do not use it. Built and
//! tested on its own too (unit tests, a proptest, `fuzz/`).
//!
//! It owns the parsing and the framing decisions, pure code with no IO:
//! - [`request::RequestHead`]: a client's head, parsed by `httparse` into a small index of field
//!   ranges over the read buffer (no `HeaderMap`), with RFC 9112's framing rules applied the way
//!   the hyper path applies them (`http::hygiene`, pinned by `tests/hygiene.rs`): one valid
//!   `Content-Length` (equal duplicate lines allowed, lists not), `Transfer-Encoding` exactly
//!   `chunked`, never in HTTP/1.0, and with a `Content-Length` too the chunked coding frames the
//!   body and the connection closes after it; a request-target in one of RFC 9112's four
//!   forms (which form a method takes, and `Host`, are the service's to judge, as on the hyper
//!   path); no obs-fold, bare CR or NUL (a bare LF ends a line, as RFC 9112 2.2 lets a
//!   recipient: nothing upstream sees the client's line ends);
//! - [`response::ResponseHead`]: an upstream's head with the framing `tests/upstream_framing.rs`
//!   pins (interim `1xx` passed over, no body after `HEAD`, `204` or `304`, both framings: the
//!   chunked one and no reuse, a bad or differing length refused, close-delimited bodies);
//! - [`chunked::Decoder`]: an incremental chunked-body decoder over any split of its input.
//!
//! The index ([`Field`]: two [`Span`]s and a [`Kind`]) lives in a `Vec` its owner reuses, so a
//! warm connection parses a head without allocating.

pub mod chunked;
pub mod maps;
pub mod names;
pub mod request;
pub mod response;

/// Writes one field line (`name: value` and CRLF), as both native encoders write every field.
pub fn put_field(out: &mut impl bytes::BufMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// The most fields a head may have, whatever the limits say: the parser's slots are an array on
/// the stack.
pub const MAX_FIELDS: usize = 128;

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// Where `inner`, a subslice of `outer` (as `httparse` hands them out), lies in it; an empty
    /// span if it is not in it (`httparse` gives a static `""` for a reason phrase it skipped).
    fn within(outer: &[u8], inner: &[u8]) -> Span {
        let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
        if start > outer.len() || inner.len() > outer.len() - start {
            return Span::default();
        }
        Span {
            start: start as u32,
            end: (start + inner.len()) as u32,
        }
    }

    pub fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

/// The fields the codec acts on, recognised once while indexing (case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Other,
    ContentLength,
    TransferEncoding,
    Host,
    Connection,
    Upgrade,
    Expect,
}

impl Kind {
    /// The field's name as `http` spells it, for a known kind (no lookup of its bytes).
    pub fn header_name(self) -> Option<http::HeaderName> {
        use http::header;
        Some(match self {
            Kind::ContentLength => header::CONTENT_LENGTH,
            Kind::TransferEncoding => header::TRANSFER_ENCODING,
            Kind::Host => header::HOST,
            Kind::Connection => header::CONNECTION,
            Kind::Upgrade => header::UPGRADE,
            Kind::Expect => header::EXPECT,
            Kind::Other => return None,
        })
    }

    fn of(name: &[u8]) -> Kind {
        // the length picks the one candidate (the known names' lengths all differ), so most
        // fields cost one comparison of lengths. The names are spelled here a second time
        // (beside `header_name`) on purpose: comparing with `HeaderName::as_str()` goes through
        // its representation's match, measured +174 instructions per h1 request.
        // each arm compares with its name as a constant, which the word reads fold into
        let (same, kind) = match name.len() {
            4 => (is_named(name, b"host"), Kind::Host),
            6 => (is_named(name, b"expect"), Kind::Expect),
            7 => (is_named(name, b"upgrade"), Kind::Upgrade),
            10 => (is_named(name, b"connection"), Kind::Connection),
            14 => (is_named(name, b"content-length"), Kind::ContentLength),
            17 => (is_named(name, b"transfer-encoding"), Kind::TransferEncoding),
            _ => return Kind::Other,
        };
        match same {
            true => kind,
            false => Kind::Other,
        }
    }
}

/// Whether `name` is `known` (lowercase letters and `-`, at least 4 bytes) in any case, a word
/// at a time (overlapping at the end): a byte with bit 5 set (`| 0x20`) is its lowercase
/// letter for a letter, and `-` only for `-` itself or CR, which no field name holds
/// (`httparse` hands out tokens). Measured against `eq_ignore_ascii_case` (a byte at a time),
/// per h1 request, whose heads the codec indexes on both sides: 980 -> 440 instructions.
#[inline(always)]
fn is_named(name: &[u8], known: &[u8]) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let n = known.len();
    if name.len() != n || n < 4 {
        return false;
    }
    if n < 8 {
        let same = |at| half(name, at) | LOWER == half(known, at) | LOWER;
        return same(0) && same(n - 4);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(name, at) | LOWER != word(known, at) | LOWER {
            return false;
        }
        at += 8;
    }
    word(name, n - 8) | LOWER == word(known, n - 8) | LOWER
}

/// Eight bytes from `at` as one word (a fixed-size read: a copy of a variable length would be
/// a `memcpy` call).
#[inline(always)]
fn word(b: &[u8], at: usize) -> u64 {
    let b = &b[at..at + 8];
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Four bytes from `at` as one word.
#[inline(always)]
fn half(b: &[u8], at: usize) -> u64 {
    let b = &b[at..at + 4];
    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// One field line of a head: where its name and value are, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: Span,
    pub value: Span,
    pub kind: Kind,
}

/// How a message's body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body at all (not even an empty one to read).
    None,
    Length(u64),
    Chunked,
    /// Read to the close of the connection (responses only).
    UntilClose,
}

/// Bounds on a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the head, request or status line to the blank line included.
    pub max_head: usize,
    /// Field lines (at most [`MAX_FIELDS`]).
    pub max_fields: usize,
    /// Bytes of the request-target.
    pub max_target: usize,
}

impl Default for Limits {
    /// hyper's defaults, which the proxy runs with today: 100 fields; a 64 KiB head.
    fn default() -> Limits {
        Limits {
            max_head: 64 * 1024,
            max_fields: 100,
            max_target: 8 * 1024,
        }
    }
}

/// What a `Connection` header said (its tokens, over every line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionSays {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// A token besides those three: a field the message wants removed with the hop-by-hop ones
    /// (or bytes that name none).
    pub other: bool,
}

impl ConnectionSays {
    fn read(&mut self, value: &[u8]) {
        for token in value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !token.is_empty() {
                self.other = true;
            }
        }
    }

    /// Whether the connection stays open after the message (RFC 9112 9.3): HTTP/1.1 unless
    /// `close`, HTTP/1.0 only with `keep-alive`.
    pub fn keeps_alive(self, minor_version: u8) -> bool {
        !self.close && (minor_version == 1 || self.keep_alive)
    }
}

/// The framing headers of a head, read together: `Content-Length` (every line and list element
/// a decimal number, all the same one), whether there was one, and the `Transfer-Encoding` lines.
#[derive(Debug, Default)]
struct Framing {
    length: Option<u64>,
    length_bad: bool,
    encodings: u32,
    only_chunked: bool,
}

impl Framing {
    fn read(fields: &[Field], buf: &[u8]) -> Framing {
        let mut framing = Framing::default();
        for field in fields {
            match field.kind {
                Kind::ContentLength => framing.length_line(field.value.of(buf)),
                Kind::TransferEncoding => {
                    framing.encodings += 1;
                    framing.only_chunked = framing.encodings == 1
                        && field
                            .value
                            .of(buf)
                            .trim_ascii()
                            .eq_ignore_ascii_case(b"chunked");
                }
                _ => {}
            }
        }
        framing
    }

    fn length_line(&mut self, value: &[u8]) {
        for element in value.split(|b| *b == b',') {
            match decimal(element.trim_ascii()) {
                Some(n) if self.length.is_none_or(|seen| seen == n) => self.length = Some(n),
                _ => self.length_bad = true,
            }
        }
    }
}

/// Digits only: no sign, no space, no hex, no overflow.
fn decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d < 10)?);
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// Copies `httparse`'s fields into the index.
fn index(buf: &[u8], parsed: &[httparse::Header<'_>], into: &mut Vec<Field>) {
    into.clear();
    into.extend(parsed.iter().map(|h| Field {
        name: Span::within(buf, h.name.as_bytes()),
        value: Span::within(buf, h.value),
        kind: Kind::of(h.name.as_bytes()),
    }));
}

/// Writes the field lines of an index as `name: value\r\n` (what a parse of the output indexes
/// the same again).
fn write_fields(fields: &[Field], buf: &[u8], out: &mut Vec<u8>) {
    for field in fields {
        out.extend_from_slice(field.name.of(buf));
        out.extend_from_slice(b": ");
        out.extend_from_slice(field.value.of(buf));
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_recognised_in_any_case() {
        assert_eq!(Kind::of(b"Content-Length"), Kind::ContentLength);
        assert_eq!(Kind::of(b"TRANSFER-ENCODING"), Kind::TransferEncoding);
        assert_eq!(Kind::of(b"host"), Kind::Host);
        assert_eq!(Kind::of(b"hosts"), Kind::Other);
        assert_eq!(Kind::of(b""), Kind::Other);
    }

    #[test]
    fn the_word_compare_agrees_with_a_byte_compare_on_every_token_byte() {
        // every name a single byte away from a known one, that byte any a token may hold
        let token =
            (0u8..=255).filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
        let token: Vec<u8> = token.collect();
        let known = [
            "host",
            "expect",
            "upgrade",
            "connection",
            "content-length",
            "transfer-encoding",
        ];
        for name in known {
            let kind = Kind::of(name.as_bytes());
            assert_ne!(kind, Kind::Other, "{name}");
            for at in 0..name.len() {
                for &b in &token {
                    let mut other = name.as_bytes().to_vec();
                    other[at] = b;
                    let same = other.eq_ignore_ascii_case(name.as_bytes());
                    let want = if same { kind } else { Kind::Other };
                    assert_eq!(
                        Kind::of(&other),
                        want,
                        "{:?}",
                        String::from_utf8_lossy(&other)
                    );
                }
            }
        }
    }

    #[test]
    fn lengths_are_plain_decimals_all_equal() {
        let length = |lines: &[&str]| {
            let mut f = Framing::default();
            for line in lines {
                f.length_line(line.as_bytes());
            }
            (!f.length_bad).then_some(f.length).flatten()
        };
        assert_eq!(length(&["0"]), Some(0));
        assert_eq!(length(&["42"]), Some(42));
        assert_eq!(length(&["2", "2"]), Some(2));
        assert_eq!(length(&["2, 2"]), Some(2));
        assert_eq!(length(&[" 7 "]), Some(7));
        assert_eq!(length(&["18446744073709551615"]), Some(u64::MAX));
        for bad in [
            &["2", "3"][..],
            &["2, 3"],
            &["+2"],
            &["-2"],
            &["0x2"],
            &[""],
            &["2,"],
            &["1 2"],
            &["18446744073709551616"],
        ] {
            assert_eq!(length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connection_tokens_decide_keep_alive() {
        let says = |v: &str| {
            let mut s = ConnectionSays::default();
            s.read(v.as_bytes());
            s
        };
        assert!(says("").keeps_alive(1));
        assert!(!says("Close").keeps_alive(1));
        assert!(!says("").keeps_alive(0));
        assert!(says("keep-alive").keeps_alive(0));
        assert!(!says("keep-alive, close").keeps_alive(0));
        assert!(says("x, Upgrade").upgrade);
        assert!(says("x, Upgrade").other);
        assert!(!says(" close ,, Keep-Alive, upgrade").other);
    }
}
