//! Static files (`files`): a folder served as it is, the fourth route action. This module owns
//! everything about it: which file a request names and whether it may be served (`path`,
//! `lookup`), its type (`mime`), validators and conditional and range requests
//! (`conditional`, `range`), precompressed siblings chosen by `Accept-Encoding`, the body read
//! in bounded chunks off the runtime's threads (`body`), and internal redirects
//! (`X-Accel-Redirect`, `accel`), which serve such a route on an upstream's say-so.
//!
//! One request makes one trip to tokio's blocking pool, for the lookup, the checks and the
//! first chunk together; a larger file makes one more per further chunk of `body::CHUNK`.
//! Only `GET` and `HEAD` are served.

pub mod accel;
mod body;
mod conditional;
mod lookup;
mod mime;
mod path;
mod range;

pub use body::FileBody;

use crate::config::{Coding, StaticFiles};
use crate::middleware::encode::negotiate::negotiate;
use crate::middleware::vary;
use conditional::{Conditions, Validators, Verdict};
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use lookup::{Found, Opened};
use std::io::{self, Seek, SeekFrom};
use std::sync::Arc;

/// A `files` route as the snapshot holds it.
#[derive(Debug)]
pub struct FilesRoute {
    spec: StaticFiles,
}

impl FilesRoute {
    pub fn new(spec: &StaticFiles) -> FilesRoute {
        FilesRoute { spec: spec.clone() }
    }
}

/// The parts of a request a `files` route reads.
#[derive(Debug, Clone, Copy)]
pub struct FileRequest<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// The canonical path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// How much of `path` the route's prefix took (taken off with `strip_prefix`).
    pub matched_len: usize,
}

/// Why a `files` route has nothing to send.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no file for this path")]
    NotFound,
    #[error("reading a file: {0}")]
    Io(#[from] io::Error),
}

/// What the blocking part found to say.
enum Reply {
    Response(Response<FileBody>),
    /// A folder with an index asked for without its trailing `/`.
    Slash,
    Missing,
}

/// What one request asks of the blocking pool.
struct Ask {
    target: path::Target,
    wants: Wants,
    head: bool,
    conditions: Conditions,
}

/// The answer to `req` from `route`: the file, its index, the fallback, a redirect to the
/// folder's slash form, `304`, `206`, `412`, `416`, `405`; or nothing (`404`).
pub async fn serve(
    route: &Arc<FilesRoute>,
    req: FileRequest<'_>,
) -> Result<Response<FileBody>, FileError> {
    let head = match *req.method {
        Method::GET => false,
        Method::HEAD => true,
        _ => return Ok(not_allowed()),
    };
    let spec = &route.spec;
    let strip = spec.strip_prefix.then_some(req.matched_len);
    let ask = Ask {
        target: path::target(req.path, strip, &spec.dotfiles),
        wants: Wants::of(req.headers, &spec.precompressed),
        head,
        conditions: Conditions::of(req.headers),
    };
    let route = route.clone();
    let reply = tokio::task::spawn_blocking(move || answer(&route.spec, ask))
        .await
        .map_err(io::Error::other)??;
    match reply {
        Reply::Response(resp) => Ok(resp),
        Reply::Slash => Ok(slash_redirect(req.path, req.query)),
        Reply::Missing => Err(FileError::NotFound),
    }
}

/// Blocking: the lookup, the conditions and the first chunk.
fn answer(spec: &StaticFiles, ask: Ask) -> io::Result<Reply> {
    let wants = ask.wants.as_slice();
    let opened = match lookup::find(spec, &ask.target, wants)? {
        Found::File(opened) => opened,
        Found::Slash => return Ok(Reply::Slash),
        Found::Missing => match lookup::fallback(spec, wants)? {
            Some(opened) => opened,
            None => return Ok(Reply::Missing),
        },
    };
    let varies = !spec.precompressed.is_empty();
    respond(opened, &ask, varies).map(Reply::Response)
}

