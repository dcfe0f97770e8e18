//! Shared support for the emulator's HTTP tests: a context with an emulator, an environment and
//! an HTTP client, a minimal SSE reader, and values read from the test vectors.
#![allow(dead_code)]

use std::time::Duration;

use cma_core::emulator::{
    Emulator, EmulatorConfig, EnvironmentInfo, Script, ScriptEnd, ScriptedCall,
};
use cma_core::protocol::{Extra, Work, WorkData};
use cma_vectors::{Field as _, Vectors};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

pub const BETA: &str = "managed-agents-2026-04-01";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Ctx {
    pub emu: Emulator,
    pub http: reqwest::Client,
    pub env: EnvironmentInfo,
}

pub async fn ctx_with(config: EmulatorConfig) -> Ctx {
    let emu = Emulator::start(config).await.expect("emulator starts");
    let env = emu.add_environment("env_test", "test").expect("env");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    Ctx { emu, http, env }
}

pub async fn ctx() -> Ctx {
    ctx_with(EmulatorConfig::default()).await
}

impl Ctx {
    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.emu.base_url()))
            .bearer_auth(token)
            .header("anthropic-beta", BETA)
            .header("anthropic-version", "2026-10-21")
    }

    pub fn api(&self) -> String {
        self.emu.api_key()
    }

    pub fn work_path(&self, tail: &str) -> String {
        format!("/v1/environments/{}/work{tail}", self.env.id)
    }

    pub async fn poll(&self, query: &str) -> Response {
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

    pub async fn poll_item(&self) -> Work {
        let r = self.poll("?block_ms=999").await;
        assert_eq!(r.status(), StatusCode::OK);
        let w: Option<Work> = r.json().await.expect("json");
        w.expect("an item")
    }

    pub async fn ack(&self, id: &str) -> Response {
        self.req(
            Method::POST,
            &self.work_path(&format!("/{id}/ack")),
            &self.env.key,
        )
        .send()
        .await
        .expect("ack")
    }

    pub async fn heartbeat(&self, id: &str, token: &str, expected: &str) -> Response {
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

    pub async fn stop(&self, id: &str, token: &str, body: Value) -> Response {
        self.req(Method::POST, &self.work_path(&format!("/{id}/stop")), token)
            .json(&body)
            .send()
            .await
            .expect("stop")
    }

    /// Poll + ack the next item; returns it (with its secret) and its sessions token.
    pub async fn claim(&self) -> (Work, String) {
        let w = self.poll_item().await;
        let token = w.sessions_token().expect("sessions token");
        assert_eq!(self.ack(w.id.as_str()).await.status(), StatusCode::OK);
        (w, token)
    }

    pub fn session(&self, calls: Vec<ScriptedCall>, end: ScriptEnd) -> String {
        self.emu
            .create_session(&self.env.id, Script::new(calls, end))
            .expect("session")
    }

    pub async fn events(&self, sid: &str, token: &str, query: &str) -> Value {
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

    pub async fn send(&self, sid: &str, token: &str, event: Value) -> Response {
        self.req(Method::POST, &format!("/v1/sessions/{sid}/events"), token)
            .json(&json!({ "events": [event] }))
            .send()
            .await
            .expect("send")
    }

    pub async fn stream(&self, sid: &str, token: &str) -> Sse {
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
pub struct Sse {
    resp: Response,
    buf: String,
}

impl Sse {
    /// The next frame, `None` at end of stream.
    pub async fn frame(&mut self) -> Option<String> {
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
    pub async fn event(&mut self) -> Option<(String, Value)> {
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
    pub async fn until(&mut self, kind: &str) -> Vec<(String, Value)> {
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

pub fn parse_frame(f: &str) -> (Option<String>, Value) {
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

pub fn types(evs: &[(String, Value)]) -> Vec<&str> {
    evs.iter().map(|(n, _)| n.as_str()).collect()
}

pub fn healthcheck() -> WorkData {
    WorkData {
        kind: "healthcheck".into(),
        id: "hc_1".into(),
        extra: Extra::new(),
    }
}

pub fn json_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// The JSON body of a response-decoding vector (the vectors' `decoding` section).
pub fn decode_vector(id: &str) -> Value {
    let body = Vectors::load()
        .case("decoding", "cases", id)
        .req("response")
        .req_str("body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// The empty-poll answer the SDK reads as "no work" (vector D1: it returns `None`).
pub fn no_work_body() -> String {
    let d1 = Vectors::load().case("decoding", "cases", "D1");
    assert_eq!(d1.req("result").req_str("outcome"), "none");
    d1.req("response").req_str("body").to_owned()
}

/// The `block_ms` the SDK's poller always sends (its documented maximum).
pub fn sdk_poll_block_ms() -> u64 {
    Vectors::load()
        .section("retry")
        .req("poller")
        .req_u64("poll_block_ms")
}
