//! The one body of SQL and row mapping behind both backends.
//!
//! SQLite and PostgreSQL differ in only a handful of places that matter
//! here: how "now" is written and stored (integer milliseconds versus
//! `timestamptz`), how a duration is added to it, row locks (`FOR UPDATE`,
//! `SKIP LOCKED`, which SQLite neither has nor needs behind its single
//! writer), and how two timestamps are subtracted. Everything else (table
//! and column names, `$n` placeholders, `RETURNING`, `ON CONFLICT`,
//! partial indexes) is common ground. So the trait is implemented once, in
//! `store_impl!`, which each backend module expands with its dialect
//! fragments as string literals; `concat!` splices them in at compile time,
//! so every statement is still a `&'static str` and values only ever travel
//! as bound parameters (R-SEC-6). A generic function over `sqlx::Database`
//! would avoid the macro but drown each query in encode/decode bounds; two
//! copies would drift.
//!
//! A backend module provides, next to the expansion:
//! `ts(&row, col)`, `ts_opt(&row, col)` (decode a stored time),
//! `bind_ts(DateTime<Utc>)` (encode one), and on its store type
//! `read()`, `write()` (pools) and `begin()` (a write transaction).

use crate::{Page, StoreError};
use std::time::Duration;
use uuid::Uuid;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Backend(Box::new(error))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migration(error.to_string())
    }
}

/// A stored value that does not decode into the model (a bad enum string,
/// an out-of-range time): the database holds something Sluice never wrote.
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("unexpected stored value in {what}").into())
}

/// Rows fetched for one page: one more than asked, to know whether another
/// page follows. Clamped so a caller cannot ask for nothing or everything.
pub(crate) fn fetch_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 10_000)) + 1
}

/// Trim `items` (fetched with [`fetch_limit`]) to `limit` and name the
/// cursor of the next page when there may be one.
pub(crate) fn page<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid) -> Page<T> {
    let limit = limit.clamp(1, 10_000) as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(id)
    } else {
        None
    };
    Page { items, next_cursor }
}

/// Same as [`page`] for listings keyed by an integer.
pub(crate) fn page_by_int<T>(
    mut items: Vec<T>,
    limit: u32,
    key: impl Fn(&T) -> i64,
) -> (Vec<T>, Option<i64>) {
    let limit = limit.clamp(1, 10_000) as usize;
    if items.len() <= limit {
        return (items, None);
    }
    let boundary = key(&items[limit]);
    items.truncate(limit);
    // The cursor is the key itself, so a page must not end in the middle of
    // a run of equal keys (several errors of one record): drop the partial
    // run and let the next page start with it whole. A run that fills the
    // entire page is cut here; a caller whose keys can repeat must fetch
    // such a run whole itself (see `list_batch_errors`).
    if items.last().map(&key) == Some(boundary) {
        let keep = items.iter().rposition(|item| key(item) != boundary);
        if let Some(last_other) = keep {
            items.truncate(last_other + 1);
        }
    }
    let next = items.last().map(&key);
    (items, next)
}

/// A lease as whole milliseconds, as the SQL adds it to "now".
pub(crate) fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4)
}

pub(crate) fn is_fk_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_foreign_key_violation())
}

pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Map a write error: a missing parent row is "not found", a duplicate a
/// state error, anything else the backend's.
pub(crate) fn write_error(error: sqlx::Error) -> StoreError {
    if is_fk_violation(&error) {
        StoreError::NotFound
    } else if is_unique_violation(&error) {
        StoreError::InvalidState("duplicate".into())
    } else {
        error.into()
    }
}

// Column lists, shared by every statement that returns a whole row.

macro_rules! tenant_cols {
    () => {
        "id, name, created_at"
    };
}

macro_rules! api_key_cols {
    () => {
        "id, tenant_id, name, role, prefix, last4, pipeline_ids, created_at, expires_at, \
         revoked_at, rotated_from, created_by"
    };
}

macro_rules! pipeline_cols {
    () => {
        "id, tenant_id, name, status, version, created_at, updated_at"
    };
}

/// Pipeline columns joined with the current version's config
/// (`pipelines p JOIN pipeline_versions v`).
macro_rules! pipeline_join_cols {
    () => {
        "p.id, p.tenant_id, p.name, p.status, p.version, p.created_at, p.updated_at, v.config"
    };
}

macro_rules! pipeline_join {
    () => {
        "pipelines p JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.version"
    };
}

macro_rules! version_cols {
    () => {
        "pipeline_id, version, config, created_at, created_by"
    };
}

macro_rules! batch_cols {
    () => {
        "id, tenant_id, pipeline_id, config_version, status, record_count, succeeded_count, \
         failed_count, payload_key, payload_bytes, idempotency_key, body_sha256, attempts, error, \
         created_at, started_at, completed_at, not_before, lease_owner, lease_expires_at"
    };
}

macro_rules! batch_error_cols {
    () => {
        "id, batch_id, record_index, processor_index, processor_type, code, message, record, \
         created_at"
    };
}

macro_rules! audit_cols {
    () => {
        "id, tenant_id, actor_key_id, action, target, request_id, client_addr, details, created_at, \
         seq, prev_hash, hash"
    };
}

/// The `INSERT` of an audit event into `$table` (the tenant or the system
/// chain), with every column of `audit_cols!`.
macro_rules! audit_insert {
    ($table:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " (",
            audit_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        )
    };
}

