//! The attack suite, the parts that need the `sluice` binary (issue:
//! security hardening; the in-process part is
//! `crates/server/tests/attack.rs`):
//!
//! - canary secrets (in pipeline configs) and canary PII (in records) go
//!   through the whole server; afterwards none of them is in plaintext in
//!   the database, the data dir, the log or any API answer, except the
//!   masked form of the secret (R-SEC-1, R-SEC-2, R-PII);
//! - two API processes sharing Redis enforce one rate limit and one
//!   lockout (R-SEC-5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, batch, client, create_pipeline, create_tenant};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CANARY_SECRET: &str = "CanarySecret-7f3a9c1e5b2d4f60aa81-hunter2";
const CANARY_SECRET_2: &str = "CanaryS3cretAccessKey+0b9d2e71c4a8f6a5d3";
const CANARY_PII: &[&str] = &[
    "canary.victim.q7z@example.org",
    "4111 1111 1111 1111",
    "078-05-1120",
];

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every place a canary must not be, as (where, bytes).
fn evidence(
    data: &Path,
    log: &Path,
    answers: &[String],
    database_url: Option<&str>,
) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = files_under(data)
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read(&p).unwrap_or_default(),
            )
        })
        .collect();
    out.push(("log".into(), std::fs::read(log).unwrap()));
    for (i, a) in answers.iter().enumerate() {
        out.push((format!("API answer {i}"), a.as_bytes().to_vec()));
    }
    if let Some(url) = database_url {
        let dump = std::process::Command::new("pg_dump")
            .args(["--data-only", "--no-owner", url])
            .output()
            .expect("pg_dump (postgresql-client) is needed for the PostgreSQL variant");
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        out.push(("PostgreSQL dump".into(), dump.stdout));
    }
    out
}

