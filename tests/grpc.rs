//! HTTP/2 to upstreams and gRPC end to end: a real gRPC stack on both sides (tonic's client and
//! server machinery with hand-written prost messages, no protoc), through the real binary, over
//! h2c and over TLS with ALPN. Unary and the three streaming kinds, trailers intact, `te:
//! trailers`, cancellation reaching the backend, `grpc-timeout`, Gatehouse's own refusals as gRPC
//! statuses, gRPC health checks ejecting and restoring a server, and plain HTTP requests sharing
//! one h2c upstream connection up to `max_streams`.

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{any_cert_client, poll_until, with_timeout, TestProxy};
use tokio::net::TcpListener;
use tonic::codec::{ProstCodec, Streaming};
use tonic::{Code, Request, Response, Status};

// ---------------------------------------------------------------------------------------------
// Messages and the backend's service, by hand
// ---------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg {
        text: text.to_string(),
        n,
    }
}

/// What the backend saw.
#[derive(Default)]
struct Seen {
    /// Server streams that ended because the client went away (dropped unfinished).
    cancelled: AtomicUsize,
    /// Calls whose handler started.
    calls: AtomicUsize,
    /// `te` of each call.
    te: Mutex<Vec<String>>,
    /// `grpc.health.v1` answers NOT_SERVING while false.
    serving: AtomicBool,
    /// TCP connections accepted.
    conns: AtomicUsize,
}

type BoxStream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;
type BoxFut<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

/// `Unary`: echoes; "fail" answers DATA_LOSS with a message; "slow" takes 10 s.
struct Unary;
impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFut<Msg>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            match m.text.as_str() {
                "fail" => Err(Status::new(Code::DataLoss, "backend says no: ünïcode")),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(Response::new(m))
                }
                _ => Ok(Response::new(msg(&format!("echo {}", m.text), m.n))),
            }
        })
    }
}

/// Counts a server stream dropped before its end.
struct CancelGuard(Arc<Seen>, bool);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// `ServerStream`: `n` messages 50 ms apart (`n` = 0: without end).
struct ServerStream(Arc<Seen>);
impl tonic::server::ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFut<BoxStream<Msg>>;
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        let seen = self.0.clone();
        Box::pin(async move {
            let m = req.into_inner();
            let count = m.n;
            let stream = async_stream(move |tx| async move {
                let mut guard = CancelGuard(seen, false);
                let mut i = 0;
                loop {
                    i += 1;
                    if tx.send(Ok(msg(&m.text, i))).await.is_err() {
                        return;
                    }
                    if count != 0 && i >= count {
                        guard.1 = true;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            Ok(Response::new(stream))
        })
    }
}

/// A stream fed by a task; the task (and what it holds) is dropped with the stream.
#[allow(clippy::result_large_err, reason = "tonic's Status is the item type")]
fn async_stream<F, Fut>(produce: F) -> BoxStream<Msg>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Msg, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(produce(tx));
    let abort = AbortOnDrop(task);
    Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
            let _keep = &abort;
            item
        }),
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `ClientStream`: the texts joined, `n` the count.
struct ClientStream;
impl tonic::server::ClientStreamingService<Msg> for ClientStream {
    type Response = Msg;
    type Future = BoxFut<Msg>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = req.into_inner();
            let mut texts = Vec::new();
            while let Some(m) = stream.message().await? {
                texts.push(m.text);
            }
            Ok(Response::new(msg(&texts.join("+"), texts.len() as u32)))
        })
    }
}

/// `Bidi`: each message echoed as it arrives.
struct Bidi;
impl tonic::server::StreamingService<Msg> for Bidi {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFut<BoxStream<Msg>>;
    fn call(&mut self, req: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut incoming = req.into_inner();
            let stream = async_stream(move |tx| async move {
                while let Ok(Some(m)) = incoming.message().await {
                    let reply = msg(&format!("re {}", m.text), m.n);
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(stream))
        })
    }
}

