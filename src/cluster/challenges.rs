//! ACME challenge answers shared through the cluster store (`docs/cluster.md`, "Challenge
//! answers"), so that whichever instance the CA reaches can answer it.
//!
//! Owns the keys and values of answers in the store, their writes (by the order that set them,
//! before the CA is told to validate) and withdrawals, and the lookups of an instance that has
//! no local answer. A lookup is on a request (or handshake) path, so it is guarded: only a
//! syntactically valid token or name is looked up, at most `MAX_IN_FLIGHT` at once and
//! `MAX_PER_SECOND` a second per process (any other is answered as a miss at once), each waits
//! `[cluster] timeout` at most, and none is made while the store is down.
//!
//! Keys: `NAME:challenge:http-01:TOKEN` holds the key authorization (`TOKEN.THUMBPRINT`), and
//! `NAME:challenge:tls-alpn-01:DNSNAME` holds `DNSNAME HEXDIGEST` (the SHA-256 of the key
//! authorization, never key material: the answering instance makes its own certificate). A
//! value is served only for the token or name it names itself.

use super::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Lookups in the store in flight at once, per process; more are answered as misses at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Lookups started per second, per process (a CA validates a challenge from a handful of
/// places; a flood of made-up tokens must not become a flood of store calls).
pub const MAX_PER_SECOND: u32 = 100;
/// The longest a write (or withdrawal) of an answer may take: off the request path (the order
/// task waits for it before the CA validates), so longer than `timeout`.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Tokens are base64url (RFC 8555 §8.1: at least 128 bits, so 22 characters or more).
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Deletes KEYS[1] only if it still holds ARGV[1]: a withdrawn answer never removes another
/// instance's newer one for the same name.
const DELETE_IF_SAME: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Which answer, by what it is looked up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge<'a> {
    /// An HTTP-01 token.
    Http01(&'a str),
    /// A TLS-ALPN-01 name (lowercase).
    TlsAlpn01(&'a str),
}

impl Challenge<'_> {
    fn label(self) -> &'static str {
        match self {
            Challenge::Http01(_) => "http-01",
            Challenge::TlsAlpn01(_) => "tls-alpn-01",
        }
    }

    /// Whether it may be looked up at all: a base64url token of a sane length, or a DNS name.
    pub fn is_valid(self) -> bool {
        match self {
            Challenge::Http01(token) => {
                TOKEN_LEN.contains(&token.len())
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }
            Challenge::TlsAlpn01(name) => is_dns_name(name),
        }
    }

    /// Whether `value` read from the store answers this challenge (and not another one).
    fn answered_by(self, value: &str) -> bool {
        match self {
            Challenge::Http01(token) => value
                .split_once('.')
                .is_some_and(|(written_for, thumb)| written_for == token && !thumb.is_empty()),
            Challenge::TlsAlpn01(name) => value
                .split_once(' ')
                .is_some_and(|(written_for, digest)| written_for == name && digest.len() == 64),
        }
    }
}

/// A lowercase DNS name (labels of letters, digits and `-`, up to 253 characters).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The value a TLS-ALPN-01 answer is kept as: the name, then the digest in hex.
pub fn tls_alpn_value(name: &str, digest: &[u8]) -> String {
    let mut value = String::with_capacity(name.len() + 1 + digest.len() * 2);
    value.push_str(name);
    value.push(' ');
    for b in digest {
        value.push_str(&format!("{b:02x}"));
    }
    value
}

/// The digest of a TLS-ALPN-01 value read from the store (checked by `answered_by`).
pub fn tls_alpn_digest(value: &str) -> Option<[u8; 32]> {
    let (_, hex) = value.split_once(' ')?;
    let mut digest = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// Lookups started in the current second, lock-free: the second (high 32 bits) and the count
/// (low 32) in one word.
#[derive(Default)]
struct PerSecond(AtomicU64);

impl PerSecond {
    /// Takes one of the `max` lookups of second `now`; false when they are spent.
    fn take(&self, now: u32, max: u32) -> bool {
        let mut seen = self.0.load(Ordering::Relaxed);
        loop {
            let (second, used) = ((seen >> 32) as u32, seen as u32);
            let used = if second == now { used } else { 0 };
            if used >= max {
                return false;
            }
            let next = (u64::from(now) << 32) | u64::from(used + 1);
            match self
                .0
                .compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now_seen) => seen = now_seen,
            }
        }
    }
}

/// Answers of this instance written to the store, and lookups of the others'.
pub struct SharedAnswers {
    store: Arc<Store>,
    in_flight: Semaphore,
    per_second: PerSecond,
    started: Instant,
    delete: redis::Script,
}

impl SharedAnswers {
    pub fn new(store: Arc<Store>) -> SharedAnswers {
        SharedAnswers {
            store,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            per_second: PerSecond::default(),
            started: Instant::now(),
            delete: redis::Script::new(DELETE_IF_SAME),
        }
    }

    /// Whether these answers go through `store`.
    pub fn uses(&self, store: &Arc<Store>) -> bool {
        Arc::ptr_eq(&self.store, store)
    }

    fn key(&self, challenge: Challenge<'_>) -> String {
        let (Challenge::Http01(id) | Challenge::TlsAlpn01(id)) = challenge;
        format!(
            "{}:challenge:{}:{id}",
            self.store.settings().name,
            challenge.label()
        )
    }

    fn count(&self, challenge: Challenge<'_>, way: Way, result: &str) {
        let m = &self.store.metrics.cluster;
        let counter = match way {
            Way::From => &m.challenges_from_store,
            Way::To => &m.challenges_to_store,
        };
        counter
            .with_label_values(&[challenge.label(), result])
            .inc();
    }

