//! The structured detectors: every pattern of the rules file compiled into
//! one multi-pattern automaton.
//!
//! Scanning each string once with a lazy DFA over all patterns costs about
//! the same as scanning it with one, which is what makes the engine cheap
//! enough to run on every string of every record. The automaton reports the
//! leftmost match and which pattern produced it; only then are the slower
//! parts run: the capture group (for detectors that redact part of their
//! match), context patterns and the named validator. When a candidate is
//! rejected the other patterns are tried anchored at the same position, and
//! the search resumes one character further, so a rejected look-alike never
//! hides a real match that starts inside it.

use regex_automata::meta::{BuildError, Regex};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

use crate::rules::{self, DetectorSpec, RulesError};
use crate::types::PiiType;
use crate::validators::Validator;

/// A detected span, in byte offsets of the scanned haystack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: PiiType,
}

struct Detector {
    kind: PiiType,
    group: usize,
    validator: Option<Validator>,
    require_before: Option<Regex>,
    deny_before: Option<Regex>,
    boundary: bool,
    /// The pattern alone, for anchored retries and capture groups.
    single: Regex,
}

/// All enabled pattern detectors, compiled.
pub(crate) struct Scanner {
    all: Option<Regex>,
    detectors: Vec<Detector>,
}

/// How far back the context patterns look.
const CONTEXT_BYTES: usize = 40;

fn build(pattern: &str) -> Result<Regex, Box<BuildError>> {
    Regex::builder()
        .syntax(syntax::Config::new().utf8(false))
        .build(pattern)
        .map_err(Box::new)
}

fn compile_context(
    spec: &DetectorSpec,
    pattern: Option<&String>,
) -> Result<Option<Regex>, RulesError> {
    let err = |message: String| RulesError::Detector {
        id: spec.id.clone(),
        message,
    };
    let Some(p) = pattern else { return Ok(None) };
    let ci = rules::case_insensitive(&spec.flags_context).map_err(err)?;
    let t = rules::translate(p, ci).map_err(err)?;
    build(&t)
        .map(Some)
        .map_err(|e| err(format!("context pattern: {e}")))
}

impl Scanner {
    /// Compiles the detectors whose type is enabled.
    pub(crate) fn new(
        specs: &[DetectorSpec],
        enabled: &[bool; PiiType::COUNT],
    ) -> Result<Scanner, RulesError> {
        let mut detectors = Vec::new();
        let mut patterns = Vec::new();
        for spec in specs {
            let err = |message: String| RulesError::Detector {
                id: spec.id.clone(),
                message,
            };
            let kind = PiiType::parse(&spec.kind)
                .ok_or_else(|| err(format!("unknown type {:?}", spec.kind)))?;
            let validator = match &spec.validator {
                None => None,
                Some(name) => Some(
                    Validator::parse(name)
                        .ok_or_else(|| err(format!("unknown validator {name:?}")))?,
                ),
            };
            let ci = rules::case_insensitive(&spec.flags).map_err(err)?;
            let translated = rules::translate(&spec.pattern, ci).map_err(err)?;
            let single = build(&translated).map_err(|e| err(e.to_string()))?;
            if spec.group >= single.group_info().group_len(regex_automata::PatternID::ZERO) {
                return Err(err(format!("pattern has no group {}", spec.group)));
            }
            let require_before = compile_context(spec, spec.require_before.as_ref())?;
            let deny_before = compile_context(spec, spec.deny_before.as_ref())?;
            if !enabled[kind.index()] {
                continue;
            }
            patterns.push(translated);
            detectors.push(Detector {
                kind,
                group: spec.group,
                validator,
                require_before,
                deny_before,
                boundary: spec.boundary,
                single,
            });
        }
        let all = if patterns.is_empty() {
            None
        } else {
            let built = Regex::builder()
                .syntax(syntax::Config::new().utf8(false))
                .build_many(&patterns)
                .map_err(|e| RulesError::Detector {
                    id: "(all)".into(),
                    message: e.to_string(),
                })?;
            Some(built)
        };
        Ok(Scanner { all, detectors })
    }

    /// A scanner with no detectors.
    pub(crate) fn empty() -> Scanner {
        Scanner {
            all: None,
            detectors: Vec::new(),
        }
    }

