//! Shared ACME (`[cluster] acme = "shared"`, `docs/cluster.md`) end to end: three real Gatehouse
//! processes on loopback sharing one real `redis-server` and one real Pebble. Orders are
//! validated by DNS-01 through an `exec` hook that sets TXT records in pebble-challtestsrv (which
//! pebble resolves through), so validation does not depend on which instance the CA reaches.
//!
//! What is checked: a cold start of three instances places one order per certificate and
//! registers one account, and all three serve the same certificates; a renewal is one order; a
//! lock holder killed mid-order has its order resumed (no second order); a holder paused past its
//! lock's TTL writes nothing when it wakes; a store down across the renewal time means no order
//! until it returns, then one; an emptied store is re-seeded from the local copies, no order;
//! HTTP-01 and TLS-ALPN-01 validated through an instance that cannot hold the lock pass, that
//! instance answering from the store.
//!
//! Needs `redis-server` and pebble (Debian packages; `tests/run.sh` installs them).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::pebble::{served_leaf, Pebble};
use support::redis::Redis;
use support::{client, echo_backend, json_str_field, Backend, TestProxy};

/// Pebble blocks of 6 ports each (after certs_doctor's 24400-24450).
const BASE_COLD: u16 = 24500;
const BASE_RENEW: u16 = 24510;
const BASE_KILLED: u16 = 24520;
const BASE_PAUSED: u16 = 24530;
const BASE_DOWN: u16 = 24540;
const BASE_EMPTIED: u16 = 24550;
const BASE_STALE_JOURNAL: u16 = 24560;
const BASE_ANSWERS: u16 = 24570;

const SECRET: &str = "cluster-acme-test-secret-0123456789";
/// `[cluster] lock_ttl` in these tests (the shortest allowed): a dead holder's lock goes soon.
const LOCK_TTL: Duration = Duration::from_secs(2);
const ISSUANCE: Duration = Duration::from_secs(60);
/// What pebble logs for every newAccount request.
const NEW_ACCOUNT_LOG: &str = "POST /sign-me-up -> calling handler()";

/// Pebble, the store, three instances' state dirs and configs, and the DNS hook.
struct Setup {
    pebble: Pebble,
    redis: Redis,
    backend: Backend,
    dir: tempfile::TempDir,
    sites: Vec<String>,
}

impl Setup {
    async fn start(base: u16, sites: usize, validity: Option<&str>) -> Setup {
        let env: Vec<(&str, &str)> = validity
            .map(|v| vec![("ACME_TESTBED_CERT_VALIDITY", v)])
            .unwrap_or_default();
        let pebble = Pebble::start(base, &env);
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            pebble,
            redis: Redis::start(),
            backend: echo_backend("app").await,
            sites: (1..=sites).map(|i| format!("s{i}.example.test")).collect(),
            dir,
        };
        setup.write_hook();
        setup
    }

    /// lego's `exec` protocol, through challtestsrv's management API. The first `present` after
    /// `slow_once` sleeps that long first (catching the holder mid-order).
    fn write_hook(&self) {
        let d = self.dir.path().display();
        let cts = self.pebble.var("CHALLTESTSRV_URL");
        let script = format!(
            r#"#!/bin/sh
set -eu
case "$1" in
  present)
    echo "present $2 $$" >> "{d}/hook.log"
    if mv "{d}/slow" "{d}/slow.taken" 2>/dev/null; then sleep "$(cat "{d}/slow.taken")"; fi
    curl -fsS -o /dev/null -X POST -d "{{\"host\":\"$2\",\"value\":\"$3\"}}" "{cts}/set-txt" ;;
  cleanup)
    curl -fsS -o /dev/null -X POST -d "{{\"host\":\"$2\"}}" "{cts}/clear-txt" ;;
  *) exit 2 ;;
