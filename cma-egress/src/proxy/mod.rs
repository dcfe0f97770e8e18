//! [`EgressProxy`]: the HTTP forward proxy every sandbox's traffic goes through.
//!
//! * Absolute-form requests (`GET http://host/path`) are decided and forwarded one by one, each on
//!   its own merits (a kept-alive connection may switch hosts; every request is checked).
//! * `CONNECT host:port` opens a tunnel: refused, spliced (bytes copied, the ClientHello's SNI
//!   checked against the target), or intercepted with the sandbox's CA when a rule needs to see
//!   inside (see [`crate::policy`]). Inside an intercepted tunnel the proxy speaks HTTP/1.1 or
//!   HTTP/2 (ALPN) and refuses requests whose `Host`/`:authority` differs from the tunnel target.
//! * WebSocket upgrades are relayed after their upgrade request was decided like any other.
//! * [`InProcessClient`] runs the same code for a request handed over in process (the isolate
//!   backend's `fetch`).
//!
//! The sandbox is identified by the connection's peer address through the
//! [`SandboxRegistry`] (or given explicitly to
//! [`EgressProxy::serve_connection`]); its policy is looked up per request, so policy edits apply
//! to running sessions. Redirects are never followed: the sandbox sees the 3xx and its next
//! request is decided afresh. Every request produces one [`AuditRecord`](crate::AuditRecord).
//!
//! Resource bounds: a connection cap, header size caps, streamed bodies (fixed-size buffers),
//! timeouts on connect, TLS handshakes, header reads, upstream responses and idle connections.

pub(crate) mod body;
mod connect;
mod headers;
mod http;
mod in_process;
pub(crate) mod io;
mod tls;
mod upgrade;
mod upstream;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ::http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::addr::AddressGuard;
use crate::audit::{AuditSink, AuditVia, TracingAuditSink};
use crate::custom::CustomServices;
use crate::error::{EgressError, EgressErrorKind, Result};
use crate::registry::{SandboxIdentity, SandboxRegistry};
use crate::resolve::{Resolver, SystemResolver};
use crate::secrets::{SecretStore, SecretStores};
use crate::select::PolicySource;

pub use body::{BoxError, EgressBody, boxed, empty, full};
pub use headers::PLACEHOLDER_PREFIX;
pub use in_process::{FetchReply, InProcessClient};

use self::io::IdleIo;
use self::upstream::{Dialer, Pool};

/// Limits and timeouts of an [`EgressProxy`]. Zero values are refused by
/// [`EgressProxyBuilder::build`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Most sandbox connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Most connections one sandbox may hold at once (so one sandbox cannot starve the others).
    pub max_connections_per_sandbox: usize,
    /// Time to establish a TCP connection upstream.
    pub connect_timeout: Duration,
    /// Time for a TLS handshake (either side).
    pub handshake_timeout: Duration,
    /// Time for a sandbox to send a complete request head.
    pub header_read_timeout: Duration,
    /// Time for the upstream (or a custom service) to produce a response head.
    pub response_timeout: Duration,
    /// A connection (or tunnel) with no bytes moving in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request or response head accepted, in bytes (at least 8 KiB).
    pub max_header_bytes: usize,
    /// Upstream connections one sandbox connection may keep for reuse.
    pub max_upstream_per_connection: usize,
    /// Concurrent HTTP/2 streams per intercepted connection.
    pub max_concurrent_streams: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_sandbox: 256,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            max_upstream_per_connection: 8,
            max_concurrent_streams: 100,
        }
    }
}

impl ProxyConfig {
    fn validate(&self) -> Result<()> {
        let zero_duration = [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("response_timeout", self.response_timeout),
            ("idle_timeout", self.idle_timeout),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero());
        if let Some((name, _)) = zero_duration {
            return Err(EgressError::new(
                EgressErrorKind::Config,
                format!("{name} must be positive"),
            ));
        }
        if self.max_connections == 0
            || self.max_connections_per_sandbox == 0
            || self.max_upstream_per_connection == 0
            || self.max_concurrent_streams == 0
        {
            return Err(EgressError::new(
                EgressErrorKind::Config,
                "connection and stream caps must be positive",
            ));
        }
        if self.max_header_bytes < 8192 || self.max_header_bytes > 1024 * 1024 {
            return Err(EgressError::new(
                EgressErrorKind::Config,
                "max_header_bytes must be between 8 KiB and 1 MiB",
            ));
        }
        Ok(())
    }
}

