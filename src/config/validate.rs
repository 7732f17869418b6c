//! Turns the raw `FileConfig` into a validated `Config`, collecting every problem with its location.

use super::file::*;
use super::model::*;
use super::units::{parse_duration, parse_size, DURATION_HINT, SIZE_HINT};
use super::{BasicAuth, FileKind, ForwardAuth, Located, NamedFile};
use crate::template::Captures;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod auth;
mod client_auth;
mod cluster;
mod cors;
mod dns;
mod encode;
mod error_pages;
mod files;
mod headers;
mod listen;
mod log;
mod matching;
mod on_demand;
mod policy;
mod resolver;
mod upstream;

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<Located>,
    /// The files the config names, for the step that reads them (`crate::load`).
    files: Vec<NamedFile>,
}

impl Ctx<'_> {
    /// A path from the config, relative to the config file's folder.
    fn relative(&self, path: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(path)
    }

    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let located = Located::new(self.path, self.text, span, key.into(), message.into());
        self.errors.push(located);
    }

    /// `file`, named at `span` by `key`, is read after validation (which reads no file).
    fn names(&mut self, file: FileKind, span: Range<usize>, key: &str) {
        self.files.push(NamedFile::new(file, key.into(), span));
    }

    /// Expands `${VAR}` and `${VAR:-default}`; an unset variable without a default is an error.
    fn expand(&mut self, value: &Str, key: &str) -> Option<String> {
        match expand_env(value.get_ref(), |name| std::env::var(name).ok()) {
            Ok(s) => Some(s),
            Err(message) => {
                self.error(value.span(), key, message);
                None
            }
        }
    }

    /// One of a fixed set of words (the first is the default); an error lists them all.
    fn choice<T: Copy + Default>(
        &mut self,
        value: &Option<Str>,
        key: &str,
        choices: &[(&str, T)],
    ) -> T {
        let Some(value) = value else {
            return T::default();
        };
        let Some(text) = self.expand(value, key) else {
            return T::default();
        };
        if let Some((_, v)) = choices.iter().find(|(word, _)| *word == text) {
            return *v;
        }
        let words: Vec<String> = choices.iter().map(|(w, _)| format!("\"{w}\"")).collect();
        let msg = format!(
            "`{text}` is not valid here; expected one of {}",
            words.join(", ")
        );
        self.error(value.span(), key, msg);
        T::default()
    }

    fn duration(&mut self, value: &Option<Str>, key: &str, default: Duration) -> Duration {
        let positive = |d: Duration| !d.is_zero();
        self.duration_where(
            value,
            key,
            default,
            positive,
            format_args!("a valid duration; expected {DURATION_HINT}, greater than zero"),
        )
    }

    /// A duration key whose valid values `valid` picks (`duration` takes any but zero); an error
    /// says the value "is not {expected}".
    fn duration_where(
        &mut self,
        value: &Option<Str>,
        key: &str,
        default: Duration,
        valid: impl Fn(Duration) -> bool,
        expected: std::fmt::Arguments<'_>,
    ) -> Duration {
        let Some(value) = value else { return default };
        let Some(text) = self.expand(value, key) else {
            return default;
        };
        match parse_duration(&text).filter(|d| valid(*d)) {
            Some(d) => d,
            None => {
                self.error(value.span(), key, format!("`{text}` is not {expected}"));
                default
            }
        }
    }

    /// The entries of a list key, each expanded and parsed by `parse`, whose `Err` is reported at
    /// the entry. A repeat of an earlier entry (as parsed: `"GZIP"` repeats `"gzip"`) is left
    /// out, and reported as well with `Repeats::Refused`. `Ok` when every entry was good, else
    /// `Err` with the good ones, for a caller that goes on checking without knock-on errors.
    fn list<T: PartialEq>(
        &mut self,
        list: &Spanned<Vec<Str>>,
        key: &str,
        repeats: Repeats<'_>,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, Vec<T>> {
        let mut good = Vec::with_capacity(list.get_ref().len());
        let mut all_good = true;
        for value in list.get_ref() {
            let Some(text) = self.expand(value, key) else {
                all_good = false;
                continue;
            };
            match parse(&text) {
                Ok(entry) if !good.contains(&entry) => good.push(entry),
                Ok(_) => {
                    if let Repeats::Refused(hint) = repeats {
                        let msg = format!("`{text}` is listed twice; {hint}");
                        self.error(value.span(), key, msg);
                        all_good = false;
                    }
                }
                Err(msg) => {
                    self.error(value.span(), key, msg);
                    all_good = false;
                }
            }
        }
        if all_good {
            Ok(good)
        } else {
            Err(good)
        }
    }
}

/// What `Ctx::list` does with an entry that repeats an earlier one.
#[derive(Clone, Copy)]
enum Repeats<'h> {
    /// Left out: the list is a set.
    Dropped,
    /// Left out and an error, with what would be valid: in an order of preference, a repeat is
    /// a mistake.
    Refused(&'h str),
}

impl Ctx<'_> {
    fn count(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        valid: std::ops::RangeInclusive<usize>,
        default: usize,
    ) -> usize {
        let Some(value) = value else { return default };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if valid.contains(&n) => n,
            _ => {
                let (lo, hi) = (valid.start(), valid.end());
                let msg = format!(
                    "{} is out of range; expected a whole number from {lo} to {hi}",
                    value.get_ref()
                );
                self.error(value.span(), key, msg);
                default
            }
        }
    }

    /// A size key; `T` is the width the value is kept in (any `valid` value fits it).
    fn size<T: TryFrom<u64>>(
        &mut self,
        value: &Option<Str>,
        key: &str,
        valid: std::ops::RangeInclusive<u64>,
        default: T,
    ) -> T {
        let Some(value) = value else { return default };
        let Some(text) = self.expand(value, key) else {
            return default;
        };
        match parse_size(&text).filter(|n| valid.contains(n)) {
            Some(n) => T::try_from(n).unwrap_or(default),
            None => {
                let range = match (*valid.start(), *valid.end()) {
                    (0, u64::MAX) => String::new(),
                    (lo, u64::MAX) => format!(" of at least {lo} bytes"),
                    (lo, hi) => format!(" from {lo} to {hi} bytes"),
                };
                let msg = format!("`{text}` is not a size{range}; expected {SIZE_HINT}");
                self.error(value.span(), key, msg);
                default
            }
        }
    }
}

/// Validates `[listen]` alone (see [`FileListenOnly`]).
pub fn validate_listen(
    path: &Path,
    text: &str,
    raw: Option<&Spanned<FileListen>>,
) -> Result<Listen, Vec<Located>> {
    let mut cx = Ctx {
        path,
        text,
        errors: Vec::new(),
        files: Vec::new(),
    };
    let listen = listen(&mut cx, raw);
    if cx.errors.is_empty() {
        Ok(listen)
    } else {
        Err(cx.errors)
    }
}

