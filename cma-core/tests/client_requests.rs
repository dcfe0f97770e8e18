//! Request encoding: every case of the vectors' `requests` section (what the official SDK's
//! client sent for each call), driven through our clients against a capture server. The
//! expected requests are read from the vectors file.

mod client_support;

use client_support::{CaptureServer, Captured, Reply, decode_query};
use cma_core::client::{
    Client, CreateEnvironment, Credential, EventOrder, HeartbeatParams, ListEnvironmentsParams,
    ListEventsParams, ListParams, Metadata, MetadataPatch, PollParams, StreamParams,
    UpdateEnvironment,
};
use cma_core::protocol::{ContentBlock, EnvironmentConfig, NO_HEARTBEAT, SendEvent, WorkId};
use cma_vectors::{Field as _, Value, Vectors};
use serde_json::json;

const ENV_KEY: &str = "envkey_TEST";
const API_KEY: &str = "sk-ant-api-TEST";
const SESSIONS_TOKEN: &str = "sk-sess-tok";

/// Response fixtures (the bodies of the decoding vectors) so every call decodes.
struct Fixtures {
    work: String,
    heartbeat: String,
    stats: String,
}

fn response_body(v: &Vectors, id: &str) -> String {
    v.case("decoding", "cases", id)
        .req("response")
        .req_str("body")
        .to_owned()
}

fn environment_json() -> String {
    json!({"id":"env_test","type":"environment","name":"n","description":null,"metadata":{},
           "config":{"type":"self_hosted"},"scope":null,"created_at":"2026-05-01T00:00:00Z",
           "updated_at":"2026-05-01T00:00:00Z","archived_at":null})
    .to_string()
}

