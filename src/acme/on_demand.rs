//! On-demand certificates (`tls = "on_demand"`): a handshake whose name has no certificate yet
//! waits here, at most `handshake_wait`, while one task per name
//!
//! 1. reads the name's stored certificate (a restart serves it without asking again), else
//! 2. takes a place under `max_per_minute` (none left: refused at once, not remembered),
//! 3. asks `GET <ask>?domain=<name>` (200 allows it; anything else, or no answer, refuses),
//! 4. orders the certificate through the shared `Issuer` (HTTP-01 or TLS-ALPN-01),
//!
//! then publishes it in `OnDemandCerts` (which every snapshot's resolver reads) and keeps it
//! renewed by the same `maintain` loop as any ACME certificate. Handshakes for one name share
//! that task; a refused or failed name is remembered for `remember_refusals` (at most
//! `REMEMBERED_MAX` names), so a scanner cannot make Gatehouse ask or order over and over.
//! A name is checked to be a plain DNS host name before anything is asked.

use super::order::Issuer;
use super::store::{CertInfo, Store};
use super::ORDER_DEADLINE;
use super::{load_stored, maintain, off_runtime, publish, AcmeError, Causes, Challenges};
use crate::config::{self, Acme, Config, SiteTls};
use crate::metrics::Metrics;
use crate::tls::{CertSlot, OnDemandCerts};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Refused names remembered at most; beyond it the oldest are forgotten first.
pub const REMEMBERED_MAX: usize = 10_000;
/// An `ask` endpoint answers from a lookup in the application; one that takes longer is down.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
const MINUTE: Duration = Duration::from_secs(60);

/// Why a handshake got no certificate (the `reason` label of
/// `gatehouse_acme_on_demand_refusals_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a DNS host name (or no SNI): nothing is asked.
    InvalidName,
    /// Refused or failed within `remember_refusals`: not asked again.
    Remembered,
    /// `max_per_minute` asks were started in the last minute.
    RateCapped,
    /// The `ask` endpoint answered something else than 200.
    AskRefused,
    /// The `ask` endpoint did not answer (in time).
    AskFailed,
    /// The CA did not issue.
    OrderFailed,
    /// Still being ordered after `handshake_wait` (the order goes on for the next handshake).
    WaitTimeout,
    /// No on-demand site is configured (a reload removed it meanwhile).
    NotConfigured,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::InvalidName,
        Refusal::Remembered,
        Refusal::RateCapped,
        Refusal::AskRefused,
        Refusal::AskFailed,
        Refusal::OrderFailed,
        Refusal::WaitTimeout,
        Refusal::NotConfigured,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::InvalidName => "invalid_name",
            Refusal::Remembered => "remembered",
            Refusal::RateCapped => "rate_capped",
            Refusal::AskRefused => "ask_refused",
            Refusal::AskFailed => "ask_failed",
            Refusal::OrderFailed => "order_failed",
            Refusal::WaitTimeout => "wait_timeout",
            Refusal::NotConfigured => "not_configured",
        }
    }

    /// Whether the name is refused without asking for `remember_refusals` after this.
    fn remembered(self) -> bool {
        matches!(
            self,
            Refusal::AskRefused | Refusal::AskFailed | Refusal::OrderFailed
        )
    }
}

type Outcome = Option<Result<(), Refusal>>;

/// What the current config says, with the issuer it orders through.
struct Setup {
    settings: config::OnDemand,
    issuer: Arc<Issuer>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// The on-demand work of the process; outlives snapshots (`Manager` holds it).
#[derive(Default)]
pub struct OnDemand {
    certs: Arc<OnDemandCerts>,
    setup: ArcSwapOption<Setup>,
    /// Names being fetched now, with where their outcome will be told.
    inflight: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    refused: Mutex<Remembered>,
    asks: Mutex<Window>,
    /// The renewal task of each name in `certs`.
    tasks: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    metrics: OnceLock<Arc<Metrics>>,
}

impl OnDemand {
    pub fn certs(&self) -> &Arc<OnDemandCerts> {
        &self.certs
    }

