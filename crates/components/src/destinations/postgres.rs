//! `postgres`: rows in a PostgreSQL table, one per record, keyed by the
//! stable record id (R-DEL-1).
//!
//! Two layouts: JSONB mode (`id text primary key`, `data jsonb`) and mapped
//! columns (`columns: {col: "/pointer"}`). Every insert is one statement per
//! transaction of `transaction_records` rows with `ON CONFLICT (id) DO
//! NOTHING` (or `DO UPDATE`), so a redelivered part changes nothing and a
//! part cut short by a failure is completed by the retry. Record values
//! only ever travel as bind parameters: JSONB mode binds two arrays
//! (`UNNEST($1::text[], $2::text[]::jsonb[])`), mapped mode binds one JSON
//! array and lets PostgreSQL convert each value to its column's type
//! (`jsonb_populate_recordset`). Identifiers are validated at build time
//! and always quoted.
//!
//! The password is its own (encrypted) field and is refused inside the
//! URL. The pool is created on first use, so validating a config does no
//! I/O; the pool belongs to the built destination, which the worker caches
//! per config version. Each part's write is bounded by `timeout_ms`, and the
//! same value is sent as the session's `statement_timeout`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value};
use sluice_config::pipeline::{OnConflict, PostgresDestinationSpec, PostgresSslMode};
use sluice_core::{DeliveryError, Destination, OutputPart, Problem};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, ConnectOptions};
use tokio::sync::Mutex;

const DEFAULT_TRANSACTION_RECORDS: usize = 1000;
const MAX_TRANSACTION_RECORDS: usize = 100_000;
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_MAX_CONNECTIONS: u32 = 4;

/// A PostgreSQL identifier we accept: plain, so quoting is trivial and the
/// name means the same quoted or not (apart from case).
pub(crate) fn check_identifier(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid identifier (letters, digits and `_`, not starting with a digit, at most 63)"
        ))
    }
}

