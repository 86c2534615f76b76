//! One module per destination; `registry.rs` wires them in.

pub(crate) mod file;
