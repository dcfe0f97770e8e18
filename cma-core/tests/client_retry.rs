//! Retry arithmetic against the vectors' `retry` section (the waits and retry decisions the
//! official SDK was observed to make), and the core retry policy end to end against a local
//! server.

mod client_support;

use std::time::{Duration, SystemTime};

use client_support::{CaptureServer, Reply};
use cma_core::client::{ApiErrorKind, Client, ClientConfig, Credential, PollParams};
use cma_core::retry::{
    SEND_RETRY_WINDOW, StreamBackoff, core_backoff, core_retry_delay, empty_poll_delay,
    heartbeat_assumed_lost, heartbeat_interval, is_fatal_status, poll_failure_delay,
    send_backoff_base, send_retry_delay, should_retry_status,
};
use cma_vectors::{Field as _, Value, Vectors};

const ALMOST_ONE: f64 = 1.0 - 1e-9;
const RANDOMS: [f64; 4] = [0.0, 0.25, 0.5, ALMOST_ONE];

fn close(a: Duration, b: f64) -> bool {
    (a.as_secs_f64() - b).abs() < 1e-6
}

fn floats(v: &Value, key: &str) -> Vec<f64> {
    v.req_array(key)
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn section() -> &'static Value {
    Vectors::load().section("retry")
}

/// The core client's wait before a retry, at both ends of its random draw.
#[test]
fn core_backoff_matches_the_sdk() {
    let b = section().req("core").req("backoff");
    let taken = floats(b, "retries_taken");
    let at_0 = floats(b, "delay_random_0");
    let at_1 = floats(b, "delay_random_1");
    assert_eq!(taken.len(), at_0.len());
    for ((n, lo_draw), hi_draw) in taken.iter().zip(&at_0).zip(&at_1) {
        let n = *n as u32;
        assert!(close(core_backoff(n, 0.0), *lo_draw), "n={n}");
        // The draw is in [0, 1): the SDK's value at 1 is the open end (reached to within the
        // nanosecond a Duration holds).
        let near_one = core_backoff(n, ALMOST_ONE).as_secs_f64();
        assert!((near_one - hi_draw).abs() < 1e-6, "n={n}: {near_one}");
        for rand in RANDOMS {
            let d = core_backoff(n, rand).as_secs_f64();
            assert!(d > hi_draw - 1e-9 && d <= lo_draw + 1e-9, "n={n}: {d}");
        }
    }
}

/// Server-requested waits: `retry-after-ms` first, then `retry-after` seconds or HTTP-date.
#[test]
fn retry_after_headers_match_the_sdk() {
    let cases = section().req("core").req_array("retry_after");
    assert!(cases.len() >= 3);
    for c in cases {
        let h = c.req("headers");
        let now = match c.get("now") {
            Some(n) => SystemTime::UNIX_EPOCH + Duration::from_secs_f64(n.as_f64().unwrap()),
            None => SystemTime::now(),
        };
        let want = c.req_f64("wait");
        for rand in RANDOMS {
            let d = core_retry_delay(
                3,
                h.opt_str("retry-after-ms"),
                h.opt_str("retry-after"),
                now,
                rand,
            );
            assert!(close(d, want), "{h}: {d:?}");
        }
    }
}

/// Which statuses (and `x-should-retry` values) the core client retries, and how often.
#[test]
fn retry_decisions_and_attempts_match_the_sdk() {
    let core = section().req("core");
    for c in core.req_array("should_retry") {
        let status = u16::try_from(c.req_u64("status")).unwrap();
        assert_eq!(
            should_retry_status(status, c.opt_str("x_should_retry")),
            c.req_bool("retried"),
            "{c}"
        );
    }
    let max_retries = ClientConfig::builder().build().unwrap().max_retries();
    assert_eq!(u64::from(max_retries), core.req_u64("default_max_retries"));
    let attempts = core.req("attempts_on_529");
    assert_eq!(u64::from(max_retries) + 1, attempts.req_u64("attempts"));
    for c in section().req_array("fatal_status") {
        let status = u16::try_from(c.req_u64("status")).unwrap();
        assert_eq!(is_fatal_status(status), c.req_bool("fatal"), "{status}");
    }
}

