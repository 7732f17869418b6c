//! Hot reload: one task takes every trigger (config file changes, SIGHUP, `POST /reload`), loads
//! and validates the file and reads the files it names (on tokio's blocking pool, see `load`),
//! builds a whole new snapshot (reusing unchanged pools, limiters and ACME work through
//! `state::Keep`) and publishes it with one store. A config that fails any step never replaces
//! the running one.

use crate::config::Config;
use crate::listener::Listeners;
use crate::load;
use crate::state::{Keep, RuntimeState, Shared};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Edits arrive as bursts of events (write, chmod, rename); one reload after they settle.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub enum Trigger {
    File,
    Signal,
    /// `POST /reload`: the outcome goes back to the caller.
    Admin(oneshot::Sender<Outcome>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(String),
    Unchanged,
    Rejected(String),
}

/// What a reload can change without a restart; the rest is refused with this reason.
fn restart_only(old: &Config, new: &Config) -> Option<&'static str> {
    if old.server.workers != new.server.workers {
        return Some("[server] workers changed: the runtime's threads are started once; restart to change them");
    }
    None
}

/// Applies `path` now; what happened, also logged and counted.
pub async fn reload(
    path: &Path,
    shared: &Shared,
    keep: &Keep,
    listeners: &Mutex<Listeners>,
) -> Outcome {
    let outcome = attempt(path, shared, keep, listeners).await;
    let metrics = &keep.metrics;
    match &outcome {
        Outcome::Applied(summary) => {
            metrics.reloads.with_label_values(&["success"]).inc();
            metrics.last_reload_success.set(crate::clock::unix_now());
            tracing::info!(changes = %summary, "config reloaded");
            crate::fds::check(&shared.load().config);
        }
        Outcome::Unchanged => tracing::debug!("config unchanged; nothing to reload"),
        Outcome::Rejected(why) => {
            metrics.reloads.with_label_values(&["failure"]).inc();
            tracing::error!(error = %why, "config reload rejected; the running config stays");
        }
    }
    outcome
}

async fn attempt(
    path: &Path,
    shared: &Shared,
    keep: &Keep,
    listeners: &Mutex<Listeners>,
) -> Outcome {
    let loaded = match load::load_off_runtime(path.to_path_buf()).await {
        Ok(loaded) => loaded,
        Err(e) => return Outcome::Rejected(e.to_string()),
    };
    let new = &loaded.config;
    let current = shared.load();
    let old = &current.config;
    let mut summary = if **old == *new {
        // the file is the same, but a CA or client certificate, a client CA, an error page or a
        // users file
        // it names may have been replaced
        let tls = keep.tls_files_changed(new, &loaded.files).await;
        let cas = current.client_cas_changed(new, &loaded.files);
        let pages = current.error_pages.changed(loaded.files.pages());
        let users = current.users_changed(loaded.files.users());
        if !tls && !cas && !pages && !users {
            return Outcome::Unchanged;
        }
        let again = [
            (tls, "upstream TLS files"),
            (cas, "client CA files"),
            (pages, "error pages"),
            (users, "users files"),
        ];
        let again: Vec<&str> = again.iter().filter(|(c, _)| *c).map(|(_, w)| *w).collect();
        vec![format!("{} read again", again.join(" and "))]
    } else {
        summarize(old, new)
    };
    if let Some(why) = restart_only(old, new) {
        return Outcome::Rejected(why.to_string());
    }
    let mut running = listeners.lock().await;
    let bound = match running.bind_new(&new.listen).await {
        Ok(bound) => bound,
        Err(e) => return Outcome::Rejected(e.to_string()),
    };
    let listen = new.listen.clone();
    let state = match RuntimeState::build(loaded, keep).await {
        Ok(state) => state,
        Err(e) => return Outcome::Rejected(e.to_string()),
    };
    shared.store(state);
    let changes = running.apply(bound, &listen);
    if !changes.is_empty() {
        summary.push(changes.to_string());
    } else if listen != old.listen {
        summary.push("listen settings".to_string());
    }
    if summary.is_empty() {
        summary.push("details within sites or routes".to_string());
    }
    Outcome::Applied(summary.join(", "))
}

