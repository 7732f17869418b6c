//! `[cluster]`: the shared store, this instance's name in it, the store call timeout, and what is
//! shared (`docs/cluster.md`).

use super::Ctx;
use crate::config::cluster::{
    Cluster, ClusterAcme, ClusterSecret, Fallback, GlobalScope, Secret, SentinelStore,
    StoreTlsFiles, DEFAULT_CLUSTER_NAME, DEFAULT_LOCK_TTL, DEFAULT_STORE_TIMEOUT, MIN_SECRET_LEN,
};
use crate::config::file::{FileCluster, Str};
use crate::config::model::Listen;
use crate::config::{FileKind, TlsFiles};
use std::time::Duration;
use toml::Spanned;

const STORE_HINT: &str = "expected a Redis URL like \"redis://10.0.0.5:6379\", \"rediss://:PASSWORD@redis.internal:6380/2\" (TLS), \"unix:///run/redis/redis.sock\" or \"redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/mymaster\" (Sentinel)";

pub(super) fn cluster(
    cx: &mut Ctx,
    raw: Option<&Spanned<FileCluster>>,
    listen: &Listen,
) -> Option<Cluster> {
    let raw = raw?;
    let c = raw.get_ref();
    // every key checked before any is found missing: all problems are reported together
    let store = store(cx, c, raw.span());
    let store_tls = store_tls(cx, c, store.as_deref());
    let sentinel = store
        .as_deref()
        .and_then(|url| SentinelStore::parse(url).ok());
    let secret = secret(cx, c, raw.span());
    let name = name(cx, c.name.as_ref());
    let instance = instance(cx, c.instance.as_ref(), listen);
    let timeout = timeout(cx, &c.timeout);
    let rate_limits = cx.choice(
        &c.rate_limits,
        "cluster.rate_limits",
        &[
            ("global", GlobalScope::Global),
            ("local", GlobalScope::Local),
        ],
    );
    let rate_limit_fallback = cx.choice(
        &c.rate_limit_fallback,
        "cluster.rate_limit_fallback",
        &[
            ("local", Fallback::Local),
            ("allow", Fallback::Allow),
            ("deny", Fallback::Deny),
        ],
    );
    let acme = cx.choice(
        &c.acme,
        "cluster.acme",
        &[
            ("local", ClusterAcme::Local),
            ("shared", ClusterAcme::Shared),
        ],
    );
    let lock_ttl = lock_ttl(cx, &c.lock_ttl);
    Some(Cluster {
        name,
        store: store?,
        sentinel,
        store_tls,
        secret: secret?,
        instance,
        timeout,
        rate_limits,
        rate_limit_fallback,
        acme,
        lock_ttl,
    })
}

/// The key namespace: a few plain characters, so keys stay readable in `redis-cli`.
fn name(cx: &mut Ctx, value: Option<&Str>) -> String {
    const KEY: &str = "cluster.name";
    let Some(value) = value else {
        return DEFAULT_CLUSTER_NAME.to_string();
    };
    let Some(text) = cx.expand(value, KEY) else {
        return DEFAULT_CLUSTER_NAME.to_string();
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if (1..=64).contains(&text.len()) && text.chars().all(plain) {
        return text;
    }
    let msg = format!("`{text}` is not a cluster name; expected 1 to 64 letters, digits, `-`, `_` or `.`, like \"edge-eu\" (every key the cluster keeps in the store starts with it)");
    cx.error(value.span(), KEY, msg);
    DEFAULT_CLUSTER_NAME.to_string()
}

fn store(cx: &mut Ctx, c: &FileCluster, table: std::ops::Range<usize>) -> Option<String> {
    const KEY: &str = "cluster.store";
    let Some(value) = &c.store else {
        let msg = format!("`[cluster]` needs `store`; {STORE_HINT}");
        cx.error(table, KEY, msg);
        return None;
    };
    let text = cx.expand(value, KEY)?;
    let problem = if text.starts_with("redis+sentinel://") || text.starts_with("rediss+sentinel://")
    {
        match SentinelStore::parse(&text) {
            Ok(_) => return Some(text),
            Err(e) => format!("`{text}` is not a valid Sentinel URL: {e}; expected \"redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]\" like \"redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/mymaster\""),
        }
    } else if !["redis://", "rediss://", "unix://"]
        .iter()
        .any(|scheme| text.starts_with(scheme))
    {
        format!("`{text}` is not a store URL; {STORE_HINT}")
    } else {
        match redis::IntoConnectionInfo::into_connection_info(text.as_str()) {
            Ok(_) => return Some(text),
            Err(e) => format!("`{text}` is not a valid store URL ({e}); {STORE_HINT}"),
        }
    };
    cx.error(value.span(), KEY, problem);
    None
}

/// `store_ca` and the client certificate pair: only with a TLS store; read by `load`.
fn store_tls(cx: &mut Ctx, c: &FileCluster, store: Option<&str>) -> StoreTlsFiles {
    let tls = store.map(|s| s.starts_with("rediss"));
    let mut files = StoreTlsFiles::default();
    let keys = [
        ("cluster.store_ca", &c.store_ca),
        ("cluster.store_client_cert", &c.store_client_cert),
        ("cluster.store_client_key", &c.store_client_key),
    ];
    if tls == Some(false) {
        for (key, value) in keys {
            if let Some(value) = value {
                let msg = format!("`{}` is for a store reached over TLS (`rediss://` or `rediss+sentinel://`); `store` is not", &key[8..]);
                cx.error(value.span(), key, msg);
            }
        }
        return files;
    }
    if let Some(value) = &c.store_ca {
        if let Some(text) = cx.expand(value, "cluster.store_ca") {
            let path = cx.relative(&text);
            cx.names(
                FileKind::StoreCa(path.clone()),
                value.span(),
                "cluster.store_ca",
            );
            files.ca = Some(path);
        }
    }
    files.client = client_pair(cx, c);
    files
}

/// `store_client_cert` with `store_client_key`: both or neither.
fn client_pair(cx: &mut Ctx, c: &FileCluster) -> Option<TlsFiles> {
    const CERT: &str = "cluster.store_client_cert";
    const KEY: &str = "cluster.store_client_key";
    match (&c.store_client_cert, &c.store_client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let cert_path = cx.expand(cert, CERT).map(|t| cx.relative(&t));
            let key_path = cx.expand(key, KEY).map(|t| cx.relative(&t));
            let files = TlsFiles {
                cert: cert_path?,
                key: key_path?,
            };
            cx.names(FileKind::StoreClient(files.clone()), cert.span(), CERT);
            Some(files)
        }
        (Some(cert), None) => {
            let msg = "`store_client_cert` needs `store_client_key` (the certificate's private key, PEM), for a store with `tls-auth-clients`";
            cx.error(cert.span(), CERT, msg);
            None
        }
        (None, Some(key)) => {
            let msg = "`store_client_key` needs `store_client_cert` (the client certificate chain, PEM), for a store with `tls-auth-clients`";
            cx.error(key.span(), KEY, msg);
            None
        }
    }
}

