//! The validated `basic_auth` and `forward_auth` settings of a route, and the password-hash and
//! users-file formats they read (pure parsing; verifying a password is `middleware::basic_auth`'s).

use http::{HeaderName, Uri};
use std::path::PathBuf;
use std::time::Duration;

/// The realm a route without one gets (Caddy's word too).
pub const DEFAULT_REALM: &str = "restricted";
/// How long `forward_auth` waits for the auth service's whole answer by default.
pub const DEFAULT_FORWARD_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `basic_auth`: the users Gatehouse itself checks `Authorization: Basic` against.
#[derive(Clone, Debug, PartialEq)]
pub struct BasicAuth {
    /// Shown by the browser's prompt; a valid quoted-string body (no `"`, `\` or control).
    pub realm: String,
    pub users: UserSource,
    /// The client's `Authorization` goes upstream too (else it is removed).
    pub forward_credentials: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum UserSource {
    /// From the config, each hash checked by validation.
    Inline(Users),
    /// A `users_file`, read (and its hashes checked) by `crate::load`.
    File(PathBuf),
}

/// User names and their password hashes, sorted by name (each name once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Users(Vec<(String, PasswordHash)>);

impl Users {
    /// From pairs in any order; a later repeat of a name is dropped (validation reports it).
    pub fn new(mut pairs: Vec<(String, PasswordHash)>) -> Users {
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|a, b| a.0 == b.0);
        Users(pairs)
    }

    /// The hash of user `name`.
    pub fn get(&self, name: &str) -> Option<&PasswordHash> {
        let at = self
            .0
            .binary_search_by(|(u, _)| u.as_str().cmp(name))
            .ok()?;
        Some(&self.0[at].1)
    }

    /// The first user's hash: what an unknown user's password is checked against.
    pub fn first(&self) -> Option<&PasswordHash> {
        self.0.first().map(|(_, hash)| hash)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, PasswordHash)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A password hash in one of the formats Gatehouse verifies, checked to parse.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PasswordHash {
    text: String,
    scheme: HashScheme,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashScheme {
    /// A PHC string `$argon2id$v=19$m=...,t=...,p=...$salt$hash` (argon2i and argon2d pass too).
    Argon2,
    /// `$2b$12$...` (and `$2a$`, `$2y$`, `$2x$`: `htpasswd -B` writes `$2y$`).
    Bcrypt,
}

pub const HASH_HINT: &str = "expected an argon2id hash (`$argon2id$v=19$m=19456,t=2,p=1$...`, made by `gatehouse hash-password`) or a bcrypt hash (`$2y$...`, made by `htpasswd -nB user`)";

impl PasswordHash {
    /// The hash in `text`, or what is wrong with it (for a config error).
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let scheme = if text.starts_with("$argon2") {
            let parsed = argon2::PasswordHash::new(text)
                .map_err(|e| format!("not a valid argon2 hash ({e}); {HASH_HINT}"))?;
            argon2::Params::try_from(&parsed)
                .map_err(|e| format!("argon2 parameters out of range ({e}); {HASH_HINT}"))?;
            HashScheme::Argon2
        } else if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| text.starts_with(p))
        {
            text.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("not a valid bcrypt hash ({e}); {HASH_HINT}"))?;
            HashScheme::Bcrypt
        } else {
            let shown: String = text.chars().take(12).collect();
            let what = match text {
                t if t.starts_with("$apr1$") => {
                    "an Apache MD5 hash (`$apr1$`), which is too fast to resist guessing"
                }
                t if t.starts_with("{SHA}") => {
                    "an unsalted SHA-1 hash (`{SHA}`), which is too fast to resist guessing"
                }
                t if t.starts_with("$5$") || t.starts_with("$6$") => {
                    "a crypt SHA hash, not supported"
                }
                _ => "not a password hash Gatehouse knows",
            };
            return Err(format!("`{shown}...` is {what}; {HASH_HINT}"));
        };
        Ok(PasswordHash {
            text: text.to_string(),
            scheme,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }
}

/// One bad line of a users file: its number (from 1) and what is wrong.
#[derive(Debug, PartialEq)]
pub struct BadLine(pub usize, pub String);

/// An htpasswd-style file: `user:hash` per line; blank lines and `#` comments are skipped.
pub fn parse_users_file(text: &str) -> Result<Users, BadLine> {
    let mut pairs: Vec<(String, PasswordHash)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |msg: String| BadLine(i + 1, msg);
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| bad("expected `user:hash`".to_string()))?;
        check_user_name(user).map_err(bad)?;
        if pairs.iter().any(|(u, _)| u == user) {
            return Err(bad(format!("user `{user}` is listed twice")));
        }
        let hash = PasswordHash::parse(hash).map_err(bad)?;
        pairs.push((user.to_string(), hash));
    }
    if pairs.is_empty() {
        return Err(BadLine(
            0,
            "no `user:hash` line; add one (the file would let nobody in)".to_string(),
        ));
    }
    Ok(Users::new(pairs))
}

/// A name a client can send in `Authorization: Basic` (RFC 7617: no `:`, no control).
pub fn check_user_name(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("a user name is empty".to_string());
    }
    if user.contains(':') || user.chars().any(char::is_control) {
        return Err(format!("user name `{}` has a `:` or a control character, which `Authorization: Basic` cannot carry", user.escape_default()));
    }
    Ok(())
}

/// `forward_auth`: an auth service asked about each request before it goes on.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardAuth {
    /// `http://` or `https://`, with the path (and query) the service answers on.
    pub url: Uri,
    /// Copied from a `2xx` answer into the upstream request; the client's own copies are always
    /// removed.
    pub copy_headers: Vec<HeaderName>,
    /// For the whole exchange with the auth service: connect, answer head and body.
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    // well-formed hashes (of no password in particular)
    pub const ARGON: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0a1Dk6M4vM3d2Ep0Ak5J4MDy8R3w3DMlL3E0mzZHRXs";
    pub const BCRYPT: &str = "$2y$05$xo0NKu7cHQe6OKYn7bS3ceJnlEvmXh4gvn8Pom.tgfmIxW0m2zDuq";

    #[test]
    fn hashes_are_recognised_or_refused_with_a_hint() {
        assert_eq!(
            PasswordHash::parse(ARGON).unwrap().scheme(),
            HashScheme::Argon2
        );
        assert_eq!(
            PasswordHash::parse(BCRYPT).unwrap().scheme(),
            HashScheme::Bcrypt
        );
        for bad in [
            "$apr1$abc$def",
            "{SHA}abc",
            "plain",
            "$argon2id$v=19$m=1",
            "$2y$05$short",
        ] {
            let err = PasswordHash::parse(bad).unwrap_err();
            assert!(err.contains("gatehouse hash-password"), "{bad}: {err}");
        }
    }

    #[test]
    fn users_files_are_read_line_by_line() {
        let text = format!("# admins\n\nalice:{ARGON}\nbob:{BCRYPT}\n");
        let users = parse_users_file(&text).unwrap();
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        let bad = format!("alice:{ARGON}\nbob\n");
        assert_eq!(parse_users_file(&bad).unwrap_err().0, 2);
        let twice = format!("alice:{ARGON}\nalice:{BCRYPT}\n");
        assert!(parse_users_file(&twice).unwrap_err().1.contains("twice"));
        assert_eq!(parse_users_file("# none\n").unwrap_err().0, 0);
    }
}
