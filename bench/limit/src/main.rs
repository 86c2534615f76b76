//! `limit`: the ceiling for workload E's record work on one core.
//!
//! Reads NDJSON, parses each line into a `serde_json::Value`, applies E's
//! edits (drop `/debug`, set `/pipeline`, rename `/level` to `/severity`,
//! upper-case `/service`, mask emails and card-number-shaped strings in
//! `/message` and `/user/email` with one simple regex) and writes the
//! record back as NDJSON. No HTTP, no durability, no ids, one thread: what
//! any JSON pipeline must at least spend per record.
//!
//!     limit INPUT [OUTPUT]     (OUTPUT defaults to /dev/null)
//!
//! Prints one JSON line: records, bytes, seconds, records/s, MB/s and the
//! process's peak RSS.

use regex::{Captures, Regex};
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("limit: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let input = args.next().ok_or("usage: limit INPUT [OUTPUT]")?;
    let output = args.next().unwrap_or_else(|| "/dev/null".to_owned());
    let pii = Regex::new(
        r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})|(?P<card>\b\d(?:[ -]?\d){12,18}\b)",
    )
    .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let reader = BufReader::with_capacity(
        1 << 20,
        File::open(&input).map_err(|e| format!("{input}: {e}"))?,
    );
    let mut out = BufWriter::with_capacity(
        1 << 20,
        File::create(&output).map_err(|e| format!("{output}: {e}"))?,
    );
    let (mut records, mut bytes) = (0u64, 0u64);
    for line in reader.lines() {
        let line = line.map_err(|e| format!("{input}: {e}"))?;
        bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut record: Value =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", records + 1))?;
        edit(&mut record, &pii);
        serde_json::to_writer(&mut out, &record).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(|e| e.to_string())?;
        records += 1;
    }
    out.flush().map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\":{records},\"bytes\":{bytes},\"secs\":{secs:.3},\"records_per_sec\":{:.0},\"mb_per_sec\":{:.1},\"peak_rss_kb\":{}}}",
        records as f64 / secs,
        bytes as f64 / secs / 1e6,
        peak_rss_kb()
    );
    Ok(())
}

/// E's edits, in E's order.
fn edit(record: &mut Value, pii: &Regex) {
    let Some(obj) = record.as_object_mut() else {
        return;
    };
    obj.remove("debug");
    obj.insert("pipeline".to_owned(), Value::String("bench".to_owned()));
    if let Some(level) = obj.remove("level") {
        obj.insert("severity".to_owned(), level);
    }
    if let Some(Value::String(s)) = obj.get_mut("service") {
        *s = s.to_uppercase();
    }
    if let Some(Value::String(s)) = obj.get_mut("message") {
        redact(s, pii);
    }
    if let Some(Value::String(s)) = obj.get_mut("user").and_then(|u| u.get_mut("email")) {
        redact(s, pii);
    }
}

fn redact(s: &mut String, pii: &Regex) {
    if let std::borrow::Cow::Owned(new) = pii.replace_all(s, |c: &Captures<'_>| {
        if c.name("email").is_some() {
            "[EMAIL]"
        } else {
            "[CREDIT_CARD]"
        }
    }) {
        *s = new;
    }
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
