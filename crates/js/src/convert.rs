//! Native conversion between `serde_json::Value` and QuickJS values.
//!
//! Records cross the boundary twice per call, so this is the hot path. Going
//! through JSON text (`JSON.parse` / `JSON.stringify`) would serialize and
//! parse every record once more; walking the values directly measured faster
//! for ~500-byte records and lets the way back enforce the output-size limit
//! and reject hostile values as it goes, instead of after building them.
//!
//! The way back follows `JSON.stringify`, with these definitions (documented
//! in `docs/scripting.md`):
//! - `NaN`, `Infinity` and `-Infinity` become `null`; `-0` becomes `0`;
//!   integral numbers within ±2^53 become JSON integers.
//! - `undefined`, functions and symbols are left out of objects and become
//!   `null` in arrays; symbol-keyed and non-enumerable properties are ignored.
//! - `toJSON()` is honoured (so a `Date` becomes its ISO string).
//! - BigInt values, cyclic structures and nesting deeper than [`MAX_DEPTH`]
//!   are errors, as is output larger than the limit.
//! - Strings with unpaired surrogates are made well-formed (U+FFFD).
//!
//! Records are built with define-property semantics, so a `"__proto__"` key
//! is an ordinary own property and keys that exist on the (frozen)
//! `Object.prototype` do not collide with it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use rquickjs::object::Property;
use rquickjs::{Array, Atom, Ctx, Function, Object, Value};
use serde_json::{Map, Number};

/// Deepest nesting accepted in either direction.
pub(crate) const MAX_DEPTH: usize = 200;

/// Why a value could not be converted.
#[derive(Debug)]
pub(crate) enum ConvertError {
    /// A JavaScript exception is pending (a getter or `toJSON` threw, or the
    /// engine ran out of memory or time).
    Js(rquickjs::Error),
    /// The output is larger than the limit.
    TooLarge,
    /// The value is not representable as JSON; the text says why.
    Invalid(String),
}

impl From<rquickjs::Error> for ConvertError {
    fn from(e: rquickjs::Error) -> Self {
        ConvertError::Js(e)
    }
}

/// Builds the JavaScript value of a JSON value.
pub(crate) fn to_js<'js>(
    ctx: &Ctx<'js>,
    value: &serde_json::Value,
    depth: usize,
) -> Result<Value<'js>, ConvertError> {
    if depth > MAX_DEPTH {
        return Err(ConvertError::Invalid(format!(
            "the record nests deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(match value {
        serde_json::Value::Null => Value::new_null(ctx.clone()),
        serde_json::Value::Bool(b) => Value::new_bool(ctx.clone(), *b),
        serde_json::Value::Number(n) => number_to_js(ctx, n),
        serde_json::Value::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        serde_json::Value::Array(items) => {
            let array = Array::new(ctx.clone())?;
            for (i, item) in items.iter().enumerate() {
                array.set(i, to_js(ctx, item, depth + 1)?)?;
            }
            array.into_value()
        }
        serde_json::Value::Object(map) => {
            let object = Object::new(ctx.clone())?;
            for (key, item) in map {
                let item = to_js(ctx, item, depth + 1)?;
                if key == "__proto__" {
                    object.prop(
                        key.as_str(),
                        Property::from(item).writable().enumerable().configurable(),
                    )?;
                } else {
                    object.set(key.as_str(), item)?;
                }
            }
            object.into_value()
        }
    })
}

fn number_to_js<'js>(ctx: &Ctx<'js>, n: &Number) -> Value<'js> {
    if let Some(i) = n.as_i64() {
        match i32::try_from(i) {
            Ok(small) => Value::new_int(ctx.clone(), small),
            // Beyond i32, JavaScript has doubles only (exact up to 2^53).
            Err(_) => Value::new_float(ctx.clone(), i as f64),
        }
    } else {
        Value::new_float(ctx.clone(), n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Most property names one engine instance remembers (see [`KeyCache`]).
const MAX_CACHED_KEYS: usize = 4096;

/// Property names already converted to Rust strings, by QuickJS atom.
///
/// Records of one pipeline share their keys, and turning an atom back into a
/// Rust string (through a C string, a UTF-8 check and a copy) was the
/// largest single cost of the way back. The atoms are kept alive as keys of
/// a holder object owned by the engine instance, so an atom number can never
/// be reused for another name while it is in the map.
#[derive(Default)]
pub(crate) struct KeyCache {
    names: HashMap<u32, (String, usize), BuildHasherDefault<AtomIdHasher>>,
}

/// The key cache with its holder object, for one conversion.
pub(crate) struct Keys<'c, 'js> {
    pub(crate) cache: &'c mut KeyCache,
    pub(crate) holder: Object<'js>,
}

/// The number QuickJS uses for `atom`. rquickjs hashes an atom as exactly
/// that number; anything else means the representation changed, and the
/// cache is not used.
fn atom_id(atom: &Atom<'_>) -> Option<u32> {
    let mut probe = IdProbe::default();
    atom.hash(&mut probe);
    match probe {
        IdProbe {
            id: Some(id),
            other: false,
        } => Some(id),
        _ => None,
    }
}

#[derive(Default)]
struct IdProbe {
    id: Option<u32>,
    other: bool,
}

impl Hasher for IdProbe {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, _: &[u8]) {
        self.other = true;
    }
    fn write_u32(&mut self, id: u32) {
        self.other |= self.id.is_some();
        self.id = Some(id);
    }
}

/// Multiplicative hash for atom numbers (already well spread integers).
#[derive(Default)]
pub(crate) struct AtomIdHasher(u64);

impl Hasher for AtomIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e_37_79_b9_7f_4a_7c_15);
    }
}

