//! A second, deliberately plain implementation of the canonical path (docs/security.md,
//! `gatehouse::http::canonical::path`) to compare the real one against: each segment rendered on
//! its own, slashes merged as a list operation, and dot segments removed by RFC 3986 §5.2.4 as
//! the RFC writes it (string buffers, rules A to E). It is slow and allocates freely; it only has
//! to be obviously right. Shared by tests/canonical_props.rs and the fuzz targets (fuzz/).

use gatehouse::http::canonical::{EncodedSlashes, PathParameters, PathRules};

/// The canonical form of `raw`, or `Err(())` when Gatehouse must refuse it (400).
pub fn canonical_path(raw: &str, rules: PathRules) -> Result<String, ()> {
    let rest = raw.strip_prefix('/').ok_or(())?;
    // `path_parameters = "reject"`: any raw `;` is refused
    if rules.parameters == PathParameters::Reject && raw.contains(';') {
        return Err(());
    }
    let mut segments = rest
        .split('/')
        .map(|segment| render(segment, rules))
        .collect::<Result<Vec<_>, ()>>()?;
    // a kept `%2F` must not hide a dot segment from the edge
    let hides_dot = |s: &String| {
        s.contains("%2F")
            && s.split("%2F").any(|part| {
                let name = part.split(';').next().unwrap_or_default();
                let name = name.split("%3B").next().unwrap_or_default();
                name == "." || name == ".."
            })
    };
    if segments.iter().any(hides_dot) {
        return Err(());
    }
    if rules.merge_slashes {
        merge_empty(&mut segments);
    }
    // `..;x`, `.;`, `..%3B`: the origin drops the parameters before resolving (Tomcat, Jetty)
    for segment in &mut segments {
        let name = segment.split(';').next().unwrap_or_default();
        let name = name.split("%3B").next().unwrap_or_default();
        if name == "." || name == ".." {
            *segment = name.to_string();
        }
    }
    let joined: String = segments.iter().map(|s| format!("/{s}")).collect();
    let resolved = remove_dot_segments(&joined).ok_or(())?;
    Ok(if resolved.is_empty() {
        "/".to_string()
    } else {
        resolved
    })
}

/// One segment (no raw `/` in it) in canonical text: unreserved characters decoded, every other
/// encoding in upper case, `%2F` kept encoded (or refused), everything no origin agrees on refused.
fn render(segment: &str, rules: PathRules) -> Result<String, ()> {
    let mut out = String::new();
    let mut bytes = segment.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            if b == b'\\' || b == b' ' || b.is_ascii_control() || !b.is_ascii() {
                return Err(());
            }
            out.push(char::from(b));
            continue;
        }
        let high = bytes
            .next()
            .and_then(|h| char::from(h).to_digit(16))
            .ok_or(())?;
        let low = bytes
            .next()
            .and_then(|h| char::from(h).to_digit(16))
            .ok_or(())?;
        let value = u8::try_from(high * 16 + low).map_err(|_| ())?;
        match value {
            b'/' if rules.encoded_slashes == EncodedSlashes::Keep => out.push_str("%2F"),
            b'/' | b'\\' => return Err(()),
            v if v.is_ascii_control() => return Err(()),
            v if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(char::from(v)),
            v => out.push_str(&format!("%{v:02X}")),
        }
    }
    Ok(out)
}

/// `//a///b//` -> `/a/b/`: empty segments go, except the last one (the trailing slash).
fn merge_empty(segments: &mut Vec<String>) {
    let last = segments.pop();
    segments.retain(|s| !s.is_empty());
    segments.extend(last);
}

/// RFC 3986 §5.2.4, with one change: a `..` that finds the output buffer empty climbs above the
/// root, which the RFC silently ignores and Gatehouse refuses (`None`). The input buffer is a
/// slice of `path` (each rule only cuts from its front, or leaves `/`), so a long path costs
/// linear time, which keeps the fuzz target fast.
pub fn remove_dot_segments(path: &str) -> Option<String> {
    let mut input = path;
    let mut output = String::new();
    while !input.is_empty() {
        if input.starts_with("../") {
            input = &input[3..]; // A
        } else if input.starts_with("./") || input.starts_with("/./") {
            input = &input[2..]; // A, B (`/./x` -> `/x`)
        } else if input == "/." {
            input = "/"; // B
        } else if input.starts_with("/../") || input == "/.." {
            input = input
                .get(3..)
                .filter(|rest| !rest.is_empty())
                .unwrap_or("/"); // C
            if output.is_empty() {
                return None;
            }
            output.truncate(output.rfind('/').unwrap_or(0));
        } else if input == "." || input == ".." {
            input = ""; // D
        } else {
            // E: the first segment, with its leading `/`, up to the next `/`
            let end = input[1..].find('/').map_or(input.len(), |i| i + 1);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    Some(output)
}
