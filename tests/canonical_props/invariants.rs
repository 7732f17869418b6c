//! What every answer of `gatehouse::http::canonical`'s parsers must satisfy, whatever the input:
//! asserted on generated inputs by tests/canonical_props.rs and on fuzzed ones by the targets in
//! fuzz/, so both check one definition. Each check panics (naming the input) on a violation.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use gatehouse::http::canonical::{
    authority, forwarded_hop, path, BadPath, EncodedSlashes, PathParameters, PathRules,
};

use crate::model;

/// Every combination of `[server] merge_slashes`, `encoded_slashes` and `path_parameters`.
pub const ALL_RULES: [PathRules; 8] = [
    rules(true, EncodedSlashes::Reject, PathParameters::Reject),
    rules(true, EncodedSlashes::Keep, PathParameters::Reject),
    rules(false, EncodedSlashes::Reject, PathParameters::Reject),
    rules(false, EncodedSlashes::Keep, PathParameters::Reject),
    rules(true, EncodedSlashes::Reject, PathParameters::Keep),
    rules(true, EncodedSlashes::Keep, PathParameters::Keep),
    rules(false, EncodedSlashes::Reject, PathParameters::Keep),
    rules(false, EncodedSlashes::Keep, PathParameters::Keep),
];

const fn rules(
    merge_slashes: bool,
    encoded_slashes: EncodedSlashes,
    parameters: PathParameters,
) -> PathRules {
    PathRules {
        merge_slashes,
        encoded_slashes,
        parameters,
    }
}

/// What an assertion names when it fails, formatted only then (the fuzz targets run these checks
/// millions of times).
pub struct Ctx<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Ctx<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

fn ctx<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(write: F) -> Ctx<F> {
    Ctx(write)
}

/// The canonical path of `raw` under `rules`, checked against every property and the model.
pub fn check_path(raw: &str, rules: PathRules) -> Result<String, BadPath> {
    let result = path(raw, rules);
    let ctx = ctx(|f| write!(f, "path({raw:?}, {rules:?}) = {result:?}"));
    let reference = model::canonical_path(raw, rules);
    assert_eq!(
        result.as_deref().map_err(|_| ()),
        reference.as_deref().map_err(|_| ()),
        "{ctx}: the reference model (RFC 3986 5.2.4) disagrees"
    );
    if let Ok(Cow::Borrowed(out)) = &result {
        assert_eq!(*out, raw, "{ctx}: borrowed something other than the input");
    }
    check_encoded_separators(raw, rules, &result, &ctx);
    if let Ok(out) = &result {
        check_canonical_text(out, rules, &ctx);
        check_path_fixed_point(out, rules, &ctx);
    }
    result.map(Cow::into_owned)
}

/// The canonical text itself: absolute, visible ASCII, percent-encodings upper-case and only for
/// what must stay encoded, no dot segment in any spelling, no empty segment when merging.
fn check_canonical_text(out: &str, rules: PathRules, ctx: &dyn fmt::Display) {
    assert!(out.starts_with('/'), "{ctx}: not absolute");
    assert!(
        out.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
        "{ctx}: a byte outside visible ASCII, or a backslash"
    );
    if rules.merge_slashes {
        assert!(!out.contains("//"), "{ctx}: `//` left while merging");
    }
    for (i, _) in out.match_indices('%') {
        let code = out.get(i + 1..i + 3).unwrap_or_default();
        assert!(
            code.len() == 2 && code.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
            "{ctx}: `%` at {i} not followed by two upper-case hex digits"
        );
        let value = u8::from_str_radix(code, 16).unwrap_or_default();
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{ctx}: %{code} is an unreserved character left encoded"
        );
        assert_ne!(value, b'\\', "{ctx}: %5C passed");
        if rules.encoded_slashes == EncodedSlashes::Reject {
            assert_ne!(value, b'/', "{ctx}: %2F passed although rejected");
        }
    }
    for segment in out.split('/') {
        assert!(!is_dot_segment(segment), "{ctx}: dot segment {segment:?}");
    }
}

