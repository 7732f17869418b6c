use super::*;

const GET: Asked = Asked {
    head: false,
    connect: false,
    upgrade: false,
};

fn parse_as(text: &str, asked: Asked) -> Result<ResponseHead, ResponseError> {
    let mut head = ResponseHead::default();
    match head.parse(text.as_bytes(), asked, &Limits::default())? {
        true => Ok(head),
        false => panic!("incomplete: {text:?}"),
    }
}

fn parse(text: &str) -> Result<ResponseHead, ResponseError> {
    parse_as(text, GET)
}

fn framed(text: &str) -> (Body, bool) {
    let head = parse(text).expect(text);
    (head.body, head.reusable)
}

#[test]
fn lengths_chunks_and_the_close_frame_bodies() {
    assert_eq!(
        framed("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"),
        (Body::Length(4), true)
    );
    assert_eq!(
        framed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n"),
        (Body::Length(2), true)
    );
    assert_eq!(
        framed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (Body::Chunked, true)
    );
    // no framing: to the close, and the connection is spent
    assert_eq!(
        framed("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"),
        (Body::UntilClose, false)
    );
    assert_eq!(framed("HTTP/1.0 200 OK\r\n\r\n"), (Body::UntilClose, false));
    assert_eq!(
        framed("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"),
        (Body::Length(2), true)
    );
    assert_eq!(
        framed("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"),
        (Body::Length(2), false)
    );
    assert_eq!(
        framed("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n"),
        (Body::Length(2), false)
    );
}

#[test]
fn both_framings_read_by_the_chunked_one_and_the_connection_goes() {
    let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    assert_eq!(head.body, Body::Chunked);
    assert!(head.drop_length && !head.reusable);
}

#[test]
fn untrusted_framing_is_refused() {
    for (text, err) in [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            ResponseError::ContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            ResponseError::ContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n",
            ResponseError::ContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n",
            ResponseError::ContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            ResponseError::ContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            ResponseError::ContentLength,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            ResponseError::TransferEncoding,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            ResponseError::TransferEncoding,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            ResponseError::TransferEncoding,
        ),
        (
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            ResponseError::TransferEncodingHttp10,
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            ResponseError::UnaskedSwitch,
        ),
        ("HTTP/1.1 099 Odd\r\n\r\n", ResponseError::Status),
    ] {
        assert_eq!(parse(text).unwrap_err(), err, "{text:?}");
    }
    for text in [
        "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Cr: a\rb\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n",
        "HTTP/1.1 20 Odd\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
    ] {
        assert!(
            matches!(parse(text), Err(ResponseError::Parse(_))),
            "{text:?}"
        );
    }
}

#[test]
fn head_204_and_304_have_no_body_whatever_they_say() {
    let head = Asked { head: true, ..GET };
    let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(parse_as(text, head).unwrap().body, Body::None);
    let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(parse_as(text, head).unwrap().body, Body::None);
    assert_eq!(
        framed("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
        (Body::None, true)
    );
    assert_eq!(
        framed("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
        (Body::None, true)
    );
}

#[test]
fn interim_answers_are_passed_over_and_switches_need_asking() {
    let text = "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let buf = text.as_bytes();
    let mut head = ResponseHead::default();
    let mut at = 0;
    let mut seen = Vec::new();
    loop {
        assert_eq!(head.parse(&buf[at..], GET, &Limits::default()), Ok(true));
        seen.push((head.status, head.answer, head.body));
        at += head.len;
        if head.answer != Answer::Interim {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            (100, Answer::Interim, Body::None),
            (103, Answer::Interim, Body::None),
            (200, Answer::Final, Body::Length(2)),
        ]
    );
    assert_eq!(&buf[at..], b"ok");
    let upgrade = Asked {
        upgrade: true,
        ..GET
    };
    let switched = parse_as(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        upgrade,
    )
    .unwrap();
    assert_eq!(
        (switched.answer, switched.body, switched.reusable),
        (Answer::Switch, Body::None, false)
    );
    let connect = Asked {
        connect: true,
        ..GET
    };
    let tunnel = parse_as("HTTP/1.1 200 Connection Established\r\n\r\n", connect).unwrap();
    assert_eq!((tunnel.answer, tunnel.body), (Answer::Switch, Body::None));
}

#[test]
fn heads_are_bounded_and_can_arrive_in_pieces() {
    let limits = Limits {
        max_head: 40,
        max_fields: 1,
        ..Limits::default()
    };
    let mut head = ResponseHead::default();
    assert_eq!(
        head.parse(b"HTTP/1.1 200 OK\r\nContent-Le", GET, &limits),
        Ok(false)
    );
    let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(40));
    assert_eq!(
        head.parse(long.as_bytes(), GET, &limits),
        Err(ResponseError::HeadTooLarge)
    );
    let two = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_eq!(
        head.parse(two, GET, &limits),
        Err(ResponseError::TooManyFields)
    );
}

#[test]
fn a_bare_lf_is_a_line_end_and_a_head_rewrites_to_itself() {
    let head = parse("HTTP/1.1 200 OK\nContent-Length: 2\n\n").unwrap();
    assert_eq!(head.body, Body::Length(2));
    let text = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: b c\r\n\r\n";
    let head = parse(text).unwrap();
    let mut out = Vec::new();
    head.write(text.as_bytes(), &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), text);
}
