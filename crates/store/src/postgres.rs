//! The production backend: PostgreSQL, shared by any number of API and
//! worker processes on any number of machines.
//!
//! Columns use the native types (`uuid`, `timestamptz`, `jsonb`) and every
//! time that decides something (lease expiry, `not_before`, claim order) is
//! taken from the database clock, `now()`, so workers whose own clocks
//! drift still agree on who holds a lease. A claim locks its row with
//! `FOR UPDATE SKIP LOCKED`: concurrent workers pass over each other's
//! candidates instead of queueing behind them, and no batch is handed out
//! twice. Transactions run at READ COMMITTED; the few that check and then
//! write (key rotation, pipeline delete, batch retry) lock the rows they
//! check. The SQL itself is shared with SQLite: see `crate::shared`.

use crate::Result;
use crate::shared::store_impl;
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Connections per process; PostgreSQL is shared by every process, so keep
/// each one's share modest.
const MAX_CONNECTIONS: u32 = 16;

/// The store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect to `url` (`postgres://user:pass@host:port/db`).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| crate::StoreError::UnsupportedUrl(crate::redact_url(url)))?;
        Self::connect_with(options, MAX_CONNECTIONS).await
    }

    /// Connect with explicit options and pool size.
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(PgStore { pool })
    }

    /// Apply every migration not yet applied. Concurrent callers are
    /// serialized by an advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Undo applied migrations down to `version` (0 removes everything).
    pub async fn revert_to(&self, version: i64) -> Result<()> {
        MIGRATOR.undo(&self.pool, version).await?;
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

    /// Close the pool, finishing in-flight statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn read(&self) -> &PgPool {
        &self.pool
    }

    fn write(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

fn ts(row: &PgRow, col: &str) -> Result<DateTime<Utc>> {
    Ok(row.try_get(col)?)
}

fn ts_opt(row: &PgRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get(col)?)
}

fn bind_ts(time: DateTime<Utc>) -> DateTime<Utc> {
    time
}

store_impl! {
    store: PgStore,
    db: sqlx::Postgres,
    backend: "postgres",
    now: "now()",
    lease_until: "(now() + $2 * interval '1 millisecond')",
    latency_ms: "CAST(EXTRACT(EPOCH FROM (completed_at - created_at)) * 1000 AS BIGINT)",
    for_update: " FOR UPDATE",
    for_share: " FOR SHARE",
    skip_locked: " FOR UPDATE OF b SKIP LOCKED",
    chain_lock: "SELECT pg_advisory_xact_lock($1)",
}
