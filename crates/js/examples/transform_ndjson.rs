//! NDJSON in, script, NDJSON out: the benchmark harness for the script
//! engine (issue 5's target: the whole process on one core).
//!
//! ```text
//! cargo run --release -p sluice-js --example transform_ndjson -- \
//!     [--source JS | --script FILE] [--expression] [INPUT.ndjson] > out.ndjson
//! ```
//!
//! Without `--source`/`--script` it runs the issue's benchmark transform.
//! Reads stdin when no input file is given. Prints records/s to stderr.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use sluice_js::{CallContext, Script, ScriptEnv, ScriptKind, ScriptLimits};
use uuid::Uuid;

const BENCH_TRANSFORM: &str = "function transform(r, ctx) { r.user.email = null; r.tags.push(\"x\"); r.total = r.items.reduce((a,b)=>a+b.price,0); return r; }";

/// Records per chunk (`begin_chunk`), as a worker would run them.
const CHUNK: u64 = 1000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("transform_ndjson: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut source = BENCH_TRANSFORM.to_owned();
    let mut kind = ScriptKind::Transform;
    let mut input: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--source" => source = args.next().ok_or("--source needs a value")?,
            "--script" => {
                let path = args.next().ok_or("--script needs a file")?;
                source = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
            }
            "--expression" => kind = ScriptKind::Expression,
            other => input = Some(other.to_owned()),
        }
    }
    let env = ScriptEnv {
        tenant_id: Uuid::nil(),
        pipeline_id: Uuid::nil(),
        pipeline_name: "bench".to_owned(),
        pipeline_version: 1,
        hash_key: Arc::from(&b"bench-key"[..]),
        redact: None,
    };
    let script = Script::compile(&source, kind, ScriptLimits::default(), env).map_err(|p| {
        p.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;

    let reader: Box<dyn BufRead> = match &input {
        Some(path) => Box::new(BufReader::with_capacity(
            1 << 16,
            std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?,
        )),
        None => Box::new(BufReader::with_capacity(1 << 16, std::io::stdin().lock())),
    };
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 16, stdout);

    let started = Instant::now();
    let (mut records, mut outputs, mut errors) = (0u64, 0u64, 0u64);
    let batch_id = Uuid::nil();
    let mut reader = reader;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        if records % CHUNK == 0 {
            script.begin_chunk();
        }
        let call = CallContext {
            batch_id,
            record_index: records,
        };
        records += 1;
        let record: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                errors += 1;
                eprintln!("line {records}: {e}");
                continue;
            }
        };
        let produced = match kind {
            ScriptKind::Transform => script.transform(record, &call).map(|o| o.records),
            ScriptKind::Expression => script.eval(&record, &call).map(|v| vec![v]),
        };
        match produced {
            Ok(produced) => {
                for value in produced {
                    serde_json::to_writer(&mut out, &value).map_err(|e| e.to_string())?;
                    out.write_all(b"\n").map_err(|e| e.to_string())?;
                    outputs += 1;
                }
            }
            Err(e) => {
                errors += 1;
                if errors <= 10 {
                    eprintln!("record {records}: {e}");
                }
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{records} records in, {outputs} out, {errors} errors, {secs:.3} s, {:.0} records/s",
        records as f64 / secs
    );
    Ok(())
}
