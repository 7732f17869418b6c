//! When a certificate is renewed. Where the CA's directory offers `renewalInfo` (ACME Renewal
//! Information, RFC 9773) the CA suggests a window, and the renewal happens at a time drawn
//! uniformly at random inside it (at once when that time is past); the CA is asked again when
//! its `Retry-After` says (held to one minute..one day, so at least daily), and right after each
//! issuance. Without ARI, or when the CA has never answered for this certificate, renewal is
//! due when a third of the lifetime is left ([`CertInfo::renew_at`]).
//!
//! What the CA said (window, explanation URL, the time drawn, when to ask next) is kept beside
//! the certificate as `renewal.json` (atomic write, like the certificate), so a restart resumes
//! the schedule instead of drawing again, and `gatehouse certs` shows it.
//!
//! The decisions are pure functions ([`plan`], [`choose`], [`cert_id`]) unit tested on RFC
//! 9773's examples; [`Schedule`] does the IO around them.

use super::order::Issuer;
use super::store::{self, CertInfo};
use super::{off_runtime, rfc3339, AcmeError, Causes};
use instant_acme::{CertificateIdentifier, RenewalInfo};
use rustls_pki_types::{CertificateDer, Der};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The file beside `cert.pem`.
pub const FILE: &str = "renewal.json";
/// RFC 9773 §4.3: a `Retry-After` under a minute counts as a minute, one over a day as a day.
const MIN_RECHECK: Duration = Duration::from_secs(60);
const MAX_RECHECK: Duration = Duration::from_secs(86_400);
/// After a failed request (the CA down, a timeout, a bad answer) it is asked again this soon.
const FAILED_RECHECK: Duration = Duration::from_secs(3600);
/// One `renewalInfo` request (and the account it needs) gets this long.
const FETCH_LIMIT: Duration = Duration::from_secs(30);

/// A suggested renewal window, in Unix seconds, `start < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

/// Who decided the renewal time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The CA's suggested window.
    Ari,
    /// A third of the lifetime left.
    Lifetime,
}

/// The renewal schedule of one certificate, as kept in `renewal.json`. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The ARI CertID of the certificate this is about (empty when it has none): a plan for a
    /// replaced certificate is not used for its successor.
    pub cert: String,
    pub source: Source,
    pub renew_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation_url: Option<String>,
    /// When the CA is asked again.
    pub next_check: u64,
    /// Why the fallback, or why the last request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What one `renewalInfo` request came to.
#[derive(Debug)]
pub enum Answer {
    Window {
        window: Window,
        explanation_url: Option<String>,
        retry_after: Duration,
    },
    /// The directory has no `renewalInfo`.
    NoAri,
    /// The certificate has no CertID (no Authority Key Identifier): nothing to ask about.
    Unidentified(String),
    Failed(String),
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial number DER bytes).
pub fn cert_id_of(aki: &[u8], serial: &[u8]) -> CertificateIdentifier<'static> {
    CertificateIdentifier::new(Der::from_slice(aki), Der::from_slice(serial)).into_owned()
}

/// The ARI CertID of a leaf certificate.
pub fn cert_id(leaf: &CertificateDer<'_>) -> Result<CertificateIdentifier<'static>, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        });
    let aki = aki.ok_or("the certificate has no Authority Key Identifier")?;
    Ok(cert_id_of(aki, cert.tbs_certificate.raw_serial()))
}

/// RFC 9773 §4.2: a time uniformly at random in the window (`pick` in 0..1); a time already
/// past (the whole window may be) means now.
pub fn choose(window: Window, now: u64, pick: f64) -> u64 {
    let span = window.end.saturating_sub(window.start) as f64;
    let at = window.start + (span * pick.clamp(0.0, 1.0)) as u64;
    at.max(now)
}

/// `Retry-After` held to RFC 9773's one minute..one day.
pub fn recheck(retry_after: Duration) -> Duration {
    retry_after.clamp(MIN_RECHECK, MAX_RECHECK)
}

/// The window of a CA's answer, `None` when it ends before it starts (RFC 9773 §4.2: treated
/// as no answer).
pub fn window_of(info: &RenewalInfo) -> Option<Window> {
    let w = &info.suggested_window;
    let (start, end) = (
        w.start.unix_timestamp().max(0) as u64,
        w.end.unix_timestamp().max(0) as u64,
    );
    (end > start).then_some(Window { start, end })
}

