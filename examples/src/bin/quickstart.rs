//! `quickstart`: a whole self-hosted environment on one machine, with no account, key or Docker.
//!
//! ```text
//! cargo run -p cma-examples --bin quickstart [-- --scenario FILE.json] [--keep-workspace]
//! ```
//!
//! It starts the local CMA emulator (`cma_core::emulator`) with a scripted agent (by default
//! `examples/scenarios/quickstart.json`, built in), a [`ControlPlane`] that polls it, and the
//! isolate sandbox backend: each session gets a confined workspace directory where the official
//! tools (`read`, `write`, `edit`, `glob`, `grep`) run natively and `execute` runs JavaScript. Every
//! tool call and its result is printed as it happens, then a summary. It exits 0 when every
//! scripted call was answered exactly once and every work item was stopped, 1 otherwise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use cma_core::client::{Client, ClientConfig, Credential};
use cma_core::control::host::{SandboxHost, SandboxHostConfig};
use cma_core::control::plane::{ControlPlane, ControlPlaneConfig};
use cma_core::control::select::RuleSelector;
use cma_core::control::tools::ToolsetFactory;
use cma_core::emulator::{Emulator, EmulatorConfig, Scenario, ToolResultRecord};
use cma_core::runner::session::{CallReport, RunnerConfig};
use cma_sandbox::SandboxBackend;
use cma_sandbox::isolate::IsolateBackend;

/// The built-in scenario.
const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/quickstart.json");
/// How much of a result is shown per call.
const SHOWN_CHARS: usize = 160;

/// Run a scripted agent against a local control plane with the isolate backend.
#[derive(Debug, Parser)]
#[command(name = "quickstart", about)]
struct Args {
    /// Scenario file in the emulator's format (default: the built-in quickstart scenario).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Keep the sandbox workspaces (under a printed directory) instead of deleting them.
    #[arg(long)]
    keep_workspace: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Work items handled at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// What the console observer collected.
#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    errors: u64,
    per_tool: BTreeMap<String, (u64, u64)>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quickstart: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::from_json(DEFAULT_SCENARIO)?,
    };
    let expected: usize = scenario.sessions.iter().map(|s| s.calls.len()).sum();
    let started = Instant::now();

    // 1. The stand-in for the hosted API, on 127.0.0.1.
    let emulator = Emulator::start(EmulatorConfig::default().scenario(scenario)).await?;
    let environments = emulator.environments();
    let Some(env) = environments.first() else {
        return Err("the scenario defines no environment".into());
    };
    println!(
        "emulator    {} (environment {})",
        emulator.base_url(),
        env.id
    );

    // 2. Sandboxes: one confined workspace directory per session.
    let root = tempfile::Builder::new()
        .prefix("cma-quickstart-")
        .tempdir()?;
    let backend: Arc<dyn SandboxBackend> = Arc::new(IsolateBackend::new(root.path())?);
    println!(
        "sandboxes   isolate backend under {}",
        root.path().display()
    );
    let host = SandboxHost::from_parts(
        [backend],
        Arc::new(RuleSelector::new("isolate")),
        Arc::new(ToolsetFactory::new()),
        SandboxHostConfig {
            keep_warm: Duration::from_secs(5),
            ..SandboxHostConfig::default()
        },
    );

    // 3. The control plane, printing every call as it happens.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let observer = {
        let tally = tally.clone();
        move |report: &CallReport| print_report(report, &tally)
    };
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emulator.base_url())
            .build()?,
    )?;
    let config = ControlPlaneConfig {
        concurrency: args.concurrency.max(1),
        runner: RunnerConfig {
            max_idle: Some(Duration::from_secs(2)),
            ..RunnerConfig::default()
        },
        ..ControlPlaneConfig::default()
    };
    let plane = ControlPlane::builder(
        client,
        env.id.clone(),
        Credential::environment_key(env.key.clone()),
        Arc::new(host),
    )
    .config(config)
    .observer(Arc::new(observer))
    .build()?;
    println!(
        "plane       polling with concurrency {}\n",
        args.concurrency.max(1)
    );
    let poller = {
        let plane = plane.clone();
        tokio::spawn(async move { plane.run().await })
    };

    // 4. Wait until every scripted session is done and its work item stopped.
    let done = emulator
        .wait_for(Duration::from_secs(args.timeout), |e| {
            let (sessions, ended, work_over) = e.scripted_progress();
            sessions == ended && work_over
        })
        .await;
    plane.shutdown(Duration::from_secs(5)).await;
    match poller.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("quickstart: the poll loop failed: {e}"),
        Err(e) => eprintln!("quickstart: the poll loop panicked: {e}"),
    }

    // 5. The summary, checked against what the emulator recorded.
    let (sessions, ended, finished) = emulator.scripted_progress();
    let records = emulator.tool_results();
    let answered = records.len() - duplicates_of(&records);
    let duplicates = duplicates_of(&records);
    let stats = plane.stats();
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    println!("\nsummary");
    println!(
        "  tool calls  {} run, {} answered with an error",
        tally.calls, tally.errors
    );
    for (name, (n, errors)) in &tally.per_tool {
        println!("    {name:<8} {n} call(s), {errors} error(s)");
    }
    println!(
        "  scripted    {answered}/{expected} calls answered, {duplicates} answered twice, {ended}/{sessions} sessions ended"
    );
    println!(
        "  work items  {} claimed, {} finished, {} failed",
        stats.claimed, stats.finished, stats.failed
    );
    println!("  elapsed     {:.2?}", started.elapsed());
    if args.keep_workspace {
        let kept = root.keep();
        println!("  workspaces  kept under {}", kept.display());
    }
    emulator.shutdown().await;
    let ok = done && finished && answered == expected && duplicates == 0 && stats.failed == 0;
    if !ok {
        println!("\nquickstart did NOT complete (timeout {}s)", args.timeout);
    }
    Ok(ok)
}

