//! Black-box batch tests (issue: ingestion): records flow from HTTP to the
//! file destination exactly once, failed records are kept with their
//! indexes, and every limit and bad body is refused with nothing stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, Options, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Write;

backend_tests!(
    every_format_and_encoding_is_delivered_once,
    ten_thousand_records_with_failures,
    idempotency_replay_and_conflict,
    limits_and_malformed_bodies_store_nothing,
    paused_pipelines_keep_batches_until_started,
    fail_batch_delivers_nothing,
    failed_batches_can_be_retried,
    full_queues_answer_429,
);

fn ndjson(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).unwrap();
        out.push(b'\n');
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn events(n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"i": i, "tag": tag, "level": "info", "service": "web", "debug": true}))
        .collect()
}

fn reference_pipeline(name: &str) -> Value {
    json!({
        "name": name,
        "processors": [
            {"type": "validate", "schema": {"type": "object", "required": ["i"]}},
            {"type": "map", "ops": [
                {"op": "remove", "path": "/debug"},
                {"op": "add", "path": "/pipeline", "value": "web"},
                {"op": "move", "from": "/level", "path": "/severity"},
                {"op": "upper", "path": "/service"}
            ]}
        ],
        "destination": {"type": "file", "path": format!("events/{name}.ndjson")}
    })
}

async fn every_format_and_encoding_is_delivered_once(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(reference_pipeline("formats")).await;
    let one = events(1, "one");
    let array = events(3, "array");
    let nd = events(4, "ndjson");
    let gz = events(5, "gzip");
    let zs = events(6, "zstd");
    let mut batches = Vec::new();
    for (ct, enc, body) in [
        ("application/x-ndjson", None, ndjson(&one)),
        (
            "application/json",
            None,
            serde_json::to_vec_pretty(&array).unwrap(),
        ),
        ("application/x-ndjson", None, ndjson(&nd)),
        ("application/x-ndjson", Some("gzip"), gzip(&ndjson(&gz))),
        (
            "application/json",
            Some("zstd"),
            zstd::encode_all(&serde_json::to_vec(&zs).unwrap()[..], 3).unwrap(),
        ),
    ] {
        let r = app.submit(&id, ct, enc, None, body).await.expect(202);
        assert_eq!(r.data()["status"], "pending");
        batches.push((
            r.data()["id"].as_str().unwrap().to_owned(),
            r.data()["record_count"].as_i64().unwrap(),
        ));
    }
    assert_eq!(
        batches.iter().map(|b| b.1).collect::<Vec<_>>(),
        vec![1, 3, 4, 5, 6]
    );
    for (batch, count) in &batches {
        let done = app.wait_batch(&id, batch).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["succeeded_count"].as_i64().unwrap(), *count);
        assert_eq!(done["failed_count"], 0);
        assert!(done["started_at"].is_string() && done["completed_at"].is_string());
    }
    let out = app.output_records();
    assert_eq!(out.len(), 19);
    let ids: HashSet<&str> = out
        .iter()
        .map(|r| r["_sluice_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 19, "every record id is unique");
    for r in &out {
        assert!(r.get("debug").is_none());
        assert_eq!(r["pipeline"], "web");
        assert_eq!(r["severity"], "info");
        assert_eq!(r["service"], "WEB");
        assert!(r.get("level").is_none());
    }
    // Record ids follow {batch_id}:{index}:{n}.
    let (first_batch, _) = &batches[1];
    for i in 0..3 {
        assert!(ids.contains(format!("{first_batch}:{i}:0").as_str()));
    }
    let r = app
        .get(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200);
    assert_eq!(r.data()["metrics"]["records_processed"], 19);
    assert!(r.data()["metrics"]["latency_ms"]["p99"].is_i64());
    assert!(r.data()["metrics"]["last_run_at"].is_string());
    // The same facts in /metrics, per pipeline.
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "sluice_records_processed_total",
        "sluice_batch_latency_seconds_bucket",
        "sluice_pipeline_last_run_timestamp_seconds",
        "sluice_ingest_records_total",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name)
                    && (name.starts_with("sluice_ingest") || l.contains(&id))),
            "{name} for {id} missing from /metrics"
        );
    }
    app.shutdown().await;
}

