//! A typed custom tool, registered next to the official toolset, and its unit tests.
//!
//! Run: `cargo run -p cma-tools --example custom_tool`; test: `cargo test -p cma-tools --example custom_tool`.
//!
//! The tool `count_lines` counts the lines of a file in the session's sandbox. A host registers
//! it in the same `ToolRegistry` as the built-ins; the runner then answers the agent's
//! `agent.custom_tool_use` calls named `count_lines` with its result.

use std::sync::Arc;

use cma_tools::testing::MemorySandbox;
use cma_tools::toolset::resolve_path;
use cma_tools::{Tool, ToolContext, ToolError, ToolRegistry, agent_toolset, custom_tool};
use serde::Deserialize;
use serde_json::json;

/// The tool's input, as the agent sends it.
#[derive(Deserialize)]
struct CountLines {
    /// File to count, relative to the workdir.
    path: String,
    /// Count only lines containing this text.
    containing: Option<String>,
}

/// Build the tool: name, description, JSON Schema, and the async function.
fn count_lines_tool() -> impl Tool {
    custom_tool(
        "count_lines",
        "Count the lines of a text file in the workspace.",
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path, relative to the workspace."},
                "containing": {"type": "string", "description": "Only count lines containing this text."}
            },
            "required": ["path"]
        }),
        count_lines,
    )
    .expect("valid tool definition")
}

async fn count_lines(ctx: ToolContext, input: CountLines) -> Result<String, ToolError> {
    // Same path policy as the built-in file tools (workdir + allowed roots, symlinks followed).
    let path = resolve_path(&ctx, &input.path)
        .await
        .map_err(|e| ToolError::msg(format!("count_lines: {e}")))?;
    let data = ctx
        .sandbox
        .read_file(&path, Some(1 << 20))
        .await
        .map_err(|e| ToolError::msg(format!("count_lines: {}: {}", input.path, e.kind())))?;
    let text = String::from_utf8_lossy(&data);
    let n = text
        .lines()
        .filter(|l| input.containing.as_deref().is_none_or(|c| l.contains(c)))
        .count();
    Ok(format!("{n}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sandbox = Arc::new(MemorySandbox::new("/workspace"));
    sandbox.add_file("/workspace/notes.md", "# todo\n- a\n- b\n");
    let mut registry = ToolRegistry::new();
    registry.extend(agent_toolset());
    registry.register(Arc::new(count_lines_tool()));
    println!(
        "advertised: {}",
        serde_json::to_string(&registry.get("count_lines").unwrap().definition()).unwrap()
    );
    let ctx = ToolContext::new(sandbox);
    let r = registry
        .dispatch(
            &ctx,
            "count_lines",
            json!({"path": "notes.md", "containing": "- "}),
        )
        .await
        .expect("registered");
    println!(
        "is_error={} content={}",
        r.is_error,
        serde_json::to_string(&r.content).unwrap()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use cma_tools::testing::call_tool;

    fn sandbox() -> Arc<MemorySandbox> {
        let sb = Arc::new(MemorySandbox::new("/workspace"));
        sb.add_file("/workspace/notes.md", "# todo\n- a\n- b\n");
        sb
    }

    #[tokio::test]
    async fn counts_matching_lines() {
        let r = call_tool(
            &count_lines_tool(),
            sandbox(),
            json!({"path": "notes.md", "containing": "- "}),
        )
        .await;
        assert_eq!((r.is_error, r.text()), (false, Some("2")));
    }

    #[tokio::test]
    async fn refuses_paths_outside_the_workspace_and_bad_input() {
        let r = call_tool(
            &count_lines_tool(),
            sandbox(),
            json!({"path": "/etc/passwd"}),
        )
        .await;
        assert_eq!(
            r.text(),
            Some("count_lines: path '/etc/passwd' is outside the session's working directory")
        );
        let r = call_tool(&count_lines_tool(), sandbox(), json!({"file": "notes.md"})).await;
        assert_eq!(
            r.text(),
            Some("ValueError('Invalid arguments for function count_lines')")
        );
        let r = call_tool(&count_lines_tool(), sandbox(), json!({"path": "nope.md"})).await;
        assert_eq!(
            r.text(),
            Some("count_lines: nope.md: no such file or directory")
        );
        assert!(r.is_error);
    }
}
