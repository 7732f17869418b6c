//! `[upstream.NAME]`: servers (with weights and scheme), balancing, active and passive health,
//! retries, and TLS to the upstream.

use super::{server_addr, Ctx};
use crate::config::file::{FileEject, FileHealth, FileUpstream, Str};
use crate::config::model::*;
use crate::config::FileKind;
use std::time::Duration;
use toml::Spanned;

const SERVER_HINT: &str =
    "expected \"HOST:PORT\", \"https://HOST:PORT\", \"unix:/run/app.sock\" or { addr = \"HOST:PORT\", weight = 3 }";

/// The most a Unix socket address holds (`sun_path` is 108 bytes, with its NUL).
const UNIX_PATH_MAX: usize = 107;

pub(super) fn upstream(
    cx: &mut Ctx,
    name: &str,
    raw: &Spanned<FileUpstream>,
    settings: &Server,
) -> Option<Upstream> {
    let up = raw.get_ref();
    let key = format!("upstream.{name}");
    if up.servers.get_ref().is_empty() {
        let msg = "an upstream needs at least one server, e.g. servers = [\"127.0.0.1:8000\"]";
        cx.error(up.servers.span(), &format!("{key}.servers"), msg);
    }
    let entries: Vec<(UpstreamServer, bool)> = up
        .servers
        .get_ref()
        .iter()
        .filter_map(|s| server(cx, s, &format!("{key}.servers")))
        .collect();
    let https = entries.iter().filter(|(_, tls)| *tls).count();
    if https > 0 && https < entries.len() {
        let msg =
            "mix of http and https:// servers; one upstream speaks one protocol, split it in two";
        cx.error(up.servers.span(), &format!("{key}.servers"), msg);
    }
    let balance = match &up.balance {
        None => Some(Balance::RoundRobin),
        Some(b) => balance(cx, b, &format!("{key}.balance")),
    };
    let resolve_every = cx.duration(
        &up.resolve_every,
        &format!("{key}.resolve_every"),
        Duration::from_secs(5),
    );
    let health = up.health.as_ref().and_then(|h| health(cx, h, &key));
    let eject = up
        .eject
        .as_ref()
        .map_or_else(Eject::default, |e| eject(cx, e.get_ref(), &key));
    let retries = cx.count(&up.retries, &format!("{key}.retries"), 0..=10, 2) as u32;
    let retry_budget = percent(cx, up.retry_budget.as_ref(), &format!("{key}.retry_budget"));
    let when_all_down = match up.when_all_down.as_ref() {
        None => AllDown::Refuse,
        Some(v) => match v.get_ref().as_str() {
            "refuse" => AllDown::Refuse,
            "try_all" => AllDown::TryAll,
            other => {
                let msg = format!("`{other}` is not a choice; expected \"refuse\" (503 with Retry-After) or \"try_all\" (send to every server anyway)");
                cx.error(v.span(), &format!("{key}.when_all_down"), msg);
                AllDown::Refuse
            }
        },
    };
    let tls = upstream_tls(cx, up, &key, https > 0);
    let unix = entries
        .iter()
        .any(|(s, _)| matches!(s.addr, Endpoint::Unix(_)));
    let protocol = protocol(cx, up.protocol.as_ref(), &key, https > 0, unix);
    let max_streams = cx.count(
        &up.max_streams,
        &format!("{key}.max_streams"),
        1..=10_000,
        100,
    );
    if let (Some(check), Some(raw)) = (&health, &up.health) {
        grpc_health_protocol(cx, check, raw, (&key, protocol, https > 0));
    }
    Some(Upstream {
        servers: entries.into_iter().map(|(s, _)| s).collect(),
        balance: balance?,
        resolve_every,
        resolver: settings.resolver.clone(),
        resolve_timeout: settings.resolve_timeout,
        health,
        eject,
        retries,
        retry_budget,
        when_all_down,
        required: up.required.as_ref().is_some_and(|r| *r.get_ref()),
        tls,
        protocol,
        max_streams: max_streams as u32,
    })
}