async fn ten_thousand_records_with_failures(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(reference_pipeline("tenk")).await;
    // Every 1000th record lacks the required field (and carries an email
    // that must not appear in the capture).
    let records: Vec<Value> = (0..10_000)
        .map(|i| {
            if i % 1000 == 999 {
                json!({"n": i, "contact": "jane.doe@example.com", "service": "web"})
            } else {
                json!({"i": i, "service": "web", "level": "warn", "debug": false})
            }
        })
        .collect();
    let r = app
        .submit(&id, "application/x-ndjson", None, None, ndjson(&records))
        .await
        .expect(202);
    let batch = r.data()["id"].as_str().unwrap().to_owned();
    let done = app.wait_batch(&id, &batch).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["record_count"], 10_000);
    assert_eq!(done["succeeded_count"], 9_990);
    assert_eq!(done["failed_count"], 10);
    let out = app.output_records();
    assert_eq!(out.len(), 9_990);
    let got: HashSet<i64> = out.iter().map(|r| r["i"].as_i64().unwrap()).collect();
    assert_eq!(got.len(), 9_990);
    // Failed records, paged by record index.
    let mut failures = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/api/v1/pipelines/{id}/batches/{batch}/errors?limit=4"),
            Some(c) => format!("/api/v1/pipelines/{id}/batches/{batch}/errors?limit=4&cursor={c}"),
        };
        let r = app.get(&path).await.expect(200);
        failures.extend(r.data().as_array().unwrap().iter().cloned());
        match r.body["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let indexes: Vec<i64> = failures
        .iter()
        .map(|f| f["record_index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, (0..10).map(|k| k * 1000 + 999).collect::<Vec<_>>());
    for f in &failures {
        assert_eq!(f["processor_index"], 0);
        assert_eq!(f["processor_type"], "validate");
        assert_eq!(f["code"], "SCHEMA_VALIDATION_FAILED");
        assert!(f["record"].is_object());
        assert!(
            !f.to_string().contains("jane.doe@example.com"),
            "capture not redacted: {f}"
        );
    }
    app.shutdown().await;
}

async fn idempotency_replay_and_conflict(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(reference_pipeline("idem")).await;
    let body = ndjson(&events(3, "idem"));
    let first = app
        .submit(
            &id,
            "application/x-ndjson",
            None,
            Some("order-42"),
            body.clone(),
        )
        .await
        .expect(202);
    let batch = first.data()["id"].as_str().unwrap().to_owned();
    // Same key, same content (even compressed): the original batch, 200.
    let again = app
        .submit(
            &id,
            "application/x-ndjson",
            None,
            Some("order-42"),
            body.clone(),
        )
        .await
        .expect(200);
    assert_eq!(again.data()["id"], json!(batch));
    let gz = app
        .submit(
            &id,
            "application/x-ndjson",
            Some("gzip"),
            Some("order-42"),
            gzip(&body),
        )
        .await
        .expect(200);
    assert_eq!(gz.data()["id"], json!(batch));
    // Same key, different body: 409.
    let other = ndjson(&events(4, "other"));
    app.submit(&id, "application/x-ndjson", None, Some("order-42"), other)
        .await
        .expect_error(409, "IDEMPOTENCY_CONFLICT");
    // Only one batch exists, delivered once.
    app.wait_batch(&id, &batch).await;
    let r = app
        .get(&format!("/api/v1/pipelines/{id}/batches"))
        .await
        .expect(200);
    assert_eq!(r.data().as_array().unwrap().len(), 1);
    assert_eq!(app.output_records().len(), 3);
    // A bad key is refused.
    app.submit(
        &id,
        "application/x-ndjson",
        None,
        Some(&"k".repeat(300)),
        body,
    )
    .await
    .expect_error(400, "BAD_REQUEST");
    app.shutdown().await;
}

async fn limits_and_malformed_bodies_store_nothing(b: Backend) {
    let app = spawn_app_with(
        b,
        Options {
            tweak: Box::new(|c| {
                c.limits.max_body_bytes = 4096;
                c.limits.max_record_bytes = 200;
                c.limits.max_records = 5;
                c.limits.max_depth = 4;
            }),
        },
    )
    .await;
    let id = app.create_pipeline(reference_pipeline("limits")).await;
    let nd = "application/x-ndjson";
    // (content type, encoding, body, status, code, what the message names)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            nd,
            None,
            vec![b'{'; 0]
                .into_iter()
                .chain(format!("{{\"a\":\"{}\"}}\n", "x".repeat(10_000)).into_bytes())
                .collect(),
            413,
            "PAYLOAD_TOO_LARGE",
            "max_body_bytes",
        ),
        (
            nd,
            None,
            format!("{{\"a\":\"{}\"}}\n", "x".repeat(300)).into_bytes(),
            413,
            "RECORD_TOO_LARGE",
            "max_record_bytes",
        ),
        (
            nd,
            None,
            "{}\n".repeat(6).into_bytes(),
            413,
            "TOO_MANY_RECORDS",
            "max_records",
        ),
        (
            nd,
            None,
            b"{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":1}}}}}\n".to_vec(),
            400,
            "NESTING_TOO_DEEP",
            "max_depth",
        ),
        (
            nd,
            None,
            b"{\"a\":1}\n{\"a\":2}\n{\"a\":\n".to_vec(),
            400,
            "MALFORMED_BODY",
            "line 3",
        ),
        (
            nd,
            None,
            b"{\"a\":1}\n[1,2]\n".to_vec(),
            400,
            "MALFORMED_BODY",
            "line 2",
        ),
        (
            "application/json",
            None,
            b"{\"a\":1}".to_vec(),
            400,
            "MALFORMED_BODY",
            "array",
        ),
        (
            "application/json",
            None,
            b"[{\"a\":1},\n{\"a\":2}\n".to_vec(),
            400,
            "MALFORMED_BODY",
            "end of input",
        ),
        (
            nd,
            Some("gzip"),
            b"not gzip at all".to_vec(),
            400,
            "MALFORMED_BODY",
            "decompress",
        ),
        (
            nd,
            Some("br"),
            b"{}".to_vec(),
            415,
            "UNSUPPORTED_ENCODING",
            "br",
        ),
        (
            "text/csv",
            None,
            b"a,b".to_vec(),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "application/x-ndjson",
        ),
        (nd, None, b"\n\n".to_vec(), 400, "BAD_REQUEST", "no records"),
    ];
    for (ct, enc, body, status, code, mentions) in cases {
        let r = app.submit(&id, ct, enc, None, body).await;
        let r = r.expect_error(status, code);
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{code}: {message}");
    }
    // A compressed body is limited by its decompressed size.
    let bomb = gzip(&"{}\n".repeat(100_000).into_bytes());
    assert!(bomb.len() < 4096);
    app.submit(&id, nd, Some("gzip"), None, bomb)
        .await
        .expect_error(413, "PAYLOAD_TOO_LARGE");
    // Nothing was stored: no batch, no payload object.
    let r = app
        .get(&format!("/api/v1/pipelines/{id}/batches"))
        .await
        .expect(200);
    assert!(r.data().as_array().unwrap().is_empty());
    let mut leftovers = Vec::new();
    let payloads = app.dir.path().join("payloads");
    for entry in walk(&payloads) {
        leftovers.push(entry);
    }
    assert!(leftovers.is_empty(), "payloads left behind: {leftovers:?}");
    app.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn paused_pipelines_keep_batches_until_started(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(reference_pipeline("paused")).await;
    app.post(&format!("/api/v1/pipelines/{id}/stop"), json!({}))
        .await
        .expect(200);
    let mut batches = Vec::new();
    for k in 0..3 {
        let r = app
            .submit(
                &id,
                "application/x-ndjson",
                None,
                None,
                ndjson(&events(2, &format!("b{k}"))),
            )
            .await
            .expect(202);
        batches.push(r.data()["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for batch in &batches {
        let r = app
            .get(&format!("/api/v1/pipelines/{id}/batches/{batch}"))
            .await
            .expect(200);
        assert_eq!(r.data()["status"], "pending");
    }
    let r = app
        .get(&format!("/api/v1/pipelines/{id}/batches?status=pending"))
        .await
        .expect(200);
    assert_eq!(r.data().as_array().unwrap().len(), 3);
    assert!(app.output_records().is_empty());
    app.post(&format!("/api/v1/pipelines/{id}/start"), json!({}))
        .await
        .expect(200);
    let mut started = Vec::new();
    for batch in &batches {
        let done = app.wait_batch(&id, batch).await;
        assert_eq!(done["status"], "completed");
        started.push(done["started_at"].as_str().unwrap().to_owned());
    }
    // Oldest-first claim order is asserted by the store suite's claim
    // tests; started_at here is each claim transaction's own clock
    // (PostgreSQL's now()), so concurrent claims may stamp out of order.
    assert_eq!(started.len(), 3);
    assert_eq!(app.output_records().len(), 6);
    app.shutdown().await;
}

async fn fail_batch_delivers_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let mut cfg = reference_pipeline("strict");
    cfg["on_error"] = json!("fail_batch");
    let id = app.create_pipeline(cfg).await;
    let mut records = events(50, "strict");
    records[17] = json!({"no_i": true});
    let r = app
        .submit(&id, "application/x-ndjson", None, None, ndjson(&records))
        .await
        .expect(202);
    let batch = r.data()["id"].as_str().unwrap().to_owned();
    let done = app.wait_batch(&id, &batch).await;
    assert_eq!(done["status"], "failed");
    assert!(done["error"].as_str().unwrap().contains("fail_batch"));
    assert_eq!(done["failed_count"], 1);
    assert!(app.output_records().is_empty());
    let r = app
        .get(&format!("/api/v1/pipelines/{id}/batches/{batch}/errors"))
        .await
        .expect(200);
    assert_eq!(r.data()[0]["record_index"], 17);
    // A clean batch goes through.
    let r = app
        .submit(
            &id,
            "application/x-ndjson",
            None,
            None,
            ndjson(&events(5, "ok")),
        )
        .await
        .expect(202);
    let ok = r.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.wait_batch(&id, &ok).await["status"], "completed");
    assert_eq!(app.output_records().len(), 5);
    app.shutdown().await;
}

