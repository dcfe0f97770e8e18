//! Sessions that sleep and wake keep their files (issue 4, build item 4 and the sleep/wake
//! acceptance line): a `SandboxHost` with snapshots saves the workspace when a session's work item
//! ends, its sandbox is destroyed (no keep-warm), and the session's next work item — in a fresh
//! sandbox — sees exactly the files it left. Driven by a `ControlPlane` against the emulator.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
use cma_core::control::select::Placement;
use cma_core::control::snapshots::WorkspaceSnapshots;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{Script, ScriptEnd, ScriptedCall};
use cma_core::runner::session::HostError;
use cma_sandbox::Sandbox;
use cma_store::state::StateStore as _;
use futures::StreamExt as _;
use serde_json::json;
use support::*;

/// Snapshots kept in memory as whole workspace archives (what the wiring needs, nothing more).
#[derive(Default)]
struct TarSnapshots {
    saved: Mutex<BTreeMap<String, Vec<Vec<u8>>>>,
}

#[async_trait]
impl WorkspaceSnapshots for TarSnapshots {
    async fn save(&self, session_id: &str, sandbox: &dyn Sandbox) -> Result<String, HostError> {
        let mut stream = sandbox
            .export_workspace()
            .await
            .map_err(|e| HostError::with_source("export", e))?;
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            tar.extend_from_slice(&chunk.map_err(|e| HostError::with_source("export", e))?);
        }
        let mut saved = self.saved.lock().unwrap();
        let list = saved.entry(session_id.to_owned()).or_default();
        list.push(tar);
        Ok(format!("{session_id}#{}", list.len()))
    }

    async fn restore_latest(
        &self,
        session_id: &str,
        sandbox: &dyn Sandbox,
    ) -> Result<Option<String>, HostError> {
        let latest = {
            let saved = self.saved.lock().unwrap();
            saved
                .get(session_id)
                .and_then(|l| l.last().cloned().map(|t| (l.len(), t)))
        };
        let Some((n, tar)) = latest else {
            return Ok(None);
        };
        let stream = futures::stream::iter([Ok(bytes::Bytes::from(tar))]).boxed();
        sandbox
            .import_workspace(stream)
            .await
            .map_err(|e| HostError::with_source("import", e))?;
        Ok(Some(format!("{session_id}#{n}")))
    }
}

fn call(name: &str, input: serde_json::Value) -> ScriptedCall {
    serde_json::from_value(json!({"name": name, "input": input})).expect("call")
}

/// Which backend a sleep/wake runs on: the calls that need code (removing a file, checking bytes)
/// use `execute` (JavaScript) on isolate and `bash` on Docker.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Isolate,
    Docker,
}

fn code(flavor: Flavor, js: &str, sh: &str) -> ScriptedCall {
    match flavor {
        Flavor::Isolate => call("execute", json!({"code": js})),
        Flavor::Docker => call("bash", json!({"command": sh})),
    }
}

async fn sleep_and_wake(snapshots: Arc<dyn WorkspaceSnapshots>) {
    let h = Harness::new().await;
    sleep_and_wake_on(&h, h.isolate(), Flavor::Isolate, snapshots).await;
}

