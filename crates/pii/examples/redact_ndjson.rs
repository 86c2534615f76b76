//! Redacts NDJSON with the default config: reads records from a file (first
//! argument) or stdin, writes one redacted record per line to stdout.
//!
//! This is the tuning loop of `bench/pii.sh` when the `sluice` binary is not
//! built: it does exactly the parse, redact and write work of a redact-only
//! pipeline and nothing else, so its throughput is the engine's ceiling.
//! Like a redact-only pipeline it redacts each line from its bytes
//! (`redact_json_line`), and takes the `serde_json::Value` path for lines
//! that one leaves to it. Lines that are not JSON objects are passed
//! through `redact_text`.
//!
//! `redact_ndjson --serde FILE` redacts nothing: it parses every line into a
//! `serde_json::Value` and writes it back, the reference the redact-only
//! pipeline's throughput is compared with.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let serde_only = args.first().is_some_and(|a| a == "--serde");
    if serde_only {
        args.remove(0);
    }
    let input: Box<dyn Read> = match args.first().cloned() {
        Some(path) if path != "-" => match File::open(&path) {
            Ok(f) => Box::new(f),
            Err(error) => {
                eprintln!("redact_ndjson: cannot open {path}: {error}");
                return ExitCode::FAILURE;
            }
        },
        _ => Box::new(io::stdin()),
    };
    let input = BufReader::with_capacity(1 << 20, input);
    let result = if serde_only {
        round_trip(input)
    } else {
        run(input)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redact_ndjson: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(input: impl BufRead) -> io::Result<()> {
    let redactor = sluice_pii::default_redactor();
    each_line(input, |text, out| {
        if redactor.redact_json_line(text.as_bytes(), None, out) {
            return Ok(());
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(mut record) => {
                redactor.redact_record(&mut record);
                serde_json::to_writer(out, &record)?;
            }
            Err(_) => out.extend_from_slice(redactor.redact_text(text).as_bytes()),
        }
        Ok(())
    })
}

/// Every line parsed into a `Value` and written back, nothing redacted.
fn round_trip(input: impl BufRead) -> io::Result<()> {
    each_line(input, |text, out| {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(record) => serde_json::to_writer(out, &record)?,
            Err(_) => out.extend_from_slice(text.as_bytes()),
        }
        Ok(())
    })
}

/// Calls `f` with every non-empty line of `input` and a buffer for its
/// output, and writes each output to stdout as one line.
fn each_line(
    mut input: impl BufRead,
    mut f: impl FnMut(&str, &mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut line = String::new();
    let mut record = Vec::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        record.clear();
        f(text, &mut record)?;
        out.write_all(&record)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
