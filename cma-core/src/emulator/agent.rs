//! The scripted agent: a pure state machine that turns a [`Script`] and the user events it
//! receives into the session events the agent emits.
//!
//! It never touches the network or the clock: the caller stamps `processed_at`, stores and
//! broadcasts what it returns.

use serde_json::{Value, json};

use super::scenario::{CallKind, Script, ScriptEnd};

/// A fresh session event id.
pub(crate) fn new_event_id() -> String {
    format!("sevt_{}", uuid::Uuid::new_v4().simple())
}

#[derive(Debug, Clone)]
struct Waiting {
    event_id: String,
    kind: CallKind,
    /// The session idled (`requires_action`) while waiting, so it must report running again.
    idled: bool,
    /// Held until a `user.tool_confirmation` arrives.
    gated: bool,
}

/// Where a scripted agent is in its script.
#[derive(Debug, Clone)]
pub(crate) struct AgentRun {
    script: Script,
    next: usize,
    waiting: Option<Waiting>,
    finished: bool,
}

impl AgentRun {
    pub(crate) fn new(script: Script) -> Self {
        Self {
            script,
            next: 0,
            waiting: None,
            finished: false,
        }
    }

    /// The script has run to its end.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// Number of calls in the script.
    pub(crate) fn call_count(&self) -> usize {
        self.script.calls.len()
    }

    /// How the script ends.
    pub(crate) fn end(&self) -> ScriptEnd {
        self.script.end
    }

    /// Events emitted when the session starts.
    pub(crate) fn start(&mut self) -> Vec<Value> {
        let mut out = vec![json!({"type": "session.status_running", "id": new_event_id()})];
        self.advance(&mut out);
        out
    }

    /// Emit calls until one has to wait, or finish.
    fn advance(&mut self, out: &mut Vec<Value>) {
        loop {
            let Some(call) = self.script.calls.get(self.next).cloned() else {
                self.finish(out);
                return;
            };
            self.next += 1;
            let id = new_event_id();
            let kind = match call.kind {
                CallKind::ToolUse => "agent.tool_use",
                CallKind::CustomToolUse => "agent.custom_tool_use",
            };
            let mut ev = json!({"type": kind, "id": id, "name": call.name, "input": call.input});
            if let Some(p) = &call.evaluated_permission {
                ev["evaluated_permission"] = json!(p);
            }
            out.push(ev);
            if call.kind == CallKind::CustomToolUse {
                out.push(requires_action(&id));
                self.waiting = Some(Waiting {
                    event_id: id,
                    kind: call.kind,
                    idled: true,
                    gated: false,
                });
                return;
            }
            match call.evaluated_permission.as_deref() {
                // Denied by the server's policy: nothing runs, the agent moves on.
                Some("deny") => continue,
                None | Some("allow") => {}
                Some(_) => match &call.confirmation {
                    Some(conf) => {
                        let mut c = json!({"type": "user.tool_confirmation", "id": new_event_id(),
                                           "tool_use_id": id, "result": conf.result});
                        if let Some(m) = &conf.deny_message {
                            c["deny_message"] = json!(m);
                        }
                        out.push(c);
                        if conf.result != "allow" {
                            continue;
                        }
                    }
                    None => {
                        out.push(requires_action(&id));
                        self.waiting = Some(Waiting {
                            event_id: id,
                            kind: call.kind,
                            idled: true,
                            gated: true,
                        });
                        return;
                    }
                },
            }
            self.waiting = Some(Waiting {
                event_id: id,
                kind: call.kind,
                idled: false,
                gated: false,
            });
            return;
        }
    }

    fn finish(&mut self, out: &mut Vec<Value>) {
        self.waiting = None;
        self.next = self.script.calls.len();
        self.finished = true;
        out.push(json!({"type": "session.status_idle", "id": new_event_id(),
                        "stop_reason": {"type": "end_turn"}}));
        if self.script.end == ScriptEnd::Terminate {
            out.push(json!({"type": "session.status_terminated", "id": new_event_id()}));
        }
    }

    /// React to one stored user event; returns what the agent emits in response.
    pub(crate) fn on_user_event(&mut self, ev: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        let kind = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "user.tool_result" | "user.custom_tool_result" => {
                let (want, field) = if kind == "user.tool_result" {
                    (CallKind::ToolUse, "tool_use_id")
                } else {
                    (CallKind::CustomToolUse, "custom_tool_use_id")
                };
                let answered = ev.get(field).and_then(Value::as_str);
                let matches = self
                    .waiting
                    .as_ref()
                    .is_some_and(|w| w.kind == want && Some(w.event_id.as_str()) == answered);
                if matches && let Some(w) = self.waiting.take() {
                    if w.idled {
                        out.push(running());
                    }
                    self.advance(&mut out);
                }
            }
            "user.tool_confirmation" => {
                let target = ev.get("tool_use_id").and_then(Value::as_str);
                let hit = self
                    .waiting
                    .as_ref()
                    .is_some_and(|w| w.gated && Some(w.event_id.as_str()) == target);
                if hit {
                    out.push(running());
                    let allow = ev.get("result").and_then(Value::as_str) == Some("allow");
                    if allow {
                        if let Some(w) = self.waiting.as_mut() {
                            w.gated = false;
                            w.idled = false;
                        }
                    } else {
                        self.waiting = None;
                        self.advance(&mut out);
                    }
                }
            }
            "user.interrupt" if !self.finished => self.finish(&mut out),
            "user.message" if self.finished => {
                out.push(running());
                out.push(json!({"type": "session.status_idle", "id": new_event_id(),
                                "stop_reason": {"type": "end_turn"}}));
            }
            _ => {}
        }
        out
    }
}

