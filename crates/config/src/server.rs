//! The server's config: one TOML file plus `SLUICE_*` environment
//! overrides (R-OPS-2).
//!
//! Everything has a default that needs nothing else: `sluice serve` with no
//! file and no variables listens on 127.0.0.1:8080 and keeps its SQLite
//! database and payloads under `./sluice-data`. Environment variables win
//! over the file: the documented short names (`SLUICE_LISTEN`,
//! `SLUICE_DATA_DIR`, `SLUICE_DATABASE_URL`, ...) and, for any other key,
//! `SLUICE_<SECTION>__<KEY>` (`SLUICE_LIMITS__MAX_BODY_BYTES=1000`).

use crate::pipeline::decode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_core::Problem;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Environment variables that are not config keys.
const RESERVED_ENV: &[&str] = &[
    "SLUICE_CONFIG",
    "SLUICE_MASTER_KEY",
    "SLUICE_MASTER_KEY_FILE",
    "SLUICE_MASTER_KEY_PREVIOUS",
    "SLUICE_MASTER_KEY_PREVIOUS_FILE",
];
/// Short names for the most common keys.
const ENV_ALIASES: &[(&str, &[&str])] = &[
    ("SLUICE_LISTEN", &["listen"]),
    ("SLUICE_DATA_DIR", &["data_dir"]),
    ("SLUICE_DATABASE_URL", &["database_url"]),
    ("SLUICE_ROLE", &["role"]),
    ("SLUICE_STORAGE_URL", &["storage", "url"]),
    ("SLUICE_LOG_LEVEL", &["log", "level"]),
    ("SLUICE_LOG_FORMAT", &["log", "format"]),
    (
        "SLUICE_OUTBOUND_ALLOW_PRIVATE",
        &["outbound", "allow_private"],
    ),
    (
        "SLUICE_OUTBOUND_EXTRA_CA_FILE",
        &["outbound", "extra_ca_file"],
    ),
    ("SLUICE_WORKER_THREADS", &["worker", "threads"]),
    ("SLUICE_REDIS_URL", &["redis", "url"]),
];

/// Which parts of the server this process runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerRole {
    /// API and workers.
    #[default]
    All,
    /// Only the HTTP API: accepts batches, processes none.
    Api,
    /// Only workers: processes batches, serves only health and metrics.
    Worker,
}

impl ServerRole {
    pub fn runs_api(self) -> bool {
        matches!(self, ServerRole::All | ServerRole::Api)
    }
    pub fn runs_workers(self) -> bool {
        matches!(self, ServerRole::All | ServerRole::Worker)
    }
}

/// The whole server config. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds (`SLUICE_LISTEN`).
    pub listen: SocketAddr,
    /// Directory for the embedded database, payloads and file outputs
    /// (`SLUICE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: SQLite at
    /// `<data_dir>/sluice.db` (`SLUICE_DATABASE_URL`).
    pub database_url: Option<String>,
    /// Parts of the server this process runs (`SLUICE_ROLE`).
    pub role: ServerRole,
    /// Calls to webhooks, databases and enrichment providers.
    pub outbound: OutboundConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub worker: WorkerConfig,
    pub keys: KeysConfig,
    pub log: LogConfig,
    /// Seconds a SIGTERM waits for in-flight work before leases are
    /// released.
    pub shutdown_deadline_secs: u64,
    pub tls: TlsConfig,
    pub cors: CorsConfig,
    pub rate_limits: RateLimitsConfig,
    pub lockout: LockoutConfig,
    pub redis: RedisConfig,
    pub retention: RetentionConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./sluice-data"),
            database_url: None,
            role: ServerRole::All,
            outbound: OutboundConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            worker: WorkerConfig::default(),
            keys: KeysConfig::default(),
            log: LogConfig::default(),
            shutdown_deadline_secs: 30,
            tls: TlsConfig::default(),
            cors: CorsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            lockout: LockoutConfig::default(),
            redis: RedisConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

/// How long stored data is kept (R-SEC-8). A background job in every
/// worker process deletes what has expired; 0 keeps it forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days the payload of a completed or failed batch is kept after it
    /// finished (a failed batch can be retried only while it is kept).
    pub payload_days: u32,
    /// Days failed-record captures are kept.
    pub failed_record_days: u32,
    /// Days the row of a completed or failed batch is kept after it
    /// finished (its payload and captures go with it).
    pub batch_days: u32,
    /// Days files written by the `file` destination under
    /// `<data_dir>/output` are kept (by modification time).
    pub output_days: u32,
    /// Seconds between runs of the retention job.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            payload_days: 7,
            failed_record_days: 30,
            batch_days: 90,
            output_days: 30,
            interval_secs: 3600,
        }
    }
}

