//! Placeholders in config values (`redirect`, header rules, `rewrite`): parsed once when the
//! config is validated (`Template::parse`, so an unknown placeholder is a config error), expanded
//! on the request path (`Template::render`) from a `Vars` view of the canonical request.
//!
//! A placeholder is `{name}` where `name` is an identifier (letters, digits, `_`, `.`, `-`):
//! `{client_ip}`, `{host}`, `{port}`, `{scheme}`, `{path}`, `{uri}`, `{query}`, `{request_id}`,
//! `{header.NAME}`, `{query.NAME}`, `{tls.client.subject}`, `{tls.client.san}`,
//! `{tls.client.fingerprint}`, `{tls.client.serial}`, `{tls.client.verified}` (the client
//! certificate of a `client_auth` site's request: empty, and `false`, without one), and a
//! route's regex captures by name (`{id}`) or number (`{1}`). Any other brace is literal text, so JSON in a header value (`Report-To`, `NEL`) needs
//! no escaping. Values come from the canonical request (`http::canonical`): the path is the one
//! the router matched, the host is lower-case without its port.

use crate::tls::client::ClientCert;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use std::net::IpAddr;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A value with placeholders, pre-split so that expanding it only concatenates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    ClientIp,
    Host,
    /// The port the client addressed: the authority's, else the listener scheme's default.
    Port,
    Scheme,
    /// The canonical path.
    Path,
    /// The canonical path and the query (`/a/b?x=1`).
    Uri,
    /// The query as the client sent it, without `?`; empty when there is none.
    Query,
    RequestId,
    /// A request header's values, joined by `, `; empty when absent.
    Header(HeaderName),
    /// The first value of a query argument, as sent (still percent-encoded).
    QueryArg(String),
    /// A capture group of the route's `regex`, by index.
    Capture(usize),
    /// Of the client certificate verified for a `client_auth` site.
    TlsClient(CertField),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertField {
    Subject,
    San,
    Fingerprint,
    Serial,
    /// `true` or `false`.
    Verified,
}

impl CertField {
    const ALL: [(CertField, &'static str); 5] = [
        (CertField::Subject, "subject"),
        (CertField::San, "san"),
        (CertField::Fingerprint, "fingerprint"),
        (CertField::Serial, "serial"),
        (CertField::Verified, "verified"),
    ];

    fn name(self) -> &'static str {
        CertField::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("", |(_, name)| name)
    }

    fn value(self, cert: Option<&ClientCert>) -> &str {
        match (self, cert) {
            (CertField::Verified, cert) => {
                if cert.is_some() {
                    "true"
                } else {
                    "false"
                }
            }
            (_, None) => "",
            (CertField::Subject, Some(c)) => &c.subject,
            (CertField::San, Some(c)) => &c.san,
            (CertField::Fingerprint, Some(c)) => &c.fingerprint,
            (CertField::Serial, Some(c)) => &c.serial,
        }
    }
}

/// What placeholders expand to for one request.
pub struct Vars<'a> {
    pub client_ip: IpAddr,
    /// `client_ip` already formatted as a header value, when Gatehouse has one (the
    /// connection's peer's, made once per connection): a value that is only `{client_ip}`
    /// (`X-Real-IP`, the most common rule) is then a shared copy of it, not a new one.
    pub client_ip_value: Option<&'a HeaderValue>,
    /// The canonical host (lower-case, no port).
    pub host: &'a str,
    pub port: u16,
    /// `"http"` or `"https"`.
    pub scheme: &'a str,
    /// The canonical request target (origin-form).
    pub uri: &'a Uri,
    pub request_id: &'a crate::request_id::RequestId,
    pub headers: &'a HeaderMap,
    /// The route's regex captures, as positions in `uri.path()`.
    pub captures: Option<&'a regex::CaptureLocations>,
    /// The client certificate verified for the request's site (only a `client_auth` site's).
    pub client_cert: Option<&'a ClientCert>,
}

/// The names a template may use besides the fixed ones: the route regex's capture groups, as
/// `regex::Regex::capture_names` lists them (index 0 is the whole match).
#[derive(Clone, Copy, Default)]
pub struct Captures<'a> {
    pub names: &'a [Option<&'a str>],
}

const FIXED: &str = "{client_ip}, {host}, {port}, {scheme}, {path}, {uri}, {query}, {request_id}, \
                     {header.NAME}, {query.NAME}, {tls.client.subject}, {tls.client.san}, \
                     {tls.client.fingerprint}, {tls.client.serial}, {tls.client.verified}";

