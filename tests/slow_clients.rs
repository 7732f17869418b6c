//! Slow clients, end to end: `body_min_rate` cuts a trickle upload (1 byte every 2 s) with a
//! `408` while an upload from a slow mobile link (20 KB/s with pauses of a few seconds) goes
//! through whole; `send_min_rate` closes the connection of a client reading 64 B/s while one
//! reading 20 KB/s with pauses gets its whole response. The timeouts (`body_timeout`,
//! `timeouts.send`, 60 s) are left as they are: none of them could cut the slow ones in the time
//! these tests take, only the rates can.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{serve, with_timeout, Backend, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Answers an upload with the number of body bytes it read; `GET /bytes/N` with N bytes.
async fn backend() -> Backend {
    serve("slow-clients", |req: Request<Incoming>| async move {
        let size = req.uri().path().strip_prefix("/bytes/").map(str::parse);
        if let Some(size) = size {
            let body = Bytes::from(vec![b'x'; size.expect("size")]);
            return Response::new(Full::new(body));
        }
        let mut body = req.into_body();
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
        }
        Response::new(Full::new(Bytes::from(seen.to_string())))
    })
    .await
}

/// Both rates at 1 KB/s over a 5 s window (the grace, and the longest pause a client that kept
/// up may take), short enough for a test; everything else as it comes.
fn config(backend: &Backend) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
body_min_rate = {{ rate = "1KB/s", window = "5s" }}
send_min_rate = {{ rate = "1KB/s", window = "5s" }}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["{}"]
"#,
        backend.addr
    )
}

/// Reads until the proxy closes (EOF or reset) or `limit` passes: what came, and whether it closed.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// POSTs a 1,000-byte body one byte every 2 s: the answer, and how long it took from the head.
async fn trickle_upload(proxy: SocketAddr) -> (String, Duration) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let head = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let mut answer = Vec::new();
    let read = reader.read_to_end(&mut answer);
    let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
    trickle.abort();
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// POSTs 80 KB as a slow mobile link would: 20 KB/s (2 KB every 100 ms) for a second, then a
/// 3 s pause, four times (16 s, 5 KB/s on average).
async fn mobile_upload(proxy: SocketAddr) -> String {
    const TOTAL: usize = 80 << 10;
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {TOTAL}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..4 {
        for _ in 0..10 {
            stream.write_all(&[b'm'; 2048]).await.expect("body");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (answer, _) = read_to_close(&mut stream, Duration::from_secs(10)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_upload_is_cut_with_408_and_a_slow_mobile_upload_is_not() {
    with_timeout(60, async {
        let backend = backend().await;
        let proxy = TestProxy::start(&config(&backend)).await;
        let (trickle, mobile) = tokio::join!(trickle_upload(proxy.addr), mobile_upload(proxy.addr));
        let (answer, took) = trickle;
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "trickle: {answer:?} after {took:?}"
        );
        // the 5 s grace, then earned 2 ms per 2 s: cut one window after the body began
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(15),
            "{took:?}"
        );
        assert!(answer.contains("slower than 1024 bytes/s"), "{answer}");
        assert!(mobile.starts_with("HTTP/1.1 200"), "mobile: {mobile}");
        assert!(
            mobile.ends_with("81920"),
            "the whole body went upstream: {mobile}"
        );
        let log = proxy.logs().join("\n");
        assert!(log.contains("\"reason\":\"body_too_slow\""), "{log}");
    })
    .await;
}

/// `GET /bytes/{size}` on a connection whose receive buffer is small, so that the proxy's
/// writes wait on this client's reading rather than on kernel buffers.
async fn slow_reader(proxy: SocketAddr, size: usize) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(proxy).await.expect("connect");
    let head = format!("GET /bytes/{size} HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("request");
    stream
}

/// Reads `chunk` bytes every `gap` until the proxy closes or `stop` says so: the bytes read.
async fn read_slowly(
    stream: &mut TcpStream,
    chunk: usize,
    gap: Duration,
    mut stop: impl FnMut(usize) -> bool,
) -> usize {
    let mut buf = vec![0u8; chunk];
    let mut total = 0;
    while !stop(total) {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => {}
        }
        tokio::time::sleep(gap).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_64_bytes_a_second_is_closed_and_a_slow_mobile_reader_is_not() {
    with_timeout(90, async {
        let backend = backend().await;
        let proxy = TestProxy::start(&config(&backend)).await;
        // 20 KB/s (2 KB every 100 ms) for 1 s, then 3 s without reading, until 80 KB are in
        let mobile = async {
            let mut stream = slow_reader(proxy.addr, 80 << 10).await;
            let mut got = 0;
            while got < 80 << 10 {
                got += read_slowly(&mut stream, 2048, Duration::from_millis(100), |n| {
                    n >= 20 << 10
                })
                .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            got
        };
        let crawler = async {
            let mut stream = slow_reader(proxy.addr, 8 << 20).await;
            let started = Instant::now();
            let closed = || {
                let logs = proxy.logs();
                logs.iter()
                    .any(|l| l.contains("\"reason\":\"send_too_slow\""))
            };
            let mut cut = None;
            read_slowly(&mut stream, 64, Duration::from_secs(1), |_| {
                cut = cut.or_else(|| closed().then(|| started.elapsed()));
                cut.is_some() || started.elapsed() > Duration::from_secs(40)
            })
            .await;
            // the kernel still hands over what the proxy had written before closing; then EOF
            let (rest, eof) = read_to_close(&mut stream, Duration::from_secs(10)).await;
            (cut, rest.len(), eof)
        };
        let (got, (cut, rest, eof)) = tokio::join!(mobile, crawler);
        let cut = cut.expect("the 64 B/s reader was closed for send_too_slow");
        eprintln!("64 B/s reader closed after {cut:?}; {rest} bytes were still in the kernel");
        assert!(
            cut >= Duration::from_secs(4) && cut < Duration::from_secs(30),
            "{cut:?}"
        );
        assert!(eof, "connection closed after the buffered bytes");
        assert!(rest < 8 << 20, "cut before the whole response");
        assert!(
            got >= 80 << 10,
            "the mobile reader got its whole response: {got}"
        );
    })
    .await;
}
