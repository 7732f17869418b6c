//! The gRPC health protocol's `Check` (grpc/grpc `doc/health-checking.md`), written by hand: the
//! request and answer are one-field protobuf messages, not worth a code generator.
//!
//! ```text
//! message HealthCheckRequest  { string service = 1; }
//! message HealthCheckResponse { enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2;
//!                               SERVICE_UNKNOWN = 3; } ServingStatus status = 1; }
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

/// `SERVING`.
const SERVING: u64 = 1;

/// The request body: one uncompressed gRPC message (flag, 4-byte length, protobuf) asking about
/// `service`.
pub fn request_body(service: &str) -> Bytes {
    let mut message = BytesMut::with_capacity(service.len() + 8);
    if !service.is_empty() {
        // field 1, wire type 2 (length-delimited)
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// The verdict on an answer: `Ok` for `SERVING`, else why not. `trailers` are the answer's
/// trailers, or its head for a trailers-only answer.
pub fn verdict(body: &[u8], trailers: &HeaderMap) -> Result<(), String> {
    let status = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .ok_or("no grpc-status in the answer (is it a gRPC server?)")?;
    if status != "0" {
        let message = trailers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!("grpc-status {status} {message}")
            .trim_end()
            .to_string());
    }
    match serving_status(body) {
        Some(SERVING) => Ok(()),
        Some(2) => Err("NOT_SERVING".to_string()),
        Some(3) => Err("SERVICE_UNKNOWN".to_string()),
        Some(n) => Err(format!("serving status {n}, not SERVING")),
        None => Err("malformed HealthCheckResponse".to_string()),
    }
}

/// The `status` field of the one message in `body` (0, protobuf's default, when absent).
fn serving_status(body: &[u8]) -> Option<u64> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let mut message = rest.get(4..4 + len)?;
    let mut status = 0;
    while let Some((&tag, rest)) = message.split_first() {
        let (value, rest) = varint(rest)?;
        match tag {
            0x08 => status = value,
            // another varint field: skipped
            t if t & 7 == 0 => {}
            // a length-delimited field: skipped
            t if t & 7 == 2 => {
                let skip = usize::try_from(value).ok()?;
                message = rest.get(skip..)?;
                continue;
            }
            _ => return None,
        }
        message = rest;
    }
    Some(status)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ok() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("0"));
        h
    }

    #[test]
    fn requests_name_the_service() {
        assert_eq!(&request_body("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &request_body("a.B")[..],
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
    }

    #[test]
    fn serving_passes_and_the_rest_fails() {
        assert_eq!(verdict(&[0, 0, 0, 0, 2, 0x08, 1], &ok()), Ok(()));
        assert_eq!(
            verdict(&[0, 0, 0, 0, 2, 0x08, 2], &ok()),
            Err("NOT_SERVING".into())
        );
        assert!(verdict(&[0, 0, 0, 0, 0], &ok()).is_err(), "UNKNOWN");
        assert!(verdict(&[0, 0, 0, 0, 9, 0x08], &ok()).is_err(), "cut short");
        let mut refused = HeaderMap::new();
        refused.insert("grpc-status", HeaderValue::from_static("12"));
        refused.insert("grpc-message", HeaderValue::from_static("no health"));
        assert_eq!(
            verdict(&[], &refused),
            Err("grpc-status 12 no health".into())
        );
        assert!(verdict(&[0, 0, 0, 0, 2, 0x08, 1], &HeaderMap::new()).is_err());
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // field 2 (bytes "xy"), then status
        let body = [0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 1];
        assert_eq!(verdict(&body, &ok()), Ok(()));
    }
}