impl Template {
    /// Parses `text`; an unknown placeholder is an error naming the valid ones.
    pub fn parse(text: &str, captures: Captures<'_>) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name = after.find('}').map(|close| &after[..close]);
            match name.filter(|n| is_identifier(n)) {
                Some(name) => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(placeholder(name, captures)?);
                    rest = &after[name.len() + 1..];
                }
                None => {
                    literal.push('{');
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// A template from parts (for tests and built-in templates).
    pub fn from_parts(parts: Vec<Part>) -> Template {
        Template { parts }
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The text when there is no placeholder.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// Whether the template reads a capture group (the route must have a `regex`).
    pub fn uses_captures(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Capture(_)))
    }

    /// Appends the expansion to `out`. Bytes come as they are (a header's value may hold
    /// obs-text); whoever turns them into a header or a target checks them
    /// (`render_header`, `http::uri`).
    pub fn render(&self, vars: &Vars<'_>, out: &mut Vec<u8>) {
        for part in &self.parts {
            render_part(part, vars, out);
        }
    }

    /// The expansion as a header value; `None` when it holds a byte no header value may (CR, LF,
    /// NUL or another control byte): a placeholder's value never splits a header.
    pub fn render_header(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        if let ([Part::ClientIp], Some(value)) = (&self.parts[..], vars.client_ip_value) {
            return Some(value.clone());
        }
        // rendered into this thread's scratch buffer, then copied once into the value: one
        // allocation per value, not two
        SCRATCH.with(|scratch| {
            let mut out = scratch.borrow_mut();
            out.clear();
            self.render(vars, &mut out);
            let value = HeaderValue::from_bytes(&out).ok();
            // a huge expansion (a long header copied in) does not stay with the thread
            if out.capacity() > 4096 {
                *out = Vec::new();
            }
            value
        })
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(text)?,
                Part::ClientIp => f.write_str("{client_ip}")?,
                Part::Host => f.write_str("{host}")?,
                Part::Port => f.write_str("{port}")?,
                Part::Scheme => f.write_str("{scheme}")?,
                Part::Path => f.write_str("{path}")?,
                Part::Uri => f.write_str("{uri}")?,
                Part::Query => f.write_str("{query}")?,
                Part::RequestId => f.write_str("{request_id}")?,
                Part::Header(name) => write!(f, "{{header.{name}}}")?,
                Part::QueryArg(name) => write!(f, "{{query.{name}}}")?,
                Part::Capture(index) => write!(f, "{{{index}}}")?,
                Part::TlsClient(field) => write!(f, "{{tls.client.{}}}", field.name())?,
            }
        }
        Ok(())
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn placeholder(name: &str, captures: Captures<'_>) -> Result<Part, String> {
    Ok(match name {
        "client_ip" => Part::ClientIp,
        "host" => Part::Host,
        "port" => Part::Port,
        "scheme" => Part::Scheme,
        "path" => Part::Path,
        "uri" => Part::Uri,
        "query" => Part::Query,
        "request_id" => Part::RequestId,
        _ => {
            if let Some(header) = name.strip_prefix("header.") {
                let header = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| format!("`{{{name}}}`: `{header}` is not a header name"))?;
                return Ok(Part::Header(header));
            }
            if let Some(field) = name.strip_prefix("tls.client.") {
                return cert_field(name, field);
            }
            if let Some(arg) = name.strip_prefix("query.") {
                if arg.is_empty() {
                    return Err(format!("`{{{name}}}` names no query argument"));
                }
                return Ok(Part::QueryArg(arg.to_string()));
            }
            return capture(name, captures);
        }
    })
}

fn cert_field(name: &str, field: &str) -> Result<Part, String> {
    let found = CertField::ALL.iter().find(|(_, n)| *n == field);
    found.map(|(f, _)| Part::TlsClient(*f)).ok_or_else(|| {
        format!("unknown placeholder `{{{name}}}`; expected {{tls.client.subject}}, {{tls.client.san}}, {{tls.client.fingerprint}}, {{tls.client.serial}} or {{tls.client.verified}}")
    })
}

fn capture(name: &str, captures: Captures<'_>) -> Result<Part, String> {
    let index = match name.parse::<usize>() {
        Ok(index) => Some(index).filter(|i| *i < captures.names.len()),
        Err(_) => captures.names.iter().position(|n| *n == Some(name)),
    };
    index.map(Part::Capture).ok_or_else(|| {
        let named: Vec<String> = captures
            .names
            .iter()
            .flatten()
            .map(|n| format!("{{{n}}}"))
            .collect();
        match (captures.names.is_empty(), named.is_empty()) {
            (true, _) => format!("unknown placeholder `{{{name}}}`; expected one of {FIXED}"),
            (false, true) => format!(
                "unknown placeholder `{{{name}}}`; expected one of {FIXED}, or a capture group by number ({{1}} to {{{}}})",
                captures.names.len() - 1
            ),
            (false, false) => format!(
                "unknown placeholder `{{{name}}}`; expected one of {FIXED}, or a capture of the route's regex: {}",
                named.join(", ")
            ),
        }
    })
}

