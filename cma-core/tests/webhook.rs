//! Webhook signing and verification (docs/protocol.md §7) against the SDK's vectors
//! (sdk-test-vectors.md §7), through the tower layer in a real axum router, and under proptest.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{Extension, Router, body::Body, routing::post};
use bytes::Bytes;
use cma_core::webhook::{
    SecretError, Verifier, VerifyLayer, WebhookError, WebhookEvent, WebhookEventType, WebhookId,
    WebhookSecret, parse_unverified, sign, sign_headers,
};
use cma_vectors::{Row, Section, Vectors};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use tower::ServiceExt as _;

const EXPECTED_SIG: &str = "Expected `webhook-signature`";

fn section() -> Section {
    Vectors::load().section("## 7.")
}

/// The secret, `whsec_` form, from the section's first sentence.
fn vector_secret_text(s: &Section) -> String {
    cma_vectors::code_spans(s.text())
        .into_iter()
        .find(|c| c.starts_with("whsec_"))
        .expect("section 7 names a whsec_ secret")
}

fn vector_secret(s: &Section) -> WebhookSecret {
    WebhookSecret::parse(&vector_secret_text(s)).expect("vector secret parses")
}

/// The body from the section's code block (exact bytes, no trailing newline).
fn vector_body(s: &Section) -> Vec<u8> {
    s.code_blocks()
        .into_iter()
        .next()
        .expect("section 7 has the body block")
        .into_bytes()
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("positive test clock"))
}

/// Everything a verification vector needs: key, body, and `now` (S1's timestamp, a fixed clock).
struct Fixture {
    secret: WebhookSecret,
    body: Vec<u8>,
    id: String,
    now: i64,
}

