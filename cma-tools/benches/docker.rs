//! The `read`, `write`, `grep` and `bash` tools on a Docker sandbox, each against the `docker
//! exec` CLI command that does the same thing.
//!
//! `cargo bench -p cma-tools --bench docker` (needs dockerd and the test image:
//! `source .ci/setup.d/20-docker.sh`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cma_sandbox::docker::{DockerBackend, DockerConfig};
use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
use cma_tools::testing::call_tool_in;
use cma_tools::{ToolContext, ToolRegistry, agent_toolset};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn cli(args: &[&str], stdin: Option<&[u8]>) {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker CLI");
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let image = std::env::var("CMA_DOCKER_IMAGE").unwrap_or_else(|_| "cma-sandbox-test:2".into());
    let mut cfg = DockerConfig::new(image);
    cfg.instance = "bench-tools".into();
    let backend = rt
        .block_on(DockerBackend::connect(cfg))
        .expect("the docker bench needs dockerd and the test image (.ci/setup.d/20-docker.sh)");
    rt.block_on(backend.reconcile(&Default::default())).unwrap();
    let sb: Arc<dyn Sandbox> = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    let cid = rt.block_on(backend.container_id(sb.id())).unwrap();
    // 10 directories × 10 files × 40 lines, one "needle" line per file.
    rt.block_on(async {
        for d in 0..10 {
            for f in 0..10 {
                let text: String = (0..40)
                    .map(|l| {
                        if l == 17 {
                            "let needle = 1;\n".to_owned()
                        } else {
                            format!("fn line_{l}() {{ /* {d}/{f} */ }}\n")
                        }
                    })
                    .collect();
                sb.write_file(&format!("src/d{d}/f{f}.rs"), Bytes::from(text))
                    .await
                    .unwrap();
            }
        }
    });
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    let ctx = ToolContext::new(sb.clone());
    let call = |tool: &str, input: serde_json::Value| {
        let r = rt.block_on(call_tool_in(reg.get(tool).unwrap().as_ref(), &ctx, input));
        assert!(!r.is_error, "{tool}: {:?}", r.text());
    };

    let mut g = c.benchmark_group("docker_tools");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("read/tool", |b| {
        b.iter(|| call("read", json!({"file_path": "src/d3/f4.rs"})))
    });
    g.bench_function("read/docker_exec_cli", |b| {
        b.iter(|| cli(&["exec", &cid, "cat", "/workspace/src/d3/f4.rs"], None))
    });
    g.bench_function("write/tool", |b| {
        b.iter(|| {
            call(
                "write",
                json!({"file_path": "out/w.txt", "content": "hello\n"}),
            )
        })
    });
    g.bench_function("write/docker_exec_cli", |b| {
        b.iter(|| {
            cli(
                &[
                    "exec",
                    "-i",
                    &cid,
                    "sh",
                    "-c",
                    "mkdir -p /workspace/out && cat > /workspace/out/w.txt",
                ],
                Some(b"hello\n"),
            )
        })
    });
    g.bench_function("grep/tool", |b| {
        b.iter(|| call("grep", json!({"pattern": "needle"})))
    });
    // A pattern with regex syntax: walked here with batched listings and reads (a plain
    // literal is searched inside the sandbox in one call).
    g.bench_function("grep_regex/tool", |b| {
        b.iter(|| call("grep", json!({"pattern": "ne+dle"})))
    });
    g.bench_function("grep/docker_exec_cli", |b| {
        b.iter(|| cli(&["exec", &cid, "grep", "-rn", "needle", "/workspace"], None))
    });
    g.bench_function("bash/tool", |b| {
        b.iter(|| call("bash", json!({"command": "echo hi"})))
    });
    g.bench_function("bash/docker_exec_cli", |b| {
        b.iter(|| cli(&["exec", &cid, "bash", "-c", "echo hi"], None))
    });
    g.finish();
    rt.block_on(ctx.close());
    rt.block_on(backend.destroy(sb.id())).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
