//! Signed webhook delivery (Standard Webhooks, docs/protocol.md §7).
//!
//! The API only pushes a note into a bounded queue ([`Outbox::send`] never blocks; a full queue
//! drops the note with a warning). One background task delivers notes in order, each POST with a
//! timeout and a bounded number of attempts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::webhook::{WebhookSecret, sign};

use super::state::rfc3339;

/// Notes waiting for delivery.
const QUEUE: usize = 1024;
/// Delivery outcomes kept for inspection.
const MAX_LOG: usize = 1000;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Receiver URL.
    pub url: String,
    /// Signing secret.
    pub secret: WebhookSecret,
    /// Timeout of one POST (default 5 s).
    pub timeout: Duration,
    /// Attempts per event, including the first (default 3).
    pub max_attempts: u32,
    /// Pause before the second attempt; doubles after each failure (default 200 ms).
    pub retry_delay: Duration,
}

impl WebhookConfig {
    /// Deliver to `url`, signed with `secret`, with the default timeout and retries.
    pub fn new(url: impl Into<String>, secret: WebhookSecret) -> Self {
        Self {
            url: url.into(),
            secret,
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            retry_delay: Duration::from_millis(200),
        }
    }
}

/// The outcome of one event's delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The envelope's `id` (`wevt_…`), also the `webhook-id` header.
    pub id: String,
    /// `data.type`.
    pub event_type: String,
    /// `data.id`.
    pub resource_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// Status of the last attempt, if the receiver answered.
    pub last_status: Option<u16>,
    /// Whether a 2xx was received.
    pub delivered: bool,
}

struct Note {
    body: Vec<u8>,
    id: String,
    event_type: String,
    resource_id: String,
}

/// The API side of the queue.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Note>,
}

impl Outbox {
    /// Queue one event (never blocks).
    pub(crate) fn send(&self, kind: &str, id: &str, org: &str, workspace: &str) {
        let event_id = format!("wevt_{}", uuid::Uuid::new_v4().simple());
        let mut data = json!({"type": kind, "id": id, "organization_id": org});
        if !(kind.starts_with("external_key.") || kind.starts_with("user_profile.")) {
            data["workspace_id"] = json!(workspace);
        }
        let envelope = json!({"type": "event", "id": event_id,
                              "created_at": rfc3339(chrono::Utc::now()), "data": data});
        let note = Note {
            body: envelope.to_string().into_bytes(),
            id: event_id,
            event_type: kind.to_owned(),
            resource_id: id.to_owned(),
        };
        if self.tx.try_send(note).is_err() {
            tracing::warn!(event = kind, "emulator: webhook queue full, event dropped");
        }
    }
}

pub(crate) type DeliveryLog = Arc<Mutex<VecDeque<WebhookDelivery>>>;

/// Start the delivery task.
pub(crate) fn start(
    cfg: WebhookConfig,
    cancel: CancellationToken,
) -> Result<(Outbox, DeliveryLog, tokio::task::JoinHandle<()>), String> {
    let mut builder = reqwest::Client::builder().timeout(cfg.timeout);
    let loopback = reqwest::Url::parse(&cfg.url)
        .map_err(|e| format!("webhook url {:?}: {e}", cfg.url))?
        .host_str()
        .is_some_and(|h| h == "127.0.0.1" || h == "localhost" || h == "[::1]");
    if loopback {
        builder = builder.no_proxy();
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel::<Note>(QUEUE);
    let log: DeliveryLog = Arc::default();
    let log2 = log.clone();
    let task = tokio::spawn(async move {
        loop {
            let note = tokio::select! {
                _ = cancel.cancelled() => return,
                n = rx.recv() => match n { Some(n) => n, None => return },
            };
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                o = deliver(&client, &cfg, &note) => o,
            };
            if let Ok(mut l) = log2.lock() {
                l.push_back(outcome);
                while l.len() > MAX_LOG {
                    l.pop_front();
                }
            }
        }
    });
    Ok((Outbox { tx }, log, task))
}

async fn deliver(client: &reqwest::Client, cfg: &WebhookConfig, note: &Note) -> WebhookDelivery {
    let mut out = WebhookDelivery {
        id: note.id.clone(),
        event_type: note.event_type.clone(),
        resource_id: note.resource_id.clone(),
        attempts: 0,
        last_status: None,
        delivered: false,
    };
    let mut delay = cfg.retry_delay;
    for attempt in 1..=cfg.max_attempts.max(1) {
        out.attempts = attempt;
        let ts = chrono::Utc::now().timestamp();
        let sig = sign(&cfg.secret, &note.id, ts, &note.body);
        let res = client
            .post(&cfg.url)
            .header("content-type", "application/json")
            .header("webhook-id", &note.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(note.body.clone())
            .send()
            .await;
        match res {
            Ok(r) => {
                out.last_status = Some(r.status().as_u16());
                if r.status().is_success() {
                    out.delivered = true;
                    return out;
                }
            }
            Err(e) => tracing::debug!(error = %e, "emulator: webhook delivery failed"),
        }
        if attempt < cfg.max_attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    tracing::warn!(event = %note.event_type, "emulator: webhook not delivered");
    out
}