async fn sleep_and_wake_on(
    h: &Harness,
    backend: Arc<dyn cma_sandbox::SandboxBackend>,
    flavor: Flavor,
    snapshots: Arc<dyn WorkspaceSnapshots>,
) {
    let name = backend.name().to_owned();
    let state = Arc::new(cma_store::state::MemoryStateStore::new());
    let host = Arc::new(
        SandboxHost::from_parts(
            [backend.clone()],
            Arc::new(move |_: &Placement<'_>| name.clone()),
            Arc::new(ToolsetFactory::new()),
            SandboxHostConfig {
                keep_warm: Duration::ZERO,
                ..SandboxHostConfig::default()
            },
        )
        .with_snapshots(snapshots.clone())
        .state_store(state.clone()),
    );
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), host.clone())
        .config(ControlPlaneConfig {
            concurrency: 2,
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .build()
        .expect("plane");
    let poller = tokio::spawn({
        let p = plane.clone();
        async move { p.run().await }
    });

    // Turn 1: the agent leaves files behind, then the session goes idle and its item ends.
    let sid = h.session(
        vec![
            write("notes/todo.md", "# todo\n- sleep\n- wake\n"),
            write("deep/a/b/c/d.txt", "deep"),
            code(
                flavor,
                "fs.writeFile('bin.dat', '\\u0000\\u00ff\\u0001'); fs.writeFile('empty.txt', '')",
                "printf '\\000\\303\\277\\001' > bin.dat && : > empty.txt",
            ),
            write("gone.txt", "temporary"),
            code(flavor, "fs.remove('gone.txt')", "rm gone.txt"),
        ],
        ScriptEnd::Idle,
    );
    h.wait_results(&sid, 5).await;
    let first = h.results(&sid);
    assert!(first.iter().all(|r| r.is_error == Some(false)), "{first:?}");
    let stopped = h
        .emu
        .wait_for(WAIT, |e| {
            let items = e.session_work(&sid);
            items.len() == 1 && items.iter().all(|w| w.state.as_str() == "stopped")
        })
        .await;
    assert!(stopped, "the first item ends after the idle grace");
    // No sandbox survives the item: the workspace lives only in the snapshot now.
    let mut gone = false;
    for _ in 0..200 {
        if host.warm_count() == 0 && backend.list().await.expect("list").is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "the sandbox was destroyed after its snapshot");
    // The state store knows the snapshot the session sleeps in.
    let log = state.list_transitions(&sid, 0, 1000).await.expect("log");
    let saved: Vec<&str> = log
        .iter()
        .filter(|t| t.event == "snapshot_saved")
        .map(|t| t.detail.as_str())
        .collect();
    assert_eq!(saved.len(), 1, "{log:?}");
    let record = state
        .get_session(&sid)
        .await
        .expect("get")
        .expect("recorded");
    assert_eq!(
        record.last_snapshot.as_ref().map(|s| s.as_str()),
        cma_store::SnapshotId::from_hex(saved[0])
            .as_ref()
            .map(|s| s.as_str()),
        "the record names the snapshot when the store's ids are snapshot ids"
    );

    // Turn 2: the user wakes the session; the agent lists and reads what it left.
    h.emu
        .continue_session(
            &sid,
            Script::new(
                vec![
                    call("glob", json!({"pattern": "**/*"})),
                    read("notes/todo.md"),
                    read("deep/a/b/c/d.txt"),
                    code(
                        flavor,
                        "const b = fs.readFile('bin.dat'); console.log(JSON.stringify([b.length, b.charCodeAt(0), b.charCodeAt(1), fs.readFile('empty.txt').length]))",
                        "od -An -tu1 bin.dat | tr -s ' ' | sed 's/^ //'; wc -c < empty.txt",
                    ),
                ],
                ScriptEnd::Terminate,
            ),
        )
        .expect("continue");
    h.wait_results(&sid, 9).await;
    let results = h.results(&sid);
    let second: Vec<String> = results[5..].iter().map(text).collect();
    let mut listed: Vec<&str> = second[0].lines().collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "/workspace/bin.dat",
            "/workspace/deep",
            "/workspace/deep/a",
            "/workspace/deep/a/b",
            "/workspace/deep/a/b/c",
            "/workspace/deep/a/b/c/d.txt",
            "/workspace/empty.txt",
            "/workspace/notes",
            "/workspace/notes/todo.md",
        ],
        "exactly the files left behind (gone.txt was removed before the sleep)"
    );
    assert!(
        second[1].contains("- sleep") && second[1].contains("- wake"),
        "{}",
        second[1]
    );
    assert!(second[2].contains("deep"), "{}", second[2]);
    let bytes = match flavor {
        Flavor::Isolate => "[3,0,255,0]",
        Flavor::Docker => "0 195 191 1\n0",
    };
    assert_eq!(second[3].trim(), bytes, "binary and empty files intact");
    assert!(
        results[5..].iter().all(|r| r.is_error == Some(false)),
        "{results:?}"
    );
    assert_eq!(h.emu.session_work(&sid).len(), 2, "two work items");

    plane.shutdown(Duration::from_secs(5)).await;
    let _ = poller.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_session_sees_the_files_it_left_from_a_snapshot() {
    sleep_and_wake(Arc::new(TarSnapshots::default())).await;
}

