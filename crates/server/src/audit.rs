//! Writing the audit trail (R-SEC-7). Every key change, config change and
//! lifecycle action is recorded with who, what, when and the request id.
//! Failing to write an audit row fails the request that caused it only
//! where the action itself has not happened yet; afterwards it is logged.
//!
//! The store chains each tenant's events with SHA-256 (R-SEC-7, see
//! `sluice_store::audit_hash`), so a modified, removed or reordered row is
//! found by `sluice audit verify`. Every recorded action is also written
//! to the log as a `security_event` line (target `sluice::security`) for
//! a SIEM; the log passes through the PII redactor like every other line.

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
    tracing::info!(
        target: "sluice::security",
        security_event = action,
        tenant_id = %principal.tenant_id,
        actor_key_id = %principal.key_id,
        audit_target = %target,
        "audited action"
    );
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

/// One broken audit chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokenChain {
    /// The tenant, or None for the system chain.
    pub tenant_id: Option<uuid::Uuid>,
    /// The first row that does not verify.
    pub event_id: uuid::Uuid,
    pub seq: Option<i64>,
    pub reason: String,
}

/// What `sluice audit verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Chains checked (tenants, plus the system chain).
    pub chains: u64,
    /// Events that verified.
    pub events: u64,
    /// The first bad row of each broken chain.
    pub broken: Vec<BrokenChain>,
}

/// Recompute the hash chain of `tenant` (or of every tenant and the
/// system chain) and report the first bad row of each broken chain.
pub async fn verify(
    store: &dyn sluice_store::Store,
    tenant: Option<uuid::Uuid>,
) -> anyhow::Result<VerifyReport> {
    let chains: Vec<Option<uuid::Uuid>> = match tenant {
        Some(t) => vec![Some(t)],
        None => store
            .list_tenants()
            .await?
            .into_iter()
            .map(|t| Some(t.id))
            .chain(std::iter::once(None))
            .collect(),
    };
    let mut report = VerifyReport::default();
    for chain in chains {
        report.chains += 1;
        let mut prev: Option<(i64, String)> = None;
        loop {
            let after = prev.as_ref().map_or(0, |(seq, _)| *seq);
            let page = store.audit_chain(chain, after, 1000).await?;
            if page.is_empty() {
                break;
            }
            match sluice_store::verify_audit_chain(prev.clone(), &page) {
                Ok(next) => {
                    report.events += page.len() as u64;
                    if next == prev {
                        break;
                    }
                    prev = next;
                }
                Err(bad) => {
                    report.broken.push(BrokenChain {
                        tenant_id: chain,
                        event_id: bad.id,
                        seq: bad.seq,
                        reason: bad.reason,
                    });
                    break;
                }
            }
        }
    }
    Ok(report)
}