/// What the proxy's tasks share.
pub(crate) struct Shared {
    pub config: ProxyConfig,
    pub policies: Arc<dyn PolicySource>,
    pub secrets: Arc<dyn SecretStore>,
    pub audit: Arc<dyn AuditSink>,
    pub registry: Arc<SandboxRegistry>,
    pub custom: CustomServices,
    pub dialer: Dialer,
    pub shutdown: CancellationToken,
    pub connections: Arc<Semaphore>,
    pub per_sandbox: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

/// The connection permits a sandbox connection holds for its life.
pub(crate) struct Permits {
    _global: OwnedSemaphorePermit,
    _sandbox: OwnedSemaphorePermit,
}

impl Shared {
    /// Admit one more connection from `sandbox_id`, within the global and per-sandbox caps.
    fn admit(&self, sandbox_id: &str) -> Result<Permits> {
        let full = |what: &str| {
            EgressError::new(EgressErrorKind::LimitExceeded, format!("too many {what}"))
        };
        let global = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| full("proxy connections"))?;
        let sem = {
            let mut map = self.per_sandbox.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 64 && map.len() > 2 * self.registry.len() {
                // Forget sandboxes with no open connection (their permits hold the only other
                // references).
                map.retain(|_, sem| Arc::strong_count(sem) > 1);
            }
            map.entry(sandbox_id.to_owned())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(self.config.max_connections_per_sandbox))
                })
                .clone()
        };
        let sandbox = sem
            .try_acquire_owned()
            .map_err(|_| full("connections from this sandbox"))?;
        Ok(Permits {
            _global: global,
            _sandbox: sandbox,
        })
    }
}

/// How a connection's sandbox is known.
pub(crate) enum Peer {
    /// Through the registry, re-checked per request.
    Registered { addr: IpAddr, sandbox_id: String },
    /// Given by the caller.
    Fixed(Arc<SandboxIdentity>),
}

/// One sandbox connection (or in-process client): its identity and its upstream pool.
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub peer: Peer,
    pub pool: Pool,
    /// Held for the connection's life (including tunnels spawned from it).
    pub _permit: Option<Permits>,
}

impl ConnCtx {
    /// The sandbox behind this connection, now. A sandbox unregistered (or replaced by another
    /// at the same address) since the connection opened is refused.
    pub(crate) fn identity(&self) -> Result<Arc<SandboxIdentity>> {
        match &self.peer {
            Peer::Fixed(id) => Ok(id.clone()),
            Peer::Registered { addr, sandbox_id } => match self.shared.registry.lookup(*addr) {
                Some(id) if &id.sandbox_id == sandbox_id => Ok(id),
                _ => Err(EgressError::new(
                    EgressErrorKind::UnknownPeer,
                    format!("sandbox {sandbox_id} is no longer registered at {addr}"),
                )),
            },
        }
    }

    /// The identity's ids, for audit records even when the identity is gone.
    pub(crate) fn ids(&self) -> (Option<String>, Option<String>) {
        match self.identity() {
            Ok(id) => (
                Some(id.session.session_id.clone()),
                Some(id.sandbox_id.clone()),
            ),
            Err(_) => match &self.peer {
                Peer::Registered { sandbox_id, .. } => (None, Some(sandbox_id.clone())),
                Peer::Fixed(id) => (
                    Some(id.session.session_id.clone()),
                    Some(id.sandbox_id.clone()),
                ),
            },
        }
    }
}

/// Builds an [`EgressProxy`].
pub struct EgressProxyBuilder {
    policies: Arc<dyn PolicySource>,
    secrets: Arc<dyn SecretStore>,
    audit: Arc<dyn AuditSink>,
    resolver: Arc<dyn Resolver>,
    registry: Arc<SandboxRegistry>,
    custom: CustomServices,
    roots: Option<rustls::RootCertStore>,
    guard: Option<AddressGuard>,
    config: ProxyConfig,
}

