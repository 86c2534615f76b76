//! The processors and destinations of a Sluice pipeline, and the loop that
//! runs records through them.
//!
//! A pipeline config goes through three steps here. [`validate_pipeline`]
//! is pure: it parses the document and compiles everything that can be
//! wrong (JSON Schemas, regexes, scripts, redact options) without touching
//! the filesystem or the network, and returns every problem with its JSON
//! pointer, so an API client fixes its config in one round trip.
//! [`build_pipeline`] compiles the same things for real, with the tenant's
//! identity and hash key; the worker caches the result per (pipeline,
//! config version), so nothing is compiled per batch. Finally
//! [`CompiledPipeline::process_part`] is the one code path that turns a part
//! of a stored payload (NDJSON) into output NDJSON plus failed-record
//! captures. The worker and `sluice run` both call it, so what a user tries
//! locally is what the server does.
//!
//! Processing is synchronous and CPU-bound: parts are independent, so the
//! caller runs several on blocking threads at once. Each record gets its
//! stable id (`{batch_id}:{index}:{n}`, R-DEL-1) after the last processor,
//! which makes the output of a part a pure function of its input — the
//! property at-least-once delivery relies on (the `dedupe` window is the one
//! piece of state, and it is built to keep that property on redelivery).
//!
//! A record that fails never reaches the output. Its capture holds the
//! record *as submitted* — re-parsed from the raw line, not the half-edited
//! value — passed through the default redactor, because captures are
//! stored and shown to API clients and must not carry personal data
//! (R-PII-3).
//!
//! Components are registered in `registry.rs`, one line each.

mod destinations;
mod lines;
mod pointer;
mod processors;
mod registry;
mod script_engine;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sluice_core::{Destination, ErrorCode, Problem, Processor, RecordContext, record_id};
use uuid::Uuid;

pub use sluice_config::{OnError, PipelineSpec};

/// Captured raw lines that are not JSON are cut to this many bytes.
const MAX_CAPTURED_RAW_BYTES: usize = 64 * 1024;

/// What building a pipeline needs to know about where it runs.
#[derive(Clone)]
pub struct BuildContext {
    pub tenant_id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_name: String,
    pub config_version: i64,
    /// File destinations write under this directory (nothing may escape
    /// it, also not via symlinks).
    pub output_root: PathBuf,
    /// Tenant-scoped secret for `hash` actions and `ctx.hash`.
    pub hash_key: Arc<[u8]>,
    /// What outbound calls (webhooks, HTTP destinations, enrichment
    /// providers) may reach, and the CAs they trust.
    pub outbound: sluice_outbound::Outbound,
}

impl std::fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("tenant_id", &self.tenant_id)
            .field("pipeline_id", &self.pipeline_id)
            .field("pipeline_name", &self.pipeline_name)
            .field("config_version", &self.config_version)
            .field("output_root", &self.output_root)
            .field("hash_key", &"<redacted>")
            .field("outbound", &self.outbound)
            .finish()
    }
}

/// A built processor, with the hook the part loop needs.
pub(crate) trait Stage: Processor {
    /// Called on the processing thread at the start of every part.
    fn begin_part(&self) {}

    /// Whether this stage can edit records as their NDJSON lines
    /// ([`Stage::process_line`]). When every stage of a pipeline can, a
    /// record goes through them as JSON text, without a `Value` (see
    /// `lines.rs`).
    fn takes_lines(&self) -> bool {
        false
    }

    /// Appends the processed record for `line` (one JSON object) to `out`,
    /// with `append` (key, string value) as its last top-level member when
    /// given: the same JSON value as [`Processor::process`] makes, for a
    /// stage that emits exactly one record. Returns false, leaving `out` as
    /// it was, when the record has to take the `Value` path instead (it
    /// fails there, or this path cannot reproduce it exactly).
    fn process_line(
        &self,
        _line: &[u8],
        _append: Option<(&str, &str)>,
        _out: &mut Vec<u8>,
    ) -> bool {
        false
    }

    /// Whether this stage can edit a record given as its top-level members
    /// ([`Stage::process_members`]). When every stage of a pipeline can,
    /// a line is split into members once, checked on the way, and written
    /// once at the end.
    fn takes_members(&self) -> bool {
        false
    }

