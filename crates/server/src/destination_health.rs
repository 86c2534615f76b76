//! Destination health: can each pipeline's target be reached right now?
//!
//! Every destination has a cheap `healthcheck()` that sends no records (a
//! TCP connection for a webhook, `SELECT … WHERE false` for the databases,
//! a listing for object storage, a probe file for `file`). It runs
//!
//! - when a pipeline is created, updated or started, and for every active
//!   pipeline when the process starts, in the background;
//! - for every active pipeline when `/readyz` finds the last round older
//!   than [`TTL`]: again in the background, at most [`CONCURRENCY`] checks
//!   at once, each cut off after [`CHECK_TIMEOUT`]. `/readyz` itself only
//!   reads the results, so it stays cheap whatever the targets do.
//!
//! A failed check never rejects a pipeline (a target may be down for a
//! while; batches wait in the queue and are retried) and never makes the
//! process unready: readiness says whether this process can accept and
//! process work, and one tenant's unreachable target says nothing about
//! that. A failure is logged at warn and shown in `GET /pipelines/{id}`
//! (`delivery.health`), in the `/readyz` body and as the
//! `sluice_destination_up` gauge. Like the circuit breakers, results are
//! kept per process.
//!
//! The error text comes from the destination, whose messages carry no
//! record data by contract (a health check sends none anyway). As a second
//! line of defence the pipeline's own secret values are cut out of it, it
//! is redacted like log text, and it is cut to [`MAX_ERROR_CHARS`].

use crate::secrets;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_components::{BuildContext, PipelineSpec, build_pipeline};
use sluice_core::Destination;
use sluice_store::{Pipeline, PipelineStatus};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use utoipa::ToSchema;
use uuid::Uuid;

/// How long one health check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Checks run at once in a round.
pub const CONCURRENCY: usize = 8;
/// Age after which `/readyz` starts a new round.
pub const TTL: Duration = Duration::from_secs(15);
/// Longest error text kept.
pub const MAX_ERROR_CHARS: usize = 300;
/// Pipelines listed per page while collecting a round.
const PAGE: u32 = 200;
/// Built destinations kept for re-checks.
const BUILT_CAPACITY: usize = 1024;

/// The last health check of a pipeline's destination in this process.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthView {
    /// Whether the destination answered its health check.
    pub ok: bool,
    pub checked_at: DateTime<Utc>,
    /// Why the check failed; null when it passed. Never holds secrets or
    /// record data.
    #[schema(required = true)]
    pub error: Option<String>,
    /// The config version that was checked.
    pub version: i64,
}

/// A built destination and the secret values of its config (cut out of
/// error messages).
#[derive(Clone)]
struct Built {
    destination: Arc<dyn Destination>,
    secrets: Arc<Vec<String>>,
}

#[derive(Default)]
struct Rounds {
    last: Option<(Instant, DateTime<Utc>)>,
    running: bool,
}

/// Per-process store of destination health results.
#[derive(Default)]
pub struct DestinationHealth {
    results: Mutex<HashMap<Uuid, HealthView>>,
    built: Mutex<HashMap<(Uuid, i64), Built>>,
    inflight: Mutex<HashSet<Uuid>>,
    rounds: Mutex<Rounds>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl DestinationHealth {
    /// The last result for a pipeline, if it was checked in this process.
    pub fn get(&self, pipeline_id: Uuid) -> Option<HealthView> {
        lock(&self.results).get(&pipeline_id).cloned()
    }

    /// Forget a deleted pipeline.
    pub fn forget(&self, pipeline_id: Uuid) {
        lock(&self.results).remove(&pipeline_id);
        lock(&self.built).retain(|(id, _), _| *id != pipeline_id);
        metrics::gauge!("sluice_destination_up", "pipeline_id" => pipeline_id.to_string())
            .set(f64::NAN);
    }

    fn record(&self, pipeline_id: Uuid, view: HealthView) {
        metrics::gauge!("sluice_destination_up", "pipeline_id" => pipeline_id.to_string())
            .set(if view.ok { 1.0 } else { 0.0 });
        lock(&self.results).insert(pipeline_id, view);
    }

    /// The `destinations` object of the `/readyz` body: counts only.
    /// `/readyz` is not authenticated, so it names no pipeline (their ids
    /// belong to tenants) and quotes no error; `GET /pipelines/{id}` shows
    /// each tenant its own.
    pub fn readyz_summary(&self) -> Value {
        let last = lock(&self.rounds).last.map(|(_, at)| at);
        let results = lock(&self.results);
        let unhealthy = results.values().filter(|v| !v.ok).count();
        json!({
            "checked": results.len(),
            "unhealthy": unhealthy,
            "last_round_at": last,
        })
    }
}

/// Check one pipeline's destination in the background (at most one check
/// per pipeline at a time).
pub fn spawn_check(state: &AppState, pipeline: Pipeline) {
    let health = state.destination_health();
    if !lock(&health.inflight).insert(pipeline.id) {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        check(&state, &pipeline).await;
        lock(&state.destination_health().inflight).remove(&pipeline.id);
    });
}

/// Start a round over every active pipeline unless one is running or the
/// last one is younger than [`TTL`]. Returns at once.
pub fn refresh_if_stale(state: &AppState) {
    {
        let mut rounds = lock(&state.destination_health().rounds);
        let fresh = rounds.last.is_some_and(|(at, _)| at.elapsed() < TTL);
        if rounds.running || fresh {
            return;
        }
        rounds.running = true;
    }
    let state = state.clone();
    tokio::spawn(async move { round(&state).await });
}

