//! The target a proxied request goes upstream with (`strip_prefix`, `upstream_path`, `rewrite`),
//! and upstream `Location` headers that name the upstream itself mapped back to the address and
//! prefix the client used (`rewrite_location`, nginx's `proxy_redirect default`).
//!
//! Both are compiled once per route into a [`Rewrite`] in the snapshot. A route that sends the
//! target as it is costs one `match`; a response without `Location` costs a status check.
//! Whatever a rewrite produces is checked to be a canonical origin-form target before it leaves
//! (never a dot segment, an encoded slash the server refuses, a space or a control byte): a
//! request whose placeholders would make it otherwise gets 400, as a client sending that target
//! itself would.

use super::canonical::{self, EncodedSlashes, PathParameters, PathRules};
use super::response::ProxyError;
use crate::config::{PathMatch, UpstreamServer, UpstreamTarget};
use crate::template::{Part, Template, Vars};
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, LOCATION};
use http::uri::PathAndQuery;
use http::{StatusCode, Uri};
use std::borrow::Cow;
use std::net::SocketAddr;

/// A proxy route's compiled `strip_prefix`/`upstream_path`/`rewrite` and `rewrite_location`.
#[derive(Debug)]
pub struct Rewrite {
    target: Target,
    /// `None` with `rewrite_location = false`.
    location: Option<LocationMap>,
}

#[derive(Debug)]
enum Target {
    AsIs,
    Strip,
    Replace(Box<str>),
    Template {
        template: Template,
        /// The template writes a query of its own (a literal `?`, or `{uri}`): the client's is
        /// not appended.
        own_query: bool,
    },
}

/// How an upstream path maps back to the client's: a path starting with `upstream` (for an
/// `exact` route: equal to it) starts with `client` instead.
#[derive(Debug)]
struct LocationMap {
    prefix: Option<PrefixMap>,
}

#[derive(Debug)]
struct PrefixMap {
    client: Box<str>,
    upstream: Box<str>,
    exact: bool,
}

/// Who the upstream is, for `Location` values naming it.
pub struct UpstreamSelf<'a> {
    /// `http` or `https`: the scheme of the connection to it.
    pub scheme: &'a str,
    /// The `Host` sent to it (a route that sends another than the client's gives that one).
    pub host: Option<&'a HeaderValue>,
    /// The server that answered.
    /// The server that answered, unless it is a Unix socket.
    pub server: Option<SocketAddr>,
    /// The upstream's `servers` as written.
    pub servers: &'a [UpstreamServer],
}

/// What the client asked: its scheme and its canonical authority (`host[:port]`).
pub struct ClientOrigin<'a> {
    pub scheme: &'a str,
    pub authority: &'a HeaderValue,
}

impl Rewrite {
    pub fn new(matcher: &PathMatch, target: &UpstreamTarget, rewrite_location: bool) -> Rewrite {
        let (target, prefix) = match (target, matcher) {
            (UpstreamTarget::AsIs, _) => (Target::AsIs, None),
            (UpstreamTarget::StripPrefix, m) => {
                let mut client = m.as_str().to_string();
                if !client.ends_with('/') {
                    client.push('/');
                }
                (Target::Strip, prefix_map(client, "/", false))
            }
            (UpstreamTarget::ReplacePrefix(to), m) => {
                let exact = matches!(m, PathMatch::Exact(_));
                let map = prefix_map(m.as_str().to_string(), to, exact);
                (Target::Replace(to.as_str().into()), map)
            }
            (UpstreamTarget::Rewrite(template), _) => {
                let own_query = template.parts().iter().any(|p| match p {
                    Part::Literal(text) => text.contains('?'),
                    Part::Uri => true,
                    _ => false,
                });
                let template = template.clone();
                (
                    Target::Template {
                        template,
                        own_query,
                    },
                    None,
                )
            }
        };
        let location = rewrite_location.then_some(LocationMap { prefix });
        Rewrite { target, location }
    }

