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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cma_sandbox::{Mount, Sandbox, SandboxBackend, SandboxSpec};
use tokio::time::Instant;

use super::host_builder::SandboxHostBuilder;
use super::record::{SessionChange, StateRecorder, Status, events};
use super::select::{BackendSelector, Placement, SandboxProfile};
use super::warm::WarmPool;
use crate::control::snapshots::{SnapshotRetention, WorkspaceSnapshots};
use crate::protocol::{Session, SessionId, SessionStatus, Work, WorkId};
use crate::runner::lease::LeaseEnd;
use crate::runner::memory::memory_mounts;
use crate::runner::session::{HostError, SessionHost, ToolExecutor};

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

/// What [`SandboxHost::recover`] did.
#[cfg(feature = "store")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Sandboxes found alive and kept warm for their session's next work item.
    pub readopted: usize,
    /// Sandboxes destroyed because no live session points at them any more.
    pub destroyed: usize,
    /// Recorded sandboxes that no longer existed in their backend (now forgotten).
    pub missing: usize,
    /// Sessions recorded as placed or running whose work item ended with the previous process.
    pub interrupted: usize,
    /// Sandboxes whose backend failed to resume or destroy them (kept, tried again next time).
    pub failed: usize,
    /// Sandboxes a backend still had that the state store did not know (e.g. created just
    /// before a crash, before they were recorded): destroyed.
    pub orphans: usize,
}

