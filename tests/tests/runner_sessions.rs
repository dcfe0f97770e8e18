//! Runner fidelity, session part: the tool-runner scenarios W6–W9 of the SDK test vectors'
//! `worker` section (reconcile from history, permission gating, calls owned by another client,
//! termination and idle), reconnects with calls that arrived while disconnected, and faults on
//! result sends — through `SessionRunner::handle_item` with a `SandboxHost` over the isolate
//! backend and the official toolset, against the in-process emulator.
//!
//! The vectors' calls are `bash` commands, which the isolate backend cannot run (it answers an
//! error naming `execute`), so these tests use `write`/`read` calls and assert the runner-level
//! behaviour the vectors describe: which call ids get a result, how many times, in which order,
//! and which are never run.

mod support;

use std::sync::Arc;

use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{
    AuthKind, Emulator, EmulatorConfig, Endpoint, Fault, RequestRecord, ScriptEnd, ScriptedCall,
};
use cma_core::protocol::WorkState;
use cma_core::runner::lease::LeaseEnd;
use cma_core::runner::session::{CallReport, ItemOutcome, RunnerConfig, RunnerError};
use cma_tools::{ToolError, custom_tool};
use serde::Deserialize;
use serde_json::{Value, json};
use support::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Item = JoinHandle<Result<ItemOutcome, RunnerError>>;

async fn claim_and_spawn(
    h: &Harness,
    config: RunnerConfig,
    reports: &Reports,
    factory: ToolsetFactory,
) -> (cma_core::protocol::Work, Item) {
    let work = h.claim().await;
    let runner = h
        .runner()
        .with_config(config)
        .with_observer(reports.observer());
    let host = h.host_with(factory);
    let w = work.clone();
    let task =
        tokio::spawn(async move { runner.handle_item(&w, host, CancellationToken::new()).await });
    (work, task)
}

async fn finish(task: Item) -> ItemOutcome {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the item ended in time")
        .expect("no panic")
        .expect("the item ran")
}

fn no_idle() -> RunnerConfig {
    RunnerConfig {
        max_idle: None,
        ..runner_config()
    }
}

/// POSTs of results the runner made for a session.
fn posts<'a>(reqs: &'a [RequestRecord], sid: &str) -> Vec<&'a RequestRecord> {
    let path = format!("/v1/sessions/{sid}/events");
    reqs.iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .collect()
}

fn started(reports: &Reports) -> Vec<String> {
    reports
        .all()
        .iter()
        .filter_map(|r| match r {
            CallReport::Started(c) => Some(c.id().to_string()),
            _ => None,
        })
        .collect()
}

fn result_ids(h: &Harness, sid: &str) -> Vec<String> {
    h.results(sid).into_iter().map(|r| r.tool_use_id).collect()
}

/// Wait until the runner is connected: its stream answered and its first history listing done.
async fn connected(h: &Harness, sid: &str) {
    let list = format!("/v1/sessions/{sid}/events");
    let ok = h
        .emu
        .wait_for(WAIT, |e| {
            e.requests()
                .iter()
                .any(|r| r.method == "GET" && r.path == list && r.status == Some(200))
        })
        .await;
    assert!(ok, "the runner never listed the history");
}

fn tool_result(id: &str, text: &str) -> Value {
    json!({"type": "user.tool_result", "tool_use_id": id, "is_error": false,
           "content": [{"type": "text", "text": text}]})
}

fn confirmation(id: &str, result: &str) -> Value {
    json!({"type": "user.tool_confirmation", "tool_use_id": id, "result": result})
}

/// W6: the history holds an answered call and a pending one, the live stream nothing new:
/// exactly one result is posted, for the pending call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w6_reconcile_answers_only_the_unanswered_call() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![write("one.txt", "one"), write("two.txt", "two")],
        ScriptEnd::Terminate,
    );
    let first = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(first.len(), 1);
    h.emu
        .send_events(&sid, vec![tool_result(&first[0], "answered before")])
        .unwrap();
    let calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(calls.len(), 2, "the second call is in the history");
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    let outcome = finish(task).await;
    assert_eq!(outcome.results_posted, 1);
    assert_eq!(result_ids(&h, &sid), calls);
    assert_eq!(posts(&h.requests(), &sid).len(), 1);
    assert_eq!(started(&reports), vec![calls[1].clone()]);
    assert_eq!(h.results(&sid)[1].is_error, Some(false));
}

