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
use cma_sandbox::isolate::{IsolateBackend, WorkerConfig};
use cma_sandbox::{
    ByteStream, Sandbox, SandboxBackend, SandboxError, SandboxErrorKind, SandboxSpec,
};
use cma_tools::toolset::registry_for;
use cma_tools::{ToolContext, ToolRegistry};
use futures::StreamExt;
use serde_json::{Value, json};

use adversarial_support::{self as adv, Expect, check, file_tool_cases};

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

/// The file tools' cases plus what only this backend answers: no shell, and `execute`.
fn tool_cases() -> Vec<(String, &'static str, Value, Expect)> {
    let mut v = file_tool_cases();
    v.extend([
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
    ]);
    v.push((
        "execute non-object input".into(),
        "execute",
        json!([1]),
        Expect::Err("dictionary"),
    ));
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
    // No idle or warm `execute` workers: a worker must be gone once its script is, so "no
    // process left behind" is checked for every script (the pool's own bounds are the worker
    // module's tests).
    let mut workers = WorkerConfig::new();
    workers.idle_workers = 0;
    workers.max_warm = 0;
    let backend = IsolateBackend::new(root.path())
        .unwrap()
        .with_workers(workers);
    let sb: Arc<dyn Sandbox> = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    // Another session of the same backend, served after every hostile case.
    let bystander: Arc<dyn Sandbox> = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    let w = root.path().join(sb.id().as_str()).join("workspace");
    fixtures(&w);
    let registry: Arc<ToolRegistry> = Arc::new(registry_for(&sb.capabilities()));
    let ctx = ToolContext::new(sb.clone());
    // The first script starts the process's one worker supervisor thread (it starts and reaps
    // every worker, for the life of the process): started here, it is part of every case's
    // "before".
    let warm = rt
        .block_on(registry.dispatch(&ctx, "execute", json!({"code": "1"})))
        .expect("execute is registered");
    assert!(!warm.is_error, "{:?}", warm.text());
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let bound = Duration::from_secs(60);
    for (name, tool, input, expect) in tool_cases() {
        let (reg, mut c) = (registry.clone(), ctx.clone());
        // Each call has 20 s; the case, its bound on top.
        c.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(20));
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
    let by = ToolContext::new(bystander.clone());
    let reg = registry.clone();
    match adv::run_case(
        &rt,
        "bystander: another session is still served",
        bound,
        move || async move {
            let w = reg
                .dispatch(
                    &by,
                    "write",
                    json!({"file_path": "ok.txt", "content": "fine\n"}),
                )
                .await
                .expect("write");
            assert!(!w.is_error, "{:?}", w.text());
            let r = reg
                .dispatch(
                    &by,
                    "execute",
                    json!({"code": "console.log(fs.readFile('ok.txt'))"}),
                )
                .await
                .expect("execute");
            assert!(
                !r.is_error && r.text().unwrap_or("").contains("fine"),
                "{r:?}"
            );
            check("bystander", &r, Expect::Ok)
        },
    ) {
        Ok(o) => report.push(o),
        Err(e) => failures.push(e),
    }
    drop(bystander);
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
