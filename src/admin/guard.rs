//! Whom and what the admin listener answers: the peer (`admin_allow`), the name a request is
//! addressed to (`Host`, against DNS rebinding) and the `Origin` of a request that changes
//! something (`POST /reload`, against cross-site requests). Pure functions over the request head.
//!
//! DNS rebinding: a page from `evil.example` whose name then resolves to 127.0.0.1 may read the
//! answers of a loopback listener, but its requests still say `Host: evil.example`. So a request
//! must be addressed to the listener's own address (the one the connection reached), a loopback
//! name or an `admin_hosts` entry; the port is not compared (a NAT or `docker run -p` changes it,
//! and a rebinding page cannot choose the name). A request without any `Host` (an HTTP/1.0
//! probe) is answered: browsers always send one.

use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri, Version};
use ipnet::IpNet;
use std::net::IpAddr;

/// Why a request is refused; each refusal closes the connection after its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not in `admin_allow` (not loopback, without it).
    Peer,
    /// HTTP/1.1 without `Host` (RFC 9112 3.2), or more than one, or one that is not a host.
    BadHost,
    /// Addressed to a name that is not this listener's.
    Host,
    /// A request that changes something, sent by a page of another origin.
    Origin,
}

impl Refusal {
    /// `421 Misdirected Request` for a foreign name: the request reached a server that does not
    /// answer to it (RFC 9110 15.5.20), which is what a rebinding page's request is.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Peer | Refusal::Origin => StatusCode::FORBIDDEN,
            Refusal::BadHost => StatusCode::BAD_REQUEST,
            Refusal::Host => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Peer => "forbidden\n",
            Refusal::BadHost => "bad request: one Host header naming this listener is needed\n",
            Refusal::Host => "misdirected: this listener answers to its own address, localhost and [listen] admin_hosts\n",
            Refusal::Origin => "forbidden: a cross-origin request\n",
        }
    }
}

/// Loopback peers only, unless `admin_allow` lists who may ask.
pub fn peer_allowed(admin_allow: &[IpNet], peer: IpAddr) -> bool {
    let ip = peer.to_canonical();
    if admin_allow.is_empty() {
        ip.is_loopback()
    } else {
        admin_allow.iter().any(|net| net.contains(&ip))
    }
}

/// The names a request may be addressed to.
#[derive(Clone, Copy, Debug)]
pub struct Names<'a> {
    /// The address the connection reached (for a listener on `0.0.0.0`, the one asked).
    pub local: IpAddr,
    /// `[listen] admin_hosts`: lower case, IP addresses without brackets.
    pub extra: &'a [String],
}

impl Names<'_> {
    /// `host` as an authority gives it: a name, an IPv4 address or a bracketed IPv6 one.
    fn allow(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback()
                    || ip == self.local.to_canonical()
                    || self.extra.iter().any(|e| e.parse() == Ok(ip))
            }
            Err(_) => host == "localhost" || self.extra.contains(&host),
        }
    }
}

/// The request is addressed to one of `names` and, unless it is a `GET` or `HEAD`, comes from
/// no other origin.
pub fn check<B>(req: &Request<B>, names: &Names<'_>) -> Result<(), Refusal> {
    let addressed = addressed_to(req)?;
    if addressed.iter().any(|a| !names.allow(a.host())) {
        return Err(Refusal::Host);
    }
    let safe = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.headers().get(header::ORIGIN) {
        Some(origin) if !safe && !same_origin(origin, addressed.last(), names) => {
            Err(Refusal::Origin)
        }
        _ => Ok(()),
    }
}

/// The authorities a request names: its target's (absolute form) and its `Host`'s.
fn addressed_to<B>(req: &Request<B>) -> Result<Vec<Authority>, Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (host, more) = (hosts.next(), hosts.next());
    if more.is_some() {
        return Err(Refusal::BadHost);
    }
    let mut named: Vec<Authority> = req.uri().authority().cloned().into_iter().collect();
    if let Some(host) = host {
        named.push(authority(host).ok_or(Refusal::BadHost)?);
    }
    if named.is_empty() && req.version() >= Version::HTTP_11 {
        return Err(Refusal::BadHost);
    }
    Ok(named)
}

/// `host[:port]`, without user info, the port (if any) a number under 65536.
fn authority(value: &HeaderValue) -> Option<Authority> {
    let text = value.to_str().ok()?;
    let authority: Authority = text.parse().ok()?;
    let port_ok =
        authority.as_str().len() == authority.host().len() || authority.port_u16().is_some();
    (port_ok && !authority.as_str().contains('@')).then_some(authority)
}

