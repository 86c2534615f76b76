//! `map`: declarative field edits by JSON Pointer.
//!
//! The ops are RFC 6902 (JSON Patch) `add`, `remove`, `replace`, `move`,
//! `copy` and `test`, plus Sluice's `set`, `upper`, `lower`, `cast`,
//! `default` and `eval`. This is the hottest processor in most pipelines,
//! so everything that can be decided once is decided at build time: every
//! pointer is parsed into tokens, every constant value is owned by the op,
//! and an `eval` expression is compiled by the script engine. Applying an
//! op is then a walk of map lookups and an in-place edit; nothing is
//! re-parsed per record.
//!
//! Ops apply in order to the record in place. When one fails, the record
//! fails with a stable code (`PATH_NOT_FOUND`, `TEST_FAILED`,
//! `TYPE_MISMATCH`, or the script's code for `eval`) and a message that
//! names the op and path, never a value; the pipeline then captures the
//! record as it was submitted, so a half-applied edit is never seen.

use std::borrow::Cow;

use serde_json::{Number, Value};
use sluice_config::{CastType, MapOp, MapSpec};
use sluice_core::{ErrorCode, Problem, ProcessError, Processor, Record, RecordContext};

use crate::lines::{self, Member};
use crate::pointer::{Pointer, PointerError, json_eq};
use crate::script_engine::{Expression, ScriptSetup};
use crate::{BuildContext, Stage};

enum Op {
    Add {
        path: Pointer,
        value: Value,
    },
    Remove {
        path: Pointer,
        optional: bool,
    },
    Replace {
        path: Pointer,
        value: Value,
        optional: bool,
    },
    Move {
        from: Pointer,
        path: Pointer,
        optional: bool,
    },
    Copy {
        from: Pointer,
        path: Pointer,
        optional: bool,
    },
    Test {
        path: Pointer,
        value: Value,
    },
    Set {
        path: Pointer,
        value: Value,
    },
    Upper {
        path: Pointer,
        optional: bool,
    },
    Lower {
        path: Pointer,
        optional: bool,
    },
    Cast {
        path: Pointer,
        to: CastType,
        optional: bool,
    },
    Default {
        path: Pointer,
        value: Value,
    },
    Eval {
        path: Pointer,
        expression: Expression,
    },
}

