//! Issue 17, end to end: one canonical request at the edge. Raw requests written byte for byte
//! to the real binary, against a backend that records the raw head of every request that reaches
//! it, so each test asserts both on the status the client got and on what the backend received
//! (or that it received nothing). One test (or a few) per class: path forms against an
//! `allow`-protected prefix and a rate-limited exact route, canonical forms that pass, method
//! case, `strip_prefix` escapes, Host forms (wildcard, redirect, IPv6), absolute-form and missing
//! Host, `X-Forwarded-For` hop forms, headers that claim to be the edge's, underscore headers,
//! the ACME exemption of the HTTPS redirect, the rejection counters, and HTTP/2.
//!
//! The contract pinned here is `docs/security.md` (the canonical form, rule by rule).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// A backend that records the raw head of every request it receives
// ---------------------------------------------------------------------------------------------

/// One request as the backend received it: the request line's parts and the header lines, raw
/// (names lower-cased), in arrival order.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn describe(&self) -> String {
        format!(
            "{} {} (Host {:?})",
            self.method,
            self.target,
            self.header("host").unwrap_or("-")
        )
    }
}

/// Records every request head that reaches it (before answering, so a test that has its answer
/// knows the record is complete) and answers 200 `recorded` with `x-backend: NAME`.
/// Raw, not hyper: a target hyper would refuse is recorded all the same.
struct Recorder {
    backend: Backend,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start(name: &str) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let backend_name = name.to_string();
        let backend = serve_raw(name, move |stream| {
            let (sink, name) = (sink.clone(), backend_name.clone());
            async move { record_conn(stream, sink, name).await }
        })
        .await;
        Recorder { backend, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn since(&self, from: usize) -> Vec<Seen> {
        self.seen.lock().unwrap()[from..].to_vec()
    }
}

/// Serves one backend connection: request after request (keep-alive), each recorded.
async fn record_conn(stream: TcpStream, sink: Arc<Mutex<Vec<Seen>>>, name: String) {
    let mut conn = tokio::io::BufReader::new(stream);
    while let Some(seen) = read_head(&mut conn).await {
        if skip_body(&mut conn, &seen).await.is_none() {
            return;
        }
        sink.lock().unwrap().push(seen);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-backend: {name}\r\ncontent-length: 8\r\n\r\nrecorded"
        );
        if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request head; `None` at EOF or on an error.
async fn read_head(conn: &mut tokio::io::BufReader<TcpStream>) -> Option<Seen> {
    let mut line = Vec::new();
    if conn.read_until(b'\n', &mut line).await.ok()? == 0 {
        return None;
    }
    let request_line = String::from_utf8_lossy(&line).trim_end().to_string();
    let mut parts = request_line.splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if conn.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let (name, value) = text.split_once(':').unwrap_or((text, ""));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some(Seen {
        method,
        target,
        headers,
    })
}

/// Reads and discards the request body (Content-Length or chunked).
async fn skip_body(conn: &mut tokio::io::BufReader<TcpStream>, seen: &Seen) -> Option<()> {
    if let Some(len) = seen.header("content-length") {
        let mut body = vec![0; len.parse().ok()?];
        conn.read_exact(&mut body).await.ok()?;
    } else if seen
        .header("transfer-encoding")
        .is_some_and(|te| te.contains("chunked"))
    {
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.ok()?;
            let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                loop {
                    line.clear();
                    conn.read_line(&mut line).await.ok()?;
                    if line.trim().is_empty() {
                        return Some(());
                    }
                }
            }
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk).await.ok()?;
        }
    }
    Some(())
}

// ---------------------------------------------------------------------------------------------
// Raw requests and what they should come to
// ---------------------------------------------------------------------------------------------

