//! The client against small DNS servers on 127.0.0.1 that answer as each test needs.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Udp,
    Tcp,
}

type Reply = dyn Fn(&[u8], Via) -> Option<Vec<u8>> + Send + Sync;

/// A DNS server on UDP and TCP 127.0.0.1:PORT answering each query with `reply` (`None`: silence),
/// and how many queries it got.
async fn fake(reply: Arc<Reply>) -> (SocketAddr, Arc<AtomicUsize>) {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let (count, answer) = (asked.clone(), reply.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(out) = answer(&buf[..len], Via::Udp) {
                let _ = udp.send_to(&out, from).await;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let len = usize::from(stream.read_u16().await.unwrap());
            let mut query = vec![0u8; len];
            stream.read_exact(&mut query).await.unwrap();
            if let Some(out) = reply(&query, Via::Tcp) {
                let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                framed.extend(out);
                stream.write_all(&framed).await.unwrap();
            }
        }
    });
    (addr, asked)
}

/// The reply to `query` with these response-code/TC `flags` and those of `ips` its type asks for.
fn answer(query: &[u8], flags: u16, ips: &[IpAddr]) -> Vec<u8> {
    let qtype = u16::from_be_bytes([query[query.len() - 4], query[query.len() - 3]]);
    let ips: Vec<&IpAddr> = ips
        .iter()
        .filter(|ip| ip.is_ipv4() == (qtype == 1))
        .collect();
    let mut out = query.to_vec();
    out[2..4].copy_from_slice(&(0x8180 | flags).to_be_bytes());
    out[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
    for ip in ips {
        let data = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let rtype: u16 = if ip.is_ipv4() { 1 } else { 28 };
        out.extend([0xc0, 12]);
        out.extend(rtype.to_be_bytes());
        out.extend([0, 1, 0, 0, 0, 60]);
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
    }
    out
}

fn api() -> ServerAddr {
    ServerAddr {
        host: "api.test".into(),
        port: 8000,
    }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn a_and_aaaa_records_of_one_name() {
    let ips: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()];
    let (dns, _) = fake(Arc::new(move |q: &[u8], _: Via| Some(answer(q, 0, &ips)))).await;
    let resolver = Resolver::Dns(vec![dns]);
    let found = lookup(&resolver, &api(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(found, addrs(&["127.0.0.2:8000", "[::1]:8000"]));
}

#[tokio::test]
async fn truncated_answers_are_asked_again_over_tcp() {
    let many: Vec<IpAddr> = (1..=40).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    let reply = move |q: &[u8], via: Via| {
        Some(match via {
            Via::Udp => answer(q, 0x0200, &[]),
            Via::Tcp => answer(q, 0, &many),
        })
    };
    let (dns, _) = fake(Arc::new(reply)).await;
    let resolver = Resolver::Dns(vec![dns]);
    let found = lookup(&resolver, &api(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(found.len(), 40);
    assert_eq!(found[39], "10.0.0.40:8000".parse().unwrap());
}

#[tokio::test]
async fn silent_refusing_and_failing_servers_hand_over_to_the_next() {
    let (silent, _) = fake(Arc::new(|_: &[u8], _: Via| None)).await;
    let closed = {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap()
    };
    let (servfail, failed) = fake(Arc::new(|q: &[u8], _: Via| Some(answer(q, 2, &[])))).await;
    let good = [IpAddr::from([127, 0, 0, 3])];
    let (dns, _) = fake(Arc::new(move |q: &[u8], _: Via| Some(answer(q, 0, &good)))).await;
    let resolver = Resolver::Dns(vec![silent, closed, servfail, dns]);
    let started = Instant::now();
    let found = lookup(&resolver, &api(), Duration::from_millis(1200)).await;
    assert_eq!(found.unwrap(), addrs(&["127.0.0.3:8000"]));
    assert!(failed.load(Ordering::Relaxed) >= 1);
    // the silent one used its share (1.2 s / 4), the others answered at once
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );

    let resolver = Resolver::Dns(vec![silent, servfail]);
    let err = lookup(&resolver, &api(), Duration::from_millis(400))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("DNS server {servfail}: the DNS server answered SERVFAIL")
    );
}

#[tokio::test]
async fn nxdomain_is_an_answer_not_a_failure() {
    let (nx, _) = fake(Arc::new(|q: &[u8], _: Via| Some(answer(q, 3, &[])))).await;
    let good = [IpAddr::from([127, 0, 0, 3])];
    let (dns, asked) = fake(Arc::new(move |q: &[u8], _: Via| Some(answer(q, 0, &good)))).await;
    let resolver = Resolver::Dns(vec![nx, dns]);
    let err = lookup(&resolver, &api(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, LookupError::NoSuchName), "{err}");
    assert_eq!(asked.load(Ordering::Relaxed), 0);

    let (empty, _) = fake(Arc::new(|q: &[u8], _: Via| Some(answer(q, 0, &[])))).await;
    let resolver = Resolver::Dns(vec![empty]);
    let err = lookup(&resolver, &api(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, LookupError::NoAddresses), "{err}");
}

#[tokio::test]
async fn ip_literals_ask_nobody() {
    let resolver = Resolver::Dns(vec!["127.0.0.1:9".parse().unwrap()]);
    let literal = ServerAddr {
        host: "::1".into(),
        port: 80,
    };
    let found = lookup(&resolver, &literal, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(found, addrs(&["[::1]:80"]));
}