fn respond(c: &Captured, fx: &Fixtures) -> Reply {
    let p = c.path.as_str();
    let m = c.method.as_str();
    let body = if p.ends_with("/work/poll") {
        fx.work.clone()
    } else if p.ends_with("/heartbeat") {
        fx.heartbeat.clone()
    } else if p.ends_with("/work/stats") {
        fx.stats.clone()
    } else if p.starts_with("/v1/environments/") && p.contains("/work/") {
        fx.work.clone()
    } else if p.ends_with("/work") {
        format!(r#"{{"data":[{}],"next_page":null}}"#, fx.work)
    } else if p == "/v1/environments" && m == "GET" {
        format!(r#"{{"data":[{}],"next_page":null}}"#, environment_json())
    } else if p.starts_with("/v1/environments") && m == "DELETE" {
        r#"{"id":"env_test","type":"environment_deleted"}"#.to_owned()
    } else if p.starts_with("/v1/environments") {
        environment_json()
    } else if p.ends_with("/events/stream") {
        return Reply::sse(vec![b": nothing\n\n".to_vec()]);
    } else if p.ends_with("/events") && m == "GET" {
        r#"{"data":[],"next_page":null}"#.to_owned()
    } else if p.ends_with("/events") {
        r#"{"data":[]}"#.to_owned()
    } else if p.starts_with("/v1/sessions/") {
        r#"{"type":"session","id":"sesn_test","status":"idle"}"#.to_owned()
    } else {
        return Reply::json(
            404,
            r#"{"type":"error","error":{"type":"not_found_error","message":"no route"}}"#,
        );
    };
    Reply::json(200, body)
}

async fn drive(id: &str, server: &CaptureServer) {
    let plain = server.client();
    let with_worker = Client::new(
        server
            .config()
            .worker_id("host-abc123def456")
            .build()
            .unwrap(),
    )
    .unwrap();
    let with_beta = Client::new(server.config().beta("foo-2026-01-01").build().unwrap()).unwrap();
    let env = plain.environment("env_test", Credential::environment_key(ENV_KEY));
    let api_env = plain.environment("env_test", Credential::api_key(API_KEY));
    let envs = plain.environments(Credential::api_key(API_KEY));
    let session = plain.session("sesn_test", Credential::sessions_token(SESSIONS_TOKEN));
    let work = WorkId::from("work_test");
    match id {
        "R1" => {
            let p = PollParams {
                block_ms: Some(999),
                reclaim_older_than_ms: Some(5000),
            };
            let w = with_worker
                .environment("env_test", Credential::environment_key(ENV_KEY))
                .poll(&p)
                .await
                .unwrap();
            assert!(w.is_some());
        }
        "R2" => {
            env.poll(&PollParams::default()).await.unwrap();
        }
        "R3" => {
            env.ack(&work).await.unwrap();
        }
        "R4" => {
            let p = HeartbeatParams {
                desired_ttl_seconds: Some(60),
                expected_last_heartbeat: Some(NO_HEARTBEAT.into()),
            };
            env.heartbeat(&work, &p).await.unwrap();
        }
        "R5" => {
            env.heartbeat(&work, &HeartbeatParams::expecting("2026-05-01T00:00:01Z"))
                .await
                .unwrap();
        }
        "R6" => {
            env.stop(&work, None).await.unwrap();
        }
        "R7" => {
            env.stop(&work, Some(true)).await.unwrap();
        }
        "R8" => {
            let p = ListParams {
                limit: Some(10),
                page: None,
            };
            assert_eq!(env.list_work(&p).await.unwrap().data.len(), 1);
        }
        "R9" => {
            api_env.retrieve_work(&work).await.unwrap();
        }
        "R10" => {
            let patch = MetadataPatch::new()
                .with("k", Some("v".into()))
                .with("gone", None);
            api_env.update_work(&work, &patch).await.unwrap();
        }
        "R11" => {
            api_env.stats().await.unwrap();
        }
        "R12" => {
            session.get().await.unwrap();
        }
        "R13" => {
            session
                .send_events(&[SendEvent::ToolResult {
                    tool_use_id: "sevt_1".into(),
                    is_error: false,
                    content: vec![ContentBlock::text("hi")],
                }])
                .await
                .unwrap();
        }
        "R14" => {
            let p = ListEventsParams {
                types: vec!["agent.tool_use".into(), "user.tool_result".into()],
                created_at_gt: Some("2026-05-01T00:00:00Z".into()),
                order: Some(EventOrder::Asc),
                limit: Some(50),
                ..ListEventsParams::default()
            };
            session.list_events(&p).await.unwrap();
        }
        "R15" => {
            let p = StreamParams {
                event_deltas: vec!["agent.message".into()],
            };
            drop(session.stream(&p).await.unwrap());
        }
        "R16" => {
            let p = CreateEnvironment {
                name: "n".into(),
                config: Some(Some(EnvironmentConfig::SelfHosted)),
                metadata: Some(Metadata::new().with("a", "b".into())),
                ..CreateEnvironment::default()
            };
            envs.create(&p).await.unwrap();
        }
        "R17" => {
            let config = json!({"type":"cloud","networking":{"type":"limited","allowed_hosts":["example.com"],"allow_mcp_servers":true,"allow_package_managers":false},"packages":{"pip":["requests"]}});
            let p = CreateEnvironment {
                name: "n".into(),
                config: Some(Some(EnvironmentConfig::Other(config))),
                ..CreateEnvironment::default()
            };
            envs.create(&p).await.unwrap();
        }
        "R18" => {
            let p = UpdateEnvironment {
                description: Some(None),
                metadata: Some(Some(MetadataPatch::new().with("a", None))),
                ..UpdateEnvironment::default()
            };
            envs.update(&"env_test".into(), &p).await.unwrap();
        }
        "R19" => {
            let p = ListEnvironmentsParams {
                include_archived: Some(true),
                limit: Some(5),
                page: None,
            };
            envs.list(&p).await.unwrap();
        }
        "R20" => {
            envs.archive(&"env_test".into()).await.unwrap();
            let d = envs.delete(&"env_test".into()).await.unwrap();
            assert_eq!(d.kind, "environment_deleted");
        }
        "R21" => {
            session
                .send_events(&[SendEvent::Interrupt {
                    session_thread_id: None,
                }])
                .await
                .unwrap();
        }
        "R22" => {
            session
                .send_events(&[SendEvent::CustomToolResult {
                    custom_tool_use_id: "sevt_ct01".into(),
                    is_error: None,
                    content: vec![ContentBlock::text("42")],
                }])
                .await
                .unwrap();
        }
        "R23" => {
            session
                .send_events(&[SendEvent::ToolConfirmation {
                    tool_use_id: "sevt_tu01".into(),
                    result: "deny".into(),
                    deny_message: Some("no".into()),
                }])
                .await
                .unwrap();
        }
        "R24" => {
            with_beta
                .environment("env_test", Credential::environment_key(ENV_KEY))
                .poll(&PollParams::default())
                .await
                .unwrap();
        }
        other => panic!("vector {other} is not driven by this test; add it"),
    }
}

/// Compare one captured request with the SDK's: method, path, query, every recorded header
/// (present with the same value, or absent), and the body bytes.
fn check_request(id: &str, c: &Captured, want: &Value, recorded: &[Value]) {
    assert_eq!(c.method, want.req_str("method"), "{id}: method");
    assert_eq!(c.path, want.req_str("path"), "{id}: path");
    match want.opt_str("query") {
        Some(q) => {
            assert_eq!(c.query_pairs(), decode_query(q), "{id}: query");
            // Where the SDK percent-encodes, the bytes on the wire must match too.
            if q.contains('%') {
                assert_eq!(c.query.as_deref(), Some(q), "{id}: raw query");
            }
        }
        None => assert!(
            c.query.as_deref().unwrap_or("").is_empty(),
            "{id}: unexpected query {:?}",
            c.query
        ),
    }
    let headers = want.req("headers");
    for name in recorded {
        let name = name.as_str().expect("header name");
        match headers.opt_str(name) {
            Some(value) => {
                assert_eq!(c.header(name), Some(value), "{id}: header {name}");
                assert_eq!(c.header_count(name), 1, "{id}: header {name} once");
            }
            None => assert_eq!(c.header_count(name), 0, "{id}: header {name} not sent"),
        }
    }
    match want.opt_str("body") {
        Some(body) => assert_eq!(String::from_utf8_lossy(&c.body), body, "{id}: body bytes"),
        None => assert!(c.body.is_empty(), "{id}: no body"),
    }
}

#[tokio::test]
async fn request_vectors_r1_to_r24() {
    let v = Vectors::load();
    let fx = Fixtures {
        work: response_body(v, "D3"),
        heartbeat: response_body(v, "D4"),
        stats: response_body(v, "D10"),
    };
    let server = CaptureServer::start(move |c| respond(c, &fx)).await;
    let section = v.section("requests");
    let recorded = section.req_array("recorded_headers");
    let cases = section.req_array("cases");
    assert!(cases.len() >= 24, "expected R1–R24, found {}", cases.len());
    for case in cases {
        let id = case.id();
        drive(id, &server).await;
        let captured = server.take();
        let want = case.req_array("requests");
        assert_eq!(captured.len(), want.len(), "{id}: request count");
        for (c, w) in captured.iter().zip(want) {
            check_request(id, c, w, recorded);
        }
    }
}

#[tokio::test]
async fn empty_and_dot_ids_are_rejected_before_sending() {
    let server = CaptureServer::start(|_| Reply::json(200, "null")).await;
    let client = server.client();
    let env = client.environment("", Credential::environment_key(ENV_KEY));
    let err = env.poll(&PollParams::default()).await.unwrap_err();
    assert_eq!(err.kind(), cma_core::client::ApiErrorKind::InvalidRequest);
    let env = client.environment("env_test", Credential::environment_key(ENV_KEY));
    assert!(env.ack(&WorkId::from("")).await.is_err());
    assert!(env.ack(&WorkId::from("..")).await.is_err());
    assert!(
        client
            .session("", Credential::sessions_token(SESSIONS_TOKEN))
            .get()
            .await
            .is_err()
    );
    // block_ms outside 1–999 (0 is rejected by the server too).
    for bad in [0, 1000] {
        let p = PollParams {
            block_ms: Some(bad),
            reclaim_older_than_ms: None,
        };
        assert!(env.poll(&p).await.unwrap_err().is_fatal());
    }
    assert!(server.take().is_empty(), "nothing may reach the server");
}

#[tokio::test]
async fn path_segments_are_percent_encoded() {
    let server = CaptureServer::start(|_| Reply::json(200, "null")).await;
    let env = server
        .client()
        .environment("env/1 x?", Credential::environment_key(ENV_KEY));
    env.poll(&PollParams::default()).await.unwrap();
    let c = server.take();
    assert_eq!(c[0].path, "/v1/environments/env%2F1%20x%3F/work/poll");
}

#[tokio::test]
async fn workspace_user_agent_and_helper_headers() {
    use cma_core::client::Helper;
    let server = CaptureServer::start(|_| Reply::json(200, "null")).await;
    let client = Client::new(
        server
            .config()
            .workspace_id("wrkspc_1")
            .user_agent("ua/1")
            .build()
            .unwrap(),
    )
    .unwrap();
    let env = client
        .environment("env_test", Credential::environment_key(ENV_KEY))
        .with_helper(Some(Helper::WorkPoller));
    env.poll(&PollParams::default()).await.unwrap();
    let c = &server.take()[0];
    assert_eq!(c.header("anthropic-workspace-id"), Some("wrkspc_1"));
    assert_eq!(c.header("user-agent"), Some("ua/1"));
    assert_eq!(
        c.header("x-stainless-helper"),
        Some("environments-work-poller")
    );
}

#[test]
fn base_url_is_validated_and_defaults_match_the_sdk() {
    // `ANTHROPIC_BASE_URL` is covered by `client_env.rs` (its own process).
    let cfg = cma_core::client::ClientConfig::builder()
        .base_url("http://127.0.0.1:9/prefix/")
        .build()
        .unwrap();
    assert_eq!(cfg.base_url(), "http://127.0.0.1:9/prefix");
    assert!(
        cma_core::client::ClientConfig::builder()
            .base_url("ftp://x")
            .build()
            .is_err()
    );
    assert!(
        cma_core::client::ClientConfig::builder()
            .base_url("not a url")
            .build()
            .is_err()
    );
    let d = cma_core::client::ClientConfig::builder().build().unwrap();
    assert_eq!(d.base_url(), cma_core::client::DEFAULT_BASE_URL);
    assert_eq!(d.max_retries(), 2);
    assert_eq!(d.connect_timeout(), std::time::Duration::from_secs(5));
    assert_eq!(d.request_timeout(), std::time::Duration::from_secs(600));
}
