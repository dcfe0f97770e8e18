//! The HTTP surface: routes, authentication, request parsing, the SSE stream.
//!
//! Every handler follows the same order: consume a fault for its endpoint (delay, forced status),
//! authenticate (401), check `anthropic-beta` (400), find the resource (404), then act on the
//! state under its lock without awaiting.
//!
//! The steps every handler shares are in `common`; the handlers, by resource, in `work` (the
//! queue), `environments`, `sessions` (sessions and their event history) and `stream` (the SSE
//! event stream).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, new_request_id};
use super::faults::FaultBook;
use super::requests::{RequestLog, log_requests};
use super::state::State;
use super::webhooks::DeliveryLog;

mod common;
mod environments;
mod sessions;
mod stream;
mod work;

pub(crate) use common::{credential, fault_error};
pub use work::STRICT_WORKER_ID_MESSAGE;
pub(crate) use work::enqueue;

use environments::{env_archive, env_create, env_delete, env_get, env_list, env_update};
use sessions::{events_list, events_send, session_create, session_delete, session_get};
use stream::stream;
use work::{ack, heartbeat, poll, stats, stop, work_get, work_list, work_update};

/// The beta every environments/work/sessions call must carry (docs/protocol.md §1.2).
pub const MANAGED_AGENTS_BETA: &str = "managed-agents-2026-04-01";
/// Most events one `POST /events` may carry.
pub const MAX_EVENTS_PER_SEND: usize = 100;
/// Largest `limit` of a list call.
pub const MAX_LIST_LIMIT: usize = 1000;
/// `block_ms` above this is capped (docs/protocol.md §2.1: the server caps at 999).
pub const MAX_BLOCK_MS: u64 = 999;

/// Shared by every handler.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) faults: Mutex<FaultBook>,
    /// Woken when work becomes pollable.
    pub(crate) work_notify: Notify,
    /// Woken on any session or work state change (for programmatic waiters).
    pub(crate) change_notify: Notify,
    pub(crate) cancel: CancellationToken,
    pub(crate) keepalive: Duration,
    pub(crate) webhook_log: Option<DeliveryLog>,
    /// Every request received (bounded).
    pub(crate) requests: Mutex<RequestLog>,
    /// Strict mode: reject what the real API tolerates but the official worker never does.
    pub(crate) strict: bool,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn fault_book(&self) -> MutexGuard<'_, FaultBook> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn request_log(&self) -> MutexGuard<'_, RequestLog> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn changed(&self) {
        self.work_notify.notify_waiters();
        self.change_notify.notify_waiters();
    }
}

pub(crate) type App = Arc<Shared>;
type Res = Result<Response, ApiError>;

/// Build the router.
pub(crate) fn router(app: App, max_body: usize) -> Router {
    let work = "/v1/environments/{env}/work";
    Router::new()
        .route("/v1/environments", get(env_list).post(env_create))
        .route(
            "/v1/environments/{env}",
            get(env_get).post(env_update).delete(env_delete),
        )
        .route("/v1/environments/{env}/archive", post(env_archive))
        .route(work, get(work_list))
        .route(&format!("{work}/poll"), get(poll))
        .route(&format!("{work}/stats"), get(stats))
        .route(&format!("{work}/{{work}}"), get(work_get).post(work_update))
        .route(&format!("{work}/{{work}}/ack"), post(ack))
        .route(&format!("{work}/{{work}}/heartbeat"), post(heartbeat))
        .route(&format!("{work}/{{work}}/stop"), post(stop))
        .route("/v1/sessions", post(session_create))
        .route(
            "/v1/sessions/{sid}",
            get(session_get).delete(session_delete),
        )
        .route(
            "/v1/sessions/{sid}/events",
            get(events_list).post(events_send),
        )
        .route("/v1/sessions/{sid}/events/stream", get(stream))
        .merge(super::resources::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method not allowed",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::hostile::fault_middleware,
        ))
        .layer(axum::middleware::map_response(add_request_id))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            log_requests,
        ))
        .with_state(app)
}

async fn add_request_id(mut resp: Response) -> Response {
    if !resp.headers().contains_key("request-id")
        && let Ok(v) = HeaderValue::from_str(&new_request_id())
    {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}
