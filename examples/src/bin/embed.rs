//! `embed`: `cma-core` used as a library inside a host's own web service.
//!
//! ```text
//! cargo run -p cma-examples --bin embed
//! ```
//!
//! The host owns an axum server. It composes a control plane from the crates (client, sandbox
//! host with the isolate backend, the official tools, workspace snapshots and a SQLite state
//! store), puts its webhook route behind `VerifyLayer`, and lets verified deliveries tell the plane
//! when work may be waiting. The local emulator plays Anthropic: it signs a webhook for a new
//! session and delivers it to the host's route; the plane drains the queue, runs the session's one
//! tool call in a sandbox, and posts the result. The fallback poll is an hour, so only the webhook
//! can have started the work. Exit 0 when the result came back as expected.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router, routing::post};
use cma_core::emulator::{
    Emulator, EmulatorConfig, Scenario, Script, ScriptEnd, ScriptedCall, WebhookConfig,
};
use cma_core::prelude::*;
use serde_json::json;

/// The shared signing secret of the webhook (in production: the one the console shows).
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("embed: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The host's own web server, bound first so the emulator knows where to deliver webhooks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hooks/cma", listener.local_addr()?);

    // Anthropic's stand-in: one environment, webhooks signed with the shared secret.
    let emulator = Emulator::start(
        EmulatorConfig::default()
            .scenario(Scenario::from_json(
                r#"{"environments": [{"id": "env_embed", "name": "embed"}]}"#,
            )?)
            .webhook(WebhookConfig::new(
                hook_url.clone(),
                WebhookSecret::parse(WEBHOOK_SECRET)?,
            )),
    )
    .await?;
    let env = emulator
        .environments()
        .into_iter()
        .next()
        .ok_or("the emulator has no environment")?;
    let data = tempfile::tempdir()?;
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emulator.base_url())
            .build()?,
    )?;
    let (environment_id, environment_key) = (env.id.clone(), env.key.clone());
    let data_dir = data.path();

    // ANCHOR: compose
    // Where sessions run: the isolate backend, the official tools, snapshots that keep a
    // session's files across its sleeps, and the state a restarted process recovers from.
    let state: Arc<dyn StateStore> =
        Arc::new(SqliteStateStore::open(data_dir.join("state.sqlite")).await?);
    let host = SandboxHost::builder()
        .backend(IsolateBackend::new(data_dir.join("sandboxes"))?)
        .tools(ToolsetFactory::new())
        .snapshots(SnapshotStore::local(
            data_dir.join("snapshots"),
            SnapshotConfig::default(),
        )?)
        .state_store(state.clone())
        .build()?;

    // The control plane drains the work queue when a verified webhook says work may be
    // waiting, and polls as a fallback in case a delivery is lost.
    let plane = ControlPlane::builder(
        client,
        environment_id,
        Credential::environment_key(environment_key),
        Arc::new(host),
    )
    .config(ControlPlaneConfig {
        claim: ClaimMode::Webhooks {
            fallback_poll: Duration::from_secs(3600),
        },
        ..ControlPlaneConfig::default()
    })
    .state_store(state)
    .build()?;

    // The host's own route: VerifyLayer rejects anything not signed with the secret, and
    // hands the handler the parsed event.
    let verifier = Verifier::new(WebhookSecret::parse(WEBHOOK_SECRET)?);
    let app = Router::new()
        .route("/hooks/cma", post(on_event))
        .layer(VerifyLayer::new(verifier))
        .layer(Extension(plane.clone()));
    // ANCHOR_END: compose

    // Served by the hardened listener (connection cap, head/body/idle deadlines).
    let stop = tokio_util::sync::CancellationToken::new();
    let server =
        tokio::spawn(Listener::new(listener, ListenerLimits::default())?.serve(app, stop.clone()));
    let claimer = {
        let plane = plane.clone();
        tokio::spawn(async move { plane.run().await })
    };
    println!("host        webhooks on {hook_url}");

    // A new session: the emulator queues its work item and signs a `session.created` webhook.
    let session = emulator.create_session(
        &env.id,
        Script::new(
            vec![ScriptedCall::tool(
                "write",
                json!({"file_path": "hello.txt", "content": "hello from the host\n"}),
            )],
            ScriptEnd::Terminate,
        ),
    )?;
    println!("emulator    created {session}");
    let done = emulator
        .wait_for(Duration::from_secs(30), |e| {
            let (sessions, ended, work_over) = e.scripted_progress();
            sessions == ended && work_over
        })
        .await;
    plane.shutdown(Duration::from_secs(5)).await;
    claimer.abort();
    stop.cancel();
    let _ = server.await;

    let results = emulator.tool_results();
    // Deliveries the host's route answered with 2xx, i.e. that passed VerifyLayer.
    let webhooks = emulator
        .webhook_deliveries()
        .iter()
        .filter(|d| d.delivered)
        .count();
    for r in &results {
        println!(
            "result      {} -> {} (is_error: {:?})",
            r.name.as_deref().unwrap_or("?"),
            r.content,
            r.is_error
        );
    }
    println!(
        "summary     {webhooks} verified webhook(s), {} drain(s), {} item(s) claimed",
        plane.stats().drains,
        plane.stats().claimed
    );
    let expected = json!([{"type": "text", "text": "wrote 20 bytes to hello.txt"}]);
    match results.as_slice() {
        [r] if done && webhooks > 0 && r.is_error == Some(false) && r.content == expected => {
            println!("ok");
            Ok(())
        }
        _ => Err(format!(
            "expected one successful write after a verified webhook (done: {done}, webhooks: {webhooks}, results: {})",
            results.len()
        )
        .into()),
    }
}

// ANCHOR: handler
/// A verified delivery: the plane decides whether work may be waiting.
async fn on_event(
    Extension(plane): Extension<ControlPlane>,
    Extension(event): Extension<WebhookEvent>,
) -> &'static str {
    plane.on_webhook(&event).await;
    "ok"
}
// ANCHOR_END: handler
