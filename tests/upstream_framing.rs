//! What an upstream's response framing does to the client and to the pool, byte for byte: a
//! scripted backend answers each path with exact bytes (both length headers, a bad or doubled
//! `Content-Length`, a close-delimited body, bytes after a complete response, a body on `HEAD`,
//! `204` and `304`, `1xx` before the answer, a `101` nobody asked for, chunk extensions and
//! trailers, a bad chunk size, obs-fold and bare CR in the head, an answer before the upload is
//! read, a coding other than `chunked`, a body cut short), and raw clients read what Gatehouse
//! makes of it. The rules: a response whose framing
//! cannot be trusted is a `502` (or, once its head has gone, a cut connection, never a clean
//! end); a connection that could hold bytes of an earlier response is never used again, so no
//! later request ever reads them; the client's connection stays usable after a `502`.
//!
//! These pin the behaviour an HTTP/1.1 engine of our own must keep (issue 23); today hyper's
//! client does the parsing.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{with_timeout, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wire::{exchange, find, read_one, read_to_close, Resp};

/// What the backend sends for a request line, and whether it closes after.
fn script(method: &str, path: &str) -> (&'static [u8], bool) {
    let bytes: &'static [u8] = match path {
        "/cl-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "/bad-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok",
        "/two-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
        "/cl-list" => b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nokk",
        "/negative-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        "/huge-cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok",
        "/close-delimited" => return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until the end", true),
        "/http10" => return (b"HTTP/1.0 200 OK\r\n\r\nold style", true),
        "/trailing" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!",
        "/head-body" if method == "HEAD" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!",
        "/204-body" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nevil!",
        "/304-body" => b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\nevil!",
        "/100" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/103" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/1xx-many" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/101" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nevil!",
        "/chunk-ext" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;name=value\r\nabc\r\n2;x\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
        "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nxyz\r\n0\r\n\r\n",
        "/obs-fold" => b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        "/bare-cr" => b"HTTP/1.1 200 OK\r\nX-Cr: a\rb\r\nContent-Length: 2\r\n\r\nok",
        "/chunk-overflow" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10000000000000003\r\nxyz\r\n0\r\n\r\n",
        "/chunk-no-crlf" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndefXY0\r\n\r\n",
        "/chunk-signed" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n+3\r\nxyz\r\n0\r\n\r\n",
        "/chunk-0x" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0x3\r\nxyz\r\n0\r\n\r\n",
        "/cl-short" => return (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true),
        "/chunked-short" => return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", true),
        "/te-gzip" => return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip", true),
        "/te-chunked-gzip" => return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n", true),
        "/te-twice" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "/cl-same-twice" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        "/cl-plus" => b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        "/nul" => b"HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\nContent-Length: 2\r\n\r\nok",
        "/space-colon" => b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        "/bare-lf" => b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        "/status-2digits" => b"HTTP/1.1 20 Odd\r\nContent-Length: 2\r\n\r\nok",
        "/http2-line" => b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/100-with-length" => b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/trailer-bad" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Bad trailer\r\n\r\n",
        "/head-chunked" if method == "HEAD" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nevil!\r\n0\r\n\r\n",
        "/reason" => b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nok",
        "/reason-599" => b"HTTP/1.1 599 Network Timeout\r\nContent-Length: 2\r\n\r\nok",
        "/reason-404" => b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nok",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine",
    };
    (bytes, false)
}

/// A backend that answers each request with [`script`]'s bytes, recording which connection
/// carried which request. `/early*` paths are answered as soon as their head is read (the body
/// is never read), then the connection is closed.
struct Scripted {
    addr: SocketAddr,
    /// `(connection number, request line)` in arrival order.
    log: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let record = log.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                tokio::spawn(serve(stream, n, record.clone()));
            }
        });
        Scripted { addr, log }
    }

    /// The requests the connection that carried `line` carried after it: none, when the
    /// connection was not used again.
    fn used_after(&self, line: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        let Some(at) = log.iter().position(|(_, l)| l == line) else {
            panic!("{line} never arrived: {log:?}");
        };
        let conn = log[at].0;
        log[at + 1..]
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

async fn serve(mut stream: TcpStream, conn: usize, log: Arc<Mutex<Vec<(usize, String)>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let line = head.split("\r\n").next().unwrap_or("").to_string();
        log.lock().unwrap().push((conn, line.clone()));
        let mut parts = line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if path.starts_with("/early") {
            let status = if path == "/early-200" {
                "200 OK"
            } else {
                "413 Content Too Large"
            };
            let resp =
                format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly");
            let _ = stream.write_all(resp.as_bytes()).await;
            // the upload goes on arriving: a close now would reset the answer away
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            return;
        }
        let length: usize = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let (bytes, close) = script(method, path);
        if stream.write_all(bytes).await.is_err() || close {
            return;
        }
    }
}

