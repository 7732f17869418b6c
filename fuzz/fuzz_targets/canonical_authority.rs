//! `http::canonical::authority`: no panic; an accepted authority is lower-case, without a
//! trailing dot, a reg-name or a canonical bracketed IPv6 literal, `host[:port]` exactly, and
//! its own canonical form (borrowed). See tests/canonical_props/invariants.rs.
#![no_main]

#[allow(dead_code)] // each target uses the checks of its own parser
#[path = "../../tests/canonical_props/invariants.rs"]
mod invariants;
#[allow(dead_code)]
#[path = "../../tests/canonical_props/model.rs"]
mod model;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data) {
        invariants::check_authority(raw);
    }
});
