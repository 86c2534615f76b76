//! Redacting one NDJSON line straight from its bytes.
//!
//! Building a `serde_json::Value` for every record, walking it and writing
//! it out again costs about as much as the detection itself, and almost
//! all of that work is wasted: most string values come out unchanged, and
//! numbers, literals, keys and whitespace never change. So the redact-only
//! path checks the line's JSON grammar in one pass, tracks the context the
//! engine needs (the field name, its parent's name, the JSON pointer for
//! `skip`, the `{"name": ..., "value": ...}` sibling), hands each string
//! value to the same [`Redactor::redact_field`] the record walk uses, and
//! copies every byte it does not replace through verbatim.
//!
//! The findings are the record walk's, by construction: every string sees
//! the same key, parent and sibling. The output is the same JSON value as
//! the walk's (members keep their input order, and numbers and escapes
//! their input spelling). Whatever this pass does not reproduce exactly —
//! invalid JSON, duplicate keys, very deep nesting, unusual numbers, a
//! value the config removes, `only` pointers with array indexes or inside
//! one another — makes it give up, and the caller takes the `Value` path,
//! which also reports the errors.

use std::borrow::Cow;

use crate::engine::{Outcome, Redactor, Work};
use crate::types::WordHash;

/// Nesting deeper than this goes the `Value` way (serde_json stops at 128).
const MAX_DEPTH: usize = 100;
/// Numbers longer than this, or with a three-digit exponent, go the
/// `Value` way, which decides whether they are in range.
const MAX_NUMBER_LEN: usize = 24;
/// Objects with more keys than this go the `Value` way (duplicate keys are
/// looked for by comparing each key's hash with the ones before it).
const MAX_KEYS: usize = 256;

/// The line must take the `Value` path.
struct GiveUp;

type Step<T = ()> = Result<T, GiveUp>;

struct Pass<'a, 'r> {
    r: &'r Redactor,
    line: &'a [u8],
    text: &'a str,
    pos: usize,
    /// Input before this offset is already in `out` (or was replaced).
    copied: usize,
    out: &'a mut Vec<u8>,
    w: &'a mut Work,
    depth: usize,
    /// Whether `skip` pointers are set, so the path must be tracked.
    track: bool,
    /// The JSON pointer tokens of the current value: `path[..path_len]`;
    /// the strings beyond are kept for their buffers.
    path: Vec<String>,
    path_len: usize,
    /// Key hashes of the open objects, innermost last.
    keys: Vec<u64>,
    /// A top-level key the line must not have.
    reserved: Option<&'a str>,
    /// The `only` pointers when the config has them: only the values at
    /// these paths (and everything inside them) are scanned.
    only: Option<&'r [Vec<String>]>,
}

impl Redactor {
    /// Redacts one NDJSON line holding a JSON object and appends the
    /// redacted object to `out`, with `append` (key, string value) added as
    /// its last top-level member when given. Every string value sees the
    /// same detectors and field context as in [`Redactor::redact_record`];
    /// all other bytes are copied as they are, so members keep their order
    /// and numbers their spelling.
    ///
    /// Returns false, leaving `out` as it was, when the line has to go
    /// through `serde_json::Value` and [`Redactor::redact_record`] instead:
    /// it is not a valid JSON object, has a duplicate key or an object with more
    /// than 256 keys, nests deeper than 100 levels, has a number longer than 24 characters or with a
    /// three-digit exponent, already has the `append` key at the top
    /// level, or has a value that the config removes; and for every line
    /// when the config's `only` pointers are not all plain member paths
    /// that do not nest (see [`Redactor::lines_supported`]).
    pub fn redact_json_line(
        &self,
        line: &[u8],
        append: Option<(&str, &str)>,
        out: &mut Vec<u8>,
    ) -> bool {
        let only = if self.resolved.only.is_empty() {
            None
        } else if self.only_lines {
            Some(self.resolved.only.as_slice())
        } else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        let start = out.len();
        let mut w = self.work();
        let track = !self.resolved.skip.is_empty();
        let mut pass = Pass {
            r: self,
            line,
            text,
            pos: 0,
            copied: 0,
            out,
            w: &mut w,
            depth: 0,
            track,
            path: Vec::new(),
            path_len: 0,
            keys: Vec::new(),
            reserved: append.map(|(k, _)| k),
            only,
        };
        let ok = pass.record(append).is_ok();
        drop(pass);
        self.end_work(w);
        if !ok {
            out.truncate(start);
        }
        ok
    }
}

