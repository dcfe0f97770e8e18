//! Response decoding: vectors D1–D10 of `sdk-test-vectors.md` §2, served by a capture server and
//! decoded by the real clients. Expected values are read from the vectors file.

mod client_support;

use std::time::Duration;

use client_support::{CaptureServer, Reply, numbers};
use cma_core::client::{ApiError, ApiErrorKind, Client, Credential, HeartbeatParams, PollParams};
use cma_core::protocol::{NO_HEARTBEAT, WorkId, WorkState};
use cma_core::retry::heartbeat_interval;
use cma_core::runner::lease::HeartbeatFailure;
use cma_vectors::{Row, Vectors};
use serde_json::{Value, json};

/// The SDK class names the vectors use → our kinds.
fn kind_of_class(class: &str) -> ApiErrorKind {
    match class {
        "BetaHeartbeatPreconditionFailedError" => ApiErrorKind::HeartbeatPreconditionFailed,
        "BetaEnvironmentArchivedError" => ApiErrorKind::EnvironmentArchived,
        "BetaEnvironmentNotFoundError" => ApiErrorKind::EnvironmentNotFound,
        "PreconditionFailedError" => ApiErrorKind::PreconditionFailed,
        "BadRequestError" => ApiErrorKind::BadRequest,
        "NotFoundError" => ApiErrorKind::NotFound,
        "APIStatusError" => ApiErrorKind::OtherStatus,
        "InternalServerError" => ApiErrorKind::InternalServer,
        other => panic!("unmapped SDK class {other}"),
    }
}

struct Case {
    id: String,
    endpoint: String,
    status: u16,
    body: Option<String>,
    expected: String,
    expected_codes: Vec<String>,
    response_codes: Vec<String>,
}

fn case(row: &Row) -> Case {
    let response = row.get("Server response");
    let codes = row.codes("Server response");
    let status = codes
        .iter()
        .find(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit()))
        .map(|c| c.parse().unwrap())
        .unwrap_or(200);
    let body = codes
        .iter()
        .find(|c| c.starts_with('{') || *c == "null")
        .cloned();
    Case {
        id: row.id().to_owned(),
        endpoint: response.split('→').next().unwrap().trim().to_owned(),
        status,
        body,
        expected: row.get("Expected client result").to_owned(),
        expected_codes: row.codes("Expected client result"),
        response_codes: codes,
    }
}

/// `name="value"` inside a code span → value.
fn quoted_value(spans: &[String], key: &str) -> Option<String> {
    spans.iter().find_map(|s| {
        let rest = s.split_once(&format!("{key}=\""))?.1;
        Some(rest.split('"').next()?.to_owned())
    })
}

/// `{state:"active", last_heartbeat:"…", lease_extended:false, ttl_seconds:60}` → JSON.
fn loose_object(s: &str) -> Value {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut m = serde_json::Map::new();
    for part in inner.split(", ") {
        let (k, v) = part.split_once(':').unwrap();
        let v = v.trim();
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        m.insert(k.trim().to_owned(), value);
    }
    Value::Object(m)
}

fn error_body(code: Option<&str>) -> String {
    let details = code.map(|c| json!({ "error_code": c }));
    json!({"type":"error","error":{"type":"invalid_request_error","message":"m","details":details},"request_id":"req_x"}).to_string()
}

async fn call(server: &CaptureServer, endpoint: &str) -> Result<Value, ApiError> {
    let client = Client::new(server.config().max_retries(0).build().unwrap()).unwrap();
    let env = client.environment("env_test", Credential::environment_key("envkey_TEST"));
    let work = WorkId::from("work_test");
    match endpoint {
        "poll" | "any" => env
            .poll(&PollParams::default())
            .await
            .map(|w| serde_json::to_value(w).unwrap()),
        "heartbeat" => env
            .heartbeat(&work, &HeartbeatParams::expecting(NO_HEARTBEAT))
            .await
            .map(|h| serde_json::to_value(h).unwrap()),
        "stats" => env.stats().await.map(|s| serde_json::to_value(s).unwrap()),
        other => panic!("unknown endpoint {other}"),
    }
}

