//! Property tests: in mask mode redaction never changes the JSON structure
//! (same keys, same array lengths, same non-string values), never leaves a
//! planted value in the output, and is idempotent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde_json::{Map, Value};
use sluice_pii::{RedactConfig, Redactor, default_redactor};

/// Values every detector must find wherever they are planted.
const PLANTED: &[&str] = &[
    "jane.doe@example.org",
    "4539 1488 0343 6467",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "191.112.33.56",
    "2001:db8:85a3::8a2e:370:7334",
    "+44 7400 120590",
    "(972) 859-3792",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU",
];

/// Words that, right before a dotted number, say it is a version and not
/// an IPv4 address (the `ipv4` detector's `deny_before`): "v 191.112.33.56"
/// is kept by design, so the filler never ends with one.
const VERSION_CUES: &[&str] = &[
    "version", "ver", "build", "release", "rv", "v", "firmware", "chrome", "firefox", "safari",
    "opera", "android", "os", "ios", "macos",
];

fn word(pattern: &'static str) -> impl Strategy<Value = String> {
    pattern.prop_filter("a version cue", |w| {
        !VERSION_CUES.contains(&w.to_ascii_lowercase().as_str())
    })
}

/// Free text around planted values: words, ids and punctuation that must
/// not merge with them (a space separates them from their neighbours).
fn filler() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            word("[a-z]{1,8}"),
            word("[A-Z][a-z]{2,7}"),
            "[0-9]{1,6}",
            Just("order".to_string()),
            Just("id=42".to_string()),
            Just("2024-01-02T03:04:05Z".to_string()),
            Just("—".to_string()),
            Just("ünïcödé".to_string()),
        ],
        0..6,
    )
    .prop_map(|words| words.join(" "))
}

fn text_with_plant() -> impl Strategy<Value = (String, Option<&'static str>)> {
    (
        filler(),
        prop::option::of(prop::sample::select(PLANTED)),
        filler(),
    )
        .prop_map(|(a, plant, b)| match plant {
            Some(p) => (format!("{a} {p} . {b}"), Some(p)),
            None => (format!("{a} {b}"), None),
        })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,10}",
        Just("email".to_string()),
        Just("password".to_string()),
        Just("name".to_string()),
        Just("value".to_string()),
        Just("line1".to_string()),
        // Not "version": dotted numbers there are versions by design.
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        text_with_plant().prop_map(|(t, _)| Value::String(t)),
        "[ -~]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Same keys, array lengths and non-string values; strings may differ.
fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_shape(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_shape(v, w)))
        }
        _ => a == b,
    }
}

fn all_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| all_strings(x, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mask_mode_keeps_structure_and_leaves_no_planted_value(record in json_value()) {
        let mut redacted = record.clone();
        default_redactor().redact_record(&mut redacted);
        prop_assert!(same_shape(&record, &redacted), "shape changed:\n{record}\n{redacted}");
        let mut strings = Vec::new();
        all_strings(&redacted, &mut strings);
        for s in &strings {
            for p in PLANTED {
                prop_assert!(!s.contains(p), "{p} survived in {s:?}");
            }
        }
    }

    #[test]
    fn planted_values_are_found_in_free_text((text, plant) in text_with_plant()) {
        let out = default_redactor().redact_text(&text);
        if let Some(p) = plant {
            prop_assert!(!out.contains(p), "{p} survived: {out:?}");
        }
    }

    #[test]
    fn redaction_is_idempotent(record in json_value()) {
        let r = Redactor::new(&RedactConfig::default(), b"k").unwrap();
        let mut once = record.clone();
        r.redact_record(&mut once);
        let mut twice = once.clone();
        r.redact_record(&mut twice);
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn arbitrary_text_never_panics_and_keeps_clean_text(text in "\\PC{0,200}") {
        let out = default_redactor().redact_text(&text);
        // Output is valid UTF-8 by type; text with no letters or digits has
        // nothing to find.
        if !text.chars().any(char::is_alphanumeric) {
            prop_assert_eq!(out.as_ref(), text.as_str());
        }
    }
}

/// Inputs the `detect` fuzz target found: a value glued to a neighbour
/// that was redacted must not become a finding on the second pass.
#[test]
fn fuzz_regressions_are_idempotent() {
    for text in [
        "TT4TT<%a:A::9+11031131\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0010",
        "    7T%T0 =A::A:8+76+8767+88",
        "0\x00dr E-c Mc Ea:A::A\\c0\x00dr E-c Mc Ec M*\\/",
        "+111107+11\x00\x00\x00\x00\x00110111108+111101\x00\x00\x00,11111+01111287",
        // '+'-joined digit chains: the over-long chain is rejected as one
        // number, a later part is redacted, and the part left next to its
        // token must not become a phone on the second pass.
        "tel +87380695604+041426 08+9-7298063 +969+",
        "call +9436++20062809642+4008082016130724376",
        "+5036922+3349141-+8876498401.74+",
        "phone: +8354961+31286817 9915527577+",
        "tel +27++6450191632 0693-845-1877 9-",
    ] {
        let once = default_redactor().redact_text(text).into_owned();
        let twice = default_redactor().redact_text(&once).into_owned();
        assert_eq!(once, twice, "input {text:?}");
    }
}
