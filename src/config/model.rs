//! Validated, immutable configuration. Everything here has already been checked; the request path
//! and the state builder can trust it. All types are `Clone + Debug + PartialEq` so reloads can diff.

use crate::template::Template;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub source: PathBuf,
    pub listen: Listen,
    pub server: Server,
    pub sites: Vec<Site>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub acme: Acme,
    pub log: Log,
    /// `[cluster]`; `None` without one (every instance alone, as before).
    pub cluster: Option<super::Cluster>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Listen {
    /// Plain HTTP listeners, in config order (`http` takes one address or a list); no two
    /// listeners share an address, except port 0 (each gets a free port of its own).
    pub http: Vec<SocketAddr>,
    /// HTTPS listeners, in config order; all serve the same sites and certificates.
    pub https: Vec<SocketAddr>,
    /// The port clients reach `https` on when something in between maps it (`docker run -p
    /// 443:8443`, a NAT): HTTP->HTTPS redirects name it. `None`: the first HTTPS listener's own
    /// port.
    pub public_https_port: Option<u16>,
    /// Both listeners expect a PROXY protocol v1/v2 header first, from `trusted_proxies` only.
    pub proxy_protocol: bool,
    /// `/live` and `/ready` (and later metrics); off unless set.
    pub admin: Option<SocketAddr>,
    /// Who may use the admin listener; empty: loopback only.
    pub admin_allow: Vec<IpNet>,
    /// `Host` names the admin listener answers to besides its own address and the loopback
    /// names: lower case, no port, IP addresses without brackets.
    pub admin_hosts: Vec<String>,
}

impl Listen {
    /// Whether `addr` (one of the listeners) is bound IPv6-only: `[::]:P` when an IPv4 listener
    /// on port P is configured too (as nginx binds `[::]` always), so both can be bound; alone,
    /// `[::]:P` also takes IPv4 clients as the system allows (Linux: `bindv6only = 0`).
    pub fn v6_only(&self, addr: SocketAddr) -> bool {
        let all = || {
            self.http
                .iter()
                .chain(&self.https)
                .chain(self.admin.as_ref())
        };
        addr.is_ipv6()
            && addr.ip().is_unspecified()
            && addr.port() != 0
            && all().any(|a| a.is_ipv4() && a.port() == addr.port())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub trusted_proxies: Vec<IpNet>,
    /// Tokio worker threads; 0 means one per core.
    pub workers: usize,
    pub shutdown_grace: Duration,
    /// Where ACME accounts and certificates are kept.
    pub state_dir: PathBuf,
    pub timeouts: Timeouts,
    pub limits: ServerLimits,
    /// Where upstream names are looked up; every `Upstream` carries a copy.
    pub resolver: Resolver,
    /// How long one lookup of an upstream name may take; every `Upstream` carries a copy.
    pub resolve_timeout: Duration,
    /// Per-request metrics on (the default) or off.
    pub metrics: bool,
    /// The oldest TLS version the HTTPS listener accepts.
    pub tls_min_version: TlsVersion,
    /// How request paths are made canonical (`merge_slashes`, `encoded_slashes`).
    pub paths: PathRules,
    /// What happens to request header names with `_` (`underscore_headers`).
    pub underscore_headers: UnderscoreHeaders,
    /// Which HTTP/1.1 engine serves client connections (`http1_engine`).
    pub http1_engine: Http1Engine,
    /// The name (lower case) whose certificate a TLS client without SNI is served; it names a
    /// TLS site's host. `None`: the only TLS site's, or a catch-all TLS site's, else none.
    pub default_sni: Option<String>,
    /// `[server] send_min_rate` (the policy every route inherits unless told otherwise), kept
    /// here for what no route claims: a connection before its first request, a `404`.
    pub send_min_rate: Option<MinRate>,
    /// `[server] error_pages`: for answers no site claims (a request refused before routing,
    /// a host no site serves), and inherited by every site.
    pub error_pages: ErrorPages,
    /// `[server] response_headers`, for answers to requests no site takes.
    pub response_headers: HeaderRules,
}

/// What to do with `%2F` in a path (`[server] encoded_slashes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncodedSlashes {
    /// 400: an origin that decodes it would see another path than the one routed.
    #[default]
    Reject,
    /// Passed on still encoded, never decoded and never a segment separator.
    Keep,
}

/// What to do with `;` in a path (`[server] path_parameters`): Tomcat, Jetty and Spring drop
/// each segment's `;parameters` before they route, so to them `/api/admin;x/y` is
/// `/api/admin/y`, while the edge would see a segment `admin;x`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathParameters {
    /// 400 (Spring Security's `StrictHttpFirewall` refuses them too).
    #[default]
    Reject,
    /// Passed on as part of their segment (an origin that reads `;` as data, or a servlet app
    /// that needs `;jsessionid=`); `.;` and `..;` still count as dot segments.
    Keep,
}

/// How a request path is made canonical (`[server] merge_slashes`, `encoded_slashes`,
/// `path_parameters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    pub encoded_slashes: EncodedSlashes,
    pub parameters: PathParameters,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Reject,
            parameters: PathParameters::Reject,
        }
    }
}

/// Request header names containing `_` (`[server] underscore_headers`): an origin that folds
/// `_` into `-` (CGI, WSGI, Rails) would read `X_Real_IP` as `X-Real-IP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Removed before anything reads them (nginx `underscores_in_headers off`).
    #[default]
    Drop,
    /// The request gets 400.
    Reject,
    /// Passed on.
    Keep,
}