fn reply(status: u16, body: Option<&str>) -> Reply {
    match body {
        Some(b) => Reply::json(status, b.as_bytes().to_vec()),
        None => Reply::empty(status),
    }
}

fn assert_kind(c: &Case, err: &ApiError) {
    let class = c.expected_codes.first().expect("class span");
    assert_eq!(err.kind(), kind_of_class(class), "{}: {err}", c.id);
    if let Some(base) = c.expected.split("subclass of ").nth(1) {
        let base: String = base
            .chars()
            .take_while(|ch| ch.is_ascii_alphanumeric())
            .collect();
        assert_eq!(err.kind().base(), kind_of_class(&base), "{}", c.id);
    }
}

#[tokio::test]
async fn decoding_vectors_d1_to_d10() {
    let v = Vectors::load();
    let server = CaptureServer::start(|_| Reply::empty(500)).await;
    let rows: Vec<Row> = v.section("## 2.").table().rows().to_vec();
    assert!(rows.len() >= 10);
    for row in &rows {
        let c = case(row);
        match c.id.as_str() {
            "D1" | "D2" => {
                assert!(c.expected.contains("no work"), "{}", c.id);
                server.push(reply(c.status, c.body.as_deref()));
                assert_eq!(
                    call(&server, &c.endpoint).await.unwrap(),
                    Value::Null,
                    "{}",
                    c.id
                );
                if c.id == "D2" {
                    // The other "no work" encodings named by D2: 200 with an empty body.
                    server.push(Reply::json(200, Vec::new()));
                    assert_eq!(call(&server, "poll").await.unwrap(), Value::Null);
                }
            }
            "D3" => {
                let body = c.body.clone().unwrap();
                server.push(reply(c.status, Some(&body)));
                let client = server.client();
                let env_key = Credential::environment_key("envkey_TEST");
                let work = client
                    .environment("env_test", env_key.clone())
                    .poll(&PollParams::default())
                    .await
                    .unwrap()
                    .expect("a work item");
                let token = c.expected_codes.first().expect("token span");
                assert_eq!(work.sessions_token().as_deref(), Some(token.as_str()));
                assert_eq!(
                    Credential::for_work(&work, &env_key),
                    Credential::sessions_token(token.clone())
                );
                let sent: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(serde_json::to_value(&work).unwrap(), sent);
            }
            "D4" => {
                let body = c.body.clone().unwrap();
                server.push(reply(c.status, Some(&body)));
                let hb = call(&server, "heartbeat").await.unwrap();
                let expected_last = c
                    .expected_codes
                    .iter()
                    .find_map(|s| s.strip_prefix("expected_last_heartbeat="))
                    .expect("expected_last_heartbeat span");
                assert_eq!(hb["last_heartbeat"], expected_last);
                // The next heartbeat echoes it verbatim in the query.
                server.take();
                server.push(reply(200, Some(&body)));
                let client = server.client();
                client
                    .environment("env_test", Credential::environment_key("k"))
                    .heartbeat(
                        &WorkId::from("work_test"),
                        &HeartbeatParams::expecting(hb["last_heartbeat"].as_str().unwrap()),
                    )
                    .await
                    .unwrap();
                let captured = server.take();
                assert_eq!(
                    captured[0].query_pairs(),
                    vec![("expected_last_heartbeat".into(), expected_last.to_owned())]
                );
                let interval_span = c
                    .expected_codes
                    .iter()
                    .find(|s| s.starts_with("max("))
                    .expect("interval span");
                let want = *numbers(interval_span.rsplit('=').next().unwrap())
                    .first()
                    .unwrap();
                let ttl = hb["ttl_seconds"].as_i64().unwrap();
                assert_eq!(
                    heartbeat_interval(ttl, Duration::from_secs(30)),
                    Duration::from_secs_f64(want)
                );
            }
            "D5" => {
                let body = c.body.clone().unwrap();
                server.push(reply(c.status, Some(&body)));
                let err = call(&server, &c.endpoint).await.unwrap_err();
                assert_kind(&c, &err);
                let status = numbers(c.expected.split("status ").nth(1).unwrap())[0] as u16;
                assert_eq!(err.status(), Some(status));
                assert_eq!(
                    err.error_code(),
                    quoted_value(&c.expected_codes, "error_code").as_deref()
                );
                let state_span = c
                    .expected_codes
                    .iter()
                    .find_map(|s| s.strip_prefix("details.current_state="))
                    .expect("current_state span");
                let want = loose_object(state_span);
                let got =
                    serde_json::to_value(err.current_state().expect("current_state")).unwrap();
                assert_eq!(got, want);
                let sent: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(err.request_id(), sent["request_id"].as_str());
                assert!(err.is_fatal() && !err.is_retryable());
                match err.to_heartbeat_failure() {
                    HeartbeatFailure::PreconditionFailed(Some(state)) => {
                        assert_eq!(
                            state.state,
                            WorkState::parse(want["state"].as_str().unwrap())
                        )
                    }
                    other => panic!("{other:?}"),
                }
            }
            "D6" | "D7" => {
                let code = quoted_value(&c.response_codes, "error_code").expect("error_code");
                server.push(reply(c.status, Some(&error_body(Some(&code)))));
                let err = call(&server, &c.endpoint).await.unwrap_err();
                assert_kind(&c, &err);
                assert_eq!(err.error_code(), Some(code.as_str()));
                assert_eq!(err.status(), Some(c.status));
            }
            "D8" => {
                for code in [None, Some("some_unknown_code")] {
                    server.push(reply(c.status, Some(&error_body(code))));
                    let err = call(&server, &c.endpoint).await.unwrap_err();
                    assert_kind(&c, &err);
                }
            }
            "D9" => {
                server.push(reply(c.status, Some(&error_body(None))));
                let err = call(&server, &c.endpoint).await.unwrap_err();
                assert_kind(&c, &err);
                let range: Vec<f64> = numbers(c.expected_codes.get(1).unwrap())
                    .into_iter()
                    .chain(numbers(c.expected_codes.get(2).unwrap()))
                    .collect();
                let class = c.expected_codes.last().unwrap();
                // Unknown statuses inside the range (known ones such as 503/529 have own classes).
                for status in [502u16, 505, 520, 599] {
                    assert!((range[0]..=range[1]).contains(&f64::from(status)));
                    server.push(reply(status, Some(&error_body(None))));
                    let err = call(&server, &c.endpoint).await.unwrap_err();
                    assert_eq!(err.kind(), kind_of_class(class), "{status}");
                }
            }
            "D10" => {
                let body = c.body.clone().unwrap();
                server.push(reply(c.status, Some(&body)));
                let got = call(&server, &c.endpoint).await.unwrap();
                assert!(c.expected.contains("parsed"));
                assert_eq!(got, serde_json::from_str::<Value>(&body).unwrap());
            }
            other => panic!("vector {other} is not covered by this test; add it"),
        }
    }
}

