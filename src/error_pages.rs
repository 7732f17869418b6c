//! Error pages in the snapshot: the files `error_pages` names (read by `crate::load`, kept here
//! as `Bytes` with their `Content-Type`), looked up by status for a route, a site, or the
//! server. They replace the body of Gatehouse's own error answers (`ProxyService::refuse`), and
//! on a route with `intercept_errors` the upstream's error answers. Routes without pages hold
//! `None`: nothing is looked up for them.
//!
//! A page may say `{request_id}`: the request's id is put there when it is sent (a page without
//! it is sent as it is, a reference-count clone).

use crate::config::{Config, ErrorPages as PageFiles, StatusMatch};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const REQUEST_ID: &[u8] = b"{request_id}";

/// One file, ready to send.
#[derive(Debug)]
pub struct Page {
    /// The text between the `{request_id}` placeholders (one piece: none).
    pieces: Vec<Bytes>,
    content_type: HeaderValue,
}

impl Page {
    fn new(path: &Path, bytes: &Bytes) -> Page {
        Page {
            pieces: split(bytes),
            content_type: content_type(path),
        }
    }

    /// The page for the request with `request_id`.
    pub fn body(&self, request_id: &[u8]) -> Bytes {
        if let [whole] = self.pieces.as_slice() {
            return whole.clone();
        }
        let len = self.pieces.iter().map(Bytes::len).sum::<usize>()
            + request_id.len() * (self.pieces.len() - 1);
        let mut out = BytesMut::with_capacity(len);
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(request_id);
            }
            out.extend_from_slice(piece);
        }
        out.freeze()
    }

    pub fn content_type(&self) -> &HeaderValue {
        &self.content_type
    }
}

/// `bytes` cut around each `{request_id}` (cheap slices of the one buffer).
fn split(bytes: &Bytes) -> Vec<Bytes> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while let Some(found) = find(&bytes[at..], REQUEST_ID) {
        let hit = at + found;
        pieces.push(bytes.slice(start..hit));
        start = hit + REQUEST_ID.len();
        at = start;
    }
    pieces.push(bytes.slice(start..));
    pieces
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// By extension: `.html`/`.htm`, `.json`, anything else plain text.
fn content_type(path: &Path) -> HeaderValue {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    HeaderValue::from_static(match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    })
}

/// One level's pages (a route's, a site's or the server's, inheritance already resolved).
#[derive(Debug, Default)]
pub struct Pages {
    codes: Vec<(u16, Arc<Page>)>,
    /// `4xx`, `5xx`.
    classes: [Option<Arc<Page>>; 2],
}

impl Pages {
    /// The page for `status`: its code's, else its class's.
    pub fn get(&self, status: StatusCode) -> Option<&Page> {
        let code = status.as_u16();
        if let Some((_, page)) = self.codes.iter().find(|(c, _)| *c == code) {
            return Some(page);
        }
        let class = usize::from(code / 100).checked_sub(4)?;
        self.classes.get(class)?.as_deref()
    }
}

/// The snapshot's pages for answers no route claimed: per site, and the server's (a route's own
/// are on its `state::Route`, from `ErrorPages::build`).
#[derive(Debug, Default)]
pub struct ErrorPages {
    server: Option<Arc<Pages>>,
    sites: Vec<Option<Arc<Pages>>>,
    /// The files as read, so a reload notices a page changed under the same config.
    files: HashMap<PathBuf, Bytes>,
}

impl ErrorPages {
    /// From the config and the pages `crate::load` read for it (every page it names), with each
    /// route's pages in route order (`RouteId`), for its `state::Route`. Levels that resolve
    /// to the same files share one table.
    pub fn build(
        config: &Config,
        files: &HashMap<PathBuf, Bytes>,
    ) -> (ErrorPages, Vec<Option<Arc<Pages>>>) {
        let mut pages: HashMap<&Path, Arc<Page>> = HashMap::new();
        for (path, bytes) in files {
            pages.insert(path, Arc::new(Page::new(path, bytes)));
        }
        let mut made: Vec<(PageFiles, Arc<Pages>)> = Vec::new();
        let mut table = |set: &PageFiles| -> Option<Arc<Pages>> {
            if set.pages.is_empty() {
                return None;
            }
            if let Some((_, same)) = made.iter().find(|(s, _)| s == set) {
                return Some(same.clone());
            }
            let compiled = Arc::new(compile(set, &pages));
            made.push((set.clone(), compiled.clone()));
            Some(compiled)
        };
        let server = table(&config.server.error_pages);
        let sites = config.sites.iter().map(|s| table(&s.error_pages)).collect();
        let routes = config.sites.iter().flat_map(|s| &s.routes);
        let routes = routes.map(|r| table(&r.error_pages)).collect();
        let pages = ErrorPages {
            server,
            sites,
            files: files.clone(),
        };
        (pages, routes)
    }

