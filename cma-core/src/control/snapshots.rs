//! Workspace snapshots as the control plane sees them: save a session's workspace when its work
//! item ends, restore the newest good one into every fresh sandbox of a known session.
//!
//! [`WorkspaceSnapshots`] is what [`SandboxHost`](super::host::SandboxHost) calls; with the `store`
//! feature, `cma_store::SnapshotStore` implements it (content-defined chunks, verified restores).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cma_sandbox::Sandbox;

use crate::runner::session::HostError;

/// Which snapshots are kept, and how often the control plane deletes the rest and collects the
/// chunks no snapshot uses any more (see [`SandboxHost::with_snapshot_retention`](super::host::SandboxHost::with_snapshot_retention)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRetention {
    /// Newest snapshots kept per session (at least 1: the one the session wakes from; more
    /// give a restore something to fall back to when the newest is damaged).
    pub keep_last: usize,
    /// Snapshots younger than this are kept whatever their rank.
    pub keep_within: Duration,
    /// How often retention and chunk collection run (the first run is at the plane's first
    /// maintenance pass, i.e. when it starts).
    pub interval: Duration,
}

impl Default for SnapshotRetention {
    /// Two per session, everything from the last day, applied hourly.
    fn default() -> Self {
        Self {
            keep_last: 2,
            keep_within: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(3600),
        }
    }
}

impl SnapshotRetention {
    /// Check the policy: `keep_last` ≥ 1 and `interval` ≥ 1 s (each error names the field).
    pub fn validate(&self) -> Result<(), HostError> {
        if self.keep_last == 0 {
            return Err(HostError::new(
                "snapshot retention keep_last must be at least 1 (the snapshot a session wakes from)",
            ));
        }
        if self.interval < Duration::from_secs(1) {
            return Err(HostError::new(
                "snapshot retention interval must be at least 1 second",
            ));
        }
        Ok(())
    }
}

/// What one retention and collection pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HousekeepingReport {
    /// Snapshots kept.
    pub snapshots_kept: usize,
    /// Snapshots deleted by the policy.
    pub snapshots_deleted: usize,
    /// Stored chunks no snapshot used any more, deleted.
    pub chunks_deleted: usize,
    /// Stored bytes freed by deleting them.
    pub bytes_freed: u64,
}

/// Saves and restores a session's workspace.
#[async_trait]
pub trait WorkspaceSnapshots: Send + Sync {
    /// Save `sandbox`'s workspace as `session_id`'s newest snapshot; returns its id.
    async fn save(&self, session_id: &str, sandbox: &dyn Sandbox) -> Result<String, HostError>;

    /// Restore `session_id`'s newest snapshot that verifies into `sandbox` (a broken one is
    /// skipped for the one before it, and the sandbox is left untouched by a failed attempt).
    /// `Ok(None)` when the session has no snapshot; an error when none of them restores.
    async fn restore_latest(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
    ) -> Result<Option<String>, HostError>;

    /// Like [`restore_latest`](WorkspaceSnapshots::restore_latest), but may return before the
    /// whole workspace is written: with the snapshot's id, the sandbox to use from then on (a
    /// wrapper around `sandbox` whose operations wait for what they touch while the restore
    /// finishes in the background). The default restores whole and returns `sandbox` itself.
    async fn wake_latest(
        &self,
        session_id: &str,
        sandbox: Arc<dyn Sandbox>,
    ) -> Result<Option<(String, Arc<dyn Sandbox>)>, HostError> {
        Ok(self
            .restore_latest(session_id, sandbox.as_ref())
            .await?
            .map(|id| (id, sandbox)))
    }

    /// Whether [`WorkspaceSnapshots::housekeep`] is implemented (a host refuses a retention
    /// policy for a store that cannot apply it rather than ignoring it).
    fn supports_retention(&self) -> bool {
        false
    }

    /// Delete the snapshots `policy` does not keep, then the stored data no snapshot uses any
    /// more. Default: refused (see [`WorkspaceSnapshots::supports_retention`]).
    async fn housekeep(&self, policy: &SnapshotRetention) -> Result<HousekeepingReport, HostError> {
        let _ = policy;
        Err(HostError::new(
            "this snapshot store does not implement retention",
        ))
    }
}