/// The HTTP/1.1 engine client connections are served with (`[server] http1_engine`, issue 23).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Http1Engine {
    /// hyper's server connection.
    #[default]
    Hyper,
    /// Gatehouse's own (`h1`): its codec and connection driver.
    Native,
}

impl Http1Engine {
    /// The engine when the config names none: `GATEHOUSE_HTTP1_ENGINE` if it names one (so the
    /// test suite runs on either engine without editing its configs), else hyper.
    pub fn unset() -> Http1Engine {
        match std::env::var("GATEHOUSE_HTTP1_ENGINE").as_deref() {
            Ok("native") => Http1Engine::Native,
            _ => Http1Engine::Hyper,
        }
    }
}

/// The oldest TLS version the HTTPS listener accepts (`[server] tls_min_version`). Older than 1.2
/// is not offered at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// `[server] resolve_timeout` unless set: a DNS server that has not answered in 5 s will not
/// (glibc and Go wait as long per try before they try again), and a reload waits at most this
/// long for the names of its new upstreams.
pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How upstream server names become addresses (`[server] resolver`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Resolver {
    /// getaddrinfo: `/etc/hosts`, then the servers and search domains of `/etc/resolv.conf`.
    #[default]
    System,
    /// A and AAAA queries sent straight to these DNS servers, tried in order.
    Dns(Vec<SocketAddr>),
}

/// Limits on connections and request heads, for the whole server.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerLimits {
    /// Concurrent client connections in total; 0 is no limit.
    pub max_connections: usize,
    /// Concurrent client connections per client address (IPv6 by `ipv6_prefix`); 0 is no limit.
    pub max_connections_per_ip: usize,
    /// The request line and headers together, in bytes (431 over it).
    pub max_header_size: usize,
    pub max_headers: usize,
    /// The request target, in bytes (414 over it).
    pub max_uri: usize,
    /// Concurrent streams one HTTP/2 connection may have open (nginx `http2_max_concurrent_streams`).
    pub http2_max_streams: u32,
    /// IPv6 clients are keyed by this prefix (a host usually owns a whole /64).
    pub ipv6_prefix: u8,
    /// Keys (client addresses, header values) one rate limit tracks at most; a new key on a
    /// full table evicts the keys with the most budget left.
    pub rate_limit_keys: usize,
    /// Response encoders (`encode`) alive at once, all routes together; beyond, responses go
    /// out uncompressed. 0 is no limit.
    pub max_encoders: usize,
    /// Header values one client address brings into a header-keyed limit's table at most; a
    /// new one beyond evicts that address's value with the most budget left.
    pub rate_limit_keys_per_ip: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_header_size: 32 << 10,
            max_headers: 100,
            max_uri: 8 << 10,
            http2_max_streams: 256,
            ipv6_prefix: 64,
            rate_limit_keys: 100_000,
            max_encoders: DEFAULT_MAX_ENCODERS,
            rate_limit_keys_per_ip: 100,
        }
    }
}

/// 64 encoders at brotli's measured 4.4 MiB each is at most ~280 MiB (zstd 2.0 MiB: ~130 MiB,
/// gzip 0.34 MiB: ~22 MiB); see docs/config.md's `max_encoders`.
pub const DEFAULT_MAX_ENCODERS: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
    /// A client that takes no bytes of the response for this long is cut (nginx `send_timeout`).
    pub send: Duration,
    pub tls_handshake: Duration,
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            send: Duration::from_secs(60),
            tls_handshake: Duration::from_secs(10),
            // above the 20-60 s pings of WebSocket servers (browsers send none of their own)
            tunnel_idle: Duration::from_secs(120),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub hosts: Vec<HostPattern>,
    pub tls: Option<SiteTls>,
    /// Plain-HTTP requests get a 308 to HTTPS (not for ACME HTTP-01 challenges).
    pub redirect_https: bool,
    /// `Strict-Transport-Security` value for HTTPS responses.
    pub hsts: Option<HeaderValue>,
    pub routes: Vec<Route>,
    /// Resolved: the site's own over `[server]`'s; for a path no route takes (`404`).
    pub error_pages: ErrorPages,
    /// The site's `response_headers` over the server's, for answers to requests no route takes.
    pub response_headers: HeaderRules,
    /// Client certificates (`client_auth`); only on a TLS site that redirects plain HTTP.
    pub client_auth: Option<ClientAuth>,
    /// The site's own ACME challenge (`acme = { ... }`), over `[acme]`'s.
    pub acme: Option<SiteAcme>,
}

/// A site's `client_auth`: which CA its clients' certificates are verified against, and whether
/// a client without one is let in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientAuth {
    /// PEM file of the CA certificates (read with the config, by `crate::load`).
    pub ca: PathBuf,
    pub mode: ClientAuthMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAuthMode {
    /// No certificate, no handshake.
    Require,
    /// A certificate is asked for; without one the handshake completes and the request goes on
    /// (a certificate that is sent must verify).
    Optional,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteTls {
    Files(TlsFiles),
    /// Obtained and renewed automatically; validation guarantees every host is an exact name.
    Acme,
    /// One certificate per name a client asks for, ordered in its handshake once `[acme]
    /// on_demand.ask` allows the name; validation guarantees `Acme::on_demand` is set.
    OnDemand,
}

impl Site {
    /// The names an ACME certificate for this site covers, in config order (wildcards as
    /// `*.example.com`: validation allows them only with DNS-01).
    pub fn names(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter_map(|h| match h {
                HostPattern::Exact(name) => Some(name.clone()),
                HostPattern::Wildcard(suffix) => Some(format!("*{suffix}")),
                HostPattern::Any => None,
            })
            .collect()
    }
}

/// A certificate chain and its key in PEM files, paths resolved against the config's folder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A `hosts` entry, normalised to lower case without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`: matches any depth of subdomain.
    Wildcard(String),
}

