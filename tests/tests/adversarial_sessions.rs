//! Adversarial suite, classes "hostile API payloads" and "memory sync" (issue 11), end to end: a
//! control plane (one concurrency permit, so every item waits for the one before) serves
//! sessions while the emulator's hostile mode feeds it session objects with thousands of skills
//! and stores, overlapping mounts, broken and endless event streams, duplicate and unknown events,
//! looping histories, absurd heartbeat TTLs, and memory listings with oversized contents, unsafe
//! paths and looping cursors. Each hostile item ends with a result or a typed error, and the
//! ordinary session queued behind them is still served.

// The same harness as cma-core's adversarial tests (one copy).
#[path = "../../cma-core/tests/adversarial/mod.rs"]
mod adversarial;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig, ItemReport};
use cma_core::emulator::{
    EmulatorConfig, Endpoint, Fault, MemoryAttachment, Reply, Script, ScriptEnd, SessionAttachments,
};
use cma_core::runner::session::RunnerError;
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

#[test]
fn adversarial_sessions() {
    adversarial::run_cases(&[
        case!(hostile_session_objects, Duration::from_secs(90)),
        case!(
            hostile_streams_histories_and_heartbeats,
            Duration::from_secs(90)
        ),
        case!(hostile_memory_listings, Duration::from_secs(90)),
        case!(
            a_memory_folder_of_too_many_directories_is_not_synced,
            Duration::from_secs(90)
        ),
    ]);
}

type Reports = mpsc::UnboundedReceiver<(String, Result<u64, String>)>;

