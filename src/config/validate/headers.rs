//! The header-rule keys `request_headers` and `response_headers` of `[server]`, `[[site]]` and
//! `[[site.route]]`, resolved per header name down to each level (a route's rule for a name
//! replaces its site's, a site's the server's), and `upstream_host`.
//!
//! Every value is a template (`crate::template`) parsed here: an unknown placeholder, a control
//! byte in the literal text, a name that frames the message or describes one hop is a config
//! error, so the request path only ever copies or expands what was checked.

use super::{ipv6_host, is_hostname, Ctx};
use crate::config::file::{FileHeaderValues, FileRequestHeaders, FileRoute, HeaderKeys, Str};
use crate::config::model::{
    Action, HeaderOp, HeaderRule, HeaderRules, PathMatch, RouteHeaders, RuleValue, UpstreamTarget,
};
use crate::template::{Captures, Part, Template};
use http::{HeaderName, HeaderValue};
use std::ops::Range;
use toml::Spanned;

/// Which message the rules act on: `Host` may not be touched on the request only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// Both sides' rules as resolved at one level (the server's; a site's over the server's).
#[derive(Clone, Debug, Default)]
pub(super) struct Inherited {
    pub request: HeaderRules,
    pub response: HeaderRules,
}

/// What a site hands its routes: its rules (over the server's) and its `upstream_host`.
#[derive(Clone, Debug, Default)]
pub(super) struct SiteHeaders {
    pub rules: Inherited,
    pub upstream_host: Option<HeaderValue>,
}

/// A route's headers: its rules over its site's, its `upstream_host` or the site's, and the
/// `X-Forwarded-Prefix` its `strip_prefix` sends. `captures`: the capture groups of the
/// route's regex, which its templates may name.
pub(super) fn route(
    cx: &mut Ctx,
    raw: &FileRoute,
    (matcher, action): (&PathMatch, &Action),
    site: &SiteHeaders,
    captures: Captures<'_>,
) -> RouteHeaders {
    let rules = resolve(cx, raw.header_keys(), &site.rules, "site.route", captures);
    let proxies = matches!(action, Action::Proxy { .. });
    let own = raw.request_headers.as_ref().filter(|_| !proxies);
    if let Some(span) = own.and_then(first_span) {
        let msg = "`request_headers` only apply to a route with an `upstream` (they change what is sent there); a site's or the server's are inherited by those routes alone";
        cx.error(span, "site.route.request_headers", msg);
    }
    let upstream_host = match &raw.upstream_host {
        None => site.upstream_host.clone(),
        Some(value) if !proxies => {
            let msg = "`upstream_host` only applies to a route with an `upstream` (it is the `Host` sent there)";
            cx.error(value.span(), "site.route.upstream_host", msg);
            None
        }
        Some(value) => upstream_host(cx, value, "site.route.upstream_host"),
    };
    RouteHeaders {
        response_as_site: rules.response == site.rules.response,
        request: rules.request,
        response: rules.response,
        upstream_host,
        forwarded_prefix: forwarded_prefix(matcher, action),
    }
}

/// What a `strip_prefix` route removes, as `X-Forwarded-Prefix` says it: without the trailing
/// slash (Spring and ASP.NET append the path to it), none for `/`.
fn forwarded_prefix(matcher: &PathMatch, action: &Action) -> Option<HeaderValue> {
    let (PathMatch::Prefix(prefix), Action::Proxy { target, .. }) = (matcher, action) else {
        return None;
    };
    let prefix = prefix.trim_end_matches('/');
    if *target != UpstreamTarget::StripPrefix || prefix.is_empty() {
        return None;
    }
    // a route path holds no control byte or space (`route_path`)
    HeaderValue::from_str(prefix).ok()
}

/// `inherited` with the rules written at this level (`keys`): per header name, this level's
/// rule replaces the inherited one. `key` is the config path ("server", "site", "site.route");
/// `captures` the capture groups a template may name (a route's regex; none elsewhere).
pub(super) fn resolve(
    cx: &mut Ctx,
    keys: HeaderKeys<'_>,
    inherited: &Inherited,
    key: &str,
    captures: Captures<'_>,
) -> Inherited {
    let request = keys.request.map(|r| {
        let ops = [(Op::Set, r.set.as_ref()), (Op::Add, r.add.as_ref())];
        let level = Level {
            side: Side::Request,
            key: &format!("{key}.request_headers"),
            captures,
        };
        level.rules(cx, &ops, r.remove.as_ref())
    });
    let response = keys.response.map(|r| {
        let ops = [
            (Op::Set, r.set.as_ref()),
            (Op::Add, r.add.as_ref()),
            (Op::Default, r.default.as_ref()),
        ];
        let level = Level {
            side: Side::Response,
            key: &format!("{key}.response_headers"),
            captures,
        };
        level.rules(cx, &ops, r.remove.as_ref())
    });
    Inherited {
        request: inherit(&inherited.request, request),
        response: inherit(&inherited.response, response),
    }
}

