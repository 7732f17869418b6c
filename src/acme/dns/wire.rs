//! DNS messages on the wire (RFC 1035), as far as DNS-01 and `certs doctor` need them: a query
//! (TXT, A, AAAA, CAA), an RFC 2136 update that adds or deletes one TXT record, its TSIG
//! signature (RFC 8945), and reading an answer. Pure: no IO, unit tested below.

use crate::config::{Tsig, TsigAlgorithm};

pub const TYPE_A: u16 = 1;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_CAA: u16 = 257;
const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
/// In an update: "delete this exact record" (RFC 2136 2.5.4).
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
/// Short, so a record left behind by a crash is not cached for long anywhere.
const TTL: u32 = 60;
/// Seconds of clock difference the server may accept (RFC 8945 recommends 300).
const FUDGE: u16 = 300;
/// The UDP answer size we offer (EDNS0): the DNS flag day's safe value.
pub const UDP_SIZE: u16 = 1232;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("`{0}` is not a DNS name")]
    Name(String),
    #[error("the DNS answer is malformed")]
    Malformed,
}

/// What was read from an answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    /// The TXT records of the answer section, each one's strings joined.
    pub txt: Vec<String>,
    /// The error field of the answer's TSIG record, if it had one.
    pub tsig_error: Option<u16>,
    /// The A and AAAA records of the answer section.
    pub addrs: Vec<std::net::IpAddr>,
    /// The CAA records of the answer section (RFC 8659 4.1).
    pub caa: Vec<Caa>,
}

/// One CAA record: `flags tag "value"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caa {
    /// The issuer critical flag (bit 0 of the flags, 128).
    pub critical: bool,
    /// `issue`, `issuewild`, `iodef`, ... as sent (compared case-insensitively).
    pub tag: String,
    pub value: String,
}

/// A TXT query for `name`; `recurse` asks a resolver to look it up (an authoritative server
/// answers from its zone either way).
pub fn query(id: u16, name: &str, recurse: bool) -> Result<Vec<u8>, WireError> {
    query_type(id, name, TYPE_TXT, recurse)
}

/// A query for the `kind` records (`TYPE_*`) at `name`.
pub fn query_type(id: u16, name: &str, kind: u16, recurse: bool) -> Result<Vec<u8>, WireError> {
    let flags = if recurse { 0x0100 } else { 0 };
    let mut out = header(id, flags, [1, 0, 0, 1]);
    put_name(&mut out, name)?;
    put16(&mut out, kind);
    put16(&mut out, CLASS_IN);
    // EDNS0 OPT: root name, our UDP size as the class
    out.push(0);
    put16(&mut out, TYPE_OPT);
    put16(&mut out, UDP_SIZE);
    put32(&mut out, 0);
    put16(&mut out, 0);
    Ok(out)
}

/// An RFC 2136 update of `zone`: add (or, with `add = false`, delete) the TXT record `value`
/// at `name`. Deleting one value leaves other values at the same name (a wildcard and its base
/// name share `_acme-challenge.<name>`).
pub fn update(
    id: u16,
    zone: &str,
    name: &str,
    value: &str,
    add: bool,
) -> Result<Vec<u8>, WireError> {
    // opcode UPDATE (5); counts: zone 1, prerequisites 0, updates 1, additional 0
    let mut out = header(id, 5 << 11, [1, 0, 1, 0]);
    put_name(&mut out, zone)?;
    put16(&mut out, TYPE_SOA);
    put16(&mut out, CLASS_IN);
    put_name(&mut out, name)?;
    put16(&mut out, TYPE_TXT);
    let (class, ttl) = if add {
        (CLASS_IN, TTL)
    } else {
        (CLASS_NONE, 0)
    };
    put16(&mut out, class);
    put32(&mut out, ttl);
    let rdata = txt_rdata(value);
    put16(&mut out, rdata.len() as u16);
    out.extend_from_slice(&rdata);
    Ok(out)
}

