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
