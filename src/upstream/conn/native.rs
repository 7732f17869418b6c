//! Gatehouse's own HTTP/1.1 client for an upstream connection (`[server] http1_engine =
//! "native"`, issue 23): the request's task drives the connection it checked out, with no task
//! of the connection's own, no channel and no oneshot in between.
//!
//! It owns one exchange on a [`Conn`]: the request head written from the service's
//! `http::request::Parts` with framing of our own (`Content-Length` from an exact size, else
//! `Transfer-Encoding: chunked`, nothing for a body known empty: what hyper's client sends), the
//! body streamed while the response head is read at the same time (an upstream may answer before
//! it has read the upload: the rest is then not sent and the connection not reused), the head
//! parsed by `h1::response` (interim `1xx` passed over) and the body read by its framing
//! ([`Body`], `h1::chunked` for chunked ones). A body that ends cleanly on a connection its head
//! lets live hands the connection back (`Body::take_reusable`) for the backend's idle stack; a
//! `101` hands it over to the tunnel with the bytes already read past the head.

use super::super::forward::{Added, ConnectionSays};
use super::super::io::UpstreamIo;
use crate::h1::chunked::{self, Decoder};
use crate::h1::response::{Answer, Asked, ResponseError, ResponseHead};
use crate::h1::{self, Body as Framing};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::noop_waker_ref;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

/// The connection's byte stream, as tokio reads and writes it.
pub type Io = TokioIo<UpstreamIo>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's client limits, which the proxy has run with: 100 fields, a head within its read
/// buffer (8 KiB + 100 x 4 KiB).
const LIMITS: h1::Limits = h1::Limits {
    max_head: 8192 + 4096 * 100,
    max_fields: 100,
    max_target: usize::MAX,
};

/// How much room a read asks for: a typical response head and a good part of its body at once.
const READ_ROOM: usize = 16 * 1024;

/// The largest read of a response body (see `Body::room`).
const BODY_ROOM_MAX: usize = 256 * 1024;

/// The most of a body's first frame copied into the head's write when it is already there.
const WITH_HEAD: usize = 16 * 1024;

/// An open upstream connection between exchanges: nothing but its stream (no buffer is kept),
/// boxed: a TLS stream is over a kilobyte, and the connection moves from the idle stack to the
/// request's future, into its response body and back.
pub struct Conn {
    io: Box<Io>,
}

impl Conn {
    pub fn new(io: UpstreamIo) -> Conn {
        Conn {
            io: Box::new(TokioIo::new(io)),
        }
    }

    /// Whether the connection can take a request: nothing to read on it (not closed by the
    /// upstream, no stray bytes). A readiness check, not a system call, when nothing came.
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut *self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}

