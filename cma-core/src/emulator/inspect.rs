//! What a running [`Emulator`] shows a test: its address and keys, environments, work items,
//! sessions and their events, memories, recorded results, logged requests, webhook deliveries,
//! and [`Emulator::wait_for`] to wait on any of them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::{SessionStatus, Work};

use super::requests::RequestRecord;
use super::scenario::ScriptEnd;
use super::state::ToolResultRecord;
use super::webhooks::WebhookDelivery;
use super::{Emulator, EnvironmentInfo};

impl Emulator {
    /// `http://127.0.0.1:<port>`: what a client uses as `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API key.
    pub fn api_key(&self) -> String {
        self.shared.lock().api_key.clone()
    }

    /// The environment key of an environment.
    pub fn environment_key(&self, env: &str) -> Option<String> {
        self.shared.lock().env_key(env)
    }

    /// Every environment with its key, in creation order.
    pub fn environments(&self) -> Vec<EnvironmentInfo> {
        self.shared
            .lock()
            .env_infos()
            .into_iter()
            .map(|(id, name, key)| EnvironmentInfo { id, name, key })
            .collect()
    }

    /// A store's memories, `path → content`; `None` for an unknown store.
    pub fn memories(&self, store_id: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.shared.lock().resources.contents(store_id)
    }

    /// Every work item, in creation order (`secret` is always null here).
    pub fn work_items(&self) -> Vec<Work> {
        self.shared.lock().all_work()
    }

    /// One work item.
    pub fn work(&self, id: &str) -> Option<Work> {
        self.shared.lock().work_item(id)
    }

    /// The work items of a session.
    pub fn session_work(&self, sid: &str) -> Vec<Work> {
        self.work_items()
            .into_iter()
            .filter(|w| w.data.session_id().is_some_and(|s| s.as_str() == sid))
            .collect()
    }

    /// Every session id, in creation order.
    pub fn session_ids(&self) -> Vec<String> {
        self.shared.lock().session_ids()
    }

    /// A session's stored events, in order.
    pub fn session_events(&self, sid: &str) -> Vec<Value> {
        self.shared.lock().events(sid)
    }

    /// A session's status.
    pub fn session_status(&self, sid: &str) -> Option<SessionStatus> {
        self.shared.lock().session_status(sid)
    }

    /// Script summary: (environment, number of calls, ending).
    pub fn session_script(&self, sid: &str) -> Option<(String, usize, ScriptEnd)> {
        self.shared.lock().script_summary(sid)
    }

    /// Whether a session's scripted agent has run to its end.
    pub fn script_finished(&self, sid: &str) -> bool {
        self.shared.lock().script_finished(sid)
    }

    /// Every tool result received so far.
    pub fn tool_results(&self) -> Vec<ToolResultRecord> {
        self.shared.lock().records()
    }

    /// The requests received so far, in arrival order (at most
    /// [`MAX_LOGGED_REQUESTS`](super::MAX_LOGGED_REQUESTS), the newest kept): method, path,
    /// query, credential kind, `x-stainless-helper`, worker id, the body of `stop` calls, and the
    /// answer's status.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.request_log().snapshot()
    }

    /// Forget the logged requests.
    pub fn clear_requests(&self) {
        self.shared.request_log().clear();
    }

    /// Outcomes of webhook deliveries so far (empty without a webhook).
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared
            .webhook_log
            .as_ref()
            .and_then(|l| l.lock().ok().map(|l| l.iter().cloned().collect()))
            .unwrap_or_default()
    }

    /// Whether every scripted session has terminated (or been deleted) and its last work item is
    /// stopped. `(total, ended, work_over)`.
    pub fn scripted_progress(&self) -> (usize, usize, bool) {
        self.shared.lock().scripted_progress()
    }

    /// Wait until `cond` holds (checked on every state change and at least every 50 ms) or
    /// `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.change_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep((deadline - now).min(Duration::from_millis(50))) => {}
            }
        }
    }
}
