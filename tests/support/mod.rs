//! Shared helpers for the end-to-end tests: the real `gatehouse` binary, real hyper backends,
//! raw HTTP/1.1 over TCP, and process introspection. Nothing here is a mock.

#![allow(dead_code)]

pub mod dns;
pub mod pebble;
pub mod redis;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Runs `fut`, panicking if it does not finish within `secs` seconds, so no test can hang.
pub async fn with_timeout<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(value) => value,
        Err(_) => panic!("test did not finish within {secs}s"),
    }
}

/// Polls `probe` every 10 ms until it holds; how long that took. Panics naming `what` after `max`.
pub async fn eventually_async<F, Fut>(max: Duration, what: &str, probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(max, probe)
        .await
        .unwrap_or_else(|| panic!("not within {max:?}: {what}"))
}

/// [`eventually_async`] for a caller that says itself what went wrong: `None` after `max`.
pub async fn poll_until<F, Fut>(max: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        if start.elapsed() >= max {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(start.elapsed())
}

/// [`eventually_async`] for a condition that needs no waiting to check.
pub async fn eventually(max: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    eventually_async(max, what, || std::future::ready(cond())).await
}

// ---------------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------------

/// A config with one plain listener and one route, `/` to upstream `backend` whose one server is
/// `server`; `extra_server` goes into `[server]` as it is (one key per line).
pub fn one_upstream_config(server: impl std::fmt::Display, extra_server: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
{extra_server}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{server}"]
"#
    )
}

/// A running `gatehouse run` process. Killed on drop.
pub struct TestProxy {
    child: Child,
    /// The bound HTTP listener address, as reported by the "listening" log line.
    pub addr: SocketAddr,
    pub pid: u32,
    pub config_path: PathBuf,
    /// The bound HTTPS listener address; `Some` only for proxies started with [`TestProxy::start_tls`]
    /// or [`TestProxy::start_tls_with_files`].
    pub https_addr: Option<SocketAddr>,
    logs: Lines,
    stdout: Lines,
    _dir: tempfile::TempDir,
}

enum LogEvent {
    Line(String),
    Eof,
}

/// Lines read from one of the child's pipes, kept up to date by a thread.
type Lines = Arc<Mutex<Vec<String>>>;

/// Spawns `gatehouse run` on `config` and returns the child, its stderr lines (kept up to date by a
/// background thread that drains the pipe until EOF), a channel announcing every new line, and
/// its stdout lines (drained the same way).
fn spawn_run(
    config_path: &Path,
    envs: &[(&str, &str)],
) -> (Child, Lines, mpsc::UnboundedReceiver<LogEvent>, Lines) {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(config_path)
        .arg("--log-format")
        .arg("json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("spawn gatehouse run");
    let stdout = child.stdout.take().expect("piped stdout");
    let out_lines = Arc::new(Mutex::new(Vec::new()));
    let out_sink = out_lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            out_sink.lock().unwrap().push(line);
        }
    });
    let stderr = child.stderr.take().expect("piped stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let reader = BufReader::new(stderr);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line.clone());
            // The receiver goes away once startup is over; keep draining regardless.
            let _ = tx.send(LogEvent::Line(line));
        }
        let _ = tx.send(LogEvent::Eof);
    });
    (child, logs, rx, out_lines)
}

impl TestProxy {
    /// Writes `config` to a temp file, starts the proxy and waits (10 s max) for its
    /// `"message":"listening"` / `"listener":"http"` log line.
    pub async fn start(config: &str) -> TestProxy {
        Self::start_with_env(config, &[]).await
    }

