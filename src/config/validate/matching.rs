//! A route's matcher (`path`, `exact` or `regex`), its conditions (`methods`, `headers`,
//! `query`), the templates it may carry (with its regex's captures), and what its proxy sends
//! upstream (`strip_prefix`, `upstream_path`, `rewrite`, `rewrite_location`).

use super::{route_path, Ctx, Repeats};
use crate::config::file::{FileRoute, Str};
use crate::config::model::{
    Conditions, PathMatch, PathParameters, PathRules, Pattern, Route, UpstreamTarget, ValueMatch,
};
use crate::config::EncodedSlashes;
use crate::template::{Captures, Part, Template};
use http::{HeaderName, HeaderValue, Method};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use toml::Spanned;

const REGEX_HINT: &str = "expected the `regex` crate's syntax (nginx's PCRE without look-around or backreferences), e.g. \"^/u/(?<id>[0-9]+)/avatar$\"";
const VALUE_HINT: &str = "expected the exact value, \"~REGEX\" or \"*\" (present with any value)";

/// `path`, `exact` or `regex`: exactly one.
pub(super) fn matcher(cx: &mut Ctx, raw: &Spanned<FileRoute>) -> Option<PathMatch> {
    let r = raw.get_ref();
    match (&r.path, &r.exact, &r.regex) {
        (Some(p), None, None) => route_path(cx, p, "site.route.path").map(PathMatch::Prefix),
        (None, Some(e), None) => route_path(cx, e, "site.route.exact").map(PathMatch::Exact),
        (None, None, Some(re)) => pattern(cx, re, "site.route.regex").map(PathMatch::Regex),
        _ => {
            let msg = "a route needs exactly one of `path` (prefix match), `exact` (exact match) or `regex` (a regex searched in the path)";
            cx.error(raw.span(), "site.route", msg);
            None
        }
    }
}

/// Where the route's `path`, `exact` or `regex` value is written.
pub(super) fn matcher_span(raw: &Spanned<FileRoute>) -> Range<usize> {
    let r = raw.get_ref();
    let value = r.path.as_ref().or(r.exact.as_ref()).or(r.regex.as_ref());
    value.map_or(raw.span(), Spanned::span)
}

fn pattern(cx: &mut Ctx, value: &Str, key: &str) -> Option<Pattern> {
    let text = cx.expand(value, key)?;
    compile(cx, &text, value.span(), key)
}

fn compile(cx: &mut Ctx, text: &str, span: Range<usize>, key: &str) -> Option<Pattern> {
    match Pattern::new(text) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.error(span, key, regex_error(text, &e));
            None
        }
    }
}

/// The regex crate's message in one line (its syntax errors draw the pattern with a caret).
fn regex_error(text: &str, e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => format!(
            "`{text}` compiles to more than {} MiB, the limit for one regex; make it smaller: ASCII classes (`[0-9]`, `[a-z]`, `(?-u:\\w)`) rather than Unicode ones (`\\w`, `\\d`), fewer or smaller counted repetitions",
            limit >> 20
        ),
        regex::Error::Syntax(msg) => {
            let why = msg
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(msg);
            format!("`{text}` is not a valid regex: {why}; {REGEX_HINT}")
        }
        other => format!("`{text}` is not a valid regex: {other}; {REGEX_HINT}"),
    }
}

/// `methods`, `headers` and `query`; an entry in error is left out (the error is reported).
pub(super) fn conditions(cx: &mut Ctx, r: &FileRoute) -> Conditions {
    Conditions {
        methods: r.methods.as_ref().map_or_else(Vec::new, |m| methods(cx, m)),
        headers: r.headers.as_ref().map_or_else(Vec::new, |h| headers(cx, h)),
        query: r.query.as_ref().map_or_else(Vec::new, |q| query(cx, q)),
    }
}

fn methods(cx: &mut Ctx, list: &Spanned<Vec<Str>>) -> Vec<Method> {
    let key = "site.route.methods";
    if list.get_ref().is_empty() {
        let msg = "`methods` is empty, so the route would take no request; list the methods it takes, like [\"GET\", \"HEAD\"], or leave `methods` out for any method";
        cx.error(list.span(), key, msg);
        return Vec::new();
    }
    cx.list(list, key, Repeats::Dropped, method)
        .unwrap_or_else(|good| good)
}

fn method(text: &str) -> Result<Method, String> {
    let upper = text.to_ascii_uppercase();
    if upper == "CONNECT" || upper == "TRACE" {
        return Err(format!("`{text}` requests are refused before routing (405: Gatehouse is no forward proxy); list the methods the route takes, like \"GET\", \"POST\""));
    }
    match Method::from_bytes(text.as_bytes()) {
        Ok(method) if upper == text => Ok(method),
        Ok(_) => Err(format!("methods are upper-case: \"{upper}\" (a request with `{text}` is refused before routing)")),
        Err(_) => Err(format!("`{text}` is not a method name; expected an upper-case token like \"GET\", \"POST\" or \"PROPFIND\"")),
    }
}

type Table = Spanned<BTreeMap<Spanned<String>, Str>>;

