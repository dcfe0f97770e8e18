//! The emulator's sessions over real HTTP on 127.0.0.1: scripted agents, the SSE stream, event
//! history paging and bounds, and the programmatic session API.

mod emulator_support;

use std::time::Duration;

use cma_core::emulator::{EmulatorConfig, Scenario, Script, ScriptEnd, ScriptedCall};
use cma_core::protocol::{SessionStatus, WorkState};
use emulator_support::{ctx, ctx_with, json_keys, parse_frame, types};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn scripted_agent_runs_calls_in_order_and_terminates_with_a_record_file() {
    let dir = std::env::temp_dir().join(format!("cma-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join(format!("rec-{}.jsonl", uuid::Uuid::new_v4().simple()));
    let c = ctx_with(EmulatorConfig::default().record(&record)).await;
    let sid = c.session(
        vec![
            ScriptedCall::tool("write", json!({"file_path": "a", "content": "x"})),
            ScriptedCall::tool("bash", json!({"command": "rm -rf /"}))
                .with_permission("ask")
                .with_confirmation("deny", Some("no".into())),
            ScriptedCall::tool("read", json!({"file_path": "a"})),
        ],
        ScriptEnd::Terminate,
    );
    let (w, token) = c.claim().await;
    let mut s = c.stream(&sid, &token).await;
    let mut answered = 0;
    loop {
        let hist = c.events(&sid, &token, "?types[]=agent.tool_use").await;
        let calls = hist["data"].as_array().unwrap().clone();
        assert!(calls.iter().all(|e| e["type"] == "agent.tool_use"));
        // The denied call is never answered; the agent moves past it on its own.
        let pending: Vec<&Value> = calls
            .iter()
            .filter(|e| e["evaluated_permission"] != "ask")
            .skip(answered)
            .collect();
        let Some(call) = pending.first() else { break };
        let r = c
            .send(
                &sid,
                &token,
                json!({"type": "user.tool_result", "tool_use_id": call["id"], "is_error": false,
                       "content": [{"type": "text", "text": format!("done {}", call["name"])}]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        answered += 1;
        if answered == 2 {
            break;
        }
    }
    let got = s.until("session.status_terminated").await;
    assert!(types(&got).ends_with(&["session.status_idle", "session.status_terminated"]));
    assert!(s.frame().await.is_none(), "stream closes after termination");
    assert_eq!(c.emu.session_status(&sid), Some(SessionStatus::Terminated));
    let hist = c.events(&sid, &token, "").await;
    let kinds: Vec<&str> = hist["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.status_running",
            "agent.tool_use",
            "user.tool_result",
            "agent.tool_use",
            "user.tool_confirmation",
            "agent.tool_use",
            "user.tool_result",
            "session.status_idle",
            "session.status_terminated"
        ]
    );
    // Sending to a terminated session is refused; the worker's final stop succeeds.
    let r = c
        .send(&sid, &token, json!({"type": "user.message", "content": []}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        c.stop(w.id.as_str(), &token, json!({"force": true}))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(c.emu.scripted_progress(), (1, 1, true));

    let lines: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        json_keys(&lines[0]),
        [
            "content",
            "input",
            "is_error",
            "name",
            "session_id",
            "tool_use_id"
        ]
    );
    assert_eq!(lines[0]["name"], "write");
    assert_eq!(lines[1]["name"], "read");
    assert_eq!(lines[1]["content"][0]["text"], "done \"read\"");
    let _ = std::fs::remove_file(&record);
}

#[tokio::test]
async fn stream_frames_all_carry_event_names_and_pings_keep_it_alive() {
    let c = ctx_with(EmulatorConfig::default().keepalive(Duration::from_millis(30))).await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    let mut s = c.stream(&sid, &c.api()).await;
    let mut pings = 0;
    let mut frames = 0;
    while pings < 2 {
        let f = s.frame().await.expect("stream stays open");
        frames += 1;
        if f.lines().all(|l| l.starts_with(':')) {
            continue;
        }
        let (name, _) = parse_frame(&f);
        assert!(name.is_some(), "frame without event: {f:?}");
        if name.as_deref() == Some("ping") {
            pings += 1;
        }
    }
    assert!(frames >= 2);
    // A user message after the turn ended: running → idle, each frame named by its type.
    let r = c
        .send(
            &sid,
            &c.api(),
            json!({"type": "user.message", "content": [{"type": "text", "text": "again"}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let got = s.until("session.status_idle").await;
    for (name, data) in &got {
        assert_eq!(data["type"], name.as_str());
    }
    assert_eq!(
        types(&got),
        [
            "user.message",
            "session.status_running",
            "session.status_idle"
        ]
    );
}

#[tokio::test]
async fn terminated_and_deleted_sessions_end_streams() {
    let c = ctx().await;
    let sid = c.session(vec![], ScriptEnd::Terminate);
    // Connecting after termination replays the terminal event, then closes.
    let mut s = c.stream(&sid, &c.api()).await;
    assert_eq!(s.event().await.unwrap().0, "session.status_terminated");
    assert!(s.event().await.is_none());

    let sid = c.session(vec![], ScriptEnd::Idle);
    let mut s = c.stream(&sid, &c.api()).await;
    let r = c
        .req(Method::DELETE, &format!("/v1/sessions/{sid}"), &c.api())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.event().await.unwrap().0, "session.deleted");
    assert!(s.event().await.is_none());
    let r = c
        .req(Method::GET, &format!("/v1/sessions/{sid}"), &c.api())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn event_history_pages_filters_and_orders() {
    let c = ctx().await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    for i in 0..5 {
        let r = c
            .send(
                &sid,
                &c.api(),
                json!({"type": "user.message", "content": [{"type": "text", "text": i.to_string()}]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let all = c.events(&sid, &c.api(), "?limit=1000").await;
    let all = all["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2 + 5 * 3);
    // Pages of 4 concatenate to the whole history.
    let mut paged = Vec::new();
    let mut q = "?limit=4".to_owned();
    loop {
        let p = c.events(&sid, &c.api(), &q).await;
        paged.extend(p["data"].as_array().unwrap().iter().cloned());
        match p["next_page"].as_str() {
            Some(n) => q = format!("?limit=4&page={n}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let msgs = c
        .events(&sid, &c.api(), "?types%5B%5D=user.message&order=desc")
        .await;
    let texts: Vec<&str> = msgs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["4", "3", "2", "1", "0"]);
    let cut = all[3]["processed_at"].as_str().unwrap();
    let later = c
        .events(
            &sid,
            &c.api(),
            &format!("?created_at%5Bgte%5D={cut}&limit=1000"),
        )
        .await;
    let expected: Vec<&Value> = all
        .iter()
        .filter(|e| e["processed_at"].as_str().unwrap() >= cut)
        .collect();
    let later: Vec<&Value> = later["data"].as_array().unwrap().iter().collect();
    assert_eq!(later, expected);
    assert!(!later.is_empty());
    let r = c
        .req(
            Method::GET,
            &format!("/v1/sessions/{sid}/events?order=up"),
            &c.api(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_programmatic_api_sends_terminates_deletes_and_stops() {
    let c = ctx().await;
    let sid = c.session(
        vec![ScriptedCall::tool("bash", json!({})).with_permission("ask")],
        ScriptEnd::Idle,
    );
    let call = c
        .emu
        .session_events(&sid)
        .into_iter()
        .find(|e| e["type"] == "agent.tool_use")
        .unwrap();
    // The gated call waits (requires_action) until a confirmation is sent.
    assert_eq!(c.emu.session_status(&sid), Some(SessionStatus::Idle));
    let stored = c
        .emu
        .send_events(
            &sid,
            vec![json!({"type": "user.tool_confirmation", "tool_use_id": call["id"], "result": "allow"})],
        )
        .unwrap();
    assert!(stored[0]["id"].as_str().unwrap().starts_with("sevt_"));
    assert_eq!(c.emu.session_status(&sid), Some(SessionStatus::Running));
    assert!(
        c.emu
            .send_events(&sid, vec![json!({"type": "agent.message"})])
            .is_err()
    );

    let w = c.emu.session_work(&sid)[0].id.0.clone();
    assert_eq!(
        c.emu.stop_work(&w, false).unwrap().state,
        WorkState::Stopped
    );
    assert!(c.emu.stop_work(&w, true).is_err(), "already stopped");

    let mut s = c.stream(&sid, &c.api()).await;
    c.emu.terminate_session(&sid).unwrap();
    assert_eq!(s.event().await.unwrap().0, "session.status_terminated");
    assert!(s.event().await.is_none());
    assert_eq!(c.emu.scripted_progress(), (1, 1, true));
    c.emu.delete_session(&sid).unwrap();
    assert!(c.emu.delete_session(&sid).is_err());
}

#[tokio::test]
async fn session_history_is_bounded_by_count_and_bytes() {
    let c = ctx_with(
        EmulatorConfig::default()
            .max_events_per_session(50)
            .max_event_bytes_per_session(8 * 1024),
    )
    .await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    let text = "x".repeat(1024);
    for _ in 0..20 {
        let r = c
            .send(
                &sid,
                &c.api(),
                json!({"type": "user.message", "content": [{"type": "text", "text": text}]}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let kept = c.emu.session_events(&sid);
    let bytes: usize = kept.iter().map(|e| e.to_string().len()).sum();
    assert!(bytes <= 8 * 1024, "{bytes} bytes kept");
    assert_eq!(
        kept.last().unwrap()["type"],
        "session.status_idle",
        "newest kept"
    );
    let messages = kept.iter().filter(|e| e["type"] == "user.message").count();
    assert!((1..20).contains(&messages), "{messages} messages kept");
    for _ in 0..40 {
        c.send(
            &sid,
            &c.api(),
            json!({"type": "user.message", "content": []}),
        )
        .await;
    }
    // Small events: the count cap (50) binds before the byte cap, or both nearly together.
    let n = c.emu.session_events(&sid).len();
    assert!((40..=50).contains(&n), "{n} events kept");
}

/// A scripted session can name its agent (`agent_id` in the scenario or on the script); the
/// default is `agent_emulator`.
#[tokio::test]
async fn scripted_sessions_can_name_their_agent() {
    let scenario = Scenario::from_json(
        r#"{"environments": [{"id": "env_a"}],
            "sessions": [{"id": "sesn_named", "environment": "env_a", "agent_id": "agent_build"}]}"#,
    )
    .unwrap();
    let c = ctx_with(EmulatorConfig::default().scenario(scenario)).await;
    let scripted = c
        .emu
        .create_session(
            &c.env.id,
            Script::new(vec![], ScriptEnd::Idle).agent_id("agent_scripted"),
        )
        .unwrap();
    let plain = c
        .emu
        .create_session(&c.env.id, Script::new(vec![], ScriptEnd::Idle))
        .unwrap();
    for (sid, want) in [
        ("sesn_named", "agent_build"),
        (scripted.as_str(), "agent_scripted"),
        (plain.as_str(), "agent_emulator"),
    ] {
        let r = c
            .req(Method::GET, &format!("/v1/sessions/{sid}"), &c.api())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["agent"]["id"], want, "{sid}");
    }
}
