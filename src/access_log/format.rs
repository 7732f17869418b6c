//! The two line formats, pure: one finished request in, one line out (newline included).

use super::Entry;
use crate::clock::Civil;
use crate::upstream::BackendAddr;
use http::{HeaderValue, Version};
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::time::SystemTime;

/// Lines are sized to fit most requests in their first allocation.
const LINE_CAPACITY: usize = 512;

/// One JSON object: every value a string except `status`, the byte counts and `duration_ms`;
/// absent values (host, upstream, user agent, referer) are `"-"`, as nginx writes them.
pub fn json(e: &Entry<'_>) -> Vec<u8> {
    let line = JsonLine {
        time: Shown(Rfc3339(e.time)),
        client: e.client,
        method: e.method.as_str(),
        host: text(e.host),
        path: e.uri.path(),
        query: e.uri.query().unwrap_or(""),
        protocol: protocol(e.version),
        status: e.status,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        duration_ms: e.duration.as_micros() as f64 / 1000.0,
        upstream: Shown(Dash(e.upstream)),
        request_id: String::from_utf8_lossy(e.request_id.as_bytes()),
        user_agent: text(e.user_agent),
        referer: text(e.referer),
    };
    let mut out = Vec::with_capacity(LINE_CAPACITY);
    // serializing plain strings and numbers into a Vec cannot fail
    let _ = serde_json::to_writer(&mut out, &line);
    out.push(b'\n');
    out
}

/// nginx's `combined`, byte for byte:
/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`.
/// Times are UTC (`+0000`); `$remote_user` is always `-` (no authentication here); quoted values
/// are escaped as nginx does (`"`, `\`, control and non-ASCII bytes as `\xHH`).
pub fn combined(e: &Entry<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(LINE_CAPACITY);
    let _ = write!(out, "{} - - [{}] \"", e.client, Clf(e.time));
    escape(&mut out, e.method.as_str().as_bytes());
    out.push(b' ');
    escape(&mut out, request_target(e).as_bytes());
    out.push(b' ');
    out.extend_from_slice(protocol(e.version).as_bytes());
    let _ = write!(out, "\" {} {} \"", e.status, e.bytes_out);
    quoted_header(&mut out, e.referer);
    out.extend_from_slice(b"\" \"");
    quoted_header(&mut out, e.user_agent);
    out.extend_from_slice(b"\"\n");
    out
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: Shown<Rfc3339>,
    client: IpAddr,
    method: &'a str,
    host: Cow<'a, str>,
    path: &'a str,
    query: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream: Shown<Dash<&'a BackendAddr>>,
    request_id: Cow<'a, str>,
    user_agent: Cow<'a, str>,
    referer: Cow<'a, str>,
}

/// Serialized through `Display` straight into the line (no intermediate `String`).
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct Dash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Dash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A header value as text; bytes that are not UTF-8 become U+FFFD.
fn text(value: Option<&HeaderValue>) -> Cow<'_, str> {
    value.map_or(Cow::Borrowed("-"), |v| {
        String::from_utf8_lossy(v.as_bytes())
    })
}

/// The target as nginx's `$request` shows it: as sent on HTTP/1 (origin or absolute form), the
/// path and query for HTTP/2 (whose URI is rebuilt from pseudo-headers).
fn request_target<'a>(e: &'a Entry<'_>) -> Cow<'a, str> {
    let uri = e.uri;
    if e.version >= Version::HTTP_2 || uri.scheme().is_none() {
        match uri.path_and_query() {
            Some(pq) => Cow::Borrowed(pq.as_str()),
            // CONNECT host:port
            None => Cow::Owned(uri.to_string()),
        }
    } else {
        Cow::Owned(uri.to_string())
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

fn quoted_header(out: &mut Vec<u8>, value: Option<&HeaderValue>) {
    match value {
        Some(v) => escape(out, v.as_bytes()),
        None => out.push(b'-'),
    }
}

/// nginx's default `log_format` escaping (`ngx_http_log_escape`).
fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\' {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
}

/// `2026-11-23T10:54:37.157Z`
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Civil::of(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
        )
    }
}

/// nginx's `$time_local` in UTC: `23/Nov/2026:10:54:37 +0000`.
struct Clf(SystemTime);

impl fmt::Display for Clf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let c = Civil::of(self.0);
        let month = MONTHS.get(c.month as usize - 1).copied().unwrap_or("-");
        write!(
            f,
            "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
            c.day, c.year, c.hour, c.minute, c.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Uri};
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    static UPSTREAM: BackendAddr = BackendAddr::Tcp(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 0, 0, 1),
        9000,
    )));

    fn entry<'a>(
        method: &'a Method,
        uri: &'a Uri,
        id: &'a crate::request_id::RequestId,
        ua: Option<&'a HeaderValue>,
    ) -> Entry<'a> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_430_077_157),
            client: "2001:db8::7".parse().unwrap(),
            method,
            uri,
            version: Version::HTTP_11,
            host: None,
            status: 404,
            bytes_in: 3,
            bytes_out: 21,
            duration: Duration::from_micros(1234),
            upstream: Some(&UPSTREAM),
            request_id: id,
            user_agent: ua,
            referer: None,
        }
    }

    #[test]
    fn times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_430_077_157);
        assert_eq!(Rfc3339(t).to_string(), "2026-11-23T10:34:37.157Z");
        assert_eq!(Clf(t).to_string(), "23/Nov/2026:10:34:37 +0000");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(Clf(leap).to_string(), "29/Feb/2000:00:00:00 +0000");
    }

    #[test]
    fn combined_is_nginx_combined_with_nginx_escaping() {
        let (m, uri) = (Method::GET, Uri::from_static("/a?b=c"));
        let id = crate::request_id::RequestId::from_static("rid");
        let ua = HeaderValue::from_bytes(b"curl \"x\"\\ \xff").unwrap();
        let line = combined(&entry(&m, &uri, &id, Some(&ua)));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2001:db8::7 - - [23/Nov/2026:10:34:37 +0000] \"GET /a?b=c HTTP/1.1\" 404 21 \"-\" \"curl \\x22x\\x22\\x5C \\xFF\"\n"
        );
    }

    #[test]
    fn json_has_every_field_and_dashes_for_absent_ones() {
        let (m, uri) = (Method::POST, Uri::from_static("http://h/p?q=1"));
        let id = crate::request_id::RequestId::from_static("rid");
        let line = json(&entry(&m, &uri, &id, None));
        assert_eq!(line.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["time"], "2026-11-23T10:34:37.157Z");
        assert_eq!(v["client"], "2001:db8::7");
        assert_eq!(v["path"], "/p");
        assert_eq!(v["query"], "q=1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["upstream"], "127.0.0.1:9000");
        assert_eq!(
            (v["host"].as_str(), v["user_agent"].as_str()),
            (Some("-"), Some("-"))
        );
        assert_eq!(v["bytes_in"], 3);
    }
}
