//! A scripted session in the emulator, through the control plane, on Docker with egress.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cma_core::control::egress::SessionEgress;
use serde_json::json;

use super::egress_support::{World, secret, sha256_hex};
use super::{assert_no_secret, docker_support, egress_support};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_reaches_an_allowed_server_with_an_injected_key_and_not_a_denied_one() {
    use cma_core::client::{Client, ClientConfig, Credential};
    use cma_core::control::host::{SandboxHost, SandboxHostConfig};
    use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
    use cma_core::emulator::{Emulator, EmulatorConfig, Scenario};
    use cma_core::runner::session::RunnerConfig;

    egress_support::captured_logs();
    let world = World::start();
    let proxy = world.proxy(None);
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let gateway = backend.gateway().unwrap();
    let egress = Arc::new(SessionEgress::new(proxy.proxy.clone()));
    let bound = egress
        .listen_for("docker", SocketAddr::new(gateway, 0))
        .await
        .unwrap();
    let _port = super::PortGuard(backend.clone(), bound.port());
    let calls = [
        "curl -sS --max-time 8 http://local.test/e2e/curl",
        "python3 -c \"import urllib.request as u; r = u.urlopen('http://local.test/e2e/urllib', timeout=8); print(r.status, r.read().decode())\"",
        "curl -sS --max-time 8 -o /dev/null -w '%{http_code}' http://denied.test/e2e/denied",
        "python3 -c \"import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://denied.test/e2e/denied-urllib', timeout=8)\nexcept e.HTTPError as x: print(x.code, x.read().decode())\"",
    ];
    let scenario = Scenario::from_json(
        &json!({
            "environments": [{"id": "env_egress", "name": "egress", "environment_key": "envkey_egress"}],
            "sessions": [{"id": "sesn_a", "environment": "env_egress",
                "calls": calls.iter().map(|c| json!({"name": "bash", "input": {"command": c}})).collect::<Vec<_>>(),
                "end": "terminate"}]
        })
        .to_string(),
    )
    .unwrap();
    let emulator = Emulator::start(EmulatorConfig::default().scenario(scenario))
        .await
        .unwrap();
    let env = emulator.environments()[0].clone();
    let host = SandboxHost::builder()
        .backend(backend)
        .egress(egress.clone())
        .config(SandboxHostConfig {
            keep_warm: Duration::from_secs(1),
            ..SandboxHostConfig::default()
        })
        .build()
        .unwrap();
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emulator.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let plane = ControlPlane::builder(
        client,
        env.id.clone(),
        Credential::environment_key(env.key.clone()),
        Arc::new(host),
    )
    .config(ControlPlaneConfig {
        concurrency: 1,
        runner: RunnerConfig {
            max_idle: Some(Duration::from_secs(2)),
            ..RunnerConfig::default()
        },
        ..ControlPlaneConfig::default()
    })
    .build()
    .unwrap();
    let poller = {
        let plane = plane.clone();
        tokio::spawn(async move { plane.run().await })
    };
    let done = emulator
        .wait_for(Duration::from_secs(120), |e| {
            let (sessions, ended, work_over) = e.scripted_progress();
            sessions == ended && work_over
        })
        .await;
    plane.shutdown(Duration::from_secs(5)).await;
    let _ = poller.await;
    assert!(done, "the scripted session did not finish");

    let results = emulator.tool_results();
    assert_eq!(results.len(), calls.len(), "{results:#?}");
    let text = |i: usize| {
        results[i].content[0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let digest = sha256_hex(secret());
    let curl: serde_json::Value =
        serde_json::from_str(text(0).trim()).unwrap_or_else(|_| panic!("{}", text(0)));
    assert_eq!(curl["path"], "/e2e/curl");
    assert_eq!(
        curl["headers"]["x-api-key"],
        digest.as_str(),
        "the key was injected"
    );
    assert!(
        text(1).starts_with("200 ") && text(1).contains(&digest),
        "{}",
        text(1)
    );
    assert_eq!(text(2).trim(), "403");
    assert!(
        text(3).starts_with("403 ") && text(3).contains("egress denied"),
        "{}",
        text(3)
    );
    for i in 0..calls.len() {
        assert_no_secret(&format!("tool result {i}"), text(i).as_bytes());
    }
    let logs = world.logs();
    assert!(
        logs.contains("GET /e2e/curl ") && logs.contains("GET /e2e/urllib "),
        "{logs}"
    );
    assert!(!logs.contains("/e2e/denied"), "{logs}");

    // The audit records match what the session did, one per request, in order.
    let records: Vec<_> = proxy
        .audit
        .records()
        .into_iter()
        .filter(|r| r.path.as_deref().is_some_and(|p| p.starts_with("/e2e/")))
        .collect();
    type Summary = (String, String, bool, Option<u16>, Vec<String>);
    let summary: Vec<Summary> = records
        .iter()
        .map(|r| {
            (
                r.host.clone(),
                r.path.clone().unwrap_or_default(),
                r.verdict == cma_egress::policy::Verdict::Allow,
                r.status,
                r.injected.clone(),
            )
        })
        .collect();
    let key = vec!["x-api-key".to_owned()];
    assert_eq!(
        summary,
        vec![
            (
                "local.test".into(),
                "/e2e/curl".into(),
                true,
                Some(200),
                key.clone()
            ),
            (
                "local.test".into(),
                "/e2e/urllib".into(),
                true,
                Some(200),
                key.clone()
            ),
            (
                "denied.test".into(),
                "/e2e/denied".into(),
                false,
                Some(403),
                vec![]
            ),
            (
                "denied.test".into(),
                "/e2e/denied-urllib".into(),
                false,
                Some(403),
                vec![]
            ),
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r.session_id.as_deref() == Some("sesn_a"))
    );
    let sandbox_ids: std::collections::BTreeSet<_> =
        records.iter().map(|r| r.sandbox_id.clone()).collect();
    assert_eq!(
        sandbox_ids.len(),
        1,
        "one sandbox served the session: {sandbox_ids:?}"
    );
    assert!(
        egress.proxy().registry().is_empty(),
        "the sandbox was detached when the session ended"
    );
    emulator.shutdown().await;
}
