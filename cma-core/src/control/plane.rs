//! The control plane's claim loop: take a concurrency permit, poll, ack, and hand each item to a
//! [`SessionRunner`] on its own task (docs/protocol.md §5.2).
//!
//! [`ControlPlane::run`] drives the plane until [`ControlPlane::shutdown`]. It claims work the
//! way [`ControlPlaneConfig::claim`] says: [`ClaimMode::LongPoll`] long-polls forever (the SDK
//! worker's shape); [`ClaimMode::Webhooks`] drains the queue when a verified webhook (or
//! [`ControlPlane::wake`]) says work may be waiting, plus a fallback drain every
//! `fallback_poll` in case a delivery was lost — drains are coalesced, so a
//! webhook storm costs one drain at a time. Every claim takes a permit *before* polling, so the
//! plane never claims work it cannot start now.
//!
//! The plane also runs the host's housekeeping ([`SessionHost::maintain`]: warm sandboxes
//! released at `keep_warm`, snapshot retention and chunk collection) after every item and when
//! the host asks, and tells the host when a session is over ([`SessionHost::session_ended`]).
//! These duties start with the first of `run`, `drain` or `on_webhook` and stop at `shutdown`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::drain::DrainGate;
use crate::client::{ApiError, Client, Credential, EnvironmentClient, Helper, PollParams};
use crate::protocol::{EnvironmentId, SessionId, Work};
use crate::retry;
use crate::runner::session::{
    ItemOutcome, RunnerConfig, RunnerError, RunnerObserver, SessionHost, SessionRunner,
};
use crate::webhook::{WebhookEvent, WebhookEventType};

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Work items handled at once (permits are taken before polling).
    pub concurrency: usize,
    /// `block_ms` of the long poll (1–999).
    pub poll_block_ms: u32,
    /// `reclaim_older_than_ms` sent with each poll, if set.
    pub reclaim_older_than_ms: Option<u64>,
    /// Runner settings for every item.
    pub runner: RunnerConfig,
    /// This replica's name as the holder of the work item leases recorded in the state store
    /// (feature `store`). Keep it stable across restarts of the same replica: on start the plane
    /// forgets the leases a previous process of the same replica left behind. Default: `cma-`
    /// and the host name.
    pub replica_id: String,
    /// The `Anthropic-Worker-ID` every poll carries (the API counts `workers_polling` from it).
    /// `None` (default): the client's configured worker id if it has one, else
    /// [`default_worker_id`](super::identity::default_worker_id) — `<hostname>-<12 hex digits>`,
    /// the official worker's default, the same for the whole process.
    pub worker_id: Option<String>,
    /// How [`ControlPlane::run`] claims work (default [`ClaimMode::LongPoll`]).
    pub claim: ClaimMode,
    /// The longest the plane waits between two calls of the host's
    /// [`SessionHost::maintain`] (it also calls it after every item and at the time the host
    /// asks for). Default 60 s.
    pub maintenance_interval: Duration,
}

/// How [`ControlPlane::run`] claims work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimMode {
    /// Long-poll without end (the SDK worker's shape); a webhook or [`ControlPlane::wake`] only
    /// cuts the pause after an empty poll short.
    LongPoll,
    /// Drain the queue at start, whenever a webhook or [`ControlPlane::wake`] says work may be
    /// waiting (coalesced: one drain at a time plus at most one queued), and every
    /// `fallback_poll` in case a webhook was lost.
    Webhooks {
        /// The interval of the fallback drain.
        fallback_poll: Duration,
    },
}

/// The default [`ControlPlaneConfig::replica_id`].
fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 100 && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "local".to_owned());
    format!("cma-{host}")
}

/// The largest [`ControlPlaneConfig::concurrency`] accepted.
pub const MAX_CONCURRENCY: usize = 65_536;