pub(crate) struct MapProcessor {
    ops: Vec<(Op, &'static str)>,
    has_eval: bool,
    /// The ops for records edited as lines, when every op names a
    /// top-level member and none is `eval` or `cast`.
    lines: Option<Vec<LineOp>>,
}

/// A `map` op on a top-level member of a record edited as its line
/// (see `crate::lines`). Values are JSON text, written once at build time.
enum LineOp {
    /// `add` and `set`.
    Put {
        key: String,
        json: String,
    },
    Remove {
        key: String,
        optional: bool,
    },
    Replace {
        key: String,
        json: String,
        optional: bool,
    },
    Move {
        from: String,
        to: String,
        optional: bool,
    },
    Copy {
        from: String,
        to: String,
        optional: bool,
    },
    Test {
        key: String,
        value: Value,
    },
    Case {
        key: String,
        optional: bool,
        upper: bool,
    },
    Default {
        key: String,
        json: String,
    },
}

/// The line form of `ops`, or `None` when one of them needs the `Value`.
fn line_ops(ops: &[(Op, &'static str)]) -> Option<Vec<LineOp>> {
    let key = |p: &Pointer| p.top_key().map(str::to_owned);
    let json = |v: &Value| serde_json::to_string(v).ok();
    ops.iter()
        .map(|(op, _)| {
            Some(match op {
                Op::Add { path, value } | Op::Set { path, value } => LineOp::Put {
                    key: key(path)?,
                    json: json(value)?,
                },
                Op::Remove { path, optional } => LineOp::Remove {
                    key: key(path)?,
                    optional: *optional,
                },
                Op::Replace {
                    path,
                    value,
                    optional,
                } => LineOp::Replace {
                    key: key(path)?,
                    json: json(value)?,
                    optional: *optional,
                },
                Op::Move {
                    from,
                    path,
                    optional,
                } => LineOp::Move {
                    from: key(from)?,
                    to: key(path)?,
                    optional: *optional,
                },
                Op::Copy {
                    from,
                    path,
                    optional,
                } => LineOp::Copy {
                    from: key(from)?,
                    to: key(path)?,
                    optional: *optional,
                },
                Op::Test { path, value } => LineOp::Test {
                    key: key(path)?,
                    value: value.clone(),
                },
                Op::Upper { path, optional } => LineOp::Case {
                    key: key(path)?,
                    optional: *optional,
                    upper: true,
                },
                Op::Lower { path, optional } => LineOp::Case {
                    key: key(path)?,
                    optional: *optional,
                    upper: false,
                },
                Op::Default { path, value } => LineOp::Default {
                    key: key(path)?,
                    json: json(value)?,
                },
                Op::Cast { .. } | Op::Eval { .. } => return None,
            })
        })
        .collect()
}

/// Sets member `key` to `json`, in place when it exists, else last.
fn put<'a>(members: &mut Vec<Member<'a>>, key: &'a str, json: Cow<'a, str>) {
    match members.iter_mut().find(|m| m.key == key) {
        Some(m) => m.value = json,
        None => members.push(Member {
            key: Cow::Borrowed(key),
            value: json,
        }),
    }
}

/// Applies one op to the members; `None` when the `Value` path must take
/// the record (the op fails there, or the line path cannot do it).
fn apply_line_op<'a>(op: &'a LineOp, members: &mut Vec<Member<'a>>) -> Option<()> {
    let find = |members: &[Member<'a>], key: &str| members.iter().position(|m| m.key == key);
    let missing = |optional: bool| optional.then_some(());
    match op {
        LineOp::Put { key, json } => put(members, key, Cow::Borrowed(json)),
        LineOp::Remove { key, optional } => match find(members, key) {
            Some(i) => drop(members.remove(i)),
            None => return missing(*optional),
        },
        LineOp::Replace {
            key,
            json,
            optional,
        } => match find(members, key) {
            Some(i) => members[i].value = Cow::Borrowed(json),
            None => return missing(*optional),
        },
        LineOp::Move { from, to, optional } => match find(members, from) {
            Some(_) if from == to => {}
            Some(i) => {
                let value = members.remove(i).value;
                put(members, to, value);
            }
            None => return missing(*optional),
        },
        LineOp::Copy { from, to, optional } => match find(members, from) {
            Some(i) => {
                let value = members[i].value.clone();
                put(members, to, value);
            }
            None => return missing(*optional),
        },
        LineOp::Test { key, value } => {
            let i = find(members, key)?;
            let got: Value = serde_json::from_str(&members[i].value).ok()?;
            if !json_eq(&got, value) {
                return None;
            }
        }
        LineOp::Case {
            key,
            optional,
            upper,
        } => match find(members, key) {
            Some(i) => {
                let s = lines::string_value(&members[i].value)?;
                let new = if *upper {
                    s.to_uppercase()
                } else {
                    s.to_lowercase()
                };
                if new != *s {
                    let mut out = Vec::with_capacity(new.len() + 2);
                    lines::write_str(&mut out, &new);
                    members[i].value = Cow::Owned(String::from_utf8(out).ok()?);
                }
            }
            None => return missing(*optional),
        },
        LineOp::Default { key, json } => match find(members, key) {
            Some(i) if members[i].value != "null" => {}
            _ => put(members, key, Cow::Borrowed(json)),
        },
    }
    Some(())
}

pub(crate) fn build(spec: &MapSpec, ctx: &BuildContext) -> Result<MapProcessor, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut ops = Vec::with_capacity(spec.ops.len());
    let needs_engine = spec.ops.iter().any(|op| matches!(op, MapOp::Eval { .. }));
    let setup = if needs_engine {
        match ScriptSetup::new(spec.limits.as_ref(), ctx) {
            Ok(s) => Some(s),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        }
    } else {
        None
    };
    for (j, op) in spec.ops.iter().enumerate() {
        let at = format!("/ops/{j}");
        let mut ptr = |text: &str, field: &str| match Pointer::parse(text) {
            Ok(p) => Some(p),
            Err(message) => {
                problems.push(Problem::new(format!("{at}/{field}"), message));
                None
            }
        };
        let built = match op {
            MapOp::Add { path, value } => ptr(path, "path").map(|path| Op::Add {
                path,
                value: value.clone(),
            }),
            MapOp::Remove { path, optional } => ptr(path, "path").map(|path| Op::Remove {
                path,
                optional: *optional,
            }),
            MapOp::Replace {
                path,
                value,
                optional,
            } => ptr(path, "path").map(|path| Op::Replace {
                path,
                value: value.clone(),
                optional: *optional,
            }),
            MapOp::Move {
                from,
                path,
                optional,
            } => match (ptr(from, "from"), ptr(path, "path")) {
                (Some(from), Some(path)) => {
                    if from.is_proper_prefix_of(&path) {
                        problems.push(Problem::new(
                            format!("{at}/path"),
                            "cannot move a value into its own child",
                        ));
                        None
                    } else {
                        Some(Op::Move {
                            from,
                            path,
                            optional: *optional,
                        })
                    }
                }
                _ => None,
            },
            MapOp::Copy {
                from,
                path,
                optional,
            } => match (ptr(from, "from"), ptr(path, "path")) {
                (Some(from), Some(path)) => Some(Op::Copy {
                    from,
                    path,
                    optional: *optional,
                }),
                _ => None,
            },
            MapOp::Test { path, value } => ptr(path, "path").map(|path| Op::Test {
                path,
                value: value.clone(),
            }),
            MapOp::Set { path, value } => ptr(path, "path").map(|path| Op::Set {
                path,
                value: value.clone(),
            }),
            MapOp::Upper { path, optional } => ptr(path, "path").map(|path| Op::Upper {
                path,
                optional: *optional,
            }),
            MapOp::Lower { path, optional } => ptr(path, "path").map(|path| Op::Lower {
                path,
                optional: *optional,
            }),
            MapOp::Cast { path, to, optional } => ptr(path, "path").map(|path| Op::Cast {
                path,
                to: *to,
                optional: *optional,
            }),
            MapOp::Default { path, value } => ptr(path, "path").map(|path| Op::Default {
                path,
                value: value.clone(),
            }),
            MapOp::Eval { path, expression } => {
                let path = ptr(path, "path");
                let compiled = setup.as_ref().map(|s| {
                    s.expression(expression)
                        .map_err(|p| p.into_iter().map(|p| p.under(&format!("{at}/expression"))))
                });
                match (path, compiled) {
                    (Some(path), Some(Ok(expression))) => Some(Op::Eval { path, expression }),
                    (_, Some(Err(p))) => {
                        problems.extend(p);
                        None
                    }
                    _ => None,
                }
            }
        };
        if let Some(built) = built {
            ops.push((built, op_name(op)));
        }
    }
    if problems.is_empty() {
        Ok(MapProcessor {
            lines: line_ops(&ops),
            ops,
            has_eval: needs_engine,
        })
    } else {
        Err(problems)
    }
}

fn op_name(op: &MapOp) -> &'static str {
    match op {
        MapOp::Add { .. } => "add",
        MapOp::Remove { .. } => "remove",
        MapOp::Replace { .. } => "replace",
        MapOp::Move { .. } => "move",
        MapOp::Copy { .. } => "copy",
        MapOp::Test { .. } => "test",
        MapOp::Set { .. } => "set",
        MapOp::Upper { .. } => "upper",
        MapOp::Lower { .. } => "lower",
        MapOp::Cast { .. } => "cast",
        MapOp::Default { .. } => "default",
        MapOp::Eval { .. } => "eval",
    }
}

