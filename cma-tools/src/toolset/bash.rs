//! The `bash` tool (docs/protocol.md §6.2).
//!
//! Three ways to run, chosen per call from the context and the sandbox:
//! 1. a [`ShellLauncher`](crate::ShellLauncher) is set on the context, or the sandbox reports
//!    [`persistent_shell`](cma_sandbox::Capabilities::persistent_shell) (then a
//!    [`SandboxShellLauncher`] starts the shell inside it) → one persistent
//!    [`ShellSession`] per session with the official semantics (cwd, exported variables and
//!    background jobs persist; `exit` or a timeout kills it until `{"restart": true}`);
//! 2. no launcher but the sandbox has `shell_exec` → each command runs through
//!    [`Sandbox::exec`](cma_sandbox::Sandbox::exec) in a fresh shell (same texts, truncation and
//!    timeouts, but state does not persist between calls and stdout is followed by stderr instead
//!    of being interleaved);
//! 3. no shell at all (the isolate backend) → an error naming the `execute` tool.

use std::sync::Arc;

use async_trait::async_trait;
use cma_sandbox::{ExecRequest, SandboxErrorKind};
use serde::Deserialize;
use serde_json::Value;

use super::validate::parse;
use crate::context::ToolContext;
use crate::output::{ToolError, ToolOutput};
use crate::registry::Tool;
use crate::shell::{
    BASH_DEFAULT_TIMEOUT_SECS, BASH_OUTPUT_LIMIT, MAX_TIMEOUT, SandboxShellLauncher, ShellError,
    ShellLauncher, ShellSession, ShellSpec, TRUNCATED_PREFIX, strip_ansi,
};

/// Answer of `bash` on a sandbox without a shell that runs JavaScript.
pub const NO_SHELL_USE_EXECUTE: &str =
    "bash: this sandbox has no shell; use the execute tool to run JavaScript";
/// Answer of `bash` on a sandbox without any way to run code.
pub const NO_SHELL: &str = "bash: this sandbox has no shell";

/// The official `bash` tool.
#[derive(Debug, Clone, Copy, Default)]
pub struct BashTool;

#[derive(Deserialize)]
struct BashInput {
    command: Option<String>,
    restart: Option<bool>,
    timeout_ms: Option<i64>,
}

#[async_trait]
impl Tool for BashTool {
    fn name(&self) -> &str {
        "bash"
    }
    fn description(&self) -> &str {
        "Run a command in a persistent bash shell."
    }
    fn input_schema(&self) -> Value {
        super::bash_schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let BashInput {
            command,
            restart,
            timeout_ms,
        } = parse("bash", &super::bash_schema(), input)?;
        let caps = ctx.sandbox.capabilities();
        let launcher: Option<Arc<dyn ShellLauncher>> = ctx.shell_launcher.clone().or_else(|| {
            caps.persistent_shell
                .then(|| Arc::new(SandboxShellLauncher::new(ctx.sandbox.clone())) as _)
        });
        if launcher.is_none() && !caps.shell_exec {
            return Err(ToolError::msg(if caps.execute_js {
                NO_SHELL_USE_EXECUTE
            } else {
                NO_SHELL
            }));
        }
        let restart = restart.unwrap_or(false);
        let command = command.filter(|c| !c.is_empty());
        if !restart && command.is_none() {
            return Err(ToolError::msg("bash: command is required"));
        }
        let timeout_secs = match timeout_ms {
            Some(ms) if ms != 0 => ms as f64 / 1000.0,
            _ => BASH_DEFAULT_TIMEOUT_SECS,
        };
        match &launcher {
            Some(l) => persistent(ctx, l.as_ref(), command, restart, timeout_secs).await,
            None if restart => Ok(ToolOutput::text("bash session restarted")),
            None => one_shot(ctx, command.unwrap_or_default(), timeout_secs).await,
        }
    }
}

async fn start(ctx: &ToolContext, launcher: &dyn ShellLauncher) -> Result<ShellSession, ToolError> {
    let spec = ShellSpec::new(ctx.workdir(), ctx.shell_env.clone());
    ShellSession::start(launcher, &spec)
        .await
        .map_err(|e| ToolError::Exception {
            type_name: "OSError".into(),
            message: e.to_string(),
        })
}

async fn persistent(
    ctx: &ToolContext,
    launcher: &dyn ShellLauncher,
    command: Option<String>,
    restart: bool,
    timeout_secs: f64,
) -> Result<ToolOutput, ToolError> {
    let mut slot = ctx.state.shell.lock().await;
    if restart {
        if let Some(mut old) = slot.take() {
            old.close().await;
        }
        *slot = Some(start(ctx, launcher).await?);
        return Ok(ToolOutput::text("bash session restarted"));
    }
    let command = command.unwrap_or_default();
    let shell = match &mut *slot {
        Some(s) => s,
        empty => empty.insert(start(ctx, launcher).await?),
    };
    match shell.exec(&command, timeout_secs, &ctx.cancel).await {
        Ok(out) if out.exit_code == 0 => Ok(ToolOutput::Text(out.output)),
        Ok(out) => Err(ToolError::Message(ToolOutput::Text(out.output))),
        Err(ShellError::Io(e)) => Err(ToolError::Exception {
            type_name: "OSError".into(),
            message: e.to_string(),
        }),
        Err(e) => Err(ToolError::msg(format!("bash: {e}"))),
    }
}

async fn one_shot(
    ctx: &ToolContext,
    command: String,
    timeout_secs: f64,
) -> Result<ToolOutput, ToolError> {
    let timed_out = || ToolError::msg(format!("bash: {}", ShellError::TimedOut(timeout_secs)));
    if timeout_secs <= 0.0 {
        return Err(timed_out());
    }
    let mut req = ExecRequest::shell(command);
    req.timeout = std::time::Duration::try_from_secs_f64(timeout_secs)
        .unwrap_or(MAX_TIMEOUT)
        .min(MAX_TIMEOUT);
    req.max_output_bytes = BASH_OUTPUT_LIMIT;
    for (k, v) in [("PS1", ""), ("PS2", ""), ("TERM", "dumb")] {
        req.env.insert(k.into(), v.into());
    }
    let out = tokio::select! {
        r = ctx.sandbox.exec(req) => r,
        () = ctx.cancel.cancelled() => return Err(ToolError::msg("bash: bash command cancelled")),
    };
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == SandboxErrorKind::Timeout => return Err(timed_out()),
        Err(e) => return Err(ToolError::msg(format!("bash: {e}"))),
    };
    let mut raw = out.stdout.to_vec();
    raw.extend_from_slice(&out.stderr);
    let text = String::from_utf8_lossy(&strip_ansi(&raw))
        .trim_end_matches('\n')
        .to_owned();
    let text = if out.truncated {
        format!("{TRUNCATED_PREFIX}{text}")
    } else {
        text
    };
    if out.exit_code == Some(0) {
        Ok(ToolOutput::Text(text))
    } else {
        Err(ToolError::Message(ToolOutput::Text(text)))
    }
}
