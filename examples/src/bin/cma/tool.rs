//! `cma tool`: run one built-in tool call on the isolate backend over a directory and print the
//! result exactly as a worker would post it.
//!
//! ```text
//! cma tool grep --workdir ./repo --input '{"pattern":"TODO"}'
//! ```
//!
//! The directory is the sandbox's `/workspace` (relative paths in the input resolve there; nothing
//! outside it is reachable). A successful result prints its content (the text of a single text
//! block, otherwise the content blocks as a JSON array) and exits 0; a result that would be posted
//! with `is_error: true` prints its text and exits 1; bad arguments exit 2.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use cma_sandbox::isolate::IsolateBackend;
use cma_tools::{PostedResult, SessionTools, ToolContext, toolset};
use serde_json::Value;

/// Arguments of `cma tool`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tool: `read`, `write`, `edit`, `glob`, `grep`, `execute` (or `bash`, which the isolate
    /// backend answers with an error naming `execute`).
    name: String,
    /// The directory the tool runs over (the sandbox's `/workspace`).
    #[arg(long, default_value = ".")]
    workdir: PathBuf,
    /// The tool input, a JSON object (e.g. `{"file_path":"a.txt"}`).
    #[arg(long, default_value = "{}")]
    input: String,
}

/// Run `cma tool`.
pub fn run(args: Args) -> ExitCode {
    let input: Value = match serde_json::from_str(&args.input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cma tool: --input is not valid JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cma tool: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(call(&args, input)) {
        Ok(posted) => print_posted(&posted),
        Err(message) => {
            eprintln!("cma tool: {message}");
            ExitCode::from(2)
        }
    }
}

async fn call(args: &Args, input: Value) -> Result<PostedResult, String> {
    let root = tempfile::Builder::new()
        .prefix("cma-tool-")
        .tempdir()
        .map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    let backend = IsolateBackend::new(root.path()).map_err(|e| e.to_string())?;
    let sandbox = backend
        .open_directory(&args.workdir)
        .map_err(|e| format!("--workdir {}: {e}", args.workdir.display()))?;
    let registry = toolset::registry_for(&sandbox.capabilities());
    if !registry.names().iter().any(|n| n == &args.name) {
        return Err(format!(
            "unknown tool {:?}; built-in tools here: {}",
            args.name,
            registry.names().join(", ")
        ));
    }
    let tools = SessionTools::new(Arc::new(registry), ToolContext::new(sandbox));
    let posted = tools.call(&args.name, input).await;
    tools.close().await;
    posted.ok_or_else(|| format!("the {} call was cancelled", args.name))
}

/// The posted content: one text block as its text, anything else as JSON.
fn render(posted: &PostedResult) -> String {
    match posted.content.as_slice() {
        [block] if block.get("type") == Some(&Value::from("text")) => block
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        blocks => serde_json::to_string(blocks).unwrap_or_default(),
    }
}

fn print_posted(posted: &PostedResult) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let text = render(posted);
    // Byte for byte what would be posted: no newline is added.
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if let Err(e) = written {
        eprintln!("cma tool: cannot write the result: {e}");
        return ExitCode::from(2);
    }
    if posted.is_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
