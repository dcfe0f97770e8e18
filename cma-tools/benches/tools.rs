//! Per-call cost of the built-in tools through the registry (validation, path policy, sandbox
//! calls, result conversion) on the isolate backend and the memory sandbox, and the round trip of
//! one command through the persistent local shell.
//!
//! `cargo bench -p cma-tools --bench tools`

use std::sync::Arc;
use std::time::Duration;

use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
use cma_tools::testing::MemorySandbox;
use cma_tools::{LocalShellLauncher, ToolContext, ToolRegistry, agent_toolset};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn registry() -> ToolRegistry {
    let mut r = ToolRegistry::new();
    r.extend(agent_toolset());
    r
}

/// 50 directories × 20 files × 40 lines, one "needle" line per file.
async fn populate(sb: &Arc<dyn Sandbox>) {
    for d in 0..50 {
        for f in 0..20 {
            let mut text = String::new();
            for l in 0..40 {
                if l == 17 {
                    text.push_str("let needle = 1;\n");
                } else {
                    text.push_str(&format!("fn line_{l}() {{ /* {d}/{f} */ }}\n"));
                }
            }
            let path = format!("{}/src/m{d}/f{f}.rs", sb.workdir());
            sb.write_file(&path, text.into_bytes().into())
                .await
                .unwrap();
        }
    }
}

fn bench_file_tools(c: &mut Criterion) {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(tmp.path()).unwrap();
    let isolate: Arc<dyn Sandbox> = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    let memory: Arc<dyn Sandbox> = Arc::new(MemorySandbox::new("/workspace"));
    let reg = registry();
    for (name, sb) in [("isolate", isolate), ("memory", memory)] {
        rt.block_on(populate(&sb));
        let ctx = ToolContext::new(sb);
        let mut g = c.benchmark_group(format!("tools/{name}"));
        g.sample_size(20).measurement_time(Duration::from_secs(3));
        g.bench_function("read 1.3 KiB file", |b| {
            b.to_async(&rt).iter(|| async {
                let r = reg
                    .dispatch(&ctx, "read", json!({"file_path": "src/m7/f3.rs"}))
                    .await
                    .unwrap();
                assert!(!r.is_error);
            })
        });
        g.bench_function("write 1 KiB file", |b| {
            let content = "x".repeat(1024);
            b.to_async(&rt).iter(|| async {
                let r = reg
                    .dispatch(
                        &ctx,
                        "write",
                        json!({"file_path": "out/w.txt", "content": content}),
                    )
                    .await
                    .unwrap();
                assert!(!r.is_error);
            })
        });
        g.bench_function("grep 1000 files", |b| {
            b.to_async(&rt).iter(|| async {
                let r = reg
                    .dispatch(&ctx, "grep", json!({"pattern": "needle"}))
                    .await
                    .unwrap();
                assert_eq!(r.text().unwrap().lines().count(), 1000);
            })
        });
        g.bench_function("glob **/*.rs over 1000 files", |b| {
            b.to_async(&rt).iter(|| async {
                let r = reg
                    .dispatch(&ctx, "glob", json!({"pattern": "**/*.rs"}))
                    .await
                    .unwrap();
                assert_eq!(r.text().unwrap().lines().count(), 200);
            })
        });
        g.finish();
    }
}

fn bench_bash_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::new(Arc::new(MemorySandbox::new("/workspace")))
        .with_shell_launcher(Arc::new(LocalShellLauncher::in_dir(dir.path())));
    let reg = registry();
    let mut g = c.benchmark_group("tools/bash");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("persistent shell `echo hi`", |b| {
        b.to_async(&rt).iter(|| async {
            let r = reg
                .dispatch(&ctx, "bash", json!({"command": "echo hi"}))
                .await
                .unwrap();
            assert_eq!(r.text(), Some("hi"));
        })
    });
    g.finish();
    rt.block_on(ctx.close());
}

criterion_group!(benches, bench_file_tools, bench_bash_round_trip);
criterion_main!(benches);
