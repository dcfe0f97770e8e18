//! `cma emulator`: serve the local CMA emulator (`cma_core::emulator`) until Ctrl-C.
//!
//! ```text
//! cma emulator --scenario examples/scenarios/basic.json --record results.jsonl --port 8787
//! ```
//!
//! It prints the base URL, the API key, every environment with its key and every scripted session,
//! plus the environment variables a client needs. A bad scenario file exits with status 2 and a
//! message naming the problem (line and column for JSON errors).
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cma_core::emulator::{Emulator, EmulatorConfig, Scenario};

/// Arguments of `cma emulator`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Scenario file (JSON): environments, keys, scripted sessions, faults, webhook.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Append every tool result received to this JSON-lines file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Exit (status 0) once every scripted session has terminated and its work item is stopped
    /// (or 5 s after the last termination, for the worker's final stop call).
    #[arg(long)]
    exit_when_done: bool,
    /// Lease TTL in seconds reported by heartbeats, unless the scenario sets one.
    #[arg(long, default_value_t = 60)]
    lease_ttl: u64,
    /// Strict mode: answer a poll without `Anthropic-Worker-ID` with 400 (also the scenario's
    /// `"strict": true`).
    #[arg(long)]
    strict: bool,
}

/// Run `cma emulator`.
pub fn run(args: Args) -> ExitCode {
    let scenario = match &args.scenario {
        Some(path) => match Scenario::from_file(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cma emulator: {e}");
                return ExitCode::from(2);
            }
        },
        None => Scenario::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cma emulator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args, scenario))
}

async fn serve(args: Args, scenario: Scenario) -> ExitCode {
    let mut config = EmulatorConfig::default()
        .bind(SocketAddr::new(args.bind, args.port))
        .lease_ttl_seconds(args.lease_ttl)
        .strict(args.strict)
        .scenario(scenario);
    if let Some(r) = &args.record {
        config = config.record(r.clone());
    }
    let emu = match Emulator::start(config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cma emulator: {e}");
            return ExitCode::from(2);
        }
    };
    print_banner(&emu, &args);
    let code = tokio::select! {
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => { eprintln!("cma emulator: interrupted, shutting down"); ExitCode::SUCCESS }
            Err(e) => { eprintln!("cma emulator: cannot wait for Ctrl-C: {e}"); ExitCode::FAILURE }
        },
        () = wait_done(&emu), if args.exit_when_done => {
            eprintln!("cma emulator: every scripted session has terminated");
            ExitCode::SUCCESS
        }
    };
    emu.shutdown().await;
    code
}

/// Resolves once every scripted session has ended and its work is stopped (5 s grace for the
/// worker's final stop call).
async fn wait_done(emu: &Emulator) {
    let all_ended = |e: &Emulator| {
        let (total, ended, _) = e.scripted_progress();
        ended == total
    };
    while !emu.wait_for(Duration::from_secs(3600), all_ended).await {}
    emu.wait_for(Duration::from_secs(5), |e| e.scripted_progress().2)
        .await;
}

fn print_banner(emu: &Emulator, args: &Args) {
    let base = emu.base_url();
    println!("cma emulator listening on {base}");
    println!("  api key: {}", emu.api_key());
    let envs = emu.environments();
    for env in &envs {
        println!(
            "  environment {} ({}): environment key {}",
            env.id, env.name, env.key
        );
    }
    for sid in emu.session_ids() {
        if let Some((env, calls, end)) = emu.session_script(&sid) {
            println!("  session {sid}: environment {env}, {calls} scripted call(s), end {end:?}");
        }
    }
    if let Some(r) = &args.record {
        println!("  recording tool results to {}", r.display());
    }
    println!("Point a client at it:");
    println!("  export ANTHROPIC_BASE_URL={base}");
    println!("  export ANTHROPIC_API_KEY={}", emu.api_key());
    if let Some(env) = envs.first() {
        println!("  export ANTHROPIC_ENVIRONMENT_ID={}", env.id);
        println!("  export ANTHROPIC_ENVIRONMENT_KEY={}", env.key);
    }
    println!("Press Ctrl-C to stop.");
}
