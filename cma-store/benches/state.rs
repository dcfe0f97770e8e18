//! StateStore operation latency per backend: the calls the control plane makes on every session
//! transition (read-modify-write of the session + one log entry), every webhook, and every lease.
//!
//! `cargo bench -p cma-store --all-features --bench state`. Postgres runs when
//! `CMA_TEST_POSTGRES_URL` is set (`.ci/setup.d/40-postgres.sh`), in schema `cma_bench`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cma_store::state::{
    LeaseClaim, MemoryStateStore, Precondition, SessionRecord, SessionStatus, SqliteStateStore,
    StateStore,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn stores(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
) -> Vec<(&'static str, Arc<dyn StateStore>)> {
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut out: Vec<(&'static str, Arc<dyn StateStore>)> = vec![
        ("memory", Arc::new(MemoryStateStore::new())),
        (
            "sqlite",
            Arc::new(
                rt.block_on(SqliteStateStore::open(dir.join("bench.db")))
                    .expect("sqlite"),
            ),
        ),
    ];
    #[cfg(feature = "postgres")]
    match std::env::var("CMA_TEST_POSTGRES_URL") {
        Ok(url) => {
            let options = cma_store::state::PostgresOptions::new(url).schema("cma_bench");
            let store = rt
                .block_on(cma_store::state::PostgresStateStore::connect(options))
                .expect("postgres");
            out.push(("postgres", Arc::new(store)));
        }
        Err(_) => eprintln!("CMA_TEST_POSTGRES_URL not set: skipping the Postgres store"),
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let n = AtomicU64::new(0);
    let base = chrono::Utc::now();
    for (name, store) in stores(&rt, dir.path()) {
        let mut group = c.benchmark_group(format!("state/{name}"));
        group.bench_function("session_transition", |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    let id = format!("bench_sesn_{}", i % 64);
                    let current = store.get_session(&id).await.unwrap();
                    let (mut record, pre) = match current {
                        Some(r) => {
                            let v = r.version;
                            (r, Precondition::Version(v))
                        }
                        None => (
                            SessionRecord::new(id.as_str(), "isolate", base),
                            Precondition::Absent,
                        ),
                    };
                    record.status = SessionStatus::Running;
                    store.put_session(&record, pre).await.unwrap();
                    store
                        .append_transition(&id, base, "running", "")
                        .await
                        .unwrap();
                }
            })
        });
        group.bench_function("record_webhook", |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    assert!(
                        store
                            .record_webhook(&format!("bench_msg_{name}_{i}"), base)
                            .await
                            .unwrap()
                    );
                }
            })
        });
        group.bench_function("claim_release_lease", |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    let claim = LeaseClaim {
                        work_id: format!("bench_work_{i}"),
                        session_id: "bench_sesn".into(),
                        owner: "bench".into(),
                        ttl: Duration::from_secs(30),
                    };
                    store.claim_lease(&claim, base).await.unwrap();
                    assert!(store.release_lease(&claim.work_id, "bench").await.unwrap());
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
