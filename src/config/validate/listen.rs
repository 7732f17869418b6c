//! `[listen] http` and `https`: one address or a list each; and the check that no two listeners
//! (`admin` included) would claim the same address.

use super::{socket_addr, Ctx};
use crate::config::file::FileAddrs;
use std::net::SocketAddr;
use std::ops::Range;
use toml::Spanned;

/// A listener address and where the config names it.
#[derive(Clone, Debug)]
pub(super) struct Placed {
    pub addr: SocketAddr,
    pub span: Range<usize>,
    pub key: &'static str,
}

/// The addresses of `http` or `https` (`key`), in config order; an empty list is an error.
pub(super) fn addrs(
    cx: &mut Ctx,
    raw: Option<&Spanned<FileAddrs>>,
    key: &'static str,
) -> Vec<Placed> {
    let Some(raw) = raw else { return Vec::new() };
    let entries: Vec<Spanned<String>> = match raw.get_ref() {
        FileAddrs::One(text) => vec![Spanned::new(raw.span(), text.clone())],
        FileAddrs::List(list) if list.is_empty() => {
            let msg = "the list is empty; give an address like \"0.0.0.0:80\", a list of them, or remove the key";
            cx.error(raw.span(), key, msg);
            return Vec::new();
        }
        FileAddrs::List(list) => list.clone(),
    };
    entries
        .iter()
        .filter_map(|value| {
            let addr = socket_addr(cx, value, key)?;
            Some(Placed {
                addr,
                span: value.span(),
                key,
            })
        })
        .collect()
}

/// Each address once across all listeners, and none already covered by a wildcard of its
/// family on the same port (`0.0.0.0:80` takes `127.0.0.1:80` too: the second bind would fail).
/// Port 0 asks for any free port, so it may repeat. `[::]:P` next to an IPv4 address on port P
/// is fine: that listener is then bound IPv6-only (`Listen::v6_only`).
pub(super) fn no_overlap(cx: &mut Ctx, groups: &[&[Placed]]) {
    let all: Vec<&Placed> = groups.iter().flat_map(|g| g.iter()).collect();
    for (i, later) in all.iter().enumerate() {
        let earlier = all[..i]
            .iter()
            .find(|e| clash(e.addr, later.addr).is_some());
        let Some(earlier) = earlier else { continue };
        let msg = match clash(earlier.addr, later.addr) {
            Some(Clash::Same) => format!(
                "`{}` is already a listener (`{}`); each address takes one listener",
                later.addr, earlier.key
            ),
            _ => format!(
                "`{}` overlaps `{}` (`{}`), which takes every address of its family on port {}; list one or the other",
                later.addr,
                earlier.addr,
                earlier.key,
                later.addr.port()
            ),
        };
        cx.error(later.span.clone(), later.key, msg);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Clash {
    Same,
    Covered,
}

/// Whether two listeners cannot both be bound.
fn clash(a: SocketAddr, b: SocketAddr) -> Option<Clash> {
    if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return None;
    }
    if a.ip() == b.ip() {
        return Some(Clash::Same);
    }
    (a.ip().is_unspecified() || b.ip().is_unspecified()).then_some(Clash::Covered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(a: &str, b: &str) -> Option<Clash> {
        clash(a.parse().unwrap(), b.parse().unwrap())
    }

    #[test]
    fn listeners_clash_on_the_same_address_or_under_a_wildcard() {
        assert_eq!(c("0.0.0.0:80", "0.0.0.0:80"), Some(Clash::Same));
        assert_eq!(c("0.0.0.0:80", "127.0.0.1:80"), Some(Clash::Covered));
        assert_eq!(c("[::1]:80", "[::]:80"), Some(Clash::Covered));
        assert_eq!(
            c("0.0.0.0:80", "[::]:80"),
            None,
            "[::] is bound IPv6-only then"
        );
        assert_eq!(c("127.0.0.1:80", "127.0.0.2:80"), None);
        assert_eq!(c("0.0.0.0:80", "0.0.0.0:81"), None);
        assert_eq!(
            c("127.0.0.1:0", "127.0.0.1:0"),
            None,
            "port 0: any free port"
        );
    }
}
