//! Hostile inputs for every tool on the isolate backend, and hostile archives and trees for the
//! backend itself: each case must end with a result or a typed error within its wall-clock
//! bound, under a 3 GiB address-space limit, leaving no thread or child process behind (see
//! `adversarial_support`). Regressions of issue 11's examples are among them: an `edit` that
//! would build 26 GB, `view_range` at `i64::MIN`, `glob` on a 3000-level chain.

mod adversarial_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{
    ByteStream, Sandbox, SandboxBackend, SandboxError, SandboxErrorKind, SandboxSpec,
};
use cma_tools::toolset::registry_for;
use cma_tools::{PostedResult, ToolContext, ToolRegistry};
use futures::StreamExt;
use serde_json::{Value, json};

use adversarial_support as adv;

/// What a case's result must be.
#[derive(Clone, Copy)]
enum Expect {
    /// Any result (the point is that it ends, in bounds).
    Any,
    /// A success.
    Ok,
    /// An error whose text contains this.
    Err(&'static str),
}

fn check(name: &str, r: &PostedResult, expect: Expect) -> String {
    let text = r.text().unwrap_or("<blocks>").to_owned();
    match expect {
        Expect::Any => {}
        Expect::Ok => assert!(
            !r.is_error,
            "{name}: expected success, got {}",
            adv::short(&text)
        ),
        Expect::Err(want) => assert!(
            r.is_error && text.contains(want),
            "{name}: expected an error containing {want:?}, got {}",
            adv::short(&text)
        ),
    }
    format!(
        "{}{}",
        if r.is_error { "error: " } else { "" },
        adv::short(&text)
    )
}

/// `depth` directories `a/a/…` below `top`, each holding a file `f` (by relative `mkdir`: a
/// chain deeper than a path can name).
fn chain(top: &Path, depth: usize) {
    let back = std::env::current_dir().unwrap();
    std::fs::create_dir_all(top).unwrap();
    std::env::set_current_dir(top).unwrap();
    for _ in 0..depth {
        std::fs::create_dir("a").unwrap();
        std::env::set_current_dir("a").unwrap();
        std::fs::write("f", b"needle\n").unwrap();
    }
    std::env::set_current_dir(back).unwrap();
}

fn fixtures(w: &Path) {
    chain(&w.join("chain"), 3000);
    std::fs::write(w.join("big.txt"), vec![b'a'; 256 * 1024]).unwrap();
    std::fs::write(w.join("line.txt"), vec![b'x'; 1 << 20]).unwrap();
    std::fs::write(w.join("nl.txt"), vec![b'\n'; 256 * 1024]).unwrap();
    std::fs::write(w.join("img.png"), vec![0x89u8; 1 << 20]).unwrap();
    std::fs::create_dir(w.join("wide")).unwrap();
    for i in 0..3000 {
        std::fs::write(w.join(format!("wide/f{i}.txt")), b"hay\nneedle\n").unwrap();
    }
    let st = std::process::Command::new("mkfifo")
        .arg(w.join("fifo"))
        .status()
        .unwrap();
    assert!(st.success());
    std::os::unix::fs::symlink("/dev/zero", w.join("devzero")).unwrap();
    std::os::unix::fs::symlink("loop2", w.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", w.join("loop2")).unwrap();
    std::os::unix::fs::symlink("fifo", w.join("fifolink")).unwrap();
}

/// The tool cases: (name, tool, input, expectation).
fn tool_cases() -> Vec<(String, &'static str, Value, Expect)> {
    let deep = "chain/".to_owned() + &"a/".repeat(2999) + "f";
    let mut v: Vec<(String, &'static str, Value, Expect)> = vec![
        // read: numbers at and past every bound.
        (
            "read i64::MIN start".into(),
            "read",
            json!({"file_path": "big.txt", "view_range": [i64::MIN, 1]}),
            Expect::Ok,
        ),
        (
            "read i64::MIN end".into(),
            "read",
            json!({"file_path": "big.txt", "view_range": [1, i64::MIN]}),
            Expect::Ok,
        ),
        (
            "read i64::MAX both".into(),
            "read",
            json!({"file_path": "nl.txt", "view_range": [i64::MAX, i64::MAX]}),
            Expect::Ok,
        ),
        (
            "read past i64 as strings".into(),
            "read",
            json!({"file_path": "nl.txt", "view_range": ["-9223372036854775809", "99999999999999999999"]}),
            Expect::Ok,
        ),
        (
            "read u64::MAX".into(),
            "read",
            json!({"file_path": "nl.txt", "view_range": [u64::MAX, 1]}),
            Expect::Ok,
        ),
        (
            "read float range".into(),
            "read",
            json!({"file_path": "nl.txt", "view_range": [1e300, 1]}),
            Expect::Err("Invalid arguments"),
        ),
        (
            "read three numbers".into(),
            "read",
            json!({"file_path": "nl.txt", "view_range": [1, 2, 3]}),
            Expect::Err("view_range must be"),
        ),
        (
            "read newlines whole".into(),
            "read",
            json!({"file_path": "nl.txt", "view_range": [1, 0]}),
            Expect::Ok,
        ),
        (
            "read one huge line".into(),
            "read",
            json!({"file_path": "line.txt", "view_range": [1, 1]}),
            Expect::Err("alone exceeds"),
        ),
        (
            "read huge range".into(),
            "read",
            json!({"file_path": "line.txt", "view_range": [i64::MIN, i64::MAX]}),
            Expect::Err("exceeds"),
        ),
        (
            "read huge file whole".into(),
            "read",
            json!({"file_path": "line.txt"}),
            Expect::Err("exceeds"),
        ),
        (
            "read fifo".into(),
            "read",
            json!({"file_path": "fifo"}),
            Expect::Err("not a regular file"),
        ),
        (
            "read fifo via link".into(),
            "read",
            json!({"file_path": "fifolink", "view_range": [1, 2]}),
            Expect::Err("not a regular file"),
        ),
        (
            "read /dev/zero link".into(),
            "read",
            json!({"file_path": "devzero"}),
            Expect::Err("read:"),
        ),
        (
            "read /dev/zero".into(),
            "read",
            json!({"file_path": "/dev/zero"}),
            Expect::Err("outside"),
        ),
        (
            "read symlink loop".into(),
            "read",
            json!({"file_path": "loop1"}),
            Expect::Err("symbolic links"),
        ),
        (
            "read 1 MB path".into(),
            "read",
            json!({"file_path": "p".repeat(1 << 20)}),
            Expect::Err("read:"),
        ),
        (
            "read NUL path".into(),
            "read",
            json!({"file_path": "a\u{0}b"}),
            Expect::Err("read:"),
        ),
        (
            "read 300-byte name".into(),
            "read",
            json!({"file_path": "n".repeat(300)}),
            Expect::Err("read:"),
        ),
        (
            "read 3000 levels down".into(),
            "read",
            json!({"file_path": deep.clone()}),
            Expect::Err("read:"),
        ),
        (
            "read escape".into(),
            "read",
            json!({"file_path": "../../../../../etc/passwd"}),
            Expect::Err("outside"),
        ),
        (
            "read 1 MiB image".into(),
            "read",
            json!({"file_path": "img.png"}),
            Expect::Ok,
        ),
        (
            "read U+FFFD and escapes".into(),
            "read",
            json!({"file_path": "\u{fffd}\u{202e}\u{1f600}"}),
            Expect::Err("no such file"),
        ),
        // write: big content, special targets, impossible paths.
        (
            "write 32 MB".into(),
            "write",
            json!({"file_path": "out/big.txt", "content": "x".repeat(32 << 20)}),
            Expect::Ok,
        ),
        (
            "write NUL content".into(),
            "write",
            json!({"file_path": "out/nul.txt", "content": "a\u{0}b"}),
            Expect::Ok,
        ),
        (
            "write into a fifo".into(),
            "write",
            json!({"file_path": "fifo", "content": "x"}),
            Expect::Err("write:"),
        ),
        (
            "write /dev/zero link".into(),
            "write",
            json!({"file_path": "devzero", "content": "x"}),
            Expect::Err("write:"),
        ),
        (
            "write 3000 levels".into(),
            "write",
            json!({"file_path": "d/".repeat(3000) + "f", "content": "x"}),
            Expect::Err("write:"),
        ),
        (
            "write 300-byte name".into(),
            "write",
            json!({"file_path": "n".repeat(300), "content": "x"}),
            Expect::Err("write:"),
        ),
        // edit: issue 11's amplification first (before the file changes), then the rest.
        (
            "edit replace_all amplification".into(),
            "edit",
            json!({"file_path": "big.txt", "old_string": "a", "new_string": "b".repeat(100_000), "replace_all": true}),
            Expect::Err("exceeds 16777216-byte limit"),
        ),
        (
            "edit 20 MB old_string".into(),
            "edit",
            json!({"file_path": "big.txt", "old_string": "a".repeat(20 << 20), "new_string": ""}),
            Expect::Err("not found"),
        ),
        (
            "edit empty old_string everywhere".into(),
            "edit",
            json!({"file_path": "big.txt", "old_string": "", "new_string": "x", "replace_all": true}),
            Expect::Ok,
        ),
        (
            "edit a fifo".into(),
            "edit",
            json!({"file_path": "fifo", "old_string": "a", "new_string": "b"}),
            Expect::Err("not a regular file"),
        ),
        // glob: deep, combinatorial, huge patterns.
        (
            "glob **/f over a 3000-level chain".into(),
            "glob",
            json!({"pattern": "**/f"}),
            Expect::Ok,
        ),
        (
            "glob repeated **".into(),
            "glob",
            json!({"pattern": "**/**/**/**/**/**/f"}),
            Expect::Ok,
        ),
        (
            "glob combinatorial **/a/**".into(),
            "glob",
            json!({"pattern": "**/a/**/a/**/a/**/a/**/a/**/f"}),
            Expect::Any,
        ),
        (
            "glob 100k ['s".into(),
            "glob",
            json!({"pattern": "[".repeat(100_000)}),
            Expect::Any,
        ),
        (
            "glob 100k *s".into(),
            "glob",
            json!({"pattern": "*".repeat(100_000)}),
            Expect::Any,
        ),
        (
            "glob 1 MB literal".into(),
            "glob",
            json!({"pattern": "l".repeat(1 << 20)}),
            Expect::Any,
        ),
        (
            "glob ** in a fifo".into(),
            "glob",
            json!({"pattern": "**", "path": "fifo"}),
            Expect::Any,
        ),
        (
            "glob wide".into(),
            "glob",
            json!({"pattern": "wide/*.txt"}),
            Expect::Ok,
        ),
        // grep: bad and huge patterns, special files.
        (
            "grep over everything".into(),
            "grep",
            json!({"pattern": "needle"}),
            Expect::Ok,
        ),
        (
            "grep unclosed group".into(),
            "grep",
            json!({"pattern": "("}),
            Expect::Err("invalid regex"),
        ),
        (
            "grep huge repetition".into(),
            "grep",
            json!({"pattern": "a{1000}{1000}{1000}"}),
            Expect::Err("invalid regex"),
        ),
        (
            "grep empty pattern".into(),
            "grep",
            json!({"pattern": ""}),
            Expect::Any,
        ),
        (
            "grep /dev/zero link".into(),
            "grep",
            json!({"pattern": "x", "path": "devzero"}),
            Expect::Any,
        ),
        (
            "grep fifo".into(),
            "grep",
            json!({"pattern": "x", "path": "fifo"}),
            Expect::Any,
        ),
        // bash: no shell here, whatever the numbers.
        (
            "bash i64::MIN timeout".into(),
            "bash",
            json!({"command": "yes", "timeout_ms": i64::MIN}),
            Expect::Err("execute"),
        ),
        // execute: runaway scripts end at their limits.
        (
            "execute endless loop".into(),
            "execute",
            json!({"code": "while (true) {}", "timeout_ms": 500}),
            Expect::Err("timed out"),
        ),
        (
            "execute output flood".into(),
            "execute",
            json!({"code": "for (;;) console.log('x'.repeat(100000))", "timeout_ms": 1000}),
            Expect::Any,
        ),
        (
            "execute i64::MAX timeout".into(),
            "execute",
            json!({"code": "1 + 1", "timeout_ms": i64::MAX}),
            Expect::Ok,
        ),
    ];
    // Inputs that are not objects, or with every field of the wrong type.
    for tool in ["read", "write", "edit", "glob", "grep", "bash", "execute"] {
        v.push((
            format!("{tool} non-object input"),
            tool,
            json!([1, 2]),
            Expect::Err("dictionary"),
        ));
        v.push((
            format!("{tool} wrong types"),
            tool,
            json!({"file_path": 1, "pattern": [], "command": {}, "code": 5, "content": null}),
            Expect::Err(""),
        ));
    }
    v
}

/// A tar whose GNU long-name entry claims a terabyte.
fn lying_long_name() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(1 << 40);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend(vec![b'a'; 1 << 20]);
    raw
}

/// A tar whose only file claims 10 GB and holds 1 KiB.
fn lying_file_size() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("liar.bin").unwrap();
    h.set_size(10 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend(vec![b'z'; 1024]);
    raw
}

/// A PAX header whose `size` record claims far more than follows.
fn lying_pax_size() -> Vec<u8> {
    let rec = b"23 size=99999999999999\n".to_vec();
    let mut x = tar::Header::new_ustar();
    x.set_entry_type(tar::EntryType::XHeader);
    x.set_path("pax").unwrap();
    x.set_size(rec.len() as u64);
    x.set_cksum();
    let mut raw = x.as_bytes().to_vec();
    raw.extend(&rec);
    raw.resize(1024, 0);
    let mut f = tar::Header::new_ustar();
    f.set_entry_type(tar::EntryType::Regular);
    f.set_path("f").unwrap();
    f.set_size(1);
    f.set_mode(0o644);
    f.set_cksum();
    raw.extend(f.as_bytes());
    raw.extend(vec![b'q'; 4096]);
    raw
}

fn stream(data: Vec<u8>) -> ByteStream {
    Box::pin(futures::stream::iter(
        data.chunks(64 * 1024)
            .map(|c| Ok::<_, SandboxError>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    ))
}

#[test]
fn adversarial_isolate() {
    if !adv::in_limited_child("adversarial_isolate") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let rt = adv::runtime();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb: Arc<dyn Sandbox> = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    let w = root.path().join(sb.id().as_str()).join("workspace");
    fixtures(&w);
    let registry: Arc<ToolRegistry> = Arc::new(registry_for(&sb.capabilities()));
    let ctx = ToolContext::new(sb.clone());
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let bound = Duration::from_secs(60);
    for (name, tool, input, expect) in tool_cases() {
        let (reg, mut c) = (registry.clone(), ctx.clone());
        // Each call has 20 s (a runaway walk, 3 s); the case, its bound on top.
        let secs = if name.contains("combinatorial") { 3 } else { 20 };
        c.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(secs));
        let n = name.clone();
        let r = adv::run_case(&rt, &name, bound, move || async move {
            let r = reg
                .dispatch(&c, tool, input)
                .await
                .expect("a registered tool");
            check(&n, &r, expect)
        });
        match r {
            Ok(o) => report.push(o),
            Err(e) => failures.push(e),
        }
    }
    // The backend itself: hostile archives, a deep tree to remove, walk and export.
    let backend_cases: Vec<(&str, ByteStream, Option<SandboxErrorKind>)> = vec![
        (
            "import: long name claiming 1 TB",
            stream(lying_long_name()),
            Some(SandboxErrorKind::InvalidArchive),
        ),
        (
            "import: file claiming 10 GB",
            stream(lying_file_size()),
            Some(SandboxErrorKind::InvalidArchive),
        ),
        (
            "import: PAX size past the data",
            stream(lying_pax_size()),
            Some(SandboxErrorKind::InvalidArchive),
        ),
        (
            "import: garbage",
            stream(b"not a tar at all".repeat(100)),
            Some(SandboxErrorKind::InvalidArchive),
        ),
    ];
    for (name, tar, want) in backend_cases {
        let s = sb.clone();
        let r = adv::run_case(&rt, name, bound, move || async move {
            let r = s.import_workspace(tar).await;
            match (&r, want) {
                (Err(e), Some(k)) => assert_eq!(e.kind(), k, "{e}"),
                (Ok(()), None) => {}
                _ => panic!("unexpected: {r:?}"),
            }
            format!("{r:?}")
        });
        match r {
            Ok(o) => report.push(o),
            Err(e) => failures.push(e),
        }
    }
    let s = sb.clone();
    let walked = adv::run_case(
        &rt,
        "walk_tree: the whole 3000-level chain",
        bound,
        move || async move {
            let mut walk = s.walk_tree("/workspace/chain").await.unwrap();
            let mut dirs = 0usize;
            while let Some(d) = walk.next().await {
                d.unwrap();
                dirs += 1;
            }
            // Every level a sandbox path can name (4096 bytes) is listed, and no deeper.
            assert!((2000..=2100).contains(&dirs), "{dirs}");
            format!("{dirs} directories")
        },
    );
    let s = sb.clone();
    let exported = adv::run_case(
        &rt,
        "export: a tree deeper than an import takes",
        bound,
        move || async move {
            let mut tar = s.export_workspace().await.unwrap();
            let mut last = None;
            while let Some(c) = tar.next().await {
                if let Err(e) = c {
                    last = Some(e);
                    break;
                }
            }
            let e = last.expect("paths past 4096 bytes cannot be exported");
            assert_eq!(e.kind(), SandboxErrorKind::TooLarge, "{e}");
            e.to_string().chars().take(80).collect()
        },
    );
    let s = sb.clone();
    let removed = adv::run_case(
        &rt,
        "remove: the 3000-level chain",
        bound,
        move || async move {
            s.remove("chain", true).await.unwrap();
            assert_eq!(
                s.stat("chain").await.unwrap_err().kind(),
                SandboxErrorKind::NotFound
            );
            "removed".into()
        },
    );
    for r in [walked, exported, removed] {
        match r {
            Ok(o) => report.push(o),
            Err(e) => failures.push(e),
        }
    }
    let b = backend.clone();
    let id = sb.id().clone();
    chain(&w.join("again"), 1000);
    drop(sb);
    drop(ctx);
    match adv::run_case(
        &rt,
        "destroy: a sandbox holding a 3000-level chain",
        bound,
        move || async move {
            b.destroy(&id).await.unwrap();
            "destroyed".into()
        },
    ) {
        Ok(o) => report.push(o),
        Err(e) => failures.push(e),
    }
    for o in &report {
        println!(
            "{:>8.1} ms  {:<45} {}",
            o.took.as_secs_f64() * 1e3,
            o.name,
            o.summary
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
