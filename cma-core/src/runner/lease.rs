//! The work-item lease: the heartbeat loop and how a lease ends (docs/protocol.md §3.3, §3.4).
//!
//! The loop is written against a heartbeat *function* so its rules (first beat `NO_HEARTBEAT`,
//! echo `last_heartbeat`, interval from TTL, 412 ⇒ lost, TTL without success ⇒ assumed lost,
//! `stopping`/`stopped`/not extended ⇒ stop) are tested without a server; the runner passes a
//! closure that calls the real endpoint.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::{NO_HEARTBEAT, WorkHeartbeat, WorkLeaseState};
use crate::retry;

/// Interval before the first response tells the TTL (§3.3).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// TTL assumed until the first response (§3.2).
pub const ASSUMED_TTL: Duration = Duration::from_secs(90);

/// Why a lease ended (§3.4).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LeaseEnd {
    /// The session run ended on its own.
    RunnerDone,
    /// A heartbeat said `stopping`/`stopped`, or did not extend the lease.
    HeartbeatStop,
    /// A heartbeat was rejected with a fatal 4xx other than 412.
    HeartbeatRejected {
        /// The HTTP status.
        status: u16,
    },
    /// 412: another worker holds the lease now.
    LeaseLost {
        /// The server's view of the lease, when it sent one.
        current_state: Option<Box<WorkLeaseState>>,
    },
    /// No successful heartbeat for longer than the TTL.
    AssumedLost,
    /// The host cancelled the work (shutdown).
    Cancelled,
}

impl LeaseEnd {
    /// Whether the lease ended because another worker may hold the item now (412, or no
    /// successful heartbeat within the TTL): the session's sandbox is then not this worker's to
    /// keep warm or to snapshot as the session's newest state.
    pub fn hands_over_session(&self) -> bool {
        matches!(self, Self::LeaseLost { .. } | Self::AssumedLost)
    }

    /// Whether the worker must still force-stop the item: every reason but a lost lease (§3.4).
    pub fn should_force_stop(&self) -> bool {
        !matches!(self, Self::LeaseLost { .. } | Self::AssumedLost)
    }
}

/// What one heartbeat attempt can fail with, as the lease rules see it.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatFailure {
    /// 412 `heartbeat_precondition_failed` (or any 412).
    PreconditionFailed(Option<Box<WorkLeaseState>>),
    /// A fatal 4xx (not 408/409/412/429).
    Fatal(u16),
    /// 5xx, 408/409/429, network error or timeout: try again at the next interval.
    Transient(String),
}

/// The lease as the runner sees it while the heartbeat loop runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseStatus {
    /// Current effective TTL.
    pub ttl: Duration,
    /// Set once the lease has ended.
    pub ended: Option<LeaseEnd>,
    /// Heartbeats that succeeded so far.
    pub beats: u64,
    /// The TTL the server last reported (`None` until a heartbeat reports one).
    pub reported_ttl: Option<Duration>,
    /// Heartbeats attempted so far, whatever their outcome.
    pub attempts: u64,
    /// A heartbeat has been sent and its outcome is not known yet.
    pub in_flight: bool,
}

/// Handle to a running lease: watch it, or end it.
#[derive(Debug, Clone)]
pub struct LeaseHandle {
    rx: watch::Receiver<LeaseStatus>,
    tx: watch::Sender<LeaseStatus>,
}

