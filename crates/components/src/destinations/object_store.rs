//! `object_store`: one object per batch part, in S3-compatible storage or
//! under the tenant's output directory, through the `object_store` crate.
//!
//! Idempotency comes from the key: it is rendered from a template whose
//! placeholders are all pure functions of the part — `{date}` is the
//! batch's acceptance date read from its UUIDv7 id, never the clock — and
//! must contain `{batch}` and `{part}`. Redelivering a part therefore
//! overwrites the same object with the same content (an S3 PUT and a
//! completed multipart upload replace the object atomically; the local
//! store writes a temporary file and renames it), so a reader never sees a
//! duplicate or a half-written object (R-DEL-1).
//!
//! Encoding (compression, Parquet) is CPU work and runs on the blocking
//! pool. Parts bigger than `multipart_threshold_bytes` go up as a
//! multipart upload in 5 MiB chunks. The crate's own retries are turned
//! off: a failed call is classified (transient or permanent) and the
//! resilience layer and the worker decide about retrying, so the timeout
//! here bounds one attempt.
//!
//! S3 needs explicit credentials in the config: a tenant never borrows
//! the server's own AWS identity (environment or instance profile).

use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use serde_json::Value;
use sluice_config::pipeline::{
    ObjectCompression, ObjectFormat, ObjectStoreBackend, ObjectStoreDestinationSpec,
};
use sluice_core::{DeliveryError, Destination, OutputPart, Problem};
use tokio::sync::OnceCell;
use uuid::Uuid;

const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// S3's smallest multipart chunk (except the last).
const MULTIPART_CHUNK: usize = 5 * 1024 * 1024;
const MAX_TEMPLATE_BYTES: usize = 512;
const MESSAGE_LIMIT: usize = 300;

/// One piece of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Tenant,
    Pipeline,
    Date,
    Batch,
    Part,
}

/// A parsed key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyTemplate(Vec<Piece>);

