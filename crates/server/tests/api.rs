//! Black-box API tests (issue: foundation): every endpoint, status code,
//! the envelope, pagination, versions, RBAC per role and cross-tenant
//! isolation, against SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, Options, file_pipeline, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;

backend_tests!(
    envelope_and_request_ids,
    framework_errors_use_the_envelope,
    pipeline_lifecycle_and_versions,
    invalid_configs_list_every_problem,
    bad_bodies_and_parameters,
    pagination_walks_every_item_once,
    other_tenants_see_404,
    roles_are_enforced,
    key_lifecycle,
    audit_trail_records_changes,
    delete_refused_while_batches_wait,
    openapi_lists_every_endpoint,
    health_and_metrics,
);

async fn envelope_and_request_ids(b: Backend) {
    let app = spawn_app(b).await;
    let r = app.call(Method::GET, "/api/v1/pipelines", None, None).await;
    let r = r.expect_error(401, "UNAUTHORIZED");
    let header_id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(r.body["meta"]["request_id"], json!(header_id));

    // A sent request id is honoured.
    let resp = app
        .client
        .get(app.url("/api/v1/pipelines"))
        .header("x-api-key", &app.key)
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-123");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["success"], json!(true));
    assert_eq!(body["meta"]["request_id"], json!("trace-123"));
    assert!(body["data"].as_array().unwrap().is_empty());

    // Wrong or malformed keys.
    app.call(Method::GET, "/api/v1/pipelines", Some("nope"), None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    let fake = format!("slk_{}", "A".repeat(43));
    app.call(Method::GET, "/api/v1/pipelines", Some(&fake), None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    app.shutdown().await;
}

async fn framework_errors_use_the_envelope(b: Backend) {
    let app = spawn_app(b).await;
    app.get("/api/v1/nowhere")
        .await
        .expect_error(404, "NOT_FOUND");
    app.get("/nowhere").await.expect_error(404, "NOT_FOUND");
    app.call(Method::PATCH, "/api/v1/pipelines", Some(&app.key), None)
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
    // Wrong content type for a JSON endpoint.
    let resp = app
        .client
        .post(app.url("/api/v1/pipelines"))
        .header("x-api-key", &app.key)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    common::reply(resp)
        .await
        .expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
    // Malformed JSON.
    let resp = app
        .client
        .post(app.url("/api/v1/pipelines"))
        .header("x-api-key", &app.key)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let r = common::reply(resp)
        .await
        .expect_error(400, "MALFORMED_BODY");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );
    app.shutdown().await;
}

async fn pipeline_lifecycle_and_versions(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .post("/api/v1/pipelines", file_pipeline("web"))
        .await
        .expect(201);
    let id = r.data()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.data()["status"], "active");
    assert_eq!(r.data()["version"], 1);
    assert_eq!(r.data()["name"], "web");
    assert_eq!(r.data()["config"]["on_error"], "skip");

    let r = app
        .get(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200);
    let m = &r.data()["metrics"];
    assert_eq!(m["records_processed"], 0);
    assert_eq!(m["queue_depth"]["batches"], 0);
    assert!(m["latency_ms"].is_object());

    let mut cfg = file_pipeline("web-2");
    cfg["on_error"] = json!("fail_batch");
    let r = app
        .put(&format!("/api/v1/pipelines/{id}"), cfg)
        .await
        .expect(200);
    assert_eq!(r.data()["version"], 2);
    assert_eq!(r.data()["name"], "web-2");

    let r = app
        .get(&format!("/api/v1/pipelines/{id}/versions"))
        .await
        .expect(200);
    let versions: Vec<i64> = r
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![2, 1]);
    assert_eq!(r.data()[1]["config"]["on_error"], "skip");
    assert_eq!(r.data()[0]["config"]["on_error"], "fail_batch");
    assert!(r.data()[0]["created_by"].is_string());

    let r = app
        .post(&format!("/api/v1/pipelines/{id}/stop"), json!({}))
        .await
        .expect(200);
    assert_eq!(r.data()["status"], "paused");
    let r = app.get("/api/v1/pipelines?status=paused").await.expect(200);
    assert_eq!(r.data().as_array().unwrap().len(), 1);
    let r = app.get("/api/v1/pipelines?status=active").await.expect(200);
    assert!(r.data().as_array().unwrap().is_empty());
    app.get("/api/v1/pipelines?status=sleeping")
        .await
        .expect_error(400, "INVALID_QUERY");
    let r = app
        .post(&format!("/api/v1/pipelines/{id}/start"), json!({}))
        .await
        .expect(200);
    assert_eq!(r.data()["status"], "active");

    let r = app
        .delete(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200);
    assert_eq!(r.data()["deleted"], true);
    app.get(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect_error(404, "PIPELINE_NOT_FOUND");
    app.delete(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect_error(404, "PIPELINE_NOT_FOUND");
    app.post(&format!("/api/v1/pipelines/{id}/start"), json!({}))
        .await
        .expect_error(404, "PIPELINE_NOT_FOUND");
    app.put(&format!("/api/v1/pipelines/{id}"), file_pipeline("x"))
        .await
        .expect_error(404, "PIPELINE_NOT_FOUND");
    app.shutdown().await;
}

async fn invalid_configs_list_every_problem(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .post(
            "/api/v1/pipelines",
            json!({
                "name": "",
                "surprise": 1,
                "processors": [
                    {"type": "validate", "schema": {"type": "object", "minProperties": "three"}},
                    {"type": "map", "ops": [{"op": "upper", "path": "no-slash"}]},
                    {"type": "teleport"},
                    {"type": "filter", "condition": {"path": "/a", "op": "regex", "value": "(("}}
                ],
                "destination": {"type": "file", "path": "../../etc/passwd"}
            }),
        )
        .await
        .expect_error(400, "VALIDATION_FAILED");
    let paths: Vec<String> = r.body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect();
    for expected in [
        "/surprise",
        "/name",
        "/processors/0/schema",
        "/processors/1/ops/0/path",
        "/processors/2",
        "/processors/3/condition/value",
        "/destination/path",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(expected)),
            "missing {expected} in {paths:?}"
        );
    }
    // A server pipeline needs a destination.
    let r = app
        .post("/api/v1/pipelines", json!({"name": "x", "processors": []}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    assert_eq!(r.body["error"]["details"][0]["path"], "/destination");
    // Not an object at all.
    app.post("/api/v1/pipelines", json!([1, 2]))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    // Nothing was stored.
    let r = app.get("/api/v1/pipelines").await.expect(200);
    assert!(r.data().as_array().unwrap().is_empty());
    app.shutdown().await;
}

async fn bad_bodies_and_parameters(b: Backend) {
    let app = spawn_app_with(
        b,
        Options {
            tweak: Box::new(|c| c.limits.max_config_bytes = 4096),
        },
    )
    .await;
    // Oversized management body.
    let mut big = file_pipeline("big");
    big["processors"][0]["ops"][0]["value"] = json!("x".repeat(10_000));
    app.post("/api/v1/pipelines", big)
        .await
        .expect_error(413, "PAYLOAD_TOO_LARGE");
    // Invalid UUIDs in paths.
    app.get("/api/v1/pipelines/not-a-uuid")
        .await
        .expect_error(400, "INVALID_ID");
    app.get("/api/v1/pipelines/not-a-uuid/batches")
        .await
        .expect_error(400, "INVALID_ID");
    let id = app.create_pipeline(file_pipeline("p")).await;
    app.get(&format!("/api/v1/pipelines/{id}/batches/123"))
        .await
        .expect_error(400, "INVALID_ID");
    app.get("/api/v1/keys/xyz")
        .await
        .expect_error(400, "INVALID_ID");
    // Unknown ids.
    let ghost = uuid::Uuid::now_v7();
    app.get(&format!("/api/v1/pipelines/{ghost}"))
        .await
        .expect_error(404, "PIPELINE_NOT_FOUND");
    app.get(&format!("/api/v1/pipelines/{id}/batches/{ghost}"))
        .await
        .expect_error(404, "BATCH_NOT_FOUND");
    app.get(&format!("/api/v1/keys/{ghost}"))
        .await
        .expect_error(404, "KEY_NOT_FOUND");
    // Query problems.
    app.get("/api/v1/pipelines?limit=0")
        .await
        .expect_error(400, "INVALID_QUERY");
    app.get("/api/v1/pipelines?limit=abc")
        .await
        .expect_error(400, "INVALID_QUERY");
    app.get("/api/v1/pipelines?bogus=1")
        .await
        .expect_error(400, "INVALID_QUERY");
    app.get("/api/v1/pipelines?cursor=%%%")
        .await
        .expect_error(400, "INVALID_CURSOR");
    app.get("/api/v1/pipelines?cursor=bm9wZQ")
        .await
        .expect_error(400, "INVALID_CURSOR");
    // Wrong types in typed bodies.
    app.post("/api/v1/keys", json!({"name": 5, "role": "admin"}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    app.post(
        "/api/v1/keys",
        json!({"name": "k", "role": "admin", "extra": 1}),
    )
    .await
    .expect_error(400, "VALIDATION_FAILED");
    app.shutdown().await;
}

async fn pagination_walks_every_item_once(b: Backend) {
    let app = spawn_app(b).await;
    let mut created = HashSet::new();
    for i in 0..7 {
        created.insert(app.create_pipeline(file_pipeline(&format!("p{i}"))).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            None => "/api/v1/pipelines?limit=3".to_owned(),
            Some(c) => format!("/api/v1/pipelines?limit=3&cursor={c}"),
        };
        let r = app.get(&path).await.expect(200);
        for p in r.data().as_array().unwrap() {
            seen.push(p["id"].as_str().unwrap().to_owned());
        }
        match r.body["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);
    // Newest first.
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted);
    // A cursor of another listing is refused.
    let r = app.get("/api/v1/audit?limit=1").await.expect(200);
    let audit_cursor = r.body["meta"]["next_cursor"].as_str().unwrap().to_owned();
    app.get(&format!("/api/v1/pipelines?cursor={audit_cursor}"))
        .await
        .expect_error(400, "INVALID_CURSOR");
    app.shutdown().await;
}

async fn other_tenants_see_404(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(file_pipeline("mine")).await;
    let (_, other) = common::create_tenant(app.server.as_ref().unwrap(), "tenant-b").await;
    let o = Some(other.as_str());
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/pipelines/{id}"), None),
        (
            Method::PUT,
            format!("/api/v1/pipelines/{id}"),
            Some(file_pipeline("stolen")),
        ),
        (Method::DELETE, format!("/api/v1/pipelines/{id}"), None),
        (
            Method::GET,
            format!("/api/v1/pipelines/{id}/versions"),
            None,
        ),
        (Method::POST, format!("/api/v1/pipelines/{id}/start"), None),
        (Method::POST, format!("/api/v1/pipelines/{id}/stop"), None),
        (Method::GET, format!("/api/v1/pipelines/{id}/batches"), None),
    ] {
        app.call(method.clone(), &path, o, body)
            .await
            .expect_error(404, "PIPELINE_NOT_FOUND");
    }
    let r = app
        .submit_as(
            &other,
            &id,
            "application/x-ndjson",
            None,
            None,
            b"{\"a\":1}\n".to_vec(),
        )
        .await;
    r.expect_error(404, "PIPELINE_NOT_FOUND");
    // Their listing does not show it; the owner's does and is unchanged.
    let r = app
        .call(Method::GET, "/api/v1/pipelines", o, None)
        .await
        .expect(200);
    assert!(r.data().as_array().unwrap().is_empty());
    let r = app
        .get(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200);
    assert_eq!(r.data()["name"], "mine");
    assert_eq!(r.data()["status"], "active");
    // Keys of another tenant are 404 too.
    let r = app.get("/api/v1/keys").await.expect(200);
    let my_key_id = r.data()[0]["id"].as_str().unwrap().to_owned();
    app.call(Method::GET, &format!("/api/v1/keys/{my_key_id}"), o, None)
        .await
        .expect_error(404, "KEY_NOT_FOUND");
    app.call(
        Method::DELETE,
        &format!("/api/v1/keys/{my_key_id}"),
        o,
        None,
    )
    .await
    .expect_error(404, "KEY_NOT_FOUND");
    app.get("/api/v1/pipelines").await.expect(200);
    app.shutdown().await;
}

async fn make_key(app: &common::TestApp, role: &str, pipelines: Option<Vec<String>>) -> String {
    let mut body = json!({"name": format!("{role} key"), "role": role});
    if let Some(p) = pipelines {
        body["pipeline_ids"] = json!(p);
    }
    let r = app.post("/api/v1/keys", body).await.expect(201);
    r.data()["api_key"].as_str().unwrap().to_owned()
}

async fn roles_are_enforced(b: Backend) {
    let app = spawn_app(b).await;
    let p1 = app.create_pipeline(file_pipeline("one")).await;
    let p2 = app.create_pipeline(file_pipeline("two")).await;
    let editor = make_key(&app, "editor", None).await;
    let reader = make_key(&app, "reader", None).await;
    let ingest = make_key(&app, "ingest", None).await;
    let ingest_p1 = make_key(&app, "ingest", Some(vec![p1.clone()])).await;
    let ndjson = b"{\"a\":1}\n".to_vec();

    // (key, method, path, expected status)
    let cases: Vec<(&str, Method, String, u16)> = vec![
        (&reader, Method::GET, "/api/v1/pipelines".into(), 200),
        (&reader, Method::GET, format!("/api/v1/pipelines/{p1}"), 200),
        (
            &reader,
            Method::GET,
            format!("/api/v1/pipelines/{p1}/batches"),
            200,
        ),
        (
            &reader,
            Method::POST,
            format!("/api/v1/pipelines/{p1}/stop"),
            403,
        ),
        (
            &reader,
            Method::DELETE,
            format!("/api/v1/pipelines/{p1}"),
            403,
        ),
        (&reader, Method::GET, "/api/v1/keys".into(), 403),
        (&reader, Method::GET, "/api/v1/audit".into(), 403),
        (&editor, Method::GET, "/api/v1/pipelines".into(), 200),
        (
            &editor,
            Method::POST,
            format!("/api/v1/pipelines/{p2}/stop"),
            200,
        ),
        (
            &editor,
            Method::POST,
            format!("/api/v1/pipelines/{p2}/start"),
            200,
        ),
        (&editor, Method::GET, "/api/v1/keys".into(), 403),
        (&editor, Method::POST, "/api/v1/keys".into(), 403),
        (&editor, Method::GET, "/api/v1/audit".into(), 403),
        (&ingest, Method::GET, "/api/v1/pipelines".into(), 403),
        (
            &ingest,
            Method::GET,
            format!("/api/v1/pipelines/{p1}/batches"),
            403,
        ),
        (
            &ingest,
            Method::POST,
            format!("/api/v1/pipelines/{p1}/stop"),
            403,
        ),
        (&ingest, Method::GET, "/api/v1/keys".into(), 403),
    ];
    for (key, method, path, status) in cases {
        let body = if method == Method::POST {
            Some(json!({}))
        } else {
            None
        };
        let r = app.call(method.clone(), &path, Some(key), body).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
        if status == 403 {
            assert_eq!(r.code(), "FORBIDDEN");
        }
    }
    // Writes by role.
    let r = app
        .call(
            Method::POST,
            "/api/v1/pipelines",
            Some(&reader),
            Some(file_pipeline("r")),
        )
        .await;
    r.expect_error(403, "FORBIDDEN");
    app.call(
        Method::POST,
        "/api/v1/pipelines",
        Some(&editor),
        Some(file_pipeline("e")),
    )
    .await
    .expect(201);
    // Submitting batches: editor and ingest yes, reader no; limited ingest only its pipeline.
    app.submit_as(
        &editor,
        &p1,
        "application/x-ndjson",
        None,
        None,
        ndjson.clone(),
    )
    .await
    .expect(202);
    app.submit_as(
        &ingest,
        &p2,
        "application/x-ndjson",
        None,
        None,
        ndjson.clone(),
    )
    .await
    .expect(202);
    app.submit_as(
        &ingest_p1,
        &p1,
        "application/x-ndjson",
        None,
        None,
        ndjson.clone(),
    )
    .await
    .expect(202);
    app.submit_as(
        &ingest_p1,
        &p2,
        "application/x-ndjson",
        None,
        None,
        ndjson.clone(),
    )
    .await
    .expect_error(403, "FORBIDDEN");
    app.submit_as(&reader, &p1, "application/x-ndjson", None, None, ndjson)
        .await
        .expect_error(403, "FORBIDDEN");
    // pipeline_ids only for ingest keys, and only the tenant's pipelines.
    app.post(
        "/api/v1/keys",
        json!({"name": "x", "role": "reader", "pipeline_ids": [p1]}),
    )
    .await
    .expect_error(400, "VALIDATION_FAILED");
    app.post(
        "/api/v1/keys",
        json!({"name": "x", "role": "ingest", "pipeline_ids": [uuid::Uuid::now_v7()]}),
    )
    .await
    .expect_error(400, "VALIDATION_FAILED");
    app.post("/api/v1/keys", json!({"name": "x", "role": "owner"}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    app.shutdown().await;
}

async fn key_lifecycle(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .post("/api/v1/keys", json!({"name": "ci", "role": "editor"}))
        .await
        .expect(201);
    let secret = r.data()["api_key"].as_str().unwrap().to_owned();
    let key_id = r.data()["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(r.data()["prefix"].as_str().unwrap()));
    assert!(secret.ends_with(r.data()["last4"].as_str().unwrap()));
    // Listings never show the secret.
    let r = app.get("/api/v1/keys").await.expect(200);
    assert!(!r.body.to_string().contains(&secret));
    assert_eq!(r.data().as_array().unwrap().len(), 2);
    let r = app.get(&format!("/api/v1/keys/{key_id}")).await.expect(200);
    assert_eq!(r.data()["role"], "editor");
    assert!(r.data().get("api_key").is_none());
    app.call(Method::GET, "/api/v1/pipelines", Some(&secret), None)
        .await
        .expect(200);

    // Rotation with a grace period: both keys work.
    let r = app
        .post(
            &format!("/api/v1/keys/{key_id}/rotate"),
            json!({"grace_secs": 3600}),
        )
        .await
        .expect(201);
    let new_secret = r.data()["api_key"].as_str().unwrap().to_owned();
    assert_eq!(r.data()["rotated_from"], json!(key_id));
    assert_eq!(r.data()["role"], "editor");
    app.call(Method::GET, "/api/v1/pipelines", Some(&secret), None)
        .await
        .expect(200);
    app.call(Method::GET, "/api/v1/pipelines", Some(&new_secret), None)
        .await
        .expect(200);
    let r = app.get(&format!("/api/v1/keys/{key_id}")).await.expect(200);
    assert!(r.data()["expires_at"].is_string());

    // Rotation without grace: the old key stops at once.
    let new_id = app.get("/api/v1/keys").await.data()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .post(
            &format!("/api/v1/keys/{new_id}/rotate"),
            json!({"grace_secs": 0}),
        )
        .await
        .expect(201);
    let third = r.data()["api_key"].as_str().unwrap().to_owned();
    app.call(Method::GET, "/api/v1/pipelines", Some(&new_secret), None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    app.call(Method::GET, "/api/v1/pipelines", Some(&third), None)
        .await
        .expect(200);

    // Revocation.
    let third_id = r.data()["id"].as_str().unwrap().to_owned();
    let r = app
        .delete(&format!("/api/v1/keys/{third_id}"))
        .await
        .expect(200);
    assert!(r.data()["revoked_at"].is_string());
    app.call(Method::GET, "/api/v1/pipelines", Some(&third), None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    app.delete(&format!("/api/v1/keys/{third_id}"))
        .await
        .expect_error(409, "INVALID_KEY_STATE");
    app.post(&format!("/api/v1/keys/{third_id}/rotate"), json!({}))
        .await
        .expect_error(409, "INVALID_KEY_STATE");
    app.shutdown().await;
}

async fn audit_trail_records_changes(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(file_pipeline("audited")).await;
    app.put(
        &format!("/api/v1/pipelines/{id}"),
        file_pipeline("audited-2"),
    )
    .await
    .expect(200);
    app.post(&format!("/api/v1/pipelines/{id}/stop"), json!({}))
        .await
        .expect(200);
    let r = app
        .post("/api/v1/keys", json!({"name": "k", "role": "reader"}))
        .await
        .expect(201);
    let kid = r.data()["id"].as_str().unwrap().to_owned();
    app.delete(&format!("/api/v1/keys/{kid}")).await.expect(200);
    app.delete(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200);
    let r = app.get("/api/v1/audit?limit=50").await.expect(200);
    let actions: Vec<&str> = r
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "pipeline.delete",
            "key.revoke",
            "key.create",
            "pipeline.stop",
            "pipeline.update",
            "pipeline.create"
        ]
    );
    for e in r.data().as_array().unwrap() {
        assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(e["actor_key_id"].is_string());
        assert_eq!(e["client_addr"], "127.0.0.1");
    }
    app.shutdown().await;
}

async fn delete_refused_while_batches_wait(b: Backend) {
    let app = spawn_app(b).await;
    let id = app.create_pipeline(file_pipeline("busy")).await;
    app.post(&format!("/api/v1/pipelines/{id}/stop"), json!({}))
        .await
        .expect(200);
    app.submit(
        &id,
        "application/x-ndjson",
        None,
        None,
        b"{\"a\":1}\n".to_vec(),
    )
    .await
    .expect(202);
    app.delete(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect_error(409, "PIPELINE_HAS_ACTIVE_BATCHES");
    let r = app
        .get(&format!("/api/v1/pipelines/{id}"))
        .await
        .expect(200);
    assert_eq!(r.data()["metrics"]["queue_depth"]["batches"], 1);
    app.shutdown().await;
}

async fn openapi_lists_every_endpoint(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .expect(200);
    let doc = &r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/pipelines", &["get", "post"][..]),
        ("/pipelines/{pipeline_id}", &["get", "put", "delete"]),
        ("/pipelines/{pipeline_id}/versions", &["get"]),
        ("/pipelines/{pipeline_id}/start", &["post"]),
        ("/pipelines/{pipeline_id}/stop", &["post"]),
        ("/pipelines/{pipeline_id}/batches", &["get", "post"]),
        ("/pipelines/{pipeline_id}/batches/{batch_id}", &["get"]),
        (
            "/pipelines/{pipeline_id}/batches/{batch_id}/errors",
            &["get"],
        ),
        (
            "/pipelines/{pipeline_id}/batches/{batch_id}/retry",
            &["post"],
        ),
        ("/keys", &["get", "post"]),
        ("/keys/{key_id}", &["get", "delete"]),
        ("/keys/{key_id}/rotate", &["post"]),
        ("/audit", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} missing");
        }
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    app.shutdown().await;
}

async fn health_and_metrics(b: Backend) {
    let app = spawn_app(b).await;
    let r = app
        .call(Method::GET, "/healthz", None, None)
        .await
        .expect(200);
    assert_eq!(r.body["status"], "ok");
    // Workers may take a moment to report running.
    let mut ready = false;
    for _ in 0..50 {
        let r = app.call(Method::GET, "/readyz", None, None).await;
        if r.status.as_u16() == 200 {
            assert_eq!(r.body["checks"]["database"], "ok");
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz never became ready");
    app.get("/api/v1/pipelines").await.expect(200);
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("sluice_http_requests_total"), "{text}");
    assert!(
        text.contains("route=\"/api/v1/pipelines\""),
        "route label missing: {text}"
    );
    assert!(
        text.contains("sluice_http_request_duration_seconds"),
        "{text}"
    );
    app.shutdown().await;
}