/// Outbound calls (destinations, enrichment providers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Let outbound calls reach private, loopback, link-local and other
    /// non-public addresses (`SLUICE_OUTBOUND_ALLOW_PRIVATE`). Off by
    /// default: a pipeline config must not be a way into the internal
    /// network (SSRF).
    pub allow_private: bool,
    /// Non-public networks that are allowed even when `allow_private` is
    /// off, as CIDRs (`10.1.2.0/24`, `fd00::/64`), e.g. an internal
    /// ClickHouse.
    pub allow_cidrs: Vec<String>,
    /// PEM file of extra CA certificates trusted for outbound TLS, on top
    /// of the built-in web PKI roots (`SLUICE_OUTBOUND_EXTRA_CA_FILE`).
    pub extra_ca_file: Option<PathBuf>,
}

/// Where batch payloads are stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Object store URL for payloads: a local directory (`file:///path`)
    /// or S3-compatible storage (`s3://bucket/prefix`, credentials from
    /// the standard `AWS_*` variables). Default: `<data_dir>/payloads`.
    pub url: Option<String>,
}

/// Limits on what clients may submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, in bytes, after decompression.
    pub max_body_bytes: u64,
    /// Largest single record, in bytes.
    pub max_record_bytes: u64,
    /// Most records in one batch.
    pub max_records: u64,
    /// Deepest nesting of arrays and objects in a record.
    pub max_depth: u32,
    /// Queued (pending or processing) payload bytes one pipeline may hold
    /// before new batches are answered 429 `QUEUE_FULL`.
    pub max_queue_bytes_per_pipeline: u64,
    /// Queued payload bytes one tenant may hold across its pipelines.
    pub max_queue_bytes_per_tenant: u64,
    /// Largest JSON body of a management request (pipelines, keys).
    pub max_config_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 30,
            max_record_bytes: 1 << 20,
            max_records: 10_000_000,
            max_depth: 64,
            max_queue_bytes_per_pipeline: 20 << 30,
            max_queue_bytes_per_tenant: 50 << 30,
            max_config_bytes: 1 << 20,
        }
    }
}

/// Batch processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Threads for record processing; 0 means one per core.
    pub threads: usize,
    /// Batches one process works on at the same time.
    pub concurrency: usize,
    /// Records per output part (and per processing chunk).
    pub part_records: usize,
    /// Seconds a claimed batch stays leased without renewal.
    pub lease_secs: u64,
    /// Milliseconds between polls when no batch is waiting.
    pub poll_interval_ms: u64,
    /// Delivery attempts before a batch is marked failed.
    pub max_attempts: u32,
    /// Delay before the first re-attempt of a batch whose delivery failed
    /// transiently; it doubles per attempt (±25% jitter).
    pub retry_initial_ms: u64,
    /// Upper bound of that delay.
    pub retry_max_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            concurrency: 8,
            part_records: 10_000,
            lease_secs: 30,
            poll_interval_ms: 200,
            max_attempts: 5,
            retry_initial_ms: 2_000,
            retry_max_secs: 600,
        }
    }
}

/// API keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Seconds a rotated key keeps working after rotation.
    pub rotation_grace_secs: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            rotation_grace_secs: 24 * 3600,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (structured, one object per line) or `text`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `sluice=debug,info`, ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

/// TLS for the HTTP listener (R-SEC-3). With a certificate and key the
/// listener speaks only TLS; both files are read again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_path: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
    /// Refuse to start unless `cert_path` and `key_path` are set.
    pub required: bool,
    /// `max-age` of the `Strict-Transport-Security` header sent over TLS.
    pub hsts_max_age_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_path: None,
            key_path: None,
            required: false,
            hsts_max_age_secs: 31_536_000,
        }
    }
}

impl TlsConfig {
    /// Whether the listener serves TLS.
    pub fn enabled(&self) -> bool {
        self.cert_path.is_some() && self.key_path.is_some()
    }
}

/// Cross-origin requests from browsers (R-SEC-4). No origin is allowed
/// unless listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins allowed to call the API (`https://app.example.com`).
    pub allowed_origins: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}

