//! Outputs. A sink takes [`Record`]s until its input closes and counts an
//! event as published only when the output acknowledged it (a Kafka delivery
//! report, a written stdout line).

pub mod kafka;
pub mod stdout;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, SinkKind};
use crate::telemetry::metrics;

/// An output, ready to run: `app` wires every sink the same way.
pub trait Sink: Send {
    /// Publishes records until `input` closes and every one is
    /// acknowledged; once `deadline` fires it stops waiting, flushes what
    /// it can and counts the rest as dropped.
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        deadline: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The configured output, set up (for Kafka: the producer, and `topics`
/// created if asked).
pub async fn open(settings: &Settings, topics: &[String]) -> anyhow::Result<Box<dyn Sink>> {
    Ok(match settings.pipeline.sink {
        SinkKind::Kafka => Box::new(
            kafka::KafkaSink::open(&settings.kafka, topics)
                .await
                .context("setting up Kafka")?,
        ),
        SinkKind::Stdout => {
            metrics()
                .health
                .kafka_not_needed
                .store(true, Ordering::Relaxed);
            Box::new(stdout::StdoutSink)
        }
    })
}

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
