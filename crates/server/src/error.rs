//! One error type for every HTTP answer that is not a success, and the
//! response envelope (SPEC 2).
//!
//! Handlers, extractors and middleware all end in [`ApiError`], so every
//! failure — including the framework's own 404/405/415/422 and malformed
//! JSON — reaches the client in the same envelope with a stable code. A
//! 5xx body is generic; its detail goes to the log only. The request id
//! reaches the envelope through a task-local set by the request-id
//! middleware, so no handler has to thread it through.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_core::{ErrorCode, Problem};
use sluice_store::StoreError;

tokio::task_local! {
    /// The id of the request being served on this task.
    pub static REQUEST_ID: String;
}

/// The current request id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Vec<Problem>,
    /// Seconds, for 429 and 503 answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Vec<Problem>) -> Self {
        self.details = details;
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn validation(details: Vec<Problem>) -> Self {
        let n = details.len();
        Self::new(
            ErrorCode::ValidationFailed,
            format!(
                "validation failed with {n} problem{}",
                if n == 1 { "" } else { "s" }
            ),
        )
        .with_details(details)
    }

    pub fn pipeline_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::PipelineNotFound,
            format!("Pipeline with ID {id} not found"),
        )
    }

    pub fn batch_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::BatchNotFound,
            format!("Batch with ID {id} not found"),
        )
    }

    pub fn key_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::KeyNotFound,
            format!("API key with ID {id} not found"),
        )
    }

    /// A server-side failure: the detail is logged, the client gets a
    /// generic message.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(ErrorCode::InternalError, "internal server error")
    }

    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "dependency unavailable");
        Self::new(
            ErrorCode::ServiceUnavailable,
            "service temporarily unavailable",
        )
        .with_retry_after(5)
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::new(ErrorCode::NotFound, "not found"),
            StoreError::HasActiveBatches => ApiError::new(
                ErrorCode::PipelineHasActiveBatches,
                "the pipeline has pending or processing batches",
            ),
            StoreError::InvalidState(message) => {
                ApiError::new(ErrorCode::InvalidBatchState, message)
            }
            other => ApiError::unavailable(other),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error: ErrorDetail<'a>,
    meta: Meta,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[Problem]>::is_empty")]
    details: &'a [Problem],
}

/// `meta` of every envelope.
#[derive(Serialize, Default, utoipa::ToSchema)]
pub struct Meta {
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            success: false,
            error: ErrorDetail {
                code: self.code.as_str(),
                message: &self.message,
                details: &self.details,
            },
            meta: Meta {
                request_id: current_request_id(),
                next_cursor: None,
            },
        };
        let mut response = json_response(status, &body);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A success envelope: `{"success": true, "data": …, "meta": {…}}`.
pub struct Envelope<T> {
    pub status: StatusCode,
    pub data: T,
    pub next_cursor: Option<String>,
}

impl<T: Serialize> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Self {
            status: StatusCode::OK,
            data,
            next_cursor: None,
        }
    }

    pub fn created(data: T) -> Self {
        Self {
            status: StatusCode::CREATED,
            data,
            next_cursor: None,
        }
    }

    pub fn accepted(data: T) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            data,
            next_cursor: None,
        }
    }

    pub fn page(data: T, next_cursor: Option<String>) -> Self {
        Self {
            status: StatusCode::OK,
            data,
            next_cursor,
        }
    }
}

#[derive(Serialize)]
struct SuccessBody<'a, T> {
    success: bool,
    data: &'a T,
    meta: Meta,
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        let body = SuccessBody {
            success: true,
            data: &self.data,
            meta: Meta {
                request_id: current_request_id(),
                next_cursor: self.next_cursor,
            },
        };
        json_response(self.status, &body)
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "response serialization failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                r#"{"success":false,"error":{"code":"INTERNAL_ERROR","message":"internal server error"},"meta":{}}"#,
            )
                .into_response()
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
