//! Adversarial suite, class "a panic anywhere in a work item" (issue 11): a tool that panics, a
//! sandbox that panics under a tool, a sandbox that panics while the runner installs a skill,
//! and an executor factory that panics — each ends one call (answered with an error) or one item
//! (torn down, force-stopped, its heartbeat stopped), while the same control plane, with a single
//! concurrency permit, goes on to serve the next session.

// The same harness as cma-core's adversarial tests (one copy).
#[path = "../../cma-core/tests/adversarial/mod.rs"]
mod adversarial;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig, ItemReport};
use cma_core::control::select::Placement;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{
    EmulatorConfig, Script, ScriptEnd, ScriptedCall, SessionAttachments, SkillAttachment,
};
use cma_core::protocol::WorkState;
use cma_core::runner::session::RunnerError;
use cma_sandbox::{
    Capabilities, DirEntry, ExecOutput, ExecRequest, ExecStream, ExecuteRequest, FileReader,
    FileStat, InteractiveProcess, Sandbox, SandboxBackend, SandboxId, SandboxInfo, SandboxSpec,
    SandboxStatus,
};
use cma_tools::{ToolError, custom_tool};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;

/// Any sandbox path containing this makes the sandbox panic.
const TRIGGER: &str = "PANIC";

#[test]
fn adversarial_panics() {
    adversarial::run_cases(&[case!(
        panics_end_a_call_or_an_item_never_the_plane,
        Duration::from_secs(90)
    )]);
}

/// A sandbox that panics on any path naming [`TRIGGER`], and otherwise is the one it wraps.
struct PanickySandbox(Arc<dyn Sandbox>);

fn check(path: &str) {
    assert!(!path.contains(TRIGGER), "sandbox panic on {path}");
}

#[async_trait]
impl Sandbox for PanickySandbox {
    fn id(&self) -> &SandboxId {
        self.0.id()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn workdir(&self) -> &str {
        self.0.workdir()
    }
    async fn stat(&self, path: &str) -> cma_sandbox::Result<FileStat> {
        check(path);
        self.0.stat(path).await
    }
    async fn lstat(&self, path: &str) -> cma_sandbox::Result<FileStat> {
        check(path);
        self.0.lstat(path).await
    }
    async fn read_link(&self, path: &str) -> cma_sandbox::Result<String> {
        check(path);
        self.0.read_link(path).await
    }
    async fn read_file(&self, path: &str, max: Option<u64>) -> cma_sandbox::Result<Bytes> {
        check(path);
        self.0.read_file(path, max).await
    }
    async fn open_read(&self, path: &str) -> cma_sandbox::Result<FileReader> {
        check(path);
        self.0.open_read(path).await
    }
    async fn write_file(&self, path: &str, data: Bytes) -> cma_sandbox::Result<()> {
        check(path);
        self.0.write_file(path, data).await
    }
    async fn create_dir_all(&self, path: &str) -> cma_sandbox::Result<()> {
        check(path);
        self.0.create_dir_all(path).await
    }
    async fn read_dir(&self, path: &str) -> cma_sandbox::Result<Vec<DirEntry>> {
        check(path);
        self.0.read_dir(path).await
    }
    async fn remove(&self, path: &str, recursive: bool) -> cma_sandbox::Result<()> {
        check(path);
        self.0.remove(path, recursive).await
    }
    async fn exec(&self, req: ExecRequest) -> cma_sandbox::Result<ExecOutput> {
        self.0.exec(req).await
    }
    async fn exec_stream(&self, req: ExecRequest) -> cma_sandbox::Result<ExecStream> {
        self.0.exec_stream(req).await
    }
    async fn open_interactive(&self, req: ExecRequest) -> cma_sandbox::Result<InteractiveProcess> {
        self.0.open_interactive(req).await
    }
    async fn execute(&self, req: ExecuteRequest) -> cma_sandbox::Result<ExecOutput> {
        self.0.execute(req).await
    }
    async fn export_workspace(&self) -> cma_sandbox::Result<cma_sandbox::ByteStream> {
        self.0.export_workspace().await
    }
    async fn import_workspace(&self, tar: cma_sandbox::ByteStream) -> cma_sandbox::Result<()> {
        self.0.import_workspace(tar).await
    }
    fn local_workspace(&self) -> Option<std::fs::File> {
        self.0.local_workspace()
    }
    async fn status(&self) -> cma_sandbox::Result<SandboxStatus> {
        self.0.status().await
    }
    async fn stop(&self) -> cma_sandbox::Result<()> {
        self.0.stop().await
    }
}

/// A backend whose sandboxes are [`PanickySandbox`]es.
struct PanickyBackend(Arc<dyn SandboxBackend>);

#[async_trait]
impl SandboxBackend for PanickyBackend {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn create(&self, spec: &SandboxSpec) -> cma_sandbox::Result<Arc<dyn Sandbox>> {
        Ok(Arc::new(PanickySandbox(self.0.create(spec).await?)))
    }
    async fn resume(&self, id: &SandboxId) -> cma_sandbox::Result<Arc<dyn Sandbox>> {
        Ok(Arc::new(PanickySandbox(self.0.resume(id).await?)))
    }
    async fn list(&self) -> cma_sandbox::Result<Vec<SandboxInfo>> {
        self.0.list().await
    }
    async fn destroy(&self, id: &SandboxId) -> cma_sandbox::Result<()> {
        self.0.destroy(id).await
    }
}

fn heartbeats(h: &Harness, work_id: &str) -> usize {
    let tail = format!("/work/{work_id}/heartbeat");
    h.emu
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&tail))
        .count()
}

