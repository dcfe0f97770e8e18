//! Producing Standard Webhooks signatures (docs/protocol.md §7.1): the `v1,<base64>` value and the
//! three delivery headers. Used by the emulator to send deliveries and by tests; checking lives in
//! `verify.rs`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use super::WebhookSecret;
use super::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// HMAC-SHA256 keyed with `secret`, before any content: clone it to sign many messages without
/// redoing the key schedule.
pub(super) fn keyed_mac(secret: &WebhookSecret) -> Hmac<Sha256> {
    // HMAC takes keys of any length (long keys are hashed), so this cannot fail whatever the key.
    Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length")
}

/// `keyed` (from [`keyed_mac`]) fed with `"{id}.{timestamp}.{body}"`, ready to finalize or to
/// verify against.
pub(super) fn signed_content_mac(
    keyed: &Hmac<Sha256>,
    msg_id: &[u8],
    timestamp: i64,
    body: &[u8],
) -> Hmac<Sha256> {
    let mut mac = keyed.clone();
    mac.update(msg_id);
    mac.update(b".");
    // Decimal i64 fits in 20 bytes; formatting on the stack keeps verification allocation-free.
    let mut digits = [0u8; 20];
    let mut cursor = std::io::Cursor::new(&mut digits[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{timestamp}"));
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    mac.update(&digits[..len]);
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value for one delivery: `v1,` followed by the standard padded base64
/// HMAC-SHA256 of `"{msg_id}.{timestamp}.{body}"` under `secret`.
///
/// ```
/// use cma_core::webhook::{sign, WebhookSecret};
/// let secret = WebhookSecret::from_bytes(b"k".to_vec()).unwrap();
/// let sig = sign(&secret, "msg_1", 1_700_000_000, b"{}");
/// assert!(sig.starts_with("v1,") && sig.len() == 3 + 44);
/// ```
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = signed_content_mac(&keyed_mac(secret), msg_id.as_bytes(), timestamp, body)
        .finalize()
        .into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Why delivery headers could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The message id contains bytes that cannot appear in an HTTP header value.
    #[error("webhook id {id:?} is not a valid HTTP header value")]
    InvalidMessageId {
        /// The rejected id.
        id: String,
    },
}

/// The three Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`)
/// for one delivery of `body`.
///
/// ```
/// use cma_core::webhook::{sign_headers, WebhookSecret};
/// let secret = WebhookSecret::parse("whsec_c2VjcmV0").unwrap();
/// let headers = sign_headers(&secret, "msg_1", 1_700_000_000, b"{}").unwrap();
/// assert_eq!(headers["webhook-timestamp"], "1700000000");
/// ```
pub fn sign_headers(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<HeaderMap, SignError> {
    let id = HeaderValue::from_str(msg_id).map_err(|_| SignError::InvalidMessageId {
        id: msg_id.to_owned(),
    })?;
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(HEADER_ID, id);
    headers.insert(HEADER_TIMESTAMP, HeaderValue::from(timestamp));
    // "v1," and standard base64 are visible ASCII, always a valid header value.
    let sig = HeaderValue::from_str(&sign(secret, msg_id, timestamp, body))
        .expect("a v1 signature is visible ASCII");
    headers.insert(HEADER_SIGNATURE, sig);
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_id_is_an_error_not_a_panic() {
        let secret = WebhookSecret::from_bytes(vec![1]).unwrap();
        assert!(matches!(
            sign_headers(&secret, "bad\nid", 0, b""),
            Err(SignError::InvalidMessageId { .. })
        ));
    }

    #[test]
    fn headers_carry_the_signature_of_sign() {
        let secret = WebhookSecret::from_bytes(vec![7; 32]).unwrap();
        let h = sign_headers(&secret, "msg_9", -5, b"body").unwrap();
        assert_eq!(h[HEADER_ID], "msg_9");
        assert_eq!(h[HEADER_TIMESTAMP], "-5");
        assert_eq!(
            h[HEADER_SIGNATURE].to_str().unwrap(),
            sign(&secret, "msg_9", -5, b"body")
        );
        assert_ne!(
            sign(&secret, "msg_9", -5, b"body"),
            sign(&secret, "msg_9", -5, b"bodY")
        );
    }
}
