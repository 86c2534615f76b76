//! One module per processor. Each exposes `build(spec, ...)`, which
//! compiles everything up front and returns every problem relative to the
//! processor's own config object; `registry.rs` wires them in.

pub(crate) mod dedupe;
pub(crate) mod enrich_http;
pub(crate) mod filter;
pub(crate) mod map;
pub(crate) mod redact;
pub(crate) mod script;
pub(crate) mod validate;
