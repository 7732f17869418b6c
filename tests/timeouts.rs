//! Connection and upstream timeouts, end to end: `header_read` (slowloris), `idle` keep-alive, a
//! slow response in flight not counting as idle, and `upstream_response` as the read timeout
//! between two frames of an upstream response body (a stall cuts the client, steady streaming
//! does not). A slow client upload is covered in tests/streaming.rs.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::Response;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{
    client, raw_connect, read_response, sleepy_backend, with_timeout, RawConn, RawResponse,
    TestProxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// `/local` is answered by the proxy itself; everything else goes to `upstream` (or, without one,
/// to a closed port, for tests that never proxy).
fn config(timeouts: &str, upstream: Option<SocketAddr>) -> String {
    let upstream = upstream.map_or_else(|| "127.0.0.1:9".to_string(), |a| a.to_string());
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
timeouts = {{ {timeouts} }}

[[site]]
  [[site.route]]
  exact = "/local"
  respond = {{ status = 200, body = "local", content_type = "text/plain" }}

  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{upstream}"]
"#
    )
}

const LOCAL_GET: &str = "GET /local HTTP/1.1\r\nHost: t\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// A raw keep-alive client
// ---------------------------------------------------------------------------------------------

async fn send(conn: &mut RawConn, bytes: &str) {
    conn.get_mut()
        .write_all(bytes.as_bytes())
        .await
        .expect("write to proxy");
}

/// Sends `request` on `conn` and reads its response, which must be a 200 with `body`.
async fn exchange_ok(conn: &mut RawConn, request: &str, body: &str, what: &str) -> RawResponse {
    send(conn, request).await;
    let response = read_response(conn)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        (response.status, response.body_text().as_str()),
        (200, body),
        "{what}: unexpected response {response:?}"
    );
    response
}

/// How the wait for the proxy to close a connection ended.
struct Closed {
    /// Time from `since` until EOF or a read error (reset); `None` if still open at the limit.
    after: Option<Duration>,
    /// Anything the proxy sent before closing.
    bytes: Vec<u8>,
}

/// Reads until the proxy closes `conn` (EOF or a reset), giving up once `since + limit` passes.
async fn wait_closed(conn: &mut RawConn, since: Instant, limit: Duration) -> Closed {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(since + limit);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Closed {
                    after: Some(since.elapsed()),
                    bytes,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => return Closed { after: None, bytes },
        }
    }
}

