//! The `redact` processor's options and their validation.
//!
//! Types and actions are kept as strings in the serde structs so that a
//! misspelled type becomes a [`ConfigProblem`] with a JSON pointer instead of
//! an opaque deserialization error, and so that [`crate::Redactor::new`] can
//! report every problem at once, the way the rest of the pipeline config is
//! validated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::PiiType;

/// What to do with a detected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Replace the value with `[TYPE]`, e.g. `[EMAIL]`.
    #[default]
    Mask,
    /// Keep the last four letters or digits, replace the others with `*`.
    Partial,
    /// Replace with a keyed HMAC-SHA256 pseudonym, `[TYPE:16 hex digits]`,
    /// stable for one key so that joins still work.
    Hash,
    /// Delete: a whole field loses its key (an array element is dropped); a
    /// span inside free text is cut out.
    Remove,
}

/// Options of the `redact` processor, deserialized from the pipeline config
/// object `{"type": "redact", ...}` with the `"type"` key removed. Every
/// field is optional: `{}` runs every detector with `mask`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedactConfig {
    /// Types to detect, e.g. `["EMAIL", "PHONE"]`. Absent: all types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Vec<String>>,
    /// Types to leave alone even when `detectors` is absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// Action per type, e.g. `{"EMAIL": "hash", "CREDIT_CARD": "partial"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, Action>,
    /// Action for types not listed in `actions`. Absent: `mask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<Action>,
    /// Extra field rules: a field name (matched case-insensitively, with
    /// `-`, `.`, spaces and camelCase treated as `_`) whose whole string
    /// value is sensitive, with its type and optionally its own action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldConfig>,
    /// Values never redacted: exact values (case-insensitive), or domains
    /// written `@example.com` / `*.example.com` that exempt email addresses
    /// and hosts under them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// JSON pointers (RFC 6901) of values that are never touched, e.g.
    /// `"/user/email"`; a pointer to an object or array skips all of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
    /// JSON pointers (RFC 6901) of the only values scanned, e.g.
    /// `["/message", "/user/email"]`; a pointer to an object or array scans
    /// all of it. Absent or empty: the whole record. Pointers that a record
    /// lacks are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Whether field-name rules from the rules file apply (e.g. everything
    /// under `password` is a secret). Absent: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_names: Option<bool>,
}

/// An extra field rule in [`RedactConfig::fields`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Type the field's value is reported as. Absent: `SECRET`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Action for this field, overriding the type's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

/// One problem found in a [`RedactConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigProblem {
    /// JSON pointer relative to the redact config object, e.g.
    /// `"/actions/EMAIL"`.
    pub pointer: String,
    /// What is wrong, for people.
    pub message: String,
}

impl ConfigProblem {
    fn new(pointer: String, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            pointer,
            message: message.into(),
        }
    }
}

/// A field rule from the config, resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserField {
    pub kind: PiiType,
    pub action: Option<Action>,
}

/// The config after validation, in the shapes the engine uses.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub enabled: [bool; PiiType::COUNT],
    pub actions: [Action; PiiType::COUNT],
    pub fields: Vec<(String, UserField)>,
    pub allow_values: Vec<String>,
    pub allow_domains: Vec<String>,
    pub skip: Vec<Vec<String>>,
    pub only: Vec<Vec<String>>,
    pub field_names: bool,
}

impl Resolved {
    /// Whether the line pass ([`crate::Redactor::redact_json_line`]) can
    /// follow the `only` pointers: every pointer names a member below the
    /// root by keys alone (a token that reads as an array index gives its
    /// value a different field context in the record walk), and none lies
    /// inside another (the record walk would scan that value twice); at
    /// most 64 of them.
    pub(crate) fn only_fits_lines(&self) -> bool {
        let keys_only =
            |p: &Vec<String>| !p.is_empty() && p.iter().all(|t| t.parse::<usize>().is_err());
        self.only.len() <= 64
            && self.only.iter().all(keys_only)
            && self.only.iter().enumerate().all(|(i, a)| {
                self.only
                    .iter()
                    .enumerate()
                    .all(|(j, b)| i == j || !b.starts_with(a))
            })
    }
}

