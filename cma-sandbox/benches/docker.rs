//! Docker backend: create → first exec, against the `docker run` CLI and against raw Engine API
//! calls (bollard) on the same image and network; and the per-call cost of the file operations
//! and exec against `docker exec` CLI equivalents.
//!
//! `cargo bench -p cma-sandbox --bench docker --features docker` (needs dockerd and the test
//! image: `source .ci/setup.d/20-docker.sh`). The create comparison is not a criterion group:
//! it runs `CMA_BENCH_CREATE_ROUNDS` (default 15) rounds of the four ways in turn (backend with
//! a warm pool of one, backend without a pool, raw API, CLI) and prints each p50 with its
//! ratios against the CLI and the raw API floor of the same run.

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
    std::env::var("CMA_DOCKER_IMAGE").unwrap_or_else(|_| "cma-sandbox-test:2".into())
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

    // create → first exec, four ways, interleaved round by round so that load on the machine
    // weighs on each the same; p50 of each and the ratios, all from this run.
    let rounds: usize = std::env::var("CMA_BENCH_CREATE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut pool_cfg = cfg.clone();
    pool_cfg.instance = "bench-pool".into();
    pool_cfg.prestart = 1;
    let pooled = rt.block_on(DockerBackend::connect(pool_cfg)).unwrap();
    rt.block_on(pooled.reconcile(&Default::default())).unwrap();
    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..rounds {
        // Warm pool: claim + first exec (the refill is waited out, untimed).
        rt.block_on(async {
            pooled.fill_pool().await.unwrap();
            let before = pooled.pool_stats().claimed;
            let t = Instant::now();
            let sb = pooled.create(&SandboxSpec::new()).await.unwrap();
            let out = sb.exec(ExecRequest::argv(["true"])).await.unwrap();
            times[0].push(t.elapsed());
            assert!(out.success());
            assert_eq!(pooled.pool_stats().claimed, before + 1, "not from the pool");
            pooled.destroy(sb.id()).await.unwrap();
            pooled.fill_pool().await.unwrap();
        });
        // No pool: create + start + first exec.
        rt.block_on(async {
            let t = Instant::now();
            let sb = backend.create(&SandboxSpec::new()).await.unwrap();
            let out = sb.exec(ExecRequest::argv(["true"])).await.unwrap();
            times[1].push(t.elapsed());
            assert!(out.success());
            backend.destroy(sb.id()).await.unwrap();
        });
        // Raw Engine API floor.
        rt.block_on(async {
            let t = Instant::now();
            let name = raw_create_exec(&docker, &img, &cfg.network).await;
            times[2].push(t.elapsed());
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
        });
        // `docker run` CLI.
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
        times[3].push(t.elapsed());
        docker_cli(&["rm", "-f", &name]);
    }
    rt.block_on(pooled.close_pool()).unwrap();
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let [pool_t, plain_t, raw_t, cli_t] = &mut times;
    let (pool_ms, plain_ms, raw_ms, cli_ms) = (p50(pool_t), p50(plain_t), p50(raw_t), p50(cli_t));
    println!("create -> first exec, p50 of {rounds} interleaved rounds:");
    println!("  docker run CLI        {cli_ms:8.1} ms");
    println!("  raw Engine API floor  {raw_ms:8.1} ms");
    for (what, ms) in [
        ("backend, warm pool", pool_ms),
        ("backend, no pool", plain_ms),
    ] {
        println!(
            "  {what:<20}  {ms:8.1} ms  = {:.1}x faster than docker run (target >= 5x), {:.2}x the raw API floor (target <= 1.2x)",
            cli_ms / ms,
            ms / raw_ms
        );
    }

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
