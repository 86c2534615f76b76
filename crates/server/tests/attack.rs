//! The attack suite (issue: security hardening, R-SEC-3..6): a real server
//! on port 0, attacked the way an outsider or a curious tenant would.
//!
//! - every documented route (read from the OpenAPI document, so a new
//!   route is covered without editing this file) with no key, a malformed
//!   key, a revoked key, a rotated-out key, every role and another
//!   tenant's key and ids;
//! - SQL injection and path traversal strings in every path, query, header
//!   and body field that reaches the database or the filesystem;
//! - brute force: lockout at the configured count, over when its time is
//!   up; rate limits with their headers, in memory and in Redis, and the
//!   fallback when Redis is down;
//! - security headers on every kind of answer, CORS only for configured
//!   origins;
//! - TLS with a throwaway CA: handshake, plain HTTP refused, certificate
//!   swapped on SIGHUP.
//!
//! Canary secrets and PII, and limits shared by two `sluice` processes,
//! are in `crates/cli/tests/attack.rs` (they need the binary and its log).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, Options, TestApp, file_pipeline, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_config::ServerConfig;
use sluice_server::auth::generate_key;
use sluice_store::Role;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

backend_tests!(
    every_route_refuses_whoever_may_not_call_it,
    injection_and_traversal_strings_are_inert,
    lockout_triggers_at_the_count_and_ends_on_time,
);

const ROLES: [Role; 4] = [Role::Admin, Role::Editor, Role::Reader, Role::Ingest];

fn options(tweak: impl FnOnce(&mut ServerConfig) + Send + 'static) -> Options {
    Options {
        tweak: Box::new(tweak),
    }
}

/// Every (method, path template) of the OpenAPI document, with `/api/v1`.
fn documented_routes() -> Vec<(Method, String)> {
    let doc = sluice_server::routes::openapi_document();
    let mut out = Vec::new();
    for (path, item) in doc.paths.paths.iter() {
        for (method, op) in [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
        ] {
            if op.is_some() {
                let full = if path.starts_with("/api/v1") {
                    path.clone()
                } else {
                    format!("/api/v1{path}")
                };
                out.push((method, full));
            }
        }
    }
    assert!(
        out.len() >= 19,
        "the OpenAPI document lists {} routes",
        out.len()
    );
    out
}

fn fill(template: &str, pipeline: &str, batch: &str, key: &str) -> String {
    template
        .replace("{pipeline_id}", pipeline)
        .replace("{batch_id}", batch)
        .replace("{key_id}", key)
}

fn axum_method(m: &Method) -> axum::http::Method {
    axum::http::Method::from_bytes(m.as_str().as_bytes()).unwrap()
}

async fn make_key(app: &TestApp, role: &str) -> (String, String) {
    let r = app
        .post(
            "/api/v1/keys",
            json!({"name": format!("{role} key"), "role": role}),
        )
        .await
        .expect(201);
    (
        r.data()["id"].as_str().unwrap().to_owned(),
        r.data()["api_key"].as_str().unwrap().to_owned(),
    )
}

async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> common::Reply {
    app.call(method, path, key, body).await
}