/// Check every active pipeline of every tenant, [`CONCURRENCY`] at once.
/// Results of pipelines that are no longer active (deleted, paused) and
/// were not checked since the round began are dropped.
pub async fn round(state: &AppState) {
    let started = Utc::now();
    let pipelines = match active_pipelines(state).await {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(%error, "destination health: listing pipelines failed");
            lock(&state.destination_health().rounds).running = false;
            return;
        }
    };
    let active: HashSet<Uuid> = pipelines.iter().map(|p| p.id).collect();
    futures::stream::iter(pipelines)
        .for_each_concurrent(CONCURRENCY, |p| async move {
            check(state, &p).await;
        })
        .await;
    let health = state.destination_health();
    lock(&health.results).retain(|id, v| active.contains(id) || v.checked_at >= started);
    let mut rounds = lock(&health.rounds);
    rounds.last = Some((Instant::now(), Utc::now()));
    rounds.running = false;
}

async fn active_pipelines(state: &AppState) -> Result<Vec<Pipeline>, sluice_store::StoreError> {
    let store = state.store();
    let mut out = Vec::new();
    for tenant in store.list_tenants().await? {
        let mut after = None;
        loop {
            let page = store
                .list_pipelines(tenant.id, Some(PipelineStatus::Active), after, PAGE)
                .await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(out)
}

/// Check one pipeline's destination now, record and return the result.
pub async fn check(state: &AppState, pipeline: &Pipeline) -> HealthView {
    let health = state.destination_health();
    let outcome = match built(state, pipeline).await {
        Ok(b) => match tokio::time::timeout(CHECK_TIMEOUT, b.destination.healthcheck()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(safe_error(&e.message, &b.secrets)),
            Err(_) => Err(format!(
                "the health check did not answer within {} s",
                CHECK_TIMEOUT.as_secs()
            )),
        },
        Err(message) => Err(message),
    };
    let view = HealthView {
        ok: outcome.is_ok(),
        checked_at: Utc::now(),
        error: outcome.err(),
        version: pipeline.version,
    };
    if let Some(error) = &view.error {
        tracing::warn!(pipeline_id = %pipeline.id, version = pipeline.version, %error, "destination health check failed");
    } else {
        tracing::debug!(pipeline_id = %pipeline.id, version = pipeline.version, "destination health check passed");
    }
    health.record(pipeline.id, view.clone());
    view
}

/// The destination of the pipeline's current version, built once.
async fn built(state: &AppState, pipeline: &Pipeline) -> Result<Built, String> {
    let health = state.destination_health();
    let key = (pipeline.id, pipeline.version);
    if let Some(b) = lock(&health.built).get(&key) {
        return Ok(b.clone());
    }
    let mut config = pipeline.config.clone();
    secrets::decrypt_config(
        state.keyring(),
        pipeline.tenant_id,
        pipeline.id,
        &mut config,
    )
    .map_err(|e| format!("pipeline secrets: {e}"))?;
    let secret_values: Vec<String> = secrets::secret_pointers(&config)
        .iter()
        .filter_map(|p| config.pointer(p).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let spec =
        PipelineSpec::parse(&config).map_err(|_| "the stored config is invalid".to_owned())?;
    let ctx = BuildContext {
        tenant_id: pipeline.tenant_id,
        pipeline_id: pipeline.id,
        pipeline_name: pipeline.name.clone(),
        config_version: pipeline.version,
        output_root: state.output_root(pipeline.tenant_id),
        hash_key: state.keyring().tenant_hash_key(pipeline.tenant_id),
        outbound: state.outbound().clone(),
    };
    // Compiling schemas and scripts is CPU work.
    let compiled = tokio::task::spawn_blocking(move || build_pipeline(&spec, &ctx))
        .await
        .map_err(|_| "building the destination failed".to_owned())?
        .map_err(|_| "the pipeline could not be built".to_owned())?;
    let destination = compiled
        .destination()
        .cloned()
        .ok_or_else(|| "the pipeline has no destination".to_owned())?;
    let b = Built {
        destination,
        secrets: Arc::new(secret_values),
    };
    let mut cache = lock(&health.built);
    if cache.len() >= BUILT_CAPACITY {
        cache.clear();
    }
    cache.retain(|(id, _), _| *id != pipeline.id);
    cache.insert(key, b.clone());
    Ok(b)
}

/// A destination's error text made safe to show: the pipeline's secret
/// values cut out, redacted like log text, at most [`MAX_ERROR_CHARS`].
fn safe_error(message: &str, secrets: &[String]) -> String {
    let mut text = message.to_owned();
    for secret in secrets {
        text = text.replace(secret.as_str(), secrets::MASK);
    }
    let redacted = sluice_pii::default_redactor()
        .redact_text(&text)
        .into_owned();
    let mut out: String = redacted.chars().take(MAX_ERROR_CHARS).collect();
    if redacted.chars().count() > MAX_ERROR_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_texts_lose_secrets_and_length() {
        let secrets = vec!["whsec_canary_0123456789".to_owned()];
        let e = safe_error(
            "refused: token whsec_canary_0123456789 from admin@example.com",
            &secrets,
        );
        assert!(!e.contains("whsec_canary_0123456789"), "{e}");
        assert!(!e.contains("admin@example.com"), "{e}");
        assert!(e.starts_with("refused: token ****"), "{e}");
        let long = "x".repeat(1000);
        assert_eq!(safe_error(&long, &[]).chars().count(), MAX_ERROR_CHARS + 1);
    }
}
