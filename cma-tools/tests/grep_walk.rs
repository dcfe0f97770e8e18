//! `grep` over a larger tree (in memory and on Docker): listings fetched ahead and small files
//! read in batches across directories must not change the output (depth-first, a directory's
//! files before its subdirectories, entries in the order the sandbox lists them: the file
//! system's on Docker, names in memory), whether the pattern is a plain literal (files without
//! it are skipped whole) or a regex, with big files streamed in between. The expected order
//! comes from a plain walk, one `read_dirs_unsorted` call per directory.

#[path = "../../cma-sandbox/tests/docker_support/mod.rs"]
mod docker_support;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cma_sandbox::Sandbox;
use cma_tools::testing::{MemorySandbox, call_tool_in};
use cma_tools::{ToolContext, ToolRegistry, agent_toolset};
use serde_json::json;

#[tokio::test]
async fn batched_grep_keeps_the_walk_order() {
    check(Arc::new(MemorySandbox::new("/W"))).await;
}

/// The same on Docker, where listings and reads are batched into single helper calls (needs
/// dockerd and the test image: `.ci/setup.d/20-docker.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_grep_keeps_the_walk_order_on_docker() {
    use cma_sandbox::{SandboxBackend, SandboxSpec};
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    check(sb.clone()).await;
    backend.destroy(sb.id()).await.unwrap();
}

