//! DNS-01 (`challenge = "dns-01"`) end to end: a real authoritative DNS server (Knot, Debian
//! package `knot`) on a loopback port serving `example.test`, updated with TSIG-signed RFC 2136
//! updates (or by an `exec` hook calling `knsupdate`), and pebble validating against that server
//! (`-dnsserver`). A wildcard site and a plain one get pebble-issued certificates; the TXT
//! records are gone afterwards; a wrong TSIG secret and a failing hook give clear errors and no
//! certificate; a restart in the middle leaves no record behind. `/metrics` counts the publishes,
//! removals and propagation waits (`gatehouse_acme_dns_*`).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pebble::{served_leaf, Pebble};
use support::{client, echo_backend, json_str_field, serve, text_response, Backend, TestProxy};

const ZONE: &str = "example.test";
const KEY: &str = "gatehouse";
/// base64 of 32 bytes, as `keymgr -t` prints them.
const SECRET: &str = "Z2F0ZWhvdXNlLWRucy0wMS10ZXN0LXNlY3JldC1rZXk=";
const WRONG_SECRET: &str = "bm90LXRoZS1zZWNyZXQtdGhlLXNlcnZlci1rbm93cyE=";

/// Each test runs pebble on `base..base+6` and Knot on `base+6` (fixed blocks below 32768, as
/// in tests/acme.rs, whose blocks end at 24170).
const BASE_RFC2136: u16 = 24200;
const BASE_BAD_TSIG: u16 = 24210;
const BASE_EXEC: u16 = 24220;
const BASE_EXEC_FAILS: u16 = 24230;
const BASE_RESTART: u16 = 24240;
const BASE_HTTPREQ: u16 = 24250;
const BASE_HTTPREQ_REFUSED: u16 = 24260;
const BASE_PER_SITE: u16 = 24270;

const ISSUANCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Knot
// ---------------------------------------------------------------------------------------------

