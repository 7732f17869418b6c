//! Property tests (issue 17, second acceptance item) of the canonical request's three parsers:
//! the path canonicaliser under every `merge_slashes`/`encoded_slashes` combination, the authority
//! parser and the `X-Forwarded-For` hop parser. The properties themselves live in
//! `canonical_props/invariants.rs` (shared with the fuzz targets in fuzz/); this file generates
//! the inputs, weighted towards the characters these parsers decide on (`/ . % ; \`, hex digits,
//! `%2e %2f %5c %3b`) with some arbitrary Unicode mixed in. `PROPTEST_CASES=100000` runs longer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "canonical_props/invariants.rs"]
mod invariants;
#[path = "canonical_props/model.rs"]
mod model;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gatehouse::http::canonical::{authority, forwarded_hop, path, PathRules};
use proptest::prelude::*;
use proptest::sample::select;

use invariants::{check_authority, check_header, check_hop, check_path, ALL_RULES};

/// Pieces a path is built from: separators, dots, every spelling of a dot, slash, backslash and
/// `;`, hex digits (so a `%` before them forms an encoding), unreserved characters in encoded
/// form, and the bytes that must be refused.
const PATH_PIECES: &[&str] = &[
    "/", "/", "/", "/", "//", "/.", "/..", "/./", "/../", ".", ".", "..", "..;", ".;", ";", ";x=1",
    "%", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F", "%5c", "%5C", "%3b", "%3B", "%25", "%252e",
    "\\", "a", "B", "z", "0", "2", "9", "e", "E", "f", "F", "c", "C", "3", "5", "%41", "%61",
    "%7e", "%7E", "%2d", "%5f", "%c3%a9", "%C3", "%ff", "%00", "%1f", "%7f", "%20", "%3f", "?",
    "~", "-", "_", ":", "@", " ", "\t", "é", "\u{0}", "\u{7f}",
];

/// A path-like string: mostly pieces, now and then any character, usually starting with `/`.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        12 => select(PATH_PIECES).prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
    ];
    let start = prop_oneof![9 => Just(""), 1 => Just("x")];
    (start, prop::collection::vec(piece, 0..24)).prop_map(|(start, pieces)| {
        let body = pieces.concat();
        match start {
            "" if body.starts_with('/') => body,
            "" => format!("/{body}"),
            _ => body,
        }
    })
}

/// Pieces of a path with nothing to decode or refuse, so the fast path (a canonical path is
/// borrowed as it is) decides: only dot, empty and parameter segments can make it rebuild.
const PLAIN_PIECES: &[&str] = &[
    "/", "/", "/", "//", ".", "..", "...", ".;", "..;", ";", ";a", "a", "b.c", ".x", "x.", "~", "-",
];

fn plain_path() -> impl Strategy<Value = String> {
    prop::collection::vec(select(PLAIN_PIECES), 0..10).prop_map(|p| format!("/{}", p.concat()))
}

fn any_path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => path_like(),
        3 => plain_path(),
        1 => any::<String>(),
        1 => any::<String>().prop_map(|s| format!("/{s}")),
    ]
}

const AUTHORITY_PIECES: &[&str] = &[
    "a",
    "Z",
    "example",
    "COM",
    "xn--bcher-kva",
    ".",
    ".",
    "..",
    ":",
    ":",
    "::",
    "[",
    "]",
    "[::1]",
    "::1",
    "0:0::1",
    "2001:DB8::",
    "ffff",
    "FFFF",
    "1.2.3.4",
    "fe80::1",
    "%25eth0",
    "v1.x",
    "0",
    "1",
    "9",
    "80",
    "08080",
    "65535",
    "65536",
    "99999",
    "123456",
    "-",
    "_",
    "@",
    "/",
    "\\",
    "%",
    "%2e",
    " ",
    "\t",
    "é",
    "\u{212a}",
    "\u{0}",
];

fn any_authority() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        12 => select(AUTHORITY_PIECES).prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        8 => prop::collection::vec(piece, 0..12).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

const HOP_PIECES: &[&str] = &[
    "1",
    "2",
    "0",
    "255",
    "256",
    "01",
    ".",
    ".",
    ":",
    ":",
    "::",
    "[",
    "]",
    "ffff",
    "DB8",
    "2001",
    "[1.2.3.4]",
    "[::1]",
    "[::1]:",
    "[::ffff:1.2.3.4]",
    "1.2.3.4:",
    ":80",
    "1.2.3.4",
    "::ffff:",
    "%25eth0",
    "80",
    "65535",
    "65536",
    "123456",
    " ",
    "\t",
    ",",
    "unknown",
    "_hidden",
    "+",
    "-",
    "é",
];

