//! Response decoding: the vectors' `decoding` section (what the official SDK made of each
//! response), served by a capture server and decoded by our clients. Expected values are read
//! from the vectors file.

mod client_support;

use std::time::Duration;

use client_support::{CaptureServer, Reply, decode_query};
use cma_core::client::{ApiError, ApiErrorKind, Client, Credential, HeartbeatParams, PollParams};
use cma_core::protocol::{NO_HEARTBEAT, WorkId, WorkState};
use cma_core::retry::heartbeat_interval;
use cma_core::runner::lease::HeartbeatFailure;
use cma_vectors::{Field as _, Vectors};
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
        "ServiceUnavailableError" => ApiErrorKind::ServiceUnavailable,
        "OverloadedError" => ApiErrorKind::Overloaded,
        other => panic!("unmapped SDK class {other}"),
    }
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
        "poll" => env
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

/// The case's response: its status, and its body when it has one.
fn reply_of(case: &Value) -> Reply {
    let response = case.req("response");
    let status = u16::try_from(response.req_u64("status")).unwrap();
    match response.req_str("body") {
        "" => Reply::empty(status),
        body => Reply::json(status, body.as_bytes().to_vec()),
    }
}

fn body_json(case: &Value) -> Value {
    serde_json::from_str(case.req("response").req_str("body")).unwrap()
}

#[tokio::test]
async fn decoding_vectors_d1_to_d10() {
    let v = Vectors::load();
    let server = CaptureServer::start(|_| Reply::empty(500)).await;
    let cases = v.list("decoding", "cases");
    assert!(cases.len() >= 6);
    for case in cases {
        let id = case.id();
        let endpoint = case.req_str("endpoint");
        let result = case.req("result");
        match id {
            "D1" | "D2" => {
                // D1: the SDK returns None. D2 (204, empty body): the SDK returns "" (its
                // latent bug; its poller would then fail on the item). Neither is a work item;
                // ours reads both as "no work".
                assert_ne!(result.req_str("outcome"), "parsed", "{id}");
                server.push(reply_of(case));
                assert_eq!(call(&server, endpoint).await.unwrap(), Value::Null, "{id}");
                if id == "D2" {
                    // The other empty encoding: 200 with an empty body.
                    server.push(Reply::json(200, Vec::new()));
                    assert_eq!(call(&server, "poll").await.unwrap(), Value::Null);
                }
            }
            "D3" => {
                assert_eq!(result.req_str("outcome"), "parsed");
                server.push(reply_of(case));
                let client = server.client();
                let env_key = Credential::environment_key("envkey_TEST");
                let work = client
                    .environment("env_test", env_key.clone())
                    .poll(&PollParams::default())
                    .await
                    .unwrap()
                    .expect("a work item");
                let token = case.req_str("sessions_token");
                assert_eq!(work.sessions_token().as_deref(), Some(token));
                assert_eq!(
                    Credential::for_work(&work, &env_key),
                    Credential::sessions_token(token)
                );
                assert_eq!(serde_json::to_value(&work).unwrap(), body_json(case));
                assert_eq!(
                    serde_json::to_value(&work).unwrap(),
                    *result.req("value"),
                    "the SDK's model of it"
                );
            }
            "D4" => {
                server.push(reply_of(case));
                let hb = call(&server, endpoint).await.unwrap();
                assert_eq!(hb, *result.req("value"));
                // The SDK's next heartbeat echoes `last_heartbeat`; so does ours.
                let next = case.req("next_heartbeat");
                let sent = next.req_array("heartbeat_queries");
                let want_query = sent[1].as_str().unwrap();
                server.take();
                server.push(reply_of(case));
                server
                    .client()
                    .environment("env_test", Credential::environment_key("k"))
                    .heartbeat(
                        &WorkId::from("work_test"),
                        &HeartbeatParams::expecting(hb["last_heartbeat"].as_str().unwrap()),
                    )
                    .await
                    .unwrap();
                let captured = server.take();
                assert_eq!(captured[0].query_pairs(), decode_query(want_query));
                assert_eq!(captured[0].query.as_deref(), Some(want_query));
                // The wait before that beat: the SDK's, for this TTL.
                let wait = next.req_array("waits")[0].as_f64().unwrap();
                let ttl = hb["ttl_seconds"].as_i64().unwrap();
                assert_eq!(
                    heartbeat_interval(ttl, Duration::from_secs(30)),
                    Duration::from_secs_f64(wait)
                );
            }
            "D5" => {
                server.push(reply_of(case));
                let err = call(&server, endpoint).await.unwrap_err();
                assert_eq!(result.req_str("outcome"), "error");
                assert_eq!(err.kind(), kind_of_class(result.req_str("class")), "{err}");
                assert_eq!(err.kind().base(), kind_of_class(result.req_str("refines")));
                assert_eq!(
                    err.status(),
                    Some(u16::try_from(result.req_u64("status")).unwrap())
                );
                assert_eq!(err.error_code(), result.opt_str("error_code"));
                let want = result.req("details").req("current_state");
                let got =
                    serde_json::to_value(err.current_state().expect("current_state")).unwrap();
                assert_eq!(&got, want);
                // The SDK takes the request id from the `request-id` header only (none here);
                // ours falls back to the body's.
                assert_eq!(err.request_id(), body_json(case)["request_id"].as_str());
                assert!(err.is_fatal() && !err.is_retryable());
                match err.to_heartbeat_failure() {
                    HeartbeatFailure::PreconditionFailed(Some(state)) => {
                        assert_eq!(state.state, WorkState::parse(want.req_str("state")))
                    }
                    other => panic!("{other:?}"),
                }
            }
            "D10" => {
                server.push(reply_of(case));
                let got = call(&server, endpoint).await.unwrap();
                assert_eq!(got, body_json(case));
                assert_eq!(got, *result.req("value"));
            }
            other => panic!("vector {other} is not covered by this test; add it"),
        }
    }
}

/// Every error response of the vectors gets the SDK's class (as our kind), the class it refines
/// (as our base kind) and its error code.
#[tokio::test]
async fn error_statuses_map_to_the_sdk_classes() {
    let v = Vectors::load();
    let server = CaptureServer::start(|_| Reply::empty(500)).await;
    let entries = v.list("decoding", "error_statuses");
    assert!(entries.len() >= 10);
    for e in entries {
        let status = u16::try_from(e.req_u64("status")).unwrap();
        let code = e.opt_str("error_code");
        server.push(Reply::json(status, error_body(code)));
        let err = call(&server, "poll").await.unwrap_err();
        let label = format!("{status} {code:?}");
        assert_eq!(err.kind(), kind_of_class(e.req_str("class")), "{label}");
        if let Some(refines) = e.opt_str("refines") {
            assert_eq!(err.kind().base(), kind_of_class(refines), "{label}");
        }
        assert_eq!(err.status(), Some(status), "{label}");
        assert_eq!(err.error_code(), e.opt_str("error_code"), "{label}");
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
