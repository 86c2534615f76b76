//! Logs of a run that handles records full of canary PII contain none of
//! it: a real `tracing` subscriber (text and JSON formats) writes through
//! `RedactingMakeWriter` into a buffer, and the buffer is searched for every
//! canary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io;
use std::sync::{Arc, Mutex};

use sluice_pii::log::RedactingMakeWriter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

const EMAIL: &str = "canary.person@example-mail.com";
const CARD: &str = "4539 1488 0343 6467";
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
const AWS: &str = "AKIAIOSFODNN7CANARY1";
const PASSWORD: &str = "Tr0ub4dor&3-canary";
const SSN: &str = "123-45-6789";
const PHONE: &str = "+44 7400 120590";

fn emit_events() {
    let record = serde_json::json!({
        "email": EMAIL,
        "card": CARD,
        "password": PASSWORD,
        "note": format!("call {PHONE}, ssn {SSN}")
    });
    tracing::info!(user = EMAIL, "login failed for {EMAIL}");
    tracing::warn!(card = CARD, token = JWT, "payment rejected");
    tracing::error!(aws_key = AWS, password = PASSWORD, "credentials rejected");
    tracing::info!(record = %record, "record dropped");
    tracing::debug!(?record, "debug dump");
    let span = tracing::info_span!("request", authorization = %format!("Bearer {JWT}"));
    let _guard = span.enter();
    tracing::info!(phone = PHONE, "inside span");
}

fn assert_clean(output: &str) {
    assert!(
        output.contains("login failed"),
        "logging produced nothing: {output}"
    );
    for canary in [
        EMAIL,
        CARD,
        JWT,
        AWS,
        PASSWORD,
        SSN,
        PHONE,
        "4539148803436467",
    ] {
        assert!(
            !output.contains(canary),
            "{canary} leaked into logs:\n{output}"
        );
    }
}

#[test]
fn text_logs_hold_no_canary() {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(RedactingMakeWriter::new(buffer.clone()))
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::with_default(subscriber, emit_events);
    let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert_clean(&output);
    assert!(output.contains("[EMAIL]"));
}

#[test]
fn json_logs_hold_no_canary_and_stay_json() {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(RedactingMakeWriter::new(buffer.clone()))
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::with_default(subscriber, emit_events);
    let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert_clean(&output);
    for line in output.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is still JSON");
        assert!(v.get("fields").is_some());
    }
}
