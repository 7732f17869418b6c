//! The ready-made ops files: `config/prometheus/gatehouse-alerts.yml` (alert and recording rules)
//! and `config/grafana/gatehouse-dashboard.json`. Every metric they query must be one Gatehouse
//! exports, with labels it has; the dashboard must work on any Prometheus data source; and, once
//! `/metrics` exists, a live scrape must carry every one of those metrics. `tests/run.sh` also runs
//! `promtool check rules`, `promtool test rules` and `promtool check config` on these files.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{any_cert_client, client, echo_backend, raw_request, with_timeout, TestProxy};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The type word of a `# TYPE` line.
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Every metric Gatehouse exports: name, type, labels. MUST MATCH src/metrics.rs (the metric names
/// and labels are fixed by the metrics issue). `scrape_has_every_metric_the_ops_files_use` checks
/// the names the ops files use against a live scrape.
const KNOWN: &[(&str, Kind, &[&str])] = &[
    (
        "gatehouse_requests_total",
        Kind::Counter,
        &["site", "route", "method", "code"],
    ),
    (
        "gatehouse_request_duration_seconds",
        Kind::Histogram,
        &["site", "route"],
    ),
    (
        "gatehouse_upstream_requests_total",
        Kind::Counter,
        &["upstream", "server", "outcome"],
    ),
    (
        "gatehouse_upstream_response_duration_seconds",
        Kind::Histogram,
        &["upstream"],
    ),
    (
        "gatehouse_upstream_healthy",
        Kind::Gauge,
        &["upstream", "server"],
    ),
    ("gatehouse_connections_open", Kind::Gauge, &["listener"]),
    ("gatehouse_connections_total", Kind::Counter, &["listener"]),
    ("gatehouse_request_body_bytes_total", Kind::Counter, &[]),
    ("gatehouse_response_body_bytes_total", Kind::Counter, &[]),
    ("gatehouse_tls_handshakes_total", Kind::Counter, &["result"]),
    (
        "gatehouse_certificate_expiry_timestamp_seconds",
        Kind::Gauge,
        &["name"],
    ),
    ("gatehouse_acme_orders_total", Kind::Counter, &["result"]),
    (
        "gatehouse_rejected_requests_total",
        Kind::Counter,
        &["reason"],
    ),
    ("gatehouse_config_reloads_total", Kind::Counter, &["result"]),
    (
        "gatehouse_config_last_reload_success_timestamp_seconds",
        Kind::Gauge,
        &[],
    ),
    ("gatehouse_build_info", Kind::Gauge, &["version"]),
    // The prometheus crate's process collector.
    ("process_resident_memory_bytes", Kind::Gauge, &[]),
    ("process_cpu_seconds_total", Kind::Counter, &[]),
    ("process_open_fds", Kind::Gauge, &[]),
    ("process_max_fds", Kind::Gauge, &[]),
    ("process_start_time_seconds", Kind::Gauge, &[]),
];

/// Labels Prometheus itself attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// The alerts the ops issue asks for; each must exist and have a `promtool test rules` case.
const REQUIRED_ALERTS: &[&str] = &[
    "GatehouseDown",
    "GatehouseHigh5xxRatio",
    "GatehouseHighLatencyP95",
    "GatehouseCertificateExpiringSoon",
    "GatehouseCertificateExpired",
    "GatehouseUpstreamDown",
    "GatehouseConfigReloadFailed",
];

const ALERTS: &str = "config/prometheus/gatehouse-alerts.yml";
const ALERT_TESTS: &str = "tests/prometheus/gatehouse-alerts.test.yml";
const DASHBOARD: &str = "config/grafana/gatehouse-dashboard.json";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|err| panic!("read {rel}: {err}"))
}

fn known(family: &str) -> Option<(Kind, &'static [&'static str])> {
    KNOWN
        .iter()
        .find(|(name, _, _)| *name == family)
        .map(|(_, kind, labels)| (*kind, *labels))
}