fn any_hop() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        12 => select(HOP_PIECES).prop_map(str::to_string),
        1 => any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        8 => prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

/// An address as a client or load balancer might write it in `X-Forwarded-For`: IPv6 compressed
/// or every group in full upper case, with or without brackets and a port, blanks around.
fn written_hop() -> impl Strategy<Value = (IpAddr, String)> {
    let blank = || select(vec!["", " ", "\t", "  "]);
    (
        any::<IpAddr>(),
        any::<Option<u16>>(),
        any::<bool>(),
        any::<bool>(),
        blank(),
        blank(),
    )
        .prop_map(|(ip, port, expanded, brackets, before, after)| {
            let text = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) if expanded => expanded_v6(v6),
                IpAddr::V6(v6) => v6.to_string(),
            };
            let text = match (ip, port) {
                (IpAddr::V4(_), Some(port)) => format!("{text}:{port}"),
                (IpAddr::V4(_), None) => text,
                (IpAddr::V6(_), Some(port)) => format!("[{text}]:{port}"),
                (IpAddr::V6(_), None) if brackets => format!("[{text}]"),
                (IpAddr::V6(_), None) => text,
            };
            (ip, format!("{before}{text}{after}"))
        })
}

fn expanded_v6(ip: Ipv6Addr) -> String {
    let groups: Vec<String> = ip.segments().iter().map(|g| format!("{g:04X}")).collect();
    groups.join(":")
}

/// A host as a site names it, written in any case with or without its trailing dot, and an
/// optional port with leading zeros.
fn written_authority() -> impl Strategy<Value = (String, String, Option<u16>)> {
    let label = "[a-zA-Z0-9_-]{1,12}";
    let reg_name = prop::collection::vec(label, 1..5).prop_map(|labels| {
        let text = labels.join(".");
        (text.to_ascii_lowercase(), text)
    });
    let ipv4 = any::<Ipv4Addr>().prop_map(|ip| (ip.to_string(), ip.to_string()));
    let ipv6 =
        any::<Ipv6Addr>().prop_map(|ip| (format!("[{ip}]"), format!("[{}]", expanded_v6(ip))));
    let host = prop_oneof![3 => reg_name, 1 => ipv4, 1 => ipv6];
    (host, any::<bool>(), any::<Option<u16>>(), 0..3usize).prop_map(
        |((canonical, written), dot, port, zeros)| {
            let dot = if dot && !written.starts_with('[') {
                "."
            } else {
                ""
            };
            let port_text = port.map(|p| format!(":{}{p}", "0".repeat(zeros.min(5 - digits(p)))));
            let raw = format!("{written}{dot}{}", port_text.unwrap_or_default());
            (raw, canonical, port)
        },
    )
}

fn digits(n: u16) -> usize {
    n.to_string().len()
}

proptest! {
    #[test]
    fn path_is_canonical_under_every_rule_combination(raw in any_path()) {
        for rules in ALL_RULES {
            let _ = check_path(&raw, rules);
        }
    }

    #[test]
    fn authority_is_canonical_or_refused(raw in any_authority()) {
        check_authority(&raw);
    }

    #[test]
    fn authority_as_a_site_writes_it_is_accepted((raw, host, port) in written_authority()) {
        check_authority(&raw);
        let auth = authority(&raw).map_err(|e| TestCaseError::fail(format!("{raw:?}: {e}")))?;
        prop_assert_eq!(auth.host(), host.as_str(), "{:?}", raw);
        prop_assert_eq!(auth.port, port, "{:?}", raw);
    }

    #[test]
    fn forwarded_hop_reads_only_written_addresses(hop in any_hop()) {
        check_header(&hop);
        check_hop(&hop);
    }

    #[test]
    fn every_written_address_round_trips((ip, hop) in written_hop()) {
        prop_assert_eq!(check_hop(&hop), Some(ip), "{:?}", hop);
    }

    #[test]
    fn a_hop_in_none_of_the_written_forms_is_no_address(
        v4 in any::<Ipv4Addr>(),
        v6 in any::<Ipv6Addr>(),
        port in 65536u32..1_000_000,
    ) {
        for hop in [
            format!("[{v4}]"),
            format!("[{v4}]:80"),
            format!("{v4}:{port}"),
            format!("{v4}:"),
            format!("{v4}:+80"),
            format!("[{v6}]:{port}"),
            format!("[{v6}]:"),
            format!("[{v6}"),
            format!("[{v6}]]"),
            format!("{v4},"),
        ] {
            prop_assert_eq!(check_hop(&hop), None, "{:?}", hop);
        }
    }

    #[test]
    fn a_header_of_written_addresses_gives_them_right_to_left(
        hops in prop::collection::vec(written_hop(), 1..6),
    ) {
        let header = hops.iter().map(|(_, text)| text.as_str()).collect::<Vec<_>>().join(",");
        let want: Vec<IpAddr> = hops.iter().rev().map(|(ip, _)| *ip).collect();
        prop_assert_eq!(check_header(&header), want, "{:?}", header);
    }
}

