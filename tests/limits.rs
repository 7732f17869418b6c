//! Protection at the edge, end to end: per-address rate limits (clients on 127.0.0.2, .3, ...)
//! and per-header ones, trusted and spoofed X-Forwarded-For, allow/deny, body-size limits, head
//! limits, connection limits and slow clients, against the real binary and a backend that
//! records what reaches it.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// FNV-1a over `bytes`, continuing from `hash` (start with `FNV_START`).
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Counts the requests and body bytes that reach it; answers 200 with the byte count, and the
/// body's FNV-1a digest in `x-digest`.
struct Recorder {
    backend: Backend,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

async fn recorder() -> Recorder {
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (r, b) = (requests.clone(), bytes.clone());
    let backend = serve("recorder", move |req: Request<Incoming>| {
        let (r, b) = (r.clone(), b.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            let mut body = req.into_body();
            let mut seen = 0u64;
            let mut digest = FNV_START;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    digest = fnv(digest, data);
                    b.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            let mut resp = text_response(200, seen.to_string());
            let digest = http::HeaderValue::from(digest);
            resp.headers_mut().insert("x-digest", digest);
            resp
        }
    })
    .await;
    Recorder {
        backend,
        requests,
        bytes,
    }
}

fn config(backend: &Backend, server: &str, routes: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
{server}

[[site]]
{routes}

  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["{}"]
"#,
        backend.addr
    )
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address works on Linux loopback).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
}

