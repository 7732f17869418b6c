use super::*;
use crate::http::hygiene::Malformed;

fn parse(text: &str) -> Result<RequestHead, RequestError> {
    let mut head = RequestHead::default();
    match head.parse(text.as_bytes(), &Limits::default())? {
        true => Ok(head),
        false => panic!("incomplete: {text:?}"),
    }
}

fn refused(text: &str) -> RequestError {
    parse(text).expect_err(text)
}

#[test]
fn a_plain_get_is_indexed() {
    let text =
        "GET /a?b HTTP/1.1\r\nHost: example.com\r\nX-A:  1 \r\nConnection: close\r\n\r\nbody";
    let head = parse(text).unwrap();
    let buf = text.as_bytes();
    assert_eq!(head.method.of(buf), b"GET");
    assert_eq!(head.target.of(buf), b"/a?b");
    assert_eq!(head.form, Target::Origin);
    assert_eq!(head.minor_version, 1);
    assert_eq!(head.fields.len(), 3);
    assert_eq!(head.fields[1].name.of(buf), b"X-A");
    assert_eq!(head.fields[1].value.of(buf), b"1");
    assert_eq!(head.authority.of(buf), b"example.com");
    assert_eq!(head.body, Body::None);
    assert!(!head.keeps_alive());
    assert_eq!(&buf[head.len..], b"body");
}

#[test]
fn an_incomplete_head_asks_for_more_until_the_limit() {
    let mut head = RequestHead::default();
    let limits = Limits {
        max_head: 32,
        ..Limits::default()
    };
    assert_eq!(
        head.parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &limits),
        Ok(false)
    );
    let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(40));
    assert_eq!(
        head.parse(long.as_bytes(), &limits),
        Err(RequestError::HeadTooLarge)
    );
    let whole = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "a".repeat(20));
    assert_eq!(
        head.parse(whole.as_bytes(), &limits),
        Err(RequestError::HeadTooLarge)
    );
}

#[test]
fn field_count_and_target_length_are_bounded() {
    let limits = Limits {
        max_fields: 2,
        max_target: 8,
        ..Limits::default()
    };
    let mut head = RequestHead::default();
    let three = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_eq!(head.parse(three, &limits), Err(RequestError::TooManyFields));
    let long = b"GET /123456789 HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(head.parse(long, &limits), Err(RequestError::TargetTooLong));
    assert_eq!(RequestError::TooManyFields.status(), 431);
    assert_eq!(RequestError::TargetTooLong.status(), 414);
}

#[test]
fn bodies_are_framed_by_one_rule() {
    let with = |fields: &str| parse(&format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n"));
    assert_eq!(with("Content-Length: 5\r\n").unwrap().body, Body::Length(5));
    assert_eq!(with("Content-Length: 0\r\n").unwrap().body, Body::Length(0));
    assert_eq!(
        with("Content-Length: 5\r\nContent-Length: 5\r\n")
            .unwrap()
            .body,
        Body::Length(5)
    );
    // a list is refused even when its lengths agree (as hyper does, pinned by tests/hygiene.rs)
    assert_eq!(
        with("Content-Length: 5, 5\r\n").unwrap_err(),
        RequestError::Malformed(Malformed::ContentLength)
    );
    assert_eq!(
        with("Transfer-Encoding: chunked\r\n").unwrap().body,
        Body::Chunked
    );
    assert_eq!(
        with("Transfer-Encoding: Chunked \r\n").unwrap().body,
        Body::Chunked
    );
    for (fields, err) in [
        (
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            RequestError::Malformed(Malformed::ContentLength),
        ),
        (
            "Content-Length: 5, 6\r\n",
            RequestError::Malformed(Malformed::ContentLength),
        ),
        (
            "Content-Length: +5\r\n",
            RequestError::Malformed(Malformed::ContentLength),
        ),
        (
            "Content-Length: 5 5\r\n",
            RequestError::Malformed(Malformed::ContentLength),
        ),
        (
            "Content-Length: \r\n",
            RequestError::Malformed(Malformed::ContentLength),
        ),
        (
            "Content-Length: 99999999999999999999\r\n",
            RequestError::Malformed(Malformed::ContentLength),
        ),
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            RequestError::Malformed(Malformed::TransferEncoding),
        ),
        (
            "Transfer-Encoding: chunked, gzip\r\n",
            RequestError::Malformed(Malformed::TransferEncoding),
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            RequestError::Malformed(Malformed::TransferEncoding),
        ),
        (
            "Transfer-Encoding: identity\r\n",
            RequestError::Malformed(Malformed::TransferEncoding),
        ),
    ] {
        assert_eq!(with(fields).unwrap_err(), err, "{fields:?}");
    }
    // both framings: chunked frames the body, and the connection closes after it
    for fields in [
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: x\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let head = with(fields).unwrap();
        assert_eq!(head.body, Body::Chunked, "{fields:?}");
        assert!(!head.keeps_alive(), "{fields:?}");
    }
    let old = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        refused(old),
        RequestError::Malformed(Malformed::TransferEncodingHttp10)
    );
}