fn config(backend: SocketAddr) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[upstream.backend]
servers = ["{backend}"]
retries = 0

[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"

  [[site.route]]
  path = "/early"
  max_body = "off"
  upstream = "backend"

  [[site.route]]
  path = "/denied"
  deny = ["127.0.0.0/8"]
  upstream = "backend"

  [[site.route]]
  path = "/small"
  max_body = "16B"
  upstream = "backend"

  [[site.route]]
  path = "/limited"
  rate_limit = {{ requests = 1, per = "1m", burst = 1 }}
  upstream = "backend"
"#
    )
}

async fn start() -> (Scripted, TestProxy) {
    let backend = Scripted::start().await;
    let proxy = TestProxy::start(&config(backend.addr)).await;
    (backend, proxy)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: f.test\r\n\r\n").into_bytes()
}

/// Sends `request` on an open connection and reads one response.
async fn ask(stream: &mut TcpStream, pending: &mut Vec<u8>, request: &[u8]) -> Resp {
    stream.write_all(request).await.unwrap();
    read_one(stream, pending).await
}

/// `path` on a new keep-alive connection, then `/ok` on the same one: the answer to `path`, and
/// proof that the client connection is still usable (and that `/ok` read nothing left over).
async fn then_ok(proxy: &TestProxy, request: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut pending = Vec::new();
    let first = ask(&mut stream, &mut pending, request).await;
    let second = ask(&mut stream, &mut pending, &get("/ok")).await;
    assert_eq!(
        (second.status, second.body.as_slice()),
        (200, &b"fine"[..]),
        "after {:?}",
        String::from_utf8_lossy(request)
    );
    first
}

