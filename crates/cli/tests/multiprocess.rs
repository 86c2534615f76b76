//! Multi-process test on PostgreSQL (issue: ingestion): one API process
//! and two worker processes share one database and one payload store. The
//! worker holding a batch is killed mid-batch; the other finishes it after
//! the lease expires, with no duplicates at the destination.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, batch, create_pipeline, create_tenant, output_records};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn a_killed_workers_batch_is_finished_by_another() {
    let Some(base) = sluice_store::testing::test_database_url() else {
        eprintln!("SLUICE_TEST_DATABASE_URL is not set; multi-process test not run");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime
        .block_on(sluice_store::testing::fresh_postgres_url(&base))
        .expect("PostgreSQL from SLUICE_TEST_DATABASE_URL must be reachable");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (tenant_id, key) = create_tenant(&data, Some(&db));
    let common_env = vec![("SLUICE_DATABASE_URL", db.clone())];
    let mut worker_env = common_env.clone();
    worker_env.extend([
        ("SLUICE_WORKER__LEASE_SECS", "2".to_owned()),
        ("SLUICE_WORKER__POLL_INTERVAL_MS", "50".to_owned()),
        ("SLUICE_WORKER__PART_RECORDS", "200".to_owned()),
        ("SLUICE_WORKER__CONCURRENCY", "1".to_owned()),
        ("SLUICE_WORKER_THREADS", "1".to_owned()),
    ]);
    let api = Server::start(&data, &common_env, "api", dir.path().join("api.log"));
    let pipeline = create_pipeline(
        &api,
        &key,
        &json!({
            "name": "multi",
            "processors": [{"type": "map", "ops": [{"op": "upper", "path": "/s"}]}],
            "destination": {"type": "file", "path": "multi/out.ndjson"}
        }),
    );
    let n = 60_000u64;
    let mut body = Vec::new();
    for i in 0..n {
        body.extend_from_slice(
            json!({"i": i, "s": "abc", "pad": "y".repeat(100)})
                .to_string()
                .as_bytes(),
        );
        body.push(b'\n');
    }
    let r: serde_json::Value = common::client()
        .post(api.url(&format!("/api/v1/pipelines/{pipeline}/batches")))
        .header("x-api-key", &key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let batch_id = r["data"]["id"].as_str().unwrap().to_owned();
    // The API process alone never processes it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(batch(&api, &key, &pipeline, &batch_id)["status"], "pending");

    let out_dir = data.join("output").join(&tenant_id);
    let first = Server::start(&data, &worker_env, "worker", dir.path().join("w1.log"));
    // Wait until the first worker is part-way through, then kill it.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = output_records(&out_dir).len() as u64;
        if delivered >= 2_000 {
            assert!(
                delivered < n,
                "the first worker finished before it could be killed"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first worker delivered nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill();
    let b = batch(&api, &key, &pipeline, &batch_id);
    assert_eq!(b["status"], "processing", "{b}");

    let _second = Server::start(&data, &worker_env, "worker", dir.path().join("w2.log"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let done = loop {
        let b = batch(&api, &key, &pipeline, &batch_id);
        if b["status"] == "completed" {
            break b;
        }
        assert_ne!(b["status"], "failed", "{b}");
        assert!(
            Instant::now() < deadline,
            "the second worker did not finish: {b}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["succeeded_count"].as_u64().unwrap(), n);

    let out = output_records(&out_dir);
    assert_eq!(out.len() as u64, n, "every record exactly once");
    let indexes: HashSet<u64> = out.iter().map(|r| r["i"].as_u64().unwrap()).collect();
    assert_eq!(indexes.len() as u64, n);
    assert!(out.iter().all(|r| r["s"] == "ABC"));
    runtime.block_on(async {
        let _ = sluice_store::testing::drop_postgres_database(&db).await;
    });
}
