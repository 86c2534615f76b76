//! API-level tests: compiling, transforming, expressions, ctx, limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::engine::{Engine, Source};
use crate::limits::Budget;
use serde_json::json;

pub(crate) fn env() -> ScriptEnv {
    ScriptEnv {
        tenant_id: Uuid::nil(),
        pipeline_id: Uuid::from_u128(0x1234),
        pipeline_name: "orders".to_owned(),
        pipeline_version: 7,
        hash_key: Arc::from(&b"tenant-key"[..]),
        redact: None,
    }
}

fn call() -> CallContext {
    CallContext {
        batch_id: Uuid::from_u128(0xb),
        record_index: 3,
    }
}

fn script(src: &str) -> Script {
    Script::compile(src, ScriptKind::Transform, ScriptLimits::default(), env())
        .unwrap_or_else(|p| panic!("compile failed: {p:?}"))
}

fn problems(src: &str, kind: ScriptKind) -> Vec<ScriptProblem> {
    Script::compile(src, kind, ScriptLimits::default(), env()).expect_err("should not compile")
}

#[test]
fn transform_modifies_drops_and_splits() {
    let s = script(
        "function transform(r, ctx) {
           if (r.drop) return null;
           if (r.split) return [{n: 1}, {n: 2}];
           r.seen = true;
           return r;
         }",
    );
    let out = s.transform(json!({"a": 1}), &call()).unwrap();
    assert_eq!(out.records, [json!({"a": 1, "seen": true})]);
    assert!(
        s.transform(json!({"drop": true}), &call())
            .unwrap()
            .records
            .is_empty()
    );
    let out = s.transform(json!({"split": true}), &call()).unwrap();
    assert_eq!(out.records, [json!({"n": 1}), json!({"n": 2})]);
}

#[test]
fn undefined_return_drops_the_record() {
    let s = script("function transform(r) {}");
    assert!(
        s.transform(json!({"a": 1}), &call())
            .unwrap()
            .records
            .is_empty()
    );
}

#[test]
fn values_round_trip_natively() {
    let s = script("function transform(r) { return r; }");
    let record = json!({
        "s": "héllo \u{1F600}", "i": 42, "neg": -7, "big": 9007199254740991i64,
        "f": 1.5, "t": true, "n": null, "arr": [1, "two", [3], {"four": 4}],
        "nested": {"deep": {"er": []}}, "__proto__": {"polluted": true}
    });
    let out = s.transform(record.clone(), &call()).unwrap();
    assert_eq!(out.records, [record]);
}

#[test]
fn numbers_follow_json_stringify() {
    let s = script(
        "function transform(r) {
           return {nan: NaN, inf: Infinity, ninf: -Infinity, negzero: -0, whole: 3.0,
                   frac: 0.25, arr: [undefined, function(){}, Symbol('x')],
                   u: undefined, f: function(){}, sym: Symbol('y'), d: new Date(0)};
         }",
    );
    let out = s.transform(json!({}), &call()).unwrap();
    assert_eq!(
        out.records,
        [
            json!({"nan": null, "inf": null, "ninf": null, "negzero": 0, "whole": 3,
                "frac": 0.25, "arr": [null, null, null], "d": "1970-01-01T00:00:00.000Z"})
        ]
    );
}

#[test]
fn syntax_errors_report_line_and_column() {
    let p = problems(
        "function transform(r) {\n  return r +;\n}",
        ScriptKind::Transform,
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].line, 2, "{p:?}");
    assert!(p[0].column > 0);
    assert!(p[0].message.starts_with("SyntaxError"), "{p:?}");
}

#[test]
fn missing_transform_is_reported() {
    let p = problems("function transfrom(r) { return r; }", ScriptKind::Transform);
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("transform"), "{p:?}");
    assert_eq!(p[0].line, 0);
}

#[test]
fn arrow_function_transform_is_accepted() {
    let s = script("const transform = (r) => ({...r, x: 1});");
    assert_eq!(
        s.transform(json!({}), &call()).unwrap().records,
        [json!({"x": 1})]
    );
}

#[test]
fn forbidden_constructs_are_reported_with_position() {
    let p = problems(
        "function transform(r) {\n  r.x = eval('1');\n  setTimeout(() => 1, 5);\n  return r;\n}",
        ScriptKind::Transform,
    );
    let at: Vec<_> = p.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(at, [(2, 9), (3, 3)], "{p:?}");
}

