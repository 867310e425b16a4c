//! The metric set (names fixed by the README's metric table) and the health
//! record behind `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::event::Reason;

pub struct Metrics {
    pub registry: Registry,
    pub reconnects: IntCounterVec,
    pub events_received: IntCounter,
    pub events_published: IntCounter,
    pub events_duplicate: IntCounter,
    pub events_dropped: IntCounterVec,
    pub frames_invalid: IntCounter,
    pub gaps: IntCounterVec,
    pub gap_seconds: Histogram,
    pub publish_latency: Histogram,
    pub channels_connected: IntGauge,
    pub topics_subscribed: IntGauge,
    pub topics_rejected: IntGauge,
    pub heartbeat_age: Gauge,
    pub token_refreshes: IntCounterVec,
    pub kafka_delivery_errors: IntCounter,
    pub buffered_events: IntGauge,
    pub build_info: IntGaugeVec,
    pub health: Health,
    clocks: Mutex<Vec<Arc<AtomicU64>>>,
}

/// What `/readyz` needs to know.
#[derive(Default)]
pub struct Health {
    pub shards_total: AtomicI64,
    pub shards_covered: AtomicI64,
    /// Shards whose every topic was rejected: they can never be covered.
    pub shards_rejected: AtomicI64,
    pub kafka_reachable: AtomicBool,
    /// Set when the sink needs no broker (stdout).
    pub kafka_not_needed: AtomicBool,
}

