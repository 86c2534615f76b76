//! Pipeline configuration: the JSON (or TOML) document clients send to
//! `POST /pipelines` and feed to `sluice run`.
//!
//! Every component is a variant of a closed enum tagged by `type`, so an
//! exhaustive `match` forces each new processor or destination through
//! validation. Parsing never stops at the first problem: each top-level
//! field and each processor is decoded on its own, and the pure checks run
//! on everything that decoded, so one 400 response lists every problem
//! with its JSON pointer. Checks that need an engine (compiling a JSON
//! Schema or a script, the redact options) belong to the components crate,
//! which calls [`PipelineSpec::parse`] first.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_core::Problem;
use utoipa::ToSchema;

/// Default field that carries the stable record id in every output record.
pub const DEFAULT_ID_FIELD: &str = "_sluice_id";
/// Most processors one pipeline may have.
pub const MAX_PROCESSORS: usize = 64;
const TOP_LEVEL_FIELDS: &[&str] = &[
    "name",
    "source",
    "processors",
    "destination",
    "on_error",
    "id_field",
];

/// A pipeline: where records come from, what happens to them, and where
/// they go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Human-readable name, 1 to 200 characters.
    pub name: String,
    /// Where records come from. Only `http` (batches submitted to the API).
    #[serde(default)]
    pub source: SourceSpec,
    /// Processors applied to every record, in order.
    #[serde(default)]
    pub processors: Vec<ProcessorSpec>,
    /// Where records go. Required by the server; `sluice run` writes to
    /// stdout when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<DestinationSpec>,
    /// What a failed record does to its batch.
    #[serde(default)]
    pub on_error: OnError,
    /// Top-level field that receives each output record's stable id
    /// (`{batch_id}:{index}:{n}`).
    #[serde(default = "default_id_field")]
    pub id_field: String,
}

fn default_id_field() -> String {
    DEFAULT_ID_FIELD.to_owned()
}

/// The record source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// Batches submitted with `POST /pipelines/{id}/batches`.
    #[default]
    Http,
}

/// What happens when a record fails a processor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Capture the failed record and carry on with the rest of the batch.
    #[default]
    Skip,
    /// Fail the whole batch; nothing of it is delivered.
    FailBatch,
}

/// One processor. The `type` field selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessorSpec {
    /// Check each record against a JSON Schema.
    Validate(ValidateSpec),
    /// Declarative field edits (JSON Patch names plus Sluice's own ops).
    Map(MapSpec),
    /// Keep only the records matching a condition.
    Filter(FilterSpec),
    /// Find and remove personal data and secrets.
    Redact(RedactSpec),
    /// A sandboxed JavaScript `transform(record, ctx)`.
    Script(ScriptSpec),
    /// Drop records whose key was seen within a time window.
    Dedupe(DedupeSpec),
    /// Call HTTP providers (a waterfall) and merge their validated answer.
    EnrichHttp(crate::outbound::EnrichHttpSpec),
}

impl ProcessorSpec {
    /// The `type` tag, as written in configs and failed-record captures.
    pub fn type_name(&self) -> &'static str {
        match self {
            ProcessorSpec::Validate(_) => "validate",
            ProcessorSpec::Map(_) => "map",
            ProcessorSpec::Filter(_) => "filter",
            ProcessorSpec::Redact(_) => "redact",
            ProcessorSpec::Script(_) => "script",
            ProcessorSpec::Dedupe(_) => "dedupe",
            ProcessorSpec::EnrichHttp(_) => "enrich_http",
        }
    }
}

/// JSON Schema draft used by `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum SchemaDraft {
    #[serde(rename = "7")]
    Draft7,
    #[serde(rename = "2020-12")]
    Draft202012,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateSpec {
    /// The JSON Schema every record must match.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Draft to apply; by default taken from the schema's `$schema`, else
    /// 2020-12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<SchemaDraft>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// Operations applied in order.
    pub ops: Vec<MapOp>,
    /// Script limits for `eval` ops (see docs/scripting.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<Map<String, Value>>,
}

