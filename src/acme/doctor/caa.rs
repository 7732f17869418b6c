//! CAA (RFC 8659): which CAs a name's DNS lets issue for it. The relevant record set is the
//! first one found climbing from the name towards the root (the root itself excluded); a
//! wildcard is judged by its `issuewild` records where there are any, else by `issue`. The
//! verdict ([`judge`]) is pure; [`relevant`] asks a DNS server.

use super::super::dns::{self, wire};
use std::net::SocketAddr;

/// Tags RFC 8659 and its registry define; a critical record with any other tag forbids every
/// CA (4.1: a CA must not issue when it does not understand a critical property).
const KNOWN_TAGS: [&str; 7] = [
    "issue",
    "issuewild",
    "iodef",
    "issuemail",
    "issuevmc",
    "contactemail",
    "contactphone",
];

/// The CAA records that decide for `name`, and the name they were found at; `None`: no CAA
/// record anywhere up the tree. A server error at any level is an error: a CA that cannot
/// read CAA refuses to issue (Let's Encrypt does).
pub async fn relevant(
    server: SocketAddr,
    name: &str,
) -> Result<Option<(String, Vec<wire::Caa>)>, String> {
    let base = name
        .strip_prefix("*.")
        .unwrap_or(name)
        .trim_end_matches('.');
    let labels: Vec<&str> = base.split('.').collect();
    for at in 0..labels.len() {
        let candidate = labels[at..].join(".");
        let reply = dns::lookup(server, &candidate, wire::TYPE_CAA, true)
            .await
            .map_err(|e| format!("CAA of {candidate}: {e}"))?;
        match reply.rcode {
            // NXDOMAIN: no such name, so no records there; climb on
            0 | 3 if reply.caa.is_empty() => continue,
            0 => return Ok(Some((candidate, reply.caa))),
            code => {
                let rcode = wire::rcode_name(u16::from(code));
                return Err(format!("CAA of {candidate}: {server} answered {rcode}"));
            }
        }
    }
    Ok(None)
}

/// Whether the CA known by `identities` may issue for a name (`wildcard`: a `*.` name) under
/// `records`: `Err` says why not.
pub fn judge(records: &[wire::Caa], wildcard: bool, identities: &[String]) -> Result<(), String> {
    let tag = |r: &wire::Caa, t: &str| r.tag.eq_ignore_ascii_case(t);
    if let Some(r) = records
        .iter()
        .find(|r| r.critical && !KNOWN_TAGS.iter().any(|t| tag(r, t)))
    {
        return Err(format!(
            "a critical CAA record with the unknown tag `{}` forbids every CA",
            r.tag
        ));
    }
    let has_wild = records.iter().any(|r| tag(r, "issuewild"));
    let kind = if wildcard && has_wild {
        "issuewild"
    } else {
        "issue"
    };
    let values: Vec<&str> = records
        .iter()
        .filter(|r| tag(r, kind))
        .map(|r| r.value.as_str())
        .collect();
    if values.is_empty() {
        // `iodef` and the like alone restrict no one
        return Ok(());
    }
    let allowed = values.iter().any(|v| {
        let issuer = v.split(';').next().unwrap_or("").trim();
        !issuer.is_empty() && identities.iter().any(|i| i.eq_ignore_ascii_case(issuer))
    });
    if allowed {
        Ok(())
    } else {
        let listed: Vec<String> = values.iter().map(|v| format!("{kind} \"{v}\"")).collect();
        Err(format!(
            "the CAA records ({}) do not name this CA ({})",
            listed.join(", "),
            identities.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caa(tag: &str, value: &str) -> wire::Caa {
        wire::Caa {
            critical: false,
            tag: tag.into(),
            value: value.into(),
        }
    }

    fn le() -> Vec<String> {
        vec!["letsencrypt.org".to_string()]
    }

    /// RFC 8659 4.2-4.3's rules, on the examples of its section 4.
    #[test]
    fn issue_and_issuewild_decide_as_rfc_8659_says() {
        assert!(judge(&[caa("issue", "letsencrypt.org")], false, &le()).is_ok());
        assert!(judge(
            &[caa("issue", "LetsEncrypt.org; validationmethods=dns-01")],
            false,
            &le()
        )
        .is_ok());
        assert!(judge(&[caa("issue", "ca.example.net")], false, &le()).is_err());
        // `issue ";"`: no CA at all
        assert!(judge(&[caa("issue", ";")], false, &le()).is_err());
        // only iodef: nobody restricted
        assert!(judge(&[caa("iodef", "mailto:sec@example.com")], false, &le()).is_ok());
        // a wildcard with issuewild: issue does not count
        let both = [caa("issue", "letsencrypt.org"), caa("issuewild", ";")];
        assert!(judge(&both, false, &le()).is_ok());
        assert!(judge(&both, true, &le()).is_err());
        // a wildcard without issuewild: issue decides
        assert!(judge(&[caa("issue", "letsencrypt.org")], true, &le()).is_ok());
        // issuewild does not restrict plain names
        assert!(judge(&[caa("issuewild", "ca.example.net")], false, &le()).is_ok());
    }

    #[test]
    fn an_unknown_critical_tag_forbids_every_ca() {
        let mut strange = caa("tbs", "Unknown");
        strange.critical = true;
        let why = judge(&[caa("issue", "letsencrypt.org"), strange], false, &le()).unwrap_err();
        assert!(why.contains("tbs"), "{why}");
    }
}
