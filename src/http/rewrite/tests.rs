use super::*;
use crate::config::{Endpoint, Pattern, ServerAddr};
use crate::template::Captures;

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

fn strict() -> PathRules {
    PathRules::default()
}

/// `target` of `rewrite` for `uri` matched over `matched_len` bytes, as text (`None`: as is).
fn sent(rewrite: &Rewrite, uri: &str, matched_len: usize) -> Result<Option<String>, ProxyError> {
    let uri: Uri = uri.parse().unwrap();
    let target = rewrite.target(&uri, matched_len, None, strict())?;
    Ok(target.map(|pq| pq.as_str().to_string()))
}

fn strip(p: &str) -> Rewrite {
    Rewrite::new(&prefix(p), &UpstreamTarget::StripPrefix, true)
}

#[test]
fn strip_keeps_leading_slash_and_query() {
    let s = |uri, len| sent(&strip("/api/"), uri, len).unwrap().unwrap();
    assert_eq!(s("/api/users?x=1", 5), "/users?x=1");
    assert_eq!(s("/api/users?x=1", 4), "/users?x=1");
    assert_eq!(s("/api", 4), "/");
    assert_eq!(s("/api/admin?x=/../", 10), "/?x=/../");
}

#[test]
fn strip_and_replace_keep_percent_escapes() {
    // canonical already: an escaped space, an encoded slash the server keeps, a reserved `%3A`
    for (raw, want) in [
        ("/api/my%20notes.md", "/my%20notes.md"),
        ("/api/contents/a%2Fb?x=%20", "/contents/a%2Fb?x=%20"),
        ("/api/event/%24a%3Ab", "/event/%24a%3Ab"),
    ] {
        assert_eq!(
            sent(&strip("/api/"), raw, 5).unwrap().unwrap(),
            want,
            "{raw}"
        );
    }
    let r = Rewrite::new(
        &prefix("/api/"),
        &UpstreamTarget::ReplacePrefix("/v2/".into()),
        true,
    );
    assert_eq!(
        sent(&r, "/api/my%20notes.md", 5).unwrap().unwrap(),
        "/v2/my%20notes.md"
    );
}

#[test]
fn strip_never_leaves_a_dot_segment() {
    for (raw, len) in [
        ("/api..", 4),
        ("/api.", 4),
        ("/api..;x/y", 4),
        ("/api../y?q", 4),
    ] {
        assert!(sent(&strip("/api"), raw, len).is_err(), "{raw}");
    }
}

#[test]
fn upstream_path_replaces_the_matched_prefix() {
    let r = Rewrite::new(
        &prefix("/api/"),
        &UpstreamTarget::ReplacePrefix("/v2/".into()),
        true,
    );
    let s = |uri, len| sent(&r, uri, len).unwrap().unwrap();
    assert_eq!(s("/api/users?x=1", 5), "/v2/users?x=1");
    assert_eq!(s("/api/", 5), "/v2/");
    assert_eq!(s("/api", 4), "/v2/");
    let exact = Rewrite::new(
        &PathMatch::Exact("/old".into()),
        &UpstreamTarget::ReplacePrefix("/new/place".into()),
        true,
    );
    assert_eq!(sent(&exact, "/old/?a", 5).unwrap().unwrap(), "/new/place?a");
    let as_is = Rewrite::new(&prefix("/"), &UpstreamTarget::AsIs, true);
    assert_eq!(sent(&as_is, "/x?y", 1).unwrap(), None);
    // `/api` + `..` is no dot segment, `/v2` + `..` is not either
    let bare = Rewrite::new(
        &prefix("/api"),
        &UpstreamTarget::ReplacePrefix("/v2".into()),
        true,
    );
    assert_eq!(sent(&bare, "/api..", 4).unwrap().unwrap(), "/v2..");
    let root = Rewrite::new(
        &prefix("/api"),
        &UpstreamTarget::ReplacePrefix("/".into()),
        true,
    );
    assert!(sent(&root, "/api..", 4).is_err());
}

fn vars<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
    id: &'a crate::request_id::RequestId,
    captures: Option<&'a regex::CaptureLocations>,
) -> Vars<'a> {
    Vars {
        client_ip_value: None,
        client_ip: "192.0.2.1".parse().unwrap(),
        host: "app.example.com",
        port: 443,
        scheme: "https",
        uri,
        request_id: id,
        headers,
        captures,
        client_cert: None,
    }
}

