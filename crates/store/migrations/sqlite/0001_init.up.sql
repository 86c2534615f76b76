-- Sluice schema, SQLite flavour.
-- STRICT tables so a value of the wrong type is an error, not a silent
-- coercion. UUIDs are 16-byte BLOBs (they compare bytewise, so UUIDv7 ids
-- sort by creation time). Times are INTEGER milliseconds since the Unix
-- epoch, so comparisons and ordering are plain integer comparisons.
-- JSON documents are TEXT.

CREATE TABLE tenants (
    id         BLOB    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id           BLOB    NOT NULL PRIMARY KEY,
    tenant_id    BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'editor', 'reader', 'ingest')),
    prefix       TEXT    NOT NULL,
    last4        TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL,
    pipeline_ids TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    rotated_from BLOB REFERENCES api_keys (id) ON DELETE SET NULL,
    created_by   BLOB REFERENCES api_keys (id) ON DELETE SET NULL
) STRICT;
CREATE UNIQUE INDEX api_keys_secret_hash_idx ON api_keys (secret_hash);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);

CREATE TABLE pipelines (
    id         BLOB    NOT NULL PRIMARY KEY,
    tenant_id  BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('active', 'paused')),
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX pipelines_tenant_status_idx ON pipelines (tenant_id, status, id);
CREATE INDEX pipelines_tenant_id_idx ON pipelines (tenant_id, id);

CREATE TABLE pipeline_versions (
    pipeline_id BLOB    NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    config      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  BLOB REFERENCES api_keys (id) ON DELETE SET NULL,
    PRIMARY KEY (pipeline_id, version)
) STRICT;

CREATE TABLE batches (
    id               BLOB    NOT NULL PRIMARY KEY,
    tenant_id        BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    pipeline_id      BLOB    NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    config_version   INTEGER NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    record_count     INTEGER NOT NULL,
    succeeded_count  INTEGER NOT NULL DEFAULT 0,
    failed_count     INTEGER NOT NULL DEFAULT 0,
    payload_key      TEXT    NOT NULL,
    payload_bytes    INTEGER NOT NULL,
    idempotency_key  TEXT,
    body_sha256      TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER,
    not_before       INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    FOREIGN KEY (pipeline_id, config_version)
        REFERENCES pipeline_versions (pipeline_id, version) ON DELETE CASCADE
) STRICT;
CREATE INDEX batches_pipeline_status_idx ON batches (pipeline_id, status, id);
CREATE INDEX batches_pipeline_id_idx ON batches (pipeline_id, id);
CREATE INDEX batches_tenant_status_idx ON batches (tenant_id, status);
-- The queue in claim order, holding only pending and processing rows: a
-- claim walks it from the oldest entry and stops at the first claimable
-- one (not_before / lease expiry are checked on the few rows it visits).
CREATE INDEX batches_claim_idx ON batches (created_at, id, status, not_before, lease_expires_at)
    WHERE status IN ('pending', 'processing');
CREATE INDEX batches_completed_idx ON batches (pipeline_id, completed_at)
    WHERE status = 'completed';
CREATE UNIQUE INDEX batches_idempotency_idx ON batches (pipeline_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE batch_errors (
    id              BLOB    NOT NULL PRIMARY KEY,
    batch_id        BLOB    NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    record_index    INTEGER NOT NULL,
    processor_index INTEGER NOT NULL,
    processor_type  TEXT    NOT NULL,
    code            TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    record          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
) STRICT;
CREATE INDEX batch_errors_batch_idx ON batch_errors (batch_id, record_index, id);

CREATE TABLE audit_events (
    id           BLOB    NOT NULL PRIMARY KEY,
    tenant_id    BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    actor_key_id BLOB REFERENCES api_keys (id) ON DELETE SET NULL,
    action       TEXT    NOT NULL,
    target       TEXT,
    request_id   TEXT,
    client_addr  TEXT,
    details      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX audit_events_tenant_idx ON audit_events (tenant_id, id);
