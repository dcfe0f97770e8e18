//! The emulator over real HTTP on 127.0.0.1: the server-side conformance checks E1–E14 (what
//! an SDK client relies on, with the SDK's own values taken from the vectors' `decoding` and
//! `retry` sections): poll, reclaim, ack, heartbeats, stop, lease expiry, results, credentials.

mod emulator_support;

use std::time::Duration;

use cma_core::emulator::{EmulatorConfig, ScriptEnd, ScriptedCall};
use cma_core::protocol::{NO_HEARTBEAT, Work, WorkState};
use emulator_support::{
    BETA, Ctx, WAIT, ctx, ctx_with, decode_vector, healthcheck, json_keys, no_work_body,
    sdk_poll_block_ms, types,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn e1_empty_poll_answers_json_null_and_a_blocked_poll_gets_new_work() {
    let c = ctx().await;
    let r = c.poll("?block_ms=30").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(r.text().await.unwrap(), no_work_body());

    // A poll blocked on an empty queue is answered as soon as work arrives.
    let blocked = c.poll("?block_ms=999");
    let enqueue = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap()
    };
    let (r, id) = tokio::join!(blocked, enqueue);
    let w: Work = r.json().await.unwrap();
    assert_eq!(w.id.as_str(), id);
    assert_eq!(w.data.kind, "healthcheck");
}