/// Escapes one JSON pointer reference token.
pub(crate) fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Splits an RFC 6901 pointer into unescaped reference tokens.
fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    let mut out = Vec::new();
    for raw in rest.split('/') {
        // "~" must be followed by 0 or 1.
        let mut chars = raw.chars().peekable();
        let mut token = String::with_capacity(raw.len());
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => return None,
                }
            } else {
                token.push(c);
            }
        }
        out.push(token);
    }
    Some(out)
}

/// Normalizes a field name the way field rules are matched: lowercase, with
/// `-`, `.`, spaces and camelCase humps turned into `_`.
pub(crate) fn normalize_field(name: &str, out: &mut String) {
    out.clear();
    if name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        out.push_str(name);
        return;
    }
    let mut prev_lower = false;
    if name.is_ascii() {
        // Same rules, byte by byte (field names are nearly always ASCII).
        for b in name.bytes() {
            if b.is_ascii_uppercase() {
                if prev_lower {
                    out.push('_');
                }
                out.push(char::from(b.to_ascii_lowercase()));
                prev_lower = false;
            } else if b == b'-' || b == b'.' || b == b' ' {
                out.push('_');
                prev_lower = false;
            } else {
                out.push(char::from(b));
                prev_lower = b.is_ascii_lowercase() || b.is_ascii_digit();
            }
        }
        return;
    }
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c == '-' || c == '.' || c == ' ' {
            out.push('_');
            prev_lower = false;
        } else {
            out.extend(c.to_lowercase());
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
}

