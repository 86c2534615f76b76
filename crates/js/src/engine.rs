//! One engine instance: a QuickJS runtime and context running one script.
//!
//! A runtime per script (not one shared runtime with a context per script)
//! because QuickJS puts the memory limit, the stack limit and the interrupt
//! handler on the runtime: with its own runtime, a script's limits are its own
//! and a limit hit can be answered by throwing the whole instance away. The
//! context gets only the intrinsics scripts need (no typed arrays, so no
//! `SharedArrayBuffer` or `Atomics`; no `Proxy`, `WeakRef` or performance
//! timers), then `harden.js` removes and freezes the rest before the script's
//! own code runs.
//!
//! Scripts are compiled from source on each thread's first use, not loaded
//! from cached bytecode: QuickJS trusts bytecode blindly, so rquickjs only
//! offers loading it as `unsafe`, which this crate forbids. Parsing a script
//! is a one-off per thread (well under a millisecond for typical scripts);
//! records never pay for it.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rquickjs::context::EvalOptions;
use rquickjs::context::intrinsic;
use rquickjs::{Context, Ctx, Exception, Function, Object, Persistent, Runtime, Value};

use crate::convert::{self, ConvertError, Converted, FromJs, KeyCache, Keys};
use crate::host::{self, Host};
use crate::limits::{Budget, Clock};
use crate::{ScriptError, ScriptKind, ScriptProblem, TransformOutput};
use sluice_core::ErrorCode;

/// The intrinsics a script context gets (the base objects always come too).
type Intrinsics = (
    intrinsic::Date,
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::MapSet,
    // Registers the async function classes, so that `async` code fails
    // cleanly; `harden.js` deletes the `Promise` global itself.
    intrinsic::Promise,
);

const HARDEN_JS: &str = include_str!("harden.js");

/// File name the script is compiled under; error positions refer to it.
pub(crate) const SCRIPT_FILE: &str = "script";

/// What a script is compiled as, with how to map its error positions.
pub(crate) struct Source<'a> {
    pub(crate) text: &'a str,
    pub(crate) kind: ScriptKind,
}

impl Source<'_> {
    /// Lines the wrapper adds before the user's text.
    fn line_offset(&self) -> u32 {
        match self.kind {
            ScriptKind::Transform => 0,
            ScriptKind::Expression => 1,
        }
    }

    fn wrapped(&self, open: &str, close: &str) -> String {
        format!(
            "(function (record, r, ctx) {{ \"use strict\"; return {open}\n{}\n{close}; }})",
            self.text
        )
    }

    fn lines(&self) -> u32 {
        u32::try_from(self.text.lines().count())
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// Why an engine could not start.
pub(crate) enum StartError {
    /// The script is wrong: syntax, no `transform`, top level threw.
    Problems(Vec<ScriptProblem>),
    /// Starting hit a limit or the engine failed.
    Failed(Failure),
}

/// A failed call, classified.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: ScriptError,
    /// Metric label of the limit hit, if one was.
    pub(crate) limit: Option<&'static str>,
    /// The engine may be damaged and must be discarded.
    pub(crate) discard: bool,
    /// The JavaScript message without position, and the position, when the
    /// failure is an exception (for compile problems).
    detail: Option<(String, Option<(u32, u32)>)>,
}

impl Failure {
    fn new(error: ScriptError, limit: Option<&'static str>, discard: bool) -> Self {
        Failure {
            error,
            limit,
            discard,
            detail: None,
        }
    }

    fn script(message: String) -> Self {
        Failure::new(
            ScriptError::new(ErrorCode::ScriptError, message),
            None,
            false,
        )
    }

    pub(crate) fn internal(message: &str) -> Self {
        Failure::script(message.to_owned())
    }

    /// The chunk's CPU budget was spent before this record started.
    pub(crate) fn chunk_spent(limits: &crate::ScriptLimits) -> Self {
        Failure::new(
            ScriptError::new(
                ErrorCode::ScriptTimeout,
                format!(
                    "the script used up its CPU time budget of {} ms for this chunk",
                    limits.chunk_timeout_ms
                ),
            ),
            Some("timeout"),
            false,
        )
    }
}