/// Request rate limits (R-SEC-5), GCRA per key and per client address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Turn every rate limit on or off.
    pub enabled: bool,
    /// Failed authentications one client address may make per minute;
    /// beyond it the answer is 429 instead of 401.
    pub auth_failures_per_min: u32,
    /// Management calls (everything but batch submission) per key and
    /// minute.
    pub management_per_min: u32,
    /// Batch body bytes per key and second (the sustained ingest rate).
    pub ingest_bytes_per_sec: u32,
    /// Body bytes a key may send at once above the sustained rate.
    pub ingest_burst_bytes: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            auth_failures_per_min: 5,
            management_per_min: 100,
            ingest_bytes_per_sec: 256 << 20,
            ingest_burst_bytes: 1 << 30,
        }
    }
}

/// Locking out client addresses that keep failing to authenticate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// Turn lockout on or off.
    pub enabled: bool,
    /// Failed authentications within `window_secs` that lock an address.
    pub max_failures: u32,
    /// Seconds over which failures are counted.
    pub window_secs: u64,
    /// Seconds a locked address is refused, even with a valid key.
    pub duration_secs: u64,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures: 5,
            window_secs: 300,
            duration_secs: 900,
        }
    }
}

/// Optional Redis that API nodes share rate-limit and lockout state in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` (`SLUICE_REDIS_URL`); unset: each node
    /// keeps its own limits in memory.
    pub url: Option<String>,
    /// Prefix of every key Sluice writes.
    pub key_prefix: String,
    /// Milliseconds to wait for Redis before a request falls back to the
    /// node's local limits.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "sluice:".into(),
            timeout_ms: 250,
        }
    }
}

