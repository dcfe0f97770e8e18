//! The Claude Managed Agents (CMA) self-hosted environment, in Rust: the protocol, the session
//! runner and the control plane that composes the `cma` crates. A host depends on this crate
//! alone and picks the rest by feature.
//!
//! * [`protocol`]: typed objects (work items, heartbeats, sessions, session events, environments);
//!   unknown fields and unknown event types are preserved, never rejected.
//! * [`client`]: the HTTP clients (work queue, environments, sessions, event stream), wire
//!   compatible with the official `anthropic` SDK 2.10.0 (`docs/protocol.md` in the repository).
//! * [`retry`]: the SDK's retry and backoff arithmetic, as pure functions.
//! * [`sse`]: the incremental Server-Sent Events parser.
//! * [`webhook`]: Standard Webhooks signing and verification of CMA event deliveries, the typed
//!   event envelope, and a tower [`VerifyLayer`](webhook::VerifyLayer) for the host's route.
//! * [`listener`]: a hardened HTTP/1 listener (connection cap with eviction of the clients
//!   that wait longest, head, idle, body and request deadlines) for webhook receivers.
//! * [`runner`]: one work item's life: lease, event stream, tool calls, results.
//! * [`control`]: the control plane ([`ControlPlane`](control::plane::ControlPlane)) and the
//!   [`SandboxHost`](control::host::SandboxHost) that places sessions in sandboxes.
//! * Re-exported crates: [`sandbox`] (`cma-sandbox`: backends `isolate` by default, `docker` by
//!   feature), [`tools`] (`cma-tools`: the official toolset and custom tools) and, with the
//!   `store` feature, [`store`] (`cma-store`: snapshots and the durable state). [`prelude`]
//!   gathers what a host names.
//! * `emulator` (feature `emulator`): a local CMA server with scripted agents, for tests and demos.
//!
//! # Features
//!
//! `isolate` (default) and `docker` choose the sandbox backends; `store` adds snapshots and the
//! SQLite state store, `postgres`, `s3`, `gcs` and `azure` their other drivers; `emulator` the
//! local server.
//!
//! # Composing a control plane
//!
//! The whole job in a host's own service: a client of the hosted API, a [`SandboxHost`] with a
//! backend, the tools, snapshots and a state store, the [`ControlPlane`] on top, and the host's
//! own axum route, behind [`VerifyLayer`], that tells the plane when work may be waiting.
//! `examples/src/bin/embed.rs` in the repository runs the same composition against the local
//! emulator.
//!
//! [`SandboxHost`]: control::host::SandboxHost
//! [`ControlPlane`]: control::plane::ControlPlane
//! [`VerifyLayer`]: webhook::VerifyLayer
//!
//! ```no_run
//! # #[cfg(all(feature = "isolate", feature = "store"))]
//! # mod compose {
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use axum::{Extension, Router, routing::post};
//! use cma_core::prelude::*;
//!
//! pub async fn serve(environment_id: &str, key: &str, webhook_secret: &str)
//!     -> Result<(), Box<dyn std::error::Error>> {
//!     // 1. The hosted API (ANTHROPIC_BASE_URL, or the public API).
//!     let client = Client::new(ClientConfig::builder_from_env().build()?)?;
//!
//!     // 2. Where sessions run: a backend, the official tools, workspace snapshots that survive
//!     //    a session's sleep, and the durable state a restarted process recovers from.
//!     let state: Arc<dyn StateStore> = Arc::new(SqliteStateStore::open("state.sqlite").await?);
//!     let host = SandboxHost::builder()
//!         .backend(IsolateBackend::new("sandboxes")?)
//!         .tools(ToolsetFactory::new())
//!         .snapshots(SnapshotStore::local("snapshots", SnapshotConfig::default())?)
//!         .state_store(state.clone())
//!         .build()?;
//!     let host = Arc::new(host);
//!     host.recover().await?;
//!
//!     // 3. The control plane: drains the work queue when a webhook says so, and every minute
//!     //    in case one was lost.
//!     let plane = ControlPlane::builder(
//!         client,
//!         environment_id,
//!         Credential::environment_key(key),
//!         host,
//!     )
//!     .config(ControlPlaneConfig {
//!         claim: ClaimMode::Webhooks { fallback_poll: Duration::from_secs(60) },
//!         ..ControlPlaneConfig::default()
//!     })
//!     .state_store(state)
//!     .build()?;
//!
//!     // 4. The host's own route: only verified deliveries reach the handler.
//!     let verifier = Verifier::new(WebhookSecret::parse(webhook_secret)?);
//!     let app = Router::new()
//!         .route("/hooks/cma", post(on_event))
//!         .layer(VerifyLayer::new(verifier))
//!         .layer(Extension(plane.clone()));
//!     // Served by the hardened listener: connection cap, head/body/idle deadlines.
//!     let tcp = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     let listener = Listener::new(tcp, ListenerLimits::default())?;
//!     let stop = tokio_util::sync::CancellationToken::new();
//!     tokio::spawn(listener.serve(app, stop.clone()));
//!     plane.run().await?;
//!     Ok(())
//! }
//!
//! async fn on_event(
//!     Extension(plane): Extension<ControlPlane>,
//!     Extension(event): Extension<WebhookEvent>,
//! ) -> &'static str {
//!     plane.on_webhook(&event).await;
//!     "ok"
//! }
//! # }
//! # fn main() {}
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod control;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod listener;
pub mod protocol;
pub mod retry;
pub mod runner;
pub mod sse;
pub mod webhook;

#[cfg(feature = "egress")]
pub use cma_egress as egress;
pub use cma_sandbox as sandbox;
#[cfg(feature = "store")]
pub use cma_store as store;
pub use cma_tools as tools;

pub mod prelude;
