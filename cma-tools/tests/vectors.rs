//! The vectors' `tool_definitions` and `tool_results` (groups A, B, C): what the official SDK's
//! toolset defines and posts, run through our tools exactly as the runner would call them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cma_sandbox::Sandbox;
use cma_tools::testing::{MemorySandbox, call_tool_in};
use cma_tools::{LocalShellLauncher, PostedResult, ToolContext, ToolRegistry, agent_toolset};
use cma_vectors::{Field as _, Vectors};
use serde_json::Value;

use common::{HostSandbox, ToolCase, tool_cases};

fn registry() -> ToolRegistry {
    let mut r = ToolRegistry::new();
    r.extend(agent_toolset());
    r
}

async fn run(ctx: &ToolContext, tool: &str, input: &Value) -> PostedResult {
    let reg = registry();
    call_tool_in(reg.get(tool).unwrap().as_ref(), ctx, input.clone()).await
}

fn shell_env_with_secret() -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.insert("ANTHROPIC_SECRET_X".into(), "leak".into());
    env
}

#[test]
fn tool_definitions_are_built_exactly() {
    let want = Vectors::load()
        .section("tool_definitions")
        .req_array("tools");
    let defs: Vec<String> = agent_toolset()
        .iter()
        .map(|t| serde_json::to_string(&t.definition()).unwrap())
        .collect();
    assert_eq!(want.len(), 6);
    for (want, def) in want.iter().zip(&defs) {
        // Byte for byte: the SDK's key order is kept by the file and by our definitions.
        assert_eq!(&serde_json::to_string(want).unwrap(), def);
    }
}

#[tokio::test]
async fn group_a_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().canonicalize().unwrap();
    let wd = w.to_str().unwrap().to_owned();
    let sandbox: Arc<dyn Sandbox> = Arc::new(HostSandbox::new(&w));
    let mut launcher = LocalShellLauncher::in_dir(&w);
    launcher.base_env = Some(shell_env_with_secret());
    let ctx = ToolContext::new(sandbox).with_shell_launcher(Arc::new(launcher));
    let mut failures = Vec::new();
    let cases = tool_cases("group_a");
    for case in cases {
        let c = ToolCase::new(case, &wd);
        let got = run(&ctx, c.tool, c.input).await;
        if c.id == "A22" {
            // Python `re` wording after the prefix; ours is the Rust regex crate's.
            let prefix = "grep: invalid regex: ";
            let want = c.content[0]["text"].as_str().unwrap();
            assert!(want.starts_with(prefix));
            assert!(got.is_error, "A22");
            assert!(
                got.text().unwrap().starts_with(prefix),
                "A22: {:?}",
                got.text()
            );
            assert!(got.text().unwrap().len() > prefix.len());
            continue;
        }
        failures.extend(c.check(&got));
    }
    ctx.close().await;
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(cases.len(), 27);
}

#[tokio::test]
async fn group_b_bash_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::new(Arc::new(MemorySandbox::new("/W")))
        .with_shell_launcher(Arc::new(LocalShellLauncher::in_dir(dir.path())));
    let mut failures = Vec::new();
    for case in tool_cases("group_b") {
        let c = ToolCase::new(case, "/W");
        let got = run(&ctx, c.tool, c.input).await;
        failures.extend(c.check(&got));
    }
    ctx.close().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Group C's fixture in a memory sandbox whose workdir is `/W`.