/// The work poller's waits after failed polls and after an empty one, and its `block_ms`.
#[test]
fn poller_waits_match_the_sdk() {
    let p = section().req("poller");
    let backoffs = floats(p, "backoff_after_failure");
    for (k, want) in (1u32..).zip(&backoffs) {
        // The SDK's draw was pinned to the low end of its range; ours at 0 is that end.
        assert!(close(poll_failure_delay(k, 0.0), *want), "k={k}");
        let hi = poll_failure_delay(k, ALMOST_ONE).as_secs_f64();
        assert!(hi < want + 1.0 && hi > want + 0.99, "k={k}");
    }
    for range in p.req_array("jitter_after_failure") {
        assert_eq!(range, &serde_json::json!([0.0, 1.0]));
    }
    let empty = p.req_array("jitter_after_empty_poll");
    let (lo, hi) = (empty[0].as_f64().unwrap(), empty[1].as_f64().unwrap());
    assert!(close(empty_poll_delay(0.0), lo));
    assert!((empty_poll_delay(ALMOST_ONE).as_secs_f64() - hi).abs() < 1e-6);
    let block = p.req_u64("poll_block_ms");
    assert_eq!(PollParams::long_poll().block_ms.map(u64::from), Some(block));
    for q in p.req_array("poll_queries") {
        assert_eq!(q.as_str(), Some(format!("block_ms={block}").as_str()));
    }
}

/// The session runner's waits between tries of a failing result post.
#[test]
fn result_send_waits_match_the_sdk() {
    let r = section().req("result_send");
    let ranges = r.req_array("jitter_ranges");
    assert_eq!(
        ranges.len() as u64 + 1,
        r.req_u64("attempts"),
        "one wait between tries"
    );
    let window = Duration::from_secs(1000);
    for (a, range) in (1u32..).zip(ranges) {
        let (lo, d) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
        assert!(
            close(Duration::from_secs_f64(send_backoff_base(a)), d),
            "a={a}"
        );
        assert!(close(send_retry_delay(a, 0.0, window), lo), "a={a}");
        let hi = send_retry_delay(a, ALMOST_ONE, window).as_secs_f64();
        assert!(hi <= d && hi > d * 0.99);
        // Never beyond what is left of the window.
        let rem = Duration::from_millis(100);
        assert!(send_retry_delay(a, 0.5, rem) <= rem);
    }
    assert!(close(SEND_RETRY_WINDOW, r.req_f64("window_seconds")));
}

/// The event stream's reconnect waits, and their reset once an event arrived.
#[test]
fn stream_reconnect_waits_match_the_sdk() {
    let r = section().req("stream_reconnect");
    let mut b = StreamBackoff::default();
    for w in floats(r, "waits_after_refusals") {
        assert!(close(b.next_delay(), w), "{w}");
    }
    b.reset();
    assert!(close(
        b.next_delay(),
        r.req_f64("wait_after_a_stream_that_delivered_an_event")
    ));
}

/// The heartbeat interval for each TTL the server reports (a TTL ≤ 0 keeps the previous one).
#[test]
fn heartbeat_intervals_match_the_sdk() {
    let h = section().req("heartbeat_interval");
    let ttls = h.req_array("ttl_seconds");
    let waits = floats(h, "waits_after");
    assert!(ttls.len() >= 5 && ttls.len() == waits.len());
    let mut previous = Duration::from_secs_f64(h.req_f64("first_wait"));
    for (ttl, want) in ttls.iter().zip(&waits) {
        let ttl = ttl.as_i64().unwrap();
        previous = heartbeat_interval(ttl, previous);
        assert!(close(previous, *want), "ttl {ttl}: {previous:?}");
    }
}

/// Transient heartbeat failures end the lease only once more than a TTL has passed since the
/// last good beat.
#[test]
fn heartbeat_gives_up_like_the_sdk() {
    let g = section().req("heartbeat_gives_up");
    let ttl = Duration::from_secs_f64(g.req_f64("ttl_seconds"));
    let at = floats(g, "failures_at_seconds_after_success");
    let verdicts = g.req_array("gave_up");
    assert_eq!(at.len(), verdicts.len());
    assert!(verdicts.iter().any(|v| v == true) && verdicts.iter().any(|v| v == false));
    for (elapsed, gave_up) in at.iter().zip(verdicts) {
        assert_eq!(
            heartbeat_assumed_lost(Duration::from_secs_f64(*elapsed), ttl),
            gave_up.as_bool().unwrap(),
            "{elapsed} s after the last success"
        );
    }
    assert!(heartbeat_assumed_lost(ttl + Duration::from_millis(1), ttl));
    assert_eq!(g.req_str("lease_end"), "assumed_lost");
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