impl LeaseHandle {
    /// A new, live lease with the assumed TTL.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(LeaseStatus {
            ttl: ASSUMED_TTL,
            ended: None,
            beats: 0,
            reported_ttl: None,
            attempts: 0,
            in_flight: false,
        });
        Self { rx, tx }
    }

    /// The current status.
    pub fn status(&self) -> LeaseStatus {
        self.rx.borrow().clone()
    }

    /// The current TTL (the assumed one until a heartbeat reports one).
    pub fn ttl(&self) -> Duration {
        self.rx.borrow().ttl
    }

    /// The retry window for result sends (§1.6): the TTL the server last reported, else
    /// [`retry::SEND_RETRY_WINDOW`] (300 s) — not the 90 s the heartbeat loop assumes.
    pub fn send_retry_window(&self) -> Duration {
        self.rx
            .borrow()
            .reported_ttl
            .unwrap_or(retry::SEND_RETRY_WINDOW)
    }

    /// End the lease with `reason` unless it already ended; returns the reason that stands.
    pub fn end(&self, reason: LeaseEnd) -> LeaseEnd {
        let mut out = reason.clone();
        self.tx.send_modify(|s| match &s.ended {
            Some(existing) => out = existing.clone(),
            None => s.ended = Some(reason),
        });
        out
    }

    /// Resolves once the lease has ended, with the reason.
    pub async fn ended(&self) -> LeaseEnd {
        let mut rx = self.rx.clone();
        loop {
            if let Some(end) = rx.borrow_and_update().ended.clone() {
                return end;
            }
            if rx.changed().await.is_err() {
                return LeaseEnd::Cancelled;
            }
        }
    }

    /// Resolves once the first heartbeat attempt has an outcome (success, failure or its
    /// timeout) or the lease has ended. The official worker sends its first heartbeat at once,
    /// concurrently with the session fetch (docs/protocol.md §3.3); an item that ends before
    /// that beat went out waits for it, so the server always sees the claim before the stop.
    pub async fn first_attempt(&self) {
        let mut rx = self.rx.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if s.attempts > 0 || s.ended.is_some() {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once no heartbeat is in flight or the lease has ended. A runner that is about to
    /// start work after a long pause (placement can take a container's start-up time) waits here
    /// so that it does not start tools on a lease the server refused a moment ago while the
    /// answer was still on its way. The wait is bounded by the heartbeat's own timeout.
    pub async fn settled(&self) {
        let mut rx = self.rx.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if !s.in_flight || s.ended.is_some() {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn record_sent(&self) {
        self.tx.send_modify(|s| s.in_flight = true);
    }

    fn record_attempt(&self) {
        self.tx.send_modify(|s| {
            s.attempts = s.attempts.saturating_add(1);
            s.in_flight = false;
        });
    }

    fn record_success(&self, ttl: Option<Duration>) {
        self.tx.send_modify(|s| {
            s.beats += 1;
            if let Some(ttl) = ttl {
                s.ttl = ttl;
                s.reported_ttl = Some(ttl);
            }
        });
    }
}

impl Default for LeaseHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// One item's heartbeat loop on its own task, tied to the item's lifetime.
///
/// Dropping the guard — the item's task returned early, panicked, or its future was dropped —
/// ends the lease ([`LeaseEnd::RunnerDone`] unless it already ended) and aborts the loop, so a
/// lease is never kept alive for an item nobody runs any more. [`HeartbeatTask::stop`] is the
/// orderly end.
#[derive(Debug)]
pub struct HeartbeatTask {
    lease: LeaseHandle,
    cancel: CancellationToken,
    handle: Option<JoinHandle<LeaseEnd>>,
}

impl HeartbeatTask {
    /// Spawn [`heartbeat_loop`] for `lease` with `beat`; `cancel` ends it as in the loop.
    pub fn spawn<F, Fut>(lease: LeaseHandle, cancel: CancellationToken, beat: F) -> Self
    where
        F: FnMut(String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<WorkHeartbeat, HeartbeatFailure>> + Send + 'static,
    {
        let handle = tokio::spawn({
            let lease = lease.clone();
            let cancel = cancel.clone();
            async move { heartbeat_loop(&lease, &cancel, beat).await }
        });
        Self {
            lease,
            cancel,
            handle: Some(handle),
        }
    }

    /// End the lease with `reason` (unless it already ended), stop the loop and wait for it;
    /// returns the reason that stands.
    pub async fn stop(mut self, reason: LeaseEnd) -> LeaseEnd {
        let end = self.lease.end(reason);
        self.cancel.cancel();
        if let Some(handle) = self.handle.take()
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "the heartbeat task failed");
        }
        end
    }
}

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.lease.end(LeaseEnd::RunnerDone);
            self.cancel.cancel();
            handle.abort();
        }
    }
}