/// Waits `period` on an idle connection, asserting the proxy neither closes it nor sends anything.
async fn assert_stays_open(conn: &mut RawConn, period: Duration, what: &str) {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(period, conn.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("{what}: closed by the proxy after {:?}", started.elapsed()),
        Ok(Ok(n)) => panic!(
            "{what}: unexpected bytes from the proxy: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Ok(Err(e)) => panic!("{what}: read error after {:?}: {e}", started.elapsed()),
    }
}

// ---------------------------------------------------------------------------------------------
// A backend whose response body is sent in timed pieces
// ---------------------------------------------------------------------------------------------

struct StreamingBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for StreamingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers every request with a 200 whose chunked body is `plan`: each piece is sent after its
/// delay (counted from the previous piece; the head goes out at once).
async fn streaming_backend(plan: Vec<(Duration, &'static str)>) -> StreamingBackend {
    let plan: Vec<(Duration, Bytes)> = plan
        .into_iter()
        .map(|(delay, piece)| (delay, Bytes::from_static(piece.as_bytes())))
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("local_addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let plan = plan.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let pieces = futures_util::stream::unfold(
                        plan.clone().into_iter(),
                        |mut rest: std::vec::IntoIter<(Duration, Bytes)>| async move {
                            let (delay, piece) = rest.next()?;
                            tokio::time::sleep(delay).await;
                            Some((Ok::<_, Infallible>(Frame::data(piece)), rest))
                        },
                    );
                    let response = Response::builder()
                        .header("content-type", "text/plain")
                        .body(StreamBody::new(pieces))
                        .expect("response");
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    StreamingBackend { addr, task }
}

// ---------------------------------------------------------------------------------------------
// header_read
// ---------------------------------------------------------------------------------------------

/// With header_read = 500ms, a new connection that sends `first` (maybe nothing) and then stays
/// silent is closed 0.4-3 s after it connected.
async fn cut_after_header_read(first: &str, what: &str) {
    let proxy = TestProxy::start(&config(r#"header_read = "500ms""#, None)).await;
    let started = Instant::now();
    let mut conn = raw_connect(&proxy).await;
    if !first.is_empty() {
        send(&mut conn, first).await;
    }
    let closed = wait_closed(&mut conn, started, Duration::from_secs(8)).await;
    let after = closed.after.unwrap_or_else(|| {
        panic!("{what} was still open 8s after connecting (header_read = 500ms)")
    });
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(3),
        "header_read = 500ms: {what} cut {after:?} after connecting; proxy sent {:?}",
        String::from_utf8_lossy(&closed.bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_request_head_is_cut_after_header_read() {
    // a slowloris client: a head without its final blank line, then nothing
    let partial = "GET / HTTP/1.1\r\nHost: x\r\n";
    with_timeout(
        30,
        cut_after_header_read(partial, "an incomplete request head"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_cut_after_header_read() {
    with_timeout(
        30,
        cut_after_header_read("", "a connection that sent nothing"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_request_is_answered_under_header_read() {
    with_timeout(30, async {
        let proxy = TestProxy::start(&config(r#"header_read = "500ms""#, None)).await;
        let mut conn = raw_connect(&proxy).await;
        exchange_ok(
            &mut conn,
            LOCAL_GET,
            "local",
            "a complete request sent at once",
        )
        .await;

        // The same over reqwest, for a client that is not hand-rolled.
        let resp = client()
            .get(proxy.url("/local"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), "local");
    })
    .await;
}

/// docs/config.md: `header_read` is the time to send a complete head "once it started one", so it applies
/// to every request on a kept-alive connection, not just the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_head_on_kept_alive_connection_is_cut_after_header_read() {
    with_timeout(30, async {
        // idle is long: only header_read may close this connection within the test's window.
        let proxy =
            TestProxy::start(&config(r#"header_read = "500ms", idle = "60s""#, None)).await;
        let mut conn = raw_connect(&proxy).await;
        exchange_ok(&mut conn, LOCAL_GET, "local", "first request").await;
        // Idle for longer than header_read: the connection is idle, not reading a head, so it stays.
        assert_stays_open(
            &mut conn,
            Duration::from_secs(1),
            "idle keep-alive connection with idle = 60s",
        )
        .await;

        let started = Instant::now();
        send(&mut conn, "GET /local HTTP/1.1\r\nHost: x\r\n").await;
        let closed = wait_closed(&mut conn, started, Duration::from_secs(8)).await;
        let after = closed.after.unwrap_or_else(|| {
            panic!(
                "a second request head left incomplete was still open 8s later (header_read = 500ms)"
            )
        });
        assert!(
            after >= Duration::from_millis(400) && after < Duration::from_secs(3),
            "header_read = 500ms: incomplete second head cut after {after:?}; proxy sent {:?}",
            String::from_utf8_lossy(&closed.bytes)
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_idle() {
    with_timeout(30, async {
        let proxy = TestProxy::start(&config(r#"idle = "700ms", header_read = "5s""#, None)).await;
        let mut conn = raw_connect(&proxy).await;
        exchange_ok(&mut conn, LOCAL_GET, "local", "request 1").await;
        let first_response = Instant::now();
        // Two more requests, each after 400 ms of silence: 800 ms in all, more than idle, so the
        // connection survives only if the idle clock restarts after every response.
        for n in 2..=3 {
            assert_stays_open(
                &mut conn,
                Duration::from_millis(400),
                &format!("keep-alive connection 400ms before request {n} (idle = 700ms)"),
            )
            .await;
            exchange_ok(&mut conn, LOCAL_GET, "local", &format!("request {n}")).await;
        }
        assert!(first_response.elapsed() >= Duration::from_millis(800));

        let last_response = Instant::now();
        let closed = wait_closed(&mut conn, last_response, Duration::from_secs(8)).await;
        assert!(
            closed.bytes.is_empty(),
            "unexpected bytes on an idle connection: {:?}",
            String::from_utf8_lossy(&closed.bytes)
        );
        let after = closed.after.unwrap_or_else(|| {
            panic!("idle = 700ms: the connection was still open 8s after its last response")
        });
        assert!(
            after >= Duration::from_millis(400) && after < Duration::from_secs(3),
            "idle = 700ms: the connection was closed {after:?} after its last response"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_in_flight_is_not_idle() {
    with_timeout(30, async {
        let backend = sleepy_backend(Duration::from_millis(1500)).await;
        // header_read is short too, so the connection's deadline watchdog wakes up several times
        // while the request is in flight (with the 10s default it would sleep through it).
        let proxy = TestProxy::start(&config(
            r#"idle = "500ms", header_read = "300ms""#,
            Some(backend.addr),
        ))
        .await;
        let mut conn = raw_connect(&proxy).await;
        let started = Instant::now();
        let response = exchange_ok(
            &mut conn,
            "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n",
            "late",
            "a 1.5s upstream answer with idle = 500ms",
        )
        .await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1400),
            "the sleepy backend answered after only {elapsed:?}"
        );
        // Had idle fired mid-request, the connection would be shutting down: the response would
        // say `connection: close` and the connection would end after it.
        assert!(
            !response
                .all("connection")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("close")),
            "the slow response carries connection: close: {response:?}"
        );
        exchange_ok(
            &mut conn,
            LOCAL_GET,
            "local",
            "a second request on the connection after the slow one",
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// upstream_response between body frames
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_body_stall_cuts_the_client_after_upstream_response() {
    with_timeout(30, async {
        let backend = streaming_backend(vec![
            (Duration::ZERO, "first chunk\n"),
            (Duration::from_secs(5), "rest\n"),
        ])
        .await;
        let proxy = TestProxy::start(&config(
            r#"upstream_response = "500ms""#,
            Some(backend.addr),
        ))
        .await;
        let started = Instant::now();
        let mut resp = client()
            .get(proxy.url("/stream"))
            .send()
            .await
            .expect("response head");
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.expect("first chunk");
        assert_eq!(first.as_deref(), Some(&b"first chunk\n"[..]));
        let first_at = Instant::now();
        assert!(
            first_at - started < Duration::from_secs(2),
            "the head and first chunk took {:?}",
            first_at - started
        );

        let rest = tokio::time::timeout(Duration::from_secs(8), resp.chunk()).await;
        let after = first_at.elapsed();
        match rest {
            Err(_) => panic!("the client was still waiting 8s after the upstream body stalled"),
            Ok(Ok(Some(data))) => panic!(
                "got more body after {after:?} instead of a cut: {:?}",
                String::from_utf8_lossy(&data)
            ),
            Ok(Ok(None)) => panic!(
                "the body ended cleanly after {after:?}: a truncated body must not look complete"
            ),
            Ok(Err(_)) => {}
        }
        assert!(
            after >= Duration::from_millis(350) && after < Duration::from_secs(3),
            "upstream_response = 500ms: the stalled body was cut {after:?} after its first chunk"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_slow_upstream_body_is_not_cut() {
    with_timeout(30, async {
        // A piece every 200 ms for 2 s: the whole body takes four times upstream_response, but
        // no single wait comes near it.
        let plan: Vec<(Duration, &'static str)> = (0..10)
            .map(|_| (Duration::from_millis(200), "tick\n"))
            .collect();
        let backend = streaming_backend(plan).await;
        let proxy = TestProxy::start(&config(
            r#"upstream_response = "500ms""#,
            Some(backend.addr),
        ))
        .await;
        let started = Instant::now();
        let mut resp = client()
            .get(proxy.url("/stream"))
            .send()
            .await
            .expect("response head");
        assert_eq!(resp.status(), 200);
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(data)) => body.extend_from_slice(&data),
                Ok(None) => break,
                Err(e) => panic!(
                    "steady body cut after {:?} and {} bytes: {e}",
                    started.elapsed(),
                    body.len()
                ),
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(String::from_utf8_lossy(&body), "tick\n".repeat(10));
        assert!(
            elapsed >= Duration::from_millis(1800),
            "the body was meant to take 2s, took {elapsed:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// per-route upstream timeouts (`timeouts` on a site or route)
// ---------------------------------------------------------------------------------------------

/// `[server]` waits 60 s for an upstream; the first site 3 s, its `/fast` route 1 s; the second
/// site inherits the server's.
fn route_timeouts_config(upstream: &str, key: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
timeouts = {{ {key} = "60s" }}

[[site]]
hosts = ["a.test"]
timeouts = {{ {key} = "3s" }}
  [[site.route]]
  path = "/fast"
  upstream = "backend"
  timeouts = {{ {key} = "1s" }}

  [[site.route]]
  path = "/"
  upstream = "backend"

[[site]]
hosts = ["b.test"]
  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{upstream}"]
"#
    )
}

/// `GET path` for `host` with `Connection: close`: the status and how long it took; `None` for
/// no answer within `max`.
async fn timed(
    proxy: &TestProxy,
    host: &str,
    path: &str,
    max: Duration,
) -> Option<(u16, Duration)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let started = Instant::now();
    let answer = support::raw_request(proxy.addr, &request);
    let resp = tokio::time::timeout(max, answer).await.ok()?;
    Some((resp.status, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_upstream_response_beats_its_site_and_the_server() {
    with_timeout(40, async {
        let backend = sleepy_backend(Duration::from_secs(5)).await;
        let config = route_timeouts_config(&backend.addr.to_string(), "upstream_response");
        let proxy = TestProxy::start(&config).await;
        let long = Duration::from_secs(20);
        let (fast, site, server) = tokio::join!(
            timed(&proxy, "a.test", "/fast", long),
            timed(&proxy, "a.test", "/other", long),
            timed(&proxy, "b.test", "/", long),
        );
        let (status, took) = fast.expect("an answer on /fast");
        assert_eq!(status, 504);
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "the route's 1s: {took:?}"
        );
        let (status, took) = site.expect("an answer on /other");
        assert_eq!(status, 504, "the route inherits its site's 3s");
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_millis(4800),
            "the site's 3s: {took:?}"
        );
        let (status, took) = server.expect("an answer on b.test");
        assert_eq!(
            status, 200,
            "the server's 60s: the 5s backend answers ({took:?})"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_upstream_connect_bounds_connect_and_handshake() {
    with_timeout(40, async {
        // accepts TCP and holds the sockets without a byte of TLS: the handshake never ends
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let upstream = format!("https://{addr}");
        let config = route_timeouts_config(&upstream, "upstream_connect");
        let proxy = TestProxy::start(&config).await;
        let (fast, server) = tokio::join!(
            timed(&proxy, "a.test", "/fast", Duration::from_secs(20)),
            timed(&proxy, "b.test", "/", Duration::from_secs(5)),
        );
        let (status, took) = fast.expect("an answer on /fast");
        assert_eq!(status, 504);
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "the route's 1s: {took:?}"
        );
        assert_eq!(server, None, "the server's 60s: still connecting after 5s");
        silent.abort();
    })
    .await;
}

#[test]
fn route_timeouts_are_checked_key_by_key() {
    let check = |timeouts: &str| {
        let config = route_timeouts_config("127.0.0.1:9", "upstream_connect")
            .replace("timeouts = { upstream_connect = \"1s\" }", timeouts);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, &config).unwrap();
        let out = support::run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
        assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
        let line = config.lines().position(|l| l.contains(timeouts)).unwrap() + 1;
        assert!(
            out.stderr.contains(&format!("gatehouse.toml:{line}:")),
            "not at line {line}: {}",
            out.stderr
        );
        out.stderr
    };
    let err = check("timeouts = { upstream_response = \"soon\" }");
    assert!(
        err.contains("`site.route.timeouts.upstream_response`"),
        "{err}"
    );
    assert!(err.contains("`soon` is not a valid duration"), "{err}");
    // the connection side is the server's: a route's connection is not its own
    let err = check("timeouts = { idle = \"5s\" }");
    assert!(err.contains("unknown field `idle`"), "{err}");
    assert!(
        err.contains("`upstream_connect` or `upstream_response`"),
        "{err}"
    );
}
