//! [`SessionEgress`]: wires each placed session's sandbox to the egress proxy (feature `egress`).
//!
//! The host asks it, around each sandbox it creates:
//!
//! 1. [`prepare`](SessionEgress::prepare), before `create`: for a backend served by a proxy
//!    listener (Docker: the proxy listens on the sandbox network's gateway), a fresh per-sandbox
//!    CA is made and the spec gets the [`EgressEndpoint`] (proxy URL and CA *certificate*; the
//!    key never leaves this process). Backends not registered get no network at all.
//! 2. [`attach`](SessionEgress::attach), after `create` and before the first command: the
//!    sandbox's network address ([`Sandbox::network_address`]) is registered with the proxy's
//!    registry, so its connections are identified by their peer address alone; an in-process
//!    backend (isolate) gets an [`InProcessClient`] its `fetch` hook uses
//!    ([`SessionEgress::isolate_hook`]). The session's policy is resolved now, logged with its
//!    fingerprint and (with a state store) recorded.
//! 3. [`refresh`](SessionEgress::refresh) when a warm sandbox is reused (new session metadata
//!    reaches the registry), and [`detach`](SessionEgress::detach) *before* the sandbox is
//!    destroyed, so an address freed by one sandbox is never attributed to it once another
//!    container gets it.
//!
//! # Why the peer address is a trustworthy identity (Docker)
//!
//! * The address is read from the engine after the container started, while nothing runs in it
//!   but its init process and `sleep`; it is registered before `attach` returns, i.e. before the
//!   host runs the first command, and unregistered before the container is removed (an address
//!   the engine hands out again is never attributed to the old sandbox; the registry refuses an
//!   address still held by another sandbox).
//! * A sandbox cannot take another's address: containers run with every capability dropped and
//!   `no-new-privileges`, so no `NET_ADMIN` (changing addresses or the MAC, `IP_TRANSPARENT`)
//!   and no `NET_RAW` (raw or packet sockets to forge frames); binding a foreign address with
//!   `IP_FREEBIND` does not let a connection leave with it. The sandbox network is `internal`
//!   with inter-container traffic off, so a sandbox cannot relay through another either.
//! * The proxy listens only on the sandbox network's gateway address, and the backend's host
//!   firewall accepts from the sandbox bridge only that port; connections from any address not
//!   registered (the host itself, other networks) are closed unanswered.
//!
//! The Docker bypass suite (`tests/tests/egress_docker`) checks each of these from inside
//! real containers (`spoof`, `ip-change`, `b-to-a`, `other-sandbox*`).
//!
//! Policies are looked up per request by the proxy, so replacing the policies (a
//! [`PolicyStore`](cma_egress::PolicyStore) edit) reaches running sessions without restarting
//! their sandboxes; [`SessionEgress::watch_policies`] records the new fingerprints. The session's
//! [`SessionContext`] is its id, its agent id, its metadata and the `data` of the last webhook
//! about it ([`SessionEgress::observe_webhook`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cma_egress::{
    EgressProxy, InProcessClient, ListeningProxy, SandboxCa, SandboxIdentity, SessionContext,
};
use cma_sandbox::{EgressEndpoint, Sandbox, SandboxSpec};

use crate::protocol::Session;
use crate::runner::session::HostError;

/// Most sessions whose last webhook data is kept (the oldest are forgotten first).
const MAX_WEBHOOK_SESSIONS: usize = 4096;

/// Bounds of an in-process `fetch` (the isolate backend's scripts).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FetchLimits {
    /// Largest response body handed to a script; larger ones fail the `fetch`.
    pub max_body: usize,
    /// Longest a single `fetch` may take, whatever time the script has left.
    pub max_timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_body: 10 << 20,
            max_timeout: Duration::from_secs(60),
        }
    }
}

/// How a backend's sandboxes reach the proxy.
enum Endpoint {
    /// Through a listener; the sandbox is identified by its network address.
    Proxy {
        proxy_url: String,
        _listening: ListeningProxy,
    },
    /// In process (the isolate backend's `fetch`).
    InProcess,
}

/// A sandbox wired to the proxy.
struct Attached {
    session: SessionContext,
    addr: Option<IpAddr>,
    client: Option<InProcessClient>,
    /// The policy and fingerprint last recorded for it.
    recorded: Option<(String, String)>,
}

