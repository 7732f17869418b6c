//! Micro-benchmarks of the request path's pure hot paths: routing, header rewriting, the rate-limit
//! check and per-request metrics. `cargo bench --bench micro` (under 20 s once built); what each one
//! measures and the figures so far are in `benches/README.md`.
//!
//! Inputs are built the way the proxy builds them: configs go through `config::parse` (what
//! `config::load` runs on the file's text), then the same constructors `state::RuntimeState::build`
//! calls (`Router::new`, `RoutePolicy::compile`, `Metrics::route`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use divan::{black_box, Bencher, Divan};
use gatehouse::config::{self, Config};
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

fn main() {
    // every benchmark here takes at most a few microseconds: half a second to two each keeps the
    // whole run near 20 s; `-- --min-time 2`, `-- routing` etc. override or filter
    Divan::default()
        .min_time(Duration::from_millis(500))
        .max_time(Duration::from_secs(2))
        .config_with_args()
        .main();
}

/// Runs `f` a few thousand times first. divan sizes its samples from the first calls, and a cold
/// first call (caches, a lazily made counter) would leave it timing one call per sample.
fn warm<O>(mut f: impl FnMut() -> O) {
    for _ in 0..2_000 {
        black_box(f());
    }
}

/// `text` with a `[listen]` section (required; nothing is bound here), parsed and validated.
fn parse(text: &str) -> Config {
    let text = format!("[listen]\nhttp = \"127.0.0.1:8080\"\n{text}");
    config::parse(Path::new("benches/micro.rs"), &text).expect("benchmark config is valid")
}

/// 1,000 routes on one site, 1 or 5,000 prefix routes, a regex route, and 100 sites:
/// `Router::new`, `Router::route_in`, `Router::site_for`.
mod routing {
    use super::*;
    use gatehouse::routing::{Request, Router};
    use std::sync::LazyLock;

    /// The catch-all site with 1,000 routes: for n in 0..998, `exact = "/api/v1/resource{n}"` when
    /// n is a multiple of 4 (250 of them), else `path = "/api/v1/resource{n}/"` (748 prefixes);
    /// then `path = "/static/"` and `exact = "/healthz"`. No `/` route, so a miss is possible.
    static ROUTES_1000: LazyLock<Router> = LazyLock::new(|| {
        let mut text = String::from("[[site]]\n");
        let respond = "respond = { status = 200 }";
        for n in 0..998 {
            let (key, end) = if n % 4 == 0 {
                ("exact", "")
            } else {
                ("path", "/")
            };
            let path = format!("/api/v1/resource{n}{end}");
            let _ = writeln!(text, "[[site.route]]\n{key} = \"{path}\"\n{respond}");
        }
        let _ = writeln!(text, "[[site.route]]\npath = \"/static/\"\n{respond}");
        let _ = writeln!(text, "[[site.route]]\nexact = \"/healthz\"\n{respond}");
        let config = parse(&text);
        assert_eq!(config.sites[0].routes.len(), 1000);
        Router::new(&config.sites)
    });

    /// Prefixes are looked up in a radix tree (`routing::prefix`), a walk down the path's bytes:
    /// `/api/v1/resource` is one edge, then one node per digit.
    const PATHS: [(&str, &str); 6] = [
        // the exact table (a HashMap)
        ("exact", "/api/v1/resource500"),
        // a three-digit prefix
        ("prefix_first", "/api/v1/resource101/items"),
        // another, deeper path
        ("prefix_deep", "/api/v1/resource997/items/42"),
        // a prefix that shares only `/` with the others
        ("prefix_short", "/static/js/app.3f9c2b.js"),
        // no route: the walk ends inside `/api/v1/resource`'s subtree
        ("miss", "/api/v2/users/42/settings"),
        // no route, and no first byte after `/` in the tree
        ("miss_short", "/favicon.ico"),
    ];

    /// A GET for `path` with no headers (no route here has conditions).
    fn get(path: &str) -> (http::Method, http::Uri, http::HeaderMap) {
        (
            http::Method::GET,
            path.parse().unwrap(),
            http::HeaderMap::new(),
        )
    }

