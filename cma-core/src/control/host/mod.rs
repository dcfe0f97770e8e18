//! [`SandboxHost`]: places each session in a sandbox of the backend and profile (image, limits,
//! env) a [`BackendSelector`] picks, reuses a warm sandbox for the session's next item, and
//! disposes of expired ones when the control plane runs its maintenance
//! ([`SessionHost::maintain`]), along with snapshot retention.
//!
//! What runs inside the sandbox is decided by an [`ExecutorFactory`] (the agent toolset over the
//! sandbox, plus custom tools); the host only manages sandboxes.
//!
//! With a state store (feature `store`, `SandboxHost::state_store`) the host records every
//! sandbox it creates or destroys and every session transition (placed, running, idle with the
//! sandbox kept warm, sleeping once the sandbox is destroyed), and `SandboxHost::recover` picks
//! up after a restart.
//!
//! The host's parts, one file each: `place` (reusing a warm sandbox or creating one),
//! `session_host` (the [`SessionHost`] the runner calls), `dispose` (reaping and destroying
//! sandboxes), `workspaces` (snapshots and their retention) and `recover` (restart recovery).
//!
//! [`SessionHost`]: crate::runner::session::SessionHost
//! [`SessionHost::maintain`]: crate::runner::session::SessionHost::maintain

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
use tokio::time::Instant;

use super::host_builder::SandboxHostBuilder;
use super::record::StateRecorder;
use super::select::{BackendSelector, SandboxProfile};
use super::warm::WarmPool;
use crate::control::snapshots::{SnapshotRetention, WorkspaceSnapshots};
use crate::protocol::{Session, SessionId, Work, WorkId};
use crate::runner::session::{HostError, ToolExecutor};

/// Label keys the host puts on every sandbox it creates.
pub const LABEL_SESSION: &str = "cma.session_id";
/// Label with the environment id.
pub const LABEL_ENVIRONMENT: &str = "cma.environment_id";
/// Label marking sandboxes made by a cma control plane (for janitors).
pub const LABEL_MANAGED: &str = "cma.managed";

/// Builds the tool executor for a session placed in a sandbox.
#[async_trait]
pub trait ExecutorFactory: Send + Sync {
    /// The executor of `session`'s tool calls inside `sandbox`.
    async fn executor(
        &self,
        sandbox: Arc<dyn Sandbox>,
        work: &Work,
        session: &Session,
    ) -> Result<Arc<dyn ToolExecutor>, HostError>;
}

/// Host settings.
#[derive(Debug, Clone)]
pub struct SandboxHostConfig {
    /// How long a session's sandbox stays warm after its work item ends.
    pub keep_warm: Duration,
    /// At most this many warm sandboxes (the oldest is destroyed first).
    pub max_warm: usize,
    /// Template for new sandboxes (session/environment ids and labels are filled in).
    pub spec: SandboxSpec,
    /// Host directory under which each new sandbox gets an empty directory per memory store of
    /// its session whose folder lies outside the sandbox workdir (a `mount_path` such as
    /// `/mnt/memory/notes`), mounted there read-write ([`cma_sandbox::Mount`]) so the runner can
    /// download the store into it. For backends that mount host directories (isolate, Docker);
    /// `None` (default) adds no mounts: the backend must then make those paths writable itself.
    /// The directories are removed with the sandbox.
    pub memory_dir: Option<PathBuf>,
    /// The sandbox workdir assumed when deciding which memory folders need a mount (default
    /// `/workspace`, the isolate backend's).
    pub sandbox_workdir: String,
}

impl Default for SandboxHostConfig {
    fn default() -> Self {
        Self {
            keep_warm: Duration::from_secs(180),
            max_warm: 1024,
            spec: SandboxSpec::new(),
            memory_dir: None,
            sandbox_workdir: "/workspace".to_owned(),
        }
    }
}

#[derive(Clone)]
struct Placed {
    backend: String,
    /// The profile the sandbox was made with; `None` for a sandbox re-adopted after a restart
    /// (reused by any profile of the same backend).
    profile: Option<SandboxProfile>,
    sandbox: Arc<dyn Sandbox>,
    /// Host directories made for memory mounts, removed with the sandbox.
    host_dirs: Vec<PathBuf>,
    session_id: SessionId,
}