/// W7: `ask` calls wait for the user's verdict: `allow` runs and posts, `deny` never runs and
/// posts nothing; an `allow`-evaluated call runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w7_ask_allow_runs_and_ask_deny_posts_nothing() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![
            write("allowed.txt", "a")
                .with_permission("ask")
                .with_confirmation("allow", None),
            write("denied.txt", "d")
                .with_permission("ask")
                .with_confirmation("deny", Some("no".into())),
            write("free.txt", "f").with_permission("allow"),
        ],
        ScriptEnd::Terminate,
    );
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    let outcome = finish(task).await;
    let calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(calls.len(), 3);
    assert_eq!(outcome.results_posted, 2);
    assert_eq!(
        result_ids(&h, &sid),
        vec![calls[0].clone(), calls[2].clone()]
    );
    assert_eq!(started(&reports), vec![calls[0].clone(), calls[2].clone()]);
    assert!(
        reports
            .all()
            .iter()
            .any(|r| matches!(r, CallReport::Denied(c) if *c.id().as_str() == calls[1]))
    );
    assert_eq!(posts(&h.requests(), &sid).len(), 2);
}

/// W7, second paragraph: an `evaluated_permission:"deny"` call never runs, even after a later
/// `allow`; an unknown permission value is held like `ask` until its `allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w7_server_deny_wins_and_unknown_permissions_are_held() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![
            write("never.txt", "x").with_permission("deny"),
            write("held.txt", "y").with_permission("maybe_later"),
        ],
        ScriptEnd::Terminate,
    );
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    connected(&h, &sid).await;
    let calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(calls.len(), 2);
    h.emu
        .send_events(&sid, vec![confirmation(&calls[0], "allow")])
        .unwrap();
    assert!(started(&reports).is_empty(), "nothing ran before a verdict");
    h.emu
        .send_events(&sid, vec![confirmation(&calls[1], "allow")])
        .unwrap();
    let outcome = finish(task).await;
    assert_eq!(outcome.results_posted, 1);
    assert_eq!(result_ids(&h, &sid), vec![calls[1].clone()]);
    assert_eq!(started(&reports), vec![calls[1].clone()]);
}

/// W8: built-in names the worker does not implement and custom tools with no local tool are left
/// to another client: no POST at all. Here the test plays that other client and answers each
/// call after the runner reported it as not owned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w8_calls_of_unknown_tools_are_left_pending() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![
            ScriptedCall::tool("nonexistent_builtin", json!({})),
            ScriptedCall::tool("web_fetch", json!({"url": "https://example.invalid"})),
            ScriptedCall::tool("web_search", json!({"query": "q"})),
            ScriptedCall::custom("lookup_customer", json!({"id": "c1"})),
        ],
        ScriptEnd::Terminate,
    );
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    for i in 0..4 {
        let r = reports.wait(|r| matches!(r, CallReport::NotOwned(_))).await;
        let CallReport::NotOwned(call) = r else {
            unreachable!()
        };
        let id = call.id().to_string();
        let answer = if i == 3 {
            json!({"type": "user.custom_tool_result", "custom_tool_use_id": id,
                   "content": [{"type": "text", "text": "from the other client"}]})
        } else {
            tool_result(&id, "from the other client")
        };
        h.emu.send_events(&sid, vec![answer]).unwrap();
    }
    let outcome = finish(task).await;
    assert_eq!(outcome.results_posted, 0);
    assert!(posts(&h.requests(), &sid).is_empty(), "the runner posted");
    assert!(started(&reports).is_empty());
    assert_eq!(h.results(&sid).len(), 4, "all answered by the other client");
}

#[derive(Deserialize)]
struct Lookup {
    id: String,
}

