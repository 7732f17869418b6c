//! The canonical request: the one form of a request's path, authority and method that routing,
//! policies, redirects, forwarding and the access log all read (`docs/security.md` gives each
//! rule with what nginx, Envoy and Caddy do).
//!
//! An origin behind Gatehouse decodes and normalises the target before it looks at it; if
//! Gatehouse matched the raw form, `/api/%61dmin` would pass a rule on `/api/admin/` and still
//! reach the admin handler. So the edge makes the request canonical first and forwards exactly
//! what it matched. Everything here is pure (no IO) and allocates only when a request is not
//! already canonical, which nearly all are.

use crate::config::Server;
pub use crate::config::{EncodedSlashes, PathParameters, PathRules, UnderscoreHeaders};
use crate::upstream::forward;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a request cannot be made canonical: 400 (405 for `BadMethod::NotAllowed`), and the
/// connection is closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Uncanonical {
    #[error("{0}")]
    Path(#[from] BadPath),
    #[error("{0}")]
    Host(#[from] BadHost),
    #[error("{0}")]
    Method(#[from] BadMethod),
    #[error("header name with `_`")]
    Underscore,
}

impl Uncanonical {
    /// A request that could not be read as meant ends its connection (RFC 9112 3.2 for Host;
    /// the same caution for a target or header no two parsers agree on). A refused method
    /// (CONNECT, TRACE) was read fine: what follows it is the next request.
    pub fn closes_connection(self) -> bool {
        !matches!(self, Uncanonical::Method(BadMethod::NotAllowed))
    }
}

/// What the rest of the request path needs of the canonical authority (the path and the
/// headers are canonical in the request itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// `host[:port]`, also the request's `Host` header now; `None` only for HTTP/1.0 without
    /// one.
    pub authority: Option<HeaderValue>,
    /// Length of the host part of `authority`.
    pub host_len: usize,
    pub port: Option<u16>,
    /// Whether a hop-by-hop header is present (seen in the same pass over the names), so that
    /// forwarding skips the removal pass when there is none, as for most requests.
    pub hop_by_hop: bool,
}

/// The host part of a canonical authority (all ASCII: checked when it was made canonical).
pub fn host_of(authority: Option<&HeaderValue>, host_len: usize) -> &str {
    // `to_str` is a plain visible-ASCII loop, cheaper on a short value than `from_utf8`
    let text = authority.and_then(|a| a.to_str().ok());
    text.and_then(|t| t.get(..host_len)).unwrap_or("")
}

/// Makes the request canonical in place: method checked, authority in `Host` (from the
/// absolute-form target or `:authority` when there is one), the target in origin-form with the
/// canonical path, header names only the edge may set removed (from an untrusted peer), names
/// with `_` handled as `[server] underscore_headers` says.
pub fn request<B>(
    req: &mut Request<B>,
    server: &Server,
    peer_trusted: bool,
) -> Result<Canonical, Uncanonical> {
    method(req.method())?;
    let mut canonical = request_authority(req)?;
    target(req, server.paths)?;
    canonical.hop_by_hop =
        screen_headers(req.headers_mut(), server.underscore_headers, peer_trusted)?;
    Ok(canonical)
}

/// The authority from the target when it has one (RFC 9112 3.2.2; HTTP/2's `:authority`), else
/// from `Host`; written back as the only `Host`.
fn request_authority<B>(req: &mut Request<B>) -> Result<Canonical, BadHost> {
    let host_header = req.headers().get(header::HOST);
    // the common case, an origin-form request whose Host is canonical already: one scan
    if let (None, Some(host)) = (req.uri().authority(), host_header) {
        if let Some((host_len, port)) = canonical_as_is(host.as_bytes()) {
            return Ok(Canonical {
                authority: Some(host.clone()),
                host_len,
                port,
                hop_by_hop: false,
            });
        }
    }
    let host_text = host_header
        .map(|h| h.to_str().map_err(|_| BadHost::Character))
        .transpose()?;
    let (raw, from_header) = match (req.uri().authority(), host_text) {
        (Some(target), Some(host)) if req.version() == Version::HTTP_2 => {
            // RFC 9113 8.3.1: a Host naming another authority makes the request malformed
            if authority(target.as_str())?.value != authority(host)?.value {
                return Err(BadHost::Conflict);
            }
            (target.as_str(), false)
        }
        (Some(target), _) => (target.as_str(), false),
        (None, Some(host)) => (host, true),
        (None, None) if req.version() < Version::HTTP_11 => {
            return Ok(Canonical {
                authority: None,
                host_len: 0,
                port: None,
                hop_by_hop: false,
            })
        }
        (None, None) => return Err(BadHost::Missing),
    };
    let parsed = authority(raw)?;
    let unchanged = from_header && matches!(parsed.value, Cow::Borrowed(_));
    let value = match host_header {
        Some(h) if unchanged => h.clone(),
        _ => HeaderValue::from_str(&parsed.value).map_err(|_| BadHost::Character)?,
    };
    let canonical = Canonical {
        authority: Some(value.clone()),
        host_len: parsed.host_len,
        port: parsed.port,
        hop_by_hop: false,
    };
    if !unchanged {
        req.headers_mut().insert(header::HOST, value);
    }
    Ok(canonical)
}

/// The target in origin-form with the canonical path; the query as sent. Nothing is allocated
/// for an origin-form target whose path is canonical.
fn target<B>(req: &mut Request<B>, rules: PathRules) -> Result<(), BadPath> {
    let uri = req.uri();
    let origin_form = uri.scheme().is_none() && uri.authority().is_none();
    let raw = match uri.path() {
        "" => "/",
        p => p,
    };
    if raw == "*" && req.method() == Method::OPTIONS {
        return Ok(());
    }
    let canonical = path(raw, rules)?;
    let pq = match canonical {
        Cow::Borrowed(_) if origin_form => return Ok(()),
        Cow::Borrowed(_) => uri
            .path_and_query()
            .filter(|pq| pq.path() == raw)
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        Cow::Owned(mut p) => {
            if let Some(query) = uri.query() {
                p.push('?');
                p.push_str(query);
            }
            PathAndQuery::try_from(p).map_err(|_| BadPath::Control)?
        }
    };
    *req.uri_mut() = Uri::from(pq);
    Ok(())
}

/// One pass over the header names: `_` names and, from an untrusted peer, names only the edge
/// may set. Allocates only when something is removed. Says whether a hop-by-hop header is left.
fn screen_headers(
    headers: &mut HeaderMap,
    underscores: UnderscoreHeaders,
    peer_trusted: bool,
) -> Result<bool, Uncanonical> {
    let mut remove: Option<Vec<HeaderName>> = None;
    let mut hop_by_hop = false;
    for name in headers.keys() {
        // every hop-by-hop name starts with one of these
        hop_by_hop = hop_by_hop
            || matches!(
                name.as_str().as_bytes().first(),
                Some(b'c' | b'k' | b'p' | b't' | b'u')
            ) && forward::is_hop_by_hop(name);
        let text = name.as_str();
        let bytes = text.as_bytes();
        let removed = if has_underscore(bytes) {
            match underscores {
                UnderscoreHeaders::Reject => return Err(Uncanonical::Underscore),
                UnderscoreHeaders::Drop => true,
                UnderscoreHeaders::Keep => false,
            }
        } else {
            // every name on the list starts with one of these
            !peer_trusted
                && matches!(bytes.first(), Some(b'x' | b'f' | b't' | b'c'))
                && claims_to_be_edge(text)
        };
        if removed {
            remove.get_or_insert_with(Vec::new).push(name.clone());
        }
    }
    for name in remove.iter().flatten() {
        headers.remove(name);
    }
    Ok(hop_by_hop)
}

/// Why a path cannot be made canonical (answered 400, counted as `bad_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("`%` not followed by two hex digits")]
    BadPercent,
    #[error("encoded slash or backslash (`%2F`, `%5C`) in the path")]
    EncodedSlash,
    #[error("backslash in the path")]
    Backslash,
    #[error("control character in the path")]
    Control,
    #[error("byte outside ASCII in the path")]
    NonAscii,
    #[error("space in the path")]
    Space,
    #[error("the path climbs above `/`")]
    AboveRoot,
    #[error("`;` in the path (path parameters)")]
    Parameter,
}

