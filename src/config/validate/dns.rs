//! The ACME challenge keys: `[acme] challenge` and `dns`, a site's own `acme = { challenge,
//! dns }`, and which host names each challenge can prove (wildcards only by DNS-01). Reads no
//! file and asks no DNS server: the provider is first used when a certificate is ordered.

use super::Ctx;
use crate::config::file::{FileDns, FileSiteAcme, Str};
use crate::config::model::{
    Challenge, Dns, DnsProvider, HostPattern, HttpReq, Rfc2136, SiteAcme, Tsig, TsigAlgorithm,
};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// A record is usually answered within seconds; a hidden primary that notifies slow secondaries
/// may take a minute or two, and waiting longer mostly delays a failure the CA would report.
pub(super) const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
const PROVIDERS: &str = "expected \"rfc2136\" (dynamic updates with TSIG: BIND, Knot, PowerDNS), \"exec\" (a script run as `command present|cleanup <fqdn> <value>`, lego's protocol) or \"httpreq\" (POST <endpoint>/present|cleanup, lego's protocol)";
const ALGORITHMS: &str =
    "expected \"hmac-sha256\" (the default), \"hmac-sha384\", \"hmac-sha512\" or \"hmac-sha1\"";

/// `challenge = "..."`.
pub(super) fn challenge(cx: &mut Ctx, value: &Str, key: &str) -> Option<Challenge> {
    let text = cx.expand(value, key)?;
    match text.as_str() {
        "http-01" => Some(Challenge::Http01),
        "tls-alpn-01" => Some(Challenge::TlsAlpn01),
        "dns-01" => Some(Challenge::Dns01),
        _ => {
            let msg = format!("`{text}` is not a challenge type; expected \"http-01\" (answered on the HTTP listener, port 80), \"tls-alpn-01\" (answered on the HTTPS listener, port 443) or \"dns-01\" (a TXT record published through `dns`; the only one for wildcards)");
            cx.error(value.span(), key, msg);
            None
        }
    }
}

/// A site's `acme = { challenge = ..., dns = ... }`; `global_dns` is whether `[acme]` has one.
pub(super) fn site_acme(
    cx: &mut Ctx,
    raw: &Spanned<FileSiteAcme>,
    global_dns: bool,
) -> Option<SiteAcme> {
    let FileSiteAcme { challenge, dns } = raw.get_ref();
    let Some(value) = challenge else {
        let msg = "a site's `acme` needs `challenge`, e.g. `acme = { challenge = \"dns-01\", dns = { provider = \"exec\", command = \"/usr/local/bin/dns-hook\" } }`";
        cx.error(raw.span(), "site.acme", msg);
        return None;
    };
    let challenge = self::challenge(cx, value, "site.acme.challenge")?;
    let dns = match dns {
        Some(d) => Some(self::dns(cx, d, "site.acme.dns")?),
        None => None,
    };
    needs_provider(cx, challenge, dns.is_some() || global_dns, raw.span());
    Some(SiteAcme { challenge, dns })
}

/// DNS-01 without a provider anywhere is an error at `span`.
pub(super) fn needs_provider(
    cx: &mut Ctx,
    challenge: Challenge,
    has_dns: bool,
    span: Range<usize>,
) {
    if challenge == Challenge::Dns01 && !has_dns {
        let msg = "`challenge = \"dns-01\"` needs `dns = { provider = ... }` (in [acme] or the site's `acme`) saying where the TXT records are published";
        cx.error(span, "acme.dns", msg);
    }
}

