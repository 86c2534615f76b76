//! The raw NDJSON path (`Redactor::redact_json_line`) gives the same
//! records as parsing into `serde_json::Value` and `redact_record`, accepts
//! no line that serde_json rejects, and takes the common shapes itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sluice_pii::{RedactConfig, Redactor, VECTORS_JSON, default_redactor};

/// What the `Value` path makes of `line`: the redacted object with
/// `append` set, or `None` when serde_json rejects it or it is not an
/// object.
fn value_path(r: &Redactor, line: &[u8], append: Option<(&str, &str)>) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(line).ok()?;
    if !v.is_object() {
        return None;
    }
    r.redact_record(&mut v);
    if let (Some((k, id)), Value::Object(map)) = (append, &mut v) {
        map.insert(k.to_owned(), Value::String(id.to_owned()));
    }
    Some(v)
}

/// The raw path's output, parsed, or `None` when it gave up.
fn raw_path(r: &Redactor, line: &[u8], append: Option<(&str, &str)>) -> Option<Value> {
    let mut out = b"previous line\n".to_vec();
    let took = r.redact_json_line(line, append, &mut out);
    if !took {
        assert_eq!(out, b"previous line\n", "a refused line leaves `out` alone");
        return None;
    }
    let text = out.strip_prefix(b"previous line\n").unwrap();
    assert!(!text.contains(&b'\n') || line.contains(&b'\n'));
    Some(serde_json::from_slice(text).unwrap_or_else(|e| {
        panic!(
            "raw output is not JSON ({e}): {}",
            String::from_utf8_lossy(text)
        )
    }))
}

/// Both paths agree; returns whether the raw path took the line.
fn agree(r: &Redactor, line: &[u8], append: Option<(&str, &str)>) -> bool {
    let want = value_path(r, line, append);
    let got = raw_path(r, line, append);
    match (&got, &want) {
        (Some(g), Some(w)) => assert_eq!(g, w, "paths differ on {}", String::from_utf8_lossy(line)),
        (Some(_), None) => panic!(
            "raw path accepted a line serde_json rejects: {}",
            String::from_utf8_lossy(line)
        ),
        (None, _) => {}
    }
    got.is_some()
}

/// The same JSON text with every non-ASCII character and every '/' written
/// as an escape (both occur only inside strings).
fn ascii_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '/' {
            out.push_str("\\/");
        } else if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04X}"));
            }
        }
    }
    out
}

const PLANTED: &[&str] = &[
    "jane.doe@example.org",
    "4539 1488 0343 6467",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "191.112.33.56",
    "+44 7400 120590",
    "AKIAIOSFODNN7EXAMPLE",
    "Diana Carter",
    "hunter2",
    "ünïcödé 😀 \"quoted\" back\\slash\ttab",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_]{1,10}",
        Just("email".to_string()),
        Just("password".to_string()),
        Just("name".to_string()),
        Just("key".to_string()),
        Just("value".to_string()),
        Just("user_name".to_string()),
        Just("billing".to_string()),
        Just("line1".to_string()),
        Just("ünï/kéy".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        prop::sample::select(PLANTED).prop_map(|s| Value::String(s.to_string())),
        ("[ -~]{0,12}", prop::sample::select(PLANTED), "[ -~]{0,12}")
            .prop_map(|(a, p, b)| Value::String(format!("{a} {p} {b}"))),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

fn record() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), json_value()), 0..8)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn raw_path_equals_value_path(record in record()) {
        let r = default_redactor();
        let compact = serde_json::to_string(&record).unwrap();
        let pretty = serde_json::to_string_pretty(&record).unwrap().replace('\n', " \t");
        let escaped = ascii_escaped(&compact);
        for line in [&compact, &pretty, &escaped] {
            prop_assert!(agree(r, line.as_bytes(), None), "raw path refused {line}");
            prop_assert!(agree(r, line.as_bytes(), Some(("_sluice_id", "b:1:0"))));
        }
    }

    #[test]
    fn raw_path_equals_value_path_with_options(record in record()) {
        let cfg: RedactConfig = serde_json::from_value(json!({
            "actions": {"EMAIL": "hash", "CREDIT_CARD": "partial", "PHONE": "remove"},
            "fields": {"user_name": {"type": "PERSON"}},
            "allow": ["@example.org"],
            "skip": ["/billing", "/key/0", "/ünï~1kéy"],
        })).unwrap();
        let r = Redactor::new(&cfg, b"tenant").unwrap();
        let line = serde_json::to_string(&record).unwrap();
        agree(&r, line.as_bytes(), None);
        agree(&r, ascii_escaped(&line).as_bytes(), Some(("id", "x")));
    }

    #[test]
    fn raw_path_equals_value_path_with_only_pointers(record in record()) {
        let cfg: RedactConfig = serde_json::from_value(json!({
            "only": ["/email", "/billing/name", "/value", "/ünï~1kéy/key"],
            "actions": {"PHONE": "partial"},
            "skip": ["/billing/name/line1"],
        })).unwrap();
        let r = Redactor::new(&cfg, b"tenant").unwrap();
        let line = serde_json::to_string(&record).unwrap();
        prop_assert!(agree(&r, line.as_bytes(), None), "refused {line}");
        agree(&r, ascii_escaped(&line).as_bytes(), Some(("id", "x")));
    }

    #[test]
    fn raw_path_never_accepts_what_serde_rejects(
        record in record(),
        cut in any::<prop::sample::Index>(),
        junk in prop::sample::select(&[
            "", "\"", "\\", "\\u", "\\ud800", "}", "]", ",", ":", "\u{1}", "01", "-", "1.", "1e",
            "tru", "nul", "{", "[", "\"a\":", "1e999", "x",
        ][..]),
    ) {
        let line = serde_json::to_string(&record).unwrap();
        let at = cut.index(line.len() + 1);
        let at = (0..=at).rev().find(|i| line.is_char_boundary(*i)).unwrap();
        let broken = format!("{}{junk}{}", &line[..at], &line[at..]);
        agree(default_redactor(), broken.as_bytes(), None);
    }
}

