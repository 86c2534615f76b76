//! `/api/v1/pipelines`: create, list, read, update (new immutable
//! version), versions, start, stop, delete.

use crate::audit;
use crate::auth::Principal;
use crate::destination_health;
use crate::error::{ApiError, ApiResult, Envelope};
use crate::extract::{
    AppPath, AppQuery, JsonValue, decode_int_cursor, decode_uuid_cursor, encode_cursor, page_limit,
};
use crate::keyring::Keyring;
use crate::routes::ClientAddr;
use crate::secrets;
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_config::PipelineSpec;
use sluice_core::{ErrorCode, Problem};
use sluice_store::{Pipeline, PipelineStats, PipelineStatus, PipelineVersion};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A pipeline (Appendix A).
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineView {
    pub id: Uuid,
    pub name: String,
    /// `active` or `paused`.
    pub status: String,
    pub version: i64,
    /// The current config; secret fields are masked.
    #[schema(value_type = Object)]
    pub config: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only in `GET /pipelines/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<PipelineMetrics>,
    /// Only in `GET /pipelines/{id}`: circuit breakers and retries of the
    /// pipeline's outbound calls, as seen by this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
}

/// Outbound call health of one pipeline (R-DEL-2), from the circuit
/// breakers of this process (each worker process keeps its own).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The destination's breaker, and one per enrichment provider that has
    /// been called.
    pub breakers: Vec<BreakerView>,
    /// Retries of outbound calls since the process started.
    pub retries_total: u64,
    /// The last health check of the destination in this process (run on
    /// create, update, start, process start and `/readyz` rounds); null
    /// until the first one has finished. A failing check does not stop
    /// the pipeline: batches wait and are retried.
    #[schema(required = true)]
    pub health: Option<crate::destination_health::HealthView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerView {
    /// `destination`, or `processors/<i>/<provider>`.
    pub target: String,
    /// `destination` or `provider`.
    pub kind: String,
    /// `closed`, `half_open` or `open`.
    pub state: String,
    /// Transient failures among the last `window` calls.
    pub failures_in_window: u32,
    pub window: u32,
    /// Times the breaker opened since the process started.
    pub opened_total: u64,
    pub retries_total: u64,
    pub calls_total: u64,
}

/// The pipeline's breakers in this process.
pub fn delivery_of(pipeline_id: Uuid) -> DeliveryView {
    let prefix = format!("{pipeline_id}/");
    let breakers: Vec<BreakerView> = sluice_outbound::snapshots(&prefix)
        .into_iter()
        .map(|s| BreakerView {
            target: s.target[prefix.len()..].to_owned(),
            kind: s.kind.to_owned(),
            state: s.state.as_str().to_owned(),
            failures_in_window: s.failures_in_window,
            window: s.window,
            opened_total: s.opened_total,
            retries_total: s.retries_total,
            calls_total: s.calls_total,
        })
        .collect();
    DeliveryView {
        retries_total: breakers.iter().map(|b| b.retries_total).sum(),
        breakers,
        health: None,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineMetrics {
    pub records_processed: i64,
    pub records_failed: i64,
    /// failed / (processed + failed), 0 when nothing ran.
    pub error_rate: f64,
    /// Acceptance-to-delivery latency of recent batches.
    pub latency_ms: Latency,
    pub last_run_at: Option<DateTime<Utc>>,
    pub queue_depth: QueueDepthView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Latency {
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueDepthView {
    pub batches: i64,
    pub bytes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    pub version: i64,
    #[schema(value_type = Object)]
    pub config: Value,
    pub created_at: DateTime<Utc>,
    /// The API key that made the change (null for the CLI).
    pub created_by: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedView {
    pub id: Uuid,
    pub deleted: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `active` or `paused`.
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct PipelinePath {
    pub pipeline_id: Uuid,
}

impl PipelineView {
    /// The view of a stored pipeline, its secret fields masked.
    pub fn from_row(keyring: &Keyring, p: Pipeline, metrics: Option<PipelineMetrics>) -> Self {
        let mut config = p.config;
        secrets::mask_config(keyring, p.tenant_id, p.id, &mut config);
        Self {
            id: p.id,
            name: p.name,
            status: p.status.as_str().to_owned(),
            version: p.version,
            config,
            created_at: p.created_at,
            updated_at: p.updated_at,
            metrics,
            delivery: None,
        }
    }
}

impl VersionView {
    /// The view of a stored version, its secret fields masked.
    fn from_row(keyring: &Keyring, tenant_id: Uuid, v: PipelineVersion) -> Self {
        let mut config = v.config;
        secrets::mask_config(keyring, tenant_id, v.pipeline_id, &mut config);
        Self {
            version: v.version,
            config,
            created_at: v.created_at,
            created_by: v.created_by,
        }
    }
}

/// Validate a config document completely (R-API-1) and return it in its
/// normalized stored form. Compiling schemas and scripts is CPU work, so
/// it runs on a blocking thread.
pub async fn validated_config(doc: Value) -> ApiResult<(PipelineSpec, Value)> {
    let mut spec = tokio::task::spawn_blocking(move || sluice_components::validate_pipeline(&doc))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::validation)?;
    if spec.destination.is_none() {
        return Err(ApiError::validation(vec![Problem::new(
            "/destination",
            "required: where the pipeline delivers its records",
        )]));
    }
    spec.name = spec.name.trim().to_owned();
    let stored = serde_json::to_value(&spec).map_err(ApiError::internal)?;
    Ok((spec, stored))
}

pub async fn load(state: &AppState, principal: &Principal, id: Uuid) -> ApiResult<Pipeline> {
    state
        .store()
        .get_pipeline(principal.tenant_id, id)
        .await?
        .ok_or_else(|| ApiError::pipeline_not_found(id))
}

fn metrics_of(stats: PipelineStats) -> PipelineMetrics {
    let total = stats.records_processed + stats.records_failed;
    let mut lat = stats.recent_latencies_ms;
    lat.sort_unstable();
    let pct = |p: f64| -> Option<i64> {
        if lat.is_empty() {
            None
        } else {
            let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
            Some(lat[rank - 1])
        }
    };
    PipelineMetrics {
        records_processed: stats.records_processed,
        records_failed: stats.records_failed,
        error_rate: if total == 0 {
            0.0
        } else {
            stats.records_failed as f64 / total as f64
        },
        latency_ms: Latency {
            p50: pct(0.50),
            p95: pct(0.95),
            p99: pct(0.99),
        },
        last_run_at: stats.last_run_at,
        queue_depth: QueueDepthView {
            batches: stats.queue_batches,
            bytes: stats.queue_bytes,
        },
    }
}

/// Create a pipeline.
#[utoipa::path(post, operation_id = "create_pipeline", path = "/pipelines", tag = "pipelines",
    request_body(content = Object, description = "Pipeline config (SPEC Appendix A)"),
    responses((status = 201, description = "Created", body = PipelineView),
        (status = 400, description = "VALIDATION_FAILED with every problem")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    JsonValue(doc): JsonValue,
) -> ApiResult<Envelope<PipelineView>> {
    let (spec, mut config) = validated_config(doc).await?;
    // Secret fields are encrypted before the config reaches the database,
    // bound to the pipeline's id, which is therefore chosen here.
    let id = Uuid::now_v7();
    secrets::encrypt_config(state.keyring(), principal.tenant_id, id, &mut config);
    let pipeline = state
        .store()
        .create_pipeline_with_id(
            id,
            principal.tenant_id,
            &spec.name,
            &config,
            PipelineStatus::Active,
            Some(principal.key_id),
        )
        .await?;
    audit::record(
        &state,
        &principal,
        &client,
        "pipeline.create",
        format!("pipeline:{}", pipeline.id),
        json!({"version": pipeline.version}),
    )
    .await;
    // Is the target reachable? Checked in the background: a target that
    // is down does not reject the pipeline (see `delivery.health`).
    destination_health::spawn_check(&state, pipeline.clone());
    Ok(Envelope::created(PipelineView::from_row(
        state.keyring(),
        pipeline,
        None,
    )))
}

/// List pipelines, newest first.
#[utoipa::path(get, operation_id = "list_pipelines", path = "/pipelines", tag = "pipelines", params(ListQuery),
    responses((status = 200, description = "A page of pipelines", body = [PipelineView])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(q): AppQuery<ListQuery>,
) -> ApiResult<Envelope<Vec<PipelineView>>> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(PipelineStatus::parse(s).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidQuery, "status must be active or paused")
        })?),
    };
    let after = decode_uuid_cursor("p", q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    let page = state
        .store()
        .list_pipelines(principal.tenant_id, status, after, limit)
        .await?;
    let next = page
        .next_cursor
        .map(|id| encode_cursor("p", &id.to_string()));
    let items = page
        .items
        .into_iter()
        .map(|p| PipelineView::from_row(state.keyring(), p, None))
        .collect();
    Ok(Envelope::page(items, next))
}

/// A pipeline with its current config and metrics.
#[utoipa::path(get, operation_id = "get_pipeline", path = "/pipelines/{pipeline_id}", tag = "pipelines",
    params(("pipeline_id" = Uuid, Path)),
    responses((status = 200, body = PipelineView), (status = 404, description = "PIPELINE_NOT_FOUND")))]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppPath(path): AppPath<PipelinePath>,
) -> ApiResult<Envelope<PipelineView>> {
    let pipeline = load(&state, &principal, path.pipeline_id).await?;
    let stats = state
        .store()
        .pipeline_stats(principal.tenant_id, pipeline.id)
        .await?;
    let id = pipeline.id;
    let health = state.destination_health().get(id);
    // Not checked by this process yet, or for an older version (the
    // update was made through another process): check in the background.
    if health
        .as_ref()
        .is_none_or(|h| h.version != pipeline.version)
    {
        destination_health::spawn_check(&state, pipeline.clone());
    }
    let mut view = PipelineView::from_row(state.keyring(), pipeline, Some(metrics_of(stats)));
    let mut delivery = delivery_of(id);
    delivery.health = health;
    view.delivery = Some(delivery);
    Ok(Envelope::ok(view))
}

/// Replace the config: a new immutable version.
#[utoipa::path(put, operation_id = "update_pipeline", path = "/pipelines/{pipeline_id}", tag = "pipelines",
    params(("pipeline_id" = Uuid, Path)),
    request_body(content = Object, description = "Pipeline config (SPEC Appendix A)"),
    responses((status = 200, body = PipelineView), (status = 400), (status = 404)))]
pub async fn update(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    AppPath(path): AppPath<PipelinePath>,
    JsonValue(doc): JsonValue,
) -> ApiResult<Envelope<PipelineView>> {
    let current = load(&state, &principal, path.pipeline_id).await?;
    // A secret sent back in its masked form keeps the stored secret.
    let mut doc = doc;
    secrets::restore_masked(
        state.keyring(),
        principal.tenant_id,
        path.pipeline_id,
        &mut doc,
        &current.config,
    )
    .map_err(ApiError::validation)?;
    let (spec, mut config) = validated_config(doc).await?;
    secrets::encrypt_config(
        state.keyring(),
        principal.tenant_id,
        path.pipeline_id,
        &mut config,
    );
    let pipeline = state
        .store()
        .update_pipeline(
            principal.tenant_id,
            path.pipeline_id,
            &spec.name,
            &config,
            Some(principal.key_id),
        )
        .await
        .map_err(|e| not_found_as_pipeline(e, path.pipeline_id))?;
    audit::record(
        &state,
        &principal,
        &client,
        "pipeline.update",
        format!("pipeline:{}", pipeline.id),
        json!({"version": pipeline.version}),
    )
    .await;
    destination_health::spawn_check(&state, pipeline.clone());
    Ok(Envelope::ok(PipelineView::from_row(
        state.keyring(),
        pipeline,
        None,
    )))
}

/// Config history, newest first.
#[utoipa::path(get, operation_id = "list_pipeline_versions", path = "/pipelines/{pipeline_id}/versions", tag = "pipelines",
    params(("pipeline_id" = Uuid, Path), PageQuery),
    responses((status = 200, body = [VersionView]), (status = 404)))]
pub async fn versions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppPath(path): AppPath<PipelinePath>,
    AppQuery(q): AppQuery<PageQuery>,
) -> ApiResult<Envelope<Vec<VersionView>>> {
    load(&state, &principal, path.pipeline_id).await?;
    let after = decode_int_cursor("v", q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    let (items, next) = state
        .store()
        .list_pipeline_versions(principal.tenant_id, path.pipeline_id, after, limit)
        .await?;
    Ok(Envelope::page(
        items
            .into_iter()
            .map(|v| VersionView::from_row(state.keyring(), principal.tenant_id, v))
            .collect(),
        next.map(|v| encode_cursor("v", &v.to_string())),
    ))
}

/// Activate: queued batches are processed, oldest first.
#[utoipa::path(post, operation_id = "start_pipeline", path = "/pipelines/{pipeline_id}/start", tag = "pipelines",
    params(("pipeline_id" = Uuid, Path)), responses((status = 200, body = PipelineView), (status = 404)))]
pub async fn start(
    state: State<AppState>,
    principal: Extension<Principal>,
    client: Extension<ClientAddr>,
    path: AppPath<PipelinePath>,
) -> ApiResult<Envelope<PipelineView>> {
    set_status(state, principal, client, path, PipelineStatus::Active).await
}

/// Pause: batches are still accepted and wait.
#[utoipa::path(post, operation_id = "stop_pipeline", path = "/pipelines/{pipeline_id}/stop", tag = "pipelines",
    params(("pipeline_id" = Uuid, Path)), responses((status = 200, body = PipelineView), (status = 404)))]
pub async fn stop(
    state: State<AppState>,
    principal: Extension<Principal>,
    client: Extension<ClientAddr>,
    path: AppPath<PipelinePath>,
) -> ApiResult<Envelope<PipelineView>> {
    set_status(state, principal, client, path, PipelineStatus::Paused).await
}

async fn set_status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    AppPath(path): AppPath<PipelinePath>,
    status: PipelineStatus,
) -> ApiResult<Envelope<PipelineView>> {
    let pipeline = state
        .store()
        .set_pipeline_status(principal.tenant_id, path.pipeline_id, status)
        .await
        .map_err(|e| not_found_as_pipeline(e, path.pipeline_id))?;
    let action = match status {
        PipelineStatus::Active => {
            destination_health::spawn_check(&state, pipeline.clone());
            "pipeline.start"
        }
        PipelineStatus::Paused => "pipeline.stop",
    };
    audit::record(
        &state,
        &principal,
        &client,
        action,
        format!("pipeline:{}", pipeline.id),
        json!({}),
    )
    .await;
    Ok(Envelope::ok(PipelineView::from_row(
        state.keyring(),
        pipeline,
        None,
    )))
}

/// Delete; refused with 409 while batches are pending or processing.
#[utoipa::path(delete, operation_id = "delete_pipeline", path = "/pipelines/{pipeline_id}", tag = "pipelines",
    params(("pipeline_id" = Uuid, Path)),
    responses((status = 200, body = DeletedView), (status = 404), (status = 409, description = "PIPELINE_HAS_ACTIVE_BATCHES")))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    AppPath(path): AppPath<PipelinePath>,
) -> ApiResult<Envelope<DeletedView>> {
    let keys = state
        .store()
        .delete_pipeline(principal.tenant_id, path.pipeline_id)
        .await
        .map_err(|e| not_found_as_pipeline(e, path.pipeline_id))?;
    state.destination_health().forget(path.pipeline_id);
    for key in keys {
        if let Err(error) = state.payloads().delete(&key).await {
            tracing::warn!(%error, pipeline_id = %path.pipeline_id, "deleting a payload failed");
        }
    }
    audit::record(
        &state,
        &principal,
        &client,
        "pipeline.delete",
        format!("pipeline:{}", path.pipeline_id),
        json!({}),
    )
    .await;
    Ok(Envelope::ok(DeletedView {
        id: path.pipeline_id,
        deleted: true,
    }))
}

pub fn not_found_as_pipeline(error: sluice_store::StoreError, id: Uuid) -> ApiError {
    match error {
        sluice_store::StoreError::NotFound => ApiError::pipeline_not_found(id),
        other => other.into(),
    }
}
