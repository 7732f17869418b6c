//! An IO wrapper that tells someone whenever bytes are read, writes passing through untouched:
//! the admin listener's deadlines and a tunnel's idle clock are both kept this way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Told each time a read delivered bytes.
pub trait OnRead {
    fn on_read(&self);
}

/// `inner`, calling `notice.on_read()` after every read that delivered bytes.
pub struct Noticed<T, N> {
    inner: T,
    notice: N,
}

impl<T, N> Noticed<T, N> {
    pub fn new(inner: T, notice: N) -> Noticed<T, N> {
        Noticed { inner, notice }
    }
}

impl<T: AsyncRead + Unpin, N: OnRead + Unpin> AsyncRead for Noticed<T, N> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.notice.on_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin, N: Unpin> AsyncWrite for Noticed<T, N> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
