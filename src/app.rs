//! Composition root: load the config, build the runtime and the state, bind listeners, run until a
//! signal, then drain.

use crate::acme::{
    self, renewal,
    store::{self, CertInfo, Store},
};
use crate::admin::client::{self, ClientError};
use crate::config::{Config, ConfigError, SiteTls};
use crate::http::ConnContext;
use crate::listener::{BindError, Listeners};
use crate::load::{self, Loaded};
use crate::middleware::encode::budget::EncoderBudget;
use crate::reload;
use crate::state::{BuildError, Keep, RuntimeState, Shared};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU16;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Validates a config file, and reads the files it names, without starting anything.
pub fn check(path: &Path) -> Result<Config, ConfigError> {
    load::load(path).map(|loaded| loaded.config)
}

/// Runs the proxy on `path`'s config until SIGTERM or SIGINT.
pub fn run(path: &Path) -> Result<(), AppError> {
    // before the runtime exists: reading the files blocks no thread that serves anything yet
    let loaded = load::load(path)?;
    let config = &loaded.config;
    crate::fds::raise();
    crate::fds::check(config);
    // one worker: a current-thread runtime skips the cross-thread scheduler entirely
    let mut runtime = match config.server.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(n);
            rt
        }
    };
    let runtime = runtime.enable_all().build().map_err(AppError::Runtime)?;
    runtime.block_on(serve(path, loaded))
}

pub async fn serve(path: &Path, loaded: Loaded) -> Result<(), AppError> {
    let signals = Signals::install();
    let listen = loaded.config.listen.clone();
    if loaded.config.server.http1_engine == crate::config::Http1Engine::Native {
        tracing::info!("HTTP/1.1 connections are served by the native engine (http1_engine)");
    }
    let keep = Arc::new(Keep::new()?);
    keep.limiters.spawn_sweeper();
    let shared = Shared::new(RuntimeState::build(loaded, &keep).await?);
    let tracker = TaskTracker::new();
    let cx = Arc::new(ConnContext {
        shared: shared.clone(),
        tracker: tracker.clone(),
        https_port: AtomicU16::new(0),
        challenges: keep.acme.challenges(),
        on_demand: keep.acme.on_demand().clone(),
        conns: Arc::default(),
        rejections: Arc::default(),
        listeners: [
            keep.metrics.listener("http"),
            keep.metrics.listener("https"),
        ],
        metrics: keep.metrics.clone(),
        encoders: EncoderBudget::new(&keep.metrics),
    });
    // watching starts before the listeners are up: a change made once they answer is seen
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(16);
    let _watcher = match reload::watch(path, reload_tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
            None
        }
    };
    let mut listeners = Listeners::new(cx, reload_tx.clone());
    let bound = listeners.bind_new(&listen).await?;
    listeners.apply(bound, &listen);
    let listeners = Arc::new(tokio::sync::Mutex::new(listeners));
    tokio::spawn(reload::run(
        path.to_path_buf(),
        shared.clone(),
        keep.clone(),
        listeners.clone(),
        reload_rx,
    ));
    if let Some(hup) = signals.hup {
        tokio::spawn(sighup(hup, reload_tx));
    }
    if let Some(usr1) = signals.usr1 {
        tokio::spawn(sigusr1(usr1, shared.clone()));
    }
    wait_for_stop(signals.term, signals.int).await;
    let grace = shared.load().config.server.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
    listeners.lock().await.stop_all().await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            remaining = tracker.len(),
            "grace period over; closing remaining connections"
        );
    }
    // the connections are gone, and with them every older snapshot's log: their writers ended
    shared.load().access_log.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// One line of `gatehouse certs`.
pub struct CertRow {
    pub names: String,
    /// `acme` or `file`.
    pub source: &'static str,
    /// The stored or configured certificate, or why there is none.
    pub status: Result<CertInfo, String>,
    /// When an ACME certificate is renewed, and who said so (`renewal.json` beside it).
    pub renewal: Option<renewal::Plan>,
}

