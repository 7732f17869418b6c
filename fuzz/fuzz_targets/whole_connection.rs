//! The whole connection, on the native HTTP/1.1 engine (issue 23): random client bytes through a
//! real Gatehouse (in this process, on loopback) to a real backend of ours that answers with
//! random upstream responses. No mocks: real sockets both sides, the real app on a config file.
//!
//! What it asserts, besides "no panic, the proxy stays up" (every iteration connects anew):
//! - (framing) every request the backend gets is one Gatehouse wrote: a head `httparse` takes,
//!   in origin form (`*` only for `OPTIONS`), HTTP/1.1, at most one `Content-Length` (canonical
//!   decimal) or one `Transfer-Encoding: chunked`, never both, its body exactly as framed;
//! - (nothing smuggled, nothing of a rejected request) the requests the backend gets in one
//!   iteration are, in order, a subsequence of the requests a reference parser (RFC 9112, the
//!   engine's documented rules) finds in the client's bytes: same method, same body (a prefix
//!   when the client's body was cut), same path when it is plain; the reference stops at the
//!   first head it refuses and after a request that ends the connection, so nothing after a
//!   refused head (which the engine answers 400/431/414/505 and closes on) can match;
//! - (no reuse after an anomaly) after the backend sent a response the proxy must treat as an
//!   anomaly (bad head, bad framing, bytes after a complete response, 101 not asked for), no
//!   further request arrives on that upstream connection.
//!
//! Requests are told apart by iteration with a header rule (`X-Fuzz-Client = {client_ip}`): each
//! iteration's client binds its own loopback address, so a late request is never counted in
//! the wrong iteration.
//!
//! Input: `[flags][client length: u16 LE][client bytes]` then upstream responses, each
//! `[flags][length: u16 LE][bytes]` (lengths cut to what is left). Client flags: bits 0-1 the
//! number of writes less one, bit 2 half-close after the last write. Response flags: bit 0 close
//! the connection after this response; bit 1 a large body added to the bytes' head (bits 2-4
//! its size, 1 KiB to 128 KiB; bit 5 chunked: see `large`).
#![no_main]

use gatehouse::h1::chunked::{decode_all, Limits};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const TAG: &str = "x-fuzz-client";
/// No byte from the proxy for this long, with answers still owed: the iteration ends.
const QUIET: Duration = Duration::from_millis(150);
/// The longest an iteration waits for the proxy, whatever it does.
const CAP: Duration = Duration::from_secs(3);

/// What one iteration shares with the backend.
struct World {
    proxy: SocketAddr,
    rt: tokio::runtime::Runtime,
    /// The upstream responses of the current input, taken in order by whichever request comes.
    script: Mutex<VecDeque<(bool, Vec<u8>)>>,
    /// Requests the backend got, with the client address they were tagged with.
    seen: Mutex<Vec<Seen>>,
    /// Anything the backend found wrong, as it happened.
    faults: Mutex<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Seen {
    tag: String,
    conn: u32,
    method: String,
    target: String,
    body: Vec<u8>,
    complete: bool,
    /// The request asked for an upgrade (a `101` then makes a tunnel).
    upgrade: bool,
}

static WORLD: OnceLock<World> = OnceLock::new();
static ITERATION: AtomicU32 = AtomicU32::new(0);

fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let backend = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("backend");
        let backend_addr = backend.local_addr().expect("backend addr");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("gatehouse-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gatehouse.toml");
        std::fs::write(&path, config(port, backend_addr)).expect("config");
        let loaded = gatehouse::load::load(&path).expect("config loads");
        rt.spawn(async move {
            if let Err(e) = gatehouse::app::serve(&path, loaded).await {
                eprintln!("gatehouse stopped: {e}");
                std::process::abort();
            }
        });
        rt.spawn(backend_loop(backend));
        let proxy = SocketAddr::from(([127, 0, 0, 1], port));
        let up = rt.block_on(async {
            for _ in 0..500 {
                if TcpStream::connect(proxy).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        });
        assert!(up, "gatehouse never listened on {proxy}");
        World {
            proxy,
            rt,
            script: Mutex::default(),
            seen: Mutex::default(),
            faults: Mutex::default(),
        }
    })
}