/// `grpc.health.v1.Health/Check`: SERVING or NOT_SERVING as `Seen::serving` says.
struct Health(Arc<Seen>);
impl tonic::server::UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = BoxFut<HealthCheckResponse>;
    fn call(&mut self, req: Request<HealthCheckRequest>) -> Self::Future {
        let serving = self.0.serving.load(Ordering::SeqCst);
        Box::pin(async move {
            if req.into_inner().service != "test.Echo" {
                return Err(Status::not_found("unknown service"));
            }
            let status = if serving { 1 } else { 2 };
            Ok(Response::new(HealthCheckResponse { status }))
        })
    }
}

async fn route(
    req: http::Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<http::Response<tonic::body::BoxBody>, Infallible> {
    let te = req
        .headers()
        .get("te")
        .map(|v| v.to_str().unwrap().to_string());
    let path = req.uri().path().to_string();
    if path.starts_with("/test.Echo/") {
        seen.calls.fetch_add(1, Ordering::SeqCst);
        seen.te.lock().unwrap().push(te.unwrap_or_default());
    }
    let codec = || ProstCodec::<Msg, Msg>::default();
    let resp = match path.as_str() {
        "/test.Echo/Unary" => tonic::server::Grpc::new(codec()).unary(Unary, req).await,
        "/test.Echo/ServerStream" => {
            let svc = ServerStream(seen.clone());
            tonic::server::Grpc::new(codec())
                .server_streaming(svc, req)
                .await
        }
        "/test.Echo/ClientStream" => {
            tonic::server::Grpc::new(codec())
                .client_streaming(ClientStream, req)
                .await
        }
        "/test.Echo/Bidi" => tonic::server::Grpc::new(codec()).streaming(Bidi, req).await,
        "/grpc.health.v1.Health/Check" => {
            let codec = ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
            tonic::server::Grpc::new(codec)
                .unary(Health(seen.clone()), req)
                .await
        }
        _ => Status::unimplemented(path).into_http(),
    };
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Backends: HTTP/2 servers on 127.0.0.1:0, h2c or TLS (ALPN h2)
// ---------------------------------------------------------------------------------------------

struct GrpcBackend {
    addr: SocketAddr,
    seen: Arc<Seen>,
    _task: AbortOnDrop,
}

/// Serves every accepted connection as HTTP/2 with `handle`, over TLS if `tls`.
fn serve_h2<H, Fut, B>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    seen: Arc<Seen>,
    handle: H,
) -> AbortOnDrop
where
    H: Fn(http::Request<Incoming>, Arc<Seen>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            seen.conns.fetch_add(1, Ordering::SeqCst);
            let (seen, handle, tls) = (seen.clone(), handle.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, seen.clone()));
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = h2.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            let _ = h2.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    }))
}

async fn grpc_backend(tls: Option<Arc<rustls::ServerConfig>>) -> GrpcBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    seen.serving.store(true, Ordering::SeqCst);
    let task = serve_h2(listener, tls, seen.clone(), route);
    GrpcBackend {
        addr,
        seen,
        _task: task,
    }
}