/// The default [`ControlPlaneConfig::maintenance_interval`].
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// How long a recorded lease lasts without renewal, and how often a running item renews it.
const LEASE_RECORD_TTL: Duration = Duration::from_secs(120);
const LEASE_RECORD_RENEW: Duration = Duration::from_secs(40);

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            poll_block_ms: 999,
            reclaim_older_than_ms: None,
            runner: RunnerConfig::default(),
            replica_id: default_replica_id(),
            worker_id: None,
            claim: ClaimMode::LongPoll,
            maintenance_interval: DEFAULT_MAINTENANCE_INTERVAL,
        }
    }
}

/// Errors that stop the claim loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlPlaneError {
    /// Polling failed with a fatal 4xx (e.g. a wrong environment key): retrying cannot help.
    #[error("polling the work queue failed permanently: {0}")]
    Poll(#[source] ApiError),
    /// The configuration is unusable.
    #[error("invalid control plane configuration: {0}")]
    Config(String),
}

/// What one finished item reports to the plane's observers.
#[derive(Debug)]
pub struct ItemReport {
    /// The item.
    pub work: Work,
    /// How it ended.
    pub result: Result<ItemOutcome, RunnerError>,
}

/// Counters the plane keeps.
#[derive(Debug, Default)]
struct Counters {
    claimed: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    drains: AtomicU64,
    maintenance: AtomicU64,
}

/// A snapshot of the plane's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlPlaneStats {
    /// Items acknowledged.
    pub claimed: u64,
    /// Items whose handling finished (any outcome).
    pub finished: u64,
    /// Items whose handling returned an error.
    pub failed: u64,
    /// Items running now.
    pub in_flight: u64,
    /// Drains started ([`ControlPlane::drain`], webhook-triggered and fallback drains).
    pub drains: u64,
    /// Calls of the host's [`SessionHost::maintain`] that finished.
    pub maintenance_passes: u64,
}

type ReportHook = Arc<dyn Fn(&ItemReport) + Send + Sync>;

struct Inner {
    queue: EnvironmentClient,
    runner: SessionRunner,
    host: Arc<dyn SessionHost>,
    config: ControlPlaneConfig,
    permits: Arc<Semaphore>,
    wake: Notify,
    stop_claiming: CancellationToken,
    cancel_items: CancellationToken,
    tasks: TaskTracker,
    counters: Counters,
    on_item: Option<ReportHook>,
    polling: std::sync::atomic::AtomicBool,
    /// Running and queued drains (coalesced).
    drains: std::sync::Mutex<DrainGate>,
    /// Kicks the maintenance loop (an item ended, a session is over).
    maintenance: Notify,
    /// Whether the background duties were started.
    duties_started: std::sync::atomic::AtomicBool,
    /// A fatal poll error of a background drain, for `run` to return.
    fatal: std::sync::Mutex<Option<ApiError>>,
    fatal_notify: Notify,
    /// Whether the leases of a previous process were forgotten yet.
    leases_swept: std::sync::atomic::AtomicBool,
    seen_webhooks: std::sync::Mutex<RecentIds>,
    recorder: super::record::StateRecorder,
    #[cfg(feature = "store")]
    webhooks_recorded: AtomicU64,
}

/// Bounded memory of recently seen webhook ids (duplicate deliveries are ignored).
#[derive(Debug, Default)]
struct RecentIds {
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
}

/// How many webhook ids are remembered in memory for de-duplication.
pub const WEBHOOK_DEDUP_WINDOW: usize = 4096;

/// How long a state store (feature `store`) remembers a webhook id; older ids are pruned.
pub const WEBHOOK_DEDUP_TTL: Duration = Duration::from_secs(72 * 60 * 60);

/// Prune the state store's webhook ids once per this many recorded ids.
#[cfg(feature = "store")]
const WEBHOOK_PRUNE_EVERY: u64 = 256;

impl RecentIds {
    /// Remember `id`; false if it was already seen.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= WEBHOOK_DEDUP_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

/// What the plane did with a webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookAction {
    /// Work may be waiting: the poll loop was woken, or a drain was started.
    Drain,
    /// The same event id was seen before.
    Duplicate,
    /// Nothing to do for this event type.
    Ignored,
}