/// Why an authority (Host, `:authority`, absolute-form) is refused (400, counted as `bad_host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    #[error("missing Host header")]
    Missing,
    #[error("empty host")]
    Empty,
    #[error("invalid character in the host")]
    Character,
    #[error("invalid port")]
    Port,
    #[error("invalid IPv6 literal")]
    Ipv6,
    #[error("empty label in the host")]
    EmptyLabel,
    #[error("Host differs from the request's authority")]
    Conflict,
}

/// Why a method is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadMethod {
    /// 400: `post` must not escape a `methods = ["POST"]` budget through an origin that
    /// upper-cases it (nginx refuses these too).
    #[error("methods are upper-case")]
    Case,
    /// 405: Gatehouse is no forward proxy (CONNECT), and TRACE would echo headers back.
    #[error("CONNECT and TRACE are not served (this is no forward proxy)")]
    NotAllowed,
}

/// The canonical form of `path` (no query), borrowed when it already is canonical.
pub fn path<'a>(raw: &'a str, rules: PathRules) -> Result<Cow<'a, str>, BadPath> {
    if !raw.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if is_canonical(raw.as_bytes(), rules) {
        return Ok(Cow::Borrowed(raw));
    }
    rebuild(raw, rules).map(Cow::Owned)
}

/// A quick look for anything the full pass would change or refuse: a `%`, a byte that is never
/// valid, an empty segment (when merging) or a dot segment. False positives only cost the pass.
fn is_canonical(bytes: &[u8], rules: PathRules) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' || b == b'\\' || b <= b' ' || b >= 0x7f {
            return false;
        }
        if b == b';' && rules.parameters == PathParameters::Reject {
            return false;
        }
        if b == b'/' {
            let rest = &bytes[i + 1..];
            if rules.merge_slashes && rest.first() == Some(&b'/') {
                return false;
            }
            if starts_with_dot_segment(rest) {
                return false;
            }
        }
        i += 1;
    }
    true
}

