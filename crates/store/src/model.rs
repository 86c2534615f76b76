//! Rows as the rest of Sluice sees them, independent of the backend.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// What an API key may do (SPEC 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Keys and everything else.
    Admin,
    /// Pipelines and batches.
    Editor,
    /// Read only.
    Reader,
    /// Submit batches only, optionally to listed pipelines.
    Ingest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Reader => "reader",
            Role::Ingest => "ingest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "editor" => Some(Role::Editor),
            "reader" => Some(Role::Reader),
            "ingest" => Some(Role::Ingest),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The visible start of the key (`slk_1a2b3c4d`), safe to show.
    pub prefix: String,
    /// The last 4 characters of the key, safe to show.
    pub last4: String,
    /// For `ingest` keys: the only pipelines it may submit to (None = all).
    pub pipeline_ids: Option<Vec<Uuid>>,
    pub created_at: DateTime<Utc>,
    /// Set when the key was rotated: it stops working at this time.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<Uuid>,
    /// The key that created this one (None for the CLI).
    pub created_by: Option<Uuid>,
}

impl ApiKey {
    /// Whether the key authenticates requests at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| now < t)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: Role,
    pub prefix: String,
    pub last4: String,
    /// SHA-256 of the whole key. The key itself is never stored.
    pub secret_hash: Vec<u8>,
    pub pipeline_ids: Option<Vec<Uuid>>,
    pub created_by: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStatus {
    Active,
    Paused,
}

impl PipelineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStatus::Active => "active",
            PipelineStatus::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<PipelineStatus> {
        match s {
            "active" => Some(PipelineStatus::Active),
            "paused" => Some(PipelineStatus::Paused),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub status: PipelineStatus,
    /// Current config version (1 on creation, +1 per update).
    pub version: i64,
    /// The current config document, as stored.
    pub config: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineVersion {
    pub pipeline_id: Uuid,
    pub version: i64,
    pub config: Value,
    pub created_at: DateTime<Utc>,
    /// The API key that made the change (None for the CLI).
    pub created_by: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Pending => "pending",
            BatchStatus::Processing => "processing",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<BatchStatus> {
        match s {
            "pending" => Some(BatchStatus::Pending),
            "processing" => Some(BatchStatus::Processing),
            "completed" => Some(BatchStatus::Completed),
            "failed" => Some(BatchStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub pipeline_id: Uuid,
    /// The pipeline config version that processes this batch.
    pub config_version: i64,
    pub status: BatchStatus,
    pub record_count: i64,
    pub succeeded_count: i64,
    pub failed_count: i64,
    /// Object-store key of the stored payload (NDJSON).
    pub payload_key: String,
    pub payload_bytes: i64,
    pub idempotency_key: Option<String>,
    /// Hex SHA-256 of the request body, to tell an idempotent replay from
    /// a conflicting reuse of the key.
    pub body_sha256: Option<String>,
    /// Processing attempts so far.
    pub attempts: i32,
    /// Why the batch failed (or why the last attempt failed).
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Earliest time the batch may be claimed again (retry backoff).
    pub not_before: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub pipeline_id: Uuid,
    pub config_version: i64,
    pub record_count: i64,
    pub payload_key: String,
    pub payload_bytes: i64,
    pub idempotency_key: Option<String>,
    pub body_sha256: Option<String>,
}

/// How a processing attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// `Completed` or `Failed`.
    pub status: BatchStatus,
    pub succeeded_count: i64,
    pub failed_count: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchError {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub record_index: i64,
    pub processor_index: i32,
    pub processor_type: String,
    pub code: String,
    pub message: String,
    /// The record as it was submitted, redacted.
    pub record: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewBatchError {
    pub record_index: i64,
    pub processor_index: i32,
    pub processor_type: String,
    pub code: String,
    pub message: String,
    pub record: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The API key that acted (None for the CLI or an anonymous caller).
    pub actor_key_id: Option<Uuid>,
    /// `pipeline.create`, `key.rotate`, `auth.failure`, ...
    pub action: String,
    /// What was acted on (`pipeline:<id>`, `key:<id>`).
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    /// Extra structured facts; never secrets or record data.
    pub details: Value,
    pub created_at: DateTime<Utc>,
    /// Position in the tenant's hash chain, from 1 (None: written before
    /// the chain existed).
    pub seq: Option<i64>,
    /// Hex SHA-256 of the previous event of the chain (64 zeros for the
    /// first).
    pub prev_hash: Option<String>,
    /// Hex SHA-256 of `prev_hash` and this row: see [`audit_hash`].
    pub hash: Option<String>,
}

/// Which audit events a listing returns. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor_key_id: Option<Uuid>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
}

/// `prev_hash` of the first event of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash that chains an audit event to its predecessor:
/// hex SHA-256 of `prev_hash` (hex, as stored), a newline, and the
/// canonical serialization of the row: a JSON array of id, tenant id,
/// seq, actor key id, action, target, request id, client address,
/// details (object keys sorted at every level) and the creation time in
/// Unix milliseconds. Every column but the hashes themselves is covered,
/// so any change to a stored row shows.
pub fn audit_hash(prev_hash: &str, event: &AuditEvent) -> String {
    use sha2::{Digest, Sha256};
    let row = serde_json::json!([
        event.id,
        event.tenant_id,
        event.seq,
        event.actor_key_id,
        event.action,
        event.target,
        event.request_id,
        event.client_addr,
        event.details,
        event.created_at.timestamp_millis(),
    ]);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical_text(&row).as_bytes());
    hex::encode(hasher.finalize())
}

/// Compact JSON text with object keys sorted at every level, so the text
/// does not depend on how a backend stored the document (PostgreSQL's
/// `jsonb` reorders keys) or on the map's own iteration order.
fn canonical_text(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (n, key) in keys.into_iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push(':');
                    write(&map[key.as_str()], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// Why an audit chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first row that does not verify.
    pub id: Uuid,
    pub seq: Option<i64>,
    pub reason: String,
}

/// Check consecutive events of one chain (ordered by seq), continuing
/// from `prev` = (seq, hash) of the last verified event (None at the start
/// of the chain). Returns the new `prev`, or the first bad row.
pub fn verify_audit_chain(
    prev: Option<(i64, String)>,
    events: &[AuditEvent],
) -> Result<Option<(i64, String)>, ChainBreak> {
    let mut prev = prev;
    for event in events {
        let fail = |reason: String| ChainBreak {
            id: event.id,
            seq: event.seq,
            reason,
        };
        let (Some(seq), Some(prev_hash), Some(hash)) = (event.seq, &event.prev_hash, &event.hash)
        else {
            return Err(fail(
                "the row has no hash (it is not part of the chain)".into(),
            ));
        };
        let (expected_seq, expected_prev) = match &prev {
            None => (1, GENESIS_HASH.to_owned()),
            Some((s, h)) => (s + 1, h.clone()),
        };
        if seq != expected_seq {
            return Err(fail(format!(
                "sequence number {seq} where {expected_seq} was expected (a row was removed or inserted)"
            )));
        }
        if *prev_hash != expected_prev {
            return Err(fail(
                "prev_hash does not match the previous row's hash".into(),
            ));
        }
        if audit_hash(prev_hash, event) != *hash {
            return Err(fail(
                "the row's contents do not match its hash (it was modified)".into(),
            ));
        }
        prev = Some((seq, hash.clone()));
    }
    Ok(prev)
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub tenant_id: Uuid,
    pub actor_key_id: Option<Uuid>,
    pub action: String,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    pub details: Value,
}

/// Aggregates for `GET /pipelines/{id}` (R-PROC-3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineStats {
    /// Records delivered by completed batches.
    pub records_processed: i64,
    /// Records that failed a processor.
    pub records_failed: i64,
    pub last_run_at: Option<DateTime<Utc>>,
    /// Pending and processing batches.
    pub queue_batches: i64,
    /// Payload bytes of pending and processing batches.
    pub queue_bytes: i64,
    /// Acceptance-to-completion times of the most recent completed
    /// batches, in milliseconds (at most 1000, newest first).
    pub recent_latencies_ms: Vec<i64>,
}

/// Queue depth of one pipeline, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    pub tenant_id: Uuid,
    pub pipeline_id: Uuid,
    pub batches: i64,
    pub bytes: i64,
}

/// One page of a keyset-paginated listing, newest first. `next_cursor`
/// is the id to pass as `after` for the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<Uuid>,
}