/// The target `text` (a `rewrite` on `regex`) makes of `uri`.
fn rewritten(regex: &str, text: &str, uri: &str) -> Result<String, ProxyError> {
    rewritten_with(regex, text, uri, HeaderMap::new())
}

fn rewritten_with(
    regex: &str,
    text: &str,
    uri: &str,
    headers: HeaderMap,
) -> Result<String, ProxyError> {
    let re = Pattern::new(regex).unwrap();
    let names: Vec<Option<&str>> = re.regex().capture_names().collect();
    let template = Template::parse(text, Captures { names: &names }).unwrap();
    let matcher = PathMatch::Regex(re.clone());
    let r = Rewrite::new(&matcher, &UpstreamTarget::Rewrite(template), true);
    assert!(r.uses_vars());
    let uri: Uri = uri.parse().unwrap();
    let mut locs = re.regex().capture_locations();
    re.regex().captures_read(&mut locs, uri.path()).unwrap();
    let id = crate::request_id::RequestId::from_static("id");
    let v = vars(&uri, &headers, &id, Some(&locs));
    let pq = r.target(&uri, uri.path().len(), Some(&v), strict())?;
    Ok(pq.unwrap().as_str().to_string())
}

#[test]
fn rewrite_expands_captures_and_keeps_the_query_unless_it_writes_one() {
    let avatar = r"^/u/(?<id>[0-9]+)/avatar$";
    let r = |text, uri| rewritten(avatar, text, uri).unwrap();
    assert_eq!(
        r("/avatars/{id}?size={query.s}", "/u/42/avatar?s=64&x=1"),
        "/avatars/42?size=64"
    );
    assert_eq!(r("/avatars/{id}", "/u/42/avatar?s=64"), "/avatars/42?s=64");
    assert_eq!(r("/avatars/{1}", "/u/42/avatar"), "/avatars/42");
    // a trailing `?`: no query at all
    assert_eq!(r("/avatars/{id}?", "/u/42/avatar?s=64"), "/avatars/42");
    assert_eq!(
        r("/a/{id}?id={id}&{query}", "/u/7/avatar?s=1"),
        "/a/7?id=7&s=1"
    );
    assert_eq!(r("{uri}", "/u/7/avatar?s=1"), "/u/7/avatar?s=1");
    assert_eq!(r("{path}/x", "/u/7/avatar?s=1"), "/u/7/avatar/x?s=1");
}

#[test]
fn a_rewrite_that_is_no_canonical_target_is_refused() {
    let any = r"^/f/(.*)$";
    let bad = |text, uri| rewritten(any, text, uri).unwrap_err();
    // a query argument climbing out of the prefix, an encoded slash, merged slashes, a space
    assert!(matches!(
        bad("/files/{query.n}", "/f/x?n=../../etc"),
        ProxyError::BadTarget
    ));
    assert!(matches!(
        bad("/files/{query.n}", "/f/x?n=a%2Fb"),
        ProxyError::BadTarget
    ));
    assert!(matches!(
        bad("/files/{query.n}/x", "/f/x"),
        ProxyError::BadTarget
    ));
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static("a b"));
    let spaced = rewritten_with(any, "/files?q={header.x-a}", "/f/x", headers);
    assert!(matches!(spaced, Err(ProxyError::BadTarget)));
    assert_eq!(
        rewritten(any, "/files/{1}", "/f/a/b").unwrap(),
        "/files/a/b"
    );
    assert_eq!(
        rewritten(any, "/files/{1}", "/f/my%20notes.md").unwrap(),
        "/files/my%20notes.md"
    );
}

fn upstream_self<'a>(
    host: Option<&'a HeaderValue>,
    servers: &'a [UpstreamServer],
) -> UpstreamSelf<'a> {
    UpstreamSelf {
        scheme: "http",
        host,
        server: Some("10.0.0.7:8000".parse().unwrap()),
        servers,
    }
}

