//! Logging (R-OPS-4, R-PII-3): structured JSON (or text) on stderr, with
//! the request id carried by the request span. Every formatted line passes
//! through the PII engine before it is written, so a value that slipped
//! into a log field is redacted all the same; by convention nothing that
//! may hold personal data or secrets is logged in the first place.

use sluice_config::server::{LogConfig, LogFormat};
use sluice_pii::log::RedactingMakeWriter;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Safe to call more than once (later calls
/// do nothing).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = RedactingMakeWriter::new(std::io::stderr);
    let result = match config.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(writer)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .try_init(),
    };
    let _ = result;
}
