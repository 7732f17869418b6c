use super::*;
use http::Request;
use http_body::Body as _;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A request body of the given frames, with or without its exact size; `then_wait` leaves it
/// pending after them (a client still uploading).
struct Frames {
    frames: VecDeque<Bytes>,
    sized: bool,
    then_wait: bool,
}

impl Frames {
    fn new(frames: &[&'static [u8]], sized: bool) -> Frames {
        Frames {
            frames: frames.iter().map(|f| Bytes::from_static(f)).collect(),
            sized,
            then_wait: false,
        }
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.frames.pop_front() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None if self.then_wait => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.then_wait
    }

    fn size_hint(&self) -> SizeHint {
        match self.sized {
            true => SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum()),
            false => SizeHint::default(),
        }
    }
}

fn parts(method: &str, uri: &str, headers: &[(&'static str, &'static str)]) -> Parts {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(()).unwrap().into_parts().0
}

fn head(parts: &Parts, body: &Frames) -> (String, Out) {
    let (written, framing, _) = head_with(parts, Added::none(), body);
    (written, framing)
}

fn head_with(parts: &Parts, added: &Added, body: &Frames) -> (String, Out, bool) {
    let mut out = BytesMut::new();
    let empty = body.is_end_stream();
    let (framing, upgrade) = write_head((parts, added), empty, &body.size_hint(), &mut out);
    (String::from_utf8(out.to_vec()).unwrap(), framing, upgrade)
}

#[test]
fn gatehouse_headers_held_beside_the_map_follow_its_fields() {
    let peer = HeaderValue::from_static("192.0.2.7");
    let host = HeaderValue::from_static("x.test");
    let mut post = parts(
        "POST",
        "/up",
        &[("host", "x.test"), ("upgrade", "websocket")],
    );
    let client = crate::upstream::forward::Client {
        peer: &peer,
        peer_trusted: false,
        host: Some(&host),
        proto: "https",
        real_ip: Some(peer.clone()),
        port: HeaderValue::from_static("443"),
        request_id: &crate::request_id::RequestId::from_static("id-1"),
    };
    let mut added = Added::default();
    added.set(&mut post.headers, client, true);
    let (written, framing, upgrade) = head_with(&post, &added, &Frames::new(&[b"abc"], true));
    assert_eq!(
        written,
        "POST /up HTTP/1.1\r\nhost: x.test\r\nupgrade: websocket\r\n\
         x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\nx-forwarded-host: x.test\r\n\
         x-real-ip: 192.0.2.7\r\nx-forwarded-port: 443\r\nx-request-id: id-1\r\n\
         content-length: 3\r\n\r\n"
    );
    assert_eq!((framing, upgrade), (Out::Length(3), true));
    let get = parts("GET", "/", &[("host", "x.test")]);
    assert!(!head_with(&get, Added::none(), &Frames::new(&[], true)).2);
}

#[test]
fn the_head_carries_the_framing_hyper_would_send() {
    let get = parts("GET", "/a?b=c", &[("host", "x.test"), ("x-two", "1")]);
    assert_eq!(
        head(&get, &Frames::new(&[], true)),
        (
            "GET /a?b=c HTTP/1.1\r\nhost: x.test\r\nx-two: 1\r\n\r\n".into(),
            Out::Nothing
        )
    );
    let post = parts("POST", "/up", &[("host", "x.test")]);
    assert_eq!(
        head(&post, &Frames::new(&[b"abc"], true)),
        (
            "POST /up HTTP/1.1\r\nhost: x.test\r\ncontent-length: 3\r\n\r\n".into(),
            Out::Length(3)
        )
    );
    assert_eq!(
        head(&post, &Frames::new(&[b"abc"], false)),
        (
            "POST /up HTTP/1.1\r\nhost: x.test\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            Out::Chunked
        )
    );
    // the service's own framing header is kept, not doubled
    let zero = parts("POST", "/", &[("content-length", "0")]);
    assert_eq!(
        head(&zero, &Frames::new(&[], true)),
        (
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n".into(),
            Out::Length(0)
        )
    );
    // an unsized GET body is not sent, as hyper's client does
    assert_eq!(head(&get, &Frames::new(&[b"x"], false)).1, Out::Nothing);
    let connect = parts("CONNECT", "x.test:443", &[]);
    assert!(head(&connect, &Frames::new(&[], true))
        .0
        .starts_with("CONNECT x.test:443 HTTP/1.1\r\n"));
}

/// A connection over a socket pair, and the upstream's end.
fn pair() -> (Conn, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (Conn::new(UpstreamIo::Unix(TokioIo::new(ours))), theirs)
}

