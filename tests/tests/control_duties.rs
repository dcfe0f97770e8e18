//! Duties the control plane runs itself (issue 10, build item 4): the warm-sandbox reaper,
//! snapshot retention and chunk collection on a schedule, coalesced webhook drains with the
//! fallback drain, `wake()`, and what `close()` does after a lost lease or a terminated session.
//! A `ControlPlane` over a `SandboxHost` with the isolate backend, against the emulator; after
//! the plane starts, the tests make no host call: whatever happens, the plane did.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ClaimMode, ControlPlane, ControlPlaneConfig, ItemReport};
use cma_core::control::select::Placement;
use cma_core::control::snapshots::{SnapshotRetention, WorkspaceSnapshots};
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{EmulatorConfig, Endpoint, Fault, ScriptEnd};
use cma_core::protocol::WorkState;
use cma_core::runner::lease::LeaseEnd;
use cma_core::runner::session::{ItemOutcome, RunnerConfig};
use cma_core::webhook::{Verifier, WebhookEvent, WebhookSecret, sign_headers};
use cma_sandbox::{SandboxBackend, SandboxSpec};
use cma_store::{SnapshotConfig, SnapshotStore};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;

/// What the plane reported for one finished item, plus the host's warm count at that moment.
#[derive(Debug)]
struct Done {
    work_id: String,
    result: Result<ItemOutcome, String>,
    warm_at_end: usize,
}

struct Rig {
    backend: Arc<dyn SandboxBackend>,
    host: Arc<SandboxHost>,
    plane: ControlPlane,
    done: mpsc::UnboundedReceiver<Done>,
}

fn rig(
    h: &Harness,
    host_config: SandboxHostConfig,
    snapshots: Option<Arc<dyn WorkspaceSnapshots>>,
    config: ControlPlaneConfig,
) -> Rig {
    let backend = h.isolate();
    let mut host = SandboxHost::from_parts(
        [backend.clone()],
        Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
        Arc::new(ToolsetFactory::new()),
        host_config,
    );
    if let Some(s) = snapshots {
        host = host.with_snapshots(s);
    }
    rig_with_host(h, backend, Arc::new(host), config)
}

fn rig_with_host(
    h: &Harness,
    backend: Arc<dyn SandboxBackend>,
    host: Arc<SandboxHost>,
    config: ControlPlaneConfig,
) -> Rig {
    let (tx, done) = mpsc::unbounded_channel();
    let watched = host.clone();
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), host.clone())
        .config(config)
        .on_item(move |r: &ItemReport| {
            let _ = tx.send(Done {
                work_id: r.work.id.to_string(),
                result: r
                    .result
                    .as_ref()
                    .map(Clone::clone)
                    .map_err(|e| e.to_string()),
                warm_at_end: watched.warm_count(),
            });
        })
        .build()
        .expect("plane");
    Rig {
        backend,
        host,
        plane,
        done,
    }
}

fn config(runner: RunnerConfig) -> ControlPlaneConfig {
    ControlPlaneConfig {
        concurrency: 2,
        runner,
        ..ControlPlaneConfig::default()
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Done>) -> Done {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an item finished in time")
        .expect("channel open")
}

async fn sandboxes(backend: &Arc<dyn SandboxBackend>) -> usize {
    backend.list().await.expect("list").len()
}

/// Wait (bounded by [`WAIT`]) until `check` holds; false if it never did.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn polls(h: &Harness) -> usize {
    h.requests()
        .iter()
        .filter(|r| r.path.ends_with("/work/poll"))
        .count()
}

fn signed_event(id: &str, kind: &str, sid: &str) -> WebhookEvent {
    let secret = WebhookSecret::from_bytes(vec![9; 32]).unwrap();
    let body = json!({"type": "event", "id": id, "created_at": "2026-05-01T00:00:00Z",
                      "data": {"type": kind, "id": sid, "organization_id": "org_1",
                               "workspace_id": "wrkspc_1"}})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let headers = sign_headers(&secret, &format!("msg_{id}"), now, body.as_bytes()).unwrap();
    Verifier::new(secret)
        .verify_event(&headers, body.as_bytes())
        .expect("verified")
}

