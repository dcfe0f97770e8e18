//! [`SqliteStateStore`]: the state store in one SQLite file (WAL mode), for one host.
//!
//! Several processes may open the same file: SQLite serializes writers, and every
//! [`StateStore`](super::StateStore) method is a single statement or an immediate transaction, so
//! lease claims from two processes never both win. The schema is created and upgraded on open
//! from the SQL embedded in this crate (`migrations/sqlite`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use super::StateError;
use super::sql::{MIGRATIONS_TABLE, Migration, map_err, pending, sql_state_store};

static MIGRATIONS: [Migration; 2] = [
    Migration {
        version: 1,
        sql: include_str!("migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/sqlite/0002_egress_audit.sql"),
    },
];

/// How long a statement waits for another connection's write lock before failing with a
/// retryable [`StateErrorKind::Unavailable`](super::StateErrorKind::Unavailable).
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`StateStore`](super::StateStore) in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStateStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStateStore {
    /// Open (creating if missing) the database at `path` and bring its schema up to date.
    ///
    /// A file that is not a SQLite database, or that was written by a newer schema, fails with
    /// [`StateErrorKind::Corrupt`](super::StateErrorKind::Corrupt) and is left untouched.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        // No `journal_mode` here: WAL is a property of the file, set once by `enter_wal`, which can
        // wait for the exclusive lock that switching needs (the busy timeout cannot).
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(false);
        enter_wal(options.clone().busy_timeout(WAL_ATTEMPT_WAIT)).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(SQLITE_BUSY_TIMEOUT + Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| map_err("open", e))?;
        let store = Self { pool, path };
        store.migrate().await?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close every connection, waiting for running statements to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<(), StateError> {
        let op = "migrate";
        // IMMEDIATE takes the write lock first, so two processes opening a fresh file migrate one
        // after the other.
        let mut tx = self.begin_write().await?;
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

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StateError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_err("begin", e))
    }
}

sql_state_store!(SqliteStateStore, sqlx::Sqlite);

/// Longest one attempt to switch a file to WAL waits for a lock, so that `enter_wal` keeps to
/// its deadline.
const WAL_ATTEMPT_WAIT: Duration = Duration::from_millis(200);

/// Put the file at `options` in WAL mode (a no-op when it already is), waiting up to
/// [`SQLITE_BUSY_TIMEOUT`] for the other connections that hold it.
///
/// Switching a file into WAL needs an exclusive lock, and SQLite answers `SQLITE_BUSY` at once
/// instead of calling the busy handler, so two processes opening a fresh file together would see
/// "database is locked". Here the switch is retried with a short, growing pause until the deadline.
async fn enter_wal(options: SqliteConnectOptions) -> Result<(), StateError> {
    let op = "open";
    let deadline = Instant::now() + SQLITE_BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        let attempt = async {
            let mut conn: SqliteConnection = options.connect().await?;
            let mode: Result<String, sqlx::Error> = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&mut conn)
                .await;
            // Closing cleanly matters less than the answer; a failed close drops the handle.
            let _ = conn.close().await;
            mode
        };
        let busy = match attempt.await {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            // A lock it could not take is an error; an answer naming another mode is for good
            // (an in-memory or temporary database, a file system without shared memory).
            Ok(mode) => {
                return Err(StateError::Backend {
                    op,
                    source: format!(
                        "the database stays in journal mode {mode:?}: the state store needs WAL \
                         (a database file on a local file system)"
                    )
                    .into(),
                });
            }
            Err(e) => match map_err(op, e) {
                err @ StateError::Unavailable { .. } => err,
                err => return Err(err),
            },
        };
        if Instant::now() + pause > deadline {
            return Err(busy);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
