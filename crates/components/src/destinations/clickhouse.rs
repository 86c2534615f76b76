//! `clickhouse`: rows inserted over ClickHouse's HTTP interface with
//! `INSERT INTO db.table (cols) FORMAT JSONEachRow`, one request per part.
//!
//! Exactly-once in ClickHouse rests on two mechanisms. The table is a
//! `ReplacingMergeTree` ordered by the record id, so rows written twice
//! (a retried part) collapse into one when parts merge, and a query with
//! `FINAL` (or after `OPTIMIZE TABLE … FINAL`) already sees one row per id.
//! On servers that have it (22.2 and later) each insert also carries
//! `insert_deduplication_token=<batch>:<part>`, so a retried insert of the
//! same part is dropped at once (for non-replicated tables this needs the
//! table setting `non_replicated_deduplication_window`, which
//! `create_table` sets there). Older servers — Debian ships 18.16 — lack
//! the token; there ReplacingMergeTree + `FINAL` is what makes duplicates
//! invisible. The server version is asked once (`SELECT version()`).
//!
//! Two layouts, as for `postgres`: column mode (`id String`, `data String`
//! holding the record's JSON text) and mapped columns (`columns:
//! {col: "/pointer"}`, the values sent as JSON for ClickHouse to convert).
//!
//! Errors are classified by ClickHouse's exception code (header
//! `X-ClickHouse-Exception-Code`, or `Code: N` in the body of old
//! servers): unknown tables, columns, users or settings and unparsable
//! rows are permanent; the rest of the 5xx range, 429, timeouts and
//! connection errors are transient. Response bodies can quote rows, so
//! they are only shown for codes whose text names schema objects.

use std::time::Duration;

use serde_json::{Map, Value};
use sluice_config::pipeline::ClickhouseDestinationSpec;
use sluice_core::{DeliveryError, Destination, OutputPart, Problem};
use tokio::sync::OnceCell;

use crate::destinations::postgres::{check_columns, check_identifier};

const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const BODY_LIMIT: usize = 200;

/// Exception codes that retrying cannot fix, with the ones whose text is
/// safe to show (it names schema objects, never row data).
const PERMANENT_CODES: &[(u32, bool)] = &[
    (6, false),   // CANNOT_PARSE_TEXT
    (16, true),   // NO_SUCH_COLUMN_IN_TABLE
    (26, false),  // CANNOT_PARSE_QUOTED_STRING
    (27, false),  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    (38, false),  // CANNOT_PARSE_DATE
    (41, false),  // CANNOT_PARSE_DATETIME
    (53, false),  // TYPE_MISMATCH
    (60, true),   // UNKNOWN_TABLE
    (62, true),   // SYNTAX_ERROR
    (69, false),  // ARGUMENT_OUT_OF_BOUND
    (70, false),  // CANNOT_CONVERT_TYPE
    (72, false),  // CANNOT_PARSE_NUMBER
    (81, true),   // UNKNOWN_DATABASE
    (115, true),  // UNKNOWN_SETTING
    (117, false), // INCORRECT_DATA
    (164, true),  // READONLY
    (192, true),  // UNKNOWN_USER
    (193, true),  // WRONG_PASSWORD
    (194, true),  // REQUIRED_PASSWORD
    (195, true),  // IP_ADDRESS_NOT_ALLOWED
    (497, true),  // ACCESS_DENIED
    (516, true),  // AUTHENTICATION_FAILED
];

fn quote(name: &str) -> String {
    format!("`{name}`")
}

#[derive(Clone)]
enum Layout {
    /// The record's JSON text in one `String` column (its name).
    Json(String),
    /// Column name → JSON Pointer.
    Columns(Vec<(String, String)>),
}

pub(crate) struct ClickhouseDestination {
    client: sluice_outbound::HttpClient,
    base: url::Url,
    user: String,
    password: Option<String>,
    /// `` `db`.`table` ``
    table: String,
    id_column: String,
    layout: Layout,
    id_field: String,
    create_table: bool,
    /// Whether the server understands `insert_deduplication_token`.
    dedup_token: OnceCell<bool>,
}

