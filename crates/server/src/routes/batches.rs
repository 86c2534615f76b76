//! `/api/v1/pipelines/{id}/batches`: submit, list, read, failed records,
//! retry.

use crate::audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Envelope};
use crate::extract::{
    AppPath, AppQuery, decode_int_cursor, decode_uuid_cursor, encode_cursor, page_limit,
};
use crate::ingest::{self, Submitted};
use crate::routes::ClientAddr;
use crate::routes::pipelines::{PipelinePath, load};
use crate::state::AppState;
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_core::ErrorCode;
use sluice_store::{Batch, BatchError, BatchStatus};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A batch (Appendix A).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub config_version: i64,
    /// `pending`, `processing`, `completed` or `failed`.
    pub status: String,
    pub record_count: i64,
    /// Records that passed every processor (including those a processor
    /// dropped on purpose).
    pub succeeded_count: i64,
    pub failed_count: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Why a failed batch failed (or why its last attempt did).
    pub error: Option<String>,
    pub attempts: i32,
    pub payload_bytes: i64,
}

impl From<Batch> for BatchView {
    fn from(b: Batch) -> Self {
        Self {
            id: b.id,
            pipeline_id: b.pipeline_id,
            config_version: b.config_version,
            status: b.status.as_str().to_owned(),
            record_count: b.record_count,
            succeeded_count: b.succeeded_count,
            failed_count: b.failed_count,
            created_at: b.created_at,
            started_at: b.started_at,
            completed_at: b.completed_at,
            error: b.error,
            attempts: b.attempts,
            payload_bytes: b.payload_bytes,
        }
    }
}

/// A failed record (Appendix A).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchErrorView {
    pub record_index: i64,
    pub processor_index: i32,
    pub processor_type: String,
    pub code: String,
    pub message: String,
    /// The record as submitted, redacted.
    #[schema(value_type = Object)]
    pub record: Value,
}

impl From<BatchError> for BatchErrorView {
    fn from(e: BatchError) -> Self {
        Self {
            record_index: e.record_index,
            processor_index: e.processor_index,
            processor_type: e.processor_type,
            code: e.code,
            message: e.message,
            record: e.record,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct BatchPath {
    pub pipeline_id: Uuid,
    pub batch_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchListQuery {
    /// `pending`, `processing`, `completed` or `failed`.
    pub status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ErrorsQuery {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Submit a batch: 202 once it is durable.
#[utoipa::path(post, operation_id = "submit_batch", path = "/pipelines/{pipeline_id}/batches", tag = "batches",
    params(("pipeline_id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the original batch"),
        ("Content-Encoding" = Option<String>, Header, description = "gzip or zstd")),
    request_body(content = String, description = "A JSON array of objects (application/json) or NDJSON (application/x-ndjson)",
        content_type = "application/x-ndjson"),
    responses((status = 202, description = "Accepted and durable", body = BatchView),
        (status = 200, description = "Idempotent replay", body = BatchView),
        (status = 400), (status = 404), (status = 409, description = "IDEMPOTENCY_CONFLICT"),
        (status = 413, description = "A limit was exceeded"), (status = 415), (status = 429, description = "QUEUE_FULL")))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppPath(path): AppPath<PipelinePath>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let pipeline = load(&state, &principal, path.pipeline_id).await?;
    match ingest::submit(&state, &pipeline, &headers, body).await? {
        Submitted::Created(batch) => Ok(Envelope::accepted(BatchView::from(batch)).into_response()),
        Submitted::Replayed(batch) => Ok(Envelope::ok(BatchView::from(batch)).into_response()),
    }
}

/// Batch history, newest first.
#[utoipa::path(get, operation_id = "list_batches", path = "/pipelines/{pipeline_id}/batches", tag = "batches",
    params(("pipeline_id" = Uuid, Path), BatchListQuery),
    responses((status = 200, body = [BatchView]), (status = 404)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppPath(path): AppPath<PipelinePath>,
    AppQuery(q): AppQuery<BatchListQuery>,
) -> ApiResult<Envelope<Vec<BatchView>>> {
    load(&state, &principal, path.pipeline_id).await?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(BatchStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidQuery,
                "status must be pending, processing, completed or failed",
            )
        })?),
    };
    let after = decode_uuid_cursor("b", q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    let page = state
        .store()
        .list_batches(principal.tenant_id, path.pipeline_id, status, after, limit)
        .await?;
    Ok(Envelope::page(
        page.items.into_iter().map(BatchView::from).collect(),
        page.next_cursor
            .map(|id| encode_cursor("b", &id.to_string())),
    ))
}

async fn load_batch(state: &AppState, principal: &Principal, path: &BatchPath) -> ApiResult<Batch> {
    load(state, principal, path.pipeline_id).await?;
    state
        .store()
        .get_batch(principal.tenant_id, path.pipeline_id, path.batch_id)
        .await?
        .ok_or_else(|| ApiError::batch_not_found(path.batch_id))
}

/// Batch status and counts.
#[utoipa::path(get, operation_id = "get_batch", path = "/pipelines/{pipeline_id}/batches/{batch_id}", tag = "batches",
    params(("pipeline_id" = Uuid, Path), ("batch_id" = Uuid, Path)),
    responses((status = 200, body = BatchView), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppPath(path): AppPath<BatchPath>,
) -> ApiResult<Envelope<BatchView>> {
    Ok(Envelope::ok(BatchView::from(
        load_batch(&state, &principal, &path).await?,
    )))
}

/// Failed records with their errors, by record index.
#[utoipa::path(get, operation_id = "list_batch_errors", path = "/pipelines/{pipeline_id}/batches/{batch_id}/errors", tag = "batches",
    params(("pipeline_id" = Uuid, Path), ("batch_id" = Uuid, Path), ErrorsQuery),
    responses((status = 200, body = [BatchErrorView]), (status = 404)))]
