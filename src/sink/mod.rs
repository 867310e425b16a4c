//! Outputs. A sink takes [`Record`]s until its input closes and counts an
//! event as published only when the output acknowledged it (a Kafka delivery
//! report, a written stdout line).

pub mod kafka;
pub mod stdout;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// One output record: a routed event or a gap marker.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(&'static str, Bytes)>,
    /// When the event was received (for latency); `None` for gap markers.
    pub received_at: Option<SystemTime>,
}

impl Record {
    /// Gap markers are control records, not Genesys events.
    pub fn is_event(&self) -> bool {
        self.received_at.is_some()
    }
}