/// W8, last sentence: with a local tool named like the custom call, the runner answers it with a
/// `user.custom_tool_result` carrying `is_error:false` and the tool's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w8_a_registered_custom_tool_is_answered() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![
            ScriptedCall::custom("lookup_customer", json!({"id": "c42"})),
            write("after.txt", "done"),
        ],
        ScriptEnd::Terminate,
    );
    let tool = custom_tool(
        "lookup_customer",
        "Look up a customer by id.",
        json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
        |_ctx, input: Lookup| async move { Ok::<_, ToolError>(format!("customer {}", input.id)) },
    )
    .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(
        &h,
        runner_config(),
        &reports,
        ToolsetFactory::new().with_tool(Arc::new(tool)),
    )
    .await;
    let outcome = finish(task).await;
    assert_eq!(outcome.results_posted, 2);
    let custom_id = h.event_ids(&sid, "agent.custom_tool_use").remove(0);
    let answers: Vec<Value> = h
        .emu
        .session_events(&sid)
        .into_iter()
        .filter(|e| e["type"] == "user.custom_tool_result")
        .collect();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["custom_tool_use_id"], json!(custom_id));
    assert_eq!(answers[0]["is_error"], json!(false));
    assert_eq!(
        answers[0]["content"],
        json!([{"type": "text", "text": "customer c42"}])
    );
}

/// W9: `session.status_terminated` or `session.deleted` on the stream ends the run at once, and
/// the item is force-stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w9_terminated_or_deleted_sessions_end_the_run() {
    for delete in [false, true] {
        let h = Harness::new().await;
        let sid = h.session(vec![], ScriptEnd::Idle);
        let reports = Reports::new();
        let (work, task) = claim_and_spawn(&h, no_idle(), &reports, ToolsetFactory::new()).await;
        connected(&h, &sid).await;
        if delete {
            h.emu.delete_session(&sid).unwrap();
        } else {
            h.emu.terminate_session(&sid).unwrap();
        }
        let outcome = finish(task).await;
        assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone, "delete={delete}");
        assert!(outcome.stopped, "delete={delete}");
        let reqs = h.requests();
        let stop = stops(&reqs, work.id.as_str());
        assert_eq!(stop.len(), 1);
        assert_eq!(stop[0].body.as_deref(), Some(r#"{"force":true}"#));
        assert_eq!(
            h.emu.work(work.id.as_str()).unwrap().state,
            WorkState::Stopped
        );
    }
}

/// W9: an `end_turn` idle followed by silence for `max_idle` ends the run (force-stop); a
/// `requires_action` idle never starts the countdown — the run outlives several lease intervals
/// (each far longer than `max_idle`) until the held call is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w9_idle_exit_only_after_a_turn_ends() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    let sid = h.session(
        vec![write("gated.txt", "g").with_permission("ask")],
        ScriptEnd::Idle,
    );
    let reports = Reports::new();
    let (work, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    connected(&h, &sid).await;
    let beats = |e: &Emulator| {
        e.requests()
            .iter()
            .filter(|r| r.path.ends_with("/heartbeat") && r.status == Some(200))
            .count()
    };
    // TTL 2 s ⇒ a beat a second: three beats span ≥ 2 s, well past MAX_IDLE.
    assert!(h.emu.wait_for(WAIT, |e| beats(e) >= 3).await);
    assert!(
        !task.is_finished(),
        "a requires_action idle started the idle countdown"
    );
    let call = h.event_ids(&sid, "agent.tool_use").remove(0);
    h.emu
        .send_events(&sid, vec![confirmation(&call, "allow")])
        .unwrap();
    let outcome = finish(task).await;
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert!(outcome.stopped);
    assert_eq!(result_ids(&h, &sid), vec![call]);
    let idles: Vec<Value> = h
        .emu
        .session_events(&sid)
        .into_iter()
        .filter(|e| e["type"] == "session.status_idle")
        .collect();
    assert_eq!(idles.last().unwrap()["stop_reason"]["type"], "end_turn");
    assert_eq!(
        h.emu.work(work.id.as_str()).unwrap().state,
        WorkState::Stopped
    );
}

/// W9, last bullet: after `session.thread_status_terminated` for a thread, its held and later
/// calls never run and nothing is posted for them; another thread's call still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w9_calls_of_a_terminated_thread_never_run() {
    let h = Harness::new().await;
    let sid = h.session(vec![], ScriptEnd::Idle);
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, no_idle(), &reports, ToolsetFactory::new()).await;
    connected(&h, &sid).await;
    let call = |id: &str, thread: &str, perm: Option<&str>| {
        let mut v = json!({"type": "agent.tool_use", "id": id, "name": "write",
                           "input": {"file_path": format!("{id}.txt"), "content": id},
                           "session_thread_id": thread});
        if let Some(p) = perm {
            v["evaluated_permission"] = json!(p);
        }
        v
    };
    h.emu
        .emit_events(
            &sid,
            vec![
                call("sevt_held", "sthr_X", Some("ask")),
                json!({"type": "session.thread_status_terminated", "session_thread_id": "sthr_X",
                       "agent_name": "sub"}),
                call("sevt_later", "sthr_X", None),
            ],
        )
        .unwrap();
    h.emu
        .send_events(&sid, vec![confirmation("sevt_held", "allow")])
        .unwrap();
    h.emu
        .emit_events(&sid, vec![call("sevt_other", "sthr_Y", None)])
        .unwrap();
    h.wait_results(&sid, 1).await;
    h.emu.terminate_session(&sid).unwrap();
    let outcome = finish(task).await;
    assert_eq!(outcome.results_posted, 1);
    assert_eq!(result_ids(&h, &sid), vec!["sevt_other".to_owned()]);
    assert_eq!(started(&reports), vec!["sevt_other".to_owned()]);
}