#[test]
fn shapes_the_raw_path_takes() {
    let r = default_redactor();
    for line in [
        r#"{}"#,
        r#" { } "#,
        r#"{"a":1}"#,
        r#"{"n":[1,-2,3.5,-0,0.25e-3,1E+2,12345678901234567890],"t":true,"f":false,"z":null}"#,
        r#"{"nested":[[[]],[{}],{"a":[{"b":"mail x@y.io"}]}]}"#,
        r#"{"msg":"caf\u00e9 \ud83d\ude00 \"bob@example.com\"\n\t\/"}"#,
        r#"{"k\u0065y":"s3cr3t-value-1"}"#,
        r#"{"form":[{"value":"s3cr3t!","name":"passwd"},{"name":"passwd","value":"s3cr3t!"}]}"#,
        r#"{"form":{"value":"x","name":"a-name-much-longer-than-sixty-four-bytes-so-it-is-ignored-here-ok"}}"#,
        r#"{"form":{"value":{"x":"hunter2"},"name":"password"}}"#,
        "{\"a\" : \"b@c.io\" ,\r\n \"b\" :\t[ 1 , 2 ] }\r",
        r#"{"billing":{"name":"Diana Carter","address":{"line1":"93 Lakeview Drive"}}}"#,
    ] {
        assert!(agree(r, line.as_bytes(), None), "refused {line}");
        assert!(
            agree(r, line.as_bytes(), Some(("_sluice_id", "id"))),
            "{line}"
        );
    }
}

