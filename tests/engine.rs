//! `[server] http1_engine` (issue 23): which HTTP/1.1 engine serves client connections. The
//! whole suite runs on both engines (`tests/run.sh` runs the HTTP/1.1 files again with
//! `GATEHOUSE_HTTP1_ENGINE=native`); this file pins how the engine is chosen, and what only the
//! native engine's own framing shows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
mod wire;

use support::{one_upstream_config, with_timeout, TestProxy};
use wire::{exchange, RawBackend, OK_RESPONSE};

/// A `[server]` line, the environment, and whether the native engine serves.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

const NATIVE_LINE: &str = "served by the native engine";

async fn start(server: &str, env: &[(&str, &str)]) -> (RawBackend, TestProxy) {
    let backend = RawBackend::start(OK_RESPONSE).await;
    let proxy = TestProxy::start_with_env(&one_upstream_config(backend.addr, server), env).await;
    (backend, proxy)
}

fn says_native(proxy: &TestProxy) -> bool {
    proxy.logs().iter().any(|l| l.contains(NATIVE_LINE))
}

/// The config's word wins; without one, `GATEHOUSE_HTTP1_ENGINE` decides; without either, hyper.
/// Each engine serves the same request the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_is_the_configs_then_the_environments() {
    with_timeout(60, async {
        let cases: &[Case] = &[
            (r#"http1_engine = "native""#, &[], true),
            ("", &[("GATEHOUSE_HTTP1_ENGINE", "native")], true),
            (
                r#"http1_engine = "hyper""#,
                &[("GATEHOUSE_HTTP1_ENGINE", "native")],
                false,
            ),
            ("", &[("GATEHOUSE_HTTP1_ENGINE", "hyper")], false),
        ];
        for (server, env, native) in cases {
            let (backend, proxy) = start(server, env).await;
            assert_eq!(says_native(&proxy), *native, "{server:?} {env:?}");
            let got = exchange(
                proxy.addr,
                b"GET /e HTTP/1.1\r\nHost: e.test\r\nConnection: close\r\n\r\n",
            )
            .await;
            let statuses: Vec<u16> = got.responses().iter().map(|r| r.status).collect();
            assert_eq!(statuses, vec![200], "{server:?} {env:?}: {}", got.text());
            assert_eq!(backend.complete().len(), 1);
        }
    })
    .await;
}

/// Pipelined requests on the native engine: each answered in order, on one connection, with a
/// length the engine wrote, and an HTTP/1.0 client answered in HTTP/1.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_answers_pipelined_requests_in_order() {
    with_timeout(60, async {
        let (backend, proxy) = start(r#"http1_engine = "native""#, &[]).await;
        let got = exchange(
            proxy.addr,
            b"GET /1 HTTP/1.1\r\nHost: e.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: e.test\r\n\r\nGET /3 HTTP/1.0\r\nHost: e.test\r\n\r\n",
        )
        .await;
        let responses = got.responses();
        assert_eq!(responses.len(), 3, "{}", got.text());
        assert!(got.closed, "an HTTP/1.0 request without keep-alive closes");
        assert!(got.text().contains("HTTP/1.0 200"), "{}", got.text());
        let lines: Vec<String> = backend
            .complete()
            .iter()
            .map(|s| s.request_line().to_string())
            .collect();
        assert_eq!(
            lines,
            ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "GET /3 HTTP/1.1"]
        );
    })
    .await;
}
