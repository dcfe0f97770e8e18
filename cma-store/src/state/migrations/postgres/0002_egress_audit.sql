-- cma-store StateStore schema, version 2 (Postgres): the egress proxy's audit log.
CREATE TABLE cma_egress_audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    session_id TEXT COLLATE "C",
    sandbox_id TEXT COLLATE "C",
    host TEXT NOT NULL,
    allowed BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX cma_egress_audit_by_session ON cma_egress_audit (session_id, seq);
CREATE INDEX cma_egress_audit_by_at ON cma_egress_audit (at);