/// A [`SessionHost`] over named sandbox backends.
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

    /// Apply `policy` to the snapshot store (set with [`SandboxHost::with_snapshots`] first) on
    /// the control plane's maintenance passes: every `policy.interval`, snapshots the policy
    /// does not keep are deleted and then the chunks no snapshot uses any more. Refused when the
    /// host has no snapshot store, the store cannot apply retention, or the policy is invalid.
    pub fn with_snapshot_retention(mut self, policy: SnapshotRetention) -> Result<Self, HostError> {
        policy.validate()?;
        match &self.snapshots {
            None => {
                return Err(HostError::new(
                    "snapshot retention needs a snapshot store (call with_snapshots first)",
                ));
            }
            Some(store) if !store.supports_retention() => {
                return Err(HostError::new(
                    "this snapshot store does not implement retention",
                ));
            }
            Some(_) => {}
        }
        self.retention = Some(policy);
        Ok(self)
    }

    /// How many snapshot housekeeping passes (retention, then chunk collection) have run.
    pub fn housekeeping_passes(&self) -> u64 {
        self.housekeeping_passes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Run snapshot housekeeping if it is due; when it is due next.
    async fn housekeep_if_due(&self) -> Option<Instant> {
        let (Some(policy), Some(store)) = (&self.retention, &self.snapshots) else {
            return None;
        };
        // Another pass is running (a second plane over this host): it sets the next time.
        let mut next = self.next_housekeeping.try_lock().ok()?;
        if let Some(due) = *next
            && due > Instant::now()
        {
            return Some(due);
        }
        match store.housekeep(policy).await {
            Ok(report) => tracing::info!(?report, "snapshot retention and chunk collection done"),
            Err(e) => {
                tracing::warn!(error = %e, "snapshot housekeeping failed; trying again at the next interval")
            }
        }
        self.housekeeping_passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let due = Instant::now() + policy.interval;
        *next = Some(due);
        Some(due)
    }

    /// Keep sessions' workspaces across sandboxes: save a snapshot when a session's work item
    /// ends, and restore the newest good one into every fresh sandbox of a session that has one
    /// (a warm sandbox is reused as it is). A failed save is logged and the sandbox kept warm; a
    /// session whose snapshots all fail to restore is not placed (its item fails and is
    /// released) rather than run on an empty workspace.
    #[must_use]
    pub fn with_snapshots(mut self, snapshots: Arc<dyn WorkspaceSnapshots>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Snapshot the session's sandbox now (running or warm); `Ok(None)` when the host has no
    /// sandbox for it or no snapshot store.
    pub async fn snapshot_session(&self, session_id: &str) -> Result<Option<String>, HostError> {
        let Some(store) = &self.snapshots else {
            return Ok(None);
        };
        let sandbox = lock(&self.open)
            .values()
            .find(|p| p.session_id.as_str() == session_id)
            .map(|p| p.sandbox.clone())
            .or_else(|| {
                lock(&self.warm)
                    .peek(&SessionId::from(session_id))
                    .map(|p| p.sandbox.clone())
            });
        match sandbox {
            Some(sb) => {
                let id = store.save(session_id, sb.as_ref()).await?;
                self.state.snapshot_saved(session_id, &id).await;
                Ok(Some(id))
            }
            None => Ok(None),
        }
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

    /// Destroy warm sandboxes whose keep-warm time is over; returns how many were destroyed.
    /// The control plane calls it through [`SessionHost::maintain`] at each sandbox's deadline
    /// (and placement calls it too); a host without a plane calls it itself.
    pub async fn reap_expired(&self) -> usize {
        let expired = lock(&self.warm).take_expired(Instant::now().into_std());
        let n = expired.len();
        for (_, placed) in expired {
            self.dispose(placed).await;
        }
        n
    }

    /// Destroy every warm sandbox (shutdown).
    pub async fn destroy_all_warm(&self) {
        let all = lock(&self.warm).drain();
        for (_, placed) in all {
            self.dispose(placed).await;
        }
    }

    async fn dispose(&self, placed: Placed) {
        let Some(backend) = self.backends.get(&placed.backend) else {
            return;
        };
        let id = placed.sandbox.id().as_str();
        // Before the container goes: its address may be handed to the next sandbox.
        #[cfg(feature = "egress")]
        if let Some(egress) = &self.egress {
            egress.detach(id);
        }
        let destroyed = match crate::runner::panics::catch(backend.destroy(placed.sandbox.id()))
            .await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(sandbox = id, error = %e, "destroying a sandbox failed");
                e.kind() == cma_sandbox::SandboxErrorKind::NotFound
            }
            Err(message) => {
                tracing::error!(sandbox = id, panic = %message, "destroying a sandbox panicked");
                false
            }
        };
        for dir in &placed.host_dirs {
            if let Err(e) = tokio::fs::remove_dir_all(dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "removing a memory mount directory failed");
            }
        }
        if !destroyed {
            // Still recorded: `recover` tries again on the next start.
            return;
        }
        self.state.sandbox_gone(&placed.backend, id).await;
        self.state
            .session(SessionChange {
                session_id: placed.session_id.as_str(),
                backend: &placed.backend,
                sandbox_id: None,
                work_id: None,
                status: Status::Sleeping,
                event: events::SANDBOX_DESTROYED,
                detail: id,
            })
            .await;
    }

    async fn record_kept_warm(&self, placed: &Placed, detail: &str) {
        self.state
            .session(SessionChange {
                session_id: placed.session_id.as_str(),
                backend: &placed.backend,
                sandbox_id: Some(placed.sandbox.id().as_str()),
                work_id: None,
                status: Status::Idle,
                event: events::SANDBOX_KEPT_WARM,
                detail,
            })
            .await;
    }

    /// Pick up after a restart from the state store (a no-op without one). Call it once, before the
    /// control plane starts claiming work (nothing enforces this).
    ///
    /// In this order:
    /// 1. Every session recorded as placed or running lost its work item with the previous
    ///    process: it is marked sleeping (event `interrupted`) and keeps its recorded sandbox.
    /// 2. For each backend registered with this host (in name order), each sandbox the store
    ///    records for it: when the record's session exists, is not terminated and still points at
    ///    this sandbox on this backend, the sandbox is resumed and kept warm for the session's next
    ///    item as if its item had just ended (session idle; past `max_warm` the oldest warm
    ///    sandbox is destroyed). Every other recorded sandbox is destroyed. A sandbox the backend
    ///    no longer has (or whose recorded id is invalid) is forgotten, and its session, if it
    ///    wanted it, marked sleeping. One the backend fails to resume or destroy stays recorded and
    ///    is tried again on the next call. Records of backends not registered here are untouched.
    ///    Memory-mount directories of the previous process are not recorded: they stay on disk.
    /// 3. Every sandbox a registered backend still lists that the store does not record is an
    ///    orphan and is destroyed: also sandboxes of another control plane that shares the backend
    ///    (the same isolate root directory, the same Docker `instance`), so give each plane its
    ///    own. A backend whose `list` fails is skipped.
    ///
    /// A failure to read the store fails the call (what was done before stays done); a backend's
    /// failures are logged and counted in [`RecoveryReport::failed`].
    #[cfg(feature = "store")]
    pub async fn recover(&self) -> Result<RecoveryReport, HostError> {
        use cma_sandbox::{SandboxErrorKind, SandboxId};
        use cma_store::state::{MAX_PAGE_LEN, SessionQuery, SessionStatus};

        let mut report = RecoveryReport::default();
        let Some(store) = self.state.store.clone() else {
            return Ok(report);
        };
        let failed = |what: &'static str| {
            move |e: cma_store::state::StateError| {
                HostError::with_source(format!("recovering from the state store: {what}"), e)
            }
        };

        for status in [SessionStatus::Placed, SessionStatus::Running] {
            let mut after = None;
            loop {
                let page = store
                    .list_sessions(&SessionQuery {
                        status: Some(status),
                        after: after.take(),
                        limit: MAX_PAGE_LEN,
                    })
                    .await
                    .map_err(failed("listing sessions"))?;
                let Some(last) = page.last() else { break };
                after = Some(last.session_id.clone());
                for session in &page {
                    self.state
                        .session(SessionChange {
                            session_id: &session.session_id,
                            backend: &session.backend,
                            sandbox_id: None,
                            work_id: None,
                            status: Status::Sleeping,
                            event: events::INTERRUPTED,
                            detail: status.as_str(),
                        })
                        .await;
                    report.interrupted += 1;
                }
            }
        }

        let mut names: Vec<&String> = self.backends.keys().collect();
        names.sort();
        for name in names {
            let backend = &self.backends[name];
            let records = all_sandbox_records(store.as_ref(), name)
                .await
                .map_err(failed("listing sandboxes"))?;
            for record in records {
                let session = match &record.session_id {
                    Some(id) => store
                        .get_session(id)
                        .await
                        .map_err(failed("reading a session"))?,
                    None => None,
                };
                let wanted = session.as_ref().filter(|s| {
                    s.status != SessionStatus::Terminated
                        && s.backend == record.backend
                        && s.sandbox_id.as_deref() == Some(record.sandbox_id.as_str())
                });
                let Ok(id) = SandboxId::parse(record.sandbox_id.as_str()) else {
                    self.state.sandbox_gone(name, &record.sandbox_id).await;
                    report.missing += 1;
                    continue;
                };
                match wanted {
                    Some(session) => match backend.resume(&id).await {
                        // Its workspace was being restored when the previous process stopped:
                        // never reuse it half-written; the session restores afresh.
                        Ok(sandbox)
                            if cma_store::snapshot::restore_unfinished(sandbox.as_ref())
                                .await
                                .unwrap_or(false) =>
                        {
                            tracing::warn!(backend = %name, sandbox = id.as_str(), "a recorded sandbox holds an unfinished restore; destroying it");
                            match backend.destroy(&id).await {
                                Ok(()) => {
                                    self.state.sandbox_gone(name, id.as_str()).await;
                                    report.destroyed += 1;
                                }
                                Err(e) if e.kind() == SandboxErrorKind::NotFound => {
                                    self.state.sandbox_gone(name, id.as_str()).await;
                                    report.missing += 1;
                                }
                                Err(e) => {
                                    tracing::warn!(backend = %name, sandbox = id.as_str(), error = %e, "destroying a recorded sandbox failed; trying again on the next start");
                                    report.failed += 1;
                                }
                            }
                        }
                        Ok(sandbox) => {
                            let placed = Placed {
                                backend: name.clone(),
                                profile: None,
                                sandbox,
                                // Memory mount directories of the previous process are not
                                // recorded; the restored session gets fresh ones on its next item.
                                host_dirs: Vec::new(),
                                session_id: SessionId::from(session.session_id.clone()),
                            };
                            self.state
                                .session(SessionChange {
                                    session_id: &session.session_id,
                                    backend: name,
                                    sandbox_id: Some(id.as_str()),
                                    work_id: None,
                                    status: Status::Idle,
                                    event: events::SANDBOX_READOPTED,
                                    detail: id.as_str(),
                                })
                                .await;
                            let evicted = lock(&self.warm).put(
                                placed.session_id.clone(),
                                placed,
                                Instant::now().into_std(),
                                self.config.keep_warm,
                            );
                            for p in evicted {
                                self.dispose(p).await;
                            }
                            report.readopted += 1;
                        }
                        Err(e) if e.kind() == SandboxErrorKind::NotFound => {
                            self.state.sandbox_gone(name, id.as_str()).await;
                            self.state
                                .session(SessionChange {
                                    session_id: &session.session_id,
                                    backend: name,
                                    sandbox_id: None,
                                    work_id: None,
                                    status: Status::Sleeping,
                                    event: events::SANDBOX_MISSING,
                                    detail: id.as_str(),
                                })
                                .await;
                            report.missing += 1;
                        }
                        Err(e) => {
                            tracing::warn!(backend = %name, sandbox = id.as_str(), error = %e, "resuming a recorded sandbox failed; trying again on the next start");
                            report.failed += 1;
                        }
                    },
                    None => match backend.destroy(&id).await {
                        Ok(()) => {
                            self.state.sandbox_gone(name, id.as_str()).await;
                            report.destroyed += 1;
                        }
                        Err(e) if e.kind() == SandboxErrorKind::NotFound => {
                            self.state.sandbox_gone(name, id.as_str()).await;
                            report.missing += 1;
                        }
                        Err(e) => {
                            tracing::warn!(backend = %name, sandbox = id.as_str(), error = %e, "destroying a recorded sandbox failed; trying again on the next start");
                            report.failed += 1;
                        }
                    },
                }
            }
        }
        // Whatever a backend still runs that the store does not know is an orphan: destroy it,
        // so nothing is left running that the state store does not account for.
        let mut names: Vec<&String> = self.backends.keys().collect();
        names.sort();
        for name in names {
            let backend = &self.backends[name];
            let known: std::collections::HashSet<String> =
                all_sandbox_records(store.as_ref(), name)
                    .await
                    .map_err(failed("listing sandboxes"))?
                    .into_iter()
                    .map(|r| r.sandbox_id)
                    .collect();
            let live = match backend.list().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e, "listing a backend's sandboxes failed; orphans are swept on the next start");
                    continue;
                }
            };
            for info in live {
                if known.contains(info.id.as_str()) {
                    continue;
                }
                match backend.destroy(&info.id).await {
                    Ok(()) => report.orphans += 1,
                    Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(backend = %name, sandbox = info.id.as_str(), error = %e, "destroying an orphan sandbox failed");
                        report.failed += 1;
                    }
                }
            }
        }
        tracing::info!(?report, "recovered from the state store");
        Ok(report)
    }

    /// Host directories and mounts for the session's memory folders outside the workdir.
    async fn memory_mounts(
        &self,
        session: &Session,
    ) -> Result<(Vec<Mount>, Vec<PathBuf>), HostError> {
        let Some(base) = &self.config.memory_dir else {
            return Ok((Vec::new(), Vec::new()));
        };
        let workdir = self.config.sandbox_workdir.trim_end_matches('/');
        let mounts = memory_mounts(session, workdir).unwrap_or_default();
        let mut out = Vec::new();
        let mut dirs = Vec::new();
        for m in mounts {
            if m.root == workdir || m.root.starts_with(&format!("{workdir}/")) {
                continue;
            }
            let dir = base.join(format!("mem-{}", uuid::Uuid::new_v4().simple()));
            if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                for d in &dirs {
                    let _ = tokio::fs::remove_dir_all(d).await;
                }
                return Err(HostError::with_source(
                    format!("creating the host directory of memory store {}", m.store_id),
                    e,
                ));
            }
            out.push(Mount::new(m.root.clone(), dir.clone()));
            dirs.push(dir);
        }
        Ok((out, dirs))
    }

    async fn place(&self, work: &Work, session: &Session) -> Result<Placed, HostError> {
        let profile = self.selector.select(&Placement { work, session });
        let name = profile.backend.clone();
        let backend = self.backends.get(&name).ok_or_else(|| {
            HostError::new(format!("no sandbox backend named {name:?} is registered"))
        })?;
        profile
            .validate("the selected sandbox profile", None)
            .map_err(|e| HostError::with_source(format!("placing session {}", session.id), e))?;
        let now = Instant::now().into_std();
        let warm = lock(&self.warm).take(&session.id, now);
        if let Some(placed) = warm {
            let same =
                placed.backend == name && placed.profile.as_ref().is_none_or(|p| *p == profile);
            #[cfg(feature = "egress")]
            let same = same
                && match &self.egress {
                    Some(egress) => {
                        egress
                            .refresh(&name, placed.sandbox.as_ref(), session)
                            .await
                    }
                    None => true,
                };
            if same {
                tracing::debug!(session_id = %session.id, sandbox = placed.sandbox.id().as_str(), "reusing the session's warm sandbox");
                self.state
                    .session(SessionChange {
                        session_id: session.id.as_str(),
                        backend: &name,
                        sandbox_id: Some(placed.sandbox.id().as_str()),
                        work_id: Some(work.id.as_str()),
                        status: Status::Placed,
                        event: events::SANDBOX_REUSED,
                        detail: placed.sandbox.id().as_str(),
                    })
                    .await;
                return Ok(placed);
            }
            // The rule now picks another backend or profile: retire the old sandbox.
            self.dispose(placed).await;
        }
        let mut spec = self.config.spec.clone();
        profile.apply(&mut spec);
        spec.session_id = Some(session.id.to_string());
        spec.environment_id = Some(work.environment_id.to_string());
        spec.labels
            .insert(LABEL_SESSION.into(), session.id.to_string());
        spec.labels
            .insert(LABEL_ENVIRONMENT.into(), work.environment_id.to_string());
        spec.labels.insert(LABEL_MANAGED.into(), "true".into());
        #[cfg(feature = "egress")]
        let prepared = match &self.egress {
            Some(egress) => egress.prepare(&name, session, &mut spec)?,
            None => None,
        };
        let (mounts, host_dirs) = self.memory_mounts(session).await?;
        spec.mounts.extend(mounts);
        let sandbox = match backend.create(&spec).await {
            Ok(s) => s,
            Err(e) => {
                for d in &host_dirs {
                    let _ = tokio::fs::remove_dir_all(d).await;
                }
                return Err(HostError::with_source(
                    format!("creating a {name} sandbox for session {}", session.id),
                    e,
                ));
            }
        };
        tracing::info!(session_id = %session.id, backend = %name, sandbox = sandbox.id().as_str(), "sandbox created");
        self.state
            .sandbox_exists(&name, sandbox.id().as_str(), Some(session.id.as_str()))
            .await;
        self.state
            .session(SessionChange {
                session_id: session.id.as_str(),
                backend: &name,
                sandbox_id: Some(sandbox.id().as_str()),
                work_id: Some(work.id.as_str()),
                status: Status::Placed,
                event: events::SANDBOX_CREATED,
                detail: sandbox.id().as_str(),
            })
            .await;
        let mut placed = Placed {
            backend: name,
            profile: Some(profile),
            session_id: session.id.clone(),
            sandbox,
            host_dirs,
        };
        // Registered before the first command runs in it (nothing has yet: only `create`).
        #[cfg(feature = "egress")]
        if let (Some(egress), Some(prepared)) = (&self.egress, prepared)
            && let Err(e) = egress.attach(prepared, placed.sandbox.as_ref()).await
        {
            self.dispose(placed).await;
            return Err(e);
        }
        if let Some(store) = &self.snapshots {
            match store
                .wake_latest(session.id.as_str(), placed.sandbox.clone())
                .await
            {
                Ok(Some((id, sandbox))) => {
                    tracing::info!(session_id = %session.id, snapshot = %id, "workspace restored (the rest of it in the background)");
                    placed.sandbox = sandbox;
                }
                Ok(None) => {}
                Err(e) => {
                    self.dispose(placed).await;
                    return Err(e);
                }
            }
        }
        Ok(placed)
    }
}

