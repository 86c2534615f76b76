//! The server's logs never carry personal data or secrets (R-PII-3): a run
//! at debug level that submits records full of canary PII — some passing,
//! some failing validation so they are captured — leaves none of the
//! canaries in the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, batch, create_pipeline, create_tenant};
use serde_json::json;
use std::time::{Duration, Instant};

const CANARIES: &[&str] = &[
    "canary.person@example.org",
    "4111 1111 1111 1111",
    "078-05-1120",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "hunter2-canary-password",
];

#[test]
fn logs_contain_no_canary_pii() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_, key) = create_tenant(&data, None);
    let log = dir.path().join("server.log");
    let env = vec![("SLUICE_LOG_LEVEL", "debug".to_owned())];
    let server = Server::start(&data, &env, "all", log.clone());
    let pipeline = create_pipeline(
        &server,
        &key,
        &json!({
            "name": "canaries",
            "processors": [
                {"type": "validate", "schema": {"type": "object", "required": ["ok"]}},
                {"type": "redact"}
            ],
            "destination": {"type": "file", "path": "c.ndjson"}
        }),
    );
    let mut body = String::new();
    for (i, canary) in CANARIES.iter().enumerate() {
        let ok = if i % 2 == 0 {
            json!(true)
        } else {
            serde_json::Value::Null
        };
        let mut record = json!({"message": format!("contact {canary} now"), "password": "hunter2-canary-password", "card": "4111 1111 1111 1111", "email": "canary.person@example.org"});
        if !ok.is_null() {
            record["ok"] = ok;
        }
        body.push_str(&record.to_string());
        body.push('\n');
    }
    // Canaries also in places a careless server might log: headers and the query.
    let http = common::client();
    let resp = http
        .post(server.url(&format!(
            "/api/v1/pipelines/{pipeline}/batches?email=canary.person@example.org"
        )))
        .header("x-api-key", &key)
        .header("content-type", "application/x-ndjson")
        .header("x-debug", "hunter2-canary-password")
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().unwrap();
    // The unknown query parameter is ignored by the ingest route.
    assert_eq!(status, 202, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = batch(&server, &key, &pipeline, &id);
        if b["status"] == "completed" {
            assert_eq!(b["failed_count"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "{b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A bad key is logged as a security event without the key itself.
    let bad_key = format!("slk_{}", "Z".repeat(43));
    let r = http
        .get(server.url("/api/v1/pipelines"))
        .header("x-api-key", &bad_key)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    server.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("batch completed"),
        "the log was not captured: {text}"
    );
    assert!(text.contains("authentication failed"));
    for canary in CANARIES.iter().chain([&bad_key.as_str(), &key.as_str()]) {
        assert!(!text.contains(canary), "{canary} leaked into the log");
    }
}
