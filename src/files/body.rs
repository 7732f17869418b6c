//! A file's bytes as a response body, read in chunks of at most `CHUNK` on tokio's blocking pool
//! so that no runtime thread waits on the disk. The first chunk is read with the lookup (one
//! trip to the pool for a file that fits it); after that, the next chunk is read while hyper
//! writes the last one out, so a response holds at most two chunks at a time, whatever the
//! file's size.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::task::JoinHandle;

/// What one read takes off the file: as much as hyper writes in one go, and few trips to the
/// blocking pool for a large file.
pub const CHUNK: usize = 64 << 10;

/// The body of a `files` answer: empty (`HEAD`, `304`, `416`, ...) or bytes of one file.
#[derive(Debug, Default)]
pub struct FileBody {
    /// Boxed: the empty body stays one pointer wide.
    stream: Option<Box<Stream>>,
}

#[derive(Debug)]
struct Stream {
    file: Arc<File>,
    /// Read, waiting to be handed over.
    ready: Option<Bytes>,
    /// The read in progress (one at a time: the reads follow the file's own position).
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    /// What is left to read from the file's position.
    unread: u64,
    /// Bytes not handed over yet (ready, being read or unread).
    left: u64,
}

impl FileBody {
    pub fn empty() -> FileBody {
        FileBody::default()
    }

    /// `len` bytes of `file`, of which `first` were read already; the rest follows from the
    /// file's position.
    pub fn stream(file: File, len: u64, first: Bytes) -> FileBody {
        let read = first.len() as u64;
        FileBody {
            stream: Some(Box::new(Stream {
                file: Arc::new(file),
                ready: Some(first).filter(|b| !b.is_empty()),
                reading: None,
                unread: len.saturating_sub(read),
                left: len,
            })),
        }
    }
}

impl Stream {
    /// Starts reading the next chunk unless one is being read or nothing is left.
    fn read_next(&mut self) -> io::Result<()> {
        if self.reading.is_some() || self.unread == 0 {
            return Ok(());
        }
        let len = self.unread.min(CHUNK as u64) as usize;
        let file = self.file.clone();
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        self.reading = Some(runtime.spawn_blocking(move || read(&file, len)));
        self.unread -= len as u64;
        Ok(())
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        loop {
            if let Some(chunk) = self.ready.take() {
                self.left = self.left.saturating_sub(chunk.len() as u64);
                // read ahead while this chunk is written out
                if let Err(e) = self.read_next() {
                    return self.fail(e);
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if let Some(reading) = &mut self.reading {
                let read = std::task::ready!(Pin::new(reading).poll(cx));
                self.reading = None;
                match read {
                    Ok(Ok(chunk)) => self.ready = Some(chunk),
                    Ok(Err(e)) => return self.fail(e),
                    Err(e) => return self.fail(io::Error::other(e)),
                }
                continue;
            }
            if self.unread == 0 {
                return Poll::Ready(None);
            }
            if let Err(e) = self.read_next() {
                return self.fail(e);
            }
        }
    }

    /// The body ends with `e` (the client's connection is cut: the head promised more).
    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.unread = 0;
        self.left = 0;
        Poll::Ready(Some(Err(e)))
    }
}

/// The next `len` bytes of `file`, all of them: a file that got shorter since it was looked up
/// is an error, not a short body under a `Content-Length` that promised more. Read into memory
/// that is not zeroed first (`read_to_end` on a `Vec` with room for exactly `len`).
pub fn read(mut file: &File, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    Read::by_ref(&mut file)
        .take(len as u64)
        .read_to_end(&mut buf)?;
    if buf.len() < len {
        let msg = "the file got shorter while it was being sent";
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
    }
    Ok(Bytes::from(buf))
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match &mut self.stream {
            Some(stream) => stream.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.as_ref().is_none_or(|s| s.left == 0)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.stream.as_ref().map_or(0, |s| s.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn sample(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        (file, bytes)
    }

    async fn collect(body: FileBody) -> io::Result<Vec<u8>> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn streams_a_range_in_bounded_chunks() {
        let (tmp, bytes) = sample(3 * CHUNK + 100);
        let (offset, len) = (10u64, 2 * CHUNK as u64 + 50);
        let mut file = tmp.reopen().unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).unwrap();
        let first = read(&file, CHUNK).unwrap();
        let mut body = FileBody::stream(file, len, first);
        assert_eq!(body.size_hint().exact(), Some(len));
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK);
            got.extend_from_slice(&data);
        }
        assert!(body.is_end_stream());
        assert_eq!(got, &bytes[10..10 + len as usize]);
    }

    #[tokio::test]
    async fn a_file_cut_short_is_an_error() {
        let (tmp, _) = sample(CHUNK + 10);
        let file = tmp.reopen().unwrap();
        let first = read(&file, CHUNK).unwrap();
        tmp.as_file().set_len(CHUNK as u64).unwrap();
        let body = FileBody::stream(file, CHUNK as u64 + 10, first);
        let err = collect(body).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn empty() {
        let body = FileBody::empty();
        assert!(body.is_end_stream());
        assert_eq!(collect(body).await.unwrap(), b"");
    }
}
