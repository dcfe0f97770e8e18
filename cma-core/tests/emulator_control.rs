//! The emulator's control surface over real HTTP on 127.0.0.1: managing environments and
//! sessions, scenario files, signed webhooks, strict mode and shutdown.

mod emulator_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cma_core::emulator::{Emulator, EmulatorConfig, Scenario, ScriptEnd, WebhookConfig};
use cma_core::protocol::Work;
use cma_core::webhook::{Verifier, WebhookSecret};
use emulator_support::{Ctx, WAIT, ctx, ctx_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn environments_and_sessions_can_be_managed_over_http() {
    let c = ctx().await;
    let r = c
        .req(Method::POST, "/v1/environments", &c.api())
        .json(&json!({"name": "made", "config": {"type": "self_hosted"}, "metadata": {"a": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let key = r.headers()["x-emulator-environment-key"]
        .to_str()
        .unwrap()
        .to_owned();
    let env: Value = r.json().await.unwrap();
    let env_id = env["id"].as_str().unwrap().to_owned();
    assert_eq!(env["type"], "environment");
    assert_eq!(env["archived_at"], Value::Null);

    // A session created over HTTP queues work the new key can poll.
    let r = c
        .req(Method::POST, "/v1/sessions", &c.api())
        .json(&json!({"environment_id": env_id, "agent": "agent_x",
                      "emulator_script": {"calls": [{"name": "bash", "input": {"command": "true"}}], "end": "terminate"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["status"], "running");
    let w: Work = c
        .req(
            Method::GET,
            &format!("/v1/environments/{env_id}/work/poll"),
            &key,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        w.data.session_id().unwrap().as_str(),
        s["id"].as_str().unwrap()
    );

    let upd: Value = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .json(&json!({"description": "d", "metadata": {"a": null, "b": "2"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upd["metadata"], json!({"b": "2"}));
    let r = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .json(&json!({"config": {"type": "cloud", "networking": {"type": "unrestricted"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"]["details"]["error_code"],
        "invalid_config_type_change"
    );

    let archived: Value = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}/archive"),
            &c.api(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(archived["archived_at"].is_string());
    let r = c
        .req(
            Method::POST,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["details"]["error_code"], "environment_archived");
    let listed: Value = c
        .req(Method::GET, "/v1/environments", &c.api())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        1,
        "archived hidden"
    );
    let listed: Value = c
        .req(
            Method::GET,
            "/v1/environments?include_archived=true",
            &c.api(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    let del: Value = c
        .req(
            Method::DELETE,
            &format!("/v1/environments/{env_id}"),
            &c.api(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(del, json!({"id": env_id, "type": "environment_deleted"}));
    let r = c
        .req(Method::GET, &format!("/v1/environments/{env_id}"), &c.api())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["details"]["error_code"], "environment_not_found");
}

#[tokio::test]
async fn scenarios_load_from_json_and_bad_ones_fail_clearly() {
    let text = include_str!("../../examples/scenarios/basic.json");
    let sc = Scenario::from_json(text).expect("example scenario is valid");
    let emu = Emulator::start(EmulatorConfig::default().scenario(sc.clone()))
        .await
        .unwrap();
    assert_eq!(emu.api_key(), sc.api_key.clone().unwrap());
    let env = &sc.environments[0];
    assert_eq!(emu.environment_key(&env.id), env.environment_key.clone());
    let sid = sc.sessions[0].id.clone().unwrap();
    let calls = emu
        .session_events(&sid)
        .into_iter()
        .filter(|e| e["type"] == "agent.tool_use")
        .count();
    assert_eq!(calls, 1, "one call at a time");
    assert_eq!(emu.session_work(&sid).len(), 1);
    emu.shutdown().await;

    let err = Scenario::from_json(
        r#"{"sessions": [{"environment": "env_x", "calls": [], "end": "explode"}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("explode"), "{err}");
}

#[tokio::test]
async fn webhooks_are_signed_and_verifiable() {
    let secret = WebhookSecret::parse("whsec_ZW11bGF0b3Itd2ViaG9vay1zZWNyZXQ=").unwrap();
    let verifier = Verifier::new(secret.clone());
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let failures: Arc<Mutex<u32>> = Arc::default();
    let (seen2, failures2) = (seen.clone(), failures.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let (seen, failures, verifier) = (seen2.clone(), failures2.clone(), verifier.clone());
            async move {
                // The first delivery is refused once, to exercise the retry.
                let mut f = failures.lock().unwrap();
                if *f == 0 {
                    *f += 1;
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                match verifier.verify(&headers, &body) {
                    Ok(()) => {
                        seen.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        axum::http::StatusCode::NO_CONTENT
                    }
                    Err(_) => axum::http::StatusCode::UNAUTHORIZED,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut cfg = WebhookConfig::new(url, secret);
    cfg.retry_delay = Duration::from_millis(20);
    let c = ctx_with(EmulatorConfig::default().webhook(cfg)).await;
    let sid = c.session(vec![], ScriptEnd::Terminate);
    let want = [
        "session.created",
        "session.status_run_started",
        "session.status_idled",
        "session.status_terminated",
    ];
    let ok = c
        .emu
        .wait_for(WAIT, |e| e.webhook_deliveries().len() >= want.len())
        .await;
    assert!(ok, "deliveries: {:?}", c.emu.webhook_deliveries());
    let got = seen.lock().unwrap().clone();
    let kinds: Vec<&str> = got
        .iter()
        .map(|e| e["data"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, want);
    for e in &got {
        assert_eq!(e["type"], "event");
        assert!(e["id"].as_str().unwrap().starts_with("wevt_"));
        assert_eq!(e["data"]["id"], sid.as_str());
        assert!(e["data"]["organization_id"].is_string());
        assert!(e["data"]["workspace_id"].is_string());
        let _: cma_core::webhook::WebhookEvent = serde_json::from_value(e.clone()).unwrap();
    }
    let d = c.emu.webhook_deliveries();
    assert_eq!(d[0].attempts, 2);
    assert!(d.iter().all(|d| d.delivered));
    server.abort();
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_blocked_polls() {
    let c = ctx_with(EmulatorConfig::default().keepalive(Duration::from_secs(60))).await;
    let sid = c.session(vec![], ScriptEnd::Idle);
    let mut s = c.stream(&sid, &c.api()).await;
    c.claim().await;
    let poll = c
        .req(Method::GET, &c.work_path("/poll?block_ms=999"), &c.env.key)
        .send();
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Ctx { emu, .. } = c;
    emu.shutdown().await;
    let r = poll.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "null");
    assert!(s.event().await.is_none());
}

/// Strict mode: a poll without `Anthropic-Worker-ID` (or with an empty one) is a 400
/// `invalid_request_error` with code `worker_id_required`; with the header it is served. Without
/// strict mode (the real API's behaviour) the header is optional. The scenario's `"strict": true`
/// turns it on too.
#[tokio::test]
async fn strict_mode_rejects_polls_without_a_worker_id() {
    let strict_scenario = Scenario::from_json(r#"{"strict": true}"#).unwrap();
    for config in [
        EmulatorConfig::default().strict(true),
        EmulatorConfig::default().scenario(strict_scenario),
    ] {
        let c = ctx_with(config).await;
        let path = c.work_path("/poll");
        for header in [None, Some(""), Some("  ")] {
            let mut req = c.req(Method::GET, &path, &c.env.key);
            if let Some(h) = header {
                req = req.header("anthropic-worker-id", h);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "header {header:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["type"], "invalid_request_error");
            assert_eq!(body["error"]["details"]["error_code"], "worker_id_required");
            assert_eq!(
                body["error"]["message"],
                cma_core::emulator::STRICT_WORKER_ID_MESSAGE
            );
        }
        let r = c.poll("").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "null");
        let flagged: Vec<_> = c
            .emu
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/work/poll"))
            .map(|r| (r.worker_id.clone(), r.status))
            .collect();
        assert_eq!(flagged.len(), 4);
        assert!(flagged[..3].iter().all(|(_, s)| *s == Some(400)));
        assert_eq!(flagged[3], (Some("wrk-test".to_owned()), Some(200)));
    }
    let lax = ctx().await;
    let r = lax
        .req(Method::GET, &lax.work_path("/poll"), &lax.env.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the real API serves such polls");
}
