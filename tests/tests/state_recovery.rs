//! The control plane's record in a `StateStore` (a SQLite file): every sandbox and session
//! transition of a real work item is written, a restarted host re-adopts the sandbox its session
//! left warm and destroys the ones nobody points at, and webhook ids stay de-duplicated across a
//! restart.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig, ItemReport, WebhookAction};
use cma_core::control::record::events;
use cma_core::control::select::Placement;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::ScriptEnd;
use cma_core::webhook::WebhookEvent;
use cma_sandbox::{SandboxBackend, SandboxSpec};
use cma_store::state::{
    LeaseClaim, SandboxQuery, SandboxRecord, SessionStatus, SqliteStateStore, StateStore,
};
use support::{Harness, WAIT, runner_config, write};
use tokio::sync::mpsc;

async fn open_store(h: &Harness) -> Arc<dyn StateStore> {
    Arc::new(
        SqliteStateStore::open(h.dir.path().join("state.db"))
            .await
            .expect("state store opens"),
    )
}

fn host(backend: Arc<dyn SandboxBackend>, store: Arc<dyn StateStore>) -> Arc<SandboxHost> {
    Arc::new(
        SandboxHost::from_parts(
            [backend],
            Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
            Arc::new(ToolsetFactory::new()),
            SandboxHostConfig::default(),
        )
        .state_store(store),
    )
}

fn webhook(id: &str) -> WebhookEvent {
    webhook_about(id, "session.status_idled", "sesn_x")
}

