//! Running one claimed work item: the lease, the session's event stream, tool dispatch and the
//! final force-stop (docs/protocol.md §5.3, §5.4).
//!
//! The runner does not know how tools run: it hands each call it owns to a [`ToolExecutor`]
//! (the control plane plugs in `cma-tools` over a sandbox). Every request goes through the typed
//! clients of [`crate::client`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{LeaseEnd, LeaseHandle, heartbeat_loop};
use super::memory::{MemoryConfig, MemoryError, SessionMemory, has_memory_stores, memory_mounts};
use super::skills::{SkillLimits, install_skills, remove_skills};
use super::state::{Action, CallKind, RunnerState, ToolCall};
use crate::client::{
    ApiError, Client, Credential, EnvironmentClient, HeartbeatParams, Helper, ListEventsParams,
    ReconnectPolicy, SessionClient, StreamItem, StreamParams,
};
use crate::protocol::{
    ContentBlock, EnvironmentId, SendEvent, Session, SessionId, SessionStatus, Work,
};
use crate::retry;

/// Outer bound on one tool call (§5.1 `TOOL_TIMEOUT`); strictly above bash's own 120 s default.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(150);
/// Idle grace after a turn ends (§5.1 `DEFAULT_MAX_IDLE`).
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(60);
/// Capacity of the dispatch queue (§5.3: FIFO, buffer 100).
pub const DISPATCH_QUEUE: usize = 100;

/// The result of one tool call, ready to post.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// Whether the call failed.
    pub is_error: bool,
    /// Non-empty content (§5.5: `(no output)` when the tool returned nothing).
    pub content: Vec<ContentBlock>,
}

impl ToolOutcome {
    /// A successful text result (`(no output)` when empty).
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            is_error: false,
            content: vec![ContentBlock::text(non_empty(text.into()))],
        }
    }

    /// A failed call with `text` as its message.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            is_error: true,
            content: vec![ContentBlock::text(non_empty(text.into()))],
        }
    }
}

fn non_empty(s: String) -> String {
    if s.is_empty() {
        "(no output)".to_owned()
    } else {
        s
    }
}

/// Executes the tool calls a runner owns.
#[async_trait]
pub trait ToolExecutor: Send + Sync {
    /// The tool names that run here. Calls of other names are left pending for another client
    /// (the split-client contract, §5.4): nothing is posted for them.
    fn tool_names(&self) -> Vec<String>;

    /// Run one call. The runner bounds it with its tool timeout.
    async fn execute(&self, call: &ToolCall) -> ToolOutcome;

    /// The session's run for this item is over: release per-session tool state (e.g. kill the
    /// persistent shell). Called once, after the last call.
    async fn close(&self) {}

    /// The sandbox the tools run in, when there is one: the runner writes the session's skills
    /// and memory stores into it (docs/protocol.md §5.3). Executors without one get no skills, and
    /// a session with memory stores fails on them.
    fn sandbox(&self) -> Option<Arc<dyn cma_sandbox::Sandbox>> {
        None
    }
}

/// Where a session's tools run for one work item: the control plane places the session (chooses a
/// backend, creates or resumes a sandbox, restores its workspace) in [`SessionHost::open`] and
/// tidies up (snapshot, keep warm, destroy) in [`SessionHost::close`].
#[async_trait]
pub trait SessionHost: Send + Sync {
    /// Prepare the session for this item and return the executor of its tool calls.
    async fn open(
        &self,
        work: &Work,
        session: &Session,
    ) -> Result<Arc<dyn ToolExecutor>, HostError>;

    /// The item's run ended (its tool calls are finished); `end` says why. `session` is the
    /// session as the item last saw it: its `status` is `terminated` when the event stream
    /// reported it terminated or deleted. After a lost lease ([`LeaseEnd::LeaseLost`],
    /// [`LeaseEnd::AssumedLost`]) another worker may own the session, and a terminated session
    /// is over: a host must then neither keep the sandbox for the session's next item nor save
    /// it as the session's newest state ([`LeaseEnd::hands_over_session`]).
    async fn close(&self, work: &Work, session: &Session, end: &LeaseEnd);

