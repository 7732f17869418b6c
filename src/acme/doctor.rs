//! `gatehouse certs doctor`: for each `tls = "acme"` site, what would stop an order before one
//! is placed. The checks, each a [`Finding`] with what to do about a problem:
//! - the CA's directory answers, and its CAA identities (`meta.caaIdentities`, else its host)
//!   ([`ca`]);
//! - each name resolves (through the site's `dns.resolver` when one is set, else the system's),
//!   and for HTTP-01 a test token served here is fetched back by name ([`http01`]);
//! - the CAA records of each name let this CA issue ([`caa`]);
//! - the certificate's folder under `state_dir` takes a file;
//! - the certificates logged as issued in the CA's window against its limits ([`limits`]);
//! - for DNS-01, the provider publishes (and removes) a test TXT record
//!   `_gatehouse-doctor.<name>`, and it is answered ([`provider`]).
//!
//! The same checks run (logged at warn, never fatal) after the first failure of a streak of
//! failed orders ([`after_failure`]).

mod ca;
mod caa;
mod http01;
mod limits;
mod provider;

pub use http01::{serve_self_test, SELF_TEST_TTL};

use super::dns::{self, wire};
use super::order::Issuer;
use super::store::{self, Store};
use crate::config::{self, Challenge, ConfigError};
use ca::{directory, Ca};
use http01::Responder;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The port the CA's HTTP-01 validation connects to: 80 for every public CA (RFC 8555 8.3).
pub const HTTP01_PORT: u16 = 80;

/// What one check found.
#[derive(Clone, Debug)]
pub struct Finding {
    /// `ca`, `resolve`, `http-01`, `caa`, `state_dir`, `rate limits`, `dns provider`.
    pub check: &'static str,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Ok(String),
    /// Not checked, and why.
    Skipped(String),
    Problem {
        what: String,
        fix: String,
    },
}

impl Outcome {
    fn problem(what: String, fix: String) -> Outcome {
        Outcome::Problem { what, fix }
    }
}

/// One site's findings.
pub struct SiteReport {
    pub names: Vec<String>,
    pub challenge: Challenge,
    pub findings: Vec<Finding>,
}

/// Everything `gatehouse certs doctor` found.
pub struct Report {
    pub sites: Vec<SiteReport>,
}

impl Report {
    pub fn problems(&self) -> usize {
        let all = self.sites.iter().flat_map(|s| &s.findings);
        all.filter(|f| matches!(f.outcome, Outcome::Problem { .. }))
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sites.is_empty() {
            return writeln!(f, "no `tls = \"acme\"` site: nothing to check");
        }
        for site in &self.sites {
            writeln!(
                f,
                "{} ({})",
                site.names.join(", "),
                challenge_name(site.challenge)
            )?;
            for finding in &site.findings {
                let check = finding.check;
                match &finding.outcome {
                    Outcome::Ok(text) => writeln!(f, "  ok       {check:12} {text}")?,
                    Outcome::Skipped(text) => writeln!(f, "  skipped  {check:12} {text}")?,
                    Outcome::Problem { what, fix } => {
                        writeln!(f, "  PROBLEM  {check:12} {what}")?;
                        if !fix.is_empty() {
                            writeln!(f, "           {:12} fix: {fix}", "")?;
                        }
                    }
                }
            }
        }
        match self.problems() {
            0 => writeln!(f, "all well"),
            1 => writeln!(f, "1 problem"),
            n => writeln!(f, "{n} problems"),
        }
    }
}

fn challenge_name(c: Challenge) -> &'static str {
    match c {
        Challenge::Http01 => "http-01",
        Challenge::TlsAlpn01 => "tls-alpn-01",
        Challenge::Dns01 => "dns-01",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// `gatehouse certs doctor`: checks every ACME site of the config at `path`; the self-test
/// fetches at `http_port` (80 unless a test CA validates elsewhere).
pub fn run(path: &Path, http_port: u16) -> Result<Report, DoctorError> {
    let config = crate::load::load(path)?.config;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DoctorError::Runtime)?;
    Ok(runtime.block_on(check_all(&config, http_port)))
}

