-- cma-store StateStore schema, version 1 (Postgres). Times are milliseconds since the Unix epoch.
-- Ids use the "C" collation so that ordering (and keyset paging) is by bytes, as in SQLite.
CREATE TABLE cma_sessions (
    session_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    backend TEXT NOT NULL,
    sandbox_id TEXT,
    last_work_id TEXT,
    last_snapshot_id TEXT,
    egress_policy_id TEXT,
    status TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX cma_sessions_by_status ON cma_sessions (status, session_id);

CREATE TABLE cma_transitions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX cma_transitions_by_session ON cma_transitions (session_id, seq);

CREATE TABLE cma_webhooks (
    webhook_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    received_at BIGINT NOT NULL
);
CREATE INDEX cma_webhooks_by_received_at ON cma_webhooks (received_at);

CREATE TABLE cma_leases (
    work_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    session_id TEXT COLLATE "C" NOT NULL,
    owner TEXT COLLATE "C" NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX cma_leases_by_owner ON cma_leases (owner, work_id);

CREATE TABLE cma_sandboxes (
    backend TEXT COLLATE "C" NOT NULL,
    sandbox_id TEXT COLLATE "C" NOT NULL,
    session_id TEXT COLLATE "C",
    created_at BIGINT NOT NULL,
    PRIMARY KEY (backend, sandbox_id)
);

CREATE TABLE cma_egress_policies (
    policy_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE cma_secrets (
    name TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