async fn every_route_refuses_whoever_may_not_call_it(b: Backend) {
    let app = spawn_app(b).await;
    let server = app.server.as_ref().unwrap();
    let pipeline = app.create_pipeline(file_pipeline("victim")).await;
    let r = app
        .submit(
            &pipeline,
            "application/x-ndjson",
            None,
            None,
            b"{\"n\":1}\n".to_vec(),
        )
        .await
        .expect(202);
    let batch = r.data()["id"].as_str().unwrap().to_owned();
    app.wait_batch(&pipeline, &batch).await;
    let mut keys = std::collections::HashMap::new();
    for role in ROLES {
        keys.insert(role, make_key(&app, role.as_str()).await);
    }
    let admin_key_id = keys[&Role::Admin].0.clone();
    let (revoked_id, revoked) = make_key(&app, "admin").await;
    app.delete(&format!("/api/v1/keys/{revoked_id}"))
        .await
        .expect(200);
    let (rotated_id, rotated) = make_key(&app, "admin").await;
    let r = app
        .post(
            &format!("/api/v1/keys/{rotated_id}/rotate"),
            json!({"grace_secs": 0}),
        )
        .await;
    assert!(r.status.is_success(), "rotate: {}", r.body);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (other_tenant, other) = common::create_tenant(server, "tenant-b").await;
    // A well-formed key nobody issued.
    let forged = generate_key(app.tenant_id, "x", Role::Admin, None, None).secret;
    let mine = [
        app.tenant_id.to_string(),
        pipeline.clone(),
        batch.clone(),
        admin_key_id.clone(),
    ];

    for (method, template) in documented_routes() {
        let real = fill(&template, &pipeline, &batch, &admin_key_id);
        let body = match method {
            Method::PUT => Some(file_pipeline("stolen")),
            Method::POST => Some(json!({})),
            _ => None,
        };
        // No key, malformed, forged, revoked and rotated-out keys: 401.
        for (what, key) in [
            ("no key", None),
            ("malformed key", Some("slk_short")),
            ("key with spaces", Some("slk_ x' OR '1'='1")),
            ("forged key", Some(forged.as_str())),
            ("revoked key", Some(revoked.as_str())),
            ("rotated-out key", Some(rotated.as_str())),
        ] {
            let r = raw(&app, method.clone(), &real, key, body.clone()).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {real}: {}",
                r.body
            );
            assert_eq!(r.code(), "UNAUTHORIZED", "{what}: {method} {real}");
        }
        // Each role, on ids that do not exist (nothing is destroyed):
        // 403 unless the role grants the route, never 401 or 5xx.
        let permission = sluice_server::routes::permission_for(&axum_method(&method), &template)
            .unwrap_or_else(|| panic!("{method} {template} has no permission"));
        let ghost = uuid::Uuid::now_v7().to_string();
        let ghost_path = fill(&template, &ghost, &ghost, &ghost);
        for role in ROLES {
            let key = &keys[&role].1;
            let r = raw(&app, method.clone(), &ghost_path, Some(key), body.clone()).await;
            if permission.granted_to(role) {
                assert!(
                    r.status != StatusCode::FORBIDDEN
                        && r.status != StatusCode::UNAUTHORIZED
                        && !r.status.is_server_error(),
                    "{role:?} may {method} {template}: got {} {}",
                    r.status,
                    r.body
                );
            } else {
                r.expect_error(403, "FORBIDDEN");
            }
        }
        // Another tenant's admin on this tenant's ids: 404 for every route
        // with an id; lists show only their own things.
        let r = raw(&app, method.clone(), &real, Some(&other), body.clone()).await;
        assert!(!r.status.is_server_error(), "{method} {real}: {}", r.body);
        if template.contains('{') {
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "another tenant: {method} {real}: {}",
                r.body
            );
            assert!(r.code().ends_with("NOT_FOUND"), "{}", r.body);
        } else {
            let text = r.body.to_string();
            for id in &mine {
                assert!(
                    !text.contains(id.as_str()),
                    "another tenant saw {id} in {method} {real}: {text}"
                );
            }
        }
    }
    // Nothing of the victim changed.
    let r = app
        .get(&format!("/api/v1/pipelines/{pipeline}"))
        .await
        .expect(200);
    assert_eq!(r.data()["name"], "victim");
    app.get(&format!("/api/v1/pipelines/{pipeline}/batches/{batch}"))
        .await
        .expect(200);
    let r = app.get("/api/v1/keys").await.expect(200);
    assert!(r.body.to_string().contains(&admin_key_id));
    // The other tenant's audit trail holds nothing of this tenant.
    let r = app
        .call(Method::GET, "/api/v1/audit", Some(&other), None)
        .await
        .expect(200);
    assert!(!r.body.to_string().contains(&app.tenant_id.to_string()));
    let _ = other_tenant;
    app.shutdown().await;
}

