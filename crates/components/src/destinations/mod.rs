//! One module per destination; `registry.rs` wires them in.

pub(crate) mod clickhouse;
pub(crate) mod file;
pub(crate) mod object_store;
pub(crate) mod postgres;
pub(crate) mod webhook;
