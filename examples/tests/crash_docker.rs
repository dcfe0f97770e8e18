//! Killing `cma run` (SIGKILL) mid-session on the Docker backend and starting it again: the
//! sandbox is re-adopted, the work item is released by its lease and finished by the new process,
//! the session's files survive, nothing runs that the state store does not know about, and once
//! the session terminates its sandbox is destroyed.
//! Needs a running dockerd and the test image (`.ci/setup.d/20-docker.sh`).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cma_core::emulator::{Emulator, EmulatorConfig, Script, ScriptEnd, ScriptedCall};
use cma_sandbox::SandboxBackend;
use cma_sandbox::docker::{DockerBackend, DockerConfig};
use cma_store::state::{SandboxQuery, SqliteStateStore, StateStore};
use serde_json::json;

fn image() -> String {
    std::env::var("CMA_DOCKER_IMAGE").unwrap_or_else(|_| "cma-sandbox-test:2".into())
}

fn call(name: &str, input: serde_json::Value) -> ScriptedCall {
    serde_json::from_value(json!({"name": name, "input": input})).expect("call")
}

fn spawn_run(config: &std::path::Path, key: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cma"))
        .args(["run", "--config"])
        .arg(config)
        .env("ANTHROPIC_ENVIRONMENT_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cma run")
}

/// Removes the test's containers whatever happens.
struct Sweep(DockerBackend);

impl Drop for Sweep {
    fn drop(&mut self) {
        let backend = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = backend.reconcile(&HashSet::new()).await;
                });
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_cma_run_mid_session_loses_nothing_and_leaks_nothing() {
    crash_and_restart(0).await;
}

/// The same with a warm pool: the session's sandbox is a claimed pool container, whose identity
/// survives the kill in the claim files under the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_warm_pool_too() {
    crash_and_restart(1).await;
}

async fn crash_and_restart(prestart: usize) {
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("crash-{}", uuid_like());
    let mut cfg = DockerConfig::new(image());
    cfg.instance = instance.clone();
    // The same claim files `cma run` keeps (its data dir), so pool sandboxes list the same.
    cfg.state_dir = dir.path().join("data/docker");
    let backend = DockerBackend::connect(cfg).await.unwrap_or_else(|e| {
        panic!("this test needs dockerd and the test image (source .ci/setup.d/20-docker.sh): {e}")
    });
    let sweep = Sweep(backend.clone());

    let emu = Emulator::start(EmulatorConfig::default().lease_ttl_seconds(2))
        .await
        .expect("emulator");
    let env = emu.add_environment("env_crash", "crash").expect("env");
    let sid = emu
        .create_session(
            &env.id,
            Script::new(
                vec![
                    call(
                        "write",
                        json!({"file_path": "kept.txt", "content": "alive"}),
                    ),
                    call("bash", json!({"command": "sleep 3; echo slept"})),
                    call("read", json!({"file_path": "kept.txt"})),
                ],
                ScriptEnd::Terminate,
            ),
        )
        .expect("session");

    let config = dir.path().join("cma.json");
    std::fs::write(
        &config,
        json!({
            "environment_id": env.id,
            "base_url": emu.base_url(),
            "backend": "docker",
            "docker_image": image(),
            "docker_instance": instance,
            "data_dir": dir.path().join("data"),
            "max_idle_seconds": 2,
            "docker_prestart": prestart,
        })
        .to_string(),
    )
    .unwrap();

    // Run 1: killed while the bash call is running.
    let mut first = spawn_run(&config, &env.key);
    let wrote = emu
        .wait_for(Duration::from_secs(60), |e| e.tool_results().len() == 1)
        .await;
    assert!(wrote, "the first call never finished");
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let running = backend.list().await.expect("list");
    assert_eq!(
        running.len(),
        1,
        "the session's sandbox outlives the killed process"
    );
    let claim = dir
        .path()
        .join("data/docker/claims")
        .join(format!("i-{instance}"))
        .join(format!("{}.json", running[0].id.as_str()));
    assert_eq!(
        claim.exists(),
        prestart > 0,
        "with a pool the session's sandbox is a claimed pool container"
    );

    // Run 2: recovers from the state store, re-adopts the sandbox, finishes the item.
    let mut second = spawn_run(&config, &env.key);
    let done = emu
        .wait_for(Duration::from_secs(90), |e| {
            let (total, ended, work_over) = e.scripted_progress();
            total == ended && work_over
        })
        .await;
    let results = emu.tool_results();
    assert!(
        done,
        "the session did not finish after the restart: {results:?}"
    );
    let text = |i: usize| results[i].content.to_string();
    assert!(text(1).contains("slept"), "{results:?}");
    assert!(
        text(2).contains("alive"),
        "the file survived the crash: {results:?}"
    );
    assert!(
        results.iter().all(|r| r.is_error == Some(false)),
        "{results:?}"
    );
    let items = emu.session_work(&sid);
    assert!(
        items.iter().all(|w| w.state.as_str() == "stopped"),
        "{items:?}"
    );

    // Nothing runs that the state store does not know.
    let store = SqliteStateStore::open(dir.path().join("data/state.sqlite"))
        .await
        .expect("state");
    let known: HashSet<String> = store
        .list_sandboxes(&SandboxQuery::backend("docker"))
        .await
        .expect("sandboxes")
        .into_iter()
        .map(|r| r.sandbox_id)
        .collect();
    let live = backend.list().await.expect("list");
    assert!(live.len() <= 1, "one sandbox at most: {live:?}");
    for info in &live {
        assert!(known.contains(info.id.as_str()), "unknown sandbox {info:?}");
    }
    // Re-adopted, not replaced: the second process created no sandbox for the session; and as
    // the session terminated, its sandbox is gone rather than kept warm.
    let log = store
        .list_transitions(&sid, 0, 1000)
        .await
        .expect("transitions");
    let events = |name: &str| log.iter().filter(|t| t.event == name).collect::<Vec<_>>();
    let readopted = events("sandbox_readopted");
    assert_eq!(readopted.len(), 1, "{log:#?}");
    assert_eq!(readopted[0].detail, running[0].id.as_str());
    assert_eq!(events("sandbox_created").len(), 1, "{log:#?}");
    assert_eq!(events("sandbox_destroyed").len(), 1, "{log:#?}");
    assert!(
        live.iter().all(|i| i.id != running[0].id),
        "the terminated session's sandbox is not kept: {live:?}"
    );

    assert!(
        Command::new("kill")
            .args(["-TERM", &second.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "cma run did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    drop(sweep);
    emu.shutdown().await;
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", std::process::id(), t.subsec_nanos())
}
