//! The open-file limit. Every connection, a client's or one to an upstream, is a file descriptor,
//! and the soft `RLIMIT_NOFILE` a process inherits is often 1024 (many containers, login
//! shells), far below `max_connections`. So at start the soft limit is raised to the hard one,
//! as Go's runtime and Caddy do (nginx: `worker_rlimit_nofile`), and a config whose connections
//! could need more descriptors than that gets a warning, at start and after each reload.

use crate::config::Config;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept aside for what is not a connection: listeners, log and certificate files,
/// DNS sockets, the runtime's own.
const RESERVE: u64 = 64;

/// Sets the soft open-file limit to the hard limit, and logs the figure. A failure (a hard limit
/// the kernel will not take as a soft one) is logged and the limit left as it was.
pub fn raise() {
    let limit = getrlimit(Resource::Nofile);
    let was = limit.current;
    if limit.current == limit.maximum {
        tracing::info!(limit = %show(was), "open-file limit (already the hard limit)");
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            let now = getrlimit(Resource::Nofile).current;
            tracing::info!(limit = %show(now), was = %show(was), "open-file limit raised to the hard limit");
        }
        Err(e) => {
            let error = std::io::Error::from(e);
            tracing::warn!(limit = %show(was), hard = %show(limit.maximum), %error, "cannot raise the open-file limit to the hard limit");
        }
    }
}

/// Warns when `config`'s connections could need more descriptors than the soft limit allows.
pub fn check(config: &Config) {
    let Some(limit) = getrlimit(Resource::Nofile).current else {
        return;
    };
    let Some(needed) = needed(config) else {
        return;
    };
    if needed > limit {
        let max_connections = config.server.limits.max_connections;
        tracing::warn!(
            limit,
            needed,
            max_connections,
            "max_connections and the upstream pools could need more open files than the limit allows; \
             past it, new connections wait (accept pauses on EMFILE) and upstream connects fail. \
             Raise the hard limit (systemd LimitNOFILE=, docker run --ulimit nofile=N:N, ulimit -Hn) \
             or lower max_connections"
        );
    }
}

/// Descriptors the config could hold at once: every client connection, one upstream connection
/// for each (a request in flight; HTTP/2 clients with many streams can hold more), the idle
/// connections each upstream server keeps, and `RESERVE`. `None` when `max_connections = 0`
/// sets no bound at all.
pub fn needed(config: &Config) -> Option<u64> {
    let clients = config.server.limits.max_connections as u64;
    if clients == 0 {
        return None;
    }
    let idle_each = crate::upstream::conn::MAX_IDLE.min(clients as usize) as u64;
    let servers: u64 = config
        .upstreams
        .values()
        .map(|u| u.servers.len() as u64)
        .sum();
    Some(clients * 2 + servers * idle_each + RESERVE)
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(server: &str, servers: usize) -> Config {
        let list = vec!["\"127.0.0.1:9000\""; servers].join(", ");
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n[server]\n{server}\n\
             [[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"api\"\n\
             [upstream.api]\nservers = [{list}]\n"
        );
        crate::config::parse(Path::new("gatehouse.toml"), &text).unwrap()
    }

    #[test]
    fn clients_twice_idle_upstreams_and_a_reserve() {
        let idle = crate::upstream::conn::MAX_IDLE as u64;
        // the defaults: 10,000 connections, one server
        assert_eq!(needed(&config("", 1)), Some(20_000 + idle + RESERVE));
        assert_eq!(
            needed(&config("max_connections = 500", 3)),
            Some(1_000 + 3 * 500 + RESERVE),
            "a server keeps no more idle connections than there are clients"
        );
        assert_eq!(needed(&config("max_connections = 0", 1)), None);
    }
}
