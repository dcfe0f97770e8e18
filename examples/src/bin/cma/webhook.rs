//! `cma webhook`: filled by the webhook work.
use std::process::ExitCode;

/// `cma webhook` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {}

pub fn run(cmd: Command) -> ExitCode {
    match cmd {}
}
