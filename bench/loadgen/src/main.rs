//! `loadgen`: the HTTP load generator of `bench/run.sh`.
//!
//! Cuts an NDJSON file into batches of `--batch` lines and POSTs them, as
//! fast as `--clients` concurrent connections allow (throughput) or at a
//! steady `--rate` batches per second for `--duration` seconds (latency).
//! Then it waits until everything it sent has been delivered and prints one
//! JSON object with the numbers.
//!
//! Delivery is read from the system under test, not guessed:
//! - `--wait sluice`: polls the batch list until no batch of the pipeline
//!   is `pending` or `processing`, then reads every batch it submitted.
//!   A batch is delivered at its `completed_at`, which the worker sets after
//!   the destination has written, fsync'd and renamed the batch's files
//!   (millisecond resolution, same machine clock as the client). Latency is
//!   `completed_at` minus the moment the client started the POST.
//! - `--wait node`: polls `--stats URL`, which answers
//!   `{"records": delivered, "last_ms": unix ms of the last write}`.
//! - `--wait none`: only acceptance is measured (workload I).
//!
//! ```text
//! loadgen --input events.ndjson --url http://127.0.0.1:8080/api/v1/pipelines/ID/batches \
//!         --key KEY [--batch 1000] [--clients 4] [--records N] \
//!         [--rate 50 --duration 60] [--wait sluice|node|none] [--stats URL] [--timeout 600]
//! ```

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Wait {
    None,
    Sluice,
    Node,
}

