//! `enrich_http`: ask external HTTP APIs about each record and merge the
//! answer in (SPEC section 3).
//!
//! Providers form a waterfall: each is tried in order until one answers
//! with a result that matches the configured JSON Schema; that result is
//! merged into the record at `target` (object members are merged into an
//! existing object, anything else replaces). When every provider fails,
//! the record fails with `ENRICH_FAILED` and a message naming each
//! provider and why — never the record's values, the rendered URL or the
//! answer's body, which may all carry personal data.
//!
//! Requests come from templates with `{/pointer}` placeholders (see
//! `sluice_config::ProviderSpec`). A validated result is cached in an LRU
//! with a time to live, keyed by a SHA-256 of the provider and the rendered
//! request; before the waterfall runs, the cache is consulted for every
//! provider in order, so a record that was enriched recently costs no call.
//!
//! Each provider has its own timeout, retries and circuit breaker
//! (`sluice-outbound`, target `<pipeline_id>/processors/<i>/<name>`), and
//! every outbound call goes through the SSRF-safe client: a provider URL
//! that resolves or redirects to a non-public address is refused unless
//! the server allows it. A processor-wide semaphore caps the calls in
//! flight across all threads processing parts.
//!
//! A provider in chunk mode (`batch`) is sent the rendered bodies of up to
//! `max_records` records as one JSON array and must answer with an array
//! of as many results, in order; each result is checked and merged into
//! its own record, and a record whose result fails falls through to the
//! next provider. Such a processor takes all the records of a part at
//! once ([`Stage::process_many`]); the pipeline then runs stage by stage.
//!
//! Processors are synchronous and run on blocking threads, so the calls
//! run on `sluice-outbound`'s own small runtime ([`sluice_outbound::block_on`])
//! while the processing thread waits: nothing async is blocked. Clients and
//! breakers are made on first use, so validating a config makes no client
//! and registers no breaker.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jsonschema::Validator;
use lru::LruCache;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sluice_config::{EnrichHttpSpec, HttpMethod, ProviderPreset, ProviderSpec};
use sluice_core::{ErrorCode, Problem, ProcessError, Processor, Record, RecordContext};
use sluice_outbound::{CallError, ClientOptions, Outbound, Resilience};
use tokio::sync::Semaphore;

use crate::Stage;
use crate::pointer::Pointer;

/// Largest provider answer read, in bytes.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Validated results by request hash, with the time they were stored.
type Cache = LruCache<[u8; 32], (Instant, Value)>;

pub(crate) struct EnrichHttpProcessor {
    inner: Arc<Inner>,
}

struct Inner {
    providers: Vec<Provider>,
    target: Pointer,
    schema: Option<Validator>,
    cache: Option<Mutex<Cache>>,
    ttl: Duration,
    permits: Arc<Semaphore>,
    outbound: Outbound,
    /// `<pipeline_id>/processors/<i>` for breaker targets.
    breaker_prefix: String,
    /// Clients and breakers, made on first use.
    live: OnceLock<Result<Vec<Live>, String>>,
}

struct Live {
    client: sluice_outbound::HttpClient,
    resilience: Resilience,
}

struct Provider {
    spec: ProviderSpec,
    kind: Kind,
}

enum Kind {
    Plain {
        method: HttpMethod,
        url: Template,
        body: Option<Value>,
        result: Option<Pointer>,
        /// Chunk mode: records per request and where the results array is.
        batch: Option<Chunking>,
    },
    OpenaiChat {
        url: String,
        model: String,
        prompt: Template,
    },
}

/// Chunk mode of a provider.
struct Chunking {
    max_records: usize,
    /// The results array inside the answer (`None`: the answer itself).
    results: Option<Pointer>,
}

/// A string with `{/pointer}` placeholders.
#[derive(Debug, Clone)]
struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Field(Pointer),
}

