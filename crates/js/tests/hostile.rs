//! Hostile scripts: escape and abuse attempts against the sandbox (issue 5,
//! "Bad input"). Every attack must end as a per-record error or a safe
//! result, and the same script must then still process a normal record on
//! the same thread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::{Value, json};
use sluice_core::ErrorCode;
use sluice_js::{
    CallContext, Script, ScriptEnv, ScriptError, ScriptKind, ScriptLimits, TransformOutput,
};
use uuid::Uuid;

fn env() -> ScriptEnv {
    ScriptEnv {
        tenant_id: Uuid::from_u128(1),
        pipeline_id: Uuid::from_u128(2),
        pipeline_name: "hostile".to_owned(),
        pipeline_version: 1,
        hash_key: Arc::from(&b"k"[..]),
        redact: None,
    }
}

fn call() -> CallContext {
    CallContext {
        batch_id: Uuid::from_u128(3),
        record_index: 0,
    }
}

/// A script that runs `attack` for records with `attack: true` and marks
/// every other record `ok`.
fn hostile(attack: &str) -> Script {
    hostile_with(attack, ScriptLimits::default())
}

fn hostile_with(attack: &str, limits: ScriptLimits) -> Script {
    let src = format!(
        "function transform(r, ctx) {{\n  if (r.attack) {{\n{attack}\n  }}\n  r.ok = true;\n  return r;\n}}"
    );
    Script::compile(&src, ScriptKind::Transform, limits, env())
        .unwrap_or_else(|p| panic!("attack should compile: {p:?}\n{src}"))
}

/// Limits for the memory cases: enough time that memory runs out first,
/// even in an unoptimised build.
fn memory_limits() -> ScriptLimits {
    ScriptLimits {
        timeout_ms: 10_000,
        ..ScriptLimits::default()
    }
}

fn attack_with(code: &str, limits: ScriptLimits, expected: ErrorCode) -> ScriptError {
    let script = hostile_with(code, limits);
    let e = script
        .transform(json!({"attack": true}), &call())
        .expect_err("attack should fail");
    assert_eq!(e.code, expected, "{e}");
    assert_recovers(&script);
    e
}

/// The script still works for normal records after the attack.
fn assert_recovers(script: &Script) {
    for n in 0..2 {
        let out = script
            .transform(json!({"n": n}), &call())
            .unwrap_or_else(|e| panic!("normal record failed after the attack: {e}"));
        assert_eq!(out.records, [json!({"n": n, "ok": true})]);
    }
}

fn attack(attack: &str) -> Result<TransformOutput, ScriptError> {
    let script = hostile(attack);
    let result = script.transform(json!({"attack": true}), &call());
    assert_recovers(&script);
    result
}

fn attack_fails(code: &str, expected: ErrorCode) -> ScriptError {
    match attack(code) {
        Ok(out) => panic!("attack should fail with {expected}, got {:?}", out.records),
        Err(e) => {
            assert_eq!(e.code, expected, "{e}");
            e
        }
    }
}

/// The attack returns normally; returns its records.
fn attack_is_harmless(code: &str) -> Vec<Value> {
    attack(code)
        .unwrap_or_else(|e| panic!("attack should end normally: {e}"))
        .records
}

fn rejected_at_compile(src: &str) {
    let problems = Script::compile(src, ScriptKind::Transform, ScriptLimits::default(), env())
        .expect_err("should be rejected");
    assert!(problems.iter().all(|p| !p.message.is_empty()));
}

// ---- CPU ----

#[test]
fn h01_infinite_loop() {
    let e = attack_fails("while (true) {}", ErrorCode::ScriptTimeout);
    assert!(e.message.contains("50 ms"), "{e}");
}

#[test]
fn h02_infinite_loop_that_catches_the_interrupt() {
    attack_fails(
        "for (;;) { try { while (true) {} } catch (e) {} finally { continue; } }",
        ErrorCode::ScriptTimeout,
    );
}

#[test]
fn h03_regex_catastrophic_backtracking() {
    attack_fails(
        "r.m = /^(a+)+$/.test('a'.repeat(40) + 'b');",
        ErrorCode::ScriptTimeout,
    );
}

#[test]
fn h04_endless_sort_comparator() {
    attack_fails(
        "const a = Array.from({length: 1000}, (_, i) => i); a.sort(() => { for (;;) {} });",
        ErrorCode::ScriptTimeout,
    );
}

#[test]
fn h05_getter_that_never_returns_during_output_conversion() {
    attack_fails(
        "return { get x() { for (;;) {} } };",
        ErrorCode::ScriptTimeout,
    );
}

