//! Header rules on the request path: a route's `request_headers` on what goes upstream (after
//! Gatehouse's own forwarding headers, with `X-Forwarded-Prefix` and `upstream_host`), its
//! `response_headers` on whatever answer the client gets (the upstream's or Gatehouse's own).
//!
//! The rules come resolved per route from the config (`config::validate::headers`): one flat
//! list, one rule per header name, names and literal values already `HeaderName`s and
//! `HeaderValue`s, so a literal rule costs a hash lookup and a reference-count clone. Values with
//! placeholders are expanded once per request (`expand`), while the request is at hand; one that
//! expands to a byte no header may carry (CR, LF, NUL…) is left out and counted
//! (`gatehouse_header_values_dropped_total`): a placeholder never splits a header.

use crate::config::{HeaderOp, HeaderRules, RouteHeaders, RuleValue};
use crate::template::Vars;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;
use smallvec::SmallVec;

/// The expansions of a rule list's placeholders for one request, by slot
/// (`RuleValue::Template::slot`); `None` for one that cannot be a header value. A route has one
/// or two as a rule (`X-Real-IP`, `X-Request-Start`): those live inline, no allocation.
pub type Expanded = SmallVec<[Option<HeaderValue>; 2]>;

static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Expands every value of `rules` that has a placeholder; `dropped` counts those left out.
pub fn expand(rules: &HeaderRules, vars: &Vars<'_>, dropped: &IntCounter) -> Expanded {
    let mut out: Expanded = smallvec::smallvec![None; rules.templates];
    for rule in &rules.rules {
        for value in values(&rule.op) {
            let RuleValue::Template { template, slot } = value else {
                continue;
            };
            let expanded = template.render_header(vars);
            if expanded.is_none() {
                dropped.inc();
                tracing::debug!(header = %rule.name, template = %template, "header rule value left out: a placeholder expanded to a control character");
            }
            if let Some(out) = out.get_mut(*slot) {
                *out = expanded;
            }
        }
    }
    out
}

/// Applies `rules` to `headers`; `expanded` holds their placeholders' values (`expand`), empty
/// when they have none. They are moved out, not cloned: a clone of a freshly made value costs an
/// allocation (`bytes` turns a unique buffer into a shared one on its first clone).
pub fn apply(rules: &HeaderRules, headers: &mut HeaderMap, expanded: &mut [Option<HeaderValue>]) {
    for rule in &rules.rules {
        let name = &rule.name;
        match &rule.op {
            HeaderOp::Remove => {
                headers.remove(name);
            }
            HeaderOp::Set(values) => set(headers, name, values, expanded),
            HeaderOp::Add(values) => {
                for value in values.iter().filter_map(|v| value(v, expanded)) {
                    headers.append(name, value);
                }
            }
            HeaderOp::Default(values) => {
                if !headers.contains_key(name) {
                    set(headers, name, values, expanded);
                }
            }
        }
    }
}

/// Replaces every value of `name`. When no value is left (every one expanded to something no
/// header may carry), the header goes: what the message had must not pass in its place (a
/// client's own `X-User` where the rule meant to set it).
fn set(
    headers: &mut HeaderMap,
    name: &HeaderName,
    values: &[RuleValue],
    expanded: &mut [Option<HeaderValue>],
) {
    let mut values = values.iter().filter_map(|v| value(v, expanded));
    match values.next() {
        Some(first) => {
            headers.insert(name, first);
            for more in values {
                headers.append(name, more);
            }
        }
        None => {
            headers.remove(name);
        }
    }
}

fn value(value: &RuleValue, expanded: &mut [Option<HeaderValue>]) -> Option<HeaderValue> {
    match value {
        RuleValue::Literal(v) => Some(v.clone()),
        RuleValue::Template { slot, .. } => expanded.get_mut(*slot)?.take(),
    }
}

fn values(op: &HeaderOp) -> &[RuleValue] {
    match op {
        HeaderOp::Set(v) | HeaderOp::Add(v) | HeaderOp::Default(v) => v,
        HeaderOp::Remove => &[],
    }
}

/// What goes upstream, once Gatehouse's own headers (`Host`, `X-Forwarded-*`, `X-Real-IP`,
/// `X-Request-Id`) are set: `X-Forwarded-Prefix` for a `strip_prefix` route, then the route's
/// rules (which may override any of those but `Host`), then `upstream_host`.
pub fn upstream_request(
    headers: &mut HeaderMap,
    route: &RouteHeaders,
    expanded: &mut [Option<HeaderValue>],
    peer_trusted: bool,
) {
    if let Some(prefix) = &route.forwarded_prefix {
        forwarded_prefix(headers, prefix, peer_trusted);
    }
    if !route.request.is_empty() {
        apply(&route.request, headers, expanded);
    }
    if let Some(host) = &route.upstream_host {
        headers.insert(header::HOST, host.clone());
    }
}

/// `X-Forwarded-Prefix: /api` for a request whose `/api` was stripped: the path the upstream
/// sees starts where the client's had `/api`, so links it makes need the prefix back (Spring's
/// `ForwardedHeaderFilter`, ASP.NET's `ForwardedHeaders.XForwardedPrefix`). A client's own was
/// removed already unless its peer is a trusted proxy (`canonical::claims_to_be_edge`); such a
/// proxy's prefix (one that stripped a prefix of its own) comes first, as one value: `/outer`
/// and `/api` make `/outer/api`, the path the browser sees.
fn forwarded_prefix(headers: &mut HeaderMap, prefix: &HeaderValue, peer_trusted: bool) {
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PREFIX)) {
        headers.insert(X_FORWARDED_PREFIX.clone(), prefix.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for line in headers.get_all(&X_FORWARDED_PREFIX) {
        for part in line.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let end = part.iter().rposition(|b| *b != b'/').map_or(0, |i| i + 1);
            if !part.is_empty() && !part.starts_with(b"/") {
                joined.push(b'/');
            }
            joined.extend_from_slice(&part[..end]);
        }
    }
    joined.extend_from_slice(prefix.as_bytes());
    let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| prefix.clone());
    headers.insert(X_FORWARDED_PREFIX.clone(), value);
}

/// The response rules in effect for one request, with their placeholders expanded while the
/// request was at hand: the site's (or the server's) until a route is found, then the route's.
pub struct ResponseRules<'s> {
    rules: &'s HeaderRules,
    expanded: Expanded,
}

impl<'s> ResponseRules<'s> {
    /// `rules` with nothing expanded yet (`expand` next if they have placeholders).
    pub fn new(rules: &'s HeaderRules) -> ResponseRules<'s> {
        ResponseRules {
            rules,
            expanded: Expanded::new(),
        }
    }

    pub fn needs_vars(&self) -> bool {
        self.rules.templates > 0
    }

    pub fn expand(&mut self, vars: &Vars<'_>, dropped: &IntCounter) {
        self.expanded = expand(self.rules, vars, dropped);
    }

    /// Last on every answer, after the request id, HSTS and CORS, so a rule has the last word
    /// (the framing headers it cannot name are hyper's to write).
    /// No rules: `apply` changes nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn apply(&mut self, headers: &mut HeaderMap) {
        if !self.rules.is_empty() {
            apply(self.rules, headers, &mut self.expanded);
        }
    }
}

#[cfg(test)]
mod tests;