    /// Edits the members of one record (the line was checked when it was
    /// split); the same JSON value as [`Processor::process`] makes, for a
    /// stage that emits exactly one record. Returns false when the record
    /// has to take the `Value` path instead; `members` is then dropped.
    fn process_members<'a>(&'a self, _members: &mut Vec<lines::Member<'a>>) -> bool {
        false
    }

    /// Whether this stage takes the records of a part together
    /// ([`Stage::process_many`]), e.g. an `enrich_http` provider that is
    /// sent chunks of records. A pipeline with such a stage runs its
    /// processors stage by stage over the whole part.
    fn chunked(&self) -> bool {
        false
    }

    /// Process the records of a part that reached this stage, in their
    /// order: one result per record (what it emits, or why it failed).
    /// Called instead of `process` when [`Stage::chunked`].
    fn process_many(
        &self,
        records: Vec<(Value, RecordContext<'_>)>,
    ) -> Vec<Result<Vec<Value>, sluice_core::ProcessError>> {
        records
            .into_iter()
            .map(|(record, ctx)| {
                let mut out = Vec::new();
                self.process(record, &ctx, &mut out).map(|()| out)
            })
            .collect()
    }
}

/// Parse and completely validate a pipeline document without I/O: the
/// config checks of [`PipelineSpec::parse`], then every JSON Schema,
/// regex, script and expression (line and column in the message) and the
/// redact options. Returns every problem, each with its JSON pointer.
///
/// CPU-bound (compiling a script starts a throwaway engine, a few
/// milliseconds): call it from a blocking thread, not an async task.
pub fn validate_pipeline(doc: &Value) -> Result<PipelineSpec, Vec<Problem>> {
    let ctx = BuildContext {
        tenant_id: Uuid::nil(),
        pipeline_id: Uuid::nil(),
        pipeline_name: String::new(),
        config_version: 0,
        output_root: PathBuf::from("."),
        hash_key: Arc::from(&b"sluice-validation-only"[..]),
        outbound: sluice_outbound::Outbound::default(),
    };
    match PipelineSpec::parse(doc) {
        Ok(spec) => {
            let mut problems = Vec::new();
            for (i, p) in spec.processors.iter().enumerate() {
                if let Err(mut found) =
                    registry::build_processor(p, &ctx, &format!("/processors/{i}"))
                {
                    problems.append(&mut found);
                }
            }
            if let Some(Err(mut found)) = spec
                .destination
                .as_ref()
                .map(|d| registry::check_destination(d, &ctx, &spec.id_field))
            {
                problems.append(&mut found);
            }
            if problems.is_empty() {
                Ok(spec)
            } else {
                Err(problems)
            }
        }
        Err(mut problems) => {
            // The document has other problems; still compile every
            // processor that decoded and has none of its own yet, so the
            // answer lists everything at once.
            let items = doc
                .get("processors")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                let at = format!("/processors/{i}");
                let prefix = format!("{at}/");
                if problems
                    .iter()
                    .any(|p| p.path == at || p.path.starts_with(&prefix))
                {
                    continue;
                }
                let Ok(spec) = serde_json::from_value::<sluice_config::ProcessorSpec>(item.clone())
                else {
                    continue;
                };
                if let Err(mut found) = registry::build_processor(&spec, &ctx, &at) {
                    problems.append(&mut found);
                }
            }
            Err(problems)
        }
    }
}

