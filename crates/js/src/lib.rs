//! The sandboxed JavaScript engine behind the `script`, `filter` and `map`
//! processors.
//!
//! User code is the one place where hostile or buggy input meets the server
//! process, so the sandbox is enforced from Rust and never relies on the
//! script's cooperation (SPEC section 6, R-JS-1..4):
//!
//! - Isolation: each [`Script`] gets its own QuickJS runtime and context per
//!   worker thread, built with only the intrinsics scripts need; `harden.js`
//!   removes `eval`, every route to a code-compiling constructor and all
//!   async scheduling, and deep-freezes the intrinsics, `ctx` and the global
//!   object, so one record cannot leave state for the next. Nothing is shared
//!   between scripts, so never between pipelines or tenants.
//! - Limits: memory and stack limits on the runtime, CPU time per record and
//!   per chunk through the interrupt handler, output size while converting.
//!   A limit hit fails that record with its own error code, counts in
//!   `sluice_script_limit_hits_total`, and throws the thread's engine
//!   instance away; the next record gets a fresh one.
//! - Speed: a script is validated once ([`Script::compile`]); every worker
//!   thread then lazily starts one engine instance per script and keeps it
//!   (a `thread_local` cache), and records cross the boundary by direct value
//!   conversion (see `convert`).
//!
//! `docs/scripting.md` is the user-facing description of all of this.

mod convert;
mod engine;
mod host;
mod limits;
mod scan;

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use uuid::Uuid;

use sluice_core::ErrorCode;

use engine::{Engine, Failure, Run, Source, StartError};
pub use host::CTX_API_VERSION;
pub use limits::ScriptLimits;
use limits::{Budget, thread_cpu};

/// What a script's source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// A script that defines `function transform(record, ctx)`; it returns a
    /// record, `null`/`undefined` (drop) or an array of records (split).
    Transform,
    /// A single JavaScript expression over `record` (alias `r`) and `ctx`,
    /// e.g. `r.level === "error"`; used by `filter` and `map`.
    Expression,
}

/// A problem found when compiling a script, for the 400 response. `line` and
/// `column` are 1-based; both are 0 when the problem has no position (e.g. no
/// `transform` function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptProblem {
    /// Line in the script's source.
    pub line: u32,
    /// Column (in characters) on that line.
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScriptProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        }
    }
}

/// The pipeline a script belongs to, and the host services `ctx` exposes.
#[derive(Clone)]
pub struct ScriptEnv {
    /// Tenant owning the pipeline.
    pub tenant_id: Uuid,
    /// `ctx.pipeline.id`.
    pub pipeline_id: Uuid,
    /// `ctx.pipeline.name`.
    pub pipeline_name: String,
    /// `ctx.pipeline.version`.
    pub pipeline_version: i64,
    /// Tenant key for `ctx.hash` (HMAC-SHA256, hex).
    pub hash_key: Arc<[u8]>,
    /// Redaction for `ctx.redact` and for every `ctx.log` line; `None` leaves
    /// text as it is.
    pub redact: Option<Redactor>,
}

/// A redaction function (the PII engine's), shared across threads.
pub type Redactor = Arc<dyn Fn(&str) -> String + Send + Sync>;

impl fmt::Debug for ScriptEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptEnv")
            .field("tenant_id", &self.tenant_id)
            .field("pipeline_id", &self.pipeline_id)
            .field("pipeline_name", &self.pipeline_name)
            .field("pipeline_version", &self.pipeline_version)
            .field("hash_key", &"<redacted>")
            .field("redact", &self.redact.is_some())
            .finish()
    }
}

/// Which record a call is about (`ctx.batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// `ctx.batch.id`.
    pub batch_id: Uuid,
    /// `ctx.batch.index`: the record's index in its batch.
    pub record_index: u64,
}

/// What `transform` made of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformOutput {
    /// The resulting records: none (dropped), one, or several (split).
    pub records: Vec<serde_json::Value>,
    /// `ctx.log` lines, already redacted, at most `max_log_lines`.
    pub logs: Vec<String>,
}

/// A record the script failed on. `message` carries the JavaScript error
/// message and its line and column where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ScriptError {
    /// `SCRIPT_ERROR`, `SCRIPT_TIMEOUT`, `SCRIPT_MEMORY_LIMIT` or
    /// `SCRIPT_OUTPUT_TOO_LARGE`.
    pub code: ErrorCode,
    /// What happened, for the batch's error list.
    pub message: String,
}

impl ScriptError {
    /// A new error.
    pub fn new(code: ErrorCode, message: String) -> Self {
        ScriptError { code, message }
    }
}

