//! The admin listener: `/live`, `/ready` following `required` upstreams' health, loopback-only
//! unless `admin_allow` says otherwise.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

fn config(backend: SocketAddr, admin: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
{admin}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "api"

[upstream.api]
servers = ["{backend}"]
health = {{ path = "/", interval = "200ms", unhealthy = 1, healthy = 1 }}
required = true
"#
    )
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("admin request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_required_upstream_and_live_stays_up() {
    with_timeout(30, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = serve_on(listener).await;
        let proxy = TestProxy::start(&config(addr, "admin = \"127.0.0.1:0\"")).await;
        let admin = proxy.admin_addr().await;
        assert_eq!(get(admin, "/live").await, (200, "live\n".into()));
        assert_eq!(get(admin, "/ready").await.0, 200);
        backend.abort();
        let _ = backend.await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "backend still accepting"
        );
        // the backend's listener and connections are gone: checks fail, the upstream has no healthy server
        let start = Instant::now();
        loop {
            let (status, body) = get(admin, "/ready").await;
            if status == 503 {
                assert!(body.contains("upstream api"), "{body}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "ready never flipped: {:#?}",
                proxy.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            get(admin, "/live").await.0,
            200,
            "live is about Gatehouse itself"
        );
        let revived = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        let _backend = serve_on(revived).await;
        let start = Instant::now();
        while get(admin, "/ready").await.0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "ready never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(get(admin, "/nope").await.0, 404);
        let (status, config) = get(admin, "/config").await;
        assert_eq!(status, 200);
        assert!(
            config.contains("required: true") && config.contains("\"/\""),
            "{config}"
        );
    })
    .await;
}

/// A backend on an already bound listener; aborting the handle closes its connections too.
async fn serve_on(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(text_response(200, "ok"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_peers_reach_the_admin_endpoints() {
    with_timeout(30, async {
        let backend = echo_backend("api").await;
        let proxy = TestProxy::start(&config(
            backend.addr,
            "admin = \"127.0.0.1:0\"\nadmin_allow = [\"127.0.0.2\"]",
        ))
        .await;
        let admin = proxy.admin_addr().await;
        let from = |ip: &str| {
            reqwest::Client::builder()
                .local_address(ip.parse::<std::net::IpAddr>().unwrap())
                .no_proxy()
                .build()
                .unwrap()
        };
        let status = |c: reqwest::Client| async move {
            c.get(format!("http://{admin}/live"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        assert_eq!(status(from("127.0.0.2")).await, 200);
        assert_eq!(status(from("127.0.0.3")).await, 403);
    })
    .await;
}

#[test]
fn a_non_loopback_admin_address_needs_admin_allow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let text = config("127.0.0.1:9".parse().unwrap(), "admin = \"0.0.0.0:9900\"");
    std::fs::write(&path, &text).unwrap();
    let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    assert!(out.stderr.contains("`listen.admin`"), "{}", out.stderr);
    assert!(out.stderr.contains("admin_allow"), "{}", out.stderr);
    let line = text.lines().position(|l| l.contains("admin =")).unwrap() + 1;
    assert!(
        out.stderr.contains(&format!("gatehouse.toml:{line}:")),
        "{}",
        out.stderr
    );
}
