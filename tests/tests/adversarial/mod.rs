//! The harness of the adversarial suites (`adversarial_*.rs`): every case runs on a runtime of
//! its own under a wall-clock bound, and must leave no thread and no file descriptor behind.
//!
//! A suite is one `#[test]` that runs its cases one after the other, so nothing else in the test
//! binary starts threads or opens files while a case is measured. After a case its runtime is shut
//! down; the process must then settle back to the thread and descriptor counts it had before the
//! runtime was built (a leaked blocking thread, a stuck QuickJS worker, an unclosed socket would
//! not).
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A case: a name for the report and the future that runs it.
pub struct Case {
    /// Shown when the case fails.
    pub name: &'static str,
    /// The wall-clock bound of the case (its future is cut off and the case fails beyond it).
    pub bound: Duration,
    /// Builds the case's future (on the case's runtime).
    pub run: fn() -> Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Threads and open descriptors of this process (`/proc/self/task`, `/proc/self/fd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Threads.
    pub threads: usize,
    /// Open file descriptors.
    pub fds: usize,
}

impl Resources {
    /// The counts now.
    pub fn now() -> Self {
        let count = |dir: &str| {
            std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
                .count()
        };
        Self {
            threads: count("/proc/self/task"),
            // The directory handle of the listing itself is one of the entries.
            fds: count("/proc/self/fd").saturating_sub(1),
        }
    }
}

/// Create the per-process state the first child process or signal handler sets up once and keeps
/// for the life of the process (tokio's signal socket pair), so it is not counted as a case's
/// leak.
fn warm_up_process_globals() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let _child = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .expect("SIGCHLD handler");
    });
}

/// What every open descriptor points at (for the failure message).
pub fn open_fds() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{}→{target}", e.file_name().to_string_lossy())
        })
        .collect()
}

/// How long a finished case may take to give its threads and descriptors back (idle blocking
/// threads exit on their own; the runtime's keep-alive is set short below).
const SETTLE: Duration = Duration::from_secs(10);

/// Run `cases` in order; panics naming the first case that fails, overruns its bound or leaks.
pub fn run_cases(cases: &[Case]) {
    warm_up_process_globals();
    for case in cases {
        let before = Resources::now();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_keep_alive(Duration::from_millis(100))
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async { tokio::time::timeout(case.bound, (case.run)()).await })
        }));
        runtime.shutdown_timeout(Duration::from_secs(5));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!(
                "adversarial case `{}` did not finish within {:?}",
                case.name, case.bound
            ),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!("adversarial case `{}` failed: {message}", case.name);
            }
        }
        let deadline = Instant::now() + SETTLE;
        let mut after = Resources::now();
        while (after.threads > before.threads || after.fds > before.fds)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
            after = Resources::now();
        }
        assert!(
            after.threads <= before.threads && after.fds <= before.fds,
            "adversarial case `{}` left resources behind: before {before:?}, after {after:?}; open now: {:?}",
            case.name,
            open_fds()
        );
        eprintln!(
            "adversarial case `{}`: ok ({before:?} → {after:?})",
            case.name
        );
    }
}

/// Build a [`Case`] from an `async fn() -> ()` item.
#[macro_export]
macro_rules! case {
    ($name:ident, $bound:expr) => {
        $crate::adversarial::Case {
            name: stringify!($name),
            bound: $bound,
            run: || Box::pin($name()),
        }
    };
}
