//! Edge cases of the file tools beyond the vectors. Expected texts were confirmed against the
//! official SDK 2.10.0 tools on a real directory; each case runs on a real host directory and on
//! the same tree copied into a `MemorySandbox`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cma_sandbox::Sandbox;
use cma_tools::testing::{MemorySandbox, call_tool_in};
use cma_tools::{ByteLimit, ToolContext, ToolRegistry, agent_toolset};
use serde_json::{Value, json};

use common::{HostSandbox, copy_into_memory};

fn fixture(d: &Path) {
    let w = |p: &str, data: &[u8]| std::fs::write(d.join(p), data).unwrap();
    w("crlf.txt", b"a\r\nb\r\nc");
    std::os::unix::fs::symlink("b", d.join("a")).unwrap();
    std::os::unix::fs::symlink("a", d.join("b")).unwrap();
    std::os::unix::fs::symlink("new/target.txt", d.join("dlink")).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    w("sub/.hidden.txt", b"h\n");
    w("sub/n.txt", b"n\n");
    std::os::unix::fs::symlink(d.join("sub"), d.join("sublink")).unwrap();
    std::fs::create_dir(d.join(".git")).unwrap();
    w(".git/x.txt", b"needle\n");
    std::fs::create_dir(d.join("node_modules")).unwrap();
    w("node_modules/y.txt", b"needle\n");
    w("bin.txt", b"needle\x00\n");
    let mut long = b"needle".to_vec();
    long.extend(std::iter::repeat_n(b'x', 1994));
    long.extend(b"\nneedle short\nneedle");
    long.extend(std::iter::repeat_n(b'y', 1993));
    long.push(b'\n');
    w("long.txt", &long);
    std::os::unix::fs::symlink(d.join("long.txt"), d.join("lnk.txt")).unwrap();
    w("doc.pdf", b"%PDF-1.4 tiny");
    let mut gif = b"GIF89a".to_vec();
    gif.extend([0u8; 100]);
    w("img.gif", &gif);
    let big: String = (0..6000)
        .map(|i| format!("{i:06} {}\n", "x".repeat(50)))
        .collect();
    w("big.txt", big.as_bytes());
    w(
        "huge1.txt",
        format!("{}\nshort\n", "y".repeat(300_000)).as_bytes(),
    );
    // Distinct mtimes so "newest first" is deterministic.
    for (i, p) in ["sub/n.txt", "sub/.hidden.txt", "long.txt"]
        .iter()
        .enumerate()
    {
        std::fs::File::options()
            .write(true)
            .open(d.join(p))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 - i as u64))
            .unwrap();
    }
}

