//! Crash safety: a child process (this binary, with `CMA_STORE_CRASH_CHILD` set) saves, applies
//! retention and garbage-collects in a loop on a local store; the parent kills it with SIGKILL
//! at random points, 50 times, and after every kill restores the latest snapshot and the one
//! before it into fresh sandboxes and compares each with the workspace it was taken from (older
//! snapshots still listed are verified).
//!
//! A workspace is a pure function of its generation number (kept in its `GEN` file), so the
//! parent knows what every snapshot must contain.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cma_store::snapshot::{RetentionPolicy, SnapshotConfig, SnapshotStore};
use common::*;
use rand::Rng;

const CHILD_ENV: &str = "CMA_STORE_CRASH_CHILD";
const SESSION: &str = "sesn_crash";
const ROUNDS: usize = 50;

fn crash_config() -> SnapshotConfig {
    let mut c = config();
    // Small chunks and packs: more objects, more places to be killed in, and packs that
    // garbage collection rewrites.
    c.pack_bytes = 64 * 1024;
    c.chunker.min_size = 4 * 1024;
    c.chunker.avg_size = 16 * 1024;
    c.chunker.max_size = 64 * 1024;
    c.gc.gc_deadline = Duration::from_millis(300);
    c.gc.max_wait = Duration::from_secs(30);
    c.gc.inflight_ttl = Duration::from_secs(60);
    c
}

/// The workspace of generation `g`: content shared by all generations, content shared by
/// neighbours, and content of its own.
fn write_generation(dir: &Path, g: u64) {
    if dir.exists() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    fill_random(&dir.join("base"), 1, 25);
    let mut rng = seeded(g / 4);
    for (name, seed_rng) in [("shared", &mut rng), ("own", &mut seeded(1000 + g))] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for i in 0..4 {
            let mut data = vec![0u8; seed_rng.random_range(1..100_000)];
            rand::RngCore::fill_bytes(seed_rng, &mut data);
            std::fs::write(dir.join(name).join(format!("f{i}")), data).unwrap();
        }
    }
    std::fs::write(dir.join("GEN"), g.to_string()).unwrap();
}

async fn child(dir: PathBuf) {
    let store = SnapshotStore::local(dir.join("store"), crash_config()).unwrap();
    let iso = Isolate::new(&dir.join("sandboxes"));
    let src = iso.sandbox().await;
    let counter = dir.join("next_gen");
    for i in 0.. {
        let g: u64 = std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write(&counter, (g + 1).to_string()).unwrap();
        write_generation(&src.host, g);
        let parent = store.latest(SESSION).await.unwrap().map(|m| m.id);
        store
            .save(SESSION, src.sandbox.as_ref(), parent.as_ref())
            .await
            .unwrap();
        if i % 2 == 1 {
            store
                .apply_retention(RetentionPolicy {
                    keep_last: 3,
                    keep_within: Duration::ZERO,
                })
                .await
                .unwrap();
            store.gc().await.unwrap();
        }
    }
}

async fn parent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let iso = Isolate::new(&dir.join("check"));
    let mut expected: HashMap<u64, _> = HashMap::new();
    let mut rng = seeded(0x5eed);
    let mut restored_total = 0;
    let mut newest_gen = 0;
    for round in 0..ROUNDS {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.random_range(30..1000));
        tokio::time::sleep(delay).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!("round {round}: the child exited by itself ({status}); see its stderr");
        }
        let tk = std::time::Instant::now();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if std::env::var_os("CMA_CRASH_DEBUG").is_some() {
            eprintln!(
                "round {round}: slept {delay:?}, reaped in {:?}",
                tk.elapsed()
            );
        }

        let t0 = std::time::Instant::now();
        let store = SnapshotStore::local(dir.join("store"), crash_config()).unwrap();
        let infos = store.list(SESSION).await.unwrap();
        // The latest snapshot and the one before it must restore exactly; older ones are
        // verified (every chunk and entry checked) without a sandbox.
        let checked_from = infos.len().saturating_sub(2);
        for info in &infos[..checked_from] {
            store.verify(&info.id).await.unwrap_or_else(|e| {
                panic!(
                    "round {round} (killed after {delay:?}): old snapshot {}: {e}",
                    info.id.as_str()
                )
            });
        }
        for (i, info) in infos.iter().enumerate().skip(checked_from) {
            let dst = iso.sandbox().await;
            let m = store
                .restore(&info.id, dst.sandbox.as_ref())
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "round {round} (killed after {delay:?}): snapshot {i} of {}: {e}",
                        infos.len()
                    )
                });
            let g: u64 = std::fs::read_to_string(dst.host.join("GEN"))
                .unwrap()
                .parse()
                .unwrap();
            let want = expected.entry(g).or_insert_with(|| {
                let d = dir.join("expected").join(g.to_string());
                std::fs::create_dir_all(&d).unwrap();
                write_generation(&d, g);
                listing(&d)
            });
            assert_eq!(
                &listing(&dst.host),
                want,
                "round {round}: snapshot {} (gen {g})",
                m.id.as_str()
            );
            if i + 1 == infos.len() {
                newest_gen = newest_gen.max(g);
            }
            restored_total += 1;
        }
        if std::env::var_os("CMA_CRASH_DEBUG").is_some() {
            eprintln!("round {round}: checked in {:?}", t0.elapsed());
        }
    }
    eprintln!(
        "crash test: {ROUNDS} kills, {restored_total} restores checked, newest generation {newest_gen}"
    );
    assert!(
        newest_gen >= 10,
        "the child made too little progress to test anything: {newest_gen}"
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => rt.block_on(child(PathBuf::from(dir))),
        None => rt.block_on(parent()),
    }
}