impl Fixture {
    fn load(s: &Section) -> Self {
        let s1 = s.row("S1");
        Self {
            secret: vector_secret(s),
            body: vector_body(s),
            id: s1.code("webhook-id").expect("S1 id"),
            now: s1
                .code("webhook-timestamp")
                .expect("S1 ts")
                .parse()
                .expect("S1 ts is an integer"),
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

/// Check `result` against the row's `Expected` cell: `OK…`/`accepted`/`parses` means success,
/// `fail \`msg\`` means the error's Display is exactly `msg`. For successes, every
/// `path:"value"` span of the cell must hold in the parsed event.
fn assert_expected(row: &Row, result: Result<WebhookEvent, WebhookError>) {
    let expected = row.get("Expected");
    let id = row.id();
    if expected.starts_with("fail") {
        let msg = row.code("Expected").expect("failure message span");
        match result {
            Err(e) => assert_eq!(e.to_string(), msg, "{id}"),
            Ok(ev) => panic!("{id}: expected {msg:?}, verified {ev:?}"),
        }
        return;
    }
    assert!(
        ["OK", "accepted", "parses"]
            .iter()
            .any(|p| expected.starts_with(p)),
        "{id}: unexpected Expected cell {expected:?}"
    );
    let event = result.unwrap_or_else(|e| panic!("{id}: expected success, got {e:?}"));
    let json = serde_json::to_value(&event).expect("serialize");
    for span in row.codes("Expected") {
        if let Some((path, value)) = span.split_once(':') {
            let pointer = format!("/{}", path.replace('.', "/"));
            let want: serde_json::Value = serde_json::from_str(value).expect("span value is JSON");
            assert_eq!(json.pointer(&pointer), Some(&want), "{id}: {span}");
        }
    }
}

#[test]
fn vector_secret_decodes_to_bytes_0_to_31() {
    let s = section();
    assert_eq!(vector_secret(&s).as_bytes(), (0u8..32).collect::<Vec<_>>());
}

#[test]
fn signatures_match_vectors_s1_to_s3() {
    let s = section();
    let secret = vector_secret(&s);
    let body = vector_body(&s);
    for id in ["S1", "S2", "S3"] {
        let row = s.row(id);
        let msg_id = row.code("webhook-id").expect("id");
        let ts: i64 = row
            .code("webhook-timestamp")
            .expect("ts")
            .parse()
            .expect("int ts");
        let body: &[u8] = if row.get("body").contains("empty") {
            b""
        } else {
            &body
        };
        let expected = row.code(EXPECTED_SIG).expect("sig");
        assert_eq!(sign(&secret, &msg_id, ts, body), expected, "{id}");
    }
}

#[test]
fn vector_s4_secret_without_prefix_signs_like_s1() {
    let s = section();
    let full = vector_secret_text(&s);
    let bare = full.strip_prefix("whsec_").expect("prefix");
    // S4 shows the bare form abbreviated; check it is the same secret before using the full text.
    let shown = s
        .row("S4")
        .codes("webhook-id")
        .into_iter()
        .find(|c| c.contains('…'))
        .expect("S4 shows the bare secret");
    let (head, tail) = shown.split_once('…').expect("abbreviated");
    assert!(bare.starts_with(head) && bare.ends_with(tail), "{shown}");
    let bare_secret = WebhookSecret::parse(bare).expect("bare secret parses");
    let f = Fixture::load(&s);
    assert_eq!(
        sign(&bare_secret, &f.id, f.now, &f.body),
        s.row("S1").code(EXPECTED_SIG).expect("S1 sig")
    );
}

#[test]
fn verification_vectors_v1_to_v11() {
    let s = section();
    let f = Fixture::load(&s);
    let v = f.verifier();
    let now = f.now;
    let good = f.sig(&f.id, now);
    let run = |h: HeaderMap| v.verify_event(&h, &f.body);
    let now_s = now.to_string();
    for n in 1..=11 {
        let row = s.row(&format!("V{n}"));
        let result = match n {
            1 => {
                let list = format!("v1,AAAA {good}");
                run(headers(&[
                    ("webhook-id", &f.id),
                    ("webhook-timestamp", &now_s),
                    ("webhook-signature", &list),
                ]))
            }
            2..=4 => {
                let offset: i64 = match n {
                    2 => -301,
                    3 => 301,
                    _ => -299,
                };
                // The offset is the row's: `now-301`, `now+301`, `now-299`.
                let shown = row.code("Headers").expect("ts span");
                assert_eq!(shown, format!("now{offset:+}"), "V{n}");
                let ts = (now + offset).to_string();
                let sig = f.sig(&f.id, now + offset);
                run(headers(&[
                    ("webhook-id", &f.id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &sig),
                ]))
            }
            5 => run(headers(&[
                ("webhook-id", &f.id),
                ("webhook-timestamp", &now_s),
            ])),
            6 => {
                let ts = row.code("Headers").expect("bad ts span");
                run(headers(&[
                    ("webhook-id", &f.id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &good),
                ]))
            }
            7 => {
                let v2 = good.replacen("v1,", "v2,", 1);
                run(headers(&[
                    ("webhook-id", &f.id),
                    ("webhook-timestamp", &now_s),
                    ("webhook-signature", &v2),
                ]))
            }
            8 => {
                // Alter one of the last base64 characters (one whose six bits are all data;
                // the one just before `=` carries ignored trailing bits).
                let mut altered = good.clone();
                let at = altered.len() - 3;
                let c = if &altered[at..at + 1] == "A" {
                    "B"
                } else {
                    "A"
                };
                altered.replace_range(at..at + 1, c);
                run(headers(&[
                    ("webhook-id", &f.id),
                    ("webhook-timestamp", &now_s),
                    ("webhook-signature", &altered),
                ]))
            }
            9 => {
                let other = row.code("Headers").expect("other id span");
                let other = other
                    .strip_prefix("webhook-id: ")
                    .unwrap_or(&other)
                    .to_owned();
                assert_ne!(other, f.id);
                run(headers(&[
                    ("webhook-id", &other),
                    ("webhook-timestamp", &now_s),
                    ("webhook-signature", &good),
                ]))
            }
            10 => {
                let ts = format!("{now}.9");
                run(headers(&[
                    ("webhook-id", &f.id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &good),
                ]))
            }
            11 => {
                // The row's spellings, then the third header in yet another case.
                let names = row.codes("Headers");
                assert!(names.len() >= 2, "{names:?}");
                let mut h = HeaderMap::new();
                for name in &names {
                    let value = if name.eq_ignore_ascii_case("webhook-id") {
                        f.id.clone()
                    } else {
                        good.clone()
                    };
                    h.insert(
                        HeaderName::from_bytes(name.as_bytes()).expect("name"),
                        HeaderValue::from_str(&value).expect("value"),
                    );
                }
                h.insert(
                    HeaderName::from_static("webhook-timestamp"),
                    HeaderValue::from_str(&now_s).expect("ts"),
                );
                run(h)
            }
            _ => unreachable!(),
        };
        assert_expected(&row, result);
    }
}

#[test]
fn vector_v12_a_missing_key_is_a_typed_error() {
    let s = section();
    // The SDK raises before verifying when no key is configured; here a key is a constructor
    // argument, and an absent or empty one cannot become a `WebhookSecret`.
    assert!(s.row("V12").get("Expected").contains("without a key"));
    assert_eq!(WebhookSecret::parse(""), Err(SecretError::Empty));
}

#[test]
fn vector_v13_unknown_event_types_are_kept() {
    let s = section();
    let row = s.row("V13");
    let body = row
        .codes("Headers")
        .into_iter()
        .find(|c| c.starts_with('{'))
        .expect("payload span");
    let result = parse_unverified(body.as_bytes());
    let event = result.as_ref().expect("parses").clone();
    let wanted = row.codes("Expected");
    let wanted_type: String =
        serde_json::from_str(wanted.last().expect("type span")).expect("json string");
    assert_eq!(
        event.data.kind,
        WebhookEventType::Other(wanted_type.clone())
    );
    assert_eq!(event.data.kind.as_str(), wanted_type);
    // And it serializes back to the same JSON.
    let orig: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(serde_json::to_value(&event).expect("ser"), orig);
    assert_expected(&row, result);
}

#[test]
fn tolerance_boundary_is_inclusive_to_the_microsecond() {
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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
    let f = Fixture::load(&section());
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

    let f = Fixture::load(&section());
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
