//! The emulator over real HTTP on 127.0.0.1: the server-side conformance checks E1–E14 (what
//! an SDK client relies on, with the SDK's own values taken from the vectors' `decoding` and
//! `retry` sections), scripted agents, the SSE stream, faults and webhooks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cma_core::emulator::{
    Emulator, EmulatorConfig, Endpoint, EnvironmentInfo, Fault, Scenario, Script, ScriptEnd,
    ScriptedCall, WebhookConfig,
};
use cma_core::protocol::{Extra, NO_HEARTBEAT, SessionStatus, Work, WorkData, WorkState};
use cma_core::webhook::{Verifier, WebhookSecret};
use cma_vectors::{Field as _, Vectors};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

const BETA: &str = "managed-agents-2026-04-01";
const WAIT: Duration = Duration::from_secs(10);

struct Ctx {
    emu: Emulator,
    http: reqwest::Client,
    env: EnvironmentInfo,
}

async fn ctx_with(config: EmulatorConfig) -> Ctx {
    let emu = Emulator::start(config).await.expect("emulator starts");
    let env = emu.add_environment("env_test", "test").expect("env");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    Ctx { emu, http, env }
}

async fn ctx() -> Ctx {
    ctx_with(EmulatorConfig::default()).await
}

impl Ctx {
    fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.emu.base_url()))
            .bearer_auth(token)
            .header("anthropic-beta", BETA)
            .header("anthropic-version", "2026-10-21")
    }

    fn api(&self) -> String {
        self.emu.api_key()
    }

    fn work_path(&self, tail: &str) -> String {
        format!("/v1/environments/{}/work{tail}", self.env.id)
    }

    async fn poll(&self, query: &str) -> Response {
        self.req(
            Method::GET,
            &self.work_path(&format!("/poll{query}")),
            &self.env.key,
        )
        .header("anthropic-worker-id", "wrk-test")
        .send()
        .await
        .expect("poll")
    }

    async fn poll_item(&self) -> Work {
        let r = self.poll("?block_ms=999").await;
        assert_eq!(r.status(), StatusCode::OK);
        let w: Option<Work> = r.json().await.expect("json");
        w.expect("an item")
    }

    async fn ack(&self, id: &str) -> Response {
        self.req(
            Method::POST,
            &self.work_path(&format!("/{id}/ack")),
            &self.env.key,
        )
        .send()
        .await
        .expect("ack")
    }

    async fn heartbeat(&self, id: &str, token: &str, expected: &str) -> Response {
        self.req(
            Method::POST,
            &self.work_path(&format!("/{id}/heartbeat")),
            token,
        )
        .query(&[("expected_last_heartbeat", expected)])
        .send()
        .await
        .expect("heartbeat")
    }

    async fn stop(&self, id: &str, token: &str, body: Value) -> Response {
        self.req(Method::POST, &self.work_path(&format!("/{id}/stop")), token)
            .json(&body)
            .send()
            .await
            .expect("stop")
    }

    /// Poll + ack the next item; returns it (with its secret) and its sessions token.
    async fn claim(&self) -> (Work, String) {
        let w = self.poll_item().await;
        let token = w.sessions_token().expect("sessions token");
        assert_eq!(self.ack(w.id.as_str()).await.status(), StatusCode::OK);
        (w, token)
    }

    fn session(&self, calls: Vec<ScriptedCall>, end: ScriptEnd) -> String {
        self.emu
            .create_session(&self.env.id, Script::new(calls, end))
            .expect("session")
    }

    async fn events(&self, sid: &str, token: &str, query: &str) -> Value {
        let r = self
            .req(
                Method::GET,
                &format!("/v1/sessions/{sid}/events{query}"),
                token,
            )
            .send()
            .await
            .expect("events");
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.expect("json")
    }

    async fn send(&self, sid: &str, token: &str, event: Value) -> Response {
        self.req(Method::POST, &format!("/v1/sessions/{sid}/events"), token)
            .json(&json!({ "events": [event] }))
            .send()
            .await
            .expect("send")
    }

    async fn stream(&self, sid: &str, token: &str) -> Sse {
        let r = self
            .req(
                Method::GET,
                &format!("/v1/sessions/{sid}/events/stream"),
                token,
            )
            .header("accept", "application/json")
            .send()
            .await
            .expect("stream");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            resp: r,
            buf: String::new(),
        }
    }
}

/// A minimal SSE reader: returns raw frames (text between blank lines).
struct Sse {
    resp: Response,
    buf: String,
}

impl Sse {
    /// The next frame, `None` at end of stream.
    async fn frame(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let f = self.buf[..i].to_owned();
                self.buf.drain(..i + 2);
                return Some(f);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("stream stalled")
                .expect("stream error")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }

