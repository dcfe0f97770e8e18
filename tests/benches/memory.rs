//! Cost of the memory-store sync and of skill extraction.
//!
//! `cargo bench -p cma-tests --bench memory -- --warm-up-time 1 --measurement-time 3`
//!
//! * `sync_unchanged/N`: one `SessionMemory::sync_now` over a store of `N` memories (1 KiB each)
//!   mounted in an isolate sandbox, when nothing changed: a `view=basic` listing through the
//!   emulator over loopback HTTP plus a scan of the folder (hashes come from the size/mtime
//!   cache). Baseline in the same run: `list_basic/N`, the listing alone.
//! * `sync_one_edit/N`: the same with one file edited before each sync (one upload).
//! * `extract_tar/N`: `extract_archive` of a tar of `N` 4 KiB files.

use std::sync::Arc;

use cma_core::client::{Client, ClientConfig, Credential, MemoryView};
use cma_core::emulator::{
    Emulator, EmulatorConfig, MemoryAttachment, Script, ScriptEnd, SessionAttachments,
};
use cma_core::runner::memory::{MemoryConfig, MemoryMount, SessionMemory};
use cma_core::runner::skills::{SkillLimits, extract_archive};
use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{Mount, SandboxBackend, SandboxSpec};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const ROOT: &str = "/mnt/memory/bench";

struct Setup {
    emu: Emulator,
    client: Client,
    token: Credential,
    memory: SessionMemory,
    sandbox: Arc<dyn cma_sandbox::Sandbox>,
    _dir: tempfile::TempDir,
}

async fn setup(n: usize) -> Setup {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.add_environment("env_b", "b").unwrap();
    emu.add_memory_store("memstore_b").unwrap();
    let body = "x".repeat(1024);
    for i in 0..n {
        emu.put_memory("memstore_b", &format!("/d{}/m{i}.md", i % 10), &body)
            .unwrap();
    }
    let att = SessionAttachments {
        skills: vec![],
        memory_stores: vec![MemoryAttachment::read_write("memstore_b", Some(ROOT))],
    };
    emu.create_session_with("env_b", None, Script::new(vec![], ScriptEnd::Idle), &att)
        .unwrap();
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emu.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let env = client.environment(
        "env_b",
        Credential::environment_key(emu.environment_key("env_b").unwrap()),
    );
    let work = env
        .poll(&cma_core::client::PollParams::long_poll())
        .await
        .unwrap()
        .unwrap();
    let token = Credential::sessions_token(work.sessions_token().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    let backend = IsolateBackend::new(dir.path().join("iso")).unwrap();
    let mut spec = SandboxSpec::new();
    spec.mounts.push(Mount::new(ROOT, mount));
    let sandbox = backend.create(&spec).await.unwrap();
    let memory = SessionMemory::download(
        sandbox.clone(),
        &client,
        &token,
        vec![MemoryMount {
            store_id: "memstore_b".into(),
            root: ROOT.into(),
            read_only: false,
        }],
        MemoryConfig::default(),
    )
    .await
    .unwrap();
    Setup {
        emu,
        client,
        token,
        memory,
        sandbox,
        _dir: dir,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("memory");
    for n in [10usize, 100, 1000] {
        let mut s = rt.block_on(setup(n));
        g.bench_with_input(BenchmarkId::new("sync_unchanged", n), &n, |b, _| {
            b.iter(|| rt.block_on(s.memory.sync_now()));
        });
        let store = s.client.memory_store("memstore_b", s.token.clone());
        g.bench_with_input(BenchmarkId::new("list_basic", n), &n, |b, _| {
            b.iter(|| {
                rt.block_on(store.list_all(MemoryView::Basic, 10_000))
                    .unwrap()
            });
        });
        let mut k = 0u64;
        g.bench_with_input(BenchmarkId::new("sync_one_edit", n), &n, |b, _| {
            b.iter(|| {
                k += 1;
                rt.block_on(async {
                    s.sandbox
                        .write_file(&format!("{ROOT}/d0/m0.md"), format!("edit {k}").into())
                        .await
                        .unwrap();
                    s.memory.sync_now().await;
                })
            });
        });
        rt.block_on(async {
            s.memory.dispose().await;
        });
        let emu = s.emu;
        rt.block_on(emu.shutdown());
    }
    for n in [10usize, 100, 1000] {
        let mut t = tar::Builder::new(Vec::new());
        for i in 0..n {
            let mut h = tar::Header::new_gnu();
            h.set_size(4096);
            h.set_mode(0o644);
            t.append_data(&mut h, format!("skill/f{i}.txt"), &[b'a'; 4096][..])
                .unwrap();
        }
        let bytes = t.into_inner().unwrap();
        g.bench_with_input(BenchmarkId::new("extract_tar", n), &bytes, |b, bytes| {
            b.iter(|| extract_archive(bytes, &SkillLimits::default()).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