/// `dns = { provider = ..., ... }`.
pub(super) fn dns(cx: &mut Ctx, raw: &Spanned<FileDns>, key: &str) -> Option<Dns> {
    let d = raw.get_ref();
    let Some(provider_value) = &d.provider else {
        cx.error(
            raw.span(),
            key,
            format!("`dns` needs `provider`; {PROVIDERS}"),
        );
        return None;
    };
    let provider_key = format!("{key}.provider");
    let name = cx.expand(provider_value, &provider_key)?;
    let timeout_key = format!("{key}.propagation_timeout");
    let propagation_timeout =
        cx.duration(&d.propagation_timeout, &timeout_key, PROPAGATION_TIMEOUT);
    let resolver = match &d.resolver {
        Some(v) => Some(server_addr(cx, v, &format!("{key}.resolver"))?),
        None => None,
    };
    let provider = match name.as_str() {
        "rfc2136" => rfc2136(cx, raw, key).map(DnsProvider::Rfc2136),
        "exec" => exec(cx, raw, key),
        "httpreq" => httpreq(cx, raw, key).map(DnsProvider::HttpReq),
        _ => {
            let msg = format!("`{name}` is not a DNS provider; {PROVIDERS}");
            cx.error(provider_value.span(), &provider_key, msg);
            None
        }
    }?;
    Some(Dns {
        provider,
        propagation_timeout,
        resolver,
    })
}

/// Keys of another provider are an error rather than silently unused. Each provider's own keys,
/// by the provider they belong to (`provider`, `resolver` and `propagation_timeout` are
/// everyone's).
fn foreign_keys(cx: &mut Ctx, key: &str, provider: &str, d: &FileDns) {
    let owned = [
        ("rfc2136", "server", &d.server),
        ("rfc2136", "zone", &d.zone),
        ("rfc2136", "tsig_key", &d.tsig_key),
        ("rfc2136", "tsig_secret", &d.tsig_secret),
        ("rfc2136", "tsig_algorithm", &d.tsig_algorithm),
        ("exec", "command", &d.command),
        ("httpreq", "endpoint", &d.endpoint),
        ("httpreq", "username", &d.username),
        ("httpreq", "password", &d.password),
    ];
    for (owner, name, value) in owned {
        if let (true, Some(v)) = (owner != provider, value) {
            let msg = format!("`{name}` is not a key of the `{provider}` provider");
            cx.error(v.span(), &format!("{key}.{name}"), msg);
        }
    }
}

fn rfc2136(cx: &mut Ctx, raw: &Spanned<FileDns>, key: &str) -> Option<Rfc2136> {
    let d = raw.get_ref();
    foreign_keys(cx, key, "rfc2136", d);
    let span = raw.span();
    let server = required(
        cx,
        &d.server,
        (key, "server"),
        &span,
        "`server = \"10.0.0.53:53\"`",
    );
    let zone = required(
        cx,
        &d.zone,
        (key, "zone"),
        &span,
        "`zone = \"example.com\"`",
    );
    let server = server.and_then(|v| server_addr(cx, v, &format!("{key}.server")));
    let zone = zone.and_then(|v| zone_name(cx, v, &format!("{key}.zone")));
    let tsig = tsig(cx, raw, key);
    Some(Rfc2136 {
        server: server?,
        zone: zone?,
        tsig: tsig?,
    })
}

/// A key the rfc2136 provider cannot do without; `key` is (the `dns` table's key, the name).
fn required<'a>(
    cx: &mut Ctx,
    value: &'a Option<Str>,
    (key, name): (&str, &str),
    span: &Range<usize>,
    example: &str,
) -> Option<&'a Str> {
    if value.is_none() {
        let msg = format!("the rfc2136 provider needs `{name}`, e.g. {example}");
        cx.error(span.clone(), &format!("{key}.{name}"), msg);
    }
    value.as_ref()
}