    /// Whether `target` needs the request's placeholders (`Vars`).
    pub fn uses_vars(&self) -> bool {
        matches!(self.target, Target::Template { .. })
    }

    /// Whether the canonical target goes upstream as it is (no `strip_prefix`,
    /// `upstream_path` or `rewrite`): the common case, checked without a call.
    #[inline]
    pub fn keeps_target(&self) -> bool {
        matches!(self.target, Target::AsIs)
    }

    /// The target to send upstream instead of `uri` (canonical), `None` to send it as it is.
    /// `matched_len` is the router's; `vars` are given when `uses_vars`; `rules` are the server's
    /// path rules, which a template's result must pass as a request's path would.
    pub fn target(
        &self,
        uri: &Uri,
        matched_len: usize,
        vars: Option<&Vars<'_>>,
        rules: PathRules,
    ) -> Result<Option<PathAndQuery>, ProxyError> {
        if matches!(self.target, Target::AsIs) {
            return Ok(None);
        }
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
        let made = match &self.target {
            Target::AsIs => return Ok(None),
            Target::Strip => {
                let rest = path.get(matched_len..).unwrap_or("");
                replace("/", rest.strip_prefix('/').unwrap_or(rest), query)
            }
            Target::Replace(to) => replace(to, path.get(matched_len..).unwrap_or(""), query),
            Target::Template {
                template,
                own_query,
            } => {
                let vars = vars.ok_or(ProxyError::BadTarget)?;
                return render(template, *own_query, vars, query, rules).map(Some);
            }
        };
        finish(made, RELAXED).map(Some)
    }

    /// Whether an answer with `status` may have its `Location` mapped: checked before the
    /// mapping's inputs are gathered, so the common `200` costs one comparison.
    #[inline]
    pub fn maps_location(&self, status: StatusCode) -> bool {
        self.location.is_some() && (status.is_redirection() || status == StatusCode::CREATED)
    }

    /// Rewrites `Location` in an upstream's redirect (`3xx`) or `201` when it is an absolute URL
    /// naming the upstream (its `Host`, the server that answered, or a `servers` entry, with the
    /// upstream's scheme): to the client's scheme and authority, and the upstream prefix back to
    /// the route's. Relative URLs and other hosts pass as they are.
    pub fn map_location(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
        upstream: &UpstreamSelf<'_>,
        client: &ClientOrigin<'_>,
    ) {
        let Some(map) = &self.location else { return };
        if !self.maps_location(status) {
            return;
        }
        let Some(location) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) else {
            return;
        };
        if let Some(mapped) = map.apply(location, upstream, client) {
            headers.insert(LOCATION, mapped);
        }
    }
}

fn prefix_map(client: String, upstream: &str, exact: bool) -> Option<PrefixMap> {
    (client != upstream || exact).then(|| PrefixMap {
        client: client.into(),
        upstream: upstream.into(),
        exact,
    })
}

impl LocationMap {
    fn apply(
        &self,
        location: &str,
        upstream: &UpstreamSelf<'_>,
        client: &ClientOrigin<'_>,
    ) -> Option<HeaderValue> {
        let (scheme, rest) = location.split_once("://")?;
        if !scheme.eq_ignore_ascii_case(upstream.scheme) {
            return None;
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if !names_upstream(authority, upstream) {
            return None;
        }
        let rest = self.client_path(rest);
        let mut out = BytesMut::with_capacity(location.len() + client.authority.len() + 16);
        out.put_slice(client.scheme.as_bytes());
        out.put_slice(b"://");
        out.put_slice(client.authority.as_bytes());
        out.put_slice(rest.as_bytes());
        HeaderValue::from_maybe_shared(out.freeze()).ok()
    }

    /// `rest` (`/path?query#fragment`) with the upstream prefix put back to the route's.
    fn client_path<'r>(&self, rest: &'r str) -> Cow<'r, str> {
        let Some(map) = &self.prefix else {
            return Cow::Borrowed(rest);
        };
        let with_root = if rest.starts_with('/') { rest } else { "/" };
        let Some(tail) = with_root.strip_prefix(&*map.upstream) else {
            return Cow::Borrowed(rest);
        };
        if map.exact && !(tail.is_empty() || tail.starts_with(['?', '#'])) {
            return Cow::Borrowed(rest);
        }
        let tail = if rest.starts_with('/') { tail } else { rest };
        Cow::Owned(format!("{}{tail}", map.client))
    }
}

