//! The request-policy keys (`rate_limit`, `max_body`, `body_timeout`, `body_min_rate`,
//! `send_min_rate`, `allow`, `deny`), read at three levels: `[server]`, `[[site]]` and `[[site.route]]`, each key overriding the level above.

use super::{cidr, Ctx};
use crate::config::file::{FileRouteTimeouts, PolicyKeys, Str};
use crate::config::model::{MinRate, Policy, RateKey, RateLimit, DEFAULT_MIN_RATE};
use crate::config::units::{parse_duration, parse_size, DURATION_HINT, SIZE_HINT};
use http::Method;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

const RATE_HINT: &str = "expected `rate_limit = { requests = 60, per = \"1m\", burst = 20 }` (optionally with `methods = [\"POST\", \"PUT\"]` and `key = \"header:X-Tenant\"`), a list of such tables, or \"off\"";
const MIN_RATE_HINT: &str = "expected a rate like \"512B/s\" or \"1KB/s\" (from 1B/s to 1GB/s), a table like `{ rate = \"1KB/s\", window = \"30s\" }` (window from 1s to 1h, default as long as `body_timeout` or `timeouts.send`), or \"off\"";
const KEY_HINT: &str = "expected `key = \"ip\"` (per client address, the default) or `key = \"header:NAME\"` (per value of that request header, e.g. \"header:X-Tenant\")";

/// `inherited` with whatever `keys` sets; `key` is the config path prefix for errors
/// ("server", "site", "site.route") and `scope` names where a rate limit written here lives.
pub(super) fn resolve(
    cx: &mut Ctx,
    keys: PolicyKeys<'_>,
    inherited: &Policy,
    key: &str,
    scope: &str,
) -> Policy {
    let mut policy = inherited.clone();
    if let Some(value) = keys.rate_limit {
        policy.rate_limits = rate_limits(cx, value, &format!("{key}.rate_limit"), scope);
    }
    if let Some(value) = keys.max_body {
        policy.max_body = max_body(cx, value, &format!("{key}.max_body"), inherited.max_body);
    }
    if keys.body_timeout.is_some() {
        let name = format!("{key}.body_timeout");
        policy.body_timeout = cx.duration(&keys.body_timeout.cloned(), &name, policy.body_timeout);
    }
    if let Some(value) = keys.body_min_rate {
        policy.body_min_rate = min_rate(cx, value, &format!("{key}.body_min_rate"));
    }
    if let Some(value) = keys.send_min_rate {
        policy.send_min_rate = min_rate(cx, value, &format!("{key}.send_min_rate"));
    }
    if let Some(list) = keys.allow {
        policy.allow = cidrs(cx, list, &format!("{key}.allow"));
    }
    if let Some(list) = keys.deny {
        policy.deny = cidrs(cx, list, &format!("{key}.deny"));
    }
    policy
}

/// `timeouts = { upstream_connect, upstream_response }` of a site or route (`key`: "site",
/// "site.route") over what `policy` inherited, key by key.
pub(super) fn timeouts(
    cx: &mut Ctx,
    raw: Option<&Spanned<FileRouteTimeouts>>,
    policy: &mut Policy,
    key: &str,
) {
    let Some(raw) = raw else { return };
    let t = raw.get_ref();
    let connect = format!("{key}.timeouts.upstream_connect");
    policy.upstream_connect = cx.duration(&t.upstream_connect, &connect, policy.upstream_connect);
    let response = format!("{key}.timeouts.upstream_response");
    policy.upstream_response =
        cx.duration(&t.upstream_response, &response, policy.upstream_response);
}

fn cidrs(cx: &mut Ctx, list: &Spanned<Vec<Str>>, key: &str) -> Vec<ipnet::IpNet> {
    list.get_ref()
        .iter()
        .filter_map(|v| cidr(cx, v, key))
        .collect()
}

