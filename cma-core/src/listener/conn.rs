//! One accepted connection of a [`Listener`](super::Listener): what phase it is in (between
//! requests, or in one), the clocks the watchdog reads, the byte-counting socket that tells a
//! request head has started, and the task that serves it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::{ListenerBody, RequestGuard, TrackedBody};
use super::{ListenerLimits, Shared};

const BETWEEN: u8 = 0;
const IN_REQUEST: u8 = 1;

/// What the listener knows about one connection. Times are milliseconds since the listener
/// started; `0` in `head_started` means "no byte of a request head yet".
#[derive(Debug)]
pub(crate) struct ConnState {
    pub(super) id: u64,
    /// Cancelled to close the connection at once (eviction, shutdown past its grace).
    pub(super) cancel: CancellationToken,
    epoch: Instant,
    phase: AtomicU8,
    /// When the current phase began.
    since: AtomicU64,
    /// When the first byte of the next request head arrived.
    head_started: AtomicU64,
    /// In a request whose body the service is waiting for.
    awaiting_body: AtomicBool,
    requests: AtomicUsize,
}

impl ConnState {
    pub(super) fn new(id: u64, epoch: Instant) -> Self {
        let s = Self {
            id,
            cancel: CancellationToken::new(),
            epoch,
            phase: AtomicU8::new(BETWEEN),
            since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            awaiting_body: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
        };
        let now = s.now();
        s.since.store(now, Ordering::SeqCst);
        // A fresh connection owes its first request head within the header timeout.
        s.head_started.store(now, Ordering::SeqCst);
        s
    }

    fn now(&self) -> u64 {
        // At least 1, so 0 can mean "unset".
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Bytes arrived from the client.
    fn on_read(&self, n: usize) {
        if n > 0 && self.phase.load(Ordering::SeqCst) == BETWEEN {
            let _ = self.head_started.compare_exchange(
                0,
                self.now(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// A request head was parsed; returns how many requests the connection has carried.
    fn begin_request(&self) -> usize {
        self.phase.store(IN_REQUEST, Ordering::SeqCst);
        self.since.store(self.now(), Ordering::SeqCst);
        self.head_started.store(0, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The request's response is sent (or abandoned).
    pub(super) fn end_request(&self) {
        self.awaiting_body.store(false, Ordering::SeqCst);
        self.since.store(self.now(), Ordering::SeqCst);
        self.phase.store(BETWEEN, Ordering::SeqCst);
    }

    pub(super) fn set_awaiting_body(&self, waiting: bool) {
        self.awaiting_body.store(waiting, Ordering::SeqCst);
    }

    /// When the connection started waiting on its client, if it is (between requests, or in a
    /// request whose body has not arrived): the candidates for eviction, oldest first.
    pub(super) fn waiting_since(&self) -> Option<u64> {
        match self.phase.load(Ordering::SeqCst) {
            BETWEEN => Some(self.since.load(Ordering::SeqCst)),
            _ if self.awaiting_body.load(Ordering::SeqCst) => {
                Some(self.since.load(Ordering::SeqCst))
            }
            _ => None,
        }
    }

    /// Why the connection is over its time, if it is.
    fn expired(&self, limits: &ListenerLimits) -> Option<&'static str> {
        let now = self.now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let since = self.since.load(Ordering::SeqCst);
        if self.phase.load(Ordering::SeqCst) == BETWEEN {
            let head = self.head_started.load(Ordering::SeqCst);
            if head != 0 && now.saturating_sub(head) > ms(limits.header_read_timeout) {
                return Some("request head not received in time");
            }
            if head == 0 && now.saturating_sub(since) > ms(limits.idle_timeout) {
                return Some("idle between requests for too long");
            }
            return None;
        }
        limits
            .max_request_time
            .filter(|max| now.saturating_sub(since) > ms(*max))
            .map(|_| "request running for too long")
    }
}

/// The socket, counting what it reads into the connection's state.
struct CountingIo {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.state.on_read(buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service's error, as hyper sees it (a named type: hyper's bounds do not infer through a
/// boxed trait object here).
#[derive(Debug)]
struct ServiceError(BoxError);

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ServiceError {}

/// How often a connection checks its clocks: a quarter of the shortest timeout, 10 ms to 1 s.
fn tick(limits: &ListenerLimits) -> Duration {
    let shortest = [
        Some(limits.header_read_timeout),
        Some(limits.idle_timeout),
        limits.max_request_time,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(Duration::from_secs(1));
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Serve one connection until it ends, is evicted, or outlives its clocks; shutdown lets the
/// request in progress finish.
pub(super) async fn serve_connection<S, B>(
    stream: TcpStream,
    state: Arc<ConnState>,
    service: S,
    shared: Arc<Shared>,
) where
    S: tower_service::Service<Request<ListenerBody>, Response = Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let limits = shared.limits;
    let io = TokioIo::new(CountingIo {
        inner: stream,
        state: state.clone(),
    });
    let svc_state = state.clone();
    let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = svc_state.clone();
        let mut service = service.clone();
        async move {
            let n = state.begin_request();
            let guard = RequestGuard(state.clone());
            let req = req.map(|b| ListenerBody::new(b, limits.body_read_timeout, state.clone()));
            futures::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|e| ServiceError(e.into()))?;
            let resp = service
                .call(req)
                .await
                .map_err(|e| ServiceError(e.into()))?;
            let (mut parts, body) = resp.into_parts();
            if n >= limits.max_requests_per_connection {
                parts
                    .headers
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, ServiceError>(Response::from_parts(parts, TrackedBody::new(body, guard)))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    let conn = builder.serve_connection(io, hyper_service);
    tokio::pin!(conn);
    let mut clock = tokio::time::interval(tick(&limits));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "listener: connection ended with an error");
                }
                break;
            }
            _ = state.cancel.cancelled() => break,
            _ = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = clock.tick() => {
                if let Some(why) = state.expired(&limits) {
                    shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(reason = why, "listener: closing a connection");
                    break;
                }
            }
        }
    }
    shared.forget(state.id);
}
