//! The session tool runner's bookkeeping as a pure state machine (docs/protocol.md §5.4).
//!
//! It decides, from the events of a session (history and live stream), which tool calls to run,
//! hold, drop or leave to another client, and when the idle countdown runs. It performs no I/O and
//! reads no clock: callers pass `now`, so every rule is unit-testable. The async runner
//! (`runner::session`) feeds it and carries out its [`Action`]s.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::protocol::{EventId, SessionEvent, ToolUse};

/// Events that neither arm nor disarm the idle countdown (§5.4).
const IDLE_NEUTRAL: [&str; 2] = ["user.tool_confirmation", "session.thread_status_terminated"];

/// Which kind of call an event is: built-in (`agent.tool_use`) or custom (`agent.custom_tool_use`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `agent.tool_use`, answered with `user.tool_result`.
    Builtin,
    /// `agent.custom_tool_use`, answered with `user.custom_tool_result`.
    Custom,
}

/// A tool call the runner knows about.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Built-in or custom.
    pub kind: CallKind,
    /// The tool-use event.
    pub event: ToolUse,
}

impl ToolCall {
    fn from_event(ev: &SessionEvent) -> Option<Self> {
        match ev {
            SessionEvent::ToolUse(t) => Some(Self {
                kind: CallKind::Builtin,
                event: t.clone(),
            }),
            SessionEvent::CustomToolUse(t) => Some(Self {
                kind: CallKind::Custom,
                event: t.clone(),
            }),
            _ => None,
        }
    }

    /// The call's event id (the result's `tool_use_id` / `custom_tool_use_id`).
    pub fn id(&self) -> &EventId {
        &self.event.id
    }
}

/// What the runner must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue the call for execution; `confirmed` is true when a user `allow` released it.
    Enqueue {
        /// The call.
        call: ToolCall,
        /// Released by an explicit `allow`.
        confirmed: bool,
    },
    /// The call was denied (by the server's evaluation or the user): never run, nothing posted.
    Denied(ToolCall),
    /// The session ended (`session.status_terminated` / `session.deleted`): stop the runner.
    Stop,
}

/// The idle countdown with hold accounting for confirmation-gated calls.
#[derive(Debug, Default, Clone)]
struct IdleClock {
    turn_ended_at: Option<Instant>,
    holds: usize,
    arm_deferred: bool,
}

impl IdleClock {
    fn arm(&mut self, now: Instant) {
        if self.holds > 0 {
            self.arm_deferred = true;
        } else {
            self.turn_ended_at = Some(now);
        }
    }

    fn disarm(&mut self) {
        self.arm_deferred = false;
        self.turn_ended_at = None;
    }

    fn hold(&mut self) {
        self.holds += 1;
        if self.turn_ended_at.take().is_some() {
            self.arm_deferred = true;
        }
    }

    fn release(&mut self, now: Instant) {
        self.holds = self.holds.saturating_sub(1);
        if self.holds == 0 && self.arm_deferred {
            self.arm(now);
        }
    }
}

/// Whether an event ends the turn: a `session.status_idle` whose stop reason is not `requires_action`.
pub fn ends_turn(ev: &SessionEvent) -> bool {
    matches!(ev, SessionEvent::StatusIdle(idle) if !idle.requires_action())
}

/// The runner's state for one session.
#[derive(Debug, Clone)]
pub struct RunnerState {
    owned: HashSet<String>,
    seen: HashSet<EventId>,
    answered: HashSet<EventId>,
    confirmations: HashMap<EventId, String>,
    awaiting: HashMap<EventId, ToolCall>,
    terminated_threads: HashSet<String>,
    idle: IdleClock,
    idle_may_be_stale: bool,
}

