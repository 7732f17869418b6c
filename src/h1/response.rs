//! An upstream's response head: parsed by `httparse` (strict: no obs-fold, no whitespace before a
//! colon, no control bytes; a bare LF is taken as a line end, as hyper's client does), indexed,
//! and framed by RFC 9112 6.3 as `tests/upstream_framing.rs` pins it for the hyper path: anything
//! whose framing cannot be trusted is an error (a `502`, and the connection is dropped).

use super::{
    index, write_fields, Body, ConnectionSays, Field, Framing, Kind, Limits, Span, MAX_FIELDS,
};
use std::mem::MaybeUninit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("response head larger than the limit")]
    HeadTooLarge,
    #[error("more header fields than the limit")]
    TooManyFields,
    #[error("status code outside 100-999")]
    Status,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedSwitch,
    #[error("Transfer-Encoding other than a lone `chunked`")]
    TransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingHttp10,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
}

/// What the request the response answers asked for, which decides part of its framing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// `HEAD`: the response has no body, whatever its head says.
    pub head: bool,
    /// `CONNECT`: a `2xx` opens a tunnel.
    pub connect: bool,
    /// The request asked to upgrade (`Connection: upgrade` + `Upgrade`), so `101` may follow.
    pub upgrade: bool,
}

/// What kind of answer a head is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `1xx` but `101`: passed over (not forwarded; nginx's behaviour too), the final answer
    /// follows on the same connection.
    Interim,
    /// `101` to an upgrade, or `2xx` to `CONNECT`: the connection is a tunnel from here.
    Switch,
    Final,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub status: u16,
    pub reason: Span,
    pub fields: Vec<Field>,
    pub answer: Answer,
    pub body: Body,
    /// Whether the upstream connection may carry another request once this body is read.
    pub reusable: bool,
    /// The head had `Content-Length` beside the `Transfer-Encoding` it was framed by: the length
    /// must not be forwarded (it describes nothing that is sent).
    pub drop_length: bool,
    /// What its `Connection` lines said.
    pub connection: ConnectionSays,
    /// It had a `Transfer-Encoding` (a lone `chunked`: the codec refuses any other).
    pub transfer_encoding: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

impl Default for ResponseHead {
    fn default() -> ResponseHead {
        ResponseHead {
            minor_version: 1,
            status: 0,
            reason: Span::default(),
            fields: Vec::new(),
            answer: Answer::Final,
            body: Body::None,
            reusable: false,
            drop_length: false,
            connection: ConnectionSays::default(),
            transfer_encoding: false,
            len: 0,
        }
    }
}

impl ResponseHead {
    /// Parses the head at the start of `buf`: `Ok(false)` if it is not complete yet. After an
    /// [`Answer::Interim`], the caller parses again from `buf[len..]`.
    pub fn parse(
        &mut self,
        buf: &[u8],
        asked: Asked,
        limits: &Limits,
    ) -> Result<bool, ResponseError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let max_fields = limits.max_fields.min(MAX_FIELDS);
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut slots[..max_fields],
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len > limits.max_head => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= limits.max_head => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyFields),
            Err(e) => return Err(ResponseError::Parse(e)),
        };
        let (Some(minor), Some(status)) = (resp.version, resp.code) else {
            return Err(ResponseError::Parse(httparse::Error::Status));
        };
        if !(100..=999).contains(&status) {
            return Err(ResponseError::Status);
        }
        self.minor_version = minor;
        self.status = status;
        self.reason = Span::within(buf, resp.reason.unwrap_or_default().as_bytes());
        self.len = len;
        index(buf, resp.headers, &mut self.fields);
        self.judge(buf, asked)?;
        Ok(true)
    }

    fn judge(&mut self, buf: &[u8], asked: Asked) -> Result<(), ResponseError> {
        let mut connection = ConnectionSays::default();
        for field in self.fields.iter().filter(|f| f.kind == Kind::Connection) {
            connection.read(field.value.of(buf));
        }
        let framing = Framing::read(&self.fields, buf);
        // the framing headers are checked even where they frame nothing: a peer that sends
        // nonsense there is not trusted with the next response either
        if framing.encodings > 0 && !framing.only_chunked {
            return Err(ResponseError::TransferEncoding);
        }
        if framing.encodings > 0 && self.minor_version == 0 {
            return Err(ResponseError::TransferEncodingHttp10);
        }
        if framing.length_bad {
            return Err(ResponseError::ContentLength);
        }
        self.answer = self.answer_kind(asked)?;
        self.drop_length = framing.encodings > 0 && framing.length.is_some();
        self.body = self.body_of(asked, &framing);
        self.reusable = self.answer == Answer::Final
            && connection.keeps_alive(self.minor_version)
            && self.body != Body::UntilClose
            && !self.drop_length;
        self.connection = connection;
        self.transfer_encoding = framing.encodings > 0;
        Ok(())
    }

    fn answer_kind(&self, asked: Asked) -> Result<Answer, ResponseError> {
        Ok(match self.status {
            101 if asked.upgrade => Answer::Switch,
            101 => return Err(ResponseError::UnaskedSwitch),
            100..=199 => Answer::Interim,
            200..=299 if asked.connect => Answer::Switch,
            _ => Answer::Final,
        })
    }

    /// RFC 9112 6.3, in its order.
    fn body_of(&self, asked: Asked, framing: &Framing) -> Body {
        let bodiless = asked.head || matches!(self.status, 204 | 304);
        if self.answer != Answer::Final || bodiless {
            Body::None
        } else if framing.encodings > 0 {
            Body::Chunked
        } else if let Some(n) = framing.length {
            Body::Length(n)
        } else {
            Body::UntilClose
        }
    }

    /// The head as parsed, written out again (the status line with the version as received).
    pub fn write(&self, buf: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(if self.minor_version == 0 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.of(buf));
        out.extend_from_slice(b"\r\n");
        write_fields(&self.fields, buf, out);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests;
