//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 7.6.1), the
//! `X-Forwarded-*` family, and the client address as seen through trusted proxies.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use ipnet::IpNet;
use std::net::IpAddr;

use crate::request_id::RequestId;

/// Headers that describe one hop, never forwarded, plus whatever `Connection` names.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Where `Transfer-Encoding` is in [`HOP_BY_HOP`].
const TRANSFER_ENCODING_AT: usize = 5;

/// What a message's `Connection` header said about the connection itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionSays {
    pub close: bool,
    pub keep_alive: bool,
    /// The message carried `Transfer-Encoding` (removed with the rest): its body was framed by
    /// it, so a `Content-Length` beside it says nothing true.
    pub transfer_encoding: bool,
    /// ... and that was exactly `chunked` (`hygiene::is_only_chunked`): anything else (`gzip`,
    /// `chunked, gzip`, `chunked` twice) left a coding on the body that nobody would undo.
    pub only_chunked: bool,
}

impl ConnectionSays {
    /// Whether the connection a response came on stays open after it (RFC 9112 9.3): HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keeps_alive(self, version: Version) -> bool {
        match version {
            Version::HTTP_11 => !self.close,
            Version::HTTP_10 => self.keep_alive && !self.close,
            _ => false,
        }
    }
}

/// The fixed hop-by-hop fields, for the native client's test that its own spelling of them
/// (`upstream::conn::native`, compared as bytes) is this list.
#[cfg(test)]
pub fn hop_by_hop_names() -> &'static [HeaderName] {
    &HOP_BY_HOP
}

/// Whether `name` is one of the fixed hop-by-hop fields (a `Connection` header is one, so the
/// names it lists are found through it).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.iter().any(|h| h == name)
}

/// Removes the hop-by-hop fields; returns what `Connection` said (read while removing what it
/// lists, so a response's keep-alive verdict costs no second look).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> ConnectionSays {
    // one pass of cheap name comparisons finds which are present (most messages carry none or
    // just `Connection`); only those are removed, each removal being a hashed lookup
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    let mut says = ConnectionSays::default();
    if present == 0 {
        return says;
    }
    says.transfer_encoding = present & (1 << TRANSFER_ENCODING_AT) != 0;
    says.only_chunked = says.transfer_encoding && crate::http::hygiene::is_only_chunked(headers);
    // HOP_BY_HOP[0] is `Connection`: the names it lists go too
    if present & 1 != 0 {
        if let Some(listed) = connection_tokens(headers, &mut says) {
            for name in listed {
                headers.remove(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    says
}

/// Extra header names listed in `Connection` (beyond the fixed hop-by-hop set and our own); `None`
/// when there are none, which is the common case and allocates nothing. Notes `close` and
/// `keep-alive` in `says`.
fn connection_tokens(headers: &HeaderMap, says: &mut ConnectionSays) -> Option<Vec<HeaderName>> {
    let mut extra: Option<Vec<HeaderName>> = None;
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for token in tokens {
        let token = token.trim();
        if token.eq_ignore_ascii_case("close") {
            says.close = true;
            continue;
        }
        if token.eq_ignore_ascii_case("keep-alive") {
            says.keep_alive = true;
            continue;
        }
        // Gatehouse's own (`Host` and `ADDED`): a `Connection` token never removes them (from
        // a trusted proxy that would drop the chain it vouches for)
        let known = HOP_BY_HOP
            .iter()
            .chain(&ADDED)
            .chain([&header::HOST])
            .any(|h| h.as_str().eq_ignore_ascii_case(token));
        if known || token.is_empty() {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            extra.get_or_insert_with(Vec::new).push(name);
        }
    }
    extra
}

/// Whether the request's `TE` says it takes trailers.
pub fn takes_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| {
            let t = t.split(|b| *b == b';').next().unwrap_or_default();
            t.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
}

/// The `Upgrade` protocol when the request asks for one (`Connection: upgrade` + `Upgrade: x`).
/// Never `h2c`: that would switch the upstream connection to HTTP/2 behind our back (clients
/// reach our HTTP/2 by prior knowledge instead), so such a request goes up as plain HTTP/1.1.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
        .filter(|proto| !names_h2c(proto))
}

fn names_h2c(upgrade: &HeaderValue) -> bool {
    upgrade
        .as_bytes()
        .split(|b| *b == b',')
        .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
}

pub fn restore_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// An address as a header value; made once per connection, shared by its requests.
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Gatehouse's own headers on a forwarded request, in the order they are written.
static ADDED: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-request-id"),
];
const FOR: usize = 0;
const PROTO: usize = 1;
const HOST: usize = 2;
const REAL_IP: usize = 3;
const PORT: usize = 4;
const ID: usize = 5;

/// Who a request came from and how, for Gatehouse's own headers ([`Added`]).
pub struct Client<'a> {
    /// The socket peer's address (`ip_header`).
    pub peer: &'a HeaderValue,
    /// The peer is in `trusted_proxies`: it vouches for the chain before it.
    pub peer_trusted: bool,
    /// The canonical authority (`X-Forwarded-Host`).
    pub host: Option<&'a HeaderValue>,
    pub proto: &'static str,
    /// `X-Real-IP`: the client's address, `None` for a client that is not known.
    pub real_ip: Option<HeaderValue>,
    /// `X-Forwarded-Port`: the port the client asked for in its authority, else the scheme's.
    pub port: HeaderValue,
    pub request_id: &'a RequestId,
}

