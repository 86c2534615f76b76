//! Security at rest (issue 7, part A; R-SEC-1, 2, 7, 8), against a running
//! server on both backends: secret config fields and failed-record
//! captures never reach the database in plaintext and are masked in every
//! response; payload files hold no plaintext; master key rotation keeps
//! every pipeline building and delivering; the audit chain catches a row
//! modified in the database; erasure leaves nothing of a tenant; and
//! retention removes exactly what has expired.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use chrono::{Duration as ChronoDuration, Utc};
use common::{Backend, Options, TestApp, create_tenant, file_pipeline, spawn_app, spawn_app_with};
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sluice_config::server::RetentionConfig;
use sluice_server::keyring::{Keyring, MasterKey};
use sluice_store::testing::raw_statement;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

backend_tests!(
    secrets_and_captures_are_encrypted_and_masked,
    master_key_rotation_keeps_pipelines_working,
    audit_chain_detects_tampering_and_filters,
    erasure_leaves_nothing_of_the_tenant,
    retention_removes_expired_data,
);

const SECRET: &str = "whsec-CANARY-3b7e9f21d4c8";
const RECORD_CANARY: &str = "RECORD-CANARY-5d2c";

/// A webhook receiver that keeps every request's signature and body.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let seen: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let sink = seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let sink = sink.clone();
                async move {
                    let signature = headers
                        .get("x-webhook-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    sink.lock().unwrap().push((signature, body));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook"),
            seen,
        }
    }

    fn requests(&self) -> Vec<(String, Bytes)> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request so far is signed with `secret` (so the worker built
    /// the destination with the decrypted secret, not its stored form).
    fn all_signed_with(&self, secret: &str) -> usize {
        let requests = self.requests();
        for (signature, body) in &requests {
            assert!(
                signed_with(signature, body, secret),
                "request not signed with the expected secret: {signature}"
            );
        }
        requests.len()
    }
}

fn signed_with(header: &str, body: &[u8], secret: &str) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        if let Some(x) = part.strip_prefix("t=") {
            t = Some(x);
        } else if let Some(x) = part.strip_prefix("v1=") {
            v1.push(x.to_owned());
        }
    }
    let Some(t) = t else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    v1.contains(&hex::encode(mac.finalize().into_bytes()))
}

fn allow_private() -> Options {
    Options {
        tweak: Box::new(|c| c.outbound.allow_private = true),
    }
}

fn webhook_pipeline(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "processors": [{"type": "validate", "schema": {"type": "object", "required": ["id"]}}],
        "destination": {"type": "webhook", "url": url, "allow_http": true, "secret": SECRET}
    })
}

fn ndjson(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).unwrap();
        out.push(b'\n');
    }
    out
}

fn records(tag: &str) -> Vec<Value> {
    vec![
        json!({"id": 1, "note": RECORD_CANARY, "tag": tag}),
        json!({"note": RECORD_CANARY, "tag": tag}),
        json!({"id": 3, "note": RECORD_CANARY, "tag": tag}),
    ]
}

async fn submit(app: &TestApp, pipeline: &str, body: Vec<u8>) -> String {
    let r = app
        .submit(pipeline, "application/x-ndjson", None, None, body)
        .await
        .expect(202);
    r.data()["id"].as_str().unwrap().to_owned()
}

fn state(app: &TestApp) -> &sluice_server::state::AppState {
    &app.server.as_ref().unwrap().state
}

fn database_url(app: &TestApp) -> String {
    state(app).config().database_url()
}

/// Stop the app's server and start another on the same database and
/// data directory.
async fn restart(app: &mut TestApp) {
    let server = app.server.take().unwrap();
    let config = server.state.config().clone();
    server.shutdown();
    server.wait().await;
    let server = sluice_server::start(config).await.unwrap();
    app.base = format!("http://{}", server.addr);
    app.server = Some(server);
}

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

/// Files under `dir` (database, WAL, payloads, ...) holding `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|bytes| contains(&bytes, needle)))
        .collect()
}