/// The config or every problem found, and the files it names (read by the caller, not here).
pub fn validate(
    path: &Path,
    text: &str,
    raw: FileConfig,
) -> (Result<Config, Vec<Located>>, Vec<NamedFile>) {
    let mut cx = Ctx {
        path,
        text,
        errors: Vec::new(),
        files: Vec::new(),
    };
    let listen = listen(&mut cx, raw.listen.as_ref());
    let mut server = server(&mut cx, &raw.server);
    proxy_protocol_check(&mut cx, &raw);
    let mut server_policy = policy::resolve(
        &mut cx,
        raw.server.policy(),
        &Policy::default(),
        "server",
        "server",
    );
    server.send_min_rate = server_policy.send_min_rate;
    let none = ErrorPages::default();
    let pages = raw.server.error_pages.as_ref();
    server.error_pages = error_pages::resolve(&mut cx, pages, &none, "server");
    // `[server] timeouts` holds the upstream ones too; routes inherit them from here
    server_policy.upstream_connect = server.timeouts.upstream_connect;
    server_policy.upstream_response = server.timeouts.upstream_response;
    let server_encode = encode::resolve(
        &mut cx,
        raw.server.encode_keys(),
        &Encode::default(),
        "server",
    );
    let server_headers = headers::resolve(
        &mut cx,
        raw.server.header_keys(),
        &headers::Inherited::default(),
        "server",
        Captures::default(),
    );
    server.response_headers = server_headers.response.clone();
    let upstreams: BTreeMap<String, Upstream> = raw
        .upstreams
        .iter()
        .filter_map(|(name, up)| {
            let up = upstream::upstream(&mut cx, name, up, &server)?;
            Some((name.clone(), up))
        })
        .collect();
    let acme = acme(&mut cx, raw.acme.as_ref());
    let mut sites = Vec::with_capacity(raw.sites.len());
    let mut seen_hosts: HashMap<HostPattern, usize> = HashMap::new();
    for (i, raw_site) in raw.sites.iter().enumerate() {
        let known: Vec<&str> = raw.upstreams.keys().map(String::as_str).collect();
        let mut ctx = SiteCtx {
            upstreams: &known,
            seen: &mut seen_hosts,
            index: i,
            policy: &server_policy,
            encode: &server_encode,
            error_pages: &server.error_pages,
            headers: &server_headers,
            acme: &acme,
        };
        if let Some(site) = site(&mut cx, raw_site, &mut ctx) {
            sites.push(site);
        }
    }
    let log = log::log(&mut cx, raw.log.as_ref());
    let cluster = cluster::cluster(&mut cx, raw.cluster.as_ref(), &listen);
    https_cross_check(&mut cx, &listen, &sites, &raw);
    default_sni_check(&mut cx, &server, &sites, &raw);
    acme_cross_check(&mut cx, &listen, &sites, &acme, &raw);
    on_demand::sites_check(&mut cx, &sites, &acme, &raw);
    cx.errors.sort_by_key(|e| (e.line, e.column));
    if !cx.errors.is_empty() {
        return (Err(cx.errors), cx.files);
    }
    let config = Config {
        source: path.to_path_buf(),
        listen,
        server,
        sites,
        upstreams,
        acme,
        log,
        cluster,
    };
    (Ok(config), cx.files)
}

fn listen(cx: &mut Ctx, raw: Option<&Spanned<FileListen>>) -> Listen {
    let none = Listen {
        http: Vec::new(),
        https: Vec::new(),
        public_https_port: None,
        proxy_protocol: false,
        admin: None,
        admin_allow: Vec::new(),
        admin_hosts: Vec::new(),
    };
    let Some(raw) = raw else {
        let msg = "no `[listen]` section; add e.g. `[listen]` with `http = \"127.0.0.1:8080\"`";
        cx.error(0..0, "listen", msg);
        return none;
    };
    let l = raw.get_ref();
    if let (Some(port), None) = (&l.public_https_port, &l.https) {
        let msg = "`public_https_port` is the port clients reach the `https` listener on; set `https` too, or remove it";
        cx.error(port.span(), "listen.public_https_port", msg);
    }
    if l.http.is_none() && l.https.is_none() {
        let msg = "no listener configured; set e.g. `http = \"0.0.0.0:80\"` and/or `https = \"0.0.0.0:443\"`";
        cx.error(raw.span(), "listen.http", msg);
        return none;
    }
    let http = listen::addrs(cx, l.http.as_ref(), "listen.http");
    let https = listen::addrs(cx, l.https.as_ref(), "listen.https");
    let admin = l.admin.as_ref().and_then(|a| {
        Some(listen::Placed {
            addr: socket_addr(cx, a, "listen.admin")?,
            span: a.span(),
            key: "listen.admin",
        })
    });
    listen::no_overlap(cx, &[&http, &https, admin.as_slice()]);
    Listen {
        http: http.into_iter().map(|p| p.addr).collect(),
        https: https.into_iter().map(|p| p.addr).collect(),
        public_https_port: l.public_https_port.as_ref().map(|p| {
            let port = cx.count(&Some(p.clone()), "listen.public_https_port", 1..=65535, 443);
            // in range: count fell back to 443 otherwise
            port as u16
        }),
        proxy_protocol: l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref()),
        admin: admin.map(|p| p.addr),
        admin_allow: admin_allow(cx, l),
        admin_hosts: admin_hosts(cx, l),
    }
}

/// `admin_hosts`: the names a browser-free client reaches the admin listener by (a load
/// balancer's name, a NAT'd address). Each is a host alone: the port of `Host` is not compared.
fn admin_hosts(cx: &mut Ctx, l: &FileListen) -> Vec<String> {
    let Some(list) = &l.admin_hosts else {
        return Vec::new();
    };
    let key = "listen.admin_hosts";
    cx.list(list, key, Repeats::Dropped, admin_host)
        .unwrap_or_else(|good| good)
}

fn admin_host(text: &str) -> Result<String, String> {
    let host = text.trim_end_matches('.').to_ascii_lowercase();
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if is_hostname(&host) {
        return Ok(host);
    }
    Err(format!("`{text}` is not a host name or address; expected e.g. \"admin.internal\" or \"10.0.0.5\", without a port (the port of `Host` is not compared)"))
}

/// The admin listener answers loopback only, unless `admin_allow` says who else may; a
/// non-loopback address without it is an error rather than an open door.
fn admin_allow(cx: &mut Ctx, l: &FileListen) -> Vec<IpNet> {
    let allow: Vec<IpNet> = l.admin_allow.as_ref().map_or_else(Vec::new, |list| {
        list.get_ref()
            .iter()
            .filter_map(|v| cidr(cx, v, "listen.admin_allow"))
            .collect()
    });
    let Some(admin) = &l.admin else { return allow };
    let text = admin.get_ref();
    let loopback = text
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !loopback && allow.is_empty() && text.parse::<SocketAddr>().is_ok() {
        let msg = format!("`{text}` is not a loopback address, so the admin endpoints would be open to the network; list who may use them in `admin_allow = [\"10.0.0.0/8\"]`, or bind \"127.0.0.1:9900\"");
        cx.error(admin.span(), "listen.admin", msg);
    }
    allow
}

