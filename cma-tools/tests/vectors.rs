//! The tool vectors of shared/vectors/sdk-test-vectors.md §8 and §9 (groups A, B, C) run
//! through the tools exactly as the runner would call them.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cma_sandbox::Sandbox;
use cma_tools::testing::{MemorySandbox, call_tool_in};
use cma_tools::{LocalShellLauncher, PostedResult, ToolContext, ToolRegistry, agent_toolset};
use cma_vectors::{Row, Vectors};
use serde_json::Value;

use common::{HostSandbox, expected_text};

fn registry() -> ToolRegistry {
    let mut r = ToolRegistry::new();
    r.extend(agent_toolset());
    r
}

async fn run(ctx: &ToolContext, tool: &str, input: &str) -> PostedResult {
    let input: Value = serde_json::from_str(input).unwrap_or_else(|e| panic!("{input}: {e}"));
    let reg = registry();
    call_tool_in(reg.get(tool).unwrap().as_ref(), ctx, input).await
}

/// Compare one row's posted result with the vector; returns a mismatch description.
fn check(id: &str, got: &PostedResult, want_error: &str, want: &str) -> Option<String> {
    let want_error = want_error.trim() == "true";
    let got_json = serde_json::to_string(&got.content).unwrap();
    let ok_content = if want.starts_with("[{") {
        let w: Value = serde_json::from_str(want).unwrap();
        serde_json::to_value(&got.content).unwrap() == w
    } else {
        got.content.len() == 1 && got.text() == Some(want)
    };
    (got.is_error != want_error || !ok_content).then(|| {
        format!(
            "{id}: want is_error={want_error} {want:?}, got is_error={} {got_json}",
            got.is_error
        )
    })
}

fn shell_env_with_secret() -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    env.insert("ANTHROPIC_SECRET_X".into(), "leak".into());
    env
}

#[test]
fn section_8_definitions_are_built_exactly() {
    let v = Vectors::load();
    let blocks = v.section("## 8.").code_blocks();
    let defs: Vec<String> = agent_toolset()
        .iter()
        .map(|t| serde_json::to_string(&t.definition()).unwrap())
        .collect();
    assert_eq!(blocks.len(), 6);
    for (block, def) in blocks.iter().zip(&defs) {
        assert_eq!(block.trim(), def);
    }
}

#[tokio::test]
async fn section_9_1_group_a_one_session() {
    let v = Vectors::load();
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().canonicalize().unwrap();
    let wd = w.to_str().unwrap().to_owned();
    let sandbox: Arc<dyn Sandbox> = Arc::new(HostSandbox::new(&w));
    let mut launcher = LocalShellLauncher::in_dir(&w);
    launcher.base_env = Some(shell_env_with_secret());
    let ctx = ToolContext::new(sandbox).with_shell_launcher(Arc::new(launcher));
    let mut failures = Vec::new();
    let table = v.section("### 9.1").table();
    for row in table.rows() {
        let id = row.id();
        let got = run(&ctx, row.get("tool"), &row.code("input").unwrap()).await;
        let want = expected_text(&row.code("text").unwrap(), &wd);
        if id == "A22" {
            // Python `re` wording after the prefix; ours is the Rust regex crate's.
            let prefix = "grep: invalid regex: ";
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
        failures.extend(check(id, &got, row.get("is_error"), &want));
    }
    ctx.close().await;
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(table.rows().len(), 27);
}

#[tokio::test]
async fn section_9_2_group_b_bash_timeout() {
    let v = Vectors::load();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::new(Arc::new(MemorySandbox::new("/W")))
        .with_shell_launcher(Arc::new(LocalShellLauncher::in_dir(dir.path())));
    let mut failures = Vec::new();
    for row in v.section("### 9.2").table().rows() {
        let got = run(&ctx, "bash", &row.code("input").unwrap()).await;
        let want = expected_text(&row.code("text").unwrap(), "/W");
        failures.extend(check(row.id(), &got, row.get("is_error"), &want));
    }
    ctx.close().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The §9.3 fixture in a memory sandbox whose workdir is `/W`.
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

fn group_c_rows(v: &Vectors) -> Vec<Row> {
    let mut rows: Vec<Row> = v.section("### 9.3").table().rows().to_vec();
    // C22 is marked "(before C18)": run it first so C18's file cannot matter.
    let c22 = rows.iter().position(|r| r.id() == "C22").unwrap();
    let c18 = rows.iter().position(|r| r.id() == "C18").unwrap();
    let row = rows.remove(c22);
    rows.insert(c18, row);
    rows
}

#[tokio::test]
async fn section_9_3_group_c_prepared_workdir() {
    let v = Vectors::load();
    let sb = group_c_fixture();
    let shell_dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::new(sb.clone())
        .with_allowed_roots(["/RO"])
        .with_read_only_roots(["/RO"])
        .with_shell_launcher(Arc::new(LocalShellLauncher::in_dir(shell_dir.path())));
    let mut failures = Vec::new();
    let rows = group_c_rows(&v);
    assert_eq!(rows.len(), 39);
    for row in &rows {
        let id = row.id();
        let tool = row.get("tool");
        let codes = row.codes("content");
        let got = run(&ctx, tool, &row.code("input").unwrap()).await;
        if id == "C39" {
            // `write` then `read` of the same file: two results.
            let errs: Vec<&str> = row.get("is_error").split('/').collect();
            failures.extend(check(id, &got, errs[0], &expected_text(&codes[0], "/W")));
            let got = run(&ctx, "read", r#"{"file_path":"b/c.txt"}"#).await;
            failures.extend(check(
                "C39/read",
                &got,
                errs[1],
                &expected_text(&codes[1], "/W"),
            ));
            continue;
        }
        let want = expected_text(&codes[0], "/W");
        failures.extend(check(id, &got, row.get("is_error"), &want));
        if id == "C18" {
            assert_eq!(sb.file("/W/deep/er/f.txt").unwrap().len(), 6);
        }
    }
    ctx.close().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Group C's file rows on the real isolate backend (`/W` = `/workspace`, `/RO` a read-only
/// mount). Its bash rows need a shell, which the isolate backend does not have; they run above.
#[tokio::test]
async fn section_9_3_group_c_file_rows_on_the_isolate_backend() {
    use base64::Engine as _;
    use cma_sandbox::isolate::IsolateBackend;
    use cma_sandbox::{Mount, SandboxBackend, SandboxSpec};

    let v = Vectors::load();
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
    for row in &group_c_rows(&v) {
        let (id, tool) = (row.id(), row.get("tool"));
        if tool == "bash" {
            continue;
        }
        ran += 1;
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
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(ran, 31);
    assert_eq!(
        std::fs::read(host_ws.join("deep/er/f.txt")).unwrap(),
        "héllo".as_bytes()
    );
}
