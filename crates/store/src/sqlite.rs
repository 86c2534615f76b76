//! The embedded default: SQLite in WAL mode, one file in the data directory.
//!
//! SQLite allows one writer at a time. Rather than letting several pooled
//! connections race for the write lock and back off on `SQLITE_BUSY`
//! (busy-timeout polling, unfair ordering, and outright failures when a
//! deferred transaction tries to upgrade its read lock), every write goes
//! through a pool of exactly one connection, so writers queue in FIFO
//! order inside the pool and never contend with each other. Reads use a
//! separate pool of `query_only` connections, which WAL lets run
//! alongside the writer. Write transactions still start with
//! `BEGIN IMMEDIATE`, taking the write lock up front, so another process
//! on the same file (the CLI while a server runs) waits on the busy
//! timeout instead of failing halfway. `synchronous=FULL` makes a commit
//! durable before it returns, which the server relies on before it
//! acknowledges a batch. Times are stored as integer milliseconds since the
//! epoch, so lease and `not_before` comparisons are integer comparisons.
//! An in-memory database (tests, `sqlite::memory:`) has to live on one
//! connection, so there the reader and the writer are the same pool.
//!
//! The SQL itself is shared with PostgreSQL: see `crate::shared`.

use crate::shared::{corrupt, store_impl};
use crate::{Result, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Open (creating the file and its directory if needed) the database
    /// at `url`, e.g. `sqlite://./sluice-data/sluice.db?mode=rwc`.
    pub async fn connect(url: &str) -> Result<Self> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::UnsupportedUrl(crate::redact_url(url)))?;
        let in_memory = is_in_memory(url);
        if !in_memory {
            let file = base.get_filename();
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|error| StoreError::Backend(Box::new(error)))?;
            }
        }
        // secure_delete: deleted rows are overwritten, so an erased tenant's
        // data does not linger in free pages of the database file.
        let base = base
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("secure_delete", "ON");
        let writer_options = base
            .clone()
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(writer_options)
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            let readers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8);
            SqlitePoolOptions::new()
                .max_connections(u32::try_from(readers).unwrap_or(4))
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(base.pragma("query_only", "ON"))
                .await?
        };
        Ok(SqliteStore { writer, reader })
    }

    /// Apply every migration not yet applied.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    /// Undo applied migrations down to `version` (0 removes everything).
    pub async fn revert_to(&self, version: i64) -> Result<()> {
        MIGRATOR.undo(&self.writer, version).await?;
        Ok(())
    }

    /// The migrations this build carries: `(version, description)`.
    pub fn migrations() -> Vec<(i64, String)> {
        MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }

    /// Close both pools, finishing in-flight statements.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    fn read(&self) -> &SqlitePool {
        &self.reader
    }

    fn write(&self) -> &SqlitePool {
        &self.writer
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

fn ts(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
    let ms: i64 = row.try_get(col)?;
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(col))
}

fn ts_opt(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    let ms: Option<i64> = row.try_get(col)?;
    ms.map(|ms| DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(col)))
        .transpose()
}

fn bind_ts(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

store_impl! {
    store: SqliteStore,
    db: sqlx::Sqlite,
    backend: "sqlite",
    now: "(CAST(unixepoch('subsec') * 1000 AS INTEGER))",
    lease_until: "(CAST(unixepoch('subsec') * 1000 AS INTEGER) + $2)",
    latency_ms: "(completed_at - created_at)",
    for_update: "",
    for_share: "",
    skip_locked: "",
    chain_lock: "SELECT $1",
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn creates_the_directory_and_sets_durability_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/sluice.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        assert!(path.exists());
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.write())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        // FULL = 2.
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(store.write())
            .await
            .unwrap();
        assert_eq!(sync, 2);
        let secure: i64 = sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(store.write())
            .await
            .unwrap();
        assert_eq!(secure, 1);
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(store.read())
            .await
            .unwrap();
        assert_eq!(fk, 1);
        // Readers cannot write, so nothing bypasses the single writer.
        let write =
            sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES (x'00', 'x', 0)")
                .execute(store.read())
                .await;
        assert!(write.is_err());
        store.ping().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_processes_on_one_file_both_write() {
        // The CLI writing while a server runs: separate pools, one file.
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let server = SqliteStore::connect(&url).await.unwrap();
        server.migrate().await.unwrap();
        let cli = SqliteStore::connect(&url).await.unwrap();
        let mut tasks = Vec::new();
        for store in [server.clone(), cli.clone()] {
            tasks.push(tokio::spawn(async move {
                for n in 0..40 {
                    let tenant = store.create_tenant(&format!("t{n}")).await.unwrap();
                    // A transaction: two rows.
                    store
                        .create_pipeline(
                            tenant.id,
                            "p",
                            &serde_json::json!({}),
                            crate::PipelineStatus::Active,
                            None,
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(server.list_tenants().await.unwrap().len(), 80);
        assert_eq!(cli.list_tenants().await.unwrap().len(), 80);
    }

    #[tokio::test]
    async fn times_are_integer_milliseconds() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let before = Utc::now().timestamp_millis();
        let tenant = store.create_tenant("t").await.unwrap();
        let stored: i64 = sqlx::query_scalar("SELECT created_at FROM tenants")
            .fetch_one(store.read())
            .await
            .unwrap();
        assert_eq!(tenant.created_at.timestamp_millis(), stored);
        assert!((stored - before).abs() < 5_000);
    }

    #[tokio::test]
    async fn revert_removes_the_schema_and_migrate_restores_it() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        store.revert_to(0).await.unwrap();
        assert!(store.list_tenants().await.is_err());
        store.migrate().await.unwrap();
        assert!(store.list_tenants().await.unwrap().is_empty());
        assert_eq!(SqliteStore::migrations()[0].0, 1);
    }
}
