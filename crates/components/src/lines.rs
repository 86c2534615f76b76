//! Records edited as their NDJSON lines, without a `serde_json::Value`.
//!
//! Parsing a record into a `Value`, editing it and writing it out again
//! costs several times what the edits of a typical pipeline do, and most of
//! a record passes through unchanged. When every processor of a pipeline
//! can work on lines (`redact`, and `map` whose ops all name top-level
//! members; see [`crate::Stage::takes_lines`]), a record goes from one
//! processor to the next as JSON text: `map` splits the object into its
//! top-level members (checking the whole line on the way), edits that
//! list and joins it again; `redact` rewrites the strings it changes
//! (`sluice_pii::Redactor::redact_json_line`).
//!
//! The result is the same JSON value as the `Value` path gives; members
//! keep their order and spelling, and a member that is added goes last.
//! Whatever this path does not reproduce exactly — a line serde_json
//! would reject or read differently (duplicate keys, numbers it may not
//! hold, very deep nesting), an op that fails — makes a processor give
//! up on the line, and the record takes the `Value` path from its
//! original line, which also reports the errors.

use std::borrow::Cow;

/// Nesting deeper than this goes the `Value` way (serde_json stops at 128).
const MAX_DEPTH: usize = 100;
/// Objects with more keys than this go the `Value` way.
const MAX_KEYS: usize = 256;

/// A top-level member of a record: its key, decoded, and its value as JSON
/// text (no surrounding whitespace).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member<'a> {
    pub key: Cow<'a, str>,
    pub value: Cow<'a, str>,
}

/// The members of the JSON object that is the whole of `line`, in order;
/// `None` when serde_json would reject the line, read it differently from
/// its text (a duplicate key at any depth keeps only the last), or might
/// (see the constants above), or when it is not an object.
pub(crate) fn members(line: &[u8]) -> Option<Vec<Member<'_>>> {
    let text = std::str::from_utf8(line).ok()?;
    let mut s = Scan {
        b: line,
        text,
        pos: 0,
        depth: 1,
        keys: Vec::new(),
    };
    s.skip_ws();
    if s.peek() != Some(b'{') {
        return None;
    }
    s.pos += 1;
    let mut out: Vec<Member<'_>> = Vec::with_capacity(16);
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.skip_ws();
            let key = s.key()?;
            if out.len() >= MAX_KEYS || out.iter().any(|m| m.key == key) {
                return None;
            }
            s.expect(b':')?;
            s.skip_ws();
            let start = s.pos;
            s.value()?;
            out.push(Member {
                key,
                value: Cow::Borrowed(&text[start..s.pos]),
            });
            if s.next_or_close(b'}')? {
                break;
            }
        }
    }
    s.skip_ws();
    (s.pos == line.len()).then_some(out)
}

/// Appends `{"k":v,...}` for `members`, with `append` (key, string value)
/// as the last member when given.
pub(crate) fn write_object(
    members: &[Member<'_>],
    append: Option<(&str, &str)>,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, &m.key);
        out.push(b':');
        out.extend_from_slice(m.value.as_bytes());
    }
    if let Some((k, v)) = append {
        if !members.is_empty() {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_str(out, v);
    }
    out.push(b'}');
}

/// `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    if sluice_pii::json_plain_end(s.as_bytes(), 0) == s.len() {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The string a member value holds, when it is a JSON string.
pub(crate) fn string_value<'v>(value: &'v str) -> Option<Cow<'v, str>> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(value).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

