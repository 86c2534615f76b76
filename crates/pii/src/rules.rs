//! The rules file's data model and the translation of its portable regex
//! dialect into Rust `regex-automata` syntax.
//!
//! The file is the contract with the browser extension, so it is parsed with
//! `deny_unknown_fields`: a key one engine does not understand must fail the
//! tests instead of being ignored by one side. Patterns are written in the
//! common subset of Rust `regex` and JavaScript `RegExp`; the only semantic
//! gap inside that subset is that Rust's `\b`, `\d`, `\w` and `\s` are
//! Unicode-aware while JavaScript's (without the `u` flag) are ASCII, so the
//! loader rewrites those escapes to their ASCII forms before compiling.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RulesFile {
    #[allow(dead_code)]
    pub version: u32,
    #[allow(dead_code)]
    #[serde(default)]
    pub about: String,
    pub detectors: Vec<DetectorSpec>,
    pub field_rules: Vec<FieldRuleSpec>,
    #[allow(dead_code)]
    #[serde(default)]
    pub field_normalization: String,
    pub value_of_sibling_name_keys: Vec<String>,
    pub placeholders: Vec<String>,
    pub person: PersonSpec,
    #[serde(default)]
    pub field_exempt: Vec<FieldExemptSpec>,
    pub groups: BTreeMap<String, GroupSpec>,
    #[allow(dead_code)]
    #[serde(default)]
    pub groups_about: String,
}

/// A scan group: what a string must contain for its patterns to match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupSpec {
    #[serde(default)]
    pub needs_any: Vec<String>,
    #[serde(default)]
    pub needs_all: Vec<String>,
}

/// Fields in which some detectors' findings are ignored (versions are not
/// IP addresses).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldExemptSpec {
    pub types: Vec<String>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub suffixes: Vec<String>,
    #[allow(dead_code)]
    #[serde(default)]
    pub note: String,
}

/// One pattern detector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DetectorSpec {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Scan group (an optimisation hint; see `groups_about`).
    pub group: String,
    pub pattern: String,
    /// Only `"i"` is allowed.
    #[serde(default)]
    pub flags: String,
    /// Capture group to redact (0 = whole match).
    #[serde(default, rename = "redact_group")]
    pub group_index: usize,
    #[serde(default)]
    pub validator: Option<String>,
    #[serde(default)]
    pub require_before: Option<String>,
    #[serde(default)]
    pub deny_before: Option<String>,
    /// Flags for the context patterns (only `"i"`).
    #[serde(default)]
    pub flags_context: String,
    #[serde(default)]
    pub boundary: bool,
    #[allow(dead_code)]
    #[serde(default)]
    pub note: String,
}

/// A field-name rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldRuleSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub check: String,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub suffixes: Vec<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default)]
    pub except: Vec<String>,
    /// When set, the rule only applies inside an object held under one of
    /// these keys.
    #[serde(default)]
    pub parents: Vec<String>,
    #[serde(default)]
    pub keep_prefix: Option<String>,
    #[serde(default)]
    pub keep_prefix_flags: String,
    #[allow(dead_code)]
    #[serde(default)]
    pub note: String,
}

/// Free-text person-name heuristics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersonSpec {
    pub strong_cues: Vec<String>,
    pub weak_cues: Vec<String>,
    pub particles: Vec<String>,
    pub stopwords: Vec<String>,
    pub max_tokens: usize,
}

/// Errors in the rules file (a build-time bug, surfaced as config problems).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RulesError {
    #[error("rules.json does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("detector {id}: {message}")]
    Detector { id: String, message: String },
    #[error("field rule {index}: {message}")]
    FieldRule { index: usize, message: String },
}

pub(crate) fn parse(text: &str) -> Result<RulesFile, RulesError> {
    Ok(serde_json::from_str(text)?)
}

