//! Typed objects of the CMA self-hosted environment protocol (docs/protocol.md §1.4, §1.5, §2, §3, §4).
//!
//! Every object keeps the fields it does not know in an `extra` map (flattened on the wire) so a
//! newer server never breaks an older worker and nothing is lost on a round trip. Event and state
//! enums have an `Other`/`Unknown` arm that carries the original value.
//!
//! Timestamps stay strings: the heartbeat contract (§3.1) requires echoing `last_heartbeat`
//! verbatim, so re-formatting a parsed date would break the lease.
//!
//! One file per concern: `ids` (typed ids), `work` (work items, the secret, leases, queue
//! stats), `environment`, `session` (sessions and what they carry), `content` (tool result
//! content blocks), `events` (events received from the stream), `send` (events a client sends)
//! and `envelope` (cursor pages and error bodies). Everything is re-exported here, so
//! `cma_core::protocol::X` names every type.

use serde_json::{Map, Value};

/// JSON object holding the fields a type does not model.
pub type Extra = Map<String, Value>;

/// Declares a string enum whose unknown values survive a round trip.
macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
            /// A value this version does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Other(s) => s,
                }
            }

            /// Parse a wire string; unknown values become [`Self::Other`].
            pub fn parse(s: &str) -> Self {
                match s {
                    $($wire => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(Self::parse(&s))
            }
        }
    };
}

pub(crate) use open_enum;

mod content;
mod envelope;
mod environment;
mod events;
mod ids;
mod send;
mod session;
mod work;

pub use content::ContentBlock;
pub use envelope::{ApiErrorDetail, ErrorBody, Page};
pub use environment::{Environment, EnvironmentConfig};
pub use events::{
    GenericEvent, SessionEvent, StatusIdle, ThreadStatus, ToolConfirmation, ToolResultEvent,
    ToolUse,
};
pub use ids::{EnvironmentId, EventId, SessionId, WorkId};
pub use send::{SendEvent, SendEventsRequest};
pub use session::{Session, SessionAgent, SessionResource, SessionStatus, SkillRef};
pub use work::{
    MAX_WORK_SECRET_BYTES, NO_HEARTBEAT, Work, WorkData, WorkHeartbeat, WorkLeaseState,
    WorkQueueStats, WorkState, decode_sessions_token, encode_work_secret,
};

#[cfg(test)]
mod tests;
