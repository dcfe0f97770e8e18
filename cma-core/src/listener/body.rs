//! The bodies a [`Listener`](super::Listener) wraps around each request and response: the
//! request body with its read deadline, and the response body that marks the request over when
//! it is done (or dropped).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::conn::ConnState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body did not arrive within the listener's `body_read_timeout`.
///
/// Handlers see it as their body's error (e.g. `VerifyLayer` answers `408 Request Timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body as the listener hands it to the service: the connection's bytes, failing with
/// [`BodyTimeout`] once the request's body deadline passes.
pub struct ListenerBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    state: Arc<ConnState>,
    failed: bool,
}

impl std::fmt::Debug for ListenerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ListenerBody {
    pub(super) fn new(inner: Incoming, timeout: Duration, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            state,
            failed: false,
        }
    }
}

impl Body for ListenerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.state.set_awaiting_body(false);
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                // Waiting on the client: what an eviction under pressure may cut first.
                this.state.set_awaiting_body(true);
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.failed = true;
                    this.state.set_awaiting_body(false);
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends the connection's current request when dropped (the response was sent, failed or was
/// abandoned).
#[derive(Debug)]
pub(super) struct RequestGuard(pub(super) Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// A response body that keeps its request "in progress" until it is sent or dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> TrackedBody<B> {
    pub(super) fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