    #[divan::bench(args = [
        "exact", "prefix_first", "prefix_deep", "prefix_short", "miss", "miss_short",
    ])]
    fn route_in_1000_routes(bencher: Bencher, case: &str) {
        let router = &*ROUTES_1000;
        let (_, path) = PATHS.iter().find(|(name, _)| *name == case).unwrap();
        let (method, uri, headers) = get(path);
        let req = Request::new(&method, &uri, &headers);
        let expected = !case.starts_with("miss");
        assert_eq!(router.route_in(0, &req).is_some(), expected, "{path}");
        warm(|| router.route_in(0, &req));
        bencher.bench_local(|| router.route_in(black_box(0), black_box(&req)));
    }

    /// `n - 1` prefix routes `/api/v1/resource{k}/` (k < n - 1), then `path = "/"`.
    fn prefix_routes(n: usize) -> Router {
        let mut text = String::from("[[site]]\n");
        let respond = "respond = { status = 200 }";
        for k in 0..n - 1 {
            let path = format!("/api/v1/resource{k}/");
            let _ = writeln!(text, "[[site.route]]\npath = \"{path}\"\n{respond}");
        }
        let _ = writeln!(text, "[[site.route]]\npath = \"/\"\n{respond}");
        let config = parse(&text);
        assert_eq!(config.sites[0].routes.len(), n);
        Router::new(&config.sites)
    }

    static PREFIXES_1: LazyLock<Router> = LazyLock::new(|| prefix_routes(1));
    static PREFIXES_5000: LazyLock<Router> = LazyLock::new(|| prefix_routes(5_000));

    /// The same request on a site with one route (`/`) and on one with 5,000 prefix routes,
    /// where it takes `/api/v1/resource4998/` (the last one written): the lookup must not grow
    /// with the number of routes.
    #[divan::bench(args = [1, 5_000])]
    fn prefix_lookup(bencher: Bencher, routes: usize) {
        let router = if routes == 1 {
            &*PREFIXES_1
        } else {
            &*PREFIXES_5000
        };
        let (method, uri, headers) = get("/api/v1/resource4998/items/42");
        let req = Request::new(&method, &uri, &headers);
        // `/` alone, or `/api/v1/resource4998/` (route 4998, `/` being 4999)
        let want = if routes == 1 { 0 } else { 4_998 };
        assert_eq!(router.route_in(0, &req).map(|m| m.route), Some(want));
        warm(|| router.route_in(0, &req));
        bencher.bench_local(|| router.route_in(black_box(0), black_box(&req)));
    }

    /// `regex = "^/u/(?<id>[0-9]+)/avatar$"` before `path = "/"`: `hit` takes the regex route
    /// (two searches: `is_match`, then `captures_read` into a new `CaptureLocations`); `miss`
    /// is searched and falls to `/`.
    static REGEX: LazyLock<Router> = LazyLock::new(|| {
        let config = parse(
            "[[site]]\n[[site.route]]\nregex = \"^/u/(?<id>[0-9]+)/avatar$\"\nrespond = { status = 200 }\n\
             [[site.route]]\npath = \"/\"\nrespond = { status = 200 }\n",
        );
        Router::new(&config.sites)
    });

    #[divan::bench(args = ["hit", "miss"])]
    fn regex_route(bencher: Bencher, case: &str) {
        let path = if case == "hit" {
            "/u/1234/avatar"
        } else {
            "/static/app.js"
        };
        let (method, uri, headers) = get(path);
        let req = Request::new(&method, &uri, &headers);
        let want = if case == "hit" { 0 } else { 1 };
        assert_eq!(REGEX.route_in(0, &req).map(|m| m.route), Some(want));
        warm(|| REGEX.route_in(0, &req));
        bencher.bench_local(|| REGEX.route_in(black_box(0), black_box(&req)));
    }

    /// 100 sites, one route `/` each: 95 with an exact host `site{n}.example.com`, 4 with a
    /// wildcard `*.tenant{n}.example.net`, and the catch-all (no `hosts`).
    static SITES_100: LazyLock<Router> = LazyLock::new(|| {
        let mut text = String::new();
        let route = "[[site.route]]\npath = \"/\"\nrespond = { status = 200 }";
        for n in 0..95 {
            let _ = writeln!(text, "[[site]]\nhosts = [\"site{n}.example.com\"]\n{route}");
        }
        for n in 0..4 {
            let _ = writeln!(
                text,
                "[[site]]\nhosts = [\"*.tenant{n}.example.net\"]\n{route}"
            );
        }
        let _ = writeln!(text, "[[site]]\n{route}");
        let config = parse(&text);
        assert_eq!(config.sites.len(), 100);
        Router::new(&config.sites)
    });

    /// Hosts as `http::canonical` hands them over: lower-case, no port.
    const HOSTS: [(&str, &str, usize); 3] = [
        ("exact", "site42.example.com", 42),
        // the exact table misses, then the wildcards are scanned (the last of 4 matches)
        ("wildcard", "eu.tenant3.example.net", 98),
        // both miss, the catch-all answers
        ("catch_all", "unknown.example.org", 99),
    ];

    #[divan::bench(args = ["exact", "wildcard", "catch_all"])]
    fn site_for_100_sites(bencher: Bencher, case: &str) {
        let router = &*SITES_100;
        let (_, host, site) = HOSTS.iter().find(|(name, ..)| *name == case).unwrap();
        assert_eq!(router.site_for(host), Some(*site), "{host}");
        warm(|| router.site_for(host));
        bencher.bench_local(|| router.site_for(black_box(host)));
    }
}

