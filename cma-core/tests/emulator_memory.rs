//! The emulator's skills and memory-store endpoints over real HTTP on 127.0.0.1, driven through
//! the typed clients: views, paging, `depth` rollups, `content_sha256` preconditions, path
//! conflicts, credentials and access modes, staged races, and the scenario-file attachments.

use std::collections::BTreeMap;

use cma_core::client::{
    ApiError, Client, ClientConfig, Credential, ListMemoriesParams, MEMORY_PATH_CONFLICT,
    MEMORY_PRECONDITION_FAILED, MemoryListItem, MemoryStoreClient, MemoryView, PollParams,
};
use cma_core::emulator::{
    Emulator, EmulatorConfig, MemoryAttachment, Scenario, Script, ScriptEnd, SessionAttachments,
};
use serde_json::json;

async fn start() -> (Emulator, Client) {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.add_environment("env_m", "m").unwrap();
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emu.base_url())
            .max_retries(0)
            .build()
            .unwrap(),
    )
    .unwrap();
    (emu, client)
}

fn api(emu: &Emulator, client: &Client, store: &str) -> MemoryStoreClient {
    client.memory_store(store, Credential::api_key(emu.api_key()))
}

fn type_of(e: &ApiError) -> (Option<u16>, Option<&str>) {
    (e.status(), e.error_type())
}

/// The sessions token of the (only) queued item.
async fn sessions_token(emu: &Emulator, client: &Client) -> String {
    let key = emu.environment_key("env_m").unwrap();
    let env = client.environment("env_m", Credential::environment_key(key));
    let work = env.poll(&PollParams::long_poll()).await.unwrap().unwrap();
    work.sessions_token().unwrap()
}

#[tokio::test]
async fn preconditions_conflicts_and_deletes() {
    let (emu, client) = start().await;
    emu.add_memory_store("memstore_a").unwrap();
    let s = api(&emu, &client, "memstore_a");

    let a = s.create("/notes/a.md", "one").await.unwrap();
    assert_eq!(a.content, None, "create answers the basic view by default");
    let e = s.create("/notes/a.md", "two").await.unwrap_err();
    assert_eq!(type_of(&e), (Some(409), Some(MEMORY_PATH_CONFLICT)));

    // Update with a stale precondition: 409 memory_precondition_failed_error, nothing changes.
    let stale = "0".repeat(64);
    let e = s.update(&a.id, "two", Some(&stale)).await.unwrap_err();
    assert_eq!(type_of(&e), (Some(409), Some(MEMORY_PRECONDITION_FAILED)));
    assert_eq!(emu.memories("memstore_a").unwrap()["/notes/a.md"], "one");
    // With the right one it applies and the sha moves.
    let b = s
        .update(&a.id, "two", Some(&a.content_sha256))
        .await
        .unwrap();
    assert_ne!(b.content_sha256, a.content_sha256);
    assert_eq!(b.id, a.id);
    assert_eq!(emu.memories("memstore_a").unwrap()["/notes/a.md"], "two");

    // Delete guarded by expected_content_sha256.
    let e = s.delete(&a.id, Some(&a.content_sha256)).await.unwrap_err();
    assert_eq!(type_of(&e), (Some(409), Some(MEMORY_PRECONDITION_FAILED)));
    s.delete(&a.id, Some(&b.content_sha256)).await.unwrap();
    assert!(emu.memories("memstore_a").unwrap().is_empty());
    let e = s.delete(&a.id, None).await.unwrap_err();
    assert_eq!(e.status(), Some(404));

    // Invalid paths and oversized content are refused.
    for bad in ["no-slash", "/a//b", "/a/../b"] {
        let e = s.create(bad, "x").await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{bad}");
    }
    let e = s.create("/big", &"x".repeat(102_401)).await.unwrap_err();
    assert_eq!(e.status(), Some(413));
    let e = api(&emu, &client, "memstore_nope")
        .create("/a", "x")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    emu.shutdown().await;
}

