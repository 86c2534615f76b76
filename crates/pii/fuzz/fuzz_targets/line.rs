//! Fuzzes the raw NDJSON path (`redact_json_line`) against the `Value`
//! path: a line it takes is valid JSON that serde_json also accepts, and
//! redacts to the same record as `redact_record` on the parsed line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let redactor = sluice_pii::default_redactor();
    let mut out = Vec::new();
    if !redactor.redact_json_line(data, None, &mut out) {
        assert!(out.is_empty(), "a refused line wrote output");
        return;
    }
    let Ok(mut want) = serde_json::from_slice::<Value>(data) else {
        panic!("took a line serde_json rejects");
    };
    redactor.redact_record(&mut want);
    let got: Value = serde_json::from_slice(&out).expect("raw output is JSON");
    assert_eq!(got, want, "the raw and Value paths differ");
});