// ---- stack ----

#[test]
fn h06_deep_recursion() {
    let e = attack_fails(
        "function f(n) { return f(n + 1) + 1; } f(0);",
        ErrorCode::ScriptError,
    );
    assert!(e.message.contains("stack"), "{e}");
}

#[test]
fn h07_recursion_that_catches_stack_overflow_and_recurses_again() {
    let e =
        attack("function f() { try { return f(); } catch (e) { return f(); } } f();").unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::ScriptTimeout | ErrorCode::ScriptError),
        "{e}"
    );
}

#[test]
fn h08_json_parse_of_deep_nesting() {
    let e = attack("JSON.parse('['.repeat(100000) + ']'.repeat(100000));").unwrap_err();
    assert_eq!(e.code, ErrorCode::ScriptError, "{e}");
}

// ---- memory ----

#[test]
fn h09_huge_array() {
    attack_with(
        "new Array(1e9).fill(0);",
        memory_limits(),
        ErrorCode::ScriptMemoryLimit,
    );
}

#[test]
fn h10_string_doubling() {
    let e = attack("let s = 'x'; while (true) s += s;").unwrap_err();
    // QuickJS refuses strings past 2^30 characters with a RangeError if the
    // memory limit has not stopped it first.
    assert!(
        matches!(
            e.code,
            ErrorCode::ScriptMemoryLimit | ErrorCode::ScriptError
        ),
        "{e}"
    );
}

#[test]
fn h11_object_accumulation() {
    attack_with(
        "const a = []; for (;;) a.push({ i: a.length, s: 'p' + a.length });",
        memory_limits(),
        ErrorCode::ScriptMemoryLimit,
    );
}

#[test]
fn h12_allocation_that_swallows_out_of_memory() {
    let script = hostile_with(
        "const a = []; for (;;) { try { a.push(new Array(1e5).fill(1)); } catch (e) {} }",
        ScriptLimits {
            timeout_ms: 500,
            ..ScriptLimits::default()
        },
    );
    let e = script
        .transform(json!({"attack": true}), &call())
        .unwrap_err();
    assert_recovers(&script);
    assert!(
        matches!(
            e.code,
            ErrorCode::ScriptMemoryLimit | ErrorCode::ScriptTimeout
        ),
        "{e}"
    );
}

// ---- output ----

#[test]
fn h13_very_large_output() {
    attack_fails(
        "return { s: 'x'.repeat(2e6) };",
        ErrorCode::ScriptOutputTooLarge,
    );
}

#[test]
fn h14_exponential_shared_structure() {
    // 2^40 leaves if expanded: must stop at the output limit, fast.
    attack_fails(
        "let a = [1]; for (let i = 0; i < 40; i++) a = [a, a]; return { a };",
        ErrorCode::ScriptOutputTooLarge,
    );
}

#[test]
fn h15_split_into_a_million_records() {
    let limits = ScriptLimits {
        max_output_bytes: 100_000,
        timeout_ms: 10_000,
        ..ScriptLimits::default()
    };
    attack_with(
        "return Array.from({ length: 1e5 }, (_, i) => ({ i }));",
        limits,
        ErrorCode::ScriptOutputTooLarge,
    );
}

#[test]
fn h16_cyclic_return() {
    let e = attack_fails("r.self = r; return r;", ErrorCode::ScriptError);
    assert!(e.message.contains("cyclic"), "{e}");
}

#[test]
fn h17_nesting_too_deep() {
    let e = attack_fails(
        "let o = {}; for (let i = 0; i < 10000; i++) o = { o }; return o;",
        ErrorCode::ScriptError,
    );
    assert!(e.message.contains("deeper"), "{e}");
}

// ---- values JSON cannot hold ----

#[test]
fn h18_bigint() {
    let e = attack_fails("r.big = 10n ** 30n; return r;", ErrorCode::ScriptError);
    assert!(e.message.contains("BigInt"), "{e}");
}

#[test]
fn h19_symbols() {
    attack_fails("return Symbol('x');", ErrorCode::ScriptError);
    // As JSON.stringify: symbol properties and values are left out.
    let out = attack_is_harmless("return { [Symbol('k')]: 1, v: Symbol('v'), a: [Symbol('a')] };");
    assert_eq!(out, [json!({"a": [null]})]);
}

#[test]
fn h20_throwing_getter() {
    let e = attack_fails(
        "return { get x() { throw new Error('boom'); } };",
        ErrorCode::ScriptError,
    );
    assert!(e.message.contains("boom"), "{e}");
}