/// Converts JavaScript values back to JSON, charging every byte of the
/// would-be JSON text against a budget.
pub(crate) struct FromJs<'a, 'js> {
    remaining: usize,
    /// Objects on the path from the root, to detect cycles.
    path: Vec<Object<'js>>,
    to_well_formed: Option<&'a Function<'js>>,
    keys: Option<Keys<'a, 'js>>,
    to_json: Option<Atom<'js>>,
}

/// What a JavaScript value becomes: JSON, or nothing (left out of objects).
pub(crate) enum Converted {
    Json(serde_json::Value),
    Skip(&'static str),
}

impl<'a, 'js> FromJs<'a, 'js> {
    pub(crate) fn new(max_bytes: usize) -> Self {
        FromJs {
            remaining: max_bytes,
            path: Vec::new(),
            to_well_formed: None,
            keys: None,
            to_json: None,
        }
    }

    /// Repairs strings with unpaired surrogates with this
    /// `String.prototype.toWellFormed`.
    pub(crate) fn well_formed(mut self, f: Option<&'a Function<'js>>) -> Self {
        self.to_well_formed = f;
        self
    }

    /// Uses (and fills) an engine's key cache.
    pub(crate) fn key_cache(mut self, keys: Keys<'a, 'js>) -> Self {
        self.keys = Some(keys);
        self
    }

    fn charge(&mut self, bytes: usize) -> Result<(), ConvertError> {
        match self.remaining.checked_sub(bytes) {
            Some(rest) => {
                self.remaining = rest;
                Ok(())
            }
            None => Err(ConvertError::TooLarge),
        }
    }

    /// Converts one value; `Skip` for `undefined`, functions and symbols.
    pub(crate) fn convert(&mut self, value: Value<'js>) -> Result<Converted, ConvertError> {
        self.value(value, true)
    }

    fn value(&mut self, value: Value<'js>, call_to_json: bool) -> Result<Converted, ConvertError> {
        if let Some(i) = value.as_int() {
            self.charge(int_len(i64::from(i)))?;
            return Ok(Converted::Json(i.into()));
        }
        if let Some(s) = value.as_string() {
            let s = self.string(s)?;
            return Ok(Converted::Json(serde_json::Value::String(s)));
        }
        if let Some(f) = value.as_float() {
            return Ok(Converted::Json(self.float(f)?));
        }
        if let Some(b) = value.as_bool() {
            self.charge(if b { 4 } else { 5 })?;
            return Ok(Converted::Json(serde_json::Value::Bool(b)));
        }
        if value.is_null() {
            self.charge(4)?;
            return Ok(Converted::Json(serde_json::Value::Null));
        }
        if value.is_undefined() {
            return Ok(Converted::Skip("undefined"));
        }
        if value.is_symbol() {
            return Ok(Converted::Skip("a symbol"));
        }
        if value.is_big_int() {
            return Err(ConvertError::Invalid(
                "a BigInt cannot be represented in JSON (convert it with String() or Number())"
                    .to_owned(),
            ));
        }
        if value.is_function() {
            return Ok(Converted::Skip("a function"));
        }
        let Some(object) = value.as_object().cloned() else {
            return Err(ConvertError::Invalid(format!(
                "a value of type {} cannot be represented in JSON",
                value.type_name()
            )));
        };
        if value.is_promise() {
            return Err(ConvertError::Invalid(
                "a Promise cannot be represented in JSON (scripts run synchronously)".to_owned(),
            ));
        }
        if call_to_json {
            let atom = match &self.to_json {
                Some(atom) => atom.clone(),
                None => {
                    let atom = Atom::from_str(object.ctx().clone(), "toJSON")?;
                    self.to_json = Some(atom.clone());
                    atom
                }
            };
            let to_json: Value<'js> = object.get(atom)?;
            if let Some(f) = to_json.as_function() {
                let replaced: Value<'js> =
                    f.call((rquickjs::function::This(object.clone()), ""))?;
                return self.value(replaced, false);
            }
        }
        if self.path.len() >= MAX_DEPTH {
            return Err(ConvertError::Invalid(format!(
                "the output nests deeper than {MAX_DEPTH} levels"
            )));
        }
        if self.path.iter().any(|o| o == &object) {
            return Err(ConvertError::Invalid(
                "the output contains a cyclic structure".to_owned(),
            ));
        }
        self.path.push(object.clone());
        let out = if value.is_array() {
            self.array(object)
        } else {
            self.object(object)
        };
        self.path.pop();
        out.map(Converted::Json)
    }