async fn failed_batches_can_be_retried(b: Backend) {
    let app = spawn_app(b).await;
    let mut cfg = reference_pipeline("retry");
    cfg["on_error"] = json!("fail_batch");
    let id = app.create_pipeline(cfg).await;
    let records = vec![events(1, "fine").remove(0), json!({"x": 2, "debug": true})];
    let r = app
        .submit(&id, "application/x-ndjson", None, None, ndjson(&records))
        .await
        .expect(202);
    let batch = r.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.wait_batch(&id, &batch).await["status"], "failed");
    // Retrying a completed or pending batch is refused; a failed one re-runs.
    let r = app
        .submit(
            &id,
            "application/x-ndjson",
            None,
            None,
            ndjson(&events(1, "ok")),
        )
        .await
        .expect(202);
    let good = r.data()["id"].as_str().unwrap().to_owned();
    app.wait_batch(&id, &good).await;
    app.post(
        &format!("/api/v1/pipelines/{id}/batches/{good}/retry"),
        json!({}),
    )
    .await
    .expect_error(409, "INVALID_BATCH_STATE");
    // The retried batch keeps its config version, so it fails the same way.
    let r = app
        .post(
            &format!("/api/v1/pipelines/{id}/batches/{batch}/retry"),
            json!({}),
        )
        .await
        .expect(200);
    assert_eq!(r.data()["status"], "pending");
    assert_eq!(r.data()["failed_count"], 0);
    let done = app.wait_batch(&id, &batch).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["config_version"], 1);
    let r = app
        .get(&format!("/api/v1/pipelines/{id}/batches/{batch}/errors"))
        .await
        .expect(200);
    assert_eq!(
        r.data().as_array().unwrap().len(),
        1,
        "errors of the earlier attempt are not duplicated"
    );
    let ghost = uuid::Uuid::now_v7();
    app.post(
        &format!("/api/v1/pipelines/{id}/batches/{ghost}/retry"),
        json!({}),
    )
    .await
    .expect_error(404, "BATCH_NOT_FOUND");
    app.shutdown().await;
}

