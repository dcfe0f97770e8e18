//! Runner fidelity, lifecycle part: the worker scenarios W1–W5 of the vectors' `worker` section
//! (requests the official SDK's worker made) and the
//! lease-loss cases of docs/protocol.md §3.4, run through the real stack (control plane or
//! `SessionRunner::handle_item`, `SandboxHost` over the isolate backend, the official toolset)
//! against the in-process emulator, whose request log shows what the worker sent.
//!
//! Tool calls here are file tools (`write`/`read`): the isolate backend has no shell, and these
//! tests check the runner's requests, not tool output.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cma_core::control::plane::{ControlPlane, ControlPlaneConfig, ItemReport};
use cma_core::emulator::{AuthKind, EmulatorConfig, Endpoint, Fault, RequestRecord, ScriptEnd};
use cma_core::protocol::{WorkData, WorkState};
use cma_core::runner::lease::LeaseEnd;
use cma_core::runner::session::{ItemOutcome, RunnerConfig, RunnerError};
use cma_vectors::{Field as _, Value};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The worker section's setup values (environment id and key, worker id).
struct Setup {
    environment_id: String,
    environment_key: String,
    worker_id: String,
}

fn setup() -> Setup {
    let s = cma_vectors::Vectors::load().section("worker").req("setup");
    Setup {
        environment_id: s.req_str("environment_id").to_owned(),
        environment_key: s.req_str("environment_key").to_owned(),
        worker_id: s.req_str("worker_id").to_owned(),
    }
}

/// One request of the W1 scenario's steps.
#[derive(Debug, Clone)]
struct ExpectedRequest {
    method: String,
    target: String,
    bearer: Option<String>,
    helper: Option<String>,
    worker_id: Option<String>,
    body: Option<String>,
    concurrent: bool,
    repeated: bool,
}

fn w1() -> &'static Value {
    cma_vectors::Vectors::load().case("worker", "scenarios", "W1")
}

/// W1's requests in order; the result posts (one per owned tool call, whose bodies are the
/// SDK run's own results) become one line to repeat once per call.
fn w1_lines() -> Vec<ExpectedRequest> {
    let mut out: Vec<ExpectedRequest> = Vec::new();
    for step in w1().req_array("steps") {
        let (group, concurrent) = match step.get("concurrent") {
            Some(g) => (g.as_array().expect("concurrent steps").clone(), true),
            None => (vec![step.clone()], false),
        };
        for s in &group {
            let repeated = s.req_str("kind") == "events_post";
            if repeated && out.last().is_some_and(|l| l.repeated) {
                continue;
            }
            let owned = |k: &str| s.opt_str(k).map(str::to_owned);
            out.push(ExpectedRequest {
                method: s.req_str("method").to_owned(),
                target: s.req_str("target").to_owned(),
                bearer: owned("auth"),
                helper: owned("helper"),
                worker_id: owned("worker_id"),
                body: if repeated { None } else { owned("body") },
                concurrent,
                repeated,
            });
        }
    }
    out
}

/// What the plane reported for one finished item.
struct Done {
    work: cma_core::protocol::Work,
    result: Result<ItemOutcome, String>,
}

async fn plane_with(
    h: &Harness,
    concurrency: usize,
    runner: RunnerConfig,
) -> (ControlPlane, mpsc::UnboundedReceiver<Done>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let plane = ControlPlane::builder(h.client.clone(), h.env.id.clone(), h.key(), h.host())
        .config(ControlPlaneConfig {
            concurrency,
            runner,
            ..ControlPlaneConfig::default()
        })
        .on_item(move |r: &ItemReport| {
            let _ = tx.send(Done {
                work: r.work.clone(),
                result: r
                    .result
                    .as_ref()
                    .map(Clone::clone)
                    .map_err(|e| e.to_string()),
            });
        })
        .build()
        .expect("plane");
    (plane, rx)
}

async fn next_report(rx: &mut mpsc::UnboundedReceiver<Done>) -> Done {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an item finished in time")
        .expect("report channel open")
}

