use super::*;
use crate::config::RateKey;
use http::{HeaderName, HeaderValue};

fn spec(requests: u32, per_secs: u64, burst: u32) -> RateLimit {
    RateLimit {
        requests,
        per: Duration::from_secs(per_secs),
        burst,
        methods: vec![Method::POST],
        key: RateKey::Ip,
        scope: "test".into(),
    }
}

fn per_tenant(requests: u32, per_secs: u64, burst: u32) -> RateLimit {
    RateLimit {
        key: RateKey::Header(HeaderName::from_static("x-tenant")),
        ..spec(requests, per_secs, burst)
    }
}

fn caps(total: usize, per_client: usize) -> KeyCaps {
    KeyCaps { total, per_client }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tenant(name: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_str(name).unwrap());
    headers
}

/// A request from `client` without headers.
fn bare(limiter: &Limiter, client: &str) -> Result<(), RetryAfter> {
    limiter.check(ip(client), &HeaderMap::new())
}

/// How many requests in a row `take` lets through, up to 100.
fn passes(mut take: impl FnMut() -> Result<(), RetryAfter>) -> usize {
    (0..100).take_while(|_| take().is_ok()).count()
}

#[test]
fn burst_then_refusal_with_the_wait() {
    let limiter = Limiter::new(&spec(60, 60, 3), caps(100, 100), None);
    assert!(limiter.applies_to(&Method::POST) && !limiter.applies_to(&Method::GET));
    for _ in 0..3 {
        assert!(bare(&limiter, "192.0.2.1").is_ok());
    }
    assert_eq!(bare(&limiter, "192.0.2.1"), Err(RetryAfter(1)));
    assert!(bare(&limiter, "192.0.2.2").is_ok());
    let slow = Limiter::new(&spec(1, 3600, 1), caps(100, 100), None);
    assert!(bare(&slow, "192.0.2.1").is_ok());
    let Err(RetryAfter(secs)) = bare(&slow, "192.0.2.1") else {
        panic!("refused")
    };
    assert!((3599..=3600).contains(&secs), "{secs}");
}

#[test]
fn a_full_table_never_grows_past_its_cap_nor_refuses_a_new_client() {
    let limiter = Limiter::new(&spec(1, 3600, 1), caps(10, 10), None);
    for i in 0..100u32 {
        let client = IpAddr::from(i.to_be_bytes());
        assert!(limiter.check(client, &HeaderMap::new()).is_ok(), "{client}");
    }
    let stats = limiter.stats();
    assert!(stats.tracked <= 10, "{stats:?}");
    assert!(stats.evicted >= 90, "{stats:?}");
    // a new client has a budget of its own, and it still holds
    assert!(bare(&limiter, "198.51.100.1").is_ok());
    assert!(bare(&limiter, "198.51.100.1").is_err());
}

#[test]
fn room_is_made_by_evicting_the_fullest_budgets_first() {
    // 5 per hour: nothing refills while the test runs
    let limiter = Limiter::new(&spec(5, 3600, 5), caps(4, 4), None);
    for (client, spent) in [("192.0.2.1", 1), ("192.0.2.2", 2), ("192.0.2.3", 3)] {
        for _ in 0..spent {
            bare(&limiter, client).unwrap();
        }
    }
    for _ in 0..5 {
        bare(&limiter, "192.0.2.4").unwrap();
    }
    bare(&limiter, "192.0.2.5").unwrap();
    assert_eq!(limiter.stats().evicted, 1);
    // .1 (4 left: the fullest) was forgotten and starts afresh; the others kept their state
    assert_eq!(passes(|| bare(&limiter, "192.0.2.1")), 5);
    assert_eq!(passes(|| bare(&limiter, "192.0.2.4")), 0);
    assert_eq!(passes(|| bare(&limiter, "192.0.2.3")), 2);
}

#[test]
fn header_keyed_budgets_are_per_value_and_fall_back_to_the_address() {
    let limiter = Limiter::new(&per_tenant(60, 60, 2), caps(100, 100), None);
    let client = ip("192.0.2.1");
    for _ in 0..2 {
        assert!(limiter.check(client, &tenant("acme")).is_ok());
    }
    assert!(limiter.check(client, &tenant("acme")).is_err());
    // another tenant from the same address, and the same tenant from anywhere
    assert!(limiter.check(client, &tenant("globex")).is_ok());
    assert!(limiter.check(ip("192.0.2.7"), &tenant("acme")).is_err());
    // no header: the address's own budget in the same table
    for _ in 0..2 {
        assert!(limiter.check(client, &HeaderMap::new()).is_ok());
    }
    assert!(limiter.check(client, &tenant("")).is_err());
    assert_eq!(limiter.stats().tracked, 3);
}

#[test]
fn one_address_brings_in_at_most_its_share_of_header_values() {
    let limiter = Limiter::new(&per_tenant(5, 3600, 5), caps(1000, 3), None);
    let (flooder, other) = (ip("192.0.2.1"), ip("192.0.2.2"));
    // another address's tenant, spent: it must keep its state through the flood
    assert_eq!(passes(|| limiter.check(other, &tenant("globex"))), 5);
    for i in 0..100 {
        let made_up = tenant(&format!("tenant-{i}"));
        assert!(limiter.check(flooder, &made_up).is_ok());
    }
    let stats = limiter.stats();
    assert_eq!(
        stats.tracked, 4,
        "3 of the flooder's values and globex: {stats:?}"
    );
    assert_eq!(stats.evicted, 97);
    assert!(limiter.check(other, &tenant("globex")).is_err());
    // the flooder's own address budget is not a header value: not in its share
    assert!(limiter.check(flooder, &HeaderMap::new()).is_ok());
}

#[test]
fn an_address_over_its_share_loses_its_fullest_value() {
    let limiter = Limiter::new(&per_tenant(5, 3600, 5), caps(1000, 3), None);
    let client = ip("192.0.2.1");
    for (name, spent) in [("a", 5), ("b", 1), ("c", 3)] {
        for _ in 0..spent {
            limiter.check(client, &tenant(name)).unwrap();
        }
    }
    limiter.check(client, &tenant("d")).unwrap();
    // b had the most left: forgotten, it starts afresh; a and c kept their state
    assert_eq!(passes(|| limiter.check(client, &tenant("a"))), 0);
    assert_eq!(passes(|| limiter.check(client, &tenant("c"))), 2);
    assert_eq!(passes(|| limiter.check(client, &tenant("b"))), 5);
    assert_eq!(
        limiter.stats().evicted,
        2,
        "b, then d to make room for b again"
    );
}

#[test]
fn registry_keeps_a_limiter_while_a_snapshot_holds_it() {
    let registry = Limiters::default();
    let a = registry.get(&spec(5, 60, 5), caps(100, 10), None);
    let b = registry.get(&spec(5, 60, 5), caps(100, 10), None);
    assert!(Arc::ptr_eq(&a, &b));
    let c = registry.get(&spec(6, 60, 6), caps(100, 10), None);
    assert!(!Arc::ptr_eq(&a, &c));
    let d = registry.get(&per_tenant(5, 60, 5), caps(100, 10), None);
    assert!(!Arc::ptr_eq(&a, &d), "a new key is a new budget");
    let e = registry.get(&spec(5, 60, 5), caps(100, 20), None);
    assert!(!Arc::ptr_eq(&a, &e), "new caps are a new table");
    drop((a, b, d, e));
    assert_eq!(registry.alive().len(), 1);
}