/// A PROXY header is believed only from `trusted_proxies`, so with none every connection would be
/// refused. Looks at the raw list: an entry that did not parse already has its own error.
fn proxy_protocol_check(cx: &mut Ctx, raw: &FileConfig) {
    let Some(flag) = raw
        .listen
        .as_ref()
        .and_then(|l| l.get_ref().proxy_protocol.as_ref())
    else {
        return;
    };
    if *flag.get_ref() && raw.server.trusted_proxies.is_empty() {
        let msg = "`proxy_protocol = true` accepts the PROXY header only from `[server] trusted_proxies`, which is empty, so every connection would be refused; list your load balancers there, e.g. `trusted_proxies = [\"10.0.0.0/8\"]`";
        cx.error(flag.span(), "listen.proxy_protocol", msg);
    }
}

fn socket_addr(cx: &mut Ctx, value: &Str, key: &str) -> Option<SocketAddr> {
    let text = cx.expand(value, key)?;
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            let msg = format!("`{text}` is not a listen address; expected IP:PORT like \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::]:443\"");
            cx.error(value.span(), key, msg);
            None
        }
    }
}

fn server(cx: &mut Ctx, raw: &FileServer) -> Server {
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .filter_map(|v| cidr(cx, v, "server.trusted_proxies"))
        .collect();
    let workers = match &raw.workers {
        None => 0,
        Some(w) => match usize::try_from(*w.get_ref()) {
            Ok(n) if n <= 1024 => n,
            _ => {
                let msg = "expected a number of worker threads from 0 (one per core) to 1024";
                cx.error(w.span(), "server.workers", msg);
                0
            }
        },
    };
    let t = &raw.timeouts;
    let d = Timeouts::default();
    let state_dir = match &raw.state_dir {
        None => PathBuf::from(DEFAULT_STATE_DIR),
        Some(dir) => cx
            .expand(dir, "server.state_dir")
            .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |d| cx.relative(&d)),
    };
    Server {
        state_dir,
        trusted_proxies,
        workers,
        shutdown_grace: cx.duration(
            &raw.shutdown_grace,
            "server.shutdown_grace",
            Duration::from_secs(30),
        ),
        timeouts: Timeouts {
            header_read: cx.duration(&t.header_read, "server.timeouts.header_read", d.header_read),
            idle: cx.duration(&t.idle, "server.timeouts.idle", d.idle),
            upstream_connect: cx.duration(
                &t.upstream_connect,
                "server.timeouts.upstream_connect",
                d.upstream_connect,
            ),
            upstream_response: cx.duration(
                &t.upstream_response,
                "server.timeouts.upstream_response",
                d.upstream_response,
            ),
            send: cx.duration(&t.send, "server.timeouts.send", d.send),
            tls_handshake: cx.duration(
                &t.tls_handshake,
                "server.timeouts.tls_handshake",
                d.tls_handshake,
            ),
            tunnel_idle: cx.duration(&t.tunnel_idle, "server.timeouts.tunnel_idle", d.tunnel_idle),
        },
        limits: server_limits(cx, raw),
        metrics: raw.metrics.as_ref().is_none_or(|m| *m.get_ref()),
        resolver: resolver::resolver(cx, raw.resolver.as_ref()),
        resolve_timeout: cx.duration(
            &raw.resolve_timeout,
            "server.resolve_timeout",
            DEFAULT_RESOLVE_TIMEOUT,
        ),
        tls_min_version: tls_min_version(cx, raw.tls_min_version.as_ref()),
        paths: PathRules {
            merge_slashes: raw.merge_slashes.as_ref().is_none_or(|m| *m.get_ref()),
            encoded_slashes: cx.choice(
                &raw.encoded_slashes,
                "server.encoded_slashes",
                &[
                    ("reject", EncodedSlashes::Reject),
                    ("keep", EncodedSlashes::Keep),
                ],
            ),
            parameters: cx.choice(
                &raw.path_parameters,
                "server.path_parameters",
                &[
                    ("reject", PathParameters::Reject),
                    ("keep", PathParameters::Keep),
                ],
            ),
        },
        underscore_headers: cx.choice(
            &raw.underscore_headers,
            "server.underscore_headers",
            &[
                ("drop", UnderscoreHeaders::Drop),
                ("reject", UnderscoreHeaders::Reject),
                ("keep", UnderscoreHeaders::Keep),
            ],
        ),
        default_sni: raw.default_sni.as_ref().and_then(|v| default_sni(cx, v)),
        http1_engine: match raw.http1_engine {
            None => Http1Engine::unset(),
            Some(_) => cx.choice(
                &raw.http1_engine,
                "server.http1_engine",
                &[
                    ("hyper", Http1Engine::Hyper),
                    ("native", Http1Engine::Native),
                ],
            ),
        },
        // `validate` sets these from the server's policy, header rules and pages once they are read
        send_min_rate: None,
        response_headers: HeaderRules::default(),
        error_pages: ErrorPages::default(),
    }
}

const DEFAULT_SNI_KEY: &str = "server.default_sni";

/// The name itself; whether a TLS site serves it is `default_sni_check`'s, once sites are read.
fn default_sni(cx: &mut Ctx, value: &Str) -> Option<String> {
    let text = cx.expand(value, DEFAULT_SNI_KEY)?;
    let name = text.trim_end_matches('.').to_ascii_lowercase();
    if is_hostname(&name) {
        return Some(name);
    }
    let msg = format!("`{text}` is not a host name; expected a host of a site with `tls`, e.g. \"app.example.com\"");
    cx.error(value.span(), DEFAULT_SNI_KEY, msg);
    None
}

const TLS_VERSION_HINT: &str =
    "expected \"1.2\" (TLS 1.2 and 1.3, the default) or \"1.3\" (TLS 1.3 only)";