#[test]
fn top_level_throw_is_a_problem() {
    let p = problems(
        "throw new Error('nope');\nfunction transform(r) { return r; }",
        ScriptKind::Transform,
    );
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, 1);
    assert!(p[0].message.contains("nope"));
}

#[test]
fn runtime_errors_carry_message_and_line() {
    let s = script("function transform(r) {\n  return r.missing.field;\n}");
    let err = s.transform(json!({}), &call()).unwrap_err();
    assert_eq!(err.code, ErrorCode::ScriptError);
    assert!(err.message.contains("TypeError"), "{}", err.message);
    assert!(err.message.contains("line 2"), "{}", err.message);
    // The engine keeps working.
    let s2 = script("function transform(r) {\n  return r;\n}");
    assert!(s2.transform(json!({}), &call()).is_ok());
}

#[test]
fn expressions_evaluate_over_r_and_record() {
    let s = Script::compile(
        "r.level === \"error\" && record.code > 3",
        ScriptKind::Expression,
        ScriptLimits::default(),
        env(),
    )
    .unwrap();
    assert_eq!(
        s.eval(&json!({"level": "error", "code": 5}), &call())
            .unwrap(),
        json!(true)
    );
    assert_eq!(
        s.eval(&json!({"level": "info", "code": 5}), &call())
            .unwrap(),
        json!(false)
    );
    let v = Script::compile(
        "r.nope",
        ScriptKind::Expression,
        ScriptLimits::default(),
        env(),
    )
    .unwrap();
    assert_eq!(v.eval(&json!({}), &call()).unwrap(), json!(null));
}

#[test]
fn expressions_must_be_a_single_expression() {
    for src in ["1); globalThis.x = (1", "r.a; r.b", "1]; [2"] {
        let p = problems(src, ScriptKind::Expression);
        assert!(!p.is_empty(), "{src}");
    }
    let p = problems("r.a +\n", ScriptKind::Expression);
    assert_eq!(p[0].line, 1, "{p:?}");
}

#[test]
fn wrong_kind_calls_are_errors() {
    let s = script("function transform(r) { return r; }");
    assert!(s.eval(&json!({}), &call()).is_err());
}

#[test]
fn invalid_limits_are_problems() {
    let limits = ScriptLimits {
        memory_mb: 0,
        ..ScriptLimits::default()
    };
    let p = Script::compile(
        "function transform(r){return r}",
        ScriptKind::Transform,
        limits,
        env(),
    )
    .unwrap_err();
    assert!(p[0].message.contains("memory_mb"));
}

#[test]
fn script_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Script>();
}

// ---- limits ----

fn busy_script(limits: ScriptLimits) -> Script {
    // Spins for `r.ms` milliseconds of (wall, here also CPU) time.
    Script::compile(
        "function transform(r) { const end = Date.now() + r.ms; while (Date.now() < end) {} return r; }",
        ScriptKind::Transform,
        limits,
        env(),
    )
    .unwrap()
}

#[test]
fn per_record_timeout_applies_and_engine_recovers() {
    let s = busy_script(ScriptLimits {
        timeout_ms: 20,
        ..ScriptLimits::default()
    });
    let e = s.transform(json!({"ms": 200}), &call()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ScriptTimeout);
    assert!(e.message.contains("20 ms per record"), "{e}");
    assert!(s.transform(json!({"ms": 1}), &call()).is_ok());
}

#[test]
fn chunk_budget_is_shared_by_the_chunk_and_renewed_by_begin_chunk() {
    // CPU-bound records (a fixed loop, not a wall-clock wait: the budget is
    // CPU time, and tests share the cores).
    let s = Script::compile(
        "function transform(r) { let x = 0; for (let i = 0; i < r.n; i++) x += i; return { x }; }",
        ScriptKind::Transform,
        ScriptLimits {
            timeout_ms: 5_000,
            chunk_timeout_ms: 30,
            ..ScriptLimits::default()
        },
        env(),
    )
    .unwrap();
    s.begin_chunk();
    let mut failed_at = None;
    for i in 0..10_000 {
        if let Err(e) = s.transform(json!({"n": 200_000}), &call()) {
            assert_eq!(e.code, ErrorCode::ScriptTimeout);
            assert!(e.message.contains("30 ms for this chunk"), "{e}");
            failed_at = Some(i);
            break;
        }
    }
    assert!(failed_at.is_some_and(|i| i > 0), "{failed_at:?}");
    // Spent: the next record fails at once, without running.
    let e = s.transform(json!({"n": 0}), &call()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ScriptTimeout);
    s.begin_chunk();
    assert!(s.transform(json!({"n": 0}), &call()).is_ok());
}