impl Processor for MapProcessor {
    fn type_name(&self) -> &'static str {
        "map"
    }

    fn process(
        &self,
        mut record: Record,
        ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError> {
        for (j, (op, name)) in self.ops.iter().enumerate() {
            apply(op, &mut record, ctx).map_err(|e| {
                ProcessError::new(e.code, format!("op {j} ({name}): {}", e.message))
            })?;
        }
        out.push(record);
        Ok(())
    }
}

impl Stage for MapProcessor {
    fn takes_lines(&self) -> bool {
        self.lines.is_some()
    }

    fn process_line(&self, line: &[u8], append: Option<(&str, &str)>, out: &mut Vec<u8>) -> bool {
        let Some(mut members) = lines::members(line) else {
            return false;
        };
        if !self.process_members(&mut members) {
            return false;
        }
        if let Some((key, _)) = append
            && members.iter().any(|m| m.key == key)
        {
            return false;
        }
        lines::write_object(&members, append, out);
        true
    }

    fn takes_members(&self) -> bool {
        self.lines.is_some()
    }

    fn process_members<'a>(&'a self, members: &mut Vec<Member<'a>>) -> bool {
        let Some(ops) = &self.lines else {
            return false;
        };
        ops.iter().all(|op| apply_line_op(op, members).is_some())
    }

    fn begin_part(&self) {
        if self.has_eval {
            for (op, _) in &self.ops {
                if let Op::Eval { expression, .. } = op {
                    expression.begin_part();
                }
            }
        }
    }
}

