//! genesys-kafka-bridge: keeps live WebSockets to the Genesys Cloud
//! Notification API and publishes every notification, deduplicated, to
//! Kafka topics keyed by resource id.
//!
//! Layout, in the direction data flows:
//! - [`config`]: defaults < file < environment, validated into [`config::Settings`];
//! - [`genesys`]: the API as it is (regions, OAuth, REST, frames, topic keys);
//! - [`connection`]: sessions, shards, make-before-break, backoff, gaps;
//! - [`pipeline`]: dedup and routing into [`sink::Record`]s;
//! - [`sink`]: Kafka (delivery-tracked) and stdout (NDJSON);
//! - [`telemetry`] and [`admin`]: metrics, logs, probes;
//! - [`app`]: wires the stages and owns shutdown; the binary is a thin CLI
//!   around [`app::run`], and the tests call the same function.

#![deny(unsafe_code)] // one audited exception: sink::kafka::ffi (librdkafka calls)

pub mod admin;
pub mod app;
pub mod config;
pub mod connection;
#[cfg(feature = "demo")]
pub mod demo;
pub mod event;
pub mod genesys;
pub mod pipeline;
pub mod sink;
pub mod telemetry;
mod timer;
