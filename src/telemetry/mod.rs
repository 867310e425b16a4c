//! Telemetry: one Prometheus registry for the process, a health record the
//! admin server reads, and one typed function per happening that writes the
//! log line and updates the metric together, so the two never disagree.
//! Telemetry observes and never steers: nothing here changes what the
//! pipeline does.

pub mod events;
mod metrics;

pub use metrics::{metrics, Health, HeartbeatClock, Metrics};

use crate::config::LogFormat;

/// Installs the global tracing subscriber; the level comes from `RUST_LOG`
/// (else `default_filter`, e.g. `info`). Logs go to stderr so that stdout stays free for the
/// NDJSON sink.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests, the demo) keeps the first subscriber.
    let _ = result;
}
