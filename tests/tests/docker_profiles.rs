//! Per-agent sandboxes on Docker (issue 10, build item 6): one Docker backend, two profiles
//! chosen by agent through placement rules given as data. Each session's container has its
//! profile's image, CPU, memory and process limits and environment (checked with `docker
//! inspect` through bollard), and the agent's tools see that environment. Needs dockerd and the
//! test image (`.ci/setup.d/20-docker.sh`).

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

use std::sync::Arc;
use std::time::Duration;

use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{LABEL_SESSION, SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
use cma_core::control::select::{PlacementRules, RuleSelector};
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{Emulator, EmulatorConfig, Script, ScriptEnd, ScriptedCall};
use cma_core::runner::session::RunnerConfig;
use cma_sandbox::SandboxBackend;
use serde_json::json;

/// Removes the extra image tag even on panic.
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let tag = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(docker) = bollard::Docker::connect_with_socket_defaults() {
                    let _ = docker
                        .remove_image(
                            &tag,
                            None::<bollard::query_parameters::RemoveImageOptions>,
                            None,
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_docker_profiles_are_chosen_by_agent() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let docker = backend.client().clone();
    // A second name for the test image, so the two profiles differ in image too.
    let base = docker_support::image();
    let (repo, _) = base.rsplit_once(':').unwrap_or((base.as_str(), "latest"));
    let tag = format!("profile-{}", uuid::Uuid::new_v4().simple());
    docker
        .tag_image(
            &base,
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some(repo.to_owned()),
                tag: Some(tag.clone()),
            }),
        )
        .await
        .expect("tag the test image");
    let big_image = format!("{repo}:{tag}");
    let _untag = Untag(big_image.clone());

    let rules: PlacementRules = serde_json::from_value(json!({
        "profiles": {
            "small": {"backend": "docker", "image": base, "cpus": 0.5,
                      "memory_bytes": 268_435_456u64, "pids": 64, "env": {"TIER": "small"}},
            "big": {"backend": "docker", "image": big_image, "cpus": 1.5,
                    "memory_bytes": 536_870_912u64, "pids": 128, "env": {"TIER": "big"}}
        },
        "rules": [
            {"agent_ids": ["agent_small"], "profile": "small"},
            {"agent_id_pattern": "agent_big_.*", "profile": "big"}
        ]
    }))
    .unwrap();
    let selector = RuleSelector::new("docker")
        .with_rules(&rules, &["docker"])
        .expect("valid rules");

    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let env = emulator
        .add_environment("env_profiles", "profiles")
        .unwrap();
    let tier = || ScriptedCall::tool("bash", json!({"command": "echo tier=$TIER"}));
    let small = emulator
        .create_session(
            &env.id,
            Script::new(vec![tier()], ScriptEnd::Idle).agent_id("agent_small"),
        )
        .unwrap();
    let big = emulator
        .create_session(
            &env.id,
            Script::new(vec![tier()], ScriptEnd::Idle).agent_id("agent_big_7"),
        )
        .unwrap();

    let backend: Arc<dyn SandboxBackend> = Arc::new(backend);
    let host = Arc::new(SandboxHost::from_parts(
        [backend.clone()],
        Arc::new(selector),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig {
            keep_warm: Duration::from_secs(600),
            ..SandboxHostConfig::default()
        },
    ));
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
        host.clone(),
    )
    .config(ControlPlaneConfig {
        concurrency: 2,
        runner: RunnerConfig {
            max_idle: Some(Duration::from_millis(500)),
            ..RunnerConfig::default()
        },
        ..ControlPlaneConfig::default()
    })
    .build()
    .unwrap();
    assert_eq!(plane.drain().await.unwrap(), 2);
    let answered = emulator
        .wait_for(Duration::from_secs(60), |e| e.tool_results().len() == 2)
        .await;
    assert!(answered, "{:?}", emulator.tool_results());
    for (sid, want) in [(&small, "tier=small"), (&big, "tier=big")] {
        let r = emulator
            .tool_results()
            .into_iter()
            .find(|r| &r.session_id == sid)
            .unwrap();
        assert_eq!(r.content, json!([{"type": "text", "text": want}]), "{sid}");
    }

    // The items end (idle) and both containers are kept warm: inspect them.
    plane.wait_idle().await;
    let listed = backend.list().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for info in listed {
        let sid = info.labels.get(LABEL_SESSION).cloned().unwrap_or_default();
        let c = docker
            .inspect_container(info.id.as_str(), None)
            .await
            .expect("inspect");
        let config = c.config.expect("config");
        let limits = c.host_config.expect("host config");
        let env = config.env.unwrap_or_default();
        let (image, cpus, memory, pids, tier) = if sid == small {
            (&base, 0.5, 268_435_456, 64, "TIER=small")
        } else {
            assert_eq!(sid, big);
            (&big_image, 1.5, 536_870_912, 128, "TIER=big")
        };
        assert_eq!(config.image.as_deref(), Some(image.as_str()), "{sid}");
        assert_eq!(limits.nano_cpus, Some((cpus * 1e9) as i64), "{sid}");
        assert_eq!(limits.memory, Some(memory), "{sid}");
        assert_eq!(limits.pids_limit, Some(pids), "{sid}");
        assert!(env.iter().any(|e| e == tier), "{sid}: {env:?}");
    }
    plane.shutdown(Duration::from_secs(5)).await;
    host.destroy_all_warm().await;
    assert!(backend.list().await.unwrap().is_empty());
    emulator.shutdown().await;
}
