//! [`PostgresStateStore`]: the state store in a Postgres database, shared by several control-plane
//! replicas.
//!
//! Replicas coordinate through the lease table: a claim is one `INSERT … ON CONFLICT DO UPDATE …
//! WHERE` statement, which Postgres serializes per work id, so of two replicas racing for one
//! lease exactly one wins. The schema is created and upgraded on connect from the SQL embedded in
//! this crate (`migrations/postgres`), under an advisory lock so replicas starting together
//! migrate once.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::StateError;
use super::sql::{MIGRATIONS_TABLE, Migration, map_err, pending, sql_state_store};

static MIGRATIONS: [Migration; 2] = [
    Migration {
        version: 1,
        sql: include_str!("migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/postgres/0002_egress_audit.sql"),
    },
];

/// The advisory lock key held while migrating (an arbitrary constant: "cmastate" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x636d_6173_7461_7465;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A `postgres://user:password@host:port/database` URL.
    pub url: String,
    /// The schema that holds the tables (created if missing); `None` uses the role's default
    /// `search_path`. Lets several stores (or tests) share one database. Lowercase ASCII letters, digits and
    /// `_`, at most 63 bytes, not starting with a digit.
    pub schema: Option<String>,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a call waits for a connection (including connecting) before failing with a
    /// retryable [`StateErrorKind::Unavailable`](super::StateErrorKind::Unavailable).
    pub connect_timeout: Duration,
    /// The server-side limit on one statement (`statement_timeout`).
    pub statement_timeout: Duration,
}

impl PostgresOptions {
    /// Options for `url` with the defaults: the default schema, 8 connections, 10 s to connect,
    /// 30 s per statement.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            max_connections: 8,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }

    /// Keep the tables in `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

/// A [`StateStore`](super::StateStore) in a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStateStore {
    pool: PgPool,
}

impl PostgresStateStore {
    /// Connect and bring the schema up to date.
    pub async fn connect(options: PostgresOptions) -> Result<Self, StateError> {
        let mut connect: PgConnectOptions = options
            .url
            .parse()
            .map_err(|e: sqlx::Error| StateError::invalid("url", e.to_string()))?;
        let statement_timeout = format!("{}ms", options.statement_timeout.as_millis().max(1));
        let mut settings = vec![("statement_timeout", statement_timeout)];
        if let Some(schema) = &options.schema {
            check_schema(schema)?;
            settings.push(("search_path", schema.clone()));
        }
        connect = connect.options(settings);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| map_err("connect", e))?;
        let store = Self { pool };
        store.migrate(options.schema.as_deref()).await?;
        Ok(store)
    }

    /// Close every connection, waiting for running statements to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self, schema: Option<&str>) -> Result<(), StateError> {
        let op = "migrate";
        let mut tx = self.begin_write().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_err(op, e))?;
        if let Some(schema) = schema {
            // `check_schema` allows only [A-Za-z0-9_], so quoting cannot be escaped.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut *tx)
            .await
            .map_err(|e| map_err(op, e))?;
        }
        sqlx::raw_sql(MIGRATIONS_TABLE)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_err(op, e))?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM cma_schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| map_err(op, e))?;
        for migration in pending(current, &MIGRATIONS)? {
            sqlx::raw_sql(migration.sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_err(op, e))?;
            sqlx::query("INSERT INTO cma_schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(migration.version)
                .bind(chrono::Utc::now().timestamp_millis())
                .execute(&mut *tx)
                .await
                .map_err(|e| map_err(op, e))?;
        }
        tx.commit().await.map_err(|e| map_err(op, e))
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StateError> {
        self.pool.begin().await.map_err(|e| map_err("begin", e))
    }
}

fn check_schema(schema: &str) -> Result<(), StateError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.as_bytes()[0].is_ascii_digit()
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StateError::invalid(
            "schema",
            format!(
                "{schema:?} is not 1..=63 lowercase ASCII letters, digits or _ (not starting with a digit)"
            ),
        ))
    }
}

sql_state_store!(PostgresStateStore, sqlx::Postgres);