/// Every later request gets its own answer: `/ok` from fresh clients, several times, so a
/// connection holding leftover bytes would be picked by one of them.
async fn later_requests_are_clean(proxy: &TestProxy) {
    for _ in 0..4 {
        let got = exchange(
            proxy.addr,
            b"GET /ok HTTP/1.1\r\nHost: f.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let responses = got.responses();
        assert_eq!(responses.len(), 1, "{}", got.text());
        assert_eq!(
            (responses[0].status, responses[0].body.as_slice()),
            (200, &b"fine"[..]),
            "{}",
            got.text()
        );
        assert!(!got.text().contains("evil"), "{}", got.text());
    }
}

/// `GET path` with `Connection: close` on a new connection: every response it got, and the raw
/// text.
async fn once(proxy: &TestProxy, method: &str, path: &str) -> (Vec<Resp>, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: f.test\r\nConnection: close\r\n\r\n");
    let got = exchange(proxy.addr, request.as_bytes()).await;
    assert!(got.closed, "{method} {path}: not closed: {}", got.text());
    (got.responses(), got.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_beside_transfer_encoding_is_dropped_and_so_is_the_connection() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        let resp = then_ok(&proxy, &get("/cl-te")).await;
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"abc"[..]));
        assert!(
            resp.headers.iter().all(|(n, _)| n != "content-length"),
            "the upstream's length went on: {:?}",
            resp.headers
        );
        assert_eq!(
            backend.used_after("GET /cl-te HTTP/1.1"),
            Vec::<String>::new(),
            "the connection was used again"
        );
        later_requests_are_clean(&proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_length_or_head_is_502_and_the_client_connection_goes_on() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        for path in [
            "/bad-cl",
            "/two-cl",
            "/cl-list",
            "/negative-cl",
            "/huge-cl",
            "/obs-fold",
            "/bare-cr",
            "/cl-plus",
            "/nul",
            "/space-colon",
            "/status-2digits",
            "/http2-line",
        ] {
            let resp = then_ok(&proxy, &get(path)).await;
            assert_eq!(resp.status, 502, "{path}");
            let body = String::from_utf8_lossy(&resp.body).into_owned();
            assert!(body.contains("malformed response"), "{path}: {body}");
            let line = format!("GET {path} HTTP/1.1");
            assert_eq!(
                backend.used_after(&line),
                Vec::<String>::new(),
                "{path}: the connection was used again"
            );
        }
        later_requests_are_clean(&proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_and_http10_bodies_arrive_whole_as_http11() {
    with_timeout(60, async {
        let (_backend, proxy) = start().await;
        for (path, body) in [
            ("/close-delimited", "read until the end"),
            ("/http10", "old style"),
        ] {
            let (responses, text) = once(&proxy, "GET", path).await;
            assert_eq!(responses.len(), 1, "{text}");
            assert!(text.starts_with("HTTP/1.1 200 "), "{path}: {text}");
            assert_eq!(responses[0].body, body.as_bytes(), "{path}: {text}");
            // a keep-alive client gets it framed, so its connection goes on
            let resp = then_ok(&proxy, &get(path)).await;
            assert_eq!(resp.body, body.as_bytes(), "{path}");
        }
        later_requests_are_clean(&proxy).await;
    })
    .await;
}

/// The upstream's reason phrase reaches the client as it was (hyper's server and nginx pass it
/// on); the usual one where the upstream used the usual one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_reason_phrase_is_passed_on() {
    with_timeout(60, async {
        let (_backend, proxy) = start().await;
        for (path, line) in [
            ("/reason", "HTTP/1.1 200 Fine Thanks\r\n"),
            ("/reason-599", "HTTP/1.1 599 Network Timeout\r\n"),
            ("/reason-404", "HTTP/1.1 404 Not Found\r\n"),
            ("/ok", "HTTP/1.1 200 OK\r\n"),
        ] {
            let (responses, text) = once(&proxy, "GET", path).await;
            assert_eq!(responses.len(), 1, "{text}");
            assert!(text.starts_with(line), "{path}: {text}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_beyond_a_response_never_reach_anyone() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        for (method, path, status) in [
            ("GET", "/trailing", 200),
            ("HEAD", "/head-body", 200),
            ("GET", "/204-body", 204),
            ("GET", "/304-body", 304),
            ("HEAD", "/head-chunked", 200),
        ] {
            let request = format!("{method} {path} HTTP/1.1\r\nHost: f.test\r\n\r\n");
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            let mut pending = Vec::new();
            stream.write_all(request.as_bytes()).await.unwrap();
            let resp = if method == "HEAD" {
                // a HEAD answer's length describes a body that is not sent
                let mut chunk = [0u8; 4096];
                while find(&pending, b"\r\n\r\n").is_none() {
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0);
                    pending.extend_from_slice(&chunk[..n]);
                }
                let head_end = find(&pending, b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
                pending.drain(..head_end);
                assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
                Resp {
                    status: 200,
                    headers: Vec::new(),
                    body: Vec::new(),
                }
            } else {
                read_one(&mut stream, &mut pending).await
            };
            assert_eq!(resp.status, status, "{path}");
            assert!(
                !String::from_utf8_lossy(&resp.body).contains("evil"),
                "{path}"
            );
            let second = ask(&mut stream, &mut pending, &get("/ok")).await;
            assert_eq!(
                (second.status, second.body.as_slice()),
                (200, &b"fine"[..]),
                "{path}"
            );
            let line = format!("{method} {path} HTTP/1.1");
            assert_eq!(
                backend.used_after(&line),
                Vec::<String>::new(),
                "{path}: the connection holding the extra bytes was used again"
            );
            later_requests_are_clean(&proxy).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_passed_over_and_an_unasked_101_is_502() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        // a length on an interim answer describes nothing: the final answer follows at once
        for path in ["/100", "/103", "/1xx-many", "/100-with-length"] {
            let (responses, text) = once(&proxy, "GET", path).await;
            // nginx's behaviour too: interim answers are not forwarded, the final one is
            assert_eq!(responses.len(), 1, "{path}: {text}");
            assert_eq!(
                (responses[0].status, responses[0].body.as_slice()),
                (200, &b"ok"[..])
            );
        }
        let resp = then_ok(&proxy, &get("/101")).await;
        assert_eq!(resp.status, 502);
        assert_eq!(
            backend.used_after("GET /101 HTTP/1.1"),
            Vec::<String>::new(),
            "the switched connection was used again"
        );
        later_requests_are_clean(&proxy).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_extensions_and_trailers_pass_and_a_bad_chunk_cuts_the_answer() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        let resp = then_ok(&proxy, &get("/chunk-ext")).await;
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"abcde"[..]));
        // the head has gone when the bad size arrives: the client sees the body cut (no last
        // chunk, the connection closed), never a clean end
        let (responses, text) = once(&proxy, "GET", "/bad-chunk").await;
        assert!(responses.is_empty(), "a complete response: {text}");
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        assert!(
            !text.contains("xyz") && !text.ends_with("0\r\n\r\n"),
            "{text}"
        );
        assert_eq!(
            backend.used_after("GET /bad-chunk HTTP/1.1"),
            Vec::<String>::new()
        );
        later_requests_are_clean(&proxy).await;
    })
    .await;
}

/// The upstream answers before it has read the upload (a `413` of its own, or a `200`; the upload
/// with a length or chunked): the client gets that answer, whole, while it is still sending; its
/// connection is then either closed or, once the upload is done, serves the next request (the
/// rest of the upload is never read as a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_is_read_reaches_the_client() {
    with_timeout(60, async {
        let (_backend, proxy) = start().await;
        const LEN: usize = 4 << 20;
        let cases = [
            ("/early-413", 413, false),
            ("/early-200", 200, false),
            ("/early-413", 413, true),
            ("/early-200", 200, true),
        ];
        for (path, status, chunked) in cases {
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {LEN}")
            };
            let head = format!("POST {path} HTTP/1.1\r\nHost: f.test\r\n{framing}\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            // the upload's rest spells requests: none of them may ever be answered
            let filler = get("/from-the-body").repeat(LEN / 16);
            let (first, rest) = filler[..LEN].split_at(65536);
            let (first, rest) = if chunked {
                (as_chunk(first, false), as_chunk(rest, true))
            } else {
                (first.to_vec(), rest.to_vec())
            };
            let (first, rest) = (first.as_slice(), rest.as_slice());
            stream.write_all(first).await.unwrap();
            let mut pending = Vec::new();
            let resp = read_one(&mut stream, &mut pending).await;
            assert_eq!(
                (resp.status, resp.body.as_slice()),
                (status, &b"early"[..]),
                "{path}"
            );
            let sent = stream.write_all(rest).await.is_ok()
                && stream
                    .write_all(b"GET /ok HTTP/1.1\r\nHost: f.test\r\nConnection: close\r\n\r\n")
                    .await
                    .is_ok();
            let got = read_to_close(&mut stream).await;
            let after: Vec<u16> = wire::Exchange {
                bytes: [pending, got.bytes.clone()].concat(),
                closed: got.closed,
            }
            .responses()
            .iter()
            .map(|r| r.status)
            .collect();
            // closed mid-upload (nothing more), or the next request answered, once
            assert!(
                after.is_empty() || (sent && after == vec![200]),
                "{path} (chunked: {chunked}): after the early answer: {after:?} {}",
                got.text()
            );
            assert!(!got.text().contains("from-the-body"), "{path} {chunked}");
        }
        later_requests_are_clean(&proxy).await;
    })
    .await;
}

/// `bytes` as one chunk, and the last chunk after it when `last`.
fn as_chunk(bytes: &[u8], last: bool) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(if last { b"\r\n0\r\n\r\n" } else { b"\r\n" });
    out
}

