//! Pure request routing: `(host, path) -> route id`. No IO, no tokio; built once per config snapshot.
//!
//! Host precedence: exact name, then the longest matching `*.suffix`, then the catch-all site.
//! Path precedence within a site: exact path, then the longest matching prefix.
//!
//! Paths are canonical (`http::canonical`) by the time they get here. Two rules more keep an
//! origin's trailing-slash habits (Django's `APPEND_SLASH`, Starlette's `redirect_slashes`,
//! Spring's trailing-slash match) from walking around a route: an exact path matches with or
//! without one trailing slash, and a prefix ending in `/` also matches itself without it (nginx
//! redirects that request to the prefix; here it is routed there, so the route's rules apply).

use crate::config::{HostPattern, PathMatch, Site};
use std::collections::HashMap;

/// Index of a route in the flattened route table, in config order (site by site).
pub type RouteId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    pub site: usize,
    pub route: RouteId,
    /// Length of the matched prefix (or the whole exact path), for `strip_prefix`.
    pub matched_len: usize,
}

#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<String, usize>,
    /// `(".example.com", site)`, longest suffix first.
    wildcard_hosts: Vec<(String, usize)>,
    any_host: Option<usize>,
    sites: Vec<SiteTable>,
}

#[derive(Debug, Default)]
struct SiteTable {
    exact: HashMap<String, RouteId>,
    /// Longest prefix first.
    prefixes: Vec<(String, RouteId)>,
}

impl Router {
    pub fn new(sites: &[Site]) -> Router {
        let mut router = Router::default();
        let mut next_id = 0;
        for (index, site) in sites.iter().enumerate() {
            for host in &site.hosts {
                match host {
                    HostPattern::Any => router.any_host = Some(index),
                    HostPattern::Exact(h) => {
                        router.exact_hosts.insert(h.clone(), index);
                    }
                    HostPattern::Wildcard(s) => router.wildcard_hosts.push((s.clone(), index)),
                }
            }
            let mut table = SiteTable::default();
            for route in &site.routes {
                match &route.matcher {
                    PathMatch::Exact(p) => {
                        table.exact.insert(without_slash(p).to_string(), next_id);
                    }
                    PathMatch::Prefix(p) => table.prefixes.push((p.clone(), next_id)),
                }
                next_id += 1;
            }
            table
                .prefixes
                .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            router.sites.push(table);
        }
        router
            .wildcard_hosts
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        router
    }

    pub fn route(&self, host: &str, path: &str) -> Option<RouteMatch> {
        self.route_in(self.site_for(host)?, path)
    }

    /// The route for `path` within a site found by `site_for`.
    pub fn route_in(&self, site: usize, path: &str) -> Option<RouteMatch> {
        let table = self.sites.get(site)?;
        if let Some(&route) = table.exact.get(without_slash(path)) {
            return Some(RouteMatch {
                site,
                route,
                matched_len: path.len(),
            });
        }
        table
            .prefixes
            .iter()
            .find(|(prefix, _)| {
                path.starts_with(prefix.as_str())
                    || prefix.len() > 1 && prefix.strip_suffix('/') == Some(path)
            })
            .map(|(prefix, route)| RouteMatch {
                site,
                route: *route,
                matched_len: prefix.len().min(path.len()),
            })
    }

    /// `host` is canonical (`http::canonical`: lower-case, no port, no trailing dot), so it is
    /// looked up as it is.
    pub fn site_for(&self, host: &str) -> Option<usize> {
        if let Some(&site) = self.exact_hosts.get(host) {
            return Some(site);
        }
        self.wildcard_hosts
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, site)| *site)
            .or(self.any_host)
    }
}

/// `/login/` is `/login` for an exact match; `/` stays.
fn without_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, Respond, Route};
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
            action,
            policy: Default::default(),
            cors: None,
            encode: Default::default(),
            error_pages: Default::default(),
            intercept_errors: false,
            headers: Default::default(),
            internal: false,
        }
    }

    fn sites() -> Vec<Site> {
        let p = |s: &str| route(PathMatch::Prefix(s.into()));
        let site = |hosts: Vec<HostPattern>, routes: Vec<Route>| Site {
            hosts,
            tls: None,
            redirect_https: false,
            hsts: None,
            routes,
            error_pages: Default::default(),
            response_headers: Default::default(),
        };
        vec![
            site(
                vec![HostPattern::Exact("app.example.com".into())],
                vec![
                    p("/"),
                    p("/api/"),
                    p("/api/v2/"),
                    route(PathMatch::Exact("/healthz".into())),
                ],
            ),
            site(
                vec![HostPattern::Wildcard(".example.com".into())],
                vec![p("/")],
            ),
            site(
                vec![HostPattern::Wildcard(".deep.example.com".into())],
                vec![p("/")],
            ),
            site(vec![HostPattern::Any], vec![p("/only/")]),
        ]
    }

    #[test]
    fn hosts_by_precedence() {
        let r = Router::new(&sites());
        assert_eq!(r.route("app.example.com", "/").unwrap().site, 0);
        assert_eq!(r.route("x.example.com", "/").unwrap().site, 1);
        assert_eq!(r.route("a.b.example.com", "/").unwrap().site, 1);
        assert_eq!(r.route("x.deep.example.com", "/").unwrap().site, 2);
        assert_eq!(r.route("example.com", "/only/x").unwrap().site, 3);
        assert_eq!(r.route("other.org", "/").map(|m| m.site), None);
    }

    #[test]
    fn paths_by_precedence() {
        let r = Router::new(&sites());
        let at = |p: &str| {
            r.route("app.example.com", p)
                .map(|m| (m.route, m.matched_len))
        };
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
}
