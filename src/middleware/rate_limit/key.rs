//! What a request is counted under: its client address (IPv6 grouped by prefix), or, for a limit
//! with `key = "header:NAME"`, a keyed hash of that header's value. Both kinds live in one table,
//! so a request that leaves the header out is still counted, by its address.

use crate::config::RateKey;
use http::{HeaderMap, HeaderName};
use ring::hmac;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};

/// The address a client is counted under: IPv4 as is, IPv6 cut to `prefix` bits.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if ipv6_prefix < 128 => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        other => other,
    }
}

/// One budget's owner in a limiter's table. A header value is kept only as its hash: 8 bytes
/// whatever its length, and never the value itself (it may be a credential).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetKey {
    Addr(IpAddr),
    Value(u64),
}

/// How one limiter turns a request into a `BudgetKey`.
pub enum KeyBy {
    Addr,
    /// SipHash with a random key per limiter: a client cannot make up a value that lands on
    /// another's budget without knowing the key, and the limiter (so the key) outlives reloads
    /// that keep its definition.
    Header(HeaderName, RandomState),
}

impl KeyBy {
    pub fn new(key: &RateKey) -> KeyBy {
        match key {
            RateKey::Ip => KeyBy::Addr,
            RateKey::Header(name) => KeyBy::Header(name.clone(), RandomState::new()),
        }
    }

    /// Whether keys may be header values (and so need bounding per address).
    pub fn reads_headers(&self) -> bool {
        matches!(self, KeyBy::Header(..))
    }

    /// `client` is the grouped address (`client_key`). The header's first value, whole: its
    /// length is already bounded by `max_header_size`. Missing or blank: the address.
    pub fn budget_key(&self, client: IpAddr, headers: &HeaderMap) -> BudgetKey {
        let KeyBy::Header(name, hasher) = self else {
            return BudgetKey::Addr(client);
        };
        match headers.get(name).map(|v| v.as_bytes().trim_ascii()) {
            Some(value) if !value.is_empty() => BudgetKey::Value(hasher.hash_one(value)),
            _ => BudgetKey::Addr(client),
        }
    }
}

impl KeyBy {
    /// The budget's name in the cluster store, the same on every instance: the address, or a
    /// hash of the header's value keyed with the cluster secret (never the value itself, and
    /// not one an onlooker of the store could test guesses against).
    pub fn store_suffix(&self, client: IpAddr, headers: &HeaderMap, secret: &hmac::Key) -> String {
        let KeyBy::Header(name, _) = self else {
            return format!("a:{client}");
        };
        match headers.get(name).map(|v| v.as_bytes().trim_ascii()) {
            Some(value) if !value.is_empty() => {
                let tag = hmac::sign(secret, value);
                let mut hex = String::with_capacity(34);
                hex.push_str("h:");
                for b in &tag.as_ref()[..16] {
                    hex.push_str(&format!("{b:02x}"));
                }
                hex
            }
            _ => format!("a:{client}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let a = client_key(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = client_key(ip("2001:db8:1:2:bbbb::9"), 64);
        let c = client_key(ip("2001:db8:1:3::1"), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1"), 64), ip("192.0.2.1"));
        assert_eq!(client_key(ip("192.0.2.1"), 64), ip("192.0.2.1"));
    }

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn header_values_are_hashed_and_a_missing_or_blank_one_falls_back_to_the_address() {
        let by = KeyBy::new(&RateKey::Header(HeaderName::from_static("x-tenant")));
        let client = ip("192.0.2.1");
        let acme = by.budget_key(client, &with("X-Tenant", "acme"));
        assert!(matches!(acme, BudgetKey::Value(_)));
        assert_eq!(
            acme,
            by.budget_key(ip("192.0.2.9"), &with("x-tenant", "acme"))
        );
        assert_ne!(acme, by.budget_key(client, &with("x-tenant", "Acme")));
        let long = "t".repeat(8 << 10);
        assert_ne!(acme, by.budget_key(client, &with("x-tenant", &long)));
        let addr = BudgetKey::Addr(client);
        assert_eq!(by.budget_key(client, &HeaderMap::new()), addr);
        assert_eq!(by.budget_key(client, &with("x-tenant", "")), addr);
        assert_eq!(by.budget_key(client, &with("x-tenant", " \t")), addr);
        assert_eq!(by.budget_key(client, &with("x-other", "acme")), addr);
        // an address limit never looks at headers
        let addr_only = KeyBy::new(&RateKey::Ip);
        assert_eq!(
            addr_only.budget_key(client, &with("x-tenant", "acme")),
            addr
        );
    }

    #[test]
    fn store_names_are_the_same_everywhere_and_keyed_by_the_secret() {
        let by = KeyBy::new(&RateKey::Header(HeaderName::from_static("x-tenant")));
        let other = KeyBy::new(&RateKey::Header(HeaderName::from_static("x-tenant")));
        let secret = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let client = ip("192.0.2.1");
        let acme = by.store_suffix(client, &with("x-tenant", "acme"), &secret);
        assert!(acme.starts_with("h:") && acme.len() == 34, "{acme}");
        assert!(!acme.contains("acme"));
        assert_eq!(
            acme,
            other.store_suffix(ip("192.0.2.9"), &with("x-tenant", " acme"), &secret)
        );
        let rekeyed = hmac::Key::new(hmac::HMAC_SHA256, b"fedcba9876543210");
        assert_ne!(
            acme,
            by.store_suffix(client, &with("x-tenant", "acme"), &rekeyed)
        );
        assert_eq!(
            by.store_suffix(client, &HeaderMap::new(), &secret),
            "a:192.0.2.1"
        );
        assert_eq!(
            KeyBy::Addr.store_suffix(client, &with("x-tenant", "acme"), &secret),
            "a:192.0.2.1"
        );
    }

    #[test]
    fn each_limiter_hashes_with_its_own_key() {
        let name = RateKey::Header(HeaderName::from_static("x-tenant"));
        let (a, b) = (KeyBy::new(&name), KeyBy::new(&name));
        let headers = with("x-tenant", "acme");
        let client = ip("192.0.2.1");
        assert_ne!(
            a.budget_key(client, &headers),
            b.budget_key(client, &headers)
        );
    }
}
