//! Webhooks (PROTOCOL.md §7): Standard Webhooks signatures over CMA event deliveries.
//!
//! * [`WebhookSecret`]: the `whsec_…` key, parsed with the SDK's lenient base64 rules.
//! * [`sign`] / [`sign_headers`]: produce a delivery's `webhook-signature` (and headers).
//!
//! This module owns signing, verification and the typed envelope; it does not deduplicate
//! deliveries by `webhook-id` (that belongs to the state store) nor act on events.

mod secret;
mod sign;

pub use secret::{SECRET_PREFIX, SecretError, WebhookSecret};
pub use sign::{SignError, sign, sign_headers};

use http::HeaderName;

/// The `webhook-id` header: the delivery's unique id, signed and usable for idempotency.
pub const HEADER_ID: HeaderName = HeaderName::from_static("webhook-id");
/// The `webhook-timestamp` header: unix seconds at signing time.
pub const HEADER_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// The `webhook-signature` header: space-separated `v1,<base64>` entries.
pub const HEADER_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
