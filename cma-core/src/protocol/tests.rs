//! Unit tests of the protocol types against the SDK vectors.

use super::*;
use serde_json::json;

// Vector D3 (`decoding` in vectors/sdk-test-vectors.json).
const D3: &str = r#"{"type":"work","id":"work_test","environment_id":"env_test","state":"queued","data":{"type":"session","id":"sesn_test"},"metadata":{},"created_at":"2026-05-01T00:00:00Z","acknowledged_at":null,"started_at":null,"stop_requested_at":null,"stopped_at":null,"latest_heartbeat_at":null,"secret":"eyJzZXNzaW9uc190b2tlbiI6ICJzay1zZXNzLXRvayJ9"}"#;

#[test]
fn work_item_decodes_and_yields_its_sessions_token() {
    let w: Work = serde_json::from_str(D3).unwrap();
    assert_eq!(w.id.as_str(), "work_test");
    assert_eq!(w.state, WorkState::Queued);
    assert_eq!(w.data.session_id().unwrap().as_str(), "sesn_test");
    assert_eq!(w.sessions_token().as_deref(), Some("sk-sess-tok"));
}

#[test]
fn unknown_fields_and_states_survive_a_round_trip() {
    let mut v: Value = serde_json::from_str(D3).unwrap();
    v["state"] = json!("hibernating");
    v["future_field"] = json!({"x": 1});
    v["data"] = json!({"type": "healthcheck", "id": "hc_1", "probe": true});
    let w: Work = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(w.state, WorkState::Other("hibernating".into()));
    assert!(w.data.session_id().is_none());
    assert_eq!(serde_json::to_value(&w).unwrap(), v);
}

// Fuzz finding (protocol_json): the error body had no `extra` map, so unknown top-level
// fields were dropped on a round trip.
#[test]
fn error_bodies_keep_unknown_fields() {
    let v =
        json!({"type": "error", "error": {"type": "x", "message": "m"}, "": true, "trace": [1]});
    let b: ErrorBody = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(b.extra["trace"], json!([1]));
    assert_eq!(serde_json::to_value(&b).unwrap(), v);
}

#[test]
fn secret_decoding_follows_the_sdk_rules() {
    // §6 of the vectors.
    let cases = [
        (
            "eyJzZXNzaW9uc190b2tlbiI6ICJzay1zZXNzLXRvayJ9",
            Some("sk-sess-tok"),
        ),
        (
            "eyJzZXNzaW9uc190b2tlbiI6ICJzay1zZXNzLXRvayIsICJpbmdyZXNzX3Rva2VuIjogImkiLCAic291cmNlX3Rva2VuIjogInMifQ==",
            Some("sk-sess-tok"),
        ),
        ("eyJzZXNzaW9uc190b2tlbiI6ICIifQ==", None),
        ("not base64!!", None),
        ("WzEsMl0=", None),
        ("", None),
    ];
    for (secret, want) in cases {
        assert_eq!(decode_sessions_token(secret).as_deref(), want, "{secret}");
    }
    assert_eq!(
        decode_sessions_token(&encode_work_secret("tok")).as_deref(),
        Some("tok")
    );
}

