//! Upstream server names to addresses: through the system resolver (getaddrinfo: `/etc/hosts`,
//! then `/etc/resolv.conf`), or, with `[server] resolver`, by asking those DNS servers directly.
//!
//! The direct client is written here rather than taken from hickory-resolver: it asks one A and
//! one AAAA question per name and round, over UDP with a TCP retry when the answer is truncated.
//! It keeps no cache and ignores TTLs, because the pool asks again every `resolve_every` anyway;
//! no search domains (a name is asked as written), no DNSSEC, no encrypted transports. hickory
//! would bring some 40 more crates (its own ~70k lines, a cache, the ICU stack through `url`)
//! for what is about 300 lines with tests.

mod message;

use self::message::{Answer, MessageError, QType};
use crate::config::{Resolver, ServerAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Why a name gave no addresses this round; the pool keeps the last known ones.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    System(#[from] io::Error),
    #[error("the system resolver gave no answer within {0:?} (`[server] resolve_timeout`)")]
    Timeout(Duration),
    #[error("no such name (NXDOMAIN)")]
    NoSuchName,
    #[error("the name has no A or AAAA records")]
    NoAddresses,
    #[error("DNS server {server}: {source}")]
    Server {
        server: SocketAddr,
        source: AskError,
    },
}

/// Why one DNS server gave no answer; the next one listed is asked.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("the name cannot be put in a DNS query")]
    BadName,
}

/// The addresses `server` stands for. A name is given at most `budget` (`resolve_timeout`, never
/// more than the pool's round), shared among the DNS servers listed.
///
/// The system resolver (getaddrinfo) blocks, so tokio runs it on its blocking pool; past the
/// budget the pool's thread is left to finish on its own (glibc gives up after its own
/// timeouts), and the round goes on without it.
pub async fn lookup(
    resolver: &Resolver,
    server: &ServerAddr,
    budget: Duration,
) -> Result<Vec<SocketAddr>, LookupError> {
    let port = server.port;
    if let Ok(ip) = server.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let ips = match resolver {
        Resolver::System => {
            let lookup = tokio::net::lookup_host((server.host.as_str(), port));
            let found = tokio::time::timeout(budget, lookup)
                .await
                .map_err(|_| LookupError::Timeout(budget))??;
            return Ok(found.collect());
        }
        Resolver::Dns(servers) => ask_each(servers, &server.host, budget).await?,
    };
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// Asks the DNS servers in turn until one answers (an NXDOMAIN is an answer too).
async fn ask_each(
    servers: &[SocketAddr],
    name: &str,
    budget: Duration,
) -> Result<Vec<IpAddr>, LookupError> {
    let count = u32::try_from(servers.len()).unwrap_or(u32::MAX).max(1);
    let each = budget / count;
    let mut last = LookupError::NoAddresses;
    for &server in servers {
        let answer = match tokio::time::timeout(each, ask(server, name)).await {
            Ok(answer) => answer,
            Err(_) => Err(AskError::Timeout(each)),
        };
        match answer {
            Ok(Answer::Addrs(ips)) if ips.is_empty() => return Err(LookupError::NoAddresses),
            Ok(Answer::Addrs(ips)) => return Ok(ips),
            Ok(Answer::NoSuchName | Answer::Truncated) => return Err(LookupError::NoSuchName),
            Err(source) => last = LookupError::Server { server, source },
        }
    }
    Err(last)
}

/// A and AAAA from one server, asked at once. Never `Truncated`.
async fn ask(server: SocketAddr, name: &str) -> Result<Answer, AskError> {
    let (v4, v6) = tokio::try_join!(
        exchange(server, name, QType::A),
        exchange(server, name, QType::Aaaa)
    )?;
    Ok(match (v4, v6) {
        (Answer::Addrs(mut v4), Answer::Addrs(v6)) => {
            v4.extend(v6);
            Answer::Addrs(v4)
        }
        // a server that denies one type of the name it has the other of: believe the records
        (Answer::Addrs(ips), _) | (_, Answer::Addrs(ips)) if !ips.is_empty() => Answer::Addrs(ips),
        _ => Answer::NoSuchName,
    })
}

/// One question over UDP, asked again over TCP if the answer did not fit. Never `Truncated`.
async fn exchange(server: SocketAddr, name: &str, qtype: QType) -> Result<Answer, AskError> {
    let id = random_id();
    let query = message::query(id, name, qtype).ok_or(AskError::BadName)?;
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from other sources and reports ICMP errors (nothing
    // listening: the next server is asked at once rather than after the timeout).
    socket.connect(server).await?;
    socket.send(&query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).await?;
        match message::parse(id, name, qtype, &buf[..len]) {
            Ok(Answer::Truncated) => return over_tcp(server, &query, (id, name, qtype)).await,
            Ok(answer) => return Ok(answer),
            Err(MessageError::NotOurs) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The same query over TCP (RFC 1035 4.2.2: each message prefixed with its length).
async fn over_tcp(
    server: SocketAddr,
    query: &[u8],
    (id, name, qtype): (u16, &str, QType),
) -> Result<Answer, AskError> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| AskError::BadName)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    match message::parse(id, name, qtype, &buf)? {
        Answer::Truncated => Err(MessageError::Malformed.into()),
        answer => Ok(answer),
    }
}

/// From the CSPRNG rustls already carries (ring): an off-path forger has to guess the id along
/// with the source port the kernel picked.
fn random_id() -> u16 {
    let mut bytes = [0u8; 2];
    let random = rustls::crypto::ring::default_provider().secure_random;
    match random.fill(&mut bytes) {
        Ok(()) => u16::from_be_bytes(bytes),
        Err(_) => fastrand::u16(..),
    }
}

#[cfg(test)]
mod tests;