#[test]
fn h21_throwing_and_self_returning_to_json() {
    attack_fails(
        "return { x: { toJSON() { throw new RangeError('nope'); } } };",
        ErrorCode::ScriptError,
    );
    let out = attack_is_harmless("const o = { a: 1, toJSON() { return this; } }; return { o };");
    assert_eq!(out, [json!({"o": {"a": 1}})]);
}

#[test]
fn h22_functions_and_non_objects_returned() {
    attack_fails("return function () {};", ErrorCode::ScriptError);
    attack_fails("return 42;", ErrorCode::ScriptError);
    attack_fails("return [1, 2];", ErrorCode::ScriptError);
    let out = attack_is_harmless("return { f() {}, n: NaN, i: -Infinity };");
    assert_eq!(out, [json!({"n": null, "i": null})]);
}

#[test]
fn h23_lone_surrogates() {
    let out = attack_is_harmless("return { s: 'a\\uD800b', [\"k\\uDC00\"]: 1 };");
    assert_eq!(out, [json!({"s": "a\u{FFFD}b", "k\u{FFFD}": 1})]);
}

// ---- throwing ----

#[test]
fn h24_throwing_non_error_values() {
    for (thrown, shown) in [
        ("'a string'", "a string"),
        ("42", "42"),
        ("undefined", "undefined"),
        ("{ code: 7 }", "{\"code\":7}"),
        ("Symbol('s')", "symbol"),
        ("10n", "big_int"),
    ] {
        let e = attack_fails(&format!("throw {thrown};"), ErrorCode::ScriptError);
        assert!(e.message.contains(shown), "{thrown}: {e}");
    }
    // QuickJS throws `null` when it cannot even allocate its out-of-memory
    // error, so a thrown `null` reads as a memory-limit hit (documented).
    attack_fails("throw null;", ErrorCode::ScriptMemoryLimit);
}

#[test]
fn h25_error_with_hostile_message_getter() {
    let e = attack_fails(
        "const e = new Error('x'); Object.defineProperty(e, 'message', { get() { throw e; } }); throw e;",
        ErrorCode::ScriptError,
    );
    assert!(!e.message.is_empty());
    attack_fails(
        "const e = new TypeError('y'); Object.defineProperty(e, 'message', { get() { for (;;) {} } }); throw e;",
        ErrorCode::ScriptTimeout,
    );
}

// ---- code compilation, every route ----

#[test]
fn h26_function_constructor_via_function_prototype() {
    let e = attack_fails(
        "return (function () {}).constructor('return globalThis')();",
        ErrorCode::ScriptError,
    );
    assert!(e.message.contains("not available"), "{e}");
    attack_fails(
        "return (() => 1).constructor('return 1')();",
        ErrorCode::ScriptError,
    );
    attack_fails(
        "return [].constructor.constructor('return 1')();",
        ErrorCode::ScriptError,
    );
    attack_fails(
        "return globalThis.constructor.constructor('return 1')();",
        ErrorCode::ScriptError,
    );
    attack_fails(
        "return ctx.log.constructor('return 1')();",
        ErrorCode::ScriptError,
    );
}

#[test]
fn h27_generator_function_constructor() {
    let e = attack_fails(
        "const G = Object.getPrototypeOf(function* () {}).constructor; return G('yield 1')().next();",
        ErrorCode::ScriptError,
    );
    assert!(e.message.contains("not available"), "{e}");
    attack_fails(
        "return (function* () {}).constructor('yield 1');",
        ErrorCode::ScriptError,
    );
}

#[test]
fn h28_function_constructor_via_reflect() {
    attack_fails(
        "const F = Reflect.get(Reflect.getPrototypeOf(() => 1), 'constr' + 'uctor'); \
         return Reflect.construct(F, ['return 1'])();",
        ErrorCode::ScriptError,
    );
    attack_fails(
        "const F = Reflect.getOwnPropertyDescriptor(Object.getPrototypeOf(function(){}), 'constructor').value; \
         return Reflect.apply(F, null, ['return 1'])();",
        ErrorCode::ScriptError,
    );
}

#[test]
fn h29_eval_and_function_via_global_lookups() {
    let e = attack_fails(
        "return globalThis['ev' + 'al']('1');",
        ErrorCode::ScriptError,
    );
    assert!(e.message.contains("not a function"), "{e}");
    attack_fails(
        "return globalThis['Func' + 'tion']('return 1')();",
        ErrorCode::ScriptError,
    );
    attack_fails("return this.constructor;", ErrorCode::ScriptError);
    let out = attack_is_harmless(
        "r.found = ['eval', 'Function', 'WebAssembly', 'SharedArrayBuffer', 'Atomics', 'Promise', \
         'require', 'process', 'std', 'os', 'print', 'console', 'fetch', 'setTimeout', 'Proxy', \
         'WeakRef', 'FinalizationRegistry', 'queueMicrotask', 'performance', 'ArrayBuffer'] \
         .filter((n) => typeof globalThis[n] !== 'undefined' && n !== 'Function'); return r;",
    );
    assert_eq!(out[0]["found"], json!([]));
}

