//! The plane's background duties: coalesced drains (webhooks, `wake`, the fallback drain) and
//! the maintenance loop that drives the host's [`SessionHost::maintain`]. They start with the
//! first of `run`, `drain` or `on_webhook` and end at `shutdown`.

use std::sync::atomic::Ordering;

use super::{ClaimMode, ControlPlane, ControlPlaneError, lock};
#[cfg(doc)]
use crate::runner::session::SessionHost;

impl ControlPlane {
    /// Start a drain unless one is running (then queue one re-drain behind it).
    pub(super) fn request_drain(&self) {
        if self.inner.stop_claiming.is_cancelled() {
            return;
        }
        if !lock(&self.inner.drains).request() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("wake() outside a tokio runtime: no drain started");
            lock(&self.inner.drains).reset();
            return;
        };
        let this = self.clone();
        self.inner
            .tasks
            .spawn_on(async move { this.drain_loop().await }, &runtime);
    }

    /// The background drain: drain, and again while requests were queued meanwhile.
    pub(super) async fn drain_loop(&self) {
        loop {
            match self.drain().await {
                Ok(n) => tracing::debug!(claimed = n, "drain finished"),
                Err(ControlPlaneError::Poll(e)) => {
                    tracing::error!(error = %e, "polling failed permanently; drains stop until the next request");
                    *lock(&self.inner.fatal) = Some(e);
                    self.inner.fatal_notify.notify_waiters();
                    lock(&self.inner.drains).reset();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "drain failed"),
            }
            if self.inner.stop_claiming.is_cancelled() {
                lock(&self.inner.drains).reset();
                return;
            }
            if !lock(&self.inner.drains).finished() {
                return;
            }
        }
    }

    /// Start the background duties once: the maintenance loop and, with
    /// [`ClaimMode::Webhooks`], the fallback drain.
    pub(super) fn start_duties(&self) {
        if self.inner.stop_claiming.is_cancelled()
            || self.inner.duties_started.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let this = self.clone();
        self.inner
            .tasks
            .spawn(async move { this.maintenance_loop().await });
        if let ClaimMode::Webhooks { fallback_poll } = self.inner.config.claim {
            let this = self.clone();
            self.inner.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = this.inner.stop_claiming.cancelled() => return,
                        () = tokio::time::sleep(fallback_poll) => this.request_drain(),
                    }
                }
            });
        }
    }

    /// Call the host's `maintain` now, after every item, at the time it asks for, and at least
    /// every `maintenance_interval`, until shutdown. A pass still running when the grace period
    /// of `shutdown` ends is dropped.
    pub(super) async fn maintenance_loop(&self) {
        let inner = &self.inner;
        loop {
            // A panicking pass is logged and the loop goes on: the next pass may do better, and
            // warm sandboxes must still be released.
            let next = tokio::select! {
                n = crate::runner::panics::catch(inner.host.maintain()) => n.unwrap_or_else(|message| {
                    tracing::error!(panic = %message, "the host's maintenance pass panicked");
                    None
                }),
                _ = inner.cancel_items.cancelled() => return,
            };
            inner.counters.maintenance.fetch_add(1, Ordering::Relaxed);
            let cap = tokio::time::Instant::now() + inner.config.maintenance_interval;
            let until = next.map_or(cap, |n| n.min(cap));
            tokio::select! {
                _ = inner.stop_claiming.cancelled() => return,
                _ = inner.maintenance.notified() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}
