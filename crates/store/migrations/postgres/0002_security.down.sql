DROP INDEX IF EXISTS batch_errors_created_idx;
DROP INDEX IF EXISTS batches_finished_idx;
ALTER TABLE batches DROP COLUMN payload_purged_at;
DROP TABLE IF EXISTS system_audit_events;
DROP INDEX IF EXISTS audit_events_chain_idx;
ALTER TABLE audit_events DROP COLUMN hash;
ALTER TABLE audit_events DROP COLUMN prev_hash;
ALTER TABLE audit_events DROP COLUMN seq;
