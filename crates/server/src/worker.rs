//! Batch workers (R-PROC-1..3, R-DEL-1, R-DEL-3, R-OPS-5).
//!
//! Each process runs `worker.concurrency` claim loops. A loop claims the
//! oldest claimable batch of an active pipeline under a lease, renews the
//! lease while it works, and gives the batch up if the lease is lost. The
//! payload is streamed from storage and cut into parts of
//! `worker.part_records` lines; parts are processed on blocking threads in
//! parallel (all cores) and each is delivered as soon as it is ready.
//! Part numbers are derived from record indexes, so a batch processed
//! twice (after a crash, a lost lease or a retry) produces the same parts,
//! and destinations overwrite instead of duplicating (R-DEL-1).
//!
//! Outcomes: every part delivered → `completed`. A transient delivery or
//! storage failure → the batch goes back to `pending` with exponential
//! backoff until `worker.max_attempts`, then `failed` with the reason. A
//! permanent failure → `failed` at once. With `on_error: fail_batch` the
//! batch is processed once without delivering; any failed record fails
//! it, else it is processed again and delivered. On shutdown, in-flight
//! batches get `shutdown_deadline_secs` to finish, then are released
//! without counting the attempt.

use crate::state::AppState;
use anyhow::Context;
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures::StreamExt;
use futures::stream::{BoxStream, FuturesUnordered};
use sluice_components::{BuildContext, CompiledPipeline, PartOutput, build_pipeline};
use sluice_config::{OnError, PipelineSpec};
use sluice_core::{FailureKind, OutputPart};
use sluice_store::{Batch, BatchOutcome, BatchStatus, NewBatchError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Compiled pipelines kept per process.
const CACHE_CAPACITY: usize = 256;

/// Run the claim loops until `state.shutdown()` is cancelled and every
/// in-flight batch is finished or released. `hard_stop` is cancelled when
/// the shutdown deadline has passed.
pub async fn run(state: AppState, hard_stop: CancellationToken) {
    let worker = Arc::new(Worker {
        id: worker_id(),
        state: state.clone(),
        cache: Mutex::new(HashMap::new()),
        hard_stop,
    });
    tracing::info!(worker_id = %worker.id, slots = state.config().worker.concurrency, "workers started");
    state.set_workers_running(true);
    let mut slots = Vec::new();
    for _ in 0..state.config().worker.concurrency {
        let w = worker.clone();
        slots.push(tokio::spawn(async move { w.claim_loop().await }));
    }
    for slot in slots {
        if let Err(error) = slot.await {
            tracing::error!(%error, "worker slot ended abnormally");
        }
    }
    state.set_workers_running(false);
    tracing::info!(worker_id = %worker.id, "workers stopped");
}

fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..8]
    )
}

struct Worker {
    id: String,
    state: AppState,
    cache: Mutex<HashMap<(Uuid, i64), Arc<CompiledPipeline>>>,
    hard_stop: CancellationToken,
}

/// Why an attempt did not complete.
#[derive(Debug)]
enum AttemptError {
    /// Retrying later may help (destination down, storage unreachable).
    Transient(String),
    /// Retrying will not help.
    Permanent(String),
    /// Another worker owns the batch now.
    LeaseLost,
    /// The shutdown deadline passed.
    Shutdown,
}

struct Counts {
    succeeded: i64,
    failed: i64,
}