/// W1: the happy path's requests, in order, with the right credential kind, helper, worker id,
/// query and stop body; the session GET and the first heartbeat run concurrently (the GET is held
/// by an injected delay and the heartbeat still arrives before it is answered); the history is
/// listed after the stream's headers arrived; one result per owned call, in event order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w1_happy_path_request_order() {
    let s = setup();
    let h = Harness::with_env(
        EmulatorConfig::default(),
        &s.environment_id,
        Some(&s.environment_key),
    )
    .await;
    let lines = w1_lines();
    let item = w1().req("item");
    let vector_sid = item.req("data").req_str("id").to_owned();
    let vector_work = item.req_str("id").to_owned();
    let sid = h
        .emu
        .create_session_with_id(
            &h.env.id,
            Some(&vector_sid),
            cma_core::emulator::Script::new(
                vec![write("a.txt", "alpha"), read("a.txt"), read("missing.txt")],
                ScriptEnd::Terminate,
            ),
        )
        .expect("session");
    h.emu
        .inject_fault(Fault::on(Endpoint::SessionGet).delay_ms(400))
        .unwrap();
    let (plane, mut reports) = plane_with(&h, 1, runner_config()).await;
    let runner = tokio::spawn({
        let p = plane.clone();
        async move { p.run().await }
    });
    let report = next_report(&mut reports).await;
    let work_id = report.work.id.to_string();
    let outcome = report.result.expect("item ran");
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert!(outcome.stopped);
    assert_eq!(outcome.results_posted, 3);
    // The poll after the item.
    let polled_again = h
        .emu
        .wait_for(WAIT, |e| {
            let reqs = e.requests();
            let stop = reqs.iter().position(|r| r.path.ends_with("/stop"));
            stop.is_some_and(|i| reqs[i..].iter().any(|r| r.path.ends_with("/work/poll")))
        })
        .await;
    assert!(polled_again, "no poll after the force-stop");
    plane.shutdown(Duration::from_secs(5)).await;
    runner.await.unwrap().expect("run ends cleanly");

    let reqs = h.requests();
    let stop_at = reqs.iter().position(|r| r.path.ends_with("/stop")).unwrap();
    let next_poll = stop_at
        + reqs[stop_at..]
            .iter()
            .position(|r| r.path.ends_with("/work/poll"))
            .unwrap();
    let actual: Vec<&RequestRecord> = reqs[..=next_poll].iter().collect();

    // Expand the vector: the `×` line once per owned call.
    let owned_calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(owned_calls.len(), 3);
    let mut expected = Vec::new();
    for l in &lines {
        let n = if l.repeated { owned_calls.len() } else { 1 };
        for _ in 0..n {
            expected.push(l.clone());
        }
    }
    let subst = |t: &str| t.replace(&vector_work, &work_id).replace(&vector_sid, &sid);
    assert_eq!(
        actual.len(),
        expected.len(),
        "requests: {:#?}",
        actual.iter().map(|r| r.target()).collect::<Vec<_>>()
    );
    // The two concurrent lines may arrive in either order.
    let conc: Vec<usize> = (0..expected.len())
        .filter(|i| expected[*i].concurrent)
        .collect();
    assert_eq!(conc.len(), 2);
    let mut order: Vec<usize> = (0..actual.len()).collect();
    if actual[conc[0]].method != expected[conc[0]].method
        || !subst(&expected[conc[0]].target).starts_with(&actual[conc[0]].path)
    {
        order.swap(conc[0], conc[1]);
    }
    for (i, e) in expected.iter().enumerate() {
        let a = actual[order[i]];
        assert_eq!(a.method, e.method, "line {i}: {e:?} vs {a:?}");
        let want = subst(&e.target);
        if e.repeated {
            assert_eq!(a.path, want, "line {i}");
        } else {
            assert_eq!(a.target(), want, "line {i}");
        }
        if let Some(b) = &e.bearer {
            let kind = if *b == s.environment_key {
                AuthKind::EnvironmentKey
            } else {
                AuthKind::SessionsToken
            };
            assert_eq!(a.auth, kind, "line {i}: {}", a.target());
            if kind == AuthKind::SessionsToken {
                assert_eq!(a.sessions_token_work.as_deref(), Some(work_id.as_str()));
            }
        }
        if let Some(hl) = &e.helper {
            assert_eq!(
                a.helper.as_deref(),
                Some(hl.as_str()),
                "line {i}: {}",
                a.target()
            );
        }
        if let Some(w) = &e.worker_id {
            assert_eq!(w, &s.worker_id);
            assert_eq!(a.worker_id.as_deref(), Some(WORKER_ID), "line {i}");
        }
        if let Some(b) = &e.body {
            let got: serde_json::Value =
                serde_json::from_str(a.body.as_deref().unwrap_or("")).expect("stop body");
            let want: serde_json::Value = serde_json::from_str(b).unwrap();
            assert_eq!(got, want, "line {i}");
        }
    }
    // Concurrency: the heartbeat arrived before the (delayed) session GET was answered.
    let pair = [actual[order[conc[0]]], actual[order[conc[1]]]];
    let get = *pair
        .iter()
        .find(|r| r.path.starts_with("/v1/sessions/"))
        .expect("the session GET is one of the two");
    let hb = *pair
        .iter()
        .find(|r| r.path.ends_with("/heartbeat"))
        .expect("the heartbeat is the other");
    assert!(hb.seq < get.answered_seq.unwrap(), "{get:?} {hb:?}");
    // The history is listed after the stream's headers went out.
    let stream = actual
        .iter()
        .find(|r| r.path.ends_with("/events/stream"))
        .unwrap();
    let list = actual
        .iter()
        .find(|r| r.method == "GET" && r.path.ends_with("/events"))
        .unwrap();
    assert!(list.seq > stream.answered_seq.unwrap());
    // One result per call, in event order, each posted once.
    let answered: Vec<String> = h
        .results(&sid)
        .iter()
        .map(|r| r.tool_use_id.clone())
        .collect();
    assert_eq!(answered, owned_calls);
    assert_eq!(
        h.emu.work(&work_id).unwrap().state,
        WorkState::Stopped,
        "force-stopped"
    );
}

