//! The bridge between processors and the JavaScript sandbox (`sluice-js`).
//!
//! Three processors run user JavaScript: `script` (a `transform`
//! function), `filter` (a boolean expression) and `map` (`eval`, a value
//! expression). They share this adapter so that limits are decoded and
//! reported the same way everywhere (at `/limits/<field>` of the
//! processor), compile problems carry line and column, the script sees the
//! same `ctx` (pipeline identity, tenant hash key, `ctx.redact` through the
//! PII engine), and script failures keep the sandbox's error codes.

use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_core::{ErrorCode, Problem, ProcessError, RecordContext};
use sluice_js::{CallContext, Script, ScriptEnv, ScriptError, ScriptKind, ScriptLimits};

use crate::BuildContext;

/// Decoded limits and the environment every script of one processor gets.
pub(crate) struct ScriptSetup {
    limits: ScriptLimits,
    env: ScriptEnv,
}

impl ScriptSetup {
    /// Decode `limits` (problems under `/limits`) and prepare the env.
    pub(crate) fn new(
        limits: Option<&Map<String, Value>>,
        ctx: &BuildContext,
    ) -> Result<ScriptSetup, Vec<Problem>> {
        let limits = match limits {
            None => ScriptLimits::default(),
            Some(map) => {
                let value = Value::Object(map.clone());
                let decoded: ScriptLimits = serde_json::from_value(value)
                    .map_err(|e| vec![crate::serde_problem("/limits", &e)])?;
                let problems: Vec<Problem> = decoded
                    .problems()
                    .into_iter()
                    .map(|(field, message)| Problem::new(format!("/limits/{field}"), message))
                    .collect();
                if !problems.is_empty() {
                    return Err(problems);
                }
                decoded
            }
        };
        let env = ScriptEnv {
            tenant_id: ctx.tenant_id,
            pipeline_id: ctx.pipeline_id,
            pipeline_name: ctx.pipeline_name.clone(),
            pipeline_version: ctx.config_version,
            hash_key: Arc::clone(&ctx.hash_key),
            // `ctx.redact` and `ctx.log` use the default detectors with
            // `mask`, whatever the pipeline's own `redact` step says.
            redact: Some(Arc::new(|text: &str| {
                sluice_pii::default_redactor()
                    .redact_text(text)
                    .into_owned()
            })),
        };
        Ok(ScriptSetup { limits, env })
    }

    fn compile(&self, source: &str, kind: ScriptKind) -> Result<Script, Vec<Problem>> {
        Script::compile(source, kind, self.limits.clone(), self.env.clone()).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| Problem::new("", p.to_string()))
                .collect()
        })
    }

    /// A value expression; problems are relative to the expression's field.
    pub(crate) fn expression(&self, source: &str) -> Result<Expression, Vec<Problem>> {
        self.compile(source, ScriptKind::Expression)
            .map(|script| Expression { script })
    }

    /// A `transform` script; problems are relative to the source field.
    pub(crate) fn transform(&self, source: &str) -> Result<Transform, Vec<Problem>> {
        self.compile(source, ScriptKind::Transform)
            .map(|script| Transform { script })
    }
}

fn call(ctx: &RecordContext<'_>) -> CallContext {
    CallContext {
        batch_id: ctx.batch_id,
        record_index: ctx.record_index,
    }
}

fn failed(e: ScriptError) -> ProcessError {
    let code = match e.code {
        c @ (ErrorCode::ScriptError
        | ErrorCode::ScriptTimeout
        | ErrorCode::ScriptMemoryLimit
        | ErrorCode::ScriptOutputTooLarge) => c,
        _ => ErrorCode::ScriptError,
    };
    ProcessError::new(code, e.message)
}

/// A compiled JavaScript expression over `record` (alias `r`).
pub(crate) struct Expression {
    script: Script,
}

impl Expression {
    pub(crate) fn eval(
        &self,
        record: &Value,
        ctx: &RecordContext<'_>,
    ) -> Result<Value, ProcessError> {
        self.script.eval(record, &call(ctx)).map_err(failed)
    }

    pub(crate) fn begin_part(&self) {
        self.script.begin_chunk();
    }
}

/// A compiled `transform(record, ctx)` script.
pub(crate) struct Transform {
    script: Script,
}

impl Transform {
    /// Run the script; returns the emitted records and how many `ctx.log`
    /// lines it wrote (their content is not kept here).
    pub(crate) fn run(
        &self,
        record: Value,
        ctx: &RecordContext<'_>,
    ) -> Result<(Vec<Value>, usize), ProcessError> {
        let output = self.script.transform(record, &call(ctx)).map_err(failed)?;
        Ok((output.records, output.logs.len()))
    }

    pub(crate) fn begin_part(&self) {
        self.script.begin_chunk();
    }
}