/// Why an exchange failed, and whether the request may go again on another connection.
#[derive(Debug)]
pub struct Failed {
    pub error: Failure,
    /// Nothing was read from the upstream and the body was never polled: on a connection taken
    /// from the idle ones, the upstream closed it as we wrote (a stale keep-alive).
    pub unsent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before a response")]
    Closed,
    #[error(transparent)]
    Malformed(#[from] ResponseError),
    #[error("upstream response head: {0}")]
    FieldName(#[from] http::header::InvalidHeaderName),
    #[error("upstream response head: {0}")]
    FieldValue(#[from] http::header::InvalidHeaderValue),
    #[error("request body: {0}")]
    Body(BoxError),
    /// The body's frames added up to more (`true`) or less than the `Content-Length` sent.
    #[error("request body {} than its Content-Length", if *.0 { "longer" } else { "shorter" })]
    BodyLength(bool),
}

impl Failure {
    /// The upstream's answer cannot be trusted (a `502` saying so), rather than missing.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Failure::Malformed(_) | Failure::FieldName(_) | Failure::FieldValue(_)
        )
    }
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Nothing is sent (known empty, or dropped as hyper drops an unsized `GET` body).
    Nothing,
    Length(u64),
    Chunked,
}

/// Writes the request head: request line, the headers as the service left them (its framing
/// header, if it kept one, included), Gatehouse's own not in the map (`added`), then the
/// framing the body needs if none was given. Returns that framing, and whether the request
/// carries `Upgrade`.
fn write_head(head: Head<'_>, empty: bool, hint: &SizeHint, out: &mut BytesMut) -> (Out, bool) {
    let (parts, added) = head;
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    match (&parts.method, parts.uri.authority()) {
        (&Method::CONNECT, Some(authority)) => out.extend_from_slice(authority.as_str().as_bytes()),
        _ => out.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // the framing fields noted as they go by: no hashed lookups in the map afterwards
    let mut seen = Seen::default();
    for (name, value) in &parts.headers {
        seen.note(name, value);
        h1::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in added.fields() {
        h1::put_field(out, name.as_str().as_bytes(), value);
    }
    let framing = framing(&seen, &parts.method, empty, hint);
    match framing {
        Out::Length(n) if seen.length.is_none() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked if !seen.transfer_encoding => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    (framing, seen.upgrade)
}

/// The request's head: its parts and Gatehouse's own headers not in their map.
type Head<'a> = (&'a Parts, &'a Added);

/// The fields of a request's map that bear on its framing, as `write_head` passes them.
#[derive(Default)]
struct Seen<'a> {
    /// The first `Content-Length`.
    length: Option<&'a HeaderValue>,
    transfer_encoding: bool,
    upgrade: bool,
}

impl<'a> Seen<'a> {
    fn note(&mut self, name: &HeaderName, value: &'a HeaderValue) {
        // standard names: each comparison is of two small integers
        if *name == header::CONTENT_LENGTH {
            self.length.get_or_insert(value);
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::UPGRADE {
            self.upgrade = true;
        }
    }
}

/// hyper's client rules: a framing header already there is respected; a body known empty gets
/// none; an exact size its length; else chunked, but for `GET`, `HEAD` and `CONNECT`, whose
/// unsized body is not sent.
fn framing(seen: &Seen<'_>, method: &Method, empty: bool, hint: &SizeHint) -> Out {
    if seen.transfer_encoding {
        return Out::Chunked;
    }
    if let Some(n) = seen
        .length
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
    {
        return Out::Length(n);
    }
    if empty {
        return Out::Nothing;
    }
    match hint.exact() {
        Some(n) => Out::Length(n),
        None if matches!(method, &Method::GET | &Method::HEAD | &Method::CONNECT) => Out::Nothing,
        None => Out::Chunked,
    }
}

/// The bytes still to write, in order: the request head (at the start of the exchange's read
/// buffer, which holds nothing else until the head is out: one allocation for both), a chunk's
/// size line, its data, then the CRLF after it and, once the body has ended, the last chunk.
#[derive(Default)]
struct Pending {
    /// The head is `read[head_at..head]`.
    head: usize,
    head_at: usize,
    line: [u8; 18],
    line_at: u8,
    line_end: u8,
    data: Bytes,
    tail: &'static [u8],
}

/// A chunk's data is followed by CRLF; the body's end by the last chunk (no trailers).
const CHUNK_END: &[u8] = b"\r\n0\r\n\r\n";

impl Pending {
    /// `len` as a chunk-size line: hex digits, CRLF.
    fn size_line(&mut self, len: usize) {
        let mut digits = [0u8; 16];
        let (mut n, mut i) = (len, digits.len());
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[n & 15];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        let k = digits.len() - i;
        self.line[..k].copy_from_slice(&digits[i..]);
        self.line[k..k + 2].copy_from_slice(b"\r\n");
        self.line_at = 0;
        self.line_end = (k + 2) as u8;
    }
}

/// One write of some of `buf`; none at all is an error (the peer takes no more).
fn write_some(io: &mut Io, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    let n = ready!(Pin::new(io).poll_write(cx, buf))?;
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    Poll::Ready(Ok(n))
}

/// One exchange in progress: the request going out, the response head coming in.
struct Exchange<'b, B> {
    io: Box<Io>,
    read: BytesMut,
    out: Pending,
    body: &'b mut B,
    framing: Out,
    /// Of a `Content-Length` body, what is left to send.
    left: u64,
    body_done: bool,
    /// The whole request is written and flushed.
    sent: bool,
    body_polled: bool,
    bytes_seen: bool,
    write_failed: Option<io::Error>,
    head: ResponseHead,
    asked: Asked,
}

impl<B> Exchange<'_, B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes what is pending, then the body's next frames, until all is sent or it must wait.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        if self.out.head_at == 0 && self.out.head > 0 && !self.body_done && !self.body_polled {
            self.body_with_head(cx)?;
        }
        loop {
            let out = &mut self.out;
            while out.head_at < out.head {
                let head = &self.read[out.head_at..out.head];
                out.head_at += ready!(write_some(&mut self.io, cx, head))?;
            }
            if out.head > 0 {
                // the buffer is the response's from here
                self.read.clear();
                out.head = 0;
            }
            while out.line_at < out.line_end {
                let line = &out.line[out.line_at as usize..out.line_end as usize];
                out.line_at += ready!(write_some(&mut self.io, cx, line))? as u8;
            }
            while !out.data.is_empty() {
                let n = ready!(write_some(&mut self.io, cx, &out.data))?;
                out.data.advance(n);
            }
            while !out.tail.is_empty() {
                let n = ready!(write_some(&mut self.io, cx, out.tail))?;
                out.tail = &out.tail[n.min(out.tail.len())..];
            }
            // a no-op on TCP; TLS writes out what its record layer holds before we wait
            ready!(Pin::new(&mut *self.io).poll_flush(cx))?;
            if self.body_done {
                return Poll::Ready(Ok(()));
            }
            self.body_polled = true;
            match ready!(Pin::new(&mut *self.body).poll_frame(cx)) {
                None => self.finish()?,
                Some(Err(e)) => return Poll::Ready(Err(Failure::Body(e.into()))),
                Some(Ok(frame)) => {
                    // request trailers are not forwarded (nor were they by hyper's client)
                    if let Ok(data) = frame.into_data() {
                        self.queue(data)?;
                    }
                    if !self.body_done && self.body.is_end_stream() {
                        self.finish()?;
                    }
                }
            }
        }
    }

    /// A short first frame already there goes out in the head's write: one system call, and an
    /// upstream that reads the head finds the body with it (hyper's server, answering before it
    /// reads a body, keeps the connection only if the body is already in). What is not there
    /// yet is sent after the head, as it comes.
    fn body_with_head(&mut self, cx: &mut Context<'_>) -> Result<(), Failure> {
        let Poll::Ready(frame) = Pin::new(&mut *self.body).poll_frame(cx) else {
            return Ok(());
        };
        self.body_polled = true;
        match frame {
            None => self.finish()?,
            Some(Err(e)) => return Err(Failure::Body(e.into())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let short = data.len() <= WITH_HEAD;
                    self.queue(data)?;
                    if !short {
                        return Ok(());
                    }
                }
                if self.body.is_end_stream() {
                    self.finish()?;
                }
            }
        }
        // what `queue` and `finish` left to write, moved behind the head
        let out = &mut self.out;
        let read = &mut self.read;
        read.extend_from_slice(&out.line[out.line_at as usize..out.line_end as usize]);
        out.line_at = out.line_end;
        read.extend_from_slice(&std::mem::take(&mut out.data));
        read.extend_from_slice(std::mem::take(&mut out.tail));
        out.head = read.len();
        Ok(())
    }

