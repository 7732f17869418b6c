use super::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const HTTP: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn proxy(source: &str, destination: &str) -> Header {
    Header::Proxy {
        source: addr(source),
        destination: addr(destination),
    }
}

/// A v2 header: signature, version/command byte, family byte, length, then `payload`.
fn v2(ver_cmd: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, family]);
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// 203.0.113.9:51234 -> 192.0.2.1:443 as a v2 IPv4 address block.
fn v4_block() -> Vec<u8> {
    let mut b = vec![203, 0, 113, 9, 192, 0, 2, 1];
    b.extend_from_slice(&51234u16.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

/// Parses a complete header followed by HTTP bytes: the header must end where HTTP begins.
fn parse_complete(header: &[u8]) -> Header {
    let mut buf = header.to_vec();
    buf.extend_from_slice(HTTP);
    let (parsed, len) = parse(&buf).unwrap().expect("complete header");
    assert_eq!(len, header.len(), "header length");
    assert_eq!(
        &buf[len..],
        HTTP,
        "the bytes after the header are left alone"
    );
    parsed
}

/// Every strict prefix of a valid header is "need more", never an error or a header.
fn assert_prefixes_incomplete(header: &[u8]) {
    for end in 0..header.len() {
        assert!(
            matches!(parse(&header[..end]), Ok(None)),
            "prefix of {end} bytes: {:?}",
            parse(&header[..end])
        );
    }
}

#[test]
fn v1_tcp4() {
    let header = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n";
    assert_eq!(
        parse_complete(header),
        proxy("203.0.113.9:51234", "192.0.2.1:443")
    );
    assert_prefixes_incomplete(header);
}

#[test]
fn v1_tcp6() {
    let header = b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 80\r\n";
    assert_eq!(
        parse_complete(header),
        proxy("[2001:db8::9]:4000", "[2001:db8::1]:80")
    );
}

#[test]
fn v1_unknown_keeps_the_socket_peer() {
    assert_eq!(parse_complete(b"PROXY UNKNOWN\r\n"), Header::Local);
    let with_rest = b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n";
    assert_eq!(parse_complete(with_rest), Header::Local);
}

#[test]
fn v1_longest_line_is_accepted_and_one_more_byte_is_not() {
    let line = |len: usize| {
        let mut l = b"PROXY UNKNOWN ".to_vec();
        l.resize(len - 2, b'f');
        l.extend_from_slice(b"\r\n");
        l
    };
    assert_eq!(parse_complete(&line(107)), Header::Local);
    assert!(matches!(parse(&line(108)), Err(E::V1TooLong)));
    let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    assert!(matches!(parse(&endless), Err(E::V1TooLong)));
}

#[test]
fn v1_malformed_lines_are_errors() {
    for bad in [
        "PROXY TCP4 203.0.113.9 192.0.2.1 51234\r\n",
        "PROXY TCP4 203.0.113.9 192.0.2.1 51234 443 7\r\n",
        "PROXY TCP4 2001:db8::9 192.0.2.1 51234 443\r\n",
        "PROXY TCP6 203.0.113.9 192.0.2.1 51234 443\r\n",
        "PROXY TCP4 203.0.113.9 192.0.2.1 +5123 443\r\n",
        "PROXY TCP4 203.0.113.9 192.0.2.1 65536 443\r\n",
        "PROXY TCP4  203.0.113.9 192.0.2.1 51234 443\r\n",
        "PROXY UDP4 203.0.113.9 192.0.2.1 51234 443\r\n",
        "PROXY \r\n",
        "PROXY TCP4 203.0.113.9\n",
        "PROXY TCP4 203.0.113.9\r 192.0.2.1",
    ] {
        let result = parse(bad.as_bytes());
        assert!(
            matches!(result, Err(E::V1Malformed(_))),
            "{bad:?}: {result:?}"
        );
    }
}

#[test]
fn garbage_is_not_a_header() {
    let cases: [&[u8]; 6] = [
        HTTP,
        b"POST / HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n",
        &[0x16, 0x03, 0x01, 0x02, 0x00],
        b"\r\n\r\n\0\r\nQUIZ\n",
        b"\r\nGET",
    ];
    for bad in cases {
        let result = parse(bad);
        assert!(matches!(result, Err(E::NotProxy)), "{bad:?}: {result:?}");
    }
}

#[test]
fn v2_ipv4() {
    let header = v2(0x21, 0x11, &v4_block());
    assert_eq!(
        parse_complete(&header),
        proxy("203.0.113.9:51234", "192.0.2.1:443")
    );
    assert_prefixes_incomplete(&header);
}

#[test]
fn v2_ipv6() {
    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&4000u16.to_be_bytes());
    block.extend_from_slice(&80u16.to_be_bytes());
    assert_eq!(
        parse_complete(&v2(0x21, 0x21, &block)),
        proxy("[2001:db8::9]:4000", "[2001:db8::1]:80")
    );
}

#[test]
fn v2_local_keeps_the_socket_peer_and_skips_its_addresses() {
    assert_eq!(parse_complete(&v2(0x20, 0x00, &[])), Header::Local);
    assert_eq!(parse_complete(&v2(0x20, 0x11, &v4_block())), Header::Local);
}

#[test]
fn v2_unix_and_unspec_keep_the_socket_peer() {
    assert_eq!(parse_complete(&v2(0x21, 0x31, &[0; 216])), Header::Local);
    assert_eq!(parse_complete(&v2(0x21, 0x00, &[])), Header::Local);
}

#[test]
fn v2_tlvs_are_skipped() {
    let mut payload = v4_block();
    payload.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN
    payload.extend_from_slice(&[0xEA, 0x00, 0x05, 1, b'v', b'p', b'c', b'e']); // AWS VPC endpoint
    payload.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]); // NOOP padding
    let header = v2(0x21, 0x11, &payload);
    assert_eq!(
        parse_complete(&header),
        proxy("203.0.113.9:51234", "192.0.2.1:443")
    );
    assert_prefixes_incomplete(&header);
}

