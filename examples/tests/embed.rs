//! The library example: `embed` composes a control plane from the crates the way README.md's
//! "Use it as a library" section shows, and runs it against the emulator (one session, one tool
//! call, a signed webhook delivered to the host's own axum route).

use std::path::Path;
use std::process::Command;

/// The code between `// ANCHOR: name` and `// ANCHOR_END: name`, dedented.
fn region(src: &str, name: &str) -> String {
    let start = format!("// ANCHOR: {name}\n");
    let end = format!("// ANCHOR_END: {name}");
    let from = src.find(&start).expect("anchor start") + start.len();
    let to = from + src[from..].find(&end).expect("anchor end");
    let body = src[from..to]
        .trim_end_matches([' ', '\t'])
        .trim_end_matches('\n');
    let indent = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.lines()
        .map(|l| l.get(indent..).unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readme_shows_the_code_the_embed_example_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/src/bin/embed.rs")).unwrap();
    let (_, rest) = readme
        .split_once("## Use it as a library")
        .expect("README has a library section");
    let (_, block) = rest.split_once("```rust\n").expect("a rust code block");
    let (block, _) = block.split_once("\n```").expect("the block ends");
    let (imports, body) = block.split_once("\n\n").expect("imports, then code");
    for import in imports.lines() {
        assert!(example.contains(import), "embed.rs lacks {import:?}");
    }
    let expected = format!(
        "{}\n\n{}",
        region(&example, "compose"),
        region(&example, "handler")
    );
    assert_eq!(
        body, expected,
        "README.md and examples/src/bin/embed.rs differ"
    );
}

#[test]
fn the_embedded_control_plane_runs_a_session_woken_by_a_verified_webhook() {
    let out = Command::new(env!("CARGO_BIN_EXE_embed"))
        .output()
        .expect("embed runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "embed failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("result      write -> [{\"type\":\"text\",\"text\":\"wrote 20 bytes to hello.txt\"}] (is_error: Some(false))"),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "ok"), "{stdout}");
}
