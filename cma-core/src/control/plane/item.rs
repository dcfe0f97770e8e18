//! One claimed work item on its task: the runner's `handle_item` on a task of its own (so even a
//! panic it could not contain is only that task's), the recorded lease kept fresh meanwhile, and
//! once it ends: the lease record released, a terminated session reported to the host, the
//! counters, the `on_item` report, and the concurrency permit returned.

use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;

use super::{ControlPlane, ItemReport, LEASE_RECORD_RENEW, LEASE_RECORD_TTL};
use crate::protocol::Work;
use crate::runner::session::{ItemOutcome, RunnerError};

impl ControlPlane {
    /// Run `work` to its end, holding `permit` until then.
    pub(super) async fn run_item(&self, work: Work, permit: OwnedSemaphorePermit) {
        let _permit = permit;
        let inner = &self.inner;
        let owner = inner.config.replica_id.as_str();
        let span = tracing::info_span!("work_item", work_id = %work.id, session_id = %work.data.id);
        // The item runs on a task of its own: whatever happens in it (even a panic the
        // runner could not contain), this task still records the end, counts it, reports it
        // and returns the permit.
        let mut item = {
            let runner = inner.runner.clone();
            let host = inner.host.clone();
            let cancel = inner.cancel_items.child_token();
            let work = work.clone();
            inner.tasks.spawn(tracing::Instrument::instrument(
                async move { runner.handle_item(&work, host, cancel).await },
                span,
            ))
        };
        let joined = loop {
            tokio::select! {
                r = &mut item => break r,
                () = tokio::time::sleep(LEASE_RECORD_RENEW) => {
                    inner.recorder.lease_renewed(work.id.as_str(), owner, LEASE_RECORD_TTL).await;
                }
            }
        };
        let result = match joined {
            Ok(result) => result,
            Err(e) => {
                let message = if e.is_panic() {
                    crate::runner::panics::panic_message(e.into_panic().as_ref())
                } else {
                    "the item's task was cancelled".to_owned()
                };
                tracing::error!(work_id = %work.id, panic = %message, "the work item's task died; force-stopping the item");
                inner.runner.force_stop(&work).await;
                Err(RunnerError::Panicked {
                    session_id: work.data.id.clone(),
                    message,
                })
            }
        };
        inner.recorder.lease_released(work.id.as_str(), owner).await;
        if let Ok(ItemOutcome {
            session: Some(session),
            ..
        }) = &result
            && session.status == crate::protocol::SessionStatus::Terminated
        {
            inner
                .recorder
                .terminated(
                    session.id.as_str(),
                    "work item found the session terminated",
                )
                .await;
            inner.host.session_ended(&session.id).await;
        }
        // The host may have kept a sandbox warm: its deadline is the next maintenance.
        inner.maintenance.notify_one();
        match &result {
            Ok(o) => {
                tracing::info!(work_id = %work.id, lease_end = ?o.lease_end, stopped = o.stopped, results = o.results_posted, "work item finished")
            }
            Err(RunnerError::NotSessionWork { kind, .. }) => {
                tracing::debug!(work_id = %work.id, kind, "non-session item stopped")
            }
            Err(e) => {
                inner.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(work_id = %work.id, error = %e, "work item failed");
            }
        }
        inner.counters.finished.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &inner.on_item {
            let report = ItemReport { work, result };
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&report)))
            {
                let message = crate::runner::panics::panic_message(payload.as_ref());
                tracing::error!(work_id = %report.work.id, panic = %message, "the on_item hook panicked");
            }
        }
    }
}