fn not_found(e: PointerError, p: &Pointer) -> ProcessError {
    ProcessError::new(ErrorCode::PathNotFound, e.message(p))
}

/// `Ok(())` when a missing path is allowed to be skipped.
fn missing(p: &Pointer, optional: bool) -> Result<(), ProcessError> {
    if optional {
        Ok(())
    } else {
        Err(not_found(PointerError::NotFound, p))
    }
}

fn apply(op: &Op, record: &mut Value, ctx: &RecordContext<'_>) -> Result<(), ProcessError> {
    match op {
        Op::Add { path, value } => path
            .add(record, value.clone())
            .map_err(|e| not_found(e, path)),
        Op::Remove { path, optional } => match path.remove(record) {
            Ok(_) => Ok(()),
            Err(_) => missing(path, *optional),
        },
        Op::Replace {
            path,
            value,
            optional,
        } => match path.get_mut(record) {
            Some(slot) => {
                *slot = value.clone();
                Ok(())
            }
            None => missing(path, *optional),
        },
        Op::Move {
            from,
            path,
            optional,
        } => {
            if from == path {
                return match from.get(record) {
                    Some(_) => Ok(()),
                    None => missing(from, *optional),
                };
            }
            match from.remove(record) {
                Ok(v) => path.add(record, v).map_err(|e| not_found(e, path)),
                Err(_) => missing(from, *optional),
            }
        }
        Op::Copy {
            from,
            path,
            optional,
        } => match from.get(record) {
            Some(v) => {
                let v = v.clone();
                path.add(record, v).map_err(|e| not_found(e, path))
            }
            None => missing(from, *optional),
        },
        Op::Test { path, value } => match path.get(record) {
            Some(v) if json_eq(v, value) => Ok(()),
            Some(_) => Err(ProcessError::new(
                ErrorCode::TestFailed,
                format!("value at `{}` is not the expected value", path.as_str()),
            )),
            None => Err(ProcessError::new(
                ErrorCode::TestFailed,
                format!("path `{}` does not exist", path.as_str()),
            )),
        },
        Op::Set { path, value } => path
            .set(record, value.clone())
            .map_err(|e| not_found(e, path)),
        Op::Upper { path, optional } => change_case(record, path, *optional, true),
        Op::Lower { path, optional } => change_case(record, path, *optional, false),
        Op::Cast { path, to, optional } => match path.get_mut(record) {
            Some(slot) => match cast(slot, *to) {
                Some(v) => {
                    *slot = v;
                    Ok(())
                }
                None => Err(ProcessError::new(
                    ErrorCode::TypeMismatch,
                    format!(
                        "cannot cast the {} at `{}` to {}",
                        type_of(slot),
                        path.as_str(),
                        cast_name(*to)
                    ),
                )),
            },
            None => missing(path, *optional),
        },
        Op::Default { path, value } => match path.get(record) {
            Some(v) if !v.is_null() => Ok(()),
            _ => path
                .set(record, value.clone())
                .map_err(|e| not_found(e, path)),
        },
        Op::Eval { path, expression } => {
            let v = expression.eval(record, ctx)?;
            path.set(record, v).map_err(|e| not_found(e, path))
        }
    }
}