async fn payload_of(app: &TestApp, pipeline: &str, batch: &str) -> anyhow::Result<Vec<u8>> {
    let batch = state(app)
        .store()
        .get_batch(
            app.tenant_id,
            pipeline.parse().unwrap(),
            batch.parse().unwrap(),
        )
        .await?
        .unwrap();
    let chunks: Vec<Bytes> = state(app)
        .payloads()
        .read(&batch.payload_key)
        .await?
        .try_collect()
        .await?;
    Ok(chunks.concat())
}

// ---- cases ----

async fn secrets_and_captures_are_encrypted_and_masked(b: Backend) {
    let hook = Receiver::start().await;
    let app = spawn_app_with(b, allow_private()).await;
    let masked = "****d4c8";

    let created = app
        .post("/api/v1/pipelines", webhook_pipeline("signed", &hook.url))
        .await
        .expect(201);
    assert_eq!(created.data()["config"]["destination"]["secret"], masked);
    let id = created.data()["id"].as_str().unwrap().to_owned();

    // Every way of reading the config shows the masked form only.
    for path in [
        format!("/api/v1/pipelines/{id}"),
        "/api/v1/pipelines".to_owned(),
        format!("/api/v1/pipelines/{id}/versions"),
    ] {
        let r = app.get(&path).await.expect(200);
        let text = r.body.to_string();
        assert!(!text.contains(SECRET), "{path}: {text}");
        assert!(text.contains(masked), "{path}: {text}");
    }

    // Records flow, signed with the real secret; one is captured.
    let batch = submit(&app, &id, ndjson(&records("a"))).await;
    let done = app.wait_batch(&id, &batch).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["failed_count"], 1, "{done}");
    assert!(hook.all_signed_with(SECRET) >= 1);
    let errors = app
        .get(&format!("/api/v1/pipelines/{id}/batches/{batch}/errors"))
        .await
        .expect(200);
    assert_eq!(
        errors.data()[0]["record"],
        json!({"note": RECORD_CANARY, "tag": "a"}),
        "captures read back decrypted"
    );

    // Neither canary is in the database, nor in any file of the data dir.
    let url = database_url(&app);
    for (sql, what) in [
        (
            "SELECT COUNT(*) AS n FROM pipeline_versions WHERE CAST(config AS TEXT) LIKE '%CANARY%'",
            "pipeline_versions",
        ),
        (
            "SELECT COUNT(*) AS n FROM batch_errors WHERE CAST(record AS TEXT) LIKE '%CANARY%'",
            "batch_errors",
        ),
        (
            "SELECT COUNT(*) AS n FROM audit_events WHERE CAST(details AS TEXT) LIKE '%CANARY%'",
            "audit_events",
        ),
    ] {
        assert_eq!(raw_statement(&url, sql, None).await.unwrap(), 0, "{what}");
    }
    let encrypted = raw_statement(
        &url,
        "SELECT COUNT(*) AS n FROM pipeline_versions WHERE CAST(config AS TEXT) LIKE '%sluice:enc:v1:%'",
        None,
    )
    .await
    .unwrap();
    assert_eq!(encrypted, 1, "the stored secret is in the encrypted form");
    let sealed = raw_statement(
        &url,
        "SELECT COUNT(*) AS n FROM batch_errors WHERE CAST(record AS TEXT) LIKE '%sluice:enc:v1:%'",
        None,
    )
    .await
    .unwrap();
    assert_eq!(sealed, 1, "the capture is in the encrypted form");
    assert!(
        !files_under(&app.dir.path().join("payloads")).is_empty(),
        "the payload is stored"
    );
    for canary in [SECRET, RECORD_CANARY] {
        let found = files_containing(app.dir.path(), canary);
        assert!(found.is_empty(), "{canary} in plaintext in {found:?}");
    }
    if b == Backend::Sqlite {
        assert!(
            !files_containing(app.dir.path(), "sluice:enc:v1:").is_empty(),
            "the scan reads the database files"
        );
    }

    // A PUT that sends the masked secret back keeps the stored one.
    let mut config = app
        .get(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200)
        .data()["config"]
        .clone();
    config["name"] = json!("signed-v2");
    let updated = app
        .put(&format!("/api/v1/pipelines/{id}"), config.clone())
        .await
        .expect(200);
    assert_eq!(updated.data()["version"], 2);
    assert_eq!(updated.data()["config"]["destination"]["secret"], masked);
    let stored = state(&app)
        .store()
        .get_pipeline(app.tenant_id, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.config.to_string().contains(SECRET));
    let mut plain = stored.config.clone();
    sluice_server::secrets::decrypt_config(
        state(&app).keyring(),
        app.tenant_id,
        stored.id,
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain["destination"]["secret"], SECRET);
    let before = hook.requests().len();
    let batch = submit(&app, &id, ndjson(&records("b"))).await;
    assert_eq!(app.wait_batch(&id, &batch).await["status"], "completed");
    assert!(
        hook.all_signed_with(SECRET) > before,
        "version 2 still signs with the secret"
    );

    // A masked value that is not the stored secret's is refused.
    let mut wrong = config.clone();
    wrong["destination"]["secret"] = json!("****zzzz");
    let r = app
        .put(&format!("/api/v1/pipelines/{id}"), wrong)
        .await
        .expect_error(400, "VALIDATION_FAILED");
    assert!(
        r.body.to_string().contains("/destination/secret"),
        "{}",
        r.body
    );

    // A new secret replaces it.
    let mut replaced = config.clone();
    replaced["destination"]["secret"] = json!("another-secret-value-0042");
    let r = app
        .put(&format!("/api/v1/pipelines/{id}"), replaced)
        .await
        .expect(200);
    assert_eq!(r.data()["config"]["destination"]["secret"], "****0042");
    app.shutdown().await;
}