/// The schedule after `answer`, given the one before (`prev`, for any certificate) and a
/// random `pick` in 0..1. An unchanged window keeps the time drawn before (drawing again at
/// every check would pull renewals toward the window's start); a failed request keeps the
/// CA's last answer for this certificate, or falls back to a third of the lifetime.
pub fn plan(
    prev: Option<&Plan>,
    cert: &str,
    info: &CertInfo,
    answer: Answer,
    now: SystemTime,
    pick: f64,
) -> Plan {
    let now = secs(now);
    let prev = prev.filter(|p| p.cert == cert && p.source == Source::Ari);
    match answer {
        Answer::Window {
            window,
            explanation_url,
            retry_after,
        } => {
            let kept = prev.filter(|p| p.window == Some(window));
            Plan {
                cert: cert.to_string(),
                source: Source::Ari,
                renew_at: kept.map_or_else(|| choose(window, now, pick), |p| p.renew_at),
                window: Some(window),
                explanation_url,
                next_check: now + recheck(retry_after).as_secs(),
                note: None,
            }
        }
        Answer::NoAri => fallback(
            cert,
            info,
            now + MAX_RECHECK.as_secs(),
            "the CA offers no ARI",
        ),
        Answer::Unidentified(why) => fallback(cert, info, now + MAX_RECHECK.as_secs(), &why),
        Answer::Failed(why) => match prev {
            Some(p) => Plan {
                next_check: now + FAILED_RECHECK.as_secs(),
                note: Some(format!("the last ARI request failed: {why}")),
                ..p.clone()
            },
            None => fallback(
                cert,
                info,
                now + FAILED_RECHECK.as_secs(),
                &format!("the ARI request failed: {why}"),
            ),
        },
    }
}

fn fallback(cert: &str, info: &CertInfo, next_check: u64, why: &str) -> Plan {
    Plan {
        cert: cert.to_string(),
        source: Source::Lifetime,
        renew_at: secs(info.renew_at()),
        window: None,
        explanation_url: None,
        next_check,
        note: Some(why.to_string()),
    }
}

/// The CA moved this certificate's window earlier (RFC 9773 §4.2: e.g. ahead of a revocation).
pub fn moved_earlier(prev: Option<&Plan>, new: &Plan) -> bool {
    let before = prev.filter(|p| p.cert == new.cert).and_then(|p| p.window);
    matches!((before, new.window), (Some(b), Some(n)) if n.start < b.start)
}

impl Plan {
    /// One line for `gatehouse certs`: the source and, for ARI, the window.
    pub fn describe(&self) -> String {
        let mut text = match (self.source, self.window) {
            (Source::Ari, Some(w)) => format!(
                "ari window {} to {}, asked again {}",
                rfc3339(time(w.start)),
                rfc3339(time(w.end)),
                rfc3339(time(self.next_check))
            ),
            _ => "a third of the lifetime".to_string(),
        };
        if let Some(url) = &self.explanation_url {
            text.push_str(&format!(" (why: {url})"));
        }
        if let Some(note) = &self.note {
            text.push_str(&format!(" ({note})"));
        }
        text
    }

    pub fn renew_time(&self) -> SystemTime {
        time(self.renew_at)
    }
}

/// The stored plan for the certificate `leaf` in `dir`, else a third of its lifetime (for
/// `gatehouse certs`, which does not ask the CA). Blocking.
pub fn stored_plan(dir: &Path, leaf: &CertificateDer<'_>, info: &CertInfo) -> Plan {
    let id = cert_id(leaf).map(|id| id.to_string()).unwrap_or_default();
    match read(dir) {
        Some(plan) if plan.cert == id => plan,
        _ => fallback(&id, info, 0, "the CA has not been asked for a window yet"),
    }
}

fn read(dir: &Path) -> Option<Plan> {
    let json = std::fs::read(dir.join(FILE)).ok()?;
    serde_json::from_slice(&json).ok()
}

/// One certificate's schedule in the task that maintains it: the plan in memory and on disk.
pub(crate) struct Schedule {
    dir: PathBuf,
    plan: Option<Plan>,
}

/// When the maintain task next acts.
pub(crate) struct Due {
    pub renew_at: SystemTime,
    pub next_check: SystemTime,
    pub source: Source,
}