/// ["sites +1 -0 ~1", "routes 7 -> 8", "upstreams ~api"]
fn summarize(old: &Config, new: &Config) -> Vec<String> {
    let mut parts = Vec::new();
    let names =
        |c: &Config| -> Vec<String> { c.sites.iter().map(|s| format!("{:?}", s.hosts)).collect() };
    let (a, b) = (names(old), names(new));
    let added = b.iter().filter(|n| !a.contains(n)).count();
    let removed = a.iter().filter(|n| !b.contains(n)).count();
    let changed = old
        .sites
        .iter()
        .filter(|s| new.sites.iter().any(|n| n.hosts == s.hosts && n != *s))
        .count();
    if added + removed + changed > 0 {
        parts.push(format!("sites +{added} -{removed} ~{changed}"));
    }
    let routes = |c: &Config| c.sites.iter().map(|s| s.routes.len()).sum::<usize>();
    if routes(old) != routes(new) {
        parts.push(format!("routes {} -> {}", routes(old), routes(new)));
    }
    let mut ups = Vec::new();
    for (name, spec) in &new.upstreams {
        match old.upstreams.get(name) {
            None => ups.push(format!("+{name}")),
            Some(o) if o != spec => ups.push(format!("~{name}")),
            Some(_) => {}
        }
    }
    ups.extend(
        old.upstreams
            .keys()
            .filter(|n| !new.upstreams.contains_key(*n))
            .map(|n| format!("-{n}")),
    );
    if !ups.is_empty() {
        parts.push(format!("upstreams {}", ups.join(" ")));
    }
    if old.acme != new.acme {
        parts.push("acme settings".to_string());
    }
    if old.log != new.log {
        parts.push("access log".to_string());
    }
    if old.server != new.server {
        parts.push("server settings".to_string());
    }
    parts
}

/// The reload task: triggers in, one reload at a time.
pub async fn run(
    path: PathBuf,
    shared: Arc<Shared>,
    keep: Arc<Keep>,
    listeners: Arc<Mutex<Listeners>>,
    mut rx: mpsc::Receiver<Trigger>,
) {
    while let Some(trigger) = rx.recv().await {
        let mut reply = None;
        match trigger {
            Trigger::Admin(tx) => reply = Some(tx),
            Trigger::File => reply = settle(&mut rx).await,
            Trigger::Signal => {}
        }
        let outcome = reload(&path, &shared, &keep, &listeners).await;
        if let Some(tx) = reply {
            let _ = tx.send(outcome);
        }
    }
}

/// After a file event: lets the burst of events an editor's save makes settle (`DEBOUNCE`),
/// folding every file or signal trigger that comes meanwhile into one reload. An admin request
/// (`POST /reload`, `gatehouse reload`) ends the wait at once, since whoever sends it says the
/// file is ready, and it gets the outcome of that reload; so a save followed by `gatehouse
/// reload` answers in the time of one reload, not the debounce's.
async fn settle(rx: &mut mpsc::Receiver<Trigger>) -> Option<oneshot::Sender<Outcome>> {
    let quiet = tokio::time::sleep(DEBOUNCE);
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            () = &mut quiet => return None,
            more = rx.recv() => match more {
                Some(Trigger::Admin(tx)) => return Some(tx),
                Some(Trigger::File | Trigger::Signal) => {}
                // shutting down: this reload still runs, the next `recv` ends the task
                None => return None,
            },
        }
    }
}

/// Watches the config file's folder (not the file: editors replace it by rename, and Kubernetes
/// swaps a `..data` symlink), sending `Trigger::File` for events that touch the file's name or
/// a `..`-prefixed entry. The watcher stops when the returned value is dropped.
pub fn watch(path: &Path, tx: mpsc::Sender<Trigger>) -> notify::Result<RecommendedWatcher> {
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let ours = event.paths.iter().any(|p| {
            let file = p.file_name();
            file == name.as_deref()
                || file
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(".."))
        });
        if ours {
            let _ = tx.try_send(Trigger::File);
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
