//! Issue 20, `basic_auth` and `forward_auth`, end to end: the real binary, real clients, an echo
//! backend, and a small auth service written here that answers as Authelia's
//! `/api/authz/forward-auth` does (a `302` to its login page for a browser without a session, a
//! `401` for other clients, a `200` with `Remote-User`, `Remote-Groups`, `Remote-Email` for a
//! session).

// Helpers outside #[test] fns (and tests/support) are test code too; clippy.toml only exempts #[test] bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// `gatehouse hash-password` with `password` on standard input: its stdout.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{password}").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// `/metrics` of the admin listener, one counter's value.
async fn counter(admin: SocketAddr, name: &str) -> f64 {
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

const HEAD: &str = r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
workers = 2
"#;

fn basic_config(backend: SocketAddr, users_file: &Path, argon: &str, bcrypt: &str) -> String {
    let file = users_file.display();
    format!(
        r#"{HEAD}
[upstream.backend]
servers = ["{backend}"]

[[site]]
hosts = ["app.test"]
basic_auth = {{ realm = "admin", users = {{ alice = "{argon}", bob = "{bcrypt}" }} }}
response_headers = {{ set = {{ "X-Site" = "app" }} }}
  [[site.route]]
  path = "/limited/"
  upstream = "backend"
  rate_limit = {{ requests = 10, per = "1h", burst = 10 }}

  [[site.route]]
  path = "/file/"
  upstream = "backend"
  basic_auth = {{ users_file = "{file}" }}

  [[site.route]]
  path = "/forwarded/"
  upstream = "backend"
  basic_auth = {{ realm = "admin", users = {{ alice = "{argon}" }}, forward_credentials = true }}

  [[site.route]]
  path = "/open/"
  upstream = "backend"
  basic_auth = "off"

  [[site.route]]
  path = "/"
  upstream = "backend"
  response_headers = {{ set = {{ "X-Route" = "root" }} }}
  cors = {{ origins = ["https://app.example.com"] }}
"#
    )
}

struct BasicSetup {
    proxy: TestProxy,
    _backend: Backend,
    dir: tempfile::TempDir,
}

async fn basic_setup() -> BasicSetup {
    let backend = echo_backend("app").await;
    let argon = hash_password("alice-pw");
    assert!(argon.starts_with("$argon2id$v=19$"), "{argon}");
    let bcrypt = bcrypt::hash("bob-pw", 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.htpasswd");
    let carol = bcrypt::hash("carol-pw", 4).unwrap();
    std::fs::write(&users, format!("# who may see /file/\ncarol:{carol}\n")).unwrap();
    let proxy = TestProxy::start(&basic_config(backend.addr, &users, &argon, &bcrypt)).await;
    BasicSetup {
        proxy,
        _backend: backend,
        dir,
    }
}

async fn get(proxy: &TestProxy, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = client().get(proxy.url(path)).header("host", "app.test");
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn basic_auth_lets_its_users_through_and_no_one_else() {
    with_timeout(60, async {
        let setup = basic_setup().await;
        let proxy = &setup.proxy;

        let missing = get(proxy, "/page", None).await;
        assert_eq!(missing.status(), 401);
        assert_eq!(
            header(&missing, "www-authenticate").as_deref(),
            Some("Basic realm=\"admin\"")
        );
        // Gatehouse's own refusal gets the route's header rules and CORS like any other
        assert_eq!(header(&missing, "x-route").as_deref(), Some("root"));
        let body = missing.text().await.unwrap();
        assert!(
            body.starts_with("401 Unauthorized") && body.len() < 200,
            "{body}"
        );
        let cors = client()
            .get(proxy.url("/page"))
            .header("host", "app.test")
            .header("origin", "https://app.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(cors.status(), 401);
        assert_eq!(
            header(&cors, "access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );

        for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
            let ok = get(proxy, "/page", Some(&basic(user, password))).await;
            assert_eq!(ok.status(), 200, "{user}");
            let seen = Echo::parse(&ok.text().await.unwrap());
            assert_eq!(
                seen.header("authorization"),
                None,
                "{user}'s credentials went upstream"
            );
        }
        for (user, password) in [
            ("alice", "bob-pw"),
            ("bob", "alice-pw"),
            ("mallory", "alice-pw"),
            ("carol", "carol-pw"),
        ] {
            let wrong = get(proxy, "/page", Some(&basic(user, password))).await;
            assert_eq!(wrong.status(), 401, "{user}:{password}");
            assert!(header(&wrong, "www-authenticate").is_some());
        }

        // the users file's users, and only them, on its route
        assert_eq!(
            get(proxy, "/file/x", Some(&basic("carol", "carol-pw")))
                .await
                .status(),
            200
        );
        assert_eq!(
            get(proxy, "/file/x", Some(&basic("alice", "alice-pw")))
                .await
                .status(),
            401
        );
        assert_eq!(
            header(&get(proxy, "/file/x", None).await, "www-authenticate").as_deref(),
            Some("Basic realm=\"restricted\"")
        );

        // `forward_credentials`: the upstream sees them
        let creds = basic("alice", "alice-pw");
        let fwd = get(proxy, "/forwarded/x", Some(&creds)).await;
        assert_eq!(fwd.status(), 200);
        let seen = Echo::parse(&fwd.text().await.unwrap());
        assert_eq!(seen.header("authorization"), Some(creds));

        // `"off"` on a route of a protected site
        assert_eq!(get(proxy, "/open/x", None).await.status(), 200);
    })
    .await;
}

#[tokio::test]
async fn a_reload_reads_the_users_file_again() {
    with_timeout(60, async {
        let setup = basic_setup().await;
        let proxy = &setup.proxy;
        let old = basic("carol", "carol-pw");
        assert_eq!(get(proxy, "/file/x", Some(&old)).await.status(), 200);
        let new = bcrypt::hash("carol-new", 4).unwrap();
        let users = setup.dir.path().join("users.htpasswd");
        std::fs::write(&users, format!("carol:{new}\n")).unwrap();
        // the config itself is unchanged: only the users file is
        proxy.send_signal("HUP");
        let fresh = basic("carol", "carol-new");
        let took = poll_until(Duration::from_secs(10), || async {
            get(proxy, "/file/x", Some(&fresh)).await.status() == 200
        })
        .await;
        assert!(took.is_some(), "the new password never worked");
        // and the old one, although verified (and cached) a moment ago, no longer does
        assert_eq!(get(proxy, "/file/x", Some(&old)).await.status(), 401);
    })
    .await;
}

#[tokio::test]
async fn verified_credentials_are_cached_and_failures_are_not() {
    with_timeout(60, async {
        let setup = basic_setup().await;
        let proxy = &setup.proxy;
        let admin = proxy.admin_addr().await;
        let hashes = "gatehouse_auth_hashes_total";
        let before = counter(admin, hashes).await;
        let creds = basic("alice", "alice-pw");
        for _ in 0..30 {
            assert_eq!(get(proxy, "/page", Some(&creds)).await.status(), 200);
        }
        assert_eq!(
            counter(admin, hashes).await - before,
            1.0,
            "30 requests with one credential"
        );
        assert_eq!(
            counter(admin, "gatehouse_auth_cache_hits_total").await,
            29.0
        );
        // a cached credential is one user's on one route: another route pays its own hash
        assert_eq!(get(proxy, "/forwarded/x", Some(&creds)).await.status(), 200);
        assert_eq!(counter(admin, hashes).await - before, 2.0);
        // each failure costs a hash, an unknown user too (no cheap probing of names)
        for wrong in [
            basic("alice", "nope"),
            basic("alice", "nope"),
            basic("nobody", "x"),
        ] {
            assert_eq!(get(proxy, "/page", Some(&wrong)).await.status(), 401);
        }
        assert_eq!(counter(admin, hashes).await - before, 5.0);
        // no credentials at all cost nothing
        assert_eq!(get(proxy, "/page", None).await.status(), 401);
        assert_eq!(counter(admin, hashes).await - before, 5.0);
    })
    .await;
}

#[tokio::test]
async fn wrong_passwords_run_into_the_rate_limit() {
    with_timeout(60, async {
        let setup = basic_setup().await;
        let proxy = &setup.proxy;
        // 10 requests an hour: a right password passes 10 times
        let creds = basic("alice", "alice-pw");
        let mut passed = 0;
        for _ in 0..10 {
            passed += usize::from(get(proxy, "/limited/x", Some(&creds)).await.status() == 200);
        }
        assert_eq!(passed, 10);
        assert_eq!(get(proxy, "/limited/x", Some(&creds)).await.status(), 429);
    })
    .await;
    with_timeout(60, async {
        let setup = basic_setup().await;
        let proxy = &setup.proxy;
        // a wrong one costs twice: the 6th guess meets the 429 (it would be the 11th otherwise)
        let mut statuses = Vec::new();
        for i in 0..6 {
            let guess = basic("alice", &format!("guess-{i}"));
            statuses.push(
                get(proxy, "/limited/x", Some(&guess))
                    .await
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
        // and the right password now waits too
        assert_eq!(
            get(proxy, "/limited/x", Some(&creds_alice()))
                .await
                .status(),
            429
        );
    })
    .await;
}

fn creds_alice() -> String {
    basic("alice", "alice-pw")
}

// ---------------------------------------------------------------------------------------------
// forward_auth
// ---------------------------------------------------------------------------------------------

const LOGIN: &str = "https://auth.example.com/";

/// What the auth service saw of each question.
type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

/// Answers as Authelia's `/api/authz/forward-auth`: with cookie `authelia_session=good` a 200
/// with the user's headers (and a refreshed session cookie); `authelia_session=nogroups` a 200
/// with `Remote-User` only; without a session a 302 to the login page (`rd` = the original
/// URL) for a browser (`Accept: text/html`), else a 401.
async fn authelia(delay: Duration) -> (Backend, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let backend = serve("authelia", move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            tokio::time::sleep(delay).await;
            let h = req.headers().clone();
            log.lock().unwrap().push(h.clone());
            let cookie = h.get("cookie").and_then(|c| c.to_str().ok()).unwrap_or("");
            let resp = Response::builder();
            let resp = if req.method() != http::Method::GET
                || req.uri().path() != "/api/authz/forward-auth"
            {
                resp.status(404)
            } else if cookie.contains("authelia_session=good") {
                resp.status(200)
                    .header("remote-user", "alice")
                    .header("remote-groups", "admins,dev")
                    .header("remote-email", "alice@example.com")
                    .header("set-cookie", "authelia_session=good; Path=/; HttpOnly")
            } else if cookie.contains("authelia_session=nogroups") {
                resp.status(200).header("remote-user", "bob")
            } else if h
                .get("accept")
                .is_some_and(|a| a.to_str().unwrap_or("").contains("text/html"))
            {
                let url = h
                    .get("x-original-url")
                    .and_then(|u| u.to_str().ok())
                    .unwrap_or("");
                resp.status(302)
                    .header("location", format!("{LOGIN}?rd={url}"))
                    .header("set-cookie", "authelia_flow=1; Path=/")
                    .header("connection", "x-private")
                    .header("x-private", "hop")
            } else {
                resp.status(401)
                    .header("www-authenticate", "Basic realm=\"Authorization Required\"")
            };
            let body = Full::new(Bytes::from_static(b"authelia says"));
            resp.body(body).unwrap()
        }
    })
    .await;
    (backend, seen)
}

fn forward_config(backend: SocketAddr, auth: SocketAddr, timeout: &str) -> String {
    format!(
        r#"{HEAD}
[upstream.backend]
servers = ["{backend}"]

[[site]]
hosts = ["app.test"]
forward_auth = {{ url = "http://{auth}/api/authz/forward-auth", copy_headers = ["Remote-User", "Remote-Groups", "Remote-Email"], timeout = "{timeout}" }}
  [[site.route]]
  path = "/public/"
  upstream = "backend"
  forward_auth = "off"

  [[site.route]]
  path = "/"
  upstream = "backend"
  response_headers = {{ set = {{ "X-Route" = "root" }} }}
"#
    )
}

async fn fwd(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(proxy.url(path)).header("host", "app.test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn forward_auth_allows_refuses_and_redirects_as_the_service_says() {
    with_timeout(60, async {
        let backend = echo_backend("app").await;
        let (auth, seen) = authelia(Duration::ZERO).await;
        let proxy = TestProxy::start(&forward_config(backend.addr, auth.addr, "5s")).await;
        let port = proxy.addr.port();

        // allowed: the user's headers reach the backend, the client's claims do not
        let allowed = fwd(
            &proxy,
            "/app/page?x=1",
            &[
                ("cookie", "authelia_session=good; theme=dark"),
                ("remote-user", "mallory"),
                ("remote-email", "mallory@example.com"),
            ],
        )
        .await;
        assert_eq!(allowed.status(), 200);
        assert_eq!(
            allowed
                .headers()
                .get_all("set-cookie")
                .iter()
                .collect::<Vec<_>>(),
            ["authelia_session=good; Path=/; HttpOnly"]
        );
        let got = Echo::parse(&allowed.text().await.unwrap());
        assert_eq!(got.all("remote-user"), ["alice"]);
        assert_eq!(got.all("remote-groups"), ["admins,dev"]);
        assert_eq!(got.all("remote-email"), ["alice@example.com"]);
        assert_eq!(got.uri, "/app/page?x=1");
        let asked = seen.lock().unwrap().last().cloned().unwrap();
        let h = |name: &str| asked.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("x-forwarded-method").as_deref(), Some("GET"));
        assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(h("x-forwarded-host").as_deref(), Some("app.test"));
        assert_eq!(h("x-forwarded-uri").as_deref(), Some("/app/page?x=1"));
        assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            h("x-original-url").as_deref(),
            Some("http://app.test/app/page?x=1")
        );
        assert_eq!(
            h("cookie").as_deref(),
            Some("authelia_session=good; theme=dark")
        );
        assert_eq!(
            h("remote-user"),
            None,
            "the client's claim went to the auth service"
        );

        // allowed without a header the client sent: the backend sees none
        let partial = fwd(
            &proxy,
            "/x",
            &[
                ("cookie", "authelia_session=nogroups"),
                ("remote-groups", "admins"),
            ],
        )
        .await;
        let got = Echo::parse(&partial.text().await.unwrap());
        assert_eq!(got.all("remote-user"), ["bob"]);
        assert!(got.all("remote-groups").is_empty(), "{got:?}");

        // refused: the service's 401 as it wrote it, with the route's header rules on top
        let refused = fwd(&proxy, "/api/x", &[("accept", "application/json")]).await;
        assert_eq!(refused.status(), 401);
        assert_eq!(
            header(&refused, "www-authenticate").as_deref(),
            Some("Basic realm=\"Authorization Required\"")
        );
        assert_eq!(header(&refused, "x-route").as_deref(), Some("root"));
        assert_eq!(refused.text().await.unwrap(), "authelia says");

        // a browser is sent to the login page, with where it wanted to go; the flow cookie
        // comes along, the hop-by-hop header the service named does not
        let login = fwd(&proxy, "/app/page?x=1", &[("accept", "text/html,*/*")]).await;
        assert_eq!(login.status(), 302);
        assert_eq!(
            header(&login, "location").as_deref(),
            Some(&*format!("{LOGIN}?rd=http://app.test/app/page?x=1"))
        );
        assert_eq!(
            header(&login, "set-cookie").as_deref(),
            Some("authelia_flow=1; Path=/")
        );
        assert_eq!(header(&login, "x-private"), None);

        // the requests refused never reached the backend; a route with "off" asks no one
        let asked = seen.lock().unwrap().len();
        let public = fwd(&proxy, "/public/x", &[("remote-user", "mallory")]).await;
        assert_eq!(public.status(), 200);
        assert_eq!(seen.lock().unwrap().len(), asked);
        let _ = port;
    })
    .await;
}

#[tokio::test]
async fn forward_auth_down_or_slow_never_lets_a_request_through() {
    with_timeout(60, async {
        let backend = counting_backend().await;
        let down = closed_port_addr().await;
        let proxy = TestProxy::start(&forward_config(backend.addr, down, "5s")).await;
        let resp = fwd(&proxy, "/x", &[("cookie", "authelia_session=good")]).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(header(&resp, "x-route").as_deref(), Some("root"));
        drop(proxy);

        let (slow, _) = authelia(Duration::from_secs(5)).await;
        let proxy = TestProxy::start(&forward_config(backend.addr, slow.addr, "300ms")).await;
        let started = std::time::Instant::now();
        let resp = fwd(&proxy, "/x", &[("cookie", "authelia_session=good")]).await;
        assert_eq!(resp.status(), 504);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(backend.connections(), 0, "a request reached the backend");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------------------------

/// `gatehouse check` on `config` (written with `files` next to it): its stderr, which must
/// name the line holding `marker` and every one of `mentions`.
fn assert_check_fails(config: &str, files: &[(&str, &str)], marker: &str, mentions: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_gatehouse(&["check", "--config", path.to_str().unwrap()], &[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let line = config.lines().position(|l| l.contains(marker)).unwrap() + 1;
    let at = format!("{}:{line}:", path.display());
    assert!(out.stderr.contains(&at), "want {at} in:\n{}", out.stderr);
    for m in mentions {
        assert!(out.stderr.contains(m), "want {m:?} in:\n{}", out.stderr);
    }
}

fn site(extra: &str) -> String {
    format!("[listen]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\n  [[site.route]]\n  path = \"/\"\n  respond = {{ body = \"hi\" }}\n  {extra}\n")
}

#[test]
fn auth_config_errors_are_located() {
    let good = bcrypt::hash("pw", 4).unwrap();
    assert_check_fails(
        &site("basic_auth = { users = { alice = \"$apr1$abc$def\" } }"),
        &[],
        "basic_auth",
        &[
            "site.route.basic_auth.users.alice",
            "too fast",
            "gatehouse hash-password",
        ],
    );
    assert_check_fails(
        &site(&format!(
            "basic_auth = {{ users = {{ a = \"{good}\" }}, users_file = \"u\" }}"
        )),
        &[],
        "users_file",
        &["site.route.basic_auth.users_file", "both"],
    );
    assert_check_fails(
        &site("basic_auth = { users_file = \"missing.htpasswd\" }"),
        &[],
        "users_file",
        &["site.route.basic_auth.users_file", "missing.htpasswd"],
    );
    assert_check_fails(
        &site("basic_auth = { users_file = \"users\" }"),
        &[("users", &format!("alice:{good}\nbob:{{SHA}}abc\n"))],
        "users_file",
        &["users:2:", "SHA"],
    );
    assert_check_fails(
        &site("forward_auth = { url = \"authelia:9091/api/authz/forward-auth\" }"),
        &[],
        "forward_auth",
        &["site.route.forward_auth.url", "http:// or https://"],
    );
    assert_check_fails(
        &site("forward_auth = { url = \"http://auth/x\", copy_headers = [\"Content-Length\"] }"),
        &[],
        "forward_auth",
        &["site.route.forward_auth.copy_headers"],
    );
}