#[test]
fn h30_async_and_import_are_rejected_at_compile_time() {
    rejected_at_compile("async function transform(r) { return r; }");
    rejected_at_compile(
        "function transform(r) { const A = Object.getPrototypeOf(async function () {}); return r; }",
    );
    rejected_at_compile("function transform(r) { import('fs'); return r; }");
    rejected_at_compile("import fs from 'fs';\nfunction transform(r) { return r; }");
    rejected_at_compile("function transform(r) { return require('fs'); }");
    rejected_at_compile("function transform(r) { with (r) { return a; } }");
}

#[test]
fn h31_stack_trace_hooks_are_frozen() {
    attack_fails(
        "Error.prepareStackTrace = (e, frames) => frames[0].getFunction(); return { s: new Error().stack };",
        ErrorCode::ScriptError,
    );
    attack_fails("Error.stackTraceLimit = 1e9;", ErrorCode::ScriptError);
}

// ---- state across records ----

#[test]
fn h32_prototype_pollution_does_not_reach_the_next_record() {
    let script = Script::compile(
        "function transform(r) {
           if (r.attack) {
             const tries = [
               () => { Object.prototype.polluted = 1; },
               () => { Array.prototype.push = () => 0; },
               () => { String.prototype.trim = () => 'pwned'; },
               () => { Object.defineProperty(Object.prototype, 'x', { get() { return 1; } }); },
               () => { Object.setPrototypeOf(Object.prototype, { polluted: 1 }); },
               () => { delete Array.prototype.map; },
               () => { Math.random = () => 4; },
               () => { JSON.stringify = () => 'x'; },
               () => { r.__proto__.polluted = 1; },
               () => { ({}).constructor.prototype.polluted = 1; },
               () => { Object.prototype.toString = () => 'pwned'; },
               () => { Object.prototype.__proto__ = { polluted: 1 }; },
             ];
             r.blocked = tries.filter((t) => { try { t(); return false; } catch (e) { return e instanceof TypeError; } }).length;
             return r;
           }
           return { polluted: ({}).polluted, x: ({}).x, push: [].push(1), trim: ' a '.trim(),
                    map: typeof [].map, random: Math.random() < 1, str: String({}) };
         }",
        ScriptKind::Transform,
        ScriptLimits::default(),
        env(),
    )
    .unwrap();
    let out = script.transform(json!({"attack": true}), &call()).unwrap();
    assert_eq!(out.records[0]["blocked"], json!(12));
    let out = script.transform(json!({}), &call()).unwrap();
    assert_eq!(
        out.records,
        [
            json!({"push": 1, "trim": "a", "map": "function", "random": true, "str": "[object Object]"})
        ]
    );
}

#[test]
fn h33_proto_key_in_input_does_not_pollute() {
    let script = Script::compile(
        "function transform(r) { return { admin: ({}).isAdmin === true, own: r.__proto__.isAdmin === true, keys: Object.keys(r) }; }",
        ScriptKind::Transform,
        ScriptLimits::default(),
        env(),
    )
    .unwrap();
    let out = script
        .transform(json!({"__proto__": {"isAdmin": true}, "constructor": {"prototype": {"isAdmin": true}}}), &call())
        .unwrap();
    assert_eq!(
        out.records,
        [json!({"admin": false, "own": true, "keys": ["__proto__", "constructor"]})]
    );
}

#[test]
fn h34_globals_and_ctx_are_frozen() {
    attack_fails("globalThis.leak = 1;", ErrorCode::ScriptError);
    attack_fails("ctx.leak = 1;", ErrorCode::ScriptError);
    attack_fails("ctx.pipeline.name = 'other';", ErrorCode::ScriptError);
    attack_fails("ctx.log = () => {};", ErrorCode::ScriptError);
    let script = Script::compile(
        "var count = 0;\nfunction transform(r) { count++; return r; }",
        ScriptKind::Transform,
        ScriptLimits::default(),
        env(),
    )
    .unwrap();
    let e = script.transform(json!({}), &call()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ScriptError);
}