fn change_case(
    record: &mut Value,
    path: &Pointer,
    optional: bool,
    upper: bool,
) -> Result<(), ProcessError> {
    match path.get_mut(record) {
        Some(Value::String(s)) => {
            if s.is_ascii() {
                if upper {
                    s.make_ascii_uppercase();
                } else {
                    s.make_ascii_lowercase();
                }
            } else if upper {
                *s = s.to_uppercase();
            } else {
                *s = s.to_lowercase();
            }
            Ok(())
        }
        Some(other) => Err(ProcessError::new(
            ErrorCode::TypeMismatch,
            format!(
                "expected a string at `{}`, found {}",
                path.as_str(),
                type_of(other)
            ),
        )),
        None => missing(path, optional),
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn cast_name(to: CastType) -> &'static str {
    match to {
        CastType::String => "string",
        CastType::Integer => "integer",
        CastType::Number => "number",
        CastType::Boolean => "boolean",
    }
}

/// The converted value, or `None` when the conversion is not defined
/// (documented in docs/pipelines.md).
fn cast(v: &Value, to: CastType) -> Option<Value> {
    match to {
        CastType::String => match v {
            Value::String(_) => Some(v.clone()),
            Value::Number(n) => Some(Value::String(n.to_string())),
            Value::Bool(b) => Some(Value::String(b.to_string())),
            _ => None,
        },
        CastType::Integer => match v {
            Value::Number(n) => integer_of_number(n),
            Value::String(s) => integer_of_str(s.trim()),
            Value::Bool(b) => Some(Value::from(u8::from(*b))),
            _ => None,
        },
        CastType::Number => match v {
            Value::Number(_) => Some(v.clone()),
            Value::String(s) => number_of_str(s.trim()),
            Value::Bool(b) => Some(Value::from(u8::from(*b))),
            _ => None,
        },
        CastType::Boolean => match v {
            Value::Bool(_) => Some(v.clone()),
            Value::Number(n) => Some(Value::Bool(n.as_f64().is_some_and(|f| f != 0.0))),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Some(Value::Bool(true)),
                "false" | "0" => Some(Value::Bool(false)),
                _ => None,
            },
            _ => None,
        },
    }
}

fn integer_of_number(n: &Number) -> Option<Value> {
    if n.is_i64() || n.is_u64() {
        return Some(Value::Number(n.clone()));
    }
    let f = n.as_f64()?;
    // Only integral values within the exactly representable range: a cast
    // never silently drops a fraction.
    if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
        #[allow(clippy::cast_possible_truncation)]
        return Some(Value::from(f as i64));
    }
    None
}

fn integer_of_str(s: &str) -> Option<Value> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(Value::from(u));
    }
    let f: f64 = s.parse().ok()?;
    integer_of_number(&Number::from_f64(f)?)
}

