//! Validators and conditional requests for a file (RFC 9110 §8.8, §13): its `ETag` and
//! `Last-Modified`, then `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
//! `If-Modified-Since`, `If-Range` and `Range`, evaluated in the order §13.2.2 gives. Pure.

use super::range;
use crate::config::Coding;
use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderMap, HeaderValue};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The request's conditional fields, copied (refcounted) so they can go to the blocking pool.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    if_match: Option<HeaderValue>,
    if_unmodified_since: Option<HeaderValue>,
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
    range: Option<HeaderValue>,
}

impl Conditions {
    pub fn of(headers: &HeaderMap) -> Conditions {
        let field = |name| headers.get(name).cloned();
        Conditions {
            if_match: field(IF_MATCH),
            if_unmodified_since: field(IF_UNMODIFIED_SINCE),
            if_none_match: field(IF_NONE_MATCH),
            if_modified_since: field(IF_MODIFIED_SINCE),
            if_range: field(IF_RANGE),
            range: field(RANGE),
        }
    }
}

/// What a file's metadata says about its current bytes.
#[derive(Debug, Clone)]
pub struct Validators {
    /// Strong, quoted: `"<mtime secs hex>-<size hex>"` as nginx makes it, with `-br`, `-zstd`
    /// or `-gzip` after the size for a precompressed sibling (other bytes, another tag).
    pub etag: HeaderValue,
    /// Whole seconds, as `Last-Modified` carries it; `None` on a file system without mtimes.
    pub modified: Option<SystemTime>,
}

impl Validators {
    pub fn new(modified: Option<SystemTime>, len: u64, coding: Option<Coding>) -> Validators {
        let secs = modified
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let suffix = coding.map_or("", |c| match c {
            Coding::Br => "-br",
            Coding::Zstd => "-zstd",
            Coding::Gzip => "-gzip",
        });
        let tag = format!("\"{secs:x}-{len:x}{suffix}\"");
        Validators {
            // hex digits, `-` and letters only: always a valid value
            etag: HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\"")),
            modified: modified.map(|_| UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    pub fn last_modified(&self) -> Option<HeaderValue> {
        let date = httpdate::fmt_http_date(self.modified?);
        HeaderValue::from_str(&date).ok()
    }
}

/// What the request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `412`: an `If-Match` or `If-Unmodified-Since` failed.
    PreconditionFailed,
    /// `304`.
    NotModified,
    /// `200` with the whole file.
    Full,
    /// `206` with these bytes (inclusive).
    Partial(u64, u64),
    /// `416`.
    Unsatisfiable,
}

/// `get` is false for `HEAD`, whose `Range` is ignored (only `GET` has ranges, §14.2).
pub fn evaluate(c: &Conditions, v: &Validators, len: u64, get: bool) -> Verdict {
    if let Some(field) = &c.if_match {
        if !any_tag(field.as_bytes(), v.etag.as_bytes(), true) {
            return Verdict::PreconditionFailed;
        }
    } else if let (Some(since), Some(modified)) = (date(&c.if_unmodified_since), v.modified) {
        if modified > since {
            return Verdict::PreconditionFailed;
        }
    }
    if let Some(field) = &c.if_none_match {
        if any_tag(field.as_bytes(), v.etag.as_bytes(), false) {
            return Verdict::NotModified;
        }
    } else if let (Some(since), Some(modified)) = (date(&c.if_modified_since), v.modified) {
        if modified <= since {
            return Verdict::NotModified;
        }
    }
    let Some(spec) = c
        .range
        .as_ref()
        .filter(|_| get)
        .and_then(|r| range::parse(r.as_bytes()))
    else {
        return Verdict::Full;
    };
    if c.if_range.as_ref().is_some_and(|r| !if_range_holds(r, v)) {
        return Verdict::Full;
    }
    match range::resolve(spec, len) {
        Some((first, last)) => Verdict::Partial(first, last),
        None => Verdict::Unsatisfiable,
    }
}

fn date(value: &Option<HeaderValue>) -> Option<SystemTime> {
    let text = value.as_ref()?.to_str().ok()?;
    httpdate::parse_http_date(text.trim()).ok()
}

/// `If-Range` holds for a strong tag equal to ours, or a date equal to `Last-Modified`.
fn if_range_holds(value: &HeaderValue, v: &Validators) -> bool {
    let bytes = value.as_bytes();
    if bytes.starts_with(b"\"") || bytes.starts_with(b"W/") {
        return any_tag(bytes, v.etag.as_bytes(), true) && !bytes.starts_with(b"W/");
    }
    v.modified.is_some() && date(&Some(value.clone())) == v.modified
}

/// Whether the entity-tag list `field` (or `*`) matches `ours` (a strong tag, quoted). With
/// `strong`, a weak tag in the list never matches (`If-Match`, `If-Range`); without, the
/// `W/` is ignored (`If-None-Match`).
fn any_tag(field: &[u8], ours: &[u8], strong: bool) -> bool {
    let mut rest = field;
    loop {
        rest = trim_start(rest, b", \t");
        if rest.is_empty() {
            return false;
        }
        if rest[0] == b'*' {
            return true;
        }
        let weak = rest.starts_with(b"W/");
        if weak {
            rest = &rest[2..];
        }
        if rest.first() != Some(&b'"') {
            return false;
        }
        // the tag runs to the next quote (an entity tag holds no `"`, commas it may)
        let Some(end) = rest[1..].iter().position(|&b| b == b'"') else {
            return false;
        };
        let tag = &rest[..end + 2];
        if tag == ours && !(strong && weak) {
            return true;
        }
        rest = &rest[end + 2..];
    }
}

