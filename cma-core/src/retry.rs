//! Retry and backoff arithmetic of the official SDK (docs/protocol.md §1.6, §3.3), as pure functions.
//!
//! Randomness and the clock are *inputs*: every function that jitters takes a `random` value in
//! `[0, 1)` (callers pass [`random_unit`]), and the `retry-after` date form takes `now`. Tests can
//! therefore check the exact arithmetic (vectors B1–B12).
//!
//! Two layers exist:
//! * the **core client** retries every request (`max_retries`, default 2) on 408/409/429/≥500,
//!   connection errors and timeouts, honouring `x-should-retry` and `retry-after(-ms)`;
//! * the **runner helpers** (poller, heartbeat, tool runner) add their own loops on top, treating
//!   every error as transient except a *fatal 4xx* ([`is_fatal_status`]).

use std::time::{Duration, SystemTime};

/// First core retry delay, seconds.
pub const INITIAL_RETRY_DELAY: f64 = 0.5;
/// Largest core retry delay without a server hint, seconds.
pub const MAX_RETRY_DELAY: f64 = 8.0;
/// Upper bound on a server-requested wait (`retry-after`), seconds (the SDK's platform cap).
pub const MAX_RETRY_AFTER: f64 = 4_294_967.0;
/// Default core `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Cap of the poll / ack failure backoff, seconds.
pub const POLL_BACKOFF_CAP: f64 = 60.0;
/// Cap of the result-send retry backoff, seconds.
pub const SEND_BACKOFF_CAP: f64 = 30.0;
/// Result-send retry window when no lease TTL is known (the server's default lease TTL).
pub const SEND_RETRY_WINDOW: Duration = Duration::from_secs(300);
/// First event-stream reconnect delay.
pub const STREAM_BACKOFF_START: Duration = Duration::from_millis(500);
/// Largest event-stream reconnect delay.
pub const STREAM_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Upper bound of the heartbeat interval, seconds.
pub const MAX_HEARTBEAT_INTERVAL_SECS: f64 = 30.0;

/// A uniform random number in `[0, 1)` for the jitter inputs below.
pub fn random_unit() -> f64 {
    rand::random::<f64>()
}

/// Seconds as a duration: NaN and values ≤ 0 are zero, anything above [`MAX_RETRY_AFTER`]
/// (including +∞) is capped there — never a panic, whatever a header said.
fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(s.min(MAX_RETRY_AFTER)).unwrap_or(Duration::ZERO)
}

/// Whether the core client retries a response with `status`, given its `x-should-retry` header.
///
/// `x-should-retry: true` always retries and `false` never does; otherwise 408, 409, 429 and any
/// status ≥ 500 are retried.
pub fn should_retry_status(status: u16, x_should_retry: Option<&str>) -> bool {
    match x_should_retry {
        Some("true") => true,
        Some("false") => false,
        _ => matches!(status, 408 | 409 | 429) || status >= 500,
    }
}

/// The runner helpers' *fatal* rule: a 4xx other than 408, 409 and 429. Retrying cannot fix it.
pub fn is_fatal_status(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 409 | 429)
}

/// The server's requested wait in seconds, from `retry-after-ms` (float milliseconds), else
/// `retry-after` (float seconds, else an HTTP-date relative to `now`). May be ≤ 0 or absent.
///
/// A present but unparsable `retry-after-ms` falls through to `retry-after`, as in the SDK.
pub fn parse_retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
) -> Option<f64> {
    if let Some(ms) = retry_after_ms.and_then(parse_float) {
        return Some(ms / 1000.0);
    }
    let value = retry_after?;
    if let Some(s) = parse_float(value) {
        return Some(s);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from(now);
    let delta = date.signed_duration_since(now);
    Some(delta.num_milliseconds() as f64 / 1000.0)
}

fn parse_float(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok()
}

/// Core exponential delay: `min(0.5·2^n, 8)·(1 − 0.25·random)` with `n` = retries already taken.
pub fn core_backoff(retries_taken: u32, random: f64) -> Duration {
    let n = retries_taken.min(1000) as i32;
    let base = (INITIAL_RETRY_DELAY * 2f64.powi(n)).min(MAX_RETRY_DELAY);
    secs(base * (1.0 - 0.25 * random.clamp(0.0, 1.0)))
}

/// Core retry delay: the server's hint when present and positive (capped at [`MAX_RETRY_AFTER`]),
/// else [`core_backoff`].
pub fn core_retry_delay(
    retries_taken: u32,
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now: SystemTime,
    random: f64,
) -> Duration {
    match parse_retry_after(retry_after_ms, retry_after, now) {
        Some(s) if s > 0.0 => secs(s),
        _ => core_backoff(retries_taken, random),
    }
}

/// The runner helpers' `backoff(attempt, cap) = min(cap, 2^attempt)`, seconds.
pub fn backoff(attempt: u32, cap: f64) -> f64 {
    2f64.powi(attempt.min(1000) as i32).min(cap)
}

/// `uniform(lo, hi)` from a `random` in `[0, 1)`.
pub fn jitter(lo: f64, hi: f64, random: f64) -> f64 {
    lo + (hi - lo) * random.clamp(0.0, 1.0)
}

/// Poll / ack failure delay: `min(60, 2^k) + U(0, 1)` with `k` consecutive failures.
pub fn poll_failure_delay(consecutive_failures: u32, random: f64) -> Duration {
    secs(backoff(consecutive_failures, POLL_BACKOFF_CAP) + jitter(0.0, 1.0, random))
}

/// Pause after an empty poll: `U(1, 3)` seconds.
pub fn empty_poll_delay(random: f64) -> Duration {
    secs(jitter(1.0, 3.0, random))
}

/// The result-send backoff base `d = min(30, 2^(attempt−1))` for a 1-based attempt, seconds.
pub fn send_backoff_base(attempt: u32) -> f64 {
    backoff(attempt.saturating_sub(1), SEND_BACKOFF_CAP)
}

/// Result-send retry delay after failed `attempt` (1-based): `U(d/2, d)` with
/// `d = min(30, 2^(attempt−1))`, never beyond `remaining` (what is left of the retry window).
pub fn send_retry_delay(attempt: u32, random: f64, remaining: Duration) -> Duration {
    let d = send_backoff_base(attempt);
    secs(jitter(d / 2.0, d, random)).min(remaining)
}

/// Event-stream reconnect backoff: 0.5 s doubling to 10 s, reset by any received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBackoff {
    next: Duration,
    start: Duration,
    cap: Duration,
}

