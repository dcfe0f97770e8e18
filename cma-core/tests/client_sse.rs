//! SSE framing (the vectors' `sse` section: frames a server wrote and what the official SDK's
//! stream decoded from them) through the parser, the event stream and a real server, split at
//! random chunk boundaries; and the reconnecting stream's policy against a scripted server.

mod client_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use client_support::{CaptureServer, Reply, XorShift, random_chunks};
use cma_core::client::{
    ApiError, ApiErrorKind, Client, Credential, EventStream, ReconnectPolicy, StreamItem,
    StreamParams,
};
use cma_core::protocol::SessionEvent;
use cma_core::sse::{SseLimits, SseParser};
use cma_vectors::{Field as _, Vectors};
use futures::StreamExt;
use serde_json::Value;

/// What the `sse` section holds.
struct Sse5 {
    path: String,
    input: Vec<u8>,
    ids: Vec<String>,
    tool_input: Value,
    error_status: u16,
    error_type: String,
    dropped: Vec<String>,
}

fn load() -> Sse5 {
    let s = Vectors::load().section("sse");
    let input: String = s
        .req_array("frames")
        .iter()
        .map(|f| f.as_str().expect("frame text"))
        .collect();
    let events = s.req_array("events");
    let error = s.req("error");
    Sse5 {
        path: s.req_str("path").to_owned(),
        input: input.into_bytes(),
        ids: events.iter().map(|e| e.req_str("id").to_owned()).collect(),
        tool_input: events
            .iter()
            .find(|e| e.req_str("type") == "agent.tool_use")
            .expect("a tool use event")
            .req("input")
            .clone(),
        error_status: u16::try_from(error.req_u64("status")).unwrap(),
        error_type: error.req_str("error_type").to_owned(),
        dropped: s
            .req_array("dropped")
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect(),
    }
}

async fn collect(stream: EventStream) -> Vec<Result<SessionEvent, ApiError>> {
    stream.collect().await
}

fn check(v: &Sse5, items: &[Result<SessionEvent, ApiError>], label: &str) {
    let (events, errors): (Vec<_>, Vec<_>) = items.iter().partition(|r| r.is_ok());
    let ids: Vec<String> = events
        .iter()
        .map(|e| e.as_ref().unwrap().id().unwrap().to_string())
        .collect();
    assert_eq!(ids, v.ids, "{label}");
    for d in &v.dropped {
        assert!(!ids.contains(d), "{label}: {d} must be dropped");
    }
    let tool = events
        .iter()
        .find_map(|e| match e.as_ref().unwrap() {
            SessionEvent::ToolUse(t) => Some(t),
            _ => None,
        })
        .expect("a tool_use event");
    assert_eq!(tool.input, v.tool_input, "{label}");
    assert_eq!(errors.len(), 1, "{label}: one error, at the end");
    assert!(items.last().unwrap().is_err(), "{label}");
    let err = items.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.status(), Some(v.error_status), "{label}");
    assert_eq!(err.error_type(), Some(v.error_type.as_str()), "{label}");
    assert!(
        !err.is_fatal(),
        "{label}: event: error is transient for the runner"
    );
}

fn from_chunks(chunks: Vec<Vec<u8>>, status: u16) -> EventStream {
    let body = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
    EventStream::from_byte_stream(body, "test", status, SseLimits::default())
}

#[tokio::test]
async fn vector_frames_whole_bytewise_and_random_chunks() {
    let v = load();
    check(
        &v,
        &collect(from_chunks(vec![v.input.clone()], v.error_status)).await,
        "whole",
    );
    let bytewise = v.input.iter().map(|b| vec![*b]).collect();
    check(
        &v,
        &collect(from_chunks(bytewise, v.error_status)).await,
        "bytewise",
    );
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..200 {
        let chunks = random_chunks(&v.input, &mut rng);
        check(
            &v,
            &collect(from_chunks(chunks, v.error_status)).await,
            &format!("random #{i}"),
        );
    }
}

#[tokio::test]
async fn vector_frames_through_a_real_stream() {
    let v = load();
    let mut rng = XorShift(42);
    let chunks = random_chunks(&v.input, &mut rng);
    let server = CaptureServer::start(move |_| Reply::sse(chunks.clone())).await;
    let session_id = v.path.split('/').nth(3).unwrap().to_owned();
    let session = server
        .client()
        .session(session_id, Credential::sessions_token("tok"));
    let stream = session.stream(&StreamParams::default()).await.unwrap();
    check(&v, &collect(stream).await, "server");
    let captured = server.take();
    assert_eq!(captured[0].path, v.path);
    assert_eq!(captured[0].header("accept"), Some("application/json"));
}