/// `"1.2"` or `"1.3"`; older versions are named as refused on purpose, not as typos.
fn tls_min_version(cx: &mut Ctx, raw: Option<&Spanned<toml::Value>>) -> TlsVersion {
    const KEY: &str = "server.tls_min_version";
    let Some(raw) = raw else {
        return TlsVersion::default();
    };
    let (text, quoted) = match raw.get_ref() {
        toml::Value::String(text) => {
            let Some(text) = cx.expand(&Spanned::new(raw.span(), text.clone()), KEY) else {
                return TlsVersion::default();
            };
            (text, true)
        }
        // `1.3` unquoted is a TOML float: "1.3" with `{:?}`, and 1.0 stays "1.0"
        toml::Value::Float(n) => (format!("{n:?}"), false),
        other => (other.to_string(), false),
    };
    let msg = match text.as_str() {
        "1.2" if quoted => return TlsVersion::Tls12,
        "1.3" if quoted => return TlsVersion::Tls13,
        "1.2" | "1.3" => {
            format!("write the version as a string: tls_min_version = \"{text}\"; {TLS_VERSION_HINT}")
        }
        "1.0" | "1.1" => format!("TLS {text} is not supported: it is insecure (RFC 8996 deprecates it) and rustls does not implement it; {TLS_VERSION_HINT}"),
        _ => format!("`{text}` is not a TLS version; {TLS_VERSION_HINT}"),
    };
    cx.error(raw.span(), KEY, msg);
    TlsVersion::default()
}

fn server_limits(cx: &mut Ctx, raw: &FileServer) -> ServerLimits {
    let d = ServerLimits::default();
    let max = 1 << 24;
    ServerLimits {
        max_connections: cx.count(
            &raw.max_connections,
            "server.max_connections",
            0..=max,
            d.max_connections,
        ),
        max_connections_per_ip: cx.count(
            &raw.max_connections_per_ip,
            "server.max_connections_per_ip",
            0..=max,
            d.max_connections_per_ip,
        ),
        max_header_size: cx.size(
            &raw.max_header_size,
            "server.max_header_size",
            1024..=(1 << 20),
            d.max_header_size,
        ),
        max_headers: cx.count(
            &raw.max_headers,
            "server.max_headers",
            1..=1000,
            d.max_headers,
        ),
        max_uri: cx.size(&raw.max_uri, "server.max_uri", 64..=(1 << 20), d.max_uri),
        http2_max_streams: cx.count(
            &raw.http2_max_streams,
            "server.http2_max_streams",
            1..=10_000,
            d.http2_max_streams as usize,
        ) as u32,
        ipv6_prefix: cx.count(&raw.ipv6_prefix, "server.ipv6_prefix", 1..=128, 64) as u8,
        rate_limit_keys: cx.count(
            &raw.rate_limit_keys,
            "server.rate_limit_keys",
            1..=10_000_000,
            d.rate_limit_keys,
        ),
        max_encoders: cx.count(
            &raw.max_encoders,
            "server.max_encoders",
            0..=1_000_000,
            d.max_encoders,
        ),
        rate_limit_keys_per_ip: cx.count(
            &raw.rate_limit_keys_per_ip,
            "server.rate_limit_keys_per_ip",
            1..=1_000_000,
            d.rate_limit_keys_per_ip,
        ),
    }
}

fn cidr(cx: &mut Ctx, value: &Str, key: &str) -> Option<IpNet> {
    let text = cx.expand(value, key)?;
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    let msg = format!("`{text}` is not an address or CIDR; expected e.g. \"10.0.0.0/8\", \"172.16.0.0/12\" or \"127.0.0.1\"");
    cx.error(value.span(), key, msg);
    None
}

fn server_addr(cx: &mut Ctx, value: &Str, key: &str) -> Option<ServerAddr> {
    let text = cx.expand(value, key)?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(ServerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    let parsed = text
        .rsplit_once(':')
        .filter(|(host, _)| is_hostname(host))
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok().filter(|p| *p != 0)?)));
    match parsed {
        Some((host, port)) => Some(ServerAddr {
            host: host.to_ascii_lowercase(),
            port,
        }),
        None => {
            let msg = format!("`{text}` is not a server address; expected HOST:PORT like \"127.0.0.1:8000\", \"[::1]:8000\" or \"api:8000\"");
            cx.error(value.span(), key, msg);
            None
        }
    }
}

fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What a site is validated against: the other sites' hosts and the inherited policy.
struct SiteCtx<'a> {
    upstreams: &'a [&'a str],
    seen: &'a mut HashMap<HostPattern, usize>,
    index: usize,
    policy: &'a Policy,
    encode: &'a Encode,
    error_pages: &'a ErrorPages,
    headers: &'a headers::Inherited,
    /// `[acme]`, which a site's own `acme` overrides.
    acme: &'a Acme,
}

fn site(cx: &mut Ctx, raw: &Spanned<FileSite>, sc: &mut SiteCtx<'_>) -> Option<Site> {
    let (upstreams, index) = (sc.upstreams, sc.index);
    let hosts = match &raw.get_ref().hosts {
        None => vec![HostPattern::Any],
        Some(list) if list.is_empty() => {
            cx.error(
                raw.span(),
                "site.hosts",
                "`hosts` is empty; omit it or use [\"*\"] to match any host",
            );
            vec![]
        }
        Some(list) => list.iter().filter_map(|h| host_pattern(cx, h)).collect(),
    };
    let spans: Vec<Range<usize>> = match &raw.get_ref().hosts {
        Some(list) => list.iter().map(|h| h.span()).collect(),
        None => vec![raw.span()],
    };
    for (host, span) in hosts.iter().zip(spans) {
        if let Some(first) = sc.seen.insert(host.clone(), index) {
            let msg = format!(
                "host `{host}` is already served by site #{} (hosts must be unique across sites)",
                first + 1
            );
            cx.error(span, "site.hosts", msg);
        }
    }
    let site = raw.get_ref();
    let name = hosts.first().map_or("*".to_string(), |h| h.to_string());
    let scope = format!("site {name}");
    let mut policy = policy::resolve(cx, site.policy(), sc.policy, "site", &scope);
    policy::timeouts(cx, site.timeouts.as_ref(), &mut policy, "site");
    let cors = cors::resolve(cx, site.cors.as_ref(), None, "site.cors");
    let encode = encode::resolve(cx, site.encode_keys(), sc.encode, "site");
    let pages = error_pages::resolve(cx, site.error_pages.as_ref(), sc.error_pages, "site");
    let site_headers = headers::SiteHeaders {
        rules: headers::resolve(
            cx,
            site.header_keys(),
            sc.headers,
            "site",
            Captures::default(),
        ),
        upstream_host: site
            .upstream_host
            .as_ref()
            .and_then(|v| headers::upstream_host(cx, v, "site.upstream_host")),
    };
    let basic_auth = auth::basic(cx, site.basic_auth.as_ref(), None, "site");
    let forward_auth = auth::forward(cx, site.forward_auth.as_ref(), None, "site");
    let inherited = (
        &name[..],
        &policy,
        cors.as_ref(),
        &encode,
        &site_headers,
        &pages,
        (basic_auth.as_ref(), forward_auth.as_ref()),
    );
    let routes = routes(cx, raw, upstreams, inherited);
    let tls = site.tls.as_ref().and_then(|t| tls(cx, t));
    let acme = site_acme(cx, raw, tls.as_ref(), &hosts, sc.acme);
    let redirect_https = site
        .redirect_https
        .as_ref()
        .map_or(tls.is_some(), |r| *r.get_ref());
    let hsts = site.hsts.as_ref().and_then(|h| {
        let text = cx.expand(h, "site.hsts")?;
        match HeaderValue::from_str(&text) {
            Ok(v) if text.starts_with("max-age=") => Some(v),
            _ => {
                cx.error(h.span(), "site.hsts", format!("`{text}` is not a Strict-Transport-Security value; expected e.g. \"max-age=31536000\" or \"max-age=31536000; includeSubDomains\""));
                None
            }
        }
    });
    let client_auth = site.client_auth.as_ref().and_then(|raw| {
        let tls = client_auth::SiteTls {
            tls: tls.is_some(),
            redirect_https: site.redirect_https.clone(),
        };
        client_auth::resolve(cx, raw, tls)
    });
    Some(Site {
        hosts,
        tls,
        redirect_https,
        hsts,
        routes,
        error_pages: pages,
        response_headers: site_headers.rules.response,
        client_auth,
        acme,
    })
}

