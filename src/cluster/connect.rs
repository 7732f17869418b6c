//! Reaching the cluster store (`docs/cluster.md`): from the validated `[cluster] store` and the
//! TLS files `load` read, the connections the rate limits ([`super::Store`]) and the heartbeat
//! ([`super::members`]) use.
//!
//! Owns: which address the store is at now (the URL's, or for `redis+sentinel://` the master the
//! sentinels name, asked on every (re)connection so a failover is followed), TLS to it
//! (`rediss://`: the system's roots, or only `store_ca`; a client certificate), and the time
//! each step may take. Everything here runs in the background; no request waits for it.

use crate::config::{Cluster, SentinelStore};
use crate::load::StorePem;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo,
    RedisConnectionInfo, TlsCertificates,
};
use std::time::Duration;

/// How long a connection attempt may take (in the background: no request waits for it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one sentinel may take to name the master before the next one is asked.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the store is and how to reach it; equal endpoints reach the same store the same way.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    sentinel: Option<SentinelStore>,
    pem: StorePem,
}

/// A connection and the address it went to (`HOST:PORT`, or the URL for a direct store).
pub struct Connected<C> {
    pub conn: C,
    pub at: String,
}

impl Endpoint {
    pub fn new(settings: &Cluster, pem: &StorePem) -> Endpoint {
        Endpoint {
            url: settings.store.clone(),
            sentinel: settings.sentinel.clone(),
            pem: pem.clone(),
        }
    }

    /// Whether the URL turns certificate checks off (redis-rs's `#insecure` fragment).
    pub fn insecure(&self) -> bool {
        self.url.starts_with("rediss://") && self.url.ends_with("#insecure")
    }

    pub fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// Logs, once at start, what is unusual about this endpoint.
    pub fn announce(&self) {
        if self.insecure() {
            tracing::warn!("cluster store URL ends in `#insecure`: the store's certificate is NOT checked (anyone on the path can read and change what the instances share); remove it and set `store_ca` for a private CA");
        }
    }

    /// A reconnecting connection to the store (for Sentinel, to the master named now).
    pub async fn manager(&self) -> Result<Connected<ConnectionManager>, String> {
        let (client, at) = self.client().await?;
        // the manager reconnects by itself after this (to the same address); a command
        // meanwhile fails or waits for the new connection, which the caller's timeout bounds
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(200);
        let made = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await;
        let mut conn = match made {
            Ok(Ok(conn)) => conn,
            // the manager retries, and its error (or our timeout) may hide the first cause
            // (a certificate refused): one plain attempt says it
            _ => return Err(format!("{at}: {}", why_not(&client).await)),
        };
        if self.sentinel.is_some() {
            is_master(&mut conn, &at).await?;
        }
        Ok(Connected { conn, at })
    }

    /// A plain (not reconnecting) connection, for the heartbeat, which makes a new one when a
    /// beat fails.
    pub async fn multiplexed(&self) -> Result<Connected<MultiplexedConnection>, String> {
        let (client, at) = self.client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CONNECT_TIMEOUT);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("{at}: {e}"))?;
        if self.sentinel.is_some() {
            is_master(&mut conn, &at).await?;
        }
        Ok(Connected { conn, at })
    }

    /// A subscriber connection (shared ACME's certificate announcements), to the store now
    /// (for Sentinel, to the master named now: announcements are published there).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let (client, at) = self.client().await?;
        client
            .get_async_pubsub()
            .await
            .map_err(|e| format!("{at}: {e}"))
    }

    /// For a Sentinel store, the master's address as the sentinels name it now (`None` for a
    /// direct store, or when no sentinel answered).
    pub async fn master_now(&self) -> Option<String> {
        let sentinel = self.sentinel.as_ref()?;
        let (host, port) = ask_sentinels(sentinel, &self.pem).await.ok()?;
        Some(addr_label(&host, port))
    }

    /// The client for the store now, and its address.
    async fn client(&self) -> Result<(Client, String), String> {
        let Some(sentinel) = &self.sentinel else {
            let client = with_tls(self.url.as_str(), &self.pem, self.url.starts_with("rediss"))
                .map_err(|e| format!("the store URL was refused by the client: {e}"))?;
            return Ok((client, redacted(&self.url)));
        };
        let (host, port) = ask_sentinels(sentinel, &self.pem).await?;
        let at = addr_label(&host, port);
        let info = ConnectionInfo {
            addr: tcp(host, port, sentinel.tls),
            redis: RedisConnectionInfo {
                db: sentinel.db,
                username: sentinel.username.clone(),
                password: sentinel.password.clone(),
                ..RedisConnectionInfo::default()
            },
        };
        let client = with_tls(info, &self.pem, sentinel.tls).map_err(|e| format!("{at}: {e}"))?;
        Ok((client, at))
    }
}