    fn array(&mut self, object: Object<'js>) -> Result<serde_json::Value, ConvertError> {
        let array = object
            .into_array()
            .ok_or_else(|| ConvertError::Invalid("an array-like value is not an array".into()))?;
        let len = array.len();
        self.charge(2 + len.saturating_sub(1))?;
        let mut items = Vec::with_capacity(len.min(1024));
        for i in 0..len {
            let item: Value<'js> = array.get(i)?;
            match self.value(item, true)? {
                Converted::Json(v) => items.push(v),
                Converted::Skip(_) => {
                    self.charge(4)?;
                    items.push(serde_json::Value::Null)
                }
            }
        }
        Ok(serde_json::Value::Array(items))
    }

    fn object(&mut self, object: Object<'js>) -> Result<serde_json::Value, ConvertError> {
        self.charge(2)?;
        let mut map = Map::new();
        for key in object.keys::<Atom<'js>>() {
            let key = key?;
            let item: Value<'js> = object.get(key.clone())?;
            if let Converted::Json(v) = self.value(item, true)? {
                let key = self.key_name(key)?;
                // The colon and the comma.
                self.charge(2)?;
                map.insert(key, v);
            }
        }
        Ok(serde_json::Value::Object(map))
    }

    /// A property name as a Rust string, charged as a JSON string literal.
    fn key_name(&mut self, key: Atom<'js>) -> Result<String, ConvertError> {
        let id = atom_id(&key);
        if let (Some(keys), Some(id)) = (&self.keys, id)
            && let Some((name, len)) = keys.cache.names.get(&id)
        {
            let (name, len) = (name.clone(), *len);
            self.charge(len)?;
            return Ok(name);
        }
        // Not `Atom::to_string`: it trusts QuickJS for valid UTF-8, which
        // names with unpaired surrogates are not.
        let name = self.string(&key.to_js_string()?)?;
        if let (Some(keys), Some(id)) = (&mut self.keys, id)
            && keys.cache.names.len() < MAX_CACHED_KEYS
        {
            // Holding the atom as a key of the holder keeps its number
            // reserved for this name.
            keys.holder.prop(key, Property::from(true))?;
            keys.cache
                .names
                .insert(id, (name.clone(), json_string_len(&name)));
        }
        Ok(name)
    }

    fn string(&mut self, s: &rquickjs::String<'js>) -> Result<String, ConvertError> {
        let text = match s.to_string() {
            Ok(text) => text,
            // Unpaired surrogates are not UTF-8: replace them with U+FFFD.
            Err(rquickjs::Error::Utf8(_)) => {
                let fixed: Option<rquickjs::String<'js>> = match self.to_well_formed {
                    Some(f) => f.call((rquickjs::function::This(s.clone()),))?,
                    None => None,
                };
                match fixed.map(|f| f.to_string()) {
                    Some(Ok(text)) => text,
                    _ => {
                        return Err(ConvertError::Invalid(
                            "a string is not valid Unicode".to_owned(),
                        ));
                    }
                }
            }
            Err(e) => return Err(ConvertError::Js(e)),
        };
        self.charge(json_string_len(&text))?;
        Ok(text)
    }

    fn float(&mut self, f: f64) -> Result<serde_json::Value, ConvertError> {
        if !f.is_finite() {
            self.charge(4)?;
            return Ok(serde_json::Value::Null);
        }
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if f.fract() == 0.0 && f.abs() <= EXACT {
            // Integral: print as an integer, like JSON.stringify (and -0 as 0).
            let i = f as i64;
            self.charge(int_len(i))?;
            return Ok(serde_json::Value::Number(i.into()));
        }
        self.charge(24)?;
        Ok(Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null))
    }
}

/// Bytes of the decimal form of `i`.
fn int_len(i: i64) -> usize {
    let digits = i
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d as usize + 1);
    digits + usize::from(i < 0)
}

/// Bytes of `s` as a JSON string literal (quotes and escapes included).
fn json_string_len(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() + 2 + escapes
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn size_estimates_match_serde_json() {
        for i in [0i64, 7, -7, 10, 99, 100, -100, i64::MAX, i64::MIN + 1] {
            assert_eq!(int_len(i), serde_json::to_string(&i).unwrap().len(), "{i}");
        }
        for s in ["", "abc", "a\"b\\c", "line\nbreak\t", "\u{1}", "héllo"] {
            assert_eq!(
                json_string_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }
}