    pub async fn start_with_env(config: &str, envs: &[(&str, &str)]) -> TestProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(config, envs, dir, false).await
    }

    /// Like [`TestProxy::start`], but also waits for the `"listener":"https"` listening line and
    /// records its address in `https_addr`.
    pub async fn start_tls(config: &str) -> TestProxy {
        Self::start_tls_with_files(config, &[]).await
    }

    /// Like [`TestProxy::start_tls`], but first writes `files` (name, contents) next to the config
    /// file, so the config can refer to them by relative path.
    pub async fn start_tls_with_files(config: &str, files: &[(&str, &str)]) -> TestProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write file");
        }
        Self::start_in(config, &[], dir, true).await
    }

    async fn start_in(
        config: &str,
        envs: &[(&str, &str)],
        dir: tempfile::TempDir,
        want_https: bool,
    ) -> TestProxy {
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self::launch(config_path, config, envs, dir, want_https).await
    }

    /// Runs on a config file that is already in place (e.g. behind symlinks).
    pub async fn start_at(path: &Path) -> TestProxy {
        Self::start_at_with_env(path, &[], false).await
    }

    /// Like [`TestProxy::start_at`], with `envs` set for the process (the file's `${VAR}`s);
    /// with `https`, also waits for the HTTPS listener and records it as [`TestProxy::start_tls`].
    pub async fn start_at_with_env(path: &Path, envs: &[(&str, &str)], https: bool) -> TestProxy {
        let config = std::fs::read_to_string(path).expect("read config");
        let dir = tempfile::tempdir().expect("tempdir");
        Self::launch(path.to_path_buf(), &config, envs, dir, https).await
    }

    async fn launch(
        config_path: PathBuf,
        config: &str,
        envs: &[(&str, &str)],
        dir: tempfile::TempDir,
        want_https: bool,
    ) -> TestProxy {
        let (mut child, logs, mut rx, stdout) = spawn_run(&config_path, envs);
        let pid = child.id();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut addr = None;
        let mut https_addr = None;
        while addr.is_none() || (want_https && https_addr.is_none()) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(LogEvent::Line(line))) => {
                    if let Some(found) = parse_listening_line(&line, "http") {
                        addr = Some(found);
                    }
                    if let Some(found) = parse_listening_line(&line, "https") {
                        https_addr = Some(found);
                    }
                }
                Ok(Some(LogEvent::Eof)) | Ok(None) => {
                    let status = child.wait().ok();
                    panic!(
                        "gatehouse exited before listening (status {status:?}); config:\n{config}\nstderr:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let what = if want_https {
                        "http and https listening lines"
                    } else {
                        "a listening line"
                    };
                    panic!(
                        "gatehouse did not log {what} within 10s; stderr:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
            }
        }
        TestProxy {
            child,
            addr: addr.expect("http address"),
            pid,
            config_path,
            https_addr,
            logs,
            stdout,
            _dir: dir,
        }
    }

    /// The HTTPS listener address (panics for a proxy started without `start_tls*`).
    pub fn https(&self) -> SocketAddr {
        self.https_addr
            .expect("proxy was not started with start_tls, no https address")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// All stderr lines seen so far.
    /// The admin listener's address, from its "listening" line (logged just after the others).
    pub async fn admin_addr(&self) -> SocketAddr {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if let Some(addr) = logs.iter().find_map(|l| parse_listening_line(l, "admin")) {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no admin listening line"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// All stdout lines seen so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn send_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }

    /// Polls for the process to exit; `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extracts `addr` from a JSON log line like
/// `{"message":"listening","listener":"http","addr":"127.0.0.1:4321",...}`.
pub fn parse_listening_line(line: &str, listener: &str) -> Option<SocketAddr> {
    if json_str_field(line, "message")? != "listening" {
        return None;
    }
    if json_str_field(line, "listener")? != listener {
        return None;
    }
    json_str_field(line, "addr")?.parse().ok()
}

/// A minimal reader for a top-level string field of a flat JSON object (no escapes needed for the
/// fields we read). Good enough for log lines; avoids a serde_json dependency.
pub fn json_str_field(line: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\"");
    let mut rest = line;
    while let Some(pos) = rest.find(&needle) {
        let after = rest[pos + needle.len()..].trim_start();
        if let Some(after) = after.strip_prefix(':') {
            let after = after.trim_start();
            if let Some(value) = after.strip_prefix('"') {
                let end = value.find('"')?;
                return Some(value[..end].to_string());
            }
        }
        rest = &rest[pos + needle.len()..];
    }
    None
}

/// Result of a finished `gatehouse` command.
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `gatehouse ARGS...` to completion (15 s max), with optional extra / removed env vars.
pub fn run_gatehouse(args: &[&str], envs: &[(&str, &str)], env_remove: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    for key in env_remove {
        cmd.env_remove(key);
    }
    let mut child = cmd.spawn().expect("spawn gatehouse");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gatehouse {args:?} did not exit within 15s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CmdOutput {
        status,
        stdout: out_thread.join().expect("stdout thread"),
        stderr: err_thread.join().expect("stderr thread"),
    }
}

/// `VmRSS`, `VmHWM`, ... of a process, in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let prefix = format!("{field}:");
    let line = status
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"));
    line[prefix.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("kB value")
}

/// A port that was bound and then released: connecting to it is refused.
pub async fn closed_port_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// An in-process server on 127.0.0.1:0 (HTTP/1.1, WebSocket or raw bytes). Stops accepting on
/// drop.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    task: JoinHandle<()>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Connections whose handler has finished (and dropped the socket) so far.
    closed: Arc<AtomicUsize>,
}

impl Backend {
    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// How many of them it has closed (or seen closed) so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts on `listener` until dropped, each connection handled by `conn` on a task of its own;
/// counts what it accepted and what `conn` has finished with.
pub fn accept_on<C, Fut>(listener: TcpListener, name: &str, conn: C) -> Backend
where
    C: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().expect("local_addr");
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (on_accept, on_close) = (accepted.clone(), closed.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            on_accept.fetch_add(1, Ordering::SeqCst);
            let (handled, on_close) = (conn(stream), on_close.clone());
            tokio::spawn(async move {
                handled.await;
                on_close.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Backend {
        addr,
        name: name.to_string(),
        task,
        accepted,
        closed,
    }
}

/// [`accept_on`] 127.0.0.1:0: a server that speaks to the socket itself (bytes verbatim, a
/// connection closed at a chosen moment).
pub async fn serve_raw<C, Fut>(name: &str, conn: C) -> Backend
where
    C: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    accept_on(listener, name, conn)
}

pub type Resp = Response<Full<Bytes>>;

/// Serves HTTP/1.1 with `handler` for every request; its responses may have any body (usually
/// `Full`, see [`Resp`]; a stream for a test that watches a body arrive piece by piece).
pub async fn serve<F, Fut, B>(name: &str, handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    serve_on(listener, name, handler)
}

/// Like [`serve`], on a listener the test bound itself (another loopback address, a given port).
pub fn serve_on<F, Fut, B>(listener: TcpListener, name: &str, handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handler = Arc::new(handler);
    accept_on(listener, name, move |stream| {
        let handler = handler.clone();
        async move {
            let service = service_fn(move |req| {
                let fut = (*handler)(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
}

pub fn text_response(status: u16, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(body.into()))
        .expect("response")
}

/// Renders what the backend received:
/// ```text
/// GET /path?query HTTP/1.1
/// name: value          (one line per header value, in arrival order)
///
/// <request body>
/// ```
pub async fn render_echo(req: Request<Incoming>) -> String {
    let (parts, body) = req.into_parts();
    let mut out = format!(
        "{} {} {:?}\n",
        parts.method,
        parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/"),
        parts.version
    );
    for (name, value) in &parts.headers {
        out.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push('\n');
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    out.push_str(&String::from_utf8_lossy(&body));
    out
}

/// Echo backend: replies 200 with [`render_echo`] and an `x-backend: NAME` header.
pub async fn echo_backend(name: &str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    echo_backend_on(listener, name)
}

/// Like [`echo_backend`], on a listener the test bound itself.
pub fn echo_backend_on(listener: TcpListener, name: &str) -> Backend {
    let backend_name = name.to_string();
    serve_on(listener, name, move |req| {
        let backend_name = backend_name.clone();
        async move {
            let body = render_echo(req).await;
            Response::builder()
                .header("x-backend", backend_name)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(body)))
                .expect("response")
        }
    })
}

/// What an echo backend saw, parsed back from its response body.
#[derive(Debug)]
pub struct Echo {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Echo {
    pub fn parse(text: &str) -> Echo {
        let mut lines = text.split('\n');
        let first = lines.next().expect("echo first line");
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let uri = parts.next().unwrap_or_default().to_string();
        let version = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        let mut consumed = first.len() + 1;
        for line in lines.by_ref() {
            consumed += line.len() + 1;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(": ").unwrap_or((line, ""));
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        let body = text.get(consumed..).unwrap_or_default().to_string();
        Echo {
            method,
            uri,
            version,
            headers,
            body,
        }
    }

    /// All values of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// All values of `name` joined with ", " (the combined field value), or `None` if absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let values = self.all(name);
        if values.is_empty() {
            None
        } else {
            Some(values.join(", "))
        }
    }
}

/// A latch that backends wait on until the test opens it (or a backend-side timeout passes).
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits for the gate to open; returns false if `max` passed first.
    pub async fn wait(&self, max: Duration) -> bool {
        let mut rx = self.0.subscribe();
        let opened = matches!(
            tokio::time::timeout(max, rx.wait_for(|open| *open)).await,
            Ok(Ok(_))
        );
        opened
    }
}

/// Backend for "held" requests: a path containing `/slow` announces its arrival on `arrived` (sending the
/// backend's name), waits for `gate` (at most 10 s), then replies 200 with `slow_body`;
/// every other path is echoed immediately. All responses carry `x-backend: NAME`.
pub async fn gated_backend(
    name: &str,
    gate: Gate,
    arrived: mpsc::UnboundedSender<String>,
    slow_body: Bytes,
) -> Backend {
    let backend_name = name.to_string();
    serve(name, move |req| {
        let backend_name = backend_name.clone();
        let gate = gate.clone();
        let arrived = arrived.clone();
        let slow_body = slow_body.clone();
        async move {
            let body = if req.uri().path().contains("/slow") {
                let _ = arrived.send(backend_name.clone());
                if !gate.wait(Duration::from_secs(10)).await {
                    return text_response(500, "gate never opened");
                }
                slow_body
            } else {
                Bytes::from(render_echo(req).await)
            };
            Response::builder()
                .header("x-backend", backend_name)
                .header("content-type", "text/plain")
                .body(Full::new(body))
                .expect("response")
        }
    })
    .await
}

/// Backend that sleeps `delay` before answering 200 "late".
pub async fn sleepy_backend(delay: Duration) -> Backend {
    serve("sleepy", move |_req| async move {
        tokio::time::sleep(delay).await;
        text_response(200, "late")
    })
    .await
}

/// Backend that streams the request body, counting and discarding it, and replies with the count.
pub async fn counting_backend() -> Backend {
    serve("counter", |req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let mut count: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        count += data.len() as u64;
                    }
                }
                Err(err) => return text_response(500, format!("body error after {count}: {err}")),
            }
        }
        text_response(200, count.to_string())
    })
    .await
}

/// WebSocket backend that echoes text and binary messages back.
pub async fn ws_echo_backend() -> Backend {
    serve_raw("ws", |stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            let echo = msg.is_text() || msg.is_binary();
            if echo && ws.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A reqwest client that never follows redirects and never uses a system proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
}

async fn read_line<S>(conn: &mut S, what: &str) -> Result<String, String>
where
    S: tokio::io::AsyncBufRead + Unpin,
{
    let mut line = String::new();
    match conn.read_line(&mut line).await {
        Ok(0) => Err(format!("connection closed while reading {what}")),
        Ok(_) => Ok(line),
        Err(e) => Err(format!("error reading {what}: {e}")),
    }
}

/// A raw keep-alive client connection to the proxy's HTTP listener, for [`read_response`].
pub type RawConn = tokio::io::BufReader<TcpStream>;

pub async fn raw_connect(proxy: &TestProxy) -> RawConn {
    tokio::io::BufReader::new(TcpStream::connect(proxy.addr).await.expect("connect"))
}

/// Reads one response (Content-Length or chunked) off a kept-alive connection (a `BufReader`
/// over TCP or TLS), leaving the
/// connection positioned at the next response. `Err` if the connection ends first.
pub async fn read_response<S>(conn: &mut S) -> Result<RawResponse, String>
where
    S: tokio::io::AsyncBufRead + Unpin,
{
    let status_line = read_line(conn, "the status line").await?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(conn, "a header line").await?;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = read_line(conn, "a chunk size").await?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("0");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| format!("bad chunk size line {size_line:?}"))?;
            if size == 0 {
                while !read_line(conn, "trailers").await?.trim().is_empty() {}
                break;
            }
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)
                .await
                .map_err(|e| format!("reading a chunk: {e}"))?;
            chunk.truncate(size);
            response.body.extend_from_slice(&chunk);
        }
    } else {
        let len: usize = response
            .header("content-length")
            .ok_or("keep-alive response without content-length or chunked")?
            .parse()
            .map_err(|_| "bad content-length")?;
        response.body.resize(len, 0);
        conn.read_exact(&mut response.body)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
    }
    Ok(response)
}

