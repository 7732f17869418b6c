//! A real DNS server for tests: UDP on 127.0.0.1:0, answering from a map of names to IPv4
//! addresses that the test changes while the proxy runs. A queries get the name's addresses,
//! AAAA queries a NOERROR with no records, unknown names NXDOMAIN. Packets are built by hand
//! (RFC 1035 4.1); a query it cannot read gets FORMERR.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

type Records = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

const TYPE_A: u16 = 1;
const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;

pub struct TestDns {
    pub addr: SocketAddr,
    records: Records,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let records = Records::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (map, count) = (records.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::Relaxed);
                let reply = answer(&buf[..len], &map.lock().unwrap());
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        TestDns {
            addr,
            records,
            queries,
            task,
        }
    }

    /// From now on `name` resolves to `addrs` (an empty list: NOERROR without records).
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr]) {
        let name = name.to_ascii_lowercase();
        self.records.lock().unwrap().insert(name, addrs.to_vec());
    }

    /// From now on `name` is NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.records
            .lock()
            .unwrap()
            .remove(&name.to_ascii_lowercase());
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listeners on 127.0.0.1, 127.0.0.2, ..., 127.0.0.`n` sharing one port, as the replicas of a
/// compose service do (Linux routes all of 127.0.0.0/8 to the loopback interface); the port and
/// the listeners in address order. A name the [`TestDns`] maps to those addresses stands for them.
pub async fn listeners_on_one_port(n: u8) -> (u16, Vec<TcpListener>) {
    'port: for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = first.local_addr().expect("local_addr").port();
        let mut listeners = vec![first];
        for i in 2..=n {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, i), port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'port, // taken on that address: try another port
            }
        }
        return (port, listeners);
    }
    panic!("no port free on all of 127.0.0.1-{n}");
}

/// The reply to one query; `None` for something too short to carry an id.
fn answer(query: &[u8], records: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let recursion_desired = query.get(2).map_or(0, |b| u16::from(b & 0x01) << 8);
    let header = |rcode: u16, questions: u16, answers: u16| {
        // QR, the query's RD, RA
        let flags = 0x8000 | recursion_desired | 0x0080 | rcode;
        let mut out = id.to_vec();
        for word in [flags, questions, answers, 0, 0] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out
    };
    let Some((name, question, qtype)) = question(query) else {
        return Some(header(RCODE_FORMERR, 0, 0));
    };
    let Some(addrs) = records.get(&name) else {
        let mut out = header(RCODE_NXDOMAIN, 1, 0);
        out.extend_from_slice(question);
        return Some(out);
    };
    let addrs: &[Ipv4Addr] = if qtype == TYPE_A { addrs } else { &[] };
    let mut out = header(0, 1, addrs.len() as u16);
    out.extend_from_slice(question);
    for ip in addrs {
        // owner: a pointer to the question's name at offset 12; type A, class IN, TTL 0, 4 bytes
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// The single question: its name (lower case, no trailing dot), its bytes, its type.
fn question(query: &[u8]) -> Option<(String, &[u8], u16)> {
    let qdcount = u16::from_be_bytes([*query.get(4)?, *query.get(5)?]);
    if qdcount != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // queries are not compressed
        }
        let label = query.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    let end = at + 5; // the root label, type, class
    let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
    Some((labels.join("."), query.get(12..end)?, qtype))
}
