//! Pure request routing: `(host, request) -> route id`. No IO, no tokio; built once per config
//! snapshot.
//!
//! Host precedence: exact name, then the longest matching `*.suffix`, then the catch-all site.
//! Within a site: the `exact` routes for the path, then the `regex` routes in config order, then
//! the `path` routes by longest prefix (`prefix::PrefixTree`, so the lookup does not grow with
//! the number of routes). Among the routes of one exact path or one prefix, config order. A
//! route whose conditions (`methods`, `headers`, `query`) do not all hold is passed over for the
//! next candidate in that order.
//!
//! Paths are canonical (`http::canonical`) by the time they get here. Two rules more keep an
//! origin's trailing-slash habits (Django's `APPEND_SLASH`, Starlette's `redirect_slashes`,
//! Spring's trailing-slash match) from walking around a route: an exact path matches with or
//! without one trailing slash, and a prefix ending in `/` also matches itself without it (nginx
//! redirects that request to the prefix; here it is routed there, so the route's rules apply).
//! A regex sees the canonical path as it is.

mod prefix;

use crate::config::{Conditions, HostPattern, PathMatch, Site, ValueMatch};
use http::{HeaderMap, Method, Uri};
use prefix::PrefixTree;
use regex::{CaptureLocations, Regex};
use std::collections::HashMap;

pub use prefix::Matches;

/// Index of a route in the flattened route table, in config order (site by site).
pub type RouteId = usize;

/// What a route is chosen by: the canonical path, and for conditions the method, the headers
/// and the query.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub path: &'a str,
    /// As sent, without `?`.
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl<'a> Request<'a> {
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Request<'a> {
        Request {
            path: uri.path(),
            query: uri.query(),
            method,
            headers,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub site: usize,
    pub route: RouteId,
    /// Length of the matched prefix (or the whole path for `exact` and `regex`), for
    /// `strip_prefix` and `upstream_path`.
    pub matched_len: usize,
    /// A `regex` route's capture groups, as positions in the path (for `template::Vars`).
    pub captures: Option<CaptureLocations>,
}

#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<String, usize>,
    /// `(".example.com", site)`, longest suffix first.
    wildcard_hosts: Vec<(String, usize)>,
    any_host: Option<usize>,
    sites: Vec<SiteTable>,
    /// Per route: its conditions, `None` when it has none (nothing to check).
    conditions: Vec<Option<Conditions>>,
}

#[derive(Debug, Default)]
struct SiteTable {
    /// By the path without its trailing slash; the routes in config order.
    exact: HashMap<String, Vec<RouteId>>,
    /// In config order.
    regexes: Vec<(Regex, RouteId)>,
    prefixes: PrefixTree<RouteId>,
}

impl Router {
    pub fn new(sites: &[Site]) -> Router {
        let mut router = Router::default();
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
            let table = router.site_table(site);
            router.sites.push(table);
        }
        router
            .wildcard_hosts
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        router
    }

    /// The site's routes, numbered on from the routes of the sites before it.
    fn site_table(&mut self, site: &Site) -> SiteTable {
        let mut table = SiteTable::default();
        let mut prefixes = Vec::new();
        for route in &site.routes {
            let id = self.conditions.len();
            let conditions = Some(route.conditions.clone()).filter(|c| !c.is_empty());
            self.conditions.push(conditions);
            match &route.matcher {
                PathMatch::Exact(p) => {
                    let key = without_slash(p).to_string();
                    table.exact.entry(key).or_default().push(id);
                }
                PathMatch::Regex(r) => table.regexes.push((r.regex().clone(), id)),
                PathMatch::Prefix(p) => prefixes.push((p.clone(), id)),
            }
        }
        table.prefixes = PrefixTree::new(prefixes);
        table
    }

    /// The route for `req` within a site found by `site_for`.
    pub fn route_in(&self, site: usize, req: &Request<'_>) -> Option<RouteMatch> {
        let table = self.sites.get(site)?;
        let path = req.path;
        let found = |route, matched_len| RouteMatch {
            site,
            route,
            matched_len,
            captures: None,
        };
        if let Some(routes) = table.exact.get(without_slash(path)) {
            if let Some(&route) = routes.iter().find(|id| self.holds(**id, req)) {
                return Some(found(route, path.len()));
            }
        }
        for (regex, route) in &table.regexes {
            if regex.is_match(path) && self.holds(*route, req) {
                // the search again, for the groups: only for the route taken
                let mut captures = regex.capture_locations();
                regex.captures_read(&mut captures, path);
                let mut m = found(*route, path.len());
                m.captures = Some(captures);
                return Some(m);
            }
        }
        table.prefixes.matches(path).find_map(|(len, routes)| {
            let route = routes.iter().find(|id| self.holds(**id, req))?;
            Some(found(*route, len.min(path.len())))
        })
    }

    fn holds(&self, route: RouteId, req: &Request<'_>) -> bool {
        match self.conditions.get(route) {
            Some(Some(conditions)) => holds(conditions, req),
            _ => true,
        }
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

/// Whether every condition holds. A header or query argument sent several times matches when
/// any of its values does: the routes a condition picks are the stricter ones, so a client
/// cannot slip past one by repeating the argument.
pub fn holds(conditions: &Conditions, req: &Request<'_>) -> bool {
    let Conditions {
        methods,
        headers,
        query,
    } = conditions;
    (methods.is_empty() || methods.contains(req.method))
        && headers.iter().all(|(name, want)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|value| header_matches(want, value.as_bytes()))
        })
        && query.iter().all(|(name, want)| {
            query_values(req.query.unwrap_or(""), name).any(|value| value_matches(want, value))
        })
}

fn header_matches(want: &ValueMatch, value: &[u8]) -> bool {
    match want {
        ValueMatch::Present => true,
        ValueMatch::Exact(text) => value.eq_ignore_ascii_case(text.as_bytes()),
        // a value that is no UTF-8 (obs-text in another charset) matches no regex
        ValueMatch::Regex(_) => std::str::from_utf8(value).is_ok_and(|v| value_matches(want, v)),
    }
}

fn value_matches(want: &ValueMatch, value: &str) -> bool {
    match want {
        ValueMatch::Present => true,
        ValueMatch::Exact(text) => value == text,
        ValueMatch::Regex(r) => r.regex().is_match(value),
    }
}

/// Every value of `name` in `query` (`a=1&b=2`), as written; `""` for `?name` alone.
fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = &'q str> + 'q {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// `/login/` is `/login` for an exact match; `/` stays.
fn without_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

#[cfg(test)]
mod tests;
