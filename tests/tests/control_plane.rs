//! The control plane end to end (issue 3, build item 5): concurrency permits taken before `poll`,
//! webhook-triggered drains with de-duplication, graceful shutdown that releases in-flight work,
//! warm sandbox reuse across a session's work items, and health-check items — a `ControlPlane`
//! with a `SandboxHost` over the isolate backend and the official toolset, against the
//! in-process emulator.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cma_core::client::{Client, ClientConfig};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig, ItemReport, WebhookAction};
use cma_core::control::select::Placement;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{Emulator, EmulatorConfig, Endpoint, Fault, ScriptEnd};
use cma_core::protocol::{WorkData, WorkState};
use cma_core::runner::lease::LeaseEnd;
use cma_core::runner::session::{ItemOutcome, RunnerConfig};
use cma_core::webhook::{Verifier, WebhookEvent, WebhookSecret, sign_headers};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;

/// What the plane reported for one finished item.
#[derive(Debug)]
struct Done {
    work_id: String,
    result: Result<ItemOutcome, String>,
}

fn plane(
    h: &Harness,
    host: Arc<SandboxHost>,
    concurrency: usize,
    runner: RunnerConfig,
) -> (ControlPlane, mpsc::UnboundedReceiver<Done>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let p = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), host)
        .config(ControlPlaneConfig {
            concurrency,
            runner,
            ..ControlPlaneConfig::default()
        })
        .on_item(move |r: &ItemReport| {
            let _ = tx.send(Done {
                work_id: r.work.id.to_string(),
                result: r
                    .result
                    .as_ref()
                    .map(Clone::clone)
                    .map_err(|e| e.to_string()),
            });
        })
        .build()
        .expect("plane");
    (p, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Done>) -> Done {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an item finished in time")
        .expect("channel open")
}

async fn bounded<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in time"))
}

fn no_idle() -> RunnerConfig {
    RunnerConfig {
        max_idle: None,
        ..runner_config()
    }
}

fn state(e: &Emulator, sid: &str) -> Option<WorkState> {
    e.session_work(sid).last().map(|w| w.state.clone())
}

fn polls(e: &Emulator) -> usize {
    e.requests()
        .iter()
        .filter(|r| r.path.ends_with("/work/poll"))
        .count()
}

/// Concurrency 1 and two sessions: while the first item runs, the plane does not even poll (the
/// permit comes before the poll), so the second item stays queued and un-acked; once the first
/// ends, the second is claimed and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_permit_is_taken_before_polling() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    let first = h.session(vec![], ScriptEnd::Idle);
    let second = h.session(vec![write("b.txt", "b")], ScriptEnd::Terminate);
    let (p, mut done) = plane(&h, h.host(), 1, no_idle());
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run().await }
    });
    // The first item runs for several heartbeat intervals.
    let beats = |e: &Emulator| {
        e.requests()
            .iter()
            .filter(|r| r.path.ends_with("/heartbeat") && r.status == Some(200))
            .count()
    };
    assert!(h.emu.wait_for(WAIT, |e| beats(e) >= 3).await);
    assert_eq!(state(&h.emu, &first), Some(WorkState::Active));
    assert_eq!(state(&h.emu, &second), Some(WorkState::Queued));
    assert_eq!(polls(&h.emu), 1, "no poll while the only permit is taken");
    assert_eq!(p.stats().in_flight, 1);
    h.emu.terminate_session(&first).unwrap();
    let a = next(&mut done).await;
    let b = next(&mut done).await;
    assert_eq!(a.work_id, h.emu.session_work(&first)[0].id.to_string());
    assert_eq!(b.work_id, h.emu.session_work(&second)[0].id.to_string());
    assert_eq!(b.result.unwrap().results_posted, 1);
    assert_eq!(state(&h.emu, &first), Some(WorkState::Stopped));
    assert_eq!(state(&h.emu, &second), Some(WorkState::Stopped));
    p.shutdown(Duration::from_secs(5)).await;
    run.await.unwrap().unwrap();
    assert_eq!(p.stats().claimed, 2);
    assert_eq!(p.stats().in_flight, 0);
}

