//! `filter`: keep the records that match a condition, drop the rest.
//!
//! The condition is either declarative (comparisons on fields by JSON
//! Pointer, combined with `and` / `or` / `not`) or a JavaScript expression
//! run in the script sandbox. The declarative form is compiled into a small
//! tree at build time: pointers parsed, regexes compiled once with a size
//! limit, numeric operands pre-converted. Evaluating it never fails: a
//! missing field, or a field of a type the op cannot compare, makes that
//! comparison false (SQL's NULL rule; `ne` is false too), so a filter
//! never turns an odd record into an error. Only the expression form can
//! fail a record, with the script's error code.

use std::cmp::Ordering;

use regex::Regex;
use serde_json::Value;
use sluice_config::{CompareOp, Condition, FilterSpec};
use sluice_core::{Problem, ProcessError, Processor, Record, RecordContext};

use crate::pointer::{Pointer, json_eq};
use crate::script_engine::{Expression, ScriptSetup};
use crate::{BuildContext, Stage};

/// Regexes compile to at most this many bytes (matches the config check).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Eq(Pointer, Value),
    Ne(Pointer, Value),
    Order(Pointer, CompareOp, Value),
    In(Pointer, Vec<Value>),
    Exists(Pointer, bool),
    Regex(Pointer, Regex),
}

enum Matcher {
    Condition(Cond),
    Expression(Expression),
}

pub(crate) struct FilterProcessor {
    matcher: Matcher,
}

pub(crate) fn build(
    spec: &FilterSpec,
    ctx: &BuildContext,
) -> Result<FilterProcessor, Vec<Problem>> {
    match (&spec.condition, &spec.expression) {
        (Some(condition), None) => {
            let mut problems = Vec::new();
            let cond = compile(condition, "/condition", &mut problems);
            match cond {
                Some(cond) if problems.is_empty() => Ok(FilterProcessor {
                    matcher: Matcher::Condition(cond),
                }),
                _ => Err(problems),
            }
        }
        (None, Some(source)) => {
            let setup = ScriptSetup::new(spec.limits.as_ref(), ctx)?;
            let expression = setup.expression(source).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|p| p.under("/expression"))
                    .collect::<Vec<_>>()
            })?;
            Ok(FilterProcessor {
                matcher: Matcher::Expression(expression),
            })
        }
        _ => Err(vec![Problem::new(
            "",
            "exactly one of `condition` and `expression` is required",
        )]),
    }
}

fn compile(c: &Condition, at: &str, problems: &mut Vec<Problem>) -> Option<Cond> {
    match c {
        Condition::And { and } => compile_all(and, &format!("{at}/and"), problems).map(Cond::And),
        Condition::Or { or } => compile_all(or, &format!("{at}/or"), problems).map(Cond::Or),
        Condition::Not { not } => {
            compile(not, &format!("{at}/not"), problems).map(|c| Cond::Not(Box::new(c)))
        }
        Condition::Compare { path, op, value } => {
            let ptr = match Pointer::parse(path) {
                Ok(p) => p,
                Err(message) => {
                    problems.push(Problem::new(format!("{at}/path"), message));
                    return None;
                }
            };
            let value_at = format!("{at}/value");
            let mut bad = |message: &str| {
                problems.push(Problem::new(value_at.clone(), message));
                None
            };
            match (op, value) {
                (CompareOp::Exists, None) => Some(Cond::Exists(ptr, true)),
                (CompareOp::Exists, Some(Value::Bool(b))) => Some(Cond::Exists(ptr, *b)),
                (CompareOp::Exists, Some(_)) => bad("`exists` takes true or false"),
                (_, None) => bad("required for this op"),
                (CompareOp::Eq, Some(v)) => Some(Cond::Eq(ptr, v.clone())),
                (CompareOp::Ne, Some(v)) => Some(Cond::Ne(ptr, v.clone())),
                (CompareOp::In, Some(Value::Array(items))) => Some(Cond::In(ptr, items.clone())),
                (CompareOp::In, Some(_)) => bad("`in` takes an array"),
                (CompareOp::Regex, Some(Value::String(re))) => {
                    match regex::RegexBuilder::new(re)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                    {
                        Ok(re) => Some(Cond::Regex(ptr, re)),
                        Err(e) => bad(&format!("invalid regex: {e}")),
                    }
                }
                (CompareOp::Regex, Some(_)) => bad("`regex` takes a string"),
                (
                    op @ (CompareOp::Lt | CompareOp::Lte | CompareOp::Gt | CompareOp::Gte),
                    Some(v),
                ) => {
                    if v.is_number() || v.is_string() {
                        Some(Cond::Order(ptr, *op, v.clone()))
                    } else {
                        bad("ordering compares numbers or strings")
                    }
                }
            }
        }
    }
}