fn print_report(report: &CallReport, tally: &Mutex<Tally>) {
    match report {
        CallReport::Started(call) => {
            println!(
                "→ {} {} {}",
                call.event.name,
                short(&call.event.input.to_string()),
                call.id()
            );
        }
        CallReport::Finished {
            call,
            outcome,
            posted,
        } => {
            let text: Vec<String> = outcome
                .content
                .iter()
                .map(|b| match b.as_text() {
                    Some(t) => t.to_owned(),
                    None => serde_json::to_string(b).unwrap_or_default(),
                })
                .collect();
            let mark = if outcome.is_error { "✗ error" } else { "✓" };
            let posted = if *posted { "" } else { " (not posted)" };
            println!("  {mark}{posted} {}", short(&text.join(" ")));
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.calls += 1;
            let entry = t.per_tool.entry(call.event.name.clone()).or_default();
            entry.0 += 1;
            if outcome.is_error {
                entry.1 += 1;
                t.errors += 1;
            }
        }
        CallReport::Denied(call) => println!("  ⊘ denied {} {}", call.event.name, call.id()),
        CallReport::NotOwned(call) => println!(
            "  … {} {} is not served here (left for another client)",
            call.event.name,
            call.id()
        ),
        _ => {}
    }
}

/// Results posted more than once for the same call.
fn duplicates_of(records: &[ToolResultRecord]) -> usize {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter(|r| !seen.insert((r.session_id.as_str(), r.tool_use_id.as_str())))
        .count()
}

/// One line, at most [`SHOWN_CHARS`] characters.
fn short(text: &str) -> String {
    let one_line = text.replace('\n', "⏎");
    let mut out: String = one_line.chars().take(SHOWN_CHARS).collect();
    if one_line.chars().count() > SHOWN_CHARS {
        out.push('…');
    }
    out
}