/// A response read off a raw TCP connection, headers exactly as sent by the proxy.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` verbatim (use "\r\n" line endings) over a new TCP connection and reads one
/// response (Content-Length, chunked, or until EOF).
pub async fn raw_request(addr: SocketAddr, request: &str) -> RawResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    raw_request_on(stream, request).await
}

/// [`raw_request`] over a connection the test opened itself (e.g. a TLS stream).
pub async fn raw_request_on<S>(stream: S, request: &str) -> RawResponse
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("write request");

    let mut status_line = String::new();
    stream
        .read_line(&mut status_line)
        .await
        .expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("header line");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size_line = String::new();
            stream.read_line(&mut size_line).await.expect("chunk size");
            let size_hex = size_line.trim().split(';').next().unwrap_or("0");
            let size = usize::from_str_radix(size_hex, 16).expect("chunk size hex");
            if size == 0 {
                // Trailers until the blank line.
                loop {
                    let mut line = String::new();
                    let n = stream.read_line(&mut line).await.expect("trailer");
                    if n == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).await.expect("chunk");
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("content-length");
        body.resize(len, 0);
        stream.read_exact(&mut body).await.expect("body");
    } else if status != 204 && status != 304 && !request.starts_with("HEAD ") {
        stream.read_to_end(&mut body).await.expect("body to eof");
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// A response header as text (lossy), if present.
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Accepts any server certificate (but still checks handshake signatures), so a test can see
/// *which* certificate the proxy serves, or whether it serves one at all.
#[derive(Debug)]
pub struct AcceptAnyCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client config that accepts any server certificate ([`AcceptAnyCert`]), offering
/// `versions` (`rustls::DEFAULT_VERSIONS` for the usual ones) and `alpn`.
pub fn any_cert_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

type StderrLines = std::io::Lines<std::io::BufReader<std::process::ChildStderr>>;

/// A `gatehouse` started by hand (`args`, in `dir`, JSON logs on a piped stderr), read up to its
/// `listening` line for the HTTP listener (10 s at most). Killed on drop.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    /// The rest of stderr, unread; dropping it closes the pipe.
    pub stderr: Option<StderrLines>,
}

impl Spawned {
    pub fn start(args: &[&str], dir: &Path) -> Spawned {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .args(["--log-format", "json"])
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        // read on a thread, so that a process that never gets there cannot hang the test; the
        // thread hands the rest of stderr back with the address
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(addr) = parse_listening_line(&line, "http") {
                    let _ = tx.send(Ok((addr, lines)));
                    return;
                }
                seen.push(line);
            }
            let _ = tx.send(Err(seen.join("\n")));
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok((addr, rest))) => Spawned {
                child,
                addr,
                stderr: Some(rest),
            },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let seen = match other {
                    Ok(Err(seen)) => seen,
                    _ => "(nothing within 10 s)".to_string(),
                };
                panic!("no `listening` line; stderr:\n{seen}");
            }
        }
    }

    /// One `GET path` with `Connection: close`, over a blocking socket: the whole answer.
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