/// Appends a TSIG record signing `msg` with `key` at `now` (seconds since 1970), RFC 8945 4.3.
pub fn sign(msg: &mut Vec<u8>, key: &Tsig, now: u64) -> Result<(), WireError> {
    if msg.len() < 12 {
        return Err(WireError::Malformed);
    }
    let id = [msg[0], msg[1]];
    let alg = key.algorithm.name();
    // the "TSIG variables" the MAC covers after the message (4.3.3)
    let mut vars = Vec::new();
    put_name(&mut vars, &key.name)?;
    put16(&mut vars, CLASS_ANY);
    put32(&mut vars, 0);
    put_name(&mut vars, alg)?;
    put48(&mut vars, now);
    put16(&mut vars, FUDGE);
    put16(&mut vars, 0); // error
    put16(&mut vars, 0); // other len
    let hmac_key = ring::hmac::Key::new(hmac_algorithm(key.algorithm), &key.secret);
    let mut ctx = ring::hmac::Context::with_key(&hmac_key);
    ctx.update(msg);
    ctx.update(&vars);
    let mac = ctx.sign();
    let mac = mac.as_ref();
    let mut rdata = Vec::new();
    put_name(&mut rdata, alg)?;
    put48(&mut rdata, now);
    put16(&mut rdata, FUDGE);
    put16(&mut rdata, mac.len() as u16);
    rdata.extend_from_slice(mac);
    rdata.extend_from_slice(&id);
    put16(&mut rdata, 0);
    put16(&mut rdata, 0);
    put_name(msg, &key.name)?;
    put16(msg, TYPE_TSIG);
    put16(msg, CLASS_ANY);
    put32(msg, 0);
    put16(msg, rdata.len() as u16);
    msg.extend_from_slice(&rdata);
    let count = u16::from_be_bytes([msg[10], msg[11]]).wrapping_add(1);
    msg[10..12].copy_from_slice(&count.to_be_bytes());
    Ok(())
}

fn hmac_algorithm(alg: TsigAlgorithm) -> ring::hmac::Algorithm {
    match alg {
        TsigAlgorithm::HmacSha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        TsigAlgorithm::HmacSha256 => ring::hmac::HMAC_SHA256,
        TsigAlgorithm::HmacSha384 => ring::hmac::HMAC_SHA384,
        TsigAlgorithm::HmacSha512 => ring::hmac::HMAC_SHA512,
    }
}

/// Reads an answer: its id, rcode, TXT answers and TSIG error.
pub fn parse(msg: &[u8]) -> Result<Reply, WireError> {
    let word = |at: usize| -> Result<u16, WireError> {
        let b = msg.get(at..at + 2).ok_or(WireError::Malformed)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    };
    let (id, flags) = (word(0)?, word(2)?);
    let (questions, answers) = (word(4)?, word(6)?);
    let records = usize::from(answers) + usize::from(word(8)?) + usize::from(word(10)?);
    let mut reply = Reply {
        id,
        rcode: (flags & 0x000f) as u8,
        truncated: flags & 0x0200 != 0,
        ..Reply::default()
    };
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    for i in 0..records {
        at = skip_name(msg, at)?;
        let (kind, len) = (word(at)?, usize::from(word(at + 8)?));
        let start = at + 10;
        let rdata = msg.get(start..start + len).ok_or(WireError::Malformed)?;
        if i < usize::from(answers) {
            read_answer(&mut reply, kind, rdata)?;
        }
        if kind == TYPE_TSIG {
            reply.tsig_error = Some(tsig_error(rdata)?);
        }
        at = start + len;
    }
    Ok(reply)
}

/// The name of an rcode (RFC 2136 adds 6-10) or a TSIG error (RFC 8945).
pub fn rcode_name(code: u16) -> &'static str {
    match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADSIG",
        17 => "BADKEY",
        18 => "BADTIME",
        22 => "BADTRUNC",
        _ => "an unknown code",
    }
}