/// Without snapshots the same sleep loses the workspace: the wiring above is what keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_snapshots_a_destroyed_sandbox_loses_its_files() {
    let h = Harness::new().await;
    let host = Arc::new(SandboxHost::from_parts(
        [h.isolate()],
        Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig {
            keep_warm: Duration::ZERO,
            ..SandboxHostConfig::default()
        },
    ));
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), host)
        .config(ControlPlaneConfig {
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .build()
        .expect("plane");
    let poller = tokio::spawn({
        let p = plane.clone();
        async move { p.run().await }
    });
    let sid = h.session(vec![write("kept.txt", "kept")], ScriptEnd::Idle);
    h.wait_results(&sid, 1).await;
    assert!(
        h.emu
            .wait_for(WAIT, |e| e
                .session_work(&sid)
                .iter()
                .all(|w| w.state.as_str() == "stopped"))
            .await
    );
    h.emu
        .continue_session(
            &sid,
            Script::new(vec![read("kept.txt")], ScriptEnd::Terminate),
        )
        .expect("continue");
    h.wait_results(&sid, 2).await;
    let results = h.results(&sid);
    assert_eq!(results[1].is_error, Some(true), "{results:?}");
    plane.shutdown(Duration::from_secs(5)).await;
    let _ = poller.await;
}

/// Snapshots that cannot be restored: the session is not run on an empty workspace; its item
/// fails and is released, and none of its calls is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_snapshot_cannot_be_restored_is_not_run_empty() {
    struct Broken;
    #[async_trait]
    impl WorkspaceSnapshots for Broken {
        async fn save(&self, _: &str, _: &dyn Sandbox) -> Result<String, HostError> {
            Ok("snap".into())
        }
        async fn restore_latest(
            &self,
            session_id: &str,
            _: &dyn Sandbox,
        ) -> Result<Option<String>, HostError> {
            Err(HostError::new(format!(
                "no snapshot of {session_id} verifies"
            )))
        }
    }
    let h = Harness::new().await;
    let host = Arc::new(
        SandboxHost::from_parts(
            [h.isolate()],
            Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
            Arc::new(ToolsetFactory::new()),
            SandboxHostConfig::default(),
        )
        .with_snapshots(Arc::new(Broken)),
    );
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), host.clone())
        .config(ControlPlaneConfig {
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .build()
        .expect("plane");
    let sid = h.session(vec![read("anything.txt")], ScriptEnd::Terminate);
    assert_eq!(plane.drain().await.expect("drain"), 1);
    plane.wait_idle().await;
    assert!(h.results(&sid).is_empty(), "nothing ran");
    assert_eq!(plane.stats().failed, 1);
    assert_eq!(host.warm_count(), 0, "the fresh sandbox was destroyed");
    assert!(
        h.emu
            .wait_for(WAIT, |e| e
                .session_work(&sid)
                .iter()
                .all(|w| w.state.as_str() == "stopped"))
            .await,
        "the item was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_and_wake_with_the_in_memory_snapshot_store() {
    let store =
        cma_store::SnapshotStore::in_memory(cma_store::SnapshotConfig::default()).expect("store");
    sleep_and_wake(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_and_wake_with_the_local_snapshot_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = cma_store::SnapshotStore::local(dir.path(), cma_store::SnapshotConfig::default())
        .expect("store");
    sleep_and_wake(Arc::new(store)).await;
}

/// Waits until the session's work items are all stopped.
async fn all_stopped(h: &Harness, sid: &str, items: usize) {
    let ok = h
        .emu
        .wait_for(WAIT, |e| {
            let w = e.session_work(sid);
            w.len() == items && w.iter().all(|w| w.state.as_str() == "stopped")
        })
        .await;
    assert!(ok, "work items of {sid} not stopped");
}

/// Three turns, two sleeps: the newest snapshot is then damaged on disk; the third wake falls
/// back to the snapshot before it (the previous good one) and never runs on a broken workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_falls_back_to_the_previous_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        cma_store::SnapshotStore::local(dir.path(), cma_store::SnapshotConfig::default())
            .expect("store"),
    );
    let h = Harness::new().await;
    let host = Arc::new(
        SandboxHost::from_parts(
            [h.isolate()],
            Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
            Arc::new(ToolsetFactory::new()),
            SandboxHostConfig {
                keep_warm: Duration::ZERO,
                ..SandboxHostConfig::default()
            },
        )
        .with_snapshots(store.clone()),
    );
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), host)
        .config(ControlPlaneConfig {
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .build()
        .expect("plane");
    let poller = tokio::spawn({
        let p = plane.clone();
        async move { p.run().await }
    });

    let sid = h.session(vec![write("version.txt", "one")], ScriptEnd::Idle);
    h.wait_results(&sid, 1).await;
    all_stopped(&h, &sid, 1).await;
    h.emu
        .continue_session(
            &sid,
            Script::new(vec![write("version.txt", "two")], ScriptEnd::Idle),
        )
        .expect("turn 2");
    h.wait_results(&sid, 2).await;
    all_stopped(&h, &sid, 2).await;
    let snapshots = store.list(&sid).await.expect("list");
    assert_eq!(snapshots.len(), 2, "one snapshot per sleep");

    // Flip one byte of the newest manifest on disk.
    let newest = snapshots.last().unwrap().id.as_str().to_owned();
    let manifests = dir.path().join("manifests").join(&sid);
    let file = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&newest))
        .expect("the newest manifest file");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    h.emu
        .continue_session(
            &sid,
            Script::new(vec![read("version.txt")], ScriptEnd::Terminate),
        )
        .expect("turn 3");
    h.wait_results(&sid, 3).await;
    let third = &h.results(&sid)[2];
    assert_eq!(third.is_error, Some(false), "{third:?}");
    assert!(
        text(third).contains("one"),
        "the previous good snapshot: {}",
        text(third)
    );
    plane.shutdown(Duration::from_secs(5)).await;
    let _ = poller.await;
}

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

/// The same sleep and wake on the Docker backend, with the local snapshot store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_and_wake_on_docker_with_the_local_snapshot_store() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = cma_store::SnapshotStore::local(dir.path(), cma_store::SnapshotConfig::default())
        .expect("store");
    let h = Harness::new().await;
    sleep_and_wake_on(&h, Arc::new(backend), Flavor::Docker, Arc::new(store)).await;
}
