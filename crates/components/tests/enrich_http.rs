//! `enrich_http` against real local HTTP providers: the waterfall, schema
//! checks, the cache, the `openai_chat` preset, the breaker, and the SSRF
//! guard (no request ever reaches a denied address).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_components::{
    BuildContext, CompiledPipeline, PartOutput, build_pipeline, validate_pipeline,
};
use sluice_outbound::Outbound;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

#[derive(Clone, Default)]
struct Hits(Arc<Mutex<HashMap<String, usize>>>);

impl Hits {
    fn hit(&self, name: &str) {
        *self.0.lock().unwrap().entry(name.to_owned()).or_default() += 1;
    }
    fn get(&self, name: &str) -> usize {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

async fn provider(ip: &str, redirect_to: Option<String>) -> (SocketAddr, Hits) {
    let hits = Hits::default();
    let h = hits.clone();
    let redirect = redirect_to.clone();
    let app = Router::new()
        .route(
            "/fail",
            get(|State(h): State<Hits>| async move {
                h.hit("fail");
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route(
            "/invalid/{ip}",
            get(|State(h): State<Hits>| async move {
                h.hit("invalid");
                Json(json!({"country": 5}))
            }),
        )
        .route(
            "/geo/{ip}",
            get(|State(h): State<Hits>, Path(ip): Path<String>| async move {
                h.hit("geo");
                Json(json!({"data": {"country": "NL", "ip": ip}}))
            }),
        )
        .route(
            "/lookup",
            post(
                |State(h): State<Hits>, Json(body): Json<Value>| async move {
                    h.hit("lookup");
                    Json(json!({"country": "DE", "asked": body}))
                },
            ),
        )
        .route(
            "/v1/chat/completions",
            post(
                |State(h): State<Hits>, headers: HeaderMap, Json(body): Json<Value>| async move {
                    h.hit("chat");
                    if headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        != Some("Bearer sk-test-key")
                    {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    let prompt = body["messages"][1]["content"].as_str().unwrap_or_default();
                    let sentiment = if prompt.contains("love") {
                        "positive"
                    } else {
                        "negative"
                    };
                    assert_eq!(body["model"], "tiny-test-model");
                    Json(json!({"choices": [{"message": {"role": "assistant",
                        "content": format!("```json\n{{\"sentiment\": \"{sentiment}\"}}\n```")}}]}))
                    .into_response()
                },
            ),
        )
        .fallback(move |State(h): State<Hits>| {
            let redirect = redirect.clone();
            async move {
                h.hit("other");
                match redirect {
                    Some(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
                    None => Json(json!({"country": "XX"})).into_response(),
                }
            }
        })
        .with_state(h);
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn build(config: Value, outbound: Outbound) -> Arc<CompiledPipeline> {
    let spec = validate_pipeline(&config).unwrap_or_else(|p| panic!("{p:?}"));
    let ctx = BuildContext {
        tenant_id: Uuid::from_u128(1),
        pipeline_id: Uuid::new_v4(),
        pipeline_name: "enrich".into(),
        config_version: 1,
        output_root: PathBuf::from("/nonexistent"),
        hash_key: Arc::from(&b"k"[..]),
        outbound,
    };
    Arc::new(build_pipeline(&spec, &ctx).unwrap())
}

async fn run(p: &Arc<CompiledPipeline>, records: &[Value]) -> PartOutput {
    let mut nd = Vec::new();
    for r in records {
        nd.extend_from_slice(r.to_string().as_bytes());
        nd.push(b'\n');
    }
    let p = p.clone();
    tokio::task::spawn_blocking(move || p.process_part(Uuid::nil(), 0, &nd))
        .await
        .unwrap()
}

fn outputs(out: &PartOutput) -> Vec<Value> {
    out.ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

fn geo_schema() -> Value {
    json!({"type": "object", "required": ["country"], "properties": {"country": {"type": "string"}}})
}

fn fast_retry() -> Value {
    json!({"max_retries": 1, "initial_backoff_ms": 1, "max_backoff_ms": 5})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waterfall_falls_through_to_a_valid_answer_and_caches_it() {
    let (addr, hits) = provider("127.0.0.1", None).await;
    let base = format!("http://{addr}");
    let pipeline = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/geo",
        "schema": geo_schema(),
        "providers": [
            {"name": "down", "url": format!("{base}/fail"), "allow_http": true, "retry": fast_retry()},
            {"name": "wrong", "url": format!("{base}/invalid/{{/ip}}"), "allow_http": true},
            {"name": "geo", "url": format!("{base}/geo/{{/ip}}"), "result_pointer": "/data", "allow_http": true},
            {"name": "never", "url": format!("{base}/lookup"), "body": {"ip": "{/ip}"}, "allow_http": true}
        ]}]}),
        Outbound::allowing_private(),
    );
    let out = run(
        &pipeline,
        &[json!({"ip": "1.2.3.4"}), json!({"ip": "5.6.7.8"})],
    )
    .await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let recs = outputs(&out);
    assert_eq!(recs[0]["geo"], json!({"country": "NL", "ip": "1.2.3.4"}));
    assert_eq!(recs[1]["geo"]["ip"], "5.6.7.8");
    // Each record: the failing provider twice (one retry), the invalid one
    // once, the good one once, the last one never.
    assert_eq!(hits.get("fail"), 4);
    assert_eq!(hits.get("invalid"), 2);
    assert_eq!(hits.get("geo"), 2);
    assert_eq!(hits.get("lookup"), 0);

    // The same records again: answered from the cache, no call at all.
    let before = hits.total();
    let again = run(
        &pipeline,
        &[
            json!({"ip": "1.2.3.4", "other": 1}),
            json!({"ip": "5.6.7.8"}),
        ],
    )
    .await;
    assert!(again.failures.is_empty());
    assert_eq!(outputs(&again)[0]["geo"]["country"], "NL");
    assert_eq!(hits.total(), before, "served from the cache");
    // A new record is not in the cache.
    run(&pipeline, &[json!({"ip": "9.9.9.9"})]).await;
    assert_eq!(hits.get("geo"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_fails_with_enrich_failed_when_every_provider_fails() {
    let (addr, hits) = provider("127.0.0.1", None).await;
    let base = format!("http://{addr}");
    let pipeline = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/geo",
        "schema": geo_schema(), "cache": {"max_entries": 0},
        "providers": [
            {"name": "down", "url": format!("{base}/fail"), "allow_http": true, "retry": fast_retry()},
            {"name": "wrong", "url": format!("{base}/invalid/{{/ip}}"), "allow_http": true},
            {"name": "needs-field", "url": format!("{base}/geo/{{/missing}}"), "allow_http": true}
        ]}]}),
        Outbound::allowing_private(),
    );
    let out = run(
        &pipeline,
        &[json!({"ip": "1.2.3.4", "email": "jane@example.com"})],
    )
    .await;
    assert_eq!(out.records_out, 0);
    assert_eq!(out.failures.len(), 1);
    let f = &out.failures[0];
    assert_eq!(f.code.as_str(), "ENRICH_FAILED");
    assert_eq!(f.processor_type, "enrich_http");
    for name in [
        "down: answered 500",
        "wrong: the result does not match the schema",
        "needs-field: the record has no `/missing`",
    ] {
        assert!(f.message.contains(name), "{}", f.message);
    }
    assert!(
        !f.message.contains("1.2.3.4") && !f.message.contains("jane"),
        "{}",
        f.message
    );
    assert_eq!(hits.get("geo"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_chat_preset_parses_the_model_answer() {
    let (addr, hits) = provider("127.0.0.1", None).await;
    let provider = |key: &str| {
        json!({"name": "llm", "preset": "openai_chat", "base_url": format!("http://{addr}/v1"),
            "model": "tiny-test-model", "api_key": key, "allow_http": true,
            "prompt": "Sentiment of: {/text}. Answer {\"sentiment\": \"positive\"|\"negative\"}."})
    };
    let schema = json!({"type": "object", "required": ["sentiment"],
        "properties": {"sentiment": {"enum": ["positive", "negative"]}}});
    let pipeline = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/ai", "schema": schema,
            "providers": [provider("sk-test-key")]}]}),
        Outbound::allowing_private(),
    );
    let out = run(
        &pipeline,
        &[json!({"text": "I love it"}), json!({"text": "meh"})],
    )
    .await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let recs = outputs(&out);
    assert_eq!(recs[0]["ai"], json!({"sentiment": "positive"}));
    assert_eq!(recs[1]["ai"], json!({"sentiment": "negative"}));
    assert_eq!(hits.get("chat"), 2);

    let wrong_key = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/ai", "schema": schema,
            "providers": [provider("sk-wrong")]}]}),
        Outbound::allowing_private(),
    );
    let out = run(&wrong_key, &[json!({"text": "x"})]).await;
    assert!(
        out.failures[0].message.contains("answered 401"),
        "{}",
        out.failures[0].message
    );
    assert!(!out.failures[0].message.contains("sk-wrong"));
    assert_eq!(hits.get("chat"), 3, "a 401 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stops_calling_the_provider() {
    let (addr, hits) = provider("127.0.0.1", None).await;
    let pipeline = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/geo",
        "cache": {"max_entries": 0},
        "providers": [
            {"name": "down", "url": format!("http://{addr}/fail"), "allow_http": true,
             "retry": {"max_retries": 0, "initial_backoff_ms": 1, "max_backoff_ms": 1},
             "breaker": {"window": 4, "failures": 2, "cooldown_secs": 3600}},
            {"name": "backup", "url": format!("http://{addr}/geo/{{/ip}}"), "allow_http": true,
             "result_pointer": "/data"}
        ]}]}),
        Outbound::allowing_private(),
    );
    let records: Vec<Value> = (0..6)
        .map(|i| json!({"ip": format!("10.0.0.{i}")}))
        .collect();
    let out = run(&pipeline, &records).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(hits.get("fail"), 2, "the breaker opened after 2 failures");
    assert_eq!(hits.get("geo"), 6, "the backup answered every record");
    let open: Vec<_> = sluice_outbound::snapshots("")
        .into_iter()
        .filter(|s| s.target.ends_with("/processors/0/down"))
        .collect();
    assert!(
        open.iter()
            .any(|s| s.state == sluice_outbound::BreakerState::Open),
        "{open:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_addresses_are_never_called() {
    let (addr, hits) = provider("127.0.0.1", None).await;
    let port = addr.port();
    let urls = [
        format!("http://127.0.0.1:{port}/geo/{{/ip}}"),
        format!("http://localhost:{port}/geo/{{/ip}}"),
        format!("http://[::1]:{port}/geo/{{/ip}}"),
        "http://10.0.0.1/geo/{/ip}".to_owned(),
        "http://169.254.169.254/latest/meta-data/{/ip}".to_owned(),
    ];
    let providers: Vec<Value> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            json!({"name": format!("p{i}"), "url": u, "allow_http": true,
            "retry": {"max_retries": 3, "initial_backoff_ms": 1, "max_backoff_ms": 5}})
        })
        .collect();
    let pipeline = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/geo", "providers": providers}]}),
        Outbound::default(),
    );
    let out = run(&pipeline, &[json!({"ip": "1.2.3.4"})]).await;
    assert_eq!(out.failures.len(), 1);
    let message = &out.failures[0].message;
    assert_eq!(
        message.matches("destination address is private").count(),
        urls.len(),
        "{message}"
    );
    assert_eq!(hits.total(), 0, "no request reached the local server");

    // A public-looking name is fine, but a redirect from an allowed host to
    // a denied one is refused at the hop: the target gets nothing.
    let (inner, inner_hits) = provider("127.0.0.2", None).await;
    let (outer, outer_hits) = provider(
        "127.0.0.1",
        Some(format!("http://127.0.0.2:{}/geo/x", inner.port())),
    )
    .await;
    let allow_one = Outbound::from_config(&sluice_config::server::OutboundConfig {
        allow_private: false,
        allow_cidrs: vec!["127.0.0.1/32".into()],
        extra_ca_file: None,
    })
    .unwrap();
    let pipeline = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/geo",
            "providers": [{"name": "redirecting", "url": format!("http://127.0.0.1:{}/elsewhere", outer.port()), "allow_http": true}]}]}),
        allow_one,
    );
    let out = run(&pipeline, &[json!({"ip": "1.2.3.4"})]).await;
    assert_eq!(out.failures.len(), 1);
    assert!(
        out.failures[0]
            .message
            .contains("destination address is private"),
        "{}",
        out.failures[0].message
    );
    assert_eq!(outer_hits.get("other"), 1);
    assert_eq!(inner_hits.total(), 0);
}

