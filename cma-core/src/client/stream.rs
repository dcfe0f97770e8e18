//! The session event stream (docs/protocol.md §4.1) and the runner's reconnect policy (§1.6).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use serde_json::Value;

use super::error::{ApiError, StatusError};
use super::json_limit::{MAX_JSON_VALUES, check_json_values};
use super::session::{SessionClient, StreamParams, decode_event_lenient};
use super::transport::transport_error;
use crate::protocol::SessionEvent;
use crate::retry::{STREAM_BACKOFF_CAP, STREAM_BACKOFF_START, StreamBackoff};
use crate::sse::{FrameKind, SseFrame, SseLimits, SseParser, classify};

/// Default bound on opening the stream (core retries included) in [`ReconnectingEventStream`].
pub const DEFAULT_STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// One open event stream: a [`Stream`] of session events.
///
/// Frames are interpreted with the SDK's rules ([`crate::sse::classify`]). The stream ends when
/// the body ends; it yields one error and ends on a transport error, a framing error, a data frame
/// that is not JSON, or an `event: error` frame (a status error with the stream's HTTP status,
/// i.e. 200, built from the frame's data).
pub struct EventStream {
    body: BoxStream<'static, Result<Bytes, ApiError>>,
    parser: SseParser,
    frames: VecDeque<SseFrame>,
    context: String,
    status: u16,
    pending_error: Option<ApiError>,
    done: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("context", &self.context)
            .field("status", &self.status)
            .field("buffered_frames", &self.frames.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// Wrap an HTTP response whose headers said 2xx.
    pub(crate) fn from_response(
        response: reqwest::Response,
        context: String,
        limits: SseLimits,
        timeout: Duration,
    ) -> Self {
        let status = response.status().as_u16();
        let ctx = context.clone();
        let body = response
            .bytes_stream()
            .map(move |r| r.map_err(|e| transport_error(&ctx, e, timeout)))
            .boxed();
        Self::from_parts(body, context, status, limits)
    }

    /// Build from any byte-chunk stream (for tests and custom transports); `status` is what an
    /// `event: error` frame reports.
    pub fn from_byte_stream<S>(
        body: S,
        context: impl Into<String>,
        status: u16,
        limits: SseLimits,
    ) -> Self
    where
        S: Stream<Item = Result<Bytes, ApiError>> + Send + 'static,
    {
        Self::from_parts(body.boxed(), context.into(), status, limits)
    }

    fn from_parts(
        body: BoxStream<'static, Result<Bytes, ApiError>>,
        context: String,
        status: u16,
        limits: SseLimits,
    ) -> Self {
        Self {
            body,
            parser: SseParser::with_limits(limits),
            frames: VecDeque::new(),
            context,
            status,
            pending_error: None,
            done: false,
        }
    }

    fn interpret(&self, frame: &SseFrame) -> Option<Result<SessionEvent, ApiError>> {
        match classify(frame) {
            FrameKind::Skip => None,
            FrameKind::Error(data) => {
                let body = if data.is_empty() {
                    None
                } else {
                    let parsed = check_json_values(data.as_bytes(), MAX_JSON_VALUES)
                        .ok()
                        .and_then(|_| serde_json::from_str::<Value>(data).ok());
                    Some(parsed.unwrap_or_else(|| Value::String(data.to_owned())))
                };
                Some(Err(StatusError::from_body(
                    self.context.clone(),
                    self.status,
                    body,
                )
                .into()))
            }
            FrameKind::Data(data) => Some(
                check_json_values(data.as_bytes(), MAX_JSON_VALUES)
                    .map_err(|limit| {
                        serde::de::Error::custom(format!("more than {limit} JSON values"))
                    })
                    .and_then(|_| serde_json::from_str::<Value>(data))
                    .and_then(decode_event_lenient)
                    .map_err(|e| ApiError::Decode {
                        context: self.context.clone(),
                        message: format!("event-stream data is not a session event: {e}"),
                    }),
            ),
        }
    }
}

impl Stream for EventStream {
    type Item = Result<SessionEvent, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            while let Some(frame) = this.frames.pop_front() {
                if let Some(item) = this.interpret(&frame) {
                    if item.is_err() {
                        this.done = true;
                        this.frames.clear();
                        this.pending_error = None;
                    }
                    return Poll::Ready(Some(item));
                }
            }
            if let Some(e) = this.pending_error.take() {
                this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.parser.finish();
                    this.done = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    let mut out = Vec::new();
                    let fed = this.parser.feed_into(&chunk, &mut out);
                    this.frames.extend(out);
                    if let Err(source) = fed {
                        // Frames completed before the error are still delivered, then the error.
                        this.pending_error = Some(ApiError::Stream {
                            context: this.context.clone(),
                            source,
                        });
                    }
                }
            }
        }
    }
}

/// The runner's reconnect policy for the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// First reconnect delay (0.5 s).
    pub backoff_start: Duration,
    /// Largest reconnect delay (10 s).
    pub backoff_cap: Duration,
    /// Bound on one connect (including the core client's retries) before it counts as a failure.
    pub connect_timeout: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            backoff_start: STREAM_BACKOFF_START,
            backoff_cap: STREAM_BACKOFF_CAP,
            connect_timeout: DEFAULT_STREAM_CONNECT_TIMEOUT,
        }
    }
}