    fn queue(&mut self, data: Bytes) -> Result<(), Failure> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Out::Length(_) => {
                let len = data.len() as u64;
                if len > self.left {
                    return Err(Failure::BodyLength(true));
                }
                self.left -= len;
                self.out.data = data;
            }
            Out::Chunked => {
                self.out.size_line(data.len());
                self.out.data = data;
                self.out.tail = &CHUNK_END[..2];
            }
            Out::Nothing => {}
        }
        Ok(())
    }

    /// The body has ended: the last chunk after what is still pending, or a check that the
    /// length was met.
    fn finish(&mut self) -> Result<(), Failure> {
        self.body_done = true;
        match self.framing {
            // after a chunk's CRLF still to write, or alone
            Out::Chunked if self.out.tail.is_empty() => self.out.tail = &CHUNK_END[2..],
            Out::Chunked => self.out.tail = CHUNK_END,
            Out::Length(_) if self.left > 0 => return Err(Failure::BodyLength(false)),
            _ => {}
        }
        Ok(())
    }

    /// Reads until a final (or switching) head is complete; interim ones are passed over.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        if self.out.head > 0 {
            // the head is still going out of this buffer (its write will wake us)
            return Poll::Pending;
        }
        loop {
            if !self.read.is_empty() && self.head.parse(&self.read, self.asked, &LIMITS)? {
                if self.head.answer != Answer::Interim {
                    return Poll::Ready(Ok(()));
                }
                self.read.advance(self.head.len);
                continue;
            }
            if self.read.capacity() - self.read.len() < READ_ROOM / 4 {
                self.read.reserve(READ_ROOM);
            }
            let n = ready!(poll_read_buf(Pin::new(&mut *self.io), cx, &mut self.read))?;
            if n == 0 {
                return Poll::Ready(Err(match self.write_failed.take() {
                    Some(e) => Failure::Io(e),
                    None => Failure::Closed,
                }));
            }
            self.bytes_seen = true;
        }
    }

    /// Both at once: the upload goes on until it is done or the head is there.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        if !self.sent && self.write_failed.is_none() {
            match self.poll_send(cx) {
                Poll::Ready(Ok(())) => self.sent = true,
                Poll::Ready(Err(Failure::Io(e))) => {
                    // the upstream may have answered and closed: its answer is still read
                    self.write_failed = Some(e);
                    if self.out.head > 0 {
                        self.read.clear();
                        self.out.head = 0;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        self.poll_head(cx)
    }
}

/// Sends the request (`parts` with Gatehouse's own headers `added`, `body`) on `conn` and reads
/// its response head. On failure `body` is untouched if `Failed::unsent` says so, and may go
/// on another connection.
pub async fn send<B>(conn: Conn, head: Head<'_>, body: &mut B) -> Result<Response<Body>, Failed>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut read = spare::take();
    let empty = body.is_end_stream();
    let (framing, upgrade) = write_head(head, empty, &body.size_hint(), &mut read);
    let method = &head.0.method;
    let mut ex = Exchange {
        io: conn.io,
        out: Pending {
            head: read.len(),
            ..Pending::default()
        },
        read,
        framing,
        left: match framing {
            Out::Length(n) => n,
            _ => 0,
        },
        // a body known empty is never polled: a request that failed can go again untouched
        body_done: empty || matches!(framing, Out::Nothing | Out::Length(0)),
        body,
        sent: false,
        body_polled: false,
        bytes_seen: false,
        write_failed: None,
        head: ResponseHead {
            fields: spare::fields(),
            ..ResponseHead::default()
        },
        asked: Asked {
            head: method == Method::HEAD,
            connect: method == Method::CONNECT,
            upgrade,
        },
    };
    if empty && framing == Out::Chunked {
        ex.out.tail = &CHUNK_END[2..];
    }
    if let Err(error) = poll_fn(|cx| ex.poll(cx)).await {
        let unsent =
            !ex.bytes_seen && !ex.body_polled && matches!(error, Failure::Io(_) | Failure::Closed);
        return Err(Failed { error, unsent });
    }
    let mut read = ex.read;
    let head = read.split_to(ex.head.len).freeze();
    let (resp, stripped) = response(&ex.head, &head).map_err(|error| Failed {
        error,
        unsent: false,
    })?;
    let framing = match ex.head.body {
        Framing::None => Reading::Done,
        Framing::Length(0) => Reading::Done,
        Framing::Length(n) => Reading::Length(n),
        Framing::Chunked => Reading::Chunked(Box::new((
            Decoder::new(chunked::Limits::default()),
            BytesMut::new(),
        ))),
        Framing::UntilClose => Reading::UntilClose,
    };
    let body = Body {
        io: Some(ex.io),
        read,
        framing,
        // an upload cut short by an early answer leaves the connection mid-request
        reusable: ex.head.reusable && ex.sent,
        switched: ex.head.answer == Answer::Switch,
        fault: None,
        room: READ_ROOM,
        stripped,
    };
    spare::give_fields(ex.head.fields);
    Ok(resp.map(|()| body))
}

/// The head as the service reads it: a `HeaderMap` (for now) whose values share the head's
/// bytes (no copy each), the reason phrase kept when it is not the status's usual one (hyper's
/// server writes it so). The hop-by-hop fields are left out when all they say is in the
/// returned `ConnectionSays` (see `connection_says`), so the service need not look for them in
/// the map again; with `None` they are all there, for `forward::strip_hop_by_hop`.
fn response(
    head: &ResponseHead,
    buf: &Bytes,
) -> Result<(Response<()>, Option<ConnectionSays>), Failure> {
    let says = connection_says(head);
    let mut headers = crate::h1::maps::take(head.fields.len());
    for field in &head.fields {
        if says.is_some() && is_hop_by_hop(field, buf) {
            continue;
        }
        let name = match field.kind.header_name() {
            Some(name) => name,
            None => crate::h1::names::name(field.name.of(buf))?,
        };
        let value = buf.slice_ref(field.value.of(buf));
        let value = HeaderValue::from_maybe_shared(value)?;
        headers.append(name, value);
    }
    // 100-999, as the codec checked
    let status = StatusCode::from_u16(head.status).map_err(|_| ResponseError::Status)?;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = match head.minor_version {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    *resp.headers_mut() = headers;
    let reason = head.reason.of(buf);
    if !reason.is_empty() && status.canonical_reason().map(str::as_bytes) != Some(reason) {
        if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason.to_vec()) {
            resp.extensions_mut().insert(reason);
        }
    }
    Ok((resp, says))
}

/// What `forward::strip_hop_by_hop` would find in the head's hop-by-hop fields, as the codec
/// read them; `None` when `Connection` names a field to remove besides the fixed set (or holds
/// bytes that name none), which only the map's own pass handles. The two are compared head by
/// head in the tests.
fn connection_says(head: &ResponseHead) -> Option<ConnectionSays> {
    let said = head.connection;
    // (`upgrade` names one of the fixed set)
    if said.other {
        return None;
    }
    Some(ConnectionSays {
        close: said.close,
        keep_alive: said.keep_alive,
        transfer_encoding: head.transfer_encoding,
        // the codec refuses any coding but a lone `chunked`
        only_chunked: head.transfer_encoding,
    })
}

/// One of `forward`'s fixed hop-by-hop fields; the codec has named three of them already.
fn is_hop_by_hop(field: &h1::Field, buf: &[u8]) -> bool {
    use h1::Kind;
    match field.kind {
        Kind::Connection | Kind::TransferEncoding | Kind::Upgrade => true,
        Kind::Other => {
            let name = field.name.of(buf);
            // by length first, as `h1::Kind` does: most names are compared with nothing
            let hop: &[u8] = match name.len() {
                2 => b"te",
                7 => b"trailer",
                10 => b"keep-alive",
                16 => b"proxy-connection",
                18 => b"proxy-authenticate",
                _ => return false,
            };
            hop.eq_ignore_ascii_case(name)
        }
        _ => false,
    }
}

/// Where a response body is in its framing.
#[derive(Debug)]
enum Reading {
    Length(u64),
    /// With the trailer section's bytes so far (forwarded as a trailers frame, as hyper's client
    /// does). Boxed: it would make every response body (`conn::RespBody`, either engine's) twice
    /// the size, and the proxy's futures that carry one with it.
    Chunked(Box<(Decoder, BytesMut)>),
    UntilClose,
    Done,
}

/// A response body read off its connection by its framing.
pub struct Body {
    /// `None` once the connection is handed back or over, or failed.
    io: Option<Box<Io>>,
    /// Bytes read past what was handed out.
    read: BytesMut,
    framing: Reading,
    /// Whether the connection may carry another request once the body has ended.
    reusable: bool,
    /// A `101` (or `2xx` to `CONNECT`): the connection is the tunnel's.
    switched: bool,
    /// A fault found, reported at the next poll: what came before it is handed out and written
    /// first (hyper's server drops what it has buffered when a body fails).
    fault: Option<io::Error>,
    /// How much the next read makes room for: `READ_ROOM`, doubled up to `BODY_ROOM_MAX` while
    /// reads fill it.
    room: usize,
    /// What the head's hop-by-hop fields said, when they were left out of its map (`response`).
    stripped: Option<ConnectionSays>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "native::Body({:?})", self.framing)
    }
}