    /// The session is over (terminated or deleted, seen by a work item or a webhook): release
    /// whatever the host still keeps for it (e.g. a warm sandbox). Default: nothing.
    async fn session_ended(&self, _session_id: &SessionId) {}

    /// Housekeeping the control plane runs for the host while it runs (release warm sandboxes
    /// whose keep-warm time is over, apply snapshot retention, …), so no duty is left to the
    /// host's own timers. Returns when the host wants to be called next; `None` means "not
    /// before something changes" (the plane also calls it after every item and at least every
    /// [`ControlPlaneConfig::maintenance_interval`](crate::control::plane::ControlPlaneConfig::maintenance_interval)).
    /// Default: nothing to do.
    async fn maintain(&self) -> Option<tokio::time::Instant> {
        None
    }
}

/// A host could not place a session.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    /// What failed, with context.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HostError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and a cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A host that runs every session's tools on one executor (tests, single-sandbox setups).
#[derive(Clone)]
pub struct FixedHost(pub Arc<dyn ToolExecutor>);

#[async_trait]
impl SessionHost for FixedHost {
    async fn open(
        &self,
        _work: &Work,
        _session: &Session,
    ) -> Result<Arc<dyn ToolExecutor>, HostError> {
        Ok(self.0.clone())
    }

    async fn close(&self, _work: &Work, _session: &Session, _end: &LeaseEnd) {}
}

/// What happened to one tool call, reported to a [`RunnerObserver`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CallReport {
    /// The call is about to run.
    Started(ToolCall),
    /// The call ran; `posted` says whether the result reached the session.
    Finished {
        /// The call.
        call: ToolCall,
        /// Its result.
        outcome: ToolOutcome,
        /// Whether the result was posted.
        posted: bool,
    },
    /// Denied (by evaluation or the user): never run, nothing posted.
    Denied(ToolCall),
    /// Not owned here: left pending for another client.
    NotOwned(ToolCall),
}

/// Receives reports as calls progress (for logs, dashboards, the quickstart's console).
pub trait RunnerObserver: Send + Sync {
    /// One report.
    fn on_call(&self, report: &CallReport);
}

impl<F: Fn(&CallReport) + Send + Sync> RunnerObserver for F {
    fn on_call(&self, report: &CallReport) {
        self(report)
    }
}

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Stop this long after an idle that ends the turn; `None` runs until the session ends.
    pub max_idle: Option<Duration>,
    /// Bound on one tool call.
    pub tool_timeout: Duration,
    /// Event-stream reconnect policy.
    pub reconnect: ReconnectPolicy,
    /// Memory-store download and sync (`memory_sync_interval`, `memory_sync_deletions`).
    pub memory: MemoryConfig,
    /// Bounds on each downloaded skill archive.
    pub skill_limits: SkillLimits,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_idle: Some(DEFAULT_MAX_IDLE),
            tool_timeout: TOOL_TIMEOUT,
            reconnect: ReconnectPolicy::default(),
            memory: MemoryConfig::default(),
            skill_limits: SkillLimits::default(),
        }
    }
}

/// Errors that end an item before its session runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The item is not session work.
    #[error("work item {work_id} is not session work (data.type = {kind})")]
    NotSessionWork {
        /// The item.
        work_id: String,
        /// Its `data.type`.
        kind: String,
    },
    /// Fetching the session failed.
    #[error("fetching session {session_id} failed: {source}")]
    Session {
        /// The session.
        session_id: String,
        /// The API error.
        #[source]
        source: ApiError,
    },
    /// The host could not place the session.
    #[error("placing session {session_id}: {source}")]
    Host {
        /// The session.
        session_id: String,
        /// The host's error.
        #[source]
        source: HostError,
    },
    /// The session has memory stores but the item carried no sessions token (the memory endpoints
    /// reject the environment key), so it is failed rather than run without its memory (§5.3).
    #[error(
        "session {session_id} has memory stores attached, but work item {work_id} carried no sessions token; the memory endpoints reject the environment key, so the item was failed rather than run without its memory"
    )]
    MemoryWithoutSessionsToken {
        /// The session.
        session_id: String,
        /// The item.
        work_id: String,
    },
    /// A memory store could not be mounted (bad `mount_path`, something already at the path,
    /// download failure), so the item is failed rather than run without its memory.
    #[error("session {session_id}: {source}")]
    Memory {
        /// The session.
        session_id: String,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
}

