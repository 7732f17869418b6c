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
    check_with_files(config, &[], envs, env_remove)
}

/// Like [`check`], but first writes `files` (name, contents) next to the config file.
fn check_with_files(
    config: &str,
    files: &[(&str, &str)],
    envs: &[(&str, &str)],
    env_remove: &[&str],
) -> (String, CmdOutput) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).expect("write file");
    }
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
    assert_located_error(config, &path, &out, marker, mentions);
}

/// Each case (what, config, marker, mentions) is exactly one error, located and worded as
/// `assert_located_error` checks.
fn assert_each_is_one_located_error(cases: &[(&str, String, &str, &[&str])]) {
    for (what, config, marker, mentions) in cases {
        let (path, out) = check(config, &[], &[]);
        eprintln!("case: {what}");
        assert_located_error(config, &path, &out, marker, mentions);
        assert!(
            out.stderr.contains("\n1 error in config"),
            "case {what:?}: exactly one error expected; got:\n{}",
            out.stderr
        );
    }
}

/// Asserts `out` is a config error (exit 64) at `path`:LINE:COLUMN, LINE being the first line of
/// `config` containing `marker`, that mentions every string in `mentions`.
fn assert_located_error(
    config: &str,
    path: &str,
    out: &CmdOutput,
    marker: &str,
    mentions: &[&str],
) {
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

/// The whole server address may come from the environment, its scheme or `unix:` included
/// (`"${APP:-https://app:443}"`), as any other address does.
#[test]
fn server_address_with_its_scheme_from_env_var_passes_check() {
    for value in [
        "https://avatars.example:443",
        "http://127.0.0.1:8080",
        "unix:/run/app.sock",
    ] {
        let config = format!(
            "{LISTEN}\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n\n[upstream.app]\nservers = [\"${{GATEHOUSE_TEST_APP}}\"]\n"
        );
        let (_, out) = check(&config, &[("GATEHOUSE_TEST_APP", value)], &[]);
        assert!(
            out.status.success(),
            "{value} rejected ({:?}):\n{}",
            out.status,
            out.stderr
        );
    }
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

// ---------------------------------------------------------------------------------------------
// [acme] and `tls = "acme"`
// ---------------------------------------------------------------------------------------------

const ACME_LISTEN: &str = "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n";
const ACME_HOSTS: &str = "hosts = [\"app.example.com\", \"www.example.com\"]";

/// A site with `tls = "acme"` and the given `hosts` line ("" for none), after `listen`, followed
/// by `acme` (the `[acme]` section's body; "" for no section).
fn acme_config(listen: &str, hosts: &str, acme: &str) -> String {
    let acme = if acme.is_empty() {
        String::new()
    } else {
        format!("\n[acme]\n{acme}\n")
    };
    format!(
        r#"{listen}
[server]
state_dir = "state"

[[site]]
{hosts}
tls = "acme"

  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "ok" }}
{acme}"#
    )
}