    /// Writes this instance's answer, to expire after `ttl` (the order's deadline). Awaited
    /// (up to `WRITE_TIMEOUT`) before the CA is told to validate, so the answer is there when it
    /// comes; a failure is logged, and only the instance itself can then answer.
    /// While the store is down nothing is written (an order with many names would otherwise
    /// wait `WRITE_TIMEOUT` for each).
    pub async fn put(&self, challenge: Challenge<'_>, value: &str, ttl: Duration) -> bool {
        let conn = self.store.conn.load_full();
        let Some(conn) = conn.filter(|_| self.store.is_up()) else {
            self.count(challenge, Way::To, "down");
            tracing::warn!(challenge = challenge.label(), "cluster store down: this challenge answer is not shared; only this instance can answer it");
            return false;
        };
        let mut conn = (*conn).clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(challenge))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms);
        let done = tokio::time::timeout(WRITE_TIMEOUT, cmd.query_async::<()>(&mut conn)).await;
        let (result, error) = match done {
            Ok(Ok(())) => ("written", None),
            Ok(Err(e)) => ("error", Some(e.to_string())),
            Err(_) => ("timeout", Some("no answer within 2 s".to_string())),
        };
        self.count(challenge, Way::To, result);
        if let Some(error) = &error {
            tracing::warn!(challenge = challenge.label(), %error, "cluster store did not take the challenge answer: only this instance can answer it");
            self.store.fail(result, error);
        }
        error.is_none()
    }

    /// Withdraws an answer written by `put` (in the background: called on drop), unless another
    /// instance wrote a newer one under the same key since.
    pub fn remove(self: &Arc<Self>, challenge: Challenge<'_>, value: String) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, key, label) = (self.clone(), self.key(challenge), challenge.label());
        runtime.spawn(async move {
            let Some(conn) = shared.store.conn.load_full() else {
                return;
            };
            let mut conn = (*conn).clone();
            let mut call = shared.delete.key(key);
            call.arg(value);
            let done = tokio::time::timeout(WRITE_TIMEOUT, call.invoke_async::<i64>(&mut conn));
            if !matches!(done.await, Ok(Ok(_))) {
                // it expires by itself at the order's deadline
                tracing::debug!(
                    challenge = label,
                    "cluster store did not withdraw a challenge answer"
                );
            }
        });
    }

    /// The answer another instance wrote for `challenge`, if the store has one and gives it
    /// within `[cluster] timeout`. `None` at once for an invalid token or name, while the store
    /// is down, and beyond `MAX_IN_FLIGHT` / `MAX_PER_SECOND`.
    pub async fn get(&self, challenge: Challenge<'_>) -> Option<String> {
        if !challenge.is_valid() {
            self.count(challenge, Way::From, "invalid");
            return None;
        }
        if !self.store.is_up() {
            self.count(challenge, Way::From, "down");
            return None;
        }
        let second = u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        let permit = self.in_flight.try_acquire().ok();
        let Some(_permit) = permit.filter(|_| self.per_second.take(second, MAX_PER_SECOND)) else {
            self.count(challenge, Way::From, "busy");
            return None;
        };
        let conn = self.store.conn.load_full()?;
        let mut conn = (*conn).clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(challenge));
        let timeout = self.store.settings().timeout;
        let asked = tokio::time::timeout(timeout, cmd.query_async::<Option<String>>(&mut conn));
        match asked.await {
            Ok(Ok(Some(value))) if challenge.answered_by(&value) => {
                self.count(challenge, Way::From, "hit");
                Some(value)
            }
            Ok(Ok(_)) => {
                self.count(challenge, Way::From, "miss");
                None
            }
            Ok(Err(e)) => {
                self.count(challenge, Way::From, "error");
                self.store.fail("error", &e.to_string());
                None
            }
            Err(_) => {
                self.count(challenge, Way::From, "timeout");
                self.store
                    .fail("timeout", "no answer within [cluster] timeout");
                None
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Way {
    From,
    To,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";

    #[test]
    fn only_base64url_tokens_of_a_sane_length_are_looked_up() {
        assert!(Challenge::Http01(TOKEN).is_valid());
        for bad in [
            "",
            "short",
            "has/slash/in/it/xxxxxxxx",
            "dot.dot.dot.dot.dot.dot",
            &"a".repeat(129),
        ] {
            assert!(!Challenge::Http01(bad).is_valid(), "{bad}");
        }
        assert!(Challenge::TlsAlpn01("app.test").is_valid());
        for bad in ["", "App.test", "a..b", "a b", "x.", &"a".repeat(64)] {
            assert!(!Challenge::TlsAlpn01(bad).is_valid(), "{bad}");
        }
    }

    #[test]
    fn a_value_answers_only_the_token_or_name_it_was_written_for() {
        let http = Challenge::Http01(TOKEN);
        assert!(http.answered_by(&format!("{TOKEN}.thumbprint")));
        assert!(!http.answered_by("othertoken.thumbprint"));
        assert!(!http.answered_by(&format!("{TOKEN}.")));
        let value = tls_alpn_value("app.test", &[0xab; 32]);
        assert!(Challenge::TlsAlpn01("app.test").answered_by(&value));
        assert!(!Challenge::TlsAlpn01("www.app.test").answered_by(&value));
        assert_eq!(tls_alpn_digest(&value), Some([0xab; 32]));
        assert_eq!(tls_alpn_digest("app.test zz"), None);
    }

    #[test]
    fn per_second_allows_max_then_refuses_until_the_next_second() {
        let budget = PerSecond::default();
        assert!((0..3).all(|_| budget.take(7, 3)));
        assert!(!budget.take(7, 3));
        assert!(budget.take(8, 3));
    }
}
