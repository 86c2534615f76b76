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
    // Every record gets one: written without the formatting machinery.
    let mut id = String::with_capacity(36 + 2 + 20 + 10);
    let mut buf = uuid::Uuid::encode_buffer();
    id.push_str(batch_id.hyphenated().encode_lower(&mut buf));
    id.push(':');
    push_decimal(&mut id, index);
    id.push(':');
    push_decimal(&mut id, u64::from(n));
    id
}

fn push_decimal(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
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
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        for (index, n) in [(0, 0), (9, 10), (1_000_000, 7), (u64::MAX, u32::MAX)] {
            assert_eq!(record_id(&id, index, n), format!("{id}:{index}:{n}"));
        }
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
