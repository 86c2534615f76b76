//! Tests of the whole path: validation collecting every problem, building,
//! and `process_part` (ids, splitting, dropping, failure captures).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::test_support::build_ctx;
use proptest::prelude::*;
use serde_json::json;

fn compiled(doc: Value) -> CompiledPipeline {
    let spec = validate_pipeline(&doc)
        .map_err(|p| format!("{p:?}"))
        .unwrap();
    build_pipeline(&spec, &build_ctx())
        .map_err(|p| format!("{p:?}"))
        .unwrap()
}

fn lines(out: &PartOutput) -> Vec<Value> {
    std::str::from_utf8(&out.ndjson)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const BATCH: Uuid = Uuid::from_u128(0xabc);

#[test]
fn appendix_a_pipeline_validates_and_builds() {
    let doc = json!({
      "name": "web-events",
      "source": {"type": "http"},
      "processors": [
        {"type": "validate", "schema": {"type": "object", "required": ["id"]}},
        {"type": "map", "ops": [
          {"op": "remove", "path": "/debug"},
          {"op": "add", "path": "/pipeline", "value": "web"},
          {"op": "move", "from": "/level", "path": "/severity"},
          {"op": "upper", "path": "/service"}
        ]},
        {"type": "redact"},
        {"type": "script", "source": "function transform(r, ctx) { return r; }"}
      ],
      "destination": {"type": "file", "path": "events/web.ndjson"},
      "on_error": "skip"
    });
    let p = compiled(doc);
    assert_eq!(p.on_error(), OnError::Skip);
    assert_eq!(p.destination().unwrap().type_name(), "file");
    let out = p.process_part(
        BATCH,
        0,
        b"{\"id\":1,\"debug\":true,\"level\":\"info\",\"service\":\"api\",\"msg\":\"mail ada@example.com\"}\n",
    );
    assert_eq!(out.failures, vec![]);
    let recs = lines(&out);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["severity"], "info");
    assert_eq!(recs[0]["service"], "API");
    assert_eq!(recs[0]["pipeline"], "web");
    assert!(recs[0].get("debug").is_none());
    assert!(!recs[0]["msg"].as_str().unwrap().contains("ada@"));
    assert_eq!(recs[0]["_sluice_id"], format!("{BATCH}:0:0"));
}

#[test]
fn validation_collects_problems_from_every_engine_at_their_pointers() {
    let doc = json!({
      "name": "broken",
      "processors": [
        {"type": "validate", "schema": {"type": "not-a-type"}},
        {"type": "filter", "condition": {"path": "/a", "op": "eq", "value": 1}},
        {"type": "filter", "expression": "r.a ==="},
        {"type": "script", "source": "function transform(r) {\n  return r +;\n}"},
        {"type": "redact", "actions": {"NOT_A_TYPE": "mask"}},
        {"type": "map", "ops": [{"op": "eval", "path": "/x", "expression": "r.a +"}]},
        {"type": "script", "source": "function transform(r) { return r; }", "limits": {"memory_mb": 1}}
      ]
    });
    let problems = validate_pipeline(&doc).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "/processors/0/schema",
        "/processors/2/expression",
        "/processors/3/source",
        "/processors/4/actions",
        "/processors/5/ops/0/expression",
        "/processors/6/limits/memory_mb",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(expected)),
            "missing {expected} in {problems:#?}"
        );
    }
    assert!(!paths.iter().any(|p| p.starts_with("/processors/1")));
    let script = problems
        .iter()
        .find(|p| p.path == "/processors/3/source")
        .unwrap();
    assert!(script.message.contains("line 2"), "{}", script.message);
}

#[test]
fn validation_still_compiles_processors_when_the_document_has_other_problems() {
    let doc = json!({
      "name": "",
      "processors": [
        {"type": "validate", "schema": {"type": "not-a-type"}},
        {"type": "filter", "condition": {"path": "/a", "op": "regex", "value": "("}}
      ],
      "on_error": "explode"
    });
    let problems = validate_pipeline(&doc).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"/name"), "{paths:?}");
    assert!(paths.contains(&"/on_error"), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.starts_with("/processors/0/schema")),
        "{paths:?}"
    );
    // Reported once, by the config check, not twice.
    assert_eq!(
        paths
            .iter()
            .filter(|p| **p == "/processors/1/condition/value")
            .count(),
        1
    );
}