/// Claims work for one environment and runs each item's session.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("environment_id", self.inner.queue.id())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ControlPlane`].
pub struct ControlPlaneBuilder {
    client: Client,
    environment_id: EnvironmentId,
    environment_key: Credential,
    host: Arc<dyn SessionHost>,
    config: ControlPlaneConfig,
    observer: Option<Arc<dyn RunnerObserver>>,
    on_item: Option<ReportHook>,
    #[cfg(feature = "store")]
    state: Option<Arc<dyn cma_store::state::StateStore>>,
}

impl ControlPlaneBuilder {
    /// Remember handled webhook ids in `store`, so duplicate deliveries are ignored across
    /// restarts and replicas (ids older than [`WEBHOOK_DEDUP_TTL`] are pruned).
    #[cfg(feature = "store")]
    pub fn state_store(mut self, store: Arc<dyn cma_store::state::StateStore>) -> Self {
        self.state = Some(store);
        self
    }

    /// Replace the settings.
    pub fn config(mut self, config: ControlPlaneConfig) -> Self {
        self.config = config;
        self
    }

    /// Report every tool call to `observer`.
    pub fn observer(mut self, observer: Arc<dyn RunnerObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Call `hook` when an item finishes.
    pub fn on_item(mut self, hook: impl Fn(&ItemReport) + Send + Sync + 'static) -> Self {
        self.on_item = Some(Arc::new(hook));
        self
    }

    /// Build the plane.
    pub fn build(self) -> Result<ControlPlane, ControlPlaneError> {
        if !(1..=MAX_CONCURRENCY).contains(&self.config.concurrency) {
            return Err(ControlPlaneError::Config(format!(
                "concurrency must be within 1..={MAX_CONCURRENCY}"
            )));
        }
        if !(1..=999).contains(&self.config.poll_block_ms) {
            return Err(ControlPlaneError::Config(
                "poll_block_ms must be within 1..=999".into(),
            ));
        }
        if self.config.maintenance_interval.is_zero() {
            return Err(ControlPlaneError::Config(
                "maintenance_interval must not be zero".into(),
            ));
        }
        if let ClaimMode::Webhooks { fallback_poll } = self.config.claim
            && fallback_poll.is_zero()
        {
            return Err(ControlPlaneError::Config(
                "claim: the webhook fallback_poll interval must not be zero".into(),
            ));
        }
        let worker_id = match &self.config.worker_id {
            Some(id) => {
                if id.is_empty() || http::HeaderValue::from_str(id).is_err() {
                    return Err(ControlPlaneError::Config(
                        "worker_id must be a non-empty, valid header value".into(),
                    ));
                }
                id.clone()
            }
            None => match self.client.config().worker_id() {
                Some(id) => id.to_owned(),
                None => super::identity::default_worker_id().to_owned(),
            },
        };
        let queue = self
            .client
            .environment(self.environment_id.clone(), self.environment_key.clone())
            .with_helper(Some(Helper::WorkPoller))
            .with_worker_id(Some(&worker_id));
        let mut runner = SessionRunner::new(self.client, self.environment_id, self.environment_key)
            .with_config(self.config.runner.clone());
        if let Some(o) = self.observer {
            runner = runner.with_observer(o);
        }
        Ok(ControlPlane {
            inner: Arc::new(Inner {
                queue,
                runner,
                host: self.host,
                permits: Arc::new(Semaphore::new(self.config.concurrency)),
                config: self.config,
                wake: Notify::new(),
                stop_claiming: CancellationToken::new(),
                cancel_items: CancellationToken::new(),
                tasks: TaskTracker::new(),
                counters: Counters::default(),
                on_item: self.on_item,
                polling: std::sync::atomic::AtomicBool::new(false),
                drains: std::sync::Mutex::new(DrainGate::default()),
                maintenance: Notify::new(),
                duties_started: std::sync::atomic::AtomicBool::new(false),
                fatal: std::sync::Mutex::new(None),
                fatal_notify: Notify::new(),
                leases_swept: std::sync::atomic::AtomicBool::new(false),
                seen_webhooks: std::sync::Mutex::new(RecentIds::default()),
                recorder: super::record::StateRecorder {
                    #[cfg(feature = "store")]
                    store: self.state,
                },
                #[cfg(feature = "store")]
                webhooks_recorded: AtomicU64::new(0),
            }),
        })
    }
}

enum Claim {
    Claimed,
    /// The ack was rejected (fatal 4xx) and the item force-stopped.
    Rejected,
    Empty,
    Stopped,
}

enum ClaimError {
    Poll(ApiError),
    Ack(ApiError),
}

impl ControlPlane {
    /// Start building a plane for `environment_id`, polling with `environment_key` and placing
    /// sessions with `host`.
    pub fn builder(
        client: Client,
        environment_id: impl Into<EnvironmentId>,
        environment_key: Credential,
        host: Arc<dyn SessionHost>,
    ) -> ControlPlaneBuilder {
        ControlPlaneBuilder {
            client,
            environment_id: environment_id.into(),
            environment_key,
            host,
            config: ControlPlaneConfig::default(),
            observer: None,
            on_item: None,
            #[cfg(feature = "store")]
            state: None,
        }
    }

