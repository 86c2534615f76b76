//! The `ctx` object scripts receive: the only host surface in the sandbox.
//!
//! It is built once per engine instance and frozen with the intrinsics, so a
//! record cannot leave anything on it for the next one. What changes per
//! record (the batch id and record index, the log buffer) lives in [`Host`] on
//! the Rust side and is read through native functions and a getter, so a
//! record that never looks at `ctx.batch` pays nothing for it. Every native
//! function checks its arguments and throws a `TypeError` on misuse; none of
//! them hands out a host object or a reference to Rust state.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rquickjs::function::Rest;
use rquickjs::object::{Accessor, Property};
use rquickjs::{Ctx, Exception, Function, Object, Value};
use sha2::Sha256;
use uuid::Uuid;

use crate::ScriptEnv;
use crate::convert::{ConvertError, Converted, FromJs};

/// Version of the `ctx` API described in `docs/scripting.md`. Bumped when a
/// member is added; members are never removed or changed in meaning.
pub const CTX_API_VERSION: u32 = 1;

/// Longest `ctx.log` line kept, in bytes; longer lines are cut.
pub(crate) const MAX_LOG_LINE_BYTES: usize = 4096;

/// Largest value `ctx.hash` accepts, as JSON bytes.
const MAX_HASH_INPUT_BYTES: usize = 1024 * 1024;

/// Per-engine host state shared with the native functions.
pub(crate) struct Host {
    env: ScriptEnv,
    max_log_lines: u32,
    logs: RefCell<Vec<String>>,
    dropped: Cell<u32>,
    call: Cell<(Uuid, u64)>,
}

impl Host {
    pub(crate) fn new(env: ScriptEnv, max_log_lines: u32) -> Self {
        Host {
            env,
            max_log_lines,
            logs: RefCell::new(Vec::new()),
            dropped: Cell::new(0),
            call: Cell::new((Uuid::nil(), 0)),
        }
    }

    /// Starts a record: sets what `ctx.batch` reports and empties the log.
    pub(crate) fn begin(&self, batch_id: Uuid, record_index: u64) {
        self.call.set((batch_id, record_index));
        self.logs.borrow_mut().clear();
        self.dropped.set(0);
    }

    /// The record's log lines, and how many were dropped past the cap.
    pub(crate) fn take_logs(&self) -> (Vec<String>, u32) {
        (
            std::mem::take(&mut *self.logs.borrow_mut()),
            self.dropped.get(),
        )
    }

    fn push_log(&self, line: String) {
        let mut logs = self.logs.borrow_mut();
        if logs.len() >= self.max_log_lines as usize {
            self.dropped.set(self.dropped.get().saturating_add(1));
            return;
        }
        let line = match &self.env.redact {
            Some(redact) => redact(&line),
            None => line,
        };
        logs.push(line);
    }

    fn log_is_full(&self) -> bool {
        self.logs.borrow().len() >= self.max_log_lines as usize
    }
}