#[test]
fn parser_frames_match_when_fed_in_pieces() {
    let v = load();
    let whole = SseParser::new().feed(&v.input).unwrap();
    let mut rng = XorShift(7);
    for _ in 0..100 {
        let mut p = SseParser::new();
        let mut frames = Vec::new();
        for c in random_chunks(&v.input, &mut rng) {
            p.feed_into(&c, &mut frames).unwrap();
        }
        assert_eq!(frames, whole);
    }
}

#[tokio::test]
async fn oversized_frames_are_a_typed_error() {
    let server = CaptureServer::start(|_| {
        Reply::sse(vec![
            format!("event: x\ndata: {}\n\n", "a".repeat(4096)).into_bytes(),
        ])
    })
    .await;
    let client = Client::new(
        server
            .config()
            .sse_limits(SseLimits {
                max_line_bytes: 1024,
                max_frame_bytes: 1024,
            })
            .build()
            .unwrap(),
    )
    .unwrap();
    let stream = client
        .session("sesn_x", Credential::sessions_token("t"))
        .stream(&StreamParams::default())
        .await
        .unwrap();
    let items = collect(stream).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].as_ref().unwrap_err().kind(), ApiErrorKind::Stream);
}

fn frame(id: &str) -> Vec<u8> {
    format!(
        "event: session.status_running\ndata: {{\"type\":\"session.status_running\",\"id\":\"{id}\"}}\n\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn reconnecting_stream_follows_the_runner_policy() {
    let server = CaptureServer::start(|_| {
        Reply::json(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"no"}}"#,
        )
    })
    .await;
    // 1: one event then the body ends; 2: 500 (transient); 3: `event: error` mid-stream after an
    // event; 4: 503; then the fallback 401 (fatal) ends everything.
    server.push(Reply::sse(vec![frame("a1")]));
    server.push(Reply::json(500, "{}"));
    server.push(Reply::sse(vec![
        frame("b1"),
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n".to_vec(),
    ]));
    server.push(Reply::json(503, "{}"));
    let client = Client::new(server.config().max_retries(0).build().unwrap()).unwrap();
    let session = client.session("sesn_r", Credential::sessions_token("t"));
    let start = Duration::from_millis(5);
    let policy = ReconnectPolicy {
        backoff_start: start,
        backoff_cap: Duration::from_millis(12),
        connect_timeout: Duration::from_secs(10),
    };
    let hooks = Arc::new(AtomicU64::new(0));
    let h = hooks.clone();
    let items: Vec<_> = session
        .reconnecting_stream(StreamParams::default(), policy)
        .on_connect(move |n| {
            let h = h.clone();
            async move {
                h.store(n, Ordering::SeqCst);
            }
        })
        .collect()
        .await;
    let describe: Vec<String> = items
        .iter()
        .map(|i| match i {
            Ok(StreamItem::Connected { connection }) => format!("connected {connection}"),
            Ok(StreamItem::Event(e)) => format!("event {}", e.id().unwrap()),
            Ok(StreamItem::Disconnected { error, retry_in }) => format!(
                "disconnected {:?} {}ms",
                error.as_ref().map(|e| e.status()),
                retry_in.as_millis()
            ),
            Ok(_) => "other".into(),
            Err(e) => format!("fatal {:?}", e.status()),
        })
        .collect();
    assert_eq!(
        describe,
        vec![
            "connected 1",
            "event a1",
            "disconnected None 5ms", // reset by a1, then the body ended
            "disconnected Some(Some(500)) 10ms", // doubled
            "connected 2",
            "event b1",
            "disconnected Some(Some(200)) 5ms", // reset by b1; event: error is transient
            "disconnected Some(Some(503)) 10ms",
            "fatal Some(401)",
        ]
    );
    assert_eq!(
        hooks.load(Ordering::SeqCst),
        2,
        "hook ran after each connect"
    );
    let paths: Vec<String> = server.take().into_iter().map(|c| c.path).collect();
    assert_eq!(paths.len(), 5);
    assert!(
        paths
            .iter()
            .all(|p| p == "/v1/sessions/sesn_r/events/stream")
    );
}
