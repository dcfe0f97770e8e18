//! The work queue: enqueue, poll, ack, heartbeat, stop, lease expiry and stats
//! (docs/protocol.md §2.1, §3).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};
use tokio::time::{Duration, Instant};

use crate::protocol::{
    EnvironmentId, Extra, NO_HEARTBEAT, Page, Work, WorkData, WorkHeartbeat, WorkId,
    WorkLeaseState, WorkQueueStats, WorkState, encode_work_secret,
};

use super::super::error::ApiError;
use super::{
    State, TOKENS_PER_ITEM, WORKERS_POLLING_WINDOW, WorkEntry, now_str, page_cursor, parse_cursor,
    short_id, unique_stamp,
};

impl State {
    /// Queue a work item.
    pub(crate) fn enqueue(&mut self, env: &str, data: WorkData) -> String {
        let id = format!("work_{}", short_id());
        let work = Work {
            kind: "work".into(),
            id: WorkId(id.clone()),
            environment_id: EnvironmentId(env.to_owned()),
            state: WorkState::Queued,
            data,
            metadata: BTreeMap::new(),
            secret: None,
            created_at: now_str(),
            acknowledged_at: None,
            started_at: None,
            latest_heartbeat_at: None,
            stop_requested_at: None,
            stopped_at: None,
            extra: Extra::new(),
        };
        self.work.insert(
            id.clone(),
            WorkEntry {
                work,
                pending_since: None,
                lease_deadline: None,
                last_heartbeat: None,
                ttl: self.limits.lease_ttl_seconds,
                tokens: VecDeque::new(),
            },
        );
        self.work_order.push(id.clone());
        self.reindex(&id);
        if self.work_order.len() > self.limits.max_work_items {
            self.forget_stopped_work();
        }
        id
    }

    /// Drop the oldest stopped items until the queue is back under its cap.
    fn forget_stopped_work(&mut self) {
        let mut excess = self
            .work_order
            .len()
            .saturating_sub(self.limits.max_work_items);
        let work = &mut self.work;
        let tokens = &mut self.tokens;
        self.work_order.retain(|id| {
            if excess == 0 {
                return true;
            }
            let stopped = work
                .get(id)
                .is_some_and(|w| w.work.state == WorkState::Stopped);
            if !stopped {
                return true;
            }
            if let Some(w) = work.remove(id) {
                for t in w.tokens {
                    tokens.remove(&t);
                }
            }
            excess -= 1;
            false
        });
    }

    /// Keep the `queued` and `leased` indexes in line with one item's state.
    fn reindex(&mut self, id: &str) {
        let (queued, leased) = match self.work.get(id) {
            Some(w) => (
                w.work.state == WorkState::Queued,
                w.lease_deadline.is_some(),
            ),
            None => (false, false),
        };
        let in_queue = self.queued.iter().any(|q| q == id);
        if queued && !in_queue {
            self.queued.push(id.to_owned());
        } else if !queued && in_queue {
            self.queued.retain(|q| q != id);
        }
        if leased {
            self.leased.insert(id.to_owned());
        } else {
            self.leased.remove(id);
        }
    }

    /// Re-queue items whose lease expired. Returns whether anything changed.
    pub(crate) fn sweep(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .leased
            .iter()
            .filter(|id| {
                self.work
                    .get(*id)
                    .is_none_or(|w| w.lease_deadline.is_none_or(|d| d <= now))
            })
            .cloned()
            .collect();
        let mut changed = false;
        for id in expired {
            if let Some(w) = self.work.get_mut(&id) {
                match w.work.state {
                    WorkState::Starting | WorkState::Active => {
                        w.work.state = WorkState::Queued;
                        w.work.acknowledged_at = None;
                        w.work.started_at = None;
                        w.last_heartbeat = None;
                        w.pending_since = None;
                        changed = true;
                    }
                    WorkState::Stopping => {
                        // The holder left without its final stop: the item is over.
                        w.work.state = WorkState::Stopped;
                        w.work.stopped_at = Some(now_str());
                        changed = true;
                    }
                    _ => {}
                }
                w.lease_deadline = None;
            }
            self.reindex(&id);
        }
        changed
    }

