//! `[log]`: where access-log lines go, in which format, and how many may wait for the writer.

use super::Ctx;
use crate::config::file::{FileLog, Str};
use crate::config::model::{AccessFormat, AccessTarget, Log, DEFAULT_ACCESS_BUFFER};
use std::path::Path;
use toml::Spanned;

const ACCESS_HINT: &str = "expected \"stderr\" (the default: an event in the process log), \"stdout\", \"off\" or a file path like \"/var/log/gatehouse/access.log\" (relative paths start at the config file's folder)";

pub(super) fn log(cx: &mut Ctx, raw: Option<&Spanned<FileLog>>) -> Log {
    let d = Log::default();
    let Some(raw) = raw else { return d };
    let l = raw.get_ref();
    let access = l.access.as_ref().map_or(Some(d.access), |v| access(cx, v));
    let format = l.format.as_ref().map_or(d.format, |v| format(cx, v));
    let buffer = cx.count(
        &l.buffer,
        "log.buffer",
        1..=(1 << 20),
        DEFAULT_ACCESS_BUFFER,
    );
    if access == Some(AccessTarget::Stderr) {
        stderr_only(cx, l);
    }
    Log {
        access: access.unwrap_or(AccessTarget::Stderr),
        format,
        buffer,
    }
}

/// `None` after an error.
fn access(cx: &mut Ctx, value: &Str) -> Option<AccessTarget> {
    const KEY: &str = "log.access";
    let text = cx.expand(value, KEY)?;
    match text.as_str() {
        "stderr" => return Some(AccessTarget::Stderr),
        "stdout" => return Some(AccessTarget::Stdout),
        "off" => return Some(AccessTarget::Off),
        "" => {
            cx.error(
                value.span(),
                KEY,
                format!("`access` is empty; {ACCESS_HINT}"),
            );
            return None;
        }
        _ => {}
    }
    let path = cx.relative(&text);
    // checked without creating anything: `gatehouse check` must not touch the file
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    let problem = if path.is_dir() || text.ends_with('/') {
        Some(format!("`{text}` is a folder; {ACCESS_HINT}"))
    } else if folder.is_some_and(|f| !f.is_dir()) {
        let folder = folder.map_or(Path::new("."), |f| f).display();
        Some(format!(
            "the folder of `{text}` ({folder}) does not exist; create it, or {ACCESS_HINT}"
        ))
    } else {
        None
    };
    match problem {
        Some(message) => {
            cx.error(value.span(), KEY, message);
            None
        }
        None => Some(AccessTarget::File(path)),
    }
}

fn format(cx: &mut Ctx, value: &Str) -> AccessFormat {
    let text = cx.expand(value, "log.format");
    match text.as_deref() {
        Some("json") => AccessFormat::Json,
        Some("combined") => AccessFormat::Combined,
        Some(other) => {
            let msg = format!("`{other}` is not an access-log format; expected \"json\" (one JSON object per line) or \"combined\" (nginx's combined format)");
            cx.error(value.span(), "log.format", msg);
            AccessFormat::Json
        }
        None => AccessFormat::Json,
    }
}

/// With the default target, lines are events of the process log: `format` and `buffer` would be
/// silently ignored, so they are errors.
fn stderr_only(cx: &mut Ctx, l: &FileLog) {
    const WHY: &str = "applies to `access = \"stdout\"` or a file; with `access = \"stderr\"` (the default) access events go into the process log, formatted by `--log-format`";
    if let Some(v) = &l.format {
        cx.error(v.span(), "log.format", format!("`format` {WHY}"));
    }
    if let Some(v) = &l.buffer {
        cx.error(v.span(), "log.buffer", format!("`buffer` {WHY}"));
    }
}
