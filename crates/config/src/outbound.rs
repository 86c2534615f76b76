//! Config of the components that call other services over HTTP: the
//! `webhook` destination, the `enrich_http` processor, and the `retry` and
//! `breaker` blocks every destination and enrichment provider accepts
//! (R-DEL-2).
//!
//! Only pure checks live here (shapes, ranges, URL syntax). Whether an
//! address may be reached is decided at call time, after DNS resolution,
//! by `sluice-outbound`, because it depends on the server's
//! `outbound.allow_private` setting and on what the name resolves to then.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::Problem;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Retries of one external call (R-DEL-2): exponential backoff with
/// jitter, only for transient failures (timeouts, connection errors, 429,
/// 5xx). A `Retry-After` answer is honoured up to `max_backoff_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// Delay before the first retry, in milliseconds; doubles each time.
    pub initial_backoff_ms: u64,
    /// Longest delay between two attempts, in milliseconds (also the cap
    /// on `Retry-After`).
    pub max_backoff_ms: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
        }
    }
}

impl RetrySpec {
    pub(crate) fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        if self.max_retries > 20 {
            problems.push(Problem::new(format!("{at}/max_retries"), "at most 20"));
        }
        if self.initial_backoff_ms == 0 {
            problems.push(Problem::new(
                format!("{at}/initial_backoff_ms"),
                "must be positive",
            ));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            problems.push(Problem::new(
                format!("{at}/max_backoff_ms"),
                "must be at least initial_backoff_ms",
            ));
        }
        if self.max_backoff_ms > 600_000 {
            problems.push(Problem::new(
                format!("{at}/max_backoff_ms"),
                "at most 600000 (10 minutes)",
            ));
        }
    }
}

/// The circuit breaker of one target (R-DEL-2): over a sliding window of
/// the last `window` calls, `failures` transient failures open it; while
/// open, calls fail at once without reaching the target; after
/// `cooldown_secs` one probe call is let through (half-open), and its
/// outcome closes or re-opens the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Calls in the sliding window.
    pub window: u32,
    /// Transient failures within the window that open the breaker.
    pub failures: u32,
    /// Seconds the breaker stays open before a half-open probe.
    pub cooldown_secs: u64,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            window: 10,
            failures: 5,
            cooldown_secs: 60,
        }
    }
}

impl BreakerSpec {
    pub(crate) fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        if self.window == 0 || self.window > 1000 {
            problems.push(Problem::new(format!("{at}/window"), "must be 1 to 1000"));
        }
        if self.failures == 0 || self.failures > self.window {
            problems.push(Problem::new(
                format!("{at}/failures"),
                "must be 1 to `window`",
            ));
        }
        if self.cooldown_secs == 0 || self.cooldown_secs > 86_400 {
            problems.push(Problem::new(
                format!("{at}/cooldown_secs"),
                "must be 1 to 86400",
            ));
        }
    }
}

/// The `webhook` destination: HTTPS POST of record chunks, signed with
/// HMAC-SHA256 (see docs/webhooks.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDestinationSpec {
    /// Receiver URL. `https://` unless `allow_http` is set; no user or
    /// password inside it.
    pub url: String,
    /// Signing secret (at least 16 characters). Encrypted at rest.
    pub secret: String,
    /// The previous secret during a rotation: requests carry one `v1=`
    /// signature per secret, so receivers may verify either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    /// Records per request; a part with more records is sent in several
    /// chunks (`Idempotency-Key: <batch>:<part>:<chunk>`).
    #[serde(default = "default_chunk_records")]
    pub chunk_records: usize,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Allow a plain `http://` URL (local development and tests only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_http: bool,
    /// Retries of a failed request.
    #[serde(default)]
    pub retry: RetrySpec,
    /// The destination's circuit breaker.
    #[serde(default)]
    pub breaker: BreakerSpec,
}

fn default_chunk_records() -> usize {
    500
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl WebhookDestinationSpec {
    pub(crate) fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        check_url(
            &self.url,
            self.allow_http,
            &format!("{at}/url"),
            problems,
            "allow_http",
        );
        if self.secret.chars().count() < 16 {
            problems.push(Problem::new(
                format!("{at}/secret"),
                "must be at least 16 characters",
            ));
        }
        if let Some(previous) = &self.previous_secret
            && previous.chars().count() < 16
        {
            problems.push(Problem::new(
                format!("{at}/previous_secret"),
                "must be at least 16 characters",
            ));
        }
        if self.chunk_records == 0 || self.chunk_records > 100_000 {
            problems.push(Problem::new(
                format!("{at}/chunk_records"),
                "must be 1 to 100000",
            ));
        }
        check_timeout(self.timeout_ms, &format!("{at}/timeout_ms"), problems);
        self.retry.check(&format!("{at}/retry"), problems);
        self.breaker.check(&format!("{at}/breaker"), problems);
    }
}