/// Whether a segment starting at `rest` is `.`, `..`, or one of those with `;parameters`.
fn starts_with_dot_segment(rest: &[u8]) -> bool {
    let dots = rest.iter().take_while(|b| **b == b'.').count();
    (dots == 1 || dots == 2) && matches!(rest.get(dots), None | Some(b'/') | Some(b';'))
}

/// The full pass: decode and re-encode each segment, then resolve dot and empty segments.
fn rebuild(raw: &str, rules: PathRules) -> Result<String, BadPath> {
    let mut out = String::with_capacity(raw.len());
    // where each kept segment's `/` is in `out`, so `..` can drop the last one
    let mut starts: Vec<usize> = Vec::new();
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let mark = out.len();
        out.push('/');
        decode_segment(segment, rules, &mut out)?;
        if hides_dot_segment(&out[mark + 1..], rules) {
            return Err(BadPath::EncodedSlash);
        }
        match dot_kind(&out[mark + 1..]) {
            Some(Dot::One) => out.truncate(mark),
            Some(Dot::Two) => {
                let previous = starts.pop().ok_or(BadPath::AboveRoot)?;
                out.truncate(previous);
            }
            None if out.len() == mark + 1 && !last && rules.merge_slashes => out.truncate(mark),
            None => {
                if !last || out.len() > mark + 1 {
                    starts.push(mark);
                }
                continue;
            }
        }
        // a dot segment at the end leaves the directory it names: `/a/b/..` is `/a/`
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// With `encoded_slashes = "keep"`, a segment such as `..%2Fadmin`: an origin that decodes `%2F`
/// before resolving dot segments (Tomcat's `encodedSolidusHandling="decode"`) would climb where
/// the edge saw one plain segment, so such a path is refused.
fn hides_dot_segment(segment: &str, rules: PathRules) -> bool {
    rules.encoded_slashes == EncodedSlashes::Keep
        && segment.contains("%2F")
        && segment.split("%2F").any(|part| dot_kind(part).is_some())
}

enum Dot {
    One,
    Two,
}

/// `.` and `..` (already decoded), also with parameters (`..;x`: Tomcat and Jetty strip
/// parameters before resolving dot segments, so `..;` climbs there). An encoded `;` counts too.
fn dot_kind(segment: &str) -> Option<Dot> {
    let name = segment.split(';').next().unwrap_or(segment);
    let name = name.split("%3B").next().unwrap_or(name);
    match name {
        "." => Some(Dot::One),
        ".." => Some(Dot::Two),
        _ => None,
    }
}

/// Appends `segment` in canonical form: unreserved characters decoded, other encodings
/// upper-cased, bytes no origin agrees on refused.
fn decode_segment(segment: &str, rules: PathRules, out: &mut String) -> Result<(), BadPath> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let value = bytes
                .get(i + 1..i + 3)
                .and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?))
                .ok_or(BadPath::BadPercent)?;
            push_decoded(value, rules, out)?;
            i += 3;
            continue;
        }
        check_raw(b)?;
        if b == b';' && rules.parameters == PathParameters::Reject {
            return Err(BadPath::Parameter);
        }
        out.push(char::from(b));
        i += 1;
    }
    Ok(())
}

