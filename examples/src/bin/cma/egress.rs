//! `cma run`'s `egress` section: what sandboxes may reach, with which credentials.
//!
//! ```json
//! "egress": {
//!   "policies": "/etc/cma/egress.json",
//!   "default": "deny",
//!   "secrets": { "env": ["GITHUB_TOKEN"], "dir": "/run/secrets/cma" },
//!   "permit_networks": ["10.20.0.0/16"],
//!   "docker_port": 3128,
//!   "call_service": true,
//!   "reload_seconds": 5,
//!   "audit_retention_seconds": 604800
//! }
//! ```
//!
//! * `policies`: a file (reloaded when it changes, checked every `reload_seconds`, default 5; 0
//!   never) or the policy set inline (`{"default": …, "policies": [...]}`, see
//!   `examples/egress/package-registries.json` and `cma_egress::policy`). An edited file reaches
//!   running sessions from their next request; a file that no longer parses is logged and the
//!   previous policies stay.
//! * `default` (`deny`, the default, or `allow`): what applies to a session no policy selects;
//!   it overrides the document's own `default`.
//! * `secrets`: only from the environment (`env`: variable names, each read once at start and
//!   usable by that name; the control plane's own keys are refused) or files (`dir`: one file
//!   per secret name, read at request time so a rotated file takes effect at once).
//! * `permit_networks`: private networks `allow` rules may name like public hosts (never
//!   loopback, link-local or the host's own addresses).
//! * `docker_port`: the proxy's port on the Docker sandbox network's gateway (default 0: any
//!   free port).
//! * `call_service`: offer the agent the `call_service` tool (named private services through
//!   `route` rules).
//! * Audit records go to the log (target `cma_egress::audit`) and to the state store, where
//!   those older than `audit_retention_seconds` (default 7 days) are pruned.
//!
//! Without an `egress` section sandboxes have no network at all.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cma_core::control::egress::SessionEgress;
use cma_core::control::egress_record::{StateAuditConfig, StateAuditSink};
use cma_egress::addr::AddressGuard;
use cma_egress::secrets::{FileSecretStore, MemorySecretStore, Secret, SecretName, SecretStores};
use cma_egress::{
    AuditRecord, AuditSink, EgressProxy, PolicySelector, PolicyStore, TracingAuditSink,
};
use cma_store::state::StateStore;
use serde::Deserialize;

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// The `egress` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// A policy file, or the policy set inline.
    #[serde(default)]
    pub policies: Option<Policies>,
    /// `deny` or `allow` for sessions no policy selects (overrides the document's).
    #[serde(default)]
    pub default: Option<String>,
    /// Where secrets come from.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// Private networks `allow` rules may name (`10.20.0.0/16`).
    #[serde(default)]
    pub permit_networks: Vec<String>,
    /// The proxy's port on the Docker gateway (0: any).
    #[serde(default)]
    #[cfg_attr(not(feature = "docker"), allow(dead_code))]
    pub docker_port: u16,
    /// Offer the `call_service` tool.
    #[serde(default)]
    pub call_service: bool,
    /// How often a policy file is checked for changes (0: never).
    #[serde(default = "default_reload")]
    pub reload_seconds: u64,
    /// How long audit records are kept in the state store.
    #[serde(default = "default_audit_retention")]
    pub audit_retention_seconds: u64,
}

fn default_reload() -> u64 {
    5
}
fn default_audit_retention() -> u64 {
    7 * 24 * 3600
}

/// `policies`: a path or the document itself.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Policies {
    /// A JSON file.
    File(PathBuf),
    /// The policy set inline.
    Inline(serde_json::Value),
}

/// `secrets`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Environment variables usable as secrets of the same name.
    #[serde(default)]
    pub env: Vec<String>,
    /// A directory with one file per secret.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// A network in `a.b.c.d/n` or `x::/n` form.
fn parse_network(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected address/prefix"))?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?}: bad address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
    Ok((ip, prefix))
}

impl EgressConfig {
    /// The policy document with `default` applied.
    fn document(&self) -> Result<serde_json::Value, String> {
        let mut doc = match &self.policies {
            None => serde_json::json!({"policies": []}),
            Some(Policies::Inline(v)) => v.clone(),
            Some(Policies::File(path)) => read_policy_file(path)?.1,
        };
        if let Some(d) = &self.default {
            if d != "deny" && d != "allow" {
                return Err(format!("egress.default must be deny or allow, not {d:?}"));
            }
            if let Some(obj) = doc.as_object_mut() {
                obj.insert("default".into(), serde_json::Value::String(d.clone()));
            }
        }
        Ok(doc)
    }