// ---------------------------------------------------------------------------------------------
// Reading the files
// ---------------------------------------------------------------------------------------------

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The values of every `KEY:` in a YAML file, inline (plain or quoted) or as a `|` / `>` block.
/// Enough YAML for rule files; no YAML library needed.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let trimmed = line.trim_start();
        let entry = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let Some(value) = entry.strip_prefix(&prefix) else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let key_indent = indent_of(line) + (trimmed.len() - entry.len());
            let mut block = String::new();
            while i < lines.len()
                && (lines[i].trim().is_empty() || indent_of(lines[i]) > key_indent)
            {
                block.push_str(lines[i].trim());
                block.push('\n');
                i += 1;
            }
            out.push(block);
        } else if let Some(quoted) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            out.push(quoted.replace("\\\"", "\"").replace("\\\\", "\\"));
        } else if let Some(quoted) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            out.push(quoted.replace("''", "'"));
        } else {
            let plain = value.split(" #").next().unwrap_or_default();
            out.push(plain.trim().to_string());
        }
    }
    out
}

/// Every query string in the dashboard: panel and annotation `expr`s, and the variables' `query`
/// and `definition` (e.g. `label_values(gatehouse_requests_total, site)`).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|err| panic!("{DASHBOARD}: {err}"))
}

/// The `expr` of every panel target (not the variables' queries), by panel title.
fn dashboard_panel_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scanning PromQL (no parser: identifiers outside string literals, and the label names of the
// `{...}` selector right after one)
// ---------------------------------------------------------------------------------------------

/// An identifier in a query, with the label names of the selector that follows it, if any.
#[derive(Debug, PartialEq)]
struct Ident {
    name: String,
    labels: Vec<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the string literal that starts at `start` (a quote).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

fn skip_ws(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The label names of the selector whose `{` is at `start`, and the index past its `}`.
fn selector_labels(chars: &[char], start: usize) -> (Vec<String>, usize) {
    let mut labels = Vec::new();
    let mut i = start + 1;
    loop {
        i = skip_ws(chars, i);
        match chars.get(i) {
            None => return (labels, i),
            Some('}') => return (labels, i + 1),
            Some(',') => i += 1,
            Some('"' | '\'' | '`') => i = skip_string(chars, i),
            Some(&c) if is_ident_start(c) => {
                let begin = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                labels.push(chars[begin..i].iter().collect());
                // the matcher and its value
                while i < chars.len() && matches!(chars[i], '=' | '!' | '~' | ' ') {
                    i += 1;
                }
                if matches!(chars.get(i), Some('"' | '\'' | '`')) {
                    i = skip_string(chars, i);
                }
            }
            Some(_) => i += 1,
        }
    }
}

fn scan(query: &str) -> Vec<Ident> {
    let chars: Vec<char> = query.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c.is_ascii_digit() {
            // numbers and durations: 0.95, 86400, 5m, 1e3
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let begin = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let name: String = chars[begin..i].iter().collect();
            let after = skip_ws(&chars, i);
            let labels = if chars.get(after) == Some(&'{') {
                let (labels, end) = selector_labels(&chars, after);
                i = end;
                labels
            } else {
                Vec::new()
            };
            out.push(Ident { name, labels });
        } else {
            i += 1;
        }
    }
    out
}

fn is_metric_name(name: &str) -> bool {
    !name.contains(':') && (name.starts_with("gatehouse_") || name.starts_with("process_"))
}

/// The exported metric family a series name belongs to (`_bucket`, `_sum`, `_count` of a
/// histogram), or why it is not one.
fn family_of(name: &str) -> Result<(&'static str, Kind, &'static [&'static str]), String> {
    for &(family, kind, labels) in KNOWN {
        if name == family {
            return if kind == Kind::Histogram {
                Err(format!(
                    "{name} is a histogram: query {name}_bucket, _sum or _count"
                ))
            } else {
                Ok((family, kind, labels))
            };
        }
        if kind == Kind::Histogram {
            if let Some(suffix) = name.strip_prefix(family) {
                if matches!(suffix, "_bucket" | "_sum" | "_count") {
                    return Ok((family, kind, labels));
                }
            }
        }
    }
    Err(format!(
        "{name} is not a metric Gatehouse exports (see KNOWN in tests/ops_files.rs)"
    ))
}

/// Checks every identifier of `query`: metric names must be exported ones, with only their own
/// labels (plus `job`, `instance`, and `le` on `_bucket`) in selectors; recording-rule names
/// (with a `:`) must be in `records`. Returns the metric families used.
fn check_query(
    where_: &str,
    query: &str,
    records: &BTreeSet<String>,
    problems: &mut Vec<String>,
) -> BTreeSet<&'static str> {
    let mut used = BTreeSet::new();
    for ident in scan(query) {
        if ident.name.contains(':') {
            if !records.contains(&ident.name) {
                problems.push(format!(
                    "{where_}: {} is not a recording rule of {ALERTS}",
                    ident.name
                ));
            }
            continue;
        }
        if !is_metric_name(&ident.name) {
            continue;
        }
        match family_of(&ident.name) {
            Ok((family, _, labels)) => {
                used.insert(family);
                for label in &ident.labels {
                    let ok = labels.contains(&label.as_str())
                        || TARGET_LABELS.contains(&label.as_str())
                        || (label == "le" && ident.name.ends_with("_bucket"))
                        || label == "__name__";
                    if !ok {
                        problems.push(format!(
                            "{where_}: {} has no label {label:?} (it has {labels:?} and {TARGET_LABELS:?})",
                            ident.name
                        ));
                    }
                }
            }
            Err(why) => problems.push(format!("{where_}: {why}")),
        }
    }
    used
}

/// The metric families the ops files query, checked; panics listing every problem.
fn families_used_by_ops_files() -> BTreeSet<&'static str> {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();

    let alerts = read(ALERTS);
    let records: BTreeSet<String> = yaml_values(&alerts, "record").into_iter().collect();
    let exprs = yaml_values(&alerts, "expr");
    assert!(
        exprs.len() >= REQUIRED_ALERTS.len(),
        "found only {} exprs in {ALERTS}: {exprs:#?}",
        exprs.len()
    );
    for expr in &exprs {
        used.extend(check_query(ALERTS, expr, &records, &mut problems));
    }

    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() >= 20,
        "found only {} queries in {DASHBOARD}",
        queries.len()
    );
    // The dashboard must work without the recording rules loaded: no recording rules in it.
    let no_records = BTreeSet::new();
    for query in &queries {
        used.extend(check_query(DASHBOARD, query, &no_records, &mut problems));
    }

    // Names mentioned in prose (annotations, descriptions, comments) must exist too.
    for (file, text) in [(ALERTS, alerts), (DASHBOARD, read(DASHBOARD))] {
        let mentioned = text
            .split(|c: char| !is_ident_char(c))
            .filter(|word| is_metric_name(word));
        for name in mentioned {
            if let Err(why) = family_of(name) {
                if known(name).is_none() {
                    problems.push(format!("{file} (text): {why}"));
                }
            }
        }
    }

    assert!(
        problems.is_empty(),
        "the ops files use metrics or labels Gatehouse does not export:\n{}",
        problems.join("\n")
    );
    used
}