#[derive(Default)]
struct State {
    endpoints: HashMap<String, Endpoint>,
    sandboxes: HashMap<String, Attached>,
    /// Session id → the `data` of its last webhook, with an insertion counter for eviction.
    webhooks: HashMap<String, (u64, serde_json::Map<String, serde_json::Value>)>,
    webhook_counter: u64,
}

/// What [`SessionEgress::prepare`] decided for a sandbox about to be created.
#[derive(Debug)]
pub struct PreparedEgress {
    backend: String,
    session: SessionContext,
    ca: Option<Arc<SandboxCa>>,
    in_process: bool,
}

/// Connects placed sessions' sandboxes to an [`EgressProxy`]; see the module docs.
pub struct SessionEgress {
    proxy: EgressProxy,
    state: Mutex<State>,
    fetch: FetchLimits,
    #[cfg(feature = "store")]
    store: Option<Arc<dyn cma_store::state::StateStore>>,
}

impl std::fmt::Debug for SessionEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("SessionEgress")
            .field("backends", &st.endpoints.keys().collect::<Vec<_>>())
            .field("sandboxes", &st.sandboxes.len())
            .finish_non_exhaustive()
    }
}

/// The policy context of `session`, with `webhook` as its last webhook's data.
pub fn session_context(
    session: &Session,
    webhook: Option<serde_json::Map<String, serde_json::Value>>,
) -> SessionContext {
    let mut ctx = SessionContext::new(session.id.as_str());
    ctx.agent_id = session
        .agent
        .extra
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    ctx.metadata = session
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    ctx.webhook = webhook.unwrap_or_default();
    ctx
}

impl SessionEgress {
    /// Wire sandboxes to `proxy` (build it with the policies, secrets and audit sink of your
    /// choice). No backend has network until [`listen_for`](Self::listen_for) or
    /// [`in_process_for`](Self::in_process_for) names it.
    pub fn new(proxy: EgressProxy) -> Self {
        Self {
            proxy,
            state: Mutex::new(State::default()),
            fetch: FetchLimits::default(),
            #[cfg(feature = "store")]
            store: None,
        }
    }

    /// Bounds of in-process `fetch` calls.
    #[must_use]
    pub fn with_fetch_limits(mut self, limits: FetchLimits) -> Self {
        self.fetch = limits;
        self
    }

    /// Record each session's policy id and fingerprint in `store` (its egress policy table and
    /// the session record), at placement and whenever the policies change.
    #[cfg(feature = "store")]
    #[must_use]
    pub fn with_state_store(mut self, store: Arc<dyn cma_store::state::StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The proxy.
    pub fn proxy(&self) -> &EgressProxy {
        &self.proxy
    }

    /// Serve `backend`'s sandboxes with a proxy listener on `addr` (for Docker: the sandbox
    /// network's gateway, `DockerBackend::gateway`, port 0 for any). Returns the bound address.
    pub async fn listen_for(
        &self,
        backend: &str,
        addr: SocketAddr,
    ) -> Result<SocketAddr, HostError> {
        let listening = self.proxy.listen(addr).await.map_err(|e| {
            HostError::with_source(format!("egress proxy for backend {backend}"), e)
        })?;
        let bound = listening.local_addr();
        let host = match bound.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        self.lock().endpoints.insert(
            backend.to_owned(),
            Endpoint::Proxy {
                proxy_url: format!("http://{host}:{}", bound.port()),
                _listening: listening,
            },
        );
        Ok(bound)
    }

    /// Give `backend`'s sandboxes in-process egress (the isolate backend: hand
    /// [`isolate_hook`](Self::isolate_hook) to `IsolateBackend::with_egress`).
    pub fn in_process_for(&self, backend: &str) {
        self.lock()
            .endpoints
            .insert(backend.to_owned(), Endpoint::InProcess);
    }

    /// Remember the `data` of a webhook about a session (policies may select on
    /// `webhook.<key>`); its sandboxes see it from their next request, and their policy is
    /// resolved (and recorded) again.
    pub async fn observe_webhook(
        &self,
        session_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) {
        let updates = {
            let mut st = self.lock();
            st.webhook_counter += 1;
            let n = st.webhook_counter;
            st.webhooks.insert(session_id.to_owned(), (n, data.clone()));
            if st.webhooks.len() > MAX_WEBHOOK_SESSIONS {
                let oldest = st
                    .webhooks
                    .iter()
                    .min_by_key(|(_, (n, _))| *n)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    st.webhooks.remove(&k);
                }
            }
            let mut updates = Vec::new();
            for (id, a) in st.sandboxes.iter_mut() {
                if a.session.session_id == session_id {
                    a.session.webhook = data.clone();
                    updates.push((id.clone(), a.addr, a.session.clone()));
                }
            }
            updates
        };
        for (id, addr, ctx) in updates {
            match addr {
                Some(addr) => {
                    self.proxy.registry().update_session(addr, ctx);
                }
                None => {
                    let client = self
                        .proxy
                        .in_process(SandboxIdentity::new(id.as_str(), ctx));
                    if let Some(a) = self.lock().sandboxes.get_mut(&id) {
                        a.client = Some(client);
                    }
                }
            }
            self.record_policy(&id).await;
        }
    }