#[test]
fn shapes_the_raw_path_leaves_to_serde() {
    let r = default_redactor();
    for line in [
        // Not JSON, or not an object.
        "",
        "nope",
        "[1]",
        "\"x\"",
        "{\"a\":1} x",
        "{\"a\":1}{}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":-}",
        "{\"a\":+1}",
        "{\"a\":1e}",
        "{\"a\":\"\u{1}\"}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\"}",
        "{\"a\":[1,]}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\" 1}",
        "{'a':1}",
        "{\"a\":tru}",
        "{\"a\":True}",
        // serde_json decides these.
        "{\"a\":1e999}",
        "{\"a\":1e400}",
        "{\"a\":100000000000000000000000000000}",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"\\u0061\":2}",
        "{\"_sluice_id\":\"forged\"}",
    ] {
        let append = Some(("_sluice_id", "id"));
        assert!(!agree(r, line.as_bytes(), append), "took {line:?}");
    }
    assert!(!agree(r, b"{\"a\":\"\xff\"}", None), "invalid UTF-8");
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(120), "]".repeat(120));
    assert!(!agree(r, deep.as_bytes(), None));
    let wide: Vec<String> = (0..300).map(|i| format!("\"k{i}\":{i}")).collect();
    assert!(!agree(
        r,
        format!("{{{}}}", wide.join(",")).as_bytes(),
        None
    ));
    // A removed value is left to the record walk.
    let cfg: RedactConfig =
        serde_json::from_value(json!({"actions": {"EMAIL": "remove"}})).unwrap();
    let remover = Redactor::new(&cfg, b"k").unwrap();
    assert!(!agree(&remover, br#"{"email":"a@b.io","n":1}"#, None));
    assert!(agree(&remover, br#"{"note":"x","n":1}"#, None));
    // `only` pointers with array indexes, or inside one another, are left
    // to the record walk.
    for only in [
        json!(["/a/0"]),
        json!(["/a", "/a/b"]),
        json!(["/a", "/a"]),
        json!([""]),
    ] {
        let cfg: RedactConfig = serde_json::from_value(json!({ "only": only })).unwrap();
        let r = Redactor::new(&cfg, b"k").unwrap();
        assert!(!r.lines_supported(), "{only}");
        assert!(!agree(&r, br#"{"a":["a@b.io"]}"#, None), "{only}");
    }
}

#[test]
fn only_pointers_scan_just_their_values() {
    let cfg: RedactConfig =
        serde_json::from_value(json!({"only": ["/message", "/user/email", "/form"]})).unwrap();
    let r = Redactor::new(&cfg, b"k").unwrap();
    assert!(r.lines_supported());
    for line in [
        r#"{"message":"mail bob@example.com","other":"bob@example.com"}"#,
        r#"{"user":{"email":"bob@example.com","name":"Diana Carter","ip":"10.1.2.3"}}"#,
        r#"{"user":{"value":"bob@example.com","name":"email"},"email":"x@y.io"}"#,
        r#"{"form":[{"name":"password","value":"hunter2"}],"password":"hunter2"}"#,
        r#"{"form":{"deep":{"password":"hunter2"}},"message":["a@b.io",{"m":"a@b.io"}]}"#,
        r#"{"message":1,"user":[{"email":"a@b.io"}]}"#,
    ] {
        assert!(
            agree(&r, line.as_bytes(), Some(("id", "x"))),
            "refused {line}"
        );
    }
    let mut out = Vec::new();
    assert!(r.redact_json_line(
        br#"{"other":"bob@example.com","message":"bob@example.com"}"#,
        None,
        &mut out
    ));
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with(r#"{"other":"bob@example.com","message":""#),
        "{text}"
    );
    assert!(!text.ends_with(r#""bob@example.com"}"#), "{text}");
    // Skipping the whole record scans nothing, `only` or not.
    let cfg: RedactConfig =
        serde_json::from_value(json!({"only": ["/message"], "skip": [""]})).unwrap();
    let r = Redactor::new(&cfg, b"k").unwrap();
    assert!(agree(&r, br#"{"message":"bob@example.com"}"#, None));
}

#[test]
fn unchanged_records_are_copied_byte_for_byte() {
    let r = default_redactor();
    let line = br#"{ "b": 1.50, "a": "caf\u00e9", "c": [ true ] }"#;
    let mut out = Vec::new();
    assert!(r.redact_json_line(line, None, &mut out));
    assert_eq!(out, line);
    out.clear();
    assert!(r.redact_json_line(
        br#"{"z":"mail bob@example.com", "a":2}"#,
        Some(("id", "7")),
        &mut out
    ));
    assert_eq!(out, br#"{"z":"mail [EMAIL]", "a":2,"id":"7"}"#);
    out.clear();
    assert!(r.redact_json_line(b"{ }", Some(("id", "7")), &mut out));
    assert_eq!(out, br#"{ "id":"7"}"#);
}

#[test]
fn skip_of_the_whole_record_copies_it() {
    let cfg: RedactConfig = serde_json::from_value(json!({"skip": [""]})).unwrap();
    let r = Redactor::new(&cfg, b"k").unwrap();
    assert!(agree(&r, br#"{"email":"a@b.io"}"#, Some(("id", "1"))));
}

/// Every record of the shared test vectors, with its config.
#[test]
fn vectors_agree() {
    let file: Value = serde_json::from_str(VECTORS_JSON).unwrap();
    let key = file["hash_key"].as_str().unwrap();
    let mut records = 0;
    for v in file["vectors"].as_array().unwrap() {
        let Some(record) = v.get("record") else {
            continue;
        };
        records += 1;
        let config: RedactConfig = serde_json::from_value(v["config"].clone()).unwrap();
        let r = Redactor::new(&config, key.as_bytes()).unwrap();
        let line = serde_json::to_string(record).unwrap();
        // Configs that remove values leave those records to the walk.
        let removes = v["config"].to_string().contains("\"remove\"");
        let taken = agree(&r, line.as_bytes(), None);
        assert!(taken || removes, "{} refused", v["name"]);
        agree(
            &r,
            ascii_escaped(&line).as_bytes(),
            Some(("_sluice_id", "x")),
        );
    }
    assert!(records >= 5, "the vector file has only {records} records");
}

/// The labelled dev corpus of the PII benchmark, when it is checked out
/// next to the repository (`SLUICE_PII_CORPUS` names another file).
#[test]
fn dev_corpus_agrees() {
    let path = std::env::var("SLUICE_PII_CORPUS").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/pii-bench/dev/corpus.jsonl"
        )
        .to_owned()
    });
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("no corpus at {path}; skipped");
        return;
    };
    let r = default_redactor();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            agree(r, line.as_bytes(), Some(("_sluice_id", "x"))),
            "refused {line}"
        );
        lines += 1;
    }
    assert!(lines > 0);
}