/// The `enrich_http` processor: call providers in order (a waterfall)
/// until one answers with a result that matches `schema`, and merge it
/// into the record at `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichHttpSpec {
    /// Providers, tried in order.
    pub providers: Vec<ProviderSpec>,
    /// JSON Pointer where the result is written (parents are created).
    pub target: String,
    /// JSON Schema a provider's result must match to be used; a result
    /// that does not match counts as that provider failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Cache of results, keyed by the rendered request.
    #[serde(default)]
    pub cache: CacheSpec,
    /// Most provider calls in flight at once for this processor, across
    /// every thread processing parts.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    8
}

/// LRU cache with a time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSpec {
    /// Most cached results (0 disables the cache).
    pub max_entries: usize,
    /// Seconds a cached result stays valid.
    pub ttl_secs: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            ttl_secs: 3600,
        }
    }
}

/// Ready-made request shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderPreset {
    /// An OpenAI-compatible `POST {base_url}/chat/completions`; the
    /// result is `choices[0].message.content` parsed as JSON.
    OpenaiChat,
}

/// HTTP method of a provider request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
}

/// One enrichment provider. Templates (`url`, string values in `body`,
/// `prompt`) take `{/pointer}` placeholders filled from the record: inside
/// a longer string the value is inserted as text (URL-encoded in `url`); a
/// `body` string that is exactly one placeholder is replaced by the JSON
/// value itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Unique name within the processor (metrics, breaker, errors).
    pub name: String,
    /// A ready-made request shape; without it, `url` (and `body`) describe
    /// the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ProviderPreset>,
    /// Request URL template (plain providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// API base URL (`openai_chat`), e.g. `https://api.openai.com/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Method; default `POST` when there is a body, else `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// JSON body template (plain providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
    /// Model name (`openai_chat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// User prompt template (`openai_chat`); ask for JSON only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// JSON Pointer of the result inside the response (plain providers;
    /// default: the whole response). In chunk mode, inside each item of
    /// the answer's array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_pointer: Option<String>,
    /// Chunk mode, for providers that take arrays: one request carries the
    /// rendered `body` of up to `max_records` records as a JSON array, and
    /// the answer must be an array of as many results, in the same order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<ProviderBatchSpec>,
    /// Sent as `Authorization: Bearer <api_key>`. Encrypted at rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Extra request headers. Values are encrypted at rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Allow a plain `http://` URL (local development and tests only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_http: bool,
    /// Timeout of one request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of a failed request.
    #[serde(default = "provider_retry")]
    pub retry: RetrySpec,
    /// The provider's circuit breaker.
    #[serde(default)]
    pub breaker: BreakerSpec,
}

/// Chunk mode of a provider (see [`ProviderSpec::batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderBatchSpec {
    /// Most records per request (1 to 1000).
    pub max_records: usize,
    /// JSON Pointer of the results array inside the answer (default: the
    /// answer itself is the array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_pointer: Option<String>,
}

/// Most records one chunked provider request may carry.
pub const MAX_BATCH_RECORDS: usize = 1000;

/// Providers sit on the record path: fewer, shorter retries by default,
/// then the waterfall moves on.
fn provider_retry() -> RetrySpec {
    RetrySpec {
        max_retries: 1,
        initial_backoff_ms: 100,
        max_backoff_ms: 2_000,
    }
}

impl EnrichHttpSpec {
    pub(crate) fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        if self.providers.is_empty() {
            problems.push(Problem::new(format!("{at}/providers"), "must not be empty"));
        }
        if self.providers.len() > 16 {
            problems.push(Problem::new(format!("{at}/providers"), "at most 16"));
        }
        for (i, p) in self.providers.iter().enumerate() {
            let pat = format!("{at}/providers/{i}");
            p.check(&pat, problems);
            if self.providers[..i].iter().any(|q| q.name == p.name) {
                problems.push(Problem::new(format!("{pat}/name"), "must be unique"));
            }
        }
        if self.target.is_empty() || !self.target.starts_with('/') {
            problems.push(Problem::new(
                format!("{at}/target"),
                "must be a JSON Pointer below the record root (e.g. `/enriched`)",
            ));
        }
        if let Some(schema) = &self.schema
            && !(schema.is_object() || schema.is_boolean())
        {
            problems.push(Problem::new(
                format!("{at}/schema"),
                "must be a JSON Schema (an object or a boolean)",
            ));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            problems.push(Problem::new(
                format!("{at}/concurrency"),
                "must be 1 to 256",
            ));
        }
        if self.cache.max_entries > 10_000_000 {
            problems.push(Problem::new(
                format!("{at}/cache/max_entries"),
                "at most 10000000",
            ));
        }
    }
}