/// Gatehouse's own headers for one forwarded request: `X-Forwarded-For/-Proto/-Host`,
/// `X-Real-IP`, `X-Forwarded-Port`, `X-Request-Id`. A peer outside `trusted_proxies` cannot
/// vouch for anything: its values are replaced, not extended; a trusted one's
/// `X-Forwarded-For` is extended and its `-Proto`, `-Host` and `-Port` kept.
///
/// Held beside the request's map rather than put into it when the map holds none of these
/// names, nothing reads them there (no `request_headers` rules) and the pool's HTTP/1.1 client
/// is the native one: it writes them after the map's fields (six map inserts per request cost
/// ~1,500 instructions, callgrind). A request that goes another way after all (an HTTP/2
/// upstream, a hyper connection) has them put into its map as it is sent ([`Added::put_into`]).
#[derive(Debug, Default)]
pub struct Added {
    /// By [`ADDED`]'s order but the last; `None`: nothing to write (the client's kept, or none
    /// at all).
    values: [Option<HeaderValue>; ID],
    /// The last, `X-Request-Id`: inline bytes on the native engine (see `RequestId`).
    id: Option<RequestId>,
}

impl Added {
    /// Works out the headers for a request whose map is `headers` and puts them beside the map
    /// (here) when `beside` allows it and the map holds none of their names, else into the map,
    /// each replacing the client's where it stands. A client's own that they replace with
    /// nothing (`X-Forwarded-Host` without an authority, `X-Real-IP` for a client not known)
    /// are removed from the map.
    // inlined: its one caller builds `client` in place, where a call would copy it
    #[inline(always)]
    pub fn set(&mut self, headers: &mut HeaderMap, client: Client<'_>, beside: bool) {
        let trusted = client.peer_trusted;
        // which of the names the client sent: to keep them beside the map, and to read a trusted
        // peer's; otherwise all are taken as sent, as an insert replaces whatever is there
        let present = match beside || trusted {
            true => present(headers),
            false => u8::MAX,
        };
        let has = |i: usize| present & (1 << i) != 0;
        let beside = beside && present == 0;
        if !beside {
            headers.reserve(ADDED.len());
        }
        let chain = (trusted && has(FOR))
            .then(|| extend_chain(headers, client.peer))
            .flatten();
        let peer = chain.unwrap_or_else(|| client.peer.clone());
        self.put((headers, beside), FOR, peer);
        if !(trusted && has(PROTO)) {
            let proto = HeaderValue::from_static(client.proto);
            self.put((headers, beside), PROTO, proto);
        }
        if !(trusted && has(HOST)) {
            match client.host {
                Some(host) => self.put((headers, beside), HOST, host.clone()),
                None if has(HOST) => drop(headers.remove(&ADDED[HOST])),
                None => {}
            }
        }
        match client.real_ip {
            Some(ip) => self.put((headers, beside), REAL_IP, ip),
            None if has(REAL_IP) => drop(headers.remove(&ADDED[REAL_IP])),
            None => {}
        }
        if !(trusted && has(PORT)) {
            self.put((headers, beside), PORT, client.port);
        }
        match beside {
            true => self.id = Some(client.request_id.clone()),
            false => drop(headers.insert(ADDED[ID].clone(), client.request_id.value())),
        }
    }

    #[inline(always)]
    fn put(&mut self, (headers, beside): (&mut HeaderMap, bool), at: usize, value: HeaderValue) {
        match beside {
            true => self.values[at] = Some(value),
            false => drop(headers.insert(ADDED[at].clone(), value)),
        }
    }

