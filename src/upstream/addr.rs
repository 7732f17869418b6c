//! Where one backend is reached: a resolved TCP address, or a Unix socket. It names the backend
//! in retries (`tried`), health counters, logs, metrics labels and the access log, so it is
//! cheap to clone (a TCP address is copied, a socket path shares one allocation) and shows as
//! operators write it: `10.0.0.7:8000`, `/run/app.sock`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

impl BackendAddr {
    pub fn unix(path: &Path) -> BackendAddr {
        BackendAddr::Unix(Arc::from(path))
    }
}

impl From<SocketAddr> for BackendAddr {
    fn from(addr: SocketAddr) -> BackendAddr {
        BackendAddr::Tcp(addr)
    }
}

/// The address, or the socket's path (the access log and `/metrics` label show it so).
impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendAddr::Tcp(addr) => addr.fmt(f),
            BackendAddr::Unix(path) => path.display().fmt(f),
        }
    }
}

/// As `Display`: log lines listing backends read `[10.0.0.7:8000, /run/app.sock]`.
impl fmt::Debug for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_show_as_written_and_sort_tcp_first() {
        let tcp = BackendAddr::from(SocketAddr::from(([10, 0, 0, 7], 8000)));
        let unix = BackendAddr::unix(Path::new("/run/app.sock"));
        assert_eq!(format!("{tcp} {unix}"), "10.0.0.7:8000 /run/app.sock");
        assert_eq!(
            format!("{:?}", [&tcp, &unix]),
            "[10.0.0.7:8000, /run/app.sock]"
        );
        let mut both = vec![unix.clone(), tcp.clone()];
        both.sort();
        assert_eq!(both, [tcp, unix.clone()]);
        assert_eq!(unix, BackendAddr::unix(Path::new("/run/app.sock")));
    }
}