#[test]
fn without_begin_chunk_only_the_record_limit_applies() {
    let s = busy_script(ScriptLimits {
        timeout_ms: 50,
        chunk_timeout_ms: 40,
        ..ScriptLimits::default()
    });
    for _ in 0..4 {
        assert!(s.transform(json!({"ms": 20}), &call()).is_ok());
    }
}

#[test]
fn chunk_budgets_are_per_thread() {
    let s = busy_script(ScriptLimits {
        timeout_ms: 50,
        chunk_timeout_ms: 30,
        ..ScriptLimits::default()
    });
    s.begin_chunk();
    assert!(s.transform(json!({"ms": 20}), &call()).is_ok());
    let other = s.clone();
    let ok = std::thread::spawn(move || {
        other.begin_chunk();
        other.transform(json!({"ms": 20}), &call()).is_ok()
    })
    .join()
    .unwrap();
    assert!(ok);
}

#[test]
fn top_level_code_is_bounded_by_the_chunk_budget() {
    let limits = ScriptLimits {
        chunk_timeout_ms: 30,
        ..ScriptLimits::default()
    };
    let p = Script::compile(
        "for (;;) {}\nfunction transform(r) { return r; }",
        ScriptKind::Transform,
        limits,
        env(),
    )
    .unwrap_err();
    assert!(p[0].message.contains("top-level"), "{p:?}");
}

#[test]
fn stack_limit_is_configurable() {
    // Depth reached before the stack limit stops the recursion.
    let src = "function transform(r) { let d = 0; function f() { d++; f(); } try { f(); } catch (e) {} return { d }; }";
    let depth = |kb: u32| {
        let s = Script::compile(
            src,
            ScriptKind::Transform,
            ScriptLimits {
                max_stack_kb: kb,
                ..ScriptLimits::default()
            },
            env(),
        )
        .unwrap();
        s.transform(json!({}), &call()).unwrap().records[0]["d"]
            .as_u64()
            .unwrap()
    };
    let (small, big) = (depth(64), depth(1024));
    assert!(small > 10, "{small}");
    assert!(big > small * 8, "64 KiB: {small}, 1024 KiB: {big}");
}

#[test]
fn output_limit_counts_all_returned_records() {
    let s = Script::compile(
        "function transform(r) { return Array.from({length: r.n}, () => ({s: 'x'.repeat(90)})); }",
        ScriptKind::Transform,
        ScriptLimits {
            max_output_bytes: 1000,
            ..ScriptLimits::default()
        },
        env(),
    )
    .unwrap();
    // Each record is {"s":"x...x"} = 98 bytes (+1 separator).
    assert_eq!(
        s.transform(json!({"n": 9}), &call()).unwrap().records.len(),
        9
    );
    let e = s.transform(json!({"n": 11}), &call()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ScriptOutputTooLarge);
}

// ---- sandbox routes the config-time scan would already reject ----

fn unscanned(src: &str) -> Engine {
    let source = Source {
        text: src,
        kind: ScriptKind::Transform,
    };
    match Engine::start(
        &source,
        &ScriptLimits::default(),
        &env(),
        Duration::from_secs(5),
        false,
    ) {
        Ok(e) => e,
        Err(_) => panic!("engine should start"),
    }
}

fn run(engine: &mut Engine, record: serde_json::Value) -> Result<TransformOutput, ScriptError> {
    let r = engine.transform(
        &record,
        Uuid::nil(),
        0,
        Duration::from_millis(500),
        Budget::Record,
    );
    r.result.map_err(|f| f.error)
}

