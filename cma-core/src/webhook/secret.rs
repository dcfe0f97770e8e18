//! The webhook signing secret: parsing the `whsec_…` form the console shows, and keeping the key
//! bytes out of logs.
//!
//! This module owns key decoding only; signing lives in `sign.rs`, checking in `verify.rs`.

use std::fmt;
use std::str::FromStr;

/// The prefix the Standard Webhooks spec (and the CMA console) puts in front of a base64 secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a webhook secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The secret (or the key bytes it decodes to) is empty; an empty HMAC key authenticates nothing.
    #[error("webhook secret is empty")]
    Empty,
    /// The base64 part cannot be decoded even with the SDK's lenient rules.
    #[error("webhook secret is not valid base64: {reason}")]
    InvalidBase64 {
        /// What the decoder found wrong.
        reason: &'static str,
    },
}

/// The HMAC-SHA256 key that signs and verifies webhook deliveries (docs/protocol.md §7.1).
///
/// The [`Debug`] form never shows the key.
///
/// ```
/// use cma_core::webhook::WebhookSecret;
/// let s = WebhookSecret::parse("whsec_AAECAwQF").unwrap();
/// assert_eq!(s.as_bytes(), &[0, 1, 2, 3, 4, 5]);
/// assert!(!format!("{s:?}").contains("AAECAwQF"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl WebhookSecret {
    /// Parse a secret as the SDK does: an optional `whsec_` prefix, then standard base64 decoded
    /// leniently (characters outside the base64 alphabet are skipped, missing `=` padding is
    /// supplied, decoding stops at the first complete padding).
    ///
    /// Fails on an empty input, on a base64 part with one character too many (`4n+1` data
    /// characters, which no padding can fix), and on a secret that decodes to no bytes.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        Self::from_bytes(lenient_base64_decode(b64.as_bytes(), true)?)
    }

    /// Use raw key bytes as they are (the SDK's `bytes` key form). Fails when `key` is empty.
    pub fn from_bytes(key: Vec<u8>) -> Result<Self, SecretError> {
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self { key })
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.key
    }

    /// The secret in its canonical `whsec_<standard padded base64>` form.
    pub fn to_whsec(&self) -> String {
        use base64::Engine as _;
        format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.key)
        )
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Decode standard base64 the way Python's non-strict `base64.b64decode` does: skip bytes outside
/// the alphabet, stop once a quantum is completed by padding, ignore stray padding and trailing
/// bits. With `add_padding`, `"=="` is appended first, as the SDK does for secrets; without it
/// (signatures), an unpadded final quantum is an error.
pub(super) fn lenient_base64_decode(
    input: &[u8],
    add_padding: bool,
) -> Result<Vec<u8>, SecretError> {
    fn sextet(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4 + 1);
    let mut quad_pos = 0u8;
    let mut left = 0u8;
    let mut pads = 0u8;
    let padding: &[u8] = if add_padding { b"==" } else { b"" };
    for &c in input.iter().chain(padding) {
        if c == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Ok(out);
                }
            }
            continue;
        }
        let Some(v) = sextet(c) else { continue };
        pads = 0;
        match quad_pos {
            0 => {
                left = v;
                quad_pos = 1;
            }
            1 => {
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
                quad_pos = 2;
            }
            2 => {
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
                quad_pos = 3;
            }
            _ => {
                out.push((left << 6) | v);
                quad_pos = 0;
            }
        }
    }
    match quad_pos {
        0 => Ok(out),
        1 => Err(SecretError::InvalidBase64 {
            reason: "the number of data characters is one more than a multiple of 4",
        }),
        _ => Err(SecretError::InvalidBase64 {
            reason: "incorrect padding",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> String {
        WebhookSecret::parse(s)
            .map(|k| k.as_bytes().iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn lenient_decoding_matches_python_b64decode_with_added_padding() {
        // Expected outputs observed with CPython 3.11 `base64.b64decode(s + "==")`.
        assert_eq!(hex("AAECAw"), "00010203");
        assert_eq!(hex("AAECAw=="), "00010203");
        assert_eq!(hex("AA!EC-Aw"), "00010203");
        assert_eq!(hex("AAE"), "0001");
        assert_eq!(hex("AA=A=AA"), "0000");
        assert_eq!(hex("AA==AAAA"), "00");
        assert_eq!(hex("AAA=AAAA"), "0000");
        assert!(hex("A").starts_with("ERR"));
        assert!(hex("whsec_A").starts_with("ERR"));
    }

    #[test]
    fn signatures_are_decoded_without_added_padding() {
        // Python's `b64decode` on a signature gets no extra `=`: an unpadded quantum fails.
        assert_eq!(
            lenient_base64_decode(b"AAEC!Aw==", false),
            Ok(vec![0, 1, 2, 3])
        );
        assert!(lenient_base64_decode(b"AAECAw", false).is_err());
        assert!(lenient_base64_decode(b"AAECA", false).is_err());
    }

    #[test]
    fn prefix_is_optional() {
        assert_eq!(
            WebhookSecret::parse("whsec_AAECAw").unwrap(),
            WebhookSecret::parse("AAECAw").unwrap()
        );
    }

    #[test]
    fn empty_secrets_are_rejected() {
        assert_eq!(WebhookSecret::parse(""), Err(SecretError::Empty));
        assert_eq!(WebhookSecret::parse("whsec_"), Err(SecretError::Empty));
        assert_eq!(WebhookSecret::parse("!!!"), Err(SecretError::Empty));
        assert_eq!(
            WebhookSecret::from_bytes(Vec::new()),
            Err(SecretError::Empty)
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let s = WebhookSecret::from_bytes(b"supersecretkey".to_vec()).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("supersecretkey"), "{dbg}");
        assert!(!dbg.contains(&s.to_whsec()), "{dbg}");
        assert!(!dbg.contains("115"), "{dbg}"); // no byte list either
    }

    #[test]
    fn whsec_form_round_trips() {
        let s = WebhookSecret::from_bytes((0u8..=40).collect()).unwrap();
        assert_eq!(WebhookSecret::parse(&s.to_whsec()).unwrap(), s);
    }
}
