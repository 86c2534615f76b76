//! Splitting a streamed request body into records.
//!
//! The body arrives in blocks of arbitrary size: NDJSON (one object a
//! line) or a JSON array of objects. [`Splitter`] finds record boundaries
//! with a byte scanner that tracks strings and nesting, carries a partial
//! record over to the next block, checks each record (a JSON object,
//! syntactically valid, within the size and depth limits) and appends it
//! as one compact NDJSON line to its output. The stored payload is
//! therefore always NDJSON with exactly one record per line, which is what
//! the workers split into parts. Nothing here allocates per record except
//! when a record straddles two blocks.

use serde::de::IgnoredAny;

/// What a record or the body broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// Not valid JSON / NDJSON.
    Malformed { line: u64, message: String },
    /// A record that is valid JSON but not an object.
    NotObject { line: u64, record: u64 },
    /// A record nests deeper than `max_depth`.
    TooDeep { line: u64, record: u64, limit: u32 },
    /// A record is larger than `max_record_bytes`.
    RecordTooLarge { line: u64, record: u64, limit: u64 },
    /// More than `max_records` records.
    TooManyRecords { limit: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    JsonArray,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_record_bytes: u64,
    pub max_records: u64,
    pub max_depth: u32,
}

/// Where the array scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    /// Before `[`.
    Start,
    /// After `[` or `,`: a value or (only right after `[`) `]`.
    ExpectValue { first: bool },
    /// Inside a value.
    InValue,
    /// After a value: `,` or `]`.
    AfterValue,
    /// After the closing `]`: only whitespace.
    Done,
}

pub struct Splitter {
    format: Format,
    limits: Limits,
    /// 1-based line of the input where scanning is.
    line: u64,
    records: u64,
    /// The record being assembled when it straddles blocks (NDJSON: the
    /// raw line; array: the compacted value).
    carry: Vec<u8>,
    /// Line where the carried record started.
    carry_line: u64,
    out: Vec<u8>,
    // Array scanner state.
    state: ArrayState,
    depth: u32,
    max_seen_depth: u32,
    in_string: bool,
    escaped: bool,
}

impl Splitter {
    pub fn new(format: Format, limits: Limits) -> Self {
        Self {
            format,
            limits,
            line: 1,
            records: 0,
            carry: Vec::new(),
            carry_line: 1,
            out: Vec::new(),
            state: ArrayState::Start,
            depth: 0,
            max_seen_depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// The NDJSON produced so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Hands back a buffer from [`Splitter::take_output`] once its bytes
    /// are written, so that the next block's output reuses it. Growing a
    /// fresh buffer for every block was a fifth of the server's time under
    /// load (new pages faulted in and zeroed by the kernel at each
    /// doubling); see docs/performance.md.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.out.is_empty() && buf.capacity() > self.out.capacity() {
            buf.clear();
            self.out = buf;
        }
    }

    pub fn feed(&mut self, block: &[u8]) -> Result<(), SplitError> {
        // The output of a block is at most the block plus a carried-over
        // record and one newline per record: one reservation, no doubling.
        self.out.reserve(block.len() + self.carry.len() + 64);
        match self.format {
            Format::Ndjson => self.feed_ndjson(block),
            Format::JsonArray => self.feed_array(block),
        }
    }

    /// The body ended.
    pub fn finish(&mut self) -> Result<(), SplitError> {
        match self.format {
            Format::Ndjson => {
                if !self.carry.is_empty() {
                    let line = std::mem::take(&mut self.carry);
                    let at = self.carry_line;
                    self.accept_line(&line, at)?;
                }
                Ok(())
            }
            Format::JsonArray => match self.state {
                ArrayState::Done => Ok(()),
                ArrayState::Start => Err(SplitError::Malformed {
                    line: self.line,
                    message: "expected a JSON array of objects, found no array".into(),
                }),
                _ => Err(SplitError::Malformed {
                    line: self.line,
                    message: "unexpected end of input inside the array".into(),
                }),
            },
        }
    }