/// How a placeholder's value is written into text.
#[derive(Clone, Copy)]
enum Escape {
    /// Percent-encoded (URLs).
    Url,
    /// As is (prompts, body strings).
    Raw,
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{/") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 1..];
            let Some(end) = after.find('}') else {
                return Err("a `{/` placeholder is not closed with `}`".to_owned());
            };
            let pointer = Pointer::parse(&after[..end])
                .map_err(|e| format!("placeholder `{{{}}}`: {e}", &after[..end]))?;
            pieces.push(Piece::Field(pointer));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template { pieces })
    }

    /// The pointer when the template is exactly one placeholder.
    fn sole_field(&self) -> Option<&Pointer> {
        match self.pieces.as_slice() {
            [Piece::Field(p)] => Some(p),
            _ => None,
        }
    }

    fn render(&self, record: &Value, escape: Escape) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(p) => {
                    let value = p.get(record).ok_or_else(|| {
                        format!("the record has no `{}` for the request", p.as_str())
                    })?;
                    let text = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    match escape {
                        Escape::Raw => out.push_str(&text),
                        Escape::Url => percent_encode(&text, &mut out),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Check every string of a body template; `Err` names the member.
fn check_body(body: &Value, at: &str, problems: &mut Vec<Problem>) {
    match body {
        Value::String(s) => {
            if let Err(e) = Template::parse(s) {
                problems.push(Problem::new(at, e));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_body(v, &format!("{at}/{i}"), problems);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_body(
                    v,
                    &format!("{at}/{}", sluice_core::pointer_token(k)),
                    problems,
                );
            }
        }
        _ => {}
    }
}

/// Fill a body template: a string that is exactly one placeholder becomes
/// the JSON value; other strings get their placeholders as text.
fn render_body(body: &Value, record: &Value) -> Result<Value, String> {
    Ok(match body {
        Value::String(s) => {
            let t = Template::parse(s)?;
            match t.sole_field() {
                Some(p) => p
                    .get(record)
                    .cloned()
                    .ok_or_else(|| format!("the record has no `{}` for the request", p.as_str()))?,
                None => Value::String(t.render(record, Escape::Raw)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_body(v, record))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                out.insert(k.clone(), render_body(v, record)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

pub(crate) fn build(
    spec: &EnrichHttpSpec,
    ctx: &crate::BuildContext,
    at: &str,
) -> Result<EnrichHttpProcessor, Vec<Problem>> {
    let mut problems = Vec::new();
    let target = match Pointer::parse(&spec.target) {
        Ok(p) if !p.is_root() => Some(p),
        Ok(_) => {
            problems.push(Problem::new("/target", "cannot replace the whole record"));
            None
        }
        Err(e) => {
            problems.push(Problem::new("/target", e));
            None
        }
    };
    let schema = match &spec.schema {
        None => None,
        Some(s) => match jsonschema::options().offline().build(s) {
            Ok(v) => Some(v),
            Err(error) => {
                let inner = error.instance_path().as_str().to_owned();
                problems.push(Problem::new(
                    format!("/schema{inner}"),
                    format!("invalid JSON Schema: {}", error.masked()),
                ));
                None
            }
        },
    };
    let mut providers = Vec::with_capacity(spec.providers.len());
    for (i, p) in spec.providers.iter().enumerate() {
        let pat = format!("/providers/{i}");
        match build_provider(p, &pat) {
            Ok(built) => providers.push(built),
            Err(mut found) => problems.append(&mut found),
        }
    }
    let Some(target) = target else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let cache = NonZeroUsize::new(spec.cache.max_entries)
        .filter(|_| spec.cache.ttl_secs > 0)
        .map(|n| Mutex::new(LruCache::new(n)));
    Ok(EnrichHttpProcessor {
        inner: Arc::new(Inner {
            providers,
            target,
            schema,
            cache,
            ttl: Duration::from_secs(spec.cache.ttl_secs),
            permits: Arc::new(Semaphore::new(spec.concurrency.max(1))),
            outbound: ctx.outbound.clone(),
            breaker_prefix: format!("{}{at}", ctx.pipeline_id),
            live: OnceLock::new(),
        }),
    })
}

fn build_provider(p: &ProviderSpec, at: &str) -> Result<Provider, Vec<Problem>> {
    let mut problems = Vec::new();
    let kind = match p.preset {
        None => {
            let url_text = p.url.clone().unwrap_or_default();
            let url = Template::parse(&url_text)
                .map_err(|e| problems.push(Problem::new(format!("{at}/url"), e)))
                .ok();
            if let Some(body) = &p.body {
                check_body(body, &format!("{at}/body"), &mut problems);
            }
            let result = match p.result_pointer.as_deref() {
                None | Some("") => None,
                Some(text) => Pointer::parse(text)
                    .map_err(|e| problems.push(Problem::new(format!("{at}/result_pointer"), e)))
                    .ok(),
            };
            let method = p.method.unwrap_or(if p.body.is_some() {
                HttpMethod::Post
            } else {
                HttpMethod::Get
            });
            let batch = p.batch.as_ref().map(|b| Chunking {
                max_records: b.max_records.max(1),
                results: match b.results_pointer.as_deref() {
                    None | Some("") => None,
                    Some(text) => Pointer::parse(text)
                        .map_err(|e| {
                            problems.push(Problem::new(format!("{at}/batch/results_pointer"), e))
                        })
                        .ok(),
                },
            });
            url.map(|url| Kind::Plain {
                method,
                url,
                body: p.body.clone(),
                result,
                batch,
            })
        }
        Some(ProviderPreset::OpenaiChat) => {
            let base = p.base_url.clone().unwrap_or_default();
            let prompt = Template::parse(p.prompt.as_deref().unwrap_or_default())
                .map_err(|e| problems.push(Problem::new(format!("{at}/prompt"), e)))
                .ok();
            if base.contains('{') {
                problems.push(Problem::new(
                    format!("{at}/base_url"),
                    "placeholders are not allowed here",
                ));
            }
            prompt.map(|prompt| Kind::OpenaiChat {
                url: format!("{}/chat/completions", base.trim_end_matches('/')),
                model: p.model.clone().unwrap_or_default(),
                prompt,
            })
        }
    };
    match kind {
        Some(kind) if problems.is_empty() => Ok(Provider {
            spec: p.clone(),
            kind,
        }),
        _ => Err(problems),
    }
}

/// One rendered request.
#[derive(Clone)]
struct Request {
    method: HttpMethod,
    url: String,
    body: Option<Value>,
    key: [u8; 32],
}

impl Provider {
    fn chunking(&self) -> Option<&Chunking> {
        match &self.kind {
            Kind::Plain { batch, .. } => batch.as_ref(),
            Kind::OpenaiChat { .. } => None,
        }
    }

    fn render(&self, record: &Value) -> Result<Request, String> {
        let (method, url, body) = match &self.kind {
            Kind::Plain {
                method, url, body, ..
            } => (
                *method,
                url.render(record, Escape::Url)?,
                body.as_ref().map(|b| render_body(b, record)).transpose()?,
            ),
            Kind::OpenaiChat { url, model, prompt } => (
                HttpMethod::Post,
                url.clone(),
                Some(json!({
                    "model": model,
                    "messages": [
                        {"role": "system", "content": "Answer with one JSON value only."},
                        {"role": "user", "content": prompt.render(record, Escape::Raw)?}
                    ],
                    "temperature": 0,
                    "response_format": {"type": "json_object"}
                })),
            ),
        };
        let mut h = Sha256::new();
        h.update(self.spec.name.as_bytes());
        h.update([0]);
        h.update(match method {
            HttpMethod::Get => b"GET".as_slice(),
            HttpMethod::Post => b"POST".as_slice(),
        });
        h.update([0]);
        h.update(url.as_bytes());
        h.update([0]);
        if let Some(b) = &body {
            h.update(b.to_string().as_bytes());
        }
        Ok(Request {
            method,
            url,
            body,
            key: h.finalize().into(),
        })
    }

    /// The result inside a successful answer.
    fn extract(&self, answer: Value) -> Result<Value, String> {
        match &self.kind {
            Kind::Plain { result: None, .. } => Ok(answer),
            Kind::Plain {
                result: Some(p), ..
            } => p
                .get(&answer)
                .cloned()
                .ok_or_else(|| format!("the answer has no `{}`", p.as_str())),
            Kind::OpenaiChat { .. } => {
                let content = answer
                    .pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                    .ok_or("the answer has no choices[0].message.content")?;
                parse_json_content(content)
                    .ok_or_else(|| "the model's answer is not JSON".to_owned())
            }
        }
    }
}

/// Parse a model's text answer as JSON, tolerating a Markdown code fence.
fn parse_json_content(content: &str) -> Option<Value> {
    let text = content.trim();
    if let Ok(v) = serde_json::from_str(text) {
        return Some(v);
    }
    let inner = text.strip_prefix("```")?;
    let inner = inner.strip_prefix("json").unwrap_or(inner);
    let inner = inner.strip_suffix("```")?;
    serde_json::from_str(inner.trim()).ok()
}

impl Inner {
    fn live(&self) -> Result<&[Live], String> {
        let made = self.live.get_or_init(|| {
            self.providers
                .iter()
                .map(|p| -> Result<Live, String> {
                    let client = self
                        .outbound
                        .client(ClientOptions {
                            timeout: Duration::from_millis(p.spec.timeout_ms),
                            follow_redirects: true,
                        })
                        .map_err(|e| e.to_string())?;
                    let breaker = sluice_outbound::breaker(
                        &format!("{}/{}", self.breaker_prefix, p.spec.name),
                        "provider",
                        p.spec.breaker,
                    );
                    Ok(Live {
                        client,
                        resilience: Resilience::new(p.spec.retry, breaker),
                    })
                })
                .collect()
        });
        made.as_deref().map_err(Clone::clone)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Value> {
        let cache = self.cache.as_ref()?;
        let mut cache = match cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fresh = match cache.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Ok(v.clone()),
            Some(_) => Err(true),
            None => Err(false),
        };
        match fresh {
            Ok(v) => Some(v),
            Err(expired) => {
                if expired {
                    cache.pop(key);
                }
                None
            }
        }
    }

    fn remember(&self, key: [u8; 32], value: &Value) {
        if let Some(cache) = &self.cache {
            let mut cache = match cache.lock() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            cache.put(key, (Instant::now(), value.clone()));
        }
    }

    /// A result is usable when it matches the schema (if any).
    fn check_result(&self, value: &Value) -> Result<(), String> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        match schema.iter_errors(value).next() {
            None => Ok(()),
            Some(error) => {
                let at = error.instance_path().as_str();
                let at = if at.is_empty() { "/" } else { at };
                Err(format!(
                    "the result does not match the schema at {at}: {}",
                    error.masked()
                ))
            }
        }
    }

    /// Call one provider (with its retries and breaker) and return its
    /// validated result.
    async fn call(&self, index: usize, request: &Request) -> Result<Value, String> {
        let provider = &self.providers[index];
        let answer = self
            .send(index, request.method, &request.url, request.body.as_ref())
            .await?;
        let result = provider.extract(answer)?;
        self.check_result(&result)?;
        Ok(result)
    }

    /// Call a provider in chunk mode with the requests of several records:
    /// one request whose body is the array of their bodies. One outcome per
    /// request, in order: an answer that is not an array of as many
    /// results fails them all; otherwise each result is extracted and
    /// checked on its own.
    async fn call_chunk(&self, index: usize, requests: &[&Request]) -> Vec<Result<Value, String>> {
        let provider = &self.providers[index];
        let all = |reason: String| requests.iter().map(|_| Err(reason.clone())).collect();
        let Some(first) = requests.first() else {
            return Vec::new();
        };
        let Some(chunking) = provider.chunking() else {
            return all("the provider is not in chunk mode".to_owned());
        };
        let body = Value::Array(
            requests
                .iter()
                .map(|r| r.body.clone().unwrap_or(Value::Null))
                .collect(),
        );
        let answer = match self
            .send(index, HttpMethod::Post, &first.url, Some(&body))
            .await
        {
            Ok(a) => a,
            Err(reason) => return all(reason),
        };
        let items = match &chunking.results {
            None => Some(answer),
            Some(p) => p.get(&answer).cloned(),
        };
        let items = match items {
            Some(Value::Array(items)) if items.len() == requests.len() => items,
            Some(Value::Array(items)) => {
                return all(format!(
                    "the answer has {} results for {} records",
                    items.len(),
                    requests.len()
                ));
            }
            _ => return all("the answer is not an array of results".to_owned()),
        };
        items
            .into_iter()
            .map(|item| {
                let result = provider.extract(item)?;
                self.check_result(&result)?;
                Ok(result)
            })
            .collect()
    }

    /// One HTTP exchange with a provider (with its retries and breaker):
    /// its JSON answer.
    async fn send(
        &self,
        index: usize,
        method: HttpMethod,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let provider = &self.providers[index];
        let live = &self.live()?[index];
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "the processor is shutting down".to_owned())?;
        let url =
            reqwest::Url::parse(url).map_err(|e| format!("the rendered URL is not valid: {e}"))?;
        let url = &url;
        live.resilience
            .run(|| async move {
                let mut builder = match method {
                    HttpMethod::Get => live.client.get(url.clone()),
                    HttpMethod::Post => live.client.post(url.clone()),
                }
                .map_err(|denied| CallError::permanent(denied.to_string()))?;
                builder = builder.header("accept", "application/json");
                if let Some(key) = &provider.spec.api_key {
                    builder = builder.bearer_auth(key);
                }
                for (name, value) in &provider.spec.headers {
                    builder = builder.header(name.as_str(), value.as_str());
                }
                if let Some(body) = body {
                    builder = builder
                        .header("content-type", "application/json")
                        .body(body.to_string());
                }
                let response = builder
                    .send()
                    .await
                    .map_err(|e| sluice_outbound::classify(&e))?;
                let status = response.status();
                if !status.is_success() {
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(sluice_outbound::retry::parse_retry_after);
                    let message = format!("answered {status}");
                    return Err(
                        if status.as_u16() == 408
                            || status.as_u16() == 429
                            || status.is_server_error()
                        {
                            CallError::transient(message).with_retry_after(retry_after)
                        } else {
                            CallError::permanent(message)
                        },
                    );
                }
                read_json(response).await
            })
            .await
            .map_err(|e| e.message)
    }

    /// Try the providers in order; the first usable result wins.
    async fn waterfall(&self, requests: Vec<Result<Request, String>>) -> Result<Value, String> {
        let mut reasons = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            let name = &self.providers[i].spec.name;
            let outcome = match request {
                Ok(r) => self.call(i, r).await,
                Err(e) => Err(e.clone()),
            };
            match outcome {
                Ok(value) => {
                    metrics::counter!("sluice_enrich_results_total", "outcome" => "provider")
                        .increment(1);
                    if let Ok(r) = request {
                        self.remember(r.key, &value);
                    }
                    return Ok(value);
                }
                Err(reason) => {
                    metrics::counter!("sluice_enrich_provider_failures_total").increment(1);
                    reasons.push(format!("{name}: {reason}"));
                }
            }
        }
        metrics::counter!("sluice_enrich_results_total", "outcome" => "failed").increment(1);
        Err(format!("every provider failed: {}", reasons.join("; ")))
    }
}

impl Inner {
    /// The waterfall for many records at once (a processor with a
    /// provider in chunk mode): each provider in turn gets every record
    /// still without a result — in chunks of `max_records` for a chunked
    /// provider, one request per record otherwise, concurrently within
    /// `concurrency` — and a record whose request or result fails there
    /// falls through to the next provider. `requests[r][i]` is record
    /// `r`'s request for provider `i`.
    async fn waterfall_many(
        self: Arc<Self>,
        requests: Vec<Vec<Result<Request, String>>>,
    ) -> Vec<Result<Value, String>> {
        let n = requests.len();
        let mut results: Vec<Option<Value>> = vec![None; n];
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); n];
        for (i, provider) in self.providers.iter().enumerate() {
            let name = &provider.spec.name;
            // Records still open, and those whose request could not be made.
            let mut open: Vec<usize> = Vec::new();
            for (r, per_record) in requests.iter().enumerate() {
                if results[r].is_some() {
                    continue;
                }
                match &per_record[i] {
                    Ok(_) => open.push(r),
                    Err(e) => reasons[r].push(format!("{name}: {e}")),
                }
            }
            if open.is_empty() {
                continue;
            }
            let request = |r: usize| requests[r][i].as_ref().ok();
            // Every call of this provider at once, as tasks (the permits
            // bound the calls in flight); each with the records it is for.
            let mut calls = Vec::new();
            match provider.chunking() {
                Some(chunking) => {
                    for chunk in open.chunks(chunking.max_records) {
                        let reqs: Vec<Request> =
                            chunk.iter().filter_map(|r| request(*r).cloned()).collect();
                        let inner = self.clone();
                        let task = tokio::spawn(async move {
                            let refs: Vec<&Request> = reqs.iter().collect();
                            inner.call_chunk(i, &refs).await
                        });
                        calls.push((chunk.to_vec(), task));
                    }
                }
                None => {
                    for &r in &open {
                        let Some(req) = request(r).cloned() else {
                            continue;
                        };
                        let inner = self.clone();
                        let task = tokio::spawn(async move { vec![inner.call(i, &req).await] });
                        calls.push((vec![r], task));
                    }
                }
            }
            let mut outcomes: Vec<(usize, Result<Value, String>)> = Vec::with_capacity(open.len());
            for (records, task) in calls {
                match task.await {
                    Ok(out) => outcomes.extend(records.into_iter().zip(out)),
                    Err(_) => outcomes.extend(
                        records
                            .into_iter()
                            .map(|r| (r, Err("the call was cancelled".to_owned()))),
                    ),
                }
            }
            for (r, outcome) in outcomes {
                match outcome {
                    Ok(value) => {
                        metrics::counter!("sluice_enrich_results_total", "outcome" => "provider")
                            .increment(1);
                        if let Some(req) = request(r) {
                            self.remember(req.key, &value);
                        }
                        results[r] = Some(value);
                    }
                    Err(reason) => {
                        metrics::counter!("sluice_enrich_provider_failures_total").increment(1);
                        reasons[r].push(format!("{name}: {reason}"));
                    }
                }
            }
        }
        results
            .into_iter()
            .zip(reasons)
            .map(|(result, reasons)| {
                result.ok_or_else(|| {
                    metrics::counter!("sluice_enrich_results_total", "outcome" => "failed")
                        .increment(1);
                    format!("every provider failed: {}", reasons.join("; "))
                })
            })
            .collect()
    }
}

/// Read a JSON answer of bounded size. A body that is not JSON is a
/// permanent failure of this provider (retrying will not fix it).
async fn read_json(mut response: reqwest::Response) -> Result<Value, CallError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| sluice_outbound::classify(&e))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(CallError::permanent("the answer is larger than 4 MiB"));
        }
    }
    serde_json::from_slice(&body).map_err(|_| CallError::permanent("the answer is not JSON"))
}

