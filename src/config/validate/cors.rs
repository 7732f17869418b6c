//! The `cors` key of a `[[site]]` (a default for its routes) and of a `[[site.route]]`.

use super::{is_hostname, Ctx, Repeats};
use crate::config::file::{FileCors, FileCorsSetting, Str};
use crate::config::model::{Cors, CorsHeaders, CorsOrigins, OriginPattern, DEFAULT_CORS_MAX_AGE};
use http::{HeaderName, Method};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use toml::Spanned;

const ORIGIN_HINT: &str = "expected scheme://host[:port] like \"https://app.example.com\" or \"http://localhost:3000\", a subdomain wildcard like \"https://*.example.com\", or \"*\"";
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// `inherited` (the site's) unless `raw` says otherwise: `"off"` is none, a table replaces it
/// whole. `key` is "site.cors" or "site.route.cors".
pub(super) fn resolve(
    cx: &mut Ctx,
    raw: Option<&Spanned<FileCorsSetting>>,
    inherited: Option<&Cors>,
    key: &str,
) -> Option<Cors> {
    let Some(raw) = raw else {
        return inherited.cloned();
    };
    match raw.get_ref() {
        FileCorsSetting::Off => None,
        FileCorsSetting::On(table) => cors(cx, table, raw.span(), key),
    }
}

fn cors(cx: &mut Ctx, t: &FileCors, span: Range<usize>, key: &str) -> Option<Cors> {
    let origins = origins(cx, t.origins.as_ref(), span, key);
    let methods = methods(cx, t.methods.as_ref(), &format!("{key}.methods"));
    let headers = match &t.headers {
        None => CorsHeaders::List(Vec::new()),
        Some(list) if list.get_ref().iter().any(|h| h.get_ref() == "*") => {
            if list.get_ref().len() > 1 {
                let msg = "\"*\" already allows every header; write `headers = [\"*\"]` alone, or list the headers";
                cx.error(list.span(), &format!("{key}.headers"), msg);
            }
            CorsHeaders::Any
        }
        Some(list) => CorsHeaders::List(header_names(cx, list, &format!("{key}.headers"))),
    };
    let credentials = t.credentials.as_ref().is_some_and(|c| *c.get_ref());
    let expose = t.expose.as_ref().map_or_else(Vec::new, |list| {
        header_names(cx, list, &format!("{key}.expose"))
    });
    // zero is allowed: browsers then cache no preflight (handy while developing)
    let max_age = cx.duration_where(
        &t.max_age,
        &format!("{key}.max_age"),
        DEFAULT_CORS_MAX_AGE,
        |d| d.subsec_nanos() == 0,
        format_args!("a whole number of seconds; expected a duration like \"600s\", \"10m\" or \"1h\" (\"0s\" turns preflight caching off)"),
    );
    if let Some(flag) = t.credentials.as_ref().filter(|_| credentials) {
        let wildcard = |what: &str| {
            format!("`credentials = true` cannot go with {what}: the Fetch standard forbids `*` on requests with credentials, and browsers refuse the answer")
        };
        let key = format!("{key}.credentials");
        if origins == Some(CorsOrigins::Any) {
            let msg = wildcard("`origins = [\"*\"]`");
            let msg = format!("{msg}; list the origins instead, e.g. origins = [\"https://app.example.com\"], or set credentials = false");
            cx.error(flag.span(), &key, msg);
        }
        if expose.iter().any(|h| h.as_str() == "*") {
            let msg = wildcard("`expose = [\"*\"]`");
            cx.error(
                flag.span(),
                &key,
                format!("{msg}; list the headers to expose"),
            );
        }
    }
    Some(Cors {
        origins: origins?,
        methods: methods?,
        headers,
        credentials,
        expose,
        max_age,
    })
}

fn origins(
    cx: &mut Ctx,
    list: Option<&Spanned<Vec<Str>>>,
    table: Range<usize>,
    key: &str,
) -> Option<CorsOrigins> {
    let key = format!("{key}.origins");
    let Some(list) = list.filter(|l| !l.get_ref().is_empty()) else {
        let span = list.map_or(table, |l| l.span());
        let msg = "`origins` is missing or empty; list the origins whose pages may call this route, e.g. origins = [\"https://app.example.com\"], or [\"*\"] for any";
        cx.error(span, &key, msg);
        return None;
    };
    let parsed = cx.list(list, &key, Repeats::Dropped, parse_origin);
    let entries = parsed.as_ref().unwrap_or_else(|good| good);
    let any = entries.contains(&None);
    let patterns: Vec<OriginPattern> = entries.iter().flatten().cloned().collect();
    if any && !patterns.is_empty() {
        let msg = "\"*\" already allows every origin, so the other entries would mean nothing; write `origins = [\"*\"]` alone, or list the origins";
        cx.error(list.span(), &key, msg);
        return None;
    }
    parsed.ok()?;
    Some(if any {
        CorsOrigins::Any
    } else {
        CorsOrigins::List(patterns)
    })
}

