//! The `execute` tool: run a JavaScript program in sandboxes that have a JS engine
//! (`Capabilities::execute_js`, e.g. the isolate backend), through
//! [`Sandbox::execute`](cma_sandbox::Sandbox::execute).
//!
//! Input: `{"code": string, "timeout_ms"?: integer}` (validated like the built-ins). The result
//! text is the program's stdout followed by its stderr (a newline between them when needed),
//! trailing newlines removed, `(no output)` when empty, prefixed with `[output truncated]\n` when
//! output was cut. An uncaught exception (non-zero exit) makes the result an error with that
//! same text; running out of time reads `execute: timed out after <secs>s`, and other failures
//! `execute: <reason>`.

use std::time::Duration;

use async_trait::async_trait;
use cma_sandbox::{ExecuteRequest, SandboxErrorKind};
use serde::Deserialize;
use serde_json::{Value, json};

use super::validate::parse;
use crate::context::ToolContext;
use crate::output::{ToolError, ToolOutput};
use crate::pyfmt::repr_float;
use crate::registry::Tool;
use crate::shell::{TRUNCATED_PREFIX, strip_ansi};

/// The `execute` tool.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecuteTool;

#[derive(Deserialize)]
struct ExecuteInput {
    code: String,
    timeout_ms: Option<i64>,
}

fn schema() -> Value {
    json!({
        "additionalProperties": false,
        "properties": {
            "code": {
                "description": "JavaScript source to run. Print results with console.log.",
                "title": "Code",
                "type": "string"
            },
            "timeout_ms": {
                "anyOf": [{"type": "integer"}, {"type": "null"}],
                "default": null,
                "description": "Wall-clock limit in milliseconds (the sandbox's default when absent or 0).",
                "title": "Timeout Ms"
            }
        },
        "required": ["code"],
        "title": "ExecuteInput",
        "type": "object"
    })
}

#[async_trait]
impl Tool for ExecuteTool {
    fn name(&self) -> &str {
        "execute"
    }
    fn description(&self) -> &str {
        "Run a JavaScript program in the sandbox and return what it prints."
    }
    fn input_schema(&self) -> Value {
        schema()
    }

    async fn call(&self, ctx: &ToolContext, input: Value) -> Result<ToolOutput, ToolError> {
        let ExecuteInput { code, timeout_ms } = parse("execute", &schema(), input)?;
        if !ctx.sandbox.capabilities().execute_js {
            return Err(ToolError::msg(
                "execute: this sandbox cannot run JavaScript",
            ));
        }
        let mut req = ExecuteRequest::new(code);
        if let Some(ms) = timeout_ms.filter(|ms| *ms > 0) {
            req.timeout = Duration::from_millis(ms as u64);
        }
        let secs = req.timeout.as_secs_f64();
        let out = tokio::select! {
            r = ctx.sandbox.execute(req) => r,
            () = ctx.cancel.cancelled() => return Err(ToolError::msg("execute: cancelled")),
        };
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == SandboxErrorKind::Timeout => {
                return Err(ToolError::msg(format!(
                    "execute: timed out after {}s",
                    repr_float(secs)
                )));
            }
            Err(e) if e.kind() == SandboxErrorKind::Unsupported => {
                return Err(ToolError::msg(
                    "execute: this sandbox cannot run JavaScript",
                ));
            }
            Err(e) => return Err(ToolError::msg(format!("execute: {e}"))),
        };
        let mut raw = out.stdout.to_vec();
        if !raw.is_empty() && !out.stderr.is_empty() && !raw.ends_with(b"\n") {
            raw.push(b'\n');
        }
        raw.extend_from_slice(&out.stderr);
        let mut text = String::from_utf8_lossy(&strip_ansi(&raw))
            .trim_end_matches('\n')
            .to_owned();
        if out.truncated {
            text.insert_str(0, TRUNCATED_PREFIX);
        }
        if out.exit_code == Some(0) {
            Ok(ToolOutput::Text(text))
        } else {
            Err(ToolError::Message(ToolOutput::Text(text)))
        }
    }
}