fn trim_start<'a>(mut bytes: &'a [u8], set: &[u8]) -> &'a [u8] {
    while bytes.first().is_some_and(|b| set.contains(b)) {
        bytes = &bytes[1..];
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000;

    fn validators() -> Validators {
        let modified = UNIX_EPOCH + Duration::from_millis(T * 1000 + 700);
        Validators::new(Some(modified), 1000, None)
    }

    fn with(fields: &[(http::HeaderName, &str)]) -> Conditions {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        Conditions::of(&headers)
    }

    fn verdict(fields: &[(http::HeaderName, &str)]) -> Verdict {
        evaluate(&with(fields), &validators(), 1000, true)
    }

    fn http_date(secs: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn etags_as_nginx_makes_them_and_per_encoding() {
        let v = validators();
        assert_eq!(v.etag, format!("\"{T:x}-3e8\"").as_str());
        assert_eq!(v.last_modified().unwrap(), http_date(T).as_str());
        let br = Validators::new(v.modified, 1000, Some(Coding::Br));
        assert_eq!(br.etag, format!("\"{T:x}-3e8-br\"").as_str());
        assert_eq!(Validators::new(None, 0, None).last_modified(), None);
    }

    #[test]
    fn if_none_match_and_if_modified_since() {
        let tag = format!("\"{T:x}-3e8\"");
        assert_eq!(verdict(&[(IF_NONE_MATCH, &tag)]), Verdict::NotModified);
        let list = format!("\"x\", W/{tag}");
        assert_eq!(verdict(&[(IF_NONE_MATCH, &list)]), Verdict::NotModified);
        assert_eq!(verdict(&[(IF_NONE_MATCH, "*")]), Verdict::NotModified);
        assert_eq!(verdict(&[(IF_NONE_MATCH, "\"other\"")]), Verdict::Full);
        assert_eq!(
            verdict(&[(IF_MODIFIED_SINCE, &http_date(T))]),
            Verdict::NotModified
        );
        assert_eq!(
            verdict(&[(IF_MODIFIED_SINCE, &http_date(T - 1))]),
            Verdict::Full
        );
        // If-None-Match wins over If-Modified-Since
        let both = [
            (IF_NONE_MATCH, "\"other\""),
            (IF_MODIFIED_SINCE, &http_date(T)),
        ];
        assert_eq!(verdict(&both), Verdict::Full);
        assert_eq!(verdict(&[(IF_MODIFIED_SINCE, "yesterday")]), Verdict::Full);
    }

    #[test]
    fn if_match_and_if_unmodified_since() {
        let tag = format!("\"{T:x}-3e8\"");
        assert_eq!(verdict(&[(IF_MATCH, &tag)]), Verdict::Full);
        assert_eq!(verdict(&[(IF_MATCH, "*")]), Verdict::Full);
        let weak = format!("W/{tag}");
        assert_eq!(verdict(&[(IF_MATCH, &weak)]), Verdict::PreconditionFailed);
        assert_eq!(
            verdict(&[(IF_UNMODIFIED_SINCE, &http_date(T - 1))]),
            Verdict::PreconditionFailed
        );
        assert_eq!(
            verdict(&[(IF_UNMODIFIED_SINCE, &http_date(T))]),
            Verdict::Full
        );
    }

    #[test]
    fn ranges_and_if_range() {
        let tag = format!("\"{T:x}-3e8\"");
        assert_eq!(verdict(&[(RANGE, "bytes=0-9")]), Verdict::Partial(0, 9));
        assert_eq!(verdict(&[(RANGE, "bytes=1000-")]), Verdict::Unsatisfiable);
        assert_eq!(verdict(&[(RANGE, "bytes=0-1,3-4")]), Verdict::Full);
        let r = (RANGE, "bytes=-10");
        assert_eq!(
            verdict(&[r.clone(), (IF_RANGE, &tag)]),
            Verdict::Partial(990, 999)
        );
        assert_eq!(verdict(&[r.clone(), (IF_RANGE, "\"old\"")]), Verdict::Full);
        let weak = format!("W/{tag}");
        assert_eq!(verdict(&[r.clone(), (IF_RANGE, &weak)]), Verdict::Full);
        let date = http_date(T);
        assert_eq!(
            verdict(&[r.clone(), (IF_RANGE, &date)]),
            Verdict::Partial(990, 999)
        );
        let old = http_date(T - 60);
        assert_eq!(verdict(&[r.clone(), (IF_RANGE, &old)]), Verdict::Full);
        // HEAD: no range
        let c = with(&[r]);
        assert_eq!(evaluate(&c, &validators(), 1000, false), Verdict::Full);
    }

    #[test]
    fn tag_lists() {
        assert!(any_tag(b"\"a,b\", \"c\"", b"\"c\"", true));
        assert!(any_tag(b"\"a,b\"", b"\"a,b\"", true));
        assert!(!any_tag(b"\"a", b"\"a\"", false));
        assert!(!any_tag(b"a", b"\"a\"", false));
        assert!(!any_tag(b"", b"\"a\"", false));
    }
}
