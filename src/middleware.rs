//! What a request must pass before its route's action runs, in this order (cheapest refusal
//! first, and nothing costly for a client that is refused anyway): the address filter (403),
//! the rate limits (429), the declared body size (413). The body limit and the body timeout then
//! travel with the request body (`body_limit`). A route with `cors` then has its preflights
//! answered and its responses decorated by `cors`. On the way back, `encode` compresses the
//! response of a route that asks for it. Both add to `Vary` through `vary`. `header_rules`
//! applies a route's `request_headers` and `response_headers`, last on each side. A route with
//! `basic_auth` or `forward_auth` then has its requests authenticated (`basic_auth`,
//! `forward_auth`), after the CORS preflight (which carries no credentials) and before the
//! action.

pub mod access;
pub mod basic_auth;
pub mod body_limit;
pub mod cors;
pub mod encode;
pub mod forward_auth;
pub mod header_rules;
pub mod rate_limit;
pub mod reject;
pub mod vary;

pub use reject::{Reason, Rejections};

use crate::cluster::Store;
use crate::config::{MinRate, Policy};
use body_limit::TooLarge;
use http::{HeaderMap, HeaderValue, Method};
use ipnet::IpNet;
use rate_limit::{KeyCaps, Limiter, Limiters, RetryAfter};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A route's policy compiled for the request path: limiters resolved once per snapshot.
pub struct RoutePolicy {
    pub limiters: Vec<Arc<Limiter>>,
    /// Some limit is counted for the whole cluster: the request path takes `check_global`.
    pub global: bool,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub max_body: Option<u64>,
    pub body_timeout: Duration,
    pub body_min_rate: Option<MinRate>,
    pub send_min_rate: Option<MinRate>,
    /// For the upstream connection (`Policy::upstream_connect`).
    pub upstream_connect: Duration,
    /// For the upstream's response head and each read of its body (`Policy::upstream_response`).
    pub upstream_response: Duration,
}

/// Who may pass a route, checked after its policy: `None` on a route without either, so such a
/// route pays one `Option` check.
pub struct RouteAuth {
    pub basic: Option<basic_auth::BasicGuard>,
    pub forward: Option<forward_auth::ForwardGuard>,
}

/// Why a request is refused before its action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Denied,
    RateLimited(RetryAfter),
    TooLarge(TooLarge),
}

impl RoutePolicy {
    /// `store`: the cluster store global limits count in; `None` counts every limit here.
    pub fn compile(
        policy: &Policy,
        limiters: &Limiters,
        key_caps: KeyCaps,
        store: Option<&Arc<Store>>,
    ) -> RoutePolicy {
        let limiters: Vec<Arc<Limiter>> = policy
            .rate_limits
            .iter()
            .map(|spec| limiters.get(spec, key_caps, store))
            .collect();
        RoutePolicy {
            global: limiters.iter().any(|l| l.is_global()),
            limiters,
            allow: policy.allow.clone(),
            deny: policy.deny.clone(),
            max_body: policy.max_body,
            body_timeout: policy.body_timeout,
            body_min_rate: policy.body_min_rate,
            send_min_rate: policy.send_min_rate,
            upstream_connect: policy.upstream_connect,
            upstream_response: policy.upstream_response,
        }
    }

    /// `client` is the address as known (through trusted proxies; `None` when it is not known),
    /// `key` the same grouped for rate limits (see `rate_limit::client_key`); a limit keyed on a
    /// header reads `headers`.
    pub fn check(
        &self,
        client: Option<IpAddr>,
        key: IpAddr,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        self.permits(client)?;
        for limiter in &self.limiters {
            if limiter.applies_to(method) {
                limiter.check(key, headers).map_err(Refusal::RateLimited)?;
            }
        }
        self.declared_body_fits(headers)
    }

    /// The address lists, which come before any budget is charged.
    fn permits(&self, client: Option<IpAddr>) -> Result<(), Refusal> {
        match access::permitted(client, &self.allow, &self.deny) {
            true => Ok(()),
            false => Err(Refusal::Denied),
        }
    }

    /// A declared `Content-Length` over `max_body`; a streamed body is counted as it passes.
    fn declared_body_fits(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        body_limit::check_declared(headers, self.max_body).map_err(Refusal::TooLarge)
    }

    /// [`RoutePolicy::check`] for a route with a global limit (`global`): the store may be
    /// asked, for at most `[cluster] timeout`.
    pub async fn check_global(
        &self,
        client: Option<IpAddr>,
        key: IpAddr,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        self.permits(client)?;
        for limiter in &self.limiters {
            if limiter.applies_to(method) {
                let counted = limiter.check_global(key, headers).await;
                counted.map_err(Refusal::RateLimited)?;
            }
        }
        self.declared_body_fits(headers)
    }

    /// A failed password costs the client one more request from each of the route's budgets
    /// that counts its method: a brute-forcer meets the route's `429` twice as fast, and a
    /// user who typed the wrong password pays little.
    pub fn charge_failure(&self, key: IpAddr, method: &Method, headers: &HeaderMap) {
        for limiter in &self.limiters {
            if limiter.applies_to(method) {
                limiter.charge(key, headers);
            }
        }
    }
}

/// Whether one of a comma-separated field's lines lists `token` (compared in any case).
pub(crate) fn has_token<'a>(
    mut lines: impl Iterator<Item = &'a HeaderValue>,
    token: &[u8],
) -> bool {
    lines.any(|line| {
        line.as_bytes()
            .split(|b| *b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
    })
}
