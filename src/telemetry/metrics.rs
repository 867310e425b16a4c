//! The metric set (names fixed by the README's metric table) and the health
//! record behind `/readyz`.

use std::collections::BTreeMap;
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
    pub directory_entities: IntGaugeVec,
    pub directory_refreshes: IntCounterVec,
    pub topics_unserved: IntGauge,
    pub resync_records: IntCounterVec,
    pub resync_skipped: IntCounterVec,
    pub resync_requests: IntCounterVec,
    pub resync_pending: IntGauge,
    pub resync_seconds: Histogram,
    pub resyncs: IntCounterVec,
    /// Scrape-time gauges read from [`Health`]: what `/readyz` knows, as
    /// numbers an alert can rest on.
    ready: IntGauge,
    shards: IntGaugeVec,
    gap_open_seconds: Gauge,
    pub health: Health,
    clocks: Mutex<Vec<Arc<AtomicU64>>>,
}

/// Why an event was dropped after receipt (`events_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The output's buffer was full and the overflow policy drops.
    Overflow,
    /// The shutdown deadline passed with the event unacknowledged.
    Shutdown,
    /// Kafka refused the record for good (too large, not authorised).
    KafkaRejected,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Overflow,
        DropReason::Shutdown,
        DropReason::KafkaRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overflow => "overflow",
            DropReason::Shutdown => "shutdown",
            DropReason::KafkaRejected => "kafka_rejected",
        }
    }
}

