//! What the SQLite and Postgres stores share: the error mapping, the migration plan, and (through
//! [`sql_state_store!`]) the body of the [`StateStore`](super::StateStore) implementation, which is
//! written once in the SQL both dialects accept (`$N` parameters, `INSERT … ON CONFLICT`,
//! `RETURNING`). The dialects differ only in their schema files and in how they open and lock.

use super::StateError;

/// The table that records which migrations have run, created before any migration.
pub(crate) const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS cma_schema_migrations (
    version BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// One schema change, applied once, in order of `version`.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) sql: &'static str,
}

/// The migrations still to apply on a database at `current`, or a corrupt-data error if the database
/// was written by a newer schema than this build knows.
pub(crate) fn pending(
    current: Option<i64>,
    migrations: &'static [Migration],
) -> Result<&'static [Migration], StateError> {
    let current = current.unwrap_or(0);
    let latest = migrations.last().map_or(0, |m| m.version);
    if current > latest {
        return Err(StateError::corrupt(format!(
            "schema version {current} is newer than the {latest} this build of cma-store knows"
        )));
    }
    if current < 0 {
        return Err(StateError::corrupt(format!(
            "schema version {current} is negative"
        )));
    }
    Ok(&migrations[migrations.partition_point(|m| m.version <= current)..])
}

/// Classify a sqlx error: unreachable or busy databases are retryable, undecodable data is corrupt.
pub(crate) fn map_err(op: &'static str, err: sqlx::Error) -> StateError {
    use sqlx::Error as E;
    match err {
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                // SQLite: SQLITE_CORRUPT, SQLITE_NOTADB (and their extended codes' primary part).
                "11" | "26" => StateError::corrupt(format!("{op}: {}", db.message())),
                // SQLite: SQLITE_BUSY, SQLITE_LOCKED.
                "5" | "6" | "261" | "517" | "262" => StateError::Unavailable {
                    op,
                    source: Box::new(E::Database(db)),
                },
                // Postgres: connection exceptions, serialization failure, deadlock, resources,
                // operator intervention (shutdown), statement timeout.
                c if c.starts_with("08")
                    || c == "40001"
                    || c == "40P01"
                    || c.starts_with("53")
                    || c.starts_with("57") =>
                {
                    StateError::Unavailable {
                        op,
                        source: Box::new(E::Database(db)),
                    }
                }
                _ => StateError::Backend {
                    op,
                    source: Box::new(E::Database(db)),
                },
            }
        }
        E::Io(_) | E::PoolTimedOut | E::Tls(_) | E::Protocol(_) | E::WorkerCrashed => {
            StateError::Unavailable {
                op,
                source: Box::new(err),
            }
        }
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. } => {
            StateError::corrupt(format!("{op}: {err}"))
        }
        other => StateError::Backend {
            op,
            source: Box::new(other),
        },
    }
}