pub async fn errors(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppPath(path): AppPath<BatchPath>,
    AppQuery(q): AppQuery<ErrorsQuery>,
) -> ApiResult<Envelope<Vec<BatchErrorView>>> {
    load_batch(&state, &principal, &path).await?;
    let after = decode_int_cursor("e", q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    let (items, next) = state
        .store()
        .list_batch_errors(
            principal.tenant_id,
            path.pipeline_id,
            path.batch_id,
            after,
            limit,
        )
        .await?;
    // Captures are stored encrypted (R-SEC-2); one that cannot be
    // decrypted is an internal error, never shown as it is stored.
    let mut views = Vec::with_capacity(items.len());
    for mut item in items {
        item.record = crate::secrets::open_record(
            state.keyring(),
            principal.tenant_id,
            item.batch_id,
            item.record_index,
            &item.record,
        )
        .map_err(ApiError::internal)?;
        views.push(BatchErrorView::from(item));
    }
    Ok(Envelope::page(
        views,
        next.map(|i| encode_cursor("e", &i.to_string())),
    ))
}

/// Re-run a failed batch.
#[utoipa::path(post, operation_id = "retry_batch", path = "/pipelines/{pipeline_id}/batches/{batch_id}/retry", tag = "batches",
    params(("pipeline_id" = Uuid, Path), ("batch_id" = Uuid, Path)),
    responses((status = 200, body = BatchView), (status = 404), (status = 409, description = "INVALID_BATCH_STATE: only failed batches")))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    AppPath(path): AppPath<BatchPath>,
) -> ApiResult<Envelope<BatchView>> {
    load_batch(&state, &principal, &path).await?;
    let batch = state
        .store()
        .retry_batch(principal.tenant_id, path.pipeline_id, path.batch_id)
        .await
        .map_err(|e| match e {
            sluice_store::StoreError::NotFound => ApiError::batch_not_found(path.batch_id),
            sluice_store::StoreError::InvalidState(_) => ApiError::new(
                ErrorCode::InvalidBatchState,
                "only a failed batch can be retried",
            ),
            other => other.into(),
        })?;
    audit::record(
        &state,
        &principal,
        &client,
        "batch.retry",
        format!("batch:{}", batch.id),
        json!({"pipeline_id": path.pipeline_id}),
    )
    .await;
    Ok(Envelope::ok(BatchView::from(batch)))
}