/// W1, last sentence: without a usable secret every per-item call uses the environment key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w1_without_a_secret_per_item_calls_use_the_environment_key() {
    let h = Harness::new().await;
    let sid = h.session(vec![write("x.txt", "x")], ScriptEnd::Terminate);
    let mut work = h.claim().await;
    work.secret = Some("not base64 json".into());
    let outcome = h
        .runner()
        .handle_item(&work, h.host(), CancellationToken::new())
        .await
        .expect("item runs");
    assert!(outcome.stopped);
    assert_eq!(h.results(&sid).len(), 1);
    let reqs = h.requests();
    let per_item = about(&reqs, work.id.as_str(), &sid);
    assert!(per_item.len() >= 5, "{per_item:#?}");
    for r in per_item {
        assert_eq!(r.auth, AuthKind::EnvironmentKey, "{}", r.target());
    }
}

/// The second heartbeat echoes the first's `last_heartbeat` (the emulator compares it exactly, so
/// a 200 proves the echo), at the interval the TTL implies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_heartbeats_echo_the_previous_last_heartbeat() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    // No calls and no idle grace: the run lasts until the session ends.
    let sid = h.session(vec![], ScriptEnd::Idle);
    let work = h.claim().await;
    let runner = h.runner().with_config(RunnerConfig {
        max_idle: None,
        ..runner_config()
    });
    let host = h.host();
    let task = tokio::spawn({
        let work = work.clone();
        async move {
            runner
                .handle_item(&work, host, CancellationToken::new())
                .await
        }
    });
    let beats = |e: &cma_core::emulator::Emulator| {
        e.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/heartbeat") && r.status.is_some())
            .collect::<Vec<_>>()
    };
    assert!(h.emu.wait_for(WAIT, |e| beats(e).len() >= 3).await);
    h.emu.terminate_session(&sid).unwrap();
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    let beats = beats(&h.emu);
    assert_eq!(
        beats[0].query.as_deref(),
        Some("expected_last_heartbeat=NO_HEARTBEAT")
    );
    for b in &beats {
        assert_eq!(b.status, Some(200), "{b:?}");
    }
    for b in &beats[1..] {
        let q = b.query.as_deref().unwrap_or_default();
        assert!(
            q.starts_with("expected_last_heartbeat=") && !q.contains("NO_HEARTBEAT"),
            "{q}"
        );
    }
    assert_eq!(
        h.emu.work(work.id.as_str()).unwrap().state,
        WorkState::Stopped
    );
}