    /// The `Anthropic-Worker-ID` this plane polls with.
    pub fn worker_id(&self) -> &str {
        self.inner.queue.worker_id().unwrap_or_default()
    }

    /// Counters.
    pub fn stats(&self) -> ControlPlaneStats {
        let c = &self.inner.counters;
        let finished = c.finished.load(Ordering::Relaxed);
        let claimed = c.claimed.load(Ordering::Relaxed);
        ControlPlaneStats {
            claimed,
            finished,
            failed: c.failed.load(Ordering::Relaxed),
            in_flight: claimed.saturating_sub(finished),
            drains: c.drains.load(Ordering::Relaxed),
            maintenance_passes: c.maintenance.load(Ordering::Relaxed),
        }
    }

    /// Work may be waiting: poll now. While [`ControlPlane::run`] long-polls, this cuts its
    /// pause after an empty poll short; otherwise it starts a drain on a background task,
    /// coalesced with a running one (one drain at a time, at most one queued behind it). Does
    /// nothing after [`ControlPlane::shutdown`].
    pub fn wake(&self) {
        if self.inner.polling.load(Ordering::SeqCst) {
            self.inner.wake.notify_one();
        } else {
            self.request_drain();
        }
    }

    /// React to a verified webhook (docs/protocol.md §7.3). Webhooks carry no work id; a session event
    /// that means work may be queued wakes the poll loop (when [`ControlPlane::run`] is running) or
    /// starts a [`ControlPlane::drain`] on a background task. Duplicate deliveries (same event id)
    /// are ignored: the recent ids are kept in memory and, with a state store
    /// (`ControlPlaneBuilder::state_store`, feature `store`), across restarts too.
    pub async fn on_webhook(&self, event: &WebhookEvent) -> WebhookAction {
        let fresh = self
            .inner
            .seen_webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(&event.id);
        if !fresh {
            return WebhookAction::Duplicate;
        }
        #[cfg(feature = "store")]
        if !self.record_webhook(&event.id).await {
            return WebhookAction::Duplicate;
        }
        use WebhookEventType as T;
        self.start_duties();
        self.inner.host.on_webhook(event).await;
        if matches!(
            event.data.kind,
            T::SessionStatusTerminated | T::SessionDeleted
        ) {
            self.inner
                .recorder
                .terminated(&event.data.id, event.data.kind.as_str())
                .await;
        }
        if matches!(
            event.data.kind,
            T::SessionStatusTerminated | T::SessionDeleted | T::SessionArchived
        ) {
            self.inner
                .host
                .session_ended(&SessionId::from(event.data.id.clone()))
                .await;
        }
        let wakes = matches!(
            event.data.kind,
            T::SessionCreated
                | T::SessionPending
                | T::SessionRunning
                | T::SessionStatusRunStarted
                | T::SessionStatusRescheduled
        );
        if !wakes {
            return WebhookAction::Ignored;
        }
        self.wake();
        WebhookAction::Drain
    }

