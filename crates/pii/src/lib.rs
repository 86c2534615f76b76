//! Finding and removing personal data and secrets in JSON records and log
//! lines.
//!
//! Sluice promises that no personal data reaches storage or logs, and the
//! same promise has to hold in the browser extension, so everything that
//! decides *what* is sensitive lives in one data file, `rules/rules.json`,
//! written in a regex dialect that Rust and JavaScript read alike, plus a
//! handful of named validators (Luhn, mod-97, SSN ranges, ...) implemented on
//! both sides. This crate compiles that file once per [`Redactor`] into a
//! single multi-pattern automaton, so a string value is scanned once no
//! matter how many detectors are on, and validators only run on the few
//! candidates the automaton reports. Field names add context a string alone
//! does not have (`"password": "hunter2"` is a secret, `"name"` under
//! `billing` is a person), and free-text names and street addresses are found
//! with cue words and public-domain census name lists (see `data/`).
//!
//! The engine is synchronous and allocation-free for strings where nothing is
//! found: records are walked in place and only string values that contain
//! something are rewritten, so the JSON structure never changes in `mask`,
//! `partial` and `hash` modes.

mod config;
mod engine;
mod names;
mod raw;
mod rules;
mod scan;
mod split;
mod types;
mod validators;

#[cfg(feature = "tracing")]
pub mod log;

pub use config::{Action, ConfigProblem, FieldConfig, RedactConfig};
pub use engine::{Redactor, default_redactor};
/// The end of a JSON number that serde_json certainly reads as a finite
/// number, or `None` (see the line pass). Shared with the pipeline's line
/// path, so both give up on the same numbers.
pub use raw::number_end as json_number_end;
/// The end of a run of plain JSON string bytes: the index of the first
/// quote, backslash or control character at or after `i` (or the length),
/// eight bytes at a time. Shared with the pipeline's line path.
pub use raw::skip_plain as json_plain_end;
pub use types::PiiType;

/// Compiles one portable pattern of the rules file (with its `flags`) the
/// way the engine does, for tools and tests that want to run a single
/// detector's pattern.
pub fn compile_portable(pattern: &str, flags: &str) -> Result<regex_automata::meta::Regex, String> {
    let ci = rules::case_insensitive(flags)?;
    let translated = rules::translate(pattern, ci)?;
    regex_automata::meta::Regex::builder()
        .syntax(regex_automata::util::syntax::Config::new().utf8(false))
        .build(&translated)
        .map_err(|e| e.to_string())
}

/// The rules file, embedded so that the engine and its tests always agree
/// with the file the browser extension ships.
pub const RULES_JSON: &str = include_str!("../rules/rules.json");

/// The shared test vectors (input, config, expected output) that both the
/// Rust engine and the browser extension must pass.
pub const VECTORS_JSON: &str = include_str!("../rules/vectors.json");
