//! The harness of the adversarial suites (`adversarial_isolate.rs`, `adversarial_docker.rs`).
//!
//! Each suite is one `#[test]` that re-runs its own test binary as a child process under a
//! memory limit: `RLIMIT_AS` of `CMA_ADVERSARIAL_AS_BYTES` (default [`AS_LIMIT_BYTES`]; set by
//! the child itself, first thing) with
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
/// Address-space limit of the child when `CMA_ADVERSARIAL_AS_BYTES` does not set one (CI sets
/// it in `scripts/test.sh`): its threads, the runtime and every case together.
pub const AS_LIMIT_BYTES: u64 = 3 << 30;
/// The variable that sets the limit.
const LIMIT_ENV: &str = "CMA_ADVERSARIAL_AS_BYTES";
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
    let bytes = std::env::var(LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(AS_LIMIT_BYTES);
    println!("adversarial suite: address space limited to {bytes} bytes");
    let lim = Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    setrlimit(Resource::As, lim).expect("set RLIMIT_AS");
    // The limit is in force: an allocation past it fails instead of being granted.
    let past = usize::try_from(bytes).unwrap_or(usize::MAX);
    assert!(
        Vec::<u8>::new().try_reserve_exact(past).is_err(),
        "RLIMIT_AS is not enforced"
    );
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

use cma_tools::PostedResult;
use serde_json::{Value, json};

/// What a case's result must be.
#[derive(Clone, Copy)]
pub enum Expect {
    /// Any result (the point is that it ends, in bounds).
    Any,
    /// A success.
    Ok,
    /// An error whose text contains this.
    Err(&'static str),
}

pub fn check(name: &str, r: &PostedResult, expect: Expect) -> String {
    let text = r.text().unwrap_or("<blocks>").to_owned();
    match expect {
        Expect::Any => {}
        Expect::Ok => assert!(
            !r.is_error,
            "{name}: expected success, got {}",
            short(&text)
        ),
        Expect::Err(want) => assert!(
            r.is_error && text.contains(want),
            "{name}: expected an error containing {want:?}, got {}",
            short(&text)
        ),
    }
    format!(
        "{}{}",
        if r.is_error { "error: " } else { "" },
        short(&text)
    )
}

/// The file tools' cases, the same on every backend: (name, tool, input, expectation). The
/// workspace holds what `adversarial_isolate`'s and `adversarial_docker`'s fixtures make.
pub fn file_tool_cases() -> Vec<(String, &'static str, Value, Expect)> {
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
            Expect::Ok,
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
    ];
    // Inputs that are not objects, or with every field of the wrong type.
    for tool in ["read", "write", "edit", "glob", "grep", "bash"] {
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