impl HostPattern {
    /// Whether `host` (lower case, no port, no trailing dot) is one of this pattern's names.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub matcher: PathMatch,
    /// `methods`, `headers`, `query`: all must hold, else the router passes the route over.
    pub conditions: Conditions,
    pub action: Action,
    /// Resolved: the route's own keys, else its site's, else `[server]`'s, else the defaults.
    pub policy: Policy,
    /// The route's own `cors`, else its site's; `None` leaves CORS to the upstream.
    pub cors: Option<Cors>,
    /// Resolved the same way as `policy`, key by key.
    pub encode: Encode,
    /// Resolved: the route's own over its site's (see `ErrorPages::over`).
    pub error_pages: ErrorPages,
    /// The upstream's answers with a status that has a page get the page instead.
    pub intercept_errors: bool,
    /// Header rules (resolved per header name), `upstream_host`, `X-Forwarded-Prefix`.
    pub headers: RouteHeaders,
    /// Only `X-Accel-Redirect` answers reach it; a client's request for it is a `404` (nginx
    /// `internal`).
    pub internal: bool,
    /// The route's own `basic_auth`, else its site's.
    pub basic_auth: Option<super::BasicAuth>,
    /// The route's own `forward_auth`, else its site's.
    pub forward_auth: Option<super::ForwardAuth>,
}

/// What a route does to headers, everything inherited already resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteHeaders {
    /// `request_headers`: applied to what goes upstream, after Gatehouse's own headers.
    pub request: HeaderRules,
    /// `response_headers`: applied to every answer of the route, the upstream's and Gatehouse's.
    pub response: HeaderRules,
    /// The same rules as the site's (the route and nothing between adds its own): an answer
    /// keeps what the site's rules already prepared.
    pub response_as_site: bool,
    /// `upstream_host`: the `Host` sent upstream instead of the client's.
    pub upstream_host: Option<HeaderValue>,
    /// With `strip_prefix`: the prefix removed, without its trailing slash (`/api`).
    pub forwarded_prefix: Option<HeaderValue>,
}

/// `request_headers` or `response_headers` resolved down to one route (or a site, the server):
/// each header name at most once, with the rule of the closest level that names it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderRules {
    pub rules: Vec<HeaderRule>,
    /// Values with a placeholder, numbered `0..templates` (`RuleValue::Template::slot`); none:
    /// applying the rules needs nothing from the request.
    pub templates: usize,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeaderRule {
    pub name: http::HeaderName,
    pub op: HeaderOp,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HeaderOp {
    /// Replaces every value the message has.
    Set(Vec<RuleValue>),
    /// Appends to what the message has.
    Add(Vec<RuleValue>),
    /// Sets, only when the message has none.
    Default(Vec<RuleValue>),
    Remove,
}

impl HeaderOp {
    /// The word the config uses.
    pub fn word(&self) -> &'static str {
        match self {
            HeaderOp::Set(_) => "set",
            HeaderOp::Add(_) => "add",
            HeaderOp::Default(_) => "default",
            HeaderOp::Remove => "remove",
        }
    }
}

/// A rule's value: ready as it is, or expanded per request.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleValue {
    Literal(HeaderValue),
    /// `slot`: where its expansion goes among the rules' (`HeaderRules::templates`).
    Template {
        template: Template,
        slot: usize,
    },
}

/// Files whose contents replace the body of an error answer, by status: an exact code, or a
/// class (`4xx`, `5xx`). Paths resolved against the config's folder; `crate::load` reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ErrorPages {
    pub pages: Vec<(StatusMatch, PathBuf)>,
}

/// An `error_pages` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusMatch {
    /// 400 to 599.
    Code(u16),
    /// 4 or 5: every code of `4xx` or `5xx`.
    Class(u16),
}

impl StatusMatch {
    fn covers(self, code: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == code,
            StatusMatch::Class(k) => code / 100 == k,
        }
    }
}

impl ErrorPages {
    /// The file for `status`: its exact code's, else its class's.
    pub fn page_for(&self, status: u16) -> Option<&PathBuf> {
        let exact = self
            .pages
            .iter()
            .find(|(m, _)| *m == StatusMatch::Code(status));
        let class = || self.pages.iter().find(|(m, _)| m.covers(status));
        exact.or_else(class).map(|(_, path)| path)
    }

    /// `inner` (a site's or route's own) over these (inherited): an inner key replaces the same
    /// key, and an inner class also the exact codes of that class, so the nearer level always
    /// decides (a route's `5xx` is not shadowed by the server's `502`).
    pub fn over(&self, inner: ErrorPages) -> ErrorPages {
        let shadowed = |m: &StatusMatch| {
            inner.pages.iter().any(|(i, _)| match (i, m) {
                (StatusMatch::Class(k), StatusMatch::Code(c)) => c / 100 == *k,
                _ => i == m,
            })
        };
        let kept = self.pages.iter().filter(|(m, _)| !shadowed(m)).cloned();
        let mut pages = inner.pages.clone();
        pages.extend(kept);
        ErrorPages { pages }
    }
}

