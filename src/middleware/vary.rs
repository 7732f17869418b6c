//! `Vary`, as the middlewares that make a response depend on a request header (`encode` on
//! `Accept-Encoding`, `cors` on `Origin`) add to it: one field line, each token once.

use super::has_token;
use http::header::{HeaderMap, HeaderValue, VARY};

/// Adds `token` to `Vary` unless it is listed already (any case) or `Vary: *` covers it. The
/// response's `Vary` lines, if any, are merged into one with `token` at the end (recipients
/// combine repeated lines into one list, so the meaning is the same, and the wire is plainer).
pub fn add(headers: &mut HeaderMap, token: &'static str) {
    let listed = headers.get_all(VARY);
    if has_token(listed.iter(), token.as_bytes()) || has_token(listed.iter(), b"*") {
        return;
    }
    let mut merged = Vec::new();
    for value in headers.get_all(VARY) {
        merged.extend_from_slice(value.as_bytes());
        merged.extend_from_slice(b", ");
    }
    if merged.is_empty() {
        headers.insert(VARY, HeaderValue::from_static(token));
        return;
    }
    merged.extend_from_slice(token.as_bytes());
    match HeaderValue::from_bytes(&merged) {
        Ok(value) => {
            headers.insert(VARY, value);
        }
        // not reached (valid lines joined by ", " stay valid); a line of its own means the same
        Err(_) => {
            headers.append(VARY, HeaderValue::from_static(token));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vary_after(lines: &[&'static str], token: &'static str) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(VARY, HeaderValue::from_static(line));
        }
        add(&mut headers, token);
        headers
            .get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn empty_gets_the_token() {
        assert_eq!(vary_after(&[], "Origin"), ["Origin"]);
    }

    #[test]
    fn a_listed_token_is_not_repeated_in_any_case() {
        assert_eq!(vary_after(&["origin"], "Origin"), ["origin"]);
        let lines = ["Cookie", " Accept-Encoding ,ORIGIN"];
        assert_eq!(vary_after(&lines, "Origin"), lines);
        // a token that merely contains it is another token
        assert_eq!(
            vary_after(&["X-Origin-Id"], "Origin"),
            ["X-Origin-Id, Origin"]
        );
    }

    #[test]
    fn star_is_left_alone() {
        assert_eq!(vary_after(&["*"], "Origin"), ["*"]);
        assert_eq!(vary_after(&["Cookie", "*"], "Origin"), ["Cookie", "*"]);
    }

    #[test]
    fn several_lines_become_one() {
        assert_eq!(
            vary_after(&["Accept-Encoding"], "Origin"),
            ["Accept-Encoding, Origin"]
        );
        assert_eq!(
            vary_after(
                &["Cookie", "Accept-Language, User-Agent"],
                "Accept-Encoding"
            ),
            ["Cookie, Accept-Language, User-Agent, Accept-Encoding"]
        );
    }
}
