//! [`SessionHost`] for [`SandboxHost`]: what the runner calls when a work item opens and closes,
//! when a session ends or a webhook arrives, and on the control plane's maintenance passes.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Placed, SandboxHost, lock};
use crate::control::record::{SessionChange, Status, events};
use crate::protocol::{Session, SessionId, SessionStatus, Work};
use crate::runner::lease::LeaseEnd;
use crate::runner::session::{HostError, SessionHost, ToolExecutor};

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

impl SandboxHost {
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
}