/// Merge `value` into `record` at `target`: members into an existing
/// object, else set (creating parents).
fn merge(record: &mut Value, target: &Pointer, value: Value) -> Result<(), String> {
    if let (Some(Value::Object(existing)), Value::Object(new)) = (target.get_mut(record), &value) {
        for (k, v) in new {
            existing.insert(k.clone(), v.clone());
        }
        return Ok(());
    }
    target.set(record, value).map_err(|e| e.message(target))
}

impl Processor for EnrichHttpProcessor {
    fn type_name(&self) -> &'static str {
        "enrich_http"
    }

    fn process(
        &self,
        mut record: Record,
        _ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError> {
        if self.chunked() {
            // A record on its own is a chunk of one.
            let mut results = self.enrich_many(vec![record]);
            let result = results.pop().unwrap_or_else(|| {
                Err(ProcessError::new(
                    ErrorCode::EnrichFailed,
                    "no result for the record",
                ))
            });
            out.extend(result?);
            return Ok(());
        }
        let inner = &self.inner;
        let requests: Vec<Result<Request, String>> =
            inner.providers.iter().map(|p| p.render(&record)).collect();
        let hit = requests
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .find_map(|r| inner.cached(&r.key));
        let value = match hit {
            Some(v) => {
                metrics::counter!("sluice_enrich_results_total", "outcome" => "cache").increment(1);
                v
            }
            None => {
                let inner = self.inner.clone();
                sluice_outbound::block_on(async move { inner.waterfall(requests).await })
                    .map_err(|e| e.message)
                    .and_then(|r| r)
                    .map_err(|reason| ProcessError::new(ErrorCode::EnrichFailed, reason))?
            }
        };
        merge(&mut record, &inner.target, value)
            .map_err(|m| ProcessError::new(ErrorCode::EnrichFailed, m))?;
        out.push(record);
        Ok(())
    }
}