#[test]
fn ids_index_and_split_positions() {
    let p = compiled(json!({
      "name": "split",
      "id_field": "rid",
      "processors": [{"type": "script", "source":
        "function transform(r) { if (r.n === 2) return [{n: 2, k: 'a'}, {n: 2, k: 'b'}]; if (r.n === 3) return null; return r; }"}]
    }));
    let input = b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n\n{\"n\":5}";
    let out = p.process_part(BATCH, 100, input);
    assert_eq!(out.records_in, 4, "the blank line is not a record");
    assert_eq!(out.records_out, 4);
    let ids: Vec<String> = lines(&out)
        .iter()
        .map(|r| r["rid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        vec![
            format!("{BATCH}:100:0"),
            format!("{BATCH}:101:0"),
            format!("{BATCH}:101:1"),
            format!("{BATCH}:104:0"),
        ]
    );
    assert!(out.ndjson.ends_with(b"\n"));
}

#[test]
fn filtered_records_are_dropped_not_failed() {
    let p = compiled(json!({
      "name": "f",
      "processors": [
        {"type": "filter", "condition": {"path": "/level", "op": "in", "value": ["error", "warn"]}},
        {"type": "filter", "expression": "r.n > 1"}
      ]
    }));
    let out = p.process_part(
        BATCH,
        0,
        b"{\"level\":\"error\",\"n\":2}\n{\"level\":\"info\",\"n\":5}\n{\"level\":\"warn\",\"n\":1}\n",
    );
    assert_eq!(out.records_in, 3);
    assert_eq!(out.records_out, 1);
    assert!(out.failures.is_empty());
    assert_eq!(lines(&out)[0]["_sluice_id"], format!("{BATCH}:0:0"));
}

#[test]
fn map_eval_sets_computed_values() {
    let p = compiled(json!({
      "name": "e",
      "processors": [{"type": "map", "ops": [
        {"op": "eval", "path": "/total/sum", "expression": "r.items.reduce((a, b) => a + b.price, 0)"}
      ]}]
    }));
    let out = p.process_part(BATCH, 0, b"{\"items\":[{\"price\":2},{\"price\":3}]}\n");
    assert_eq!(lines(&out)[0]["total"]["sum"], json!(5));
}

#[test]
fn failures_capture_the_submitted_record_redacted() {
    let p = compiled(json!({
      "name": "fail",
      "processors": [
        {"type": "map", "ops": [{"op": "set", "path": "/touched", "value": true}]},
        {"type": "map", "ops": [{"op": "remove", "path": "/missing"}]}
      ]
    }));
    let input = b"{\"user\":\"ada@example.com\",\"n\":1}\nnot json ada@example.com\n[1,2]\n{\"missing\":1}\n";
    let out = p.process_part(BATCH, 10, input);
    assert_eq!(out.records_in, 4);
    assert_eq!(out.records_out, 1);
    assert_eq!(out.failures.len(), 3);

    let f = &out.failures[0];
    assert_eq!(f.record_index, 10);
    assert_eq!(f.processor_index, 1);
    assert_eq!(f.processor_type, "map");
    assert_eq!(f.code, ErrorCode::PathNotFound);
    let captured = serde_json::to_string(&f.record).unwrap();
    assert!(!captured.contains("ada@example.com"), "{captured}");
    assert!(f.record.get("touched").is_none(), "the record as submitted");
    assert_eq!(f.record["n"], json!(1));

    let g = &out.failures[1];
    assert_eq!((g.record_index, g.processor_index), (11, 0));
    assert_eq!(g.processor_type, "input");
    assert_eq!(g.code, ErrorCode::MalformedBody);
    assert!(!g.record.as_str().unwrap().contains("ada@example.com"));

    let h = &out.failures[2];
    assert_eq!((h.record_index, h.code), (12, ErrorCode::RecordNotObject));

    let ok = lines(&out);
    assert_eq!(ok[0]["_sluice_id"], format!("{BATCH}:13:0"));

    // The wire shape of a failure, as `sluice run` prints it.
    let wire = serde_json::to_value(f).unwrap();
    let keys: Vec<&str> = wire
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "code",
            "message",
            "processor_index",
            "processor_type",
            "record",
            "record_index"
        ]
    );
    assert_eq!(wire["code"], "PATH_NOT_FOUND");
}

#[test]
fn invalid_utf8_is_a_malformed_line() {
    let p = compiled(json!({"name": "u"}));
    let out = p.process_part(BATCH, 0, b"{\"a\":\"\xff\"}\n{\"a\":1}\n");
    assert_eq!(out.records_out, 1);
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].code, ErrorCode::MalformedBody);
    assert!(out.failures[0].message.contains("UTF-8"));
    assert!(out.failures[0].record.is_string());
}

