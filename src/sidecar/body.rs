//! The response body the proxy sends: the app's body streamed through untouched (holding the
//! request's [`ConnGuard`] until it ends), or a short body of the sidecar's own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::state::ConnGuard;

/// Body of every response the proxy port sends.
#[derive(Debug)]
pub enum ProxyBody {
    /// The app's body; `guard` counts the request as live until the last frame (or an error,
    /// or the client going away, which drops the body).
    Upstream { inner: Incoming, guard: Option<ConnGuard> },
    /// A body of the sidecar's own (errors, 401, 503); `None` once sent.
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        Self::Local(Some(text.into()))
    }

    pub fn empty() -> Self {
        Self::Local(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Upstream { inner, guard } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guard.take();
                }
                polled
            }
            Self::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { inner, .. } => inner.is_end_stream(),
            Self::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { inner, .. } => inner.size_hint(),
            Self::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
