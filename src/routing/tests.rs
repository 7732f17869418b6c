use super::*;
use crate::config::{Action, Pattern, Respond, Route};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};

fn route(m: PathMatch) -> Route {
    let action = Action::Respond(Respond {
        status: StatusCode::OK,
        body: Bytes::new(),
        content_type: HeaderValue::from_static("text/plain"),
    });
    Route {
        matcher: m,
        conditions: Conditions::default(),
        action,
        policy: Default::default(),
        cors: None,
        encode: Default::default(),
        error_pages: Default::default(),
        intercept_errors: false,
        headers: Default::default(),
        internal: false,
        basic_auth: None,
        forward_auth: None,
    }
}

fn prefix(p: &str) -> Route {
    route(PathMatch::Prefix(p.into()))
}

fn exact(p: &str) -> Route {
    route(PathMatch::Exact(p.into()))
}

fn regex(r: &str) -> Route {
    route(PathMatch::Regex(Pattern::new(r).unwrap()))
}

fn when(mut r: Route, conditions: Conditions) -> Route {
    r.conditions = conditions;
    r
}

fn methods(list: &[&str]) -> Conditions {
    Conditions {
        methods: list.iter().map(|m| m.parse().unwrap()).collect(),
        ..Conditions::default()
    }
}

fn site(hosts: Vec<HostPattern>, routes: Vec<Route>) -> Site {
    Site {
        hosts,
        tls: None,
        redirect_https: false,
        hsts: None,
        routes,
        error_pages: Default::default(),
        response_headers: Default::default(),
        client_auth: None,
        acme: None,
    }
}

fn sites() -> Vec<Site> {
    vec![
        site(
            vec![HostPattern::Exact("app.example.com".into())],
            vec![
                prefix("/"),
                prefix("/api/"),
                prefix("/api/v2/"),
                exact("/healthz"),
            ],
        ),
        site(
            vec![HostPattern::Wildcard(".example.com".into())],
            vec![prefix("/")],
        ),
        site(
            vec![HostPattern::Wildcard(".deep.example.com".into())],
            vec![prefix("/")],
        ),
        site(vec![HostPattern::Any], vec![prefix("/only/")]),
    ]
}

/// A request for `target` (path and query) with `method` and `headers`.
struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Req {
    fn new(method: &str, target: &str, headers: &[(&str, &str)]) -> Req {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Req {
            method: method.parse().unwrap(),
            uri: target.parse().unwrap(),
            headers: map,
        }
    }

    fn get(target: &str) -> Req {
        Req::new("GET", target, &[])
    }

    fn view(&self) -> Request<'_> {
        Request::new(&self.method, &self.uri, &self.headers)
    }
}

fn route_of(r: &Router, host: &str, req: &Req) -> Option<RouteMatch> {
    r.route_in(r.site_for(host)?, &req.view())
}

#[test]
fn hosts_by_precedence() {
    let r = Router::new(&sites());
    let site = |host: &str, path: &str| route_of(&r, host, &Req::get(path)).map(|m| m.site);
    assert_eq!(site("app.example.com", "/"), Some(0));
    assert_eq!(site("x.example.com", "/"), Some(1));
    assert_eq!(site("a.b.example.com", "/"), Some(1));
    assert_eq!(site("x.deep.example.com", "/"), Some(2));
    assert_eq!(site("example.com", "/only/x"), Some(3));
    assert_eq!(site("other.org", "/"), None);
}

#[test]
fn paths_by_precedence() {
    let r = Router::new(&sites());
    let at =
        |p: &str| route_of(&r, "app.example.com", &Req::get(p)).map(|m| (m.route, m.matched_len));
    assert_eq!(at("/"), Some((0, 1)));
    assert_eq!(at("/api/users"), Some((1, 5)));
    assert_eq!(at("/api/v2/x"), Some((2, 8)));
    assert_eq!(at("/healthz"), Some((3, 8)));
    assert_eq!(at("/healthz/x"), Some((0, 1)));
    // an exact path with a trailing slash, a prefix without its own
    assert_eq!(at("/healthz/"), Some((3, 9)));
    assert_eq!(at("/healthz//"), Some((0, 1)));
    assert_eq!(at("/api"), Some((1, 4)));
    assert_eq!(at("/api/v2"), Some((2, 7)));
    assert_eq!(at("/apix"), Some((0, 1)));
}

/// exact, then regex routes in config order, then the longest prefix; whatever the file order.
#[test]
fn exact_then_regex_in_file_order_then_longest_prefix() {
    let routes = vec![
        prefix("/u/"),                       // 0
        regex(r"^/u/(?<id>[0-9]+)/avatar$"), // 1
        regex(r"^/u/[0-9]+"),                // 2
        exact("/u/1/avatar"),                // 3
        prefix("/u/1/"),                     // 4
        regex(r"\.png$"),                    // 5
    ];
    let r = Router::new(&[site(vec![HostPattern::Any], routes)]);
    let at = |p: &str| route_of(&r, "x", &Req::get(p)).map(|m| (m.route, m.matched_len));
    assert_eq!(at("/u/1/avatar"), Some((3, 11)));
    assert_eq!(at("/u/2/avatar"), Some((1, 11)));
    assert_eq!(at("/u/1/x"), Some((2, 6))); // regex 2 before the longer prefix 4
    assert_eq!(at("/u/x/avatar.png"), Some((5, 15)));
    assert_eq!(at("/u/x"), Some((0, 3)));
    assert_eq!(at("/v"), None);
}

