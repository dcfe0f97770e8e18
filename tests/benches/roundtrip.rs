//! Tool-call round trips through the emulator with 1, 100 and 1,000 concurrent sessions.
//!
//! `cargo bench -p cma-tests --bench roundtrip -- --warm-up-time 1 --measurement-time 5`
//!
//! One iteration: `N` scripted sessions are created at once in a fresh emulator (each makes
//! `CALLS` tool calls — `write`, `read`, `grep` — one after the other, then terminates); a
//! control plane with concurrency `N` claims every work item, places each session in an isolate
//! sandbox, runs its calls through the official toolset and posts the results; the iteration ends
//! when every session has ended and every item is stopped. Measured: that wall time (claim, lease,
//! event stream, tool execution, result post, force stop), so time / (N × CALLS) is the cost of one
//! round trip at that concurrency.
//!
//! Baseline in the same run: `noop/N`, the same protocol work with an executor that answers every
//! call with a fixed text (no sandbox, no tool). `isolate/N ÷ noop/N` is what placing a session and
//! running real tools adds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
use cma_core::control::select::RuleSelector;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{Emulator, EmulatorConfig, Script, ScriptEnd, ScriptedCall};
use cma_core::runner::session::{FixedHost, RunnerConfig, SessionHost, ToolExecutor, ToolOutcome};
use cma_core::runner::state::ToolCall;
use cma_sandbox::isolate::IsolateBackend;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

/// Tool calls per session.
const CALLS: usize = 3;

fn script(i: usize) -> Script {
    let call = |name: &str, input: serde_json::Value| {
        serde_json::from_value::<ScriptedCall>(json!({"name": name, "input": input})).expect("call")
    };
    Script::new(
        vec![
            call(
                "write",
                json!({"file_path": "notes.md", "content": format!("session {i}\nline two\n")}),
            ),
            call("read", json!({"file_path": "notes.md"})),
            call("grep", json!({"pattern": "two"})),
        ],
        ScriptEnd::Terminate,
    )
}

/// Answers every call with a fixed text.
struct Noop;

#[async_trait]
impl ToolExecutor for Noop {
    fn tool_names(&self) -> Vec<String> {
        ["write", "read", "grep"].map(String::from).to_vec()
    }
    async fn execute(&self, _call: &ToolCall) -> ToolOutcome {
        ToolOutcome::text("ok")
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Noop,
    Isolate,
}

/// One iteration: the time for `n` sessions to finish.
async fn round(n: usize, kind: Kind) -> Duration {
    let emu = Emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator");
    let env = emu.add_environment("env_bench", "bench").expect("env");
    let root = tempfile::tempdir().expect("tempdir");
    let host: Arc<dyn SessionHost> = match kind {
        Kind::Noop => Arc::new(FixedHost(Arc::new(Noop))),
        Kind::Isolate => Arc::new(SandboxHost::from_parts(
            [Arc::new(IsolateBackend::new(root.path()).expect("isolate"))
                as Arc<dyn cma_sandbox::SandboxBackend>],
            Arc::new(RuleSelector::new("isolate")),
            Arc::new(ToolsetFactory::new()),
            SandboxHostConfig::default(),
        )),
    };
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emu.base_url())
            .build()
            .expect("config"),
    )
    .expect("client");
    let plane = ControlPlane::builder(
        client,
        env.id.clone(),
        Credential::environment_key(env.key.clone()),
        host,
    )
    .config(ControlPlaneConfig {
        concurrency: n,
        runner: RunnerConfig {
            max_idle: Some(Duration::from_secs(5)),
            ..RunnerConfig::default()
        },
        ..ControlPlaneConfig::default()
    })
    .build()
    .expect("plane");
    let poller = {
        let plane = plane.clone();
        tokio::spawn(async move { plane.run().await })
    };

    let start = Instant::now();
    for i in 0..n {
        emu.create_session(&env.id, script(i)).expect("session");
    }
    let done = emu
        .wait_for(Duration::from_secs(120), |e| {
            let (total, ended, work_over) = e.scripted_progress();
            total == n && ended == n && work_over
        })
        .await;
    let elapsed = start.elapsed();
    assert!(
        done,
        "{n} sessions did not finish: {:?}",
        emu.scripted_progress()
    );
    assert_eq!(emu.tool_results().len(), n * CALLS, "one result per call");

    plane.shutdown(Duration::from_secs(5)).await;
    let _ = poller.await;
    emu.shutdown().await;
    elapsed
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("roundtrip");
    g.sample_size(10);
    for n in [1usize, 100, 1000] {
        g.throughput(Throughput::Elements((n * CALLS) as u64));
        for (label, kind) in [("noop", Kind::Noop), ("isolate", Kind::Isolate)] {
            g.bench_function(BenchmarkId::new(label, n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += rt.block_on(round(n, kind));
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
