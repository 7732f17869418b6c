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
    /// A `redis://` or `unix://` URL, as written (validated to parse).
    pub store: String,
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