#[async_trait]
impl SessionHost for SandboxHost {
    async fn open(
        &self,
        work: &Work,
        session: &Session,
    ) -> Result<Arc<dyn ToolExecutor>, HostError> {
        self.reap_expired().await;
        let placed = self.place(work, session).await?;
        // A factory that panics is a factory that failed: the sandbox it was given is kept,
        // never lost between "open" and "warm".
        let built = crate::runner::panics::catch(self.factory.executor(
            placed.sandbox.clone(),
            work,
            session,
        ))
        .await
        .unwrap_or_else(|message| {
            Err(HostError::new(format!(
                "the tool executor factory panicked: {message}"
            )))
        });
        let executor = match built {
            Ok(e) => e,
            Err(e) => {
                // Keep the sandbox for a retry of the session rather than losing its files.
                self.record_kept_warm(&placed, "the tool executor could not be built")
                    .await;
                let evicted = lock(&self.warm).put(
                    session.id.clone(),
                    placed,
                    Instant::now().into_std(),
                    self.config.keep_warm,
                );
                for p in evicted {
                    self.dispose(p).await;
                }
                return Err(e);
            }
        };
        self.state
            .session(SessionChange {
                session_id: session.id.as_str(),
                backend: &placed.backend,
                sandbox_id: Some(placed.sandbox.id().as_str()),
                work_id: Some(work.id.as_str()),
                status: Status::Running,
                event: "running",
                detail: work.id.as_str(),
            })
            .await;
        lock(&self.open).insert(work.id.clone(), placed);
        Ok(executor)
    }