/// Cross-origin resource sharing, answered by Gatehouse for the route: preflights never go
/// upstream, and responses to allowed origins carry the `Access-Control-*` headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Cors {
    pub origins: CorsOrigins,
    /// Methods cross-origin requests may use, upper case, in config order.
    pub methods: Vec<http::Method>,
    /// Request headers a preflight may ask for.
    pub headers: CorsHeaders,
    /// `Access-Control-Allow-Credentials: true` (cookies, `Authorization`); never with `Any`.
    pub credentials: bool,
    /// Response headers the page may read beyond the safelisted ones.
    pub expose: Vec<http::HeaderName>,
    /// How long a browser may reuse a preflight's answer (`Access-Control-Max-Age`), whole seconds.
    pub max_age: Duration,
}

pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq)]
pub enum CorsOrigins {
    /// `"*"`: any origin, answered `Access-Control-Allow-Origin: *`.
    Any,
    List(Vec<OriginPattern>),
}

/// An allowed origin, normalised: lower case, no default port (browsers send origins so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginPattern {
    /// `https://app.example.com`, `http://localhost:3000`.
    Exact(String),
    /// `https://*.example.com`: any subdomain, at any depth, with this scheme and port; stored as
    /// `https://` and `.example.com` (or `.example.com:8443`).
    Subdomains { scheme: String, suffix: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum CorsHeaders {
    /// `["*"]`: whatever the preflight asks for (echoed back, which also works with credentials).
    Any,
    List(Vec<http::HeaderName>),
}

/// Response compression (`encode`, `encode_min_size`, `encode_types`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encode {
    /// The codings responses may get, in the server's order of preference; empty: none.
    pub codings: Vec<Coding>,
    /// A response whose length is known and smaller is sent as it is (Caddy's `minimum_length`).
    pub min_size: u64,
    /// The media types that are compressed.
    pub types: Vec<MediaRange>,
}

pub const DEFAULT_ENCODE_MIN_SIZE: u64 = 512;

/// Text formats that compress well. Images, audio, video, archives and fonts in WOFF/WOFF2 are
/// compressed already; compressing them again costs CPU for nothing.
pub const DEFAULT_ENCODE_TYPES: [&str; 8] = [
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
    "application/wasm",
];

impl Default for Encode {
    fn default() -> Self {
        Encode {
            codings: Vec::new(),
            min_size: DEFAULT_ENCODE_MIN_SIZE,
            types: DEFAULT_ENCODE_TYPES
                .iter()
                .filter_map(|t| MediaRange::parse(t))
                .collect(),
        }
    }
}

/// A content coding Gatehouse can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    pub const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    /// The token in `Accept-Encoding`, `Content-Encoding` and the config.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    pub fn from_token(token: &str) -> Option<Coding> {
        Coding::ALL
            .into_iter()
            .find(|c| c.token().eq_ignore_ascii_case(token))
    }
}

/// An `encode_types` entry, in lower case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaRange {
    /// `application/json`.
    Exact { ty: String, subtype: String },
    /// `text/*`: every subtype.
    AnySubtype { ty: String },
    /// `application/*+json`: every subtype with that structured-syntax suffix (RFC 6838 §4.2.8),
    /// kept with its `+`.
    Suffix { ty: String, suffix: String },
}

impl MediaRange {
    /// `type/subtype`, `type/*` or `type/*+suffix`; each part an RFC 9110 token.
    pub fn parse(text: &str) -> Option<MediaRange> {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        let text = text.trim().to_ascii_lowercase();
        let (ty, subtype) = text.split_once('/')?;
        if !token(ty) {
            return None;
        }
        let ty = ty.to_string();
        if subtype == "*" {
            return Some(MediaRange::AnySubtype { ty });
        }
        if let Some(suffix) = subtype.strip_prefix("*+") {
            let ok = token(suffix) && !suffix.contains('+');
            return ok.then(|| MediaRange::Suffix {
                ty,
                suffix: format!("+{suffix}"),
            });
        }
        token(subtype).then(|| MediaRange::Exact {
            ty,
            subtype: subtype.to_string(),
        })
    }

    /// Whether `media_type` (`type/subtype`, parameters already cut off) is in this range.
    pub fn matches(&self, media_type: &str) -> bool {
        let Some((ty, subtype)) = media_type.split_once('/') else {
            return false;
        };
        match self {
            MediaRange::Exact { ty: t, subtype: s } => {
                ty.eq_ignore_ascii_case(t) && subtype.eq_ignore_ascii_case(s)
            }
            MediaRange::AnySubtype { ty: t } => ty.eq_ignore_ascii_case(t) && !subtype.is_empty(),
            MediaRange::Suffix { ty: t, suffix } => {
                let tail = subtype.len().checked_sub(suffix.len());
                ty.eq_ignore_ascii_case(t)
                    && tail.is_some_and(|at| {
                        at > 0
                            && subtype.is_char_boundary(at)
                            && subtype[at..].eq_ignore_ascii_case(suffix)
                    })
            }
        }
    }
}

impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaRange::Exact { ty, subtype } => write!(f, "{ty}/{subtype}"),
            MediaRange::AnySubtype { ty } => write!(f, "{ty}/*"),
            MediaRange::Suffix { ty, suffix } => write!(f, "{ty}/*{suffix}"),
        }
    }
}