/// The reaper: a session's item ends and its sandbox is kept warm for a short `keep_warm`; with
/// no new work and no further call from the test, the plane's maintenance destroys it in the
/// backend once `keep_warm` is over (the only other reaping, at the next placement, never comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_releases_a_warm_sandbox_at_keep_warm_with_no_new_work() {
    let h = Harness::new().await;
    let mut r = rig(
        &h,
        SandboxHostConfig {
            keep_warm: Duration::from_secs(2),
            ..SandboxHostConfig::default()
        },
        None,
        config(runner_config()),
    );
    let sid = h.session(vec![write("kept.txt", "warm")], ScriptEnd::Idle);
    assert_eq!(r.plane.drain().await.expect("drain"), 1);
    let d = next(&mut r.done).await;
    assert_eq!(d.result.expect("item").results_posted, 1);
    assert_eq!(
        d.warm_at_end, 1,
        "the sandbox was kept warm when the item ended"
    );
    let polls_after_drain = polls(&h);

    let reaped = eventually(|| {
        let backend = r.backend.clone();
        async move { sandboxes(&backend).await == 0 }
    })
    .await;
    assert!(reaped, "the warm sandbox was not released at keep_warm");
    assert_eq!(r.host.warm_count(), 0);
    assert_eq!(polls(&h), polls_after_drain, "no claim was made meanwhile");
    assert_eq!(r.plane.stats().claimed, 1);
    assert!(r.plane.stats().maintenance_passes >= 2);
    assert_eq!(h.emu.session_work(&sid).len(), 1);
    // Shutdown stops the duties: it returns only once their tasks have ended.
    tokio::time::timeout(WAIT, r.plane.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown stops the maintenance loop");
}

/// Snapshot files and bytes under `dir` (entries a running collection removes meanwhile are
/// skipped).
fn storage(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

/// Incompressible bytes that differ per `seed` (so each snapshot has chunks of its own).
fn noise(seed: u64, len: usize) -> bytes::Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Retention and chunk collection run on the plane's schedule: three snapshots of a session are
/// cut to the newest one and their chunks collected at the first pass (storage shrinks), and two
/// more saved later are cut again one interval on, with no call from the test in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_chunk_collection_run_on_schedule_and_storage_shrinks() {
    let h = Harness::new().await;
    let dir = h.dir.path().join("snapshots");
    let mut snap_config = SnapshotConfig::default();
    snap_config.gc.chunk_grace = Duration::ZERO;
    let store = SnapshotStore::local(&dir, snap_config).expect("store");
    let backend = h.isolate();
    let sandbox = backend.create(&SandboxSpec::new()).await.expect("sandbox");
    let save = |seed: u64| {
        let store = store.clone();
        let sandbox = sandbox.clone();
        async move {
            sandbox
                .write_file("data.bin", noise(seed, 300 * 1024))
                .await
                .expect("write");
            WorkspaceSnapshots::save(&store, "sesn_kept", sandbox.as_ref())
                .await
                .expect("save")
        }
    };
    for seed in 1..=3 {
        save(seed).await;
    }
    let before = storage(&dir);
    assert_eq!(store.list("sesn_kept").await.unwrap().len(), 3);

    let host = SandboxHost::from_parts(
        [backend.clone()],
        Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig::default(),
    )
    .with_snapshots(Arc::new(store.clone()))
    .with_snapshot_retention(SnapshotRetention {
        keep_last: 1,
        keep_within: Duration::ZERO,
        interval: Duration::from_secs(1),
    })
    .expect("retention");
    let host = Arc::new(host);
    let r = rig_with_host(&h, backend.clone(), host.clone(), config(runner_config()));
    // Starting the plane (here: a drain of the empty queue) starts its duties.
    assert_eq!(r.plane.drain().await.expect("drain"), 0);

    let shrunk = eventually(|| {
        let store = store.clone();
        async move { store.list("sesn_kept").await.unwrap().len() == 1 }
    })
    .await;
    assert!(shrunk, "retention did not run");
    assert!(
        eventually(|| async { storage(&dir).1 < before.1 }).await,
        "storage did not shrink: {before:?} → {:?}",
        storage(&dir)
    );
    assert!(eventually(|| async { host.housekeeping_passes() >= 1 }).await);
    let first_passes = host.housekeeping_passes();
    let after_first = storage(&dir);
    assert!(after_first.0 < before.0, "{before:?} → {after_first:?}");

    // Two more snapshots: a later scheduled pass cuts them again — only the newest is kept, and
    // storage is back to about one snapshot's worth (without collection, the chunks of all three
    // snapshots, 3 × 300 KiB, would still be there).
    save(4).await;
    let newest = save(5).await;
    let one_snapshot = after_first.1 + 200 * 1024;
    let again = eventually(|| {
        let store = store.clone();
        let dir = dir.clone();
        let newest = newest.clone();
        async move {
            let list = store.list("sesn_kept").await.unwrap();
            list.len() == 1 && list[0].id.as_str() == newest && storage(&dir).1 < one_snapshot
        }
    })
    .await;
    assert!(
        again,
        "the scheduled pass did not run again: {:?}, {:?}",
        store.list("sesn_kept").await.unwrap(),
        storage(&dir)
    );
    assert!(eventually(|| async { host.housekeeping_passes() > first_passes }).await);
    // The kept snapshot is the newest and still restores.
    let fresh = backend.create(&SandboxSpec::new()).await.unwrap();
    assert!(
        WorkspaceSnapshots::restore_latest(&store, "sesn_kept", fresh.as_ref())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        fresh.read_file("data.bin", None).await.unwrap(),
        noise(5, 300 * 1024)
    );
    r.plane.shutdown(Duration::from_secs(5)).await;
}