/// `site`: what the routes inherit (see `Inherited`).
fn routes(
    cx: &mut Ctx,
    raw: &Spanned<FileSite>,
    upstreams: &[&str],
    site: Inherited<'_>,
) -> Vec<Route> {
    if raw.get_ref().routes.is_empty() {
        let msg =
            "a site needs at least one [[site.route]], e.g. path = \"/\" with upstream = \"app\"";
        cx.error(raw.span(), "site.route", msg);
    }
    let mut out = Vec::new();
    for r in &raw.get_ref().routes {
        if let Some(route) = route(cx, r, upstreams, site) {
            out.push((route, matching::matcher_span(r)));
        }
    }
    matching::unreachable(cx, &out);
    out.into_iter().map(|(route, _)| route).collect()
}

const TLS_HINT: &str =
    "expected `tls = \"off\"`, `tls = \"acme\"`, `tls = \"on_demand\"` or `tls = { cert = \"certs/site.pem\", key = \"certs/site.key\" }`";
const DEFAULT_STATE_DIR: &str = "/var/lib/gatehouse";

/// Reads `tls`. Its files are loaded after validation (`crate::load`), still as part of reading
/// the config: a bad certificate is a config error, not a failed handshake later.
fn tls(cx: &mut Ctx, value: &Spanned<toml::Value>) -> Option<SiteTls> {
    let table = match value.get_ref() {
        toml::Value::String(mode) if mode == "off" => return None,
        toml::Value::String(mode) if mode == "acme" => return Some(SiteTls::Acme),
        toml::Value::String(mode) if mode == "on_demand" => return Some(SiteTls::OnDemand),
        toml::Value::Table(table) => table,
        other => {
            cx.error(
                value.span(),
                "site.tls",
                format!("`{other}` is not a TLS setting; {TLS_HINT}"),
            );
            return None;
        }
    };
    let unknown: Vec<&str> = table
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "cert" | "key"))
        .collect();
    let path_of = |name: &str| match table.get(name) {
        Some(toml::Value::String(p)) => Some(p.clone()),
        _ => None,
    };
    let (Some(cert), Some(key), true) = (path_of("cert"), path_of("key"), unknown.is_empty())
    else {
        cx.error(
            value.span(),
            "site.tls",
            format!("{TLS_HINT} (both keys, nothing else)"),
        );
        return None;
    };
    let expand = |cx: &mut Ctx, text: String| {
        let spanned = Spanned::new(value.span(), text);
        cx.expand(&spanned, "site.tls").map(|p| cx.relative(&p))
    };
    let files = TlsFiles {
        cert: expand(cx, cert)?,
        key: expand(cx, key)?,
    };
    cx.names(FileKind::CertPair(files.clone()), value.span(), "site.tls");
    Some(SiteTls::Files(files))
}

/// A site's own `acme` (only with `tls = "acme"`), and its hosts checked against the challenge
/// that will prove them.
fn site_acme(
    cx: &mut Ctx,
    raw: &Spanned<FileSite>,
    tls: Option<&SiteTls>,
    hosts: &[HostPattern],
    global: &Acme,
) -> Option<SiteAcme> {
    let own = raw.get_ref().acme.as_ref();
    if tls != Some(&SiteTls::Acme) {
        if let Some(own) = own {
            let msg = "`acme` on a site needs `tls = \"acme\"`";
            cx.error(own.span(), "site.acme", msg);
        }
        return None;
    }
    let own = own.and_then(|a| dns::site_acme(cx, a, global.dns.is_some()));
    let challenge = own.as_ref().map_or(global.challenge, |a| a.challenge);
    let provider = own
        .as_ref()
        .and_then(|a| a.dns.as_ref())
        .or(global.dns.as_ref());
    let span = raw.get_ref().tls.as_ref().map_or(raw.span(), |t| t.span());
    dns::acme_hosts(cx, span, hosts, challenge, provider);
    own
}

fn acme(cx: &mut Ctx, raw: Option<&Spanned<FileAcme>>) -> Acme {
    let d = Acme::default();
    let Some(raw) = raw else { return d };
    let a = raw.get_ref();
    let text =
        |cx: &mut Ctx, v: &Option<Str>, key: &str| v.as_ref().and_then(|v| cx.expand(v, key));
    let directory = match (&a.directory, text(cx, &a.directory, "acme.directory")) {
        (_, None) => d.directory.clone(),
        (_, Some(t)) if t == "production" => LETS_ENCRYPT.to_string(),
        (_, Some(t)) if t == "staging" => LETS_ENCRYPT_STAGING.to_string(),
        (_, Some(t)) if t.starts_with("https://") && t.len() > "https://".len() => t,
        (Some(v), Some(t)) => {
            let msg = format!("`{t}` is not an ACME directory; expected \"production\" (Let's Encrypt), \"staging\" (Let's Encrypt staging) or an https:// directory URL");
            cx.error(v.span(), "acme.directory", msg);
            d.directory.clone()
        }
        (None, Some(_)) => d.directory.clone(),
    };
    let ca_root = a.ca_root.as_ref().and_then(|v| {
        let text = cx.expand(v, "acme.ca_root")?;
        let path = cx.relative(&text);
        cx.names(FileKind::Roots(path.clone()), v.span(), "acme.ca_root");
        Some(path)
    });
    let challenge = a
        .challenge
        .as_ref()
        .and_then(|v| dns::challenge(cx, v, "acme.challenge"))
        .unwrap_or(d.challenge);
    let dns = a.dns.as_ref().and_then(|v| dns::dns(cx, v, "acme.dns"));
    let span = a.challenge.as_ref().map_or(raw.span(), |v| v.span());
    dns::needs_provider(cx, challenge, a.dns.is_some(), span);
    let email = a.email.as_ref().and_then(|v| {
        let t = cx.expand(v, "acme.email")?;
        if t.contains('@') && !t.contains(char::is_whitespace) {
            Some(t)
        } else {
            let msg = format!("`{t}` is not an email address; expected e.g. \"ops@example.com\"");
            cx.error(v.span(), "acme.email", msg);
            None
        }
    });
    let eab = eab(cx, raw);
    let retry_initial = cx.duration(&a.retry_initial, "acme.retry_initial", d.retry_initial);
    let retry_max = cx.duration(&a.retry_max, "acme.retry_max", d.retry_max);
    if retry_max < retry_initial {
        let span = a.retry_max.as_ref().map_or(raw.span(), |v| v.span());
        let msg = "`retry_max` must be at least `retry_initial`";
        cx.error(span, "acme.retry_max", msg);
    }
    let profile = a.profile.as_ref().and_then(|v| {
        let t = cx.expand(v, "acme.profile")?;
        if is_profile_name(&t) {
            Some(t)
        } else {
            let msg = format!("`{t}` is not a profile name; expected the name of one the CA's directory lists, e.g. \"shortlived\" or \"tlsserver\" (letters, digits, `-`, `_`, `.`)");
            cx.error(v.span(), "acme.profile", msg);
            None
        }
    });
    let on_demand = a
        .on_demand
        .as_ref()
        .and_then(|o| on_demand::on_demand(cx, o));
    Acme {
        email,
        directory,
        ca_root,
        challenge,
        dns,
        eab,
        retry_initial,
        retry_max,
        profile,
        on_demand,
    }
}