fn config(port: u16, backend: SocketAddr) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:{port}"

[server]
http1_engine = "native"
metrics = false
shutdown_grace = "1s"
timeouts = {{ header_read = "1s", idle = "2s", upstream_connect = "1s", upstream_response = "1s", send = "2s" }}
request_headers = {{ set = {{ "X-Fuzz-Client" = "{{client_ip}}" }} }}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"

[upstream.backend]
servers = ["{backend}"]
retries = 0
eject = {{ failures = 0, server_errors = 0 }}
when_all_down = "try_all"
"#
    )
}

// ---------------------------------------------------------------------------------------------
// The input
// ---------------------------------------------------------------------------------------------

struct Input {
    writes: usize,
    half_close: bool,
    client: Vec<u8>,
    responses: VecDeque<(bool, Vec<u8>)>,
}

fn split(data: &[u8]) -> Input {
    let mut rest = data;
    let flags = take(&mut rest, 1).first().copied().unwrap_or(0);
    let n = le16(take(&mut rest, 2));
    let client = take(&mut rest, n).to_vec();
    let mut responses = VecDeque::new();
    while !rest.is_empty() {
        let f = take(&mut rest, 1)[0];
        let n = le16(take(&mut rest, 2));
        let bytes = take(&mut rest, n);
        let bytes = if f & 2 == 0 {
            bytes.to_vec()
        } else {
            large(f, bytes)
        };
        responses.push_back((f & 1 == 1, bytes));
    }
    Input {
        writes: usize::from(flags & 3) + 1,
        half_close: flags & 4 != 0,
        client,
        responses,
    }
}

/// A response with a large body, for the engine's large-body paths (reads that fill the
/// client's read room and make it grow, frames written without a copy): `bytes` up to its first
/// blank line is the head, to which a framing field is added; 1 KiB << (bits 2-4 of `f`) bytes
/// of body follow, by `Content-Length`, or (bit 5) chunked in chunks whose sizes the bytes after
/// the head give. A head with framing of its own makes a conflict, which is fine: the engine
/// must refuse it.
fn large(f: u8, bytes: &[u8]) -> Vec<u8> {
    let (head, sizes) = match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&bytes[..i], &bytes[i + 4..]),
        None => (bytes, &[][..]),
    };
    let size = 1024usize << ((f >> 2) & 7);
    let filler = |n: usize, from: usize| (from..from + n).map(|i| b'a' + (i % 26) as u8);
    let mut out = head.to_vec();
    if f & 32 == 0 {
        out.extend_from_slice(format!("\r\ncontent-length: {size}\r\n\r\n").as_bytes());
        out.extend(filler(size, 0));
        return out;
    }
    out.extend_from_slice(b"\r\ntransfer-encoding: chunked\r\n\r\n");
    let mut sent = 0;
    let mut sizes = sizes.iter().cycle();
    while sent < size {
        let n = sizes
            .next()
            .map_or(size, |b| (usize::from(*b) + 1) * 256)
            .min(size - sent);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(filler(n, sent));
        out.extend_from_slice(b"\r\n");
        sent += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The next `n` bytes of `rest` (fewer at its end).
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = rest.split_at(n.min(rest.len()));
    *rest = b;
    a
}

fn le16(b: &[u8]) -> usize {
    usize::from(b.first().copied().unwrap_or(0)) | usize::from(b.get(1).copied().unwrap_or(0)) << 8
}

// ---------------------------------------------------------------------------------------------
// Framing, as RFC 9112 6 and the engine's documented rules (src/h1.rs) read it
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    /// Read to the end of the connection (a response without length).
    Close,
    /// Faulty: the message cannot be framed.
    Bad,
}

