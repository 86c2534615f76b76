-- Security at rest (R-SEC-7, R-SEC-8); see the SQLite twin for the why.
ALTER TABLE audit_events ADD COLUMN seq bigint;
ALTER TABLE audit_events ADD COLUMN prev_hash text;
ALTER TABLE audit_events ADD COLUMN hash text;
CREATE UNIQUE INDEX audit_events_chain_idx ON audit_events (tenant_id, seq);

CREATE TABLE system_audit_events (
    id           uuid        NOT NULL PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    actor_key_id uuid,
    action       text        NOT NULL,
    target       text,
    request_id   text,
    client_addr  text,
    details      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    seq          bigint      NOT NULL UNIQUE,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL
);

ALTER TABLE batches ADD COLUMN payload_purged_at timestamptz;
CREATE INDEX batches_finished_idx ON batches (completed_at)
    WHERE status IN ('completed', 'failed');
CREATE INDEX batch_errors_created_idx ON batch_errors (created_at);
