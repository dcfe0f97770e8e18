//! Every tool vector of sdk-test-vectors.md §9 (groups A, B, C and the session-level X rows) on a
//! real Docker sandbox: the file tools through the backend's file operations and `bash` through
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
use cma_vectors::{Row, Vectors};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use common::expected_text;

async fn run(ctx: &ToolContext, tool: &str, input: &str) -> PostedResult {
    let input: Value = serde_json::from_str(input).unwrap_or_else(|e| panic!("{input}: {e}"));
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    call_tool_in(reg.get(tool).unwrap().as_ref(), ctx, input).await
}

fn check(id: &str, got: &PostedResult, want_error: &str, want: &str) -> Option<String> {
    let want_error = want_error.trim() == "true";
    let ok_content = if want.starts_with("[{") {
        serde_json::to_value(&got.content).unwrap() == serde_json::from_str::<Value>(want).unwrap()
    } else {
        got.content.len() == 1 && got.text() == Some(want)
    };
    (got.is_error != want_error || !ok_content).then(|| {
        format!(
            "{id}: want is_error={want_error} {want:?}, got is_error={} {}",
            got.is_error,
            serde_json::to_string(&got.content).unwrap()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_9_1_and_9_2_on_docker() {
    let v = Vectors::load();
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let mut spec = SandboxSpec::new();
    // The "worker process" env of A19: the sandbox's own env carries the variable to scrub.
    spec.env.insert("ANTHROPIC_SECRET_X".into(), "leak".into());
    let sb = backend.create(&spec).await.unwrap();
    let wd = sb.workdir().to_owned();
    assert!(sb.capabilities().persistent_shell);

    let ctx = ToolContext::new(sb.clone());
    let mut failures = Vec::new();
    let table = v.section("### 9.1").table();
    for row in table.rows() {
        let id = row.id();
        let got = run(&ctx, row.get("tool"), &row.code("input").unwrap()).await;
        let want = expected_text(&row.code("text").unwrap(), &wd);
        if id == "A22" {
            // Python `re` wording after the prefix; ours is the Rust regex crate's.
            assert!(got.is_error && got.text().unwrap().starts_with("grep: invalid regex: "));
            continue;
        }
        failures.extend(check(id, &got, row.get("is_error"), &want));
    }
    ctx.close().await;
    assert_eq!(table.rows().len(), 27);

    // Group B: a fresh session (new shell) in the same sandbox.
    let ctx = ToolContext::new(sb.clone());
    for row in v.section("### 9.2").table().rows() {
        let got = run(&ctx, "bash", &row.code("input").unwrap()).await;
        let want = expected_text(&row.code("text").unwrap(), &wd);
        failures.extend(check(row.id(), &got, row.get("is_error"), &want));
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

fn group_c_rows(v: &Vectors) -> Vec<Row> {
    let mut rows: Vec<Row> = v.section("### 9.3").table().rows().to_vec();
    // C22 is marked "(before C18)".
    let c22 = rows.iter().position(|r| r.id() == "C22").unwrap();
    let c18 = rows.iter().position(|r| r.id() == "C18").unwrap();
    let row = rows.remove(c22);
    rows.insert(c18, row);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn section_9_3_group_c_on_docker() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;

    let v = Vectors::load();
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
    let rows = group_c_rows(&v);
    assert_eq!(rows.len(), 39);
    for row in &rows {
        let (id, tool) = (row.id(), row.get("tool"));
        let codes = row.codes("content");
        let got = run(&ctx, tool, &row.code("input").unwrap()).await;
        if id == "C39" {
            let errs: Vec<&str> = row.get("is_error").split('/').collect();
            failures.extend(check(id, &got, errs[0], &expected_text(&codes[0], &wd)));
            let got = run(&ctx, "read", r#"{"file_path":"b/c.txt"}"#).await;
            failures.extend(check(
                "C39/read",
                &got,
                errs[1],
                &expected_text(&codes[1], &wd),
            ));
            continue;
        }
        failures.extend(check(
            id,
            &got,
            row.get("is_error"),
            &expected_text(&codes[0], &wd),
        ));
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
async fn section_9_4_session_level_vectors_on_docker() {
    let v = Vectors::load();
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let sb: Arc<dyn Sandbox> = backend.create(&SandboxSpec::new()).await.unwrap();
    let launcher = SandboxShellLauncher::new(sb.clone());
    let cancel = CancellationToken::new();
    let mut failures = Vec::new();
    for row in v.section("### 9.4").table().rows() {
        let id = row.id();
        let command = row.codes("command").join("\n");
        let want_code: i32 = row
            .get("code")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let spec = ShellSpec::new(sb.workdir(), ShellEnv::Inherit);
        let mut s = ShellSession::start(&launcher, &spec).await.unwrap();
        let got = s
            .exec(&command, 20.0, &cancel)
            .await
            .unwrap_or_else(|e| panic!("{id} {command:?}: {e}"));
        s.close().await;
        if got.exit_code != want_code {
            failures.push(format!("{id}: exit {} != {want_code}", got.exit_code));
        }
        if id == "X1" {
            let codes = row.codes("output");
            let start = cma_vectors::unescape(codes[0].trim_end_matches('…'));
            let end = cma_vectors::unescape(codes[1].trim_start_matches('…'));
            let total: usize = row
                .get("output")
                .split("total ")
                .nth(1)
                .and_then(|t| t.split(" chars").next())
                .map(|n| n.replace(' ', "").parse().unwrap())
                .unwrap();
            if !got.output.starts_with(&start)
                || !got.output.ends_with(&end)
                || got.output.chars().count() != total
            {
                failures.push(format!("X1: {} chars", got.output.chars().count()));
            }
            continue;
        }
        let want = cma_vectors::unescape(&row.code("output").unwrap());
        if got.output != want {
            failures.push(format!("{id}: {:?} != {want:?}", got.output));
        }
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