/// The `Location` the client gets for an upstream's `location` on a route rewritten by `r`.
fn mapped(r: &Rewrite, location: &str) -> String {
    let servers = [UpstreamServer {
        addr: Endpoint::Tcp(ServerAddr {
            host: "api.internal".into(),
            port: 8000,
        }),
        weight: 1,
    }];
    let sent = HeaderValue::from_static("app.example.com");
    let upstream = upstream_self(Some(&sent), &servers);
    let authority = HeaderValue::from_static("app.example.com:8443");
    let client = ClientOrigin {
        scheme: "https",
        authority: &authority,
    };
    let mut headers = HeaderMap::new();
    headers.insert(LOCATION, HeaderValue::from_str(location).unwrap());
    r.map_location(StatusCode::FOUND, &mut headers, &upstream, &client);
    headers[LOCATION].to_str().unwrap().to_string()
}

#[test]
fn locations_naming_the_upstream_come_back_to_the_client() {
    let replace = Rewrite::new(
        &prefix("/api/"),
        &UpstreamTarget::ReplacePrefix("/v2/".into()),
        true,
    );
    let m = |l| mapped(&replace, l);
    let client = "https://app.example.com:8443";
    assert_eq!(
        m("http://10.0.0.7:8000/v2/x?y=1"),
        format!("{client}/api/x?y=1")
    );
    assert_eq!(m("http://API.internal:8000/v2/"), format!("{client}/api/"));
    assert_eq!(
        m("http://app.example.com/v2/x#f"),
        format!("{client}/api/x#f")
    );
    assert_eq!(
        m("http://app.example.com:80/other"),
        format!("{client}/other")
    );
    assert_eq!(m("http://app.example.com"), client);
    // not the upstream: another host, port or scheme, or relative
    for other in [
        "http://elsewhere.test/v2/x",
        "http://10.0.0.7:8001/v2/x",
        "https://app.example.com/v2/x",
        "http://app.example.com.evil.test/v2/x",
        "/v2/x",
        "//app.example.com/v2/x",
    ] {
        assert_eq!(m(other), other);
    }
    let s = |l| mapped(&strip("/api"), l);
    assert_eq!(
        s("http://10.0.0.7:8000/login?next=/"),
        format!("{client}/api/login?next=/")
    );
    assert_eq!(s("http://10.0.0.7:8000"), format!("{client}/api/"));
    let exact = Rewrite::new(
        &PathMatch::Exact("/old".into()),
        &UpstreamTarget::ReplacePrefix("/new".into()),
        true,
    );
    assert_eq!(
        mapped(&exact, "http://api.internal:8000/new?a"),
        format!("{client}/old?a")
    );
    assert_eq!(
        mapped(&exact, "http://api.internal:8000/newer"),
        format!("{client}/newer")
    );
    let off = Rewrite::new(&prefix("/api/"), &UpstreamTarget::StripPrefix, false);
    assert_eq!(
        mapped(&off, "http://10.0.0.7:8000/x"),
        "http://10.0.0.7:8000/x"
    );
}

#[test]
fn only_redirects_and_created_are_looked_at() {
    let r = strip("/api/");
    let servers = [];
    let upstream = upstream_self(None, &servers);
    let authority = HeaderValue::from_static("h");
    let client = ClientOrigin {
        scheme: "http",
        authority: &authority,
    };
    let mut headers = HeaderMap::new();
    headers.insert(LOCATION, HeaderValue::from_static("http://10.0.0.7:8000/x"));
    r.map_location(StatusCode::OK, &mut headers, &upstream, &client);
    assert_eq!(headers[LOCATION], "http://10.0.0.7:8000/x");
    r.map_location(StatusCode::CREATED, &mut headers, &upstream, &client);
    assert_eq!(headers[LOCATION], "http://h/api/x");
}

#[test]
fn authorities_split() {
    assert_eq!(split_authority("a.test", 80), Some(("a.test", 80)));
    assert_eq!(split_authority("a.test:81", 80), Some(("a.test", 81)));
    assert_eq!(
        split_authority("[2001:db8::1]:8080", 80),
        Some(("2001:db8::1", 8080))
    );
    assert_eq!(
        split_authority("[2001:db8::1]", 443),
        Some(("2001:db8::1", 443))
    );
    assert_eq!(split_authority("a.test:x", 80), None);
    assert_eq!(split_authority(":80", 80), None);
}
