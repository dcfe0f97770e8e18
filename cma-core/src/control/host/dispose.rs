//! Ending sandboxes: reaping warm ones whose keep-warm time is over, destroying every warm one
//! at shutdown, and disposing of one (egress detached, backend destroy, memory-mount
//! directories removed, the state store told).

use tokio::time::Instant;

use super::{Placed, SandboxHost, lock};
use crate::control::record::{SessionChange, Status, events};

impl SandboxHost {
    /// Destroy warm sandboxes whose keep-warm time is over; returns how many were destroyed.
    /// The control plane calls it through [`SessionHost::maintain`] at each sandbox's deadline
    /// (and placement calls it too); a host without a plane calls it itself.
    ///
    /// [`SessionHost::maintain`]: crate::runner::session::SessionHost::maintain
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

    pub(super) async fn dispose(&self, placed: Placed) {
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
}