/// The framing fields of a head: `Content-Length` (equal duplicate lines allowed, no lists, digits
/// only) and `Transfer-Encoding` (only a lone `chunked` frames; anything else is faulty for a
/// request and close-delimited for a response).
fn framing(headers: &[httparse::Header], version: u8, response: bool) -> (Framing, bool) {
    let mut length: Option<usize> = None;
    let mut bad_length = false;
    let mut te: Vec<&[u8]> = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = trim(h.value);
            let n = if !v.is_empty() && v.len() <= 15 && v.iter().all(u8::is_ascii_digit) {
                std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
            } else {
                None
            };
            match (n, length) {
                (None, _) => bad_length = true,
                (Some(n), Some(m)) if n != m => bad_length = true,
                (Some(n), _) => length = Some(n),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(trim(h.value));
        }
    }
    let has_length = length.is_some() || bad_length;
    if !te.is_empty() {
        if version == 0 {
            return (Framing::Bad, has_length);
        }
        let lone_chunked = te.len() == 1 && te[0].eq_ignore_ascii_case(b"chunked");
        return match (lone_chunked, response) {
            (true, _) => (Framing::Chunked, has_length),
            (false, false) => (Framing::Bad, has_length),
            (false, true) => (Framing::Close, has_length),
        };
    }
    match (bad_length, length) {
        (true, _) => (Framing::Bad, true),
        (false, Some(n)) => (Framing::Length(n), true),
        (false, None) if response => (Framing::Close, false),
        (false, None) => (Framing::None, false),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |e| e + 1);
    &v[start..end]
}

/// A body of `framing` at the start of `buf`: `Ok(Some((body, consumed)))`, `Ok(None)` while
/// incomplete, `Err` if it cannot be decoded.
fn body(framing: &Framing, buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    match framing {
        Framing::None => Ok(Some((Vec::new(), 0))),
        Framing::Length(n) if buf.len() >= *n => Ok(Some((buf[..*n].to_vec(), *n))),
        Framing::Length(_) | Framing::Close => Ok(None),
        Framing::Chunked => decode_all(buf, Limits::default()).map_err(|_| ()),
        Framing::Bad => Err(()),
    }
}

fn has_token(headers: &[httparse::Header], name: &str, token: &str) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name)
            && h.value
                .split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

// ---------------------------------------------------------------------------------------------
// The reference: the requests in the client's bytes
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Sent {
    method: String,
    target: String,
    body: Vec<u8>,
    complete: bool,
}

/// The requests a conforming server reads from `buf`, in order, up to the first head it must
/// refuse (where framing is lost, or the engine closes) or the first one that ends the
/// connection.
fn reference(mut buf: &[u8]) -> Vec<Sent> {
    let mut out = Vec::new();
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut slots);
        let Ok(httparse::Status::Complete(n)) = req.parse(buf) else {
            return out;
        };
        let version = req.version.unwrap_or(1);
        let (framing, with_length) = framing(req.headers, version, false);
        let method = req.method.unwrap_or("").to_string();
        let target = req.path.unwrap_or("").to_string();
        let rest = &buf[n..];
        let (body, used, complete) = match body(&framing, rest) {
            // a head whose framing is faulty: refused before anything is forwarded
            Err(()) if framing == Framing::Bad => return out,
            // a chunked body that goes wrong part way: the head and the chunks before may
            // have been streamed upstream already, but never the body's end
            Err(()) => (Vec::new(), rest.len(), false),
            Ok(Some((b, used))) => (b, used, true),
            Ok(None) => (partial(&framing, rest), rest.len(), false),
        };
        let closes = framing == Framing::Chunked && with_length
            || has_token(req.headers, "connection", "close")
            || version == 0 && !has_token(req.headers, "connection", "keep-alive");
        out.push(Sent {
            method,
            target,
            body,
            complete,
        });
        if !complete || closes {
            return out;
        }
        buf = &rest[used..];
    }
}

/// What a body cut short holds so far (only a length-framed one is compared).
fn partial(framing: &Framing, rest: &[u8]) -> Vec<u8> {
    match framing {
        Framing::Length(_) => rest.to_vec(),
        _ => Vec::new(),
    }
}