    /// None at all: for a request whose headers are in its map already.
    pub fn none() -> &'static Added {
        static NONE: Added = Added {
            values: [None, None, None, None, None],
            id: None,
        };
        &NONE
    }

    /// Puts the headers into `headers`, each replacing what the map has under its name: for a
    /// client that writes the map alone (the native client, given these, writes both).
    pub fn put_into(&self, headers: &mut HeaderMap) {
        // `X-Forwarded-For` is always among them: without it there are none (the common case
        // here: they went into the map in `set`)
        if self.values[FOR].is_none() {
            return;
        }
        headers.reserve(ADDED.len());
        for (name, value) in ADDED.iter().zip(&self.values) {
            if let Some(value) = value {
                headers.insert(name.clone(), value.clone());
            }
        }
        if let Some(id) = &self.id {
            headers.insert(ADDED[ID].clone(), id.value());
        }
    }

    /// The headers to write, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, &[u8])> + '_ {
        let id = self.id.as_ref().map(|id| (&ADDED[ID], id.as_bytes()));
        ADDED
            .iter()
            .zip(&self.values)
            .filter_map(|(name, value)| Some((name, value.as_ref()?.as_bytes())))
            .chain(id)
    }
}

/// Which of [`ADDED`]'s names the map holds, a bit each: one pass of cheap comparisons (only a
/// name of the right length that starts with `x-` is compared whole), no hashed lookups.
fn present(headers: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in headers.keys() {
        let s = name.as_str().as_bytes();
        if !(9..=17).contains(&s.len()) || !s.starts_with(b"x-") {
            continue;
        }
        if let Some(i) = ADDED.iter().position(|a| a.as_str().as_bytes() == s) {
            present |= 1 << i;
        }
    }
    present
}

