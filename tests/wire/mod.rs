//! Raw-socket helpers for the request-hygiene tests: a backend that records the exact bytes of
//! every request it reads (so a test sees the framing Gatehouse regenerated, and how many requests
//! really arrived), a client that writes bytes and reads until the proxy closes, and hand-made
//! HTTP/2 frames (the `h2` crate refuses to send the malformed requests these tests need).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a client waits for the proxy to close a connection it must close.
pub const CLOSE_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------

/// One request as a raw backend read it off the wire.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The head exactly as received, up to and including the blank line.
    pub head: String,
    /// The body bytes exactly as received (chunk framing included).
    pub raw_body: Vec<u8>,
    /// The body with chunk framing removed.
    pub body: Vec<u8>,
    /// Whether the whole message (head and body, per its own framing) arrived.
    pub complete: bool,
}

impl Seen {
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    /// All values of `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        (!all.is_empty()).then(|| all.join(", "))
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 backend that parses requests by hand (CRLF only, Content-Length or chunked),
/// records each, and answers every complete one with `response` (verbatim bytes).
pub struct RawBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

impl RawBackend {
    pub async fn start(response: &'static [u8]) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_raw(stream, record.clone(), response));
            }
        });
        RawBackend { addr, seen, task }
    }

    /// Every request whose head arrived, complete, cut short or still arriving.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Only the requests that arrived whole.
    pub fn complete(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.complete).collect()
    }
}

async fn serve_raw(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, response: &'static [u8]) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = fill_until(&mut stream, &mut buf, |b| find(b, b"\r\n\r\n")).await
        else {
            if !buf.is_empty() {
                seen.lock().unwrap().push(Seen {
                    head: String::from_utf8_lossy(&buf).into_owned(),
                    raw_body: Vec::new(),
                    body: Vec::new(),
                    complete: false,
                });
            }
            return;
        };
        let head: Vec<u8> = buf.drain(..head_end + 4).collect();
        let mut seen_req = Seen {
            head: String::from_utf8_lossy(&head).into_owned(),
            raw_body: Vec::new(),
            body: Vec::new(),
            complete: false,
        };
        let chunked = seen_req
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let length: usize = seen_req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // recorded at once, so a test can see a head whose body is still on its way
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(seen_req.clone());
            seen.len() - 1
        };
        let ok = if chunked {
            read_chunked(&mut stream, &mut buf, &mut seen_req).await
        } else {
            let got = fill_until(&mut stream, &mut buf, |b| {
                (b.len() >= length).then_some(length)
            })
            .await
            .is_some();
            let take = length.min(buf.len());
            seen_req.raw_body = buf.drain(..take).collect();
            seen_req.body = seen_req.raw_body.clone();
            got
        };
        seen_req.complete = ok;
        seen.lock().unwrap()[index] = seen_req;
        if !ok || stream.write_all(response).await.is_err() {
            return;
        }
        if find(response, b"Connection: close").is_some() {
            return;
        }
    }
}

/// Reads a chunked body into `seen`; false if the connection ended before its last chunk.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>, seen: &mut Seen) -> bool {
    loop {
        let Some(line_end) = fill_until(stream, buf, |b| find(b, b"\r\n")).await else {
            seen.raw_body.append(buf);
            return false;
        };
        let line: Vec<u8> = buf.drain(..line_end + 2).collect();
        seen.raw_body.extend_from_slice(&line);
        let size_text = String::from_utf8_lossy(&line[..line_end]).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return false;
        };
        if size == 0 {
            // trailers, then the blank line
            loop {
                let Some(end) = fill_until(stream, buf, |b| find(b, b"\r\n")).await else {
                    return false;
                };
                let trailer: Vec<u8> = buf.drain(..end + 2).collect();
                seen.raw_body.extend_from_slice(&trailer);
                if end == 0 {
                    return true;
                }
            }
        }
        if fill_until(stream, buf, |b| (b.len() >= size + 2).then_some(()))
            .await
            .is_none()
        {
            seen.raw_body.append(buf);
            return false;
        }
        let chunk: Vec<u8> = buf.drain(..size + 2).collect();
        seen.raw_body.extend_from_slice(&chunk);
        seen.body.extend_from_slice(&chunk[..size]);
    }
}

