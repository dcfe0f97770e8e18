//! The webhook envelope (docs/protocol.md §7.2) and its event catalogue (§7.3).
//!
//! Payloads are thin: ids only. Unknown event types and unknown fields are kept, so a newer
//! server never breaks an older receiver and re-serializing keeps every field.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::WebhookError;
// `open_enum!` expands to code naming `fmt`, `Serializer` and `Deserializer` unqualified.
use crate::protocol::{EnvironmentId, Extra, SessionId, open_enum};

fn event_kind() -> String {
    "event".to_owned()
}

/// One webhook delivery's body (`BetaWebhookEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Always `event`.
    #[serde(rename = "type", default = "event_kind")]
    pub kind: String,
    /// Unique event id (`wevt_…`); use it for idempotency.
    pub id: String,
    /// RFC 3339 time the event occurred, verbatim.
    pub created_at: String,
    /// What happened, to which resource.
    pub data: WebhookEventData,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl WebhookEvent {
    /// `created_at` parsed as RFC 3339.
    pub fn created_at_time(
        &self,
    ) -> Result<chrono::DateTime<chrono::FixedOffset>, chrono::ParseError> {
        chrono::DateTime::parse_from_rfc3339(&self.created_at)
    }
}

/// The `data` of a webhook event (`BetaWebhookEventData`, every variant in one struct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEventData {
    /// The event type.
    #[serde(rename = "type")]
    pub kind: WebhookEventType,
    /// The id of the resource the event is about (a session, environment, agent, vault
    /// credential, … id, depending on [`kind`](Self::kind)).
    pub id: String,
    /// The organization the resource belongs to.
    pub organization_id: String,
    /// The workspace, for every event type except `external_key.*` and `user_profile.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// The thread, for `session.thread_*` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_thread_id: Option<String>,
    /// The vault owning the credential, for `vault_credential.*` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_id: Option<String>,
    /// The enforcement action (`enac_…`), for `user_profile.enforcement_action_*` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_action_id: Option<String>,
    /// Fields this version does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl WebhookEventData {
    /// The session id, for `session.*` events (whose `id` is the session's).
    pub fn session_id(&self) -> Option<SessionId> {
        self.kind
            .as_str()
            .starts_with("session.")
            .then(|| SessionId::new(self.id.clone()))
    }

    /// The environment id, for `environment.*` events.
    pub fn environment_id(&self) -> Option<EnvironmentId> {
        self.kind
            .as_str()
            .starts_with("environment.")
            .then(|| EnvironmentId::new(self.id.clone()))
    }
}