    /// Record a webhook id in the state store; `false` if it was recorded before. A store failure
    /// counts as new: an extra drain is harmless, a missed one is not.
    #[cfg(feature = "store")]
    async fn record_webhook(&self, id: &str) -> bool {
        let Some(store) = &self.inner.recorder.store else {
            return true;
        };
        let now = chrono::Utc::now();
        let fresh = match store.record_webhook(id, now).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(webhook_id = id, error = %e, "recording a webhook id failed");
                return true;
            }
        };
        let n = self.inner.webhooks_recorded.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(WEBHOOK_PRUNE_EVERY)
            && let Ok(ttl) = chrono::Duration::from_std(WEBHOOK_DEDUP_TTL)
            && let Err(e) = store.prune_webhooks(now - ttl).await
        {
            tracing::warn!(error = %e, "pruning old webhook ids failed");
        }
        fresh
    }

    /// Claim and run items ([`ControlPlaneConfig::claim`]) and run the background duties until
    /// [`ControlPlane::shutdown`]. Returns an error only when polling fails permanently (a
    /// fatal 4xx, e.g. a wrong environment key).
    pub async fn run(&self) -> Result<(), ControlPlaneError> {
        self.start_duties();
        match self.inner.config.claim {
            ClaimMode::LongPoll => {
                self.inner.polling.store(true, Ordering::SeqCst);
                let result = self
                    .claim_loop(Some(self.inner.config.poll_block_ms), false)
                    .await;
                self.inner.polling.store(false, Ordering::SeqCst);
                result.map(|_| ())
            }
            ClaimMode::Webhooks { .. } => {
                // Whatever was queued while nobody listened for webhooks.
                self.request_drain();
                loop {
                    let fatal = self.inner.fatal_notify.notified();
                    tokio::pin!(fatal);
                    fatal.as_mut().enable();
                    if let Some(e) = lock(&self.inner.fatal).take() {
                        return Err(ControlPlaneError::Poll(e));
                    }
                    tokio::select! {
                        _ = self.inner.stop_claiming.cancelled() => return Ok(()),
                        () = &mut fatal => {}
                    }
                }
            }
        }
    }

    /// The claim loop of both shapes (docs/protocol.md §5.2): transient poll failures and transient
    /// ack failures back off on their own counters (`min(60, 2^k) + U(0,1)`) and claiming goes
    /// on — in drain mode too, as the SDK's `aiter_work(drain=True)` does, so a brief outage does
    /// not end a webhook-triggered drain; only a fatal 4xx on poll stops it. An empty poll ends
    /// a drain, and pauses the long-poll loop for `U(1,3)` s (or until [`ControlPlane::wake`]).
    async fn claim_loop(
        &self,
        block_ms: Option<u32>,
        drain: bool,
    ) -> Result<usize, ControlPlaneError> {
        if !self.inner.leases_swept.swap(true, Ordering::SeqCst) {
            self.inner
                .recorder
                .release_stale_leases(&self.inner.config.replica_id)
                .await;
        }
        let mut claimed = 0;
        let mut poll_failures = 0u32;
        let mut ack_failures = 0u32;
        loop {
            let (pause, wakeable) = match self.claim_one(block_ms).await {
                Ok(Claim::Stopped) => return Ok(claimed),
                Ok(Claim::Claimed) => {
                    poll_failures = 0;
                    ack_failures = 0;
                    claimed += 1;
                    continue;
                }
                Ok(Claim::Rejected) => {
                    poll_failures = 0;
                    continue;
                }
                Ok(Claim::Empty) => {
                    poll_failures = 0;
                    if drain {
                        return Ok(claimed);
                    }
                    (retry::empty_poll_delay(retry::random_unit()), true)
                }
                Err(ClaimError::Poll(e)) if e.is_fatal() => {
                    return Err(ControlPlaneError::Poll(e));
                }
                Err(ClaimError::Poll(e)) => {
                    poll_failures += 1;
                    let pause = retry::poll_failure_delay(poll_failures, retry::random_unit());
                    tracing::warn!(error = %e, failures = poll_failures, pause_ms = pause.as_millis() as u64, "poll failed; backing off");
                    (pause, false)
                }
                Err(ClaimError::Ack(e)) => {
                    // The item stays pending and is reclaimed by the server.
                    poll_failures = 0;
                    ack_failures += 1;
                    let pause = retry::poll_failure_delay(ack_failures, retry::random_unit());
                    tracing::warn!(error = %e, failures = ack_failures, pause_ms = pause.as_millis() as u64, "ack failed; the item will be reclaimed; backing off");
                    (pause, false)
                }
            };
            let woken = async {
                if wakeable {
                    self.inner.wake.notified().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = self.inner.stop_claiming.cancelled() => return Ok(claimed),
                _ = woken => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Claim items until a poll finds the queue empty (non-blocking polls); returns how many were
    /// claimed. Transient poll and ack failures are retried with backoff; only a fatal 4xx on
    /// poll ends it with an error. Each item runs on its own task; this returns once claiming
    /// stops, not when the items finish (see [`ControlPlane::wait_idle`]).
    pub async fn drain(&self) -> Result<usize, ControlPlaneError> {
        self.start_duties();
        self.inner.counters.drains.fetch_add(1, Ordering::Relaxed);
        self.claim_loop(None, true).await
    }

    /// Wait until no item is running.
    pub async fn wait_idle(&self) {
        // Taking every permit means every item task has released its own.
        // `build` keeps concurrency within `MAX_CONCURRENCY`, so this never saturates.
        let all = u32::try_from(self.inner.config.concurrency).unwrap_or(u32::MAX);
        if let Ok(p) = self.inner.permits.acquire_many(all).await {
            drop(p);
        }
    }

    /// Stop claiming, give running items `grace` to finish, then cancel them (each is still
    /// force-stopped, which releases its work item) and wait for their tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop_claiming.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!("grace period over; cancelling in-flight items");
            self.inner.cancel_items.cancel();
            self.inner.tasks.wait().await;
        }
    }

    /// One permit → poll → ack → spawn cycle.
    async fn claim_one(&self, block_ms: Option<u32>) -> Result<Claim, ClaimError> {
        let inner = &self.inner;
        let permit: OwnedSemaphorePermit = tokio::select! {
            _ = inner.stop_claiming.cancelled() => return Ok(Claim::Stopped),
            p = inner.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(Claim::Stopped),
            },
        };
        let params = PollParams {
            block_ms,
            reclaim_older_than_ms: inner.config.reclaim_older_than_ms,
        };
        let polled = tokio::select! {
            _ = inner.stop_claiming.cancelled() => return Ok(Claim::Stopped),
            r = inner.queue.poll(&params) => r.map_err(ClaimError::Poll)?,
        };
        let Some(work) = polled else {
            return Ok(Claim::Empty);
        };
        match inner.queue.ack(&work.id).await {
            Ok(_) => {}
            Err(e) if e.is_fatal() => {
                tracing::error!(work_id = %work.id, error = %e, "ack rejected; force-stopping the item");
                match inner.queue.stop(&work.id, Some(true)).await {
                    Ok(_) => {}
                    Err(e) if e.status() == Some(409) => {}
                    Err(e) => {
                        tracing::error!(work_id = %work.id, error = %e, "force-stop after a rejected ack failed")
                    }
                }
                return Ok(Claim::Rejected);
            }
            Err(e) => {
                tracing::warn!(work_id = %work.id, error = %e, "ack failed");
                return Err(ClaimError::Ack(e));
            }
        }
        inner.counters.claimed.fetch_add(1, Ordering::Relaxed);
        let owner = inner.config.replica_id.as_str();
        inner
            .recorder
            .lease_claimed(
                work.id.as_str(),
                work.data.id.as_str(),
                owner,
                LEASE_RECORD_TTL,
            )
            .await;
        let this = self.clone();
        inner
            .tasks
            .spawn(async move { this.run_item(work, permit).await });
        Ok(Claim::Claimed)
    }
}

mod duties;
mod item;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_remember_a_bounded_window() {
        let mut r = RecentIds::default();
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        for i in 0..WEBHOOK_DEDUP_WINDOW {
            r.insert(&i.to_string());
        }
        assert_eq!(r.order.len(), WEBHOOK_DEDUP_WINDOW);
        assert!(r.insert("a"), "the oldest id left the window");
    }
}
