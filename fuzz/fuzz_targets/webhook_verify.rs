//! Standard Webhooks verification and envelope parsing (`cma_core::webhook`): arbitrary
//! secrets, header values, bodies and clocks.
//!
//! Checked: no panic anywhere; `verify` on a header map agrees with `verify_parts` on the same
//! values; a delivery signed with `sign_headers` verifies at its own timestamp and fails once the
//! body changes; a parsed envelope survives a serialize/parse round trip unchanged.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use cma_core::webhook::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Verifier, WebhookError, WebhookEvent,
    WebhookSecret, parse_unverified, sign, sign_headers,
};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Secret {
    /// `whsec_…` or bare base64, parsed leniently.
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Timestamp {
    Raw(Vec<u8>),
    Secs(i64),
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    secret: Secret,
    id: Vec<u8>,
    timestamp: Timestamp,
    signature: Vec<u8>,
    /// Extra `v1,<sig>` entries made with the real key (for the matching path).
    sign_real: bool,
    body: Vec<u8>,
    now: i64,
    tolerance_secs: u32,
}

fn same_outcome(a: &Result<(), WebhookError>, b: &Result<(), WebhookError>) -> bool {
    match (a, b) {
        (Ok(()), Ok(())) => true,
        (Err(x), Err(y)) => x.to_string() == y.to_string(),
        _ => false,
    }
}

fn clock_at(secs: i64) -> std::time::SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn check_envelope(body: &[u8]) {
    let Ok(ev) = parse_unverified(body) else {
        return;
    };
    let _ = ev.created_at_time();
    let _ = (ev.data.session_id(), ev.data.environment_id());
    let again = serde_json::to_vec(&ev).expect("an envelope serializes");
    let back: WebhookEvent = parse_unverified(&again).expect("a serialized envelope parses");
    assert_eq!(back, ev, "envelope changed on a round trip");
}

fuzz_target!(|input: Input| {
    let secret = match &input.secret {
        Secret::Text(s) => WebhookSecret::parse(s),
        Secret::Bytes(b) => WebhookSecret::from_bytes(b.clone()),
    };
    check_envelope(&input.body);
    let Ok(secret) = secret else { return };
    // The canonical form parses back to the same key.
    assert_eq!(
        WebhookSecret::parse(&secret.to_whsec()).as_ref(),
        Ok(&secret),
        "to_whsec does not round-trip"
    );
    let now = input.now.clamp(-62_135_596_800, 253_402_300_799);
    let verifier = Verifier::new(secret.clone())
        .with_tolerance(Duration::from_secs(u64::from(input.tolerance_secs)))
        .with_clock(move || clock_at(now));

    let ts = match &input.timestamp {
        Timestamp::Raw(b) => b.clone(),
        Timestamp::Secs(s) => s.to_string().into_bytes(),
        Timestamp::Text(s) => s.clone().into_bytes(),
    };
    let mut signature = input.signature.clone();
    if input.sign_real
        && let (Ok(id), Ok(ts_text)) = (std::str::from_utf8(&input.id), std::str::from_utf8(&ts))
        && let Ok(secs) = ts_text.trim().parse::<i64>()
    {
        signature.push(b' ');
        signature.extend_from_slice(sign(&secret, id, secs, &input.body).as_bytes());
    }
    let by_parts = verifier.verify_parts(&input.id, &ts, &signature, &input.body);

    // The same values as headers (when they are valid header values) give the same answer.
    if let (Ok(id), Ok(t), Ok(s)) = (
        HeaderValue::from_bytes(&input.id),
        HeaderValue::from_bytes(&ts),
        HeaderValue::from_bytes(&signature),
    ) {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_ID, id);
        headers.insert(HEADER_TIMESTAMP, t);
        headers.insert(HEADER_SIGNATURE, s);
        let by_map = verifier.verify(&headers, &input.body);
        assert!(
            same_outcome(&by_parts, &by_map),
            "verify and verify_parts disagree: {by_parts:?} vs {by_map:?}"
        );
        if by_map.is_ok() {
            // Authentic: verify_event parses or reports a payload error, never an auth failure.
            if let Err(e) = verifier.verify_event(&headers, &input.body) {
                assert!(!e.is_authentication_failure(), "{e}");
            }
        }
    }

    // Sign-then-verify at the signing time succeeds; a changed body does not.
    if let Ok(id) = std::str::from_utf8(&input.id)
        && let Ok(headers) = sign_headers(&secret, id, now, &input.body)
    {
        let at_signing = Verifier::new(secret.clone()).with_clock(move || clock_at(now));
        let r = at_signing.verify(&headers, &input.body);
        if id.is_empty() {
            assert!(matches!(r, Err(WebhookError::MissingHeaders { .. })));
        } else {
            assert!(r.is_ok(), "a fresh signature does not verify: {r:?}");
            let mut changed = input.body.clone();
            match changed.first_mut() {
                Some(b) => *b ^= 1,
                None => changed.push(b'x'),
            }
            assert!(matches!(
                at_signing.verify(&headers, &changed),
                Err(WebhookError::NoMatchingSignature)
            ));
        }
    }
});