/// A webhook storm: 100 distinct deliveries arrive while a drain is running (its first poll is
/// held up by the emulator); they cost one re-drain after it, not one drain each, and every
/// queued session still runs to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_webhooks_costs_at_most_two_drains_and_all_work_is_done() {
    let h = Harness::new().await;
    let mut r = rig(
        &h,
        SandboxHostConfig::default(),
        None,
        ControlPlaneConfig {
            claim: ClaimMode::Webhooks {
                fallback_poll: Duration::from_secs(3600),
            },
            ..config(runner_config())
        },
    );
    let sessions: Vec<String> = (0..4)
        .map(|i| h.session(vec![write(&format!("f{i}.txt"), "x")], ScriptEnd::Terminate))
        .collect();
    h.emu
        .inject_fault(Fault::on(Endpoint::Poll).delay_ms(1500))
        .unwrap();
    let deliveries = (0..100).map(|i| {
        let plane = r.plane.clone();
        let sid = sessions[i % sessions.len()].clone();
        async move {
            plane
                .on_webhook(&signed_event(
                    &format!("wevt_{i}"),
                    "session.status_run_started",
                    &sid,
                ))
                .await
        }
    });
    let actions = futures::future::join_all(deliveries).await;
    assert!(
        actions
            .iter()
            .all(|a| *a == cma_core::control::plane::WebhookAction::Drain)
    );
    assert!(r.plane.stats().drains <= 2, "{:?}", r.plane.stats());
    for _ in &sessions {
        let d = next(&mut r.done).await;
        assert_eq!(d.result.expect("item").results_posted, 1, "{}", d.work_id);
    }
    for sid in &sessions {
        assert_eq!(
            h.emu.session_work(sid).last().map(|w| w.state.clone()),
            Some(WorkState::Stopped)
        );
    }
    // Let the re-drain finish: it finds the queue empty.
    assert!(
        eventually(|| async {
            h.requests()
                .iter()
                .filter(|r| r.path.ends_with("/work/poll") && r.status.is_some())
                .count()
                >= sessions.len() + 2
        })
        .await
    );
    let stats = r.plane.stats();
    assert!(stats.drains <= 2, "{stats:?}");
    assert_eq!(stats.claimed, sessions.len() as u64);
    tokio::time::timeout(WAIT, r.plane.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown stops the fallback drain and the maintenance loop");
}

/// `wake()` starts a drain promptly: in webhook mode with an hour-long fallback, after the
/// initial drain found nothing, work that arrives without a webhook is claimed only because
/// `wake()` was called (if it did nothing, the item would wait an hour and this test time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_starts_a_drain_in_webhook_mode() {
    let h = Harness::new().await;
    let mut r = rig(
        &h,
        SandboxHostConfig::default(),
        None,
        ControlPlaneConfig {
            claim: ClaimMode::Webhooks {
                fallback_poll: Duration::from_secs(3600),
            },
            ..config(runner_config())
        },
    );
    let run = tokio::spawn({
        let p = r.plane.clone();
        async move { p.run().await }
    });
    // The initial drain polls once and finds the queue empty.
    assert!(
        eventually(|| async {
            h.requests()
                .iter()
                .any(|r| r.path.ends_with("/work/poll") && r.status == Some(200))
        })
        .await
    );
    let sid = h.session(vec![write("w.txt", "woken")], ScriptEnd::Terminate);
    r.plane.wake();
    let d = next(&mut r.done).await;
    assert_eq!(d.result.expect("item").results_posted, 1);
    assert_eq!(
        d.work_id,
        h.emu.session_work(&sid)[0].id.to_string(),
        "the woken drain claimed the new item"
    );
    assert!(r.plane.stats().drains >= 2);
    r.plane.shutdown(Duration::from_secs(5)).await;
    run.await.unwrap().expect("run");
}