fn compile_all(items: &[Condition], at: &str, problems: &mut Vec<Problem>) -> Option<Vec<Cond>> {
    if items.is_empty() {
        problems.push(Problem::new(at, "must not be empty"));
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut complete = true;
    for (i, c) in items.iter().enumerate() {
        // Compile every child, so that each bad one is reported.
        match compile(c, &format!("{at}/{i}"), problems) {
            Some(c) => out.push(c),
            None => complete = false,
        }
    }
    complete.then_some(out)
}

impl Cond {
    fn matches(&self, r: &Value) -> bool {
        match self {
            Cond::And(all) => all.iter().all(|c| c.matches(r)),
            Cond::Or(any) => any.iter().any(|c| c.matches(r)),
            Cond::Not(c) => !c.matches(r),
            Cond::Eq(p, v) => p.get(r).is_some_and(|x| json_eq(x, v)),
            Cond::Ne(p, v) => p.get(r).is_some_and(|x| !json_eq(x, v)),
            Cond::Order(p, op, v) => p
                .get(r)
                .and_then(|x| order(x, v))
                .is_some_and(|o| match op {
                    CompareOp::Lt => o == Ordering::Less,
                    CompareOp::Lte => o != Ordering::Greater,
                    CompareOp::Gt => o == Ordering::Greater,
                    CompareOp::Gte => o != Ordering::Less,
                    _ => false,
                }),
            Cond::In(p, items) => p
                .get(r)
                .is_some_and(|x| items.iter().any(|v| json_eq(x, v))),
            Cond::Exists(p, want) => p.get(r).is_some() == *want,
            Cond::Regex(p, re) => p
                .get(r)
                .and_then(Value::as_str)
                .is_some_and(|s| re.is_match(s)),
        }
    }
}

/// Numbers numerically, strings by bytes; other pairs do not compare.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                Some(x.cmp(&y))
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                Some(x.cmp(&y))
            } else {
                x.as_f64()?.partial_cmp(&y.as_f64()?)
            }
        }
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        _ => None,
    }
}

/// JavaScript truthiness of an expression's result.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

impl Processor for FilterProcessor {
    fn type_name(&self) -> &'static str {
        "filter"
    }

    fn process(
        &self,
        record: Record,
        ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError> {
        let keep = match &self.matcher {
            Matcher::Condition(c) => c.matches(&record),
            Matcher::Expression(e) => truthy(&e.eval(&record, ctx)?),
        };
        if keep {
            out.push(record);
        }
        Ok(())
    }
}