/// What the runner put into a session's sandbox for one item, undone at teardown.
#[derive(Debug, Default)]
struct SessionWorkspace {
    skill_dirs: Vec<String>,
    memory: Option<SessionMemory>,
}

/// How an item ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemOutcome {
    /// Why the lease ended.
    pub lease_end: LeaseEnd,
    /// Whether the final `stop {"force":true}` was sent and accepted (409 counts as accepted).
    pub stopped: bool,
    /// Tool calls whose results were posted.
    pub results_posted: u64,
    /// The session as fetched at the start, when it was.
    pub session: Option<Session>,
}

/// Runs claimed work items for one environment.
#[derive(Clone)]
pub struct SessionRunner {
    client: Client,
    environment_id: EnvironmentId,
    environment_key: Credential,
    config: RunnerConfig,
    observer: Option<Arc<dyn RunnerObserver>>,
}

impl std::fmt::Debug for SessionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRunner")
            .field("environment_id", &self.environment_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SessionRunner {
    /// A runner for `environment_id` using `environment_key` where an item carries no sessions token.
    pub fn new(
        client: Client,
        environment_id: impl Into<EnvironmentId>,
        environment_key: Credential,
    ) -> Self {
        Self {
            client,
            environment_id: environment_id.into(),
            environment_key,
            config: RunnerConfig::default(),
            observer: None,
        }
    }

    /// Replace the settings.
    pub fn with_config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Report every call to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn RunnerObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The settings.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    fn item_client(&self, work: &Work) -> EnvironmentClient {
        self.client
            .environment(
                self.environment_id.clone(),
                Credential::for_work(work, &self.environment_key),
            )
            .with_helper(Some(Helper::Worker))
    }

    /// Force-stop an item (409 "already stopped" counts as success).
    pub async fn force_stop(&self, work: &Work) -> bool {
        match self.item_client(work).stop(&work.id, Some(true)).await {
            Ok(_) => true,
            Err(e) if e.status() == Some(409) => true,
            Err(e) => {
                tracing::error!(work_id = %work.id, error = %e, "force-stop on exit failed");
                false
            }
        }
    }

    /// Handle one acknowledged item: heartbeat its lease, place the session with `host`, run its
    /// tool calls, and force-stop the item at the end unless the lease was lost. `cancel` ends the
    /// run early (host shutdown); the item is then still force-stopped.
    pub async fn handle_item(
        &self,
        work: &Work,
        host: Arc<dyn SessionHost>,
        cancel: CancellationToken,
    ) -> Result<ItemOutcome, RunnerError> {
        let Some(session_id) = work.data.session_id() else {
            let stopped = self.force_stop(work).await;
            tracing::debug!(work_id = %work.id, kind = %work.data.kind, stopped, "non-session work item stopped");
            return Err(RunnerError::NotSessionWork {
                work_id: work.id.to_string(),
                kind: work.data.kind.clone(),
            });
        };
        let sessions_token = work.sessions_token();
        if work.secret.as_deref().is_some_and(|s| !s.is_empty()) && sessions_token.is_none() {
            tracing::warn!(work_id = %work.id, "work item carried a secret but no sessions token; falling back to the environment key");
        }
        let credential = Credential::for_work(work, &self.environment_key);
        let env = self.item_client(work);
        let session_client = self
            .client
            .session(session_id.clone(), credential)
            .with_helper(Some(Helper::Worker));

        let lease = LeaseHandle::new();
        let hb_cancel = cancel.child_token();
        let heartbeat = {
            let lease = lease.clone();
            let env = env.clone();
            let work_id = work.id.clone();
            let hb_cancel = hb_cancel.clone();
            tokio::spawn(async move {
                heartbeat_loop(&lease, &hb_cancel, |expected| {
                    let env = env.clone();
                    let work_id = work_id.clone();
                    async move {
                        env.heartbeat(&work_id, &HeartbeatParams::expecting(expected))
                            .await
                            .map_err(|e| e.to_heartbeat_failure())
                    }
                })
                .await
            })
        };

        let result = self
            .run_session(
                work,
                &session_id,
                &session_client,
                sessions_token.is_some(),
                host,
                &lease,
                &cancel,
            )
            .await;
        let (session, results_posted) = match result {
            Ok(v) => v,
            Err(e) => {
                lease.end(LeaseEnd::RunnerDone);
                hb_cancel.cancel();
                let end = heartbeat.await.unwrap_or(LeaseEnd::RunnerDone);
                if end.should_force_stop() {
                    self.force_stop(work).await;
                }
                return Err(e);
            }
        };
        let end = lease.end(if cancel.is_cancelled() {
            LeaseEnd::Cancelled
        } else {
            LeaseEnd::RunnerDone
        });
        hb_cancel.cancel();
        let _ = heartbeat.await;
        let stopped = if end.should_force_stop() {
            self.force_stop(work).await
        } else {
            tracing::info!(work_id = %work.id, session_id = %session_id, reason = ?end, "lease lost; released the item without stopping it");
            false
        };
        Ok(ItemOutcome {
            lease_end: end,
            stopped,
            results_posted,
            session,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_session(
        &self,
        work: &Work,
        session_id: &crate::protocol::SessionId,
        session_client: &SessionClient,
        has_sessions_token: bool,
        host: Arc<dyn SessionHost>,
        lease: &LeaseHandle,
        cancel: &CancellationToken,
    ) -> Result<(Option<Session>, u64), RunnerError> {
        let session = tokio::select! {
            r = session_client.get() => r.map_err(|source| RunnerError::Session { session_id: session_id.to_string(), source })?,
            _ = lease.ended() => return Ok((None, 0)),
            _ = cancel.cancelled() => return Ok((None, 0)),
        };
        if session.status == SessionStatus::Terminated {
            tracing::info!(work_id = %work.id, session_id = %session_id, "skipping the work item of a terminated session");
            return Ok((Some(session), 0));
        }
        let memory_enabled = self.config.memory.enabled();
        if memory_enabled && !has_sessions_token && has_memory_stores(&session) {
            return Err(RunnerError::MemoryWithoutSessionsToken {
                session_id: session_id.to_string(),
                work_id: work.id.to_string(),
            });
        }
        // Placement runs to completion: dropping `open` half-way (on a lost lease or a cancel)
        // would lose the sandbox it just created or took from the warm pool — neither open nor
        // warm, so never destroyed. A lease that ended meanwhile is handled just below: no tool
        // runs and the host gets its `close`.
        let executor = host
            .open(work, &session)
            .await
            .map_err(|source| RunnerError::Host {
                session_id: session_id.to_string(),
                source,
            })?;
        // Skills and memory go into the sandbox before any tool runs (§5.3); the heartbeat keeps
        // the lease meanwhile, and a lost lease or a cancel interrupts the downloads.
        let credential = session_client.credential().clone();
        let sandbox = executor.sandbox();
        let mut workspace = SessionWorkspace::default();
        let prepared = if lease.status().ended.is_some() || cancel.is_cancelled() {
            None
        } else {
            tokio::select! {
                r = self.prepare_workspace(&session, sandbox.clone(), &credential, memory_enabled && has_sessions_token, &mut workspace) => Some(r),
                _ = lease.ended() => None,
                _ = cancel.cancelled() => None,
            }
        };
        let interrupted = prepared.is_none();
        if let Some(Err(source)) = prepared {
            let end = lease.status().ended.unwrap_or(LeaseEnd::RunnerDone);
            executor.close().await;
            self.teardown(work, &session, sandbox, workspace, false, host, end)
                .await;
            return Err(RunnerError::Memory {
                session_id: session_id.to_string(),
                source,
            });
        }
        let memory = workspace
            .memory
            .take()
            .map(|m| Arc::new(tokio::sync::Mutex::new(m)));
        let (posted, session_over) = if interrupted {
            executor.close().await;
            (0, false)
        } else {
            let tools_client = session_client.with_helper(Some(Helper::SessionToolRunner));
            let stop = CancellationToken::new();
            let run = self.run_tools(
                tools_client,
                executor,
                lease.clone(),
                stop.clone(),
                memory.clone(),
            );
            tokio::pin!(run);
            tokio::select! {
                n = &mut run => n,
                _ = lease.ended() => { stop.cancel(); run.await }
                _ = cancel.cancelled() => { stop.cancel(); run.await }
            }
        };
        let ended = lease.status().ended;
        let clean_end = !interrupted && ended.is_none() && !cancel.is_cancelled();
        let end = ended.unwrap_or(if cancel.is_cancelled() {
            LeaseEnd::Cancelled
        } else {
            LeaseEnd::RunnerDone
        });
        if let Some(m) = memory {
            match Arc::try_unwrap(m) {
                Ok(m) => workspace.memory = Some(m.into_inner()),
                Err(_) => tracing::error!(
                    "memory handle still shared at teardown; skipping the final sync"
                ),
            }
        }
        // The host's `close` and the item's outcome see the session as it ended: a session the
        // stream reported over is not kept warm or snapshotted as anyone's next state.
        let mut session = session;
        if session_over {
            session.status = SessionStatus::Terminated;
        }
        self.teardown(work, &session, sandbox, workspace, clean_end, host, end)
            .await;
        Ok((Some(session), posted))
    }

    /// Download the session's skills and memory stores into its sandbox.
    async fn prepare_workspace(
        &self,
        session: &Session,
        sandbox: Option<Arc<dyn cma_sandbox::Sandbox>>,
        credential: &Credential,
        mount_memory: bool,
        out: &mut SessionWorkspace,
    ) -> Result<(), MemoryError> {
        let Some(sandbox) = sandbox else {
            if !session.agent.skills.is_empty() {
                tracing::warn!(session_id = %session.id, "the executor exposes no sandbox; the session's skills are not downloaded");
            }
            if mount_memory && has_memory_stores(session) {
                return Err(MemoryError::NoSandbox);
            }
            return Ok(());
        };
        if !session.agent.skills.is_empty() {
            let skills = self
                .client
                .skills(credential.clone())
                .with_helper(Some(Helper::Worker));
            out.skill_dirs = install_skills(
                &skills,
                sandbox.as_ref(),
                &session.agent.skills,
                &self.config.skill_limits,
            )
            .await;
        }
        if mount_memory && has_memory_stores(session) {
            let mounts = memory_mounts(session, sandbox.workdir())?;
            out.memory = Some(
                SessionMemory::download(
                    sandbox,
                    &self.client,
                    credential,
                    mounts,
                    self.config.memory,
                )
                .await?,
            );
        }
        Ok(())
    }

    /// The shielded teardown (§5.3): skill directories removed, the final memory sync (clean ends
    /// only) and the push-only flush, each bounded by the flush timeout, the memory folders
    /// removed, then the host's close. It runs in its own task so that dropping the caller
    /// cannot cut it short.
    #[allow(clippy::too_many_arguments)]
    async fn teardown(
        &self,
        work: &Work,
        session: &Session,
        sandbox: Option<Arc<dyn cma_sandbox::Sandbox>>,
        workspace: SessionWorkspace,
        clean_end: bool,
        host: Arc<dyn SessionHost>,
        end: LeaseEnd,
    ) {
        let flush_timeout = self.config.memory.flush_timeout();
        let work = work.clone();
        let session = session.clone();
        let task = tokio::spawn(async move {
            let SessionWorkspace { skill_dirs, memory } = workspace;
            if let Some(sandbox) = &sandbox {
                remove_skills(sandbox.as_ref(), &skill_dirs).await;
            }
            if let Some(mut memory) = memory {
                if clean_end
                    && tokio::time::timeout(flush_timeout, memory.finish())
                        .await
                        .is_err()
                {
                    tracing::warn!(session_id = %session.id, timeout_s = flush_timeout.as_secs_f64(), "final memory sync cut off; the flush that follows still uploads changed files");
                }
                if tokio::time::timeout(flush_timeout, memory.flush_writes())
                    .await
                    .is_err()
                {
                    tracing::warn!(session_id = %session.id, timeout_s = flush_timeout.as_secs_f64(), "memory flush cut off; changed files it had not uploaded yet are not saved");
                }
                memory.dispose().await;
            }
            host.close(&work, &session, &end).await;
        });
        if let Err(e) = task.await {
            tracing::error!(error = %e, "session teardown task failed");
        }
    }

    /// The session tool runner (§5.4): stream + reconcile, dispatch one call at a time, idle rule.
    /// Returns the results posted and whether the stream reported the session over
    /// (`session.status_terminated` / `session.deleted`).
    async fn run_tools(
        &self,
        session: SessionClient,
        executor: Arc<dyn ToolExecutor>,
        lease: LeaseHandle,
        stop: CancellationToken,
        memory: Option<Arc<tokio::sync::Mutex<SessionMemory>>>,
    ) -> (u64, bool) {
        let owned = executor.tool_names();
        let state = Arc::new(Mutex::new(RunnerState::new(owned)));
        let changed = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel::<(ToolCall, bool)>(DISPATCH_QUEUE);
        let session_over = Arc::new(AtomicBool::new(false));

        let stream_task = stream_loop(
            session.clone(),
            self.config.reconnect,
            state.clone(),
            changed.clone(),
            tx,
            stop.clone(),
            self.observer.clone(),
            session_over.clone(),
        );
        let closer = executor.clone();
        let dispatch_task = dispatch_loop(
            session,
            executor,
            self.config.tool_timeout,
            lease,
            state.clone(),
            changed.clone(),
            rx,
            stop.clone(),
            self.observer.clone(),
            memory,
        );
        let idle_task = idle_watchdog(self.config.max_idle, state, changed, stop.clone());
        let (_, posted, _) = tokio::join!(stream_task, dispatch_task, idle_task);
        closer.close().await;
        (posted, session_over.load(Ordering::SeqCst))
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

fn lock(state: &Mutex<RunnerState>) -> std::sync::MutexGuard<'_, RunnerState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn apply(
    actions: Vec<Action>,
    tx: &mpsc::Sender<(ToolCall, bool)>,
    stop: &CancellationToken,
    observer: &Option<Arc<dyn RunnerObserver>>,
    session_over: &AtomicBool,
) {
    for action in actions {
        match action {
            Action::Enqueue { call, confirmed } => {
                tokio::select! {
                    _ = tx.send((call, confirmed)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Action::Denied(call) => {
                tracing::info!(tool = %call.event.name, tool_use_id = %call.id(), "tool call denied; not executing");
                if let Some(o) = observer {
                    o.on_call(&CallReport::Denied(call));
                }
            }
            Action::Stop => {
                tracing::info!("session terminated");
                session_over.store(true, Ordering::SeqCst);
                stop.cancel();
            }
        }
    }
}

async fn reconcile_history(session: &SessionClient) -> Option<Vec<crate::protocol::SessionEvent>> {
    let mut all = Vec::new();
    let mut pages = session.list_all_events(ListEventsParams::history());
    while let Some(item) = pages.next().await {
        match item {
            Ok(ev) => all.push(ev),
            Err(e) => {
                tracing::warn!(error = %e, "reconcile list failed; skipping pending enqueue");
                return None;
            }
        }
    }
    Some(all)
}

#[allow(clippy::too_many_arguments)]
async fn stream_loop(
    session: SessionClient,
    policy: ReconnectPolicy,
    state: Arc<Mutex<RunnerState>>,
    changed: Arc<Notify>,
    tx: mpsc::Sender<(ToolCall, bool)>,
    stop: CancellationToken,
    observer: Option<Arc<dyn RunnerObserver>>,
    session_over: Arc<AtomicBool>,
) {
    let mut stream = session.reconnecting_stream(StreamParams::default(), policy);
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = stream.next() => item,
        };
        let actions = match item {
            Some(Ok(StreamItem::Connected { .. })) => {
                let history = reconcile_history(&session).await;
                lock(&state).reconcile(history.as_deref(), now())
            }
            Some(Ok(StreamItem::Event(ev))) => lock(&state).on_stream_event(&ev, now()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::error!(error = %e, "event stream failed permanently");
                stop.cancel();
                return;
            }
            None => {
                stop.cancel();
                return;
            }
        };
        changed.notify_one();
        apply(actions, &tx, &stop, &observer, &session_over).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn dispatch_loop(
    session: SessionClient,
    executor: Arc<dyn ToolExecutor>,
    tool_timeout: Duration,
    lease: LeaseHandle,
    state: Arc<Mutex<RunnerState>>,
    changed: Arc<Notify>,
    mut rx: mpsc::Receiver<(ToolCall, bool)>,
    stop: CancellationToken,
    observer: Option<Arc<dyn RunnerObserver>>,
    memory: Option<Arc<tokio::sync::Mutex<SessionMemory>>>,
) -> u64 {
    let mut posted = 0;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return posted,
            next = rx.recv() => next,
        };
        let Some((call, confirmed)) = next else {
            return posted;
        };
        let (run, owned) = {
            let st = lock(&state);
            (st.should_execute(&call), st.owns(&call.event.name))
        };
        if run {
            if owned {
                if let Some(o) = &observer {
                    o.on_call(&CallReport::Started(call.clone()));
                }
                let outcome = match tokio::time::timeout(tool_timeout, executor.execute(&call))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => ToolOutcome::error(format!("tool '{}' timed out", call.event.name)),
                };
                let terminated = lock(&state).in_terminated_thread(&call);
                let sent = if terminated {
                    tracing::info!(tool = %call.event.name, "thread terminated; not posting the result");
                    false
                } else {
                    send_result(&session, &call, &outcome, &lease).await
                };
                if sent {
                    lock(&state).mark_answered(call.id());
                    posted += 1;
                }
                if let Some(o) = &observer {
                    o.on_call(&CallReport::Finished {
                        call: call.clone(),
                        outcome,
                        posted: sent,
                    });
                }
            } else {
                tracing::info!(tool = %call.event.name, tool_use_id = %call.id(), "tool not owned by this runner; leaving it pending for its owner");
                if let Some(o) = &observer {
                    o.on_call(&CallReport::NotOwned(call.clone()));
                }
            }
        }
        lock(&state).finished(&call, confirmed, now());
        changed.notify_one();
        // Memory syncs ride the call cadence (§5.3): checked after each dispatched call.
        if let Some(m) = &memory {
            m.lock().await.sync_if_due().await;
        }
    }
}

/// Post one result, retrying transient failures within the lease's retry window (§1.6).
async fn send_result(
    session: &SessionClient,
    call: &ToolCall,
    outcome: &ToolOutcome,
    lease: &LeaseHandle,
) -> bool {
    let event = match call.kind {
        CallKind::Builtin => SendEvent::ToolResult {
            tool_use_id: call.id().clone(),
            is_error: outcome.is_error,
            content: outcome.content.clone(),
        },
        CallKind::Custom => SendEvent::CustomToolResult {
            custom_tool_use_id: call.id().clone(),
            is_error: Some(outcome.is_error),
            content: outcome.content.clone(),
        },
    };
    let events = [event];
    let start = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match session.send_events(&events).await {
            Ok(_) => return true,
            Err(e) if e.is_fatal() => {
                tracing::error!(tool_use_id = %call.id(), error = %e, "tool result rejected");
                return false;
            }
            Err(e) => {
                let window = lease.send_retry_window();
                let remaining = window.saturating_sub(start.elapsed());
                if remaining.is_zero() {
                    tracing::error!(tool_use_id = %call.id(), attempts = attempt, error = %e, "failed to send tool result");
                    return false;
                }
                let wait = retry::send_retry_delay(attempt, retry::random_unit(), remaining);
                tracing::warn!(tool_use_id = %call.id(), attempt, wait_ms = wait.as_millis() as u64, error = %e, "tool result send failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn idle_watchdog(
    max_idle: Option<Duration>,
    state: Arc<Mutex<RunnerState>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let Some(max_idle) = max_idle else {
        stop.cancelled().await;
        return;
    };
    loop {
        let notified = changed.notified();
        let since = lock(&state).idle_since();
        match since {
            None => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = notified => {}
                }
            }
            Some(at) => {
                if lock(&state).idle_expired(now(), max_idle) {
                    tracing::info!(
                        max_idle_s = max_idle.as_secs_f64(),
                        "session idle after its turn ended; stopping"
                    );
                    stop.cancel();
                    return;
                }
                let deadline = Instant::from_std(at + max_idle);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}