/// What a [`ReconnectingEventStream`] yields.
// Events are the common item; boxing them to shrink the rare variants would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum StreamItem {
    /// A (re)connection succeeded (headers received). The `on_connect` hook, if any, has already
    /// run; a consumer without a hook runs its history reconcile now, before pulling more items
    /// (events stay buffered in the connection meanwhile).
    Connected {
        /// 1 for the first connection, then 2, 3, ….
        connection: u64,
    },
    /// A session event.
    Event(SessionEvent),
    /// The connection ended (`error: None` when the body simply ended) or failed transiently;
    /// the stream waits `retry_in` before reconnecting.
    Disconnected {
        /// The transient error, if any.
        error: Option<ApiError>,
        /// Delay before the next connect attempt.
        retry_in: Duration,
    },
}

/// Hook run after every successful (re)connect, before any event of that connection is yielded.
pub type ConnectHook = Arc<dyn Fn(u64) -> BoxFuture<'static, ()> + Send + Sync>;

/// An event stream that reconnects like the SDK's session tool runner: after a failure or the end
/// of the body it waits 0.5 s, doubling up to 10 s, resetting to 0.5 s whenever an event arrives;
/// a fatal 4xx (any 4xx but 408/409/429) is yielded as `Err` and ends the stream. `event: error`
/// frames, 5xx, timeouts and connection errors are transient.
///
/// Dropping the stream cancels everything (the open connection, a pending sleep or hook).
/// Cancelling a pending `next()` (e.g. in `select!`) loses nothing: the work stays in the stream.
pub struct ReconnectingEventStream {
    setup: Option<Setup>,
    inner: Option<BoxStream<'static, Result<StreamItem, ApiError>>>,
}

struct Setup {
    session: SessionClient,
    params: StreamParams,
    policy: ReconnectPolicy,
    hook: Option<ConnectHook>,
}

impl fmt::Debug for ReconnectingEventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectingEventStream")
            .field("started", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

impl ReconnectingEventStream {
    /// A reconnecting stream of `session`; nothing happens until it is first polled.
    pub fn new(session: SessionClient, params: StreamParams, policy: ReconnectPolicy) -> Self {
        Self {
            setup: Some(Setup {
                session,
                params,
                policy,
                hook: None,
            }),
            inner: None,
        }
    }

    /// Run `hook(connection)` after every successful (re)connect, before that connection's events
    /// (e.g. the history reconcile). Has no effect once the stream has been polled.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(s) = self.setup.as_mut() {
            s.hook = Some(Arc::new(move |n| Box::pin(hook(n))));
        }
        self
    }

    fn start(setup: Setup) -> BoxStream<'static, Result<StreamItem, ApiError>> {
        let st = State {
            backoff: StreamBackoff::new(setup.policy.backoff_start, setup.policy.backoff_cap),
            setup,
            current: None,
            connections: 0,
            sleep: None,
            finished: false,
        };
        futures::stream::unfold(st, step).boxed()
    }
}

struct State {
    setup: Setup,
    backoff: StreamBackoff,
    current: Option<EventStream>,
    connections: u64,
    sleep: Option<Duration>,
    finished: bool,
}

fn transient_or_fatal(mut st: State, e: ApiError) -> Option<(Result<StreamItem, ApiError>, State)> {
    st.current = None;
    if e.is_fatal() {
        tracing::error!(error = %e, "event stream failed permanently");
        st.finished = true;
        return Some((Err(e), st));
    }
    let retry_in = st.backoff.next_delay();
    tracing::warn!(error = %e, retry_in_ms = retry_in.as_millis() as u64, "event stream disconnected, reconnecting");
    st.sleep = Some(retry_in);
    Some((
        Ok(StreamItem::Disconnected {
            error: Some(e),
            retry_in,
        }),
        st,
    ))
}

async fn step(mut st: State) -> Option<(Result<StreamItem, ApiError>, State)> {
    if st.finished {
        return None;
    }
    if let Some(d) = st.sleep.take() {
        tokio::time::sleep(d).await;
    }
    if let Some(current) = st.current.as_mut() {
        return match current.next().await {
            Some(Ok(ev)) => {
                st.backoff.reset();
                Some((Ok(StreamItem::Event(ev)), st))
            }
            Some(Err(e)) => transient_or_fatal(st, e),
            None => {
                st.current = None;
                let retry_in = st.backoff.next_delay();
                st.sleep = Some(retry_in);
                Some((
                    Ok(StreamItem::Disconnected {
                        error: None,
                        retry_in,
                    }),
                    st,
                ))
            }
        };
    }
    let timeout = st.setup.policy.connect_timeout;
    let opened = tokio::time::timeout(timeout, st.setup.session.stream(&st.setup.params)).await;
    let stream = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return transient_or_fatal(st, e),
        Err(_) => {
            let context = format!("GET /v1/sessions/{}/events/stream", st.setup.session.id());
            return transient_or_fatal(st, ApiError::Timeout { context, timeout });
        }
    };
    st.connections += 1;
    st.current = Some(stream);
    if let Some(hook) = st.setup.hook.clone() {
        hook(st.connections).await;
    }
    let connection = st.connections;
    Some((Ok(StreamItem::Connected { connection }), st))
}

impl Stream for ReconnectingEventStream {
    type Item = Result<StreamItem, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.inner.is_none() {
            match this.setup.take() {
                Some(setup) => this.inner = Some(Self::start(setup)),
                None => return Poll::Ready(None),
            }
        }
        match this.inner.as_mut() {
            Some(inner) => inner.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}
