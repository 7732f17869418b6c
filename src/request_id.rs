//! A request's id (`X-Request-Id`): the client's when it sent a sane one, else 32 hex digits made
//! here. It goes to the upstream, back to the client, into the access log, error pages and
//! templates. Held as bytes in place until a header map needs it as a value: the native engine
//! writes it beside its maps, and a request whose id no map carries costs no allocation for it.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's id is kept when it is 1-128 visible ASCII characters.
const MAX_KEPT: usize = 128;

#[derive(Debug, Clone)]
pub struct RequestId(Repr);

#[derive(Debug, Clone)]
enum Repr {
    /// The client's own, or one made as a shared value (see [`RequestId::of`]).
    Value(HeaderValue),
    /// Made here, lowercase hex.
    Made([u8; 32]),
}

impl RequestId {
    /// The id of a request whose head is `headers`: the client's `X-Request-Id` when it is sane,
    /// else a new one. `in_maps`: the new one will go into header maps (the hyper and HTTP/2
    /// engines put it in the upstream request's and the answer's), so it is made a shared value
    /// at once, one allocation its copies share; else it stays inline and each [`value`] of it
    /// allocates.
    ///
    /// [`value`]: RequestId::value
    pub fn of(headers: &HeaderMap, in_maps: bool) -> RequestId {
        if let Some(id) = headers.get(&X_REQUEST_ID) {
            let sane = !id.is_empty()
                && id.len() <= MAX_KEPT
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic());
            if sane {
                return RequestId(Repr::Value(id.clone()));
            }
        }
        let made = made();
        if !in_maps {
            return RequestId(Repr::Made(made));
        }
        // `from_owner`: one allocation whose clones count references, where `from_bytes`
        // copies into a vector-backed `Bytes` whose first clone allocates again to be shared
        match HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(made)) {
            Ok(value) => RequestId(Repr::Value(value)),
            Err(_) => RequestId(Repr::Made(made)),
        }
    }

    /// A fixed id, as a client would send it (for tests).
    pub const fn from_static(id: &'static str) -> RequestId {
        RequestId(Repr::Value(HeaderValue::from_static(id)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Value(v) => v.as_bytes(),
            Repr::Made(m) => m,
        }
    }

    /// As text: an id is visible ASCII (a client's that is not was replaced).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }

    /// As a header value, for a map: a copy of a shared one, or (one made inline) a new one.
    pub fn value(&self) -> HeaderValue {
        match &self.0 {
            Repr::Value(v) => v.clone(),
            Repr::Made(m) => HeaderValue::from_bytes(m).unwrap_or(HeaderValue::from_static("-")),
        }
    }
}

/// 32 lowercase hex digits of a random 128-bit number.
fn made() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    // a byte at a time, two digits each (a digit at a time shifted the 128-bit number 32 times)
    for (out, b) in buf
        .chunks_exact_mut(2)
        .zip(fastrand::u128(..).to_le_bytes())
    {
        out[0] = HEX[usize::from(b >> 4)];
        out[1] = HEX[usize::from(b & 0xf)];
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(id: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static(id));
        h
    }

    #[test]
    fn ids_are_kept_or_made_either_way() {
        for in_maps in [false, true] {
            let none = HeaderMap::new();
            let a = RequestId::of(&none, in_maps);
            assert_eq!(a.as_bytes().len(), 32);
            assert!(a.as_bytes().iter().all(|b| b"0123456789abcdef".contains(b)));
            assert_eq!(a.value(), a.as_str());
            assert_ne!(a.as_bytes(), RequestId::of(&none, in_maps).as_bytes());
            assert_eq!(RequestId::of(&with("abc-123"), in_maps).as_str(), "abc-123");
            let long = "x".repeat(MAX_KEPT + 1).leak();
            for bad in ["has space", "", long] {
                let made = RequestId::of(&with(bad), in_maps);
                assert_eq!(made.as_bytes().len(), 32, "{bad:?} replaced");
            }
        }
    }

    #[test]
    fn an_id_for_maps_is_one_shared_value_and_an_inline_one_is_not() {
        let none = HeaderMap::new();
        let shared = RequestId::of(&none, true);
        // copies of a shared value are the same bytes, not copies of them
        assert_eq!(
            shared.value().as_bytes().as_ptr(),
            shared.value().as_bytes().as_ptr()
        );
        let inline = RequestId::of(&none, false);
        assert!(matches!(inline.0, Repr::Made(_)));
        assert_eq!(inline.value(), inline.as_str());
    }
}