impl KeyTemplate {
    pub(crate) fn parse(template: &str) -> Result<Self, String> {
        if template.is_empty() || template.len() > MAX_TEMPLATE_BYTES {
            return Err(format!("must be 1 to {MAX_TEMPLATE_BYTES} bytes"));
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err("unclosed `{`".into());
            };
            pieces.push(match &after[..close] {
                "tenant" => Piece::Tenant,
                "pipeline" => Piece::Pipeline,
                "date" => Piece::Date,
                "batch" => Piece::Batch,
                "part" => Piece::Part,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}`; use {{tenant}}, {{pipeline}}, {{date}}, {{batch}}, {{part}}"
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if pieces
            .iter()
            .any(|p| matches!(p, Piece::Text(t) if t.contains('}')))
        {
            return Err("unmatched `}`".into());
        }
        if !pieces.contains(&Piece::Batch) || !pieces.contains(&Piece::Part) {
            return Err(
                "must contain {batch} and {part}, so that every part has its own key".into(),
            );
        }
        let this = KeyTemplate(pieces);
        // The rendered key must be a clean relative path.
        let sample = this.render_with(Uuid::nil(), Uuid::nil(), "1970-01-01", Uuid::nil(), 0);
        sluice_config::pipeline::check_relative_path(&sample)?;
        Path::parse(&sample).map_err(|e| format!("not a valid object key: {e}"))?;
        Ok(this)
    }

    fn render_with(
        &self,
        tenant: Uuid,
        pipeline: Uuid,
        date: &str,
        batch: Uuid,
        part: u32,
    ) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Tenant => out.push_str(&tenant.to_string()),
                Piece::Pipeline => out.push_str(&pipeline.to_string()),
                Piece::Date => out.push_str(date),
                Piece::Batch => out.push_str(&batch.to_string()),
                Piece::Part => out.push_str(&format!("{part:05}")),
            }
        }
        out
    }

    /// The key of one part. Deterministic: the date comes from the batch
    /// id (UUIDv7 timestamp), so a retry tomorrow writes the same key.
    pub(crate) fn render(&self, part: &OutputPart) -> Result<Path, DeliveryError> {
        let date = batch_date(part.batch_id)
            .ok_or_else(|| DeliveryError::permanent("the batch id carries no timestamp"))?;
        let key = self.render_with(
            part.tenant_id,
            part.pipeline_id,
            &date,
            part.batch_id,
            part.part,
        );
        Path::parse(&key).map_err(|e| DeliveryError::permanent(format!("invalid key: {e}")))
    }
}

/// `YYYY-MM-DD` (UTC) of a UUIDv7's timestamp.
fn batch_date(batch: Uuid) -> Option<String> {
    let (secs, _) = batch.get_timestamp()?.to_unix();
    let at = chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)?;
    Some(at.format("%Y-%m-%d").to_string())
}

/// Where the store comes from: S3 is built at once (no I/O), the local
/// directory on first use (it must exist before it can be opened).
enum Backend {
    Ready(Arc<dyn ObjectStore>),
    Local(PathBuf, OnceCell<Arc<dyn ObjectStore>>),
}

pub(crate) struct ObjectStoreDestination {
    backend: Backend,
    /// A custom S3 endpoint's host and port, checked against the outbound
    /// policy before every call (the store's own client resolves it).
    endpoint: Option<(sluice_outbound::Outbound, String, u16)>,
    template: KeyTemplate,
    format: ObjectFormat,
    compression: ObjectCompression,
    /// Parquet columns from the config; `None` infers them per part.
    schema: Option<SchemaRef>,
    multipart_threshold: usize,
    timeout: Duration,
}

pub(crate) fn build(
    spec: &ObjectStoreDestinationSpec,
    ctx: &crate::BuildContext,
    id_field: &str,
) -> Result<ObjectStoreDestination, Vec<Problem>> {
    let output_root = ctx.output_root.as_path();
    let mut problems = Vec::new();
    let compression = spec.compression.unwrap_or(match spec.format {
        ObjectFormat::Ndjson => ObjectCompression::Gzip,
        ObjectFormat::Parquet => ObjectCompression::Zstd,
    });
    let default_template = format!(
        "{{pipeline}}/{{date}}/{{batch}}-{{part}}{}",
        match (spec.format, compression) {
            (ObjectFormat::Ndjson, ObjectCompression::Gzip) => ".ndjson.gz",
            (ObjectFormat::Ndjson, ObjectCompression::Zstd) => ".ndjson.zst",
            (ObjectFormat::Ndjson, ObjectCompression::None) => ".ndjson",
            (ObjectFormat::Parquet, _) => ".parquet",
        }
    );
    let template =
        match KeyTemplate::parse(spec.key_template.as_deref().unwrap_or(&default_template)) {
            Ok(t) => Some(t),
            Err(message) => {
                problems.push(Problem::new("/key_template", message));
                None
            }
        };
    let schema = match (&spec.schema, spec.format) {
        (None, _) => None,
        (Some(_), ObjectFormat::Ndjson) => {
            problems.push(Problem::new("/schema", "only used with `format: parquet`"));
            None
        }
        (Some(s), ObjectFormat::Parquet) => match schema_from_json_schema(s, id_field) {
            Ok(s) => Some(Arc::new(s)),
            Err(message) => {
                problems.push(Problem::new("/schema", message));
                None
            }
        },
    };
    let threshold = spec
        .multipart_threshold_bytes
        .unwrap_or(DEFAULT_MULTIPART_THRESHOLD);
    if threshold < MULTIPART_CHUNK as u64 {
        problems.push(Problem::new(
            "/multipart_threshold_bytes",
            format!("must be at least {MULTIPART_CHUNK} (5 MiB, the smallest S3 part)"),
        ));
    }
    let timeout_ms = spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(100..=3_600_000).contains(&timeout_ms) {
        problems.push(Problem::new("/timeout_ms", "must be 100 to 3600000"));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let backend = match spec.backend {
        ObjectStoreBackend::Local => {
            for field in [
                "bucket",
                "region",
                "endpoint",
                "access_key_id",
                "secret_access_key",
            ] {
                let set = match field {
                    "bucket" => spec.bucket.is_some(),
                    "region" => spec.region.is_some(),
                    "endpoint" => spec.endpoint.is_some(),
                    "access_key_id" => spec.access_key_id.is_some(),
                    _ => spec.secret_access_key.is_some(),
                };
                if set {
                    problems.push(Problem::new(
                        format!("/{field}"),
                        "only used with `backend: s3`",
                    ));
                }
            }
            Some(Backend::Local(output_root.to_path_buf(), OnceCell::new()))
        }
        ObjectStoreBackend::S3 => s3_store(spec, timeout, &mut problems).map(Backend::Ready),
    };
    match (backend, template) {
        (Some(backend), Some(template)) if problems.is_empty() => Ok(ObjectStoreDestination {
            backend,
            endpoint: spec
                .endpoint
                .as_deref()
                .and_then(|e| url::Url::parse(e).ok())
                .and_then(|u| {
                    let port = u.port_or_known_default()?;
                    Some((ctx.outbound.clone(), u.host_str()?.to_owned(), port))
                }),
            template,
            format: spec.format,
            compression,
            schema,
            multipart_threshold: usize::try_from(threshold).unwrap_or(usize::MAX),
            timeout,
        }),
        _ => Err(problems),
    }
}

fn s3_store(
    spec: &ObjectStoreDestinationSpec,
    timeout: Duration,
    problems: &mut Vec<Problem>,
) -> Option<Arc<dyn ObjectStore>> {
    let start = problems.len();
    let bucket = spec.bucket.as_deref().unwrap_or_default();
    if bucket.is_empty() {
        problems.push(Problem::new("/bucket", "required with `backend: s3`"));
    } else if bucket.len() > 63
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        problems.push(Problem::new(
            "/bucket",
            "must be a bucket name (lowercase letters, digits, `-`, `.`; at most 63)",
        ));
    }
    match (&spec.access_key_id, &spec.secret_access_key) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {}
        (None | Some(_), _) if spec.access_key_id.as_deref().is_none_or(str::is_empty) => problems
            .push(Problem::new(
                "/access_key_id",
                "required with `backend: s3` (the server's own credentials are never used)",
            )),
        _ => problems.push(Problem::new(
            "/secret_access_key",
            "required with `backend: s3`",
        )),
    }
    if let Some(endpoint) = &spec.endpoint {
        match url::Url::parse(endpoint) {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && spec.allow_http) => {
                if !u.username().is_empty() || u.password().is_some() {
                    problems.push(Problem::new(
                        "/endpoint",
                        "must not carry credentials; use `access_key_id` and `secret_access_key`",
                    ));
                }
            }
            Ok(u) if u.scheme() == "http" => problems.push(Problem::new(
                "/endpoint",
                "plain http needs `allow_http: true`",
            )),
            Ok(_) => problems.push(Problem::new("/endpoint", "must be an http(s) URL")),
            Err(e) => problems.push(Problem::new("/endpoint", format!("invalid URL: {e}"))),
        }
    }
    if problems.len() > start {
        return None;
    }
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(spec.region.as_deref().unwrap_or("us-east-1"))
        .with_access_key_id(spec.access_key_id.as_deref().unwrap_or_default())
        .with_secret_access_key(spec.secret_access_key.as_deref().unwrap_or_default())
        .with_allow_http(spec.allow_http)
        .with_retry(RetryConfig {
            max_retries: 0,
            retry_timeout: timeout,
            ..RetryConfig::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(spec.allow_http)
                .with_timeout(timeout)
                .with_connect_timeout(timeout.min(Duration::from_secs(10))),
        );
    if let Some(endpoint) = &spec.endpoint {
        // S3-compatible services are addressed by path (`host/bucket/key`).
        builder = builder
            .with_endpoint(endpoint.trim_end_matches('/'))
            .with_virtual_hosted_style_request(false);
    }
    match builder.build() {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            problems.push(Problem::new("", format!("invalid S3 settings: {e}")));
            None
        }
    }
}

/// Parquet columns from a JSON Schema: `string`, `integer`, `number`,
/// `boolean`, `array` (with `items`) and `object` (with `properties`);
/// anything else is kept as its JSON text. Every column is nullable; the
/// record id column is added when the schema does not name it.
fn schema_from_json_schema(schema: &Value, id_field: &str) -> Result<Schema, String> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Err("must be an object schema with `properties`".into());
    };
    if props.is_empty() {
        return Err("`properties` must not be empty".into());
    }
    let mut fields = Vec::with_capacity(props.len() + 1);
    if !props.contains_key(id_field) {
        fields.push(Field::new(id_field, DataType::Utf8, true));
    }
    for (name, sub) in props {
        fields.push(Field::new(name, data_type(sub, 0)?, true));
    }
    Ok(Schema::new(fields))
}

fn data_type(schema: &Value, depth: usize) -> Result<DataType, String> {
    if depth > 16 {
        return Err("nested too deeply".into());
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(types)) => {
            let non_null: Vec<&str> = types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            match non_null.as_slice() {
                [one] => Some(*one),
                _ => None,
            }
        }
        _ => None,
    };
    Ok(match ty {
        Some("string") => DataType::Utf8,
        Some("integer") => DataType::Int64,
        Some("number") => DataType::Float64,
        Some("boolean") => DataType::Boolean,
        Some("array") => {
            let item = schema
                .get("items")
                .map(|i| data_type(i, depth + 1))
                .transpose()?
                .unwrap_or(DataType::Utf8);
            DataType::new_list(item, true)
        }
        Some("object") => match schema.get("properties").and_then(Value::as_object) {
            Some(props) if !props.is_empty() => {
                let mut fields = Vec::with_capacity(props.len());
                for (name, sub) in props {
                    fields.push(Field::new(name, data_type(sub, depth + 1)?, true));
                }
                DataType::Struct(fields.into())
            }
            _ => DataType::Utf8,
        },
        _ => DataType::Utf8,
    })
}

/// Encode a part's NDJSON as the configured object body.
fn encode(
    ndjson: &[u8],
    format: ObjectFormat,
    compression: ObjectCompression,
    schema: Option<SchemaRef>,
) -> Result<Vec<u8>, String> {
    match format {
        ObjectFormat::Ndjson => match compression {
            ObjectCompression::None => Ok(ndjson.to_vec()),
            ObjectCompression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(ndjson.len() / 4),
                    flate2::Compression::default(),
                );
                e.write_all(ndjson).map_err(|e| e.to_string())?;
                e.finish().map_err(|e| e.to_string())
            }
            ObjectCompression::Zstd => zstd::encode_all(ndjson, 3).map_err(|e| e.to_string()),
        },
        ObjectFormat::Parquet => encode_parquet(ndjson, compression, schema),
    }
}

fn encode_parquet(
    ndjson: &[u8],
    compression: ObjectCompression,
    schema: Option<SchemaRef>,
) -> Result<Vec<u8>, String> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, GzipLevel, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    let schema = match schema {
        Some(s) => s,
        None => {
            let (inferred, _) = arrow_json::reader::infer_json_schema(Cursor::new(ndjson), None)
                .map_err(|e| format!("cannot infer a Parquet schema: {e}"))?;
            Arc::new(inferred)
        }
    };
    let codec = match compression {
        ObjectCompression::None => Compression::UNCOMPRESSED,
        ObjectCompression::Gzip => Compression::GZIP(GzipLevel::default()),
        ObjectCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
    };
    let props = WriterProperties::builder().set_compression(codec).build();
    let reader = arrow_json::ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .build(Cursor::new(ndjson))
        .map_err(|e| format!("records do not fit the Parquet schema: {e}"))?;
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props))
        .map_err(|e| format!("parquet writer: {e}"))?;
    for batch in reader {
        let batch = batch.map_err(|e| format!("records do not fit the Parquet schema: {e}"))?;
        writer
            .write(&batch)
            .map_err(|e| format!("parquet writer: {e}"))?;
    }
    writer
        .into_inner()
        .map_err(|e| format!("parquet writer: {e}"))
}

/// Classify an `object_store` error. Missing buckets, refused credentials
/// and invalid keys will not heal by retrying; network trouble and server
/// errors (surfaced as `Generic`) may.
fn classify(e: &object_store::Error) -> DeliveryError {
    let mut message = format!("{e}");
    if message.len() > MESSAGE_LIMIT {
        let mut cut = MESSAGE_LIMIT;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    match e {
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            DeliveryError::transient(message)
        }
        _ => DeliveryError::permanent(message),
    }
}

impl ObjectStoreDestination {
    async fn check_reachable(&self) -> Result<(), DeliveryError> {
        match &self.endpoint {
            Some((outbound, host, port)) => {
                super::postgres::check_reachable(outbound, host, *port).await
            }
            None => Ok(()),
        }
    }

    async fn store(&self) -> Result<Arc<dyn ObjectStore>, DeliveryError> {
        match &self.backend {
            Backend::Ready(store) => Ok(store.clone()),
            Backend::Local(root, cell) => cell
                .get_or_try_init(|| async {
                    let root = root.clone();
                    tokio::task::spawn_blocking(move || {
                        std::fs::create_dir_all(&root).map_err(|e| {
                            DeliveryError::transient(format!("output directory: {}", e.kind()))
                        })?;
                        LocalFileSystem::new_with_prefix(&root)
                            .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                            .map_err(|e| classify(&e))
                    })
                    .await
                    .map_err(|_| DeliveryError::transient("task failed"))?
                })
                .await
                .cloned(),
        }
    }

    async fn upload(
        &self,
        store: &dyn ObjectStore,
        key: &Path,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        if body.len() <= self.multipart_threshold {
            store
                .put(key, PutPayload::from(body))
                .await
                .map_err(|e| classify(&e))?;
            return Ok(());
        }
        let upload = store.put_multipart(key).await.map_err(|e| classify(&e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
        for chunk in body.chunks(MULTIPART_CHUNK) {
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(classify(&e));
            }
            writer.write(chunk);
        }
        // On failure `finish` leaves an incomplete upload that is aborted
        // here; nothing is visible under the key until completion.
        match writer.finish().await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }
}

#[async_trait::async_trait]
impl Destination for ObjectStoreDestination {
    fn type_name(&self) -> &'static str {
        "object_store"
    }

    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError> {
        let key = self.template.render(part)?;
        let (format, compression, schema) = (self.format, self.compression, self.schema.clone());
        let ndjson = part.ndjson.clone();
        let body =
            tokio::task::spawn_blocking(move || encode(&ndjson, format, compression, schema))
                .await
                .map_err(|_| DeliveryError::transient("encoding task failed"))?
                .map_err(|m| DeliveryError::permanent(m.to_string()))?;
        self.check_reachable().await?;
        let store = self.store().await?;
        tokio::time::timeout(
            self.timeout,
            self.upload(store.as_ref(), &key, Bytes::from(body)),
        )
        .await
        .map_err(|_| {
            DeliveryError::transient(format!(
                "upload timed out after {} ms",
                self.timeout.as_millis()
            ))
        })?
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        self.check_reachable().await?;
        let store = self.store().await?;
        // A listing under a prefix nothing is written to: proves the
        // bucket exists and the credentials work, reads nothing.
        let probe = Path::from("_sluice_healthcheck");
        tokio::time::timeout(self.timeout, store.list_with_delimiter(Some(&probe)))
            .await
            .map_err(|_| DeliveryError::transient("healthcheck timed out"))?
            .map(|_| ())
            .map_err(|e| classify(&e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;
    use std::io::Read;
    use std::path::Path as FsPath;

    fn spec(v: Value) -> ObjectStoreDestinationSpec {
        serde_json::from_value(v).unwrap()
    }

    fn part(batch: Uuid, n: u32, lines: &[Value]) -> OutputPart {
        let mut ndjson = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut ndjson, l).unwrap();
            ndjson.push(b'\n');
        }
        OutputPart {
            tenant_id: Uuid::from_u128(1),
            pipeline_id: Uuid::from_u128(2),
            batch_id: batch,
            part: n,
            record_count: lines.len() as u64,
            ndjson: Bytes::from(ndjson),
        }
    }

    fn ctx(root: &FsPath) -> crate::BuildContext {
        crate::BuildContext {
            output_root: root.to_path_buf(),
            ..crate::test_support::build_ctx()
        }
    }

    fn problems(v: Value) -> Vec<String> {
        match build(&spec(v), &ctx(FsPath::new("/tmp/x")), "_sluice_id") {
            Ok(_) => vec![],
            Err(p) => p.into_iter().map(|p| p.path).collect(),
        }
    }

    #[test]
    fn templates_need_batch_and_part_and_known_placeholders() {
        assert!(KeyTemplate::parse("{pipeline}/{date}/{batch}-{part}.ndjson.gz").is_ok());
        assert!(KeyTemplate::parse("{batch}.json").is_err());
        assert!(KeyTemplate::parse("{batch}/{part}/{secret}").is_err());
        assert!(KeyTemplate::parse("{batch}/{part").is_err());
        assert!(KeyTemplate::parse("../{batch}/{part}").is_err());
        assert!(KeyTemplate::parse("/abs/{batch}/{part}").is_err());
        assert!(KeyTemplate::parse("a//{batch}{part}").is_err());
        assert!(KeyTemplate::parse("a}/{batch}{part}").is_err());
    }

    #[test]
    fn keys_are_deterministic_and_dated_by_the_batch_id() {
        let t = KeyTemplate::parse("{tenant}/{pipeline}/{date}/{batch}-{part}.x").unwrap();
        // 2024-01-02T03:04:05Z as a UUIDv7.
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_704_164_645, 0);
        let batch = Uuid::new_v7(ts);
        let p = part(batch, 7, &[json!({"a": 1})]);
        let key = t.render(&p).unwrap();
        assert_eq!(
            key.as_ref(),
            format!(
                "{}/{}/2024-01-02/{batch}-00007.x",
                Uuid::from_u128(1),
                Uuid::from_u128(2)
            )
        );
        assert_eq!(t.render(&p).unwrap(), key, "same part, same key");
        let err = t.render(&part(Uuid::from_u128(9), 0, &[])).unwrap_err();
        assert_eq!(err.kind, sluice_core::FailureKind::Permanent);
    }

    #[test]
    fn config_problems_are_located() {
        assert_eq!(
            problems(json!({"backend": "s3"})),
            vec!["/bucket", "/access_key_id"]
        );
        assert_eq!(
            problems(
                json!({"bucket": "b", "access_key_id": "k", "secret_access_key": "s",
                "endpoint": "http://127.0.0.1:9000"})
            ),
            vec!["/endpoint"],
            "plain http needs allow_http"
        );
        assert_eq!(
            problems(
                json!({"bucket": "b", "access_key_id": "k", "secret_access_key": "s",
                "endpoint": "http://u:p@127.0.0.1:9000", "allow_http": true})
            ),
            vec!["/endpoint"]
        );
        assert_eq!(
            problems(json!({"bucket": "B_ad", "access_key_id": "k"})),
            vec!["/bucket", "/secret_access_key"]
        );
        assert_eq!(
            problems(
                json!({"backend": "local", "bucket": "b", "key_template": "x",
                "multipart_threshold_bytes": 10, "schema": {"properties": {"a": {}}}})
            ),
            vec![
                "/key_template",
                "/schema",
                "/multipart_threshold_bytes",
                "/bucket"
            ]
        );
        assert!(
            problems(
                json!({"bucket": "b", "access_key_id": "k", "secret_access_key": "s",
            "endpoint": "http://127.0.0.1:9000", "allow_http": true, "format": "parquet",
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}})
            )
            .is_empty()
        );
    }

    fn read_all(root: &FsPath) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn local_ndjson_gzip_and_zstd_overwrite_on_redelivery() {
        let tmp = tempfile::tempdir().unwrap();
        let batch = Uuid::now_v7();
        let records = [
            json!({"_sluice_id": "a", "v": 1}),
            json!({"_sluice_id": "b", "v": 2}),
        ];
        for (compression, ext) in [
            ("gzip", "ndjson.gz"),
            ("zstd", "ndjson.zst"),
            ("none", "ndjson"),
        ] {
            let root = tmp.path().join(compression);
            let d = build(
                &spec(json!({"backend": "local", "compression": compression})),
                &ctx(&root),
                "_sluice_id",
            )
            .unwrap();
            d.healthcheck().await.unwrap();
            d.write(&part(batch, 0, &records)).await.unwrap();
            d.write(&part(batch, 1, &records[1..])).await.unwrap();
            d.write(&part(batch, 0, &records)).await.unwrap();
            let files = read_all(&root);
            assert_eq!(files.len(), 2, "{files:?}");
            let date = batch_date(batch).unwrap();
            assert_eq!(
                files[0].0,
                format!("{}/{date}/{batch}-00000.{ext}", Uuid::from_u128(2))
            );
            let text = match compression {
                "gzip" => {
                    let mut s = String::new();
                    flate2::read::GzDecoder::new(&files[0].1[..])
                        .read_to_string(&mut s)
                        .unwrap();
                    s
                }
                "zstd" => String::from_utf8(zstd::decode_all(&files[0].1[..]).unwrap()).unwrap(),
                _ => String::from_utf8(files[0].1.clone()).unwrap(),
            };
            assert_eq!(
                text,
                String::from_utf8(part(batch, 0, &records).ndjson.to_vec()).unwrap()
            );
        }
    }

    #[tokio::test]
    async fn local_parquet_inferred_and_configured_schema() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let tmp = tempfile::tempdir().unwrap();
        let batch = Uuid::now_v7();
        let records: Vec<Value> = (0..100)
            .map(|i| json!({"_sluice_id": format!("{batch}:{i}:0"), "n": i, "tags": ["x"], "u": {"k": "v"}}))
            .collect();
        for (name, extra) in [
            ("inferred", json!({})),
            (
                "configured",
                json!({"schema": {"type": "object", "properties": {
                "n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
                "u": {"type": "object", "properties": {"k": {"type": "string"}}}}}}),
            ),
        ] {
            let mut cfg = json!({"backend": "local", "format": "parquet", "key_template": "p/{batch}/{part}.parquet"});
            for (k, v) in extra.as_object().unwrap() {
                cfg[k] = v.clone();
            }
            let root = tmp.path().join(name);
            let d = build(&spec(cfg), &ctx(&root), "_sluice_id").unwrap();
            d.write(&part(batch, 3, &records)).await.unwrap();
            let files = read_all(&root);
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].0, format!("p/{batch}/00003.parquet"));
            let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(files[0].1.clone()))
                .unwrap()
                .build()
                .unwrap();
            let mut rows = 0;
            for b in reader {
                let b = b.unwrap();
                rows += b.num_rows();
                assert!(b.schema().field_with_name("_sluice_id").is_ok(), "{name}");
                assert_eq!(
                    b.schema().field_with_name("n").unwrap().data_type(),
                    &DataType::Int64
                );
            }
            assert_eq!(rows, 100, "{name}");
        }
    }

    #[tokio::test]
    async fn records_not_fitting_the_schema_fail_permanently() {
        let tmp = tempfile::tempdir().unwrap();
        let d = build(
            &spec(json!({"backend": "local", "format": "parquet",
                "schema": {"properties": {"n": {"type": "object", "properties": {"a": {"type": "integer"}}}}}})),
            &ctx(tmp.path()),
            "_sluice_id",
        )
        .unwrap();
        let err = d
            .write(&part(Uuid::now_v7(), 0, &[json!({"n": [1, 2]})]))
            .await
            .unwrap_err();
        assert_eq!(err.kind, sluice_core::FailureKind::Permanent, "{err}");
    }

    #[tokio::test]
    async fn large_parts_go_up_in_several_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let d = build(
            &spec(json!({"backend": "local", "compression": "none",
                "multipart_threshold_bytes": MULTIPART_CHUNK})),
            &ctx(tmp.path()),
            "_sluice_id",
        )
        .unwrap();
        let batch = Uuid::now_v7();
        let filler = "x".repeat(1000);
        let records: Vec<Value> = (0..13_000).map(|i| json!({"i": i, "f": filler})).collect();
        let p = part(batch, 0, &records);
        assert!(p.ndjson.len() > 2 * MULTIPART_CHUNK);
        d.write(&p).await.unwrap();
        let files = read_all(tmp.path());
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1, p.ndjson.to_vec());
    }
}
