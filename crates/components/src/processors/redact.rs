//! `redact`: find and remove personal data and secrets in every record.
//!
//! All detection logic lives in `sluice-pii`, which the browser extension's
//! filter mirrors; this processor only decodes the options, builds one
//! `Redactor` per config version with the tenant's hash key (so `hash`
//! pseudonyms are stable per tenant and differ between tenants), and walks
//! each record in place. Option problems come back from the engine with
//! pointers relative to the processor, e.g. `/actions/EMAIL`.

use serde_json::Value;
use sluice_config::RedactSpec;
use sluice_core::{Problem, ProcessError, Processor, Record, RecordContext};
use sluice_pii::{RedactConfig, Redactor};

use std::borrow::Cow;

use crate::lines::Member;
use crate::pointer::Pointer;
use crate::{BuildContext, Stage};

pub(crate) struct RedactProcessor {
    redactor: Redactor,
    /// With `only` pointers (none of them the whole record): the distinct
    /// top-level members they lie in. Only these members are read when
    /// the record is a member list (see [`Stage::process_members`]).
    only_members: Option<Vec<String>>,
}

/// The distinct top-level keys of `only`, when there are pointers and
/// every one names something inside a member.
fn only_members(only: &[String]) -> Option<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    for text in only {
        let pointer = Pointer::parse(text).ok()?;
        let key = pointer.first_key()?;
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_owned());
        }
    }
    (!keys.is_empty()).then_some(keys)
}

pub(crate) fn build(
    spec: &RedactSpec,
    ctx: &BuildContext,
) -> Result<RedactProcessor, Vec<Problem>> {
    let config: RedactConfig = serde_json::from_value(Value::Object(spec.options.clone()))
        .map_err(|e| vec![crate::serde_problem("", &e)])?;
    let redactor = Redactor::new(&config, &ctx.hash_key).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| Problem::new(p.pointer, p.message))
            .collect::<Vec<_>>()
    })?;
    Ok(RedactProcessor {
        redactor,
        only_members: only_members(&config.only),
    })
}

impl Processor for RedactProcessor {
    fn type_name(&self) -> &'static str {
        "redact"
    }

    fn process(
        &self,
        mut record: Record,
        _ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError> {
        self.redactor.redact_record(&mut record);
        out.push(record);
        Ok(())
    }
}

impl Stage for RedactProcessor {
    fn takes_lines(&self) -> bool {
        self.redactor.lines_supported()
    }

    fn process_line(&self, line: &[u8], append: Option<(&str, &str)>, out: &mut Vec<u8>) -> bool {
        self.redactor.redact_json_line(line, append, out)
    }

    fn takes_members(&self) -> bool {
        self.only_members.is_some()
    }