#[test]
fn v2_truncated_address_block_is_an_error() {
    let result = parse(&v2(0x21, 0x11, &v4_block()[..8]));
    assert!(
        matches!(result, Err(E::V2Short { len: 8, .. })),
        "{result:?}"
    );
    let result = parse(&v2(0x21, 0x21, &v4_block()));
    assert!(
        matches!(result, Err(E::V2Short { len: 12, .. })),
        "{result:?}"
    );
}

#[test]
fn v2_oversized_is_refused_from_the_fixed_part_alone() {
    let fixed = |len: u16| {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        h.extend_from_slice(&len.to_be_bytes());
        h
    };
    assert!(matches!(parse(&fixed(4097)), Err(E::V2TooLong(4097))));
    assert!(matches!(parse(&fixed(u16::MAX)), Err(E::V2TooLong(_))));
    assert!(matches!(parse(&fixed(4096)), Ok(None)));
}

#[test]
fn v2_bad_version_command_or_family() {
    let result = parse(&v2(0x11, 0x11, &v4_block()));
    assert!(matches!(result, Err(E::V2Version(1))), "{result:?}");
    let result = parse(&v2(0x22, 0x11, &v4_block()));
    assert!(matches!(result, Err(E::V2Command(2))), "{result:?}");
    let result = parse(&v2(0x21, 0x41, &v4_block()));
    assert!(matches!(result, Err(E::V2Family(0x41))), "{result:?}");
    let result = parse(&v2(0x21, 0x13, &v4_block()));
    assert!(matches!(result, Err(E::V2Family(0x13))), "{result:?}");
}

/// A connected pair on loopback: (what the proxy accepted, the client side).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

/// Writes `pieces` with a pause between them, so the reader sees the header arrive in parts.
async fn send(client: &mut TcpStream, pieces: &[&[u8]]) {
    for piece in pieces {
        client.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the header off the socket while `pieces` are being sent, then checks the HTTP bytes
/// behind it are all still there.
async fn read_then_rest(pieces: &[&[u8]]) -> Header {
    let (mut server, mut client) = pair().await;
    let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
    let sender = tokio::spawn(async move {
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        send(&mut client, &pieces).await;
        client.shutdown().await.unwrap();
    });
    let header = tokio::time::timeout(Duration::from_secs(5), read_header(&mut server))
        .await
        .unwrap()
        .unwrap();
    sender.await.unwrap();
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, HTTP, "bytes after the header must stay unread");
    header
}

#[tokio::test]
async fn read_header_leaves_http_bytes_in_the_socket() {
    let v1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n";
    let expected = proxy("203.0.113.9:51234", "192.0.2.1:443");
    assert_eq!(read_then_rest(&[v1, HTTP]).await, expected);
    assert_eq!(
        read_then_rest(&[&[v1.as_slice(), HTTP].concat()]).await,
        expected
    );
    let v2 = v2(0x21, 0x11, &v4_block());
    assert_eq!(
        read_then_rest(&[&[v2.as_slice(), HTTP].concat()]).await,
        expected
    );
}

#[tokio::test]
async fn read_header_waits_for_a_header_sent_in_pieces() {
    let v1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 443\r\n";
    let expected = proxy("203.0.113.9:51234", "192.0.2.1:443");
    // split inside the signature word and between CR and LF
    let (a, rest) = v1.split_at(3);
    let (b, c) = rest.split_at(rest.len() - 1);
    assert_eq!(read_then_rest(&[a, b, &[c, HTTP].concat()]).await, expected);
    let mut payload = v4_block();
    payload.extend_from_slice(&[0x04, 0x00, 0x40]);
    payload.extend_from_slice(&[0; 0x40]);
    let v2 = v2(0x21, 0x11, &payload);
    let (a, rest) = v2.split_at(7);
    let (b, c) = rest.split_at(20);
    assert_eq!(read_then_rest(&[a, b, &[c, HTTP].concat()]).await, expected);
}

#[tokio::test]
async fn read_header_fails_on_close_or_garbage() {
    let (mut server, mut client) = pair().await;
    send(&mut client, &[b"PROXY TCP4 203.0.113.9"]).await;
    client.shutdown().await.unwrap();
    assert!(matches!(read_header(&mut server).await, Err(E::Closed)));
    let (mut server, mut client) = pair().await;
    send(&mut client, &[HTTP]).await;
    assert!(matches!(read_header(&mut server).await, Err(E::NotProxy)));
}
