//! The raw shape of `gatehouse.toml`, exactly as serde reads it.
//!
//! Every struct denies unknown fields so a typo is an error, not a silent default. String values stay
//! `Spanned` so that validation (in `validate.rs`) can point at the exact line and column.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub type Str = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Spanned<FileListen>>,
    #[serde(default)]
    pub server: FileServer,
    #[serde(default, rename = "site")]
    pub sites: Vec<Spanned<FileSite>>,
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, Spanned<FileUpstream>>,
    pub acme: Option<Spanned<FileAcme>>,
    pub log: Option<Spanned<FileLog>>,
    pub cluster: Option<Spanned<FileCluster>>,
}

/// Only `[listen]`, for clients of a running instance (`gatehouse health`): every other table is
/// skipped unread, so a config being edited elsewhere, or naming files this user cannot read, does
/// not stop a probe of the instance that runs on the last good one.
#[derive(Debug, Deserialize)]
pub struct FileListenOnly {
    pub listen: Option<Spanned<FileListen>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListen {
    /// One address or a list of them.
    pub http: Option<Spanned<FileAddrs>>,
    pub https: Option<Spanned<FileAddrs>>,
    pub public_https_port: Option<Spanned<i64>>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub admin: Option<Str>,
    pub admin_allow: Option<Spanned<Vec<Str>>>,
    /// Names (or addresses) the admin listener answers to besides its own address and loopback.
    pub admin_hosts: Option<Spanned<Vec<Str>>>,
}

/// `http = "0.0.0.0:80"` or `http = ["0.0.0.0:80", "[::]:80"]`.
#[derive(Debug)]
pub enum FileAddrs {
    /// Located by the key's own span.
    One(String),
    List(Vec<Str>),
}

/// By hand, as `FileCorsSetting`: an untagged enum would lose the entries' spans.
impl<'de> Deserialize<'de> for FileAddrs {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FileAddrs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an address like \"0.0.0.0:80\" or a list like [\"0.0.0.0:80\", \"[::]:80\"]",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FileAddrs, E> {
                Ok(FileAddrs::One(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FileAddrs, A::Error> {
                let mut list = Vec::new();
                while let Some(entry) = seq.next_element::<Str>()? {
                    list.push(entry);
                }
                Ok(FileAddrs::List(list))
            }
        }
        de.deserialize_any(Visit)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    #[serde(default)]
    pub trusted_proxies: Vec<Str>,
    pub workers: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Str>,
    pub state_dir: Option<Str>,
    #[serde(default)]
    pub timeouts: FileTimeouts,
    /// Prefix length IPv6 clients are grouped by for rate and connection limits.
    pub ipv6_prefix: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub max_header_size: Option<Str>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_uri: Option<Str>,
    pub http2_max_streams: Option<Spanned<i64>>,
    /// Response encoders alive at once, all routes together.
    pub max_encoders: Option<Spanned<i64>>,
    /// Client addresses each rate limit tracks at most.
    pub rate_limit_keys: Option<Spanned<i64>>,
    /// Header values one client address may bring into a header-keyed limit's table.
    pub rate_limit_keys_per_ip: Option<Spanned<i64>>,
    /// Record per-request metrics (the counters and histograms of `/metrics`).
    pub metrics: Option<Spanned<bool>>,
    /// Request policy, inherited by routes unless they set their own (see `FilePolicy`).
    pub rate_limit: Option<Spanned<toml::Value>>,
    pub max_body: Option<Str>,
    pub body_timeout: Option<Str>,
    /// `"512B/s"`, `{ rate = "512B/s", window = "60s" }` or `"off"`; read raw for a precise hint.
    pub body_min_rate: Option<Spanned<toml::Value>>,
    pub send_min_rate: Option<Spanned<toml::Value>>,
    pub allow: Option<Spanned<Vec<Str>>>,
    pub deny: Option<Spanned<Vec<Str>>>,
    /// Response compression, inherited by routes unless they set their own (see `EncodeKeys`).
    pub encode: Option<Spanned<Vec<Str>>>,
    pub encode_min_size: Option<Str>,
    pub encode_types: Option<Spanned<Vec<Str>>>,
    /// `["IP:PORT", ...]`: DNS servers asked for upstream names instead of the system resolver.
    /// Read as a raw value so a single string gets a precise hint.
    pub resolver: Option<Spanned<toml::Value>>,
    /// How long one lookup of an upstream name may take (`"5s"`).
    pub resolve_timeout: Option<Str>,
    /// `"1.2"` or `"1.3"`; read as a raw value so `1.3` (a number) gets a precise hint.
    pub tls_min_version: Option<Spanned<toml::Value>>,
    /// Merge repeated slashes in request paths (default true).
    pub merge_slashes: Option<Spanned<bool>>,
    /// `"reject"` (default) or `"keep"`: `%2F` in a request path.
    pub encoded_slashes: Option<Str>,
    /// `"reject"` (default) or `"keep"`: `;parameters` in request path segments.
    pub path_parameters: Option<Str>,
    /// `"drop"` (default), `"reject"` or `"keep"`: request header names with `_`.
    pub underscore_headers: Option<Str>,
    /// `"hyper"` or `"native"`: which HTTP/1.1 engine serves client connections.
    pub http1_engine: Option<Str>,
    /// The name whose certificate answers a TLS client that sends no SNI.
    pub default_sni: Option<Str>,
    /// Pages for Gatehouse's own error answers, inherited by sites and routes (see
    /// `FileErrorPages`).
    pub error_pages: Option<Spanned<FileErrorPages>>,
    /// Header rules, inherited per header name by sites and routes (see `FileRequestHeaders`).
    pub request_headers: Option<FileRequestHeaders>,
    pub response_headers: Option<FileResponseHeaders>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub header_read: Option<Str>,
    pub idle: Option<Str>,
    pub upstream_connect: Option<Str>,
    pub upstream_response: Option<Str>,
    pub send: Option<Str>,
    pub tls_handshake: Option<Str>,
    pub tunnel_idle: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSite {
    pub hosts: Option<Vec<Str>>,
    /// `"off"`, `"acme"`, or `{ cert = "...", key = "..." }`; read as a raw value for a precise error.
    pub tls: Option<Spanned<toml::Value>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub hsts: Option<Str>,
    /// Request policy, inherited by routes unless they set their own (see `FilePolicy`).
    pub rate_limit: Option<Spanned<toml::Value>>,
    pub max_body: Option<Str>,
    pub body_timeout: Option<Str>,
    /// `"512B/s"`, `{ rate = "512B/s", window = "60s" }` or `"off"`; read raw for a precise hint.
    pub body_min_rate: Option<Spanned<toml::Value>>,
    pub send_min_rate: Option<Spanned<toml::Value>>,
    pub allow: Option<Spanned<Vec<Str>>>,
    pub deny: Option<Spanned<Vec<Str>>>,
    /// CORS for the site's routes, unless a route sets its own (or `"off"`).
    pub cors: Option<Spanned<FileCorsSetting>>,
    /// Response compression, inherited by routes unless they set their own (see `EncodeKeys`).
    pub encode: Option<Spanned<Vec<Str>>>,
    pub encode_min_size: Option<Str>,
    pub encode_types: Option<Spanned<Vec<Str>>>,
    /// Upstream timeouts for the site's routes, unless a route sets its own, key by key.
    pub timeouts: Option<Spanned<FileRouteTimeouts>>,
    pub error_pages: Option<Spanned<FileErrorPages>>,
    /// Header rules over the server's, inherited per header name by the routes.
    pub request_headers: Option<FileRequestHeaders>,
    pub response_headers: Option<FileResponseHeaders>,
    /// The `Host` sent upstream, for the routes unless they set their own.
    pub upstream_host: Option<Str>,
    /// Client certificates asked for in the TLS handshake (mTLS).
    pub client_auth: Option<Spanned<FileClientAuth>>,
    /// Who may pass, for the site's routes unless they set their own (or `"off"`).
    pub basic_auth: Option<Spanned<FileOffOr<FileBasicAuth>>>,
    pub forward_auth: Option<Spanned<FileOffOr<FileForwardAuth>>>,
    /// This site's ACME challenge (and DNS provider), over `[acme]`'s.
    pub acme: Option<Spanned<FileSiteAcme>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<FileRoute>>,
}

/// `client_auth = { ca = "clients-ca.pem", mode = "require" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientAuth {
    pub ca: Str,
    /// `"require"` (the default) or `"optional"`.
    pub mode: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub path: Option<Str>,
    pub exact: Option<Str>,
    /// A regex searched in the canonical path (see `validate::matching`).
    pub regex: Option<Str>,
    /// Conditions that must all hold too: methods, header values, query argument values.
    pub methods: Option<Spanned<Vec<Str>>>,
    pub headers: Option<Spanned<BTreeMap<Spanned<String>, Str>>>,
    pub query: Option<Spanned<BTreeMap<Spanned<String>, Str>>>,
    pub upstream: Option<Str>,
    pub strip_prefix: Option<Spanned<bool>>,
    /// Replaces the matched prefix in the path sent upstream (`proxy_pass http://api/v2/;`).
    pub upstream_path: Option<Str>,
    /// The path and query sent upstream, with placeholders.
    pub rewrite: Option<Str>,
    /// Upstream `Location` headers naming the upstream mapped back to the client (default true).
    pub rewrite_location: Option<Spanned<bool>>,
    pub respond: Option<Spanned<FileRespond>>,
    pub redirect: Option<Spanned<FileRedirect>>,
    /// Files served from a folder (the fourth action).
    pub files: Option<Spanned<FileFiles>>,
    /// On an `upstream` route: an answer carrying `X-Accel-Redirect` is served from the site's
    /// route for that path instead.
    pub accel_redirect: Option<Spanned<bool>>,
    /// Reachable only through `X-Accel-Redirect`, never by a client's own request.
    pub internal: Option<Spanned<bool>>,
    /// Request policy, inherited by routes unless they set their own (see `FilePolicy`).
    pub rate_limit: Option<Spanned<toml::Value>>,
    pub max_body: Option<Str>,
    pub body_timeout: Option<Str>,
    /// `"512B/s"`, `{ rate = "512B/s", window = "60s" }` or `"off"`; read raw for a precise hint.
    pub body_min_rate: Option<Spanned<toml::Value>>,
    pub send_min_rate: Option<Spanned<toml::Value>>,
    pub allow: Option<Spanned<Vec<Str>>>,
    pub deny: Option<Spanned<Vec<Str>>>,
    pub cors: Option<Spanned<FileCorsSetting>>,
    /// Response compression, inherited by routes unless they set their own (see `EncodeKeys`).
    pub encode: Option<Spanned<Vec<Str>>>,
    pub encode_min_size: Option<Str>,
    pub encode_types: Option<Spanned<Vec<Str>>>,
    pub timeouts: Option<Spanned<FileRouteTimeouts>>,
    pub error_pages: Option<Spanned<FileErrorPages>>,
    /// The upstream's error answers are replaced by the route's error pages too.
    pub intercept_errors: Option<Spanned<bool>>,
    pub request_headers: Option<FileRequestHeaders>,
    pub response_headers: Option<FileResponseHeaders>,
    pub upstream_host: Option<Str>,
    pub basic_auth: Option<Spanned<FileOffOr<FileBasicAuth>>>,
    pub forward_auth: Option<Spanned<FileOffOr<FileForwardAuth>>>,
}

/// `basic_auth = { realm = "admin", users = { alice = "$argon2id$..." } }` (or `users_file`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBasicAuth {
    pub realm: Option<Str>,
    /// User name to password hash; keys keep their spans so a bad hash is located at its user.
    pub users: Option<Spanned<BTreeMap<Str, Str>>>,
    /// An htpasswd-style file of `user:hash` lines, read with the other files (`crate::load`).
    pub users_file: Option<Str>,
    /// Send the client's `Authorization` upstream too (default false).
    pub forward_credentials: Option<Spanned<bool>>,
}

/// `forward_auth = { url = "http://authelia:9091/api/authz/forward-auth", copy_headers = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    /// Optional here so that its absence is a located error with a hint, not serde's.
    pub url: Option<Str>,
    pub copy_headers: Option<Spanned<Vec<Str>>>,
    pub timeout: Option<Str>,
}

/// `"off"` (none of the inherited setting) or the setting's table.
#[derive(Debug)]
pub enum FileOffOr<T> {
    Off,
    On(Box<T>),
}

/// By hand, as `FileCorsSetting`, to keep the spans of the table's values.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for FileOffOr<T> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = FileOffOr<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table like `{ ... }`, or \"off\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FileOffOr<T>, E> {
                match s {
                    "off" => Ok(FileOffOr::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileOffOr<T>, A::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(map);
                T::deserialize(de).map(|t| FileOffOr::On(Box::new(t)))
            }
        }
        de.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// `timeouts = { upstream_connect = "2s", upstream_response = "5m" }` on a site or a route: the
/// upstream side of `[server] timeouts`, which the connection side cannot be (a connection is
/// not yet routed).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteTimeouts {
    pub upstream_connect: Option<Str>,
    pub upstream_response: Option<Str>,
}

