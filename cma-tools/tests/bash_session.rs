//! The persistent shell against a real local `/bin/bash`: the vectors' `bash_session` cases
//! (X1–X6, the SDK's `BashSession.exec`) and the session life cycle (restart, cancellation,
//! scrubbing).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use cma_tools::shell::TRUNCATED_PREFIX;
use cma_tools::testing::{MemorySandbox, call_tool_in};
use cma_tools::toolset::BashTool;
use cma_tools::{LocalShellLauncher, ShellEnv, ShellError, ShellSession, ShellSpec, ToolContext};
use cma_vectors::{Field as _, Vectors};
use common::check_exec;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn session(dir: &std::path::Path) -> ShellSession {
    let launcher = LocalShellLauncher::in_dir(dir);
    ShellSession::start(&launcher, &ShellSpec::new("/W", ShellEnv::Inherit))
        .await
        .unwrap()
}

#[tokio::test]
async fn bash_session_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let mut failures = Vec::new();
    let cases = Vectors::load()
        .section("tool_results")
        .req("bash_session")
        .req_array("cases");
    assert!(cases.len() >= 6);
    for case in cases {
        let command = case.req_str("command");
        let mut s = session(dir.path()).await;
        let got = s
            .exec(command, 10.0, &cancel)
            .await
            .unwrap_or_else(|e| panic!("{} {command:?}: {e}", case.id()));
        s.close().await;
        if case.get("output").is_none() {
            assert!(case.req_str("output_head").starts_with(TRUNCATED_PREFIX));
        }
        failures.extend(check_exec(case, &got.output, got.exit_code));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn exit_kills_the_shell_until_restart_and_state_persists() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let mut s = session(dir.path()).await;
    let out = s.exec("export A=1; cd /", 10.0, &cancel).await.unwrap();
    assert_eq!((out.output.as_str(), out.exit_code), ("", 0));
    let out = s.exec("echo $A; pwd", 10.0, &cancel).await.unwrap();
    assert_eq!(out.output, "1\n/");
    let out = s.exec("echo bye; exit 0", 10.0, &cancel).await.unwrap();
    assert_eq!((out.output.as_str(), out.exit_code), ("bye", -1));
    assert!(s.is_closed());
    assert!(matches!(
        s.exec("true", 10.0, &cancel).await,
        Err(ShellError::Terminated)
    ));
}

#[tokio::test]
async fn a_cancelled_command_kills_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let mut s = session(dir.path()).await;
    cancel.cancel();
    assert!(matches!(
        s.exec("sleep 5", 10.0, &cancel).await,
        Err(ShellError::Cancelled)
    ));
    let fresh = CancellationToken::new();
    assert!(matches!(
        s.exec("true", 10.0, &fresh).await,
        Err(ShellError::Terminated)
    ));
}

#[tokio::test]
async fn an_abandoned_call_does_not_leak_output_into_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let mut s = session(dir.path()).await;
    // Drop the exec future mid-command (as an outer timeout would).
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        s.exec("sleep 2; echo late", 10.0, &cancel),
    )
    .await;
    assert!(r.is_err());
    assert!(matches!(
        s.exec("echo next", 10.0, &cancel).await,
        Err(ShellError::Terminated)
    ));
}

#[tokio::test]
async fn explicit_env_replaces_and_anthropic_vars_are_scrubbed() {
    let spec = ShellSpec::new("/W", ShellEnv::Inherit);
    let env = spec.environment([("ANTHROPIC_API_KEY", "k"), ("HOME", "/root")]);
    assert!(!env.contains_key("ANTHROPIC_API_KEY"));
    assert_eq!(env["HOME"], "/root");
    assert_eq!(env["TERM"], "dumb");
    assert_eq!(env["PS1"], "");
    let mut only = BTreeMap::new();
    only.insert("ANTHROPIC_KEEP".to_owned(), "explicit".to_owned());
    let spec = ShellSpec::new("/W", ShellEnv::Replace(only));
    let env = spec.environment([("HOME", "/root")]);
    assert_eq!(env["ANTHROPIC_KEEP"], "explicit");
    assert!(!env.contains_key("HOME"));
}

#[tokio::test]
async fn bash_without_a_shell_names_the_execute_tool() {
    let mut caps = cma_sandbox::Capabilities::default();
    caps.files = true;
    caps.execute_js = true;
    let sb = Arc::new(MemorySandbox::new("/workspace").with_capabilities(caps));
    let ctx = ToolContext::new(sb);
    let r = call_tool_in(&BashTool, &ctx, json!({"command": "ls"})).await;
    assert!(r.is_error);
    assert_eq!(r.text(), Some(cma_tools::toolset::NO_SHELL_USE_EXECUTE));
    let sb = Arc::new(MemorySandbox::new("/workspace"));
    let r = call_tool_in(&BashTool, &ToolContext::new(sb), json!({"command": "ls"})).await;
    assert_eq!(r.text(), Some("bash: this sandbox has no shell"));
}

#[tokio::test]
async fn timeout_text_uses_python_float_formatting() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::new(Arc::new(MemorySandbox::new("/W")))
        .with_shell_launcher(Arc::new(LocalShellLauncher::in_dir(dir.path())));
    let r = call_tool_in(
        &BashTool,
        &ctx,
        json!({"command": "sleep 5", "timeout_ms": 100}),
    )
    .await;
    assert_eq!(r.text(), Some("bash: bash command timed out after 0.1s"));
    let r = call_tool_in(&BashTool, &ctx, json!({"restart": "yes"})).await;
    assert_eq!(r.text(), Some("bash session restarted"));
    let r = call_tool_in(&BashTool, &ctx, json!({"command": "echo ok"})).await;
    assert_eq!((r.is_error, r.text()), (false, Some("ok")));
    ctx.close().await;
}

/// Without a launcher, a sandbox with `shell_exec` runs each command in a fresh shell.
#[tokio::test]
async fn one_shot_exec_fallback_keeps_texts_but_not_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut sb = common::HostSandbox::new(dir.path());
    sb.shell_exec = true;
    let ctx = ToolContext::new(Arc::new(sb));
    let call = |input: serde_json::Value| {
        let ctx = ctx.clone();
        async move {
            let r = call_tool_in(&BashTool, &ctx, input).await;
            (r.is_error, r.text().unwrap().to_owned())
        }
    };
    assert_eq!(
        call(json!({"command": "echo out; echo err >&2"})).await,
        (false, "out\nerr".into())
    );
    assert_eq!(
        call(json!({"command": "printf 'a\\033[31mRED\\033[0mb\\n\\n'"})).await,
        (false, "aREDb".into())
    );
    assert_eq!(
        call(json!({"command": "false"})).await,
        (true, "(no output)".into())
    );
    assert_eq!(
        call(json!({"command": "export X=1"})).await,
        (false, "(no output)".into())
    );
    assert_eq!(
        call(json!({"command": "echo ${X:-unset}; echo $TERM"})).await,
        (false, "unset\ndumb".into())
    );
    assert_eq!(
        call(json!({"command": "sleep 5", "timeout_ms": 100})).await,
        (true, "bash: bash command timed out after 0.1s".into())
    );
    assert_eq!(
        call(json!({"restart": true})).await,
        (false, "bash session restarted".into())
    );
    assert_eq!(
        call(json!({})).await,
        (true, "bash: command is required".into())
    );
}
