//! The listeners running now, which a reload may change. New addresses are bound before the new
//! snapshot is published, so a bind failure rejects the reload and changes nothing; a removed
//! listener stops accepting at once and its connections drain (the response in flight completes,
//! then HTTP/1.1 closes and HTTP/2 sends GOAWAY).

use crate::config::Listen;
use crate::http::{ConnContext, Transport};
use crate::reload::Trigger;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Http,
    Https,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Http => "http",
            Role::Https => "https",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot bind the {} listener on {addr}: {source}{}", role.name(), held_by.map(|(r, a)| format!(" (this Gatehouse's {} listener holds {a}; free the port in one reload and take it in the next, or restart)", r.name())).unwrap_or_default())]
pub struct BindError {
    pub role: Role,
    pub addr: SocketAddr,
    pub source: std::io::Error,
    /// A listener of ours on the same port, when that is what is in the way.
    pub held_by: Option<(Role, SocketAddr)>,
}

/// The addresses `listen` asks for, by role.
fn wanted(listen: &Listen) -> impl Iterator<Item = (Role, SocketAddr)> {
    [
        (Role::Http, listen.http),
        (Role::Https, listen.https),
        (Role::Admin, listen.admin),
    ]
    .into_iter()
    .filter_map(|(role, addr)| Some((role, addr?)))
}

/// Sockets bound for a config and not accepting yet; dropping them closes them.
pub struct Bound(Vec<(Role, SocketAddr, TcpListener)>);

struct Running {
    /// As configured (port 0 stays 0), which is what the next config is compared with.
    configured: SocketAddr,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

pub struct Listeners {
    cx: Arc<ConnContext>,
    reload: mpsc::Sender<Trigger>,
    running: HashMap<Role, Running>,
}

/// What `Listeners::apply` did, for the reload summary: "listeners +https 0.0.0.0:443".
#[derive(Default, Debug)]
pub struct Changes(Vec<String>);

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "listeners {}", self.0.join(" "))
    }
}

impl Listeners {
    pub fn new(cx: Arc<ConnContext>, reload: mpsc::Sender<Trigger>) -> Listeners {
        Listeners {
            cx,
            reload,
            running: HashMap::new(),
        }
    }

    /// Binds every address `listen` names that no listener of the same role runs on yet.
    pub async fn bind_new(&self, listen: &Listen) -> Result<Bound, BindError> {
        let mut bound = Vec::new();
        for (role, addr) in wanted(listen) {
            if self
                .running
                .get(&role)
                .is_some_and(|r| r.configured == addr)
            {
                continue;
            }
            let listener = TcpListener::bind(addr).await.map_err(|source| {
                let held_by = self
                    .running
                    .iter()
                    .find(|(_, r)| r.local.port() == addr.port())
                    .map(|(role, r)| (*role, r.local));
                BindError {
                    role,
                    addr,
                    source,
                    held_by,
                }
            })?;
            bound.push((role, addr, listener));
        }
        Ok(Bound(bound))
    }

    /// Starts the bound listeners and stops those `listen` no longer names (or names at another
    /// address). Call after the snapshot with `listen` is published.
    pub fn apply(&mut self, bound: Bound, listen: &Listen) -> Changes {
        let mut changes = Changes::default();
        let wanted: HashMap<Role, SocketAddr> = wanted(listen).collect();
        let mut gone: Vec<Role> = self
            .running
            .iter()
            .filter(|(role, r)| wanted.get(role) != Some(&r.configured))
            .map(|(role, _)| *role)
            .collect();
        gone.sort();
        for role in gone {
            if let Some(old) = self.running.remove(&role) {
                let _ = old.stop.send(true);
                tracing::info!(listener = role.name(), addr = %old.local, "listener removed: no new connections, open ones drain");
                changes.0.push(format!("-{} {}", role.name(), old.local));
            }
        }
        // The HTTPS port goes into redirects from the HTTP listener: publish it before any
        // listener starts accepting, or the first requests are sent to port 443. The public
        // port, when set, replaces the listener's own (a reload may set or unset it).
        let new_https = bound.0.iter().find(|(role, ..)| *role == Role::Https);
        let https_port = match new_https {
            Some((_, configured, listener)) => Some(
                listener
                    .local_addr()
                    .map_or(configured.port(), |a| a.port()),
            ),
            None => self.running.get(&Role::Https).map(|r| r.local.port()),
        };
        self.cx
            .set_https_port(https_port.map(|own| listen.public_https_port.unwrap_or(own)));
        for (role, configured, listener) in bound.0 {
            let local = listener.local_addr().unwrap_or(configured);
            tracing::info!(listener = role.name(), addr = %local, "listening");
            changes.0.push(format!("+{} {local}", role.name()));
            let (stop, stopped) = watch::channel(false);
            let accept = self.spawn(role, listener, stopped);
            let running = Running {
                configured,
                local,
                stop,
                accept,
            };
            self.running.insert(role, running);
        }
        changes
    }

    fn spawn(
        &self,
        role: Role,
        listener: TcpListener,
        stopped: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let cx = self.cx.clone();
        let transport = match role {
            Role::Https => Transport::Tls,
            _ => Transport::Plain,
        };
        match role {
            Role::Http | Role::Https => tokio::spawn(super::accept_loop(
                listener,
                role.name(),
                transport,
                cx,
                stopped,
            )),
            Role::Admin => tokio::spawn(crate::admin::serve(
                listener,
                cx,
                self.reload.clone(),
                stopped,
            )),
        }
    }

    /// Shutdown: every listener stops accepting (its connections start draining); returns once
    /// every accept loop has ended.
    pub async fn stop_all(&mut self) {
        let running: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.accept.await;
        }
    }
}