    fn context_for(&self, session: &Session) -> SessionContext {
        let webhook = self
            .lock()
            .webhooks
            .get(session.id.as_str())
            .map(|(_, d)| d.clone());
        session_context(session, webhook)
    }

    /// Before `backend` creates a sandbox for `session`: fill `spec.egress` for a proxied
    /// backend. `None` when the backend has no egress (its sandboxes get no network).
    pub fn prepare(
        &self,
        backend: &str,
        session: &Session,
        spec: &mut SandboxSpec,
    ) -> Result<Option<PreparedEgress>, HostError> {
        let proxy_url = match self.lock().endpoints.get(backend) {
            None => return Ok(None),
            Some(Endpoint::InProcess) => None,
            Some(Endpoint::Proxy { proxy_url, .. }) => Some(proxy_url.clone()),
        };
        let session_ctx = self.context_for(session);
        let Some(proxy_url) = proxy_url else {
            return Ok(Some(PreparedEgress {
                backend: backend.to_owned(),
                session: session_ctx,
                ca: None,
                in_process: true,
            }));
        };
        let ca = SandboxCa::generate(session.id.as_str()).map_err(|e| {
            HostError::with_source(format!("egress CA for session {}", session.id), e)
        })?;
        let ca = Arc::new(ca);
        spec.egress = Some(EgressEndpoint {
            proxy_url,
            ca_cert_pem: Some(ca.cert_pem().to_owned()),
        });
        Ok(Some(PreparedEgress {
            backend: backend.to_owned(),
            session: session_ctx,
            ca: Some(ca),
            in_process: false,
        }))
    }

    /// After the sandbox was created, before anything runs in it: register it with the proxy.
    /// On error the caller must destroy the sandbox (it would have no egress).
    pub async fn attach(
        &self,
        prepared: PreparedEgress,
        sandbox: &dyn Sandbox,
    ) -> Result<(), HostError> {
        let id = sandbox.id().as_str().to_owned();
        let mut identity = SandboxIdentity::new(id.clone(), prepared.session.clone());
        let (addr, client) = if prepared.in_process {
            (None, Some(self.proxy.in_process(identity)))
        } else {
            let addr = sandbox
                .network_address()
                .await
                .map_err(|e| {
                    HostError::with_source(format!("reading the address of sandbox {id}"), e)
                })?
                .ok_or_else(|| {
                    HostError::new(format!(
                        "sandbox {id} on backend {} has no network address for the egress proxy",
                        prepared.backend
                    ))
                })?;
            if let Some(ca) = prepared.ca {
                identity = identity.with_ca(ca);
            }
            self.proxy
                .registry()
                .register(addr, identity)
                .map_err(|e| HostError::with_source(format!("registering sandbox {id}"), e))?;
            (Some(addr), None)
        };
        tracing::info!(
            sandbox = %id,
            session_id = %prepared.session.session_id,
            address = ?addr,
            "sandbox attached to the egress proxy"
        );
        self.lock().sandboxes.insert(
            id.clone(),
            Attached {
                session: prepared.session,
                addr,
                client,
                recorded: None,
            },
        );
        self.record_policy(&id).await;
        Ok(())
    }

