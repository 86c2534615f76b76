//! Fuzzes the detectors on arbitrary text: no panic, valid UTF-8 out, and
//! redacting the output again changes nothing (idempotence).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let redactor = sluice_pii::default_redactor();
    let once = redactor.redact_text(text).into_owned();
    let twice = redactor.redact_text(&once);
    assert_eq!(once, twice, "redaction is not idempotent");
});
