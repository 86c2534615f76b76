//! The webhook destination as the server builds it (wrapped with retries
//! and its circuit breaker) against a local receiver that fails every
//! other request.
//!
//! Regression test for issue 6 (the `misbehaving_receiver` server tests):
//! the retries wrapped the whole part, so a part of three chunks re-sent
//! the chunks the receiver had already taken and, with every other request
//! failing, always met the failure on the second chunk; the part never got
//! through, whatever the retry budget. Each chunk is now one call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::json;
use sluice_components::{BuildContext, build_pipeline, validate_pipeline};
use sluice_core::{Destination, OutputPart};
use sluice_outbound::Outbound;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

#[derive(Default)]
struct Seen {
    requests: u64,
    /// Idempotency keys of the requests, in order, with their outcome.
    keys: Vec<(String, u16)>,
}

/// A receiver that answers 503 (`Retry-After: 0`) to every other request,
/// starting with the first.
async fn flapping_receiver() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, _body: Bytes| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let mut seen = seen.lock().unwrap();
                    seen.requests += 1;
                    if seen.requests % 2 == 1 {
                        seen.keys.push((key, 503));
                        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response()
                    } else {
                        seen.keys.push((key, 204));
                        StatusCode::NO_CONTENT.into_response()
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn destination(url: String, pipeline_id: Uuid) -> Arc<dyn Destination> {
    let config = json!({
        "name": "hooks",
        "destination": {"type": "webhook", "url": url, "allow_http": true,
            "secret": "whsec_test_0123456789abcdef", "chunk_records": 15,
            "retry": {"max_retries": 2, "initial_backoff_ms": 1, "max_backoff_ms": 5},
            "breaker": {"window": 10, "failures": 8, "cooldown_secs": 60}}
    });
    let spec = validate_pipeline(&config).unwrap_or_else(|p| panic!("{p:?}"));
    let ctx = BuildContext {
        tenant_id: Uuid::from_u128(1),
        pipeline_id,
        pipeline_name: "hooks".into(),
        config_version: 1,
        output_root: PathBuf::from("/nonexistent"),
        hash_key: Arc::from(&b"k"[..]),
        outbound: Outbound::allowing_private(),
    };
    build_pipeline(&spec, &ctx)
        .unwrap()
        .destination()
        .unwrap()
        .clone()
}

fn part(batch_id: Uuid, records: usize) -> OutputPart {
    let mut ndjson = Vec::new();
    for i in 0..records {
        serde_json::to_writer(
            &mut ndjson,
            &json!({"i": i, "_sluice_id": format!("{batch_id}:{i}:0")}),
        )
        .unwrap();
        ndjson.push(b'\n');
    }
    OutputPart {
        tenant_id: Uuid::from_u128(1),
        pipeline_id: Uuid::from_u128(2),
        batch_id,
        part: 0,
        record_count: records as u64,
        ndjson: ndjson.into(),
    }
}

#[tokio::test]
async fn every_other_request_failing_still_delivers_a_multi_chunk_part() {
    let (addr, seen) = flapping_receiver().await;
    let pipeline_id = Uuid::new_v4();
    let dest = destination(format!("http://{addr}/hook"), pipeline_id);
    let batch = Uuid::from_u128(7);
    // 40 records in chunks of 15: three requests when all goes well.
    dest.write(&part(batch, 40)).await.unwrap();

    let seen = seen.lock().unwrap();
    let keys: Vec<(&str, u16)> = seen.keys.iter().map(|(k, s)| (k.as_str(), *s)).collect();
    let k = |i: u32| format!("{batch}:0:{i}");
    let (k0, k1, k2) = (k(0), k(1), k(2));
    // Each failed chunk is retried on its own; an acknowledged chunk is
    // never sent again.
    assert_eq!(
        keys,
        vec![
            (k0.as_str(), 503),
            (k0.as_str(), 204),
            (k1.as_str(), 503),
            (k1.as_str(), 204),
            (k2.as_str(), 503),
            (k2.as_str(), 204),
        ]
    );
    // The breaker counted requests: six calls, three of them retries.
    let breaker = sluice_outbound::snapshots(&format!("{pipeline_id}/"));
    assert_eq!(breaker.len(), 1);
    assert_eq!(breaker[0].calls_total, 6);
    assert_eq!(breaker[0].retries_total, 3);
    assert_eq!(breaker[0].state, sluice_outbound::BreakerState::Closed);
}

#[tokio::test]
async fn a_chunk_that_keeps_failing_fails_the_part_after_its_retries() {
    let seen = Arc::new(Mutex::new(0u32));
    let app = Router::new()
        .route(
            "/hook",
            post(|State(n): State<Arc<Mutex<u32>>>| async move {
                let mut n = n.lock().unwrap();
                *n += 1;
                // The first chunk is taken, every later request fails.
                if *n == 1 {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dest = destination(format!("http://{addr}/hook"), Uuid::new_v4());
    let err = dest.write(&part(Uuid::from_u128(8), 40)).await.unwrap_err();
    assert_eq!(err.kind, sluice_core::FailureKind::Transient);
    assert!(err.message.contains("502"), "{}", err.message);
    // One accepted chunk, then the second chunk tried 1 + 2 times.
    assert_eq!(*seen.lock().unwrap(), 4);
}
