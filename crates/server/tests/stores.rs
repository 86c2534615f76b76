//! End-to-end delivery to real PostgreSQL, ClickHouse and S3-compatible
//! (s3s-fs) servers through a TCP chaos proxy (issue #6, R-DEL-1..3).
//!
//! Each test runs the same outage script against one destination: batches
//! are submitted while the target is stopped, flapping (every other
//! connection refused), slow (requests reach the server but answers are
//! held beyond the destination's timeout — the server does the work, the
//! client gives up and retries) and finally healthy. At the end every
//! batch is `completed`, the target holds every accepted record exactly
//! once (count and set of ids), and the batch states and `/metrics` show
//! the failures and retries that happened.
//!
//! The servers come from `scripts/install-test-deps.sh` (clickhouse-server
//! from Debian, s3s-fs built from crates.io into the tools cache); each
//! test starts its own instance on a free port with a temporary directory,
//! and uses a fresh PostgreSQL database. Without them the tests fail
//! rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chaos;
mod common;

use chaos::{ChaosProxy, Mode, free_port};
use common::{Backend, Options, TestApp, spawn_app_with};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const RECORDS_PER_BATCH: usize = 250;
/// `worker.part_records` in these tests: 3 parts per batch.
const PART_RECORDS: usize = 100;

async fn app() -> TestApp {
    spawn_app_with(
        Backend::Sqlite,
        Options {
            tweak: Box::new(|c| {
                c.outbound.allow_private = true;
                c.worker.part_records = PART_RECORDS;
                c.worker.max_attempts = 50;
                c.worker.retry_initial_ms = 200;
                c.worker.retry_max_secs = 2;
            }),
        },
    )
    .await
}

/// Short timeouts, one in-attempt retry and a quick breaker, so that the
/// outage reaches the batch level (release with backoff) within seconds.
fn with_resilience(mut destination: Value) -> Value {
    destination["timeout_ms"] = json!(1500);
    destination["retry"] =
        json!({"max_retries": 1, "initial_backoff_ms": 50, "max_backoff_ms": 200});
    destination["breaker"] = json!({"window": 10, "failures": 5, "cooldown_secs": 1});
    destination
}

fn ndjson(tag: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..RECORDS_PER_BATCH {
        serde_json::to_writer(&mut out, &json!({"i": i, "tag": tag, "user": {"n": i % 7}}))
            .unwrap();
        out.push(b'\n');
    }
    out
}

async fn batch(app: &TestApp, pipeline: &str, batch: &str) -> Value {
    app.get(&format!("/api/v1/pipelines/{pipeline}/batches/{batch}"))
        .await
        .expect(200)
        .data()
        .clone()
}

async fn submit(app: &TestApp, pipeline: &str, tag: &str) -> String {
    let r = app
        .submit(pipeline, "application/x-ndjson", None, None, ndjson(tag))
        .await
        .expect(202);
    r.data()["id"].as_str().unwrap().to_owned()
}

