//! `gatehouse cluster status`: asks a running instance's admin listener for `/cluster` and
//! prints it as a table, with an exit code a script can test (0: the store answers and every
//! member agrees; 1: not; 64: bad config; 69: the instance could not be asked).

use super::members::{unix_now, View};
use crate::admin::client::{self, ClientError};
use crate::config::{self, ConfigError};
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long the admin listener has to answer (it answers from memory).
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(
        "no admin listener to ask: add `admin = \"127.0.0.1:9900\"` to [listen], or pass --admin"
    )]
    NoAdmin,
    #[error(transparent)]
    Unanswered(#[from] ClientError),
    #[error("{addr}: {status} {}", body.trim_end())]
    Refused {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("{addr}: /cluster answered what is not its JSON: {error}")]
    NotJson { addr: SocketAddr, error: String },
}

impl StatusError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::Config(_)
            | StatusError::NoAdmin
            | StatusError::Unanswered(ClientError::PortZero { .. }) => 64,
            StatusError::Unanswered(_) => 69,
            StatusError::Refused { .. } | StatusError::NotJson { .. } => 1,
        }
    }
}

/// `/cluster` of the instance at `admin`, else at the config's `[listen] admin`.
pub fn fetch(config: &Path, admin: Option<SocketAddr>) -> Result<View, StatusError> {
    let addr = match admin {
        Some(addr) => addr,
        None => config::load_listen(config)?
            .admin
            .ok_or(StatusError::NoAdmin)?,
    };
    let answer = client::request(addr, &http::Method::GET, "/cluster", ASK_TIMEOUT)?;
    if answer.status != 200 {
        return Err(StatusError::Refused {
            addr: answer.addr,
            status: answer.status,
            body: answer.body,
        });
    }
    serde_json::from_str(&answer.body).map_err(|e| StatusError::NotJson {
        addr: answer.addr,
        error: e.to_string(),
    })
}

/// The shared-ACME locks held now, one line each (nothing when none is).
fn locks(out: &mut String, view: &View) {
    if view.locks.is_empty() {
        return;
    }
    let _ = writeln!(out, "ACME LOCKS (held by, fencing token, for)");
    for l in &view.locks {
        let held = unix_now().saturating_sub(l.since);
        let _ = writeln!(
            out,
            "{}  {}  token {}  {held} s",
            l.lock, l.instance, l.token
        );
    }
}

/// The view as people read it: the store, the members, then what is wrong.
pub fn table(view: &View) -> String {
    let mut out = String::new();
    let store = match (&view.store.up, view.store.latency_ms, &view.store.error) {
        (true, Some(ms), _) => format!("up ({ms:.2} ms)"),
        (true, None, _) => "up".to_string(),
        (false, _, Some(error)) => format!("DOWN: {error}"),
        (false, _, None) => "DOWN".to_string(),
    };
    let age = if view.checked_at == 0 {
        "never".to_string()
    } else {
        format!("{} s ago", unix_now().saturating_sub(view.checked_at))
    };
    let _ = writeln!(
        out,
        "cluster {} (asked {}): store {store}; members read {age}",
        view.cluster, view.instance
    );
    let rows: Vec<[String; 7]> = view
        .members
        .iter()
        .map(|m| {
            [
                m.instance.clone(),
                m.version.clone(),
                format!("{} s", unix_now().saturating_sub(m.started)),
                m.rate_limits.clone(),
                format!("{} / {}", m.rate_limits_digest, m.acme_digest),
                m.leased_tokens.to_string(),
                m.fallbacks.to_string(),
            ]
        })
        .collect();
    let head = [
        "INSTANCE",
        "VERSION",
        "UP FOR",
        "LIMITS",
        "DIGESTS (limits / acme)",
        "LEASED",
        "FALLBACKS",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(head.to_vec()));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
    locks(&mut out, view);
    for d in &view.disagreements {
        let _ = writeln!(out, "warning: {d}");
    }
    if view.healthy() {
        let _ = writeln!(out, "ok: {} members agree", view.members.len());
    } else if !view.store.up {
        let _ = writeln!(out, "not ok: the store does not answer");
    } else {
        let _ = writeln!(out, "not ok: members run different configs");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::members::{Member, StoreHealth};

    #[test]
    fn the_table_lists_members_and_warns_of_disagreement() {
        let member = |name: &str, rl: &str| Member {
            instance: name.into(),
            version: "0.1.0".into(),
            started: unix_now(),
            rate_limits_digest: rl.into(),
            acme_digest: "acme".into(),
            rate_limits: "global".into(),
            leased_tokens: 3,
            fallbacks: 0,
        };
        let mut view = View {
            cluster: "gh".into(),
            instance: "a".into(),
            checked_at: unix_now(),
            store: StoreHealth {
                up: true,
                latency_ms: Some(0.5),
                error: None,
            },
            agree: true,
            disagreements: vec![],
            members: vec![member("a", "x"), member("b", "x")],
            locks: Vec::new(),
        };
        let ok = table(&view);
        assert!(ok.contains("store up (0.50 ms)"), "{ok}");
        assert!(ok.lines().any(|l| l.starts_with("b ")), "{ok}");
        assert!(ok.ends_with("ok: 2 members agree\n"), "{ok}");
        view.agree = false;
        view.disagreements = vec!["b: rate limits differ (digest y, x here)".into()];
        let bad = table(&view);
        assert!(bad.contains("warning: b: rate limits differ"), "{bad}");
        assert!(
            bad.ends_with("not ok: members run different configs\n"),
            "{bad}"
        );
    }
}
