//! The scenarios the official SDK worker is checked against (`tests/sdk/*.json`, see
//! `sdk_conformance.rs`), run by our control plane instead: `ControlPlane::run` with a
//! `SandboxHost` over the isolate backend and the official toolset, against the emulator loaded
//! from the same files — including `scenario-faults.json` (a 412 on the first heartbeat, a stream
//! cut after two frames, a 429 with `retry-after` on a result send).
//!
//! What is compared is the runner's behaviour, not tool output (the isolate backend has no shell,
//! so `bash` calls are answered with an error naming `execute`): every call that may run is
//! answered, once unless a lease was lost (a worker that lost its lease may have run a call
//! before it knew), calls denied by the user or by policy are never answered, and the last work
//! item of each session ends `stopped`.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
use cma_core::control::select::Placement;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{Emulator, EmulatorConfig, Scenario, ScriptEnd};
use cma_core::protocol::WorkState;
use cma_sandbox::isolate::IsolateBackend;
use serde_json::Value;
use support::{WAIT, runner_config, text};

fn scenario_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sdk")
        .join(file)
}

async fn run_scenario(file: &str) {
    let scenario = Scenario::from_file(scenario_path(file)).expect("scenario loads");
    let emu = Emulator::start(
        EmulatorConfig::default()
            .scenario(scenario.clone())
            .keepalive(Duration::from_millis(200)),
    )
    .await
    .expect("emulator");
    let env = &scenario.environments[0];
    let key = Credential::environment_key(env.environment_key.clone().expect("a key"));
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emu.base_url())
            .worker_id("wrk-scenarios")
            .build()
            .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(IsolateBackend::new(dir.path()).unwrap());
    let host = Arc::new(SandboxHost::from_parts(
        [backend as Arc<dyn cma_sandbox::SandboxBackend>],
        Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig::default(),
    ));
    let plane = ControlPlane::builder(client, env.id.clone(), key, host)
        .config(ControlPlaneConfig {
            concurrency: 2,
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .build()
        .unwrap();
    let run = tokio::spawn({
        let p = plane.clone();
        async move { p.run().await }
    });
    let sids = emu.session_ids();
    let done = emu
        .wait_for(WAIT, |e| {
            sids.iter().all(|sid| {
                e.script_finished(sid)
                    && e.session_work(sid)
                        .last()
                        .is_some_and(|w| w.state == WorkState::Stopped)
            })
        })
        .await;
    assert!(done, "{file}: the scripted sessions did not finish");
    plane.shutdown(Duration::from_secs(5)).await;
    run.await
        .unwrap()
        .expect("the plane ran without a fatal error");

    let lease_faults = scenario.faults.iter().any(|f| f.lease_lost);
    for (sess, sid) in scenario.sessions.iter().zip(&sids) {
        let calls: Vec<Value> = emu
            .session_events(sid)
            .into_iter()
            .filter(|e| e["type"] == "agent.tool_use")
            .collect();
        assert_eq!(calls.len(), sess.calls.len(), "{file}: every call was made");
        let results = emu.tool_results();
        for (scripted, event) in sess.calls.iter().zip(&calls) {
            let id = event["id"].as_str().unwrap();
            let answers: Vec<_> = results.iter().filter(|r| r.tool_use_id == id).collect();
            let denied = scripted.evaluated_permission.as_deref() == Some("deny")
                || scripted
                    .confirmation
                    .as_ref()
                    .is_some_and(|c| c.result != "allow");
            if denied {
                assert!(
                    answers.is_empty(),
                    "{file}: denied {} was answered",
                    scripted.name
                );
                continue;
            }
            if lease_faults {
                assert!(!answers.is_empty(), "{file}: {} unanswered", scripted.name);
            } else {
                assert_eq!(
                    answers.len(),
                    1,
                    "{file}: {} answered {} times",
                    scripted.name,
                    answers.len()
                );
            }
            for a in &answers {
                assert_eq!(a.is_error, answers[0].is_error, "{file}: repeats agree");
                if scripted.name == "bash" {
                    assert_eq!(a.is_error, Some(true));
                    assert!(text(a).contains("execute"), "{file}: {}", text(a));
                }
            }
        }
        let work = emu.session_work(sid);
        assert_eq!(work.last().unwrap().state, WorkState::Stopped);
        if lease_faults {
            // The same item: 412, no stop, re-queued, acked again, finished and stopped.
            let w = format!("/work/{}/", work.last().unwrap().id);
            let reqs = emu.requests();
            let mine: Vec<_> = reqs.iter().filter(|r| r.path.contains(&w)).collect();
            let lost = mine
                .iter()
                .position(|r| r.path.ends_with("/heartbeat") && r.status == Some(412))
                .expect("a 412");
            let reacked = lost
                + mine[lost..]
                    .iter()
                    .position(|r| r.path.ends_with("/ack"))
                    .expect("claimed again");
            assert!(
                !mine[lost..reacked]
                    .iter()
                    .any(|r| r.path.ends_with("/stop")),
                "{file}: a stop call after the lost lease"
            );
            assert!(mine[reacked..].iter().any(|r| r.path.ends_with("/stop")));
        }
        if sess.end == ScriptEnd::Terminate {
            assert_eq!(
                emu.session_status(sid),
                Some(cma_core::protocol::SessionStatus::Terminated)
            );
        }
    }
    assert_eq!(emu.faults_remaining(), 0, "{file}: every fault was hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_happy_path_scenario_runs_on_the_control_plane() {
    run_scenario("scenario.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_gated_and_idle_scenario_runs_on_the_control_plane() {
    run_scenario("scenario-idle.json").await;
}

/// The lease is lost on the first heartbeat: the plane leaves the item without a stop call, the
/// emulator re-queues it when the taker's lease runs out, and the plane claims it again and
/// finishes it; the other faults are survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_fault_scenario_runs_on_the_control_plane() {
    run_scenario("scenario-faults.json").await;
}