/// The regular files under `root` in the grep tool's walk order, found the plain way: one
/// listing per directory, depth first, files before subdirectories, `.git` and `node_modules`
/// not entered.
async fn walk_order(sb: &dyn Sandbox, root: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = sb
            .read_dirs_unsorted(std::slice::from_ref(&dir))
            .await
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        let mut subdirs = Vec::new();
        for e in entries {
            let path = format!("{dir}/{}", e.name);
            if e.stat.is_dir() && e.name != ".git" && e.name != "node_modules" {
                subdirs.push(path);
            } else if e.stat.is_file() {
                files.push(path);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    files
}

/// The expected output: each file's lines (in line order), the files in walk order.
async fn in_walk_order(sb: &dyn Sandbox, root: &str, lines: &[(String, String)]) -> String {
    let mut by_file: HashMap<&str, Vec<&str>> = HashMap::new();
    for (path, line) in lines {
        by_file.entry(path).or_default().push(line);
    }
    let mut out = Vec::new();
    for f in walk_order(sb, root).await {
        out.extend(by_file.remove(f.as_str()).unwrap_or_default());
    }
    assert!(by_file.is_empty(), "expected files the walk does not reach");
    out.join("\n")
}

async fn check(sb: Arc<dyn Sandbox>) {
    let w = sb.workdir().trim_end_matches('/').to_owned();
    // (file, expected output line)
    let mut expected: Vec<(String, String)> = Vec::new();
    // /W/a.txt, /W/d0..d2/f0..f29 (every third has the needle, one with CRLF), /W/d1/deep/z.txt,
    // and one big file (streamed) with the needle at its end.
    sb.write_file(&format!("{w}/a.txt"), Bytes::from_static(b"top needle\n"))
        .await
        .unwrap();
    expected.push((format!("{w}/a.txt"), format!("{w}/a.txt:1:top needle")));
    let big: String = "filler line\n".repeat(30_000) + "big needle end";
    sb.write_file(&format!("{w}/b_big.txt"), Bytes::from(big.clone()))
        .await
        .unwrap();
    expected.push((
        format!("{w}/b_big.txt"),
        format!("{w}/b_big.txt:30001:big needle end"),
    ));
    for d in 0..3 {
        for f in 0..30 {
            let path = format!("{w}/d{d}/f{f:02}.txt");
            let text = if f % 3 == 0 {
                expected.push((path.clone(), format!("{path}:2:a needle {d}/{f}")));
                format!("x\r\na needle {d}/{f}\r\ny\r\n")
            } else {
                format!("nothing here {d}/{f}\n")
            };
            sb.write_file(&path, Bytes::from(text)).await.unwrap();
        }
        if d == 1 {
            sb.write_file(
                &format!("{w}/d1/deep/z.txt"),
                Bytes::from_static(b"\n\nneedle deep"),
            )
            .await
            .unwrap();
            expected.push((
                format!("{w}/d1/deep/z.txt"),
                format!("{w}/d1/deep/z.txt:3:needle deep"),
            ));
        }
    }
    // Line length limits (2000 bytes with the newline; a last line without one may have 2000)
    // and binary files, the same whichever way the lines are found.
    let mut long = b"needle".to_vec();
    long.extend(std::iter::repeat_n(b'x', 1993));
    long.push(b'\n');
    long.extend(b"needle");
    long.extend(std::iter::repeat_n(b'x', 1994));
    long.push(b'\n');
    long.extend(b"needle");
    long.extend(std::iter::repeat_n(b'y', 1994));
    sb.write_file(
        &format!("{w}/edge/bin.txt"),
        Bytes::from_static(b"needle\x00\n"),
    )
    .await
    .unwrap();
    sb.write_file(&format!("{w}/edge/long.txt"), Bytes::from(long))
        .await
        .unwrap();
    let long_path = format!("{w}/edge/long.txt");
    expected.push((
        long_path.clone(),
        format!("{long_path}:1:needle{}", "x".repeat(1993)),
    ));
    expected.push((
        long_path.clone(),
        format!("{long_path}:3:needle{}", "y".repeat(1994)),
    ));
    for skipped in [".git/x.txt", "node_modules/y.txt", "d0/.git/z.txt"] {
        sb.write_file(&format!("{w}/{skipped}"), Bytes::from_static(b"needle\n"))
            .await
            .unwrap();
    }
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    let ctx = ToolContext::new(sb.clone());
    let grep = reg.get("grep").unwrap();
    let want = in_walk_order(sb.as_ref(), &w, &expected).await;
    for pattern in ["needle", "ne+dle", "needle|zzz"] {
        let r = call_tool_in(grep.as_ref(), &ctx, json!({"pattern": pattern})).await;
        assert!(!r.is_error, "{:?}", r.text());
        assert_eq!(r.text(), Some(want.as_str()), "pattern {pattern}");
    }
    // A literal found nowhere, and one found only in the middle of a batch.
    let r = call_tool_in(grep.as_ref(), &ctx, json!({"pattern": "absent text"})).await;
    assert_eq!(r.text(), Some("no matches"));
    let r = call_tool_in(grep.as_ref(), &ctx, json!({"pattern": "nothing here 1/17"})).await;
    assert_eq!(
        r.text(),
        Some(format!("{w}/d1/f17.txt:1:nothing here 1/17").as_str())
    );
    // A file as the search path.
    let r = call_tool_in(
        grep.as_ref(),
        &ctx,
        json!({"pattern": "needle", "path": "d1/deep/z.txt"}),
    )
    .await;
    assert_eq!(
        r.text(),
        Some(format!("{w}/d1/deep/z.txt:3:needle deep").as_str())
    );
}

/// More file contents than one `search_tree` call brings back (8 MiB): the walk goes on here
/// after the files the sandbox went through, nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regex_grep_longer_than_one_sandbox_call_on_docker() {
    use cma_sandbox::{SandboxBackend, SandboxSpec};
    let (backend, _cleanup) = docker_support::connect(docker_support::config()).await;
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    let w = sb.workdir().trim_end_matches('/').to_owned();
    let filler = "0123456789abcdef".repeat(16 * 1024 - 1);
    let mut expected = Vec::new();
    for i in 0..40 {
        let dir = if i < 20 { "a" } else { "b" };
        let path = format!("{w}/{dir}/f{i:02}.txt");
        sb.write_file(&path, Bytes::from(format!("{filler}\nmark {i} end\n")))
            .await
            .unwrap();
        expected.push((path.clone(), format!("{path}:2:mark {i} end")));
    }
    let want = in_walk_order(sb.as_ref(), &w, &expected).await;
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    let ctx = ToolContext::new(sb.clone());
    let grep = reg.get("grep").unwrap();
    for pattern in [r"mark \d+ end", "end"] {
        let r = call_tool_in(grep.as_ref(), &ctx, json!({"pattern": pattern})).await;
        assert_eq!(r.text(), Some(want.as_str()), "{pattern}");
    }
    backend.destroy(sb.id()).await.unwrap();
}
