//! [`SandboxHost::recover`]: picking up after a restart from the state store (feature `store`).

use tokio::time::Instant;

use super::{Placed, SandboxHost, lock};
use crate::control::record::{SessionChange, Status, events};
use crate::protocol::SessionId;
use crate::runner::session::HostError;

/// What [`SandboxHost::recover`] did.
#[cfg(feature = "store")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Sandboxes found alive and kept warm for their session's next work item.
    pub readopted: usize,
    /// Sandboxes destroyed because no live session points at them any more.
    pub destroyed: usize,
    /// Recorded sandboxes that no longer existed in their backend (now forgotten).
    pub missing: usize,
    /// Sessions recorded as placed or running whose work item ended with the previous process.
    pub interrupted: usize,
    /// Sandboxes whose backend failed to resume or destroy them (kept, tried again next time).
    pub failed: usize,
    /// Sandboxes a backend still had that the state store did not know (e.g. created just
    /// before a crash, before they were recorded): destroyed.
    pub orphans: usize,
}

impl SandboxHost {
    /// Pick up after a restart from the state store (a no-op without one). Call it once, before the
    /// control plane starts claiming work (nothing enforces this).
    ///
    /// In this order:
    /// 1. Every session recorded as placed or running lost its work item with the previous
    ///    process: it is marked sleeping (event `interrupted`) and keeps its recorded sandbox.
    /// 2. For each backend registered with this host (in name order), each sandbox the store
    ///    records for it: when the record's session exists, is not terminated and still points at
    ///    this sandbox on this backend, the sandbox is resumed and kept warm for the session's next
    ///    item as if its item had just ended (session idle; past `max_warm` the oldest warm
    ///    sandbox is destroyed). Every other recorded sandbox is destroyed. A sandbox the backend
    ///    no longer has (or whose recorded id is invalid) is forgotten, and its session, if it
    ///    wanted it, marked sleeping. One the backend fails to resume or destroy stays recorded and
    ///    is tried again on the next call. Records of backends not registered here are untouched.
    ///    Memory-mount directories of the previous process are not recorded: they stay on disk.
    /// 3. Every sandbox a registered backend still lists that the store does not record is an
    ///    orphan and is destroyed: also sandboxes of another control plane that shares the backend
    ///    (the same isolate root directory, the same Docker `instance`), so give each plane its
    ///    own. A backend whose `list` fails is skipped.
    ///
    /// A failure to read the store fails the call (what was done before stays done); a backend's
    /// failures are logged and counted in [`RecoveryReport::failed`].
    #[cfg(feature = "store")]
    pub async fn recover(&self) -> Result<RecoveryReport, HostError> {
        use cma_sandbox::{SandboxErrorKind, SandboxId};
        use cma_store::state::{MAX_PAGE_LEN, SessionQuery, SessionStatus};

        let mut report = RecoveryReport::default();
        let Some(store) = self.state.store.clone() else {
            return Ok(report);
        };
        let failed = |what: &'static str| {
            move |e: cma_store::state::StateError| {
                HostError::with_source(format!("recovering from the state store: {what}"), e)
            }
        };

        for status in [SessionStatus::Placed, SessionStatus::Running] {
            let mut after = None;
            loop {
                let page = store
                    .list_sessions(&SessionQuery {
                        status: Some(status),
                        after: after.take(),
                        limit: MAX_PAGE_LEN,
                    })
                    .await
                    .map_err(failed("listing sessions"))?;
                let Some(last) = page.last() else { break };
                after = Some(last.session_id.clone());
                for session in &page {
                    self.state
                        .session(SessionChange {
                            session_id: &session.session_id,
                            backend: &session.backend,
                            sandbox_id: None,
                            work_id: None,
                            status: Status::Sleeping,
                            event: events::INTERRUPTED,
                            detail: status.as_str(),
                        })
                        .await;
                    report.interrupted += 1;
                }
            }
        }

