//! The request body size limit: a declared `Content-Length` is judged before anything is sent
//! upstream; a streamed body is counted as it passes (`http::body::CountedBody` holds a `Budget`).

use http::header::{self, HeaderMap};

/// The body is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body over the {limit}-byte limit")]
pub struct TooLarge {
    pub limit: u64,
}

/// Refuses a request whose declared length is over `limit` (a malformed length is hyper's to
/// refuse; it never gets here).
pub fn check_declared(headers: &HeaderMap, limit: Option<u64>) -> Result<(), TooLarge> {
    let Some(limit) = limit else { return Ok(()) };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > limit => Err(TooLarge { limit }),
        _ => Ok(()),
    }
}

/// What is left of a body's allowance.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    limit: u64,
    seen: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { limit, seen: 0 }
    }

    pub fn take(&mut self, len: usize) -> Result<(), TooLarge> {
        self.seen = self.seen.saturating_add(len as u64);
        if self.seen > self.limit {
            Err(TooLarge { limit: self.limit })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_limit_passes() {
        let mut b = Budget::new(10);
        assert!(b.take(4).is_ok());
        assert!(b.take(6).is_ok());
        assert_eq!(b.take(1), Err(TooLarge { limit: 10 }));
    }

    #[test]
    fn declared_length() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert!(check_declared(&h, Some(10)).is_err());
        assert!(check_declared(&h, Some(11)).is_ok());
        assert!(check_declared(&h, None).is_ok());
        assert!(check_declared(&HeaderMap::new(), Some(1)).is_ok());
    }
}
