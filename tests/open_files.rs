//! The open-file limit: started with a soft limit of 1024 (`prlimit --nofile=1024:HARD`, as in
//! many containers), Gatehouse raises it to the hard limit, says so in its log, and warns when
//! `max_connections` and the upstream pools could need more.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::*;

/// The hard limit to start with: 65536, or this process's own hard limit if lower (only a
/// privileged process may raise its hard limit).
fn hard_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    open_files(&limits).1.min(65536)
}

/// (soft, hard) from a `/proc/<pid>/limits` text.
fn open_files(limits: &str) -> (u64, u64) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut figures = line["Max open files".len()..]
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(u64::MAX));
    (figures.next().unwrap(), figures.next().unwrap())
}

/// `gatehouse run` under `prlimit --nofile=1024:hard`, up to its `listening` line; its stderr
/// lines so far. The child is killed when the returned guard drops.
fn start_under_prlimit(config: &str, hard: u64) -> (KillOnDrop, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile=1024:{hard}"))
        .arg(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let child = KillOnDrop(child);
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| parse_listening_line(l, "http").is_some())
    {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no listening line; stderr:\n{}", lines.join("\n")),
        }
    }
    (child, lines, dir)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(max_connections: u64) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
max_connections = {max_connections}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "api"

[upstream.api]
servers = ["127.0.0.1:9"]
"#
    )
}

fn warned(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|l| l.contains("WARN") && l.contains("could need more open files"))
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit_and_logged() {
    let hard = hard_limit();
    assert!(
        hard > 1024,
        "this machine's hard limit is {hard}: nothing to raise"
    );
    let (child, lines, _dir) = start_under_prlimit(&config(100), hard);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).unwrap();
    assert_eq!(open_files(&limits), (hard, hard), "{limits}");
    let logged = lines
        .iter()
        .find(|l| l.contains("open-file limit raised to the hard limit"))
        .unwrap_or_else(|| panic!("no log line for the raise:\n{}", lines.join("\n")));
    assert_eq!(
        json_str_field(logged, "limit").as_deref(),
        Some(hard.to_string().as_str()),
        "{logged}"
    );
    assert_eq!(json_str_field(logged, "was").as_deref(), Some("1024"));
    assert!(!warned(&lines), "{}", lines.join("\n"));
}

#[test]
fn a_config_that_could_need_more_files_than_the_limit_is_warned_about() {
    let hard = hard_limit();
    // every client connection and one upstream connection each: twice max_connections
    let (_child, lines, _dir) = start_under_prlimit(&config(hard), hard);
    assert!(warned(&lines), "no warning:\n{}", lines.join("\n"));
}
