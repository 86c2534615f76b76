//! `/api/v1/audit`: the tenant's audit trail (admin), filtered by action,
//! actor and time, newest first, with a cursor. Each event carries its
//! place in the tenant's hash chain (`seq`, `hash`), which
//! `sluice audit verify` recomputes.

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, Envelope};
use crate::extract::{AppQuery, decode_uuid_cursor, encode_cursor, page_limit};
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::ErrorCode;
use sluice_store::{AuditEvent, AuditFilter};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: Uuid,
    /// The API key that acted (null for the CLI).
    pub actor_key_id: Option<Uuid>,
    pub action: String,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
    pub created_at: DateTime<Utc>,
    /// Position in the tenant's hash chain (from 1).
    pub seq: Option<i64>,
    /// Hex SHA-256 chaining this event to the previous one.
    pub hash: Option<String>,
}

impl From<AuditEvent> for AuditView {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id,
            actor_key_id: e.actor_key_id,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
            client_addr: e.client_addr,
            details: e.details,
            created_at: e.created_at,
            seq: e.seq,
            hash: e.hash,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this action (`pipeline.update`, `auth.failure`, ...).
    pub action: Option<String>,
    /// Only events by this API key id.
    pub actor: Option<String>,
    /// Only events at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only events before this time (RFC 3339).
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

fn parse_time(name: &str, value: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidQuery,
                        format!("{name} must be an RFC 3339 time, like 2026-01-31T12:00:00Z"),
                    )
                })
        })
        .transpose()
}

/// The audit trail, newest first.
#[utoipa::path(get, operation_id = "list_audit_events", path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = [AuditView])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    AppQuery(q): AppQuery<AuditQuery>,
) -> ApiResult<Envelope<Vec<AuditView>>> {
    let after = decode_uuid_cursor("a", q.cursor.as_deref())?;
    let limit = page_limit(q.limit)?;
    let actor_key_id = q
        .actor
        .as_deref()
        .map(|a| {
            Uuid::parse_str(a).map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    "actor must be an API key id (a UUID)",
                )
            })
        })
        .transpose()?;
    if q.action
        .as_deref()
        .is_some_and(|a| a.is_empty() || a.len() > 100)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "action must be 1 to 100 characters",
        ));
    }
    let filter = AuditFilter {
        action: q.action,
        actor_key_id,
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
    };
    let page = state
        .store()
        .list_audit(principal.tenant_id, &filter, after, limit)
        .await?;
    Ok(Envelope::page(
        page.items.into_iter().map(AuditView::from).collect(),
        page.next_cursor
            .map(|id| encode_cursor("a", &id.to_string())),
    ))
}
