//! `gatehouse certs doctor` with the real binary against real parts: an authoritative DNS
//! server (Knot, Debian package `knot`) on a loopback port serving `test.` and `example.test.`
//! (the names resolve through it as the site's `dns.resolver`, never /etc/hosts), and Pebble
//! for the directory (and, where Gatehouse runs, the orders). One test per problem the doctor
//! diagnoses (port unreachable, CAA refusing, unwritable state dir, DNS provider refusing),
//! and one where all is well (exit 0), also through a running Gatehouse's admin listener.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::pebble::Pebble;
use support::{json_str_field, run_gatehouse, text_response, CmdOutput, TestProxy};

const KEY: &str = "gatehouse";
const SECRET: &str = "Z2F0ZWhvdXNlLWRucy0wMS10ZXN0LXNlY3JldC1rZXk=";
const WRONG_SECRET: &str = "bm90LXRoZS1zZWNyZXQtdGhlLXNlcnZlci1rbm93cyE=";

/// Each test's block of 10 ports: Pebble on `base..base+6` (its HTTP-01 port `base+2` is
/// Gatehouse's `[listen] http` and the doctor's `--http-port`), Knot on `base+6`, the admin
/// listener on `base+7`. Blocks 24400..24490 belong to this file.
const BASE_ALL_WELL: u16 = 24400;
const BASE_UNREACHABLE: u16 = 24410;
const BASE_CAA: u16 = 24420;
const BASE_STATE_DIR: u16 = 24430;
const BASE_PROVIDER: u16 = 24440;