/// The `cma-store` snapshot store: chunked, deduplicated, verified snapshots in an object store.
/// Saves name the session's newest snapshot as parent (its chunks are reused); restores try the
/// newest snapshot first and fall back to older ones when one fails verification (a transient
/// store error is returned instead, so a healthy newer snapshot is never skipped over).
#[cfg(feature = "store")]
#[async_trait]
impl WorkspaceSnapshots for cma_store::SnapshotStore {
    async fn save(&self, session_id: &str, sandbox: &dyn Sandbox) -> Result<String, HostError> {
        let context = || format!("saving a snapshot of session {session_id}");
        let parent = self
            .list(session_id)
            .await
            .map_err(|e| HostError::with_source(context(), e))?
            .pop()
            .map(|info| info.id);
        let manifest = cma_store::SnapshotStore::save(self, session_id, sandbox, parent.as_ref())
            .await
            .map_err(|e| HostError::with_source(context(), e))?;
        Ok(manifest.id.as_str().to_owned())
    }

    fn supports_retention(&self) -> bool {
        true
    }

    /// `apply_retention` then `gc` (safe while saves run, from any number of processes).
    async fn housekeep(&self, policy: &SnapshotRetention) -> Result<HousekeepingReport, HostError> {
        let retention = self
            .apply_retention(cma_store::RetentionPolicy {
                keep_last: policy.keep_last,
                keep_within: policy.keep_within,
            })
            .await
            .map_err(|e| HostError::with_source("applying snapshot retention", e))?;
        let gc = self
            .gc()
            .await
            .map_err(|e| HostError::with_source("collecting unused snapshot chunks", e))?;
        Ok(HousekeepingReport {
            snapshots_kept: retention.kept,
            snapshots_deleted: retention.deleted.len(),
            chunks_deleted: gc.chunks_deleted,
            bytes_freed: gc.bytes_freed,
        })
    }

    async fn restore_latest(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
    ) -> Result<Option<String>, HostError> {
        let snapshots = self.list(session_id).await.map_err(|e| {
            HostError::with_source(format!("listing the snapshots of session {session_id}"), e)
        })?;
        let mut last_error = None;
        for info in snapshots.iter().rev() {
            match self.restore(&info.id, sandbox).await {
                Ok(manifest) => return Ok(Some(manifest.id.as_str().to_owned())),
                Err(e) if e.is_retryable() => {
                    return Err(HostError::with_source(
                        format!(
                            "restoring snapshot {} of session {session_id}",
                            info.id.as_str()
                        ),
                        e,
                    ));
                }
                Err(e) => {
                    tracing::warn!(session_id, snapshot = info.id.as_str(), error = %e, "a snapshot does not restore; trying the one before it");
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            None => Ok(None),
            Some(e) => Err(HostError::with_source(
                format!(
                    "none of the {} snapshots of session {session_id} restores",
                    snapshots.len()
                ),
                e,
            )),
        }
    }

    /// The newest snapshot that passes its checks (manifest, tables, every pack present) wakes
    /// the session at once; the workspace is written in the background, and each tool call
    /// waits for the files it touches (`cma_store::WakingSandbox`). Fallback and error handling
    /// as for `restore_latest`.
    async fn wake_latest(
        &self,
        session_id: &str,
        sandbox: Arc<dyn Sandbox>,
    ) -> Result<Option<(String, Arc<dyn Sandbox>)>, HostError> {
        let snapshots = self.list(session_id).await.map_err(|e| {
            HostError::with_source(format!("listing the snapshots of session {session_id}"), e)
        })?;
        let mut last_error = None;
        for info in snapshots.iter().rev() {
            match self.wake(&info.id, sandbox.clone()).await {
                Ok(woken) => {
                    return Ok(Some((woken.manifest.id.as_str().to_owned(), woken.sandbox)));
                }
                Err(e) if e.is_retryable() => {
                    return Err(HostError::with_source(
                        format!(
                            "restoring snapshot {} of session {session_id}",
                            info.id.as_str()
                        ),
                        e,
                    ));
                }
                Err(e) => {
                    tracing::warn!(session_id, snapshot = info.id.as_str(), error = %e, "a snapshot does not restore; trying the one before it");
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            None => Ok(None),
            Some(e) => Err(HostError::with_source(
                format!(
                    "none of the {} snapshots of session {session_id} restores",
                    snapshots.len()
                ),
                e,
            )),
        }
    }
}
