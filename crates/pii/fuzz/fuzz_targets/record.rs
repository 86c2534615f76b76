//! Fuzzes record redaction on arbitrary JSON: no panic, and in mask mode
//! the keys, array lengths and non-string values are unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_shape(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_shape(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(record) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut redacted = record.clone();
    sluice_pii::default_redactor().redact_record(&mut redacted);
    assert!(same_shape(&record, &redacted), "structure changed");
});