    async fn close(&self, work: &Work, session: &Session, end: &LeaseEnd) {
        let Some(placed) = lock(&self.open).remove(&work.id) else {
            return;
        };
        if end.hands_over_session() || session.status == SessionStatus::Terminated {
            // Another worker may own the session now, or it is over: its sandbox is nobody's
            // next state, so it is neither kept warm nor saved as the newest snapshot.
            tracing::info!(session_id = %session.id, reason = ?end, status = ?session.status, "destroying the sandbox (lease lost or session over)");
            self.dispose(placed).await;
            return;
        }
        if let Some(store) = &self.snapshots {
            let saved = crate::runner::panics::catch(
                store.save(session.id.as_str(), placed.sandbox.as_ref()),
            )
            .await;
            let saved = match saved {
                Ok(saved) => saved,
                Err(message) => {
                    // A sandbox that panics while being read is not worth keeping.
                    tracing::error!(session_id = %session.id, panic = %message, "saving the workspace panicked; destroying the sandbox");
                    self.dispose(placed).await;
                    return;
                }
            };
            match saved {
                Ok(id) => {
                    tracing::info!(session_id = %session.id, snapshot = %id, "workspace saved");
                    self.state.snapshot_saved(session.id.as_str(), &id).await;
                }
                Err(e) => {
                    tracing::warn!(session_id = %session.id, error = %e, "saving the workspace failed; the sandbox stays warm")
                }
            }
        }
        tracing::debug!(session_id = %session.id, reason = ?end, "keeping the sandbox warm");
        self.record_kept_warm(&placed, &format!("{end:?}")).await;
        let evicted = lock(&self.warm).put(
            session.id.clone(),
            placed,
            Instant::now().into_std(),
            self.config.keep_warm,
        );
        for p in evicted {
            self.dispose(p).await;
        }
    }