impl Stage for FilterProcessor {
    fn begin_part(&self) {
        if let Matcher::Expression(e) = &self.matcher {
            e.begin_part();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::{build_ctx, ctx};
    use serde_json::json;

    fn filter(spec: Value) -> FilterProcessor {
        let spec: FilterSpec = serde_json::from_value(spec).unwrap();
        build(&spec, &build_ctx())
            .map_err(|p| format!("{p:?}"))
            .unwrap()
    }

    fn keeps(condition: Value, record: Value) -> bool {
        let p = filter(json!({ "condition": condition }));
        let mut out = Vec::new();
        p.process(record.clone(), &ctx(0), &mut out).unwrap();
        match out.as_slice() {
            [] => false,
            [r] => {
                assert_eq!(r, &record, "a filter never changes a record");
                true
            }
            _ => unreachable!("a filter emits at most one record"),
        }
    }

    #[test]
    fn equality_is_numeric_for_numbers() {
        let r = json!({"n": 1, "s": "a"});
        assert!(keeps(
            json!({"path": "/n", "op": "eq", "value": 1.0}),
            r.clone()
        ));
        assert!(!keeps(
            json!({"path": "/n", "op": "eq", "value": "1"}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/s", "op": "ne", "value": "b"}),
            r.clone()
        ));
        assert!(!keeps(json!({"path": "/s", "op": "ne", "value": "a"}), r));
    }

    #[test]
    fn ordering_numbers_and_strings() {
        let r = json!({"n": 10, "f": 2.5, "s": "beta", "big": 18446744073709551615u64});
        assert!(keeps(
            json!({"path": "/n", "op": "gt", "value": 9}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/n", "op": "gte", "value": 10}),
            r.clone()
        ));
        assert!(!keeps(
            json!({"path": "/n", "op": "lt", "value": 10}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/n", "op": "lte", "value": 10.0}),
            r.clone()
        ));
        // 10 > 9 numerically, though "10" < "9" as text.
        assert!(keeps(
            json!({"path": "/n", "op": "gt", "value": 9.5}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/f", "op": "lt", "value": 3}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/s", "op": "gt", "value": "alpha"}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/s", "op": "lt", "value": "gamma"}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/big", "op": "gt", "value": 18446744073709551614u64}),
            r.clone()
        ));
        // Mixed types never compare.
        assert!(!keeps(
            json!({"path": "/s", "op": "gt", "value": 1}),
            r.clone()
        ));
        assert!(!keeps(json!({"path": "/s", "op": "lte", "value": 1}), r));
    }

    #[test]
    fn missing_fields_make_comparisons_false() {
        let r = json!({"a": 1});
        for op in ["eq", "ne", "lt", "lte", "gt", "gte"] {
            assert!(
                !keeps(json!({"path": "/zz", "op": op, "value": 1}), r.clone()),
                "{op}"
            );
        }
        assert!(!keeps(
            json!({"path": "/zz", "op": "in", "value": [1]}),
            r.clone()
        ));
        assert!(!keeps(
            json!({"path": "/zz", "op": "regex", "value": "."}),
            r.clone()
        ));
        assert!(keeps(
            json!({"not": {"path": "/zz", "op": "eq", "value": 1}}),
            r
        ));
    }

    #[test]
    fn in_exists_regex() {
        let r = json!({"level": "warn", "n": null, "msg": "user 42 logged in"});
        assert!(keeps(
            json!({"path": "/level", "op": "in", "value": ["error", "warn"]}),
            r.clone()
        ));
        assert!(!keeps(
            json!({"path": "/level", "op": "in", "value": ["error"]}),
            r.clone()
        ));
        assert!(keeps(json!({"path": "/n", "op": "exists"}), r.clone()));
        assert!(keeps(
            json!({"path": "/x", "op": "exists", "value": false}),
            r.clone()
        ));
        assert!(!keeps(
            json!({"path": "/x", "op": "exists", "value": true}),
            r.clone()
        ));
        assert!(keeps(
            json!({"path": "/msg", "op": "regex", "value": "^user \\d+ "}),
            r.clone()
        ));
        assert!(!keeps(
            json!({"path": "/n", "op": "regex", "value": ".*"}),
            r
        ));
    }

    #[test]
    fn and_or_not() {
        let r = json!({"a": 1, "b": 2});
        let a1 = json!({"path": "/a", "op": "eq", "value": 1});
        let b3 = json!({"path": "/b", "op": "eq", "value": 3});
        assert!(!keeps(json!({"and": [a1.clone(), b3.clone()]}), r.clone()));
        assert!(keeps(json!({"or": [a1.clone(), b3.clone()]}), r.clone()));
        assert!(keeps(json!({"and": [a1, {"not": b3}]}), r));
    }

    #[test]
    fn problems_point_into_the_condition() {
        let spec: FilterSpec = serde_json::from_value(json!({"condition": {"and": [
            {"path": "/a", "op": "eq", "value": 1},
            {"path": "/b", "op": "regex", "value": "(unclosed"},
            {"path": "/c", "op": "in", "value": 3}
        ]}}))
        .unwrap();
        let problems = build(&spec, &build_ctx()).err().unwrap();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["/condition/and/1/value", "/condition/and/2/value"]);
        assert!(problems[0].message.contains("regex"));
    }

    #[test]
    fn truthiness_follows_javascript() {
        for (v, t) in [
            (json!(null), false),
            (json!(0), false),
            (json!(0.0), false),
            (json!(""), false),
            (json!(false), false),
            (json!(1), true),
            (json!("0"), true),
            (json!([]), true),
            (json!({}), true),
        ] {
            assert_eq!(truthy(&v), t, "{v}");
        }
    }
}
