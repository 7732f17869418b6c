//! The per-route address filter: `deny` wins, then a non-empty `allow` must match. A client
//! whose address is not known (a trusted proxy's `X-Forwarded-For` did not parse) fails closed:
//! refused by any list.

use ipnet::IpNet;
use std::net::IpAddr;

pub fn permitted(client: Option<IpAddr>, allow: &[IpNet], deny: &[IpNet]) -> bool {
    let Some(client) = client else {
        return allow.is_empty() && deny.is_empty();
    };
    if deny.iter().any(|net| net.contains(&client)) {
        return false;
    }
    allow.is_empty() || allow.iter().any(|net| net.contains(&client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_then_allow_must_match() {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let allow = nets(&["10.0.0.0/8"]);
        let deny = nets(&["10.9.0.0/16"]);
        let ip = |s: &str| Some(ip(s));
        assert!(permitted(ip("10.1.2.3"), &allow, &deny));
        assert!(!permitted(ip("10.9.2.3"), &allow, &deny));
        assert!(!permitted(ip("192.0.2.1"), &allow, &deny));
        assert!(permitted(ip("192.0.2.1"), &[], &deny));
        assert!(permitted(ip("::1"), &[], &[]));
    }

    #[test]
    fn an_unknown_client_fails_closed() {
        let nets =
            |list: &[&str]| -> Vec<IpNet> { list.iter().map(|n| n.parse().unwrap()).collect() };
        assert!(!permitted(None, &nets(&["0.0.0.0/0"]), &[]));
        assert!(!permitted(None, &[], &nets(&["192.0.2.1/32"])));
        assert!(permitted(None, &[], &[]));
    }
}
