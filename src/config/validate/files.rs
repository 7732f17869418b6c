//! The `files` action (a folder served as it is) and the keys that go with internal redirects
//! (`accel_redirect`, `internal`). Nothing here reads the disk: `root` is named for the load
//! step (`crate::load`), which checks that it is a folder.

use super::{Ctx, Repeats};
use crate::config::file::{FileFiles, FileRoute, Str};
use crate::config::model::{Action, Coding, StaticFiles, DEFAULT_INDEX};
use crate::config::FileKind;
use toml::Spanned;

const ROOT_KEY: &str = "site.route.files.root";
const ROOT_HINT: &str = "expected the folder to serve, e.g. `files = { root = \"/srv/app/dist\" }` (a relative path starts at the config file's folder)";
const PRECOMPRESSED_HINT: &str = "expected a list of \"br\", \"zstd\" and \"gzip\" in your order of preference (files named `NAME.br`, `NAME.zst`, `NAME.gz` next to `NAME`), e.g. `precompressed = [\"br\", \"zstd\", \"gzip\"]`";

pub(super) fn files_action(
    cx: &mut Ctx,
    route: &FileRoute,
    raw: &Spanned<FileFiles>,
) -> Option<Action> {
    let f = raw.get_ref();
    let root = root(cx, raw);
    let index = match &f.index {
        None => vec![DEFAULT_INDEX.to_string()],
        Some(list) => names(cx, list, "site.route.files.index", index_name),
    };
    let fallback = f.fallback.as_ref().and_then(|v| fallback(cx, v));
    let precompressed = match &f.precompressed {
        None => Vec::new(),
        Some(list) => precompressed(cx, list),
    };
    let dotfiles = match &f.dotfiles {
        None => Vec::new(),
        Some(list) => names(cx, list, "site.route.files.dotfiles", dotfile),
    };
    Some(Action::Files(StaticFiles {
        root: root?,
        index,
        fallback,
        precompressed,
        follow_symlinks: f.follow_symlinks.as_ref().is_some_and(|v| *v.get_ref()),
        dotfiles,
        strip_prefix: route.strip_prefix.as_ref().is_some_and(|s| *s.get_ref()),
    }))
}

/// `files` on a route that also has an `upstream`: the folder is tried first and the upstream
/// answers whatever it has no file for, so a `fallback` file would leave the upstream nothing.
pub(super) fn files_first(
    cx: &mut Ctx,
    route: &FileRoute,
    raw: &Spanned<FileFiles>,
) -> Option<StaticFiles> {
    if let Some(fallback) = &raw.get_ref().fallback {
        let msg = "`fallback` cannot go with an `upstream` on the same route: the upstream answers every path that names no file; remove one of them";
        cx.error(fallback.span(), "site.route.files.fallback", msg);
    }
    match files_action(cx, route, raw)? {
        Action::Files(files) => Some(files),
        _ => None,
    }
}

/// `accel_redirect` reads the upstream's answer, so it needs an upstream.
pub(super) fn accel_check(cx: &mut Ctx, route: &FileRoute, action: &Action) {
    let Some(flag) = &route.accel_redirect else {
        return;
    };
    if *flag.get_ref() && !matches!(action, Action::Proxy { .. }) {
        let msg = "`accel_redirect` only applies to a route with an `upstream`: the upstream's `X-Accel-Redirect` header names the path served instead";
        cx.error(flag.span(), "site.route.accel_redirect", msg);
    }
}

fn root(cx: &mut Ctx, raw: &Spanned<FileFiles>) -> Option<std::path::PathBuf> {
    let Some(value) = &raw.get_ref().root else {
        cx.error(
            raw.span(),
            ROOT_KEY,
            format!("`files` needs `root`; {ROOT_HINT}"),
        );
        return None;
    };
    let text = cx.expand(value, ROOT_KEY)?;
    if text.is_empty() {
        cx.error(
            value.span(),
            ROOT_KEY,
            format!("`root` is empty; {ROOT_HINT}"),
        );
        return None;
    }
    let path = cx.relative(&text);
    cx.names(FileKind::Folder(path.clone()), value.span(), ROOT_KEY);
    Some(path)
}

