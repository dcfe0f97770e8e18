//! A hardened HTTP/1 listener for what the control plane exposes — the webhook receiver of
//! `cma run`, the emulator — and for hosts that receive CMA webhooks themselves.
//!
//! Any tower service works (an axum `Router`, a [`VerifyLayer`](crate::webhook::VerifyLayer)
//! stack); what the listener adds is that no client, however slow or however many, can hold the
//! process's file descriptors, memory or threads:
//!
//! * **a connection cap** ([`ListenerLimits::max_connections`]): at the cap, a new connection
//!   takes the place of the connection that has waited on its client the longest (between
//!   requests, mid request head, or mid request body) — a slowloris crowd evicts itself, while a
//!   client that sends a whole request promptly is never the one waiting longest. When every
//!   connection is busy serving, the new one is closed at once;
//! * **a request-head deadline** ([`ListenerLimits::header_read_timeout`]) counted from the
//!   first byte of the head (and from the accept for a new connection), whatever trickles in;
//! * **an idle deadline** between requests ([`ListenerLimits::idle_timeout`]);
//! * **a body deadline** ([`ListenerLimits::body_read_timeout`]) from the head to the end of the
//!   body: the service's body read fails with [`BodyTimeout`];
//! * **a request deadline** ([`ListenerLimits::max_request_time`], optional: long-lived streams
//!   turn it off), **a request count per connection**
//!   ([`ListenerLimits::max_requests_per_connection`], then `Connection: close`), and bounded
//!   request heads ([`ListenerLimits::max_header_bytes`], [`ListenerLimits::max_headers`]).
//!
//! A connection's descriptor counts against the cap until its task has closed it: an evicted
//! connection's socket is closed before the newcomer is served, so a flood of connections never
//! holds more than `max_connections + 1` sockets at once.
//!
//! Connections are tasks on the caller's runtime, never threads. Accept errors (such as running
//! out of descriptors) pause accepting briefly instead of spinning.
//!
//! ```no_run
//! # async fn demo(router: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use cma_core::listener::{Listener, ListenerLimits};
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let listener = Listener::new(tcp, ListenerLimits::default())?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! listener.serve(router, shutdown.clone()).await;
//! # Ok(()) }
//! ```

mod body;
mod conn;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::{BodyTimeout, ListenerBody, TrackedBody};
use conn::ConnState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a new connection waits for an evicted one to close its socket before it is refused.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The smallest request-head buffer hyper accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

/// The bounds of a [`Listener`]; start from [`ListenerLimits::default`] (suited to a webhook
/// receiver) and adjust with the setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerLimits {
    /// Connections open at once (default 256).
    pub max_connections: usize,
    /// Time to receive a request head, from its first byte (default 10 s).
    pub header_read_timeout: Duration,
    /// Time a connection may wait between requests (default 60 s).
    pub idle_timeout: Duration,
    /// Time to receive a request body, from the end of the head (default 30 s).
    pub body_read_timeout: Duration,
    /// Time a request may take, response included (default 60 s); `None` for services that
    /// stream long responses.
    pub max_request_time: Option<Duration>,
    /// Requests one connection carries before it is closed (default 1000).
    pub max_requests_per_connection: usize,
    /// Largest request head, in bytes (default 64 KiB, at least [`MIN_HEADER_BYTES`]).
    pub max_header_bytes: usize,
    /// Most header fields in a request head (default 100).
    pub max_headers: usize,
    /// How long a shutdown lets requests in progress finish (default 5 s).
    pub shutdown_grace: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_request_time: Some(Duration::from_secs(60)),
            max_requests_per_connection: 1000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl ListenerLimits {
    /// Set [`ListenerLimits::max_connections`].
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Set [`ListenerLimits::header_read_timeout`].
    #[must_use]
    pub fn header_read_timeout(mut self, t: Duration) -> Self {
        self.header_read_timeout = t;
        self
    }
    /// Set [`ListenerLimits::idle_timeout`].
    #[must_use]
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }
    /// Set [`ListenerLimits::body_read_timeout`].
    #[must_use]
    pub fn body_read_timeout(mut self, t: Duration) -> Self {
        self.body_read_timeout = t;
        self
    }
    /// Set [`ListenerLimits::max_request_time`].
    #[must_use]
    pub fn max_request_time(mut self, t: Option<Duration>) -> Self {
        self.max_request_time = t;
        self
    }
    /// Set [`ListenerLimits::max_requests_per_connection`].
    #[must_use]
    pub fn max_requests_per_connection(mut self, n: usize) -> Self {
        self.max_requests_per_connection = n;
        self
    }
    /// Set [`ListenerLimits::max_header_bytes`].
    #[must_use]
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }
    /// Set [`ListenerLimits::max_headers`].
    #[must_use]
    pub fn max_headers(mut self, n: usize) -> Self {
        self.max_headers = n;
        self
    }
    /// Set [`ListenerLimits::shutdown_grace`].
    #[must_use]
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.shutdown_grace = t;
        self
    }

    /// Refuse limits the listener cannot honour.
    pub fn validate(&self) -> Result<(), ListenerError> {
        let bad = |m: &str| Err(ListenerError::InvalidLimits(m.to_owned()));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.max_requests_per_connection == 0 {
            return bad("max_requests_per_connection must be at least 1");
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return bad("max_header_bytes must be at least 8192");
        }
        if self.max_headers == 0 {
            return bad("max_headers must be at least 1");
        }
        let zero = [
            self.header_read_timeout,
            self.idle_timeout,
            self.body_read_timeout,
        ]
        .iter()
        .chain(self.max_request_time.iter())
        .any(Duration::is_zero);
        if zero {
            return bad("timeouts must not be zero");
        }
        Ok(())
    }
}