fn render_part(part: &Part, vars: &Vars<'_>, out: &mut Vec<u8>) {
    match part {
        Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
        Part::ClientIp => push_ip(out, vars.client_ip),
        Part::Host => out.extend_from_slice(vars.host.as_bytes()),
        Part::Port => push_decimal(out, u32::from(vars.port)),
        Part::Scheme => out.extend_from_slice(vars.scheme.as_bytes()),
        Part::Path => out.extend_from_slice(vars.uri.path().as_bytes()),
        Part::Uri => {
            let target = vars.uri.path_and_query().map_or("/", |pq| pq.as_str());
            out.extend_from_slice(target.as_bytes());
        }
        Part::Query => out.extend_from_slice(vars.uri.query().unwrap_or("").as_bytes()),
        Part::RequestId => out.extend_from_slice(vars.request_id.as_bytes()),
        Part::Header(name) => {
            for (i, value) in vars.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(value.as_bytes());
            }
        }
        Part::QueryArg(name) => {
            let value = vars.uri.query().and_then(|q| query_arg(q, name));
            out.extend_from_slice(value.unwrap_or("").as_bytes());
        }
        Part::Capture(index) => {
            let span = vars.captures.and_then(|c| c.get(*index));
            if let Some(text) = span.and_then(|(start, end)| vars.uri.path().get(start..end)) {
                out.extend_from_slice(text.as_bytes());
            }
        }
        Part::TlsClient(field) => {
            out.extend_from_slice(field.value(vars.client_cert).as_bytes());
        }
    }
}

/// An IPv4 address written by hand (the common case; `fmt` costs several hundred instructions
/// per call, on every request of a route with `{client_ip}`), IPv6 through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4.octets()),
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Dotted decimal, made on the stack and copied once: a push per digit costs a capacity check
/// each, `fmt` a good deal more.
fn push_ipv4(out: &mut Vec<u8>, octets: [u8; 4]) {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    out.extend_from_slice(&text[..len]);
}

fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// The first value of `name` in `query` (`a=1&b=2`), as written; `Some("")` for `?name` alone.
pub fn query_arg<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(
        uri: &'a Uri,
        headers: &'a HeaderMap,
        id: &'a crate::request_id::RequestId,
        captures: Option<&'a regex::CaptureLocations>,
    ) -> Vars<'a> {
        Vars {
            client_ip: "203.0.113.7".parse().unwrap(),
            client_ip_value: None,
            host: "app.example.com",
            port: 8443,
            scheme: "https",
            uri,
            request_id: id,
            headers,
            captures,
            client_cert: None,
        }
    }

    fn expand(template: &Template, vars: &Vars<'_>) -> String {
        let mut out = Vec::new();
        template.render(vars, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fixed_placeholders_expand() {
        let uri: Uri = "/a/b?x=1&s=64&x=2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        let id = crate::request_id::RequestId::from_static("req-1");
        let v = vars(&uri, &headers, &id, None);
        let t = Template::parse(
            "{scheme}://{host}:{port}{uri} {path}?{query} {client_ip} {request_id} {header.X-Tag} {query.s} {query.x} [{query.none}] [{header.absent}]",
            Captures::default(),
        )
        .unwrap();
        assert_eq!(
            expand(&t, &v),
            "https://app.example.com:8443/a/b?x=1&s=64&x=2 /a/b?x=1&s=64&x=2 203.0.113.7 req-1 a, b 64 1 [] []"
        );
    }

    #[test]
    fn captures_by_name_and_number() {
        let re = regex::Regex::new("^/u/(?<id>[0-9]+)/(avatar|banner)$").unwrap();
        let names: Vec<Option<&str>> = re.capture_names().collect();
        let captures = Captures { names: &names };
        let t = Template::parse("/avatars/{id}/{2}?size={query.s}", captures).unwrap();
        assert!(t.uses_captures());
        let uri: Uri = "/u/42/banner?s=64".parse().unwrap();
        let mut locs = re.capture_locations();
        assert!(re.captures_read(&mut locs, uri.path()).is_some());
        let (headers, id) = (
            HeaderMap::new(),
            crate::request_id::RequestId::from_static("-"),
        );
        let v = vars(&uri, &headers, &id, Some(&locs));
        assert_eq!(expand(&t, &v), "/avatars/42/banner?size=64");
        let err = Template::parse("{nope}", captures).unwrap_err();
        assert!(err.contains("{id}"), "{err}");
        assert!(Template::parse("{3}", captures).is_err());
        assert!(Template::parse("{id}", Captures::default()).is_err());
    }

    #[test]
    fn braces_that_are_not_placeholders_are_text() {
        let t = Template::parse(
            r#"{"group":"default","max_age":1} {a b} x{ }"#,
            Captures::default(),
        )
        .unwrap();
        assert_eq!(
            t.literal(),
            Some(r#"{"group":"default","max_age":1} {a b} x{ }"#)
        );
        assert_eq!(
            t.to_string(),
            r#"{"group":"default","max_age":1} {a b} x{ }"#
        );
        let err = Template::parse("{unknown}", Captures::default()).unwrap_err();
        assert!(err.contains("{client_ip}"), "{err}");
        assert!(Template::parse("{header.bad header}", Captures::default()).is_ok()); // text
        assert!(Template::parse("{header.}", Captures::default()).is_err());
        assert!(Template::parse("{query.}", Captures::default()).is_err());
    }

    #[test]
    fn a_header_value_never_carries_a_line_break() {
        let uri: Uri = "/".parse().unwrap();
        let mut headers = HeaderMap::new();
        // obs-text passes (as it came), a control byte cannot come from a parsed header, but a
        // capture or a literal could hold one: render_header refuses it
        headers.insert("x-a", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let id = crate::request_id::RequestId::from_static("-");
        let v = vars(&uri, &headers, &id, None);
        let t = Template::parse("v={header.x-a}", Captures::default()).unwrap();
        assert_eq!(t.render_header(&v).unwrap().as_bytes(), b"v=caf\xe9");
        let bad = Template::from_parts(vec![Part::Literal("a\r\nb".into())]);
        assert!(bad.render_header(&v).is_none());
    }

    #[test]
    fn a_lone_client_ip_is_the_connections_formatted_value() {
        let (uri, headers, id) = (
            Uri::from_static("/"),
            HeaderMap::new(),
            crate::request_id::RequestId::from_static("r"),
        );
        let made = HeaderValue::from_static("198.51.100.1");
        let mut v = vars(&uri, &headers, &id, None);
        v.client_ip_value = Some(&made);
        let lone = Template::parse("{client_ip}", Captures::default()).unwrap();
        // the formatted value is taken as it is (here on purpose another address than client_ip)
        assert_eq!(lone.render_header(&v).unwrap(), "198.51.100.1");
        let within = Template::parse("for={client_ip}", Captures::default()).unwrap();
        assert_eq!(within.render_header(&v).unwrap(), "for=203.0.113.7");
        v.client_ip_value = None;
        assert_eq!(lone.render_header(&v).unwrap(), "203.0.113.7");
    }

    #[test]
    fn addresses_and_ports_by_hand() {
        for (ip, port) in [
            ("0.0.0.0", 0u16),
            ("255.255.255.255", 65535),
            ("10.0.7.19", 80),
            ("192.168.100.9", 443),
            ("1.20.255.0", 8),
            ("2001:db8::1", 8443),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            out.push(b':');
            push_decimal(&mut out, u32::from(port));
            assert_eq!(String::from_utf8(out).unwrap(), format!("{ip}:{port}"));
        }
    }

    #[test]
    fn client_certificate_fields() {
        let t = Template::parse(
            "{tls.client.verified}|{tls.client.subject}|{tls.client.san}|{tls.client.fingerprint}|{tls.client.serial}",
            Captures::default(),
        )
        .unwrap();
        assert_eq!(
            t.to_string(),
            "{tls.client.verified}|{tls.client.subject}|{tls.client.san}|{tls.client.fingerprint}|{tls.client.serial}"
        );
        let (uri, headers, id) = (
            Uri::from_static("/"),
            HeaderMap::new(),
            crate::request_id::RequestId::from_static("-"),
        );
        let mut v = vars(&uri, &headers, &id, None);
        assert_eq!(expand(&t, &v), "false||||");
        let cert = ClientCert {
            subject: "CN=a,O=B".into(),
            san: "a.internal".into(),
            fingerprint: "ab12".into(),
            serial: "01".into(),
        };
        v.client_cert = Some(&cert);
        assert_eq!(expand(&t, &v), "true|CN=a,O=B|a.internal|ab12|01");
        let err = Template::parse("{tls.client.issuer}", Captures::default()).unwrap_err();
        assert!(err.contains("{tls.client.fingerprint}"), "{err}");
        let err = Template::parse("{nope}", Captures::default()).unwrap_err();
        assert!(err.contains("{tls.client.subject}"), "{err}");
    }

    #[test]
    fn query_args() {
        assert_eq!(query_arg("a=1&b=2", "b"), Some("2"));
        assert_eq!(query_arg("a&b=2", "a"), Some(""));
        assert_eq!(query_arg("ab=1", "a"), None);
        assert_eq!(query_arg("", "a"), None);
    }
}
