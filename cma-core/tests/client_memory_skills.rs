//! Request encodings of the skills and memory-store endpoints (docs/protocol.md §1.2, §4), captured
//! on loopback: paths, queries in the SDK's order, JSON bodies, betas, credential and helper.

mod client_support;

use client_support::{CaptureServer, Captured, Reply};
use cma_core::client::{
    AGENT_MEMORY_BETA, Client, Credential, Helper, ListMemoriesParams, MEMORY_PRECONDITION_FAILED,
    MemoryListItem, MemoryView,
};
use serde_json::{Value, json};

const TOKEN: &str = "sk-sess-tok";

fn memory(path: &str, content: Option<&str>) -> Value {
    json!({"type":"memory","id":"mem_1","memory_store_id":"memstore_1","path":path,
           "content_sha256":"ab".repeat(32),"content_size_bytes":1,"memory_version_id":"memver_1",
           "created_at":"2026-05-01T00:00:00Z","updated_at":"2026-05-01T00:00:00Z","content":content})
}

fn respond(c: &Captured) -> Reply {
    let p = c.path.as_str();
    if p.ends_with("/content") {
        return Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/x-tar".into())],
            chunks: vec![b"archive-bytes".to_vec()],
        };
    }
    if p.starts_with("/v1/skills/") {
        return Reply::json(
            200,
            json!({"type":"skill_version","id":"skillver_9","skill_id":"skill_1","name":"pdf",
                   "description":"d","created_at":"2026-05-01T00:00:00Z"})
            .to_string(),
        );
    }
    let body = match c.method.as_str() {
        "DELETE" => json!({"id":"mem_1","type":"memory_deleted"}),
        "GET" if p.ends_with("/memories") => json!({"data":[
            memory("/a.md", None),
            {"type":"memory_prefix","path":"/notes/"},
            {"type":"something_new","x":1}
        ],"next_page":null}),
        _ => memory("/a.md", Some("x")),
    };
    Reply::json(200, body.to_string())
}

fn client(server: &CaptureServer, betas: &[&str]) -> Client {
    Client::new(server.config().betas(betas.to_vec()).build().unwrap()).unwrap()
}

fn json_body(c: &Captured) -> Value {
    serde_json::from_slice(&c.body).unwrap()
}