#[test]
fn async_constructors_are_neutralised_at_runtime() {
    let mut engine = unscanned(
        "function transform(r) {
           const tries = {
             asyncFn: () => Object.getPrototypeOf(async function () {}).constructor('return 1'),
             asyncGen: () => Object.getPrototypeOf(async function* () {}).constructor('yield 1'),
             asyncArrow: () => (async () => 1).constructor('return 1'),
             fn: () => Function('return 1'),
             ev: () => eval('1'),
           };
           const out = {};
           for (const k in tries) {
             try { tries[k](); out[k] = 'escaped'; } catch (e) { out[k] = e.constructor.name; }
           }
           out.promise = typeof Promise;
           return out;
         }",
    );
    let out = run(&mut engine, json!({})).unwrap();
    assert_eq!(
        out.records,
        [
            json!({"asyncFn": "TypeError", "asyncGen": "TypeError", "asyncArrow": "TypeError",
                "fn": "TypeError", "ev": "ReferenceError", "promise": "undefined"})
        ]
    );
}

#[test]
fn async_work_is_an_error_and_discards_the_engine() {
    let mut engine = unscanned(
        "async function later(r) { await null; r.late = true; }
         function transform(r) {
           if (r.returnPromise) return (async () => r)();
           if (r.schedule) later(r);
           return r;
         }",
    );
    let e = run(&mut engine, json!({"returnPromise": true})).unwrap_err();
    assert!(e.message.contains("Promise"), "{e}");
    let r = engine.transform(
        &json!({"schedule": true}),
        Uuid::nil(),
        0,
        Duration::from_millis(500),
        Budget::Record,
    );
    let f = r.result.unwrap_err();
    assert!(f.discard);
    assert!(
        f.error.message.contains("asynchronous"),
        "{}",
        f.error.message
    );
}

// ---- metrics ----

mod recorder {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit,
    };

    #[derive(Default)]
    pub struct Counts(pub Mutex<HashMap<String, Arc<Cell>>>);

    #[derive(Default)]
    pub struct Cell(AtomicU64);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl Counts {
        pub fn get(&self, key: &str) -> u64 {
            self.0
                .lock()
                .unwrap()
                .get(key)
                .map_or(0, |c| c.0.load(Ordering::Relaxed))
        }
    }

    impl metrics::Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let cell = self.0.lock().unwrap().entry(name).or_default().clone();
            Counter::from_arc(cell)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}

#[test]
fn limit_hits_and_errors_are_counted() {
    let counts = recorder::Counts::default();
    metrics::with_local_recorder(&counts, || {
        let s = Script::compile(
            "function transform(r) { if (r.loop) for (;;) {} if (r.big) return {s: 'x'.repeat(2e6)}; if (r.boom) throw new Error('b'); return r; }",
            ScriptKind::Transform,
            ScriptLimits::default(),
            env(),
        )
        .unwrap();
        assert!(s.transform(json!({"loop": true}), &call()).is_err());
        assert!(s.transform(json!({"big": true}), &call()).is_err());
        assert!(s.transform(json!({"boom": true}), &call()).is_err());
        assert!(s.transform(json!({}), &call()).is_ok());
    });
    assert_eq!(
        counts.get("sluice_script_limit_hits_total{limit=timeout}"),
        1
    );
    assert_eq!(
        counts.get("sluice_script_limit_hits_total{limit=output}"),
        1
    );
    assert_eq!(
        counts.get("sluice_script_errors_total{code=SCRIPT_TIMEOUT}"),
        1
    );
    assert_eq!(
        counts.get("sluice_script_errors_total{code=SCRIPT_OUTPUT_TOO_LARGE}"),
        1
    );
    assert_eq!(
        counts.get("sluice_script_errors_total{code=SCRIPT_ERROR}"),
        1
    );
}

// ---- ctx ----

#[test]
fn ctx_exposes_pipeline_batch_and_api_version() {
    let s = script(
        "function transform(r, ctx) {
           return { p: ctx.pipeline, b: ctx.batch, v: ctx.apiVersion, same: ctx.batch === ctx.batch };
         }",
    );
    let out = s.transform(json!({}), &call()).unwrap();
    assert_eq!(
        out.records,
        [json!({
            "p": {"id": Uuid::from_u128(0x1234).to_string(), "name": "orders", "version": 7},
            "b": {"id": Uuid::from_u128(0xb).to_string(), "index": 3},
            "v": CTX_API_VERSION,
            "same": false
        })]
    );
    let next = CallContext {
        batch_id: Uuid::from_u128(0xc),
        record_index: 4,
    };
    let out = s.transform(json!({}), &next).unwrap();
    assert_eq!(
        out.records[0]["b"],
        json!({"id": Uuid::from_u128(0xc).to_string(), "index": 4})
    );
}