fn canaries_stay_hidden(database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_, key) = create_tenant(&data, database_url.as_deref());
    let log = dir.path().join("server.log");
    let mut env = vec![("SLUICE_LOG_LEVEL", "debug".to_owned())];
    if let Some(url) = &database_url {
        env.push(("SLUICE_DATABASE_URL", url.clone()));
    }
    let server = Server::start(&data, &env, "all", log.clone());
    let http = client();
    let mut answers = Vec::new();
    let mut call = |req: reqwest::blocking::RequestBuilder| -> Value {
        let resp = req.header("x-api-key", &key).send().unwrap();
        let text = resp.text().unwrap();
        answers.push(text.clone());
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };

    // Secrets in destination configs.
    let secret_config = json!({
        "name": "secrets",
        "destination": {
            "type": "postgres",
            "url": "postgres://sluice@db.example.com:5432/app",
            "password": CANARY_SECRET,
            "table": "events"
        }
    });
    let r = call(
        http.post(server.url("/api/v1/pipelines"))
            .json(&secret_config),
    );
    let secret_pipeline = r["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("creating the pipeline with a secret failed: {r}"))
        .to_owned();
    let masked = r["data"]["config"]["destination"]["password"].clone();
    assert_eq!(
        masked,
        json!(format!("****{}", &CANARY_SECRET[CANARY_SECRET.len() - 4..])),
        "{r}"
    );
    // A second version with another secret, and the old one sent back
    // masked (which keeps it).
    let mut second = secret_config.clone();
    second["destination"]["password"] = json!(CANARY_SECRET_2);
    call(
        http.put(server.url(&format!("/api/v1/pipelines/{secret_pipeline}")))
            .json(&second),
    );
    let mut third = secret_config.clone();
    third["destination"]["password"] = masked;
    call(
        http.put(server.url(&format!("/api/v1/pipelines/{secret_pipeline}")))
            .json(&third),
    );
    call(http.post(server.url(&format!("/api/v1/pipelines/{secret_pipeline}/stop"))));
    call(http.get(server.url(&format!("/api/v1/pipelines/{secret_pipeline}"))));
    call(http.get(server.url(&format!("/api/v1/pipelines/{secret_pipeline}/versions"))));
    call(http.get(server.url("/api/v1/pipelines")));

    // PII in records: some delivered (redacted), some failing validation
    // (captured, redacted).
    let pipeline = create_pipeline(
        &server,
        &key,
        &json!({
            "name": "pii",
            "processors": [
                {"type": "validate", "schema": {"type": "object", "required": ["ok"]}},
                {"type": "redact"}
            ],
            "destination": {"type": "file", "path": "pii/out.ndjson"}
        }),
    );
    let mut body = String::new();
    for i in 0..10 {
        let mut record = json!({
            "email": CANARY_PII[0],
            "note": format!("card {} ssn {}", CANARY_PII[1], CANARY_PII[2]),
        });
        if i % 2 == 0 {
            record["ok"] = json!(true);
        }
        body.push_str(&record.to_string());
        body.push('\n');
    }
    let r = call(
        http.post(server.url(&format!("/api/v1/pipelines/{pipeline}/batches")))
            .header("content-type", "application/x-ndjson")
            .body(body),
    );
    let batch_id = r["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = batch(&server, &key, &pipeline, &batch_id);
        if b["status"] == "completed" || b["status"] == "failed" {
            assert_eq!(b["succeeded_count"], 5, "{b}");
            break;
        }
        assert!(Instant::now() < deadline, "the batch did not finish: {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = call(http.get(server.url(&format!(
        "/api/v1/pipelines/{pipeline}/batches/{batch_id}/errors"
    ))));
    assert_eq!(r["data"].as_array().map(Vec::len), Some(5), "{r}");
    call(http.get(server.url("/api/v1/audit")));
    let status = server.terminate();
    assert!(status.success());

    let mut leaks = Vec::new();
    for (place, bytes) in evidence(&data, &log, &answers, database_url.as_deref()) {
        for canary in [CANARY_SECRET, CANARY_SECRET_2].iter().chain(CANARY_PII) {
            if contains(&bytes, canary) {
                leaks.push(format!("{canary:?} in {place}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "plaintext canaries found:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn canary_secrets_and_pii_are_never_stored_or_shown_in_plaintext_sqlite() {
    canaries_stay_hidden(None);
}

#[test]
fn canary_secrets_and_pii_are_never_stored_or_shown_in_plaintext_postgres() {
    let Some(base) = sluice_store::testing::test_database_url() else {
        eprintln!("SLUICE_TEST_DATABASE_URL is not set; PostgreSQL variant not run");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime
        .block_on(sluice_store::testing::fresh_postgres_url(&base))
        .expect("PostgreSQL from SLUICE_TEST_DATABASE_URL must be reachable");
    canaries_stay_hidden(Some(db));
}

fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[test]
fn two_api_processes_share_rate_limits_and_lockouts_through_redis() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_, key) = create_tenant(&data, None);
    let prefix = format!("sluice-test:{}:", uuid::Uuid::now_v7());
    let env = vec![
        ("SLUICE_REDIS_URL", redis_url()),
        ("SLUICE_REDIS__KEY_PREFIX", prefix),
        ("SLUICE_RATE_LIMITS__ENABLED", "true".to_owned()),
        ("SLUICE_RATE_LIMITS__MANAGEMENT_PER_MIN", "4".to_owned()),
        ("SLUICE_LOCKOUT__ENABLED", "true".to_owned()),
        ("SLUICE_LOCKOUT__MAX_FAILURES", "3".to_owned()),
        ("SLUICE_LOCKOUT__DURATION_SECS", "60".to_owned()),
    ];
    let a = Server::start(&data, &env, "api", dir.path().join("a.log"));
    let b = Server::start(&data, &env, "api", dir.path().join("b.log"));
    let http = client();
    let get = |server: &Server, key: &str| {
        http.get(server.url("/api/v1/pipelines"))
            .header("x-api-key", key)
            .send()
            .unwrap()
    };
    let mut remaining = Vec::new();
    for server in [&a, &b, &a, &b] {
        let r = get(server, &key);
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "4");
        remaining.push(
            r.headers()["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["3", "2", "1", "0"]);
    for server in [&a, &b] {
        let r = get(server, &key);
        assert_eq!(r.status().as_u16(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((10..=15).contains(&retry), "Retry-After {retry}");
        assert_eq!(r.headers()["ratelimit-remaining"], "0");
        let body: Value = r.json().unwrap();
        assert_eq!(body["error"]["code"], "RATE_LIMITED");
    }
    // Failed authentications on both processes add up to one lockout.
    for server in [&a, &b] {
        assert_eq!(get(server, "slk_wrong").status().as_u16(), 401);
    }
    let r = get(&a, "slk_wrong");
    assert_eq!(r.status().as_u16(), 429);
    // The other process refuses the address too, even with a valid key.
    let r = http
        .get(b.url("/api/v1/keys"))
        .header("x-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    drop(a);
    drop(b);
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"security_event\":\"auth.lockout\"")),
        "no lockout security event in the log"
    );
}
