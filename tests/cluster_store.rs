//! The store connection beyond `redis://` (`docs/cluster.md`, "TLS and Sentinel"): real Gatehouse
//! processes sharing a real `redis-server` over TLS (`rediss://`, certificates made here with
//! rcgen, `tls-auth-clients yes`), one with the wrong CA, and a real Sentinel (`redis-server
//! --sentinel`) failing over from a killed master to its replica.
//!
//! Needs `redis-server` and `redis-cli` (Debian packages `redis-server`, `redis-tools`; the
//! Sentinel is the same binary in Sentinel mode; `tests/run.sh` installs them).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const SECRET: &str = "cluster-test-secret-0123456789";

/// A port free a moment ago (redis-server takes a port number, not a socket).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA, and certificates it issued (written as PEM files in `dir`).
struct Pki {
    ca: rcgen::Certificate,
    key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&key).unwrap();
        Pki { ca, key }
    }

    fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A leaf for 127.0.0.1 and localhost (server and client use alike): (cert, key) paths.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca, &self.key)
            .unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A `redis-server` (or Sentinel) process on 127.0.0.1; killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
}

impl Server {
    fn spawn(args: &[String]) -> Server {
        // the TLS port when there is one (`--port 0` turns plain TCP off)
        let at = |flag: &str| args.iter().position(|a| a == flag);
        let i = at("--tls-port").or_else(|| at("--port")).unwrap();
        let port = args[i + 1].parse().unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; tests/run.sh installs it)");
        Server {
            child: Some(child),
            port,
        }
    }

    /// A plain one on a TCP port (`extra`: e.g. `--replicaof`).
    fn plain(extra: &[&str]) -> Server {
        let args = |port: u16| {
            let mut args = vec!["--port".to_string(), port.to_string()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        Server::start(args, &[])
    }

    /// Spawned on a port free a moment ago, which another test's process may take first (the
    /// tests run in parallel): a server that exits, or does not answer within 5 s, is tried
    /// again on another port, three times in all.
    fn start(args: impl Fn(u16) -> Vec<String>, tls: &[String]) -> Server {
        for _ in 0..3 {
            let mut server = Server::spawn(&args(free_port()));
            if server.answers(tls, Duration::from_secs(5)) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 3 ports");
    }

    fn answers(&mut self, tls: &[String], within: Duration) -> bool {
        let start = Instant::now();
        while self.cli(tls, &["PING"]).trim() != "PONG" {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || start.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn cli(&self, tls: &[String], args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(tls)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(backend: &Backend, cluster: &str) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 2

[cluster]
secret = "{SECRET}"
timeout = "250ms"
{cluster}

[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"
  rate_limit = {{ requests = 5, per = "1m", burst = 5, key = "header:X-Client" }}

[upstream.backend]
servers = ["{}"]
"#,
        backend.addr
    )
}

struct Instances {
    proxies: Vec<TestProxy>,
    admins: Vec<std::net::SocketAddr>,
    _backend: Backend,
}

async fn instances(n: usize, cluster: &str) -> Instances {
    let backend = serve("backend", |_req| async { text_response(200, "ok") }).await;
    let text = config(&backend, cluster);
    let mut proxies = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..n {
        let proxy = TestProxy::start(&text).await;
        admins.push(proxy.admin_addr().await);
        proxies.push(proxy);
    }
    Instances {
        proxies,
        admins,
        _backend: backend,
    }
}

impl Instances {
    /// One metric of each instance (0 when absent).
    async fn metric(&self, name: &str) -> Vec<f64> {
        let client = client();
        let mut values = Vec::new();
        for admin in &self.admins {
            let text = match client.get(format!("http://{admin}/metrics")).send().await {
                Ok(resp) => resp.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            values.push(value);
        }
        values
    }

    /// How long until every instance counts in the store (`None`: not within `max`).
    async fn until_global(&self, max: Duration) -> Option<Duration> {
        poll_until(max, || async {
            self.metric("gatehouse_cluster_store_up")
                .await
                .iter()
                .all(|v| *v == 1.0)
        })
        .await
    }

    /// `n` requests of client `who`, round robin over the instances: the statuses.
    async fn send(&self, who: &str, n: usize) -> Vec<u16> {
        let client = client();
        let mut statuses = Vec::new();
        for i in 0..n {
            let url = self.proxies[i % self.proxies.len()].url("/x");
            let status = match client.get(url).header("X-Client", who).send().await {
                Ok(resp) => resp.status().as_u16(),
                Err(_) => 0,
            };
            statuses.push(status);
        }
        statuses
    }

    fn logs(&self) -> Vec<String> {
        self.proxies.iter().flat_map(|p| p.logs()).collect()
    }
}

fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

/// A redis-server that speaks only TLS, requires client certificates from `pki`'s CA.
struct TlsRedis {
    server: Server,
    cli_tls: Vec<String>,
}

fn tls_redis(dir: &Path, pki: &Pki) -> TlsRedis {
    let ca = pki.write_ca(dir, "ca.pem");
    let (cert, key) = pki.issue(dir, "server");
    let (client_cert, client_key) = pki.issue(dir, "client");
    let s = |p: &Path| p.display().to_string();
    let args = |port: u16| -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &s(&cert),
            "--tls-key-file",
            &s(&key),
            "--tls-ca-cert-file",
            &s(&ca),
            "--tls-auth-clients",
            "yes",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let cli_tls: Vec<String> = [
        "--tls",
        "--cacert",
        &s(&ca),
        "--cert",
        &s(&client_cert),
        "--key",
        &s(&client_key),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let server = Server::start(args, &cli_tls);
    TlsRedis { server, cli_tls }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rediss_two_instances_share_one_budget() {
    with_timeout(60, async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("store test CA");
        let redis = tls_redis(dir.path(), &pki);
        let d = dir.path().display();
        let cluster = format!(
            "store = \"rediss://127.0.0.1:{}\"\nstore_ca = \"{d}/ca.pem\"\nstore_client_cert = \"{d}/client.pem\"\nstore_client_key = \"{d}/client.key\"",
            redis.server.port
        );
        let c = instances(2, &cluster).await;
        let took = c.until_global(Duration::from_secs(10)).await;
        assert!(took.is_some(), "never reached the store over TLS: {:#?}", c.logs());
        let statuses = c.send("alice", 12).await;
        eprintln!("over rediss://: global after {took:?}; statuses {statuses:?}");
        // a budget of 5 (refilling 5 a minute) shared by both: 5, not 10
        assert!((5..=6).contains(&admitted(&statuses)), "{statuses:?}");
        let keys = redis.server.cli(&redis.cli_tls, &["--scan", "--pattern", "gatehouse:rl:*"]);
        assert!(!keys.trim().is_empty(), "no budget in the store");
        let fallbacks = c.metric("gatehouse_cluster_fallbacks_total").await;
        assert_eq!(fallbacks, [0.0, 0.0], "the count is not the store's");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_certificate_from_another_ca_keeps_the_store_down_and_the_fallback_serves() {
    with_timeout(60, async {
        let dir = tempfile::tempdir().unwrap();
        let redis = tls_redis(dir.path(), &Pki::new("the store's CA"));
        let wrong = Pki::new("another CA").write_ca(dir.path(), "wrong.pem");
        let d = dir.path().display();
        let cluster = format!(
            "store = \"rediss://127.0.0.1:{}\"\nstore_ca = \"{}\"\nstore_client_cert = \"{d}/client.pem\"\nstore_client_key = \"{d}/client.key\"",
            redis.server.port,
            wrong.display()
        );
        let c = instances(2, &cluster).await;
        let said = poll_until(Duration::from_secs(5), || async {
            c.logs().iter().any(|l| l.contains("cluster store not reachable"))
        })
        .await;
        let logs = c.logs();
        let line = logs.iter().find(|l| l.contains("cluster store not reachable"));
        eprintln!("after {said:?}: {line:?}");
        let line = line.expect("no log line says why the store is not reached");
        assert!(line.contains("UnknownIssuer") || line.contains("certificate"), "{line}");
        // it stays down, and says so once, not every probe
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.metric("gatehouse_cluster_store_up").await, [0.0, 0.0]);
        let lines = c.logs().iter().filter(|l| l.contains("cluster store not reachable")).count();
        assert!(lines <= 4, "{lines} lines for 2 instances");
        // the fallback ("local"): each instance counts alone, 5 each
        let statuses = c.send("bob", 14).await;
        assert_eq!(admitted(&statuses), 10, "{statuses:?}");
        assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_explicit_insecure_url_skips_the_certificate_check_and_it_is_warned_about() {
    with_timeout(60, async {
        let dir = tempfile::tempdir().unwrap();
        let redis = tls_redis(dir.path(), &Pki::new("a CA nobody was told about"));
        let d = dir.path().display();
        let cluster = format!(
            "store = \"rediss://127.0.0.1:{}/#insecure\"\nstore_client_cert = \"{d}/client.pem\"\nstore_client_key = \"{d}/client.key\"",
            redis.server.port
        );
        let c = instances(1, &cluster).await;
        let took = c.until_global(Duration::from_secs(10)).await;
        assert!(took.is_some(), "{:#?}", c.logs());
        let warned = c.logs().iter().any(|l| l.contains("WARN") && l.contains("NOT checked"));
        assert!(warned, "no warning about #insecure: {:#?}", c.logs());
    })
    .await;
}

/// A master, its replica, and a Sentinel watching them with short timeouts.
struct Sentineled {
    master: Server,
    replica: Server,
    sentinel: Server,
    _dir: tempfile::TempDir,
}

fn sentineled() -> Sentineled {
    let master = Server::plain(&[]);
    let replica = Server::plain(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("sentinel.conf");
    let sentinel_args = |port: u16| {
        // down after 500 ms; quorum 1 (one sentinel); a failover retried after 2 s
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 500\nsentinel failover-timeout mymaster 2000\n",
            dir.path().display(),
            master.port
        );
        std::fs::write(&conf, text).unwrap();
        vec![
            conf.display().to_string(),
            "--sentinel".into(),
            "--port".into(),
            port.to_string(),
        ]
    };
    let sentinel = Server::start(sentinel_args, &[]);
    // the sentinel must know the replica before the master goes (it learns it from INFO)
    let start = Instant::now();
    while !sentinel
        .cli(&[], &["SENTINEL", "REPLICAS", "mymaster"])
        .contains(&replica.port.to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sentinel never saw the replica"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Sentineled {
        master,
        replica,
        sentinel,
        _dir: dir,
    }
}

impl Sentineled {
    fn master_port(&self) -> String {
        let out = self
            .sentinel
            .cli(&[], &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"]);
        out.lines().nth(1).unwrap_or_default().trim().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_instances_reach_the_master_and_follow_a_failover() {
    with_timeout(80, async {
        let mut s = sentineled();
        // a sentinel that is not there first: the next one is asked
        let cluster = format!(
            "store = \"redis+sentinel://127.0.0.1:{},127.0.0.1:{}/mymaster\"",
            free_port(),
            s.sentinel.port
        );
        let c = instances(2, &cluster).await;
        let took = c.until_global(Duration::from_secs(10)).await;
        assert!(took.is_some(), "never reached the master: {:#?}", c.logs());
        let before = c.send("carol", 12).await;
        assert!((5..=6).contains(&admitted(&before)), "{before:?}");
        let on_master = s.master.cli(&[], &["--scan", "--pattern", "gatehouse:rl:*"]);
        assert!(!on_master.trim().is_empty(), "the budget is not on the master");

        // the master goes; traffic (a new client each request) makes the instances notice
        let killed = Instant::now();
        s.master.kill();
        let traffic = {
            let urls: Vec<String> = c.proxies.iter().map(|p| p.url("/x")).collect();
            tokio::spawn(async move {
                let client = client();
                let mut statuses = Vec::new();
                for i in 0..400 {
                    let resp = client.get(&urls[i % urls.len()]).header("X-Client", format!("bg-{i}")).send().await;
                    statuses.push(resp.map_or(0, |r| r.status().as_u16()));
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                statuses
            })
        };
        let fell_back = poll_until(Duration::from_secs(5), || async {
            c.metric("gatehouse_cluster_fallbacks_total").await.iter().all(|v| *v >= 1.0)
        })
        .await;
        let replica_port = s.replica.port.to_string();
        let promoted = poll_until(Duration::from_secs(20), || async { s.master_port() == replica_port }).await;
        let promoted_at = killed.elapsed();
        let back = c.until_global(Duration::from_secs(15)).await;
        eprintln!(
            "master killed: fell back after {fell_back:?}; sentinel promoted the replica after {promoted_at:?}; instances global again {back:?} after that"
        );
        assert!(fell_back.is_some(), "the instances never noticed the master had gone");
        assert!(promoted.is_some(), "the sentinel never promoted the replica");
        let back = back.expect("the instances never followed the new master");
        assert!(back <= Duration::from_secs(3), "followed the new master after {back:?}");
        // counting globally again, on the new master
        let after = c.send("dave", 12).await;
        assert!((5..=6).contains(&admitted(&after)), "{after:?}");
        let statuses = traffic.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "a request failed: {statuses:?}");
        let logs = c.logs();
        let port = s.replica.port.to_string();
        assert!(
            logs.iter().any(|l| l.contains("cluster store connected") && l.contains(&port)),
            "no log line names the new master: {logs:#?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_over_tls_instances_reach_the_master() {
    with_timeout(60, async {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("sentinel test CA");
        let ca = pki.write_ca(dir.path(), "ca.pem");
        let (cert, key) = pki.issue(dir.path(), "server");
        pki.issue(dir.path(), "client");
        let d = dir.path().display();
        let tls = |port: u16| -> Vec<String> {
            let s = |p: &Path| p.display().to_string();
            [
                "--port", "0", "--tls-port", &port.to_string(), "--tls-cert-file", &s(&cert),
                "--tls-key-file", &s(&key), "--tls-ca-cert-file", &s(&ca), "--tls-replication", "yes",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect()
        };
        let cli_tls: Vec<String> = ["--tls", "--cacert", &format!("{d}/ca.pem"), "--cert", &format!("{d}/client.pem"), "--key", &format!("{d}/client.key")]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let master = Server::start(tls, &cli_tls);
        let replica_args = |port: u16| {
            let mut args = tls(port);
            args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), master.port.to_string()]);
            args
        };
        let replica = Server::start(replica_args, &cli_tls);
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(&conf, format!("dir {d}\nsentinel monitor mymaster 127.0.0.1 {} 1\n", master.port)).unwrap();
        let sentinel_args = |port: u16| {
            let mut args = vec![conf.display().to_string(), "--sentinel".to_string()];
            args.extend(tls(port));
            args
        };
        let sentinel = Server::start(sentinel_args, &cli_tls);
        let port = sentinel.port;
        let cluster = format!(
            "store = \"rediss+sentinel://127.0.0.1:{port}/mymaster\"\nstore_ca = \"{d}/ca.pem\"\nstore_client_cert = \"{d}/client.pem\"\nstore_client_key = \"{d}/client.key\""
        );
        let c = instances(2, &cluster).await;
        let took = c.until_global(Duration::from_secs(10)).await;
        assert!(took.is_some(), "never reached the master: {:#?}", c.logs());
        let statuses = c.send("erin", 12).await;
        eprintln!("through a TLS sentinel: global after {took:?}; statuses {statuses:?}");
        assert!((5..=6).contains(&admitted(&statuses)), "{statuses:?}");
        let on_master = master.cli(&cli_tls, &["--scan", "--pattern", "gatehouse:rl:*"]);
        assert!(!on_master.trim().is_empty(), "the budget is not on the master");
        drop(replica);
    })
    .await;
}
