//! `http::canonical::forwarded_hop`, on the input as one hop and as a whole `X-Forwarded-For`
//! value split at commas (right to left, as the walk reads it): no panic, and an address only
//! from `v4`, `v6`, `v4:port`, `[v6]`, `[v6]:port` with a valid port. See
//! tests/canonical_props/invariants.rs.
#![no_main]

#[allow(dead_code)] // each target uses the checks of its own parser
#[path = "../../tests/canonical_props/invariants.rs"]
mod invariants;
#[allow(dead_code)]
#[path = "../../tests/canonical_props/model.rs"]
mod model;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = std::str::from_utf8(data) {
        invariants::check_hop(value);
        invariants::check_header(value);
    }
});