/// The answer for an open file; `varies` when a sibling could have been chosen.
fn respond(opened: Opened, ask: &Ask, varies: bool) -> io::Result<Response<FileBody>> {
    let len = opened.meta.len();
    let validators = Validators::new(opened.meta.modified().ok(), len, opened.coding);
    let verdict = conditional::evaluate(&ask.conditions, &validators, len, !ask.head);
    let mut resp = Response::new(FileBody::empty());
    let headers = resp.headers_mut();
    if varies {
        vary::add(headers, "Accept-Encoding");
    }
    headers.insert(ETAG, validators.etag.clone());
    if let Some(date) = validators.last_modified() {
        headers.insert(LAST_MODIFIED, date);
    }
    let (status, first, count) = match verdict {
        Verdict::PreconditionFailed => {
            return Ok(status_only(resp, StatusCode::PRECONDITION_FAILED))
        }
        Verdict::NotModified => return Ok(status_only(resp, StatusCode::NOT_MODIFIED)),
        Verdict::Unsatisfiable => {
            let range = format!("bytes */{len}");
            headers.insert(CONTENT_RANGE, value(range));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
            return Ok(status_only(resp, StatusCode::RANGE_NOT_SATISFIABLE));
        }
        Verdict::Full => (StatusCode::OK, 0, len),
        Verdict::Partial(first, last) => {
            let range = format!("bytes {first}-{last}/{len}");
            headers.insert(CONTENT_RANGE, value(range));
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
    };
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, mime::content_type(&opened.path));
    if let Some(coding) = opened.coding {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
    if !ask.head && count > 0 {
        let mut file = opened.file;
        if first > 0 {
            file.seek(SeekFrom::Start(first))?;
        }
        let first_chunk = body::read(&file, count.min(body::CHUNK as u64) as usize)?;
        *resp.body_mut() = FileBody::stream(file, count, first_chunk);
    }
    Ok(resp)
}

fn status_only(mut resp: Response<FileBody>, status: StatusCode) -> Response<FileBody> {
    *resp.status_mut() = status;
    resp
}

/// A header value made of digits, `-`, `/`, `*`, `bytes`: always valid.
fn value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""))
}

/// `405` with what is served (RFC 9110 §15.5.6).
fn not_allowed() -> Response<FileBody> {
    let mut resp = Response::new(FileBody::empty());
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// `301` to the folder's slash form, as nginx answers `/docs` when `docs` is a folder: the
/// page's relative links then resolve inside it. The location is the path alone (RFC 9110
/// allows a relative reference), so it holds whatever name and port the client used.
fn slash_redirect(path: &str, query: Option<&str>) -> Response<FileBody> {
    let mut location = String::with_capacity(path.len() + 2 + query.map_or(0, str::len));
    location.push_str(path);
    location.push('/');
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    let mut resp = Response::new(FileBody::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    // the canonical path and the query as received are valid in a header already
    if let Ok(location) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(LOCATION, location);
    }
    resp
}

/// The precompressed codings a request takes, best first: its q-values, ties going to the
/// route's order (`precompressed`); at most three, no allocation.
#[derive(Debug, Clone, Copy)]
struct Wants {
    codings: [Coding; 3],
    len: usize,
}

impl Wants {
    fn of(headers: &HeaderMap, offered: &[Coding]) -> Wants {
        let mut wants = Wants {
            codings: [Coding::Gzip; 3],
            len: 0,
        };
        let mut left = [Coding::Gzip; 3];
        let mut n = 0;
        for (slot, &coding) in left.iter_mut().zip(offered) {
            *slot = coding;
            n += 1;
        }
        // the best of what is left, again and again: each time one coding fewer
        while let Some(best) = negotiate(headers.get_all(ACCEPT_ENCODING), &left[..n]) {
            wants.codings[wants.len] = best;
            wants.len += 1;
            let at = left[..n].iter().position(|&c| c == best).unwrap_or(0);
            left.copy_within(at + 1..n, at);
            n -= 1;
        }
        wants
    }

    fn as_slice(&self) -> &[Coding] {
        &self.codings[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(accept: &str, offered: &[Coding]) -> Vec<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(accept).unwrap());
        Wants::of(&headers, offered).as_slice().to_vec()
    }

    #[test]
    fn precompressed_codings_best_first() {
        use Coding::*;
        let route = [Br, Zstd, Gzip];
        assert_eq!(wants("gzip, br, zstd", &route), [Br, Zstd, Gzip]);
        assert_eq!(wants("gzip;q=1, br;q=0.5", &route), [Gzip, Br]);
        assert_eq!(
            wants("zstd;q=0.9, gzip;q=0.9, br;q=0", &route),
            [Zstd, Gzip]
        );
        assert_eq!(wants("identity", &route), []);
        assert_eq!(wants("*", &[Gzip, Br]), [Gzip, Br]);
        assert_eq!(wants("br", &[]), []);
        assert!(Wants::of(&HeaderMap::new(), &route).as_slice().is_empty());
    }

    #[test]
    fn slash_redirects_keep_the_query() {
        let resp = slash_redirect("/docs", Some("a=1"));
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(resp.headers()[LOCATION], "/docs/?a=1");
        assert_eq!(slash_redirect("/d", None).headers()[LOCATION], "/d/");
    }
}
