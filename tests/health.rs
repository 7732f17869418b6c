//! Upstream health end to end: three real backends that can be killed, broken and revived under
//! load; active checks, passive ejection, retries and their limits, all servers down.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How a backend behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ok,
    /// 500 on the health path, 200 elsewhere.
    SickHealth,
    /// Reads the request head, then closes without answering (a crashing app).
    Slam,
    /// Reads the whole request (body included), then closes without answering.
    SlamAfterBody,
}

/// A backend on a fixed address that can be stopped (listener and every connection closed) and
/// started again, counting the requests (not health checks) that reach it.
struct Server {
    addr: SocketAddr,
    name: &'static str,
    requests: Arc<AtomicU64>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    async fn start(name: &'static str, mode: Mode) -> Arc<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(Server {
            addr: listener.local_addr().unwrap(),
            name,
            requests: Arc::new(AtomicU64::new(0)),
            task: Mutex::new(None),
        });
        server.run(listener, mode);
        server
    }

    fn run(&self, listener: TcpListener, mode: Mode) {
        let (name, requests) = (self.name, self.requests.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let requests = requests.clone();
                conns.spawn(serve_conn(stream, name, mode, requests));
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Closes the listener and every open connection (the JoinSet dies with the task).
    fn kill(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    async fn restart(&self, mode: Mode) {
        self.kill();
        let mut bound = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.run(bound.expect("rebind the same port"), mode);
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve_conn(
    mut stream: tokio::net::TcpStream,
    name: &'static str,
    mode: Mode,
    requests: Arc<AtomicU64>,
) {
    if matches!(mode, Mode::Slam | Mode::SlamAfterBody) {
        let mut buf = vec![0u8; 65536];
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&seen).to_string();
        if !head.contains(" /health") {
            requests.fetch_add(1, Ordering::SeqCst);
        }
        if mode == Mode::SlamAfterBody {
            let want: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut got = seen.len() - (head.find("\r\n\r\n").unwrap() + 4);
            while got < want {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        }
        let _ = stream.shutdown().await;
        return;
    }
    let service = service_fn(move |req: Request<Incoming>| {
        let requests = requests.clone();
        async move {
            let health = req.uri().path().starts_with("/health");
            if !health {
                requests.fetch_add(1, Ordering::SeqCst);
            }
            let _ = req.into_body().collect().await;
            let status = if health && mode == Mode::SickHealth {
                500
            } else {
                200
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("x-backend", name)
                    .body(Full::new(bytes::Bytes::from(name)))
                    .unwrap(),
            )
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn config(servers: &[&Arc<Server>], upstream: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[[site]]
  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = [{}]
{upstream}
"#,
        list.join(", ")
    )
}

/// Steady GET load from `tasks` clients until `stop` is set: (ok, failed, per-backend counts).
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn load(proxy: &TestProxy, tasks: usize) -> Load {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = (0..tasks)
        .map(|_| {
            let (ok, failed, failures, stop) =
                (ok.clone(), failed.clone(), failures.clone(), stop.clone());
            let url = proxy.url("/work");
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.lock().unwrap().push(format!("{}", r.status()));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.lock().unwrap().push(e.to_string());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    Load {
        ok,
        failed,
        failures,
        stop,
        tasks: handles,
    }
}

impl Load {
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            failures,
        )
    }
}

fn log_count(proxy: &TestProxy, needle: &str, server: &Server) -> usize {
    let addr = server.addr.to_string();
    proxy
        .logs()
        .iter()
        .filter(|l| l.contains(needle) && l.contains(&addr))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_costs_no_failed_request_and_rejoins_after_passing_checks() {
    with_timeout(90, async {
        let (a, b, c) = (
            Server::start("a", Mode::Ok).await,
            Server::start("b", Mode::Ok).await,
            Server::start("c", Mode::Ok).await,
        );
        let health = r#"health = { path = "/health", interval = "300ms", timeout = "200ms", healthy = 2, unhealthy = 2 }
eject = { cooldown = "1s" }"#;
        let proxy = TestProxy::start(&config(&[&a, &b, &c], health)).await;
        let load = load(&proxy, 4);
        eventually(Duration::from_secs(10), "traffic on c", || c.count() > 20).await;

        // c crashes: it reads requests and closes without answering (its health checks fail too)
        let killed_at = Instant::now();
        c.restart(Mode::Slam).await;
        eventually(Duration::from_secs(10), "c marked down", || {
            log_count(&proxy, "upstream server down", &c) == 1
        })
        .await;
        let down_after = killed_at.elapsed();
        let at_down = c.count();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(c.count(), at_down, "no request reached c once it was down");
        assert!(
            down_after < Duration::from_millis(300 * 2 * 11 / 10 + 700),
            "down after {down_after:?} (interval 300ms x unhealthy 2, jitter, margin)"
        );

        // c comes back: it rejoins after two passing checks
        let back_at = Instant::now();
        c.restart(Mode::Ok).await;
        let before = c.count();
        eventually(Duration::from_secs(10), "c back in rotation", || c.count() > before + 10).await;
        let rejoined = back_at.elapsed();
        let (ok, failed, failures) = load.finish().await;
        eprintln!("ok {ok}, failed {failed}; c down after {down_after:?}, back after {rejoined:?}; a {} b {} c {}", a.count(), b.count(), c.count());
        assert_eq!(failed, 0, "failures: {failures:?}");
        assert!(rejoined >= Duration::from_millis(300), "rejoined after {rejoined:?}: needs two passing checks");
        assert_eq!(log_count(&proxy, "upstream server up", &c), 2, "up at start and once when back");
        assert_eq!(log_count(&proxy, "upstream server down", &c), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_its_health_check_is_taken_out() {
    with_timeout(30, async {
        let (a, sick) = (
            Server::start("a", Mode::Ok).await,
            Server::start("sick", Mode::SickHealth).await,
        );
        let health = r#"health = { path = "/health", interval = "200ms", unhealthy = 1 }"#;
        let proxy = TestProxy::start(&config(&[&a, &sick], health)).await;
        for _ in 0..20 {
            let resp = client().get(proxy.url("/x")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(sick.count(), 0, "never in rotation: its first check failed");
        assert_eq!(log_count(&proxy, "upstream server down", &sick), 1);
        let line = proxy
            .logs()
            .into_iter()
            .find(|l| l.contains("upstream server down"))
            .unwrap();
        assert!(line.contains("status 500"), "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_server_is_ejected_by_passive_checks_alone() {
    with_timeout(30, async {
        let (a, bad) = (
            Server::start("a", Mode::Ok).await,
            Server::start("bad", Mode::Slam).await,
        );
        let upstream = r#"eject = { failures = 3, cooldown = "30s" }"#;
        let proxy = TestProxy::start(&config(&[&a, &bad], upstream)).await;
        for i in 0..40 {
            let resp = client().get(proxy.url("/x")).send().await.unwrap();
            assert_eq!(
                resp.status(),
                200,
                "request {i}: retried on the good server"
            );
        }
        assert_eq!(
            bad.count(),
            3,
            "three failures, then ejected for the cool-down"
        );
        assert_eq!(log_count(&proxy, "upstream server ejected", &bad), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_server_comes_back_through_a_trial_request() {
    with_timeout(30, async {
        let (a, flaky) = (
            Server::start("a", Mode::Ok).await,
            Server::start("flaky", Mode::Slam).await,
        );
        let upstream = r#"eject = { failures = 2, cooldown = "1s" }"#;
        let proxy = TestProxy::start(&config(&[&a, &flaky], upstream)).await;
        for _ in 0..10 {
            assert_eq!(status(&proxy, "/x").await, 200);
        }
        assert_eq!(log_count(&proxy, "upstream server ejected", &flaky), 1);
        flaky.restart(Mode::Ok).await;
        let before = flaky.count();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for _ in 0..10 {
            assert_eq!(status(&proxy, "/x").await, 200);
        }
        assert!(
            flaky.count() > before + 2,
            "back in rotation after its trial"
        );
        assert_eq!(log_count(&proxy, "trial request succeeded", &flaky), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_is_503_with_retry_after_and_each_transition_logged_once() {
    with_timeout(30, async {
        let (a, b) = (Server::start("a", Mode::Ok).await, Server::start("b", Mode::Ok).await);
        let health = r#"health = { path = "/health", interval = "200ms", timeout = "100ms", unhealthy = 2, healthy = 1 }"#;
        let proxy = TestProxy::start(&config(&[&a, &b], health)).await;
        assert_eq!(status(&proxy, "/x").await, 200);
        a.kill();
        b.kill();
        eventually(Duration::from_secs(5), "both down", || {
            log_count(&proxy, "upstream server down", &a) == 1 && log_count(&proxy, "upstream server down", &b) == 1
        })
        .await;
        for _ in 0..5 {
            let resp = client().get(proxy.url("/x")).send().await.unwrap();
            assert_eq!(resp.status(), 503);
            assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
            assert!(resp.text().await.unwrap().contains("no healthy server"));
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(log_count(&proxy, "upstream server down", &a), 1, "logged once, not per check");
        a.restart(Mode::Ok).await;
        eventually(Duration::from_secs(5), "a back", || log_count(&proxy, "upstream server up", &a) == 2).await;
        assert_eq!(status(&proxy, "/x").await, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_when_nothing_was_sent() {
    with_timeout(30, async {
        // the body reached the server, which then died: not retried (it may have acted on it)
        let (eater, good) = (
            Server::start("eater", Mode::SlamAfterBody).await,
            Server::start("good", Mode::Ok).await,
        );
        let proxy = TestProxy::start(&config(&[&eater, &good], "balance = \"round_robin\"")).await;
        let mut statuses = HashMap::new();
        for _ in 0..4 {
            let resp = client()
                .post(proxy.url("/orders"))
                .body("{\"qty\":1}")
                .send()
                .await
                .unwrap();
            *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
        }
        assert_eq!(statuses.get(&502), Some(&2), "{statuses:?}");
        assert_eq!(statuses.get(&200), Some(&2), "{statuses:?}");
        assert_eq!(eater.count(), 2);
        assert_eq!(good.count(), 2, "no POST was sent twice");

        // the connect itself failed: nothing was sent, so it goes to the next server
        let dead = closed_port_addr().await;
        let cfg = config(&[&good], "").replace(
            &format!("\"{}\"", good.addr),
            &format!("\"{dead}\", \"{}\"", good.addr),
        );
        let proxy = TestProxy::start(&cfg).await;
        let before = good.count();
        for _ in 0..4 {
            let resp = client()
                .post(proxy.url("/orders"))
                .body("{\"qty\":1}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(good.count(), before + 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_every_server_fails() {
    with_timeout(30, async {
        let (a, b) = (
            Server::start("a", Mode::Slam).await,
            Server::start("b", Mode::Slam).await,
        );
        let upstream = "eject = { failures = 0 }\nretries = 2\nretry_budget = \"20%\"";
        let proxy = TestProxy::start(&config(&[&a, &b], upstream)).await;
        let requests = 100;
        for _ in 0..requests {
            let resp = client().get(proxy.url("/x")).send().await.unwrap();
            assert_eq!(resp.status(), 502);
        }
        let attempts = a.count() + b.count();
        eprintln!("{requests} requests made {attempts} attempts");
        // without a budget: up to 3 attempts each (300); with it: 20% more plus a reserve of 3
        assert!(
            attempts <= requests + requests / 5 + 3,
            "{attempts} attempts"
        );
        assert!(attempts > requests, "some retries did happen");
    })
    .await;
}

/// The status `path` answers with now.
async fn status(proxy: &TestProxy, path: &str) -> u16 {
    let resp = client().get(proxy.url(path)).send().await.unwrap();
    resp.status().as_u16()
}
