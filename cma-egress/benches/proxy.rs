//! Added latency of the egress proxy on keep-alive connections, against a direct connection to
//! the same local server measured in the same run.
//!
//! * `keep_alive_http/{direct,proxy}`: plain HTTP, one request in flight.
//! * `intercepted_https/{direct,proxy_inject}`: TLS to the upstream; through the proxy the tunnel
//!   is intercepted with the sandbox CA and a header is injected from a secret.
//!
//! After the criterion groups, a percentile report runs the four paths interleaved (blocks of
//! 200 requests, 20 000 per path) and prints p50/p99 for each and the added latency
//! (proxied percentile minus direct percentile). Targets: p50 < 0.2 ms, p99 < 1 ms added.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use support::{Client, Pki, percentile, start_proxy, start_upstream};

struct Paths {
    rt: tokio::runtime::Runtime,
    _proxy: (cma_egress::EgressProxy, cma_egress::ListeningProxy),
    direct_http: Client,
    proxy_http: Client,
    direct_https: Client,
    proxy_https: Client,
}

fn setup() -> Paths {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (proxy, direct_http, proxy_http, direct_https, proxy_https) = rt.block_on(async {
        let pki = Pki::new();
        let http_up = start_upstream(None).await;
        let https_up = start_upstream(Some(pki.server.clone())).await;
        let (proxy, listening, ca) = start_proxy(
            pki.roots(),
            http_up,
            https_up,
            "127.0.0.1:0".parse().unwrap(),
        )
        .await;
        let addr = listening.local_addr();
        let mut proxy_https =
            Client::proxy_https(addr, https_up.port(), ca.cert_der().clone()).await;
        assert!(
            proxy_https.get().await,
            "the injected header must reach the upstream"
        );
        (
            (proxy, listening),
            Client::direct_http(http_up).await,
            Client::proxy_http(addr).await,
            Client::direct_https(https_up, pki.ca_der.clone()).await,
            proxy_https,
        )
    });
    Paths {
        rt,
        _proxy: proxy,
        direct_http,
        proxy_http,
        direct_https,
        proxy_https,
    }
}

fn run(rt: &tokio::runtime::Runtime, client: &mut Client, iters: u64) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            client.get().await;
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let mut p = setup();
    let mut g = c.benchmark_group("keep_alive_http");
    g.bench_function("direct", |b| {
        b.iter_custom(|n| run(&p.rt, &mut p.direct_http, n))
    });
    g.bench_function("proxy", |b| {
        b.iter_custom(|n| run(&p.rt, &mut p.proxy_http, n))
    });
    g.finish();
    let mut g = c.benchmark_group("intercepted_https");
    g.bench_function("direct", |b| {
        b.iter_custom(|n| run(&p.rt, &mut p.direct_https, n))
    });
    g.bench_function("proxy_inject", |b| {
        b.iter_custom(|n| run(&p.rt, &mut p.proxy_https, n))
    });
    g.finish();
    percentile_report(&mut p);
}

fn percentile_report(p: &mut Paths) {
    const BLOCK: usize = 200;
    const PER_PATH: usize = 20_000;
    let mut samples: [Vec<Duration>; 4] = Default::default();
    p.rt.block_on(async {
        for _ in 0..PER_PATH / BLOCK {
            let clients = [
                &mut p.direct_http,
                &mut p.proxy_http,
                &mut p.direct_https,
                &mut p.proxy_https,
            ];
            for (i, client) in clients.into_iter().enumerate() {
                for _ in 0..BLOCK {
                    let t = Instant::now();
                    client.get().await;
                    samples[i].push(t.elapsed());
                }
            }
        }
    });
    for s in &mut samples {
        s.sort();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let names = [
        "http direct",
        "http proxy",
        "https direct",
        "https proxy+inject",
    ];
    // Tails on a shared machine follow its load: print it with the figures.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nlatency per request, keep-alive, {PER_PATH} samples per path (µs); load average {}:",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (name, s) in names.iter().zip(&samples) {
        println!(
            "  {name:<20} p50 {:>8.1}  p99 {:>8.1}",
            us(percentile(s, 50.0)),
            us(percentile(s, 99.0))
        );
    }
    for (label, direct, proxied) in [("http", 0, 1), ("https+inject", 2, 3)] {
        let added = |q| us(percentile(&samples[proxied], q)) - us(percentile(&samples[direct], q));
        println!(
            "  added by the proxy ({label}): p50 {:.1} µs (target < 200), p99 {:.1} µs (target < 1000)",
            added(50.0),
            added(99.0)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
