//! Batch submission: `POST /api/v1/pipelines/{id}/batches` (R-API-2..4).
//!
//! The body is streamed: decompressed on the fly (gzip, zstd), split into
//! records and checked block by block on a blocking thread, and written
//! to payload storage as normalized NDJSON while it arrives. Only when the
//! payload is complete and durable is the batch row committed, and only
//! then is 202 returned; a body that breaks a limit or is not valid leaves
//! nothing behind. With an `Idempotency-Key`, the SHA-256 of the
//! decompressed body tells a replay (200 with the original batch) from a
//! conflicting reuse (409).

pub mod split;

use crate::error::{ApiError, ApiResult};
use crate::payload::PayloadWriter;
use crate::state::AppState;
use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sluice_core::ErrorCode;
use sluice_store::{Batch, NewBatch, Pipeline, StoreError};
use split::{Format, Limits, SplitError, Splitter};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::StreamReader;
use uuid::Uuid;

/// Bytes read from the (decompressed) body before a block is split.
const BLOCK_BYTES: usize = 1 << 20;
/// Block and output buffers kept for the next requests (two per request
/// in flight). Reusing them keeps fresh pages (faulted in and zeroed by the
/// kernel) out of the ingest path and stops every blocking thread's
/// allocator from holding its own copies; see docs/performance.md.
const POOLED_BUFFERS: usize = 16;
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn take_buffer() -> Vec<u8> {
    let pooled = match BUFFERS.lock() {
        Ok(mut pool) => pool.pop(),
        Err(poisoned) => poisoned.into_inner().pop(),
    };
    pooled.unwrap_or_else(|| Vec::with_capacity(BLOCK_BYTES))
}

fn give_buffer(mut buf: Vec<u8>) {
    // A buffer grown far past a block (a huge carried-over record) is not
    // worth keeping.
    if buf.capacity() > 4 * BLOCK_BYTES {
        return;
    }
    buf.clear();
    let mut pool = match BUFFERS.lock() {
        Ok(pool) => pool,
        Err(poisoned) => poisoned.into_inner(),
    };
    if pool.len() < POOLED_BUFFERS {
        pool.push(buf);
    }
}

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The outcome of a submission.
pub enum Submitted {
    /// A new batch (202).
    Created(Batch),
    /// The same `Idempotency-Key` and body as an earlier batch (200).
    Replayed(Batch),
}

/// Accept one batch for `pipeline`.
pub async fn submit(
    state: &AppState,
    pipeline: &Pipeline,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Submitted> {
    let format = content_format(headers)?;
    let idempotency_key = idempotency_key(headers)?;
    let existing = match &idempotency_key {
        Some(key) => {
            state
                .store()
                .find_batch_by_idempotency_key(pipeline.tenant_id, pipeline.id, key)
                .await?
        }
        None => None,
    };
    if existing.is_none() {
        check_queue(state, pipeline, content_length(headers)).await?;
    }

    let limits = &state.config().limits;
    let reader = decoded_reader(headers, body)?;
    let splitter = Splitter::new(
        format,
        Limits {
            max_record_bytes: limits.max_record_bytes,
            max_records: limits.max_records,
            max_depth: limits.max_depth,
        },
    );
    let hash = idempotency_key.is_some().then(Sha256::new);

    if let Some(existing) = existing {
        // A replay: read (and check) the body only to compare its hash.
        let outcome = pump(reader, splitter, hash, None, limits.max_body_bytes).await?;
        return replay_or_conflict(existing, outcome.sha256.as_deref());
    }

    let batch_id = Uuid::now_v7();
    let key = format!("{}/{}/{}.ndjson", pipeline.tenant_id, pipeline.id, batch_id);
    let writer = state
        .payloads()
        .writer(&key)
        .await
        .map_err(ApiError::unavailable)?;
    let outcome = pump(reader, splitter, hash, Some(writer), limits.max_body_bytes).await?;
    let Some(writer) = outcome.writer else {
        return Err(ApiError::internal("payload writer lost"));
    };
    if outcome.records == 0 {
        writer.abort().await;
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "the batch holds no records",
        ));
    }
    let payload_bytes = writer.bytes();
    if let Err(error) = check_queue(state, pipeline, Some(payload_bytes)).await {
        writer.abort().await;
        return Err(error);
    }
    writer.finish().await.map_err(ApiError::unavailable)?;

    let new = NewBatch {
        id: batch_id,
        tenant_id: pipeline.tenant_id,
        pipeline_id: pipeline.id,
        config_version: pipeline.version,
        record_count: outcome.records as i64,
        payload_key: key.clone(),
        payload_bytes: payload_bytes as i64,
        idempotency_key,
        body_sha256: outcome.sha256.clone(),
    };
    match state.store().create_batch(new).await {
        Ok(batch) => {
            metrics::counter!("sluice_ingest_records_total").increment(outcome.records);
            metrics::counter!("sluice_ingest_bytes_total").increment(outcome.body_bytes);
            metrics::counter!("sluice_batches_accepted_total").increment(1);
            state.batch_notify().notify_waiters();
            Ok(Submitted::Created(batch))
        }
        Err(StoreError::DuplicateIdempotencyKey(existing)) => {
            // Lost a race with a concurrent submission of the same key.
            delete_quietly(state, &key).await;
            replay_or_conflict(*existing, outcome.sha256.as_deref())
        }
        Err(error) => {
            delete_quietly(state, &key).await;
            Err(error.into())
        }
    }
}

