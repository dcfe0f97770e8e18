//! Webhook signing and verification (docs/protocol.md §7) against the vectors' `webhooks` section
//! (signatures standardwebhooks computed, and the official SDK's verdicts at a fixed clock),
//! through the tower layer in a real axum router, and under proptest.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{Extension, Router, body::Body, routing::post};
use bytes::Bytes;
use cma_core::webhook::{
    SecretError, Verifier, VerifyLayer, WebhookError, WebhookEvent, WebhookEventType, WebhookId,
    WebhookSecret, parse_unverified, sign, sign_headers,
};
use cma_vectors::{Field as _, Value, Vectors};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use tower::ServiceExt as _;

fn section() -> &'static Value {
    Vectors::load().section("webhooks")
}

fn vector_secret() -> WebhookSecret {
    WebhookSecret::parse(section().req_str("secret")).expect("vector secret parses")
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("positive test clock"))
}

/// Everything a verification test needs: key, body, and `now` (the vectors' fixed clock, which
/// is also S1's timestamp).
struct Fixture {
    secret: WebhookSecret,
    body: Vec<u8>,
    id: String,
    now: i64,
}

impl Fixture {
    fn load() -> Self {
        let s1 = Vectors::load().case("webhooks", "signing", "S1");
        let now = section().req_i64("now");
        assert_eq!(s1.req_i64("timestamp"), now);
        Self {
            secret: vector_secret(),
            body: s1.req_str("body").as_bytes().to_vec(),
            id: s1.req_str("webhook_id").to_owned(),
            now,
        }
    }

    fn verifier(&self) -> Verifier {
        let now = self.now;
        Verifier::new(self.secret.clone()).with_clock(move || at(now))
    }

    fn sig(&self, id: &str, ts: i64) -> String {
        sign(&self.secret, id, ts, &self.body)
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(v).expect("header value"),
            )
        })
        .collect()
}

/// The headers of a verification case, names spelled as sent.
fn case_headers(case: &Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    for pair in case.req_array("headers") {
        let (name, value) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        h.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    h
}

/// Every leaf of `want` is in `got` at the same place.
fn assert_contains(got: &Value, want: &Value, at: &str) {
    match want {
        Value::Object(fields) => {
            for (k, w) in fields {
                let g = got
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}/{k}: missing in {got}"));
                assert_contains(g, w, &format!("{at}/{k}"));
            }
        }
        other => assert_eq!(got, other, "{at}"),
    }
}

/// Check `result` against the SDK's outcome for the case: the same error message, or success
/// with every field of the SDK's parsed event.
fn assert_outcome(case: &Value, result: Result<WebhookEvent, WebhookError>) {
    let id = case.id();
    match case.req_str("outcome") {
        "error" => {
            let msg = case.req_str("message");
            match result {
                Err(e) => assert_eq!(e.to_string(), msg, "{id}"),
                Ok(ev) => panic!("{id}: expected {msg:?}, verified {ev:?}"),
            }
        }
        "ok" => {
            let event = result.unwrap_or_else(|e| panic!("{id}: expected success, got {e:?}"));
            let json = serde_json::to_value(&event).expect("serialize");
            assert_contains(&json, case.req("event"), id);
        }
        other => panic!("{id}: unknown outcome {other}"),
    }
}

#[test]
fn vector_secret_decodes_to_the_verifiers_key_bytes() {
    let hex: String = vector_secret()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, section().req_str("secret_key_hex"));
}

/// S1–S4: the same signature for the same secret (with or without `whsec_`), id, time, body.
#[test]
fn signatures_match_the_vectors() {
    let cases = section().req_array("signing");
    assert!(cases.len() >= 4);
    for case in cases {
        let secret = WebhookSecret::parse(case.req_str("secret")).expect("secret parses");
        assert_eq!(
            sign(
                &secret,
                case.req_str("webhook_id"),
                case.req_i64("timestamp"),
                case.req_str("body").as_bytes()
            ),
            case.req_str("signature"),
            "{}",
            case.id()
        );
    }
}

/// Every verification case with a key (V12 has none, V13 does not verify) gives the SDK's
/// verdict at the fixed clock.
#[test]
fn verification_vectors_match_the_sdk() {
    let f = Fixture::load();
    let v = f.verifier();
    let mut checked = 0;
    for case in section().req_array("verification") {
        if case.get("parse_unverified").is_some() || case.get("key").is_some() {
            continue;
        }
        let result = v.verify_event(&case_headers(case), case.req_str("body").as_bytes());
        assert_outcome(case, result);
        checked += 1;
    }
    assert!(checked >= 11, "{checked}");
}