/// A name as CAs give them (RFC 8555 bis draft `profiles`: short tokens): whether the CA offers
/// it is known only from its directory, at the first order.
fn is_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn eab(cx: &mut Ctx, raw: &Spanned<FileAcme>) -> Option<Eab> {
    use base64::Engine;
    let a = raw.get_ref();
    match (&a.eab_kid, &a.eab_hmac_key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            let kid = cx.expand(kid, "acme.eab_kid")?;
            let text = cx.expand(key, "acme.eab_hmac_key")?;
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            match engine.decode(text.trim_end_matches('=')) {
                Ok(hmac_key) if !hmac_key.is_empty() => Some(Eab { kid, hmac_key }),
                _ => {
                    let msg = "not a base64url key; paste the HMAC key exactly as the CA gave it";
                    cx.error(key.span(), "acme.eab_hmac_key", msg);
                    None
                }
            }
        }
        (Some(v), None) | (None, Some(v)) => {
            let msg = "external account binding needs both `eab_kid` and `eab_hmac_key`";
            cx.error(v.span(), "acme", msg);
            None
        }
    }
}

/// HTTP-01 is answered on the HTTP listener, TLS-ALPN-01 on the HTTPS one (always present for a
/// TLS site, see `https_cross_check`).
fn acme_cross_check(cx: &mut Ctx, listen: &Listen, sites: &[Site], acme: &Acme, raw: &FileConfig) {
    let http01 = sites
        .iter()
        .filter(|s| matches!(s.tls, Some(SiteTls::Acme | SiteTls::OnDemand)))
        .any(|s| acme.for_site(s).challenge == Challenge::Http01);
    if http01 && listen.http.is_empty() {
        let span = raw.listen.as_ref().map_or(0..0, |l| l.span());
        let msg = "`tls = \"acme\"` (or \"on_demand\") with the http-01 challenge needs an HTTP listener on port 80; add `http = \"0.0.0.0:80\"`, or set `challenge = \"tls-alpn-01\"` in [acme]";
        cx.error(span, "listen.http", msg);
    }
}

/// A site with `tls` needs the HTTPS listener and the HTTPS listener needs a TLS site. Checked
/// only on an otherwise valid config: a site whose `tls` failed to load already has its error.
fn https_cross_check(cx: &mut Ctx, listen: &Listen, sites: &[Site], raw: &FileConfig) {
    if !cx.errors.is_empty() {
        return;
    }
    let listen_raw = raw.listen.as_ref();
    let https_span = listen_raw
        .and_then(|l| l.get_ref().https.as_ref().map(|h| h.span()))
        .or_else(|| listen_raw.map(|l| l.span()))
        .unwrap_or(0..0);
    let any_tls = sites.iter().any(|s| s.tls.is_some());
    if any_tls && listen.https.is_empty() {
        let msg = "a site has `tls` but there is no HTTPS listener; add `https = \"0.0.0.0:443\"` to [listen]";
        cx.error(https_span, "listen.https", msg);
    } else if !any_tls && !listen.https.is_empty() {
        let msg =
            "an HTTPS listener needs at least one site with `tls = \"acme\"` or `tls = { cert = ..., key = ... }`";
        cx.error(https_span, "listen.https", msg);
    }
}

/// An IPv6 address, bracketed or not, as the canonical authority names it: `[2001:db8::1]`.
fn ipv6_host(text: &str) -> Option<String> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let ip: std::net::Ipv6Addr = inner.parse().ok()?;
    Some(format!("[{ip}]"))
}

/// `default_sni` is served as if the client had sent it, so some TLS site must answer to it.
fn default_sni_check(cx: &mut Ctx, server: &Server, sites: &[Site], raw: &FileConfig) {
    let (Some(name), Some(value)) = (&server.default_sni, &raw.server.default_sni) else {
        return;
    };
    let serves = |s: &&Site| s.hosts.iter().any(|h| h.matches(name));
    if sites.iter().filter(|s| s.tls.is_some()).any(|s| serves(&s)) {
        return;
    }
    let tls_hosts: Vec<String> = sites
        .iter()
        .filter(|s| s.tls.is_some())
        .flat_map(|s| s.hosts.iter().map(|h| format!("\"{h}\"")))
        .collect();
    let why = if sites.iter().any(|s| serves(&s)) {
        "its site has no `tls`"
    } else {
        "no site lists it in `hosts`"
    };
    let msg = if tls_hosts.is_empty() {
        format!("`{name}`: {why}, and no site has `tls`; `default_sni` chooses the certificate for TLS clients that send no name")
    } else {
        format!(
            "`{name}`: {why}; expected a host of a site with `tls`: {}",
            tls_hosts.join(", ")
        )
    };
    cx.error(value.span(), DEFAULT_SNI_KEY, msg);
}

fn host_pattern(cx: &mut Ctx, value: &Str) -> Option<HostPattern> {
    let text = cx.expand(value, "site.hosts")?.to_ascii_lowercase();
    let text = text.trim_end_matches('.');
    if text == "*" {
        return Some(HostPattern::Any);
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        if is_hostname(suffix) {
            return Some(HostPattern::Wildcard(format!(".{suffix}")));
        }
    } else if is_hostname(text) || text.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some(HostPattern::Exact(text.to_string()));
    } else if let Some(v6) = ipv6_host(text) {
        return Some(HostPattern::Exact(v6));
    }
    let msg = format!(
        "`{text}` is not a host pattern; expected \"app.example.com\", \"*.example.com\", an IP address (\"192.0.2.1\", \"[2001:db8::1]\") or \"*\""
    );
    cx.error(value.span(), "site.hosts", msg);
    None
}

