//! Skills and memory stores end to end: the emulator serves a session with a skill and memory
//! stores, `SessionRunner` runs it on the isolate backend behind a `SandboxHost` (memory mounts
//! backed by host directories), and the scripted agent's file tools see `skills/<name>/…` and the
//! downloaded memory; edits reach the emulator's store by the teardown sync; read-only stores
//! refuse writes; memory without a sessions token fails the item. The sync engine itself
//! (`SessionMemory`) is driven directly for the cadence syncs, deletions, races and recovery.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cma_core::client::Credential;
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::select::Placement;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{
    MemoryAttachment, Script, ScriptEnd, ScriptedCall, SessionAttachments, SkillAttachment,
};
use cma_core::protocol::WorkState;
use cma_core::runner::memory::{
    MARKER_PATH, MemoryConfig, MemoryDeletions, MemoryMount, SessionMemory,
};
use cma_core::runner::session::RunnerError;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{Mount, Sandbox, SandboxBackend, SandboxErrorKind, SandboxSpec};
use serde_json::{Value, json};
use support::Harness;
use tokio_util::sync::CancellationToken;

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A host over one isolate backend whose memory mounts live under the harness directory.
fn host(h: &Harness) -> (Arc<SandboxHost>, Arc<IsolateBackend>) {
    let backend =
        Arc::new(IsolateBackend::new(h.dir.path().join("isolate")).expect("isolate backend"));
    let host = Arc::new(SandboxHost::from_parts(
        [backend.clone() as Arc<dyn SandboxBackend>],
        Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig {
            memory_dir: Some(h.dir.path().join("memory")),
            ..SandboxHostConfig::default()
        },
    ));
    (host, backend)
}

fn text(content: &Value) -> String {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("")
}

/// The one sandbox the backend holds.
async fn the_sandbox(backend: &IsolateBackend) -> Arc<dyn Sandbox> {
    let list = backend.list().await.expect("list");
    assert_eq!(list.len(), 1, "one sandbox");
    backend.resume(&list[0].id).await.expect("resume")
}

