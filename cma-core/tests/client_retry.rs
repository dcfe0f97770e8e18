//! Retry arithmetic (vectors B1–B12 of `sdk-test-vectors.md` §3, read from the file) and the core
//! retry policy end to end against a local server.

mod client_support;

use std::time::{Duration, SystemTime};

use client_support::{CaptureServer, Reply, numbers};
use cma_core::client::{ApiErrorKind, Client, ClientConfig, Credential, PollParams};
use cma_core::retry::{
    SEND_RETRY_WINDOW, StreamBackoff, core_backoff, core_retry_delay, empty_poll_delay,
    heartbeat_assumed_lost, heartbeat_interval, is_fatal_status, poll_failure_delay,
    send_backoff_base, send_retry_delay, should_retry_status,
};
use cma_vectors::{Row, Vectors, code_spans};

const ALMOST_ONE: f64 = 1.0 - 1e-9;
const RANDOMS: [f64; 4] = [0.0, 0.25, 0.5, ALMOST_ONE];

fn close(a: Duration, b: f64) -> bool {
    (a.as_secs_f64() - b).abs() < 1e-6
}

/// Numbers of `text` after `marker`.
fn after(text: &str, marker: &str) -> Vec<f64> {
    numbers(
        text.split_once(marker)
            .unwrap_or_else(|| panic!("{marker:?} in {text:?}"))
            .1,
    )
}

fn b1(r: &Row) {
    let ns = after(r.get("Input"), "n =");
    let spans = r.codes("Expected");
    let bases = numbers(&spans[0]);
    let jitter = numbers(&spans[1]);
    assert_eq!(ns.len(), bases.len());
    for (n, base) in ns.iter().zip(&bases) {
        for rand in RANDOMS {
            let d = core_backoff(*n as u32, rand).as_secs_f64();
            assert!(
                d > base * jitter[0] - 1e-9 && d <= base * jitter[1] + 1e-9,
                "n={n}: {d}"
            );
        }
        assert!(close(core_backoff(*n as u32, 0.0), base * jitter[1]));
    }
}

fn b2(r: &Row) {
    let span = r.code("Input").unwrap();
    let ms = span.split_once(": ").unwrap().1;
    let want = numbers(r.get("Expected"))[0];
    for rand in RANDOMS {
        let d = core_retry_delay(3, Some(ms), Some("99"), SystemTime::now(), rand);
        assert!(close(d, want), "{d:?}");
    }
}

fn b3(r: &Row) {
    let span = r.code("Input").unwrap();
    let secs = span.split_once(": ").unwrap().1;
    let want = numbers(r.get("Expected"))[0];
    let now = SystemTime::now();
    assert!(close(core_retry_delay(0, None, Some(secs), now, 0.3), want));
    // The HTTP-date form: date − now.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let date = chrono::DateTime::<chrono::Utc>::from(now + Duration::from_secs(7)).to_rfc2822();
    assert!(r.get("Expected").contains("HTTP-date"));
    assert!(close(core_retry_delay(0, None, Some(&date), now, 0.3), 7.0));
}