/// What a request must satisfy before its route's action runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub rate_limits: Vec<RateLimit>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// Request body bytes; `None` is no limit.
    pub max_body: Option<u64>,
    /// The longest wait for the next piece of a request body (nginx `client_body_timeout`).
    pub body_timeout: Duration,
    /// The slowest a request body may come; `None` is no minimum.
    pub body_min_rate: Option<MinRate>,
    /// The slowest a client may take the response; `None` is no minimum.
    pub send_min_rate: Option<MinRate>,
    /// TCP connect and, for a TLS upstream, its handshake, together (nginx
    /// `proxy_connect_timeout`); `[server] timeouts` unless a site or route sets `timeouts`.
    pub upstream_connect: Duration,
    /// The longest wait for the response head once the request is sent, and between two reads
    /// of its body (nginx `proxy_read_timeout`); inherited as `upstream_connect`.
    pub upstream_response: Duration,
}

pub const DEFAULT_MAX_BODY: u64 = 1 << 20;

/// A minimum transfer rate (`body_min_rate`, `send_min_rate`), held as a budget of waiting
/// time (`http::pace`): each byte earns `1 / bytes_per_sec` seconds of waiting on the client,
/// up to the window, which is also what a client starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinRate {
    pub bytes_per_sec: u32,
    /// `None`: as long as the timeout of the same wait (`body_timeout`, `timeouts.send`).
    pub window: Option<Duration>,
}

/// 512 B/s, for both directions, over a window as long as the matching timeout. 512 B/s
/// (4 kbit/s) is below any mobile link in use (GPRS's slowest coding is 9 kbit/s), and leaves
/// room for a photo app uploading 8 files at once over a 5 KB/s uplink; Apache's
/// `mod_reqtimeout` has held request bodies to 500 B/s by default for years. A window equal to
/// `body_timeout` (or `timeouts.send`) means a pause is never cut sooner than the timeout
/// already cut it, whatever the timeout is set to. What the rate cuts is what the timeouts
/// cannot see: a trickle (with the 60 s defaults, 1 byte every 2 s is cut after ~60 s, a 64 B/s
/// reader after ~69 s).
pub const DEFAULT_MIN_RATE: MinRate = MinRate {
    bytes_per_sec: 512,
    window: None,
};

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rate_limits: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            max_body: Some(DEFAULT_MAX_BODY),
            body_timeout: Duration::from_secs(60),
            body_min_rate: Some(DEFAULT_MIN_RATE),
            send_min_rate: Some(DEFAULT_MIN_RATE),
            upstream_connect: Timeouts::default().upstream_connect,
            upstream_response: Timeouts::default().upstream_response,
        }
    }
}

/// `requests` per `per`, with `burst` requests allowed at once, per client address or per value
/// of a header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    /// Methods this budget counts; empty is every method.
    pub methods: Vec<http::Method>,
    /// What one budget belongs to.
    pub key: RateKey,
    /// Where the limit is written ("server", "site app.example.com", "route app.example.com /api/")
    /// and its place in that list: every route inheriting one definition shares one budget.
    pub scope: String,
}

/// What a rate limit counts requests by (`key = "ip"` or `key = "header:NAME"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The client address (IPv6 by `ipv6_prefix`).
    #[default]
    Ip,
    /// The value of this request header; a request without it, or with it blank, is counted by
    /// its client address in the same table.
    Header(http::HeaderName),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Searched in the canonical path (not anchored unless the pattern says so).
    Regex(Pattern),
}

impl PathMatch {
    /// The prefix, the exact path or the regex as written.
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Prefix(p) | PathMatch::Exact(p) => p,
            PathMatch::Regex(r) => r.as_str(),
        }
    }

    /// The capture groups a template on this route may name (`template::Captures::names`):
    /// the regex's, index 0 being the whole match; none for a route without `regex`.
    pub fn capture_names(&self) -> Vec<Option<&str>> {
        match self {
            PathMatch::Regex(r) => r.regex().capture_names().collect(),
            _ => Vec::new(),
        }
    }
}

/// A compiled regex (the `regex` crate: linear time, no look-around or backreferences), equal to
/// another when the pattern is, so reloads can diff and a repeated route is found.
#[derive(Clone, Debug)]
pub struct Pattern(regex::Regex);

/// A compiled regex may take this much memory at most (`regex::RegexBuilder::size_limit`);
/// beyond, the route is a config error. Route regexes are far below: `\.php$` compiles to
/// 0.4 KiB, `^/u/(?<id>[0-9]+)/avatar$` to 0.7 KiB, a case-insensitive API path with two groups
/// to 2.5 KiB; each Unicode `\w` costs ~50 KiB, so `\w{20}` (0.95 MiB) still fits and
/// `(\w{100})+` (4.8 MiB) does not. The crate's own default is 10 MiB, too much to multiply by a
/// few hundred routes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Pattern {
    /// Compiles `pattern` under `REGEX_SIZE_LIMIT`.
    pub fn new(pattern: &str) -> Result<Pattern, regex::Error> {
        regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Pattern)
    }

    pub fn regex(&self) -> &regex::Regex {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// What a request must also have for its route to take it (`methods`, `headers`, `query`);
/// empty lists ask nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Conditions {
    /// One of these methods; empty: any.
    pub methods: Vec<http::Method>,
    /// Each header present with a value that matches.
    pub headers: Vec<(http::HeaderName, ValueMatch)>,
    /// Each query argument (by its name as sent) present with a value that matches.
    pub query: Vec<(String, ValueMatch)>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty() && self.headers.is_empty() && self.query.is_empty()
    }
}

