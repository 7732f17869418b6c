use super::*;
use crate::config::HeaderRule;
use crate::template::{Captures, Template};
use http::Uri;

fn literal(v: &str) -> RuleValue {
    RuleValue::Literal(HeaderValue::from_str(v).unwrap())
}

fn template(text: &str, slot: usize) -> RuleValue {
    let template = Template::parse(text, Captures::default()).unwrap();
    RuleValue::Template { template, slot }
}

fn rule(name: &str, op: HeaderOp) -> HeaderRule {
    HeaderRule {
        name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
        op,
    }
}

fn rules(rules: Vec<HeaderRule>, templates: usize) -> HeaderRules {
    HeaderRules { rules, templates }
}

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn all<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn set_add_default_remove() {
    let r = rules(
        vec![
            rule("x-set", HeaderOp::Set(vec![literal("one")])),
            rule("x-two", HeaderOp::Set(vec![literal("a"), literal("b")])),
            rule("x-add", HeaderOp::Add(vec![literal("added")])),
            rule("x-default", HeaderOp::Default(vec![literal("d")])),
            rule("x-kept", HeaderOp::Default(vec![literal("d")])),
            rule("server", HeaderOp::Remove),
        ],
        0,
    );
    let mut h = map(&[
        ("x-set", "old1"),
        ("x-set", "old2"),
        ("x-add", "first"),
        ("x-kept", "upstream's"),
        ("server", "nginx/1.25"),
        ("x-other", "untouched"),
    ]);
    apply(&r, &mut h, &mut []);
    assert_eq!(all(&h, "x-set"), ["one"]);
    assert_eq!(all(&h, "x-two"), ["a", "b"]);
    assert_eq!(all(&h, "x-add"), ["first", "added"]);
    assert_eq!(all(&h, "x-default"), ["d"]);
    assert_eq!(all(&h, "x-kept"), ["upstream's"]);
    assert!(h.get("server").is_none());
    assert_eq!(all(&h, "x-other"), ["untouched"]);
}

struct Request {
    uri: Uri,
    headers: HeaderMap,
    id: crate::request_id::RequestId,
}

impl Request {
    fn new(uri: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            uri: uri.parse().unwrap(),
            headers: map(headers),
            id: crate::request_id::RequestId::from_static("req-7"),
        }
    }

    fn vars(&self) -> Vars<'_> {
        Vars {
            client_ip_value: None,
            client_ip: "203.0.113.7".parse().unwrap(),
            host: "app.example.com",
            port: 443,
            scheme: "https",
            uri: &self.uri,
            request_id: &self.id,
            headers: &self.headers,
            captures: None,
            client_cert: None,
        }
    }
}

#[test]
fn placeholders_expand_from_the_request() {
    let r = rules(
        vec![
            rule("x-client", HeaderOp::Set(vec![template("{client_ip}", 0)])),
            rule(
                "x-from",
                HeaderOp::Add(vec![literal("lit"), template("{scheme}://{host}{uri}", 1)]),
            ),
            rule(
                "x-ua",
                HeaderOp::Default(vec![template("ua={header.user-agent}", 2)]),
            ),
            rule(
                "x-id",
                HeaderOp::Set(vec![template("{request_id} {query.s}", 3)]),
            ),
        ],
        4,
    );
    let req = Request::new("/p?s=64", &[("user-agent", "curl/8")]);
    let dropped = IntCounter::new("t", "t").unwrap();
    let expanded = expand(&r, &req.vars(), &dropped);
    assert_eq!(expanded.len(), 4);
    let mut h = map(&[("x-client", "spoofed")]);
    apply(&r, &mut h, &mut expanded.clone());
    assert_eq!(all(&h, "x-client"), ["203.0.113.7"]);
    assert_eq!(all(&h, "x-from"), ["lit", "https://app.example.com/p?s=64"]);
    assert_eq!(all(&h, "x-ua"), ["ua=curl/8"]);
    assert_eq!(all(&h, "x-id"), ["req-7 64"]);
    assert_eq!(dropped.get(), 0);
}

