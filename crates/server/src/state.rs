//! Shared server state: config, store, payload storage, keys, metrics.

use crate::keyring::Keyring;
use crate::payload::PayloadStore;
use axum::extract::{ConnectInfo, Request};
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_config::ServerConfig;
use sluice_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: ServerConfig,
    pub store: Arc<dyn Store>,
    pub payloads: PayloadStore,
    pub keyring: Arc<Keyring>,
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled when the process starts shutting down.
    pub shutdown: CancellationToken,
    /// Set while this process's workers are running (for `/readyz`).
    pub workers_running: AtomicBool,
    /// Wakes idle workers of this process when a batch is accepted.
    pub batch_notify: tokio::sync::Notify,
    /// What outbound calls may reach (`[outbound]`), for building pipelines.
    pub outbound: sluice_outbound::Outbound,
    /// Request rate limits (per key, per client address).
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Client addresses locked out after failed authentications.
    pub lockout: crate::lockout::Lockout,
    /// The last health check of each pipeline's destination.
    pub destination_health: crate::destination_health::DestinationHealth,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    pub fn payloads(&self) -> &PayloadStore {
        &self.0.payloads
    }

    pub fn keyring(&self) -> &Keyring {
        &self.0.keyring
    }

    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.0.metrics.as_ref()
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    pub fn set_workers_running(&self, running: bool) {
        self.0.workers_running.store(running, Ordering::Relaxed);
    }

    pub fn batch_notify(&self) -> &tokio::sync::Notify {
        &self.0.batch_notify
    }

    pub fn outbound(&self) -> &sluice_outbound::Outbound {
        &self.0.outbound
    }

    pub fn rate_limits(&self) -> &crate::ratelimit::RateLimits {
        &self.0.rate_limits
    }

    pub fn lockout(&self) -> &crate::lockout::Lockout {
        &self.0.lockout
    }

    pub fn destination_health(&self) -> &crate::destination_health::DestinationHealth {
        &self.0.destination_health
    }

    pub fn workers_running(&self) -> bool {
        self.0.workers_running.load(Ordering::Relaxed)
    }

    /// Root of file-destination outputs for a tenant.
    pub fn output_root(&self, tenant_id: uuid::Uuid) -> std::path::PathBuf {
        self.0
            .config
            .data_dir
            .join("output")
            .join(tenant_id.to_string())
    }
}

/// The client's address as seen by the socket (no proxy headers are
/// trusted).
pub fn client_addr(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}