    /// Each member an `only` pointer lies in is redacted as the one member
    /// of an object: the pointers' field context comes from their tokens,
    /// not from the rest of the record, so this is what redacting the whole
    /// record does to that member. The member goes through the line pass
    /// when it can, else through a `Value`. A member that does not change
    /// keeps its text.
    fn process_members<'a>(&'a self, members: &mut Vec<Member<'a>>) -> bool {
        let Some(keys) = &self.only_members else {
            return false;
        };
        let mut line = Vec::new();
        let mut out = Vec::new();
        for key in keys {
            let Some(i) = members.iter().position(|m| m.key == key.as_str()) else {
                continue;
            };
            if self.redactor.lines_supported() {
                // `{"key":value}`; the line pass rewrites strings only, so
                // the output starts with the same `{"key":`.
                line.clear();
                line.push(b'{');
                crate::lines::write_str(&mut line, key);
                line.push(b':');
                let head = line.len();
                line.extend_from_slice(members[i].value.as_bytes());
                line.push(b'}');
                out.clear();
                if self.redactor.redact_json_line(&line, None, &mut out) {
                    if out != line {
                        let Some(value) = out
                            .get(head..out.len().saturating_sub(1))
                            .and_then(|v| std::str::from_utf8(v).ok())
                        else {
                            return false;
                        };
                        members[i].value = Cow::Owned(value.to_owned());
                    }
                    continue;
                }
            }
            let Ok(value) = serde_json::from_str::<Value>(&members[i].value) else {
                return false;
            };
            let mut one = serde_json::Map::with_capacity(1);
            one.insert(key.clone(), value.clone());
            let mut record = Value::Object(one);
            self.redactor.redact_record(&mut record);
            match record.get(key) {
                None => drop(members.remove(i)),
                Some(redacted) if *redacted == value => {}
                Some(redacted) => match serde_json::to_string(redacted) {
                    Ok(text) => members[i].value = Cow::Owned(text),
                    Err(_) => return false,
                },
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::{build_ctx, ctx};
    use serde_json::json;

    fn redact(options: Value) -> Result<RedactProcessor, Vec<Problem>> {
        let spec: RedactSpec = serde_json::from_value(options).unwrap();
        build(&spec, &build_ctx())
    }

    #[test]
    fn default_options_mask_emails() {
        let p = redact(json!({})).map_err(|p| format!("{p:?}")).unwrap();
        let mut out = Vec::new();
        p.process(
            json!({"msg": "write to ada@example.com please", "n": 1}),
            &ctx(0),
            &mut out,
        )
        .unwrap();
        let text = serde_json::to_string(&out).unwrap();
        assert!(!text.contains("ada@example.com"), "{text}");
        assert!(text.contains("[EMAIL]"), "{text}");
        assert_eq!(out[0]["n"], json!(1));
    }

    #[test]
    fn hash_action_is_keyed_by_the_tenant() {
        let options = json!({"actions": {"EMAIL": "hash"}});
        let spec: RedactSpec = serde_json::from_value(options).unwrap();
        let mut other = build_ctx();
        other.hash_key = std::sync::Arc::from(&b"another tenant"[..]);
        let a = build(&spec, &build_ctx())
            .map_err(|p| format!("{p:?}"))
            .unwrap();
        let b = build(&spec, &other).map_err(|p| format!("{p:?}")).unwrap();
        let run = |p: &RedactProcessor| {
            let mut out = Vec::new();
            p.process(json!({"m": "ada@example.com"}), &ctx(0), &mut out)
                .unwrap();
            out.pop().unwrap()
        };
        assert_eq!(run(&a), run(&a), "stable for one tenant");
        assert_ne!(run(&a), run(&b), "different across tenants");
        assert!(!run(&a)["m"].as_str().unwrap().contains("ada@"));
    }

    #[test]
    fn redact_only_pipelines_redact_lines_from_their_bytes() {
        let spec =
            crate::validate_pipeline(&json!({"name": "t", "processors": [{"type": "redact"}]}))
                .unwrap();
        let p = crate::build_pipeline(&spec, &build_ctx()).unwrap();
        let batch = uuid::Uuid::from_u128(9);
        let input = concat!(
            "{\"z\":\"mail ada@example.com\", \"a\":1.50}\n",
            "{\"_sluice_id\":\"forged\",\"m\":\"ada@example.com\"}\n",
            "nope\n",
            "[1]\n",
            "\n",
            "{\"b\":1,\"a\":\"x\",\"a\":\"ada@example.com\"}"
        );
        let out = p.process_part(batch, 0, input.as_bytes());
        let text = String::from_utf8(out.ndjson).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Members keep their order and spelling; the id comes last.
        assert_eq!(
            lines[0],
            format!("{{\"z\":\"mail [EMAIL]\", \"a\":1.50,\"_sluice_id\":\"{batch}:0:0\"}}")
        );
        // A record that already has the id field, or a duplicate key, takes
        // the `Value` path: the id is overwritten, the last duplicate wins.
        assert_eq!(
            lines[1],
            format!("{{\"_sluice_id\":\"{batch}:1:0\",\"m\":\"[EMAIL]\"}}")
        );
        assert_eq!(
            lines[2],
            format!("{{\"_sluice_id\":\"{batch}:5:0\",\"a\":\"[EMAIL]\",\"b\":1}}")
        );
        assert_eq!(lines.len(), 3);
        assert_eq!((out.records_in, out.records_out), (5, 3));
        let failures: Vec<(u64, &str, sluice_core::ErrorCode)> = out
            .failures
            .iter()
            .map(|f| (f.record_index, f.processor_type.as_str(), f.code))
            .collect();
        assert_eq!(
            failures,
            [
                (2, "input", sluice_core::ErrorCode::MalformedBody),
                (3, "input", sluice_core::ErrorCode::RecordNotObject)
            ]
        );
    }

    #[test]
    fn bad_options_are_problems_with_pointers() {
        let problems = redact(json!({"actions": {"NOT_A_TYPE": "mask"}}))
            .err()
            .unwrap();
        assert!(
            problems.iter().any(|p| p.path.starts_with("/actions")),
            "{problems:?}"
        );
        let unknown = redact(json!({"bogus": true})).err().unwrap();
        assert_eq!(unknown[0].path, "/bogus");
        assert!(unknown[0].message.contains("bogus"), "{unknown:?}");
    }
}