fn headers(cx: &mut Ctx, table: &Table) -> Vec<(HeaderName, ValueMatch)> {
    let key = "site.route.headers";
    let mut out: Vec<(HeaderName, ValueMatch)> = Vec::new();
    for (name, value) in table.get_ref() {
        let Ok(header) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
            let msg = format!("`{}` is not a header name; expected letters, digits and !#$%&'*+-.^_`|~, like \"Upgrade\" or \"X-Requested-With\"", name.get_ref());
            cx.error(name.span(), key, msg);
            continue;
        };
        if out.iter().any(|(n, _)| *n == header) {
            let msg = format!("`{}` is listed twice (header names are case-insensitive); write one condition per header", name.get_ref());
            cx.error(name.span(), key, msg);
            continue;
        }
        let Some(want) = value_match(cx, value, key) else {
            continue;
        };
        if let ValueMatch::Exact(text) = &want {
            if HeaderValue::from_str(text).is_err() {
                let msg = format!(
                    "`{text}` can never be a header's value (a control character); {VALUE_HINT}"
                );
                cx.error(value.span(), key, msg);
                continue;
            }
        }
        out.push((header, want));
    }
    out
}

fn query(cx: &mut Ctx, table: &Table) -> Vec<(String, ValueMatch)> {
    let key = "site.route.query";
    let mut out = Vec::new();
    for (name, value) in table.get_ref() {
        let text = name.get_ref();
        if text.is_empty() || text.contains(['=', '&', '#']) {
            let msg = format!("`{text}` is not a query argument name; expected the name as the client sends it, like \"format\" in `?format=json`");
            cx.error(name.span(), key, msg);
            continue;
        }
        let Some(want) = value_match(cx, value, key) else {
            continue;
        };
        if matches!(&want, ValueMatch::Exact(v) if v.contains(['&', '#'])) {
            let msg =
                format!("an argument's value never holds `&` or `#` (they end it); {VALUE_HINT}");
            cx.error(value.span(), key, msg);
            continue;
        }
        out.push((text.clone(), want));
    }
    out
}

/// `"*"`, `"~REGEX"` or the exact text.
fn value_match(cx: &mut Ctx, value: &Str, key: &str) -> Option<ValueMatch> {
    let text = cx.expand(value, key)?;
    if text == "*" {
        return Some(ValueMatch::Present);
    }
    match text.strip_prefix('~') {
        Some(re) => compile(cx, re, value.span(), key).map(ValueMatch::Regex),
        None => Some(ValueMatch::Exact(text)),
    }
}

/// A template on a route (`redirect`, `rewrite`, header rules), which may name the captures of
/// the route's regex. On a route without `regex` an unknown placeholder's error says that
/// captures need one.
pub(super) fn route_template(
    cx: &mut Ctx,
    text: &str,
    span: Range<usize>,
    key: &str,
    matcher: &PathMatch,
) -> Option<Template> {
    let names = matcher.capture_names();
    match Template::parse(text, Captures { names: &names }) {
        Ok(template) => Some(template),
        Err(mut msg) => {
            if !matches!(matcher, PathMatch::Regex(_)) && msg.starts_with("unknown placeholder") {
                msg.push_str("; a capture group (`{1}`, `{name}`) needs a route with `regex`");
            }
            cx.error(span, key, msg);
            None
        }
    }
}