/// Build every processor and the destination of a validated spec. Does
/// no I/O (the file destination creates its directories when it first
/// writes or is health-checked) but is CPU-bound like
/// [`validate_pipeline`]; build once per config version and share the
/// result.
pub fn build_pipeline(
    spec: &PipelineSpec,
    ctx: &BuildContext,
) -> Result<CompiledPipeline, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut processors = Vec::with_capacity(spec.processors.len());
    let mut type_names = Vec::with_capacity(spec.processors.len());
    for (i, p) in spec.processors.iter().enumerate() {
        match registry::build_processor(p, ctx, &format!("/processors/{i}")) {
            Ok(built) => {
                type_names.push(p.type_name());
                processors.push(built);
            }
            Err(mut found) => problems.append(&mut found),
        }
    }
    let destination = match &spec.destination {
        None => None,
        Some(d) => match registry::build_destination(d, ctx, &spec.id_field) {
            Ok(d) => Some(d),
            Err(mut found) => {
                problems.append(&mut found);
                None
            }
        },
    };
    if spec.id_field.is_empty() {
        problems.push(Problem::new("/id_field", "must not be empty"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(CompiledPipeline {
        text_path: if processors.is_empty() {
            TextPath::No
        } else if processors.iter().all(|p| p.takes_members()) {
            TextPath::Members
        } else if processors.iter().all(|p| p.takes_lines()) {
            TextPath::Lines
        } else {
            TextPath::No
        },
        tenant_id: ctx.tenant_id,
        pipeline_id: ctx.pipeline_id,
        pipeline_name: ctx.pipeline_name.clone(),
        config_version: ctx.config_version,
        processors,
        type_names,
        destination,
        on_error: spec.on_error,
        id_field: spec.id_field.clone(),
    })
}

/// A pipeline ready to process parts. `Send + Sync`: share it (in an
/// `Arc`) between every thread that processes parts of its batches.
pub struct CompiledPipeline {
    tenant_id: Uuid,
    pipeline_id: Uuid,
    pipeline_name: String,
    config_version: i64,
    processors: Vec<Box<dyn Stage>>,
    type_names: Vec<&'static str>,
    destination: Option<Arc<dyn Destination>>,
    on_error: OnError,
    id_field: String,
    /// How records go through the processors when they can skip the
    /// `Value`: see [`TextPath`].
    text_path: TextPath,
}

/// Whether records can go through every processor as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextPath {
    /// Some processor needs a `Value` (or there is none).
    No,
    /// Every processor takes the record as its top-level members
    /// ([`Stage::takes_members`]): split once, written once.
    Members,
    /// Every processor takes the record as a line ([`Stage::takes_lines`]).
    Lines,
}

impl std::fmt::Debug for CompiledPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPipeline")
            .field("pipeline_id", &self.pipeline_id)
            .field("config_version", &self.config_version)
            .field("processors", &self.type_names)
            .field(
                "destination",
                &self.destination.as_ref().map(|d| d.type_name()),
            )
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// The result of processing one part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartOutput {
    /// Output records, one JSON object per line, each ending in `\n`.
    pub ndjson: Vec<u8>,
    /// Input records seen (blank lines are not records).
    pub records_in: u64,
    /// Lines in `ndjson`.
    pub records_out: u64,
    /// Records that failed, in input order.
    pub failures: Vec<RecordFailure>,
}

/// One failed record, as stored in `batch_errors` and printed by `sluice run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordFailure {
    /// Position of the record in its batch.
    pub record_index: u64,
    /// Index of the processor that failed it; 0 for input errors.
    pub processor_index: usize,
    /// That processor's `type`, or `"input"` when the line was not a JSON
    /// object.
    pub processor_type: String,
    pub code: ErrorCode,
    /// Names paths and rules, never record values.
    pub message: String,
    /// The record as submitted, redacted with the default detectors (a
    /// line that is not JSON is kept as a redacted string).
    pub record: Value,
}

/// A record on its way through [`CompiledPipeline::process_part_staged`]:
/// its index, its line, and its outputs so far or why it failed.
type StagedRecord<'a> = (u64, &'a [u8], Result<Vec<Value>, Failed>);

/// Why one record failed, before its capture is made.
struct Failed {
    processor_index: usize,
    processor_type: &'static str,
    code: ErrorCode,
    message: String,
}

impl CompiledPipeline {
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    pub fn destination(&self) -> Option<&Arc<dyn Destination>> {
        self.destination.as_ref()
    }

    /// The field each output record's stable id is written to.
    pub fn id_field(&self) -> &str {
        &self.id_field
    }