    /// Parse the policies.
    pub fn selector(&self) -> Result<PolicySelector, String> {
        selector_from(&self.document()?)
    }

    /// Check the section (policies parse, secret names and networks are valid, no reserved
    /// variable is used as a secret).
    pub fn validate(&self, reserved_env: &[&str]) -> Result<(), String> {
        self.selector()?;
        for var in &self.secrets.env {
            SecretName::new(var.clone()).map_err(|e| format!("egress.secrets.env: {e}"))?;
            if reserved_env.contains(&var.as_str()) || var.starts_with("ANTHROPIC_") {
                return Err(format!(
                    "egress.secrets.env: {var} holds a control-plane credential and cannot be a secret"
                ));
            }
        }
        let guard = AddressGuard::default();
        for n in &self.permit_networks {
            let (ip, prefix) =
                parse_network(n).map_err(|e| format!("egress.permit_networks: {e}"))?;
            guard
                .permit_network(ip, prefix)
                .map_err(|e| format!("egress.permit_networks: {e}"))?;
        }
        Ok(())
    }
}

fn selector_from(doc: &serde_json::Value) -> Result<PolicySelector, String> {
    PolicySelector::from_json(doc.to_string().as_bytes())
        .map_err(|e| format!("egress.policies: {e}"))
}

/// Read and parse a policy file; its modification stamp with it.
fn read_policy_file(path: &Path) -> Result<((SystemTime, u64), serde_json::Value), String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let stamp = (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
    );
    let mut text = String::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_POLICY_BYTES {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    let v = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((stamp, v))
}

/// Audit records to the log and the state store.
struct Both(TracingAuditSink, StateAuditSink);

impl AuditSink for Both {
    fn record(&self, r: AuditRecord) {
        self.0.record(r.clone());
        self.1.record(r);
    }
}

/// The running egress wiring of `cma run`.
pub struct Egress {
    /// The wiring the host uses.
    pub wiring: Arc<SessionEgress>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Egress {
    /// Build the proxy and its wiring (inside the runtime).
    pub fn start(config: &EgressConfig, state: Arc<dyn StateStore>) -> Result<Egress, String> {
        let loaded = match &config.policies {
            Some(Policies::File(path)) => stamp(path),
            _ => None,
        };
        let store = Arc::new(PolicyStore::new(config.selector()?));
        let memory = MemorySecretStore::new();
        for var in &config.secrets.env {
            let name = SecretName::new(var.clone()).map_err(|e| e.to_string())?;
            match std::env::var_os(var) {
                Some(v) => memory.insert(name, Secret::new(v.into_encoded_bytes())),
                None => {
                    tracing::warn!(variable = %var, "egress secret variable is not set; requests that need it are refused")
                }
            }
        }
        let mut secrets = SecretStores::new().with(memory);
        if let Some(dir) = &config.secrets.dir {
            secrets = secrets.with(FileSecretStore::new(dir));
        }
        let guard = AddressGuard::with_host_addresses();
        for n in &config.permit_networks {
            let (ip, prefix) = parse_network(n)?;
            guard
                .permit_network(ip, prefix)
                .map_err(|e| e.to_string())?;
        }
        let mut audit_config = StateAuditConfig::default();
        audit_config.retention = Duration::from_secs(config.audit_retention_seconds);
        let audit = StateAuditSink::new(state.clone(), audit_config);
        let proxy = EgressProxy::builder(store.clone())
            .secrets(secrets)
            .audit(Both(TracingAuditSink, audit))
            .address_guard(guard)
            .build()
            .map_err(|e| format!("egress proxy: {e}"))?;
        let wiring = Arc::new(SessionEgress::new(proxy).with_state_store(state));
        let mut tasks = Vec::new();
        if let Some(t) = wiring.watch_policies() {
            tasks.push(t);
        }
        if let Some(Policies::File(path)) = &config.policies
            && config.reload_seconds > 0
        {
            tasks.push(tokio::spawn(reload_loop(
                path.clone(),
                config.default.clone(),
                Duration::from_secs(config.reload_seconds),
                store,
                loaded,
            )));
        }
        Ok(Egress { wiring, tasks })
    }

    /// Stop the proxy and its tasks.
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.wiring.shutdown();
    }
}

