//! Telemetry: one Prometheus registry for the process, a health record the
//! admin server reads, and one typed function per happening that writes the
//! log line and updates the metric together, so the two never disagree.
//! Telemetry observes and never steers: nothing here changes what the
//! pipeline does.

pub mod events;
mod metrics;

pub use metrics::{metrics, DropReason, Health, HeartbeatClock, Metrics};

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// Installs the global tracing subscriber, writing to stderr (stdout stays
/// free for the NDJSON sink). The level comes from `RUST_LOG`, else
/// `default_filter` (e.g. `info`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    init_logging_with(
        format,
        filter,
        std::io::stderr,
        std::io::stderr().is_terminal(),
    );
}

/// [`init_logging`] with an explicit filter and writer (tests capture logs
/// with it). A second call keeps the first subscriber.
pub fn init_logging_with<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // tungstenite traces the whole handshake request, whose path is the
    // channel's connectUri (a credential), and every frame and message,
    // whose payloads name the channel (`socket_closing` carries its id, a
    // capability). Nothing at any level may show them.
    let never_secrets = filter_fn(|meta| {
        !(meta.target().starts_with("tungstenite::") && *meta.level() == tracing::Level::TRACE)
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(never_secrets);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::Pretty => registry.with(layer).try_init(),
    };
}
