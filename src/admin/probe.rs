//! `gatehouse health`: asks a running Gatehouse whether it is ready, as a container
//! `HEALTHCHECK` or a script would, with nothing but the binary itself (no curl, no shell).
//!
//! One plain HTTP/1.1 `GET /ready` (or `/live`) to the admin listener over a blocking std socket,
//! all of it (connect, send, answer) within one deadline. Without an admin listener in the config
//! it falls back to a TCP connect to the `http` (else `https`) listener and says that readiness
//! was not checked.

use crate::config::{self, ConfigError, Listen};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The most of an answer that is read: the status line and a short body are all that matter.
const MAX_ANSWER: usize = 16 * 1024;

/// Which admin endpoint to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Ready,
    Live,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Ready => "/ready",
            Endpoint::Live => "/live",
        }
    }
}

/// What is probed: the admin endpoint, or (no admin listener) whether a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Admin(SocketAddr),
    Listener {
        name: &'static str,
        addr: SocketAddr,
    },
}

/// A healthy answer, worded for the operator.
#[derive(Debug, PartialEq, Eq)]
pub enum Healthy {
    /// The admin endpoint answered `200`; its body (`ready`, `live`).
    Answered { addr: SocketAddr, body: String },
    /// No admin listener: the listener took a TCP connection, nothing more is known.
    Accepting {
        name: &'static str,
        addr: SocketAddr,
    },
}

impl std::fmt::Display for Healthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Healthy::Answered { addr, body } => write!(f, "{addr}: {}", body.trim_end()),
            Healthy::Accepting { name, addr } => write!(
                f,
                "{addr}: the {name} listener accepts connections (readiness not checked: \
                 the config has no [listen] admin)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("the config has no listener to probe")]
    NoListener,
    #[error("{addr}: port 0 is chosen when Gatehouse starts; pass --admin with the address its `listening` log line shows")]
    PortZero { addr: SocketAddr },
    /// The instance answered, with something other than `200`.
    #[error("{addr}: not ready: {status} {}", body.trim_end())]
    NotReady {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("{addr}: cannot connect: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: the connection failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: not an HTTP answer: {start:?}")]
    NotHttp { addr: SocketAddr, start: String },
}

impl HealthError {
    /// The process exit code: 1 answered but not ready, 64 (EX_USAGE) the config or the target is
    /// wrong, 69 (EX_UNAVAILABLE) nothing answered in time. Not 2: Docker reserves it.
    pub fn exit_code(&self) -> u8 {
        match self {
            HealthError::NotReady { .. } => 1,
            HealthError::Config(_) | HealthError::PortZero { .. } | HealthError::NoListener => 64,
            HealthError::Connect { .. }
            | HealthError::Timeout { .. }
            | HealthError::Io { .. }
            | HealthError::NotHttp { .. } => 69,
        }
    }
}

/// `gatehouse health`: `admin` if given (the config is then not read at all), else the config's
/// `[listen] admin`, else a connect to its `http`/`https` listener.
pub fn health(
    config: &Path,
    admin: Option<SocketAddr>,
    endpoint: Endpoint,
    timeout: Duration,
) -> Result<Healthy, HealthError> {
    let target = match admin {
        Some(addr) => Target::Admin(addr),
        None => target_of(&config::load_listen(config)?).ok_or(HealthError::NoListener)?,
    };
    probe(target, endpoint, timeout)
}

/// The address to ask, from a config's listeners (a validated config has `http` or `https`).
pub fn target_of(listen: &Listen) -> Option<Target> {
    match (listen.admin, listen.http, listen.https) {
        (Some(addr), _, _) => Some(Target::Admin(addr)),
        (None, Some(addr), _) => Some(Target::Listener { name: "http", addr }),
        (None, None, Some(addr)) => Some(Target::Listener {
            name: "https",
            addr,
        }),
        (None, None, None) => None,
    }
}

pub fn probe(
    target: Target,
    endpoint: Endpoint,
    timeout: Duration,
) -> Result<Healthy, HealthError> {
    let deadline = Deadline {
        at: Instant::now() + timeout,
        timeout,
    };
    match target {
        Target::Admin(addr) => {
            let addr = reachable(addr)?;
            let (status, body) = get(addr, endpoint.path(), &deadline)?;
            if status == 200 {
                Ok(Healthy::Answered { addr, body })
            } else {
                Err(HealthError::NotReady { addr, status, body })
            }
        }
        Target::Listener { name, addr } => {
            let addr = reachable(addr)?;
            connect(addr, &deadline)?;
            Ok(Healthy::Accepting { name, addr })
        }
    }
}

