#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The access log (`[log]`), end to end with the real binary: JSON and nginx-combined lines in a
//! file, stdout, off, the default event on stderr; SIGUSR1 after a logrotate `create` rotation
//! and a `copytruncate` one; lines dropped and counted when the writer cannot keep up; config
//! errors.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

/// A proxied prefix, a local answer, and nothing else (any other path is a 404).
fn config(backend: SocketAddr, log: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

{log}

[upstream.app]
servers = ["{backend}"]

[[site]]

[[site.route]]
path = "/api/"
upstream = "app"

[[site.route]]
exact = "/hello"
respond = {{ status = 200, body = "hi\n" }}
"#
    )
}

fn access_file(proxy: &TestProxy, name: &str) -> PathBuf {
    proxy.config_path.parent().unwrap().join(name)
}

fn lines_of(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// Polls until `count()` reaches `n` (10 s at most).
async fn until(what: &str, n: usize, count: impl Fn() -> usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = count();
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {got} of {n} after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    until(&format!("lines in {}", path.display()), n, || {
        lines_of(path).len()
    })
    .await;
    lines_of(path)
}

/// The stderr line with this `message` (10 s at most).
async fn logged(proxy: &TestProxy, message: &str) -> Value {
    until(&format!("log line {message:?}"), 1, || {
        proxy
            .logs()
            .iter()
            .filter(|l| json_str_field(l, "message").as_deref() == Some(message))
            .count()
    })
    .await;
    let logs = proxy.logs();
    let line = logs
        .iter()
        .find(|l| json_str_field(l, "message").as_deref() == Some(message))
        .unwrap();
    serde_json::from_str(line).unwrap()
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

async fn get(http: &reqwest::Client, url: String) -> reqwest::Response {
    http.get(url).send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_what_happened_to_proxied_local_and_refused_requests() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        // relative to the config file's folder
        let log = "[log]\naccess = \"access.log\"\nformat = \"json\"";
        let proxy = TestProxy::start(&config(backend.addr, log)).await;
        let http = client();
        let proxied = http
            .post(proxy.url("/api/items?x=1"))
            .header("user-agent", "gatehouse-test/1.0")
            .header("referer", "https://ref.example/page")
            .header("x-request-id", "rid-proxied")
            .body("hello")
            .send()
            .await
            .expect("request");
        assert_eq!(proxied.status(), 200);
        let proxied_len = proxied.bytes().await.unwrap().len();
        let local = get(&http, proxy.url("/hello")).await;
        let local_id = header(&local, "x-request-id").unwrap();
        assert_eq!(local.bytes().await.unwrap().as_ref(), b"hi\n");
        let refused = get(&http, proxy.url("/nope")).await;
        assert_eq!(refused.status(), 404);
        let refused_id = header(&refused, "x-request-id").unwrap();
        let refused_len = refused.bytes().await.unwrap().len();

        let lines = wait_lines(&access_file(&proxy, "access.log"), 3).await;
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let by_path = |path: &str| {
            lines
                .iter()
                .map(|l| parse(l))
                .find(|v| v["path"] == path)
                .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
        };
        let rfc3339 = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").unwrap();
        let host = proxy.addr.to_string();
        for v in [by_path("/api/items"), by_path("/hello"), by_path("/nope")] {
            assert!(rfc3339.is_match(v["time"].as_str().unwrap()), "{v}");
            assert_eq!(v["client"], "127.0.0.1");
            assert_eq!(v["host"], host.as_str());
            assert_eq!(v["protocol"], "HTTP/1.1");
            let ms = v["duration_ms"].as_f64().unwrap();
            assert!((0.0..10_000.0).contains(&ms), "{v}");
        }

        let v = by_path("/api/items");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["query"], "x=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream"], backend.addr.to_string().as_str());
        assert_eq!(v["request_id"], "rid-proxied");
        assert_eq!(v["bytes_in"], 5);
        assert_eq!(v["bytes_out"], proxied_len);
        assert_eq!(v["user_agent"], "gatehouse-test/1.0");
        assert_eq!(v["referer"], "https://ref.example/page");

        let v = by_path("/hello");
        assert_eq!(
            (v["method"].as_str(), v["query"].as_str()),
            (Some("GET"), Some(""))
        );
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream"], "-");
        assert_eq!(v["request_id"], local_id.as_str());
        assert_eq!(
            (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
            (Some(0), Some(3))
        );
        assert_eq!(
            (v["user_agent"].as_str(), v["referer"].as_str()),
            (Some("-"), Some("-"))
        );

        let v = by_path("/nope");
        assert_eq!(v["status"], 404);
        assert_eq!(v["upstream"], "-");
        assert_eq!(v["request_id"], refused_id.as_str());
        assert_eq!(v["bytes_out"], refused_len);

        let events = proxy.logs();
        let on_stderr = events
            .iter()
            .filter(|l| json_str_field(l, "message").as_deref() == Some("request"));
        assert_eq!(
            on_stderr.count(),
            0,
            "a file log takes the lines off stderr"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_are_nginx_combined() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let log = "[log]\naccess = \"access.log\"\nformat = \"combined\"";
        let proxy = TestProxy::start(&config(backend.addr, log)).await;
        let http = client();
        let proxied = http
            .get(proxy.url("/api/a?b=1&c=%22"))
            .header("user-agent", "Mozilla/5.0 (X11) \"quoted\"")
            .header("referer", "https://ref.example/")
            .send()
            .await
            .expect("request");
        let proxied_len = proxied.bytes().await.unwrap().len();
        let refused = get(&http, proxy.url("/nope")).await;
        let refused_len = refused.bytes().await.unwrap().len();

        let lines = wait_lines(&access_file(&proxy, "access.log"), 2).await;
        // nginx: log_format combined '$remote_addr - $remote_user [$time_local] '
        //                            '"$request" $status $body_bytes_sent '
        //                            '"$http_referer" "$http_user_agent"';
        let combined = regex::Regex::new(
            r#"^(\S+) - (\S+) \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$"#,
        )
        .unwrap();
        let fields = |line: &str| {
            let c = combined
                .captures(line)
                .unwrap_or_else(|| panic!("not nginx combined: {line}"));
            (1..=8).map(|i| c[i].to_string()).collect::<Vec<_>>()
        };
        let proxied_len = proxied_len.to_string();
        let refused_len = refused_len.to_string();
        let (nope, api): (Vec<&String>, Vec<&String>) =
            lines.iter().partition(|l| l.contains("/nope"));
        let first = fields(api[0]);
        let f: Vec<&str> = first.iter().map(String::as_str).collect();
        assert_eq!(
            [f[0], f[1], f[3], f[4], f[5], f[6], f[7]],
            [
                "127.0.0.1",
                "-",
                "GET /api/a?b=1&c=%22 HTTP/1.1",
                "200",
                proxied_len.as_str(),
                "https://ref.example/",
                r"Mozilla/5.0 (X11) \x22quoted\x22",
            ]
        );
        assert!(f[2].ends_with(" +0000"), "UTC: {}", f[2]);
        let second = fields(nope[0]);
        let f: Vec<&str> = second.iter().map(String::as_str).collect();
        assert_eq!(
            [f[3], f[4], f[5], f[6], f[7]],
            ["GET /nope HTTP/1.1", "404", refused_len.as_str(), "-", "-"]
        );
    })
    .await;
}

