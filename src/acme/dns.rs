//! DNS-01: publishes `_acme-challenge.<name>` TXT records through the configured provider
//! (`rfc2136`: a TSIG-signed dynamic update; `exec`: lego's `command present|cleanup <fqdn>
//! <value>`; `httpreq`: lego's `POST <endpoint>/present|cleanup`), waits until a DNS server answers them, and removes them again. Every record is
//! written to the certificate's folder (`dns-01-pending.json`) before it is published and
//! struck from it once removed, so records left by a crash or a failed removal are removed at
//! the next start or order ([`clean_leftovers`]). Publishes, removals and propagation waits are
//! counted (`gatehouse_acme_dns_*`) by provider and result.

mod httpreq;
pub mod wire;

use super::store;
use crate::config::{Dns, DnsProvider, Rfc2136};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// One try of a DNS exchange; three are made over UDP.
const DNS_TRY: Duration = Duration::from_secs(2);
/// How often the record is looked for while waiting for it.
const POLL: Duration = Duration::from_secs(2);
/// A hook script that runs longer than this is stopped.
const EXEC_LIMIT: Duration = Duration::from_secs(120);
const PENDING: &str = "dns-01-pending.json";

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("the DNS server {server} refused the update of {name}: {rcode}{tsig}")]
    Refused {
        server: SocketAddr,
        name: String,
        rcode: &'static str,
        /// The TSIG error and what it means, when the server gave one.
        tsig: String,
    },
    #[error("no answer from the DNS server {0} (3 tries, {DNS_TRY:?} each)")]
    NoAnswer(SocketAddr),
    #[error("DNS server {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("the DNS hook `{command} {action} {name} {value}` {outcome}")]
    Exec {
        command: PathBuf,
        action: &'static str,
        name: String,
        value: String,
        /// "failed with exit status 1: <its stderr>", "could not start: ...", ...
        outcome: String,
    },
    #[error("the DNS API {url} ({name} {value}) {outcome}")]
    HttpReq {
        url: String,
        name: String,
        value: String,
        /// "answered 403 Forbidden: <its body>", "cannot be reached: ...", ...
        outcome: String,
    },
    #[error("the TXT record {name} was not answered by {server} within {waited:?} (`propagation_timeout`); last answer: {last}")]
    NotVisible {
        name: String,
        server: SocketAddr,
        waited: Duration,
        last: String,
    },
    #[error("no DNS server to check the record with: set `resolver` in `dns`, or list a `nameserver` in /etc/resolv.conf")]
    NoResolver,
}

/// A TXT record for one name's challenge: `fqdn` ends with a dot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub fqdn: String,
    pub value: String,
}

impl Record {
    /// The record for `domain` (a wildcard's authorization names its base domain).
    pub fn new(domain: &str, value: String) -> Record {
        Record {
            fqdn: format!("_acme-challenge.{}.", domain.trim_end_matches('.')),
            value,
        }
    }
}

/// Publishes `record`.
pub async fn present(dns: &Dns, record: &Record) -> Result<(), DnsError> {
    match &dns.provider {
        DnsProvider::Rfc2136(r) => update(r, record, true).await,
        DnsProvider::Exec { command } => exec(command, "present", record).await,
        DnsProvider::HttpReq(h) => httpreq::post(h, "present", record).await,
    }
}

/// Removes `record` (other values at the same name stay).
pub async fn cleanup(dns: &Dns, record: &Record) -> Result<(), DnsError> {
    match &dns.provider {
        DnsProvider::Rfc2136(r) => update(r, record, false).await,
        DnsProvider::Exec { command } => exec(command, "cleanup", record).await,
        DnsProvider::HttpReq(h) => httpreq::post(h, "cleanup", record).await,
    }
}

