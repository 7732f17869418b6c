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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListen {
    pub http: Option<Str>,
    pub https: Option<Str>,
    pub proxy_protocol: Option<Spanned<bool>>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub header_read: Option<Str>,
    pub idle: Option<Str>,
    pub upstream_connect: Option<Str>,
    pub upstream_response: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSite {
    pub hosts: Option<Vec<Str>>,
    /// `"off"`, `"acme"`, or `{ cert = "...", key = "..." }`; read as a raw value for a precise error.
    pub tls: Option<Spanned<toml::Value>>,
    pub redirect_https: Option<Spanned<bool>>,
    pub hsts: Option<Str>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<FileRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub path: Option<Str>,
    pub exact: Option<Str>,
    pub upstream: Option<Str>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub respond: Option<Spanned<FileRespond>>,
    pub redirect: Option<Spanned<FileRedirect>>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub servers: Spanned<Vec<Str>>,
    pub balance: Option<Str>,
    pub resolve_every: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    pub email: Option<Str>,
    pub directory: Option<Str>,
    pub ca_root: Option<Str>,
    pub challenge: Option<Str>,
    pub eab_kid: Option<Str>,
    pub eab_hmac_key: Option<Str>,
    pub retry_initial: Option<Str>,
    pub retry_max: Option<Str>,
}
