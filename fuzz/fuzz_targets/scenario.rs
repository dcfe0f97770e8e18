//! Emulator scenario files (`cma_core::emulator::scenario`, feature `emulator`): arbitrary text,
//! and structurally generated scenarios (environments, sessions with scripted calls, faults,
//! skills with arbitrary file names, memory stores with arbitrary paths, webhooks) with
//! arbitrary values and cross references.
//!
//! Checked: no panic; an accepted scenario re-serializes to JSON that parses back to the same
//! scenario; and the emulator starts from it (bound to loopback, webhooks left out so nothing
//! is sent anywhere) and shuts down.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cma_core::emulator::Scenario;
use cma_core::emulator::{Emulator, EmulatorConfig};
use cma_fuzz::{ArbJson, runtime};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const ENDPOINTS: &[&str] = &[
    "poll",
    "ack",
    "heartbeat",
    "stop",
    "work_list",
    "work_get",
    "work_update",
    "work_stats",
    "environment_create",
    "environment_get",
    "stream",
    "events_send",
    "events_list",
    "session_get",
    "nope",
];

/// Ids from a small set so cross references sometimes match.
#[derive(Debug, Arbitrary)]
enum Id {
    A,
    B,
    Empty,
    Blank,
    Any(String),
}

impl Id {
    fn text(&self) -> String {
        match self {
            Id::A => "env_a".into(),
            Id::B => "env_b".into(),
            Id::Empty => String::new(),
            Id::Blank => " ".into(),
            Id::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Call {
    custom: bool,
    name: Option<String>,
    input: Option<ArbJson>,
    permission: Option<String>,
    confirmation: Option<(bool, Option<String>)>,
}

#[derive(Debug, Arbitrary)]
struct Session {
    id: Option<Id>,
    environment: Id,
    calls: Vec<Call>,
    terminate: bool,
    skills: Vec<(String, Option<String>)>,
    memory: Vec<(String, Option<String>, Option<String>)>,
}

#[derive(Debug, Arbitrary)]
struct Fault {
    endpoint: u8,
    times: Option<u32>,
    status: Option<u16>,
    body: Option<ArbJson>,
    retry_after: Option<ArbJson>,
    drop_after_frames: Option<u32>,
    lease_lost: bool,
}

#[derive(Debug, Arbitrary)]
struct Structured {
    lease_ttl_seconds: Option<u64>,
    reclaim_older_than_ms: Option<u64>,
    api_key: Option<String>,
    environments: Vec<(Id, Option<String>, Option<String>)>,
    sessions: Vec<Session>,
    faults: Vec<Fault>,
    webhook: Option<(String, String)>,
    skills: Vec<(String, String, Vec<(String, String)>)>,
    memory_stores: Vec<(String, Vec<(String, String)>)>,
    /// One more key anywhere at the top (usually unknown: must be refused).
    junk: Option<(String, ArbJson)>,
}

fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

impl Structured {
    fn to_json(&self) -> Value {
        let envs: Vec<Value> = self
            .environments
            .iter()
            .take(4)
            .map(|(id, name, key)| {
                obj(vec![
                    ("id", Some(json!(id.text()))),
                    ("name", name.as_ref().map(|n| json!(n))),
                    ("environment_key", key.as_ref().map(|k| json!(k))),
                ])
            })
            .collect();
        let sessions: Vec<Value> = self
            .sessions
            .iter()
            .take(4)
            .map(|s| {
                let calls: Vec<Value> = s
                    .calls
                    .iter()
                    .take(6)
                    .map(|c| {
                        obj(vec![
                            ("type", c.custom.then(|| json!("custom_tool_use"))),
                            ("name", Some(json!(c.name.as_deref().unwrap_or("bash")))),
                            ("input", c.input.as_ref().map(|i| i.0.clone())),
                            (
                                "evaluated_permission",
                                c.permission.as_ref().map(|p| json!(p)),
                            ),
                            (
                                "confirmation",
                                c.confirmation.as_ref().map(|(allow, msg)| {
                                    obj(vec![
                                        (
                                            "result",
                                            Some(json!(if *allow { "allow" } else { "deny" })),
                                        ),
                                        ("deny_message", msg.as_ref().map(|m| json!(m))),
                                    ])
                                }),
                            ),
                        ])
                    })
                    .collect();
                obj(vec![
                    ("id", s.id.as_ref().map(|i| json!(i.text()))),
                    ("environment", Some(json!(s.environment.text()))),
                    ("calls", Some(Value::Array(calls))),
                    (
                        "end",
                        Some(json!(if s.terminate { "terminate" } else { "idle" })),
                    ),
                    (
                        "skills",
                        Some(Value::Array(
                            s.skills
                                .iter()
                                .take(3)
                                .map(|(id, v)| {
                                    obj(vec![
                                        ("skill_id", Some(json!(id))),
                                        ("version", v.as_ref().map(|v| json!(v))),
                                    ])
                                })
                                .collect(),
                        )),
                    ),
                    (
                        "memory_stores",
                        Some(Value::Array(
                            s.memory
                                .iter()
                                .take(3)
                                .map(|(id, access, mount)| {
                                    obj(vec![
                                        ("memory_store_id", Some(json!(id))),
                                        ("access", access.as_ref().map(|a| json!(a))),
                                        ("mount_path", mount.as_ref().map(|m| json!(m))),
                                    ])
                                })
                                .collect(),
                        )),
                    ),
                ])
            })
            .collect();
        let faults: Vec<Value> = self
            .faults
            .iter()
            .take(4)
            .map(|f| {
                obj(vec![
                    (
                        "endpoint",
                        Some(json!(ENDPOINTS[usize::from(f.endpoint) % ENDPOINTS.len()])),
                    ),
                    ("times", f.times.map(|t| json!(t))),
                    ("status", f.status.map(|s| json!(s))),
                    ("body", f.body.as_ref().map(|b| b.0.clone())),
                    ("retry_after", f.retry_after.as_ref().map(|b| b.0.clone())),
                    ("drop_after_frames", f.drop_after_frames.map(|d| json!(d))),
                    ("lease_lost", f.lease_lost.then(|| json!(true))),
                ])
            })
            .collect();
        let skills: Vec<Value> = self
            .skills
            .iter()
            .take(3)
            .map(|(id, name, files)| {
                let files: Map<String, Value> = files
                    .iter()
                    .take(4)
                    .map(|(p, c)| (p.clone(), json!(c)))
                    .collect();
                json!({"id": id, "name": name, "files": files})
            })
            .collect();
        let stores: Vec<Value> = self
            .memory_stores
            .iter()
            .take(3)
            .map(|(id, mems)| {
                let mems: Map<String, Value> = mems
                    .iter()
                    .take(4)
                    .map(|(p, c)| (p.clone(), json!(c)))
                    .collect();
                json!({"id": id, "memories": mems})
            })
            .collect();
        let mut v = obj(vec![
            (
                "lease_ttl_seconds",
                self.lease_ttl_seconds.map(|t| json!(t)),
            ),
            (
                "reclaim_older_than_ms",
                self.reclaim_older_than_ms.map(|t| json!(t)),
            ),
            ("api_key", self.api_key.as_ref().map(|k| json!(k))),
            ("environments", Some(Value::Array(envs))),
            ("sessions", Some(Value::Array(sessions))),
            ("faults", Some(Value::Array(faults))),
            (
                "webhook",
                self.webhook
                    .as_ref()
                    .map(|(url, secret)| json!({"url": url, "secret": secret})),
            ),
            ("skills", Some(Value::Array(skills))),
            ("memory_stores", Some(Value::Array(stores))),
        ]);
        if let (Some((k, j)), Value::Object(m)) = (&self.junk, &mut v) {
            m.insert(k.clone(), j.0.clone());
        }
        v
    }
}

#[derive(Debug)]
enum Input {
    Text(String),
    Structured(Structured),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(if u.ratio(1, 4)? {
            Input::Text(u.arbitrary()?)
        } else {
            Input::Structured(u.arbitrary()?)
        })
    }
}

fuzz_target!(|input: Input| {
    let text = match input {
        Input::Text(t) => t,
        Input::Structured(s) => s.to_json().to_string(),
    };
    let Ok(scenario) = Scenario::from_json(&text) else {
        return;
    };
    let again = serde_json::to_string(&scenario).expect("a scenario serializes");
    let back = Scenario::from_json(&again)
        .unwrap_or_else(|e| panic!("re-serialized scenario refused: {e}\n{again}"));
    assert_eq!(back, scenario, "scenario changed on a round trip");

    let mut scenario = scenario;
    scenario.webhook = None;
    let config = EmulatorConfig::default()
        .scenario(scenario)
        .bind(([127, 0, 0, 1], 0).into());
    runtime().block_on(async {
        if let Ok(emu) = Emulator::start(config).await {
            emu.shutdown().await;
        }
    });
});