fn b4(r: &Row) {
    let text = format!("{} | {}", r.get("Input"), r.get("Expected"));
    let mut checked = 0;
    for clause in text.split("`x-should-retry: ").skip(1) {
        let (value, rest) = clause.split_once('`').unwrap();
        let status = after(rest, "on a")[0] as u16;
        let verdict = rest.split_once(&status.to_string()).unwrap().1;
        let verdict = verdict.split('`').next().unwrap();
        let retried = !verdict.contains("no retry") && verdict.contains("retry");
        assert_eq!(
            should_retry_status(status, Some(value)),
            retried,
            "{value} {status}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}

fn b5(r: &Row) {
    for s in numbers(r.get("Input")) {
        assert!(should_retry_status(s as u16, None), "{s}");
    }
    assert_eq!(
        ClientConfig::builder().build().unwrap().max_retries() + 1,
        attempts_b5(r)
    );
}

fn attempts_b5(r: &Row) -> u32 {
    after(r.get("Expected"), "⇒")[0] as u32
}

fn b6(r: &Row) {
    for s in numbers(r.get("Input")) {
        assert!(is_fatal_status(s as u16), "{s}");
    }
    for s in after(r.get("Expected"), "for") {
        assert!(!is_fatal_status(s as u16), "{s}");
    }
}

fn b7(r: &Row) {
    let ks = after(r.get("Input"), "k =");
    let expected = r.get("Expected");
    let values = numbers(
        expected
            .split("` =")
            .nth(1)
            .unwrap()
            .split(" s")
            .next()
            .unwrap(),
    );
    assert_eq!(ks.len(), values.len());
    for (k, v) in ks.iter().zip(&values) {
        assert!(close(poll_failure_delay(*k as u32, 0.0), *v));
        let hi = poll_failure_delay(*k as u32, ALMOST_ONE).as_secs_f64();
        assert!(hi < v + 1.0 && hi > v + 0.99);
    }
}

fn b8(r: &Row) {
    let expected = r.get("Expected");
    let range = after(expected, "U(");
    assert!(close(empty_poll_delay(0.0), range[0]));
    assert!((empty_poll_delay(ALMOST_ONE).as_secs_f64() - range[1]).abs() < 1e-6);
    let block = code_spans(expected)
        .into_iter()
        .find_map(|s| {
            s.strip_prefix("block_ms=")
                .map(|n| n.parse::<u32>().unwrap())
        })
        .unwrap();
    assert_eq!(PollParams::long_poll().block_ms, Some(block));
}

fn b9(r: &Row) {
    let attempts = after(r.get("Input"), "a =");
    let expected = r.get("Expected");
    let ds = numbers(
        expected
            .split("` =")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
    );
    assert_eq!(attempts.len(), ds.len());
    let window = Duration::from_secs(1000);
    for (a, d) in attempts.iter().zip(&ds) {
        let a = *a as u32;
        assert!(close(Duration::from_secs_f64(send_backoff_base(a)), *d));
        assert!(close(send_retry_delay(a, 0.0, window), d / 2.0));
        let hi = send_retry_delay(a, ALMOST_ONE, window).as_secs_f64();
        assert!(hi <= *d && hi > d * 0.99);
        // Never beyond the remaining window.
        let rem = Duration::from_millis(100);
        assert!(send_retry_delay(a, 0.5, rem) <= rem);
    }
    let default_window = after(expected, "lease TTL or")[0];
    assert!(close(SEND_RETRY_WINDOW, default_window));
}

fn b10(r: &Row) {
    let expected = r.get("Expected");
    let (waits, reset) = expected.split_once("reset to").unwrap();
    let waits = numbers(waits);
    let mut b = StreamBackoff::default();
    for w in &waits {
        assert!(close(b.next_delay(), *w));
    }
    b.reset();
    assert!(close(b.next_delay(), numbers(reset)[0]));
}

fn b11(r: &Row) {
    let input = r.get("Input");
    let pairs = input.split_once("interval:").unwrap().1;
    let prev = Duration::from_secs(17);
    let mut checked = 0;
    for clause in pairs.split(';') {
        let (ttl, out) = clause.split_once('→').unwrap();
        let ttl = numbers(ttl)[0] as i64;
        let got = heartbeat_interval(ttl, prev);
        if out.contains("unchanged") {
            assert_eq!(got, prev, "ttl {ttl}");
        } else {
            assert!(close(got, numbers(out)[0]), "ttl {ttl}: {got:?}");
        }
        checked += 1;
    }
    assert!(checked >= 5);
}

fn b12(r: &Row) {
    let ttl = Duration::from_secs_f64(after(r.get("Input"), "ttl known =")[0]);
    let limit = Duration::from_secs_f64(after(r.get("Expected"), ">")[0]);
    assert_eq!(ttl, limit);
    assert!(!heartbeat_assumed_lost(limit, ttl));
    assert!(heartbeat_assumed_lost(
        limit + Duration::from_millis(1),
        ttl
    ));
    assert!(!heartbeat_assumed_lost(Duration::from_secs(1), ttl));
}

#[test]
fn retry_vectors_b1_to_b12() {
    let v = Vectors::load();
    let rows: Vec<Row> = v.section("## 3.").table().rows().to_vec();
    assert!(rows.len() >= 12);
    for r in &rows {
        match r.id() {
            "B1" => b1(r),
            "B2" => b2(r),
            "B3" => b3(r),
            "B4" => b4(r),
            "B5" => b5(r),
            "B6" => b6(r),
            "B7" => b7(r),
            "B8" => b8(r),
            "B9" => b9(r),
            "B10" => b10(r),
            "B11" => b11(r),
            "B12" => b12(r),
            other => panic!("vector {other} is not covered; add it"),
        }
    }
}

fn env(client: &Client) -> cma_core::client::EnvironmentClient {
    client.environment("env_test", Credential::environment_key("k"))
}

#[tokio::test]
async fn rate_limit_with_retry_after_ms_then_success() {
    let server = CaptureServer::start(|_| Reply::json(200, "null")).await;
    server.push(Reply::json(429, "{}").header("retry-after-ms", "15"));
    let client = server.client();
    assert_eq!(
        env(&client).poll(&PollParams::default()).await.unwrap(),
        None
    );
    let c = server.take();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].header("x-stainless-retry-count"), Some("0"));
    assert_eq!(c[1].header("x-stainless-retry-count"), Some("1"));
}

#[tokio::test]
async fn should_retry_header_is_obeyed() {
    let server = CaptureServer::start(|_| Reply::json(200, "null")).await;
    server.push(Reply::json(500, "{}").header("x-should-retry", "false"));
    let client = server.client();
    let err = env(&client).poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert_eq!(
        server.take().len(),
        1,
        "x-should-retry: false is not retried"
    );

    server.push(
        Reply::json(400, "{}")
            .header("x-should-retry", "true")
            .header("retry-after-ms", "1"),
    );
    assert!(env(&client).poll(&PollParams::default()).await.is_ok());
    assert_eq!(
        server.take().len(),
        2,
        "x-should-retry: true on a 400 is retried"
    );

    server.push(Reply::json(404, "{}"));
    assert!(env(&client).poll(&PollParams::default()).await.is_err());
    assert_eq!(server.take().len(), 1, "a plain 404 is not retried");
}

#[tokio::test]
async fn retryable_statuses_use_all_attempts() {
    let server =
        CaptureServer::start(|_| Reply::json(529, "{}").header("retry-after-ms", "1")).await;
    let client = server.client();
    let err = env(&client).poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.kind(), ApiErrorKind::Overloaded);
    let c = server.take();
    assert_eq!(c.len(), 3, "max 2 retries ⇒ 3 attempts");
    let counts: Vec<_> = c
        .iter()
        .map(|r| r.header("x-stainless-retry-count").unwrap().to_owned())
        .collect();
    assert_eq!(counts, ["0", "1", "2"]);
}