esac
"#
        );
        let path = self.dir.path().join("dns-hook");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The next holder's first DNS publish waits `secs` (once).
    fn slow_once(&self, secs: u64) {
        std::fs::write(self.dir.path().join("slow"), secs.to_string()).unwrap();
    }

    /// Until the holder's hook is in its slow publish.
    async fn wait_slow_taken(&self) {
        let taken = self.dir.path().join("slow.taken");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !taken.exists() {
            assert!(
                Instant::now() < deadline,
                "the holder never ran its DNS hook"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("state-{i}"))
    }

    fn config_path(&self, i: usize) -> PathBuf {
        let path = self.dir.path().join(format!("gh-{i}.toml"));
        if !path.exists() {
            std::fs::create_dir_all(self.state_dir(i)).unwrap();
            std::fs::write(&path, self.config(i)).unwrap();
        }
        path
    }

    fn config(&self, i: usize) -> String {
        let mut sites = String::new();
        for name in &self.sites {
            sites.push_str(&format!(
                "\n[[site]]\nhosts = [\"{name}\"]\ntls = \"acme\"\n  [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n"
            ));
        }
        format!(
            r#"
[listen]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 1
state_dir = "{state}"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
challenge = "dns-01"
dns = {{ provider = "exec", command = "{hook}", resolver = "{dns}", propagation_timeout = "30s" }}
retry_initial = "1s"
retry_max = "2s"

[cluster]
store = "{store}"
secret = "{SECRET}"
instance = "gh-{i}"
acme = "shared"
lock_ttl = "{ttl}s"
{sites}
[upstream.app]
servers = ["{backend}"]
"#,
            state = self.state_dir(i).display(),
            directory = self.pebble.var("ACME_DIRECTORY_URL"),
            ca_root = self.pebble.var("ACME_CA_FILE"),
            hook = self.dir.path().join("dns-hook").display(),
            dns = self.pebble.var("PEBBLE_DNS_SERVER"),
            store = self.redis.url(),
            ttl = LOCK_TTL.as_secs(),
            backend = self.backend.addr,
        )
    }

    async fn instance(&self, i: usize) -> TestProxy {
        TestProxy::start_at_with_env(&self.config_path(i), &[], true).await
    }

    async fn instances(&self) -> Vec<TestProxy> {
        let mut all = Vec::new();
        for i in 0..3 {
            all.push(self.instance(i).await);
        }
        all
    }

    fn new_orders(&self) -> usize {
        self.pebble.new_orders()
    }

    fn new_accounts(&self) -> usize {
        let log = self.pebble.log();
        log.lines().filter(|l| l.contains(NEW_ACCOUNT_LOG)).count()
    }

    /// The leaf each instance serves for `sni` (pebble-issued only; `None` for none yet).
    async fn leaves(&self, proxies: &[&TestProxy], sni: &str) -> Vec<Option<Vec<u8>>> {
        let root = self.pebble.root();
        let mut leaves = Vec::new();
        for p in proxies {
            leaves.push(served_leaf(p.https(), sni, &root).await.ok());
        }
        leaves
    }

    /// Until every one of `proxies` serves one and the same pebble certificate for `sni` that
    /// `pass` accepts; that certificate.
    async fn same_leaf(
        &self,
        proxies: &[&TestProxy],
        sni: &str,
        max: Duration,
        pass: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let deadline = Instant::now() + max;
        loop {
            let leaves = self.leaves(proxies, sni).await;
            if let Some(Some(first)) = leaves.first() {
                if pass(first) && leaves.iter().all(|l| l.as_ref() == Some(first)) {
                    return first.clone();
                }
            }
            if Instant::now() >= deadline {
                let got: Vec<String> = leaves
                    .iter()
                    .map(|l| l.as_ref().map_or("none".into(), |d| short(d)))
                    .collect();
                panic!(
                    "{sni}: not one certificate on every instance within {max:?}: {got:?}{}",
                    self.diagnostics(proxies)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn diagnostics(&self, proxies: &[&TestProxy]) -> String {
        let tail = |text: String, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = String::new();
        for (i, p) in proxies.iter().enumerate() {
            out.push_str(&format!(
                "\n--- instance {i}:\n{}",
                tail(p.logs().join("\n"), 25)
            ));
        }
        out.push_str(&format!("\n--- pebble:\n{}", tail(self.pebble.log(), 15)));
        out
    }
}

/// The instance whose log has a line with this `message`, and that line.
fn find_logged(proxies: &[&TestProxy], message: &str) -> Option<(usize, String)> {
    proxies.iter().enumerate().find_map(|(i, p)| {
        p.logs()
            .into_iter()
            .find(|l| json_str_field(l, "message").as_deref() == Some(message))
            .map(|l| (i, l))
    })
}

async fn wait_logged(proxies: &[&TestProxy], message: &str, max: Duration) -> (usize, String) {
    let deadline = Instant::now() + max;
    loop {
        if let Some(found) = find_logged(proxies, message) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "nobody logged {message:?} within {max:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A number field of a JSON log line.
fn json_num(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn short(der: &[u8]) -> String {
    let sum: u64 = der
        .iter()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
    format!("{sum:016x}")
}

/// A metric of the instance (0 when absent).
async fn metric(proxy: &TestProxy, series: &str) -> f64 {
    let admin = proxy.admin_addr().await;
    let text = match client().get(format!("http://{admin}/metrics")).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A certificate's notAfter and notBefore, Unix seconds.
fn validity(der: &[u8]) -> (u64, u64) {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let v = cert.validity();
    (
        v.not_before.timestamp() as u64,
        v.not_after.timestamp() as u64,
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn refs(proxies: &[TestProxy]) -> Vec<&TestProxy> {
    proxies.iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cold_instances_place_one_order_per_certificate_and_one_account() {
    support::with_timeout(150, async {
        let s = Setup::start(BASE_COLD, 5, None).await;
        let started = Instant::now();
        let proxies = s.instances().await;
        let all = refs(&proxies);
        for site in &s.sites {
            s.same_leaf(&all, site, ISSUANCE, |_| true).await;
        }
        let took = started.elapsed();
        // a second or two for a late duplicate to show in pebble's log
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "5 certificates on 3 instances after {took:?}: {} orders, {} accounts",
            s.new_orders(),
            s.new_accounts()
        );
        assert_eq!(s.new_orders(), 5, "{}", s.diagnostics(&all));
        assert_eq!(s.new_accounts(), 1, "{}", s.diagnostics(&all));
        // the key and certificate in the store are sealed: no PEM in it
        let dump = s.redis.cli(&["--scan", "--pattern", "gatehouse:acme:*"]);
        assert!(dump.contains("gatehouse:acme:account:"), "{dump}");
        for key in s.redis.keys("gatehouse:acme:cert:*") {
            let blob = s.redis.cli(&["HGET", &key, "blob"]);
            assert!(
                !blob.contains("PRIVATE KEY") && !blob.contains("BEGIN"),
                "{key} not sealed"
            );
        }
        let received: f64 = {
            let mut sum = 0.0;
            for p in &proxies {
                sum += metric(p, "gatehouse_cluster_acme_certs_received_total").await;
            }
            sum
        };
        // each certificate was ordered by one instance and received by the two others
        assert_eq!(received, 10.0, "{}", s.diagnostics(&all));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_one_order_for_the_cluster() {
    support::with_timeout(150, async {
        // 21 s certificates: renewal is due 14 s after issuance (a third left)
        let s = Setup::start(BASE_RENEW, 1, Some("21")).await;
        let proxies = s.instances().await;
        let all = refs(&proxies);
        let site = s.sites[0].clone();
        let first = s.same_leaf(&all, &site, ISSUANCE, |_| true).await;
        assert_eq!(s.new_orders(), 1);
        let renewed = s
            .same_leaf(&all, &site, Duration::from_secs(45), |d| {
                d != first.as_slice()
            })
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (nb, na) = (validity(&first), validity(&renewed));
        eprintln!(
            "renewed: first {}..{}, second {}..{}; {} orders",
            nb.0,
            nb.1,
            na.0,
            na.1,
            s.new_orders()
        );
        assert_eq!(s.new_orders(), 2, "{}", s.diagnostics(&all));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_order_has_its_order_resumed_by_another() {
    support::with_timeout(150, async {
        let s = Setup::start(BASE_KILLED, 1, None).await;
        s.slow_once(20);
        let mut proxies = s.instances().await;
        let site = s.sites[0].clone();
        let (holder, line) = wait_logged(
            &refs(&proxies),
            "order journaled in the cluster store",
            ISSUANCE,
        )
        .await;
        let token = json_num(&line, "token").unwrap();
        // the holder is now in its (slow) DNS publish: another instance's /cluster and
        // `gatehouse cluster status` name it as the lock's holder
        let other = (holder + 1) % 3;
        let admin = proxies[other].admin_addr().await;
        let holder_name = format!("gh-{holder}");
        let deadline = Instant::now() + Duration::from_secs(8);
        let locks = loop {
            let text = client()
                .get(format!("http://{admin}/cluster"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let view: serde_json::Value = serde_json::from_str(&text).unwrap();
            let locks = view["locks"].as_array().cloned().unwrap_or_default();
            if locks.iter().any(|l| l["instance"] == holder_name.as_str()) {
                break locks;
            }
            assert!(Instant::now() < deadline, "/cluster shows no lock of {holder_name}: {view}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let lock = locks.iter().find(|l| l["instance"] == holder_name.as_str()).unwrap();
        assert_eq!(lock["token"].as_u64(), Some(token), "{locks:?}");
        assert!(lock["lock"].as_str().unwrap().ends_with(":s1.example.test"), "{locks:?}");
        let status = support::run_gatehouse(
            &["cluster", "status", "--admin", &admin.to_string()],
            &[],
            &[],
        );
        s.wait_slow_taken().await;
        let row = format!("  {holder_name}  token {token}  ");
        assert!(status.stdout.contains("ACME LOCKS") && status.stdout.contains(&row), "{}", status.stdout);
        proxies[holder].send_signal("KILL");
        let killed_at = Instant::now();
        let mut dead = proxies.remove(holder);
        dead.wait_exit(Duration::from_secs(5)).await;
        let others = refs(&proxies);
        s.same_leaf(&others, &site, ISSUANCE, |_| true).await;
        let served_after = killed_at.elapsed();
        let (_, resumed) = wait_logged(
            &others,
            "resuming the order journaled by a former lock holder",
            Duration::from_secs(1),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "holder {holder} (token {token}) killed; the others serve the certificate {served_after:?} later; {} order(s); {resumed}",
            s.new_orders()
        );
        assert_eq!(s.new_orders(), 1, "{}", s.diagnostics(&others));
        assert_eq!(json_num(&resumed, "journal_token"), Some(token));
        assert!(
            served_after < LOCK_TTL + Duration::from_secs(12),
            "served {served_after:?} after the kill{}",
            s.diagnostics(&others)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lock_writes_nothing_when_it_wakes() {
    support::with_timeout(150, async {
        let s = Setup::start(BASE_PAUSED, 1, None).await;
        s.slow_once(6);
        let proxies = s.instances().await;
        let all = refs(&proxies);
        let site = s.sites[0].clone();
        let (holder, line) =
            wait_logged(&all, "order journaled in the cluster store", ISSUANCE).await;
        let old_token = json_num(&line, "token").unwrap();
        s.wait_slow_taken().await;
        proxies[holder].send_signal("STOP");
        let others: Vec<&TestProxy> = (0..3).filter(|i| *i != holder).map(|i| &proxies[i]).collect();
        let leaf = s.same_leaf(&others, &site, ISSUANCE, |_| true).await;
        let key = s.redis.keys("gatehouse:acme:cert:*").pop().expect("a stored certificate");
        let stored_token: u64 = s.redis.cli(&["HGET", &key, "token"]).trim().parse().unwrap();
        assert!(stored_token > old_token, "stored under {stored_token}, paused holder had {old_token}");
        // the paused one wakes long past its TTL, finishes its order and tries to store it
        proxies[holder].send_signal("CONT");
        let woken = &proxies[holder];
        let deadline = Instant::now() + Duration::from_secs(60);
        let refusal = "cluster: fenced write refused; nothing was written";
        let stored = "certificate issued and stored for the cluster";
        while find_logged(&[woken], refusal).is_none() && find_logged(&[woken], stored).is_none() {
            assert!(Instant::now() < deadline, "the woken holder never finished its order{}", s.diagnostics(&all));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refused = metric(&proxies[holder], "gatehouse_cluster_acme_fenced_refusals_total").await;
        let lost = metric(
            &proxies[holder],
            "gatehouse_cluster_acme_lock_changes_total{event=\"lost\"}",
        )
        .await;
        let after: u64 = s.redis.cli(&["HGET", &key, "token"]).trim().parse().unwrap();
        eprintln!(
            "paused holder {holder} (token {old_token}); the store kept token {after}; refusals {refused}, lost {lost}; {} order(s)",
            s.new_orders()
        );
        assert_eq!(after, stored_token, "the woken holder overwrote the store");
        assert!(find_logged(&[woken], refusal).is_some());
        assert!(refused >= 1.0);
        // and it serves what the store has
        s.same_leaf(&all, &site, Duration::from_secs(20), |d| d == leaf.as_slice()).await;
        assert_eq!(s.new_orders(), 1, "{}", s.diagnostics(&all));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_across_the_renewal_time_means_no_order_until_it_returns_then_one() {
    support::with_timeout(150, async {
        let mut s = Setup::start(BASE_DOWN, 1, Some("24")).await;
        let proxies = s.instances().await;
        let all = refs(&proxies);
        let site = s.sites[0].clone();
        let first = s.same_leaf(&all, &site, ISSUANCE, |_| true).await;
        assert_eq!(s.new_orders(), 1);
        s.redis.kill();
        let killed = Instant::now();
        let (not_before, not_after) = validity(&first);
        let renew_at = not_after - (not_after - not_before) / 3;
        // past the renewal time, with the store away
        let wait = (renew_at + 3).saturating_sub(unix_now());
        tokio::time::sleep(Duration::from_secs(wait)).await;
        assert_eq!(s.new_orders(), 1, "ordered while the store was down{}", s.diagnostics(&all));
        let still = s.leaves(&all, &site).await;
        assert!(still.iter().all(|l| l.as_deref() == Some(first.as_slice())), "the current certificate stopped serving");
        // back, empty
        s.redis.restart();
        let back = Instant::now();
        let down = killed.elapsed();
        let renewed = s
            .same_leaf(&all, &site, Duration::from_secs(30), |d| d != first.as_slice())
            .await;
        let took = back.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "store down {down:?}, across the renewal time (back 3 s after it); renewed on all 3 {took:?} after it was back; {} orders",
            s.new_orders()
        );
        assert_eq!(s.new_orders(), 2, "{}", s.diagnostics(&all));
        assert!(validity(&renewed).1 > not_after);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_store_is_filled_again_from_local_copies_without_orders() {
    support::with_timeout(150, async {
        let s = Setup::start(BASE_EMPTIED, 2, None).await;
        let mut proxies = s.instances().await;
        for site in &s.sites {
            s.same_leaf(&refs(&proxies), site, ISSUANCE, |_| true).await;
        }
        let (orders, accounts) = (s.new_orders(), s.new_accounts());
        assert_eq!((orders, accounts), (2, 1));
        let before = s.redis.keys("gatehouse:acme:cert:*");
        assert_eq!(before.len(), 2);
        // emptied while they run: they keep serving and order nothing
        s.redis.cli(&["FLUSHALL"]);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(s.new_orders(), orders);
        // restarted on their state dirs: the local copies fill the store again
        proxies.clear();
        let restarted = Instant::now();
        let proxies = s.instances().await;
        let all = refs(&proxies);
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.redis.keys("gatehouse:acme:cert:*") != before {
            assert!(
                Instant::now() < deadline,
                "the store was not re-seeded{}",
                s.diagnostics(&all)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reseeded = restarted.elapsed();
        for site in &s.sites {
            s.same_leaf(&all, site, Duration::from_secs(10), |_| true)
                .await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "store re-seeded {reseeded:?} after the restart; {} orders, {} accounts",
            s.new_orders(),
            s.new_accounts()
        );
        assert_eq!(
            (s.new_orders(), s.new_accounts()),
            (orders, accounts),
            "{}",
            s.diagnostics(&all)
        );
    })
    .await;
}

/// The answers test's instance `i`: `[acme]` with HTTP-01 (the last site TLS-ALPN-01), its
/// listeners on `ip` at `ports` (HTTP, HTTPS; 0: any). Without `acme_sites` it has no
/// `tls = "acme"` site, so it never takes a lock; a site with a certificate file of its own
/// keeps its HTTPS listener up either way.
fn answers_config(s: &Setup, i: usize, ip: &str, ports: (u16, u16), acme_sites: bool) -> String {
    let mut sites = String::new();
    let count = if acme_sites { s.sites.len() } else { 0 };
    for (n, name) in s.sites.iter().take(count).enumerate() {
        let own = if n + 1 == s.sites.len() {
            "acme = { challenge = \"tls-alpn-01\" }\n"
        } else {
            ""
        };
        sites.push_str(&format!(
            "\n[[site]]\nhosts = [\"{name}\"]\ntls = \"acme\"\n{own}  [[site.route]]\n  path = \"/\"\n  upstream = \"app\"\n"
        ));
    }
    let d = s.dir.path().display();
    format!(
        r#"
[listen]
http = "{ip}:{http}"
https = "{ip}:{https}"
admin = "127.0.0.1:0"

[server]
workers = 1
state_dir = "{state}"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
challenge = "http-01"
retry_initial = "1s"
retry_max = "2s"

[cluster]
store = "{store}"
secret = "{SECRET}"
instance = "gh-{i}"
acme = "shared"
lock_ttl = "{ttl}s"
{sites}
[[site]]
hosts = ["other.test"]
tls = {{ cert = "{d}/other.crt", key = "{d}/other.key" }}
  [[site.route]]
  path = "/"
  upstream = "app"

[upstream.app]
servers = ["{backend}"]
"#,
        http = ports.0,
        https = ports.1,
        state = s.state_dir(i).display(),
        directory = s.pebble.var("ACME_DIRECTORY_URL"),
        ca_root = s.pebble.var("ACME_CA_FILE"),
        store = s.redis.url(),
        ttl = LOCK_TTL.as_secs(),
        backend = s.backend.addr,
    )
}

/// Starts instance `i` of the answers test (`config` from `answers_config`).
async fn start_answers_instance(s: &Setup, i: usize, config: &str) -> TestProxy {
    let path = s.dir.path().join(format!("gh-{i}.toml"));
    std::fs::create_dir_all(s.state_dir(i)).unwrap();
    std::fs::write(&path, config).unwrap();
    TestProxy::start_at_with_env(&path, &[], true).await
}

/// Tells Pebble's DNS (challtestsrv) that `name` is at `ip`: the CA validates there.
async fn resolve_to(s: &Setup, name: &str, ip: &str) {
    let url = format!("{}/add-a", s.pebble.var("CHALLTESTSRV_URL"));
    let body = format!(r#"{{"host":"{name}","addresses":["{ip}"]}}"#);
    let resp = client().post(url).body(body).send().await.expect("add-a");
    assert!(resp.status().is_success(), "challtestsrv add-a: {resp:?}");
}

/// The sum of a metric's lines carrying every one of `labels` (0 when absent).
async fn metric_labelled(proxy: &TestProxy, name: &str, labels: &[&str]) -> f64 {
    let admin = proxy.admin_addr().await;
    let text = match client().get(format!("http://{admin}/metrics")).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_validated_through_an_instance_that_did_not_order_passes() {
    support::with_timeout(90, async {
        // s1, s2 over HTTP-01, s3 over TLS-ALPN-01; Pebble validates all three at 127.0.0.3
        let s = Setup::start(BASE_ANSWERS, 3, None).await;
        let made = rcgen::generate_simple_self_signed(vec!["other.test".to_string()]).unwrap();
        std::fs::write(s.dir.path().join("other.crt"), made.cert.pem()).unwrap();
        std::fs::write(s.dir.path().join("other.key"), made.key_pair.serialize_pem()).unwrap();
        for name in &s.sites {
            resolve_to(&s, name, "127.0.0.3").await;
        }
        // instance 2 on Pebble's validation ports, without the ACME sites: it cannot take a lock
        let pebble_ports = (s.pebble.base + 2, s.pebble.base + 3);
        let answering = answers_config(&s, 2, "127.0.0.3", pebble_ports, false);
        let third = start_answers_instance(&s, 2, &answering).await;
        let up = support::poll_until(Duration::from_secs(10), || async {
            metric(&third, "gatehouse_cluster_store_up").await == 1.0
        })
        .await;
        assert!(up.is_some(), "instance 2 never reached the store");
        let started = Instant::now();
        let mut proxies = Vec::new();
        for (i, ip) in [(0, "127.0.0.1"), (1, "127.0.0.2")] {
            let config = answers_config(&s, i, ip, (0, 0), true);
            proxies.push(start_answers_instance(&s, i, &config).await);
        }
        let ordering = refs(&proxies);
        for site in &s.sites {
            s.same_leaf(&ordering, site, Duration::from_secs(30), |_| true)
                .await;
        }
        let issued = started.elapsed();
        proxies.push(third);
        let all = refs(&proxies);
        let stored = "certificate issued and stored for the cluster";
        let holders: Vec<usize> = all
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let logs = p.logs();
                let n = logs
                    .iter()
                    .filter(|l| json_str_field(l, "message").as_deref() == Some(stored))
                    .count();
                std::iter::repeat_n(i, n)
            })
            .collect();
        let from_store = "gatehouse_acme_challenges_from_store_total";
        let http01 = metric_labelled(all[2], from_store, &["http-01", "result=\"hit\""]).await;
        let alpn = metric_labelled(all[2], from_store, &["tls-alpn-01", "result=\"hit\""]).await;
        // the answering instance joins with the sites: it takes the certificates from the store
        let path = s.dir.path().join("gh-2.toml");
        std::fs::write(&path, answers_config(&s, 2, "127.0.0.3", pebble_ports, true)).unwrap();
        let reloaded = Instant::now();
        all[2].send_signal("HUP");
        for site in &s.sites {
            s.same_leaf(&all, site, Duration::from_secs(15), |_| true)
                .await;
        }
        let joined = reloaded.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "3 certificates issued {issued:?} after start, stored by instances {holders:?}; instance 2 answered {http01} HTTP-01 and {alpn} TLS-ALPN-01 validations from the store; reloaded with the sites, it served them {joined:?} later; {} orders, {} accounts",
            s.new_orders(),
            s.new_accounts()
        );
        assert_eq!(holders.len(), 3, "{}", s.diagnostics(&all));
        assert!(!holders.contains(&2), "{}", s.diagnostics(&all));
        assert!(http01 >= 2.0, "{http01} HTTP-01 hits{}", s.diagnostics(&all));
        assert!(alpn >= 1.0, "{alpn} TLS-ALPN-01 hits{}", s.diagnostics(&all));
        assert_eq!(
            (s.new_orders(), s.new_accounts()),
            (3, 1),
            "{}",
            s.diagnostics(&all)
        );
    })
    .await;
}

/// The store side alone (no CA): one holder per lock; a former holder whose lock expired and was
/// taken writes nothing; blobs are sealed (no PEM in the store, another secret cannot open them);
/// a re-seed never replaces a newer certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_fence_their_writes_and_blobs_are_sealed() {
    use gatehouse::cluster::acme::{CertBlob, Journal, SharedAcme, SharedError};
    use gatehouse::cluster::connect::Endpoint;
    use gatehouse::config::{Cluster, ClusterAcme, ClusterSecret, Secret};
    use gatehouse::load::StorePem;
    support::with_timeout(30, async {
        let redis = Redis::start();
        let settings = |instance: &str, secret: &str| {
            let cluster = Cluster {
                name: "gatehouse".into(),
                store: redis.url(),
                secret: ClusterSecret::Inline(Secret(secret.as_bytes().to_vec())),
                instance: instance.into(),
                timeout: Duration::from_millis(200),
                rate_limits: Default::default(),
                rate_limit_fallback: Default::default(),
                acme: ClusterAcme::Shared,
                lock_ttl: Duration::from_secs(2),
                sentinel: None,
                store_tls: Default::default(),
            };
            let endpoint = Endpoint::new(&cluster, &StorePem::default());
            let shared = SharedAcme::start(
                &cluster,
                endpoint,
                Secret(secret.as_bytes().to_vec()),
                gatehouse::metrics::Metrics::new().unwrap(),
            );
            shared.unwrap()
        };
        let (a, b) = (settings("a", SECRET), settings("b", SECRET));
        let id = SharedAcme::cert_id("https://ca.test/dir", &["x.test".to_string()]);
        let held_a = a
            .try_lock(&id)
            .await
            .unwrap()
            .expect("a takes the free lock");
        assert!(b.try_lock(&id).await.unwrap().is_none(), "a second holder");
        let journal = Journal {
            url: "https://ca.test/order/1".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n".into(),
            names: vec!["x.test".into()],
            token: held_a.token(),
            instance: "a".into(),
        };
        held_a.write_journal(&journal).await.unwrap();
        assert_eq!(b.load_journal(&id).await.unwrap(), Some(journal));
        let journal_key = redis.keys("gatehouse:acme:order:*").pop().unwrap();
        assert!(!redis.cli(&["GET", &journal_key]).contains("PRIVATE KEY"));
        // a stalls: its lock expires (deleted here, as the TTL would) and b takes it
        let lock_key = redis.keys("gatehouse:acme:lock:*").pop().unwrap();
        redis.cli(&["DEL", &lock_key]);
        let held_b = b
            .try_lock(&id)
            .await
            .unwrap()
            .expect("b takes the expired lock");
        assert!(held_b.token() > held_a.token());
        let cert = |who: &str| CertBlob {
            chain_pem: format!("chain of {who}"),
            key_pem: format!("key of {who}"),
        };
        let refused = held_a.write_cert(&cert("a"), 2_000_000_000).await;
        assert!(
            matches!(refused, Err(SharedError::Fenced(..))),
            "{refused:?}"
        );
        assert!(held_a.is_lost());
        assert!(
            b.load_cert(&id).await.unwrap().is_none(),
            "a's write landed"
        );
        held_b.write_cert(&cert("b"), 2_000_000_000).await.unwrap();
        assert_eq!(a.load_cert(&id).await.unwrap().unwrap().key_pem, "key of b");
        assert!(
            b.load_journal(&id).await.unwrap().is_none(),
            "the journal outlived the certificate"
        );
        // an older local copy does not replace it; an emptied store takes it
        assert!(!a
            .reseed_cert(&id, &cert("old"), 1_900_000_000)
            .await
            .unwrap());
        redis.cli(&["FLUSHALL"]);
        assert!(a
            .reseed_cert(&id, &cert("old"), 1_900_000_000)
            .await
            .unwrap());
        assert_eq!(
            b.load_cert(&id).await.unwrap().unwrap().key_pem,
            "key of old"
        );
        // another secret opens nothing
        let stranger = settings("c", "another-secret-0123456789abcdef");
        let opened = stranger.load_cert(&id).await;
        assert!(matches!(opened, Err(SharedError::Crypt(_))), "{opened:?}");
        drop((held_a, held_b));
    })
    .await;
}

/// A journal whose order the CA does not know (expired, another CA's) is dropped and a new order
/// placed: one order, and the certificate on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_an_order_the_ca_does_not_know_is_dropped_for_a_new_order() {
    use gatehouse::cluster::acme::{Journal, SharedAcme};
    use gatehouse::cluster::connect::Endpoint;
    use gatehouse::config::{Cluster, ClusterAcme, ClusterSecret, Secret};
    use gatehouse::load::StorePem;
    support::with_timeout(120, async {
        let s = Setup::start(BASE_STALE_JOURNAL, 1, None).await;
        let directory = s.pebble.var("ACME_DIRECTORY_URL").to_string();
        let cluster = Cluster {
            name: "gatehouse".into(),
            store: s.redis.url(),
            secret: ClusterSecret::Inline(Secret(SECRET.as_bytes().to_vec())),
            instance: "test".into(),
            timeout: Duration::from_millis(200),
            rate_limits: Default::default(),
            rate_limit_fallback: Default::default(),
            acme: ClusterAcme::Shared,
            lock_ttl: LOCK_TTL,
            sentinel: None,
            store_tls: Default::default(),
        };
        let endpoint = Endpoint::new(&cluster, &StorePem::default());
        let secret = Secret(SECRET.as_bytes().to_vec());
        let metrics = gatehouse::metrics::Metrics::new().unwrap();
        let shared = SharedAcme::start(&cluster, endpoint, secret, metrics).unwrap();
        let id = SharedAcme::cert_id(&directory, &s.sites);
        let lock = shared.try_lock(&id).await.unwrap().unwrap();
        let base = directory.trim_end_matches("/dir");
        let journal = Journal {
            url: format!("{base}/my-order/no-such-order"),
            key_pem: rcgen::KeyPair::generate().unwrap().serialize_pem(),
            names: s.sites.clone(),
            token: lock.token(),
            instance: "gone".into(),
        };
        lock.write_journal(&journal).await.unwrap();
        drop(lock);
        let lock_key = s.redis.keys("gatehouse:acme:lock:*");
        for key in lock_key {
            s.redis.cli(&["DEL", &key]);
        }
        let proxies = s.instances().await;
        let all = refs(&proxies);
        s.same_leaf(&all, &s.sites[0], ISSUANCE, |_| true).await;
        wait_logged(
            &all,
            "the journaled order cannot be resumed; placing a new one",
            Duration::from_secs(1),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(s.new_orders(), 1, "{}", s.diagnostics(&all));
        assert!(
            s.redis.keys("gatehouse:acme:order:*").is_empty(),
            "the journal stayed"
        );
    })
    .await;
}
