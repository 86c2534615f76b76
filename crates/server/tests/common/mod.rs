//! Black-box test harness: a real server on port 0 with a fresh database
//! (SQLite in a temp dir, or a fresh PostgreSQL database when the test
//! runs against `SLUICE_TEST_DATABASE_URL`) and a fresh data directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sluice_config::ServerConfig;
use sluice_server::RunningServer;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generate one `#[tokio::test]` per backend for each listed async fn
/// taking a `Backend`. The PostgreSQL variant runs when
/// `SLUICE_TEST_DATABASE_URL` is set (CI sets it) and then fails, never
/// skips, if the server cannot be reached.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if sluice_store::testing::test_database_url().is_none() {
                        eprintln!("SLUICE_TEST_DATABASE_URL is not set; PostgreSQL variant not run");
                        return;
                    }
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub tenant_id: uuid::Uuid,
    /// The tenant's first admin key.
    pub key: String,
}

pub struct Options {
    pub tweak: Box<dyn FnOnce(&mut ServerConfig) + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tweak: Box::new(|_| {}),
        }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, Options::default()).await
}

pub async fn spawn_app_with(backend: Backend, options: Options) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..ServerConfig::default()
    };
    config.worker.poll_interval_ms = 50;
    config.worker.lease_secs = 10;
    config.shutdown_deadline_secs = 5;
    // The functional tests call one key far more often, and fail to
    // authenticate more often, than the SPEC's limits allow; the attack
    // suite (tests/attack.rs) turns rate limits and lockout back on.
    config.rate_limits.enabled = false;
    config.lockout.enabled = false;
    config.database_url = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let base =
                sluice_store::testing::test_database_url().expect("SLUICE_TEST_DATABASE_URL");
            Some(
                sluice_store::testing::fresh_postgres_url(&base)
                    .await
                    .expect("PostgreSQL from SLUICE_TEST_DATABASE_URL must be reachable"),
            )
        }
    };
    (options.tweak)(&mut config);
    if let Ok(level) = std::env::var("SLUICE_TEST_LOG") {
        config.log.level = level;
        config.log.format = sluice_config::server::LogFormat::Text;
        sluice_server::telemetry::init(&config.log);
    }
    let server = sluice_server::start(config).await.unwrap();
    let base = format!("http://{}", server.addr);
    let (tenant_id, key) = create_tenant(&server, "tenant-a").await;
    TestApp {
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        server: Some(server),
        dir,
        tenant_id,
        key,
    }
}

/// A tenant and its admin key, created the way `sluice tenant create` does.
pub async fn create_tenant(server: &RunningServer, name: &str) -> (uuid::Uuid, String) {
    let store = server.state.store();
    let tenant = store.create_tenant(name).await.unwrap();
    let key = sluice_server::auth::generate_key(
        tenant.id,
        "admin",
        sluice_store::Role::Admin,
        None,
        None,
    );
    store.create_api_key(key.row).await.unwrap();
    (tenant.id, key.secret)
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.body
        );
        assert_eq!(self.body["success"], json!(false), "{}", self.body);
        assert_eq!(self.code(), code, "{}", self.body);
        assert!(
            self.body["meta"]["request_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{}",
            self.body
        );
        self
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.client.request(method, self.url(path));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        reply(resp).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.key), None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(&self.key), Some(body))
            .await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(&self.key), Some(body))
            .await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, Some(&self.key), None).await
    }

    /// Create a pipeline; returns its id.
    pub async fn create_pipeline(&self, config: Value) -> String {
        let r = self.post("/api/v1/pipelines", config).await.expect(201);
        r.data()["id"].as_str().unwrap().to_owned()
    }

    /// Submit a raw body with headers.
    pub async fn submit(
        &self,
        pipeline: &str,
        content_type: &str,
        encoding: Option<&str>,
        idem: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        self.submit_as(&self.key, pipeline, content_type, encoding, idem, body)
            .await
    }

    pub async fn submit_as(
        &self,
        key: &str,
        pipeline: &str,
        content_type: &str,
        encoding: Option<&str>,
        idem: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut req = self
            .client
            .post(self.url(&format!("/api/v1/pipelines/{pipeline}/batches")))
            .header("x-api-key", key)
            .header("content-type", content_type)
            .body(body);
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        reply(req.send().await.unwrap()).await
    }

    /// Poll a batch until it leaves pending/processing.
    pub async fn wait_batch(&self, pipeline: &str, batch: &str) -> Value {
        for _ in 0..3000 {
            let r = self
                .get(&format!("/api/v1/pipelines/{pipeline}/batches/{batch}"))
                .await
                .expect(200);
            let status = r.data()["status"].as_str().unwrap().to_owned();
            if status == "completed" || status == "failed" {
                return r.data().clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("batch {batch} did not finish");
    }

    /// Every output record written under the tenant's output directory.
    pub fn output_records(&self) -> Vec<Value> {
        let root = self
            .dir
            .path()
            .join("output")
            .join(self.tenant_id.to_string());
        let mut files = Vec::new();
        collect_files(&root, &mut files);
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for line in text.lines().filter(|l| !l.is_empty()) {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
        out
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.wait().await;
        }
    }
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "ndjson") {
            out.push(p);
        }
    }
}

pub async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A simple valid pipeline writing to a file.
pub fn file_pipeline(name: &str) -> Value {
    json!({
        "name": name,
        "processors": [{"type": "map", "ops": [{"op": "add", "path": "/seen", "value": true}]}],
        "destination": {"type": "file", "path": format!("out/{name}.ndjson")}
    })
}
