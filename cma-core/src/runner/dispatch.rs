//! The session tool runner's loops (docs/protocol.md §5.4): the event stream with its history
//! reconcile, the one-at-a-time dispatch of owned calls with result posting, and the idle
//! watchdog. [`super::session::SessionRunner`] runs them side by side for one item.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::LeaseHandle;
use super::memory::SessionMemory;
use super::panics;
use super::session::{CallReport, RunnerObserver, ToolExecutor, ToolOutcome};
use super::state::{Action, CallKind, RunnerState, ToolCall};
use crate::client::{ListEventsParams, ReconnectPolicy, SessionClient, StreamItem, StreamParams};
use crate::protocol::SendEvent;
use crate::retry;

/// The most history events one reconcile reads (the live stream still serves new calls when a
/// history is longer: the reconcile is skipped as if listing had failed).
pub const MAX_HISTORY_EVENTS: usize = 100_000;

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

fn lock(state: &Mutex<RunnerState>) -> std::sync::MutexGuard<'_, RunnerState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn apply(
    actions: Vec<Action>,
    tx: &mpsc::Sender<(ToolCall, bool)>,
    stop: &CancellationToken,
    observer: &Option<Arc<dyn RunnerObserver>>,
    session_over: &AtomicBool,
) {
    for action in actions {
        match action {
            Action::Enqueue { call, confirmed } => {
                tokio::select! {
                    _ = tx.send((call, confirmed)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Action::Denied(call) => {
                tracing::info!(tool = %call.event.name, tool_use_id = %call.id(), "tool call denied; not executing");
                if let Some(o) = observer {
                    o.on_call(&CallReport::Denied(call));
                }
            }
            Action::Stop => {
                tracing::info!("session terminated");
                session_over.store(true, Ordering::SeqCst);
                stop.cancel();
            }
        }
    }
}

async fn reconcile_history(session: &SessionClient) -> Option<Vec<crate::protocol::SessionEvent>> {
    let mut all = Vec::new();
    let mut pages = session.list_all_events(ListEventsParams::history());
    while let Some(item) = pages.next().await {
        if all.len() >= MAX_HISTORY_EVENTS {
            tracing::error!(
                limit = MAX_HISTORY_EVENTS,
                "the session history holds more events than the runner reconciles; skipping pending enqueue"
            );
            return None;
        }
        match item {
            Ok(ev) => all.push(ev),
            Err(e) => {
                tracing::warn!(error = %e, "reconcile list failed; skipping pending enqueue");
                return None;
            }
        }
    }
    Some(all)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_loop(
    session: SessionClient,
    policy: ReconnectPolicy,
    state: Arc<Mutex<RunnerState>>,
    changed: Arc<Notify>,
    tx: mpsc::Sender<(ToolCall, bool)>,
    stop: CancellationToken,
    observer: Option<Arc<dyn RunnerObserver>>,
    session_over: Arc<AtomicBool>,
) {
    let mut stream = session.reconnecting_stream(StreamParams::default(), policy);
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = stream.next() => item,
        };
        let actions = match item {
            Some(Ok(StreamItem::Connected { .. })) => {
                let history = tokio::select! {
                    _ = stop.cancelled() => return,
                    h = reconcile_history(&session) => h,
                };
                lock(&state).reconcile(history.as_deref(), now())
            }
            Some(Ok(StreamItem::Event(ev))) => lock(&state).on_stream_event(&ev, now()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::error!(error = %e, "event stream failed permanently");
                stop.cancel();
                return;
            }
            None => {
                stop.cancel();
                return;
            }
        };
        changed.notify_one();
        apply(actions, &tx, &stop, &observer, &session_over).await;
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn dispatch_loop(
    session: SessionClient,
    executor: Arc<dyn ToolExecutor>,
    tool_timeout: Duration,
    lease: LeaseHandle,
    state: Arc<Mutex<RunnerState>>,
    changed: Arc<Notify>,
    mut rx: mpsc::Receiver<(ToolCall, bool)>,
    stop: CancellationToken,
    observer: Option<Arc<dyn RunnerObserver>>,
    memory: Option<Arc<tokio::sync::Mutex<SessionMemory>>>,
) -> u64 {
    let mut posted = 0;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return posted,
            next = rx.recv() => next,
        };
        let Some((call, confirmed)) = next else {
            return posted;
        };
        let (run, owned) = {
            let st = lock(&state);
            (st.should_execute(&call), st.owns(&call.event.name))
        };
        if run {
            if owned {
                if let Some(o) = &observer {
                    o.on_call(&CallReport::Started(call.clone()));
                }
                let outcome = run_tool(executor.as_ref(), &call, tool_timeout).await;
                let terminated = lock(&state).in_terminated_thread(&call);
                let sent = if terminated {
                    tracing::info!(tool = %call.event.name, "thread terminated; not posting the result");
                    false
                } else {
                    send_result(&session, &call, &outcome, &lease).await
                };
                if sent {
                    lock(&state).mark_answered(call.id());
                    posted += 1;
                }
                if let Some(o) = &observer {
                    o.on_call(&CallReport::Finished {
                        call: call.clone(),
                        outcome,
                        posted: sent,
                    });
                }
            } else {
                tracing::info!(tool = %call.event.name, tool_use_id = %call.id(), "tool not owned by this runner; leaving it pending for its owner");
                if let Some(o) = &observer {
                    o.on_call(&CallReport::NotOwned(call.clone()));
                }
            }
        }
        lock(&state).finished(&call, confirmed, now());
        changed.notify_one();
        // Memory syncs ride the call cadence (§5.3): checked after each dispatched call.
        if let Some(m) = &memory {
            m.lock().await.sync_if_due().await;
        }
    }
}

/// Post one result, retrying transient failures within the lease's retry window (§1.6).
async fn send_result(
    session: &SessionClient,
    call: &ToolCall,
    outcome: &ToolOutcome,
    lease: &LeaseHandle,
) -> bool {
    let event = match call.kind {
        CallKind::Builtin => SendEvent::ToolResult {
            tool_use_id: call.id().clone(),
            is_error: outcome.is_error,
            content: outcome.content.clone(),
        },
        CallKind::Custom => SendEvent::CustomToolResult {
            custom_tool_use_id: call.id().clone(),
            is_error: Some(outcome.is_error),
            content: outcome.content.clone(),
        },
    };
    let events = [event];
    let start = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        // Each attempt (the core client's own retries included) is bounded by what is left of
        // the window, so no answer — however slow, whatever it asks to wait — holds the item.
        let left = lease.send_retry_window().saturating_sub(start.elapsed());
        let sent = match tokio::time::timeout(left, session.send_events(&events)).await {
            Ok(sent) => sent,
            Err(_) => {
                tracing::error!(tool_use_id = %call.id(), attempts = attempt, "sending the tool result timed out");
                return false;
            }
        };
        match sent {
            Ok(_) => return true,
            Err(e) if e.is_fatal() => {
                tracing::error!(tool_use_id = %call.id(), error = %e, "tool result rejected");
                return false;
            }
            Err(e) => {
                let window = lease.send_retry_window();
                let remaining = window.saturating_sub(start.elapsed());
                if remaining.is_zero() {
                    tracing::error!(tool_use_id = %call.id(), attempts = attempt, error = %e, "failed to send tool result");
                    return false;
                }
                let wait = retry::send_retry_delay(attempt, retry::random_unit(), remaining);
                tracing::warn!(tool_use_id = %call.id(), attempt, wait_ms = wait.as_millis() as u64, error = %e, "tool result send failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

pub(super) async fn idle_watchdog(
    max_idle: Option<Duration>,
    state: Arc<Mutex<RunnerState>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let Some(max_idle) = max_idle else {
        stop.cancelled().await;
        return;
    };
    loop {
        let notified = changed.notified();
        let since = lock(&state).idle_since();
        match since {
            None => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = notified => {}
                }
            }
            Some(at) => {
                if lock(&state).idle_expired(now(), max_idle) {
                    tracing::info!(
                        max_idle_s = max_idle.as_secs_f64(),
                        "session idle after its turn ended; stopping"
                    );
                    stop.cancel();
                    return;
                }
                let deadline = Instant::from_std(at + max_idle);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}

/// Run one call under the tool timeout. A panic in the executor (the tool, or the sandbox under
/// it) is the call's failure: it is answered with an error result, and the item goes on. The
/// panic message is logged, not posted: it may carry host details the agent has no business
/// seeing.
pub(super) async fn run_tool(
    executor: &dyn ToolExecutor,
    call: &ToolCall,
    tool_timeout: Duration,
) -> ToolOutcome {
    let name = &call.event.name;
    match tokio::time::timeout(tool_timeout, panics::catch(executor.execute(call))).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(message)) => {
            tracing::error!(tool = %name, tool_use_id = %call.id(), panic = %message, "tool call panicked");
            ToolOutcome::error(format!(
                "tool '{name}' failed with an internal error (it panicked)"
            ))
        }
        Err(_) => ToolOutcome::error(format!("tool '{name}' timed out")),
    }
}