impl RunnerState {
    /// New state; `owned` are the tool names this runner executes (others are left pending for
    /// another client).
    pub fn new<I, S>(owned: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            owned: owned.into_iter().map(Into::into).collect(),
            seen: HashSet::new(),
            answered: HashSet::new(),
            confirmations: HashMap::new(),
            awaiting: HashMap::new(),
            terminated_threads: HashSet::new(),
            idle: IdleClock::default(),
            idle_may_be_stale: false,
        }
    }

    /// Whether this runner executes tools named `name`.
    pub fn owns(&self, name: &str) -> bool {
        self.owned.contains(name)
    }

    /// Whether a result for `id` was posted or observed (or the call was denied).
    pub fn is_answered(&self, id: &EventId) -> bool {
        self.answered.contains(id)
    }

    /// Record that a result for `id` was posted.
    pub fn mark_answered(&mut self, id: &EventId) {
        self.answered.insert(id.clone());
    }

    /// Whether the call belongs to a thread that has terminated.
    pub fn in_terminated_thread(&self, call: &ToolCall) -> bool {
        call.event
            .session_thread_id
            .as_ref()
            .is_some_and(|t| self.terminated_threads.contains(t))
    }

    /// Ids of the calls held until a `user.tool_confirmation`.
    pub fn awaiting_confirmation(&self) -> impl Iterator<Item = &EventId> {
        self.awaiting.keys()
    }

    /// When the turn ended, if the idle countdown runs.
    pub fn idle_since(&self) -> Option<Instant> {
        self.idle.turn_ended_at
    }

    /// Whether the runner has been idle for `max_idle` at `now`.
    pub fn idle_expired(&self, now: Instant, max_idle: Duration) -> bool {
        self.idle
            .turn_ended_at
            .is_some_and(|at| now.saturating_duration_since(at) >= max_idle)
    }

    /// Reconcile from the session's history after a (re)connect. `history` is `None` when listing
    /// failed part-way: nothing is dispatched then and the calls stay unseen for the next attempt.
    pub fn reconcile(&mut self, history: Option<&[SessionEvent]>, now: Instant) -> Vec<Action> {
        self.idle_may_be_stale = true;
        let Some(history) = history else {
            self.release_terminated_holds(now);
            return Vec::new();
        };
        let mut pending = Vec::new();
        let mut last_ended_turn = false;
        for ev in history {
            match ev {
                SessionEvent::ToolUse(_) | SessionEvent::CustomToolUse(_) => {
                    if let Some(call) = ToolCall::from_event(ev) {
                        self.seen.insert(call.id().clone());
                        pending.push(call);
                    }
                }
                SessionEvent::ToolResult(r) | SessionEvent::CustomToolResult(r) => {
                    self.answered.insert(r.tool_use_id.clone());
                }
                SessionEvent::ToolConfirmation(c) if !self.answered.contains(&c.tool_use_id) => {
                    self.confirmations
                        .insert(c.tool_use_id.clone(), c.result.clone());
                }
                SessionEvent::ThreadTerminated(t) => {
                    self.terminated_threads.insert(t.session_thread_id.clone());
                }
                _ => {}
            }
            if !IDLE_NEUTRAL.contains(&ev.kind()) {
                last_ended_turn = ends_turn(ev);
            }
        }
        self.idle_may_be_stale = false;
        self.release_terminated_holds(now);
        let unanswered: Vec<ToolCall> = pending
            .into_iter()
            .filter(|c| !self.answered.contains(c.id()))
            .collect();
        self.idle.disarm();
        let mut actions = Vec::new();
        for call in &unanswered {
            actions.extend(self.route(call.clone(), now));
        }
        let releasable: Vec<ToolCall> = self
            .awaiting
            .values()
            .filter(|c| self.confirmations.contains_key(c.id()))
            .cloned()
            .collect();
        for held in releasable {
            let verdict = self.confirmations[held.id()].clone();
            actions.extend(self.apply_verdict(held, &verdict, now));
        }
        let outstanding = unanswered.iter().any(|c| {
            let released = self.confirmations.contains_key(c.id()) && self.owns(&c.event.name);
            !(self.answered.contains(c.id())
                || self.in_terminated_thread(c)
                || self.awaiting.contains_key(c.id())
                || released)
        });
        if last_ended_turn && !outstanding {
            self.idle.arm(now);
        }
        actions
    }

    /// Feed one live stream event.
    pub fn on_stream_event(&mut self, ev: &SessionEvent, now: Instant) -> Vec<Action> {
        if !IDLE_NEUTRAL.contains(&ev.kind()) {
            if ends_turn(ev) {
                self.idle.arm(now);
            } else {
                self.idle.disarm();
            }
            self.idle_may_be_stale = false;
        }
        match ev {
            SessionEvent::ToolUse(_) | SessionEvent::CustomToolUse(_) => {
                let Some(call) = ToolCall::from_event(ev) else {
                    return Vec::new();
                };
                if self.seen.insert(call.id().clone()) {
                    return self.route(call, now);
                }
                Vec::new()
            }
            SessionEvent::ThreadTerminated(t) => {
                self.terminated_threads.insert(t.session_thread_id.clone());
                if self.idle_may_be_stale {
                    self.idle.disarm();
                }
                self.release_terminated_holds(now);
                Vec::new()
            }
            SessionEvent::ToolResult(r) | SessionEvent::CustomToolResult(r) => {
                self.answered.insert(r.tool_use_id.clone());
                Vec::new()
            }
            SessionEvent::ToolConfirmation(c) => {
                self.confirmations
                    .insert(c.tool_use_id.clone(), c.result.clone());
                match self.awaiting.get(&c.tool_use_id).cloned() {
                    Some(held) => self.apply_verdict(held, &c.result, now),
                    None => Vec::new(),
                }
            }
            SessionEvent::StatusTerminated(_) | SessionEvent::Deleted(_) => vec![Action::Stop],
            _ => Vec::new(),
        }
    }

    /// Whether a queued call should still run when the dispatcher reaches it.
    pub fn should_execute(&self, call: &ToolCall) -> bool {
        !self.in_terminated_thread(call) && !self.answered.contains(call.id())
    }

    /// The dispatcher finished with a queued call (ran it, or skipped it).
    pub fn finished(&mut self, call: &ToolCall, confirmed: bool, now: Instant) {
        if confirmed {
            if !self.owns(&call.event.name) {
                self.idle.disarm();
            }
            self.release_hold(call, now);
        }
    }

    fn route(&mut self, call: ToolCall, now: Instant) -> Vec<Action> {
        if self.in_terminated_thread(&call) {
            return Vec::new();
        }
        let permission = call.event.evaluated_permission.as_deref();
        if permission == Some("deny") {
            return vec![self.resolve_denied(call)];
        }
        match self.confirmations.get(call.id()).cloned() {
            None => match permission {
                None | Some("allow") => vec![Action::Enqueue {
                    call,
                    confirmed: false,
                }],
                _ => {
                    if !self.awaiting.contains_key(call.id()) {
                        self.awaiting.insert(call.id().clone(), call);
                        self.idle.hold();
                    }
                    Vec::new()
                }
            },
            Some(verdict) => self.apply_verdict(call, &verdict, now),
        }
    }

    fn apply_verdict(&mut self, call: ToolCall, verdict: &str, now: Instant) -> Vec<Action> {
        let was_held = self.awaiting.remove(call.id()).is_some();
        if verdict == "allow" {
            if !was_held {
                self.idle.hold();
            }
            vec![Action::Enqueue {
                call,
                confirmed: true,
            }]
        } else {
            if was_held {
                self.idle.release(now);
            }
            vec![self.resolve_denied(call)]
        }
    }

    fn resolve_denied(&mut self, call: ToolCall) -> Action {
        self.answered.insert(call.id().clone());
        Action::Denied(call)
    }

    fn release_terminated_holds(&mut self, now: Instant) {
        let dropped: Vec<ToolCall> = self
            .awaiting
            .values()
            .filter(|c| self.in_terminated_thread(c))
            .cloned()
            .collect();
        for call in dropped {
            self.awaiting.remove(call.id());
            self.release_hold(&call, now);
        }
    }

    fn release_hold(&mut self, call: &ToolCall, now: Instant) {
        if self.idle_may_be_stale && self.in_terminated_thread(call) {
            self.idle.disarm();
        }
        self.idle.release(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: serde_json::Value) -> SessionEvent {
        SessionEvent::from_value(v).unwrap()
    }

    fn tool_use(id: &str, name: &str, perm: Option<&str>) -> SessionEvent {
        let mut v = json!({"type":"agent.tool_use","id":id,"name":name,"input":{"command":"echo"}});
        if let Some(p) = perm {
            v["evaluated_permission"] = json!(p);
        }
        ev(v)
    }

    fn confirmation(id: &str, tool_use_id: &str, result: &str) -> SessionEvent {
        ev(
            json!({"type":"user.tool_confirmation","id":id,"tool_use_id":tool_use_id,"result":result}),
        )
    }

    fn enqueued(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Enqueue { call, .. } => Some(call.id().to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reconcile_dispatches_only_unanswered_calls() {
        // Worker sequence W6: one answered call and one pending call in history.
        let mut st = RunnerState::new(["bash"]);
        let now = Instant::now();
        let history = vec![
            tool_use("sevt_tu01", "bash", None),
            ev(
                json!({"type":"user.tool_result","id":"r1","tool_use_id":"sevt_tu01","content":[{"type":"text","text":"one"}],"is_error":false}),
            ),
            tool_use("sevt_tu02", "bash", None),
        ];
        let actions = st.reconcile(Some(&history), now);
        assert_eq!(enqueued(&actions), vec!["sevt_tu02"]);
        // The same call arriving on the live stream is not run twice.
        assert!(st.on_stream_event(&history[2], now).is_empty());
    }

    #[test]
    fn ask_gated_calls_wait_for_their_verdict() {
        // Worker sequence W7.
        let mut st = RunnerState::new(["bash"]);
        let now = Instant::now();
        assert!(
            st.on_stream_event(&tool_use("tu1", "bash", Some("ask")), now)
                .is_empty()
        );
        let a = st.on_stream_event(&confirmation("c1", "tu1", "allow"), now);
        assert_eq!(
            a,
            vec![Action::Enqueue {
                call: ToolCall::from_event(&tool_use("tu1", "bash", Some("ask"))).unwrap(),
                confirmed: true
            }]
        );
        assert!(
            st.on_stream_event(&tool_use("tu2", "bash", Some("ask")), now)
                .is_empty()
        );
        let a = st.on_stream_event(&confirmation("c2", "tu2", "deny"), now);
        assert!(matches!(a.as_slice(), [Action::Denied(c)] if c.id().as_str() == "tu2"));
        assert!(st.is_answered(&"tu2".into()));
    }

    #[test]
    fn server_deny_wins_over_a_later_allow_and_unknown_permissions_are_held() {
        let mut st = RunnerState::new(["bash"]);
        let now = Instant::now();
        let a = st.on_stream_event(&tool_use("tu1", "bash", Some("deny")), now);
        assert!(matches!(a.as_slice(), [Action::Denied(_)]));
        assert!(
            st.on_stream_event(&confirmation("c1", "tu1", "allow"), now)
                .is_empty()
        );
        assert!(
            st.on_stream_event(&tool_use("tu2", "bash", Some("maybe_later")), now)
                .is_empty()
        );
        assert_eq!(st.awaiting_confirmation().count(), 1);
        assert_eq!(
            enqueued(&st.on_stream_event(&tool_use("tu3", "bash", Some("allow")), now)),
            vec!["tu3"]
        );
    }

    #[test]
    fn idle_countdown_arms_on_end_turn_only_and_any_event_cancels_it() {
        let mut st = RunnerState::new(["bash"]);
        let t0 = Instant::now();
        let max = Duration::from_secs(60);
        st.on_stream_event(&ev(json!({"type":"session.status_idle","id":"i1","stop_reason":{"type":"requires_action","event_ids":["x"]}})), t0);
        assert!(st.idle_since().is_none());
        st.on_stream_event(
            &ev(json!({"type":"session.status_idle","id":"i2","stop_reason":{"type":"end_turn"}})),
            t0,
        );
        assert!(!st.idle_expired(t0 + Duration::from_secs(59), max));
        assert!(st.idle_expired(t0 + max, max));
        // A neutral event leaves the countdown running; any other event cancels it.
        st.on_stream_event(&confirmation("c", "nothing", "allow"), t0);
        assert!(st.idle_since().is_some());
        st.on_stream_event(&ev(json!({"type":"session.status_running","id":"r"})), t0);
        assert!(st.idle_since().is_none());
    }

    #[test]
    fn held_calls_defer_the_idle_countdown_until_released() {
        let mut st = RunnerState::new(["bash"]);
        let t0 = Instant::now();
        st.on_stream_event(&tool_use("tu1", "bash", Some("ask")), t0);
        st.on_stream_event(
            &ev(json!({"type":"session.status_idle","id":"i","stop_reason":{"type":"end_turn"}})),
            t0,
        );
        assert!(
            st.idle_since().is_none(),
            "a held call defers the countdown"
        );
        let a = st.on_stream_event(&confirmation("c1", "tu1", "allow"), t0);
        let Action::Enqueue { call, confirmed } = &a[0] else {
            panic!()
        };
        assert!(st.idle_since().is_none(), "still in flight");
        let t1 = t0 + Duration::from_secs(5);
        st.finished(call, *confirmed, t1);
        assert_eq!(st.idle_since(), Some(t1));
    }

    #[test]
    fn terminated_threads_drop_their_calls_and_stop_events_stop() {
        let mut st = RunnerState::new(["bash"]);
        let now = Instant::now();
        let call = ev(
            json!({"type":"agent.tool_use","id":"tu1","name":"bash","input":{},"session_thread_id":"sthr_X","evaluated_permission":"ask"}),
        );
        st.on_stream_event(&call, now);
        st.on_stream_event(&ev(json!({"type":"session.thread_status_terminated","id":"t","session_thread_id":"sthr_X","agent_name":"a"})), now);
        assert_eq!(st.awaiting_confirmation().count(), 0);
        let later = ev(
            json!({"type":"agent.tool_use","id":"tu2","name":"bash","input":{},"session_thread_id":"sthr_X"}),
        );
        assert!(st.on_stream_event(&later, now).is_empty());
        assert_eq!(
            st.on_stream_event(
                &ev(json!({"type":"session.status_terminated","id":"s"})),
                now
            ),
            vec![Action::Stop]
        );
        assert_eq!(
            st.on_stream_event(&ev(json!({"type":"session.deleted","id":"d"})), now),
            vec![Action::Stop]
        );
    }

    #[test]
    fn failed_history_read_leaves_calls_unseen_for_the_next_attempt() {
        let mut st = RunnerState::new(["bash"]);
        let now = Instant::now();
        assert!(st.reconcile(None, now).is_empty());
        let history = vec![tool_use("tu1", "bash", None)];
        assert_eq!(enqueued(&st.reconcile(Some(&history), now)), vec!["tu1"]);
    }

    #[test]
    fn history_ending_the_turn_arms_idle_when_nothing_is_outstanding() {
        let mut st = RunnerState::new(["bash"]);
        let now = Instant::now();
        let history = vec![
            tool_use("tu1", "bash", None),
            ev(json!({"type":"user.tool_result","id":"r","tool_use_id":"tu1"})),
            ev(json!({"type":"session.status_idle","id":"i","stop_reason":{"type":"end_turn"}})),
        ];
        assert!(st.reconcile(Some(&history), now).is_empty());
        assert_eq!(st.idle_since(), Some(now));
    }
}
