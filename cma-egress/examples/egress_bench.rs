//! Load tool for comparing the egress proxy with other intercepting proxies (driven by
//! `scripts/egress-mitm-bench.sh`). Each role runs in its own process so they can be pinned to
//! different CPUs:
//!
//! ```text
//! egress_bench upstream --dir DIR                 # HTTPS upstream; writes DIR/upstream-ca.pem, DIR/upstream.port
//! egress_bench proxy --dir DIR [--threads N]      # our proxy, intercepting and injecting; writes
//!                                                 # DIR/sandbox-ca.pem, DIR/proxy.port
//! egress_bench load --proxy ADDR --port UPSTREAM_PORT --ca CA.pem [--connections N] [--seconds S]
//!                                                 # keep-alive HTTPS through ADDR (CONNECT + TLS
//!                                                 # trusting CA.pem); prints requests/s
//! ```
//!
//! Every proxy under test must inject `authorization: Bearer bench-secret-value`; the upstream
//! reports whether it saw it and the load tool refuses to report a figure otherwise.

#[path = "../benches/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn usage() -> ! {
    eprintln!(
        "usage: egress_bench upstream --dir DIR | proxy --dir DIR [--threads N] | load --proxy ADDR --port PORT --ca FILE [--connections N] [--seconds S]"
    );
    std::process::exit(2);
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads").map_or(1, |t| t.parse().unwrap_or(1));
    match args.get(1).map(String::as_str) {
        Some("upstream") => {
            let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| usage()));
            runtime(threads).block_on(async move {
                let pki = support::Pki::new();
                let addr = support::start_upstream(Some(pki.server.clone())).await;
                std::fs::write(dir.join("upstream-ca.pem"), &pki.ca_pem).unwrap();
                std::fs::write(dir.join("upstream.port"), addr.port().to_string()).unwrap();
                std::future::pending::<()>().await;
            });
        }
        Some("proxy") => {
            let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| usage()));
            let port: u16 = std::fs::read_to_string(dir.join("upstream.port"))
                .expect("start the upstream first")
                .trim()
                .parse()
                .unwrap();
            let ca = CertificateDer::from_pem_file(dir.join("upstream-ca.pem")).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            runtime(threads).block_on(async move {
                let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let (_proxy, listening, ca) =
                    support::start_proxy(roots, upstream, upstream, "127.0.0.1:0".parse().unwrap())
                        .await;
                std::fs::write(dir.join("sandbox-ca.pem"), ca.cert_pem()).unwrap();
                std::fs::write(
                    dir.join("proxy.port"),
                    listening.local_addr().port().to_string(),
                )
                .unwrap();
                std::future::pending::<()>().await;
            });
        }
        Some("load") => {
            let proxy: std::net::SocketAddr = arg(&args, "--proxy")
                .unwrap_or_else(|| usage())
                .parse()
                .unwrap();
            let port: u16 = arg(&args, "--port")
                .unwrap_or_else(|| usage())
                .parse()
                .unwrap();
            let ca = CertificateDer::from_pem_file(arg(&args, "--ca").unwrap_or_else(|| usage()))
                .unwrap();
            let conns: usize = arg(&args, "--connections").map_or(8, |c| c.parse().unwrap());
            let secs: u64 = arg(&args, "--seconds").map_or(10, |c| c.parse().unwrap());
            let (count, elapsed) = runtime(threads).block_on(load(proxy, port, ca, conns, secs));
            println!(
                "requests={count} seconds={:.2} rps={:.1}",
                elapsed.as_secs_f64(),
                count as f64 / elapsed.as_secs_f64()
            );
        }
        _ => usage(),
    }
}

async fn load(
    proxy: std::net::SocketAddr,
    port: u16,
    ca: CertificateDer<'static>,
    conns: usize,
    secs: u64,
) -> (u64, Duration) {
    let count = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..conns {
        let mut c = support::Client::proxy_https(proxy, port, ca.clone()).await;
        assert!(
            c.get().await,
            "the proxy under test did not inject the header; refusing to report"
        );
        clients.push(c);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut c in clients {
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                c.get().await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (count.load(Ordering::Relaxed), start.elapsed())
}