/// Gatehouse's own refusals of a request whose body it never read: the body is never taken for
/// the next request, whatever it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_never_read_an_unread_body_as_a_request() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: f.test\r\n\r\n";
        // the rate limit's one request goes first
        let _ = once(&proxy, "GET", "/limited/first").await;
        for (path, status) in [("/denied", 403), ("/small", 413), ("/limited", 429)] {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: f.test\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            );
            let got = exchange(proxy.addr, request.as_bytes()).await;
            let responses = got.responses();
            assert_eq!(
                responses.iter().map(|r| r.status).collect::<Vec<_>>(),
                vec![status],
                "{path}: {}",
                got.text()
            );
        }
        // and with a second request pipelined after the body: it is answered or the connection
        // closed, but the body is never a request
        let request = format!(
            "POST /denied HTTP/1.1\r\nHost: f.test\r\nContent-Length: {}\r\n\r\n{smuggled}GET /ok HTTP/1.1\r\nHost: f.test\r\nConnection: close\r\n\r\n",
            smuggled.len()
        );
        let got = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(got.responses()[0].status, 403, "{}", got.text());
        let lines: Vec<String> = backend.log.lock().unwrap().iter().map(|(_, l)| l.clone()).collect();
        assert!(
            !lines.iter().any(|l| l.contains("/smuggled")),
            "a body was read as a request: {lines:?}"
        );
    })
    .await;
}