/// Sends `GET /hello?n=N` for every N in `range`, one after the other.
async fn numbered(http: &reqwest::Client, proxy: &TestProxy, range: std::ops::Range<usize>) {
    for n in range {
        let resp = get(http, proxy.url(&format!("/hello?n={n}"))).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
}

/// The numbered requests a file logged, in order of number: a line is written when its answer
/// has been sent, and the client may send the next request before that, on another connection
/// (its pool hands the first back once it has read the answer), served on the other worker
/// thread, so lines of consecutive requests may swap places (seen under load: 0, 1, 2, 4, ..., 9, 3).
fn numbers(lines: &[String]) -> Vec<usize> {
    let mut numbers: Vec<usize> = lines
        .iter()
        .map(|l| {
            let v = parse(l);
            let q = v["query"].as_str().unwrap().to_string();
            q.trim_start_matches("n=").parse().unwrap()
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_after_a_rename_starts_a_new_file_and_loses_no_line() {
    with_timeout(60, async {
        let backend = echo_backend("echo").await;
        let log = "[log]\naccess = \"access.log\"";
        let proxy = TestProxy::start(&config(backend.addr, log)).await;
        let (path, rotated) = (
            access_file(&proxy, "access.log"),
            access_file(&proxy, "access.log.1"),
        );
        let http = client();
        numbered(&http, &proxy, 0..20).await;
        // logrotate `create`: move the file away, then signal
        std::fs::rename(&path, &rotated).unwrap();
        numbered(&http, &proxy, 20..30).await;
        proxy.send_signal("USR1");
        let reopened = logged(&proxy, "access log reopened").await;
        assert_eq!(reopened["path"], path.display().to_string().as_str());
        numbered(&http, &proxy, 30..45).await;

        until("lines in both files", 45, || {
            lines_of(&path).len() + lines_of(&rotated).len()
        })
        .await;
        let (old, new) = (numbers(&lines_of(&rotated)), numbers(&lines_of(&path)));
        let all: BTreeSet<usize> = old.iter().chain(&new).copied().collect();
        assert_eq!(old.len() + new.len(), 45, "old {old:?}\nnew {new:?}");
        assert_eq!(all, (0..45).collect(), "every request once");
        assert!(
            (0..20).all(|n| old.contains(&n)),
            "before the rename: old file {old:?}"
        );
        assert!(
            (30..45).all(|n| new.contains(&n)),
            "after the reopen: new file {new:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_leaves_no_hole_and_writing_goes_on() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let log = "[log]\naccess = \"access.log\"";
        let proxy = TestProxy::start(&config(backend.addr, log)).await;
        let path = access_file(&proxy, "access.log");
        let http = client();
        numbered(&http, &proxy, 0..5).await;
        wait_lines(&path, 5).await;
        // logrotate `copytruncate`: copy, then truncate in place; no signal
        std::fs::copy(&path, access_file(&proxy, "access.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        numbered(&http, &proxy, 5..8).await;
        let lines = wait_lines(&path, 3).await;
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes.first(),
            Some(&b'{'),
            "append mode: no zeros where the old lines were"
        );
        assert!(!bytes.contains(&0));
        assert_eq!(numbers(&lines), vec![5, 6, 7]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_gets_the_lines_and_stderr_does_not() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let log = "[log]\naccess = \"stdout\"\nformat = \"json\"";
        let proxy = TestProxy::start(&config(backend.addr, log)).await;
        let http = client();
        get(&http, proxy.url("/api/x")).await.bytes().await.unwrap();
        get(&http, proxy.url("/hello")).await.bytes().await.unwrap();
        until("stdout lines", 2, || proxy.stdout_lines().len()).await;
        let lines: Vec<Value> = proxy.stdout_lines().iter().map(|l| parse(l)).collect();
        assert_eq!(lines[0]["path"], "/api/x");
        assert_eq!(lines[0]["upstream"], backend.addr.to_string().as_str());
        assert_eq!(lines[1]["path"], "/hello");
        let on_stderr = proxy
            .logs()
            .iter()
            .filter(|l| json_str_field(l, "message").as_deref() == Some("request"))
            .count();
        assert_eq!(on_stderr, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_writes_nothing_anywhere() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let log = "[log]\naccess = \"off\"";
        let mut proxy = TestProxy::start(&config(backend.addr, log)).await;
        let http = client();
        for path in ["/api/x", "/hello", "/nope"] {
            get(&http, proxy.url(path)).await.bytes().await.unwrap();
        }
        // after a clean shutdown anything queued would have been written
        proxy.send_signal("TERM");
        assert!(proxy.wait_exit(Duration::from_secs(10)).await.is_some());
        let stopped = proxy.logs();
        assert!(stopped.iter().any(|l| l.contains("\"stopped\"")));
        let events = stopped
            .iter()
            .filter(|l| json_str_field(l, "message").as_deref() == Some("request"))
            .count();
        assert_eq!(events, 0, "{stopped:#?}");
        assert!(proxy.stdout_lines().is_empty());
        let dir = proxy.config_path.parent().unwrap();
        let files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["gatehouse.toml"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_event_stays_in_the_process_log() {
    with_timeout(30, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(backend.addr, "")).await;
        let resp = get(&client(), proxy.url("/api/default")).await;
        let id = header(&resp, "x-request-id").unwrap();
        let v = logged(&proxy, "request").await;
        assert_eq!(v["target"], "gatehouse::access");
        assert_eq!(v["path"], "/api/default");
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream"], backend.addr.to_string().as_str());
        assert_eq!(v["request_id"], id.as_str());
        assert!(v["duration_ms"].is_f64() && v["bytes_out"].is_u64());
        // SIGUSR1 has nothing to reopen here, and must not kill the process
        proxy.send_signal("USR1");
        logged(
            &proxy,
            "SIGUSR1: the access log is not a file; nothing to reopen",
        )
        .await;
        assert_eq!(get(&client(), proxy.url("/hello")).await.status(), 200);
    })
    .await;
}

/// A FIFO nobody reads stands for a stalled disk: the writer blocks once the pipe and its buffer
/// are full, the queue (`buffer = 1`) fills, and every further line is dropped and counted.
/// Requests never wait for it. When the FIFO is drained, the lines that were kept arrive; kept
/// plus dropped is every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_drops_and_counts_lines_and_never_holds_requests() {
    with_timeout(60, async {
        use std::io::{BufRead, Write};
        const REQUESTS: usize = 400;
        let fifo_dir = tempfile::tempdir().unwrap();
        let fifo = fifo_dir.path().join("access.fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        // read-write: opening does not wait for the other end, and the proxy's open does not either
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let log = format!("[log]\naccess = \"{}\"\nbuffer = 1", fifo.display());
        let backend = echo_backend("echo").await;
        let mut proxy = TestProxy::start(&config(backend.addr, &log)).await;
        let http = client();
        let pad = "p".repeat(1000);
        let started = Instant::now();
        for n in 0..REQUESTS {
            let resp = get(&http, proxy.url(&format!("/hello?n={n}&{pad}"))).await;
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
        }
        let took = started.elapsed();
        let warning = logged(
            &proxy,
            "access log: the queue to the writer is full, lines are being dropped (at most one warning per 10 s; raise [log] buffer or use a faster target)",
        )
        .await;
        assert!(warning["dropped_total"].as_u64().unwrap() >= 1);

        let mut sentinel = pipe.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut kept = Vec::new();
            for line in std::io::BufReader::new(pipe).lines() {
                let line = line.unwrap();
                if line == "END" {
                    break;
                }
                kept.push(line);
            }
            kept
        });
        proxy.send_signal("TERM");
        assert!(proxy.wait_exit(Duration::from_secs(15)).await.is_some());
        sentinel.write_all(b"END\n").unwrap();
        let kept = reader.join().unwrap();
        let closed = logged(&proxy, "access log closed").await;
        let dropped = closed["dropped"].as_u64().unwrap() as usize;
        assert!(dropped > 0 && !kept.is_empty(), "kept {}, dropped {dropped}", kept.len());
        assert_eq!(kept.len() + dropped, REQUESTS, "every request kept or counted");
        let mut seen = BTreeSet::new();
        for line in &kept {
            let n: usize = parse(line)["query"].as_str().unwrap()[2..]
                .split('&')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(seen.insert(n));
        }
        eprintln!(
            "{REQUESTS} requests in {took:?} with the writer stalled: {} lines kept, {dropped} dropped",
            kept.len()
        );
    })
    .await;
}

#[test]
fn log_errors_name_the_line_the_key_and_what_is_valid() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "access = \"\"",
            "log.access",
            "`access` is empty; expected \"stderr\"",
        ),
        (
            "access = \"no/such/folder/access.log\"",
            "log.access",
            "does not exist; create it",
        ),
        (
            "access = \"stdout\"\nformat = \"clf\"",
            "log.format",
            "expected \"json\"",
        ),
        (
            "format = \"combined\"",
            "log.format",
            "with `access = \"stderr\"` (the default)",
        ),
        (
            "access = \"off\"\nbuffer = 0",
            "log.buffer",
            "expected a whole number from 1 to 1048576",
        ),
        ("acces = \"stdout\"", "acces", "unknown field"),
    ];
    for (section, key, fragment) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        let text = config("127.0.0.1:9".parse().unwrap(), &format!("[log]\n{section}"));
        std::fs::write(&path, &text).unwrap();
        let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
        assert_eq!(out.status.code(), Some(64), "{section}: {}", out.stderr);
        let line = text
            .lines()
            .position(|l| l.starts_with(key.rsplit('.').next().unwrap()));
        let at = format!("gatehouse.toml:{}:", line.unwrap() + 1);
        assert!(
            out.stderr.contains(&at),
            "{section}: wanted {at}\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("`{key}`")),
            "{section}\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(fragment),
            "{section}: wanted {fragment:?}\n{}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_log_to_a_new_file_and_an_unopenable_one_is_refused() {
    with_timeout(60, async {
        let backend = echo_backend("echo").await;
        let proxy = TestProxy::start(&config(backend.addr, "[log]\naccess = \"a.log\"")).await;
        let (first, second) = (access_file(&proxy, "a.log"), access_file(&proxy, "b.log"));
        let http = client();
        numbered(&http, &proxy, 0..10).await;
        wait_lines(&first, 10).await;

        std::fs::write(
            &proxy.config_path,
            config(backend.addr, "[log]\naccess = \"b.log\""),
        )
        .unwrap();
        proxy.send_signal("HUP");
        let reloaded = logged(&proxy, "config reloaded").await;
        assert!(
            reloaded["changes"].as_str().unwrap().contains("access log"),
            "{reloaded}"
        );
        numbered(&http, &proxy, 10..20).await;
        let moved = wait_lines(&second, 10).await;
        assert_eq!(numbers(&moved), (10..20).collect::<Vec<_>>());
        assert_eq!(numbers(&lines_of(&first)), (0..10).collect::<Vec<_>>());

        // a folder where the file should be: valid to `check`, but it cannot be opened
        std::fs::create_dir(access_file(&proxy, "c.log")).unwrap();
        std::fs::write(
            &proxy.config_path,
            config(backend.addr, "[log]\naccess = \"c.log\""),
        )
        .unwrap();
        proxy.send_signal("HUP");
        let rejected = logged(&proxy, "config reload rejected; the running config stays").await;
        assert!(
            rejected["error"].as_str().unwrap().contains("c.log"),
            "{rejected}"
        );
        numbered(&http, &proxy, 20..25).await;
        let kept = wait_lines(&second, 15).await;
        assert_eq!(numbers(&kept), (10..25).collect::<Vec<_>>());
    })
    .await;
}

/// A closed stderr (the log collector gone) loses log lines, not requests: the default access
/// log goes to stderr, and a failed write used to panic the request that logged it.
#[test]
fn a_closed_stderr_costs_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { body = \"hi\" }\n";
    std::fs::write(dir.path().join("g.toml"), config).unwrap();
    let mut proxy = Spawned::start(&["run", "--config", "g.toml"], dir.path());
    drop(proxy.stderr.take());
    for i in 0..3 {
        let answer = proxy.get("/");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "request {i}: {answer:?}"
        );
    }
}