#[test]
fn invalid_provider_configs_are_located() {
    let problems = validate_pipeline(&json!({"name": "e", "processors": [{"type": "enrich_http",
        "target": "geo", "providers": [
            {"name": "a", "url": "http://example.com/{/ip}"},
            {"name": "b", "preset": "openai_chat", "base_url": "https://api.example.com/v1", "model": "m"}
        ]}]}))
    .unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"/processors/0/target"), "{paths:?}");
    assert!(
        paths.contains(&"/processors/0/providers/0/url"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/processors/0/providers/1/prompt"),
        "{paths:?}"
    );
}

/// A provider that takes arrays: `POST /batch` answers one result per
/// item, `/batch-short` one too few, `/batch-wrapped` the results under
/// `/results`; an item whose `ip` starts with `bad` gets a result without
/// a country. Records every request's item count.
async fn batch_provider() -> (SocketAddr, Arc<Mutex<Vec<(String, usize)>>>) {
    type Seen = Arc<Mutex<Vec<(String, usize)>>>;
    let seen: Seen = Arc::default();
    let answer = |items: &[Value]| -> Vec<Value> {
        items
            .iter()
            .map(|item| {
                let ip = item["ip"].as_str().unwrap_or_default();
                if ip.starts_with("bad") {
                    json!({"city": "nowhere"})
                } else {
                    json!({"country": format!("C-{ip}"), "echo": item})
                }
            })
            .collect()
    };
    let app = Router::new()
        .route(
            "/batch",
            post(
                move |State(seen): State<Seen>, Json(body): Json<Vec<Value>>| async move {
                    seen.lock().unwrap().push(("batch".into(), body.len()));
                    Json(Value::Array(answer(&body)))
                },
            ),
        )
        .route(
            "/batch-short",
            post(
                move |State(seen): State<Seen>, Json(body): Json<Vec<Value>>| async move {
                    seen.lock().unwrap().push(("short".into(), body.len()));
                    let mut out = answer(&body);
                    out.pop();
                    Json(Value::Array(out))
                },
            ),
        )
        .route(
            "/batch-wrapped",
            post(
                move |State(seen): State<Seen>, Json(body): Json<Vec<Value>>| async move {
                    seen.lock().unwrap().push(("wrapped".into(), body.len()));
                    Json(json!({"results": answer(&body)}))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn ips(n: usize, prefix: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"ip": format!("{prefix}{i}"), "n": i}))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_mode_sends_arrays_and_merges_each_result_into_its_record() {
    let (addr, seen) = batch_provider().await;
    let pipeline = build(
        json!({"name": "e", "processors": [
            {"type": "map", "ops": [{"op": "add", "path": "/before", "value": true}]},
            {"type": "enrich_http", "target": "/geo", "schema": geo_schema(),
             "providers": [{"name": "bulk", "url": format!("http://{addr}/batch"), "allow_http": true,
                "body": {"ip": "{/ip}"}, "result_pointer": "", "batch": {"max_records": 10}}]},
            {"type": "map", "ops": [{"op": "add", "path": "/after", "value": true}]}
        ]}),
        Outbound::allowing_private(),
    );
    let records = ips(25, "10.1.0.");
    let out = run(&pipeline, &records).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let recs = outputs(&out);
    assert_eq!(recs.len(), 25);
    for (i, r) in recs.iter().enumerate() {
        // Each result went to its own record, in order, after the
        // processors before it and before the ones after it.
        assert_eq!(r["n"], i, "{r}");
        assert_eq!(r["geo"]["country"], format!("C-10.1.0.{i}"), "{r}");
        assert_eq!(
            r["geo"]["echo"],
            json!({"ip": format!("10.1.0.{i}")}),
            "{r}"
        );
        assert_eq!(r["before"], true);
        assert_eq!(r["after"], true);
        assert_eq!(r["_sluice_id"], format!("{}:{i}:0", Uuid::nil()));
    }
    let mut sizes: Vec<usize> = seen.lock().unwrap().iter().map(|(_, n)| *n).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![5, 10, 10], "three requests of at most 10");

    // Again: every record from the cache, no request.
    let again = run(&pipeline, &records).await;
    assert!(again.failures.is_empty());
    assert_eq!(outputs(&again)[3]["geo"]["country"], "C-10.1.0.3");
    assert_eq!(seen.lock().unwrap().len(), 3, "served from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_length_or_an_invalid_item_falls_through_the_waterfall() {
    let (addr, seen) = batch_provider().await;
    let (geo, hits) = provider("127.0.0.1", None).await;
    let pipeline = build(
        json!({"name": "e", "processors": [{"type": "enrich_http", "target": "/geo",
        "schema": geo_schema(), "cache": {"max_entries": 0},
        "providers": [
            {"name": "short", "url": format!("http://{addr}/batch-short"), "allow_http": true,
             "body": {"ip": "{/ip}"}, "batch": {"max_records": 4}},
            {"name": "wrapped", "url": format!("http://{addr}/batch-wrapped"), "allow_http": true,
             "body": {"ip": "{/ip}"}, "batch": {"max_records": 50, "results_pointer": "/results"}},
            {"name": "single", "url": format!("http://{geo}/geo/{{/ip}}"), "result_pointer": "/data",
             "allow_http": true}
        ]}]}),
        Outbound::allowing_private(),
    );
    let mut records = ips(6, "10.2.0.");
    records[2] = json!({"ip": "bad-2", "n": 2});
    records[4] = json!({"n": 4});
    let out = run(&pipeline, &records).await;
    let recs = outputs(&out);
    // Record 4 has no `ip`: no provider could be asked.
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    let f = &out.failures[0];
    assert_eq!(f.record_index, 4);
    assert_eq!(f.code.as_str(), "ENRICH_FAILED");
    for reason in [
        "short: the record has no `/ip`",
        "wrapped: the record has no `/ip`",
        "single: the record has no `/ip`",
    ] {
        assert!(f.message.contains(reason), "{}", f.message);
    }
    assert_eq!(recs.len(), 5);
    // The short answers failed every record of their chunk: the wrapped
    // provider answered them, except the item that did not match the
    // schema, which the single provider answered.
    let by_n = |n: u64| recs.iter().find(|r| r["n"] == n).unwrap();
    for n in [0u64, 1, 3, 5] {
        assert_eq!(
            by_n(n)["geo"]["country"],
            format!("C-10.2.0.{n}"),
            "{}",
            by_n(n)
        );
    }
    assert_eq!(by_n(2)["geo"], json!({"country": "NL", "ip": "bad-2"}));
    let calls = seen.lock().unwrap().clone();
    let short: Vec<usize> = calls
        .iter()
        .filter(|(k, _)| k == "short")
        .map(|c| c.1)
        .collect();
    let wrapped: Vec<usize> = calls
        .iter()
        .filter(|(k, _)| k == "wrapped")
        .map(|c| c.1)
        .collect();
    assert_eq!(
        short.iter().sum::<usize>(),
        5,
        "chunks of at most 4: {short:?}"
    );
    assert!(short.iter().all(|n| *n <= 4), "{short:?}");
    assert_eq!(wrapped, vec![5], "one chunk");
    assert_eq!(hits.get("geo"), 1, "only the invalid item fell through");
}

#[test]
fn chunk_mode_configs_are_checked() {
    let problems = validate_pipeline(&json!({"name": "e", "processors": [{"type": "enrich_http",
    "target": "/geo", "providers": [
        {"name": "a", "url": "https://example.com/{/ip}", "body": {"ip": "{/ip}"},
         "batch": {"max_records": 5000}},
        {"name": "b", "url": "https://example.com/bulk", "batch": {"max_records": 5,
         "results_pointer": "/r/{"}}
    ]}]}))
    .unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "/processors/0/providers/0/batch/max_records",
        "/processors/0/providers/0/url",
        "/processors/0/providers/1/body",
    ] {
        assert!(paths.contains(&expected), "{expected}: {paths:?}");
    }
}
