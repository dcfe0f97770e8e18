//! Body plumbing: the crate's boxed body type, a wrapper that counts bytes, and the audit ticket
//! that emits a request's record when its response body ends (so the record carries the byte
//! counts and the full duration).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::audit::{AuditRecord, AuditSink};

/// The error type bodies and custom services use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The body type of requests and responses through the proxy.
pub type EgressBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> EgressBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> EgressBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Box any body into an [`EgressBody`].
pub fn boxed<B>(body: B) -> EgressBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A record waiting for its response to finish; emitted when dropped.
pub(crate) struct AuditTicket {
    sink: Arc<dyn AuditSink>,
    record: Option<AuditRecord>,
    started: Instant,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) bytes_out: Arc<AtomicU64>,
}

impl AuditTicket {
    pub(crate) fn new(sink: Arc<dyn AuditSink>, record: AuditRecord, started: Instant) -> Self {
        Self {
            sink,
            record: Some(record),
            started,
            bytes_in: Arc::default(),
            bytes_out: Arc::default(),
        }
    }

    pub(crate) fn record_mut(&mut self) -> &mut AuditRecord {
        self.record
            .as_mut()
            .unwrap_or_else(|| unreachable!("the record is only taken on drop"))
    }
}

impl Drop for AuditTicket {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.bytes_in = self.bytes_in.load(Ordering::Relaxed);
            r.bytes_out = self.bytes_out.load(Ordering::Relaxed);
            r.duration = self.started.elapsed();
            self.sink.record(r);
        }
    }
}

/// A body that adds the length of every data frame to `counter`, and holds an optional audit
/// ticket until it is finished or dropped.
pub(crate) struct Counted<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    ticket: Option<AuditTicket>,
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            counter,
            ticket: None,
        }
    }

    pub(crate) fn with_ticket(mut self, ticket: AuditTicket) -> Self {
        self.ticket = Some(ticket);
        self
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                // Emit now rather than when the connection gets around to dropping the body.
                self.ticket.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