    fn feed_ndjson(&mut self, block: &[u8]) -> Result<(), SplitError> {
        let mut rest = block;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line_bytes, after) = rest.split_at(nl);
            rest = &after[1..];
            let at = if self.carry.is_empty() {
                self.line
            } else {
                self.carry_line
            };
            if self.carry.is_empty() {
                self.accept_line(line_bytes, at)?;
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(line_bytes);
                self.check_carry_size(line.len(), at)?;
                self.accept_line(&line, at)?;
                line.clear();
                self.carry = line;
            }
            self.line += 1;
        }
        if !rest.is_empty() {
            if self.carry.is_empty() {
                self.carry_line = self.line;
            }
            self.carry.extend_from_slice(rest);
            let at = self.carry_line;
            self.check_carry_size(self.carry.len(), at)?;
        }
        Ok(())
    }

    fn check_carry_size(&self, len: usize, line: u64) -> Result<(), SplitError> {
        // Whitespace around a record does not count, but a line this much
        // over the limit cannot be a record within it.
        if len as u64
            > self
                .limits
                .max_record_bytes
                .saturating_mul(2)
                .saturating_add(1024)
        {
            return Err(SplitError::RecordTooLarge {
                line,
                record: self.records,
                limit: self.limits.max_record_bytes,
            });
        }
        Ok(())
    }

    fn accept_line(&mut self, raw: &[u8], line: u64) -> Result<(), SplitError> {
        let record = trim(raw);
        if record.is_empty() {
            return Ok(());
        }
        if record[0] != b'{' {
            return Err(self.not_object_or_malformed(record, line));
        }
        if record.len() as u64 > self.limits.max_record_bytes {
            return Err(SplitError::RecordTooLarge {
                line,
                record: self.records,
                limit: self.limits.max_record_bytes,
            });
        }
        let depth = max_depth(record);
        if depth > self.limits.max_depth {
            return Err(SplitError::TooDeep {
                line,
                record: self.records,
                limit: self.limits.max_depth,
            });
        }
        check_syntax(record, line)?;
        self.push_record(record)
    }

    fn not_object_or_malformed(&self, record: &[u8], line: u64) -> SplitError {
        match serde_json::from_slice::<IgnoredAny>(record) {
            Ok(_) => SplitError::NotObject {
                line,
                record: self.records,
            },
            Err(e) => malformed(line, &e),
        }
    }

    fn push_record(&mut self, record: &[u8]) -> Result<(), SplitError> {
        if self.records >= self.limits.max_records {
            return Err(SplitError::TooManyRecords {
                limit: self.limits.max_records,
            });
        }
        self.records += 1;
        self.out.extend_from_slice(record);
        self.out.push(b'\n');
        Ok(())
    }

    fn feed_array(&mut self, block: &[u8]) -> Result<(), SplitError> {
        let mut i = 0;
        while i < block.len() {
            let b = block[i];
            match self.state {
                ArrayState::InValue => {
                    // Copy the value compactly: whitespace outside strings
                    // is dropped so the record fits on one line.
                    let mut start = i;
                    let mut finished = false;
                    while i < block.len() {
                        let c = block[i];
                        i += 1;
                        if self.in_string {
                            if self.escaped {
                                self.escaped = false;
                            } else if c == b'\\' {
                                self.escaped = true;
                            } else if c == b'"' {
                                self.in_string = false;
                            } else if c == b'\n' {
                                self.line += 1;
                            }
                            continue;
                        }
                        match c {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => {
                                self.depth += 1;
                                self.max_seen_depth = self.max_seen_depth.max(self.depth);
                            }
                            b'}' | b']' => {
                                self.depth = self.depth.saturating_sub(1);
                                if self.depth == 0 {
                                    finished = true;
                                    break;
                                }
                            }
                            b' ' | b'\t' | b'\r' | b'\n' => {
                                if c == b'\n' {
                                    self.line += 1;
                                }
                                self.carry.extend_from_slice(&block[start..i - 1]);
                                start = i;
                            }
                            _ => {}
                        }
                    }
                    self.carry.extend_from_slice(&block[start..i]);
                    if self.carry.len() as u64 > self.limits.max_record_bytes {
                        return Err(SplitError::RecordTooLarge {
                            line: self.carry_line,
                            record: self.records,
                            limit: self.limits.max_record_bytes,
                        });
                    }
                    if finished {
                        self.end_value()?;
                    }
                    continue;
                }
                _ if matches!(b, b' ' | b'\t' | b'\r') => {}
                _ if b == b'\n' => self.line += 1,
                ArrayState::Start => {
                    if b != b'[' {
                        return Err(if b == b'{' {
                            SplitError::Malformed {
                                line: self.line,
                                message: "expected a JSON array of objects, found a single object (send [ {...} ] or use application/x-ndjson)".into(),
                            }
                        } else {
                            SplitError::Malformed {
                                line: self.line,
                                message: "expected a JSON array of objects".into(),
                            }
                        });
                    }
                    self.state = ArrayState::ExpectValue { first: true };
                }
                ArrayState::ExpectValue { first } => {
                    if b == b']' && first {
                        self.state = ArrayState::Done;
                    } else if b == b'{' {
                        self.state = ArrayState::InValue;
                        self.carry.clear();
                        self.carry_line = self.line;
                        self.depth = 0;
                        self.max_seen_depth = 0;
                        // Re-scan this byte inside the value.
                        continue;
                    } else if b == b']' {
                        return Err(SplitError::Malformed {
                            line: self.line,
                            message: "trailing comma before `]`".into(),
                        });
                    } else {
                        return Err(self.array_element_not_object(block, i));
                    }
                }
                ArrayState::AfterValue => match b {
                    b',' => self.state = ArrayState::ExpectValue { first: false },
                    b']' => self.state = ArrayState::Done,
                    _ => {
                        return Err(SplitError::Malformed {
                            line: self.line,
                            message: "expected `,` or `]` after an array element".into(),
                        });
                    }
                },
                ArrayState::Done => {
                    return Err(SplitError::Malformed {
                        line: self.line,
                        message: "unexpected data after the closing `]`".into(),
                    });
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn array_element_not_object(&self, block: &[u8], i: usize) -> SplitError {
        let looks_like_value = matches!(
            block[i],
            b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
        );
        if looks_like_value {
            SplitError::NotObject {
                line: self.line,
                record: self.records,
            }
        } else {
            SplitError::Malformed {
                line: self.line,
                message: "expected an object or `]`".into(),
            }
        }
    }

    fn end_value(&mut self) -> Result<(), SplitError> {
        let line = self.carry_line;
        if self.max_seen_depth > self.limits.max_depth {
            return Err(SplitError::TooDeep {
                line,
                record: self.records,
                limit: self.limits.max_depth,
            });
        }
        let record = std::mem::take(&mut self.carry);
        check_syntax(&record, line)?;
        self.push_record(&record)?;
        self.carry = record;
        self.carry.clear();
        self.state = ArrayState::AfterValue;
        Ok(())
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

/// Deepest nesting of `{`/`[` outside strings. String contents are
/// skipped with `memchr` (from quote or backslash to the next), which most
/// of a record's bytes are.
fn max_depth(record: &[u8]) -> u32 {
    let mut depth = 0u32;
    let mut max = 0u32;
    let mut i = 0;
    while let Some(&c) = record.get(i) {
        i += 1;
        match c {
            b'"' => loop {
                // An unterminated string: the syntax check reports it.
                let Some(rest) = record.get(i..) else {
                    return max;
                };
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(p) if rest[p] == b'\\' => i += p + 2,
                    Some(p) => {
                        i += p + 1;
                        break;
                    }
                    None => return max,
                }
            },
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn check_syntax(record: &[u8], line: u64) -> Result<(), SplitError> {
    // Depth was checked first and max_depth is at most 128, serde_json's
    // own recursion limit.
    let mut de = serde_json::Deserializer::from_slice(record);
    serde::Deserialize::deserialize(&mut de)
        .and_then(|_: IgnoredAny| de.end())
        .map_err(|e| malformed(line, &e))
}

fn malformed(line: u64, e: &serde_json::Error) -> SplitError {
    SplitError::Malformed {
        line: line + e.line().saturating_sub(1) as u64,
        message: format!("invalid JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_record_bytes: 1 << 20,
        max_records: 1_000_000,
        max_depth: 8,
    };

    fn split_all(
        format: Format,
        body: &[u8],
        block: usize,
        limits: Limits,
    ) -> Result<(Vec<u8>, u64), SplitError> {
        // As `pump` does: each block's output is handed back for reuse.
        let mut s = Splitter::new(format, limits);
        let mut out = Vec::new();
        for chunk in body.chunks(block.max(1)) {
            s.feed(chunk)?;
            let produced = s.take_output();
            out.extend_from_slice(&produced);
            s.recycle(produced);
        }
        s.finish()?;
        out.extend(s.take_output());
        Ok((out, s.records()))
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(max_depth(br#"{"a":"[[{{","b":[1,{"c":"\\"}]}"#), 3);
        assert_eq!(max_depth(br#"{"a":"x\"[[[\"","b":{}}"#), 2);
        assert_eq!(max_depth(br#"{"a":"\\\\","b":[[]]}"#), 3);
        assert_eq!(max_depth(br#"{"a":"unterminated [[["#), 1);
        assert_eq!(max_depth(br#"{"a":"ends in a backslash\"#), 1);
        assert_eq!(max_depth(b"[[[[]]]]"), 4);
    }

    #[test]
    fn the_output_buffer_is_reused_across_blocks() {
        let mut s = Splitter::new(Format::Ndjson, LIMITS);
        s.feed(b"{\"a\":1}\n{\"b\":2}\n").unwrap();
        let first = s.take_output();
        assert_eq!(first, b"{\"a\":1}\n{\"b\":2}\n");
        let (ptr, cap) = (first.as_ptr(), first.capacity());
        s.recycle(first);
        s.feed(b"{\"c\":3}\n").unwrap();
        let second = s.take_output();
        assert_eq!(second, b"{\"c\":3}\n", "nothing of the first block is left");
        assert_eq!((second.as_ptr(), second.capacity()), (ptr, cap));
    }

    #[test]
    fn ndjson_lines_become_records() {
        let body = b"{\"a\":1}\r\n\n  {\"b\":[1,2]}  \n{\"c\":\"x\"}";
        for block in [1, 2, 3, 7, 100] {
            let (out, n) = split_all(Format::Ndjson, body, block, LIMITS).unwrap();
            assert_eq!(n, 3);
            assert_eq!(out, b"{\"a\":1}\n{\"b\":[1,2]}\n{\"c\":\"x\"}\n");
        }
    }

    #[test]
    fn arrays_become_compact_lines() {
        let body = b" [\n {\"a\": 1,\n  \"s\": \"x y\\\"}]\"},\n {\"b\": {\"c\": [ 1, 2 ]}}\n]\n";
        for block in [1, 2, 5, 64] {
            let (out, n) = split_all(Format::JsonArray, body, block, LIMITS).unwrap();
            assert_eq!(n, 2, "block {block}");
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "{\"a\":1,\"s\":\"x y\\\"}]\"}\n{\"b\":{\"c\":[1,2]}}\n"
            );
        }
        assert_eq!(split_all(Format::JsonArray, b"[]", 1, LIMITS).unwrap().1, 0);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let err = split_all(Format::Ndjson, b"{\"a\":1}\n{\"a\":}\n", 4, LIMITS).unwrap_err();
        assert!(
            matches!(err, SplitError::Malformed { line: 2, .. }),
            "{err:?}"
        );
        let err = split_all(Format::Ndjson, b"{\"a\":1}\n\n[1]\n", 64, LIMITS).unwrap_err();
        assert_eq!(err, SplitError::NotObject { line: 3, record: 1 });
        let err = split_all(Format::Ndjson, b"{\"a\":1} {\"b\":2}\n", 64, LIMITS).unwrap_err();
        assert!(
            matches!(err, SplitError::Malformed { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn array_errors() {
        for (body, line) in [
            (&b"[{\"a\":1},]"[..], 1),
            (b"[{\"a\":1}\n{\"b\":2}]", 2),
            (b"{\"a\":1}", 1),
            (b"[{\"a\":1}] x", 1),
            (b"[{\"a\":1}", 1),
            (b"[{\"a\" 1}]", 1),
        ] {
            let err = split_all(Format::JsonArray, body, 3, LIMITS).unwrap_err();
            assert!(
                matches!(err, SplitError::Malformed { line: l, .. } if l == line),
                "{body:?}: {err:?}"
            );
        }
        let err = split_all(Format::JsonArray, b"[{\"a\":1}, 5]", 3, LIMITS).unwrap_err();
        assert_eq!(err, SplitError::NotObject { line: 1, record: 1 });
    }

    #[test]
    fn limits_are_enforced() {
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(10),
            "1".to_owned() + &"}".repeat(10)
        );
        for format in [Format::Ndjson, Format::JsonArray] {
            let body = match format {
                Format::Ndjson => deep.clone(),
                Format::JsonArray => format!("[{deep}]"),
            };
            let err = split_all(format, body.as_bytes(), 4, LIMITS).unwrap_err();
            assert!(
                matches!(err, SplitError::TooDeep { limit: 8, .. }),
                "{err:?}"
            );
        }
        let small = Limits {
            max_record_bytes: 10,
            ..LIMITS
        };
        let err = split_all(Format::Ndjson, b"{\"a\":\"0123456789\"}\n", 64, small).unwrap_err();
        assert!(matches!(err, SplitError::RecordTooLarge { limit: 10, .. }));
        let err = split_all(Format::JsonArray, b"[{\"a\":\"0123456789\"}]", 4, small).unwrap_err();
        assert!(matches!(err, SplitError::RecordTooLarge { limit: 10, .. }));
        let few = Limits {
            max_records: 2,
            ..LIMITS
        };
        let err = split_all(Format::Ndjson, b"{}\n{}\n{}\n", 64, few).unwrap_err();
        assert_eq!(err, SplitError::TooManyRecords { limit: 2 });
    }

    #[test]
    fn a_huge_line_is_refused_without_buffering_it() {
        let small = Limits {
            max_record_bytes: 100,
            ..LIMITS
        };
        let mut s = Splitter::new(Format::Ndjson, small);
        let block = vec![b' '; 5000];
        let err = s.feed(&block).unwrap_err();
        assert!(matches!(err, SplitError::RecordTooLarge { .. }));
    }

    proptest! {
        #[test]
        fn any_block_size_gives_the_same_records(
            records in proptest::collection::vec(
                proptest::collection::btree_map("[a-z\\\\\"{}\\[\\] ]{0,6}", any::<i32>(), 0..4), 0..20),
            block in 1usize..50,
        ) {
            let lines: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
            let ndjson = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
            let pretty = serde_json::to_string_pretty(&records).unwrap();
            let (a, n) = split_all(Format::Ndjson, ndjson.as_bytes(), block, LIMITS).unwrap();
            let (b, m) = split_all(Format::JsonArray, pretty.as_bytes(), block, LIMITS).unwrap();
            prop_assert_eq!(n as usize, records.len());
            prop_assert_eq!(m as usize, records.len());
            prop_assert_eq!(&a, ndjson.as_bytes());
            prop_assert_eq!(&b, ndjson.as_bytes());
        }
    }
}