/// The kinds of `gaps_total{kind}`.
pub const GAP_KINDS: [&str; 2] = ["planned", "unplanned"];
/// The results of `token_refreshes_total{result}`.
pub const TOKEN_RESULTS: [&str; 3] = ["ok", "rejected", "error"];
/// The kinds of `directory_entities{kind}`.
pub const DIRECTORY_KINDS: [&str; 2] = ["user", "queue"];
/// The results of `directory_refreshes_total{result}`.
pub const DIRECTORY_RESULTS: [&str; 3] = ["ok", "error", "rate_limited"];
/// The results of `resync_requests_total{result}`.
pub const RESYNC_RESULTS: [&str; 3] = ["ok", "error", "rate_limited"];
/// The reasons of `resync_skipped_total{reason}`.
pub const RESYNC_SKIPPED: [&str; 2] = ["newer_notification", "stale"];
/// The statuses of `resyncs_total{status}`.
pub const RESYNC_STATUSES: [&str; 2] = ["complete", "partial"];
/// The states of `shards{state}`: each shard is in exactly one.
pub const SHARD_STATES: [&str; 3] = ["receiving", "blind", "rejected"];

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
    /// Topics of the directory that fit in no channel of the budget.
    pub topics_unserved: AtomicI64,
    /// The start of each open gap, by shard.
    open_gaps: Mutex<BTreeMap<usize, SystemTime>>,
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
        let unserved = self.topics_unserved.load(Ordering::Relaxed);
        if unserved > 0 {
            missing.push(format!(
                "{unserved} topics not subscribed: the directory needs more than Genesys' \
                 {} channels (see genesys_bridge_topics_unserved)",
                crate::genesys::MAX_CHANNELS
            ));
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Shard `shard` went blind at `since` (a gap opened).
    pub fn gap_opened(&self, shard: usize, since: SystemTime) {
        if let Ok(mut gaps) = self.open_gaps.lock() {
            gaps.insert(shard, since);
        }
    }

    /// Shard `shard`'s gap closed.
    pub fn gap_closed(&self, shard: usize) {
        if let Ok(mut gaps) = self.open_gaps.lock() {
            gaps.remove(&shard);
        }
    }

    /// The age of the oldest open gap at `now`; zero when none is open.
    fn oldest_gap_age(&self, now: SystemTime) -> f64 {
        self.open_gaps
            .lock()
            .ok()
            .and_then(|gaps| gaps.values().min().copied())
            .and_then(|since| now.duration_since(since).ok())
            .map_or(0.0, |age| age.as_secs_f64())
    }

    /// Shards receiving, blind and rejected (every topic refused), in the
    /// order of [`SHARD_STATES`]. A shard not yet subscribed is blind.
    fn shard_states(&self) -> [i64; 3] {
        let total = self.shards_total.load(Ordering::Relaxed);
        let receiving = self.shards_covered.load(Ordering::Relaxed).max(0);
        let rejected = self.shards_rejected.load(Ordering::Relaxed).max(0);
        [receiving, (total - receiving - rejected).max(0), rejected]
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
            directory_entities: IntGaugeVec::new(
                Opts::new(
                    "genesys_bridge_directory_entities",
                    "Entities of the last good directory listing, by kind (user, queue).",
                ),
                &["kind"],
            )?,
            directory_refreshes: counter_vec(
                "genesys_bridge_directory_refreshes_total",
                "Directory listings, by result (ok, error, rate_limited).",
                "result",
            )?,
            topics_unserved: IntGauge::new(
                "genesys_bridge_topics_unserved",
                "Topics of the directory not subscribed because they exceed the channel budget.",
            )?,
            resync_records: counter_vec(
                "genesys_bridge_resync_records_total",
                "Resync records handed to the output, by kind (presence, routing_status, conversation).",
                "kind",
            )?,
            resync_skipped: counter_vec(
                "genesys_bridge_resync_skipped_total",
                "Resync records not published, by reason: newer_notification (a notification \
                 received after the fetch is newer), stale (fetched too long ago to tell).",
                "reason",
            )?,
            resync_requests: counter_vec(
                "genesys_bridge_resync_requests_total",
                "REST requests of the resync, by result (ok, error, rate_limited).",
                "result",
            )?,
            resync_pending: IntGauge::new(
                "genesys_bridge_resync_pending_resources",
                "Resources waiting to be fetched by the resync.",
            )?,
            resync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "genesys_bridge_resync_seconds",
                    "From a gap's close (or the first subscription) to the end of its resync.",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ]),
            )?,
            resyncs: counter_vec(
                "genesys_bridge_resyncs_total",
                "Resyncs ended, by status: complete, or partial (some resources could not be fetched).",
                "status",
            )?,
            ready: IntGauge::new(
                "genesys_bridge_ready",
                "1 when /readyz answers 200 (every shard receiving, Kafka reachable), else 0.",
            )?,
            shards: IntGaugeVec::new(
                Opts::new(
                    "genesys_bridge_shards",
                    "Shards by state: receiving (a socket receiving), blind (none: a gap), \
                     rejected (every topic refused).",
                ),
                &["state"],
            )?,
            gap_open_seconds: Gauge::new(
                "genesys_bridge_gap_open_seconds",
                "Age of the oldest open gap; 0 when no shard is blind after having received.",
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
        r.register(Box::new(m.directory_entities.clone()))?;
        r.register(Box::new(m.directory_refreshes.clone()))?;
        r.register(Box::new(m.topics_unserved.clone()))?;
        r.register(Box::new(m.resync_records.clone()))?;
        r.register(Box::new(m.resync_skipped.clone()))?;
        r.register(Box::new(m.resync_requests.clone()))?;
        r.register(Box::new(m.resync_pending.clone()))?;
        r.register(Box::new(m.resync_seconds.clone()))?;
        r.register(Box::new(m.resyncs.clone()))?;
        r.register(Box::new(m.ready.clone()))?;
        r.register(Box::new(m.shards.clone()))?;
        r.register(Box::new(m.gap_open_seconds.clone()))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, ...
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Every label value exists from the start, so rate() works on the
        // first increment and an alert on a series sees it before then.
        for reason in Reason::ALL {
            m.reconnects.with_label_values(&[reason.as_str()]);
        }
        for kind in DIRECTORY_KINDS {
            m.directory_entities.with_label_values(&[kind]);
        }
        for result in DIRECTORY_RESULTS {
            m.directory_refreshes.with_label_values(&[result]);
        }
        for kind in crate::event::ResyncKind::ALL {
            m.resync_records.with_label_values(&[kind.as_str()]);
        }
        for (vec, values) in [
            (&m.resync_skipped, &RESYNC_SKIPPED[..]),
            (&m.resync_requests, &RESYNC_RESULTS[..]),
            (&m.resyncs, &RESYNC_STATUSES[..]),
        ] {
            for value in values {
                vec.with_label_values(&[value]);
            }
        }
        for reason in DropReason::ALL {
            m.events_dropped.with_label_values(&[reason.as_str()]);
        }
        for kind in GAP_KINDS {
            m.gaps.with_label_values(&[kind]);
        }
        for result in TOKEN_RESULTS {
            m.token_refreshes.with_label_values(&[result]);
        }
        for state in SHARD_STATES {
            m.shards.with_label_values(&[state]);
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
        self.ready.set(i64::from(self.health.not_ready().is_none()));
        for (state, n) in SHARD_STATES.iter().zip(self.health.shard_states()) {
            self.shards.with_label_values(&[state]).set(n);
        }
        self.gap_open_seconds
            .set(self.health.oldest_gap_age(SystemTime::now()));
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "Could not encode metrics.");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_labelled_series_and_the_health_gauges_exist_from_the_start() {
        let text = metrics().render();
        for series in [
            r#"genesys_bridge_events_dropped_total{reason="kafka_rejected"}"#,
            r#"genesys_bridge_events_dropped_total{reason="overflow"}"#,
            r#"genesys_bridge_shards{state="receiving"}"#,
            r#"genesys_bridge_shards{state="blind"}"#,
            r#"genesys_bridge_shards{state="rejected"}"#,
            r#"genesys_bridge_reconnects_total{reason="channel_gone"}"#,
            "genesys_bridge_ready ",
            "genesys_bridge_gap_open_seconds ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn shard_states_split_every_shard_into_one_state() {
        let health = Health::default();
        health.shards_total.store(5, Ordering::Relaxed);
        assert_eq!(
            health.shard_states(),
            [0, 5, 0],
            "not yet subscribed: blind"
        );
        health.shards_covered.store(3, Ordering::Relaxed);
        health.shards_rejected.store(1, Ordering::Relaxed);
        assert_eq!(health.shard_states(), [3, 1, 1]);
        assert!(health.not_ready().is_some());
    }

    #[test]
    fn the_oldest_open_gap_sets_the_age() {
        let health = Health::default();
        let now = SystemTime::now();
        assert_eq!(health.oldest_gap_age(now), 0.0, "no gap: zero");
        health.gap_opened(0, now - Duration::from_secs(3));
        health.gap_opened(2, now - Duration::from_secs(7));
        assert_eq!(health.oldest_gap_age(now), 7.0);
        health.gap_closed(2);
        assert_eq!(health.oldest_gap_age(now), 3.0);
        health.gap_closed(0);
        assert_eq!(health.oldest_gap_age(now), 0.0);
    }
}