    async fn on_webhook(&self, event: &crate::webhook::WebhookEvent) {
        #[cfg(feature = "egress")]
        if let (Some(egress), Some(session_id)) = (&self.egress, event.data.session_id())
            && let Ok(serde_json::Value::Object(data)) = serde_json::to_value(&event.data)
        {
            egress.observe_webhook(session_id.as_str(), data).await;
        }
        #[cfg(not(feature = "egress"))]
        let _ = event;
    }

    async fn session_ended(&self, session_id: &SessionId) {
        let warm = lock(&self.warm).remove(session_id);
        if let Some(placed) = warm {
            tracing::info!(session_id = %session_id, sandbox = placed.sandbox.id().as_str(), "session over; destroying its warm sandbox");
            self.dispose(placed).await;
        }
    }

    /// Destroy warm sandboxes whose keep-warm time is over, run snapshot housekeeping when it
    /// is due; the next time either is due.
    async fn maintain(&self) -> Option<Instant> {
        self.reap_expired().await;
        let housekeeping = self.housekeep_if_due().await;
        let warm = lock(&self.warm).next_deadline().map(Instant::from_std);
        warm.into_iter().chain(housekeeping).min()
    }
}

/// Every sandbox record of `backend`, page by page.
#[cfg(feature = "store")]
async fn all_sandbox_records(
    store: &dyn cma_store::state::StateStore,
    backend: &str,
) -> Result<Vec<cma_store::state::SandboxRecord>, cma_store::state::StateError> {
    let mut query = cma_store::state::SandboxQuery::backend(backend);
    let mut all = Vec::new();
    loop {
        let page = store.list_sandboxes(&query).await?;
        let Some(last) = page.last() else {
            return Ok(all);
        };
        query = query.after(last);
        all.extend(page);
    }
}
