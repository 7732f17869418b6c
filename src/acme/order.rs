//! One certificate order with instant-acme: account (stored or new), authorizations answered by
//! the shared `Challenges`, CSR with a fresh key, download of the chain.

use super::dns::{self, Published, Record};
use super::store::{self, Store};
use super::{off_runtime, AcmeError, Challenges};
use crate::cluster::acme::{Journal, Lock, SharedAcme};
use crate::cluster::challenges::tls_alpn_value;
use crate::config::{self, Challenge};
use crate::metrics::Metrics;
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, CertificateIdentifier,
    ChallengeStatus, ChallengeType, ExternalAccountKey, HttpClient, Identifier, NewAccount,
    NewOrder, OrderStatus, RenewalInfo, RetryPolicy,
};
use rustls::crypto::ring;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Pebble and Let's Encrypt answer in seconds; a CA still busy after this is treated as a failure.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .timeout(Duration::from_secs(90));

/// A freshly issued certificate, as PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// One CA account, shared by every certificate ordered from that directory.
pub struct Issuer {
    pub settings: config::Acme,
    pub store: Store,
    pub challenges: Arc<Challenges>,
    account: Mutex<Option<Account>>,
    /// Where DNS-01 record changes are counted.
    metrics: Option<Arc<Metrics>>,
    /// `[cluster] acme = "shared"`: the account comes from the store ([`super::shared`]).
    shared: Option<Arc<SharedAcme>>,
}

impl Issuer {
    pub fn new(settings: config::Acme, store: Store, challenges: Arc<Challenges>) -> Issuer {
        Issuer {
            settings,
            store,
            challenges,
            account: Mutex::new(None),
            metrics: None,
            shared: None,
        }
    }

    /// Orders for the cluster: the account is the one in the store.
    pub fn with_shared(mut self, shared: Option<Arc<SharedAcme>>) -> Issuer {
        self.shared = shared;
        self
    }

    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Issuer {
        self.metrics = metrics;
        self
    }

    /// RFC 9773: the CA's suggested renewal window for the certificate `id`, and how long until
    /// it should be asked again. `Error::Unsupported` when the directory has no `renewalInfo`.
    pub async fn renewal_info(
        &self,
        id: &CertificateIdentifier<'_>,
    ) -> Result<(RenewalInfo, Duration), AcmeError> {
        let account = self.account().await?;
        Ok(account.renewal_info(id).await?)
    }

    /// Made from these settings and this store (so it can stand for them).
    pub fn serves(&self, settings: &config::Acme, store: &Store) -> bool {
        self.settings == *settings && self.store == *store
    }