/// The model is only worth comparing against if it gets the RFC's own examples right
/// (RFC 3986 5.2.4 and 5.4) and refuses to climb.
#[test]
fn the_reference_model_follows_the_rfc() {
    let rfc = [
        ("/a/b/c/./../../g", Some("/a/g")),
        ("mid/content=5/../6", Some("mid/6")),
        ("/b/c/./g", Some("/b/c/g")),
        ("/b/c/d;p/../g", Some("/b/c/g")),
        ("/b/c/..", Some("/b/")),
        ("/b/c/.", Some("/b/c/")),
        ("/..", None),
        ("/a/../../g", None),
    ];
    for (input, want) in rfc {
        assert_eq!(
            model::remove_dot_segments(input).as_deref(),
            want,
            "{input}"
        );
    }
    let default = PathRules::default();
    assert_eq!(
        model::canonical_path("/a/%2e%2E/b", default),
        Ok("/b".into())
    );
    // `;` is refused by default; with `path_parameters = "keep"`, `..;x` is `..`
    assert_eq!(model::canonical_path("/a/..;x/b", default), Err(()));
    let keep_params = PathRules {
        parameters: gatehouse::http::canonical::PathParameters::Keep,
        ..default
    };
    assert_eq!(
        model::canonical_path("/a/..;x/b", keep_params),
        Ok("/b".into())
    );
    assert_eq!(model::canonical_path("/a/%2f", default), Err(()));
}

/// The checks can fail: each is shown a wrong answer it must catch.
#[test]
fn the_checks_catch_non_canonical_text() {
    for bad in ["/a/..", "/a/%2e%2E", "/./x", "/..;x", "/.%3b", "/%2E"] {
        assert!(bad.split('/').any(invariants::is_dot_segment), "{bad}");
    }
    for fine in ["/a/...", "/a/.x", "/a/..%2F", "/a/%2e%2e%2e"] {
        assert!(!fine.split('/').any(invariants::is_dot_segment), "{fine}");
    }
}

/// Ordinary requests go through untouched and unallocated, for every rule combination.
#[test]
fn ordinary_paths_are_borrowed() {
    for rules in ALL_RULES {
        for raw in ["/", "/api/v1/users", "/static/app.4f2a.js"] {
            assert!(matches!(
                path(raw, rules),
                Ok(std::borrow::Cow::Borrowed(_))
            ));
        }
        if rules.parameters == gatehouse::http::canonical::PathParameters::Keep {
            assert!(matches!(
                path("/a;b=c/d", rules),
                Ok(std::borrow::Cow::Borrowed(_))
            ));
        }
        assert!(forwarded_hop("203.0.113.9").is_some());
    }
}

/// FOR THE LEAD, a question rather than a contract violation: with `encoded_slashes = "keep"`
/// a `.`/`..` next to a kept `%2F` is neither resolved nor refused, so `/api/x/..%2Fadmin/y` is
/// routed under `/api/` while an origin that decodes `%2F` before it resolves dots (Tomcat with
/// `encodedSolidusHandling="decode"`, the kind of application that asks for `keep`) serves
/// `/api/admin/y`. Refusing such paths in `keep` mode would close it; un-ignore when decided.
#[test]
fn kept_encoded_slashes_never_hide_a_dot_segment() {
    let keep = PathRules {
        merge_slashes: true,
        encoded_slashes: gatehouse::http::canonical::EncodedSlashes::Keep,
        parameters: gatehouse::http::canonical::PathParameters::Reject,
    };
    for raw in [
        "/api/x/..%2Fadmin/y",
        "/api/x/..%2f..%2fadmin",
        "/api/%2F../admin",
        "/a/.%2Fb",
    ] {
        if let Ok(out) = path(raw, keep) {
            let mut pieces = out.split('/').flat_map(|s| s.split("%2F"));
            assert!(!pieces.any(invariants::is_dot_segment), "{raw} -> {out}");
        }
    }
}