async fn check_all(config: &config::Config, http_port: u16) -> Report {
    let acme_sites: Vec<&config::Site> = config
        .sites
        .iter()
        .filter(|s| s.tls == Some(config::SiteTls::Acme))
        .collect();
    // only bound when a site answers HTTP-01: the port may be 80, and nothing else needs it
    let http01 = acme_sites
        .iter()
        .any(|s| config.acme.for_site(s).challenge == Challenge::Http01);
    let responder = if http01 {
        Responder::for_cli(&config.listen).await
    } else {
        Responder::Nobody {
            what: "no site answers HTTP-01".into(),
            fix: String::new(),
        }
    };
    let store = Store::new(&config.server.state_dir);
    let mut identities: HashMap<String, Ca> = HashMap::new();
    let mut sites = Vec::new();
    for site in acme_sites {
        let settings = config.acme.for_site(site);
        let names = site.names();
        let ca = match identities.get(&settings.directory) {
            Some(found) => found.clone(),
            None => {
                let found = directory(&settings).await;
                identities.insert(settings.directory.clone(), found.clone());
                found
            }
        };
        let checks = Checks {
            settings: &settings,
            store: &store,
            responder: &responder,
            http_port,
        };
        let findings = checks.site(&names, ca).await;
        sites.push(SiteReport {
            names,
            challenge: settings.challenge,
            findings,
        });
    }
    Report { sites }
}

/// After the first failed order of a streak: the same checks, each problem logged at warn.
pub(super) async fn after_failure(issuer: Arc<Issuer>, names: Vec<String>) {
    let settings = &issuer.settings;
    let responder = Responder::Local(issuer.challenges.clone());
    let ca = directory(settings).await;
    let checks = Checks {
        settings,
        store: &issuer.store,
        responder: &responder,
        http_port: HTTP01_PORT,
    };
    let list = names.join(",");
    let findings = checks.site(&names, ca).await;
    let mut problems = 0;
    for finding in findings {
        if let Outcome::Problem { what, fix } = finding.outcome {
            problems += 1;
            tracing::warn!(names = %list, check = finding.check, problem = %what, fix = %fix, "certificate doctor: a problem that may explain the failed order");
        }
    }
    if problems == 0 {
        tracing::info!(names = %list, "certificate doctor found nothing wrong here; the CA's error above says why");
    }
}

/// The checks of one site, with what they share.
struct Checks<'a> {
    settings: &'a config::Acme,
    store: &'a Store,
    responder: &'a Responder,
    http_port: u16,
}

