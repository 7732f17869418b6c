//! The `basic_auth` and `forward_auth` keys of a `[[site]]` (a default for its routes) and of a
//! `[[site.route]]` (which replaces the site's whole, or turns it off with `"off"`). A
//! `users_file` is only named here; `crate::load` reads it.

use super::Ctx;
use crate::config::auth::{
    check_user_name, BasicAuth, ForwardAuth, PasswordHash, UserSource, Users,
    DEFAULT_FORWARD_AUTH_TIMEOUT, DEFAULT_REALM,
};
use crate::config::file::{FileBasicAuth, FileForwardAuth, FileOffOr, Str};
use crate::config::FileKind;
use http::{HeaderName, Uri};
use std::ops::Range;
use toml::Spanned;

const BASIC_HINT: &str = "expected `basic_auth = { realm = \"admin\", users = { alice = \"$argon2id$...\" } }` or `{ users_file = \"users.htpasswd\" }`";
const URL_HINT: &str = "expected the auth service's endpoint as an http:// or https:// URL, e.g. \"http://authelia:9091/api/authz/forward-auth\"";

/// `inherited` (the site's) unless `raw` says otherwise. `key` is "site" or "site.route".
pub(super) fn basic(
    cx: &mut Ctx,
    raw: Option<&Spanned<FileOffOr<FileBasicAuth>>>,
    inherited: Option<&BasicAuth>,
    key: &str,
) -> Option<BasicAuth> {
    let Some(raw) = raw else {
        return inherited.cloned();
    };
    let key = format!("{key}.basic_auth");
    match raw.get_ref() {
        FileOffOr::Off => None,
        FileOffOr::On(table) => basic_table(cx, table, raw.span(), &key),
    }
}

fn basic_table(
    cx: &mut Ctx,
    t: &FileBasicAuth,
    span: Range<usize>,
    key: &str,
) -> Option<BasicAuth> {
    let realm = match &t.realm {
        None => DEFAULT_REALM.to_string(),
        Some(value) => realm(cx, value, &format!("{key}.realm"))?,
    };
    let users = match (&t.users, &t.users_file) {
        (Some(users), None) => UserSource::Inline(inline_users(cx, users, key)?),
        (None, Some(file)) => {
            let text = cx.expand(file, &format!("{key}.users_file"))?;
            let path = cx.relative(&text);
            cx.names(
                FileKind::Users(path.clone()),
                file.span(),
                &format!("{key}.users_file"),
            );
            UserSource::File(path)
        }
        (Some(_), Some(file)) => {
            let msg = "`users` and `users_file` both given; keep one (the users in the config, or a file of `user:hash` lines)";
            cx.error(file.span(), &format!("{key}.users_file"), msg);
            return None;
        }
        (None, None) => {
            let msg = format!("no users; {BASIC_HINT}");
            cx.error(span, &format!("{key}.users"), msg);
            return None;
        }
    };
    Some(BasicAuth {
        realm,
        users,
        forward_credentials: t.forward_credentials.as_ref().is_some_and(|f| *f.get_ref()),
    })
}

/// The realm goes into `WWW-Authenticate: Basic realm="..."` as a quoted string.
fn realm(cx: &mut Ctx, value: &Str, key: &str) -> Option<String> {
    let text = cx.expand(value, key)?;
    let bad = text.is_empty()
        || text
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control() || !c.is_ascii());
    if bad {
        let msg = format!(
            "`{}` cannot be a realm; expected printable ASCII without `\"` or `\\`, e.g. \"admin\"",
            text.escape_default()
        );
        cx.error(value.span(), key, msg);
        return None;
    }
    Some(text)
}

