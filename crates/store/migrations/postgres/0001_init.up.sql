-- Sluice schema, PostgreSQL flavour: native uuid, timestamptz and jsonb.
-- Table and column names match the SQLite schema one for one, so the same
-- statements serve both backends.

CREATE TABLE tenants (
    id         uuid        NOT NULL PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id           uuid        NOT NULL PRIMARY KEY,
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('admin', 'editor', 'reader', 'ingest')),
    prefix       text        NOT NULL,
    last4        text        NOT NULL,
    secret_hash  bytea       NOT NULL,
    pipeline_ids jsonb,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    rotated_from uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    created_by   uuid REFERENCES api_keys (id) ON DELETE SET NULL
);
CREATE UNIQUE INDEX api_keys_secret_hash_idx ON api_keys (secret_hash);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);

CREATE TABLE pipelines (
    id         uuid        NOT NULL PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('active', 'paused')),
    version    bigint      NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX pipelines_tenant_status_idx ON pipelines (tenant_id, status, id);
CREATE INDEX pipelines_tenant_id_idx ON pipelines (tenant_id, id);

CREATE TABLE pipeline_versions (
    pipeline_id uuid        NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    version     bigint      NOT NULL,
    config      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    created_by  uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    PRIMARY KEY (pipeline_id, version)
);

CREATE TABLE batches (
    id               uuid        NOT NULL PRIMARY KEY,
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    pipeline_id      uuid        NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    config_version   bigint      NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    record_count     bigint      NOT NULL,
    succeeded_count  bigint      NOT NULL DEFAULT 0,
    failed_count     bigint      NOT NULL DEFAULT 0,
    payload_key      text        NOT NULL,
    payload_bytes    bigint      NOT NULL,
    idempotency_key  text,
    body_sha256      text,
    attempts         integer     NOT NULL DEFAULT 0,
    error            text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    completed_at     timestamptz,
    not_before       timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    FOREIGN KEY (pipeline_id, config_version)
        REFERENCES pipeline_versions (pipeline_id, version) ON DELETE CASCADE
);
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
    id              uuid        NOT NULL PRIMARY KEY,
    batch_id        uuid        NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    record_index    bigint      NOT NULL,
    processor_index integer     NOT NULL,
    processor_type  text        NOT NULL,
    code            text        NOT NULL,
    message         text        NOT NULL,
    record          jsonb       NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX batch_errors_batch_idx ON batch_errors (batch_id, record_index, id);

CREATE TABLE audit_events (
    id           uuid        NOT NULL PRIMARY KEY,
    tenant_id    uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    actor_key_id uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    action       text        NOT NULL,
    target       text,
    request_id   text,
    client_addr  text,
    details      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX audit_events_tenant_idx ON audit_events (tenant_id, id);
