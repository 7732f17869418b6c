//! From the canonical request path to the path below `root` that is looked up: the route's
//! prefix taken off (`strip_prefix`), each segment percent-decoded, and refused when it could
//! name something outside `root` or hidden (a segment starting with `.`). Pure.
//!
//! The canonical path (`http::canonical`) has no dot segments already, but it keeps encodings
//! other than unreserved characters (`%20`, `%C3%A9`, and `%2F` with `encoded_slashes =
//! "keep"`), so a decoded segment is checked again here: one that would hold a `/` or NUL, or be
//! `.` or `..`, names no file. The path is built segment by segment onto nothing, never joined
//! as a whole: an empty segment (`merge_slashes = false` keeps `//`) is skipped, so no part of a
//! request can make an absolute path that would replace `root`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// What a request asks for below `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Relative, one component per segment; empty for `root` itself.
    pub rel: PathBuf,
    /// The path ends in `/`: a folder is asked for (its index), not a file.
    pub dir: bool,
    /// A segment is hidden or cannot name a file: nothing is looked up (the fallback may be).
    pub refused: bool,
}

/// `path` is the canonical path; `strip` the length of the route's prefix to take off first;
/// `dotfiles` the segments starting with `.` that may be served.
pub fn target(path: &str, strip: Option<usize>, dotfiles: &[String]) -> Target {
    let rest = match strip {
        Some(len) => path.get(len..).unwrap_or(""),
        None => path,
    };
    let mut target = Target {
        rel: PathBuf::new(),
        dir: path.ends_with('/'),
        refused: false,
    };
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        match segment(raw, dotfiles) {
            Some(name) => target.rel.push(OsStr::from_bytes(&name)),
            None => {
                target.refused = true;
                target.rel = PathBuf::new();
                break;
            }
        }
    }
    target
}

/// One segment decoded, or `None` when it cannot name a file below `root` or is hidden.
fn segment(raw: &str, dotfiles: &[String]) -> Option<Vec<u8>> {
    let name = decode(raw)?;
    if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return None;
    }
    if name.first() == Some(&b'.') && !dotfiles.iter().any(|d| d.as_bytes() == name) {
        return None;
    }
    Some(name)
}

/// Every `%XX` decoded; `None` for a `%` without two hex digits (the canonical step refuses
/// those already).
fn decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let text = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(text, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: &str, strip: Option<usize>) -> Option<String> {
        let t = target(path, strip, &[".well-known".to_string()]);
        (!t.refused).then(|| t.rel.to_string_lossy().into_owned())
    }

    #[test]
    fn root_or_alias() {
        assert_eq!(
            rel("/static/app.js", None).as_deref(),
            Some("static/app.js")
        );
        assert_eq!(rel("/static/app.js", Some(8)).as_deref(), Some("app.js"));
        assert_eq!(rel("/static/", Some(8)).as_deref(), Some(""));
        assert_eq!(rel("/static", Some(7)).as_deref(), Some(""));
        assert_eq!(rel("/", None).as_deref(), Some(""));
        assert!(target("/a/", None, &[]).dir);
        assert!(!target("/static", Some(7), &[]).dir);
    }

    #[test]
    fn segments_are_decoded() {
        assert_eq!(rel("/my%20file.txt", None).as_deref(), Some("my file.txt"));
        assert_eq!(rel("/caf%C3%A9", None).as_deref(), Some("café"));
        assert_eq!(rel("/a%3Fb", None).as_deref(), Some("a?b"));
    }

    #[test]
    fn nothing_climbs_or_replaces_root() {
        // what `encoded_slashes = "keep"` and `merge_slashes = false` let through
        assert_eq!(rel("/..%2F..%2Fetc%2Fpasswd", None), None);
        assert_eq!(rel("/a%2Fb", None), None);
        assert_eq!(rel("/a%00.txt", None), None);
        assert_eq!(rel("//etc/passwd", None).as_deref(), Some("etc/passwd"));
        // a prefix without its slash leaves `..` behind (nginx's `alias` trap)
        assert_eq!(rel("/static..", Some(7)), None);
        assert_eq!(rel("/static../x", Some(7)), None);
        assert_eq!(rel("/a/%2e%2e/b", None), None);
        assert_eq!(rel("/bad%zz", None), None);
    }

    #[test]
    fn hidden_segments_unless_listed() {
        assert_eq!(rel("/.env", None), None);
        assert_eq!(rel("/a/.git/config", None), None);
        assert_eq!(rel("/%2Egit/config", None), None);
        assert_eq!(
            rel("/.well-known/security.txt", None).as_deref(),
            Some(".well-known/security.txt")
        );
        assert_eq!(rel("/a.b/c.d", None).as_deref(), Some("a.b/c.d"));
    }
}
