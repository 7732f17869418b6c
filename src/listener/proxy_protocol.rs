//! The PROXY protocol header (HAProxy's spec, v1 text and v2 binary) that a load balancer writes
//! before the client's bytes, saying who the client is. `parse` is pure and works on a byte slice;
//! `read_header` is its IO edge and takes exactly the header's bytes off the socket, never more,
//! so TLS or HTTP then reads the stream from its own first byte.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 line, CRLF included:
/// `PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n`.
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and transport, payload length.
const V2_FIXED: usize = 16;
/// The most addresses plus TLVs we take after the fixed part. Load balancers send a few dozen
/// bytes (AWS adds a VPC endpoint id); anything near this is not a header worth reading.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection: the client's address and the address it connected to.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The load balancer speaking for itself (v2 `LOCAL`, v1 `UNKNOWN`: health checks) or an
    /// address family we do not carry (`AF_UNSPEC`, `AF_UNIX`, datagrams): the socket peer stays
    /// the client.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 header with version {0}, expected 2")]
    V2Version(u8),
    #[error("PROXY v2 header with unknown command {0:#x}")]
    V2Command(u8),
    #[error("PROXY v2 header with unknown family/transport {0:#04x}")]
    V2Family(u8),
    #[error(
        "PROXY v2 header announces {0} bytes after the fixed part, more than {V2_MAX_PAYLOAD}"
    )]
    V2TooLong(usize),
    #[error("PROXY v2 address block of {len} bytes is too short for family {family:#04x}")]
    V2Short { family: u8, len: usize },
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

use ProxyHeaderError as E;