/// Result of one call on an engine.
pub(crate) struct Run<T> {
    pub(crate) result: Result<T, Failure>,
    /// CPU time the call used (see `Clock::disarm`).
    pub(crate) used: Duration,
}

pub(crate) struct Engine {
    // Field order is drop order: JS handles before the context, the context
    // before the runtime.
    entry: Persistent<Function<'static>>,
    ctx_object: Persistent<Object<'static>>,
    to_well_formed: Option<Persistent<Function<'static>>>,
    key_holder: Persistent<Object<'static>>,
    key_cache: RefCell<KeyCache>,
    context: Context,
    runtime: Runtime,
    clock: Rc<Clock>,
    host: Rc<Host>,
    kind: ScriptKind,
    line_offset: u32,
    limits: crate::ScriptLimits,
}

impl Engine {
    /// Starts an engine for `source`: builds the hardened context, runs the
    /// script's top level within `startup` of CPU time and finds its entry.
    pub(crate) fn start(
        source: &Source<'_>,
        limits: &crate::ScriptLimits,
        env: &crate::ScriptEnv,
        startup: Duration,
        validate: bool,
    ) -> Result<Engine, StartError> {
        let fail = |message: String| {
            StartError::Failed(Failure::new(
                ScriptError::new(ErrorCode::ScriptError, message),
                None,
                true,
            ))
        };
        let runtime =
            Runtime::new().map_err(|e| fail(format!("cannot start a script engine: {e}")))?;
        let clock = Rc::new(Clock::new());
        let handler_clock = clock.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || handler_clock.should_interrupt())));
        let context = Context::custom::<Intrinsics>(&runtime)
            .map_err(|e| fail(format!("cannot start a script engine: {e}")))?;
        runtime.set_memory_limit(limits.memory_bytes());
        runtime.set_max_stack_size(limits.stack_bytes());
        let host = Rc::new(Host::new(env.clone(), limits.max_log_lines));
        let line_offset = source.line_offset();

        clock.arm(startup, Budget::Startup);
        // Hardening and building `ctx` run under the startup clock too: when
        // it fires there (a chunk's last milliseconds), that is a timeout.
        let setup_failed = |ctx: &Ctx<'_>, what: &str, e: rquickjs::Error| {
            if clock.fired() {
                StartError::Failed(timeout(&clock, limits))
            } else {
                fail(format!("{what}: {}", js_error_text(ctx, e)))
            }
        };
        let started = context.with(|ctx| -> Result<_, StartError> {
            let finalize: Function = ctx
                .eval(HARDEN_JS)
                .map_err(|e| setup_failed(&ctx, "cannot harden the script engine", e))?;
            let ctx_object = host::build_ctx(&ctx, &host)
                .map_err(|e| setup_failed(&ctx, "cannot build ctx", e))?;

            let mut options = EvalOptions::default();
            options.strict = true;
            options.global = true;
            options.filename = Some(SCRIPT_FILE.to_owned());
            let entry: Value = match source.kind {
                ScriptKind::Transform => {
                    let loaded: Result<Value, _> = ctx.eval_with_options(source.text, options);
                    if let Err(e) = loaded {
                        return Err(top_level_failure(&ctx, e, &clock, limits, source));
                    }
                    let mut options = EvalOptions::default();
                    options.strict = true;
                    ctx.eval_with_options(
                        "typeof transform === 'function' ? transform : undefined",
                        options,
                    )
                    .map_err(|e| top_level_failure(&ctx, e, &clock, limits, source))?
                }
                ScriptKind::Expression => {
                    if validate {
                        // `[ ... ]` must parse too, so the text cannot close
                        // the wrapper's parenthesis and continue with
                        // statements of its own.
                        let mut options = EvalOptions::default();
                        options.strict = true;
                        options.filename = Some(SCRIPT_FILE.to_owned());
                        let _: Value = ctx
                            .eval_with_options(source.wrapped("[", "]"), options)
                            .map_err(|e| top_level_failure(&ctx, e, &clock, limits, source))?;
                    }
                    ctx.eval_with_options(source.wrapped("(", ")"), options)
                        .map_err(|e| top_level_failure(&ctx, e, &clock, limits, source))?
                }
            };
            let Some(entry) = entry.as_function().cloned() else {
                return Err(StartError::Problems(vec![ScriptProblem {
                    line: 0,
                    column: 0,
                    message: "the script must define `function transform(record, ctx)`".to_owned(),
                }]));
            };
            let _: Value = finalize
                .call((ctx_object.clone(),))
                .map_err(|e| top_level_failure(&ctx, e, &clock, limits, source))?;
            let to_well_formed = ctx
                .eval::<Value, _>("String.prototype.toWellFormed")
                .ok()
                .and_then(|v| v.as_function().cloned())
                .map(|f| Persistent::save(&ctx, f));
            let key_holder = Object::new(ctx.clone())
                .map_err(|e| fail(format!("cannot start a script engine: {e}")))?;
            Ok((
                Persistent::save(&ctx, entry),
                Persistent::save(&ctx, ctx_object),
                to_well_formed,
                Persistent::save(&ctx, key_holder),
            ))
        });
        clock.disarm();
        let (entry, ctx_object, to_well_formed, key_holder) = started?;
        if runtime.is_job_pending() {
            return Err(StartError::Problems(vec![ScriptProblem {
                line: 0,
                column: 0,
                message: "the script's top-level code scheduled asynchronous work, which is \
                          not supported"
                    .to_owned(),
            }]));
        }
        Ok(Engine {
            entry,
            ctx_object,
            to_well_formed,
            key_holder,
            key_cache: RefCell::new(KeyCache::default()),
            context,
            runtime,
            clock,
            host,
            kind: source.kind,
            line_offset,
            limits: limits.clone(),
        })
    }

    /// Runs `transform(record, ctx)`.
    pub(crate) fn transform(
        &mut self,
        record: &serde_json::Value,
        batch_id: uuid::Uuid,
        record_index: u64,
        limit: Duration,
        budget: Budget,
    ) -> Run<TransformOutput> {
        self.host.begin(batch_id, record_index);
        self.clock.arm(limit, budget);
        let result = self.context.with(|ctx| {
            let value = self.call(&ctx, record)?;
            let converted = self.records(&ctx, value);
            converted.map_err(|e| self.convert_failure(&ctx, e))
        });
        let used = self.clock.disarm();
        let (logs, dropped) = self.host.take_logs();
        if dropped > 0 {
            metrics::counter!("sluice_script_log_lines_dropped_total")
                .increment(u64::from(dropped));
        }
        let result = self
            .after_call(result)
            .map(|records| TransformOutput { records, logs });
        Run { result, used }
    }

    /// Evaluates the expression over `record`.
    pub(crate) fn eval(
        &mut self,
        record: &serde_json::Value,
        batch_id: uuid::Uuid,
        record_index: u64,
        limit: Duration,
        budget: Budget,
    ) -> Run<serde_json::Value> {
        self.host.begin(batch_id, record_index);
        self.clock.arm(limit, budget);
        let result = self.context.with(|ctx| {
            let value = self.call(&ctx, record)?;
            let wf = self.well_formed(&ctx);
            let holder = self
                .key_holder
                .clone()
                .restore(&ctx)
                .map_err(|e| self.js_failure(&ctx, e))?;
            let mut cache = self.key_cache.borrow_mut();
            let mut conv = FromJs::new(self.limits.output_bytes())
                .well_formed(wf.as_ref())
                .key_cache(Keys {
                    cache: &mut cache,
                    holder,
                });
            match conv.convert(value) {
                Ok(Converted::Json(v)) => Ok(v),
                Ok(Converted::Skip("undefined")) => Ok(serde_json::Value::Null),
                Ok(Converted::Skip(what)) => Err(Failure::script(format!(
                    "the expression returned {what}, which is not a JSON value"
                ))),
                Err(e) => Err(self.convert_failure(&ctx, e)),
            }
        });
        let used = self.clock.disarm();
        let result = self.after_call(result);
        let _ = self.host.take_logs();
        Run { result, used }
    }

    fn well_formed<'js>(&self, ctx: &Ctx<'js>) -> Option<Function<'js>> {
        self.to_well_formed
            .as_ref()
            .and_then(|p| p.clone().restore(ctx).ok())
    }

    /// Converts the record, calls the entry and returns its raw result.
    fn call<'js>(&self, ctx: &Ctx<'js>, record: &serde_json::Value) -> Result<Value<'js>, Failure> {
        let entry = self
            .entry
            .clone()
            .restore(ctx)
            .map_err(|e| self.js_failure(ctx, e))?;
        let ctx_object = self
            .ctx_object
            .clone()
            .restore(ctx)
            .map_err(|e| self.js_failure(ctx, e))?;
        let record = convert::to_js(ctx, record, 0).map_err(|e| match e {
            ConvertError::Invalid(why) => {
                Failure::script(format!("the record cannot be passed to the script: {why}"))
            }
            other => self.convert_failure(ctx, other),
        })?;
        let called = match self.kind {
            ScriptKind::Transform => entry.call((record, ctx_object)),
            ScriptKind::Expression => entry.call((record.clone(), record, ctx_object)),
        };
        called.map_err(|e| self.js_failure(ctx, e))
    }

    /// Turns what `transform` returned into records.
    fn records<'js>(
        &self,
        ctx: &Ctx<'js>,
        value: Value<'js>,
    ) -> Result<Vec<serde_json::Value>, ConvertError> {
        if value.is_undefined() || value.is_null() {
            return Ok(Vec::new());
        }
        let wf = self.well_formed(ctx);
        let holder = self.key_holder.clone().restore(ctx)?;
        let mut cache = self.key_cache.borrow_mut();
        let mut conv = FromJs::new(self.limits.output_bytes())
            .well_formed(wf.as_ref())
            .key_cache(Keys {
                cache: &mut cache,
                holder,
            });
        if let Some(array) = value.as_array() {
            let mut records = Vec::with_capacity(array.len().min(1024));
            for i in 0..array.len() {
                let item: Value<'js> = array.get(i)?;
                records.push(record_of(&mut conv, item, Some(i))?);
            }
            return Ok(records);
        }
        Ok(vec![record_of(&mut conv, value, None)?])
    }

    /// Classifies an error from a call, reading the pending exception.
    fn js_failure(&self, ctx: &Ctx<'_>, error: rquickjs::Error) -> Failure {
        classify(ctx, error, &self.clock, &self.limits, self.line_offset)
    }

    fn convert_failure(&self, ctx: &Ctx<'_>, error: ConvertError) -> Failure {
        match error {
            ConvertError::Js(e) => self.js_failure(ctx, e),
            ConvertError::TooLarge => Failure::new(
                ScriptError::new(
                    ErrorCode::ScriptOutputTooLarge,
                    format!(
                        "the script's output is larger than its limit of {} bytes",
                        self.limits.max_output_bytes
                    ),
                ),
                Some("output"),
                false,
            ),
            ConvertError::Invalid(why) => Failure::script(format!("unusable result: {why}")),
        }
    }

    /// Post-call checks shared by every call kind.
    fn after_call<T>(&self, result: Result<T, Failure>) -> Result<T, Failure> {
        // Promise jobs left behind would run nowhere and pile up.
        let pending = self.runtime.is_job_pending();
        match result {
            Err(mut f) => {
                f.discard |= pending;
                Err(f)
            }
            Ok(_) if pending => Err(Failure::new(
                ScriptError::new(
                    ErrorCode::ScriptError,
                    "the script scheduled asynchronous work, which is not supported".to_owned(),
                ),
                None,
                true,
            )),
            Ok(v) => Ok(v),
        }
    }
}

