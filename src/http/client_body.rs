//! The client's request body as the proxy core reads it, whichever HTTP/1.1 engine (or HTTP/2)
//! received it: hyper's `Incoming`, or the native engine's reader over the connection's own
//! buffer (`native::RequestBody`). One type, so the service, its limits (`CountedBody`) and its
//! retries are written once for both engines.

use super::native::{NativeBodyError, RequestBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Debug)]
pub enum ClientBody {
    Hyper(Incoming),
    Native(RequestBody),
}

/// Why a client's body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    Hyper(hyper::Error),
    #[error(transparent)]
    Native(NativeBodyError),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(ClientBodyError::Hyper))),
            ClientBody::Native(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(ClientBodyError::Native))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Native(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Native(b) => b.size_hint(),
        }
    }
}
