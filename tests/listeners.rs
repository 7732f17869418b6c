//! `[listen] http` and `https` as lists: every listener of a kind answers alike (the sites, the
//! redirect to HTTPS naming the first HTTPS listener's port), a reload adds and removes listeners
//! of a list while the others keep serving, and `gatehouse check` refuses an empty list, a bad
//! address and an address listed twice. Real binary, raw TCP and TLS clients.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::net::TcpStream;

/// Every "listening" address of `role` logged so far, in order.
fn listening(proxy: &TestProxy, role: &str) -> Vec<SocketAddr> {
    proxy
        .logs()
        .iter()
        .filter_map(|l| parse_listening_line(l, role))
        .collect()
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// One request over TLS (any certificate accepted), SNI `host`.
async fn tls_request(addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    let config = any_cert_client(rustls::DEFAULT_VERSIONS, &["http/1.1"]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    raw_request_on(tls, &get(host, path)).await
}

fn self_signed(host: &str) -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (made.cert.pem(), made.key_pair.serialize_pem())
}

const SITES: &str = r#"
[[site]]
hosts = ["plain.test"]
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "plain" }

[[site]]
hosts = ["tls.test"]
tls = { cert = "site.pem", key = "site.key" }
  [[site.route]]
  path = "/"
  respond = { status = 200, body = "secure" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_http_and_two_https_listeners_answer_alike() {
    with_timeout(30, async {
        let config = format!(
            "[listen]\nhttp = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nhttps = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n\n[server]\nworkers = 2\n{SITES}"
        );
        let (pem, key) = self_signed("tls.test");
        let files = [("site.pem", pem.as_str()), ("site.key", key.as_str())];
        let proxy = TestProxy::start_tls_with_files(&config, &files).await;
        let mut https = Vec::new();
        eventually(Duration::from_secs(5), "two https listening lines", || {
            https = listening(&proxy, "https");
            https.len() == 2
        })
        .await;
        let http = listening(&proxy, "http");
        assert_eq!(http.len(), 2, "{http:?}");
        assert_ne!(http[0], http[1]);
        assert_ne!(https[0], https[1]);
        for addr in &http {
            let plain = raw_request(*addr, &get("plain.test", "/")).await;
            assert_eq!((plain.status, plain.body_text().as_str()), (200, "plain"));
            // redirects name the FIRST https listener's port, from every http listener
            let redirect = raw_request(*addr, &get("tls.test", "/a?b=1")).await;
            assert_eq!(redirect.status, 308, "{addr}");
            let want = format!("https://tls.test:{}/a?b=1", https[0].port());
            assert_eq!(redirect.header("location"), Some(want.as_str()));
        }
        for addr in &https {
            let secure = tls_request(*addr, "tls.test", "/").await;
            assert_eq!((secure.status, secure.body_text().as_str()), (200, "secure"));
        }
    })
    .await;
}

fn reload_config(http: &[&str]) -> String {
    let list: Vec<String> = http.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[listen]\nhttp = [{}]\n\n[server]\nworkers = 2\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = {{ status = 200, body = \"up\" }}\n",
        list.join(", ")
    )
}

async fn answers(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(stream) => raw_request_on(stream, &get("x.test", "/")).await.status == 200,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_listeners_of_a_list() {
    with_timeout(40, async {
        let proxy = TestProxy::start(&reload_config(&["127.0.0.1:0"])).await;
        let first = proxy.addr;
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fixed = taken.local_addr().unwrap();
        drop(taken);

        // one more, at a fixed port: bound, the first kept as it was
        let two = reload_config(&["127.0.0.1:0", &fixed.to_string()]);
        std::fs::write(&proxy.config_path, two).unwrap();
        proxy.send_signal("HUP");
        eventually(Duration::from_secs(10), "the second listener", || {
            listening(&proxy, "http").contains(&fixed)
        })
        .await;
        assert!(answers(fixed).await);
        assert!(answers(first).await);
        assert_eq!(
            listening(&proxy, "http").len(),
            2,
            "the first was not rebound"
        );

        // the first one goes: it stops accepting, the other one stays
        std::fs::write(&proxy.config_path, reload_config(&[&fixed.to_string()])).unwrap();
        proxy.send_signal("HUP");
        eventually(
            Duration::from_secs(10),
            "the first listener removed",
            || {
                proxy
                    .logs()
                    .iter()
                    .any(|l| l.contains("listener removed") && l.contains(&first.to_string()))
            },
        )
        .await;
        eventually_async(
            Duration::from_secs(5),
            "the first port refusing",
            || async { TcpStream::connect(first).await.is_err() },
        )
        .await;
        assert!(answers(fixed).await);
        assert_eq!(listening(&proxy, "http").len(), 2, "nothing was rebound");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_and_an_ipv6_wildcard_on_one_port_both_bind() {
    // nginx's `listen 80; listen [::]:80;`: [::] is then bound IPv6-only, so both fit. Skipped
    // where the machine has no IPv6.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 on this machine; skipped");
        return;
    }
    with_timeout(30, async {
        let free = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let config = reload_config(&[&format!("0.0.0.0:{port}"), &format!("[::]:{port}")]);
        let proxy = TestProxy::start(&config).await;
        eventually(Duration::from_secs(5), "both listening", || {
            listening(&proxy, "http").len() == 2
        })
        .await;
        assert!(answers(SocketAddr::from(([127, 0, 0, 1], port))).await);
        assert!(answers(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).await);
    })
    .await;
}

/// `gatehouse check` on `config`: exit 64 at the line containing `marker`, naming `key`, and
/// saying every one of `mentions`.
fn assert_check_error(config: &str, marker: &str, key: &str, mentions: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let out = run_gatehouse(&["check", "--config", path], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let line = config.lines().position(|l| l.contains(marker)).unwrap() + 1;
    assert!(
        out.stderr.contains(&format!("{path}:{line}:")),
        "not at line {line}:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains(&format!("`{key}`")), "{}", out.stderr);
    for m in mentions {
        assert!(out.stderr.contains(m), "{m:?} not in:\n{}", out.stderr);
    }
    assert!(out.stderr.contains("\n1 error in config"), "{}", out.stderr);
}

const ROUTE: &str =
    "\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200, body = \"x\" }\n";

#[test]
fn listener_lists_refuse_empty_bad_and_repeated_addresses() {
    let config = |listen: &str| format!("[listen]\n{listen}\n{ROUTE}");
    assert_check_error(
        &config("http = []"),
        "http = []",
        "listen.http",
        &["the list is empty"],
    );
    assert_check_error(
        &config("http = [\"127.0.0.1:8080\",\n  \"localhost:80\"]"),
        "localhost:80",
        "listen.http",
        &["`localhost:80` is not a listen address", "IP:PORT"],
    );
    assert_check_error(
        &config("http = [\"0.0.0.0:8080\",\n  \"0.0.0.0:8080\"]"),
        "  \"0.0.0.0:8080\"]",
        "listen.http",
        &["`0.0.0.0:8080` is already a listener (`listen.http`)"],
    );
    assert_check_error(
        &config("http = \"0.0.0.0:8080\"\nadmin = \"127.0.0.1:8080\""),
        "admin =",
        "listen.admin",
        &["overlaps `0.0.0.0:8080`", "list one or the other"],
    );
    assert_check_error(
        &config("http = 8080"),
        "http = 8080",
        "http",
        &["a list like"],
    );
}