/// Run one claimed item on its own task.
fn spawn_item(
    h: &Harness,
    work: &cma_core::protocol::Work,
    config: RunnerConfig,
) -> tokio::task::JoinHandle<Result<cma_core::runner::session::ItemOutcome, RunnerError>> {
    let runner = h.runner().with_config(config);
    let host = h.host();
    let work = work.clone();
    tokio::spawn(async move {
        runner
            .handle_item(&work, host, CancellationToken::new())
            .await
    })
}

async fn active(h: &Harness, work_id: &str) {
    assert!(
        h.emu
            .wait_for(WAIT, |e| e
                .work(work_id)
                .is_some_and(|w| w.state == WorkState::Active))
            .await
    );
}

fn hanging() -> RunnerConfig {
    RunnerConfig {
        max_idle: None,
        ..runner_config()
    }
}

/// W2: a heartbeat answering `state:"stopping"` (a graceful stop from the server) makes the
/// worker force-stop at once, although its stream is still open and quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w2_heartbeat_stopping_forces_the_stop() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    h.session(vec![], ScriptEnd::Idle);
    let work = h.claim().await;
    let task = spawn_item(&h, &work, hanging());
    active(&h, work.id.as_str()).await;
    h.emu.stop_work(work.id.as_str(), false).unwrap();
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::HeartbeatStop);
    assert!(outcome.stopped);
    let reqs = h.requests();
    let stops = stops(&reqs, work.id.as_str());
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].body.as_deref(), Some(r#"{"force":true}"#));
    assert_eq!(stops[0].helper.as_deref(), Some("environments-worker"));
    let last_beat = reqs
        .iter()
        .rfind(|r| r.path.ends_with("/heartbeat"))
        .unwrap();
    assert!(stops[0].seq > last_beat.answered_seq.unwrap());
    assert_eq!(
        h.emu.work(work.id.as_str()).unwrap().state,
        WorkState::Stopped
    );
}

/// W2 variant: `lease_extended:false` (the item was force-stopped by someone else) also ends the
/// run with a force-stop, whose 409 ("already stopped") counts as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w2_heartbeat_not_extended_forces_the_stop() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    h.session(vec![], ScriptEnd::Idle);
    let work = h.claim().await;
    let task = spawn_item(&h, &work, hanging());
    active(&h, work.id.as_str()).await;
    h.emu.stop_work(work.id.as_str(), true).unwrap();
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::HeartbeatStop);
    assert!(outcome.stopped, "409 on the final stop counts as stopped");
    let reqs = h.requests();
    let stops = stops(&reqs, work.id.as_str());
    // The core client retries a 409 like the SDK's (vector B5) before the worker ignores it.
    assert!(!stops.is_empty());
    for s in stops {
        assert_eq!(s.status, Some(409));
        assert_eq!(s.body.as_deref(), Some(r#"{"force":true}"#));
    }
}

/// W3: a 412 on the first heartbeat loses the lease: no stop call, the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3_heartbeat_412_releases_without_stop() {
    let h = Harness::new().await;
    h.session(vec![], ScriptEnd::Idle);
    h.emu
        .inject_fault(Fault::on(Endpoint::Heartbeat).lease_lost())
        .unwrap();
    let work = h.claim().await;
    let task = spawn_item(&h, &work, hanging());
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            outcome.lease_end,
            LeaseEnd::LeaseLost {
                current_state: Some(_)
            }
        ),
        "{:?}",
        outcome.lease_end
    );
    assert!(!outcome.stopped);
    let reqs = h.requests();
    assert!(stops(&reqs, work.id.as_str()).is_empty());
    let beats: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/heartbeat"))
        .collect();
    assert_eq!(beats.len(), 1);
    assert_eq!(beats[0].status, Some(412));
}