async fn run(h: &Harness, sid: &str, host: Arc<SandboxHost>) -> Result<(), RunnerError> {
    let work = h.claim().await;
    assert_eq!(work.data.id, sid);
    h.runner()
        .handle_item(&work, host, CancellationToken::new())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skill_is_in_the_workspace_during_the_calls_and_gone_after() {
    let h = Harness::new().await;
    h.emu
        .add_skill_files(
            "skill_pdf",
            "pdf",
            &files(&[
                ("SKILL.md", "# PDF skill\nUse scripts/fill.js\n"),
                ("scripts/fill.js", "1 + 1"),
            ]),
        )
        .unwrap();
    let att = SessionAttachments {
        skills: vec![SkillAttachment {
            skill_id: "skill_pdf".into(),
            version: None,
        }],
        memory_stores: vec![],
    };
    let sid = h
        .emu
        .create_session_with(
            &h.env.id,
            None,
            Script::new(
                vec![
                    ScriptedCall::tool("read", json!({"file_path": "skills/pdf/SKILL.md"})),
                    ScriptedCall::tool("glob", json!({"pattern": "skills/**/*.js"})),
                ],
                ScriptEnd::Idle,
            ),
            &att,
        )
        .unwrap();
    let (host, backend) = host(&h);
    run(&h, &sid, host).await.expect("item runs");
    let results = h.results(&sid);
    assert_eq!(results.len(), 2);
    assert!(
        text(&results[0].content).contains("# PDF skill"),
        "{results:?}"
    );
    assert!(
        text(&results[1].content).contains("skills/pdf/scripts/fill.js"),
        "{results:?}"
    );
    // After the item, the skill directory is gone (the sandbox itself is kept warm).
    let sandbox = the_sandbox(&backend).await;
    let err = sandbox.stat("skills/pdf").await.unwrap_err();
    assert_eq!(err.kind(), SandboxErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_store_is_downloaded_edited_and_synced_back() {
    let h = Harness::new().await;
    h.emu.add_memory_store("memstore_rw").unwrap();
    h.emu
        .put_memory("memstore_rw", "/notes.md", "hello\n")
        .unwrap();
    h.emu
        .put_memory("memstore_rw", "/deep/keep.md", "kept")
        .unwrap();
    let att = SessionAttachments {
        skills: vec![],
        memory_stores: vec![MemoryAttachment::read_write(
            "memstore_rw",
            Some("/mnt/memory/notes"),
        )],
    };
    let sid = h
        .emu
        .create_session_with(
            &h.env.id,
            None,
            Script::new(
                vec![
                    ScriptedCall::tool("read", json!({"file_path": "/mnt/memory/notes/notes.md"})),
                    ScriptedCall::tool(
                        "edit",
                        json!({"file_path": "/mnt/memory/notes/notes.md",
                               "old_string": "hello", "new_string": "goodbye"}),
                    ),
                    ScriptedCall::tool(
                        "write",
                        json!({"file_path": "/mnt/memory/notes/days/today.md", "content": "fresh"}),
                    ),
                    ScriptedCall::tool("grep", json!({"pattern": "kept", "path": "/mnt/memory/notes"})),
                    ScriptedCall::tool(
                        "execute",
                        json!({"code": "fs.remove('/mnt/memory/notes/deep/keep.md', false); 'gone'"}),
                    ),
                ],
                ScriptEnd::Idle,
            ),
            &att,
        )
        .unwrap();
    let (host, backend) = host(&h);
    run(&h, &sid, host).await.expect("item runs");
    let results = h.results(&sid);
    assert_eq!(results.len(), 5);
    assert!(
        results.iter().all(|r| r.is_error != Some(true)),
        "{results:?}"
    );
    assert!(text(&results[0].content).contains("hello"));
    assert!(text(&results[3].content).contains("keep.md"));
    let store = h.emu.memories("memstore_rw").unwrap();
    assert_eq!(
        store,
        files(&[("/days/today.md", "fresh"), ("/notes.md", "goodbye\n")]),
        "the marker never syncs, every edit is in the store, and the final sync propagated the delete"
    );
    // The memory folder was emptied at teardown.
    let sandbox = the_sandbox(&backend).await;
    assert!(
        sandbox
            .read_dir("/mnt/memory/notes")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_refuses_writes_and_is_never_uploaded() {
    let h = Harness::new().await;
    h.emu.add_memory_store("memstore_ro").unwrap();
    h.emu
        .put_memory("memstore_ro", "/rules.md", "be kind")
        .unwrap();
    let mut ro = MemoryAttachment::read_only("memstore_ro", None);
    ro.name = Some("rules".into());
    let att = SessionAttachments {
        skills: vec![],
        memory_stores: vec![ro],
    };
    let sid = h
        .emu
        .create_session_with(
            &h.env.id,
            None,
            Script::new(
                vec![
                    ScriptedCall::tool("read", json!({"file_path": "memory/rules/rules.md"})),
                    ScriptedCall::tool(
                        "write",
                        json!({"file_path": "memory/rules/rules.md", "content": "be mean"}),
                    ),
                ],
                ScriptEnd::Idle,
            ),
            &att,
        )
        .unwrap();
    let (host, _backend) = host(&h);
    run(&h, &sid, host).await.expect("item runs");
    let results = h.results(&sid);
    assert!(text(&results[0].content).contains("be kind"));
    assert_eq!(results[1].is_error, Some(true));
    assert!(
        text(&results[1].content).contains("is inside read-only directory /workspace/memory/rules"),
        "{results:?}"
    );
    assert_eq!(
        h.emu.memories("memstore_ro").unwrap(),
        files(&[("/rules.md", "be kind")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_without_a_sessions_token_fails_the_item() {
    let h = Harness::new().await;
    let att = SessionAttachments {
        skills: vec![],
        memory_stores: vec![MemoryAttachment::read_write("memstore_x", None)],
    };
    let sid = h
        .emu
        .create_session_with(
            &h.env.id,
            None,
            Script::new(
                vec![ScriptedCall::tool("read", json!({"file_path": "a"}))],
                ScriptEnd::Idle,
            ),
            &att,
        )
        .unwrap();
    let mut work = h.claim().await;
    assert_eq!(work.data.id, sid);
    work.secret = None;
    let (host, _backend) = host(&h);
    let err = h
        .runner()
        .handle_item(&work, host, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunnerError::MemoryWithoutSessionsToken { .. }),
        "{err}"
    );
    assert!(h.results(&sid).is_empty(), "no tool ran");
    let state = h.emu.work(work.id.as_str()).unwrap().state;
    assert_eq!(state, WorkState::Stopped, "the item is force-stopped");
}

// ------------------------------------------------------------------ the sync engine directly

struct Engine {
    h: Harness,
    sandbox: Arc<dyn Sandbox>,
    token: Credential,
}

const ROOT: &str = "/mnt/memory/s";

/// A claimed session with `memstore_s` attached (read-write unless `read_only`), and an isolate
/// sandbox with a host directory mounted at [`ROOT`].
async fn engine(initial: &[(&str, &str)], read_only: bool) -> Engine {
    let h = Harness::new().await;
    h.emu.add_memory_store("memstore_s").unwrap();
    for (p, c) in initial {
        h.emu.put_memory("memstore_s", p, c).unwrap();
    }
    let att = SessionAttachments {
        skills: vec![],
        memory_stores: vec![if read_only {
            MemoryAttachment::read_only("memstore_s", Some(ROOT))
        } else {
            MemoryAttachment::read_write("memstore_s", Some(ROOT))
        }],
    };
    h.emu
        .create_session_with(&h.env.id, None, Script::new(vec![], ScriptEnd::Idle), &att)
        .unwrap();
    let work = h.claim().await;
    let token = Credential::sessions_token(work.sessions_token().unwrap());
    let mount_dir = h.dir.path().join("mnt");
    std::fs::create_dir_all(&mount_dir).unwrap();
    let backend = IsolateBackend::new(h.dir.path().join("iso")).unwrap();
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::new(ROOT, mount_dir));
    let sandbox = backend.create(&spec).await.unwrap();
    Engine { h, sandbox, token }
}

impl Engine {
    async fn download(&self, config: MemoryConfig) -> SessionMemory {
        SessionMemory::download(
            self.sandbox.clone(),
            &self.h.client,
            &self.token,
            vec![MemoryMount {
                store_id: "memstore_s".into(),
                root: ROOT.into(),
                read_only: false,
            }],
            config,
        )
        .await
        .expect("download")
    }

    async fn local(&self, rel: &str) -> Option<String> {
        match self.sandbox.read_file(&format!("{ROOT}/{rel}"), None).await {
            Ok(b) => Some(String::from_utf8(b.to_vec()).unwrap()),
            Err(e) if e.kind() == SandboxErrorKind::NotFound => None,
            Err(e) => panic!("{e}"),
        }
    }

    async fn write(&self, rel: &str, content: &str) {
        self.sandbox
            .write_file(&format!("{ROOT}/{rel}"), content.to_owned().into())
            .await
            .unwrap();
    }

    async fn remove(&self, rel: &str) {
        self.sandbox
            .remove(&format!("{ROOT}/{rel}"), false)
            .await
            .unwrap();
    }

    fn remote(&self) -> BTreeMap<String, String> {
        self.h.emu.memories("memstore_s").unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadence_syncs_push_local_edits_and_pull_remote_ones() {
    let e = engine(&[("/a.md", "a0"), ("/b.md", "b0")], false).await;
    let mut mem = e.download(MemoryConfig::default()).await;
    assert_eq!(e.local("a.md").await.as_deref(), Some("a0"));
    assert!(
        e.local(MARKER_PATH).await.is_some(),
        "the marker is stamped"
    );
    // Not due yet: nothing moves.
    e.write("a.md", "a1").await;
    mem.sync_if_due().await;
    assert_eq!(e.remote()["/a.md"], "a0");
    // A sync pushes the local edit and a new file, and pulls a remote edit.
    e.write("new.md", "n").await;
    e.h.emu.put_memory("memstore_s", "/b.md", "b1").unwrap();
    mem.sync_now().await;
    assert_eq!(
        e.remote(),
        files(&[("/a.md", "a1"), ("/b.md", "b1"), ("/new.md", "n")])
    );
    assert_eq!(e.local("b.md").await.as_deref(), Some("b1"));
    // Both sides changed: the remote wins.
    e.write("a.md", "mine").await;
    e.h.emu.put_memory("memstore_s", "/a.md", "theirs").unwrap();
    mem.sync_now().await;
    assert_eq!(e.remote()["/a.md"], "theirs");
    assert_eq!(e.local("a.md").await.as_deref(), Some("theirs"));
    // A memory deleted remotely is deleted locally.
    assert!(e.h.emu.delete_memory("memstore_s", "/new.md"));
    mem.sync_now().await;
    assert_eq!(e.local("new.md").await, None);
    mem.dispose().await;
    assert_eq!(e.local("a.md").await, None, "dispose empties the folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_precondition_race_drops_the_local_edit_like_the_sdk() {
    let e = engine(&[("/a.md", "base")], false).await;
    let mut mem = e.download(MemoryConfig::default()).await;
    e.write("a.md", "mine").await;
    // Another writer lands between the sync's listing and its update: 409, the local edit loses.
    e.h.emu
        .race_memory_after_list("memstore_s", "/a.md", Some("theirs"))
        .unwrap();
    mem.sync_now().await;
    assert_eq!(e.remote()["/a.md"], "theirs");
    assert_eq!(
        e.local("a.md").await.as_deref(),
        Some("mine"),
        "not pulled yet"
    );
    // The next sync pulls the winner over the file.
    mem.sync_now().await;
    assert_eq!(e.local("a.md").await.as_deref(), Some("theirs"));
    assert_eq!(e.remote()["/a.md"], "theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_deletes_wait_for_corroboration_and_follow_the_deletion_mode() {
    let e = engine(&[("/a.md", "a"), ("/b.md", "b"), ("/c.md", "c")], false).await;
    let mut mem = e.download(MemoryConfig::default()).await;
    e.remove("a.md").await;
    mem.sync_now().await;
    assert!(
        e.remote().contains_key("/a.md"),
        "the first sync only records the absence"
    );
    // The final sync waives the window.
    mem.finish().await.unwrap();
    assert!(!e.remote().contains_key("/a.md"));
    assert!(mem.finish().await.is_err(), "finish runs once");
    mem.dispose().await;

    // With deletions disabled (or log-only), nothing is deleted on the server.
    for mode in [MemoryDeletions::Disabled, MemoryDeletions::LogOnly] {
        let mut mem = e
            .download(MemoryConfig::default().with_deletions(mode))
            .await;
        e.remove("b.md").await;
        mem.finish().await.unwrap();
        assert!(e.remote().contains_key("/b.md"), "{mode:?}");
        mem.dispose().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_folder_is_downloaded_again_and_a_foreign_marker_is_left_alone() {
    let e = engine(&[("/a.md", "a"), ("/b.md", "b")], false).await;
    let mut mem = e.download(MemoryConfig::default()).await;
    // Every file gone at once is a wipe, never a mass delete.
    e.remove("a.md").await;
    e.remove("b.md").await;
    mem.finish().await.unwrap();
    assert_eq!(e.remote().len(), 2);
    assert_eq!(e.local("a.md").await.as_deref(), Some("a"));
    mem.dispose().await;

    let mut mem = e.download(MemoryConfig::default()).await;
    e.write(MARKER_PATH, "version 1\nmemstore_other").await;
    e.write("a.md", "edited").await;
    mem.flush_writes().await;
    assert_eq!(
        e.remote()["/a.md"],
        "a",
        "a folder with a foreign marker never uploads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_pushes_without_deleting_and_refuses_oversized_files() {
    let e = engine(&[("/a.md", "a"), ("/b.md", "b")], false).await;
    let mut mem = e.download(MemoryConfig::default()).await;
    e.write("a.md", "a2").await;
    e.remove("b.md").await;
    e.write("big.md", &"x".repeat(102_401)).await;
    mem.flush_writes().await;
    assert_eq!(e.remote(), files(&[("/a.md", "a2"), ("/b.md", "b")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_refuse_a_non_empty_folder() {
    let e = engine(&[("/a.md", "a")], false).await;
    e.write("leftover.md", "old run").await;
    let err = SessionMemory::download(
        e.sandbox.clone(),
        &e.h.client,
        &e.token,
        vec![MemoryMount {
            store_id: "memstore_s".into(),
            root: ROOT.into(),
            read_only: false,
        }],
        MemoryConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(e.local("leftover.md").await.as_deref(), Some("old run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_interval_has_a_floor() {
    assert!(MemoryConfig::new(Some(Duration::from_secs(1))).is_err());
    let c = MemoryConfig::new(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.sync_interval(), Some(Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmountable_store_fails_the_item_with_a_clear_error() {
    for (mount, needle) in [
        // No memory_dir: the isolate sandbox cannot reach /mnt.
        ("/mnt/memory/x", "must make this path writable"),
        ("relative/x", "not a clean absolute path"),
    ] {
        let h = Harness::new().await;
        let att = SessionAttachments {
            skills: vec![],
            memory_stores: vec![MemoryAttachment::read_write("memstore_x", Some(mount))],
        };
        let sid = h
            .emu
            .create_session_with(
                &h.env.id,
                None,
                Script::new(
                    vec![ScriptedCall::tool("read", json!({"file_path": "a"}))],
                    ScriptEnd::Idle,
                ),
                &att,
            )
            .unwrap();
        let work = h.claim().await;
        let err = h
            .runner()
            .handle_item(&work, h.host(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, RunnerError::Memory { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(h.results(&sid).is_empty(), "no tool ran");
        assert_eq!(
            h.emu.work(work.id.as_str()).unwrap().state,
            WorkState::Stopped
        );
    }
}
