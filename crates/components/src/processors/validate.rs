//! `validate`: check each record against a JSON Schema.
//!
//! The schema is compiled once per config version with the `jsonschema`
//! crate. The draft comes from the spec's `draft`, else the schema's
//! `$schema`, else 2020-12. Remote references are never fetched: the crate
//! is built without its HTTP and file resolvers and the validator is built
//! `offline`, so a schema cannot make the server call out or read files.
//! Error messages are the crate's *masked* messages (the instance value
//! replaced by a placeholder) with the instance path, so a failure capture
//! names where and why without copying personal data into the message.

use jsonschema::{Draft, Validator};
use serde_json::Value;
use sluice_config::{SchemaDraft, ValidateSpec};
use sluice_core::{ErrorCode, Problem, ProcessError, Processor, Record, RecordContext};

use crate::Stage;

/// At most this many schema errors are listed in one failure message.
const MAX_ERRORS_LISTED: usize = 5;

pub(crate) struct ValidateProcessor {
    validator: Validator,
}

pub(crate) fn build(spec: &ValidateSpec) -> Result<ValidateProcessor, Vec<Problem>> {
    let draft = match spec.draft {
        Some(SchemaDraft::Draft7) => Some(Draft::Draft7),
        Some(SchemaDraft::Draft202012) => Some(Draft::Draft202012),
        None if declares_schema(&spec.schema) => None,
        None => Some(Draft::Draft202012),
    };
    let mut options = jsonschema::options().offline();
    if let Some(draft) = draft {
        options = options.with_draft(draft);
    }
    match options.build(&spec.schema) {
        Ok(validator) => Ok(ValidateProcessor { validator }),
        Err(error) => {
            // The schema is validated as an instance of its meta-schema,
            // so the instance path is the location inside the user's schema.
            let at = error.instance_path().as_str().to_owned();
            Err(vec![Problem::new(
                format!("/schema{at}"),
                format!("invalid JSON Schema: {}", error.masked()),
            )])
        }
    }
}

fn declares_schema(schema: &Value) -> bool {
    schema.get("$schema").is_some_and(Value::is_string)
}

impl Processor for ValidateProcessor {
    fn type_name(&self) -> &'static str {
        "validate"
    }

    fn process(
        &self,
        record: Record,
        _ctx: &RecordContext<'_>,
        out: &mut Vec<Record>,
    ) -> Result<(), ProcessError> {
        if self.validator.is_valid(&record) {
            out.push(record);
            return Ok(());
        }
        let mut message = String::from("record does not match the schema: ");
        for (count, error) in self.validator.iter_errors(&record).enumerate() {
            if count == MAX_ERRORS_LISTED {
                message.push_str("; ...");
                break;
            }
            if count > 0 {
                message.push_str("; ");
            }
            let at = error.instance_path().as_str();
            let at = if at.is_empty() { "/" } else { at };
            message.push_str(&format!("at `{at}`: {}", error.masked()));
        }
        Err(ProcessError::new(
            ErrorCode::SchemaValidationFailed,
            message,
        ))
    }
}

impl Stage for ValidateProcessor {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_support::ctx;
    use serde_json::json;

    fn spec(schema: Value, draft: Option<SchemaDraft>) -> ValidateSpec {
        ValidateSpec { schema, draft }
    }

    fn run(p: &ValidateProcessor, r: Value) -> Result<Vec<Value>, ProcessError> {
        let mut out = Vec::new();
        p.process(r, &ctx(0), &mut out).map(|()| out)
    }

    #[test]
    fn valid_records_pass_unchanged() {
        let p = build(&spec(json!({"type": "object", "required": ["id"]}), None)).unwrap();
        assert_eq!(run(&p, json!({"id": 1})).unwrap(), vec![json!({"id": 1})]);
    }

    #[test]
    fn failures_name_the_path_but_not_the_value() {
        let schema = json!({"type": "object", "properties": {"email": {"type": "integer"}}});
        let p = build(&spec(schema, None)).unwrap();
        let err = run(&p, json!({"email": "ada@example.com"})).unwrap_err();
        assert_eq!(err.code, ErrorCode::SchemaValidationFailed);
        assert!(err.message.contains("/email"), "{}", err.message);
        assert!(!err.message.contains("ada@example.com"), "{}", err.message);
    }

    #[test]
    fn draft7_and_2020_12_differ_where_they_should() {
        // `prefixItems` exists in 2020-12 only; draft 7 ignores it.
        let schema = json!({"properties": {"a": {"prefixItems": [{"type": "string"}]}}});
        let d2020 = build(&spec(schema.clone(), Some(SchemaDraft::Draft202012))).unwrap();
        let d7 = build(&spec(schema.clone(), Some(SchemaDraft::Draft7))).unwrap();
        let record = json!({"a": [1]});
        assert!(run(&d2020, record.clone()).is_err());
        assert!(run(&d7, record.clone()).is_ok());
        // Without `draft`, `$schema` decides.
        let mut with_schema = schema;
        with_schema["$schema"] = json!("http://json-schema.org/draft-07/schema#");
        let by_decl = build(&spec(with_schema, None)).unwrap();
        assert!(run(&by_decl, record.clone()).is_ok());
        // And the default is 2020-12.
        let default = build(&spec(
            json!({"properties": {"a": {"prefixItems": [{"type": "string"}]}}}),
            None,
        ))
        .unwrap();
        assert!(run(&default, record).is_err());
    }

    #[test]
    fn invalid_schemas_are_problems_under_schema() {
        let schema = json!({"properties": {"a": {"type": "nonsense"}}});
        let problems = build(&spec(schema, None)).err().unwrap();
        assert_eq!(
            problems[0].path, "/schema/properties/a/type",
            "{problems:?}"
        );
        assert!(problems[0].message.contains("invalid JSON Schema"));
    }

    #[test]
    fn remote_refs_are_not_fetched() {
        let schema = json!({"$ref": "https://example.com/schema.json"});
        assert!(build(&spec(schema, None)).is_err());
        let file = json!({"$ref": "file:///etc/passwd"});
        assert!(build(&spec(file, None)).is_err());
    }
}