/// `error_pages = { 404 = "errors/404.html", "5xx" = "errors/5xx.html" }`, or `"off"` (none of
/// the inherited ones). Keys stay `Spanned` so a bad status is located at itself.
#[derive(Debug)]
pub enum FileErrorPages {
    Off,
    Pages(BTreeMap<Str, Str>),
}

/// By hand, as `FileCorsSetting`, to keep the spans of keys and values.
impl<'de> Deserialize<'de> for FileErrorPages {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FileErrorPages;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a table like `error_pages = { 404 = \"errors/404.html\", \"5xx\" = \"errors/5xx.html\" }`, or \"off\"",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FileErrorPages, E> {
                match s {
                    "off" => Ok(FileErrorPages::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileErrorPages, A::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(map);
                BTreeMap::deserialize(de).map(FileErrorPages::Pages)
            }
        }
        de.deserialize_any(Visit)
    }
}

/// A table of header rules by header name: a value is a string or a list of strings (read raw
/// for a precise hint).
pub type FileHeaderValues = BTreeMap<Str, Spanned<toml::Value>>;

/// `request_headers = { set = {...}, add = {...}, remove = [...] }`. Neither these tables nor
/// `set`/`add`/`default` are `Spanned`: toml cannot give a span to a table that exists only
/// implicitly (`[site.response_headers.set]` alone, or dotted keys `set."X-A" = "1"`), and
/// refused such configs; errors point at the header names inside, which carry theirs.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like `{ set = { \"X-Env\" = \"prod\" }, add = { \"X-Tag\" = \"a\" }, remove = [\"X-Debug\"] }` (each key optional)"
)]
pub struct FileRequestHeaders {
    pub set: Option<FileHeaderValues>,
    pub add: Option<FileHeaderValues>,
    pub remove: Option<Spanned<Vec<Str>>>,
}