/// `parent`'s rules for the names `own` does not name, then `own`'s; template slots numbered
/// afresh.
fn inherit(parent: &HeaderRules, own: Option<Vec<HeaderRule>>) -> HeaderRules {
    let Some(own) = own.filter(|o| !o.is_empty()) else {
        return parent.clone();
    };
    let mut rules: Vec<HeaderRule> = parent
        .rules
        .iter()
        .filter(|p| !own.iter().any(|o| o.name == p.name))
        .cloned()
        .collect();
    rules.extend(own);
    let mut templates = 0;
    for rule in &mut rules {
        let values = match &mut rule.op {
            HeaderOp::Set(v) | HeaderOp::Add(v) | HeaderOp::Default(v) => v,
            HeaderOp::Remove => continue,
        };
        for value in values {
            if let RuleValue::Template { slot, .. } = value {
                *slot = templates;
                templates += 1;
            }
        }
    }
    HeaderRules { rules, templates }
}

#[derive(Clone, Copy)]
enum Op {
    Set,
    Add,
    Default,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Add => "add",
            Op::Default => "default",
        }
    }

    fn with(self, values: Vec<RuleValue>) -> HeaderOp {
        match self {
            Op::Set => HeaderOp::Set(values),
            Op::Add => HeaderOp::Add(values),
            Op::Default => HeaderOp::Default(values),
        }
    }
}

/// Where a `request_headers` table says something: its first header name, else its `remove`
/// list; `None` for an empty table (which does nothing).
fn first_span(table: &FileRequestHeaders) -> Option<Range<usize>> {
    let names = [&table.set, &table.add]
        .into_iter()
        .flatten()
        .flat_map(|t| t.keys());
    let first = names.map(Spanned::span).min_by_key(|s| s.start);
    first.or_else(|| table.remove.as_ref().map(Spanned::span))
}

/// One `request_headers` or `response_headers` table being read.
struct Level<'k, 'c> {
    side: Side,
    key: &'k str,
    captures: Captures<'c>,
}

type Tables<'a> = [(Op, Option<&'a FileHeaderValues>)];

impl Level<'_, '_> {
    /// The table's rules, each name at most once (in whichever of its keys).
    fn rules(
        &self,
        cx: &mut Ctx,
        tables: &Tables<'_>,
        remove: Option<&Spanned<Vec<Str>>>,
    ) -> Vec<HeaderRule> {
        let mut rules: Vec<HeaderRule> = Vec::new();
        for (op, table) in tables {
            let Some(table) = table else { continue };
            let key = format!("{}.{}", self.key, op.word());
            for (written, value) in *table {
                let Some(name) = self.name(cx, written, &key, &rules) else {
                    continue;
                };
                if let Some(values) = self.values(cx, written.get_ref(), value, &key) {
                    let op = op.with(values);
                    rules.push(HeaderRule { name, op });
                }
            }
        }
        if let Some(list) = remove {
            let key = format!("{}.remove", self.key);
            for name in list.get_ref() {
                if let Some(name) = self.name(cx, name, &key, &rules) {
                    let op = HeaderOp::Remove;
                    rules.push(HeaderRule { name, op });
                }
            }
        }
        rules
    }

    /// A header name a rule may act on, not yet named at this level.
    fn name(
        &self,
        cx: &mut Ctx,
        raw: &Str,
        key: &str,
        so_far: &[HeaderRule],
    ) -> Option<HeaderName> {
        let text = cx.expand(raw, key)?;
        let Ok(name) = HeaderName::from_bytes(text.as_bytes()) else {
            let msg = format!("`{text}` is not a header name; expected a name like \"X-Frame-Options\" (letters, digits and !#$%&'*+-.^_`|~)");
            cx.error(raw.span(), key, msg);
            return None;
        };
        if let Some(why) = forbidden(&name, self.side) {
            cx.error(raw.span(), key, format!("`{text}` {why}"));
            return None;
        }
        if let Some(first) = so_far.iter().find(|r| r.name == name) {
            let msg = format!(
                "`{text}` already has a rule here (in `{}`; header names are case-insensitive); one rule per header name and level: `set` replaces, `add` appends, `default` sets when absent, `remove` removes",
                first.op.word()
            );
            cx.error(raw.span(), key, msg);
            return None;
        }
        Some(name)
    }

