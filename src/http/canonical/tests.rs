use super::*;

fn canon(raw: &str) -> Result<String, BadPath> {
    path(raw, PathRules::default()).map(Cow::into_owned)
}

fn with(
    raw: &str,
    merge_slashes: bool,
    encoded_slashes: EncodedSlashes,
) -> Result<String, BadPath> {
    let rules = PathRules {
        merge_slashes,
        encoded_slashes,
        parameters: PathParameters::Reject,
    };
    path(raw, rules).map(Cow::into_owned)
}

/// With `path_parameters = "keep"`.
fn keeping_params(raw: &str) -> Result<String, BadPath> {
    let rules = PathRules {
        parameters: PathParameters::Keep,
        ..PathRules::default()
    };
    path(raw, rules).map(Cow::into_owned)
}

#[test]
fn canonical_paths_are_borrowed() {
    for p in [
        "/",
        "/a",
        "/a/b/",
        "/api/v1/users",
        "/a.b/c..d/.e/..f",
        "/~x/-_",
    ] {
        assert!(
            matches!(path(p, PathRules::default()), Ok(Cow::Borrowed(_))),
            "{p}"
        );
        assert_eq!(canon(p).unwrap(), p);
    }
}

#[test]
fn unreserved_are_decoded_the_rest_upper_cased() {
    assert_eq!(canon("/api/%61dmin/x").unwrap(), "/api/admin/x");
    assert_eq!(canon("/%7Euser/%2D%5F").unwrap(), "/~user/-_");
    assert_eq!(canon("/a%3fb%c3%a9").unwrap(), "/a%3Fb%C3%A9");
    assert_eq!(canon("/%41%42").unwrap(), "/AB");
    assert_eq!(canon("/a%20b").unwrap(), "/a%20b");
}