/// `Some(None)`: no key at all (an unsigned update, for servers that allow by address).
fn tsig(cx: &mut Ctx, raw: &Spanned<FileDns>, key: &str) -> Option<Option<Tsig>> {
    use base64::Engine;
    let d = raw.get_ref();
    let (name, secret) = match (&d.tsig_key, &d.tsig_secret) {
        (None, None) => {
            if let Some(alg) = &d.tsig_algorithm {
                let msg = "`tsig_algorithm` without `tsig_key` and `tsig_secret`";
                cx.error(alg.span(), &format!("{key}.tsig_algorithm"), msg);
                return None;
            }
            return Some(None);
        }
        (Some(name), Some(secret)) => (name, secret),
        (Some(v), None) | (None, Some(v)) => {
            let msg = "TSIG needs both `tsig_key` (the key's name) and `tsig_secret` (base64)";
            cx.error(v.span(), key, msg);
            return None;
        }
    };
    let name_key = format!("{key}.tsig_key");
    let name = cx.expand(name, &name_key)?;
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let secret_key = format!("{key}.tsig_secret");
    let text = cx.expand(secret, &secret_key)?;
    let engine = base64::engine::general_purpose::STANDARD;
    let secret = match engine.decode(text.trim()) {
        Ok(bytes) if !bytes.is_empty() => bytes,
        _ => {
            let msg = "not a base64 TSIG secret; paste it as the DNS server's key file has it (`secret:` in Knot, `secret \"...\";` in BIND)";
            cx.error(secret.span(), &secret_key, msg);
            return None;
        }
    };
    let algorithm = match &d.tsig_algorithm {
        None => TsigAlgorithm::default(),
        Some(v) => algorithm(cx, v, &format!("{key}.tsig_algorithm"))?,
    };
    Some(Some(Tsig {
        name,
        secret,
        algorithm,
    }))
}

fn algorithm(cx: &mut Ctx, value: &Str, key: &str) -> Option<TsigAlgorithm> {
    let text = cx.expand(value, key)?;
    let all = [
        TsigAlgorithm::HmacSha1,
        TsigAlgorithm::HmacSha256,
        TsigAlgorithm::HmacSha384,
        TsigAlgorithm::HmacSha512,
    ];
    // BIND and lego write the name with its trailing dot, as DNS does
    let wanted = text.trim_end_matches('.').to_ascii_lowercase();
    let found = all.into_iter().find(|a| a.name() == wanted);
    if found.is_none() {
        let msg = format!("`{text}` is not a TSIG algorithm; {ALGORITHMS}");
        cx.error(value.span(), key, msg);
    }
    found
}

fn exec(cx: &mut Ctx, raw: &Spanned<FileDns>, key: &str) -> Option<DnsProvider> {
    let d = raw.get_ref();
    foreign_keys(cx, key, "exec", d);
    let Some(value) = &d.command else {
        let msg = "the exec provider needs `command`, e.g. `command = \"/usr/local/bin/dns-hook\"` (run as `command present|cleanup <fqdn> <value>`)";
        cx.error(raw.span(), &format!("{key}.command"), msg);
        return None;
    };
    let text = cx.expand(value, &format!("{key}.command"))?;
    if text.trim().is_empty() {
        cx.error(
            value.span(),
            &format!("{key}.command"),
            "`command` is empty",
        );
        return None;
    }
    Some(DnsProvider::Exec {
        command: cx.relative(&text),
    })
}

fn httpreq(cx: &mut Ctx, raw: &Spanned<FileDns>, key: &str) -> Option<HttpReq> {
    let d = raw.get_ref();
    foreign_keys(cx, key, "httpreq", d);
    let endpoint_key = format!("{key}.endpoint");
    let Some(value) = &d.endpoint else {
        let msg = "the httpreq provider needs `endpoint`, e.g. `endpoint = \"https://dns-api.internal/acme\"` (it gets POST /present and /cleanup)";
        cx.error(raw.span(), &endpoint_key, msg);
        return None;
    };
    let text = cx.expand(value, &endpoint_key)?;
    let uri = text.parse::<http::Uri>().ok();
    let scheme_ok = uri
        .as_ref()
        .and_then(|u| u.scheme_str())
        .is_some_and(|s| s == "http" || s == "https");
    if !scheme_ok
        || uri.as_ref().and_then(|u| u.host()).is_none()
        || uri.as_ref().and_then(|u| u.query()).is_some()
    {
        let msg = format!("`{text}` is not an http:// or https:// URL without a query, like \"https://dns-api.internal/acme\"");
        cx.error(value.span(), &endpoint_key, msg);
        return None;
    }
    let auth = match (&d.username, &d.password) {
        (None, None) => None,
        (Some(user), Some(password)) => Some((
            cx.expand(user, &format!("{key}.username"))?,
            cx.expand(password, &format!("{key}.password"))?,
        )),
        (Some(v), None) | (None, Some(v)) => {
            let msg = "basic authentication needs both `username` and `password`";
            cx.error(v.span(), key, msg);
            return None;
        }
    };
    Some(HttpReq {
        endpoint: text.trim_end_matches('/').to_string(),
        auth,
    })
}

