//! The DNS-01 provider check: a TXT record `_gatehouse-doctor.<name>.` (never a real
//! challenge's name) published through the site's provider, waited for as an order would, and
//! removed again, also after a failure.

use super::super::dns::{self, Record};
use super::Outcome;
use crate::config;

/// Publishes a test TXT record for the site's first name, waits until it is answered, and
/// removes it (also after a failure).
pub async fn provider(dns: &config::Dns, names: &[String]) -> Outcome {
    let Some(first) = names.first() else {
        return Outcome::Skipped("no name".into());
    };
    let base = first
        .strip_prefix("*.")
        .unwrap_or(first)
        .trim_end_matches('.');
    let record = Record {
        fqdn: format!("_gatehouse-doctor.{base}."),
        value: std::iter::repeat_with(fastrand::alphanumeric)
            .take(24)
            .collect(),
    };
    let provider_name = dns.provider.name();
    let fix_credentials = match &dns.provider {
        config::DnsProvider::Rfc2136(_) => "check `server`, `zone`, `tsig_key`, `tsig_secret` and `tsig_algorithm` against the DNS server's key and update ACL",
        config::DnsProvider::Exec { .. } => "run the hook by hand with the same arguments and fix what it says",
        config::DnsProvider::HttpReq(_) => "check `endpoint`, `username` and `password` against the DNS API",
    };
    if let Err(e) = dns::present(dns, &record).await {
        // a failed `present` may have half-published: remove what may be there
        let _ = dns::cleanup(dns, &record).await;
        return Outcome::problem(
            format!(
                "{provider_name} could not publish the test record {}: {e}",
                record.fqdn
            ),
            fix_credentials.into(),
        );
    }
    let visible = dns::wait_visible(dns, &record).await;
    let removed = dns::cleanup(dns, &record).await;
    match (visible, removed) {
        (Err(e), _) => Outcome::problem(
            format!("the test record was published but not seen: {e}"),
            "set `resolver` to a server that answers for the zone, or raise `propagation_timeout`".into(),
        ),
        (Ok(()), Err(e)) => Outcome::problem(
            format!("the test record {} was published but cannot be removed: {e}", record.fqdn),
            format!("remove the TXT record {} by hand, and give the provider the right to delete records", record.fqdn),
        ),
        (Ok(()), Ok(())) => Outcome::Ok(format!("{provider_name} published, served and removed the test record {}", record.fqdn)),
    }
}