    /// The next event frame that is not a comment or a ping: (event name, data).
    async fn event(&mut self) -> Option<(String, Value)> {
        loop {
            let f = self.frame().await?;
            if f.lines().all(|l| l.starts_with(':')) {
                continue;
            }
            let (name, data) = parse_frame(&f);
            let name = name.unwrap_or_else(|| panic!("frame without event: {f:?}"));
            if name == "ping" {
                continue;
            }
            return Some((name, data));
        }
    }

    /// Events until the stream shows `kind` (inclusive).
    async fn until(&mut self, kind: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        loop {
            let ev = self
                .event()
                .await
                .unwrap_or_else(|| panic!("stream ended before {kind}: {out:?}"));
            let done = ev.0 == kind;
            out.push(ev);
            if done {
                return out;
            }
        }
    }
}

fn parse_frame(f: &str) -> (Option<String>, Value) {
    let mut name = None;
    let mut data = Vec::new();
    for line in f.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            name = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push(v);
        }
    }
    let data = serde_json::from_str(&data.join("\n")).unwrap_or(Value::Null);
    (name, data)
}

fn types(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(n, _)| n.as_str()).collect()
}

fn healthcheck() -> WorkData {
    WorkData {
        kind: "healthcheck".into(),
        id: "hc_1".into(),
        extra: Extra::new(),
    }
}

