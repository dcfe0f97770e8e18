//! The toolset on the isolate backend: `execute` runs JavaScript, `bash` names `execute`, and
//! the file tools see what scripts write.

use std::sync::Arc;

use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
use cma_tools::{ToolContext, toolset};
use serde_json::json;

async fn isolate() -> (tempfile::TempDir, Arc<dyn Sandbox>) {
    let tmp = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(tmp.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    (tmp, sb)
}

#[tokio::test]
async fn execute_runs_javascript_and_bash_points_to_it() {
    let (_tmp, sb) = isolate().await;
    let reg = toolset::registry_for(&sb.capabilities());
    assert_eq!(
        reg.names(),
        ["bash", "read", "write", "edit", "glob", "grep", "execute"]
    );
    let ctx = ToolContext::new(sb);

    let r = reg
        .dispatch(
            &ctx,
            "execute",
            json!({"code": "console.log('hi'); fs.writeFile('out/a.txt', 'from js\\n'); 1 + 1"}),
        )
        .await
        .unwrap();
    assert_eq!((r.is_error, r.text()), (false, Some("hi\n2")));
    let r = reg
        .dispatch(&ctx, "read", json!({"file_path": "out/a.txt"}))
        .await
        .unwrap();
    assert_eq!(r.text(), Some("from js\n"));
    let r = reg
        .dispatch(&ctx, "glob", json!({"pattern": "**/*.txt"}))
        .await
        .unwrap();
    assert_eq!(r.text(), Some("/workspace/out/a.txt"));

    let r = reg
        .dispatch(
            &ctx,
            "execute",
            json!({"code": "console.log('before'); throw new Error('boom')"}),
        )
        .await
        .unwrap();
    assert!(r.is_error);
    let text = r.text().unwrap();
    assert!(text.starts_with("before\nUncaught Error: boom"), "{text}");

    let r = reg
        .dispatch(
            &ctx,
            "execute",
            json!({"code": "while (true) {}", "timeout_ms": "200"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.is_error, r.text()),
        (true, Some("execute: timed out after 0.2s"))
    );

    let r = reg
        .dispatch(&ctx, "execute", json!({"code": 5}))
        .await
        .unwrap();
    assert_eq!(
        r.text(),
        Some("ValueError('Invalid arguments for function execute')")
    );

    let r = reg
        .dispatch(&ctx, "bash", json!({"command": "ls"}))
        .await
        .unwrap();
    assert_eq!(
        (r.is_error, r.text()),
        (true, Some(toolset::NO_SHELL_USE_EXECUTE))
    );
}
