//! Replicas by DNS: a name that resolves to several addresses spreads traffic over all of them,
//! and a change of the answer adds and drains servers without failed requests.
//!
//! The name is answered by `support::dns::TestDns`, a real DNS server on 127.0.0.1:0 that the
//! proxy asks directly through `[server] resolver`: no /etc/hosts, no system resolver, nothing
//! to install. The replicas are real HTTP servers on 127.0.0.1:P, 127.0.0.2:P, ... sharing one
//! port as compose's replicas do (Linux routes all of 127.0.0.0/8 to the loopback interface).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::dns::{listeners_on_one_port, TestDns};
use support::{client, echo_backend_on, eventually, with_timeout, Backend, TestProxy};
use tokio::task::JoinHandle;

const NAME: &str = "api.test";
const RESOLVE_EVERY: Duration = Duration::from_millis(500);
/// How long after the answer changes the old set may still get new requests: the next round (at
/// most `RESOLVE_EVERY` away) plus room for a busy machine.
const SWITCH: Duration = Duration::from_millis(2000);

/// Echo backends on 127.0.0.1..=n, all on one port, each answering `x-backend: 127.0.0.I`.
struct Replicas {
    port: u16,
    _backends: Vec<Backend>,
}

impl Replicas {
    async fn start(n: u8) -> Replicas {
        let (port, listeners) = listeners_on_one_port(n).await;
        let backends = listeners
            .into_iter()
            .map(|l| {
                let name = l.local_addr().unwrap().ip().to_string();
                echo_backend_on(l, &name)
            })
            .collect();
        Replicas {
            port,
            _backends: backends,
        }
    }
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, i)
}

fn ips(set: &[u8]) -> Vec<Ipv4Addr> {
    set.iter().map(|&i| ip(i)).collect()
}

fn config(dns: &TestDns, port: u16) -> String {
    format!(
        r#"
[listen]
http = "127.0.0.1:0"

[server]
workers = 2
resolver = ["{dns}"]

[[site]]
  [[site.route]]
  path = "/"
  upstream = "api"

[upstream.api]
servers = ["{NAME}:{port}"]
resolve_every = "{every}ms"
"#,
        dns = dns.addr,
        every = RESOLVE_EVERY.as_millis()
    )
}

