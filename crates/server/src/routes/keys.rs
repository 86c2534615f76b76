//! `/api/v1/keys`: create (secret shown once), list, read, rotate,
//! revoke. Admin only.

use crate::audit;
use crate::auth::{Principal, generate_key};
use crate::error::{ApiError, ApiResult, Envelope};
use crate::extract::{AppJson, AppPath};
use crate::routes::ClientAddr;
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_core::{ErrorCode, Problem};
use sluice_store::{ApiKey, Role, StoreError};
use utoipa::ToSchema;
use uuid::Uuid;

/// An API key as listed: never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    /// `admin`, `editor`, `reader` or `ingest`.
    pub role: String,
    /// The start of the key, to recognise it.
    pub prefix: String,
    pub last4: String,
    /// For `ingest` keys: the pipelines it may submit to (null = all).
    pub pipeline_ids: Option<Vec<Uuid>>,
    pub created_at: DateTime<Utc>,
    /// When a rotated key stops working.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub rotated_from: Option<Uuid>,
}

/// A key just created or rotated: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyView {
    #[serde(flatten)]
    pub key: KeyView,
    /// The secret. Store it now: it cannot be shown again.
    pub api_key: String,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            role: k.role.as_str().to_owned(),
            prefix: k.prefix,
            last4: k.last4,
            pipeline_ids: k.pipeline_ids,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            rotated_from: k.rotated_from,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label, 1 to 100 characters.
    pub name: String,
    /// `admin`, `editor`, `reader` or `ingest`.
    pub role: String,
    /// Only for `ingest` keys: limit the key to these pipelines.
    #[serde(default)]
    pub pipeline_ids: Option<Vec<Uuid>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Seconds the old key keeps working (default from the server config).
    #[serde(default)]
    pub grace_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct KeyPath {
    pub key_id: Uuid,
}

/// Create a key.
#[utoipa::path(post, operation_id = "create_key", path = "/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKeyView), (status = 400)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    AppJson(body): AppJson<CreateKey>,
) -> ApiResult<Envelope<CreatedKeyView>> {
    let mut problems = Vec::new();
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        problems.push(Problem::new("/name", "must be 1 to 100 characters"));
    }
    let role = Role::parse(&body.role);
    if role.is_none() {
        problems.push(Problem::new(
            "/role",
            "must be admin, editor, reader or ingest",
        ));
    }
    if let Some(ids) = &body.pipeline_ids {
        if role != Some(Role::Ingest) {
            problems.push(Problem::new(
                "/pipeline_ids",
                "only ingest keys can be limited to pipelines",
            ));
        }
        if ids.is_empty() || ids.len() > 1000 {
            problems.push(Problem::new(
                "/pipeline_ids",
                "must list 1 to 1000 pipelines",
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            if state
                .store()
                .get_pipeline(principal.tenant_id, *id)
                .await?
                .is_none()
            {
                problems.push(Problem::new(
                    format!("/pipeline_ids/{i}"),
                    "no such pipeline",
                ));
            }
        }
    }
    let Some(role) = role.filter(|_| problems.is_empty()) else {
        return Err(ApiError::validation(problems));
    };
    let generated = generate_key(
        principal.tenant_id,
        name,
        role,
        body.pipeline_ids,
        Some(principal.key_id),
    );
    let key = state.store().create_api_key(generated.row).await?;
    audit::record(
        &state,
        &principal,
        &client,
        "key.create",
        format!("key:{}", key.id),
        json!({"role": role.as_str()}),
    )
    .await;
    Ok(Envelope::created(CreatedKeyView {
        key: key.into(),
        api_key: generated.secret,
    }))
}

/// List the tenant's keys, newest first.
#[utoipa::path(get, operation_id = "list_keys", path = "/keys", tag = "keys", responses((status = 200, body = [KeyView])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Envelope<Vec<KeyView>>> {
    let keys = state.store().list_api_keys(principal.tenant_id).await?;
    Ok(Envelope::ok(keys.into_iter().map(KeyView::from).collect()))
}

/// One key.
#[utoipa::path(get, operation_id = "get_key", path = "/keys/{key_id}", tag = "keys", params(("key_id" = Uuid, Path)),
    responses((status = 200, body = KeyView), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppPath(path): AppPath<KeyPath>,
) -> ApiResult<Envelope<KeyView>> {
    let key = state
        .store()
        .get_api_key(principal.tenant_id, path.key_id)
        .await?
        .ok_or_else(|| ApiError::key_not_found(path.key_id))?;
    Ok(Envelope::ok(key.into()))
}

/// Revoke a key at once.
#[utoipa::path(delete, operation_id = "revoke_key", path = "/keys/{key_id}", tag = "keys", params(("key_id" = Uuid, Path)),
    responses((status = 200, body = KeyView), (status = 404), (status = 409, description = "INVALID_KEY_STATE")))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    AppPath(path): AppPath<KeyPath>,
) -> ApiResult<Envelope<KeyView>> {
    let key = state
        .store()
        .revoke_api_key(principal.tenant_id, path.key_id)
        .await
        .map_err(|e| key_error(e, path.key_id))?;
    audit::record(
        &state,
        &principal,
        &client,
        "key.revoke",
        format!("key:{}", key.id),
        json!({}),
    )
    .await;
    Ok(Envelope::ok(key.into()))
}

/// Rotate: a new key with the same role; the old one keeps working for a
/// grace period.
#[utoipa::path(post, operation_id = "rotate_key", path = "/keys/{key_id}/rotate", tag = "keys", params(("key_id" = Uuid, Path)),
    request_body(content = Option<RotateKey>),
    responses((status = 201, body = CreatedKeyView), (status = 404), (status = 409)))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    AppPath(path): AppPath<KeyPath>,
    body: Bytes,
) -> ApiResult<Envelope<CreatedKeyView>> {
    // The body is optional: none (or `{}`) means the configured grace.
    let options: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::validation(vec![Problem::new(
                "",
                format!("invalid rotate options: {e}"),
            )])
        })?
    };
    let grace = options
        .grace_secs
        .unwrap_or(state.config().keys.rotation_grace_secs);
    if grace > 90 * 24 * 3600 {
        return Err(ApiError::validation(vec![Problem::new(
            "/grace_secs",
            "at most 90 days",
        )]));
    }
    let old = state
        .store()
        .get_api_key(principal.tenant_id, path.key_id)
        .await?
        .ok_or_else(|| ApiError::key_not_found(path.key_id))?;
    let generated = generate_key(
        principal.tenant_id,
        &old.name,
        old.role,
        old.pipeline_ids.clone(),
        Some(principal.key_id),
    );
    let expires = Utc::now() + chrono::Duration::seconds(grace as i64);
    let key = state
        .store()
        .rotate_api_key(principal.tenant_id, old.id, generated.row, expires)
        .await
        .map_err(|e| key_error(e, path.key_id))?;
    audit::record(
        &state,
        &principal,
        &client,
        "key.rotate",
        format!("key:{}", old.id),
        json!({"new_key_id": key.id, "grace_secs": grace}),
    )
    .await;
    Ok(Envelope::created(CreatedKeyView {
        key: key.into(),
        api_key: generated.secret,
    }))
}

fn key_error(error: StoreError, id: Uuid) -> ApiError {
    match error {
        StoreError::NotFound => ApiError::key_not_found(id),
        StoreError::InvalidState(message) => ApiError::new(ErrorCode::InvalidKeyState, message),
        other => other.into(),
    }
}
