//! The destination contract. A batch's output is delivered in parts; a
//! part's identity (`batch_id`, `part`) is deterministic, so delivering
//! the same part twice must leave the destination as if it was delivered
//! once (R-DEL-1).

use bytes::Bytes;
use uuid::Uuid;

/// One part of a batch's output, ready to write.
#[derive(Debug, Clone)]
pub struct OutputPart {
    pub tenant_id: Uuid,
    pub pipeline_id: Uuid,
    pub batch_id: Uuid,
    /// 0-based part number within the batch.
    pub part: u32,
    /// The records, one JSON object per line, each already carrying its
    /// stable record id.
    pub ndjson: Bytes,
    pub record_count: u64,
}

/// Whether retrying a failed delivery can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Timeouts, 5xx, connection errors: retry with backoff.
    Transient,
    /// Misconfiguration, 4xx: retrying will not help.
    Permanent,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub kind: FailureKind,
    /// Safe to log and to show the tenant: no record data, no secrets.
    pub message: String,
    /// The target asked to be called again no sooner than this
    /// (`Retry-After`); the retry wrapper honours it up to its cap.
    pub retry_after: Option<std::time::Duration>,
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Transient,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A built destination, shared by every worker task.
#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    /// The config `type` this destination was built from.
    fn type_name(&self) -> &'static str;

    /// Write one part. Idempotent per (`batch_id`, `part`).
    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError>;

    /// Cheap reachability check for `/readyz` and pipeline start.
    async fn healthcheck(&self) -> Result<(), DeliveryError>;
}