async fn master_key_rotation_keeps_pipelines_working(b: Backend) {
    let hook = Receiver::start().await;
    let mut app = spawn_app_with(b, allow_private()).await;
    let id = app
        .create_pipeline(webhook_pipeline("rotated", &hook.url))
        .await;
    // A batch processed under the old key (its capture is sealed with it),
    // and one waiting in the stopped pipeline (its payload is too).
    let zero = submit(&app, &id, ndjson(&records("zero"))).await;
    assert_eq!(app.wait_batch(&id, &zero).await["status"], "completed");
    app.post(&format!("/api/v1/pipelines/{id}/stop"), json!({}))
        .await
        .expect(200);
    let first_body = ndjson(&records("before"));
    let first = submit(&app, &id, first_body.clone()).await;
    let old_kid = state(&app).keyring().kid().to_owned();

    // Step 1: the new key becomes current, the old one is still accepted.
    let new = MasterKey::generate();
    Keyring::install_embedded(app.dir.path(), &new).unwrap();
    restart(&mut app).await;
    assert_eq!(
        state(&app).keyring().kids(),
        vec![new.kid().to_owned(), old_kid.clone()]
    );
    // Still running on old-key data: the stored secret and payload.
    app.post(&format!("/api/v1/pipelines/{id}/start"), json!({}))
        .await
        .expect(200);
    assert_eq!(app.wait_batch(&id, &first).await["status"], "completed");
    assert!(hook.all_signed_with(SECRET) >= 1);

    // Step 2: re-encrypt everything while the server runs.
    let s = state(&app);
    let report = sluice_server::secrets::rotate(s.store().as_ref(), s.payloads(), s.keyring())
        .await
        .unwrap();
    assert_eq!(report.kid, new.kid());
    assert_eq!(report.config_versions, 1, "{report:?}");
    assert_eq!(report.captures, 1, "{report:?}");
    assert_eq!(report.payloads, 2, "{report:?}");
    let again = sluice_server::secrets::rotate(s.store().as_ref(), s.payloads(), s.keyring())
        .await
        .unwrap();
    assert_eq!(
        (again.config_versions, again.captures, again.payloads),
        (0, 0, 0),
        "a second run finds nothing to do"
    );
    let url = database_url(&app);
    assert_eq!(
        raw_statement(
            &url,
            "SELECT COUNT(*) AS n FROM pipeline_versions WHERE CAST(config AS TEXT) LIKE '%sluice:enc:v1:%'",
            None
        )
        .await
        .unwrap(),
        1
    );
    let stored = s
        .store()
        .get_pipeline(app.tenant_id, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap()
        .config
        .to_string();
    assert!(
        stored.contains(&format!("sluice:enc:v1:{}:", new.kid())),
        "{stored}"
    );
    assert!(
        !stored.contains(&format!("sluice:enc:v1:{old_kid}:")),
        "{stored}"
    );
    let system = s.store().audit_chain(None, 0, 100).await.unwrap();
    assert!(system.iter().any(|e| e.action == "master_key.rotate"));

    // Step 3: the old key is gone; everything still works.
    std::fs::remove_file(app.dir.path().join("master.key.previous")).unwrap();
    restart(&mut app).await;
    assert_eq!(state(&app).keyring().kids(), vec![new.kid().to_owned()]);
    let before = hook.requests().len();
    let second = submit(&app, &id, ndjson(&records("after"))).await;
    assert_eq!(app.wait_batch(&id, &second).await["status"], "completed");
    assert!(hook.all_signed_with(SECRET) > before);
    assert_eq!(payload_of(&app, &id, &first).await.unwrap(), first_body);
    let errors = app
        .get(&format!("/api/v1/pipelines/{id}/batches/{first}/errors"))
        .await
        .expect(200);
    assert_eq!(errors.data()[0]["record"]["tag"], "before");
    let errors = app
        .get(&format!("/api/v1/pipelines/{id}/batches/{zero}/errors"))
        .await
        .expect(200);
    assert_eq!(
        errors.data()[0]["record"]["tag"],
        "zero",
        "a rotated capture"
    );
    let shown = app
        .get(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200);
    assert_eq!(shown.data()["config"]["destination"]["secret"], "****d4c8");
    app.shutdown().await;
}

async fn audit_chain_detects_tampering_and_filters(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(file_pipeline("audited")).await;
    let mut config = file_pipeline("audited-2");
    config["name"] = json!("audited-2");
    app.put(&format!("/api/v1/pipelines/{id}"), config)
        .await
        .expect(200);
    app.post(&format!("/api/v1/pipelines/{id}/stop"), json!({}))
        .await
        .expect(200);
    app.post(&format!("/api/v1/pipelines/{id}/start"), json!({}))
        .await
        .expect(200);
    let store = state(&app).store().clone();
    let report = sluice_server::audit::verify(store.as_ref(), Some(app.tenant_id))
        .await
        .unwrap();
    assert!(report.broken.is_empty(), "{report:?}");
    assert_eq!(report.events, 4, "{report:?}");

    // Filters and the chain fields in the API.
    let all = app.get("/api/v1/audit").await.expect(200);
    let items = all.data().as_array().unwrap().clone();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["seq"], 4, "newest first");
    assert_eq!(items[0]["hash"].as_str().unwrap().len(), 64);
    let updates = app
        .get("/api/v1/audit?action=pipeline.update")
        .await
        .expect(200);
    assert_eq!(updates.data().as_array().unwrap().len(), 1);
    assert_eq!(updates.data()[0]["action"], "pipeline.update");
    let actor = items[0]["actor_key_id"].as_str().unwrap().to_owned();
    let by_actor = app
        .get(&format!("/api/v1/audit?actor={actor}"))
        .await
        .expect(200);
    assert_eq!(by_actor.data().as_array().unwrap().len(), 4);
    let nobody = app
        .get(&format!("/api/v1/audit?actor={}", Uuid::now_v7()))
        .await
        .expect(200);
    assert!(nobody.data().as_array().unwrap().is_empty());
    let future =
        (Utc::now() + ChronoDuration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let past =
        (Utc::now() - ChronoDuration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (query, n) in [
        (format!("since={future}"), 0),
        (format!("until={past}"), 0),
        (format!("since={past}&until={future}"), 4),
        (format!("since={past}&action=pipeline.stop"), 1),
    ] {
        let r = app.get(&format!("/api/v1/audit?{query}")).await.expect(200);
        assert_eq!(r.data().as_array().unwrap().len(), n, "{query}");
    }
    let paged = app.get("/api/v1/audit?limit=3").await.expect(200);
    let cursor = paged.body["meta"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let rest = app
        .get(&format!("/api/v1/audit?limit=3&cursor={cursor}"))
        .await
        .expect(200);
    assert_eq!(rest.data().as_array().unwrap().len(), 1);
    for bad in ["since=yesterday", "actor=nobody", "action="] {
        app.get(&format!("/api/v1/audit?{bad}"))
            .await
            .expect_error(400, "INVALID_QUERY");
    }

    // A row changed directly in the database is found.
    let url = database_url(&app);
    let changed = raw_statement(
        &url,
        "UPDATE audit_events SET target = 'pipeline:forged' WHERE action = 'pipeline.update'",
        None,
    )
    .await
    .unwrap();
    assert_eq!(changed, 1);
    let report = sluice_server::audit::verify(store.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(report.broken.len(), 1, "{report:?}");
    let broken = &report.broken[0];
    assert_eq!(broken.tenant_id, Some(app.tenant_id));
    assert_eq!(broken.seq, Some(2));
    assert_eq!(
        broken.event_id.to_string(),
        updates.data()[0]["id"].as_str().unwrap()
    );
    assert!(broken.reason.contains("modified"), "{}", broken.reason);

    // So is a row removed from the middle of another tenant's chain.
    let (other, _) = create_tenant(app.server.as_ref().unwrap(), "other").await;
    for n in 0..3 {
        store
            .append_audit(sluice_store::NewAuditEvent {
                tenant_id: other,
                actor_key_id: None,
                action: "pipeline.start".into(),
                target: Some(format!("pipeline:{n}")),
                request_id: None,
                client_addr: None,
                details: json!({"n": n}),
            })
            .await
            .unwrap();
    }
    assert!(
        sluice_server::audit::verify(store.as_ref(), Some(other))
            .await
            .unwrap()
            .broken
            .is_empty()
    );
    let removed = raw_statement(
        &url,
        "DELETE FROM audit_events WHERE tenant_id = $1 AND seq = 2",
        Some(other),
    )
    .await
    .unwrap();
    assert_eq!(removed, 1);
    let report = sluice_server::audit::verify(store.as_ref(), Some(other))
        .await
        .unwrap();
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].seq, Some(3));
    assert!(
        report.broken[0].reason.contains("removed"),
        "{:?}",
        report.broken[0]
    );
    app.shutdown().await;
}

async fn erasure_leaves_nothing_of_the_tenant(b: Backend) {
    let app = spawn_app(b).await;
    let server = app.server.as_ref().unwrap();
    // Tenant A: a delivered batch with a capture and local output, and a
    // batch waiting in a stopped pipeline.
    let mut config = file_pipeline("erased");
    config["processors"] =
        json!([{"type": "validate", "schema": {"type": "object", "required": ["id"]}}]);
    let done_pipeline = app.create_pipeline(config).await;
    let done = submit(&app, &done_pipeline, ndjson(&records("a"))).await;
    assert_eq!(
        app.wait_batch(&done_pipeline, &done).await["status"],
        "completed"
    );
    let waiting_pipeline = app.create_pipeline(file_pipeline("waiting")).await;
    app.post(
        &format!("/api/v1/pipelines/{waiting_pipeline}/stop"),
        json!({}),
    )
    .await
    .expect(200);
    submit(&app, &waiting_pipeline, ndjson(&records("b"))).await;
    let output = app
        .dir
        .path()
        .join("output")
        .join(app.tenant_id.to_string());
    assert!(output.exists());
    let payloads = app.dir.path().join("payloads");
    assert!(payloads.join(app.tenant_id.to_string()).exists());

    // Tenant B, which must not be touched.
    let (other, other_key) = create_tenant(server, "other").await;
    let other_pipeline = app
        .call(
            reqwest::Method::POST,
            "/api/v1/pipelines",
            Some(&other_key),
            Some(file_pipeline("kept")),
        )
        .await
        .expect(201)
        .data()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_batch = app
        .submit_as(
            &other_key,
            &other_pipeline,
            "application/x-ndjson",
            None,
            None,
            ndjson(&records("c")),
        )
        .await
        .expect(202);
    let other_batch = other_batch.data()["id"].as_str().unwrap().to_owned();

    let s = &server.state;
    let report = sluice_server::retention::erase_tenant(
        s.store().as_ref(),
        s.payloads(),
        &app.dir.path().join("output"),
        app.tenant_id,
        "test",
    )
    .await
    .unwrap();
    assert_eq!(report.batches, 2, "{report:?}");
    assert!(report.output_removed);

    let url = database_url(&app);
    let t = Some(app.tenant_id);
    for sql in [
        "SELECT COUNT(*) AS n FROM tenants WHERE id = $1",
        "SELECT COUNT(*) AS n FROM api_keys WHERE tenant_id = $1",
        "SELECT COUNT(*) AS n FROM pipelines WHERE tenant_id = $1",
        "SELECT COUNT(*) AS n FROM batches WHERE tenant_id = $1",
        "SELECT COUNT(*) AS n FROM audit_events WHERE tenant_id = $1",
    ] {
        assert_eq!(raw_statement(&url, sql, t).await.unwrap(), 0, "{sql}");
    }
    for sql in [
        "SELECT COUNT(*) AS n FROM pipeline_versions v WHERE NOT EXISTS (SELECT 1 FROM pipelines p WHERE p.id = v.pipeline_id)",
        "SELECT COUNT(*) AS n FROM batch_errors e WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = e.batch_id)",
        "SELECT COUNT(*) AS n FROM batch_errors",
    ] {
        assert_eq!(raw_statement(&url, sql, None).await.unwrap(), 0, "{sql}");
    }
    assert!(!output.exists());
    assert!(
        !files_under(&payloads)
            .iter()
            .any(|f| f.to_string_lossy().contains(&app.tenant_id.to_string())),
        "a payload of the erased tenant is left"
    );
    // Its keys are gone with it.
    app.get("/api/v1/pipelines").await.expect(401);

    // The other tenant is untouched.
    let r = app
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/pipelines/{other_pipeline}/batches/{other_batch}"),
            Some(&other_key),
            None,
        )
        .await
        .expect(200);
    assert_eq!(r.data()["id"], other_batch.as_str());
    assert_eq!(
        raw_statement(
            &url,
            "SELECT COUNT(*) AS n FROM tenants WHERE id = $1",
            Some(other)
        )
        .await
        .unwrap(),
        1
    );

    // The erasure is on record, in a chain that outlives the tenant.
    let system = s.store().audit_chain(None, 0, 100).await.unwrap();
    let record = system.iter().find(|e| e.action == "tenant.erase").unwrap();
    assert_eq!(record.tenant_id, app.tenant_id);
    let verified = sluice_server::audit::verify(s.store().as_ref(), None)
        .await
        .unwrap();
    assert!(verified.broken.is_empty(), "{verified:?}");
    // Erasing it again finds nothing.
    assert!(
        sluice_server::retention::erase_tenant(
            s.store().as_ref(),
            s.payloads(),
            &app.dir.path().join("output"),
            app.tenant_id,
            "test",
        )
        .await
        .is_err()
    );
    app.shutdown().await;
}

async fn retention_removes_expired_data(b: Backend) {
    let app = spawn_app(b).await;
    // A failed batch with a capture (fail_batch delivers nothing), a
    // completed batch with local output, and a batch still waiting.
    let mut strict = file_pipeline("strict");
    strict["processors"] =
        json!([{"type": "validate", "schema": {"type": "object", "required": ["id"]}}]);
    strict["on_error"] = json!("fail_batch");
    let strict = app.create_pipeline(strict).await;
    let failed = submit(&app, &strict, ndjson(&records("f"))).await;
    assert_eq!(app.wait_batch(&strict, &failed).await["status"], "failed");
    let open = app.create_pipeline(file_pipeline("open")).await;
    let completed = submit(&app, &open, ndjson(&records("c"))).await;
    assert_eq!(
        app.wait_batch(&open, &completed).await["status"],
        "completed"
    );
    let waiting = app.create_pipeline(file_pipeline("waiting")).await;
    app.post(&format!("/api/v1/pipelines/{waiting}/stop"), json!({}))
        .await
        .expect(200);
    let pending_body = ndjson(&records("w"));
    let pending = submit(&app, &waiting, pending_body.clone()).await;
    let errors_path = format!("/api/v1/pipelines/{strict}/batches/{failed}/errors");
    assert_eq!(
        app.get(&errors_path)
            .await
            .expect(200)
            .data()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(!app.output_records().is_empty());

    let s = state(&app);
    let config = RetentionConfig {
        payload_days: 1,
        failed_record_days: 2,
        batch_days: 3,
        output_days: 1,
        interval_secs: 3600,
    };
    let output_root = app.dir.path().join("output");
    let run = |days: f64| {
        let now = Utc::now() + ChronoDuration::seconds((days * 86_400.0) as i64);
        sluice_server::retention::run_once(
            s.store().as_ref(),
            s.payloads(),
            &output_root,
            &config,
            now,
        )
    };

    // Nothing has expired yet.
    let report = run(0.0).await.unwrap();
    assert_eq!(report, sluice_server::retention::RetentionReport::default());

    // After a day and a half: the finished batches' payloads and the
    // output files; the failed batch can no longer be retried.
    let report = run(1.5).await.unwrap();
    assert_eq!(
        (report.payloads, report.captures, report.batches),
        (2, 0, 0),
        "{report:?}"
    );
    assert!(report.output_files >= 1, "{report:?}");
    assert!(payload_of(&app, &strict, &failed).await.is_err());
    assert!(payload_of(&app, &open, &completed).await.is_err());
    assert!(app.output_records().is_empty());
    app.post(
        &format!("/api/v1/pipelines/{strict}/batches/{failed}/retry"),
        json!({}),
    )
    .await
    .expect_error(409, "INVALID_BATCH_STATE");

    // After two and a half days: the captures.
    let report = run(2.5).await.unwrap();
    assert_eq!(
        (report.payloads, report.captures, report.batches),
        (0, 1, 0),
        "{report:?}"
    );
    assert!(
        app.get(&errors_path)
            .await
            .expect(200)
            .data()
            .as_array()
            .unwrap()
            .is_empty()
    );

    // After three and a half days: the batch rows.
    let report = run(3.5).await.unwrap();
    assert_eq!(
        (report.payloads, report.captures, report.batches),
        (0, 0, 2),
        "{report:?}"
    );
    for (p, batch) in [(&strict, &failed), (&open, &completed)] {
        app.get(&format!("/api/v1/pipelines/{p}/batches/{batch}"))
            .await
            .expect(404);
    }

    // A waiting batch is never expired.
    let report = run(100.0).await.unwrap();
    assert_eq!(report.batches, 0);
    let r = app
        .get(&format!("/api/v1/pipelines/{waiting}/batches/{pending}"))
        .await
        .expect(200);
    assert_eq!(r.data()["status"], "pending");
    assert_eq!(
        payload_of(&app, &waiting, &pending).await.unwrap(),
        pending_body
    );
    app.shutdown().await;
}
