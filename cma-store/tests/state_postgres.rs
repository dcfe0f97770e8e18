//! The conformance suite against Postgres (`CMA_TEST_POSTGRES_URL`, started by
//! `.ci/setup.d/40-postgres.sh`). Each test works in a schema of its own, dropped first, so the
//! tests run in parallel and can run again.

use std::sync::Arc;
use std::time::Duration;

use cma_store::state::{
    PostgresOptions, PostgresStateStore, StateErrorKind, StateStore, conformance,
};
use sqlx::Connection as _;

fn url() -> String {
    std::env::var("CMA_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "CMA_TEST_POSTGRES_URL is not set: these tests need a Postgres server. \
             Run `source .ci/setup.d/40-postgres.sh` (it installs and starts one on 127.0.0.1)."
        )
    })
}

/// A fresh, empty schema for one test.
async fn fresh_schema(name: &str) -> PostgresOptions {
    let schema = format!("cma_test_{name}");
    let mut conn = sqlx::PgConnection::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("cannot reach Postgres at CMA_TEST_POSTGRES_URL: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    PostgresOptions::new(url()).schema(schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    let options = fresh_schema("conformance").await;
    conformance::run(|| {
        let options = options.clone();
        async move { Ok(Arc::new(PostgresStateStore::connect(options).await?) as Arc<dyn StateStore>) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let options = fresh_schema("together").await;
    let (a, b) = tokio::join!(
        PostgresStateStore::connect(options.clone()),
        PostgresStateStore::connect(options.clone())
    );
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
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    let applied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM cma_test_together.cma_schema_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    // Each of the two migrations (initial schema, egress audit log) ran once.
    assert_eq!(applied, 2);
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused() {
    let options = fresh_schema("newer").await;
    PostgresStateStore::connect(options.clone())
        .await
        .unwrap()
        .close()
        .await;
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    sqlx::query(
        "INSERT INTO cma_test_newer.cma_schema_migrations (version, applied_at) VALUES (999, 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let err = PostgresStateStore::connect(options).await.unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Corrupt, "{err}");
}

#[tokio::test]
async fn rows_no_valid_write_produces_are_reported_corrupt() {
    let options = fresh_schema("corrupt_rows").await;
    let store = PostgresStateStore::connect(options).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url()).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO cma_test_corrupt_rows.cma_sessions \
         (session_id, backend, status, updated_at, version) VALUES ('s', 'isolate', 'dancing', 0, 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let err = store.get_session("s").await.unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Corrupt, "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_error_within_the_timeout() {
    let mut options = PostgresOptions::new("postgres://cma:cma@127.0.0.1:1/cma_test");
    options.connect_timeout = Duration::from_secs(2);
    let err = PostgresStateStore::connect(options).await.unwrap_err();
    assert_eq!(err.kind(), StateErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_schema_name_that_needs_quoting_is_rejected() {
    for bad in [
        "",
        "Upper",
        "with space",
        "semi;colon",
        "1digit",
        &"s".repeat(64),
    ] {
        let err = PostgresStateStore::connect(PostgresOptions::new(url()).schema(bad))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StateErrorKind::InvalidInput, "{bad:?}: {err}");
    }
}