/// What the proxy does to a request's headers (`src/http/service.rs`: `ProxyService::call`,
/// `screen`, `proxy` and `prepare_request_headers`), on a browser's GET.
mod headers {
    use super::*;
    use gatehouse::http::canonical::Addrs;
    use gatehouse::http::hygiene;
    use gatehouse::upstream::forward;
    use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
    use http::Version;
    use http_body::SizeHint;
    use ipnet::IpNet;
    use std::net::IpAddr;
    use std::sync::LazyLock;

    static TRUSTED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
        let config = parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n\
             [[site]]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200 }\n",
        );
        config.server.trusted_proxies
    });

    /// What Firefox sends for a page load over HTTP/1.1: 12 fields, `Connection: keep-alive`.
    const BROWSER: [(&str, &str); 12] = [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://app.example.com/dashboard"),
        (
            "cookie",
            "session=7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c1e; theme=dark; tz=Europe%2FBerlin",
        ),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
    ];

    /// `direct`: from 198.51.100.23 (not trusted), no `X-Forwarded-*`.
    /// `proxied`: from 10.0.3.7 (a trusted load balancer) with `X-Forwarded-For: 203.0.113.195,
    /// 192.168.1.20` (a second trusted hop), `X-Forwarded-Proto` and `X-Forwarded-Host`.
    /// `+conn`: `Connection: keep-alive, x-client-trace` and an `x-client-trace` field, which
    /// must go (the token list is parsed into header names, allocating).
    const CASES: [&str; 4] = ["direct", "direct+conn", "proxied", "proxied+conn"];

    fn request(case: &str) -> (HeaderMap, IpAddr) {
        let mut headers = HeaderMap::new();
        for (name, value) in BROWSER {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        if case.ends_with("+conn") {
            let connection = HeaderValue::from_static("keep-alive, x-client-trace");
            headers.insert(http::header::CONNECTION, connection);
            headers.insert(
                "x-client-trace",
                HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
            );
        }
        let peer = if case.starts_with("proxied") {
            let xff = "203.0.113.195, 192.168.1.20";
            headers.insert("x-forwarded-for", HeaderValue::from_static(xff));
            headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
            headers.insert(
                "x-forwarded-host",
                HeaderValue::from_static("app.example.com"),
            );
            "10.0.3.7"
        } else {
            "198.51.100.23"
        };
        (headers, peer.parse().unwrap())
    }

    /// `Addrs::new`: is the peer trusted, and the client behind it (walks `X-Forwarded-For`).
    #[divan::bench(args = CASES)]
    fn addrs_new(bencher: Bencher, case: &str) {
        let (headers, peer) = request(case);
        let trusted = TRUSTED.as_slice();
        let addrs = Addrs::new(&headers, peer, trusted, true);
        let client: IpAddr = if case.starts_with("proxied") {
            "203.0.113.195".parse().unwrap()
        } else {
            peer
        };
        assert_eq!(addrs.client, client);
        warm(|| Addrs::new(&headers, peer, trusted, true));
        bencher.bench_local(|| Addrs::new(black_box(&headers), black_box(peer), trusted, true));
    }

    /// `strip_hop_by_hop` on a fresh copy of the headers (the copy is made outside the timing).
    #[divan::bench(args = CASES)]
    fn strip_hop_by_hop(bencher: Bencher, case: &str) {
        let (headers, _) = request(case);
        let mut stripped = headers.clone();
        forward::strip_hop_by_hop(&mut stripped);
        assert!(!stripped.contains_key("connection") && !stripped.contains_key("x-client-trace"));
        warm(|| forward::strip_hop_by_hop(&mut headers.clone()));
        bencher
            .with_inputs(|| headers.clone())
            .bench_local_refs(forward::strip_hop_by_hop);
    }

    /// Gatehouse's own headers (`forward::Added`) put into the map, as when a route has
    /// `request_headers` rules: `X-Forwarded-For` set to the peer (appended to for a trusted
    /// peer; the peer's header value is made once per connection, outside the timing), `-Proto`,
    /// `-Host` and `-Port` set unless a trusted peer sent them, `X-Real-IP`, `X-Request-Id`.
    #[divan::bench(args = CASES)]
    fn set_forwarded(bencher: Bencher, case: &str) {
        let (headers, peer) = request(case);
        let addrs = Addrs::new(&headers, peer, &TRUSTED, true);
        let peer_ip = forward::ip_header(peer);
        let host = headers.get(HOST).cloned();
        let set = |h: &mut HeaderMap| {
            put_added(h, &peer_ip, addrs.peer_trusted, host.as_ref());
        };
        warm(|| set(&mut headers.clone()));
        bencher
            .with_inputs(|| headers.clone())
            .bench_local_refs(set);
    }

    static ID: gatehouse::request_id::RequestId =
        gatehouse::request_id::RequestId::from_static("0123456789abcdef0123456789abcdef");

    fn put_added(h: &mut HeaderMap, peer: &HeaderValue, trusted: bool, host: Option<&HeaderValue>) {
        let client = forward::Client {
            peer,
            peer_trusted: trusted,
            host,
            proto: "https",
            real_ip: Some(peer.clone()),
            port: HeaderValue::from_static("443"),
            request_id: &ID,
        };
        forward::Added::default().set(h, client, false);
    }

    /// Every header step of a proxied request, in the order the service takes them:
    /// `Addrs::new` and `hygiene::check` (in `call`, before routing), `requested_upgrade` and
    /// `regenerate_framing` (in `proxy`), `strip_hop_by_hop` and Gatehouse's own headers put
    /// into the map (in `prepare_request_headers`). Not included: the `Host` insert (an
    /// HTTP/1.1 request has one).
    #[divan::bench(args = CASES)]
    fn request_path(bencher: Bencher, case: &str) {
        let (headers, peer) = request(case);
        let trusted = TRUSTED.as_slice();
        let peer_ip = forward::ip_header(peer);
        let all = |h: &mut HeaderMap| {
            let addrs = Addrs::new(h, black_box(peer), trusted, true);
            let screened = hygiene::check(h, Version::HTTP_11);
            let host = h.get(HOST).cloned();
            let upgrade = forward::requested_upgrade(h);
            hygiene::regenerate_framing(h, &SizeHint::with_exact(0));
            forward::strip_hop_by_hop(h);
            put_added(h, &peer_ip, addrs.peer_trusted, host.as_ref());
            (screened, upgrade)
        };
        warm(|| all(&mut headers.clone()));
        bencher
            .with_inputs(|| headers.clone())
            .bench_local_refs(all);
    }
}