// ---------------------------------------------------------------------------------------------
// The files alone
// ---------------------------------------------------------------------------------------------

#[test]
fn metric_scanner_reads_names_and_selector_labels() {
    let idents = scan(
        r#"sum by (site) (rate(gatehouse_requests_total{site=~"$site", code=~"5.."}[$__rate_interval])) / on(site) site:gatehouse_requests:rate5m > 0.05 and label_replace(x, "a", "${1}xx", "code", "gatehouse_fake_(.)")"#,
    );
    let names: Vec<&str> = idents.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sum",
            "by",
            "site",
            "rate",
            "gatehouse_requests_total",
            "__rate_interval",
            "on",
            "site",
            "site:gatehouse_requests:rate5m",
            "and",
            "label_replace",
            "x"
        ]
    );
    assert_eq!(idents[4].labels, ["site", "code"]);
    assert_eq!(
        family_of("gatehouse_request_duration_seconds_bucket").map(|f| f.0),
        Ok("gatehouse_request_duration_seconds")
    );
    assert!(family_of("gatehouse_request_duration_seconds").is_err());
    assert!(family_of("gatehouse_requests_count").is_err());
    assert!(family_of("gatehouse_connections_total_sum").is_err());

    let yaml = "groups:\n  - rules:\n      - record: a:b:c\n        expr: up == 0 # down\n      - alert: X\n        expr: |\n          foo\n            / bar\n        for: 1m\n      - expr: 'it''s'\n";
    assert_eq!(
        yaml_values(yaml, "expr"),
        ["up == 0", "foo\n/ bar\n", "it's"]
    );
    assert_eq!(yaml_values(yaml, "record"), ["a:b:c"]);
    assert_eq!(yaml_values(yaml, "alert"), ["X"]);
}