open_enum!(
    /// `data.type` of a webhook event (docs/protocol.md §7.3). Unknown values are kept in `Other`.
    WebhookEventType {
        /// `session.created`
        SessionCreated = "session.created",
        /// `session.pending`
        SessionPending = "session.pending",
        /// `session.running`
        SessionRunning = "session.running",
        /// `session.idled`
        SessionIdled = "session.idled",
        /// `session.requires_action`
        SessionRequiresAction = "session.requires_action",
        /// `session.archived`
        SessionArchived = "session.archived",
        /// `session.deleted`
        SessionDeleted = "session.deleted",
        /// `session.updated`
        SessionUpdated = "session.updated",
        /// `session.budget_reached`
        SessionBudgetReached = "session.budget_reached",
        /// `session.outcome_evaluation_ended`
        SessionOutcomeEvaluationEnded = "session.outcome_evaluation_ended",
        /// `session.status_run_started`
        SessionStatusRunStarted = "session.status_run_started",
        /// `session.status_idled`
        SessionStatusIdled = "session.status_idled",
        /// `session.status_rescheduled`
        SessionStatusRescheduled = "session.status_rescheduled",
        /// `session.status_terminated`
        SessionStatusTerminated = "session.status_terminated",
        /// `session.thread_created` (carries `session_thread_id`)
        SessionThreadCreated = "session.thread_created",
        /// `session.thread_idled` (carries `session_thread_id`)
        SessionThreadIdled = "session.thread_idled",
        /// `session.thread_terminated` (carries `session_thread_id`)
        SessionThreadTerminated = "session.thread_terminated",
        /// `environment.created`
        EnvironmentCreated = "environment.created",
        /// `environment.updated`
        EnvironmentUpdated = "environment.updated",
        /// `environment.archived`
        EnvironmentArchived = "environment.archived",
        /// `environment.deleted`
        EnvironmentDeleted = "environment.deleted",
        /// `agent.created`
        AgentCreated = "agent.created",
        /// `agent.updated`
        AgentUpdated = "agent.updated",
        /// `agent.archived`
        AgentArchived = "agent.archived",
        /// `agent.deleted`
        AgentDeleted = "agent.deleted",
        /// `deployment.created`
        DeploymentCreated = "deployment.created",
        /// `deployment.updated`
        DeploymentUpdated = "deployment.updated",
        /// `deployment.archived`
        DeploymentArchived = "deployment.archived",
        /// `deployment.deleted`
        DeploymentDeleted = "deployment.deleted",
        /// `deployment.paused`
        DeploymentPaused = "deployment.paused",
        /// `deployment.unpaused`
        DeploymentUnpaused = "deployment.unpaused",
        /// `deployment_run.started`
        DeploymentRunStarted = "deployment_run.started",
        /// `deployment_run.succeeded`
        DeploymentRunSucceeded = "deployment_run.succeeded",
        /// `deployment_run.failed`
        DeploymentRunFailed = "deployment_run.failed",
        /// `memory_store.created`
        MemoryStoreCreated = "memory_store.created",
        /// `memory_store.archived`
        MemoryStoreArchived = "memory_store.archived",
        /// `memory_store.deleted`
        MemoryStoreDeleted = "memory_store.deleted",
        /// `vault.created`
        VaultCreated = "vault.created",
        /// `vault.archived`
        VaultArchived = "vault.archived",
        /// `vault.deleted`
        VaultDeleted = "vault.deleted",
        /// `vault_credential.created` (carries `vault_id`)
        VaultCredentialCreated = "vault_credential.created",
        /// `vault_credential.archived` (carries `vault_id`)
        VaultCredentialArchived = "vault_credential.archived",
        /// `vault_credential.deleted` (carries `vault_id`)
        VaultCredentialDeleted = "vault_credential.deleted",
        /// `vault_credential.refresh_failed` (carries `vault_id`)
        VaultCredentialRefreshFailed = "vault_credential.refresh_failed",
        /// `external_key.failed`
        ExternalKeyFailed = "external_key.failed",
        /// `external_key.recovered`
        ExternalKeyRecovered = "external_key.recovered",
        /// `user_profile.enforcement_action_opened` (carries `enforcement_action_id`)
        UserProfileEnforcementActionOpened = "user_profile.enforcement_action_opened",
        /// `user_profile.enforcement_action_resolved` (carries `enforcement_action_id`)
        UserProfileEnforcementActionResolved = "user_profile.enforcement_action_resolved",
        /// `user_profile.program_status_updated`
        UserProfileProgramStatusUpdated = "user_profile.program_status_updated",
    }
);