/// Rewrites a portable pattern into Rust syntax with JavaScript semantics:
/// `\b`/`\B` become ASCII word boundaries, `\d`, `\w`, `\s` and their
/// negations become ASCII classes. Inline flag groups, lookaround and
/// backreferences are rejected because JavaScript would read them
/// differently or not at all.
pub(crate) fn translate(pattern: &str, case_insensitive: bool) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 16);
    if case_insensitive {
        out.push_str("(?i:");
    }
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(n) = chars.next() else {
                    return Err("pattern ends with a lone backslash".into());
                };
                let class_body = match n {
                    'd' => Some("0-9"),
                    'w' => Some("0-9A-Za-z_"),
                    's' => Some("\\t\\n\\x0B\\x0C\\r \\x{A0}\\x{FEFF}\\x{2028}\\x{2029}"),
                    _ => None,
                };
                let negated_body = match n {
                    'D' => Some("0-9"),
                    'W' => Some("0-9A-Za-z_"),
                    'S' => Some("\\t\\n\\x0B\\x0C\\r \\x{A0}\\x{FEFF}\\x{2028}\\x{2029}"),
                    _ => None,
                };
                if let Some(body) = class_body {
                    if in_class {
                        out.push_str(body);
                    } else {
                        out.push('[');
                        out.push_str(body);
                        out.push(']');
                    }
                } else if let Some(body) = negated_body {
                    if in_class {
                        return Err(format!("\\{n} inside a character class is not portable"));
                    }
                    out.push_str("[^");
                    out.push_str(body);
                    out.push(']');
                } else if n == 'b' && !in_class {
                    out.push_str("(?-u:\\b)");
                } else if n == 'B' && !in_class {
                    out.push_str("(?-u:\\B)");
                } else if n.is_ascii_digit() && n != '0' {
                    return Err("backreferences are not portable".into());
                } else if matches!(n, 'p' | 'P' | 'k' | 'A' | 'z' | 'Z') {
                    return Err(format!("\\{n} is not portable"));
                } else {
                    out.push('\\');
                    out.push(n);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A leading ']' or '^]' is literal in Rust but not in JS.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    return Err("']' first in a class is not portable".into());
                }
            }
            '[' if in_class => {
                // Rust reads '[' inside a class as a nested class.
                out.push_str("\\[");
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '(' if !in_class && chars.peek() == Some(&'?') => {
                chars.next();
                match chars.next() {
                    Some(':') => out.push_str("(?:"),
                    Some(other) => {
                        return Err(format!(
                            "group (?{other} is not portable (lookaround, named groups and inline flags are not allowed)"
                        ));
                    }
                    None => return Err("pattern ends inside a group".into()),
                }
            }
            '&' | '~' | '-' if in_class && chars.peek() == Some(&c) => {
                // Rust class set operators (&&, ~~, --) are literal in JS.
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    if in_class {
        return Err("unterminated character class".into());
    }
    if case_insensitive {
        out.push(')');
    }
    Ok(out)
}

/// Parses a `flags` field: only `""` and `"i"` are portable and meaningful.
pub(crate) fn case_insensitive(flags: &str) -> Result<bool, String> {
    match flags {
        "" => Ok(false),
        "i" => Ok(true),
        other => Err(format!("flags {other:?} are not supported (only \"i\")")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn translates_escapes_to_ascii_semantics() {
        assert_eq!(
            translate(r"\b\d+\b", false).unwrap(),
            r"(?-u:\b)[0-9]+(?-u:\b)"
        );
        assert_eq!(translate(r"[\d.]", false).unwrap(), r"[0-9.]");
        assert_eq!(translate(r"\W", false).unwrap(), r"[^0-9A-Za-z_]");
        assert_eq!(translate(r"a\.b", true).unwrap(), r"(?i:a\.b)");
        assert_eq!(translate(r"(?:x)|[^a]", false).unwrap(), r"(?:x)|[^a]");
        assert_eq!(translate(r"[a[]", false).unwrap(), r"[a\[]");
    }

    #[test]
    fn rejects_non_portable_syntax() {
        for bad in [
            r"(?=x)", r"(?<n>x)", r"(?i)x", r"(a)\1", r"\p{L}", r"[abc", r"[\W]",
        ] {
            assert!(translate(bad, false).is_err(), "{bad} should be rejected");
        }
        assert!(case_insensitive("g").is_err());
        assert!(case_insensitive("i").unwrap());
    }

    #[test]
    fn the_embedded_rules_file_parses() {
        let rules = parse(crate::RULES_JSON).unwrap();
        assert!(rules.detectors.len() >= 15);
        for d in &rules.detectors {
            let ci = case_insensitive(&d.flags).unwrap();
            translate(&d.pattern, ci).unwrap_or_else(|e| panic!("{}: {e}", d.id));
        }
    }
}
