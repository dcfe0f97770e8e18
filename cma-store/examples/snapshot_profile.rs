//! Run one snapshot operation on its own, for profilers (`perf record`, `valgrind`) and for
//! timing phases without criterion around it:
//!
//! ```text
//! snapshot_profile gen     <workspace dir> <MiB>       # the benchmark's mixed workspace
//! snapshot_profile save    <workspace dir> <store dir> [<parent id>]
//! snapshot_profile restore <store dir> <snapshot id> <target dir>
//! snapshot_profile inc     <workspace dir> <store dir> <rounds>
//! ```
//!
//! `save` prints the new snapshot's id and the time taken; `restore` restores into a new
//! directory (it must not exist) and prints the time. `inc` saves the workspace in full, then
//! `rounds` times overwrites 1 MiB of `data/part-000.bin` and saves incrementally, with one store
//! in one process as the benchmark does (so its caches are warm), printing each time.

use std::path::PathBuf;
use std::time::Instant;

use cma_sandbox::isolate::IsolateBackend;
use cma_store::{SnapshotConfig, SnapshotId, SnapshotStore};

#[path = "../benches/support/mixed.rs"]
mod mixed;

fn usage() -> ! {
    eprintln!(
        "usage: snapshot_profile gen <dir> <MiB> | save <dir> <store> [<parent>] | restore <store> <id> <dir> | inc <dir> <store> <rounds>"
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
        ["inc", dir, store, rounds] => {
            use rand::{Rng, RngCore, SeedableRng};
            let rounds: u32 = rounds.parse().unwrap_or_else(|_| usage());
            let store = SnapshotStore::local(store, SnapshotConfig::default()).expect("store");
            let sandbox = backend.open_directory(dir).expect("open the workspace");
            let t = Instant::now();
            let mut last = rt
                .block_on(store.save("sesn_profile", sandbox.as_ref(), None))
                .expect("save");
            println!("full save in {:?}", t.elapsed());
            let mut rng = rand::rngs::StdRng::seed_from_u64(2);
            let path = PathBuf::from(dir).join("data/part-000.bin");
            for _ in 0..rounds {
                let mut data = std::fs::read(&path).expect("read the data file");
                let off = rng.random_range(0..data.len() - (1 << 20));
                rng.fill_bytes(&mut data[off..off + (1 << 20)]);
                std::fs::write(&path, &data).expect("write the data file");
                let t = Instant::now();
                let m = rt
                    .block_on(store.save("sesn_profile", sandbox.as_ref(), Some(&last.id)))
                    .expect("save");
                println!(
                    "incremental save in {:?}: {} bytes uploaded",
                    t.elapsed(),
                    m.uploaded_bytes
                );
                last = m;
            }
        }
        _ => usage(),
    }
}
