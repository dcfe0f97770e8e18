//! Adversarial suite, classes "arithmetic on untrusted numbers" and "hostile API payloads"
//! (issue 11), at the client layer: every number the API hands us (retry hints, lease TTLs,
//! timestamps, secrets) at its extremes, and every kind of hostile answer the emulator's hostile
//! mode can serve (endless lines, giant frames and bodies, deep nesting, value bombs, invalid
//! UTF-8, hanging bodies, looping cursors). Each ends in a value or a typed error, within its
//! bound, without a panic and without leaking a thread or a descriptor.

mod adversarial;

use std::time::{Duration, SystemTime};

use cma_core::client::{
    ApiError, Client, ClientConfig, Credential, ListEventsParams, SessionClient, StreamParams,
};
use cma_core::emulator::{Emulator, EmulatorConfig, Endpoint, Fault, Reply, Script, ScriptEnd};
use cma_core::protocol::decode_sessions_token;
use cma_core::retry::{self, MAX_LEASE_TTL, MAX_RETRY_AFTER, StreamBackoff};
use cma_core::sse::SseError;
use cma_core::webhook::{Verifier, WebhookSecret};
use futures::StreamExt;

#[test]
fn adversarial_api() {
    adversarial::run_cases(&[
        case!(arithmetic_on_extreme_numbers, Duration::from_secs(10)),
        case!(retry_hints_never_park_a_request, Duration::from_secs(60)),
        case!(
            hostile_event_streams_end_in_typed_errors,
            Duration::from_secs(60)
        ),
        case!(
            hostile_json_bodies_end_in_typed_errors,
            Duration::from_secs(60)
        ),
        case!(looping_pagination_ends, Duration::from_secs(60)),
    ]);
}

struct Api {
    emu: Emulator,
    sid: String,
}

impl Api {
    async fn start() -> Self {
        let emu = Emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        let env = emu.add_environment("env_adv", "adv").expect("environment");
        let sid = emu
            .create_session(&env.id, Script::new(vec![], ScriptEnd::Idle))
            .expect("session");
        Self { emu, sid }
    }

    fn session(&self, config: cma_core::client::ClientConfigBuilder) -> SessionClient {
        let client = Client::new(
            config
                .base_url(self.emu.base_url())
                .build()
                .expect("client config"),
        )
        .expect("client");
        client.session(self.sid.clone(), Credential::api_key(self.emu.api_key()))
    }

    fn arm(&self, fault: Fault) {
        self.emu.inject_fault(fault).expect("fault");
    }
}

async fn arithmetic_on_extreme_numbers() {
    // Lease TTLs as a heartbeat reports them.
    for ttl in [i64::MIN, -1, 0, 1, 59, 3600, 3601, i64::MAX] {
        let t = retry::lease_ttl(ttl);
        assert_eq!(t.is_some(), ttl > 0, "{ttl}");
        assert!(
            t.is_none_or(|t| t <= MAX_LEASE_TTL && !t.is_zero()),
            "{ttl}"
        );
        let prev = Duration::from_secs(7);
        let i = retry::heartbeat_interval(ttl, prev);
        assert!(
            i == prev || (Duration::from_secs(1)..=Duration::from_secs(30)).contains(&i),
            "{ttl}: {i:?}"
        );
    }
    // Backoff arithmetic at the ends of its inputs (attempt counters, jitter draws, windows).
    let now = SystemTime::now();
    for random in [f64::NAN, f64::INFINITY, -1.0, 0.0, 0.999, 1.0] {
        for n in [0, 1, 31, 64, 1000, u32::MAX] {
            assert!(retry::core_backoff(n, random) <= Duration::from_secs(8));
            assert!(retry::poll_failure_delay(n, random) <= Duration::from_secs(61));
            assert!(retry::send_retry_delay(n, random, Duration::MAX) <= Duration::from_secs(30));
            assert!(
                retry::core_retry_delay(n, Some("inf"), None, now, random)
                    <= Duration::from_secs_f64(MAX_RETRY_AFTER)
            );
        }
    }
    let mut b = StreamBackoff::new(Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        assert_eq!(b.next_delay(), Duration::MAX);
    }
    // Work secrets: a huge or malformed one is no token, never a panic.
    assert_eq!(decode_sessions_token(&"A".repeat(1 << 20)), None);
    assert_eq!(decode_sessions_token("%%%%"), None);
    let ok = cma_core::protocol::encode_work_secret("tok");
    assert_eq!(decode_sessions_token(&ok).as_deref(), Some("tok"));
    // Webhook timestamps at and past every edge: a typed error each.
    let verifier = Verifier::new(
        WebhookSecret::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap(),
    );
    let huge = "9".repeat(10_000);
    for ts in [
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
        "1e308",
        "-1e308",
        "1e400",
        "NaN",
        "inf",
        "-inf",
        "",
        " ",
        "0x10",
        huge.as_str(),
    ] {
        let r = verifier.verify_parts(b"msg_1", ts.as_bytes(), b"v1,AAAA", b"{}");
        assert!(r.is_err(), "{ts:?}");
    }
}

