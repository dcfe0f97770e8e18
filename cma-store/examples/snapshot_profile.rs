//! Run one snapshot operation on its own, for profilers (`perf record`, `valgrind`) and for
//! timing phases without criterion around it:
//!
//! ```text
//! snapshot_profile gen     <workspace dir> <MiB>       # the benchmark's mixed workspace
//! snapshot_profile save    <workspace dir> <store dir> [<parent id>]
//! snapshot_profile restore <store dir> <snapshot id> <target dir>
//! snapshot_profile inc     <workspace dir> <store dir> <rounds>
//! snapshot_profile full    <workspace dir> <store dir> <rounds>
//! ```
//!
//! `save` prints the new snapshot's id and the time taken; `restore` restores into a new
//! directory (it must not exist) and prints the time. `inc` saves the workspace in full, then
//! `rounds` times overwrites 1 MiB of `data/part-000.bin` and saves incrementally, with one store
//! in one process as the benchmark does (so its caches are warm), printing each time (`same`:
//! the same without changing anything, so only the walk and the commit remain). `full`
//! saves the workspace `rounds` times into new stores (removed after each) in one process, as the
//! benchmark does, printing each save's time, CPU time and page faults.

use std::path::PathBuf;
use std::time::Instant;

use cma_sandbox::isolate::IsolateBackend;
use cma_store::{SnapshotConfig, SnapshotId, SnapshotStore};

#[path = "../benches/support/mixed.rs"]
mod mixed;

fn usage() -> ! {
    eprintln!(
        "usage: snapshot_profile gen <dir> <MiB> | save <dir> <store> [<parent>] | restore <store> <id> <dir> | inc|same|full <dir> <store> <rounds>"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scratch = tempfile::tempdir().expect("temp dir");
    let backend = IsolateBackend::new(scratch.path()).expect("isolate backend");
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen", dir, mb] => {
            let mb: u64 = mb.parse().unwrap_or_else(|_| usage());
            std::fs::create_dir_all(dir).expect("create the workspace dir");
            mixed::mixed_workspace(&PathBuf::from(dir), mb << 20);
        }
        ["save", dir, store, ref rest @ ..] => {
            let parent = rest
                .first()
                .map(|p| SnapshotId::from_hex(p).expect("parent id"));
            let store = SnapshotStore::local(store, SnapshotConfig::default()).expect("store");
            let sandbox = backend.open_directory(dir).expect("open the workspace");
            let t = Instant::now();
            let m = rt
                .block_on(store.save("sesn_profile", sandbox.as_ref(), parent.as_ref()))
                .expect("save");
            println!(
                "{} saved in {:?}: {} bytes uploaded",
                m.id.as_str(),
                t.elapsed(),
                m.uploaded_bytes
            );
        }
        ["restore", store, id, dir] => {
            let id = SnapshotId::from_hex(id).expect("snapshot id");
            let store = SnapshotStore::local(store, SnapshotConfig::default()).expect("store");
            std::fs::create_dir(dir).expect("a new target dir");
            let sandbox = backend.open_directory(dir).expect("open the target");
            let t = Instant::now();
            rt.block_on(store.restore(&id, sandbox.as_ref()))
                .expect("restore");
            println!("restored in {:?}", t.elapsed());
        }
        [mode @ ("inc" | "same"), dir, store, rounds] => {
            use rand::{Rng, RngCore, SeedableRng};
            let rounds: u32 = rounds.parse().unwrap_or_else(|_| usage());
            let store = SnapshotStore::local(store, SnapshotConfig::default()).expect("store");
            let sandbox = backend.open_directory(dir).expect("open the workspace");
            let t = Instant::now();
            let mut last = rt
                .block_on(store.save("sesn_profile", sandbox.as_ref(), None))
                .expect("save");
            println!("full save in {:?}", t.elapsed());
            // A new seed each run: the same edits again would change nothing.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(2, |d| d.as_nanos() as u64);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let path = PathBuf::from(dir).join("data/part-000.bin");
            for _ in 0..rounds {
                if mode == "inc" {
                    let mut data = std::fs::read(&path).expect("read the data file");
                    let n = data.len().min(1 << 20);
                    let off = rng.random_range(0..=data.len() - n);
                    rng.fill_bytes(&mut data[off..off + n]);
                    std::fs::write(&path, &data).expect("write the data file");
                    // As the benchmark does: no dirty pages left to write back during the save.
                    let _ = std::process::Command::new("sync").status();
                }
                let before = usage_now();
                let t = Instant::now();
                let m = rt
                    .block_on(store.save("sesn_profile", sandbox.as_ref(), Some(&last.id)))
                    .expect("save");
                let wall = t.elapsed();
                println!(
                    "incremental save in {wall:?}: {} bytes uploaded, {}",
                    m.uploaded_bytes,
                    usage_now().since(&before)
                );
                last = m;
            }
        }
        ["full", dir, store, rounds] => {
            let rounds: u32 = rounds.parse().unwrap_or_else(|_| usage());
            let sandbox = backend.open_directory(dir).expect("open the workspace");
            for round in 0..rounds {
                let at = PathBuf::from(store).join(round.to_string());
                let store = SnapshotStore::local(&at, SnapshotConfig::default()).expect("store");
                // As the benchmark does: no dirty pages left to write back during the save.
                let _ = std::process::Command::new("sync").status();
                let before = usage_now();
                let t = Instant::now();
                rt.block_on(store.save("sesn_profile", sandbox.as_ref(), None))
                    .expect("save");
                let wall = t.elapsed();
                println!("full save in {wall:?}: {}", usage_now().since(&before));
                drop(store);
                std::fs::remove_dir_all(&at).expect("remove the store");
            }
        }
        _ => usage(),
    }
}

/// Counts heap allocations, so a run can report how many a save makes.
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// CPU time of this process so far, in user space and in the kernel (in 10 ms ticks), its
/// minor page faults (Linux) and its heap allocations.
struct Usage {
    user: u64,
    system: u64,
    faults: u64,
    allocations: u64,
}

impl Usage {
    /// What was used from `before` to this reading, for printing.
    fn since(&self, before: &Usage) -> String {
        format!(
            "{} ms CPU ({} user, {} kernel), {} page faults, {} allocations",
            (self.user + self.system - before.user - before.system) * 10,
            (self.user - before.user) * 10,
            (self.system - before.system) * 10,
            self.faults - before.faults,
            self.allocations - before.allocations
        )
    }
}

fn usage_now() -> Usage {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name: minflt is the 10th field, utime and stime
    // the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i - 3).copied().unwrap_or(0);
    Usage {
        user: at(14),
        system: at(15),
        faults: at(10),
        allocations: ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed),
    }
}