#[test]
fn ops_files_use_only_metrics_and_labels_gatehouse_exports() {
    let used = families_used_by_ops_files();
    // The dashboard covers every area the ops issue names.
    for family in [
        "gatehouse_requests_total",
        "gatehouse_request_duration_seconds",
        "gatehouse_upstream_requests_total",
        "gatehouse_upstream_healthy",
        "gatehouse_connections_open",
        "gatehouse_tls_handshakes_total",
        "gatehouse_rejected_requests_total",
        "gatehouse_certificate_expiry_timestamp_seconds",
        "gatehouse_config_reloads_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(used.contains(family), "no ops file shows {family}");
    }
}

#[test]
fn every_required_alert_exists_with_severity_annotations_and_a_promtool_test() {
    let alerts = read(ALERTS);
    let names = yaml_values(&alerts, "alert");
    let tested: BTreeSet<String> = yaml_values(&read(ALERT_TESTS), "alertname")
        .into_iter()
        .collect();
    for required in REQUIRED_ALERTS {
        assert!(
            names.iter().any(|n| n == required),
            "{ALERTS} has no alert {required}"
        );
    }
    for name in &names {
        assert!(
            tested.contains(name),
            "alert {name} has no case in {ALERT_TESTS}"
        );
    }
    // Each alert rule (from its `- alert:` line to the next rule) has a severity and both
    // annotations docs/operations.md promises.
    let rules: Vec<&str> = alerts.split("- alert: ").skip(1).collect();
    assert_eq!(rules.len(), names.len());
    for rule in rules {
        let name = rule.lines().next().unwrap_or_default();
        let rule = rule.split("- record: ").next().unwrap_or_default();
        for needle in ["severity: ", "summary: ", "description: "] {
            assert!(rule.contains(needle), "alert {name} has no {needle:?}");
        }
        let severity = yaml_values(rule, "severity");
        assert!(
            matches!(severity.as_slice(), [s] if s == "warning" || s == "critical"),
            "alert {name}: severity {severity:?}"
        );
    }
}