async fn panics_end_a_call_or_an_item_never_the_plane() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    // A: a panicking custom tool and a sandbox panic under `write`, then a call that works.
    let a = h.session(
        vec![
            ScriptedCall::custom("boom", json!({})),
            write(&format!("{TRIGGER}.txt"), "x"),
            write("after.txt", "fine"),
        ],
        ScriptEnd::Terminate,
    );
    // B: the sandbox panics while the runner installs the session's skill.
    let files = BTreeMap::from([("SKILL.md".to_owned(), "# skill".to_owned())]);
    h.emu
        .add_skill_files("skill_panic", TRIGGER, &files)
        .expect("skill");
    let b = h
        .emu
        .create_session_with(
            &h.env.id,
            None,
            Script::new(vec![write("b.txt", "b")], ScriptEnd::Terminate),
            &SessionAttachments {
                skills: vec![SkillAttachment {
                    skill_id: "skill_panic".into(),
                    version: None,
                }],
                memory_stores: vec![],
            },
        )
        .expect("session b");
    // D: the executor factory panics for this session.
    let d = h.session(vec![write("d.txt", "d")], ScriptEnd::Terminate);
    // C: an ordinary session, served by the same plane after all of the above.
    let c = h.session(vec![write("c.txt", "c")], ScriptEnd::Terminate);

    let boom = custom_tool(
        "boom",
        "Panics.",
        json!({"type": "object"}),
        |_ctx, _input: serde_json::Value| async move {
            if std::hint::black_box(true) {
                panic!("the custom tool panicked");
            }
            Ok::<_, ToolError>("unreachable")
        },
    )
    .expect("tool");
    let poisoned = d.clone();
    let factory =
        ToolsetFactory::new()
            .with_tool(Arc::new(boom))
            .configure(move |ctx, _work, session| {
                assert!(session.id.as_str() != poisoned, "the factory panicked");
                ctx
            });
    let backend: Arc<dyn SandboxBackend> = Arc::new(PanickyBackend(h.isolate()));
    let host = Arc::new(SandboxHost::from_parts(
        [backend],
        Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
        Arc::new(factory),
        SandboxHostConfig::default(),
    ));
    let (tx, mut done) = mpsc::unbounded_channel();
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), host.clone())
        .config(ControlPlaneConfig {
            concurrency: 1,
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .on_item(move |r: &ItemReport| {
            let _ = tx.send((
                r.work.id.to_string(),
                r.result
                    .as_ref()
                    .map(|o| o.results_posted)
                    .map_err(|e| match e {
                        RunnerError::Panicked { message, .. } => format!("panicked: {message}"),
                        other => other.to_string(),
                    }),
            ));
        })
        .build()
        .expect("plane");
    let run = tokio::spawn({
        let plane = plane.clone();
        async move { plane.run().await }
    });

    let work_of = |sid: &str| h.emu.session_work(sid)[0].id.to_string();
    let mut reports: HashMap<String, Result<u64, String>> = HashMap::new();
    let mut b_reported_at = None;
    while reports.len() < 4 {
        let (work_id, result) = tokio::time::timeout(WAIT, done.recv())
            .await
            .expect("an item finished in time")
            .expect("plane alive");
        if h.emu.session_work(&b).first().map(|w| w.id.to_string()) == Some(work_id.clone()) {
            b_reported_at = Some((tokio::time::Instant::now(), heartbeats(&h, &work_id)));
        }
        reports.insert(work_id, result);
    }

    // A: the item went on; both panics were answered with error results, the next call worked.
    assert_eq!(reports[&work_of(&a)], Ok(3), "{reports:?}");
    let results = h.results(&a);
    assert_eq!(results.len(), 3);
    assert!(results[0].is_error == Some(true) && text(&results[0]).contains("panicked"));
    assert!(results[1].is_error == Some(true) && text(&results[1]).contains("panicked"));
    assert_ne!(results[2].is_error, Some(true), "{results:?}");

    // B: the item ended with a typed panic error, nothing ran, the item was force-stopped and
    // its heartbeat is over.
    let b_work = work_of(&b);
    let err = reports[&b_work].clone().expect_err("B failed");
    assert!(err.contains("sandbox panic"), "{err}");
    assert!(h.results(&b).is_empty());
    assert_eq!(
        h.emu.work(&b_work).map(|w| w.state),
        Some(WorkState::Stopped)
    );
    let (at, beats) = b_reported_at.expect("B reported");
    // Three heartbeat intervals (TTL 2 s ⇒ one beat a second) with the lease still alive would
    // have meant three more beats.
    tokio::time::sleep_until(at + Duration::from_secs(3)).await;
    assert_eq!(
        heartbeats(&h, &b_work),
        beats,
        "B's heartbeat outlived its item"
    );

    // D: placing the session failed with the factory's panic as a host error.
    let err = reports[&work_of(&d)].clone().expect_err("D failed");
    assert!(err.contains("factory panicked"), "{err}");
    assert!(h.results(&d).is_empty());

    // C: served by the same plane, after every failure above, on the one permit.
    assert_eq!(reports[&work_of(&c)], Ok(1));
    assert_eq!(plane.stats().in_flight, 0);
    assert_eq!(plane.stats().failed, 2);

    // The sandboxes went where the normal rules send them: A and C terminated (destroyed), B and
    // D kept warm for their sessions' next items.
    assert_eq!(host.warm_count(), 2);
    plane.shutdown(Duration::from_secs(5)).await;
    run.await.expect("run task").expect("plane run");
    host.destroy_all_warm().await;
    assert_eq!(host.warm_count(), 0);
    h.emu.shutdown().await;
}