fn check_raw(b: u8) -> Result<(), BadPath> {
    match b {
        b'\\' => Err(BadPath::Backslash),
        b' ' => Err(BadPath::Space),
        0..=0x1f | 0x7f => Err(BadPath::Control),
        0x80.. => Err(BadPath::NonAscii),
        _ => Ok(()),
    }
}

fn push_decoded(value: u8, rules: PathRules, out: &mut String) -> Result<(), BadPath> {
    match value {
        b'/' if rules.encoded_slashes == EncodedSlashes::Keep => out.push_str("%2F"),
        b'/' | b'\\' => return Err(BadPath::EncodedSlash),
        0..=0x1f | 0x7f => return Err(BadPath::Control),
        _ if is_unreserved(value) => out.push(char::from(value)),
        _ => {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(value >> 4)]));
            out.push(char::from(HEX[usize::from(value & 0xf)]));
        }
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A canonical authority: `host` or `host:port`, lower-case, no trailing dot, IPv6 in brackets
/// in its compressed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    /// The whole authority as it goes upstream (`Host`, `X-Forwarded-Host`).
    pub value: Cow<'a, str>,
    /// Length of the host part of `value` (without `:port`): what selects the site.
    pub host_len: usize,
    pub port: Option<u16>,
}

impl Authority<'_> {
    pub fn host(&self) -> &str {
        &self.value[..self.host_len]
    }
}

/// Parses and canonicalises an authority (no userinfo: RFC 9110 forbids it in `http` URIs, and
/// `user@host` is a classic way to make two parsers disagree).
pub fn authority(raw: &str) -> Result<Authority<'_>, BadHost> {
    if let Some((host_len, port)) = canonical_as_is(raw.as_bytes()) {
        return Ok(Authority {
            value: Cow::Borrowed(raw),
            host_len,
            port,
        });
    }
    if raw.is_empty() {
        return Err(BadHost::Empty);
    }
    let (host, port_text) = split_port(raw)?;
    let port = match port_text {
        None | Some("") => None,
        Some(text) => Some(parse_port(text)?),
    };
    let canonical_host = if host.starts_with('[') {
        ipv6_literal(host)?
    } else {
        reg_name(host)?
    };
    // the port is dropped when empty (`host:`) and rewritten when not in its shortest form
    let port_same = match (port_text, port) {
        (None, _) => true,
        (Some(text), Some(n)) => text.len() == digits(n),
        (Some(_), None) => false,
    };
    let host_same = matches!(canonical_host, Cow::Borrowed(h) if h.len() == host.len());
    let value = match canonical_host {
        _ if host_same && port_same => Cow::Borrowed(raw),
        _ => Cow::Owned(match port {
            Some(port) => format!("{canonical_host}:{port}"),
            None => canonical_host.clone().into_owned(),
        }),
    };
    Ok(Authority {
        host_len: canonical_host.len(),
        value,
        port,
    })
}

