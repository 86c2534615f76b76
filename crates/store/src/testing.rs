//! Fresh databases for tests, used by every crate's test suite.
//!
//! Each test gets its own database so tests run in parallel without
//! seeing each other's rows: a SQLite file in a temporary directory, or a
//! new PostgreSQL database `sluice_test_<epoch seconds>_<random>` on the
//! server named by `SLUICE_TEST_DATABASE_URL`. Tests drop their PostgreSQL
//! database when they finish ([`drop_postgres_database`]); databases left
//! behind by a crashed run are dropped by the next run once they are a few
//! hours old (the creation time is in the name), so they never pile up.
//! This module ships in the library (not behind `cfg(test)`) because the
//! server's and the CLI's tests use it too; it touches nothing unless
//! called.

use crate::{Result, Store, StoreError};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that points tests at a PostgreSQL server.
pub const TEST_DATABASE_URL_VAR: &str = "SLUICE_TEST_DATABASE_URL";

/// Test databases older than this are assumed abandoned.
const STALE_AFTER: Duration = Duration::from_secs(3 * 60 * 60);

const PREFIX: &str = "sluice_test_";

/// Connections per test store made by [`fresh_postgres`].
const TEST_POOL_SIZE: u32 = 4;

/// `SLUICE_TEST_DATABASE_URL`, when set and not empty.
pub fn test_database_url() -> Option<String> {
    std::env::var(TEST_DATABASE_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// A migrated SQLite store in a new temporary directory. Keep the
/// directory alive as long as the store.
///
/// Panics if the store cannot be created: it is meant for tests only.
#[allow(clippy::expect_used)]
pub async fn fresh_sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("sluice.db").display()
    );
    let store = crate::connect(&url, true)
        .await
        .expect("open and migrate a fresh SQLite store");
    (store, dir)
}

/// Create a new, empty database on the server of `base` (for example
/// `postgres://postgres@127.0.0.1:5432/test`) and return its URL. Fails
/// when the server cannot be reached: a test configured for PostgreSQL
/// must not silently skip it.
pub async fn fresh_postgres_url(base: &str) -> Result<String> {
    let mut admin = admin_connection(base).await?;
    drop_stale_databases(&mut admin).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!("{PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
    // An identifier cannot be a bound parameter; `name` is made only of
    // ASCII letters, digits and underscores generated above.
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    with_database(base, &name)
}

/// A migrated PostgreSQL store in a new database; returns its URL too, for
/// [`drop_postgres_database`].
/// Its pool is small, since many tests share one server.
pub async fn fresh_postgres(base: &str) -> Result<(Arc<dyn Store>, String)> {
    let url = fresh_postgres_url(base).await?;
    let options = PgConnectOptions::from_str(&url).map_err(|_| unsupported(&url))?;
    let store = crate::postgres::PgStore::connect_with(options, TEST_POOL_SIZE).await?;
    store.migrate().await?;
    Ok((Arc::new(store), url))
}

/// Drop a database made by [`fresh_postgres_url`], closing any connections
/// still open to it. Refuses databases not named like one.
pub async fn drop_postgres_database(url: &str) -> Result<()> {
    let parsed = url::Url::parse(url).map_err(|_| unsupported(url))?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if !is_test_database_name(&name) {
        return Err(StoreError::InvalidState(
            "not a test database; refusing to drop it".into(),
        ));
    }
    let mut admin = admin_connection(&with_database(url, "postgres")?).await?;
    drop_database(&mut admin, &name).await?;
    let _ = admin.close().await;
    Ok(())
}

fn is_test_database_name(name: &str) -> bool {
    name.starts_with(PREFIX)
        && name.len() > PREFIX.len()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

async fn drop_database(admin: &mut PgConnection, name: &str) -> Result<()> {
    debug_assert!(is_test_database_name(name));
    // WITH (FORCE) (PostgreSQL 13+) ends the pools of a finished test.
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await?;
    Ok(())
}

/// Best effort: drop test databases whose name says they are older than
/// [`STALE_AFTER`].
async fn drop_stale_databases(admin: &mut PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'sluice\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for name in names {
        let created = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|secs| secs.parse::<u64>().ok());
        let stale = created.is_some_and(|t| now.saturating_sub(t) > STALE_AFTER.as_secs());
        if stale
            && is_test_database_name(&name)
            && let Err(error) = drop_database(admin, &name).await
        {
            tracing::debug!(%error, "could not drop a stale test database");
        }
    }
}

/// Run one statement with a bound `uuid` as `$1` (when given) directly on
/// the database at `url`, bypassing the store: for tests that tamper with
/// rows (the audit chain must notice) or count what an erasure left.
/// Returns the rows affected, or for a `SELECT` of one integer column
/// `n`, that value. The SQL must be a literal in a test.
pub async fn raw_statement(url: &str, sql: &'static str, id: Option<uuid::Uuid>) -> Result<i64> {
    use sqlx::Row as _;
    let is_select = sql.trim_start().to_ascii_uppercase().starts_with("SELECT");
    if url.starts_with("sqlite:") {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .map_err(|_| unsupported(url))?
            .busy_timeout(Duration::from_secs(30));
        let mut conn = options.connect().await?;
        let mut query = sqlx::query(sql);
        if let Some(id) = id {
            query = query.bind(id);
        }
        let n = if is_select {
            query.fetch_one(&mut conn).await?.try_get::<i64, _>("n")?
        } else {
            i64::try_from(query.execute(&mut conn).await?.rows_affected()).unwrap_or(i64::MAX)
        };
        let _ = conn.close().await;
        Ok(n)
    } else {
        let options = PgConnectOptions::from_str(url).map_err(|_| unsupported(url))?;
        let mut conn = options.connect().await?;
        let mut query = sqlx::query(sql);
        if let Some(id) = id {
            query = query.bind(id);
        }
        let n = if is_select {
            query.fetch_one(&mut conn).await?.try_get::<i64, _>("n")?
        } else {
            i64::try_from(query.execute(&mut conn).await?.rows_affected()).unwrap_or(i64::MAX)
        };
        let _ = conn.close().await;
        Ok(n)
    }
}

/// A connection for CREATE/DROP DATABASE: to the database of `base`, or
/// the `postgres` maintenance database when that one does not exist.
async fn admin_connection(base: &str) -> Result<PgConnection> {
    let options = PgConnectOptions::from_str(base).map_err(|_| unsupported(base))?;
    match options.clone().connect().await {
        Ok(conn) => Ok(conn),
        Err(first) => match options.database("postgres").connect().await {
            Ok(conn) => Ok(conn),
            Err(_) => Err(first.into()),
        },
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url).map_err(|_| unsupported(url))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.into())
}

fn unsupported(url: &str) -> StoreError {
    StoreError::UnsupportedUrl(crate::redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_only_the_database_name() {
        let url = with_database(
            "postgres://u:p@db.example:6543/test?sslmode=require",
            "sluice_test_1_ab",
        )
        .unwrap_or_default();
        assert_eq!(
            url,
            "postgres://u:p@db.example:6543/sluice_test_1_ab?sslmode=require"
        );
    }

    #[test]
    fn only_generated_names_are_droppable() {
        assert!(is_test_database_name("sluice_test_1700000000_0af3"));
        assert!(!is_test_database_name("test"));
        assert!(!is_test_database_name("sluice_test_"));
        assert!(!is_test_database_name("sluice_test_1\"; DROP"));
    }
}