async fn status(client: &reqwest::Client, url: &str) -> (u16, Option<String>) {
    let resp = client.get(url).send().await.expect("request");
    let retry = header(&resp, "retry-after");
    (resp.status().as_u16(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_gets_429_with_retry_after_and_other_addresses_are_unaffected() {
    with_timeout(60, async {
        let rec = recorder().await;
        // 5 per 10 s, burst 5: one request back every 2 s
        let routes = r#"rate_limit = { requests = 5, per = "10s" }"#;
        let proxy = TestProxy::start(&config(&rec.backend, "", routes)).await;
        let (a, b) = (client_from("127.0.0.2"), client_from("127.0.0.3"));
        let url = proxy.url("/x");
        for i in 0..5 {
            assert_eq!(status(&a, &url).await.0, 200, "request {i} of the burst");
        }
        let resp = a.get(&url).send().await.expect("request");
        assert_eq!(resp.status(), 429);
        let retry: u64 = header(&resp, "retry-after")
            .and_then(|v| v.parse().ok())
            .expect("numeric Retry-After");
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        let body = resp.text().await.expect("body");
        assert!(body.starts_with("429 Too Many Requests"), "{body}");
        assert_eq!(
            rec.requests.load(Ordering::SeqCst),
            5,
            "the 6th never reached the backend"
        );
        // another address has a budget of its own
        assert_eq!(status(&b, &url).await.0, 200);

        // refill: the next request is allowed one emission interval (2 s) after the burst,
        // seen by polling rather than by sleeping an assumed time
        let refused_at = Instant::now();
        let mut polls = 0;
        loop {
            polls += 1;
            if status(&a, &url).await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited = refused_at.elapsed();
        eprintln!("refilled after {waited:?} ({polls} polls)");
        assert!(
            waited > Duration::from_millis(1000) && waited < Duration::from_millis(2600),
            "one token per 2 s, got one after {waited:?}"
        );
        // and only one: the polls in between were refused without spending anything
        assert_eq!(status(&a, &url).await.0, 429);
        let log = proxy.logs().join("\n");
        assert!(
            log.contains("\"reason\":\"rate_limit\""),
            "refusal logged: {log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_have_separate_budgets() {
    with_timeout(30, async {
        let rec = recorder().await;
        let routes = r#"rate_limit = [
  { requests = 50, per = "1m", methods = ["GET", "HEAD"] },
  { requests = 2, per = "1m", methods = ["POST", "PUT", "PATCH", "DELETE"] },
]"#;
        let proxy = TestProxy::start(&config(&rec.backend, "", routes)).await;
        let a = client_from("127.0.0.4");
        let url = proxy.url("/items");
        for _ in 0..2 {
            let resp = a.post(&url).body("x").send().await.expect("post");
            assert_eq!(resp.status(), 200);
        }
        let resp = a.delete(&url).send().await.expect("delete");
        assert_eq!(resp.status(), 429, "third write");
        for _ in 0..10 {
            assert_eq!(
                status(&a, &url).await.0,
                200,
                "reads are not held back by writes"
            );
        }
    })
    .await;
}

/// `GET url` from `client` with `X-Tenant: tenant` (no header for `None`): the status.
async fn as_tenant(client: &reqwest::Client, url: &str, tenant: Option<&str>) -> u16 {
    let mut req = client.get(url);
    if let Some(tenant) = tenant {
        req = req.header("x-tenant", tenant);
    }
    req.send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keyed_limit_gives_each_tenant_a_budget_and_counts_the_rest_by_address() {
    with_timeout(30, async {
        let rec = recorder().await;
        let routes = r#"rate_limit = { requests = 3, per = "1m", key = "header:X-Tenant" }"#;
        let proxy = TestProxy::start(&config(&rec.backend, "", routes)).await;
        let url = proxy.url("/");
        let (a, b) = (client_from("127.0.0.6"), client_from("127.0.0.7"));
        for i in 0..3 {
            assert_eq!(as_tenant(&a, &url, Some("acme")).await, 200, "acme #{i}");
        }
        assert_eq!(as_tenant(&a, &url, Some("acme")).await, 429, "acme over");
        // the same address, another tenant: a budget of its own
        assert_eq!(as_tenant(&a, &url, Some("globex")).await, 200, "globex");
        // the tenant's budget follows it to another address
        assert_eq!(as_tenant(&b, &url, Some("acme")).await, 429, "acme from b");
        // no header, or an empty one: counted by address, so leaving it out escapes nothing
        for i in 0..3 {
            assert_eq!(as_tenant(&a, &url, None).await, 200, "a without #{i}");
        }
        assert_eq!(as_tenant(&a, &url, None).await, 429, "a without, over");
        assert_eq!(as_tenant(&a, &url, Some("")).await, 429, "a empty, over");
        assert_eq!(as_tenant(&b, &url, None).await, 200, "b has its own");
        assert_eq!(rec.requests.load(Ordering::SeqCst), 3 + 1 + 3 + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_xff_keys_by_the_real_client_and_spoofed_xff_is_ignored() {
    with_timeout(30, async {
        let rec = recorder().await;
        let server = r#"trusted_proxies = ["127.0.0.1"]"#;
        let routes = r#"rate_limit = { requests = 3, per = "1m" }"#;
        let proxy = TestProxy::start(&config(&rec.backend, server, routes)).await;
        let url = proxy.url("/");
        let get_as = |client: reqwest::Client, xff: &'static str| {
            let url = url.clone();
            async move {
                let resp = client
                    .get(&url)
                    .header("x-forwarded-for", xff)
                    .send()
                    .await
                    .expect("request");
                resp.status().as_u16()
            }
        };
        // through the trusted proxy (127.0.0.1): each real client has its own budget
        let lb = client_from("127.0.0.1");
        for _ in 0..3 {
            assert_eq!(get_as(lb.clone(), "203.0.113.5").await, 200);
        }
        assert_eq!(get_as(lb.clone(), "203.0.113.5").await, 429);
        assert_eq!(get_as(lb.clone(), "203.0.113.6, 127.0.0.1").await, 200);
        // an untrusted peer cannot pick its key by writing X-Forwarded-For
        let spoofer = client_from("127.0.0.5");
        let spoofs = [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        ];
        let mut codes = Vec::new();
        for xff in spoofs {
            codes.push(get_as(spoofer.clone(), xff).await);
        }
        assert_eq!(
            codes,
            [200, 200, 200, 429],
            "keyed by 127.0.0.5 whatever XFF says"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_answer_403_before_proxying() {
    with_timeout(30, async {
        let rec = recorder().await;
        let routes = r#"
  [[site.route]]
  path = "/admin/"
  upstream = "app"
  allow = ["127.0.0.0/24"]
  deny = ["127.0.0.9"]
"#;
        let proxy = TestProxy::start(&config(&rec.backend, "", routes)).await;
        let url = proxy.url("/admin/panel");
        assert_eq!(status(&client_from("127.0.0.2"), &url).await.0, 200);
        let resp = client_from("127.0.1.2")
            .get(&url)
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 403);
        assert!(resp
            .text()
            .await
            .expect("body")
            .starts_with("403 Forbidden"));
        assert_eq!(status(&client_from("127.0.0.9"), &url).await.0, 403);
        assert_eq!(
            status(&client_from("127.0.1.2"), &proxy.url("/open"))
                .await
                .0,
            200
        );
        assert_eq!(
            rec.requests.load(Ordering::SeqCst),
            2,
            "refused requests never proxied"
        );
    })
    .await;
}

/// Writes `head`, then reads whatever comes back until the proxy closes (or `max` passes).
async fn exchange(addr: SocketAddr, head: &[u8], max: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("write");
    read_until_close(&mut stream, max).await
}

/// What the peer sent until it closed; `false` if it was still open after `max`.
async fn read_until_close(stream: &mut TcpStream, max: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_over_the_limit_gets_413_and_the_backend_sees_nothing() {
    with_timeout(30, async {
        let rec = recorder().await;
        let proxy = TestProxy::start(&config(&rec.backend, r#"max_body = "64KB""#, "")).await;
        // Expect: 100-continue gets 413 instead of 100, and no body byte is asked for
        let head =
            "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\nExpect: 100-continue\r\n\r\n";
        let (answer, closed) = exchange(proxy.addr, head.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(closed, "connection closed after the 413");

        // a client that sends the body right away still reads its 413 (lingering close)
        let body = vec![b'x'; 16 << 20];
        let resp = client()
            .post(proxy.url("/up"))
            .body(body)
            .send()
            .await
            .expect("the 413 arrives, not a reset");
        assert_eq!(resp.status(), 413);
        assert_eq!(rec.requests.load(Ordering::SeqCst), 0);
        assert_eq!(rec.bytes.load(Ordering::SeqCst), 0);
    })
    .await;
}

fn chunked(total: usize, piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(piece);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.resize(out.len() + n, b'y');
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_over_the_limit_is_cut_and_just_under_passes_byte_exact() {
    with_timeout(30, async {
        let rec = recorder().await;
        let limit = 64 * 1024;
        let proxy = TestProxy::start(&config(&rec.backend, r#"max_body = "64KB""#, "")).await;
        let head = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut request = head.as_bytes().to_vec();
        request.extend(chunked(limit + 1, 4096));
        let (answer, closed) = exchange(proxy.addr, &request, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(closed);
        let got = rec.bytes.load(Ordering::SeqCst);
        assert!(
            got <= limit as u64,
            "backend got {got} bytes: never the whole body"
        );

        // exactly the limit, chunked and with a length: passes, every byte
        rec.bytes.store(0, Ordering::SeqCst);
        let mut request = head.as_bytes().to_vec();
        request.extend(chunked(limit, 1000));
        let answer = raw_request(proxy.addr, std::str::from_utf8(&request).expect("ascii")).await;
        assert_eq!(
            (answer.status, answer.body_text()),
            (200, limit.to_string())
        );
        let resp = client()
            .post(proxy.url("/up"))
            .body(vec![7u8; limit])
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), limit.to_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_body_limit_overrides_the_server_default() {
    with_timeout(30, async {
        let rec = recorder().await;
        let routes = r#"
  [[site.route]]
  path = "/media/"
  upstream = "app"
  max_body = "off"
"#;
        let proxy = TestProxy::start(&config(&rec.backend, r#"max_body = "1KB""#, routes)).await;
        let big = vec![1u8; 3 << 20];
        let resp = client()
            .post(proxy.url("/media/x"))
            .body(big.clone())
            .send()
            .await;
        assert_eq!(resp.expect("post").status(), 200);
        let resp = client().post(proxy.url("/api")).body(big).send().await;
        assert_eq!(resp.expect("post").status(), 413);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_414() {
    with_timeout(30, async {
        let rec = recorder().await;
        let server = r#"max_header_size = "4KB"
max_headers = 20
max_uri = "1KB""#;
        let proxy = TestProxy::start(&config(&rec.backend, server, "")).await;
        let big = "v".repeat(5000);
        let resp = raw_request(
            proxy.addr,
            &format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 431);
        let many: String = (0..25).map(|i| format!("X-H{i}: 1\r\n")).collect();
        let resp = raw_request(
            proxy.addr,
            &format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
        )
        .await;
        assert_eq!(resp.status, 431);
        let long = "a".repeat(1100);
        let resp = raw_request(
            proxy.addr,
            &format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 414);
        // far over hyper's own buffer: still a clean 431, not a reset
        let huge = "w".repeat(200_000);
        let resp = raw_request(
            proxy.addr,
            &format!("GET / HTTP/1.1\r\nHost: a\r\nX-Huge: {huge}\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 431);
        let ok = raw_request(
            proxy.addr,
            "GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(ok.status, 200);
        assert_eq!(rec.requests.load(Ordering::SeqCst), 1);
    })
    .await;
}

async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip.parse().expect("ip"), 0))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// One keep-alive request on an open connection; the status, or `None` if the proxy closed it.
async fn request_on(stream: &mut TcpStream) -> Option<u16> {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(req).await.ok()?;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_limit_are_closed_and_others_unaffected() {
    with_timeout(30, async {
        let rec = recorder().await;
        let proxy = TestProxy::start(&config(&rec.backend, "max_connections_per_ip = 2", "")).await;
        let mut first = connect_from("127.0.0.6", proxy.addr).await;
        let mut second = connect_from("127.0.0.6", proxy.addr).await;
        assert_eq!(request_on(&mut first).await, Some(200));
        assert_eq!(request_on(&mut second).await, Some(200));
        let mut third = connect_from("127.0.0.6", proxy.addr).await;
        assert_eq!(
            request_on(&mut third).await,
            None,
            "third connection closed"
        );
        let mut other = connect_from("127.0.0.7", proxy.addr).await;
        assert_eq!(request_on(&mut other).await, Some(200), "another address");
        // the existing ones are untouched, and a freed slot can be taken again
        assert_eq!(request_on(&mut first).await, Some(200));
        drop(second);
        let mut again = None;
        for _ in 0..50 {
            let mut fresh = connect_from("127.0.0.6", proxy.addr).await;
            again = request_on(&mut fresh).await;
            if again.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(again, Some(200), "slot given back when a connection ends");
        let log = proxy.logs().join("\n");
        assert!(log.contains("\"reason\":\"conn_limit\""), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_while_a_normal_client_is_served() {
    with_timeout(30, async {
        let rec = recorder().await;
        let routes = r#"body_timeout = "1s""#;
        let proxy = TestProxy::start(&config(&rec.backend, "", routes)).await;
        let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789";
        slow.write_all(head.as_bytes()).await.expect("write");
        let started = Instant::now();
        // meanwhile, a normal client
        let resp = client().get(proxy.url("/fine")).send().await.expect("get");
        assert_eq!(resp.status(), 200);
        let (answer, closed) = read_until_close(&mut slow, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(closed);
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    with_timeout(30, async {
        let big = Bytes::from(vec![b'z'; 64 << 20]);
        let backend = serve("big", move |_req| {
            let big = big.clone();
            async move { hyper::Response::new(Full::new(big)) }
        })
        .await;
        let server = "[server.timeouts]\nsend = \"1s\"";
        let proxy = TestProxy::start(&config(&backend, server, "")).await;
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        // read nothing for a while: the socket buffers fill and the proxy's writes stall
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (got, closed) = read_until_close(&mut stream, Duration::from_secs(10)).await;
        assert!(closed, "proxy closed the connection");
        assert!(
            got.len() < 64 << 20,
            "cut before the whole response ({} bytes)",
            got.len()
        );
    })
    .await;
}

/// Sends `requests` pipelined on one connection, `BATCH` at a time; counts the 200s and 429s.
async fn pipelined(addr: SocketAddr, requests: Vec<String>) -> (u64, u64) {
    const BATCH: usize = 200;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let (mut ok, mut refused) = (0, 0);
    let mut buf = vec![0u8; 64 << 10];
    let mut carry = Vec::new();
    for batch in requests.chunks(BATCH) {
        stream
            .write_all(batch.concat().as_bytes())
            .await
            .expect("write");
        let mut answered = 0;
        while answered < batch.len() {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {answered} of a batch");
            carry.extend_from_slice(&buf[..n]);
            // status lines are whole once the next line has begun; keep a tail that may not be
            let text = String::from_utf8_lossy(&carry).into_owned();
            let whole = text
                .rfind("HTTP/1.1 ")
                .filter(|at| text.len() - at >= 12)
                .map_or(0, |at| at + 12);
            let seen = &text[..whole];
            let (o, r) = (
                seen.matches("HTTP/1.1 200").count(),
                seen.matches("HTTP/1.1 429").count(),
            );
            ok += o as u64;
            refused += r as u64;
            answered += o + r;
            carry.drain(..whole);
        }
    }
    (ok, refused)
}

/// `GET /k` through the trusted proxy (127.0.0.1) for `client`, with `X-Tenant: tenant`.
fn keyed(client: &str, tenant: &str) -> String {
    format!("GET /k HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {client}\r\nX-Tenant: {tenant}\r\n\r\n")
}

/// Runs `requests` over `conns` pipelined connections at once: the 200s and 429s.
async fn flood(addr: SocketAddr, requests: Vec<String>, conns: usize) -> (u64, u64) {
    let per = requests.len().div_ceil(conns);
    let tasks: Vec<_> = requests
        .chunks(per)
        .map(|part| tokio::spawn(pipelined(addr, part.to_vec())))
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (o, r) = task.await.expect("flooder");
        (ok, refused) = (ok + o, refused + r);
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_keys_fills_the_table_and_a_new_client_still_gets_its_budget() {
    with_timeout(400, async {
        let rec = recorder().await;
        let server = r#"trusted_proxies = ["127.0.0.1"]"#;
        // 3 per hour per tenant: nothing refills while the test runs, so no key is idle
        let routes = r#"rate_limit = { requests = 3, per = "1h", key = "header:X-Tenant" }

  [[site.route]]
  exact = "/k"
  respond = { status = 200, body = "ok" }"#;
        let proxy = TestProxy::start(&config(&rec.backend, server, routes)).await;
        let one = |client: &str, tenant: &str| pipelined(proxy.addr, vec![keyed(client, tenant)]);
        // a client that spent its budget before the flood
        let spent = flood(proxy.addr, vec![keyed("192.0.2.1", "veteran"); 3], 1).await;
        assert_eq!(spent, (3, 0));
        let rss_before = proc_status_kb(proxy.pid, "VmRSS");
        let started = Instant::now();
        // one address making up 20,000 tenants: it keeps rate_limit_keys_per_ip (100) of them
        let made_up = (0..20_000).map(|i| keyed("203.0.113.9", &format!("m{i}"))).collect();
        let (ok, _) = flood(proxy.addr, made_up, 4).await;
        assert_eq!(ok, 20_000, "each new tenant has its own budget");
        // 120,000 addresses behind the trusted proxy, a tenant each: more than the table holds
        let addrs = 120_000u32;
        let many = (0..addrs)
            .map(|i| keyed(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255), &format!("a{i}")))
            .collect();
        let (ok, _) = flood(proxy.addr, many, 8).await;
        let took = started.elapsed();
        let rss_after = proc_status_kb(proxy.pid, "VmRSS");
        // a new client's requests all pass, as far as its own budget goes
        for i in 0..3 {
            assert_eq!(one("198.51.100.7", "newcomer").await, (1, 0), "newcomer #{i}");
        }
        assert_eq!(ok, u64::from(addrs), "no address shared a budget");
        assert_eq!(one("198.51.100.7", "newcomer").await, (0, 1), "its own budget holds");
        // a spent budget is the last thing the flood can make the table forget
        assert_eq!(one("192.0.2.1", "veteran").await, (0, 1), "veteran still spent");
        let full = |proxy: &TestProxy| -> Vec<String> {
            let lines = proxy.logs().into_iter();
            lines.filter(|l| l.contains("rate limit key table full")).collect()
        };
        let reported = poll_until(Duration::from_secs(15), || {
            let lines = full(&proxy);
            async move { !lines.is_empty() }
        });
        assert!(reported.await.is_some(), "the table filled up and said so");
        let full_lines = full(&proxy);
        eprintln!(
            "{} requests ({addrs} addresses, 20000 values from one) in {took:?}; RSS {rss_before} -> {rss_after} kB; last: {:?}",
            20_000 + addrs,
            full_lines.last()
        );
        for line in &full_lines {
            let tracked = json_number(line, "tracked").expect("tracked field");
            assert!(tracked <= 100_000, "tracked {tracked} over the cap: {line}");
        }
        assert!(
            rss_after.saturating_sub(rss_before) < 64 * 1024,
            "RSS grew from {rss_before} kB to {rss_after} kB"
        );
    })
    .await;
}

fn json_number(line: &str, key: &str) -> Option<usize> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_while_a_normal_client_is_served() {
    with_timeout(30, async {
        let rec = recorder().await;
        let server = "[server.timeouts]\nheader_read = \"1s\"";
        let proxy = TestProxy::start(&config(&rec.backend, server, "")).await;
        let started = Instant::now();
        let trickles: Vec<_> = (0..20)
            .map(|_| {
                let addr = proxy.addr;
                tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await.expect("connect");
                    let head =
                        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                    for byte in head.chunks(1) {
                        if stream.write_all(byte).await.is_err() {
                            return Instant::now();
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    read_until_close(&mut stream, Duration::from_secs(10)).await;
                    Instant::now()
                })
            })
            .collect();
        for _ in 0..5 {
            let resp = client().get(proxy.url("/ok")).send().await.expect("get");
            assert_eq!(
                resp.status(),
                200,
                "normal client served during the trickle"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for t in trickles {
            let cut_at = t.await.expect("trickle").duration_since(started);
            assert!(
                cut_at < Duration::from_secs(4),
                "slow head cut after {cut_at:?}"
            );
        }
        assert_eq!(rec.requests.load(Ordering::SeqCst), 5);
    })
    .await;
}

/// Rapid reset (CVE-2023-44487): open a stream, reset it at once, again and again. The proxy
/// must end such a connection instead of working on every reset stream, and keep serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_loses_the_connection() {
    with_timeout(60, async {
        let rec = recorder().await;
        let proxy = TestProxy::start(&config(&rec.backend, "", "")).await;
        let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let mut opened = 0u32;
        for _ in 0..20_000 {
            let req = hyper::Request::get(format!("http://{}/reset", proxy.addr))
                .body(())
                .expect("request");
            let ready = match h2.clone().ready().await {
                Ok(ready) => ready,
                Err(_) => break,
            };
            h2 = ready;
            let Ok((_resp, mut stream)) = h2.send_request(req, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            opened += 1;
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
        eprintln!(
            "opened and reset {opened} streams; connection: {ended:?}; backend saw {}",
            rec.requests.load(Ordering::SeqCst)
        );
        let error = ended.expect("connection ended").expect("task");
        // the GOAWAY, or (when the client was still writing as the proxy closed) a broken pipe
        let err = error.expect_err("the proxy ended the connection");
        assert!(
            err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
            "GOAWAY for the flood, got {err:?}"
        );
        assert!(opened < 20_000, "cut before the client was done");
        let resp = client().get(proxy.url("/after")).send().await.expect("get");
        assert_eq!(resp.status(), 200, "others still served");
    })
    .await;
}

/// CONTINUATION flood: a header block that never ends. The proxy must stop reading it once it is
/// over the head limit, not buffer it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_endless_header_block_loses_the_connection() {
    with_timeout(60, async {
        let rec = recorder().await;
        let proxy = TestProxy::start(&config(&rec.backend, "", "")).await;
        let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = payload.len() as u32;
            let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        // literal header field without indexing, new name: "x-flood: vvvv..."
        let mut field = vec![0x00, 7];
        field.extend_from_slice(b"x-flood");
        field.push(100);
        field.extend(std::iter::repeat_n(b'v', 100));
        let block: Vec<u8> = field
            .iter()
            .copied()
            .cycle()
            .take(field.len() * 150)
            .collect();
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // HEADERS (no END_HEADERS): :method GET, :scheme http, :path /, then the flood
        let mut first = vec![0x82, 0x86, 0x84];
        first.extend_from_slice(&block);
        start.extend(frame(0x1, 0x1, 1, &first));
        tcp.write_all(&start).await.expect("preface");
        let mut sent = start.len();
        let cont = frame(0x9, 0, 1, &block);
        let (mut rd, mut wr) = tcp.into_split();
        let writer = tokio::spawn(async move {
            while sent < (64 << 20) {
                if wr.write_all(&cont).await.is_err() {
                    break;
                }
                sent += cont.len();
            }
            sent
        });
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut got)).await;
        let sent = writer.await.expect("writer");
        eprintln!(
            "sent {sent} bytes of header block before the proxy closed; read back {} bytes",
            got.len()
        );
        assert!(
            sent < 16 << 20,
            "the proxy kept reading a {sent}-byte header block"
        );
        // a GOAWAY frame (type 7) is in what came back
        let mut at = 0;
        let mut goaway = false;
        while at + 9 <= got.len() {
            let len =
                ((got[at] as usize) << 16) | ((got[at + 1] as usize) << 8) | got[at + 2] as usize;
            goaway |= got[at + 3] == 0x7;
            at += 9 + len;
        }
        assert!(goaway, "GOAWAY sent");
        assert_eq!(rec.requests.load(Ordering::SeqCst), 0);
        let resp = client().get(proxy.url("/after")).send().await.expect("get");
        assert_eq!(resp.status(), 200);
    })
    .await;
}
