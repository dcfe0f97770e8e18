//! Workspace snapshots as the control plane sees them: save a session's workspace when its work
//! item ends, restore the newest good one into every fresh sandbox of a known session.
//!
//! [`WorkspaceSnapshots`] is what [`SandboxHost`](super::host::SandboxHost) calls; with the `store`
//! feature, `cma_store::SnapshotStore` implements it (content-defined chunks, verified restores).

use async_trait::async_trait;
use cma_sandbox::Sandbox;

use crate::runner::session::HostError;

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
}