/// A path compared as sent: one the proxy's canonicalisation leaves alone.
fn plain(target: &str) -> bool {
    target.starts_with('/')
        && !target.contains("//")
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_')
}

/// RFC 9110 9.2.2, as the proxy's retry reads it.
fn idempotent(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].contains(&method)
}

fn matches(sent: &Sent, seen: &Seen) -> bool {
    let body = match (seen.complete, sent.complete) {
        (true, true) => seen.body == sent.body,
        // the backend's was cut short (the proxy gave up): a prefix of what the client sent
        (false, _) => sent.body.starts_with(&seen.body),
        // a whole body upstream that the client never finished: the proxy made up its end
        (true, false) => false,
    };
    sent.method == seen.method && body && (!plain(&sent.target) || sent.target == seen.target)
}

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

static CONNS: AtomicU32 = AtomicU32::new(0);

async fn backend_loop(listener: TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            let id = CONNS.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(backend_conn(stream, id));
        }
    }
}

fn fault(what: String) {
    let w = world();
    w.faults.lock().unwrap_or_else(|e| e.into_inner()).push(what);
}

/// One upstream connection: read a request, record it, answer with the next scripted response.
async fn backend_conn(mut stream: TcpStream, conn: u32) {
    let mut buf: Vec<u8> = Vec::new();
    // why the proxy must not send another request here, once it must not
    let mut anomaly: Option<String> = None;
    loop {
        let Some((seen, used)) = read_request(&mut stream, &mut buf, conn).await else {
            return;
        };
        if let Some(why) = &anomaly {
            fault(format!(
                "upstream connection {conn} reused after an anomaly ({why}): {seen:?}"
            ));
        }
        let complete = seen.complete;
        let head_request = seen.method == "HEAD";
        let upgrade = seen.upgrade;
        let connect = seen.method == "CONNECT";
        world()
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seen);
        if !complete {
            return;
        }
        buf.drain(..used);
        let next = world()
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let Some((close, bytes)) = next else { return };
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        match classify(&bytes, head_request, connect, upgrade) {
            Verdict::Clean if !close => {}
            Verdict::Anomaly(why) if !close => anomaly = Some(why),
            Verdict::Tunnel => {
                // raw bytes both ways from here: nothing to parse
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            _ => return,
        }
    }
}

