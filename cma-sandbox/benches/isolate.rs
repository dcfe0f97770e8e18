//! Isolate backend costs: session start to first file result, a trivial `execute`, and resident
//! memory per idle session.
//!
//! `cargo bench -p cma-sandbox --bench isolate` prints criterion's estimates (the median is the
//! p50) and, first, the idle-memory figure measured from `/proc/self/statm`. Baselines in the
//! same run: `baseline/mkdir+write+read (tokio::fs)` (the same file steps, unconfined) and
//! `baseline/spawn /bin/true` (the floor of any process-based tool call).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{ExecuteRequest, Sandbox, SandboxBackend, SandboxSpec};
use criterion::{Criterion, criterion_group};

/// Sandboxes kept alive for the idle-memory measurement.
const IDLE_SESSIONS: usize = 10_000;
/// Page size assumed for `/proc/self/statm` (x86-64 and most aarch64 Linux kernels).
const PAGE_BYTES: u64 = 4096;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn bench_create_to_first_result(c: &mut Criterion) {
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let spec = SandboxSpec::new();
    c.bench_function("isolate/create+write+read", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let backend = backend.clone();
            let spec = spec.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let sb = backend.create(&spec).await.unwrap();
                    sb.write_file("/workspace/hello.txt", Bytes::from_static(b"hello"))
                        .await
                        .unwrap();
                    let data = sb.read_file("/workspace/hello.txt", None).await.unwrap();
                    total += start.elapsed();
                    assert_eq!(&data[..], b"hello");
                    backend.destroy(sb.id()).await.unwrap();
                }
                total
            }
        });
    });
}

/// Baselines measured in the same run, for ratios: the same steps with plain `tokio::fs` (no
/// confinement, no sandbox bookkeeping), and the cheapest process start (`/bin/true`), which is
/// what any shell- or container-based tool call pays at the least.
fn bench_baselines(c: &mut Criterion) {
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU64::new(0);
    c.bench_function("baseline/mkdir+write+read (tokio::fs)", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let base = root.path().to_path_buf();
            let first = counter.fetch_add(iters, std::sync::atomic::Ordering::Relaxed);
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let dir = base.join(format!("d{}", first + i));
                    let start = Instant::now();
                    tokio::fs::create_dir_all(dir.join("workspace"))
                        .await
                        .unwrap();
                    let f = dir.join("workspace/hello.txt");
                    tokio::fs::write(&f, b"hello").await.unwrap();
                    let data = tokio::fs::read(&f).await.unwrap();
                    total += start.elapsed();
                    assert_eq!(&data[..], b"hello");
                    tokio::fs::remove_dir_all(&dir).await.unwrap();
                }
                total
            }
        });
    });
    c.bench_function("baseline/spawn /bin/true", |b| {
        b.to_async(&rt).iter(|| async {
            tokio::process::Command::new("/bin/true")
                .status()
                .await
                .unwrap()
        });
    });
}

fn bench_file_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    c.bench_function("isolate/write+read 1KiB", |b| {
        let data = Bytes::from(vec![b'x'; 1024]);
        b.to_async(&rt).iter(|| {
            let sb = sb.clone();
            let data = data.clone();
            async move {
                sb.write_file("src/file.txt", data).await.unwrap();
                sb.read_file("src/file.txt", None).await.unwrap()
            }
        });
    });
}

fn bench_execute(c: &mut Criterion) {
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    c.bench_function("isolate/execute 1+2", |b| {
        b.to_async(&rt).iter(|| {
            let sb = sb.clone();
            async move { sb.execute(ExecuteRequest::new("1 + 2")).await.unwrap() }
        });
    });
    c.bench_function("isolate/execute fs write+read", |b| {
        b.to_async(&rt).iter(|| {
            let sb = sb.clone();
            async move {
                sb.execute(ExecuteRequest::new(
                    "fs.writeFile('n.txt', 'hi'); fs.readFile('n.txt')",
                ))
                .await
                .unwrap()
            }
        });
    });
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * PAGE_BYTES
}

/// Create IDLE_SESSIONS sandboxes, keep them, and report RSS growth per session.
fn idle_memory_per_session() {
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let spec = SandboxSpec::new();
    rt.block_on(async {
        // Warm the allocator and the runtime so the baseline is fair.
        for _ in 0..100 {
            let sb = backend.create(&spec).await.unwrap();
            backend.destroy(sb.id()).await.unwrap();
        }
        let before = resident_bytes();
        let start = Instant::now();
        let mut live: Vec<Arc<dyn Sandbox>> = Vec::with_capacity(IDLE_SESSIONS);
        for _ in 0..IDLE_SESSIONS {
            live.push(backend.create(&spec).await.unwrap());
        }
        let took = start.elapsed();
        let after = resident_bytes();
        let per = after.saturating_sub(before) / IDLE_SESSIONS as u64;
        println!(
            "isolate/idle memory: {IDLE_SESSIONS} live sandboxes, RSS {} -> {} KiB, {per} bytes per idle session; \
             created in {:.1} ms ({:.1} µs each)",
            before / 1024,
            after / 1024,
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e6 / IDLE_SESSIONS as f64,
        );
        drop(live);
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench_create_to_first_result, bench_baselines, bench_file_round_trip, bench_execute
}

fn main() {
    idle_memory_per_session();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
