//! The registry: one line per component, an exhaustive `match` on the
//! config enums.
//!
//! Adding a processor or destination variant to `sluice-config` breaks the
//! build here until it is registered, so nothing can be configured that
//! cannot be validated and built. Each builder returns every problem it
//! finds, relative to its own config object; this module re-roots them
//! under the component's place in the pipeline document.

use std::sync::Arc;

use sluice_config::{DestinationSpec, ProcessorSpec};
use sluice_core::{Destination, Problem};

use crate::destinations::{clickhouse, file, object_store, postgres, webhook};
use crate::processors::{dedupe, enrich_http, filter, map, redact, script, validate};
use crate::{BuildContext, Stage};

/// Build one processor; problems are located under `at` (`/processors/3`).
pub(crate) fn build_processor(
    spec: &ProcessorSpec,
    ctx: &BuildContext,
    at: &str,
) -> Result<Box<dyn Stage>, Vec<Problem>> {
    let built: Result<Box<dyn Stage>, Vec<Problem>> = match spec {
        ProcessorSpec::Validate(s) => validate::build(s).map(|p| Box::new(p) as _),
        ProcessorSpec::Map(s) => map::build(s, ctx).map(|p| Box::new(p) as _),
        ProcessorSpec::Filter(s) => filter::build(s, ctx).map(|p| Box::new(p) as _),
        ProcessorSpec::Redact(s) => redact::build(s, ctx).map(|p| Box::new(p) as _),
        ProcessorSpec::Script(s) => script::build(s, ctx).map(|p| Box::new(p) as _),
        ProcessorSpec::Dedupe(s) => dedupe::build(s).map(|p| Box::new(p) as _),
        ProcessorSpec::EnrichHttp(s) => enrich_http::build(s, ctx, at).map(|p| Box::new(p) as _),
    };
    built.map_err(|problems| problems.into_iter().map(|p| p.under(at)).collect())
}

/// Build the destination, wrapped with retries and its circuit breaker
/// (`sluice_outbound::ResilientDestination`, keyed
/// `<pipeline_id>/destination`); problems are located under
/// `/destination`.
pub(crate) fn build_destination(
    spec: &DestinationSpec,
    ctx: &BuildContext,
    id_field: &str,
) -> Result<Arc<dyn Destination>, Vec<Problem>> {
    let built = check_destination(spec, ctx, id_field)?;
    let (retry, breaker) = spec.resilience();
    let breaker = sluice_outbound::breaker(
        &format!("{}/destination", ctx.pipeline_id),
        "destination",
        breaker,
    );
    Ok(Arc::new(sluice_outbound::ResilientDestination::new(
        built,
        sluice_outbound::Resilience::new(retry, breaker),
    )))
}

/// Build the destination alone (validation: no breaker is registered).
/// `id_field` is the pipeline's record id field (the table destinations
/// key their rows by it).
pub(crate) fn check_destination(
    spec: &DestinationSpec,
    ctx: &BuildContext,
    id_field: &str,
) -> Result<Arc<dyn Destination>, Vec<Problem>> {
    let output_root = ctx.output_root.as_path();
    let built: Result<Arc<dyn Destination>, Vec<Problem>> = match spec {
        DestinationSpec::File(s) => file::build(s, output_root).map(|d| Arc::new(d) as _),
        DestinationSpec::Webhook(s) => webhook::build(s, ctx).map(|d| Arc::new(d) as _),
        DestinationSpec::ObjectStore(s) => {
            object_store::build(s, ctx, id_field).map(|d| Arc::new(d) as _)
        }
        DestinationSpec::Postgres(s) => postgres::build(s, ctx, id_field).map(|d| Arc::new(d) as _),
        DestinationSpec::Clickhouse(s) => {
            clickhouse::build(s, ctx, id_field).map(|d| Arc::new(d) as _)
        }
    };
    built.map_err(|problems| {
        problems
            .into_iter()
            .map(|p| p.under("/destination"))
            .collect()
    })
}
