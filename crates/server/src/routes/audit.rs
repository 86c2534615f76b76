//! `/api/v1/audit`: the tenant's audit trail (admin).

use crate::auth::Principal;
use crate::error::{ApiResult, Envelope};
use crate::extract::{AppQuery, decode_uuid_cursor, encode_cursor, page_limit};
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::AuditEvent;
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
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
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
    let page = state
        .store()
        .list_audit(principal.tenant_id, after, limit)
        .await?;
    Ok(Envelope::page(
        page.items.into_iter().map(AuditView::from).collect(),
        page.next_cursor
            .map(|id| encode_cursor("a", &id.to_string())),
    ))
}