async fn full_queues_answer_429(b: Backend) {
    let app = spawn_app_with(
        b,
        Options {
            tweak: Box::new(|c| c.limits.max_queue_bytes_per_pipeline = 100),
        },
    )
    .await;
    let id = app.create_pipeline(reference_pipeline("queue")).await;
    app.post(&format!("/api/v1/pipelines/{id}/stop"), json!({}))
        .await
        .expect(200);
    app.submit(
        &id,
        "application/x-ndjson",
        None,
        None,
        ndjson(&events(1, "a")),
    )
    .await
    .expect(202);
    let r = app
        .submit(
            &id,
            "application/x-ndjson",
            None,
            None,
            ndjson(&events(2, "b")),
        )
        .await;
    let r = r.expect_error(429, "QUEUE_FULL");
    assert!(r.headers.get("retry-after").is_some());
    // Draining the queue makes room again; the accepted batch is delivered.
    app.post(&format!("/api/v1/pipelines/{id}/start"), json!({}))
        .await
        .expect(200);
    for _ in 0..100 {
        let r = app
            .get(&format!("/api/v1/pipelines/{id}"))
            .await
            .expect(200);
        if r.data()["metrics"]["queue_depth"]["batches"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.submit(
        &id,
        "application/x-ndjson",
        None,
        None,
        ndjson(&events(1, "c")),
    )
    .await
    .expect(202);
    app.shutdown().await;
}

/// One million records, gzip-compressed NDJSON, from HTTP to the file
/// destination: every record exactly once, in parts named by index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_records_arrive_exactly_once() {
    let app = spawn_app(Backend::Sqlite).await;
    let id = app
        .create_pipeline(json!({
            "name": "million",
            "processors": [{"type": "map", "ops": [{"op": "remove", "path": "/debug"}]}],
            "destination": {"type": "file", "path": "m/out.ndjson"}
        }))
        .await;
    let n = 1_000_000u64;
    let mut body = Vec::with_capacity(40 * n as usize);
    for i in 0..n {
        writeln!(body, "{{\"i\":{i},\"debug\":true}}").unwrap();
    }
    let r = app
        .submit(&id, "application/x-ndjson", Some("gzip"), None, gzip(&body))
        .await
        .expect(202);
    assert_eq!(r.data()["record_count"], n);
    let batch = r.data()["id"].as_str().unwrap().to_owned();
    let done = app.wait_batch(&id, &batch).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["succeeded_count"], n);
    let out = app.output_records();
    assert_eq!(out.len() as u64, n);
    let mut seen = vec![false; n as usize];
    for r in &out {
        let i = r["i"].as_u64().unwrap() as usize;
        assert!(!seen[i], "record {i} delivered twice");
        seen[i] = true;
        assert!(r.get("debug").is_none());
        assert_eq!(r["_sluice_id"], json!(format!("{batch}:{i}:0")));
    }
    app.shutdown().await;
}