#[tokio::test]
async fn memory_calls_carry_the_memory_beta_the_token_and_the_sdk_encodings() {
    let server = CaptureServer::start(respond).await;
    let store = client(&server, &[])
        .memory_store("memstore_1", Credential::sessions_token(TOKEN))
        .with_helper(Some(Helper::Worker));

    let page = store
        .list(&ListMemoriesParams::all(MemoryView::Basic))
        .await
        .unwrap();
    assert!(
        matches!(&page.data[0], MemoryListItem::Memory(m) if m.path == "/a.md" && m.content.is_none())
    );
    assert!(matches!(&page.data[1], MemoryListItem::Prefix { path } if path == "/notes/"));
    assert!(matches!(&page.data[2], MemoryListItem::Other(_)));
    let all = store.list_all(MemoryView::Full, 10).await.unwrap();
    assert_eq!(all.len(), 1, "prefix rollups and unknown items are skipped");
    store
        .list(&ListMemoriesParams {
            depth: Some(1),
            limit: Some(5),
            page: Some("cur 1".into()),
            path_prefix: Some("/notes/".into()),
            view: Some(MemoryView::Full),
        })
        .await
        .unwrap();
    store.retrieve("mem_1", MemoryView::Full).await.unwrap();
    store.create("/a.md", "x").await.unwrap();
    let sha = "cd".repeat(32);
    store.update("mem_1", "y", Some(&sha)).await.unwrap();
    store.update("mem_1", "z", None).await.unwrap();
    let deleted = store.delete("mem_1", Some(&sha)).await.unwrap();
    assert_eq!(deleted.kind, "memory_deleted");
    store.delete("mem_1", None).await.unwrap();

    let got = server.take();
    let lines: Vec<String> = got
        .iter()
        .map(|c| {
            format!(
                "{} {}?{}",
                c.method,
                c.path,
                c.query.clone().unwrap_or_default()
            )
        })
        .collect();
    let base = "/v1/memory_stores/memstore_1/memories";
    assert_eq!(
        lines,
        [
            format!("GET {base}?limit=100&view=basic"),
            format!("GET {base}?limit=20&view=full"),
            format!("GET {base}?depth=1&limit=5&page=cur+1&path_prefix=%2Fnotes%2F&view=full"),
            format!("GET {base}/mem_1?view=full"),
            format!("POST {base}?"),
            format!("POST {base}/mem_1?"),
            format!("POST {base}/mem_1?"),
            format!("DELETE {base}/mem_1?expected_content_sha256={sha}"),
            format!("DELETE {base}/mem_1?"),
        ]
    );
    for c in &got {
        assert_eq!(
            c.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(c.header("anthropic-beta"), Some(AGENT_MEMORY_BETA));
        assert_eq!(c.header_count("anthropic-beta"), 1);
        assert_eq!(c.header("x-stainless-helper"), Some("environments-worker"));
        assert_eq!(c.header("accept"), Some("application/json"));
    }
    assert_eq!(got[4].body, br#"{"content":"x","path":"/a.md"}"#);
    assert_eq!(
        json_body(&got[5]),
        json!({"content":"y","precondition":{"type":"content_sha256","content_sha256":sha}})
    );
    assert_eq!(json_body(&got[6]), json!({"content":"z"}));
    assert!(got[7].body.is_empty());
}

#[tokio::test]
async fn skills_send_no_resource_beta_and_download_as_binary() {
    let server = CaptureServer::start(respond).await;
    let skills = client(&server, &[])
        .skills(Credential::sessions_token(TOKEN))
        .with_helper(Some(Helper::Worker));
    let v = skills.retrieve_version("skill_1", "latest").await.unwrap();
    assert_eq!((v.id.as_str(), v.name.as_str()), ("skillver_9", "pdf"));
    let bytes = skills.download("skill_1", &v.id).await.unwrap();
    assert_eq!(&bytes[..], b"archive-bytes");
    let got = server.take();
    assert_eq!(got[0].path, "/v1/skills/skill_1/versions/latest");
    assert_eq!(
        got[1].path,
        "/v1/skills/skill_1/versions/skillver_9/content"
    );
    assert_eq!(got[0].header("accept"), Some("application/json"));
    assert_eq!(got[1].header("accept"), Some("application/binary"));
    for c in &got {
        assert_eq!(
            c.header("anthropic-beta"),
            None,
            "skills carry no default beta"
        );
        assert_eq!(
            c.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(c.header("x-stainless-helper"), Some("environments-worker"));
    }

    // The archive cap is enforced.
    let small = skills.with_max_archive_bytes(4);
    let err = small.download("skill_1", "skillver_9").await.unwrap_err();
    assert!(err.to_string().contains("larger than 4 bytes"), "{err}");
}

#[tokio::test]
async fn extra_betas_come_first_and_skills_send_only_them() {
    let server = CaptureServer::start(respond).await;
    let c = client(&server, &["b1", "b2"]);
    let cred = Credential::sessions_token(TOKEN);
    c.memory_store("memstore_1", cred.clone())
        .create("/a", "x")
        .await
        .unwrap();
    c.skills(cred)
        .retrieve_version("skill_1", "v1")
        .await
        .unwrap();
    let got = server.take();
    assert_eq!(
        got[0].header("anthropic-beta"),
        Some("b1,b2,agent-memory-2026-07-22")
    );
    assert_eq!(got[1].header("anthropic-beta"), Some("b1,b2"));
    assert_eq!(got[0].header("x-stainless-helper"), None);
}

#[tokio::test]
async fn precondition_failures_are_typed_and_not_retried_when_the_server_says_so() {
    let server = CaptureServer::start(respond).await;
    let body =
        json!({"type":"error","error":{"type":MEMORY_PRECONDITION_FAILED,"message":"sha moved"}})
            .to_string();
    server.push(Reply::json(409, body).header("x-should-retry", "false"));
    let store = client(&server, &[]).memory_store("memstore_1", Credential::sessions_token(TOKEN));
    let err = store.update("mem_1", "y", Some("00")).await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.error_type(), Some(MEMORY_PRECONDITION_FAILED));
    assert_eq!(server.take().len(), 1);
    // Empty ids are refused before sending.
    assert!(store.retrieve("", MemoryView::Full).await.is_err());
    assert!(server.take().is_empty());
}