/// What a route inherits from its site: the site's name (for rate-limit scopes), its resolved
/// policy, its `cors`, compression and headers.
type Inherited<'a> = (
    &'a str,
    &'a Policy,
    Option<&'a Cors>,
    &'a Encode,
    &'a headers::SiteHeaders,
    &'a ErrorPages,
    (Option<&'a BasicAuth>, Option<&'a ForwardAuth>),
);

fn route(
    cx: &mut Ctx,
    raw: &Spanned<FileRoute>,
    upstreams: &[&str],
    (site, inherited, site_cors, encode, site_headers, site_pages, site_auth): Inherited<'_>,
) -> Option<Route> {
    let r = raw.get_ref();
    let matcher = matching::matcher(cx, raw)?;
    let conditions = matching::conditions(cx, r);
    let action = action(cx, raw, upstreams, &matcher)?;
    match &action {
        Action::Proxy { .. } => {}
        // a files route takes `strip_prefix` too (nginx `alias`), on a prefix
        Action::Files(_) => {
            matching::only_for_proxy(cx, r, false);
            let strip = r.strip_prefix.as_ref().filter(|s| *s.get_ref());
            if let Some(strip) = strip.filter(|_| !matches!(matcher, PathMatch::Prefix(_))) {
                let msg = "`strip_prefix` only applies to a `path` route with an `upstream` or `files` (with `exact` or `regex`, say what goes upstream with `upstream_path` or `rewrite`)";
                cx.error(strip.span(), "site.route.strip_prefix", msg);
            }
        }
        _ => matching::only_for_proxy(cx, r, true),
    }
    files::accel_check(cx, r, &action);
    // routes on one path with other conditions are other routes
    let scope = format!("route {site} {}{conditions}", matcher.as_str());
    let mut policy = policy::resolve(cx, r.policy(), inherited, "site.route", &scope);
    policy::timeouts(cx, r.timeouts.as_ref(), &mut policy, "site.route");
    let cors = cors::resolve(cx, r.cors.as_ref(), site_cors, "site.route.cors");
    let encode = encode::resolve(cx, r.encode_keys(), encode, "site.route");
    let pages = error_pages::resolve(cx, r.error_pages.as_ref(), site_pages, "site.route");
    let intercept_errors = error_pages::intercept(cx, r, &action, &pages);
    let names = matcher.capture_names();
    let captures = Captures { names: &names };
    let headers = headers::route(cx, r, (&matcher, &action), site_headers, captures);
    let basic_auth = auth::basic(cx, r.basic_auth.as_ref(), site_auth.0, "site.route");
    let forward_auth = auth::forward(cx, r.forward_auth.as_ref(), site_auth.1, "site.route");
    Some(Route {
        matcher,
        conditions,
        action,
        policy,
        cors,
        encode,
        error_pages: pages,
        intercept_errors,
        headers,
        internal: r.internal.as_ref().is_some_and(|i| *i.get_ref()),
        basic_auth,
        forward_auth,
    })
}

fn route_path(cx: &mut Ctx, value: &Str, key: &str) -> Option<String> {
    let text = cx.expand(value, key)?;
    if text.starts_with('/')
        && !text
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'?')
    {
        return Some(text);
    }
    cx.error(
        value.span(),
        key,
        format!("`{text}` is not a path; expected it to start with '/', e.g. \"/api/\""),
    );
    None
}

fn action(
    cx: &mut Ctx,
    raw: &Spanned<FileRoute>,
    upstreams: &[&str],
    matcher: &PathMatch,
) -> Option<Action> {
    let r = raw.get_ref();
    match (&r.upstream, &r.respond, &r.redirect, &r.files) {
        (Some(up), None, None, None) => proxy_action(cx, r, up, upstreams, matcher),
        (None, Some(resp), None, None) => respond_action(cx, resp),
        (None, None, Some(redir), None) => redirect_action(cx, redir, matcher),
        (None, None, None, Some(files)) => files::files_action(cx, r, files),
        (Some(up), None, None, Some(files)) => {
            let first = files::files_first(cx, r, files);
            let mut proxy = proxy_action(cx, r, up, upstreams, matcher)?;
            if let Action::Proxy { files_first, .. } = &mut proxy {
                *files_first = Some(Box::new(first?));
            }
            Some(proxy)
        }
        _ => {
            let msg = "a route needs exactly one of `upstream`, `respond`, `redirect` or `files` (or `files` and `upstream` together: files first, else the upstream)";
            cx.error(raw.span(), "site.route", msg);
            None
        }
    }
}

fn proxy_action(
    cx: &mut Ctx,
    r: &FileRoute,
    up: &Str,
    upstreams: &[&str],
    matcher: &PathMatch,
) -> Option<Action> {
    let name = cx.expand(up, "site.route.upstream")?;
    if !upstreams.contains(&name.as_str()) {
        let defined = if upstreams.is_empty() {
            "none is defined; add an [upstream.NAME] section".to_string()
        } else {
            format!("defined upstreams: {}", upstreams.join(", "))
        };
        cx.error(
            up.span(),
            "site.route.upstream",
            format!("upstream `{name}` is not defined; {defined}"),
        );
        return None;
    }
    let (target, rewrite_location) = matching::upstream_target(cx, r, matcher)?;
    Some(Action::Proxy {
        upstream: name,
        target,
        rewrite_location,
        accel_redirect: r.accel_redirect.as_ref().is_some_and(|a| *a.get_ref()),
        files_first: None,
    })
}

fn respond_action(cx: &mut Ctx, raw: &Spanned<FileRespond>) -> Option<Action> {
    let r = raw.get_ref();
    let status = match &r.status {
        None => StatusCode::OK,
        Some(s) => status(
            cx,
            s,
            "site.route.respond.status",
            |c| (100..=599).contains(&c),
            "a status from 100 to 599",
        )?,
    };
    let body = match &r.body {
        None => Bytes::new(),
        Some(b) => Bytes::from(cx.expand(b, "site.route.respond.body")?),
    };
    let content_type = match &r.content_type {
        None => HeaderValue::from_static("text/plain; charset=utf-8"),
        Some(ct) => {
            let text = cx.expand(ct, "site.route.respond.content_type")?;
            let Ok(value) = HeaderValue::from_str(&text) else {
                cx.error(
                    ct.span(),
                    "site.route.respond.content_type",
                    "not a valid header value, expected e.g. \"application/json\"",
                );
                return None;
            };
            value
        }
    };
    Some(Action::Respond(Respond {
        status,
        body,
        content_type,
    }))
}