    /// A string or a list of strings, each a template.
    fn values(
        &self,
        cx: &mut Ctx,
        name: &str,
        raw: &Spanned<toml::Value>,
        key: &str,
    ) -> Option<Vec<RuleValue>> {
        let texts: Vec<&String> = match raw.get_ref() {
            toml::Value::String(text) => vec![text],
            toml::Value::Array(list) if !list.is_empty() => {
                let strings: Option<Vec<&String>> = list
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                strings.or_else(|| {
                    cx.error(raw.span(), key, format!("`{name}`: {VALUE_HINT}"));
                    None
                })?
            }
            toml::Value::Array(_) => {
                let msg = format!("`{name}`: an empty list gives the header no value; write `remove = [\"{name}\"]` to remove it");
                cx.error(raw.span(), key, msg);
                return None;
            }
            other => {
                let msg = format!("`{name}`: `{other}` is not a header value; {VALUE_HINT}");
                cx.error(raw.span(), key, msg);
                return None;
            }
        };
        let values: Vec<Option<RuleValue>> = texts
            .into_iter()
            .map(|text| self.value(cx, name, text, raw.span(), key))
            .collect();
        values.into_iter().collect()
    }

    fn value(
        &self,
        cx: &mut Ctx,
        name: &str,
        text: &str,
        span: Range<usize>,
        key: &str,
    ) -> Option<RuleValue> {
        let text = cx.expand(&Spanned::new(span.clone(), text.to_string()), key)?;
        let template = match Template::parse(&text, self.captures) {
            Ok(t) => t,
            Err(message) => {
                cx.error(span, key, format!("`{name}`: {message}"));
                return None;
            }
        };
        let literals = template.parts().iter().filter_map(|p| match p {
            Part::Literal(text) => Some(text.as_str()),
            _ => None,
        });
        if let Some(bad) = literals
            .flat_map(str::chars)
            .find(|c| is_forbidden_char(*c))
        {
            let msg = format!("`{name}`: the value contains the control character {bad:?}, which no header value may carry (CR or LF would end the header line; the others are refused by HTTP peers)");
            cx.error(span, key, msg);
            return None;
        }
        let Some(text) = template.literal() else {
            return Some(RuleValue::Template { template, slot: 0 });
        };
        match HeaderValue::from_str(text) {
            Ok(value) => Some(RuleValue::Literal(value)),
            Err(_) => {
                let msg = format!("`{name}`: not a valid header value");
                cx.error(span, key, msg);
                None
            }
        }
    }
}

const VALUE_HINT: &str =
    "expected a string like \"DENY\", or a list of strings like [\"a\", \"b\"] for several lines";

/// A byte no header value may hold (RFC 9110 5.5): controls other than tab, and DEL.
fn is_forbidden_char(c: char) -> bool {
    (c.is_ascii_control() && c != '\t') || c == '\u{7f}'
}

/// Why a rule may not act on `name`, if it may not.
fn forbidden(name: &HeaderName, side: Side) -> Option<&'static str> {
    match name.as_str() {
        "content-length" | "transfer-encoding" => Some("cannot be set, added, defaulted or removed by a rule: it frames the message, so Gatehouse derives it from the body on each side (a rule that changed it could make the client or the upstream read the body wrong: request smuggling, cut answers)"),
        "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade" => Some("cannot be set, added, defaulted or removed by a rule: it is hop-by-hop (it describes one connection), removed on both sides, and set by Gatehouse itself where needed (upgrades, closing a connection)"),
        "host" if side == Side::Request => Some("cannot be changed by a rule: the upstream gets the client's canonical host; set `upstream_host = \"api.internal\"` on the site or route to send another one"),
        _ => None,
    }
}

/// `upstream_host`: a host name or address with an optional port, as `Host` carries it.
pub(super) fn upstream_host(cx: &mut Ctx, value: &Str, key: &str) -> Option<HeaderValue> {
    let text = cx.expand(value, key)?;
    let lower = text.to_ascii_lowercase();
    let (host, port) = match lower.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            (host, Some(port))
        }
        _ => (lower.as_str(), None),
    };
    let host_ok = is_hostname(host)
        || host.parse::<std::net::Ipv4Addr>().is_ok()
        || (host.starts_with('[') && ipv6_host(host).is_some());
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    match HeaderValue::from_str(&lower) {
        Ok(v) if host_ok && port_ok => Some(v),
        _ => {
            let msg = format!("`{text}` is not a host for the `Host` header; expected a name or address with an optional port, like \"api.internal\", \"api.internal:8080\" or \"[2001:db8::1]:8080\" (no scheme, no path)");
            cx.error(value.span(), key, msg);
            None
        }
    }
}

#[cfg(test)]
mod tests;