/// Lost lease mid-run: another worker takes the lease (`lose_lease`) or the server expires it
/// (`expire_lease`); the next heartbeat gets 412 and the worker leaves without a stop call, while
/// the item goes on (phantom holder) or back to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_taken_or_expired_mid_run_means_no_stop() {
    for expire in [false, true] {
        let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
        h.session(vec![], ScriptEnd::Idle);
        let work = h.claim().await;
        let task = spawn_item(&h, &work, hanging());
        active(&h, work.id.as_str()).await;
        let ok = if expire {
            h.emu.expire_lease(work.id.as_str())
        } else {
            h.emu.lose_lease(work.id.as_str())
        };
        assert!(ok);
        let outcome = tokio::time::timeout(WAIT, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(outcome.lease_end, LeaseEnd::LeaseLost { .. }),
            "expire={expire}: {:?}",
            outcome.lease_end
        );
        assert!(!outcome.stopped);
        assert!(stops(&h.requests(), work.id.as_str()).is_empty());
        let state = h.emu.work(work.id.as_str()).unwrap().state;
        if expire {
            assert_eq!(
                state,
                WorkState::Queued,
                "an expired lease re-queues the item"
            );
        } else {
            assert_ne!(state, WorkState::Stopped);
        }
    }
}

/// TTL loss (§3.3, vector B12 end to end): heartbeats keep failing with 5xx until the lease TTL
/// has passed since the last success; the worker assumes the lease lost and makes no stop call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_failing_past_the_ttl_assume_the_lease_lost() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    h.session(vec![], ScriptEnd::Idle);
    let work = h.claim().await;
    let task = spawn_item(&h, &work, hanging());
    active(&h, work.id.as_str()).await;
    h.emu
        .inject_fault(Fault::on(Endpoint::Heartbeat).status(503).times(1000))
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    h.emu.clear_faults();
    assert_eq!(outcome.lease_end, LeaseEnd::AssumedLost);
    assert!(!outcome.stopped);
    assert!(stops(&h.requests(), work.id.as_str()).is_empty());
}

/// Transient heartbeat failures (429 with `retry-after-ms`, 500) within the TTL do not end the
/// lease: the run completes normally and force-stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_heartbeat_failures_within_the_ttl_are_survived() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(4)).await;
    let sid = h.session(vec![], ScriptEnd::Idle);
    let work = h.claim().await;
    let task = spawn_item(&h, &work, hanging());
    active(&h, work.id.as_str()).await;
    h.emu
        .inject_fault(
            Fault::on(Endpoint::Heartbeat)
                .status(429)
                .retry_after_ms(50),
        )
        .unwrap();
    h.emu
        .inject_fault(Fault::on(Endpoint::Heartbeat).status(500))
        .unwrap();
    assert!(h.emu.wait_for(WAIT, |e| e.faults_remaining() == 0).await);
    // One more good beat after the faults, then end the session.
    let good_after = |e: &cma_core::emulator::Emulator| {
        let reqs = e.requests();
        let last_fault = reqs
            .iter()
            .rposition(|r| r.path.ends_with("/heartbeat") && r.status.is_some_and(|s| s >= 429));
        last_fault.is_some_and(|i| {
            reqs[i + 1..]
                .iter()
                .any(|r| r.path.ends_with("/heartbeat") && r.status == Some(200))
        })
    };
    assert!(h.emu.wait_for(WAIT, good_after).await);
    h.emu.terminate_session(&sid).unwrap();
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert!(outcome.stopped);
}