/// An exchange's read buffer goes back to the thread's spares with the response body (an
/// idle connection holds none).
impl Drop for Body {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.read));
    }
}

impl Body {
    /// What the head's hop-by-hop fields said, if they were left out of its map.
    pub fn stripped(&self) -> Option<ConnectionSays> {
        self.stripped
    }

    /// The connection, if the body has ended cleanly, its head let it live and nothing came
    /// after it.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        let clean = matches!(self.framing, Reading::Done) && self.reusable && self.read.is_empty();
        let io = self.io.take().filter(|_| clean)?;
        Some(Conn { io })
    }

    /// After a `101`: the connection and what was read past the head.
    pub fn take_upgraded(&mut self) -> Option<(Bytes, Box<Io>)> {
        if !self.switched {
            return None;
        }
        let io = self.io.take()?;
        Some((std::mem::take(&mut self.read).freeze(), io))
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.io = None;
        self.framing = Reading::Done;
        self.reusable = false;
        Poll::Ready(Some(Err(error)))
    }

    /// More bytes from the connection: `Ok(false)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        if self.read.capacity() - self.read.len() < self.room / 4 {
            self.read.reserve(self.room);
        }
        let space = self.read.capacity() - self.read.len();
        let n = ready!(poll_read_buf(Pin::new(&mut **io), cx, &mut self.read))?;
        // a read that filled the room asks for a bigger one next (a large body then comes in
        // fewer, larger reads and frames, as with hyper's adaptive reads)
        if n == space && self.room < BODY_ROOM_MAX {
            self.room *= 2;
        }
        Poll::Ready(Ok(n > 0))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, io::Error>> {
        loop {
            match &mut self.framing {
                Reading::Done => return Poll::Ready(Ok(None)),
                Reading::Length(left) if !self.read.is_empty() => {
                    let take = (*left).min(self.read.len() as u64);
                    *left -= take;
                    if *left == 0 {
                        self.framing = Reading::Done;
                    }
                    let data = self.read.split_to(take as usize).freeze();
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                Reading::UntilClose if !self.read.is_empty() => {
                    return Poll::Ready(Ok(Some(Frame::data(self.read.split().freeze()))));
                }
                Reading::Chunked(state) if !self.read.is_empty() => {
                    let (decoder, trailers) = &mut **state;
                    let before = decoder.trailer_len();
                    let step = decoder.decode(&self.read).map_err(invalid)?;
                    let added = decoder.trailer_len() - before;
                    let taken = self.read.split_to(step.consumed);
                    trailers.extend_from_slice(&taken[taken.len().saturating_sub(added)..]);
                    if decoder.is_done() {
                        let fields = parse_trailers(trailers);
                        self.framing = Reading::Done;
                        if let Some(fields) = fields {
                            return Poll::Ready(Ok(Some(Frame::trailers(fields))));
                        }
                    }
                    if !step.data.is_empty() {
                        let data = taken.freeze().slice(step.data);
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
                _ => {
                    if !ready!(self.poll_fill(cx))? {
                        if matches!(self.framing, Reading::UntilClose) {
                            self.framing = Reading::Done;
                            self.io = None;
                            return Poll::Ready(Ok(None));
                        }
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
    }
}

/// A trailer section (the chunked decoder has checked its syntax) as fields; `None` when it is
/// empty or, which the decoder makes impossible, unreadable.
fn parse_trailers(section: &[u8]) -> Option<HeaderMap> {
    if section.len() <= 2 {
        return None;
    }
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let httparse::Status::Complete((_, parsed)) =
        httparse::parse_headers(section, &mut slots).ok()?
    else {
        return None;
    };
    let mut fields = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        fields.append(name, HeaderValue::from_bytes(field.value).ok()?);
    }
    Some(fields)
}

fn invalid(e: chunked::ChunkError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(fault) = self.fault.take() {
            return self.fail(fault);
        }
        match self.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(frame)) => Poll::Ready(frame.map(Ok)),
            Poll::Ready(Err(e)) => {
                self.io = None;
                self.fault = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Reading::Done) && self.fault.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Reading::Done => SizeHint::with_exact(0),
            Reading::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Read buffers of ended exchanges, a few per thread, for the next exchanges: one is taken
/// back once nothing shares its bytes any more (the last answer written and dropped), so a
/// steady stream of requests allocates no read buffer. A buffer still shared is left to its
/// last user and a new one made.
mod spare {
    use super::READ_ROOM;
    use crate::h1::Field;
    use bytes::BytesMut;
    use std::cell::{Cell, RefCell};

    /// At most this many kept per thread (`READ_ROOM` each).
    const KEEP: usize = 4;
    /// A field index grown past this many fields is not kept.
    const FIELDS_KEPT: usize = 128;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        /// One response head's field index: an exchange takes it and gives it back once the
        /// head is read into the response, so indexing a head allocates only on a thread's
        /// first exchange (or while another exchange holds it).
        static FIELDS: Cell<Vec<Field>> = const { Cell::new(Vec::new()) };
    }

    pub(super) fn fields() -> Vec<Field> {
        FIELDS.try_with(Cell::take).unwrap_or_default()
    }

    pub(super) fn give_fields(mut fields: Vec<Field>) {
        if fields.capacity() > FIELDS_KEPT {
            return;
        }
        fields.clear();
        let _ = FIELDS.try_with(|spare| {
            // keep the larger of the two
            let other = spare.take();
            spare.set(if other.capacity() > fields.capacity() {
                other
            } else {
                fields
            });
        });
    }

    pub(super) fn take() -> BytesMut {
        let reclaimed = SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            while let Some(mut buf) = spare.pop() {
                if buf.try_reclaim(READ_ROOM) {
                    return Some(buf);
                }
            }
            None
        });
        reclaimed.unwrap_or_else(|| BytesMut::with_capacity(READ_ROOM))
    }

    pub(super) fn give(mut buf: BytesMut) {
        // one grown by a large body's reads is not kept
        if buf.capacity() == 0 || buf.capacity() > 2 * READ_ROOM {
            return;
        }
        buf.clear();
        crate::h1::maps::keep(&SPARE, buf, KEEP);
    }
}

#[cfg(test)]
mod tests;