    pub fn set_metrics(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Takes a new config: its `[acme] on_demand` when a site uses it. Changed CA settings or
    /// `state_dir` forget the names served so far (their certificates are read from the new
    /// store on their next handshake); no on-demand site stops everything.
    pub fn configure(&self, config: &Config, challenges: &Arc<Challenges>) {
        let used = config
            .sites
            .iter()
            .any(|s| s.tls == Some(SiteTls::OnDemand));
        let Some(settings) = config.acme.on_demand.clone().filter(|_| used) else {
            self.setup.store(None);
            self.forget_all();
            return;
        };
        let acme = config.acme.for_orders();
        let store = Store::new(&config.server.state_dir);
        let current = self.setup.load_full();
        let issuer = match current.as_ref().map(|s| &s.issuer) {
            Some(kept) if kept.serves(&acme, &store) => kept.clone(),
            _ => {
                self.forget_all();
                Arc::new(Issuer::new(acme, store, challenges.clone()))
            }
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(ASK_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(http);
        self.setup.store(Some(Arc::new(Setup {
            settings,
            issuer,
            client,
        })));
    }

    fn forget_all(&self) {
        self.certs.clear();
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, task) in tasks.drain() {
            task.abort();
        }
    }

    /// Waits (at most `handshake_wait`) until `sni` has a certificate in `certs`; `false` when
    /// it gets none, and the handshake goes on without one.
    pub async fn obtain(self: &Arc<Self>, sni: Option<&str>) -> bool {
        let outcome = self.try_obtain(sni).await;
        if let (Err(refusal), Some(m)) = (outcome, self.metrics.get()) {
            m.on_demand_refusals
                .with_label_values(&[refusal.label()])
                .inc();
        }
        outcome.is_ok()
    }

    async fn try_obtain(self: &Arc<Self>, sni: Option<&str>) -> Result<(), Refusal> {
        let setup = self.setup.load_full().ok_or(Refusal::NotConfigured)?;
        let name = sni.and_then(host_name).ok_or(Refusal::InvalidName)?;
        if self.certs.contains(&name) {
            return Ok(());
        }
        if self.lock_refused().contains(&name, Instant::now()) {
            return Err(Refusal::Remembered);
        }
        let mut outcome = self.join(name, setup.clone());
        let wait = setup.settings.handshake_wait;
        let told = async { outcome.wait_for(Option::is_some).await.map(|told| *told) };
        match tokio::time::timeout(wait, told).await {
            Ok(Ok(told)) => told.unwrap_or(Err(Refusal::OrderFailed)),
            Ok(Err(_)) => Err(Refusal::OrderFailed), // the task ended without a word: aborted
            Err(_) => Err(Refusal::WaitTimeout),
        }
    }

    /// Where `name`'s outcome will be told: the task already fetching it, else a new one.
    fn join(self: &Arc<Self>, name: String, setup: Arc<Setup>) -> watch::Receiver<Outcome> {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = inflight.get(&name) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(name.clone(), rx.clone());
        // a task of its own: the order goes on when the handshake that started it gives up,
        // and its certificate serves the next one
        tokio::spawn(self.clone().fetch(name, setup, tx));
        rx
    }

    async fn fetch(self: Arc<Self>, name: String, setup: Arc<Setup>, tx: watch::Sender<Outcome>) {
        let outcome = self.fetch_once(&name, &setup).await;
        if let Err(refusal) = outcome {
            if refusal.remembered() {
                let until = Instant::now() + setup.settings.remember_refusals;
                self.lock_refused().insert(name.clone(), until);
            }
        }
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        inflight.remove(&name);
        drop(inflight);
        let _ = tx.send(Some(outcome));
    }

    /// Stored certificate, else rate, ask and order.
    async fn fetch_once(&self, name: &str, setup: &Setup) -> Result<(), Refusal> {
        let names = vec![name.to_string()];
        let issuer = &setup.issuer;
        let dir = issuer.store.cert_dir(&issuer.settings.directory, &names);
        let slot: CertSlot = Arc::new(ArcSwapOption::empty());
        if let Some(info) = load_stored(&dir, &names, &slot, name).await {
            self.keep(setup, names, slot, info);
            return Ok(());
        }
        let max = setup.settings.max_per_minute as usize;
        if !self.lock_asks().try_take(Instant::now(), max) {
            tracing::debug!(
                name,
                "on-demand certificate refused: max_per_minute reached"
            );
            return Err(Refusal::RateCapped);
        }
        self.ask(name, setup).await?;
        tracing::info!(name, "ordering an on-demand certificate");
        let info = self.order(&names, dir, &slot, issuer).await?;
        self.keep(setup, names, slot, info);
        Ok(())
    }

    async fn ask(&self, name: &str, setup: &Setup) -> Result<(), Refusal> {
        let count = |result: &str| {
            if let Some(m) = self.metrics.get() {
                m.on_demand_asks.with_label_values(&[result]).inc();
            }
        };
        let Some(uri) = ask_uri(&setup.settings.ask, name) else {
            count("error");
            return Err(Refusal::AskFailed);
        };
        let asked = tokio::time::timeout(ASK_TIMEOUT, setup.client.get(uri)).await;
        match asked {
            Ok(Ok(response)) if response.status() == http::StatusCode::OK => {
                count("allowed");
                Ok(())
            }
            Ok(Ok(response)) => {
                count("refused");
                tracing::info!(name, status = %response.status(), "on-demand certificate refused by the ask endpoint");
                Err(Refusal::AskRefused)
            }
            Ok(Err(e)) => {
                count("error");
                tracing::warn!(name, error = %Causes(&e), "on-demand ask endpoint unreachable; the name is refused");
                Err(Refusal::AskFailed)
            }
            Err(_) => {
                count("error");
                tracing::warn!(name, timeout = ?ASK_TIMEOUT, "on-demand ask endpoint did not answer; the name is refused");
                Err(Refusal::AskFailed)
            }
        }
    }

    async fn order(
        &self,
        names: &[String],
        dir: PathBuf,
        slot: &CertSlot,
        issuer: &Issuer,
    ) -> Result<CertInfo, Refusal> {
        let issued =
            tokio::time::timeout(ORDER_DEADLINE, issuer.issue(names, &dir, None, None)).await;
        let result = match issued.unwrap_or(Err(AcmeError::Deadline(ORDER_DEADLINE))) {
            Ok(cert) => {
                let slot = slot.clone();
                off_runtime(move || publish(&dir, cert, &slot)).await
            }
            Err(e) => Err(e),
        };
        let label = if result.is_ok() { "success" } else { "failure" };
        if let Some(m) = self.metrics.get() {
            m.on_demand_orders.with_label_values(&[label]).inc();
        }
        result.map_err(|e| {
            tracing::warn!(names = %names.join(","), error = %Causes(&e), "on-demand certificate order failed; the name is refused for a while");
            Refusal::OrderFailed
        })
    }

    /// Serves `slot` for the name from now on, and renews it like any ACME certificate.
    fn keep(&self, setup: &Setup, names: Vec<String>, slot: CertSlot, info: CertInfo) {
        let name = names.first().cloned().unwrap_or_default();
        let metrics = self.metrics.get().cloned();
        let issuer = setup.issuer.clone();
        let task = tokio::spawn(maintain(issuer, names, slot.clone(), Some(info), metrics));
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = tasks.insert(name.clone(), task.abort_handle()) {
            old.abort();
        }
        self.certs.insert(name, slot);
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_asks(&self) -> std::sync::MutexGuard<'_, Window> {
        self.asks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Acme {
    /// These settings as an order uses them (without `on_demand`, which only says when to
    /// order): a changed `on_demand` keeps the issuers and their accounts.
    pub fn for_orders(&self) -> Acme {
        Acme {
            on_demand: None,
            ..self.clone()
        }
    }
}

/// `ask` with `domain=<name>` added to its query (`name` is a checked host name: nothing in it
/// needs escaping).
fn ask_uri(ask: &http::Uri, name: &str) -> Option<http::Uri> {
    let text = ask.to_string();
    let sep = if ask.query().is_some() { '&' } else { '?' };
    format!("{text}{sep}domain={name}").parse().ok()
}

/// The SNI name as a certificate name: lower case, at most one trailing dot dropped; `None`
/// unless it is a DNS host name of two labels or more (letters, digits, inner hyphens; the last
/// label not all digits, so no IPv4 literal), at most 253 bytes.
pub fn host_name(sni: &str) -> Option<String> {
    let name = sni.strip_suffix('.').unwrap_or(sni);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let labels: Vec<&str> = name.split('.').collect();
    let last = labels.last()?;
    let ok = labels.len() >= 2
        && labels.iter().all(|l| label_ok(l))
        && !last.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| name.to_ascii_lowercase())
}

/// Names refused until some instant, at most `cap` of them (the oldest go first). Insertion
/// order is expiry order while `remember_refusals` stays the same, so the queue's front is
/// what expires first.
pub struct Remembered {
    until: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
    cap: usize,
}

impl Default for Remembered {
    fn default() -> Self {
        Remembered::new(REMEMBERED_MAX)
    }
}

impl Remembered {
    pub fn new(cap: usize) -> Remembered {
        Remembered {
            until: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    pub fn contains(&mut self, name: &str, now: Instant) -> bool {
        match self.until.get(name) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.until.remove(name);
                false
            }
            None => false,
        }
    }

    pub fn insert(&mut self, name: String, until: Instant) {
        let now = Instant::now();
        while self
            .order
            .front()
            .is_some_and(|(_, t)| *t <= now || self.order.len() >= self.cap)
        {
            if let Some((old, t)) = self.order.pop_front() {
                // a later insert of the same name has its own entry further back
                if self.until.get(&old) == Some(&t) {
                    self.until.remove(&old);
                }
            }
        }
        self.until.insert(name.clone(), until);
        self.order.push_back((name, until));
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

/// Asks started in the last minute, to hold them (and so orders) to `max_per_minute`.
#[derive(Default)]
pub struct Window {
    started: VecDeque<Instant>,
}

impl Window {
    /// Takes a place if fewer than `max` were taken in the minute before `now`.
    pub fn try_take(&mut self, now: Instant, max: usize) -> bool {
        while self
            .started
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.started.pop_front();
        }
        if self.started.len() >= max {
            return false;
        }
        self.started.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_before_anything_is_asked() {
        assert_eq!(
            host_name("Shop.Example.COM").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(host_name("a.example.").as_deref(), Some("a.example"));
        assert_eq!(
            host_name("xn--bcher-kva.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        for bad in [
            "",
            ".",
            "a.example..",
            "localhost",
            "192.168.1.1",
            "10.0.0.1.",
            "[::1]",
            "::1",
            "*.example.com",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            "a.example/x",
            "a.example?domain=b",
            "bücher.example",
            &format!("{}.example", "a".repeat(64)),
            &format!("{}a.example", "a.".repeat(124)),
        ] {
            assert_eq!(host_name(bad), None, "{bad:?} should be refused");
        }
    }

    #[test]
    fn ask_gets_the_domain_in_its_query() {
        let ask: http::Uri = "http://app:8000/allowed".parse().unwrap();
        let uri = ask_uri(&ask, "a.example").unwrap();
        assert_eq!(uri.to_string(), "http://app:8000/allowed?domain=a.example");
        let ask: http::Uri = "http://app/allowed?key=1".parse().unwrap();
        let uri = ask_uri(&ask, "a.example").unwrap();
        assert_eq!(uri.to_string(), "http://app/allowed?key=1&domain=a.example");
    }

    #[test]
    fn refusals_expire_and_stay_under_the_cap() {
        let now = Instant::now();
        let mut r = Remembered::new(3);
        r.insert("a.example".into(), now + MINUTE);
        assert!(r.contains("a.example", now));
        assert!(!r.contains("a.example", now + MINUTE));
        for name in ["b", "c", "d", "e"] {
            r.insert(format!("{name}.example"), now + MINUTE);
        }
        assert!(r.len() <= 3, "{} remembered", r.len());
        assert!(!r.contains("b.example", now), "the oldest goes first");
        assert!(r.contains("e.example", now));
    }

    #[test]
    fn the_window_holds_starts_to_max_per_minute() {
        let now = Instant::now();
        let mut w = Window::default();
        assert!((0..3).all(|_| w.try_take(now, 3)));
        assert!(!w.try_take(now + Duration::from_secs(59), 3));
        assert!(w.try_take(now + MINUTE, 3));
    }
}