fn webhook_about(id: &str, kind: &str, session_id: &str) -> WebhookEvent {
    serde_json::from_value(serde_json::json!({
        "type": "event",
        "id": id,
        "created_at": "2026-11-27T00:00:00Z",
        "data": {
            "type": kind,
            "id": session_id,
            "organization_id": "org_x",
            "workspace_id": "wrkspc_x"
        }
    }))
    .expect("a webhook event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_picks_up_from_the_state_store() {
    let h = Harness::new().await;
    let backend = h.isolate();
    let store = open_store(&h).await;
    let first = host(backend.clone(), store.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Leases a previous process of this replica left behind, and one of another replica.
    let now = chrono::Utc::now();
    for (work, owner) in [("work_stale", "replica-a"), ("work_other", "replica-b")] {
        let claim = LeaseClaim {
            work_id: work.into(),
            session_id: "sesn_old".into(),
            owner: owner.into(),
            ttl: Duration::from_secs(600),
        };
        store.claim_lease(&claim, now).await.unwrap();
    }
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), first.clone())
        .config(ControlPlaneConfig {
            concurrency: 1,
            runner: runner_config(),
            replica_id: "replica-a".into(),
            ..ControlPlaneConfig::default()
        })
        .state_store(store.clone())
        .on_item(move |r: &ItemReport| {
            let _ = tx.send(r.work.id.to_string());
        })
        .build()
        .expect("plane");
    assert_eq!(
        plane.on_webhook(&webhook("wevt_1")).await,
        WebhookAction::Ignored
    );
    assert_eq!(
        plane.on_webhook(&webhook("wevt_1")).await,
        WebhookAction::Duplicate
    );

    let sid = h.session(vec![write("kept.txt", "still here")], ScriptEnd::Idle);
    let running = tokio::spawn({
        let plane = plane.clone();
        async move { plane.run().await }
    });
    // While the item runs, its lease is recorded under this replica; the stale one is gone.
    let mut held = Vec::new();
    for _ in 0..400 {
        held = store.list_leases(Some("replica-a")).await.unwrap();
        if held.iter().any(|l| l.session_id == sid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        held.iter().any(|l| l.session_id == sid) && held.iter().all(|l| l.work_id != "work_stale"),
        "{held:?}"
    );
    let work_id = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the item finished in time")
        .expect("report");
    plane.shutdown(Duration::from_secs(5)).await;
    running.await.unwrap().expect("the plane stops cleanly");
    // Finished: released. Another replica's lease is not ours to touch.
    assert!(
        store
            .list_leases(Some("replica-a"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_lease("work_other").await.unwrap().is_some());

    // What the first life recorded.
    let session = store
        .get_session(&sid)
        .await
        .unwrap()
        .expect("session recorded");
    assert_eq!(session.status, SessionStatus::Idle);
    assert_eq!(session.backend, "isolate");
    assert_eq!(session.last_work_id.as_deref(), Some(work_id.as_str()));
    let sandbox_id = session
        .sandbox_id
        .clone()
        .expect("the session's sandbox is recorded");
    let events_of = |log: Vec<cma_store::state::Transition>| -> Vec<String> {
        log.into_iter().map(|t| t.event).collect()
    };
    assert_eq!(
        events_of(store.list_transitions(&sid, 0, 100).await.unwrap()),
        [
            events::SANDBOX_CREATED,
            "running",
            events::SANDBOX_KEPT_WARM
        ]
    );
    let known = store
        .list_sandboxes(&SandboxQuery::backend("isolate"))
        .await
        .unwrap();
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].sandbox_id, sandbox_id);
    assert_eq!(known[0].session_id.as_deref(), Some(sid.as_str()));
    assert_eq!(first.warm_count(), 1);

    // A sandbox the store knows but no session points at any more, and one that is gone.
    let stray = backend.create(&SandboxSpec::new()).await.unwrap();
    for (id, session_id) in [
        (stray.id().as_str(), Some("sesn_elsewhere")),
        ("sbx_vanished", None),
    ] {
        store
            .put_sandbox(&SandboxRecord {
                backend: "isolate".into(),
                sandbox_id: id.into(),
                session_id: session_id.map(str::to_owned),
                created_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
    }

    // The process dies: the warm pool is lost, the sandboxes and the SQLite file remain.
    drop(plane);
    drop(first);
    drop(store);

    let store = open_store(&h).await;
    let second = host(h.isolate(), store.clone());
    let report = second.recover().await.expect("recovery");
    assert_eq!(
        (
            report.readopted,
            report.destroyed,
            report.missing,
            report.interrupted,
            report.failed
        ),
        (1, 1, 1, 0, 0),
        "{report:?}"
    );
    assert_eq!(
        second.warm_count(),
        1,
        "the session's sandbox is warm again"
    );
    let alive: Vec<String> = backend
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id.as_str().to_owned())
        .collect();
    assert_eq!(
        alive,
        vec![sandbox_id.clone()],
        "the stray sandbox was destroyed"
    );
    let known: Vec<String> = store
        .list_sandboxes(&SandboxQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sandbox_id)
        .collect();
    assert_eq!(known, vec![sandbox_id.clone()]);
    let log = events_of(store.list_transitions(&sid, 0, 100).await.unwrap());
    assert_eq!(
        log.last().map(String::as_str),
        Some(events::SANDBOX_READOPTED)
    );
    assert_eq!(
        store.get_session(&sid).await.unwrap().unwrap().status,
        SessionStatus::Idle
    );
    let readopted = backend
        .resume(&cma_sandbox::SandboxId::parse(sandbox_id).unwrap())
        .await
        .unwrap();
    let file = readopted
        .read_file("kept.txt", None)
        .await
        .expect("the file survived");
    assert_eq!(&file[..], b"still here");

    // Webhook ids are remembered across the restart.
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), second)
        .state_store(store)
        .build()
        .expect("plane");
    assert_eq!(
        plane.on_webhook(&webhook("wevt_1")).await,
        WebhookAction::Duplicate
    );
    assert_eq!(
        plane.on_webhook(&webhook("wevt_2")).await,
        WebhookAction::Ignored
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_interrupted_mid_item_are_marked_sleeping_on_recovery() {
    let h = Harness::new().await;
    let store = open_store(&h).await;
    let mut record =
        cma_store::state::SessionRecord::new("sesn_cut", "isolate", chrono::Utc::now());
    record.status = SessionStatus::Running;
    store
        .put_session(&record, cma_store::state::Precondition::Absent)
        .await
        .unwrap();
    let report = host(h.isolate(), store.clone()).recover().await.unwrap();
    assert_eq!(report.interrupted, 1, "{report:?}");
    let after = store.get_session("sesn_cut").await.unwrap().unwrap();
    assert_eq!(after.status, SessionStatus::Sleeping);
    let log = store.list_transitions("sesn_cut", 0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].event.as_str(), log[0].detail.as_str()),
        (events::INTERRUPTED, "running")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_stays_terminated_and_its_sandbox_is_not_readopted() {
    let h = Harness::new().await;
    let backend = h.isolate();
    let store = open_store(&h).await;
    let first = host(backend.clone(), store.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), first.clone())
        .config(ControlPlaneConfig {
            concurrency: 1,
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .state_store(store.clone())
        .on_item(move |_: &ItemReport| {
            let _ = tx.send(());
        })
        .build()
        .expect("plane");
    let sid = h.session(vec![write("a.txt", "a")], ScriptEnd::Idle);
    assert_eq!(plane.drain().await.expect("drain"), 1);
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the item finished in time")
        .expect("report");
    assert_eq!(first.warm_count(), 1);

    // The webhook reaches another replica (its own host, the shared state store): this
    // process's warm sandbox outlives the termination, as it would if the process had died.
    let replica = ControlPlane::builder(
        h.client.clone(),
        h.env.id.clone(),
        h.key(),
        host(h.isolate(), store.clone()),
    )
    .state_store(store.clone())
    .build()
    .expect("replica");
    let ended = webhook_about("wevt_end", "session.status_terminated", &sid);
    assert_eq!(replica.on_webhook(&ended).await, WebhookAction::Ignored);
    assert_eq!(first.warm_count(), 1);
    let record = store.get_session(&sid).await.unwrap().unwrap();
    assert_eq!(record.status, SessionStatus::Terminated);
    let log = store.list_transitions(&sid, 0, 100).await.unwrap();
    assert_eq!(
        (
            log.last().unwrap().event.as_str(),
            log.last().unwrap().detail.as_str()
        ),
        (events::TERMINATED, "session.status_terminated")
    );

    // After a restart its sandbox is destroyed, not adopted, and the session stays terminated.
    plane.shutdown(std::time::Duration::from_secs(5)).await;
    replica.shutdown(std::time::Duration::from_secs(5)).await;
    drop(plane);
    drop(first);
    let second = host(h.isolate(), store.clone());
    let report = second.recover().await.expect("recovery");
    assert_eq!((report.readopted, report.destroyed), (0, 1), "{report:?}");
    assert_eq!(second.warm_count(), 0);
    assert!(backend.list().await.unwrap().is_empty());
    assert!(
        store
            .list_sandboxes(&SandboxQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.get_session(&sid).await.unwrap().unwrap().status,
        SessionStatus::Terminated
    );
}

/// A sandbox whose workspace was being restored from a snapshot when the process stopped
/// (its restore marker still there) is not re-adopted half-written: recovery destroys it, and
/// the session's next item restores afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_left_with_an_unfinished_restore_is_destroyed_not_readopted() {
    let h = Harness::new().await;
    let backend = h.isolate();
    let store = open_store(&h).await;
    let first = host(backend.clone(), store.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), first.clone())
        .config(ControlPlaneConfig {
            concurrency: 1,
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .state_store(store.clone())
        .on_item(move |_: &ItemReport| {
            let _ = tx.send(());
        })
        .build()
        .expect("plane");
    h.session(vec![write("a.txt", "a")], ScriptEnd::Idle);
    assert_eq!(plane.drain().await.expect("drain"), 1);
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the item finished in time")
        .expect("report");
    assert_eq!(first.warm_count(), 1);
    // What a restore the process was killed in would have left.
    let [info] = &backend.list().await.unwrap()[..] else {
        panic!("one sandbox")
    };
    let sandbox = backend.resume(&info.id).await.unwrap();
    sandbox
        .write_file(
            &format!("/workspace/{}", cma_store::snapshot::RESTORE_MARKER),
            bytes::Bytes::from_static(b"a snapshot id"),
        )
        .await
        .unwrap();
    plane.shutdown(Duration::from_secs(5)).await;
    drop(plane);
    drop(first);

    let second = host(h.isolate(), store.clone());
    let report = second.recover().await.expect("recovery");
    assert_eq!((report.readopted, report.destroyed), (0, 1), "{report:?}");
    assert_eq!(second.warm_count(), 0);
    assert!(backend.list().await.unwrap().is_empty());
    assert!(
        store
            .list_sandboxes(&SandboxQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// More sandbox records than one page of the state store holds: recovery reads every page, so
/// each warm session's sandbox is re-adopted and none is mistaken for an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reads_every_page_of_sandbox_records() {
    let h = Harness::new().await;
    let backend = h.isolate();
    let store = open_store(&h).await;
    let count = cma_store::state::MAX_PAGE_LEN as usize + 5;
    for i in 0..count {
        let sandbox = backend.create(&SandboxSpec::new()).await.unwrap();
        let session_id = format!("sesn_page_{i:05}");
        let mut session =
            cma_store::state::SessionRecord::new(&session_id, "isolate", chrono::Utc::now());
        session.sandbox_id = Some(sandbox.id().as_str().to_owned());
        session.status = SessionStatus::Idle;
        store
            .put_session(&session, cma_store::state::Precondition::Any)
            .await
            .unwrap();
        store
            .put_sandbox(&SandboxRecord {
                backend: "isolate".into(),
                sandbox_id: sandbox.id().as_str().into(),
                session_id: Some(session_id),
                created_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
    }
    let restarted = Arc::new(
        SandboxHost::from_parts(
            [h.isolate()],
            Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
            Arc::new(ToolsetFactory::new()),
            SandboxHostConfig {
                max_warm: count,
                ..SandboxHostConfig::default()
            },
        )
        .state_store(store.clone()),
    );
    let report = restarted.recover().await.expect("recovery");
    assert_eq!(
        (report.readopted, report.orphans, report.destroyed),
        (count, 0, 0),
        "{report:?}"
    );
    assert_eq!(backend.list().await.unwrap().len(), count);
    assert_eq!(restarted.warm_count(), count);
}