/// An authority that needs no change, found in one pass: a lower-case name or IPv4 address
/// (no empty label, no trailing dot), then perhaps a port in its shortest form. Returns the
/// host's length and the port; `None` sends the authority through the full parse, which
/// decides (so this may say `None` to anything it is unsure of).
fn canonical_as_is(raw: &[u8]) -> Option<(usize, Option<u16>)> {
    let mut previous = b'.';
    let mut host_len = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'.' if previous != b'.' => {}
            b':' => {
                host_len = i;
                break;
            }
            _ => return None,
        }
        previous = b;
    }
    if host_len == 0 || previous == b'.' {
        return None;
    }
    let Some(digits) = raw.get(host_len + 1..) else {
        return Some((host_len, None));
    };
    if digits.is_empty() || digits.len() > 5 || digits[0] == b'0' {
        return None;
    }
    let mut port: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(d - b'0');
    }
    u16::try_from(port).ok().map(|port| (host_len, Some(port)))
}

/// `("host", Some("8080"))`; the port text is `Some("")` for `host:`.
fn split_port(raw: &str) -> Result<(&str, Option<&str>), BadHost> {
    if raw.starts_with('[') {
        let end = raw.find(']').ok_or(BadHost::Ipv6)?;
        let (host, rest) = raw.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if rest.is_empty() => Ok((host, None)),
            None => Err(BadHost::Port),
        };
    }
    match raw.split_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((raw, None)),
    }
}

/// 1 to 5 digits, at most 65535; an empty port is `None` (dropped).
fn parse_port(text: &str) -> Result<u16, BadHost> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadHost::Port);
    }
    text.parse().map_err(|_| BadHost::Port)
}

fn digits(n: u16) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

/// `[v6]` in its canonical text (`[0:0::1]` is `[::1]`); zone ids are refused.
fn ipv6_literal(host: &str) -> Result<Cow<'_, str>, BadHost> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .ok_or(BadHost::Ipv6)?;
    let ip: Ipv6Addr = inner.parse().map_err(|_| BadHost::Ipv6)?;
    let text = ip.to_string();
    if text == inner {
        Ok(Cow::Borrowed(host))
    } else {
        Ok(Cow::Owned(format!("[{text}]")))
    }
}

/// Letters, digits, `-`, `_` and `.` (labels not empty), lower-cased, one trailing dot dropped.
fn reg_name(host: &str) -> Result<Cow<'_, str>, BadHost> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() {
        return Err(BadHost::Empty);
    }
    let mut upper = false;
    let mut previous = b'.';
    for b in trimmed.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            b'.' if previous == b'.' => return Err(BadHost::EmptyLabel),
            b'.' => {}
            _ => return Err(BadHost::Character),
        }
        previous = b;
    }
    if previous == b'.' {
        return Err(BadHost::EmptyLabel);
    }
    Ok(match (upper, trimmed.len() == host.len()) {
        (false, true) => Cow::Borrowed(host),
        (false, false) => Cow::Borrowed(trimmed),
        (true, _) => Cow::Owned(trimmed.to_ascii_lowercase()),
    })
}