impl EnrichHttpProcessor {
    /// Whether a provider is in chunk mode: then the processor takes the
    /// records of a part together ([`Stage::process_many`]).
    fn chunked(&self) -> bool {
        self.inner.providers.iter().any(|p| p.chunking().is_some())
    }

    /// Enrich many records: the cache first (per record, every provider in
    /// order), then [`Inner::waterfall_many`] for the rest. One result per
    /// record, in order.
    fn enrich_many(&self, records: Vec<Record>) -> Vec<Result<Vec<Record>, ProcessError>> {
        let inner = &self.inner;
        let mut values: Vec<Option<Value>> = Vec::with_capacity(records.len());
        let mut pending: Vec<(usize, Vec<Result<Request, String>>)> = Vec::new();
        for (r, record) in records.iter().enumerate() {
            let requests: Vec<Result<Request, String>> =
                inner.providers.iter().map(|p| p.render(record)).collect();
            let hit = requests
                .iter()
                .filter_map(|q| q.as_ref().ok())
                .find_map(|q| inner.cached(&q.key));
            if hit.is_some() {
                metrics::counter!("sluice_enrich_results_total", "outcome" => "cache").increment(1);
            } else {
                pending.push((r, requests));
            }
            values.push(hit);
        }
        let mut failed: Vec<Option<String>> = vec![None; records.len()];
        if !pending.is_empty() {
            let (indexes, requests): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
            let worker = self.inner.clone();
            let outcomes =
                sluice_outbound::block_on(async move { worker.waterfall_many(requests).await });
            match outcomes {
                Ok(outcomes) => {
                    for (r, outcome) in indexes.into_iter().zip(outcomes) {
                        match outcome {
                            Ok(v) => values[r] = Some(v),
                            Err(reason) => failed[r] = Some(reason),
                        }
                    }
                }
                Err(e) => {
                    for r in indexes {
                        failed[r] = Some(e.message.clone());
                    }
                }
            }
        }
        records
            .into_iter()
            .zip(values)
            .zip(failed)
            .map(|((mut record, value), failure)| {
                let value = match (value, failure) {
                    (Some(v), _) => v,
                    (None, reason) => {
                        return Err(ProcessError::new(
                            ErrorCode::EnrichFailed,
                            reason.unwrap_or_else(|| "no provider answered".to_owned()),
                        ));
                    }
                };
                merge(&mut record, &inner.target, value)
                    .map_err(|m| ProcessError::new(ErrorCode::EnrichFailed, m))?;
                Ok(vec![record])
            })
            .collect()
    }
}

