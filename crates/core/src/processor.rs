//! The processor contract: one record in, zero or more records out, or a
//! per-record error that is captured and never stops the batch (unless the
//! pipeline says `on_error: fail_batch`).

use crate::{ErrorCode, Record};
use uuid::Uuid;

/// Where a record is in the system, for processors that need to know
/// (scripts see it as `ctx`, `dedupe` and `hash` key on the tenant).
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    pub tenant_id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_name: &'a str,
    pub config_version: i64,
    pub batch_id: Uuid,
    /// Position of the record in the submitted batch (0-based).
    pub record_index: u64,
}

/// Why one record failed one processor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProcessError {
    pub code: ErrorCode,
    /// Human-readable. Must not contain record values that could be
    /// personal data: name the path and the rule, not the value.
    pub message: String,
}

impl ProcessError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A built, ready-to-run processor. Built once per pipeline config
/// version and shared by every worker thread, so it must be `Send + Sync`;
/// per-thread state (a JavaScript engine) lives in thread-locals inside
/// the implementation.
pub trait Processor: Send + Sync {
    /// The config `type` this processor was built from (`"map"`, ...).
    fn type_name(&self) -> &'static str;

    /// Process one record. Push the records to emit (none drops it,
    /// several split it) onto `out`. On error, nothing pushed is kept.
    fn process(
        &self,
        record: Record,
        ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError>;
}
