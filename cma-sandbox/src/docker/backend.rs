//! The [`SandboxBackend`] side of [`DockerBackend`]: create (or claim from the warm pool),
//! resume, list and destroy containers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::query_parameters::ListContainersOptions;

use crate::backend::{Sandbox, SandboxBackend};
use crate::error::{Result, SandboxError, SandboxErrorKind};
use crate::spec::{Capabilities, SandboxId, SandboxInfo, SandboxSpec, SandboxStatus};

use super::{
    DockerBackend, LABEL_EGRESS, LABEL_ENVIRONMENT, LABEL_INSTANCE, LABEL_MANAGED, LABEL_POOL,
    LABEL_PREFIX, LABEL_SESSION, is_credential, limits, map_docker_err, pool,
};

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn name(&self) -> &str {
        "docker"
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.caps(false)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>> {
        if let Some(k) = spec.env.keys().find(|k| is_credential(k)) {
            return Err(SandboxError::new(
                SandboxErrorKind::InvalidInput,
                format!("docker: refusing to put the credential {k} into a sandbox"),
            ));
        }
        limits::check_spec(
            spec,
            &self.shared.cfg,
            &self.shared.disk,
            self.shared.gateway,
        )?;
        if let Some((id, spare)) = pool::claim(self, spec).await? {
            // Pool containers never have an egress endpoint.
            return Ok(self.handle_with(id, spare, false));
        }
        let id = SandboxId::parse(format!("cma-{}", uuid::Uuid::new_v4().simple()))?;
        let mut labels = self.base_labels();
        if let Some(s) = &spec.session_id {
            labels.insert(LABEL_SESSION.into(), s.clone());
        }
        if let Some(e) = &spec.environment_id {
            labels.insert(LABEL_ENVIRONMENT.into(), e.clone());
        }
        for (k, v) in &spec.labels {
            labels.insert(format!("{LABEL_PREFIX}{k}"), v.clone());
        }
        if spec.egress.is_some() {
            labels.insert(LABEL_EGRESS.into(), "1".into());
        }
        self.make_container(id.as_str(), spec, labels).await?;
        Ok(self.handle(id, spec.egress.is_some()))
    }

    async fn resume(&self, id: &SandboxId) -> Result<Arc<dyn Sandbox>> {
        let info = self
            .shared
            .docker
            .inspect_container(id.as_str(), None)
            .await
            .map_err(|e| map_docker_err(e, "inspect"))?;
        let labels = info
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(LABEL_MANAGED).map(String::as_str) != Some("1")
            || labels.get(LABEL_INSTANCE) != Some(&self.shared.cfg.instance)
        {
            return Err(SandboxError::new(
                SandboxErrorKind::NotFound,
                format!("docker: {id} is not a sandbox of this control plane"),
            ));
        }
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            self.shared
                .docker
                .start_container(id.as_str(), None)
                .await
                .map_err(|e| map_docker_err(e, "start"))?;
        }
        let network = labels.get(LABEL_EGRESS).map(String::as_str) == Some("1");
        Ok(self.handle(id.clone(), network))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let found = self
            .shared
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(self.own_filters()),
                ..Default::default()
            }))
            .await
            .map_err(|e| map_docker_err(e, "list"))?;
        let mut out = Vec::with_capacity(found.len());
        for c in found {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_owned())
            else {
                continue;
            };
            let Ok(id) = SandboxId::parse(name) else {
                continue;
            };
            let labels = c.labels.unwrap_or_default();
            let (session_id, spec_labels) = if labels.contains_key(LABEL_POOL) {
                // A pool container: claimed when it has a claim file, which holds its identity
                // (labels are fixed at creation, before it had one); else nobody's sandbox yet.
                let Some(identity) = pool::read_claim(&self.shared.cfg, id.as_str()) else {
                    continue;
                };
                (identity.session_id, identity.labels)
            } else {
                (
                    labels.get(LABEL_SESSION).cloned(),
                    labels
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((k.strip_prefix(LABEL_PREFIX)?.to_owned(), v.clone()))
                        })
                        .collect(),
                )
            };
            let status = match c.state.map(|s| s.to_string()).as_deref() {
                Some("running") => SandboxStatus::Running,
                Some("created") | Some("restarting") => SandboxStatus::Starting,
                Some("dead") => SandboxStatus::Failed {
                    reason: "container is dead".into(),
                },
                _ => SandboxStatus::Stopped,
            };
            out.push(SandboxInfo {
                id,
                status,
                created_at: c
                    .created
                    .and_then(|t| u64::try_from(t).ok())
                    .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t)),
                session_id,
                labels: spec_labels,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        let r = self.remove_container(id.as_str()).await;
        if r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == SandboxErrorKind::NotFound)
        {
            pool::remove_claim(&self.shared.cfg, id.as_str());
        }
        r
    }
}