/// Resolve `host` and refuse it unless the outbound policy allows one of
/// its addresses (SSRF: a tenant's config must not reach the internal
/// network unless the operator allows it). Unix sockets count as local.
pub(crate) async fn check_reachable(
    outbound: &sluice_outbound::Outbound,
    host: &str,
    port: u16,
) -> Result<(), DeliveryError> {
    use sluice_outbound::guard::Denied;
    if outbound.allows_private() {
        return Ok(());
    }
    if host.starts_with('/') {
        return Err(DeliveryError::permanent(Denied::PrivateAddress.to_string()));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match sluice_outbound::guard::resolve_allowed(host, port, outbound.policy()).await {
        Ok(_) => Ok(()),
        Err(e) => match e.downcast_ref::<Denied>() {
            Some(denied) => Err(DeliveryError::permanent(denied.to_string())),
            None => Err(DeliveryError::transient("resolving the host failed")),
        },
    }
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

#[derive(Clone)]
enum Layout {
    /// The whole record in one jsonb column (its name).
    Jsonb(String),
    /// Column name → JSON Pointer.
    Columns(Vec<(String, String)>),
}

pub(crate) struct PostgresDestination {
    outbound: sluice_outbound::Outbound,
    options: PgConnectOptions,
    max_connections: u32,
    pool: OnceLock<PgPool>,
    layout: Layout,
    id_field: String,
    id_column: String,
    insert_sql: String,
    create_sql: Option<String>,
    /// Set once the table is known to exist (or was created).
    table_ready: Mutex<bool>,
    probe_sql: String,
    transaction_records: usize,
    timeout: Duration,
}

pub(crate) fn build(
    spec: &PostgresDestinationSpec,
    ctx: &crate::BuildContext,
    id_field: &str,
) -> Result<PostgresDestination, Vec<Problem>> {
    let mut problems = Vec::new();
    let options = connect_options(spec, &mut problems);

    let table_parts: Vec<&str> = spec.table.split('.').collect();
    let table = if table_parts.len() > 2 {
        problems.push(Problem::new("/table", "must be `table` or `schema.table`"));
        String::new()
    } else {
        for p in &table_parts {
            if let Err(m) = check_identifier(p) {
                problems.push(Problem::new("/table", m));
            }
        }
        table_parts
            .iter()
            .map(|p| quote(p))
            .collect::<Vec<_>>()
            .join(".")
    };
    let id_column = spec.id_column.clone().unwrap_or_else(|| "id".to_owned());
    if let Err(m) = check_identifier(&id_column) {
        problems.push(Problem::new("/id_column", m));
    }
    // JSONB mode: the data column's name; mapped mode: the columns.
    let layout = match (&spec.column, &spec.columns) {
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                "/columns",
                "use either `column` (JSONB mode) or `columns` (mapped), not both",
            ));
            None
        }
        (_, Some(map)) => Some(Layout::Columns(check_columns(
            map,
            &id_column,
            &mut problems,
        ))),
        (column, None) => {
            let column = column.clone().unwrap_or_else(|| "data".to_owned());
            if let Err(m) = check_identifier(&column) {
                problems.push(Problem::new("/column", m));
            } else if column == id_column {
                problems.push(Problem::new("/column", "must differ from `id_column`"));
            }
            Some(Layout::Jsonb(column))
        }
    };
    let transaction_records = spec
        .transaction_records
        .unwrap_or(DEFAULT_TRANSACTION_RECORDS);
    if !(1..=MAX_TRANSACTION_RECORDS).contains(&transaction_records) {
        problems.push(Problem::new(
            "/transaction_records",
            format!("must be 1 to {MAX_TRANSACTION_RECORDS}"),
        ));
    }
    let max_connections = spec.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=64).contains(&max_connections) {
        problems.push(Problem::new("/max_connections", "must be 1 to 64"));
    }
    let timeout_ms = spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(100..=600_000).contains(&timeout_ms) {
        problems.push(Problem::new("/timeout_ms", "must be 100 to 600000"));
    }
    let (Some(options), Some(layout)) = (options, layout) else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let columns: Vec<String> = match &layout {
        Layout::Jsonb(data) => vec![data.clone()],
        Layout::Columns(cols) => cols.iter().map(|c| c.0.clone()).collect(),
    };
    let id = quote(&id_column);
    let all: Vec<String> = std::iter::once(id.clone())
        .chain(columns.iter().map(|c| quote(c)))
        .collect();
    let conflict = match spec.on_conflict {
        OnConflict::Nothing => format!("ON CONFLICT ({id}) DO NOTHING"),
        OnConflict::Update => format!(
            "ON CONFLICT ({id}) DO UPDATE SET {}",
            columns
                .iter()
                .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let insert_sql = match layout {
        Layout::Jsonb(_) => format!(
            "INSERT INTO {table} ({}) SELECT * FROM UNNEST($1::text[], $2::text[]::jsonb[]) {conflict}",
            all.join(", ")
        ),
        Layout::Columns(_) => format!(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb) {conflict}",
            cols = all.join(", ")
        ),
    };
    let create_sql = spec.create_table.then(|| {
        let cols = match layout {
            Layout::Jsonb(_) => format!("{} jsonb NOT NULL", quote(&columns[0])),
            Layout::Columns(_) => columns
                .iter()
                .map(|c| format!("{} jsonb", quote(c)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        format!("CREATE TABLE IF NOT EXISTS {table} ({id} text PRIMARY KEY, {cols})")
    });
    Ok(PostgresDestination {
        outbound: ctx.outbound.clone(),
        options: options
            .statement_cache_capacity(16)
            .options([("statement_timeout", timeout_ms.to_string())]),
        max_connections,
        pool: OnceLock::new(),
        layout,
        id_field: id_field.to_owned(),
        id_column,
        probe_sql: format!("SELECT {} FROM {table} WHERE false", all.join(", ")),
        insert_sql,
        create_sql,
        table_ready: Mutex::new(false),
        transaction_records,
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// The `columns` map of a table destination (`postgres`, `clickhouse`):
/// valid identifiers other than the id column, each mapped to a JSON
/// Pointer.
pub(crate) fn check_columns(
    map: &BTreeMap<String, String>,
    id_column: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(String, String)> {
    if map.is_empty() {
        problems.push(Problem::new("/columns", "must name at least one column"));
    }
    let mut out = Vec::with_capacity(map.len());
    for (col, pointer) in map {
        let at = format!("/columns/{}", sluice_core::pointer_token(col));
        if let Err(m) = check_identifier(col) {
            problems.push(Problem::new(at, m));
        } else if col == id_column {
            problems.push(Problem::new(
                at,
                "the id column is filled with the record id",
            ));
        } else if !pointer.is_empty() && !pointer.starts_with('/') {
            problems.push(Problem::new(at, "must be a JSON Pointer starting with `/`"));
        } else {
            out.push((col.clone(), pointer.clone()));
        }
    }
    out
}

fn connect_options(
    spec: &PostgresDestinationSpec,
    problems: &mut Vec<Problem>,
) -> Option<PgConnectOptions> {
    let url = match url::Url::parse(&spec.url) {
        Ok(u) => u,
        Err(e) => {
            problems.push(Problem::new("/url", format!("invalid URL: {e}")));
            return None;
        }
    };
    if url.scheme() != "postgres" && url.scheme() != "postgresql" {
        problems.push(Problem::new("/url", "must be a postgres:// URL"));
        return None;
    }
    if url.password().is_some() {
        problems.push(Problem::new(
            "/url",
            "must not contain a password; put it in the `password` field (stored encrypted)",
        ));
        return None;
    }
    for (key, _) in url.query_pairs() {
        let moved = match key.as_ref() {
            "password" => Some("password"),
            "sslmode" | "ssl-mode" => Some("sslmode"),
            _ => None,
        };
        if let Some(field) = moved {
            problems.push(Problem::new(
                "/url",
                format!("`{key}` belongs in the `{field}` field, not in the URL"),
            ));
            return None;
        }
    }
    let options = match PgConnectOptions::from_str(&spec.url) {
        Ok(o) => o,
        Err(e) => {
            problems.push(Problem::new("/url", format!("invalid PostgreSQL URL: {e}")));
            return None;
        }
    };
    let mut options = options.ssl_mode(match spec.sslmode {
        PostgresSslMode::Disable => PgSslMode::Disable,
        PostgresSslMode::Prefer => PgSslMode::Prefer,
        PostgresSslMode::Require => PgSslMode::Require,
        PostgresSslMode::VerifyCa => PgSslMode::VerifyCa,
        PostgresSslMode::VerifyFull => PgSslMode::VerifyFull,
    });
    if let Some(pw) = &spec.password {
        options = options.password(pw);
    }
    // Statements are not logged: they carry no values, but the pool's
    // slow-statement warnings are noise in a shipper.
    Some(options.disable_statement_logging())
}

/// Classify a driver error. Connection trouble, timeouts, resource
/// exhaustion, serialization failures and shutdowns may heal; missing
/// tables or columns, refused logins, bad data and TLS misconfiguration do
/// not. Messages of data errors (classes 22 and 23) can quote record
/// values, so only their SQLSTATE is reported.
fn classify(e: &sqlx::Error) -> DeliveryError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let class = code.get(..2).unwrap_or("");
            let detail = if matches!(class, "22" | "23") {
                format!("SQLSTATE {code} (a record does not fit the table)")
            } else {
                format!("SQLSTATE {code}: {}", db.message())
            };
            // 23505 is a unique violation: only a concurrent CREATE TABLE
            // can cause it here (inserts use ON CONFLICT).
            let transient = matches!(class, "08" | "40" | "53" | "57" | "58" | "XX")
                || code == "23505"
                || code == "55P03";
            if transient {
                DeliveryError::transient(detail)
            } else {
                DeliveryError::permanent(detail)
            }
        }
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => {
            DeliveryError::permanent(format!("{e}"))
        }
        sqlx::Error::Io(io) => {
            DeliveryError::transient(format!("connection failed: {}", io.kind()))
        }
        sqlx::Error::PoolTimedOut => DeliveryError::transient("timed out waiting for a connection"),
        _ => DeliveryError::transient(format!("{e}")),
    }
}

fn timed_out(timeout: Duration) -> DeliveryError {
    DeliveryError::transient(format!("timed out after {} ms", timeout.as_millis()))
}

/// The rows of a part: ids and either record texts (JSONB mode) or the
/// JSON objects `jsonb_populate_recordset` reads.
enum Rows {
    Jsonb {
        ids: Vec<String>,
        records: Vec<String>,
    },
    Columns(Vec<Value>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Jsonb { ids, .. } => ids.len(),
            Rows::Columns(rows) => rows.len(),
        }
    }
}

impl PostgresDestination {
    async fn check_reachable(&self) -> Result<(), DeliveryError> {
        check_reachable(
            &self.outbound,
            self.options.get_host(),
            self.options.get_port(),
        )
        .await
    }

    fn pool(&self) -> &PgPool {
        self.pool.get_or_init(|| {
            PgPoolOptions::new()
                .max_connections(self.max_connections)
                .min_connections(0)
                .acquire_timeout(self.timeout)
                .idle_timeout(Some(Duration::from_secs(300)))
                .connect_lazy_with(self.options.clone())
        })
    }

    async fn ensure_table(&self) -> Result<(), DeliveryError> {
        let mut ready = self.table_ready.lock().await;
        if *ready {
            return Ok(());
        }
        if let Some(sql) = &self.create_sql {
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .execute(self.pool())
                .await
                .map_err(|e| classify(&e))?;
        }
        *ready = true;
        Ok(())
    }

    async fn insert(&self, rows: Rows) -> Result<(), DeliveryError> {
        self.check_reachable().await?;
        self.ensure_table().await?;
        let step = self.transaction_records;
        let total = rows.len();
        let mut start = 0;
        while start < total {
            let end = (start + step).min(total);
            let mut tx = self.pool().begin().await.map_err(|e| classify(&e))?;
            let query = sqlx::query(AssertSqlSafe(self.insert_sql.as_str()));
            let query = match &rows {
                Rows::Jsonb { ids, records } => {
                    query.bind(&ids[start..end]).bind(&records[start..end])
                }
                Rows::Columns(objects) => query.bind(sqlx::types::Json(&objects[start..end])),
            };
            query.execute(&mut *tx).await.map_err(|e| classify(&e))?;
            tx.commit().await.map_err(|e| classify(&e))?;
            start = end;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Destination for PostgresDestination {
    fn type_name(&self) -> &'static str {
        "postgres"
    }

    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError> {
        // Parsing is CPU work: off the async threads.
        let ndjson = part.ndjson.clone();
        let rows = {
            let this = RowsParser {
                id_field: self.id_field.clone(),
                layout: match &self.layout {
                    Layout::Jsonb(_) => None,
                    Layout::Columns(c) => Some((self.id_column.clone(), c.clone())),
                },
            };
            tokio::task::spawn_blocking(move || this.parse(&ndjson))
                .await
                .map_err(|_| DeliveryError::transient("parsing task failed"))??
        };
        tokio::time::timeout(self.timeout, self.insert(rows))
            .await
            .map_err(|_| timed_out(self.timeout))?
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        tokio::time::timeout(self.timeout, async {
            self.check_reachable().await?;
            self.ensure_table().await?;
            sqlx::query(AssertSqlSafe(self.probe_sql.as_str()))
                .execute(self.pool())
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))
        })
        .await
        .map_err(|_| timed_out(self.timeout))?
    }
}

/// What parsing a part needs, owned so it can move to a blocking thread.
struct RowsParser {
    id_field: String,
    /// `None` for JSONB mode; the id column and the mapped columns.
    layout: Option<(String, Vec<(String, String)>)>,
}

impl RowsParser {
    fn parse(&self, ndjson: &[u8]) -> Result<Rows, DeliveryError> {
        let mut ids = Vec::new();
        let mut records = Vec::new();
        let mut objects = Vec::new();
        for line in ndjson.split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let record: Map<String, Value> = serde_json::from_slice(line)
                .map_err(|_| DeliveryError::permanent("a line of the part is not a JSON object"))?;
            let id = match record.get(&self.id_field) {
                Some(Value::String(s)) => s.clone(),
                _ => {
                    return Err(DeliveryError::permanent(format!(
                        "a record has no string `{}` id",
                        self.id_field
                    )));
                }
            };
            match &self.layout {
                None => {
                    ids.push(id);
                    records.push(String::from_utf8_lossy(line).into_owned());
                }
                Some((id_column, cols)) => {
                    let value = Value::Object(record);
                    let mut row = Map::with_capacity(cols.len() + 1);
                    row.insert(id_column.clone(), Value::String(id));
                    for (col, pointer) in cols {
                        row.insert(
                            col.clone(),
                            value.pointer(pointer).cloned().unwrap_or(Value::Null),
                        );
                    }
                    objects.push(Value::Object(row));
                }
            }
        }
        Ok(match self.layout {
            None => Rows::Jsonb { ids, records },
            Some(_) => Rows::Columns(objects),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn build_json(v: Value) -> Result<PostgresDestination, Vec<String>> {
        let spec: PostgresDestinationSpec = serde_json::from_value(v).unwrap();
        build(&spec, &crate::test_support::build_ctx(), "_sluice_id")
            .map_err(|p| p.into_iter().map(|p| p.path).collect())
    }

    #[test]
    fn config_problems_are_located() {
        assert!(build_json(json!({"url": "postgres://u@h/db", "table": "s.t"})).is_ok());
        assert_eq!(
            build_json(json!({"url": "postgres://u:pw@h/db", "table": "t"})).err(),
            Some(vec!["/url".to_owned()]),
            "a password inside the URL"
        );
        assert_eq!(
            build_json(json!({"url": "postgres://u@h/db?sslmode=disable", "table": "t"})).err(),
            Some(vec!["/url".to_owned()])
        );
        assert_eq!(
            build_json(
                json!({"url": "mysql://h/db", "table": "a.b.c", "id_column": "1x",
                "columns": {"id": "/a", "bad name": "/b", "ok": "x"},
                "transaction_records": 0, "max_connections": 0, "timeout_ms": 1})
            )
            .err(),
            Some(
                [
                    "/url",
                    "/table",
                    "/id_column",
                    "/columns/bad name",
                    "/columns/ok",
                    "/transaction_records",
                    "/max_connections",
                    "/timeout_ms"
                ]
                .map(str::to_owned)
                .to_vec()
            )
        );
        assert_eq!(
            build_json(json!({"url": "postgres://h/db", "table": "t\"; DROP TABLE x; --"})).err(),
            Some(vec!["/table".to_owned()])
        );
    }

    #[test]
    fn statements_quote_identifiers_and_bind_values() {
        let d = build_json(json!({"url": "postgres://h/db", "table": "s.events",
            "on_conflict": "update", "create_table": true}))
        .ok()
        .unwrap();
        assert_eq!(
            d.insert_sql,
            "INSERT INTO \"s\".\"events\" (\"id\", \"data\") SELECT * FROM UNNEST($1::text[], $2::text[]::jsonb[]) ON CONFLICT (\"id\") DO UPDATE SET \"data\" = EXCLUDED.\"data\""
        );
        assert_eq!(
            d.create_sql.as_deref(),
            Some(
                "CREATE TABLE IF NOT EXISTS \"s\".\"events\" (\"id\" text PRIMARY KEY, \"data\" jsonb NOT NULL)"
            )
        );
        let d = build_json(json!({"url": "postgres://h/db", "table": "t",
            "columns": {"n": "/i", "whole": ""}}))
        .ok()
        .unwrap();
        assert_eq!(
            d.insert_sql,
            "INSERT INTO \"t\" (\"id\", \"n\", \"whole\") SELECT \"id\", \"n\", \"whole\" FROM jsonb_populate_recordset(NULL::\"t\", $1::jsonb) ON CONFLICT (\"id\") DO NOTHING"
        );
    }

    #[test]
    fn rows_take_the_id_and_mapped_values() {
        let parser = RowsParser {
            id_field: "_sluice_id".into(),
            layout: Some(("id".into(), vec![("n".into(), "/a/n".into())])),
        };
        let Rows::Columns(rows) = parser
            .parse(b"{\"_sluice_id\":\"b:0:0\",\"a\":{\"n\":5}}\n{\"_sluice_id\":\"b:1:0\"}\n")
            .ok()
            .unwrap()
        else {
            unreachable!()
        };
        assert_eq!(
            rows,
            vec![
                json!({"id": "b:0:0", "n": 5}),
                json!({"id": "b:1:0", "n": null})
            ]
        );
        assert!(
            parser.parse(b"{\"x\":1}\n").is_err(),
            "a record without an id"
        );
    }

    #[tokio::test]
    async fn private_hosts_are_refused_unless_allowed() {
        let d = build_json(json!({"url": "postgres://u@127.0.0.1:1/db", "table": "t"}))
            .ok()
            .unwrap();
        let e = d.healthcheck().await.err().unwrap();
        assert_eq!(e.kind, sluice_core::FailureKind::Permanent);
        assert!(e.message.contains("private"), "{}", e.message);
    }
}
