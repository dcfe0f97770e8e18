//! Fault injection: make the next N calls of an endpoint fail, stall, drop their stream, lose
//! their lease, or answer with a hostile payload ([`Reply`]).
//!
//! Faults are matched by [`Endpoint`] in the order they were armed and consumed one call at a time.
//! They apply after routing and before authentication, so a request that would have failed
//! authentication still consumes a fault.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::hostile::{BodyPart, Reply};

/// The endpoints faults can target (their names in scenario files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Endpoint {
    /// `GET …/work/poll`.
    Poll,
    /// `POST …/work/{id}/ack`.
    Ack,
    /// `POST …/work/{id}/heartbeat`.
    Heartbeat,
    /// `POST …/work/{id}/stop`.
    Stop,
    /// `GET …/work`.
    WorkList,
    /// `GET …/work/{id}`.
    WorkGet,
    /// `POST …/work/{id}`.
    WorkUpdate,
    /// `GET …/work/stats`.
    WorkStats,
    /// `POST /v1/environments`.
    EnvironmentCreate,
    /// `GET /v1/environments/{id}`.
    EnvironmentGet,
    /// `POST /v1/environments/{id}`.
    EnvironmentUpdate,
    /// `GET /v1/environments`.
    EnvironmentList,
    /// `DELETE /v1/environments/{id}`.
    EnvironmentDelete,
    /// `POST /v1/environments/{id}/archive`.
    EnvironmentArchive,
    /// `POST /v1/sessions`.
    SessionCreate,
    /// `GET /v1/sessions/{id}`.
    SessionGet,
    /// `DELETE /v1/sessions/{id}`.
    SessionDelete,
    /// `GET /v1/sessions/{id}/events`.
    EventsList,
    /// `POST /v1/sessions/{id}/events`.
    EventsSend,
    /// `GET /v1/sessions/{id}/events/stream`.
    Stream,
    /// `GET /v1/skills/{id}/versions/{version}`.
    SkillVersion,
    /// `GET /v1/skills/{id}/versions/{version}/content`.
    SkillContent,
    /// `GET /v1/memory_stores/{id}/memories`.
    MemoryList,
    /// `GET /v1/memory_stores/{id}/memories/{memory_id}`.
    MemoryGet,
    /// `POST /v1/memory_stores/{id}/memories`.
    MemoryCreate,
    /// `POST /v1/memory_stores/{id}/memories/{memory_id}`.
    MemoryUpdate,
    /// `DELETE /v1/memory_stores/{id}/memories/{memory_id}`.
    MemoryDelete,
}

impl Endpoint {
    /// Every endpoint, in documentation order.
    pub const ALL: [Endpoint; 27] = [
        Self::Poll,
        Self::Ack,
        Self::Heartbeat,
        Self::Stop,
        Self::WorkList,
        Self::WorkGet,
        Self::WorkUpdate,
        Self::WorkStats,
        Self::EnvironmentCreate,
        Self::EnvironmentGet,
        Self::EnvironmentUpdate,
        Self::EnvironmentList,
        Self::EnvironmentDelete,
        Self::EnvironmentArchive,
        Self::SessionCreate,
        Self::SessionGet,
        Self::SessionDelete,
        Self::EventsList,
        Self::EventsSend,
        Self::Stream,
        Self::SkillVersion,
        Self::SkillContent,
        Self::MemoryList,
        Self::MemoryGet,
        Self::MemoryCreate,
        Self::MemoryUpdate,
        Self::MemoryDelete,
    ];