fn json_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// The JSON body of a response-decoding vector (the vectors' `decoding` section).
fn decode_vector(id: &str) -> Value {
    let body = Vectors::load()
        .case("decoding", "cases", id)
        .req("response")
        .req_str("body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// The empty-poll answer the SDK reads as "no work" (vector D1: it returns `None`).
fn no_work_body() -> String {
    let d1 = Vectors::load().case("decoding", "cases", "D1");
    assert_eq!(d1.req("result").req_str("outcome"), "none");
    d1.req("response").req_str("body").to_owned()
}

/// The `block_ms` the SDK's poller always sends (its documented maximum).
fn sdk_poll_block_ms() -> u64 {
    Vectors::load()
        .section("retry")
        .req("poller")
        .req_u64("poll_block_ms")
}

// ------------------------------------------------------------------------------ E1–E14

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

// ------------------------------------------------------------------------------ agents, stream

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

// ------------------------------------------------------------------------------ faults

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

// ------------------------------------------------------------------------------ API surface

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
async fn environments_and_sessions_can_be_managed_over_http() {
    let c = ctx().await;
    let r = c
        .req(Method::POST, "/v1/environments", &c.api())
        .json(&json!({"name": "made", "config": {"type": "self_hosted"}, "metadata": {"a": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let key = r.headers()["x-emulator-environment-key"]
        .to_str()
        .unwrap()
        .to_owned();
    let env: Value = r.json().await.unwrap();
    let env_id = env["id"].as_str().unwrap().to_owned();
    assert_eq!(env["type"], "environment");
    assert_eq!(env["archived_at"], Value::Null);

    // A session created over HTTP queues work the new key can poll.
    let r = c
        .req(Method::POST, "/v1/sessions", &c.api())
        .json(&json!({"environment_id": env_id, "agent": "agent_x",
                      "emulator_script": {"calls": [{"name": "bash", "input": {"command": "true"}}], "end": "terminate"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["status"], "running");
    let w: Work = c
        .req(
            Method::GET,
            &format!("/v1/environments/{env_id}/work/poll"),
            &key,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        w.data.session_id().unwrap().as_str(),
        s["id"].as_str().unwrap()
    );

    let upd: Value = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .json(&json!({"description": "d", "metadata": {"a": null, "b": "2"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upd["metadata"], json!({"b": "2"}));
    let r = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .json(&json!({"config": {"type": "cloud", "networking": {"type": "unrestricted"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"]["details"]["error_code"],
        "invalid_config_type_change"
    );

    let archived: Value = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}/archive"),
            &c.api(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(archived["archived_at"].is_string());
    let r = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["details"]["error_code"], "environment_archived");
    let listed: Value = c
        .req(Method::GET, "/v1/environments", &c.api())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        1,
        "archived hidden"
    );
    let listed: Value = c
        .req(
            Method::GET,
            "/v1/environments?include_archived=true",
            &c.api(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    let del: Value = c
        .req(
            Method::DELETE,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(del, json!({"id": env_id, "type": "environment_deleted"}));
    let r = c
        .req(Method::GET, &format!("/v1/environments/{env_id}"), &c.api())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["details"]["error_code"], "environment_not_found");
}

#[tokio::test]
async fn scenarios_load_from_json_and_bad_ones_fail_clearly() {
    let text = include_str!("../../examples/scenarios/basic.json");
    let sc = Scenario::from_json(text).expect("example scenario is valid");
    let emu = Emulator::start(EmulatorConfig::default().scenario(sc.clone()))
        .await
        .unwrap();
    assert_eq!(emu.api_key(), sc.api_key.clone().unwrap());
    let env = &sc.environments[0];
    assert_eq!(emu.environment_key(&env.id), env.environment_key.clone());
    let sid = sc.sessions[0].id.clone().unwrap();
    let calls = emu
        .session_events(&sid)
        .into_iter()
        .filter(|e| e["type"] == "agent.tool_use")
        .count();
    assert_eq!(calls, 1, "one call at a time");
    assert_eq!(emu.session_work(&sid).len(), 1);
    emu.shutdown().await;

    let err = Scenario::from_json(
        r#"{"sessions": [{"environment": "env_x", "calls": [], "end": "explode"}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("explode"), "{err}");
}

#[tokio::test]
async fn webhooks_are_signed_and_verifiable() {
    let secret = WebhookSecret::parse("whsec_ZW11bGF0b3Itd2ViaG9vay1zZWNyZXQ=").unwrap();
    let verifier = Verifier::new(secret.clone());
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let failures: Arc<Mutex<u32>> = Arc::default();
    let (seen2, failures2) = (seen.clone(), failures.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let (seen, failures, verifier) = (seen2.clone(), failures2.clone(), verifier.clone());
            async move {
                // The first delivery is refused once, to exercise the retry.
                let mut f = failures.lock().unwrap();
                if *f == 0 {
                    *f += 1;
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                match verifier.verify(&headers, &body) {
                    Ok(()) => {
                        seen.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        axum::http::StatusCode::NO_CONTENT
                    }
                    Err(_) => axum::http::StatusCode::UNAUTHORIZED,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut cfg = WebhookConfig::new(url, secret);
    cfg.retry_delay = Duration::from_millis(20);
    let c = ctx_with(EmulatorConfig::default().webhook(cfg)).await;
    let sid = c.session(vec![], ScriptEnd::Terminate);
    let want = [
        "session.created",
        "session.status_run_started",
        "session.status_idled",
        "session.status_terminated",
    ];
    let ok = c
        .emu
        .wait_for(WAIT, |e| e.webhook_deliveries().len() >= want.len())
        .await;
    assert!(ok, "deliveries: {:?}", c.emu.webhook_deliveries());
    let got = seen.lock().unwrap().clone();
    let kinds: Vec<&str> = got
        .iter()
        .map(|e| e["data"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, want);
    for e in &got {
        assert_eq!(e["type"], "event");
        assert!(e["id"].as_str().unwrap().starts_with("wevt_"));
        assert_eq!(e["data"]["id"], sid.as_str());
        assert!(e["data"]["organization_id"].is_string());
        assert!(e["data"]["workspace_id"].is_string());
        let _: cma_core::webhook::WebhookEvent = serde_json::from_value(e.clone()).unwrap();
    }
    let d = c.emu.webhook_deliveries();
    assert_eq!(d[0].attempts, 2);
    assert!(d.iter().all(|d| d.delivered));
    server.abort();
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_blocked_polls() {
    let c = ctx_with(EmulatorConfig::default().keepalive(Duration::from_secs(60))).await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    let mut s = c.stream(&sid, &c.api()).await;
    c.claim().await;
    let poll = c
        .req(Method::GET, &c.work_path("/poll?block_ms=999"), &c.env.key)
        .send();
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Ctx { emu, .. } = c;
    emu.shutdown().await;
    let r = poll.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "null");
    assert!(s.event().await.is_none());
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

/// Strict mode: a poll without `Anthropic-Worker-ID` (or with an empty one) is a 400
/// `invalid_request_error` with code `worker_id_required`; with the header it is served. Without
/// strict mode (the real API's behaviour) the header is optional. The scenario's `"strict": true`
/// turns it on too.
#[tokio::test]
async fn strict_mode_rejects_polls_without_a_worker_id() {
    let strict_scenario = Scenario::from_json(r#"{"strict": true}"#).unwrap();
    for config in [
        EmulatorConfig::default().strict(true),
        EmulatorConfig::default().scenario(strict_scenario),
    ] {
        let c = ctx_with(config).await;
        let path = c.work_path("/poll");
        for header in [None, Some(""), Some("  ")] {
            let mut req = c.req(Method::GET, &path, &c.env.key);
            if let Some(h) = header {
                req = req.header("anthropic-worker-id", h);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "header {header:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["type"], "invalid_request_error");
            assert_eq!(body["error"]["details"]["error_code"], "worker_id_required");
            assert_eq!(
                body["error"]["message"],
                cma_core::emulator::STRICT_WORKER_ID_MESSAGE
            );
        }
        let r = c.poll("").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "null");
        let flagged: Vec<_> = c
            .emu
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/work/poll"))
            .map(|r| (r.worker_id.clone(), r.status))
            .collect();
        assert_eq!(flagged.len(), 4);
        assert!(flagged[..3].iter().all(|(_, s)| *s == Some(400)));
        assert_eq!(flagged[3], (Some("wrk-test".to_owned()), Some(200)));
    }
    let lax = ctx().await;
    let r = lax
        .req(Method::GET, &lax.work_path("/poll"), &lax.env.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the real API serves such polls");
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
