//! Webhook verification throughput, and the cost of `VerifyLayer` in front of an axum handler.
//!
//! `cargo bench -p cma-core --bench webhook -- --warm-up-time 1 --measurement-time 3`
//!
//! * `verify/bytes/*`, `verify/requests/*`: `Verifier::verify_event` (HMAC-SHA256 over the
//!   whole body, then the JSON envelope parse) for 1 KiB and 64 KiB bodies, reported as bytes/s
//!   and as requests/s; `verify/signature_only/*`: `Verifier::verify` (no parse).
//! * `layer/{plain,verified}/*`: the same trivial handler (it takes the body as `Bytes` and
//!   returns its length) called through `Router::oneshot`, without and with the layer. The ratio
//!   verified ÷ plain requests/s is the layer's overhead over a handler that ignores the body.
//!   `layer/parsed/*` is the unverified handler doing the least any receiver must do to use a
//!   delivery (parse the envelope, which the layer does and hands over): verified ÷ parsed is
//!   the cost of authenticating it.
//! * `layer_http/{plain,verified}/*`: the same two routers served on 127.0.0.1 and called with
//!   reqwest over keep-alive HTTP/1.1, so the transport every receiver pays is in both figures;
//!   `layer_http/in_handler/*` verifies inside the handler instead (no layer), which isolates
//!   what the layer itself costs beyond the HMAC and the parse.

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use axum::{Router, body::Body, routing::post};
use bytes::Bytes;
use cma_core::webhook::{Verifier, VerifyLayer, WebhookEvent, WebhookSecret, sign_headers};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, Request};
use tower::ServiceExt as _;

const NOW: i64 = 1_777_636_800;
const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (64 * 1024, "64KiB")];

/// A valid event envelope padded with an unknown field to exactly `size` bytes.
fn body(size: usize) -> Bytes {
    let head = r#"{"type":"event","id":"wevt_bench","created_at":"2026-05-01T12:00:00Z","data":{"type":"session.status_idled","id":"sesn_bench","organization_id":"org_bench","workspace_id":"wrkspc_bench"},"pad":""#;
    let tail = "\"}";
    let pad = size - head.len() - tail.len();
    let s = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(s.len(), size);
    Bytes::from(s)
}

fn secret() -> WebhookSecret {
    WebhookSecret::from_bytes((0u8..32).collect()).expect("key")
}

fn verifier() -> Verifier {
    Verifier::new(secret()).with_clock(|| UNIX_EPOCH + Duration::from_secs(NOW as u64))
}

fn signed(body: &[u8]) -> HeaderMap {
    sign_headers(&secret(), "msg_bench", NOW, body).expect("headers")
}

fn bench_verify(c: &mut Criterion) {
    let v = verifier();
    for (unit, per_byte) in [("bytes", true), ("requests", false)] {
        let mut g = c.benchmark_group(format!("verify/{unit}"));
        for (size, label) in SIZES {
            let body = body(size);
            let headers = signed(&body);
            assert!(v.verify_event(&headers, &body).is_ok());
            g.throughput(if per_byte {
                Throughput::Bytes(size as u64)
            } else {
                Throughput::Elements(1)
            });
            g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
                b.iter(|| v.verify_event(black_box(&headers), black_box(body)).is_ok())
            });
        }
        g.finish();
    }
    // The signature check alone (no envelope parse), per request.
    let mut g = c.benchmark_group("verify/signature_only");
    g.throughput(Throughput::Elements(1));
    for (size, label) in SIZES {
        let body = body(size);
        let headers = signed(&body);
        g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| v.verify(black_box(&headers), black_box(body)).is_ok())
        });
    }
    g.finish();
}

async fn handler(body: Bytes) -> String {
    body.len().to_string()
}

/// What an unverified receiver must do at the least to use a delivery: parse the envelope.
async fn parsing_handler(body: Bytes) -> String {
    match serde_json::from_slice::<WebhookEvent>(&body) {
        Ok(ev) => ev.id,
        Err(e) => e.to_string(),
    }
}

fn bench_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let plain: Router = Router::new().route("/hook", post(handler));
    let parsed: Router = Router::new().route("/hook", post(parsing_handler));
    let verified: Router = Router::new()
        .route("/hook", post(handler))
        .layer(VerifyLayer::new(verifier()));
    let mut g = c.benchmark_group("layer");
    g.throughput(Throughput::Elements(1));
    for (size, label) in SIZES {
        let body = body(size);
        let headers = signed(&body);
        let request = || {
            let mut req = Request::post("/hook")
                .body(Body::from(body.clone()))
                .expect("request");
            *req.headers_mut() = headers.clone();
            req
        };
        for (name, app) in [
            ("plain", &plain),
            ("parsed", &parsed),
            ("verified", &verified),
        ] {
            let status = rt
                .block_on(app.clone().oneshot(request()))
                .expect("infallible")
                .status();
            assert_eq!(status, 200, "{name} {label}");
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.to_async(&rt).iter(|| async {
                    let resp = app.clone().oneshot(request()).await.expect("infallible");
                    black_box(resp.status())
                })
            });
        }
    }
    g.finish();
}

/// The same comparison over real HTTP/1.1 (keep-alive) on 127.0.0.1, where the transport cost
/// that any receiver pays is part of both sides.
fn bench_layer_http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let serve = |app: Router| {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(axum::serve(listener, app).into_future());
            format!("http://{addr}/hook")
        })
    };
    let plain = serve(Router::new().route("/hook", post(handler)));
    let parsed = serve(Router::new().route("/hook", post(parsing_handler)));
    let verified = serve(
        Router::new()
            .route("/hook", post(handler))
            .layer(VerifyLayer::new(verifier())),
    );
    // Verification done by the handler itself instead of the layer: isolates the layer's own cost.
    let in_handler = {
        let v = std::sync::Arc::new(verifier());
        serve(Router::new().route(
            "/hook",
            post(move |h: HeaderMap, b: Bytes| {
                let v = v.clone();
                async move { v.verify_event(&h, &b).is_ok().to_string() }
            }),
        ))
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut g = c.benchmark_group("layer_http");
    g.throughput(Throughput::Elements(1));
    for (size, label) in SIZES {
        let body = body(size);
        let headers = signed(&body);
        let send = |url: &str| {
            let req = client.post(url).headers(headers.clone()).body(body.clone());
            async move { req.send().await.expect("response").status() }
        };
        for (name, url) in [
            ("plain", &plain),
            ("parsed", &parsed),
            ("verified", &verified),
            ("in_handler", &in_handler),
        ] {
            assert_eq!(rt.block_on(send(url)), 200, "{name} {label}");
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.to_async(&rt).iter(|| send(url))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_verify, bench_layer, bench_layer_http);
criterion_main!(benches);