impl Worker {
    async fn claim_loop(&self) {
        let cfg = &self.state.config().worker;
        let lease = Duration::from_secs(cfg.lease_secs);
        let poll = Duration::from_millis(cfg.poll_interval_ms);
        let shutdown = self.state.shutdown().clone();
        while !shutdown.is_cancelled() {
            match self.state.store().claim_batch(&self.id, lease).await {
                Ok(Some(batch)) => {
                    let span = tracing::info_span!("batch", batch_id = %batch.id, pipeline_id = %batch.pipeline_id, attempt = batch.attempts);
                    self.process(batch).instrument(span).await
                }
                Ok(None) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = self.state.batch_notify().notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "claiming a batch failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(poll * 5) => {}
                    }
                }
            }
        }
    }

    async fn process(&self, batch: Batch) {
        let started = Instant::now();
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_lease(
            self.state.clone(),
            self.id.clone(),
            batch.id,
            lost.clone(),
        ));
        let result = tokio::select! {
            r = self.attempt(&batch) => r,
            _ = lost.cancelled() => Err(AttemptError::LeaseLost),
            _ = self.hard_stop.cancelled() => Err(AttemptError::Shutdown),
        };
        keeper.abort();
        self.conclude(&batch, result, started).await;
    }

    async fn attempt(&self, batch: &Batch) -> Result<(Counts, Option<String>), AttemptError> {
        let compiled = self.compiled(batch).await?;
        let store = self.state.store();
        store
            .clear_batch_errors(batch.id)
            .await
            .map_err(|e| AttemptError::Transient(format!("database: {e}")))?;
        if compiled.on_error() == OnError::FailBatch {
            let dry = self.run_parts(batch, &compiled, false).await?;
            if dry.failed > 0 {
                let reason = format!(
                    "{} record(s) failed and on_error is fail_batch; nothing was delivered",
                    dry.failed
                );
                return Ok((
                    Counts {
                        succeeded: 0,
                        failed: dry.failed,
                    },
                    Some(reason),
                ));
            }
        }
        let counts = self.run_parts(batch, &compiled, true).await?;
        Ok((counts, None))
    }

    /// Build (or reuse) the pipeline for the batch's config version.
    async fn compiled(&self, batch: &Batch) -> Result<Arc<CompiledPipeline>, AttemptError> {
        let key = (batch.pipeline_id, batch.config_version);
        if let Some(hit) = self.cache_get(&key) {
            return Ok(hit);
        }
        let (pipeline, version) = self
            .state
            .store()
            .get_pipeline_version(batch.pipeline_id, batch.config_version)
            .await
            .map_err(|e| AttemptError::Transient(format!("database: {e}")))?
            .ok_or_else(|| {
                AttemptError::Permanent("the pipeline config version no longer exists".into())
            })?;
        // Secret fields are stored encrypted (R-SEC-1): decrypt them for
        // the build only. A key this process lacks may still be added by
        // the operator, so that is worth a retry; a value that fails
        // authentication is not.
        let mut config = version.config.clone();
        crate::secrets::decrypt_config(
            self.state.keyring(),
            pipeline.tenant_id,
            pipeline.id,
            &mut config,
        )
        .map_err(|e| match e {
            crate::secrets::SecretError::UnknownKey(_) => {
                AttemptError::Transient(format!("pipeline secrets: {e}"))
            }
            _ => AttemptError::Permanent(format!("pipeline secrets: {e}")),
        })?;
        let spec = PipelineSpec::parse(&config).map_err(|problems| {
            AttemptError::Permanent(format!("the stored config is invalid: {}", join(&problems)))
        })?;
        let ctx = BuildContext {
            tenant_id: pipeline.tenant_id,
            pipeline_id: pipeline.id,
            pipeline_name: pipeline.name.clone(),
            config_version: version.version,
            output_root: self.state.output_root(pipeline.tenant_id),
            hash_key: self.state.keyring().tenant_hash_key(pipeline.tenant_id),
            outbound: self.state.outbound().clone(),
        };
        let built = tokio::task::spawn_blocking(move || build_pipeline(&spec, &ctx))
            .await
            .map_err(|e| AttemptError::Transient(format!("build task: {e}")))?
            .map_err(|problems| {
                AttemptError::Permanent(format!(
                    "the pipeline could not be built: {}",
                    join(&problems)
                ))
            })?;
        let built = Arc::new(built);
        self.cache_put(key, built.clone());
        Ok(built)
    }

    fn cache_get(&self, key: &(Uuid, i64)) -> Option<Arc<CompiledPipeline>> {
        match self.cache.lock() {
            Ok(c) => c.get(key).cloned(),
            Err(poisoned) => poisoned.into_inner().get(key).cloned(),
        }
    }

    fn cache_put(&self, key: (Uuid, i64), value: Arc<CompiledPipeline>) {
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, value);
    }

    /// Stream the payload in parts, process them in parallel and (when
    /// `deliver`) deliver each. Failed-record captures are stored on the
    /// delivering pass (or the only pass of a fail_batch dry run).
    async fn run_parts(
        &self,
        batch: &Batch,
        compiled: &Arc<CompiledPipeline>,
        deliver: bool,
    ) -> Result<Counts, AttemptError> {
        let cfg = self.state.config();
        let part_records = cfg.worker.part_records;
        let stream = self
            .state
            .payloads()
            .read(&batch.payload_key)
            .await
            .map_err(|e| AttemptError::Transient(format!("payload storage: {e:#}")))?;
        let mut parts = PartReader::new(stream, part_records)
            .with_capacity(usize::try_from(batch.payload_bytes).unwrap_or(0));
        let max_inflight = cfg.worker_threads().max(1) + 1;
        let destination = match compiled.destination() {
            Some(d) => Some(d.clone()),
            None if deliver => {
                return Err(AttemptError::Permanent(
                    "the pipeline has no destination".into(),
                ));
            }
            None => None,
        };
        let mut inflight = FuturesUnordered::new();
        let mut counts = Counts {
            succeeded: 0,
            failed: 0,
        };
        let mut done = false;
        // After a part fails, no new part starts, but the parts already in
        // flight run to their end: cancelling them would also cancel a
        // circuit breaker's half-open probe, which then never reports, and
        // a multi-part batch could never get through a recovering target.
        // The attempt reports the gravest of its parts' errors (see
        // `graver`).
        let mut first_error: Option<AttemptError> = None;
        while !done || !inflight.is_empty() {
            if !done && inflight.len() < max_inflight {
                match parts.next().await {
                    Ok(Some((first_index, bytes))) => {
                        let compiled = compiled.clone();
                        let batch_id = batch.id;
                        let part_no = (first_index / part_records as u64) as u32;
                        let destination = if deliver { destination.clone() } else { None };
                        let tenant_id = batch.tenant_id;
                        let pipeline_id = batch.pipeline_id;
                        inflight.push(async move {
                            let mut output = tokio::task::spawn_blocking(move || {
                                compiled.process_part(batch_id, first_index, &bytes)
                            })
                            .await
                            .map_err(|e| AttemptError::Transient(format!("processing task: {e}")))?;
                            if let Some(dest) = destination
                                && output.records_out > 0
                            {
                                let part = OutputPart {
                                    tenant_id,
                                    pipeline_id,
                                    batch_id,
                                    part: part_no,
                                    record_count: output.records_out,
                                    ndjson: Bytes::from(std::mem::take(&mut output.ndjson)),
                                };
                                dest.write(&part).await.map_err(|e| {
                                    metrics::counter!("sluice_delivery_failures_total", "destination" => dest.type_name(), "kind" => kind_label(e.kind)).increment(1);
                                    match e.kind {
                                        FailureKind::Transient => AttemptError::Transient(format!("{} destination: {}", dest.type_name(), e.message)),
                                        FailureKind::Permanent => AttemptError::Permanent(format!("{} destination: {}", dest.type_name(), e.message)),
                                    }
                                })?;
                            }
                            Ok::<PartOutput, AttemptError>(output)
                        });
                        continue;
                    }
                    Ok(None) => done = true,
                    Err(e) => {
                        return Err(AttemptError::Transient(format!("payload storage: {e:#}")));
                    }
                }
                if inflight.is_empty() {
                    break;
                }
            }
            let Some(result) = inflight.next().await else {
                break;
            };
            let output = match result {
                Ok(output) => output,
                Err(e) => {
                    done = true;
                    first_error = Some(graver(first_error.take(), e));
                    continue;
                }
            };
            counts.failed += output.failures.len() as i64;
            counts.succeeded += output.records_in as i64 - output.failures.len() as i64;
            if !output.failures.is_empty() {
                let rows: Vec<NewBatchError> = output
                    .failures
                    .into_iter()
                    .map(|f| NewBatchError {
                        record_index: f.record_index as i64,
                        processor_index: f.processor_index as i32,
                        processor_type: f.processor_type,
                        code: f.code.as_str().to_owned(),
                        message: f.message,
                        // Captures are encrypted at rest (R-SEC-2).
                        record: crate::secrets::seal_record(
                            self.state.keyring(),
                            batch.tenant_id,
                            batch.id,
                            f.record_index as i64,
                            &f.record,
                        ),
                    })
                    .collect();
                self.state
                    .store()
                    .insert_batch_errors(batch.id, &rows)
                    .await
                    .map_err(|e| AttemptError::Transient(format!("database: {e}")))?;
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(counts)
    }

    async fn conclude(
        &self,
        batch: &Batch,
        result: Result<(Counts, Option<String>), AttemptError>,
        started: Instant,
    ) {
        let store = self.state.store();
        let pipeline = batch.pipeline_id.to_string();
        let outcome = match result {
            Ok((counts, failure)) => {
                metrics::counter!("sluice_records_processed_total", "pipeline_id" => pipeline.clone()).increment(counts.succeeded.max(0) as u64);
                metrics::counter!("sluice_records_failed_total", "pipeline_id" => pipeline.clone())
                    .increment(counts.failed.max(0) as u64);
                let status = if failure.is_some() {
                    BatchStatus::Failed
                } else {
                    BatchStatus::Completed
                };
                Some(BatchOutcome {
                    status,
                    succeeded_count: counts.succeeded,
                    failed_count: counts.failed,
                    error: failure,
                })
            }
            Err(AttemptError::Permanent(reason)) => Some(BatchOutcome {
                status: BatchStatus::Failed,
                succeeded_count: 0,
                failed_count: 0,
                error: Some(reason),
            }),
            Err(AttemptError::Transient(reason)) => {
                let max = self.state.config().worker.max_attempts as i32;
                if batch.attempts >= max {
                    Some(BatchOutcome {
                        status: BatchStatus::Failed,
                        succeeded_count: 0,
                        failed_count: 0,
                        error: Some(format!(
                            "gave up after {} attempts: {reason}",
                            batch.attempts
                        )),
                    })
                } else {
                    let delay = backoff(&self.state.config().worker, batch.attempts);
                    tracing::warn!(error = %reason, retry_in_secs = delay.as_secs(), "batch attempt failed; will retry");
                    let not_before =
                        Utc::now() + chrono::Duration::milliseconds(delay.as_millis() as i64);
                    if let Err(error) = store
                        .release_batch(batch.id, &self.id, Some(not_before), Some(&reason), false)
                        .await
                    {
                        tracing::error!(%error, "releasing a batch failed; its lease will expire");
                    }
                    metrics::counter!("sluice_batch_retries_total").increment(1);
                    None
                }
            }
            Err(AttemptError::LeaseLost) => {
                tracing::warn!("lease lost; another worker owns the batch");
                None
            }
            Err(AttemptError::Shutdown) => {
                if let Err(error) = store
                    .release_batch(batch.id, &self.id, None, None, true)
                    .await
                {
                    tracing::error!(%error, "releasing a batch at shutdown failed; its lease will expire");
                } else {
                    tracing::info!("batch released at shutdown");
                }
                None
            }
        };
        if let Some(outcome) = outcome {
            let status = outcome.status;
            match store.finish_batch(batch.id, &self.id, &outcome).await {
                Ok(true) => {
                    metrics::counter!("sluice_batches_finished_total", "status" => status.as_str())
                        .increment(1);
                    let latency =
                        (Utc::now() - batch.created_at).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics::histogram!("sluice_batch_latency_seconds", "pipeline_id" => pipeline.clone()).record(latency);
                    metrics::gauge!("sluice_pipeline_last_run_timestamp_seconds", "pipeline_id" => pipeline.clone())
                        .set(Utc::now().timestamp_millis() as f64 / 1000.0);
                    metrics::histogram!("sluice_batch_processing_seconds")
                        .record(started.elapsed().as_secs_f64());
                    if status == BatchStatus::Failed {
                        tracing::warn!(
                            error = outcome.error.as_deref().unwrap_or(""),
                            "batch failed"
                        );
                    } else {
                        tracing::info!(
                            succeeded = outcome.succeeded_count,
                            failed = outcome.failed_count,
                            "batch completed"
                        );
                    }
                }
                Ok(false) => tracing::warn!("lease lost before the batch could be finished"),
                Err(error) => {
                    tracing::error!(%error, "finishing a batch failed; it will be processed again")
                }
            }
        }
    }
}

/// The error an attempt reports when several of its parts failed: the
/// first permanent one, else the first. While one part holds the breaker's
/// half-open probe, the other parts fail fast with "circuit breaker open";
/// if the probe then meets a permanent refusal, keeping only the first
/// error would re-queue the batch for a transient reason on every attempt
/// and hide the real one until the retry budget is spent.
fn graver(first: Option<AttemptError>, next: AttemptError) -> AttemptError {
    match first {
        Some(first @ AttemptError::Permanent(_)) => first,
        Some(first) if !matches!(next, AttemptError::Permanent(_)) => {
            tracing::debug!(error = ?next, "another part of the attempt failed");
            first
        }
        _ => next,
    }
}

fn join(problems: &[sluice_core::Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn kind_label(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Transient => "transient",
        FailureKind::Permanent => "permanent",
    }
}

/// `retry_initial_ms` doubled per attempt after the first, with ±25%
/// jitter, capped at `retry_max_secs`.
fn backoff(cfg: &sluice_config::server::WorkerConfig, attempts: i32) -> Duration {
    let base = cfg.retry_initial_ms as f64 / 1000.0 * 2f64.powi((attempts - 1).clamp(0, 30));
    let base = base.min(cfg.retry_max_secs as f64);
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    Duration::from_secs_f64(base * jitter)
}

/// Renew the lease every third of its length; cancel `lost` when it is
/// gone (or cannot be renewed before it expires).
async fn keep_lease(state: AppState, worker_id: String, batch_id: Uuid, lost: CancellationToken) {
    let lease = Duration::from_secs(state.config().worker.lease_secs);
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        match state.store().renew_lease(batch_id, &worker_id, lease).await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "renewing a lease failed");
                if last_ok.elapsed() >= lease {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

/// Largest up-front reservation of a [`PartReader`] buffer.
const READ_BUFFER_CAP: usize = 16 << 20;

/// Cuts a payload stream into parts of `part_records` lines.
struct PartReader {
    stream: BoxStream<'static, anyhow::Result<Bytes>>,
    buf: BytesMut,
    /// Bytes of `buf` already scanned for newlines, and lines found there.
    scanned: usize,
    lines: usize,
    part_records: usize,
    next_index: u64,
    eof: bool,
}

impl PartReader {
    fn new(stream: BoxStream<'static, anyhow::Result<Bytes>>, part_records: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            scanned: 0,
            lines: 0,
            part_records,
            next_index: 0,
            eof: false,
        }
    }

    /// Reserve the buffer once for a payload of `bytes` (capped at
    /// [`READ_BUFFER_CAP`]) instead of growing it chunk by chunk: every
    /// doubling faults in and zeroes fresh pages, which showed in profiles
    /// under load (docs/performance.md).
    fn with_capacity(mut self, bytes: usize) -> Self {
        self.buf.reserve(bytes.min(READ_BUFFER_CAP));
        self
    }

    /// The next part: the batch index of its first record and its lines.
    async fn next(&mut self) -> anyhow::Result<Option<(u64, Bytes)>> {
        loop {
            while self.lines < self.part_records {
                match memchr::memchr(b'\n', &self.buf[self.scanned..]) {
                    Some(pos) => {
                        self.scanned += pos + 1;
                        self.lines += 1;
                    }
                    None => {
                        self.scanned = self.buf.len();
                        break;
                    }
                }
            }
            if self.lines == self.part_records || (self.eof && !self.buf.is_empty()) {
                let take = if self.lines == self.part_records {
                    self.scanned
                } else {
                    self.buf.len()
                };
                let part = self.buf.split_to(take).freeze();
                let count = if self.lines == self.part_records {
                    self.lines
                } else {
                    self.lines + usize::from(!part.ends_with(b"\n"))
                };
                let first = self.next_index;
                self.next_index += count as u64;
                self.scanned = 0;
                self.lines = 0;
                return Ok(Some((first, part)));
            }
            if self.eof {
                return Ok(None);
            }
            match self.stream.next().await {
                Some(chunk) => self
                    .buf
                    .extend_from_slice(&chunk.context("reading payload")?),
                None => self.eof = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn parts_of(data: &'static [u8], chunk: usize, n: usize) -> Vec<(u64, Vec<u8>)> {
        let chunks: Vec<anyhow::Result<Bytes>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::from_static(c)))
            .collect();
        let mut r = PartReader::new(futures::stream::iter(chunks).boxed(), n);
        let mut out = Vec::new();
        while let Some((i, p)) = r.next().await.unwrap() {
            out.push((i, p.to_vec()));
        }
        out
    }

    #[tokio::test]
    async fn parts_follow_record_indexes_whatever_the_chunking() {
        let data = b"a\nb\nc\nd\ne\n";
        for chunk in [1, 2, 3, 100] {
            let parts = parts_of(data, chunk, 2).await;
            assert_eq!(
                parts,
                vec![
                    (0, b"a\nb\n".to_vec()),
                    (2, b"c\nd\n".to_vec()),
                    (4, b"e\n".to_vec())
                ],
                "chunk {chunk}"
            );
        }
        assert!(parts_of(b"", 1, 2).await.is_empty());
        assert_eq!(parts_of(b"a\nb", 1, 5).await, vec![(0, b"a\nb".to_vec())]);
    }

    #[test]
    fn a_permanent_part_error_outweighs_transient_ones() {
        let t = |m: &str| AttemptError::Transient(m.into());
        let p = |m: &str| AttemptError::Permanent(m.into());
        let e = graver(Some(t("circuit breaker open")), p("HTTP 411"));
        assert!(matches!(e, AttemptError::Permanent(m) if m == "HTTP 411"));
        let e = graver(Some(p("first")), p("second"));
        assert!(matches!(e, AttemptError::Permanent(m) if m == "first"));
        let e = graver(Some(p("first")), t("later"));
        assert!(matches!(e, AttemptError::Permanent(m) if m == "first"));
        let e = graver(Some(t("first")), t("second"));
        assert!(matches!(e, AttemptError::Transient(m) if m == "first"));
        let e = graver(None, t("only"));
        assert!(matches!(e, AttemptError::Transient(m) if m == "only"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = sluice_config::server::WorkerConfig::default();
        assert!(backoff(&cfg, 1) <= Duration::from_secs_f64(2.5));
        assert!(backoff(&cfg, 3) >= Duration::from_secs(6));
        assert!(backoff(&cfg, 50) <= Duration::from_secs(750));
        let fast = sluice_config::server::WorkerConfig {
            retry_initial_ms: 100,
            retry_max_secs: 1,
            ..cfg
        };
        assert!(backoff(&fast, 1) <= Duration::from_millis(125));
        assert!(backoff(&fast, 20) <= Duration::from_millis(1250));
    }
}