/// One returned record: must be a plain object.
fn record_of<'js>(
    conv: &mut FromJs<'_, 'js>,
    value: Value<'js>,
    index: Option<usize>,
) -> Result<serde_json::Value, ConvertError> {
    let what = match index {
        Some(i) => format!("element {i} of the returned array"),
        None => "the returned value".to_owned(),
    };
    let kind = if value.is_object() && !value.is_array() && !value.is_function() {
        None
    } else if value.is_array() {
        Some("an array")
    } else {
        Some(value.type_name())
    };
    if let Some(kind) = kind {
        return Err(ConvertError::Invalid(format!(
            "{what} is {kind}; transform must return an object, an array of objects, null or \
             undefined"
        )));
    }
    match conv.convert(value)? {
        Converted::Json(v @ serde_json::Value::Object(_)) => Ok(v),
        Converted::Json(other) => Err(ConvertError::Invalid(format!(
            "{what} turned into {} through toJSON(); records must be objects",
            json_type(&other)
        ))),
        Converted::Skip(kind) => Err(ConvertError::Invalid(format!("{what} is {kind}"))),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Maps a failed start to compile problems or a failure.
fn top_level_failure(
    ctx: &Ctx<'_>,
    error: rquickjs::Error,
    clock: &Clock,
    limits: &crate::ScriptLimits,
    source: &Source<'_>,
) -> StartError {
    let failure = classify(ctx, error, clock, limits, source.line_offset());
    if failure.limit.is_some() {
        return StartError::Failed(failure);
    }
    let (message, position) = failure.detail.unwrap_or((failure.error.message, None));
    let (line, column) = position.unwrap_or((0, 0));
    let line = if source.kind == ScriptKind::Expression {
        line.min(source.lines())
    } else {
        line
    };
    StartError::Problems(vec![ScriptProblem {
        line,
        column,
        message,
    }])
}

/// Classifies a JavaScript error: limit hits by the clock and the pending
/// exception, anything else as a script error with its message and position.
pub(crate) fn classify(
    ctx: &Ctx<'_>,
    error: rquickjs::Error,
    clock: &Clock,
    limits: &crate::ScriptLimits,
    line_offset: u32,
) -> Failure {
    let exception = match error {
        rquickjs::Error::Exception => Some(ctx.catch()),
        _ => None,
    };
    if clock.fired() {
        return timeout(clock, limits);
    }
    let out_of_memory = || {
        Failure::new(
            ScriptError::new(
                ErrorCode::ScriptMemoryLimit,
                format!(
                    "the script ran past its memory limit of {} MiB",
                    limits.memory_mb
                ),
            ),
            Some("memory"),
            true,
        )
    };
    let Some(exception) = exception else {
        return match error {
            rquickjs::Error::Allocation => out_of_memory(),
            other => Failure::new(
                ScriptError::new(
                    ErrorCode::ScriptError,
                    format!("script engine error: {other}"),
                ),
                None,
                true,
            ),
        };
    };
    // When memory runs out so completely that QuickJS cannot even build its
    // "out of memory" error, it throws `null` instead. A script's own
    // `throw null` cannot be told apart and is reported the same way
    // (documented in docs/scripting.md).
    if exception.is_null() {
        return out_of_memory();
    }
    let described = describe_exception(exception);
    // Describing runs the script's getters and `toString`s: they can run
    // out of time too.
    if clock.fired() {
        return timeout(clock, limits);
    }
    if described.internal && described.message == "out of memory" {
        return out_of_memory();
    }
    if described.range && described.message == "Maximum call stack size exceeded" {
        return Failure::new(
            ScriptError::new(
                ErrorCode::ScriptError,
                format!(
                    "the script ran past its stack limit of {} KiB (recursion too deep)",
                    limits.max_stack_kb
                ),
            ),
            Some("stack"),
            true,
        );
    }
    let position = described
        .position
        .map(|(line, column)| (line.saturating_sub(line_offset).max(1), column));
    let message = match position {
        Some((line, column)) => format!("{} (line {line}, column {column})", described.text),
        None => described.text.clone(),
    };
    let mut failure = Failure::script(message);
    failure.detail = Some((described.text, position));
    failure
}

/// The failure for a call the interrupt handler stopped.
fn timeout(clock: &Clock, limits: &crate::ScriptLimits) -> Failure {
    let message = match clock.budget() {
        Budget::Record => format!(
            "the script ran past its CPU time limit of {} ms per record",
            limits.timeout_ms
        ),
        Budget::Chunk => format!(
            "the script used up its CPU time budget of {} ms for this chunk",
            limits.chunk_timeout_ms
        ),
        Budget::Startup => format!(
            "the script's top-level code ran past its limit of {} ms",
            clock.limit().as_millis()
        ),
    };
    Failure::new(
        ScriptError::new(ErrorCode::ScriptTimeout, message),
        Some("timeout"),
        true,
    )
}

struct Described {
    /// `Name: message`, or a description of a thrown non-Error value.
    text: String,
    message: String,
    internal: bool,
    range: bool,
    position: Option<(u32, u32)>,
}

const MAX_MESSAGE_BYTES: usize = 1000;

fn describe_exception(value: Value<'_>) -> Described {
    if value.is_error()
        && let Some(e) = value.as_object().cloned().and_then(Exception::from_object)
    {
        let name: String = e
            .get::<_, rquickjs::Coerced<String>>("name")
            .map(|c| c.0)
            .unwrap_or_else(|_| "Error".to_owned());
        let message = e.message().unwrap_or_default();
        let position = e.stack().as_deref().and_then(stack_position);
        let text = if message.is_empty() {
            name.clone()
        } else {
            format!("{name}: {message}")
        };
        return Described {
            text: host::truncate(text, MAX_MESSAGE_BYTES),
            internal: name == "InternalError",
            range: name == "RangeError",
            message,
            position,
        };
    }
    let shown = if let Some(s) = value.as_string() {
        s.to_string().unwrap_or_default()
    } else {
        let mut conv = FromJs::new(MAX_MESSAGE_BYTES);
        match conv.convert(value.clone()) {
            Ok(Converted::Json(v)) => v.to_string(),
            _ => format!("a {} value", value.type_name()),
        }
    };
    Described {
        text: host::truncate(format!("uncaught exception: {shown}"), MAX_MESSAGE_BYTES),
        message: String::new(),
        internal: false,
        range: false,
        position: None,
    }
}

/// The first `script:LINE:COLUMN` in a QuickJS stack trace.
pub(crate) fn stack_position(stack: &str) -> Option<(u32, u32)> {
    let needle = format!("{SCRIPT_FILE}:");
    let mut rest = stack;
    while let Some(at) = rest.find(&needle) {
        let before_ok = at == 0 || matches!(rest.as_bytes()[at - 1], b' ' | b'(');
        let tail = &rest[at + needle.len()..];
        let mut parts = tail.splitn(3, |c: char| !c.is_ascii_digit());
        let line = parts.next().and_then(|l| l.parse().ok());
        let column = parts.next().and_then(|c| c.parse().ok());
        if before_ok && let (Some(line), Some(column)) = (line, column) {
            return Some((line, column));
        }
        rest = tail;
    }
    None
}

/// Text of an error met while setting an engine up.
fn js_error_text(ctx: &Ctx<'_>, error: rquickjs::Error) -> String {
    match error {
        rquickjs::Error::Exception => describe_exception(ctx.catch()).text,
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stack_positions_are_parsed() {
        assert_eq!(stack_position("    at script:3:15\n"), Some((3, 15)));
        assert_eq!(
            stack_position("    at transform (script:12:7)\n    at <anonymous>\n"),
            Some((12, 7))
        );
        assert_eq!(stack_position("    at native\n"), None);
        assert_eq!(stack_position("    at myscript:1:2"), None);
    }
}
