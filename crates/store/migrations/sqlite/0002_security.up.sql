-- Security at rest (R-SEC-7, R-SEC-8).
--
-- Audit hash chain: every tenant's events are numbered (seq, from 1) and
-- each row stores the hash of the previous row of its chain and its own
-- hash = SHA-256(prev_hash || canonical row), so changing, removing or
-- reordering a row breaks the chain (`sluice audit verify`). Rows written
-- before this migration have no seq and no hash.
ALTER TABLE audit_events ADD COLUMN seq INTEGER;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX audit_events_chain_idx ON audit_events (tenant_id, seq);

-- System-level events (master key rotation, tenant erasure): one chain of
-- its own, and no foreign key, so the record of an erased tenant outlives
-- every row of that tenant. tenant_id names the tenant acted on, if any.
CREATE TABLE system_audit_events (
    id           BLOB    NOT NULL PRIMARY KEY,
    tenant_id    BLOB    NOT NULL,
    actor_key_id BLOB,
    action       TEXT    NOT NULL,
    target       TEXT,
    request_id   TEXT,
    client_addr  TEXT,
    details      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    seq          INTEGER NOT NULL UNIQUE,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
) STRICT;

-- Retention: when a finished batch's payload was deleted.
ALTER TABLE batches ADD COLUMN payload_purged_at INTEGER;
CREATE INDEX batches_finished_idx ON batches (completed_at)
    WHERE status IN ('completed', 'failed');
CREATE INDEX batch_errors_created_idx ON batch_errors (created_at);