/// Strings that break naive SQL, shells, paths and parsers.
const NASTY: &[&str] = &[
    "' OR '1'='1",
    "'; DROP TABLE pipelines; --",
    "\"; DROP TABLE api_keys; --",
    "1; SELECT pg_sleep(5)--",
    "x' UNION SELECT secret_hash FROM api_keys --",
    "../../../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "$(touch /tmp/sluice-pwned)",
    "{\"$gt\": \"\"}",
    "<script>alert(1)</script>",
    "\u{202e}gnp.exe",
    "null",
    "-1",
    "99999999999999999999999",
];

/// Destination paths that try to leave the tenant's output directory.
const ESCAPES: &[&str] = &[
    "../escape.ndjson",
    "../../escape.ndjson",
    "a/../../escape.ndjson",
    "/tmp/escape.ndjson",
    "..\\escape.ndjson",
    "./../escape.ndjson",
    "a/./../../../escape.ndjson",
    "~/escape.ndjson",
];

fn url_with_segment(app: &TestApp, prefix: &[&str], nasty: &str, suffix: &[&str]) -> String {
    let mut url = reqwest::Url::parse(&app.base).unwrap();
    {
        let mut seg = url.path_segments_mut().unwrap();
        seg.extend(prefix);
        seg.push(nasty);
        seg.extend(suffix);
    }
    url.to_string()
}

async fn send(app: &TestApp, req: reqwest::RequestBuilder) -> common::Reply {
    let _ = app;
    common::reply(req.send().await.unwrap()).await
}

#[track_caller]
fn clean(r: &common::Reply, what: &str) {
    assert!(
        !r.status.is_server_error(),
        "{what}: {} {}",
        r.status,
        r.body
    );
}