#[tokio::test]
async fn request_id_header_wins_and_non_json_errors_are_kept() {
    let server = CaptureServer::start(|_| Reply::empty(500)).await;
    let client = Client::new(server.config().max_retries(0).build().unwrap()).unwrap();
    let env = client.environment("env_test", Credential::environment_key("k"));
    server.push(
        Reply::json(404, error_body(Some("environment_not_found")))
            .header("request-id", "req_header")
            .header("anthropic-workspace-id", "wrkspc_9"),
    );
    let err = env.poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.request_id(), Some("req_header"));
    assert_eq!(
        err.status_error().unwrap().workspace_id.as_deref(),
        Some("wrkspc_9")
    );
    assert_eq!(err.kind().base(), ApiErrorKind::NotFound);

    server.push(Reply::json(403, b"plain text failure".to_vec()));
    let err = env.poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.kind(), ApiErrorKind::PermissionDenied);
    assert_eq!(
        err.status_error().unwrap().body,
        Some(Value::String("plain text failure".into()))
    );
    assert!(err.is_fatal());
    assert!(matches!(
        err.to_heartbeat_failure(),
        HeartbeatFailure::Fatal(403)
    ));

    // A 2xx body that is not a work item is a typed decode error.
    server.push(Reply::json(200, b"{\"type\":\"work\"}".to_vec()));
    let err = env.poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.kind(), ApiErrorKind::Decode);
    assert!(!err.is_fatal());
}