/// The rate-limit check a route with a limit makes on every request.
mod rate_limit {
    use super::*;
    use gatehouse::middleware::rate_limit::{client_key, KeyCaps, Limiters};
    use gatehouse::middleware::RoutePolicy;
    use http::{HeaderMap, HeaderValue, Method};
    use std::net::{IpAddr, Ipv4Addr};

    /// A route whose policy has one limit that never triggers (`burst` defaults to `requests`)
    /// and the default `max_body` (1 MB), compiled as `RuntimeState::build` does.
    fn policy() -> (RoutePolicy, u8) {
        let config = parse(
            "[server]\nrate_limit = { requests = 1000000000, per = \"1s\" }\n\
             [[site]]\n[[site.route]]\npath = \"/\"\nrespond = { status = 200 }\n",
        );
        let limits = &config.server.limits;
        let route = &config.sites[0].routes[0];
        let policy = RoutePolicy::compile(
            &route.policy,
            &Limiters::default(),
            KeyCaps::from(limits),
            None,
        );
        assert_eq!(policy.limiters.len(), 1);
        (policy, limits.ipv6_prefix)
    }

    const ROTATING: u32 = 10_000;

    /// 198.18.0.0/15 (RFC 2544's benchmarking range): the `n`th address.
    fn address(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n))
    }

    /// `hot`: one client, its GCRA cell always found. `rotating_10k`: 10,000 clients in turn, all
    /// already in the table (one pass is made first), so each check is a DashMap hit on a cold
    /// cache line rather than an insert.
    const CASES: [&str; 2] = ["hot", "rotating_10k"];

    fn keys(case: &str) -> Vec<IpAddr> {
        match case {
            "hot" => vec![address(1)],
            _ => (0..ROTATING).map(address).collect(),
        }
    }

    /// `Limiter::check` alone.
    #[divan::bench(args = CASES)]
    fn limiter_check(bencher: Bencher, case: &str) {
        let (policy, _) = policy();
        let limiter = &policy.limiters[0];
        let keys = keys(case);
        // an address-keyed limit never reads them
        let headers = HeaderMap::new();
        for key in &keys {
            assert!(limiter.check(*key, &headers).is_ok());
        }
        assert_eq!(limiter.stats().tracked, keys.len());
        warm(|| limiter.check(keys[0], &headers));
        let mut next = 0;
        bencher
            .with_inputs(|| {
                next = (next + 1) % keys.len();
                keys[next]
            })
            .bench_local_values(|key| limiter.check(key, &headers));
    }

    /// What `dispatch` runs once the route is found: `client_key`, then `RoutePolicy::check`
    /// (address filter: none; the limit; `Content-Length` against `max_body`) on a GET's headers.
    #[divan::bench(args = CASES)]
    fn route_policy_check(bencher: Bencher, case: &str) {
        let (policy, ipv6_prefix) = policy();
        let keys = keys(case);
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("app.example.com"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        for key in &keys {
            assert!(policy
                .check(Some(*key), *key, &Method::GET, &headers)
                .is_ok());
        }
        warm(|| policy.check(Some(keys[0]), keys[0], &Method::GET, &headers));
        let mut next = 0;
        bencher
            .with_inputs(|| {
                next = (next + 1) % keys.len();
                keys[next]
            })
            .bench_local_values(|client| {
                let key = client_key(client, ipv6_prefix);
                policy.check(Some(client), key, &Method::GET, &headers)
            });
    }
}

