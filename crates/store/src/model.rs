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
