//! Response compression (`encode`): the real binary in front of a real backend, real clients that
//! never decompress on their own (reqwest is built without its decoders), and the bodies decoded
//! here with the same crates to check every byte.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{client, header, raw_request, serve, with_timeout, Backend, Gate, TestProxy};

type Body = BoxBody<Bytes, Infallible>;

/// About 100 KB of JSON records, the same every time.
fn json_sample() -> Bytes {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < 100_000 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"id":{i},"name":"user-{i}","email":"user-{i}@example.com","active":{},"score":{},"tags":["a{}","b{}"]}}"#,
            i % 3 == 0,
            (i * 7919) % 1000,
            i % 17,
            i % 5
        ));
        i += 1;
    }
    out.push(']');
    Bytes::from(out)
}

const FIRST_EVENT: &[u8] = b"data: first\n\n";
const LAST_EVENT: &[u8] = b"data: last\n\n";

fn full(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into()).boxed()).unwrap()
}

/// `/data.json` (100 KB, a strong ETag, `Accept-Ranges`, `Vary: Origin`), `/records.json` (the
/// same without those headers), `/small.json`,
/// `/image.png`, `/pre-encoded` (already gzip), `/not-modified` (304) and `/events`: one
/// server-sent event at once, the last only after `gate` opens.
async fn backend(gate: Gate) -> Backend {
    serve("app", move |req: Request<hyper::body::Incoming>| {
        let gate = gate.clone();
        async move {
            let json = [("content-type", "application/json")];
            match req.uri().path() {
                "/data.json" => full(
                    200,
                    &[
                        ("content-type", "application/json; charset=utf-8"),
                        ("etag", "\"v1\""),
                        ("accept-ranges", "bytes"),
                        ("vary", "Origin"),
                    ],
                    json_sample(),
                ),
                "/records.json" => full(200, &json, json_sample()),
                "/small.json" => full(200, &json, r#"{"ok":true}"#),
                "/image.png" => full(200, &[("content-type", "image/png")], vec![7u8; 100_000]),
                "/pre-encoded" => {
                    let headers = [("content-type", "text/plain"), ("content-encoding", "gzip")];
                    full(200, &headers, gzip(&json_sample()))
                }
                "/not-modified" => full(304, &[("etag", "\"v1\"")], Bytes::new()),
                "/events" => {
                    let events = futures_util::stream::unfold(0, move |step| {
                        let gate = gate.clone();
                        async move {
                            let event = match step {
                                0 => FIRST_EVENT,
                                1 if gate.wait(Duration::from_secs(10)).await => LAST_EVENT,
                                _ => return None,
                            };
                            Some((Ok(Frame::data(Bytes::from_static(event))), step + 1))
                        }
                    });
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(BodyExt::boxed(StreamBody::new(events)))
                        .unwrap()
                }
                _ => full(404, &[], "no such sample"),
            }
        }
    })
    .await
}

fn config(backend: &Backend) -> String {
    format!(
        r#"[listen]
http = "127.0.0.1:0"

[server]
encode = ["zstd", "br", "gzip"]

[[site]]
  [[site.route]]
  path = "/"
  upstream = "app"

  [[site.route]]
  path = "/plain/"
  upstream = "app"
  strip_prefix = true
  encode = []

  [[site.route]]
  path = "/gzip-first/"
  upstream = "app"
  strip_prefix = true
  encode = ["gzip", "br"]

  [[site.route]]
  path = "/cors/"
  upstream = "app"
  strip_prefix = true
  cors = {{ origins = ["https://app.test"] }}

[upstream.app]
servers = ["{}"]
"#,
        backend.addr
    )
}

async fn start() -> (TestProxy, Backend, Gate) {
    let gate = Gate::new();
    let backend = backend(gate.clone()).await;
    let proxy = TestProxy::start(&config(&backend)).await;
    (proxy, backend, gate)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// `data` decoded from `coding`, panicking on anything that is not one whole stream.
fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map(|_| ()),
        "br" => brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .map(|_| ()),
        "zstd" => zstd::stream::read::Decoder::new(data)
            .and_then(|mut d| d.read_to_end(&mut out))
            .map(|_| ()),
        other => panic!("no decoder for {other:?}"),
    }
    .unwrap_or_else(|e| panic!("{coding}: not a valid stream: {e}"));
    out
}