pub(crate) fn build(
    spec: &ClickhouseDestinationSpec,
    ctx: &crate::BuildContext,
    id_field: &str,
) -> Result<ClickhouseDestination, Vec<Problem>> {
    let mut problems = Vec::new();
    let base = match url::Url::parse(&spec.url) {
        Ok(u) if u.scheme() != "http" && u.scheme() != "https" => {
            problems.push(Problem::new("/url", "must be an http(s) URL"));
            None
        }
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            problems.push(Problem::new(
                "/url",
                "must not carry credentials; use `user` and `password` (stored encrypted)",
            ));
            None
        }
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            problems.push(Problem::new("/url", "must not have a query or fragment"));
            None
        }
        Ok(u) => Some(u),
        Err(e) => {
            problems.push(Problem::new("/url", format!("invalid URL: {e}")));
            None
        }
    };
    let database = spec
        .database
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    if let Err(m) = check_identifier(&database) {
        problems.push(Problem::new("/database", m));
    }
    if let Err(m) = check_identifier(&spec.table) {
        problems.push(Problem::new("/table", m));
    }
    let id_column = spec.id_column.clone().unwrap_or_else(|| "id".to_owned());
    if let Err(m) = check_identifier(&id_column) {
        problems.push(Problem::new("/id_column", m));
    }
    let user = spec.user.clone().unwrap_or_else(|| "default".to_owned());
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        problems.push(Problem::new(
            "/user",
            "must be 1 to 128 printable characters",
        ));
    }
    let layout = match (&spec.column, &spec.columns) {
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                "/columns",
                "use either `column` (JSON text) or `columns` (mapped), not both",
            ));
            None
        }
        (_, Some(map)) => {
            if spec.create_table {
                problems.push(Problem::new(
                    "/create_table",
                    "only in column mode; create a mapped table yourself (ReplacingMergeTree ORDER BY the id column)",
                ));
            }
            Some(Layout::Columns(check_columns(
                map,
                &id_column,
                &mut problems,
            )))
        }
        (column, None) => {
            let column = column.clone().unwrap_or_else(|| "data".to_owned());
            if let Err(m) = check_identifier(&column) {
                problems.push(Problem::new("/column", m));
            } else if column == id_column {
                problems.push(Problem::new("/column", "must differ from `id_column`"));
            }
            Some(Layout::Json(column))
        }
    };
    let timeout_ms = spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(100..=600_000).contains(&timeout_ms) {
        problems.push(Problem::new("/timeout_ms", "must be 100 to 600000"));
    }
    let timeout = Duration::from_millis(timeout_ms);
    // The outbound client refuses non-public addresses after DNS
    // resolution unless the operator allows them (IP-literal hosts are
    // checked by `HttpClient::request` before every request).
    let client = ctx.outbound.client(sluice_outbound::ClientOptions {
        timeout,
        follow_redirects: false,
    });
    let client = match client {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(Problem::new("", format!("HTTP client: {e}")));
            None
        }
    };
    match (base, layout, client) {
        (Some(base), Some(layout), Some(client)) if problems.is_empty() => {
            Ok(ClickhouseDestination {
                client,
                base,
                user,
                password: spec.password.clone(),
                table: format!("{}.{}", quote(&database), quote(&spec.table)),
                id_column,
                layout,
                id_field: id_field.to_owned(),
                create_table: spec.create_table,
                dedup_token: OnceCell::new(),
            })
        }
        _ => Err(problems),
    }
}

/// `(major, minor)` of a `SELECT version()` answer such as `18.16.1`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut it = text.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn supports_dedup_token(version: (u32, u32)) -> bool {
    version >= (22, 2)
}