#[test]
fn malformed_lines_are_refused() {
    for text in [
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n X: a\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n",
    ] {
        assert!(matches!(refused(text), RequestError::Parse(_)), "{text:?}");
    }
    // a space in the target leaves `b HTTP/1.1` where the version should be
    assert_eq!(
        refused("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
        RequestError::Version
    );
    // a bare LF ends a line (RFC 9112 2.2), as hyper takes it
    assert!(parse("GET / HTTP/1.1\nHost: a\r\n\r\n").is_ok());
    assert!(parse("GET / HTTP/1.1\r\nHost: a\n\n").is_ok());
    assert_eq!(
        refused("GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        RequestError::Version
    );
    // 400, as hyper answers it (pinned by tests/hygiene.rs)
    assert_eq!(RequestError::Version.status(), 400);
}

#[test]
fn host_rules() {
    // Host is the service's to judge: none, two, or an invalid one all parse
    for text in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    ] {
        assert!(parse(text).is_ok(), "{text:?}");
    }
    let text = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    assert_eq!(parse(text).unwrap().authority.of(text.as_bytes()), b"a");
    let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(old.authority.is_empty());
    let text = "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n";
    assert_eq!(
        parse(text).unwrap().authority.of(text.as_bytes()),
        b"[::1]:8080"
    );
    // the absolute form's authority wins over Host
    let text = "GET http://b.test:81/x?y HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let head = parse(text).unwrap();
    assert_eq!(head.form, Target::Absolute);
    assert_eq!(head.authority.of(text.as_bytes()), b"b.test:81");
}

#[test]
fn each_method_gets_its_target_form() {
    let form = |line: &str| parse(&format!("{line}\r\nHost: a\r\n\r\n")).map(|h| h.form);
    assert_eq!(form("CONNECT a.test:443 HTTP/1.1"), Ok(Target::Authority));
    assert_eq!(form("OPTIONS * HTTP/1.1"), Ok(Target::Asterisk));
    assert_eq!(form("GET https://a.test HTTP/1.1"), Ok(Target::Absolute));
    // a form its method does not take is the service's to refuse
    assert_eq!(form("CONNECT / HTTP/1.1"), Ok(Target::Origin));
    assert_eq!(form("GET * HTTP/1.1"), Ok(Target::Asterisk));
    assert_eq!(form("GET a.test:443 HTTP/1.1"), Ok(Target::Authority));
    for bad in [
        "CONNECT a.test HTTP/1.1",
        "CONNECT a.test:x HTTP/1.1",
        "GET a HTTP/1.1",
        "GET http:/a HTTP/1.1",
        "GET http:// HTTP/1.1",
        "GET 1http://a HTTP/1.1",
    ] {
        assert_eq!(form(bad), Err(RequestError::TargetForm), "{bad}");
    }
}

#[test]
fn connection_and_expect_are_read() {
    let head = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
    assert!(head.keeps_alive());
    assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keeps_alive());
    let text = "POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
    let head = parse(text).unwrap();
    assert!(head.connection.upgrade && head.expects_continue && head.keeps_alive());
    assert_eq!(
        head.get(Kind::Upgrade, text.as_bytes()),
        Some(&b"websocket"[..])
    );
}

#[test]
fn leading_empty_lines_are_skipped_and_a_head_rewrites_to_itself() {
    let text = "\r\nPUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Empty:\r\n\r\n";
    let head = parse(text).unwrap();
    let mut out = Vec::new();
    head.write(text.as_bytes(), &mut out);
    let expected = "PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Empty: \r\n\r\n";
    assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
    let again = parse(expected).unwrap();
    assert_eq!(again.body, Body::Length(2));
    assert_eq!(again.fields.len(), 3);
}