    /// The name used in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Ack => "ack",
            Self::Heartbeat => "heartbeat",
            Self::Stop => "stop",
            Self::WorkList => "work_list",
            Self::WorkGet => "work_get",
            Self::WorkUpdate => "work_update",
            Self::WorkStats => "work_stats",
            Self::EnvironmentCreate => "environment_create",
            Self::EnvironmentGet => "environment_get",
            Self::EnvironmentUpdate => "environment_update",
            Self::EnvironmentList => "environment_list",
            Self::EnvironmentDelete => "environment_delete",
            Self::EnvironmentArchive => "environment_archive",
            Self::SessionCreate => "session_create",
            Self::SessionGet => "session_get",
            Self::SessionDelete => "session_delete",
            Self::EventsList => "events_list",
            Self::EventsSend => "events_send",
            Self::Stream => "stream",
            Self::SkillVersion => "skill_version",
            Self::SkillContent => "skill_content",
            Self::MemoryList => "memory_list",
            Self::MemoryGet => "memory_get",
            Self::MemoryCreate => "memory_create",
            Self::MemoryUpdate => "memory_update",
            Self::MemoryDelete => "memory_delete",
        }
    }

    /// The endpoint a request is for, from its method and path (`None` for no endpoint).
    pub fn classify(method: &http::Method, path: &str) -> Option<Self> {
        use http::Method as M;
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        Some(match (method, segs.as_slice()) {
            (&M::GET, ["v1", "environments"]) => Self::EnvironmentList,
            (&M::POST, ["v1", "environments"]) => Self::EnvironmentCreate,
            (&M::GET, ["v1", "environments", _]) => Self::EnvironmentGet,
            (&M::POST, ["v1", "environments", _]) => Self::EnvironmentUpdate,
            (&M::DELETE, ["v1", "environments", _]) => Self::EnvironmentDelete,
            (&M::POST, ["v1", "environments", _, "archive"]) => Self::EnvironmentArchive,
            (&M::GET, ["v1", "environments", _, "work"]) => Self::WorkList,
            (&M::GET, ["v1", "environments", _, "work", "poll"]) => Self::Poll,
            (&M::GET, ["v1", "environments", _, "work", "stats"]) => Self::WorkStats,
            (&M::GET, ["v1", "environments", _, "work", _]) => Self::WorkGet,
            (&M::POST, ["v1", "environments", _, "work", _]) => Self::WorkUpdate,
            (&M::POST, ["v1", "environments", _, "work", _, "ack"]) => Self::Ack,
            (&M::POST, ["v1", "environments", _, "work", _, "heartbeat"]) => Self::Heartbeat,
            (&M::POST, ["v1", "environments", _, "work", _, "stop"]) => Self::Stop,
            (&M::POST, ["v1", "sessions"]) => Self::SessionCreate,
            (&M::GET, ["v1", "sessions", _]) => Self::SessionGet,
            (&M::DELETE, ["v1", "sessions", _]) => Self::SessionDelete,
            (&M::GET, ["v1", "sessions", _, "events"]) => Self::EventsList,
            (&M::POST, ["v1", "sessions", _, "events"]) => Self::EventsSend,
            (&M::GET, ["v1", "sessions", _, "events", "stream"]) => Self::Stream,
            (&M::GET, ["v1", "skills", _, "versions", _]) => Self::SkillVersion,
            (&M::GET, ["v1", "skills", _, "versions", _, "content"]) => Self::SkillContent,
            (&M::GET, ["v1", "memory_stores", _, "memories"]) => Self::MemoryList,
            (&M::POST, ["v1", "memory_stores", _, "memories"]) => Self::MemoryCreate,
            (&M::GET, ["v1", "memory_stores", _, "memories", _]) => Self::MemoryGet,
            (&M::POST, ["v1", "memory_stores", _, "memories", _]) => Self::MemoryUpdate,
            (&M::DELETE, ["v1", "memory_stores", _, "memories", _]) => Self::MemoryDelete,
            _ => return None,
        })
    }

    /// Whether the handler consumes this endpoint's faults itself (the core endpoints); the
    /// resource endpoints (skills, memory stores) get theirs from the fault middleware.
    pub(crate) fn handler_consumes_faults(self) -> bool {
        !matches!(
            self,
            Self::SkillVersion
                | Self::SkillContent
                | Self::MemoryList
                | Self::MemoryGet
                | Self::MemoryCreate
                | Self::MemoryUpdate
                | Self::MemoryDelete
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A header value given as a JSON string or number.
fn header_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

fn one() -> u32 {
    1
}

/// One armed fault. All effects are optional and combine: first `delay_ms`, then `lease_lost`,
/// then either the error `status`, a hostile [`Reply`] (any endpoint), or (for `stream`) the
/// `drop_after_frames` cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// How many calls it affects (default 1).
    #[serde(default = "one")]
    pub times: u32,
    /// Answer with this status (400–599) instead of serving the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `error.type` of the error body (default derived from the status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// `error.message` of the error body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A complete response body to send instead of the generated error body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// `retry-after` header value (seconds or an HTTP date; a JSON number is accepted).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "header_text"
    )]
    pub retry_after: Option<String>,
    /// `retry-after-ms` header value (a JSON number is accepted).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "header_text"
    )]
    pub retry_after_ms: Option<String>,
    /// `x-should-retry` header (`true`/`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub should_retry: Option<bool>,
    /// Wait this long before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `stream` only: close the stream after this many event frames (0 = right after the headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_after_frames: Option<u32>,
    /// `heartbeat` only: before serving, hand the lease to a phantom worker, so the call gets 412.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lease_lost: bool,
    /// Answer with this payload instead of serving the call (any status, giant, malformed or
    /// never-ending bodies): the emulator's hostile mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
}

