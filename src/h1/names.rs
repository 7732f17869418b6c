//! Field names the codec turned into `HeaderName`s lately, kept per thread: a name seen again
//! (a client's or a backend's messages carry the same ones, spelled the same way) costs one
//! comparison of its bytes rather than `HeaderName::from_bytes`, which parses a standard name
//! (~100 instructions) and copies a custom one (`X-Powered-By`) into an allocation of its own,
//! per message.
//!
//! Direct-mapped: a name's slot comes from its length and its first and last bytes, and a name
//! that lands on a taken slot replaces what was there. Names are kept as spelled (`Server` and
//! `server` are two), up to `LONGEST` bytes; a thread holds `SLOTS` of them, about 1 KiB.

use http::header::{HeaderName, InvalidHeaderName};
use std::cell::RefCell;

const SLOTS: usize = 16;
/// Longer names are not kept (rare, and each slot holds this many bytes).
const LONGEST: usize = 24;

struct Kept {
    raw: [u8; LONGEST],
    len: usize,
    name: HeaderName,
}

thread_local! {
    static KEPT: RefCell<[Option<Kept>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// `raw` as a `HeaderName` (as `HeaderName::from_bytes`, whose errors it gives).
pub fn name(raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let (Some(&first), Some(&last)) = (raw.first(), raw.last()) else {
        return HeaderName::from_bytes(raw);
    };
    if raw.len() > LONGEST {
        return HeaderName::from_bytes(raw);
    }
    let at = (raw.len() ^ usize::from(first) ^ usize::from(last) << 1) % SLOTS;
    let kept = KEPT.try_with(|kept| {
        let mut kept = kept.try_borrow_mut().ok()?;
        let slot = kept.get_mut(at)?;
        if let Some(k) = slot {
            if k.raw.get(..k.len) == Some(raw) {
                return Some(Ok(k.name.clone()));
            }
        }
        let name = match HeaderName::from_bytes(raw) {
            Ok(name) => name,
            Err(e) => return Some(Err(e)),
        };
        let mut copy = [0; LONGEST];
        copy.get_mut(..raw.len())?.copy_from_slice(raw);
        *slot = Some(Kept {
            raw: copy,
            len: raw.len(),
            name: name.clone(),
        });
        Some(Ok(name))
    });
    match kept {
        Ok(Some(name)) => name,
        // the thread is ending, or a name is being made inside another (neither happens on
        // the request path)
        _ => HeaderName::from_bytes(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_from_bytes_makes_kept_or_not() {
        let names = [
            "Server",
            "server",
            "Date",
            "Content-Type",
            "X-Powered-By",
            "x-powered-by",
            "X-A",
            "X-B",
            "Set-Cookie",
            "A-Very-Long-Custom-Header-Name-Indeed",
            "x",
        ];
        // twice over, so the second round finds them kept (or replaced by a neighbour)
        for _ in 0..2 {
            for raw in names {
                let made = name(raw.as_bytes()).unwrap();
                assert_eq!(
                    made,
                    HeaderName::from_bytes(raw.as_bytes()).unwrap(),
                    "{raw}"
                );
            }
        }
        // a kept custom name is handed out again as it was kept: the same bytes, not a copy
        let kept = name(b"X-Powered-By").unwrap();
        let again = name(b"X-Powered-By").unwrap();
        assert_eq!(again, kept);
        assert_eq!(again.as_str().as_ptr(), kept.as_str().as_ptr());
        let made = HeaderName::from_bytes(b"X-Powered-By").unwrap();
        assert_ne!(made.as_str().as_ptr(), kept.as_str().as_ptr());
        // errors are `from_bytes`' own, and nothing is kept for them
        for bad in [&b""[..], b"bad name", b"x\0y", b"x:y"] {
            assert!(name(bad).is_err(), "{bad:?}");
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_name_that_shares_a_slot_replaces_the_one_there() {
        // same length, first and last byte: the same slot
        let a = name(b"X-Aa").unwrap();
        let b = name(b"X-Ba").unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("x-aa", "x-ba"));
        assert_eq!(name(b"X-Aa").unwrap().as_str(), "x-aa");
        assert_eq!(name(b"X-Ba").unwrap().as_str(), "x-ba");
    }
}