/// Keeps an answer record of a kind `Reply` holds.
fn read_answer(reply: &mut Reply, kind: u16, rdata: &[u8]) -> Result<(), WireError> {
    match (kind, rdata.len()) {
        (TYPE_TXT, _) => reply.txt.push(txt_strings(rdata)?),
        (TYPE_A, 4) => {
            let b: [u8; 4] = rdata.try_into().map_err(|_| WireError::Malformed)?;
            reply.addrs.push(std::net::Ipv4Addr::from(b).into());
        }
        (TYPE_AAAA, 16) => {
            let b: [u8; 16] = rdata.try_into().map_err(|_| WireError::Malformed)?;
            reply.addrs.push(std::net::Ipv6Addr::from(b).into());
        }
        (TYPE_CAA, _) => reply.caa.push(caa(rdata)?),
        (TYPE_A | TYPE_AAAA, _) => return Err(WireError::Malformed),
        _ => {}
    }
    Ok(())
}

/// CAA rdata: flags, tag length, tag, and the value to the end.
fn caa(rdata: &[u8]) -> Result<Caa, WireError> {
    let (&flags, rest) = rdata.split_first().ok_or(WireError::Malformed)?;
    let (&len, rest) = rest.split_first().ok_or(WireError::Malformed)?;
    let tag = rest.get(..usize::from(len)).ok_or(WireError::Malformed)?;
    let value = &rest[usize::from(len)..];
    Ok(Caa {
        critical: flags & 0x80 != 0,
        tag: String::from_utf8_lossy(tag).into_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
    })
}

fn tsig_error(rdata: &[u8]) -> Result<u16, WireError> {
    let at = skip_name(rdata, 0)? + 8;
    let mac = rdata.get(at..at + 2).ok_or(WireError::Malformed)?;
    let at = at + 2 + usize::from(u16::from_be_bytes([mac[0], mac[1]])) + 2;
    let e = rdata.get(at..at + 2).ok_or(WireError::Malformed)?;
    Ok(u16::from_be_bytes([e[0], e[1]]))
}

fn txt_strings(rdata: &[u8]) -> Result<String, WireError> {
    let mut text = String::new();
    let mut at = 0;
    while at < rdata.len() {
        let len = usize::from(rdata[at]);
        let s = rdata
            .get(at + 1..at + 1 + len)
            .ok_or(WireError::Malformed)?;
        text.push_str(&String::from_utf8_lossy(s));
        at += 1 + len;
    }
    Ok(text)
}

