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

#[tokio::test]
async fn mounts_become_allowed_and_read_only_roots() {
    use cma_sandbox::Mount;
    use cma_tools::SessionTools;

    let tmp = tempfile::tempdir().unwrap();
    let (mem, ro) = (tmp.path().join("mem"), tmp.path().join("ro"));
    std::fs::create_dir_all(&mem).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("facts.md"), "fact\n").unwrap();
    let backend = IsolateBackend::new(tmp.path().join("root")).unwrap();
    let mut spec = SandboxSpec::new();
    spec.mounts = vec![
        Mount::new("/memory/notes", &mem),
        Mount::read_only("/memory/facts", &ro),
    ];
    let sb = backend.create(&spec).await.unwrap();
    let ctx = ToolContext::new(sb.clone()).with_mounts(&spec.mounts);
    let tools = SessionTools::new(Arc::new(toolset::registry_for(&sb.capabilities())), ctx);

    let r = tools
        .call(
            "write",
            json!({"file_path": "/memory/notes/a.md", "content": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.is_error, r.text()),
        (false, Some("wrote 1 bytes to /memory/notes/a.md"))
    );
    assert_eq!(std::fs::read_to_string(mem.join("a.md")).unwrap(), "x");
    let r = tools
        .call("grep", json!({"pattern": "fact", "path": "/memory/facts"}))
        .await
        .unwrap();
    assert_eq!(r.text(), Some("/memory/facts/facts.md:1:fact"));
    let r = tools
        .call(
            "edit",
            json!({"file_path": "/memory/facts/facts.md", "old_string": "fact", "new_string": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.is_error, r.text()),
        (
            true,
            Some("edit: /memory/facts/facts.md is inside read-only directory /memory/facts")
        )
    );
    let r = tools
        .call("read", json!({"file_path": "/etc/passwd"}))
        .await
        .unwrap();
    assert_eq!(
        r.text(),
        Some(
            "read: path '/etc/passwd' is outside the session's working directory and its other permitted directories"
        )
    );
    assert!(tools.call("web_fetch", json!({})).await.is_none());
    tools.close().await;
}

#[tokio::test]
async fn symlinks_leaving_the_workspace_are_refused_by_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(tmp.path().join("root")).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let ws = tmp
        .path()
        .join("root")
        .join(sb.id().as_str())
        .join("workspace");
    std::os::unix::fs::symlink("../../etc", ws.join("esc")).unwrap();
    std::os::unix::fs::symlink("esc/passwd", ws.join("pw.txt")).unwrap();
    std::fs::write(ws.join("ok.txt"), "fine\n").unwrap();
    let reg = toolset::registry_for(&sb.capabilities());
    let ctx = ToolContext::new(sb);
    for p in ["esc", "pw.txt", "esc/passwd"] {
        let r = reg
            .dispatch(&ctx, "read", json!({"file_path": p}))
            .await
            .unwrap();
        assert_eq!(
            r.text().unwrap(),
            format!("read: path '{p}' is outside the session's working directory")
        );
    }
    let r = reg
        .dispatch(&ctx, "write", json!({"file_path": "esc/x", "content": "x"}))
        .await
        .unwrap();
    assert_eq!(
        r.text(),
        Some("write: path 'esc/x' is outside the session's working directory")
    );
    let r = reg
        .dispatch(&ctx, "glob", json!({"pattern": "*.txt"}))
        .await
        .unwrap();
    assert_eq!(r.text(), Some("/workspace/ok.txt"));
    let r = reg
        .dispatch(&ctx, "grep", json!({"pattern": "root"}))
        .await
        .unwrap();
    assert_eq!(r.text(), Some("no matches"));
}