/// A [`SessionHost`] over named sandbox backends.
///
/// [`SessionHost`]: crate::runner::session::SessionHost
pub struct SandboxHost {
    backends: HashMap<String, Arc<dyn SandboxBackend>>,
    selector: Arc<dyn BackendSelector>,
    factory: Arc<dyn ExecutorFactory>,
    config: SandboxHostConfig,
    warm: Mutex<WarmPool<SessionId, Placed>>,
    open: Mutex<HashMap<WorkId, Placed>>,
    state: StateRecorder,
    snapshots: Option<Arc<dyn WorkspaceSnapshots>>,
    retention: Option<SnapshotRetention>,
    /// When snapshot housekeeping is due next (`None`: at the first maintenance pass); locked
    /// while a pass runs, so passes never overlap.
    next_housekeeping: tokio::sync::Mutex<Option<Instant>>,
    housekeeping_passes: std::sync::atomic::AtomicU64,
    /// Wires each sandbox to the egress proxy (feature `egress`).
    #[cfg(feature = "egress")]
    egress: Option<Arc<super::egress::SessionEgress>>,
}

impl std::fmt::Debug for SandboxHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHost")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod dispose;
mod place;
#[cfg(feature = "store")]
mod recover;
mod session_host;
mod workspaces;

#[cfg(feature = "store")]
pub use recover::RecoveryReport;

impl SandboxHost {
    /// Start building a host: add backends by value, then optionally a selector, the tools, the
    /// settings, snapshots and a state store ([`SandboxHostBuilder`]).
    pub fn builder() -> SandboxHostBuilder {
        SandboxHostBuilder::new()
    }

    /// A host with one backend, the official toolset and default settings: every session goes
    /// to `backend`. [`SandboxHost::builder`] does the rest.
    pub fn new(backend: impl SandboxBackend + 'static) -> Self {
        let name = backend.name().to_owned();
        Self::from_parts(
            [Arc::new(backend) as Arc<dyn SandboxBackend>],
            Arc::new(super::select::RuleSelector::new(name)),
            Arc::new(super::tools::ToolsetFactory::new()),
            SandboxHostConfig::default(),
        )
    }

    /// A host from shared parts: backends (keyed by [`SandboxBackend::name`]), selector, factory
    /// and settings. The builder is the friendlier way; this is for hosts that already hold
    /// each part behind an `Arc`.
    pub fn from_parts(
        backends: impl IntoIterator<Item = Arc<dyn SandboxBackend>>,
        selector: Arc<dyn BackendSelector>,
        factory: Arc<dyn ExecutorFactory>,
        config: SandboxHostConfig,
    ) -> Self {
        let backends = backends
            .into_iter()
            .map(|b| (b.name().to_owned(), b))
            .collect();
        let warm = Mutex::new(WarmPool::new(config.max_warm));
        Self {
            backends,
            selector,
            factory,
            config,
            warm,
            open: Mutex::new(HashMap::new()),
            state: StateRecorder::default(),
            snapshots: None,
            retention: None,
            next_housekeeping: tokio::sync::Mutex::new(None),
            housekeeping_passes: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "egress")]
            egress: None,
        }
    }

    /// Give each session's sandbox egress through `egress` (feature `egress`): the backends it
    /// serves get their endpoint (or in-process hook) at placement, the session's policy is
    /// resolved then, and the sandbox is detached before it is destroyed. A re-adopted sandbox
    /// of such a backend (after a restart) is replaced rather than reused: its CA and endpoint
    /// were the previous process's.
    #[cfg(feature = "egress")]
    #[must_use]
    pub fn with_egress(mut self, egress: Arc<super::egress::SessionEgress>) -> Self {
        self.egress = Some(egress);
        self
    }

    /// Record sandboxes and session transitions in `store` (see [`SandboxHost::recover`]).
    #[cfg(feature = "store")]
    pub fn state_store(mut self, store: Arc<dyn cma_store::state::StateStore>) -> Self {
        self.state.store = Some(store);
        self
    }

    /// The names of the host's backends, sorted.
    pub fn backend_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.backends.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of warm sandboxes.
    pub fn warm_count(&self) -> usize {
        lock(&self.warm).len()
    }
}