    /// Appends every accepted span of `hay` to `out`, left to right, without
    /// overlaps.
    pub(crate) fn scan(&self, hay: &[u8], out: &mut Vec<Span>) {
        let Some(all) = &self.all else { return };
        let mut pos = 0;
        while pos < hay.len() {
            let Some(m) = all.search(&Input::new(hay).range(pos..)) else {
                break;
            };
            let (s, e, pid) = (m.start(), m.end(), m.pattern().as_usize());
            if let Some(span) = self.accept(pid, hay, s, e) {
                out.push(span);
                pos = e.max(s + 1);
                continue;
            }
            let mut next = None;
            for (i, d) in self.detectors.iter().enumerate() {
                if i == pid {
                    continue;
                }
                let input = Input::new(hay).range(s..).anchored(Anchored::Yes);
                if let Some(m2) = d.single.search(&input)
                    && let Some(span) = self.accept(i, hay, s, m2.end())
                {
                    next = Some((span, m2.end()));
                    break;
                }
            }
            match next {
                Some((span, end)) => {
                    out.push(span);
                    pos = end.max(s + 1);
                }
                None => pos = next_char(hay, s),
            }
        }
    }

    /// Runs the group, context and validator checks of detector `i` on the
    /// match `hay[s..e]`.
    fn accept(&self, i: usize, hay: &[u8], s: usize, e: usize) -> Option<Span> {
        let d = self.detectors.get(i)?;
        if let Some(re) = &d.require_before
            && !re.is_match(&hay[s.saturating_sub(CONTEXT_BYTES)..s])
        {
            return None;
        }
        if let Some(re) = &d.deny_before
            && re.is_match(&hay[s.saturating_sub(CONTEXT_BYTES)..s])
        {
            return None;
        }
        if d.boundary && (touches_alnum_before(hay, s) || touches_alnum_after(hay, e)) {
            return None;
        }
        let (gs, ge) = if d.group == 0 {
            (s, e)
        } else {
            let mut caps = d.single.create_captures();
            let input = Input::new(hay).range(s..e).anchored(Anchored::Yes);
            d.single.search_captures(&input, &mut caps);
            let g = caps.get_group(d.group)?;
            (g.start, g.end)
        };
        if gs >= ge {
            return None;
        }
        let ge = match d.validator {
            None => ge,
            Some(v) => v.check(hay, gs, ge)?,
        };
        Some(Span {
            start: gs,
            end: ge,
            kind: d.kind,
        })
    }
}

/// Index of the next UTF-8 character start after `i`.
fn next_char(hay: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < hay.len() && (hay[j] & 0xC0) == 0x80 {
        j += 1;
    }
    j
}

fn char_before(hay: &[u8], i: usize) -> Option<char> {
    let mut j = i.checked_sub(1)?;
    while j > 0 && (hay[j] & 0xC0) == 0x80 && i - j < 4 {
        j -= 1;
    }
    std::str::from_utf8(&hay[j..i]).ok()?.chars().next()
}

fn char_after(hay: &[u8], i: usize) -> Option<char> {
    let end = (i + 4).min(hay.len());
    let slice = hay.get(i..end)?;
    match std::str::from_utf8(slice) {
        Ok(s) => s.chars().next(),
        Err(e) => std::str::from_utf8(&slice[..e.valid_up_to()])
            .ok()?
            .chars()
            .next(),
    }
}

fn touches_alnum_before(hay: &[u8], i: usize) -> bool {
    char_before(hay, i).is_some_and(char::is_alphanumeric)
}

