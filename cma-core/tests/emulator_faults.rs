//! The emulator over real HTTP on 127.0.0.1 under faults: injected statuses, dropped streams,
//! delays, forced lease loss, and malformed, oversized or garbage requests.

mod emulator_support;

use std::time::Duration;

use cma_core::emulator::{EmulatorConfig, Endpoint, Fault, ScriptEnd, ScriptedCall};
use cma_core::protocol::{NO_HEARTBEAT, Work, WorkState};
use emulator_support::{ctx, ctx_with, healthcheck};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn injected_statuses_carry_retry_headers_then_clear() {
    let c = ctx().await;
    c.emu
        .inject_fault(
            Fault::on(Endpoint::Poll)
                .status(503)
                .times(2)
                .retry_after_ms(10)
                .retry_after("1")
                .should_retry(true),
        )
        .unwrap();
    for _ in 0..2 {
        let r = c.poll("").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after-ms"], "10");
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["x-should-retry"], "true");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "overloaded_error");
    }
    assert_eq!(c.poll("").await.status(), StatusCode::OK);
    assert_eq!(c.emu.faults_remaining(), 0);

    let mut f = Fault::on(Endpoint::SessionGet).status(418);
    f.body = Some(json!({"custom": true}));
    c.emu.inject_fault(f).unwrap();
    let sid = c.session(vec![], ScriptEnd::Idle);
    let r = c
        .req(Method::GET, &format!("/v1/sessions/{sid}"), &c.api())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 418);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"custom": true}));
    assert!(
        c.emu
            .inject_fault(Fault::on(Endpoint::Ack).drop_after_frames(1))
            .is_err()
    );
}

#[tokio::test]
async fn dropped_streams_close_early_and_delays_hold_the_answer() {
    let c = ctx().await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    c.emu
        .inject_fault(Fault::on(Endpoint::Stream).drop_after_frames(0))
        .unwrap();
    let mut s = c.stream(&sid, &c.api()).await;
    assert!(s.event().await.is_none(), "closed right after the headers");

    c.emu
        .inject_fault(Fault::on(Endpoint::Stream).drop_after_frames(1))
        .unwrap();
    let mut s = c.stream(&sid, &c.api()).await;
    c.send(
        &sid,
        &c.api(),
        json!({"type": "user.message", "content": []}),
    )
    .await;
    assert_eq!(s.event().await.unwrap().0, "user.message");
    assert!(s.event().await.is_none(), "closed after one event frame");

    // A delayed poll still answers normally once the delay is over, and the item enqueued
    // meanwhile is there.
    c.emu
        .inject_fault(Fault::on(Endpoint::Poll).delay_ms(100))
        .unwrap();
    let delayed = c.poll("");
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap()
    };
    let (r, _) = tokio::join!(delayed, meanwhile);
    let w: Option<Work> = r.json().await.unwrap();
    assert!(w.is_some());
}

#[tokio::test]
async fn forced_lease_loss_makes_the_next_heartbeat_fail() {
    let c = ctx().await;
    c.emu.enqueue_work(&c.env.id, healthcheck()).unwrap();
    let (w, token) = c.claim().await;
    let id = w.id.as_str();
    let hb: Value = c
        .heartbeat(id, &token, NO_HEARTBEAT)
        .await
        .json()
        .await
        .unwrap();
    let last = hb["last_heartbeat"].as_str().unwrap().to_owned();
    c.emu
        .inject_fault(Fault::on(Endpoint::Heartbeat).lease_lost())
        .unwrap();
    let r = c.heartbeat(id, &token, &last).await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = r.json().await.unwrap();
    let cs = &body["error"]["details"]["current_state"];
    assert_eq!(cs["state"], "active");
    assert_ne!(cs["last_heartbeat"], last.as_str());

    // The programmatic forms: lose_lease (phantom holder) and expire_lease (re-queued).
    let now = cs["last_heartbeat"].as_str().unwrap().to_owned();
    assert!(c.emu.lose_lease(id));
    assert_eq!(
        c.heartbeat(id, &token, &now).await.status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert!(c.emu.expire_lease(id));
    assert_eq!(c.emu.work(id).unwrap().state, WorkState::Queued);
    assert!(!c.emu.lose_lease(id), "a queued item has no lease");
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_rejected_cleanly() {
    let c = ctx_with(EmulatorConfig::default().max_body_bytes(1024)).await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    let path = format!("/v1/sessions/{sid}/events");
    for (body, status) in [
        ("{not json", StatusCode::BAD_REQUEST),
        ("[]", StatusCode::BAD_REQUEST),
        (r#"{"events": []}"#, StatusCode::BAD_REQUEST),
        (r#"{"events": [{"no_type": 1}]}"#, StatusCode::BAD_REQUEST),
        (
            r#"{"events": [{"type": "agent.tool_use"}]}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"events": [{"type": "user.tool_result", "tool_use_id": "sevt_unknown"}]}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = c
            .req(Method::POST, &path, &c.api())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{body}");
    }
    let big = json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "x".repeat(4096)}]}]});
    let r = c
        .req(Method::POST, &path, &c.api())
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = c
        .req(Method::GET, "/v1/nothing/here", &c.api())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "not_found_error"
    );
}