    /// A warm sandbox of `backend` is reused for `session`: pass the session's current context
    /// on. `false` when the backend has egress but this sandbox is not attached (re-adopted
    /// after a restart: its CA and endpoint belong to the previous process): retire it.
    pub async fn refresh(&self, backend: &str, sandbox: &dyn Sandbox, session: &Session) -> bool {
        let ctx = self.context_for(session);
        let update = {
            let mut st = self.lock();
            if !st.endpoints.contains_key(backend) {
                return true;
            }
            let Some(a) = st.sandboxes.get_mut(sandbox.id().as_str()) else {
                return false;
            };
            a.session = ctx.clone();
            a.addr
        };
        match update {
            Some(addr) => {
                if !self.proxy.registry().update_session(addr, ctx.clone()) {
                    return false;
                }
            }
            None => {
                // In-process clients carry a fixed identity: a new one carries the new context.
                let client = self
                    .proxy
                    .in_process(SandboxIdentity::new(sandbox.id().as_str(), ctx));
                if let Some(a) = self.lock().sandboxes.get_mut(sandbox.id().as_str()) {
                    a.client = Some(client);
                }
            }
        }
        self.record_policy(sandbox.id().as_str()).await;
        true
    }

    /// Before the sandbox is destroyed: forget it (its connections are refused from their
    /// next request).
    pub fn detach(&self, sandbox_id: &str) {
        let removed = self.lock().sandboxes.remove(sandbox_id);
        if removed.is_some() {
            self.proxy.registry().unregister_sandbox(sandbox_id);
            tracing::debug!(
                sandbox = sandbox_id,
                "sandbox detached from the egress proxy"
            );
        }
    }

    /// The in-process client of an attached isolate sandbox.
    pub fn client(&self, sandbox_id: &str) -> Option<InProcessClient> {
        self.lock()
            .sandboxes
            .get(sandbox_id)
            .and_then(|a| a.client.clone())
    }

    /// The identity an attached sandbox is known by (for custom tools acting on its behalf).
    pub fn identity(&self, sandbox_id: &str) -> Option<SandboxIdentity> {
        self.lock()
            .sandboxes
            .get(sandbox_id)
            .map(|a| SandboxIdentity::new(sandbox_id, a.session.clone()))
    }

    /// Bounds of in-process `fetch` calls.
    pub fn fetch_limits(&self) -> FetchLimits {
        self.fetch
    }

    /// Resolve the sandbox's policy now and record it when it changed (log, state store).
    async fn record_policy(&self, sandbox_id: &str) {
        let Some(ctx) = self
            .lock()
            .sandboxes
            .get(sandbox_id)
            .map(|a| a.session.clone())
        else {
            return;
        };
        let (policy_id, fingerprint) = match self.proxy.policies().select(&ctx).await {
            Ok(sel) => (
                sel.policy.id().to_owned(),
                sel.policy.fingerprint().to_string(),
            ),
            Err(e) => {
                // The proxy refuses every request of this session until it resolves again.
                tracing::warn!(sandbox = sandbox_id, session_id = %ctx.session_id, error = %e, "egress policy resolution failed; the session's requests are refused");
                return;
            }
        };
        {
            let mut st = self.lock();
            let Some(a) = st.sandboxes.get_mut(sandbox_id) else {
                return;
            };
            let now = (policy_id.clone(), fingerprint.clone());
            if a.recorded.as_ref() == Some(&now) {
                return;
            }
            a.recorded = Some(now);
        }
        tracing::info!(sandbox = sandbox_id, session_id = %ctx.session_id, policy = %policy_id, fingerprint = %fingerprint, "egress policy");
        #[cfg(feature = "store")]
        if let Some(store) = &self.store
            && let Err(e) = super::egress_record::record_policy(
                store.as_ref(),
                &ctx.session_id,
                &policy_id,
                &fingerprint,
            )
            .await
        {
            tracing::warn!(session_id = %ctx.session_id, error = %e, "recording the egress policy failed");
        }
    }

    /// Re-resolve every attached sandbox's policy whenever the proxy's policy source changes,
    /// recording new fingerprints, until the returned task is aborted. `None` when the source
    /// never changes.
    pub fn watch_policies(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let mut changes = self.proxy.policies().changes()?;
        let this = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(this) = this.upgrade() else { return };
                let ids: Vec<String> = this.lock().sandboxes.keys().cloned().collect();
                for id in ids {
                    this.record_policy(&id).await;
                }
            }
        }))
    }

    /// Stop the proxy: close its listeners, connections and tunnels.
    pub fn shutdown(&self) {
        self.proxy.shutdown();
    }
}
