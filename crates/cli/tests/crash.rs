//! Crash test (issue: ingestion): batches are submitted while the server
//! is killed with SIGKILL at random moments and restarted. Afterwards
//! every batch that got a 202 is completed and the destination holds each
//! of its records exactly once; a batch that got no 202 is either wholly
//! there (it was committed just before the crash) or not at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, batch, create_pipeline, create_tenant, output_records};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Accepted { batch_id: String, records: u64 },
    Unknown { records: u64 },
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed: {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (tenant_id, key) = create_tenant(&data, None);
    let env: Vec<(&str, String)> = vec![
        ("SLUICE_WORKER__LEASE_SECS", "2".into()),
        ("SLUICE_WORKER__POLL_INTERVAL_MS", "50".into()),
        ("SLUICE_WORKER__PART_RECORDS", "50".into()),
        ("SLUICE_SHUTDOWN_DEADLINE_SECS", "2".into()),
    ];
    let log = dir.path().join("server.log");
    let server = Server::start(&data, &env, "all", log.clone());
    let pipeline = create_pipeline(
        &server,
        &key,
        &json!({
            "name": "crash",
            "processors": [{"type": "map", "ops": [{"op": "add", "path": "/seen", "value": true}]}],
            "destination": {"type": "file", "path": "crash/out.ndjson"}
        }),
    );

    let addr = Arc::new(Mutex::new(server.addr.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<HashMap<u64, Outcome>>> = Arc::default();
    let client = {
        let (addr, stop, outcomes, key, pipeline) = (
            addr.clone(),
            stop.clone(),
            outcomes.clone(),
            key.clone(),
            pipeline.clone(),
        );
        let mut rng = Rng(seed.rotate_left(17) | 1);
        std::thread::spawn(move || {
            let http = common::client();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let n = rng.range(1, 400);
                let mut body = Vec::new();
                for i in 0..n {
                    body.extend_from_slice(
                        json!({"b": seq, "i": i, "pad": "x".repeat(64)})
                            .to_string()
                            .as_bytes(),
                    );
                    body.push(b'\n');
                }
                let base = addr.lock().unwrap().clone();
                let result = http
                    .post(format!("http://{base}/api/v1/pipelines/{pipeline}/batches"))
                    .header("x-api-key", &key)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send();
                let outcome = match result {
                    Ok(resp) if resp.status().as_u16() == 202 => {
                        let v: Value = resp.json().unwrap();
                        Outcome::Accepted {
                            batch_id: v["data"]["id"].as_str().unwrap().to_owned(),
                            records: n,
                        }
                    }
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        assert!(status >= 500 || status == 429, "unexpected status {status}");
                        Outcome::Unknown { records: n }
                    }
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        Outcome::Unknown { records: n }
                    }
                };
                outcomes.lock().unwrap().insert(seq, outcome);
            }
        })
    };

    let mut server = Some(server);
    let kills = 6;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.range(200, 900)));
        server.take().unwrap().kill();
        std::thread::sleep(Duration::from_millis(rng.range(0, 200)));
        let s = Server::start(&data, &env, "all", log.clone());
        *addr.lock().unwrap() = s.addr.clone();
        server = Some(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let server = server.unwrap();

    let outcomes = outcomes.lock().unwrap().clone();
    let accepted: Vec<(u64, String, u64)> = outcomes
        .iter()
        .filter_map(|(seq, o)| match o {
            Outcome::Accepted { batch_id, records } => Some((*seq, batch_id.clone(), *records)),
            Outcome::Unknown { .. } => None,
        })
        .collect();
    assert!(
        accepted.len() >= 5,
        "too few batches were accepted: {}",
        accepted.len()
    );

    // Every acknowledged batch completes.
    let deadline = Instant::now() + Duration::from_secs(180);
    for (_, id, _) in &accepted {
        loop {
            let b = batch(&server, &key, &pipeline, id);
            if b["status"] == "completed" {
                break;
            }
            assert_ne!(b["status"], "failed", "batch {id} failed: {b}");
            assert!(Instant::now() < deadline, "batch {id} never completed: {b}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let out = output_records(&data.join("output").join(&tenant_id));
    let ids: HashSet<&str> = out
        .iter()
        .map(|r| r["_sluice_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), out.len(), "a record was delivered twice");
    let mut by_seq: HashMap<u64, Vec<u64>> = HashMap::new();
    for r in &out {
        by_seq
            .entry(r["b"].as_u64().unwrap())
            .or_default()
            .push(r["i"].as_u64().unwrap());
    }
    for (seq, outcome) in &outcomes {
        let got = by_seq.remove(seq).unwrap_or_default();
        let n = match outcome {
            Outcome::Accepted { records, .. } => *records,
            Outcome::Unknown { records } => {
                if got.is_empty() {
                    continue;
                }
                *records
            }
        };
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..n).collect::<Vec<_>>(),
            "batch #{seq} ({outcome:?}) delivered {} of {n} records",
            got.len()
        );
    }
    assert!(
        by_seq.is_empty(),
        "records of unknown batches: {:?}",
        by_seq.keys()
    );
    eprintln!(
        "crash test: {kills} kills, {} batches acknowledged, {} unacknowledged, {} records delivered",
        accepted.len(),
        outcomes.len() - accepted.len(),
        out.len()
    );
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exited with {status}");
}