/// `Ok(None)` for `"*"`; else the normalised pattern, or what is wrong and what would do.
fn parse_origin(text: &str) -> Result<Option<OriginPattern>, String> {
    if text == "*" {
        return Ok(None);
    }
    if text.eq_ignore_ascii_case("null") {
        return Err("\"null\" is the origin of sandboxed frames and local files: any page can send it, so allowing it would allow everyone; list real origins".into());
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("`{text}` is not an origin; {ORIGIN_HINT}"));
    };
    let scheme = scheme.to_ascii_lowercase();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(format!(
            "`{text}` does not start with a scheme; {ORIGIN_HINT}"
        ));
    }
    if let Some(at) = rest.find(['/', '?', '#']) {
        let bare = format!("{scheme}://{}", &rest[..at]);
        return Err(format!("`{text}` has a path; an origin is only scheme://host[:port], as browsers send it in `Origin`: write \"{bare}\""));
    }
    if rest.contains('@') {
        return Err(format!("`{text}` has a user name; {ORIGIN_HINT}"));
    }
    let rest = rest.to_ascii_lowercase();
    let (host, port) = split_port(&rest)
        .ok_or_else(|| format!("`{text}` has no valid port (1 to 65535); {ORIGIN_HINT}"))?;
    let default_port = matches!(
        (scheme.as_str(), port),
        ("http", Some(80)) | ("https", Some(443))
    );
    let port = match port {
        Some(p) if !default_port => format!(":{p}"),
        _ => String::new(),
    };
    if let Some(suffix) = host.strip_prefix("*.") {
        if is_hostname(suffix) && suffix.contains('.') {
            return Ok(Some(OriginPattern::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{suffix}{port}"),
            }));
        }
        return Err(format!("`{text}`: a wildcard stands for subdomains of a domain with a dot, like \"https://*.example.com\""));
    }
    let ip = host.parse::<Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok());
    if !ip && !is_hostname(host) {
        return Err(format!(
            "`{text}` does not have a valid host; {ORIGIN_HINT}"
        ));
    }
    Ok(Some(OriginPattern::Exact(format!(
        "{scheme}://{host}{port}"
    ))))
}

/// "host:8443" into the host and port; `None` for a port that is not one.
fn split_port(rest: &str) -> Option<(&str, Option<u16>)> {
    let colon = match rest.rfind(']') {
        Some(close) => rest[close..].find(':').map(|i| close + i),
        None => rest.rfind(':'),
    };
    let Some(colon) = colon else {
        return Some((rest, None));
    };
    let port = rest[colon + 1..].parse::<u16>().ok().filter(|p| *p != 0)?;
    Some((&rest[..colon], Some(port)))
}

fn methods(cx: &mut Ctx, list: Option<&Spanned<Vec<Str>>>, key: &str) -> Option<Vec<Method>> {
    let Some(list) = list else {
        return Some(vec![Method::GET, Method::HEAD, Method::POST]);
    };
    if list.get_ref().is_empty() {
        let msg = format!("`methods` is empty; list the methods cross-origin requests may use, from {}, or omit it for GET, HEAD, POST", METHODS.join(", "));
        cx.error(list.span(), key, msg);
        return None;
    }
    let parse = |text: &str| {
        let known = METHODS.contains(&text);
        if let Some(method) = Method::from_bytes(text.as_bytes()).ok().filter(|_| known) {
            return Ok(method);
        }
        let upper = text.to_ascii_uppercase();
        let hint = if METHODS.contains(&upper.as_str()) {
            format!("methods are written in upper case: \"{upper}\"")
        } else {
            format!("expected methods from {}", METHODS.join(", "))
        };
        Err(format!(
            "`{text}` is not a method a page can send cross-origin; {hint}"
        ))
    };
    cx.list(list, key, Repeats::Dropped, parse).ok()
}

fn header_names(cx: &mut Ctx, list: &Spanned<Vec<Str>>, key: &str) -> Vec<HeaderName> {
    let parse = |text: &str| {
        HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("`{text}` is not a header name; expected a name like \"Authorization\", \"Content-Type\" or \"X-Api-Key\" (letters, digits and !#$%&'*+-.^_`|~, no spaces or colons)"))
    };
    cx.list(list, key, Repeats::Dropped, parse)
        .unwrap_or_else(|good| good)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(text: &str) -> OriginPattern {
        OriginPattern::Exact(text.into())
    }

    #[test]
    fn origins_are_normalised() {
        let ok = |t: &str| parse_origin(t).unwrap();
        assert_eq!(
            ok("https://App.Example.com"),
            Some(exact("https://app.example.com"))
        );
        assert_eq!(
            ok("HTTPS://app.example.com:443"),
            Some(exact("https://app.example.com"))
        );
        assert_eq!(ok("http://localhost:80"), Some(exact("http://localhost")));
        assert_eq!(
            ok("https://localhost:80"),
            Some(exact("https://localhost:80"))
        );
        assert_eq!(
            ok("http://localhost:3000"),
            Some(exact("http://localhost:3000"))
        );
        assert_eq!(
            ok("http://127.0.0.1:8080"),
            Some(exact("http://127.0.0.1:8080"))
        );
        assert_eq!(ok("http://[::1]:8080"), Some(exact("http://[::1]:8080")));
        assert_eq!(
            ok("capacitor://localhost"),
            Some(exact("capacitor://localhost"))
        );
        assert_eq!(ok("*"), None);
        assert_eq!(
            ok("https://*.Example.com:8443"),
            Some(OriginPattern::Subdomains {
                scheme: "https://".into(),
                suffix: ".example.com:8443".into()
            })
        );
    }

    #[test]
    fn bad_origins_say_what_would_do() {
        let err = |t: &str| parse_origin(t).unwrap_err();
        assert!(err("https://app.example.com/").contains("write \"https://app.example.com\""));
        assert!(err("https://app.example.com/api").contains("has a path"));
        assert!(err("app.example.com").contains("scheme://host"));
        assert!(err("null").contains("null"));
        assert!(err("https://app.example.com:0").contains("port"));
        assert!(err("https://app.example.com:99999").contains("port"));
        assert!(err("https://*.com").contains("wildcard"));
        assert!(err("https://a*.example.com").contains("valid host"));
        assert!(err("https://user@app.example.com").contains("user name"));
        assert!(err("https://app example.com").contains("valid host"));
    }
}