/// Expands to `impl StateStore for $store` over `self.pool: sqlx::Pool<$db>`.
macro_rules! sql_state_store {
    ($store:ty, $db:ty) => {
        const SESSION_COLUMNS: &str = "session_id, backend, sandbox_id, last_work_id, last_snapshot_id, \
             egress_policy_id, status, updated_at, version";
        const LEASE_COLUMNS: &str = "work_id, session_id, owner, acquired_at, expires_at";

        type DbRow = <$db as sqlx::Database>::Row;

        fn session_from_row(row: &DbRow) -> Result<$crate::state::SessionRecord, $crate::state::StateError> {
            use sqlx::Row as _;
            let get = |e| $crate::state::sql::map_err("read session", e);
            let status: String = row.try_get("status").map_err(get)?;
            Ok($crate::state::SessionRecord {
                session_id: row.try_get("session_id").map_err(get)?,
                backend: row.try_get("backend").map_err(get)?,
                sandbox_id: row.try_get("sandbox_id").map_err(get)?,
                last_work_id: row.try_get("last_work_id").map_err(get)?,
                last_snapshot: $crate::state::record::snapshot_from_db(
                    row.try_get("last_snapshot_id").map_err(get)?,
                )?,
                egress_policy_id: row.try_get("egress_policy_id").map_err(get)?,
                status: $crate::state::record::status_from_db(&status)?,
                updated_at: $crate::state::record::from_millis(
                    "updated_at",
                    row.try_get("updated_at").map_err(get)?,
                )?,
                version: $crate::state::record::u64_from_db("version", row.try_get("version").map_err(get)?)?,
            })
        }

        fn transition_from_row(row: &DbRow) -> Result<$crate::state::Transition, $crate::state::StateError> {
            use sqlx::Row as _;
            let get = |e| $crate::state::sql::map_err("read transition", e);
            Ok($crate::state::Transition {
                seq: $crate::state::record::u64_from_db("seq", row.try_get("seq").map_err(get)?)?,
                session_id: row.try_get("session_id").map_err(get)?,
                at: $crate::state::record::from_millis("at", row.try_get("at").map_err(get)?)?,
                event: row.try_get("event").map_err(get)?,
                detail: row.try_get("detail").map_err(get)?,
            })
        }

        fn lease_from_row(row: &DbRow) -> Result<$crate::state::Lease, $crate::state::StateError> {
            use sqlx::Row as _;
            let get = |e| $crate::state::sql::map_err("read lease", e);
            Ok($crate::state::Lease {
                work_id: row.try_get("work_id").map_err(get)?,
                session_id: row.try_get("session_id").map_err(get)?,
                owner: row.try_get("owner").map_err(get)?,
                acquired_at: $crate::state::record::from_millis(
                    "acquired_at",
                    row.try_get("acquired_at").map_err(get)?,
                )?,
                expires_at: $crate::state::record::from_millis(
                    "expires_at",
                    row.try_get("expires_at").map_err(get)?,
                )?,
            })
        }

        fn sandbox_from_row(row: &DbRow) -> Result<$crate::state::SandboxRecord, $crate::state::StateError> {
            use sqlx::Row as _;
            let get = |e| $crate::state::sql::map_err("read sandbox", e);
            Ok($crate::state::SandboxRecord {
                backend: row.try_get("backend").map_err(get)?,
                sandbox_id: row.try_get("sandbox_id").map_err(get)?,
                session_id: row.try_get("session_id").map_err(get)?,
                created_at: $crate::state::record::from_millis(
                    "created_at",
                    row.try_get("created_at").map_err(get)?,
                )?,
            })
        }

        fn policy_from_row(row: &DbRow) -> Result<$crate::state::EgressPolicyRecord, $crate::state::StateError> {
            use sqlx::Row as _;
            let get = |e| $crate::state::sql::map_err("read egress policy", e);
            Ok($crate::state::EgressPolicyRecord {
                policy_id: row.try_get("policy_id").map_err(get)?,
                version: $crate::state::record::u64_from_db("version", row.try_get("version").map_err(get)?)?,
                fingerprint: row.try_get("fingerprint").map_err(get)?,
                updated_at: $crate::state::record::from_millis(
                    "updated_at",
                    row.try_get("updated_at").map_err(get)?,
                )?,
            })
        }

        fn secret_from_row(row: &DbRow) -> Result<$crate::state::SecretMetadata, $crate::state::StateError> {
            use sqlx::Row as _;
            let get = |e| $crate::state::sql::map_err("read secret metadata", e);
            Ok($crate::state::SecretMetadata {
                name: row.try_get("name").map_err(get)?,
                version: $crate::state::record::u64_from_db("version", row.try_get("version").map_err(get)?)?,
                fingerprint: row.try_get("fingerprint").map_err(get)?,
                updated_at: $crate::state::record::from_millis(
                    "updated_at",
                    row.try_get("updated_at").map_err(get)?,
                )?,
            })
        }

        fn audit_from_row(row: &DbRow) -> Result<$crate::state::EgressAuditEntry, $crate::state::StateError> {
            use sqlx::Row as _;
            let get = |e| $crate::state::sql::map_err("read egress audit entry", e);
            let allowed: i64 = row.try_get("allowed").map_err(get)?;
            Ok($crate::state::EgressAuditEntry {
                seq: $crate::state::record::u64_from_db("seq", row.try_get("seq").map_err(get)?)?,
                at: $crate::state::record::from_millis("at", row.try_get("at").map_err(get)?)?,
                session_id: row.try_get("session_id").map_err(get)?,
                sandbox_id: row.try_get("sandbox_id").map_err(get)?,
                host: row.try_get("host").map_err(get)?,
                allowed: allowed != 0,
                record: row.try_get("record").map_err(get)?,
            })
        }

        fn collect<T>(
            rows: Vec<DbRow>,
            f: fn(&DbRow) -> Result<T, $crate::state::StateError>,
        ) -> Result<Vec<T>, $crate::state::StateError> {
            rows.iter().map(f).collect()
        }

        #[async_trait::async_trait]
        impl $crate::state::StateStore for $store {
            async fn put_session(
                &self,
                record: &$crate::state::SessionRecord,
                precondition: $crate::state::Precondition,
            ) -> Result<u64, $crate::state::StateError> {
                use $crate::state::Precondition;
                use $crate::state::record::to_millis;
                record.validate()?;
                let op = "put_session";
                let sql = match precondition {
                    Precondition::Any => {
                        "INSERT INTO cma_sessions (session_id, backend, sandbox_id, last_work_id, \
                         last_snapshot_id, egress_policy_id, status, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1) \
                         ON CONFLICT (session_id) DO UPDATE SET backend = excluded.backend, \
                         sandbox_id = excluded.sandbox_id, last_work_id = excluded.last_work_id, \
                         last_snapshot_id = excluded.last_snapshot_id, \
                         egress_policy_id = excluded.egress_policy_id, status = excluded.status, \
                         updated_at = excluded.updated_at, version = cma_sessions.version + 1 \
                         RETURNING version"
                    }
                    Precondition::Absent => {
                        "INSERT INTO cma_sessions (session_id, backend, sandbox_id, last_work_id, \
                         last_snapshot_id, egress_policy_id, status, updated_at, version) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1) \
                         ON CONFLICT (session_id) DO NOTHING RETURNING version"
                    }
                    Precondition::Version(_) => {
                        "UPDATE cma_sessions SET backend = $2, sandbox_id = $3, last_work_id = $4, \
                         last_snapshot_id = $5, egress_policy_id = $6, status = $7, updated_at = $8, \
                         version = version + 1 WHERE session_id = $1 AND version = $9 RETURNING version"
                    }
                };
                let mut query = sqlx::query(sql)
                    .bind(&record.session_id)
                    .bind(&record.backend)
                    .bind(record.sandbox_id.as_deref())
                    .bind(record.last_work_id.as_deref())
                    .bind(record.last_snapshot.as_ref().map(|s| s.as_str()))
                    .bind(record.egress_policy_id.as_deref())
                    .bind(record.status.as_str())
                    .bind(to_millis(record.updated_at));
                if let Precondition::Version(v) = precondition {
                    // A version above i64::MAX was never written, so it cannot match.
                    query = query.bind(i64::try_from(v).unwrap_or(-1));
                }
                let row = query
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err(op, e))?;
                if let Some(row) = row {
                    use sqlx::Row as _;
                    let v: i64 = row.try_get(0).map_err(|e| $crate::state::sql::map_err(op, e))?;
                    return $crate::state::record::u64_from_db("version", v);
                }
                let found: Option<i64> = sqlx::query_scalar("SELECT version FROM cma_sessions WHERE session_id = $1")
                    .bind(&record.session_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err(op, e))?;
                let reason = match (precondition, found) {
                    (Precondition::Version(want), Some(v)) => format!("expected version {want}, found {v}"),
                    (Precondition::Version(want), None) => format!("expected version {want}, found none"),
                    (_, Some(v)) => format!("exists at version {v}"),
                    (_, None) => "changed concurrently".to_owned(),
                };
                Err($crate::state::StateError::Conflict {
                    what: "session",
                    id: record.session_id.clone(),
                    reason,
                })
            }

            async fn get_session(
                &self,
                session_id: &str,
            ) -> Result<Option<$crate::state::SessionRecord>, $crate::state::StateError> {
                $crate::state::record::check_id("session_id", session_id)?;
                let sql = format!("SELECT {SESSION_COLUMNS} FROM cma_sessions WHERE session_id = $1");
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(session_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("get_session", e))?
                    .as_ref()
                    .map(session_from_row)
                    .transpose()
            }

            async fn list_sessions(
                &self,
                query: &$crate::state::SessionQuery,
            ) -> Result<Vec<$crate::state::SessionRecord>, $crate::state::StateError> {
                let limit = query.validate()?;
                let mut sql = format!("SELECT {SESSION_COLUMNS} FROM cma_sessions WHERE 1 = 1");
                let mut n = 0;
                if query.status.is_some() {
                    n += 1;
                    sql.push_str(&format!(" AND status = ${n}"));
                }
                if query.after.is_some() {
                    n += 1;
                    sql.push_str(&format!(" AND session_id > ${n}"));
                }
                sql.push_str(&format!(" ORDER BY session_id LIMIT ${}", n + 1));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                if let Some(status) = query.status {
                    q = q.bind(status.as_str());
                }
                if let Some(after) = &query.after {
                    q = q.bind(after.as_str());
                }
                let rows = q
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("list_sessions", e))?;
                collect(rows, session_from_row)
            }

            async fn delete_session(&self, session_id: &str) -> Result<bool, $crate::state::StateError> {
                $crate::state::record::check_id("session_id", session_id)?;
                let op = "delete_session";
                let err = |e| $crate::state::sql::map_err(op, e);
                let mut tx = self.begin_write().await?;
                sqlx::query("DELETE FROM cma_transitions WHERE session_id = $1")
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                let deleted = sqlx::query("DELETE FROM cma_sessions WHERE session_id = $1")
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?
                    .rows_affected();
                tx.commit().await.map_err(err)?;
                Ok(deleted > 0)
            }

            async fn append_transition(
                &self,
                session_id: &str,
                at: chrono::DateTime<chrono::Utc>,
                event: &str,
                detail: &str,
            ) -> Result<$crate::state::Transition, $crate::state::StateError> {
                $crate::state::record::validate_transition(session_id, at, event, detail)?;
                let row = sqlx::query(
                    "INSERT INTO cma_transitions (session_id, at, event, detail) VALUES ($1, $2, $3, $4) \
                     RETURNING seq, session_id, at, event, detail",
                )
                .bind(session_id)
                .bind($crate::state::record::to_millis(at))
                .bind(event)
                .bind(detail)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("append_transition", e))?;
                transition_from_row(&row)
            }

            async fn list_transitions(
                &self,
                session_id: &str,
                after_seq: u64,
                limit: u32,
            ) -> Result<Vec<$crate::state::Transition>, $crate::state::StateError> {
                $crate::state::record::check_id("session_id", session_id)?;
                let limit = limit.min($crate::state::MAX_PAGE_LEN);
                let rows = sqlx::query(
                    "SELECT seq, session_id, at, event, detail FROM cma_transitions \
                     WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(session_id)
                .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("list_transitions", e))?;
                collect(rows, transition_from_row)
            }

            async fn record_webhook(
                &self,
                webhook_id: &str,
                received_at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::state::StateError> {
                $crate::state::record::check_id("webhook_id", webhook_id)?;
                $crate::state::record::check_time("received_at", received_at)?;
                let done = sqlx::query(
                    "INSERT INTO cma_webhooks (webhook_id, received_at) VALUES ($1, $2) \
                     ON CONFLICT (webhook_id) DO NOTHING",
                )
                .bind(webhook_id)
                .bind($crate::state::record::to_millis(received_at))
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("record_webhook", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn prune_webhooks(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::state::StateError> {
                let done = sqlx::query("DELETE FROM cma_webhooks WHERE received_at < $1")
                    .bind($crate::state::record::to_millis(before))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("prune_webhooks", e))?;
                Ok(done.rows_affected())
            }

            async fn claim_lease(
                &self,
                claim: &$crate::state::LeaseClaim,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::state::Lease, $crate::state::StateError> {
                use $crate::state::record::{check_time, expiry_millis, to_millis};
                claim.validate()?;
                check_time("now", now)?;
                let op = "claim_lease";
                let sql = format!(
                    "INSERT INTO cma_leases ({LEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (work_id) DO UPDATE SET session_id = excluded.session_id, \
                     owner = excluded.owner, \
                     acquired_at = CASE WHEN cma_leases.owner = excluded.owner \
                         THEN cma_leases.acquired_at ELSE excluded.acquired_at END, \
                     expires_at = excluded.expires_at \
                     WHERE cma_leases.owner = excluded.owner OR cma_leases.expires_at <= $4 \
                     RETURNING {LEASE_COLUMNS}"
                );
                // The holder may release between the failed claim and the look-up; claim again then.
                for _ in 0..3 {
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(&claim.work_id)
                        .bind(&claim.session_id)
                        .bind(&claim.owner)
                        .bind(to_millis(now))
                        .bind(expiry_millis(now, claim.ttl))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| $crate::state::sql::map_err(op, e))?;
                    if let Some(row) = row {
                        return lease_from_row(&row);
                    }
                    if let Some(held) = self.get_lease(&claim.work_id).await? {
                        return Err($crate::state::StateError::LeaseHeld {
                            work_id: held.work_id,
                            owner: held.owner,
                            expires_at: held.expires_at,
                        });
                    }
                }
                Err($crate::state::StateError::Conflict {
                    what: "lease",
                    id: claim.work_id.clone(),
                    reason: "claimed and released concurrently, repeatedly".to_owned(),
                })
            }

            async fn renew_lease(
                &self,
                work_id: &str,
                owner: &str,
                ttl: std::time::Duration,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::state::Lease, $crate::state::StateError> {
                use $crate::state::record::{check_id, check_time, check_ttl, expiry_millis};
                check_id("work_id", work_id)?;
                check_id("owner", owner)?;
                check_ttl(ttl)?;
                check_time("now", now)?;
                let sql = format!(
                    "UPDATE cma_leases SET expires_at = $3 WHERE work_id = $1 AND owner = $2 \
                     RETURNING {LEASE_COLUMNS}"
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(work_id)
                    .bind(owner)
                    .bind(expiry_millis(now, ttl))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("renew_lease", e))?;
                match row {
                    Some(row) => lease_from_row(&row),
                    None => Err($crate::state::StateError::LeaseLost {
                        work_id: work_id.to_owned(),
                        owner: owner.to_owned(),
                    }),
                }
            }

            async fn release_lease(&self, work_id: &str, owner: &str) -> Result<bool, $crate::state::StateError> {
                $crate::state::record::check_id("work_id", work_id)?;
                $crate::state::record::check_id("owner", owner)?;
                let done = sqlx::query("DELETE FROM cma_leases WHERE work_id = $1 AND owner = $2")
                    .bind(work_id)
                    .bind(owner)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("release_lease", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_lease(
                &self,
                work_id: &str,
            ) -> Result<Option<$crate::state::Lease>, $crate::state::StateError> {
                $crate::state::record::check_id("work_id", work_id)?;
                let sql = format!("SELECT {LEASE_COLUMNS} FROM cma_leases WHERE work_id = $1");
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(work_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("get_lease", e))?
                    .as_ref()
                    .map(lease_from_row)
                    .transpose()
            }

            async fn list_leases(
                &self,
                owner: Option<&str>,
            ) -> Result<Vec<$crate::state::Lease>, $crate::state::StateError> {
                $crate::state::record::check_opt_id("owner", owner)?;
                let limit = i64::from($crate::state::MAX_PAGE_LEN);
                let rows = match owner {
                    Some(owner) => {
                        let sql = format!(
                            "SELECT {LEASE_COLUMNS} FROM cma_leases WHERE owner = $1 ORDER BY work_id LIMIT $2"
                        );
                        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(owner).bind(limit).fetch_all(&self.pool).await
                    }
                    None => {
                        let sql = format!("SELECT {LEASE_COLUMNS} FROM cma_leases ORDER BY work_id LIMIT $1");
                        sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(limit).fetch_all(&self.pool).await
                    }
                }
                .map_err(|e| $crate::state::sql::map_err("list_leases", e))?;
                collect(rows, lease_from_row)
            }

            async fn put_sandbox(&self, record: &$crate::state::SandboxRecord) -> Result<(), $crate::state::StateError> {
                record.validate()?;
                sqlx::query(
                    "INSERT INTO cma_sandboxes (backend, sandbox_id, session_id, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (backend, sandbox_id) DO UPDATE SET \
                     session_id = excluded.session_id, created_at = excluded.created_at",
                )
                .bind(&record.backend)
                .bind(&record.sandbox_id)
                .bind(record.session_id.as_deref())
                .bind($crate::state::record::to_millis(record.created_at))
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("put_sandbox", e))?;
                Ok(())
            }

            async fn get_sandbox(
                &self,
                backend: &str,
                sandbox_id: &str,
            ) -> Result<Option<$crate::state::SandboxRecord>, $crate::state::StateError> {
                $crate::state::record::check_id("backend", backend)?;
                $crate::state::record::check_id("sandbox_id", sandbox_id)?;
                sqlx::query(
                    "SELECT backend, sandbox_id, session_id, created_at FROM cma_sandboxes \
                     WHERE backend = $1 AND sandbox_id = $2",
                )
                .bind(backend)
                .bind(sandbox_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("get_sandbox", e))?
                .as_ref()
                .map(sandbox_from_row)
                .transpose()
            }

            async fn list_sandboxes(
                &self,
                query: &$crate::state::SandboxQuery,
            ) -> Result<Vec<$crate::state::SandboxRecord>, $crate::state::StateError> {
                let limit = i64::from(query.validate()?);
                // One statement for every combination: a NULL parameter disables its filter.
                let (after_backend, after_id) = match &query.after {
                    Some((b, id)) => (Some(b.as_str()), Some(id.as_str())),
                    None => (None, None),
                };
                let rows = sqlx::query(
                    "SELECT backend, sandbox_id, session_id, created_at FROM cma_sandboxes \
                     WHERE ($1 IS NULL OR backend = $1) \
                     AND ($2 IS NULL OR backend > $2 OR (backend = $2 AND sandbox_id > $3)) \
                     ORDER BY backend, sandbox_id LIMIT $4",
                )
                .bind(query.backend.as_deref())
                .bind(after_backend)
                .bind(after_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("list_sandboxes", e))?;
                collect(rows, sandbox_from_row)
            }

            async fn remove_sandbox(&self, backend: &str, sandbox_id: &str) -> Result<bool, $crate::state::StateError> {
                $crate::state::record::check_id("backend", backend)?;
                $crate::state::record::check_id("sandbox_id", sandbox_id)?;
                let done = sqlx::query("DELETE FROM cma_sandboxes WHERE backend = $1 AND sandbox_id = $2")
                    .bind(backend)
                    .bind(sandbox_id)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("remove_sandbox", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn put_egress_policy(
                &self,
                record: &$crate::state::EgressPolicyRecord,
            ) -> Result<(), $crate::state::StateError> {
                record.validate()?;
                sqlx::query(
                    "INSERT INTO cma_egress_policies (policy_id, version, fingerprint, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (policy_id) DO UPDATE SET \
                     version = excluded.version, fingerprint = excluded.fingerprint, \
                     updated_at = excluded.updated_at",
                )
                .bind(&record.policy_id)
                .bind(i64::try_from(record.version).unwrap_or(i64::MAX))
                .bind(&record.fingerprint)
                .bind($crate::state::record::to_millis(record.updated_at))
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("put_egress_policy", e))?;
                Ok(())
            }

            async fn get_egress_policy(
                &self,
                policy_id: &str,
            ) -> Result<Option<$crate::state::EgressPolicyRecord>, $crate::state::StateError> {
                $crate::state::record::check_id("policy_id", policy_id)?;
                sqlx::query(
                    "SELECT policy_id, version, fingerprint, updated_at FROM cma_egress_policies \
                     WHERE policy_id = $1",
                )
                .bind(policy_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("get_egress_policy", e))?
                .as_ref()
                .map(policy_from_row)
                .transpose()
            }

            async fn list_egress_policies(
                &self,
            ) -> Result<Vec<$crate::state::EgressPolicyRecord>, $crate::state::StateError> {
                let rows = sqlx::query(
                    "SELECT policy_id, version, fingerprint, updated_at FROM cma_egress_policies \
                     ORDER BY policy_id LIMIT $1",
                )
                .bind(i64::from($crate::state::MAX_PAGE_LEN))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("list_egress_policies", e))?;
                collect(rows, policy_from_row)
            }

            async fn remove_egress_policy(&self, policy_id: &str) -> Result<bool, $crate::state::StateError> {
                $crate::state::record::check_id("policy_id", policy_id)?;
                let done = sqlx::query("DELETE FROM cma_egress_policies WHERE policy_id = $1")
                    .bind(policy_id)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("remove_egress_policy", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn put_secret_metadata(
                &self,
                record: &$crate::state::SecretMetadata,
            ) -> Result<(), $crate::state::StateError> {
                record.validate()?;
                sqlx::query(
                    "INSERT INTO cma_secrets (name, version, fingerprint, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                     version = excluded.version, fingerprint = excluded.fingerprint, \
                     updated_at = excluded.updated_at",
                )
                .bind(&record.name)
                .bind(i64::try_from(record.version).unwrap_or(i64::MAX))
                .bind(&record.fingerprint)
                .bind($crate::state::record::to_millis(record.updated_at))
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("put_secret_metadata", e))?;
                Ok(())
            }

            async fn get_secret_metadata(
                &self,
                name: &str,
            ) -> Result<Option<$crate::state::SecretMetadata>, $crate::state::StateError> {
                $crate::state::record::check_id("name", name)?;
                sqlx::query("SELECT name, version, fingerprint, updated_at FROM cma_secrets WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("get_secret_metadata", e))?
                    .as_ref()
                    .map(secret_from_row)
                    .transpose()
            }

            async fn list_secret_metadata(
                &self,
            ) -> Result<Vec<$crate::state::SecretMetadata>, $crate::state::StateError> {
                let rows = sqlx::query(
                    "SELECT name, version, fingerprint, updated_at FROM cma_secrets ORDER BY name LIMIT $1",
                )
                .bind(i64::from($crate::state::MAX_PAGE_LEN))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("list_secret_metadata", e))?;
                collect(rows, secret_from_row)
            }

            async fn remove_secret_metadata(&self, name: &str) -> Result<bool, $crate::state::StateError> {
                $crate::state::record::check_id("name", name)?;
                let done = sqlx::query("DELETE FROM cma_secrets WHERE name = $1")
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("remove_secret_metadata", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn append_egress_audit(
                &self,
                entry: &$crate::state::EgressAuditEntry,
            ) -> Result<u64, $crate::state::StateError> {
                entry.validate()?;
                let seq: i64 = sqlx::query_scalar(
                    "INSERT INTO cma_egress_audit (at, session_id, sandbox_id, host, allowed, record) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                )
                .bind($crate::state::record::to_millis(entry.at))
                .bind(entry.session_id.as_deref())
                .bind(entry.sandbox_id.as_deref())
                .bind(&entry.host)
                .bind(i64::from(entry.allowed))
                .bind(&entry.record)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| $crate::state::sql::map_err("append_egress_audit", e))?;
                $crate::state::record::u64_from_db("seq", seq)
            }

            async fn list_egress_audit(
                &self,
                session_id: Option<&str>,
                after_seq: u64,
                limit: u32,
            ) -> Result<Vec<$crate::state::EgressAuditEntry>, $crate::state::StateError> {
                $crate::state::record::check_opt_id("session_id", session_id)?;
                let limit = limit.min($crate::state::MAX_PAGE_LEN);
                let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
                let rows = match session_id {
                    Some(session_id) => sqlx::query(
                        "SELECT seq, at, session_id, sandbox_id, host, allowed, record \
                         FROM cma_egress_audit WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .bind(session_id)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await,
                    None => sqlx::query(
                        "SELECT seq, at, session_id, sandbox_id, host, allowed, record \
                         FROM cma_egress_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                    )
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await,
                }
                .map_err(|e| $crate::state::sql::map_err("list_egress_audit", e))?;
                collect(rows, audit_from_row)
            }

            async fn prune_egress_audit(
                &self,
                before: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::state::StateError> {
                let done = sqlx::query("DELETE FROM cma_egress_audit WHERE at < $1")
                    .bind($crate::state::record::to_millis(before))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::state::sql::map_err("prune_egress_audit", e))?;
                Ok(done.rows_affected())
            }
        }
    };
}

pub(crate) use sql_state_store;

#[cfg(test)]
mod tests {
    use super::*;

    static MIGRATIONS: [Migration; 2] = [
        Migration {
            version: 1,
            sql: "one",
        },
        Migration {
            version: 2,
            sql: "two",
        },
    ];

    #[test]
    fn pending_skips_applied_and_refuses_newer_schemas() {
        assert_eq!(pending(None, &MIGRATIONS).unwrap().len(), 2);
        assert_eq!(pending(Some(1), &MIGRATIONS).unwrap()[0].sql, "two");
        assert!(pending(Some(2), &MIGRATIONS).unwrap().is_empty());
        let newer = pending(Some(3), &MIGRATIONS).unwrap_err();
        assert_eq!(newer.kind(), crate::state::StateErrorKind::Corrupt);
    }
}
