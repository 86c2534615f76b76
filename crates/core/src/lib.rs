//! The vocabulary every other Sluice crate shares.
//!
//! A record is a JSON object (`serde_json::Value`). Processors are
//! synchronous and CPU-bound: they run on blocking threads in chunks, so
//! the trait is plain `fn`, never `async`. Destinations do I/O and are
//! `async`. Both report failures with a stable, SCREAMING_SNAKE error code
//! that clients can match on; the code travels unchanged from the
//! processor that raised it to the `batch_errors` table and the API.

pub mod destination;
pub mod error;
pub mod processor;

pub use destination::{DeliveryError, Destination, FailureKind, OutputPart};
pub use error::ErrorCode;
pub use processor::{ProcessError, Processor, RecordContext};

/// One JSON record. Ingestion guarantees it is an object.
pub type Record = serde_json::Value;

/// The stable id of an output record: `{batch_id}:{index}:{n}` where
/// `index` is the record's position in the submitted batch and `n` its
/// position among the records a processor chain emitted for it
/// (R-DEL-1). Every destination uses it to make redelivery idempotent.
pub fn record_id(batch_id: &uuid::Uuid, index: u64, n: u32) -> String {
    format!("{batch_id}:{index}:{n}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn record_id_has_the_documented_shape() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            record_id(&id, 42, 1),
            "00000000-0000-0000-0000-000000000000:42:1"
        );
    }
}

/// One problem found while validating a document, located by a JSON
/// pointer into that document (`/processors/1/schema`). Validators return
/// every problem they find, never only the first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same problem, with its path moved under `prefix`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}{}", self.path);
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Escape one JSON pointer reference token (RFC 6901).
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}
