//! TLS for the HTTP listener (R-SEC-3), with rustls.
//!
//! With `tls.cert_path` and `tls.key_path` set the listener speaks only
//! TLS (1.2 and 1.3, rustls' safe defaults, the `ring` provider the rest
//! of the workspace uses): a plain HTTP request to it fails the handshake
//! and gets no answer. `tls.required` makes a missing certificate a
//! start-up error rather than a silent plain-HTTP server.
//!
//! Certificates are renewed without a restart: on SIGHUP (or
//! [`crate::RunningServer::reload_tls`]) both files are read again and the
//! new config is swapped in atomically for new connections; open
//! connections keep the certificate they started with. A renewal that
//! cannot be loaded (a half-written file, a key that does not match) is
//! logged and the old certificate stays in use.

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_config::server::TlsConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The listener's TLS config and where it is loaded from.
#[derive(Clone)]
pub struct Tls {
    config: RustlsConfig,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Tls {
    /// Load the certificate and key named by `config`; `None` when TLS is
    /// not configured.
    pub fn load(config: &TlsConfig) -> anyhow::Result<Option<Tls>> {
        let (Some(cert_path), Some(key_path)) = (&config.cert_path, &config.key_path) else {
            return Ok(None);
        };
        let server_config = server_config(cert_path, key_path)?;
        Ok(Some(Tls {
            config: RustlsConfig::from_config(server_config),
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
        }))
    }

    pub fn rustls_config(&self) -> RustlsConfig {
        self.config.clone()
    }

    /// Read the certificate and key again and use them for new
    /// connections; on error the current ones stay.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let (cert, key) = (self.cert_path.clone(), self.key_path.clone());
        let fresh = tokio::task::spawn_blocking(move || server_config(&cert, &key))
            .await
            .context("loading the TLS certificate")??;
        self.config.reload_from_config(fresh);
        Ok(())
    }
}

/// A rustls server config from PEM files.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", cert_path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading the private key from {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reload `tls` on every SIGHUP until `shutdown`.
pub fn reload_on_sighup(tls: Tls, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered before returning, so a SIGHUP right after start-up
        // reloads instead of ending the process.
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; TLS certificates will not be reloaded");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => {
                        if got.is_none() {
                            return;
                        }
                        match tls.reload().await {
                            Ok(()) => tracing::info!("TLS certificate reloaded"),
                            Err(error) => tracing::error!(error = format!("{error:#}"), "TLS certificate reload failed; keeping the current one"),
                        }
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, shutdown);
    }
}
