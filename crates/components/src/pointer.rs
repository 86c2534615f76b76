//! JSON Pointers (RFC 6901) parsed once, when a pipeline is built.
//!
//! `map`, `filter` and `dedupe` address fields on every record, so the
//! pointer text is split and unescaped at build time and each token keeps
//! its array index pre-parsed. Looking a field up is then a walk of map
//! lookups with no allocation. The mutating helpers implement the
//! RFC 6902 semantics the `map` ops need: `add` into an existing parent
//! (arrays accept an index up to their length, or `-` to append), `remove`
//! and `replace` of an existing location, and Sluice's `set`, which
//! creates missing parent objects on the way.

use serde_json::{Map, Value};

/// One reference token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    /// The unescaped token, used as an object key.
    key: String,
    /// The token as an array index, when it is one (`0`, or digits without
    /// a leading zero).
    index: Option<usize>,
}

impl Token {
    fn new(key: String) -> Token {
        let index = if key == "0" || (!key.starts_with('0') && !key.is_empty()) {
            if key.bytes().all(|b| b.is_ascii_digit()) {
                key.parse().ok()
            } else {
                None
            }
        } else {
            None
        };
        Token { key, index }
    }

    fn is_append(&self) -> bool {
        self.key == "-"
    }
}

/// Why a pointer operation could not be applied to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointerError {
    /// The location (or, for `add`, its parent) does not exist.
    NotFound,
    /// A parent exists but is neither an object nor an array.
    NotContainer,
    /// An array index is past the end (or `-` where an element is needed).
    BadIndex,
}

impl PointerError {
    /// A message naming the pointer, never the record's values.
    pub(crate) fn message(self, pointer: &Pointer) -> String {
        let p = pointer.as_str();
        match self {
            PointerError::NotFound => format!("path `{p}` does not exist"),
            PointerError::NotContainer => {
                format!("a parent of `{p}` is neither an object nor an array")
            }
            PointerError::BadIndex => format!("array index of `{p}` is out of range"),
        }
    }
}

/// A parsed JSON Pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    text: String,
    tokens: Vec<Token>,
}

impl Pointer {
    /// Parse a pointer; `""` is the whole document.
    pub(crate) fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must be a JSON Pointer starting with `/`".into());
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut key = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => key.push('~'),
                        Some('1') => key.push('/'),
                        _ => return Err("invalid `~` escape in JSON Pointer".into()),
                    }
                } else {
                    key.push(c);
                }
            }
            tokens.push(Token::new(key));
        }
        Ok(Pointer {
            text: text.to_owned(),
            tokens,
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The key of a top-level member (`/a`), when the pointer names one.
    pub(crate) fn top_key(&self) -> Option<&str> {
        match self.tokens.as_slice() {
            [t] => Some(&t.key),
            _ => None,
        }
    }

    /// The key of the top-level member the pointer is in (`a` of `/a/b`).
    pub(crate) fn first_key(&self) -> Option<&str> {
        self.tokens.first().map(|t| t.key.as_str())
    }

    pub(crate) fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `self` is a proper prefix of `other` (`/a` of `/a/b`).
    pub(crate) fn is_proper_prefix_of(&self, other: &Pointer) -> bool {
        self.tokens.len() < other.tokens.len() && other.tokens.starts_with(&self.tokens)
    }

    pub(crate) fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        let mut cur = root;
        for t in &self.tokens {
            cur = step(cur, t)?;
        }
        Some(cur)
    }

    pub(crate) fn get_mut<'v>(&self, root: &'v mut Value) -> Option<&'v mut Value> {
        let mut cur = root;
        for t in &self.tokens {
            cur = step_mut(cur, t)?;
        }
        Some(cur)
    }

    /// The parent container and the last token; `None` for the root.
    fn split_last(&self) -> Option<(&[Token], &Token)> {
        let (last, parents) = self.tokens.split_last()?;
        Some((parents, last))
    }

    fn parent_mut<'v>(&self, root: &'v mut Value) -> Result<(&'v mut Value, &Token), PointerError> {
        let Some((parents, last)) = self.split_last() else {
            return Err(PointerError::NotFound);
        };
        let mut cur = root;
        for t in parents {
            cur = step_mut(cur, t).ok_or(PointerError::NotFound)?;
        }
        Ok((cur, last))
    }

    /// RFC 6902 `add`: the parent must exist; an object member is created
    /// or replaced, an array element is inserted (index `0..=len` or `-`).
    /// Adding at the root replaces the whole document.
    pub(crate) fn add(&self, root: &mut Value, value: Value) -> Result<(), PointerError> {
        if self.is_root() {
            *root = value;
            return Ok(());
        }
        let (parent, last) = self.parent_mut(root)?;
        insert_into(parent, last, value)
    }

    /// RFC 6902 `remove`: the location must exist. Returns the old value.
    pub(crate) fn remove(&self, root: &mut Value) -> Result<Value, PointerError> {
        let (parent, last) = self.parent_mut(root)?;
        match parent {
            Value::Object(map) => map.remove(&last.key).ok_or(PointerError::NotFound),
            Value::Array(items) => match last.index {
                Some(i) if i < items.len() => Ok(items.remove(i)),
                _ => Err(PointerError::NotFound),
            },
            _ => Err(PointerError::NotFound),
        }
    }

    /// Sluice's `set`: like `add`, but missing parents are created as
    /// objects, and an existing array element is replaced rather than
    /// shifted (`-` or the array's length appends).
    pub(crate) fn set(&self, root: &mut Value, value: Value) -> Result<(), PointerError> {
        let Some((parents, last)) = self.split_last() else {
            *root = value;
            return Ok(());
        };
        let mut cur = root;
        for t in parents {
            cur = match cur {
                Value::Object(map) => map
                    .entry(t.key.as_str())
                    .or_insert_with(|| Value::Object(Map::new())),
                Value::Array(items) => match t.index {
                    Some(i) if i < items.len() => &mut items[i],
                    _ => return Err(PointerError::BadIndex),
                },
                _ => return Err(PointerError::NotContainer),
            };
        }
        match cur {
            Value::Object(map) => {
                map.insert(last.key.clone(), value);
                Ok(())
            }
            Value::Array(items) => {
                let len = items.len();
                match last.index {
                    Some(i) if i < len => {
                        items[i] = value;
                        Ok(())
                    }
                    Some(i) if i == len => {
                        items.push(value);
                        Ok(())
                    }
                    None if last.is_append() => {
                        items.push(value);
                        Ok(())
                    }
                    _ => Err(PointerError::BadIndex),
                }
            }
            _ => Err(PointerError::NotContainer),
        }
    }
}

