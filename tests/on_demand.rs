//! On-demand TLS (`tls = "on_demand"` + `[acme] on_demand`) against the real binary, a real
//! `ask` backend that counts what it is asked, and pebble (started per test from
//! `tests/acme-testbed/` on its own block of ports, 24300..24390): an allowed name gets a
//! certificate chaining to pebble's root within the handshake, once for concurrent handshakes
//! and without asking again after a restart; a refused name gets none and is asked once; a burst
//! of 200 names orders at most `max_per_minute`; the certificate is renewed without asking again;
//! `/metrics` counts asks, orders and refusals.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::pebble::Pebble;
use support::{
    echo_backend, serve, text_response, with_timeout, AcceptAnyCert, Backend, TestProxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const BASE_ALLOWED: u16 = 24300;
const BASE_REFUSED: u16 = 24310;
const BASE_BURST: u16 = 24320;
const BASE_RENEWAL: u16 = 24330;
const BASE_SLOW_ASK: u16 = 24340;

/// The handshake bound the tests configure (`handshake_wait`); pebble issues in ~1 s.
const WAIT: Duration = Duration::from_secs(20);

/// The `ask` endpoint: 200 for names `allow` accepts, 403 otherwise; counts every question.
struct Ask {
    backend: Backend,
    asked: Arc<Mutex<HashMap<String, usize>>>,
}

impl Ask {
    async fn start(allow: fn(&str) -> bool) -> Ask {
        Ask::start_slow(allow, Duration::ZERO).await
    }

    /// Like `start`, answering each question after `delay`.
    async fn start_slow(allow: fn(&str) -> bool, delay: Duration) -> Ask {
        let asked: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counts = asked.clone();
        let backend = serve("ask", move |req: hyper::Request<hyper::body::Incoming>| {
            let domain = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("domain=")))
                .unwrap_or_default()
                .to_string();
            *counts.lock().unwrap().entry(domain.clone()).or_default() += 1;
            let status = if allow(&domain) { 200 } else { 403 };
            async move {
                tokio::time::sleep(delay).await;
                text_response(status, "")
            }
        })
        .await;
        Ask { backend, asked }
    }

    fn asked(&self, name: &str) -> usize {
        self.asked.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.asked.lock().unwrap().values().sum()
    }
}

/// A catch-all on-demand site proxied to `upstream`, proven by HTTP-01 (`tls_alpn`: TLS-ALPN-01)
/// on pebble's port for it.
fn config(
    pebble: &Pebble,
    state: &Path,
    ask: &Ask,
    upstream: &Backend,
    (max_per_minute, tls_alpn, wait): (u32, bool, Duration),
) -> String {
    let (http, https, challenge) = if tls_alpn {
        (0, pebble.base + 3, "tls-alpn-01")
    } else {
        (pebble.base + 2, 0, "http-01")
    };
    format!(
        r#"
[listen]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{https}"
admin = "127.0.0.1:0"

[server]
state_dir = "{state}"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
challenge = "{challenge}"
on_demand = {{ ask = "http://{ask}/domain-allowed", max_per_minute = {max_per_minute}, remember_refusals = "10m", handshake_wait = "{wait}s" }}

[[site]]
hosts = ["*"]
tls = "on_demand"

  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["{upstream}"]
"#,
        state = state.to_str().expect("utf-8 path"),
        directory = pebble.var("ACME_DIRECTORY_URL"),
        ca_root = pebble.var("ACME_CA_FILE"),
        ask = ask.backend.addr,
        upstream = upstream.addr,
        wait = wait.as_secs(),
    )
}

/// A handshake with SNI `sni`, trusting only `root` (PEM) or, with `None`, any certificate.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    root: Option<&[u8]>,
) -> Result<TlsStream<TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let config = match root {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.expect("root PEM")).expect("add root");
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
    }
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake with SNI {sni}: {e}"))
}