/// An incremental decoder: what the bytes fed so far decode to.
enum Partial {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Partial {
    fn new(coding: &str) -> Partial {
        match coding {
            "gzip" => Partial::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            "br" => Partial::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Partial::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
            other => panic!("no decoder for {other:?}"),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let writer: &mut dyn Write = match self {
            Partial::Gzip(d) => d,
            Partial::Br(d) => d.as_mut(),
            Partial::Zstd(d) => d,
        };
        writer.write_all(bytes).unwrap();
        writer.flush().unwrap();
        match self {
            Partial::Gzip(d) => d.get_ref().clone(),
            Partial::Br(d) => d.get_ref().clone(),
            Partial::Zstd(d) => d.get_ref().clone(),
        }
    }
}

async fn get(url: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(accept) = accept {
        req = req.header("accept-encoding", accept);
    }
    req.send().await.expect("request")
}

fn vary_of(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_coding_is_negotiated_and_decodes_byte_exact() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        let sample = json_sample();
        for coding in ["gzip", "br", "zstd"] {
            let resp = get(&proxy.url("/data.json"), Some(coding)).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(header(&resp, "content-encoding").as_deref(), Some(coding));
            assert_eq!(header(&resp, "content-length"), None, "{coding}");
            assert_eq!(header(&resp, "accept-ranges"), None, "{coding}");
            assert_eq!(
                header(&resp, "etag").as_deref(),
                Some("W/\"v1\""),
                "{coding}"
            );
            assert_eq!(vary_of(&resp), ["Origin, Accept-Encoding"], "{coding}");
            let wire = resp.bytes().await.unwrap();
            assert_eq!(decode(coding, &wire), sample, "{coding}: round trip");
            eprintln!(
                "{coding}: {} -> {} bytes ({:.1}x)",
                sample.len(),
                wire.len(),
                sample.len() as f64 / wire.len() as f64
            );
            assert!(
                wire.len() * 4 < sample.len(),
                "{coding}: {} bytes",
                wire.len()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q_values_then_server_order_pick_the_coding() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        let cases = [
            ("/data.json", "gzip, deflate, br, zstd", "zstd"),
            ("/data.json", "gzip;q=1.0, br;q=0.5, zstd;q=0", "gzip"),
            ("/data.json", "zstd;q=0.2, br;q=0.9, gzip;q=0.5", "br"),
            ("/data.json", "*;q=0.1, br", "br"),
            ("/data.json", "*", "zstd"),
            ("/gzip-first/data.json", "zstd, br, gzip", "gzip"),
            ("/gzip-first/data.json", "zstd, br", "br"),
        ];
        for (path, accept, want) in cases {
            let resp = get(&proxy.url(path), Some(accept)).await;
            let got = header(&resp, "content-encoding");
            assert_eq!(got.as_deref(), Some(want), "{path} with {accept:?}");
            let wire = resp.bytes().await.unwrap();
            assert_eq!(decode(want, &wire), json_sample(), "{path} with {accept:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_taking_no_coding_gets_the_body_as_is_with_vary() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        let sample = json_sample();
        for accept in [
            None,
            Some("identity"),
            Some("deflate"),
            Some("gzip;q=0, br;q=0"),
        ] {
            let resp = get(&proxy.url("/data.json"), accept).await;
            assert_eq!(header(&resp, "content-encoding"), None, "{accept:?}");
            let length = sample.len().to_string();
            assert_eq!(header(&resp, "content-length"), Some(length), "{accept:?}");
            assert_eq!(
                header(&resp, "etag").as_deref(),
                Some("\"v1\""),
                "{accept:?}"
            );
            assert_eq!(vary_of(&resp), ["Origin, Accept-Encoding"], "{accept:?}");
            assert_eq!(resp.bytes().await.unwrap(), sample, "{accept:?}");
        }
    })
    .await;
}

/// `encode` (Accept-Encoding) and `cors` (Origin) on one route: one `Vary` line naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_and_cors_share_one_vary_line() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        for origin in [Some("https://app.test"), Some("https://other.test"), None] {
            let mut req = client()
                .get(proxy.url("/cors/records.json"))
                .header("accept-encoding", "gzip");
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
            let granted = origin.filter(|o| *o == "https://app.test");
            assert_eq!(
                header(&resp, "access-control-allow-origin").as_deref(),
                granted,
                "{origin:?}"
            );
            assert_eq!(vary_of(&resp), ["Accept-Encoding, Origin"], "{origin:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_binary_and_encoded_responses_are_untouched() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        let accept = Some("zstd, br, gzip");
        let small = get(&proxy.url("/small.json"), accept).await;
        assert_eq!(header(&small, "content-encoding"), None, "11 bytes < 512B");
        assert_eq!(header(&small, "content-length").as_deref(), Some("11"));
        assert!(vary_of(&small).is_empty(), "never compressed: no Vary");
        assert_eq!(small.text().await.unwrap(), r#"{"ok":true}"#);

        let png = get(&proxy.url("/image.png"), accept).await;
        assert_eq!(header(&png, "content-encoding"), None, "image/png");
        assert!(vary_of(&png).is_empty());
        assert_eq!(png.bytes().await.unwrap(), vec![7u8; 100_000]);

        let encoded = get(&proxy.url("/pre-encoded"), accept).await;
        assert_eq!(
            header(&encoded, "content-encoding").as_deref(),
            Some("gzip")
        );
        assert!(vary_of(&encoded).is_empty());
        let wire = encoded.bytes().await.unwrap();
        assert_eq!(wire, gzip(&json_sample()), "the upstream's bytes, once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_head_get_gets_and_not_modified_is_untouched() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        let fields = ["content-encoding", "content-length", "etag", "accept-ranges"];
        for path in ["/data.json", "/small.json", "/image.png", "/pre-encoded"] {
            for accept in ["gzip", "br, zstd", "identity"] {
                let url = proxy.url(path);
                let get = get(&url, Some(accept)).await;
                let head = client()
                    .head(&url)
                    .header("accept-encoding", accept)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(head.status(), get.status(), "{path} {accept}");
                for name in fields {
                    let (h, g) = (header(&head, name), header(&get, name));
                    assert_eq!(h, g, "{name} of {path} with {accept:?}");
                }
                assert_eq!(vary_of(&head), vary_of(&get), "{path} {accept}");
            }
        }
        let head = client()
            .head(proxy.url("/data.json"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&head, "content-encoding").as_deref(), Some("gzip"));
        assert_eq!(header(&head, "etag").as_deref(), Some("W/\"v1\""));

        let not_modified = raw_request(
            proxy.addr,
            "GET /not-modified HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nIf-None-Match: \"v1\"\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(not_modified.status, 304);
        assert_eq!(not_modified.header("content-encoding"), None);
        assert_eq!(not_modified.header("etag"), Some("\"v1\""));
        assert!(not_modified.all("vary").is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_arrives_compressed_piece_by_piece() {
    with_timeout(60, async {
        for coding in ["gzip", "br", "zstd"] {
            // a gate per coding: the backend holds its last event until the test opens it
            let (proxy, _backend, gate) = start().await;
            let mut resp = get(&proxy.url("/events"), Some(coding)).await;
            assert_eq!(header(&resp, "content-encoding").as_deref(), Some(coding));
            let mut decoder = Partial::new(coding);
            let mut wire = Vec::new();
            let started = Instant::now();
            // the upstream has sent its first event and waits: that event must come through
            let decoded = loop {
                let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{coding}: first event not delivered while the upstream waits")
                    })
                    .unwrap()
                    .expect("the body ended before the gate opened");
                wire.extend_from_slice(&chunk);
                let decoded = decoder.feed(&chunk);
                if decoded.len() >= FIRST_EVENT.len() {
                    break decoded;
                }
            };
            assert_eq!(decoded, FIRST_EVENT, "{coding}");
            eprintln!("{coding}: first event after {:?}", started.elapsed());
            gate.open();
            while let Some(chunk) = resp.chunk().await.unwrap() {
                wire.extend_from_slice(&chunk);
            }
            let whole = [FIRST_EVENT, LAST_EVENT].concat();
            assert_eq!(decode(coding, &wire), whole, "{coding}: the whole stream");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_compressed_data_frames() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .no_proxy()
            .build()
            .unwrap();
        for coding in ["br", "gzip"] {
            let resp = h2
                .get(proxy.url("/data.json"))
                .header("accept-encoding", coding)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.version(), reqwest::Version::HTTP_2);
            assert_eq!(header(&resp, "content-encoding").as_deref(), Some(coding));
            assert_eq!(header(&resp, "content-length"), None);
            let wire = resp.bytes().await.unwrap();
            assert_eq!(decode(coding, &wire), json_sample(), "{coding} over h2");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_encode_passes_the_response_through() {
    with_timeout(30, async {
        let (proxy, _backend, _gate) = start().await;
        let resp = get(&proxy.url("/plain/data.json"), Some("zstd, br, gzip")).await;
        assert_eq!(header(&resp, "content-encoding"), None);
        let length = json_sample().len().to_string();
        assert_eq!(header(&resp, "content-length"), Some(length));
        assert_eq!(header(&resp, "etag").as_deref(), Some("\"v1\""));
        assert_eq!(header(&resp, "accept-ranges").as_deref(), Some("bytes"));
        assert_eq!(vary_of(&resp), ["Origin"]);
        assert_eq!(resp.bytes().await.unwrap(), json_sample());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_on_an_encode_route_is_untouched() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    with_timeout(30, async {
        let backend = support::ws_echo_backend().await;
        let proxy = TestProxy::start(&config(&backend)).await;
        let mut request = format!("ws://{}/chat", proxy.addr)
            .into_client_request()
            .unwrap();
        let accept = http::HeaderValue::from_static("gzip, br, zstd");
        request.headers_mut().insert("accept-encoding", accept);
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), 101);
        assert_eq!(response.headers().get("content-encoding"), None);
        assert_eq!(response.headers().get("vary"), None);
        let text = "text/* would match this if it were a body ".repeat(50);
        ws.send(Message::Text(text.clone())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo timed out")
            .expect("stream ended")
            .unwrap();
        assert_eq!(reply, Message::Text(text));
        ws.close(None).await.unwrap();
    })
    .await;
}