/// Poll until `pred` holds for one of the batches, or panic after `secs`.
async fn wait_for(
    app: &TestApp,
    pipeline: &str,
    batches: &[String],
    secs: u64,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        for b in batches {
            let v = batch(app, pipeline, b).await;
            if pred(&v) {
                return v;
            }
        }
        if Instant::now() > deadline {
            let mut states = Vec::new();
            for b in batches {
                states.push(batch(app, pipeline, b).await);
            }
            panic!("timed out waiting for {what}; batches: {states:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The outage script. Returns the batch ids in submission order.
async fn outage_script(
    app: &TestApp,
    proxy: &ChaosProxy,
    pipeline: &str,
    kind: &str,
) -> Vec<String> {
    let mut batches = Vec::new();

    // Stopped: the first batch cannot be delivered; it goes back to
    // pending with the reason, and is not failed.
    proxy.set(Mode::Refuse);
    batches.push(submit(app, pipeline, "stopped").await);
    let prefix = format!("{kind} destination");
    let stopped = wait_for(
        app,
        pipeline,
        &batches,
        60,
        "a failed attempt while stopped",
        |b| {
            b["attempts"].as_i64().unwrap_or(0) >= 1
                && b["status"] == "pending"
                && b["error"].as_str().is_some_and(|e| e.contains(&prefix))
        },
    )
    .await;
    assert_ne!(stopped["status"], "failed", "{stopped}");

    // Flapping: every other connection is refused.
    proxy.set(Mode::Alternate);
    batches.push(submit(app, pipeline, "flapping").await);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Slow: requests arrive and are executed, answers never come back
    // before the timeout.
    proxy.set(Mode::Stall);
    batches.push(submit(app, pipeline, "slow").await);
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.stats().2 == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing reached the stalled target"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(
        app,
        pipeline,
        &batches,
        60,
        "a timed-out attempt while slow",
        |b| {
            b["status"] != "completed"
                && b["error"]
                    .as_str()
                    // A timeout, or the breaker the timeouts opened.
                    .is_some_and(|e| {
                        e.contains(&prefix)
                            && (e.contains("timed out") || e.contains("circuit breaker"))
                    })
        },
    )
    .await;
    assert!(proxy.stats().2 >= 1, "the proxy stalled a connection");

    // Healthy again.
    proxy.set(Mode::Forward);
    batches.push(submit(app, pipeline, "healthy").await);
    for b in &batches {
        let done = app.wait_batch(pipeline, b).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["succeeded_count"], RECORDS_PER_BATCH as i64, "{done}");
        assert_eq!(done["failed_count"], 0, "{done}");
    }
    let first = batch(app, pipeline, &batches[0]).await;
    assert!(
        first["attempts"].as_i64().unwrap() >= 2,
        "the batch submitted during the outage was retried: {first}"
    );
    batches
}

fn expected_ids(batches: &[String]) -> BTreeSet<String> {
    batches
        .iter()
        .flat_map(|b| (0..RECORDS_PER_BATCH).map(move |i| format!("{b}:{i}:0")))
        .collect()
}

/// The failures and retries are in `/metrics`.
async fn assert_metrics(app: &TestApp, kind: &str) {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |prefix: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let destination = format!("destination=\"{kind}\"");
    assert!(
        value(
            "sluice_delivery_failures_total{",
            &[&destination, "kind=\"transient\""]
        ) >= 2.0,
        "transient delivery failures of {kind} counted:\n{text}"
    );
    assert!(
        value("sluice_batch_retries_total", &[]) >= 1.0,
        "batch retries counted"
    );
    assert!(
        value("sluice_batches_finished_total{", &["status=\"completed\""]) >= 4.0,
        "completed batches counted"
    );
}

// ---------------------------------------------------------------- postgres

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_delivers_every_record_once() {
    let Some(base) = sluice_store::testing::test_database_url() else {
        eprintln!("SLUICE_TEST_DATABASE_URL is not set; PostgreSQL destination test not run");
        return;
    };
    let db_url = sluice_store::testing::fresh_postgres_url(&base)
        .await
        .expect("PostgreSQL from SLUICE_TEST_DATABASE_URL must be reachable");
    let parsed = reqwest::Url::parse(&db_url).unwrap();
    let upstream: SocketAddr = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let database = parsed.path().trim_start_matches('/').to_owned();
    let user = parsed.username().to_owned();
    let proxy = ChaosProxy::start(upstream).await;
    let app = app().await;
    let destination = with_resilience(json!({
        "type": "postgres",
        "url": format!("postgres://{user}@{}/{database}", proxy.addr),
        "sslmode": "disable",
        "table": "events",
        "create_table": true,
        "transaction_records": 40,
    }));
    let pipeline = app
        .create_pipeline(json!({"name": "pg", "destination": destination}))
        .await;
    let batches = outage_script(&app, &proxy, &pipeline, "postgres").await;

    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let rows: Vec<(String, Value)> = sqlx::query_as("SELECT id, data FROM events")
        .fetch_all(&pool)
        .await
        .unwrap();
    let ids: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(rows.len(), batches.len() * RECORDS_PER_BATCH, "row count");
    assert_eq!(ids, expected_ids(&batches), "the set of ids");
    for (id, data) in &rows {
        assert_eq!(data["_sluice_id"].as_str(), Some(id.as_str()));
        assert!(data["i"].is_u64() && data["user"]["n"].is_u64());
    }
    assert_metrics(&app, "postgres").await;
    pool.close().await;
    app.shutdown().await;
    sluice_store::testing::drop_postgres_database(&db_url)
        .await
        .unwrap();
}

/// Mapped columns with DO UPDATE, and a permanent error (a column the table
/// does not have) that fails the batch at once with the reason instead of
/// retrying it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_mapped_columns_and_permanent_errors() {
    let Some(base) = sluice_store::testing::test_database_url() else {
        eprintln!("SLUICE_TEST_DATABASE_URL is not set; PostgreSQL destination test not run");
        return;
    };
    let db_url = sluice_store::testing::fresh_postgres_url(&base)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    sqlx::query("CREATE TABLE mapped (id text PRIMARY KEY, n bigint, tag text, u jsonb)")
        .execute(&pool)
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&db_url).unwrap();
    url.set_query(None);
    let app = app().await;
    let pipeline = app
        .create_pipeline(json!({"name": "pg-mapped", "destination": {
            "type": "postgres", "url": url.as_str(), "sslmode": "disable", "table": "public.mapped",
            "columns": {"n": "/i", "tag": "/tag", "u": "/user"}, "on_conflict": "update"}}))
        .await;
    let b = submit(&app, &pipeline, "mapped").await;
    let done = app.wait_batch(&pipeline, &b).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (count, sum): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(n)::bigint FROM mapped WHERE tag = 'mapped'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(count, RECORDS_PER_BATCH as i64);
    assert_eq!(sum, Some((0..RECORDS_PER_BATCH as i64).sum()));
    let u: Value = sqlx::query_scalar("SELECT u FROM mapped WHERE id = $1")
        .bind(format!("{b}:8:0"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(u, json!({"n": 1}));

    // A column that does not exist: permanent, failed on the first attempt.
    let bad = app
        .create_pipeline(json!({"name": "pg-bad", "destination": {
            "type": "postgres", "url": url.as_str(), "sslmode": "disable", "table": "mapped",
            "columns": {"nope": "/i"}}}))
        .await;
    let b = submit(&app, &bad, "bad").await;
    let done = app.wait_batch(&bad, &b).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["attempts"], 1,
        "permanent errors are not retried: {done}"
    );
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("postgres destination") && error.contains("42703"),
        "{error}"
    );

    // A password inside the URL is refused, pointing at the field.
    let r = app
        .post(
            "/api/v1/pipelines",
            json!({"name": "pg-pw", "destination": {"type": "postgres",
                "url": "postgres://u:secret@127.0.0.1/db", "table": "t"}}),
        )
        .await
        .expect(400);
    assert!(
        r.body.to_string().contains("/destination/url"),
        "{}",
        r.body
    );
    assert!(!r.body.to_string().contains("secret@"), "{}", r.body);
    pool.close().await;
    app.shutdown().await;
    sluice_store::testing::drop_postgres_database(&db_url)
        .await
        .unwrap();
}

