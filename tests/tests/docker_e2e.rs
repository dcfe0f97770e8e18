//! End to end on the Docker backend: a scripted agent in the emulator → the control plane →
//! `SandboxHost` with `DockerBackend` → the official tools inside a container (files through the
//! backend, `bash` as one persistent shell per session), checking every result the emulator
//! recorded. Needs dockerd and the test image (`.ci/setup.d/20-docker.sh`).

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

use std::sync::Arc;
use std::time::Duration;

use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
use cma_core::control::select::RuleSelector;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{Emulator, EmulatorConfig, Scenario};
use cma_core::runner::session::RunnerConfig;
use cma_sandbox::SandboxBackend;
use serde_json::{Value, json};

/// (tool, input, is_error, text) in call order.
fn script() -> Vec<(&'static str, Value, bool, &'static str)> {
    vec![
        (
            "write",
            json!({"file_path": "notes/a.txt", "content": "hello docker\n"}),
            false,
            "wrote 13 bytes to notes/a.txt",
        ),
        (
            "read",
            json!({"file_path": "notes/a.txt"}),
            false,
            "hello docker\n",
        ),
        (
            "bash",
            json!({"command": "cd notes && export X=42 && cat a.txt"}),
            false,
            "hello docker",
        ),
        (
            "bash",
            json!({"command": "pwd; echo $X; id -u"}),
            false,
            "/workspace/notes\n42\n1000",
        ),
        (
            "grep",
            json!({"pattern": "docker"}),
            false,
            "/workspace/notes/a.txt:1:hello docker",
        ),
        (
            "edit",
            json!({"file_path": "notes/a.txt", "old_string": "docker", "new_string": "Docker"}),
            false,
            "edited notes/a.txt (1 replacement(s))",
        ),
        (
            "bash",
            json!({"command": "cat a.txt; false"}),
            true,
            "hello Docker",
        ),
        (
            "glob",
            json!({"pattern": "**/*.txt"}),
            false,
            "/workspace/notes/a.txt",
        ),
        (
            "read",
            json!({"file_path": "/etc/passwd"}),
            true,
            "read: path '/etc/passwd' is outside the session's working directory",
        ),
        (
            "bash",
            json!({"command": "sleep 5", "timeout_ms": 300}),
            true,
            "bash: bash command timed out after 0.3s",
        ),
        (
            "bash",
            json!({"restart": true}),
            false,
            "bash session restarted",
        ),
        ("bash", json!({"command": "pwd"}), false, "/workspace"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_session_runs_on_the_docker_backend() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let calls: Vec<Value> = script()
        .iter()
        .map(|(name, input, _, _)| json!({"name": name, "input": input}))
        .collect();
    let scenario = Scenario::from_json(
        &json!({
            "environments": [{"id": "env_docker", "name": "docker", "environment_key": "envkey_docker"}],
            "sessions": [{"id": "sesn_docker", "environment": "env_docker", "calls": calls, "end": "terminate"}]
        })
        .to_string(),
    )
    .unwrap();
    let emulator = Emulator::start(EmulatorConfig::default().scenario(scenario))
        .await
        .unwrap();
    let env = emulator.environments()[0].clone();
    let backend: Arc<dyn SandboxBackend> = Arc::new(backend);
    let host = SandboxHost::from_parts(
        [backend.clone()],
        Arc::new(RuleSelector::new("docker")),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig {
            keep_warm: Duration::from_secs(1),
            ..SandboxHostConfig::default()
        },
    );
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
        concurrency: 2,
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
        .wait_for(Duration::from_secs(60), |e| {
            let (sessions, ended, work_over) = e.scripted_progress();
            sessions == ended && work_over
        })
        .await;
    plane.shutdown(Duration::from_secs(5)).await;
    let _ = poller.await;
    assert!(done, "the scripted session did not finish");

    let records = emulator.tool_results();
    let want = script();
    assert_eq!(records.len(), want.len(), "{records:#?}");
    for (rec, (name, input, is_error, text)) in records.iter().zip(&want) {
        assert_eq!(rec.name.as_deref(), Some(*name));
        assert_eq!(&rec.input, input);
        assert_eq!(
            rec.is_error.unwrap_or(false),
            *is_error,
            "{name} {input}: {}",
            rec.content
        );
        assert_eq!(
            rec.content,
            json!([{"type": "text", "text": text}]),
            "{name} {input}"
        );
    }
    let listed = backend.list().await.unwrap();
    assert!(
        listed
            .iter()
            .all(|i| i.session_id.as_deref() == Some("sesn_docker")),
        "{listed:?}"
    );
    emulator.shutdown().await;
}