async fn retry_hints_never_park_a_request() {
    let api = Api::start().await;
    let session = api.session(ClientConfig::builder());
    let huge = "9".repeat(10_000);
    // (retry-after-ms, retry-after, retried): a hint above `max_retry_after` (60 s) — however it
    // is spelled — is not waited out but returned; anything unusable falls back to the backoff.
    let table: Vec<(Option<&str>, Option<&str>, bool)> = vec![
        (Some("0"), None, true),
        (Some("-5"), None, true),
        (Some("NaN"), None, true),
        (Some("-inf"), None, true),
        (Some("50"), None, true),
        (Some("inf"), None, false),
        (Some("1e400"), None, false),
        (Some("9223372036854775807"), None, false),
        (Some(huge.as_str()), None, false),
        (Some("junk"), Some("-1"), true),
        (None, Some("Mon, 01 Jan 1900 00:00:00 GMT"), true),
        (None, Some("Fri, 31 Dec 9999 23:59:59 GMT"), false),
        (None, Some("18446744073709551616"), false),
        (None, Some("61"), false),
    ];
    for (ms, after, retried) in table {
        let mut fault = Fault::on(Endpoint::SessionGet).status(429);
        fault.retry_after_ms = ms.map(str::to_owned);
        fault.retry_after = after.map(str::to_owned);
        api.arm(fault);
        let r = session.get().await;
        if retried {
            assert!(r.is_ok(), "{ms:?}/{after:?}: {r:?}");
        } else {
            let e = r.expect_err("not retried");
            assert_eq!(e.status(), Some(429), "{ms:?}/{after:?}");
        }
        assert_eq!(api.emu.faults_remaining(), 0);
    }
    api.emu.shutdown().await;
}

/// The first error of a fresh stream of `session`.
async fn first_stream_error(session: &SessionClient) -> (usize, ApiError) {
    let mut stream = session
        .stream(&StreamParams::default())
        .await
        .expect("stream opens");
    let mut events = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => events += 1,
            Err(e) => return (events, e),
        }
    }
    panic!("the stream ended without an error after {events} events");
}

async fn hostile_event_streams_end_in_typed_errors() {
    let api = Api::start().await;
    let session = api.session(ClientConfig::builder().request_timeout(Duration::from_secs(2)));
    let frame = |kind: &str, id: &str| {
        format!(
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"id\":\"{id}\",\"processed_at\":\"2026-01-01T00:00:00Z\"}}\n\n"
        )
    };
    type Check = fn(&ApiError) -> bool;
    let cases: Vec<(&str, Reply, usize, Check)> = vec![
        (
            "a never-ending line",
            Reply::new(200).text("event: x\ndata: ").endless("x"),
            0,
            |e| {
                matches!(
                    e,
                    ApiError::Stream {
                        source: SseError::LineTooLong { .. },
                        ..
                    }
                )
            },
        ),
        (
            "a frame of endless short data lines",
            Reply::new(200)
                .text("event: x\n")
                .endless("data: xxxxxxxxxxxxxxxx\n"),
            0,
            |e| {
                matches!(
                    e,
                    ApiError::Stream {
                        source: SseError::FrameTooLarge { .. },
                        ..
                    }
                )
            },
        ),
        (
            "invalid UTF-8 after a good frame",
            Reply::new(200)
                .text(frame("agent.message", "e1"))
                .bytes(b"event: x\ndata: \xff\xfe\n\n"),
            1,
            |e| {
                matches!(
                    e,
                    ApiError::Stream {
                        source: SseError::InvalidUtf8 { .. },
                        ..
                    }
                )
            },
        ),
        (
            "JSON nested 100 000 deep",
            Reply::new(200)
                .text("event: x\ndata: ")
                .repeat("[", 100_000)
                .repeat("]", 100_000)
                .text("\n\n"),
            0,
            |e| matches!(e, ApiError::Decode { .. }),
        ),
        (
            "a value bomb within the frame cap",
            Reply::new(200)
                .text("event: x\ndata: [")
                .repeat("{},", 1_100_000)
                .text("{}]\n\n"),
            0,
            |e| matches!(e, ApiError::Decode { message, .. } if message.contains("JSON values")),
        ),
        (
            "unknown types and duplicate ids, then a body that hangs",
            Reply::new(200)
                .text(frame("agent.mystery", "dup"))
                .text(frame("agent.mystery", "dup"))
                .text(": hello\n\n")
                .hang(),
            2,
            |e| e.is_retryable(),
        ),
    ];
    for (what, reply, events_before, check) in cases {
        api.arm(Fault::on(Endpoint::Stream).reply(reply));
        let (events, err) = first_stream_error(&session).await;
        assert_eq!(events, events_before, "{what}: {err}");
        assert!(check(&err), "{what}: {err:?}");
    }
    api.emu.shutdown().await;
}