/// A terminated session's sandbox is neither kept warm nor snapshotted; a session that only idles
/// (the control case, same plane) is both. A `session.status_terminated` webhook then releases
/// the idle session's warm sandbox too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_is_not_kept_warm_or_snapshotted() {
    let h = Harness::new().await;
    let store = SnapshotStore::in_memory(SnapshotConfig::default()).unwrap();
    let mut r = rig(
        &h,
        SandboxHostConfig {
            keep_warm: Duration::from_secs(600),
            ..SandboxHostConfig::default()
        },
        Some(Arc::new(store.clone())),
        config(runner_config()),
    );
    let idle = h.session(vec![write("a.txt", "a")], ScriptEnd::Idle);
    assert_eq!(r.plane.drain().await.unwrap(), 1);
    let d = next(&mut r.done).await;
    assert_eq!(d.result.unwrap().results_posted, 1);
    assert_eq!(store.list(&idle).await.unwrap().len(), 1, "idle: saved");
    assert_eq!(r.host.warm_count(), 1, "idle: kept warm");

    let over = h.session(vec![write("b.txt", "b")], ScriptEnd::Terminate);
    assert_eq!(r.plane.drain().await.unwrap(), 1);
    let d = next(&mut r.done).await;
    let outcome = d.result.unwrap();
    assert_eq!(outcome.results_posted, 1);
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert_eq!(
        outcome.session.map(|s| s.status),
        Some(cma_core::protocol::SessionStatus::Terminated)
    );
    assert!(
        store.list(&over).await.unwrap().is_empty(),
        "terminated: no snapshot"
    );
    assert_eq!(
        d.warm_at_end, 1,
        "terminated: not kept warm (only the idle one is)"
    );
    assert_eq!(sandboxes(&r.backend).await, 1, "terminated: destroyed");

    let ev = signed_event("wevt_end", "session.status_terminated", &idle);
    r.plane.on_webhook(&ev).await;
    assert_eq!(r.host.warm_count(), 0);
    assert_eq!(sandboxes(&r.backend).await, 0);
    r.plane.shutdown(Duration::from_secs(5)).await;
}

/// After a lost lease (another worker holds the item now) the sandbox is neither kept warm nor
/// saved as the session's newest snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_not_kept_warm_or_snapshotted() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    let store = SnapshotStore::in_memory(SnapshotConfig::default()).unwrap();
    let mut r = rig(
        &h,
        SandboxHostConfig {
            keep_warm: Duration::from_secs(600),
            ..SandboxHostConfig::default()
        },
        Some(Arc::new(store.clone())),
        config(RunnerConfig {
            max_idle: None,
            ..runner_config()
        }),
    );
    let sid = h.session(vec![write("a.txt", "a")], ScriptEnd::Idle);
    assert_eq!(r.plane.drain().await.unwrap(), 1);
    h.wait_results(&sid, 1).await;
    assert_eq!(sandboxes(&r.backend).await, 1);
    let work = h.emu.session_work(&sid)[0].id.to_string();
    assert!(h.emu.lose_lease(&work));
    let d = next(&mut r.done).await;
    let outcome = d.result.unwrap();
    assert!(
        matches!(outcome.lease_end, LeaseEnd::LeaseLost { .. }),
        "{:?}",
        outcome.lease_end
    );
    assert!(!outcome.stopped);
    assert_eq!(d.warm_at_end, 0, "not kept warm");
    assert_eq!(r.host.warm_count(), 0);
    assert_eq!(sandboxes(&r.backend).await, 0, "destroyed");
    assert!(store.list(&sid).await.unwrap().is_empty(), "no snapshot");
    r.plane.shutdown(Duration::from_secs(5)).await;
}

/// The plane polls with `Anthropic-Worker-ID` by default (the SDK's `<hostname>-<12 hex>`, one
/// per process), so a strict emulator serves it. The plane's `worker_id` setting wins over the
/// client's configured id, which wins over the default; an id that is no header value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plane_polls_with_a_worker_id_by_default() {
    let h = Harness::with_config(EmulatorConfig::default().strict(true)).await;
    let bare = cma_core::client::Client::new(
        cma_core::client::ClientConfig::builder()
            .base_url(h.emu.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let cases = [
        (
            bare.clone(),
            None,
            cma_core::control::identity::default_worker_id(),
        ),
        (h.client.clone(), None, WORKER_ID),
        (bare, Some("plane-7"), "plane-7"),
    ];
    for (client, configured, want) in cases {
        let plane = ControlPlane::builder(client, h.env.id.clone(), h.key(), h.host())
            .config(ControlPlaneConfig {
                worker_id: configured.map(str::to_owned),
                ..ControlPlaneConfig::default()
            })
            .build()
            .unwrap();
        assert_eq!(plane.worker_id(), want);
        assert_eq!(plane.drain().await.expect("served by a strict emulator"), 0);
        let last = h
            .requests()
            .into_iter()
            .rfind(|r| r.path.ends_with("/work/poll"))
            .unwrap();
        assert_eq!(last.worker_id.as_deref(), Some(want));
        assert_eq!(last.status, Some(200));
        plane.shutdown(Duration::from_secs(5)).await;
    }
    let bad = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), h.host())
        .config(ControlPlaneConfig {
            worker_id: Some("two\nlines".into()),
            ..ControlPlaneConfig::default()
        })
        .build();
    assert!(
        matches!(
            bad,
            Err(cma_core::control::plane::ControlPlaneError::Config(_))
        ),
        "{bad:?}"
    );
}