/// Whether a URL's authority (`host[:port]`) is the upstream's `Host`, the server that answered,
/// or one of its `servers`; the scheme's default port when it names none.
fn names_upstream(authority: &str, upstream: &UpstreamSelf<'_>) -> bool {
    let default = if upstream.scheme == "https" { 443 } else { 80 };
    let Some((host, port)) = split_authority(authority, default) else {
        return false;
    };
    let sent = upstream
        .host
        .and_then(|h| h.to_str().ok())
        .and_then(|h| split_authority(h, default));
    if sent.is_some_and(|(h, p)| p == port && h.eq_ignore_ascii_case(host)) {
        return true;
    }
    let ip = host.parse::<std::net::IpAddr>().ok();
    if upstream
        .server
        .is_some_and(|s| port == s.port() && ip == Some(s.ip()))
    {
        return true;
    }
    upstream
        .servers
        .iter()
        .filter_map(|s| s.addr.tcp())
        .any(|a| a.port == port && a.host.eq_ignore_ascii_case(host))
}

/// `host` (IPv6 without brackets) and port of `host[:port]`.
fn split_authority(authority: &str, default: u16) -> Option<(&str, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        None | Some("") => default,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Paths a rewrite only splices from canonical pieces need no slash or parameter rules: only
/// that no dot segment came of it.
const RELAXED: PathRules = PathRules {
    merge_slashes: false,
    encoded_slashes: EncodedSlashes::Keep,
    parameters: PathParameters::Keep,
};

/// `to` + `rest` + `?query`.
fn replace(to: &str, rest: &str, query: Option<&str>) -> Vec<u8> {
    let len = to.len() + rest.len() + query.map_or(0, |q| q.len() + 1);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(rest.as_bytes());
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out
}

/// The template expanded; the client's query appended unless it writes its own, and a
/// trailing `?` (an empty query: "no query") dropped.
fn render(
    template: &Template,
    own_query: bool,
    vars: &Vars<'_>,
    query: Option<&str>,
    rules: PathRules,
) -> Result<PathAndQuery, ProxyError> {
    let mut out = Vec::with_capacity(128);
    template.render(vars, &mut out);
    match query {
        Some(query) if !own_query => {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
        _ => {}
    }
    if out.last() == Some(&b'?') {
        out.pop();
    }
    finish(out, rules)
}

/// `target` as a `PathAndQuery` when its path is canonical under `rules` (already: nothing is
/// resolved here) and every byte may stand in a target; else 400.
fn finish(target: Vec<u8>, rules: PathRules) -> Result<PathAndQuery, ProxyError> {
    let path_end = target
        .iter()
        .position(|b| *b == b'?')
        .unwrap_or(target.len());
    let path = std::str::from_utf8(&target[..path_end]).map_err(|_| ProxyError::BadTarget)?;
    // Unchanged by the canonical pass, not merely borrowed by it: a path with a `%` escape is
    // always rebuilt (`/my%20file`, a kept `%2F`), though already canonical.
    if !matches!(canonical::path(path, rules), Ok(canonical) if canonical == path) {
        return Err(ProxyError::BadTarget);
    }
    if target.contains(&b'#') {
        return Err(ProxyError::BadTarget);
    }
    PathAndQuery::from_maybe_shared(Bytes::from(target)).map_err(|_| ProxyError::BadTarget)
}

#[cfg(test)]
mod tests;