#[test]
fn session_events_are_typed_and_unknown_ones_preserved() {
    let raw = json!({"type":"agent.tool_use","id":"e2","name":"bash","input":{"command":"ls"},"processed_at":"2026-05-01T00:00:00Z","novel":1});
    let ev = SessionEvent::from_value(raw.clone()).unwrap();
    match &ev {
        SessionEvent::ToolUse(t) => {
            assert_eq!(t.name, "bash");
            assert_eq!(t.input, json!({"command":"ls"}));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ev.to_value(), raw);

    let future = json!({"type":"some.future_event","id":"e3","z":[1]});
    let ev = SessionEvent::from_value(future.clone()).unwrap();
    assert_eq!(ev.kind(), "some.future_event");
    assert_eq!(ev.to_value(), future);

    let custom = json!({"type":"user.custom_tool_result","id":"e4","custom_tool_use_id":"sevt_ct01","content":[{"type":"text","text":"42"}]});
    let ev = SessionEvent::from_value(custom.clone()).unwrap();
    assert!(
        matches!(&ev, SessionEvent::CustomToolResult(r) if r.tool_use_id.as_str() == "sevt_ct01")
    );
    assert_eq!(ev.to_value(), custom);

    assert!(SessionEvent::from_value(json!({"id": "x"})).is_err());
    assert!(SessionEvent::from_value(json!({"type":"agent.tool_use","id":"x"})).is_err());
}

#[test]
fn send_events_match_sdk_bytes() {
    // Vectors R13, R21, R22, R23.
    let r13 = [SendEvent::ToolResult {
        tool_use_id: "sevt_1".into(),
        is_error: false,
        content: vec![ContentBlock::text("hi")],
    }];
    assert_eq!(
        serde_json::to_string(&SendEventsRequest { events: &r13 }).unwrap(),
        r#"{"events":[{"type":"user.tool_result","tool_use_id":"sevt_1","is_error":false,"content":[{"type":"text","text":"hi"}]}]}"#
    );
    let r21 = [SendEvent::Interrupt {
        session_thread_id: None,
    }];
    assert_eq!(
        serde_json::to_string(&SendEventsRequest { events: &r21 }).unwrap(),
        r#"{"events":[{"type":"user.interrupt"}]}"#
    );
    let r22 = [SendEvent::CustomToolResult {
        custom_tool_use_id: "sevt_ct01".into(),
        is_error: None,
        content: vec![ContentBlock::text("42")],
    }];
    assert_eq!(
        serde_json::to_string(&SendEventsRequest { events: &r22 }).unwrap(),
        r#"{"events":[{"type":"user.custom_tool_result","custom_tool_use_id":"sevt_ct01","content":[{"type":"text","text":"42"}]}]}"#
    );
    let r23 = [SendEvent::ToolConfirmation {
        tool_use_id: "sevt_tu01".into(),
        result: "deny".into(),
        deny_message: Some("no".into()),
    }];
    assert_eq!(
        serde_json::to_string(&SendEventsRequest { events: &r23 }).unwrap(),
        r#"{"events":[{"type":"user.tool_confirmation","tool_use_id":"sevt_tu01","result":"deny","deny_message":"no"}]}"#
    );
}

#[test]
fn heartbeat_412_body_exposes_current_state() {
    // Vector D5.
    let body: ErrorBody = serde_json::from_str(r#"{"type":"error","error":{"type":"invalid_request_error","message":"heartbeat precondition failed","details":{"error_code":"heartbeat_precondition_failed","current_state":{"state":"active","last_heartbeat":"2026-05-01T00:00:09Z","lease_extended":false,"ttl_seconds":60}}},"request_id":"req_mock"}"#).unwrap();
    assert_eq!(
        body.error.error_code(),
        Some("heartbeat_precondition_failed")
    );
    let st = body.error.current_state().unwrap();
    assert_eq!(st.state, WorkState::Active);
    assert_eq!(st.last_heartbeat.as_deref(), Some("2026-05-01T00:00:09Z"));
    assert_eq!(st.ttl_seconds, 60);
    assert_eq!(body.request_id.as_deref(), Some("req_mock"));
}

#[test]
fn heartbeat_and_stats_decode() {
    let hb: WorkHeartbeat = serde_json::from_str(r#"{"type":"work_heartbeat","last_heartbeat":"2026-05-01T00:00:01Z","lease_extended":true,"state":"active","ttl_seconds":4}"#).unwrap();
    assert_eq!(hb.ttl_seconds, 4);
    assert!(hb.lease_extended);
    let st: WorkQueueStats = serde_json::from_str(r#"{"type":"work_queue_stats","depth":0,"pending":0,"oldest_queued_at":null,"workers_polling":1}"#).unwrap();
    assert_eq!(st.workers_polling, Some(1));
}

#[test]
fn content_blocks_pass_non_text_through() {
    let img =
        json!({"type":"image","source":{"type":"base64","media_type":"image/png","data":"AA=="}});
    let b: ContentBlock = serde_json::from_value(img.clone()).unwrap();
    assert!(b.as_text().is_none());
    assert_eq!(serde_json::to_value(&b).unwrap(), img);
    assert!(serde_json::from_value::<ContentBlock>(json!("x")).is_err());
}
