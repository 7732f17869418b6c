//! `[server] resolver`: the DNS servers upstream names are asked at, instead of the system resolver.

use super::{is_hostname, Ctx};
use crate::config::model::Resolver;
use std::net::{IpAddr, SocketAddr};
use toml::Spanned;

const KEY: &str = "server.resolver";
const HINT: &str = "expected a list of DNS servers as \"IP:PORT\" (port 53 if left out), e.g. resolver = [\"127.0.0.1:53\"] or [\"10.0.0.2:53\", \"10.0.0.3:53\"]";

pub(super) fn resolver(cx: &mut Ctx, raw: Option<&Spanned<toml::Value>>) -> Resolver {
    let Some(raw) = raw else {
        return Resolver::System;
    };
    let list = match raw.get_ref() {
        toml::Value::Array(list) if !list.is_empty() => list,
        toml::Value::Array(_) => {
            let msg = format!("`resolver` is empty; leave it out to use the system resolver (/etc/resolv.conf), or {HINT}");
            cx.error(raw.span(), KEY, msg);
            return Resolver::System;
        }
        toml::Value::String(one) => {
            let msg = format!("`resolver` is a list; write it as resolver = [\"{one}\"]");
            cx.error(raw.span(), KEY, msg);
            return Resolver::System;
        }
        other => {
            cx.error(
                raw.span(),
                KEY,
                format!("`{other}` is not a resolver; {HINT}"),
            );
            return Resolver::System;
        }
    };
    let servers: Vec<SocketAddr> = list
        .iter()
        .filter_map(|entry| nameserver(cx, raw.span(), entry))
        .collect();
    if servers.len() == list.len() {
        Resolver::Dns(servers)
    } else {
        Resolver::System
    }
}

/// One entry; array items carry no span of their own, so errors point at the whole list.
fn nameserver(
    cx: &mut Ctx,
    span: std::ops::Range<usize>,
    entry: &toml::Value,
) -> Option<SocketAddr> {
    let toml::Value::String(text) = entry else {
        cx.error(span, KEY, format!("`{entry}` is not a DNS server; {HINT}"));
        return None;
    };
    let text = cx.expand(&Spanned::new(span.clone(), text.clone()), KEY)?;
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => text
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53)),
    };
    match addr {
        Some(addr) if addr.port() != 0 && !addr.ip().is_unspecified() => Some(addr),
        _ => {
            let host = text
                .rsplit_once(':')
                .map_or(text.as_str(), |(host, _)| host);
            let is_name = is_hostname(host) && host.contains(|c: char| c.is_ascii_alphabetic());
            let why = if is_name {
                "a DNS server must be an IP address, not a name (it is what names are looked up with)"
            } else {
                "not a DNS server address"
            };
            cx.error(span, KEY, format!("`{text}`: {why}; {HINT}"));
            None
        }
    }
}