impl WebhookEventType {
    /// Every type in the catalogue this version knows (docs/protocol.md §7.3), in table order.
    pub const KNOWN: [WebhookEventType; 49] = [
        Self::SessionCreated,
        Self::SessionPending,
        Self::SessionRunning,
        Self::SessionIdled,
        Self::SessionRequiresAction,
        Self::SessionArchived,
        Self::SessionDeleted,
        Self::SessionUpdated,
        Self::SessionBudgetReached,
        Self::SessionOutcomeEvaluationEnded,
        Self::SessionStatusRunStarted,
        Self::SessionStatusIdled,
        Self::SessionStatusRescheduled,
        Self::SessionStatusTerminated,
        Self::SessionThreadCreated,
        Self::SessionThreadIdled,
        Self::SessionThreadTerminated,
        Self::EnvironmentCreated,
        Self::EnvironmentUpdated,
        Self::EnvironmentArchived,
        Self::EnvironmentDeleted,
        Self::AgentCreated,
        Self::AgentUpdated,
        Self::AgentArchived,
        Self::AgentDeleted,
        Self::DeploymentCreated,
        Self::DeploymentUpdated,
        Self::DeploymentArchived,
        Self::DeploymentDeleted,
        Self::DeploymentPaused,
        Self::DeploymentUnpaused,
        Self::DeploymentRunStarted,
        Self::DeploymentRunSucceeded,
        Self::DeploymentRunFailed,
        Self::MemoryStoreCreated,
        Self::MemoryStoreArchived,
        Self::MemoryStoreDeleted,
        Self::VaultCreated,
        Self::VaultArchived,
        Self::VaultDeleted,
        Self::VaultCredentialCreated,
        Self::VaultCredentialArchived,
        Self::VaultCredentialDeleted,
        Self::VaultCredentialRefreshFailed,
        Self::ExternalKeyFailed,
        Self::ExternalKeyRecovered,
        Self::UserProfileEnforcementActionOpened,
        Self::UserProfileEnforcementActionResolved,
        Self::UserProfileProgramStatusUpdated,
    ];
}

/// Parse a body into the envelope without checking any signature (the SDK's
/// `parse_unverified`). Only for bodies already authenticated some other way.
pub fn parse_unverified(body: &[u8]) -> Result<WebhookEvent, WebhookError> {
    serde_json::from_slice(body).map_err(|source| WebhookError::InvalidPayload { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_type_round_trips_through_its_wire_string() {
        let mut seen = std::collections::HashSet::new();
        for t in WebhookEventType::KNOWN {
            assert!(seen.insert(t.as_str().to_owned()), "duplicate {t}");
            assert_eq!(WebhookEventType::parse(t.as_str()), t);
            assert!(!matches!(t, WebhookEventType::Other(_)));
        }
    }

    #[test]
    fn optional_ids_and_unknown_fields_round_trip() {
        let body = br#"{"type":"event","id":"wevt_9","created_at":"2026-05-01T12:00:00Z","data":{"type":"vault_credential.refresh_failed","id":"vcrd_1","organization_id":"org_1","vault_id":"vlt_1","workspace_id":"wrkspc_1","reason":{"code":7}},"retry":2}"#;
        let ev = parse_unverified(body).unwrap();
        assert_eq!(ev.data.kind, WebhookEventType::VaultCredentialRefreshFailed);
        assert_eq!(ev.data.vault_id.as_deref(), Some("vlt_1"));
        assert_eq!(ev.data.extra["reason"]["code"], 7);
        assert_eq!(ev.extra["retry"], 2);
        assert_eq!(ev.data.session_id(), None);
        let again: serde_json::Value = serde_json::to_value(&ev).unwrap();
        let orig: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(again, orig);
    }

    #[test]
    fn session_and_environment_ids_follow_the_type_group() {
        let ev = parse_unverified(br#"{"type":"event","id":"e","created_at":"2026-05-01T12:00:00+02:00","data":{"type":"session.thread_idled","id":"sesn_1","organization_id":"o","session_thread_id":"th_1"}}"#).unwrap();
        assert_eq!(ev.data.session_id(), Some(SessionId::new("sesn_1")));
        assert_eq!(ev.data.environment_id(), None);
        assert_eq!(ev.created_at_time().unwrap().timestamp(), 1_777_629_600);
        let ev = parse_unverified(br#"{"type":"event","id":"e","created_at":"x","data":{"type":"environment.archived","id":"env_1","organization_id":"o"}}"#).unwrap();
        assert_eq!(ev.data.environment_id(), Some(EnvironmentId::new("env_1")));
        assert!(ev.created_at_time().is_err());
    }

    #[test]
    fn malformed_bodies_are_invalid_payload_errors() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"type":"event","id":"e","created_at":"t"}"#,
            b"\xff",
        ] {
            let err = parse_unverified(body).unwrap_err();
            assert!(matches!(err, WebhookError::InvalidPayload { .. }), "{err}");
            assert!(!err.is_authentication_failure());
        }
    }
}