/// "off" lifts the limit; otherwise a size.
fn max_body(cx: &mut Ctx, value: &Str, key: &str, fallback: Option<u64>) -> Option<u64> {
    let text = cx.expand(value, key)?;
    if text == "off" {
        return None;
    }
    match parse_size(&text) {
        Some(n) if n > 0 => Some(n),
        _ => {
            let msg = format!("`{text}` is not a body size; expected {SIZE_HINT} (greater than zero), or \"off\" for no limit");
            cx.error(value.span(), key, msg);
            fallback
        }
    }
}

/// `"off"`, a rate (`"512B/s"`), or `{ rate, window }`. An error leaves the default.
fn min_rate(cx: &mut Ctx, value: &Spanned<toml::Value>, key: &str) -> Option<MinRate> {
    let span = value.span();
    let refuse = |cx: &mut Ctx, what: String| {
        cx.error(span.clone(), key, format!("{what}; {MIN_RATE_HINT}"));
        Some(DEFAULT_MIN_RATE)
    };
    let (rate, window) = match value.get_ref() {
        toml::Value::String(text) => (text, None),
        toml::Value::Table(table) => {
            if let Some(unknown) = table
                .keys()
                .find(|k| !matches!(k.as_str(), "rate" | "window"))
            {
                return refuse(cx, format!("unknown key `{unknown}`"));
            }
            let Some(toml::Value::String(rate)) = table.get("rate") else {
                return refuse(cx, "`rate` is missing or not a string".into());
            };
            (rate, table.get("window"))
        }
        other => return refuse(cx, format!("`{other}` is not a minimum rate")),
    };
    let rate = cx.expand(&Spanned::new(span.clone(), rate.clone()), key)?;
    if rate == "off" && window.is_none() {
        return None;
    }
    let per_sec = rate.strip_suffix("/s").and_then(parse_size);
    let Some(bytes_per_sec) = per_sec.filter(|n| (1..=1 << 30).contains(n)) else {
        return refuse(cx, format!("`{rate}` is not a rate"));
    };
    let window = match window {
        None => None,
        Some(toml::Value::String(text)) => {
            let text = cx.expand(&Spanned::new(span.clone(), text.clone()), key)?;
            let valid = |d: &Duration| (1..=3600).contains(&d.as_secs());
            match parse_duration(&text).filter(valid) {
                Some(d) => Some(d),
                None => return refuse(cx, format!("`window = \"{text}\"` is not a window")),
            }
        }
        Some(other) => return refuse(cx, format!("`window = {other}` is not a window")),
    };
    Some(MinRate {
        bytes_per_sec: bytes_per_sec as u32,
        window,
    })
}

fn rate_limits(
    cx: &mut Ctx,
    value: &Spanned<toml::Value>,
    key: &str,
    scope: &str,
) -> Vec<RateLimit> {
    let span = value.span();
    let tables: Vec<&toml::Table> = match value.get_ref() {
        toml::Value::String(s) if s == "off" => return Vec::new(),
        toml::Value::Table(t) => vec![t],
        toml::Value::Array(items) if !items.is_empty() => {
            let tables: Option<Vec<_>> = items.iter().map(toml::Value::as_table).collect();
            let Some(tables) = tables else {
                cx.error(
                    span,
                    key,
                    format!("every entry must be a table; {RATE_HINT}"),
                );
                return Vec::new();
            };
            tables
        }
        other => {
            cx.error(
                span,
                key,
                format!("`{other}` is not a rate limit; {RATE_HINT}"),
            );
            return Vec::new();
        }
    };
    tables
        .into_iter()
        .enumerate()
        .filter_map(|(i, table)| {
            let scope = format!("{scope} #{}", i + 1);
            rate_limit(cx, table, span.clone(), key, scope)
        })
        .collect()
}

