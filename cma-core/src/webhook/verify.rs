//! Checking a delivery (docs/protocol.md §7.1): headers, timestamp tolerance, `v1` signatures.
//!
//! Works on the raw body bytes exactly as received; never re-serializes or requires UTF-8. Only
//! after the signature matches is the body parsed into a [`WebhookEvent`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac as _};
use http::HeaderMap;
use sha2::Sha256;

use super::sign::{keyed_mac, signed_content_mac};
use super::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookEvent, WebhookSecret};

/// How far a delivery's `webhook-timestamp` may be from the clock, either way (docs/protocol.md §7.1:
/// ±5 minutes, boundary included).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a delivery was rejected. The `Display` strings of the verification variants are the SDK's
/// (`standardwebhooks`) messages, word for word.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A `webhook-id`, `webhook-timestamp` or `webhook-signature` header is absent or empty.
    #[error("Missing required headers")]
    MissingHeaders {
        /// The first missing header.
        header: &'static str,
    },
    /// `webhook-timestamp` is not a number of seconds, or is outside the representable years
    /// 1–9999.
    #[error("Invalid Signature Headers")]
    InvalidTimestamp {
        /// The header value, lossily decoded.
        value: String,
    },
    /// `webhook-timestamp` is earlier than the clock minus the tolerance.
    #[error("Message timestamp too old")]
    TimestampTooOld {
        /// The delivery's timestamp (floored unix seconds).
        timestamp: i64,
        /// The clock, in unix seconds (floored).
        now: i64,
    },
    /// `webhook-timestamp` is later than the clock plus the tolerance.
    #[error("Message timestamp too new")]
    TimestampTooNew {
        /// The delivery's timestamp (floored unix seconds).
        timestamp: i64,
        /// The clock, in unix seconds (floored).
        now: i64,
    },
    /// No `v1` entry of `webhook-signature` is the HMAC of this id, timestamp and body.
    #[error("No matching signature found")]
    NoMatchingSignature,
    /// The signature matched but the body is not a webhook event envelope (§7.2).
    #[error("Invalid webhook payload: {source}")]
    InvalidPayload {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl WebhookError {
    /// True when the delivery failed authentication (missing/invalid headers, stale timestamp, bad
    /// signature); false when it was authentic but its body could not be parsed.
    pub fn is_authentication_failure(&self) -> bool {
        !matches!(self, Self::InvalidPayload { .. })
    }
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Verifies Standard Webhooks deliveries signed with one [`WebhookSecret`].
///
/// Defaults: tolerance [`DEFAULT_TOLERANCE`], the system clock. Cheap to clone.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use cma_core::webhook::{sign_headers, Verifier, WebhookError, WebhookSecret};
///
/// let secret = WebhookSecret::parse("whsec_c2VjcmV0").unwrap();
/// let body = br#"{"type":"event","id":"wevt_1","created_at":"2026-05-01T12:00:00Z",
///   "data":{"type":"session.created","id":"sesn_1","organization_id":"org_1"}}"#;
/// let headers = sign_headers(&secret, "msg_1", 1_700_000_000, body).unwrap();
///
/// let verifier = Verifier::new(secret)
///     .with_clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_100));
/// let event = verifier.verify_event(&headers, body).unwrap();
/// assert_eq!(event.data.id, "sesn_1");
///
/// let late = verifier.with_clock(|| UNIX_EPOCH + Duration::from_secs(1_700_000_301));
/// let err = late.verify(&headers, body).unwrap_err();
/// assert!(matches!(err, WebhookError::TimestampTooOld { .. }));
/// assert_eq!(err.to_string(), "Message timestamp too old");
/// ```
#[derive(Clone)]
pub struct Verifier {
    secret: WebhookSecret,
    /// The HMAC with the key schedule done once; cloned per delivery.
    keyed: Hmac<Sha256>,
    tolerance: Duration,
    clock: Clock,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.secret)
            .field("tolerance", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with the default tolerance and the system clock.
    pub fn new(secret: WebhookSecret) -> Self {
        Self {
            keyed: keyed_mac(&secret),
            secret,
            tolerance: DEFAULT_TOLERANCE,
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Accept timestamps at most `tolerance` away from the clock (inclusive).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Read the current time from `clock` instead of the system clock (tests, replaying old
    /// deliveries).
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The configured tolerance.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Check a delivery's headers against its raw body. Header names match case-insensitively;
    /// an empty header counts as missing.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookError> {
        let get = |name: &http::HeaderName, label: &'static str| {
            headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .ok_or(WebhookError::MissingHeaders { header: label })
        };
        let id = get(&HEADER_ID, "webhook-id")?;
        let signature = get(&HEADER_SIGNATURE, "webhook-signature")?;
        let timestamp = get(&HEADER_TIMESTAMP, "webhook-timestamp")?;
        self.verify_parts(id, timestamp, signature, body)
    }

    /// Check a delivery given the three header values as raw bytes (for callers that do not
    /// hold an [`http::HeaderMap`], such as the CLI).
    pub fn verify_parts(
        &self,
        id: &[u8],
        timestamp: &[u8],
        signature: &[u8],
        body: &[u8],
    ) -> Result<(), WebhookError> {
        if id.is_empty() {
            return Err(WebhookError::MissingHeaders {
                header: "webhook-id",
            });
        }
        if signature.is_empty() {
            return Err(WebhookError::MissingHeaders {
                header: "webhook-signature",
            });
        }
        if timestamp.is_empty() {
            return Err(WebhookError::MissingHeaders {
                header: "webhook-timestamp",
            });
        }
        let ts = Timestamp::parse(timestamp).ok_or_else(|| WebhookError::InvalidTimestamp {
            value: String::from_utf8_lossy(timestamp).into_owned(),
        })?;
        self.check_tolerance(ts)?;

        let mac = signed_content_mac(&self.keyed, id, ts.secs, body);
        let matched = signature
            .split(|b| *b == b' ')
            .filter_map(|entry| {
                let mut parts = entry.split(|b| *b == b',');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(b"v1"), Some(sig), None) => Some(sig),
                    _ => None,
                }
            })
            .filter_map(|sig| super::secret::lenient_base64_decode(sig, false).ok())
            .any(|sig| mac.clone().verify_slice(&sig).is_ok());
        if matched {
            Ok(())
        } else {
            Err(WebhookError::NoMatchingSignature)
        }
    }

    /// [`verify`](Self::verify), then parse the body into the typed envelope (§7.2).
    pub fn verify_event(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<WebhookEvent, WebhookError> {
        self.verify(headers, body)?;
        super::parse_unverified(body)
    }

    fn check_tolerance(&self, ts: Timestamp) -> Result<(), WebhookError> {
        let now_us = unix_micros((self.clock)());
        let tol_us = i128::try_from(self.tolerance.as_micros()).unwrap_or(i128::MAX);
        let ts_us = i128::from(ts.secs) * 1_000_000 + i128::from(ts.micros);
        let now = i64::try_from(now_us.div_euclid(1_000_000)).unwrap_or(i64::MAX);
        if ts_us < now_us.saturating_sub(tol_us) {
            Err(WebhookError::TimestampTooOld {
                timestamp: ts.secs,
                now,
            })
        } else if ts_us > now_us.saturating_add(tol_us) {
            Err(WebhookError::TimestampTooNew {
                timestamp: ts.secs,
                now,
            })
        } else {
            Ok(())
        }
    }
}

fn unix_micros(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_micros()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_micros()).unwrap_or(i128::MAX),
    }
}

