//! Starting and stopping an [`Emulator`]: validating and loading the scenario, binding the
//! listener, the lease sweeper, graceful shutdown and the abort on drop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Emulator;
use super::config::EmulatorConfig;
use super::error::EmulatorError;
use super::http::{self, Shared};
use super::resources::{self, SessionAttachments};
use super::scenario::{MAX_LEASE_TTL_SECONDS, Script};
use super::state::{EnvOptions, Limits, MAX_SESSIONS, MAX_WORK_ITEMS, State};
use super::webhooks::{self, WebhookConfig};

impl Emulator {
    /// Bind, load the scenario, start serving. Must be called inside a tokio runtime.
    pub async fn start(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        let sc = &config.scenario;
        sc.validate()?;
        let api_key = sc
            .api_key
            .clone()
            .or_else(|| config.api_key.clone())
            .unwrap_or_else(|| format!("sk-ant-emu-{}", uuid::Uuid::new_v4().simple()));
        let limits = Limits {
            lease_ttl_seconds: sc
                .lease_ttl_seconds
                .unwrap_or(config.lease_ttl_seconds)
                .clamp(1, MAX_LEASE_TTL_SECONDS),
            reclaim_default_ms: sc
                .reclaim_older_than_ms
                .unwrap_or(config.reclaim_older_than_ms),
            max_events_per_session: config.max_events_per_session.max(1),
            max_event_bytes_per_session: config.max_event_bytes_per_session,
            max_work_items: MAX_WORK_ITEMS,
            max_sessions: MAX_SESSIONS,
            organization_id: config.organization_id.clone(),
            workspace_id: config.workspace_id.clone(),
        };
        let cancel = CancellationToken::new();
        let mut state = State::new(limits, api_key);
        if let Some(path) = &config.record {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| EmulatorError::Record {
                    path: path.clone(),
                    source,
                })?;
            state.set_record_file(f);
        }
        let webhook = match &sc.webhook {
            Some(w) => Some(WebhookConfig::new(
                w.url.clone(),
                crate::webhook::WebhookSecret::parse(&w.secret)
                    .map_err(|e| EmulatorError::Webhook(e.to_string()))?,
            )),
            None => config.webhook.clone(),
        };
        let mut tasks = Vec::new();
        let mut webhook_log = None;
        if let Some(w) = webhook {
            let (outbox, log, task) =
                webhooks::start(w, cancel.clone()).map_err(EmulatorError::Webhook)?;
            state.outbox = Some(outbox);
            webhook_log = Some(log);
            tasks.push(task);
        }
        for e in &sc.environments {
            state
                .add_environment(
                    Some(e.id.clone()),
                    e.name.clone().unwrap_or_else(|| e.id.clone()),
                    e.environment_key.clone(),
                    EnvOptions::default(),
                )
                .map_err(EmulatorError::Invalid)?;
        }
        for k in &sc.skills {
            let tar = resources::skill_tar(&k.name, &k.files).map_err(EmulatorError::Invalid)?;
            state
                .resources
                .add_skill(&k.id, &k.name, tar)
                .map_err(EmulatorError::Invalid)?;
        }
        for m in &sc.memory_stores {
            state
                .resources
                .ensure_store(&m.id)
                .map_err(EmulatorError::Invalid)?;
            for (path, content) in &m.memories {
                state
                    .resources
                    .put(&m.id, path, content)
                    .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            }
        }
        for s in &sc.sessions {
            let sid = state
                .create_session(
                    &s.environment,
                    s.id.clone(),
                    Script {
                        agent_id: s.agent_id.clone(),
                        ..Script::new(s.calls.clone(), s.end)
                    },
                    true,
                    serde_json::json!({}),
                    Value::Null,
                )
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            let att = SessionAttachments {
                skills: s.skills.clone(),
                memory_stores: s.memory_stores.clone(),
            };
            state.attach(&sid, &att).map_err(EmulatorError::Invalid)?;
        }
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind.to_string(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind.to_string(),
                source,
            })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            faults: Mutex::default(),
            work_notify: Default::default(),
            change_notify: Default::default(),
            cancel: cancel.clone(),
            keepalive: config
                .keepalive
                .clamp(Duration::from_millis(10), Duration::from_secs(3600)),
            webhook_log,
            requests: Mutex::default(),
            strict: sc.strict || config.strict,
        });
        {
            let mut book = shared.fault_book();
            for f in &sc.faults {
                book.arm(f.clone());
            }
        }
        let app = http::router(shared.clone(), config.max_body_bytes);
        let listener = crate::listener::Listener::new(listener, config.listener)
            .map_err(|e| EmulatorError::Invalid(e.to_string()))?;
        let stop = cancel.clone();
        let server = tokio::spawn(async move { listener.serve(app, stop).await });
        // Lease expiry runs on its own clock so a re-queued item is pollable without traffic.
        let sweeper_shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = sweeper_shared.cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let changed = sweeper_shared.lock().sweep(tokio::time::Instant::now());
                if changed {
                    sweeper_shared.changed();
                }
            }
        }));
        Ok(Self {
            shared,
            addr,
            server: Some(server),
            tasks,
        })
    }

    /// Stop serving: open streams and blocked polls end, in-flight requests finish (bounded by
    /// 5 s), background tasks stop.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(s) = self.server.take() {
            s.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}
