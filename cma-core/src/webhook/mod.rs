//! Webhooks (docs/protocol.md §7): Standard Webhooks signatures over CMA event deliveries.
//!
//! * [`WebhookSecret`]: the `whsec_…` key, parsed with the SDK's lenient base64 rules.
//! * [`sign`] / [`sign_headers`]: produce a delivery's `webhook-signature` (and headers).
//! * [`Verifier`]: check a delivery (tolerance, clock, several signatures) and parse it into a
//!   [`WebhookEvent`]; [`WebhookError`] carries the SDK's messages.
//! * [`VerifyLayer`]: the same as tower middleware, for axum or any tower stack.
//!
//! This module owns signing, verification and the typed envelope; it does not deduplicate
//! deliveries by `webhook-id` (that belongs to the state store) nor act on events.
//!
//! ```
//! use cma_core::webhook::{sign_headers, Verifier, WebhookSecret, WebhookEventType};
//!
//! let secret = WebhookSecret::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
//! let body = br#"{"type":"event","id":"wevt_1","created_at":"2026-05-01T12:00:00Z",
//!   "data":{"type":"session.status_idled","id":"sesn_1","organization_id":"org_1"}}"#;
//! let now = std::time::SystemTime::now()
//!     .duration_since(std::time::UNIX_EPOCH)?
//!     .as_secs() as i64;
//! let headers = sign_headers(&secret, "msg_1", now, body)?;
//!
//! let event = Verifier::new(secret).verify_event(&headers, body)?;
//! assert_eq!(event.data.kind, WebhookEventType::SessionStatusIdled);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod event;
mod layer;
mod secret;
mod sign;
mod verify;

pub use event::{WebhookEvent, WebhookEventData, WebhookEventType, parse_unverified};
pub use layer::{
    DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT, VerifyFuture, VerifyLayer, VerifyService, WebhookId,
};
pub use secret::{SECRET_PREFIX, SecretError, WebhookSecret};
pub use sign::{SignError, sign, sign_headers};
pub use verify::{DEFAULT_TOLERANCE, Verifier, WebhookError};

use http::HeaderName;

/// The `webhook-id` header: the delivery's unique id, signed and usable for idempotency.
pub const HEADER_ID: HeaderName = HeaderName::from_static("webhook-id");
/// The `webhook-timestamp` header: unix seconds at signing time.
pub const HEADER_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// The `webhook-signature` header: space-separated `v1,<base64>` entries.
pub const HEADER_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
