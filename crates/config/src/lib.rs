//! Configuration for Sluice: the pipeline documents tenants send, and the
//! server's own config file.
//!
//! Both are plain serde types with `deny_unknown_fields` and a doc comment
//! on each field, and both are validated by pure functions that return
//! every problem at once, each located by a JSON pointer, so a client (or
//! an operator starting the server) fixes everything in one round trip.

pub mod outbound;
pub mod pipeline;
pub mod secrets;
pub mod server;

pub use outbound::{
    BreakerSpec, CacheSpec, EnrichHttpSpec, HttpMethod, ProviderPreset, ProviderSpec, RetrySpec,
    WebhookDestinationSpec,
};
pub use pipeline::{
    CastType, CompareOp, Condition, DedupeSpec, DestinationSpec, FileDestinationSpec, FilterSpec,
    MapOp, MapSpec, OnError, PipelineSpec, ProcessorSpec, RedactSpec, SchemaDraft, ScriptSpec,
    SourceSpec, ValidateSpec,
};
pub use secrets::{ComponentKind, SECRET_FIELDS, SecretField, secret_paths};
pub use server::{ServerConfig, ServerRole};
