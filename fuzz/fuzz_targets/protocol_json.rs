//! Decoding of protocol objects (`cma_core::protocol`) from arbitrary bytes and from structured
//! JSON: work items, heartbeats, lease state, queue stats, pages, environments, sessions, session
//! events, content blocks, error bodies, the work secret; plus error responses as the client
//! reads them and a session event stream.
//!
//! Round trips the module promises ("nothing is lost on a round trip"): a decoded object
//! re-encodes to JSON that decodes to the same object, and every top-level field of the input
//! that carried a value is still there. `encode_work_secret` / `decode_sessions_token` round-trip.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use cma_core::client::{ApiError, EventStream, StatusError};
use cma_core::protocol::{
    ContentBlock, Environment, EnvironmentConfig, ErrorBody, Page, Session, SessionEvent, Work,
    WorkHeartbeat, WorkLeaseState, WorkQueueStats, decode_sessions_token, encode_work_secret,
};
use cma_core::sse::SseLimits;
use cma_fuzz::{arb_object, runtime};
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug)]
enum Input {
    /// Raw bytes for one decoder.
    Bytes(u8, Vec<u8>),
    /// A structured object for one decoder.
    Object(u8, Value),
    /// A work secret, raw or built from a token.
    Secret(String, bool),
    /// An error response body.
    ErrorResponse(u16, String),
    /// A session event stream, in chunks.
    Stream(Vec<Vec<u8>>),
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=4u8)? {
            0 => Input::Bytes(u.arbitrary()?, u.arbitrary()?),
            1 => Input::Object(u.arbitrary()?, arb_object(u)?),
            2 => Input::Secret(u.arbitrary()?, u.arbitrary()?),
            3 => Input::ErrorResponse(u.arbitrary()?, u.arbitrary()?),
            _ => Input::Stream(u.arbitrary()?),
        })
    }
}

fn round_trip<T>(name: &str, original: &Value)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(decoded) = serde_json::from_value::<T>(original.clone()) else {
        return;
    };
    let encoded = serde_json::to_value(&decoded).expect("a decoded object encodes");
    let again: T = serde_json::from_value(encoded.clone())
        .unwrap_or_else(|e| panic!("{name}: re-encoded form does not decode: {e}\n{encoded}"));
    assert_eq!(again, decoded, "{name}: changed on a round trip");
    // Nothing is lost: every top-level field that had a value is still there (`null`, `{}` and
    // `[]` may be left out: they decode to the same defaults).
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if let (Value::Object(orig), Value::Object(enc)) = (original, &encoded) {
        for (k, v) in orig {
            if !empty(v) {
                assert!(
                    enc.contains_key(k),
                    "{name}: field {k:?} lost on a round trip\nin:  {original}\nout: {encoded}"
                );
            }
        }
    }
}

fn decode_all(which: u8, v: &Value) {
    match which % 10 {
        0 => round_trip::<Work>("Work", v),
        1 => round_trip::<WorkHeartbeat>("WorkHeartbeat", v),
        2 => round_trip::<WorkLeaseState>("WorkLeaseState", v),
        3 => round_trip::<WorkQueueStats>("WorkQueueStats", v),
        4 => round_trip::<Page<Session>>("Page<Session>", v),
        5 => round_trip::<Environment>("Environment", v),
        6 => round_trip::<Session>("Session", v),
        7 => {
            round_trip::<SessionEvent>("SessionEvent", v);
            if let Ok(e) = SessionEvent::from_value(v.clone()) {
                let _ = (e.kind(), e.id());
            }
        }
        8 => {
            round_trip::<ErrorBody>("ErrorBody", v);
            if let Ok(b) = serde_json::from_value::<ErrorBody>(v.clone()) {
                let _ = (b.error.error_code(), b.error.current_state());
            }
        }
        _ => {
            round_trip::<ContentBlock>("ContentBlock", v);
            round_trip::<EnvironmentConfig>("EnvironmentConfig", v);
        }
    }
    if let Ok(w) = serde_json::from_value::<Work>(v.clone()) {
        let _ = (
            w.sessions_token(),
            w.data.session_id(),
            w.state.is_stopping_or_stopped(),
        );
    }
}

fn check_status_error(status: u16, body: &str) {
    let headers = http::HeaderMap::new();
    let e = StatusError::from_response("fuzz".into(), status, body, &headers);
    let api: ApiError = e.into();
    let _ = (api.kind(), api.is_retryable(), api.to_string());
}

fn check_stream(chunks: Vec<Vec<u8>>) {
    let body = futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, ApiError>(Bytes::from(c))),
    );
    let limits = SseLimits {
        max_line_bytes: 64 * 1024,
        max_frame_bytes: 64 * 1024,
    };
    let stream = EventStream::from_byte_stream(body, "fuzz", 200, limits);
    runtime().block_on(async {
        let items: Vec<_> = stream.take(10_000).collect().await;
        for item in items {
            if let Ok(ev) = item {
                let v = ev.to_value();
                let back = SessionEvent::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("streamed event does not re-decode: {e}\n{v}"));
                assert_eq!(back, ev, "streamed event changed on a round trip");
            }
        }
    });
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes(which, bytes) => {
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                decode_all(which, &v);
            }
        }
        Input::Object(which, v) => decode_all(which, &v),
        Input::Secret(s, as_token) => {
            if as_token {
                let secret = encode_work_secret(&s);
                let back = decode_sessions_token(&secret);
                if s.is_empty() {
                    assert_eq!(back, None);
                } else {
                    assert_eq!(back.as_deref(), Some(s.as_str()), "work secret round trip");
                }
            } else {
                let _ = decode_sessions_token(&s);
            }
        }
        Input::ErrorResponse(status, body) => check_status_error(status, &body),
        Input::Stream(chunks) => check_stream(chunks),
    }
});