#[test]
fn a_value_that_cannot_be_a_header_is_left_out_and_counted() {
    // a capture or a query argument could hold anything; here a template whose expansion has
    // a raw line break stands for it
    let bad = RuleValue::Template {
        template: crate::template::Template::from_parts(vec![crate::template::Part::Literal(
            "a\r\nInjected: 1".into(),
        )]),
        slot: 0,
    };
    let r = rules(
        vec![
            rule("x-user", HeaderOp::Set(vec![bad.clone()])),
            rule("x-more", HeaderOp::Add(vec![template("{host}", 1)])),
        ],
        2,
    );
    let req = Request::new("/", &[]);
    let dropped = IntCounter::new("t", "t").unwrap();
    let expanded = expand(&r, &req.vars(), &dropped);
    assert_eq!(dropped.get(), 1);
    // `set` whose only value is left out removes what the message had: a client's own value
    // must not pass where the rule meant to set one
    let mut h = map(&[("x-user", "client-claimed")]);
    apply(&r, &mut h, &mut expanded.clone());
    assert!(h.get("x-user").is_none());
    assert!(h.get("injected").is_none());
    assert_eq!(all(&h, "x-more"), ["app.example.com"]);
}

#[test]
fn percent_encoded_line_breaks_stay_encoded() {
    let r = rules(
        vec![rule("x-q", HeaderOp::Set(vec![template("{query.x}", 0)]))],
        1,
    );
    let req = Request::new("/?x=a%0d%0aInjected:%201", &[]);
    let dropped = IntCounter::new("t", "t").unwrap();
    let expanded = expand(&r, &req.vars(), &dropped);
    let mut h = HeaderMap::new();
    apply(&r, &mut h, &mut expanded.clone());
    assert_eq!(all(&h, "x-q"), ["a%0d%0aInjected:%201"]);
}

fn route_headers(prefix: Option<&str>, host: Option<&str>, request: HeaderRules) -> RouteHeaders {
    RouteHeaders {
        request,
        forwarded_prefix: prefix.map(|p| HeaderValue::from_str(p).unwrap()),
        upstream_host: host.map(|p| HeaderValue::from_str(p).unwrap()),
        ..RouteHeaders::default()
    }
}

#[test]
fn upstream_request_sets_prefix_then_rules_then_host() {
    let proto = rules(
        vec![rule(
            "x-forwarded-proto",
            HeaderOp::Set(vec![literal("https")]),
        )],
        0,
    );
    let route = route_headers(Some("/api"), Some("api.internal"), proto);
    let mut h = map(&[
        ("host", "app.example.com"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "app.example.com"),
    ]);
    upstream_request(&mut h, &route, &mut [], false);
    assert_eq!(all(&h, "host"), ["api.internal"]);
    assert_eq!(all(&h, "x-forwarded-host"), ["app.example.com"]);
    assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
    assert_eq!(all(&h, "x-forwarded-prefix"), ["/api"]);

    // a rule may remove the prefix header
    let remove = rules(vec![rule("x-forwarded-prefix", HeaderOp::Remove)], 0);
    let route = route_headers(Some("/api"), None, remove);
    let mut h = map(&[("host", "app.example.com")]);
    upstream_request(&mut h, &route, &mut [], false);
    assert!(h.get("x-forwarded-prefix").is_none());
    assert_eq!(all(&h, "host"), ["app.example.com"]);
}

#[test]
fn a_trusted_proxys_prefix_comes_first() {
    let route = route_headers(Some("/api"), None, HeaderRules::default());
    let prefixed = |sent: &[&str], trusted: bool| {
        let pairs: Vec<(&str, &str)> = sent.iter().map(|v| ("x-forwarded-prefix", *v)).collect();
        let mut h = map(&pairs);
        upstream_request(&mut h, &route, &mut [], trusted);
        all(&h, "x-forwarded-prefix").join(" + ")
    };
    assert_eq!(prefixed(&[], true), "/api");
    assert_eq!(prefixed(&["/outer/"], true), "/outer/api");
    assert_eq!(prefixed(&["/a, /b/", "c"], true), "/a/b/c/api");
    assert_eq!(prefixed(&["/"], true), "/api");
    // from an untrusted peer it is gone before this point; were it there, ours replaces it
    assert_eq!(prefixed(&["/evil"], false), "/api");
}

#[test]
fn response_rules_apply_last_and_only_when_there_are_any() {
    let none = HeaderRules::default();
    let mut rules_ = ResponseRules::new(&none);
    assert!(!rules_.needs_vars());
    let mut h = map(&[("server", "x")]);
    rules_.apply(&mut h);
    assert_eq!(all(&h, "server"), ["x"]);

    let some = rules(
        vec![
            rule("server", HeaderOp::Remove),
            rule("x-id", HeaderOp::Set(vec![template("{request_id}", 0)])),
        ],
        1,
    );
    let mut rules_ = ResponseRules::new(&some);
    assert!(rules_.needs_vars());
    let req = Request::new("/", &[]);
    rules_.expand(&req.vars(), &IntCounter::new("t", "t").unwrap());
    rules_.apply(&mut h);
    assert!(h.get("server").is_none());
    assert_eq!(all(&h, "x-id"), ["req-7"]);
}