/// The offset after the name at `at` (labels, possibly ending in a compression pointer).
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, WireError> {
    loop {
        let len = *msg.get(at).ok_or(WireError::Malformed)?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

fn txt_rdata(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 1);
    for chunk in value.as_bytes().chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    if value.is_empty() {
        out.push(0);
    }
    out
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    put16(&mut out, id);
    put16(&mut out, flags);
    for c in counts {
        put16(&mut out, c);
    }
    out
}

/// A name in wire form, lower case (TSIG's canonical form), without compression.
fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let trimmed = name.trim_end_matches('.');
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 || !label.is_ascii() {
                return Err(WireError::Name(name.to_string()));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    Ok(())
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put48(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes()[2..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_adds_one_txt_record_in_the_zone() {
        let msg = update(
            0x1234,
            "example.test",
            "_acme-challenge.example.test.",
            "abc",
            true,
        )
        .unwrap();
        let mut want = vec![0x12, 0x34, 0x28, 0, 0, 1, 0, 0, 0, 1, 0, 0];
        want.extend_from_slice(b"\x07example\x04test\x00\x00\x06\x00\x01");
        want.extend_from_slice(b"\x0f_acme-challenge\x07example\x04test\x00");
        want.extend_from_slice(&[0, 16, 0, 1, 0, 0, 0, 60, 0, 4, 3, b'a', b'b', b'c']);
        assert_eq!(msg, want);
        let delete = update(1, "example.test", "x.example.test", "abc", false).unwrap();
        // class NONE, TTL 0
        let tail = &delete[delete.len() - 14..];
        assert_eq!(&tail[..8], &[0, 16, 0, 254, 0, 0, 0, 0]);
    }

    /// RFC 4231 test case 2's key and data give its HMAC-SHA-256 value, so the MAC is computed
    /// over exactly the message followed by the TSIG variables.
    #[test]
    fn tsig_signs_the_message_and_its_variables() {
        let key = Tsig {
            name: "gatehouse".into(),
            secret: b"key".to_vec(),
            algorithm: TsigAlgorithm::HmacSha256,
        };
        let mut msg = update(7, "example.test", "a.example.test", "v", true).unwrap();
        let unsigned = msg.clone();
        sign(&mut msg, &key, 1_700_000_000).unwrap();
        assert_eq!(&msg[10..12], &[0, 1], "one additional record");
        let mut vars = b"\x09gatehouse\x00\x00\xff\x00\x00\x00\x00".to_vec();
        vars.extend_from_slice(b"\x0bhmac-sha256\x00");
        vars.extend_from_slice(&1_700_000_000u64.to_be_bytes()[2..]);
        vars.extend_from_slice(&[1, 44, 0, 0, 0, 0]);
        let hkey = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key");
        let want = ring::hmac::sign(&hkey, &[&unsigned[..], &vars[..]].concat());
        // the record ends with the MAC, the original id, error and other length
        let mac_at = msg.len() - 6 - 32;
        assert_eq!(&msg[mac_at - 2..mac_at], &[0, 32], "MAC size");
        assert_eq!(&msg[mac_at..mac_at + 32], want.as_ref());
        assert_eq!(
            &msg[mac_at + 32..],
            &[0, 7, 0, 0, 0, 0],
            "original id, no error"
        );
        // the signed message reads back, its TSIG error field 0
        let reply = parse(&msg).unwrap();
        assert_eq!((reply.id, reply.tsig_error), (7, Some(0)));
    }

    #[test]
    fn an_answer_yields_its_txt_values_and_rcode() {
        let mut msg = vec![0, 9, 0x84, 0x00, 0, 1, 0, 2, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x01a\x04test\x00\x00\x10\x00\x01");
        for value in ["one", "two"] {
            // a compression pointer to the question's name
            msg.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 4, 3]);
            msg.extend_from_slice(value.as_bytes());
        }
        let reply = parse(&msg).unwrap();
        assert_eq!(reply.txt, vec!["one".to_string(), "two".to_string()]);
        assert_eq!((reply.id, reply.rcode, reply.truncated), (9, 0, false));
        assert_eq!(parse(&msg[..msg.len() - 2]), Err(WireError::Malformed));
        assert_eq!(rcode_name(9), "NOTAUTH");
    }

    #[test]
    fn an_answer_yields_its_addresses_and_caa_records() {
        let mut msg = vec![0, 5, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x01a\x04test\x00\x01\x01\x00\x01");
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
        msg.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        msg.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        let value = b"letsencrypt.org";
        msg.extend_from_slice(&[0xc0, 12, 1, 1, 0, 1, 0, 0, 0, 60, 0, 22, 128, 5]);
        msg.extend_from_slice(b"issue");
        msg.extend_from_slice(value);
        let reply = parse(&msg).unwrap();
        assert_eq!(
            reply.addrs,
            vec![
                std::net::IpAddr::from([127, 0, 0, 2]),
                std::net::Ipv6Addr::LOCALHOST.into()
            ]
        );
        let want = Caa {
            critical: true,
            tag: "issue".into(),
            value: "letsencrypt.org".into(),
        };
        assert_eq!(reply.caa, vec![want]);
        let q = query_type(5, "a.test", TYPE_CAA, true).unwrap();
        assert_eq!(&q[2..4], &[1, 0], "recursion desired");
        assert_eq!(&q[20..22], &[1, 1], "type 257");
    }

    #[test]
    fn names_must_be_dns_names() {
        assert!(query(1, "bad..name", false).is_err());
        assert!(query(1, &format!("{}.test", "a".repeat(64)), false).is_err());
    }
}