#[test]
fn dashboard_panels_use_the_datasource_variable() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "gatehouse");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let var = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no dashboard variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["job", "instance", "site", "upstream"] {
        assert_eq!(var(name)["type"], "query", "variable {name}");
        assert_eq!(var(name)["datasource"]["uid"], "${datasource}");
    }

    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("panel id");
        if !ids.insert(id) {
            problems.push(format!("{title}: id {id} used twice"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{title}: panel datasource {}", panel["datasource"]));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("{title}: no queries"));
        }
        for target in targets {
            if target["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "{title}: target datasource {}",
                    target["datasource"]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `promtool`, if installed (tests/run.sh installs it); `None` skips the checks that need it.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("promtool not found (package prometheus): skipping the promtool checks");
    }
    found.then_some("promtool")
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let Some(promtool) = promtool() else {
        return;
    };
    // Each panel query, Grafana's variables replaced by what they expand to, becomes a recording
    // rule, so `promtool check rules` parses it.
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let queries: Vec<(String, String)> = dashboard_panel_exprs(&dashboard)
        .into_iter()
        .chain(
            dashboard["annotations"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| Some(("annotation".to_string(), a["expr"].as_str()?.to_string()))),
        )
        .collect();
    for (n, (_, expr)) in queries.iter().enumerate() {
        let expanded = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$site", ".*")
            .replace("$upstream", ".*");
        assert!(
            !expanded.replace("${1}", "").contains('$'),
            "a Grafana variable this test does not expand: {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {}\n",
            serde_json::to_string(&expanded).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{text}\nqueries:\n{}",
        queries
            .iter()
            .enumerate()
            .map(|(n, (title, expr))| format!("dashboard_query_{n} ({title}): {expr}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Against a live scrape
// ---------------------------------------------------------------------------------------------

/// A TLS handshake with `sni`, accepting any certificate; whether it succeeded.
async fn handshake(addr: SocketAddr, sni: &str) -> bool {
    let connector =
        tokio_rustls::TlsConnector::from(any_cert_client(rustls::DEFAULT_VERSIONS, &[]));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to https port");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    match connector.connect(name, tcp).await {
        Ok(mut tls) => {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            true
        }
        Err(_) => false,
    }
}

/// `# TYPE name kind` lines of a text exposition.
fn scraped_types(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_has_every_metric_the_ops_files_use() {
    let used = families_used_by_ops_files();
    with_timeout(60, async {
        let backend = echo_backend("api").await;
        let cert = rcgen::generate_simple_self_signed(vec!["app.test".to_string()])
            .expect("self-signed certificate");
        let config = format!(
            r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "127.0.0.1:0"

[[site]]
hosts = ["app.test"]
tls = {{ cert = "cert.pem", key = "key.pem" }}
redirect_https = false

  [[site.route]]
  path = "/"
  upstream = "api"

[upstream.api]
servers = ["{backend}"]
health = {{ path = "/", interval = "200ms", unhealthy = 1, healthy = 1 }}
"#,
            backend = backend.addr
        );
        let proxy = TestProxy::start_tls_with_files(
            &config,
            &[
                ("cert.pem", &cert.cert.pem()),
                ("key.pem", &cert.key_pair.serialize_pem()),
            ],
        )
        .await;
        let admin = proxy.admin_addr().await;

        // Traffic that gives every labelled family a series: a proxied request (requests,
        // durations, upstream requests and response time, connections, body bytes), a refusal
        // (414, uri_too_long) and TLS handshakes that succeed and fail. Families that nothing here
        // can touch (config reloads, ACME orders) must be exported from the start with their
        // label values at 0, which alerts on a first failure need anyway.
        let ok = raw_request(
            proxy.addr,
            "POST /hello HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert_eq!(ok.status, 200, "{}", ok.body_text());
        let long = "a".repeat(9 * 1024);
        let refused = raw_request(
            proxy.addr,
            &format!("GET /{long} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(refused.status, 414);
        assert!(handshake(proxy.https(), "app.test").await, "TLS handshake");
        assert!(
            !handshake(proxy.https(), "unknown.test").await,
            "handshake for a name no site serves"
        );

        let start = Instant::now();
        let (scrape, missing) = loop {
            let resp = client()
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .expect("scrape /metrics");
            assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
            let scrape = resp.text().await.expect("scrape body");
            let types = scraped_types(&scrape);
            let missing: Vec<String> = used
                .iter()
                .filter_map(|family| {
                    let (kind, _) = known(family).expect("known family");
                    match types.get(*family) {
                        Some(t) if t == kind.word() => None,
                        Some(t) => Some(format!("{family} (is a {t}, not a {})", kind.word())),
                        None => Some(format!("{family} (no # TYPE line)")),
                    }
                })
                .collect();
            // Metrics are recorded when a response ends; give them a moment.
            if missing.is_empty() || start.elapsed() > Duration::from_secs(5) {
                break (scrape, missing);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            missing.is_empty(),
            "metrics the ops files use are missing from /metrics:\n{}\nscrape:\n{scrape}",
            missing.join("\n")
        );

        if let Some(promtool) = promtool() {
            let mut child = Command::new(promtool)
                .arg("check")
                .arg("metrics")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run promtool check metrics");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(scrape.as_bytes())
                .expect("feed the scrape to promtool");
            let out = child.wait_with_output().expect("promtool output");
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}\nscrape:\n{scrape}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    })
    .await;
}
