//! Events a client sends with `POST /v1/sessions/{id}/events` (docs/protocol.md §4.3).

use serde::Serialize;

use super::content::ContentBlock;
use super::ids::EventId;

/// An event a client sends with `POST /v1/sessions/{id}/events` (docs/protocol.md §4.3).
///
/// Field order matches the official SDK byte for byte (vectors R13, R21–R23).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum SendEvent {
    /// Result of a built-in (sandbox-routed) tool call.
    #[serde(rename = "user.tool_result")]
    ToolResult {
        /// The `agent.tool_use` event id.
        tool_use_id: EventId,
        /// Whether the call failed (the worker always sends it).
        is_error: bool,
        /// Non-empty content.
        content: Vec<ContentBlock>,
    },
    /// Result of a custom tool call.
    #[serde(rename = "user.custom_tool_result")]
    CustomToolResult {
        /// The `agent.custom_tool_use` event id.
        custom_tool_use_id: EventId,
        /// Whether the call failed; omitted when `None`.
        #[serde(skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
        /// Content.
        content: Vec<ContentBlock>,
    },
    /// A verdict on an `ask`-gated call.
    #[serde(rename = "user.tool_confirmation")]
    ToolConfirmation {
        /// The gated call.
        tool_use_id: EventId,
        /// `allow` or `deny`.
        result: String,
        /// Shown to the agent on deny.
        #[serde(skip_serializing_if = "Option::is_none")]
        deny_message: Option<String>,
    },
    /// Interrupt all threads, or one.
    #[serde(rename = "user.interrupt")]
    Interrupt {
        /// Only this thread.
        #[serde(skip_serializing_if = "Option::is_none")]
        session_thread_id: Option<String>,
    },
    /// A user message.
    #[serde(rename = "user.message")]
    Message {
        /// Message content blocks.
        content: Vec<ContentBlock>,
    },
}

/// Request body of `POST /v1/sessions/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendEventsRequest<'a> {
    /// The events, in order.
    pub events: &'a [SendEvent],
}