/// `protocol`: HTTP/2 over TLS needs `https://` servers, h2c plain ones.
fn protocol(cx: &mut Ctx, value: Option<&Str>, key: &str, https: bool, unix: bool) -> Protocol {
    let Some(value) = value else {
        return Protocol::Http1;
    };
    let key = format!("{key}.protocol");
    let chosen = match value.get_ref().as_str() {
        "http1" => Protocol::Http1,
        "h2" => Protocol::H2,
        "h2c" => Protocol::H2c,
        "auto" => Protocol::Auto,
        other => {
            let msg = format!("`{other}` is not a protocol; expected \"http1\" (HTTP/1.1), \"h2\" (HTTP/2 over TLS: https:// servers), \"h2c\" (HTTP/2 without TLS) or \"auto\" (ALPN for https:// servers, else HTTP/1.1)");
            cx.error(value.span(), &key, msg);
            return Protocol::Http1;
        }
    };
    let msg = match chosen {
        Protocol::H2 if !https && unix => "\"h2\" is HTTP/2 over TLS, which a Unix socket server does not speak; use \"h2c\" for HTTP/2 without TLS",
        Protocol::H2 if !https => "\"h2\" is HTTP/2 over TLS: write the servers as \"https://HOST:PORT\", or use \"h2c\" for HTTP/2 without TLS",
        Protocol::H2c if https => "\"h2c\" is HTTP/2 without TLS, but the servers are https://; use \"h2\" (or \"auto\") for HTTP/2 over TLS",
        _ => return chosen,
    };
    cx.error(value.span(), &key, msg);
    chosen
}

/// A gRPC health check speaks HTTP/2: the upstream must too.
fn grpc_health_protocol(
    cx: &mut Ctx,
    check: &HealthCheck,
    raw: &Spanned<FileHealth>,
    (key, protocol, https): (&str, Protocol, bool),
) {
    let speaks_h2 = protocol.is_h2() || (protocol == Protocol::Auto && https);
    if check.grpc.is_none() || speaks_h2 {
        return;
    }
    let span = raw.get_ref().grpc.as_ref().map_or(raw.span(), |g| g.span());
    let msg = "the gRPC health protocol runs over HTTP/2: set `protocol = \"h2c\"` (or \"h2\" for https:// servers)";
    cx.error(span, &format!("{key}.health.grpc"), msg);
}

/// A `servers` entry and whether it is `https://`.
fn server(cx: &mut Ctx, value: &Spanned<toml::Value>, key: &str) -> Option<(UpstreamServer, bool)> {
    let span = value.span();
    let (text, weight) = match value.get_ref() {
        toml::Value::String(s) => (s.clone(), 1),
        toml::Value::Table(t) if t.keys().all(|k| k == "addr" || k == "weight") => {
            let addr = t.get("addr").and_then(toml::Value::as_str);
            let weight = match t.get("weight") {
                None => Some(1),
                Some(toml::Value::Integer(w)) if (1..=100).contains(w) => Some(*w as u32),
                Some(_) => None,
            };
            match (addr, weight) {
                (Some(a), Some(w)) => (a.to_string(), w),
                _ => {
                    let msg = format!(
                        "needs `addr` and an optional `weight` from 1 to 100; {SERVER_HINT}"
                    );
                    cx.error(span, key, msg);
                    return None;
                }
            }
        }
        other => {
            cx.error(
                span,
                key,
                format!("`{other}` is not a server; {SERVER_HINT}"),
            );
            return None;
        }
    };
    // The scheme or `unix:` may come from the environment (`"${APP:-https://app:443}"`): they
    // are read off the expanded text; what is left is passed on with `$` escaped, as its parsers
    // expand again.
    let text = cx.expand(&Spanned::new(span.clone(), text), key)?;
    let escaped = |rest: &str| Spanned::new(span.clone(), rest.replace('$', "$$"));
    if let Some(path) = text.strip_prefix("unix:") {
        let addr = unix_path(cx, &escaped(path), key)?;
        return Some((UpstreamServer { addr, weight }, false));
    }
    let (text, tls) = match text.strip_prefix("https://") {
        Some(rest) => (rest.to_string(), true),
        None => (
            text.strip_prefix("http://").unwrap_or(&text).to_string(),
            false,
        ),
    };
    if text.starts_with("unix:") {
        let msg = format!("a Unix socket is written `unix:PATH` alone, e.g. \"unix:/run/app.sock\" (plain HTTP; nginx's `http://unix:/run/app.sock:` becomes that); not `{text}` after a scheme");
        cx.error(span, key, msg);
        return None;
    }
    let addr = Endpoint::Tcp(server_addr(cx, &escaped(&text), key)?);
    Some((UpstreamServer { addr, weight }, tls))
}