        let mut names: Vec<&String> = self.backends.keys().collect();
        names.sort();
        for name in names {
            let backend = &self.backends[name];
            let records = all_sandbox_records(store.as_ref(), name)
                .await
                .map_err(failed("listing sandboxes"))?;
            for record in records {
                let session = match &record.session_id {
                    Some(id) => store
                        .get_session(id)
                        .await
                        .map_err(failed("reading a session"))?,
                    None => None,
                };
                let wanted = session.as_ref().filter(|s| {
                    s.status != SessionStatus::Terminated
                        && s.backend == record.backend
                        && s.sandbox_id.as_deref() == Some(record.sandbox_id.as_str())
                });
                let Ok(id) = SandboxId::parse(record.sandbox_id.as_str()) else {
                    self.state.sandbox_gone(name, &record.sandbox_id).await;
                    report.missing += 1;
                    continue;
                };
                match wanted {
                    Some(session) => match backend.resume(&id).await {
                        // Its workspace was being restored when the previous process stopped:
                        // never reuse it half-written; the session restores afresh.
                        Ok(sandbox)
                            if cma_store::snapshot::restore_unfinished(sandbox.as_ref())
                                .await
                                .unwrap_or(false) =>
                        {
                            tracing::warn!(backend = %name, sandbox = id.as_str(), "a recorded sandbox holds an unfinished restore; destroying it");
                            match backend.destroy(&id).await {
                                Ok(()) => {
                                    self.state.sandbox_gone(name, id.as_str()).await;
                                    report.destroyed += 1;
                                }
                                Err(e) if e.kind() == SandboxErrorKind::NotFound => {
                                    self.state.sandbox_gone(name, id.as_str()).await;
                                    report.missing += 1;
                                }
                                Err(e) => {
                                    tracing::warn!(backend = %name, sandbox = id.as_str(), error = %e, "destroying a recorded sandbox failed; trying again on the next start");
                                    report.failed += 1;
                                }
                            }
                        }
                        Ok(sandbox) => {
                            let placed = Placed {
                                backend: name.clone(),
                                profile: None,
                                sandbox,
                                // Memory mount directories of the previous process are not
                                // recorded; the restored session gets fresh ones on its next item.
                                host_dirs: Vec::new(),
                                session_id: SessionId::from(session.session_id.clone()),
                            };
                            self.state
                                .session(SessionChange {
                                    session_id: &session.session_id,
                                    backend: name,
                                    sandbox_id: Some(id.as_str()),
                                    work_id: None,
                                    status: Status::Idle,
                                    event: events::SANDBOX_READOPTED,
                                    detail: id.as_str(),
                                })
                                .await;
                            let evicted = lock(&self.warm).put(
                                placed.session_id.clone(),
                                placed,
                                Instant::now().into_std(),
                                self.config.keep_warm,
                            );
                            for p in evicted {
                                self.dispose(p).await;
                            }
                            report.readopted += 1;
                        }
                        Err(e) if e.kind() == SandboxErrorKind::NotFound => {
                            self.state.sandbox_gone(name, id.as_str()).await;
                            self.state
                                .session(SessionChange {
                                    session_id: &session.session_id,
                                    backend: name,
                                    sandbox_id: None,
                                    work_id: None,
                                    status: Status::Sleeping,
                                    event: events::SANDBOX_MISSING,
                                    detail: id.as_str(),
                                })
                                .await;
                            report.missing += 1;
                        }
                        Err(e) => {
                            tracing::warn!(backend = %name, sandbox = id.as_str(), error = %e, "resuming a recorded sandbox failed; trying again on the next start");
                            report.failed += 1;
                        }
                    },
                    None => match backend.destroy(&id).await {
                        Ok(()) => {
                            self.state.sandbox_gone(name, id.as_str()).await;
                            report.destroyed += 1;
                        }
                        Err(e) if e.kind() == SandboxErrorKind::NotFound => {
                            self.state.sandbox_gone(name, id.as_str()).await;
                            report.missing += 1;
                        }
                        Err(e) => {
                            tracing::warn!(backend = %name, sandbox = id.as_str(), error = %e, "destroying a recorded sandbox failed; trying again on the next start");
                            report.failed += 1;
                        }
                    },
                }
            }
        }
        // Whatever a backend still runs that the store does not know is an orphan: destroy it,
        // so nothing is left running that the state store does not account for.
        let mut names: Vec<&String> = self.backends.keys().collect();
        names.sort();
        for name in names {
            let backend = &self.backends[name];
            let known: std::collections::HashSet<String> =
                all_sandbox_records(store.as_ref(), name)
                    .await
                    .map_err(failed("listing sandboxes"))?
                    .into_iter()
                    .map(|r| r.sandbox_id)
                    .collect();
            let live = match backend.list().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e, "listing a backend's sandboxes failed; orphans are swept on the next start");
                    continue;
                }
            };
            for info in live {
                if known.contains(info.id.as_str()) {
                    continue;
                }
                match backend.destroy(&info.id).await {
                    Ok(()) => report.orphans += 1,
                    Err(e) if e.kind() == SandboxErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(backend = %name, sandbox = info.id.as_str(), error = %e, "destroying an orphan sandbox failed");
                        report.failed += 1;
                    }
                }
            }
        }
        tracing::info!(?report, "recovered from the state store");
        Ok(report)
    }
}

/// Every sandbox record of `backend`, page by page.
#[cfg(feature = "store")]
async fn all_sandbox_records(
    store: &dyn cma_store::state::StateStore,
    backend: &str,
) -> Result<Vec<cma_store::state::SandboxRecord>, cma_store::state::StateError> {
    let mut query = cma_store::state::SandboxQuery::backend(backend);
    let mut all = Vec::new();
    loop {
        let page = store.list_sandboxes(&query).await?;
        let Some(last) = page.last() else {
            return Ok(all);
        };
        query = query.after(last);
        all.extend(page);
    }
}