/// Unix seconds of 0001-01-01T00:00:00Z, the earliest time the SDK's `datetime` accepts.
const MIN_SECS: f64 = -62_135_596_800.0;
/// Unix seconds of 9999-12-31T23:59:59Z, the latest whole second the SDK's `datetime` accepts.
const MAX_SECS: f64 = 253_402_300_799.0;

/// A `webhook-timestamp` as the SDK reads it: a float, rounded half-even to microseconds, then
/// split into floored seconds (which are signed) and microseconds (which count for the tolerance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timestamp {
    secs: i64,
    micros: u32,
}

impl Timestamp {
    fn parse(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?.trim_ascii();
        let x: f64 = if text.contains('_') {
            // Python's float() allows single underscores between digits.
            let b = text.as_bytes();
            let ok = b.iter().enumerate().all(|(i, c)| {
                *c != b'_'
                    || (i > 0
                        && b[i - 1].is_ascii_digit()
                        && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            });
            if !ok {
                return None;
            }
            text.replace('_', "").parse().ok()?
        } else {
            text.parse().ok()?
        };
        if !x.is_finite() {
            return None;
        }
        let mut secs = x.trunc();
        let mut micros = ((x - secs) * 1e6).round_ties_even();
        if micros >= 1e6 {
            micros -= 1e6;
            secs += 1.0;
        } else if micros < 0.0 {
            micros += 1e6;
            secs -= 1.0;
        }
        if !(MIN_SECS..=MAX_SECS).contains(&secs) {
            return None;
        }
        // Both values are integral and in range, so the casts are exact.
        Some(Self {
            secs: secs as i64,
            micros: micros as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<(i64, u32)> {
        Timestamp::parse(s.as_bytes()).map(|t| (t.secs, t.micros))
    }

    #[test]
    fn timestamps_are_read_like_python_datetime_fromtimestamp() {
        // Expected values observed with CPython 3.11:
        // floor(datetime.fromtimestamp(float(s), tz=utc).timestamp()) and .microsecond.
        assert_eq!(ts("1700000000.9999999"), Some((1_700_000_001, 0)));
        assert_eq!(ts("1700000000.9999995"), Some((1_700_000_001, 0)));
        assert_eq!(ts("-0.5"), Some((-1, 500_000)));
        assert_eq!(ts("-1.0000001"), Some((-1, 0)));
        assert_eq!(ts(" 17_00 "), Some((1700, 0)));
        assert_eq!(ts("1e3"), Some((1000, 0)));
        assert_eq!(ts("253402300799.4"), Some((253_402_300_799, 399_994)));
        assert_eq!(ts("253402300800"), None);
        assert_eq!(ts("-62135596800"), Some((-62_135_596_800, 0)));
        assert_eq!(ts("-62135596801"), None);
        assert_eq!(ts("1_000.5"), Some((1000, 500_000)));
    }

    #[test]
    fn non_numbers_are_invalid() {
        for bad in [
            "", "abc", "nan", "inf", "-inf", "1__0", "_1", "1_", "0x10", "1 2",
        ] {
            assert_eq!(ts(bad), None, "{bad:?}");
        }
        assert_eq!(Timestamp::parse(&[0xff, b'1']), None);
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let v = Verifier::new(WebhookSecret::from_bytes(b"hunter2hunter2".to_vec()).unwrap());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
