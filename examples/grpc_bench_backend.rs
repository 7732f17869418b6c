//! A minimal gRPC unary backend for `benches/grpc-vs-nginx.sh`: h2c on the address given (default
//! 127.0.0.1:50051), every call answered as a gRPC server answers a unary call: 200,
//! `content-type: application/grpc`, the request's message echoed in one DATA frame, then the
//! trailers `grpc-status: 0`. No protobuf decoding: the proxies in front are what is measured.
//!
//! `cargo run --release --example grpc_bench_backend -- 127.0.0.1:50051`

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

async fn echo(req: http::Request<Incoming>) -> Result<Response<StreamBody<Frames>>, Infallible> {
    let message = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
    let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("grpc_bench_backend listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(echo);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1000)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
