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
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use super::dispatch::MAX_HISTORY_EVENTS;
use super::dispatch::{dispatch_loop, idle_watchdog, stream_loop};
use super::lease::{HeartbeatTask, LeaseEnd, LeaseHandle};
use super::memory::{MemoryConfig, MemoryError, SessionMemory, has_memory_stores, memory_mounts};
use super::panics;
use super::skills::{SkillLimits, install_skills, remove_skills};
use super::state::{RunnerState, ToolCall};
use crate::client::{
    ApiError, Client, Credential, EnvironmentClient, HeartbeatParams, Helper, ReconnectPolicy,
    SessionClient,
};
use crate::protocol::{ContentBlock, EnvironmentId, Session, SessionId, SessionStatus, Work};

/// How long an item that ended before its first heartbeat went out waits for it.
const FIRST_HEARTBEAT_WAIT: Duration = Duration::from_secs(5);

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

    /// A verified, new webhook arrived (the control plane calls this for each before acting on
    /// it): hosts that choose per-session settings from webhook data (egress policies select
    /// on `webhook.<key>`) keep what they need. Default: nothing.
    async fn on_webhook(&self, _event: &crate::webhook::WebhookEvent) {}

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

/// Errors that end an item: before its session runs, or by a panic while it runs.
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
    /// Code running for the item panicked (a tool executor, a sandbox, the host's `open`, the
    /// runner): the session was torn down and the item force-stopped (unless its lease was lost).
    #[error("session {session_id}: the work item's task panicked: {message}")]
    Panicked {
        /// The session.
        session_id: String,
        /// The panic message.
        message: String,
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
        // The heartbeat is tied to this future: whatever ends it (a return, a panic, a drop)
        // ends the lease and stops the loop.
        let heartbeat = {
            let env = env.clone();
            let work_id = work.id.clone();
            HeartbeatTask::spawn(lease.clone(), cancel.child_token(), move |expected| {
                let env = env.clone();
                let work_id = work_id.clone();
                async move {
                    env.heartbeat(&work_id, &HeartbeatParams::expecting(expected))
                        .await
                        .map_err(|e| e.to_heartbeat_failure())
                }
            })
        };

        // A panic anywhere below (the host's `open`, a sandbox, the runner) ends this item like
        // any other failure: the lease ends, the item is force-stopped, the plane goes on.
        let result = panics::catch(self.run_session(
            work,
            &session_id,
            &session_client,
            sessions_token.is_some(),
            host,
            &lease,
            &cancel,
        ))
        .await
        .unwrap_or_else(|message| {
            tracing::error!(work_id = %work.id, session_id = %session_id, panic = %message, "the work item's task panicked");
            Err(RunnerError::Panicked {
                session_id: session_id.to_string(),
                message,
            })
        });
        if !cancel.is_cancelled() {
            // A run that ended at once (a terminated session, a failed fetch) still lets its
            // first heartbeat go out before the stop, as the official worker's does.
            let _ = tokio::time::timeout(FIRST_HEARTBEAT_WAIT, lease.first_attempt()).await;
        }
        let (session, results_posted) = match result {
            Ok(v) => v,
            Err(e) => {
                let end = heartbeat.stop(LeaseEnd::RunnerDone).await;
                if end.should_force_stop() {
                    self.force_stop(work).await;
                }
                return Err(e);
            }
        };
        let end = heartbeat
            .stop(if cancel.is_cancelled() {
                LeaseEnd::Cancelled
            } else {
                LeaseEnd::RunnerDone
            })
            .await;
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
        // From here on the host holds a sandbox for this item, so whatever happens — a memory
        // error, a lost lease, a panic in a tool, a sandbox or the runner — the host gets its
        // `close` (through the teardown) before the item ends.
        let credential = session_client.credential().clone();
        let mut sandbox = None;
        let mut workspace = SessionWorkspace::default();
        let mut memory = None;
        let phase = panics::catch(async {
            sandbox = executor.sandbox();
            // A heartbeat sent while the sandbox was being placed may have been refused: know
            // its answer before anything runs on the lease.
            tokio::select! {
                _ = lease.settled() => {}
                _ = cancel.cancelled() => {}
            }
            // Skills and memory go into the sandbox before any tool runs (§5.3); the heartbeat
            // keeps the lease meanwhile, and a lost lease or a cancel interrupts the downloads.
            let prepared = if lease.status().ended.is_some() || cancel.is_cancelled() {
                None
            } else {
                tokio::select! {
                    r = self.prepare_workspace(&session, sandbox.clone(), &credential, memory_enabled && has_sessions_token, &mut workspace) => Some(r),
                    _ = lease.ended() => None,
                    _ = cancel.cancelled() => None,
                }
            };
            match prepared {
                None => return Ok(None),
                Some(Err(source)) => return Err(source),
                Some(Ok(())) => {}
            }
            memory = workspace
                .memory
                .take()
                .map(|m| Arc::new(tokio::sync::Mutex::new(m)));
            let tools_client = session_client.with_helper(Some(Helper::SessionToolRunner));
            let stop = CancellationToken::new();
            let run = self.run_tools(
                tools_client,
                executor.clone(),
                lease.clone(),
                stop.clone(),
                memory.clone(),
            );
            tokio::pin!(run);
            Ok(Some(tokio::select! {
                n = &mut run => n,
                _ = lease.ended() => { stop.cancel(); run.await }
                _ = cancel.cancelled() => { stop.cancel(); run.await }
            }))
        })
        .await;
        let (ran, panicked) = match phase {
            Ok(Ok(ran)) => (ran, None),
            Ok(Err(source)) => {
                let end = lease.status().ended.unwrap_or(LeaseEnd::RunnerDone);
                close_executor(executor.as_ref()).await;
                self.teardown(work, &session, sandbox, workspace, false, host, end)
                    .await;
                return Err(RunnerError::Memory {
                    session_id: session_id.to_string(),
                    source,
                });
            }
            Err(message) => {
                tracing::error!(work_id = %work.id, session_id = %session_id, panic = %message, "the session's run panicked; tearing it down");
                (None, Some(message))
            }
        };
        // `run_tools` closes the executor itself once its loops are done.
        if ran.is_none() {
            close_executor(executor.as_ref()).await;
        }
        let (posted, session_over) = ran.unwrap_or((0, false));
        let ended = lease.status().ended;
        let clean_end =
            ran.is_some() && panicked.is_none() && ended.is_none() && !cancel.is_cancelled();
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
        if let Some(message) = panicked {
            return Err(RunnerError::Panicked {
                session_id: session_id.to_string(),
                message,
            });
        }
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
            // Each step is contained on its own: a panicking sandbox must not cost the session
            // its final sync, nor the host its `close` (which releases the sandbox).
            if let Some(sandbox) = &sandbox
                && let Err(message) =
                    panics::catch(remove_skills(sandbox.as_ref(), &skill_dirs)).await
            {
                tracing::error!(session_id = %session.id, panic = %message, "removing the skills panicked");
            }
            if let Some(mut memory) = memory {
                let steps = panics::catch(async {
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
                })
                .await;
                if let Err(message) = steps {
                    tracing::error!(session_id = %session.id, panic = %message, "the memory teardown panicked");
                }
            }
            if let Err(message) = panics::catch(host.close(&work, &session, &end)).await {
                tracing::error!(session_id = %session.id, panic = %message, "the host's close panicked");
            }
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
        close_executor(closer.as_ref()).await;
        (posted, session_over.load(Ordering::SeqCst))
    }
}

/// The executor's `close`, with a panic in it contained (logged): the teardown still runs.
async fn close_executor(executor: &dyn ToolExecutor) {
    if let Err(message) = panics::catch(executor.close()).await {
        tracing::error!(panic = %message, "the tool executor's close panicked");
    }
}