#[tokio::test]
async fn listing_views_paging_and_depth() {
    let (emu, client) = start().await;
    emu.add_memory_store("memstore_l").unwrap();
    for i in 0..25 {
        emu.put_memory("memstore_l", &format!("/n/{i:02}.md"), &format!("c{i}"))
            .unwrap();
    }
    emu.put_memory("memstore_l", "/top.md", "t").unwrap();
    let s = api(&emu, &client, "memstore_l");
    let basic = s.list_all(MemoryView::Basic, 100).await.unwrap();
    assert_eq!(basic.len(), 26);
    assert!(
        basic
            .iter()
            .all(|m| m.content.is_none() && m.content_sha256.len() == 64)
    );
    // Full pages hold at most 20 items, even when asked for more.
    let page = s
        .list(&ListMemoriesParams {
            limit: Some(100),
            view: Some(MemoryView::Full),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.data.len(), 20);
    assert!(page.next_cursor().is_some());
    let full = s.list_all(MemoryView::Full, 100).await.unwrap();
    assert_eq!(full.len(), 26);
    assert_eq!(full[0].content.as_deref(), Some("c0"));
    // depth=1 rolls /n/* into one memory_prefix item.
    let rolled = s
        .list(&ListMemoriesParams {
            depth: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rolled.data.len(), 2);
    assert!(matches!(&rolled.data[0], MemoryListItem::Prefix { path } if path == "/n/"));
    // path_prefix narrows to whole segments.
    let under = s
        .list(&ListMemoriesParams {
            path_prefix: Some("/n/".into()),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(under.data.len(), 25);
    // The list cap of the client is enforced.
    assert!(s.list_all(MemoryView::Basic, 10).await.is_err());
    emu.shutdown().await;
}

#[tokio::test]
async fn credentials_and_access_modes() {
    let (emu, client) = start().await;
    let att = SessionAttachments {
        skills: vec![],
        memory_stores: vec![
            MemoryAttachment::read_write("memstore_rw", Some("/mnt/memory/rw")),
            MemoryAttachment::read_only("memstore_ro", None),
        ],
    };
    let sid = emu
        .create_session_with("env_m", None, Script::new(vec![], ScriptEnd::Idle), &att)
        .unwrap();
    emu.add_memory_store("memstore_other").unwrap();
    let token = sessions_token(&emu, &client).await;
    let tok = Credential::sessions_token(token);

    // The session JSON carries the attachments.
    let session = client
        .session(sid.clone(), tok.clone())
        .get()
        .await
        .unwrap();
    assert_eq!(session.resources.len(), 2);
    assert_eq!(
        session.resources[0].mount_path.as_deref(),
        Some("/mnt/memory/rw")
    );
    assert_eq!(session.resources[1].access.as_deref(), Some("read_only"));

    let rw = client.memory_store("memstore_rw", tok.clone());
    rw.create("/b", "y").await.unwrap();
    let ro = client.memory_store("memstore_ro", tok.clone());
    ro.list_all(MemoryView::Full, 10).await.unwrap();
    let e = ro.create("/b", "y").await.unwrap_err();
    assert_eq!(
        e.status(),
        Some(403),
        "a read-only attachment refuses writes"
    );
    let e = client
        .memory_store("memstore_other", tok.clone())
        .list_all(MemoryView::Basic, 10)
        .await
        .unwrap_err();
    assert_eq!(
        e.status(),
        Some(403),
        "stores of other sessions are out of reach"
    );
    let env_key = Credential::environment_key(emu.environment_key("env_m").unwrap());
    let e = client
        .memory_store("memstore_rw", env_key)
        .list_all(MemoryView::Basic, 10)
        .await
        .unwrap_err();
    assert_eq!(
        e.status(),
        Some(401),
        "the memory endpoints reject the environment key"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn a_staged_race_lands_right_after_the_listing() {
    let (emu, client) = start().await;
    emu.add_memory_store("memstore_r").unwrap();
    emu.put_memory("memstore_r", "/a", "base").unwrap();
    let s = api(&emu, &client, "memstore_r");
    emu.race_memory_after_list("memstore_r", "/a", Some("theirs"))
        .unwrap();
    let listed = s.list_all(MemoryView::Basic, 10).await.unwrap();
    let e = s
        .update(&listed[0].id, "mine", Some(&listed[0].content_sha256))
        .await
        .unwrap_err();
    assert_eq!(type_of(&e), (Some(409), Some(MEMORY_PRECONDITION_FAILED)));
    assert_eq!(emu.memories("memstore_r").unwrap()["/a"], "theirs");
    emu.shutdown().await;
}

#[tokio::test]
async fn skills_and_attachments_from_a_scenario_file() {
    let scenario: Scenario = serde_json::from_value(json!({
        "environments": [{"id": "env_s", "environment_key": "envkey_s"}],
        "skills": [{"id": "skill_pdf", "name": "pdf", "files": {"SKILL.md": "# PDF\n"}}],
        "memory_stores": [{"id": "memstore_s", "memories": {"/prefs.md": "dark mode"}}],
        "sessions": [{"id": "sesn_s", "environment": "env_s", "end": "idle",
                      "skills": [{"skill_id": "skill_pdf"}],
                      "memory_stores": [{"memory_store_id": "memstore_s", "access": "read_only",
                                          "mount_path": "/mnt/memory/s"}]}]
    }))
    .unwrap();
    let emu = Emulator::start(EmulatorConfig::default().scenario(scenario))
        .await
        .unwrap();
    let client = Client::new(
        ClientConfig::builder()
            .base_url(emu.base_url())
            .build()
            .unwrap(),
    )
    .unwrap();
    let key = Credential::environment_key("envkey_s");
    let session = client.session("sesn_s", key.clone()).get().await.unwrap();
    assert_eq!(session.agent.skills.len(), 1);
    assert_eq!(session.agent.skills[0].skill_id, "skill_pdf");
    assert_eq!(
        session.resources[0].memory_store_id.as_deref(),
        Some("memstore_s")
    );
    let skills = client.skills(key);
    let v = skills
        .retrieve_version("skill_pdf", "latest")
        .await
        .unwrap();
    assert_eq!(v.name, "pdf");
    let archive = skills.download("skill_pdf", &v.id).await.unwrap();
    let x = cma_core::runner::skills::extract_archive(&archive, &Default::default()).unwrap();
    assert_eq!(x.files[0].path, "SKILL.md");
    assert_eq!(&x.files[0].data[..], b"# PDF\n");
    let e = skills
        .retrieve_version("skill_pdf", "skillver_nope")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    let expected: BTreeMap<String, String> =
        [("/prefs.md".to_owned(), "dark mode".to_owned())].into();
    assert_eq!(emu.memories("memstore_s"), Some(expected));

    // A bad memory path in a scenario is refused at load.
    let bad: Scenario = serde_json::from_value(json!({
        "memory_stores": [{"id": "memstore_x", "memories": {"no-slash": "x"}}]
    }))
    .unwrap();
    assert!(
        Emulator::start(EmulatorConfig::default().scenario(bad))
            .await
            .is_err()
    );
    emu.shutdown().await;
}
