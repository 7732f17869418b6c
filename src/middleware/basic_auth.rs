//! `basic_auth`: a route's `Authorization: Basic` checked against its users' password hashes.
//!
//! Owns: reading the credentials, the choice of hash to spend (an unknown user still costs
//! one, so names cannot be probed by timing), and the `WWW-Authenticate` challenge. Running the
//! hashes (off the runtime threads, a bounded number at once) and remembering verified
//! credentials is `verifier`'s. The rate-limit charge for a failure is the caller's
//! (`RoutePolicy::charge_failure`): it knows the client's key.

pub mod verifier;

use crate::config::{BasicAuth, PasswordHash, Users};
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use std::sync::Arc;
pub use verifier::Verifier;

/// A route's `basic_auth` compiled for the request path.
pub struct BasicGuard {
    /// `Basic realm="..."`, for a 401.
    challenge: HeaderValue,
    users: Arc<Users>,
    /// The client's `Authorization` goes upstream too.
    pub forward_credentials: bool,
    /// Which route's users these are (a part of every cache key).
    route: u64,
    verifier: Arc<Verifier>,
}

/// Why a request is not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Basic` (or one that does not decode): the browser has not asked yet.
    NoCredentials,
    /// A user and password that do not match (or an unknown user): counts against the rate
    /// limit.
    Wrong,
    /// Too many checks are waiting for a hash already.
    Busy,
}

impl BasicGuard {
    /// `users` are the inline ones or the users file's as read; `route` the route's index.
    pub fn new(
        spec: &BasicAuth,
        users: Arc<Users>,
        route: usize,
        verifier: Arc<Verifier>,
    ) -> BasicGuard {
        // validation keeps the realm to printable ASCII without `"` or `\`
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{}\"", spec.realm))
            .unwrap_or(HeaderValue::from_static("Basic"));
        BasicGuard {
            challenge,
            users,
            forward_credentials: spec.forward_credentials,
            route: route as u64,
            verifier,
        }
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge(&self) -> &HeaderValue {
        &self.challenge
    }

    /// Whether the request's credentials name a user and the right password.
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let (user, password) = credentials(headers).ok_or(Denied::NoCredentials)?;
        let known = std::str::from_utf8(&user)
            .ok()
            .and_then(|name| self.users.get(name));
        // an unknown user is checked against a real user's hash, and refused whatever the
        // answer: the same cost either way
        let Some(stored) = known.or_else(|| self.users.first()) else {
            return Err(Denied::Wrong);
        };
        let key = self.verifier.key(self.route, &user, &password, stored);
        if known.is_some() && self.verifier.cached(key) {
            return Ok(());
        }
        let verified = self
            .verifier
            .verify(stored.clone(), password)
            .await
            .map_err(|verifier::Busy| Denied::Busy)?;
        match (verified, known) {
            (true, Some(_)) => {
                self.verifier.remember(key);
                Ok(())
            }
            _ => Err(Denied::Wrong),
        }
    }
}

/// The user and password of `Authorization: Basic base64(user:password)` (the scheme in any
/// case), or `None` when there is no such header or it does not decode.
fn credentials(headers: &HeaderMap) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, encoded) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let password = decoded[colon + 1..].to_vec();
    let mut user = decoded;
    user.truncate(colon);
    Some((user, password))
}

/// An argon2 or bcrypt hash checked against `password`. Slow by design: call it on a blocking
/// thread (`Verifier::verify` does).
pub fn matches(hash: &PasswordHash, password: &[u8]) -> bool {
    use argon2::PasswordVerifier;
    match hash.scheme() {
        crate::config::auth::HashScheme::Argon2 => argon2::PasswordHash::new(hash.as_str())
            .is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(password, &parsed)
                    .is_ok()
            }),
        crate::config::auth::HashScheme::Bcrypt => {
            bcrypt::verify(password, hash.as_str()).unwrap_or(false)
        }
    }
}

/// An argon2id hash of `password` with a fresh salt and argon2's default parameters (OWASP's
/// m=19 MiB, t=2, p=1), for `gatehouse hash-password`.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2::Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn credentials_are_read_from_basic_only() {
        // "alice:pa:ss"
        let ok = credentials(&with("Basic YWxpY2U6cGE6c3M=")).unwrap();
        assert_eq!((&ok.0[..], &ok.1[..]), (&b"alice"[..], &b"pa:ss"[..]));
        assert!(credentials(&with("basic YWxpY2U6cGE6c3M=")).is_some());
        assert!(credentials(&with("Bearer YWxpY2U6cGE6c3M=")).is_none());
        assert!(credentials(&with("Basic !!!")).is_none());
        // "alice" without a colon
        assert!(credentials(&with("Basic YWxpY2U=")).is_none());
        assert!(credentials(&HeaderMap::new()).is_none());
    }

    #[test]
    fn made_hashes_verify_and_wrong_passwords_do_not() {
        let made = hash_password(b"s3cret").unwrap();
        let hash = PasswordHash::parse(&made).unwrap();
        assert!(
            made.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{made}"
        );
        assert!(matches(&hash, b"s3cret"));
        assert!(!matches(&hash, b"s3cret "));
        let bcrypt = PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        assert!(matches(&bcrypt, b"pw"));
        assert!(!matches(&bcrypt, b"px"));
    }
}