/// Implement [`crate::Store`] for a backend. The literals are the dialect:
/// - `now`: the current time as stored;
/// - `lease_until`: `now` plus `$2` milliseconds (the lease is always the
///   second parameter of the statements that use it);
/// - `latency_ms`: `completed_at - created_at` in milliseconds;
/// - `for_update` / `for_share`: row-lock suffix of a `SELECT`;
/// - `skip_locked`: row-lock suffix of the claim's inner `SELECT`;
/// - `chain_lock`: a statement taking `$1` (an `i64` naming an audit
///   chain) that serializes appends to that chain until the transaction
///   ends (SQLite's single writer needs none).
macro_rules! store_impl {
    (
        store: $store:ty,
        db: $db:ty,
        backend: $backend:literal,
        now: $now:literal,
        lease_until: $lease_until:literal,
        latency_ms: $latency_ms:literal,
        for_update: $for_update:literal,
        for_share: $for_share:literal,
        skip_locked: $skip_locked:literal,
        chain_lock: $chain_lock:literal $(,)?
    ) => {
        const _: () = {
            use $crate::shared::{
                api_key_cols, audit_cols, audit_insert, batch_cols, batch_error_cols, corrupt, fetch_limit,
                lease_ms, page, page_by_int, pipeline_cols, pipeline_join, pipeline_join_cols,
                tenant_cols, version_cols, write_error,
            };
            use $crate::{
                ApiKey, AuditEvent, AuditFilter, Batch, BatchError, BatchOutcome, BatchStatus, NewApiKey,
                NewAuditEvent, NewBatch, NewBatchError, Page, Pipeline, PipelineStats,
                PipelineStatus, PipelineVersion, QueueDepth, Result, Role, StoreError, Tenant,
            };
            use chrono::{DateTime, Utc};
            use sqlx::Row as _;
            use sqlx::types::Json;
            use std::time::Duration;
            use uuid::Uuid;

            type DbRow = <$db as sqlx::Database>::Row;

            fn tenant_row(row: &DbRow) -> Result<Tenant> {
                Ok(Tenant {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    created_at: ts(row, "created_at")?,
                })
            }

            fn api_key_row(row: &DbRow) -> Result<ApiKey> {
                let role: String = row.try_get("role")?;
                let pipeline_ids: Option<Json<Vec<Uuid>>> = row.try_get("pipeline_ids")?;
                Ok(ApiKey {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    name: row.try_get("name")?,
                    role: Role::parse(&role).ok_or_else(|| corrupt("api_keys.role"))?,
                    prefix: row.try_get("prefix")?,
                    last4: row.try_get("last4")?,
                    pipeline_ids: pipeline_ids.map(|ids| ids.0),
                    created_at: ts(row, "created_at")?,
                    expires_at: ts_opt(row, "expires_at")?,
                    revoked_at: ts_opt(row, "revoked_at")?,
                    rotated_from: row.try_get("rotated_from")?,
                    created_by: row.try_get("created_by")?,
                })
            }

            /// A pipeline row; `config` comes from the joined version row
            /// unless given (a statement that returns the bare row).
            fn pipeline_row(row: &DbRow, config: Option<&serde_json::Value>) -> Result<Pipeline> {
                let status: String = row.try_get("status")?;
                let config = match config {
                    Some(config) => config.clone(),
                    None => row.try_get::<Json<serde_json::Value>, _>("config")?.0,
                };
                Ok(Pipeline {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    name: row.try_get("name")?,
                    status: PipelineStatus::parse(&status)
                        .ok_or_else(|| corrupt("pipelines.status"))?,
                    version: row.try_get("version")?,
                    config,
                    created_at: ts(row, "created_at")?,
                    updated_at: ts(row, "updated_at")?,
                })
            }

            fn version_row(row: &DbRow) -> Result<PipelineVersion> {
                Ok(PipelineVersion {
                    pipeline_id: row.try_get("pipeline_id")?,
                    version: row.try_get("version")?,
                    config: row.try_get::<Json<serde_json::Value>, _>("config")?.0,
                    created_at: ts(row, "created_at")?,
                    created_by: row.try_get("created_by")?,
                })
            }

            fn batch_row(row: &DbRow) -> Result<Batch> {
                let status: String = row.try_get("status")?;
                Ok(Batch {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    pipeline_id: row.try_get("pipeline_id")?,
                    config_version: row.try_get("config_version")?,
                    status: BatchStatus::parse(&status).ok_or_else(|| corrupt("batches.status"))?,
                    record_count: row.try_get("record_count")?,
                    succeeded_count: row.try_get("succeeded_count")?,
                    failed_count: row.try_get("failed_count")?,
                    payload_key: row.try_get("payload_key")?,
                    payload_bytes: row.try_get("payload_bytes")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    body_sha256: row.try_get("body_sha256")?,
                    attempts: row.try_get("attempts")?,
                    error: row.try_get("error")?,
                    created_at: ts(row, "created_at")?,
                    started_at: ts_opt(row, "started_at")?,
                    completed_at: ts_opt(row, "completed_at")?,
                    not_before: ts_opt(row, "not_before")?,
                    lease_owner: row.try_get("lease_owner")?,
                    lease_expires_at: ts_opt(row, "lease_expires_at")?,
                })
            }

            fn batch_error_row(row: &DbRow) -> Result<BatchError> {
                Ok(BatchError {
                    id: row.try_get("id")?,
                    batch_id: row.try_get("batch_id")?,
                    record_index: row.try_get("record_index")?,
                    processor_index: row.try_get("processor_index")?,
                    processor_type: row.try_get("processor_type")?,
                    code: row.try_get("code")?,
                    message: row.try_get("message")?,
                    record: row.try_get::<Json<serde_json::Value>, _>("record")?.0,
                    created_at: ts(row, "created_at")?,
                })
            }

            fn audit_row(row: &DbRow) -> Result<AuditEvent> {
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    actor_key_id: row.try_get("actor_key_id")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    request_id: row.try_get("request_id")?,
                    client_addr: row.try_get("client_addr")?,
                    details: row.try_get::<Json<serde_json::Value>, _>("details")?.0,
                    created_at: ts(row, "created_at")?,
                    seq: row.try_get("seq")?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                })
            }

            /// The advisory-lock key of a tenant's audit chain (0: the
            /// system chain). A collision only serializes two chains.
            fn chain_key(tenant_id: Uuid) -> i64 {
                let bytes = tenant_id.as_bytes();
                let mut low = [0u8; 8];
                low.copy_from_slice(&bytes[8..]);
                i64::from_be_bytes(low)
            }

            /// Now, at the millisecond precision both backends keep, so
            /// the hashed time reads back unchanged.
            fn audit_now() -> DateTime<Utc> {
                DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now)
            }

            /// The event as stored at `seq` of a chain whose last hash is
            /// `prev_hash`, with its own hash.
            fn chained(event: NewAuditEvent, seq: i64, prev_hash: String) -> AuditEvent {
                let mut stored = AuditEvent {
                    id: Uuid::now_v7(),
                    tenant_id: event.tenant_id,
                    actor_key_id: event.actor_key_id,
                    action: event.action,
                    target: event.target,
                    request_id: event.request_id,
                    client_addr: event.client_addr,
                    details: event.details,
                    created_at: audit_now(),
                    seq: Some(seq),
                    prev_hash: None,
                    hash: None,
                };
                stored.hash = Some($crate::audit_hash(&prev_hash, &stored));
                stored.prev_hash = Some(prev_hash);
                stored
            }

            /// Writes an event [`chained`] sealed; `insert` is the
            /// `audit_insert!` of its chain's table.
            async fn insert_chained(
                tx: &mut sqlx::Transaction<'static, $db>,
                insert: &'static str,
                stored: &AuditEvent,
                seq: i64,
            ) -> Result<()> {
                sqlx::query(insert)
                    .bind(stored.id)
                    .bind(stored.tenant_id)
                    .bind(stored.actor_key_id)
                    .bind(&stored.action)
                    .bind(&stored.target)
                    .bind(&stored.request_id)
                    .bind(&stored.client_addr)
                    .bind(Json(&stored.details))
                    .bind(bind_ts(stored.created_at))
                    .bind(seq)
                    .bind(&stored.prev_hash)
                    .bind(&stored.hash)
                    .execute(&mut **tx)
                    .await
                    .map_err(write_error)?;
                Ok(())
            }

            fn rows<T>(rows: Vec<DbRow>, f: impl Fn(&DbRow) -> Result<T>) -> Result<Vec<T>> {
                rows.iter().map(f).collect()
            }

            const GET_PIPELINE: &str = concat!(
                "SELECT ", pipeline_join_cols!(), " FROM ", pipeline_join!(),
                " WHERE p.id = $1 AND p.tenant_id = $2"
            );

            const GET_BATCH: &str = concat!(
                "SELECT ", batch_cols!(),
                " FROM batches WHERE id = $1 AND pipeline_id = $2 AND tenant_id = $3"
            );

            impl $store {
                async fn fetch_batch(
                    &self,
                    tenant_id: Uuid,
                    pipeline_id: Uuid,
                    id: Uuid,
                ) -> Result<Option<Batch>> {
                    let row = sqlx::query(GET_BATCH)
                        .bind(id)
                        .bind(pipeline_id)
                        .bind(tenant_id)
                        .fetch_optional(self.read())
                        .await?;
                    row.as_ref().map(batch_row).transpose()
                }

                async fn pipeline_visible(&self, tenant_id: Uuid, id: Uuid) -> Result<bool> {
                    let row = sqlx::query("SELECT id FROM pipelines WHERE id = $1 AND tenant_id = $2")
                        .bind(id)
                        .bind(tenant_id)
                        .fetch_optional(self.read())
                        .await?;
                    Ok(row.is_some())
                }
            }

            #[async_trait::async_trait]
            impl $crate::Store for $store {
                fn backend(&self) -> &'static str {
                    $backend
                }

                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(self.read()).await?;
                    Ok(())
                }

                // ---- tenants ----

                async fn create_tenant(&self, name: &str) -> Result<Tenant> {
                    let row = sqlx::query(concat!(
                        "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, ", $now, ")",
                        " RETURNING ", tenant_cols!()
                    ))
                    .bind(Uuid::now_v7())
                    .bind(name)
                    .fetch_one(self.write())
                    .await?;
                    tenant_row(&row)
                }

                async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>> {
                    let row = sqlx::query(concat!("SELECT ", tenant_cols!(), " FROM tenants WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(self.read())
                        .await?;
                    row.as_ref().map(tenant_row).transpose()
                }

                async fn list_tenants(&self) -> Result<Vec<Tenant>> {
                    let all = sqlx::query(concat!("SELECT ", tenant_cols!(), " FROM tenants ORDER BY id"))
                        .fetch_all(self.read())
                        .await?;
                    rows(all, tenant_row)
                }

                // ---- API keys ----

                async fn create_api_key(&self, key: NewApiKey) -> Result<ApiKey> {
                    let row = sqlx::query(concat!(
                        "INSERT INTO api_keys (id, tenant_id, name, role, prefix, last4, secret_hash, \
                         pipeline_ids, created_at, created_by) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ", $now, ", $9) RETURNING ",
                        api_key_cols!()
                    ))
                    .bind(key.id)
                    .bind(key.tenant_id)
                    .bind(&key.name)
                    .bind(key.role.as_str())
                    .bind(&key.prefix)
                    .bind(&key.last4)
                    .bind(&key.secret_hash)
                    .bind(key.pipeline_ids.as_ref().map(Json))
                    .bind(key.created_by)
                    .fetch_one(self.write())
                    .await
                    .map_err(write_error)?;
                    api_key_row(&row)
                }

                async fn find_api_key_by_hash(&self, secret_hash: &[u8]) -> Result<Option<ApiKey>> {
                    let row = sqlx::query(concat!(
                        "SELECT ", api_key_cols!(), " FROM api_keys WHERE secret_hash = $1"
                    ))
                    .bind(secret_hash)
                    .fetch_optional(self.read())
                    .await?;
                    row.as_ref().map(api_key_row).transpose()
                }

                async fn get_api_key(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiKey>> {
                    let row = sqlx::query(concat!(
                        "SELECT ", api_key_cols!(), " FROM api_keys WHERE id = $1 AND tenant_id = $2"
                    ))
                    .bind(id)
                    .bind(tenant_id)
                    .fetch_optional(self.read())
                    .await?;
                    row.as_ref().map(api_key_row).transpose()
                }

                async fn list_api_keys(&self, tenant_id: Uuid) -> Result<Vec<ApiKey>> {
                    let all = sqlx::query(concat!(
                        "SELECT ", api_key_cols!(),
                        " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC"
                    ))
                    .bind(tenant_id)
                    .fetch_all(self.read())
                    .await?;
                    rows(all, api_key_row)
                }

                async fn rotate_api_key(
                    &self,
                    tenant_id: Uuid,
                    id: Uuid,
                    new: NewApiKey,
                    old_expires_at: DateTime<Utc>,
                ) -> Result<ApiKey> {
                    let mut tx = self.begin().await?;
                    let old = sqlx::query(concat!(
                        "SELECT revoked_at IS NOT NULL AS revoked, \
                         (expires_at IS NOT NULL AND expires_at <= ", $now, ") AS expired \
                         FROM api_keys WHERE id = $1 AND tenant_id = $2", $for_update
                    ))
                    .bind(id)
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                    if old.try_get::<bool, _>("revoked")? {
                        return Err(StoreError::InvalidState("key is revoked".into()));
                    }
                    if old.try_get::<bool, _>("expired")? {
                        return Err(StoreError::InvalidState("key has expired".into()));
                    }
                    let row = sqlx::query(concat!(
                        "INSERT INTO api_keys (id, tenant_id, name, role, prefix, last4, secret_hash, \
                         pipeline_ids, created_at, rotated_from, created_by) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ", $now, ", $9, $10) RETURNING ",
                        api_key_cols!()
                    ))
                    .bind(new.id)
                    .bind(tenant_id)
                    .bind(&new.name)
                    .bind(new.role.as_str())
                    .bind(&new.prefix)
                    .bind(&new.last4)
                    .bind(&new.secret_hash)
                    .bind(new.pipeline_ids.as_ref().map(Json))
                    .bind(id)
                    .bind(new.created_by)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(write_error)?;
                    let created = api_key_row(&row)?;
                    // Never extend an expiry the old key already had.
                    sqlx::query(
                        "UPDATE api_keys SET expires_at = CASE \
                         WHEN expires_at IS NOT NULL AND expires_at < $1 THEN expires_at ELSE $1 END \
                         WHERE id = $2 AND tenant_id = $3",
                    )
                    .bind(bind_ts(old_expires_at))
                    .bind(id)
                    .bind(tenant_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(created)
                }

                async fn revoke_api_key(&self, tenant_id: Uuid, id: Uuid) -> Result<ApiKey> {
                    let row = sqlx::query(concat!(
                        "UPDATE api_keys SET revoked_at = ", $now,
                        " WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL RETURNING ",
                        api_key_cols!()
                    ))
                    .bind(id)
                    .bind(tenant_id)
                    .fetch_optional(self.write())
                    .await?;
                    match row {
                        Some(row) => api_key_row(&row),
                        None => match self.get_api_key(tenant_id, id).await? {
                            Some(_) => Err(StoreError::InvalidState("key is already revoked".into())),
                            None => Err(StoreError::NotFound),
                        },
                    }
                }

                // ---- pipelines ----

                async fn create_pipeline_with_id(
                    &self,
                    id: Uuid,
                    tenant_id: Uuid,
                    name: &str,
                    config: &serde_json::Value,
                    status: PipelineStatus,
                    actor: Option<Uuid>,
                ) -> Result<Pipeline> {
                    let mut tx = self.begin().await?;
                    let row = sqlx::query(concat!(
                        "INSERT INTO pipelines (id, tenant_id, name, status, version, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, 1, ", $now, ", ", $now, ") RETURNING ", pipeline_cols!()
                    ))
                    .bind(id)
                    .bind(tenant_id)
                    .bind(name)
                    .bind(status.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(write_error)?;
                    sqlx::query(concat!(
                        "INSERT INTO pipeline_versions (pipeline_id, version, config, created_at, created_by) \
                         VALUES ($1, 1, $2, ", $now, ", $3)"
                    ))
                    .bind(id)
                    .bind(Json(config))
                    .bind(actor)
                    .execute(&mut *tx)
                    .await
                    .map_err(write_error)?;
                    tx.commit().await?;
                    pipeline_row(&row, Some(config))
                }

                async fn get_pipeline(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Pipeline>> {
                    let row = sqlx::query(GET_PIPELINE)
                        .bind(id)
                        .bind(tenant_id)
                        .fetch_optional(self.read())
                        .await?;
                    row.as_ref().map(|row| pipeline_row(row, None)).transpose()
                }

                async fn list_pipelines(
                    &self,
                    tenant_id: Uuid,
                    status: Option<PipelineStatus>,
                    after: Option<Uuid>,
                    limit: u32,
                ) -> Result<Page<Pipeline>> {
                    let query = match status {
                        Some(status) => sqlx::query(concat!(
                            "SELECT ", pipeline_join_cols!(), " FROM ", pipeline_join!(),
                            " WHERE p.tenant_id = $1 AND p.id < $2 AND p.status = $4 \
                             ORDER BY p.id DESC LIMIT $3"
                        ))
                        .bind(tenant_id)
                        .bind(after.unwrap_or(Uuid::max()))
                        .bind(fetch_limit(limit))
                        .bind(status.as_str()),
                        None => sqlx::query(concat!(
                            "SELECT ", pipeline_join_cols!(), " FROM ", pipeline_join!(),
                            " WHERE p.tenant_id = $1 AND p.id < $2 ORDER BY p.id DESC LIMIT $3"
                        ))
                        .bind(tenant_id)
                        .bind(after.unwrap_or(Uuid::max()))
                        .bind(fetch_limit(limit)),
                    };
                    let all = query.fetch_all(self.read()).await?;
                    let items = rows(all, |row| pipeline_row(row, None))?;
                    Ok(page(items, limit, |p| p.id))
                }

                async fn update_pipeline(
                    &self,
                    tenant_id: Uuid,
                    id: Uuid,
                    name: &str,
                    config: &serde_json::Value,
                    actor: Option<Uuid>,
                ) -> Result<Pipeline> {
                    let mut tx = self.begin().await?;
                    // The UPDATE locks the row, so concurrent updates get
                    // distinct version numbers.
                    let row = sqlx::query(concat!(
                        "UPDATE pipelines SET version = version + 1, name = $3, updated_at = ", $now,
                        " WHERE id = $1 AND tenant_id = $2 RETURNING ", pipeline_cols!()
                    ))
                    .bind(id)
                    .bind(tenant_id)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                    let pipeline = pipeline_row(&row, Some(config))?;
                    sqlx::query(concat!(
                        "INSERT INTO pipeline_versions (pipeline_id, version, config, created_at, created_by) \
                         VALUES ($1, $2, $3, ", $now, ", $4)"
                    ))
                    .bind(id)
                    .bind(pipeline.version)
                    .bind(Json(config))
                    .bind(actor)
                    .execute(&mut *tx)
                    .await
                    .map_err(write_error)?;
                    tx.commit().await?;
                    Ok(pipeline)
                }

                async fn list_pipeline_versions(
                    &self,
                    tenant_id: Uuid,
                    id: Uuid,
                    after: Option<i64>,
                    limit: u32,
                ) -> Result<(Vec<PipelineVersion>, Option<i64>)> {
                    if !self.pipeline_visible(tenant_id, id).await? {
                        return Err(StoreError::NotFound);
                    }
                    let all = sqlx::query(concat!(
                        "SELECT ", version_cols!(), " FROM pipeline_versions \
                         WHERE pipeline_id = $1 AND version < $2 ORDER BY version DESC LIMIT $3"
                    ))
                    .bind(id)
                    .bind(after.unwrap_or(i64::MAX))
                    .bind(fetch_limit(limit))
                    .fetch_all(self.read())
                    .await?;
                    let items = rows(all, version_row)?;
                    Ok(page_by_int(items, limit, |v| v.version))
                }

                async fn get_pipeline_version(
                    &self,
                    pipeline_id: Uuid,
                    version: i64,
                ) -> Result<Option<(Pipeline, PipelineVersion)>> {
                    let row = sqlx::query(concat!(
                        "SELECT ", pipeline_join_cols!(), " FROM ", pipeline_join!(), " WHERE p.id = $1"
                    ))
                    .bind(pipeline_id)
                    .fetch_optional(self.read())
                    .await?;
                    let Some(row) = row else { return Ok(None) };
                    let pipeline = pipeline_row(&row, None)?;
                    let row = sqlx::query(concat!(
                        "SELECT ", version_cols!(),
                        " FROM pipeline_versions WHERE pipeline_id = $1 AND version = $2"
                    ))
                    .bind(pipeline_id)
                    .bind(version)
                    .fetch_optional(self.read())
                    .await?;
                    match row {
                        Some(row) => Ok(Some((pipeline, version_row(&row)?))),
                        None => Ok(None),
                    }
                }

                async fn set_pipeline_status(
                    &self,
                    tenant_id: Uuid,
                    id: Uuid,
                    status: PipelineStatus,
                ) -> Result<Pipeline> {
                    let row = sqlx::query(concat!(
                        "UPDATE pipelines SET status = $3, updated_at = ", $now,
                        " WHERE id = $1 AND tenant_id = $2 RETURNING id"
                    ))
                    .bind(id)
                    .bind(tenant_id)
                    .bind(status.as_str())
                    .fetch_optional(self.write())
                    .await?;
                    if row.is_none() {
                        return Err(StoreError::NotFound);
                    }
                    // Read back through the writer: the row as just written.
                    let row = sqlx::query(GET_PIPELINE)
                        .bind(id)
                        .bind(tenant_id)
                        .fetch_optional(self.write())
                        .await?
                        .ok_or(StoreError::NotFound)?;
                    pipeline_row(&row, None)
                }

                async fn delete_pipeline(&self, tenant_id: Uuid, id: Uuid) -> Result<Vec<String>> {
                    let mut tx = self.begin().await?;
                    // Locking the pipeline row orders this delete against
                    // batch inserts (their foreign-key check) and retries
                    // (which share-lock it), so no batch becomes pending
                    // between the check and the delete.
                    sqlx::query(concat!(
                        "SELECT id FROM pipelines WHERE id = $1 AND tenant_id = $2", $for_update
                    ))
                    .bind(id)
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                    let active: i64 = sqlx::query(
                        "SELECT COUNT(*) AS n FROM batches \
                         WHERE pipeline_id = $1 AND status IN ('pending', 'processing')",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                    if active > 0 {
                        return Err(StoreError::HasActiveBatches);
                    }
                    let keys = sqlx::query("SELECT payload_key FROM batches WHERE pipeline_id = $1")
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|row| row.try_get::<String, _>("payload_key"))
                        .collect::<Result<Vec<_>, _>>()?;
                    // Versions, batches and their errors go by ON DELETE CASCADE.
                    sqlx::query("DELETE FROM pipelines WHERE id = $1 AND tenant_id = $2")
                        .bind(id)
                        .bind(tenant_id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(keys)
                }

                async fn pipeline_stats(&self, tenant_id: Uuid, id: Uuid) -> Result<PipelineStats> {
                    if !self.pipeline_visible(tenant_id, id).await? {
                        return Err(StoreError::NotFound);
                    }
                    let row = sqlx::query(
                        "SELECT \
                         CAST(COALESCE(SUM(CASE WHEN status = 'completed' THEN succeeded_count ELSE 0 END), 0) AS BIGINT) AS processed, \
                         CAST(COALESCE(SUM(CASE WHEN status IN ('completed', 'failed') THEN failed_count ELSE 0 END), 0) AS BIGINT) AS failed, \
                         MAX(completed_at) AS last_run_at, \
                         CAST(COALESCE(SUM(CASE WHEN status IN ('pending', 'processing') THEN 1 ELSE 0 END), 0) AS BIGINT) AS queue_batches, \
                         CAST(COALESCE(SUM(CASE WHEN status IN ('pending', 'processing') THEN payload_bytes ELSE 0 END), 0) AS BIGINT) AS queue_bytes \
                         FROM batches WHERE pipeline_id = $1 AND tenant_id = $2",
                    )
                    .bind(id)
                    .bind(tenant_id)
                    .fetch_one(self.read())
                    .await?;
                    let latencies = sqlx::query(concat!(
                        "SELECT ", $latency_ms, " AS ms FROM batches \
                         WHERE pipeline_id = $1 AND status = 'completed' AND completed_at IS NOT NULL \
                         ORDER BY completed_at DESC LIMIT 1000"
                    ))
                    .bind(id)
                    .fetch_all(self.read())
                    .await?
                    .iter()
                    .map(|row| row.try_get::<i64, _>("ms"))
                    .collect::<Result<Vec<_>, _>>()?;
                    Ok(PipelineStats {
                        records_processed: row.try_get("processed")?,
                        records_failed: row.try_get("failed")?,
                        last_run_at: ts_opt(&row, "last_run_at")?,
                        queue_batches: row.try_get("queue_batches")?,
                        queue_bytes: row.try_get("queue_bytes")?,
                        recent_latencies_ms: latencies,
                    })
                }

                // ---- batches ----

                async fn create_batch(&self, batch: NewBatch) -> Result<Batch> {
                    // INSERT ... SELECT so a pipeline of another tenant
                    // inserts nothing; ON CONFLICT so a reused idempotency
                    // key inserts nothing either, and we return the original.
                    let row = sqlx::query(concat!(
                        "INSERT INTO batches (id, tenant_id, pipeline_id, config_version, status, \
                         record_count, payload_key, payload_bytes, idempotency_key, body_sha256, created_at) \
                         SELECT $1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, ", $now,
                        " FROM pipelines WHERE id = $3 AND tenant_id = $2 \
                         ON CONFLICT (pipeline_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
                         DO NOTHING RETURNING ", batch_cols!()
                    ))
                    .bind(batch.id)
                    .bind(batch.tenant_id)
                    .bind(batch.pipeline_id)
                    .bind(batch.config_version)
                    .bind(batch.record_count)
                    .bind(&batch.payload_key)
                    .bind(batch.payload_bytes)
                    .bind(&batch.idempotency_key)
                    .bind(&batch.body_sha256)
                    .fetch_optional(self.write())
                    .await
                    .map_err(write_error)?;
                    if let Some(row) = row {
                        return batch_row(&row);
                    }
                    if let Some(key) = &batch.idempotency_key {
                        let existing = sqlx::query(concat!(
                            "SELECT ", batch_cols!(),
                            " FROM batches WHERE pipeline_id = $1 AND idempotency_key = $2 AND tenant_id = $3"
                        ))
                        .bind(batch.pipeline_id)
                        .bind(key)
                        .bind(batch.tenant_id)
                        .fetch_optional(self.write())
                        .await?;
                        if let Some(row) = existing {
                            return Err(StoreError::DuplicateIdempotencyKey(Box::new(batch_row(&row)?)));
                        }
                    }
                    Err(StoreError::NotFound)
                }

                async fn find_batch_by_idempotency_key(
                    &self,
                    tenant_id: Uuid,
                    pipeline_id: Uuid,
                    key: &str,
                ) -> Result<Option<Batch>> {
                    let row = sqlx::query(concat!(
                        "SELECT ", batch_cols!(),
                        " FROM batches WHERE pipeline_id = $1 AND idempotency_key = $2 AND tenant_id = $3"
                    ))
                    .bind(pipeline_id)
                    .bind(key)
                    .bind(tenant_id)
                    .fetch_optional(self.read())
                    .await?;
                    row.as_ref().map(batch_row).transpose()
                }

                async fn get_batch(
                    &self,
                    tenant_id: Uuid,
                    pipeline_id: Uuid,
                    id: Uuid,
                ) -> Result<Option<Batch>> {
                    self.fetch_batch(tenant_id, pipeline_id, id).await
                }

                async fn list_batches(
                    &self,
                    tenant_id: Uuid,
                    pipeline_id: Uuid,
                    status: Option<BatchStatus>,
                    after: Option<Uuid>,
                    limit: u32,
                ) -> Result<Page<Batch>> {
                    let query = match status {
                        Some(status) => sqlx::query(concat!(
                            "SELECT ", batch_cols!(), " FROM batches \
                             WHERE pipeline_id = $1 AND tenant_id = $2 AND status = $5 AND id < $3 \
                             ORDER BY id DESC LIMIT $4"
                        ))
                        .bind(pipeline_id)
                        .bind(tenant_id)
                        .bind(after.unwrap_or(Uuid::max()))
                        .bind(fetch_limit(limit))
                        .bind(status.as_str()),
                        None => sqlx::query(concat!(
                            "SELECT ", batch_cols!(), " FROM batches \
                             WHERE pipeline_id = $1 AND tenant_id = $2 AND id < $3 \
                             ORDER BY id DESC LIMIT $4"
                        ))
                        .bind(pipeline_id)
                        .bind(tenant_id)
                        .bind(after.unwrap_or(Uuid::max()))
                        .bind(fetch_limit(limit)),
                    };
                    let all = query.fetch_all(self.read()).await?;
                    let items = rows(all, batch_row)?;
                    Ok(page(items, limit, |b| b.id))
                }

                async fn queued_bytes(&self, tenant_id: Uuid, pipeline_id: Uuid) -> Result<(i64, i64)> {
                    let row = sqlx::query(
                        "SELECT \
                         CAST(COALESCE(SUM(CASE WHEN pipeline_id = $2 THEN payload_bytes ELSE 0 END), 0) AS BIGINT) AS pipeline_bytes, \
                         CAST(COALESCE(SUM(payload_bytes), 0) AS BIGINT) AS tenant_bytes \
                         FROM batches WHERE tenant_id = $1 AND status IN ('pending', 'processing')",
                    )
                    .bind(tenant_id)
                    .bind(pipeline_id)
                    .fetch_one(self.read())
                    .await?;
                    Ok((row.try_get("pipeline_bytes")?, row.try_get("tenant_bytes")?))
                }

                async fn queue_depths(&self) -> Result<Vec<QueueDepth>> {
                    let all = sqlx::query(
                        "SELECT tenant_id, pipeline_id, COUNT(*) AS batches, \
                         CAST(COALESCE(SUM(payload_bytes), 0) AS BIGINT) AS bytes \
                         FROM batches WHERE status IN ('pending', 'processing') \
                         GROUP BY tenant_id, pipeline_id ORDER BY tenant_id, pipeline_id",
                    )
                    .fetch_all(self.read())
                    .await?;
                    rows(all, |row| {
                        Ok(QueueDepth {
                            tenant_id: row.try_get("tenant_id")?,
                            pipeline_id: row.try_get("pipeline_id")?,
                            batches: row.try_get("batches")?,
                            bytes: row.try_get("bytes")?,
                        })
                    })
                }

                async fn claim_batch(&self, worker_id: &str, lease: Duration) -> Result<Option<Batch>> {
                    // The redundant `status IN (...)` term lets the planner
                    // use the partial queue index (SQLite only matches a
                    // partial index whose condition appears verbatim).
                    let row = sqlx::query(concat!(
                        "UPDATE batches SET status = 'processing', lease_owner = $1, \
                         lease_expires_at = ", $lease_until, ", \
                         started_at = COALESCE(started_at, ", $now, "), attempts = attempts + 1 \
                         WHERE id = (SELECT b.id FROM batches b JOIN pipelines p ON p.id = b.pipeline_id \
                         WHERE b.status IN ('pending', 'processing') AND p.status = 'active' AND \
                         ((b.status = 'pending' AND (b.not_before IS NULL OR b.not_before <= ", $now, ")) \
                         OR (b.status = 'processing' AND b.lease_expires_at < ", $now, ")) \
                         ORDER BY b.created_at, b.id LIMIT 1", $skip_locked, ") \
                         RETURNING ", batch_cols!()
                    ))
                    .bind(worker_id)
                    .bind(lease_ms(lease))
                    .fetch_optional(self.write())
                    .await?;
                    row.as_ref().map(batch_row).transpose()
                }

                async fn renew_lease(&self, batch_id: Uuid, worker_id: &str, lease: Duration) -> Result<bool> {
                    let done = sqlx::query(concat!(
                        "UPDATE batches SET lease_expires_at = ", $lease_until,
                        " WHERE id = $1 AND status = 'processing' AND lease_owner = $3"
                    ))
                    .bind(batch_id)
                    .bind(lease_ms(lease))
                    .bind(worker_id)
                    .execute(self.write())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn release_batch(
                    &self,
                    batch_id: Uuid,
                    worker_id: &str,
                    not_before: Option<DateTime<Utc>>,
                    error: Option<&str>,
                    undo_attempt: bool,
                ) -> Result<bool> {
                    let done = sqlx::query(
                        "UPDATE batches SET status = 'pending', lease_owner = NULL, \
                         lease_expires_at = NULL, not_before = $3, error = COALESCE($4, error), \
                         attempts = attempts - $5 \
                         WHERE id = $1 AND status = 'processing' AND lease_owner = $2",
                    )
                    .bind(batch_id)
                    .bind(worker_id)
                    .bind(not_before.map(bind_ts))
                    .bind(error)
                    .bind(i32::from(undo_attempt))
                    .execute(self.write())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn finish_batch(
                    &self,
                    batch_id: Uuid,
                    worker_id: &str,
                    outcome: &BatchOutcome,
                ) -> Result<bool> {
                    if !matches!(outcome.status, BatchStatus::Completed | BatchStatus::Failed) {
                        return Err(StoreError::InvalidState(format!(
                            "a batch cannot finish as {}",
                            outcome.status.as_str()
                        )));
                    }
                    let done = sqlx::query(concat!(
                        "UPDATE batches SET status = $3, succeeded_count = $4, failed_count = $5, \
                         error = $6, completed_at = ", $now, ", lease_owner = NULL, \
                         lease_expires_at = NULL, not_before = NULL \
                         WHERE id = $1 AND status = 'processing' AND lease_owner = $2"
                    ))
                    .bind(batch_id)
                    .bind(worker_id)
                    .bind(outcome.status.as_str())
                    .bind(outcome.succeeded_count)
                    .bind(outcome.failed_count)
                    .bind(&outcome.error)
                    .execute(self.write())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn retry_batch(&self, tenant_id: Uuid, pipeline_id: Uuid, id: Uuid) -> Result<Batch> {
                    let mut tx = self.begin().await?;
                    // Share-lock the pipeline so a concurrent delete either
                    // sees this batch pending or has already removed it.
                    sqlx::query(concat!(
                        "SELECT id FROM pipelines WHERE id = $1 AND tenant_id = $2", $for_share
                    ))
                    .bind(pipeline_id)
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                    let row = sqlx::query(concat!(
                        "UPDATE batches SET status = 'pending', succeeded_count = 0, failed_count = 0, \
                         error = NULL, attempts = 0, started_at = NULL, completed_at = NULL, \
                         not_before = NULL, lease_owner = NULL, lease_expires_at = NULL \
                         WHERE id = $1 AND pipeline_id = $2 AND tenant_id = $3 AND status = 'failed' \
                         AND payload_purged_at IS NULL \
                         RETURNING ", batch_cols!()
                    ))
                    .bind(id)
                    .bind(pipeline_id)
                    .bind(tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(row) = row else {
                        let exists = sqlx::query(
                            "SELECT status, payload_purged_at IS NOT NULL AS purged \
                             FROM batches WHERE id = $1 AND pipeline_id = $2 AND tenant_id = $3",
                        )
                        .bind(id)
                        .bind(pipeline_id)
                        .bind(tenant_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        return Err(match exists {
                            Some(row) if row.try_get::<bool, _>("purged")? => StoreError::InvalidState(
                                "the batch's payload has expired and was deleted".into(),
                            ),
                            Some(row) => StoreError::InvalidState(format!(
                                "only a failed batch can be retried, this one is {}",
                                row.try_get::<String, _>("status")?
                            )),
                            None => StoreError::NotFound,
                        });
                    };
                    let batch = batch_row(&row)?;
                    sqlx::query("DELETE FROM batch_errors WHERE batch_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(batch)
                }

                async fn clear_batch_errors(&self, batch_id: Uuid) -> Result<()> {
                    sqlx::query("DELETE FROM batch_errors WHERE batch_id = $1")
                        .bind(batch_id)
                        .execute(self.write())
                        .await?;
                    Ok(())
                }

                async fn insert_batch_errors(&self, batch_id: Uuid, errors: &[NewBatchError]) -> Result<()> {
                    if errors.is_empty() {
                        return Ok(());
                    }
                    // Multi-row INSERTs in one transaction; 500 rows of 7
                    // parameters stay well under both backends' limits.
                    let mut tx = self.begin().await?;
                    for chunk in errors.chunks(500) {
                        let mut insert = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO batch_errors (id, batch_id, record_index, processor_index, \
                             processor_type, code, message, record, created_at) ",
                        );
                        insert.push_values(chunk, |mut row, error| {
                            row.push_bind(Uuid::now_v7())
                                .push_bind(batch_id)
                                .push_bind(error.record_index)
                                .push_bind(error.processor_index)
                                .push_bind(error.processor_type.as_str())
                                .push_bind(error.code.as_str())
                                .push_bind(error.message.as_str())
                                .push_bind(Json(&error.record))
                                .push($now);
                        });
                        insert.build().execute(&mut *tx).await.map_err(write_error)?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn list_batch_errors(
                    &self,
                    tenant_id: Uuid,
                    pipeline_id: Uuid,
                    batch_id: Uuid,
                    after: Option<i64>,
                    limit: u32,
                ) -> Result<(Vec<BatchError>, Option<i64>)> {
                    if self.fetch_batch(tenant_id, pipeline_id, batch_id).await?.is_none() {
                        return Err(StoreError::NotFound);
                    }
                    let all = sqlx::query(concat!(
                        "SELECT ", batch_error_cols!(), " FROM batch_errors \
                         WHERE batch_id = $1 AND record_index > $2 \
                         ORDER BY record_index, id LIMIT $3"
                    ))
                    .bind(batch_id)
                    .bind(after.unwrap_or(i64::MIN))
                    .bind(fetch_limit(limit))
                    .fetch_all(self.read())
                    .await?;
                    let items = rows(all, batch_error_row)?;
                    let wanted = limit.clamp(1, 10_000) as usize;
                    if items.len() > wanted && items[0].record_index == items[wanted].record_index {
                        // One record's errors fill the page and spill over:
                        // the cursor cannot point inside them, so this page
                        // holds all of them, whatever the limit.
                        let index = items[0].record_index;
                        let all = sqlx::query(concat!(
                            "SELECT ", batch_error_cols!(), " FROM batch_errors \
                             WHERE batch_id = $1 AND record_index = $2 ORDER BY id"
                        ))
                        .bind(batch_id)
                        .bind(index)
                        .fetch_all(self.read())
                        .await?;
                        return Ok((rows(all, batch_error_row)?, Some(index)));
                    }
                    Ok(page_by_int(items, limit, |e| e.record_index))
                }

                // ---- audit ----

                async fn append_audit(&self, event: NewAuditEvent) -> Result<AuditEvent> {
                    let mut tx = self.begin().await?;
                    sqlx::query($chain_lock)
                        .bind(chain_key(event.tenant_id))
                        .execute(&mut *tx)
                        .await?;
                    let last = sqlx::query(
                        "SELECT seq, hash FROM audit_events WHERE tenant_id = $1 AND seq IS NOT NULL \
                         ORDER BY seq DESC LIMIT 1",
                    )
                    .bind(event.tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let (seq, prev_hash) = match last {
                        Some(row) => (
                            row.try_get::<i64, _>("seq")? + 1,
                            row.try_get::<Option<String>, _>("hash")?
                                .ok_or_else(|| corrupt("audit_events.hash"))?,
                        ),
                        None => (1, $crate::GENESIS_HASH.to_owned()),
                    };
                    let stored = chained(event, seq, prev_hash);
                    insert_chained(&mut tx, audit_insert!("audit_events"), &stored, seq).await?;
                    tx.commit().await?;
                    Ok(stored)
                }

                async fn append_system_audit(&self, event: NewAuditEvent) -> Result<AuditEvent> {
                    let mut tx = self.begin().await?;
                    sqlx::query($chain_lock)
                        .bind(0_i64)
                        .execute(&mut *tx)
                        .await?;
                    let last = sqlx::query(
                        "SELECT seq, hash FROM system_audit_events ORDER BY seq DESC LIMIT 1",
                    )
                    .fetch_optional(&mut *tx)
                    .await?;
                    let (seq, prev_hash) = match last {
                        Some(row) => (row.try_get::<i64, _>("seq")? + 1, row.try_get::<String, _>("hash")?),
                        None => (1, $crate::GENESIS_HASH.to_owned()),
                    };
                    let stored = chained(event, seq, prev_hash);
                    insert_chained(&mut tx, audit_insert!("system_audit_events"), &stored, seq).await?;
                    tx.commit().await?;
                    Ok(stored)
                }

                async fn list_audit(
                    &self,
                    tenant_id: Uuid,
                    filter: &AuditFilter,
                    after: Option<Uuid>,
                    limit: u32,
                ) -> Result<Page<AuditEvent>> {
                    let mut query = sqlx::QueryBuilder::<$db>::new(concat!(
                        "SELECT ", audit_cols!(), " FROM audit_events WHERE tenant_id = "
                    ));
                    query.push_bind(tenant_id);
                    query.push(" AND id < ").push_bind(after.unwrap_or(Uuid::max()));
                    if let Some(action) = &filter.action {
                        query.push(" AND action = ").push_bind(action.as_str());
                    }
                    if let Some(actor) = filter.actor_key_id {
                        query.push(" AND actor_key_id = ").push_bind(actor);
                    }
                    if let Some(since) = filter.since {
                        query.push(" AND created_at >= ").push_bind(bind_ts(since));
                    }
                    if let Some(until) = filter.until {
                        query.push(" AND created_at < ").push_bind(bind_ts(until));
                    }
                    query.push(" ORDER BY id DESC LIMIT ").push_bind(fetch_limit(limit));
                    let all = query.build().fetch_all(self.read()).await?;
                    let items = rows(all, audit_row)?;
                    Ok(page(items, limit, |e| e.id))
                }

                async fn audit_chain(
                    &self,
                    tenant_id: Option<Uuid>,
                    after_seq: i64,
                    limit: u32,
                ) -> Result<Vec<AuditEvent>> {
                    let all = match tenant_id {
                        Some(tenant_id) => sqlx::query(concat!(
                            "SELECT ", audit_cols!(), " FROM audit_events WHERE tenant_id = $1 \
                             AND (seq > $2 OR (seq IS NULL AND $2 = 0)) \
                             ORDER BY COALESCE(seq, 0), id LIMIT $3"
                        ))
                        .bind(tenant_id)
                        .bind(after_seq)
                        .bind(i64::from(limit.clamp(1, 10_000)))
                        .fetch_all(self.read())
                        .await?,
                        None => sqlx::query(concat!(
                            "SELECT ", audit_cols!(), " FROM system_audit_events WHERE seq > $1 \
                             ORDER BY seq LIMIT $2"
                        ))
                        .bind(after_seq)
                        .bind(i64::from(limit.clamp(1, 10_000)))
                        .fetch_all(self.read())
                        .await?,
                    };
                    rows(all, audit_row)
                }

                // ---- key rotation ----

                async fn scan_pipeline_versions(
                    &self,
                    after: Option<(Uuid, i64)>,
                    limit: u32,
                ) -> Result<Vec<(Uuid, PipelineVersion)>> {
                    let (after_id, after_version) = after.unwrap_or((Uuid::nil(), i64::MIN));
                    let all = sqlx::query(
                        "SELECT p.tenant_id, v.pipeline_id, v.version, v.config, v.created_at, v.created_by \
                         FROM pipeline_versions v JOIN pipelines p ON p.id = v.pipeline_id \
                         WHERE v.pipeline_id > $1 OR (v.pipeline_id = $1 AND v.version > $2) \
                         ORDER BY v.pipeline_id, v.version LIMIT $3",
                    )
                    .bind(after_id)
                    .bind(after_version)
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .fetch_all(self.read())
                    .await?;
                    rows(all, |row| Ok((row.try_get("tenant_id")?, version_row(row)?)))
                }

                async fn reencrypt_pipeline_version(
                    &self,
                    pipeline_id: Uuid,
                    version: i64,
                    config: &serde_json::Value,
                ) -> Result<()> {
                    let done = sqlx::query(
                        "UPDATE pipeline_versions SET config = $3 WHERE pipeline_id = $1 AND version = $2",
                    )
                    .bind(pipeline_id)
                    .bind(version)
                    .bind(Json(config))
                    .execute(self.write())
                    .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    Ok(())
                }

                async fn scan_batch_errors(
                    &self,
                    after: Option<Uuid>,
                    limit: u32,
                ) -> Result<Vec<(Uuid, BatchError)>> {
                    let all = sqlx::query(
                        "SELECT b.tenant_id, e.id, e.batch_id, e.record_index, e.processor_index, \
                         e.processor_type, e.code, e.message, e.record, e.created_at \
                         FROM batch_errors e JOIN batches b ON b.id = e.batch_id \
                         WHERE e.id > $1 ORDER BY e.id LIMIT $2",
                    )
                    .bind(after.unwrap_or(Uuid::nil()))
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .fetch_all(self.read())
                    .await?;
                    rows(all, |row| Ok((row.try_get("tenant_id")?, batch_error_row(row)?)))
                }

                async fn reencrypt_batch_error(&self, id: Uuid, record: &serde_json::Value) -> Result<()> {
                    // A capture deleted meanwhile (a re-run batch) is no error.
                    sqlx::query("UPDATE batch_errors SET record = $2 WHERE id = $1")
                        .bind(id)
                        .bind(Json(record))
                        .execute(self.write())
                        .await?;
                    Ok(())
                }

                // ---- retention and erasure ----

                async fn purge_payloads_before(
                    &self,
                    before: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<String>> {
                    // The UPDATE locks each row it marks, so a concurrent
                    // retry (which requires an unpurged payload) either ran
                    // first (the batch is pending, not matched here) or
                    // finds the payload purged.
                    let all = sqlx::query(concat!(
                        "UPDATE batches SET payload_purged_at = ", $now,
                        " WHERE id IN (SELECT id FROM batches WHERE status IN ('completed', 'failed') \
                         AND completed_at < $1 AND payload_purged_at IS NULL ORDER BY completed_at LIMIT $2) \
                         AND status IN ('completed', 'failed') AND payload_purged_at IS NULL \
                         RETURNING payload_key"
                    ))
                    .bind(bind_ts(before))
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .fetch_all(self.write())
                    .await?;
                    rows(all, |row| Ok(row.try_get::<String, _>("payload_key")?))
                }

                async fn delete_batch_errors_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
                    let done = sqlx::query(
                        "DELETE FROM batch_errors WHERE id IN \
                         (SELECT id FROM batch_errors WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
                    )
                    .bind(bind_ts(before))
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .execute(self.write())
                    .await?;
                    Ok(done.rows_affected())
                }

                async fn delete_batches_before(
                    &self,
                    before: DateTime<Utc>,
                    limit: u32,
                ) -> Result<(u64, Vec<String>)> {
                    let all = sqlx::query(
                        "DELETE FROM batches WHERE id IN (SELECT id FROM batches \
                         WHERE status IN ('completed', 'failed') AND completed_at < $1 \
                         ORDER BY completed_at LIMIT $2) AND status IN ('completed', 'failed') \
                         RETURNING payload_key, payload_purged_at IS NULL AS stored",
                    )
                    .bind(bind_ts(before))
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .fetch_all(self.write())
                    .await?;
                    let mut keys = Vec::new();
                    for row in &all {
                        if row.try_get::<bool, _>("stored")? {
                            keys.push(row.try_get::<String, _>("payload_key")?);
                        }
                    }
                    Ok((all.len() as u64, keys))
                }

                async fn erase_tenant(&self, tenant_id: Uuid) -> Result<Vec<String>> {
                    let mut tx = self.begin().await?;
                    sqlx::query(concat!("SELECT id FROM tenants WHERE id = $1", $for_update))
                        .bind(tenant_id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or(StoreError::NotFound)?;
                    let keys = sqlx::query("SELECT payload_key FROM batches WHERE tenant_id = $1")
                        .bind(tenant_id)
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|row| row.try_get::<String, _>("payload_key"))
                        .collect::<Result<Vec<_>, _>>()?;
                    // Children first, explicitly, rather than trusting the
                    // cascade to reach every table.
                    sqlx::query(
                        "DELETE FROM batch_errors WHERE batch_id IN (SELECT id FROM batches WHERE tenant_id = $1)",
                    )
                    .bind(tenant_id)
                    .execute(&mut *tx)
                    .await?;
                    for statement in [
                        "DELETE FROM batches WHERE tenant_id = $1",
                        "DELETE FROM pipeline_versions WHERE pipeline_id IN (SELECT id FROM pipelines WHERE tenant_id = $1)",
                        "DELETE FROM pipelines WHERE tenant_id = $1",
                        "DELETE FROM audit_events WHERE tenant_id = $1",
                        "DELETE FROM api_keys WHERE tenant_id = $1",
                        "DELETE FROM tenants WHERE id = $1",
                    ] {
                        sqlx::query(statement).bind(tenant_id).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(keys)
                }
            }
        };
    };
}

pub(crate) use {
    api_key_cols, audit_cols, audit_insert, batch_cols, batch_error_cols, pipeline_cols,
    pipeline_join, pipeline_join_cols, store_impl, tenant_cols, version_cols,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names_the_last_item_only_when_more_follow() {
        let full = page(vec![5, 4, 3], 2, |n| Uuid::from_u128(*n as u128));
        assert_eq!(full.items, vec![5, 4]);
        assert_eq!(full.next_cursor, Some(Uuid::from_u128(4)));
        let last = page(vec![2, 1], 2, |n| Uuid::from_u128(*n as u128));
        assert_eq!(last.items, vec![2, 1]);
        assert_eq!(last.next_cursor, None);
    }

    #[test]
    fn page_by_int_never_splits_a_run_of_equal_keys() {
        // Limit 3, four rows fetched; the third and fourth share key 2.
        let (items, next) = page_by_int(vec![0, 1, 2, 2], 3, |n| *n);
        assert_eq!(items, vec![0, 1]);
        assert_eq!(next, Some(1));
        // A run that fills the whole page is cut rather than looping forever.
        let (items, next) = page_by_int(vec![7, 7, 7], 2, |n| *n);
        assert_eq!(items, vec![7, 7]);
        assert_eq!(next, Some(7));
        let (items, next) = page_by_int(vec![1, 2], 2, |n| *n);
        assert_eq!((items, next), (vec![1, 2], None));
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(fetch_limit(0), 2);
        assert_eq!(fetch_limit(50), 51);
        assert_eq!(fetch_limit(u32::MAX), 10_001);
        assert_eq!(lease_ms(Duration::from_secs(30)), 30_000);
    }
}