/// knotd serving `test.` and `example.test.` (with `records` added to the latter) on
/// 127.0.0.1:`port`, updatable with the TSIG key `KEY`.
struct Knot {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Knot {
    fn start(port: u16, records: &str) -> Knot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\ndatabase:\n    storage: \"{d}/db\"\nlog:\n  - target: stderr\n    any: info\nkey:\n  - id: {KEY}\n    algorithm: hmac-sha256\n    secret: {SECRET}\nacl:\n  - id: update\n    key: {KEY}\n    action: update\ntemplate:\n  - id: default\n    storage: \"{d}\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\nzone:\n  - domain: test\n  - domain: example.test\n    acl: update\n"
        );
        std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let soa = "$TTL 60\n@ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60\n@ NS ns.example.test.\n";
        std::fs::write(
            dir.path().join("test.zone"),
            format!("$ORIGIN test.\n{soa}"),
        )
        .unwrap();
        let zone = format!("$ORIGIN example.test.\n{soa}ns A 127.0.0.1\n{records}\n");
        std::fs::write(dir.path().join("example.test.zone"), zone).unwrap();
        let log = std::fs::File::create(dir.path().join("knotd.log")).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start knotd (Debian package `knot`; tests/run.sh installs it)");
        let knot = Knot { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !knot.serves("example.test.") || !knot.serves("test.") {
            assert!(
                Instant::now() < deadline,
                "knotd did not serve within 20s:\n{}",
                knot.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        knot
    }

    fn serves(&self, zone: &str) -> bool {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+short",
                "+timeout=1",
                zone,
                "SOA",
            ])
            .output()
            .expect("run kdig (Debian package `knot-dnsutils`)");
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    fn txt(&self, name: &str) -> String {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+short",
                "+timeout=1",
                name,
                "TXT",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Knot, Pebble, a state dir and a config folder for one test.
struct Setup {
    base: u16,
    knot: Knot,
    pebble: Pebble,
    state: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start(base: u16, records: &str) -> Setup {
        let knot = Knot::start(base + 6, records);
        let dns = format!("127.0.0.1:{}", base + 6);
        let pebble = Pebble::start(base, &[("ACME_TESTBED_PEBBLE_DNS", &dns)]);
        Setup {
            base,
            knot,
            pebble,
            state: tempfile::tempdir().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn http_port(&self) -> u16 {
        self.base + 2
    }

    /// One ACME site per entry of `sites` (its `hosts` list, and extra lines), by HTTP-01
    /// unless a site says otherwise, names resolved through Knot.
    fn config(&self, sites: &[(&str, &str)], state_dir: &Path) -> PathBuf {
        let mut text = format!(
            r#"
[listen]
http = "127.0.0.1:{http}"
https = "127.0.0.1:0"
admin = "127.0.0.1:{admin}"

[server]
state_dir = "{state}"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
retry_initial = "1s"
retry_max = "2s"
dns = {{ provider = "rfc2136", server = "127.0.0.1:{knot}", zone = "example.test", tsig_key = "{KEY}", tsig_secret = "${{TSIG_SECRET}}", tsig_algorithm = "hmac-sha256", resolver = "127.0.0.1:{knot}", propagation_timeout = "10s" }}

[upstream.app]
servers = ["127.0.0.1:9"]
"#,
            http = self.http_port(),
            admin = self.base + 7,
            state = state_dir.display(),
            directory = self.pebble.var("ACME_DIRECTORY_URL"),
            ca_root = self.pebble.var("ACME_CA_FILE"),
            knot = self.knot.port,
        );
        for (hosts, extra) in sites {
            text.push_str(&format!(
                "\n[[site]]\nhosts = {hosts}\ntls = \"acme\"\n{extra}\n  [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n"
            ));
        }
        let path = self.dir.path().join("gatehouse.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `gatehouse certs doctor` on `config` (off the runtime: backends keep answering).
    async fn doctor(&self, config: &Path, secret: &str) -> CmdOutput {
        let (config, port, secret) = (
            config.display().to_string(),
            self.http_port().to_string(),
            secret.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            run_gatehouse(
                &["certs", "doctor", "-c", &config, "--http-port", &port],
                &[("TSIG_SECRET", &secret)],
                &[],
            )
        })
        .await
        .unwrap()
    }
}

fn report(out: &CmdOutput) -> String {
    format!(
        "exit {:?}\n--- stdout:\n{}--- stderr:\n{}",
        out.status.code(),
        out.stdout,
        out.stderr
    )
}

/// The report's line for `check` that contains `text`, with the fix line under a problem.
fn line_with<'a>(out: &'a CmdOutput, status: &str, check: &str, text: &str) -> &'a str {
    let prefix = format!("  {status:8} {check:12} ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&prefix) && l.contains(text))
        .unwrap_or_else(|| panic!("no `{status} {check}` line with {text:?}:\n{}", report(out)))
}

fn fix_after<'a>(out: &'a CmdOutput, line: &str) -> &'a str {
    let mut lines = out.stdout.lines().skip_while(|l| *l != line);
    lines.next();
    let fix = lines.next().unwrap_or_default();
    assert!(
        fix.trim_start().starts_with("fix: "),
        "no fix under {line:?}:\n{}",
        report(out)
    );
    fix
}

fn assert_no_problem(out: &CmdOutput) {
    assert!(
        out.status.code() == Some(0)
            && !out.stdout.contains("PROBLEM")
            && out.stdout.ends_with("all well\n"),
        "not all well:\n{}",
        report(out)
    );
}

fn assert_problems(out: &CmdOutput) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "a problem must exit 1:\n{}",
        report(out)
    );
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn all_well_exits_0_alone_and_through_a_running_gatehouse() {
    // a CAA record naming Pebble (its directory lists no caaIdentities: its host stands in)
    let setup = Setup::start(
        BASE_ALL_WELL,
        "app A 127.0.0.1\n@ CAA 0 issue \"127.0.0.1\"\n",
    );
    let config = setup.config(
        &[
            (r#"["app.example.test"]"#, ""),
            (
                r#"["*.example.test"]"#,
                r#"acme = { challenge = "dns-01" }"#,
            ),
        ],
        setup.state.path(),
    );
    // Gatehouse is not running: the doctor listens on [listen] http itself
    let out = setup.doctor(&config, SECRET).await;
    assert_no_problem(&out);
    line_with(&out, "ok", "resolve", "app.example.test: 127.0.0.1");
    line_with(&out, "ok", "http-01", "http://app.example.test:");
    line_with(
        &out,
        "ok",
        "caa",
        "the CAA records at example.test allow 127.0.0.1",
    );
    line_with(&out, "ok", "state_dir", "takes new files");
    line_with(
        &out,
        "ok",
        "rate limits",
        "0 certificate(s) for these names in the last 7 days (local store); unknown limits",
    );
    line_with(&out, "skipped", "resolve", "*.example.test: a wildcard");
    line_with(
        &out,
        "ok",
        "dns provider",
        "_gatehouse-doctor.example.test.",
    );
    assert!(
        setup.knot.txt("_gatehouse-doctor.example.test.").is_empty(),
        "test record left behind"
    );

    // Gatehouse runs and holds [listen] http: the doctor asks it (admin) to serve the token;
    // meanwhile it gets its certificates from Pebble, which the issuance log counts
    let proxy = TestProxy::start_at_with_env(&config, &[("TSIG_SECRET", SECRET)], true).await;
    let log = setup
        .state
        .path()
        .join("certs/127.0.0.1-24400-dir/app.example.test/issued.log");
    let deadline = Instant::now() + Duration::from_secs(40);
    while !log.exists() {
        assert!(
            Instant::now() < deadline,
            "no issuance logged:\n{}",
            proxy.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = setup.doctor(&config, SECRET).await;
    assert_no_problem(&out);
    line_with(&out, "ok", "http-01", "reached this Gatehouse");
    line_with(
        &out,
        "ok",
        "rate limits",
        "1 certificate(s) for these names",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_nobody_or_somebody_else_answers_is_diagnosed_and_logged_once_per_failure_streak() {
    let setup = Setup::start(BASE_UNREACHABLE, "gone A 127.0.0.2\nother A 127.0.0.3\n");
    // something else holds the port at other.example.test's address
    let other = std::net::TcpListener::bind(("127.0.0.3", setup.http_port())).unwrap();
    let _other = support::serve_on(
        tokio::net::TcpListener::from_std({
            other.set_nonblocking(true).unwrap();
            other
        })
        .unwrap(),
        "someone-else",
        |_req| async { text_response(404, "not here") },
    );
    let config = setup.config(
        &[
            (r#"["gone.example.test"]"#, ""),
            (r#"["other.example.test"]"#, ""),
        ],
        setup.state.path(),
    );
    let out = setup.doctor(&config, SECRET).await;
    assert_problems(&out);
    let port = setup.http_port();
    let gone = line_with(
        &out,
        "PROBLEM",
        "http-01",
        &format!("at 127.0.0.2:{port}: cannot connect"),
    );
    assert!(
        fix_after(&out, gone).contains("make the name's A/AAAA records point at this host"),
        "{}",
        report(&out)
    );
    let other = line_with(
        &out,
        "PROBLEM",
        "http-01",
        &format!("at 127.0.0.3:{port}: answered 404"),
    );
    assert!(
        fix_after(&out, other).contains("another server answers at 127.0.0.3"),
        "{}",
        report(&out)
    );
    // nothing else is wrong
    assert_eq!(out.stdout.matches("PROBLEM").count(), 2, "{}", report(&out));

    // a running Gatehouse whose order fails logs the same diagnosis once, not at every retry
    let proxy = TestProxy::start_at_with_env(&config, &[("TSIG_SECRET", SECRET)], true).await;
    let failed = |logs: &[String], names: &str| {
        logs.iter()
            .filter(|l| {
                json_str_field(l, "message").as_deref() == Some("certificate order failed")
                    && json_str_field(l, "names").as_deref() == Some(names)
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while failed(&proxy.logs(), "gone.example.test") < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 failed orders:\n{}",
            proxy.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let diagnosed: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| {
            l.contains("certificate doctor")
                && json_str_field(l, "names").as_deref() == Some("gone.example.test")
                && json_str_field(l, "check").as_deref() == Some("http-01")
        })
        .collect();
    assert_eq!(
        diagnosed.len(),
        1,
        "{diagnosed:#?}\n{}",
        proxy.logs().join("\n")
    );
    assert!(
        diagnosed[0].contains("\"level\":\"WARN\"") && diagnosed[0].contains("127.0.0.2:80"),
        "{}",
        diagnosed[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn caa_naming_another_ca_is_diagnosed() {
    let setup = Setup::start(
        BASE_CAA,
        "app A 127.0.0.1\n@ CAA 0 issue \"letsencrypt.org\"\n",
    );
    let config = setup.config(&[(r#"["app.example.test"]"#, "")], setup.state.path());
    let out = setup.doctor(&config, SECRET).await;
    assert_problems(&out);
    let caa = line_with(&out, "PROBLEM", "caa", "app.example.test: the CAA records (issue \"letsencrypt.org\") do not name this CA (127.0.0.1) (found at example.test)");
    assert!(
        fix_after(&out, caa).contains("CAA 0 issue \"127.0.0.1\""),
        "{}",
        report(&out)
    );
    assert_eq!(out.stdout.matches("PROBLEM").count(), 1, "{}", report(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_state_dir_is_diagnosed() {
    let setup = Setup::start(BASE_STATE_DIR, "app A 127.0.0.1\n");
    // tests run as root, which permissions do not stop: a state_dir under a regular file
    let file = setup.state.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let config = setup.config(&[(r#"["app.example.test"]"#, "")], &file.join("state"));
    let out = setup.doctor(&config, SECRET).await;
    assert_problems(&out);
    let line = line_with(
        &out,
        "PROBLEM",
        "state_dir",
        "certificates cannot be stored",
    );
    assert!(line.contains("not-a-dir"), "{}", report(&out));
    assert!(
        fix_after(&out, line).contains("make `[server] state_dir` a directory"),
        "{}",
        report(&out)
    );
    assert_eq!(out.stdout.matches("PROBLEM").count(), 1, "{}", report(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_provider_that_refuses_is_diagnosed() {
    let setup = Setup::start(BASE_PROVIDER, "");
    let config = setup.config(
        &[(
            r#"["app.example.test"]"#,
            r#"acme = { challenge = "dns-01" }"#,
        )],
        setup.state.path(),
    );
    let out = setup.doctor(&config, WRONG_SECRET).await;
    assert_problems(&out);
    let line = line_with(
        &out,
        "PROBLEM",
        "dns provider",
        "rfc2136 could not publish the test record _gatehouse-doctor.app.example.test.",
    );
    assert!(
        line.contains("NOTAUTH") && line.contains("BADSIG"),
        "{}",
        report(&out)
    );
    assert!(
        fix_after(&out, line).contains("tsig_secret"),
        "{}",
        report(&out)
    );
    // an internal name (no A record) is fine for DNS-01
    line_with(&out, "skipped", "resolve", "DNS-01 does not need it to");
    assert_eq!(out.stdout.matches("PROBLEM").count(), 1, "{}", report(&out));
}