    /// Run one part of a stored payload through the pipeline.
    ///
    /// CPU-bound: call it on a blocking thread; several parts (of one batch
    /// or of many) may run at once on different threads. `ndjson` holds one
    /// JSON object per line (`\n`-separated, the last line may lack its
    /// `\n`); line `k` is batch record `first_index + k`. Blank lines are
    /// skipped (they still take their index, so that indexes are line
    /// numbers). Each record runs through every processor in order; every
    /// output record gets `id_field` = `{batch_id}:{index}:{n}` with `n` its
    /// position among the outputs of that input record. Records are written
    /// as serde_json writes a `Value` (keys sorted), except in a pipeline
    /// whose every processor edits lines ([`Stage::takes_lines`]: `redact`,
    /// and `map` with ops on top-level members only): there a record keeps
    /// its members' order and spelling, a member that is added goes last,
    /// and the id is the last member.
    ///
    /// A pipeline with a chunked stage (an `enrich_http` provider in chunk
    /// mode) runs every record of the part through one processor after the
    /// other instead ([`CompiledPipeline::process_part_staged`]); the
    /// outputs, ids and failures are the same.
    pub fn process_part(&self, batch_id: Uuid, first_index: u64, ndjson: &[u8]) -> PartOutput {
        if self.processors.iter().any(|p| p.chunked()) {
            return self.process_part_staged(batch_id, first_index, ndjson);
        }
        for p in &self.processors {
            p.begin_part();
        }
        let mut out = PartOutput {
            ndjson: Vec::with_capacity(ndjson.len() + ndjson.len() / 4),
            ..PartOutput::default()
        };
        let mut current: Vec<Value> = Vec::with_capacity(4);
        let mut next: Vec<Value> = Vec::with_capacity(4);
        let mut scratch = (Vec::new(), Vec::new());
        for (record_index, line) in record_lines(first_index, ndjson) {
            out.records_in += 1;
            if self.text_path != TextPath::No {
                // Lines the stages cannot take (invalid ones among them) go
                // the `Value` way below, which reports the errors.
                let id = record_id(&batch_id, record_index, 0);
                if self.process_line(line, &id, &mut scratch, &mut out.ndjson) {
                    out.ndjson.push(b'\n');
                    out.records_out += 1;
                    continue;
                }
            }
            let ctx = RecordContext {
                tenant_id: self.tenant_id,
                pipeline_id: self.pipeline_id,
                pipeline_name: &self.pipeline_name,
                config_version: self.config_version,
                batch_id,
                record_index,
            };
            let result = self
                .run_record(line, &ctx, &mut current, &mut next)
                .and_then(|()| self.write_outputs(&mut current, &ctx, &mut out));
            if let Err(failed) = result {
                current.clear();
                out.failures.push(RecordFailure {
                    record_index,
                    processor_index: failed.processor_index,
                    processor_type: failed.processor_type.to_owned(),
                    code: failed.code,
                    message: failed.message,
                    record: captured_record(line),
                });
            }
        }
        out
    }

    /// Runs `line` through every stage as JSON text and appends the result,
    /// with its id, to `out`; false (and `out` as it was) when a stage
    /// gives up on it. `scratch` holds the text between stages.
    fn process_line(
        &self,
        line: &[u8],
        id: &str,
        scratch: &mut (Vec<u8>, Vec<u8>),
        out: &mut Vec<u8>,
    ) -> bool {
        if self.text_path == TextPath::Members {
            let Some(mut members) = lines::members(line) else {
                return false;
            };
            if !self
                .processors
                .iter()
                .all(|p| p.process_members(&mut members))
                || members.iter().any(|m| m.key == self.id_field.as_str())
            {
                return false;
            }
            lines::write_object(&members, Some((&self.id_field, id)), out);
            return true;
        }
        let Some((last, before)) = self.processors.split_last() else {
            return false;
        };
        let (done, next) = scratch;
        let mut first = true;
        for p in before {
            next.clear();
            let input: &[u8] = if first { line } else { done };
            if !p.process_line(input, None, next) {
                return false;
            }
            std::mem::swap(done, next);
            first = false;
        }
        let input: &[u8] = if first { line } else { done };
        last.process_line(input, Some((&self.id_field, id)), out)
    }