/// `unix:PATH`: a path (relative ones from the config's folder) a socket address can hold.
fn unix_path(cx: &mut Ctx, value: &Spanned<String>, key: &str) -> Option<Endpoint> {
    let text = cx.expand(value, key)?;
    if text.is_empty() || text.contains('\0') {
        let msg = format!("`unix:{text}` names no socket; expected a path like \"unix:/run/app.sock\" (relative to the config file's folder unless it starts with /)");
        cx.error(value.span(), key, msg);
        return None;
    }
    let path = cx.relative(&text);
    let len = path.as_os_str().len();
    if len > UNIX_PATH_MAX {
        let msg = format!("`{}` is {len} bytes long; a Unix socket path holds at most {UNIX_PATH_MAX} (move the socket, or give a shorter path)", path.display());
        cx.error(value.span(), key, msg);
        return None;
    }
    Some(Endpoint::Unix(path))
}

fn balance(cx: &mut Ctx, value: &Str, key: &str) -> Option<Balance> {
    match value.get_ref().as_str() {
        "round_robin" => Some(Balance::RoundRobin),
        "least_conn" => Some(Balance::LeastConn),
        "ip_hash" => Some(Balance::IpHash),
        other => {
            let msg = format!(
                "unknown balance `{other}`; expected one of `round_robin`, `least_conn`, `ip_hash`"
            );
            cx.error(value.span(), key, msg);
            None
        }
    }
}

fn health(cx: &mut Ctx, raw: &Spanned<FileHealth>, key: &str) -> Option<HealthCheck> {
    let h = raw.get_ref();
    let key = format!("{key}.health");
    let (path, grpc) = check_target(cx, raw, &key)?;
    let interval = cx.duration(
        &h.interval,
        &format!("{key}.interval"),
        Duration::from_secs(5),
    );
    let timeout = cx.duration(
        &h.timeout,
        &format!("{key}.timeout"),
        Duration::from_secs(2).min(interval),
    );
    if timeout > interval {
        let span = h.timeout.as_ref().map_or(raw.span(), |t| t.span());
        cx.error(
            span,
            &format!("{key}.timeout"),
            "`timeout` must not be longer than `interval`",
        );
    }
    let healthy = cx.count(&h.healthy, &format!("{key}.healthy"), 1..=100, 2) as u32;
    let unhealthy = cx.count(&h.unhealthy, &format!("{key}.unhealthy"), 1..=100, 3) as u32;
    let expect = match &h.expect {
        None => (200, 399),
        Some(v) => status_range(cx, v, &format!("{key}.expect"))?,
    };
    let host = match &h.host {
        None => None,
        Some(v) => Some(cx.expand(v, &format!("{key}.host"))?),
    };
    Some(HealthCheck {
        path,
        grpc,
        interval,
        timeout,
        healthy,
        unhealthy,
        expect,
        host,
    })
}

/// What a check asks: `path` (a GET), or `grpc` (the gRPC health protocol's `Check` for that
/// service); one of the two.
fn check_target(
    cx: &mut Ctx,
    raw: &Spanned<FileHealth>,
    key: &str,
) -> Option<(String, Option<String>)> {
    let h = raw.get_ref();
    match (&h.path, &h.grpc) {
        (Some(path), None) => {
            let text = cx.expand(path, &format!("{key}.path"))?;
            if !text.starts_with('/') || text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                let msg = format!("`{text}` is not a path; expected e.g. \"/health/ready\"");
                cx.error(path.span(), &format!("{key}.path"), msg);
            }
            Some((text, None))
        }
        (None, Some(service)) => {
            let name = cx.expand(service, &format!("{key}.grpc"))?;
            if name
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b"._-/".contains(&b)))
            {
                let msg = format!("`{name}` is not a gRPC service name; expected e.g. \"my.package.Service\" (or \"\" for the server as a whole)");
                cx.error(service.span(), &format!("{key}.grpc"), msg);
            }
            Some((GRPC_HEALTH_CHECK.to_string(), Some(name)))
        }
        (Some(_), Some(service)) => {
            let msg =
                "a check is either a GET of `path` or the gRPC health protocol (`grpc`), not both";
            cx.error(service.span(), &format!("{key}.grpc"), msg);
            None
        }
        (None, None) => {
            let msg = "a health check needs `path` (e.g. \"/health\") or `grpc` (a gRPC service name, e.g. \"my.Service\")";
            cx.error(raw.span(), &format!("{key}.path"), msg);
            None
        }
    }
}

