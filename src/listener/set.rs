//! The listeners running now, which a reload may change. New addresses are bound before the new
//! snapshot is published, so a bind failure rejects the reload and changes nothing; a removed
//! listener stops accepting at once and its connections drain (the response in flight completes,
//! then HTTP/1.1 closes and HTTP/2 sends GOAWAY).

use crate::config::Listen;
use crate::http::{ConnContext, Transport};
use crate::reload::Trigger;
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

/// One listener a config asks for. Two configs asking for equal ones share the running one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wanted {
    role: Role,
    /// As configured (port 0 stays 0), which is what the next config is compared with.
    addr: SocketAddr,
    /// Bound IPv6-only (`Listen::v6_only`).
    v6_only: bool,
}

/// The listeners `listen` asks for, in config order: `http`, then `https`, then `admin`.
fn wanted(listen: &Listen) -> Vec<Wanted> {
    let http = listen.http.iter().map(|a| (Role::Http, *a));
    let https = listen.https.iter().map(|a| (Role::Https, *a));
    let admin = listen.admin.iter().map(|a| (Role::Admin, *a));
    http.chain(https)
        .chain(admin)
        .map(|(role, addr)| Wanted {
            role,
            addr,
            v6_only: listen.v6_only(addr),
        })
        .collect()
}

/// Sockets bound for a config and not accepting yet; dropping them closes them.
pub struct Bound(Vec<(Wanted, TcpListener)>);

struct Running {
    wanted: Wanted,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

pub struct Listeners {
    cx: Arc<ConnContext>,
    reload: mpsc::Sender<Trigger>,
    /// In config order.
    running: Vec<Running>,
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

/// A listener of the next config: one running already, or one just bound.
enum Slot {
    Kept(Running),
    New(Wanted, TcpListener),
}

/// Takes the first entry of `from` that `matches`, leaving `None` in its place (so an address
/// listed twice, port 0, pairs with two entries).
fn claim<T>(from: &mut [Option<T>], matches: impl Fn(&T) -> bool) -> Option<T> {
    from.iter_mut()
        .find(|entry| entry.as_ref().is_some_and(&matches))
        .and_then(Option::take)
}

impl Listeners {
    pub fn new(cx: Arc<ConnContext>, reload: mpsc::Sender<Trigger>) -> Listeners {
        Listeners {
            cx,
            reload,
            running: Vec::new(),
        }
    }

    /// Binds every listener `listen` asks for that does not run yet (same role, same configured
    /// address).
    pub async fn bind_new(&self, listen: &Listen) -> Result<Bound, BindError> {
        let mut running: Vec<Option<Wanted>> =
            self.running.iter().map(|r| Some(r.wanted)).collect();
        let mut bound = Vec::new();
        for wanted in wanted(listen) {
            if claim(&mut running, |r| *r == wanted).is_some() {
                continue;
            }
            let listener = bind(wanted).await.map_err(|source| {
                let held_by = self
                    .running
                    .iter()
                    .find(|r| r.local.port() == wanted.addr.port())
                    .map(|r| (r.wanted.role, r.local));
                BindError {
                    role: wanted.role,
                    addr: wanted.addr,
                    source,
                    held_by,
                }
            })?;
            bound.push((wanted, listener));
        }
        Ok(Bound(bound))
    }

    /// Starts the bound listeners and stops those `listen` no longer asks for. Call after the
    /// snapshot with `listen` is published.
    pub fn apply(&mut self, bound: Bound, listen: &Listen) -> Changes {
        let mut changes = Changes::default();
        let mut old: Vec<Option<Running>> = self.running.drain(..).map(Some).collect();
        let mut new: Vec<Option<(Wanted, TcpListener)>> = bound.0.into_iter().map(Some).collect();
        let slots: Vec<Slot> = wanted(listen)
            .into_iter()
            .filter_map(|w| match claim(&mut old, |r| r.wanted == w) {
                Some(running) => Some(Slot::Kept(running)),
                None => claim(&mut new, |(b, _)| *b == w).map(|(w, l)| Slot::New(w, l)),
            })
            .collect();
        for gone in old.into_iter().flatten() {
            let _ = gone.stop.send(true);
            let role = gone.wanted.role.name();
            tracing::info!(listener = role, addr = %gone.local, "listener removed: no new connections, open ones drain");
            changes.0.push(format!("-{role} {}", gone.local));
        }
        // The HTTPS port goes into redirects from the HTTP listeners: publish it before any
        // listener starts accepting, or the first requests are sent to port 443. It is the first
        // HTTPS listener's; the public port, when set, replaces it (a reload may set or unset it).
        let https_port = slots.iter().find_map(|slot| match slot {
            Slot::Kept(r) if r.wanted.role == Role::Https => Some(r.local.port()),
            Slot::New(w, l) if w.role == Role::Https => {
                Some(l.local_addr().map_or(w.addr.port(), |a| a.port()))
            }
            _ => None,
        });
        self.cx
            .set_https_port(https_port.map(|own| listen.public_https_port.unwrap_or(own)));
        for slot in slots {
            let running = match slot {
                Slot::Kept(running) => running,
                Slot::New(wanted, listener) => self.start(wanted, listener, &mut changes),
            };
            self.running.push(running);
        }
        changes
    }

    fn start(&self, wanted: Wanted, listener: TcpListener, changes: &mut Changes) -> Running {
        let role = wanted.role;
        let local = listener.local_addr().unwrap_or(wanted.addr);
        tracing::info!(listener = role.name(), addr = %local, "listening");
        changes.0.push(format!("+{} {local}", role.name()));
        let (stop, stopped) = watch::channel(false);
        let accept = self.spawn(role, listener, stopped);
        Running {
            wanted,
            local,
            stop,
            accept,
        }
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
        let running: Vec<Running> = std::mem::take(&mut self.running);
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.accept.await;
        }
    }
}

/// A listening socket for `wanted`: as `TcpListener::bind` makes it (`SO_REUSEADDR`, backlog
/// 1024), and IPv6-only when asked.
async fn bind(wanted: Wanted) -> std::io::Result<TcpListener> {
    if !wanted.v6_only {
        return TcpListener::bind(wanted.addr).await;
    }
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&wanted.addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