fn touches_alnum_after(hay: &[u8], i: usize) -> bool {
    char_after(hay, i).is_some_and(char::is_alphanumeric)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn scanner() -> Scanner {
        let rules = rules::parse(crate::RULES_JSON).unwrap();
        Scanner::new(&rules.detectors, &[true; PiiType::COUNT]).unwrap()
    }

    fn found(s: &Scanner, text: &str) -> Vec<(PiiType, String)> {
        let mut out = Vec::new();
        s.scan(text.as_bytes(), &mut out);
        out.iter()
            .map(|sp| (sp.kind, text[sp.start..sp.end].to_string()))
            .collect()
    }

    #[test]
    fn finds_each_structured_type() {
        let s = scanner();
        let cases: &[(&str, PiiType, &str)] = &[
            ("mail bob.smith+x@example.co.uk now", PiiType::Email, "bob.smith+x@example.co.uk"),
            ("card 4539-1488-0343-6467.", PiiType::CreditCard, "4539-1488-0343-6467"),
            ("SSN 123-45-6789 on file", PiiType::UsSsn, "123-45-6789"),
            ("ssn=023485892", PiiType::UsSsn, "023485892"),
            ("IBAN DE89 3704 0044 0532 0130 00 ok", PiiType::Iban, "DE89 3704 0044 0532 0130 00"),
            ("from 191.112.33.56 at", PiiType::Ipv4, "191.112.33.56"),
            ("ip 2001:db8:85a3::8a2e:370:7334", PiiType::Ipv6, "2001:db8:85a3::8a2e:370:7334"),
            ("call +44 7400 120590", PiiType::Phone, "+44 7400 120590"),
            ("call (972) 859-3792", PiiType::Phone, "(972) 859-3792"),
            ("phone 4155552671", PiiType::Phone, "4155552671"),
            ("key AKIAIOSFODNN7EXAMPLE", PiiType::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE"),
            ("Authorization: Bearer abcdefghijklmnop1234", PiiType::BearerToken, "abcdefghijklmnop1234"),
            ("postgres://app:s3cret-pw@db:5432/x", PiiType::Secret, "s3cret-pw"),
            ("GET /x?api_key=sk_live_abcdefghijklmnop&y=1", PiiType::Secret, "sk_live_abcdefghijklmnop"),
            ("Authorization: Basic dXNlcjpwYXNzd29yZA==", PiiType::Secret, "dXNlcjpwYXNzd29yZA=="),
            ("93 Lakeview Drive Apt. 5, Springfield", PiiType::StreetAddress, "93 Lakeview Drive Apt. 5"),
            ("bei Seidelring 15, Berlin", PiiType::StreetAddress, "Seidelring 15"),
        ];
        for (text, kind, want) in cases {
            let got = found(&s, text);
            assert!(
                got.iter().any(|(k, v)| k == kind && v == want),
                "{text}: want {kind} {want:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn jwt_and_private_keys() {
        let s = scanner();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU";
        assert_eq!(found(&s, &format!("token {jwt} end")), [(PiiType::Jwt, jwt.to_string())]);
        let escaped = "-----BEGIN RSA PRIVATE KEY-----\\nMIIEowIBAAKCAQEA\\nabc+/=\\n-----END RSA PRIVATE KEY-----";
        assert_eq!(found(&s, escaped), [(PiiType::PrivateKey, escaped.to_string())]);
        let real = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0=\n-----END PRIVATE KEY-----";
        assert_eq!(found(&s, &format!("k: {real}")), [(PiiType::PrivateKey, real.to_string())]);
    }

    #[test]
    fn hard_negatives_survive() {
        let s = scanner();
        for text in [
            "8a0ac984-f71a-4247-a88b-759131db6e32",
            "2024-12-24T20:05:03.376Z",
            "Wed, 07 Feb 2024 07:42:13 GMT",
            "18/Dec/2024:02:14:22 +0000",
            "release 8.6.77 and 111.0.6048.63",
            "The app version 4.28.52.98 crashes",
            "Chrome/126.0.6037.216 Safari/537.36",
            "commit 79f6ae28652eb6fa7cd62de963a8cc7d2cd0e63b",
            "order XCE-7614-0353 id 1069790534 at 1725684578",
            "transaction 2354-9213-5055-8597",
            "Part number 132-74-0000",
            "ref DE32 7655 8662 6179 6762 42",
            "CRM id 111-941-4503 and 126-713-5687",
            "Ticket ref 737336292",
            "Basic membership plan",
        ] {
            assert_eq!(found(&s, text), [], "{text}");
        }
    }

    #[test]
    fn a_rejected_candidate_does_not_hide_a_later_match() {
        let s = scanner();
        // The Luhn-invalid number is rejected; the SSN after it is still found.
        let got = found(&s, "4539-1488-0343-6468 123-45-6789");
        assert_eq!(got, [(PiiType::UsSsn, "123-45-6789".to_string())]);
    }

    #[test]
    fn disabled_types_are_not_compiled() {
        let rules = rules::parse(crate::RULES_JSON).unwrap();
        let mut enabled = [false; PiiType::COUNT];
        enabled[PiiType::Email.index()] = true;
        let s = Scanner::new(&rules.detectors, &enabled).unwrap();
        assert_eq!(found(&s, "a@b.io 123-45-6789").len(), 1);
        let none = Scanner::new(&rules.detectors, &[false; PiiType::COUNT]).unwrap();
        assert_eq!(found(&none, "a@b.io"), []);
    }
}
