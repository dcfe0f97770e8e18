//! Sessions: creation, retrieval, attachments, continuation, deletion and termination.

use std::collections::VecDeque;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::protocol::{Extra, SessionStatus, WorkData, WorkState};

use super::super::agent::AgentRun;
use super::super::error::ApiError;
use super::super::resources::SessionAttachments;
use super::super::scenario::{CallKind, Script, ScriptEnd};
use super::{STREAM_BUFFER, SessionEntry, State, now_str, short_id};

impl State {
    /// Create a session, run its agent's opening events, queue its work item.
    pub(crate) fn create_session(
        &mut self,
        env: &str,
        id: Option<String>,
        script: Script,
        scripted: bool,
        metadata: Value,
        title: Value,
    ) -> Result<String, ApiError> {
        let e = self
            .envs
            .iter()
            .find(|e| e.env.id.as_str() == env)
            .ok_or_else(|| ApiError::environment_not_found(env))?;
        if e.env.archived_at.is_some() {
            return Err(
                ApiError::bad_request(format!("environment {env} is archived"))
                    .with_code("environment_archived"),
            );
        }
        let id = id.unwrap_or_else(|| format!("sesn_{}", short_id()));
        self.make_room_for_session()?;
        if self.sessions.contains_key(&id) {
            return Err(ApiError::conflict(format!("session {id} already exists")));
        }
        let mut tools = vec![json!({"type": "agent_toolset_20260401"})];
        let mut seen = std::collections::HashSet::new();
        for c in &script.calls {
            if c.kind == CallKind::CustomToolUse && seen.insert(c.name.clone()) {
                tools.push(json!({"type": "custom", "name": c.name,
                                  "description": format!("scripted custom tool {}", c.name),
                                  "input_schema": {"type": "object"}}));
            }
        }
        let now = now_str();
        let (tx, _) = broadcast::channel(STREAM_BUFFER);
        let entry = SessionEntry {
            id: id.clone(),
            env_id: env.to_owned(),
            status: SessionStatus::Idle,
            agent: json!({"type": "agent",
                          "id": script.agent_id.as_deref().unwrap_or("agent_emulator"),
                          "name": "emulator scripted agent",
                          "version": 1, "skills": [], "tools": tools, "mcp_servers": []}),
            metadata,
            title,
            created_at: now.clone(),
            updated_at: now,
            events: VecDeque::new(),
            event_bytes: 0,
            next_seq: 1,
            tx,
            run: AgentRun::new(script),
            scripted,
            deleted: false,
            work_id: None,
            terminal: None,
            resources: Vec::new(),
        };
        self.sessions.insert(id.clone(), entry);
        self.session_order.push(id.clone());
        self.webhook("session.created", &id);
        let opening = match self.sessions.get_mut(&id) {
            Some(s) => s.run.start(),
            None => Vec::new(),
        };
        for ev in opening {
            self.append(&id, ev);
        }
        let work = self.enqueue(
            env,
            WorkData {
                kind: "session".into(),
                id: id.clone(),
                extra: Extra::new(),
            },
        );
        if let Some(s) = self.sessions.get_mut(&id) {
            s.work_id = Some(work);
        }
        Ok(id)
    }

    pub(super) fn live_session(&self, sid: &str) -> Result<&SessionEntry, ApiError> {
        match self.sessions.get(sid) {
            Some(s) if !s.deleted => Ok(s),
            _ => Err(ApiError::not_found(format!("session {sid} not found"))),
        }
    }

    /// `GET /v1/sessions/{id}`.
    pub(crate) fn session_json(&self, sid: &str) -> Result<Value, ApiError> {
        let s = self.live_session(sid)?;
        Ok(json!({
            "type": "session",
            "id": s.id,
            "status": s.status,
            "environment_id": s.env_id,
            "agent": s.agent,
            "resources": s.resources,
            "metadata": s.metadata,
            "vault_ids": [],
            "title": s.title,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
            "archived_at": null,
        }))
    }

    /// A session's `resources[]`.
    pub(crate) fn session_resources(&self, sid: &str) -> Vec<Value> {
        self.sessions
            .get(sid)
            .map(|s| s.resources.clone())
            .unwrap_or_default()
    }

    /// Attach skills and memory stores to a session (unknown stores are created empty).
    pub(crate) fn attach(&mut self, sid: &str, att: &SessionAttachments) -> Result<(), String> {
        for m in &att.memory_stores {
            self.resources.ensure_store(&m.memory_store_id)?;
        }
        let s = self
            .sessions
            .get_mut(sid)
            .ok_or_else(|| format!("session {sid} not found"))?;
        let skills: Vec<Value> = att
            .skills
            .iter()
            .map(|k| {
                json!({"type": "custom", "skill_id": k.skill_id,
                       "version": k.version.clone().unwrap_or_else(|| "latest".into())})
            })
            .collect();
        if let Some(list) = s.agent.get_mut("skills").and_then(Value::as_array_mut) {
            list.extend(skills);
        }
        s.resources
            .extend(att.memory_stores.iter().map(|m| m.to_resource()));
        Ok(())
    }

