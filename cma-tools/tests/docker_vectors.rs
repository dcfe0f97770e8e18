//! Every tool case of the vectors' `tool_results` section (groups A, B, C and the shell-level X
//! cases) on a real Docker sandbox: the file tools through the backend's file operations and `bash` through
//! the persistent shell the tool starts inside the container by itself (no launcher configured).
//! Needs dockerd and the test image (`.ci/setup.d/20-docker.sh`); fails loudly without them.

mod common;
#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

use std::sync::Arc;

use bytes::Bytes;
use cma_sandbox::{ExecRequest, Mount, Sandbox, SandboxBackend, SandboxSpec};
use cma_tools::testing::call_tool_in;
use cma_tools::{
    PostedResult, SandboxShellLauncher, ShellEnv, ShellSession, ShellSpec, ToolContext,
    ToolRegistry, agent_toolset,
};
use cma_vectors::{Field as _, Vectors};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use common::{ToolCase, check_exec, tool_cases};

async fn run(ctx: &ToolContext, tool: &str, input: &Value) -> PostedResult {
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    call_tool_in(reg.get(tool).unwrap().as_ref(), ctx, input.clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_a_and_b_on_docker() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let mut spec = SandboxSpec::new();
    // The "worker process" env of A19: the sandbox's own env carries the variable to scrub.
    spec.env.insert("ANTHROPIC_SECRET_X".into(), "leak".into());
    let sb = backend.create(&spec).await.unwrap();
    let wd = sb.workdir().to_owned();
    assert!(sb.capabilities().persistent_shell);

    let ctx = ToolContext::new(sb.clone());
    let mut failures = Vec::new();
    let cases = tool_cases("group_a");
    for case in cases {
        let c = ToolCase::new(case, &wd);
        let got = run(&ctx, c.tool, c.input).await;
        if c.id == "A22" {
            // Python `re` wording after the prefix; ours is the Rust regex crate's.
            assert!(got.is_error && got.text().unwrap().starts_with("grep: invalid regex: "));
            continue;
        }
        failures.extend(c.check(&got));
    }
    ctx.close().await;
    assert_eq!(cases.len(), 27);

    // Group B: a fresh session (new shell) in the same sandbox.
    let ctx = ToolContext::new(sb.clone());
    for case in tool_cases("group_b") {
        let c = ToolCase::new(case, &wd);
        let got = run(&ctx, c.tool, c.input).await;
        failures.extend(c.check(&got));
    }
    ctx.close().await;
    // The timed-out `sleep 3` was killed with its shell: nothing of the session keeps running.
    let ps = sb
        .exec(ExecRequest::shell(
            "ps -eo args= | grep -c '^sleep 3$' || true",
        ))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).trim(), "0");
    assert!(failures.is_empty(), "{failures:#?}");
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_c_on_docker() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;

    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("mem.md"), "memo\n").unwrap();
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::read_only("/RO", ro.path()));
    let sb = backend.create(&spec).await.unwrap();
    let wd = sb.workdir().to_owned();

    let put = async |name: &str, data: Vec<u8>| {
        sb.write_file(name, Bytes::from(data)).await.unwrap();
    };
    put("crlf.txt", b"a\r\nb\r\nc".to_vec()).await;
    let big: String = (0..6000)
        .map(|i| format!("{i:06} {}\n", "x".repeat(50)))
        .collect();
    put("big.txt", big.into_bytes()).await;
    put("bin.dat", vec![0xFF, 0xFE, 0x00, 0x01]).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
        .unwrap();
    put("dot.png", png).await;
    put("sub/x.py", b"def f():\n    return 1\n".to_vec()).await;
    let out = sb
        .exec(ExecRequest::shell(
            "ln -s /OUT/secret.txt link_out && touch -d @1700000000 sub/x.py && touch -d @1700000100 crlf.txt",
        ))
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");

    let ctx = ToolContext::new(sb.clone())
        .with_allowed_roots(["/RO"])
        .with_read_only_roots(["/RO"]);
    let mut failures = Vec::new();
    let cases = tool_cases("group_c");
    assert_eq!(cases.len(), 40);
    for case in cases {
        let c = ToolCase::new(case, &wd);
        let got = run(&ctx, c.tool, c.input).await;
        failures.extend(c.check(&got));
    }
    ctx.close().await;
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        &sb.read_file("deep/er/f.txt", None).await.unwrap()[..],
        "héllo".as_bytes()
    );
    backend.destroy(sb.id()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_session_vectors_on_docker() {
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let sb: Arc<dyn Sandbox> = backend.create(&SandboxSpec::new()).await.unwrap();
    let launcher = SandboxShellLauncher::new(sb.clone());
    let cancel = CancellationToken::new();
    let mut failures = Vec::new();
    let cases = Vectors::load()
        .section("tool_results")
        .req("bash_session")
        .req_array("cases");
    for case in cases {
        let command = case.req_str("command");
        let spec = ShellSpec::new(sb.workdir(), ShellEnv::Inherit);
        let mut s = ShellSession::start(&launcher, &spec).await.unwrap();
        let got = s
            .exec(command, 20.0, &cancel)
            .await
            .unwrap_or_else(|e| panic!("{} {command:?}: {e}", case.id()));
        s.close().await;
        failures.extend(check_exec(case, &got.output, got.exit_code));
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // An explicit environment fully replaces the sandbox's.
    let mut env = std::collections::BTreeMap::new();
    env.insert("ONLY".to_owned(), "this".to_owned());
    let spec = ShellSpec::new(sb.workdir(), ShellEnv::Replace(env));
    let mut s = ShellSession::start(&launcher, &spec).await.unwrap();
    let got = s
        .exec("echo $ONLY ${HOME:-nohome} $TERM", 20.0, &cancel)
        .await
        .unwrap();
    s.close().await;
    assert_eq!(got.output, "this nohome dumb");
    backend.destroy(sb.id()).await.unwrap();
}