#[tokio::test]
async fn garbage_requests_get_json_errors_and_never_break_the_server() {
    let c = ctx().await;
    let sid = c.session(vec![ScriptedCall::tool("bash", json!({}))], ScriptEnd::Idle);
    let wid = c.emu.session_work(&sid)[0].id.0.clone();
    let env = c.env.id.clone();
    let paths = [
        (
            Method::GET,
            format!("/v1/environments/{env}/work/poll?block_ms=99999999999999999999999"),
        ),
        (
            Method::GET,
            format!("/v1/environments/{env}/work/poll?block_ms=-1"),
        ),
        (
            Method::GET,
            format!("/v1/environments/{env}/work/poll?reclaim_older_than_ms=%FF%FE"),
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/work/{wid}/heartbeat?desired_ttl_seconds=0"),
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/work/{wid}/heartbeat?desired_ttl_seconds=x"),
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/work/nope/ack"),
        ),
        (
            Method::POST,
            format!("/v1/environments/{env}/work/{wid}/stop"),
        ),
        (Method::POST, format!("/v1/environments/{env}/work/{wid}")),
        (Method::GET, format!("/v1/environments/{env}/work?limit=0")),
        (
            Method::GET,
            format!("/v1/environments/{env}/work?page=garbage"),
        ),
        (
            Method::GET,
            "/v1/environments/env_nope/work/poll".to_owned(),
        ),
        (Method::POST, "/v1/environments".to_owned()),
        (
            Method::GET,
            "/v1/environments?include_archived=maybe".to_owned(),
        ),
        (Method::POST, format!("/v1/environments/{env}")),
        (Method::POST, "/v1/sessions".to_owned()),
        (
            Method::GET,
            format!("/v1/sessions/{sid}/events?page=evp_x&limit=abc"),
        ),
        (
            Method::GET,
            format!("/v1/sessions/{sid}/events?created_at%5Bgt%5D=yesterday"),
        ),
        (Method::POST, format!("/v1/sessions/{sid}/events")),
        (
            Method::GET,
            "/v1/sessions/sesn_nope/events/stream".to_owned(),
        ),
        (Method::PUT, format!("/v1/sessions/{sid}")),
    ];
    let bodies = [
        "",
        "{",
        "null",
        "[1,2]",
        "\"x\"",
        "{\"force\":\"yes\",\"metadata\":[1],\"name\":5,\"events\":{},\"environment_id\":7}",
        "\u{0}\u{1}\u{2}",
    ];
    for (method, path) in &paths {
        for body in bodies {
            // The environment key, the API key and a sessions-less guess: whichever the endpoint
            // takes, the answer is a JSON error (or a success) and never a crash.
            for token in [c.env.key.clone(), c.api()] {
                let r = c
                    .req(method.clone(), path, &token)
                    .header("content-type", "application/json")
                    .body(body.to_owned())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{method} {path} {body:?}: {e}"));
                let status = r.status();
                let text = r.text().await.unwrap();
                if !status.is_success() {
                    assert!(
                        status.is_client_error(),
                        "{method} {path} {body:?}: {status} {text}"
                    );
                    let v: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("{method} {path}: non-JSON error {text:?}"));
                    assert_eq!(v["type"], "error", "{text}");
                    assert!(v["error"]["message"].is_string(), "{text}");
                }
            }
        }
    }
    // Still serving.
    let r = c.poll("").await;
    assert_eq!(r.status(), StatusCode::OK);
}