#[test]
fn acme_config_errors_are_reported_with_key_and_hint() {
    let key_only_pem = rcgen::KeyPair::generate().expect("key").serialize_pem();
    let tls_alpn = "challenge = \"tls-alpn-01\"";
    struct Case<'a> {
        what: &'a str,
        config: String,
        files: Vec<(&'a str, &'a str)>,
        /// Text on the line the error must point at.
        marker: &'a str,
        /// The key as printed (`` `site.tls` ``) and words of the hint.
        mentions: &'a [&'a str],
    }
    let case = |what, config, marker, mentions| Case {
        what,
        config,
        files: vec![],
        marker,
        mentions,
    };
    let cases = [
        case(
            "wildcard host",
            acme_config(ACME_LISTEN, "hosts = [\"app.test\", \"*.app.test\"]", ""),
            "tls = \"acme\"",
            &["`site.tls`", "*.app.test", "wildcard", "DNS-01", "cert = "],
        ),
        case(
            "catch-all host",
            acme_config(ACME_LISTEN, "hosts = [\"*\"]", ""),
            "tls = \"acme\"",
            &["`site.tls`", "hosts", "catch-all"],
        ),
        case(
            "no hosts at all",
            acme_config(ACME_LISTEN, "", ""),
            "tls = \"acme\"",
            &["`site.tls`", "hosts"],
        ),
        case(
            "IPv4 literal host",
            acme_config(ACME_LISTEN, "hosts = [\"192.0.2.10\"]", ""),
            "tls = \"acme\"",
            &["`site.tls`", "192.0.2.10", "IP address"],
        ),
        case(
            "IPv6 literal host",
            acme_config(ACME_LISTEN, "hosts = [\"app.example.com\", \"::1\"]", ""),
            "tls = \"acme\"",
            &["`site.tls`", "::1", "IP address"],
        ),
        case(
            "single-label host",
            acme_config(ACME_LISTEN, "hosts = [\"localhost\"]", ""),
            "tls = \"acme\"",
            &["`site.tls`", "localhost", "fully qualified"],
        ),
        case(
            "http-01 (the default) without an HTTP listener",
            acme_config("[listen]\nhttps = \"127.0.0.1:0\"\n", ACME_HOSTS, ""),
            "[listen]",
            &["`listen.http`", "http-01", "tls-alpn-01"],
        ),
        case(
            "explicit http-01 without an HTTP listener",
            acme_config(
                "[listen]\nhttps = \"127.0.0.1:0\"\n",
                ACME_HOSTS,
                "challenge = \"http-01\"",
            ),
            "[listen]",
            &["`listen.http`", "http-01", "tls-alpn-01"],
        ),
        case(
            "directory that is neither a name nor https",
            acme_config(ACME_LISTEN, ACME_HOSTS, "directory = \"letsencrypt\""),
            "letsencrypt",
            &["`acme.directory`", "production", "staging", "https://"],
        ),
        case(
            "plain-http directory URL",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                "directory = \"http://ca.example.com/directory\"",
            ),
            "http://ca.example.com",
            &["`acme.directory`", "https://"],
        ),
        case(
            "unknown challenge",
            acme_config(ACME_LISTEN, ACME_HOSTS, "challenge = \"dns-1\""),
            "dns-1",
            &["`acme.challenge`", "dns-01", "http-01", "tls-alpn-01"],
        ),
        case(
            "eab_kid without eab_hmac_key",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &format!("{tls_alpn}\neab_kid = \"kid-1\""),
            ),
            "eab_kid",
            &["`acme`", "eab_kid", "eab_hmac_key"],
        ),
        case(
            "eab_hmac_key without eab_kid",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &format!("{tls_alpn}\neab_hmac_key = \"c2VjcmV0LWhtYWMta2V5\""),
            ),
            "eab_hmac_key",
            &["`acme`", "eab_kid", "eab_hmac_key"],
        ),
        case(
            "eab_hmac_key that is not base64url",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &format!("{tls_alpn}\neab_kid = \"kid-1\"\neab_hmac_key = \"not base64!\""),
            ),
            "eab_hmac_key",
            &["`acme.eab_hmac_key`", "base64url"],
        ),
        case(
            "missing ca_root file",
            acme_config(ACME_LISTEN, ACME_HOSTS, "ca_root = \"no-such-root.pem\""),
            "ca_root",
            &["`acme.ca_root`", "no-such-root.pem"],
        ),
        Case {
            files: vec![("root.pem", key_only_pem.as_str())],
            ..case(
                "ca_root without certificates (a key only)",
                acme_config(ACME_LISTEN, ACME_HOSTS, "ca_root = \"root.pem\""),
                "ca_root",
                &["`acme.ca_root`", "root.pem", "BEGIN CERTIFICATE"],
            )
        },
        Case {
            files: vec![("root.pem", "not a certificate\n")],
            ..case(
                "ca_root that is not PEM at all",
                acme_config(ACME_LISTEN, ACME_HOSTS, "ca_root = \"root.pem\""),
                "ca_root",
                &["`acme.ca_root`", "root.pem", "BEGIN CERTIFICATE"],
            )
        },
        case(
            "email without @",
            acme_config(ACME_LISTEN, ACME_HOSTS, "email = \"ops.example.com\""),
            "ops.example.com",
            &["`acme.email`", "email address", "ops@example.com"],
        ),
        case(
            "retry_max below retry_initial",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                "retry_initial = \"10m\"\nretry_max = \"30s\"",
            ),
            "retry_max",
            &["`acme.retry_max`", "retry_initial"],
        ),
        case(
            "profile that is no profile name",
            acme_config(ACME_LISTEN, ACME_HOSTS, "profile = \"short lived!\""),
            "short lived!",
            &["`acme.profile`", "profile name", "shortlived"],
        ),
        case(
            "unknown key in [acme]",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                "email = \"ops@example.com\"\nrenew_days = 30",
            ),
            "renew_days",
            &["renew_days", "email", "directory", "challenge", "retry_max"],
        ),
    ];
    for c in &cases {
        let (path, out) = check_with_files(&c.config, &c.files, &[], &[]);
        eprintln!("case: {}", c.what);
        assert_located_error(&c.config, &path, &out, c.marker, c.mentions);
        assert!(
            out.stderr.contains("\n1 error in config"),
            "case {:?}: exactly one error expected; got:\n{}",
            c.what,
            out.stderr
        );
    }
}

const RFC2136: &str = r#"dns = { provider = "rfc2136", server = "10.0.0.53:53", zone = "example.com", tsig_key = "gatehouse", tsig_secret = "c2VjcmV0LXRzaWcta2V5", tsig_algorithm = "hmac-sha256" }"#;

/// `[acme]` with DNS-01 and `dns` (one line, the errors' marker).
fn dns01(dns: &str) -> String {
    format!("challenge = \"dns-01\"\n{dns}")
}

#[test]
fn dns01_config_errors_are_reported_with_key_and_hint() {
    let wildcard = "hosts = [\"example.com\", \"*.example.com\"]";
    let cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "dns-01 without a provider",
            acme_config(ACME_LISTEN, ACME_HOSTS, "challenge = \"dns-01\""),
            "dns-01",
            &["`acme.dns`", "provider"],
        ),
        (
            "unknown provider",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(r#"dns = { provider = "route53" }"#),
            ),
            "route53",
            &["`acme.dns.provider`", "route53", "\"rfc2136\"", "\"exec\""],
        ),
        (
            "rfc2136 without zone",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(r#"dns = { provider = "rfc2136", server = "10.0.0.53" }"#),
            ),
            "provider",
            &["`acme.dns.zone`", "zone = \"example.com\""],
        ),
        (
            "rfc2136 server that is a name",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(
                    r#"dns = { provider = "rfc2136", server = "ns1.example.com", zone = "example.com" }"#,
                ),
            ),
            "ns1.example.com",
            &["`acme.dns.server`", "IP address", "10.0.0.53:53"],
        ),
        (
            "unknown TSIG algorithm",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(&RFC2136.replace("hmac-sha256", "hmac-md5")),
            ),
            "hmac-md5",
            &[
                "`acme.dns.tsig_algorithm`",
                "hmac-md5",
                "hmac-sha256",
                "hmac-sha512",
            ],
        ),
        (
            "TSIG key without its secret",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(
                    r#"dns = { provider = "rfc2136", server = "10.0.0.53", zone = "example.com", tsig_key = "k" }"#,
                ),
            ),
            "tsig_key",
            &["`acme.dns`", "tsig_key", "tsig_secret"],
        ),
        (
            "TSIG secret that is not base64",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(&RFC2136.replace("c2VjcmV0LXRzaWcta2V5", "not base64!")),
            ),
            "not base64!",
            &["`acme.dns.tsig_secret`", "base64"],
        ),
        (
            "exec without command",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(r#"dns = { provider = "exec" }"#),
            ),
            "exec",
            &["`acme.dns.command`", "present|cleanup"],
        ),
        (
            "httpreq without endpoint",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(r#"dns = { provider = "httpreq" }"#),
            ),
            "httpreq",
            &["`acme.dns.endpoint`", "/present"],
        ),
        (
            "httpreq endpoint that is not a URL",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(r#"dns = { provider = "httpreq", endpoint = "dns-api.internal" }"#),
            ),
            "dns-api.internal",
            &["`acme.dns.endpoint`", "https://"],
        ),
        (
            "httpreq username without password",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(
                    r#"dns = { provider = "httpreq", endpoint = "https://dns-api.internal", username = "acme" }"#,
                ),
            ),
            "username",
            &["`acme.dns`", "username", "password"],
        ),
        (
            "a key of another provider",
            acme_config(
                ACME_LISTEN,
                ACME_HOSTS,
                &dns01(
                    r#"dns = { provider = "exec", command = "/bin/true", zone = "example.com" }"#,
                ),
            ),
            "exec",
            &["`acme.dns.zone`", "not a key of the `exec` provider"],
        ),
        (
            "a name outside the rfc2136 zone",
            acme_config(
                ACME_LISTEN,
                "hosts = [\"app.example.org\"]",
                &dns01(RFC2136),
            ),
            "tls = \"acme\"",
            &["`site.tls`", "app.example.org", "example.com"],
        ),
        (
            "a wildcard whose site's own challenge is http-01",
            acme_config(ACME_LISTEN, wildcard, &dns01(RFC2136)).replace(
                "tls = \"acme\"",
                "tls = \"acme\"\nacme = { challenge = \"http-01\" }",
            ),
            "tls = \"acme\"",
            &["`site.tls`", "*.example.com", "DNS-01"],
        ),
        (
            "a site's acme without tls = \"acme\"",
            acme_config(ACME_LISTEN, ACME_HOSTS, "").replace(
                "tls = \"acme\"",
                "tls = \"off\"\nacme = { challenge = \"dns-01\" }",
            ),
            "acme = {",
            &["`site.acme`", "tls = \"acme\""],
        ),
    ];
    assert_each_is_one_located_error(&cases);
}