/// Reads from the upstream's end until `until` has arrived; returns all of it.
async fn read_until(upstream: &mut UnixStream, until: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = upstream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before {until:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[test]
fn chunk_size_lines_are_lowercase_hex() {
    let mut out = Pending::default();
    for (len, line) in [(0, "0\r\n"), (10, "a\r\n"), (0x1f2e, "1f2e\r\n")] {
        out.size_line(len);
        assert_eq!(&out.line[..out.line_end as usize], line.as_bytes());
    }
    out.size_line(usize::MAX);
    assert_eq!(&out.line[..out.line_end as usize], b"ffffffffffffffff\r\n");
}

#[tokio::test]
async fn a_chunked_upload_and_a_chunked_answer_leave_the_connection_reusable() {
    let (conn, mut upstream) = pair();
    let server = tokio::spawn(async move {
        let got = read_until(&mut upstream, "0\r\n\r\n").await;
        let answer = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n2;ext=1\r\nhe\r\n3\r\nllo\r\n0\r\nT: v\r\n\r\n";
        upstream.write_all(answer.as_bytes()).await.unwrap();
        (got, upstream)
    });
    let parts = parts("PUT", "/x", &[("host", "h")]);
    let mut body = Frames::new(&[b"ab", b"", b"cde"], false);
    let resp = send(conn, (&parts, Added::none()), &mut body)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-a"], "b");
    // the framing is the body's own: its field is left out of the map, what it said kept
    assert!(!resp.headers().contains_key("transfer-encoding"));
    let says = resp
        .body()
        .stripped()
        .expect("hop-by-hop fields read off the index");
    assert!(says.transfer_encoding && says.only_chunked);
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.unwrap().into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    assert_eq!(data, b"hello");
    assert_eq!(trailers.expect("trailers forwarded")["t"], "v");
    let (got, _upstream) = server.await.unwrap();
    assert_eq!(
        got,
        "PUT /x HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    );
    let mut conn = body.take_reusable().expect("the connection goes back");
    assert!(conn.is_usable());
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_stops_it_and_the_connection_goes() {
    let (conn, mut upstream) = pair();
    let server = tokio::spawn(async move {
        read_until(&mut upstream, "abc").await;
        let answer = b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno";
        upstream.write_all(answer).await.unwrap();
        upstream
    });
    let parts = parts("POST", "/", &[("content-length", "10")]);
    let mut body = Frames::new(&[b"abc"], false);
    body.then_wait = true;
    let resp = send(conn, (&parts, Added::none()), &mut body)
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let mut body = resp.into_body();
    let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&data[..], b"no");
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none(), "mid-upload: not reusable");
    drop(server.await.unwrap());
}

#[tokio::test]
async fn a_closed_connection_hands_the_request_back_untouched() {
    let (conn, upstream) = pair();
    drop(upstream);
    let parts = parts("GET", "/", &[]);
    let mut body = Frames::new(&[], true);
    let failed = send(conn, (&parts, Added::none()), &mut body)
        .await
        .unwrap_err();
    assert!(failed.unsent, "{failed:?}");

    // once a byte of the answer came, it is no stale connection
    let (conn, mut upstream) = pair();
    let server = tokio::spawn(async move {
        read_until(&mut upstream, "\r\n\r\n").await;
        upstream.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    });
    let failed = send(conn, (&parts, Added::none()), &mut body)
        .await
        .unwrap_err();
    assert!(!failed.unsent, "{failed:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn stray_bytes_or_a_close_make_an_idle_connection_unusable() {
    let (mut conn, mut upstream) = pair();
    assert!(conn.is_usable());
    upstream.write_all(b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!conn.is_usable());

    let (mut conn, upstream) = pair();
    drop(upstream);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!conn.is_usable());
}

#[tokio::test]
async fn a_body_cut_by_the_close_is_an_error_and_bytes_after_it_forbid_reuse() {
    let (conn, mut upstream) = pair();
    let parts = parts("GET", "/", &[]);
    let server = tokio::spawn(async move {
        read_until(&mut upstream, "\r\n\r\n").await;
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
            .await
            .unwrap();
    });
    let resp = send(conn, (&parts, Added::none()), &mut Frames::new(&[], true))
        .await
        .unwrap();
    server.await.unwrap();
    let mut body = resp.into_body();
    assert_eq!(
        &body.frame().await.unwrap().unwrap().into_data().unwrap()[..],
        b"ab"
    );
    assert!(body.frame().await.unwrap().is_err());

    let (conn, mut upstream) = pair();
    let server = tokio::spawn(async move {
        read_until(&mut upstream, "\r\n\r\n").await;
        upstream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        upstream
    });
    let resp = send(conn, (&parts, Added::none()), &mut Frames::new(&[], true))
        .await
        .unwrap();
    let _upstream = server.await.unwrap();
    let mut body = resp.into_body();
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none());
}

/// A read buffer comes back for the next exchange once nothing shares its bytes, and a new one
/// is made while something still does.
#[test]
fn read_buffers_are_reused_once_unshared() {
    // this thread's spares are this test's
    let mut buf = spare::take();
    buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
    let head = buf.split_to(buf.len()).freeze();
    let at = head.as_ptr();
    spare::give(buf);
    let fresh = spare::take();
    assert_ne!(fresh.as_ptr(), at, "the head still shares it");
    spare::give(fresh);
    let mut buf = spare::take();
    buf.extend_from_slice(b"x");
    let body = buf.split_to(1).freeze();
    let at = body.as_ptr();
    spare::give(buf);
    drop((head, body));
    let again = spare::take();
    assert_eq!(again.as_ptr(), at, "taken back, from its start");
    assert!(again.capacity() >= READ_ROOM);
}

#[tokio::test(flavor = "current_thread")]
async fn the_response_field_index_is_reused() {
    // this thread's spare index is this test's
    drop(spare::fields());
    let (conn, mut upstream) = pair();
    let server = tokio::spawn(async move {
        read_until(&mut upstream, "\r\n\r\n").await;
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nX-B: 2\r\n\r\nok";
        upstream.write_all(answer.as_bytes()).await.unwrap();
        upstream
    });
    let parts = parts("GET", "/", &[("host", "h")]);
    let resp = send(conn, (&parts, Added::none()), &mut Frames::new(&[], true))
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-b"], "2");
    drop(server.await.unwrap());
    // the head's three fields were indexed in a vector now kept for the next exchange
    let kept = spare::fields();
    assert!(
        kept.capacity() >= 3 && kept.is_empty(),
        "{}",
        kept.capacity()
    );
}

/// The head's map as `forward::strip_hop_by_hop` leaves it, from all of the head's fields.
fn stripped_by_the_map(head: &ResponseHead, buf: &[u8]) -> (HeaderMap, ConnectionSays) {
    let mut map = HeaderMap::new();
    for field in &head.fields {
        let name = HeaderName::from_bytes(field.name.of(buf)).unwrap();
        map.append(name, HeaderValue::from_bytes(field.value.of(buf)).unwrap());
    }
    let says = super::super::super::forward::strip_hop_by_hop(&mut map);
    (map, says)
}

#[test]
fn hop_by_hop_fields_left_out_of_the_map_say_what_the_map_strip_would() {
    let asked = Asked {
        head: false,
        connect: false,
        upgrade: false,
    };
    // (head fields, whether the index alone can tell)
    let cases: &[(&str, bool)] = &[
        ("Content-Length: 2\r\nConnection: keep-alive\r\n", true),
        (
            "Content-Length: 2\r\nConnection: close\r\nServer: x\r\n",
            true,
        ),
        (
            "Content-Length: 2\r\nconnection: Keep-Alive , CLOSE,\r\n",
            true,
        ),
        ("Content-Length: 2\r\nConnection:\r\n", true),
        ("Content-Length: 2\r\n", true),
        ("Transfer-Encoding: chunked\r\n", true),
        (
            "Transfer-Encoding:  Chunked \r\nContent-Length: 5\r\n",
            true,
        ),
        // (other codings are the codec's to refuse: `h1::response`'s tests)
        (
            "Content-Length: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x\r\n\
             Proxy-Connection: close\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\n\
             Connection: keep-alive\r\nX-Keep: 1\r\n",
            true,
        ),
        (
            "Content-Length: 2\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n",
            false,
        ),
        (
            "Content-Length: 2\r\nConnection: upgrade\r\nUpgrade: h2c\r\n",
            true,
        ),
        (
            "Content-Length: 2\r\nConnection: close\r\nConnection: x-a\r\nX-A: 1\r\n",
            false,
        ),
        ("Content-Length: 2\r\nConnection: close\u{e9}\r\n", false),
    ];
    for (fields, simple) in cases {
        let text = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        let buf = Bytes::from(text.clone().into_bytes());
        let mut head = ResponseHead::default();
        assert!(head.parse(&buf, asked, &LIMITS).expect(&text), "{text:?}");
        let (resp, says) = response(&head, &buf).expect(&text);
        assert_eq!(says.is_some(), *simple, "{text:?}");
        let (map, map_says) = stripped_by_the_map(&head, &buf);
        match says {
            Some(says) => {
                assert_eq!(says, map_says, "{text:?}");
                assert_eq!(resp.headers(), &map, "{text:?}");
            }
            // all fields kept for the map's own pass
            None => assert_eq!(resp.headers().len(), head.fields.len(), "{text:?}"),
        }
    }
}

#[test]
fn the_hop_by_hop_names_read_as_bytes_are_forwards_list() {
    // every name of `forward`'s list, in any case, and none of a few that are not in it
    let mut names: Vec<String> = super::super::super::forward::hop_by_hop_names()
        .iter()
        .map(|n| n.as_str().to_ascii_uppercase())
        .collect();
    let listed = names.len();
    names.extend(["Content-Type", "Server", "Trailers", "TE2", "Keep-Alive2"].map(String::from));
    for (i, name) in names.iter().enumerate() {
        let buf = format!("HTTP/1.1 200 OK\r\n{name}: chunked\r\n\r\n");
        let mut head = ResponseHead::default();
        let asked = Asked {
            head: true,
            connect: false,
            upgrade: false,
        };
        // (`chunked`: the one value every one of them may carry)
        assert!(head.parse(buf.as_bytes(), asked, &LIMITS).expect(&buf));
        let field = head.fields.first().expect("one field");
        assert_eq!(is_hop_by_hop(field, buf.as_bytes()), i < listed, "{name}");
    }
}