/// Takes the header off `stream`. Looks at what has arrived with `peek` and consumes only bytes
/// known to belong to the header: all of them while it is incomplete (the next `peek` then waits
/// for new bytes), exactly up to its end once it is complete. No timeout here: the caller bounds it.
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, ProxyHeaderError> {
    let mut header = Vec::with_capacity(V1_MAX);
    let mut window = [0u8; 256];
    loop {
        let seen = stream.peek(&mut window).await?;
        let arrived = &window[..seen.min(window.len())];
        if arrived.is_empty() {
            return Err(E::Closed);
        }
        let had = header.len();
        header.extend_from_slice(arrived);
        let (parsed, take) = match parse(&header)? {
            Some((parsed, len)) => (Some(parsed), len.saturating_sub(had)),
            None => (None, seen),
        };
        stream.read_exact(&mut window[..take.min(seen)]).await?;
        if let Some(parsed) = parsed {
            return Ok(parsed);
        }
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` while `buf` is a valid but incomplete
/// start of one, else the header and the number of bytes of `buf` it takes. Every byte of an
/// incomplete `buf` belongs to the header (so a reader may consume them all), and a complete one
/// never takes more than v1's 107 bytes or v2's 16 + 4096.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(E::NotProxy),
    }
}

/// True if `buf` and `prefix` agree as far as both go.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    buf.iter().zip(prefix).all(|(a, b)| a == b)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    if !starts_like(buf, V1_PREFIX) {
        return Err(E::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(E::V1TooLong);
        }
        // fail on a byte no header can hold now, not when the timeout ends the wait
        let last = window.len().saturating_sub(1);
        let stray = window
            .iter()
            .enumerate()
            .any(|(i, b)| !(b.is_ascii_graphic() || *b == b' ' || (*b == b'\r' && i == last)));
        return if stray {
            Err(E::V1Malformed("a control or non-ASCII byte before CRLF"))
        } else {
            Ok(None)
        };
    };
    let line = buf
        .get(V1_PREFIX.len()..end)
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(E::V1Malformed("not ASCII"))?;
    Ok(Some((v1_line(line)?, end + 2)))
}

/// `TCP4 SRC DST SPORT DPORT`, `TCP6 ...` or `UNKNOWN[ anything]`, single spaces.
fn v1_line(line: &str) -> Result<Header, ProxyHeaderError> {
    let mut fields = line.split(' ');
    let v6 = match fields.next() {
        Some("UNKNOWN") => return Ok(Header::Local),
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => return Err(E::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = || fields.next().ok_or(E::V1Malformed("too few fields"));
    let (src, dst) = (v1_ip(next()?, v6)?, v1_ip(next()?, v6)?);
    let (sport, dport) = (v1_port(next()?)?, v1_port(next()?)?);
    if fields.next().is_some() {
        return Err(E::V1Malformed("too many fields"));
    }
    Ok(Header::Proxy {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    })
}

fn v1_ip(text: &str, v6: bool) -> Result<IpAddr, ProxyHeaderError> {
    let ip = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| E::V1Malformed("address does not match the protocol"))
}

fn v1_port(text: &str) -> Result<u16, ProxyHeaderError> {
    // digits only: u16's parser would also take a leading '+'
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| text.parse().ok())
        .flatten()
        .ok_or(E::V1Malformed("port is not a number from 0 to 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyHeaderError> {
    if !starts_like(buf, V2_SIGNATURE) {
        return Err(E::NotProxy);
    }
    let Some(&[ver_cmd, family, len_hi, len_lo]) = buf.get(12..V2_FIXED) else {
        return Ok(None);
    };
    // everything the fixed part can tell is checked before waiting for the rest
    if ver_cmd >> 4 != 2 {
        return Err(E::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        command => return Err(E::V2Command(command)),
    };
    if family >> 4 > 3 || family & 0x0f > 2 {
        return Err(E::V2Family(family));
    }
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len > V2_MAX_PAYLOAD {
        return Err(E::V2TooLong(len));
    }
    let Some(payload) = buf.get(V2_FIXED..V2_FIXED + len) else {
        return Ok(None);
    };
    // LOCAL: the spec says to ignore the family and any address block
    let header = if local {
        Header::Local
    } else {
        v2_addresses(family, payload)?
    };
    Ok(Some((header, V2_FIXED + len)))
}

/// The address block of a PROXY command; TLVs after it are skipped.
fn v2_addresses(family: u8, block: &[u8]) -> Result<Header, ProxyHeaderError> {
    let short = E::V2Short {
        family,
        len: block.len(),
    };
    let (source, destination) = match family {
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes
        0x11 => {
            let (src, dst) = (bytes::<4>(block, 0), bytes::<4>(block, 4));
            let (sport, dport) = (bytes::<2>(block, 8), bytes::<2>(block, 10));
            let (Some(src), Some(dst), Some(sport), Some(dport)) = (src, dst, sport, dport) else {
                return Err(short);
            };
            (
                SocketAddr::new(Ipv4Addr::from(src).into(), u16::from_be_bytes(sport)),
                SocketAddr::new(Ipv4Addr::from(dst).into(), u16::from_be_bytes(dport)),
            )
        }
        // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes
        0x21 => {
            let (src, dst) = (bytes::<16>(block, 0), bytes::<16>(block, 16));
            let (sport, dport) = (bytes::<2>(block, 32), bytes::<2>(block, 34));
            let (Some(src), Some(dst), Some(sport), Some(dport)) = (src, dst, sport, dport) else {
                return Err(short);
            };
            (
                SocketAddr::new(Ipv6Addr::from(src).into(), u16::from_be_bytes(sport)),
                SocketAddr::new(Ipv6Addr::from(dst).into(), u16::from_be_bytes(dport)),
            )
        }
        // AF_UNSPEC, AF_UNIX, UDP: nothing we can use as a TCP client address
        _ => return Ok(Header::Local),
    };
    Ok(Header::Proxy {
        source,
        destination,
    })
}

fn bytes<const N: usize>(block: &[u8], at: usize) -> Option<[u8; N]> {
    block.get(at..at + N)?.try_into().ok()
}

#[cfg(test)]
mod tests;
