//! `script`: a sandboxed JavaScript `transform(record, ctx)` per record.
//!
//! The sandbox, its limits and the engine pool are `sluice-js`'s business;
//! this processor compiles the script once per config version, starts a
//! chunk on every part (so the per-chunk CPU budget covers one part on one
//! thread), and maps the outcome onto the processor contract: a record, an
//! array (split), or `null` (drop). `ctx.log` lines are not stored yet;
//! only their number is traced, never their content.

use sluice_config::ScriptSpec;
use sluice_core::{Problem, ProcessError, Processor, Record, RecordContext};

use crate::script_engine::{ScriptSetup, Transform};
use crate::{BuildContext, Stage};

pub(crate) struct ScriptProcessor {
    transform: Transform,
}

pub(crate) fn build(
    spec: &ScriptSpec,
    ctx: &BuildContext,
) -> Result<ScriptProcessor, Vec<Problem>> {
    let setup = ScriptSetup::new(spec.limits.as_ref(), ctx)?;
    let transform = setup.transform(&spec.source).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| p.under("/source"))
            .collect::<Vec<_>>()
    })?;
    Ok(ScriptProcessor { transform })
}

impl Processor for ScriptProcessor {
    fn type_name(&self) -> &'static str {
        "script"
    }

    fn process(
        &self,
        record: Record,
        ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError> {
        let (records, log_lines) = self.transform.run(record, ctx)?;
        if log_lines > 0 {
            tracing::debug!(
                pipeline_id = %ctx.pipeline_id,
                batch_id = %ctx.batch_id,
                record_index = ctx.record_index,
                log_lines,
                "script wrote log lines"
            );
        }
        out.extend(records);
        Ok(())
    }
}

impl Stage for ScriptProcessor {
    fn begin_part(&self) {
        self.transform.begin_part();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::{build_ctx, ctx};
    use serde_json::{Value, json};
    use sluice_core::ErrorCode;

    fn script(source: &str) -> Result<ScriptProcessor, Vec<Problem>> {
        build(
            &ScriptSpec {
                source: source.into(),
                limits: None,
            },
            &build_ctx(),
        )
    }

    fn run(p: &ScriptProcessor, r: Value) -> Result<Vec<Value>, ProcessError> {
        p.begin_part();
        let mut out = Vec::new();
        p.process(r, &ctx(3), &mut out).map(|()| out)
    }

    #[test]
    fn returns_change_drop_and_split() {
        let p = script(
            "function transform(r, ctx) {
               if (r.drop) return null;
               if (r.split) return [{a: 1}, {a: 2}];
               r.index = ctx.batch.index;
               return r;
             }",
        )
        .map_err(|p| format!("{p:?}"))
        .unwrap();
        assert_eq!(
            run(&p, json!({"x": 1})).unwrap(),
            vec![json!({"x": 1, "index": 3})]
        );
        assert!(run(&p, json!({"drop": true})).unwrap().is_empty());
        assert_eq!(
            run(&p, json!({"split": true})).unwrap(),
            vec![json!({"a": 1}), json!({"a": 2})]
        );
    }

    #[test]
    fn a_throwing_script_fails_the_record() {
        let p = script("function transform(r) { throw new Error('nope'); }")
            .map_err(|p| format!("{p:?}"))
            .unwrap();
        let err = run(&p, json!({})).unwrap_err();
        assert_eq!(err.code, ErrorCode::ScriptError);
        assert!(err.message.contains("nope"), "{}", err.message);
    }

    #[test]
    fn problems_carry_line_and_column_under_source() {
        let problems = script("function transform(r) {\n  return r +;\n}")
            .err()
            .unwrap();
        assert_eq!(problems[0].path, "/source");
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
        let limits = build(
            &ScriptSpec {
                source: "function transform(r) { return r; }".into(),
                limits: Some(serde_json::from_value(json!({"timeout_ms": 0})).unwrap()),
            },
            &build_ctx(),
        )
        .err()
        .unwrap();
        assert_eq!(limits[0].path, "/limits/timeout_ms");
        let unknown = build(
            &ScriptSpec {
                source: "function transform(r) { return r; }".into(),
                limits: Some(serde_json::from_value(json!({"timeout": 5})).unwrap()),
            },
            &build_ctx(),
        )
        .err()
        .unwrap();
        assert_eq!(unknown[0].path, "/limits/timeout");
    }
}
