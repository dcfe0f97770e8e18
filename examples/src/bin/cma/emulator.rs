//! `cma emulator`: filled by the emulator work.
use std::process::ExitCode;

/// Arguments of `cma emulator`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> ExitCode {
    eprintln!("cma emulator: not built yet");
    ExitCode::FAILURE
}
