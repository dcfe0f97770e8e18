//! The host's workspace snapshots: the snapshot store and its retention policy, snapshots on
//! demand, and the retention housekeeping the maintenance passes run when it is due.

use std::sync::Arc;

use tokio::time::Instant;

use super::{SandboxHost, lock};
use crate::control::snapshots::{SnapshotRetention, WorkspaceSnapshots};
use crate::protocol::SessionId;
use crate::runner::session::HostError;

impl SandboxHost {
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
    pub(super) async fn housekeep_if_due(&self) -> Option<Instant> {
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
}