fn number_of_str(s: &str) -> Option<Value> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(Value::from(u));
    }
    let f: f64 = s.parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::{build_ctx, ctx};
    use serde_json::json;

    fn map(ops: Value) -> MapProcessor {
        let spec: MapSpec = serde_json::from_value(json!({ "ops": ops })).unwrap();
        build(&spec, &build_ctx())
            .map_err(|p| format!("{p:?}"))
            .unwrap()
    }

    fn run(ops: Value, record: Value) -> Result<Value, ProcessError> {
        let p = map(ops);
        let mut out = Vec::new();
        p.process(record, &ctx(0), &mut out)?;
        assert_eq!(out.len(), 1);
        Ok(out.pop().unwrap())
    }

    fn code(ops: Value, record: Value) -> ErrorCode {
        run(ops, record).unwrap_err().code
    }

    #[test]
    fn the_benchmark_ops() {
        let ops = json!([
            {"op": "remove", "path": "/debug"},
            {"op": "add", "path": "/pipeline", "value": "web"},
            {"op": "move", "from": "/level", "path": "/severity"},
            {"op": "upper", "path": "/service"}
        ]);
        let out = run(
            ops,
            json!({"debug": true, "level": "warn", "service": "api", "id": 1}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"pipeline": "web", "severity": "warn", "service": "API", "id": 1})
        );
    }

    #[test]
    fn add_supports_array_index_and_dash() {
        let ops = json!([
            {"op": "add", "path": "/tags/0", "value": "first"},
            {"op": "add", "path": "/tags/-", "value": "last"}
        ]);
        let out = run(ops, json!({"tags": ["mid"]})).unwrap();
        assert_eq!(out["tags"], json!(["first", "mid", "last"]));
        assert_eq!(
            code(
                json!([{"op": "add", "path": "/tags/5", "value": 1}]),
                json!({"tags": []})
            ),
            ErrorCode::PathNotFound
        );
        assert_eq!(
            code(
                json!([{"op": "add", "path": "/a/b", "value": 1}]),
                json!({})
            ),
            ErrorCode::PathNotFound
        );
    }

    #[test]
    fn missing_paths_fail_unless_optional() {
        for op in [
            json!({"op": "remove", "path": "/x"}),
            json!({"op": "replace", "path": "/x", "value": 1}),
            json!({"op": "move", "from": "/x", "path": "/y"}),
            json!({"op": "copy", "from": "/x", "path": "/y"}),
            json!({"op": "upper", "path": "/x"}),
            json!({"op": "lower", "path": "/x"}),
            json!({"op": "cast", "path": "/x", "to": "string"}),
        ] {
            let err = run(json!([op.clone()]), json!({"a": 1})).unwrap_err();
            assert_eq!(err.code, ErrorCode::PathNotFound, "{op}");
            assert!(err.message.contains("`/x`"), "{}", err.message);
            let mut optional = op.clone();
            optional["optional"] = json!(true);
            assert_eq!(
                run(json!([optional]), json!({"a": 1})).unwrap(),
                json!({"a": 1}),
                "{op}"
            );
        }
    }

    #[test]
    fn replace_move_copy() {
        let out = run(
            json!([
                {"op": "replace", "path": "/a", "value": [1]},
                {"op": "copy", "from": "/a", "path": "/b"},
                {"op": "move", "from": "/b/0", "path": "/c"},
                {"op": "rename", "from": "/c", "path": "/d"},
                {"op": "move", "from": "/d", "path": "/d"}
            ]),
            json!({"a": "x"}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": [1], "b": [], "d": 1}));
    }

    #[test]
    fn test_op() {
        let ok = run(
            json!([{"op": "test", "path": "/n", "value": 1.0}]),
            json!({"n": 1}),
        );
        assert!(ok.is_ok());
        assert_eq!(
            code(
                json!([{"op": "test", "path": "/n", "value": 2}]),
                json!({"n": 1})
            ),
            ErrorCode::TestFailed
        );
        assert_eq!(
            code(
                json!([{"op": "test", "path": "/m", "value": 2}]),
                json!({"n": 1})
            ),
            ErrorCode::TestFailed
        );
    }

    #[test]
    fn set_creates_parents_default_fills_missing_or_null() {
        let out = run(
            json!([
                {"op": "set", "path": "/a/b/c", "value": 1},
                {"op": "default", "path": "/d", "value": "x"},
                {"op": "default", "path": "/e", "value": "y"},
                {"op": "default", "path": "/f", "value": "z"},
                {"op": "default", "path": "/g/h", "value": 0}
            ]),
            json!({"e": null, "f": false}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"a": {"b": {"c": 1}}, "d": "x", "e": "y", "f": false, "g": {"h": 0}})
        );
    }

    #[test]
    fn case_ops() {
        let out = run(
            json!([{"op": "upper", "path": "/a"}, {"op": "lower", "path": "/b"}]),
            json!({"a": "straße", "b": "ÀB"}),
        )
        .unwrap();
        assert_eq!(out, json!({"a": "STRASSE", "b": "àb"}));
        let err = run(json!([{"op": "upper", "path": "/a"}]), json!({"a": 5})).unwrap_err();
        assert_eq!(err.code, ErrorCode::TypeMismatch);
        assert!(err.message.contains("number"), "{}", err.message);
    }

    #[test]
    fn casts() {
        let cases = [
            (json!(5), "string", Some(json!("5"))),
            (json!(true), "string", Some(json!("true"))),
            (json!(" 42 "), "integer", Some(json!(42))),
            (json!("3.0"), "integer", Some(json!(3))),
            (json!(3.0), "integer", Some(json!(3))),
            (json!(3.5), "integer", None),
            (json!("abc"), "integer", None),
            (json!("2.5"), "number", Some(json!(2.5))),
            (json!("7"), "number", Some(json!(7))),
            (json!(false), "number", Some(json!(0))),
            (json!("TRUE"), "boolean", Some(json!(true))),
            (json!("0"), "boolean", Some(json!(false))),
            (json!(0), "boolean", Some(json!(false))),
            (json!(2), "boolean", Some(json!(true))),
            (json!("maybe"), "boolean", None),
            (json!(null), "string", None),
            (json!({"a": 1}), "string", None),
            (json!([1]), "number", None),
        ];
        for (input, to, expected) in cases {
            let result = run(
                json!([{"op": "cast", "path": "/v", "to": to}]),
                json!({ "v": input }),
            );
            match expected {
                Some(v) => assert_eq!(result.unwrap()["v"], v, "{input} -> {to}"),
                None => assert_eq!(
                    result.unwrap_err().code,
                    ErrorCode::TypeMismatch,
                    "{input} -> {to}"
                ),
            }
        }
    }

    #[test]
    fn bad_pointers_are_build_problems_at_their_op() {
        let spec: MapSpec = serde_json::from_value(json!({"ops": [
            {"op": "remove", "path": "/ok"},
            {"op": "copy", "from": "nope", "path": "/x~9"}
        ]}))
        .unwrap();
        let problems = build(&spec, &build_ctx()).err().unwrap();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["/ops/1/from", "/ops/1/path"]);
    }

    #[test]
    fn failure_message_names_the_op_not_the_value() {
        let err = run(
            json!([{"op": "test", "path": "/email", "value": "x"}]),
            json!({"email": "ada@example.com"}),
        )
        .unwrap_err();
        assert!(err.message.starts_with("op 0 (test)"), "{}", err.message);
        assert!(!err.message.contains("ada@"), "{}", err.message);
    }
}

