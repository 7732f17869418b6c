//! Refused requests and connections: counted by reason (the metrics issue exports the counts),
//! and logged at most once a second per reason, with how many went unlogged, so a flood of
//! refusals cannot flood the log.

use crate::clock;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RateLimit,
    BodyTooLarge,
    HeaderTooLarge,
    UriTooLong,
    DeniedIp,
    ConnLimit,
    BodyTimeout,
    BadRequest,
    /// A CORS preflight for an origin, method or header the route does not allow.
    Cors,
    /// A path that cannot be made canonical (`http::canonical`).
    BadPath,
    /// A missing or malformed authority (Host, `:authority`, absolute-form).
    BadHost,
    /// A method in lower case, or CONNECT/TRACE (405).
    BadMethod,
    /// A header name with `_` under `underscore_headers = "reject"`.
    BadHeader,
    /// A request body slower than the route's `body_min_rate`.
    BodyTooSlow,
    /// A connection closed because its client took a response slower than `send_min_rate`.
    SendTooSlow,
    /// A wrong user name or password for a route's `basic_auth`.
    Unauthorized,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::RateLimit,
        Reason::BodyTooLarge,
        Reason::HeaderTooLarge,
        Reason::UriTooLong,
        Reason::DeniedIp,
        Reason::ConnLimit,
        Reason::BodyTimeout,
        Reason::BadRequest,
        Reason::Cors,
        Reason::BadPath,
        Reason::BadHost,
        Reason::BadMethod,
        Reason::BadHeader,
        Reason::BodyTooSlow,
        Reason::SendTooSlow,
        Reason::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimit => "rate_limit",
            Reason::BodyTooLarge => "body_too_large",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::UriTooLong => "uri_too_long",
            Reason::DeniedIp => "denied_ip",
            Reason::ConnLimit => "conn_limit",
            Reason::BodyTimeout => "body_timeout",
            Reason::BadRequest => "bad_request",
            Reason::Cors => "cors",
            Reason::BadPath => "bad_path",
            Reason::BadHost => "bad_host",
            Reason::BadMethod => "bad_method",
            Reason::BadHeader => "bad_header",
            Reason::BodyTooSlow => "body_too_slow",
            Reason::SendTooSlow => "send_too_slow",
            Reason::Unauthorized => "unauthorized",
        }
    }
}

const N: usize = Reason::ALL.len();

#[derive(Default)]
pub struct Rejections {
    counts: [AtomicU64; N],
    /// Milliseconds since start of the last log line per reason, plus one (0: never).
    logged_at: [AtomicU64; N],
    unlogged: [AtomicU64; N],
}

impl Rejections {
    pub fn record(&self, reason: Reason, client: IpAddr, detail: &str) {
        let i = reason as usize;
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let now = clock::millis();
        let last = self.logged_at[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= 1000;
        let won = due
            && self.logged_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if !won {
            self.unlogged[i].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.unlogged[i].swap(0, Ordering::Relaxed);
        tracing::info!(
            target: "gatehouse::reject",
            reason = reason.as_str(),
            %client,
            detail,
            suppressed,
            "request refused"
        );
    }

    pub fn count(&self, reason: Reason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_refusal() {
        let r = Rejections::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            r.record(Reason::RateLimit, ip, "");
        }
        assert_eq!(r.count(Reason::RateLimit), 1000);
        assert_eq!(r.count(Reason::DeniedIp), 0);
        // one line logged, the rest waiting to be reported with the next one
        assert_eq!(
            r.unlogged[Reason::RateLimit as usize].load(Ordering::Relaxed),
            999
        );
    }
}