/// `secret` or `secret_file`, exactly one.
fn secret(cx: &mut Ctx, c: &FileCluster, table: std::ops::Range<usize>) -> Option<ClusterSecret> {
    const WHY: &str = "it keys the hash header-keyed rate limits are kept under in the store, identically on every instance";
    match (&c.secret, &c.secret_file) {
        (Some(_), Some(file)) => {
            let msg = "set `secret` or `secret_file`, not both";
            cx.error(file.span(), "cluster.secret_file", msg);
            None
        }
        (None, None) => {
            let msg = format!("`[cluster]` needs `secret` (at least {MIN_SECRET_LEN} bytes, e.g. \"${{GATEHOUSE_CLUSTER_SECRET}}\") or `secret_file`, the same on every instance: {WHY}");
            cx.error(table, "cluster.secret", msg);
            None
        }
        (Some(value), None) => {
            let text = cx.expand(value, "cluster.secret")?;
            if text.len() < MIN_SECRET_LEN {
                let msg = format!("`secret` is {} bytes; expected at least {MIN_SECRET_LEN} (e.g. the output of `openssl rand -base64 32`): {WHY}", text.len());
                cx.error(value.span(), "cluster.secret", msg);
                return None;
            }
            Some(ClusterSecret::Inline(Secret(text.into_bytes())))
        }
        (None, Some(value)) => {
            const KEY: &str = "cluster.secret_file";
            let text = cx.expand(value, KEY)?;
            let path = cx.relative(&text);
            cx.names(FileKind::Secret(path.clone()), value.span(), KEY);
            Some(ClusterSecret::File(path))
        }
    }
}

/// Written, or the host name and the first listener's port (two instances on one host differ).
fn instance(cx: &mut Ctx, value: Option<&Str>, listen: &Listen) -> String {
    const KEY: &str = "cluster.instance";
    if let Some(text) = value.and_then(|v| cx.expand(v, KEY)) {
        if !text.is_empty() && text.len() <= 128 && !text.chars().any(char::is_control) {
            return text;
        }
        let msg = "`instance` must be 1 to 128 characters without control characters; leave it out for the host name and port";
        if let Some(v) = value {
            cx.error(v.span(), KEY, msg);
        }
    }
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let port = listen.http.iter().chain(&listen.https).next();
    match port {
        Some(addr) => format!("{host}:{}", addr.port()),
        None => host,
    }
}

fn timeout(cx: &mut Ctx, value: &Option<Str>) -> Duration {
    let (lo, hi) = (Duration::from_millis(1), Duration::from_secs(5));
    cx.duration_where(
        value,
        "cluster.timeout",
        DEFAULT_STORE_TIMEOUT,
        |d| (lo..=hi).contains(&d),
        format_args!("a store timeout; expected a duration from 1ms to 5s, like \"50ms\" (a request waits at most this long for the store)"),
    )
}

/// Long enough for a renewal every third of it to survive a slow store; short enough that a
/// dead holder's order is resumed soon.
fn lock_ttl(cx: &mut Ctx, value: &Option<Str>) -> Duration {
    let (lo, hi) = (Duration::from_secs(2), Duration::from_secs(600));
    cx.duration_where(
        value,
        "cluster.lock_ttl",
        DEFAULT_LOCK_TTL,
        |d| (lo..=hi).contains(&d),
        format_args!("a lock lifetime; expected a duration from 2s to 10m, like \"30s\" (a dead holder's order is resumed by another instance after this long)"),
    )
}
