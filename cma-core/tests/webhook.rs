//! Webhook signing and verification against the SDK's vectors (sdk-test-vectors.md §7).

use cma_core::webhook::{WebhookSecret, sign};
use cma_vectors::{Section, Vectors};

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

/// The body from the section's only code block (exact bytes, no trailing newline).
fn vector_body(s: &Section) -> Vec<u8> {
    s.code_blocks()
        .into_iter()
        .next()
        .expect("section 7 has the body block")
        .into_bytes()
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
        let expected = row.code("Expected `webhook-signature`").expect("sig");
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
    let s1 = s.row("S1");
    let body = vector_body(&s);
    assert_eq!(
        sign(
            &bare_secret,
            &s1.code("webhook-id").unwrap(),
            s1.code("webhook-timestamp").unwrap().parse().unwrap(),
            &body
        ),
        s1.code("Expected `webhook-signature`").unwrap()
    );
}