/// `10.0.0.53:53`, or `10.0.0.53` for port 53: an address, so no lookup is needed to update.
fn server_addr(cx: &mut Ctx, value: &Str, key: &str) -> Option<SocketAddr> {
    let text = cx.expand(value, key)?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let msg = format!("`{text}` is not a DNS server address; expected an IP address with an optional port, like \"10.0.0.53:53\" or \"[2001:db8::53]:53\"");
    cx.error(value.span(), key, msg);
    None
}

fn zone_name(cx: &mut Ctx, value: &Str, key: &str) -> Option<String> {
    let text = cx.expand(value, key)?;
    let zone = text.trim_end_matches('.').to_ascii_lowercase();
    let valid = !zone.is_empty()
        && zone.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        let msg = format!("`{text}` is not a DNS zone name; expected e.g. \"example.com\"");
        cx.error(value.span(), key, msg);
        return None;
    }
    Some(zone)
}

/// An ACME site's hosts against its challenge: names a CA can validate, wildcards only by
/// DNS-01, and with rfc2136 every name inside the zone it updates.
pub(super) fn acme_hosts(
    cx: &mut Ctx,
    span: Range<usize>,
    hosts: &[HostPattern],
    challenge: Challenge,
    dns: Option<&Dns>,
) {
    for host in hosts {
        let bad = match host {
            HostPattern::Any => "`tls = \"acme\"` needs the site's host names; list them in `hosts` (a catch-all `*` site cannot get a certificate)".to_string(),
            HostPattern::Wildcard(_) if challenge != Challenge::Dns01 => format!("`{host}`: wildcard certificates need the DNS-01 challenge; set `challenge = \"dns-01\"` with a `dns` provider (in [acme] or the site's `acme`), or use certificate files (`tls = {{ cert = ..., key = ... }}`)"),
            HostPattern::Exact(h) if h.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok() => format!("`{h}`: ACME certificates are for DNS names, not IP addresses; use certificate files"),
            HostPattern::Exact(h) if !h.contains('.') => format!("`{h}`: a public CA only issues for fully qualified names like \"app.example.com\""),
            _ => match outside_zone(host, dns) {
                Some(msg) => msg,
                None => continue,
            },
        };
        cx.error(span.clone(), "site.tls", bad);
    }
}

/// With rfc2136, `_acme-challenge.<name>` must be inside the zone the updates go to.
fn outside_zone(host: &HostPattern, dns: Option<&Dns>) -> Option<String> {
    let Some(Dns {
        provider: DnsProvider::Rfc2136(r),
        ..
    }) = dns
    else {
        return None;
    };
    let name = match host {
        HostPattern::Exact(h) => h.as_str(),
        HostPattern::Wildcard(suffix) => &suffix[1..],
        HostPattern::Any => return None,
    };
    let inside = name == r.zone || name.ends_with(&format!(".{}", r.zone));
    (!inside).then(|| format!("`{host}` is not in the DNS zone `{}` that the rfc2136 provider updates; use a `dns` with that name's zone (a site's own `acme = {{ challenge = \"dns-01\", dns = {{ ... }} }}`)", r.zone))
}
