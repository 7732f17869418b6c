//! DNS messages (RFC 1035), only as far as looking up an upstream needs: one question out, the
//! A or AAAA records back (following the CNAME chain the server sent along). Pure: no IO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER: usize = 12;
/// Recursion desired: the server is a resolver (compose's, Consul's, a local cache), not an
/// authoritative server we would have to walk down from the root.
const FLAG_RD: u16 = 0x0100;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
/// A CNAME chain longer than this is a loop or abuse; resolvers stop at about as many.
const MAX_CHAIN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
}

impl QType {
    fn code(self) -> u16 {
        match self {
            QType::A => TYPE_A,
            QType::Aaaa => TYPE_AAAA,
        }
    }
}

/// What a well-formed answer to our question says.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR: the addresses of this type (possibly none: the name exists without such records).
    Addrs(Vec<IpAddr>),
    /// NXDOMAIN.
    NoSuchName,
    /// The answer did not fit a UDP datagram: ask again over TCP.
    Truncated,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not the answer to our query (another id or question): a late or forged datagram, skipped.
    #[error("an answer to another question")]
    NotOurs,
    #[error("a malformed DNS message")]
    Malformed,
    #[error("the DNS server answered {}", rcode_name(*.0))]
    Rcode(u16),
}

fn rcode_name(code: u16) -> String {
    match code {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("rcode {other}"),
    }
}

/// A query for `name` (no trailing dot needed); `None` if the name cannot be encoded.
pub fn query(id: u16, name: &str, qtype: QType) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(HEADER + name.len() + 6);
    for word in [id, FLAG_RD, 1, 0, 0, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(out)
}

/// Reads the answer to the query `query(id, name, qtype)` built.
pub fn parse(id: u16, name: &str, qtype: QType, msg: &[u8]) -> Result<Answer, MessageError> {
    let mut r = Reader { msg, pos: 0 };
    if r.u16()? != id {
        return Err(MessageError::NotOurs);
    }
    let flags = r.u16()?;
    let (qdcount, ancount) = (r.u16()?, r.u16()?);
    r.pos = HEADER;
    let asked = name.trim_end_matches('.').to_ascii_lowercase();
    if flags & FLAG_QR == 0 || qdcount != 1 {
        return Err(MessageError::NotOurs);
    }
    let question = r.name()?;
    if question != asked || r.u16()? != qtype.code() || r.u16()? != CLASS_IN {
        return Err(MessageError::NotOurs);
    }
    if flags & FLAG_TC != 0 {
        return Ok(Answer::Truncated);
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Answer::NoSuchName),
        rcode => return Err(MessageError::Rcode(rcode)),
    }
    let records = (0..ancount)
        .map(|_| r.record())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Answer::Addrs(addresses(&asked, qtype, &records)))
}

/// The addresses of `asked` and of the names its CNAME chain leads to, in answer order.
fn addresses(asked: &str, qtype: QType, records: &[Record]) -> Vec<IpAddr> {
    let mut names = vec![asked.to_string()];
    for _ in 0..MAX_CHAIN {
        let next = records.iter().find_map(|rec| match rec {
            Record::Cname { owner, target } if names.contains(owner) && !names.contains(target) => {
                Some(target.clone())
            }
            _ => None,
        });
        match next {
            Some(target) => names.push(target),
            None => break,
        }
    }
    let wanted = |ip: &IpAddr| match qtype {
        QType::A => ip.is_ipv4(),
        QType::Aaaa => ip.is_ipv6(),
    };
    records
        .iter()
        .filter_map(|rec| match rec {
            Record::Addr { owner, ip } if names.contains(owner) && wanted(ip) => Some(*ip),
            _ => None,
        })
        .collect()
}

enum Record {
    Addr { owner: String, ip: IpAddr },
    Cname { owner: String, target: String },
    Other,
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MessageError> {
        let end = self.pos.checked_add(n).ok_or(MessageError::Malformed)?;
        let bytes = self.msg.get(self.pos..end).ok_or(MessageError::Malformed)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, MessageError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn record(&mut self) -> Result<Record, MessageError> {
        let owner = self.name()?;
        let (rtype, class) = (self.u16()?, self.u16()?);
        self.take(4)?; // TTL: unused, names are asked again every `resolve_every`
        let len = usize::from(self.u16()?);
        let start = self.pos;
        let data = self.take(len)?;
        if class != CLASS_IN {
            return Ok(Record::Other);
        }
        Ok(match (rtype, data.len()) {
            (TYPE_A, 4) => {
                let ip = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
                Record::Addr {
                    owner,
                    ip: ip.into(),
                }
            }
            (TYPE_AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                let ip = Ipv6Addr::from(octets);
                Record::Addr {
                    owner,
                    ip: ip.into(),
                }
            }
            (TYPE_A | TYPE_AAAA, _) => return Err(MessageError::Malformed),
            (TYPE_CNAME, _) => {
                let target = Reader {
                    msg: self.msg,
                    pos: start,
                }
                .name()?;
                Record::Cname { owner, target }
            }
            _ => Record::Other,
        })
    }

    /// A name at the current position, lower case without the trailing dot, following compression
    /// pointers. Each pointer must point backwards, and a name is at most 255 bytes: together
    /// they end any loop a forged message could build.
    fn name(&mut self) -> Result<String, MessageError> {
        let mut labels: Vec<String> = Vec::new();
        let mut at = self.pos;
        let mut resume = None;
        let mut total = 0usize;
        loop {
            let len = *self.msg.get(at).ok_or(MessageError::Malformed)?;
            match len {
                0 => {
                    self.pos = resume.unwrap_or(at + 1);
                    return Ok(labels.join("."));
                }
                1..=63 => {
                    let label = self
                        .msg
                        .get(at + 1..at + 1 + usize::from(len))
                        .ok_or(MessageError::Malformed)?;
                    total += label.len() + 1;
                    if total > 255 {
                        return Err(MessageError::Malformed);
                    }
                    labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                    at += 1 + usize::from(len);
                }
                0xc0..=0xff => {
                    let low = *self.msg.get(at + 1).ok_or(MessageError::Malformed)?;
                    let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                    if target >= at {
                        return Err(MessageError::Malformed);
                    }
                    resume.get_or_insert(at + 2);
                    at = target;
                }
                _ => return Err(MessageError::Malformed),
            }
        }
    }
}

#[cfg(test)]
mod tests;