impl ProviderSpec {
    fn check(&self, at: &str, problems: &mut Vec<Problem>) {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            problems.push(Problem::new(
                format!("{at}/name"),
                "must be 1 to 64 characters of a-z, A-Z, 0-9, `_` and `-`",
            ));
        }
        let misplaced = |field: &str, problems: &mut Vec<Problem>, why: &str| {
            problems.push(Problem::new(format!("{at}/{field}"), why.to_owned()));
        };
        match self.preset {
            None => {
                match &self.url {
                    Some(url) => check_url(
                        url,
                        self.allow_http,
                        &format!("{at}/url"),
                        problems,
                        "allow_http",
                    ),
                    None => misplaced("url", problems, "required (or set a `preset`)"),
                }
                for (field, set) in [
                    ("base_url", self.base_url.is_some()),
                    ("model", self.model.is_some()),
                    ("prompt", self.prompt.is_some()),
                ] {
                    if set {
                        misplaced(field, problems, "only for `preset: openai_chat`");
                    }
                }
                if let Some(p) = &self.result_pointer
                    && !p.is_empty()
                    && !p.starts_with('/')
                {
                    misplaced("result_pointer", problems, "must be a JSON Pointer");
                }
                if self.method == Some(HttpMethod::Get) && self.body.is_some() {
                    misplaced("body", problems, "a GET request has no body");
                }
                if let Some(batch) = &self.batch {
                    if batch.max_records == 0 || batch.max_records > MAX_BATCH_RECORDS {
                        misplaced("batch/max_records", problems, "must be 1 to 1000");
                    }
                    if let Some(p) = &batch.results_pointer
                        && !p.is_empty()
                        && !p.starts_with('/')
                    {
                        misplaced("batch/results_pointer", problems, "must be a JSON Pointer");
                    }
                    if self.body.is_none() {
                        misplaced(
                            "body",
                            problems,
                            "required in chunk mode: each record's rendered body is one item of the request's array",
                        );
                    }
                    if self.method == Some(HttpMethod::Get) {
                        misplaced("method", problems, "chunk mode sends a POST");
                    }
                    if self.url.as_deref().is_some_and(|u| u.contains("{/")) {
                        misplaced(
                            "url",
                            problems,
                            "placeholders are not allowed in chunk mode: one request carries many records",
                        );
                    }
                }
            }
            Some(ProviderPreset::OpenaiChat) => {
                match &self.base_url {
                    Some(url) => check_url(
                        url,
                        self.allow_http,
                        &format!("{at}/base_url"),
                        problems,
                        "allow_http",
                    ),
                    None => misplaced("base_url", problems, "required by `openai_chat`"),
                }
                if self.model.as_deref().is_none_or(str::is_empty) {
                    misplaced("model", problems, "required by `openai_chat`");
                }
                if self.prompt.as_deref().is_none_or(str::is_empty) {
                    misplaced("prompt", problems, "required by `openai_chat`");
                }
                for (field, set) in [
                    ("url", self.url.is_some()),
                    ("body", self.body.is_some()),
                    ("method", self.method.is_some()),
                    ("result_pointer", self.result_pointer.is_some()),
                    ("batch", self.batch.is_some()),
                ] {
                    if set {
                        misplaced(field, problems, "not used by `openai_chat`");
                    }
                }
            }
        }
        for name in self.headers.keys() {
            let lower = name.to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || ["host", "content-length", "transfer-encoding", "connection"]
                    .contains(&lower.as_str())
            {
                problems.push(Problem::new(
                    format!("{at}/headers/{}", sluice_core::pointer_token(name)),
                    "not an allowed header name",
                ));
            }
        }
        check_timeout(self.timeout_ms, &format!("{at}/timeout_ms"), problems);
        self.retry.check(&format!("{at}/retry"), problems);
        self.breaker.check(&format!("{at}/breaker"), problems);
    }
}

impl crate::pipeline::DestinationSpec {
    /// The retry and breaker settings the registry wraps this destination
    /// with; destinations without their own blocks get the defaults.
    pub fn resilience(&self) -> (RetrySpec, BreakerSpec) {
        match self {
            crate::pipeline::DestinationSpec::Webhook(w) => (w.retry, w.breaker),
            crate::pipeline::DestinationSpec::ObjectStore(o) => (o.retry, o.breaker),
            crate::pipeline::DestinationSpec::Postgres(p) => (p.retry, p.breaker),
            crate::pipeline::DestinationSpec::Clickhouse(c) => (c.retry, c.breaker),
            _ => (RetrySpec::default(), BreakerSpec::default()),
        }
    }
}