    /// Hand out one pollable item (marking it pending) with a fresh secret.
    pub(crate) fn poll(
        &mut self,
        env: &str,
        reclaim_ms: u64,
        worker: Option<&str>,
        now: Instant,
    ) -> Option<Work> {
        if let Some(w) = worker {
            let seen = self.workers.entry(env.to_owned()).or_default();
            seen.insert(w.to_owned(), now);
            seen.retain(|_, t| now.saturating_duration_since(*t) < WORKERS_POLLING_WINDOW);
        }
        let reclaim = Duration::from_millis(reclaim_ms);
        let id = self.queued.iter().find(|id| {
            self.work.get(*id).is_some_and(|w| {
                w.work.environment_id.as_str() == env
                    && w.work.state == WorkState::Queued
                    && w.pending_since
                        .is_none_or(|p| now.saturating_duration_since(p) >= reclaim)
            })
        })?;
        let id = id.clone();
        let token = format!("sk-ant-sess-emu-{}", uuid::Uuid::new_v4().simple());
        let entry = self.work.get_mut(&id)?;
        entry.pending_since = Some(now);
        entry.tokens.push_back(token.clone());
        let evicted = if entry.tokens.len() > TOKENS_PER_ITEM {
            entry.tokens.pop_front()
        } else {
            None
        };
        let mut out = entry.work.clone();
        out.secret = Some(encode_work_secret(&token));
        if let Some(old) = evicted {
            self.tokens.remove(&old);
        }
        self.tokens.insert(token, id);
        Some(out)
    }

    fn work_mut(&mut self, env: &str, id: &str) -> Result<&mut WorkEntry, ApiError> {
        match self.work.get_mut(id) {
            Some(w) if w.work.environment_id.as_str() == env => Ok(w),
            _ => Err(ApiError::not_found(format!(
                "work item {id} not found in environment {env}"
            ))),
        }
    }

    pub(crate) fn ack(&mut self, env: &str, id: &str, now: Instant) -> Result<Work, ApiError> {
        let w = self.work_mut(env, id)?;
        if w.work.state != WorkState::Queued {
            return Err(ApiError::conflict(format!(
                "work item {id} is {}, not queued",
                w.work.state
            )));
        }
        w.work.state = WorkState::Starting;
        w.work.acknowledged_at = Some(now_str());
        w.pending_since = None;
        w.lease_deadline = Some(now + Duration::from_secs(w.ttl));
        let out = w.work.clone();
        self.reindex(id);
        Ok(out)
    }

    fn lease_state(w: &WorkEntry) -> WorkLeaseState {
        WorkLeaseState {
            state: w.work.state.clone(),
            last_heartbeat: w.last_heartbeat.clone(),
            lease_extended: false,
            ttl_seconds: w.ttl as i64,
            extra: Extra::new(),
        }
    }

    pub(crate) fn heartbeat(
        &mut self,
        env: &str,
        id: &str,
        expected: Option<&str>,
        desired_ttl: Option<u64>,
        now: Instant,
    ) -> Result<WorkHeartbeat, ApiError> {
        let w = self.work_mut(env, id)?;
        let precondition_failed = |w: &WorkEntry| {
            let mut e = ApiError::new(
                axum::http::StatusCode::PRECONDITION_FAILED,
                "invalid_request_error",
                "heartbeat precondition failed",
            );
            e.details = Some(json!({
                "error_code": "heartbeat_precondition_failed",
                "current_state": Self::lease_state(w),
            }));
            e
        };
        let hb = |w: &WorkEntry, extended: bool| WorkHeartbeat {
            kind: "work_heartbeat".into(),
            last_heartbeat: w.last_heartbeat.clone().unwrap_or_default(),
            lease_extended: extended,
            state: w.work.state.clone(),
            ttl_seconds: w.ttl as i64,
            extra: Extra::new(),
        };
        match w.work.state {
            WorkState::Stopped => return Ok(hb(w, false)),
            WorkState::Stopping => {}
            WorkState::Queued => return Err(precondition_failed(w)),
            WorkState::Starting | WorkState::Active => {
                let ok = match expected {
                    None => true,
                    Some(NO_HEARTBEAT) => w.last_heartbeat.is_none(),
                    Some(v) => w.last_heartbeat.as_deref() == Some(v),
                };
                if !ok {
                    return Err(precondition_failed(w));
                }
            }
            WorkState::Other(_) => return Err(precondition_failed(w)),
        }
        if let Some(t) = desired_ttl {
            w.ttl = t.clamp(1, 3600);
        }
        let stamp = unique_stamp(w.last_heartbeat.as_deref());
        w.last_heartbeat = Some(stamp.clone());
        w.work.latest_heartbeat_at = Some(stamp.clone());
        if w.work.state == WorkState::Starting {
            w.work.state = WorkState::Active;
            w.work.started_at = Some(stamp);
        }
        w.lease_deadline = Some(now + Duration::from_secs(w.ttl));
        let out = hb(w, true);
        self.reindex(id);
        Ok(out)
    }

    /// Hand the lease of a live item to a phantom worker (fault injection).
    pub(crate) fn steal_lease(&mut self, id: &str, now: Instant) -> bool {
        let Some(w) = self.work.get_mut(id) else {
            return false;
        };
        if !matches!(w.work.state, WorkState::Starting | WorkState::Active) {
            return false;
        }
        let stamp = unique_stamp(w.last_heartbeat.as_deref());
        w.last_heartbeat = Some(stamp.clone());
        w.work.latest_heartbeat_at = Some(stamp.clone());
        if w.work.state == WorkState::Starting {
            w.work.started_at = Some(stamp);
        }
        w.work.state = WorkState::Active;
        w.lease_deadline = Some(now + Duration::from_secs(w.ttl));
        self.reindex(id);
        true
    }