#[tokio::test]
async fn connection_refused_is_retried() {
    // Find a free port, leave it closed for the first attempt, then open it before the retry
    // (the first core retry waits at least 0.375 s).
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let client = Client::new(
        ClientConfig::builder()
            .base_url(format!("http://{addr}"))
            .max_retries(1)
            .build()
            .unwrap(),
    )
    .unwrap();
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (mut sock, _) = listener.accept().await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 4096];
        let _ = sock.read(&mut buf).await.unwrap();
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnull")
            .await
            .unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    });
    assert_eq!(
        env(&client).poll(&PollParams::default()).await.unwrap(),
        None
    );
    let request = opener.await.unwrap();
    assert!(
        request
            .to_ascii_lowercase()
            .contains("x-stainless-retry-count: 1"),
        "{request}"
    );

    // With no retries left, the refused connection surfaces as a retryable connection error.
    let client = Client::new(
        ClientConfig::builder()
            .base_url(format!("http://{addr}"))
            .max_retries(0)
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = env(&client).poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.kind(), ApiErrorKind::Connection);
    assert!(err.is_retryable() && !err.is_fatal());
}

#[tokio::test]
async fn request_timeouts_are_typed_and_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = accepted.clone();
    let hold = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            socks.push(s); // never answer
        }
    });
    let client = Client::new(
        ClientConfig::builder()
            .base_url(format!("http://{addr}"))
            .request_timeout(Duration::from_millis(50))
            .max_retries(1)
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = env(&client).poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.kind(), ApiErrorKind::Timeout);
    assert!(err.is_retryable());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    hold.abort();
}