impl Stage for EnrichHttpProcessor {
    fn chunked(&self) -> bool {
        EnrichHttpProcessor::chunked(self)
    }

    fn process_many(
        &self,
        records: Vec<(Record, RecordContext<'_>)>,
    ) -> Vec<Result<Vec<Record>, ProcessError>> {
        self.enrich_many(records.into_iter().map(|(r, _)| r).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn templates_fill_placeholders() {
        let r = json!({"ip": "1.2.3.4", "q": "a b/c", "n": 5, "user": {"name": "Zoë"}});
        let t = Template::parse("https://x.example/{/ip}?q={/q}&n={/n}").unwrap();
        assert_eq!(
            t.render(&r, Escape::Url).unwrap(),
            "https://x.example/1.2.3.4?q=a%20b%2Fc&n=5"
        );
        let t = Template::parse("Hello {/user/name}!").unwrap();
        assert_eq!(t.render(&r, Escape::Raw).unwrap(), "Hello Zoë!");
        assert!(Template::parse("{/a").is_err());
        assert!(
            Template::parse("{/x}")
                .unwrap()
                .render(&r, Escape::Raw)
                .is_err()
        );
        let body = render_body(
            &json!({"ip": "{/ip}", "n": "{/n}", "s": "n={/n}", "k": [1]}),
            &r,
        )
        .unwrap();
        assert_eq!(body, json!({"ip": "1.2.3.4", "n": 5, "s": "n=5", "k": [1]}));
    }

    #[test]
    fn model_answers_may_be_fenced() {
        assert_eq!(parse_json_content(" {\"a\":1} "), Some(json!({"a": 1})));
        assert_eq!(
            parse_json_content("```json\n{\"a\":1}\n```"),
            Some(json!({"a": 1}))
        );
        assert_eq!(parse_json_content("sure! {\"a\":1}"), None);
    }

    #[test]
    fn results_merge_into_objects() {
        let mut r = json!({"geo": {"ip": "x"}});
        merge(
            &mut r,
            &Pointer::parse("/geo").unwrap(),
            json!({"country": "NL"}),
        )
        .unwrap();
        assert_eq!(r, json!({"geo": {"ip": "x", "country": "NL"}}));
        merge(&mut r, &Pointer::parse("/a/b").unwrap(), json!(3)).unwrap();
        assert_eq!(r["a"]["b"], 3);
    }

    #[test]
    fn build_reports_every_problem() {
        let spec: EnrichHttpSpec = serde_json::from_value(json!({
            "target": "/x",
            "schema": {"type": 5},
            "providers": [{"name": "a", "url": "https://h/{/a", "body": {"q": "{/b"}}]
        }))
        .unwrap();
        let problems = build(&spec, &crate::test_support::build_ctx(), "/processors/0")
            .err()
            .unwrap();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec!["/schema/type", "/providers/0/url", "/providers/0/body/q"]
        );
    }
}
