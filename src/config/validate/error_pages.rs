//! `error_pages` (at `[server]`, `[[site]]` and `[[site.route]]`, the nearer level deciding) and a
//! route's `intercept_errors`. The files are named here and read by `crate::load`.

use super::Ctx;
use crate::config::file::{FileErrorPages, FileRoute, Str};
use crate::config::model::{Action, ErrorPages, StatusMatch};
use crate::config::FileKind;
use toml::Spanned;

const STATUS_HINT: &str =
    "expected an error status from 400 to 599 (e.g. 404, 502) or a class, \"4xx\" or \"5xx\"";

/// `inherited` with what `raw` (at `key`: "server", "site", "site.route") sets; `"off"` drops
/// everything inherited.
pub(super) fn resolve(
    cx: &mut Ctx,
    raw: Option<&Spanned<FileErrorPages>>,
    inherited: &ErrorPages,
    key: &str,
) -> ErrorPages {
    let Some(raw) = raw else {
        return inherited.clone();
    };
    let key = format!("{key}.error_pages");
    let entries = match raw.get_ref() {
        FileErrorPages::Off => return ErrorPages::default(),
        FileErrorPages::Pages(entries) => entries,
    };
    let mut own = ErrorPages::default();
    for (status, file) in entries {
        let Some(status) = status_match(cx, status, &key) else {
            continue;
        };
        let Some(text) = cx.expand(file, &key) else {
            continue;
        };
        if text.is_empty() {
            let msg = "no file named; expected a path like \"errors/404.html\" (relative to the config file's folder)";
            cx.error(file.span(), &key, msg);
            continue;
        }
        let path = cx.relative(&text);
        cx.names(FileKind::Page(path.clone()), file.span(), &key);
        own.pages.push((status, path));
    }
    inherited.over(own)
}

/// `"404"` or `"5xx"`; bare `404 = ...` is the string "404" in TOML.
fn status_match(cx: &mut Ctx, status: &Str, key: &str) -> Option<StatusMatch> {
    let text = status.get_ref().as_str();
    let parsed = match text.as_bytes() {
        [k @ (b'4' | b'5'), b'x' | b'X', b'x' | b'X'] => {
            Some(StatusMatch::Class(u16::from(k - b'0')))
        }
        _ => text
            .parse::<u16>()
            .ok()
            .filter(|c| (400..=599).contains(c))
            .map(StatusMatch::Code),
    };
    if parsed.is_none() {
        let msg = format!("`{text}` is not a status an error page can answer; {STATUS_HINT}");
        cx.error(status.span(), key, msg);
    }
    parsed
}

/// `intercept_errors` needs an upstream to intercept, and a page to put in its place.
pub(super) fn intercept(cx: &mut Ctx, r: &FileRoute, action: &Action, pages: &ErrorPages) -> bool {
    let Some(flag) = &r.intercept_errors else {
        return false;
    };
    if !*flag.get_ref() {
        return false;
    }
    let key = "site.route.intercept_errors";
    if !matches!(action, Action::Proxy { .. }) {
        let msg =
            "`intercept_errors` replaces an upstream's error answers; this route has no `upstream`";
        cx.error(flag.span(), key, msg);
        return false;
    }
    if pages.pages.is_empty() {
        let msg = "`intercept_errors = true`, but no `error_pages` apply to this route; add e.g. `error_pages = { \"5xx\" = \"errors/5xx.html\" }` here, on its site or in [server]";
        cx.error(flag.span(), key, msg);
        return false;
    }
    true
}