    /// [`CompiledPipeline::process_part`] stage by stage: every record of
    /// the part goes through the first processor, then every output
    /// through the second, and so on, so that a chunked stage gets all of
    /// them at once. Each processor still sees the records in their order.
    fn process_part_staged(&self, batch_id: Uuid, first_index: u64, ndjson: &[u8]) -> PartOutput {
        for p in &self.processors {
            p.begin_part();
        }
        let mut out = PartOutput {
            ndjson: Vec::with_capacity(ndjson.len() + ndjson.len() / 4),
            ..PartOutput::default()
        };
        // Every record: its index, its line, and its outputs so far or why
        // it failed.
        let mut items: Vec<StagedRecord<'_>> = Vec::new();
        for (record_index, line) in record_lines(first_index, ndjson) {
            out.records_in += 1;
            items.push((
                record_index,
                line,
                Self::parse_record(line).map(|r| vec![r]),
            ));
        }
        let ctx_of = |record_index: u64| RecordContext {
            tenant_id: self.tenant_id,
            pipeline_id: self.pipeline_id,
            pipeline_name: &self.pipeline_name,
            config_version: self.config_version,
            batch_id,
            record_index,
        };
        let mut next = Vec::with_capacity(4);
        for (i, p) in self.processors.iter().enumerate() {
            let fail = |code: ErrorCode, message: String| Failed {
                processor_index: i,
                processor_type: self.type_names[i],
                code,
                message,
            };
            if p.chunked() {
                let mut owners = Vec::new();
                let mut inputs = Vec::new();
                for (k, (record_index, _, state)) in items.iter_mut().enumerate() {
                    if let Ok(values) = state {
                        for v in values.drain(..) {
                            owners.push(k);
                            inputs.push((v, ctx_of(*record_index)));
                        }
                    }
                }
                let mut results = p.process_many(inputs).into_iter();
                for k in owners {
                    let result = results.next();
                    let state = &mut items[k].2;
                    let Ok(values) = state else {
                        // An earlier output of the same record failed.
                        continue;
                    };
                    match result {
                        Some(Ok(emitted)) => values.extend(emitted),
                        Some(Err(e)) => *state = Err(fail(e.code, e.message)),
                        None => {
                            *state = Err(fail(
                                ErrorCode::InternalError,
                                "the processor gave no result for the record".to_owned(),
                            ))
                        }
                    }
                }
            } else {
                for (record_index, _, state) in items.iter_mut() {
                    let Ok(values) = state else {
                        continue;
                    };
                    if values.is_empty() {
                        continue;
                    }
                    let ctx = ctx_of(*record_index);
                    next.clear();
                    let mut error = None;
                    for r in values.drain(..) {
                        if let Err(e) = p.process(r, &ctx, &mut next) {
                            error = Some(e);
                            break;
                        }
                    }
                    match error {
                        Some(e) => *state = Err(fail(e.code, e.message)),
                        None => std::mem::swap(values, &mut next),
                    }
                }
            }
            for (_, _, state) in items.iter_mut() {
                if let Ok(values) = state
                    && values.iter().any(|r| !r.is_object())
                {
                    *state = Err(fail(
                        ErrorCode::RecordNotObject,
                        "the processor emitted a value that is not a JSON object".to_owned(),
                    ));
                }
            }
        }
        for (record_index, line, state) in items {
            let ctx = ctx_of(record_index);
            let result =
                state.and_then(|mut values| self.write_outputs(&mut values, &ctx, &mut out));
            if let Err(failed) = result {
                out.failures.push(RecordFailure {
                    record_index,
                    processor_index: failed.processor_index,
                    processor_type: failed.processor_type.to_owned(),
                    code: failed.code,
                    message: failed.message,
                    record: captured_record(line),
                });
            }
        }
        out
    }