#[test]
fn wildcards_with_dns01_pass_check_globally_or_per_site() {
    let wildcard = "hosts = [\"example.com\", \"*.example.com\"]";
    let https_only = "[listen]\nhttps = \"127.0.0.1:0\"\n";
    let per_site = acme_config(ACME_LISTEN, wildcard, "").replace(
        "tls = \"acme\"",
        &format!("tls = \"acme\"\nacme = {{ challenge = \"dns-01\", {RFC2136} }}"),
    );
    let exec = r#"dns = { provider = "exec", command = "/usr/local/bin/dns-hook", resolver = "10.0.0.53", propagation_timeout = "5m" }"#;
    for config in [
        // DNS-01 needs no HTTP listener
        acme_config(https_only, wildcard, &dns01(RFC2136)),
        acme_config(https_only, wildcard, &dns01(exec)),
        per_site,
    ] {
        let (_, out) = check(&config, &[], &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "should pass:\n{config}\nstderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn valid_acme_config_passes_check_without_side_effects() {
    let config = acme_config(
        ACME_LISTEN,
        ACME_HOSTS,
        "email = \"ops@example.com\"\ndirectory = \"staging\"\nchallenge = \"tls-alpn-01\"",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acme.toml");
    std::fs::write(&path, &config).expect("write config");
    let started = std::time::Instant::now();
    // A proxy that refuses connections: nothing may be fetched (there is nothing to fetch anyway).
    let out = run_gatehouse(
        &["check", "--config", path.to_str().expect("utf-8 path")],
        &[
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
            ("https_proxy", "http://127.0.0.1:9"),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a valid ACME config should pass check; stderr:\n{}",
        out.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "check took {:?}; it must not talk to the CA",
        started.elapsed()
    );
    assert!(
        !dir.path().join("state").exists(),
        "check must not create state_dir ({})",
        dir.path().join("state").display()
    );

    // The same site with the default http-01 challenge and an HTTP listener passes too.
    let config = acme_config(ACME_LISTEN, ACME_HOSTS, "email = \"ops@example.com\"");
    let (_, out) = check(&config, &[], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "http-01 with an HTTP listener should pass check; stderr:\n{}",
        out.stderr
    );
}

fn limits_config(server: &str, site: &str, route: &str) -> String {
    format!(
        r#"[listen]
http = "127.0.0.1:0"

[server]
{server}

[[site]]
{site}
  [[site.route]]
  path = "/"
  upstream = "app"
{route}

[upstream.app]
servers = ["127.0.0.1:9"]
"#
    )
}

#[test]
fn protection_config_errors_are_reported_with_key_and_hint() {
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "rate without requests",
            limits_config("", "", r#"  rate_limit = { per = "1m" }"#),
            "rate_limit",
            &["`site.route.rate_limit`", "`requests` is missing", "burst"],
        ),
        (
            "rate with a bad period",
            limits_config("", r#"rate_limit = { requests = 60, per = "soon" }"#, ""),
            "rate_limit",
            &["`site.rate_limit`", "soon", "30s"],
        ),
        (
            "rate with an unknown key",
            limits_config(r#"rate_limit = { requests = 60, window = "1m" }"#, "", ""),
            "rate_limit",
            &["`server.rate_limit`", "window"],
        ),
        (
            "rate with a lower-case method",
            limits_config(
                "",
                "",
                r#"  rate_limit = { requests = 5, methods = ["post"] }"#,
            ),
            "rate_limit",
            &["`site.route.rate_limit`", "upper-case", "POST"],
        ),
        (
            "rate keyed on a cookie",
            limits_config(
                "",
                "",
                r#"  rate_limit = { requests = 5, key = "cookie:x" }"#,
            ),
            "rate_limit",
            &[
                "`site.route.rate_limit`",
                "`key = \"cookie:x\"` is not something a rate limit can count by",
                "\"ip\"",
                "\"header:NAME\"",
            ],
        ),
        (
            "rate keyed on no header",
            limits_config(r#"rate_limit = { requests = 5, key = "header:" }"#, "", ""),
            "rate_limit",
            &[
                "`server.rate_limit`",
                "names no header",
                "\"header:X-Tenant\"",
            ],
        ),
        (
            "rate keyed on a bad header name",
            limits_config(
                "",
                r#"rate_limit = { requests = 5, key = "header:X Tenant" }"#,
                "",
            ),
            "rate_limit",
            &[
                "`site.rate_limit`",
                "`X Tenant` is not a header name",
                "\"ip\"",
            ],
        ),
        (
            "rate key not a string",
            limits_config("", "", "  rate_limit = { requests = 5, key = 1 }"),
            "rate_limit",
            &["`key = 1`", "\"header:NAME\""],
        ),
        (
            "rate of zero",
            limits_config("", "", "  rate_limit = { requests = 0 }"),
            "rate_limit",
            &["requests = 0", "from 1"],
        ),
        (
            "rate as a number",
            limits_config("", "", "  rate_limit = 60"),
            "rate_limit",
            &["`60` is not a rate limit", "off"],
        ),
        (
            "bad body size",
            limits_config("", "", r#"  max_body = "100 megs""#),
            "max_body",
            &["`site.route.max_body`", "100MB", "off"],
        ),
        (
            "bad body timeout",
            limits_config(r#"body_timeout = "0s""#, "", ""),
            "body_timeout",
            &["`server.body_timeout`", "greater than zero"],
        ),
        (
            "body rate without a unit of time",
            limits_config("", "", r#"  body_min_rate = "1KB""#),
            "body_min_rate",
            &[
                "`site.route.body_min_rate`",
                "`1KB` is not a rate",
                "\"512B/s\"",
                "window",
                "\"off\"",
            ],
        ),
        (
            "send rate window too long",
            limits_config(
                r#"send_min_rate = { rate = "1KB/s", window = "2h" }"#,
                "",
                "",
            ),
            "send_min_rate",
            &[
                "`server.send_min_rate`",
                "`window = \"2h\"` is not a window",
                "1s to 1h",
            ],
        ),
        (
            "send rate with an unknown key",
            limits_config(
                "",
                r#"send_min_rate = { rate = "1KB/s", grace = "5s" }"#,
                "",
            ),
            "send_min_rate",
            &["`site.send_min_rate`", "unknown key `grace`"],
        ),
        (
            "body rate as a number",
            limits_config("body_min_rate = 1024", "", ""),
            "body_min_rate",
            &["`server.body_min_rate`", "`1024` is not a minimum rate"],
        ),
        (
            "bad allow entry",
            limits_config("", "", r#"  allow = ["10.0.0.0/33"]"#),
            "allow",
            &["`site.route.allow`", "10.0.0.0/8"],
        ),
        (
            "ipv6 prefix out of range",
            limits_config("ipv6_prefix = 129", "", ""),
            "ipv6_prefix",
            &["`server.ipv6_prefix`", "from 1 to 128"],
        ),
        (
            "no header values per address",
            limits_config("rate_limit_keys_per_ip = 0", "", ""),
            "rate_limit_keys_per_ip",
            &["`server.rate_limit_keys_per_ip`", "from 1 to 1000000"],
        ),
        (
            "header size too small",
            limits_config(r#"max_header_size = "100B""#, "", ""),
            "max_header_size",
            &["`server.max_header_size`", "from 1024"],
        ),
        (
            "negative connections",
            limits_config("max_connections_per_ip = -1", "", ""),
            "max_connections_per_ip",
            &["`server.max_connections_per_ip`", "0 to"],
        ),
    ];
    assert_each_is_one_located_error(cases);
}

#[test]
fn protection_config_with_every_key_passes_check() {
    let config = limits_config(
        r#"max_connections = 5000
max_connections_per_ip = 64
max_header_size = "16KB"
max_headers = 80
max_uri = "4KB"
http2_max_streams = 128
ipv6_prefix = 56
rate_limit_keys = 50000
rate_limit_keys_per_ip = 20
max_body = "1MB"
body_timeout = "30s"
body_min_rate = "1KB/s"
send_min_rate = { rate = "256B/s", window = "2m" }
rate_limit = { requests = 5000, per = "1m" }
[server.timeouts]
send = "30s"
tls_handshake = "5s""#,
        r#"rate_limit = [
  { requests = 1000, per = "1m", burst = 100, methods = ["GET", "HEAD"], key = "ip" },
  { requests = 100, per = "1m", methods = ["POST", "PUT", "PATCH", "DELETE"] },
  { requests = 5000, per = "1m", key = "header:X-Tenant" },
]
deny = ["192.0.2.0/24"]
body_min_rate = { rate = "2KB/s" }"#,
        r#"  max_body = "off"
  body_min_rate = "off"
  send_min_rate = "off"
  rate_limit = "off"
  allow = ["10.0.0.0/8", "2001:db8::/32"]"#,
    );
    let (_, out) = check(&config, &[], &[]);
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn tls_min_version_errors_name_the_valid_versions() {
    let valid = r#"expected "1.2" (TLS 1.2 and 1.3, the default) or "1.3" (TLS 1.3 only)"#;
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "TLS 1.1",
            limits_config(r#"tls_min_version = "1.1""#, "", ""),
            "tls_min_version",
            &[
                "`server.tls_min_version`",
                "TLS 1.1 is not supported",
                "insecure",
                valid,
            ],
        ),
        (
            "TLS 1.0",
            limits_config(r#"tls_min_version = "1.0""#, "", ""),
            "tls_min_version",
            &[
                "`server.tls_min_version`",
                "TLS 1.0 is not supported",
                "insecure",
            ],
        ),
        (
            "nginx spelling",
            limits_config(r#"tls_min_version = "TLSv1.3""#, "", ""),
            "tls_min_version",
            &[
                "`server.tls_min_version`",
                "`TLSv1.3` is not a TLS version",
                valid,
            ],
        ),
        (
            "a number",
            limits_config("tls_min_version = 1.3", "", ""),
            "tls_min_version",
            &[
                "`server.tls_min_version`",
                r#"write the version as a string: tls_min_version = "1.3""#,
            ],
        ),
    ];
    assert_each_is_one_located_error(cases);
    for ok in ["1.2", "1.3"] {
        let config = limits_config(&format!("tls_min_version = \"{ok}\""), "", "");
        let (_, out) = check(&config, &[], &[]);
        assert!(out.status.success(), "{ok}: {}", out.stderr);
    }
}

#[test]
fn canonical_request_keys_name_their_valid_values() {
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "encoded_slashes",
            limits_config(r#"encoded_slashes = "decode""#, "", ""),
            "encoded_slashes",
            &[
                "`server.encoded_slashes`",
                "`decode` is not valid here",
                r#""reject", "keep""#,
            ],
        ),
        (
            "underscore_headers",
            limits_config(r#"underscore_headers = "allow""#, "", ""),
            "underscore_headers",
            &[
                "`server.underscore_headers`",
                "`allow` is not valid here",
                r#""drop", "reject", "keep""#,
            ],
        ),
        (
            "http1_engine",
            limits_config(r#"http1_engine = "nginx""#, "", ""),
            "http1_engine",
            &[
                "`server.http1_engine`",
                "`nginx` is not valid here",
                r#""hyper", "native""#,
            ],
        ),
        (
            "an IPv6 site with a port",
            limits_config("", r#"hosts = ["[::1]:8080"]"#, ""),
            "hosts",
            &["`site.hosts`", "an IP address", "[2001:db8::1]"],
        ),
    ];
    assert_each_is_one_located_error(cases);
    let ok = limits_config(
        r#"merge_slashes = false
encoded_slashes = "keep"
underscore_headers = "reject"
http1_engine = "native""#,
        r#"hosts = ["[::1]", "2001:DB8::1", "192.0.2.1"]"#,
        "",
    );
    let (_, out) = check(&ok, &[], &[]);
    assert!(out.status.success(), "{}", out.stderr);
    let (_, out) = check(&limits_config("merge_slashes = \"no\"", "", ""), &[], &[]);
    assert!(!out.status.success(), "merge_slashes is a boolean");
}

#[test]
fn encode_config_errors_are_reported_with_key_and_hint() {
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "unknown algorithm",
            limits_config(r#"encode = ["zstd", "deflate"]"#, "", ""),
            "encode",
            &[
                "`server.encode`",
                "unknown algorithm `deflate`",
                "\"br\"",
                "[]",
            ],
        ),
        (
            "algorithm twice",
            limits_config("", "", r#"  encode = ["gzip", "gzip"]"#),
            "encode",
            &["`site.route.encode`", "listed twice"],
        ),
        (
            "bad size",
            limits_config("", r#"encode_min_size = "half a KB""#, ""),
            "encode_min_size",
            &["`site.encode_min_size`", "512B", "64KB"],
        ),
        (
            "bad type pattern",
            limits_config("", "", r#"  encode_types = ["text/*", "*/json"]"#),
            "encode_types",
            &[
                "`site.route.encode_types`",
                "`*/json`",
                "application/*+json",
            ],
        ),
        (
            "type with parameters",
            limits_config(r#"encode_types = ["text/html; charset=utf-8"]"#, "", ""),
            "encode_types",
            &["`server.encode_types`", "without parameters"],
        ),
    ];
    assert_each_is_one_located_error(cases);
}

#[test]
fn encode_config_with_every_key_passes_check() {
    let config = limits_config(
        r#"encode = ["zstd", "br", "gzip"]
encode_min_size = "1KB"
encode_types = ["text/*", "application/json", "application/*+json"]"#,
        r#"encode_min_size = "0B""#,
        r#"  encode = []"#,
    );
    let (_, out) = check(&config, &[], &[]);
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn resolver_errors_are_reported_with_key_and_hint() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "a single string",
            r#"resolver = "127.0.0.1:53""#,
            &["`server.resolver`", r#"resolver = ["127.0.0.1:53"]"#],
        ),
        (
            "a name",
            r#"resolver = ["dns.internal:53"]"#,
            &["dns.internal:53", "IP address, not a name", "IP:PORT"],
        ),
        (
            "port zero",
            r#"resolver = ["10.0.0.2:0"]"#,
            &["10.0.0.2:0", "not a DNS server address", "127.0.0.1:53"],
        ),
        ("empty", "resolver = []", &["empty", "system resolver"]),
        ("a number", "resolver = [53]", &["`53`", "IP:PORT"]),
    ];
    for (what, server, mentions) in cases {
        let config = limits_config(server, "", "");
        let (path, out) = check(&config, &[], &[]);
        eprintln!("case: {what}");
        assert_located_error(&config, &path, &out, "resolver", mentions);
        assert!(
            out.stderr.contains("\n1 error in config"),
            "case {what:?}: exactly one error expected; got:\n{}",
            out.stderr
        );
    }
}

#[test]
fn resolve_timeout_must_be_a_duration() {
    let config = limits_config(r#"resolve_timeout = "soon""#, "", "");
    assert_rejected(
        &config,
        "resolve_timeout",
        &["`server.resolve_timeout`", "soon", "duration"],
        &[],
    );
    let config = limits_config(r#"resolve_timeout = "2s""#, "", "");
    let (_, out) = check(&config, &[], &[]);
    assert!(out.status.success(), "{}", out.stderr);
}

/// Certificate files are read in a step after validation; what is wrong with them is still
/// reported at the key that names them, together with validation's own errors, in file order.
#[test]
fn a_missing_certificate_file_and_a_bad_key_are_both_reported_in_file_order() {
    let config = r#"[listen]
https = "127.0.0.1:0"

[[site]]
hosts = ["a.test"]
tls = { cert = "missing.pem", key = "missing.key" }
  [[site.route]]
  path = "/"
  respond = { status = 200 }

[server]
workers = -1
"#;
    let (path, out) = check(config, &[], &[]);
    assert_located_error(
        config,
        &path,
        &out,
        "missing.pem",
        &["`site.tls`", "missing.pem"],
    );
    assert_located_error(config, &path, &out, "workers", &["`server.workers`"]);
    let (tls, workers) = (
        out.stderr.find("`site.tls`").unwrap(),
        out.stderr.find("`server.workers`").unwrap(),
    );
    assert!(tls < workers, "in file order:\n{}", out.stderr);
    assert!(
        out.stderr.contains("\n2 errors in config"),
        "{}",
        out.stderr
    );
}

#[test]
fn resolver_list_passes_check() {
    let config = limits_config(
        r#"resolver = ["127.0.0.11:53", "10.0.0.2", "[::1]:8600", "${DNS:-10.0.0.3:53}"]"#,
        "",
        "",
    );
    let (_, out) = check(&config, &[], &["DNS"]);
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn cors_config_errors_are_reported_with_key_and_hint() {
    let route = |cors: &str| limits_config("", "", &format!("  cors = {cors}"));
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "credentials with any origin",
            route(r#"{ origins = ["*"], credentials = true }"#),
            "cors",
            &[
                "`site.route.cors.credentials`",
                "Fetch standard",
                "https://app.example.com",
            ],
        ),
        (
            "an origin with a path",
            route(r#"{ origins = ["https://app.example.com/api"] }"#),
            "cors",
            &[
                "`site.route.cors.origins`",
                "has a path",
                r#"write "https://app.example.com""#,
            ],
        ),
        (
            "not an origin",
            limits_config("", r#"cors = { origins = ["app.example.com"] }"#, ""),
            "cors",
            &[
                "`site.cors.origins`",
                "scheme://host[:port]",
                "https://*.example.com",
            ],
        ),
        (
            "an unknown method",
            route(r#"{ origins = ["https://app.example.com"], methods = ["GET", "FETCH"] }"#),
            "cors",
            &["`site.route.cors.methods`", "FETCH", "PATCH, DELETE"],
        ),
        (
            "a lower-case method",
            route(r#"{ origins = ["https://app.example.com"], methods = ["put"] }"#),
            "cors",
            &["`site.route.cors.methods`", "upper case", "\"PUT\""],
        ),
        (
            "an invalid header name",
            route(r#"{ origins = ["https://app.example.com"], headers = ["X Api Key"] }"#),
            "cors",
            &["`site.route.cors.headers`", "X Api Key", "Content-Type"],
        ),
        (
            "an invalid exposed header",
            route(r#"{ origins = ["https://app.example.com"], expose = ["X-Total:"] }"#),
            "cors",
            &["`site.route.cors.expose`", "not a header name"],
        ),
        (
            "no origins",
            route(r#"{ methods = ["GET"] }"#),
            "cors",
            &["`site.route.cors.origins`", "missing", r#"["*"]"#],
        ),
        (
            "a sub-second max age",
            route(r#"{ origins = ["https://app.example.com"], max_age = "500ms" }"#),
            "cors",
            &[
                "`site.route.cors.max_age`",
                "whole number of seconds",
                "10m",
            ],
        ),
        (
            "an unknown key",
            route(r#"{ origins = ["https://app.example.com"], allow_origins = [] }"#),
            "cors",
            &["allow_origins", "origins", "credentials", "max_age"],
        ),
        (
            "neither a table nor off",
            route(r#""on""#),
            "cors",
            &["`cors`", "\"off\""],
        ),
    ];
    assert_each_is_one_located_error(cases);
}

#[test]
fn cors_config_with_every_key_passes_check() {
    let config = limits_config(
        "",
        r#"cors = { origins = ["https://app.example.com", "http://localhost:3000", "https://*.example.org"], methods = ["GET", "POST", "PATCH", "DELETE"], headers = ["Authorization", "Content-Type", "X-API-Key"], credentials = true, expose = ["X-Request-Id"], max_age = "10m" }"#,
        r#"  cors = "off"
  [[site.route]]
  path = "/public/"
  upstream = "app"
  cors = { origins = ["*"], headers = ["*"], expose = ["*"], max_age = "0s" }"#,
    );
    let (_, out) = check(&config, &[], &[]);
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn public_https_port_needs_https_and_a_port_number() {
    let site = "\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { body = \"x\" }\n";
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "without https",
            format!("[listen]\nhttp = \"127.0.0.1:0\"\npublic_https_port = 443\n{site}"),
            "public_https_port",
            &["`listen.public_https_port`", "set `https`"],
        ),
        (
            "out of range",
            r#"[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
public_https_port = 70000
[[site]]
hosts = ["a.test"]
tls = "acme"
  [[site.route]]
  path = "/"
  respond = { body = "x" }
"#
            .to_string(),
            "public_https_port",
            &["`listen.public_https_port`", "from 1 to 65535"],
        ),
    ];
    assert_each_is_one_located_error(cases);
}

#[test]
fn admin_hosts_are_host_names_or_addresses_without_a_port() {
    let site = "\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { body = \"x\" }\n";
    let listen = |hosts: &str| {
        format!("[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nadmin_hosts = [\n  {hosts}\n]\n{site}")
    };
    let cases: &[(&str, String, &str, &[&str])] = &[
        (
            "with a port",
            listen("\"ok.internal\", \"admin.internal:9900\""),
            "admin.internal:9900",
            &[
                "`listen.admin_hosts`",
                "without a port",
                "\"admin.internal\"",
            ],
        ),
        (
            "a URL",
            listen("\"http://admin.internal\""),
            "http://admin.internal",
            &["`listen.admin_hosts`", "not a host name or address"],
        ),
    ];
    assert_each_is_one_located_error(cases);
    let (_, out) = check(
        &listen("\"Admin.Internal.\", \"10.0.0.5\", \"[fd00::5]\""),
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}

/// Text logs written to a pipe (`docker logs`, journald) carry no ANSI colour codes.
#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let config = format!(
        "[listen]\nhttp = \"{}\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = {{ body = \"x\" }}\n",
        taken.local_addr().unwrap()
    );
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let out = run_gatehouse(&["run", "--config", path], &[], &["RUST_LOG"]);
    assert!(!out.status.success(), "the port is taken: {}", out.stderr);
    assert!(
        out.stderr.contains("ERROR"),
        "an error line: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\x1b'),
        "colour codes: {:?}",
        out.stderr
    );
}

/// `cargo run --release` (no subcommand) is `run` on `config/gatehouse.toml` under the working
/// directory: the README's first command.
#[test]
fn no_subcommand_runs_the_config_in_config_gatehouse_toml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let config = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { body = \"hi\" }\n";
    std::fs::write(dir.path().join("config/gatehouse.toml"), config).unwrap();
    let proxy = support::Spawned::start(&[], dir.path());
    let answer = proxy.get("/");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhi"), "{answer}");
}

#[test]
fn rate_limit_strings_are_expanded_like_every_other_string() {
    let config = format!(
        "{LISTEN}\n[[site]]\nrate_limit = {{ requests = 5, per = \"${{GH_TEST_PER:-1m}}\", methods = [\"${{GH_TEST_METHOD}}\"], key = \"header:${{GH_TEST_HEADER:-X-Tenant}}\" }}\n  [[site.route]]\n  path = \"/\"\n  respond = {{ status = 200 }}\n"
    );
    let (_, out) = check(&config, &[("GH_TEST_METHOD", "POST")], &[]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    // expanded before it is parsed: a bad value is reported as the value it expanded to
    let (path, out) = check(
        &config,
        &[("GH_TEST_METHOD", "POST"), ("GH_TEST_PER", "soon")],
        &[],
    );
    assert_located_error(&config, &path, &out, "rate_limit", &["per = \"soon\""]);
    let (path, out) = check(&config, &[], &["GH_TEST_METHOD"]);
    assert_located_error(
        &config,
        &path,
        &out,
        "rate_limit",
        &["GH_TEST_METHOD", "not set"],
    );
}

// ---------------------------------------------------------------------------------------------
// `tls = "on_demand"` and [acme] on_demand
// ---------------------------------------------------------------------------------------------

/// A catch-all `tls = "on_demand"` site followed by `acme` (the `[acme]` section's body; "" for
/// no section).
fn on_demand_config(acme: &str) -> String {
    let acme = if acme.is_empty() {
        String::new()
    } else {
        format!("\n[acme]\n{acme}\n")
    };
    format!(
        r#"{ACME_LISTEN}
[server]
state_dir = "state"

[[site]]
hosts = ["*"]
tls = "on_demand"

  [[site.route]]
  path = "/"
  respond = {{ status = 200, body = "ok" }}
{acme}"#
    )
}

#[test]
fn on_demand_needs_an_ask_endpoint_and_says_what_is_valid() {
    let ask = "ask = \"http://127.0.0.1:8000/domain-allowed\"";
    let cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "on_demand site without [acme]",
            on_demand_config(""),
            "tls = \"on_demand\"",
            &[
                "`site.tls`",
                "on_demand.ask",
                "http://app:8000/domain-allowed",
            ],
        ),
        (
            "on_demand site with [acme] but no on_demand",
            on_demand_config("email = \"ops@example.com\""),
            "tls = \"on_demand\"",
            &["`site.tls`", "on_demand.ask"],
        ),
        (
            "on_demand table without ask",
            on_demand_config("on_demand = { max_per_minute = 5 }"),
            "on_demand = {",
            &["`acme.on_demand.ask`", "http://app:8000/domain-allowed"],
        ),
        (
            "ask that is not an http:// URL",
            on_demand_config("on_demand = { ask = \"app:8000/allowed\" }"),
            "on_demand = {",
            &[
                "`acme.on_demand.ask`",
                "app:8000/allowed",
                "http://",
                "?domain=",
            ],
        ),
        (
            "max_per_minute of 0",
            on_demand_config(&format!("on_demand = {{ {ask}, max_per_minute = 0 }}")),
            "on_demand = {",
            &["`acme.on_demand.max_per_minute`", "from 1 to 10000"],
        ),
        (
            "handshake_wait over 5 minutes",
            on_demand_config(&format!(
                "on_demand = {{ {ask}, handshake_wait = \"10m\" }}"
            )),
            "on_demand = {",
            &["`acme.on_demand.handshake_wait`", "1s to 5m"],
        ),
        (
            "an unknown key in on_demand",
            on_demand_config(&format!("on_demand = {{ {ask}, interval = \"2m\" }}")),
            "on_demand = {",
            &["interval", "remember_refusals", "handshake_wait"],
        ),
    ];
    assert_each_is_one_located_error(&cases);
    let valid = on_demand_config(&format!(
        "on_demand = {{ {ask}, max_per_minute = 5, remember_refusals = \"1m\", handshake_wait = \"20s\" }}"
    ));
    let (_, out) = check(&valid, &[], &[]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
}

fn cluster_config(cluster: &str) -> String {
    format!("{LISTEN}\n[cluster]\n{cluster}\n")
}

const STORE: &str = "store = \"redis://127.0.0.1:6379\"";
const CLUSTER_SECRET: &str = "secret = \"0123456789abcdef0123\"";

#[test]
fn cluster_errors_are_located_and_say_what_is_valid() {
    let with = |keys: &str| cluster_config(&format!("{STORE}\n{CLUSTER_SECRET}\n{keys}"));
    let cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "no store",
            cluster_config(CLUSTER_SECRET),
            "[cluster]",
            &["`cluster.store`", "redis://10.0.0.5:6379"],
        ),
        (
            "not a redis URL",
            cluster_config(&format!("store = \"http://redis:6379\"\n{CLUSTER_SECRET}")),
            "store =",
            &[
                "`cluster.store`",
                "not a store URL",
                "unix:///run/redis/redis.sock",
            ],
        ),
        (
            "store_ca without TLS",
            with("store_ca = \"ca.pem\""),
            "store_ca =",
            &["`cluster.store_ca`", "rediss://", "`store` is not"],
        ),
        (
            "a client certificate without its key",
            cluster_config(&format!(
                "store = \"rediss://redis:6380\"\n{CLUSTER_SECRET}\nstore_client_cert = \"client.pem\""
            )),
            "store_client_cert =",
            &["`cluster.store_client_cert`", "store_client_key", "tls-auth-clients"],
        ),
        (
            "a Sentinel URL without the master's name",
            cluster_config(&format!(
                "store = \"redis+sentinel://10.0.0.5:26379,10.0.0.6\"\n{CLUSTER_SECRET}"
            )),
            "store =",
            &["`cluster.store`", "master's name is missing", "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/mymaster"],
        ),
        (
            "a fragment redis-rs does not know",
            cluster_config(&format!(
                "store = \"rediss://redis:6380/#skip\"\n{CLUSTER_SECRET}"
            )),
            "store =",
            &["`cluster.store`", "#insecure", "rediss://"],
        ),
        (
            "no secret",
            cluster_config(STORE),
            "[cluster]",
            &["`cluster.secret`", "secret_file", "at least 16 bytes"],
        ),
        (
            "short secret",
            cluster_config(&format!("{STORE}\nsecret = \"short\"")),
            "secret =",
            &["`cluster.secret`", "5 bytes", "at least 16"],
        ),
        (
            "both secrets",
            with("secret_file = \"cluster.secret\""),
            "secret_file",
            &["`cluster.secret_file`", "not both"],
        ),
        (
            "bad name",
            with("name = \"edge eu\""),
            "name =",
            &["`cluster.name`", "letters, digits"],
        ),
        (
            "bad timeout",
            with("timeout = \"10s\""),
            "timeout =",
            &["`cluster.timeout`", "1ms to 5s"],
        ),
        (
            "bad rate_limits",
            with("rate_limits = \"shared\""),
            "rate_limits =",
            &["`cluster.rate_limits`", "\"global\", \"local\""],
        ),
        (
            "bad fallback",
            with("rate_limit_fallback = \"open\""),
            "rate_limit_fallback =",
            &[
                "`cluster.rate_limit_fallback`",
                "\"local\", \"allow\", \"deny\"",
            ],
        ),
        (
            "bad acme",
            with("acme = \"global\""),
            "acme =",
            &["`cluster.acme`", "\"local\", \"shared\""],
        ),
        (
            "bad lock_ttl",
            with("lock_ttl = \"1s\""),
            "lock_ttl =",
            &["`cluster.lock_ttl`", "2s to 10m"],
        ),
        (
            "unknown key",
            with("stroe = \"x\""),
            "stroe",
            &["stroe", "store"],
        ),
    ];
    assert_each_is_one_located_error(&cases);
}

#[test]
fn cluster_store_tls_files_are_read_and_checked() {
    let ca = rcgen::generate_simple_self_signed(vec!["redis.test".to_string()]).expect("ca");
    let other = rcgen::generate_simple_self_signed(vec!["other.test".to_string()]).expect("cert");
    let (ca_pem, other_pem) = (ca.cert.pem(), other.cert.pem());
    let key_pem = ca.key_pair.serialize_pem();
    let config = cluster_config(&format!(
        "store = \"rediss://redis.test:6380\"\n{CLUSTER_SECRET}\nstore_ca = \"ca.pem\"\nstore_client_cert = \"client.pem\"\nstore_client_key = \"client.key\""
    ));
    let good = [
        ("ca.pem", ca_pem.as_str()),
        ("client.pem", ca_pem.as_str()),
        ("client.key", key_pem.as_str()),
    ];
    let (_, out) = check_with_files(&config, &good, &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let missing_ca = [
        ("client.pem", ca_pem.as_str()),
        ("client.key", key_pem.as_str()),
    ];
    let (path, out) = check_with_files(&config, &missing_ca, &[], &[]);
    assert_located_error(
        &config,
        &path,
        &out,
        "store_ca =",
        &["cannot read CA roots", "ca.pem"],
    );
    let not_pem = [
        ("ca.pem", "hello"),
        ("client.pem", ca_pem.as_str()),
        ("client.key", key_pem.as_str()),
    ];
    let (path, out) = check_with_files(&config, &not_pem, &[], &[]);
    assert_located_error(
        &config,
        &path,
        &out,
        "store_ca =",
        &["ca.pem", "`store_ca` names a PEM file"],
    );
    let mismatched = [
        ("ca.pem", ca_pem.as_str()),
        ("client.pem", other_pem.as_str()),
        ("client.key", key_pem.as_str()),
    ];
    let (path, out) = check_with_files(&config, &mismatched, &[], &[]);
    assert_located_error(
        &config,
        &path,
        &out,
        "store_client_cert =",
        &["client.key", "client.pem"],
    );
    let sentinel = cluster_config(&format!(
        "store = \"rediss+sentinel://:pw@10.0.0.5,10.0.0.6:26380/mymaster/1\"\n{CLUSTER_SECRET}\nstore_ca = \"ca.pem\""
    ));
    let (_, out) = check_with_files(&sentinel, &good, &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}

#[test]
fn cluster_secret_file_is_read_and_checked() {
    let config = cluster_config(&format!("{STORE}\nsecret_file = \"cluster.secret\""));
    let (_, out) = check_with_files(
        &config,
        &[("cluster.secret", "0123456789abcdef\n")],
        &[],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let (path, out) = check_with_files(&config, &[("cluster.secret", "short\n")], &[], &[]);
    assert_located_error(
        &config,
        &path,
        &out,
        "secret_file",
        &["5 bytes", "openssl rand"],
    );
    let (path, out) = check(&config, &[], &[]);
    assert_located_error(
        &config,
        &path,
        &out,
        "secret_file",
        &["cannot read the secret file"],
    );
    let full = cluster_config(&format!(
        "name = \"edge-eu\"\n{STORE}\n{CLUSTER_SECRET}\ninstance = \"a\"\ntimeout = \"20ms\"\nrate_limits = \"local\"\nrate_limit_fallback = \"deny\"\nacme = \"local\""
    ));
    let (_, out) = check(&full, &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
}
