//! The harness of the adversarial suites (`adversarial_isolate.rs`, `adversarial_docker.rs`).
//!
//! Each suite is one `#[test]` that re-runs its own test binary as a child process under a
//! memory limit: `RLIMIT_AS` of [`AS_LIMIT_BYTES`] (set by the child itself, first thing) with
//! `MALLOC_ARENA_MAX=2` (so glibc's per-thread arenas do not reserve the address space the
//! limit is about). An allocation a hostile input makes the process attempt past the limit
//! aborts the child, and the parent fails with its output: "the process stays alive" is
//! checked by the child exiting cleanly. So the limit holds wherever the suite runs, including
//! `scripts/test.sh`'s `cargo test --workspace`.
//!
//! In the child every case runs on one runtime (two workers, blocking threads kept alive
//! 100 ms) as a spawned task under a wall-clock bound; a panic, a miss of the bound or a case's
//! own check fails the suite. After each case the process must be back to the threads and
//! child processes it had before it (polled for a few seconds: finished blocking threads and
//! reaped children take a moment to go).
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// Set in the child run.
const CHILD_ENV: &str = "CMA_ADVERSARIAL_CHILD";
/// Address-space limit of the child: its threads, the runtime and every case together.
pub const AS_LIMIT_BYTES: u64 = 3 << 30;
/// Wall-clock bound of a whole suite (child included).
const SUITE_BOUND: Duration = Duration::from_secs(900);

/// `true` in the child (go on with the cases); in the parent, run the child and check it.
pub fn in_limited_child(test_name: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        limit_address_space();
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = std::process::Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("MALLOC_ARENA_MAX", "2")
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the suite's child");
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let reader = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = p {
                let _ = std::io::copy(&mut p, &mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(out_pipe.map(|p| Box::new(p) as _));
    let err = reader(err_pipe.map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            break s;
        }
        if started.elapsed() > SUITE_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the adversarial suite ran past {SUITE_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    print!("{out}");
    eprint!("{err}");
    assert!(
        status.success(),
        "the suite's process did not survive its cases ({status}); see its output above"
    );
    false
}

fn limit_address_space() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let lim = Rlimit {
        current: Some(AS_LIMIT_BYTES),
        maximum: Some(AS_LIMIT_BYTES),
    };
    setrlimit(Resource::As, lim).expect("set RLIMIT_AS");
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Child processes of this process (any state but reaped).
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out.retain(|p| *p != me);
    out.sort_unstable();
    out.dedup();
    out
}

/// The runtime the cases run on: two workers, blocking threads that end 100 ms after their
/// last task (so a finished case leaves none behind), at most 64 of them.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_keep_alive(Duration::from_millis(100))
        .enable_all()
        .build()
        .expect("runtime")
}

/// Counts of what a case must leave as it found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub threads: usize,
    pub children: Vec<u32>,
}

pub fn footprint() -> Footprint {
    Footprint {
        threads: threads(),
        children: children(),
    }
}

/// Wait (up to 5 s) until the process is back to `before`; `Err` with what is left.
pub fn settle(before: &Footprint) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = footprint();
        if now.threads <= before.threads && now.children.iter().all(|c| before.children.contains(c))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("left behind: before {before:?}, after {now:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One case's outcome for the report.
pub struct Outcome {
    pub name: String,
    pub took: Duration,
    pub summary: String,
}

/// Run one case: `make` builds its future, spawned on `rt` under `bound`; its output (a short
/// summary) is checked by the case itself (panics fail it). Then the footprint must settle.
pub fn run_case<F, Fut>(
    rt: &tokio::runtime::Runtime,
    name: &str,
    bound: Duration,
    make: F,
) -> Result<Outcome, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = String> + Send + 'static,
{
    let before = footprint();
    let started = Instant::now();
    let task = rt.spawn(make());
    let joined = rt.block_on(async { tokio::time::timeout(bound, task).await });
    let took = started.elapsed();
    let summary = match joined {
        Err(_) => return Err(format!("{name}: no result within {bound:?}")),
        Ok(Err(e)) if e.is_panic() => return Err(format!("{name}: panicked: {e}")),
        Ok(Err(e)) => return Err(format!("{name}: task failed: {e}")),
        Ok(Ok(s)) => s,
    };
    settle(&before).map_err(|e| format!("{name}: {e}"))?;
    Ok(Outcome {
        name: name.to_owned(),
        took,
        summary,
    })
}

/// A short form of a result text for the report.
pub fn short(text: &str) -> String {
    let one: String = text.chars().take(120).collect();
    one.replace('\n', "⏎")
}