/// knotd serving `example.test` on 127.0.0.1:`port`, updatable with the TSIG key `KEY`.
struct Knot {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Knot {
    fn start(port: u16) -> Knot {
        let dir = tempfile::tempdir().expect("knot dir");
        let d = dir.path().display();
        let conf = format!(
            r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
database:
    storage: "{d}/db"
log:
  - target: stderr
    any: info
key:
  - id: {KEY}
    algorithm: hmac-sha256
    secret: {SECRET}
acl:
  - id: update
    key: {KEY}
    action: update
template:
  - id: default
    storage: "{d}"
    file: "%s.zone"
    zonefile-sync: -1
zone:
  - domain: {ZONE}
    acl: update
"#
        );
        std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
        // knotd does not create it, and fails every update without it
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let zone = format!(
            "$ORIGIN {ZONE}.\n$TTL 60\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\n"
        );
        std::fs::write(dir.path().join(format!("{ZONE}.zone")), zone).unwrap();
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
        while knot.dig(&format!("{ZONE}."), "SOA").is_empty() {
            assert!(
                Instant::now() < deadline,
                "knotd did not serve {ZONE} within 20s:\n{}",
                knot.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        knot
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kdig +short` answers for `name`/`kind`.
    fn dig(&self, name: &str, kind: &str) -> Vec<String> {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+short",
                "+timeout=1",
            ])
            .args([name, kind])
            .output()
            .expect("run kdig (Debian package `knot-dnsutils`)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
            .map(|l| l.trim_matches('"').to_string())
            .collect()
    }

    /// Every `_acme-challenge` TXT value under the zone for the test's names.
    fn challenge_records(&self) -> Vec<String> {
        [
            "_acme-challenge.example.test.",
            "_acme-challenge.app.example.test.",
        ]
        .iter()
        .flat_map(|name| self.dig(name, "TXT"))
        .collect()
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

// ---------------------------------------------------------------------------------------------
// The setup: Knot, pebble, a backend, Gatehouse
// ---------------------------------------------------------------------------------------------

struct Setup {
    knot: Knot,
    pebble: Pebble,
    state: tempfile::TempDir,
    backend: Backend,
}

impl Setup {
    async fn start(base: u16) -> Setup {
        let knot = Knot::start(base + 6);
        let pebble = Pebble::start(base, &[("ACME_TESTBED_PEBBLE_DNS", &knot.addr())]);
        Setup {
            knot,
            pebble,
            state: tempfile::tempdir().unwrap(),
            backend: echo_backend("echo").await,
        }
    }

    /// The rfc2136 provider with `secret` (through `${TSIG_SECRET}`).
    fn rfc2136(&self, extra: &str) -> String {
        format!(
            r#"{{ provider = "rfc2136", server = "{}", zone = "{ZONE}", tsig_key = "{KEY}", tsig_secret = "${{TSIG_SECRET}}", tsig_algorithm = "hmac-sha256", propagation_timeout = "30s"{extra} }}"#,
            self.knot.addr()
        )
    }

    /// A wildcard site and a plain one, both by DNS-01 through `dns`.
    fn config(&self, dns: &str) -> String {
        format!(
            r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
state_dir = "{state}"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
challenge = "dns-01"
dns = {dns}
retry_initial = "1s"
retry_max = "2s"

[[site]]
hosts = ["*.{ZONE}"]
tls = "acme"
  [[site.route]]
  path = "/"
  upstream = "app"

[[site]]
hosts = ["app.{ZONE}"]
tls = "acme"
  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["{backend}"]
"#,
            state = self.state.path().display(),
            directory = self.pebble.var("ACME_DIRECTORY_URL"),
            ca_root = self.pebble.var("ACME_CA_FILE"),
            backend = self.backend.addr,
        )
    }

    async fn gatehouse(&self, config: &str, secret: &str) -> (TestProxy, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, config).unwrap();
        let proxy = TestProxy::start_at_with_env(&path, &[("TSIG_SECRET", secret)], true).await;
        (proxy, dir)
    }

    fn diagnostics(&self, proxy: &TestProxy) -> String {
        let tail = |text: String, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "\n--- gatehouse:\n{}\n--- pebble:\n{}\n--- knotd:\n{}",
            tail(proxy.logs().join("\n"), 30),
            tail(self.pebble.log(), 20),
            tail(self.knot.log(), 20)
        )
    }

    /// Polls until a handshake with `sni` verifies against pebble's root.
    async fn wait_for_cert(&self, proxy: &TestProxy, sni: &str) {
        let root = self.pebble.root();
        let deadline = Instant::now() + ISSUANCE;
        loop {
            let last = match served_leaf(proxy.https(), sni, &root).await {
                Ok(_) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "no pebble certificate for {sni} within {ISSUANCE:?} ({last}){}",
                    self.diagnostics(proxy)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls until no `_acme-challenge` record is left in the zone.
    async fn wait_records_gone(&self, proxy: &TestProxy) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.knot.challenge_records();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "TXT records left in the zone: {left:?}{}",
                    self.diagnostics(proxy)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The first "certificate order failed" line's error.
    async fn wait_order_error(&self, proxy: &TestProxy) -> String {
        let deadline = Instant::now() + ISSUANCE;
        loop {
            let found = proxy.logs().into_iter().find_map(|l| {
                (json_str_field(&l, "message").as_deref() == Some("certificate order failed"))
                    .then(|| json_str_field(&l, "error").unwrap_or_default())
            });
            if let Some(error) = found {
                return error;
            }
            if Instant::now() >= deadline {
                panic!("no failed order logged{}", self.diagnostics(proxy));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The sample `series` (name with its labels, as exposed) in the admin listener's `/metrics`, 0
/// when absent.
async fn metric(proxy: &TestProxy, series: &str) -> f64 {
    let admin = proxy.admin_addr().await;
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls until the series' value is at least `min`; returns it.
async fn wait_metric(setup: &Setup, proxy: &TestProxy, series: &str, min: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(proxy, series).await;
        if value >= min {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "{series} is {value}, wanted at least {min}{}",
                setup.diagnostics(proxy)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An exec hook (lego's protocol) that updates Knot with `knsupdate`.
fn knsupdate_hook(dir: &Path, knot: &Knot) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
set -eu
case "$1" in
  present) line="update add $2 60 TXT \"$3\"" ;;
  cleanup) line="update delete $2 TXT \"$3\"" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
printf 'server 127.0.0.1 {port}\nzone {ZONE}.\n%s\nsend\n' "$line" | knsupdate -y hmac-sha256:{KEY}:{SECRET}
echo "$1 $2 $3" >> "{log}"
"#,
        port = knot.port,
        log = dir.join("hook.log").display(),
    );
    write_script(dir, "dns-hook", &script)
}

fn write_script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rfc2136_with_tsig_gets_a_wildcard_and_a_plain_certificate_and_cleans_up() {
    let setup = Setup::start(BASE_RFC2136).await;
    let config = setup.config(&setup.rfc2136(""));
    let (proxy, _dir) = setup.gatehouse(&config, SECRET).await;
    setup.wait_for_cert(&proxy, "foo.example.test").await;
    setup.wait_for_cert(&proxy, "bar.example.test").await;
    setup.wait_for_cert(&proxy, "app.example.test").await;
    setup.wait_records_gone(&proxy).await;
    // knot really took the updates (its ACL admits only the TSIG key)
    let log = setup.knot.log();
    assert!(
        log.contains("DDNS, processing") && !log.contains("DDNS, processing failed"),
        "knotd logged no update:\n{log}"
    );
    let pending: Vec<_> = walk(setup.state.path())
        .into_iter()
        .filter(|p| p.ends_with("dns-01-pending.json"))
        .collect();
    assert!(pending.is_empty(), "records still remembered: {pending:?}");
    // one record per certificate (the wildcard's at its base name), each published, seen
    // answered and removed
    let label = r#"{provider="rfc2136",result="success"}"#;
    let published = format!("gatehouse_acme_dns_publishes_total{label}");
    let published = wait_metric(&setup, &proxy, &published, 2.0).await;
    let removed = format!("gatehouse_acme_dns_cleanups_total{label}");
    wait_metric(&setup, &proxy, &removed, published).await;
    let waits = format!("gatehouse_acme_dns_propagation_seconds_count{label}");
    wait_metric(&setup, &proxy, &waits, published).await;
    let failed = r#"gatehouse_acme_dns_publishes_total{provider="rfc2136",result="failure"}"#;
    assert_eq!(metric(&proxy, failed).await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_tsig_secret_is_a_clear_error_and_no_certificate() {
    let setup = Setup::start(BASE_BAD_TSIG).await;
    let config = setup.config(&setup.rfc2136(""));
    let (proxy, _dir) = setup.gatehouse(&config, WRONG_SECRET).await;
    let error = setup.wait_order_error(&proxy).await;
    let server = setup.knot.addr();
    assert!(
        error.contains(&server) && error.contains("NOTAUTH") && error.contains("BADSIG"),
        "the error names neither the server {server} nor the TSIG rejection: {error}"
    );
    assert!(error.contains("tsig_secret"), "no hint: {error}");
    let failed = r#"gatehouse_acme_dns_publishes_total{provider="rfc2136",result="failure"}"#;
    wait_metric(&setup, &proxy, failed, 1.0).await;
    let root = setup.pebble.root();
    assert!(served_leaf(proxy.https(), "app.example.test", &root)
        .await
        .is_err());
    assert!(setup.knot.challenge_records().is_empty());
    // a refused update changed nothing: nothing is left to remove at the next start. The list
    // is written before each attempt and struck when the server refuses, and the two sites'
    // orders (retried every second or two) may be between those steps at any one look: so the
    // list must be seen empty within a few seconds, where a remembered refusal never empties.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending: Vec<_> = walk(setup.state.path())
            .into_iter()
            .filter(|p| p.ends_with("dns-01-pending.json"))
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused records remembered: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exec_provider_runs_a_lego_style_hook() {
    let setup = Setup::start(BASE_EXEC).await;
    let hooks = tempfile::tempdir().unwrap();
    let hook = knsupdate_hook(hooks.path(), &setup.knot);
    let dns = format!(
        r#"{{ provider = "exec", command = "{}", resolver = "{}", propagation_timeout = "30s" }}"#,
        hook.display(),
        setup.knot.addr()
    );
    let (proxy, _dir) = setup.gatehouse(&setup.config(&dns), "").await;
    setup.wait_for_cert(&proxy, "foo.example.test").await;
    setup.wait_for_cert(&proxy, "app.example.test").await;
    setup.wait_records_gone(&proxy).await;
    let calls = std::fs::read_to_string(hooks.path().join("hook.log")).unwrap();
    let (presents, cleanups) = (
        calls.lines().filter(|l| l.starts_with("present ")).count(),
        calls.lines().filter(|l| l.starts_with("cleanup ")).count(),
    );
    assert!(
        presents >= 2 && presents == cleanups,
        "hook calls:\n{calls}"
    );
    assert!(
        calls.contains("present _acme-challenge.example.test. ")
            && calls.contains("present _acme-challenge.app.example.test. "),
        "fqdn with a trailing dot, the wildcard's base name: \n{calls}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_hook_is_a_clear_error_and_no_certificate() {
    let setup = Setup::start(BASE_EXEC_FAILS).await;
    let hooks = tempfile::tempdir().unwrap();
    let hook = write_script(
        hooks.path(),
        "dns-hook",
        "#!/bin/sh\necho \"$1 $2\" >> \"$(dirname \"$0\")/calls\"\necho 'zone is locked by another deploy' >&2\nexit 3\n",
    );
    let dns = format!(r#"{{ provider = "exec", command = "{}" }}"#, hook.display());
    let (proxy, _dir) = setup.gatehouse(&setup.config(&dns), "").await;
    let error = setup.wait_order_error(&proxy).await;
    assert!(
        error.contains(&format!("{} present _acme-challenge.", hook.display()))
            && error.contains("exit status: 3")
            && error.contains("zone is locked by another deploy"),
        "unclear error: {error}"
    );
    let root = setup.pebble.root();
    assert!(served_leaf(proxy.https(), "app.example.test", &root)
        .await
        .is_err());
    // a failed `present` is cleaned up too: it may have half-published
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let calls = std::fs::read_to_string(hooks.path().join("calls")).unwrap_or_default();
        if calls.lines().any(|l| l.starts_with("cleanup ")) {
            break;
        }
        assert!(Instant::now() < deadline, "no cleanup call:\n{calls}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_leaves_no_record_behind() {
    let setup = Setup::start(BASE_RESTART).await;
    // the record is published, then checked at an address where nothing answers: Gatehouse
    // waits there (30 s) with the record in the zone, and is killed meanwhile
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stuck = setup.config(&setup.rfc2136(&format!(
        r#", resolver = "{}""#,
        silent.local_addr().unwrap()
    )));
    let (proxy, dir) = setup.gatehouse(&stuck, SECRET).await;
    let deadline = Instant::now() + ISSUANCE;
    let left = loop {
        let found = setup.knot.challenge_records();
        if !found.is_empty() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no record published{}",
            setup.diagnostics(&proxy)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    proxy.send_signal("KILL");
    drop(proxy);
    drop(dir);
    assert!(
        !setup.knot.challenge_records().is_empty(),
        "killed before cleanup: {left:?} stays"
    );

    let (proxy, _dir) = setup
        .gatehouse(&setup.config(&setup.rfc2136("")), SECRET)
        .await;
    setup.wait_for_cert(&proxy, "app.example.test").await;
    setup.wait_for_cert(&proxy, "foo.example.test").await;
    setup.wait_records_gone(&proxy).await;
}

/// An HTTP DNS API in lego's `httpreq` protocol, writing to Knot with `knsupdate`; it wants
/// basic authentication `acme:s3cret`. Every request is recorded as "action fqdn value".
async fn httpreq_api(knot_port: u16, calls: Arc<std::sync::Mutex<Vec<String>>>) -> Backend {
    use http_body_util::BodyExt;
    serve(
        "dns-api",
        move |req: hyper::Request<hyper::body::Incoming>| {
            let calls = calls.clone();
            async move {
                let action = req.uri().path().trim_start_matches("/acme/").to_string();
                let authorized = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    == Some("Basic YWNtZTpzM2NyZXQ="); // acme:s3cret
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let (fqdn, value) = (
                    json["fqdn"].as_str().unwrap(),
                    json["value"].as_str().unwrap(),
                );
                calls
                    .lock()
                    .unwrap()
                    .push(format!("{action} {fqdn} {value}"));
                if !authorized {
                    return text_response(401, "bad credentials for the DNS API");
                }
                let line = match action.as_str() {
                    "present" => format!("update add {fqdn} 60 TXT \"{value}\""),
                    "cleanup" => format!("update delete {fqdn} TXT \"{value}\""),
                    _ => return text_response(404, "no such action"),
                };
                let script = format!("server 127.0.0.1 {knot_port}\nzone {ZONE}.\n{line}\nsend\n");
                let ok = tokio::task::spawn_blocking(move || {
                    let mut child = Command::new("knsupdate")
                        .args(["-y", &format!("hmac-sha256:{KEY}:{SECRET}")])
                        .stdin(Stdio::piped())
                        .spawn()
                        .unwrap();
                    use std::io::Write;
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(script.as_bytes())
                        .unwrap();
                    child.wait().unwrap().success()
                })
                .await
                .unwrap();
                if ok {
                    text_response(200, "")
                } else {
                    text_response(500, "knsupdate failed")
                }
            }
        },
    )
    .await
}

fn httpreq_dns(api: &Backend, password: &str) -> String {
    format!(
        r#"{{ provider = "httpreq", endpoint = "http://{}/acme/", username = "acme", password = "{password}", resolver = "127.0.0.1:{{KNOT}}", propagation_timeout = "30s" }}"#,
        api.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_httpreq_provider_posts_lego_style_requests() {
    let setup = Setup::start(BASE_HTTPREQ).await;
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = httpreq_api(setup.knot.port, calls.clone()).await;
    let dns = httpreq_dns(&api, "s3cret").replace("{KNOT}", &setup.knot.port.to_string());
    let (proxy, _dir) = setup.gatehouse(&setup.config(&dns), "").await;
    setup.wait_for_cert(&proxy, "foo.example.test").await;
    setup.wait_for_cert(&proxy, "app.example.test").await;
    setup.wait_records_gone(&proxy).await;
    let calls = calls.lock().unwrap().clone();
    let presents = calls.iter().filter(|c| c.starts_with("present ")).count();
    let cleanups = calls.iter().filter(|c| c.starts_with("cleanup ")).count();
    assert!(
        presents >= 2 && presents == cleanups,
        "API calls: {calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("present _acme-challenge.example.test. ")),
        "the wildcard's record, fqdn with its dot: {calls:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_httpreq_api_that_refuses_is_a_clear_error() {
    let setup = Setup::start(BASE_HTTPREQ_REFUSED).await;
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = httpreq_api(setup.knot.port, calls.clone()).await;
    let dns = httpreq_dns(&api, "wrong").replace("{KNOT}", &setup.knot.port.to_string());
    let (proxy, _dir) = setup.gatehouse(&setup.config(&dns), "").await;
    let error = setup.wait_order_error(&proxy).await;
    let url = format!("http://{}/acme/present", api.addr);
    assert!(
        error.contains(&url) && error.contains("401") && error.contains("bad credentials"),
        "unclear error: {error}"
    );
    let root = setup.pebble.root();
    assert!(served_leaf(proxy.https(), "app.example.test", &root)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_may_choose_dns01_itself() {
    let setup = Setup::start(BASE_PER_SITE).await;
    // [acme] keeps http-01 (nothing answers pebble on port 80 here): each site's own `acme`
    // says DNS-01, the wildcard site by rfc2136 and the other through [acme]'s provider
    let config = setup
        .config(&setup.rfc2136(""))
        .replace("challenge = \"dns-01\"\n", "")
        .replacen(
            "tls = \"acme\"",
            &format!(
                "tls = \"acme\"\nacme = {{ challenge = \"dns-01\", dns = {} }}",
                setup.rfc2136("")
            ),
            1,
        )
        .replace(
            "tls = \"acme\"\n  [[site.route]]",
            "tls = \"acme\"\nacme = { challenge = \"dns-01\" }\n  [[site.route]]",
        );
    let (proxy, _dir) = setup.gatehouse(&config, SECRET).await;
    setup.wait_for_cert(&proxy, "foo.example.test").await;
    setup.wait_for_cert(&proxy, "app.example.test").await;
    setup.wait_records_gone(&proxy).await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