async fn injection_and_traversal_strings_are_inert(b: Backend) {
    let app = spawn_app_with(
        b,
        options(|c| {
            // The data dir sits inside a scratch dir: anything written
            // next to it would be an escape.
            c.data_dir = c.data_dir.join("data");
        }),
    )
    .await;
    let scratch = app.dir.path().to_path_buf();
    let data_dir = scratch.join("data");
    let pipeline = app.create_pipeline(file_pipeline("target")).await;
    let mut names = Vec::new();

    for nasty in NASTY {
        // Pipeline names and key names are stored literally (or refused).
        let r = app
            .post(
                "/api/v1/pipelines",
                json!({"name": nasty, "destination": {"type": "file", "path": "out/names.ndjson"}}),
            )
            .await;
        clean(&r, "pipeline name");
        if r.status == StatusCode::CREATED {
            let id = r.data()["id"].as_str().unwrap().to_owned();
            let got = app
                .get(&format!("/api/v1/pipelines/{id}"))
                .await
                .expect(200);
            assert_eq!(got.data()["name"], json!(nasty));
            names.push(id);
        } else {
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        }
        let r = app
            .post("/api/v1/keys", json!({"name": nasty, "role": "reader"}))
            .await;
        clean(&r, "key name");
        if r.status == StatusCode::CREATED {
            assert_eq!(r.data()["name"], json!(nasty));
        }
        // Path parameters.
        for (prefix, suffix) in [
            (&["api", "v1", "pipelines"][..], &[][..]),
            (&["api", "v1", "pipelines"][..], &["batches"][..]),
            (&["api", "v1", "keys"][..], &[][..]),
        ] {
            let url = url_with_segment(&app, prefix, nasty, suffix);
            let r = send(&app, app.client.get(&url).header("x-api-key", &app.key)).await;
            clean(&r, &url);
            assert!(r.status.is_client_error(), "{url}: {} {}", r.status, r.body);
        }
        let url = url_with_segment(
            &app,
            &["api", "v1", "pipelines", pipeline.as_str(), "batches"],
            nasty,
            &["errors"],
        );
        let r = send(&app, app.client.get(&url).header("x-api-key", &app.key)).await;
        clean(&r, &url);
        assert!(r.status.is_client_error(), "{url}: {}", r.body);
        // Query parameters: filters, cursors, limits.
        for path in [
            "/api/v1/pipelines".to_owned(),
            format!("/api/v1/pipelines/{pipeline}/batches"),
            "/api/v1/audit".to_owned(),
        ] {
            for param in ["status", "cursor", "limit"] {
                let r = send(
                    &app,
                    app.client
                        .get(app.url(&path))
                        .query(&[(param, *nasty)])
                        .header("x-api-key", &app.key),
                )
                .await;
                clean(&r, &format!("{path}?{param}="));
                assert_eq!(
                    r.status,
                    StatusCode::BAD_REQUEST,
                    "{path}?{param}={nasty}: {}",
                    r.body
                );
            }
        }
        // Headers that reach the database: Idempotency-Key, X-Request-Id
        // (header values are ASCII).
        if !nasty.is_ascii() {
            continue;
        }
        let body = b"{\"a\":1}\n".to_vec();
        let r = app
            .submit(
                &pipeline,
                "application/x-ndjson",
                None,
                Some(nasty),
                body.clone(),
            )
            .await;
        clean(&r, "idempotency key");
        if r.status == StatusCode::ACCEPTED {
            let again = app
                .submit(&pipeline, "application/x-ndjson", None, Some(nasty), body)
                .await
                .expect(200);
            assert_eq!(again.data()["id"], r.data()["id"]);
        }
        let r = send(
            &app,
            app.client
                .get(app.url("/api/v1/pipelines"))
                .header("x-api-key", &app.key)
                .header("x-request-id", *nasty),
        )
        .await;
        clean(&r, "request id");
        assert_eq!(r.status, StatusCode::OK);
    }

    // File destinations that try to leave the output directory.
    for path in ESCAPES {
        let mut config = file_pipeline("escape");
        config["destination"]["path"] = json!(path);
        let r = app.post("/api/v1/pipelines", config).await;
        clean(&r, path);
        if r.status == StatusCode::CREATED {
            // Accepted only if it stays inside: deliver and look.
            let id = r.data()["id"].as_str().unwrap().to_owned();
            let r = app
                .submit(
                    &id,
                    "application/x-ndjson",
                    None,
                    None,
                    b"{\"a\":1}\n".to_vec(),
                )
                .await
                .expect(202);
            let batch = r.data()["id"].as_str().unwrap().to_owned();
            app.wait_batch(&id, &batch).await;
        } else {
            r.expect_error(400, "VALIDATION_FAILED");
        }
    }

    // Tables intact: everything created is still listed, keys still work.
    let r = app.get("/api/v1/pipelines?limit=200").await.expect(200);
    let listed = r.body.to_string();
    for id in names.iter().chain([&pipeline]) {
        assert!(listed.contains(id.as_str()), "{id} vanished");
    }
    app.get("/api/v1/keys").await.expect(200);
    app.get("/api/v1/audit").await.expect(200);
    // Nothing was written outside the data dir, nothing left the tenant's
    // output directory, and no shell ran.
    for file in files_under(&scratch) {
        assert!(
            file.starts_with(&data_dir),
            "written outside the data dir: {}",
            file.display()
        );
        if file.extension().is_some_and(|e| e == "ndjson")
            && file.starts_with(data_dir.join("output"))
        {
            assert!(
                file.starts_with(data_dir.join("output").join(app.tenant_id.to_string())),
                "output outside the tenant's directory: {}",
                file.display()
            );
        }
    }
    assert!(!Path::new("/tmp/sluice-pwned").exists());
    app.shutdown().await;
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

fn header<'a>(r: &'a common::Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn lockout_triggers_at_the_count_and_ends_on_time(b: Backend) {
    let app = spawn_app_with(
        b,
        options(|c| {
            c.rate_limits.enabled = true;
            c.rate_limits.auth_failures_per_min = 100;
            c.lockout.enabled = true;
            c.lockout.max_failures = 3;
            c.lockout.window_secs = 60;
            c.lockout.duration_secs = 2;
        }),
    )
    .await;
    // A revoked key of this tenant, so the lockout lands in its audit trail.
    let (revoked_id, revoked) = make_key(&app, "reader").await;
    app.delete(&format!("/api/v1/keys/{revoked_id}"))
        .await
        .expect(200);
    let path = "/api/v1/pipelines";
    app.call(Method::GET, path, None, None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    app.call(Method::GET, path, Some("slk_nope"), None)
        .await
        .expect_error(401, "UNAUTHORIZED");
    // The third failure locks the address out.
    let r = app
        .call(Method::GET, path, Some(&revoked), None)
        .await
        .expect_error(429, "RATE_LIMITED");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Even a valid key is refused while the lock lasts.
    let r = app
        .call(Method::GET, path, Some(&app.key), None)
        .await
        .expect_error(429, "RATE_LIMITED");
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    // After the configured time it works again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.get(path).await.expect(200);
    // And the count starts over: two failures are only 401s.
    for _ in 0..2 {
        app.call(Method::GET, path, Some("slk_nope"), None)
            .await
            .expect_error(401, "UNAUTHORIZED");
    }
    app.get(path).await.expect(200);
    // The lockout is in the tenant's audit trail.
    let r = app.get("/api/v1/audit?limit=200").await.expect(200);
    let events = r.data().as_array().unwrap();
    assert!(
        events.iter().any(|e| e["action"] == "auth.lockout"),
        "{}",
        r.body
    );
    app.shutdown().await;
}

mod limits {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_failures_per_address_answer_429_with_headers() {
        let app = spawn_app_with(
            Backend::Sqlite,
            options(|c| {
                c.rate_limits.enabled = true;
                c.rate_limits.auth_failures_per_min = 2;
            }),
        )
        .await;
        for _ in 0..2 {
            app.call(Method::GET, "/api/v1/pipelines", Some("slk_bad"), None)
                .await
                .expect_error(401, "UNAUTHORIZED");
        }
        let r = app
            .call(Method::GET, "/api/v1/pipelines", Some("slk_bad"), None)
            .await
            .expect_error(429, "RATE_LIMITED");
        assert_eq!(header(&r, "ratelimit-limit"), "2");
        assert_eq!(header(&r, "ratelimit-remaining"), "0");
        let retry: u64 = header(&r, "retry-after").parse().unwrap();
        assert!((1..=30).contains(&retry), "Retry-After {retry}");
        assert!(header(&r, "ratelimit-reset").parse::<u64>().unwrap() >= retry);
        // A valid key from the same address is not locked out by the limit.
        app.get("/api/v1/pipelines").await.expect(200);
        app.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn management_calls_are_limited_per_key() {
        let app = spawn_app_with(
            Backend::Sqlite,
            options(|c| {
                c.rate_limits.enabled = true;
                c.rate_limits.management_per_min = 3;
            }),
        )
        .await;
        let (_, reader) = make_key(&app, "reader").await;
        for expected in ["2", "1", "0"] {
            let r = app
                .call(Method::GET, "/api/v1/pipelines", Some(&reader), None)
                .await
                .expect(200);
            assert_eq!(header(&r, "ratelimit-limit"), "3");
            assert_eq!(header(&r, "ratelimit-remaining"), expected);
        }
        let r = app
            .call(Method::GET, "/api/v1/pipelines", Some(&reader), None)
            .await
            .expect_error(429, "RATE_LIMITED");
        let retry: u64 = header(&r, "retry-after").parse().unwrap();
        // 3 a minute: one call every 20 s.
        assert!((15..=20).contains(&retry), "Retry-After {retry}");
        assert_eq!(header(&r, "ratelimit-remaining"), "0");
        // Another key has its own budget.
        app.get("/api/v1/pipelines").await.expect(200);
        app.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingest_is_limited_in_bytes_per_key() {
        let app = spawn_app_with(
            Backend::Sqlite,
            options(|c| {
                c.rate_limits.enabled = true;
                c.rate_limits.ingest_bytes_per_sec = 100;
                c.rate_limits.ingest_burst_bytes = 1000;
            }),
        )
        .await;
        let pipeline = app.create_pipeline(file_pipeline("slow")).await;
        let (_, ingest) = make_key(&app, "ingest").await;
        let mut body = Vec::new();
        while body.len() < 700 {
            body.extend_from_slice(
                b"{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n",
            );
        }
        let r = app
            .submit_as(
                &ingest,
                &pipeline,
                "application/x-ndjson",
                None,
                None,
                body.clone(),
            )
            .await
            .expect(202);
        assert_eq!(header(&r, "ratelimit-limit"), "1000");
        let r = app
            .submit_as(
                &ingest,
                &pipeline,
                "application/x-ndjson",
                None,
                None,
                body.clone(),
            )
            .await
            .expect_error(429, "RATE_LIMITED");
        let retry: u64 = header(&r, "retry-after").parse().unwrap();
        assert!((2..=7).contains(&retry), "Retry-After {retry}");
        // Another key is not affected.
        app.submit(&pipeline, "application/x-ndjson", None, None, body)
            .await
            .expect(202);
        app.shutdown().await;
    }

    fn redis_url() -> String {
        std::env::var("SLUICE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    /// Two servers (one database) sharing Redis enforce one limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_shares_limits_and_lockouts_between_nodes() {
        let prefix = format!("sluice-test:{}:", uuid::Uuid::now_v7());
        let tweak = {
            let prefix = prefix.clone();
            move |c: &mut ServerConfig| {
                c.rate_limits.enabled = true;
                c.rate_limits.management_per_min = 4;
                c.lockout.enabled = true;
                c.lockout.max_failures = 3;
                c.lockout.duration_secs = 60;
                c.redis.url = Some(redis_url());
                c.redis.key_prefix = prefix;
                c.redis.timeout_ms = 2000;
            }
        };
        let a = spawn_app_with(Backend::Sqlite, options(tweak.clone())).await;
        // A second node on the same database and Redis.
        let mut config = a.server.as_ref().unwrap().state.config().clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.role = sluice_config::ServerRole::Api;
        tweak(&mut config);
        let b = sluice_server::start(config).await.unwrap();
        let b_url = format!("http://{}", b.addr);
        let get = |base: String| {
            let client = a.client.clone();
            let key = a.key.clone();
            async move {
                common::reply(
                    client
                        .get(format!("{base}/api/v1/pipelines"))
                        .header("x-api-key", key)
                        .send()
                        .await
                        .unwrap(),
                )
                .await
            }
        };
        let mut remaining = Vec::new();
        for base in [&a.base, &b_url, &a.base, &b_url] {
            let r = get(base.clone()).await.expect(200);
            remaining.push(header(&r, "ratelimit-remaining").to_owned());
        }
        assert_eq!(remaining, ["3", "2", "1", "0"]);
        get(a.base.clone()).await.expect_error(429, "RATE_LIMITED");
        let r = get(b_url.clone()).await.expect_error(429, "RATE_LIMITED");
        assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
        // Failures on either node count towards one lockout.
        for base in [&a.base, &b_url] {
            let r = a
                .client
                .get(format!("{base}/api/v1/audit"))
                .header("x-api-key", "slk_bad")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        let r = a
            .client
            .get(format!("{}/api/v1/audit", a.base))
            .header("x-api-key", "slk_bad")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        // The other node refuses the address too, whatever the key.
        let r = a
            .client
            .get(format!("{b_url}/api/v1/keys"))
            .header("x-api-key", &a.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        b.shutdown();
        b.wait().await;
        a.shutdown().await;
    }

    /// With Redis unreachable, limits still hold (per node) and requests
    /// are answered, not failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_falls_back_to_local_limits() {
        let app = spawn_app_with(
            Backend::Sqlite,
            options(|c| {
                c.rate_limits.enabled = true;
                c.rate_limits.management_per_min = 3;
                // Nothing listens on port 1.
                c.redis.url = Some("redis://127.0.0.1:1".to_owned());
                c.redis.timeout_ms = 200;
            }),
        )
        .await;
        for left in ["2", "1", "0"] {
            let r = app.get("/api/v1/pipelines").await.expect(200);
            assert_eq!(header(&r, "ratelimit-remaining"), left);
        }
        app.get("/api/v1/pipelines")
            .await
            .expect_error(429, "RATE_LIMITED");
        app.shutdown().await;
    }
}

mod headers {
    use super::*;

    fn assert_security_headers(r: &common::Reply, what: &str) {
        assert_eq!(
            header(r, "content-security-policy"),
            "default-src 'none'; frame-ancestors 'none'",
            "{what}"
        );
        assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header(r, "referrer-policy"), "no-referrer", "{what}");
        assert_eq!(header(r, "x-frame-options"), "DENY", "{what}");
        assert!(
            header(r, "permissions-policy").contains("camera=()"),
            "{what}"
        );
        assert_eq!(header(r, "cache-control"), "no-store", "{what}");
        assert!(
            r.headers.get("access-control-allow-origin").is_none(),
            "{what}"
        );
        // Plain HTTP: no HSTS (it is only meaningful over TLS).
        assert!(
            r.headers.get("strict-transport-security").is_none(),
            "{what}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_answer_carries_the_security_headers() {
        let app = spawn_app(Backend::Sqlite).await;
        let cases = [
            ("200", app.get("/api/v1/pipelines").await),
            (
                "401",
                app.call(Method::GET, "/api/v1/pipelines", None, None).await,
            ),
            ("404 route", app.get("/nope").await),
            (
                "404 api",
                app.get(&format!("/api/v1/pipelines/{}", uuid::Uuid::now_v7()))
                    .await,
            ),
            (
                "405",
                app.call(Method::PATCH, "/api/v1/pipelines", Some(&app.key), None)
                    .await,
            ),
            (
                "400",
                app.post("/api/v1/pipelines", json!({"bogus": 1})).await,
            ),
            (
                "healthz",
                app.call(Method::GET, "/healthz", None, None).await,
            ),
            (
                "openapi",
                app.call(Method::GET, "/api/v1/openapi.json", None, None)
                    .await,
            ),
        ];
        for (what, r) in &cases {
            assert_security_headers(r, what);
        }
        // No CORS by default: a preflight gets no permission.
        let r = send(
            &app,
            app.client
                .request(Method::OPTIONS, app.url("/api/v1/pipelines"))
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "GET"),
        )
        .await;
        assert!(r.headers.get("access-control-allow-origin").is_none());
        app.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cors_only_for_configured_origins() {
        let app = spawn_app_with(
            Backend::Sqlite,
            options(|c| c.cors.allowed_origins = vec!["https://app.example".to_owned()]),
        )
        .await;
        let preflight = |origin: &'static str| {
            app.client
                .request(Method::OPTIONS, app.url("/api/v1/pipelines"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "x-api-key, content-type")
        };
        let r = send(&app, preflight("https://app.example")).await;
        assert!(r.status.is_success(), "{}", r.status);
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            "https://app.example"
        );
        assert!(header(&r, "access-control-allow-headers").contains("x-api-key"));
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        let r = send(&app, preflight("https://evil.example")).await;
        assert!(r.headers.get("access-control-allow-origin").is_none());
        // A real request from the allowed origin can read the answer.
        let r = send(
            &app,
            app.client
                .get(app.url("/api/v1/pipelines"))
                .header("origin", "https://app.example")
                .header("x-api-key", &app.key),
        )
        .await
        .expect(200);
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            "https://app.example"
        );
        let r = send(
            &app,
            app.client
                .get(app.url("/api/v1/pipelines"))
                .header("origin", "https://evil.example")
                .header("x-api-key", &app.key),
        )
        .await
        .expect(200);
        assert!(r.headers.get("access-control-allow-origin").is_none());
        app.shutdown().await;
    }
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    struct Pki {
        ca_pem: String,
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Pki {
        fn new() -> Pki {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "Sluice test CA");
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Pki {
                ca_pem: issuer.pem(),
                issuer,
            }
        }

        /// A leaf for localhost and 127.0.0.1: (cert PEM, key PEM, DER).
        fn leaf(&self, cn: &str) -> (String, String, Vec<u8>) {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        }
    }

    fn client(pki: &Pki) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .tls_info(true)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn served_cert(resp: &reqwest::Response) -> Vec<u8> {
        resp.extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .unwrap()
            .to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_handshake_hsts_plain_http_refused_and_sighup_reload() {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert1, key1, der1) = pki.leaf("first");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, &cert1).unwrap();
        std::fs::write(&key_path, &key1).unwrap();
        let app = spawn_app_with(
            Backend::Sqlite,
            options({
                let (c, k) = (cert_path.clone(), key_path.clone());
                move |cfg| {
                    cfg.tls.cert_path = Some(c);
                    cfg.tls.key_path = Some(k);
                    cfg.tls.required = true;
                }
            }),
        )
        .await;
        let port = app.server.as_ref().unwrap().addr.port();
        let https = format!("https://127.0.0.1:{port}");
        let client = client(&pki);
        let r = client
            .get(format!("{https}/api/v1/pipelines"))
            .header("x-api-key", &app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(served_cert(&r), der1);
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        // Also by name.
        let r = client
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // Plain HTTP gets no HTTP answer at all.
        let plain = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await;
        assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
        // A client that does not trust the CA is refused.
        let untrusting = reqwest::Client::builder()
            .tls_built_in_root_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        assert!(
            untrusting
                .get(format!("{https}/healthz"))
                .send()
                .await
                .is_err()
        );

        // A broken renewal keeps the current certificate.
        std::fs::write(&cert_path, "not a certificate").unwrap();
        assert!(app.server.as_ref().unwrap().reload_tls().await.is_err());
        let r = client.get(format!("{https}/healthz")).send().await.unwrap();
        assert_eq!(served_cert(&r), der1);

        // Renew the certificate and send SIGHUP: new connections get it.
        let (cert2, key2, der2) = pki.leaf("second");
        std::fs::write(&key_path, &key2).unwrap();
        std::fs::write(&cert_path, &cert2).unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = client.get(format!("{https}/healthz")).send().await.unwrap();
            if served_cert(&r) == der2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the certificate was not reloaded on SIGHUP"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client
            .get(format!("{https}/api/v1/pipelines"))
            .header("x-api-key", &app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        app.shutdown().await;
    }

    #[tokio::test]
    async fn tls_required_without_a_certificate_does_not_start() {
        let err =
            ServerConfig::from_sources(Some("[tls]\nrequired = true\n"), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("/tls/required"), "{err}");
        // A key that does not match the certificate is refused at start.
        let pki = Pki::new();
        let (cert, _, _) = pki.leaf("a");
        let (_, other_key, _) = pki.leaf("b");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), other_key).unwrap();
        let config = sluice_config::server::TlsConfig {
            cert_path: Some(dir.path().join("c.pem")),
            key_path: Some(dir.path().join("k.pem")),
            ..Default::default()
        };
        assert!(sluice_server::tls::Tls::load(&config).is_err());
    }
}