fn redacting_env() -> ScriptEnv {
    ScriptEnv {
        redact: Some(Arc::new(|s: &str| {
            s.replace("alice@example.com", "[EMAIL]")
        })),
        ..env()
    }
}

#[test]
fn ctx_log_is_captured_redacted_and_capped() {
    let s = Script::compile(
        "function transform(r, ctx) {
           ctx.log('user', r.email, 'tried', 3, 'times', {a: [1, null]}, undefined, NaN);
           ctx.log(new Error('bad thing'), Symbol('s'), () => 1, 10n);
           for (let i = 0; i < 10; i++) ctx.log('spam', i);
           return r;
         }",
        ScriptKind::Transform,
        ScriptLimits {
            max_log_lines: 3,
            ..ScriptLimits::default()
        },
        redacting_env(),
    )
    .unwrap();
    let out = s
        .transform(json!({"email": "alice@example.com"}), &call())
        .unwrap();
    assert_eq!(
        out.logs,
        [
            "user [EMAIL] tried 3 times {\"a\":[1,null]} undefined NaN",
            "bad thing [a symbol] [a function] [bigint]",
            "spam 0",
        ]
    );
    // The log buffer starts empty for every record.
    let out = s.transform(json!({"email": "x"}), &call()).unwrap();
    assert_eq!(out.logs.len(), 3);
    assert_eq!(
        out.logs[0],
        "user x tried 3 times {\"a\":[1,null]} undefined NaN"
    );
}

