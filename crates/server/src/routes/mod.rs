//! The HTTP surface: `/api/v1/...` (authenticated), `/healthz`,
//! `/readyz`, `/metrics` and `/api/v1/openapi.json` (open).
//!
//! Layers, outermost first: request id (honoured if sent, else a new
//! UUIDv7; set on the response and in a task-local for the envelope),
//! security headers, CORS (only for configured origins), HTTP metrics,
//! panic catching; then per route: authentication (with lockout and the
//! auth-failure limit), the per-key rate limit, then authorization from
//! the one table in [`permission_for`].

pub mod audit;
pub mod batches;
pub mod health;
pub mod keys;
pub mod pipelines;

use crate::auth::{self, Permission};
use crate::error::{ApiError, REQUEST_ID};
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sluice_core::ErrorCode;
use std::time::Instant;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The caller's address, set by authentication for audit records.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

const API_PREFIX: &str = "/api/v1";
static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Which permission each API route needs. One table, so RBAC can be read
/// (and tested) in one place; a route that is not here is refused.
pub fn permission_for(method: &Method, matched_path: &str) -> Option<Permission> {
    use Permission::*;
    let path = matched_path
        .strip_prefix(API_PREFIX)
        .unwrap_or(matched_path);
    let m = method.as_str();
    Some(match (m, path) {
        (
            "GET",
            "/pipelines" | "/pipelines/{pipeline_id}" | "/pipelines/{pipeline_id}/versions",
        ) => PipelinesRead,
        ("POST", "/pipelines")
        | ("PUT" | "DELETE", "/pipelines/{pipeline_id}")
        | ("POST", "/pipelines/{pipeline_id}/start" | "/pipelines/{pipeline_id}/stop") => {
            PipelinesWrite
        }
        ("POST", "/pipelines/{pipeline_id}/batches") => BatchesSubmit,
        (
            "GET",
            "/pipelines/{pipeline_id}/batches"
            | "/pipelines/{pipeline_id}/batches/{batch_id}"
            | "/pipelines/{pipeline_id}/batches/{batch_id}/errors",
        ) => BatchesRead,
        ("POST", "/pipelines/{pipeline_id}/batches/{batch_id}/retry") => BatchesWrite,
        (_, "/keys" | "/keys/{key_id}" | "/keys/{key_id}/rotate") => KeysManage,
        ("GET", "/audit") => AuditRead,
        _ => return None,
    })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Multi-tenant JSON data pipelines: validate, redact, transform and deliver records.", license(name = "Apache-2.0")),
    servers((url = "/api/v1")),
    modifiers(&SecurityAddon),
    security(("api_key" = [])),
    tags(
        (name = "pipelines", description = "Pipelines and their config versions"),
        (name = "batches", description = "Batch submission and status"),
        (name = "keys", description = "API keys (admin)"),
        (name = "audit", description = "Audit trail (admin)"),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// Every API route, registered with its OpenAPI operation.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(pipelines::list, pipelines::create))
        .routes(routes!(
            pipelines::get,
            pipelines::update,
            pipelines::delete
        ))
        .routes(routes!(pipelines::versions))
        .routes(routes!(pipelines::start))
        .routes(routes!(pipelines::stop))
        .routes(routes!(batches::list, batches::submit))
        .routes(routes!(batches::get))
        .routes(routes!(batches::errors))
        .routes(routes!(batches::retry))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::get, keys::revoke))
        .routes(routes!(keys::rotate))
        .routes(routes!(audit::list))
}

/// The OpenAPI document (served at `/api/v1/openapi.json`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The authenticated API and its OpenAPI document.
fn api(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, openapi) = api_routes().split_for_parts();
    let router = router
        .route_layer(middleware::from_fn(auth::authorize))
        .route_layer(middleware::from_fn(expose_route))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::ratelimit::limit_key,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(
            state.config().limits.max_config_bytes as usize,
        ));
    (router, openapi)
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = api(&state);
    let openapi = std::sync::Arc::new(openapi);
    let api = api.route(
        "/openapi.json",
        get(move || {
            let doc = openapi.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    );
    let headers = crate::headers::SecurityHeaders::new(state.config());
    let cors = crate::headers::cors_layer(state.config());
    let app = Router::new()
        .nest(API_PREFIX, api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(http_metrics))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ));
    // CORS answers preflights itself, so it sits outside the routes; the
    // security headers sit outside it, so preflights carry them too.
    let app = match cors {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(middleware::from_fn_with_state(
        headers,
        crate::headers::security_headers,
    ))
    .layer(middleware::from_fn(request_id))
}

/// What a worker-only process serves: health, readiness and metrics.
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(
            crate::headers::SecurityHeaders::new(state.config()),
            crate::headers::security_headers,
        ))
        .layer(middleware::from_fn(request_id))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this method is not allowed on this route",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(ErrorCode::InternalError, "internal server error").into_response()
}

/// Honour a sane `X-Request-Id` or make one; expose it to the envelope
/// and the log, and echo it on the response.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = {
        use tracing::Instrument;
        REQUEST_ID
            .scope(id.clone(), next.run(req))
            .instrument(span)
            .await
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER.clone(), value);
    }
    response
}

/// Copy the matched route template onto the response, where the outer
/// metrics layer (which runs before routing) can read it.
async fn expose_route(matched: MatchedPath, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response.extensions_mut().insert(matched);
    response
}

async fn http_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let response = next.run(req).await;
    // Routing happens inside, so read the matched route back from the
    // response when the request did not carry it yet.
    let route = route
        .or_else(|| {
            response
                .extensions()
                .get::<MatchedPath>()
                .map(|m| m.as_str().to_owned())
        })
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    metrics::counter!("sluice_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("sluice_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    let status = response.status();
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), "request served");
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_documented_route_has_a_permission() {
        let doc = openapi_document();
        let mut count = 0;
        for (path, item) in doc.paths.paths.iter() {
            for (method, op) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
            ] {
                if op.is_some() {
                    count += 1;
                    assert!(permission_for(&method, path).is_some(), "{method} {path}");
                }
            }
        }
        assert_eq!(count, 19);
    }
}