/// The exception code of an error answer.
fn exception_code(headers: &reqwest::header::HeaderMap, body: &str) -> Option<u32> {
    if let Some(code) = headers
        .get("x-clickhouse-exception-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(code);
    }
    let at = body.find("Code: ")?;
    let digits: String = body[at + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn classify(status: reqwest::StatusCode, code: Option<u32>, body: &str) -> DeliveryError {
    let known = code.and_then(|c| PERMANENT_CODES.iter().find(|(k, _)| *k == c));
    let mut message = format!("HTTP {}", status.as_u16());
    if let Some(c) = code {
        message.push_str(&format!(", code {c}"));
    }
    if let Some((_, true)) = known {
        let mut text: String = body.trim().chars().take(BODY_LIMIT).collect();
        if body.trim().chars().count() > BODY_LIMIT {
            text.push('…');
        }
        message.push_str(&format!(": {text}"));
    }
    if known.is_some() {
        return DeliveryError::permanent(message);
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        DeliveryError::transient(message)
    } else {
        DeliveryError::permanent(message)
    }
}

fn request_error(e: &reqwest::Error) -> DeliveryError {
    sluice_outbound::classify(e).into_delivery()
}

impl ClickhouseDestination {
    /// Run one statement; `data` is the rows of an INSERT.
    ///
    /// An INSERT sends its statement in the URL and its rows as the body.
    /// Any other statement is sent as the body itself: a POST without a
    /// body goes out without `Content-Length`, which ClickHouse 18.16
    /// refuses with `411 Length Required` (code 381) — and `SELECT
    /// version()` is the first thing a destination asks.
    async fn execute(
        &self,
        query: &str,
        params: &[(&str, String)],
        data: Option<Vec<u8>>,
    ) -> Result<String, DeliveryError> {
        let mut url = self.base.clone();
        {
            let mut q = url.query_pairs_mut();
            if data.is_some() {
                q.append_pair("query", query);
            }
            for (k, v) in params {
                q.append_pair(k, v);
            }
        }
        let is_insert = data.is_some();
        let body = data.unwrap_or_else(|| query.as_bytes().to_vec());
        let mut req = self
            .client
            .post(url)
            .map_err(|denied| DeliveryError::permanent(denied.to_string()))?
            .basic_auth(&self.user, self.password.as_deref())
            .body(body);
        if is_insert {
            req = req.header("content-type", "application/x-ndjson");
        }
        let resp = req.send().await.map_err(|e| request_error(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.map_err(|e| request_error(&e))?;
        if status.is_success() {
            // Old servers report some errors after a 200 has started.
            if text.contains("DB::Exception") {
                let code = exception_code(&headers, &text);
                return Err(classify(
                    reqwest::StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    &text,
                ));
            }
            Ok(text)
        } else {
            let code = exception_code(&headers, &text);
            Err(classify(status, code, &text))
        }
    }

    /// Ask the server's version once; create the table if configured.
    async fn prepare(&self) -> Result<bool, DeliveryError> {
        self.dedup_token
            .get_or_try_init(|| async {
                let version = self.execute("SELECT version()", &[], None).await?;
                let token = parse_version(&version).is_some_and(supports_dedup_token);
                if self.create_table
                    && let Layout::Json(data) = &self.layout
                {
                    let settings = if token {
                        " SETTINGS non_replicated_deduplication_window = 1000"
                    } else {
                        ""
                    };
                    let sql = format!(
                        "CREATE TABLE IF NOT EXISTS {} ({} String, {} String) ENGINE = ReplacingMergeTree() ORDER BY {}{settings}",
                        self.table,
                        quote(&self.id_column),
                        quote(data),
                        quote(&self.id_column),
                    );
                    self.execute(&sql, &[], None).await?;
                }
                Ok(token)
            })
            .await
            .copied()
    }

    fn columns(&self) -> String {
        let mut cols = vec![quote(&self.id_column)];
        match &self.layout {
            Layout::Json(data) => cols.push(quote(data)),
            Layout::Columns(map) => cols.extend(map.iter().map(|(c, _)| quote(c))),
        }
        cols.join(", ")
    }
}

/// The JSONEachRow body of a part. Runs on a blocking thread.
fn rows(
    ndjson: &[u8],
    id_field: &str,
    id_column: &str,
    layout: &Layout,
) -> Result<Vec<u8>, DeliveryError> {
    let mut out = Vec::with_capacity(ndjson.len() + ndjson.len() / 4);
    for line in ndjson.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let record: Map<String, Value> = serde_json::from_slice(line)
            .map_err(|_| DeliveryError::permanent("a line of the part is not a JSON object"))?;
        let Some(Value::String(id)) = record.get(id_field) else {
            return Err(DeliveryError::permanent(format!(
                "a record has no string `{id_field}` id"
            )));
        };
        let mut row = Map::new();
        row.insert(id_column.to_owned(), Value::String(id.clone()));
        match layout {
            Layout::Json(data) => {
                row.insert(
                    data.clone(),
                    Value::String(String::from_utf8_lossy(line).into_owned()),
                );
            }
            Layout::Columns(cols) => {
                let value = Value::Object(record);
                for (col, pointer) in cols {
                    row.insert(
                        col.clone(),
                        value.pointer(pointer).cloned().unwrap_or(Value::Null),
                    );
                }
            }
        }
        serde_json::to_writer(&mut out, &Value::Object(row))
            .map_err(|_| DeliveryError::permanent("a row could not be encoded"))?;
        out.push(b'\n');
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Destination for ClickhouseDestination {
    fn type_name(&self) -> &'static str {
        "clickhouse"
    }

    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError> {
        let ndjson = part.ndjson.clone();
        let (id_field, id_column, layout) = (
            self.id_field.clone(),
            self.id_column.clone(),
            self.layout.clone(),
        );
        let body =
            tokio::task::spawn_blocking(move || rows(&ndjson, &id_field, &id_column, &layout))
                .await
                .map_err(|_| DeliveryError::transient("encoding task failed"))??;
        let token = self.prepare().await?;
        let query = format!(
            "INSERT INTO {} ({}) FORMAT JSONEachRow",
            self.table,
            self.columns()
        );
        let mut params = Vec::new();
        if token {
            params.push(("insert_deduplicate", "1".to_owned()));
            params.push((
                "insert_deduplication_token",
                format!("{}:{}", part.batch_id, part.part),
            ));
        }
        self.execute(&query, &params, Some(body)).await.map(|_| ())
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        self.prepare().await?;
        let probe = format!("SELECT {} FROM {} WHERE 0", self.columns(), self.table);
        self.execute(&probe, &[], None).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<String> {
        let spec: ClickhouseDestinationSpec = serde_json::from_value(v).unwrap();
        match build(&spec, &crate::test_support::build_ctx(), "_sluice_id") {
            Ok(_) => vec![],
            Err(p) => p.into_iter().map(|p| p.path).collect(),
        }
    }

    #[test]
    fn config_problems_are_located() {
        assert!(problems(json!({"url": "http://127.0.0.1:8123", "table": "events"})).is_empty());
        assert_eq!(
            problems(json!({"url": "http://u:p@h:8123", "table": "ev;drop"})),
            vec!["/url", "/table"]
        );
        assert_eq!(
            problems(json!({"url": "ftp://h", "table": "t", "database": "a b",
                "columns": {"id": "/x", "ok": "y"}, "create_table": true})),
            vec![
                "/url",
                "/database",
                "/create_table",
                "/columns/id",
                "/columns/ok"
            ]
        );
    }

    #[test]
    fn versions_and_codes() {
        assert_eq!(parse_version("18.16.1\n"), Some((18, 16)));
        assert!(!supports_dedup_token((18, 16)));
        assert!(supports_dedup_token((22, 2)));
        assert!(supports_dedup_token((24, 1)));
        let headers = reqwest::header::HeaderMap::new();
        assert_eq!(
            exception_code(
                &headers,
                "Code: 60, e.displayText() = DB::Exception: Table x doesn't exist"
            ),
            Some(60)
        );
        let e = classify(
            reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            Some(60),
            "Table default.x doesn't exist",
        );
        assert_eq!(e.kind, sluice_core::FailureKind::Permanent);
        assert!(e.message.contains("doesn't exist"));
        let e = classify(
            reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            Some(117),
            "secret row data",
        );
        assert_eq!(e.kind, sluice_core::FailureKind::Permanent);
        assert!(!e.message.contains("secret"), "row data is not echoed");
        let e = classify(reqwest::StatusCode::SERVICE_UNAVAILABLE, Some(202), "busy");
        assert_eq!(e.kind, sluice_core::FailureKind::Transient);
        let e = classify(reqwest::StatusCode::BAD_REQUEST, None, "x");
        assert_eq!(e.kind, sluice_core::FailureKind::Permanent);
    }

    /// A stand-in for ClickHouse 18.16's HTTP interface: a POST without
    /// `Content-Length` (or chunked encoding) is refused with 411 and code
    /// 381; otherwise the statement is the `query` parameter followed by
    /// the body, as ClickHouse reads it.
    async fn fake_clickhouse() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;
        let seen: Seen = Default::default();
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::post(
                    |axum::extract::State(seen): axum::extract::State<Seen>,
                     axum::extract::Query(q): axum::extract::Query<
                        std::collections::HashMap<String, String>,
                    >,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        if !headers.contains_key("content-length")
                            && !headers.contains_key("transfer-encoding")
                        {
                            return (
                                StatusCode::LENGTH_REQUIRED,
                                [("x-clickhouse-exception-code", "381")],
                                "Code: 381, e.displayText() = DB::Exception: The Transfer-Encoding is not chunked and there is no Content-Length header for POST request",
                            )
                                .into_response();
                        }
                        let mut sql = q.get("query").cloned().unwrap_or_default();
                        if !sql.is_empty() {
                            sql.push(' ');
                        }
                        sql.push_str(&String::from_utf8_lossy(&body));
                        let answer = if sql.starts_with("SELECT version()") {
                            "18.16.1\n"
                        } else {
                            ""
                        };
                        seen.lock().unwrap().push(sql);
                        answer.into_response()
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    /// Regression (issue 6, `clickhouse_outage_delivers_every_record_once`):
    /// `SELECT version()` went out as a POST without a body and without
    /// `Content-Length`; ClickHouse 18.16 answered 411, a permanent error,
    /// so no part was ever written.
    #[tokio::test]
    async fn statements_without_rows_carry_a_body_with_a_length() {
        let (url, seen) = fake_clickhouse().await;
        let spec: ClickhouseDestinationSpec =
            serde_json::from_value(json!({"url": url, "table": "events", "create_table": true}))
                .unwrap();
        let mut ctx = crate::test_support::build_ctx();
        ctx.outbound = sluice_outbound::Outbound::allowing_private();
        let d = build(&spec, &ctx, "_sluice_id").ok().unwrap();
        d.healthcheck().await.unwrap();
        let part = OutputPart {
            tenant_id: uuid::Uuid::from_u128(1),
            pipeline_id: uuid::Uuid::from_u128(2),
            batch_id: uuid::Uuid::from_u128(3),
            part: 0,
            record_count: 1,
            ndjson: bytes::Bytes::from_static(b"{\"_sluice_id\":\"b:0:0\",\"a\":1}\n"),
        };
        d.write(&part).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[0], "SELECT version()");
        assert!(
            seen[1].starts_with("CREATE TABLE IF NOT EXISTS `default`.`events`"),
            "{seen:?}"
        );
        assert!(seen[2].starts_with("SELECT `id`, `data` FROM"), "{seen:?}");
        assert!(
            seen[3].starts_with(
                "INSERT INTO `default`.`events` (`id`, `data`) FORMAT JSONEachRow {\"data\":"
            ),
            "{seen:?}"
        );
    }

    #[test]
    fn rows_carry_the_id_and_the_mapped_values() {
        let nd = b"{\"_sluice_id\":\"b:0:0\",\"a\":{\"b\":1}}\n{\"_sluice_id\":\"b:1:0\"}\n";
        let out = rows(nd, "_sluice_id", "id", &Layout::Json("data".into())).unwrap();
        let lines: Vec<Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], "b:0:0");
        assert_eq!(
            lines[0]["data"],
            "{\"_sluice_id\":\"b:0:0\",\"a\":{\"b\":1}}"
        );
        let out = rows(
            nd,
            "_sluice_id",
            "id",
            &Layout::Columns(vec![("ab".into(), "/a/b".into())]),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"ab\":1,\"id\":\"b:0:0\"}\n{\"ab\":null,\"id\":\"b:1:0\"}\n"
        );
        assert!(
            rows(
                b"{\"x\":1}\n",
                "_sluice_id",
                "id",
                &Layout::Json("d".into())
            )
            .is_err()
        );
    }
}
