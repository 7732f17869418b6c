//! The other side of the admin listener: the blocking HTTP/1.1 client that `gatehouse health`
//! (`probe`) and `gatehouse reload` (`app::request_reload`) ask a running Gatehouse with, using
//! nothing but the binary itself (no curl, no shell).
//!
//! One request with `Connection: close` over a std socket, all of it (connect, send, answer)
//! within one deadline; the answer read up to `MAX_ANSWER` bytes. A listener bound to `0.0.0.0`
//! or `[::]` is asked on loopback.

use http::Method;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The most of an answer that is read: a status line and a short text are all that is expected
/// (`ready`, `reloaded: ...`, or the config errors a reload was refused for).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr}: port 0 is chosen when Gatehouse starts; pass --admin with the address its `listening` log line shows")]
    PortZero { addr: SocketAddr },
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

/// What the server answered, and the address it was asked at (after the loopback mapping).
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub addr: SocketAddr,
    pub status: u16,
    /// Lossy UTF-8, cut at `MAX_ANSWER` with the head.
    pub body: String,
}

/// `method path` to `addr` without a body; the answer, all within `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &Method,
    path: &str,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let deadline = Deadline::new(timeout);
    let addr = reachable(addr)?;
    let mut stream = deadline.connect(addr)?;
    // a POST without a length would be read as a body running to the close that never comes
    let length = if method == Method::GET || method == Method::HEAD {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    // the address asked is one the admin listener answers to (its own, or loopback), and no
    // `Origin`: the listener refuses other names and cross-origin POSTs (`admin::guard`)
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{length}Connection: close\r\n\r\n");
    stream
        .set_write_timeout(Some(deadline.left(addr)?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| deadline.io(addr, e))?;
    let answer = read_answer(&mut stream, addr, &deadline)?;
    let (status, body) = parse_answer(&answer).ok_or_else(|| ClientError::NotHttp {
        addr,
        start: String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned(),
    })?;
    Ok(Answer { addr, status, body })
}

/// Whether `addr` takes a TCP connection within `timeout`; the address it was reached at.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<SocketAddr, ClientError> {
    let addr = reachable(addr)?;
    Deadline::new(timeout).connect(addr)?;
    Ok(addr)
}

/// A listener bound to `0.0.0.0` or `[::]` is reached on loopback; port 0 cannot be reached.
fn reachable(addr: SocketAddr) -> Result<SocketAddr, ClientError> {
    if addr.port() == 0 {
        return Err(ClientError::PortZero { addr });
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

/// One deadline for the whole exchange, however the time is spent.
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn new(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// Time left, or the timeout error once there is none (a zero socket timeout is an error).
    fn left(&self, addr: SocketAddr) -> Result<Duration, ClientError> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.expired(addr))
        } else {
            Ok(left)
        }
    }

    fn expired(&self, addr: SocketAddr) -> ClientError {
        ClientError::Timeout {
            addr,
            timeout: self.timeout,
        }
    }

    /// A socket error, a timeout when it is the socket timeout running out.
    fn io(&self, addr: SocketAddr, source: std::io::Error) -> ClientError {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.expired(addr),
            _ => ClientError::Io { addr, source },
        }
    }

    fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ClientError> {
        TcpStream::connect_timeout(&addr, self.left(addr)?).map_err(|source| match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.expired(addr),
            _ => ClientError::Connect { addr, source },
        })
    }
}

/// Reads until the server closes (it does, after `Connection: close`) or `MAX_ANSWER` bytes.
fn read_answer(
    stream: &mut TcpStream,
    addr: SocketAddr,
    deadline: &Deadline,
) -> Result<Vec<u8>, ClientError> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while answer.len() < MAX_ANSWER {
        stream
            .set_read_timeout(Some(deadline.left(addr)?))
            .map_err(|e| deadline.io(addr, e))?;
        let room = (MAX_ANSWER - answer.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
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
    use std::net::TcpListener;

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
    fn wildcard_binds_are_asked_on_loopback_and_port_zero_is_refused() {
        let v4: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert_eq!(reachable(v4).unwrap(), "127.0.0.1:9901".parse().unwrap());
        let v6: SocketAddr = "[::]:9901".parse().unwrap();
        assert_eq!(reachable(v6).unwrap(), "[::1]:9901".parse().unwrap());
        let lan: SocketAddr = "10.1.2.3:9901".parse().unwrap();
        assert_eq!(reachable(lan).unwrap(), lan);
        let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(matches!(reachable(zero), Err(ClientError::PortZero { .. })));
    }

    /// A server on `0.0.0.0` that records the request head and answers a 200 whose body never
    /// ends: the POST goes out with an empty body, the answer stops at the cap, in time.
    #[test]
    fn a_post_has_an_empty_body_and_an_endless_answer_stops_at_the_cap() {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            // until the client hangs up
            while conn.write_all(&[b'x'; 4096]).is_ok() {}
            String::from_utf8(head).unwrap()
        });
        let started = Instant::now();
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let answer = request(addr, &Method::POST, "/reload", Duration::from_secs(5)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(answer.addr, SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body.len(),
            MAX_ANSWER - "HTTP/1.1 200 OK\r\n\r\n".len()
        );
        let head = server.join().unwrap();
        assert!(head.starts_with("POST /reload HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 0\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(!head.to_ascii_lowercase().contains("origin:"), "{head}");
    }
}
