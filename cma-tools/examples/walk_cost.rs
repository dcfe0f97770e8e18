//! What walking a deep or wide tree costs on the isolate backend: `glob`, `grep`, a recursive
//! `remove`, a workspace export and `destroy`, on directory chains of several depths and on a
//! wide tree, printed as wall-clock times and as ratios to the 100-deep chain (a walk linear in
//! the entries keeps the chain ratios near the depth ratios).
//!
//! `cargo run --release -p cma-tools --example walk_cost [depth ...]`
//!
//! Chains are built with relative `mkdir`s (a chain can be deeper than a host path can name).
//! Sandbox paths are limited to 4096 bytes, so the tools see at most ~2040 levels of a chain of
//! one-letter names; deeper levels exist on disk and matter to `remove`, export and `destroy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cma_sandbox::isolate::IsolateBackend;
use cma_sandbox::{Sandbox, SandboxBackend, SandboxSpec};
use cma_tools::{ToolContext, ToolRegistry, agent_toolset};
use futures::StreamExt;
use serde_json::json;

/// The host directory of a sandbox's workspace (`<root>/<id>/workspace`).
fn host_workspace(root: &std::path::Path, sb: &dyn Sandbox) -> std::path::PathBuf {
    root.join(sb.id().as_str()).join("workspace")
}

/// `depth` nested directories `a/a/…`, each holding one file `f`, built with relative paths.
fn build_chain(top: &std::path::Path, depth: usize) {
    let back = std::env::current_dir().unwrap();
    std::env::set_current_dir(top).unwrap();
    for _ in 0..depth {
        std::fs::create_dir("a").unwrap();
        std::env::set_current_dir("a").unwrap();
        std::fs::write("f", b"needle\n").unwrap();
    }
    std::env::set_current_dir(back).unwrap();
}

/// `a/` holding `dirs` directories of `files` files each.
fn build_wide(top: &std::path::Path, dirs: usize, files: usize) {
    std::fs::create_dir(top.join("a")).unwrap();
    for d in 0..dirs {
        let dir = top.join(format!("a/d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f}.txt")), b"hay\nneedle\n").unwrap();
        }
    }
}

async fn timed<F: std::future::Future<Output = String>>(f: F) -> (Duration, String) {
    let t = Instant::now();
    let s = f.await;
    (t.elapsed(), s)
}

async fn measure(label: &str, build: impl Fn(&std::path::Path)) -> Vec<(String, Duration)> {
    let root = tempfile::tempdir().unwrap();
    let backend = IsolateBackend::new(root.path()).unwrap();
    let sb = backend.create(&SandboxSpec::new()).await.unwrap();
    build(&host_workspace(root.path(), &*sb));
    let mut reg = ToolRegistry::new();
    reg.extend(agent_toolset());
    let ctx = ToolContext::new(sb.clone());
    let mut out = Vec::new();
    for (name, tool, input) in [
        ("glob **/f", "glob", json!({"pattern": "**/f"})),
        ("glob **/*.txt", "glob", json!({"pattern": "**/*.txt"})),
        ("grep needle", "grep", json!({"pattern": "needle"})),
        ("grep ne+dle", "grep", json!({"pattern": "ne+dle"})),
    ] {
        let (d, s) = timed(async {
            let r = reg.dispatch(&ctx, tool, input.clone()).await.unwrap();
            let text = r.text().unwrap_or_default().to_owned();
            format!("{} lines", text.lines().count())
        })
        .await;
        println!("{label:>14} {name:<16} {:>10.1} ms  ({s})", ms(d));
        out.push((name.to_owned(), d));
    }
    let (d, s) = timed(async {
        let mut stream = sb.export_workspace().await.unwrap();
        let mut n = 0usize;
        let mut err = None;
        while let Some(c) = stream.next().await {
            match c {
                Ok(c) => n += c.len(),
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        match err {
            Some(e) => format!("{n} bytes, then {e}"),
            None => format!("{n} bytes"),
        }
    })
    .await;
    println!("{label:>14} {:<16} {:>10.1} ms  ({s})", "export", ms(d));
    out.push(("export".into(), d));
    let (d, s) = timed(async {
        match sb.remove("a", true).await {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        }
    })
    .await;
    println!("{label:>14} {:<16} {:>10.1} ms  ({s})", "remove -r", ms(d));
    out.push(("remove -r".into(), d));
    build(&host_workspace(root.path(), &*sb));
    let (d, s) = timed(async {
        match backend.destroy(sb.id()).await {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        }
    })
    .await;
    println!("{label:>14} {:<16} {:>10.1} ms  ({s})", "destroy", ms(d));
    out.push(("destroy".into(), d));
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let depths: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![100, 1000, 3000]
        } else {
            args
        }
    };
    let mut base: Option<Vec<(String, Duration)>> = None;
    for depth in &depths {
        let depth = *depth;
        let rows = measure(&format!("chain {depth}"), |top| build_chain(top, depth)).await;
        match &base {
            None => base = Some(rows),
            Some(b) => {
                let ratios: Vec<String> = rows
                    .iter()
                    .zip(b)
                    .map(|((n, d), (_, b0))| {
                        format!("{n} ×{:.1}", d.as_secs_f64() / b0.as_secs_f64().max(1e-9))
                    })
                    .collect();
                println!(
                    "{:>14} vs chain {}: {}",
                    format!("chain {depth}"),
                    depths[0],
                    ratios.join(", ")
                );
            }
        }
    }
    measure("wide 200×100", |top| build_wide(top, 200, 100)).await;
    let _ = Arc::new(());
}