fn inline_users(
    cx: &mut Ctx,
    users: &Spanned<std::collections::BTreeMap<Str, Str>>,
    key: &str,
) -> Option<Users> {
    let key = format!("{key}.users");
    if users.get_ref().is_empty() {
        let msg = format!("`users` is empty, which would let nobody in; {BASIC_HINT}");
        cx.error(users.span(), &key, msg);
        return None;
    }
    let mut pairs = Vec::new();
    let mut good = true;
    for (name, hash) in users.get_ref() {
        if let Err(msg) = check_user_name(name.get_ref()) {
            cx.error(name.span(), &key, msg);
            good = false;
        }
        let Some(text) = cx.expand(hash, &key) else {
            good = false;
            continue;
        };
        match PasswordHash::parse(&text) {
            Ok(hash) => pairs.push((name.get_ref().clone(), hash)),
            Err(msg) => {
                cx.error(hash.span(), &format!("{key}.{}", name.get_ref()), msg);
                good = false;
            }
        }
    }
    good.then(|| Users::new(pairs))
}

/// As [`basic`], for `forward_auth`.
pub(super) fn forward(
    cx: &mut Ctx,
    raw: Option<&Spanned<FileOffOr<FileForwardAuth>>>,
    inherited: Option<&ForwardAuth>,
    key: &str,
) -> Option<ForwardAuth> {
    let Some(raw) = raw else {
        return inherited.cloned();
    };
    let key = format!("{key}.forward_auth");
    let table = match raw.get_ref() {
        FileOffOr::Off => return None,
        FileOffOr::On(table) => table,
    };
    let url = match &table.url {
        Some(url) => auth_url(cx, url, &format!("{key}.url")),
        None => {
            cx.error(
                raw.span(),
                &format!("{key}.url"),
                format!("`url` is missing; {URL_HINT}"),
            );
            None
        }
    };
    let copy_headers = match &table.copy_headers {
        None => Vec::new(),
        Some(list) => cx
            .list(
                list,
                &format!("{key}.copy_headers"),
                super::Repeats::Dropped,
                copy_header,
            )
            .ok()?,
    };
    let timeout = cx.duration(
        &table.timeout,
        &format!("{key}.timeout"),
        DEFAULT_FORWARD_AUTH_TIMEOUT,
    );
    Some(ForwardAuth {
        url: url?,
        copy_headers,
        timeout,
    })
}

fn auth_url(cx: &mut Ctx, value: &Str, key: &str) -> Option<Uri> {
    let text = cx.expand(value, key)?;
    match parse_url(&text) {
        Ok(uri) => Some(uri),
        Err(why) => {
            cx.error(value.span(), key, format!("`{text}` {why}; {URL_HINT}"));
            None
        }
    }
}

fn parse_url(text: &str) -> Result<Uri, &'static str> {
    let uri: Uri = text.parse().map_err(|_| "is not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("is not an http:// or https:// URL"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("names no host");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("carries credentials, which Gatehouse would not send");
    }
    Ok(uri)
}

/// A header the auth service's answer may set on the upstream request: not one that frames
/// the message or routes it.
fn copy_header(text: &str) -> Result<HeaderName, String> {
    let name = HeaderName::try_from(text)
        .map_err(|_| format!("`{text}` is not a header name; expected e.g. \"Remote-User\""))?;
    const REFUSED: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
    ];
    if REFUSED.contains(&name.as_str()) {
        return Err(format!("`{text}` frames or routes the request and cannot come from the auth service; list the headers it answers with, e.g. \"Remote-User\""));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_urls_are_http_or_https_with_a_host() {
        assert!(parse_url("http://authelia:9091/api/authz/forward-auth").is_ok());
        assert!(parse_url("https://auth.example.com/oauth2/auth").is_ok());
        assert!(parse_url("ftp://auth/x").is_err());
        assert!(parse_url("authelia:9091/x").is_err());
        assert!(parse_url("http://user:pw@auth/x").is_err());
        assert!(parse_url("/api/verify").is_err());
    }

    #[test]
    fn copied_headers_cannot_frame_the_request() {
        assert!(copy_header("Remote-User").is_ok());
        assert!(copy_header("Content-Length").is_err());
        assert!(copy_header("bad name").is_err());
    }
}
