//! API keys and role-based access control (SPEC 1, R-SEC-6).
//!
//! A key is `slk_` followed by 43 base64url characters: 256 random bits.
//! Only its SHA-256 is stored. A slow password hash would add nothing for
//! a secret of that entropy and would put a hash computation on every
//! request. Lookup is by the digest: an index probe on a value the caller
//! cannot steer, so its timing says nothing about how close a guess was
//! (the digest comparison is the only comparison). The visible prefix and last four characters are kept so a
//! key can be recognised in listings.
//!
//! Authorization lives in middleware, never in handlers: the router
//! attaches a [`Permission`] to each route, and [`require`] checks the
//! caller's role (and, for `ingest` keys limited to some pipelines, the
//! pipeline in the path) before the handler runs.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sluice_core::ErrorCode;
use sluice_store::{ApiKey, NewApiKey, NewAuditEvent, Role};
use uuid::Uuid;

/// The header that carries the key.
pub const API_KEY_HEADER: &str = "x-api-key";
const KEY_PREFIX: &str = "slk_";
/// Characters of the key shown in listings (`slk_` + 8).
const VISIBLE_PREFIX_LEN: usize = 12;

/// A freshly generated key: the secret (shown once) and the row to store.
pub struct GeneratedKey {
    pub secret: String,
    pub row: NewApiKey,
}

/// Generate a new key for `tenant_id`.
pub fn generate_key(
    tenant_id: Uuid,
    name: &str,
    role: Role,
    pipeline_ids: Option<Vec<Uuid>>,
    created_by: Option<Uuid>,
) -> GeneratedKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let row = NewApiKey {
        id: Uuid::now_v7(),
        tenant_id,
        name: name.to_owned(),
        role,
        prefix: secret[..VISIBLE_PREFIX_LEN].to_owned(),
        last4: secret[secret.len() - 4..].to_owned(),
        secret_hash: hash_key(&secret),
        pipeline_ids,
        created_by,
    };
    GeneratedKey { secret, row }
}

pub fn hash_key(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether `secret` has the shape of a Sluice key (cheap check before
/// touching the database).
fn well_formed(secret: &str) -> bool {
    secret.len() == KEY_PREFIX.len() + 43
        && secret.starts_with(KEY_PREFIX)
        && secret[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Who is calling, established by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub role: Role,
    /// For `ingest` keys limited to some pipelines.
    pub pipeline_ids: Option<Vec<Uuid>>,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    PipelinesRead,
    PipelinesWrite,
    BatchesRead,
    /// Submit batches (editor and ingest keys).
    BatchesSubmit,
    /// Retry batches.
    BatchesWrite,
    KeysManage,
    AuditRead,
}

impl Permission {
    pub fn granted_to(self, role: Role) -> bool {
        use Permission::*;
        match role {
            Role::Admin => true,
            Role::Editor => matches!(
                self,
                PipelinesRead | PipelinesWrite | BatchesRead | BatchesSubmit | BatchesWrite
            ),
            Role::Reader => matches!(self, PipelinesRead | BatchesRead),
            Role::Ingest => matches!(self, BatchesSubmit),
        }
    }
}

/// Middleware: resolve the `X-API-Key` header to a [`Principal`].
///
/// An address that is locked out (see [`crate::lockout`]) is refused
/// before its key is looked at. Every failure counts towards the
/// address's lockout and its auth-failure rate limit; beyond that limit a
/// failure is answered 429 instead of 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = crate::state::client_addr(&req);
    if let Some(left) = state.lockout().locked(&client).await {
        metrics::counter!("sluice_auth_lockout_refusals_total").increment(1);
        return Err(locked_out(left));
    }
    let Some(secret) = req
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    else {
        return Ok(failed(&state, "auth.missing_key", &client, None).await);
    };
    if !well_formed(secret) {
        return Ok(failed(&state, "auth.malformed_key", &client, None).await);
    }
    let hash = hash_key(secret);
    let key = state
        .store()
        .find_api_key_by_hash(&hash)
        .await
        .map_err(ApiError::unavailable)?;
    let Some(key) = key else {
        return Ok(failed(&state, "auth.unknown_key", &client, None).await);
    };
    if !key.is_valid_at(chrono::Utc::now()) {
        crate::audit::record_auth_failure(&state, &key, &client).await;
        return Ok(failed(&state, "auth.invalid_key", &client, Some(&key)).await);
    }
    req.extensions_mut()
        .insert(crate::routes::ClientAddr(client.clone()));
    req.extensions_mut().insert(Principal {
        tenant_id: key.tenant_id,
        key_id: key.id,
        role: key.role,
        pipeline_ids: key.pipeline_ids,
    });
    Ok(next.run(req).await)
}

/// The answer to a failed authentication: log it, count it towards the
/// address's lockout and auth-failure limit, then 401 (or 429 when the
/// address is over its limit or this failure locked it out).
async fn failed(
    state: &AppState,
    event: &'static str,
    client: &str,
    key: Option<&ApiKey>,
) -> Response {
    security_event(event, client);
    if let Some(duration) = state.lockout().record_failure(client).await {
        lockout_started(state, client, key, duration).await;
        return locked_out(duration).into_response();
    }
    let limits = state.rate_limits();
    if limits.enabled() {
        let decision = limits
            .check(crate::ratelimit::Class::AuthFailure, client, 1)
            .await;
        if !decision.allowed {
            return decision.refusal("too many failed authentications from this address");
        }
    }
    unauthorized().into_response()
}

fn locked_out(left: std::time::Duration) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        "too many failed authentications from this address; it is locked out for a while",
    )
    .with_retry_after(left.as_millis().div_ceil(1000).max(1) as u64)
}

