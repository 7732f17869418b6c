//! Acceptance items 12-13: 502 / 504 / 404 with request-id bodies, and graceful shutdown on SIGTERM.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{
    client, closed_port_addr, gated_backend, header, sleepy_backend, with_timeout, Gate, TestProxy,
};
use tokio::sync::mpsc;

fn upstream_config(upstream: SocketAddr, extra_server: &str) -> String {
    upstream_config_with(&upstream.to_string(), extra_server, "")
}

/// One `/api/` route to upstream `backend` with the one server `server` (an address or a name).
fn upstream_config_with(server: &str, extra_server: &str, extra_upstream: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
{extra_server}

[[site]]
  [[site.route]]
  path = "/api/"
  upstream = "backend"

[upstream.backend]
servers = ["{server}"]
{extra_upstream}
"#
    )
}

/// Asserts an error response: status, a short plain-text body containing the x-request-id.
async fn assert_error_response(resp: reqwest::Response, want_status: u16) {
    let status = resp.status().as_u16();
    let request_id = header(&resp, "x-request-id");
    let content_type = header(&resp, "content-type");
    let body = resp.text().await.expect("body");
    assert_eq!(status, want_status, "body: {body}");
    let request_id = request_id.expect("x-request-id header on error response");
    assert!(!request_id.is_empty());
    assert!(
        body.contains(&request_id),
        "{want_status} body {body:?} does not contain the request id {request_id:?}"
    );
    assert!(body.len() < 1024, "error body is not short: {body:?}");
    assert!(
        content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{want_status} content-type {content_type:?} is not text/plain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_with_request_id() {
    with_timeout(30, async {
        let dead = closed_port_addr().await;
        let proxy = TestProxy::start(&upstream_config(dead, "")).await;
        let started = Instant::now();
        let resp = client()
            .get(proxy.url("/api/x"))
            .send()
            .await
            .expect("request");
        assert_error_response(resp, 502).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "a refused connection should fail fast, took {:?}",
            started.elapsed()
        );

        // A client-chosen id is the one reported.
        let resp = client()
            .get(proxy.url("/api/x"))
            .header("x-request-id", "trace-502")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 502);
        assert!(resp.text().await.expect("body").contains("trace-502"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_upstream_name_starts_and_answers_503() {
    with_timeout(30, async {
        // `.invalid` never resolves (RFC 6761): the proxy must still start, say so, and answer 503
        let config = upstream_config_with("replica.invalid:8000", "", r#"resolve_every = "200ms""#);
        let proxy = TestProxy::start(&config).await;
        let resp = client()
            .get(proxy.url("/api/x"))
            .send()
            .await
            .expect("request");
        assert_error_response(resp, 503).await;
        // several resolve rounds later: one warning, not one per round
        tokio::time::sleep(Duration::from_millis(700)).await;
        let warnings = proxy
            .logs()
            .iter()
            .filter(|l| l.contains("cannot resolve upstream server"))
            .count();
        assert_eq!(warnings, 1, "logs: {:#?}", proxy.logs());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_after_upstream_response_timeout() {
    with_timeout(30, async {
        let backend = sleepy_backend(Duration::from_secs(3)).await;
        let proxy = TestProxy::start(&upstream_config(
            backend.addr,
            r#"timeouts = { upstream_response = "300ms" }"#,
        ))
        .await;
        let started = Instant::now();
        let resp = client()
            .get(proxy.url("/api/slow"))
            .send()
            .await
            .expect("request");
        let elapsed = started.elapsed();
        assert_error_response(resp, 504).await;
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(2500),
            "504 should come after ~300ms, came after {elapsed:?}"
        );
    })
    .await;
}

/// A `504` for an upstream too slow to answer, `took` within `ms` (what `upstream_response`
/// allows, with room for a loaded machine).
fn assert_timed_out(status: u16, took: Duration, ms: std::ops::Range<u64>, case: &str) {
    assert_eq!(status, 504, "{case}: after {took:?}");
    let ms = Duration::from_millis(ms.start)..Duration::from_millis(ms.end);
    assert!(
        ms.contains(&took),
        "{case}: 504 after {took:?}, not within {ms:?}"
    );
}

/// The answer time is timed per request on a keep-alive connection too, whatever its requests
/// before left its watchdog armed for: right after a fast answer (before the connection parks),
/// after a pause (parked and woken), after a timed-out one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_response_timeout_holds_for_every_request_of_a_connection() {
    with_timeout(60, async {
        let backend = support::serve("slow-or-fast", |req| async move {
            if req.uri().path() == "/api/slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            support::text_response(200, "ok")
        })
        .await;
        let proxy = TestProxy::start(&upstream_config(
            backend.addr,
            r#"timeouts = { upstream_response = "300ms", idle = "300s" }"#,
        ))
        .await;
        let client = client();
        let get = |path: &'static str| {
            let client = client.clone();
            let url = proxy.url(path);
            async move {
                let started = Instant::now();
                let resp = client.get(url).send().await.expect("request");
                (resp.status().as_u16(), started.elapsed())
            }
        };
        for pause in [0, 0, 200, 0] {
            assert_eq!(get("/api/fast").await.0, 200);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let (status, took) = get("/api/slow").await;
            assert_timed_out(
                status,
                took,
                250..2000,
                &format!("after a pause of {pause} ms"),
            );
        }
    })
    .await;
}

/// A request in flight when shutdown begins keeps its answer time: a slow upstream is a 504
/// after `upstream_response`, not a wait for the upstream within the (longer) grace period.
/// The clock starts once the upload has gone up, here after shutdown began: the connection's
/// watchdog, which times it, must be polled while the connection drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_shutdown_keeps_its_upstream_response_timeout() {
    with_timeout(60, async {
        let backend = sleepy_backend(Duration::from_secs(8)).await;
        let proxy = TestProxy::start(&upstream_config(
            backend.addr,
            "shutdown_grace = \"20s\"\ntimeouts = { upstream_response = \"1500ms\" }",
        ))
        .await;
        // the upload's last part 800 ms in, shutdown at 400 ms
        let body = futures_util::stream::unfold(0u8, |i| async move {
            match i {
                0 => Some((Ok::<Bytes, std::io::Error>(Bytes::from_static(b"first")), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    Some((Ok(Bytes::from_static(b"last")), 2))
                }
                _ => None,
            }
        });
        let request = client()
            .post(proxy.url("/api/slow"))
            .body(reqwest::Body::wrap_stream(body));
        let started = Instant::now();
        let response = tokio::spawn(request.send());
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.send_signal("TERM");
        let resp = response.await.expect("task").expect("request");
        let took = started.elapsed();
        assert_timed_out(
            resp.status().as_u16(),
            took,
            2100..6000,
            "1.5 s after the upload",
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_path_is_404_with_request_id() {
    with_timeout(30, async {
        let dead = closed_port_addr().await;
        let proxy = TestProxy::start(&upstream_config(dead, "")).await;
        let resp = client()
            .get(proxy.url("/nope"))
            .send()
            .await
            .expect("request");
        assert_error_response(resp, 404).await;
    })
    .await;
}

/// A held request's status, body and `Connection` header.
type Answered = (u16, Bytes, Option<String>);

/// Starts a proxy in front of a gated backend and a held `/api/slow` request; returns once the
/// request has reached the backend.
struct HeldRequest {
    proxy: TestProxy,
    gate: Gate,
    response: tokio::task::JoinHandle<Result<Answered, reqwest::Error>>,
    _backend: support::Backend,
}

fn slow_body() -> Bytes {
    Bytes::from(
        (0..200_000u32)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

async fn hold_a_request(shutdown_grace: &str) -> HeldRequest {
    let gate = Gate::new();
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel();
    let backend = gated_backend("slow", gate.clone(), arrived_tx, slow_body()).await;
    let proxy = TestProxy::start(&upstream_config(
        backend.addr,
        &format!("shutdown_grace = \"{shutdown_grace}\""),
    ))
    .await;
    let url = proxy.url("/api/slow");
    let response = tokio::spawn(async move {
        let resp = client().get(url).send().await?;
        let status = resp.status().as_u16();
        let connection = header(&resp, "connection");
        Ok((status, resp.bytes().await?, connection))
    });
    tokio::time::timeout(Duration::from_secs(10), arrived_rx.recv())
        .await
        .expect("slow request never reached the backend")
        .expect("channel");
    HeldRequest {
        proxy,
        gate,
        response,
        _backend: backend,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_request_finish_then_exits_zero() {
    with_timeout(60, async {
        let HeldRequest {
            mut proxy,
            gate,
            response,
            _backend,
        } = hold_a_request("30s").await;

        proxy.send_signal("TERM");
        // The backend takes ~1.5 s to answer the in-flight request.
        let opener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            gate.open();
        });
        let (status, body, connection) = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("in-flight request did not complete after SIGTERM")
            .expect("request task")
            .expect("in-flight request failed after SIGTERM");
        assert_eq!(status, 200);
        assert_eq!(body, slow_body(), "in-flight response body was cut short");
        // the connection is not kept for another request once shutdown has begun
        assert_eq!(connection.as_deref(), Some("close"));
        opener.await.expect("opener");

        let exit = proxy
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("proxy did not exit within 5s of its last request finishing");
        assert!(exit.success(), "proxy exited with {exit:?} after SIGTERM");

        let connect = tokio::net::TcpStream::connect(proxy.addr).await;
        assert!(
            connect.is_err(),
            "a new connection was accepted after the proxy exited"
        );
    })
    .await;
}

/// Polls until a TCP connect to `addr` is refused; false if it still succeeds after `max`.
async fn refused_within(addr: SocketAddr, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// With a request in flight, `signal` closes the listener at once, lets the request finish,
/// then the process exits 0.
async fn drains_on(signal: &str) {
    let HeldRequest {
        mut proxy,
        gate,
        response,
        _backend,
    } = hold_a_request("30s").await;

    proxy.send_signal(signal);
    assert!(
        refused_within(proxy.addr, Duration::from_secs(3)).await,
        "new connections are still accepted 3s after SIG{signal} while draining"
    );
    assert!(
        proxy.wait_exit(Duration::from_millis(1)).await.is_none(),
        "proxy exited on SIG{signal} while a request was still in flight"
    );

    gate.open();
    let (status, body, _) = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("in-flight request did not complete")
        .expect("request task")
        .expect("in-flight request failed");
    assert_eq!((status, body.len()), (200, slow_body().len()));
    let exit = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("proxy did not exit after draining");
    assert!(
        exit.success(),
        "proxy exited with {exit:?} after SIG{signal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_while_draining() {
    with_timeout(60, drains_on("TERM")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_drains_and_exits_zero() {
    with_timeout(60, drains_on("INT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_wait_for_stuck_requests() {
    with_timeout(60, async {
        let HeldRequest {
            mut proxy,
            gate: _gate,
            response,
            _backend,
        } = hold_a_request("1s").await;

        let started = Instant::now();
        proxy.send_signal("TERM");
        let exit = proxy
            .wait_exit(Duration::from_secs(8))
            .await
            .expect("proxy ignored shutdown_grace = 1s with a stuck request");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900),
            "proxy exited after {elapsed:?}, before the 1s grace period was over"
        );
        assert!(exit.success(), "proxy exited with {exit:?}");
        response.abort();
    })
    .await;
}

/// An HTTP/1.1 client that hangs up while its request waits on the upstream: the request is
/// dropped, and so is the upstream connection carrying it (the upstream sees it close), as nginx
/// does (`proxy_ignore_client_abort off`). Holding it would let clients that hang up pile up
/// work on the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_upstream_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    with_timeout(60, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<&'static str>();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "proxy closed before the head");
                head.extend_from_slice(&buf[..n]);
            }
            seen_tx.send("request").unwrap();
            // never answers: waits for the proxy to give up on the request
            let closed = matches!(conn.read(&mut buf).await, Ok(0) | Err(_));
            seen_tx
                .send(if closed { "closed" } else { "bytes" })
                .unwrap();
        });
        let proxy = TestProxy::start(&upstream_config(upstream, "")).await;
        let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        client
            .write_all(b"GET /api/slow HTTP/1.1\r\nHost: h.test\r\n\r\n")
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv()).await;
        assert_eq!(first.unwrap(), Some("request"));
        drop(client);
        let then = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv()).await;
        assert_eq!(
            then.ok().flatten(),
            Some("closed"),
            "the upstream connection outlived the client that hung up"
        );
    })
    .await;
}