impl Schedule {
    /// The plan stored in `dir`, if any (a restart resumes it).
    pub(crate) async fn load(dir: &Path) -> Schedule {
        let at = dir.to_path_buf();
        let plan = off_runtime(move || Ok(read(&at))).await.ok().flatten();
        Schedule {
            dir: dir.to_path_buf(),
            plan,
        }
    }

    /// When to renew the certificate `leaf` (`info`), asking the CA first when a check is due:
    /// for a certificate not asked about yet (just issued, or stored by an older version), and
    /// when the time the CA gave has come (also while the process was down).
    pub(crate) async fn due(
        &mut self,
        issuer: &Issuer,
        leaf: Option<&CertificateDer<'static>>,
        info: &CertInfo,
        list: &str,
    ) -> Due {
        let now = SystemTime::now();
        let id = match leaf.map(cert_id) {
            Some(Ok(id)) => Ok(id),
            Some(Err(e)) => Err(e),
            None => Err("no certificate in the slot".to_string()),
        };
        let key = id.as_ref().map(ToString::to_string).unwrap_or_default();
        let fresh = self
            .plan
            .as_ref()
            .filter(|p| p.cert == key && p.next_check > secs(now));
        // RFC 9773 §4.3: no checks for an expired certificate; it is renewed now
        if fresh.is_none() && info.not_after > now {
            let answer = match &id {
                Ok(id) => fetch(issuer, id).await,
                Err(e) => Answer::Unidentified(e.clone()),
            };
            let new = plan(self.plan.as_ref(), &key, info, answer, now, fastrand::f64());
            self.adopt(new, list).await;
        }
        match self.plan.as_ref().filter(|p| p.cert == key) {
            Some(p) => Due {
                renew_at: p.renew_time(),
                next_check: time(p.next_check),
                source: p.source,
            },
            None => Due {
                renew_at: info.renew_at(),
                next_check: now + MAX_RECHECK,
                source: Source::Lifetime,
            },
        }
    }

    /// The CertID to send as `replaces` when renewing `leaf`: only for a certificate the CA's
    /// ARI covered (RFC 9773 §5).
    pub(crate) fn replaces(
        &self,
        leaf: Option<&CertificateDer<'static>>,
    ) -> Option<CertificateIdentifier<'static>> {
        let id = cert_id(leaf?).ok()?;
        let plan = self.plan.as_ref()?;
        (plan.source == Source::Ari && plan.cert == id.to_string()).then_some(id)
    }

    /// Logs what changed, stores the plan and keeps it.
    async fn adopt(&mut self, new: Plan, list: &str) {
        let prev = self.plan.as_ref();
        if moved_earlier(prev, &new) {
            tracing::warn!(names = %list, window = %new.describe(), renew_at = %rfc3339(new.renew_time()), explanation = new.explanation_url.as_deref().unwrap_or("none given"), "the CA moved the renewal window earlier");
        } else if prev.map(|p| (&p.cert, p.window, p.source))
            != Some((&new.cert, new.window, new.source))
        {
            tracing::info!(names = %list, renewal = %new.describe(), renew_at = %rfc3339(new.renew_time()), "renewal scheduled");
        }
        let (path, json) = (self.dir.join(FILE), serde_json::to_vec_pretty(&new));
        let written = match json {
            Ok(json) => off_runtime(move || Ok(store::write_atomic(&path, &json, 0o644)?)).await,
            Err(e) => Err(AcmeError::Stored(e.to_string())),
        };
        if let Err(e) = written {
            tracing::warn!(names = %list, error = %e, "cannot store the renewal schedule; the CA is asked again after a restart");
        }
        self.plan = Some(new);
    }
}

/// Asks the CA for `id`'s window.
async fn fetch(issuer: &Issuer, id: &CertificateIdentifier<'_>) -> Answer {
    match tokio::time::timeout(FETCH_LIMIT, issuer.renewal_info(id)).await {
        Err(_) => Answer::Failed(format!("no answer within {FETCH_LIMIT:?}")),
        Ok(Err(AcmeError::Acme(instant_acme::Error::Unsupported(_)))) => Answer::NoAri,
        Ok(Err(e)) => Answer::Failed(Causes(&e).to_string()),
        Ok(Ok((info, retry_after))) => match window_of(&info) {
            Some(window) => Answer::Window {
                window,
                explanation_url: info.explanation_url,
                retry_after,
            },
            None => Answer::Failed("the suggested window ends before it starts".to_string()),
        },
    }
}

#[cfg(test)]
mod tests;
