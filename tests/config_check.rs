//! Acceptance item 14: `gatehouse check` reports each kind of config error at FILE:LINE:COLUMN with
//! the key and what would be valid; valid configs (incl. the shipped one) pass; `run` refuses an
//! invalid config; `${ENV}` expansion; `gatehouse version`.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use support::{run_gatehouse, with_timeout, CmdOutput, TestProxy};

/// Exit status for an invalid config (EX_DATAERR).
const CONFIG_ERROR: i32 = 64;

/// 1-based line number of the first line of `text` containing `marker`.
fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker:?} not in config"))
        + 1
}

fn check(config: &str, envs: &[(&str, &str)], env_remove: &[&str]) -> (String, CmdOutput) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, config).expect("write config");
    let path = path.to_str().expect("utf-8 path").to_string();
    let out = run_gatehouse(&["check", "--config", &path], envs, env_remove);
    (path, out)
}

/// Asserts `gatehouse check` rejects `config`, pointing at the line containing `marker`, and that
/// the message mentions every string in `mentions`.
fn assert_rejected(config: &str, marker: &str, mentions: &[&str], env_remove: &[&str]) {
    let (path, out) = check(config, &[], env_remove);
    let line = line_of(config, marker);
    assert_eq!(
        out.status.code(),
        Some(CONFIG_ERROR),
        "check should exit {CONFIG_ERROR} for an invalid config; stderr:\n{}",
        out.stderr
    );
    let location = format!("{path}:{line}:");
    let column_follows = out.stderr.match_indices(&location).any(|(at, _)| {
        out.stderr[at + location.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    });
    assert!(
        column_follows,
        "stderr should contain {location}COLUMN (the line with {marker:?}); got:\n{}",
        out.stderr
    );
    for mention in mentions {
        assert!(
            out.stderr.contains(mention),
            "stderr should mention {mention:?}; got:\n{}",
            out.stderr
        );
    }
}

const LISTEN: &str = "[listen]\nhttp = \"127.0.0.1:0\"\n";

#[test]
fn unknown_key_is_reported_with_valid_keys() {
    let config = format!("{LISTEN}\n[server]\nworkers = 2\nbogus = 1\n");
    assert_rejected(
        &config,
        "bogus",
        &[
            "bogus",
            "trusted_proxies",
            "workers",
            "shutdown_grace",
            "timeouts",
        ],
        &[],
    );
}

#[test]
fn bad_duration_is_reported_with_an_example() {
    let config = format!(
        "{LISTEN}\n[server]\nshutdown_grace = \"5s\"\ntimeouts = {{ header_read = \"10s\", idle = \"ten seconds\" }}\n"
    );
    assert_rejected(&config, "ten seconds", &["idle", "30s"], &[]);
}

#[test]
fn route_to_missing_upstream_names_the_defined_ones() {
    let config = format!(
        r#"{LISTEN}
[[site]]
hosts = ["app.example.com"]

  [[site.route]]
  path = "/"
  upstream = "nosuch"

[upstream.backend_pool]
servers = ["127.0.0.1:9"]
"#
    );
    assert_rejected(
        &config,
        "\"nosuch\"",
        &["upstream", "nosuch", "backend_pool"],
        &[],
    );
}

#[test]
fn duplicate_host_across_sites_is_reported() {
    let config = format!(
        r#"{LISTEN}
[[site]]
hosts = ["dup.example.com", "a.example.com"]
  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "one" }}

[[site]]
hosts = ["b.example.com", "dup.example.com"] # second
  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "two" }}
"#
    );
    assert_rejected(&config, "# second", &["dup.example.com"], &[]);
}

#[test]
fn unparsable_listen_address_is_reported() {
    let config = "[server]\nworkers = 1\n\n[listen]\nhttp = \"not an address\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200, body = \"x\" }\n";
    assert_rejected(config, "not an address", &["http"], &[]);
}

#[test]
fn unset_env_var_is_reported() {
    let var = "GATEHOUSE_TEST_SURELY_UNSET_VAR";
    let config = format!(
        "{LISTEN}\n[server]\nworkers = 1\nshutdown_grace = \"${{{var}}}\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = {{ status = 200, body = \"x\" }}\n"
    );
    assert_rejected(&config, var, &[var], &[var]);
}

#[test]
fn valid_config_with_env_var_passes_check() {
    let config = format!(
        "{LISTEN}\n[server]\nshutdown_grace = \"${{GATEHOUSE_TEST_GRACE}}\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = {{ status = 200, body = \"x\" }}\n"
    );
    let (_, out) = check(&config, &[("GATEHOUSE_TEST_GRACE", "5s")], &[]);
    assert!(
        out.status.success(),
        "valid config rejected ({:?}):\n{}",
        out.status,
        out.stderr
    );
}

#[test]
fn shipped_config_passes_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatehouse.toml");
    assert!(path.exists(), "{} is not shipped", path.display());
    let out = run_gatehouse(
        &["check", "--config", path.to_str().expect("utf-8 path")],
        &[],
        &[],
    );
    assert!(
        out.status.success(),
        "shipped config rejected ({:?}):\n{}",
        out.status,
        out.stderr
    );
}

#[test]
fn run_with_invalid_config_exits_without_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, format!("{LISTEN}\n[server]\nbogus = 1\n")).expect("write");
    let out = run_gatehouse(
        &[
            "run",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--log-format",
            "json",
        ],
        &[],
        &[],
    );
    assert!(
        !out.status.success(),
        "run accepted an invalid config; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr
            .lines()
            .any(|line| support::parse_listening_line(line, "http").is_some()),
        "run started listening with an invalid config:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("bogus"),
        "run should say what is wrong:\n{}",
        out.stderr
    );
}

#[test]
fn version_prints_the_crate_version() {
    let out = run_gatehouse(&["version"], &[], &[]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "version output {:?} lacks {}",
        out.stdout,
        env!("CARGO_PKG_VERSION")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_vars_are_expanded_at_run_time() {
    with_timeout(30, async {
        let config = format!(
            "{LISTEN}\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = {{ status = 200, body = \"greeting: ${{GATEHOUSE_TEST_GREETING}}\" }}\n"
        );
        let proxy =
            TestProxy::start_with_env(&config, &[("GATEHOUSE_TEST_GREETING", "hi there")]).await;
        let resp = support::client()
            .get(proxy.url("/"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), "greeting: hi there");
    })
    .await;
}
