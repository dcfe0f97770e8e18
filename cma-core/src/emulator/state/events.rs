//! A session's event log: storing and broadcasting events, stream subscriptions, `GET /events`
//! paging, sending user events, and the record of tool results received.

use std::io::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::protocol::{Extra, Page, SessionStatus};

use super::super::agent::new_event_id;
use super::super::error::ApiError;
use super::{
    Frame, MAX_RECORD_BYTES, MAX_RECORDS, State, StoredEvent, Subscription, ToolResultRecord,
    page_cursor, parse_cursor, rfc3339,
};

impl State {
    /// Store one event: id (if absent), `processed_at`, status bookkeeping, broadcast.
    pub(super) fn append(&mut self, sid: &str, mut ev: Value) -> Value {
        let cap = self.limits.max_events_per_session.max(1);
        let byte_cap = self.limits.max_event_bytes_per_session;
        let Some(s) = self.sessions.get_mut(sid) else {
            return ev;
        };
        let at = Utc::now();
        if let Some(o) = ev.as_object_mut() {
            if !o.get("id").is_some_and(Value::is_string) {
                o.insert("id".into(), Value::String(new_event_id()));
            }
            o.insert("processed_at".into(), Value::String(rfc3339(at)));
        }
        let kind = ev
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let new_status = match kind.as_str() {
            "session.status_running" => {
                Some((SessionStatus::Running, "session.status_run_started"))
            }
            "session.status_idle" => Some((SessionStatus::Idle, "session.status_idled")),
            "session.status_terminated" => {
                Some((SessionStatus::Terminated, "session.status_terminated"))
            }
            _ => None,
        };
        let mut hook = None;
        if let Some((status, name)) = new_status {
            s.status = status;
            s.updated_at = rfc3339(at);
            hook = Some(name);
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let frame = Arc::new(Frame::of(&kind, &ev));
        let size = frame.bytes.len();
        s.event_bytes += size;
        s.events.push_back(StoredEvent {
            size,
            seq,
            at,
            kind: kind.clone(),
            value: ev.clone(),
        });
        // Oldest first; the newest event is always kept.
        while s.events.len() > cap || (s.event_bytes > byte_cap && s.events.len() > 1) {
            if let Some(old) = s.events.pop_front() {
                s.event_bytes -= old.size;
            }
        }
        if frame.terminal {
            s.terminal = Some(frame.clone());
        }
        // No subscriber is fine: the event is in the history.
        let _ = s.tx.send(frame);
        if let Some(name) = hook {
            self.webhook(name, sid);
        }
        ev
    }

    pub(crate) fn subscribe(&self, sid: &str) -> Result<Subscription, ApiError> {
        let s = self.live_session(sid)?;
        Ok(match &s.terminal {
            Some(f) => Subscription::Ended(f.clone()),
            None => Subscription::Live(s.tx.subscribe()),
        })
    }

    /// `GET /events`.
    pub(crate) fn list_events(&self, sid: &str, q: &EventQuery) -> Result<Page<Value>, ApiError> {
        let s = self.live_session(sid)?;
        let after = match &q.page {
            Some(p) => Some(parse_cursor("evp", p)?),
            None => None,
        };
        let keep = |e: &&StoredEvent| {
            (q.types.is_empty() || q.types.iter().any(|t| t == &e.kind))
                && q.gt.is_none_or(|t| e.at > t)
                && q.gte.is_none_or(|t| e.at >= t)
                && q.lt.is_none_or(|t| e.at < t)
                && q.lte.is_none_or(|t| e.at <= t)
        };
        let limit = q.limit.max(1);
        let picked: Vec<&StoredEvent> = if q.descending {
            s.events
                .iter()
                .rev()
                .filter(|e| after.is_none_or(|a| e.seq < a))
                .filter(keep)
                .take(limit + 1)
                .collect()
        } else {
            s.events
                .iter()
                .filter(|e| after.is_none_or(|a| e.seq > a))
                .filter(keep)
                .take(limit + 1)
                .collect()
        };
        let more = picked.len() > limit;
        let data: Vec<&StoredEvent> = picked.into_iter().take(limit).collect();
        let next_page = match (more, data.last()) {
            (true, Some(last)) => Some(page_cursor("evp", last.seq)),
            _ => None,
        };
        Ok(Page {
            data: data.into_iter().map(|e| e.value.clone()).collect(),
            next_page,
            extra: Extra::new(),
        })
    }

    /// Events of a session (for the programmatic API).
    pub(crate) fn events(&self, sid: &str) -> Vec<Value> {
        self.sessions
            .get(sid)
            .map(|s| s.events.iter().map(|e| e.value.clone()).collect())
            .unwrap_or_default()
    }

    fn find_call(&self, sid: &str, id: &str, kind: &str) -> Option<(String, Value)> {
        let s = self.sessions.get(sid)?;
        s.events.iter().rev().find_map(|e| {
            (e.kind == kind && e.value.get("id").and_then(Value::as_str) == Some(id)).then(|| {
                (
                    e.value
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    e.value.get("input").cloned().unwrap_or(Value::Null),
                )
            })
        })
    }

    /// Validate `events` (already checked to be objects with a string `type`).
    pub(crate) fn check_send(&self, sid: &str, events: &[Value]) -> Result<(), ApiError> {
        let s = self.live_session(sid)?;
        if s.status == SessionStatus::Terminated {
            return Err(ApiError::bad_request(format!(
                "session {sid} is terminated"
            )));
        }
        for ev in events {
            let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
            let (field, call_kind) = match kind {
                "user.tool_result" => ("tool_use_id", "agent.tool_use"),
                "user.custom_tool_result" => ("custom_tool_use_id", "agent.custom_tool_use"),
                "user.tool_confirmation" => ("tool_use_id", "agent.tool_use"),
                "user.message" | "user.interrupt" | "user.define_outcome" | "system.message" => {
                    continue;
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "events: type {other:?} cannot be sent"
                    )));
                }
            };
            let Some(target) = ev.get(field).and_then(Value::as_str) else {
                return Err(ApiError::bad_request(format!(
                    "events: {kind} needs a string {field}"
                )));
            };
            if self.find_call(sid, target, call_kind).is_none() {
                return Err(ApiError::bad_request(format!(
                    "events: {field} {target:?} does not name an {call_kind} event of this session"
                )));
            }
            if let Some(c) = ev.get("content")
                && !c.is_array()
            {
                return Err(ApiError::bad_request("events: content must be a list"));
            }
            if let Some(e) = ev.get("is_error")
                && !e.is_boolean()
            {
                return Err(ApiError::bad_request("events: is_error must be a boolean"));
            }
        }
        Ok(())
    }

    /// Store user events (after [`Self::check_send`]) and let the agent react.
    pub(crate) fn send_events(&mut self, sid: &str, events: Vec<Value>) -> Vec<Value> {
        let mut stored = Vec::with_capacity(events.len());
        for mut ev in events {
            if let Some(o) = ev.as_object_mut() {
                o.remove("id");
                o.remove("processed_at");
            }
            let ev = self.append(sid, ev);
            self.record_if_result(sid, &ev);
            let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
            if kind == "user.message" {
                self.requeue_if_dormant(sid);
            }
            let reaction = match self.sessions.get_mut(sid) {
                Some(s) => s.run.on_user_event(&ev),
                None => Vec::new(),
            };
            stored.push(ev);
            for r in reaction {
                self.append(sid, r);
            }
        }
        stored
    }

    /// Append server-side events (as the agent or the service would emit them) to a live
    /// session: stored, broadcast and listed like the scripted agent's own; the script does not
    /// react to them.
    pub(crate) fn emit_events(
        &mut self,
        sid: &str,
        events: Vec<Value>,
    ) -> Result<Vec<Value>, ApiError> {
        self.live_session(sid)?;
        Ok(events.into_iter().map(|ev| self.append(sid, ev)).collect())
    }

    fn record_if_result(&mut self, sid: &str, ev: &Value) {
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        let (field, call_kind) = match kind {
            "user.tool_result" => ("tool_use_id", "agent.tool_use"),
            "user.custom_tool_result" => ("custom_tool_use_id", "agent.custom_tool_use"),
            _ => return,
        };
        let tool_use_id = ev
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let call = self.find_call(sid, &tool_use_id, call_kind);
        let rec = ToolResultRecord {
            session_id: sid.to_owned(),
            tool_use_id,
            name: call.as_ref().map(|c| c.0.clone()),
            input: call.map(|c| c.1).unwrap_or(Value::Null),
            content: ev.get("content").cloned().unwrap_or(Value::Null),
            is_error: ev.get("is_error").and_then(Value::as_bool),
        };
        let line = serde_json::to_string(&rec).unwrap_or_default();
        if let Some(f) = self.record_file.as_mut()
            && let Err(e) = writeln!(f, "{line}").and_then(|()| f.flush())
        {
            tracing::warn!(error = %e, "emulator: cannot append to the record file");
        }
        self.record_bytes += line.len();
        self.records.push_back((line.len(), rec));
        while self.records.len() > MAX_RECORDS
            || (self.record_bytes > MAX_RECORD_BYTES && self.records.len() > 1)
        {
            if let Some((n, _)) = self.records.pop_front() {
                self.record_bytes -= n;
            }
        }
    }

    pub(crate) fn records(&self) -> Vec<ToolResultRecord> {
        self.records.iter().map(|(_, r)| r.clone()).collect()
    }
}

/// Parsed `GET /events` query.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventQuery {
    pub(crate) limit: usize,
    pub(crate) page: Option<String>,
    pub(crate) descending: bool,
    pub(crate) types: Vec<String>,
    pub(crate) gt: Option<DateTime<Utc>>,
    pub(crate) gte: Option<DateTime<Utc>>,
    pub(crate) lt: Option<DateTime<Utc>>,
    pub(crate) lte: Option<DateTime<Utc>>,
}