#[test]
fn vector_v12_a_missing_key_is_a_typed_error() {
    // The SDK raises before verifying when no key is configured; here a key is a constructor
    // argument, and an absent or empty one cannot become a `WebhookSecret`.
    let v12 = Vectors::load().case("webhooks", "verification", "V12");
    assert!(v12.req("key").is_null());
    assert_eq!(v12.req_str("outcome"), "error");
    assert_eq!(WebhookSecret::parse(""), Err(SecretError::Empty));
}

#[test]
fn vector_v13_unknown_event_types_are_kept() {
    let case = Vectors::load().case("webhooks", "verification", "V13");
    let body = case.req_str("parse_unverified");
    let result = parse_unverified(body.as_bytes());
    let event = result.as_ref().expect("parses").clone();
    let wanted_type = case.req("event").req("data").req_str("type");
    assert_eq!(
        event.data.kind,
        WebhookEventType::Other(wanted_type.to_owned())
    );
    assert_eq!(event.data.kind.as_str(), wanted_type);
    // And it serializes back to the same JSON.
    let orig: Value = serde_json::from_str(body).expect("json");
    assert_eq!(serde_json::to_value(&event).expect("ser"), orig);
    assert_outcome(case, result);
}

#[test]
fn tolerance_boundary_is_inclusive_to_the_microsecond() {
    let f = Fixture::load();
    let v = f.verifier();
    let check = |ts: &str, sig_ts: i64| {
        let sig = f.sig(&f.id, sig_ts);
        v.verify(
            &headers(&[
                ("webhook-id", &f.id),
                ("webhook-timestamp", ts),
                ("webhook-signature", &sig),
            ]),
            &f.body,
        )
    };
    let now = f.now;
    assert!(check(&(now - 300).to_string(), now - 300).is_ok());
    assert!(check(&(now + 300).to_string(), now + 300).is_ok());
    assert!(matches!(
        check(&format!("{}.000001", now + 300), now + 300),
        Err(WebhookError::TimestampTooNew { .. })
    ));
    assert!(matches!(
        check(&format!("{}.999999", now - 301), now - 301),
        Err(WebhookError::TimestampTooOld { .. })
    ));
}

#[test]
fn tolerance_and_clock_are_configurable() {
    let f = Fixture::load();
    let old = f.now - 3600;
    let h = headers(&[
        ("webhook-id", &f.id),
        ("webhook-timestamp", &old.to_string()),
        ("webhook-signature", &f.sig(&f.id, old)),
    ]);
    assert!(
        matches!(f.verifier().verify(&h, &f.body), Err(WebhookError::TimestampTooOld { timestamp, now }) if timestamp == old && now == f.now)
    );
    assert!(
        f.verifier()
            .with_tolerance(Duration::from_secs(3600))
            .verify(&h, &f.body)
            .is_ok()
    );
    assert!(
        f.verifier()
            .with_clock(move || at(old + 1))
            .verify(&h, &f.body)
            .is_ok()
    );
}

#[test]
fn wrong_secret_and_tampered_body_are_rejected() {
    let f = Fixture::load();
    let h = headers(&[
        ("webhook-id", &f.id),
        ("webhook-timestamp", &f.now.to_string()),
        ("webhook-signature", &f.sig(&f.id, f.now)),
    ]);
    assert!(f.verifier().verify(&h, &f.body).is_ok());
    let mut tampered = f.body.clone();
    tampered[10] ^= 1;
    assert!(matches!(
        f.verifier().verify(&h, &tampered),
        Err(WebhookError::NoMatchingSignature)
    ));
    let now = f.now;
    let wrong = Verifier::new(WebhookSecret::from_bytes(vec![0; 32]).expect("key"))
        .with_clock(move || at(now));
    assert!(matches!(
        wrong.verify(&h, &f.body),
        Err(WebhookError::NoMatchingSignature)
    ));
}

#[test]
fn raw_non_utf8_bodies_verify() {
    let f = Fixture::load();
    let body = [0xff, 0xfe, 0x00, b'{'];
    let sig = sign(&f.secret, &f.id, f.now, &body);
    assert!(
        f.verifier()
            .verify_parts(
                f.id.as_bytes(),
                f.now.to_string().as_bytes(),
                sig.as_bytes(),
                &body
            )
            .is_ok()
    );
    // Authentic but not an event: the error says so and is not an authentication failure.
    let h = headers(&[
        ("webhook-id", &f.id),
        ("webhook-timestamp", &f.now.to_string()),
        ("webhook-signature", &sig),
    ]);
    let err = f.verifier().verify_event(&h, &body).unwrap_err();
    assert!(!err.is_authentication_failure(), "{err:?}");
}

