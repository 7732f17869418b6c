//! `gatehouse health`, the container HEALTHCHECK: exit 0 against a ready instance, 1 when it
//! answers not ready, 69 when nothing answers (refused, or silent past `--timeout`), 64 for a bad
//! config; `--admin` needs no config, `--config` reads only `[listen]`.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

const NOT_READY: i32 = 1;
const BAD_CONFIG: i32 = 64;
const UNREACHABLE: i32 = 69;

/// A proxy with an admin listener and one required upstream on `server`, checked every 200 ms.
fn config(server: SocketAddr) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[site]]
  [[site.route]]
  path = "/"
  upstream = "api"

[upstream.api]
servers = ["{server}"]
health = {{ path = "/", interval = "200ms", unhealthy = 1, healthy = 1 }}
required = true
"#
    )
}

/// `gatehouse health ARGS...` off the async runtime (it blocks until the command exits).
async fn health(args: &[&str]) -> (CmdOutput, Duration) {
    let args: Vec<String> = ["health"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let start = Instant::now();
        let out = run_gatehouse(&args, &[], &[]);
        (out, start.elapsed())
    })
    .await
    .unwrap()
}

fn code(out: &CmdOutput) -> i32 {
    out.status.code().expect("exited, not killed")
}

/// Writes `text` as a config file in a temp dir; the dir lives as long as the returned guard.
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_instance_exits_0_by_admin_address_and_by_config() {
    with_timeout(30, async {
        let backend = echo_backend("api").await;
        let proxy = TestProxy::start(&config(backend.addr)).await;
        let admin = proxy.admin_addr().await.to_string();

        let (out, _) = health(&["--admin", &admin]).await;
        assert_eq!(code(&out), 0, "stderr: {}", out.stderr);
        assert!(out.stdout.contains("ready"), "stdout: {}", out.stdout);

        // --config reads [listen] only: the certificate files the site names do not exist
        let (_dir, path) = config_file(&format!(
            r#"
[listen]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
admin = "{admin}"

[[site]]
hosts = ["example.com"]
tls = {{ cert = "/nonexistent/cert.pem", key = "/nonexistent/key.pem" }}
"#
        ));
        let check = run_gatehouse(&["check", "--config", &path], &[], &[]);
        assert_eq!(code(&check), BAD_CONFIG, "check reads the certificates");
        let (out, _) = health(&["--config", &path]).await;
        assert_eq!(code(&out), 0, "stderr: {}", out.stderr);

        // the test proxy's own config binds admin port 0: nothing to dial, said so
        let own = proxy.config_path.to_str().unwrap();
        let (out, _) = health(&["--config", own]).await;
        assert_eq!(code(&out), BAD_CONFIG, "stdout: {}", out.stdout);
        assert!(out.stderr.contains("port 0"), "stderr: {}", out.stderr);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_required_upstream_is_down_exits_1_but_is_live() {
    with_timeout(30, async {
        // every server of the required upstream refuses: /ready answers 503 from the first round
        let proxy = TestProxy::start(&config(closed_port_addr().await)).await;
        let admin = proxy.admin_addr().await.to_string();

        let (out, _) = health(&["--admin", &admin]).await;
        assert_eq!(code(&out), NOT_READY, "stdout: {}", out.stdout);
        assert!(
            out.stderr.contains("503") && out.stderr.contains("no healthy server in upstream api"),
            "stderr: {}",
            out.stderr
        );

        let (out, _) = health(&["--admin", &admin, "--live"]).await;
        assert_eq!(code(&out), 0, "stderr: {}", out.stderr);
        assert!(out.stdout.contains("live"), "stdout: {}", out.stdout);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_exits_69_at_once() {
    with_timeout(30, async {
        let closed = closed_port_addr().await.to_string();
        // a long timeout: a refusal must end the probe at once, not at the deadline
        let (out, took) = health(&["--admin", &closed, "--timeout", "30s"]).await;
        assert_eq!(code(&out), UNREACHABLE, "stdout: {}", out.stdout);
        assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
        assert!(took < Duration::from_secs(10), "refused took {took:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_accepts_but_never_answers_exits_69_within_the_timeout() {
    with_timeout(30, async {
        // bound and listening, never accepted from: the kernel completes the handshake, no byte
        // ever comes back
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let (out, took) = health(&["--admin", &addr, "--timeout", "700ms"]).await;
        assert_eq!(code(&out), UNREACHABLE, "stdout: {}", out.stdout);
        assert!(
            out.stderr.contains("no answer within 700ms"),
            "{}",
            out.stderr
        );
        assert!(
            // the upper bound leaves room for starting the debug binary on a busy machine
            took >= Duration::from_millis(700) && took < Duration::from_secs(5),
            "took {took:?} for a 700ms timeout"
        );
        drop(silent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_listener_the_http_listener_is_dialled() {
    with_timeout(30, async {
        let proxy = TestProxy::start(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200 }\n",
        )
        .await;
        let (_dir, path) = config_file(&format!("[listen]\nhttp = \"{}\"\n", proxy.addr));
        let (out, _) = health(&["--config", &path]).await;
        assert_eq!(code(&out), 0, "stderr: {}", out.stderr);
        assert!(
            out.stdout.contains("readiness not checked"),
            "stdout: {}",
            out.stdout
        );

        drop(proxy);
        let (out, _) = health(&["--config", &path]).await;
        assert_eq!(code(&out), UNREACHABLE, "stdout: {}", out.stdout);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_or_flag_exits_64_or_2_and_names_the_problem() {
    with_timeout(30, async {
        let (_dir, path) = config_file("[listen]\nhttp = \"0.0.0.0:8080\"\nadmin = \"nowhere\"\n");
        let (out, _) = health(&["--config", &path]).await;
        assert_eq!(code(&out), BAD_CONFIG);
        assert!(
            out.stderr.contains(&format!("{path}:3:")) && out.stderr.contains("listen.admin"),
            "stderr: {}",
            out.stderr
        );
        let (out, _) = health(&["--config", "/nonexistent/gatehouse.toml"]).await;
        assert_eq!(code(&out), BAD_CONFIG, "stderr: {}", out.stderr);
        // clap's own usage errors exit 2
        let (out, _) = health(&["--admin", "127.0.0.1:9901", "--timeout", "soon"]).await;
        assert_eq!(code(&out), 2, "stderr: {}", out.stderr);
        assert!(out.stderr.contains("500ms"), "stderr: {}", out.stderr);
    })
    .await;
}