/// Reconnect with unanswered calls: the stream is cut right after the first result's echo, so the
/// next call arrives while the runner is disconnected; it is found by the history reconcile after
/// the reconnect and answered exactly once, and the run goes on to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_answers_calls_that_arrived_while_disconnected_once() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![
            write("a.txt", "a"),
            write("b.txt", "b"),
            write("c.txt", "c"),
        ],
        ScriptEnd::Terminate,
    );
    h.emu
        .inject_fault(Fault::on(Endpoint::Stream).drop_after_frames(1))
        .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    let outcome = finish(task).await;
    let calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(calls.len(), 3);
    assert_eq!(outcome.results_posted, 3);
    assert_eq!(
        result_ids(&h, &sid),
        calls,
        "each call answered once, in order"
    );
    assert_eq!(started(&reports), calls);
    let reqs = h.requests();
    let streams = reqs
        .iter()
        .filter(|r| r.path.ends_with("/events/stream"))
        .count();
    assert!(streams >= 2, "the runner reconnected");
    let lists = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("{sid}/events")))
        .count();
    assert!(lists >= 2, "the history was reconciled after the reconnect");
}

/// Reconnect, harder: streams dropped right after their headers several times and a 503 on one
/// connect; every call is still answered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_stream_drops_and_connect_errors_still_answer_each_call_once() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![write("a.txt", "a"), read("a.txt"), write("b.txt", "b")],
        ScriptEnd::Terminate,
    );
    h.emu
        .inject_fault(Fault::on(Endpoint::Stream).drop_after_frames(0).times(3))
        .unwrap();
    h.emu
        .inject_fault(Fault::on(Endpoint::Stream).status(503))
        .unwrap();
    h.emu
        .inject_fault(Fault::on(Endpoint::Stream).drop_after_frames(1).times(2))
        .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    let outcome = finish(task).await;
    let calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(outcome.results_posted, 3);
    assert_eq!(result_ids(&h, &sid), calls);
    let connects = h
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/events/stream"))
        .count();
    assert!(
        connects >= 5,
        "three cut streams and a 503 before a lasting one: {connects}"
    );
    let read_result = &h.results(&sid)[1];
    assert_eq!(text(read_result), "a", "state carried across reconnects");
}

/// A call that is both in the history and on the live stream (it arrived between the stream's
/// headers and the history listing, held back here by a delay on the listing) runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_history_and_on_the_stream_runs_once() {
    let h = Harness::new().await;
    let sid = h.session(vec![], ScriptEnd::Idle);
    h.emu
        .inject_fault(Fault::on(Endpoint::EventsList).delay_ms(500))
        .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, no_idle(), &reports, ToolsetFactory::new()).await;
    let list = format!("/v1/sessions/{sid}/events");
    let listing = h
        .emu
        .wait_for(WAIT, |e| {
            e.requests()
                .iter()
                .any(|r| r.method == "GET" && r.path == list && r.status.is_none())
        })
        .await;
    assert!(listing);
    h.emu
        .emit_events(
            &sid,
            vec![
                json!({"type": "agent.tool_use", "id": "sevt_both", "name": "write",
                        "input": {"file_path": "both.txt", "content": "x"}}),
            ],
        )
        .unwrap();
    h.wait_results(&sid, 1).await;
    // Give the runner a later event to process: if the duplicate were queued, it would run
    // before this call is answered.
    h.emu
        .emit_events(
            &sid,
            vec![
                json!({"type": "agent.tool_use", "id": "sevt_next", "name": "read",
                        "input": {"file_path": "both.txt"}}),
            ],
        )
        .unwrap();
    h.wait_results(&sid, 2).await;
    h.emu.terminate_session(&sid).unwrap();
    let outcome = finish(task).await;
    assert_eq!(outcome.results_posted, 2);
    assert_eq!(result_ids(&h, &sid), vec!["sevt_both", "sevt_next"]);
    assert_eq!(started(&reports), vec!["sevt_both", "sevt_next"]);
}

