//! `sluice run`: a pipeline config over local NDJSON, without a server.
//!
//! It runs the worker's own code path — `CompiledPipeline::process_part`
//! on parts of the input — so a config behaves here exactly as it will on
//! the server. It is also the benchmark harness for the PII and JavaScript
//! targets, so the plumbing must never be the bottleneck: a reader thread
//! cuts the input into parts of about 512 KiB at line boundaries with large
//! reads, `threads` workers process parts in parallel, and the main thread
//! writes the outputs in input order with one large write per part. A
//! fixed number of tickets bounds the parts in flight, so memory stays flat
//! however large the input is and however slow one part is.
//!
//! Records go to stdout when the config has no destination, else to the
//! destination as parts of one fresh batch. Failed records go to stderr as
//! NDJSON, one object per record with the same fields the API lists, and
//! make the exit code 1. An invalid config prints every problem and exits
//! with 2. With `on_error: "fail_batch"` the run stops at the first part
//! with a failed record (output of earlier parts is already written).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{Context, anyhow};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_components::{
    BuildContext, CompiledPipeline, OnError, PartOutput, build_pipeline, validate_pipeline,
};
use sluice_config::PipelineSpec;
use sluice_core::OutputPart;
use uuid::Uuid;

/// Target size of one part of the input.
const PART_BYTES: usize = 512 * 1024;
/// Used for `hash` pseudonyms when `SLUICE_MASTER_KEY` is not set.
const LOCAL_KEY: &[u8] = b"sluice-run-local-key";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Pipeline config file: JSON, or TOML when the name ends in `.toml`.
    pub pipeline: PathBuf,
    /// Read NDJSON records from this file instead of stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Root directory for file destinations; default: the current
    /// directory.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Worker threads; default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// One part of the input, numbered in input order.
struct Part {
    seq: u64,
    first_index: u64,
    bytes: Vec<u8>,
}