#[test]
fn malformed_signature_entries_are_skipped_not_fatal() {
    let f = Fixture::load();
    let good = f.sig(&f.id, f.now);
    for list in [
        format!("garbage  v1 v1,a,b v1,!!! {good}"),
        format!("v1,{} {good}", &good[3..40]),
    ] {
        let h = headers(&[
            ("webhook-id", &f.id),
            ("webhook-timestamp", &f.now.to_string()),
            ("webhook-signature", &list),
        ]);
        assert!(f.verifier().verify(&h, &f.body).is_ok(), "{list}");
    }
    let h = headers(&[
        ("webhook-id", &f.id),
        ("webhook-timestamp", &f.now.to_string()),
        ("webhook-signature", "v1, ,"),
    ]);
    assert!(matches!(
        f.verifier().verify(&h, &f.body),
        Err(WebhookError::NoMatchingSignature)
    ));
}

#[test]
fn empty_headers_count_as_missing() {
    let f = Fixture::load();
    let h = headers(&[
        ("webhook-id", ""),
        ("webhook-timestamp", &f.now.to_string()),
        ("webhook-signature", &f.sig("", f.now)),
    ]);
    let err = f.verifier().verify(&h, &f.body).unwrap_err();
    assert!(
        matches!(
            err,
            WebhookError::MissingHeaders {
                header: "webhook-id"
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "Missing required headers");
}

// ---------------------------------------------------------------- the tower layer, in axum

async fn echo(
    Extension(id): Extension<WebhookId>,
    Extension(ev): Extension<WebhookEvent>,
    body: Bytes,
) -> String {
    format!("{} {} {} {}", id.0, ev.id, ev.data.kind, body.len())
}

fn app(f: &Fixture, limit: usize) -> Router {
    Router::new()
        .route("/hook", post(echo))
        .layer(VerifyLayer::new(f.verifier()).body_limit(limit))
}

fn delivery(h: HeaderMap, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::post("/hook").body(body.into()).expect("request");
    *req.headers_mut() = h;
    req
}

async fn send(app: Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = app.oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn error_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("json error body");
    v["error"]["message"].as_str().expect("message").to_owned()
}

#[tokio::test]
async fn layer_passes_verified_deliveries_with_event_and_id() {
    let f = Fixture::load();
    let h = sign_headers(&f.secret, &f.id, f.now, &f.body).expect("headers");
    let (status, body) = send(app(&f, 1 << 20), delivery(h, f.body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        format!("{} wevt_01 session.status_idled {}", f.id, f.body.len())
    );
}

#[tokio::test]
async fn layer_answers_401_for_authentication_failures() {
    let f = Fixture::load();
    let good = sign_headers(&f.secret, &f.id, f.now, &f.body).expect("headers");
    let mut tampered = f.body.clone();
    tampered[20] ^= 1;
    let wrong_key = WebhookSecret::from_bytes(b"another key".to_vec()).expect("key");
    let stale = sign_headers(&f.secret, &f.id, f.now - 301, &f.body).expect("headers");
    let future = sign_headers(&f.secret, &f.id, f.now + 301, &f.body).expect("headers");
    let mut missing = good.clone();
    missing.remove("webhook-timestamp");
    let cases: Vec<(HeaderMap, Vec<u8>, &str)> = vec![
        (good.clone(), tampered, "No matching signature found"),
        (
            sign_headers(&wrong_key, &f.id, f.now, &f.body).expect("h"),
            f.body.clone(),
            "No matching signature found",
        ),
        (stale, f.body.clone(), "Message timestamp too old"),
        (future, f.body.clone(), "Message timestamp too new"),
        (missing, f.body.clone(), "Missing required headers"),
        (HeaderMap::new(), f.body.clone(), "Missing required headers"),
    ];
    for (h, body, msg) in cases {
        let (status, resp) = send(app(&f, 1 << 20), delivery(h, body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
        assert_eq!(error_message(&resp), msg);
    }
}

#[tokio::test]
async fn layer_answers_400_for_an_authentic_malformed_body() {
    let f = Fixture::load();
    let body = b"{\"type\":\"event\"}".to_vec();
    let h = sign_headers(&f.secret, &f.id, f.now, &body).expect("headers");
    let (status, resp) = send(app(&f, 1 << 20), delivery(h, body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        error_message(&resp).starts_with("Invalid webhook payload"),
        "{resp}"
    );
}

#[tokio::test]
async fn layer_answers_413_over_the_cap_declared_or_streamed() {
    let f = Fixture::load();
    let limit = f.body.len() - 1;
    let h = sign_headers(&f.secret, &f.id, f.now, &f.body).expect("headers");

    // Declared by Content-Length.
    let mut declared = h.clone();
    declared.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(f.body.len()),
    );
    let (status, resp) = send(app(&f, limit), delivery(declared, f.body.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");

    // Streamed in chunks with no length known in advance.
    let chunks: Vec<Result<Bytes, std::io::Error>> = f
        .body
        .chunks(16)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed = Body::from_stream(futures::stream::iter(chunks));
    let (status, resp) = send(app(&f, limit), delivery(h.clone(), streamed)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&resp).expect("json")["error"]["type"],
        "payload_too_large"
    );

    // Exactly at the cap is fine.
    let (status, resp) = send(app(&f, f.body.len()), delivery(h, f.body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

#[tokio::test]
async fn layer_answers_400_when_the_body_cannot_be_read() {
    let f = Fixture::load();
    let h = sign_headers(&f.secret, &f.id, f.now, &f.body).expect("headers");
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{")),
        Err(std::io::Error::other("connection reset")),
    ];
    let (status, resp) = send(
        app(&f, 1 << 20),
        delivery(h, Body::from_stream(futures::stream::iter(chunks))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
}

/// A real server on 127.0.0.1, spoken to in raw HTTP/1.1 with header names in mixed case (V11).
#[tokio::test]
async fn layer_in_a_served_axum_router_accepts_mixed_case_headers() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let f = Fixture::load();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(axum::serve(listener, app(&f, 1 << 20)).into_future());

    let exchange = |sig: String| {
        let f_id = f.id.clone();
        let body = f.body.clone();
        let now = f.now;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let head = format!(
                "POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nWebhook-Id: {f_id}\r\nWEBHOOK-TIMESTAMP: {now}\r\nWebHook-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.expect("write");
            s.write_all(&body).await.expect("write");
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
                .await
                .expect("response in time")
                .expect("read");
            out
        }
    };
    let ok = exchange(f.sig(&f.id, f.now)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.ends_with(&format!(
            "{} wevt_01 session.status_idled {}",
            f.id,
            f.body.len()
        )),
        "{ok}"
    );
    let bad = exchange(f.sig("someone_else", f.now)).await;
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");
    assert!(bad.contains("No matching signature found"), "{bad}");
    server.abort();
}

// ---------------------------------------------------------------- properties

fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "v1,[A-Za-z0-9+/=]{0,50}( v1,[A-Za-z0-9+/=]{0,50}){0,3}",
        "-?[0-9]{0,12}(\\.[0-9]{0,8})?",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random headers and bodies never panic and are never accepted (a random string is not the
    /// HMAC of the delivery under the key).
    #[test]
    fn random_deliveries_never_panic_and_never_verify(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        id in header_text(),
        ts in header_text(),
        sig in header_text(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        now in 0i64..4_000_000_000,
    ) {
        let v = Verifier::new(WebhookSecret::from_bytes(key).expect("non-empty"))
            .with_clock(move || at(now));
        let mut h = HeaderMap::new();
        for (name, value) in [("webhook-id", &id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)] {
            if let Ok(value) = HeaderValue::from_str(value) {
                h.insert(name, value);
            }
        }
        prop_assert!(v.verify(&h, &body).is_err());
        prop_assert!(v.verify_parts(id.as_bytes(), ts.as_bytes(), sig.as_bytes(), &body).is_err());
        let _ = WebhookSecret::parse(&sig);
    }

    /// A signed delivery verifies with its key, and fails with any other key or any other body.
    #[test]
    fn only_the_signing_key_and_exact_body_verify(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        other_key in proptest::collection::vec(any::<u8>(), 1..64),
        id in "[!-~]{1,30}",
        ts in 0i64..4_000_000_000,
        skew in -300i64..=300,
        body in proptest::collection::vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
        extra in any::<u8>(),
    ) {
        let secret = WebhookSecret::from_bytes(key.clone()).expect("key");
        let h = sign_headers(&secret, &id, ts, &body).expect("printable id");
        let clock = move || at(ts + skew);
        prop_assert!(Verifier::new(secret.clone()).with_clock(clock).verify(&h, &body).is_ok());

        if other_key != key {
            let other = WebhookSecret::from_bytes(other_key).expect("key");
            prop_assert!(matches!(
                Verifier::new(other).with_clock(clock).verify(&h, &body),
                Err(WebhookError::NoMatchingSignature)
            ));
        }
        let mut tampered = body.clone();
        if tampered.is_empty() {
            tampered.push(extra);
        } else {
            let i = flip.index(tampered.len());
            tampered[i] ^= extra | 1;
        }
        prop_assert!(matches!(
            Verifier::new(secret).with_clock(clock).verify(&h, &tampered),
            Err(WebhookError::NoMatchingSignature)
        ));
    }
}