/// An HTTP/1.0 client asking for keep-alive gets it (a length or a close, never chunked); one
/// that does not ask has its connection closed after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_keep_alive_only_when_they_ask() {
    with_timeout(60, async {
        let (_backend, proxy) = start().await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut pending = Vec::new();
        let request = b"GET /ok HTTP/1.0\r\nHost: f.test\r\nConnection: keep-alive\r\n\r\n";
        for _ in 0..2 {
            let resp = ask(&mut stream, &mut pending, request).await;
            assert_eq!((resp.status, resp.body.as_slice()), (200, &b"fine"[..]));
            let says = |name: &str| {
                resp.headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.to_ascii_lowercase())
            };
            assert_eq!(says("connection").as_deref(), Some("keep-alive"));
            assert_eq!(says("content-length").as_deref(), Some("4"));
        }
        // a body of unknown length to an HTTP/1.0 client: delimited by the close
        stream
            .write_all(
                b"GET /close-delimited HTTP/1.0\r\nHost: f.test\r\nConnection: keep-alive\r\n\r\n",
            )
            .await
            .unwrap();
        let got = read_to_close(&mut stream).await;
        assert!(got.closed);
        assert!(got.text().starts_with("HTTP/1.0 200 "), "{}", got.text());
        assert!(
            !got.text()
                .to_ascii_lowercase()
                .contains("transfer-encoding"),
            "{}",
            got.text()
        );
        assert!(got.text().ends_with("read until the end"), "{}", got.text());
        // without keep-alive: closed after one answer
        let got = exchange(proxy.addr, b"GET /ok HTTP/1.0\r\nHost: f.test\r\n\r\n").await;
        assert!(got.closed);
        assert_eq!(got.responses().len(), 1, "{}", got.text());
    })
    .await;
}

/// Only a lone `chunked` frames a body. Any other coding (`gzip`, `chunked, gzip`, or `chunked`
/// applied twice) would reach the client still applied and no longer announced, since
/// `Transfer-Encoding` is hop-by-hop: `502`, like nginx, and the connection is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_is_502() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        for path in ["/te-gzip", "/te-chunked-gzip", "/te-twice"] {
            let resp = then_ok(&proxy, &get(path)).await;
            assert_eq!(
                resp.status,
                502,
                "{path}: {:?}",
                String::from_utf8_lossy(&resp.body)
            );
            let body = String::from_utf8_lossy(&resp.body).into_owned();
            assert!(body.contains("malformed response"), "{path}: {body}");
            let line = format!("GET {path} HTTP/1.1");
            assert_eq!(backend.used_after(&line), Vec::<String>::new(), "{path}");
        }
        later_requests_are_clean(&proxy).await;
    })
    .await;
}

/// A body whose framing breaks once its head has gone (a chunk size that overflows, has a sign
/// or a `0x`, data not followed by CRLF, a malformed trailer, a length or chunk cut short by the
/// close): the client sees the answer cut, never a clean end, and nothing past the fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_midway_cuts_the_answer() {
    with_timeout(60, async {
        let (backend, proxy) = start().await;
        for path in [
            "/chunk-overflow",
            "/chunk-signed",
            "/chunk-0x",
            "/chunk-no-crlf",
            "/trailer-bad",
            "/cl-short",
            "/chunked-short",
        ] {
            let (responses, text) = once(&proxy, "GET", path).await;
            assert!(responses.is_empty(), "{path}: a complete response: {text}");
            assert!(text.starts_with("HTTP/1.1 200 "), "{path}: {text}");
            assert!(text.contains("abc"), "{path}: {text}");
            assert!(
                !text.contains("xyz") && !text.ends_with("0\r\n\r\n"),
                "{path}: {text}"
            );
            let line = format!("GET {path} HTTP/1.1");
            assert_eq!(backend.used_after(&line), Vec::<String>::new(), "{path}");
        }
        later_requests_are_clean(&proxy).await;
    })
    .await;
}