/// `METHOD TARGET HTTP/1.1`, `Host` (none with `None`), `extra` header lines, no body.
fn head(method: &str, target: &[u8], host: Option<&str>, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    for (name, value) in extra {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn get(target: &[u8], host: &str) -> Vec<u8> {
    head("GET", target, Some(host), &[])
}

/// Writes `request` on a new connection and reads one answer (10 s at most).
async fn send(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    let exchange = async {
        let mut conn = tokio::io::BufReader::new(
            TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
        conn.get_mut()
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_response(&mut conn).await
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".to_string()))
}

/// Whether the peer closes `conn` (EOF, or a reset) within 5 s, reading past anything it sends.
async fn closed_within_5s<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> Result<(), String> {
    let mut extra = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => extra.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match (read, extra.is_empty()) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err(format!(
            "closed, but only after sending more: {:?}",
            String::from_utf8_lossy(&extra)
        )),
        (Err(_), _) => Err(format!(
            "still open after 5 s (it sent {:?})",
            String::from_utf8_lossy(&extra)
        )),
    }
}

/// What a raw request should come to.
#[derive(Debug, Clone)]
enum Want {
    /// This status from the proxy itself; the backend received nothing.
    Refused(u16),
    /// Proxied: the backend received exactly this request target (and, when given, this `Host`
    /// and the same `X-Forwarded-Host`); the client got the backend's 200.
    Reaches {
        target: String,
        host: Option<String>,
    },
    /// Answered by the proxy itself: 200 with this body; the backend received nothing.
    Local(&'static str),
    /// Redirected by the proxy: this status and `Location`; the backend received nothing.
    Redirect(u16, String),
}

fn refused(status: u16) -> Want {
    Want::Refused(status)
}

fn reaches(target: &str) -> Want {
    Want::Reaches {
        target: target.to_string(),
        host: None,
    }
}

fn reaches_host(target: &str, host: &str) -> Want {
    Want::Reaches {
        target: target.to_string(),
        host: Some(host.to_string()),
    }
}

/// One raw request, a label for failure messages, and what it should come to.
struct Probe {
    label: String,
    request: Vec<u8>,
    want: Want,
}

/// `GET target` with `Host: host`.
fn probe(target: &[u8], host: &str, want: Want) -> Probe {
    Probe {
        label: format!("GET {}", String::from_utf8_lossy(target).escape_debug()),
        request: get(target, host),
        want,
    }
}

/// A probe whose request is written out in full.
fn raw_probe(label: &str, request: Vec<u8>, want: Want) -> Probe {
    Probe {
        label: label.to_string(),
        request,
        want,
    }
}

/// What happened, for a failure message: the status (and Location), and what the backend saw.
fn outcome(answer: &Result<RawResponse, String>, new: &[Seen]) -> String {
    let answer = match answer {
        Ok(resp) => match resp.header("location") {
            Some(location) => format!("{} (Location {location})", resp.status),
            // the proxy's own answer: its first words say which (a refusal, a local route)
            None if new.is_empty() => {
                let body = resp.body_text();
                let first: String = body
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(60)
                    .collect();
                format!("{} {first:?}", resp.status)
            }
            None => resp.status.to_string(),
        },
        Err(e) => format!("no answer ({e})"),
    };
    let backend = if new.is_empty() {
        "backend saw nothing".to_string()
    } else {
        let seen: Vec<String> = new.iter().map(Seen::describe).collect();
        format!("backend saw {}", seen.join(" + "))
    };
    format!("{answer}; {backend}")
}

/// `None` if the answer and what the backend saw are what `want` says; else why not.
fn judge(want: &Want, answer: &Result<RawResponse, String>, new: &[Seen]) -> Option<String> {
    let status = answer.as_ref().map(|r| r.status).unwrap_or(0);
    let ok = match want {
        Want::Refused(code) => status == *code && new.is_empty(),
        Want::Local(body) => {
            status == 200 && new.is_empty() && answer.as_ref().is_ok_and(|r| r.body_text() == *body)
        }
        Want::Redirect(code, location) => {
            status == *code
                && new.is_empty()
                && answer
                    .as_ref()
                    .is_ok_and(|r| r.header("location") == Some(location.as_str()))
        }
        Want::Reaches { target, host } => {
            let host_ok = |seen: &Seen| match host {
                None => true,
                Some(host) => {
                    seen.all("host") == [host.as_str()]
                        && seen.all("x-forwarded-host") == [host.as_str()]
                }
            };
            status == 200 && new.len() == 1 && new[0].target == *target && host_ok(&new[0])
        }
    };
    (!ok).then(|| {
        let want = match want {
            Want::Refused(code) => format!("{code}, backend nothing"),
            Want::Local(body) => format!("200 {body:?} from the proxy, backend nothing"),
            Want::Redirect(code, location) => format!("{code} to {location}, backend nothing"),
            Want::Reaches { target, host: None } => format!("200, backend sees {target}"),
            Want::Reaches {
                target,
                host: Some(host),
            } => format!("200, backend sees {target} with Host and X-Forwarded-Host {host}"),
        };
        format!("want {want}; got {}", outcome(answer, new))
    })
}

/// Sends each probe on its own connection, in order; panics listing every probe that did not
/// come to what it should (all of them, so one run shows the whole picture).
async fn run_probes(addr: SocketAddr, rec: &Recorder, probes: Vec<Probe>) {
    let total = probes.len();
    let mut failures = Vec::new();
    for probe in probes {
        let before = rec.count();
        let answer = send(addr, &probe.request).await;
        let new = rec.since(before);
        if let Some(why) = judge(&probe.want, &answer, &new) {
            failures.push(format!("  {}: {why}", probe.label));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} probes wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/// One plain listener; `server` lines go into `[server]`; `sites` is the `[[site]]` tables;
/// upstream `backend` is `rec`.
fn config(rec: &Recorder, server: &str, sites: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
{server}

{sites}

[upstream.backend]
servers = ["{}"]
"#,
        rec.addr()
    )
}

/// docs/config.md's example: `/api/admin/` allowed to 10.0.0.0/8 only (the test client is
/// 127.0.0.1), next to `/api/` and `/`, all three proxied to the recorder.
const ADMIN_SITE: &str = r#"
[[site]]
hosts = ["app.test"]

  [[site.route]]
  path = "/api/admin/"
  upstream = "backend"
  allow = ["10.0.0.0/8"]

  [[site.route]]
  path = "/api/"
  upstream = "backend"

  [[site.route]]
  path = "/"
  upstream = "backend"
"#;

/// Every route of `app.test` proxied to the recorder by one `/` route.
const OPEN_SITE: &str = r#"
[[site]]
hosts = ["app.test"]

  [[site.route]]
  path = "/"
  upstream = "backend"
"#;

async fn admin_proxy(rec: &Recorder) -> TestProxy {
    TestProxy::start(&config(rec, "", ADMIN_SITE)).await
}

// ---------------------------------------------------------------------------------------------
// 1. Path forms against an allow-protected prefix
// ---------------------------------------------------------------------------------------------

/// Every spelling of `/api/admin/...` an origin would decode, resolve or merge into the admin
/// path is either routed to the admin route (and refused there: 403) or refused as a bad path
/// (400); the backend never receives it. Forms that are not the admin path reach the backend in
/// canonical form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_forms_cannot_walk_around_an_allow_protected_prefix() {
    with_timeout(60, async {
        let rec = Recorder::start("api").await;
        let proxy = admin_proxy(&rec).await;
        let h = "app.test";
        let forbidden = || refused(403);
        let bad = || refused(400);
        let probes = vec![
            // the plain form (the control) and the route's own prefix without its slash
            probe(b"/api/admin/x", h, forbidden()),
            probe(b"/api/admin", h, forbidden()),
            probe(b"/api/admin/.", h, forbidden()),
            probe(b"/api/admin?x=1", h, forbidden()),
            // a fragment is no part of the path (nor sent on)
            probe(b"/api/admin#x", h, forbidden()),
            // percent-encoded unreserved characters, upper and lower hex, partly and wholly
            probe(b"/api/%61dmin/x", h, forbidden()),
            probe(b"/api/%61dmin", h, forbidden()),
            probe(b"/api/%61%64%6D%69%6E/x", h, forbidden()),
            probe(b"/api/%61%64%6d%69%6e/x", h, forbidden()),
            probe(b"/%61pi/admin/x", h, forbidden()),
            // dot segments, plain, encoded, in parameter form
            probe(b"/api/x/../admin/x", h, forbidden()),
            probe(b"/api/x/y/../../admin/x", h, forbidden()),
            probe(b"/api/./admin/x", h, forbidden()),
            probe(b"/api/%2E/admin/x", h, forbidden()),
            probe(b"/api/%2e%2e/api/admin/x", h, forbidden()),
            probe(b"/api/.%2E/api/admin/x", h, forbidden()),
            probe(b"/api/x/%2E%2E/admin/x", h, forbidden()),
            // (`;` is refused by default: path_parameters_cannot_rename_a_protected_segment)
            probe(b"/api/x/..;/admin/x", h, bad()),
            probe(b"/api/x/..;jsessionid=1/admin/x", h, bad()),
            probe(b"/api/.;/admin/x", h, bad()),
            probe(b"/api/./%61dmin//x/", h, forbidden()),
            // repeated slashes anywhere
            probe(b"/api//admin/x", h, forbidden()),
            probe(b"//api/admin/x", h, forbidden()),
            probe(b"/api///admin//x", h, forbidden()),
            // absolute-form: the same rules on the path of a full URI
            probe(b"http://app.test/api/%61dmin/x", h, forbidden()),
            probe(b"http://app.test//api/./admin/x", h, forbidden()),
            probe(b"https://app.test/api/%61dmin/x", h, forbidden()),
            // encoded slash and backslash: refused, whatever their case or place
            probe(b"/api/admin%2Fx", h, bad()),
            probe(b"/api/admin%2fx", h, bad()),
            probe(b"/api/ADMIN%2F", h, bad()),
            probe(b"/api%2Fadmin/x", h, bad()),
            probe(b"/api/%2fadmin/x", h, bad()),
            probe(b"/api/admin/..%2F", h, bad()),
            probe(b"/api/x/..%2Fadmin/x", h, bad()),
            probe(b"/api/x/%2e%2e%2fadmin/x", h, bad()),
            probe(b"/api/admin%5Cx", h, bad()),
            probe(b"/api/admin%5cx", h, bad()),
            // a raw backslash (Windows and some frameworks read it as a slash)
            probe(b"/api\\admin/x", h, bad()),
            probe(b"/api/x\\..\\admin/x", h, bad()),
            // NUL and other control characters, encoded and raw
            probe(b"/api/admin%00/x", h, bad()),
            probe(b"/api/admin%00", h, bad()),
            probe(b"/api/%00/../admin/x", h, bad()),
            probe(b"/api/admin%09/x", h, bad()),
            probe(b"/api/admin%7F/x", h, bad()),
            probe(b"/api/admin\x00/x", h, bad()),
            // raw bytes outside ASCII (a dotless i, a full-width solidus, a lone byte)
            probe("/api/adm\u{131}n/x".as_bytes(), h, bad()),
            probe("/api/\u{ff0f}admin/x".as_bytes(), h, bad()),
            probe(b"/api/admin\xff/x", h, bad()),
            // broken percent-encodings (IIS %u, a lone %, non-hex)
            probe(b"/api/%u0061dmin/x", h, bad()),
            probe(b"/api/admin%", h, bad()),
            probe(b"/api/%zzadmin/x", h, bad()),
            // climbing above the root
            probe(b"/../api/admin/x", h, bad()),
            probe(b"/api/../../api/admin/x", h, bad()),
            probe(b"/api/%2e%2e/%2e%2e/api/admin/x", h, bad()),
            // not the admin path, and passed on in canonical form
            probe(b"/api/admin/..", h, reaches("/api/")),
            probe(b"/api/%2561dmin/x", h, reaches("/api/%2561dmin/x")),
            probe(b"/api/x?/../admin/x", h, reaches("/api/x?/../admin/x")),
            probe(b"/api/x#/../admin/x", h, reaches("/api/x")),
        ];
        assert!(probes.len() >= 20);
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

/// Path parameters (`;jsessionid=...`) on a segment: Tomcat and Spring drop them before matching
/// (`/api/admin;x/y` is `/api/admin/y` to them), so a router that reads `admin;x` as another
/// name is walked around. Such a form must be refused or routed as the admin path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters_cannot_rename_a_protected_segment() {
    with_timeout(30, async {
        let rec = Recorder::start("api").await;
        let proxy = admin_proxy(&rec).await;
        let h = "app.test";
        let mut failures = Vec::new();
        for target in [
            &b"/api/admin;/x"[..],
            b"/api/admin;jsessionid=1/x",
            b"/api;/admin/x",
            b"/api;x=1/admin;y=2/x",
        ] {
            let before = rec.count();
            let answer = send(proxy.addr, &get(target, h)).await;
            let new = rec.since(before);
            let status = answer.as_ref().map(|r| r.status).unwrap_or(0);
            if !(matches!(status, 400 | 403) && new.is_empty()) {
                failures.push(format!(
                    "  GET {}: want 400 or 403, backend nothing; got {}",
                    String::from_utf8_lossy(target),
                    outcome(&answer, &new)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "path parameters:\n{}",
            failures.join("\n")
        );
        // `path_parameters = "keep"` passes `;` on with its segment, but `.;` and `..;` still
        // count as dot segments
        let keep = TestProxy::start(&config(&rec, r#"path_parameters = "keep""#, ADMIN_SITE)).await;
        let probes = vec![
            probe(b"/api/x/..;/admin/x", h, refused(403)),
            probe(b"/api/x/..;jsessionid=1/admin/x", h, refused(403)),
            probe(b"/api/.;/admin/x", h, refused(403)),
            probe(b"/api/..;/..;/x", h, refused(400)),
            probe(b"/api/x;jsessionid=1", h, reaches("/api/x;jsessionid=1")),
        ];
        run_probes(keep.addr, &rec, probes).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. An exact rate-limited route
// ---------------------------------------------------------------------------------------------

/// After the one request `/login` allows per minute, every other spelling of `/login` is counted
/// in the same budget (429) or refused (400): none reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_forms_of_an_exact_route_share_its_rate_limit() {
    with_timeout(60, async {
        let rec = Recorder::start("login").await;
        let site = r#"
[[site]]
hosts = ["app.test"]

  [[site.route]]
  exact = "/login"
  upstream = "backend"
  rate_limit = { requests = 1, per = "1m", burst = 1 }

  [[site.route]]
  path = "/"
  upstream = "backend"
"#;
        let proxy = TestProxy::start(&config(&rec, "", site)).await;
        let h = "app.test";
        let limited = || refused(429);
        let bad = || refused(400);
        let post = |target: &[u8]| {
            raw_probe(
                &format!("POST {}", String::from_utf8_lossy(target)),
                head("POST", target, Some(h), &[("Content-Length", "0")]),
                limited(),
            )
        };
        let probes = vec![
            probe(b"/login", h, reaches("/login")),
            probe(b"/login", h, limited()),
            probe(b"/./login", h, limited()),
            probe(b"/%6cogin", h, limited()),
            probe(b"/%6Cogin", h, limited()),
            probe(b"/%6c%6f%67%69%6e", h, limited()),
            probe(b"/login/", h, limited()),
            probe(b"//login", h, limited()),
            probe(b"///login///", h, limited()),
            probe(b"/login//", h, limited()),
            probe(b"/login/.", h, limited()),
            probe(b"/login/%2E", h, limited()),
            probe(b"/x/../login", h, limited()),
            probe(b"/x/%2e%2e/login", h, limited()),
            probe(b"/%2e/login", h, limited()),
            probe(b"/.;/login", h, bad()),
            probe(b"/x/..;/login", h, bad()),
            probe(b"/login?x=1", h, limited()),
            probe(b"/login/?x=1", h, limited()),
            probe(b"http://app.test/%6cogin", h, limited()),
            post(b"/login"),
            post(b"/./login/"),
            probe(b"/login%2F", h, bad()),
            probe(b"/login%2f", h, bad()),
            probe(b"/login%5C", h, bad()),
            probe(b"/login\\", h, bad()),
            probe(b"/login%00", h, bad()),
            probe(b"/../login", h, bad()),
            probe(b"/login%", h, bad()),
        ];
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Canonical forms that pass reach the backend canonical
// ---------------------------------------------------------------------------------------------

/// With the defaults: unreserved characters decoded, other encodings upper-cased, dot segments
/// resolved, slashes merged, `%2F` refused, the query passed exactly as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_forms_reach_the_backend_canonical() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let proxy = TestProxy::start(&config(&rec, "", OPEN_SITE)).await;
        let h = "app.test";
        let probes = vec![
            probe(b"/plain/path?x=1", h, reaches("/plain/path?x=1")),
            probe(b"/api/%61dmin/x", h, reaches("/api/admin/x")),
            probe(b"/api/%61dmin", h, reaches("/api/admin")),
            probe(b"/a/./b//c", h, reaches("/a/b/c")),
            probe(b"//a///b", h, reaches("/a/b")),
            probe(b"/a/b/../c", h, reaches("/a/c")),
            probe(b"/a/%2e%2E/b", h, reaches("/b")),
            probe(b"/a/b/..", h, reaches("/a/")),
            probe(b"/a/b/.", h, reaches("/a/b/")),
            probe(b"/a/..;/b", h, refused(400)),
            probe(b"/%7Euser/%7e/%2D%2E%5F%41", h, reaches("/~user/~/-._A")),
            probe(b"/caf%c3%a9", h, reaches("/caf%C3%A9")),
            probe(b"/caf%C3%A9", h, reaches("/caf%C3%A9")),
            probe(b"/a%3fb%3Dc%20d", h, reaches("/a%3Fb%3Dc%20d")),
            probe(b"/a%2561", h, reaches("/a%2561")),
            probe(b"/x?a=%2e%2E&b=..//", h, reaches("/x?a=%2e%2E&b=..//")),
            probe(b"/a/b/../c?q=/../&r=%2f", h, reaches("/a/c?q=/../&r=%2f")),
            probe(b"/x?", h, reaches("/x?")),
            probe(b"/a%2fb", h, refused(400)),
            probe(b"/a%2Fb", h, refused(400)),
        ];
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

/// `encoded_slashes = "keep"`: `%2F` passes, still encoded (upper-cased), never a segment
/// separator; `%5C` is still refused; everything else is still canonicalised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_keep_passes_them_encoded() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let server = r#"encoded_slashes = "keep""#;
        let proxy = TestProxy::start(&config(&rec, server, OPEN_SITE)).await;
        let h = "app.test";
        let probes = vec![
            probe(b"/a%2fb", h, reaches("/a%2Fb")),
            probe(b"/a%2Fb", h, reaches("/a%2Fb")),
            // a kept %2F never hides a dot segment (an origin decoding it would climb)
            probe(b"/a%2F..%2Fb", h, refused(400)),
            probe(b"/a/%2e%2e%2fb", h, refused(400)),
            probe(b"/x/%61/../y%2f", h, reaches("/x/y%2F")),
            probe(b"/a%5Cb", h, refused(400)),
            probe(b"/a%5cb", h, refused(400)),
        ];
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

/// `merge_slashes = false`: repeated slashes are kept; the rest is still canonicalised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_slashes_false_keeps_repeated_slashes() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let proxy = TestProxy::start(&config(&rec, "merge_slashes = false", OPEN_SITE)).await;
        let h = "app.test";
        let probes = vec![
            probe(b"/a//b", h, reaches("/a//b")),
            probe(b"/a/./b//%63", h, reaches("/a/b//c")),
            probe(b"/a%2fb", h, refused(400)),
        ];
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Method case, CONNECT and TRACE
// ---------------------------------------------------------------------------------------------

/// Methods are upper case: `post`, `Get` get 400 (so `post` cannot escape a `methods = ["POST"]`
/// budget at an origin that upper-cases it); CONNECT and TRACE get 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_case_and_connect_trace() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let site = r#"
[[site]]
hosts = ["app.test"]
rate_limit = { requests = 1, per = "1m", burst = 1, methods = ["POST"] }

  [[site.route]]
  path = "/"
  upstream = "backend"
"#;
        let proxy = TestProxy::start(&config(&rec, "", site)).await;
        let h = Some("app.test");
        let body0 = [("Content-Length", "0")];
        let req = |method: &str, target: &str, want: Want| {
            raw_probe(
                &format!("{method} {target}"),
                head(method, target.as_bytes(), h, &body0),
                want,
            )
        };
        let probes = vec![
            req("POST", "/x", reaches("/x")),
            req("POST", "/x", refused(429)),
            req("post", "/x", refused(400)),
            req("Post", "/x", refused(400)),
            req("pOST", "/x", refused(400)),
            req("get", "/x", refused(400)),
            req("Get", "/x", refused(400)),
            req("delete", "/x", refused(400)),
            req("purge", "/x", refused(400)),
            req("CONNECT", "app.test:443", refused(405)),
            req("CONNECT", "/x", refused(405)),
            req("TRACE", "/x", refused(405)),
            req("GET", "/x", reaches("/x")),
        ];
        run_probes(proxy.addr, &rec, probes).await;
        let methods: Vec<String> = rec.seen().iter().map(|s| s.method.clone()).collect();
        assert_eq!(methods, ["POST", "GET"], "methods the backend received");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. strip_prefix cannot produce a path outside /
// ---------------------------------------------------------------------------------------------

/// `strip_prefix` works on the canonical path: `/api/../x` is `/x` (the root route's, not the
/// api backend's), and whatever the api backend receives is a canonical path under `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_cannot_escape_the_root() {
    with_timeout(30, async {
        let rec = Recorder::start("api").await;
        let site = r#"
[[site]]
hosts = ["app.test"]

  [[site.route]]
  path = "/api/"
  upstream = "backend"
  strip_prefix = true

  [[site.route]]
  path = "/"
  respond = { status = 200, body = "root" }
"#;
        let proxy = TestProxy::start(&config(&rec, "", site)).await;
        let h = "app.test";
        let root = || Want::Local("root");
        let probes = vec![
            probe(b"/api/x", h, reaches("/x")),
            probe(b"/api/./x", h, reaches("/x")),
            probe(b"/api/%2e/x", h, reaches("/x")),
            probe(b"/api//x", h, reaches("/x")),
            probe(b"/api/x/..", h, reaches("/")),
            probe(b"/api/", h, reaches("/")),
            probe(b"/api", h, reaches("/")),
            probe(b"/api/?q=..", h, reaches("/?q=..")),
            probe(b"/api/.../x", h, reaches("/.../x")),
            probe(b"/api/../x", h, root()),
            probe(b"/api/%2e%2e/x", h, root()),
            probe(b"/api/.%2E/x", h, root()),
            probe(b"/api/..;/x", h, refused(400)),
            probe(b"/api/..", h, root()),
            probe(b"/api/..%2Fx", h, refused(400)),
            probe(b"/api/..%2fx", h, refused(400)),
            probe(b"/api/%2e%2e%2fx", h, refused(400)),
            probe(b"/api/..%5Cx", h, refused(400)),
            probe(b"/api/..\\x", h, refused(400)),
            probe(b"/api/../../x", h, refused(400)),
            probe(b"/api/x/../../../etc/passwd", h, refused(400)),
        ];
        run_probes(proxy.addr, &rec, probes).await;
        for seen in rec.seen() {
            let path = seen.target.split('?').next().unwrap_or_default();
            let dotted = path.split('/').any(|s| {
                matches!(
                    s.to_ascii_lowercase().as_str(),
                    "." | ".." | "%2e" | "%2e%2e"
                )
            });
            assert!(
                path.starts_with('/') && !path.contains("//") && !dotted,
                "the api backend received {:?}",
                seen.target
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Host forms
// ---------------------------------------------------------------------------------------------

/// Sites: `*.wild.example` (proxied), `*.redir.example` (a redirect to `https://{host}/...`) and a
/// catch-all answering `catch-all` (so a bad Host cannot just fall through to it).
const HOST_SITES: &str = r#"
[[site]]
hosts = ["*.wild.example"]

  [[site.route]]
  path = "/"
  upstream = "backend"

[[site]]
hosts = ["*.redir.example"]

  [[site.route]]
  path = "/"
  redirect = { to = "https://{host}/landing{uri}", status = 302 }

[[site]]
hosts = ["*"]

  [[site.route]]
  path = "/"
  respond = { status = 200, body = "catch-all" }
"#;

/// Host values that are not a reg-name, IPv4 or bracketed IPv6 with an optional numeric port get
/// 400, never the wildcard site nor the catch-all; a valid one is lower-cased, its trailing dot
/// dropped, and sent so as Host and X-Forwarded-Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_forms_on_a_wildcard_site() {
    with_timeout(60, async {
        let rec = Recorder::start("wild").await;
        let proxy = TestProxy::start(&config(&rec, "", HOST_SITES)).await;
        let with_host = |host: &str, want: Want| Probe {
            label: format!("Host: {host:?}"),
            request: get(b"/p?q=1", host),
            want,
        };
        let mut probes: Vec<Probe> = [
            "evil.test/.wild.example",
            "evil.test\\.wild.example",
            "user@x.wild.example",
            "evil.test@x.wild.example",
            "x.wild.example:80:80",
            "x.wild.example:8080:",
            "x.wild.example:abc",
            "x.wild.example:99999",
            "x.wild.example:-1",
            "x.wild.example:+80",
            "x.wild .example",
            "x.wild.example/",
            "x.wild.example?",
            "x.wild.example#",
            "x.wild.example,evil.test",
            "%78.wild.example",
            ":80",
            "",
            "[::1",
            "[fe80::1%25eth0]",
            "[fe80::1%eth0]",
        ]
        .into_iter()
        .map(|host| with_host(host, refused(400)))
        .collect();
        probes.extend([
            with_host("x.wild.example", reaches_host("/p?q=1", "x.wild.example")),
            with_host(
                "X.Wild.Example.:8080",
                reaches_host("/p?q=1", "x.wild.example:8080"),
            ),
            with_host("X.WILD.EXAMPLE.", reaches_host("/p?q=1", "x.wild.example")),
            with_host("x.wild.example:", reaches_host("/p?q=1", "x.wild.example")),
            with_host(
                "a_b.wild.example",
                reaches_host("/p?q=1", "a_b.wild.example"),
            ),
        ]);
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

/// A redirect route using `{host}` cannot be made to send the client to another site: a Host
/// that would put another name in front of the path is refused, a valid one is canonical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_in_a_redirect_cannot_make_an_open_redirect() {
    with_timeout(30, async {
        let rec = Recorder::start("wild").await;
        let proxy = TestProxy::start(&config(&rec, "", HOST_SITES)).await;
        let with_host = |host: &str, want: Want| Probe {
            label: format!("Host: {host:?}"),
            request: get(b"/p?q=1", host),
            want,
        };
        let mut probes: Vec<Probe> = [
            "evil.test/.redir.example",
            "evil.test?.redir.example",
            "evil.test#.redir.example",
            "evil.test\\.redir.example",
            "evil.test@x.redir.example",
            "evil.test:80@x.redir.example",
        ]
        .into_iter()
        .map(|host| with_host(host, refused(400)))
        .collect();
        probes.extend([
            with_host(
                "X.Redir.Example.",
                Want::Redirect(302, "https://x.redir.example/landing/p?q=1".into()),
            ),
            with_host(
                "x.redir.example:8080",
                Want::Redirect(302, "https://x.redir.example/landing/p?q=1".into()),
            ),
        ]);
        // the path placeholder is the canonical path, too
        probes.push(raw_probe(
            "GET //evil.test/%2e%2e/x with Host x.redir.example",
            get(b"//evil.test/%2e%2e/x", "x.redir.example"),
            Want::Redirect(302, "https://x.redir.example/landing/x".into()),
        ));
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

/// A site named by an IPv6 literal is reached by `Host: [::1]:PORT` and by other spellings of
/// the same address; over a `[::1]` listener too when the machine has IPv6 loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_literal_sites_are_reached() {
    with_timeout(30, async {
        let rec = Recorder::start("v6").await;
        let sites = r#"
[[site]]
hosts = ["[::1]"]

  [[site.route]]
  path = "/"
  upstream = "backend"

[[site]]
hosts = ["*"]

  [[site.route]]
  path = "/"
  respond = { status = 200, body = "catch-all" }
"#;
        let proxy = TestProxy::start(&config(&rec, "", sites)).await;
        let port = proxy.addr.port();
        let with_host = |host: &str, want: Want| Probe {
            label: format!("Host: {host:?}"),
            request: get(b"/v6", host),
            want,
        };
        let v6_port = format!("[::1]:{port}");
        let probes = vec![
            with_host(&v6_port, reaches_host("/v6", &v6_port)),
            with_host("[::1]", reaches_host("/v6", "[::1]")),
            with_host("[0:0::1]", reaches_host("/v6", "[::1]")),
            with_host("[0:0:0:0:0:0:0:1]:8080", reaches_host("/v6", "[::1]:8080")),
            with_host("[::1]:8080:1", refused(400)),
            with_host("[::1]x", refused(400)),
            with_host("::1", refused(400)),
        ];
        run_probes(proxy.addr, &rec, probes).await;

        // over IPv6 loopback itself, if this machine has it
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here: the [::1] listener part is skipped");
            return;
        }
        let on_v6 = config(&rec, "", sites).replace("127.0.0.1:0", "[::1]:0");
        let proxy6 = TestProxy::start(&on_v6).await;
        let host = format!("[::1]:{}", proxy6.addr.port());
        run_probes(
            proxy6.addr,
            &rec,
            vec![with_host(&host, reaches_host("/v6", &host))],
        )
        .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Absolute-form and missing Host
// ---------------------------------------------------------------------------------------------

/// Sites `a.example` and `b.example`, each its own recorder, and a catch-all to a third.
fn ab_config(a: &Recorder, b: &Recorder, any: Option<&Recorder>) -> String {
    let any = any
        .map(|c| {
            format!(
                "[[site]]\nhosts = [\"*\"]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"c\"\n\n[upstream.c]\nservers = [\"{}\"]\n",
                c.addr()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2

[[site]]
hosts = ["a.example"]
  [[site.route]]
  path = "/"
  upstream = "a"

[[site]]
hosts = ["b.example"]
  [[site.route]]
  path = "/"
  upstream = "b"

{any}

[upstream.a]
servers = ["{}"]

[upstream.b]
servers = ["{}"]
"#,
        a.addr(),
        b.addr()
    )
}

/// The authority of an absolute-form target overrides Host (RFC 9112 3.2.2): it selects the site
/// and is what the backend receives as Host and X-Forwarded-Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_authority_overrides_host() {
    with_timeout(30, async {
        let (a, b) = (Recorder::start("a").await, Recorder::start("b").await);
        let proxy = TestProxy::start(&ab_config(&a, &b, None)).await;
        let cases: Vec<(&str, &[u8], Option<&str>, Want)> = vec![
            (
                "GET http://a.example/x, Host b.example",
                b"http://a.example/x",
                Some("b.example"),
                reaches_host("/x", "a.example"),
            ),
            (
                "GET http://A.Example.:81/%78, Host b.example",
                b"http://A.Example.:81/%78",
                Some("b.example"),
                reaches_host("/x", "a.example:81"),
            ),
            (
                "GET http://a.example/x, no Host",
                b"http://a.example/x",
                None,
                reaches_host("/x", "a.example"),
            ),
            (
                "GET http://evil.test@a.example/x, Host a.example",
                b"http://evil.test@a.example/x",
                Some("a.example"),
                refused(400),
            ),
            (
                "GET http://a.example:80:80/x, Host a.example",
                b"http://a.example:80:80/x",
                Some("a.example"),
                refused(400),
            ),
        ];
        let mut failures = Vec::new();
        for (label, target, host, want) in cases {
            let (before_a, before_b) = (a.count(), b.count());
            let answer = send(proxy.addr, &head("GET", target, host, &[])).await;
            let new = a.since(before_a);
            let wrong_site = b.since(before_b);
            let mut why = judge(&want, &answer, &new);
            if !wrong_site.is_empty() {
                why = Some(format!(
                    "b.example's backend got {}",
                    outcome(&answer, &wrong_site)
                ));
            }
            if let Some(why) = why {
                failures.push(format!("  {label}: {why}"));
            }
        }
        assert!(
            failures.is_empty(),
            "absolute-form:\n{}",
            failures.join("\n")
        );
    })
    .await;
}

/// HTTP/1.1 without Host: 400 and the connection closed (a request pipelined behind it is never
/// answered), even with a catch-all site. HTTP/1.0 without Host: only the catch-all takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_refused_on_http11_and_catch_all_only_on_http10() {
    with_timeout(30, async {
        let (a, b, c) = (
            Recorder::start("a").await,
            Recorder::start("b").await,
            Recorder::start("any").await,
        );
        let proxy = TestProxy::start(&ab_config(&a, &b, Some(&c))).await;
        let total = || a.count() + b.count() + c.count();

        let mut conn = tokio::io::BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
        conn.get_mut()
            .write_all(b"GET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .await
            .unwrap();
        let first = read_response(&mut conn).await;
        let closed = closed_within_5s(&mut conn).await;
        assert_eq!(
            first.as_ref().map(|r| r.status).ok(),
            Some(400),
            "HTTP/1.1 without Host: {}",
            outcome(&first, &c.seen())
        );
        assert_eq!(
            closed,
            Ok(()),
            "the connection after a 400 for a missing Host"
        );
        assert_eq!(
            total(),
            0,
            "no backend may see anything: {:?} {:?}",
            a.seen(),
            c.seen()
        );

        let answer = send(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
        let want = reaches("/old");
        if let Some(why) = judge(&want, &answer, &c.seen()) {
            panic!("HTTP/1.0 without Host, with a catch-all site: {why}");
        }
        assert_eq!(a.count() + b.count(), 0);

        // without a catch-all, nothing takes it
        let proxy = TestProxy::start(&ab_config(&a, &b, None)).await;
        let answer = send(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
        let status = answer.as_ref().map(|r| r.status).unwrap_or(0);
        assert!(
            (400..500).contains(&status) && a.count() + b.count() == 0,
            "HTTP/1.0 without Host, no catch-all site: {}",
            outcome(&answer, &[a.seen(), b.seen()].concat())
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. X-Forwarded-For hop forms from a trusted peer
// ---------------------------------------------------------------------------------------------

/// 127.0.0.1 (the test client) is a trusted proxy; routes allow one address each, `/loopback/`
/// allows the proxy's own network, `/deny/` denies an unrelated one, `/limited/` has a budget
/// of one, `/` is open.
const XFF_SITE: &str = r#"
[[site]]
hosts = ["app.test"]

  [[site.route]]
  path = "/v4/"
  upstream = "backend"
  allow = ["203.0.113.7"]

  [[site.route]]
  path = "/v6/"
  upstream = "backend"
  allow = ["2001:db8::1"]

  [[site.route]]
  path = "/loopback/"
  upstream = "backend"
  allow = ["127.0.0.0/8"]

  [[site.route]]
  path = "/deny/"
  upstream = "backend"
  deny = ["192.0.2.0/24"]

  [[site.route]]
  path = "/limited/"
  upstream = "backend"
  rate_limit = { requests = 1, per = "1m", burst = 1 }

  [[site.route]]
  path = "/"
  upstream = "backend"
"#;

const TRUSTED: &str = r#"trusted_proxies = ["127.0.0.1/32"]"#;

/// `GET target` from the trusted peer with these `X-Forwarded-For` lines.
fn xff_probe(target: &str, xff: &[&str], want: Want) -> Probe {
    let lines: Vec<(&str, &str)> = xff.iter().map(|v| ("X-Forwarded-For", *v)).collect();
    Probe {
        label: format!("GET {target} with X-Forwarded-For {xff:?}"),
        request: head("GET", target.as_bytes(), Some("app.test"), &lines),
        want,
    }
}

/// Hops written `IPv4:port`, `[IPv6]`, `[IPv6]:port` (as some load balancers send them) are
/// those addresses: an `allow` for them admits, and the backend gets `X-Real-IP` set to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xff_hops_with_ports_and_brackets_are_those_addresses() {
    with_timeout(30, async {
        let rec = Recorder::start("api").await;
        let proxy = TestProxy::start(&config(&rec, TRUSTED, XFF_SITE)).await;
        let cases: Vec<(&str, Vec<&str>, &str)> = vec![
            ("/v4/a", vec!["203.0.113.7"], "203.0.113.7"),
            ("/v4/b", vec!["203.0.113.7:4711"], "203.0.113.7"),
            (
                "/v4/c",
                vec![" 203.0.113.7:4711 , 127.0.0.1"],
                "203.0.113.7",
            ),
            ("/v4/d", vec!["198.51.100.1, 203.0.113.7:80"], "203.0.113.7"),
            ("/v6/a", vec!["2001:db8::1"], "2001:db8::1"),
            ("/v6/b", vec!["[2001:db8::1]"], "2001:db8::1"),
            ("/v6/c", vec!["[2001:db8::1]:443"], "2001:db8::1"),
            (
                "/v6/d",
                vec!["198.51.100.1", "[2001:db8::1]:8443, 127.0.0.1"],
                "2001:db8::1",
            ),
        ];
        let mut failures = Vec::new();
        for (target, xff, client) in cases {
            let probe = xff_probe(target, &xff, reaches(target));
            let before = rec.count();
            let answer = send(proxy.addr, &probe.request).await;
            let new = rec.since(before);
            let mut why = judge(&probe.want, &answer, &new);
            if why.is_none() && new[0].all("x-real-ip") != [client] {
                why = Some(format!(
                    "X-Real-IP {:?}, want [{client:?}]",
                    new[0].all("x-real-ip")
                ));
            }
            if let Some(why) = why {
                failures.push(format!("  {}: {why}", probe.label));
            }
        }
        assert!(
            failures.is_empty(),
            "XFF hop forms:\n{}",
            failures.join("\n")
        );
    })
    .await;
}

/// A hop that does not parse (`unknown`, empty, garbage) ends the walk and the client is
/// unknown: an `allow` containing the proxy's own network refuses it, so does any `deny` list,
/// X-Real-IP is not sent, and all such requests share one rate-limit budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xff_hops_that_do_not_parse_fail_closed() {
    with_timeout(60, async {
        let rec = Recorder::start("api").await;
        let proxy = TestProxy::start(&config(&rec, TRUSTED, XFF_SITE)).await;
        let unparsable: [&[&str]; 11] = [
            &["unknown"],
            &["203.0.113.7, , 127.0.0.1"],
            &[","],
            &["garbage"],
            &["_hidden"],
            &["203.0.113.7:abc"],
            &["[2001:db8::1"],
            &["1.2.3.4.5"],
            &["203.0.113.7, unknown"],
            &["unknown, 127.0.0.1"],
            &["203.0.113.7", "unknown"],
        ];
        let mut probes = Vec::new();
        for xff in unparsable {
            probes.push(xff_probe("/loopback/x", xff, refused(403)));
            probes.push(xff_probe("/deny/x", xff, refused(403)));
            probes.push(xff_probe("/v4/x", xff, refused(403)));
            probes.push(xff_probe("/open", xff, reaches("/open")));
        }
        // one budget for every unknown client behind this proxy; a known one has its own
        probes.push(xff_probe("/limited/1", &["unknown"], reaches("/limited/1")));
        probes.push(xff_probe("/limited/2", &["garbage"], refused(429)));
        probes.push(xff_probe(
            "/limited/3",
            &["203.0.113.7, , 127.0.0.1"],
            refused(429),
        ));
        probes.push(xff_probe(
            "/limited/4",
            &["203.0.113.9"],
            reaches("/limited/4"),
        ));
        run_probes(proxy.addr, &rec, probes).await;
        for seen in rec.seen() {
            if seen.target == "/open" {
                assert_eq!(
                    seen.all("x-real-ip"),
                    Vec::<&str>::new(),
                    "X-Real-IP sent for an unknown client"
                );
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. Headers that claim to be the edge's
// ---------------------------------------------------------------------------------------------

/// The contract's list of headers origins and frameworks trust as the edge's.
const EDGE_HEADERS: [&str; 26] = [
    "X-Real-IP",
    "Forwarded",
    "True-Client-IP",
    "X-Client-IP",
    "Client-IP",
    "X-Cluster-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Original-Forwarded-For",
    "X-Forwarded",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Forwarded-Protocol",
    "X-Forwarded-Server",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
    "X-Url-Scheme",
    "Front-End-Https",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Original-Host",
    "X-Host",
    "X-Original-Method",
    "X-ProxyUser-Ip",
];

/// A value each edge header is sent with, readable for what it names.
fn edge_value(name: &str) -> &'static str {
    match name {
        "Forwarded" => "for=198.51.100.66;proto=https",
        "X-Forwarded-Port" => "8443",
        "X-Original-URL" | "X-Rewrite-URL" | "X-Forwarded-Uri" | "X-Forwarded-Prefix" => {
            "/api/admin/x"
        }
        "X-Original-Method" | "X-Forwarded-Method" => "DELETE",
        "X-Original-Host" | "X-Host" | "X-Forwarded-Server" => "evil.test",
        "X-Forwarded-Ssl" | "Front-End-Https" => "on",
        "X-Forwarded-Scheme" | "X-Forwarded-Protocol" | "X-Url-Scheme" => "https",
        _ => "198.51.100.66",
    }
}

/// One `GET /h` carrying every edge header (and a plain one), with `host` and `extra` lines.
fn edge_request(host: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut lines: Vec<(&str, &str)> = EDGE_HEADERS.iter().map(|n| (*n, edge_value(n))).collect();
    lines.push(("X-Plain", "kept"));
    lines.extend_from_slice(extra);
    head("GET", b"/h", Some(host), &lines)
}

/// What the backend received of the one request `request` makes, with the client's status.
async fn one_seen(proxy: &TestProxy, rec: &Recorder, request: &[u8]) -> Seen {
    let before = rec.count();
    let answer = send(proxy.addr, request).await;
    let new = rec.since(before);
    match (&answer, new.as_slice()) {
        (Ok(resp), [seen]) if resp.status == 200 => seen.clone(),
        _ => panic!(
            "want 200 and one request at the backend; got {}",
            outcome(&answer, &new)
        ),
    }
}

/// From a peer outside `trusted_proxies` every edge header is removed; Gatehouse sets X-Real-IP
/// (the peer) and X-Forwarded-Port (the authority's port, else 80) itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_headers_from_an_untrusted_peer_are_removed() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let proxy = TestProxy::start(&config(&rec, "", OPEN_SITE)).await;
        let seen = one_seen(&proxy, &rec, &edge_request("app.test", &[])).await;
        let mut wrong = Vec::new();
        for name in EDGE_HEADERS {
            let got = seen.all(name);
            let want: &[&str] = match name {
                "X-Real-IP" => &["127.0.0.1"],
                "X-Forwarded-Port" => &["80"],
                _ => &[],
            };
            if got != want {
                wrong.push(format!("  {name}: backend saw {got:?}, want {want:?}"));
            }
        }
        assert_eq!(seen.all("x-plain"), ["kept"]);
        assert!(
            wrong.is_empty(),
            "edge headers from 127.0.0.1 (untrusted):\n{}",
            wrong.join("\n")
        );

        let seen = one_seen(&proxy, &rec, &edge_request("app.test:8080", &[])).await;
        assert_eq!(
            seen.all("x-forwarded-port"),
            ["8080"],
            "port of Host app.test:8080"
        );
        assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"]);

        // a client cannot have the edge's own headers removed by naming them in Connection, nor
        // set the forwarded host or scheme
        let spoof = [
            (
                "Connection",
                "X-Real-IP, X-Forwarded-Port, X-Forwarded-Host",
            ),
            ("X-Forwarded-Host", "evil.test"),
            ("X-Forwarded-Proto", "https"),
        ];
        let seen = one_seen(&proxy, &rec, &edge_request("App.Test.", &spoof)).await;
        assert_eq!(
            seen.all("x-real-ip"),
            ["127.0.0.1"],
            "X-Real-IP with Connection: X-Real-IP"
        );
        assert_eq!(seen.all("x-forwarded-port"), ["80"]);
        assert_eq!(seen.all("x-forwarded-host"), ["app.test"]);
        assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    })
    .await;
}

/// From a trusted peer the edge headers pass as sent; X-Real-IP is set to the client its
/// X-Forwarded-For names and X-Forwarded-Port to the port when the peer sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_headers_from_a_trusted_peer_pass_and_real_ip_is_set() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let proxy = TestProxy::start(&config(&rec, TRUSTED, OPEN_SITE)).await;
        let xff = [("X-Forwarded-For", "198.51.100.66")];
        let seen = one_seen(&proxy, &rec, &edge_request("app.test", &xff)).await;
        let mut wrong = Vec::new();
        for name in EDGE_HEADERS {
            let got = seen.all(name);
            if got != [edge_value(name)] {
                wrong.push(format!(
                    "  {name}: backend saw {got:?}, want [{:?}]",
                    edge_value(name)
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "edge headers from a trusted peer:\n{}",
            wrong.join("\n")
        );

        // the trusted peer sent neither: Gatehouse sets both
        let request = head(
            "GET",
            b"/h",
            Some("app.test"),
            &[("X-Forwarded-For", "203.0.113.7")],
        );
        let seen = one_seen(&proxy, &rec, &request).await;
        assert_eq!(seen.all("x-real-ip"), ["203.0.113.7"], "X-Real-IP from XFF");
        assert_eq!(seen.all("x-forwarded-port"), ["80"]);
    })
    .await;
}

/// A PROXY protocol v2 `LOCAL` header (a load balancer's health check) names no client, so the
/// connection's `X-Forwarded-For` is not believed even though the socket peer is trusted: the
/// peer is the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_local_never_vouches_for_x_forwarded_for() {
    with_timeout(30, async {
        let rec = Recorder::start("api").await;
        let config = config(&rec, TRUSTED, XFF_SITE).replace(
            "http = \"127.0.0.1:0\"",
            "http = \"127.0.0.1:0\"\nproxy_protocol = true",
        );
        let proxy = TestProxy::start(&config).await;
        // signature, version 2 + LOCAL, family UNSPEC, no address block
        let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        let xff = [("X-Forwarded-For", "203.0.113.7")];
        let mut failures = Vec::new();
        for (target, want) in [
            ("/v4/local", refused(403)),
            ("/open-local", reaches("/open-local")),
        ] {
            let request = [
                &local[..],
                &head("GET", target.as_bytes(), Some("app.test"), &xff),
            ]
            .concat();
            let before = rec.count();
            let answer = send(proxy.addr, &request).await;
            let new = rec.since(before);
            let mut why = judge(&want, &answer, &new);
            if let (None, [seen]) = (&why, new.as_slice()) {
                if seen.all("x-real-ip") != ["127.0.0.1"] {
                    why = Some(format!(
                        "X-Real-IP {:?}, want [\"127.0.0.1\"]",
                        seen.all("x-real-ip")
                    ));
                }
            }
            if let Some(why) = why {
                failures.push(format!(
                    "  LOCAL + GET {target} with X-Forwarded-For 203.0.113.7: {why}"
                ));
            }
        }
        assert!(failures.is_empty(), "PROXY LOCAL:\n{}", failures.join("\n"));
    })
    .await;
}

/// The access log shows the canonical path (what was routed and forwarded), not the raw one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_shows_the_canonical_path() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let proxy = TestProxy::start(&config(&rec, "", OPEN_SITE)).await;
        let seen = one_seen(
            &proxy,
            &rec,
            &get(b"/logged/%2e%2e/canon//%69cal?q=%2e", "app.test"),
        )
        .await;
        assert_eq!(seen.target, "/canon/ical?q=%2e");
        let request_paths = || -> Vec<String> {
            proxy
                .logs()
                .iter()
                .filter(|l| json_str_field(l, "message").as_deref() == Some("request"))
                .filter_map(|l| json_str_field(l, "path"))
                .collect()
        };
        let logged = poll_until(Duration::from_secs(10), || {
            std::future::ready(!request_paths().is_empty())
        })
        .await;
        assert!(logged.is_some(), "no access log line within 10 s");
        assert_eq!(request_paths(), ["/canon/ical"], "the access log's path");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 10. Header names with underscores
// ---------------------------------------------------------------------------------------------

fn underscore_request() -> Vec<u8> {
    head(
        "GET",
        b"/u",
        Some("app.test"),
        &[
            ("X_Real_IP", "1.2.3.4"),
            ("X_Custom", "v"),
            ("X-Normal", "n"),
        ],
    )
}

/// By default a header name with `_` is dropped (`X_Real_IP` would be `X-Real-IP` to an origin
/// that folds `_` into `-`); the request itself passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_headers_are_dropped_by_default() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let proxy = TestProxy::start(&config(&rec, "", OPEN_SITE)).await;
        let seen = one_seen(&proxy, &rec, &underscore_request()).await;
        let underscored: Vec<_> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.contains('_'))
            .collect();
        assert!(underscored.is_empty(), "backend saw {underscored:?}");
        assert_eq!(seen.all("x-normal"), ["n"]);
        assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"]);
    })
    .await;
}

/// `underscore_headers = "reject"`: 400, nothing reaches the backend; a request without one
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_headers_reject_answers_400() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let server = r#"underscore_headers = "reject""#;
        let proxy = TestProxy::start(&config(&rec, server, OPEN_SITE)).await;
        let probes = vec![
            raw_probe("X_Real_IP + X_Custom", underscore_request(), refused(400)),
            raw_probe(
                "x_a (lower case)",
                head("GET", b"/u", Some("app.test"), &[("x_a", "1")]),
                refused(400),
            ),
            raw_probe("no underscore", get(b"/u", "app.test"), reaches("/u")),
        ];
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

/// `underscore_headers = "keep"`: passed on as sent, next to Gatehouse's own X-Real-IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_headers_keep_passes_them() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let server = r#"underscore_headers = "keep""#;
        let proxy = TestProxy::start(&config(&rec, server, OPEN_SITE)).await;
        let seen = one_seen(&proxy, &rec, &underscore_request()).await;
        assert_eq!(seen.all("x_real_ip"), ["1.2.3.4"]);
        assert_eq!(seen.all("x_custom"), ["v"]);
        assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 11. The ACME exemption of the HTTPS redirect
// ---------------------------------------------------------------------------------------------

/// On a TLS site with the HTTPS redirect, plain HTTP under `/.well-known/acme-challenge/` is
/// served only for a token Gatehouse is answering (none here): every raw form of the challenge
/// path is redirected (to the canonical path), never proxied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_exemption_covers_only_live_tokens_in_any_spelling() {
    with_timeout(30, async {
        let rec = Recorder::start("app").await;
        let cert = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
        let sites = r#"
[[site]]
hosts = ["app.test"]
tls = { cert = "app.pem", key = "app.key" }

  [[site.route]]
  path = "/"
  upstream = "backend"
"#;
        let config = config(&rec, "", sites).replace(
            "http = \"127.0.0.1:0\"",
            "http = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"",
        );
        let proxy = TestProxy::start_tls_with_files(
            &config,
            &[
                ("app.pem", &cert.cert.pem()),
                ("app.key", &cert.key_pair.serialize_pem()),
            ],
        )
        .await;
        let base = format!("https://app.test:{}", proxy.https().port());
        let to = |path: &str| Want::Redirect(308, format!("{base}{path}"));
        let challenge = "/.well-known/acme-challenge/x";
        let probes = vec![
            probe(
                b"/.well-known/acme-challenge/whatever",
                "app.test",
                to("/.well-known/acme-challenge/whatever"),
            ),
            probe(
                b"/.well-known/acme-challenge/",
                "app.test",
                to("/.well-known/acme-challenge/"),
            ),
            probe(
                b"/.well-known/./acme-challenge/x",
                "app.test",
                to(challenge),
            ),
            probe(
                b"/%2Ewell-known/acme-challenge/x",
                "app.test",
                to(challenge),
            ),
            probe(
                b"/.well-known/%61cme-challenge/x",
                "app.test",
                to(challenge),
            ),
            probe(b"//.well-known/acme-challenge/x", "app.test", to(challenge)),
            probe(b"/.well-known/acme-challenge//x", "app.test", to(challenge)),
            probe(
                b"/.well-known/acme-challenge/../../admin",
                "app.test",
                to("/admin"),
            ),
            probe(
                b"/.well-known/acme-challenge/%2e%2e/%2e%2e/admin?x=1",
                "app.test",
                to("/admin?x=1"),
            ),
            probe(
                b"/.well-known/acme-challenge/..;/..;/admin",
                "app.test",
                refused(400),
            ),
            probe(
                b"/.well-known/acme-challenge/x%2F..%2F..%2Fadmin",
                "app.test",
                refused(400),
            ),
            raw_probe(
                "POST /.well-known/acme-challenge/whatever",
                head(
                    "POST",
                    b"/.well-known/acme-challenge/whatever",
                    Some("app.test"),
                    &[("Content-Length", "0")],
                ),
                to("/.well-known/acme-challenge/whatever"),
            ),
        ];
        run_probes(proxy.addr, &rec, probes).await;
    })
    .await;
}

/// A request that cannot be made canonical is answered 400 and its connection closed (RFC 9112:
/// after a malformed request the stream cannot be trusted): a request pipelined behind it on the
/// same connection is never answered nor forwarded. (A 405 for a well-framed CONNECT or TRACE
/// need not close it, so it is not asked here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_close_the_connection() {
    with_timeout(60, async {
        let rec = Recorder::start("open").await;
        let proxy = TestProxy::start(&config(&rec, "", OPEN_SITE)).await;
        let h = Some("app.test");
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("bad path /a%2fb", head("GET", b"/a%2fb", h, &[]), 400),
            ("bad path /../x", head("GET", b"/../x", h, &[]), 400),
            ("bad host", head("GET", b"/x", Some("evil.test/.app.test"), &[]), 400),
            ("bad method get", head("get", b"/x", h, &[]), 400),
        ];
        let mut failures = Vec::new();
        for (label, mut request, want) in cases {
            request.extend_from_slice(&get(b"/next", "app.test"));
            let before = rec.count();
            let mut conn = tokio::io::BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
            conn.get_mut().write_all(&request).await.unwrap();
            let first = read_response(&mut conn).await;
            let closed = closed_within_5s(&mut conn).await;
            let new = rec.since(before);
            let status = first.as_ref().map(|r| r.status).unwrap_or(0);
            if status != want || closed.is_err() || !new.is_empty() {
                failures.push(format!(
                    "  {label}: want {want}, then the connection closed, backend nothing; got {}; connection {closed:?}",
                    outcome(&first, &new)
                ));
            }
        }
        assert!(failures.is_empty(), "refusals:\n{}", failures.join("\n"));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 12. Rejections are counted by reason
// ---------------------------------------------------------------------------------------------

/// `name{labels}` -> value from the admin listener's `/metrics`.
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Each refusal of a request that cannot be made canonical is counted in
/// `gatehouse_rejected_requests_total` under its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_by_reason() {
    with_timeout(30, async {
        let rec = Recorder::start("open").await;
        let server = r#"underscore_headers = "reject""#;
        let config = config(&rec, server, OPEN_SITE).replace(
            "http = \"127.0.0.1:0\"",
            "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
        );
        let proxy = TestProxy::start(&config).await;
        let admin = proxy.admin_addr().await;
        let probes = vec![
            probe(b"/a%2fb", "app.test", refused(400)),
            probe(b"/../x", "app.test", refused(400)),
            probe(b"/x", "evil.test/.app.test", refused(400)),
            raw_probe(
                "get /x",
                head("get", b"/x", Some("app.test"), &[]),
                refused(400),
            ),
            raw_probe(
                "X_A header",
                head("GET", b"/x", Some("app.test"), &[("X_A", "1")]),
                refused(400),
            ),
        ];
        run_probes(proxy.addr, &rec, probes).await;
        let want = [
            ("bad_path", 2.0),
            ("bad_host", 1.0),
            ("bad_method", 1.0),
            ("bad_header", 1.0),
        ];
        let key =
            |reason: &str| format!("gatehouse_rejected_requests_total{{reason=\"{reason}\"}}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (last, counted) = loop {
            let last = scrape(admin).await;
            let counted = want
                .iter()
                .all(|(reason, n)| last.get(&key(reason)) == Some(n));
            if counted || std::time::Instant::now() >= deadline {
                break (last, counted);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let rejected: Vec<_> = last
            .iter()
            .filter(|(k, _)| k.starts_with("gatehouse_rejected_requests_total"))
            .collect();
        assert!(counted, "want {want:?}; the scrape has {rejected:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 13. HTTP/2: the same canonical request from :path and :authority
// ---------------------------------------------------------------------------------------------

/// An HTTP/2 request (method, URI, extra headers) and what it should come to.
type H2Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Want);

/// One HTTP/2 (prior knowledge) request on a connection of its own: the status, or why none.
async fn h2_request(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.map_err(|e| format!("ready: {e}"))?;
    let mut req = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(()).map_err(|e| e.to_string())?;
    let (resp, _) = client
        .send_request(req, true)
        .map_err(|e| format!("send: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("response: {e}"))?;
    let status = resp.status().as_u16();
    drop(client);
    conn.abort();
    Ok(status)
}

/// Over HTTP/2, `:path` is canonicalised like a request line, `:authority` like Host (a `host`
/// header that differs from it is refused), methods are upper case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_are_made_canonical_too() {
    with_timeout(30, async {
        let rec = Recorder::start("api").await;
        let proxy = admin_proxy(&rec).await;
        let cases: Vec<H2Case> = vec![
            ("GET", "http://app.test/api/%61dmin/x", vec![], refused(403)),
            (
                "GET",
                "http://app.test/api/x/../admin/x",
                vec![],
                refused(403),
            ),
            ("GET", "http://app.test/api//admin/x", vec![], refused(403)),
            ("GET", "http://app.test/api/admin%2fx", vec![], refused(400)),
            (
                "GET",
                "http://app.test/a/./b//%63?q=%2e",
                vec![],
                reaches_host("/a/b/c?q=%2e", "app.test"),
            ),
            (
                "GET",
                "http://App.Test./x",
                vec![],
                reaches_host("/x", "app.test"),
            ),
            (
                "GET",
                "http://app.test/x",
                vec![("host", "evil.test")],
                refused(400),
            ),
            ("GET", "http://evil.test@app.test/x", vec![], refused(400)),
            ("post", "http://app.test/x", vec![], refused(400)),
            // the header rules hold over HTTP/2 too (checked on what the backend saw, below)
            (
                "GET",
                "http://app.test/h2-headers",
                vec![
                    ("x_real_ip", "1.2.3.4"),
                    ("x-real-ip", "1.2.3.4"),
                    ("x-original-url", "/api/admin/x"),
                ],
                reaches_host("/h2-headers", "app.test"),
            ),
        ];
        let mut failures = Vec::new();
        for (method, uri, headers, want) in cases {
            let before = rec.count();
            let status = h2_request(proxy.addr, method, uri, &headers).await;
            let new = rec.since(before);
            // judge wants a response; an HTTP/2 one has no raw head, its status is enough here
            let answer = status.map(|status| RawResponse {
                status,
                headers: Vec::new(),
                body: Vec::new(),
            });
            if let Some(why) = judge(&want, &answer, &new) {
                failures.push(format!("  h2 {method} {uri} {headers:?}: {why}"));
            }
        }
        for seen in rec.seen().iter().filter(|s| s.target == "/h2-headers") {
            let wrong = seen.all("x-real-ip") != ["127.0.0.1"]
                || !seen.all("x-original-url").is_empty()
                || seen.headers.iter().any(|(n, _)| n.contains('_'));
            if wrong {
                failures.push(format!("  h2 headers: backend saw {:?}", seen.headers));
            }
        }
        assert!(failures.is_empty(), "HTTP/2:\n{}", failures.join("\n"));
    })
    .await;
}
