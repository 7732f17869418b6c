//! `gatehouse health`: asks a running Gatehouse whether it is ready, as a container
//! `HEALTHCHECK` or a script would, with nothing but the binary itself (no curl, no shell).
//!
//! One `GET /ready` (or `/live`) to the admin listener through `admin::client`, all of it
//! within one deadline. Without an admin listener in the config it falls back to a TCP connect
//! to the `http` (else `https`) listener and says that readiness was not checked.

use super::client::{self, Answer, ClientError};
use crate::config::{self, ConfigError, Listen};
use http::Method;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Which admin endpoint to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Ready,
    Live,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Ready => "/ready",
            Endpoint::Live => "/live",
        }
    }
}

/// What is probed: the admin endpoint, or (no admin listener) whether a listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Admin(SocketAddr),
    Listener {
        name: &'static str,
        addr: SocketAddr,
    },
}

/// A healthy answer, worded for the operator.
#[derive(Debug, PartialEq, Eq)]
pub enum Healthy {
    /// The admin endpoint answered `200`; its body (`ready`, `live`).
    Answered { addr: SocketAddr, body: String },
    /// No admin listener: the listener took a TCP connection, nothing more is known.
    Accepting {
        name: &'static str,
        addr: SocketAddr,
    },
}

impl std::fmt::Display for Healthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Healthy::Answered { addr, body } => write!(f, "{addr}: {}", body.trim_end()),
            Healthy::Accepting { name, addr } => write!(
                f,
                "{addr}: the {name} listener accepts connections (readiness not checked: \
                 the config has no [listen] admin)"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("the config has no listener to probe")]
    NoListener,
    /// The instance answered, with something other than `200`.
    #[error("{addr}: not ready: {status} {}", body.trim_end())]
    NotReady {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    /// Nothing answered in time, or not in HTTP.
    #[error(transparent)]
    Unanswered(#[from] ClientError),
}

impl HealthError {
    /// The process exit code: 1 answered but not ready, 64 (EX_USAGE) the config or the target is
    /// wrong, 69 (EX_UNAVAILABLE) nothing answered in time. Not 2: Docker reserves it.
    pub fn exit_code(&self) -> u8 {
        match self {
            HealthError::NotReady { .. } => 1,
            HealthError::Config(_)
            | HealthError::NoListener
            | HealthError::Unanswered(ClientError::PortZero { .. }) => 64,
            HealthError::Unanswered(_) => 69,
        }
    }
}

/// `gatehouse health`: `admin` if given (the config is then not read at all), else the config's
/// `[listen] admin`, else a connect to its `http`/`https` listener.
pub fn health(
    config: &Path,
    admin: Option<SocketAddr>,
    endpoint: Endpoint,
    timeout: Duration,
) -> Result<Healthy, HealthError> {
    let target = match admin {
        Some(addr) => Target::Admin(addr),
        None => target_of(&config::load_listen(config)?).ok_or(HealthError::NoListener)?,
    };
    probe(target, endpoint, timeout)
}

/// The address to ask, from a config's listeners (a validated config has `http` or `https`;
/// of a list, the first).
pub fn target_of(listen: &Listen) -> Option<Target> {
    match (
        listen.admin,
        listen.http.first().copied(),
        listen.https.first().copied(),
    ) {
        (Some(addr), _, _) => Some(Target::Admin(addr)),
        (None, Some(addr), _) => Some(Target::Listener { name: "http", addr }),
        (None, None, Some(addr)) => Some(Target::Listener {
            name: "https",
            addr,
        }),
        (None, None, None) => None,
    }
}

pub fn probe(
    target: Target,
    endpoint: Endpoint,
    timeout: Duration,
) -> Result<Healthy, HealthError> {
    match target {
        Target::Admin(addr) => {
            let Answer { addr, status, body } =
                client::request(addr, &Method::GET, endpoint.path(), timeout)?;
            if status == 200 {
                Ok(Healthy::Answered { addr, body })
            } else {
                Err(HealthError::NotReady { addr, status, body })
            }
        }
        Target::Listener { name, addr } => {
            let addr = client::connect(addr, timeout)?;
            Ok(Healthy::Accepting { name, addr })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_listener_is_preferred_then_http_then_https() {
        let path = Path::new("gatehouse.toml");
        let listen = |text: &str| config::parse_listen(path, text).unwrap();
        let admin = listen("[listen]\nhttp = \"0.0.0.0:8080\"\nadmin = \"127.0.0.1:9901\"\n");
        let addr = "127.0.0.1:9901".parse().unwrap();
        assert_eq!(target_of(&admin), Some(Target::Admin(addr)));
        let http = listen("[listen]\nhttp = \"0.0.0.0:8080\"\nhttps = \"0.0.0.0:8443\"\n");
        let addr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            target_of(&http),
            Some(Target::Listener { name: "http", addr })
        );
        let https = listen("[listen]\nhttps = \"0.0.0.0:8443\"\n");
        let addr = "0.0.0.0:8443".parse().unwrap();
        let want = Target::Listener {
            name: "https",
            addr,
        };
        assert_eq!(target_of(&https), Some(want));
    }
}