/// The certificate of every TLS site, read from `state_dir` (ACME) or the configured files.
pub fn certificates(path: &Path) -> Result<Vec<CertRow>, ConfigError> {
    let config = load::load(path)?.config;
    let store = Store::new(&config.server.state_dir);
    let mut rows: Vec<CertRow> = config
        .sites
        .iter()
        .filter_map(|site| {
            let names = site
                .hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            let (source, status, renewal) = match site.tls.as_ref()? {
                SiteTls::Acme => {
                    let dir = store.cert_dir(&config.acme.directory, &site.names());
                    let (status, renewal) = stored_acme(&dir);
                    ("acme", status, renewal)
                }
                SiteTls::Files(files) => ("file", file_info(files), None),
                // one certificate per name asked for, each in its own folder of the store
                SiteTls::OnDemand => (
                    "demand",
                    Err("ordered per name in handshakes (stored ones listed below)".into()),
                    None,
                ),
            };
            Some(CertRow {
                names: names.join(","),
                source,
                status,
                renewal,
            })
        })
        .collect();
    if config
        .sites
        .iter()
        .any(|s| s.tls == Some(SiteTls::OnDemand))
    {
        rows.extend(on_demand_rows(&config, &store));
    }
    Ok(rows)
}

/// The certificates on-demand sites got, one per name: every folder of this CA's store that is
/// no `tls = "acme"` site's.
fn on_demand_rows(config: &crate::config::Config, store: &Store) -> Vec<CertRow> {
    let directory = &config.acme.directory;
    let sites: Vec<_> = config
        .sites
        .iter()
        .filter(|s| s.tls == Some(SiteTls::Acme))
        .map(|s| store.cert_dir(directory, &s.names()))
        .collect();
    let Some(ca) = store
        .cert_dir(directory, &[])
        .parent()
        .map(Path::to_path_buf)
    else {
        return Vec::new();
    };
    store
        .cert_dirs()
        .into_iter()
        .filter(|dir| dir.parent() == Some(ca.as_path()) && !sites.contains(dir))
        .filter_map(|dir| {
            let (status, renewal) = stored_acme(&dir);
            let names = match &status {
                Ok(info) => info.names.join(","),
                // a folder with no certificate (yet, or any more) is no name served
                Err(_) => return None,
            };
            Some(CertRow {
                names,
                source: "demand",
                status,
                renewal,
            })
        })
        .collect()
}

/// An ACME site's stored certificate and its renewal schedule.
fn stored_acme(dir: &Path) -> (Result<CertInfo, String>, Option<renewal::Plan>) {
    match store::load_cert(dir) {
        Ok(Some(stored)) => {
            let plan = stored
                .key
                .cert
                .first()
                .map(|leaf| renewal::stored_plan(dir, leaf, &stored.info));
            (Ok(stored.info), plan)
        }
        Ok(None) => (Err(format!("not issued yet ({})", dir.display())), None),
        Err(e) => (Err(e.to_string()), None),
    }
}

fn file_info(files: &crate::config::TlsFiles) -> Result<CertInfo, String> {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::from_pem_file(&files.cert)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    CertInfo::parse(&leaf)
}