/// Run the heartbeat loop of §3.3 until the lease ends; returns the reason.
///
/// `beat(expected_last_heartbeat)` performs one heartbeat; each attempt is bounded by the current
/// interval (a local timeout counts as transient). `cancel` ends the loop with [`LeaseEnd::Cancelled`]
/// unless the lease already ended for another reason.
pub async fn heartbeat_loop<F, Fut>(
    lease: &LeaseHandle,
    cancel: &CancellationToken,
    mut beat: F,
) -> LeaseEnd
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<WorkHeartbeat, HeartbeatFailure>>,
{
    let mut interval = DEFAULT_HEARTBEAT_INTERVAL;
    let mut ttl = ASSUMED_TTL;
    let mut last = NO_HEARTBEAT.to_owned();
    let mut last_success = Instant::now();
    loop {
        if let Some(end) = lease.status().ended {
            return end;
        }
        lease.record_sent();
        let attempt = tokio::select! {
            biased;
            _ = cancel.cancelled() => return lease.end(LeaseEnd::Cancelled),
            end = lease.ended() => return end,
            r = tokio::time::timeout(interval, beat(last.clone())) => r,
        };
        let outcome = attempt
            .unwrap_or_else(|_| Err(HeartbeatFailure::Transient("heartbeat timed out".into())));
        lease.record_attempt();
        match outcome {
            Ok(hb) => {
                last = hb.last_heartbeat.clone();
                last_success = Instant::now();
                let new_ttl = retry::lease_ttl(hb.ttl_seconds);
                if let Some(t) = new_ttl {
                    ttl = t;
                    interval = retry::heartbeat_interval(hb.ttl_seconds, interval);
                }
                lease.record_success(new_ttl);
                if hb.state.is_stopping_or_stopped() || !hb.lease_extended {
                    tracing::info!(state = %hb.state, lease_extended = hb.lease_extended, "heartbeat asks the worker to stop");
                    return lease.end(LeaseEnd::HeartbeatStop);
                }
            }
            Err(HeartbeatFailure::PreconditionFailed(state)) => {
                tracing::warn!(
                    server_state = state.as_ref().map(|s| s.state.to_string()),
                    server_ttl_seconds = state.as_ref().map(|s| s.ttl_seconds),
                    server_last_heartbeat = state.as_ref().and_then(|s| s.last_heartbeat.clone()),
                    "lease lost: heartbeat precondition failed"
                );
                return lease.end(LeaseEnd::LeaseLost {
                    current_state: state,
                });
            }
            Err(HeartbeatFailure::Fatal(status)) => {
                tracing::error!(status, "heartbeat rejected");
                return lease.end(LeaseEnd::HeartbeatRejected { status });
            }
            Err(HeartbeatFailure::Transient(why)) => {
                if retry::heartbeat_assumed_lost(last_success.elapsed(), ttl) {
                    tracing::warn!(error = %why, "no successful heartbeat within the lease TTL: lease assumed lost");
                    return lease.end(LeaseEnd::AssumedLost);
                }
                tracing::debug!(error = %why, "heartbeat failed transiently; retrying at the next interval");
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return lease.end(LeaseEnd::Cancelled),
            end = lease.ended() => return end,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WorkState;
    use std::sync::{Arc, Mutex};

    fn hb(last: &str, ttl: i64, state: WorkState, extended: bool) -> WorkHeartbeat {
        WorkHeartbeat {
            kind: "work_heartbeat".into(),
            last_heartbeat: last.into(),
            lease_extended: extended,
            state,
            ttl_seconds: ttl,
            extra: Default::default(),
        }
    }

    #[test]
    fn only_lost_leases_skip_the_final_stop() {
        assert!(LeaseEnd::RunnerDone.should_force_stop());
        assert!(LeaseEnd::HeartbeatStop.should_force_stop());
        assert!(LeaseEnd::HeartbeatRejected { status: 403 }.should_force_stop());
        assert!(
            !LeaseEnd::LeaseLost {
                current_state: None
            }
            .should_force_stop()
        );
        assert!(!LeaseEnd::AssumedLost.should_force_stop());
    }

    #[tokio::test(start_paused = true)]
    async fn first_beat_claims_then_echoes_and_stops_on_stopping() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lease = LeaseHandle::new();
        let cancel = CancellationToken::new();
        let s = seen.clone();
        let end = heartbeat_loop(&lease, &cancel, move |expected| {
            let s = s.clone();
            async move {
                let n = {
                    let mut v = s.lock().unwrap();
                    v.push((expected, Instant::now()));
                    v.len()
                };
                Ok(match n {
                    1 => hb("2026-05-01T00:00:01Z", 4, WorkState::Active, true),
                    2 => hb("2026-05-01T00:00:03Z", 4, WorkState::Active, true),
                    _ => hb("2026-05-01T00:00:05Z", 4, WorkState::Stopping, true),
                })
            }
        })
        .await;
        assert_eq!(end, LeaseEnd::HeartbeatStop);
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, NO_HEARTBEAT);
        assert_eq!(seen[1].0, "2026-05-01T00:00:01Z");
        assert_eq!(seen[2].0, "2026-05-01T00:00:03Z");
        // TTL 4 s ⇒ a beat every 2 s.
        assert_eq!(seen[2].1 - seen[1].1, Duration::from_secs(2));
        assert_eq!(lease.ttl(), Duration::from_secs(4));
        assert_eq!(lease.send_retry_window(), Duration::from_secs(4));
    }

    #[test]
    fn the_send_window_is_300_s_until_a_ttl_is_reported() {
        let lease = LeaseHandle::new();
        assert_eq!(lease.ttl(), ASSUMED_TTL);
        assert_eq!(lease.send_retry_window(), retry::SEND_RETRY_WINDOW);
        lease.record_success(None);
        assert_eq!(lease.send_retry_window(), retry::SEND_RETRY_WINDOW);
        lease.record_success(Some(Duration::from_secs(60)));
        assert_eq!(lease.send_retry_window(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_heartbeat_task_ends_the_lease_and_beats_no_more() {
        let beats = Arc::new(Mutex::new(0u32));
        let lease = LeaseHandle::new();
        let b = beats.clone();
        let task = HeartbeatTask::spawn(lease.clone(), CancellationToken::new(), move |_| {
            let b = b.clone();
            async move {
                *b.lock().unwrap() += 1;
                Ok(hb("t", 4, WorkState::Active, true))
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        let seen = *beats.lock().unwrap();
        assert!(seen >= 2);
        // The item's task died (a panic unwinding through it drops the guard the same way).
        drop(task);
        assert_eq!(lease.status().ended, Some(LeaseEnd::RunnerDone));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(*beats.lock().unwrap(), seen);
        // An orderly stop reports the reason that stands.
        let lease = LeaseHandle::new();
        let task = HeartbeatTask::spawn(lease.clone(), CancellationToken::new(), |_| async {
            Ok(hb("t", 60, WorkState::Active, true))
        });
        assert_eq!(task.stop(LeaseEnd::Cancelled).await, LeaseEnd::Cancelled);
    }

    #[tokio::test]
    async fn settled_waits_for_the_answer_of_a_heartbeat_in_flight() {
        use futures::FutureExt;
        let lease = LeaseHandle::new();
        assert!(lease.settled().now_or_never().is_some(), "nothing sent yet");
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let answered = Arc::new(tokio::sync::Mutex::new(Some(answered)));
        let (sent_tx, sent) = tokio::sync::oneshot::channel::<()>();
        let sent_tx = Arc::new(Mutex::new(Some(sent_tx)));
        let task = HeartbeatTask::spawn(lease.clone(), CancellationToken::new(), move |_| {
            let (answered, sent_tx) = (answered.clone(), sent_tx.clone());
            async move {
                if let Some(tx) = sent_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = answered.lock().await.take() {
                    let _ = rx.await;
                }
                Err(HeartbeatFailure::PreconditionFailed(None))
            }
        });
        sent.await.unwrap();
        assert!(lease.status().in_flight);
        let settled = lease.settled();
        tokio::pin!(settled);
        assert!(
            (&mut settled).now_or_never().is_none(),
            "the answer is not in"
        );
        answer.send(()).unwrap();
        settled.await;
        assert!(matches!(
            lease.status().ended,
            Some(LeaseEnd::LeaseLost { .. })
        ));
        drop(task);
    }

    #[tokio::test(start_paused = true)]
    async fn precondition_failure_loses_the_lease() {
        let lease = LeaseHandle::new();
        let end = heartbeat_loop(&lease, &CancellationToken::new(), |_| async {
            Err(HeartbeatFailure::PreconditionFailed(None))
        })
        .await;
        assert!(!end.should_force_stop());
        assert_eq!(lease.status().ended, Some(end));
    }

    #[tokio::test(start_paused = true)]
    async fn lease_not_extended_stops_and_fatal_rejects() {
        let lease = LeaseHandle::new();
        let end = heartbeat_loop(&lease, &CancellationToken::new(), |_| async {
            Ok(hb("t", 60, WorkState::Active, false))
        })
        .await;
        assert_eq!(end, LeaseEnd::HeartbeatStop);
        let lease = LeaseHandle::new();
        let end = heartbeat_loop(&lease, &CancellationToken::new(), |_| async {
            Err(HeartbeatFailure::Fatal(403))
        })
        .await;
        assert_eq!(end, LeaseEnd::HeartbeatRejected { status: 403 });
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_past_the_ttl_assume_the_lease_lost() {
        // Vector B12: ttl known = 60; heartbeats keep failing transiently.
        let lease = LeaseHandle::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let c = calls.clone();
        let start = Instant::now();
        let end = heartbeat_loop(&lease, &CancellationToken::new(), move |_| {
            let c = c.clone();
            async move {
                let n = {
                    let mut v = c.lock().unwrap();
                    v.push(Instant::now());
                    v.len()
                };
                if n == 1 {
                    Ok(hb("t1", 60, WorkState::Active, true))
                } else {
                    Err(HeartbeatFailure::Transient("503".into()))
                }
            }
        })
        .await;
        assert_eq!(end, LeaseEnd::AssumedLost);
        let calls = calls.lock().unwrap();
        let last = *calls.last().unwrap();
        // Gives up on the first failure more than 60 s after the last success, not before.
        assert!(last - start > Duration::from_secs(60));
        assert!(calls[calls.len() - 2] - start <= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_and_external_end_stop_the_loop() {
        let lease = LeaseHandle::new();
        let cancel = CancellationToken::new();
        let l2 = lease.clone();
        let c2 = cancel.clone();
        let task = tokio::spawn(async move {
            heartbeat_loop(&l2, &c2, |_| async {
                Ok(hb("t", 60, WorkState::Active, true))
            })
            .await
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(lease.status().beats >= 3);
        assert_eq!(lease.end(LeaseEnd::RunnerDone), LeaseEnd::RunnerDone);
        assert_eq!(task.await.unwrap(), LeaseEnd::RunnerDone);
        // A second end keeps the first reason.
        assert_eq!(lease.end(LeaseEnd::AssumedLost), LeaseEnd::RunnerDone);
        let lease = LeaseHandle::new();
        cancel.cancel();
        let end = heartbeat_loop(&lease, &cancel, |_| async {
            Ok(hb("t", 60, WorkState::Active, true))
        })
        .await;
        assert_eq!(end, LeaseEnd::Cancelled);
    }
}