#[test]
fn ctx_hash_is_the_tenant_keyed_hmac() {
    let s = script(
        "function transform(r, ctx) { return { s: ctx.hash(r.s), o: ctx.hash({b: 1, a: [2]}), n: ctx.hash(5) }; }",
    );
    let out = s.transform(json!({"s": "alice"}), &call()).unwrap();
    let key = b"tenant-key";
    assert_eq!(out.records[0]["s"], json!(host::hmac_hex(key, b"alice")));
    assert_eq!(
        out.records[0]["o"],
        json!(host::hmac_hex(key, br#"{"a":[2],"b":1}"#))
    );
    assert_eq!(out.records[0]["n"], json!(host::hmac_hex(key, b"5")));
    assert_eq!(out.records[0]["s"].as_str().unwrap().len(), 64);
}

#[test]
fn ctx_redact_uses_the_pii_engine_or_is_identity() {
    let src =
        "function transform(r, ctx) { return { t: ctx.redact('mail alice@example.com now') }; }";
    let with = Script::compile(
        src,
        ScriptKind::Transform,
        ScriptLimits::default(),
        redacting_env(),
    )
    .unwrap();
    assert_eq!(
        with.transform(json!({}), &call()).unwrap().records,
        [json!({"t": "mail [EMAIL] now"})]
    );
    let without = script(src);
    assert_eq!(
        without.transform(json!({}), &call()).unwrap().records,
        [json!({"t": "mail alice@example.com now"})]
    );
}

#[test]
fn ctx_now_is_milliseconds_since_the_epoch() {
    let s = script("function transform(r, ctx) { return { now: ctx.now() }; }");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let out = s.transform(json!({}), &call()).unwrap();
    let now = out.records[0]["now"].as_u64().unwrap();
    assert!(now >= before && now < before + 5_000, "{now} vs {before}");
}

#[test]
fn ctx_is_available_to_expressions() {
    let s = Script::compile(
        "ctx.pipeline.name + ':' + r.id",
        ScriptKind::Expression,
        ScriptLimits::default(),
        env(),
    )
    .unwrap();
    assert_eq!(
        s.eval(&json!({"id": 9}), &call()).unwrap(),
        json!("orders:9")
    );
}

// ---- conversion details ----

#[test]
fn keys_shadowing_object_prototype_round_trip() {
    let s = script("function transform(r) { r.added = Object.keys(r).length; return r; }");
    let record = json!({
        "__proto__": 1, "constructor": "c", "toString": "t", "valueOf": [1],
        "hasOwnProperty": {"x": 1}, "__defineGetter__": null, "0": "zero", "10": 10, "": "empty"
    });
    let out = s.transform(record.clone(), &call()).unwrap();
    let mut expected = record;
    expected["added"] = json!(9);
    assert_eq!(out.records, [expected]);
}

#[test]
fn key_cache_stays_correct_across_many_distinct_keys() {
    // More distinct names than the cache holds, over several records, plus
    // names built at run time: every record must come back exactly.
    let s = script(
        "function transform(r) { const o = {}; for (const k in r) o[k + '!'] = r[k]; return o; }",
    );
    for round in 0..3 {
        let mut record = serde_json::Map::new();
        for i in 0..3000 {
            record.insert(format!("k{round}_{i}"), json!(i));
        }
        let out = s
            .transform(serde_json::Value::Object(record.clone()), &call())
            .unwrap();
        let expected: serde_json::Map<String, serde_json::Value> = record
            .into_iter()
            .map(|(k, v)| (format!("{k}!"), v))
            .collect();
        assert_eq!(out.records, [serde_json::Value::Object(expected)]);
    }
}

#[test]
fn one_script_runs_on_many_threads_each_with_its_own_engine() {
    let s = script("let calls = 0;\nfunction transform(r) { calls++; r.calls = calls; return r; }");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    let out = s.transform(json!({"t": t, "i": i}), &call()).unwrap();
                    // `calls` is per engine instance, so per thread.
                    assert_eq!(out.records, [json!({"t": t, "i": i, "calls": i + 1})]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Engines of threads that ended were dropped with them; this thread
    // still starts its own.
    assert_eq!(
        s.transform(json!({}), &call()).unwrap().records,
        [json!({"calls": 1})]
    );
}

#[test]
fn dropped_scripts_release_their_engines_on_the_next_new_script() {
    for i in 0..(MAX_ENGINES_PER_THREAD + 10) {
        let s = script(&format!("function transform(r) {{ r.v = {i}; return r; }}"));
        assert_eq!(
            s.transform(json!({}), &call()).unwrap().records,
            [json!({"v": i})]
        );
    }
    let live = SLOTS.with(|slots| slots.borrow().len());
    assert!(live <= 2, "{live} slots kept for dropped scripts");
}

#[test]
fn records_nested_too_deep_fail_cleanly() {
    let s = script("function transform(r) { return r; }");
    let mut deep = json!(1);
    for _ in 0..300 {
        deep = json!({ "d": deep });
    }
    let e = s.transform(deep, &call()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ScriptError);
    assert!(e.message.contains("cannot be passed"), "{e}");
    assert!(s.transform(json!({}), &call()).is_ok());
}

#[test]
fn instanceof_function_is_allowed() {
    let s = script("function transform(r) { return { f: (() => 1) instanceof Function }; }");
    assert_eq!(
        s.transform(json!({}), &call()).unwrap().records,
        [json!({"f": true})]
    );
}

#[test]
fn engine_restarts_are_charged_to_the_chunk() {
    // Top-level code that takes a while, and records that time out (so the
    // engine is rebuilt, re-running the top level, for every record).
    let limits = ScriptLimits {
        timeout_ms: 5,
        chunk_timeout_ms: 200,
        ..ScriptLimits::default()
    };
    let s = Script::compile(
        "let x = 0; for (let i = 0; i < 300000; i++) x += i;\nfunction transform(r) { for (;;) {} }",
        ScriptKind::Transform,
        limits,
        env(),
    )
    .unwrap();
    s.begin_chunk();
    let started = std::time::Instant::now();
    let mut spent_at = None;
    for i in 0..10_000 {
        let e = s.transform(json!({}), &call()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ScriptTimeout, "{}", e.message);
        if e.message.contains("for this chunk") {
            spent_at = Some(i);
            break;
        }
    }
    // Only timed-out records would spend it after 40; the restarts count.
    assert!(spent_at.is_some_and(|i| i < 32), "{spent_at:?}");
    // Once spent, records fail without starting anything.
    let quick = std::time::Instant::now();
    for _ in 0..100 {
        assert!(s.transform(json!({}), &call()).is_err());
    }
    assert!(
        quick.elapsed() < Duration::from_millis(100),
        "{:?}",
        quick.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
