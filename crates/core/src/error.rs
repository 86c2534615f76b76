//! Stable error codes. They are part of the public API: never rename one,
//! only add. `docs/api-errors.md` lists them with their HTTP status.

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($(#[$meta:meta])* $variant:ident = ($name:literal, $status:literal),)*) => {
        /// Every error code Sluice returns, to API clients and in failed-record
        /// captures. The HTTP status is the one used when the code is the
        /// outcome of a request.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum ErrorCode {
            $($(#[$meta])* $variant,)*
        }

        impl ErrorCode {
            /// All codes, in declaration order (for docs and tests).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The HTTP status answered when a request ends with this code.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// The SCREAMING_SNAKE name, as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $name,)* }
            }
        }
    };
}

error_codes! {
    // ---- request and API errors ----
    /// The request body or parameters are not acceptable.
    BadRequest = ("BAD_REQUEST", 400),
    /// The pipeline config (or another document) failed validation; `details` lists every problem.
    ValidationFailed = ("VALIDATION_FAILED", 400),
    /// The body is not valid JSON / NDJSON.
    MalformedBody = ("MALFORMED_BODY", 400),
    /// A JSON value nests deeper than the configured limit.
    NestingTooDeep = ("NESTING_TOO_DEEP", 400),
    /// A path parameter that must be a UUID is not one.
    InvalidId = ("INVALID_ID", 400),
    /// A pagination cursor is not one this server issued.
    InvalidCursor = ("INVALID_CURSOR", 400),
    /// A query parameter is invalid.
    InvalidQuery = ("INVALID_QUERY", 400),
    /// No API key, or an unknown, revoked or expired one.
    Unauthorized = ("UNAUTHORIZED", 401),
    /// The key's role does not allow this action.
    Forbidden = ("FORBIDDEN", 403),
    /// No such route.
    NotFound = ("NOT_FOUND", 404),
    /// No such pipeline (or it belongs to another tenant).
    PipelineNotFound = ("PIPELINE_NOT_FOUND", 404),
    /// No such batch.
    BatchNotFound = ("BATCH_NOT_FOUND", 404),
    /// No such API key.
    KeyNotFound = ("KEY_NOT_FOUND", 404),
    /// The route exists but not for this method.
    MethodNotAllowed = ("METHOD_NOT_ALLOWED", 405),
    /// The pipeline still has pending or processing batches.
    PipelineHasActiveBatches = ("PIPELINE_HAS_ACTIVE_BATCHES", 409),
    /// The same Idempotency-Key was used with a different body.
    IdempotencyConflict = ("IDEMPOTENCY_CONFLICT", 409),
    /// The batch is not in a state that allows this action.
    InvalidBatchState = ("INVALID_BATCH_STATE", 409),
    /// The key cannot be changed in this way (e.g. already revoked).
    InvalidKeyState = ("INVALID_KEY_STATE", 409),
    /// The body is larger than the configured limit.
    PayloadTooLarge = ("PAYLOAD_TOO_LARGE", 413),
    /// One record is larger than the configured limit.
    RecordTooLarge = ("RECORD_TOO_LARGE", 413),
    /// The batch holds more records than the configured limit.
    TooManyRecords = ("TOO_MANY_RECORDS", 413),
    /// The Content-Type is not supported.
    UnsupportedMediaType = ("UNSUPPORTED_MEDIA_TYPE", 415),
    /// The Content-Encoding is not supported.
    UnsupportedEncoding = ("UNSUPPORTED_ENCODING", 415),
    /// The request was well-formed but semantically invalid.
    UnprocessableEntity = ("UNPROCESSABLE_ENTITY", 422),
    /// Too many requests for this key or address.
    RateLimited = ("RATE_LIMITED", 429),
    /// The pipeline's or tenant's queue is full; retry later.
    QueueFull = ("QUEUE_FULL", 429),
    /// Something failed on the server; details are in its log.
    InternalError = ("INTERNAL_ERROR", 500),
    /// A dependency (database, storage) is unavailable.
    ServiceUnavailable = ("SERVICE_UNAVAILABLE", 503),

    // ---- per-record processing errors ----
    /// A record is not a JSON object.
    RecordNotObject = ("RECORD_NOT_OBJECT", 422),
    /// The record does not match the `validate` processor's schema.
    SchemaValidationFailed = ("SCHEMA_VALIDATION_FAILED", 422),
    /// A `map` op addressed a path that does not exist.
    PathNotFound = ("PATH_NOT_FOUND", 422),
    /// A `map` `test` op did not match.
    TestFailed = ("TEST_FAILED", 422),
    /// A `map` cast or case op met a value of the wrong type.
    TypeMismatch = ("TYPE_MISMATCH", 422),
    /// A `filter` condition could not be evaluated.
    FilterError = ("FILTER_ERROR", 422),
    /// The script threw or returned something unusable.
    ScriptError = ("SCRIPT_ERROR", 422),
    /// The script ran past its CPU-time limit.
    ScriptTimeout = ("SCRIPT_TIMEOUT", 422),
    /// The script ran past its memory limit.
    ScriptMemoryLimit = ("SCRIPT_MEMORY_LIMIT", 422),
    /// The script's output is larger than its limit.
    ScriptOutputTooLarge = ("SCRIPT_OUTPUT_TOO_LARGE", 422),
    /// The redact processor could not process the record.
    RedactError = ("REDACT_ERROR", 422),
    /// An enrichment call failed for every provider.
    EnrichFailed = ("ENRICH_FAILED", 422),
    /// The batch failed because `on_error` is `fail_batch`.
    BatchFailed = ("BATCH_FAILED", 422),

    // ---- delivery ----
    /// The destination refused or failed the write.
    DeliveryFailed = ("DELIVERY_FAILED", 502),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }

    #[test]
    fn codes_are_screaming_snake() {
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(!s.is_empty());
            assert!(s.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{s}");
        }
        assert_eq!(ErrorCode::PipelineNotFound.as_str(), "PIPELINE_NOT_FOUND");
        assert_eq!(
            ErrorCode::IdempotencyConflict.to_string(),
            "IDEMPOTENCY_CONFLICT"
        );
    }

    #[test]
    fn every_code_is_documented() {
        let doc = include_str!("../../../docs/api-errors.md");
        for code in ErrorCode::ALL {
            assert!(
                doc.contains(&format!("`{}`", code.as_str())),
                "{code} missing from docs/api-errors.md"
            );
        }
    }

    #[test]
    fn statuses_are_http_errors() {
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
    }
}