/// With concurrency 2 both sessions run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_permits_run_two_items_at_once() {
    let h = Harness::new().await;
    let a = h.session(vec![], ScriptEnd::Idle);
    let b = h.session(vec![], ScriptEnd::Idle);
    let (p, mut done) = plane(&h, h.host(), 2, no_idle());
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run().await }
    });
    let both = h
        .emu
        .wait_for(WAIT, |e| {
            state(e, &a) == Some(WorkState::Active) && state(e, &b) == Some(WorkState::Active)
        })
        .await;
    assert!(both);
    h.emu.terminate_session(&a).unwrap();
    h.emu.terminate_session(&b).unwrap();
    next(&mut done).await;
    next(&mut done).await;
    p.shutdown(Duration::from_secs(5)).await;
    run.await.unwrap().unwrap();
}

fn signed_event(secret: &WebhookSecret, id: &str, kind: &str, sid: &str) -> WebhookEvent {
    let body = json!({"type": "event", "id": id, "created_at": "2026-05-01T00:00:00Z",
                      "data": {"type": kind, "id": sid, "organization_id": "org_1",
                               "workspace_id": "wrkspc_1"}})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let headers = sign_headers(secret, &format!("msg_{id}"), now, body.as_bytes()).unwrap();
    Verifier::new(secret.clone())
        .verify_event(&headers, body.as_bytes())
        .expect("verified")
}

/// A verified `session.status_run_started` webhook starts a drain that claims and runs the
/// session's item; the same delivery again is a duplicate; unrelated events are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_triggers_a_drain_and_duplicates_are_ignored() {
    let h = Harness::new().await;
    let secret = WebhookSecret::from_bytes(vec![7; 32]).unwrap();
    let (p, mut done) = plane(&h, h.host(), 2, runner_config());
    let idle = signed_event(&secret, "wevt_0", "session.status_idled", "sesn_x");
    assert_eq!(p.on_webhook(&idle).await, WebhookAction::Ignored);
    assert_eq!(polls(&h.emu), 0);

    let sid = h.session(vec![write("w.txt", "w")], ScriptEnd::Terminate);
    let ev = signed_event(&secret, "wevt_1", "session.status_run_started", &sid);
    assert_eq!(p.on_webhook(&ev).await, WebhookAction::Drain);
    assert_eq!(p.on_webhook(&ev).await, WebhookAction::Duplicate);
    let d = next(&mut done).await;
    let outcome = d.result.unwrap();
    assert_eq!(outcome.results_posted, 1);
    assert!(outcome.stopped);
    assert_eq!(state(&h.emu, &sid), Some(WorkState::Stopped));
    // Drains poll without blocking and stop at the first empty poll.
    assert!(h.emu.wait_for(WAIT, |e| polls(e) >= 2).await);
    let reqs = h.requests();
    let poll_reqs: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/work/poll"))
        .collect();
    assert!(poll_reqs.iter().all(|r| r.query.is_none()), "{poll_reqs:?}");
    p.shutdown(Duration::from_secs(5)).await;
    // Only one drain ran: the duplicate started nothing.
    assert_eq!(p.stats().claimed, 1);
    assert_eq!(poll_reqs.len(), 2);
}

/// `shutdown(grace)`: an item still running when the grace ends is cancelled and force-stopped,
/// which releases its work item; `run` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_in_flight_work_by_force_stopping_it() {
    let h = Harness::new().await;
    let sid = h.session(vec![], ScriptEnd::Idle);
    let (p, mut done) = plane(&h, h.host(), 2, no_idle());
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run().await }
    });
    assert!(
        h.emu
            .wait_for(WAIT, |e| state(e, &sid) == Some(WorkState::Active))
            .await
    );
    tokio::time::timeout(WAIT, p.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown finishes");
    run.await.unwrap().unwrap();
    let d = next(&mut done).await;
    let outcome = d.result.unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::Cancelled);
    assert!(outcome.stopped);
    assert_eq!(state(&h.emu, &sid), Some(WorkState::Stopped));
    let reqs = h.requests();
    let s = stops(&reqs, &d.work_id);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].body.as_deref(), Some(r#"{"force":true}"#));
    // Nothing is claimed after shutdown.
    let later = h.session(vec![], ScriptEnd::Idle);
    p.wake();
    assert_eq!(p.drain().await.unwrap(), 0);
    assert_eq!(state(&h.emu, &later), Some(WorkState::Queued));
    assert_eq!(p.stats().claimed, 1);
}

