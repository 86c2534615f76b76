//! Retention and erasure (R-SEC-8).
//!
//! [`run`] is the background job every worker process runs: each
//! `retention.interval_secs` it deletes, in bounded rounds, the payloads of
//! batches that finished more than `payload_days` ago, failed-record
//! captures older than `failed_record_days`, rows of batches that finished
//! more than `batch_days` ago (with their payloads and captures), and
//! files under `<data_dir>/output` (written by the `file` destination, the
//! one kind of output Sluice keeps locally) not modified for
//! `output_days`. Several processes running it at once only share the
//! work: every deletion is idempotent, and a payload is marked purged in
//! the database before its object is deleted, so a retry never starts on a
//! payload that is going away.
//!
//! [`erase_tenant`] (`sluice tenant delete --erase`) removes every row of a
//! tenant in one transaction, then every payload object under the tenant's
//! prefix (also any left behind by a crash) and its output directory, and
//! records the erasure in the system audit chain, which has no foreign key
//! to the tenant and so outlives it. Tenant keys are derived, never stored,
//! so nothing else is left to delete.

use crate::payload::PayloadStore;
use crate::state::AppState;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;
use sluice_config::server::RetentionConfig;
use sluice_store::{NewAuditEvent, Store};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// Rows handled per statement, so one run never holds a long transaction.
const ROUND: u32 = 500;

/// What one retention run deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub payloads: u64,
    pub captures: u64,
    pub batches: u64,
    pub output_files: u64,
}

/// Run the retention job until shutdown.
pub async fn run(state: AppState) {
    let config = state.config().retention.clone();
    let interval = Duration::from_secs(config.interval_secs.max(1));
    let shutdown = state.shutdown().clone();
    loop {
        match run_once(
            state.store().as_ref(),
            state.payloads(),
            &state.config().data_dir.join("output"),
            &config,
            Utc::now(),
        )
        .await
        {
            Ok(report) if report != RetentionReport::default() => {
                tracing::info!(
                    payloads = report.payloads,
                    captures = report.captures,
                    batches = report.batches,
                    output_files = report.output_files,
                    "retention removed expired data"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "retention run failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

fn cutoff(now: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    (days > 0).then(|| now - ChronoDuration::days(i64::from(days)))
}

/// One pass over everything that has expired at `now` (the job passes the
/// current time; tests pass a later one).
pub async fn run_once(
    store: &dyn Store,
    payloads: &PayloadStore,
    output_dir: &Path,
    config: &RetentionConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<RetentionReport> {
    let mut report = RetentionReport::default();
    if let Some(before) = cutoff(now, config.payload_days) {
        loop {
            let keys = store.purge_payloads_before(before, ROUND).await?;
            for key in &keys {
                payloads.delete(key).await?;
            }
            report.payloads += keys.len() as u64;
            if keys.len() < ROUND as usize {
                break;
            }
        }
    }
    if let Some(before) = cutoff(now, config.failed_record_days) {
        loop {
            let n = store.delete_batch_errors_before(before, ROUND).await?;
            report.captures += n;
            if n < u64::from(ROUND) {
                break;
            }
        }
    }
    if let Some(before) = cutoff(now, config.batch_days) {
        loop {
            let (rows, keys) = store.delete_batches_before(before, ROUND).await?;
            for key in &keys {
                payloads.delete(key).await?;
            }
            report.payloads += keys.len() as u64;
            report.batches += rows;
            if rows < u64::from(ROUND) {
                break;
            }
        }
    }
    if config.output_days > 0 {
        let max_age = Duration::from_secs(u64::from(config.output_days) * 86_400);
        let dir = output_dir.to_path_buf();
        let now = SystemTime::from(now);
        report.output_files +=
            tokio::task::spawn_blocking(move || expire_files(&dir, now, max_age)).await??;
    }
    Ok(report)
}

/// Delete regular files under `dir` not modified for `max_age`, and the
/// directories that become empty. Symbolic links are not followed.
fn expire_files(dir: &Path, now: SystemTime, max_age: Duration) -> anyhow::Result<u64> {
    let mut deleted = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(e) => e,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error.into()),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
                dirs.push(entry.path());
            } else if kind.is_file() {
                let modified = entry.metadata()?.modified()?;
                if now.duration_since(modified).unwrap_or_default() >= max_age {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => deleted += 1,
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        }
    }
    // Deepest first; a directory that is not empty stays.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
    Ok(deleted)
}

/// What an erasure removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    pub tenant_id: Uuid,
    /// Batches whose payload keys the database held.
    pub batches: u64,
    /// Payload objects deleted (also any the database no longer named).
    pub payload_objects: u64,
    /// Whether an output directory was removed.
    pub output_removed: bool,
}

/// Erase a tenant: every row, payload and local output, then an audit
/// record in the system chain. `output_root` is `<data_dir>/output`.
pub async fn erase_tenant(
    store: &dyn Store,
    payloads: &PayloadStore,
    output_root: &Path,
    tenant_id: Uuid,
    actor: &str,
) -> anyhow::Result<ErasureReport> {
    use anyhow::Context;
    let keys = store
        .erase_tenant(tenant_id)
        .await
        .with_context(|| format!("erasing tenant {tenant_id}"))?;
    let mut report = ErasureReport {
        tenant_id,
        batches: keys.len() as u64,
        ..ErasureReport::default()
    };
    for key in &keys {
        payloads.delete(key).await?;
    }
    report.payload_objects =
        keys.len() as u64 + payloads.delete_prefix(&tenant_id.to_string()).await?;
    let dir = output_root.join(tenant_id.to_string());
    if dir.exists() {
        tokio::fs::remove_dir_all(&dir)
            .await
            .with_context(|| format!("removing {}", dir.display()))?;
        report.output_removed = true;
    }
    store
        .append_system_audit(NewAuditEvent {
            tenant_id,
            actor_key_id: None,
            action: "tenant.erase".into(),
            target: Some(format!("tenant:{tenant_id}")),
            request_id: None,
            client_addr: Some(actor.to_owned()),
            details: serde_json::json!({
                "batches": report.batches,
                "payload_objects": report.payload_objects,
                "output_removed": report.output_removed,
            }),
        })
        .await?;
    tracing::warn!(
        target: "sluice::security",
        security_event = "tenant.erase",
        tenant_id = %tenant_id,
        batches = report.batches,
        "tenant erased"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn old_output_files_expire_and_empty_directories_go() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("t1/p1/part-0.ndjson");
        let fresh = dir.path().join("t2/p2/part-0.ndjson");
        for f in [&old, &fresh] {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"{}\n").unwrap();
        }
        let past = SystemTime::now() - Duration::from_secs(10 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let days = |n: u64| Duration::from_secs(n * 86_400);
        assert_eq!(
            expire_files(dir.path(), SystemTime::now(), days(11)).unwrap(),
            0
        );
        assert_eq!(
            expire_files(dir.path(), SystemTime::now(), days(5)).unwrap(),
            1
        );
        assert!(!old.exists());
        assert!(!dir.path().join("t1").exists());
        assert!(fresh.exists());
        // A missing output directory is nothing to do.
        assert_eq!(
            expire_files(&dir.path().join("none"), SystemTime::now(), Duration::ZERO).unwrap(),
            0
        );
    }
}