fn group_c_fixture() -> Arc<MemorySandbox> {
    use base64::Engine as _;
    let sb = Arc::new(MemorySandbox::new("/W"));
    sb.add_file("/W/crlf.txt", &b"a\r\nb\r\nc"[..]);
    let big: String = (0..6000)
        .map(|i| format!("{i:06} {}\n", "x".repeat(50)))
        .collect();
    assert_eq!(big.len(), 348_000);
    sb.add_file("/W/big.txt", big);
    sb.add_file("/W/bin.dat", &[0xFFu8, 0xFE, 0x00, 0x01][..]);
    let png = base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
        .unwrap();
    sb.add_file("/W/dot.png", png);
    sb.add_file("/OUT/secret.txt", "secret\n");
    sb.add_symlink("/W/link_out", "/OUT/secret.txt");
    sb.add_file("/W/sub/x.py", "def f():\n    return 1\n");
    sb.set_mtime(
        "/W/sub/x.py",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    sb.set_mtime(
        "/W/crlf.txt",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100),
    );
    sb.add_file("/RO/mem.md", "memo\n");
    sb.set_read_only("/RO");
    sb
}

#[tokio::test]
async fn group_c_prepared_workdir() {
    let sb = group_c_fixture();
    let shell_dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::new(sb.clone())
        .with_allowed_roots(["/RO"])
        .with_read_only_roots(["/RO"])
        .with_shell_launcher(Arc::new(LocalShellLauncher::in_dir(shell_dir.path())));
    let mut failures = Vec::new();
    let cases = tool_cases("group_c");
    assert_eq!(cases.len(), 40);
    for case in cases {
        let c = ToolCase::new(case, "/W");
        let got = run(&ctx, c.tool, c.input).await;
        failures.extend(c.check(&got));
        if c.id == "C18" {
            assert_eq!(sb.file("/W/deep/er/f.txt").unwrap().len(), 6);
        }
    }
    ctx.close().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Group C's file rows on the real isolate backend (`/W` = `/workspace`, `/RO` a read-only
/// mount). Its bash rows need a shell, which the isolate backend does not have; they run above.
#[tokio::test]
async fn group_c_file_cases_on_the_isolate_backend() {
    use base64::Engine as _;
    use cma_sandbox::isolate::IsolateBackend;
    use cma_sandbox::{Mount, SandboxBackend, SandboxSpec};

    let tmp = tempfile::tempdir().unwrap();
    let ro = tmp.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("mem.md"), "memo\n").unwrap();
    let backend = IsolateBackend::new(tmp.path().join("root")).unwrap();
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::read_only("/RO", &ro));
    let sb = backend.create(&spec).await.unwrap();
    let host_ws = tmp
        .path()
        .join("root")
        .join(sb.id().as_str())
        .join("workspace");
    assert!(
        host_ws.is_dir(),
        "isolate layout changed: {}",
        host_ws.display()
    );
    let put = |name: &str, data: &[u8]| std::fs::write(host_ws.join(name), data).unwrap();
    put("crlf.txt", b"a\r\nb\r\nc");
    let big: String = (0..6000)
        .map(|i| format!("{i:06} {}\n", "x".repeat(50)))
        .collect();
    put("big.txt", big.as_bytes());
    put("bin.dat", &[0xFF, 0xFE, 0x00, 0x01]);
    let png = base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
        .unwrap();
    put("dot.png", &png);
    std::os::unix::fs::symlink("/OUT/secret.txt", host_ws.join("link_out")).unwrap();
    std::fs::create_dir_all(host_ws.join("sub")).unwrap();
    put("sub/x.py", b"def f():\n    return 1\n");
    let set_mtime = |name: &str, secs: u64| {
        std::fs::File::options()
            .write(true)
            .open(host_ws.join(name))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap()
    };
    set_mtime("sub/x.py", 1_700_000_000);
    set_mtime("crlf.txt", 1_700_000_100);

    let wd = sb.workdir().to_owned();
    let ctx = ToolContext::new(sb)
        .with_allowed_roots(["/RO"])
        .with_read_only_roots(["/RO"]);
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in tool_cases("group_c") {
        let c = ToolCase::new(case, &wd);
        if c.tool == "bash" {
            continue;
        }
        ran += 1;
        let got = run(&ctx, c.tool, c.input).await;
        failures.extend(c.check(&got));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(ran, 32);
    assert_eq!(
        std::fs::read(host_ws.join("deep/er/f.txt")).unwrap(),
        "héllo".as_bytes()
    );
}
