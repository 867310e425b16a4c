//! genesys-kafka-bridge: keeps live WebSockets to the Genesys Cloud
//! Notification API and publishes every notification, deduplicated, to
//! Kafka topics keyed by resource id.
//!
//! Layout, in the direction data flows:
//! - [`config`]: defaults < file < environment, validated into
//!   [`config::Settings`] and the domain types the stages take;
//! - [`genesys`]: the API as it is (regions, OAuth, REST, frames, topic keys,
//!   Genesys' limits); it imports none of `config`, `connection` or
//!   `telemetry`;
//! - [`connection`]: [`connection::machine`] decides (a pure state machine:
//!   shards, make-before-break, backoff, gaps), [`connection::supervisor`]
//!   executes, [`connection::session`] is one socket;
//! - [`event`]: the values that cross stages (notifications, gaps);
//! - [`pipeline`]: dedup and routing into [`sink::Record`]s;
//! - [`sink`]: Kafka (delivery-tracked) and stdout (NDJSON), behind one
//!   [`sink::Sink`] interface;
//! - [`telemetry`] and [`admin`]: metrics, logs, probes; telemetry observes
//!   and never steers;
//! - leaves every layer may use: [`backoff`], [`secret`];
//! - [`app`]: wires the stages, tracks their tasks and owns shutdown; the
//!   binary is a thin CLI around [`app::run`], and the tests call the same
//!   function.

#![deny(unsafe_code)] // one audited exception: sink::kafka::ffi (librdkafka calls)

pub mod admin;
pub mod app;
pub mod backoff;
pub mod checkpoint;
pub mod config;
pub mod connection;
#[cfg(feature = "demo")]
pub mod demo;
pub mod directory;
pub mod event;
pub mod genesys;
pub mod pipeline;
pub mod resync;
pub mod secret;
pub mod sink;
pub mod telemetry;
mod timer;