/// ` methods=GET,HEAD header.upgrade=websocket query.format=~^j` (empty without conditions):
/// what tells apart routes on one path, in rate-limit scopes.
impl fmt::Display for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.methods.is_empty() {
            let methods: Vec<&str> = self.methods.iter().map(http::Method::as_str).collect();
            write!(f, " methods={}", methods.join(","))?;
        }
        for (name, want) in &self.headers {
            write!(f, " header.{name}={want}")?;
        }
        for (name, want) in &self.query {
            write!(f, " query.{name}={want}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ValueMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueMatch::Present => f.write_str("*"),
            ValueMatch::Exact(text) => f.write_str(text),
            ValueMatch::Regex(r) => write!(f, "~{}", r.as_str()),
        }
    }
}

/// A `headers` or `query` condition's value: `"*"`, `"~regex"` or the exact text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueMatch {
    /// Present, whatever its value (even empty).
    Present,
    /// Equal: ASCII case-insensitively for a header (`websocket`, `WebSocket`), exactly for a
    /// query argument (its value as sent, percent-encoding included).
    Exact(String),
    /// The regex finds a match in the value (`(?i)` for case-insensitive).
    Regex(Pattern),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Proxy {
        upstream: String,
        /// What path (and query) the upstream is sent.
        target: UpstreamTarget,
        /// An upstream `Location` naming the upstream itself is mapped back to the client's
        /// scheme, host and prefix (`rewrite_location`, nginx `proxy_redirect default`).
        rewrite_location: bool,
        /// An upstream answer carrying `X-Accel-Redirect` is served from the site's route for
        /// that path (nginx's internal redirect).
        accel_redirect: bool,
        /// `files` on the same route: a `GET`/`HEAD` whose path names a file is served from
        /// the folder, anything else goes upstream (nginx `try_files $uri @app`).
        files_first: Option<Box<StaticFiles>>,
    },
    Respond(Respond),
    Redirect(Redirect),
    Files(StaticFiles),
}

/// A folder served as it is (`files`): nginx's `root`/`alias` with `try_files`, Caddy's
/// `file_server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticFiles {
    /// Resolved against the config file's folder; `load` checks that it is a folder.
    pub root: PathBuf,
    /// Tried in order for a path ending in `/`; empty: a folder is never served.
    pub index: Vec<String>,
    /// Below `root`, without its leading `/`: served (`200`) when nothing else is.
    pub fallback: Option<String>,
    /// Siblings (`app.js.br`, `.zst`, `.gz`) looked for, in this order of preference.
    pub precompressed: Vec<Coding>,
    /// Symbolic links may lead outside `root`.
    pub follow_symlinks: bool,
    /// Path segments starting with `.` that may be served (`.well-known`); every other is not.
    pub dotfiles: Vec<String>,
    /// The route's prefix is taken off the path before it is looked up (nginx `alias`); else
    /// the whole path is (nginx `root`).
    pub strip_prefix: bool,
}

/// `index` unless set: what nginx and Caddy look for first.
pub const DEFAULT_INDEX: &str = "index.html";

/// The target sent upstream, from the canonical one (`strip_prefix`, `upstream_path`,
/// `rewrite`; at most one of them).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum UpstreamTarget {
    /// The canonical path and the query as sent.
    #[default]
    AsIs,
    /// `strip_prefix = true`: the matched prefix removed, the rest still starting with `/`.
    StripPrefix,
    /// `upstream_path`: the matched prefix (the whole path on an `exact` route) replaced with
    /// this path; the query kept.
    ReplacePrefix(String),
    /// `rewrite`: the path and query built from placeholders; without a `?` of its own the
    /// client's query is kept.
    Rewrite(Template),
}

/// A built-in answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Respond {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    /// With placeholders (`crate::template`).
    pub to: Template,
    pub status: StatusCode,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub servers: Vec<UpstreamServer>,
    pub balance: Balance,
    pub resolve_every: Duration,
    /// From `[server] resolver`, kept here so that a pool is a function of its spec alone (a new
    /// resolver is a new spec, so a reload rebuilds the pool rather than reusing it).
    pub resolver: Resolver,
    /// From `[server] resolve_timeout`, kept here for the same reason as `resolver`.
    pub resolve_timeout: Duration,
    /// Active checks; `None` is none (passive ejection still applies).
    pub health: Option<HealthCheck>,
    pub eject: Eject,
    /// Extra attempts on other servers for a request that failed safely (see `upstream::retry`).
    pub retries: u32,
    /// Retries allowed as a share of requests, in percent, so a failing pool is not stormed.
    pub retry_budget: u32,
    pub when_all_down: AllDown,
    /// `/ready` answers 503 while this upstream has no healthy server.
    pub required: bool,
    /// `https://` servers: TLS to the upstream.
    pub tls: Option<UpstreamTls>,
    /// What the connections to the servers speak.
    pub protocol: Protocol,
    /// HTTP/2 streams one connection carries at once before another is opened.
    pub max_streams: u32,
}

/// The HTTP version spoken to an upstream's servers (`protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, one request at a time per connection.
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 over plain TCP or a Unix socket, by prior knowledge.
    H2c,
    /// ALPN offers `h2` and `http/1.1` to `https://` servers; plain ones get HTTP/1.1.
    Auto,
}