/// A file's modification time and size.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// Reload the policy file whenever its modification time or size differs from `last` (taken
/// before the policies in use were read, so an edit in between is not missed).
async fn reload_loop(
    path: PathBuf,
    default: Option<String>,
    every: Duration,
    store: Arc<PolicyStore>,
    mut last: Option<(SystemTime, u64)>,
) {
    loop {
        tokio::time::sleep(every).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let loaded = read_policy_file(&path).and_then(|(_, mut doc)| {
            if let (Some(d), Some(obj)) = (&default, doc.as_object_mut()) {
                obj.insert("default".into(), serde_json::Value::String(d.clone()));
            }
            selector_from(&doc)
        });
        match loaded {
            Ok(selector) => {
                let ids: Vec<String> = selector
                    .policies()
                    .iter()
                    .map(|p| format!("{} {}", p.id(), p.fingerprint()))
                    .collect();
                store.replace(selector);
                tracing::info!(file = %path.display(), policies = ?ids, "egress policies reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "the egress policy file no longer parses; the previous policies stay")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> EgressConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn sections_are_checked() {
        let ok = config(serde_json::json!({
            "policies": {"policies": [{"id": "p", "apply_to_all": true,
                "rules": [{"type": "allow", "host": "pypi.org"}]}]},
            "secrets": {"env": ["GITHUB_TOKEN"]},
            "permit_networks": ["10.20.0.0/16"]
        }));
        ok.validate(&["ANTHROPIC_ENVIRONMENT_KEY"]).unwrap();
        for bad in [
            serde_json::json!({"default": "maybe"}),
            serde_json::json!({"policies": {"policies": [{"id": "p", "rules": [{"type": "allow"}]}]}}),
            serde_json::json!({"secrets": {"env": ["ANTHROPIC_ENVIRONMENT_KEY"]}}),
            serde_json::json!({"secrets": {"env": ["CMA_WEBHOOK_SECRET"]}}),
            serde_json::json!({"secrets": {"env": ["../x"]}}),
            serde_json::json!({"permit_networks": ["127.0.0.0/16"]}),
            serde_json::json!({"permit_networks": ["10.0.0.0"]}),
            serde_json::json!({"policies": "/nonexistent/egress.json"}),
        ] {
            let c = config(bad.clone());
            assert!(
                c.validate(&["ANTHROPIC_ENVIRONMENT_KEY", "CMA_WEBHOOK_SECRET"])
                    .is_err(),
                "{bad}"
            );
        }
        assert!(
            serde_json::from_value::<EgressConfig>(serde_json::json!({"secrets": {"vault": "x"}}))
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_edited_policy_file_is_reloaded_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.json");
        let doc = |id: &str| {
            serde_json::json!({"policies": [{"id": id, "apply_to_all": true,
                "rules": [{"type": "allow", "host": "pypi.org"}]}]})
            .to_string()
        };
        std::fs::write(&path, doc("pol_one")).unwrap();
        let c = config(serde_json::json!({"policies": path}));
        let loaded = stamp(&path);
        let store = Arc::new(PolicyStore::new(c.selector().unwrap()));
        let task = tokio::spawn(reload_loop(
            path.clone(),
            None,
            Duration::from_millis(20),
            store.clone(),
            loaded,
        ));
        let current = |s: &PolicyStore| s.current().policies()[0].id().to_owned();
        assert_eq!(current(&store), "pol_one");
        std::fs::write(&path, doc("pol_second")).unwrap();
        let mut seen = false;
        for _ in 0..200 {
            if current(&store) == "pol_second" {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "the edit was not picked up");
        std::fs::write(&path, "{ not json").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            current(&store),
            "pol_second",
            "a broken file keeps the policies"
        );
        task.abort();
    }

    #[test]
    fn the_default_overrides_the_document() {
        let c = config(
            serde_json::json!({"policies": {"default": "allow", "policies": []}, "default": "deny"}),
        );
        assert_eq!(
            c.selector().unwrap().default_action(),
            cma_egress::DefaultAction::Deny
        );
        let c = config(serde_json::json!({}));
        assert_eq!(
            c.selector().unwrap().default_action(),
            cma_egress::DefaultAction::Deny
        );
    }
}
