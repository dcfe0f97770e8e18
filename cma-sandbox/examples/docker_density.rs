//! Sustained Docker sandboxes per GiB: start N sandboxes as a live session has them (the file
//! helper started by a write, a persistent bash open, one command run), let them idle, then
//! measure each container's memory (Engine stats: usage, and usage minus inactive page cache =
//! the working set `docker stats` shows) plus the RSS of its `containerd-shim` outside the
//! container's cgroup.
//!
//! `cargo run --release -p cma-sandbox --features docker --example docker_density -- [N]`
//! (default N = 20; needs dockerd and the test image).

use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::StatsOptions;
use bytes::Bytes;
use cma_sandbox::docker::{DockerBackend, DockerConfig};
use cma_sandbox::{ExecRequest, Sandbox, SandboxBackend, SandboxSpec};
use futures::StreamExt;

/// (RSS, PSS) in bytes of the shim process serving container `cid` (0 if not found). PSS
/// splits the pages shims share (the binary) among them.
fn shim_rss(cid: &str) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for e in dir.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("containerd-shim") && cmd.contains(cid) {
            let field = |file: &str, key: &str| {
                std::fs::read_to_string(e.path().join(file))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(str::to_owned))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .map_or(0, |kb| kb * 1024)
            };
            return (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"));
        }
    }
    (0, 0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let image = std::env::var("CMA_DOCKER_IMAGE").unwrap_or_else(|_| "cma-sandbox-test:2".into());
    let mut cfg = DockerConfig::new(image);
    cfg.instance = "density".into();
    let backend = DockerBackend::connect(cfg).await?;
    backend.reconcile(&Default::default()).await?;
    let mut live: Vec<(Arc<dyn Sandbox>, cma_sandbox::InteractiveProcess)> = Vec::new();
    for _ in 0..n {
        let sb = backend.create(&SandboxSpec::new()).await?;
        sb.write_file("hello.txt", Bytes::from_static(b"hi\n"))
            .await?;
        let shell = sb
            .open_interactive(ExecRequest::argv(["/bin/bash", "--noprofile", "--norc"]))
            .await?;
        sb.exec(ExecRequest::shell("cat hello.txt >/dev/null"))
            .await?;
        live.push((sb, shell));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut usage, mut working, mut shims, mut shims_pss) = (0u64, 0u64, 0u64, 0u64);
    for (sb, _) in &live {
        let cid = backend.container_id(sb.id()).await?;
        let mut s = backend.client().stats(
            &cid,
            Some(StatsOptions {
                stream: false,
                one_shot: true,
            }),
        );
        if let Some(Ok(st)) = s.next().await {
            let m = st.memory_stats.unwrap_or_default();
            let u = m.usage.unwrap_or(0);
            let stats = m.stats.unwrap_or_default();
            let inactive = stats
                .get("total_inactive_file")
                .or_else(|| stats.get("inactive_file"))
                .copied()
                .unwrap_or(0);
            usage += u;
            working += u.saturating_sub(inactive);
        }
        let (rss, pss) = shim_rss(&cid);
        shims += rss;
        shims_pss += pss;
    }
    let per = |x: u64| x as f64 / n as f64 / (1024.0 * 1024.0);
    let per_sandbox = (working + shims_pss) as f64 / n as f64;
    println!("sandboxes: {n} (each: sleep under docker-init, python3 file helper, idle bash)");
    println!("cgroup usage per sandbox:        {:.2} MiB", per(usage));
    println!("working set per sandbox:         {:.2} MiB", per(working));
    println!("containerd-shim RSS per sandbox: {:.2} MiB", per(shims));
    println!("containerd-shim PSS per sandbox: {:.2} MiB", per(shims_pss));
    println!(
        "sustained sandboxes per GiB (working set + shim PSS): {:.0}",
        (1u64 << 30) as f64 / per_sandbox
    );
    for (sb, shell) in live {
        shell.control.kill().await;
        backend.destroy(sb.id()).await?;
    }
    Ok(())
}
