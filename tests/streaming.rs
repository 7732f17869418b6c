//! Acceptance items 6-8: a 256 MiB streamed upload in bounded memory, WebSocket echo, and HTTP/2
//! cleartext (prior knowledge) in front of an HTTP/1.1 backend.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use support::{
    client, counting_backend, echo_backend, one_upstream_config, proc_status_kb, serve,
    with_timeout, ws_echo_backend, Backend, Echo, TestProxy,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

fn single_upstream_config(backend: &Backend) -> String {
    single_upstream_config_with(backend, "")
}

fn single_upstream_config_with(backend: &Backend, extra_server: &str) -> String {
    // these tests are about streaming, not about the body limit
    one_upstream_config(backend.addr, &format!("max_body = \"off\"\n{extra_server}"))
}

const CHUNK: usize = 64 * 1024;

/// A body of `chunks` x 64 KiB produced lazily: one shared 64 KiB buffer, never the whole upload.
fn generated_body(chunks: usize) -> reqwest::Body {
    let chunk = Bytes::from(vec![0xA5u8; CHUNK]);
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<Bytes, std::io::Error>(chunk.clone())),
    );
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_through_with_bounded_memory() {
    with_timeout(240, async {
        let backend = counting_backend().await;
        let proxy = TestProxy::start(&single_upstream_config(&backend)).await;
        let http = client();

        // Warm up: connection pools, buffers, worker threads.
        for _ in 0..4 {
            let resp = http
                .post(proxy.url("/upload"))
                .body(generated_body(16))
                .send()
                .await
                .expect("warm-up upload");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.text().await.expect("body"), (16 * CHUNK).to_string());
        }

        let chunks = 4096; // 4096 x 64 KiB = 256 MiB
        let total = (chunks * CHUNK) as u64;
        let rss_before = proc_status_kb(proxy.pid, "VmRSS");
        let started = std::time::Instant::now();
        let resp = http
            .post(proxy.url("/upload"))
            .body(generated_body(chunks))
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        let body = resp.text().await.expect("body");
        let hwm_after = proc_status_kb(proxy.pid, "VmHWM");
        eprintln!(
            "upload of {total} bytes took {:?}; proxy VmRSS before {rss_before} kB, VmHWM after {hwm_after} kB",
            started.elapsed()
        );

        assert_eq!(status, 200, "upload failed: {body}");
        assert_eq!(body, total.to_string(), "backend byte count");
        let growth_kb = hwm_after.saturating_sub(rss_before);
        assert!(
            growth_kb < 64 * 1024,
            "proxy peak RSS grew by {growth_kb} kB during a {total}-byte upload \
             (VmRSS before {rss_before} kB, VmHWM after {hwm_after} kB): the body is being buffered"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_upload_is_not_cut_by_upstream_response_timeout() {
    with_timeout(30, async {
        // The upstream answers the moment the body ends; only the client is slow. The
        // upstream_response timeout is about waiting for the upstream, so it must not fire here.
        let backend = counting_backend().await;
        let proxy = TestProxy::start(&single_upstream_config_with(
            &backend,
            r#"timeouts = { upstream_response = "1s" }"#,
        ))
        .await;
        let chunks = 10u32;
        let body = futures_util::stream::unfold(0u32, move |i| async move {
            if i == chunks {
                return None;
            }
            // A client on a slow link: 1 KiB every 250 ms, 2.5 s in all.
            tokio::time::sleep(Duration::from_millis(250)).await;
            Some((
                Ok::<Bytes, std::io::Error>(Bytes::from(vec![b'x'; 1024])),
                i + 1,
            ))
        });
        let resp = client()
            .post(proxy.url("/slow-upload"))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(
            (status.as_u16(), text.as_str()),
            (200, "10240"),
            "a 2.5 s upload to an instant upstream was cut by upstream_response = 1s"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_upload() {
    with_timeout(30, async {
        // What curl does for bodies over 1 MB: send the head, wait for 100 Continue, then the body.
        let backend = counting_backend().await;
        let proxy = TestProxy::start(&single_upstream_config(&backend)).await;
        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let mut tcp = tokio::io::BufReader::new(tcp);
        tcp.get_mut()
            .write_all(
                b"POST /expect HTTP/1.1\r\nHost: expect.example.com\r\n\
                  Content-Length: 11\r\nExpect: 100-continue\r\n\r\n",
            )
            .await
            .expect("write head");
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_line(&mut line))
            .await
            .expect("no interim response within 5s of `Expect: 100-continue`")
            .expect("read");
        assert!(
            line.starts_with("HTTP/1.1 100"),
            "expected 100 Continue, got {line:?}"
        );
        let mut blank = String::new();
        tcp.read_line(&mut blank).await.expect("read");
        assert_eq!(blank, "\r\n");
        tcp.get_mut()
            .write_all(b"hello world")
            .await
            .expect("write body");
        let mut status = String::new();
        tcp.read_line(&mut status).await.expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "got {status:?}");
        let mut content_length = None;
        loop {
            let mut header = String::new();
            tcp.read_line(&mut header).await.expect("header");
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; content_length.expect("content-length on response")];
        tcp.read_exact(&mut body).await.expect("body");
        assert_eq!(body, b"11");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_proxy() {
    with_timeout(30, async {
        let backend = ws_echo_backend().await;
        let proxy = TestProxy::start(&single_upstream_config(&backend)).await;

        let (mut ws, response) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", proxy.addr))
                .await
                .expect("websocket handshake through the proxy");
        assert_eq!(response.status(), 101);

        for i in 0..5 {
            let text = format!("hello #{i} \u{1F44B}");
            ws.send(Message::Text(text.clone()))
                .await
                .expect("send text");
            let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("text echo timed out")
                .expect("stream ended")
                .expect("ws error");
            assert_eq!(reply, Message::Text(text));

            let binary: Vec<u8> = (0..(1000 + i * 7000)).map(|b| (b % 251) as u8).collect();
            ws.send(Message::Binary(binary.clone()))
                .await
                .expect("send binary");
            let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("binary echo timed out")
                .expect("stream ended")
                .expect("ws error");
            assert_eq!(reply, Message::Binary(binary));
        }
        ws.close(None).await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_to_http1_backend() {
    with_timeout(30, async {
        let backend = echo_backend("h1").await;
        let proxy = TestProxy::start(&single_upstream_config(&backend)).await;
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .no_proxy()
            .build()
            .expect("h2 client");

        let requests = (0..8).map(|i| {
            let h2 = h2.clone();
            let url = proxy.url(&format!("/h2/{i}?n={i}"));
            async move {
                let resp = h2.get(url).send().await.expect("h2 request");
                let version = resp.version();
                let status = resp.status();
                (i, version, status, resp.text().await.expect("body"))
            }
        });
        for (i, version, status, body) in futures_util::future::join_all(requests).await {
            assert_eq!(version, reqwest::Version::HTTP_2, "request {i}");
            assert_eq!(status, 200, "request {i}");
            let echo = Echo::parse(&body);
            assert_eq!(echo.uri, format!("/h2/{i}?n={i}"));
            assert_eq!(
                echo.version, "HTTP/1.1",
                "backend must be spoken to in HTTP/1.1"
            );
            assert_eq!(
                echo.header("host").as_deref(),
                Some(proxy.addr.to_string().as_str()),
                "the :authority must become the backend's Host header"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_on_one_connection_are_concurrent() {
    const N: usize = 6;
    with_timeout(30, async {
        // The backend answers only once all N requests are in flight at the same time, so a
        // proxy that serialised the streams of one h2 connection would fail this test.
        let barrier = Arc::new(Barrier::new(N));
        let backend = serve("barrier", move |req| {
            let barrier = barrier.clone();
            async move {
                let path = req.uri().path().to_string();
                let met = tokio::time::timeout(Duration::from_secs(5), barrier.wait())
                    .await
                    .is_ok();
                let (status, body) = if met {
                    (200, format!("ok {path}"))
                } else {
                    (500, "not all requests were in flight together".to_string())
                };
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)))
                    .expect("response")
            }
        })
        .await;
        let proxy = TestProxy::start(&single_upstream_config(&backend)).await;

        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);

        let requests = (0..N).map(|i| {
            let mut sender = sender.clone();
            let uri = format!("http://{}/stream/{i}", proxy.addr);
            async move {
                let req = hyper::Request::get(uri)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let resp = sender.send_request(req).await.expect("h2 response");
                let status = resp.status().as_u16();
                let version = resp.version();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (
                    i,
                    status,
                    version,
                    String::from_utf8_lossy(&body).into_owned(),
                )
            }
        });
        for (i, status, version, body) in futures_util::future::join_all(requests).await {
            assert_eq!(version, hyper::Version::HTTP_2);
            assert_eq!((status, body), (200, format!("ok /stream/{i}")));
        }
    })
    .await;
}