pub fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.pipeline)
        .with_context(|| format!("reading {}", args.pipeline.display()))?;
    let spec = match load_spec(&text, is_toml_path(&args.pipeline)) {
        Ok(spec) => spec,
        Err(problems) => {
            let mut err = io::stderr().lock();
            for p in problems {
                writeln!(err, "{}: {p}", args.pipeline.display())?;
            }
            return Ok(ExitCode::from(2));
        }
    };
    let ctx = BuildContext {
        tenant_id: Uuid::nil(),
        pipeline_id: Uuid::nil(),
        pipeline_name: spec.name.clone(),
        config_version: 1,
        output_root: args
            .output_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".")),
        hash_key: hash_key(std::env::var("SLUICE_MASTER_KEY").ok().as_deref()),
        // Like the server: private addresses only when the operator says so.
        outbound: if std::env::var("SLUICE_OUTBOUND_ALLOW_PRIVATE").is_ok_and(|v| v == "true") {
            sluice_outbound::Outbound::allowing_private()
        } else {
            sluice_outbound::Outbound::default()
        },
    };
    let pipeline = match build_pipeline(&spec, &ctx) {
        Ok(p) => Arc::new(p),
        Err(problems) => {
            let mut err = io::stderr().lock();
            for p in problems {
                writeln!(err, "{}: {p}", args.pipeline.display())?;
            }
            return Ok(ExitCode::from(2));
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let input: Box<dyn Read + Send> = match &args.input {
        Some(path) => {
            Box::new(File::open(path).with_context(|| format!("opening {}", path.display()))?)
        }
        None => Box::new(io::stdin()),
    };
    let mut stdout = io::stdout().lock();
    let mut stderr = BufWriter::with_capacity(64 * 1024, io::stderr().lock());
    let failed = run_pipeline(
        pipeline,
        input,
        threads,
        Uuid::now_v7(),
        &mut stdout,
        &mut stderr,
    )?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Parse and fully validate the config; every problem on failure.
fn load_spec(text: &str, is_toml: bool) -> Result<PipelineSpec, Vec<sluice_core::Problem>> {
    let doc = if is_toml {
        // The config crate reads TOML; the spec's serde form is the same
        // document, so validation sees the same pointers.
        let spec = PipelineSpec::parse_file_text(text, true)?;
        serde_json::to_value(&spec).map_err(|e| {
            vec![sluice_core::Problem::new(
                "",
                format!("invalid config: {e}"),
            )]
        })?
    } else {
        serde_json::from_str(text)
            .map_err(|e| vec![sluice_core::Problem::new("", format!("invalid JSON: {e}"))])?
    };
    validate_pipeline(&doc)
}

/// The tenant hash key for this run: HMAC-SHA256(master key, "sluice-run-hash").
/// The master key is hex when it decodes as hex, else the string's bytes.
fn hash_key(master: Option<&str>) -> Arc<[u8]> {
    let master: Vec<u8> = match master.filter(|m| !m.is_empty()) {
        Some(m) => decode_hex(m).unwrap_or_else(|| m.as_bytes().to_vec()),
        None => {
            eprintln!(
                "warning: SLUICE_MASTER_KEY is not set; `hash` pseudonyms use a fixed local key"
            );
            LOCAL_KEY.to_vec()
        }
    };
    // HMAC accepts keys of any length.
    match <Hmac<Sha256> as Mac>::new_from_slice(&master) {
        Ok(mut mac) => {
            mac.update(b"sluice-run-hash");
            Arc::from(mac.finalize().into_bytes().as_slice())
        }
        Err(_) => Arc::from(master.as_slice()),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Read, process in parallel, write in order. Returns whether any record
/// failed.
fn run_pipeline(
    pipeline: Arc<CompiledPipeline>,
    input: Box<dyn Read + Send>,
    threads: usize,
    batch_id: Uuid,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> anyhow::Result<bool> {
    let in_flight = threads * 4;
    let (ticket_tx, ticket_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        ticket_tx
            .send(())
            .map_err(|_| anyhow!("internal channel closed"))?;
    }
    let (work_tx, work_rx) = sync_channel::<Part>(in_flight);
    let (done_tx, done_rx) = sync_channel::<(u64, PartOutput)>(in_flight);
    let work_rx = Arc::new(Mutex::new(work_rx));

    let reader = thread::Builder::new()
        .name("sluice-run-reader".into())
        .spawn(move || read_parts(input, &ticket_rx, &work_tx))
        .context("starting the reader thread")?;

    for i in 0..threads {
        let work_rx = Arc::clone(&work_rx);
        let done_tx = done_tx.clone();
        let pipeline = Arc::clone(&pipeline);
        thread::Builder::new()
            .name(format!("sluice-run-worker-{i}"))
            .spawn(move || work(&pipeline, batch_id, &work_rx, &done_tx))
            .context("starting a worker thread")?;
    }
    drop(done_tx);

    let mut sink = Sink::new(&pipeline, batch_id, stdout, stderr)?;
    let mut pending: BTreeMap<u64, PartOutput> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut any_failed = false;
    let fail_batch = pipeline.on_error() == OnError::FailBatch;
    for (seq, output) in done_rx.iter() {
        pending.insert(seq, output);
        while let Some(output) = pending.remove(&next_seq) {
            let failed_here = !output.failures.is_empty();
            any_failed |= failed_here;
            if fail_batch && failed_here {
                sink.failures(&output)?;
                sink.finish()?;
                eprintln!("on_error is fail_batch: stopped at the first part with a failed record");
                // The reader may be blocked on input; the process exits
                // right after this, which ends it.
                return Ok(true);
            }
            if !sink.part(next_seq, output)? {
                // stdout was closed (`sluice run ... | head`): stop quietly;
                // the process exits right after, ending the other threads.
                sink.finish()?;
                return Ok(any_failed);
            }
            next_seq += 1;
            // Lets the reader cut one more part; it may have finished.
            let _ = ticket_tx.send(());
        }
    }
    sink.finish()?;
    drop(ticket_tx);
    let parts_read = match reader.join() {
        Ok(result) => result.context("reading the input")?,
        Err(_) => return Err(anyhow!("the reader thread failed")),
    };
    if next_seq != parts_read {
        return Err(anyhow!(
            "only {next_seq} of {parts_read} parts were processed (a worker thread failed)"
        ));
    }
    Ok(any_failed)
}

/// Cut the input into parts at line boundaries.
fn read_parts(
    mut input: Box<dyn Read + Send>,
    tickets: &Receiver<()>,
    work: &SyncSender<Part>,
) -> io::Result<u64> {
    let mut seq = 0u64;
    let mut next_index = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        if tickets.recv().is_err() {
            return Ok(seq);
        }
        let mut buf = Vec::with_capacity(carry.len() + PART_BYTES + 4096);
        buf.append(&mut carry);
        let eof = loop {
            let want = PART_BYTES;
            let got = (&mut input).take(want as u64).read_to_end(&mut buf)?;
            if got < want {
                break true;
            }
            // Stop at a part boundary once a complete line is in.
            if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
                carry.extend_from_slice(&buf[end + 1..]);
                buf.truncate(end + 1);
                break false;
            }
            // A line longer than a part: keep reading it.
        };
        if buf.is_empty() {
            return Ok(seq);
        }
        let lines = count_newlines(&buf);
        let part = Part {
            seq,
            first_index: next_index,
            bytes: buf,
        };
        next_index += lines;
        seq += 1;
        if work.send(part).is_err() {
            // Nobody processes parts any more; the caller reports it.
            return Ok(seq);
        }
        if eof {
            return Ok(seq);
        }
    }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    // Per 64-byte chunk into a u8, which the compiler turns into vector
    // compares (the plain filter-and-count ran byte by byte, about a
    // twentieth of a redact-only run).
    let chunks = bytes.chunks_exact(64);
    let tail = chunks.remainder();
    let full: u64 = chunks
        .map(|c| u64::from(c.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'))))
        .sum();
    full + tail.iter().filter(|&&b| b == b'\n').count() as u64
}

fn work(
    pipeline: &CompiledPipeline,
    batch_id: Uuid,
    parts: &Mutex<Receiver<Part>>,
    done: &SyncSender<(u64, PartOutput)>,
) {
    loop {
        let part = match parts.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(part) = part else { return };
        let output = pipeline.process_part(batch_id, part.first_index, &part.bytes);
        drop(part.bytes);
        if done.send((part.seq, output)).is_err() {
            return;
        }
    }
}

/// Where outputs and failures go.
struct Sink<'w> {
    /// Records, when there is no destination.
    stdout: Option<&'w mut dyn Write>,
    stderr: &'w mut dyn Write,
    destination: Option<(Arc<dyn sluice_core::Destination>, tokio::runtime::Runtime)>,
    batch_id: Uuid,
    line: Vec<u8>,
}

impl<'w> Sink<'w> {
    fn new(
        pipeline: &CompiledPipeline,
        batch_id: Uuid,
        stdout: &'w mut dyn Write,
        stderr: &'w mut dyn Write,
    ) -> anyhow::Result<Sink<'w>> {
        let destination = match pipeline.destination() {
            Some(d) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the delivery runtime")?;
                Some((Arc::clone(d), runtime))
            }
            None => None,
        };
        Ok(Sink {
            stdout: if destination.is_none() {
                Some(stdout)
            } else {
                None
            },
            stderr,
            destination,
            batch_id,
            line: Vec::with_capacity(1024),
        })
    }

    /// Deliver one part; `false` when stdout has been closed.
    fn part(&mut self, seq: u64, output: PartOutput) -> anyhow::Result<bool> {
        self.failures(&output)?;
        if output.records_out == 0 {
            return Ok(true);
        }
        if let Some(out) = self.stdout.as_mut() {
            match out.write_all(&output.ndjson) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.stdout = None;
                    return Ok(false);
                }
                Err(e) => return Err(e).context("writing records to stdout"),
            }
        }
        if let Some((destination, runtime)) = &self.destination {
            let part = OutputPart {
                tenant_id: Uuid::nil(),
                pipeline_id: Uuid::nil(),
                batch_id: self.batch_id,
                part: u32::try_from(seq).context("too many parts in one run")?,
                record_count: output.records_out,
                ndjson: output.ndjson.into(),
            };
            runtime
                .block_on(destination.write(&part))
                .map_err(|e| anyhow!("delivering part {seq}: {e}"))?;
        }
        Ok(true)
    }

    fn failures(&mut self, output: &PartOutput) -> anyhow::Result<()> {
        for failure in &output.failures {
            self.line.clear();
            serde_json::to_writer(&mut self.line, failure)?;
            self.line.push(b'\n');
            self.stderr.write_all(&self.line)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(out) = self.stdout.as_mut() {
            out.flush().context("writing records to stdout")?;
        }
        self.stderr.flush()?;
        Ok(())
    }
}

fn is_toml_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn master_keys_are_hex_or_text() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        let a = hash_key(Some("00ff"));
        let b = hash_key(Some("not hex"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert_eq!(hash_key(Some("00ff")), a, "derivation is stable");
    }

    #[test]
    fn newlines_are_counted() {
        let mut bytes = vec![b'x'; 1000];
        for i in [0, 63, 64, 65, 127, 500, 998, 999] {
            bytes[i] = b'\n';
        }
        assert_eq!(count_newlines(&bytes), 8);
        assert_eq!(count_newlines(&[b'\n'; 200]), 200);
        assert_eq!(count_newlines(b""), 0);
    }

    #[test]
    fn toml_paths() {
        assert!(is_toml_path(Path::new("p.TOML")));
        assert!(!is_toml_path(Path::new("p.json")));
    }

    fn run_bytes(
        config: serde_json::Value,
        input: &[u8],
        threads: usize,
    ) -> (bool, Vec<u8>, Vec<u8>, PartOutput) {
        let spec = validate_pipeline(&config).unwrap();
        let ctx = BuildContext {
            tenant_id: Uuid::nil(),
            pipeline_id: Uuid::nil(),
            pipeline_name: "t".into(),
            config_version: 1,
            output_root: PathBuf::from("."),
            hash_key: hash_key(Some("00")),
            outbound: sluice_outbound::Outbound::default(),
        };
        let pipeline = Arc::new(build_pipeline(&spec, &ctx).unwrap());
        let whole = pipeline.process_part(Uuid::nil(), 0, input);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let failed = run_pipeline(
            pipeline,
            Box::new(io::Cursor::new(input.to_vec())),
            threads,
            Uuid::nil(),
            &mut out,
            &mut err,
        )
        .unwrap();
        (failed, out, err, whole)
    }

    #[test]
    fn parts_cover_the_input_in_order() {
        // Enough input for several parts; the reader's indexes must match
        // one big part's.
        let mut input = Vec::new();
        for i in 0..40_000 {
            input.extend_from_slice(
                format!("{{\"i\":{i},\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxx\"}}\n").as_bytes(),
            );
        }
        let (tickets_tx, tickets_rx) = sync_channel(100);
        for _ in 0..100 {
            tickets_tx.send(()).unwrap();
        }
        let (tx, rx) = sync_channel(100);
        read_parts(Box::new(io::Cursor::new(input.clone())), &tickets_rx, &tx).unwrap();
        drop(tx);
        let parts: Vec<Part> = rx.iter().collect();
        assert!(parts.len() > 2);
        let mut joined = Vec::new();
        let mut index = 0;
        for (n, p) in parts.iter().enumerate() {
            assert_eq!(p.seq, n as u64);
            assert_eq!(p.first_index, index);
            assert!(p.bytes.ends_with(b"\n"));
            index += count_newlines(&p.bytes);
            joined.extend_from_slice(&p.bytes);
        }
        assert_eq!(joined, input);
        let config = serde_json::json!({"name": "t", "processors": [
            {"type": "filter", "condition": {"path": "/i", "op": "lt", "value": 39990}}
        ]});
        let (failed, out, err, whole) = run_bytes(config, &input, 3);
        assert!(!failed);
        assert!(err.is_empty());
        assert_eq!(whole.records_out, 39_990);
        assert_eq!(out, whole.ndjson, "same bytes as one part, in input order");
    }

    #[test]
    fn failures_go_to_stderr_and_set_the_result() {
        let config = serde_json::json!({"name": "t", "processors": [
            {"type": "map", "ops": [{"op": "remove", "path": "/x"}]}
        ]});
        let input = b"{\"x\":1}\n{\"y\":\"ada@example.com\"}\nnope\n{\"x\":2}";
        let (failed, out, err, _) = run_bytes(config, input, 2);
        assert!(failed);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 2);
        assert!(out.contains(&format!("\"{}:3:0\"", Uuid::nil())));
        let err = String::from_utf8(err).unwrap();
        let failures: Vec<serde_json::Value> = err
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0]["record_index"], 1);
        assert_eq!(failures[0]["processor_index"], 0);
        assert_eq!(failures[0]["processor_type"], "map");
        assert_eq!(failures[0]["code"], "PATH_NOT_FOUND");
        assert!(!err.contains("ada@example.com"), "{err}");
        assert_eq!(failures[1]["processor_type"], "input");
        assert_eq!(failures[1]["record_index"], 2);
    }

    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_ends_the_run_quietly() {
        let spec = validate_pipeline(&serde_json::json!({"name": "t"})).unwrap();
        let ctx = BuildContext {
            tenant_id: Uuid::nil(),
            pipeline_id: Uuid::nil(),
            pipeline_name: "t".into(),
            config_version: 1,
            output_root: PathBuf::from("."),
            hash_key: hash_key(Some("00")),
            outbound: sluice_outbound::Outbound::default(),
        };
        let pipeline = Arc::new(build_pipeline(&spec, &ctx).unwrap());
        let mut err = Vec::new();
        let failed = run_pipeline(
            pipeline,
            Box::new(io::Cursor::new(b"{}\n{}\n".to_vec())),
            1,
            Uuid::nil(),
            &mut ClosedPipe,
            &mut err,
        )
        .unwrap();
        assert!(!failed);
        assert!(err.is_empty());
    }

    #[test]
    fn fail_batch_stops_at_the_first_failed_part() {
        let config = serde_json::json!({"name": "t", "on_error": "fail_batch", "processors": [
            {"type": "map", "ops": [{"op": "remove", "path": "/x"}]}
        ]});
        let (failed, out, err, _) = run_bytes(config, b"{\"y\":1}\n", 1);
        assert!(failed);
        assert!(out.is_empty());
        assert_eq!(String::from_utf8(err).unwrap().lines().count(), 1);
    }

    #[test]
    fn file_destinations_get_the_parts() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"name": "t",
            "destination": {"type": "file", "path": "out/r.ndjson"}});
        let spec = validate_pipeline(&config).unwrap();
        let ctx = BuildContext {
            tenant_id: Uuid::nil(),
            pipeline_id: Uuid::nil(),
            pipeline_name: "t".into(),
            config_version: 1,
            output_root: dir.path().to_path_buf(),
            hash_key: hash_key(Some("00")),
            outbound: sluice_outbound::Outbound::default(),
        };
        let pipeline = Arc::new(build_pipeline(&spec, &ctx).unwrap());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let batch = Uuid::from_u128(5);
        let failed = run_pipeline(
            pipeline,
            Box::new(io::Cursor::new(b"{\"a\":1}\n{\"a\":2}\n".to_vec())),
            2,
            batch,
            &mut out,
            &mut err,
        )
        .unwrap();
        assert!(!failed);
        assert!(out.is_empty(), "records go to the destination, not stdout");
        let written =
            std::fs::read_to_string(dir.path().join(format!("out/r-{batch}-00000.ndjson")))
                .unwrap();
        assert_eq!(written.lines().count(), 2);
    }
}