/// (tool, input, is_error, text with `/W` for the workdir); run in order.
fn cases() -> Vec<(&'static str, Value, bool, String)> {
    let long_line3 = format!("/W/long.txt:3:needle{}", "y".repeat(1993));
    vec![
        ("read", json!({"file_path": "a"}), true, "read: path 'a': too many levels of symbolic links".into()),
        ("read", json!({"file_path": "it's.txt"}), true, "read: it's.txt: no such file or directory".into()),
        ("read", json!({"file_path": "/etc/it's"}), true, "read: path \"/etc/it's\" is outside the session's working directory".into()),
        ("read", json!({"file_path": "crlf.txt/x"}), true, "read: crlf.txt/x: not a directory".into()),
        ("write", json!({"file_path": "dlink", "content": "via link"}), false, "wrote 8 bytes to dlink".into()),
        ("read", json!({"file_path": "new/target.txt"}), false, "via link".into()),
        ("read", json!({"file_path": "sublink/../crlf.txt"}), false, "a\r\nb\r\nc".into()),
        ("read", json!({"file_path": "huge1.txt", "view_range": [1, 1]}), true, "read: line 1 of huge1.txt alone exceeds 262144-byte limit. The read tool cannot return part of a line, so view_range cannot narrow this further.".into()),
        ("read", json!({"file_path": "huge1.txt", "view_range": [1, 2]}), true, "read: view_range [1, 2] of huge1.txt exceeds 262144-byte limit. Narrow the view_range to read a smaller portion.".into()),
        ("read", json!({"file_path": "huge1.txt", "view_range": [2, 2]}), false, "short".into()),
        ("read", json!({"file_path": "big.txt", "view_range": []}), true, "read: big.txt is 348000 bytes, exceeds 262144-byte limit. Use the view_range parameter to read specific line ranges, e.g. view_range: [1, 500].".into()),
        ("read", json!({"file_path": "sub"}), true, "read: sub: not a regular file".into()),
        ("read", json!({"file_path": ""}), true, "read: : not a regular file".into()),
        ("glob", json!({"pattern": "**/*.txt", "path": "sub"}), false, "/W/sub/n.txt\n/W/sub/.hidden.txt".into()),
        ("glob", json!({"pattern": "sub/*"}), false, "/W/sub/n.txt\n/W/sub/.hidden.txt".into()),
        ("glob", json!({"pattern": "sub/"}), false, "/W/sub".into()),
        ("glob", json!({"pattern": "crlf.txt/"}), false, "no matches".into()),
        ("glob", json!({"pattern": "su?/[!n]*"}), false, "/W/sub/.hidden.txt".into()),
        ("glob", json!({"pattern": "a**b"}), true, "glob: Invalid pattern: '**' can only be an entire path component".into()),
        ("glob", json!({"pattern": ""}), true, "glob: Unacceptable pattern: ''".into()),
        ("glob", json!({"pattern": "."}), true, "IndexError('tuple index out of range')".into()),
        ("grep", json!({"pattern": "needle"}), false, format!("/W/long.txt:2:needle short\n{long_line3}")),
        ("grep", json!({"pattern": "needle", "path": "lnk.txt"}), false, format!("/W/long.txt:2:needle short\n{long_line3}")),
        ("grep", json!({"pattern": "x", "path": "missing"}), false, "no matches".into()),
        ("edit", json!({"file_path": "crlf.txt", "old_string": "", "new_string": "-", "replace_all": true}), false, "edited crlf.txt (8 replacement(s))".into()),
        ("read", json!({"file_path": "crlf.txt"}), false, "-a-\r-\n-b-\r-\n-c-".into()),
        ("edit", json!({"file_path": "sub", "old_string": "a", "new_string": "b"}), true, "edit: sub: not a regular file".into()),
        ("write", json!({"file_path": "sub", "content": "x"}), true, "write: sub: is a directory".into()),
        ("write", json!({"file_path": "crlf.txt/x", "content": "x"}), true, "write: crlf.txt/x: file already exists".into()),
        ("read", json!([1]), true, "TypeError('Input must be a dictionary, got list')".into()),
    ]
}

async fn run_cases(sb: Arc<dyn Sandbox>, wd: &str) -> Vec<String> {
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    let ctx = ToolContext::new(sb.clone());
    let mut failures = Vec::new();
    for (tool, input, is_error, text) in cases() {
        let text = text.replace("/W", wd);
        let got = call_tool_in(reg.get(tool).unwrap().as_ref(), &ctx, input.clone()).await;
        if got.is_error != is_error || got.text() != Some(text.as_str()) {
            failures.push(format!(
                "{tool} {input}: got {} {:?}",
                got.is_error,
                got.text()
            ));
        }
    }
    let r = call_tool_in(
        reg.get("read").unwrap().as_ref(),
        &ctx,
        json!({"file_path": "doc.pdf"}),
    )
    .await;
    assert_eq!(
        serde_json::to_value(&r.content).unwrap(),
        json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQgdGlueQ=="}}])
    );
    // An explicit max_file_bytes binds every read, image/PDF included.
    let small = ToolContext::new(sb).with_max_file_bytes(ByteLimit::Bytes(50));
    let read = reg.get("read").unwrap().as_ref();
    for (input, text) in [
        (
            json!({"file_path": "img.gif"}),
            "read: img.gif is 106 bytes, exceeds 50-byte limit for image/PDF files.",
        ),
        (
            json!({"file_path": "big.txt", "view_range": [1, 1]}),
            "read: line 1 of big.txt alone exceeds 50-byte limit. The read tool cannot return part of a line, so view_range cannot narrow this further.",
        ),
        (
            json!({"file_path": "big.txt", "view_range": [1, 2]}),
            "read: view_range [1, 2] of big.txt exceeds 50-byte limit. Narrow the view_range to read a smaller portion.",
        ),
    ] {
        let got = call_tool_in(read, &small, input.clone()).await;
        if !got.is_error || got.text() != Some(text) {
            failures.push(format!("small {input}: {:?}", got.text()));
        }
    }
    failures
}

#[tokio::test]
async fn file_tool_edge_cases_on_a_host_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    fixture(&d);
    let failures = run_cases(Arc::new(HostSandbox::new(&d)), d.to_str().unwrap()).await;
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn file_tool_edge_cases_in_a_memory_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    fixture(&d);
    let wd = d.to_str().unwrap();
    let sb = MemorySandbox::new(wd);
    copy_into_memory(&d, &sb);
    drop(dir);
    let failures = run_cases(Arc::new(sb), wd).await;
    assert!(failures.is_empty(), "{failures:#?}");
}
