//! `[cluster]` as validated: where the shared store is, what this instance is called in it, how
//! long a request may wait for it, and what is shared through it (`docs/cluster.md`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The default `timeout`: a store call on a request path waits this long at most.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
/// The default `lock_ttl`: how long an ACME lock outlives its holder's last renewal.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
/// The default `name` (the store's key namespace).
pub const DEFAULT_CLUSTER_NAME: &str = "gatehouse";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cluster {
    /// The namespace of every key this cluster keeps in the store.
    pub name: String,
    /// The store URL as written (validated): `redis://`, `rediss://`, `unix://`, or
    /// `redis+sentinel://` / `rediss+sentinel://` (then parsed into `sentinel`).
    pub store: String,
    /// The sentinels to ask for the master, for a `redis+sentinel://` store.
    pub sentinel: Option<SentinelStore>,
    /// `store_ca`, `store_client_cert` and `store_client_key` (read by `load`).
    pub store_tls: StoreTlsFiles,
    pub secret: ClusterSecret,
    /// This instance's name in the store and the logs (default: host name and first port).
    pub instance: String,
    /// How long a request waits for the store at most, before its fallback decides.
    pub timeout: Duration,
    pub rate_limits: GlobalScope,
    pub rate_limit_fallback: Fallback,
    pub acme: ClusterAcme,
    /// How long a shared-ACME lock lives without its holder renewing it (`acme = "shared"`).
    pub lock_ttl: Duration,
}

impl Cluster {
    /// Whether rate limits are counted in the store (else each instance counts alone).
    pub fn global_limits(&self) -> bool {
        self.rate_limits == GlobalScope::Global
    }
}

/// The files a TLS store connection is made with; both `None` for the system roots and no
/// client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StoreTlsFiles {
    /// `store_ca`: the only roots the store's certificate is checked against.
    pub ca: Option<PathBuf>,
    /// `store_client_cert` and `store_client_key`, for Redis's `tls-auth-clients`.
    pub client: Option<crate::config::TlsFiles>,
}

/// `redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SentinelStore {
    /// Host and port of each sentinel, asked in this order (port default 26379).
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under (`sentinel monitor NAME ...`).
    pub master: String,
    pub db: i64,
    /// The master's (not the sentinels') credentials.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `rediss+sentinel://`: TLS to the sentinels and to the master.
    pub tls: bool,
}

/// The port a sentinel listens on unless told otherwise.
pub const SENTINEL_PORT: u16 = 26379;

impl SentinelStore {
    /// Parses a `redis+sentinel://` or `rediss+sentinel://` URL; the problem in words if it is
    /// not one.
    pub fn parse(url: &str) -> Result<SentinelStore, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Err(
                "a Sentinel URL starts with `redis+sentinel://` or `rediss+sentinel://`".into(),
            );
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (Some(user), hosts),
            None => (None, authority),
        };
        let (username, password) = credentials(userinfo)?;
        let sentinels = hosts
            .split(',')
            .map(sentinel_addr)
            .collect::<Result<Vec<_>, _>>()?;
        let mut parts = path.trim_end_matches('/').split('/');
        let master = parts.next().unwrap_or_default().to_string();
        if master.is_empty() || master.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the master's name is missing after the sentinels (`.../mymaster`): the name the sentinels monitor it under".into());
        }
        let db = match parts.next() {
            None => 0,
            Some(db) => db.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                format!("`{db}` is not a database number (after the master's name: `/mymaster/2`)")
            })?,
        };
        if parts.next().is_some() {
            return Err("nothing may follow the database number".into());
        }
        Ok(SentinelStore {
            sentinels,
            master,
            db,
            username,
            password,
            tls,
        })
    }
}

fn credentials(userinfo: Option<&str>) -> Result<(Option<String>, Option<String>), String> {
    let Some(userinfo) = userinfo else {
        return Ok((None, None));
    };
    let (user, pass) = match userinfo.split_once(':') {
        Some((user, pass)) => (user, Some(pass)),
        None => (userinfo, None),
    };
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| "the credentials are not valid percent-encoding".to_string())
    };
    let user = (!user.is_empty()).then(|| decode(user)).transpose()?;
    let pass = pass.filter(|p| !p.is_empty()).map(decode).transpose()?;
    Ok((user, pass))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `HOST[:PORT]` or `[V6]:PORT` of one sentinel.
fn sentinel_addr(text: &str) -> Result<(String, u16), String> {
    let bad = || {
        format!("`{text}` is not a sentinel address; expected HOST or HOST:PORT (default port {SENTINEL_PORT}), separated by commas")
    };
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').ok_or_else(bad)?;
        (host, rest.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    if host.is_empty() || !host.chars().all(plain) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// `secret` as written, or `secret_file` (read with the other files, by `load`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClusterSecret {
    Inline(Secret),
    File(PathBuf),
}

/// Bytes that are never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The least a secret may be: it keys the hash that header values are kept under in the store.
pub const MIN_SECRET_LEN: usize = 16;

/// `rate_limits`: counted for the whole cluster, or by each instance alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GlobalScope {
    #[default]
    Global,
    Local,
}

/// `rate_limit_fallback`: what a global limit does while the store cannot answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Each instance counts alone (the cluster admits up to N times the budget).
    #[default]
    Local,
    /// Every request passes the limit.
    Allow,
    /// Every request the limit counts is refused (`429`, `Retry-After: 1`).
    Deny,
}

/// `acme`: each instance orders its own certificates, or the cluster orders each once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ClusterAcme {
    /// Each instance orders its own, as without `[cluster]`.
    #[default]
    Local,
    /// Account, certificates and keys live in the store; one order per certificate for the
    /// whole cluster, under a lock (`src/cluster/acme.rs`).
    Shared,
}

impl Cluster {
    /// Whether certificates are ordered once for the cluster, through the store.
    pub fn shared_acme(&self) -> bool {
        self.acme == ClusterAcme::Shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_its_sentinels_master_and_database() {
        let s = SentinelStore::parse(
            "redis+sentinel://:p%40ss@10.0.0.1,s2.internal:26380,[::1]:5000/mymaster/2",
        )
        .unwrap();
        let hosts = [("10.0.0.1", 26379), ("s2.internal", 26380), ("::1", 5000)];
        let hosts: Vec<_> = hosts.iter().map(|(h, p)| (h.to_string(), *p)).collect();
        assert_eq!(s.sentinels, hosts);
        assert_eq!((s.master.as_str(), s.db, s.tls), ("mymaster", 2, false));
        assert_eq!((s.username, s.password.as_deref()), (None, Some("p@ss")));
        let s = SentinelStore::parse("rediss+sentinel://app:pw@h/m").unwrap();
        assert_eq!((s.tls, s.db, s.username.as_deref()), (true, 0, Some("app")));
    }

    #[test]
    fn a_bad_sentinel_url_says_what_is_wrong() {
        for (url, says) in [
            ("redis+sentinel://h1:26379", "master's name is missing"),
            ("redis+sentinel://h1:x/m", "not a sentinel address"),
            ("redis+sentinel://,h2/m", "not a sentinel address"),
            ("redis+sentinel://h1/m/x", "not a database number"),
            ("redis+sentinel://h1/m/1/2", "nothing may follow"),
            ("redis://h1/m", "starts with"),
        ] {
            let err = SentinelStore::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
