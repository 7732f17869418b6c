//! `Range: bytes=...` (RFC 9110 §14.2): one range is served as `206`; a request for several is
//! answered with the whole file (`200`), which RFC 9110 allows (a server may ignore `Range`)
//! and spares a `multipart/byteranges` body that browsers and download tools do not ask for.
//! Pure.

/// One byte range as asked for, before the file's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `first-last`, both inclusive.
    FromTo(u64, u64),
    /// `first-`: to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Last(u64),
}

/// The one range `value` asks for; `None` when it is not a single valid byte range (another
/// unit, bad syntax, several ranges): the whole file is then served.
pub fn parse(value: &[u8]) -> Option<Spec> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (unit, set) = text.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    // empty list elements are allowed (RFC 9110 §5.6.1), so "bytes=0-1," is one range
    let mut specs = set.split(',').map(str::trim).filter(|s| !s.is_empty());
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    match (number(first), number(last)) {
        (Some(first), Some(last)) if first <= last => Some(Spec::FromTo(first, last)),
        (Some(first), None) if last.is_empty() => Some(Spec::From(first)),
        (None, Some(n)) if first.is_empty() => Some(Spec::Last(n)),
        _ => None,
    }
}

/// Digits only; a value too large for `u64` saturates (a `last` past any file is the end).
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// The inclusive byte positions `spec` covers in a file of `len` bytes; `None` when it is not
/// satisfiable (`416`): a start at or past the end, or `-0`.
pub fn resolve(spec: Spec, len: u64) -> Option<(u64, u64)> {
    let last = len.checked_sub(1)?;
    match spec {
        Spec::FromTo(first, end) if first < len => Some((first, end.min(last))),
        Spec::From(first) if first < len => Some((first, last)),
        Spec::Last(n) if n > 0 => Some((len.saturating_sub(n), last)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, len: u64) -> Option<Option<(u64, u64)>> {
        parse(value.as_bytes()).map(|spec| resolve(spec, len))
    }

    #[test]
    fn first_suffix_and_open_ranges() {
        assert_eq!(range("bytes=0-99", 1000), Some(Some((0, 99))));
        assert_eq!(range("bytes=-500", 1000), Some(Some((500, 999))));
        assert_eq!(range("bytes=100-", 1000), Some(Some((100, 999))));
        assert_eq!(range("Bytes = 0-0", 1000), Some(Some((0, 0))));
        // past the end is cut to it; a suffix longer than the file is all of it
        assert_eq!(range("bytes=900-5000", 1000), Some(Some((900, 999))));
        assert_eq!(range("bytes=-5000", 1000), Some(Some((0, 999))));
        assert_eq!(
            range("bytes=0-99999999999999999999999", 10),
            Some(Some((0, 9)))
        );
        assert_eq!(range("bytes=0-1,", 10), Some(Some((0, 1))));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(range("bytes=1000-", 1000), Some(None));
        assert_eq!(range("bytes=1000-1001", 1000), Some(None));
        assert_eq!(range("bytes=-0", 1000), Some(None));
        assert_eq!(range("bytes=0-", 0), Some(None));
        assert_eq!(range("bytes=99999999999999999999-", 10), Some(None));
    }

    #[test]
    fn ignored_as_a_whole() {
        for value in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-2-3",
            "items=0-1",
            "0-1",
            "bytes=+1-2",
            "bytes= -1 - 2",
        ] {
            assert_eq!(parse(value.as_bytes()), None, "{value}");
        }
    }
}
