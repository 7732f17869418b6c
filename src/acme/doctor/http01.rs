//! The HTTP-01 self-test: a random token is served, then fetched by name the way the CA
//! fetches it (`GET http://<name>:<port>/.well-known/acme-challenge/<token>`, at every address
//! the name resolves to), and the answer must be this instance's.
//!
//! Who serves the token ([`Responder`]): a running Gatehouse itself (checks after a failed
//! order); for `gatehouse certs doctor`, the doctor listening on the first `[listen] http`
//! address when it is free, or else the running Gatehouse holding it, asked through its admin
//! listener (`POST /acme/self-test/<token>`, loopback only, see `admin`). A test token's
//! answer is `<token>.gatehouse-self-test`, which can never be an ACME key authorization (the
//! part after the dot is no account thumbprint), so the admin endpoint cannot be used to pass
//! a real challenge.

use super::super::{Challenges, HTTP01_PREFIX};
use super::Outcome;
use crate::admin::client;
use crate::config::Listen;
use bytes::Bytes;
use http_body_util::Full;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a running Gatehouse serves a token the doctor asked for.
pub const SELF_TEST_TTL: Duration = Duration::from_secs(30);
/// One fetch (connect, send, answer) gets this long: the CA gives up after about 10 s.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer that is read.
const MAX_ANSWER: usize = 16 * 1024;
const SUFFIX: &str = ".gatehouse-self-test";

/// Who answers the test token.
pub enum Responder {
    /// This process: the running instance's challenge store, or the doctor's own listener.
    Local(Arc<Challenges>),
    /// A running Gatehouse holds `[listen] http`; asked through this admin listener.
    Admin(SocketAddr),
    /// Nobody can: what is wrong and what to do.
    Nobody { what: String, fix: String },
}

impl Responder {
    /// For `gatehouse certs doctor`: listens on the first `[listen] http` address (answering
    /// test tokens only) when it is free; else asks the Gatehouse that holds it.
    pub async fn for_cli(listen: &Listen) -> Responder {
        let Some(&addr) = listen.http.first() else {
            return Responder::Nobody {
                what: "there is no `[listen] http`: HTTP-01 is answered on plain HTTP".into(),
                fix: "add `http = \"0.0.0.0:80\"` to [listen], or use `challenge = \"tls-alpn-01\"` or \"dns-01\"".into(),
            };
        };
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                let challenges = Arc::new(Challenges::default());
                tokio::spawn(serve(listener, challenges.clone()));
                Responder::Local(challenges)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match listen.admin {
                Some(admin) => Responder::Admin(admin),
                None => Responder::Nobody {
                    what: format!("`[listen] http` {addr} is in use (a running Gatehouse?), and there is no `[listen] admin` to ask it to serve a test token"),
                    fix: "add `admin = \"127.0.0.1:9900\"` to [listen] (and reload), or stop the program holding the port while the doctor runs".into(),
                },
            },
            Err(e) => Responder::Nobody {
                what: format!("cannot listen on `[listen] http` {addr} to serve a test token: {e}"),
                fix: "run the doctor as the user Gatehouse runs as (port 80 needs root or CAP_NET_BIND_SERVICE), or start Gatehouse first: the doctor then asks it through `[listen] admin`".into(),
            },
        }
    }
}

/// Serves `token`'s test answer for [`SELF_TEST_TTL`] (the admin listener's
/// `POST /acme/self-test/<token>`); false for a token that is not one (16-128 base64url chars).
pub fn serve_self_test(challenges: &Arc<Challenges>, token: &str) -> bool {
    let valid = (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return false;
    }
    let answer = challenges.answer_http01(token.to_string(), answer_for(token));
    tokio::spawn(async move {
        tokio::time::sleep(SELF_TEST_TTL).await;
        drop(answer);
    });
    true
}

fn answer_for(token: &str) -> String {
    format!("{token}{SUFFIX}")
}

/// The self-test of `name`, resolved to `addrs`, fetched at `port`.
pub async fn self_test(responder: &Responder, name: &str, addrs: &[IpAddr], port: u16) -> Outcome {
    let token = fastrand_token();
    let expected = answer_for(&token);
    let _held = match responder {
        Responder::Local(challenges) => {
            Some(challenges.answer_http01(token.clone(), expected.clone()))
        }
        Responder::Admin(admin) => {
            if let Err(problem) = ask_admin(*admin, &token).await {
                return problem;
            }
            None
        }
        Responder::Nobody { what, fix } => {
            return Outcome::problem(what.clone(), fix.clone());
        }
    };
    let url = format!("http://{name}{}{HTTP01_PREFIX}{token}", port_suffix(port));
    for ip in addrs {
        let at = SocketAddr::new(*ip, port);
        if let Err((what, fix)) = fetch_expect(at, name, &token, &expected).await {
            return Outcome::problem(format!("{url} at {at}: {what}"), fix);
        }
    }
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    Outcome::Ok(format!(
        "{url} reached this Gatehouse at {} (port {port})",
        list.join(", ")
    ))
}