fn running() -> Value {
    json!({"type": "session.status_running", "id": new_event_id()})
}

fn requires_action(id: &str) -> Value {
    json!({"type": "session.status_idle", "id": new_event_id(),
           "stop_reason": {"type": "requires_action", "event_ids": [id]}})
}

#[cfg(test)]
mod tests {
    use super::super::scenario::ScriptedCall;
    use super::*;

    fn types(evs: &[Value]) -> Vec<&str> {
        evs.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn builtin_calls_wait_for_their_result_then_end() {
        let mut a = AgentRun::new(Script::new(
            vec![
                ScriptedCall::tool("bash", json!({"command": "echo 1"})),
                ScriptedCall::tool("read", json!({"file_path": "a"})),
            ],
            ScriptEnd::Terminate,
        ));
        let first = a.start();
        assert_eq!(types(&first), ["session.status_running", "agent.tool_use"]);
        let id1 = first[1]["id"].as_str().unwrap().to_owned();
        // A result for another id does nothing.
        assert!(
            a.on_user_event(&json!({"type": "user.tool_result", "tool_use_id": "sevt_x"}))
                .is_empty()
        );
        let second = a.on_user_event(&json!({"type": "user.tool_result", "tool_use_id": id1}));
        assert_eq!(types(&second), ["agent.tool_use"]);
        let id2 = second[0]["id"].as_str().unwrap().to_owned();
        let end = a.on_user_event(&json!({"type": "user.tool_result", "tool_use_id": id2}));
        assert_eq!(
            types(&end),
            ["session.status_idle", "session.status_terminated"]
        );
        assert_eq!(end[0]["stop_reason"]["type"], "end_turn");
        assert!(a.finished());
    }

    #[test]
    fn custom_calls_idle_with_requires_action() {
        let mut a = AgentRun::new(Script::new(
            vec![ScriptedCall::custom("lookup", json!({"q": 1}))],
            ScriptEnd::Idle,
        ));
        let first = a.start();
        assert_eq!(
            types(&first),
            [
                "session.status_running",
                "agent.custom_tool_use",
                "session.status_idle"
            ]
        );
        let id = first[1]["id"].as_str().unwrap();
        assert_eq!(first[2]["stop_reason"]["event_ids"], json!([id]));
        // A built-in result with the same id is not the answer.
        assert!(
            a.on_user_event(&json!({"type": "user.tool_result", "tool_use_id": id}))
                .is_empty()
        );
        let after =
            a.on_user_event(&json!({"type": "user.custom_tool_result", "custom_tool_use_id": id}));
        assert_eq!(
            types(&after),
            ["session.status_running", "session.status_idle"]
        );
        assert_eq!(after[1]["stop_reason"]["type"], "end_turn");
    }

    #[test]
    fn gated_calls_follow_confirmations() {
        let mut a = AgentRun::new(Script::new(
            vec![
                ScriptedCall::tool("bash", json!({"command": "a"}))
                    .with_permission("ask")
                    .with_confirmation("deny", Some("no".into())),
                ScriptedCall::tool("bash", json!({"command": "b"})).with_permission("deny"),
                ScriptedCall::tool("bash", json!({"command": "c"})).with_permission("ask"),
            ],
            ScriptEnd::Idle,
        ));
        let evs = a.start();
        assert_eq!(
            types(&evs),
            [
                "session.status_running",
                "agent.tool_use",
                "user.tool_confirmation",
                "agent.tool_use",
                "agent.tool_use",
                "session.status_idle"
            ]
        );
        assert_eq!(evs[2]["deny_message"], "no");
        let held = evs[4]["id"].as_str().unwrap().to_owned();
        let after = a.on_user_event(
            &json!({"type": "user.tool_confirmation", "tool_use_id": held, "result": "allow"}),
        );
        assert_eq!(types(&after), ["session.status_running"]);
        let end = a.on_user_event(&json!({"type": "user.tool_result", "tool_use_id": held}));
        assert_eq!(types(&end), ["session.status_idle"]);
        assert!(a.finished());
    }

    #[test]
    fn interrupt_ends_the_script() {
        let mut a = AgentRun::new(Script::new(
            vec![ScriptedCall::tool("bash", json!({}))],
            ScriptEnd::Terminate,
        ));
        a.start();
        let out = a.on_user_event(&json!({"type": "user.interrupt"}));
        assert_eq!(
            types(&out),
            ["session.status_idle", "session.status_terminated"]
        );
    }
}
