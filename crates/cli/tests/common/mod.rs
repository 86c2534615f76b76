//! Running the real `sluice` binary: start `serve` on port 0, find its
//! address in the JSON log, kill it with SIGKILL or stop it with SIGTERM.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const MASTER_KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

pub fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SLUICE_MASTER_KEY", MASTER_KEY)
        .env("SLUICE_LOG_LEVEL", "info")
        // These tests poll one key far more often than the SPEC's limits
        // allow; the rate-limit tests set them back explicitly.
        .env("SLUICE_RATE_LIMITS__ENABLED", "false")
        .env("SLUICE_LOCKOUT__ENABLED", "false");
    cmd
}

/// `sluice tenant create NAME --json` in `data_dir` (and `database_url`).
pub fn create_tenant(data_dir: &Path, database_url: Option<&str>) -> (String, String) {
    let mut cmd = sluice();
    cmd.env("SLUICE_DATA_DIR", data_dir)
        .args(["tenant", "create", "test", "--json"]);
    if let Some(url) = database_url {
        cmd.env("SLUICE_DATABASE_URL", url);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["tenant_id"].as_str().unwrap().to_owned(),
        v["api_key"].as_str().unwrap().to_owned(),
    )
}

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Server {
    /// Start `sluice serve` with extra environment; waits until it listens.
    pub fn start(data_dir: &Path, env: &[(&str, String)], role: &str, log: PathBuf) -> Server {
        let mut cmd = sluice();
        cmd.env("SLUICE_DATA_DIR", data_dir)
            .env("SLUICE_LISTEN", "127.0.0.1:0")
            .args(["serve", "--role", role])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                if !sent
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    let port = v["fields"]["port"].as_u64().unwrap_or_default();
                    let _ = tx.send(format!("127.0.0.1:{port}"));
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not start; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Server { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record in the NDJSON files under `dir`.
pub fn output_records(dir: &Path) -> Vec<Value> {
    let mut files = Vec::new();
    collect(dir, &mut files);
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
        {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "ndjson") {
            out.push(p);
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn create_pipeline(server: &Server, key: &str, config: &Value) -> String {
    let r: Value = client()
        .post(server.url("/api/v1/pipelines"))
        .header("x-api-key", key)
        .json(config)
        .send()
        .unwrap()
        .json()
        .unwrap();
    r["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

pub fn batch(server: &Server, key: &str, pipeline: &str, batch: &str) -> Value {
    let r: Value = client()
        .get(server.url(&format!("/api/v1/pipelines/{pipeline}/batches/{batch}")))
        .header("x-api-key", key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    r["data"].clone()
}
