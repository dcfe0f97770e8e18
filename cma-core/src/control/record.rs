//! What the control plane writes about sandboxes and sessions into a `cma_store::state::StateStore`
//! (feature `store`, see `SandboxHost::state_store`), so a restarted plane knows which sandboxes it
//! left behind and what each session was doing; [`events`] names the transition log entries.
//!
//! Recording is best effort: a state store failure is logged and never fails a session (the
//! session's files and the CMA server's queue are the source of truth for the work itself). Without
//! the `store` feature, or without a store configured, every method does nothing.

#[cfg(feature = "store")]
use std::sync::Arc;

#[cfg(feature = "store")]
use cma_store::state::{Precondition, SandboxRecord, SessionRecord, SessionStatus, StateStore};

/// Transition log event names the control plane writes (besides the session status names).
pub mod events {
    /// A new sandbox was created for the session.
    pub const SANDBOX_CREATED: &str = "sandbox_created";
    /// The session's warm sandbox was reused for its next work item.
    pub const SANDBOX_REUSED: &str = "sandbox_reused";
    /// The session's sandbox was kept warm after its work item ended.
    pub const SANDBOX_KEPT_WARM: &str = "sandbox_kept_warm";
    /// The session's sandbox was destroyed.
    pub const SANDBOX_DESTROYED: &str = "sandbox_destroyed";
    /// After a restart, the session's sandbox was found and adopted again (kept warm).
    pub const SANDBOX_READOPTED: &str = "sandbox_readopted";
    /// After a restart, the session's sandbox no longer existed in its backend.
    pub const SANDBOX_MISSING: &str = "sandbox_missing";
    /// After a restart, a session that was placed or running was found without a live work item.
    pub const INTERRUPTED: &str = "interrupted_by_restart";
    /// The session was terminated or deleted (a webhook said so, or its work item found it so).
    /// A terminated session stays terminated whatever is recorded for it afterwards.
    pub const TERMINATED: &str = "terminated";
    /// The session's workspace was saved as a snapshot (the detail is its id).
    pub const SNAPSHOT_SAVED: &str = "snapshot_saved";
}

/// Writes sandbox and session transitions to a state store, if one is configured.
#[derive(Clone, Default)]
pub(crate) struct StateRecorder {
    #[cfg(feature = "store")]
    pub(crate) store: Option<Arc<dyn StateStore>>,
}

impl std::fmt::Debug for StateRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "store")]
        let enabled = self.store.is_some();
        #[cfg(not(feature = "store"))]
        let enabled = false;
        f.debug_struct("StateRecorder")
            .field("enabled", &enabled)
            .finish()
    }
}

/// The session status a transition moves to (mirrors the store's statuses without needing the
/// `store` feature at the call sites).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "store"), allow(dead_code))]
pub(crate) enum Status {
    Placed,
    Running,
    Idle,
    Sleeping,
    Terminated,
}

#[cfg(feature = "store")]
impl From<Status> for SessionStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Placed => SessionStatus::Placed,
            Status::Running => SessionStatus::Running,
            Status::Idle => SessionStatus::Idle,
            Status::Sleeping => SessionStatus::Sleeping,
            Status::Terminated => SessionStatus::Terminated,
        }
    }
}

/// One session transition to record.
#[cfg_attr(not(feature = "store"), allow(dead_code))]
pub(crate) struct SessionChange<'a> {
    pub(crate) session_id: &'a str,
    pub(crate) backend: &'a str,
    /// `Some` sets the session's current sandbox; `None` keeps the stored one.
    pub(crate) sandbox_id: Option<&'a str>,
    /// `Some` sets the session's last work item; `None` keeps the stored one.
    pub(crate) work_id: Option<&'a str>,
    pub(crate) status: Status,
    pub(crate) event: &'a str,
    pub(crate) detail: &'a str,
}