/// The `X-Forwarded-For` values a trusted peer sent, with `peer` appended; `None` when it sent
/// none.
fn extend_chain(headers: &HeaderMap, peer: &HeaderValue) -> Option<HeaderValue> {
    let mut xff: Option<Vec<u8>> = None;
    for v in headers.get_all(&ADDED[FOR]) {
        let chain = xff.get_or_insert_with(|| Vec::with_capacity(64));
        chain.extend_from_slice(v.as_bytes().trim_ascii());
        chain.extend_from_slice(b", ");
    }
    let mut chain = xff?;
    chain.extend_from_slice(peer.as_bytes());
    HeaderValue::from_bytes(&chain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keeps = |version, pairs: &[(&str, &str)]| {
            let mut h = map(pairs);
            strip_hop_by_hop(&mut h).keeps_alive(version)
        };
        let v11 = Version::HTTP_11;
        assert!(keeps(v11, &[]));
        assert!(keeps(v11, &[("connection", "keep-alive")]));
        assert!(!keeps(v11, &[("connection", "Close")]));
        assert!(!keeps(v11, &[("connection", "x-a, close"), ("x-a", "1")]));
        let v10 = Version::HTTP_10;
        assert!(!keeps(v10, &[]));
        assert!(keeps(v10, &[("connection", "Keep-Alive")]));
        assert!(!keeps(Version::HTTP_2, &[]));
    }

    #[test]
    fn a_coding_beside_or_instead_of_chunked_is_noted() {
        for (te, only) in [
            ("chunked", true),
            (" Chunked ", true),
            ("gzip", false),
            ("chunked, gzip", false),
            ("gzip, chunked", false),
        ] {
            let says = strip_hop_by_hop(&mut map(&[("transfer-encoding", te)]));
            assert!(says.transfer_encoding);
            assert_eq!(says.only_chunked, only, "{te:?}");
        }
        let twice = [
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ];
        assert!(!strip_hop_by_hop(&mut map(&twice)).only_chunked);
        assert!(!strip_hop_by_hop(&mut map(&[])).only_chunked);
    }

    #[test]
    fn strips_listed_and_fixed_hop_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn hop_headers_are_found_without_a_connection_header() {
        let mut h = map(&[
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
        let mut plain = map(&[("host", "a.test"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn te_trailers_is_found_among_other_codings() {
        assert!(takes_trailers(&map(&[("te", "trailers")])));
        assert!(takes_trailers(&map(&[("te", "gzip;q=0.5, Trailers")])));
        assert!(!takes_trailers(&map(&[("te", "gzip")])));
        assert!(!takes_trailers(&HeaderMap::new()));
    }

    #[test]
    fn upgrade_detected_only_with_connection_token() {
        assert!(
            requested_upgrade(&map(&[("connection", "Upgrade"), ("upgrade", "websocket")]))
                .is_some()
        );
        assert!(requested_upgrade(&map(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn h2c_is_never_an_upgrade() {
        for h2c in ["h2c", "H2C", "websocket, h2c"] {
            let h = map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", h2c)]);
            assert!(requested_upgrade(&h).is_none(), "{h2c}");
        }
    }

    #[test]
    fn connection_cannot_name_our_own_headers() {
        let mut h = map(&[
            (
                "connection",
                "X-Forwarded-For, x-request-id, Host, X-Forwarded-Proto, X-Forwarded-Host",
            ),
            ("host", "h.test"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.test"),
            ("x-request-id", "abc"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 5);
        assert!(!h.contains_key(header::CONNECTION));
    }

    /// Gatehouse's headers for a map, put into it; the same whether they went in at once or
    /// were kept beside it and put in later (as a hyper connection does).
    fn set(h: &mut HeaderMap, peer: &HeaderValue, trusted: bool, host: Option<&HeaderValue>) {
        let mut later = h.clone();
        let mut added = Added::default();
        added.set(h, client(peer, trusted, host, None), false);
        assert_eq!(added.fields().count(), 0);
        let mut beside = Added::default();
        beside.set(&mut later, client(peer, trusted, host, None), true);
        beside.put_into(&mut later);
        assert_eq!(*h, later);
    }

    static ID_1: RequestId = RequestId::from_static("id-1");

    fn client<'a>(
        peer: &'a HeaderValue,
        peer_trusted: bool,
        host: Option<&'a HeaderValue>,
        real_ip: Option<HeaderValue>,
    ) -> Client<'a> {
        Client {
            peer,
            peer_trusted,
            host,
            proto: "http",
            real_ip,
            port: HeaderValue::from_static("8080"),
            request_id: &ID_1,
        }
    }

    #[test]
    fn forwarded_for_is_replaced_from_untrusted_peer() {
        let peer = ip_header("127.0.0.1".parse().unwrap());
        let peer = &peer;
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-host", "evil")]);
        let host = HeaderValue::from_static("app.example.com");
        set(&mut h, peer, false, Some(&host));
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        set(&mut h, peer, true, Some(&host));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[
            ("x-forwarded-for", " 1.2.3.4 "),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        set(&mut h, peer, true, None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        let mut h = HeaderMap::new();
        set(&mut h, peer, true, None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn a_trusted_peer_keeps_its_proto_host_and_port_an_untrusted_one_none() {
        let peer = ip_header("10.0.0.1".parse().unwrap());
        let host = HeaderValue::from_static("app.test");
        let sent = [
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.test"),
            ("x-forwarded-port", "443"),
            ("x-real-ip", "203.0.113.9"),
            ("x-request-id", "theirs"),
        ];
        let mut h = map(&sent);
        set(&mut h, &peer, true, Some(&host));
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "public.test");
        assert_eq!(h["x-forwarded-port"], "443");
        // no address known for the client: its own claim goes
        assert!(!h.contains_key("x-real-ip"));
        assert_eq!(h["x-request-id"], "id-1");
        let mut h = map(&sent);
        set(&mut h, &peer, false, None);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(h.len(), 4, "{h:?}");
    }

    #[test]
    fn gatehouse_headers_stay_beside_a_map_that_holds_none_of_their_names() {
        let peer = ip_header("192.0.2.1".parse().unwrap());
        let host = HeaderValue::from_static("app.test");
        // near misses: same lengths, other names
        let mut h = map(&[
            ("x-forwarded-fox", "a"),
            ("x-real-ipp", "b"),
            ("x-requestid", "c"),
            ("y-forwarded-for", "d"),
        ]);
        let before = h.clone();
        let mut added = Added::default();
        let from = client(&peer, false, Some(&host), Some(peer.clone()));
        added.set(&mut h, from, true);
        assert_eq!(h, before);
        let fields: Vec<_> = added
            .fields()
            .map(|(n, v)| format!("{n}: {}", std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            fields,
            [
                "x-forwarded-for: 192.0.2.1",
                "x-forwarded-proto: http",
                "x-forwarded-host: app.test",
                "x-real-ip: 192.0.2.1",
                "x-forwarded-port: 8080",
                "x-request-id: id-1",
            ]
        );
        // any one of the names in the map: they all go into it, beside it only when asked
        for name in ADDED.iter() {
            for beside in [true, false] {
                let mut h = map(&[(name.as_str(), "x")]);
                let mut added = Added::default();
                added.set(&mut h, client(&peer, false, None, None), beside);
                assert_eq!(added.fields().count(), 0, "{name}");
                assert_eq!(h.len(), 4, "{name}: {h:?}");
            }
        }
        let mut h = map(&[("accept", "*/*")]);
        let mut added = Added::default();
        added.set(&mut h, client(&peer, false, None, None), false);
        assert_eq!((added.fields().count(), h.len()), (0, 5));
        assert_eq!(Added::none().fields().count(), 0);
    }
}
