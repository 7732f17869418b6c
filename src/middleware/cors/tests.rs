use super::*;
use std::time::Duration;

fn policy(origins: CorsOrigins, headers: CorsHeaders, credentials: bool) -> CorsPolicy {
    CorsPolicy::compile(&Cors {
        origins,
        methods: vec![Method::GET, Method::POST, Method::PATCH],
        headers,
        credentials,
        expose: vec![HeaderName::from_static("x-total")],
        max_age: Duration::from_secs(600),
    })
}

fn app() -> CorsPolicy {
    let origins = CorsOrigins::List(vec![
        OriginPattern::Exact("https://app.example.com".into()),
        OriginPattern::Subdomains {
            scheme: "https://".into(),
            suffix: ".example.org".into(),
        },
    ]);
    let headers = CorsHeaders::List(vec![
        HeaderName::from_static("authorization"),
        HeaderName::from_static("content-type"),
    ]);
    policy(origins, headers, true)
}

fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(*name, HeaderValue::from_static(value));
    }
    h
}

fn preflight(origin: &'static str, method: &'static str, asked: &'static str) -> HeaderMap {
    request(&[
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", asked),
    ])
}

fn applied(
    verdict: &Verdict<'_>,
    status: u16,
    upstream: &[(&'static str, &'static str)],
) -> HeaderMap {
    let mut resp = Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    *resp.headers_mut() = request(upstream);
    verdict.apply(&mut resp);
    resp.into_parts().0.headers
}

fn get<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn allowed_preflight_gets_the_grant() {
    let p = app();
    let v = p.judge(
        &Method::OPTIONS,
        &preflight(
            "https://app.example.com",
            "PATCH",
            "content-type,Authorization",
        ),
    );
    assert_eq!(v.preflight(), Some(Ok(())));
    let h = applied(&v, 204, &[]);
    assert_eq!(
        get(&h, "access-control-allow-origin"),
        ["https://app.example.com"]
    );
    assert_eq!(get(&h, "access-control-allow-credentials"), ["true"]);
    assert_eq!(
        get(&h, "access-control-allow-methods"),
        ["GET, POST, PATCH"]
    );
    assert_eq!(
        get(&h, "access-control-allow-headers"),
        ["authorization, content-type"]
    );
    assert_eq!(get(&h, "access-control-max-age"), ["600"]);
    assert_eq!(
        get(&h, "vary"),
        ["Origin, Access-Control-Request-Method, Access-Control-Request-Headers"]
    );
    // a preflight refused by a rate limit gets no grant
    let h = applied(&v, 429, &[]);
    assert!(h.get("access-control-allow-origin").is_none());
}

#[test]
fn preflight_refusals_name_the_reason() {
    let p = app();
    let judge = |h: HeaderMap| p.judge(&Method::OPTIONS, &h).preflight();
    let refused = |why| Some(Err(why));
    let evil = preflight("https://evil.example", "GET", "");
    assert_eq!(judge(evil), refused(PreflightRefusal::Origin));
    let delete = preflight("https://app.example.com", "DELETE", "");
    assert_eq!(judge(delete), refused(PreflightRefusal::Method));
    // methods compare as sent (browsers do)
    let patch = preflight("https://app.example.com", "patch", "");
    assert_eq!(judge(patch), refused(PreflightRefusal::Method));
    let debug = preflight("https://app.example.com", "GET", "content-type, x-debug");
    assert_eq!(judge(debug), refused(PreflightRefusal::Header));
    assert_eq!(
        judge(preflight("https://app.example.com", "GET", " , ")),
        Some(Ok(()))
    );
    let v = p.judge(
        &Method::OPTIONS,
        &preflight("https://evil.example", "GET", ""),
    );
    let h = applied(&v, 403, &[]);
    assert!(h.get("access-control-allow-origin").is_none());
    assert_eq!(get(&h, "vary").len(), 1);
    // OPTIONS without Access-Control-Request-Method is an ordinary request
    let plain = request(&[("origin", "https://app.example.com")]);
    assert_eq!(p.judge(&Method::OPTIONS, &plain).preflight(), None);
}

#[test]
fn any_header_echoes_the_request() {
    let p = policy(CorsOrigins::Any, CorsHeaders::Any, false);
    let v = p.judge(
        &Method::OPTIONS,
        &preflight("https://x.test", "GET", "x-anything, authorization"),
    );
    let h = applied(&v, 204, &[]);
    assert_eq!(get(&h, "access-control-allow-origin"), ["*"]);
    assert_eq!(
        get(&h, "access-control-allow-headers"),
        ["x-anything, authorization"]
    );
    assert!(h.get("access-control-allow-credentials").is_none());
}

#[test]
fn actual_requests_replace_the_upstreams_headers_and_merge_vary() {
    let p = app();
    let upstream = [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-methods", "PUT"),
        ("vary", "Accept-Encoding"),
    ];
    let v = p.judge(
        &Method::POST,
        &request(&[("origin", "https://app.example.com")]),
    );
    let h = applied(&v, 200, &upstream);
    assert_eq!(
        get(&h, "access-control-allow-origin"),
        ["https://app.example.com"]
    );
    assert_eq!(get(&h, "access-control-allow-credentials"), ["true"]);
    assert_eq!(get(&h, "access-control-expose-headers"), ["x-total"]);
    assert!(h.get("access-control-allow-methods").is_none());
    assert_eq!(get(&h, "vary"), ["Accept-Encoding, Origin"]);
    // a Vary that already covers Origin is left alone
    let h = applied(&v, 200, &[("vary", "accept-encoding, origin")]);
    assert_eq!(get(&h, "vary"), ["accept-encoding, origin"]);
    let h = applied(&v, 200, &[("vary", "*")]);
    assert_eq!(get(&h, "vary"), ["*"]);
}

#[test]
fn disallowed_or_originless_requests_get_nothing_but_vary() {
    let p = app();
    let upstream = [("access-control-allow-origin", "https://evil.example")];
    for headers in [request(&[("origin", "https://evil.example")]), request(&[])] {
        let h = applied(&p.judge(&Method::GET, &headers), 200, &upstream);
        assert!(
            h.get("access-control-allow-origin").is_none(),
            "{headers:?}"
        );
        assert_eq!(get(&h, "vary"), ["Origin"]);
    }
    // a method the policy does not list gets no grant either
    let put = request(&[("origin", "https://app.example.com")]);
    let h = applied(&p.judge(&Method::PUT, &put), 200, &[]);
    assert!(h.get("access-control-allow-origin").is_none());
}

#[test]
fn subdomain_patterns() {
    let p = app();
    let allowed = |o: &'static str| {
        let h = request(&[("origin", o)]);
        matches!(p.judge(&Method::GET, &h).kind, Kind::Actual(_))
    };
    assert!(allowed("https://a.example.org"));
    assert!(allowed("https://a.b.example.org"));
    assert!(allowed("HTTPS://A.Example.ORG"));
    assert!(!allowed("https://example.org"));
    assert!(!allowed("https://.example.org"));
    assert!(!allowed("http://a.example.org"));
    assert!(!allowed("https://a.example.org:8443"));
    assert!(!allowed("https://evil.com/.example.org"));
    assert!(!allowed("https://a.example.org.evil.com"));
    assert!(!allowed("https://aexample.org"));
}