/// Faults on result sends: 503s beyond the core client's retries, a 429 with `retry-after-ms`
/// and a slow answer are all retried by the runner; each call is recorded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_sends_survive_5xx_429_and_delays() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![write("a.txt", "a"), write("b.txt", "b"), read("a.txt")],
        ScriptEnd::Terminate,
    );
    h.emu
        .inject_fault(Fault::on(Endpoint::EventsSend).status(503).times(3))
        .unwrap();
    h.emu
        .inject_fault(
            Fault::on(Endpoint::EventsSend)
                .status(429)
                .retry_after_ms(20)
                .times(2),
        )
        .unwrap();
    h.emu
        .inject_fault(Fault::on(Endpoint::EventsSend).delay_ms(300))
        .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    let outcome = finish(task).await;
    let calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(outcome.results_posted, 3);
    assert_eq!(result_ids(&h, &sid), calls);
    assert_eq!(h.emu.faults_remaining(), 0);
    let reqs = h.requests();
    let p = posts(&reqs, &sid);
    assert_eq!(
        p.len(),
        3 + 2 + 3,
        "5 failed attempts, then one success per call"
    );
    assert!(p.iter().all(|r| r.auth == AuthKind::SessionsToken));
    assert!(
        p.iter()
            .all(|r| r.helper.as_deref() == Some("session-tool-runner"))
    );
}

/// A fatal 4xx on a result send is not retried: the result is reported unposted and the call
/// stays unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_result_is_not_retried() {
    let h = Harness::new().await;
    let sid = h.session(vec![write("a.txt", "a")], ScriptEnd::Terminate);
    h.emu
        .inject_fault(Fault::on(Endpoint::EventsSend).status(400))
        .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, no_idle(), &reports, ToolsetFactory::new()).await;
    let r = reports
        .wait(|r| matches!(r, CallReport::Finished { .. }))
        .await;
    assert!(
        matches!(r, CallReport::Finished { posted: false, .. }),
        "{r:?}"
    );
    h.emu.terminate_session(&sid).unwrap();
    let outcome = finish(task).await;
    assert_eq!(outcome.results_posted, 0);
    assert_eq!(posts(&h.requests(), &sid).len(), 1);
    assert!(h.results(&sid).is_empty());
}

/// A call still running when the stream drops is listed as unanswered by the reconcile after the
/// reconnect; it is queued again but not run again: the tool runs once and one result is posted.
/// (A custom tool that waits for the test makes "still running" deterministic.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_across_a_reconnect_runs_once() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![
            ScriptedCall::custom("gate", json!({})),
            write("after.txt", "x"),
        ],
        ScriptEnd::Terminate,
    );
    let started_tx = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tool = {
        let (started_tx, release, runs) = (started_tx.clone(), release.clone(), runs.clone());
        custom_tool(
            "gate",
            "Waits for the test.",
            json!({"type": "object", "properties": {}}),
            move |_ctx, _input: Value| {
                let (started_tx, release, runs) =
                    (started_tx.clone(), release.clone(), runs.clone());
                async move {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    started_tx.notify_one();
                    let _permit = release
                        .acquire()
                        .await
                        .map_err(|_| ToolError::msg("closed"))?;
                    Ok::<_, ToolError>("opened")
                }
            },
        )
        .unwrap()
    };
    // The first connection is cut after one frame.
    h.emu
        .inject_fault(Fault::on(Endpoint::Stream).drop_after_frames(1))
        .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(
        &h,
        runner_config(),
        &reports,
        ToolsetFactory::new().with_tool(Arc::new(tool)),
    )
    .await;
    tokio::time::timeout(WAIT, started_tx.notified())
        .await
        .expect("the gated tool started");
    // One frame (any event) ends the first connection while the tool runs.
    h.emu
        .emit_events(&sid, vec![json!({"type": "span.model_request_start"})])
        .unwrap();
    let list = format!("/v1/sessions/{sid}/events");
    let relisted = h
        .emu
        .wait_for(WAIT, |e| {
            e.requests()
                .iter()
                .filter(|r| r.method == "GET" && r.path == list && r.status == Some(200))
                .count()
                >= 2
        })
        .await;
    assert!(
        relisted,
        "the runner reconnected and listed the history again"
    );
    release.add_permits(10);
    let outcome = finish(task).await;
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(outcome.results_posted, 2);
    let custom_id = h.event_ids(&sid, "agent.custom_tool_use").remove(0);
    let answers = result_ids(&h, &sid);
    assert_eq!(answers.iter().filter(|id| **id == custom_id).count(), 1);
    assert_eq!(answers.len(), 2);
}