/// Reads one request from the connection (what is buffered first); `None` at the end of the
/// connection before a head. Records a fault for anything Gatehouse should never have written.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    conn: u32,
) -> Option<(Seen, usize)> {
    let mut chunk = [0u8; 8192];
    loop {
        if !buf.is_empty() {
            let mut slots = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let seen = check_head(&req, conn, buf)?;
                    let (framing, _) = framing(req.headers, 1, false);
                    return read_body(stream, buf, n, framing, seen).await;
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    fault(format!(
                        "backend got a head it cannot parse ({e}) on {conn}: {:?}",
                        String::from_utf8_lossy(buf)
                    ));
                    return None;
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    fault(format!(
                        "backend got a partial head on {conn}: {:?}",
                        String::from_utf8_lossy(buf)
                    ));
                }
                return None;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The head's own checks (assertion: every framing field was Gatehouse's).
fn check_head(req: &httparse::Request, conn: u32, buf: &[u8]) -> Option<Seen> {
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let text = || String::from_utf8_lossy(buf).into_owned();
    let mut wrong = Vec::new();
    if req.version != Some(1) {
        wrong.push("not HTTP/1.1");
    }
    if !(target.starts_with('/') || target == "*" && method == "OPTIONS") {
        wrong.push("target not in origin form");
    }
    let lengths: Vec<&[u8]> = fields(req.headers, "content-length");
    let codings: Vec<&[u8]> = fields(req.headers, "transfer-encoding");
    if lengths.len() > 1 || codings.len() > 1 {
        wrong.push("a framing field twice");
    }
    if !lengths.is_empty() && !codings.is_empty() {
        wrong.push("both Content-Length and Transfer-Encoding");
    }
    if let Some(v) = lengths.first() {
        let canonical = !v.is_empty()
            && v.iter().all(u8::is_ascii_digit)
            && (v.len() == 1 || v[0] != b'0');
        if !canonical {
            wrong.push("Content-Length not written by Gatehouse");
        }
    }
    if codings.first().is_some_and(|v| *v != b"chunked") {
        wrong.push("Transfer-Encoding other than chunked");
    }
    let tags = fields(req.headers, TAG);
    if tags.len() != 1 {
        wrong.push("no single X-Fuzz-Client");
    }
    if !wrong.is_empty() {
        fault(format!("backend request on {conn}: {wrong:?}: {:?}", text()));
        return None;
    }
    Some(Seen {
        tag: String::from_utf8_lossy(tags[0]).into_owned(),
        conn,
        method,
        target,
        body: Vec::new(),
        complete: false,
        upgrade: !fields(req.headers, "upgrade").is_empty(),
    })
}

fn fields<'a>(headers: &'a [httparse::Header], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: usize,
    framing: Framing,
    mut seen: Seen,
) -> Option<(Seen, usize)> {
    let mut chunk = [0u8; 8192];
    loop {
        match body(&framing, &buf[head..]) {
            Ok(Some((b, used))) => {
                if std::env::var_os("WHOLE_CONNECTION_DEBUG").is_some() {
                    eprintln!("backend read {:?}", String::from_utf8_lossy(&buf[..head + used]));
                }
                seen.body = b;
                seen.complete = true;
                return Some((seen, head + used));
            }
            Ok(None) => {}
            Err(()) => {
                fault(format!(
                    "backend got a body it cannot decode ({framing:?}) on {}: {:?}",
                    seen.conn,
                    String::from_utf8_lossy(buf)
                ));
                return None;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                // cut short: the proxy gave up on the request (the client went away)
                seen.body = partial(&framing, &buf[head..]);
                return Some((seen, buf.len()));
            }
        }
    }
}

enum Verdict {
    /// Complete and well framed: the connection may be used again.
    Clean,
    /// Faulty: the proxy must not send another request on this connection.
    Anomaly(String),
    /// A switch: raw bytes from here.
    Tunnel,
    /// Incomplete, close-delimited or closing: the backend closes.
    End,
}

/// What the proxy must make of the response `bytes` (RFC 9112 6.3, the engine's rules).
fn classify(mut bytes: &[u8], head_request: bool, connect: bool, upgrade: bool) -> Verdict {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut slots);
        let n = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Verdict::End,
            Err(e) => return Verdict::Anomaly(format!("head: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let version = resp.version.unwrap_or(1);
        let rest = &bytes[n..];
        if status == 101 && upgrade {
            return Verdict::Tunnel;
        }
        if status == 101 {
            return Verdict::Anomaly("101 to a request that asked no upgrade".into());
        }
        if (100..200).contains(&status) {
            bytes = rest;
            continue;
        }
        if connect && (200..300).contains(&status) {
            return Verdict::Tunnel;
        }
        let closing = has_token(resp.headers, "connection", "close")
            || version == 0 && !has_token(resp.headers, "connection", "keep-alive");
        let (framing, with_length) = framing(resp.headers, version, true);
        let no_body = head_request || status == 204 || status == 304;
        let framing = match framing {
            Framing::Bad => return Verdict::Anomaly("bad framing".into()),
            _ if no_body => Framing::None,
            Framing::Close => return Verdict::End,
            f => f,
        };
        let tainted = framing == Framing::Chunked && with_length;
        return match body(&framing, rest) {
            Err(()) => Verdict::Anomaly("bad chunked body".into()),
            Ok(None) => Verdict::End,
            Ok(Some((_, used))) if used < rest.len() => {
                Verdict::Anomaly(format!("{} bytes after the response", rest.len() - used))
            }
            Ok(Some(_)) if tainted => Verdict::Anomaly("chunked with a length".into()),
            Ok(Some(_)) if closing => Verdict::End,
            Ok(Some(_)) => Verdict::Clean,
        };
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// Final responses in what the proxy sent (to know when every answer is in).
fn final_responses(mut buf: &[u8], methods: &[&str]) -> usize {
    let mut count = 0;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(n)) = resp.parse(buf) else {
            return count;
        };
        let status = resp.code.unwrap_or(0);
        let rest = &buf[n..];
        if (100..200).contains(&status) {
            if status == 101 {
                return count + 1;
            }
            buf = rest;
            continue;
        }
        let head = methods.get(count).is_some_and(|m| *m == "HEAD");
        let (framing, _) = framing(resp.headers, resp.version.unwrap_or(1), true);
        let framing = if head || status == 204 || status == 304 {
            Framing::None
        } else {
            framing
        };
        count += 1;
        match body(&framing, rest) {
            Ok(Some((_, used))) => buf = &rest[used..],
            _ => return count,
        }
    }
}

