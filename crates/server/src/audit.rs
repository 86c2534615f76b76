//! Writing the audit trail (R-SEC-7). Every key change, config change and
//! lifecycle action is recorded with who, what, when and the request id.
//! Failing to write an audit row fails the request that caused it only
//! where the action itself has not happened yet; afterwards it is logged.

use crate::auth::Principal;
use crate::error::current_request_id;
use crate::state::AppState;
use sluice_store::{ApiKey, NewAuditEvent};

/// Record an action taken by `principal`.
pub async fn record(
    state: &AppState,
    principal: &Principal,
    client_addr: &str,
    action: &str,
    target: String,
    details: serde_json::Value,
) {
    let event = NewAuditEvent {
        tenant_id: principal.tenant_id,
        actor_key_id: Some(principal.key_id),
        action: action.to_owned(),
        target: Some(target),
        request_id: Some(current_request_id()),
        client_addr: Some(client_addr.to_owned()),
        details,
    };
    if let Err(error) = state.store().append_audit(event).await {
        tracing::error!(%error, action, "writing audit event failed");
    }
}

/// A request authenticated with a revoked or expired key of a known
/// tenant: the tenant's admins see it in their trail.
pub async fn record_auth_failure(state: &AppState, key: &ApiKey, client_addr: &str) {
    let event = NewAuditEvent {
        tenant_id: key.tenant_id,
        actor_key_id: Some(key.id),
        action: "auth.failure".to_owned(),
        target: Some(format!("key:{}", key.id)),
        request_id: Some(current_request_id()),
        client_addr: Some(client_addr.to_owned()),
        details: serde_json::json!({
            "reason": if key.revoked_at.is_some() { "revoked" } else { "expired" }
        }),
    };
    if let Err(error) = state.store().append_audit(event).await {
        tracing::error!(%error, "writing audit event failed");
    }
}