/// A failed history read after connecting dispatches nothing (the calls stay for the next
/// reconcile, as the SDK does); after the next reconnect the history is read and every call is
/// answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_history_read_is_made_up_on_the_next_reconnect() {
    let h = Harness::new().await;
    let sid = h.session(
        vec![write("a.txt", "a"), read("a.txt")],
        ScriptEnd::Terminate,
    );
    // Three 500s exhaust the client's own retries of the first listing.
    h.emu
        .inject_fault(Fault::on(Endpoint::EventsList).status(500).times(3))
        .unwrap();
    h.emu
        .inject_fault(Fault::on(Endpoint::Stream).drop_after_frames(1))
        .unwrap();
    let reports = Reports::new();
    let (_, task) = claim_and_spawn(&h, runner_config(), &reports, ToolsetFactory::new()).await;
    let failed = h.emu.wait_for(WAIT, |e| e.faults_remaining() == 0).await;
    assert!(failed, "the first listing failed");
    assert!(
        started(&reports).is_empty(),
        "nothing dispatched without history"
    );
    // A frame ends the first connection; the reconnect lists the history.
    h.emu
        .emit_events(&sid, vec![json!({"type": "span.model_request_start"})])
        .unwrap();
    let outcome = finish(task).await;
    let calls = h.event_ids(&sid, "agent.tool_use");
    assert_eq!(outcome.results_posted, 2);
    assert_eq!(result_ids(&h, &sid), calls);
    assert_eq!(text(&h.results(&sid)[1]), "a");
}

/// W9: the idle countdown that an `end_turn` idle started is cancelled by a later non-neutral
/// event (here `session.status_running`), but not by a neutral one (`user.tool_confirmation`):
/// after the neutral event the run still ends by the idle rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w9_activity_cancels_the_idle_countdown_and_neutral_events_do_not() {
    let h = Harness::with_config(EmulatorConfig::default().lease_ttl_seconds(2)).await;
    let sid = h.session(vec![], ScriptEnd::Idle);
    let reports = Reports::new();
    let config = RunnerConfig {
        max_idle: Some(std::time::Duration::from_millis(1500)),
        ..runner_config()
    };
    // Activity comes before the runner connects: the history ends with `running`, so no
    // countdown is armed at all.
    h.emu
        .emit_events(&sid, vec![json!({"type": "session.status_running"})])
        .unwrap();
    let (work, task) = claim_and_spawn(&h, config, &reports, ToolsetFactory::new()).await;
    connected(&h, &sid).await;
    // A turn ends (countdown armed) and activity follows at once (countdown cancelled).
    h.emu
        .emit_events(
            &sid,
            vec![
                json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
                json!({"type": "session.status_running"}),
            ],
        )
        .unwrap();
    let beats = |e: &Emulator| {
        e.requests()
            .iter()
            .filter(|r| r.path.ends_with("/heartbeat") && r.status == Some(200))
            .count()
    };
    // Beats come every second: four more span more than the 1.5 s grace.
    let before = beats(&h.emu);
    assert!(h.emu.wait_for(WAIT, |e| beats(e) >= before + 4).await);
    assert!(!task.is_finished(), "activity cancelled the idle countdown");
    // The turn ends; a neutral event follows; the run then ends by the idle rule.
    h.emu
        .emit_events(
            &sid,
            vec![
                json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}),
                json!({"type": "user.tool_confirmation", "tool_use_id": "sevt_none",
                       "result": "allow"}),
            ],
        )
        .unwrap();
    let outcome = finish(task).await;
    assert_eq!(outcome.lease_end, LeaseEnd::RunnerDone);
    assert!(outcome.stopped);
    assert_eq!(
        h.emu.work(work.id.as_str()).unwrap().state,
        WorkState::Stopped
    );
}