/// W4: a health-check item is acked and force-stopped; no heartbeat, no session GET. The stop
/// uses the item's sessions token when its secret carries one (the emulator mints one for every
/// polled item), else the environment key, as the SDK's `_handle_item` picks its credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w4_healthcheck_items_are_stopped_without_heartbeat() {
    let h = Harness::new().await;
    let data: WorkData =
        serde_json::from_value(json!({"type": "healthcheck", "id": "hc_1"})).unwrap();
    let wid = h.emu.enqueue_work(&h.env.id, data).unwrap();
    let (plane, mut reports) = plane_with(&h, 1, runner_config()).await;
    assert_eq!(plane.drain().await.unwrap(), 1);
    let report = next_report(&mut reports).await;
    assert_eq!(report.work.id.as_str(), wid);
    assert!(report.result.is_err(), "reported as not session work");
    plane.shutdown(Duration::from_secs(5)).await;
    let reqs = h.requests();
    let mine: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.contains(&format!("/work/{wid}/")))
        .collect();
    let paths: Vec<String> = mine
        .iter()
        .map(|r| r.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["ack", "stop"]);
    assert_eq!(mine[0].auth, AuthKind::EnvironmentKey);
    let expected = if report.work.sessions_token().is_some() {
        AuthKind::SessionsToken
    } else {
        AuthKind::EnvironmentKey
    };
    assert_eq!(mine[1].auth, expected);
    assert_eq!(mine[1].body.as_deref(), Some(r#"{"force":true}"#));
    assert!(!reqs.iter().any(|r| r.path.starts_with("/v1/sessions")));
    assert_eq!(h.emu.work(&wid).unwrap().state, WorkState::Stopped);
    assert_eq!(plane.stats().failed, 0, "a health check is not a failure");

    // The vector's item has no secret: the stop then carries the environment key.
    let data: WorkData =
        serde_json::from_value(json!({"type": "healthcheck", "id": "hc_2"})).unwrap();
    h.emu.enqueue_work(&h.env.id, data).unwrap();
    let mut work = h.claim().await;
    work.secret = None;
    let err = h
        .runner()
        .handle_item(&work, h.host(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RunnerError::NotSessionWork { .. }), "{err}");
    let reqs = h.requests();
    let stop = stops(&reqs, work.id.as_str());
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0].auth, AuthKind::EnvironmentKey);
    assert_eq!(stop[0].status, Some(200));
}