async fn hostile_json_bodies_end_in_typed_errors() {
    let api = Api::start().await;
    let session = api.session(
        ClientConfig::builder()
            .request_timeout(Duration::from_secs(2))
            .max_retries(0),
    );
    type Check = fn(&ApiError) -> bool;
    let decode: Check = |e| matches!(e, ApiError::Decode { .. });
    let cases: Vec<(&str, Reply, Check)> = vec![
        (
            "nested 100 000 deep",
            Reply::new(200).repeat("[", 100_000),
            decode,
        ),
        (
            "a value bomb",
            Reply::new(200)
                .text("[")
                .repeat("{},", 1_100_000)
                .text("{}]"),
            decode,
        ),
        (
            "invalid UTF-8",
            Reply::new(200).bytes(b"{\"id\": \"\xff\"}"),
            decode,
        ),
        ("not JSON at all", Reply::new(200).text("<html>"), decode),
        (
            "a body larger than the response cap",
            Reply::new(200).text("\"").repeat("x", 80 << 20).text("\""),
            |e| matches!(e, ApiError::BodyTooLarge { .. }),
        ),
        (
            "a body that never ends",
            Reply::new(200).text("{\"id\": \"").hang(),
            |e| matches!(e, ApiError::Timeout { .. } | ApiError::Connection { .. }),
        ),
        (
            "an error status with a giant body",
            Reply::new(500).repeat("x", 8 << 20),
            |e| e.status() == Some(500),
        ),
        (
            "JSON that is not a session",
            Reply::new(200).json(serde_json::json!({"unexpected": true})),
            decode,
        ),
    ];
    for (what, reply, check) in cases {
        api.arm(Fault::on(Endpoint::SessionGet).reply(reply));
        let err = session.get().await.expect_err(what);
        assert!(check(&err), "{what}: {err:?}");
    }
    api.emu.shutdown().await;
}

async fn looping_pagination_ends() {
    let api = Api::start().await;
    let session = api.session(ClientConfig::builder());
    let page =
        |cursor: &str| Reply::new(200).json(serde_json::json!({"data": [], "next_page": cursor}));
    // A → B → A: a loop.
    for c in ["A", "B", "A"] {
        api.arm(Fault::on(Endpoint::EventsList).reply(page(c)));
    }
    let all: Vec<_> = session
        .list_all_events(ListEventsParams::history())
        .collect()
        .await;
    assert_eq!(all.len(), 1);
    assert!(matches!(&all[0], Err(ApiError::Decode { message, .. }) if message.contains("before")));
    // Empty pages with fresh cursors, without end.
    for i in 0..=cma_core::client::MAX_EMPTY_PAGES + 1 {
        api.arm(Fault::on(Endpoint::EventsList).reply(page(&format!("c{i}"))));
    }
    let all: Vec<_> = session
        .list_all_events(ListEventsParams::history())
        .collect()
        .await;
    assert_eq!(all.len(), 1);
    assert!(
        matches!(&all[0], Err(ApiError::Decode { message, .. }) if message.contains("empty pages"))
    );
    api.emu.clear_faults();
    api.emu.shutdown().await;
}
