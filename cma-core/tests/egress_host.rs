//! `SandboxHost` with egress on the isolate backend: the session's policy follows its webhook
//! data, is recorded with its fingerprint, reaches a reused warm sandbox, and the sandbox is
//! detached when it goes. No network is needed: allowed requests to names that do not resolve
//! fail as fetch failures, refused ones as `egress denied`.

use std::sync::Arc;

use cma_core::control::egress::SessionEgress;
use cma_core::control::host::SandboxHost;
use cma_core::egress::{EgressProxy, PolicySelector, PolicyStore, StaticResolver};
use cma_core::protocol::{Session, Work};
use cma_core::runner::lease::LeaseEnd;
use cma_core::runner::session::SessionHost;
use cma_core::sandbox::isolate::IsolateBackend;
use cma_core::sandbox::{ExecuteRequest, Sandbox, SandboxBackend, SandboxSpec};
use cma_core::store::state::{MemoryStateStore, StateStore};
use cma_core::webhook::WebhookEvent;
use serde_json::json;

fn work() -> Work {
    serde_json::from_value(
        json!({"type": "work", "id": "work_1", "environment_id": "env_1",
        "state": "queued", "data": {"type": "session", "id": "sesn_1"},
        "created_at": "2026-05-01T00:00:00Z"}),
    )
    .unwrap()
}

fn session(tier: &str) -> Session {
    serde_json::from_value(
        json!({"type": "session", "id": "sesn_1", "status": "running",
        "agent": {"id": "agent_1", "skills": []}, "resources": [], "metadata": {"team": tier}}),
    )
    .unwrap()
}

fn webhook(tier: &str) -> WebhookEvent {
    serde_json::from_value(json!({"type": "event", "id": format!("wevt_{tier}"),
        "created_at": "2026-05-01T00:00:00Z",
        "data": {"type": "session.status_run_started", "id": "sesn_1",
                 "organization_id": "org_1", "tier": tier}}))
    .unwrap()
}

async fn fetch(sb: &dyn Sandbox, url: &str) -> String {
    let code = format!(
        "(async () => {{ try {{ return 'status ' + (await fetch('{url}')).status; }} \
         catch (e) {{ return e.message; }} }})"
    );
    let out = sb.execute(ExecuteRequest::new(code)).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_wires_isolate_sandboxes_to_the_session_policy() {
    let selector = PolicySelector::from_json(
        json!({"policies": [
            {"id": "pol_gold", "apply_to": [{"field": "webhook.tier", "op": "equals", "value": "gold"}],
             "rules": [{"type": "allow", "host": "gold.test"}]},
            {"id": "pol_team", "apply_to": [{"field": "metadata.team", "op": "equals", "value": "infra"}],
             "rules": [{"type": "allow", "host": "infra.test"}]},
            {"id": "pol_base", "apply_to_all": true, "rules": [{"type": "allow", "host": "base.test"}]}
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let proxy = EgressProxy::builder(Arc::new(PolicyStore::new(selector)))
        .resolver(StaticResolver::new())
        .build()
        .unwrap();
    let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let egress = Arc::new(SessionEgress::new(proxy).with_state_store(state.clone()));
    egress.in_process_for("isolate");
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path())
        .unwrap()
        .with_egress(egress.isolate_hook());
    let host = SandboxHost::builder()
        .backend(backend.clone())
        .egress(egress.clone())
        .state_store(state.clone())
        .build()
        .unwrap();

    let (work, plain) = (work(), session("web"));
    let exec = host.open(&work, &plain).await.unwrap();
    let sandbox = exec.sandbox().unwrap();
    let denied = |s: &str| s.starts_with("egress denied:");
    let allowed = |s: &str| s.starts_with("fetch failed:") && s.contains("cannot resolve");
    assert!(allowed(
        &fetch(sandbox.as_ref(), "https://base.test/").await
    ));
    assert!(denied(&fetch(sandbox.as_ref(), "https://gold.test/").await));
    assert_eq!(
        state
            .get_session("sesn_1")
            .await
            .unwrap()
            .unwrap()
            .egress_policy_id
            .as_deref(),
        Some("pol_base")
    );

    // The last webhook's data selects another policy, from the next request on.
    host.on_webhook(&webhook("gold")).await;
    assert!(allowed(
        &fetch(sandbox.as_ref(), "https://gold.test/").await
    ));
    assert!(denied(&fetch(sandbox.as_ref(), "https://base.test/").await));
    let record = state.get_session("sesn_1").await.unwrap().unwrap();
    assert_eq!(record.egress_policy_id.as_deref(), Some("pol_gold"));
    let gold = state.get_egress_policy("pol_gold").await.unwrap().unwrap();
    assert!(gold.fingerprint.starts_with("fp1-"));
    host.on_webhook(&webhook("silver")).await;

    // The warm sandbox is reused for the next item with the session's new metadata.
    host.close(&work, &plain, &LeaseEnd::RunnerDone).await;
    assert_eq!(host.warm_count(), 1);
    let exec = host.open(&work, &session("infra")).await.unwrap();
    let again = exec.sandbox().unwrap();
    assert_eq!(again.id(), sandbox.id(), "the warm sandbox was reused");
    assert!(allowed(&fetch(again.as_ref(), "https://infra.test/").await));
    assert!(denied(&fetch(again.as_ref(), "https://base.test/").await));

    // Gone with the session: detached before it is destroyed.
    host.close(&work, &plain, &LeaseEnd::RunnerDone).await;
    host.session_ended(&"sesn_1".into()).await;
    assert!(egress.client(sandbox.id().as_str()).is_none());

    // A sandbox the wiring never attached (re-adopted after a restart) is not reused.
    let stray = backend.create(&SandboxSpec::new()).await.unwrap();
    assert!(!egress.refresh("isolate", stray.as_ref(), &plain).await);
    assert!(
        egress.refresh("docker", stray.as_ref(), &plain).await,
        "no egress there"
    );
    let out = fetch(stray.as_ref(), "https://base.test/").await;
    assert!(out.contains("no egress registration"), "{out}");
}