/// The gRPC health protocol's method (grpc/grpc `doc/health-checking.md`).
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// "200", "200-399".
fn status_range(cx: &mut Ctx, value: &Str, key: &str) -> Option<(u16, u16)> {
    let text = value.get_ref();
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let parse = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    match (parse(lo), parse(hi)) {
        (Some(lo), Some(hi)) if lo <= hi => Some((lo, hi)),
        _ => {
            let msg =
                format!("`{text}` is not a status range; expected e.g. \"200\" or \"200-399\"");
            cx.error(value.span(), key, msg);
            None
        }
    }
}

fn eject(cx: &mut Ctx, e: &FileEject, key: &str) -> Eject {
    let d = Eject::default();
    let key = format!("{key}.eject");
    let cooldown = cx.duration(&e.cooldown, &format!("{key}.cooldown"), d.cooldown);
    let max_cooldown = cx.duration(
        &e.max_cooldown,
        &format!("{key}.max_cooldown"),
        d.max_cooldown.max(cooldown),
    );
    Eject {
        failures: cx.count(
            &e.failures,
            &format!("{key}.failures"),
            0..=1000,
            d.failures as usize,
        ) as u32,
        server_errors: cx.count(
            &e.server_errors,
            &format!("{key}.server_errors"),
            0..=1000,
            d.server_errors as usize,
        ) as u32,
        cooldown,
        max_cooldown: max_cooldown.max(cooldown),
    }
}

fn percent(cx: &mut Ctx, value: Option<&Str>, key: &str) -> u32 {
    let Some(value) = value else { return 20 };
    let text = value.get_ref();
    match text
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<u32>().ok())
    {
        Some(n) if n <= 100 => n,
        _ => {
            let msg = format!("`{text}` is not a percentage; expected e.g. \"20%\" (retries at most a fifth of requests)");
            cx.error(value.span(), key, msg);
            20
        }
    }
}

fn upstream_tls(cx: &mut Ctx, up: &FileUpstream, key: &str, https: bool) -> Option<UpstreamTls> {
    let only_https = [
        ("ca_root", up.ca_root.as_ref().map(|v| v.span())),
        ("client_cert", up.client_cert.as_ref().map(|v| v.span())),
        ("sni", up.sni.as_ref().map(|v| v.span())),
    ];
    if !https {
        for (name, span) in only_https {
            if let Some(span) = span {
                let msg = format!("`{name}` is for TLS to the upstream; write the servers as \"https://HOST:PORT\"");
                cx.error(span, &format!("{key}.{name}"), msg);
            }
        }
        return None;
    }
    let path = |cx: &mut Ctx, v: &Str, name: &str| {
        cx.expand(v, &format!("{key}.{name}"))
            .map(|p| cx.relative(&p))
    };
    let ca_root = match &up.ca_root {
        None => None,
        Some(v) => {
            let p = path(cx, v, "ca_root")?;
            cx.names(
                FileKind::Roots(p.clone()),
                v.span(),
                &format!("{key}.ca_root"),
            );
            Some(p)
        }
    };
    let client_cert = match &up.client_cert {
        None => None,
        Some(c) => {
            let files = TlsFiles {
                cert: path(cx, &c.get_ref().cert, "client_cert")?,
                key: path(cx, &c.get_ref().key, "client_cert")?,
            };
            let named = FileKind::CertPair(files.clone());
            cx.names(named, c.span(), &format!("{key}.client_cert"));
            Some(files)
        }
    };
    let sni = match &up.sni {
        None => None,
        Some(v) => {
            let name = cx.expand(v, &format!("{key}.sni"))?;
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                let msg = format!("`{name}` is not a TLS server name; expected a DNS name such as \"api.internal\" or an IP address");
                cx.error(v.span(), &format!("{key}.sni"), msg);
            }
            Some(name)
        }
    };
    Some(UpstreamTls {
        ca_root,
        client_cert,
        sni,
    })
}
