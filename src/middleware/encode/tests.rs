use super::*;
use crate::config::Encode;

fn rule(codings: &[Coding]) -> Encode {
    Encode {
        codings: codings.to_vec(),
        ..Encode::default()
    }
}

fn head(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");
const LONG: BodyShape = BodyShape {
    len: Some(100_000),
    empty: false,
};
const STREAMED: BodyShape = BodyShape {
    len: None,
    empty: false,
};

fn decision(accept: &str, status: u16, headers: &[(&str, &str)], body: BodyShape) -> Decision {
    let rule = rule(&[Coding::Zstd, Coding::Br, Coding::Gzip]);
    let request = head(&[("accept-encoding", accept)]);
    let neg = Negotiated::new(&rule, &Method::GET, &request).unwrap();
    decide(
        &neg,
        StatusCode::from_u16(status).unwrap(),
        &head(headers),
        body,
    )
}

#[test]
fn candidates_are_compressed_with_the_negotiated_coding() {
    assert_eq!(
        decision("gzip, br", 200, &[JSON], LONG),
        Decision::Compress(Coding::Br)
    );
    // unknown length: compressed (it may be long)
    assert_eq!(
        decision(
            "gzip",
            200,
            &[("content-type", "text/event-stream")],
            STREAMED
        ),
        Decision::Compress(Coding::Gzip)
    );
    // error pages too, as nginx and Caddy do
    assert_eq!(
        decision("zstd", 404, &[("content-type", "text/html")], LONG),
        Decision::Compress(Coding::Zstd)
    );
    assert_eq!(decision("identity", 200, &[JSON], LONG), Decision::VaryOnly);
}

#[test]
fn non_candidates_are_untouched() {
    let png = ("content-type", "image/png");
    type Case<'a> = (u16, &'a [(&'a str, &'a str)], BodyShape, &'a str);
    let cases: &[Case] = &[
        (304, &[JSON], STREAMED, "304"),
        (204, &[JSON], STREAMED, "204"),
        (206, &[JSON], LONG, "206"),
        (101, &[JSON], STREAMED, "101"),
        (200, &[png], LONG, "image/png"),
        (200, &[], LONG, "no content type"),
        (200, &[JSON, ("content-encoding", "gzip")], LONG, "encoded"),
        (
            200,
            &[JSON, ("cache-control", "public, No-Transform")],
            LONG,
            "no-transform",
        ),
        (
            200,
            &[JSON],
            BodyShape {
                len: Some(511),
                empty: false,
            },
            "under 512 B",
        ),
        (
            200,
            &[JSON],
            BodyShape {
                len: Some(0),
                empty: true,
            },
            "empty",
        ),
        (
            200,
            &[JSON],
            BodyShape {
                len: None,
                empty: true,
            },
            "ended",
        ),
    ];
    for (status, headers, body, what) in cases {
        assert_eq!(
            decision("gzip", *status, headers, *body),
            Decision::Untouched,
            "{what}"
        );
    }
    let at_threshold = BodyShape {
        len: Some(512),
        empty: false,
    };
    assert_eq!(
        decision("gzip", 200, &[JSON], at_threshold),
        Decision::Compress(Coding::Gzip)
    );
}

#[test]
fn head_requests_are_negotiated_as_get_and_judged_on_their_declared_length() {
    let rule = rule(&[Coding::Gzip]);
    let request = head(&[("accept-encoding", "gzip")]);
    let neg = Negotiated::new(&rule, &Method::HEAD, &request).unwrap();
    assert!(neg.head);
    assert_eq!(neg.coding, Some(Coding::Gzip));
    let get = Negotiated::new(&rule, &Method::GET, &request).unwrap();
    assert!(!get.head);
    assert!(Negotiated::new(&rule, &Method::CONNECT, &request).is_none());
    let ok = StatusCode::OK;
    for (length, want) in [
        ("100000", Decision::Compress(Coding::Gzip)),
        ("10", Decision::Untouched),
        ("0", Decision::Untouched),
    ] {
        let answer = head(&[JSON, ("content-length", length)]);
        let shape = BodyShape::declared(&answer);
        assert_eq!(decide(&neg, ok, &answer, shape), want, "{length}");
    }
    let chunked = head(&[JSON]);
    let shape = BodyShape::declared(&chunked);
    assert_eq!(
        decide(&neg, ok, &chunked, shape),
        Decision::Compress(Coding::Gzip)
    );
}

#[test]
fn compressing_rewrites_the_head() {
    let mut headers = head(&[
        JSON,
        ("content-length", "100000"),
        ("accept-ranges", "bytes"),
        ("etag", "\"v1\""),
        ("vary", "Origin"),
    ]);
    rewrite_head(&mut headers, Decision::Compress(Coding::Br));
    assert_eq!(headers["content-encoding"], "br");
    assert!(!headers.contains_key("content-length"));
    assert!(!headers.contains_key("accept-ranges"));
    assert_eq!(headers["etag"], "W/\"v1\"");
    assert_eq!(headers["vary"], "Origin, Accept-Encoding");
    // a weak validator stays as it is
    let mut headers = head(&[("etag", "W/\"v1\"")]);
    rewrite_head(&mut headers, Decision::Compress(Coding::Gzip));
    assert_eq!(headers["etag"], "W/\"v1\"");
}

#[test]
fn vary_is_merged_once() {
    let vary = |existing: &[&str], decision| {
        let pairs: Vec<(&str, &str)> = existing.iter().map(|v| ("vary", *v)).collect();
        let mut headers = head(&pairs);
        rewrite_head(&mut headers, decision);
        let all: Vec<&str> = headers
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        all.join(" | ")
    };
    assert_eq!(vary(&[], Decision::VaryOnly), "Accept-Encoding");
    assert_eq!(
        vary(&["Origin", "Cookie"], Decision::VaryOnly),
        "Origin, Cookie, Accept-Encoding"
    );
    assert_eq!(
        vary(&["origin, accept-encoding"], Decision::VaryOnly),
        "origin, accept-encoding"
    );
    assert_eq!(vary(&["*"], Decision::VaryOnly), "*");
    assert_eq!(vary(&["Origin"], Decision::Untouched), "Origin");
    // VaryOnly adds nothing else
    let mut headers = head(&[("etag", "\"v1\""), ("content-length", "9")]);
    rewrite_head(&mut headers, Decision::VaryOnly);
    assert_eq!(headers["etag"], "\"v1\"");
    assert_eq!(headers["content-length"], "9");
    assert!(!headers.contains_key("content-encoding"));
}
