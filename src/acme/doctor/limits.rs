//! Issuance counts against a CA's published rate limits: how many certificates the local store
//! logged (`issued.log`, see `store`) in the window the CA counts over. Only Let's Encrypt's
//! production limits are known; for any other CA the count is shown with "unknown limits".
//! Pure, unit tested below.

use super::super::store::Issuance;
use std::time::{Duration, SystemTime};

/// Let's Encrypt's production directory host (staging's limits are far higher and not judged).
const LETS_ENCRYPT_HOST: &str = "acme-v02.api.letsencrypt.org";

/// A CA's limits that the store can count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub window: Duration,
    /// Certificates for exactly the same set of names.
    pub per_name_set: usize,
    /// Certificates naming any name under one registered domain.
    pub per_domain: usize,
}

/// Let's Encrypt (https://letsencrypt.org/docs/rate-limits/): 5 per exact set of names and 50
/// per registered domain, each per 7 days.
pub const LETS_ENCRYPT: Limits = Limits {
    window: Duration::from_secs(7 * 86400),
    per_name_set: 5,
    per_domain: 50,
};

/// The limits of the CA at `directory`, where they are known.
pub fn for_directory(directory: &str) -> Option<Limits> {
    let host = directory.split("://").nth(1)?.split(['/', ':']).next()?;
    (host == LETS_ENCRYPT_HOST).then_some(LETS_ENCRYPT)
}

/// The registered domain of `name`, taken as its last two labels: right for `.com`, `.org`,
/// `.de` and the like, too short under multi-label public suffixes (`example.co.uk` counts as
/// `co.uk`), which can only overstate a count.
pub fn registered_domain(name: &str) -> String {
    let name = name
        .strip_prefix("*.")
        .unwrap_or(name)
        .trim_end_matches('.');
    let labels: Vec<&str> = name.rsplitn(3, '.').collect();
    match labels.as_slice() {
        [tld, sld, ..] => format!("{sld}.{tld}"),
        _ => name.to_string(),
    }
}

/// Issuances inside `window` before `now`: of exactly `names` (in any order), and of any name
/// under `domain`; plus the oldest of the former (when the next one is allowed again).
pub struct Counted {
    pub name_set: usize,
    pub domain: usize,
    pub oldest_of_set: Option<SystemTime>,
}

pub fn count(
    log: &[Issuance],
    names: &[String],
    domain: &str,
    window: Duration,
    now: SystemTime,
) -> Counted {
    let recent = log
        .iter()
        .filter(|i| now.duration_since(i.at).is_ok_and(|age| age < window));
    let mut wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    let mut counted = Counted {
        name_set: 0,
        domain: 0,
        oldest_of_set: None,
    };
    for issuance in recent {
        let mut set: Vec<&str> = issuance.names.iter().map(String::as_str).collect();
        set.sort_unstable();
        if set == wanted {
            counted.name_set += 1;
            counted.oldest_of_set = Some(match counted.oldest_of_set {
                Some(t) => t.min(issuance.at),
                None => issuance.at,
            });
        }
        if issuance
            .names
            .iter()
            .any(|n| registered_domain(n) == domain)
        {
            counted.domain += 1;
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lets_encrypt_production_has_known_limits() {
        let prod = "https://acme-v02.api.letsencrypt.org/directory";
        assert_eq!(for_directory(prod), Some(LETS_ENCRYPT));
        let staging = "https://acme-staging-v02.api.letsencrypt.org/directory";
        assert_eq!(for_directory(staging), None);
        assert_eq!(for_directory("https://127.0.0.1:14000/dir"), None);
    }

    #[test]
    fn the_registered_domain_is_the_last_two_labels() {
        assert_eq!(registered_domain("a.b.example.com"), "example.com");
        assert_eq!(registered_domain("*.example.com"), "example.com");
        assert_eq!(registered_domain("example.com."), "example.com");
        assert_eq!(registered_domain("localhost"), "localhost");
    }

    #[test]
    fn counts_the_window_by_name_set_and_domain() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let day = Duration::from_secs(86400);
        let issued = |days: u32, names: &[&str]| Issuance {
            at: now - day * days,
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        let log = [
            issued(1, &["www.example.com", "example.com"]),
            issued(3, &["example.com", "www.example.com"]),
            issued(6, &["api.example.com"]),
            // outside the window
            issued(8, &["example.com", "www.example.com"]),
            issued(2, &["other.org"]),
        ];
        let names = vec!["example.com".to_string(), "www.example.com".to_string()];
        let c = count(&log, &names, "example.com", LETS_ENCRYPT.window, now);
        assert_eq!((c.name_set, c.domain), (2, 3));
        assert_eq!(c.oldest_of_set, Some(now - day * 3));
    }
}