// -------------------------------------------------------------- clickhouse

/// A ClickHouse server of its own: a temp data dir, free ports.
struct ClickHouse {
    child: tokio::process::Child,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ClickHouse {
    async fn start() -> ClickHouse {
        let binary = ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("clickhouse-server is missing: run scripts/install-test-deps.sh");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let (http, tcp) = (free_port(), free_port());
        let users = std::fs::read_to_string("/etc/clickhouse-server/users.xml")
            .expect("/etc/clickhouse-server/users.xml (clickhouse-server package)");
        std::fs::write(dir.path().join("users.xml"), users).unwrap();
        std::fs::write(
            dir.path().join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
</yandex>
"#
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config-file={d}/config.xml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let ch = ClickHouse {
            child,
            http: format!("127.0.0.1:{http}").parse().unwrap(),
            _dir: dir,
        };
        for _ in 0..300 {
            if let Ok(v) = ch.query("SELECT 1").await
                && v.trim() == "1"
            {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("clickhouse-server did not start");
    }

    async fn query(&self, sql: &str) -> Result<String, String> {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/", self.http))
            .body(sql.to_owned())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if ok { Ok(text) } else { Err(text) }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_outage_delivers_every_record_once() {
    let ch = ClickHouse::start().await;
    let version = ch.query("SELECT version()").await.unwrap();
    let proxy = ChaosProxy::start(ch.http).await;
    let app = app().await;
    let destination = with_resilience(json!({
        "type": "clickhouse",
        "url": format!("http://{}", proxy.addr),
        "table": "events",
        "create_table": true,
    }));
    let pipeline = app
        .create_pipeline(json!({"name": "ch", "destination": destination}))
        .await;
    let batches = outage_script(&app, &proxy, &pipeline, "clickhouse").await;

    // Exactly once as ClickHouse defines it: one row per id once
    // ReplacingMergeTree has collapsed retried inserts (FINAL).
    let ids_text = ch
        .query("SELECT id FROM default.events FINAL FORMAT TabSeparated")
        .await
        .unwrap();
    let ids: Vec<&str> = ids_text.lines().collect();
    let set: BTreeSet<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        ids.len(),
        batches.len() * RECORDS_PER_BATCH,
        "rows with FINAL"
    );
    assert_eq!(set, expected_ids(&batches), "the set of ids");
    let raw: usize = ch
        .query("SELECT count() FROM default.events")
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "clickhouse {}: {} rows before merging, {} with FINAL",
        version.trim(),
        raw,
        ids.len()
    );
    // After OPTIMIZE … FINAL the table itself holds one row per id.
    ch.query("OPTIMIZE TABLE default.events FINAL")
        .await
        .unwrap();
    let merged: usize = ch
        .query("SELECT count() FROM default.events")
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(merged, batches.len() * RECORDS_PER_BATCH);
    let data = ch
        .query(&format!(
            "SELECT data FROM default.events FINAL WHERE id = '{}:7:0' FORMAT TabSeparatedRaw",
            batches[1]
        ))
        .await
        .unwrap();
    let record: Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(record["i"], 7);
    assert_metrics(&app, "clickhouse").await;
    app.shutdown().await;
}

// ---------------------------------------------------------------- s3s-fs

struct S3Server {
    child: tokio::process::Child,
    addr: SocketAddr,
    root: tempfile::TempDir,
}

const S3_KEY: &str = "sluice-test-key";
const S3_SECRET: &str = "sluice-test-secret";

impl S3Server {
    async fn start(bucket: &str) -> S3Server {
        let tools = std::env::var_os("SLUICE_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/sluice/tools")
            });
        let binary = tools.join("bin/s3s-fs");
        assert!(
            binary.exists(),
            "{} is missing: run scripts/install-test-deps.sh",
            binary.display()
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let port = free_port();
        let child = tokio::process::Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return S3Server { child, addr, root };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("s3s-fs did not start");
    }

    /// Every stored object under the bucket: relative key → bytes.
    fn objects(&self, bucket: &str) -> Vec<(String, Vec<u8>)> {
        let base = self.root.path().join(bucket);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let key = p
                        .strip_prefix(&base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.push((key, std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_outage_delivers_every_record_once() {
    let s3 = S3Server::start("sluice").await;
    let proxy = ChaosProxy::start(s3.addr).await;
    let app = app().await;
    let destination = with_resilience(json!({
        "type": "object_store",
        "bucket": "sluice",
        "endpoint": format!("http://{}", proxy.addr),
        "allow_http": true,
        "access_key_id": S3_KEY,
        "secret_access_key": S3_SECRET,
    }));
    let pipeline = app
        .create_pipeline(json!({"name": "s3", "destination": destination}))
        .await;
    let batches = outage_script(&app, &proxy, &pipeline, "object_store").await;

    let objects: Vec<(String, Vec<u8>)> = s3
        .objects("sluice")
        .into_iter()
        .filter(|(k, _)| k.ends_with(".ndjson.gz"))
        .collect();
    let parts = RECORDS_PER_BATCH.div_ceil(PART_RECORDS);
    assert_eq!(
        objects.len(),
        batches.len() * parts,
        "one object per part: {:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    let mut ids = Vec::new();
    for (key, body) in &objects {
        // {pipeline}/{date}/{batch}-{part}.ndjson.gz
        assert!(key.starts_with(&format!("{pipeline}/")), "{key}");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            ids.push(v["_sluice_id"].as_str().unwrap().to_owned());
        }
    }
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), batches.len() * RECORDS_PER_BATCH, "record count");
    assert_eq!(set, expected_ids(&batches), "the set of ids");
    assert_metrics(&app, "object_store").await;
    app.shutdown().await;
}
