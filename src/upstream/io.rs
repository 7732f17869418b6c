//! The one byte stream type every upstream connection is made of (TCP, TLS over TCP, or a Unix
//! socket), so hyper's client is compiled once for it. With a type per kind, hyper's generic
//! connection code exists twice and the parts shared by both copies (parsing the response head,
//! encoding the request) lose the inlining a single caller gets: measured at ~200 instructions
//! more per request on TCP upstreams when Unix sockets came in as a second type.

use super::tls::UpstreamStream;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::UnixStream;

// sized for the TLS stream either way: a Unix socket connection wasting its difference costs
// less than a box (and its pointer chase on every read and write) for every TCP one
#[allow(clippy::large_enum_variant)]
pub enum UpstreamIo {
    /// TCP, or TLS over it.
    Tcp(UpstreamStream),
    Unix(TokioIo<UnixStream>),
}

impl Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Unix(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Unix(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamIo::Unix(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(io) => io.is_write_vectored(),
            UpstreamIo::Unix(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Unix(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Unix(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