    pub(crate) fn session_status(&self, sid: &str) -> Option<SessionStatus> {
        self.sessions.get(sid).map(|s| s.status.clone())
    }

    pub(crate) fn session_ids(&self) -> Vec<String> {
        self.session_order.clone()
    }

    /// Scripted sessions that have terminated (or were deleted), and whether their work is over.
    pub(crate) fn scripted_progress(&self) -> (usize, usize, bool) {
        let mut total = 0;
        let mut ended = 0;
        let mut work_over = true;
        for s in self.sessions.values().filter(|s| s.scripted) {
            total += 1;
            if s.deleted || s.status == SessionStatus::Terminated {
                ended += 1;
            }
            if let Some(w) = s.work_id.as_ref().and_then(|w| self.work.get(w))
                && w.work.state != WorkState::Stopped
            {
                work_over = false;
            }
        }
        (total, ended, work_over)
    }

    /// A message to a session whose work item is over queues a new one.
    /// Give a session whose script has ended a new one (the agent wakes up with more calls):
    /// its opening events are emitted and, if the session's work item is over, a new one queued.
    pub(crate) fn continue_session(&mut self, sid: &str, script: Script) -> Result<(), ApiError> {
        let s = self
            .sessions
            .get_mut(sid)
            .filter(|s| !s.deleted)
            .ok_or_else(|| ApiError::not_found(format!("session {sid} not found")))?;
        if s.terminal.is_some() || s.status == SessionStatus::Terminated {
            return Err(ApiError::bad_request(format!(
                "session {sid} is terminated"
            )));
        }
        if !s.run.finished() {
            return Err(ApiError::bad_request(format!(
                "session {sid} is still running its script"
            )));
        }
        s.run = AgentRun::new(script);
        let opening = s.run.start();
        for ev in opening {
            self.append(sid, ev);
        }
        self.requeue_if_dormant(sid);
        Ok(())
    }

    pub(super) fn requeue_if_dormant(&mut self, sid: &str) {
        let Some(s) = self.sessions.get(sid) else {
            return;
        };
        let live = s
            .work_id
            .as_ref()
            .and_then(|w| self.work.get(w))
            .is_some_and(|w| w.work.state != WorkState::Stopped);
        if live {
            return;
        }
        let env = s.env_id.clone();
        let work = self.enqueue(
            &env,
            WorkData {
                kind: "session".into(),
                id: sid.to_owned(),
                extra: Extra::new(),
            },
        );
        if let Some(s) = self.sessions.get_mut(sid) {
            s.work_id = Some(work);
        }
    }

    /// `DELETE /v1/sessions/{id}`: broadcast `session.deleted`, forget the session.
    pub(crate) fn delete_session(&mut self, sid: &str) -> Result<(), ApiError> {
        self.live_session(sid)?;
        self.append(sid, json!({"type": "session.deleted"}));
        if let Some(s) = self.sessions.get_mut(sid) {
            s.deleted = true;
            s.events.clear();
            s.event_bytes = 0;
        }
        self.webhook("session.deleted", sid);
        Ok(())
    }

    /// End a session from the server side: `session.status_terminated` (no-op if it already ended).
    pub(crate) fn terminate_session(&mut self, sid: &str) -> Result<(), ApiError> {
        let s = self.live_session(sid)?;
        if s.status != SessionStatus::Terminated {
            self.append(sid, json!({"type": "session.status_terminated"}));
        }
        Ok(())
    }

    /// Script summary for the CLI.
    pub(crate) fn script_summary(&self, sid: &str) -> Option<(String, usize, ScriptEnd)> {
        let s = self.sessions.get(sid)?;
        Some((s.env_id.clone(), s.run.call_count(), s.run.end()))
    }

    /// Whether the scripted agent of a session has run to its end.
    pub(crate) fn script_finished(&self, sid: &str) -> bool {
        self.sessions.get(sid).is_some_and(|s| s.run.finished())
    }

    /// Make room for one more session, or fail with 429.
    fn make_room_for_session(&mut self) -> Result<(), ApiError> {
        if self.session_order.len() < self.limits.max_sessions {
            return Ok(());
        }
        let victim = self.session_order.iter().position(|id| {
            self.sessions
                .get(id)
                .is_none_or(|s| s.deleted || s.status == SessionStatus::Terminated)
        });
        match victim {
            Some(i) => {
                let id = self.session_order.remove(i);
                self.sessions.remove(&id);
                Ok(())
            }
            None => Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the emulator keeps at most {} live sessions",
                    self.limits.max_sessions
                ),
            )),
        }
    }
}