/// A list of plain names (one path segment each), each checked by `check`.
fn names(
    cx: &mut Ctx,
    list: &Spanned<Vec<Str>>,
    key: &str,
    check: fn(&str) -> Result<String, String>,
) -> Vec<String> {
    cx.list(list, key, Repeats::Dropped, check)
        .unwrap_or_else(|good| good)
}

fn index_name(text: &str) -> Result<String, String> {
    if segment(text) {
        return Ok(text.to_string());
    }
    Err(format!("`{text}` is not a file name; expected names looked for in a folder, e.g. `index = [\"index.html\", \"index.htm\"]` (no `/`), or `index = []` for none"))
}

fn dotfile(text: &str) -> Result<String, String> {
    if text.starts_with('.') && segment(text) {
        return Ok(text.to_string());
    }
    Err(format!("`{text}` is not a name starting with `.`; expected path segments that may be served although they start with a dot, e.g. `dotfiles = [\".well-known\"]`"))
}

/// One path segment that names something: not empty, not `.` or `..`, no `/`, no control byte.
fn segment(text: &str) -> bool {
    !matches!(text, "" | "." | "..") && !text.bytes().any(|b| b == b'/' || b.is_ascii_control())
}

/// `/index.html`, a file below `root` (kept without its leading `/`).
fn fallback(cx: &mut Ctx, value: &Str) -> Option<String> {
    const KEY: &str = "site.route.files.fallback";
    let text = cx.expand(value, KEY)?;
    let rest = text
        .strip_prefix('/')
        .filter(|rest| rest.split('/').all(segment));
    match rest {
        Some(rest) => Some(rest.to_string()),
        None => {
            let msg = format!("`{text}` is not a file below `root`; expected a path starting with `/`, without `.`/`..` segments or a trailing `/`, e.g. `fallback = \"/index.html\"` (served, with 200, for any path that names no file)");
            cx.error(value.span(), KEY, msg);
            None
        }
    }
}

