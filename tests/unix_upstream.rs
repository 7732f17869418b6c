//! Upstream servers on Unix sockets (`servers = ["unix:app.sock"]`): proxied like TCP ones (path,
//! `Host`, `X-Forwarded-*`), over kept-alive connections; balanced with TCP servers in one
//! upstream; taken out by a failing health check and by failed connects; named by their path in
//! the access log and the metrics. Real binary, real hyper backends on sockets in a temp dir.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::task::JoinHandle;

/// An HTTP/1.1 server on a Unix socket: `/health` answers 200 while `healthy`, 503 after;
/// anything else is echoed ([`render_echo`]) with `x-backend: NAME`.
struct UnixBackend {
    path: PathBuf,
    accepted: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for UnixBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_backend(path: &Path, name: &'static str) -> UnixBackend {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(AtomicBool::new(true));
    let (count, up) = (accepted.clone(), healthy.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let up = up.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let up = up.load(Ordering::SeqCst);
                async move {
                    let resp = if req.uri().path() == "/health" {
                        text_response(if up { 200 } else { 503 }, "health")
                    } else {
                        let body = render_echo(req).await;
                        hyper::Response::builder()
                            .header("x-backend", name)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap()
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    UnixBackend {
        path: path.to_path_buf(),
        accepted,
        healthy,
        task,
    }
}

/// Writes `config` next to the sockets in `dir` and starts the proxy on it.
async fn start_in(dir: &Path, config: &str) -> TestProxy {
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    TestProxy::start_at(&path).await
}

async fn get(proxy: &TestProxy, host: &str, path: &str) -> reqwest::Response {
    client()
        .get(proxy.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_upstream_is_proxied_like_tcp_over_kept_alive_connections() {
    with_timeout(30, async {
        let dir = tempfile::tempdir().unwrap();
        let backend = unix_backend(&dir.path().join("app.sock"), "unix");
        // a relative path: from the config file's folder
        let config = r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 2

[[site]]
  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["unix:app.sock"]
"#;
        let proxy = start_in(dir.path(), config).await;
        let resp = get(&proxy, "App.Test", "/a/b?c=1").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-backend").as_deref(), Some("unix"));
        let echo = Echo::parse(&resp.text().await.unwrap());
        assert_eq!(echo.uri, "/a/b?c=1");
        assert_eq!(
            echo.header("host").as_deref(),
            Some("app.test"),
            "the canonical Host"
        );
        assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(echo.header("x-forwarded-host").as_deref(), Some("app.test"));
        assert_eq!(echo.header("x-real-ip").as_deref(), Some("127.0.0.1"));

        for _ in 0..5 {
            assert_eq!(get(&proxy, "app.test", "/again").await.status(), 200);
        }
        assert_eq!(
            backend.accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );

        // named by its path in the access log and the metrics
        let socket = backend.path.display().to_string();
        eventually(
            Duration::from_secs(5),
            "an access log line naming the socket",
            || {
                proxy.logs().iter().any(|l| {
                    json_str_field(l, "message").as_deref() == Some("request")
                        && json_str_field(l, "upstream").as_deref() == Some(socket.as_str())
                })
            },
        )
        .await;
        let admin = proxy.admin_addr().await;
        let metrics = raw_request(
            admin,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let label = format!("server=\"{socket}\"");
        assert!(
            metrics
                .body_text()
                .lines()
                .any(|l| l.starts_with("gatehouse_upstream_requests_total") && l.contains(&label)),
            "no upstream counter with {label}"
        );
    })
    .await;
}

fn mixed_config(tcp: &str, health: &str) -> String {
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
servers = ["unix:app.sock", "{tcp}"]
{health}
"#
    )
}

/// Which backend answered each of `n` requests.
async fn answered_by(proxy: &TestProxy, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let resp = get(proxy, "app.test", "/").await;
        assert_eq!(resp.status(), 200);
        names.push(header(&resp, "x-backend").unwrap_or_default());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_and_tcp_servers_share_an_upstream_and_a_failing_check_takes_one_out() {
    with_timeout(30, async {
        let dir = tempfile::tempdir().unwrap();
        let unix = unix_backend(&dir.path().join("app.sock"), "unix");
        let tcp = echo_backend("tcp").await;
        let health = "health = { path = \"/health\", interval = \"200ms\", timeout = \"200ms\", unhealthy = 1, healthy = 1 }";
        let proxy = start_in(dir.path(), &mixed_config(&tcp.addr.to_string(), health)).await;
        let mut names = answered_by(&proxy, 4).await;
        names.sort();
        assert_eq!(names, ["tcp", "tcp", "unix", "unix"], "round robin over both");

        unix.healthy.store(false, Ordering::SeqCst);
        eventually(Duration::from_secs(5), "the unix server marked down", || {
            proxy
                .logs()
                .iter()
                .any(|l| l.contains("upstream server down") && l.contains("app.sock"))
        })
        .await;
        assert_eq!(answered_by(&proxy, 4).await, ["tcp"; 4]);

        let ups = || {
            let logs = proxy.logs();
            let up = |l: &&String| l.contains("upstream server up") && l.contains("app.sock");
            logs.iter().filter(up).count()
        };
        let before = ups();
        unix.healthy.store(true, Ordering::SeqCst);
        eventually(Duration::from_secs(5), "the unix server back", || ups() > before).await;
        assert!(answered_by(&proxy, 4).await.contains(&"unix".to_string()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_nobody_listens_on_is_retried_elsewhere_and_ejected() {
    with_timeout(30, async {
        let dir = tempfile::tempdir().unwrap();
        // no server on app.sock: each connect fails at once
        let tcp = echo_backend("tcp").await;
        let proxy = start_in(dir.path(), &mixed_config(&tcp.addr.to_string(), "")).await;
        assert_eq!(
            answered_by(&proxy, 6).await,
            ["tcp"; 6],
            "retried on the TCP server"
        );
        eventually(Duration::from_secs(5), "the socket ejected", || {
            proxy
                .logs()
                .iter()
                .any(|l| l.contains("upstream server ejected") && l.contains("app.sock"))
        })
        .await;
    })
    .await;
}

/// `gatehouse check` on `servers = [SERVERS]`: exit 64 at that line, saying every one of `mentions`.
fn assert_servers_refused(servers: &str, mentions: &[&str]) {
    let config = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n\n[upstream.app]\nservers = [{servers}]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, &config).unwrap();
    let path = path.to_str().unwrap();
    let out = run_gatehouse(&["check", "--config", path], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let line = config
        .lines()
        .position(|l| l.starts_with("servers"))
        .unwrap()
        + 1;
    assert!(
        out.stderr.contains(&format!("{path}:{line}:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("`upstream.app.servers`"),
        "{}",
        out.stderr
    );
    for m in mentions {
        assert!(out.stderr.contains(m), "{m:?} not in:\n{}", out.stderr);
    }
}

#[test]
fn bad_unix_servers_are_config_errors() {
    assert_servers_refused("\"unix:\"", &["names no socket", "unix:/run/app.sock"]);
    let long = format!("\"unix:/{}.sock\"", "d".repeat(120));
    assert_servers_refused(&long, &["bytes long", "at most 107"]);
    assert_servers_refused(
        "\"http://unix:/run/app.sock:\"",
        &["written `unix:PATH` alone"],
    );
    assert_servers_refused(
        "\"unix:/run/app.sock\", \"https://10.0.0.1:443\"",
        &["mix of http and https://"],
    );
}