/// `Origin: http://host[:port]` naming an allowed host on the port the request was addressed to
/// (a page on another port of `localhost` is another origin). `null` and anything else fail.
fn same_origin(origin: &HeaderValue, addressed: Option<&Authority>, names: &Names<'_>) -> bool {
    let Some(uri) = origin.to_str().ok().and_then(|o| o.parse::<Uri>().ok()) else {
        return false;
    };
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return false,
    };
    let Some(from) = uri.authority().filter(|a| !a.as_str().contains('@')) else {
        return false;
    };
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    let port = from.port_u16().unwrap_or(default_port);
    let addressed_port = addressed
        .and_then(Authority::port_u16)
        .unwrap_or(default_port);
    bare && port == addressed_port && names.allow(from.host())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: [u8; 4] = [10, 0, 0, 5];

    fn names(extra: &[String]) -> Names<'_> {
        Names {
            local: IpAddr::from(LOCAL),
            extra,
        }
    }

    fn req(method: &str, host: Option<&str>, origin: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/reload");
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(()).unwrap()
    }

    fn host(value: &str) -> Result<(), Refusal> {
        let extra = ["admin.internal".to_string(), "192.0.2.7".to_string()];
        check(&req("GET", Some(value), None), &names(&extra))
    }

    #[test]
    fn loopback_names_the_listeners_address_and_admin_hosts_are_answered() {
        for ok in [
            "localhost",
            "LOCALHOST.:9900",
            "127.0.0.1",
            "127.0.0.1:9900",
            "127.0.0.2:1",
            "[::1]",
            "[::1]:9900",
            "10.0.0.5:9900",
            "[::ffff:10.0.0.5]:9900",
            "admin.internal",
            "Admin.Internal:8080",
            "192.0.2.7:9900",
        ] {
            assert_eq!(host(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn other_names_are_misdirected_and_broken_hosts_bad() {
        for foreign in [
            "evil.example",
            "evil.example:9900",
            "localhost.evil.example",
            "10.0.0.6",
            "[::2]:9900",
            "2130706433",
        ] {
            assert_eq!(host(foreign), Err(Refusal::Host), "{foreign}");
        }
        assert_eq!(host("user@localhost"), Err(Refusal::BadHost));
        assert_eq!(host("localhost:99999"), Err(Refusal::BadHost));
        assert_eq!(host("local host"), Err(Refusal::BadHost));
        let two = Request::builder()
            .header(header::HOST, "localhost")
            .header(header::HOST, "evil.example")
            .body(())
            .unwrap();
        assert_eq!(check(&two, &names(&[])), Err(Refusal::BadHost));
    }

    #[test]
    fn an_absolute_target_is_checked_too_and_only_http_1_0_may_omit_host() {
        let absolute = |uri: &str| Request::builder().uri(uri).body(()).unwrap();
        let absolute_evil = absolute("http://evil.example/metrics");
        assert_eq!(check(&absolute_evil, &names(&[])), Err(Refusal::Host));
        let absolute_ok = absolute("http://localhost:9900/metrics");
        assert_eq!(check(&absolute_ok, &names(&[])), Ok(()));
        assert_eq!(
            check(&req("GET", None, None), &names(&[])),
            Err(Refusal::BadHost)
        );
        let mut old = req("GET", None, None);
        *old.version_mut() = Version::HTTP_10;
        assert_eq!(check(&old, &names(&[])), Ok(()));
    }

    #[test]
    fn a_post_needs_no_origin_or_the_same_one() {
        let post =
            |origin: Option<&str>| check(&req("POST", Some("localhost:9900"), origin), &names(&[]));
        assert_eq!(post(None), Ok(()));
        assert_eq!(post(Some("http://localhost:9900")), Ok(()));
        assert_eq!(post(Some("http://127.0.0.1:9900")), Ok(()));
        for cross in [
            "http://evil.example",
            "http://evil.example:9900",
            "http://localhost:3000",
            "http://localhost",
            "null",
            "file://",
            "http://user@localhost:9900",
        ] {
            assert_eq!(post(Some(cross)), Err(Refusal::Origin), "{cross}");
        }
        // a GET is only read, and a rebinding page cannot read it: Host already guards it
        let get = req("GET", Some("localhost:9900"), Some("http://evil.example"));
        assert_eq!(check(&get, &names(&[])), Ok(()));
        // behind a TLS front end, without a port on either side
        let extra = ["admin.example.com".to_string()];
        let tls = req(
            "POST",
            Some("admin.example.com"),
            Some("https://admin.example.com"),
        );
        assert_eq!(check(&tls, &names(&extra)), Ok(()));
    }

    #[test]
    fn peers_are_loopback_unless_admin_allow_lists_them() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(peer_allowed(&[], lo) && peer_allowed(&[], mapped));
        assert!(!peer_allowed(&[], lan));
        let allow = ["10.0.0.0/8".parse().unwrap()];
        assert!(peer_allowed(&allow, lan) && !peer_allowed(&allow, lo));
    }
}
