-- cma-store StateStore schema, version 2 (SQLite): the egress proxy's audit log.
CREATE TABLE cma_egress_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    session_id TEXT,
    sandbox_id TEXT,
    host TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX cma_egress_audit_by_session ON cma_egress_audit (session_id, seq);
CREATE INDEX cma_egress_audit_by_at ON cma_egress_audit (at);
