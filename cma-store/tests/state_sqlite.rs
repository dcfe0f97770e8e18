//! The conformance suite against SQLite files, plus what only a file can show: restart, WAL,
//! concurrent first opens, and files that are not (or no longer) what the store wrote.

use std::sync::Arc;

use cma_store::state::{SqliteStateStore, StateErrorKind, StateStore, conformance};
use sqlx::Connection as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    conformance::run(|| {
        let path = path.clone();
        async move { Ok(Arc::new(SqliteStateStore::open(&path).await?) as Arc<dyn StateStore>) }
    })
    .await;
}

#[tokio::test]
async fn sqlite_store_uses_wal_and_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStateStore::open(&path).await.unwrap();
    assert!(
        store
            .record_webhook("msg_1", conformance::at(0, 0))
            .await
            .unwrap()
    );
    assert!(
        dir.path().join("state.db-wal").exists(),
        "WAL journal in use"
    );
    store.close().await;
    drop(store);

    let reopened = SqliteStateStore::open(&path).await.unwrap();
    assert_eq!(reopened.path(), path);
    assert!(
        !reopened
            .record_webhook("msg_1", conformance::at(1, 0))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_opening_a_fresh_file_together_both_migrate_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (a, b) = tokio::join!(SqliteStateStore::open(&path), SqliteStateStore::open(&path));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.record_webhook("msg", conformance::at(0, 0))
            .await
            .unwrap()
    );
    assert!(
        !b.record_webhook("msg", conformance::at(0, 0))
            .await
            .unwrap()
    );
    a.close().await;
    b.close().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cma_schema_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // Each of the two migrations (initial schema, egress audit log) ran once.
    assert_eq!(applied, 2);
}

/// Switching a fresh file to WAL needs an exclusive lock; two connections that both read the file
/// and then both ask for it deadlock, and SQLite answers one of them `SQLITE_BUSY` at once, without
/// the busy timeout. Many stores opening fresh files together must all open, not fail by luck.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_stores_opening_fresh_files_together_all_open() {
    let dir = tempfile::tempdir().unwrap();
    for file in 0..20 {
        let path = dir.path().join(format!("state-{file}.db"));
        let opens = (0..6).map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStateStore::open(&path).await })
        });
        for open in futures::future::join_all(opens).await {
            let store = open.unwrap().unwrap_or_else(|e| panic!("file {file}: {e}"));
            store.close().await;
        }
    }
}

#[tokio::test]
async fn a_database_that_cannot_use_wal_is_refused_at_once_not_retried() {
    // SQLite keeps an in-memory database out of WAL mode for good: not a lock to wait for.
    let started = std::time::Instant::now();
    let err = SqliteStateStore::open(":memory:").await.unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Backend, "{err}");
    assert!(!err.is_retryable());
    assert!(
        started.elapsed() < cma_store::state::SQLITE_BUSY_TIMEOUT / 2,
        "refused without waiting out the busy timeout"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_reported_corrupt_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStateStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Corrupt, "{err}");
    assert!(!err.is_retryable());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file is not modified"
    );
}

#[tokio::test]
async fn a_database_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    SqliteStateStore::open(&path).await.unwrap().close().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO cma_schema_migrations (version, applied_at) VALUES (999, 0)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = SqliteStateStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("999"), "{err}");
}

#[tokio::test]
async fn rows_no_valid_write_produces_are_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStateStore::open(&path).await.unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    for (id, status, updated_at, snapshot) in [
        ("bad_status", "'dancing'", "0", "NULL"),
        ("bad_time", "'idle'", "'yesterday'", "NULL"),
        ("negative_time", "'idle'", "-5", "NULL"),
        ("bad_snapshot", "'idle'", "0", "'not-a-digest'"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cma_sessions (session_id, backend, status, updated_at, version, last_snapshot_id) \
             VALUES ('{id}', 'isolate', {status}, {updated_at}, 1, {snapshot})"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        let err = store.get_session(id).await.unwrap_err();
        assert_eq!(err.kind(), StateErrorKind::Corrupt, "{id}: {err}");
    }
    sqlx::raw_sql("INSERT INTO cma_leases VALUES ('w', 's', 'o', 0, 'soon')")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store.get_lease("w").await.unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Corrupt, "{err}");
}

#[tokio::test]
async fn an_unopenable_path_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStateStore::open(dir.path().join("missing/dir/state.db"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            StateErrorKind::Unavailable | StateErrorKind::Backend
        ),
        "{err}"
    );
}
