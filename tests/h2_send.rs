//! HTTP/2 streams have a send deadline: a client that grants no flow-control window gets each
//! stalled stream reset after `timeouts.send`, and what the streams held upstream is given back.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::time::{Duration, Instant};
use support::*;
use tokio::net::TcpStream;

const STREAMS: usize = 256;
const BODY: usize = 32 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_withholding_window_are_reset_after_the_send_timeout_and_upstreams_reused() {
    with_timeout(120, async {
        let body = Bytes::from(vec![b'w'; BODY]);
        let backend = serve("window", move |_req| {
            let body = body.clone();
            async move { hyper::Response::new(Full::new(body)) }
        })
        .await;
        let timeouts = "timeouts = { send = \"1s\" }";
        let proxy = TestProxy::start(&one_upstream_config(backend.addr, timeouts)).await;

        // a client whose streams start with no window and never get any
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let (h2, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut h2 = h2.ready().await.unwrap();
        let mut responses = Vec::new();
        for i in 0..STREAMS {
            let req = http::Request::get(format!("http://{}/w/{i}", proxy.addr))
                .body(())
                .unwrap();
            let (resp, _) = h2.send_request(req, true).unwrap();
            responses.push(resp);
            h2 = h2.ready().await.unwrap();
        }
        let sent = Instant::now();
        let outcomes = responses.into_iter().map(|resp| async move {
            let resp = resp.await.expect("the head needs no window");
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            match tokio::time::timeout(Duration::from_secs(20), body.data()).await {
                Ok(Some(Err(e))) => Ok((e.reason(), sent.elapsed())),
                other => Err(format!("{other:?}")),
            }
        });
        let outcomes = futures_util::future::join_all(outcomes).await;
        let mut latest = Duration::ZERO;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let (reason, at) = outcome.unwrap_or_else(|e| panic!("stream {i} not reset: {e}"));
            assert_eq!(reason, Some(h2::Reason::CANCEL), "stream {i}");
            latest = latest.max(at);
        }
        eprintln!("{STREAMS} stalled streams all reset within {latest:?} of the last request");
        assert!(latest >= Duration::from_millis(900), "{latest:?}");
        assert!(latest < Duration::from_secs(15), "{latest:?}");
        assert_eq!(backend.connections(), STREAMS);

        // the rest of each response was read off, so the same upstream connections serve again
        // (the drains have no outside signal of their end; they read 32 KiB from loopback)
        tokio::time::sleep(Duration::from_millis(500)).await;
        let h2c = reqwest::Client::builder()
            .http2_prior_knowledge()
            .no_proxy()
            .build()
            .unwrap();
        let again = (0..STREAMS).map(|i| {
            let (h2c, url) = (h2c.clone(), proxy.url(&format!("/again/{i}")));
            async move {
                let resp = h2c.get(url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.bytes().await.unwrap().len()
            }
        });
        let lens = futures_util::future::join_all(again).await;
        assert!(lens.iter().all(|&n| n == BODY), "{lens:?}");
        assert_eq!(backend.closed(), 0, "no upstream connection was closed");
        assert_eq!(backend.connections(), STREAMS, "no new upstream connection");
    })
    .await;
}
