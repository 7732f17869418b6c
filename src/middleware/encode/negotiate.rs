//! `Accept-Encoding` (RFC 9110 §12.5.3) against the codings a route offers: pure, no allocation.

use crate::config::Coding;
use http::HeaderValue;

/// The coding for a request whose `Accept-Encoding` field lines are `values`, among `offered`
/// (the server's order of preference): the highest q-value above 0, a tie going to the coding
/// `offered` lists first. A coding the client does not name gets the q-value of `*` if it sent
/// one, else none; `q=0` refuses. `None` is identity: no field at all, only `identity`, or
/// nothing offered that the client takes.
pub fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    offered: &[Coding],
) -> Option<Coding> {
    // thousandths, per coding in `Coding::ALL` order, then `*`
    let mut named: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    for value in values {
        let Ok(text) = value.to_str() else { continue };
        for element in text.split(',') {
            let Some((token, q)) = element_of(element) else {
                continue;
            };
            let slot = if token == "*" {
                &mut star
            } else {
                match coding_of(token) {
                    Some(coding) => &mut named[index(coding)],
                    None => continue,
                }
            };
            // a coding named twice keeps its first weight
            slot.get_or_insert(q);
        }
    }
    let mut best: Option<(Coding, u16)> = None;
    for &coding in offered {
        let q = named[index(coding)].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, top)| q > top) {
            best = Some((coding, q));
        }
    }
    best.map(|(coding, _)| coding)
}

fn index(coding: Coding) -> usize {
    match coding {
        Coding::Zstd => 0,
        Coding::Br => 1,
        Coding::Gzip => 2,
    }
}

/// `x-gzip` is gzip (RFC 9110 §8.4.1.3).
fn coding_of(token: &str) -> Option<Coding> {
    if token.eq_ignore_ascii_case("x-gzip") {
        return Some(Coding::Gzip);
    }
    Coding::from_token(token)
}

/// `token` or `token;q=0.5` (other parameters ignored); `None` for an empty element or one whose
/// weight is not a valid q-value, which is then ignored as a whole.
fn element_of(element: &str) -> Option<(&str, u16)> {
    let mut parts = element.split(';');
    let token = parts.next()?.trim();
    if token.is_empty() {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            q = qvalue(value.trim())?;
        }
    }
    Some((token, q))
}

/// "0", "0.5", "1", "1.000" as thousandths; anything else is not a q-value.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, digit) in frac.bytes().enumerate() {
        thousandths += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Coding::*;

    const ALL: [Coding; 3] = [Zstd, Br, Gzip];

    fn pick(accept: &[&str], offered: &[Coding]) -> Option<Coding> {
        let values: Vec<HeaderValue> = accept
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        negotiate(&values, offered)
    }

    #[test]
    fn server_order_breaks_ties() {
        assert_eq!(pick(&["gzip, deflate, br, zstd"], &ALL), Some(Zstd));
        assert_eq!(pick(&["gzip, deflate, br, zstd"], &[Gzip, Br]), Some(Gzip));
        assert_eq!(pick(&["gzip", "br"], &[Br, Gzip]), Some(Br));
    }

    #[test]
    fn higher_q_wins_over_server_order() {
        assert_eq!(pick(&["zstd;q=0.5, gzip;q=0.8, br"], &ALL), Some(Br));
        assert_eq!(pick(&["zstd;q=0.5, gzip;q=0.8"], &ALL), Some(Gzip));
        assert_eq!(
            pick(&["zstd;q=0.501,gzip;q=0.5"], &[Gzip, Zstd]),
            Some(Zstd)
        );
        assert_eq!(pick(&["gzip ; Q=1.0 , br;q=0.9"], &[Br, Gzip]), Some(Gzip));
    }

    #[test]
    fn q_zero_refuses_and_star_covers_the_rest() {
        assert_eq!(pick(&["zstd;q=0, br;q=0, gzip"], &ALL), Some(Gzip));
        assert_eq!(pick(&["gzip;q=0"], &[Gzip]), None);
        assert_eq!(pick(&["*"], &ALL), Some(Zstd));
        assert_eq!(pick(&["*;q=0.1, gzip"], &ALL), Some(Gzip));
        assert_eq!(pick(&["*;q=0, gzip;q=0.2"], &ALL), Some(Gzip));
        assert_eq!(pick(&["*;q=0"], &ALL), None);
        assert_eq!(pick(&["zstd;q=0, *"], &[Zstd, Br]), Some(Br));
    }

    #[test]
    fn identity_absent_or_unknown_means_none() {
        assert_eq!(pick(&[], &ALL), None);
        assert_eq!(pick(&["identity"], &ALL), None);
        assert_eq!(pick(&[""], &ALL), None);
        assert_eq!(pick(&["deflate, compress"], &ALL), None);
        assert_eq!(pick(&["br"], &[Gzip]), None);
        assert_eq!(pick(&["gzip"], &[]), None);
    }

    #[test]
    fn odd_spellings() {
        assert_eq!(pick(&["X-GZIP"], &ALL), Some(Gzip));
        assert_eq!(pick(&["GZip;level=9"], &ALL), Some(Gzip));
        // an invalid weight drops the element, not the field
        assert_eq!(pick(&["br;q=2, gzip;q=0.3"], &ALL), Some(Gzip));
        assert_eq!(pick(&["br;q=0.1234, gzip;q=0.3"], &ALL), Some(Gzip));
        assert_eq!(pick(&["br;q=, gzip;q=0.3"], &ALL), Some(Gzip));
        assert_eq!(pick(&[",,gzip,,"], &ALL), Some(Gzip));
        // the first weight of a coding named twice counts
        assert_eq!(pick(&["gzip;q=0, gzip"], &[Gzip]), None);
    }

    #[test]
    fn qvalues() {
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.05"), Some(50));
        assert_eq!(qvalue("0.123"), Some(123));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("1.5"), None);
        assert_eq!(qvalue("-1"), None);
        assert_eq!(qvalue("0.x"), None);
        assert_eq!(qvalue(""), None);
    }
}
