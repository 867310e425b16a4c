//! The Genesys Cloud API as it is: regions, OAuth, REST calls, socket frames
//! and topic names. Nothing here knows about reconnection policy, the
//! pipeline or outputs.

pub mod api;
pub mod auth;
pub mod directory;
pub mod frame;
pub mod region;
pub mod state;
pub mod topic;

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The most topics Genesys accepts on one channel.
pub const MAX_TOPICS_PER_CHANNEL: usize = 1000;
/// The most channels one user + OAuth client may hold; the 21st evicts one.
pub const MAX_CHANNELS: usize = 20;

/// The `Retry-After` of a reply, in seconds (the form Genesys sends).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// One HTTP client for all REST and login calls: bounded timeouts, so a hung
/// server costs a retry, never a stuck shard.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("genesys-kafka-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with static settings builds")
}