fn rate_limit(
    cx: &mut Ctx,
    table: &toml::Table,
    span: Range<usize>,
    key: &str,
    scope: String,
) -> Option<RateLimit> {
    if let Some(unknown) = table
        .keys()
        .find(|k| !matches!(k.as_str(), "requests" | "per" | "burst" | "methods" | "key"))
    {
        let msg = format!("unknown key `{unknown}`; {RATE_HINT}");
        cx.error(span, key, msg);
        return None;
    }
    let count = |cx: &mut Ctx, name: &str| -> Option<Option<u32>> {
        match table.get(name) {
            None => Some(None),
            Some(toml::Value::Integer(n)) if (1..=1_000_000_000).contains(n) => {
                u32::try_from(*n).ok().map(Some)
            }
            Some(other) => {
                let msg = format!(
                    "`{name} = {other}`: expected a whole number from 1 to 1000000000; {RATE_HINT}"
                );
                cx.error(span.clone(), key, msg);
                None
            }
        }
    };
    let requests = count(cx, "requests")?;
    let burst = count(cx, "burst")?;
    let Some(requests) = requests else {
        cx.error(span, key, format!("`requests` is missing; {RATE_HINT}"));
        return None;
    };
    let per = match table.get("per") {
        None => Duration::from_secs(1),
        Some(toml::Value::String(text)) => {
            let text = cx.expand(&Spanned::new(span.clone(), text.clone()), key)?;
            match parse_duration(&text) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    let msg = format!("`per = \"{text}\"`: expected {DURATION_HINT}");
                    cx.error(span, key, msg);
                    return None;
                }
            }
        }
        Some(other) => {
            let msg = format!("`per = {other}`: expected {DURATION_HINT}");
            cx.error(span, key, msg);
            return None;
        }
    };
    if per.as_nanos() / u128::from(requests) == 0 {
        let msg = "more than one request per nanosecond cannot be limited; lower `requests`";
        cx.error(span, key, msg);
        return None;
    }
    let methods = methods(cx, table.get("methods"), span.clone(), key)?;
    let by = rate_key(cx, table.get("key"), span, key)?;
    Some(RateLimit {
        requests,
        per,
        burst: burst.unwrap_or(requests),
        methods,
        key: by,
        scope,
    })
}

fn methods(
    cx: &mut Ctx,
    value: Option<&toml::Value>,
    span: Range<usize>,
    key: &str,
) -> Option<Vec<Method>> {
    let Some(value) = value else {
        return Some(Vec::new());
    };
    let refuse = |cx: &mut Ctx| {
        let msg = format!("`methods = {value}`: expected a non-empty list of upper-case method names like [\"POST\", \"PUT\", \"PATCH\", \"DELETE\"]");
        cx.error(span.clone(), key, msg);
        None
    };
    let Some(items) = value.as_array().filter(|items| !items.is_empty()) else {
        return refuse(cx);
    };
    let mut list = Vec::with_capacity(items.len());
    for item in items {
        let Some(name) = item.as_str() else {
            return refuse(cx);
        };
        let name = cx.expand(&Spanned::new(span.clone(), name.to_owned()), key)?;
        let upper = !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase());
        match Method::from_bytes(name.as_bytes()) {
            Ok(method) if upper => list.push(method),
            _ => return refuse(cx),
        }
    }
    Some(list)
}

/// `"ip"` or `"header:NAME"`; the name as HTTP allows it (matched case-insensitively).
fn rate_key(
    cx: &mut Ctx,
    value: Option<&toml::Value>,
    span: Range<usize>,
    key: &str,
) -> Option<RateKey> {
    let text = match value {
        None => return Some(RateKey::Ip),
        Some(toml::Value::String(text)) => {
            cx.expand(&Spanned::new(span.clone(), text.clone()), key)?
        }
        Some(other) => {
            cx.error(span, key, format!("`key = {other}`: {KEY_HINT}"));
            return None;
        }
    };
    if text == "ip" {
        return Some(RateKey::Ip);
    }
    let msg = match text.strip_prefix("header:") {
        Some("") => format!("`key = \"{text}\"` names no header; {KEY_HINT}"),
        Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => return Some(RateKey::Header(name)),
            Err(_) => format!("`{name}` is not a header name (letters, digits and !#$%&'*+-.^_`|~, no spaces or colons); {KEY_HINT}"),
        },
        None => format!("`key = \"{text}\"` is not something a rate limit can count by; {KEY_HINT}"),
    };
    cx.error(span, key, msg);
    None
}