/// A CA and a leaf it issued for `localhost` and 127.0.0.1: (CA PEM, leaf chain PEM, key PEM,
/// the server config with ALPN h2).
fn pki() -> (String, String, String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "grpc test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let chain = format!("{}{}", leaf.pem(), ca.pem());
    (ca.pem(), chain, key.serialize_pem(), Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// The proxy and the client
// ---------------------------------------------------------------------------------------------

/// One site (plain and, with `tls`, HTTPS from files `site.pem`/`site.key`), `/` to upstream
/// `grpc` with `upstream_keys` (its servers included).
fn config(tls: bool, route_keys: &str, upstream_keys: &str) -> String {
    let (https, site_tls) = match tls {
        true => (
            "https = \"127.0.0.1:0\"",
            "tls = { cert = \"site.pem\", key = \"site.key\" }\nredirect_https = false",
        ),
        false => ("", ""),
    };
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
{https}

[server]
workers = 2

[[site]]
{site_tls}
  [[site.route]]
  path = "/"
  upstream = "grpc"
  {route_keys}

[upstream.grpc]
{upstream_keys}
"#
    )
}

async fn start_h2c(route_keys: &str, backend: &GrpcBackend, extra: &str) -> TestProxy {
    let upstream = format!(
        "servers = [\"{}\"]\nprotocol = \"h2c\"\n{extra}",
        backend.addr
    );
    TestProxy::start(&config(false, route_keys, &upstream)).await
}

type GrpcClient = tonic::client::Grpc<Client<HttpConnector, tonic::body::BoxBody>>;
type TlsGrpcClient =
    tonic::client::Grpc<Client<hyper_rustls::HttpsConnector<HttpConnector>, tonic::body::BoxBody>>;

/// A gRPC client over h2c (prior knowledge) to `addr`.
fn h2c_client(addr: SocketAddr) -> GrpcClient {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let origin = format!("http://{addr}").parse().unwrap();
    tonic::client::Grpc::with_origin(client, origin)
}

/// A gRPC client over TLS (ALPN h2, any certificate) to `addr` as `localhost`.
fn tls_client(addr: SocketAddr) -> TlsGrpcClient {
    // ALPN `h2` comes from `enable_http2`
    let tls = (*any_cert_client(rustls::DEFAULT_VERSIONS, &[])).clone();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let origin = format!("https://localhost:{}", addr.port())
        .parse()
        .unwrap();
    tonic::client::Grpc::with_origin(client, origin)
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

fn path(method: &str) -> PathAndQuery {
    PathAndQuery::try_from(format!("/test.Echo/{method}")).unwrap()
}

/// The four kinds of call and a backend error, through whatever `grpc` goes through.
async fn all_kinds<T>(grpc: &mut tonic::client::Grpc<T>, seen: &Seen)
where
    T: tonic::client::GrpcService<tonic::body::BoxBody>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::Error: std::fmt::Debug,
{
    // unary
    grpc.ready().await.unwrap();
    let resp = grpc
        .unary(Request::new(msg("hi", 7)), path("Unary"), codec())
        .await
        .unwrap();
    assert_eq!(resp.into_inner(), msg("echo hi", 7));

    // the backend's own status and message, which travel in trailers
    grpc.ready().await.unwrap();
    let err = grpc
        .unary(Request::new(msg("fail", 0)), path("Unary"), codec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert_eq!(err.message(), "backend says no: ünïcode");

    // server streaming
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(Request::new(msg("s", 3)), path("ServerStream"), codec())
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, [1, 2, 3]);

    // client streaming
    grpc.ready().await.unwrap();
    let outgoing = tokio_stream::iter(["a", "b", "c"].map(|t| msg(t, 0)));
    let resp = grpc
        .client_streaming(Request::new(outgoing), path("ClientStream"), codec())
        .await
        .unwrap();
    assert_eq!(resp.into_inner(), msg("a+b+c", 3));

    // bidirectional, full duplex: each reply arrives before the next message is sent
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    tx.send(msg("one", 1)).await.unwrap();
    let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut replies = grpc
        .streaming(Request::new(outgoing), path("Bidi"), codec())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replies.message().await.unwrap(), Some(msg("re one", 1)));
    tx.send(msg("two", 2)).await.unwrap();
    assert_eq!(replies.message().await.unwrap(), Some(msg("re two", 2)));
    drop(tx);
    assert_eq!(replies.message().await.unwrap(), None);

    let te = seen.te.lock().unwrap().clone();
    assert!(te.iter().all(|te| te == "trailers"), "te seen: {te:?}");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_kinds_of_call_pass_over_h2c() {
    with_timeout(60, async {
        let backend = grpc_backend(None).await;
        let proxy = start_h2c("", &backend, "").await;
        let mut grpc = h2c_client(proxy.addr);
        all_kinds(&mut grpc, &backend.seen).await;
        assert_eq!(backend.seen.calls.load(Ordering::SeqCst), 5);
        assert_eq!(
            backend.seen.conns.load(Ordering::SeqCst),
            1,
            "the calls shared one upstream connection"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_kinds_of_call_pass_over_tls_with_alpn() {
    with_timeout(60, async {
        let (ca, chain, key, server_tls) = pki();
        let backend = grpc_backend(Some(server_tls)).await;
        let upstream = format!(
            "servers = [\"https://{}\"]\nprotocol = \"h2\"\nca_root = \"ca.pem\"",
            backend.addr
        );
        let files = [
            ("ca.pem", ca.as_str()),
            ("site.pem", chain.as_str()),
            ("site.key", key.as_str()),
        ];
        let proxy = TestProxy::start_tls_with_files(&config(true, "", &upstream), &files).await;
        let mut grpc = tls_client(proxy.https());
        all_kinds(&mut grpc, &backend.seen).await;
        assert_eq!(backend.seen.conns.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_chooses_h2_by_alpn_for_a_tls_server() {
    with_timeout(60, async {
        let (ca, chain, key, server_tls) = pki();
        let backend = grpc_backend(Some(server_tls)).await;
        let upstream = format!(
            "servers = [\"https://{}\"]\nprotocol = \"auto\"\nca_root = \"ca.pem\"",
            backend.addr
        );
        let files = [
            ("ca.pem", ca.as_str()),
            ("site.pem", chain.as_str()),
            ("site.key", key.as_str()),
        ];
        let proxy = TestProxy::start_tls_with_files(&config(true, "", &upstream), &files).await;
        let mut grpc = h2c_client(proxy.addr);
        grpc.ready().await.unwrap();
        let resp = grpc
            .unary(Request::new(msg("auto", 1)), path("Unary"), codec())
            .await
            .unwrap();
        assert_eq!(resp.into_inner().text, "echo auto");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    with_timeout(60, async {
        let backend = grpc_backend(None).await;
        let proxy = start_h2c("", &backend, "").await;
        let mut grpc = h2c_client(proxy.addr);
        grpc.ready().await.unwrap();
        let mut stream = grpc
            .server_streaming(
                Request::new(msg("forever", 0)),
                path("ServerStream"),
                codec(),
            )
            .await
            .unwrap()
            .into_inner();
        for _ in 0..2 {
            assert!(stream.message().await.unwrap().is_some());
        }
        assert_eq!(backend.seen.cancelled.load(Ordering::SeqCst), 0);
        drop(stream);
        let seen = backend.seen.clone();
        let noticed = poll_until(Duration::from_secs(10), || {
            let seen = seen.clone();
            async move { seen.cancelled.load(Ordering::SeqCst) == 1 }
        })
        .await;
        assert!(
            noticed.is_some(),
            "the backend's stream was never cancelled"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_ends_a_slow_call_with_deadline_exceeded() {
    with_timeout(60, async {
        let backend = grpc_backend(None).await;
        let proxy = start_h2c("", &backend, "").await;
        let mut grpc = h2c_client(proxy.addr);

        // unary: the answer would take 10 s
        grpc.ready().await.unwrap();
        let mut req = Request::new(msg("slow", 0));
        req.set_timeout(Duration::from_millis(500));
        let started = tokio::time::Instant::now();
        let err = grpc.unary(req, path("Unary"), codec()).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        // a stream without end: cut when the deadline passes, with the status in trailers
        grpc.ready().await.unwrap();
        let mut req = Request::new(msg("s", 0));
        req.set_timeout(Duration::from_millis(700));
        let mut stream = grpc
            .server_streaming(req, path("ServerStream"), codec())
            .await
            .unwrap()
            .into_inner();
        let mut messages = 0;
        let err = loop {
            match stream.message().await {
                Ok(Some(_)) => messages += 1,
                Ok(None) => panic!("the stream ended without a status"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(messages >= 1, "some messages came before the deadline");
        let seen = backend.seen.clone();
        let noticed = poll_until(Duration::from_secs(10), || {
            let seen = seen.clone();
            async move { seen.cancelled.load(Ordering::SeqCst) == 1 }
        })
        .await;
        assert!(noticed.is_some(), "the upstream stream was not reset");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatehouse_refusals_are_grpc_statuses() {
    with_timeout(60, async {
        // a server whose health checks never pass: no healthy server
        let dead = support::closed_port_addr().await;
        let upstream = format!(
            "servers = [\"{dead}\"]\nprotocol = \"h2c\"\nhealth = {{ grpc = \"test.Echo\", interval = \"1s\" }}"
        );
        let proxy = TestProxy::start(&config(false, "", &upstream)).await;
        let mut grpc = h2c_client(proxy.addr);
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(Request::new(msg("x", 0)), path("Unary"), codec())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("no healthy server"), "{err:?}");
        drop(proxy);

        // rate limited: the second call in a minute
        let backend = grpc_backend(None).await;
        let limit = "rate_limit = [{ requests = 1, per = \"1m\" }]";
        let proxy = start_h2c(limit, &backend, "").await;
        let mut grpc = h2c_client(proxy.addr);
        grpc.ready().await.unwrap();
        grpc.unary(Request::new(msg("1", 0)), path("Unary"), codec())
            .await
            .unwrap();
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(Request::new(msg("2", 0)), path("Unary"), codec())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(backend.seen.calls.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_eject_a_server_not_serving_and_restore_it() {
    with_timeout(60, async {
        let backend = grpc_backend(None).await;
        let health = "health = { grpc = \"test.Echo\", interval = \"200ms\", timeout = \"200ms\", healthy = 1, unhealthy = 1 }";
        let proxy = start_h2c("", &backend, health).await;
        let grpc = h2c_client(proxy.addr);
        let code = || {
            let mut grpc = grpc.clone();
            async move {
                grpc.ready().await.unwrap();
                let req = Request::new(msg("h", 0));
                match grpc.unary(req, path("Unary"), codec()).await {
                    Ok(_) => Code::Ok,
                    Err(e) => e.code(),
                }
            }
        };
        let up = poll_until(Duration::from_secs(10), || async { code().await == Code::Ok }).await;
        assert!(up.is_some(), "never served while SERVING");

        backend.seen.serving.store(false, Ordering::SeqCst);
        let out = poll_until(Duration::from_secs(10), || async {
            code().await == Code::Unavailable
        })
        .await;
        assert!(out.is_some(), "not ejected while NOT_SERVING");
        let calls = backend.seen.calls.load(Ordering::SeqCst);
        assert_eq!(code().await, Code::Unavailable);
        assert_eq!(backend.seen.calls.load(Ordering::SeqCst), calls);

        backend.seen.serving.store(true, Ordering::SeqCst);
        let back = poll_until(Duration::from_secs(10), || async { code().await == Code::Ok }).await;
        assert!(back.is_some(), "not restored once SERVING again");
    })
    .await;
}

/// A plain HTTP/2 backend: each answer waits until `hold` requests are in (or 5 s), so they
/// are all in flight together.
async fn holding_backend(hold: usize) -> GrpcBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let handle = move |_req: http::Request<Incoming>, seen: Arc<Seen>| async move {
        seen.calls.fetch_add(1, Ordering::SeqCst);
        for _ in 0..500 {
            if seen.calls.load(Ordering::SeqCst) >= hold {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    };
    let task = serve_h2(listener, None, seen.clone(), handle);
    GrpcBackend {
        addr,
        seen,
        _task: task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_share_h2c_connections_up_to_max_streams() {
    with_timeout(60, async {
        for (max_streams, expected_conns) in [(100, 1), (5, 4)] {
            let backend = holding_backend(20).await;
            let extra = format!("max_streams = {max_streams}");
            let proxy = start_h2c("", &backend, &extra).await;
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let requests = (0..20).map(|i| {
                let (http, url) = (http.clone(), proxy.url(&format!("/r/{i}")));
                async move { http.get(url).send().await.unwrap() }
            });
            for resp in futures_util::future::join_all(requests).await {
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.text().await.unwrap(), "ok");
            }
            let conns = backend.seen.conns.load(Ordering::SeqCst);
            assert_eq!(conns, expected_conns, "max_streams = {max_streams}");
        }
    })
    .await;
}

/// `gatehouse check` on `[upstream.grpc]` with `keys`: its stderr, asserting it is a config error
/// located at the line holding `marker`.
fn refused_at(keys: &str, marker: &str) -> String {
    let config = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"grpc\"\n\n[upstream.grpc]\n{keys}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, &config).unwrap();
    let out = support::run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let line = config.lines().position(|l| l.contains(marker)).unwrap() + 1;
    let location = format!("{}:{line}:", path.display());
    assert!(
        out.stderr.contains(&location),
        "{location} in:\n{}",
        out.stderr
    );
    out.stderr
}

#[test]
fn protocols_that_cannot_work_are_config_errors() {
    let err = refused_at(
        "servers = [\"10.0.0.1:50051\"]\nprotocol = \"h2\"",
        "protocol",
    );
    assert!(err.contains("\"h2c\"") && err.contains("https://"), "{err}");
    let err = refused_at(
        "servers = [\"https://10.0.0.1:50051\"]\nprotocol = \"h2c\"",
        "protocol",
    );
    assert!(err.contains("\"h2\""), "{err}");
    let err = refused_at(
        "servers = [\"10.0.0.1:50051\"]\nprotocol = \"http2\"",
        "protocol",
    );
    for valid in ["\"http1\"", "\"h2\"", "\"h2c\"", "\"auto\""] {
        assert!(err.contains(valid), "{valid} in {err}");
    }
    let err = refused_at(
        "servers = [\"10.0.0.1:50051\"]\nmax_streams = 0",
        "max_streams",
    );
    assert!(err.contains("1 to 10000"), "{err}");
    let err = refused_at(
        "servers = [\"10.0.0.1:50051\"]\nhealth = { grpc = \"my.Service\" }",
        "health",
    );
    assert!(
        err.contains("protocol = \\\"h2c\\\"") || err.contains("h2c"),
        "{err}"
    );
    let err = refused_at(
        "servers = [\"10.0.0.1:50051\"]\nprotocol = \"h2c\"\nhealth = { path = \"/\", grpc = \"a\" }",
        "health",
    );
    assert!(err.contains("not both"), "{err}");
}

/// An h2c backend that answers one request per connection, then says GOAWAY and closes it.
async fn one_request_per_connection() -> (SocketAddr, Arc<Seen>, Arc<AtomicUsize>, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let closed = Arc::new(AtomicUsize::new(0));
    let (seen2, closed2) = (seen.clone(), closed.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            seen2.conns.fetch_add(1, Ordering::SeqCst);
            let closed = closed2.clone();
            tokio::spawn(async move {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let tx = Arc::new(Mutex::new(Some(tx)));
                let svc = hyper::service::service_fn(move |_req| {
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    async { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok")))) }
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = rx => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen, closed, AbortOnDrop(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_backend_closes_with_goaway_are_not_used_again() {
    with_timeout(60, async {
        let (addr, seen, closed, _task) = one_request_per_connection().await;
        let upstream = format!("servers = [\"{addr}\"]\nprotocol = \"h2c\"");
        let proxy = TestProxy::start(&config(false, "", &upstream)).await;
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for i in 1..=5 {
            let resp = http.get(proxy.url(&format!("/{i}"))).send().await.unwrap();
            assert_eq!(resp.status(), 200, "request {i}");
            assert_eq!(resp.text().await.unwrap(), "ok");
            let closed = closed.clone();
            let gone = poll_until(Duration::from_secs(10), || {
                let closed = closed.clone();
                async move { closed.load(Ordering::SeqCst) == i }
            })
            .await;
            assert!(gone.is_some(), "the backend did not close connection {i}");
        }
        assert_eq!(seen.conns.load(Ordering::SeqCst), 5);
    })
    .await;
}
