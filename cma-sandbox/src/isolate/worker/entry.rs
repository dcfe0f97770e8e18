//! The worker's entry point: a function in the executable's `.init_array`, run by the dynamic
//! loader (or the static startup code) before the host program's `main`.
//!
//! Why life before `main`: a worker is this same executable started again (`/proc/self/exe`),
//! so that `execute` works in any program linking this crate — the `cma` binary, a service,
//! a test binary, a doctest — with nothing for the host program to call. When the marker
//! variable [`WORKER_ENV`] is present (the backend sets it, in an otherwise empty environment),
//! this function runs the worker loop and ends the process with `_exit`, so the host's `main`,
//! its other initialisers' effects beyond this point, and its `atexit` handlers never run. When
//! it is absent, the function returns at once and the program starts normally. Hosts that
//! cannot allow this use a separate worker program instead
//! ([`WorkerConfig::program`](super::WorkerConfig::program)), which may be any binary linking
//! this crate (e.g. `cma-sandbox-worker`).
//!
//! This is the one place the crate uses `unsafe`: placing a function pointer in `.init_array`,
//! taking ownership of descriptor 0, closing inherited descriptors and `_exit`. Each block says
//! why it is sound.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::child;

/// Marker variable: present only in a worker's environment; its value is the backend's pid.
pub(crate) const WORKER_ENV: &str = "CMA_SANDBOX_ISOLATE_WORKER";

// SAFETY: `.init_array` holds `extern "C" fn()` pointers that the startup code calls once,
// single-threaded, before `main`; `worker_entry` has exactly that type and is safe to call then
// (it touches only the environment and, in a worker, descriptors the backend set up).
#[used]
#[unsafe(link_section = ".init_array")]
static WORKER_ENTRY: extern "C" fn() = worker_entry;

/// Referenced by the code that starts workers, so every binary able to start one also links
/// this object file and its `.init_array` entry (an unreferenced object in a library archive
/// may otherwise be left out by the linker).
pub(crate) fn anchor() -> usize {
    std::hint::black_box(&WORKER_ENTRY as *const _ as usize)
}

extern "C" fn worker_entry() {
    let Some(parent) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    let code = std::panic::catch_unwind(|| run(&parent)).unwrap_or(child::EXIT_PANIC);
    // SAFETY: `_exit` ends the process without returning; nothing after this point relies on
    // destructors or `atexit` handlers (none of the host's have a reason to run in a worker).
    unsafe { libc::_exit(code) }
}

fn run(parent: &OsString) -> i32 {
    close_inherited();
    // SAFETY: descriptor 0 was set up by the backend as this worker's socket, and nothing else
    // in the process owns it: the host's `main`, which could have, never runs.
    let fd = unsafe { OwnedFd::from_raw_fd(0) };
    let is_socket = rustix::fs::fstat(&fd)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_socket());
    if !is_socket {
        std::mem::forget(fd);
        return child::EXIT_SETUP;
    }
    let parent = parent.to_str().and_then(|p| p.parse().ok());
    child::main(UnixStream::from(fd), parent)
}

/// Close every descriptor above stderr: whatever the host leaked without close-on-exec must not
/// reach a script.
fn close_inherited() {
    // SAFETY: plain system call with integer arguments. The descriptors it closes belong to no
    // Rust object: this runs before `main`, and the worker opens none of its own before this.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists (collect first; the listing holds a descriptor).
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: as above; a descriptor already closed (the listing's own) fails harmlessly.
        unsafe { libc::close(fd) };
    }
}