fn precompressed(cx: &mut Ctx, list: &Spanned<Vec<Str>>) -> Vec<Coding> {
    let parse = |text: &str| {
        Coding::from_token(text.trim())
            .ok_or_else(|| format!("unknown coding `{text}`; {PRECOMPRESSED_HINT}"))
    };
    let key = "site.route.files.precompressed";
    cx.list(list, key, Repeats::Refused(PRECOMPRESSED_HINT), parse)
        .unwrap_or_else(|good| good)
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, Action, Coding, ConfigError, StaticFiles};
    use std::path::Path;

    fn config(route: &str) -> String {
        format!("[listen]\nhttp = \"127.0.0.1:0\"\n\n[upstream.app]\nservers = [\"127.0.0.1:9\"]\n\n[[site]]\n  [[site.route]]\n{route}\n")
    }

    fn files(route: &str) -> StaticFiles {
        let text = config(route);
        let config = parse(Path::new("/etc/gatehouse/g.toml"), &text).unwrap();
        match &config.sites[0].routes[0].action {
            Action::Files(files) => files.clone(),
            other => panic!("not a files route: {other:?}"),
        }
    }

    /// Every error as `line key: message`.
    fn errors(route: &str) -> Vec<String> {
        let text = config(route);
        match parse(Path::new("g.toml"), &text) {
            Err(ConfigError::Invalid(errors)) => errors
                .iter()
                .map(|e| format!("{} {}: {}", e.line, e.key, e.message))
                .collect(),
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_every_key() {
        let f = files("  path = \"/\"\n  files = { root = \"dist\" }");
        assert_eq!(f.root, Path::new("/etc/gatehouse/dist"));
        assert_eq!(f.index, ["index.html"]);
        assert_eq!(
            (f.fallback, f.follow_symlinks, f.strip_prefix),
            (None, false, false)
        );
        assert!(f.precompressed.is_empty() && f.dotfiles.is_empty());

        let f = files("  path = \"/app/\"\n  strip_prefix = true\n  files = { root = \"/srv/app\", index = [], fallback = \"/index.html\", precompressed = [\"br\", \"zstd\", \"gzip\"], follow_symlinks = true, dotfiles = [\".well-known\"] }");
        assert_eq!(f.root, Path::new("/srv/app"));
        assert!(f.index.is_empty());
        assert_eq!(f.fallback.as_deref(), Some("index.html"));
        assert_eq!(f.precompressed, [Coding::Br, Coding::Zstd, Coding::Gzip]);
        assert!(f.follow_symlinks && f.strip_prefix);
        assert_eq!(f.dotfiles, [".well-known"]);
    }

    #[test]
    fn bad_keys_are_located_with_what_is_valid() {
        let got = errors("  path = \"/\"\n  files = { index = [\"a/b\"] }");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("10 site.route.files.root: `files` needs `root`"));
        assert!(got[1].starts_with("10 site.route.files.index: `a/b` is not a file name"));

        let got = errors("  path = \"/\"\n  files = { root = \"d\", precompressed = [\"br\", \"deflate\"], fallback = \"index.html\", dotfiles = [\"env\", \"..\"] }");
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got
            .iter()
            .any(|e| e.contains("precompressed: unknown coding `deflate`")));
        assert!(got
            .iter()
            .any(|e| e.contains("fallback: `index.html` is not a file below")));
        assert!(got
            .iter()
            .any(|e| e.contains("dotfiles: `env` is not a name starting")));
        assert!(got
            .iter()
            .any(|e| e.contains("dotfiles: `..` is not a name starting")));

        let got = errors("  path = \"/\"\n  files = { root = \"d\", fallback = \"/a/../b\" }");
        assert!(got[0].contains("fallback"), "{got:?}");
    }

    #[test]
    fn one_action_and_accel_only_with_an_upstream() {
        let got =
            errors("  path = \"/\"\n  respond = { status = 204 }\n  files = { root = \"d\" }");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("exactly one of `upstream`, `respond`, `redirect` or `files`"));
        // files and an upstream: files first, without a fallback
        let files = match &parse(
            Path::new("g.toml"),
            &config("  path = \"/\"\n  upstream = \"app\"\n  files = { root = \"d\", index = [] }"),
        )
        .unwrap()
        .sites[0]
            .routes[0]
            .action
        {
            Action::Proxy {
                files_first: Some(files),
                upstream,
                ..
            } if upstream == "app" => files.clone(),
            other => panic!("not files first: {other:?}"),
        };
        assert!(files.index.is_empty() && files.fallback.is_none());
        let got = errors("  path = \"/\"\n  upstream = \"app\"\n  files = { root = \"d\", fallback = \"/i.html\" }");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("11 site.route.files.fallback: "),
            "{got:?}"
        );

        let got = errors("  path = \"/\"\n  accel_redirect = true\n  files = { root = \"d\" }");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("10 site.route.accel_redirect: "),
            "{got:?}"
        );

        let got = errors("  exact = \"/x\"\n  strip_prefix = true\n  files = { root = \"d\" }");
        assert!(
            got[0].contains("`path` route with an `upstream` or `files`"),
            "{got:?}"
        );
    }

    #[test]
    fn internal_and_accel_are_read() {
        let text = config("  path = \"/\"\n  upstream = \"app\"\n  accel_redirect = true\n\n  [[site.route]]\n  path = \"/protected/\"\n  internal = true\n  files = { root = \"/srv\" }");
        let config = parse(Path::new("g.toml"), &text).unwrap();
        let routes = &config.sites[0].routes;
        assert!(matches!(
            routes[0].action,
            Action::Proxy {
                accel_redirect: true,
                ..
            }
        ));
        assert!(!routes[0].internal && routes[1].internal);
    }
}