#[test]
fn regex_captures_are_positions_in_the_path() {
    let routes = vec![regex(r"^/u/(?<id>[0-9]+)/(avatar|banner)$"), prefix("/")];
    let r = Router::new(&[site(vec![HostPattern::Any], routes)]);
    let m = route_of(&r, "x", &Req::get("/u/42/banner?s=1")).unwrap();
    let captures = m.captures.unwrap();
    assert_eq!(captures.get(1), Some((3, 5)));
    assert_eq!(captures.get(2), Some((6, 12)));
    // no captures (and no allocation for them) on other routes
    assert!(route_of(&r, "x", &Req::get("/u/x"))
        .unwrap()
        .captures
        .is_none());
}

/// A route whose conditions fail is passed over: for the next route of the same path in file
/// order, then the next kind (regex, prefix), then shorter prefixes.
#[test]
fn conditions_pass_a_route_over_for_the_next_candidate() {
    let websocket = Conditions {
        headers: vec![(
            "upgrade".parse().unwrap(),
            ValueMatch::Exact("websocket".into()),
        )],
        ..Conditions::default()
    };
    let json = Conditions {
        query: vec![("format".into(), ValueMatch::Exact("json".into()))],
        ..Conditions::default()
    };
    let routes = vec![
        when(exact("/x"), methods(&["POST"])),        // 0
        when(exact("/x"), methods(&["GET", "HEAD"])), // 1
        when(regex("^/x"), json.clone()),             // 2
        when(prefix("/x/"), websocket.clone()),       // 3
        prefix("/x/"),                                // 4
        when(prefix("/"), methods(&["GET"])),         // 5
    ];
    let r = Router::new(&[site(vec![HostPattern::Any], routes)]);
    let at = |req: Req| route_of(&r, "h", &req).map(|m| m.route);
    assert_eq!(at(Req::new("POST", "/x", &[])), Some(0));
    assert_eq!(at(Req::new("HEAD", "/x/", &[])), Some(1));
    assert_eq!(at(Req::new("PUT", "/x?format=json", &[])), Some(2));
    assert_eq!(at(Req::new("PUT", "/x?a=1&format=json", &[])), Some(2));
    assert_eq!(at(Req::new("PUT", "/x?format=JSON", &[])), Some(4));
    assert_eq!(
        at(Req::new("PUT", "/x", &[("Upgrade", "WebSocket")])),
        Some(3)
    );
    assert_eq!(at(Req::new("PUT", "/x/y", &[("Upgrade", "h2c")])), Some(4));
    assert_eq!(at(Req::new("GET", "/y", &[])), Some(5));
    assert_eq!(at(Req::new("POST", "/y", &[])), None);
}

#[test]
fn header_and_query_conditions_in_three_forms() {
    let c = |headers: Vec<(&str, ValueMatch)>, query: Vec<(&str, ValueMatch)>| Conditions {
        methods: Vec::new(),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.parse().unwrap(), v))
            .collect(),
        query: query.into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
    };
    let re = |p: &str| ValueMatch::Regex(Pattern::new(p).unwrap());
    let holds_for = |c: &Conditions, req: Req| holds(c, &req.view());

    let accept = c(vec![("accept", re("^application/json"))], vec![]);
    assert!(holds_for(
        &accept,
        Req::new("GET", "/", &[("Accept", "application/json; q=1")])
    ));
    assert!(!holds_for(
        &accept,
        Req::new("GET", "/", &[("Accept", "text/html, application/json")])
    ));
    assert!(!holds_for(&accept, Req::get("/")));
    // any one of a repeated header's lines
    let two = Req::new(
        "GET",
        "/",
        &[("Accept", "text/html"), ("Accept", "application/json")],
    );
    assert!(holds_for(&accept, two));

    let present = c(
        vec![("x-debug", ValueMatch::Present)],
        vec![("trace", ValueMatch::Present)],
    );
    assert!(holds_for(
        &present,
        Req::new("GET", "/?trace", &[("X-Debug", "")])
    ));
    assert!(!holds_for(
        &present,
        Req::new("GET", "/?tracex=1", &[("X-Debug", "1")])
    ));
    assert!(!holds_for(&present, Req::new("GET", "/?trace=1", &[])));

    // query values as sent (still percent-encoded), any of a repeated argument's values
    let q = c(vec![], vec![("format", ValueMatch::Exact("json".into()))]);
    assert!(holds_for(&q, Req::get("/?format=xml&format=json")));
    assert!(!holds_for(&q, Req::get("/?format=%6Ason")));
    assert!(!holds_for(&q, Req::get("/?xformat=json")));
    let q = c(vec![], vec![("v", re("^[0-9]+$"))]);
    assert!(holds_for(&q, Req::get("/?v=12")));
    assert!(!holds_for(&q, Req::get("/?v=1a")));
}

/// Many prefix routes on one site: the tree finds the right one for each.
#[test]
fn thousands_of_prefixes() {
    let mut routes: Vec<Route> = (0..5_000)
        .map(|n| prefix(&format!("/api/v1/resource{n}/")))
        .collect();
    routes.push(prefix("/"));
    let r = Router::new(&[site(vec![HostPattern::Any], routes)]);
    let at = |p: &str| route_of(&r, "h", &Req::get(p)).map(|m| (m.route, m.matched_len));
    for n in [0, 7, 42, 499, 4_999] {
        let path = format!("/api/v1/resource{n}/items/1");
        let len = format!("/api/v1/resource{n}/").len();
        assert_eq!(at(&path), Some((n, len)), "{path}");
        assert_eq!(at(&format!("/api/v1/resource{n}")), Some((n, len - 1)));
    }
    assert_eq!(at("/api/v1/resource5000/x"), Some((5_000, 1)));
    assert_eq!(at("/api/v1/resource"), Some((5_000, 1)));
}
