//! Unit tests of the state's lease, cap and paging rules.

use serde_json::{Value, json};
use tokio::time::{Duration, Instant};

use crate::protocol::{Extra, NO_HEARTBEAT, WorkData, WorkState};

use super::super::scenario::Script;
use super::*;

fn state() -> (State, String) {
    let mut s = State::new(
        Limits {
            lease_ttl_seconds: 60,
            reclaim_default_ms: 5000,
            max_events_per_session: 100,
            max_event_bytes_per_session: MAX_EVENT_BYTES_PER_SESSION,
            max_work_items: 3,
            max_sessions: 2,
            organization_id: "org".into(),
            workspace_id: "ws".into(),
        },
        "sk-api".into(),
    );
    let (env, _) = s
        .add_environment(
            Some("env_a".into()),
            "a".into(),
            Some("envkey_a".into()),
            EnvOptions::default(),
        )
        .unwrap();
    (s, env.id.0)
}

#[test]
fn lease_rules_follow_the_protocol() {
    let (mut s, env) = state();
    let t0 = Instant::now();
    let id = s.enqueue(
        &env,
        WorkData {
            kind: "healthcheck".into(),
            id: "hc".into(),
            extra: Extra::new(),
        },
    );
    let polled = s.poll(&env, 5000, Some("w1"), t0).unwrap();
    assert!(polled.sessions_token().is_some());
    // Pending: not pollable until the reclaim delay passes.
    assert!(s.poll(&env, 5000, None, t0).is_none());
    assert!(
        s.poll(&env, 10, None, t0 + Duration::from_millis(10))
            .is_some()
    );
    assert_eq!(s.ack(&env, &id, t0).unwrap().state, WorkState::Starting);
    assert!(s.ack(&env, &id, t0).is_err());
    let hb = s
        .heartbeat(&env, &id, Some(NO_HEARTBEAT), None, t0)
        .unwrap();
    assert_eq!(hb.state, WorkState::Active);
    assert!(
        s.heartbeat(&env, &id, Some(NO_HEARTBEAT), None, t0)
            .is_err()
    );
    let hb2 = s
        .heartbeat(&env, &id, Some(&hb.last_heartbeat), None, t0)
        .unwrap();
    assert_ne!(hb2.last_heartbeat, hb.last_heartbeat);
    // Lease expiry re-queues; the old holder gets 412.
    assert!(s.sweep(t0 + Duration::from_secs(61)));
    let err = s
        .heartbeat(&env, &id, Some(&hb2.last_heartbeat), None, t0)
        .unwrap_err();
    assert_eq!(err.status.as_u16(), 412);
    assert_eq!(
        err.details.clone().unwrap()["current_state"]["state"],
        "queued"
    );
}

#[test]
fn stopped_work_and_ended_sessions_are_forgotten_beyond_the_caps() {
    let (mut s, env) = state();
    let hc = || WorkData {
        kind: "healthcheck".into(),
        id: "hc".into(),
        extra: Extra::new(),
    };
    let first = s.enqueue(&env, hc());
    let second = s.enqueue(&env, hc());
    s.stop(&env, &first, true).unwrap();
    s.enqueue(&env, hc());
    s.enqueue(&env, hc());
    let ids: Vec<String> = s.all_work().into_iter().map(|w| w.id.0).collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&first) && ids.contains(&second));

    let live = |s: &mut State| {
        s.create_session(&env, None, Script::default(), true, json!({}), Value::Null)
    };
    let a = live(&mut s).unwrap();
    live(&mut s).unwrap();
    let err = live(&mut s).unwrap_err();
    assert_eq!(err.status.as_u16(), 429);
    s.delete_session(&a).unwrap();
    live(&mut s).unwrap();
    assert!(!s.session_ids().contains(&a));
}

#[test]
fn event_history_is_capped_and_paged() {
    let (mut s, env) = state();
    let sid = s
        .create_session(&env, None, Script::default(), true, json!({}), Value::Null)
        .unwrap();
    for _ in 0..150 {
        s.send_events(&sid, vec![json!({"type": "user.message", "content": []})]);
    }
    assert_eq!(s.events(&sid).len(), 100);
    let q = EventQuery {
        limit: 60,
        ..Default::default()
    };
    let p1 = s.list_events(&sid, &q).unwrap();
    assert_eq!(p1.data.len(), 60);
    let q2 = EventQuery {
        limit: 60,
        page: p1.next_page.clone(),
        ..Default::default()
    };
    let p2 = s.list_events(&sid, &q2).unwrap();
    assert_eq!(p2.data.len(), 40);
    assert!(p2.next_page.is_none());
    assert_ne!(p1.data[59]["id"], p2.data[0]["id"]);
}