/// Waits (up to `propagation_timeout`, looking every 2 s) until the checking server answers
/// `record`: `resolver` if set, else rfc2136's `server` (the zone's primary, which answers at
/// once), else the first `nameserver` of /etc/resolv.conf.
pub async fn wait_visible(dns: &Dns, record: &Record) -> Result<(), DnsError> {
    let (server, recurse) = match (&dns.resolver, &dns.provider) {
        (Some(r), _) => (*r, true),
        (None, DnsProvider::Rfc2136(r)) => (r.server, false),
        (None, DnsProvider::Exec { .. } | DnsProvider::HttpReq(_)) => {
            (system_resolver().await?, true)
        }
    };
    let started = Instant::now();
    loop {
        let last = match lookup_txt(server, &record.fqdn, recurse).await {
            Ok(values) if values.contains(&record.value) => return Ok(()),
            Ok(values) => format!("{} other value(s)", values.len()),
            Err(e) => e.to_string(),
        };
        if started.elapsed() + POLL > dns.propagation_timeout {
            return Err(DnsError::NotVisible {
                name: record.fqdn.clone(),
                server,
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The TXT values at `name` that `server` answers.
pub async fn lookup_txt(
    server: SocketAddr,
    name: &str,
    recurse: bool,
) -> Result<Vec<String>, DnsError> {
    let id = fastrand::u16(..);
    let query = wire::query(id, name, recurse)?;
    Ok(exchange(server, &query, id).await?.txt)
}

/// The whole answer of `server` to a `kind` query (`wire::TYPE_*`) for `name`.
pub async fn lookup(
    server: SocketAddr,
    name: &str,
    kind: u16,
    recurse: bool,
) -> Result<wire::Reply, DnsError> {
    let id = fastrand::u16(..);
    let query = wire::query_type(id, name, kind, recurse)?;
    exchange(server, &query, id).await
}

async fn update(r: &Rfc2136, record: &Record, add: bool) -> Result<(), DnsError> {
    let id = fastrand::u16(..);
    let mut msg = wire::update(id, &r.zone, &record.fqdn, &record.value, add)?;
    if let Some(key) = &r.tsig {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        wire::sign(&mut msg, key, now)?;
    }
    let reply = exchange(r.server, &msg, id).await?;
    if reply.rcode == 0 {
        return Ok(());
    }
    let tsig = match reply.tsig_error.filter(|e| *e != 0) {
        Some(e) => format!(" (TSIG {}: {})", wire::rcode_name(e), tsig_hint(e)),
        None if reply.rcode == 9 => {
            " (not authorized: check `tsig_key` and the server's update ACL)".to_string()
        }
        None if reply.rcode == 5 => {
            " (the server does not allow this key or address to update the zone)".to_string()
        }
        None => String::new(),
    };
    Err(DnsError::Refused {
        server: r.server,
        name: record.fqdn.clone(),
        rcode: wire::rcode_name(u16::from(reply.rcode)),
        tsig,
    })
}

fn tsig_hint(error: u16) -> &'static str {
    match error {
        16 => "the signature does not verify; check `tsig_secret` and `tsig_algorithm`",
        17 => "the server does not know this key; check `tsig_key`",
        18 => "the clocks differ by more than 5 minutes",
        _ => "see the server's log",
    }
}

/// Sends `msg` over UDP (three tries), and again over TCP if the answer was truncated.
async fn exchange(server: SocketAddr, msg: &[u8], id: u16) -> Result<wire::Reply, DnsError> {
    let io = |source| DnsError::Io { server, source };
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(wire::UDP_SIZE)];
    for _ in 0..3 {
        socket.send(msg).await.map_err(io)?;
        let answer = tokio::time::timeout(DNS_TRY, async {
            loop {
                let n = socket.recv(&mut buf).await?;
                // an answer to an earlier try, or a stray datagram, is not this one
                if let Ok(reply) = wire::parse(&buf[..n]) {
                    if reply.id == id {
                        return Ok::<_, std::io::Error>(reply);
                    }
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(reply)) if reply.truncated => return exchange_tcp(server, msg, id).await,
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => continue,
        }
    }
    Err(DnsError::NoAnswer(server))
}

async fn exchange_tcp(server: SocketAddr, msg: &[u8], id: u16) -> Result<wire::Reply, DnsError> {
    let io = |source| DnsError::Io { server, source };
    let talk = async {
        let mut tcp = TcpStream::connect(server).await?;
        let len = u16::try_from(msg.len()).unwrap_or(u16::MAX);
        tcp.write_all(&len.to_be_bytes()).await?;
        tcp.write_all(msg).await?;
        let len = tcp.read_u16().await?;
        let mut answer = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(DNS_TRY * 3, talk)
        .await
        .map_err(|_| DnsError::NoAnswer(server))?
        .map_err(io)?;
    let reply = wire::parse(&answer)?;
    if reply.id != id {
        return Err(wire::WireError::Malformed.into());
    }
    Ok(reply)
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
pub async fn system_resolver() -> Result<SocketAddr, DnsError> {
    let text = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or(DnsError::NoResolver)
}

/// Runs `command action fqdn value`; its stderr goes into the error when it fails.
async fn exec(command: &Path, action: &'static str, record: &Record) -> Result<(), DnsError> {
    let (cmd, rec) = (command.to_path_buf(), record.clone());
    let outcome = tokio::task::spawn_blocking(move || run_hook(&cmd, action, &rec))
        .await
        .unwrap_or_else(|e| Err(format!("stopped: {e}")));
    outcome.map_err(|outcome| DnsError::Exec {
        command: command.to_path_buf(),
        action,
        name: record.fqdn.clone(),
        value: record.value.clone(),
        outcome,
    })
}

/// The hook as a child process, stopped after [`EXEC_LIMIT`]. Blocking.
fn run_hook(command: &Path, action: &str, record: &Record) -> Result<(), String> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(command)
        .args([action, &record.fqdn, &record.value])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    // read stderr beside the wait, so a chatty hook cannot block on a full pipe
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut s) = stderr {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > EXEC_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "did not finish within {EXEC_LIMIT:?} and was stopped"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("could not be waited for: {e}")),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    let stderr = stderr.trim();
    match status? {
        s if s.success() => Ok(()),
        s if stderr.is_empty() => Err(format!("failed with {s} (no output on stderr)")),
        s => Err(format!("failed with {s}: {stderr}")),
    }
}

/// The records published for a certificate and not yet removed (as stored in its folder).
fn read_pending(dir: &Path) -> Vec<Record> {
    std::fs::read(dir.join(PENDING))
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}

fn write_pending(dir: &Path, records: &[Record]) -> Result<(), String> {
    let path = dir.join(PENDING);
    if records.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        };
    }
    let json = serde_json::to_vec(records).map_err(|e| e.to_string())?;
    store::write_atomic(&path, &json, 0o600).map_err(|e| e.to_string())
}

/// Records published in the certificate folder `dir` and not removed yet: remembered on disk
/// before publishing, removed (and forgotten) by [`Published::cleanup`], or by a task spawned on
/// drop when an order is abandoned (its deadline, a reload that stops the site).
pub struct Published {
    dns: Dns,
    dir: PathBuf,
    records: Vec<Record>,
    metrics: Option<Arc<Metrics>>,
}

impl Published {
    pub fn new(dns: Dns, dir: PathBuf, metrics: Option<Arc<Metrics>>) -> Published {
        Published {
            dns,
            dir,
            records: Vec::new(),
            metrics,
        }
    }

    /// Remembers `record`, publishes it, and waits until it is answered.
    pub async fn add(&mut self, record: Record) -> Result<(), DnsError> {
        self.records.push(record.clone());
        let mut all = read_pending_async(&self.dir).await;
        all.push(record.clone());
        save_pending(&self.dir, all).await;
        let provider = self.dns.provider.name();
        let presented = present(&self.dns, &record).await;
        if let Some(m) = &self.metrics {
            m.acme_dns_change(provider, false, presented.is_ok());
        }
        if let Err(e) = presented {
            if matches!(e, DnsError::Refused { .. }) {
                // the server changed nothing: there is nothing to remove
                self.records.pop();
                remove_from_list(&self.dir, &[record]).await;
            }
            return Err(e);
        }
        tracing::info!(record = %record.fqdn, provider, "DNS-01 record published; waiting until it is answered");
        let started = Instant::now();
        let visible = wait_visible(&self.dns, &record).await;
        if let Some(m) = &self.metrics {
            m.acme_dns_propagation(provider, visible.is_ok(), started.elapsed());
        }
        visible
    }

    /// Removes every record published; what cannot be removed stays remembered for next time.
    pub async fn cleanup(mut self) {
        let records = std::mem::take(&mut self.records);
        remove(&self.dns, &self.dir, records, self.metrics.as_deref()).await;
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let (dns, dir, records, metrics) = (
            self.dns.clone(),
            self.dir.clone(),
            std::mem::take(&mut self.records),
            self.metrics.clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { remove(&dns, &dir, records, metrics.as_deref()).await });
        }
    }
}

/// Removes `records` and strikes the removed ones from the folder's list.
async fn remove(dns: &Dns, dir: &Path, records: Vec<Record>, metrics: Option<&Metrics>) {
    let mut removed = Vec::new();
    for record in records {
        let cleaned = cleanup(dns, &record).await;
        if let Some(m) = metrics {
            m.acme_dns_change(dns.provider.name(), true, cleaned.is_ok());
        }
        match cleaned {
            Ok(()) => removed.push(record),
            Err(e) => {
                tracing::warn!(record = %record.fqdn, error = %e, "cannot remove the DNS-01 record; trying again at the next order or start");
            }
        }
    }
    remove_from_list(dir, &removed).await;
}

async fn remove_from_list(dir: &Path, removed: &[Record]) {
    let mut left = read_pending_async(dir).await;
    left.retain(|r| !removed.contains(r));
    save_pending(dir, left).await;
}

/// Removes the records a crash or a failed removal left behind in `dir`'s list.
pub async fn clean_leftovers(dns: &Dns, dir: &Path, metrics: Option<&Metrics>) {
    let leftovers = read_pending_async(dir).await;
    if leftovers.is_empty() {
        return;
    }
    tracing::info!(
        records = leftovers.len(),
        "removing DNS-01 records left from an earlier run"
    );
    remove(dns, dir, leftovers, metrics).await;
}

async fn read_pending_async(dir: &Path) -> Vec<Record> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || read_pending(&dir))
        .await
        .unwrap_or_default()
}

async fn save_pending(dir: &Path, records: Vec<Record>) {
    let dir = dir.to_path_buf();
    let written = tokio::task::spawn_blocking(move || write_pending(&dir, &records)).await;
    if let Ok(Err(e)) | Err(e) = written.map_err(|e| e.to_string()) {
        tracing::warn!(error = %e, "cannot remember the DNS-01 records in the state dir; a restart before they are removed leaves them behind");
    }
}