/// What a proxy route sends upstream and whether it maps `Location` back; `None` after an error.
pub(super) fn upstream_target(
    cx: &mut Ctx,
    r: &FileRoute,
    matcher: &PathMatch,
) -> Option<(UpstreamTarget, bool)> {
    let strip = r.strip_prefix.as_ref().filter(|s| *s.get_ref());
    let set: Vec<(&str, Range<usize>)> = [
        strip.map(|s| ("strip_prefix", s.span())),
        r.upstream_path
            .as_ref()
            .map(|s| ("upstream_path", s.span())),
        r.rewrite.as_ref().map(|s| ("rewrite", s.span())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let [(first, _), (second, span), ..] = set.as_slice() {
        let msg = format!("`{first}` and `{second}` both say what path goes upstream; keep one: `strip_prefix` removes the matched prefix, `upstream_path` replaces it, `rewrite` builds the whole target");
        cx.error(span.clone(), &format!("site.route.{second}"), msg);
        return None;
    }
    let target = match (strip, &r.upstream_path, &r.rewrite) {
        (Some(strip), _, _) => {
            if !matches!(matcher, PathMatch::Prefix(_)) {
                let msg = "`strip_prefix` only applies to a `path` route (with `exact` or `regex`, say what goes upstream with `upstream_path` or `rewrite`)";
                cx.error(strip.span(), "site.route.strip_prefix", msg);
                return None;
            }
            UpstreamTarget::StripPrefix
        }
        (_, Some(path), _) => upstream_path(cx, path, matcher)?,
        (_, _, Some(rewrite)) => rewrite_target(cx, rewrite, matcher)?,
        _ => UpstreamTarget::AsIs,
    };
    let rewrite_location = r.rewrite_location.as_ref().is_none_or(|b| *b.get_ref());
    Some((target, rewrite_location))
}

/// The keys only a route with `upstream` takes, on a route without: each an error
/// (`strip_prefix` only with `strip`: a `files` route takes it too).
pub(super) fn only_for_proxy(cx: &mut Ctx, r: &FileRoute, strip: bool) {
    let keys = [
        (
            "strip_prefix",
            r.strip_prefix
                .as_ref()
                .filter(|s| strip && *s.get_ref())
                .map(Spanned::span),
        ),
        ("upstream_path", r.upstream_path.as_ref().map(Spanned::span)),
        ("rewrite", r.rewrite.as_ref().map(Spanned::span)),
        (
            "rewrite_location",
            r.rewrite_location.as_ref().map(Spanned::span),
        ),
    ];
    for (key, span) in keys {
        if let Some(span) = span {
            let msg = format!("`{key}` says what is sent upstream, and this route has no `upstream`; add `upstream = \"NAME\"` or remove `{key}`");
            cx.error(span, &format!("site.route.{key}"), msg);
        }
    }
}

fn upstream_path(cx: &mut Ctx, value: &Str, matcher: &PathMatch) -> Option<UpstreamTarget> {
    let key = "site.route.upstream_path";
    let path = route_path(cx, value, key)?;
    let relaxed = PathRules {
        merge_slashes: false,
        encoded_slashes: EncodedSlashes::Keep,
        parameters: PathParameters::Keep,
    };
    if !matches!(
        crate::http::canonical::path(&path, relaxed),
        Ok(Cow::Borrowed(_))
    ) {
        let msg = format!("`{path}` is not a canonical path (no `.` or `..` segments, `%XX` only where needed, upper-case hex); e.g. \"/v2/\"");
        cx.error(value.span(), key, msg);
        return None;
    }
    let msg = match matcher {
        PathMatch::Regex(_) => "`upstream_path` replaces the matched prefix, and a `regex` route has none; build the target with `rewrite`, e.g. `rewrite = \"/v2/{1}\"` with the regex's captures".to_string(),
        PathMatch::Prefix(prefix) if prefix.ends_with('/') != path.ends_with('/') => format!(
            "`{path}` replaces the prefix `{prefix}` as it is, so `{prefix}x` would go upstream as `{path}x`; end both with `/` or neither"
        ),
        _ => return Some(UpstreamTarget::ReplacePrefix(path)),
    };
    cx.error(value.span(), key, msg);
    None
}

fn rewrite_target(cx: &mut Ctx, value: &Str, matcher: &PathMatch) -> Option<UpstreamTarget> {
    let key = "site.route.rewrite";
    let text = cx.expand(value, key)?;
    let template = route_template(cx, &text, value.span(), key, matcher)?;
    let starts_as_path = match template.parts().first() {
        Some(Part::Literal(lit)) => lit.starts_with('/'),
        Some(Part::Path | Part::Uri | Part::Capture(_)) => true,
        _ => false,
    };
    let bad_literal = template.parts().iter().any(|p| {
        matches!(p, Part::Literal(lit) if lit.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'#'))
    });
    let msg = if !starts_as_path {
        format!("`{text}` does not start with a path; expected `/`, `{{path}}`, `{{uri}}` or a capture first, e.g. \"/avatars/{{id}}?size={{query.s}}\"")
    } else if bad_literal {
        format!("`{text}` holds a space, a `#` or a control character, which no request target may; percent-encode it (`%20`)")
    } else {
        return Some(UpstreamTarget::Rewrite(template));
    };
    cx.error(value.span(), key, msg);
    None
}

/// A route after an earlier one of the same site with the same matcher (an `exact` path with
/// or without its trailing slash) and no conditions, or the same ones, is never chosen: an error
/// at the later one.
pub(super) fn unreachable(cx: &mut Ctx, routes: &[(Route, Range<usize>)]) {
    let mut seen: HashMap<(u8, &str), Vec<usize>> = HashMap::new();
    for (i, (route, span)) in routes.iter().enumerate() {
        let (kind, text, key) = match &route.matcher {
            PathMatch::Prefix(p) => (0, p.as_str(), "site.route.path"),
            PathMatch::Exact(p) => (1, exact_key(p), "site.route.exact"),
            PathMatch::Regex(r) => (2, r.as_str(), "site.route.regex"),
        };
        let earlier = seen.entry((kind, text)).or_default();
        let shadow = earlier.iter().find(|j| {
            let c = &routes[**j].0.conditions;
            c.is_empty() || *c == route.conditions
        });
        if let Some(j) = shadow {
            let why = match routes[*j].0.conditions.is_empty() {
                true => "has no conditions",
                false => "has the same conditions",
            };
            let line = cx.text[..routes[*j].1.start.min(cx.text.len())]
                .matches('\n')
                .count()
                + 1;
            let msg = format!(
                "this route is never chosen: the route at line {line} matches `{}` too and {why}; remove one, or give the earlier one conditions (`methods`, `headers`, `query`)",
                route.matcher.as_str()
            );
            cx.error(span.clone(), key, msg);
        }
        earlier.push(i);
    }
}

/// `/login/` and `/login` are one exact path to the router.
fn exact_key(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

#[cfg(test)]
mod tests;