fn step<'v>(v: &'v Value, t: &Token) -> Option<&'v Value> {
    match v {
        Value::Object(map) => map.get(&t.key),
        Value::Array(items) => items.get(t.index?),
        _ => None,
    }
}

fn step_mut<'v>(v: &'v mut Value, t: &Token) -> Option<&'v mut Value> {
    match v {
        Value::Object(map) => map.get_mut(&t.key),
        Value::Array(items) => items.get_mut(t.index?),
        _ => None,
    }
}

fn insert_into(parent: &mut Value, last: &Token, value: Value) -> Result<(), PointerError> {
    match parent {
        Value::Object(map) => {
            map.insert(last.key.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            if last.is_append() {
                items.push(value);
                return Ok(());
            }
            match last.index {
                Some(i) if i <= items.len() => {
                    items.insert(i, value);
                    Ok(())
                }
                _ => Err(PointerError::BadIndex),
            }
        }
        _ => Err(PointerError::NotContainer),
    }
}

/// JSON equality as RFC 6902 `test` defines it: numbers compare by value
/// (`1` equals `1.0`), everything else structurally.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Pointer {
        Pointer::parse(s).unwrap()
    }

    #[test]
    fn parses_rfc6901_examples() {
        let doc = json!({"foo": ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, " ": 7});
        assert_eq!(p("").get(&doc), Some(&doc));
        assert_eq!(p("/foo/0").get(&doc), Some(&json!("bar")));
        assert_eq!(p("/").get(&doc), Some(&json!(0)));
        assert_eq!(p("/a~1b").get(&doc), Some(&json!(1)));
        assert_eq!(p("/m~0n").get(&doc), Some(&json!(8)));
        assert_eq!(p("/ ").get(&doc), Some(&json!(7)));
        assert_eq!(p("/foo/01").get(&doc), None, "leading zero is not an index");
        assert!(Pointer::parse("foo").is_err());
        assert!(Pointer::parse("/a~2").is_err());
    }

    #[test]
    fn add_inserts_into_arrays_and_objects() {
        let mut doc = json!({"a": [1, 3]});
        p("/a/1").add(&mut doc, json!(2)).unwrap();
        p("/a/-").add(&mut doc, json!(4)).unwrap();
        p("/a/4").add(&mut doc, json!(5)).unwrap();
        p("/b").add(&mut doc, json!("x")).unwrap();
        assert_eq!(doc, json!({"a": [1, 2, 3, 4, 5], "b": "x"}));
        assert_eq!(
            p("/a/9").add(&mut doc, json!(0)),
            Err(PointerError::BadIndex)
        );
        assert_eq!(
            p("/x/y").add(&mut doc, json!(0)),
            Err(PointerError::NotFound)
        );
        assert_eq!(
            p("/b/c").add(&mut doc, json!(0)),
            Err(PointerError::NotContainer)
        );
    }

    #[test]
    fn set_creates_parents_and_replaces_elements() {
        let mut doc = json!({"a": [1]});
        p("/x/y/z").set(&mut doc, json!(1)).unwrap();
        p("/a/0").set(&mut doc, json!(9)).unwrap();
        p("/a/1").set(&mut doc, json!(10)).unwrap();
        assert_eq!(doc, json!({"a": [9, 10], "x": {"y": {"z": 1}}}));
        assert_eq!(
            p("/a/5").set(&mut doc, json!(0)),
            Err(PointerError::BadIndex)
        );
    }

    #[test]
    fn remove_needs_an_existing_location() {
        let mut doc = json!({"a": [1, 2], "b": 1});
        assert_eq!(p("/a/0").remove(&mut doc).unwrap(), json!(1));
        assert_eq!(p("/b").remove(&mut doc).unwrap(), json!(1));
        assert_eq!(p("/b").remove(&mut doc), Err(PointerError::NotFound));
        assert_eq!(p("/a/-").remove(&mut doc), Err(PointerError::NotFound));
        assert_eq!(doc, json!({"a": [2]}));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!({"a": [1]}), &json!({"a": [1.0]})));
        assert!(!json_eq(&json!(1), &json!("1")));
        assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }

    #[test]
    fn prefixes() {
        assert!(p("/a").is_proper_prefix_of(&p("/a/b")));
        assert!(!p("/a").is_proper_prefix_of(&p("/a")));
        assert!(!p("/a").is_proper_prefix_of(&p("/ab")));
    }
}
