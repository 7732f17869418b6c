//! `/metrics` after traffic of known shape: exact counter values and histogram counts, checked
//! with a small parser of the text format, and the real `promtool check metrics` on the scrape.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

/// `name{labels}` -> value, labels sorted as Prometheus prints them.
async fn scrape(admin: SocketAddr) -> (String, HashMap<String, f64>) {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let values = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect();
    (text, values)
}

fn value(values: &HashMap<String, f64>, key: &str) -> f64 {
    *values.get(key).unwrap_or_else(|| {
        panic!(
            "{key} not in the scrape: {:#?}",
            values
                .keys()
                .filter(|k| k.starts_with(key.split('{').next().unwrap()))
                .collect::<Vec<_>>()
        )
    })
}

fn config(backend: SocketAddr, extra_server: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 2
{extra_server}

[[site]]
hosts = ["app.test"]

  [[site.route]]
  path = "/api/"
  upstream = "api"

  [[site.route]]
  exact = "/healthz"
  respond = {{ status = 200, body = "ok" }}

  [[site.route]]
  path = "/limited/"
  respond = {{ status = 200, body = "ok" }}
  rate_limit = {{ requests = 2, per = "1m" }}

[upstream.api]
servers = ["{backend}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_match_the_traffic_sent() {
    with_timeout(30, async {
        let backend = serve("api", |req: hyper::Request<hyper::body::Incoming>| async move {
            let status = if req.uri().path().ends_with("/boom") { 500 } else { 200 };
            text_response(status, "0123456789")
        })
        .await;
        let proxy = TestProxy::start(&config(backend.addr, "")).await;
        let admin = proxy.admin_addr().await;
        let http = client();
        let send = |method: reqwest::Method, path: &str, body: &'static str| {
            http.request(method, proxy.url(path))
                .header("host", "app.test")
                .body(body)
                .send()
        };
        for _ in 0..5 {
            assert_eq!(send(reqwest::Method::GET, "/api/a", "").await.unwrap().status(), 200);
        }
        for _ in 0..2 {
            assert_eq!(send(reqwest::Method::POST, "/api/a", "hello").await.unwrap().status(), 200);
        }
        for _ in 0..3 {
            assert_eq!(send(reqwest::Method::GET, "/api/boom", "").await.unwrap().status(), 500);
        }
        assert_eq!(send(reqwest::Method::GET, "/healthz", "").await.unwrap().status(), 200);
        let codes: Vec<u16> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(send(reqwest::Method::GET, "/limited/x", "").await.unwrap().status().as_u16());
            }
            v
        };
        assert_eq!(codes, [200, 200, 429]);
        assert_eq!(send(reqwest::Method::GET, "/nowhere", "").await.unwrap().status(), 404);
        // the access-log event and the metrics are written when the response body ends
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (text, v) = scrape(admin).await;
        let req = |route: &str, method: &str, code: &str| {
            value(&v, &format!("gatehouse_requests_total{{code=\"{code}\",method=\"{method}\",route=\"{route}\",site=\"app.test\"}}"))
        };
        assert_eq!(req("/api/", "GET", "200"), 5.0);
        assert_eq!(req("/api/", "POST", "200"), 2.0);
        assert_eq!(req("/api/", "GET", "500"), 3.0);
        assert_eq!(req("/healthz", "GET", "200"), 1.0);
        assert_eq!(req("/limited/", "GET", "200"), 2.0);
        assert_eq!(req("/limited/", "GET", "429"), 1.0);
        assert_eq!(req("-", "GET", "404"), 1.0);
        let hist = |route: &str, suffix: &str| {
            value(&v, &format!("gatehouse_request_duration_seconds_{suffix}{{route=\"{route}\",site=\"app.test\"}}"))
        };
        assert_eq!(hist("/api/", "count"), 10.0);
        assert_eq!(
            value(&v, "gatehouse_request_duration_seconds_bucket{route=\"/api/\",site=\"app.test\",le=\"+Inf\"}"),
            10.0
        );
        assert_eq!(hist("/limited/", "count"), 3.0);
        let server = backend.addr.to_string();
        let up = |outcome: &str| {
            value(&v, &format!("gatehouse_upstream_requests_total{{outcome=\"{outcome}\",server=\"{server}\",upstream=\"api\"}}"))
        };
        assert_eq!((up("success"), up("server_error"), up("failure")), (7.0, 3.0, 0.0));
        assert_eq!(value(&v, "gatehouse_upstream_response_duration_seconds_count{upstream=\"api\"}"), 10.0);
        assert_eq!(value(&v, &format!("gatehouse_upstream_healthy{{server=\"{server}\",upstream=\"api\"}}")), 1.0);
        assert_eq!(value(&v, "gatehouse_request_body_bytes_total"), 10.0, "2 x \"hello\"");
        // 10 proxied answers of 10 bytes, /healthz "ok", 2 x "ok" on /limited/, plus the
        // refusal and 404 bodies: at least the 104 bytes that are known exactly
        assert!(value(&v, "gatehouse_response_body_bytes_total") >= 104.0);
        assert_eq!(value(&v, "gatehouse_rejected_requests_total{reason=\"rate_limit\"}"), 1.0);
        assert_eq!(value(&v, "gatehouse_build_info{version=\"0.1.0\"}"), 1.0);
        assert!(value(&v, "process_resident_memory_bytes") > 1e6);
        assert!(text.contains("# TYPE gatehouse_request_duration_seconds histogram"));

        // the public listener does not serve the admin endpoints
        let public = http.get(proxy.url("/metrics")).header("host", "app.test").send().await.unwrap();
        assert_eq!(public.status(), 404);

        // connections: every client connection closed, then exactly two open
        drop(http);
        let start = Instant::now();
        while value(&scrape(admin).await.1, "gatehouse_connections_open{listener=\"http\"}") != 0.0 {
            assert!(start.elapsed() < Duration::from_secs(5), "connections never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let total = value(&scrape(admin).await.1, "gatehouse_connections_total{listener=\"http\"}");
        let _a = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let start = Instant::now();
        loop {
            let now = scrape(admin).await.1;
            let open = value(&now, "gatehouse_connections_open{listener=\"http\"}");
            if open == 2.0 {
                assert_eq!(value(&now, "gatehouse_connections_total{listener=\"http\"}"), total + 2.0);
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "open {open}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        if let Some(out) = promtool_check(&text) {
            assert!(out.0, "promtool check metrics: {}", out.1);
        } else {
            eprintln!("promtool not installed; tests/run.sh installs it");
        }
    })
    .await;
}

/// `promtool check metrics` on `text` (stdin), if promtool is installed: (passed, output).
fn promtool_check(text: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_off_requests_are_not_counted() {
    with_timeout(30, async {
        let backend = echo_backend("api").await;
        let proxy = TestProxy::start(&config(backend.addr, "metrics = false")).await;
        let admin = proxy.admin_addr().await;
        for _ in 0..3 {
            let resp = client()
                .get(proxy.url("/healthz"))
                .header("host", "app.test")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        let (text, _) = scrape(admin).await;
        assert!(!text.contains("gatehouse_requests_total{"), "{text}");
        assert!(
            text.contains("gatehouse_build_info"),
            "the registry still answers"
        );
    })
    .await;
}