/// What a finished request records (`Completion::drop` in `src/http/body.rs` calls
/// `RouteMetrics::record`), on handles made as `RuntimeState::build` makes them.
mod metrics {
    use super::*;
    use gatehouse::metrics::{Metrics, RouteMetrics};
    use http::Method;
    use std::sync::Arc;

    fn route() -> Arc<RouteMetrics> {
        let metrics = Metrics::new().expect("metrics registry");
        metrics.route("app.example.com", "/api/")
    }

    const TOOK: Duration = Duration::from_micros(1830);

    /// One (method, status) over and over: its counter exists after the first request.
    #[divan::bench]
    fn record_get_200(bencher: Bencher) {
        let route = route();
        warm(|| route.record(&Method::GET, 200, TOOK, 0, 5120));
        bencher.bench_local(|| {
            route.record(black_box(&Method::GET), black_box(200), TOOK, 0, 5120);
        });
    }

    /// Eight (method, status) pairs in turn, each seen once before (no label formatting timed).
    #[divan::bench]
    fn record_mixed(bencher: Bencher) {
        let route = route();
        let mix = [
            (Method::GET, 200),
            (Method::GET, 304),
            (Method::POST, 201),
            (Method::GET, 404),
            (Method::HEAD, 200),
            (Method::PUT, 204),
            (Method::DELETE, 204),
            (Method::GET, 502),
        ];
        for (method, status) in &mix {
            warm(|| route.record(method, *status, TOOK, 0, 0));
        }
        let mut next = 0;
        bencher
            .with_inputs(|| {
                next = (next + 1) % mix.len();
                &mix[next]
            })
            .bench_local_values(|(method, status)| route.record(method, *status, TOOK, 312, 5120));
    }
}