impl EgressProxyBuilder {
    /// Secrets for `inject` and `placeholder` rules (default: none, so such rules refuse).
    #[must_use]
    pub fn secrets(mut self, secrets: impl SecretStore) -> Self {
        self.secrets = Arc::new(secrets);
        self
    }

    /// Where audit records go (default: [`TracingAuditSink`]).
    #[must_use]
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.audit = Arc::new(sink);
        self
    }

    /// How names are resolved (default: [`SystemResolver`]).
    #[must_use]
    pub fn resolver(mut self, resolver: impl Resolver) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Share a registry the backend fills (default: a new empty one, see
    /// [`EgressProxy::registry`]).
    #[must_use]
    pub fn registry(mut self, registry: Arc<SandboxRegistry>) -> Self {
        self.registry = registry;
        self
    }

    /// Services `custom` rules may name.
    #[must_use]
    pub fn custom_services(mut self, services: CustomServices) -> Self {
        self.custom = services;
        self
    }

    /// The CAs upstream TLS certificates are verified against (default: the Mozilla roots from
    /// `webpki-roots`). Tests pass their own test CA here.
    #[must_use]
    pub fn upstream_roots(mut self, roots: rustls::RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }

    /// The address check (default: ranges plus the host's interface addresses, read at build).
    #[must_use]
    pub fn address_guard(mut self, guard: AddressGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Limits and timeouts.
    #[must_use]
    pub fn config(mut self, config: ProxyConfig) -> Self {
        self.config = config;
        self
    }

    /// Validate the configuration and build the proxy.
    pub fn build(self) -> Result<EgressProxy> {
        self.config.validate()?;
        let roots = Arc::new(self.roots.unwrap_or_else(|| {
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
        }));
        let tls = Arc::new(upstream::client_tls(
            roots.clone(),
            &[crate::ca::ALPN_H2, crate::ca::ALPN_HTTP11],
        )?);
        let tls_h1 = Arc::new(upstream::client_tls(roots, &[crate::ca::ALPN_HTTP11])?);
        let config = self.config;
        let dialer = Dialer {
            resolver: self.resolver,
            guard: Arc::new(self.guard.unwrap_or_else(AddressGuard::with_host_addresses)),
            tls,
            tls_h1,
            connect_timeout: config.connect_timeout,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            max_header_bytes: config.max_header_bytes,
        };
        Ok(EgressProxy {
            shared: Arc::new(Shared {
                connections: Arc::new(Semaphore::new(config.max_connections)),
                per_sandbox: Default::default(),
                config,
                policies: self.policies,
                secrets: self.secrets,
                audit: self.audit,
                registry: self.registry,
                custom: self.custom,
                dialer,
                shutdown: CancellationToken::new(),
            }),
        })
    }
}

/// The egress proxy. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct EgressProxy {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("config", &self.shared.config)
            .field("sandboxes", &self.shared.registry.len())
            .finish_non_exhaustive()
    }
}

impl EgressProxy {
    /// Start building a proxy that takes policies from `policies`.
    pub fn builder(policies: impl PolicySource) -> EgressProxyBuilder {
        EgressProxyBuilder {
            policies: Arc::new(policies),
            secrets: Arc::new(SecretStores::new()),
            audit: Arc::new(TracingAuditSink),
            resolver: Arc::new(SystemResolver::default()),
            registry: Arc::new(SandboxRegistry::new()),
            custom: CustomServices::new(),
            roots: None,
            guard: None,
            config: ProxyConfig::default(),
        }
    }

    /// The registry mapping peer addresses to sandboxes.
    pub fn registry(&self) -> &Arc<SandboxRegistry> {
        &self.shared.registry
    }

    /// Where the proxy looks up each session's policy (the control plane resolves a session's
    /// policy through it at placement, to record which policy and fingerprint apply).
    pub fn policies(&self) -> &Arc<dyn PolicySource> {
        &self.shared.policies
    }

