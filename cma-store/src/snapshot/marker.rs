//! The unfinished-restore marker: a file [`RESTORE_MARKER`] at the root of a workspace while a
//! restore writes into it, holding the snapshot's id, removed once the workspace is complete.
//!
//! A process that dies during a restore leaves it behind, and so does a restore that failed
//! half-way: such a workspace is partial. [`SnapshotStore::save`](super::SnapshotStore::save)
//! refuses to snapshot it (a partial workspace must never become a session's newest
//! snapshot), and a control plane that finds it in a sandbox it is about to reuse after a
//! restart ([`restore_unfinished`]) should start that session over in a fresh sandbox.

use cma_sandbox::{Sandbox, SandboxErrorKind};

use super::error::{Error, Result};

/// Name of the marker file at the workspace root.
pub const RESTORE_MARKER: &str = ".cma-restore-unfinished";

/// The marker's sandbox path in `sandbox`.
pub(super) fn marker_path(sandbox: &dyn Sandbox) -> String {
    format!(
        "{}/{RESTORE_MARKER}",
        sandbox.workdir().trim_end_matches('/')
    )
}

/// Whether `sandbox`'s workspace holds a restore that did not finish (see the module docs).
pub async fn restore_unfinished(sandbox: &dyn Sandbox) -> Result<bool> {
    match sandbox.lstat(&marker_path(sandbox)).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == SandboxErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::sandbox("looking for an unfinished restore", e)),
    }
}

/// Refuse to save a workspace with an unfinished restore.
pub(super) async fn refuse_partial(sandbox: &dyn Sandbox) -> Result<()> {
    if restore_unfinished(sandbox).await? {
        return Err(Error::InvalidInput {
            message: format!(
                "the workspace holds a restore that did not finish ({RESTORE_MARKER}): \
                 refusing to snapshot a partial workspace"
            ),
        });
    }
    Ok(())
}
