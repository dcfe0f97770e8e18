//! Acting on a running [`Emulator`] as a client or the server side would: sending and emitting
//! events, continuing, terminating and deleting sessions, stopping work, arming faults, losing
//! or expiring leases and changing memory stores behind the worker's back.

use serde_json::Value;

use crate::protocol::Work;

use super::Emulator;
use super::error::EmulatorError;
use super::faults::Fault;
use super::http::MAX_EVENTS_PER_SEND;
use super::scenario::{self, Script};

impl Emulator {
    /// Delete the memory at `path` of a store; whether it existed.
    pub fn delete_memory(&self, store_id: &str, path: &str) -> bool {
        self.shared.lock().resources.remove_path(store_id, path)
    }

    /// Stage a race: right after the next listing of `store_id` is composed, the memory at
    /// `path` is set to `content` (or deleted when `None`), so the worker acts on a stale
    /// listing and its precondition fails.
    pub fn race_memory_after_list(
        &self,
        store_id: &str,
        path: &str,
        content: Option<&str>,
    ) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .resources
            .stage_race(store_id, path, content)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))
    }

    /// Send user events as a client would (`POST /events` rules apply); returns them as stored.
    pub fn send_events(&self, sid: &str, events: Vec<Value>) -> Result<Vec<Value>, EmulatorError> {
        if events.is_empty() || events.len() > MAX_EVENTS_PER_SEND {
            return Err(EmulatorError::Invalid(format!(
                "send 1 to {MAX_EVENTS_PER_SEND} events"
            )));
        }
        if !events
            .iter()
            .all(|e| e.get("type").is_some_and(Value::is_string))
        {
            return Err(EmulatorError::Invalid(
                "every event must be an object with a string type".into(),
            ));
        }
        let stored = {
            let mut st = self.shared.lock();
            st.check_send(sid, &events)
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
            st.send_events(sid, events)
        };
        self.shared.changed();
        Ok(stored)
    }

    /// Append events to a session as the server side would emit them (e.g. an `agent.tool_use`
    /// with a `session_thread_id`, or `session.thread_status_terminated`): each gets an `id` (kept
    /// when given as a string) and `processed_at`, is stored, broadcast on open streams and listed
    /// in the history. The scripted agent does not react to them. Returns them as stored.
    pub fn emit_events(&self, sid: &str, events: Vec<Value>) -> Result<Vec<Value>, EmulatorError> {
        if !events
            .iter()
            .all(|e| e.get("type").is_some_and(Value::is_string))
        {
            return Err(EmulatorError::Invalid(
                "every event must be an object with a string type".into(),
            ));
        }
        let stored = self
            .shared
            .lock()
            .emit_events(sid, events)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(stored)
    }

    /// Wake a session whose script has ended with a new script (more calls, a new ending): the
    /// calls are emitted and, when its work item is over, a new one is queued — the shape of a
    /// session that sleeps and is woken by its user.
    pub fn continue_session(&self, sid: &str, script: Script) -> Result<(), EmulatorError> {
        for (i, c) in script.calls.iter().enumerate() {
            scenario::validate_call(c)
                .map_err(|m| EmulatorError::Invalid(format!("call #{i}: {m}")))?;
        }
        self.shared
            .lock()
            .continue_session(sid, script)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(())
    }

    /// Terminate a session from the server side (`session.status_terminated` on its streams).
    pub fn terminate_session(&self, sid: &str) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .terminate_session(sid)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(())
    }

    /// Delete a session (`session.deleted` on its streams, then 404 everywhere).
    pub fn delete_session(&self, sid: &str) -> Result<(), EmulatorError> {
        self.shared
            .lock()
            .delete_session(sid)
            .map_err(|e| EmulatorError::Invalid(e.message.clone()))?;
        self.shared.changed();
        Ok(())
    }

    /// Stop a work item as `POST …/stop` would (`force` or graceful).
    pub fn stop_work(&self, work_id: &str, force: bool) -> Result<Work, EmulatorError> {
        let w = {
            let mut st = self.shared.lock();
            let env = st
                .work_item(work_id)
                .map(|w| w.environment_id.0)
                .ok_or_else(|| EmulatorError::Invalid(format!("no work item {work_id}")))?;
            st.stop(&env, work_id, force)
                .map_err(|e| EmulatorError::Invalid(e.message.clone()))?
        };
        self.shared.changed();
        Ok(w)
    }

    /// Arm a fault.
    pub fn inject_fault(&self, fault: Fault) -> Result<(), EmulatorError> {
        fault.validate().map_err(EmulatorError::Invalid)?;
        self.shared.fault_book().arm(fault);
        Ok(())
    }

    /// Disarm every fault.
    pub fn clear_faults(&self) {
        self.shared.fault_book().clear();
    }

    /// Faults still armed (counting each remaining use).
    pub fn faults_remaining(&self) -> usize {
        self.shared.fault_book().remaining()
    }

    /// Give a live item's lease to a phantom worker: its holder's next heartbeat gets 412, and
    /// the item is re-queued when the phantom's lease runs out. False if the item is not live.
    pub fn lose_lease(&self, work_id: &str) -> bool {
        let ok = self
            .shared
            .lock()
            .steal_lease(work_id, tokio::time::Instant::now());
        self.shared.changed();
        ok
    }

    /// Expire a live item's lease now: it is re-queued and its holder's next heartbeat gets 412.
    pub fn expire_lease(&self, work_id: &str) -> bool {
        let now = tokio::time::Instant::now();
        let ok = {
            let mut st = self.shared.lock();
            let ok = st.expire_lease(work_id, now);
            st.sweep(now);
            ok
        };
        self.shared.changed();
        ok
    }
}