    /// Serves these settings and store for the same cluster (or, `None`, for none).
    pub fn serves_shared(&self, shared: Option<&Arc<SharedAcme>>) -> bool {
        match (&self.shared, shared) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// A certificate for `names`, whose folder is `dir` (where DNS-01 records in flight are
    /// remembered); `replaces` names the certificate it succeeds, when ARI covered that one.
    /// Under a cluster `lock`, the order is journaled in the store once placed, and a journaled
    /// order is resumed rather than a new one placed.
    pub async fn issue(
        &self,
        names: &[String],
        dir: &Path,
        replaces: Option<&CertificateIdentifier<'_>>,
        lock: Option<&Lock>,
    ) -> Result<Issued, AcmeError> {
        let Some(dns) = self.dns() else {
            return self.issue_with(names, replaces, None, lock).await;
        };
        let metrics = self.metrics.as_deref();
        dns::clean_leftovers(dns, dir, metrics).await;
        let mut published = Published::new(dns.clone(), dir.to_path_buf(), self.metrics.clone());
        let issued = self
            .issue_with(names, replaces, Some(&mut published), lock)
            .await;
        // after a failure too: a record left in the zone would be answered until removed
        published.cleanup().await;
        issued
    }

    /// The DNS provider, when this issuer answers DNS-01.
    pub fn dns(&self) -> Option<&config::Dns> {
        let dns01 = self.settings.challenge == Challenge::Dns01;
        self.settings.dns.as_ref().filter(|_| dns01)
    }

    async fn issue_with(
        &self,
        names: &[String],
        replaces: Option<&CertificateIdentifier<'_>>,
        mut published: Option<&mut Published>,
        lock: Option<&Lock>,
    ) -> Result<Issued, AcmeError> {
        match self
            .try_issue(names, replaces, published.as_deref_mut(), lock)
            .await
        {
            // the CA forgot us (a test CA restarted, an account deactivated): register again
            Err(AcmeError::Acme(instant_acme::Error::Api(p)))
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
                    && self.shared.is_none() =>
            {
                tracing::warn!(directory = %self.settings.directory, "the CA does not know the stored account; registering a new one");
                *self.account.lock().await = None;
                let path = self.store.account_path(&self.settings.directory);
                let _ = off_runtime(move || Ok(std::fs::remove_file(path))).await;
                self.try_issue(names, replaces, published, lock).await
            }
            other => other,
        }
    }

    async fn try_issue(
        &self,
        names: &[String],
        replaces: Option<&CertificateIdentifier<'_>>,
        published: Option<&mut Published>,
        lock: Option<&Lock>,
    ) -> Result<Issued, AcmeError> {
        let account = self.account().await?;
        if let Some(profile) = &self.settings.profile {
            offered(&account, profile)?;
        }
        let resumed = match lock {
            Some(lock) => resume(&account, lock, names).await?,
            None => None,
        };
        let (mut order, key) = match resumed {
            Some(resumed) => resumed,
            None => {
                let order = self.place(&account, names, replaces).await?;
                let key = rcgen::KeyPair::generate()?;
                if let Some(lock) = lock {
                    let journal = Journal {
                        url: order.url().to_string(),
                        key_pem: key.serialize_pem(),
                        names: names.to_vec(),
                        token: lock.token(),
                        instance: lock.shared().instance().to_string(),
                    };
                    lock.write_journal(&journal).await.map_err(shared_error)?;
                    tracing::info!(names = %names.join(","), order = %order.url(), token = lock.token(), "order journaled in the cluster store");
                }
                (order, key)
            }
        };
        // held until the order is done: the CA validates from several places, more than once
        let mut answers = Vec::new();
        let status = order.state().status;
        if status == OrderStatus::Pending {
            self.authorize(&mut order, published, &mut answers).await?;
            settle(&mut order).await?;
        }
        match order.state().status {
            OrderStatus::Ready => {
                let mut params = rcgen::CertificateParams::new(names.to_vec())?;
                params.distinguished_name = rcgen::DistinguishedName::new();
                let csr = params.serialize_request(&key)?;
                order.finalize_csr(csr.der()).await?;
            }
            OrderStatus::Invalid => return Err(AcmeError::Rejected(rejection(&mut order).await)),
            // a resumed order the dead holder had finalized already
            _ => {}
        }
        let chain_pem = order.poll_certificate(&POLL).await?;
        drop(answers);
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// A new order for `names` (`replaces` the certificate ARI covered, where it did).
    async fn place(
        &self,
        account: &Account,
        names: &[String],
        replaces: Option<&CertificateIdentifier<'_>>,
    ) -> Result<instant_acme::Order, AcmeError> {
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let new_order = |replaces: Option<&CertificateIdentifier<'_>>| {
            let mut new_order = NewOrder::new(&ids);
            if let Some(profile) = &self.settings.profile {
                new_order = new_order.profile(profile);
            }
            if let Some(id) = replaces {
                new_order = new_order.replaces(id.clone().into_owned());
            }
            new_order
        };
        let order = match account.new_order(&new_order(replaces)).await {
            // RFC 9773 §5: another order replaced it already (a second instance, a retry
            // whose first answer was lost); this one is simply a new certificate
            Err(instant_acme::Error::Api(p))
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":alreadyReplaced")) =>
            {
                tracing::info!(names = %names.join(","), "the CA says the certificate was replaced already; ordering without `replaces`");
                account.new_order(&new_order(None)).await?
            }
            other => other?,
        };
        Ok(order)
    }

    /// Answers every pending authorization of `order` (the answers stay up while `answers`
    /// is held). A challenge a resumed order's first holder already readied is answered again
    /// (its DNS record published anew) but not readied twice.
    async fn authorize(
        &self,
        order: &mut instant_acme::Order,
        mut published: Option<&mut Published>,
        answers: &mut Vec<super::Answer>,
    ) -> Result<(), AcmeError> {
        let kind = match self.settings.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Dns01 => ChallengeType::Dns01,
        };
        let mut refused = None;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(AcmeError::Authorization(format!("{other:?}"))),
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::NoChallenge(name.clone()))?;
            let key_auth = challenge.key_authorization();
            match (&kind, published.as_deref_mut()) {
                (ChallengeType::Dns01, Some(published)) => {
                    // a wildcard's authorization names its base domain
                    let domain = match &challenge.identifier().identifier {
                        Identifier::Dns(domain) => domain.clone(),
                        _ => name.clone(),
                    };
                    let record = Record::new(&domain, key_auth.dns_value());
                    published.add(record).await?;
                }
                (ChallengeType::TlsAlpn01, _) => {
                    let digest = key_auth.digest();
                    let cert = alpn_certificate(&name, digest.as_ref())?;
                    let shared = tls_alpn_value(&name.to_ascii_lowercase(), digest.as_ref());
                    let mut answer = self.challenges.answer_tls_alpn(name, cert);
                    answer.share(shared).await;
                    answers.push(answer);
                }
                _ => {
                    let key_auth = key_auth.as_str().to_string();
                    let token = challenge.token.clone();
                    let mut answer = self.challenges.answer_http01(token, key_auth.clone());
                    answer.share(key_auth).await;
                    answers.push(answer);
                }
            }
            if challenge.status == ChallengeStatus::Pending {
                if let Err(e) = challenge.set_ready().await {
                    refused.get_or_insert(e);
                }
            }
        }
        // a resumed order: the other holder may have had it validated meanwhile, and the CA
        // then refuses to ready the challenge again; the order says whether it matters
        match refused {
            Some(e) if order.refresh().await?.status == OrderStatus::Pending => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The stored account, or a new one registered and stored (0600).
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let s = &self.settings;
        let path = self.store.account_path(&s.directory);
        let (at, settings) = (path.clone(), s.clone());
        // the stored account and the HTTP client (which reads the system root store)
        let (stored, http) =
            off_runtime(move || Ok((std::fs::read(&at), http_client(&settings)?))).await?;
        if let Some(shared) = &self.shared {
            let account = self.cluster_account(shared, stored.ok(), http).await?;
            *cached = Some(account.clone());
            return Ok(account);
        }
        let account = match stored {
            Ok(json) => {
                let creds: AccountCredentials = serde_json::from_slice(&json)
                    .map_err(|e| AcmeError::Stored(format!("{}: {e}", path.display())))?;
                let builder = Account::builder_with_http(http);
                builder.from_credentials(creds).await?
            }
            Err(_) => {
                let (account, json) = self.register(http).await?;
                off_runtime(move || Ok(store::write_atomic(&path, &json, 0o600)?)).await?;
                tracing::info!(directory = %s.directory, account = %account.id(), "ACME account registered");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }
}

impl Issuer {
    /// The cluster's account (`[cluster] acme = "shared"`): the one in the store; else, under
    /// the account's lock, the local copy (`local`, re-seeding an emptied store) or a new one,
    /// stored for every instance. While the store does not answer, the local copy serves the
    /// CA's read-only requests (ARI); nothing is registered alone.
    async fn cluster_account(
        &self,
        shared: &Arc<SharedAcme>,
        local: Option<Vec<u8>>,
        http: Box<dyn HttpClient>,
    ) -> Result<Account, AcmeError> {
        let directory = self.settings.directory.clone();
        let waited = std::time::Instant::now();
        let json = loop {
            let stored = match shared.load_account(&directory).await {
                Ok(stored) => stored,
                Err(e) => match &local {
                    Some(json) => break json.clone(),
                    None => return Err(shared_error(e)),
                },
            };
            if let Some(json) = stored {
                if local.as_ref() != Some(&json) {
                    self.keep_account_copy(json.clone()).await;
                }
                break json;
            }
            let lock_id = format!("account:{}", crate::cluster::acme::directory_id(&directory));
            match shared.try_lock(&lock_id).await.map_err(shared_error)? {
                Some(lock) => break self.seed_account(&lock, local.clone()).await?,
                None if waited.elapsed() < ACCOUNT_WAIT => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => {
                    return Err(AcmeError::Stored(
                        "another instance holds the account lock and stored no account".into(),
                    ))
                }
            }
        };
        let creds: AccountCredentials = serde_json::from_slice(&json)
            .map_err(|e| AcmeError::Stored(format!("the cluster's account: {e}")))?;
        Ok(Account::builder_with_http(http)
            .from_credentials(creds)
            .await?)
    }

    /// Under the account's lock: the stored account if another instance stored it meanwhile,
    /// else the local copy (re-seeding), else a new registration; stored for the cluster.
    async fn seed_account(
        &self,
        lock: &Lock,
        local: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, AcmeError> {
        let s = &self.settings;
        let shared = lock.shared();
        if let Some(json) = shared
            .load_account(&s.directory)
            .await
            .map_err(shared_error)?
        {
            self.keep_account_copy(json.clone()).await;
            return Ok(json);
        }
        let json = match local {
            Some(json) => {
                tracing::info!(directory = %s.directory, "the cluster store has no account; storing this instance's copy");
                json
            }
            None => {
                let settings = s.clone();
                let http = off_runtime(move || http_client(&settings)).await?;
                let (account, json) = self.register(http).await?;
                tracing::info!(directory = %s.directory, account = %account.id(), "ACME account registered for the cluster");
                self.keep_account_copy(json.clone()).await;
                json
            }
        };
        lock.write_account(&s.directory, &json)
            .await
            .map_err(shared_error)?;
        Ok(json)
    }

    /// A new account with the CA; its credentials' JSON.
    async fn register(&self, http: Box<dyn HttpClient>) -> Result<(Account, Vec<u8>), AcmeError> {
        let s = &self.settings;
        let contact: Vec<String> = s.email.iter().map(|e| format!("mailto:{e}")).collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let eab = s
            .eab
            .as_ref()
            .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
        let (account, creds) = Account::builder_with_http(http)
            .create(&new, s.directory.clone(), eab.as_ref())
            .await?;
        let json = serde_json::to_vec(&creds).map_err(|e| AcmeError::Stored(e.to_string()))?;
        Ok((account, json))
    }

    /// Writes the account's local copy (0600), which re-seeds an emptied store.
    async fn keep_account_copy(&self, json: Vec<u8>) {
        let path = self.store.account_path(&self.settings.directory);
        let written = off_runtime(move || Ok(store::write_atomic(&path, &json, 0o600)?)).await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot keep a local copy of the cluster's account");
        }
    }
}

/// Polls `order` until it is no longer pending: `ready` (the usual), or `valid`/`processing`
/// (another holder of a resumed order finalized it meanwhile); an invalid one is the CA's
/// refusal.
async fn settle(order: &mut instant_acme::Order) -> Result<(), AcmeError> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        tokio::time::sleep(delay).await;
        let state = order.refresh().await?;
        match state.status {
            OrderStatus::Pending if started.elapsed() < SETTLE_LIMIT => {}
            OrderStatus::Pending => {
                return Err(AcmeError::Acme(instant_acme::Error::Timeout(None)));
            }
            OrderStatus::Invalid => return Err(AcmeError::Rejected(rejection(order).await)),
            _ => return Ok(()),
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// As long as `POLL` lets a pending order take.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);

/// How long an instance waits for another to register the cluster's account.
const ACCOUNT_WAIT: Duration = Duration::from_secs(60);

/// A store failure in an order: the order stops (it is retried like any failure).
pub(super) fn shared_error(e: crate::cluster::acme::SharedError) -> AcmeError {
    AcmeError::Stored(e.to_string())
}

/// The order journaled for `names` under `lock`'s name set, fetched from the CA, with the key
/// its CSR must use; `None` when there is none, or when it is invalid or gone (the journal is
/// then dropped and a new order placed).
async fn resume(
    account: &Account,
    lock: &Lock,
    names: &[String],
) -> Result<Option<(instant_acme::Order, rcgen::KeyPair)>, AcmeError> {
    let shared = lock.shared();
    let Some(journal) = shared.load_journal(lock.id()).await.map_err(shared_error)? else {
        return Ok(None);
    };
    let list = names.join(",");
    let usable = if journal.names == names {
        match account.order(journal.url.clone()).await {
            Ok(mut order) => match order.state().status {
                OrderStatus::Invalid => Err("the CA says it is invalid".to_string()),
                _ => match rcgen::KeyPair::from_pem(&journal.key_pem) {
                    Ok(key) => Ok((order, key)),
                    Err(e) => Err(format!("its key: {e}")),
                },
            },
            Err(e) => Err(format!("the CA: {e}")),
        }
    } else {
        Err("it was for other names".to_string())
    };
    match usable {
        Ok((mut order, key)) => {
            let status = order.state().status;
            tracing::info!(names = %list, order = %journal.url, by = %journal.instance, journal_token = journal.token, token = lock.token(), ?status, "resuming the order journaled by a former lock holder");
            Ok(Some((order, key)))
        }
        Err(why) => {
            tracing::info!(names = %list, order = %journal.url, why, "the journaled order cannot be resumed; placing a new one");
            lock.drop_journal().await.map_err(shared_error)?;
            Ok(None)
        }
    }
}

/// Why the CA turned the order down, in its own words where it gave them.
async fn rejection(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    if let Some(problem) = &order.state().error {
        reasons.push(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(format!("{name}: {problem}"));
            }
        }
    }
    if reasons.is_empty() {
        "order invalid, no reason given".to_string()
    } else {
        reasons.join("; ")
    }
}

/// RFC 8737: self-signed, the name as its only SAN, the digest in the critical acmeIdentifier.
pub(super) fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError::Stored(e.to_string()))?;
    // no `keys_match()`: webpki refuses to parse a certificate with the critical acmeIdentifier
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// The CA's API over HTTPS, trusting the system roots plus `ca_root`.
pub(super) fn http_client(settings: &config::Acme) -> Result<Box<dyn HttpClient>, AcmeError> {
    let extra = match &settings.ca_root {
        Some(path) => super::read_roots(path)?,
        None => Vec::new(),
    };
    let tls = client_tls(extra)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client: Client<_, BodyWrapper<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

/// What Gatehouse's own HTTPS clients (the CA's API, lego's httpreq) verify servers against:
/// the system's roots and `extra` (a private CA's root, `ca_root`). Blocking: it reads the
/// system store.
pub(super) fn client_tls(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots.add_parsable_certificates(extra);
    if roots.is_empty() {
        return Err(AcmeError::NoRoots);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Stored(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// `profile` is one the CA's directory lists; otherwise the order fails before it is placed,
/// naming what the CA offers (a CA that lists none does not do profiles at all).
fn offered(account: &Account, profile: &str) -> Result<(), AcmeError> {
    let names: Vec<&str> = account.profiles().map(|p| p.name).collect();
    if names.contains(&profile) {
        return Ok(());
    }
    Err(AcmeError::Profile {
        asked: profile.to_string(),
        offered: if names.is_empty() {
            "none (this CA does not offer profiles; remove `acme.profile`)".to_string()
        } else {
            names.join(", ")
        },
    })
}
