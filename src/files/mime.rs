//! `Content-Type` by file extension: a small table of what web roots hold (nginx's `mime.types`
//! for these, with RFC 9239's `text/javascript` and `charset=utf-8` on text, as Caddy sends).
//! Anything else is `application/octet-stream`, which browsers download rather than render.
//! Pure.

use http::HeaderValue;
use std::path::Path;

const DEFAULT: &str = "application/octet-stream";

/// Sorted by extension (lower case), for a binary search.
const TYPES: &[(&str, &str)] = &[
    ("7z", "application/x-7z-compressed"),
    ("aac", "audio/aac"),
    ("apng", "image/apng"),
    ("atom", "application/atom+xml"),
    ("avif", "image/avif"),
    ("bmp", "image/bmp"),
    ("cjs", "text/javascript; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("csv", "text/csv; charset=utf-8"),
    ("eot", "application/vnd.ms-fontobject"),
    ("epub", "application/epub+zip"),
    ("flac", "audio/flac"),
    ("gif", "image/gif"),
    ("gz", "application/gzip"),
    ("htm", "text/html; charset=utf-8"),
    ("html", "text/html; charset=utf-8"),
    ("ico", "image/x-icon"),
    ("ics", "text/calendar; charset=utf-8"),
    ("jpeg", "image/jpeg"),
    ("jpg", "image/jpeg"),
    ("js", "text/javascript; charset=utf-8"),
    ("json", "application/json"),
    ("jsonld", "application/ld+json"),
    ("m4a", "audio/mp4"),
    ("m4v", "video/mp4"),
    ("map", "application/json"),
    ("md", "text/markdown; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("mov", "video/quicktime"),
    ("mp3", "audio/mpeg"),
    ("mp4", "video/mp4"),
    ("oga", "audio/ogg"),
    ("ogg", "audio/ogg"),
    ("ogv", "video/ogg"),
    ("opus", "audio/ogg"),
    ("otf", "font/otf"),
    ("pdf", "application/pdf"),
    ("png", "image/png"),
    ("rss", "application/rss+xml"),
    ("svg", "image/svg+xml"),
    ("tar", "application/x-tar"),
    ("tif", "image/tiff"),
    ("tiff", "image/tiff"),
    ("toml", "application/toml"),
    ("ttf", "font/ttf"),
    ("txt", "text/plain; charset=utf-8"),
    ("vtt", "text/vtt; charset=utf-8"),
    ("wasm", "application/wasm"),
    ("wav", "audio/wav"),
    ("weba", "audio/webm"),
    ("webm", "video/webm"),
    ("webmanifest", "application/manifest+json"),
    ("webp", "image/webp"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("xhtml", "application/xhtml+xml"),
    ("xml", "application/xml"),
    ("yaml", "application/yaml"),
    ("yml", "application/yaml"),
    ("zip", "application/zip"),
];

/// The type of the file `path` names, by its extension (any case).
pub fn content_type(path: &Path) -> HeaderValue {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut lower = [0u8; 16];
    let found = (ext.len() <= lower.len())
        .then(|| {
            let lower = &mut lower[..ext.len()];
            lower.copy_from_slice(ext.as_bytes());
            lower.make_ascii_lowercase();
            let lower = std::str::from_utf8(lower).ok()?;
            let at = TYPES.binary_search_by(|(e, _)| (*e).cmp(lower)).ok()?;
            Some(TYPES[at].1)
        })
        .flatten();
    HeaderValue::from_static(found.unwrap_or(DEFAULT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_valid() {
        assert!(TYPES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(TYPES
            .iter()
            .all(|(e, _)| e.len() <= 16 && *e == e.to_lowercase()));
    }

    #[test]
    fn by_extension_any_case() {
        let t = |p: &str| content_type(Path::new(p));
        assert_eq!(t("index.html"), "text/html; charset=utf-8");
        assert_eq!(t("app.JS"), "text/javascript; charset=utf-8");
        assert_eq!(t("a/b/logo.svg"), "image/svg+xml");
        assert_eq!(t("f.woff2"), "font/woff2");
        assert_eq!(t("archive.tar.gz"), "application/gzip");
        assert_eq!(t("Makefile"), DEFAULT);
        assert_eq!(t("x.unknown"), DEFAULT);
        assert_eq!(t("x.averyveryverylongextension"), DEFAULT);
        assert_eq!(t(".env"), DEFAULT);
    }
}