fn redirect_action(
    cx: &mut Ctx,
    raw: &Spanned<FileRedirect>,
    matcher: &PathMatch,
) -> Option<Action> {
    let r = raw.get_ref();
    let status = match &r.status {
        None => StatusCode::PERMANENT_REDIRECT,
        Some(s) => status(
            cx,
            s,
            "site.route.redirect.status",
            |c| matches!(c, 301 | 302 | 303 | 307 | 308),
            "one of 301, 302, 303, 307, 308",
        )?,
    };
    let key = "site.route.redirect.to";
    let to = cx.expand(&r.to, key)?;
    let to = matching::route_template(cx, &to, r.to.span(), key, matcher)?;
    Some(Action::Redirect(Redirect { to, status }))
}

fn status(
    cx: &mut Ctx,
    value: &Spanned<i64>,
    key: &str,
    ok: impl Fn(u16) -> bool,
    valid: &str,
) -> Option<StatusCode> {
    let code = u16::try_from(*value.get_ref()).ok().filter(|c| ok(*c));
    match code.and_then(|c| StatusCode::from_u16(c).ok()) {
        Some(s) => Some(s),
        None => {
            cx.error(
                value.span(),
                key,
                format!("{} is not allowed here; expected {valid}", value.get_ref()),
            );
            None
        }
    }
}

/// `${NAME}` and `${NAME:-default}` expansion; `$$` is a literal `$`.
pub(super) fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let close = after
                .find('}')
                .ok_or("unclosed `${` (write `$$` for a literal `$`)")?;
            let (name, default) = match after[..close].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&after[..close], None),
            };
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!("`${{{name}}}` is not a valid environment variable reference; expected ${{NAME}} or ${{NAME:-default}}"));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable `{name}` is not set (use ${{{name}:-default}} for a fallback)"))
                }
            }
            rest = &after[close + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The key a TOML parse error is about: the span itself for an unknown field, else the key left of
/// the `=` nearest before the span on its line.
pub(super) fn key_at(text: &str, span: &Range<usize>) -> String {
    let start = span.start.min(text.len());
    let end = span.end.min(text.len()).max(start);
    let spanned = text[start..end].trim_matches('"');
    let is_key = text[end..]
        .trim_start_matches([' ', '\t', '"'])
        .starts_with('=');
    if is_key && !spanned.is_empty() {
        return spanned.to_string();
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..start];
    let Some(eq) = before.rfind('=') else {
        return String::new();
    };
    let lhs = before[..eq].trim_end();
    let key_start = lhs
        .rfind(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' || c == '"')
        })
        .map_or(0, |i| i + 1);
    lhs[key_start..].trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "HOST").then(|| "api".to_string());
        assert_eq!(expand_env("${HOST}:8000", env).as_deref(), Ok("api:8000"));
        assert_eq!(expand_env("${PORT:-80}", env).as_deref(), Ok("80"));
        assert_eq!(expand_env("cost $$5 $x", env).as_deref(), Ok("cost $5 $x"));
        assert!(expand_env("${MISSING}", env)
            .unwrap_err()
            .contains("MISSING"));
        assert!(expand_env("${OPEN", env).is_err());
    }

    /// A `Ctx` over `text`, and its `l` (a list), `d` and `s` keys.
    fn keys(text: &str) -> (Ctx<'_>, Spanned<Vec<Str>>, Option<Str>, Option<Str>) {
        #[derive(serde::Deserialize)]
        struct Keys {
            #[serde(default)]
            l: Option<Spanned<Vec<Str>>>,
            d: Option<Str>,
            s: Option<Str>,
        }
        let keys: Keys = toml::from_str(text).unwrap();
        let cx = Ctx {
            path: Path::new("t.toml"),
            text,
            errors: Vec::new(),
            files: Vec::new(),
        };
        let list = keys.l.unwrap_or_else(|| Spanned::new(0..0, Vec::new()));
        (cx, list, keys.d, keys.s)
    }

    fn messages(cx: &Ctx) -> Vec<String> {
        cx.errors.iter().map(|e| e.message.clone()).collect()
    }

    #[test]
    fn lists_report_each_bad_entry_and_repeats_as_asked() {
        let letter = |t: &str| {
            (t.len() == 1)
                .then(|| t.to_ascii_lowercase())
                .ok_or_else(|| format!("`{t}` is not a letter"))
        };
        let text = "l = [\"a\", \"b\", \"A\", \"x1\", \"c\", \"yz\"]\n";
        let (mut cx, list, _, _) = keys(text);
        let got = cx.list(&list, "l", Repeats::Dropped, letter);
        assert_eq!(got, Err(vec!["a".to_string(), "b".into(), "c".into()]));
        assert_eq!(
            messages(&cx),
            ["`x1` is not a letter", "`yz` is not a letter"]
        );
        assert_eq!(cx.errors[1].column, text.find("\"yz\"").unwrap() + 1);

        let (mut cx, list, _, _) = keys(text);
        let got = cx.list(&list, "l", Repeats::Refused("one of each"), letter);
        assert_eq!(got.unwrap_err().len(), 3);
        assert_eq!(messages(&cx)[0], "`A` is listed twice; one of each");

        let (mut cx, list, _, _) = keys("l = [\"a\", \"b\", \"a\"]");
        let got = cx.list(&list, "l", Repeats::Dropped, letter);
        assert_eq!(got, Ok(vec!["a".to_string(), "b".into()]));
        assert!(cx.errors.is_empty());
    }

    #[test]
    fn durations_and_sizes_say_what_is_valid() {
        let (mut cx, _, d, s) = keys("d = \"0s\"\ns = \"1 kilo\"\n");
        let default = Duration::from_secs(7);
        assert_eq!(cx.duration(&d, "d", default), default);
        let any = |_: Duration| true;
        let zero = cx.duration_where(&d, "d", default, any, format_args!("any"));
        assert_eq!(zero, Duration::ZERO);
        assert_eq!(cx.size(&s, "s", 0..=u64::MAX, 7u64), 7);
        assert_eq!(cx.size(&s, "s", 64..=1024, 7usize), 7);
        assert_eq!(
            messages(&cx),
            [
                format!(
                    "`0s` is not a valid duration; expected {DURATION_HINT}, greater than zero"
                ),
                format!("`1 kilo` is not a size; expected {SIZE_HINT}"),
                format!("`1 kilo` is not a size from 64 to 1024 bytes; expected {SIZE_HINT}"),
            ]
        );
    }

    #[test]
    fn key_of_error() {
        let text = "[server]\ntimeouts = { idle = \"x\" }\n";
        let at = text.find("\"x\"").unwrap();
        assert_eq!(key_at(text, &(at..at + 3)), "idle");
        let text = "[server]\nbogus = 1\n";
        assert_eq!(key_at(text, &(9..14)), "bogus");
    }
}