#[test]
fn a_split_record_fails_whole_when_one_output_fails() {
    let p = compiled(json!({
      "name": "s",
      "processors": [
        {"type": "script", "source": "function transform(r) { return [{a: 1}, {b: 1}]; }"},
        {"type": "map", "ops": [{"op": "remove", "path": "/a"}]}
      ]
    }));
    let out = p.process_part(BATCH, 0, b"{}\n");
    assert_eq!(out.records_out, 0);
    assert!(out.ndjson.is_empty());
    assert_eq!(out.failures[0].processor_index, 1);
}

#[test]
fn a_script_emitting_non_objects_fails_the_record() {
    let p = compiled(json!({
      "name": "s",
      "processors": [{"type": "script", "source": "function transform(r) { return [1, 2]; }"}]
    }));
    let out = p.process_part(BATCH, 0, b"{}\n");
    assert_eq!(out.records_out, 0);
    assert_eq!(out.failures.len(), 1);
    assert!(matches!(
        out.failures[0].code,
        ErrorCode::RecordNotObject | ErrorCode::ScriptError
    ));
}

#[test]
fn dedupe_survives_redelivery_of_a_part() {
    let p = compiled(json!({
      "name": "d",
      "processors": [{"type": "dedupe", "key": ["/id"], "window_secs": 60}]
    }));
    let input = b"{\"id\":1}\n{\"id\":1}\n{\"id\":2}\n";
    let first = p.process_part(BATCH, 0, input);
    assert_eq!(first.records_out, 2);
    let again = p.process_part(BATCH, 0, input);
    assert_eq!(again, first, "a redelivered part produces the same output");
    let other = p.process_part(Uuid::from_u128(9), 0, b"{\"id\":2}\n");
    assert_eq!(other.records_out, 0, "another batch's duplicate is dropped");
}

#[test]
fn compiled_pipelines_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CompiledPipeline>();
}

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9 @.]{0,12}".prop_map(Value::String),
    ]
}