impl Fault {
    /// A fault with no effect yet on the next call of `endpoint`.
    pub fn on(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            times: 1,
            status: None,
            error_type: None,
            message: None,
            body: None,
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
            delay_ms: None,
            drop_after_frames: None,
            lease_lost: false,
            reply: None,
        }
    }

    /// Affect the next `n` calls.
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }

    /// Answer with `status`.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Add `retry-after-ms`.
    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms.to_string());
        self
    }

    /// Add `retry-after` (seconds).
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// Add `x-should-retry`.
    pub fn should_retry(mut self, yes: bool) -> Self {
        self.should_retry = Some(yes);
        self
    }

    /// Delay the answer.
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = Some(ms);
        self
    }

    /// Close the stream after `frames` event frames.
    pub fn drop_after_frames(mut self, frames: u32) -> Self {
        self.drop_after_frames = Some(frames);
        self
    }

    /// Steal the lease before serving the heartbeat.
    pub fn lease_lost(mut self) -> Self {
        self.lease_lost = true;
        self
    }

    /// Answer with a hostile payload instead of serving the call.
    pub fn reply(mut self, reply: Reply) -> Self {
        self.reply = Some(reply);
        self
    }

    /// Check the combination of fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.times == 0 {
            return Err("times must be at least 1".into());
        }
        if let Some(s) = self.status
            && !(400..=599).contains(&s)
        {
            return Err(format!("status {s} is not an error status (400-599)"));
        }
        if self.drop_after_frames.is_some() && self.endpoint != Endpoint::Stream {
            return Err("drop_after_frames only applies to the stream endpoint".into());
        }
        if self.lease_lost && self.endpoint != Endpoint::Heartbeat {
            return Err("lease_lost only applies to the heartbeat endpoint".into());
        }
        if let Some(reply) = &self.reply {
            if self.status.is_some() || self.drop_after_frames.is_some() || self.lease_lost {
                return Err(
                    "reply replaces the answer: it does not combine with status, drop_after_frames or lease_lost"
                        .into(),
                );
            }
            reply.validate()?;
        }
        let has_effect = self.status.is_some()
            || self.delay_ms.is_some()
            || self.drop_after_frames.is_some()
            || self.lease_lost
            || self.reply.is_some();
        if !has_effect {
            return Err(
                "a fault needs status, delay_ms, drop_after_frames, lease_lost or reply".to_owned(),
            );
        }
        if self.status.is_none()
            && (self.body.is_some()
                || self.retry_after.is_some()
                || self.retry_after_ms.is_some()
                || self.should_retry.is_some()
                || self.error_type.is_some()
                || self.message.is_some())
        {
            return Err("body, message, error_type and retry headers need a status".into());
        }
        Ok(())
    }
}

/// The armed faults, consumed call by call.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    armed: VecDeque<(Fault, u32)>,
}

impl FaultBook {
    pub(crate) fn arm(&mut self, fault: Fault) {
        let n = fault.times;
        self.armed.push_back((fault, n));
    }

    pub(crate) fn clear(&mut self) {
        self.armed.clear();
    }

    /// Consume one use of the first fault armed for `endpoint`.
    pub(crate) fn take(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let idx = self
            .armed
            .iter()
            .position(|(f, _)| f.endpoint == endpoint)?;
        let (fault, left) = self.armed.get_mut(idx)?;
        let out = fault.clone();
        *left -= 1;
        if *left == 0 {
            self.armed.remove(idx);
        }
        Some(out)
    }