#[tokio::test]
async fn a_name_with_three_addresses_spreads_over_all_three() {
    with_timeout(30, async {
        let replicas = Replicas::start(3).await;
        let dns = TestDns::start().await;
        dns.set(NAME, &ips(&[1, 2, 3]));
        let proxy = TestProxy::start(&config(&dns, replicas.port)).await;
        let http = client();
        let mut counts = BTreeMap::new();
        for i in 0..30 {
            let resp = http
                .get(proxy.url(&format!("/r/{i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "request {i}");
            let backend = support::header(&resp, "x-backend").unwrap();
            *counts.entry(backend).or_insert(0) += 1;
        }
        let want: BTreeMap<String, usize> = (1..=3).map(|i| (ip(i).to_string(), 10)).collect();
        assert_eq!(
            counts, want,
            "round robin over the three addresses of {NAME}"
        );
        assert!(dns.queries() >= 2, "the proxy asked the test DNS server");
    })
    .await;
}

#[tokio::test]
async fn an_unknown_name_answers_503_until_it_appears() {
    with_timeout(30, async {
        let replicas = Replicas::start(2).await;
        let dns = TestDns::start().await;
        let proxy = TestProxy::start(&config(&dns, replicas.port)).await;
        let http = client();
        let status = || async { http.get(proxy.url("/")).send().await.unwrap() };
        assert_eq!(status().await.status(), 503);
        // still 503 after two more rounds of NXDOMAIN (each round asks A and AAAA)
        let asked = dns.queries();
        eventually(SWITCH * 2, "two more rounds", || dns.queries() >= asked + 4).await;
        assert_eq!(status().await.status(), 503);

        dns.set(NAME, &[ip(2)]);
        let set_at = Instant::now();
        loop {
            let resp = status().await;
            if resp.status() == 200 {
                assert_eq!(support::header(&resp, "x-backend").unwrap(), "127.0.0.2");
                break;
            }
            assert_eq!(resp.status(), 503, "before the name resolves");
            let waited = set_at.elapsed();
            assert!(
                waited < SWITCH,
                "still 503 {waited:?} after {NAME} appeared"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// One request of the load: when it started, and which replica answered or what went wrong.
struct Outcome {
    started: Instant,
    backend: Result<String, String>,
}

type Log = Arc<Mutex<Vec<Outcome>>>;

/// `clients` tasks, each sending GETs one after another (2 ms apart) until `stop`.
fn load(url: String, clients: usize, stop: Arc<AtomicBool>, log: Log) -> Vec<JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (url, stop, log) = (url.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let http = client();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let backend = match http.get(&url).send().await {
                        Ok(resp) if resp.status() == 200 => {
                            let name = support::header(&resp, "x-backend").unwrap_or_default();
                            resp.bytes()
                                .await
                                .map(|_| name)
                                .map_err(|e| format!("{e:?}"))
                        }
                        Ok(resp) => Err(format!("status {}", resp.status())),
                        Err(e) => Err(format!("{e:?}")),
                    };
                    log.lock().unwrap().push(Outcome { started, backend });
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

/// An answer and when it was put in place.
struct Step {
    at: Instant,
    set: BTreeSet<String>,
}

/// Changes the answer to `set`, then polls until every replica in it has answered a request
/// started since, and 100 requests have started after the switch window, so that `check` has a
/// stretch of traffic in which only `set` may answer.
async fn change(dns: &TestDns, log: &Log, set: &[u8]) -> Step {
    let at = Instant::now();
    dns.set(NAME, &ips(set));
    let set: BTreeSet<String> = set.iter().map(|&i| ip(i).to_string()).collect();
    eventually(SWITCH, "every replica in the answer gets requests", || {
        let log = log.lock().unwrap();
        let seen: BTreeSet<&str> = log
            .iter()
            .filter(|o| o.started >= at)
            .filter_map(|o| o.backend.as_deref().ok())
            .collect();
        set.iter().all(|name| seen.contains(name.as_str()))
    })
    .await;
    eventually(SWITCH * 3, "100 requests after the switch window", || {
        let log = log.lock().unwrap();
        log.iter().filter(|o| o.started >= at + SWITCH).count() >= 100
    })
    .await;
    Step { at, set }
}

/// No request failed; while each answer was in place, requests started `SWITCH` after the change
/// went only to its replicas, and each of them got one within `SWITCH`.
fn check(log: &[Outcome], steps: &[Step], end: Instant) {
    let failed: Vec<&String> = log
        .iter()
        .filter_map(|o| o.backend.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        log.len(),
        failed.first()
    );
    for (k, step) in steps.iter().enumerate() {
        let until = steps.get(k + 1).map_or(end, |next| next.at);
        let during: Vec<(Duration, &str)> = log
            .iter()
            .filter(|o| o.started >= step.at && o.started < until)
            .filter_map(|o| Some((o.started - step.at, o.backend.as_deref().ok()?)))
            .collect();
        let last_old = during
            .iter()
            .filter(|(_, name)| !step.set.contains(*name))
            .map(|(after, _)| *after)
            .max();
        let first_new: Vec<Option<Duration>> = step
            .set
            .iter()
            .map(|name| {
                during
                    .iter()
                    .find(|(_, n)| n == name)
                    .map(|(after, _)| *after)
            })
            .collect();
        eprintln!(
            "answer {:?}: {} requests; last new request to a replica outside it {last_old:?} after the change; first to each replica in it {first_new:?}",
            step.set,
            during.len(),
        );
        if let Some(late) = last_old {
            assert!(
                late < SWITCH,
                "answer {:?}: a replica outside it got a request started {late:?} after the change",
                step.set
            );
        }
        for (name, first) in step.set.iter().zip(&first_new) {
            assert!(
                first.is_some_and(|d| d < SWITCH),
                "answer {:?}: {name} got its first request {first:?} after the change",
                step.set
            );
        }
    }
}

#[tokio::test]
async fn changing_the_answer_adds_and_drains_replicas_without_failed_requests() {
    with_timeout(90, async {
        let replicas = Replicas::start(4).await;
        let dns = TestDns::start().await;
        dns.set(NAME, &ips(&[1, 2, 3]));
        let proxy = TestProxy::start(&config(&dns, replicas.port)).await;
        let (stop, log) = (Arc::new(AtomicBool::new(false)), Log::default());
        let clients = load(proxy.url("/"), 4, stop.clone(), log.clone());
        let mut steps = Vec::new();
        // three, two of them, a new set (one kept, one never seen), back to the first three
        for set in [&[1, 2, 3][..], &[1, 2], &[2, 4], &[1, 2, 3]] {
            steps.push(change(&dns, &log, set).await);
        }
        stop.store(true, Ordering::Relaxed);
        for task in clients {
            task.await.unwrap();
        }
        check(&log.lock().unwrap(), &steps, Instant::now());
    })
    .await;
}

/// A reload's new upstreams at a DNS server that never answers: each name is given up on after
/// `resolve_timeout`, and all of them at once (four upstreams, six names), so the reload is
/// applied after about one `resolve_timeout`: not six of them one after another, nor five
/// seconds per name as without the key.
#[tokio::test]
async fn a_reload_waits_one_resolve_timeout_for_all_its_new_names() {
    with_timeout(60, async {
        // reads every query (the kernel queues them) and never answers
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[server]\nworkers = 1\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = { status = 200, body = \"ok\" }\n";
        let proxy = TestProxy::start(base).await;
        let admin = proxy.admin_addr().await;
        let mut text = base.replace(
            "workers = 1\n",
            &format!(
                "workers = 1\nresolver = [\"{}\"]\nresolve_timeout = \"1s\"\n",
                silent.local_addr().unwrap()
            ),
        );
        text.push_str("  [[site.route]]\n  path = \"/many\"\n  upstream = \"many\"\n");
        text.push_str("\n[upstream.many]\nservers = [\"a.test:80\", \"b.test:80\", \"c.test:80\"]\n");
        for name in ["one", "two", "three"] {
            text.push_str(&format!(
                "\n[upstream.{name}]\nservers = [\"{name}.test:80\"]\nresolve_every = \"30s\"\n"
            ));
        }
        std::fs::write(&proxy.config_path, &text).unwrap();
        let started = Instant::now();
        let resp = client()
            .post(format!("http://{admin}/reload"))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        let (status, answer) = (resp.status(), resp.text().await.unwrap());
        eprintln!("reload answered {status} after {took:?}: {answer}");
        assert_eq!(status, 200, "{answer}");
        assert!(
            took >= Duration::from_millis(900),
            "the reload should wait for the names (1 s): {took:?}"
        );
        assert!(
            took < Duration::from_millis(2500),
            "the names should be given up on at once after 1 s: {took:?}"
        );
        // the names have no address: the route answers, with a 503
        let resp = client().get(proxy.url("/many")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        let logs = proxy.logs().join("\n");
        assert!(logs.contains("no answer within"), "{logs}");
    })
    .await;
}

/// The system resolver (getaddrinfo) asking a DNS server that never answers: the start, which
/// resolves upstream names before serving, goes on after `resolve_timeout` (glibc would wait 30 s
/// here). getaddrinfo takes its DNS server from /etc/resolv.conf alone, so Gatehouse runs in
/// namespaces of its own (`unshare -rmn`, no privilege needed): a resolv.conf mounted over the
/// real one names 192.0.2.53, which is routed to the loopback device but is nobody's address
/// there, so the queries vanish without an answer or an ICMP error.
#[test]
fn the_system_resolver_is_given_up_on_after_resolve_timeout() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let probe = Command::new("unshare").args(["-rmn", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: this machine does not allow user namespaces (`unshare -rmn`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 192.0.2.53\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let config = dir.path().join("gatehouse.toml");
    let text = "[listen]\nhttp = \"127.0.0.1:0\"\n\n[server]\nworkers = 1\nresolve_timeout = \"1s\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  upstream = \"hang\"\n\n[upstream.hang]\nservers = [\"hang.test:80\"]\n";
    std::fs::write(&config, text).unwrap();
    let script = "ip link set lo up && ip route add 192.0.2.0/24 dev lo && mount --bind \"$2\" /etc/resolv.conf && exec \"$0\" run --config \"$1\" --log-format json";
    let started = Instant::now();
    let mut child = Command::new("unshare")
        .args(["-rmn", "sh", "-c", script, support::BIN])
        .args([&config, &resolv])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let listening = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("\"listening\"") => break Some(started.elapsed()),
            Ok(line) => logs.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.join("\n");
    eprintln!("listening after {listening:?}");
    let listening = listening.unwrap_or_else(|| panic!("not listening within 20 s:\n{logs}"));
    assert!(logs.contains("no answer within 1s"), "{logs}");
    assert!(
        listening >= Duration::from_millis(900) && listening < Duration::from_secs(4),
        "the start should wait 1 s for the name, then go on: {listening:?}\n{logs}"
    );
}