fn arb_record() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned()),
            "[a-z]{1,3}"
        ],
        prop_oneof![
            arb_scalar(),
            proptest::collection::vec(arb_scalar(), 0..3).prop_map(Value::Array),
            proptest::collection::btree_map("[a-c]", arb_scalar(), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ],
        0..5,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn arb_op() -> impl Strategy<Value = Value> {
    let path = prop_oneof![
        Just("/a"),
        Just("/b"),
        Just("/c"),
        Just("/a/a"),
        Just("/b/0"),
        Just("/b/-")
    ];
    let opt = any::<bool>();
    (0usize..12, path.clone(), path, opt, arb_scalar()).prop_map(|(k, p, q, optional, v)| match k {
        0 => json!({"op": "add", "path": p, "value": v}),
        1 => json!({"op": "remove", "path": p, "optional": optional}),
        2 => json!({"op": "replace", "path": p, "value": v, "optional": optional}),
        3 => json!({"op": "move", "from": q, "path": p, "optional": optional}),
        4 => json!({"op": "copy", "from": q, "path": p, "optional": optional}),
        5 => json!({"op": "test", "path": p, "value": v}),
        6 => json!({"op": "set", "path": p, "value": v}),
        7 => json!({"op": "upper", "path": p, "optional": optional}),
        8 => json!({"op": "lower", "path": p, "optional": optional}),
        9 => json!({"op": "cast", "path": p, "to": "string", "optional": optional}),
        10 => json!({"op": "default", "path": p, "value": v}),
        _ => json!({"op": "cast", "path": p, "to": "number", "optional": optional}),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Map never splits or drops, so every input record is either output
    /// or failed, exactly once, and outputs keep input order.
    #[test]
    fn map_only_pipelines_never_lose_or_duplicate_records(
        ops in proptest::collection::vec(arb_op(), 1..6),
        records in proptest::collection::vec(arb_record(), 0..20),
        first_index in 0u64..1_000_000,
    ) {
        let doc = json!({"name": "prop", "processors": [{"type": "map", "ops": ops}]});
        // Some generated ops are invalid (moving into a child); skip those.
        let Ok(spec) = validate_pipeline(&doc) else { return Ok(()); };
        let p = build_pipeline(&spec, &build_ctx()).unwrap();
        let mut input = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut input, r).unwrap();
            input.push(b'\n');
        }
        let out = p.process_part(BATCH, first_index, &input);
        prop_assert_eq!(out.records_in, records.len() as u64);
        prop_assert_eq!(out.records_out + out.failures.len() as u64, out.records_in);
        let mut seen: Vec<u64> = out.failures.iter().map(|f| f.record_index).collect();
        let mut last = None;
        for r in lines(&out) {
            let id = r["_sluice_id"].as_str().unwrap().to_owned();
            let mut parts = id.split(':');
            prop_assert_eq!(parts.next().unwrap(), BATCH.to_string());
            let index: u64 = parts.next().unwrap().parse().unwrap();
            prop_assert_eq!(parts.next().unwrap(), "0");
            prop_assert!(last.is_none_or(|l| l < index), "outputs in input order");
            last = Some(index);
            seen.push(index);
        }
        seen.sort_unstable();
        let expected: Vec<u64> = (first_index..first_index + records.len() as u64).collect();
        prop_assert_eq!(seen, expected);
    }
}

#[test]
fn debug_output_never_shows_the_hash_key() {
    let ctx = build_ctx();
    let text = format!("{ctx:?}");
    assert!(text.contains("<redacted>"));
    assert!(!text.contains("116, 101, 115, 116"), "{text}");
}

/// The benchmark's E pipeline: every processor edits lines.
fn e_pipeline() -> CompiledPipeline {
    compiled(json!({
      "name": "e",
      "processors": [
        {"type": "map", "ops": [
          {"op": "remove", "path": "/debug", "optional": true},
          {"op": "set", "path": "/pipeline", "value": "bench"},
          {"op": "move", "from": "/level", "path": "/severity"},
          {"op": "upper", "path": "/service"}
        ]},
        {"type": "redact", "detectors": ["EMAIL", "CREDIT_CARD"], "field_names": false,
         "only": ["/message", "/user/email"]}
      ]
    }))
}

/// `process_part` of `p` as it is, and with every record on the `Value`
/// path: the same records, failures and counts.
fn lines_agree_with_values(p: &mut CompiledPipeline, input: &[u8]) -> PartOutput {
    let path = p.text_path;
    assert_ne!(path, TextPath::No);
    let fast = p.process_part(BATCH, 7, input);
    p.text_path = TextPath::No;
    let slow = p.process_part(BATCH, 7, input);
    p.text_path = path;
    assert_eq!(fast.records_in, slow.records_in);
    assert_eq!(fast.records_out, slow.records_out);
    assert_eq!(fast.failures, slow.failures);
    assert_eq!(lines(&fast), lines(&slow));
    fast
}

#[test]
fn the_e_pipeline_edits_lines_like_values() {
    let mut p = e_pipeline();
    let input = concat!(
        r#"{"level":"info","service":"api","debug":true,"message":"mail ada@example.com card 4111 1111 1111 1111","user":{"email":"bob@example.org","name":"Bob"},"other":"eve@example.com"}"#,
        "\n",
        r#"{"service":"api","message":"no level: fails"}"#,
        "\n",
        "\n",
        r#"{"level":"warn","service":"db","user":{"email":"x@y.io","email":"dup@y.io"}}"#,
        "\n",
        "not json\n",
        r#"{"level":"error","service":7}"#,
        "\n",
        r#"{"level":"debug","service":"ünï","message":["a@b.io",{"m":"c@d.io"}],"_sluice_id":"forged"}"#,
        "\n",
        r#"{"level":"info","service":"x","n":1e999}"#
    );
    let out = lines_agree_with_values(&mut p, input.as_bytes());
    assert_eq!(out.records_in, 7);
    assert_eq!(out.records_out, 3);
    let text = String::from_utf8(out.ndjson.clone()).unwrap();
    let first = text.lines().next().unwrap();
    // Members keep their order; added ones and the id go last.
    assert!(
        first.starts_with(r#"{"service":"API","message":"mail "#),
        "{first}"
    );
    assert!(
        first.ends_with(&format!(
            r#""pipeline":"bench","severity":"info","_sluice_id":"{BATCH}:7:0"}}"#
        )),
        "{first}"
    );
    assert!(
        !first.contains("ada@example.com") && !first.contains("bob@example.org"),
        "{first}"
    );
    assert!(!first.contains("4111 1111"), "{first}");
    assert!(
        first.contains("eve@example.com"),
        "only the listed paths are redacted: {first}"
    );
    let codes: Vec<_> = out
        .failures
        .iter()
        .map(|f| (f.record_index, f.code))
        .collect();
    assert_eq!(
        codes,
        vec![
            (8, ErrorCode::PathNotFound),
            (11, ErrorCode::MalformedBody),
            (12, ErrorCode::TypeMismatch),
            (14, ErrorCode::MalformedBody),
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_e_pipeline_on_lines_equals_values(
        records in proptest::collection::vec(
            (
                prop_oneof![Just("info"), Just("warn")],
                prop_oneof![Just("api"), Just("Wëb")],
                arb_record(),
                prop_oneof![Just("hi a@b.io"), Just("4111-1111-1111-1111"), Just("plain")],
                any::<bool>(),
            ),
            0..12,
        ),
    ) {
        let mut p = e_pipeline();
        let mut input = Vec::new();
        for (level, service, rest, message, debug) in &records {
            let mut r = rest.clone();
            let m = r.as_object_mut().unwrap();
            m.insert("level".into(), json!(level));
            m.insert("service".into(), json!(service));
            m.insert("message".into(), json!(message));
            m.insert("user".into(), json!({"email": message, "id": 1}));
            if *debug {
                m.insert("debug".into(), json!(true));
            }
            serde_json::to_writer(&mut input, &r).unwrap();
            input.push(b'\n');
        }
        let out = lines_agree_with_values(&mut p, &input);
        prop_assert_eq!(out.records_out, records.len() as u64);
    }
}

#[test]
fn text_paths_agree_with_values_for_other_pipelines() {
    let input = concat!(
        r#"{"level":"info","service":"api","message":"mail ada@example.com","user":{"email":"bob@example.org","phone":"+1 415 555 0100"},"items":[{"sku":"x@y.io"}],"password":"hunter2"}"#,
        "\n",
        r#"{"level":"warn","service":"db","user":{"email":"x@y.io","name":"Diana Carter"},"items":[]}"#,
        "\n",
        r#"{"level":"warn","service":"db","user":"not an object","items":{"0":{"sku":"a@b.io"}}}"#,
        "\n",
        "[1]\n",
        r#"{"level":"info","service":"api","user":{"email":"a@b.io","email":"c@d.io"}}"#
    );
    let map = json!({"type": "map", "ops": [
        {"op": "move", "from": "/level", "path": "/severity"},
        {"op": "lower", "path": "/service"},
        {"op": "copy", "from": "/user", "path": "/who", "optional": true}
    ]});
    // (`/who` is a copy of `/user` made before redaction.)
    let both: &[&str] = &["ada@example.com", "bob@example.org"];
    for (redact, path, hidden) in [
        // The whole record: map writes a line, redact's line pass reads it.
        (json!({"type": "redact"}), TextPath::Lines, both),
        (
            json!({"type": "redact", "actions": {"EMAIL": "hash", "PHONE": "partial"}}),
            TextPath::Lines,
            both,
        ),
        // `only` pointers: one split into members for both processors.
        (
            json!({"type": "redact", "only": ["/user", "/message"]}),
            TextPath::Members,
            &both[..1],
        ),
        (
            json!({"type": "redact", "only": ["/user/email", "/user"]}),
            TextPath::Members,
            &both[..0],
        ),
        // Array indexes: the members of `items` go through a `Value`.
        (
            json!({"type": "redact", "only": ["/items/0/sku", "/who/email"]}),
            TextPath::Members,
            &both[..0],
        ),
        (
            json!({"type": "redact", "only": ["/user"], "actions": {"EMAIL": "remove"}}),
            TextPath::Members,
            &both[..0],
        ),
    ] {
        let mut p = compiled(json!({"name": "t", "processors": [map.clone(), redact.clone()]}));
        assert_eq!(p.text_path, path, "{redact}");
        let out = lines_agree_with_values(&mut p, input.as_bytes());
        assert_eq!(out.records_in, 5);
        let text = String::from_utf8(out.ndjson).unwrap();
        for secret in hidden {
            assert!(!text.contains(secret), "{redact}: {text}");
        }
    }
    // A redact-only pipeline takes lines, as before; a pipeline with a
    // processor that needs a `Value` takes neither path.
    let p = compiled(json!({"name": "t", "processors": [{"type": "redact"}]}));
    assert_eq!(p.text_path, TextPath::Lines);
    let p = compiled(
        json!({"name": "t", "processors": [map, {"type": "filter", "expression": "true"}]}),
    );
    assert_eq!(p.text_path, TextPath::No);
}