/// `response_headers`: as `request_headers`, and `default` (set only when the answer has none).
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like `{ set = { \"X-Frame-Options\" = \"DENY\" }, add = { ... }, remove = [\"Server\"], default = { \"Cache-Control\" = \"no-store\" } }` (each key optional)"
)]
pub struct FileResponseHeaders {
    pub set: Option<FileHeaderValues>,
    pub add: Option<FileHeaderValues>,
    pub remove: Option<Spanned<Vec<Str>>>,
    pub default: Option<FileHeaderValues>,
}

/// The header-rule keys, which `[server]`, `[[site]]` and `[[site.route]]` all accept.
pub struct HeaderKeys<'a> {
    pub request: Option<&'a FileRequestHeaders>,
    pub response: Option<&'a FileResponseHeaders>,
}

/// `cors = "off"` or `cors = { origins = [...], ... }`.
#[derive(Debug)]
pub enum FileCorsSetting {
    Off,
    On(Box<FileCors>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    pub origins: Option<Spanned<Vec<Str>>>,
    pub methods: Option<Spanned<Vec<Str>>>,
    pub headers: Option<Spanned<Vec<Str>>>,
    pub credentials: Option<Spanned<bool>>,
    pub expose: Option<Spanned<Vec<Str>>>,
    pub max_age: Option<Str>,
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum buffers its input, which loses the
/// spans of the table's values (and its errors say only "did not match any variant").
impl<'de> Deserialize<'de> for FileCorsSetting {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FileCorsSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a table like `cors = { origins = [\"https://app.example.com\"] }`, or \"off\"",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<FileCorsSetting, E> {
                match s {
                    "off" => Ok(FileCorsSetting::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileCorsSetting, A::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(map);
                FileCors::deserialize(de).map(|t| FileCorsSetting::On(Box::new(t)))
            }
        }
        de.deserialize_any(Visit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRespond {
    pub status: Option<Spanned<i64>>,
    pub body: Option<Str>,
    pub content_type: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedirect {
    pub to: Str,
    pub status: Option<Spanned<i64>>,
}

/// `files = { root = "dist", index = ["index.html"], fallback = "/index.html", ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFiles {
    /// Optional here so that its absence is a located error with a hint, not serde's.
    pub root: Option<Str>,
    pub index: Option<Spanned<Vec<Str>>>,
    pub fallback: Option<Str>,
    pub precompressed: Option<Spanned<Vec<Str>>>,
    pub follow_symlinks: Option<Spanned<bool>>,
    pub dotfiles: Option<Spanned<Vec<Str>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// `"host:port"`, `"https://host:port"`, or `{ addr = "host:port", weight = 3 }`.
    pub servers: Spanned<Vec<Spanned<toml::Value>>>,
    pub balance: Option<Str>,
    pub resolve_every: Option<Str>,
    pub health: Option<Spanned<FileHealth>>,
    pub eject: Option<Spanned<FileEject>>,
    pub retries: Option<Spanned<i64>>,
    pub retry_budget: Option<Str>,
    pub when_all_down: Option<Str>,
    pub required: Option<Spanned<bool>>,
    /// For `https://` servers.
    pub ca_root: Option<Str>,
    pub client_cert: Option<Spanned<FileClientCert>>,
    pub sni: Option<Str>,
    /// `"http1"`, `"h2"`, `"h2c"` or `"auto"`.
    pub protocol: Option<Str>,
    /// HTTP/2 streams one upstream connection carries at once.
    pub max_streams: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    pub path: Option<Str>,
    /// The service the gRPC health protocol asks about (`""`: the server as a whole).
    pub grpc: Option<Str>,
    pub interval: Option<Str>,
    pub timeout: Option<Str>,
    pub healthy: Option<Spanned<i64>>,
    pub unhealthy: Option<Spanned<i64>>,
    pub expect: Option<Str>,
    pub host: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEject {
    pub failures: Option<Spanned<i64>>,
    pub server_errors: Option<Spanned<i64>>,
    pub cooldown: Option<Str>,
    pub max_cooldown: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientCert {
    pub cert: Str,
    pub key: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    pub email: Option<Str>,
    pub directory: Option<Str>,
    pub ca_root: Option<Str>,
    pub challenge: Option<Str>,
    /// Where DNS-01 TXT records are published (`challenge = "dns-01"`).
    pub dns: Option<Spanned<FileDns>>,
    pub eab_kid: Option<Str>,
    pub eab_hmac_key: Option<Str>,
    pub retry_initial: Option<Str>,
    pub retry_max: Option<Str>,
    /// A certificate profile the CA's directory lists (`shortlived`, `tlsserver`, ...).
    pub profile: Option<Str>,
    /// Certificates ordered during the handshake for `tls = "on_demand"` sites.
    pub on_demand: Option<Spanned<FileOnDemand>>,
}

/// `on_demand = { ask = "http://app:8000/domain-allowed", max_per_minute = 10, ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOnDemand {
    pub ask: Option<Str>,
    pub max_per_minute: Option<Spanned<i64>>,
    pub remember_refusals: Option<Str>,
    pub handshake_wait: Option<Str>,
}

/// A site's own `acme = { challenge = "dns-01", dns = { ... } }`, over `[acme]`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSiteAcme {
    pub challenge: Option<Str>,
    pub dns: Option<Spanned<FileDns>>,
}

/// `dns = { provider = "rfc2136" | "exec" | "httpreq", ... }`: every provider's keys
/// (validation says which belong to which provider).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    pub provider: Option<Str>,
    pub server: Option<Str>,
    pub zone: Option<Str>,
    pub tsig_key: Option<Str>,
    pub tsig_secret: Option<Str>,
    pub tsig_algorithm: Option<Str>,
    pub command: Option<Str>,
    pub endpoint: Option<Str>,
    pub username: Option<Str>,
    pub password: Option<Str>,
    pub resolver: Option<Str>,
    pub propagation_timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// `"stderr"`, `"stdout"`, `"off"` or a file path.
    pub access: Option<Str>,
    /// `"json"` or `"combined"`.
    pub format: Option<Str>,
    /// Lines the queue to the access-log writer holds.
    pub buffer: Option<Spanned<i64>>,
}

/// `[cluster]`: several instances acting as one through a shared store (`docs/cluster.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub name: Option<Str>,
    pub store: Option<Str>,
    pub store_ca: Option<Str>,
    pub store_client_cert: Option<Str>,
    pub store_client_key: Option<Str>,
    pub secret: Option<Str>,
    pub secret_file: Option<Str>,
    pub instance: Option<Str>,
    pub timeout: Option<Str>,
    pub rate_limits: Option<Str>,
    pub rate_limit_fallback: Option<Str>,
    pub acme: Option<Str>,
    pub lock_ttl: Option<Str>,
}

/// The request-policy keys, which `[server]`, `[[site]]` and `[[site.route]]` all accept (serde
/// cannot flatten into a struct that denies unknown fields, so each has the fields itself).
pub struct PolicyKeys<'a> {
    pub rate_limit: Option<&'a Spanned<toml::Value>>,
    pub max_body: Option<&'a Str>,
    pub body_timeout: Option<&'a Str>,
    pub body_min_rate: Option<&'a Spanned<toml::Value>>,
    pub send_min_rate: Option<&'a Spanned<toml::Value>>,
    pub allow: Option<&'a Spanned<Vec<Str>>>,
    pub deny: Option<&'a Spanned<Vec<Str>>>,
}

/// The response-compression keys, which `[server]`, `[[site]]` and `[[site.route]]` all accept.
pub struct EncodeKeys<'a> {
    pub encode: Option<&'a Spanned<Vec<Str>>>,
    pub min_size: Option<&'a Str>,
    pub types: Option<&'a Spanned<Vec<Str>>>,
}

macro_rules! policy_keys {
    ($($ty:ty),*) => {$(
        impl $ty {
            pub fn encode_keys(&self) -> EncodeKeys<'_> {
                EncodeKeys {
                    encode: self.encode.as_ref(),
                    min_size: self.encode_min_size.as_ref(),
                    types: self.encode_types.as_ref(),
                }
            }


            pub fn header_keys(&self) -> HeaderKeys<'_> {
                HeaderKeys {
                    request: self.request_headers.as_ref(),
                    response: self.response_headers.as_ref(),
                }
            }

            pub fn policy(&self) -> PolicyKeys<'_> {
                PolicyKeys {
                    rate_limit: self.rate_limit.as_ref(),
                    max_body: self.max_body.as_ref(),
                    body_timeout: self.body_timeout.as_ref(),
                    body_min_rate: self.body_min_rate.as_ref(),
                    send_min_rate: self.send_min_rate.as_ref(),
                    allow: self.allow.as_ref(),
                    deny: self.deny.as_ref(),
                }
            }
        }
    )*};
}
policy_keys!(FileServer, FileSite, FileRoute);
