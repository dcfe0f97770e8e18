//! Hostile `execute` scripts on the isolate backend: built-ins that loop natively without polling
//! QuickJS's interrupt handler, interrupts swallowed by `try`/`catch`, memory bombs, and
//! cancelled calls. Each must end with a typed error, and afterwards the process must hold no
//! more threads or child processes than before (and no zombie).
//!
//! One test function on purpose: it counts this process's threads and children, which other
//! tests running in parallel in the same binary would disturb.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{ExecuteRequest, Sandbox, SandboxBackend, SandboxErrorKind, SandboxSpec};

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Child processes of this process: pid → state letter (`Z` for a zombie).
fn children() -> BTreeMap<u32, char> {
    let me = std::process::id();
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut fields = stat[close + 2..].split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me {
            out.insert(pid, state);
        }
    }
    out
}

/// Wait (bounded) until `done` holds; returns whether it did. Not a timing assertion: the
/// bound only keeps a broken build from hanging the suite.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

async fn expect_err(sb: &dyn Sandbox, code: &str, timeout_ms: u64) -> SandboxErrorKind {
    let mut req = ExecuteRequest::new(code);
    req.timeout = Duration::from_millis(timeout_ms);
    match sb.execute(req).await {
        Ok(out) => panic!("{code}: expected an error, got {out:?}"),
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    SandboxErrorKind::Timeout | SandboxErrorKind::ResourceLimit
                ),
                "{code}: {e}"
            );
            e.kind()
        }
    }
}

/// Scripts that never poll the interrupt handler (or swallow it) and must be stopped from
/// outside. Each entry: the code, and whether it may instead run out of memory first.
const RUNAWAYS: &[(&str, bool)] = &[
    // The case from the issue: native loops over a huge array-like object.
    (
        "Array.prototype.indexOf.call({length: 2**53 - 1}, 1)",
        false,
    ),
    (
        "Array.prototype.lastIndexOf.call({length: 2**53 - 1}, 1)",
        false,
    ),
    (
        "Array.prototype.includes.call({length: 2**53 - 1}, 1)",
        false,
    ),
    ("Array.prototype.join.call({length: 2**32 - 1}, '')", true),
    // Big native string builders.
    ("'ab'.repeat(2**28).length", true),
    ("''.padEnd(2**29, 'xy').length", true),
    ("Array(1e9).fill(0).length", true),
    // Exponential JSON from shared references.
    (
        "let o = {}; for (let i = 0; i < 40; i++) o = {a: o, b: o}; JSON.stringify(o).length",
        true,
    ),
    // Catastrophic regex backtracking.
    ("/^(a+)+$/.test('a'.repeat(64) + 'b')", false),
    // The interrupt is uncatchable, but a script may try.
    (
        "for (;;) { try { while (true) {} } catch (e) {} finally { continue; } }",
        false,
    ),
];

#[test]
fn runaway_scripts_are_stopped_and_leave_nothing_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_keep_alive(Duration::from_millis(50))
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();

    // Warm up what lives for the whole process (the worker supervisor thread), then measure.
    rt.block_on(async {
        let backend = IsolateBackend::new(root.path().join("warm")).unwrap();
        let sb = backend.create(&SandboxSpec::new()).await.unwrap();
        let out = sb.execute(ExecuteRequest::new("1 + 1")).await.unwrap();
        assert_eq!(&out.stdout[..], b"2\n");
    });
    assert!(eventually(|| children().is_empty()), "{:?}", children());
    let base_threads = threads();
    assert!(eventually(|| threads() <= base_threads));

    rt.block_on(async {
        let backend = IsolateBackend::new(root.path().join("s")).unwrap();
        let sb = backend.create(&SandboxSpec::new()).await.unwrap();
        for (code, may_oom) in RUNAWAYS {
            let kind = expect_err(&*sb, code, 1000).await;
            if !may_oom {
                assert_eq!(kind, SandboxErrorKind::Timeout, "{code}");
            }
            // The sandbox still works after each one.
            let out = sb.execute(ExecuteRequest::new("'alive'")).await.unwrap();
            assert_eq!(&out.stdout[..], b"alive\n", "after {code}");
        }

        // Memory bombs end with a typed out-of-memory error.
        for bomb in [
            "const a = []; while (true) a.push('x'.repeat(1 << 20) + a.length);",
            "const a = []; for (;;) a.push(new Array(1 << 16).fill(a.length));",
            "const a = []; for (;;) a.push(new ArrayBuffer(1 << 20));",
            "'x'.repeat(2 ** 29).length",
        ] {
            let err = sb.execute(ExecuteRequest::new(bomb)).await.unwrap_err();
            assert_eq!(err.kind(), SandboxErrorKind::ResourceLimit, "{bomb}: {err}");
        }

        // A dropped call (the future goes away mid-script) kills its worker too.
        let mut req = ExecuteRequest::new("Array.prototype.indexOf.call({length: 2**53 - 1}, 1)");
        req.timeout = Duration::from_secs(600);
        let pending = tokio::time::timeout(Duration::from_millis(300), sb.execute(req)).await;
        assert!(pending.is_err(), "the runaway cannot have finished");

        // Files written before keep working alongside.
        sb.write_file("after.txt", Bytes::from_static(b"ok"))
            .await
            .unwrap();
        assert_eq!(&sb.read_file("after.txt", None).await.unwrap()[..], b"ok");
    });

    // Everything the scripts held is gone: no worker (killed and reaped, so no zombie) once the
    // backend is dropped, and no thread beyond those there before.
    assert!(
        eventually(|| children().is_empty()),
        "children left: {:?}",
        children()
    );
    assert!(
        eventually(|| threads() <= base_threads),
        "threads: {} > {base_threads}",
        threads()
    );
}