impl Health {
    /// `None` when ready, else what is missing.
    pub fn not_ready(&self) -> Option<String> {
        let total = self.shards_total.load(Ordering::Relaxed);
        let covered = self.shards_covered.load(Ordering::Relaxed);
        let rejected = self.shards_rejected.load(Ordering::Relaxed);
        let kafka = self.kafka_reachable.load(Ordering::Relaxed)
            || self.kafka_not_needed.load(Ordering::Relaxed);
        let mut missing = Vec::new();
        if total == 0 {
            missing.push("no shard started yet".to_owned());
        } else if covered < total {
            missing.push(format!(
                "{} of {total} shards not receiving",
                total - covered
            ));
        }
        if rejected > 0 {
            missing.push(format!("{rejected} shards have every topic rejected"));
        }
        if !kafka {
            missing.push("kafka not reachable".to_owned());
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }
}

/// The time of the last frame on one socket, for `heartbeat_age_seconds`.
/// Dropping it removes the socket from the gauge.
pub struct HeartbeatClock {
    last_ms: Arc<AtomicU64>,
}

impl HeartbeatClock {
    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl Drop for HeartbeatClock {
    fn drop(&mut self) {
        if let Ok(mut clocks) = metrics().clocks.lock() {
            clocks.retain(|c| !Arc::ptr_eq(c, &self.last_ms));
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new().expect("metric definitions are valid and unique"))
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let m = Self {
            reconnects: counter_vec(
                "genesys_bridge_reconnects_total",
                "Sockets replaced, by reason.",
                "reason",
            )?,
            events_received: IntCounter::new(
                "genesys_bridge_events_received_total",
                "Notification frames received from Genesys (before dedup).",
            )?,
            events_published: IntCounter::new(
                "genesys_bridge_events_published_total",
                "Events acknowledged by the output (Kafka delivery report or stdout write).",
            )?,
            events_duplicate: IntCounter::new(
                "genesys_bridge_events_duplicate_total",
                "Events dropped as duplicates of one seen within the dedup window.",
            )?,
            events_dropped: counter_vec(
                "genesys_bridge_events_dropped_total",
                "Events dropped after receipt, by reason.",
                "reason",
            )?,
            frames_invalid: IntCounter::new(
                "genesys_bridge_frames_invalid_total",
                "Socket frames that could not be understood (skipped).",
            )?,
            gaps: counter_vec(
                "genesys_bridge_gaps_total",
                "Intervals with a shard of topics not receiving, by kind.",
                "kind",
            )?,
            gap_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "genesys_bridge_gap_seconds",
                    "Length of closed gaps (blind time).",
                )
                .buckets(vec![
                    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                ]),
            )?,
            publish_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "genesys_bridge_publish_latency_seconds",
                    "Time from frame receipt to successful delivery report.",
                )
                .buckets(vec![
                    // Fine around the 15 ms target, so quantiles read from it are close.
                    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )?,
            channels_connected: IntGauge::new(
                "genesys_bridge_channels_connected",
                "Sockets open and receiving.",
            )?,
            topics_subscribed: IntGauge::new(
                "genesys_bridge_topics_subscribed",
                "Topics accepted by Genesys across all shards.",
            )?,
            topics_rejected: IntGauge::new(
                "genesys_bridge_topics_rejected",
                "Topics Genesys rejected (permissions, unknown topic).",
            )?,
            heartbeat_age: Gauge::new(
                "genesys_bridge_heartbeat_age_seconds",
                "Seconds since the stalest open socket last received a frame.",
            )?,
            token_refreshes: counter_vec(
                "genesys_bridge_token_refreshes_total",
                "OAuth token requests, by result.",
                "result",
            )?,
            kafka_delivery_errors: IntCounter::new(
                "genesys_bridge_kafka_delivery_errors_total",
                "Failed Kafka delivery reports (the event is retried).",
            )?,
            buffered_events: IntGauge::new(
                "genesys_bridge_buffered_events",
                "Events handed to the output and not yet acknowledged.",
            )?,
            build_info: IntGaugeVec::new(
                Opts::new("genesys_bridge_build_info", "Build information; always 1."),
                &["version"],
            )?,
            registry,
            health: Health::default(),
            clocks: Mutex::new(Vec::new()),
        };
        let r = &m.registry;
        r.register(Box::new(m.reconnects.clone()))?;
        r.register(Box::new(m.events_received.clone()))?;
        r.register(Box::new(m.events_published.clone()))?;
        r.register(Box::new(m.events_duplicate.clone()))?;
        r.register(Box::new(m.events_dropped.clone()))?;
        r.register(Box::new(m.frames_invalid.clone()))?;
        r.register(Box::new(m.gaps.clone()))?;
        r.register(Box::new(m.gap_seconds.clone()))?;
        r.register(Box::new(m.publish_latency.clone()))?;
        r.register(Box::new(m.channels_connected.clone()))?;
        r.register(Box::new(m.topics_subscribed.clone()))?;
        r.register(Box::new(m.topics_rejected.clone()))?;
        r.register(Box::new(m.heartbeat_age.clone()))?;
        r.register(Box::new(m.token_refreshes.clone()))?;
        r.register(Box::new(m.kafka_delivery_errors.clone()))?;
        r.register(Box::new(m.buffered_events.clone()))?;
        r.register(Box::new(m.build_info.clone()))?;
        // Every label value exists from the start, so rate() works on the first increment.
        for reason in Reason::ALL {
            m.reconnects.with_label_values(&[reason.as_str()]);
        }
        for reason in ["overflow", "shutdown"] {
            m.events_dropped.with_label_values(&[reason]);
        }
        for kind in ["planned", "unplanned"] {
            m.gaps.with_label_values(&[kind]);
        }
        for result in ["ok", "rejected", "error"] {
            m.token_refreshes.with_label_values(&[result]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(m)
    }

    /// A clock for one socket; it counts in the heartbeat gauge until dropped.
    pub fn heartbeat_clock(&self) -> HeartbeatClock {
        let last_ms = Arc::new(AtomicU64::new(now_ms()));
        if let Ok(mut clocks) = self.clocks.lock() {
            clocks.push(last_ms.clone());
        }
        HeartbeatClock { last_ms }
    }

    /// The Prometheus text exposition, with scrape-time gauges brought up to date.
    pub fn render(&self) -> String {
        let now = now_ms();
        let stalest = self
            .clocks
            .lock()
            .map(|clocks| {
                clocks
                    .iter()
                    .map(|c| now.saturating_sub(c.load(Ordering::Relaxed)))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        self.heartbeat_age.set(stalest as f64 / 1000.0);
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "Could not encode metrics.");
        }
        out
    }
}