    /// Consume one use of the first fault armed for `endpoint` if it carries a [`Reply`] (a
    /// fault of another kind armed first is left for the handler).
    pub(crate) fn take_reply(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let (first, _) = self.armed.iter().find(|(f, _)| f.endpoint == endpoint)?;
        first.reply.as_ref()?;
        self.take(endpoint)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.armed.iter().map(|(_, n)| *n as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_per_endpoint() {
        let mut book = FaultBook::default();
        book.arm(Fault::on(Endpoint::Poll).status(503).times(2));
        book.arm(Fault::on(Endpoint::Ack).status(500));
        book.arm(Fault::on(Endpoint::Poll).status(429));
        assert_eq!(book.remaining(), 4);
        assert_eq!(book.take(Endpoint::Poll).unwrap().status, Some(503));
        assert_eq!(book.take(Endpoint::Poll).unwrap().status, Some(503));
        assert_eq!(book.take(Endpoint::Poll).unwrap().status, Some(429));
        assert!(book.take(Endpoint::Poll).is_none());
        assert_eq!(book.take(Endpoint::Ack).unwrap().status, Some(500));
        assert_eq!(book.remaining(), 0);
    }

    #[test]
    fn names_round_trip_through_serde() {
        for e in Endpoint::ALL {
            let v = serde_json::to_value(e).unwrap();
            assert_eq!(v, serde_json::json!(e.name()));
            assert_eq!(serde_json::from_value::<Endpoint>(v).unwrap(), e);
        }
    }

    #[test]
    fn retry_headers_accept_numbers_and_strings() {
        let f: Fault = serde_json::from_value(serde_json::json!(
            {"endpoint": "poll", "status": 429, "retry_after_ms": 1500, "retry_after": "2"}
        ))
        .unwrap();
        assert_eq!(f.retry_after_ms.as_deref(), Some("1500"));
        assert_eq!(f.retry_after.as_deref(), Some("2"));
        assert!(
            serde_json::from_value::<Fault>(serde_json::json!(
                {"endpoint": "poll", "status": 429, "retry_after": [1]}
            ))
            .is_err()
        );
    }

    #[test]
    fn inconsistent_faults_are_rejected() {
        assert!(Fault::on(Endpoint::Poll).validate().is_err());
        assert!(Fault::on(Endpoint::Poll).status(200).validate().is_err());
        assert!(
            Fault::on(Endpoint::Poll)
                .drop_after_frames(1)
                .validate()
                .is_err()
        );
        assert!(Fault::on(Endpoint::Stop).lease_lost().validate().is_err());
        assert!(
            Fault::on(Endpoint::Poll)
                .status(500)
                .reply(Reply::new(200).text("x"))
                .validate()
                .is_err()
        );
        assert!(
            Fault::on(Endpoint::MemoryList)
                .reply(Reply::new(200).text("x"))
                .validate()
                .is_ok()
        );
        assert!(
            Fault::on(Endpoint::Poll)
                .reply(Reply::new(99))
                .validate()
                .is_err()
        );
        assert_eq!(Endpoint::classify(&http::Method::GET, "/v1/nothing"), None);
    }

    #[test]
    fn every_endpoint_is_classified_from_its_request() {
        use http::Method as M;
        let w = "/v1/environments/e/work";
        let m = "/v1/memory_stores/s/memories";
        let table = [
            (M::GET, format!("{w}/poll"), Endpoint::Poll),
            (M::POST, format!("{w}/x/ack"), Endpoint::Ack),
            (M::POST, format!("{w}/x/heartbeat"), Endpoint::Heartbeat),
            (M::POST, format!("{w}/x/stop"), Endpoint::Stop),
            (M::GET, w.to_owned(), Endpoint::WorkList),
            (M::GET, format!("{w}/x"), Endpoint::WorkGet),
            (M::POST, format!("{w}/x"), Endpoint::WorkUpdate),
            (M::GET, format!("{w}/stats"), Endpoint::WorkStats),
            (
                M::POST,
                "/v1/environments".into(),
                Endpoint::EnvironmentCreate,
            ),
            (
                M::GET,
                "/v1/environments/e".into(),
                Endpoint::EnvironmentGet,
            ),
            (
                M::POST,
                "/v1/environments/e".into(),
                Endpoint::EnvironmentUpdate,
            ),
            (M::GET, "/v1/environments".into(), Endpoint::EnvironmentList),
            (
                M::DELETE,
                "/v1/environments/e".into(),
                Endpoint::EnvironmentDelete,
            ),
            (
                M::POST,
                "/v1/environments/e/archive".into(),
                Endpoint::EnvironmentArchive,
            ),
            (M::POST, "/v1/sessions".into(), Endpoint::SessionCreate),
            (M::GET, "/v1/sessions/s".into(), Endpoint::SessionGet),
            (M::DELETE, "/v1/sessions/s".into(), Endpoint::SessionDelete),
            (M::GET, "/v1/sessions/s/events".into(), Endpoint::EventsList),
            (
                M::POST,
                "/v1/sessions/s/events".into(),
                Endpoint::EventsSend,
            ),
            (
                M::GET,
                "/v1/sessions/s/events/stream".into(),
                Endpoint::Stream,
            ),
            (
                M::GET,
                "/v1/skills/k/versions/1".into(),
                Endpoint::SkillVersion,
            ),
            (
                M::GET,
                "/v1/skills/k/versions/1/content".into(),
                Endpoint::SkillContent,
            ),
            (M::GET, m.to_owned(), Endpoint::MemoryList),
            (M::GET, format!("{m}/x"), Endpoint::MemoryGet),
            (M::POST, m.to_owned(), Endpoint::MemoryCreate),
            (M::POST, format!("{m}/x"), Endpoint::MemoryUpdate),
            (M::DELETE, format!("{m}/x"), Endpoint::MemoryDelete),
        ];
        assert_eq!(table.len(), Endpoint::ALL.len());
        for (method, path, endpoint) in table {
            assert_eq!(Endpoint::classify(&method, &path), Some(endpoint), "{path}");
        }
        assert!(
            Fault::on(Endpoint::Stream)
                .drop_after_frames(0)
                .validate()
                .is_ok()
        );
        let mut f = Fault::on(Endpoint::Poll).delay_ms(5);
        f.retry_after = Some("1".into());
        assert!(f.validate().is_err());
    }
}