/// Why the config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ServerConfig {
    /// Load from an optional TOML file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        let text = match file {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError {
                problems: vec![Problem::new(
                    "",
                    format!("cannot read {}: {e}", path.display()),
                )],
            })?),
        };
        Self::from_sources(text.as_deref(), std::env::vars())
    }

    /// Build from TOML text and environment pairs (testable core of
    /// [`ServerConfig::load`]).
    pub fn from_sources(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ServerConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut doc = match toml_text {
            None => Map::new(),
            Some(text) => match toml::from_str::<Value>(text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => Map::new(),
                Err(e) => {
                    return Err(ConfigError {
                        problems: vec![Problem::new("", format!("invalid TOML: {e}"))],
                    });
                }
            },
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SLUICE_") && !k.starts_with("SLUICE_TEST_"))
            .collect();
        env.sort();
        for (key, raw) in env {
            if RESERVED_ENV.contains(&key.as_str()) {
                continue;
            }
            let path: Vec<String> = match ENV_ALIASES.iter().find(|(k, _)| *k == key) {
                Some((_, path)) => path.iter().map(|s| (*s).to_owned()).collect(),
                None => key["SLUICE_".len()..]
                    .split("__")
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
            };
            set_path(&mut doc, &path, env_value(&raw), &key, &mut problems);
        }
        let config = decode_sections(&doc, &mut problems);
        if let Some(config) = &config {
            config.check(&mut problems);
        }
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigError { problems }),
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("sluice.db").display()
            ),
        }
    }

    /// Worker threads in effect.
    pub fn worker_threads(&self) -> usize {
        if self.worker.threads > 0 {
            self.worker.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    fn check(&self, problems: &mut Vec<Problem>) {
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            problems.push(Problem::new(
                "/database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if let Some(url) = &self.storage.url
            && !(url.starts_with("file://") || url.starts_with("s3://"))
        {
            problems.push(Problem::new(
                "/storage/url",
                "must start with file:// or s3://",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            problems.push(Problem::new("/data_dir", "must not be empty"));
        }
        let l = &self.limits;
        for (name, value) in [
            ("max_body_bytes", l.max_body_bytes),
            ("max_record_bytes", l.max_record_bytes),
            ("max_records", l.max_records),
            (
                "max_queue_bytes_per_pipeline",
                l.max_queue_bytes_per_pipeline,
            ),
            ("max_queue_bytes_per_tenant", l.max_queue_bytes_per_tenant),
            ("max_config_bytes", l.max_config_bytes),
        ] {
            if value == 0 {
                problems.push(Problem::new(format!("/limits/{name}"), "must be positive"));
            }
        }
        if l.max_depth == 0 || l.max_depth > 128 {
            problems.push(Problem::new(
                "/limits/max_depth",
                "must be between 1 and 128",
            ));
        }
        let w = &self.worker;
        if w.concurrency == 0 {
            problems.push(Problem::new("/worker/concurrency", "must be positive"));
        }
        if w.part_records == 0 {
            problems.push(Problem::new("/worker/part_records", "must be positive"));
        }
        if w.lease_secs < 2 {
            problems.push(Problem::new("/worker/lease_secs", "must be at least 2"));
        }
        if w.max_attempts == 0 {
            problems.push(Problem::new("/worker/max_attempts", "must be positive"));
        }
        if w.retry_initial_ms == 0 {
            problems.push(Problem::new("/worker/retry_initial_ms", "must be positive"));
        }
        if w.retry_max_secs == 0 {
            problems.push(Problem::new("/worker/retry_max_secs", "must be positive"));
        }
        if self.retention.interval_secs == 0 {
            problems.push(Problem::new("/retention/interval_secs", "must be positive"));
        }
        if w.poll_interval_ms == 0 {
            problems.push(Problem::new("/worker/poll_interval_ms", "must be positive"));
        }
        if self.log.level.trim().is_empty() {
            problems.push(Problem::new("/log/level", "must not be empty"));
        }
        for (i, cidr) in self.outbound.allow_cidrs.iter().enumerate() {
            if !is_cidr(cidr) {
                problems.push(Problem::new(
                    format!("/outbound/allow_cidrs/{i}"),
                    "must be an IP network such as 10.1.2.0/24 or fd00::/64",
                ));
            }
        }
        self.check_edge(problems);
    }
}

impl ServerConfig {
    /// TLS, CORS, rate limits, lockout and Redis.
    fn check_edge(&self, problems: &mut Vec<Problem>) {
        let t = &self.tls;
        if t.cert_path.is_some() != t.key_path.is_some() {
            problems.push(Problem::new(
                "/tls",
                "cert_path and key_path must be set together",
            ));
        }
        if t.required && !t.enabled() {
            problems.push(Problem::new(
                "/tls/required",
                "TLS is required but cert_path and key_path are not set",
            ));
        }
        for (i, origin) in self.cors.allowed_origins.iter().enumerate() {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && !origin.contains('*')
                && origin.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                problems.push(Problem::new(
                    format!("/cors/allowed_origins/{i}"),
                    "must be an exact origin such as https://app.example.com (no path, no wildcard)",
                ));
            }
        }
        let r = &self.rate_limits;
        for (name, value) in [
            ("auth_failures_per_min", r.auth_failures_per_min),
            ("management_per_min", r.management_per_min),
            ("ingest_bytes_per_sec", r.ingest_bytes_per_sec),
            ("ingest_burst_bytes", r.ingest_burst_bytes),
        ] {
            if value == 0 {
                problems.push(Problem::new(
                    format!("/rate_limits/{name}"),
                    "must be positive (set enabled = false to turn limits off)",
                ));
            }
        }
        let l = &self.lockout;
        for (name, value) in [
            ("max_failures", u64::from(l.max_failures)),
            ("window_secs", l.window_secs),
            ("duration_secs", l.duration_secs),
        ] {
            if value == 0 {
                problems.push(Problem::new(
                    format!("/lockout/{name}"),
                    "must be positive (set enabled = false to turn lockout off)",
                ));
            }
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            problems.push(Problem::new(
                "/redis/url",
                "must start with redis:// or rediss://",
            ));
        }
        if self.redis.timeout_ms == 0 {
            problems.push(Problem::new("/redis/timeout_ms", "must be positive"));
        }
    }
}

/// Decode each top-level section on its own so that every section's
/// problem is reported, not only the first.
/// `addr/prefix` with a prefix that fits the address family.
fn is_cidr(text: &str) -> bool {
    let Some((addr, prefix)) = text.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

fn decode_sections(doc: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<ServerConfig> {
    let defaults = match serde_json::to_value(ServerConfig::default()) {
        Ok(Value::Object(m)) => m,
        _ => return None,
    };
    let mut merged = defaults.clone();
    let before = problems.len();
    for (key, value) in doc {
        let Some(default) = defaults.get(key) else {
            problems.push(Problem::new(
                format!("/{key}"),
                format!(
                    "unknown key, expected one of: {}",
                    defaults.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
            continue;
        };
        // Sections merge over their defaults so a file may set one key.
        let value = match (default, value) {
            (Value::Object(d), Value::Object(v)) => {
                let mut m = d.clone();
                for (k, x) in v {
                    m.insert(k.clone(), x.clone());
                }
                Value::Object(m)
            }
            _ => value.clone(),
        };
        let mut one = defaults.clone();
        one.insert(key.clone(), value.clone());
        if decode::<ServerConfig>(&Value::Object(one), "", problems).is_some() {
            merged.insert(key.clone(), value);
        }
    }
    if problems.len() > before {
        return None;
    }
    decode::<ServerConfig>(&Value::Object(merged), "", problems)
}

fn set_path(
    doc: &mut Map<String, Value>,
    path: &[String],
    value: Value,
    env_key: &str,
    problems: &mut Vec<Problem>,
) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = doc;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        match entry {
            Value::Object(m) => cur = m,
            _ => {
                problems.push(Problem::new(
                    format!("/{p}"),
                    format!("{env_key} sets a key inside a value that is not a table"),
                ));
                return;
            }
        }
    }
    cur.insert(last.clone(), value);
}

/// Environment values are TOML scalars when they parse as one (`5`,
/// `true`, `"x"`), else plain strings.
fn env_value(raw: &str) -> Value {
    if let Ok(Value::Object(m)) = toml::from_str::<Value>(&format!("v = {raw}"))
        && let Some(v) = m.get("v")
        && !v.is_object()
    {
        return v.clone();
    }
    Value::String(raw.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_need_nothing() {
        let c = ServerConfig::from_sources(None, env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./sluice-data"));
        assert!(
            c.database_url()
                .starts_with("sqlite://./sluice-data/sluice.db")
        );
    }

    #[test]
    fn env_overrides_file() {
        let file = "listen = \"0.0.0.0:9000\"\n[limits]\nmax_records = 5\n";
        let c = ServerConfig::from_sources(
            Some(file),
            env(&[
                ("SLUICE_LISTEN", "127.0.0.1:7000"),
                ("SLUICE_LIMITS__MAX_DEPTH", "9"),
                ("SLUICE_DATABASE_URL", "postgres://u@h/db"),
                ("SLUICE_MASTER_KEY", "ignored-here"),
                ("SLUICE_TEST_DATABASE_URL", "ignored-too"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.limits.max_records, 5);
        assert_eq!(c.limits.max_depth, 9);
        assert_eq!(
            c.limits.max_body_bytes,
            LimitsConfig::default().max_body_bytes
        );
        assert_eq!(c.database_url(), "postgres://u@h/db");
    }

    #[test]
    fn every_problem_is_listed() {
        let file =
            "listen = \"nope\"\nbogus = 1\n[limits]\nmax_records = 0\nmax_depth = \"deep\"\n";
        let err =
            ServerConfig::from_sources(Some(file), env(&[("SLUICE_ROLE", "boss")])).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"/bogus"), "{paths:?}");
        assert!(paths.iter().any(|p| p.starts_with("/listen")), "{paths:?}");
        assert!(paths.iter().any(|p| p.starts_with("/limits")), "{paths:?}");
        assert!(paths.iter().any(|p| p.starts_with("/role")), "{paths:?}");
        assert!(err.to_string().contains("invalid configuration"));
    }

    #[test]
    fn edge_sections_are_checked() {
        let c = ServerConfig::from_sources(None, env(&[])).unwrap();
        assert!(c.rate_limits.enabled && c.lockout.enabled);
        assert_eq!(c.rate_limits.auth_failures_per_min, 5);
        assert_eq!(c.rate_limits.management_per_min, 100);
        assert!(c.cors.allowed_origins.is_empty() && !c.tls.enabled());
        let err = ServerConfig::from_sources(
            Some(
                "[tls]\nrequired = true\ncert_path = \"c.pem\"\n[cors]\nallowed_origins = [\"*\"]\n[lockout]\nmax_failures = 0\n",
            ),
            env(&[("SLUICE_REDIS_URL", "http://x")]),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/tls",
                "/tls/required",
                "/cors/allowed_origins/0",
                "/lockout/max_failures",
                "/redis/url"
            ]
        );
    }

    #[test]
    fn semantic_checks_run_after_decoding() {
        let err = ServerConfig::from_sources(
            Some("[limits]\nmax_records = 0\n[worker]\nlease_secs = 1\n"),
            env(&[("SLUICE_DATABASE_URL", "mysql://x")]),
        )
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/database_url", "/limits/max_records", "/worker/lease_secs"]
        );
    }
}