impl Checks<'_> {
    async fn site(&self, names: &[String], ca: Ca) -> Vec<Finding> {
        let mut findings = vec![ca.finding];
        let resolver = self.settings.dns.as_ref().and_then(|d| d.resolver);
        for name in names {
            findings.extend(self.reach(name, resolver).await);
            findings.push(Finding {
                check: "caa",
                outcome: self.caa(name, resolver, &ca.identities).await,
            });
        }
        let dir = self.store.cert_dir(&self.settings.directory, names);
        findings.push(Finding {
            check: "state_dir",
            outcome: writable(dir.clone()).await,
        });
        findings.push(Finding {
            check: "rate limits",
            outcome: self.issued(names, &dir).await,
        });
        if let Some(dns) = self.dns01() {
            findings.push(Finding {
                check: "dns provider",
                outcome: provider::provider(dns, names).await,
            });
        }
        findings
    }

    fn dns01(&self) -> Option<&config::Dns> {
        let dns01 = self.settings.challenge == Challenge::Dns01;
        self.settings.dns.as_ref().filter(|_| dns01)
    }

    /// Resolution and, for HTTP-01, the self-test.
    async fn reach(&self, name: &str, resolver: Option<SocketAddr>) -> Vec<Finding> {
        if name.starts_with("*.") {
            let why = format!("{name}: a wildcard has no address to resolve or test; the CA checks it by DNS-01 only");
            return vec![Finding {
                check: "resolve",
                outcome: Outcome::Skipped(why),
            }];
        }
        let addrs = match resolve(name, resolver).await {
            Ok(addrs) => addrs,
            Err(e) => {
                let dns01 = self.settings.challenge == Challenge::Dns01;
                let outcome = if dns01 {
                    // DNS-01 proves the name without reaching it: an internal host is fine
                    Outcome::Skipped(format!(
                        "{name} does not resolve ({e}); DNS-01 does not need it to"
                    ))
                } else {
                    Outcome::problem(
                        format!("{name} does not resolve: {e}"),
                        "add an A and/or AAAA record for the name pointing at this host (the CA resolves it to validate); or use `challenge = \"dns-01\"`".into(),
                    )
                };
                return vec![Finding {
                    check: "resolve",
                    outcome,
                }];
            }
        };
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let by = resolver.map_or("the system resolver".to_string(), |r| format!("{r}"));
        let mut findings = vec![Finding {
            check: "resolve",
            outcome: Outcome::Ok(format!("{name}: {} (by {by})", list.join(", "))),
        }];
        if self.settings.challenge == Challenge::Http01 {
            findings.push(Finding {
                check: "http-01",
                outcome: http01::self_test(self.responder, name, &addrs, self.http_port).await,
            });
        }
        findings
    }

    async fn caa(
        &self,
        name: &str,
        resolver: Option<SocketAddr>,
        identities: &[String],
    ) -> Outcome {
        let server = match resolver {
            Some(r) => r,
            None => match dns::system_resolver().await {
                Ok(r) => r,
                Err(e) => return Outcome::problem(format!("{name}: cannot look up CAA: {e}"), "list a `nameserver` in /etc/resolv.conf, or set `resolver` in the site's `dns`".into()),
            },
        };
        let found = match caa::relevant(server, name).await {
            Ok(found) => found,
            Err(e) => {
                return Outcome::problem(
                    format!("{name}: {e}"),
                    "a CA that cannot read CAA refuses to issue: fix the zone's DNS servers (or DNSSEC) so CAA queries are answered".into(),
                )
            }
        };
        let Some((at, records)) = found else {
            return Outcome::Ok(format!(
                "{name}: no CAA records up the tree: any CA may issue"
            ));
        };
        match caa::judge(&records, name.starts_with("*."), identities) {
            Ok(()) => Outcome::Ok(format!(
                "{name}: the CAA records at {at} allow {}",
                identities.join(", ")
            )),
            Err(why) => {
                let kind = if name.starts_with("*.") {
                    "issuewild"
                } else {
                    "issue"
                };
                let ca = identities.first().map_or("", String::as_str);
                Outcome::problem(
                    format!("{name}: {why} (found at {at})"),
                    format!("add `{at}. CAA 0 {kind} \"{ca}\"` to the zone, or order from a CA the records name (`[acme] directory`)"),
                )
            }
        }
    }

    /// The issuances logged for this CA against its limits.
    async fn issued(&self, names: &[String], dir: &Path) -> Outcome {
        let Some(ca_dir) = dir.parent().map(Path::to_path_buf) else {
            return Outcome::Skipped("no certificate folder".into());
        };
        let log = tokio::task::spawn_blocking(move || issuance_log(&ca_dir))
            .await
            .unwrap_or_default();
        let known = limits::for_directory(&self.settings.directory);
        let window = known.map_or(limits::LETS_ENCRYPT.window, |l| l.window);
        let domain = names
            .first()
            .map(|n| limits::registered_domain(n))
            .unwrap_or_default();
        let now = SystemTime::now();
        let counted = limits::count(&log, names, &domain, window, now);
        let Some(limit) = known else {
            return Outcome::Ok(format!(
                "{} certificate(s) for these names in the last 7 days (local store); unknown limits for this CA",
                counted.name_set
            ));
        };
        if counted.name_set >= limit.per_name_set {
            let again = counted.oldest_of_set.map_or(now, |t| t + limit.window);
            return Outcome::problem(
                format!("{} certificates for exactly these names in the last 7 days: the CA allows {}, so the next order is refused until about {}", counted.name_set, limit.per_name_set, super::rfc3339(again)),
                "wait until then (the current certificate keeps serving), or add or remove a name (a new set is counted apart); test with `directory = \"staging\"`".into(),
            );
        }
        if counted.domain >= limit.per_domain {
            return Outcome::problem(
                format!("{} certificates under {domain} in the last 7 days: the CA allows {}", counted.domain, limit.per_domain),
                "wait a few days, or put several names in one certificate (one site with more hosts)".into(),
            );
        }
        Outcome::Ok(format!(
            "{} of {} for these names, {} of {} under {domain}, in the last 7 days (local store)",
            counted.name_set, limit.per_name_set, counted.domain, limit.per_domain
        ))
    }
}

