//! API-level tests: compiling, transforming, expressions, ctx, limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
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
