//! Prometheus metrics (R-OPS-3, R-PROC-3). Names follow
//! `sluice_<noun>_<unit>[_total]`; labels come from small fixed sets
//! (route templates, status codes, pipeline ids), never record data.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_store::QueueDepth;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// Install the global recorder once per process; later calls return the
/// same handle.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0,
                    ],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "installing the metrics recorder failed");
                    None
                }
            }
        })
        .clone()
}

/// Set the queue-depth gauges; pipelines that no longer have a queue drop
/// to zero instead of reporting a stale value.
pub fn set_queue_depths(depths: &[QueueDepth]) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = match seen.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut now = HashSet::new();
    for d in depths {
        let id = d.pipeline_id.to_string();
        metrics::gauge!("sluice_queue_batches", "pipeline_id" => id.clone()).set(d.batches as f64);
        metrics::gauge!("sluice_queue_bytes", "pipeline_id" => id.clone()).set(d.bytes as f64);
        now.insert(id);
    }
    for gone in seen.difference(&now) {
        metrics::gauge!("sluice_queue_batches", "pipeline_id" => gone.clone()).set(0.0);
        metrics::gauge!("sluice_queue_bytes", "pipeline_id" => gone.clone()).set(0.0);
    }
    *seen = now;
}