/// Every issuance logged under one CA's folder; a certificate stored before the log existed
/// counts once, at its `not_before`.
fn issuance_log(ca_dir: &Path) -> Vec<store::Issuance> {
    let dirs = std::fs::read_dir(ca_dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_else(|_| Vec::<PathBuf>::new());
    let mut log = Vec::new();
    for dir in dirs {
        let logged = store::read_issued(&dir);
        if !logged.is_empty() {
            log.extend(logged);
        } else if let Ok(Some(stored)) = store::load_cert(&dir) {
            log.push(store::Issuance {
                at: stored.info.not_before,
                names: stored.info.names,
            });
        }
    }
    log
}

/// A name's addresses: asked of `resolver` (A and AAAA) when set, else the system's.
async fn resolve(name: &str, resolver: Option<SocketAddr>) -> Result<Vec<IpAddr>, String> {
    let Some(server) = resolver else {
        let found = tokio::net::lookup_host((name, 0))
            .await
            .map_err(|e| e.to_string())?;
        let mut addrs: Vec<IpAddr> = found.map(|a| a.ip()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        return Ok(addrs);
    };
    let mut addrs = Vec::new();
    for kind in [wire::TYPE_A, wire::TYPE_AAAA] {
        let reply = dns::lookup(server, name, kind, true)
            .await
            .map_err(|e| e.to_string())?;
        match reply.rcode {
            0 => addrs.extend(reply.addrs),
            3 => return Err(format!("{server} answered NXDOMAIN (no such name)")),
            code => {
                return Err(format!(
                    "{server} answered {}",
                    wire::rcode_name(u16::from(code))
                ))
            }
        }
    }
    if addrs.is_empty() {
        return Err(format!("{server} has no A or AAAA record for it"));
    }
    Ok(addrs)
}

/// Creates and removes a file in `dir` (the certificate's folder), creating the folder as the
/// store would.
async fn writable(dir: PathBuf) -> Outcome {
    let tried = tokio::task::spawn_blocking(move || {
        let probe = dir.join(format!(".doctor-{}", fastrand::u64(..)));
        let result = store::write_atomic(&probe, b"gatehouse certs doctor\n", 0o600)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                std::fs::remove_file(&probe)
                    .map_err(|e| format!("cannot remove {}: {e}", probe.display()))
            });
        (dir, result)
    })
    .await;
    match tried {
        Ok((dir, Ok(()))) => Outcome::Ok(format!("{} takes new files", dir.display())),
        Ok((dir, Err(e))) => Outcome::problem(
            format!("certificates cannot be stored: {e}"),
            format!("make `[server] state_dir` a directory the user Gatehouse runs as may write (e.g. `install -d -o gatehouse {}`), or point it elsewhere", dir.display()),
        ),
        Err(e) => Outcome::problem(format!("the write test stopped: {e}"), String::new()),
    }
}