/// A plane with one permit over `host`, reporting `(work id, results posted | error)`.
fn plane(h: &Harness, client: Client, host: Arc<SandboxHost>) -> (ControlPlane, Reports) {
    let (tx, rx) = mpsc::unbounded_channel();
    let p = ControlPlane::builder(client, h.env.id.clone(), h.key(), host)
        .config(ControlPlaneConfig {
            concurrency: 1,
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .on_item(move |r: &ItemReport| {
            let result = r
                .result
                .as_ref()
                .map(|o| o.results_posted)
                .map_err(|e| match e {
                    RunnerError::Memory { source, .. } => format!("memory: {source}"),
                    other => other.to_string(),
                });
            let _ = tx.send((r.work.id.to_string(), result));
        })
        .build()
        .expect("plane");
    (p, rx)
}

/// Run `plane` until `n` items reported; their results by session id.
async fn serve(
    h: &Harness,
    plane: &ControlPlane,
    rx: &mut Reports,
    n: usize,
) -> HashMap<String, Result<u64, String>> {
    let run = tokio::spawn({
        let plane = plane.clone();
        async move { plane.run().await }
    });
    let mut out = HashMap::new();
    while out.len() < n {
        let (work_id, result) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("an item finished in time")
            .expect("plane alive");
        let sid = h.emu.work(&work_id).expect("work").data.id;
        out.insert(sid, result);
    }
    plane.shutdown(Duration::from_secs(5)).await;
    run.await.expect("run task").expect("plane run");
    out
}

fn store(id: &str, mount: Option<&str>) -> MemoryAttachment {
    MemoryAttachment::read_write(id, mount)
}

fn session_with(
    h: &Harness,
    calls: Vec<cma_core::emulator::ScriptedCall>,
    stores: Vec<MemoryAttachment>,
) -> String {
    h.emu
        .create_session_with(
            &h.env.id,
            None,
            Script::new(calls, ScriptEnd::Terminate),
            &SessionAttachments {
                skills: vec![],
                memory_stores: stores,
            },
        )
        .expect("session")
}

/// The session as the API serves it (to build hostile variants of it).
async fn session_json(h: &Harness, sid: &str) -> Value {
    let s = h
        .client
        .session(sid.to_owned(), Credential::api_key(h.emu.api_key()))
        .get()
        .await
        .expect("session");
    serde_json::to_value(&s).expect("json")
}

async fn hostile_session_objects() {
    let h = Harness::new().await;
    // X: its agent lists 5000 skills and the session 5000 memory stores.
    let x = h.session(vec![write("x.txt", "x")], ScriptEnd::Terminate);
    // Z: two stores whose folders nest.
    let z = h.session(vec![write("z.txt", "z")], ScriptEnd::Terminate);
    // Y: ordinary, queued behind both.
    let y = h.session(vec![write("y.txt", "y")], ScriptEnd::Terminate);
    let mut hostile = session_json(&h, &x).await;
    hostile["agent"]["skills"] = (0..5000)
        .map(|i| json!({"type": "custom", "skill_id": format!("skill_{i}"), "version": "latest"}))
        .collect();
    hostile["resources"] = (0..5000)
        .map(|i| json!({"type": "memory_store", "memory_store_id": format!("memstore_{i}")}))
        .collect();
    let mut nested = session_json(&h, &z).await;
    nested["resources"] = json!([
        {"type": "memory_store", "memory_store_id": "memstore_a", "mount_path": "/mnt/a"},
        {"type": "memory_store", "memory_store_id": "memstore_b", "mount_path": "/mnt/a/b/"},
    ]);
    for body in [hostile, nested] {
        h.emu
            .inject_fault(Fault::on(Endpoint::SessionGet).reply(Reply::new(200).json(body)))
            .unwrap();
    }
    let (p, mut rx) = plane(&h, h.client.clone(), h.host());
    let results = serve(&h, &p, &mut rx, 3).await;
    let err = results[&x].clone().expect_err("X fails");
    assert!(err.contains("5000 memory stores"), "{err}");
    let err = results[&z].clone().expect_err("Z fails");
    assert!(err.contains("overlap"), "{err}");
    assert!(h.results(&x).is_empty() && h.results(&z).is_empty());
    assert_eq!(results[&y], Ok(1));
    // X asked for 5000 skills: at most the per-session cap were even looked up.
    let lookups = h
        .emu
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/skills/"))
        .count();
    assert!(
        (1..=cma_core::runner::skills::MAX_SKILLS_PER_SESSION).contains(&lookups),
        "{lookups} skill lookups"
    );
    assert_eq!(h.emu.faults_remaining(), 0);
    h.emu.shutdown().await;
}

async fn hostile_streams_histories_and_heartbeats() {
    let h = Harness::new().await;
    let x = h.session(vec![write("x.txt", "x")], ScriptEnd::Terminate);
    let y = h.session(vec![write("y.txt", "y")], ScriptEnd::Terminate);
    let tool_use = h
        .emu
        .session_events(&x)
        .into_iter()
        .find(|e| e["type"] == "agent.tool_use")
        .expect("X's call is in its history");
    let frame = |ev: &Value| format!("event: {}\ndata: {ev}\n\n", ev["type"].as_str().unwrap());
    let arm = |f: Fault| h.emu.inject_fault(f).unwrap();
    // Heartbeats: an absurd TTL (claiming the lease as the first beat would), then garbage.
    arm(
        Fault::on(Endpoint::Heartbeat).reply(Reply::new(200).json(json!({
            "type": "work_heartbeat", "last_heartbeat": "NO_HEARTBEAT", "lease_extended": true,
            "state": "active", "ttl_seconds": i64::MAX
        }))),
    );
    arm(Fault::on(Endpoint::Heartbeat).reply(Reply::new(200).json(json!({"ttl_seconds": 1e300}))));
    // The first history read loops its cursors.
    for c in ["A", "B", "A"] {
        arm(Fault::on(Endpoint::EventsList)
            .reply(Reply::new(200).json(json!({"data": [], "next_page": c}))));
    }
    // Streams: an endless line, invalid UTF-8, JSON nested past any parser's depth, then the
    // call itself twice among events of unknown types — X's call must still run exactly once.
    arm(Fault::on(Endpoint::Stream).reply(Reply::new(200).text("event: x\ndata: ").endless("x")));
    arm(Fault::on(Endpoint::Stream).reply(Reply::new(200).bytes(b"event: x\ndata: \xff\n\n")));
    arm(Fault::on(Endpoint::Stream).reply(
        Reply::new(200)
            .text("event: x\ndata: ")
            .repeat("{\"a\":", 50_000)
            .text("\n\n"),
    ));
    let mystery =
        json!({"type": "agent.mystery", "id": "evt_m", "processed_at": "2026-01-01T00:00:00Z"});
    arm(Fault::on(Endpoint::Stream).reply(
        Reply::new(200)
            .text(frame(&mystery))
            .text(frame(&tool_use))
            .text(frame(&mystery))
            .text(frame(&tool_use)),
    ));
    let client = Client::new(
        ClientConfig::builder()
            .base_url(h.emu.base_url())
            .worker_id(WORKER_ID)
            .request_timeout(Duration::from_secs(3))
            .sse_limits(cma_core::sse::SseLimits {
                max_line_bytes: 1 << 20,
                max_frame_bytes: 1 << 20,
            })
            .build()
            .unwrap(),
    )
    .unwrap();
    let (p, mut rx) = plane(&h, client, h.host());
    let results = serve(&h, &p, &mut rx, 2).await;
    assert_eq!(results[&x], Ok(1), "{results:?}");
    assert_eq!(h.results(&x).len(), 1, "X's call ran once");
    assert_eq!(results[&y], Ok(1));
    assert_eq!(
        h.emu.faults_remaining(),
        0,
        "every hostile answer was served"
    );
    h.emu.shutdown().await;
}

async fn hostile_memory_listings() {
    let h = Harness::with_config(EmulatorConfig::default()).await;
    let page = |items: Vec<Value>, next: Option<&str>| {
        Reply::new(200).json(json!({"data": items, "next_page": next}))
    };
    let item = |path: &str, content: &str| {
        json!({
            "type": "memory", "id": format!("mem_{}", path.len()), "path": path,
            "content": content, "content_sha256": "0".repeat(64),
            "content_size_bytes": content.len()
        })
    };
    // A: a memory whose content is far above what the API allows.
    let a = session_with(
        &h,
        vec![write("a.txt", "a")],
        vec![store("memstore_a", None)],
    );
    h.emu
        .inject_fault(
            Fault::on(Endpoint::MemoryList)
                .reply(page(vec![item("/big.md", &"x".repeat(300_000))], None)),
        )
        .unwrap();
    // B: cursors that loop.
    let b = session_with(
        &h,
        vec![write("b.txt", "b")],
        vec![store("memstore_b", None)],
    );
    for c in ["A", "B", "A"] {
        h.emu
            .inject_fault(Fault::on(Endpoint::MemoryList).reply(page(vec![], Some(c))))
            .unwrap();
    }
    // C: unsafe paths are skipped; the safe one lands and the session runs.
    let long = format!("/{}", "p".repeat(2000));
    let c = session_with(
        &h,
        vec![read("memory/memstore_c/ok.md")],
        vec![store("memstore_c", None)],
    );
    h.emu
        .inject_fault(Fault::on(Endpoint::MemoryList).reply(page(
            vec![
                item("/../../escape.md", "no"),
                item("/a/\u{1}/b.md", "no"),
                item(&long, "no"),
                item("/.anthropic-memory-store", "no"),
                item("/ok.md", "fine"),
            ],
            None,
        )))
        .unwrap();
    let y = h.session(vec![write("y.txt", "y")], ScriptEnd::Terminate);
    let host = Arc::new(SandboxHost::from_parts(
        [h.isolate()],
        Arc::new(|_: &cma_core::control::select::Placement<'_>| "isolate".to_owned()),
        Arc::new(cma_core::control::tools::ToolsetFactory::new()),
        SandboxHostConfig {
            memory_dir: Some(h.dir.path().join("memory")),
            ..SandboxHostConfig::default()
        },
    ));
    let (p, mut rx) = plane(&h, h.client.clone(), host);
    let results = serve(&h, &p, &mut rx, 4).await;
    let err = results[&a].clone().expect_err("A fails");
    assert!(
        err.starts_with("memory:") && err.contains("byte limit"),
        "{err}"
    );
    let err = results[&b].clone().expect_err("B fails");
    assert!(
        err.starts_with("memory:") && err.contains("cursor"),
        "{err}"
    );
    assert_eq!(results[&c], Ok(1), "{results:?}");
    let read = h.results(&c);
    assert_eq!(read.len(), 1);
    assert!(text(&read[0]).contains("fine"), "{read:?}");
    assert_eq!(results[&y], Ok(1));
    assert!(!h.dir.path().join("escape.md").exists());
    assert_eq!(h.emu.faults_remaining(), 0);
    h.emu.shutdown().await;
}

async fn a_memory_folder_of_too_many_directories_is_not_synced() {
    use cma_core::runner::memory::{MAX_SCAN_DIRS, MemoryConfig, MemoryMount, SessionMemory};
    use cma_sandbox::isolate::IsolateBackend;
    use cma_sandbox::{Mount, SandboxBackend, SandboxSpec};
    const ROOT: &str = "/mnt/memory";
    let h = Harness::new().await;
    h.emu.add_memory_store("memstore_s").unwrap();
    h.emu.put_memory("memstore_s", "/a.md", "a").unwrap();
    session_with(&h, vec![], vec![store("memstore_s", Some(ROOT))]);
    let work = h.claim().await;
    let token = Credential::sessions_token(work.sessions_token().unwrap());
    let host_dir = h.dir.path().join("mnt");
    std::fs::create_dir_all(&host_dir).unwrap();
    let backend = IsolateBackend::new(h.dir.path().join("iso")).unwrap();
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::new(ROOT, host_dir.clone()));
    let sandbox = backend.create(&spec).await.unwrap();
    let mut memory = SessionMemory::download(
        sandbox.clone(),
        &h.client,
        &token,
        vec![MemoryMount {
            store_id: "memstore_s".into(),
            root: ROOT.into(),
            read_only: false,
        }],
        MemoryConfig::default(),
    )
    .await
    .expect("download");
    // The agent edits a memory and buries the folder in directories.
    std::fs::write(host_dir.join("a.md"), "a2").unwrap();
    let junk = host_dir.join("junk");
    for i in 0..=MAX_SCAN_DIRS {
        std::fs::create_dir_all(junk.join(i.to_string())).unwrap();
    }
    memory.sync_now().await;
    assert_eq!(
        h.emu.memories("memstore_s").unwrap()["/a.md"],
        "a",
        "a folder past the directory bound is not synced"
    );
    // Back within the bound, the same edit goes up.
    std::fs::remove_dir_all(&junk).unwrap();
    memory.sync_now().await;
    assert_eq!(h.emu.memories("memstore_s").unwrap()["/a.md"], "a2");
    memory.dispose().await;
    backend.destroy(sandbox.id()).await.unwrap();
    h.emu.shutdown().await;
}