/// `shutdown(grace)`: an item that ends within the grace finishes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_items_finish_within_the_grace() {
    let h = Harness::new().await;
    let sid = h.session(vec![], ScriptEnd::Idle);
    let (p, mut done) = plane(&h, h.host(), 1, no_idle());
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run().await }
    });
    assert!(
        h.emu
            .wait_for(WAIT, |e| state(e, &sid) == Some(WorkState::Active))
            .await
    );
    let shutdown = tokio::spawn({
        let p = p.clone();
        async move { p.shutdown(WAIT).await }
    });
    h.emu.terminate_session(&sid).unwrap();
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    run.await.unwrap().unwrap();
    let outcome = next(&mut done).await.result.unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert!(outcome.stopped);
}

/// A session's second work item reuses its warm sandbox: a file written during the first item is
/// read during the second. With no keep-warm time the second item gets a fresh sandbox and the
/// read fails (so the test can tell the difference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_next_item_reuses_its_warm_sandbox() {
    for keep_warm in [Duration::from_secs(60), Duration::ZERO] {
        let h = Harness::new().await;
        let host = Arc::new(SandboxHost::from_parts(
            [h.isolate()],
            Arc::new(|_: &Placement<'_>| "isolate".to_owned()),
            Arc::new(ToolsetFactory::new()),
            SandboxHostConfig {
                keep_warm,
                ..SandboxHostConfig::default()
            },
        ));
        let sid = h.session(vec![write("notes/kept.txt", "kept")], ScriptEnd::Idle);
        let (p, mut done) = plane(&h, host.clone(), 1, runner_config());
        assert_eq!(bounded(p.drain(), "drain 1").await.unwrap(), 1);
        let first = next(&mut done).await.result.unwrap();
        assert_eq!(first.results_posted, 1);
        assert_eq!(host.warm_count(), usize::from(!keep_warm.is_zero()));
        // A user message re-queues the dormant session; the agent then asks to read the file.
        h.emu
            .send_events(
                &sid,
                vec![json!({"type": "user.message",
                            "content": [{"type": "text", "text": "again"}]})],
            )
            .unwrap();
        h.emu
            .emit_events(
                &sid,
                vec![
                    json!({"type": "agent.tool_use", "id": "sevt_reread", "name": "read",
                            "input": {"file_path": "notes/kept.txt"}}),
                ],
            )
            .unwrap();
        assert_eq!(h.emu.session_work(&sid).len(), 2, "a second work item");
        // With one permit, the drain returns once the item is over: the turn ends (as the agent
        // would after the result) and the idle rule ends the run.
        let drain = tokio::spawn({
            let p = p.clone();
            async move { p.drain().await }
        });
        let answered = h
            .emu
            .wait_for(WAIT, |e| {
                e.tool_results()
                    .iter()
                    .any(|r| r.tool_use_id == "sevt_reread")
            })
            .await;
        assert!(answered);
        h.emu
            .emit_events(
                &sid,
                vec![json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})],
            )
            .unwrap();
        assert_eq!(bounded(drain, "drain 2").await.unwrap().unwrap(), 1);
        let second = next(&mut done).await.result.unwrap();
        assert_eq!(second.results_posted, 1);
        let reread = h
            .results(&sid)
            .into_iter()
            .find(|r| r.tool_use_id == "sevt_reread")
            .unwrap();
        if keep_warm.is_zero() {
            assert_eq!(reread.is_error, Some(true), "a fresh sandbox has no file");
        } else {
            assert_eq!(reread.is_error, Some(false));
            assert_eq!(text(&reread), "kept");
        }
        bounded(p.shutdown(Duration::from_secs(5)), "shutdown").await;
        bounded(host.destroy_all_warm(), "destroy").await;
        assert_eq!(host.warm_count(), 0);
    }
}

/// Health-check items mixed with session work under `run`: each is acked and force-stopped, the
/// session runs, nothing counts as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_items_are_handled_among_session_work() {
    let h = Harness::new().await;
    let hc: WorkData =
        serde_json::from_value(json!({"type": "healthcheck", "id": "hc_a"})).unwrap();
    let hc1 = h.emu.enqueue_work(&h.env.id, hc.clone()).unwrap();
    let sid = h.session(vec![write("x.txt", "x")], ScriptEnd::Terminate);
    let hc2 = h.emu.enqueue_work(&h.env.id, hc).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (p, mut done) = plane(&h, h.host(), 2, runner_config());
    let run = tokio::spawn({
        let p = p.clone();
        async move { p.run().await }
    });
    for _ in 0..3 {
        let d = next(&mut done).await;
        seen.lock().unwrap().push(d.work_id);
    }
    p.shutdown(Duration::from_secs(5)).await;
    run.await.unwrap().unwrap();
    for id in [&hc1, &hc2] {
        assert_eq!(h.emu.work(id).unwrap().state, WorkState::Stopped);
        let reqs = h.requests();
        assert!(
            !reqs
                .iter()
                .any(|r| r.path.ends_with(&format!("/work/{id}/heartbeat")))
        );
    }
    assert_eq!(state(&h.emu, &sid), Some(WorkState::Stopped));
    assert_eq!(h.results(&sid).len(), 1);
    assert_eq!(p.stats().failed, 0);
    assert_eq!(p.stats().claimed, 3);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// A drain (the webhook shape) backs off on a transient poll failure and on a transient ack