struct Scan<'a> {
    b: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
    /// The keys of the open nested objects, innermost last.
    keys: Vec<Cow<'a, str>>,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.skip_ws();
        (self.peek() == Some(b)).then(|| self.pos += 1)
    }

    /// After a member or element: past a comma (false) or past `close`
    /// (true); anything else is refused.
    fn next_or_close(&mut self, close: u8) -> Option<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Some(false)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Some(true)
            }
            _ => None,
        }
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(),
            b'[' => self.array(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A key at `pos`, decoded.
    fn key(&mut self) -> Option<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let open = self.pos;
        let escaped = self.string()?;
        let raw = &self.text[open..self.pos];
        if escaped {
            serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&raw[1..raw.len() - 1]))
        }
    }

    /// Moves past the string whose quote is at `pos`; returns whether it
    /// has escapes. Checks every escape as serde_json does (a surrogate
    /// escape must be a pair) and refuses control characters.
    fn string(&mut self) -> Option<bool> {
        let mut i = self.pos + 1;
        let mut escaped = false;
        loop {
            i = sluice_pii::json_plain_end(self.b, i);
            match *self.b.get(i)? {
                b'"' => {
                    self.pos = i + 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    i = self.escape(i + 1)?;
                }
                // A control character.
                _ => return None,
            }
        }
    }

    /// The escape after the backslash at `i - 1`; returns where it ends.
    fn escape(&self, i: usize) -> Option<usize> {
        match *self.b.get(i)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 1),
            b'u' => {
                let n = self.hex4(i + 1)?;
                match n {
                    0xD800..=0xDBFF => {
                        if self.b.get(i + 5..i + 7)? != b"\\u" {
                            return None;
                        }
                        let low = self.hex4(i + 7)?;
                        (0xDC00..=0xDFFF).contains(&low).then_some(i + 11)
                    }
                    0xDC00..=0xDFFF => None,
                    _ => Some(i + 5),
                }
            }
            _ => None,
        }
    }

    fn hex4(&self, at: usize) -> Option<u16> {
        let digits = std::str::from_utf8(self.b.get(at..at + 4)?).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(digits, 16).ok()
    }

    fn object(&mut self) -> Option<()> {
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let base = self.keys.len();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                let key = self.key()?;
                let seen = &self.keys[base..];
                if seen.len() >= MAX_KEYS || seen.contains(&key) {
                    return None;
                }
                self.keys.push(key);
                self.expect(b':')?;
                self.skip_ws();
                self.value()?;
                if self.next_or_close(b'}')? {
                    break;
                }
            }
        }
        self.keys.truncate(base);
        self.depth -= 1;
        Some(())
    }

    fn array(&mut self) -> Option<()> {
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                self.value()?;
                if self.next_or_close(b']')? {
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.pos..]
            .starts_with(word)
            .then(|| self.pos += word.len())
    }

    /// A number serde_json certainly reads as a finite one
    /// (`sluice_pii::json_number_end`).
    fn number(&mut self) -> Option<()> {
        self.pos = sluice_pii::json_number_end(self.b, self.pos)?;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    /// What `members` + `write_object` make of a line, parsed; or `None`
    /// when the line was refused.
    fn round_trip(line: &str) -> Option<Value> {
        let m = members(line.as_bytes())?;
        let mut out = Vec::new();
        write_object(&m, None, &mut out);
        Some(serde_json::from_slice(&out).unwrap())
    }

    /// Accepted lines read back as serde_json reads them; refused ones are
    /// refused by serde_json, or are among the shapes left to it.
    fn agrees(line: &str) -> bool {
        let want = serde_json::from_str::<Value>(line)
            .ok()
            .filter(Value::is_object);
        match round_trip(line) {
            Some(got) => {
                assert_eq!(Some(&got), want.as_ref(), "{line}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn common_shapes_are_taken() {
        for line in [
            "{}",
            " { } ",
            r#"{"a":1,"b":[1,-2,3.5,-0,0.25e-3,1E+2],"t":true,"f":false,"z":null}"#,
            r#"{"nested":[[[]],[{}],{"a":[{"b":"x"}]}],"s":"caf\u00e9 \ud83d\ude00 \"q\"\n\/"}"#,
            r#"{"k\u0065y":1,"o":{"a":1,"b":{"a":2}}}"#,
            "{\"a\" : \"b\" ,\r\n \"b\" :\t[ 1 , 2 ] }\r",
        ] {
            assert!(agrees(line), "refused {line}");
        }
        let m = members(br#"{ "a" : [1, 2] , "b\u0063":"x" }"#).unwrap();
        assert_eq!(m[0].key, "a");
        assert_eq!(m[0].value, "[1, 2]");
        assert_eq!(m[1].key, "bc");
        assert_eq!(m[1].value, r#""x""#);
    }

    #[test]
    fn what_serde_rejects_or_may_read_differently_is_refused() {
        for line in [
            "",
            "nope",
            "[1]",
            "\"x\"",
            "{\"a\":1} x",
            "{\"a\":1}{}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":1e}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":[1,]}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\" 1}",
            "{'a':1}",
            "{\"a\":tru}",
            "{\"a\":True}",
            "{\"a\":1e999}",
            "{\"a\":100000000000000000000000000000}",
            "{\"a\":1,\"a\":2}",
            "{\"a\":1,\"\\u0061\":2}",
            "{\"o\":{\"b\":1,\"b\":2}}",
            "{\"a\":\"\\u00g0\"}",
        ] {
            assert!(round_trip(line).is_none(), "took {line:?}");
        }
        assert!(members(b"{\"a\":\"\xff\"}").is_none());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(120), "]".repeat(120));
        assert!(round_trip(&deep).is_none());
    }

    #[test]
    fn written_keys_and_strings_read_back() {
        for s in ["plain", "", "q\"b\\s\u{1}\n\t", "ünï/😀", "\u{7f}"] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
            assert_eq!(out, serde_json::to_vec(s).unwrap());
            assert_eq!(string_value(std::str::from_utf8(&out).unwrap()).unwrap(), s);
        }
        assert_eq!(string_value("12"), None);
        let mut out = Vec::new();
        write_object(&[], Some(("id", "x")), &mut out);
        assert_eq!(out, br#"{"id":"x"}"#);
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1.0e6f64..1.0e6).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\x00-\\x20\"\\\\]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[a-c]{1,2}|\\PC{1,4}", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_serialized_object_is_taken_and_reads_back(
            kv in prop::collection::vec(("[a-e]{1,2}|\\PC{1,4}", value()), 0..8)
        ) {
            let record = Value::Object(kv.into_iter().collect::<Map<_, _>>());
            let compact = serde_json::to_string(&record).unwrap();
            let pretty = serde_json::to_string_pretty(&record).unwrap().replace('\n', " \t");
            for line in [&compact, &pretty] {
                prop_assert!(agrees(line), "refused {line}");
                prop_assert_eq!(round_trip(line), Some(record.clone()));
            }
        }

        #[test]
        fn nothing_serde_rejects_is_taken(
            kv in prop::collection::vec(("[a-e]{1,2}", value()), 0..6),
            cut in any::<prop::sample::Index>(),
            junk in prop::sample::select(&[
                "", "\"", "\\", "\\u", "\\ud800", "}", "]", ",", ":", "\u{1}", "01", "-", "1.",
                "1e", "tru", "nul", "{", "[", "\"a\":", "1e999", "x", "\"a\":1,",
            ][..]),
        ) {
            let line = serde_json::to_string(&Value::Object(kv.into_iter().collect())).unwrap();
            let at = cut.index(line.len() + 1);
            let at = (0..=at).rev().find(|i| line.is_char_boundary(*i)).unwrap();
            agrees(&format!("{}{junk}{}", &line[..at], &line[at..]));
        }
    }

    #[test]
    fn a_record_of_the_standard_events_is_taken() {
        let line = json!({
            "ts": "2026-01-01T00:00:00Z", "id": "5b0e", "level": "info", "service": "api",
            "message": "user signed in", "user": {"id": 7, "email": "a@b.io"},
            "http": {"status": 200, "latency_ms": 12.5}, "items": [{"sku": "X", "qty": 1}],
            "tags": ["a", "b"], "debug": false
        })
        .to_string();
        assert!(agrees(&line));
    }
}