impl Default for StreamBackoff {
    fn default() -> Self {
        Self::new(STREAM_BACKOFF_START, STREAM_BACKOFF_CAP)
    }
}

impl StreamBackoff {
    /// A backoff starting at `start` and doubling up to `cap`.
    pub fn new(start: Duration, cap: Duration) -> Self {
        Self {
            next: start,
            start,
            cap,
        }
    }

    /// The delay to wait now; the following one doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        d
    }

    /// The delay [`Self::next_delay`] would return, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// An event arrived: start again from the initial delay.
    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

/// The longest lease TTL a heartbeat answer is believed to grant (one hour). A larger
/// `ttl_seconds` is read as this: it only shortens how long the runner waits before it assumes
/// a silent lease lost and how long it keeps retrying a result send, never the other way.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);

/// A reported `ttl_seconds` as a lease TTL: `None` for 0 and negative values (the previous TTL
/// stands), else at most [`MAX_LEASE_TTL`].
pub fn lease_ttl(ttl_seconds: i64) -> Option<Duration> {
    let secs = u64::try_from(ttl_seconds).ok().filter(|s| *s > 0)?;
    Some(Duration::from_secs(secs).min(MAX_LEASE_TTL))
}

/// Heartbeat interval from a TTL: `max(1, min(ttl/2, 30))` seconds; a TTL ≤ 0 keeps `previous`.
pub fn heartbeat_interval(ttl_seconds: i64, previous: Duration) -> Duration {
    if ttl_seconds <= 0 {
        return previous;
    }
    secs((ttl_seconds as f64 / 2.0).clamp(1.0, MAX_HEARTBEAT_INTERVAL_SECS))
}

/// The heartbeat "assumed lost" rule: a transient failure that occurs *more than* `ttl` after the
/// last successful heartbeat ends the lease (no stop call).
pub fn heartbeat_assumed_lost(since_last_success: Duration, ttl: Duration) -> bool {
    since_last_success > ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(Some("1500"), Some("9"), now), Some(1.5));
        assert_eq!(parse_retry_after(Some("junk"), Some("9"), now), Some(9.0));
        assert_eq!(parse_retry_after(None, Some("2.5"), now), Some(2.5));
        assert_eq!(parse_retry_after(None, Some("nonsense"), now), None);
        assert_eq!(parse_retry_after(None, None, now), None);
        // 2023-11-14T22:13:20Z is 1_700_000_000; ten seconds later:
        assert_eq!(
            parse_retry_after(None, Some("Tue, 14 Nov 2023 22:13:30 GMT"), now),
            Some(10.0)
        );
        // `retry-after-ms: 0` is parsed, not positive ⇒ exponential, and `retry-after` is not consulted.
        assert_eq!(
            core_retry_delay(0, Some("0"), Some("5"), now, 0.0),
            Duration::from_millis(500)
        );
        assert_eq!(
            core_retry_delay(0, None, Some("1e12"), now, 0.0),
            Duration::from_secs_f64(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn stream_backoff_resets() {
        let mut b = StreamBackoff::default();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(500));
    }

    #[test]
    fn send_delay_is_capped_by_the_window() {
        assert_eq!(
            send_retry_delay(7, 0.99, Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(
            send_retry_delay(1, 0.0, Duration::from_secs(300)),
            Duration::from_millis(500)
        );
    }
}