/// One `map` operation. Paths are JSON Pointers (RFC 6901).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MapOp {
    /// Set `path` to `value`, creating the member (RFC 6902 `add`).
    Add {
        path: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    /// Remove `path`.
    Remove {
        path: String,
        /// Do nothing when the path does not exist, instead of failing.
        #[serde(default, skip_serializing_if = "is_false")]
        optional: bool,
    },
    /// Replace the existing value at `path`.
    Replace {
        path: String,
        #[schema(value_type = Object)]
        value: Value,
        #[serde(default, skip_serializing_if = "is_false")]
        optional: bool,
    },
    /// Move `from` to `path` (also spelled `rename`).
    #[serde(alias = "rename")]
    Move {
        from: String,
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        optional: bool,
    },
    /// Copy `from` to `path`.
    Copy {
        from: String,
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        optional: bool,
    },
    /// Fail the record unless `path` equals `value`.
    Test {
        path: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    /// Set `path` to `value`, creating missing parent objects.
    Set {
        path: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    /// Upper-case the string at `path`.
    Upper {
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        optional: bool,
    },
    /// Lower-case the string at `path`.
    Lower {
        path: String,
        #[serde(default, skip_serializing_if = "is_false")]
        optional: bool,
    },
    /// Convert the value at `path` to another JSON type.
    Cast {
        path: String,
        to: CastType,
        #[serde(default, skip_serializing_if = "is_false")]
        optional: bool,
    },
    /// Set `path` to `value` when it is missing or null.
    Default {
        path: String,
        #[schema(value_type = Object)]
        value: Value,
    },
    /// Set `path` (creating parents) to the value of a JavaScript
    /// expression over `record` (alias `r`), run in the script sandbox.
    Eval { path: String, expression: String },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Target type of a `cast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CastType {
    String,
    Integer,
    Number,
    Boolean,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Declarative condition; records that match are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// A JavaScript expression over `record` (alias `r`); records for which
    /// it is truthy are kept. Exactly one of `condition` and `expression`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// Script limits for `expression` (see docs/scripting.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<Map<String, Value>>,
}

/// A filter condition: a comparison, or `and` / `or` / `not` of conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Condition {
    And {
        and: Vec<Condition>,
    },
    Or {
        or: Vec<Condition>,
    },
    Not {
        #[schema(no_recursion)]
        not: Box<Condition>,
    },
    Compare {
        /// JSON Pointer of the field to test.
        path: String,
        op: CompareOp,
        /// Operand; required except for `exists` (default `true`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        value: Option<Value>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Exists,
    Regex,
}

/// Options of the `redact` processor, validated by the PII engine (see
/// docs/redaction.md). `{}` applies the default detectors with `mask`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RedactSpec {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub options: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptSpec {
    /// JavaScript source defining `function transform(record, ctx)`.
    pub source: String,
    /// Limits (see docs/scripting.md); safe defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeSpec {
    /// JSON Pointers whose values together form the dedupe key.
    pub key: Vec<String>,
    /// How long a key is remembered, in seconds.
    pub window_secs: u64,
    /// Most keys remembered per pipeline (oldest forgotten first).
    #[serde(default = "default_dedupe_capacity")]
    pub max_keys: usize,
}

fn default_dedupe_capacity() -> usize {
    1_000_000
}

/// Where processed records are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DestinationSpec {
    /// NDJSON files under the server's data directory.
    File(FileDestinationSpec),
    /// Objects (NDJSON or Parquet) in S3-compatible storage or under the
    /// server's data directory.
    ObjectStore(ObjectStoreDestinationSpec),
    /// Rows of a PostgreSQL table, upserted on the record id.
    Postgres(PostgresDestinationSpec),
    /// Rows of a ClickHouse ReplacingMergeTree table, over HTTP.
    Clickhouse(ClickhouseDestinationSpec),
    /// Signed HTTPS POSTs of record chunks.
    Webhook(crate::outbound::WebhookDestinationSpec),
}

impl DestinationSpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            DestinationSpec::File(_) => "file",
            DestinationSpec::ObjectStore(_) => "object_store",
            DestinationSpec::Postgres(_) => "postgres",
            DestinationSpec::Clickhouse(_) => "clickhouse",
            DestinationSpec::Webhook(_) => "webhook",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDestinationSpec {
    /// Path relative to `<data_dir>/output/<tenant_id>/`. Each batch part
    /// is written to its own file, named by inserting
    /// `-<batch_id>-<part>` before the extension
    /// (`events/web.ndjson` → `events/web-<batch>-00000.ndjson`), so a
    /// redelivered part overwrites itself instead of duplicating.
    pub path: String,
}

/// Where an `object_store` destination keeps its objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectStoreBackend {
    /// An S3-compatible service (`bucket`, `region`, `endpoint`, keys).
    #[default]
    S3,
    /// The server's data directory (`<data_dir>/output/<tenant_id>/`).
    Local,
}

/// File format of the objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectFormat {
    /// One JSON object per line.
    #[default]
    Ndjson,
    /// Apache Parquet, one row group per part.
    Parquet,
}

/// Compression of the objects (whole-object for NDJSON, per column for
/// Parquet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectCompression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreDestinationSpec {
    /// `s3` (default) or `local`.
    #[serde(default)]
    pub backend: ObjectStoreBackend,
    /// Bucket name (`s3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Region (`s3`); default `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible service (`s3`); default AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Access key id (`s3`); without it the standard AWS environment and
    /// instance credentials are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key (`s3`), stored encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint (local test servers).
    #[serde(default)]
    pub allow_http: bool,
    /// Object key template. Placeholders: `{tenant}`, `{pipeline}` (the
    /// pipeline id), `{date}` (the batch's acceptance date, `YYYY-MM-DD`
    /// UTC), `{batch}`, `{part}` (5 digits); `{batch}` and `{part}` are
    /// required so every part has its own key. Default
    /// `{pipeline}/{date}/{batch}-{part}.ndjson.gz` (the extension follows
    /// `format` and `compression`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_template: Option<String>,
    /// `ndjson` (default) or `parquet`.
    #[serde(default)]
    pub format: ObjectFormat,
    /// `gzip` (default for NDJSON), `zstd` (default for Parquet) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<ObjectCompression>,
    /// Parquet only: a JSON Schema (`type: object` with `properties`)
    /// giving the columns; without it the schema is inferred per part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Objects larger than this are sent as a multipart upload; default
    /// 8 MiB, at least 5 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart_threshold_bytes: Option<u64>,
    /// Timeout of one object upload in milliseconds; default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries of a part within one attempt (R-DEL-2).
    #[serde(default)]
    pub retry: crate::outbound::RetrySpec,
    /// This destination's circuit breaker (R-DEL-2).
    #[serde(default)]
    pub breaker: crate::outbound::BreakerSpec,
}

/// What an insert does with a row whose id is already in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Keep the existing row (`ON CONFLICT (id) DO NOTHING`).
    #[default]
    Nothing,
    /// Replace it with the new values (`DO UPDATE`).
    Update,
}

/// TLS towards PostgreSQL (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresSslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresDestinationSpec {
    /// `postgres://user@host:port/database`, without a password.
    pub url: String,
    /// The password, stored encrypted (never inside `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Target table, `table` or `schema.table`.
    pub table: String,
    /// Column holding the record id (the primary key); default `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// JSONB mode: the `jsonb` column receiving the whole record; default
    /// `data` when `columns` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Mapped mode: column name → JSON Pointer into the record. Values are
    /// converted to the column types by PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<std::collections::BTreeMap<String, String>>,
    /// `nothing` (default) or `update`.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// Rows per transaction; default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_records: Option<usize>,
    /// Create the table when it does not exist (mapped columns as `jsonb`).
    #[serde(default)]
    pub create_table: bool,
    /// `disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`.
    #[serde(default)]
    pub sslmode: PostgresSslMode,
    /// Connections in this destination's pool; default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Timeout of one part's write in milliseconds; default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries of a part within one attempt (R-DEL-2).
    #[serde(default)]
    pub retry: crate::outbound::RetrySpec,
    /// This destination's circuit breaker (R-DEL-2).
    #[serde(default)]
    pub breaker: crate::outbound::BreakerSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickhouseDestinationSpec {
    /// Base URL of the HTTP interface, `http(s)://host:8123`.
    pub url: String,
    /// Database; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Target table (a ReplacingMergeTree ordered by the id column).
    pub table: String,
    /// User; default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password, stored encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Column holding the record id; default `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// Column mode: the `String` column receiving the record as JSON text;
    /// default `data` when `columns` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Mapped mode: column name → JSON Pointer into the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<std::collections::BTreeMap<String, String>>,
    /// Create the table (column mode only) when it does not exist.
    #[serde(default)]
    pub create_table: bool,
    /// Timeout of one insert in milliseconds; default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries of a part within one attempt (R-DEL-2).
    #[serde(default)]
    pub retry: crate::outbound::RetrySpec,
    /// This destination's circuit breaker (R-DEL-2).
    #[serde(default)]
    pub breaker: crate::outbound::BreakerSpec,
}

impl PipelineSpec {
    /// Decode and check a pipeline document, collecting every problem.
    pub fn parse(doc: &Value) -> Result<PipelineSpec, Vec<Problem>> {
        let mut problems = Vec::new();
        let Some(obj) = doc.as_object() else {
            return Err(vec![Problem::new(
                "",
                "pipeline config must be a JSON object",
            )]);
        };
        for key in obj.keys() {
            if !TOP_LEVEL_FIELDS.contains(&key.as_str()) {
                problems.push(Problem::new(
                    format!("/{}", sluice_core::pointer_token(key)),
                    format!(
                        "unknown field, expected one of: {}",
                        TOP_LEVEL_FIELDS.join(", ")
                    ),
                ));
            }
        }
        let name: Option<String> = required(obj, "name", &mut problems);
        let source: Option<SourceSpec> = optional(obj, "source", &mut problems);
        let on_error: Option<OnError> = optional(obj, "on_error", &mut problems);
        let id_field: Option<String> = optional(obj, "id_field", &mut problems);
        let destination: Option<DestinationSpec> = optional(obj, "destination", &mut problems);
        let mut processors = Vec::new();
        match obj.get("processors") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > MAX_PROCESSORS {
                    problems.push(Problem::new(
                        "/processors",
                        format!("at most {MAX_PROCESSORS} processors"),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    let at = format!("/processors/{i}");
                    if let Some(p) = decode::<ProcessorSpec>(item, &at, &mut problems) {
                        p.check(&at, &mut problems);
                        processors.push(p);
                    }
                }
            }
            Some(_) => problems.push(Problem::new("/processors", "must be an array")),
        }

        let spec = PipelineSpec {
            name: name.unwrap_or_default(),
            source: source.unwrap_or_default(),
            processors,
            destination,
            on_error: on_error.unwrap_or_default(),
            id_field: id_field.unwrap_or_else(default_id_field),
        };
        // Pure checks on whatever decoded (processors were checked above,
        // at their own index); decoding problems cover the rest.
        spec.check_top_level(&mut problems);
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(problems)
        }
    }

    /// Parse a pipeline file for `sluice run`: JSON, or TOML when the path
    /// ends in `.toml`.
    pub fn parse_file_text(text: &str, is_toml: bool) -> Result<PipelineSpec, Vec<Problem>> {
        let doc: Value = if is_toml {
            toml::from_str(text)
                .map_err(|e| vec![Problem::new("", format!("invalid TOML: {e}"))])?
        } else {
            serde_json::from_str(text)
                .map_err(|e| vec![Problem::new("", format!("invalid JSON: {e}"))])?
        };
        PipelineSpec::parse(&doc)
    }

    /// Pure semantic checks of a spec built in code rather than parsed.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        self.check_top_level(&mut problems);
        for (i, p) in self.processors.iter().enumerate() {
            p.check(&format!("/processors/{i}"), &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn check_top_level(&self, problems: &mut Vec<Problem>) {
        let name = self.name.trim();
        if name.is_empty() {
            // A missing name is reported by decoding; only flag a blank one.
            if !problems.iter().any(|p| p.path == "/name") {
                problems.push(Problem::new("/name", "must not be empty"));
            }
        } else if self.name.chars().count() > 200 {
            problems.push(Problem::new("/name", "must be at most 200 characters"));
        }
        if self.id_field.is_empty() || self.id_field.len() > 128 {
            problems.push(Problem::new("/id_field", "must be 1 to 128 characters"));
        }
        if let Some(dest) = &self.destination {
            dest.check("/destination", problems);
        }
    }
}

impl ProcessorSpec {
    fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        match self {
            ProcessorSpec::Validate(v) => {
                if !(v.schema.is_object() || v.schema.is_boolean()) {
                    problems.push(Problem::new(
                        format!("{at}/schema"),
                        "must be a JSON Schema (an object or a boolean)",
                    ));
                }
            }
            ProcessorSpec::Map(m) => {
                if m.ops.is_empty() {
                    problems.push(Problem::new(format!("{at}/ops"), "must not be empty"));
                }
                for (j, op) in m.ops.iter().enumerate() {
                    op.check(&format!("{at}/ops/{j}"), problems);
                }
            }
            ProcessorSpec::Filter(f) => match (&f.condition, &f.expression) {
                (Some(c), None) => c.check(&format!("{at}/condition"), problems),
                (None, Some(e)) => {
                    if e.trim().is_empty() {
                        problems.push(Problem::new(
                            format!("{at}/expression"),
                            "must not be empty",
                        ));
                    }
                }
                _ => problems.push(Problem::new(
                    at.to_owned(),
                    "exactly one of `condition` and `expression` is required",
                )),
            },
            ProcessorSpec::Redact(_) => {}
            ProcessorSpec::EnrichHttp(e) => e.check(at, problems),
            ProcessorSpec::Script(s) => {
                if s.source.trim().is_empty() {
                    problems.push(Problem::new(format!("{at}/source"), "must not be empty"));
                }
                if s.source.len() > 256 * 1024 {
                    problems.push(Problem::new(
                        format!("{at}/source"),
                        "must be at most 256 KiB",
                    ));
                }
            }
            ProcessorSpec::Dedupe(d) => {
                if d.key.is_empty() {
                    problems.push(Problem::new(format!("{at}/key"), "must not be empty"));
                }
                for (j, k) in d.key.iter().enumerate() {
                    check_pointer(k, &format!("{at}/key/{j}"), problems);
                }
                if d.window_secs == 0 {
                    problems.push(Problem::new(
                        format!("{at}/window_secs"),
                        "must be positive",
                    ));
                }
                if d.max_keys == 0 {
                    problems.push(Problem::new(format!("{at}/max_keys"), "must be positive"));
                }
            }
        }
    }
}

impl MapOp {
    fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        let path_at = format!("{at}/path");
        match self {
            MapOp::Move { from, path, .. } | MapOp::Copy { from, path, .. } => {
                check_pointer(from, &format!("{at}/from"), problems);
                check_target_pointer(path, &path_at, problems);
                if matches!(self, MapOp::Move { .. })
                    && path.starts_with(from.as_str())
                    && path[from.len()..].starts_with('/')
                {
                    problems.push(Problem::new(
                        path_at,
                        "cannot move a value into its own child",
                    ));
                }
            }
            MapOp::Add { path, .. } | MapOp::Set { path, .. } | MapOp::Default { path, .. } => {
                check_target_pointer(path, &path_at, problems)
            }
            MapOp::Eval { path, expression } => {
                check_target_pointer(path, &path_at, problems);
                if expression.trim().is_empty() {
                    problems.push(Problem::new(
                        format!("{at}/expression"),
                        "must not be empty",
                    ));
                }
            }
            MapOp::Remove { path, .. } => check_target_pointer(path, &path_at, problems),
            MapOp::Replace { path, .. }
            | MapOp::Test { path, .. }
            | MapOp::Upper { path, .. }
            | MapOp::Lower { path, .. }
            | MapOp::Cast { path, .. } => check_pointer(path, &path_at, problems),
        }
    }
}

impl Condition {
    fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        match self {
            Condition::And { and } => {
                if and.is_empty() {
                    problems.push(Problem::new(format!("{at}/and"), "must not be empty"));
                }
                for (i, c) in and.iter().enumerate() {
                    c.check(&format!("{at}/and/{i}"), problems);
                }
            }
            Condition::Or { or } => {
                if or.is_empty() {
                    problems.push(Problem::new(format!("{at}/or"), "must not be empty"));
                }
                for (i, c) in or.iter().enumerate() {
                    c.check(&format!("{at}/or/{i}"), problems);
                }
            }
            Condition::Not { not } => not.check(&format!("{at}/not"), problems),
            Condition::Compare { path, op, value } => {
                check_pointer(path, &format!("{at}/path"), problems);
                let value_at = format!("{at}/value");
                match (op, value) {
                    (CompareOp::Exists, None | Some(Value::Bool(_))) => {}
                    (CompareOp::Exists, Some(_)) => {
                        problems.push(Problem::new(value_at, "`exists` takes true or false"))
                    }
                    (_, None) => problems.push(Problem::new(value_at, "required for this op")),
                    (CompareOp::In, Some(Value::Array(_))) => {}
                    (CompareOp::In, Some(_)) => {
                        problems.push(Problem::new(value_at, "`in` takes an array"))
                    }
                    (CompareOp::Regex, Some(Value::String(re))) => {
                        if let Err(e) = regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
                            problems.push(Problem::new(value_at, format!("invalid regex: {e}")));
                        }
                    }
                    (CompareOp::Regex, Some(_)) => {
                        problems.push(Problem::new(value_at, "`regex` takes a string"))
                    }
                    (CompareOp::Lt | CompareOp::Lte | CompareOp::Gt | CompareOp::Gte, Some(v))
                        if !(v.is_number() || v.is_string()) =>
                    {
                        problems.push(Problem::new(
                            value_at,
                            "ordering compares numbers or strings",
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
}

impl DestinationSpec {
    fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        match self {
            DestinationSpec::File(f) => {
                if let Err(message) = check_relative_path(&f.path) {
                    problems.push(Problem::new(format!("{at}/path"), message));
                }
            }
            // The rest (templates, identifiers, URLs) is checked by their
            // builders in sluice-components, which `validate_pipeline` runs.
            DestinationSpec::ObjectStore(d) => {
                d.retry.check(&format!("{at}/retry"), problems);
                d.breaker.check(&format!("{at}/breaker"), problems);
            }
            DestinationSpec::Postgres(d) => {
                d.retry.check(&format!("{at}/retry"), problems);
                d.breaker.check(&format!("{at}/breaker"), problems);
            }
            DestinationSpec::Clickhouse(d) => {
                d.retry.check(&format!("{at}/retry"), problems);
                d.breaker.check(&format!("{at}/breaker"), problems);
            }
            DestinationSpec::Webhook(w) => w.check(at, problems),
        }
    }
}

/// A relative path that cannot escape the directory it is joined to.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.len() > 1024 {
        return Err("must be at most 1024 bytes".into());
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("must not contain NUL or backslash".into());
    }
    if path.starts_with('/') {
        return Err("must be relative to the data directory".into());
    }
    if path.ends_with('/') {
        return Err("must name a file, not a directory".into());
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("must not contain empty, `.` or `..` segments".into());
        }
    }
    Ok(())
}

fn check_pointer(pointer: &str, at: &str, problems: &mut Vec<Problem>) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        problems.push(Problem::new(at, "must be a JSON Pointer starting with `/`"));
        return;
    }
    // `~` must be followed by 0 or 1 (RFC 6901).
    let bytes = pointer.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            problems.push(Problem::new(at, "invalid `~` escape in JSON Pointer"));
            return;
        }
    }
}