/// failure and goes on claiming, as the SDK's `aiter_work(drain=True)` does; a fatal 4xx on poll
/// ends it with an error. The client makes no retries of its own here, so each injected fault
/// reaches the plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_survive_transient_poll_and_ack_failures() {
    let h = Harness::new().await;
    let client = Client::new(
        ClientConfig::builder()
            .base_url(h.emu.base_url())
            .max_retries(0)
            .build()
            .unwrap(),
    )
    .unwrap();
    let (tx, mut done) = mpsc::unbounded_channel();
    let p = ControlPlane::builder(client, h.env.id.clone(), h.key(), h.host())
        .config(ControlPlaneConfig {
            concurrency: 1,
            reclaim_older_than_ms: Some(100),
            runner: runner_config(),
            ..ControlPlaneConfig::default()
        })
        .on_item(move |r: &ItemReport| {
            let _ = tx.send(
                r.result
                    .as_ref()
                    .map(Clone::clone)
                    .map_err(|e| e.to_string()),
            );
        })
        .build()
        .unwrap();
    let sid = h.session(vec![write("a.txt", "a")], ScriptEnd::Terminate);
    h.emu
        .inject_fault(Fault::on(Endpoint::Poll).status(503))
        .unwrap();
    h.emu
        .inject_fault(Fault::on(Endpoint::Ack).status(503))
        .unwrap();
    assert_eq!(bounded(p.drain(), "drain").await.unwrap(), 1);
    let outcome = tokio::time::timeout(WAIT, done.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.results_posted, 1);
    assert_eq!(state(&h.emu, &sid), Some(WorkState::Stopped));
    let reqs = h.requests();
    let claim_calls: Vec<(String, Option<u16>)> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/work/poll") || r.path.ends_with("/ack"))
        .map(|r| (r.path.rsplit('/').next().unwrap().to_owned(), r.status))
        .collect();
    let head: Vec<(&str, Option<u16>)> = claim_calls
        .iter()
        .take(5)
        .map(|(p, s)| (p.as_str(), *s))
        .collect();
    assert_eq!(
        head,
        [
            ("poll", Some(503)),
            ("poll", Some(200)),
            ("ack", Some(503)),
            ("poll", Some(200)),
            ("ack", Some(200)),
        ]
    );
    h.emu
        .inject_fault(Fault::on(Endpoint::Poll).status(403))
        .unwrap();
    let err = bounded(p.drain(), "drain").await.unwrap_err();
    assert!(err.to_string().contains("permanently"), "{err}");
    p.shutdown(Duration::from_secs(5)).await;
}

/// A fatal 4xx on `ack` force-stops the item and the plane goes on; a fatal 4xx on `poll` (a
/// wrong environment key) ends `run` with an error instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_ack_force_stops_and_a_rejected_poll_ends_the_run() {
    let h = Harness::new().await;
    let sid = h.session(vec![], ScriptEnd::Idle);
    h.emu
        .inject_fault(Fault::on(Endpoint::Ack).status(400))
        .unwrap();
    let (p, _done) = plane(&h, h.host(), 1, runner_config());
    assert_eq!(bounded(p.drain(), "drain").await.unwrap(), 0);
    assert_eq!(state(&h.emu, &sid), Some(WorkState::Stopped));
    let reqs = h.requests();
    let wid = h.emu.session_work(&sid)[0].id.to_string();
    let s = stops(&reqs, &wid);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].body.as_deref(), Some(r#"{"force":true}"#));
    assert!(!reqs.iter().any(|r| r.path.ends_with("/heartbeat")));

    let wrong = ControlPlane::builder(
        h.client.clone(),
        h.env.id.clone(),
        cma_core::client::Credential::environment_key("envkey_wrong"),
        h.host(),
    )
    .build()
    .unwrap();
    let err = bounded(wrong.run(), "run").await.unwrap_err();
    assert!(err.to_string().contains("permanently"), "{err}");
}
