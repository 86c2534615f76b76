//! Persistence for Sluice: one [`Store`] trait, implemented for SQLite (the
//! embedded default) and PostgreSQL (production, many machines).
//!
//! The trait speaks in domain rows, never SQL, so the server and workers
//! cannot tell the backends apart, and one test suite runs unchanged
//! against both. Every query that a tenant can reach is scoped by
//! `tenant_id`; a row of another tenant is simply not found. Writes that
//! touch several rows run in one transaction. The batch queue lives here
//! too: a claim is one atomic statement (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, `UPDATE ... RETURNING` on SQLite) that hands a batch to one
//! worker under a lease the worker renews.

pub mod model;

pub use model::*;

use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (or belongs to another tenant).
    #[error("not found")]
    NotFound,
    /// Deleting a pipeline that still has pending or processing batches.
    #[error("pipeline has pending or processing batches")]
    HasActiveBatches,
    /// The row exists but is not in a state that allows the change.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// A batch with the same idempotency key already exists for the
    /// pipeline; it is returned.
    #[error("duplicate idempotency key")]
    DuplicateIdempotencyKey(Box<Batch>),
    /// The database URL is not one this build supports.
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Anything the database reported.
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything Sluice keeps in its database.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<()>;

    // ---- tenants ----
    async fn create_tenant(&self, name: &str) -> Result<Tenant>;
    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;

    // ---- API keys ----
    async fn create_api_key(&self, key: NewApiKey) -> Result<ApiKey>;
    /// The key whose secret hashes to `secret_hash`, valid or not (the
    /// caller checks [`ApiKey::is_valid_at`]).
    async fn find_api_key_by_hash(&self, secret_hash: &[u8]) -> Result<Option<ApiKey>>;
    async fn get_api_key(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiKey>>;
    /// Newest first.
    async fn list_api_keys(&self, tenant_id: Uuid) -> Result<Vec<ApiKey>>;
    /// In one transaction: create `new` (with `rotated_from = id`) and set
    /// the old key's `expires_at` to `old_expires_at`. Fails with
    /// `InvalidState` when the old key is revoked or already expired.
    async fn rotate_api_key(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        new: NewApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<ApiKey>;
    /// Fails with `InvalidState` when already revoked.
    async fn revoke_api_key(&self, tenant_id: Uuid, id: Uuid) -> Result<ApiKey>;

    // ---- pipelines ----
    /// In one transaction: the pipeline row and its version 1.
    async fn create_pipeline(
        &self,
        tenant_id: Uuid,
        name: &str,
        config: &serde_json::Value,
        status: PipelineStatus,
        actor: Option<Uuid>,
    ) -> Result<Pipeline> {
        self.create_pipeline_with_id(Uuid::now_v7(), tenant_id, name, config, status, actor)
            .await
    }
    /// [`Store::create_pipeline`] with an id chosen by the caller (the
    /// server binds encrypted secret fields to the pipeline id before the
    /// row exists). `id` should be a fresh UUIDv7.
    async fn create_pipeline_with_id(
        &self,
        id: Uuid,
        tenant_id: Uuid,
        name: &str,
        config: &serde_json::Value,
        status: PipelineStatus,
        actor: Option<Uuid>,
    ) -> Result<Pipeline>;
    async fn get_pipeline(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Pipeline>>;
    /// Newest first; `after` is a cursor from a previous page.
    async fn list_pipelines(
        &self,
        tenant_id: Uuid,
        status: Option<PipelineStatus>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Pipeline>>;
    /// In one transaction: a new immutable version and the pipeline row
    /// pointing at it.
    async fn update_pipeline(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        name: &str,
        config: &serde_json::Value,
        actor: Option<Uuid>,
    ) -> Result<Pipeline>;
    /// Newest first; `after` is a version number from a previous page.
    async fn list_pipeline_versions(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        after: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<PipelineVersion>, Option<i64>)>;
    /// Any tenant's version (for workers, which act for every tenant).
    async fn get_pipeline_version(
        &self,
        pipeline_id: Uuid,
        version: i64,
    ) -> Result<Option<(Pipeline, PipelineVersion)>>;
    async fn set_pipeline_status(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        status: PipelineStatus,
    ) -> Result<Pipeline>;
    /// In one transaction: refuse with `HasActiveBatches` while any batch
    /// is pending or processing, else delete the pipeline, its versions,
    /// batches and batch errors. Returns the payload keys of the deleted
    /// batches so the caller can delete the objects.
    async fn delete_pipeline(&self, tenant_id: Uuid, id: Uuid) -> Result<Vec<String>>;
    async fn pipeline_stats(&self, tenant_id: Uuid, id: Uuid) -> Result<PipelineStats>;

    // ---- batches ----
    /// Insert a pending batch. When `idempotency_key` is already used for
    /// the pipeline, fails with `DuplicateIdempotencyKey(existing)`.
    async fn create_batch(&self, batch: NewBatch) -> Result<Batch>;
    async fn find_batch_by_idempotency_key(
        &self,
        tenant_id: Uuid,
        pipeline_id: Uuid,
        key: &str,
    ) -> Result<Option<Batch>>;
    async fn get_batch(
        &self,
        tenant_id: Uuid,
        pipeline_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Batch>>;
    /// Newest first.
    async fn list_batches(
        &self,
        tenant_id: Uuid,
        pipeline_id: Uuid,
        status: Option<BatchStatus>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<Batch>>;
    /// Payload bytes queued (pending + processing) for the pipeline and
    /// for the whole tenant: `(pipeline_bytes, tenant_bytes)`.
    async fn queued_bytes(&self, tenant_id: Uuid, pipeline_id: Uuid) -> Result<(i64, i64)>;
    /// Queue depth of every pipeline that has queued batches.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>>;

    /// Atomically claim the oldest claimable batch of an active pipeline:
    /// `pending` with `not_before` unset or past, or `processing` with an
    /// expired lease. Sets `processing`, the lease owner and expiry,
    /// `started_at` (first claim only) and `attempts + 1`.
    async fn claim_batch(&self, worker_id: &str, lease: Duration) -> Result<Option<Batch>>;
    /// Extend the lease; false when the lease was lost to another worker.
    async fn renew_lease(&self, batch_id: Uuid, worker_id: &str, lease: Duration) -> Result<bool>;
    /// Give the batch back (`pending`, lease cleared), claimable again
    /// after `not_before`; records `error` as the last attempt's failure.
    /// When `undo_attempt`, the attempt does not count (graceful
    /// shutdown). False when the lease was lost.
    async fn release_batch(
        &self,
        batch_id: Uuid,
        worker_id: &str,
        not_before: Option<DateTime<Utc>>,
        error: Option<&str>,
        undo_attempt: bool,
    ) -> Result<bool>;
    /// Finish the batch with its counts; false when the lease was lost.
    async fn finish_batch(
        &self,
        batch_id: Uuid,
        worker_id: &str,
        outcome: &BatchOutcome,
    ) -> Result<bool>;
    /// Re-queue a failed batch (`pending`, counts and error reset,
    /// attempts 0, its batch errors deleted). `InvalidState` unless failed.
    async fn retry_batch(&self, tenant_id: Uuid, pipeline_id: Uuid, id: Uuid) -> Result<Batch>;

    /// Replace the batch's failed-record captures (an attempt that is
    /// re-run starts from none).
    async fn clear_batch_errors(&self, batch_id: Uuid) -> Result<()>;
    async fn insert_batch_errors(&self, batch_id: Uuid, errors: &[NewBatchError]) -> Result<()>;
    /// Ordered by record index; `after` is the last record index seen.
    async fn list_batch_errors(
        &self,
        tenant_id: Uuid,
        pipeline_id: Uuid,
        batch_id: Uuid,
        after: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<BatchError>, Option<i64>)>;

    // ---- audit ----
    /// Append to the tenant's hash chain: in one transaction that holds
    /// the chain's lock, read the last event's seq and hash, and insert
    /// the event with seq + 1, `prev_hash` and its own hash
    /// ([`audit_hash`]). Fails with `NotFound` for an unknown tenant.
    async fn append_audit(&self, event: NewAuditEvent) -> Result<AuditEvent>;
    /// Newest first, filtered.
    async fn list_audit(
        &self,
        tenant_id: Uuid,
        filter: &AuditFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Page<AuditEvent>>;
    /// One chain in seq order, from seq `after_seq + 1`: a tenant's, or
    /// with `None` the system chain. Rows written before chaining (no
    /// seq) come first, on the page that starts at 0.
    async fn audit_chain(
        &self,
        tenant_id: Option<Uuid>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>>;
    /// Append to the system chain (master key rotations, tenant
    /// erasures); `event.tenant_id` names the tenant acted on, or is nil.
    /// These rows have no foreign keys and survive the tenant.
    async fn append_system_audit(&self, event: NewAuditEvent) -> Result<AuditEvent>;

    // ---- key rotation (every tenant) ----
    /// Every pipeline version of every tenant, as `(tenant_id, version)`,
    /// ordered by pipeline id and version, after `after`.
    async fn scan_pipeline_versions(
        &self,
        after: Option<(Uuid, i64)>,
        limit: u32,
    ) -> Result<Vec<(Uuid, PipelineVersion)>>;
    /// Replace a version's stored config. Only for re-encrypting its
    /// secret fields under a new key: the meaning must not change.
    async fn reencrypt_pipeline_version(
        &self,
        pipeline_id: Uuid,
        version: i64,
        config: &serde_json::Value,
    ) -> Result<()>;
    /// Every failed-record capture, as `(tenant_id, error)`, by id.
    async fn scan_batch_errors(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(Uuid, BatchError)>>;
    /// Replace a capture's stored record (re-encryption only).
    async fn reencrypt_batch_error(&self, id: Uuid, record: &serde_json::Value) -> Result<()>;

    // ---- retention and erasure (R-SEC-8) ----
    /// Mark up to `limit` finished batches completed before `before`
    /// whose payload is still stored as purged, and return their payload
    /// keys for the caller to delete. A purged batch cannot be retried.
    async fn purge_payloads_before(&self, before: DateTime<Utc>, limit: u32)
    -> Result<Vec<String>>;
    /// Delete up to `limit` failed-record captures created before
    /// `before`; returns how many.
    async fn delete_batch_errors_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64>;
    /// Delete up to `limit` finished batches completed before `before`
    /// (with their captures); returns how many, and the payload keys not
    /// yet purged.
    async fn delete_batches_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<(u64, Vec<String>)>;
    /// Delete the tenant and every row that belongs to it (keys,
    /// pipelines, versions, batches, captures, its audit chain) in one
    /// transaction; returns the payload keys of its batches.
    async fn erase_tenant(&self, tenant_id: Uuid) -> Result<Vec<String>>;
}

/// Open the database at `url` (`sqlite:...` or `postgres://...`) and, when
/// `migrate`, bring its schema up to date.
pub async fn connect(url: &str, migrate: bool) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::connect(url).await?;
        if migrate {
            store.migrate().await?;
        }
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = postgres::PgStore::connect(url).await?;
        if migrate {
            store.migrate().await?;
        }
        Ok(Arc::new(store))
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// Undo the migrations of the database at `url` down to `version` (0
/// removes the whole schema): `sluice migrate --revert-to N`.
pub async fn revert_to(url: &str, version: i64) -> Result<()> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::connect(url).await?;
        let reverted = store.revert_to(version).await;
        store.close().await;
        reverted
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = postgres::PgStore::connect(url).await?;
        let reverted = store.revert_to(version).await;
        store.close().await;
        reverted
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// A database URL with any password replaced, safe to log.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:****{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

mod shared;

pub mod postgres;
pub mod sqlite;
pub mod testing;