/// W5: the session is already terminated: heartbeat and session GET, then the force-stop; no
/// stream, no history, no sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w5_terminated_session_is_stopped_without_a_stream() {
    let h = Harness::new().await;
    let sid = h.session(vec![write("x", "y")], ScriptEnd::Idle);
    h.emu.terminate_session(&sid).unwrap();
    let work = h.claim().await;
    let host = h.host();
    let outcome = h
        .runner()
        .handle_item(&work, host.clone(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert!(outcome.stopped);
    let reqs = h.requests();
    let mine = about(&reqs, work.id.as_str(), &sid);
    assert!(
        !mine.iter().any(|r| r.path.contains("/events")),
        "{mine:#?}"
    );
    assert_eq!(stops(&reqs, work.id.as_str()).len(), 1);
    // The first heartbeat goes out with the session fetch (W5), before the force-stop.
    let beat = mine.iter().position(|r| r.path.ends_with("/heartbeat"));
    let stop = mine.iter().position(|r| r.path.ends_with("/stop"));
    assert!(
        matches!((beat, stop), (Some(b), Some(s)) if b < s),
        "{mine:#?}"
    );
    assert!(h.results(&sid).is_empty());
    assert_eq!(host.warm_count(), 0, "no sandbox was created");
    let _ = Arc::clone(&host);
}

/// A session GET that keeps failing (503 beyond the client's retries) fails the item, which is
/// still force-stopped; a stream refused with a fatal 4xx ends the run, also with a force-stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_or_of_the_stream_still_force_stop() {
    let h = Harness::new().await;
    let sid = h.session(vec![write("x", "y")], ScriptEnd::Idle);
    h.emu
        .inject_fault(Fault::on(Endpoint::SessionGet).status(503).times(3))
        .unwrap();
    let work = h.claim().await;
    let err = h
        .runner()
        .handle_item(&work, h.host(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RunnerError::Session { .. }), "{err}");
    let reqs = h.requests();
    let stop = stops(&reqs, work.id.as_str());
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0].body.as_deref(), Some(r#"{"force":true}"#));
    assert!(h.results(&sid).is_empty());

    let h = Harness::new().await;
    let sid = h.session(vec![write("x", "y")], ScriptEnd::Idle);
    h.emu
        .inject_fault(Fault::on(Endpoint::Stream).status(403))
        .unwrap();
    let work = h.claim().await;
    let outcome = h
        .runner()
        .handle_item(&work, h.host(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert!(outcome.stopped);
    assert!(h.results(&sid).is_empty());
    assert_eq!(
        h.requests()
            .iter()
            .filter(|r| r.path.ends_with("/events/stream"))
            .count(),
        1,
        "a fatal 4xx is not retried"
    );
}

/// Builds executors only once the test lets it (to hold a session's placement open).
struct GatedFactory {
    inner: cma_core::control::tools::ToolsetFactory,
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl cma_core::control::host::ExecutorFactory for GatedFactory {
    async fn executor(
        &self,
        sandbox: Arc<dyn cma_sandbox::Sandbox>,
        work: &cma_core::protocol::Work,
        session: &cma_core::protocol::Session,
    ) -> Result<
        Arc<dyn cma_core::runner::session::ToolExecutor>,
        cma_core::runner::session::HostError,
    > {
        self.entered.notify_one();
        let _permit = self.release.acquire().await;
        cma_core::control::host::ExecutorFactory::executor(&self.inner, sandbox, work, session)
            .await
    }
}

/// The lease is lost while the session is being placed: the placement is not abandoned half-way
/// (which would leak the new sandbox, neither open nor warm), the host gets its `close` — which
/// destroys the sandbox, as another worker may own the session now — no stop call is made, and
/// no sandbox is left in the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_during_placement_leaks_no_sandbox() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    h.session(vec![write("x", "y")], ScriptEnd::Idle);
    let backend = h.isolate();
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let host = Arc::new(cma_core::control::host::SandboxHost::from_parts(
        [backend.clone()],
        Arc::new(|_: &cma_core::control::select::Placement<'_>| "isolate".to_owned()),
        Arc::new(GatedFactory {
            inner: cma_core::control::tools::ToolsetFactory::new(),
            entered: entered.clone(),
            release: release.clone(),
        }),
        cma_core::control::host::SandboxHostConfig::default(),
    ));
    let work = h.claim().await;
    let task = tokio::spawn({
        let (runner, host, work) = (h.runner(), host.clone(), work.clone());
        async move {
            runner
                .handle_item(&work, host, CancellationToken::new())
                .await
        }
    });
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .expect("placement started");
    assert!(h.emu.lose_lease(work.id.as_str()));
    let lost = h
        .emu
        .wait_for(WAIT, |e| {
            e.requests()
                .iter()
                .any(|r| r.path.ends_with("/heartbeat") && r.status == Some(412))
        })
        .await;
    assert!(lost);
    release.add_permits(1);
    let outcome = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(outcome.lease_end, LeaseEnd::LeaseLost { .. }));
    assert!(!outcome.stopped);
    assert!(stops(&h.requests(), work.id.as_str()).is_empty());
    assert_eq!(
        outcome.results_posted, 0,
        "no tool ran after the lease was lost"
    );
    // The placed sandbox was handed back to the host, which destroyed it: after a lost lease
    // another worker may own the session, so nothing is kept warm.
    assert_eq!(host.warm_count(), 0, "not kept warm after a lost lease");
    assert!(backend.list().await.unwrap().is_empty(), "a sandbox leaked");
}

/// A heartbeat rejected with a fatal 4xx other than 412 ends the lease as "rejected", and — unlike
/// a lost lease — the worker still force-stops the item (§3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_heartbeat_still_force_stops() {
    let h = Harness::new().await;
    h.session(vec![], ScriptEnd::Idle);
    h.emu
        .inject_fault(Fault::on(Endpoint::Heartbeat).status(403))
        .unwrap();
    let work = h.claim().await;
    let outcome = tokio::time::timeout(WAIT, spawn_item(&h, &work, hanging()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.lease_end,
        LeaseEnd::HeartbeatRejected { status: 403 }
    );
    assert!(outcome.stopped);
    let reqs = h.requests();
    let s = stops(&reqs, work.id.as_str());
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].body.as_deref(), Some(r#"{"force":true}"#));
}
