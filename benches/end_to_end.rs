//! End to end: the emulator (in this process) → the release bridge binary →
//! a private Tansu broker, measured from outside the bridge the way an
//! operator would: /proc for CPU and memory, the bridge's /metrics for
//! counts and publish latency, the emulator's coverage records for blind
//! time. Prints one table (also written to target/bench/end-to-end.md).
//!
//! Run it with `scripts/bench.sh` (flags there); plain `cargo bench` runs it
//! with the defaults too. No assertion: the figures are compared with the
//! targets and a miss is reported with its size.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use genesys_emulator::{Config as EmuConfig, Emulator, RecordMode, RequestKind, Target};

use common::*;

const BROKER_PORT: u16 = 19393;

struct Options {
    topics: usize,
    max_rate: f64,
    seconds: u64,
    drops: usize,
    /// Events per generated body in the load phase (each keeps its own
    /// sequence): the emulator shares the cores with the bridge, and
    /// building a fresh JSON body per event cost it more than the bridge's
    /// whole work on the event.
    body_reuse: u32,
    /// `BENCH_ONLY=idle|moderate|floor|load|latency|recovery|directory|resync`: that phase alone (experiments);
    /// unset: every phase.
    only: Option<String>,
}

impl Options {
    fn from_env() -> Self {
        let get = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            topics: get("BENCH_TOPICS", 10_000.0) as usize,
            max_rate: get("BENCH_MAX_RATE", 150_000.0),
            seconds: get("BENCH_SECONDS", 20.0) as u64,
            drops: get("BENCH_DROPS", 50.0) as usize,
            body_reuse: get("BENCH_BODY_REUSE", 16.0).max(1.0) as u32,
            only: std::env::var("BENCH_ONLY")
                .ok()
                .filter(|v| !v.is_empty())
                .inspect(|only| {
                    assert!(
                        Self::PHASES.contains(&only.as_str()),
                        "BENCH_ONLY={only}: expected one of {:?}, or unset for every phase",
                        Self::PHASES
                    );
                }),
        }
    }

    const PHASES: [&str; 8] = [
        "idle",
        "moderate",
        "floor",
        "load",
        "latency",
        "recovery",
        "directory",
        "resync",
    ];

    fn runs(&self, phase: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == phase)
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks harness-less benches for names
    }
    let options = Options::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let table = runtime.block_on(run(&options));
    println!("\n{table}");
    let out = repo().join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    std::fs::write(out.join("end-to-end.md"), &table).expect("write table");
}

/// One line of the table.
struct Row {
    measure: String,
    target: String,
    result: String,
    verdict: String,
}

fn row(measure: &str, target: Option<(f64, bool)>, value: f64, unit: &str, detail: &str) -> Row {
    // target: (limit, higher_is_better)
    let (target_text, verdict) = match target {
        None => ("-".to_owned(), "-".to_owned()),
        Some((limit, higher)) => {
            let sign = if higher { "≥" } else { "≤" };
            let ok = if higher {
                value >= limit
            } else {
                value <= limit
            };
            let verdict = if ok {
                "met".to_owned()
            } else {
                let by = (value - limit).abs();
                let pct = if limit > 0.0 { by / limit * 100.0 } else { 0.0 };
                format!("MISSED by {} {unit} ({pct:.0} %)", fmt_num(by))
            };
            (format!("{sign} {} {unit}", fmt_num(limit)), verdict)
        }
    };
    Row {
        measure: measure.into(),
        target: target_text,
        result: format!("{} {unit}{detail}", fmt_num(value)),
        verdict,
    }
}

