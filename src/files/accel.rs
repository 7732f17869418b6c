//! Internal redirects (`X-Accel-Redirect`, nginx's name for what Apache and Lighttpd call
//! `X-Sendfile`): an application answers with a path instead of a file's bytes, having checked
//! who may download it, and the edge serves that path from a route of the same site (usually a
//! `files` route marked `internal`, which no client reaches directly).
//!
//! As nginx does: the request is served again for the new path, as a `GET` (a `HEAD` stays a
//! `HEAD`), with the client's own headers (so `Range` and `If-None-Match` work on the file);
//! of the upstream's answer only `Content-Type`, `Content-Disposition`, `Cache-Control`,
//! `Expires` and `Set-Cookie` are kept, and its body is discarded. Redirects are followed
//! once: the route served is never a proxy route, so no second upstream answer can redirect
//! again. This module holds the pure parts; `http::service` does the serving.

use crate::config::PathRules;
use crate::http::canonical;
use http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE, EXPIRES, SET_COOKIE};
use http::{HeaderMap, HeaderName, Method, Request};

pub static X_ACCEL_REDIRECT: HeaderName = HeaderName::from_static("x-accel-redirect");

/// What an internal redirect needs of the client's request, kept before the request goes
/// upstream (only on a route with `accel_redirect`).
#[derive(Debug)]
pub struct Kept {
    /// `GET`, or `HEAD` for a `HEAD`.
    pub method: Method,
    pub headers: HeaderMap,
}

impl Kept {
    pub fn of<B>(req: &Request<B>) -> Kept {
        let method = match *req.method() {
            Method::HEAD => Method::HEAD,
            _ => Method::GET,
        };
        Kept {
            method,
            headers: req.headers().clone(),
        }
    }
}

/// The path an upstream's answer redirects to, canonical, and its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: String,
    pub query: Option<String>,
}

/// Why an `X-Accel-Redirect` is not followed: the upstream's fault, answered `502`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRedirect {
    #[error("not a path starting with `/` (named locations are not supported)")]
    NotAPath,
    #[error("the path cannot be made canonical: {0}")]
    Uncanonical(canonical::BadPath),
    #[error(
        "it names a route that proxies (only `files`, `respond` and `redirect` routes are served)"
    )]
    ToProxy,
}

/// `None` when the answer carries no `X-Accel-Redirect`; else the path it names, made
/// canonical under the server's rules exactly as a client's path is (so a route's `internal`
/// files cannot be escaped through it either).
pub fn target(headers: &HeaderMap, rules: PathRules) -> Option<Result<Target, BadRedirect>> {
    let value = headers.get(&X_ACCEL_REDIRECT)?;
    Some(parse(value.as_bytes(), rules))
}

fn parse(value: &[u8], rules: PathRules) -> Result<Target, BadRedirect> {
    let text = std::str::from_utf8(value).map_err(|_| BadRedirect::NotAPath)?;
    let (path, query) = match text.trim().split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (text.trim(), None),
    };
    if !path.starts_with('/') {
        return Err(BadRedirect::NotAPath);
    }
    let path = canonical::path(path, rules).map_err(BadRedirect::Uncanonical)?;
    Ok(Target {
        path: path.into_owned(),
        query,
    })
}

/// The upstream's headers that stay on the answer served instead (nginx's list): its
/// `Content-Type` replaces the file's, the others are added.
pub fn carry(from: &HeaderMap, to: &mut HeaderMap) {
    for name in [
        CONTENT_TYPE,
        CONTENT_DISPOSITION,
        CACHE_CONTROL,
        EXPIRES,
        SET_COOKIE,
    ] {
        let mut values = from.get_all(&name).iter();
        let Some(first) = values.next() else { continue };
        to.insert(name.clone(), first.clone());
        for more in values {
            to.append(name.clone(), more.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn target_of(value: &str) -> Option<Result<Target, BadRedirect>> {
        let mut headers = HeaderMap::new();
        headers.insert(&X_ACCEL_REDIRECT, HeaderValue::from_str(value).unwrap());
        target(&headers, PathRules::default())
    }

    #[test]
    fn paths_are_made_canonical() {
        let t = target_of("/protected/f.bin").unwrap().unwrap();
        assert_eq!((t.path.as_str(), t.query), ("/protected/f.bin", None));
        let t = target_of("/protected/a/../%66.bin?x=1").unwrap().unwrap();
        assert_eq!(t.path, "/protected/f.bin");
        assert_eq!(t.query.as_deref(), Some("x=1"));
        assert_eq!(target(&HeaderMap::new(), PathRules::default()), None);
    }

    #[test]
    fn bad_paths_are_refused() {
        let bad = |v: &str| target_of(v).unwrap().unwrap_err();
        assert_eq!(bad("@named"), BadRedirect::NotAPath);
        assert_eq!(bad("protected/f"), BadRedirect::NotAPath);
        assert_eq!(bad(""), BadRedirect::NotAPath);
        assert!(matches!(bad("/../etc/passwd"), BadRedirect::Uncanonical(_)));
        assert!(matches!(bad("/a%2Fb"), BadRedirect::Uncanonical(_)));
    }

    #[test]
    fn kept_headers_as_nginx() {
        let mut from = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/pdf"),
            ("content-disposition", "attachment; filename=\"f.pdf\""),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-accel-redirect", "/p/f"),
            ("etag", "\"upstream\""),
            ("content-length", "0"),
        ] {
            from.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut to = HeaderMap::new();
        to.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        to.insert("etag", HeaderValue::from_static("\"file\""));
        carry(&from, &mut to);
        assert_eq!(to[CONTENT_TYPE], "application/pdf");
        assert_eq!(to.get_all(SET_COOKIE).iter().count(), 2);
        assert_eq!(to["etag"], "\"file\"");
        assert!(to.get(&X_ACCEL_REDIRECT).is_none() && to.get("content-length").is_none());
        assert!(to.contains_key(CONTENT_DISPOSITION));
    }

    #[test]
    fn methods_become_get_except_head() {
        let req = |m: Method| Request::builder().method(m).body(()).unwrap();
        assert_eq!(Kept::of(&req(Method::POST)).method, Method::GET);
        assert_eq!(Kept::of(&req(Method::HEAD)).method, Method::HEAD);
    }
}
