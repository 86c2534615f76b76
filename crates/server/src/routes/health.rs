//! Liveness, readiness and Prometheus metrics (R-OPS-3).

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Alive: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: the database and payload storage answer, and (in processes
/// that run them) the workers are running.
///
/// The body also counts the active pipelines whose destination failed
/// its health check (`destinations`; counts only, no pipeline is named),
/// from the results this process has; when
/// they are older than a few seconds a new round of checks starts in the
/// background. Destination health never makes the process unready: one
/// tenant's unreachable target says nothing about whether this process can
/// accept and process work.
pub async fn readyz(State(state): State<AppState>) -> Response {
    crate::destination_health::refresh_if_stale(&state);
    let database = state.store().ping().await;
    let storage = state.payloads().healthcheck().await;
    let workers_ok = !state.config().role.runs_workers() || state.workers_running();
    let shutting_down = state.shutdown().is_cancelled();
    if let Err(error) = &database {
        tracing::warn!(%error, "readiness: database unavailable");
    }
    if let Err(error) = &storage {
        tracing::warn!(%error, "readiness: payload storage unavailable");
    }
    let ready = database.is_ok() && storage.is_ok() && workers_ok && !shutting_down;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "database": if database.is_ok() { "ok" } else { "unavailable" },
            "storage": if storage.is_ok() { "ok" } else { "unavailable" },
            "workers": if workers_ok { "ok" } else { "not_running" },
            "shutting_down": shutting_down,
        },
        "destinations": state.destination_health().readyz_summary(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition. Queue depths are read from the database at
/// scrape time so every API node reports the same truth.
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.store().queue_depths().await {
        Ok(depths) => {
            crate::metrics::set_queue_depths(&depths);
        }
        Err(error) => tracing::warn!(%error, "metrics: reading queue depths failed"),
    }
    // An open breaker whose cooldown has passed reads as half-open.
    sluice_outbound::breaker::refresh_gauges();
    let text = state.metrics().map(|h| h.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