fn fmt_num(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0.00"
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

async fn run(o: &Options) -> String {
    // Each phase gets a fresh broker: Tansu's memory storage keeps every
    // record in RAM, and the load phase leaves millions of them.
    let fresh_broker = || PrivateBroker::start(BROKER_PORT, "memory");
    let work = repo().join("target/bench/work");
    let mut rows = Vec::new();

    // 1. Idle: 10 topics, no events.
    if o.runs("idle") {
        let broker = fresh_broker();
        let brokers = broker.brokers();
        let emu = emulator(EmuConfig::default()).await;
        let topics = emu.sample_topics(10);
        let bridge = Bridge::start(&emu, &topics, &brokers, &work.join("idle"), &[]).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cpu0 = bridge.cpu_seconds();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cpu = bridge.cpu_seconds() - cpu0;
        let (rss, _) = bridge.memory_kib();
        rows.push(row(
            "idle RSS (10 topics, no events)",
            Some((15.0, false)),
            rss as f64 / 1024.0,
            "MiB",
            "",
        ));
        rows.push(row("idle CPU", None, cpu / 10.0 * 100.0, "% of a core", ""));
        bridge.stop().await;
        emu.shutdown().await;
    }

    // 2. The rates contact centres run: CPU per event where wake-ups, not
    // bytes, are the cost; 30 s each, after 5 s to settle.
    if o.runs("moderate") {
        for (topics, rate) in [(200usize, 500.0), (1_000, 2_000.0)] {
            let broker = fresh_broker();
            let brokers = broker.brokers();
            let emu = emulator(EmuConfig {
                record_mode: RecordMode::Compact,
                body_reuse: o.body_reuse,
                ..EmuConfig::default()
            })
            .await;
            let topics_list = emu.sample_topics(topics);
            let bridge = Bridge::start(
                &emu,
                &topics_list,
                &brokers,
                &work.join(format!("moderate-{rate}")),
                &[],
            )
            .await;
            emu.set_rate(rate);
            tokio::time::sleep(Duration::from_secs(5)).await;
            let before = bridge
                .histogram("genesys_bridge_publish_latency_seconds")
                .await;
            let pid = bridge.pid.to_string();
            let (rdk0, all0) = (
                threads_cpu(&pid, |n| n.starts_with("rdk:")),
                threads_cpu(&pid, |_| true),
            );
            let (_, broker0) = neighbours_cpu_seconds();
            let (published, cpu, secs) = bridge.window(30).await;
            let (_, broker1) = neighbours_cpu_seconds();
            let (rdk1, all1) = (
                threads_cpu(&pid, |n| n.starts_with("rdk:")),
                threads_cpu(&pid, |_| true),
            );
            let after = bridge
                .histogram("genesys_bridge_publish_latency_seconds")
                .await;
            let (_, peak) = bridge.memory_kib();
            let window: Vec<(f64, f64)> = after
                .iter()
                .map(|&(le, n)| {
                    let n0 = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
                    (le, n - n0)
                })
                .collect();
            let label = format!("{topics} topics, {rate:.0} events/s");
            rows.push(row(
                &format!("bridge CPU per event ({label})"),
                Some((if rate < 1_000.0 { 75.0 } else { 35.0 }, false)),
                cpu / published.max(1.0) * 1e6,
                "µs",
                &format!(
                    " ({:.0} events/s published, {:.1} % of a core)",
                    published / secs,
                    cpu / secs * 100.0
                ),
            ));
            let per = |x: f64| x / published.max(1.0);
            rows.push(row(
                &format!("of which librdkafka's threads ({label})"),
                None,
                per(rdk1.0 - rdk0.0) * 1e6,
                "µs",
                &format!(
                    " ({:.2} of the bridge's {:.2} thread wake-ups per event; the broker, Tansu: {:.0} µs per event)",
                    per((rdk1.1 - rdk0.1) as f64),
                    per((all1.1 - all0.1) as f64),
                    per(broker1 - broker0) * 1e6
                ),
            ));
            rows.push(row(
                &format!("peak RSS ({label})"),
                Some((30.0, false)),
                peak as f64 / 1024.0,
                "MiB",
                "",
            ));
            rows.push(row(
                &format!("publish latency p99 ({label})"),
                Some((15.0, false)),
                quantile(&window, 0.99) * 1000.0,
                "ms",
                "",
            ));
            emu.set_rate(0.0);
            bridge.stop().await;
            emu.shutdown().await;
        }
    }

    // 2b. librdkafka alone at the moderate phase's rates and topics.
    if o.runs("floor") {
        for (topics, rate) in [(200usize, 500.0), (1_000, 2_000.0)] {
            let broker = fresh_broker();
            let brokers = broker.brokers();
            let emu = emulator(EmuConfig::default()).await;
            let topics_list = emu.sample_topics(topics);
            emu.shutdown().await;
            let label = format!("{topics} topics, {rate:.0} events/s");
            // The same Kafka topics, partitions and rates as the moderate
            // phase through librdkafka alone: the floor under the bridge's
            // figures there.
            let kafka_topics: Vec<String> = {
                let mut router = genesys_kafka_bridge::pipeline::route::Router::new(
                    &unique_prefix("floor"),
                    Default::default(),
                );
                let mut set: Vec<String> = topics_list
                    .iter()
                    .map(|t| router.kafka_topic(t).to_string())
                    .collect();
                set.sort();
                set.dedup();
                set
            };
            let section = genesys_kafka_bridge::config::KafkaSection {
                brokers: brokers.clone(),
                partitions: PARTITIONS,
                ..Default::default()
            };
            genesys_kafka_bridge::sink::kafka::create_topics(&section, &kafka_topics)
                .await
                .expect("floor topics");
            let floor = tokio::task::spawn_blocking({
                let (brokers, topics) = (brokers.clone(), kafka_topics.clone());
                move || librdkafka_floor(&brokers, &topics, rate, 500, 20)
            })
            .await
            .expect("floor");
            let per_event = floor.cpu_seconds / floor.delivered.max(1) as f64 * 1e6;
            rows.push(row(
                &format!("librdkafka alone, the same Kafka topics and rate ({label})"),
                None,
                per_event,
                "µs",
                &format!(
                    " per record ({:.0} records/s delivered to {} partitions, {:.2} thread wake-ups per record)",
                    floor.delivered as f64 / floor.seconds,
                    kafka_topics.len() * PARTITIONS as usize,
                    floor.wakeups as f64 / floor.delivered.max(1) as f64,
                ),
            ));
        }
    }

    // 3. 10,000 topics: 5,000 events/s for memory, then as fast as it goes.
    if o.runs("load") {
        let broker = fresh_broker();
        let brokers = broker.brokers();
        let emu = emulator(EmuConfig {
            record_mode: RecordMode::Compact,
            socket_queue_capacity: 65_536,
            body_reuse: o.body_reuse,
            ..EmuConfig::default()
        })
        .await;
        let topics = emu.sample_topics(o.topics);
        let bridge = Bridge::start(&emu, &topics, &brokers, &work.join("load"), &[]).await;

        // What holding the subscriptions costs with no events: the part of
        // the per-event figures below that does not depend on the rate.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, cpu, secs) = bridge.window(o.seconds / 2).await;
        rows.push(row(
            &format!("idle CPU ({} topics, no events)", o.topics),
            None,
            cpu / secs * 100.0,
            "% of a core",
            "",
        ));

        emu.set_rate(5_000.0);
        let (published, cpu, secs) = bridge.window(o.seconds).await;
        let (_, peak) = bridge.memory_kib();
        rows.push(row(
            &format!("peak RSS ({} topics, 5,000 events/s)", o.topics),
            Some((30.0, false)),
            peak as f64 / 1024.0,
            "MiB",
            &format!(" ({:.0} events/s published)", published / secs),
        ));
        rows.push(row(
            "bridge CPU per event at 5,000 events/s",
            Some((5.0, false)),
            cpu / published.max(1.0) * 1e6,
            "µs",
            "",
        ));

        emu.set_rate(o.max_rate);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let offered0 = emu.event_stats().deliverable;
        let (emu0, broker0) = neighbours_cpu_seconds();
        let (published, cpu, secs) = bridge.window(o.seconds).await;
        let (emu1, broker1) = neighbours_cpu_seconds();
        let offered = (emu.event_stats().deliverable - offered0) as f64 / secs;
        rows.push(row(
            &format!("sustained end to end ({} topics)", o.topics),
            Some((50_000.0, true)),
            published / secs,
            "events/s",
            &format!(" (emulator offered {offered:.0}/s)"),
        ));
        rows.push(row(
            "bridge CPU per event at that rate",
            Some((5.0, false)),
            cpu / published.max(1.0) * 1e6,
            "µs",
            &format!(" ({:.2} s per million)", cpu / published.max(1.0) * 1e6),
        ));
        // Where the rest of the two cores went: the sustained rate is what
        // all three leave each other.
        let per_event = |c: f64| c / published.max(1.0) * 1e6;
        rows.push(row(
            "emulator CPU per event at that rate (the bench process)",
            None,
            per_event(emu1 - emu0),
            "µs",
            &format!(" (body_reuse {})", o.body_reuse),
        ));
        rows.push(row(
            "broker CPU per event at that rate (Tansu)",
            None,
            per_event(broker1 - broker0),
            "µs",
            "",
        ));
        emu.set_rate(0.0);
        // At full rate the generator outruns the bridge and the surplus
        // waits in the emulator's socket queues. Once it stops, everything
        // it offered must still be published: nothing lost on the way.
        let stopped = Instant::now();
        // Events still queued to the socket count once written.
        let settled = emu.settle(Duration::from_secs(60)).await;
        let offered_total = emu.event_stats().deliverable as f64;
        let queued = stopped.elapsed().as_secs_f64();
        let published_total = loop {
            let n = bridge.metric("genesys_bridge_events_published_total").await;
            if n >= offered_total || stopped.elapsed() > Duration::from_secs(120) {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        rows.push(row(
            "after the load: time to publish what was still queued",
            None,
            stopped.elapsed().as_secs_f64(),
            "s",
            &format!(
                " ({published_total:.0} of {offered_total:.0} offered events published; \
                 {queued:.2} s until the emulator's socket queues were empty{})",
                if settled {
                    ""
                } else {
                    ", which they never were"
                }
            ),
        ));
        let dropped = bridge.metric("genesys_bridge_events_dropped_total").await;
        let invalid = bridge.metric("genesys_bridge_frames_invalid_total").await;
        rows.push(row(
            "events dropped / invalid frames during the load",
            None,
            dropped + invalid,
            "",
            "",
        ));
        bridge.stop().await;
        emu.shutdown().await;
    }

    // 4. Latency at 1,000 events/s (default batch_wait 5 ms), then abrupt
    // drops with the default backoff, then planned moves.
    if o.runs("latency") {
        let broker = fresh_broker();
        let brokers = broker.brokers();
        let emu = emulator(EmuConfig {
            socket_closing_grace: Duration::from_secs(3),
            ..EmuConfig::default()
        })
        .await;
        let topics = emu.sample_topics(100);
        // A connection counts as healthy after 2 s (default 30 s), so that
        // every drop starts from the first backoff window, as a drop after
        // a long healthy run would.
        let bridge = Bridge::start(
            &emu,
            &topics,
            &brokers,
            &work.join("latency"),
            &[("GENESYS_BRIDGE_RECONNECT__STABLE_AFTER", "2s")],
        )
        .await;
        emu.set_rate(1_000.0);
        tokio::time::sleep(Duration::from_secs(o.seconds.max(10))).await;
        let histogram = bridge
            .histogram("genesys_bridge_publish_latency_seconds")
            .await;
        let total = histogram.last().map(|b| b.1).unwrap_or(0.0);
        for (q, target) in [(0.5, None), (0.99, Some((15.0, false))), (0.999, None)] {
            rows.push(row(
                &format!("publish latency p{} at 1,000 events/s", q * 100.0),
                target,
                quantile(&histogram, q) * 1000.0,
                "ms",
                &format!(" ({total:.0} events)"),
            ));
        }

        emu.set_rate(200.0);
        let since = SystemTime::now();
        for _ in 0..o.drops {
            emu.drop_sockets(Target::All);
            tokio::time::sleep(Duration::from_millis(100)).await;
            wait_until(Duration::from_secs(30), || emu.covered(&topics[0])).await;
            tokio::time::sleep(Duration::from_millis(2_500)).await;
        }
        let mut blind: Vec<f64> = emu
            .coverage_gaps(&topics[0])
            .into_iter()
            .filter(|g| g.start >= since)
            .filter_map(|g| Some(secs_between(g.end?, g.start)))
            .collect();
        blind.sort_by(f64::total_cmp);
        let n = blind.len();
        rows.push(row(
            &format!("receiving again after an abrupt drop, p50 ({n} drops)"),
            Some((1.5, false)),
            pick(&blind, 0.5),
            "s",
            "",
        ));
        rows.push(row(
            "receiving again after an abrupt drop, p99",
            None,
            pick(&blind, 0.99),
            "s",
            "",
        ));

        let since = SystemTime::now();
        let planned = 10;
        for _ in 0..planned {
            emu.socket_closing(Target::All);
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        let blind_ms: f64 = emu
            .coverage_gaps(&topics[0])
            .into_iter()
            .filter(|g| g.start >= since)
            .map(|g| secs_between(g.end.unwrap_or_else(SystemTime::now), g.start) * 1000.0)
            .sum();
        rows.push(row(
            &format!("blind time over {planned} planned moves (socket_closing)"),
            Some((0.0, false)),
            blind_ms,
            "ms",
            "",
        ));
        bridge.stop().await;
        emu.shutdown().await;
    }
    // 5. Kafka unreachable for 10 s (a proxy resets every connection and
    // stops listening; the broker keeps running), at 500 events/s.
    if o.runs("recovery") {
        let upstream: SocketAddr = ([127, 0, 0, 1], BROKER_PORT).into();
        let mut proxy = KafkaProxy::start(upstream).await;
        let broker =
            PrivateBroker::start_advertising(BROKER_PORT, "memory", &proxy.addr.to_string());
        let emu = emulator(EmuConfig::default()).await;
        let topics = emu.sample_topics(200);
        let bridge = Bridge::start(
            &emu,
            &topics,
            &proxy.addr.to_string(),
            &work.join("recovery"),
            &[],
        )
        .await;
        emu.set_rate(500.0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        proxy.cut().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let during = bridge.metric("genesys_bridge_events_published_total").await;
        let ready_during = bridge.metric("genesys_bridge_ready").await;
        proxy.resume().await;
        let back = Instant::now();
        let (mut resumed, mut ready) = (None, None);
        while back.elapsed() < Duration::from_secs(60) && (resumed.is_none() || ready.is_none()) {
            if resumed.is_none()
                && bridge.metric("genesys_bridge_events_published_total").await > during
            {
                resumed = Some(back.elapsed().as_secs_f64());
            }
            if ready.is_none() && bridge.metric("genesys_bridge_ready").await == 1.0 {
                ready = Some(back.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        emu.set_rate(0.0);
        emu.settle(Duration::from_secs(10)).await;
        let offered = emu.event_stats().deliverable as f64;
        let settled = Instant::now();
        let published = loop {
            let n = bridge.metric("genesys_bridge_events_published_total").await;
            if n >= offered || settled.elapsed() > Duration::from_secs(60) {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        rows.push(row(
            "Kafka unreachable 10 s: publishing resumed after it was back",
            Some((2.0, false)),
            resumed.unwrap_or(f64::NAN),
            "s",
            &format!(" ({published:.0} of {offered:.0} events published in the end)"),
        ));
        rows.push(row(
            "Kafka unreachable 10 s: /readyz ready again after it was back",
            None,
            ready.unwrap_or(f64::NAN),
            "s",
            &format!(" (genesys_bridge_ready during the outage: {ready_during})"),
        ));
        bridge.stop().await;
        emu.shutdown().await;
        drop(broker);
    }
    // 6. A contact centre's directory: 20,000 users and 500 queues behind
    // the templates v2.users.{user}?presence&routingStatus and
    // v2.routing.queues.{queue}.conversations, listed every 10 s. 20,500
    // topics: the budget (19 channels x 1,000) serves 19,000.
    if o.runs("directory") {
        let broker = fresh_broker();
        let brokers = broker.brokers();
        let emu = emulator(EmuConfig {
            record_mode: RecordMode::Compact,
            user_ids: genesys_emulator::config::generated_ids(20_000),
            queue_ids: genesys_emulator::config::generated_ids(500),
            ..EmuConfig::default()
        })
        .await;
        let templates = [
            "v2.users.{user}?presence&routingStatus".to_owned(),
            "v2.routing.queues.{queue}.conversations".to_owned(),
        ];
        let started = SystemTime::now();
        let bridge = Bridge::spawn(
            &emu,
            &templates,
            &brokers,
            &work.join("directory"),
            // The start-up snapshot of 20,000 users would take its REST
            // budget for 40 minutes: not idle. Resync is measured apart.
            &[
                ("GENESYS_BRIDGE_DIRECTORY__REFRESH", "10s"),
                ("GENESYS_BRIDGE_RESYNC__ON_START", "false"),
            ],
        );
        let waited = Instant::now();
        while bridge.metric("genesys_bridge_topics_subscribed").await < 19_000.0
            && waited.elapsed() < Duration::from_secs(180)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let subscribed_after = secs_between(SystemTime::now(), started);
        let requests = emu.requests();
        let listing: Vec<SystemTime> = requests
            .iter()
            .filter(|r| r.kind == RequestKind::Directory)
            .map(|r| r.at)
            .collect();
        let subscription_calls = requests
            .iter()
            .filter(|r| r.kind == RequestKind::Subscriptions)
            .count();
        // The first listing: its calls all come before the first
        // subscription call.
        let first_subscription = requests
            .iter()
            .find(|r| r.kind == RequestKind::Subscriptions)
            .map(|r| r.at);
        let listing: Vec<SystemTime> = listing
            .into_iter()
            .filter(|at| first_subscription.is_none_or(|first| *at <= first))
            .collect();
        let first_listing = match (listing.first(), listing.last()) {
            (Some(first), Some(last)) => secs_between(*last, *first),
            _ => f64::NAN,
        };
        rows.push(row(
            "directory listing: 20,000 users + 500 queues",
            None,
            first_listing,
            "s",
            &format!(" ({} REST calls, 500 a page)", listing.len()),
        ));
        rows.push(row(
            "topics subscribed from it (start to 19,000 accepted)",
            None,
            subscribed_after,
            "s",
            &format!(
                " ({:.0} subscribed on {} subscription calls; {:.0} unserved: over the budget)",
                bridge.metric("genesys_bridge_topics_subscribed").await,
                subscription_calls,
                bridge.metric("genesys_bridge_topics_unserved").await
            ),
        ));
        // Idle with the directory listed every 10 s (no change): 30 s.
        let refreshes0 = bridge
            .metric("genesys_bridge_directory_refreshes_total")
            .await;
        let (_, cpu, secs) = bridge.window(30).await;
        let refreshes = bridge
            .metric("genesys_bridge_directory_refreshes_total")
            .await
            - refreshes0;
        let (rss, peak) = bridge.memory_kib();
        rows.push(row(
            "RSS at 19 channels x 1,000 topics",
            None,
            rss as f64 / 1024.0,
            "MiB",
            &format!(" (peak {:.1} MiB)", peak as f64 / 1024.0),
        ));
        rows.push(row(
            "idle CPU at 19 channels x 1,000 topics, directory listed every 10 s",
            None,
            cpu / secs * 100.0,
            "% of a core",
            &format!(" ({refreshes:.0} no-change refreshes of 41 calls in {secs:.0} s)"),
        ));
        bridge.stop().await;
        emu.shutdown().await;
        drop(broker);
    }

    // 7. The start-up resync of 5,000 users (presence and routing status):
    // its pace at the default request budget, then the whole of it at a
    // budget 25 times larger.
    if o.runs("resync") {
        let broker = fresh_broker();
        let brokers = broker.brokers();
        let templates = ["v2.users.{user}?presence&routingStatus".to_owned()];
        for budget in [None, Some(3_000u32)] {
            let emu = emulator(EmuConfig {
                user_ids: genesys_emulator::config::generated_ids(5_000),
                queue_ids: genesys_emulator::config::generated_ids(1),
                ..EmuConfig::default()
            })
            .await;
            let budget_setting = budget.map(|b| b.to_string());
            let mut env = vec![];
            if let Some(b) = &budget_setting {
                env.push(("GENESYS_BRIDGE_RESYNC__MAX_REQUESTS_PER_MINUTE", b.as_str()));
            }
            let started = Instant::now();
            let bridge = Bridge::spawn(
                &emu,
                &templates,
                &brokers,
                &work.join(format!("resync-{}", budget.unwrap_or(0))),
                &env,
            );
            let state_requests = || {
                emu.requests()
                    .iter()
                    .filter(|r| r.kind == RequestKind::State)
                    .count()
            };
            // 5,000 users: presence 50 a call, routing status one a call.
            let needed = 5_000 / 50 + 5_000;
            match budget {
                None => {
                    // The default budget: its pace over two minutes from
                    // the first request, and what that makes of the whole.
                    // Its first burst is a tenth of a minute's budget.
                    let default_budget = genesys_kafka_bridge::config::ResyncSection::default()
                        .max_requests_per_minute;
                    wait_until(Duration::from_secs(60), || state_requests() > 0).await;
                    let first = Instant::now();
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    let made = state_requests();
                    let pending = bridge
                        .metric("genesys_bridge_resync_pending_resources")
                        .await;
                    let per_minute = made as f64 / first.elapsed().as_secs_f64() * 60.0;
                    rows.push(row(
                        &format!("resync of 5,000 users at the default budget ({default_budget} requests a minute)"),
                        None,
                        needed as f64 / per_minute,
                        "min",
                        &format!(
                            " to converge at the pace measured: {made} REST requests in the first 120 s ({per_minute:.0} a minute, a first burst of {} included), {needed} needed, {pending:.0} resources still pending",
                            default_budget / 10
                        ),
                    ));
                }
                Some(budget) => {
                    let done = loop {
                        let ended = bridge.metric("genesys_bridge_resyncs_total").await;
                        let pending = bridge
                            .metric("genesys_bridge_resync_pending_resources")
                            .await;
                        if (ended >= 5.0 && pending == 0.0)
                            || started.elapsed() > Duration::from_secs(300)
                        {
                            break ended >= 5.0;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    };
                    let complete = bridge
                        .metric("genesys_bridge_resyncs_total{status=\"complete\"}")
                        .await;
                    rows.push(row(
                        &format!("resync of 5,000 users at {budget} requests a minute, start to the last record"),
                        None,
                        started.elapsed().as_secs_f64(),
                        "s",
                        &format!(
                            " ({} REST requests, {needed} by the budget's count: {:.0} s; {complete:.0} of 5 shards' snapshots complete{})",
                            state_requests(),
                            needed as f64 / budget as f64 * 60.0,
                            if done { "" } else { "; it did not end within 300 s" }
                        ),
                    ));
                }
            }
            bridge.stop().await;
            emu.shutdown().await;
        }
        drop(broker);
    }
    render(&rows)
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Machine: {cpu}, {cores} cores; {rustc}; broker Tansu 0.6.0 (memory storage); \
         the emulator runs on the same cores."
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| measure | target | result | verdict |");
    let _ = writeln!(out, "|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.measure, r.target, r.result, r.verdict
        );
    }
    out
}

/// The q-quantile of sorted values (nearest rank).
fn pick(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The q-quantile of a cumulative histogram `[(le, count)]`, interpolated
/// linearly inside its bucket as Prometheus' histogram_quantile does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let inside = count - prev.1;
            let frac = if inside > 0.0 {
                (rank - prev.1) / inside
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, count);
    }
    f64::NAN
}

/// The release bridge binary, seen from outside.
struct Bridge {
    child: tokio::process::Child,
    pid: u32,
    admin: SocketAddr,
    http: reqwest::Client,
}

impl Bridge {
    /// Starts the bridge on `topics` and waits until the emulator sees
    /// every one of them subscribed.
    async fn start(
        emu: &Emulator,
        topics: &[String],
        brokers: &str,
        work: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let bridge = Self::spawn(emu, topics, brokers, work, extra);
        let started = Instant::now();
        let all = wait_until(Duration::from_secs(120), || {
            topics.iter().all(|t| emu.covered(t))
        })
        .await;
        assert!(all, "the bridge subscribed every topic");
        eprintln!(
            "bench: {} topics subscribed in {:.1} s",
            topics.len(),
            started.elapsed().as_secs_f64()
        );
        bridge
    }

    /// Starts the bridge (`topics` may be templates) without waiting.
    fn spawn(
        emu: &Emulator,
        topics: &[String],
        brokers: &str,
        work: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = open_log(work);
        let mut command = bridge_command(emu, topics, brokers, &unique_prefix("bench"), work);
        command
            .env("GENESYS_BRIDGE_ADMIN__LISTEN", admin.to_string())
            .envs(extra.iter().copied())
            // Experiments: BENCH_BRIDGE_ENV="KEY=VALUE,KEY=VALUE" overrides
            // any setting above (e.g. GENESYS_BRIDGE_KAFKA__PARTITIONS=1).
            .envs(
                std::env::var("BENCH_BRIDGE_ENV")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|kv| kv.split_once('=')),
            )
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = command.spawn().expect("bridge starts");
        let pid = child.id().expect("pid");
        Self {
            child,
            pid,
            admin,
            http: reqwest::Client::new(),
        }
    }

    /// Published events, bridge CPU seconds and wall seconds over `secs`.
    async fn window(&self, secs: u64) -> (f64, f64, f64) {
        let p0 = self.metric("genesys_bridge_events_published_total").await;
        let c0 = self.cpu_seconds();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let p1 = self.metric("genesys_bridge_events_published_total").await;
        let c1 = self.cpu_seconds();
        (p1 - p0, c1 - c0, t0.elapsed().as_secs_f64())
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The bridge's /metrics; it is retried for 10 s while the admin
    /// server is not yet listening.
    async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        let mut tries = 0;
        loop {
            match self.http.get(&url).send().await {
                Ok(reply) => return reply.text().await.expect("metrics text"),
                Err(e) if e.is_connect() && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("scrape: {e}"),
            }
        }
    }

    /// The sum of a family's samples (all label sets).
    async fn metric(&self, name: &str) -> f64 {
        self.scrape()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Cumulative buckets `(le, count)` of a histogram without labels.
    async fn histogram(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut out: Vec<(f64, f64)> = self
            .scrape()
            .await
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, rest) = rest.split_once('"')?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, rest.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

fn open_log(work: &std::path::Path) -> std::fs::File {
    std::fs::create_dir_all(work).expect("work dir");
    let path: PathBuf = work.join("bridge.log");
    std::fs::File::create(path).expect("log file")
}

/// CPU seconds (user and system) a process has used so far; 0 if it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    task_cpu(std::path::Path::new(&format!("/proc/{pid}"))).0
}

/// The bench's own CPU (the emulator, mostly) and the broker's.
fn neighbours_cpu_seconds() -> (f64, f64) {
    let broker =
        std::fs::read_to_string(repo().join(format!("target/kafka-dev/{BROKER_PORT}/tansu.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .map_or(0.0, cpu_seconds);
    (cpu_seconds(std::process::id()), broker)
}

/// Clock ticks a second (`getconf CLK_TCK`), asked once: the CPU figures
/// read it at every snapshot, some of them from the measured thread.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(ask_clock_ticks)
}

fn ask_clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// What librdkafka alone costs at a given rate over a given set of Kafka
/// topics: the bridge's own producer settings ([`client_config`]), one
/// thread that produces a record of `bytes` bytes with 6 headers and a
/// distinct key at an even pace and serves delivery reports each time it
/// wakes (one wake-up per record, as a frame is one for the bridge), and no WebSocket, parsing,
/// dedup or pipeline. Measured from the threads' own counters, while nothing
/// else runs in this process: the driver thread plus librdkafka's `rdk:*`
/// threads. The floor under any bridge built on librdkafka with these topics
/// and partitions.
struct Floor {
    cpu_seconds: f64,
    delivered: u64,
    seconds: f64,
    wakeups: u64,
}

fn librdkafka_floor(
    brokers: &str,
    topics: &[String],
    rate: f64,
    bytes: usize,
    seconds: u64,
) -> Floor {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Count {
        delivered: AtomicU64,
        reported: AtomicU64,
    }
    impl rdkafka::ClientContext for Count {}
    impl ProducerContext for Count {
        type DeliveryOpaque = ();
        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            self.reported.fetch_add(1, Ordering::Relaxed);
            if result.is_ok() {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    let kafka = genesys_kafka_bridge::config::KafkaSection {
        brokers: brokers.to_owned(),
        ..Default::default()
    };
    let producer: BaseProducer<Count> = genesys_kafka_bridge::sink::kafka::client_config(&kafka)
        .create_with_context(Count::default())
        .expect("producer");
    let delivered = || producer.context().delivered.load(Ordering::Relaxed);
    let payload = vec![b'x'; bytes];
    let produce_for = |producer: &BaseProducer<Count>, until: Instant, n: &mut u64| {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut next = Instant::now();
        while Instant::now() < until {
            let now = Instant::now();
            if now < next {
                // Reports are served when the thread wakes to produce, as
                // the bridge serves them when a frame wakes it.
                std::thread::sleep(next - now);
                // A poll serves one event (one response's reports): serve
                // until one finds nothing.
                for _ in 0..1024 {
                    let reported = producer.context().reported.load(Ordering::Relaxed);
                    producer.poll(Duration::ZERO);
                    if producer.context().reported.load(Ordering::Relaxed) == reported {
                        break;
                    }
                }
                continue;
            }
            let key = uuid_like(*n);
            let mut headers = OwnedHeaders::new_with_capacity(6);
            for name in [
                "genesys-topic",
                "genesys-correlation-id",
                "genesys-resource-id",
                "bridge-channel",
                "bridge-source",
                "content-type",
            ] {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(key.as_bytes()),
                });
            }
            let topic = &topics[*n as usize % topics.len()];
            let record = BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(&payload[..])
                .headers(headers);
            if producer.send(record).is_err() {
                producer.poll(Duration::from_millis(1));
            }
            *n += 1;
            next += interval;
        }
    };
    let mut n = 0;
    // Connections, metadata and the first batches first.
    produce_for(&producer, Instant::now() + Duration::from_secs(3), &mut n);
    let threads0 = threads_cpu("self", |name| name.starts_with("rdk:"));
    let (cpu0, wake0) = this_thread_cpu();
    let delivered0 = delivered();
    let started = Instant::now();
    produce_for(&producer, started + Duration::from_secs(seconds), &mut n);
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, wake1) = this_thread_cpu();
    let threads1 = threads_cpu("self", |name| name.starts_with("rdk:"));
    let delivered1 = delivered();
    let _ = producer.flush(Duration::from_secs(10));
    Floor {
        cpu_seconds: (cpu1 - cpu0) + (threads1.0 - threads0.0),
        delivered: delivered1 - delivered0,
        seconds: secs,
        wakeups: (wake1 - wake0) + (threads1.1 - threads0.1),
    }
}

/// A distinct 36-character key per record, shaped like a Genesys id.
fn uuid_like(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        h >> 32,
        h & 0xFFFF_FFFF_FFFF
    )
}

/// CPU seconds and voluntary context switches of the threads of a process
/// (`self` or a pid) whose name passes `keep`.
fn threads_cpu(process: &str, keep: impl Fn(&str) -> bool) -> (f64, u64) {
    let mut total = (0.0, 0);
    let tasks = std::fs::read_dir(format!("/proc/{process}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if keep(comm.trim()) {
            let (cpu, wakes) = task_cpu(&task.path());
            total.0 += cpu;
            total.1 += wakes;
        }
    }
    total
}

fn this_thread_cpu() -> (f64, u64) {
    task_cpu(std::path::Path::new("/proc/thread-self"))
}

/// utime + stime (s) and voluntary context switches of a process
/// (`/proc/<pid>`) or one thread (`/proc/<pid>/task/<tid>`); 0 if gone.
fn task_cpu(task: &std::path::Path) -> (f64, u64) {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / clock_ticks();
    let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
    let wakes = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (cpu, wakes)
}