impl<'a> Pass<'a, '_> {
    fn record(&mut self, append: Option<(&str, &str)>) -> Step {
        self.skip_ws();
        if self.peek() != Some(b'{') {
            return Err(GiveUp);
        }
        self.copied = self.pos;
        let skip_all = self.track && self.r.resolved.skip.iter().any(Vec::is_empty);
        if skip_all && self.only.is_some() {
            // Nothing is scanned (as in the record walk); the line is
            // still checked and copied.
            self.only = Some(&[]);
        }
        let redact = !skip_all && self.only.is_none();
        // Every `only` pointer starts out matching the (empty) path.
        let mask = match self.only.map(<[_]>::len) {
            Some(0) | None => 0,
            Some(n) => u64::MAX >> (64 - n.min(64)),
        };
        let members = self.object(None, redact, mask)?;
        let close = self.pos - 1;
        self.skip_ws();
        if self.pos != self.line.len() {
            return Err(GiveUp);
        }
        match append {
            None => self.copy_to(close + 1),
            Some((key, value)) => {
                // Everything up to the closing brace, then the new member.
                self.copy_to(close);
                if members > 0 {
                    self.out.push(b',');
                }
                write_json_str(self.out, key);
                self.out.push(b':');
                write_json_str(self.out, value);
                self.out.push(b'}');
            }
        }
        Ok(())
    }

    /// Whether the current value's path is one of `pointers`.
    fn at_any(&self, pointers: &[Vec<String>]) -> bool {
        let here = &self.path[..self.path_len];
        pointers.iter().any(|p| p.as_slice() == here)
    }

    /// For member `k` of an object at depth `self.depth`, with `mask` the
    /// pointers matching the object's path: whether the member is scanned
    /// (it is at a pointer, or `redact` already), and the pointers that
    /// match its path and go deeper.
    fn follow_only(&self, only: &[Vec<String>], mask: u64, k: &str, redact: bool) -> (bool, u64) {
        let level = self.depth - 1;
        let (mut hit, mut deeper) = (redact, 0u64);
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            if only[i].get(level).is_some_and(|t| t == k) {
                if only[i].len() == level + 1 {
                    hit = true;
                } else {
                    deeper |= 1 << i;
                }
            }
        }
        (hit, deeper)
    }

    fn push_path(&mut self, token: &str) {
        match self.path.get_mut(self.path_len) {
            Some(slot) => {
                slot.clear();
                slot.push_str(token);
            }
            None => self.path.push(token.to_owned()),
        }
        self.path_len += 1;
    }

    fn push_index(&mut self, index: usize) {
        use std::fmt::Write;
        if self.path_len == self.path.len() {
            self.path.push(String::new());
        }
        let slot = &mut self.path[self.path_len];
        slot.clear();
        // Writing to a String cannot fail.
        let _ = write!(slot, "{index}");
        self.path_len += 1;
    }

    fn peek(&self) -> Option<u8> {
        self.line.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Step {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// After a member or element: past a comma (false) or past `close`
    /// (true); anything else gives up.
    fn next_or_close(&mut self, close: u8) -> Step<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(false)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(GiveUp),
        }
    }

    fn copy_to(&mut self, end: usize) {
        if end > self.copied {
            self.out.extend_from_slice(&self.line[self.copied..end]);
            self.copied = end;
        }
    }

    /// One value starting at `pos` (after whitespace), with the field
    /// context of [`Redactor::redact_record`]'s walk.
    /// `mask`: the `only` pointers whose tokens so far match the path of
    /// this value and that go deeper (bit i for pointer i).
    fn value(
        &mut self,
        key: Option<&str>,
        parent: Option<&str>,
        mut redact: bool,
        mask: u64,
    ) -> Step {
        if redact && self.track && self.at_any(&self.r.resolved.skip) {
            redact = false;
        }
        match self.peek() {
            Some(b'"') => {
                let open = self.pos;
                let escaped = self.string()?;
                if redact {
                    let s = self.decode(open, escaped)?;
                    match self.r.redact_field(&s, key, parent, self.w) {
                        Outcome::Keep => {}
                        Outcome::Replace(new) => {
                            self.copy_to(open);
                            write_json_str(self.out, &new);
                            self.copied = self.pos;
                        }
                        Outcome::Remove => return Err(GiveUp),
                    }
                }
                Ok(())
            }
            Some(b'{') => self.object(key, redact, mask).map(drop),
            Some(b'[') => self.array(key, parent, redact),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(GiveUp),
        }
    }

    /// The object at `pos`; `key` is the name it is held under. Returns
    /// the number of members.
    fn object(&mut self, key: Option<&str>, redact: bool, mask: u64) -> Step<usize> {
        let open = self.pos;
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        let base = self.keys.len();
        let mut members = 0;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.peek() != Some(b'"') {
                    return Err(GiveUp);
                }
                let at = self.pos;
                let escaped = self.string()?;
                let k = self.decode(at, escaped)?;
                self.check_key(base, &k)?;
                self.expect(b':')?;
                self.skip_ws();
                // `{"name": "password", "value": "..."}`: the value is
                // judged under the name its sibling gives it.
                let sibling = if redact && k == "value" && self.peek() == Some(b'"') {
                    sibling_name(self.r, self.text, open)
                } else {
                    None
                };
                let ctx = sibling.as_deref().unwrap_or(&k);
                if self.track {
                    self.push_path(&k);
                }
                // An `only` pointer turns scanning on for its value, which
                // is judged under its own name (no sibling).
                let (here, deeper) = match (mask, self.only) {
                    (0, _) | (_, None) => (redact, 0),
                    (m, Some(only)) => self.follow_only(only, m, &k, redact),
                };
                self.value(Some(ctx), key, here, deeper)?;
                if self.track {
                    self.path_len -= 1;
                }
                members += 1;
                if self.next_or_close(b'}')? {
                    break;
                }
            }
        }
        self.keys.truncate(base);
        self.depth -= 1;
        Ok(members)
    }

    /// Gives up on a duplicate key (serde_json keeps only the last one) and
    /// on the reserved top-level key.
    fn check_key(&mut self, base: usize, k: &str) -> Step {
        if self.depth == 1 && self.reserved == Some(k) {
            return Err(GiveUp);
        }
        let h = {
            use std::hash::Hasher;
            let mut f = WordHash::default();
            f.write(k.as_bytes());
            f.finish()
        };
        let seen = &self.keys[base..];
        // Equal hashes are taken as equal keys: a rare false alarm only
        // costs the `Value` path.
        if seen.len() >= MAX_KEYS || seen.contains(&h) {
            return Err(GiveUp);
        }
        self.keys.push(h);
        Ok(())
    }

    fn array(&mut self, key: Option<&str>, parent: Option<&str>, redact: bool) -> Step {
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            let mut index = 0usize;
            loop {
                self.skip_ws();
                if self.track {
                    self.push_index(index);
                }
                // `only` pointers name members by key, never array items.
                self.value(key, parent, redact, 0)?;
                if self.track {
                    self.path_len -= 1;
                }
                index += 1;
                if self.next_or_close(b']')? {
                    break;
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Step {
        if self.line[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    fn number(&mut self) -> Step {
        self.pos = number_end(self.line, self.pos).ok_or(GiveUp)?;
        Ok(())
    }

    /// Moves past the string whose opening quote is at `pos`; returns
    /// whether it has escapes. Control characters give up, as in serde_json.
    fn string(&mut self) -> Step<bool> {
        let mut i = self.pos + 1;
        let mut escaped = false;
        loop {
            i = skip_plain(self.line, i);
            match self.line.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    // The escape itself is checked when decoding.
                    i += 2;
                }
                _ => return Err(GiveUp),
            }
        }
    }

    /// The text of the string that opened at `open` and ended at `pos`.
    fn decode(&self, open: usize, escaped: bool) -> Step<Cow<'a, str>> {
        let inner = &self.text[open + 1..self.pos - 1];
        if escaped {
            unescape(inner).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(inner))
        }
    }
}

