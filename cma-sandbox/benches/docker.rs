//! Docker backend: create → first exec, against the `docker run` CLI and against raw Engine API
//! calls (bollard) on the same image and network; and the per-call cost of the file operations
//! and exec against `docker exec` CLI equivalents.
//!
//! `cargo bench -p cma-sandbox --bench docker --features docker` (needs dockerd and the test
//! image: `source .ci/setup.d/20-docker.sh`). Each create iteration makes and removes a real
//! container, so the group uses few samples.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bytes::Bytes;
use cma_sandbox::docker::{DockerBackend, DockerConfig};
use cma_sandbox::{ExecRequest, Sandbox, SandboxBackend, SandboxSpec};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;

fn image() -> String {
    std::env::var("CMA_DOCKER_IMAGE").unwrap_or_else(|_| "cma-sandbox-test:1".into())
}

fn docker_cli(args: &[&str]) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn raw_create_exec(docker: &Docker, image: &str, network: &str) -> String {
    let name = format!("cma-bench-raw-{}", uuid::Uuid::new_v4().simple());
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(image.into()),
                cmd: Some(vec!["sleep".into(), "infinity".into()]),
                host_config: Some(HostConfig {
                    network_mode: Some(network.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker.start_container(&name, None).await.unwrap();
    let exec = docker
        .create_exec(
            &name,
            CreateExecOptions::<String> {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec!["true".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.unwrap()
    {
        while let Some(frame) = output.next().await {
            let _: LogOutput = frame.unwrap();
        }
    }
    docker.inspect_exec(&exec.id).await.unwrap();
    name
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = DockerConfig::new(image());
    cfg.instance = "bench".into();
    let backend = rt
        .block_on(DockerBackend::connect(cfg.clone()))
        .expect("the docker bench needs dockerd and the test image (.ci/setup.d/20-docker.sh)");
    // Leftovers of an interrupted run.
    rt.block_on(backend.reconcile(&Default::default())).unwrap();
    let docker = backend.client().clone();
    let img = image();

    let mut g = c.benchmark_group("docker_create_first_exec");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    g.bench_function("backend", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
                    let out = sb.exec(ExecRequest::argv(["true"])).await.unwrap();
                    total += t.elapsed();
                    assert!(out.success());
                    backend.destroy(sb.id()).await.unwrap();
                }
                total
            })
        })
    });
    g.bench_function("raw_engine_api", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let name = raw_create_exec(&docker, &img, &cfg.network).await;
                    total += t.elapsed();
                    docker
                        .remove_container(
                            &name,
                            Some(RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await
                        .unwrap();
                }
                total
            })
        })
    });
    g.bench_function("docker_run_cli", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let name = format!("cma-bench-cli-{}", uuid::Uuid::new_v4().simple());
                let t = Instant::now();
                docker_cli(&[
                    "run",
                    "--name",
                    &name,
                    "--network",
                    &cfg.network,
                    &img,
                    "true",
                ]);
                total += t.elapsed();
                docker_cli(&["rm", "-f", &name]);
            }
            total
        })
    });
    g.finish();

    // Per-call costs on one live sandbox.
    let sb: Arc<dyn Sandbox> = rt.block_on(backend.create(&SandboxSpec::new())).unwrap();
    let cid = rt.block_on(backend.container_id(sb.id())).unwrap();
    rt.block_on(sb.write_file("src/a.txt", Bytes::from("hello\n".repeat(100))))
        .unwrap();
    let mut g = c.benchmark_group("docker_ops");
    g.sample_size(20).warm_up_time(Duration::from_secs(1));
    g.bench_function("lstat", |b| {
        b.iter(|| rt.block_on(sb.lstat("src/a.txt")).unwrap())
    });
    g.bench_function("read_file", |b| {
        b.iter(|| {
            rt.block_on(sb.read_file("src/a.txt", Some(256 * 1024)))
                .unwrap()
        })
    });
    g.bench_function("write_file", |b| {
        b.iter(|| {
            rt.block_on(sb.write_file("src/b.txt", Bytes::from_static(b"data\n")))
                .unwrap()
        })
    });
    g.bench_function("exec_true", |b| {
        b.iter(|| rt.block_on(sb.exec(ExecRequest::argv(["true"]))).unwrap())
    });
    g.bench_function("docker_exec_cli_cat", |b| {
        b.iter(|| docker_cli(&["exec", &cid, "cat", "/workspace/src/a.txt"]))
    });
    g.finish();
    rt.block_on(backend.destroy(sb.id())).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