async fn delete_quietly(state: &AppState, key: &str) {
    if let Err(error) = state.payloads().delete(key).await {
        tracing::warn!(%error, "deleting an uncommitted payload failed");
    }
}

fn replay_or_conflict(existing: Batch, sha256: Option<&str>) -> ApiResult<Submitted> {
    if existing.body_sha256.as_deref() == sha256 {
        Ok(Submitted::Replayed(existing))
    } else {
        Err(ApiError::new(
            ErrorCode::IdempotencyConflict,
            "this Idempotency-Key was already used with a different body",
        ))
    }
}

struct PumpOutcome {
    records: u64,
    body_bytes: u64,
    sha256: Option<String>,
    writer: Option<PayloadWriter>,
}

/// Read the decoded body block by block, split and check it off the async
/// threads, and stream the normalized records to `writer`.
async fn pump(
    mut reader: Box<dyn AsyncRead + Send + Unpin>,
    splitter: Splitter,
    hash: Option<Sha256>,
    mut writer: Option<PayloadWriter>,
    max_body_bytes: u64,
) -> ApiResult<PumpOutcome> {
    let mut work = Some((splitter, hash, take_buffer(), take_buffer()));
    let mut body_bytes = 0u64;
    let result: ApiResult<(Splitter, Option<Sha256>)> = async {
        loop {
            let Some((splitter, hash, mut block, spare)) = work.take() else {
                return Err(ApiError::internal("ingest state lost"));
            };
            block.clear();
            let eof = fill_block(&mut reader, &mut block).await?;
            body_bytes += block.len() as u64;
            if body_bytes > max_body_bytes {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the body is larger than the limit max_body_bytes ({max_body_bytes} bytes)"
                    ),
                ));
            }
            let (splitter, hash, block, out, res) = tokio::task::spawn_blocking(move || {
                let (mut splitter, mut hash) = (splitter, hash);
                splitter.recycle(spare);
                if let Some(h) = hash.as_mut() {
                    h.update(&block);
                }
                let mut res = splitter.feed(&block);
                if res.is_ok() && eof {
                    res = splitter.finish();
                }
                let out = splitter.take_output();
                (splitter, hash, block, out, res)
            })
            .await
            .map_err(ApiError::internal)?;
            res.map_err(split_error)?;
            if let Some(w) = writer.as_mut() {
                w.write(&out).await.map_err(ApiError::unavailable)?;
            }
            if eof {
                give_buffer(block);
                give_buffer(out);
                return Ok((splitter, hash));
            }
            work = Some((splitter, hash, block, out));
        }
    }
    .await;
    match result {
        Ok((splitter, hash)) => Ok(PumpOutcome {
            records: splitter.records(),
            body_bytes,
            sha256: hash.map(|h| hex::encode(h.finalize())),
            writer,
        }),
        Err(error) => {
            if let Some(w) = writer {
                w.abort().await;
            }
            Err(error)
        }
    }
}