#[cfg(test)]
mod line_tests {
    //! The line path of `map` gives the same record as the `Value` path, or
    //! gives up and leaves it to that path.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::{build_ctx, ctx};
    use proptest::prelude::*;
    use serde_json::{Map, json};

    fn map(ops: &Value) -> MapProcessor {
        let spec: MapSpec = serde_json::from_value(json!({ "ops": ops })).unwrap();
        build(&spec, &build_ctx())
            .map_err(|p| format!("{p:?}"))
            .unwrap()
    }

    /// Both paths on `record`; returns the line path's output text when it
    /// took the line.
    fn both(p: &MapProcessor, record: &Value, append: Option<(&str, &str)>) -> Option<String> {
        let line = serde_json::to_string(record).unwrap();
        let mut want = Vec::new();
        let want = p
            .process(record.clone(), &ctx(0), &mut want)
            .ok()
            .map(|()| {
                let mut v = want.pop().unwrap();
                if let (Some((k, id)), Value::Object(m)) = (append, &mut v) {
                    m.insert(k.to_owned(), Value::String(id.to_owned()));
                }
                v
            });
        let mut out = b"before".to_vec();
        if !p.process_line(line.as_bytes(), append, &mut out) {
            assert_eq!(out, b"before");
            return None;
        }
        let text = String::from_utf8(out[6..].to_vec()).unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(Some(got), want, "ops differ on {line}");
        Some(text)
    }

