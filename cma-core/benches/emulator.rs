//! The emulator's cost per protocol operation, over keep-alive HTTP/1.1 on 127.0.0.1.
//!
//! `cargo bench -p cma-core --features emulator --bench emulator -- --warm-up-time 1 --measurement-time 3`
//!
//! * `emulator/work_cycle`: one work item's whole lease life as a worker sees it: poll, ack,
//!   first heartbeat, force stop (4 requests; the item is queued through the programmatic API).
//! * `emulator/poll_empty`: one non-blocking poll of an empty queue (`null`).
//! * `emulator/events_send`: one `POST /events` (`user.message`; the scripted agent answers with
//!   two events, so three are stored and broadcast).
//! * `emulator/stream_delivery`: `POST /events` and reading that event's frame back from an open
//!   SSE stream: the round trip a result takes to reach every watcher.

use std::time::Duration;

use cma_core::emulator::{Emulator, EmulatorConfig, Script, ScriptEnd};
use cma_core::protocol::{Extra, NO_HEARTBEAT, Work, WorkData};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const BETA: &str = "managed-agents-2026-04-01";

struct Bench {
    emu: Emulator,
    http: reqwest::Client,
    env: String,
    key: String,
}

impl Bench {
    async fn new() -> Self {
        let emu = Emulator::start(EmulatorConfig::default().max_events_per_session(1000))
            .await
            .expect("emulator");
        let env = emu.add_environment("env_bench", "bench").expect("env");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self {
            emu,
            http,
            env: env.id,
            key: env.key,
        }
    }

    fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.emu.base_url()))
            .bearer_auth(token)
            .header("anthropic-beta", BETA)
    }

    async fn work_cycle(&self) {
        self.emu
            .enqueue_work(
                &self.env,
                WorkData {
                    kind: "healthcheck".into(),
                    id: "hc".into(),
                    extra: Extra::new(),
                },
            )
            .expect("enqueue");
        let base = format!("/v1/environments/{}/work", self.env);
        let w: Work = self
            .http
            .get(format!("{}{base}/poll", self.emu.base_url()))
            .bearer_auth(&self.key)
            .header("anthropic-beta", BETA)
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("item");
        let token = w.sessions_token().expect("token");
        let id = w.id.as_str();
        let ack = self
            .post(&format!("{base}/{id}/ack"), &self.key)
            .send()
            .await;
        assert!(ack.expect("ack").status().is_success());
        let hb = self
            .post(&format!("{base}/{id}/heartbeat"), &token)
            .query(&[("expected_last_heartbeat", NO_HEARTBEAT)])
            .send()
            .await;
        assert!(hb.expect("heartbeat").status().is_success());
        let stop = self
            .post(&format!("{base}/{id}/stop"), &token)
            .json(&json!({"force": true}))
            .send()
            .await;
        assert!(stop.expect("stop").status().is_success());
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let b = rt.block_on(Bench::new());
    let mut g = c.benchmark_group("emulator");

    g.bench_function("work_cycle", |bench| {
        bench.to_async(&rt).iter(|| b.work_cycle())
    });

    let poll = format!("{}/v1/environments/{}/work/poll", b.emu.base_url(), b.env);
    g.bench_function("poll_empty", |bench| {
        bench.to_async(&rt).iter(|| async {
            let r = b
                .http
                .get(&poll)
                .bearer_auth(&b.key)
                .header("anthropic-beta", BETA)
                .send()
                .await;
            assert_eq!(r.expect("poll").text().await.expect("body"), "null");
        })
    });

    let sid = b
        .emu
        .create_session(&b.env, Script::new(vec![], ScriptEnd::Idle))
        .expect("session");
    let api = b.emu.api_key();
    let events = format!("/v1/sessions/{sid}/events");
    let message =
        json!({"events": [{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]});
    g.bench_function("events_send", |bench| {
        bench.to_async(&rt).iter(|| async {
            let r = b.post(&events, &api).json(&message).send().await;
            assert!(r.expect("send").status().is_success());
        })
    });

    let mut stream = rt.block_on(async {
        b.http
            .get(format!("{}{events}/stream", b.emu.base_url()))
            .bearer_auth(&api)
            .header("anthropic-beta", BETA)
            .send()
            .await
            .expect("stream")
    });
    g.bench_function("stream_delivery", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let r = b.post(&events, &api).json(&message).send().await;
                assert!(r.expect("send").status().is_success());
                // Read until the posted message's frame has arrived.
                let mut buf = String::new();
                while !buf.contains("event: user.message") {
                    let chunk = stream.chunk().await.expect("chunk").expect("open");
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                }
                // Drain the agent's two answering frames so the next round starts clean.
                while buf.matches("event: session.status_idle").count() < 1 {
                    let chunk = stream.chunk().await.expect("chunk").expect("open");
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                }
            })
        })
    });
    g.finish();
}

criterion_group!(emulator, benches);
criterion_main!(emulator);