/// The end of the JSON number starting at `i`, when it is
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` and short enough that
/// serde_json certainly reads it as a finite number (at most
/// `MAX_NUMBER_LEN` bytes, an exponent of at most two digits); `None`
/// otherwise.
pub fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i + 1),
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i || end - i > 2 {
            return None;
        }
        i = end;
    }
    (i - start <= MAX_NUMBER_LEN).then_some(i)
}

/// Index of the first byte at or after `i` that is a quote, a backslash or
/// a control character (or `s.len()`).
pub fn skip_plain(s: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Eight bytes at a time: a byte is special when it is < 0x20, '"' or
    // '\\' (the usual has-zero-byte trick on x ^ c and on x - 0x20). A
    // borrow can only mark bytes above a special one, so the lowest mark
    // is exact.
    while let Some(chunk) = s.get(i..i + 8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let x = u64::from_le_bytes(b);
        let has_zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
        let special = has_zero(x ^ (LO * u64::from(b'"')))
            | has_zero(x ^ (LO * u64::from(b'\\')))
            | (x.wrapping_sub(LO * 0x20) & !x & HI);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// Decodes the escapes of a JSON string body, as strictly as serde_json
/// does for a `String` (surrogates must pair).
fn unescape(s: &str) -> Step<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let Some(off) = memchr::memchr(b'\\', &b[i..]) else {
            out.push_str(&s[i..]);
            break;
        };
        out.push_str(&s[i..i + off]);
        i += off + 1;
        let c = match b.get(i) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = hex4(b, i + 1)?;
                i += 5;
                let code = match hi {
                    0xD800..=0xDBFF => {
                        if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                            return Err(GiveUp);
                        }
                        let lo = hex4(b, i + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(GiveUp);
                        }
                        i += 6;
                        0x1_0000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(GiveUp),
                    n => u32::from(n),
                };
                out.push(char::from_u32(code).ok_or(GiveUp)?);
                continue;
            }
            _ => return Err(GiveUp),
        };
        out.push(c);
        i += 1;
    }
    Ok(out)
}

fn hex4(b: &[u8], at: usize) -> Step<u16> {
    let digits = b.get(at..at + 4).ok_or(GiveUp)?;
    let mut n = 0u16;
    for &d in digits {
        let v = (d as char).to_digit(16).ok_or(GiveUp)?;
        n = n << 4 | v as u16;
    }
    Ok(n)
}

/// Appends `s` as a JSON string (the escapes serde_json writes).
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    let mut last = 0;
    loop {
        let i = skip_plain(b, last);
        out.extend_from_slice(&b[last..i]);
        let Some(&c) = b.get(i) else { break };
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xF)]);
            }
        }
        last = i + 1;
    }
    out.push(b'"');
}

/// The name a `{"name": ..., "value": "..."}` object gives its `value`,
/// as [`Redactor::redact_record`] finds it: the first of the rules'
/// sibling keys that holds a string of at most 64 bytes. Reads the object
/// that opens at `open` without judging its grammar (the main pass does).
fn sibling_name(r: &Redactor, text: &str, open: usize) -> Option<String> {
    let names = r.sibling_name_keys();
    let mut found: Vec<Option<String>> = vec![None; names.len()];
    let b = text.as_bytes();
    let mut i = open + 1;
    loop {
        i = skip_ws_at(b, i);
        if b.get(i) != Some(&b'"') {
            break;
        }
        let (kend, kesc) = string_end(b, i)?;
        let key = body(text, i, kend, kesc)?;
        i = skip_ws_at(b, kend);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws_at(b, i + 1);
        let slot = names.iter().position(|n| *n == key);
        if b.get(i) == Some(&b'"') {
            let (vend, vesc) = string_end(b, i)?;
            if let Some(slot) = slot {
                found[slot] = Some(body(text, i, vend, vesc)?.into_owned());
            }
            i = vend;
        } else {
            i = skip_value(b, i)?;
        }
        i = skip_ws_at(b, i);
        if b.get(i) != Some(&b',') {
            break;
        }
        i += 1;
    }
    names
        .iter()
        .zip(found)
        .find_map(|(n, v)| v.filter(|v| n != "value" && v.len() <= 64))
}

fn skip_ws_at(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// End (after the closing quote) of the string opening at `i`, and whether
/// it has escapes.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = skip_plain(b, j);
        match b.get(j) {
            Some(b'"') => return Some((j + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                j += 2;
            }
            _ => return None,
        }
    }
}

fn body(text: &str, open: usize, end: usize, escaped: bool) -> Option<Cow<'_, str>> {
    let inner = text.get(open + 1..end - 1)?;
    if escaped {
        unescape(inner).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// End of the (non-string) value at `i`, without judging its grammar.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match b.get(i)? {
            b'"' => i = string_end(b, i)?.0,
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
                i += 1;
            }
            b',' if depth == 0 => return Some(i),
            _ => i += 1,
        }
        if depth == 0 && matches!(b.get(i), Some(b',' | b'}' | b']') | None) {
            return Some(i);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn plain_runs_stop_at_quotes_backslashes_and_controls() {
        let s = b"abcdefghijklmnop\"";
        assert_eq!(skip_plain(s, 0), 16);
        assert_eq!(skip_plain(b"abcdefghij\\k", 0), 10);
        assert_eq!(skip_plain(b"abcdefghijk\x1f", 0), 11);
        assert_eq!(skip_plain(b"abc", 0), 3);
        // Every special byte at every place in and across a chunk, after
        // fillers that could upset the word-at-a-time test.
        let naive = |s: &[u8], i: usize| {
            (i..s.len())
                .find(|&j| s[j] == b'"' || s[j] == b'\\' || s[j] < 0x20)
                .unwrap_or(s.len())
        };
        for filler in [b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff] {
            for special in [b'"', b'\\', 0x00, 0x01, 0x1f, b'\n'] {
                for at in 0..20 {
                    let mut s = vec![filler; 20];
                    s[at] = special;
                    for from in 0..=at {
                        assert_eq!(skip_plain(&s, from), naive(&s, from), "{s:?} from {from}");
                    }
                }
            }
        }
        assert_eq!(skip_plain("ünïcödé ünïcödé\"".as_bytes(), 0), 23);
    }

    #[test]
    fn escapes_decode_like_serde() {
        for body in [r"a\nb", r"\u00e9\/\\\t", r"\ud83d\ude00", r"\u0000"] {
            let want: String = serde_json::from_str(&format!("\"{body}\"")).unwrap();
            assert_eq!(unescape(body).ok(), Some(want), "{body}");
        }
        for bad in [r"\x", r"\ud83d", r"\ude00", r"\ud83d\u0041", r"\u12"] {
            assert!(unescape(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<String>(&format!("\"{bad}\"")).is_err());
        }
    }

    #[test]
    fn written_strings_read_back() {
        for s in ["plain", "q\"b\\s", "\n\r\t\u{8}\u{c}\u{1}\u{1f}", "ü €"] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(
                out,
                serde_json::to_vec(s).unwrap(),
                "{s:?} is written as serde_json writes it"
            );
        }
    }
}