#[test]
fn dot_segments_are_resolved() {
    let cases = [
        ("/api/x/../admin/x", "/api/admin/x"),
        ("/api/./admin/x", "/api/admin/x"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/x/%2E%2E/admin/x", "/api/admin/x"),
        ("/api/x/.%2e/admin", "/api/admin"),
        ("/api/x/..%3b/admin", "/api/admin"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/..", "/"),
        ("/.", "/"),
        ("/a/./", "/a/"),
        ("/a/../", "/"),
    ];
    for (raw, want) in cases {
        assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn climbing_above_root_is_refused() {
    for raw in [
        "/..",
        "/../x",
        "/a/../../b",
        "/%2e%2e/x",
        "/./..",
        "/a/..%3B/..%3b",
    ] {
        assert_eq!(canon(raw), Err(BadPath::AboveRoot), "{raw}");
    }
    for raw in ["/..;/x", "/a/..;/..;"] {
        assert_eq!(keeping_params(raw), Err(BadPath::AboveRoot), "{raw}");
    }
}

#[test]
fn path_parameters_are_refused_or_kept_with_their_segment() {
    for raw in [
        "/api/admin;/x",
        "/api;x=1/admin",
        "/a/..;/b",
        "/login;jsessionid=1",
    ] {
        assert_eq!(canon(raw), Err(BadPath::Parameter), "{raw}");
    }
    let cases = [
        ("/api/x/..;/admin/x", "/api/admin/x"),
        ("/api/x/..;jsessionid=1/admin", "/api/admin"),
        ("/api/.;/admin/x", "/api/admin/x"),
        ("/login;jsessionid=1", "/login;jsessionid=1"),
        ("/a;b=c/d", "/a;b=c/d"),
    ];
    for (raw, want) in cases {
        assert_eq!(keeping_params(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn slashes_are_merged_unless_told_not_to() {
    assert_eq!(canon("//a///b//").unwrap(), "/a/b/");
    assert_eq!(canon("//").unwrap(), "/");
    assert_eq!(canon("/api//admin/x").unwrap(), "/api/admin/x");
    assert_eq!(canon("/a//../b").unwrap(), "/b");
    let keep = |p| with(p, false, EncodedSlashes::Reject);
    assert_eq!(keep("/a//b").unwrap(), "/a//b");
    assert_eq!(keep("/a//../b").unwrap(), "/a/b");
    assert_eq!(keep("//").unwrap(), "//");
}

#[test]
fn encoded_slashes_are_refused_or_kept_encoded() {
    assert_eq!(canon("/api/admin%2Fx"), Err(BadPath::EncodedSlash));
    assert_eq!(canon("/api/admin%2fx"), Err(BadPath::EncodedSlash));
    assert_eq!(canon("/a%5Cb"), Err(BadPath::EncodedSlash));
    let keep = |p| with(p, true, EncodedSlashes::Keep);
    assert_eq!(keep("/a%2fb").unwrap(), "/a%2Fb");
    // a kept %2F never hides a dot segment from the edge (an origin decoding it would climb)
    for raw in [
        "/a/..%2F/b",
        "/api/x/..%2Fadmin",
        "/a/.%2Fb",
        "/api/%2F../admin",
    ] {
        assert_eq!(keep(raw), Err(BadPath::EncodedSlash), "{raw}");
    }
    assert_eq!(keep("/a/b%2F.c").unwrap(), "/a/b%2F.c");
    assert_eq!(keep("/a%5cb"), Err(BadPath::EncodedSlash));
}

#[test]
fn bytes_no_origin_agrees_on_are_refused() {
    assert_eq!(canon("/a\\b"), Err(BadPath::Backslash));
    assert_eq!(canon("/a%00"), Err(BadPath::Control));
    assert_eq!(canon("/a%0d%0a"), Err(BadPath::Control));
    assert_eq!(canon("/a%7f"), Err(BadPath::Control));
    assert_eq!(canon("/a\u{1}"), Err(BadPath::Control));
    assert_eq!(canon("/é"), Err(BadPath::NonAscii));
    assert_eq!(canon("/a b"), Err(BadPath::Space));
    assert_eq!(canon("/a%"), Err(BadPath::BadPercent));
    assert_eq!(canon("/a%4"), Err(BadPath::BadPercent));
    assert_eq!(canon("/a%zz"), Err(BadPath::BadPercent));
    assert_eq!(canon("*"), Err(BadPath::NotAbsolute));
    assert_eq!(canon(""), Err(BadPath::NotAbsolute));
}

fn auth(raw: &str) -> Result<(String, String, Option<u16>), BadHost> {
    authority(raw).map(|a| (a.value.to_string(), a.host().to_string(), a.port))
}

#[test]
fn authorities_are_made_canonical() {
    let ok = |raw: &str, value: &str, host: &str, port: Option<u16>| {
        assert_eq!(auth(raw), Ok((value.into(), host.into(), port)), "{raw}");
    };
    ok(
        "app.example.com",
        "app.example.com",
        "app.example.com",
        None,
    );
    ok(
        "App.Example.COM.:8080",
        "app.example.com:8080",
        "app.example.com",
        Some(8080),
    );
    ok("x.wild.example.", "x.wild.example", "x.wild.example", None);
    ok("host:", "host", "host", None);
    ok("host:080", "host:80", "host", Some(80));
    ok("127.0.0.1:9", "127.0.0.1:9", "127.0.0.1", Some(9));
    ok("[::1]", "[::1]", "[::1]", None);
    ok("[0:0::1]:8443", "[::1]:8443", "[::1]", Some(8443));
    ok("[2001:DB8::1]", "[2001:db8::1]", "[2001:db8::1]", None);
    ok("api_1", "api_1", "api_1", None);
    assert!(matches!(
        authority("a.test:80").map(|a| a.value),
        Ok(Cow::Borrowed(_))
    ));
}

#[test]
fn bad_authorities_are_refused() {
    let cases = [
        ("", BadHost::Empty),
        (".", BadHost::Empty),
        ("evil.test/.wild.example", BadHost::Character),
        ("evil.test\\.wild.example", BadHost::Character),
        ("user@x.wild.example", BadHost::Character),
        ("x.wild .example", BadHost::Character),
        ("x%2ewild.example", BadHost::Character),
        ("x.wild.example:80:80", BadHost::Port),
        ("x.wild.example:abc", BadHost::Port),
        ("x:65536", BadHost::Port),
        ("x:123456", BadHost::Port),
        ("x:-1", BadHost::Port),
        ("a..b", BadHost::EmptyLabel),
        (".a", BadHost::EmptyLabel),
        ("a..", BadHost::EmptyLabel),
        ("[::1", BadHost::Ipv6),
        ("[::1]x", BadHost::Port),
        ("[fe80::1%25eth0]", BadHost::Ipv6),
        ("[v1.x]", BadHost::Ipv6),
        ("[1.2.3.4]", BadHost::Ipv6),
    ];
    for (raw, want) in cases {
        assert_eq!(auth(raw), Err(want), "{raw}");
    }
}

#[test]
fn methods_are_upper_case_and_never_connect_or_trace() {
    let m = |s: &str| http::Method::from_bytes(s.as_bytes()).unwrap();
    assert_eq!(method(&m("GET")), Ok(()));
    assert_eq!(method(&m("PROPFIND")), Ok(()));
    assert_eq!(method(&m("M-SEARCH")), Ok(()));
    assert_eq!(method(&m("post")), Err(BadMethod::Case));
    assert_eq!(method(&m("Get")), Err(BadMethod::Case));
    assert_eq!(method(&m("purge")), Err(BadMethod::Case));
    assert_eq!(method(&m("CONNECT")), Err(BadMethod::NotAllowed));
    assert_eq!(method(&m("TRACE")), Err(BadMethod::NotAllowed));
}

#[test]
fn forwarded_hops_in_every_written_form() {
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    assert_eq!(forwarded_hop("203.0.113.7"), ip("203.0.113.7"));
    assert_eq!(forwarded_hop(" 203.0.113.7:4711 "), ip("203.0.113.7"));
    assert_eq!(forwarded_hop("2001:db8::1"), ip("2001:db8::1"));
    assert_eq!(forwarded_hop("[2001:db8::1]"), ip("2001:db8::1"));
    assert_eq!(forwarded_hop("[2001:db8::1]:443"), ip("2001:db8::1"));
    for bad in [
        "unknown",
        "",
        " ",
        "_hidden",
        "1.2.3",
        "1.2.3.4:",
        "1.2.3.4:99999",
        "[1.2.3.4]",
        "[::1]x",
        "[::1",
    ] {
        assert_eq!(forwarded_hop(bad), None, "{bad:?}");
    }
}

#[test]
fn edge_headers_are_known_by_their_lower_case_names() {
    assert!(claims_to_be_edge("x-real-ip"));
    assert!(claims_to_be_edge("x-original-url"));
    assert!(!claims_to_be_edge("x-forwarded-for"));
    assert!(!claims_to_be_edge("accept"));
}