#[test]
fn h35_assignments_that_frozen_prototypes_would_block_still_work_on_own_objects() {
    let out = attack_is_harmless(
        "const o = {}; o.toString = () => 'mine'; o.constructor = 'c'; o.hasOwnProperty = 1; \
         class E extends Error { constructor(m) { super(m); this.name = 'E'; } } \
         const e = new E('m'); const t = new TypeError(); t.message = 'set'; \
         return { s: String(o), c: o.constructor, h: o.hasOwnProperty, n: e.name, m: t.message };",
    );
    assert_eq!(
        out,
        [json!({"s": "mine", "c": "c", "h": 1, "n": "E", "m": "set"})]
    );
}

// ---- host surface ----

#[test]
fn h36_ctx_functions_reject_hostile_arguments() {
    attack_fails(
        "const o = {}; o.o = o; ctx.hash(o);",
        ErrorCode::ScriptError,
    );
    attack_fails("ctx.hash(10n);", ErrorCode::ScriptError);
    attack_fails(
        "ctx.redact({ toString() { return 'x'; } });",
        ErrorCode::ScriptError,
    );
    attack_fails("new ctx.log();", ErrorCode::ScriptError);
    let out = attack_is_harmless(
        "r.proto = Object.getPrototypeOf(ctx.log) === Object.getPrototypeOf(function () {}); \
         r.keys = Object.keys(ctx).sort(); return r;",
    );
    assert_eq!(out[0]["proto"], json!(true));
    assert_eq!(
        out[0]["keys"],
        json!([
            "apiVersion",
            "batch",
            "hash",
            "log",
            "now",
            "pipeline",
            "redact"
        ])
    );
}

#[test]
fn h37_log_flood_is_capped() {
    let out = attack(
        "const big = 'x'.repeat(10000); for (let i = 0; i < 1e4; i++) ctx.log('line', i, big); return r;",
    )
    .unwrap();
    let limits = ScriptLimits::default();
    assert_eq!(out.logs.len(), limits.max_log_lines as usize);
    assert!(out.logs.iter().all(|l| l.len() <= 4096 + '…'.len_utf8()));
}

#[test]
fn h38_arguments_callee_and_caller_are_blocked() {
    attack_fails("return arguments.callee;", ErrorCode::ScriptError);
    attack_fails(
        "function g() { return g.caller; } return { c: g() };",
        ErrorCode::ScriptError,
    );
}

#[test]
fn h39_intrinsic_state_setters_are_not_a_side_channel() {
    // Symbol.for registry and RegExp statics: whatever one record leaves
    // there must not be readable as a value by the next one.
    let out = attack_is_harmless(
        "r.regexpStatic = typeof RegExp.$1; r.lastMatch = typeof RegExp.lastMatch; return r;",
    );
    assert_eq!(out[0]["regexpStatic"], json!("undefined"));
    assert_eq!(out[0]["lastMatch"], json!("undefined"));
}

#[test]
fn h40_memory_is_released_after_many_memory_limit_hits() {
    // The same thread hits the memory limit repeatedly; each hit discards the
    // engine, so usage must not add up (see tests/memory.rs for RSS).
    let script = hostile_with(
        "const a = []; for (;;) a.push('x'.repeat(1000) + a.length);",
        memory_limits(),
    );
    for _ in 0..10 {
        let e = script
            .transform(json!({"attack": true}), &call())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ScriptMemoryLimit, "{e}");
    }
    assert_recovers(&script);
}

#[test]
fn h41_the_global_object_holds_exactly_the_allowed_names() {
    // A guard for engine upgrades: a new intrinsic must be reviewed before
    // scripts can reach it.
    let out = attack_is_harmless("r.g = Reflect.ownKeys(globalThis).map(String).sort(); return r;");
    let names: Vec<&str> = out[0]["g"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "AggregateError",
            "Array",
            "BigInt",
            "Boolean",
            "Date",
            "DisposableStack",
            "Error",
            "EvalError",
            "Function",
            "Infinity",
            "InternalError",
            "Iterator",
            "JSON",
            "Map",
            "Math",
            "NaN",
            "Number",
            "Object",
            "RangeError",
            "ReferenceError",
            "Reflect",
            "RegExp",
            "Set",
            "String",
            "SuppressedError",
            "Symbol",
            "Symbol(Symbol.toStringTag)",
            "SyntaxError",
            "TypeError",
            "URIError",
            "WeakMap",
            "WeakSet",
            "decodeURI",
            "decodeURIComponent",
            "encodeURI",
            "encodeURIComponent",
            "escape",
            "globalThis",
            "isFinite",
            "isNaN",
            "parseFloat",
            "parseInt",
            "transform",
            "undefined",
            "unescape",
        ]
    );
}