    #[test]
    fn the_benchmark_ops_keep_member_order() {
        let p = map(&json!([
            {"op": "remove", "path": "/debug", "optional": true},
            {"op": "set", "path": "/pipeline", "value": "bench"},
            {"op": "move", "from": "/level", "path": "/severity"},
            {"op": "upper", "path": "/service"}
        ]));
        assert!(p.takes_lines());
        let record =
            json!({"ts": "t", "level": "info", "service": "api-ünï", "debug": true, "n": 1});
        let text = both(&p, &record, Some(("_sluice_id", "b:0:0"))).unwrap();
        // serde_json writes the keys of `json!` sorted; edits keep that
        // order and add new members last.
        assert_eq!(
            text,
            r#"{"n":1,"service":"API-ÜNÏ","ts":"t","pipeline":"bench","severity":"info","_sluice_id":"b:0:0"}"#
        );
        // Failures are left to the `Value` path, which reports them.
        assert_eq!(both(&p, &json!({"service": "x"}), None), None);
        assert_eq!(both(&p, &json!({"level": "x", "service": 1}), None), None);
        assert_eq!(
            both(
                &p,
                &json!({"level": "x", "service": "s", "_sluice_id": 1}),
                Some(("_sluice_id", "i"))
            ),
            None
        );
    }

    #[test]
    fn nested_paths_eval_and_cast_stay_on_the_value_path() {
        for ops in [
            json!([{"op": "set", "path": "/a/b", "value": 1}]),
            json!([{"op": "remove", "path": ""}]),
            json!([{"op": "cast", "path": "/a", "to": "string"}]),
            json!([{"op": "eval", "path": "/a", "expression": "1 + 1"}]),
        ] {
            assert!(!map(&ops).takes_lines(), "{ops}");
        }
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(&["a", "b", "level", "ünï", "q\"k", ""][..]).prop_map(str::to_owned)
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!("info")),
            Just(json!("MiXeD ß ǅ")),
            Just(json!(1)),
            Just(json!(1.0)),
            Just(json!([1, "x"])),
            Just(json!({"k": null})),
        ]
    }

    fn op() -> impl Strategy<Value = Value> {
        let p = || key().prop_map(|k| format!("/{}", k.replace('~', "~0")));
        prop_oneof![
            (p(), value()).prop_map(|(path, value)| json!({"op": "add", "path": path, "value": value})),
            (p(), value()).prop_map(|(path, value)| json!({"op": "set", "path": path, "value": value})),
            (p(), any::<bool>()).prop_map(|(path, o)| json!({"op": "remove", "path": path, "optional": o})),
            (p(), value(), any::<bool>()).prop_map(|(path, value, o)| json!({"op": "replace", "path": path, "value": value, "optional": o})),
            (p(), p(), any::<bool>()).prop_map(|(from, path, o)| json!({"op": "move", "from": from, "path": path, "optional": o})),
            (p(), p(), any::<bool>()).prop_map(|(from, path, o)| json!({"op": "copy", "from": from, "path": path, "optional": o})),
            (p(), value()).prop_map(|(path, value)| json!({"op": "test", "path": path, "value": value})),
            (p(), any::<bool>()).prop_map(|(path, o)| json!({"op": "upper", "path": path, "optional": o})),
            (p(), any::<bool>()).prop_map(|(path, o)| json!({"op": "lower", "path": path, "optional": o})),
            (p(), value()).prop_map(|(path, value)| json!({"op": "default", "path": path, "value": value})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn the_line_path_equals_the_value_path(
            ops in prop::collection::vec(op(), 1..5),
            kv in prop::collection::vec((key(), value()), 0..5),
            append in any::<bool>(),
        ) {
            let p = map(&Value::Array(ops));
            prop_assert!(p.takes_lines());
            let record = Value::Object(kv.into_iter().collect::<Map<_, _>>());
            let append = append.then_some(("id", "b:1:0"));
            // `both` asserts equal records whenever the line path takes one;
            // it must take every record the `Value` path accepts (none has
            // the appended key).
            let took = both(&p, &record, append).is_some();
            let mut out = Vec::new();
            let ok = p.process(record, &ctx(0), &mut out).is_ok();
            prop_assert_eq!(took, ok);
        }
    }
}
