-- cma-store StateStore schema, version 1 (SQLite). Times are milliseconds since the Unix epoch.
CREATE TABLE cma_sessions (
    session_id TEXT NOT NULL PRIMARY KEY,
    backend TEXT NOT NULL,
    sandbox_id TEXT,
    last_work_id TEXT,
    last_snapshot_id TEXT,
    egress_policy_id TEXT,
    status TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX cma_sessions_by_status ON cma_sessions (status, session_id);

CREATE TABLE cma_transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX cma_transitions_by_session ON cma_transitions (session_id, seq);

CREATE TABLE cma_webhooks (
    webhook_id TEXT NOT NULL PRIMARY KEY,
    received_at INTEGER NOT NULL
);
CREATE INDEX cma_webhooks_by_received_at ON cma_webhooks (received_at);

CREATE TABLE cma_leases (
    work_id TEXT NOT NULL PRIMARY KEY,
    session_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX cma_leases_by_owner ON cma_leases (owner, work_id);

CREATE TABLE cma_sandboxes (
    backend TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    session_id TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (backend, sandbox_id)
);

CREATE TABLE cma_egress_policies (
    policy_id TEXT NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE cma_secrets (
    name TEXT NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