/// Reads into `buf` until `done` finds what it looks for; `None` on EOF or error first.
async fn fill_until<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(found) = done(buf) {
            return Some(found);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Polls `cond` until it holds; panics after [`CLOSE_WITHIN`].
pub async fn eventually(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + CLOSE_WITHIN;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {CLOSE_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A response parsed off the wire: the same shape `support::raw_request` returns.
pub use crate::support::RawResponse as Resp;

/// What one client connection got back.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The proxy closed the connection (EOF or reset) within [`CLOSE_WITHIN`].
    pub closed: bool,
}

impl Exchange {
    /// Every complete response in the bytes received, in order.
    pub fn responses(&self) -> Vec<Resp> {
        let mut out = Vec::new();
        let mut rest = &self.bytes[..];
        while let Some((resp, used)) = parse_response(rest) {
            out.push(resp);
            rest = &rest[used..];
        }
        out
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request` on a new connection, then reads until the proxy closes it or
/// [`CLOSE_WITHIN`] passes. Write errors are ignored: the proxy may close before reading it all.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    read_to_close(&mut stream).await
}

pub async fn read_to_close(stream: &mut TcpStream) -> Exchange {
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + CLOSE_WITHIN;
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: false,
                }
            }
        }
    }
}

/// Reads exactly one response from a connection that stays open.
pub async fn read_one(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Resp {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((resp, used)) = parse_response(pending) {
            pending.drain(..used);
            return resp;
        }
        let n = tokio::time::timeout(CLOSE_WITHIN, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed before a whole response: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// One response from the start of `bytes` and how many bytes it took; `None` if incomplete.
/// Bodies: Content-Length, chunked, or none (1xx, 204, 304, and responses without either).
pub fn parse_response(bytes: &[u8]) -> Option<(Resp, usize)> {
    let head_end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let mut at = head_end + 4;
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        loop {
            let line_end = at + find(&bytes[at..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&bytes[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                at += find(&bytes[at..], b"\r\n")? + 2;
                break;
            }
            body.extend_from_slice(bytes.get(at..at + size)?);
            at += size + 2;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        body.extend_from_slice(bytes.get(at..at + len)?);
        at += len;
    }
    Some((
        Resp {
            status,
            headers,
            body,
        },
        at.min(bytes.len()),
    ))
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 by hand
// ---------------------------------------------------------------------------------------------

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
pub const PROTOCOL_ERROR: u32 = 0x1;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The client preface and an empty SETTINGS frame.
pub fn h2_start() -> Vec<u8> {
    let mut out = H2_PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// A HEADERS frame whose fields are HPACK literals without indexing, no Huffman, so any name and
/// value (even ones a real encoder refuses) go out byte for byte. Names and values < 127 bytes.
pub fn h2_headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

pub fn h2_data(stream: u32, data: &[u8], end_stream: bool) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, data)
}

/// How the proxy ended stream 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Outcome {
    /// RST_STREAM with this error code.
    Reset(u32),
    /// A response HEADERS frame; the status if HPACK sent it as a static-table index.
    Response(Option<u16>),
    /// GOAWAY with this error code before anything for the stream.
    GoAway(u32),
    /// The connection closed (or nothing came) before anything for the stream.
    Nothing,
}

/// Reads frames until the fate of `stream` is known, acknowledging the server's SETTINGS.
pub async fn h2_outcome(conn: &mut TcpStream, stream: u32) -> H2Outcome {
    let deadline = tokio::time::Instant::now() + CLOSE_WITHIN;
    loop {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout_at(deadline, conn.read_exact(&mut head)).await;
        let Ok(Ok(_)) = read else {
            return H2Outcome::Nothing;
        };
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        let read = tokio::time::timeout_at(deadline, conn.read_exact(&mut payload)).await;
        let Ok(Ok(_)) = read else {
            return H2Outcome::Nothing;
        };
        match kind {
            SETTINGS if flags & 0x1 == 0 => {
                let _ = conn.write_all(&frame(SETTINGS, 0x1, 0, &[])).await;
            }
            RST_STREAM if id == stream => {
                return H2Outcome::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()))
            }
            HEADERS if id == stream => {
                // static table: 8 = 200, 9 = 204, 10 = 206, 11 = 304, 12 = 400, 13 = 404, 14 = 500
                let status = match payload.first() {
                    Some(0x88) => Some(200),
                    Some(0x89) => Some(204),
                    Some(0x8c) => Some(400),
                    Some(0x8d) => Some(404),
                    Some(0x8e) => Some(500),
                    _ => None,
                };
                return H2Outcome::Response(status);
            }
            GOAWAY => {
                return H2Outcome::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()))
            }
            _ => {}
        }
    }
}