/// Builds the `ctx` object for one engine instance (not yet frozen).
pub(crate) fn build_ctx<'js>(ctx: &Ctx<'js>, host: &Rc<Host>) -> rquickjs::Result<Object<'js>> {
    let obj = Object::new(ctx.clone())?;

    let pipeline = Object::new(ctx.clone())?;
    pipeline.prop(
        "id",
        Property::from(host.env.pipeline_id.to_string()).enumerable(),
    )?;
    pipeline.prop(
        "name",
        Property::from(host.env.pipeline_name.clone()).enumerable(),
    )?;
    // A version fits a double exactly far beyond any real count.
    pipeline.prop(
        "version",
        Property::from(host.env.pipeline_version as f64).enumerable(),
    )?;
    obj.prop("pipeline", Property::from(pipeline).enumerable())?;
    obj.prop("apiVersion", Property::from(CTX_API_VERSION).enumerable())?;

    let h = host.clone();
    let batch = move |ctx: Ctx<'js>| -> rquickjs::Result<Object<'js>> {
        let (id, index) = h.call.get();
        let batch = Object::new(ctx)?;
        batch.set("id", id.to_string())?;
        batch.set("index", index as f64)?;
        Ok(batch)
    };
    obj.prop("batch", Accessor::from(batch).enumerable())?;

    let h = host.clone();
    let log = Function::new(
        ctx.clone(),
        move |args: Rest<Value<'js>>| -> rquickjs::Result<()> {
            if h.log_is_full() {
                h.dropped.set(h.dropped.get().saturating_add(1));
                return Ok(());
            }
            let mut line = String::new();
            for (i, arg) in args.0.into_iter().enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                line.push_str(&describe(arg, MAX_LOG_LINE_BYTES)?);
                if line.len() > MAX_LOG_LINE_BYTES {
                    break;
                }
            }
            h.push_log(truncate(line, MAX_LOG_LINE_BYTES));
            Ok(())
        },
    )?
    .with_name("log")?;
    obj.prop("log", Property::from(log).enumerable())?;

    let h = host.clone();
    let hash = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, value: Value<'js>| -> rquickjs::Result<String> {
            let bytes = if let Some(s) = value.as_string() {
                s.to_string()?.into_bytes()
            } else {
                let json = to_json(value, MAX_HASH_INPUT_BYTES).map_err(|e| match e {
                    HostError::Js(e) => e,
                    HostError::Message(m) => Exception::throw_type(&ctx, &format!("ctx.hash: {m}")),
                })?;
                let mut text = String::new();
                canonical_json(&json, &mut text);
                text.into_bytes()
            };
            Ok(hmac_hex(&h.env.hash_key, &bytes))
        },
    )?
    .with_name("hash")?;
    obj.prop("hash", Property::from(hash).enumerable())?;

    let h = host.clone();
    let redact = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, value: Value<'js>| -> rquickjs::Result<String> {
            let Some(text) = value.as_string() else {
                return Err(Exception::throw_type(&ctx, "ctx.redact: expects a string"));
            };
            let text = text.to_string()?;
            Ok(match &h.env.redact {
                Some(redact) => redact(&text),
                None => text,
            })
        },
    )?
    .with_name("redact")?;
    obj.prop("redact", Property::from(redact).enumerable())?;

    let now = Function::new(ctx.clone(), || -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as f64)
            .unwrap_or(0.0)
    })?
    .with_name("now")?;
    obj.prop("now", Property::from(now).enumerable())?;

    Ok(obj)
}

/// JSON text with object keys sorted at every level, so a value hashes the
/// same whatever order its keys were built in (and whether or not
/// serde_json keeps insertion order in this build).
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// HMAC-SHA256 of `bytes` under `key`, as lowercase hex.
pub(crate) fn hmac_hex(key: &[u8], bytes: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(bytes);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

enum HostError {
    Js(rquickjs::Error),
    Message(String),
}

fn to_json<'js>(value: Value<'js>, max_bytes: usize) -> Result<serde_json::Value, HostError> {
    let mut conv = FromJs::new(max_bytes);
    match conv.convert(value) {
        Ok(Converted::Json(v)) => Ok(v),
        Ok(Converted::Skip(what)) => Err(HostError::Message(format!("cannot use {what}"))),
        Err(ConvertError::Js(e)) => Err(HostError::Js(e)),
        Err(ConvertError::TooLarge) => Err(HostError::Message("value is too large".to_owned())),
        Err(ConvertError::Invalid(m)) => Err(HostError::Message(m)),
    }
}

/// How `ctx.log` prints one argument: strings as they are, other values as
/// JSON, and what JSON cannot show by a short description.
fn describe(value: Value<'_>, max_bytes: usize) -> rquickjs::Result<String> {
    if let Some(s) = value.as_string() {
        return Ok(s
            .to_string()
            .unwrap_or_else(|_| "[invalid string]".to_owned()));
    }
    if value.is_undefined() {
        return Ok("undefined".to_owned());
    }
    if value.is_big_int() {
        return Ok("[bigint]".to_owned());
    }
    if let Some(f) = value.as_float()
        && !f.is_finite()
    {
        return Ok(f.to_string());
    }
    if value.is_error()
        && let Some(e) = value.as_object().cloned().and_then(Exception::from_object)
    {
        return Ok(e.message().unwrap_or_default());
    }
    match to_json(value, max_bytes) {
        Ok(v) => Ok(v.to_string()),
        Err(HostError::Js(e)) => Err(e),
        Err(HostError::Message(m)) if m.starts_with("cannot use ") => {
            Ok(format!("[{}]", &m["cannot use ".len()..]))
        }
        Err(HostError::Message(m)) => Ok(format!("[unprintable: {m}]")),
    }
}

/// Cuts `line` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(mut line: String, max: usize) -> String {
    if line.len() > max {
        let mut cut = max;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let mut out = String::new();
        let v = serde_json::json!({"b": [{"z": 1, "a": "x\"y"}], "a": null});
        canonical_json(&v, &mut out);
        assert_eq!(out, r#"{"a":null,"b":[{"a":"x\"y","z":1}]}"#);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h…");
        assert_eq!(truncate("abc".to_owned(), 3), "abc");
    }
}