/// A listener bound to `0.0.0.0` or `[::]` is reached on loopback; port 0 cannot be reached.
fn reachable(addr: SocketAddr) -> Result<SocketAddr, HealthError> {
    if addr.port() == 0 {
        return Err(HealthError::PortZero { addr });
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

/// One deadline for the whole probe, however the time is spent.
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    /// Time left, or the timeout error once there is none (a zero socket timeout is an error).
    fn left(&self, addr: SocketAddr) -> Result<Duration, HealthError> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.expired(addr))
        } else {
            Ok(left)
        }
    }

    fn expired(&self, addr: SocketAddr) -> HealthError {
        HealthError::Timeout {
            addr,
            timeout: self.timeout,
        }
    }

    /// A socket error, a timeout when it is the socket timeout running out.
    fn io(&self, addr: SocketAddr, source: std::io::Error) -> HealthError {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.expired(addr),
            _ => HealthError::Io { addr, source },
        }
    }
}

fn connect(addr: SocketAddr, deadline: &Deadline) -> Result<TcpStream, HealthError> {
    TcpStream::connect_timeout(&addr, deadline.left(addr)?).map_err(|source| match source.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => deadline.expired(addr),
        _ => HealthError::Connect { addr, source },
    })
}

/// `GET path` with `Connection: close`; the status and the body as text.
fn get(addr: SocketAddr, path: &str, deadline: &Deadline) -> Result<(u16, String), HealthError> {
    let mut stream = connect(addr, deadline)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .set_write_timeout(Some(deadline.left(addr)?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| deadline.io(addr, e))?;
    let answer = read_answer(&mut stream, addr, deadline)?;
    parse_answer(&answer).ok_or_else(|| HealthError::NotHttp {
        addr,
        start: String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned(),
    })
}

/// Reads until the server closes (it does, after `Connection: close`) or `MAX_ANSWER` bytes.
fn read_answer(
    stream: &mut TcpStream,
    addr: SocketAddr,
    deadline: &Deadline,
) -> Result<Vec<u8>, HealthError> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while answer.len() < MAX_ANSWER {
        stream
            .set_read_timeout(Some(deadline.left(addr)?))
            .map_err(|e| deadline.io(addr, e))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(deadline.io(addr, e)),
        }
    }
    Ok(answer)
}

/// `HTTP/1.x NNN ...` head, blank line, body: the status and the body (lossy UTF-8).
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let status_line = text.lines().next()?;
    let mut words = status_line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_status_line() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n";
        assert_eq!(parse_answer(ok), Some((200, "ready\n".into())));
        let not = b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready: no healthy server in upstream api\n";
        assert_eq!(parse_answer(not).map(|a| a.0), Some(503));
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH_9.2\r\n"), None);
        assert_eq!(parse_answer(b"HTTP/1.1 abc\r\n\r\n"), None);
        assert_eq!(parse_answer(b""), None);
    }

    #[test]
    fn wildcard_binds_are_probed_on_loopback_and_port_zero_is_refused() {
        let v4: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert_eq!(reachable(v4).unwrap(), "127.0.0.1:9901".parse().unwrap());
        let v6: SocketAddr = "[::]:9901".parse().unwrap();
        assert_eq!(reachable(v6).unwrap(), "[::1]:9901".parse().unwrap());
        let lan: SocketAddr = "10.1.2.3:9901".parse().unwrap();
        assert_eq!(reachable(lan).unwrap(), lan);
        let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(matches!(reachable(zero), Err(HealthError::PortZero { .. })));
    }

    #[test]
    fn the_admin_listener_is_preferred_then_http_then_https() {
        let path = Path::new("gatehouse.toml");
        let listen = |text: &str| config::parse_listen(path, text).unwrap();
        let admin = listen("[listen]\nhttp = \"0.0.0.0:8080\"\nadmin = \"127.0.0.1:9901\"\n");
        let addr = "127.0.0.1:9901".parse().unwrap();
        assert_eq!(target_of(&admin), Some(Target::Admin(addr)));
        let http = listen("[listen]\nhttp = \"0.0.0.0:8080\"\nhttps = \"0.0.0.0:8443\"\n");
        let addr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            target_of(&http),
            Some(Target::Listener { name: "http", addr })
        );
        let https = listen("[listen]\nhttps = \"0.0.0.0:8443\"\n");
        let addr = "0.0.0.0:8443".parse().unwrap();
        let want = Target::Listener {
            name: "https",
            addr,
        };
        assert_eq!(target_of(&https), Some(want));
    }
}
