//! Snapshot benchmarks on the isolate backend and the local store, against `tar | zstd -T0`
//! on the same data, measured in the same run:
//! - `full_save`: a mixed workspace into an empty store, vs `tar -cf - . | zstd -T0 -o file`;
//! - `incremental_save`: after overwriting 1 MiB of one file with new random data;
//! - `restore`: the whole workspace into a fresh sandbox.
//!
//! Size: `CMA_BENCH_SNAPSHOT_MB` (default 1024). A summary with the ratios the issue asks for
//! is printed at the end (full save / tar|zstd, bytes written / bytes changed, incremental /
//! full time, restore MB/s).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
use cma_store::{SnapshotConfig, SnapshotStore};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const CHANGED: usize = 1 << 20;

fn size_bytes() -> u64 {
    std::env::var("CMA_BENCH_SNAPSHOT_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20
}

/// A mixed workspace of about `total` bytes: many small source-like text files (40%), binary
/// files (30%), one big random file (20%, the one the incremental bench edits) and one big file
/// that is mostly zeros with some text (10%).
fn mixed_workspace(dir: &Path, total: u64) {
    let mut rng = StdRng::seed_from_u64(1);
    let words = [
        "fn", "let", "mut", "impl", "pub", "struct", "self", "return", "match", "=>", "{", "}",
        "(", ")", ";", "\n", "    ", "Result", "Option", "value", "error", "config",
    ];
    let mut text_left = total * 4 / 10;
    let mut i = 0u64;
    while text_left > 0 {
        let d = dir.join(format!("src/m{}/s{}", i % 50, (i / 50) % 20));
        std::fs::create_dir_all(&d).unwrap();
        let n = rng.random_range(200..40_000usize).min(text_left as usize);
        let mut s = String::with_capacity(n + 16);
        while s.len() < n {
            s.push_str(words[rng.random_range(0..words.len())]);
            s.push(' ');
        }
        std::fs::write(d.join(format!("f{i}.rs")), &s).unwrap();
        text_left = text_left.saturating_sub(s.len() as u64);
        i += 1;
    }
    let mut bin_left = total * 3 / 10;
    let mut j = 0;
    while bin_left > 0 {
        let d = dir.join(format!("assets/a{}", j % 20));
        std::fs::create_dir_all(&d).unwrap();
        let n = rng
            .random_range(10_000..4_000_000usize)
            .min(bin_left as usize);
        let mut data = vec![0u8; n];
        rng.fill_bytes(&mut data);
        std::fs::write(d.join(format!("b{j}.bin")), &data).unwrap();
        bin_left -= n as u64;
        j += 1;
    }
    let mut big = vec![0u8; (total * 2 / 10) as usize];
    rng.fill_bytes(&mut big);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let mut sparse = vec![0u8; (total / 10) as usize];
    for k in (0..sparse.len()).step_by(1 << 20) {
        let end = (k + 4096).min(sparse.len());
        sparse[k..end].fill(b'x');
    }
    std::fs::write(dir.join("mostly-zeros.img"), &sparse).unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

struct Fixture {
    _tmp: tempfile::TempDir,
    tmp: PathBuf,
    backend: IsolateBackend,
    root: PathBuf,
    src: Arc<dyn Sandbox>,
    src_host: PathBuf,
    bytes: u64,
}

#[derive(Default)]
struct Figures {
    full: Vec<Duration>,
    tar_zstd: Vec<Duration>,
    incremental: Vec<Duration>,
    incremental_written: Vec<u64>,
    restore: Vec<Duration>,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sandboxes");
    std::fs::create_dir_all(&root).unwrap();
    let backend = IsolateBackend::new(&root).unwrap();
    let src = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    let src_host = root.join(src.id().as_str()).join("workspace");
    mixed_workspace(&src_host, size_bytes());
    let f = Fixture {
        tmp: tmp.path().to_owned(),
        _tmp: tmp,
        backend,
        root,
        src,
        src_host: src_host.clone(),
        bytes: dir_bytes(&src_host),
    };
    let figures = Arc::new(Mutex::new(Figures::default()));
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(1));
    g.warm_up_time(Duration::from_millis(1));

    g.bench_function("tar_zstd_baseline", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let out = f.tmp.join("baseline.tar.zst");
                let t = Instant::now();
                let status = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "tar -C '{}' -cf - . | zstd -T0 -q -f -o '{}'",
                        f.src_host.display(),
                        out.display()
                    ))
                    .status()
                    .expect("sh, tar and zstd are needed for the baseline");
                let d = t.elapsed();
                assert!(status.success());
                std::fs::remove_file(&out).unwrap();
                figures.lock().unwrap().tar_zstd.push(d);
                total += d;
            }
            total
        })
    });

    g.bench_function("full_save", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = f.tmp.join("full-store");
                let store = SnapshotStore::local(&dir, SnapshotConfig::default()).unwrap();
                let t = Instant::now();
                rt.block_on(store.save("sesn_bench", f.src.as_ref(), None))
                    .unwrap();
                let d = t.elapsed();
                std::fs::remove_dir_all(&dir).unwrap();
                figures.lock().unwrap().full.push(d);
                total += d;
            }
            total
        })
    });

    let store_dir = f.tmp.join("store");
    let store = SnapshotStore::local(&store_dir, SnapshotConfig::default()).unwrap();
    let mut last = rt
        .block_on(store.save("sesn_bench", f.src.as_ref(), None))
        .unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    g.bench_function("incremental_save_1MiB_changed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Overwrite 1 MiB of the big file in place with new random bytes.
                let path = f.src_host.join("big.bin");
                let mut data = std::fs::read(&path).unwrap();
                let off = rng.random_range(0..data.len() - CHANGED);
                rng.fill_bytes(&mut data[off..off + CHANGED]);
                std::fs::write(&path, &data).unwrap();
                drop(data);
                let t = Instant::now();
                let m = rt
                    .block_on(store.save("sesn_bench", f.src.as_ref(), Some(&last.id)))
                    .unwrap();
                let d = t.elapsed();
                let manifest = rt
                    .block_on(store.list("sesn_bench"))
                    .unwrap()
                    .into_iter()
                    .find(|i| i.id == m.id)
                    .unwrap()
                    .manifest_bytes;
                let mut fig = figures.lock().unwrap();
                fig.incremental.push(d);
                fig.incremental_written.push(m.uploaded_bytes + manifest);
                last = m;
                total += d;
            }
            total
        })
    });

    g.bench_function("restore", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dst = rt.block_on(f.backend.create(&SandboxSpec::new())).unwrap();
                let t = Instant::now();
                rt.block_on(store.restore(&last.id, dst.as_ref())).unwrap();
                let d = t.elapsed();
                rt.block_on(f.backend.destroy(dst.id())).unwrap();
                figures.lock().unwrap().restore.push(d);
                total += d;
            }
            total
        })
    });
    g.finish();

    let mut fig = figures.lock().unwrap();
    let mb = f.bytes as f64 / (1 << 20) as f64;
    let full = median(&mut fig.full);
    let base = median(&mut fig.tar_zstd);
    let inc = median(&mut fig.incremental);
    let restore = median(&mut fig.restore);
    let mut written = fig.incremental_written.clone();
    written.sort();
    let w = written.get(written.len() / 2).copied().unwrap_or(0);
    println!("\n== snapshot summary: {mb:.0} MiB mixed workspace (medians) ==");
    println!(
        "full save         {full:?}   tar|zstd -T0 {base:?}   speed-up x{:.2} (target >= 2)",
        base.as_secs_f64() / full.as_secs_f64()
    );
    println!(
        "incremental save  {inc:?}   = {:.1}% of full (target <= 5%)",
        100.0 * inc.as_secs_f64() / full.as_secs_f64()
    );
    println!(
        "incremental bytes {w} written for {CHANGED} changed = x{:.2} (target <= 1.2)",
        w as f64 / CHANGED as f64
    );
    println!(
        "restore           {restore:?}   {:.0} MiB/s",
        mb / restore.as_secs_f64()
    );
    let _ = &f.root;
}

criterion_group!(snapshot, benches);
criterion_main!(snapshot);
