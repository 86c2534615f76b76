//! The Sluice server: the HTTP API, batch ingestion and the workers, glued
//! to a [`sluice_store::Store`] and payload storage.
//!
//! [`start`] is the one way to run it, used by `sluice serve` and by the
//! black-box tests alike: it opens the database (migrating it), payload
//! storage and the keyring, binds the listener (port 0 works: the bound
//! address is returned and logged), and starts the API and/or the
//! workers as the configured role says. Shutdown (SIGTERM, or
//! [`RunningServer::shutdown`]) stops accepting, lets in-flight batches
//! finish within `shutdown_deadline_secs`, then releases their leases.

pub mod audit;
pub mod auth;
pub mod destination_health;
pub mod error;
pub mod extract;
pub mod headers;
pub mod ingest;
pub mod keyring;
pub mod lockout;
pub mod metrics;
pub mod payload;
pub mod ratelimit;
pub mod retention;
pub mod routes;
pub mod secrets;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod worker;

use anyhow::Context;
use sluice_config::ServerConfig;
use state::{AppState, Inner};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started server.
pub struct RunningServer {
    /// The address the HTTP listener is bound to.
    pub addr: SocketAddr,
    pub state: AppState,
    tasks: Vec<JoinHandle<()>>,
    hard_stop: CancellationToken,
    tls: Option<tls::Tls>,
}

impl RunningServer {
    /// Read the TLS certificate and key again (as SIGHUP does).
    pub async fn reload_tls(&self) -> anyhow::Result<()> {
        match &self.tls {
            Some(tls) => tls.reload().await,
            None => anyhow::bail!("this server does not serve TLS"),
        }
    }

    /// Begin a graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.state.shutdown().cancel();
    }

    /// Wait until the HTTP server and the workers have stopped. After a
    /// shutdown begins, in-flight batches get the configured deadline.
    pub async fn wait(self) {
        let deadline = Duration::from_secs(self.state.config().shutdown_deadline_secs);
        let shutdown = self.state.shutdown().clone();
        let hard_stop = self.hard_stop.clone();
        let timer = tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(deadline).await;
            hard_stop.cancel();
        });
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a server task ended abnormally");
            }
        }
        timer.abort();
    }
}

/// Open everything the config names and build the shared state.
pub async fn build_state(config: ServerConfig) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let url = config.database_url();
    let store = sluice_store::connect(&url, true)
        .await
        .with_context(|| format!("opening database {}", sluice_store::redact_url(&url)))?;
    let keyring = std::sync::Arc::new(keyring::Keyring::load(&config.data_dir)?);
    let payloads = payload::PayloadStore::open(
        config.storage.url.as_deref(),
        &config.data_dir,
        keyring.clone(),
    )?;
    let outbound =
        sluice_outbound::Outbound::from_config(&config.outbound).context("outbound settings")?;
    let redis = ratelimit::SharedRedis::open(&config.redis)?;
    let rate_limits = ratelimit::RateLimits::new(&config, redis.clone());
    let lockout = lockout::Lockout::new(&config.lockout, redis);
    Ok(AppState::new(Inner {
        rate_limits,
        lockout,
        config,
        store,
        payloads,
        keyring,
        metrics: metrics::install(),
        shutdown: CancellationToken::new(),
        workers_running: AtomicBool::new(false),
        batch_notify: tokio::sync::Notify::new(),
        outbound,
        destination_health: Default::default(),
    }))
}

/// Start the server described by `config`.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let role = config.role;
    let listen = config.listen;
    let tls = tls::Tls::load(&config.tls)?;
    let state = build_state(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let hard_stop = CancellationToken::new();
    let mut tasks = Vec::new();

    let app = if role.runs_api() {
        routes::router(state.clone())
    } else {
        routes::operations_router(state.clone())
    };
    let shutdown = state.shutdown().clone();
    match &tls {
        None => tasks.push(tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(error) = axum::serve(listener, service)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(%error, "the HTTP server failed");
            }
        })),
        Some(tls) => {
            // The listener speaks only TLS (R-SEC-3).
            let listener = listener.into_std()?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                stopper.graceful_shutdown(None);
            });
            tls::reload_on_sighup(tls.clone(), shutdown.clone());
            let server = axum_server::from_tcp_rustls(listener, tls.rustls_config()).handle(handle);
            tasks.push(tokio::spawn(async move {
                let service = app.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(error) = server.serve(service).await {
                    tracing::error!(%error, "the HTTPS server failed");
                }
            }));
        }
    }
    if role.runs_api() {
        ratelimit::spawn_housekeeping(state.clone());
    }
    if role.runs_workers() {
        let (s, h) = (state.clone(), hard_stop.clone());
        tasks.push(tokio::spawn(worker::run(s, h)));
        tasks.push(tokio::spawn(retention::run(state.clone())));
    }
    // Every active pipeline's destination is checked once at start, in
    // the background (docs/delivery.md, health checks).
    destination_health::refresh_if_stale(&state);
    // The port is logged on its own: the log redactor masks IP addresses.
    tracing::info!(addr = %addr, port = addr.port(), role = ?role, tls = tls.is_some(), version = env!("CARGO_PKG_VERSION"), "listening");
    Ok(RunningServer {
        addr,
        state,
        tasks,
        hard_stop,
        tls,
    })
}

/// Cancel `state.shutdown()` on SIGTERM or Ctrl-C.
pub fn shutdown_on_signals(state: &AppState) {
    let token = state.shutdown().clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::error!(%error, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}