    /// Parse one line into a record (a JSON object).
    fn parse_record(line: &[u8]) -> Result<Value, Failed> {
        let input_error = |code, message: String| Failed {
            processor_index: 0,
            processor_type: "input",
            code,
            message,
        };
        // One UTF-8 check of the whole line is cheaper than serde_json's
        // check of every string in it.
        let text = std::str::from_utf8(line).map_err(|e| {
            input_error(
                ErrorCode::MalformedBody,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        let record: Value = serde_json::from_str(text)
            .map_err(|e| input_error(ErrorCode::MalformedBody, format!("invalid JSON: {e}")))?;
        if !record.is_object() {
            return Err(input_error(
                ErrorCode::RecordNotObject,
                "a record must be a JSON object".to_owned(),
            ));
        }
        Ok(record)
    }

    /// Parse one line and run it through every processor; the outputs are
    /// left in `current`.
    fn run_record(
        &self,
        line: &[u8],
        ctx: &RecordContext<'_>,
        current: &mut Vec<Value>,
        next: &mut Vec<Value>,
    ) -> Result<(), Failed> {
        let record = Self::parse_record(line)?;
        current.clear();
        current.push(record);
        for (i, p) in self.processors.iter().enumerate() {
            next.clear();
            for r in current.drain(..) {
                if let Err(e) = p.process(r, ctx, next) {
                    return Err(Failed {
                        processor_index: i,
                        processor_type: self.type_names[i],
                        code: e.code,
                        message: e.message,
                    });
                }
            }
            if next.iter().any(|r| !r.is_object()) {
                return Err(Failed {
                    processor_index: i,
                    processor_type: self.type_names[i],
                    code: ErrorCode::RecordNotObject,
                    message: "the processor emitted a value that is not a JSON object".to_owned(),
                });
            }
            std::mem::swap(current, next);
            if current.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Stamp ids on the outputs in `current` and append them to `out`.
    fn write_outputs(
        &self,
        current: &mut Vec<Value>,
        ctx: &RecordContext<'_>,
        out: &mut PartOutput,
    ) -> Result<(), Failed> {
        let start = out.ndjson.len();
        let count = current.len() as u64;
        for (n, mut r) in current.drain(..).enumerate() {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            if let Value::Object(map) = &mut r {
                map.insert(
                    self.id_field.clone(),
                    Value::String(record_id(&ctx.batch_id, ctx.record_index, n)),
                );
            }
            if let Err(e) = serde_json::to_writer(&mut out.ndjson, &r) {
                out.ndjson.truncate(start);
                return Err(Failed {
                    processor_index: self.processors.len().saturating_sub(1),
                    processor_type: self.type_names.last().copied().unwrap_or("input"),
                    code: ErrorCode::InternalError,
                    message: format!("could not serialize the record: {e}"),
                });
            }
            out.ndjson.push(b'\n');
        }
        out.records_out += count;
        Ok(())
    }
}

/// The records of a part: each non-blank line with its batch record index
/// (`first_index` plus its line number, so blank lines keep their index).
fn record_lines(first_index: u64, ndjson: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut rest = ndjson;
    let lines = std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, after) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        Some(line)
    });
    (first_index..)
        .zip(lines)
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

/// A problem for an object that serde refused, at `base`, or at the
/// offending member for an unknown field; without serde's
/// "at line 1 column 2" suffix.
pub(crate) fn serde_problem(base: &str, error: &serde_json::Error) -> Problem {
    let text = error.to_string();
    let message = match text.find(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let path = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(|field| format!("{base}/{}", sluice_core::pointer_token(field)))
        .unwrap_or_else(|| base.to_owned());
    Problem::new(path, message)
}

/// The submitted record for a failure capture, redacted.
fn captured_record(line: &[u8]) -> Value {
    let redactor = sluice_pii::default_redactor();
    match serde_json::from_slice::<Value>(line) {
        Ok(mut v) => {
            redactor.redact_record(&mut v);
            v
        }
        Err(_) => {
            let cut = &line[..line.len().min(MAX_CAPTURED_RAW_BYTES)];
            let text = String::from_utf8_lossy(cut);
            Value::String(redactor.redact_text(&text).into_owned())
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub(crate) fn build_ctx() -> BuildContext {
        BuildContext {
            tenant_id: Uuid::from_u128(1),
            pipeline_id: Uuid::from_u128(2),
            pipeline_name: "test".into(),
            config_version: 1,
            output_root: PathBuf::from("/nonexistent-sluice-test-root"),
            hash_key: Arc::from(&b"test tenant key"[..]),
            outbound: sluice_outbound::Outbound::default(),
        }
    }

    pub(crate) fn ctx(record_index: u64) -> RecordContext<'static> {
        RecordContext {
            tenant_id: Uuid::from_u128(1),
            pipeline_id: Uuid::from_u128(2),
            pipeline_name: "test",
            config_version: 1,
            batch_id: Uuid::from_u128(3),
            record_index,
        }
    }
}

#[cfg(test)]
mod tests;