/// `.`/`..` however a lenient origin might read the segment: encodings decoded (all but `%2F`),
/// parameters after a raw or encoded `;` dropped.
pub fn is_dot_segment(segment: &str) -> bool {
    let mut decoded = Vec::new();
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let value = (bytes[i] == b'%')
            .then(|| std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok())
            .flatten()
            .and_then(|code| u8::from_str_radix(code, 16).ok())
            .filter(|v| *v != b'/');
        match value {
            Some(v) => {
                decoded.push(v);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let name = decoded.split(|b| *b == b';').next().unwrap_or_default();
    name == b"." || name == b".."
}

/// Canonicalising the canonical path changes nothing, and costs no allocation when there is no
/// percent-encoding left to look at (the fast path the request path relies on).
fn check_path_fixed_point(out: &str, rules: PathRules, ctx: &dyn fmt::Display) {
    let again = path(out, rules);
    assert_eq!(again.as_deref(), Ok(out), "{ctx}: not idempotent");
    if !out.contains('%') {
        assert!(
            matches!(again, Ok(Cow::Borrowed(_))),
            "{ctx}: the canonical path was rebuilt instead of borrowed"
        );
    }
}

/// `%2F` and `%5C` never become separators: `%5C` is always refused, `%2F` too unless kept, and a
/// kept `%2F` behaves exactly as an opaque encoded byte (`%FF`) would, wherever it stands, except
/// that a path where it would hide a dot segment (`..%2Fadmin`) is refused.
fn check_encoded_separators(
    raw: &str,
    rules: PathRules,
    result: &Result<Cow<'_, str>, BadPath>,
    ctx: &dyn fmt::Display,
) {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%5c") {
        assert!(result.is_err(), "{ctx}: %5C accepted");
    }
    if !lower.contains("%2f") {
        return;
    }
    match rules.encoded_slashes {
        EncodedSlashes::Reject => assert!(result.is_err(), "{ctx}: %2F accepted"),
        EncodedSlashes::Keep if matches!(result, Err(BadPath::EncodedSlash)) => {
            if lower.contains("%5c") {
                return;
            }
            // refused only because some segment's %2F-separated part is a dot segment
            let hides = raw.split('/').any(|segment| {
                let lower = segment.to_ascii_lowercase();
                lower.contains("%2f") && lower.split("%2f").any(is_dot_segment)
            });
            assert!(
                hides,
                "{ctx}: a kept %2F refused though it hides no dot segment"
            );
        }
        EncodedSlashes::Keep if !lower.contains("%ff") => {
            let opaque = raw.replace("%2f", "%FF").replace("%2F", "%FF");
            let expected = result.as_deref().map(|out| out.replace("%2F", "%FF"));
            assert_eq!(
                path(&opaque, rules).as_deref().map_err(|_| ()),
                expected.as_deref().map_err(|_| ()),
                "{ctx}: a kept %2F is not treated as one opaque byte (compared with {opaque:?})"
            );
        }
        EncodedSlashes::Keep => {}
    }
}

/// The authority of `raw`, checked: canonical text, a host that is a reg-name or a bracketed
/// IPv6 literal in its compressed form, a port that matches the text, and a fixed point.
pub fn check_authority(raw: &str) {
    let Ok(auth) = authority(raw) else { return };
    let ctx = ctx(|f| write!(f, "authority({raw:?}) = {auth:?}"));
    let value: &str = &auth.value;
    let host = auth.host();
    assert!(!host.is_empty(), "{ctx}: empty host");
    assert!(!host.ends_with('.'), "{ctx}: trailing dot");
    assert!(
        !value.bytes().any(|b| b.is_ascii_uppercase()),
        "{ctx}: not lower-case"
    );
    assert!(
        !host.contains(['/', '\\', '@', '%', ' ']),
        "{ctx}: a character no host has"
    );
    check_host_shape(host, &ctx);
    let port_text = auth.port.map(|p| format!(":{p}")).unwrap_or_default();
    assert_eq!(
        value,
        format!("{host}{port_text}"),
        "{ctx}: value is not host:port"
    );
    let again = authority(value);
    assert!(
        matches!(&again, Ok(a) if matches!(a.value, Cow::Borrowed(v) if v == value)
            && a.host_len == auth.host_len && a.port == auth.port),
        "{ctx}: not a fixed point: {again:?}"
    );
}

fn check_host_shape(host: &str, ctx: &dyn fmt::Display) {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or_default();
        let ip: Option<std::net::Ipv6Addr> = inner.parse().ok();
        assert_eq!(
            ip.map(|ip| ip.to_string()).as_deref(),
            Some(inner),
            "{ctx}: not a canonical IPv6 literal"
        );
        return;
    }
    assert!(
        host.split('.').all(|label| !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')),
        "{ctx}: not a reg-name of non-empty labels"
    );
}

/// One `X-Forwarded-For` hop, checked: an address is only read from the five written forms
/// (`v4`, `v6`, `v4:port`, `[v6]`, `[v6]:port`, blanks around), with a port of 1-5 digits
/// <= 65535.
pub fn check_hop(hop: &str) -> Option<IpAddr> {
    let ip = forwarded_hop(hop)?;
    let ctx = ctx(|f| write!(f, "forwarded_hop({hop:?}) = {ip}"));
    let text = hop.trim_matches([' ', '\t']);
    // the port text after the `:` that separates it, if there is one
    let (address, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (inner, after) = rest.split_once(']').unwrap_or_default();
            assert!(ip.is_ipv6(), "{ctx}: brackets around an IPv4 address");
            assert!(
                after.is_empty() || after.starts_with(':'),
                "{ctx}: text after `]`"
            );
            (inner, after.strip_prefix(':'))
        }
        None if text.parse::<IpAddr>().is_ok() => (text, None),
        None => {
            let (v4, port) = text.split_once(':').unwrap_or_default();
            assert!(
                ip.is_ipv4(),
                "{ctx}: a port after an unbracketed IPv6 address"
            );
            (v4, Some(port))
        }
    };
    assert_eq!(
        address.parse::<IpAddr>().ok(),
        Some(ip),
        "{ctx}: not the address written"
    );
    if let Some(port) = port {
        assert!(
            (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u32>().is_ok_and(|p| p <= 65535),
            "{ctx}: port {port:?} accepted"
        );
    }
    Some(ip)
}

/// A whole `X-Forwarded-For` value through the hop parser, right to left as the walk reads it
/// (src/upstream/forward.rs): the addresses of the hops up to the first that does not parse.
pub fn check_header(value: &str) -> Vec<IpAddr> {
    value.rsplit(',').map_while(check_hop).collect()
}