/// `gatehouse certs` output: one aligned row per site; under an ACME certificate's row, an
/// indented `renewal:` line says who chose its renewal time (the CA's ARI window, or a third
/// of the lifetime) and why.
pub fn certificate_table(rows: &[CertRow]) -> String {
    let mut out = String::new();
    let width = rows.iter().map(|r| r.names.len()).max().unwrap_or(0).max(5);
    out.push_str(&format!(
        "{:width$}  {:6}  {:21}  {:>6}  {:21}  ISSUER\n",
        "NAMES", "SOURCE", "EXPIRES", "DAYS", "RENEWS"
    ));
    let now = std::time::SystemTime::now();
    for row in rows {
        let line = match &row.status {
            Ok(info) => {
                let left = info
                    .not_after
                    .duration_since(now)
                    .map_or(0, |d| d.as_secs() / 86400);
                let renews = row
                    .renewal
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |p| acme::rfc3339(p.renew_time()));
                format!(
                    "{:width$}  {:6}  {:21}  {:>6}  {:21}  {}",
                    row.names,
                    row.source,
                    acme::rfc3339(info.not_after),
                    left,
                    renews,
                    info.issuer
                )
            }
            Err(why) => format!("{:width$}  {:6}  {why}", row.names, row.source),
        };
        out.push_str(&line);
        out.push('\n');
        if let (Ok(_), Some(plan)) = (&row.status, &row.renewal) {
            out.push_str(&format!("  renewal: {}\n", plan.describe()));
        }
    }
    out
}

/// The signals Gatehouse answers, installed before any listener is bound: a signal sent as
/// soon as the "listening" line shows must find its handler (the default action of each of
/// these ends the process).
struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    hup: Option<Signal>,
    usr1: Option<Signal>,
}

impl Signals {
    fn install() -> Signals {
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the {name} handler");
                None
            }
        };
        Signals {
            term: install(SignalKind::terminate(), "SIGTERM"),
            int: install(SignalKind::interrupt(), "SIGINT"),
            hup: install(SignalKind::hangup(), "SIGHUP"),
            usr1: install(SignalKind::user_defined1(), "SIGUSR1"),
        }
    }
}

/// SIGHUP asks for a reload, as for nginx (`systemctl reload` sends it).
async fn sighup(mut hup: Signal, tx: tokio::sync::mpsc::Sender<reload::Trigger>) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the config");
        if tx.send(reload::Trigger::Signal).await.is_err() {
            break;
        }
    }
}

/// SIGUSR1 reopens the access-log file (logrotate's `postrotate`). The handler is installed
/// for every target, so a signal meant for another setup never kills the process.
async fn sigusr1(mut usr1: Signal, shared: Arc<Shared>) {
    while usr1.recv().await.is_some() {
        let log = shared.load().access_log.clone();
        log.reopen().await;
    }
}

/// SIGTERM or SIGINT; without either handler, only SIGKILL stops the process.
async fn wait_for_stop(term: Option<Signal>, int: Option<Signal>) {
    async fn next(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = next(term) => tracing::info!("SIGTERM received"),
        _ = next(int) => tracing::info!("SIGINT received"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("no admin listener to ask: add `admin = \"127.0.0.1:9900\"` to [listen] (or pass --admin), or send SIGHUP instead: kill -HUP <pid>")]
    NoAdmin,
    #[error("cannot reach the admin listener at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Port 0, no answer in time, or not in HTTP.
    #[error(transparent)]
    Unanswered(ClientError),
    #[error("the running Gatehouse refused the reload:\n{0}")]
    Refused(String),
}

impl From<ClientError> for ReloadError {
    fn from(e: ClientError) -> ReloadError {
        match e {
            ClientError::Connect { addr, source } | ClientError::Io { addr, source } => {
                ReloadError::Unreachable { addr, source }
            }
            other => ReloadError::Unanswered(other),
        }
    }
}

/// How long `gatehouse reload` waits for the whole exchange: a reload that loads certificates
/// and resolves upstreams may take a while before it answers.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// `gatehouse reload`: validates `path` here first (as `nginx -t && nginx -s reload` would), then
/// asks the running instance over its admin listener and returns its answer.
pub fn request_reload(path: &Path, admin: Option<SocketAddr>) -> Result<String, ReloadError> {
    let config = load::load(path)?.config;
    let addr = admin.or(config.listen.admin).ok_or(ReloadError::NoAdmin)?;
    let answer = client::request(addr, &http::Method::POST, "/reload", RELOAD_TIMEOUT)?;
    if answer.status == 200 {
        Ok(answer.body)
    } else {
        Err(ReloadError::Refused(answer.body.trim_end().to_string()))
    }
}