/// Why a connection to `client` cannot be made (one attempt, without retries).
async fn why_not(client: &Client) -> String {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(CONNECT_TIMEOUT);
    let attempt = client.get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => "the connection was lost while it was being made".to_string(),
        Err(_) => format!("no connection within {CONNECT_TIMEOUT:?}"),
    }
}

/// A client for `info`, with `store_ca` and the client certificate when over TLS (without
/// them, TLS checks the store's certificate against the system's roots).
fn with_tls(
    info: impl redis::IntoConnectionInfo,
    pem: &StorePem,
    tls: bool,
) -> redis::RedisResult<Client> {
    if !tls || (pem.ca.is_none() && pem.client.is_none()) {
        if tls {
            ring_by_default();
        }
        return Client::open(info);
    }
    ring_by_default();
    let client_tls = pem.client.as_ref().map(|(cert, key)| ClientTlsConfig {
        client_cert: cert.clone(),
        client_key: key.clone(),
    });
    let certs = TlsCertificates {
        client_tls,
        root_cert: pem.ca.clone(),
    };
    Client::build_with_tls(info, certs)
}

/// redis-rs makes its rustls config with the process's default provider: make it ring, ours
/// (a no-op when one is installed already).
fn ring_by_default() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn tcp(host: String, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    }
}

fn addr_label(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

/// Asks each sentinel in turn, as Redis's guide for Sentinel clients says: the first that names
/// the master wins (each may take `SENTINEL_TIMEOUT`).
async fn ask_sentinels(sentinel: &SentinelStore, pem: &StorePem) -> Result<(String, u16), String> {
    let mut problems = Vec::new();
    for (host, port) in &sentinel.sentinels {
        let asked =
            tokio::time::timeout(SENTINEL_TIMEOUT, ask_one(host, *port, sentinel, pem)).await;
        let problem = match asked {
            Ok(Ok(Some(addr))) => return Ok(addr),
            Ok(Ok(None)) => format!("does not monitor a master named `{}`", sentinel.master),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {SENTINEL_TIMEOUT:?}"),
        };
        problems.push(format!("sentinel {}: {problem}", addr_label(host, *port)));
    }
    Err(problems.join("; "))
}

async fn ask_one(
    host: &str,
    port: u16,
    sentinel: &SentinelStore,
    pem: &StorePem,
) -> redis::RedisResult<Option<(String, u16)>> {
    let info = ConnectionInfo {
        addr: tcp(host.to_string(), port, sentinel.tls),
        redis: RedisConnectionInfo::default(),
    };
    let client = with_tls(info, pem, sentinel.tls)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&sentinel.master)
        .query_async(&mut conn)
        .await
}

/// Whether the server at `at` is a master (a sentinel's answer may lag a failover by a moment;
/// a replica would refuse every write).
async fn is_master(conn: &mut impl redis::aio::ConnectionLike, at: &str) -> Result<(), String> {
    let role = tokio::time::timeout(
        CONNECT_TIMEOUT,
        redis::cmd("ROLE").query_async::<redis::Role>(conn),
    )
    .await;
    match role {
        Ok(Ok(redis::Role::Primary { .. })) => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "{at}: named master by the sentinels but is not (yet) one"
        )),
        Ok(Err(e)) => Err(format!("{at}: {e}")),
        Err(_) => Err(format!(
            "{at}: no answer to ROLE within {CONNECT_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_never_show_the_password() {
        assert_eq!(redacted("rediss://:pw@h:6380/2"), "rediss://***@h:6380/2");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        assert_eq!(addr_label("::1", 6379), "[::1]:6379");
    }
}
