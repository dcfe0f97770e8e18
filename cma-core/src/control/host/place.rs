//! Placing a session: reusing its warm sandbox when the selected backend and profile still
//! match, or creating one from the template spec (labels, profile, egress, memory mounts) and
//! restoring the newest workspace snapshot into it.

use std::path::PathBuf;

use cma_sandbox::Mount;
use tokio::time::Instant;

use super::{LABEL_ENVIRONMENT, LABEL_MANAGED, LABEL_SESSION, Placed, SandboxHost, lock};
use crate::control::record::{SessionChange, Status, events};
use crate::control::select::Placement;
use crate::protocol::{Session, Work};
use crate::runner::memory::memory_mounts;
use crate::runner::session::HostError;

impl SandboxHost {
    /// Host directories and mounts for the session's memory folders outside the workdir.
    async fn memory_mounts(
        &self,
        session: &Session,
    ) -> Result<(Vec<Mount>, Vec<PathBuf>), HostError> {
        let Some(base) = &self.config.memory_dir else {
            return Ok((Vec::new(), Vec::new()));
        };
        let workdir = self.config.sandbox_workdir.trim_end_matches('/');
        let mounts = memory_mounts(session, workdir).unwrap_or_default();
        let mut out = Vec::new();
        let mut dirs = Vec::new();
        for m in mounts {
            if m.root == workdir || m.root.starts_with(&format!("{workdir}/")) {
                continue;
            }
            let dir = base.join(format!("mem-{}", uuid::Uuid::new_v4().simple()));
            if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                for d in &dirs {
                    let _ = tokio::fs::remove_dir_all(d).await;
                }
                return Err(HostError::with_source(
                    format!("creating the host directory of memory store {}", m.store_id),
                    e,
                ));
            }
            out.push(Mount::new(m.root.clone(), dir.clone()));
            dirs.push(dir);
        }
        Ok((out, dirs))
    }

    pub(super) async fn place(&self, work: &Work, session: &Session) -> Result<Placed, HostError> {
        let profile = self.selector.select(&Placement { work, session });
        let name = profile.backend.clone();
        let backend = self.backends.get(&name).ok_or_else(|| {
            HostError::new(format!("no sandbox backend named {name:?} is registered"))
        })?;
        profile
            .validate("the selected sandbox profile", None)
            .map_err(|e| HostError::with_source(format!("placing session {}", session.id), e))?;
        let now = Instant::now().into_std();
        let warm = lock(&self.warm).take(&session.id, now);
        if let Some(placed) = warm {
            let same =
                placed.backend == name && placed.profile.as_ref().is_none_or(|p| *p == profile);
            #[cfg(feature = "egress")]
            let same = same
                && match &self.egress {
                    Some(egress) => {
                        egress
                            .refresh(&name, placed.sandbox.as_ref(), session)
                            .await
                    }
                    None => true,
                };
            if same {
                tracing::debug!(session_id = %session.id, sandbox = placed.sandbox.id().as_str(), "reusing the session's warm sandbox");
                self.state
                    .session(SessionChange {
                        session_id: session.id.as_str(),
                        backend: &name,
                        sandbox_id: Some(placed.sandbox.id().as_str()),
                        work_id: Some(work.id.as_str()),
                        status: Status::Placed,
                        event: events::SANDBOX_REUSED,
                        detail: placed.sandbox.id().as_str(),
                    })
                    .await;
                return Ok(placed);
            }
            // The rule now picks another backend or profile: retire the old sandbox.
            self.dispose(placed).await;
        }
        let mut spec = self.config.spec.clone();
        profile.apply(&mut spec);
        spec.session_id = Some(session.id.to_string());
        spec.environment_id = Some(work.environment_id.to_string());
        spec.labels
            .insert(LABEL_SESSION.into(), session.id.to_string());
        spec.labels
            .insert(LABEL_ENVIRONMENT.into(), work.environment_id.to_string());
        spec.labels.insert(LABEL_MANAGED.into(), "true".into());
        #[cfg(feature = "egress")]
        let prepared = match &self.egress {
            Some(egress) => egress.prepare(&name, session, &mut spec)?,
            None => None,
        };
        let (mounts, host_dirs) = self.memory_mounts(session).await?;
        spec.mounts.extend(mounts);
        let sandbox = match backend.create(&spec).await {
            Ok(s) => s,
            Err(e) => {
                for d in &host_dirs {
                    let _ = tokio::fs::remove_dir_all(d).await;
                }
                return Err(HostError::with_source(
                    format!("creating a {name} sandbox for session {}", session.id),
                    e,
                ));
            }
        };
        tracing::info!(session_id = %session.id, backend = %name, sandbox = sandbox.id().as_str(), "sandbox created");
        self.state
            .sandbox_exists(&name, sandbox.id().as_str(), Some(session.id.as_str()))
            .await;
        self.state
            .session(SessionChange {
                session_id: session.id.as_str(),
                backend: &name,
                sandbox_id: Some(sandbox.id().as_str()),
                work_id: Some(work.id.as_str()),
                status: Status::Placed,
                event: events::SANDBOX_CREATED,
                detail: sandbox.id().as_str(),
            })
            .await;
        let mut placed = Placed {
            backend: name,
            profile: Some(profile),
            session_id: session.id.clone(),
            sandbox,
            host_dirs,
        };
        // Registered before the first command runs in it (nothing has yet: only `create`).
        #[cfg(feature = "egress")]
        if let (Some(egress), Some(prepared)) = (&self.egress, prepared)
            && let Err(e) = egress.attach(prepared, placed.sandbox.as_ref()).await
        {
            self.dispose(placed).await;
            return Err(e);
        }
        if let Some(store) = &self.snapshots {
            match store
                .wake_latest(session.id.as_str(), placed.sandbox.clone())
                .await
            {
                Ok(Some((id, sandbox))) => {
                    tracing::info!(session_id = %session.id, snapshot = %id, "workspace restored (the rest of it in the background)");
                    placed.sandbox = sandbox;
                }
                Ok(None) => {}
                Err(e) => {
                    self.dispose(placed).await;
                    return Err(e);
                }
            }
        }
        Ok(placed)
    }
}