    /// The pages for an answer no route claimed: the site's, else the server's.
    pub fn unrouted(&self, site: Option<usize>) -> Option<&Pages> {
        match site {
            Some(site) => self.sites.get(site)?.as_deref(),
            None => self.server.as_deref(),
        }
    }

    /// Whether `files` (read by a reload of the same config) differ from the pages held.
    pub fn changed(&self, files: &HashMap<PathBuf, Bytes>) -> bool {
        self.files != *files
    }
}

fn compile(set: &PageFiles, pages: &HashMap<&Path, Arc<Page>>) -> Pages {
    let mut out = Pages::default();
    for (status, path) in &set.pages {
        // every named page was read (`load` refuses the config otherwise)
        let Some(page) = pages.get(path.as_path()) else {
            continue;
        };
        match *status {
            StatusMatch::Code(code) => out.codes.push((code, page.clone())),
            StatusMatch::Class(k) => {
                if let Some(slot) = usize::from(k)
                    .checked_sub(4)
                    .and_then(|i| out.classes.get_mut(i))
                {
                    *slot = Some(page.clone());
                }
            }
        }
    }
    out
}

/// Upstream headers an intercepted answer keeps: what the client needs to act on its status
/// (nginx keeps `WWW-Authenticate` too). Everything else described the body that was dropped.
static KEPT: [HeaderName; 3] = [header::WWW_AUTHENTICATE, header::RETRY_AFTER, header::ALLOW];

/// The head of an intercepted answer: `page`'s `Content-Type` and the `KEPT` headers of the
/// upstream's answer.
pub fn intercepted_head(upstream: &HeaderMap, page: &Page) -> HeaderMap {
    let mut head = HeaderMap::with_capacity(2);
    head.insert(header::CONTENT_TYPE, page.content_type.clone());
    for name in &KEPT {
        for value in upstream.get_all(name) {
            head.append(name.clone(), value.clone());
        }
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(path: &str, text: &'static str) -> Page {
        Page::new(Path::new(path), &Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn the_request_id_goes_where_the_page_says() {
        let p = page("e.html", "<p>id {request_id}</p><!-- {request_id} -->");
        assert_eq!(p.body(b"abc"), "<p>id abc</p><!-- abc -->");
        let plain = page("e.html", "no id {request");
        assert_eq!(plain.pieces.len(), 1);
        assert_eq!(plain.body(b"abc"), "no id {request");
        assert_eq!(page("e.txt", "{request_id}").body(b"x"), "x");
    }

    #[test]
    fn content_type_comes_from_the_extension() {
        let ct = |p: &str| page(p, "").content_type.to_str().unwrap().to_string();
        assert_eq!(ct("errors/404.HTML"), "text/html; charset=utf-8");
        assert_eq!(ct("errors/5xx.json"), "application/json");
        assert_eq!(ct("errors/503"), "text/plain; charset=utf-8");
        assert_eq!(ct("errors/503.txt"), "text/plain; charset=utf-8");
    }

    #[test]
    fn an_exact_code_wins_over_its_class() {
        let (exact, class) = (Arc::new(page("a", "502")), Arc::new(page("b", "5xx")));
        let pages = Pages {
            codes: vec![(502, exact)],
            classes: [None, Some(class)],
        };
        let body = |s: u16| {
            pages
                .get(StatusCode::from_u16(s).unwrap())
                .map(|p| p.body(b""))
        };
        assert_eq!(body(502).as_deref(), Some(&b"502"[..]));
        assert_eq!(body(503).as_deref(), Some(&b"5xx"[..]));
        assert_eq!(body(404), None);
        assert_eq!(body(200), None);
    }

    #[test]
    fn an_intercepted_head_keeps_what_the_status_needs() {
        let mut upstream = HeaderMap::new();
        upstream.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        upstream.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        upstream.insert(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        let head = intercepted_head(&upstream, &page("e.json", "{}"));
        assert_eq!(head.len(), 2);
        assert_eq!(head[header::CONTENT_TYPE], "application/json");
        assert_eq!(head[header::WWW_AUTHENTICATE], "Basic");
    }
}
