//! `cma-sandbox-worker`: a program to name in
//! [`WorkerConfig::program`](cma_sandbox::isolate::WorkerConfig::program) when a host should not
//! start its own executable as the isolate backend's `execute` worker.
//!
//! The worker itself runs before `main` (cma-sandbox's entry hook, when the backend starts this
//! program); `main` only runs when someone starts it by hand.

fn main() {
    // Keeps the pre-`main` worker entry linked into this binary.
    let supported = cma_sandbox::isolate::worker_entry_linked();
    eprintln!(
        "cma-sandbox-worker: runs `execute` scripts for the cma-sandbox isolate backend, which \
         starts it{}; it does nothing when started by hand",
        if supported { "" } else { " (on Linux only)" }
    );
    std::process::exit(2);
}
