//! The compressing response body: each frame of the inner body is compressed as it comes, and the
//! encoder is flushed whenever the inner body has nothing ready, so a slow stream (server-sent
//! events, long polling) reaches the client piece by piece. Nothing waits for the whole body.

use crate::config::Coding;
use bytes::buf::Writer;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Levels chosen for a proxy: fast, most of the gain (see docs/config.md's `encode` section for the
/// measurement behind them).
const GZIP_LEVEL: u32 = 4;
const BROTLI_QUALITY: u32 = 5;
const ZSTD_LEVEL: i32 = 3;
/// 512 KiB of history for brotli and zstd (ngx_brotli's default window); their own defaults
/// (4 and 2 MiB and up) would cost that much memory per response being compressed.
const WINDOW_LOG: u32 = 19;
/// Compressed output is sent once this much is waiting, even while the inner body has more.
const EMIT_AT: usize = 16 << 10;

/// A content encoder writing into a buffer that the body hands out frame by frame.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Writer<BytesMut>>),
    Br(Box<brotli::CompressorWriter<Writer<BytesMut>>>),
    Zstd(zstd::stream::write::Encoder<'static, Writer<BytesMut>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.coding().token())
    }
}

impl Encoder {
    pub fn new(coding: Coding) -> io::Result<Encoder> {
        let out = BytesMut::with_capacity(EMIT_AT).writer();
        Ok(match coding {
            Coding::Gzip => {
                let level = flate2::Compression::new(GZIP_LEVEL);
                Encoder::Gzip(flate2::write::GzEncoder::new(out, level))
            }
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                out,
                4096,
                BROTLI_QUALITY,
                WINDOW_LOG,
            ))),
            Coding::Zstd => {
                let mut zstd = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                zstd.window_log(WINDOW_LOG)?;
                Encoder::Zstd(zstd)
            }
        })
    }

    pub fn coding(&self) -> Coding {
        match self {
            Encoder::Gzip(_) => Coding::Gzip,
            Encoder::Br(_) => Coding::Br,
            Encoder::Zstd(_) => Coding::Zstd,
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    /// Pushes out everything written so far as complete, decodable output (a sync flush).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    fn output(&mut self) -> &mut BytesMut {
        match self {
            Encoder::Gzip(e) => e.get_mut().get_mut(),
            Encoder::Br(e) => e.get_mut().get_mut(),
            Encoder::Zstd(e) => e.get_mut().get_mut(),
        }
    }

    /// Ends the stream; what is left to send.
    fn finish(self) -> io::Result<BytesMut> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(out.into_inner())
    }
}

/// `inner`, compressed. Its size is unknown (the head lost its `Content-Length`); trailers pass
/// through after the last compressed bytes.
#[derive(Debug)]
pub struct Compressed<B> {
    inner: B,
    /// `None` once the stream is finished.
    encoder: Option<Encoder>,
    /// Input written since the last flush: a wait on `inner` flushes it first.
    unflushed: bool,
    trailers: Option<HeaderMap>,
}

impl<B> Compressed<B> {
    pub fn new(inner: B, encoder: Encoder) -> Self {
        Compressed {
            inner,
            encoder: Some(encoder),
            unflushed: false,
            trailers: None,
        }
    }

    /// What waits in `encoder`'s buffer, as a frame; `None` if nothing does.
    fn take_output(encoder: &mut Encoder) -> Option<Frame<Bytes>> {
        let out = encoder.output();
        (!out.is_empty()).then(|| Frame::data(out.split().freeze()))
    }
}