impl Protocol {
    /// Whether a new connection is HTTP/2 before any negotiation (`H2`, `H2c`).
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2 | Protocol::H2c)
    }
}

/// One `servers` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamServer {
    pub addr: Endpoint,
    /// Relative share of requests, 1 to 100.
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    /// The gRPC health protocol's service name instead of a GET of `path` (`""`: the whole
    /// server); `path` is then the protocol's method path.
    pub grpc: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a server in.
    pub healthy: u32,
    /// Consecutive failures that take it out.
    pub unhealthy: u32,
    /// Accepted status codes, inclusive.
    pub expect: (u16, u16),
    /// `Host` header for the check; default the server's address.
    pub host: Option<String>,
}

/// Passive checks: a server that fails real requests in a row is ejected for a while.
#[derive(Clone, Debug, PartialEq)]
pub struct Eject {
    /// Consecutive connect failures or resets; 0 turns it off.
    pub failures: u32,
    /// Consecutive 5xx answers; 0 turns it off.
    pub server_errors: u32,
    pub cooldown: Duration,
    /// The cool-down doubles on each ejection in a row, up to this.
    pub max_cooldown: Duration,
}

impl Default for Eject {
    fn default() -> Self {
        Eject {
            failures: 3,
            server_errors: 0,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

/// What to do when no server is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllDown {
    /// Answer 503 with `Retry-After`.
    Refuse,
    /// Send to all servers anyway (Envoy's panic mode): health may be what is wrong.
    TryAll,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Trusted in addition to the system roots.
    pub ca_root: Option<PathBuf>,
    /// Client certificate for mTLS to the upstream.
    pub client_cert: Option<TlsFiles>,
    /// Server name sent and verified; default the server's host name.
    pub sni: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    IpHash,
}

/// Where an upstream server listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `HOST:PORT`, `http://HOST:PORT`, `https://HOST:PORT`.
    Tcp(ServerAddr),
    /// `unix:PATH`: a Unix domain socket (plain HTTP), resolved against the config's folder.
    Unix(PathBuf),
}

impl Endpoint {
    /// The TCP address, unless it is a Unix socket.
    pub fn tcp(&self) -> Option<&ServerAddr> {
        match self {
            Endpoint::Tcp(addr) => Some(addr),
            Endpoint::Unix(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => addr.fmt(f),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An upstream server as written: an IP literal or a DNS name, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The `[acme]` section; defaults apply when it is absent.
#[derive(Clone, Debug, PartialEq)]
pub struct Acme {
    pub email: Option<String>,
    pub directory: String,
    /// An extra root trusted for the ACME API (private CAs such as Pebble or step-ca).
    pub ca_root: Option<PathBuf>,
    pub challenge: Challenge,
    /// Where DNS-01 records go; validation guarantees it is set when `challenge` is `Dns01`.
    pub dns: Option<Dns>,
    pub eab: Option<Eab>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// The certificate profile asked for in every order (checked against the CA's directory
    /// when ordering); `None`: the CA's default.
    pub profile: Option<String>,
    /// `on_demand = { ask = ..., ... }`: what `tls = "on_demand"` sites need.
    pub on_demand: Option<OnDemand>,
}

/// Certificates ordered in the handshake for names not known in advance (`tls = "on_demand"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnDemand {
    /// `http://` URL asked `GET <ask>?domain=<name>` before a name is ordered; 200 allows it.
    pub ask: http::Uri,
    /// Asks (and so orders) started per minute, across all names.
    pub max_per_minute: u32,
    /// How long a name the `ask` endpoint refused (or whose order failed) is refused without
    /// asking again.
    pub remember_refusals: Duration,
    /// How long a handshake waits for its name's certificate before it fails.
    pub handshake_wait: Duration,
}

impl OnDemand {
    pub const MAX_PER_MINUTE: u32 = 10;
    pub const REMEMBER_REFUSALS: Duration = Duration::from_secs(600);
    pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

impl Default for Acme {
    fn default() -> Self {
        Acme {
            email: None,
            directory: LETS_ENCRYPT.to_string(),
            ca_root: None,
            challenge: Challenge::Http01,
            dns: None,
            eab: None,
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
            profile: None,
            on_demand: None,
        }
    }
}

impl Acme {
    /// These settings with a site's own challenge (and DNS provider) over them.
    pub fn for_site(&self, site: &Site) -> Acme {
        match &site.acme {
            None => self.clone(),
            Some(own) => Acme {
                challenge: own.challenge,
                dns: own.dns.clone().or_else(|| self.dns.clone()),
                ..self.clone()
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
    /// A TXT record at `_acme-challenge.<name>`, published through `Acme::dns`.
    Dns01,
}

/// A site's own `acme = { challenge = ..., dns = ... }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteAcme {
    pub challenge: Challenge,
    /// `None`: `[acme]`'s provider.
    pub dns: Option<Dns>,
}

/// `dns = { provider = ..., ... }`: how DNS-01 records are published and when they count as
/// visible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    pub provider: DnsProvider,
    /// How long to wait for the record to be answered before telling the CA anyway fails.
    pub propagation_timeout: Duration,
    /// The DNS server asked whether the record is visible; `None`: rfc2136's `server`, else
    /// the system's resolvers (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsProvider {
    /// RFC 2136 dynamic updates, signed with TSIG when a key is set.
    Rfc2136(Rfc2136),
    /// lego's `exec` protocol: `command present|cleanup <fqdn.> <value>`.
    Exec { command: PathBuf },
    /// lego's `httpreq` protocol: `POST <endpoint>/present|cleanup` with `{"fqdn", "value"}`.
    HttpReq(HttpReq),
}

/// An HTTP endpoint taking lego's `httpreq` requests; the password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpReq {
    /// `http://` or `https://`, without a trailing slash.
    pub endpoint: String,
    /// Basic authentication: user name and password.
    pub auth: Option<(String, String)>,
}

impl fmt::Debug for HttpReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpReq")
            .field("endpoint", &self.endpoint)
            .field("user", &self.auth.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl DnsProvider {
    pub fn name(&self) -> &'static str {
        match self {
            DnsProvider::Rfc2136(_) => "rfc2136",
            DnsProvider::Exec { .. } => "exec",
            DnsProvider::HttpReq(_) => "httpreq",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rfc2136 {
    pub server: SocketAddr,
    /// Lower case, no trailing dot.
    pub zone: String,
    pub tsig: Option<Tsig>,
}

/// A TSIG key (RFC 8945); the secret is kept decoded and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Tsig {
    /// The key's name, as the server knows it (lower case, no trailing dot).
    pub name: String,
    pub secret: Vec<u8>,
    pub algorithm: TsigAlgorithm,
}

impl fmt::Debug for Tsig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tsig")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha1,
    #[default]
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm's name as DNS writes it.
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha1 => "hmac-sha1",
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

/// External account binding; the key is kept decoded and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// The `[log]` section; defaults apply when it is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub access: AccessTarget,
    /// For `Stdout` and `File`; `Stderr` events follow `--log-format`.
    pub format: AccessFormat,
    /// Lines queued for the access-log writer at most; beyond, a line is dropped and counted.
    pub buffer: usize,
}

pub const DEFAULT_ACCESS_BUFFER: usize = 8192;

impl Default for Log {
    fn default() -> Self {
        Log {
            access: AccessTarget::Stderr,
            format: AccessFormat::Json,
            buffer: DEFAULT_ACCESS_BUFFER,
        }
    }
}

/// Where access-log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessTarget {
    /// An event in the process log (target `gatehouse::access`), as before `[log]` existed.
    Stderr,
    Stdout,
    Off,
    /// Appended to; reopened on SIGUSR1. Resolved against the config file's folder.
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFormat {
    /// One JSON object per line.
    Json,
    /// nginx's `combined`, byte for byte.
    Combined,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(entries: &[(StatusMatch, &str)]) -> ErrorPages {
        ErrorPages {
            pages: entries
                .iter()
                .map(|(m, p)| (*m, PathBuf::from(p)))
                .collect(),
        }
    }

    #[test]
    fn error_pages_exact_codes_win_within_a_level_and_the_nearer_level_decides() {
        use StatusMatch::{Class, Code};
        let server = pages(&[(Code(502), "s502"), (Class(5), "s5xx"), (Code(404), "s404")]);
        let page = |p: &ErrorPages, s| p.page_for(s).and_then(|p| p.to_str()).map(String::from);
        assert_eq!(page(&server, 502).as_deref(), Some("s502"));
        assert_eq!(page(&server, 503).as_deref(), Some("s5xx"));
        assert_eq!(page(&server, 403), None);
        // a route's 5xx shadows the server's 502 too; its 403 adds to the server's 404
        let route = server.over(pages(&[(Class(5), "r5xx"), (Code(403), "r403")]));
        assert_eq!(page(&route, 502).as_deref(), Some("r5xx"));
        assert_eq!(page(&route, 404).as_deref(), Some("s404"));
        assert_eq!(page(&route, 403).as_deref(), Some("r403"));
        // a route's exact code leaves the server's class for the rest
        let route = server.over(pages(&[(Code(503), "r503")]));
        assert_eq!(page(&route, 503).as_deref(), Some("r503"));
        assert_eq!(page(&route, 504).as_deref(), Some("s5xx"));
        assert_eq!(page(&route, 502).as_deref(), Some("s502"));
    }

    #[test]
    fn media_ranges_parse_in_three_forms() {
        let p = |t: &str| MediaRange::parse(t).map(|r| r.to_string());
        assert_eq!(p("Application/JSON").as_deref(), Some("application/json"));
        assert_eq!(p("text/*").as_deref(), Some("text/*"));
        assert_eq!(
            p("application/*+json").as_deref(),
            Some("application/*+json")
        );
        for bad in [
            "json",
            "*/*",
            "text/",
            "/json",
            "text/html; charset=utf-8",
            "a/*+",
            "a/*+b+c",
            "te xt/html",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        assert_eq!(Encode::default().types.len(), DEFAULT_ENCODE_TYPES.len());
    }

    #[test]
    fn media_ranges_match_the_media_type() {
        let m = |range: &str, t: &str| MediaRange::parse(range).unwrap().matches(t);
        assert!(m("application/json", "Application/Json"));
        assert!(!m("application/json", "application/jsonx"));
        assert!(m("text/*", "text/event-stream"));
        assert!(!m("text/*", "texts/html"));
        assert!(!m("text/*", "text/"));
        assert!(m("application/*+json", "application/problem+json"));
        assert!(m("application/*+xml", "application/ATOM+XML"));
        assert!(!m("application/*+json", "application/json"));
        assert!(!m("application/*+json", "application/+json"));
        assert!(!m("application/*+json", "text/x+json"));
        assert!(!m("image/svg+xml", "image/png"));
    }
}