/// GET / over `tls` with `Host: name`; the response's head and body as text.
async fn get(mut tls: TlsStream<TcpStream>, name: &str) -> String {
    let request = format!("GET / HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// DER of the leaf a handshake with SNI `sni` is served, verified against `root` only.
async fn leaf(addr: SocketAddr, sni: &str, root: &[u8]) -> Result<Vec<u8>, String> {
    let tls = connect(addr, sni, Some(root)).await?;
    let certs = tls.get_ref().1.peer_certificates();
    Ok(certs
        .and_then(|c| c.first())
        .expect("leaf")
        .as_ref()
        .to_vec())
}

/// `/metrics` from the admin listener, as `name{labels} -> value`.
async fn metrics(proxy: &TestProxy) -> HashMap<String, f64> {
    let admin = proxy.admin_addr().await;
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("gatehouse_acme_on_demand_"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} not in /metrics: {m:?}"))
}

fn diagnostics(proxy: &TestProxy, pebble: &Pebble) -> String {
    let logs = proxy.logs();
    let tail = &logs[logs.len().saturating_sub(30)..];
    let log = pebble.log();
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "\n--- gatehouse:\n{}\n--- pebble:\n{}",
        tail.join("\n"),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_gets_a_certificate_within_the_handshake_once_and_after_a_restart() {
    with_timeout(90, async {
        let pebble = Pebble::start(BASE_ALLOWED, &[]);
        let root = pebble.root();
        let state = tempfile::tempdir().unwrap();
        let ask = Ask::start(|name| name.ends_with(".shop.test")).await;
        let upstream = echo_backend("echo").await;
        let config = config(&pebble, state.path(), &ask, &upstream, (10, false, WAIT));
        let proxy = TestProxy::start_tls(&config).await;
        let name = "customer-1.shop.test";

        // four handshakes for the same new name at once: each waits, all get the one order's
        // certificate, verified against pebble's root only
        let started = Instant::now();
        let handshakes = (0..4).map(|_| connect(proxy.https(), name, Some(&root)));
        let results = futures_util::future::join_all(handshakes).await;
        let took = started.elapsed();
        for result in &results {
            if let Err(e) = result {
                panic!("{e}{}", diagnostics(&proxy, &pebble));
            }
        }
        eprintln!("four concurrent first handshakes for {name} done in {took:?}");
        assert!(took < WAIT, "took {took:?}, over the {WAIT:?} bound");
        assert_eq!(ask.asked(name), 1, "one ask for concurrent handshakes");
        assert_eq!(
            pebble.new_orders(),
            1,
            "one order for concurrent handshakes"
        );
        let tls = results.into_iter().next().unwrap().unwrap();
        let response = get(tls, name).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("x-backend: echo"), "{response}");

        // served from memory now: no new ask or order
        connect(proxy.https(), name, Some(&root)).await.unwrap();
        assert_eq!((ask.asked(name), pebble.new_orders()), (1, 1));
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(
                &m,
                "gatehouse_acme_on_demand_asks_total{result=\"allowed\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(
                &m,
                "gatehouse_acme_on_demand_orders_total{result=\"success\"}"
            ),
            1.0
        );
        let stored = std::fs::read_dir(state.path().join("certs"))
            .unwrap()
            .count();
        assert_eq!(stored, 1, "one CA folder in the store");

        // a reload that changes the on-demand keys and the site keeps the names served: the
        // same certificate, nothing asked or ordered
        let served = leaf(proxy.https(), name, &root).await.unwrap();
        let changed = crate::config(&pebble, state.path(), &ask, &upstream, (11, false, WAIT))
            .replace(
                "  upstream = \"app\"",
                "  upstream = \"app\"\n  max_body = \"2MB\"",
            );
        std::fs::write(&proxy.config_path, changed).unwrap();
        let admin = proxy.admin_addr().await;
        let resp = support::client()
            .post(format!("http://{admin}/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let after = leaf(proxy.https(), name, &root)
            .await
            .unwrap_or_else(|e| panic!("after the reload: {e}{}", diagnostics(&proxy, &pebble)));
        assert!(after == served, "another certificate after the reload");
        assert_eq!(
            (ask.asked(name), pebble.new_orders()),
            (1, 1),
            "after the reload"
        );

        // `gatehouse certs` lists the name's certificate under the on-demand site
        let path = proxy.config_path.to_str().unwrap();
        let out = support::run_gatehouse(&["certs", "--config", path], &[], &[]);
        assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout, out.stderr);
        let row = out.stdout.lines().find(|l| l.starts_with(name));
        assert!(
            row.is_some_and(|r| r.contains("demand") && r.contains("Pebble")),
            "{}",
            out.stdout
        );

        // a restart serves the stored certificate without asking or ordering again
        drop(proxy);
        let proxy = TestProxy::start_tls(&config).await;
        connect(proxy.https(), name, Some(&root))
            .await
            .unwrap_or_else(|e| panic!("{e}{}", diagnostics(&proxy, &pebble)));
        assert_eq!(ask.asked(name), 1, "asked again after a restart");
        assert_eq!(pebble.new_orders(), 1, "ordered again after a restart");
        let m = metrics(&proxy).await;
        assert_eq!(
            metric(
                &m,
                "gatehouse_acme_on_demand_asks_total{result=\"allowed\"}"
            ),
            0.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_name_gets_no_certificate_and_is_asked_once_within_the_window() {
    with_timeout(60, async {
        let pebble = Pebble::start(BASE_REFUSED, &[]);
        let state = tempfile::tempdir().unwrap();
        let ask = Ask::start(|name| name.ends_with(".shop.test")).await;
        let upstream = echo_backend("echo").await;
        // TLS-ALPN-01 here, so both challenges are proven end to end
        let config = config(&pebble, state.path(), &ask, &upstream, (10, true, WAIT));
        let proxy = TestProxy::start_tls(&config).await;

        for attempt in 0..3 {
            let refused = connect(proxy.https(), "scanner.example.org", None).await;
            assert!(
                refused.is_err(),
                "attempt {attempt}: a certificate was served"
            );
        }
        assert_eq!(ask.asked("scanner.example.org"), 1, "asked more than once");
        // names that are not host names are refused without asking
        // (those rustls's client refuses to send are left out)
        let bad = [
            "nodots",
            "a_b.example.org",
            "-a.example.org",
            "x.example.123",
        ];
        let sendable: Vec<&str> = bad
            .into_iter()
            .filter(|n| ServerName::try_from(n.to_string()).is_ok())
            .collect();
        assert!(sendable.len() >= 2, "{sendable:?}");
        for name in &sendable {
            assert!(connect(proxy.https(), name, None).await.is_err(), "{name}");
        }
        assert_eq!(ask.total(), 1, "asked: {:?}", ask.asked.lock().unwrap());
        // an allowed name still gets its certificate (TLS-ALPN-01) after those refusals
        let root = pebble.root();
        connect(proxy.https(), "b.shop.test", Some(&root))
            .await
            .unwrap_or_else(|e| panic!("{e}{}", diagnostics(&proxy, &pebble)));
        assert_eq!(pebble.new_orders(), 1, "only the allowed name is ordered");

        let m = metrics(&proxy).await;
        let refusals = |reason: &str| {
            metric(
                &m,
                &format!("gatehouse_acme_on_demand_refusals_total{{reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(refusals("ask_refused"), 1.0);
        assert_eq!(refusals("remembered"), 2.0);
        assert_eq!(
            refusals("invalid_name"),
            sendable.len() as f64,
            "{sendable:?}"
        );
        assert_eq!(
            metric(
                &m,
                "gatehouse_acme_on_demand_asks_total{result=\"refused\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(
                &m,
                "gatehouse_acme_on_demand_asks_total{result=\"allowed\"}"
            ),
            1.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_names_orders_at_most_max_per_minute() {
    const MAX: u32 = 5;
    with_timeout(90, async {
        let pebble = Pebble::start(BASE_BURST, &[]);
        let root = pebble.root();
        let state = tempfile::tempdir().unwrap();
        let ask = Ask::start(|_| true).await;
        let upstream = echo_backend("echo").await;
        let config = config(&pebble, state.path(), &ask, &upstream, (MAX, false, WAIT));
        let proxy = TestProxy::start_tls(&config).await;

        let started = Instant::now();
        let names: Vec<String> = (0..200).map(|i| format!("n{i}.burst.test")).collect();
        let handshakes = names.iter().map(|n| connect(proxy.https(), n, Some(&root)));
        let results = futures_util::future::join_all(handshakes).await;
        let took = started.elapsed();
        let served: Vec<&String> = names
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| n)
            .collect();
        eprintln!(
            "200 names in {took:?}: {} served, {} asks, {} orders",
            served.len(),
            ask.total(),
            pebble.new_orders()
        );
        assert!(ask.total() <= MAX as usize, "{} asks", ask.total());
        assert!(
            pebble.new_orders() <= MAX as usize,
            "{} orders",
            pebble.new_orders()
        );
        assert!(
            !served.is_empty() && served.len() <= MAX as usize,
            "{} served{}",
            served.len(),
            diagnostics(&proxy, &pebble)
        );
        let m = metrics(&proxy).await;
        let capped = metric(
            &m,
            "gatehouse_acme_on_demand_refusals_total{reason=\"rate_capped\"}",
        );
        assert!(capped >= f64::from(200 - MAX), "{capped} rate_capped");

        // a capped name is not remembered as refused: asked again it is capped again, not
        // "remembered", and the ask endpoint still never heard of it
        let capped_name = names
            .iter()
            .find(|n| !served.contains(n) && ask.asked(n) == 0)
            .expect("a capped name");
        assert!(connect(proxy.https(), capped_name, Some(&root))
            .await
            .is_err());
        let after = metrics(&proxy).await;
        let reason = |m: &HashMap<String, f64>, r: &str| {
            metric(
                m,
                &format!("gatehouse_acme_on_demand_refusals_total{{reason=\"{r}\"}}"),
            )
        };
        assert_eq!(reason(&after, "rate_capped"), capped + 1.0);
        assert_eq!(reason(&after, "remembered"), 0.0);
        assert!(ask.total() <= MAX as usize);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_certificate_is_renewed_like_any_other_without_asking_again() {
    with_timeout(90, async {
        // 15-second certificates: renewal is due 10 s after issuance (a third of the lifetime left)
        let pebble = Pebble::start(BASE_RENEWAL, &[("ACME_TESTBED_CERT_VALIDITY", "15")]);
        let root = pebble.root();
        let state = tempfile::tempdir().unwrap();
        let ask = Ask::start(|name| name.ends_with(".shop.test")).await;
        let upstream = echo_backend("echo").await;
        let config = config(&pebble, state.path(), &ask, &upstream, (10, false, WAIT));
        let proxy = TestProxy::start_tls(&config).await;
        let name = "renewed.shop.test";
        let first = leaf(proxy.https(), name, &root)
            .await
            .unwrap_or_else(|e| panic!("{e}{}", diagnostics(&proxy, &pebble)));
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let now = leaf(proxy.https(), name, &root).await;
            if now.as_ref().is_ok_and(|leaf| *leaf != first) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not renewed within 40 s (last: {:?}){}",
                now.map(|_| "the first certificate"),
                diagnostics(&proxy, &pebble)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(ask.asked(name), 1, "a renewal asked again");
        assert!(pebble.new_orders() >= 2, "{} orders", pebble.new_orders());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_waits_at_most_handshake_wait_and_the_order_goes_on() {
    with_timeout(60, async {
        let pebble = Pebble::start(BASE_SLOW_ASK, &[]);
        let root = pebble.root();
        let state = tempfile::tempdir().unwrap();
        // the ask endpoint takes 3 s (under the 5 s Gatehouse gives it), the handshake waits 1 s
        let ask = Ask::start_slow(|_| true, Duration::from_secs(3)).await;
        let upstream = echo_backend("echo").await;
        let wait = Duration::from_secs(1);
        let config = config(&pebble, state.path(), &ask, &upstream, (10, false, wait));
        let proxy = TestProxy::start_tls(&config).await;
        let name = "slow.shop.test";

        let https = proxy.https();
        let waiting_root = root.clone();
        let started = Instant::now();
        let first = tokio::spawn(async move {
            let result = connect(https, name, Some(&waiting_root)).await;
            (result.is_ok(), started.elapsed())
        });
        // meanwhile another handshake is not held up by the waiting one
        tokio::time::sleep(Duration::from_millis(100)).await;
        let other = Instant::now();
        assert!(connect(https, "nodots", None).await.is_err());
        let other = other.elapsed();
        assert!(
            other < Duration::from_millis(900),
            "another handshake took {other:?}"
        );
        let (served, took) = first.await.unwrap();
        assert!(!served, "served before the ask was answered");
        assert!(
            took >= wait && took < Duration::from_secs(3),
            "the handshake gave up after {took:?}, handshake_wait is {wait:?}"
        );
        eprintln!("waiting handshake gave up after {took:?}; another took {other:?} meanwhile");

        // the fetch went on: a later handshake gets the certificate, asked once
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = connect(proxy.https(), name, Some(&root)).await {
            assert!(
                Instant::now() < deadline,
                "{e}{}",
                diagnostics(&proxy, &pebble)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(ask.asked(name), 1);
        let m = metrics(&proxy).await;
        let timeouts = "gatehouse_acme_on_demand_refusals_total{reason=\"wait_timeout\"}";
        assert!(metric(&m, timeouts) >= 1.0, "{m:?}");
    })
    .await;
}