fn check_target_pointer(pointer: &str, at: &str, problems: &mut Vec<Problem>) {
    if pointer.is_empty() {
        problems.push(Problem::new(at, "cannot replace the whole record"));
    } else {
        check_pointer(pointer, at, problems);
    }
}

pub(crate) fn decode<T: DeserializeOwned>(
    value: &Value,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = path_to_pointer(e.path());
            problems.push(Problem::new(
                format!("{at}{inner}"),
                clean_serde_message(&e.inner().to_string()),
            ));
            None
        }
    }
}

fn required<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match obj.get(key) {
        None => {
            problems.push(Problem::new(format!("/{key}"), "required"));
            None
        }
        Some(v) => decode(v, &format!("/{key}"), problems),
    }
}

fn optional<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => decode(v, &format!("/{key}"), problems),
    }
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                out.push('/');
                out.push_str(&index.to_string());
            }
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&sluice_core::pointer_token(key));
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// serde's messages mention Rust type names in places ("struct X"); keep
/// them but strip the noisy "at line 1 column 2" suffix of value decoding.
fn clean_serde_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn appendix_a_example_parses() {
        let doc = json!({
          "name": "web-events",
          "source": {"type": "http"},
          "processors": [
            {"type": "validate", "schema": {"type": "object", "required": ["id"]}},
            {"type": "map", "ops": [
              {"op": "remove", "path": "/debug"},
              {"op": "add", "path": "/pipeline", "value": "web"},
              {"op": "move", "from": "/level", "path": "/severity"},
              {"op": "upper", "path": "/service"}
            ]},
            {"type": "redact"},
            {"type": "script", "source": "function transform(r, ctx) { return r; }"}
          ],
          "destination": {"type": "file", "path": "events/web.ndjson"},
          "on_error": "skip"
        });
        let spec = PipelineSpec::parse(&doc).unwrap();
        assert_eq!(spec.processors.len(), 4);
        assert_eq!(
            spec.processors[2],
            ProcessorSpec::Redact(RedactSpec::default())
        );
        assert_eq!(spec.id_field, "_sluice_id");
        // Round trip through serde keeps the document meaning.
        let again = PipelineSpec::parse(&serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn every_problem_is_reported_with_its_pointer() {
        let doc = json!({
          "name": "",
          "bogus": 1,
          "processors": [
            {"type": "map", "ops": [{"op": "upper", "path": "service"}]},
            {"type": "nope"},
            {"type": "validate", "schema": 3},
            {"type": "filter", "condition": {"path": "/a", "op": "regex", "value": "("}},
            {"type": "map", "ops": [{"op": "remove", "path": "/x", "extra": true}]}
          ],
          "destination": {"type": "file", "path": "../../etc/passwd"},
          "on_error": "explode"
        });
        let problems = PipelineSpec::parse(&doc).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "/bogus",
            "/name",
            "/on_error",
            "/processors/0/ops/0/path",
            "/processors/1",
            "/processors/2/schema",
            "/processors/3/condition/value",
            "/processors/4",
            "/destination/path",
        ] {
            assert!(
                paths.iter().any(|p| p.starts_with(expected)),
                "missing {expected} in {paths:?}"
            );
        }
        let unknown = problems.iter().find(|p| p.path == "/processors/4").unwrap();
        assert!(unknown.message.contains("extra"), "{}", unknown.message);
    }

    #[test]
    fn paths_cannot_escape() {
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "dir/"] {
            assert!(check_relative_path(bad).is_err(), "{bad}");
        }
        for good in ["a.ndjson", "events/web.ndjson", "a/b/c..d.ndjson"] {
            assert!(check_relative_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn toml_pipelines_parse_like_json() {
        let text = r#"
name = "t"
[[processors]]
type = "map"
ops = [{ op = "upper", path = "/service" }]
"#;
        let spec = PipelineSpec::parse_file_text(text, true).unwrap();
        assert!(spec.destination.is_none());
        assert_eq!(spec.processors[0].type_name(), "map");
    }

    #[test]
    fn rename_is_an_alias_of_move() {
        let op: MapOp =
            serde_json::from_value(json!({"op": "rename", "from": "/a", "path": "/b"})).unwrap();
        assert!(matches!(op, MapOp::Move { .. }));
    }

    #[test]
    fn filter_needs_exactly_one_of_condition_or_expression() {
        let doc = json!({"name": "x", "processors": [{"type": "filter"}]});
        let problems = PipelineSpec::parse(&doc).unwrap_err();
        assert_eq!(problems[0].path, "/processors/0");
    }
}
