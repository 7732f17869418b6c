//! `[acme] on_demand = { ask, max_per_minute, remember_refusals, handshake_wait }` and the
//! sites with `tls = "on_demand"` that need it: an on-demand site without an `ask` endpoint would
//! let any scanner make Gatehouse order certificates, so `check` refuses it.

use super::Ctx;
use crate::config::file::{FileConfig, FileOnDemand};
use crate::config::model::{Acme, Challenge, OnDemand, Site, SiteTls};
use std::time::Duration;
use toml::Spanned;

const EXAMPLE: &str =
    "e.g. `on_demand = { ask = \"http://app:8000/domain-allowed\", max_per_minute = 10 }`";

/// `[acme] on_demand`.
pub(super) fn on_demand(cx: &mut Ctx, raw: &Spanned<FileOnDemand>) -> Option<OnDemand> {
    let d = raw.get_ref();
    let ask = match &d.ask {
        Some(value) => ask(cx, value),
        None => {
            let msg =
                format!("`on_demand` needs `ask`, the endpoint that allows a name; {EXAMPLE}");
            cx.error(raw.span(), "acme.on_demand.ask", msg);
            None
        }
    };
    let max_per_minute = cx.count(
        &d.max_per_minute,
        "acme.on_demand.max_per_minute",
        1..=10_000,
        OnDemand::MAX_PER_MINUTE as usize,
    );
    let remember_refusals = cx.duration(
        &d.remember_refusals,
        "acme.on_demand.remember_refusals",
        OnDemand::REMEMBER_REFUSALS,
    );
    let handshake_wait = cx.duration_where(
        &d.handshake_wait,
        "acme.on_demand.handshake_wait",
        OnDemand::HANDSHAKE_WAIT,
        |w| !w.is_zero() && w <= Duration::from_secs(300),
        format_args!("a valid wait; expected a duration from 1s to 5m, e.g. \"30s\""),
    );
    Some(OnDemand {
        ask: ask?,
        max_per_minute: u32::try_from(max_per_minute).unwrap_or(OnDemand::MAX_PER_MINUTE),
        remember_refusals,
        handshake_wait,
    })
}

/// An `http://host[:port]/path[?query]` URL (asked on the local network, as Caddy's `ask` is).
fn ask(cx: &mut Ctx, value: &crate::config::file::Str) -> Option<http::Uri> {
    let text = cx.expand(value, "acme.on_demand.ask")?;
    match text.parse::<http::Uri>() {
        Ok(uri)
            if uri.scheme_str() == Some("http") && uri.host().is_some_and(|h| !h.is_empty()) =>
        {
            Some(uri)
        }
        _ => {
            let msg = format!("`{text}` is not an ask endpoint; expected an http:// URL that answers `GET <url>?domain=<name>` with 200 for names to certify, e.g. \"http://app:8000/domain-allowed\"");
            cx.error(value.span(), "acme.on_demand.ask", msg);
            None
        }
    }
}

/// Each `tls = "on_demand"` site needs `[acme] on_demand` with its `ask`, and a challenge that
/// can be answered while the handshake waits (not DNS-01).
pub(super) fn sites_check(cx: &mut Ctx, sites: &[Site], acme: &Acme, raw: &FileConfig) {
    let on_demand = |(_, s): &(&Spanned<_>, &Site)| s.tls == Some(SiteTls::OnDemand);
    let Some((raw_site, _)) = raw.sites.iter().zip(sites).find(on_demand) else {
        return;
    };
    let span = raw_site
        .get_ref()
        .tls
        .as_ref()
        .map_or(raw_site.span(), |t| t.span());
    // an `on_demand` table without `ask` has its own error, at the table
    let has_on_demand = raw
        .acme
        .as_ref()
        .is_some_and(|a| a.get_ref().on_demand.is_some());
    if !has_on_demand {
        let msg = format!("`tls = \"on_demand\"` needs `[acme] on_demand.ask`: without an endpoint that allows each name, any client could make Gatehouse order certificates; add it under [acme], {EXAMPLE}");
        cx.error(span.clone(), "site.tls", msg);
    }
    if acme.challenge == Challenge::Dns01 {
        let msg = "`tls = \"on_demand\"` certificates are proven with `challenge = \"http-01\"` or \"tls-alpn-01\" in [acme] (answered while the handshake waits), not \"dns-01\"";
        cx.error(span, "site.tls", msg);
    }
}