#[tokio::test]
async fn e2_block_ms_zero_is_rejected_and_large_values_are_capped() {
    let c = ctx().await;
    // The SDK's own long poll is accepted as is (work is waiting, so it answers at once).
    c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap();
    let r = c.poll(&format!("?block_ms={}", sdk_poll_block_ms())).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Work>().await.unwrap().data.kind, "healthcheck");
    let r = c.poll("?block_ms=0").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["request_id"].as_str().unwrap().starts_with("req_"));
    let r = c.poll("?block_ms=5000").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "null");
    assert_eq!(
        c.poll("?block_ms=soon").await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn e3_unacked_items_are_reclaimed_with_a_fresh_secret() {
    let c = ctx_with(EmulatorConfig::default().reclaim_older_than_ms(100)).await;
    let id = c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap();
    let first = c.poll_item().await;
    assert_eq!(first.id.as_str(), id);
    assert_eq!(first.state, WorkState::Queued);
    // Pending: another poll that asks for a long reclaim delay does not see it.
    let r = c.poll("?reclaim_older_than_ms=60000").await;
    assert_eq!(r.text().await.unwrap(), "null");
    let stats = |c: &Ctx| c.req(Method::GET, &c.work_path("/stats"), &c.api()).send();
    let s: Value = stats(&c).await.unwrap().json().await.unwrap();
    assert_eq!(
        (s["depth"].clone(), s["pending"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(s["workers_polling"], 1);
    assert_eq!(
        json_keys(&s),
        json_keys(&decode_vector("D10")),
        "stats shape as vector D10"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let s: Value = stats(&c).await.unwrap().json().await.unwrap();
    assert_eq!(
        (s["depth"].clone(), s["pending"].clone()),
        (json!(1), json!(0))
    );
    let again = c.poll_item().await;
    assert_eq!(again.id, first.id);
    assert_ne!(again.sessions_token(), first.sessions_token());
}

#[tokio::test]
async fn e4_ack_starts_the_item_and_takes_it_off_the_queue() {
    let c = ctx().await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    let w = c.poll_item().await;
    assert_eq!(w.data.session_id().unwrap().as_str(), sid);
    // Every field of the SDK's work item (vector D3) is present.
    let raw = serde_json::to_value(&w).unwrap();
    for k in json_keys(&decode_vector("D3")) {
        assert!(raw.get(&k).is_some(), "work item lacks {k}");
    }
    let r = c.ack(w.id.as_str()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let acked: Work = r.json().await.unwrap();
    assert_eq!(acked.state, WorkState::Starting);
    assert!(acked.acknowledged_at.is_some());
    assert!(acked.secret.is_none());
    let r = c.poll("").await;
    assert_eq!(r.text().await.unwrap(), "null");
    assert_eq!(c.ack(w.id.as_str()).await.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn e5_e6_e7_heartbeats_claim_extend_and_reject_stale_values() {
    let c = ctx().await;
    c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap();
    let (w, token) = c.claim().await;
    let id = w.id.as_str();

    let r = c.heartbeat(id, &token, NO_HEARTBEAT).await;
    assert_eq!(r.status(), StatusCode::OK);
    let hb: Value = r.json().await.unwrap();
    assert_eq!(json_keys(&hb), json_keys(&decode_vector("D4")));
    assert_eq!(hb["state"], "active");
    assert_eq!(hb["lease_extended"], true);
    assert_eq!(hb["ttl_seconds"], 60);
    let first = hb["last_heartbeat"].as_str().unwrap().to_owned();
    assert!(first.ends_with('Z'));
    chrono::DateTime::parse_from_rfc3339(&first).expect("RFC 3339");

    // E6: echo → new value (also with the environment key).
    let r = c.heartbeat(id, &c.env.key, &first).await;
    assert_eq!(r.status(), StatusCode::OK);
    let hb2: Value = r.json().await.unwrap();
    let second = hb2["last_heartbeat"].as_str().unwrap().to_owned();
    assert_ne!(second, first);

    // E7: stale value and a second NO_HEARTBEAT → 412 shaped like D5 with the real state.
    let d5 = decode_vector("D5");
    for stale in [first.as_str(), NO_HEARTBEAT] {
        let r = c.heartbeat(id, &token, stale).await;
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
        assert!(r.headers().contains_key("request-id"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], d5["type"]);
        assert_eq!(body["error"]["type"], d5["error"]["type"]);
        assert_eq!(body["error"]["message"], d5["error"]["message"]);
        assert_eq!(
            body["error"]["details"]["error_code"],
            d5["error"]["details"]["error_code"]
        );
        let cs = &body["error"]["details"]["current_state"];
        assert_eq!(
            json_keys(cs),
            json_keys(&d5["error"]["details"]["current_state"])
        );
        assert_eq!(cs["state"], "active");
        assert_eq!(cs["last_heartbeat"], second.as_str());
        assert_eq!(cs["lease_extended"], false);
        assert_eq!(cs["ttl_seconds"], 60);
    }
}

#[tokio::test]
async fn e8_e9_e10_stop_graceful_then_forced_then_conflict() {
    let c = ctx().await;
    c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap();
    let (w, token) = c.claim().await;
    let id = w.id.as_str();
    assert_eq!(
        c.heartbeat(id, &token, NO_HEARTBEAT).await.status(),
        StatusCode::OK
    );

    let r = c.stop(id, &token, json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let stopping: Work = r.json().await.unwrap();
    assert_eq!(stopping.state, WorkState::Stopping);
    assert!(stopping.stop_requested_at.is_some());
    assert!(stopping.stopped_at.is_none());

    // E8: no comparison while stopping.
    let r = c.heartbeat(id, &token, "whatever").await;
    assert_eq!(r.status(), StatusCode::OK);
    let hb: Value = r.json().await.unwrap();
    assert_eq!(hb["state"], "stopping");

    let r = c.stop(id, &c.api(), json!({"force": true})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let stopped: Work = r.json().await.unwrap();
    assert_eq!(stopped.state, WorkState::Stopped);
    assert!(stopped.stopped_at.is_some());

    let r = c.stop(id, &c.env.key, json!({"force": true})).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "conflict_error");
    // An empty body is a graceful stop too; malformed JSON is a 400.
    let r = c
        .req(Method::POST, &c.work_path(&format!("/{id}/stop")), &token)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn e11_lease_expiry_requeues_and_the_old_holder_gets_412() {
    let c = ctx_with(EmulatorConfig::default().lease_ttl_seconds(1)).await;
    c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap();
    let (w, token) = c.claim().await;
    let id = w.id.as_str().to_owned();
    let hb: Value = c
        .heartbeat(&id, &token, NO_HEARTBEAT)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(hb["ttl_seconds"], 1);
    let requeued = c
        .emu
        .wait_for(WAIT, |e| {
            e.work(&id).is_some_and(|w| w.state == WorkState::Queued)
        })
        .await;
    assert!(requeued, "lease expiry re-queues the item");
    let r = c
        .heartbeat(&id, &token, hb["last_heartbeat"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["details"]["current_state"]["state"], "queued");
    assert_eq!(
        body["error"]["details"]["current_state"]["last_heartbeat"],
        Value::Null
    );
    // Another worker gets it.
    assert_eq!(c.poll_item().await.id.as_str(), id);
}

#[tokio::test]
async fn e12_posted_results_are_stored_echoed_broadcast_and_listed() {
    let c = ctx().await;
    let sid = c.session(
        vec![ScriptedCall::tool("bash", json!({"command": "echo hi"}))],
        ScriptEnd::Idle,
    );
    let (_, token) = c.claim().await;
    let mut s1 = c.stream(&sid, &token).await;
    let mut s2 = c.stream(&sid, &c.env.key).await;
    let history = c.events(&sid, &token, "?limit=1000").await;
    let tool_use = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "agent.tool_use")
        .expect("the call is in the history before any worker connects")
        .clone();
    let r = c
        .send(
            &sid,
            &token,
            json!({"type": "user.tool_result", "tool_use_id": tool_use["id"], "is_error": false,
                   "content": [{"type": "text", "text": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    let stored = &echo["data"][0];
    assert!(stored["id"].as_str().unwrap().starts_with("sevt_"));
    assert!(stored["processed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(stored["content"][0]["text"], "hi");
    for s in [&mut s1, &mut s2] {
        let (name, data) = s.event().await.unwrap();
        assert_eq!(name, "user.tool_result");
        assert_eq!(data["id"], stored["id"]);
    }
    let listed = c.events(&sid, &token, "").await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == stored["id"])
    );
    let rec = c.emu.tool_results();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].name.as_deref(), Some("bash"));
    assert_eq!(rec[0].input, json!({"command": "echo hi"}));
    assert_eq!(rec[0].is_error, Some(false));
}

#[tokio::test]
async fn e13_custom_tool_calls_idle_with_requires_action_until_answered() {
    let c = ctx().await;
    let sid = c.session(
        vec![
            ScriptedCall::custom("lookup_customer", json!({"id": 7})),
            ScriptedCall::tool("read", json!({"file_path": "a.txt"})),
        ],
        ScriptEnd::Terminate,
    );
    let (_, token) = c.claim().await;
    let mut s = c.stream(&sid, &token).await;
    let hist = c.events(&sid, &token, "").await;
    let evs: Vec<&Value> = hist["data"].as_array().unwrap().iter().collect();
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "session.status_running",
            "agent.custom_tool_use",
            "session.status_idle"
        ]
    );
    let call_id = evs[1]["id"].clone();
    assert_eq!(
        evs[2]["stop_reason"],
        json!({"type": "requires_action", "event_ids": [call_id]})
    );
    let session: Value = c
        .req(Method::GET, &format!("/v1/sessions/{sid}"), &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["status"], "idle");
    assert_eq!(session["resources"], json!([]));
    assert_eq!(session["agent"]["skills"], json!([]));
    assert!(
        session["agent"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["type"] == "custom" && t["name"] == "lookup_customer")
    );

    let r = c
        .send(
            &sid,
            &token,
            json!({"type": "user.custom_tool_result", "custom_tool_use_id": call_id,
                   "content": [{"type": "text", "text": "42"}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let got = s.until("agent.tool_use").await;
    assert_eq!(
        types(&got),
        [
            "user.custom_tool_result",
            "session.status_running",
            "agent.tool_use"
        ]
    );
    assert_eq!(
        c.emu.tool_results()[0].name.as_deref(),
        Some("lookup_customer")
    );
}

#[tokio::test]
async fn e14_each_endpoint_takes_only_its_credentials() {
    let c = ctx().await;
    let id = c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap();
    let list = |token: String| c.req(Method::GET, &c.work_path(""), &token).send();
    assert_eq!(
        list(c.api()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let page: Value = list(c.env.key.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(page["data"][0]["id"], id.as_str());
    assert_eq!(page["next_page"], Value::Null);

    let get = |token: String| {
        c.req(Method::GET, &c.work_path(&format!("/{id}")), &token)
            .send()
    };
    let r = get(c.env.key.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let w: Work = get(c.api()).await.unwrap().json().await.unwrap();
    assert!(w.secret.is_none());

    // The API key cannot poll; a wrong key and no key are 401; x-api-key is accepted.
    assert_eq!(
        c.req(Method::GET, &c.work_path("/poll"), &c.api())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.req(Method::GET, &c.work_path("/poll"), "nope")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let r = c
        .http
        .get(format!("{}{}", c.emu.base_url(), c.work_path("/poll")))
        .header("anthropic-beta", BETA)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("request-id"));
    let r = c
        .http
        .get(format!("{}{}", c.emu.base_url(), c.work_path("/poll")))
        .header("anthropic-beta", format!("other-beta,{BETA}"))
        .header("x-api-key", &c.env.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Missing beta → 400.
    let r = c
        .http
        .get(format!("{}{}", c.emu.base_url(), c.work_path("/poll")))
        .bearer_auth(&c.env.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A sessions token works only for its own item and session.
    let sid = c.session(vec![], ScriptEnd::Idle);
    let other = c.session(vec![], ScriptEnd::Idle);
    let mine = loop {
        let (w, t) = c.claim().await;
        if w.data.session_id().is_some_and(|s| s.as_str() == sid) {
            break t;
        }
    };
    let r = c
        .req(Method::GET, &format!("/v1/sessions/{other}"), &mine)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c.heartbeat(&id, &mine, NO_HEARTBEAT).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
