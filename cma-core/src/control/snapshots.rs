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