impl<B> Body for Compressed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<io::Error>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending if this.unflushed => {
                    this.unflushed = false;
                    encoder.flush()?;
                    // `inner` registered the wake-up: nothing to send is a plain wait
                    return match Self::take_output(encoder) {
                        Some(frame) => Poll::Ready(Some(Ok(frame))),
                        None => Poll::Pending,
                    };
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(polled) => polled,
            };
            if let Some(frame) = polled.transpose()? {
                match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => {
                        encoder.write(&data)?;
                        this.unflushed = true;
                        if encoder.output().len() >= EMIT_AT {
                            return Poll::Ready(Self::take_output(encoder).map(Ok));
                        }
                        continue;
                    }
                    Err(frame) => this.trailers = frame.into_trailers().ok(),
                }
            }
            // the inner body ended (maybe with trailers): finish the stream
            if let Some(encoder) = this.encoder.take() {
                let rest = encoder.finish()?;
                if !rest.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(rest.freeze()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body that plays out its steps; `Wait` is one `Pending` (with a wake-up).
    enum Step {
        Data(&'static [u8]),
        Owned(Vec<u8>),
        Wait,
        Trailers,
    }

    struct Script(VecDeque<Step>);

    impl Body for Script {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            let frame = match self.0.pop_front() {
                None => return Poll::Ready(None),
                Some(Step::Wait) => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(Step::Data(d)) => Frame::data(Bytes::from_static(d)),
                Some(Step::Owned(d)) => Frame::data(Bytes::from(d)),
                Some(Step::Trailers) => {
                    let mut t = HeaderMap::new();
                    t.insert("x-checksum", http::HeaderValue::from_static("abc"));
                    Frame::trailers(t)
                }
            };
            Poll::Ready(Some(Ok(frame)))
        }
    }

    fn compressed(coding: Coding, steps: Vec<Step>) -> Compressed<Script> {
        Compressed::new(Script(steps.into()), Encoder::new(coding).unwrap())
    }

    fn poll(body: &mut Compressed<Script>) -> Poll<Option<Frame<Bytes>>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        Pin::new(body)
            .poll_frame(&mut cx)
            .map(|f| f.map(|f| f.unwrap()))
    }

    /// Every frame until the end, `Pending` skipped.
    fn drain(body: &mut Compressed<Script>) -> Vec<Frame<Bytes>> {
        let mut frames = Vec::new();
        loop {
            match poll(body) {
                Poll::Ready(Some(frame)) => frames.push(frame),
                Poll::Ready(None) => return frames,
                Poll::Pending => {}
            }
        }
    }

    /// An incremental decoder: what the bytes fed so far decode to.
    enum Decoder {
        Gzip(flate2::write::GzDecoder<Vec<u8>>),
        Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
        Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
    }

    impl Decoder {
        fn new(coding: Coding) -> Decoder {
            match coding {
                Coding::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
                Coding::Br => {
                    Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
                }
                Coding::Zstd => {
                    Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap())
                }
            }
        }

        fn feed(&mut self, bytes: &[u8]) -> &[u8] {
            match self {
                Decoder::Gzip(d) => {
                    d.write_all(bytes).unwrap();
                    d.flush().unwrap();
                    d.get_ref()
                }
                Decoder::Br(d) => {
                    d.write_all(bytes).unwrap();
                    d.flush().unwrap();
                    d.get_ref()
                }
                Decoder::Zstd(d) => {
                    d.write_all(bytes).unwrap();
                    d.flush().unwrap();
                    d.get_ref()
                }
            }
        }
    }

    #[test]
    fn round_trip_with_trailers_last() {
        for coding in Coding::ALL {
            let steps = vec![
                Step::Data(b"{\"a\": 1, "),
                Step::Wait,
                Step::Data(b""),
                Step::Data(b"\"b\": [1, 2, 3], "),
                Step::Data(b"\"c\": \"text text text text\"}"),
                Step::Trailers,
            ];
            let mut body = compressed(coding, steps);
            let frames = drain(&mut body);
            assert!(body.is_end_stream());
            let (last, data) = frames.split_last().unwrap();
            assert_eq!(last.trailers_ref().unwrap()["x-checksum"], "abc");
            let mut decoder = Decoder::new(coding);
            for frame in data {
                decoder.feed(frame.data_ref().unwrap());
            }
            let expected = b"{\"a\": 1, \"b\": [1, 2, 3], \"c\": \"text text text text\"}";
            assert_eq!(decoder.feed(b""), expected, "{coding:?}");
        }
    }

    #[test]
    fn a_wait_flushes_what_came_before_it() {
        for coding in Coding::ALL {
            let steps = vec![
                Step::Data(b"data: first event\n\n"),
                Step::Wait,
                Step::Data(b"data: second event\n\n"),
            ];
            let mut body = compressed(coding, steps);
            let Poll::Ready(Some(first)) = poll(&mut body) else {
                panic!("{coding:?}: nothing sent while the inner body waits");
            };
            let mut decoder = Decoder::new(coding);
            let seen = decoder.feed(first.data_ref().unwrap());
            assert_eq!(seen, b"data: first event\n\n", "{coding:?}");
            let rest = drain(&mut body);
            for frame in &rest {
                decoder.feed(frame.data_ref().unwrap());
            }
            assert_eq!(
                decoder.feed(b""),
                b"data: first event\n\ndata: second event\n\n",
                "{coding:?}"
            );
        }
    }

    #[test]
    fn a_fast_body_is_sent_as_it_is_compressed() {
        // 4 MiB that does not compress, all ready at once: output leaves in pieces long before
        // the input ends (brotli holds up to a 1 MiB meta-block, twice its window)
        let mut rng = fastrand::Rng::with_seed(7);
        for coding in Coding::ALL {
            let steps: Vec<Step> = (0..512)
                .map(|_| {
                    let mut chunk = vec![0u8; 8 << 10];
                    rng.fill(&mut chunk);
                    Step::Owned(chunk)
                })
                .collect();
            let mut body = compressed(coding, steps);
            let Poll::Ready(Some(first)) = poll(&mut body) else {
                panic!("{coding:?}: no first frame");
            };
            assert!(first.data_ref().unwrap().len() >= EMIT_AT);
            let left = body.inner.0.len();
            assert!(
                left > 256,
                "{coding:?}: {left} of 512 chunks left after the first frame"
            );
        }
    }
}