impl RedactConfig {
    /// Validates the config and resolves it; collects every problem.
    pub(crate) fn resolve(&self) -> Result<Resolved, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut enabled = [true; PiiType::COUNT];
        if let Some(list) = &self.detectors {
            enabled = [false; PiiType::COUNT];
            for (i, name) in list.iter().enumerate() {
                match PiiType::parse(name) {
                    Some(t) => enabled[t.index()] = true,
                    None => problems.push(ConfigProblem::new(
                        format!("/detectors/{i}"),
                        unknown_type(name),
                    )),
                }
            }
        }
        for (i, name) in self.disable.iter().enumerate() {
            match PiiType::parse(name) {
                Some(t) => enabled[t.index()] = false,
                None => problems.push(ConfigProblem::new(
                    format!("/disable/{i}"),
                    unknown_type(name),
                )),
            }
        }
        let default_action = self.default_action.unwrap_or_default();
        let mut actions = [default_action; PiiType::COUNT];
        for (name, action) in &self.actions {
            match PiiType::parse(name) {
                Some(t) => actions[t.index()] = *action,
                None => problems.push(ConfigProblem::new(
                    format!("/actions/{}", escape_token(name)),
                    unknown_type(name),
                )),
            }
        }
        let mut fields = Vec::new();
        let mut norm = String::new();
        for (name, rule) in &self.fields {
            let base = format!("/fields/{}", escape_token(name));
            if name.trim().is_empty() {
                problems.push(ConfigProblem::new(base.clone(), "field name is empty"));
                continue;
            }
            let kind = match rule.kind.as_deref() {
                None => PiiType::Secret,
                Some(k) => match PiiType::parse(k) {
                    Some(t) => t,
                    None => {
                        problems.push(ConfigProblem::new(format!("{base}/type"), unknown_type(k)));
                        continue;
                    }
                },
            };
            normalize_field(name, &mut norm);
            fields.push((
                norm.clone(),
                UserField {
                    kind,
                    action: rule.action,
                },
            ));
        }
        let mut allow_values = Vec::new();
        let mut allow_domains = Vec::new();
        for (i, entry) in self.allow.iter().enumerate() {
            let e = entry.trim();
            if e.is_empty() {
                problems.push(ConfigProblem::new(
                    format!("/allow/{i}"),
                    "allow-list entry is empty",
                ));
            } else if let Some(d) = e.strip_prefix('@').or_else(|| e.strip_prefix("*.")) {
                if d.is_empty() || !d.contains('.') {
                    problems.push(ConfigProblem::new(
                        format!("/allow/{i}"),
                        format!(
                            "{entry:?} is not a domain (expected @example.com or *.example.com)"
                        ),
                    ));
                } else {
                    allow_domains.push(d.to_ascii_lowercase());
                }
            } else {
                allow_values.push(e.to_lowercase());
            }
        }
        let mut skip = Vec::new();
        for (i, pointer) in self.skip.iter().enumerate() {
            match parse_pointer(pointer) {
                Some(tokens) => skip.push(tokens),
                None => problems.push(ConfigProblem::new(
                    format!("/skip/{i}"),
                    format!("{pointer:?} is not a JSON pointer (RFC 6901): it must be empty or start with '/', and '~' must be followed by 0 or 1"),
                )),
            }
        }
        let mut only = Vec::new();
        for (i, pointer) in self.only.iter().enumerate() {
            match parse_pointer(pointer) {
                Some(tokens) => only.push(tokens),
                None => problems.push(ConfigProblem::new(
                    format!("/only/{i}"),
                    format!("{pointer:?} is not a JSON pointer (RFC 6901): it must be empty or start with '/', and '~' must be followed by 0 or 1"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(Resolved {
                enabled,
                actions,
                fields,
                allow_values,
                allow_domains,
                skip,
                only,
                field_names: self.field_names.unwrap_or(true),
            })
        } else {
            Err(problems)
        }
    }
}

fn unknown_type(name: &str) -> String {
    let known: Vec<&str> = PiiType::ALL.iter().map(|t| t.as_str()).collect();
    format!("unknown type {name:?}; known types: {}", known.join(", "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn empty_config_enables_everything_with_mask() {
        let r = RedactConfig::default().resolve().unwrap();
        assert!(r.enabled.iter().all(|e| *e));
        assert!(r.actions.iter().all(|a| *a == Action::Mask));
        assert!(r.field_names);
    }

    #[test]
    fn every_problem_is_reported_with_its_pointer() {
        let cfg: RedactConfig = serde_json::from_value(serde_json::json!({
            "detectors": ["EMAIL", "EMIAL"],
            "actions": {"PHONE": "hash", "PHONY": "mask"},
            "fields": {"customer_ref": {"type": "NOPE"}},
            "allow": ["", "@nodot"],
            "skip": ["no-slash", "/ok", "/bad~2"]
        }))
        .unwrap();
        let problems = cfg.resolve().unwrap_err();
        let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/detectors/1",
                "/actions/PHONY",
                "/fields/customer_ref/type",
                "/allow/0",
                "/allow/1",
                "/skip/0",
                "/skip/2"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_actions_are_rejected_by_serde() {
        assert!(serde_json::from_str::<RedactConfig>(r#"{"detector": []}"#).is_err());
        assert!(
            serde_json::from_str::<RedactConfig>(r#"{"actions": {"EMAIL": "shred"}}"#).is_err()
        );
        let cfg: RedactConfig =
            serde_json::from_str(r#"{"actions": {"EMAIL": "partial"}, "default_action": "hash"}"#)
                .unwrap();
        let r = cfg.resolve().unwrap();
        assert_eq!(r.actions[PiiType::Email.index()], Action::Partial);
        assert_eq!(r.actions[PiiType::Phone.index()], Action::Hash);
    }

    #[test]
    fn field_names_are_normalized() {
        let mut s = String::new();
        for (input, want) in [
            ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
            ("x-api-key", "x_api_key"),
            ("userAgent", "user_agent"),
            ("apiKey", "api_key"),
            ("Card Number", "card_number"),
            ("line1", "line1"),
        ] {
            normalize_field(input, &mut s);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn pointers_parse_with_escapes() {
        assert_eq!(parse_pointer("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_pointer("/a~1b/c~0d/0").unwrap(), ["a/b", "c~d", "0"]);
        assert!(parse_pointer("a").is_none());
        assert_eq!(escape_token("a/b~c"), "a~1b~0c");
    }
}
