//! Keep-alive connections to upstream servers (`upstream::conn`): reused across requests, never
//! reused after the response closed or cut them, and an upstream closing an idle one costs the
//! client nothing.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use std::net::SocketAddr;
use std::time::Duration;
use support::{
    client, echo_backend, eventually, one_upstream_config, serve, serve_raw, text_response,
    with_timeout, Backend, TestProxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(server: SocketAddr) -> String {
    one_upstream_config(server, "")
}

/// A backend answering every request (a head without body) with `response`, verbatim. With
/// `close_after`, it closes each connection that long after its first response, without saying
/// so (no `Connection: close`), as a server whose keep-alive timeout ran out does.
async fn raw_backend(response: &'static [u8], close_after: Option<Duration>) -> Backend {
    serve_raw("raw", move |stream| answer(stream, response, close_after)).await
}

async fn answer(mut stream: TcpStream, response: &'static [u8], close_after: Option<Duration>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.drain(..end);
        if stream.write_all(response).await.is_err() {
            return;
        }
        if let Some(after) = close_after {
            // no sleep at all for zero: even that would yield for a timer tick
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            return;
        }
    }
}

const CHUNKED_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
const LENGTH_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Sends `n` sequential GETs through `proxy`; every one must be a 200 with `body`.
async fn get_n(proxy: &TestProxy, n: usize, body: &str) {
    let http = client();
    for i in 0..n {
        let resp = http
            .get(proxy.url(&format!("/r/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}: {:#?}", proxy.logs());
        assert_eq!(resp.text().await.unwrap(), body, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_connection_serves_sequential_requests() {
    with_timeout(60, async {
        let echo = echo_backend("a").await;
        let proxy = TestProxy::start(&config(echo.addr)).await;
        let http = client();
        for i in 0..50 {
            let resp = http
                .get(proxy.url(&format!("/r/{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "request {i}");
            assert!(resp
                .text()
                .await
                .unwrap()
                .starts_with(&format!("GET /r/{i} ")));
        }
        assert_eq!(
            echo.connections(),
            1,
            "upstream connections for 50 requests"
        );

        // a chunked body ends on its last chunk, not on a length
        let chunked = raw_backend(CHUNKED_OK, None).await;
        let proxy = TestProxy::start(&config(chunked.addr)).await;
        get_n(&proxy, 50, "ok").await;
        assert_eq!(chunked.connections(), 1, "upstream connections, chunked");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_response_gives_its_connection_back() {
    with_timeout(60, async {
        const JSON: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 600\r\n\r\n";
        let mut response = JSON.to_vec();
        response.extend(std::iter::repeat_n(b' ', 600));
        let backend = raw_backend(response.leak(), None).await;
        let config = config(backend.addr).replace(
            "upstream = \"backend\"",
            "upstream = \"backend\"\n  encode = [\"gzip\"]",
        );
        let proxy = TestProxy::start(&config).await;
        let http = client();
        for i in 0..20 {
            let resp = http
                .get(proxy.url(&format!("/r/{i}")))
                .header("accept-encoding", "gzip")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "request {i}");
            assert_eq!(resp.headers()["content-encoding"], "gzip", "request {i}");
            assert!(!resp.bytes().await.unwrap().is_empty());
        }
        assert_eq!(
            backend.connections(),
            1,
            "upstream connections for 20 compressed responses"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_without_a_body_give_the_connection_back() {
    with_timeout(60, async {
        let backend = serve("empty", |req| async move {
            if req.uri().path() == "/none" {
                text_response(204, "")
            } else {
                text_response(200, "body a HEAD never reads")
            }
        })
        .await;
        let proxy = TestProxy::start(&config(backend.addr)).await;
        let http = client();
        for i in 0..10 {
            let head = http.head(proxy.url("/head")).send().await.unwrap();
            assert_eq!(head.status(), 200, "HEAD {i}");
            let none = http.get(proxy.url("/none")).send().await.unwrap();
            assert_eq!(none.status(), 204, "204 {i}");
        }
        assert_eq!(
            backend.connections(),
            1,
            "upstream connections for 20 requests"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_its_idle_connection_costs_the_client_nothing() {
    with_timeout(60, async {
        // closed a moment after its answer: the proxy has put it back among the idle ones
        let lingering = raw_backend(LENGTH_OK, Some(Duration::from_millis(100))).await;
        let proxy = TestProxy::start(&config(lingering.addr)).await;
        for round in 0..3 {
            get_n(&proxy, 1, "ok").await;
            assert_eq!(lingering.connections(), round + 1);
            // the next request comes once this connection is gone
            eventually(Duration::from_secs(5), "the upstream closed it", || {
                lingering.closed() == round + 1
            })
            .await;
        }

        // closed right after its answer, the next request close behind
        let abrupt = raw_backend(LENGTH_OK, Some(Duration::ZERO)).await;
        let proxy = TestProxy::start(&config(abrupt.addr)).await;
        get_n(&proxy, 30, "ok").await;
        assert_eq!(abrupt.connections(), 30);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_saying_connection_close_is_not_reused() {
    with_timeout(60, async {
        let closing = serve("closing", |_req| async move {
            Response::builder()
                .header("connection", "close")
                .body(Full::new(Bytes::from_static(b"bye")))
                .unwrap()
        })
        .await;
        let proxy = TestProxy::start(&config(closing.addr)).await;
        let http = client();
        for i in 0..10 {
            let resp = http.get(proxy.url("/")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "request {i}");
            assert!(resp.headers().get("connection").is_none());
            assert_eq!(resp.text().await.unwrap(), "bye");
        }
        assert_eq!(closing.connections(), 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_dropped_halfway_does_not_poison_the_pool() {
    with_timeout(60, async {
        let big = Bytes::from(vec![b'x'; 64 << 20]);
        let backend = serve("big", move |req| {
            let big = big.clone();
            async move {
                match req.uri().path() {
                    "/big" => text_response(200, big),
                    path => text_response(200, path.to_string()),
                }
            }
        })
        .await;
        let proxy = TestProxy::start(&config(backend.addr)).await;

        // a client reads the head and a little of the body, then goes away
        let mut raw = TcpStream::connect(proxy.addr).await.unwrap();
        raw.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut some = vec![0u8; 64 << 10];
        raw.read_exact(&mut some).await.unwrap();
        assert!(some.starts_with(b"HTTP/1.1 200"));
        drop(raw);

        get_n(&proxy, 1, "/r/0").await;
        let http = client();
        for i in 0..10 {
            let path = format!("/small/{i}");
            let resp = http.get(proxy.url(&path)).send().await.unwrap();
            assert_eq!(resp.text().await.unwrap(), path);
        }
        // the cut connection was closed, its successor serves all the rest
        assert_eq!(backend.connections(), 2);
    })
    .await;
}