fn check_timeout(ms: u64, at: &str, problems: &mut Vec<Problem>) {
    if ms == 0 || ms > 300_000 {
        problems.push(Problem::new(at, "must be 1 to 300000 milliseconds"));
    }
}

/// An outbound URL: `https://` (or `http://` when allowed), a host, no
/// credentials inside. Placeholders (`{/pointer}`) are allowed in the path
/// and query only.
fn check_url(url: &str, allow_http: bool, at: &str, problems: &mut Vec<Problem>, flag: &str) {
    let Some((scheme, rest)) = url.split_once("://") else {
        problems.push(Problem::new(at, "must be an absolute http(s) URL"));
        return;
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            problems.push(Problem::new(
                at,
                format!("must use https (set `{flag}: true` to allow http for local testing)"),
            ));
        }
        _ => {
            problems.push(Problem::new(at, "only http and https URLs are allowed"));
            return;
        }
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        problems.push(Problem::new(
            at,
            "must not contain a user or password; use the component's secret fields",
        ));
    }
    if authority.is_empty() {
        problems.push(Problem::new(at, "must name a host"));
    }
    if authority.contains('{') || authority.contains('}') {
        problems.push(Problem::new(
            at,
            "placeholders are allowed in the path and query only",
        ));
    }
    if url.len() > 2048 {
        problems.push(Problem::new(at, "must be at most 2048 bytes"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn problems_of_webhook(v: Value) -> Vec<String> {
        let spec: WebhookDestinationSpec = serde_json::from_value(v).unwrap();
        let mut problems = Vec::new();
        spec.check("", &mut problems);
        problems.into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn webhook_urls_are_https_without_credentials() {
        let ok = problems_of_webhook(
            json!({"url": "https://hooks.example.com/x", "secret": "0123456789abcdef"}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let http = problems_of_webhook(
            json!({"url": "http://hooks.example.com/x", "secret": "0123456789abcdef"}),
        );
        assert_eq!(http, vec!["/url"]);
        let allowed = problems_of_webhook(
            json!({"url": "http://127.0.0.1:9/x", "secret": "0123456789abcdef", "allow_http": true}),
        );
        assert!(allowed.is_empty());
        let creds =
            problems_of_webhook(json!({"url": "https://u:p@example.com/", "secret": "short"}));
        assert_eq!(creds, vec!["/url", "/secret"]);
        let bad = problems_of_webhook(
            json!({"url": "file:///etc/passwd", "secret": "0123456789abcdef",
            "chunk_records": 0, "breaker": {"window": 2, "failures": 3}}),
        );
        assert_eq!(bad, vec!["/url", "/chunk_records", "/breaker/failures"]);
    }

    #[test]
    fn chunk_mode_needs_a_body_a_fixed_url_and_a_size() {
        let spec: EnrichHttpSpec = serde_json::from_value(json!({
            "target": "/geo",
            "providers": [
                {"name": "ok", "url": "https://geo.example.com/batch", "body": {"q": "{/ip}"},
                 "batch": {"max_records": 100, "results_pointer": "/results"}},
                {"name": "bad", "url": "https://geo.example.com/{/ip}", "method": "GET",
                 "batch": {"max_records": 0, "results_pointer": "results"}},
                {"name": "llm", "preset": "openai_chat", "base_url": "https://api.example.com/v1",
                 "model": "m", "prompt": "p", "batch": {"max_records": 5}}
            ]
        }))
        .unwrap();
        let mut problems = Vec::new();
        spec.check("", &mut problems);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/providers/1/batch/max_records",
                "/providers/1/batch/results_pointer",
                "/providers/1/body",
                "/providers/1/method",
                "/providers/1/url",
                "/providers/2/batch",
            ]
        );
    }

    #[test]
    fn providers_are_checked_by_preset() {
        let spec: EnrichHttpSpec = serde_json::from_value(json!({
            "target": "/geo",
            "providers": [
                {"name": "a", "url": "https://geo.example.com/{/ip}"},
                {"name": "a", "preset": "openai_chat", "base_url": "https://api.example.com/v1", "url": "https://x"},
                {"name": "b c", "url": "https://{/host}/x"}
            ]
        }))
        .unwrap();
        let mut problems = Vec::new();
        spec.check("/processors/0", &mut problems);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/processors/0/providers/1/model",
                "/processors/0/providers/1/prompt",
                "/processors/0/providers/1/url",
                "/processors/0/providers/1/name",
                "/processors/0/providers/2/name",
                "/processors/0/providers/2/url",
            ]
        );
    }
}