    /// Listen on `addr` (port 0 picks one) and serve registered sandboxes until
    /// [`EgressProxy::shutdown`]. Connections from unregistered peers are closed.
    pub async fn listen(&self, addr: SocketAddr) -> Result<ListeningProxy> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            EgressError::new(EgressErrorKind::Io, format!("cannot listen on {addr}")).with_source(e)
        })?;
        let local_addr = listener.local_addr().map_err(|e| {
            EgressError::new(EgressErrorKind::Io, "cannot read the listening address")
                .with_source(e)
        })?;
        let shared = self.shared.clone();
        let task = tokio::spawn(accept_loop(shared, listener));
        Ok(ListeningProxy {
            local_addr,
            task: Some(task),
        })
    }

    /// Serve one connection from a sandbox whose identity the caller vouches for (a per-sandbox
    /// listener, a unix socket mounted into one sandbox). Returns when the connection ends.
    pub async fn serve_connection<I>(&self, io: I, identity: SandboxIdentity) -> Result<()>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let permit = self.shared.admit(&identity.sandbox_id)?;
        let conn = Arc::new(ConnCtx {
            pool: Pool::new(self.shared.config.max_upstream_per_connection),
            shared: self.shared.clone(),
            peer: Peer::Fixed(Arc::new(identity)),
            _permit: Some(permit),
        });
        serve_proxy_connection(conn, io).await;
        Ok(())
    }

    /// A client that sends requests through the policy in process, as `identity` (the isolate
    /// backend's `fetch`). Keep one per sandbox: it reuses upstream connections.
    pub fn in_process(&self, identity: SandboxIdentity) -> InProcessClient {
        InProcessClient::new(Arc::new(ConnCtx {
            pool: Pool::new(self.shared.config.max_upstream_per_connection),
            shared: self.shared.clone(),
            peer: Peer::Fixed(Arc::new(identity)),
            _permit: None,
        }))
    }

    /// Stop accepting, and close every connection and tunnel.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }
}

/// A proxy listening on a socket.
#[derive(Debug)]
pub struct ListeningProxy {
    local_addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl ListeningProxy {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Wait for the accept loop to end (after [`EgressProxy::shutdown`]).
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ListeningProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(target: "cma_egress", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(identity) = shared.registry.lookup(peer.ip()) else {
            tracing::warn!(target: "cma_egress", %peer, "connection from an unregistered peer; closing");
            continue;
        };
        let permit = match shared.admit(&identity.sandbox_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(target: "cma_egress", %peer, sandbox = %identity.sandbox_id, error = %e, "closing");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = Arc::new(ConnCtx {
            pool: Pool::new(shared.config.max_upstream_per_connection),
            shared: shared.clone(),
            peer: Peer::Registered {
                addr: peer.ip(),
                sandbox_id: identity.sandbox_id.clone(),
            },
            _permit: Some(permit),
        });
        tokio::spawn(serve_proxy_connection(conn, tcp));
    }
}

/// Serve HTTP/1.1 proxy requests (absolute-form and `CONNECT`) on one sandbox connection.
async fn serve_proxy_connection<I>(conn: Arc<ConnCtx>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = conn.shared.clone();
    let io = IdleIo::new(io, shared.config.idle_timeout);
    let svc = service_fn(move |req: Request<Incoming>| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(proxy_request(conn, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .max_buf_size(shared.config.max_header_bytes)
        .max_header_size(shared.config.max_header_bytes);
    let served = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        _ = served => {}
        _ = shared.shutdown.cancelled() => {}
    }
}

async fn proxy_request(conn: Arc<ConnCtx>, req: Request<Incoming>) -> Response<EgressBody> {
    if req.method() == ::http::Method::CONNECT {
        return connect::handle(conn, req).await;
    }
    let arrival = http::Arrival {
        via: AuditVia::Forward,
        intercepted: false,
        version: req.version(),
    };
    match http::absolute_target(req.uri()) {
        Ok(target) => http::respond(&conn, target, req, arrival).await,
        Err(e) => http::refuse_unparsed(&conn, &req, arrival, &e),
    }
}