/// A lockout began: a security event for the SIEM, a metric, and an audit
/// row in the tenant whose (revoked, expired or rotated-out) key was tried,
/// or in the system chain when the key was unknown.
async fn lockout_started(
    state: &AppState,
    client: &str,
    key: Option<&ApiKey>,
    duration: std::time::Duration,
) {
    let max_failures = state.config().lockout.max_failures;
    tracing::warn!(
        target: "sluice::security",
        security_event = "auth.lockout",
        client_addr = %client,
        failures = max_failures,
        lockout_secs = duration.as_secs(),
        tenant_id = ?key.map(|k| k.tenant_id),
        "client address locked out after repeated authentication failures"
    );
    metrics::counter!("sluice_auth_lockouts_total").increment(1);
    let event = NewAuditEvent {
        tenant_id: key.map_or(Uuid::nil(), |k| k.tenant_id),
        actor_key_id: key.map(|k| k.id),
        action: "auth.lockout".to_owned(),
        target: Some(format!("address:{client}")),
        request_id: Some(crate::error::current_request_id()),
        client_addr: Some(client.to_owned()),
        details: serde_json::json!({
            "failures": max_failures,
            "lockout_secs": duration.as_secs(),
        }),
    };
    // Guesses of unknown keys belong to no tenant: the system chain.
    let written = match key {
        Some(_) => state.store().append_audit(event).await.map(drop),
        None => state.store().append_system_audit(event).await.map(drop),
    };
    if let Err(error) = written {
        tracing::error!(%error, "writing audit event failed");
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "a valid X-API-Key header is required",
    )
}

fn security_event(event: &'static str, client: &str) {
    tracing::warn!(
        target: "sluice::security",
        security_event = event,
        client_addr = %client,
        "authentication failed"
    );
    metrics::counter!("sluice_auth_failures_total", "reason" => event).increment(1);
}

/// Middleware: the caller's role must grant the route's permission
/// (from the one table in [`crate::routes::permission_for`]; a route
/// missing from it is refused), and an `ingest` key limited to some
/// pipelines may only touch those.
pub async fn authorize(
    matched: MatchedPath,
    params: RawPathParams,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(principal) = req.extensions().get::<Principal>() else {
        return Err(unauthorized());
    };
    let permission = crate::routes::permission_for(req.method(), matched.as_str());
    let Some(permission) = permission.filter(|p| p.granted_to(principal.role)) else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "the {} role may not perform this action",
                principal.role.as_str()
            ),
        ));
    };
    if let Some(allowed) = &principal.pipeline_ids {
        let pipeline = params
            .iter()
            .find(|(name, _)| *name == "pipeline_id")
            .and_then(|(_, v)| v.parse::<Uuid>().ok());
        if permission == Permission::BatchesSubmit
            && let Some(id) = pipeline
            && !allowed.contains(&id)
        {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this key may not submit to this pipeline",
            ));
        }
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_hashed() {
        let k = generate_key(Uuid::nil(), "k", Role::Admin, None, None);
        assert!(well_formed(&k.secret));
        assert_eq!(k.row.secret_hash, hash_key(&k.secret));
        assert!(k.secret.starts_with(&k.row.prefix));
        assert!(k.secret.ends_with(&k.row.last4));
        assert_ne!(
            k.secret,
            generate_key(Uuid::nil(), "k", Role::Admin, None, None).secret
        );
    }

    #[test]
    fn roles_grant_what_the_spec_says() {
        use Permission::*;
        assert!(KeysManage.granted_to(Role::Admin));
        assert!(!KeysManage.granted_to(Role::Editor));
        assert!(PipelinesWrite.granted_to(Role::Editor));
        assert!(!PipelinesWrite.granted_to(Role::Reader));
        assert!(BatchesRead.granted_to(Role::Reader));
        assert!(BatchesSubmit.granted_to(Role::Ingest));
        assert!(!BatchesRead.granted_to(Role::Ingest));
        assert!(!AuditRead.granted_to(Role::Editor));
    }
}