async fn client(w: &World, input: &Input, me: Ipv4Addr, owed: usize, methods: &[&str]) -> bool {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(me), 0))
        .expect("bind a loopback address");
    let Ok(mut stream) = socket.connect(w.proxy).await else {
        return false;
    };
    let parts = input.writes;
    let len = input.client.len();
    for i in 0..parts {
        let piece = &input.client[len * i / parts..len * (i + 1) / parts];
        if stream.write_all(piece).await.is_err() {
            break;
        }
        if i + 1 < parts {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    if input.half_close {
        let _ = stream.shutdown().await;
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = Instant::now() + CAP;
    loop {
        if owed > 0 && final_responses(&got, methods) >= owed {
            break;
        }
        let wait = QUIET.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let input = split(data);
    let n = ITERATION.fetch_add(1, Ordering::Relaxed);
    let me = Ipv4Addr::new(127, 64, (n >> 8) as u8, n as u8);
    let sent = reference(&input.client);
    let methods: Vec<&str> = sent.iter().map(|s| s.method.as_str()).collect();
    let owed = sent.iter().filter(|s| s.complete).count();
    *w.script.lock().unwrap_or_else(|e| e.into_inner()) = input.responses.clone();
    let connected = w.rt.block_on(client(w, &input, me, owed, &methods));
    // 1: the proxy is up (a refused connection means it died or stopped accepting)
    assert!(connected, "the proxy refused a connection");
    let tag = me.to_string();
    let seen: Vec<Seen> = {
        let mut all = w.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mine = all.iter().filter(|s| s.tag == tag).cloned().collect();
        // what earlier iterations' connections sent late is theirs, not this one's
        all.clear();
        mine
    };
    if std::env::var_os("WHOLE_CONNECTION_DEBUG").is_some() {
        eprintln!(
            "client sent {} request(s) ({owed} complete); backend got {}: {:?}",
            sent.len(),
            seen.len(),
            seen.iter().map(|s| (s.conn, &s.method, &s.target, s.body.len(), s.complete)).collect::<Vec<_>>()
        );
    }
    // 2 and 4: what the backend found as it happened
    let faults = std::mem::take(&mut *w.faults.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(faults.is_empty(), "{faults:#?}");
    // 3: the backend's requests are, in order, requests the client sent and the engine had
    // to accept; nothing after a refused head, nothing made of a body
    let mut next = sent.iter();
    let mut last: Option<(&Sent, &Seen)> = None;
    for s in &seen {
        // the one repeat allowed: an idempotent request the upstream dropped unanswered on a
        // reused connection goes once more on another (the stale keep-alive retry, RFC 9110
        // 9.2.2); a `POST` never does
        if let Some((r, before)) = last.take() {
            if idempotent(&r.method) && before.conn != s.conn && matches(r, s) {
                continue;
            }
        }
        match next.find(|r| matches(r, s)) {
            Some(r) => last = Some((r, s)),
            None => panic!(
                "backend request {s:?} is not, in order, one the client sent: {sent:#?} (all seen: {seen:#?})"
            ),
        }
    }
});
