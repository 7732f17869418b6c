//! `http::canonical::path` under every rule combination: no panic, and every property of
//! tests/canonical_props/invariants.rs (idempotent, no `//` when merging, no dot segment in any
//! spelling, `%2F`/`%5C` never a separator, upper-case encodings only for reserved bytes, visible
//! ASCII only, agrees with the RFC 3986 5.2.4 reference model).
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
        for rules in invariants::ALL_RULES {
            let _ = invariants::check_path(raw, rules);
        }
    }
});