impl StateRecorder {
    /// Record that a sandbox exists (created, or adopted again).
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn sandbox_exists(
        &self,
        backend: &str,
        sandbox_id: &str,
        session_id: Option<&str>,
    ) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store {
            let record = SandboxRecord {
                backend: backend.to_owned(),
                sandbox_id: sandbox_id.to_owned(),
                session_id: session_id.map(str::to_owned),
                created_at: chrono::Utc::now(),
            };
            if let Err(e) = store.put_sandbox(&record).await {
                tracing::warn!(backend, sandbox = sandbox_id, error = %e, "recording a sandbox failed");
            }
        }
    }

    /// Record that a sandbox is gone (destroyed, or found missing).
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn sandbox_gone(&self, backend: &str, sandbox_id: &str) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store
            && let Err(e) = store.remove_sandbox(backend, sandbox_id).await
        {
            tracing::warn!(backend, sandbox = sandbox_id, error = %e, "forgetting a sandbox failed");
        }
    }

    /// Mark a session the store knows as terminated (sessions it never placed are not recorded).
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn terminated(&self, session_id: &str, detail: &str) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store {
            let backend = match store.get_session(session_id).await {
                Ok(Some(record)) if record.status == SessionStatus::Terminated => return,
                Ok(Some(record)) => record.backend,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(session_id, error = %e, "reading a session record failed");
                    return;
                }
            };
            self.session(SessionChange {
                session_id,
                backend: &backend,
                sandbox_id: None,
                work_id: None,
                status: Status::Terminated,
                event: events::TERMINATED,
                detail,
            })
            .await;
        }
    }

    /// Record a snapshot of the session's workspace as its last one (sessions the store does not
    /// know are not recorded; ids that are not store snapshot ids only go to the log).
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn snapshot_saved(&self, session_id: &str, snapshot_id: &str) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store
            && let Err(e) = record_snapshot(store.as_ref(), session_id, snapshot_id).await
        {
            tracing::warn!(session_id, snapshot = snapshot_id, error = %e, "recording a snapshot failed");
        }
    }

    /// Record that this replica (`owner`) holds a work item's lease until `now + ttl`.
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn lease_claimed(
        &self,
        work_id: &str,
        session_id: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store {
            let claim = cma_store::state::LeaseClaim {
                work_id: work_id.to_owned(),
                session_id: session_id.to_owned(),
                owner: owner.to_owned(),
                ttl,
            };
            if let Err(e) = store.claim_lease(&claim, chrono::Utc::now()).await {
                tracing::warn!(work_id, owner, error = %e, "recording a work item lease failed");
            }
        }
    }

    /// Extend the recorded lease while the item runs.
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn lease_renewed(&self, work_id: &str, owner: &str, ttl: std::time::Duration) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store
            && let Err(e) = store
                .renew_lease(work_id, owner, ttl, chrono::Utc::now())
                .await
        {
            tracing::warn!(work_id, owner, error = %e, "renewing a recorded lease failed");
        }
    }

    /// Forget the recorded lease: the item is finished or released.
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn lease_released(&self, work_id: &str, owner: &str) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store
            && let Err(e) = store.release_lease(work_id, owner).await
        {
            tracing::warn!(work_id, owner, error = %e, "releasing a recorded lease failed");
        }
    }

    /// Forget every lease recorded for `owner`: called before this replica claims anything, so
    /// what remains are the leases a previous process of the same replica held when it stopped
    /// (its items are lost with it; the work queue hands them out again). Returns how many.
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn release_stale_leases(&self, owner: &str) -> usize {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store {
            let leases = match store.list_leases(Some(owner)).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(owner, error = %e, "listing recorded leases failed");
                    return 0;
                }
            };
            let mut n = 0;
            for l in leases {
                match store.release_lease(&l.work_id, owner).await {
                    Ok(true) => {
                        n += 1;
                        tracing::info!(work_id = %l.work_id, session_id = %l.session_id, "a lease left by a previous process was released");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(work_id = %l.work_id, error = %e, "releasing a stale lease failed")
                    }
                }
            }
            return n;
        }
        0
    }

    /// Update the session's record and append the transition to its log.
    #[cfg_attr(not(feature = "store"), allow(unused_variables))]
    pub(crate) async fn session(&self, change: SessionChange<'_>) {
        #[cfg(feature = "store")]
        if let Some(store) = &self.store
            && let Err(e) = record_session(store.as_ref(), &change).await
        {
            tracing::warn!(session_id = change.session_id, event = change.event, error = %e, "recording a session transition failed");
        }
    }
}

/// Read, change and write the session record with a version check (another replica may write the
/// same session), then append the transition.
#[cfg(feature = "store")]
async fn record_session(
    store: &dyn StateStore,
    change: &SessionChange<'_>,
) -> Result<(), cma_store::state::StateError> {
    use cma_store::state::StateErrorKind;
    let now = chrono::Utc::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = store.get_session(change.session_id).await?;
        let (mut record, precondition) = match current {
            Some(r) => {
                let v = r.version;
                (r, Precondition::Version(v))
            }
            None => (
                SessionRecord::new(change.session_id, change.backend, now),
                Precondition::Absent,
            ),
        };
        record.backend = change.backend.to_owned();
        if let Some(sandbox) = change.sandbox_id {
            record.sandbox_id = Some(sandbox.to_owned());
        }
        if let Some(work) = change.work_id {
            record.last_work_id = Some(work.to_owned());
        }
        // Terminated is final: later sandbox housekeeping must not make the session look alive.
        if record.status != SessionStatus::Terminated {
            record.status = change.status.into();
        }
        record.updated_at = now;
        match store.put_session(&record, precondition).await {
            Ok(_) => break,
            Err(e) if e.kind() == StateErrorKind::Conflict && attempts < 3 => continue,
            Err(e) => return Err(e),
        }
    }
    let detail = truncate(change.detail, cma_store::state::MAX_DETAIL_BYTES);
    store
        .append_transition(change.session_id, now, change.event, detail)
        .await
        .map(drop)
}

/// Set the session's last snapshot (version-checked like [`record_session`]) and log it.
#[cfg(feature = "store")]
async fn record_snapshot(
    store: &dyn StateStore,
    session_id: &str,
    snapshot_id: &str,
) -> Result<(), cma_store::state::StateError> {
    use cma_store::state::StateErrorKind;
    let now = chrono::Utc::now();
    if let Some(snapshot) = cma_store::SnapshotId::from_hex(snapshot_id) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(mut record) = store.get_session(session_id).await? else {
                return Ok(());
            };
            let precondition = Precondition::Version(record.version);
            record.last_snapshot = Some(snapshot.clone());
            record.updated_at = now;
            match store.put_session(&record, precondition).await {
                Ok(_) => break,
                Err(e) if e.kind() == StateErrorKind::Conflict && attempts < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }
    let detail = truncate(snapshot_id, cma_store::state::MAX_DETAIL_BYTES);
    store
        .append_transition(session_id, now, events::SNAPSHOT_SAVED, detail)
        .await
        .map(drop)
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
#[cfg(feature = "store")]
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
