//! The destination contract. A batch's output is delivered in parts; a
//! part's identity (`batch_id`, `part`) is deterministic, so delivering
//! the same part twice must leave the destination as if it was delivered
//! once (R-DEL-1).

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
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

/// One request to a destination's target, as handed to [`Calls::call`].
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// How a destination makes each request to its target. The retry wrapper
/// (`sluice_outbound::ResilientDestination`) implements it with backoff
/// and the target's circuit breaker, so that what is retried, counted by
/// the breaker and sent as a half-open probe is one request, not a whole
/// part that may take several requests.
#[async_trait::async_trait]
pub trait Calls: Send + Sync {
    /// Make one request; `request` builds it again for every try.
    async fn call<'r>(
        &self,
        request: &'r (dyn Fn() -> CallFuture<'r> + Send + Sync + 'r),
    ) -> Result<(), DeliveryError>;
}

/// [`Calls`] without retries or a breaker: each request is made once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Direct;

#[async_trait::async_trait]
impl Calls for Direct {
    async fn call<'r>(
        &self,
        request: &'r (dyn Fn() -> CallFuture<'r> + Send + Sync + 'r),
    ) -> Result<(), DeliveryError> {
        request().await
    }
}

/// A built destination, shared by every worker task.
#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    /// The config `type` this destination was built from.
    fn type_name(&self) -> &'static str;

    /// Write one part. Idempotent per (`batch_id`, `part`).
    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError>;

    /// Write one part, making every request to the target through
    /// `calls`. The default makes the whole part one request. A
    /// destination that sends a part as several requests (the webhook's
    /// chunks) overrides it: each request is then retried on its own, a
    /// retry never re-sends what the target already acknowledged, and a
    /// breaker's probe is a single request. Under a target that fails
    /// every other request, a part of three chunks retried as a whole
    /// would never get through; chunk by chunk it does.
    async fn write_through(
        &self,
        part: &OutputPart,
        calls: &dyn Calls,
    ) -> Result<(), DeliveryError> {
        calls.call(&|| Box::pin(self.write(part))).await
    }

    /// Cheap reachability check for `/readyz` and pipeline start.
    async fn healthcheck(&self) -> Result<(), DeliveryError>;
}