/// Fill `block` up to [`BLOCK_BYTES`]; true at end of body.
async fn fill_block(
    reader: &mut Box<dyn AsyncRead + Send + Unpin>,
    block: &mut Vec<u8>,
) -> ApiResult<bool> {
    while block.len() < BLOCK_BYTES {
        let n = reader
            .as_mut()
            .take((BLOCK_BYTES - block.len()) as u64)
            .read_to_end(block)
            .await
            .map_err(read_error)?;
        if n == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_error(error: std::io::Error) -> ApiError {
    // Decompression errors and client disconnects both surface here.
    let message = error.to_string();
    if message.contains("length limit") {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the body is larger than the limit",
        )
    } else if error.kind() == std::io::ErrorKind::InvalidData
        || error.kind() == std::io::ErrorKind::Other
    {
        ApiError::new(
            ErrorCode::MalformedBody,
            "the body could not be read or decompressed (check Content-Encoding)",
        )
    } else {
        ApiError::new(ErrorCode::BadRequest, "the body could not be read")
    }
}

fn split_error(error: SplitError) -> ApiError {
    match error {
        SplitError::Malformed { line, message } => ApiError::new(
            ErrorCode::MalformedBody,
            format!("malformed body at line {line}: {message}"),
        ),
        SplitError::NotObject { line, record } => ApiError::new(
            ErrorCode::MalformedBody,
            format!("record {record} (line {line}) is not a JSON object"),
        ),
        SplitError::TooDeep {
            line,
            record,
            limit,
        } => ApiError::new(
            ErrorCode::NestingTooDeep,
            format!(
                "record {record} (line {line}) nests deeper than the limit max_depth ({limit})"
            ),
        ),
        SplitError::RecordTooLarge {
            line,
            record,
            limit,
        } => ApiError::new(
            ErrorCode::RecordTooLarge,
            format!(
                "record {record} (line {line}) is larger than the limit max_record_bytes ({limit} bytes)"
            ),
        ),
        SplitError::TooManyRecords { limit } => ApiError::new(
            ErrorCode::TooManyRecords,
            format!("the batch holds more records than the limit max_records ({limit})"),
        ),
    }
}

fn content_format(headers: &HeaderMap) -> ApiResult<Format> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match mime.as_str() {
        "application/json" => Ok(Format::JsonArray),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Format::Ndjson),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type application/json (an array of objects) or application/x-ndjson",
        )),
    }
}

fn decoded_reader(headers: &HeaderMap, body: Body) -> ApiResult<Box<dyn AsyncRead + Send + Unpin>> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = StreamReader::new(stream);
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(Box::new(reader)),
        "gzip" | "x-gzip" => {
            let mut decoder = GzipDecoder::new(reader);
            decoder.multiple_members(true);
            Ok(Box::new(decoder))
        }
        "zstd" => Ok(Box::new(ZstdDecoder::new(reader))),
        other => Err(ApiError::new(
            ErrorCode::UnsupportedEncoding,
            format!("Content-Encoding {other:?} is not supported (use gzip or zstd)"),
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    Ok(Some(key.to_owned()))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Backpressure: refuse a batch that would take the pipeline's or the
/// tenant's queue past its limit. Nothing accepted is ever dropped; the
/// client retries later.
async fn check_queue(
    state: &AppState,
    pipeline: &Pipeline,
    incoming: Option<u64>,
) -> ApiResult<()> {
    let limits = &state.config().limits;
    let (pipeline_bytes, tenant_bytes) = state
        .store()
        .queued_bytes(pipeline.tenant_id, pipeline.id)
        .await?;
    let incoming = incoming.unwrap_or(0) as i64;
    let over_pipeline = pipeline_bytes + incoming > limits.max_queue_bytes_per_pipeline as i64;
    let over_tenant = tenant_bytes + incoming > limits.max_queue_bytes_per_tenant as i64;
    if over_pipeline || over_tenant {
        metrics::counter!("sluice_ingest_rejected_total", "reason" => "queue_full").increment(1);
        let which = if over_pipeline {
            "max_queue_bytes_per_pipeline"
        } else {
            "max_queue_bytes_per_tenant"
        };
        return Err(ApiError::new(
            ErrorCode::QueueFull,
            format!("the queue is full (limit {which}); retry later"),
        )
        .with_retry_after(5));
    }
    Ok(())
}