fn port_suffix(port: u16) -> String {
    if port == 80 {
        String::new()
    } else {
        format!(":{port}")
    }
}

fn fastrand_token() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect()
}

async fn ask_admin(admin: SocketAddr, token: &str) -> Result<(), Outcome> {
    let path = format!("/acme/self-test/{token}");
    let asked = tokio::task::spawn_blocking(move || {
        client::request(admin, &http::Method::POST, &path, FETCH_TIMEOUT)
    })
    .await;
    let fix = "the port is held by a program other than this Gatehouse, or by one too old for the self-test: stop it while the doctor runs, or start (or upgrade) Gatehouse with this config";
    match asked {
        Ok(Ok(answer)) if answer.status == 200 => Ok(()),
        Ok(Ok(answer)) => Err(Outcome::problem(
            format!("`[listen] http` is in use, and the admin listener {admin} answered {} to the self-test request: {}", answer.status, answer.body.trim()),
            fix.into(),
        )),
        Ok(Err(e)) => Err(Outcome::problem(
            format!("`[listen] http` is in use, and no Gatehouse answers on `[listen] admin`: {e}"),
            fix.into(),
        )),
        Err(e) => Err(Outcome::problem(format!("self-test request stopped: {e}"), String::new())),
    }
}

/// GETs the token at `at` with `Host: name`; `Err((what, fix))` unless the answer is 200 with
/// `expected`.
async fn fetch_expect(
    at: SocketAddr,
    name: &str,
    token: &str,
    expected: &str,
) -> Result<(), (String, String)> {
    let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(at, name, token)).await;
    let port = at.port();
    let unreachable = format!("the CA connects to {at}: make the name's A/AAAA records point at this host, and open (or forward) port {port} there to Gatehouse's `[listen] http`");
    let answer = match fetched {
        Err(_) => {
            return Err((
                format!("no answer within {FETCH_TIMEOUT:?} (a firewall dropping the packets?)"),
                unreachable,
            ))
        }
        Ok(Err(e)) => return Err((format!("cannot connect: {e}"), unreachable)),
        Ok(Ok(answer)) => answer,
    };
    let elsewhere = format!("another server answers at {at}: point the name's A/AAAA records at this host, or forward port {port} there to Gatehouse's `[listen] http` (and route `/.well-known/acme-challenge/` to it)");
    match parse(&answer) {
        Some((200, body)) if body.trim_end() == expected => Ok(()),
        Some((status, _)) => Err((
            format!("answered {status}, not this Gatehouse's test token"),
            elsewhere,
        )),
        None => Err(("did not answer in HTTP".into(), elsewhere)),
    }
}

async fn fetch(at: SocketAddr, name: &str, token: &str) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(at).await?;
    let request = format!(
        "GET {HTTP01_PREFIX}{token} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: gatehouse-certs-doctor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut tcp)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut answer)
        .await?;
    Ok(answer)
}

/// Status and body of an HTTP/1.1 answer (not chunked: the answers we look for have a length).
fn parse(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The doctor's own listener: test tokens only, everything else 404.
async fn serve(listener: TcpListener, challenges: Arc<Challenges>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let challenges = challenges.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let known = req
                        .uri()
                        .path()
                        .strip_prefix(HTTP01_PREFIX)
                        .and_then(|token| challenges.http01(token));
                    let resp = match known {
                        Some(answer) => http::Response::new(Full::new(Bytes::from(answer))),
                        None => {
                            let mut r = http::Response::new(Full::new(Bytes::from_static(
                                b"not a test token\n",
                            )));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_for_its_status_and_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(parse(ok), Some((200, "abc".to_string())));
        assert_eq!(
            parse(b"HTTP/1.0 404 Not Found\r\n\r\n"),
            Some((404, String::new()))
        );
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n"), None);
    }

    #[tokio::test]
    async fn only_token_shaped_tokens_are_served_by_the_admin_endpoint() {
        let challenges = Arc::new(Challenges::default());
        assert!(!serve_self_test(&challenges, "short"));
        assert!(!serve_self_test(&challenges, "has/slash/in/it/0123456789"));
        let token = "abcdefghijklmnopqrstuvwxyz012345";
        assert!(serve_self_test(&challenges, token));
        assert_eq!(challenges.http01(token), Some(answer_for(token)));
    }
}