struct Args {
    input: String,
    url: String,
    key: Option<String>,
    batch: usize,
    clients: usize,
    records: Option<usize>,
    rate: Option<f64>,
    duration: f64,
    wait: Wait,
    stats: Option<String>,
    timeout: f64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        input: String::new(),
        url: String::new(),
        key: None,
        batch: 1000,
        clients: 4,
        records: None,
        rate: None,
        duration: 60.0,
        wait: Wait::Sluice,
        stats: None,
        timeout: 600.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--input" => a.input = value()?,
            "--url" => a.url = value()?,
            "--key" => a.key = Some(value()?),
            "--batch" => a.batch = value()?.parse()?,
            "--clients" => a.clients = value()?.parse()?,
            "--records" => a.records = Some(value()?.parse()?),
            "--rate" => a.rate = Some(value()?.parse()?),
            "--duration" => a.duration = value()?.parse()?,
            "--stats" => a.stats = Some(value()?),
            "--timeout" => a.timeout = value()?.parse()?,
            "--wait" => {
                a.wait = match value()?.as_str() {
                    "none" => Wait::None,
                    "sluice" => Wait::Sluice,
                    "node" => Wait::Node,
                    other => bail!("--wait must be none, sluice or node, not {other}"),
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.input.is_empty() || a.url.is_empty() {
        bail!("--input and --url are required");
    }
    if a.batch == 0 || a.clients == 0 {
        bail!("--batch and --clients must be positive");
    }
    if a.wait == Wait::Node && a.stats.is_none() {
        bail!("--wait node needs --stats URL");
    }
    Ok(a)
}

/// One batch ready to send.
struct Batch {
    body: Bytes,
    records: usize,
}

/// What happened to one POST.
struct Sent {
    id: Option<String>,
    records: usize,
    bytes: usize,
    start_ms: f64,
    post_ms: f64,
    end_ms: f64,
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn cut(data: &Bytes, batch: usize, limit: Option<usize>) -> Vec<Batch> {
    let mut out = Vec::new();
    let (mut start, mut lines, mut total) = (0usize, 0usize, 0usize);
    let mut last = 0usize;
    for nl in memchr::memchr_iter(b'\n', data) {
        if limit.is_some_and(|l| total >= l) {
            break;
        }
        lines += 1;
        total += 1;
        last = nl + 1;
        if lines == batch {
            out.push(Batch {
                body: data.slice(start..last),
                records: lines,
            });
            start = last;
            lines = 0;
        }
    }
    if lines > 0 {
        out.push(Batch {
            body: data.slice(start..last),
            records: lines,
        });
    }
    out
}

async fn post(client: &HttpClient, args: &Args, body: Bytes) -> Result<(StatusCode, Bytes)> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(&args.url)
        .header("content-type", "application/x-ndjson");
    if let Some(key) = &args.key {
        req = req.header("x-api-key", key);
    }
    let resp = client.request(req.body(Full::new(body))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn get_json(client: &HttpClient, url: &str, key: Option<&str>) -> Result<Value> {
    let mut req = Request::builder().method(Method::GET).uri(url);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let resp = client.request(req.body(Full::new(Bytes::new()))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn send_one(client: &HttpClient, args: &Args, batch: &Batch) -> Result<Sent> {
    let start_ms = unix_ms();
    let t = Instant::now();
    let (status, body) = post(client, args, batch.body.clone()).await?;
    let post_ms = t.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!("POST answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let id = if args.wait == Wait::Sluice {
        let v: Value = serde_json::from_slice(&body).context("POST answer is not JSON")?;
        Some(
            v["data"]["id"]
                .as_str()
                .ok_or_else(|| anyhow!("POST answer without data.id"))?
                .to_owned(),
        )
    } else {
        None
    };
    Ok(Sent {
        id,
        records: batch.records,
        bytes: batch.body.len(),
        start_ms,
        post_ms,
        end_ms: unix_ms(),
    })
}

/// As fast as the clients go: each takes the next batch when its last one
/// was accepted.
async fn closed_loop(
    client: HttpClient,
    args: Arc<Args>,
    batches: Arc<Vec<Batch>>,
) -> Result<Vec<Sent>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, args, batches, next) =
            (client.clone(), args.clone(), batches.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else { break };
                sent.push(send_one(&client, &args, batch).await?);
            }
            Ok::<_, anyhow::Error>(sent)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// A steady rate: batch i starts at i / rate seconds, whatever the answers.
async fn open_loop(
    client: HttpClient,
    args: Arc<Args>,
    batches: Arc<Vec<Batch>>,
    rate: f64,
) -> Result<Vec<Sent>> {
    let count = (rate * args.duration).round() as usize;
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        let (client, args, batches) = (client.clone(), args.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            let batch = &batches[i % batches.len()];
            send_one(&client, &args, batch).await
        }));
    }
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.push(t.await??);
    }
    Ok(all)
}

/// Waits until no batch of the pipeline is pending or processing, then
/// returns `id -> (status, completed_at ms, succeeded, failed)`.
async fn wait_sluice(
    client: &HttpClient,
    args: &Args,
    deadline: Instant,
) -> Result<HashMap<String, (String, f64, i64, i64)>> {
    let list = args.url.clone();
    let key = args.key.as_deref();
    loop {
        let mut busy = false;
        for status in ["pending", "processing"] {
            let v = get_json(client, &format!("{list}?status={status}&limit=1"), key).await?;
            busy |= v["data"].as_array().is_some_and(|a| !a.is_empty());
        }
        if !busy {
            break;
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for delivery");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{list}?limit=200&cursor={c}"),
            None => format!("{list}?limit=200"),
        };
        let v = get_json(client, &url, key).await?;
        for b in v["data"].as_array().into_iter().flatten() {
            let id = b["id"].as_str().unwrap_or_default().to_owned();
            let completed = b["completed_at"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_micros() as f64 / 1000.0)
                .unwrap_or(f64::NAN);
            out.insert(
                id,
                (
                    b["status"].as_str().unwrap_or_default().to_owned(),
                    completed,
                    b["succeeded_count"].as_i64().unwrap_or(0),
                    b["failed_count"].as_i64().unwrap_or(0),
                ),
            );
        }
        match v["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    Ok(out)
}

/// Waits until the node peer reports `records` delivered; returns the time
/// of its last write.
async fn wait_node(
    client: &HttpClient,
    stats: &str,
    records: usize,
    deadline: Instant,
) -> Result<(f64, u64)> {
    loop {
        let v = get_json(client, stats, None).await?;
        let done = v["records"].as_u64().unwrap_or(0);
        if done as usize >= records {
            return Ok((v["last_ms"].as_f64().unwrap_or(f64::NAN), done));
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for delivery ({done} of {records})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

async fn run() -> Result<Value> {
    let args = Arc::new(parse_args()?);
    let data = Bytes::from(std::fs::read(&args.input).with_context(|| args.input.clone())?);
    let batches = Arc::new(cut(&data, args.batch, args.records));
    if batches.is_empty() {
        bail!("{} has no records", args.input);
    }
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.clients.max(64))
        .build_http();
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);

    let sent = match args.rate {
        Some(rate) => open_loop(client.clone(), args.clone(), batches.clone(), rate).await?,
        None => closed_loop(client.clone(), args.clone(), batches.clone()).await?,
    };
    let records: usize = sent.iter().map(|s| s.records).sum();
    let bytes: usize = sent.iter().map(|s| s.bytes).sum();
    let first = sent
        .iter()
        .map(|s| s.start_ms)
        .fold(f64::INFINITY, f64::min);
    let accepted = sent.iter().map(|s| s.end_ms).fold(0.0, f64::max);
    let mut post: Vec<f64> = sent.iter().map(|s| s.post_ms).collect();
    post.sort_by(f64::total_cmp);

    let mut result = json!({
        "batches": sent.len(),
        "records": records,
        "bytes": bytes,
        "accept_secs": num((accepted - first) / 1000.0),
        "post_p50_ms": num(percentile(&post, 50.0)),
        "post_p99_ms": num(percentile(&post, 99.0)),
    });
    let delivered = match args.wait {
        Wait::None => accepted,
        Wait::Node => {
            let stats = args.stats.as_deref().unwrap_or_default();
            let (last, done) = wait_node(&client, stats, records, deadline).await?;
            result["delivered_records"] = json!(done);
            last
        }
        Wait::Sluice => {
            let seen = wait_sluice(&client, &args, deadline).await?;
            let (mut last, mut succeeded, mut failed, mut not_completed) =
                (0.0f64, 0i64, 0i64, 0usize);
            let mut latency = Vec::with_capacity(sent.len());
            for s in &sent {
                let Some((status, done, ok, bad)) = s.id.as_ref().and_then(|id| seen.get(id))
                else {
                    not_completed += 1;
                    continue;
                };
                if status != "completed" || !done.is_finite() {
                    not_completed += 1;
                    continue;
                }
                last = last.max(*done);
                succeeded += ok;
                failed += bad;
                latency.push(done - s.start_ms);
            }
            latency.sort_by(f64::total_cmp);
            result["delivered_records"] = json!(succeeded);
            result["failed_records"] = json!(failed);
            result["batches_not_completed"] = json!(not_completed);
            result["latency_p50_ms"] = num(percentile(&latency, 50.0));
            result["latency_p99_ms"] = num(percentile(&latency, 99.0));
            result["latency_max_ms"] = num(latency.last().copied().unwrap_or(f64::NAN));
            if not_completed > 0 {
                eprintln!("loadgen: {not_completed} batch(es) did not complete");
            }
            last
        }
    };
    let secs = (delivered - first) / 1000.0;
    result["secs"] = num(secs);
    result["records_per_sec"] = num(records as f64 / secs);
    result["mb_per_sec"] = num(bytes as f64 / secs / 1e6);
    Ok(result)
}

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("loadgen: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