/// A compiled script: validated once, then run on any number of threads,
/// each with its own engine instance. Cheap to clone.
#[derive(Clone)]
pub struct Script {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    source: String,
    kind: ScriptKind,
    limits: ScriptLimits,
    env: ScriptEnv,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("id", &self.inner.id)
            .field("kind", &self.inner.kind)
            .field("limits", &self.inner.limits)
            .field("env", &self.inner.env)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Script {
    /// Validates `source` and returns a script ready to run, or every problem
    /// found: out-of-range limits, syntax errors, forbidden constructs
    /// (`eval`, `import`, timers, ...), a missing `transform`, or top-level
    /// code that throws or runs past its limits.
    ///
    /// This starts a throwaway engine on the calling thread (a few
    /// milliseconds of CPU): call it from a blocking context.
    pub fn compile(
        source: &str,
        kind: ScriptKind,
        limits: ScriptLimits,
        env: ScriptEnv,
    ) -> Result<Script, Vec<ScriptProblem>> {
        let mut problems: Vec<ScriptProblem> = limits
            .problems()
            .into_iter()
            .map(|(field, message)| ScriptProblem {
                line: 0,
                column: 0,
                message: format!("limits.{field} {message}"),
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        let src = Source { text: source, kind };
        let startup = Duration::from_millis(limits.chunk_timeout_ms);
        match Engine::start(&src, &limits, &env, startup, true) {
            Ok(engine) => drop(engine),
            Err(StartError::Problems(p)) => problems.extend(p),
            Err(StartError::Failed(f)) => problems.push(ScriptProblem {
                line: 0,
                column: 0,
                message: f.error.message,
            }),
        }
        // Names the sandbox does not provide are reported with their
        // position, unless the script does not even parse.
        if !problems
            .iter()
            .any(|p| p.message.starts_with("SyntaxError"))
        {
            let forbidden = scan::forbidden_constructs(source);
            if !forbidden.is_empty() {
                // They explain a top-level ReferenceError better.
                problems.retain(|p| !p.message.starts_with("ReferenceError"));
                problems.splice(0..0, forbidden);
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Script {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                source: source.to_owned(),
                kind,
                limits,
                env,
            }),
        })
    }

    /// What the script is.
    pub fn kind(&self) -> ScriptKind {
        self.inner.kind
    }

    /// The script's limits.
    pub fn limits(&self) -> &ScriptLimits {
        &self.inner.limits
    }

    /// Runs `transform(record, ctx)` on this thread's engine instance.
    pub fn transform(
        &self,
        record: serde_json::Value,
        call: &CallContext,
    ) -> Result<TransformOutput, ScriptError> {
        if self.inner.kind != ScriptKind::Transform {
            return Err(wrong_kind("transform", "an expression"));
        }
        self.run(|engine, limit, budget| {
            engine.transform(&record, call.batch_id, call.record_index, limit, budget)
        })
    }

    /// Evaluates the expression over `record` on this thread's engine
    /// instance. `undefined` becomes `null`.
    pub fn eval(
        &self,
        record: &serde_json::Value,
        call: &CallContext,
    ) -> Result<serde_json::Value, ScriptError> {
        if self.inner.kind != ScriptKind::Expression {
            return Err(wrong_kind("eval", "a transform script"));
        }
        self.run(|engine, limit, budget| {
            engine.eval(record, call.batch_id, call.record_index, limit, budget)
        })
    }

    /// Starts a chunk on this thread: from now on the records this thread
    /// runs for this script share `chunk_timeout_ms` of CPU time, and once it
    /// is spent they fail with `SCRIPT_TIMEOUT` until the next `begin_chunk`.
    /// Without a `begin_chunk`, only the per-record limit applies.
    pub fn begin_chunk(&self) {
        with_slot(&self.inner, |slot| slot.chunk_used = Some(Duration::ZERO));
    }

    fn run<T>(
        &self,
        call: impl FnOnce(&mut Engine, Duration, Budget) -> Run<T>,
    ) -> Result<T, ScriptError> {
        let inner = &self.inner;
        let limits = &inner.limits;
        let taken = with_slot(inner, |slot| (slot.engine.take(), slot.chunk_used));
        let Some((engine, chunk_used)) = taken else {
            return Err(failed(Failure::internal(
                "the script engine is busy on this thread (re-entrant call)",
            )));
        };
        let chunk = Duration::from_millis(limits.chunk_timeout_ms);
        let mut chunk_left = match chunk_used {
            Some(used) => {
                let left = chunk.saturating_sub(used);
                if left.is_zero() {
                    return Err(failed(Failure::chunk_spent(limits)));
                }
                Some(left)
            }
            None => None,
        };
        let mut engine = match engine {
            Some(engine) => engine,
            None => {
                // Starting an engine runs the script's top level again: in a
                // chunk it comes out of the chunk's budget, so a script that
                // keeps hitting limits cannot make every record expensive.
                let source = Source {
                    text: &inner.source,
                    kind: inner.kind,
                };
                // Measured in CPU time, as records are (two clock reads:
                // starts are rare).
                let cpu_before = thread_cpu();
                let outcome = Engine::start(
                    &source,
                    limits,
                    &inner.env,
                    chunk_left.unwrap_or(chunk),
                    false,
                );
                let mut spent = thread_cpu().saturating_sub(cpu_before);
                let timed_out =
                    matches!(&outcome, Err(StartError::Failed(f)) if f.limit == Some("timeout"));
                let mut chunk_ran_out = false;
                if let Some(left) = &mut chunk_left {
                    // The startup clock was given what was left of the
                    // chunk: when it fired, all of that is spent.
                    if timed_out {
                        spent = spent.max(*left);
                    }
                    chunk_ran_out = spent >= *left;
                    *left = left.saturating_sub(spent);
                    with_slot(inner, |slot| {
                        if let Some(used) = &mut slot.chunk_used {
                            *used += spent;
                        }
                    });
                }
                match outcome {
                    Ok(engine) => engine,
                    // The chunk's budget ran out while the engine started
                    // again: that is the chunk's timeout, not a script
                    // error (the same top level started fine before).
                    Err(StartError::Failed(_)) if timed_out && chunk_ran_out => {
                        return Err(failed(Failure::chunk_spent(limits)));
                    }
                    Err(StartError::Failed(f)) => return Err(failed(f)),
                    Err(StartError::Problems(_)) if chunk_ran_out => {
                        return Err(failed(Failure::chunk_spent(limits)));
                    }
                    Err(StartError::Problems(p)) => {
                        let message = p
                            .first()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "the script failed to start".to_owned());
                        return Err(failed(Failure::internal(&message)));
                    }
                }
            }
        };
        let record_limit = Duration::from_millis(limits.timeout_ms);
        let (limit, budget) = match chunk_left {
            Some(left) if left.is_zero() => {
                with_slot(inner, |slot| {
                    if slot.engine.is_none() {
                        slot.engine = Some(engine);
                    }
                });
                return Err(failed(Failure::chunk_spent(limits)));
            }
            Some(left) if left < record_limit => (left, Budget::Chunk),
            _ => (record_limit, Budget::Record),
        };
        let Run { result, used } = call(&mut engine, limit, budget);
        let keep = match &result {
            Ok(_) => true,
            Err(f) => !f.discard,
        };
        with_slot(inner, |slot| {
            if let Some(chunk) = &mut slot.chunk_used {
                *chunk += used;
            }
            if keep && slot.engine.is_none() {
                slot.engine = Some(engine);
            }
        });
        result.map_err(failed)
    }
}

fn wrong_kind(method: &str, what: &str) -> ScriptError {
    ScriptError::new(
        ErrorCode::ScriptError,
        format!("Script::{method} called on {what}"),
    )
}

/// Counts a failure in the metrics and returns its error.
fn failed(failure: Failure) -> ScriptError {
    if let Some(limit) = failure.limit {
        metrics::counter!("sluice_script_limit_hits_total", "limit" => limit).increment(1);
    }
    metrics::counter!("sluice_script_errors_total", "code" => failure.error.code.as_str())
        .increment(1);
    failure.error
}

/// Most scripts one thread keeps engine instances for; past it the least
/// recently started is dropped.
const MAX_ENGINES_PER_THREAD: usize = 64;

/// One script's state on one thread.
struct Slot {
    id: u64,
    owner: Weak<Inner>,
    engine: Option<Engine>,
    chunk_used: Option<Duration>,
}

thread_local! {
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's slot for `inner`, creating it (and pruning the
/// slots of dropped scripts) if needed. `None` on re-entrant use.
fn with_slot<R>(inner: &Arc<Inner>, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
    SLOTS.with(|slots| {
        let mut slots = slots.try_borrow_mut().ok()?;
        if let Some(slot) = slots.iter_mut().find(|s| s.id == inner.id) {
            return Some(f(slot));
        }
        // Engines of dropped scripts are freed here, on the thread that
        // owns them.
        let dead: Vec<Slot> = {
            let (live, dead): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut *slots)
                .into_iter()
                .partition(|s| s.owner.strong_count() > 0);
            *slots = live;
            dead
        };
        if slots.len() >= MAX_ENGINES_PER_THREAD {
            slots.remove(0);
        }
        slots.push(Slot {
            id: inner.id,
            owner: Arc::downgrade(inner),
            engine: None,
            chunk_used: None,
        });
        let out = slots.last_mut().map(f);
        drop(slots);
        drop(dead);
        out
    })
}

#[cfg(test)]
mod tests;