/// Why a listener cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The limits cannot be honoured.
    #[error("invalid listener limits: {0}")]
    InvalidLimits(String),
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
}

/// What a listener has done so far; a handle that stays valid while it serves.
#[derive(Debug, Clone)]
pub struct ListenerStats(Arc<Shared>);

impl ListenerStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.conns().len()
    }
    /// Connections accepted.
    pub fn accepted(&self) -> u64 {
        self.0.stats.accepted.load(Ordering::Relaxed)
    }
    /// Connections closed to make room for a new one.
    pub fn evicted(&self) -> u64 {
        self.0.stats.evicted.load(Ordering::Relaxed)
    }
    /// Connections closed on arrival (every slot busy serving).
    pub fn refused(&self) -> u64 {
        self.0.stats.refused.load(Ordering::Relaxed)
    }
    /// Connections closed for their clocks (head, idle, request time).
    pub fn timed_out(&self) -> u64 {
        self.0.stats.timed_out.load(Ordering::Relaxed)
    }
    /// Failed accepts (e.g. out of descriptors).
    pub fn accept_errors(&self) -> u64 {
        self.0.stats.accept_errors.load(Ordering::Relaxed)
    }
}

/// State shared by the accept loop and the connections.
#[derive(Debug)]
struct Shared {
    limits: ListenerLimits,
    shutdown: CancellationToken,
    stats: Counters,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// One permit per open connection socket, released when its task has dropped the socket.
    sockets: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, id: u64) {
        self.conns().remove(&id);
    }

    /// Make room for one more connection; false when every connection is busy serving.
    fn make_room(&self, conns: &mut HashMap<u64, Arc<ConnState>>) -> bool {
        if conns.len() < self.limits.max_connections {
            return true;
        }
        let victim = conns
            .values()
            .filter_map(|c| c.waiting_since().map(|since| (since, c.id)))
            .min();
        let Some((_, id)) = victim else {
            return false;
        };
        if let Some(c) = conns.remove(&id) {
            c.cancel.cancel();
        }
        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A TCP listener serving one tower service under [`ListenerLimits`].
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    shared: Arc<Shared>,
}

impl Listener {
    /// Serve on `tcp` with `limits` (refused when they cannot be honoured).
    pub fn new(tcp: TcpListener, limits: ListenerLimits) -> Result<Self, ListenerError> {
        limits.validate()?;
        Ok(Self {
            tcp,
            shared: Arc::new(Shared {
                limits,
                shutdown: CancellationToken::new(),
                stats: Counters::default(),
                conns: Mutex::new(HashMap::new()),
                sockets: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            }),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The limits in force.
    pub fn limits(&self) -> ListenerLimits {
        self.shared.limits
    }

    /// A handle on the counters.
    pub fn stats(&self) -> ListenerStats {
        ListenerStats(self.shared.clone())
    }

    /// Serve `service` until `shutdown`: accepting stops, requests in progress get
    /// [`ListenerLimits::shutdown_grace`], then every connection is closed. Returns once every
    /// connection task is over.
    pub async fn serve<S, B>(self, service: S, shutdown: CancellationToken)
    where
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
        let shared = self.shared;
        let epoch = Instant::now();
        let tasks = TaskTracker::new();
        let mut next_id: u64 = 0;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.tcp.accept() => r,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: pause
                    // rather than spin.
                    shared.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "listener: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            };
            shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            next_id += 1;
            let state = Arc::new(ConnState::new(next_id, epoch));
            {
                let mut conns = shared.conns();
                if !shared.make_room(&mut conns) {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                conns.insert(state.id, state.clone());
            }
            // The evicted connection closes its socket as soon as it sees its cancel: wait for
            // that (briefly) so the sockets held never exceed the cap, however fast clients come.
            let permit = match shared.sockets.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let wait =
                        tokio::time::timeout(EVICTION_WAIT, shared.sockets.clone().acquire_owned());
                    let got = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        r = wait => r,
                    };
                    match got {
                        Ok(Ok(permit)) => permit,
                        _ => {
                            shared.forget(state.id);
                            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                            drop(stream);
                            continue;
                        }
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let (service, conn_shared) = (service.clone(), shared.clone());
            tasks.spawn(async move {
                conn::serve_connection(stream, state, service, conn_shared).await;
                drop(permit);
            });
        }
        drop(self.tcp);
        shared.shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(shared.limits.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            for c in shared.conns().values() {
                c.cancel.cancel();
            }
            tasks.wait().await;
        }
    }
}
