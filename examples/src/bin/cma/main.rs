//! `cma`: the operator command line for self-hosted Claude Managed Agents environments.
//!
//! Each subcommand lives in its own module: `emulator` serves the local CMA emulator, `run` runs a
//! control plane, `tool` runs one built-in tool call over a directory, `webhook` signs and verifies
//! Standard Webhooks deliveries.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod egress;
mod emulator;
mod run;
mod tool;
mod webhook;

/// Operator tools for cma.
#[derive(Debug, Parser)]
#[command(name = "cma", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the local CMA emulator (docs/protocol.md §9) on 127.0.0.1.
    Emulator(emulator::Args),
    /// Run a control plane for one environment (configuration file; keys from the environment).
    Run(run::Args),
    /// Run one built-in tool call on the isolate backend over a directory; print the result as
    /// it would be posted (exit 1 when it would be posted as an error).
    Tool(tool::Args),
    /// Sign or verify a webhook delivery (Standard Webhooks).
    #[command(subcommand)]
    Webhook(webhook::Command),
}

fn main() -> ExitCode {
    // Log lines (one per egress request among them) are written by a dedicated thread: a slow
    // stderr reader must not stall the runtime's workers on the request path. Not lossy: when
    // its queue is full, logging waits rather than dropping audit lines. The guard flushes the
    // queue when `main` returns.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(writer)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Emulator(args) => emulator::run(args),
        Command::Run(args) => run::run(args),
        Command::Tool(args) => tool::run(args),
        Command::Webhook(cmd) => webhook::run(cmd),
    }
}