    /// Make a live item's lease expire now (it is re-queued by the next sweep).
    pub(crate) fn expire_lease(&mut self, id: &str, now: Instant) -> bool {
        match self.work.get_mut(id) {
            Some(w) if w.lease_deadline.is_some() => {
                w.lease_deadline = Some(now);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn stop(&mut self, env: &str, id: &str, force: bool) -> Result<Work, ApiError> {
        let w = self.work_mut(env, id)?;
        let now = now_str();
        match w.work.state {
            WorkState::Stopped => {
                return Err(ApiError::conflict(format!(
                    "work item {id} is already stopped"
                )));
            }
            WorkState::Queued => {
                w.work.state = WorkState::Stopped;
                w.work.stop_requested_at.get_or_insert(now.clone());
                w.work.stopped_at = Some(now);
                w.pending_since = None;
                w.lease_deadline = None;
            }
            _ if force => {
                w.work.state = WorkState::Stopped;
                w.work.stop_requested_at.get_or_insert(now.clone());
                w.work.stopped_at = Some(now);
                w.lease_deadline = None;
            }
            _ => {
                w.work.state = WorkState::Stopping;
                w.work.stop_requested_at.get_or_insert(now);
            }
        }
        let out = w.work.clone();
        self.reindex(id);
        Ok(out)
    }

    pub(crate) fn list_work(
        &self,
        env: &str,
        limit: usize,
        page: Option<&str>,
    ) -> Result<Page<Work>, ApiError> {
        let start = match page {
            Some(p) => parse_cursor("workp", p)? as usize,
            None => 0,
        };
        let all: Vec<&WorkEntry> = self
            .work_order
            .iter()
            .filter_map(|id| self.work.get(id))
            .filter(|w| w.work.environment_id.as_str() == env)
            .collect();
        let data: Vec<Work> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|w| w.work.clone())
            .collect();
        let end = start + data.len();
        Ok(Page {
            data,
            next_page: (end < all.len()).then(|| page_cursor("workp", end as u64)),
            extra: Extra::new(),
        })
    }

    pub(crate) fn get_work(&self, env: &str, id: &str) -> Result<Work, ApiError> {
        match self.work.get(id) {
            Some(w) if w.work.environment_id.as_str() == env => Ok(w.work.clone()),
            _ => Err(ApiError::not_found(format!("work item {id} not found"))),
        }
    }

    /// Every work item, in creation order.
    /// One work item by id.
    pub(crate) fn work_item(&self, id: &str) -> Option<Work> {
        self.work.get(id).map(|w| w.work.clone())
    }

    pub(crate) fn all_work(&self) -> Vec<Work> {
        self.work_order
            .iter()
            .filter_map(|id| self.work.get(id))
            .map(|w| w.work.clone())
            .collect()
    }

    pub(crate) fn update_work_metadata(
        &mut self,
        env: &str,
        id: &str,
        metadata: &Map<String, Value>,
    ) -> Result<Work, ApiError> {
        let w = self.work_mut(env, id)?;
        let mut md = w.work.metadata.clone();
        for (k, v) in metadata {
            match v {
                Value::Null => {
                    md.remove(k);
                }
                Value::String(s) => {
                    md.insert(k.clone(), s.clone());
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "metadata value for {k:?} must be a string or null"
                    ))
                    .with_code("invalid_metadata"));
                }
            }
        }
        w.work.metadata = md;
        Ok(w.work.clone())
    }

    pub(crate) fn stats(&self, env: &str, now: Instant) -> WorkQueueStats {
        let mut depth = 0;
        let mut pending = 0;
        let mut oldest: Option<&str> = None;
        for id in &self.queued {
            let Some(w) = self.work.get(id) else { continue };
            if w.work.environment_id.as_str() != env {
                continue;
            }
            // An item whose poll is older than the default reclaim delay is pollable again.
            let reclaim = Duration::from_millis(self.limits.reclaim_default_ms);
            match w.pending_since {
                Some(p) if now.saturating_duration_since(p) < reclaim => pending += 1,
                _ => depth += 1,
            }
            if oldest.is_none_or(|o| w.work.created_at.as_str() < o) {
                oldest = Some(&w.work.created_at);
            }
        }
        let polling = self.workers.get(env).map_or(0, |m| {
            m.values()
                .filter(|t| now.saturating_duration_since(**t) < WORKERS_POLLING_WINDOW)
                .count()
        });
        WorkQueueStats {
            kind: "work_queue_stats".into(),
            depth,
            pending,
            oldest_queued_at: oldest.map(str::to_owned),
            workers_polling: Some(polling as u64),
            extra: Extra::new(),
        }
    }
}