/// Whether a method may go further: upper-case only, never CONNECT or TRACE.
pub fn method(method: &http::Method) -> Result<(), BadMethod> {
    if *method == http::Method::CONNECT || *method == http::Method::TRACE {
        return Err(BadMethod::NotAllowed);
    }
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(BadMethod::Case);
    }
    Ok(())
}

/// Who a request is from: whether the socket peer is a trusted proxy (worked out once per
/// request), and the client as best known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub peer_trusted: bool,
    /// The client's address; for an unknown client the proxy's, so that rate limits count all
    /// such requests through one proxy in one budget.
    pub client: IpAddr,
    /// False when a trusted proxy's `X-Forwarded-For` had a hop that does not parse: no `allow`
    /// list matches such a client and every `deny` list refuses it (fail closed).
    pub known: bool,
}

impl Addrs {
    /// `vouches`: whether the connection may speak for others at all (a PROXY protocol `LOCAL`
    /// or `UNKNOWN` connection may not, whoever its peer is).
    pub fn new(
        headers: &HeaderMap,
        peer: IpAddr,
        trusted: &[ipnet::IpNet],
        vouches: bool,
    ) -> Addrs {
        let peer_trusted = vouches && trusted.iter().any(|net| net.contains(&peer));
        let (client, known) = if peer_trusted {
            client_behind_proxies(headers, peer, trusted)
        } else {
            (peer, true)
        };
        Addrs {
            peer_trusted,
            client,
            known,
        }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// For a trusted peer: the rightmost `X-Forwarded-For` address that is not itself a trusted
/// proxy; `(peer, false)` when a hop before it does not parse.
fn client_behind_proxies(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: &[ipnet::IpNet],
) -> (IpAddr, bool) {
    let mut client = peer;
    let mut lines = headers.get_all(&X_FORWARDED_FOR).iter().rev().peekable();
    if lines.peek().is_none() {
        return (peer, true);
    }
    for line in lines {
        let Ok(line) = line.to_str() else {
            return (peer, false);
        };
        for hop in line.rsplit(',') {
            let Some(ip) = forwarded_hop(hop) else {
                return (peer, false);
            };
            client = ip.to_canonical();
            if !trusted.iter().any(|net| net.contains(&client)) {
                return (client, true);
            }
        }
    }
    (client, true)
}

/// One `X-Forwarded-For` hop: `IPv4`, `IPv6`, `IPv4:port`, `[IPv6]` or `[IPv6]:port` (as some
/// cloud load balancers write them); `None` for anything else (`unknown`, empty, garbage).
pub fn forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches([' ', '\t']);
    if let Some(rest) = hop.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return port_ok
            .then(|| inner.parse::<Ipv6Addr>().ok())
            .flatten()
            .map(IpAddr::V6);
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    let (ip, port) = hop.split_once(':')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    valid_port(port).then_some(IpAddr::V4(ip))
}

fn valid_port(text: &str) -> bool {
    parse_port(text).is_ok()
}

/// A plain loop: header names are short, and `memchr`'s set-up costs more than it saves here.
fn has_underscore(name: &[u8]) -> bool {
    for &b in name {
        if b == b'_' {
            return true;
        }
    }
    false
}

/// Header names only the edge may set: from a peer outside `trusted_proxies` they are removed,
/// since origins and frameworks take them as the client's address, scheme, port, prefix or the
/// URL to serve (`docs/security.md` lists who reads which).
pub fn claims_to_be_edge(name: &str) -> bool {
    matches!(
        name,
        "x-real-ip"
            | "forwarded"
            | "true-client-ip"
            | "x-client-ip"
            | "client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-original-forwarded-for"
            | "x-forwarded"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-ssl"
            | "x-forwarded-scheme"
            | "x-forwarded-protocol"
            | "x-forwarded-server"
            | "x-forwarded-uri"
            | "x-forwarded-method"
            | "x-url-scheme"
            | "front-end-https"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-original-host"
            | "x-host"
            | "x-original-method"
            | "x-proxyuser-ip"
    )
}

#[cfg(test)]
mod tests;
