//! `demo`: the bridge's main job on an embedded Genesys emulator, with no
//! credentials and no Genesys account. It starts the emulator in-process, runs
//! the real bridge against it (stdout sink, or Kafka with `--kafka-brokers`),
//! generates a steady stream of events, and injects the transitions the
//! bridge exists for: a `socket_closing` warning, an abrupt TCP drop and a
//! token expiry. Its topics are templates over the emulator's directory
//! (every user's presence and routing status, every queue's conversations),
//! and the directory changes while it runs: users join, others are
//! deactivated, and the subscribed topics follow. A status line goes to
//! stderr every second; at the end, a summary says what was generated,
//! deliverable, published, deduplicated, lost, which gaps were reported, and
//! how the topic count followed the directory.

use std::time::Duration;

use anyhow::Context;
use genesys_emulator::{Config as EmuConfig, Emulator, Target, UserState};
use tokio_util::sync::CancellationToken;

use crate::config::{self, FileConfig, Secret, SinkKind};
use crate::event::Reason;
use crate::telemetry::metrics;

/// What the demo is told on the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub kafka_brokers: Option<String>,
    pub duration: Duration,
    pub rate: f64,
    /// Users and queues in the directory at start.
    pub users: usize,
    pub queues: usize,
}

/// The demo's topics: templates over the directory.
const TEMPLATES: [&str; 2] = [
    "v2.users.{user}?presence&routingStatus",
    "v2.routing.queues.{queue}.conversations",
];

/// Every single topic the templates give for the emulator's directory now.
fn directory_topics(emu: &Emulator) -> Vec<String> {
    let users = emu.user_ids().into_iter().flat_map(|u| {
        [
            format!("v2.users.{u}.presence"),
            format!("v2.users.{u}.routingStatus"),
        ]
    });
    let queues = emu
        .queue_ids()
        .into_iter()
        .map(|q| format!("v2.routing.queues.{q}.conversations"));
    users.chain(queues).collect()
}

/// What the demo saw; `lost` is the figure that matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    pub generated: u64,
    pub deliverable: u64,
    pub published: u64,
    pub duplicates_removed: u64,
    pub lost: u64,
    pub gaps: u64,
    pub gap_seconds: String,
    /// Topics subscribed once the bridge was up, and at the end.
    pub topics_at_start: i64,
    pub topics_at_end: i64,
}

pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let phase = options.duration.as_secs_f64() / 5.0;
    // A token lifetime that ends inside the run: the bridge must refresh it
    // and move its channels to the new token before the old one expires.
    let token_lifetime = Duration::from_secs_f64((phase * 3.0).max(8.0))
        .as_secs()
        .max(8);
    let emu = Emulator::start(
        EmuConfig {
            heartbeat_interval: Duration::from_secs(2),
            socket_closing_grace: Duration::from_secs(5),
            token_lifetime: Duration::from_secs(token_lifetime),
            user_ids: genesys_emulator::config::generated_ids(options.users.max(1)),
            queue_ids: genesys_emulator::config::generated_ids(options.queues.max(1)),
            ..EmuConfig::default()
        },
        "127.0.0.1:0".parse().expect("a literal address"),
    )
    .await
    .context("starting the embedded emulator")?;
    eprintln!(
        "[demo] emulator at {} ({} users, {} queues, {} events/s, token lifetime {token_lifetime}s); topics: {}",
        emu.base_url(),
        emu.user_ids().len(),
        emu.queue_ids().len(),
        options.rate,
        TEMPLATES.join(", "),
    );

    let mut raw = FileConfig::default();
    raw.genesys.api_base_url = Some(emu.base_url());
    raw.genesys.login_base_url = Some(emu.base_url());
    raw.genesys.client_id = emu.config().client_id.clone();
    raw.genesys.client_secret = Secret::new(emu.config().client_secret.clone());
    raw.genesys.topics = TEMPLATES.map(String::from).to_vec();
    // Listed often, so the changes below show within seconds.
    raw.directory.refresh = Duration::from_secs(2);
    raw.genesys.ping_interval = Duration::from_secs(1);
    raw.genesys.heartbeat_timeout = Duration::from_secs(5);
    raw.admin.listen = String::new();
    match &options.kafka_brokers {
        Some(brokers) => {
            raw.pipeline.sink = SinkKind::Kafka;
            raw.kafka.brokers = brokers.clone();
            raw.kafka.create_topics = true;
            raw.kafka.topic_prefix = "genesys-demo".into();
        }
        None => raw.pipeline.sink = SinkKind::Stdout,
    }
    let settings = config::validate(raw).context("demo settings")?;

    let shutdown = CancellationToken::new();
    let bridge = tokio::spawn(crate::app::run(settings, None, shutdown.clone()));
    let m = metrics();
    let started = tokio::time::Instant::now();
    let covered = async {
        while !directory_topics(&emu).iter().all(|t| emu.covered(t)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), covered)
        .await
        .context("the bridge did not subscribe within 30 s")?;
    let topics_at_start = m.topics_subscribed.get();
    eprintln!(
        "[demo] bridge subscribed {topics_at_start} topics after {:.1}s; generating events",
        started.elapsed().as_secs_f64()
    );
    emu.set_rate(options.rate);

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let begin = tokio::time::Instant::now();
    let (mut closing_done, mut drop_done) = (false, false);
    let (mut joined_done, mut left_done) = (false, false);
    while begin.elapsed() < options.duration {
        tick.tick().await;
        let t = begin.elapsed().as_secs_f64();
        if !closing_done && t >= phase {
            closing_done = true;
            let n = emu.socket_closing(Target::All);
            eprintln!("[demo] injected: v2.system.socket_closing on {n} socket(s) (planned: expect no gap)");
        }
        if !joined_done && t >= phase * 1.5 {
            joined_done = true;
            let joined = emu.add_users(5);
            eprintln!(
                "[demo] directory: {} users joined (expect their topics within a refresh)",
                joined.len()
            );
        }
        if !left_done && t >= phase * 3.5 {
            left_done = true;
            let leaving: Vec<String> = emu.user_ids().into_iter().take(3).collect();
            for user in &leaving {
                let _ = emu.set_user_state(user, UserState::Inactive);
            }
            eprintln!(
                "[demo] directory: {} users deactivated (expect their topics to go)",
                leaving.len()
            );
        }
        if !drop_done && t >= phase * 2.5 {
            drop_done = true;
            let n = emu.drop_sockets(Target::All);
            eprintln!("[demo] injected: abrupt TCP drop of {n} socket(s) (unplanned: expect one short gap)");
        }
        let stats = emu.event_stats();
        eprintln!(
            "[demo {t:>4.0}s] generated {} deliverable {} published {} duplicates {} topics {} channels {} gaps {} reconnects {}",
            stats.published,
            stats.deliverable,
            m.events_published.get(),
            m.events_duplicate.get(),
            m.topics_subscribed.get(),
            m.channels_connected.get(),
            m.gap_seconds.get_sample_count(),
            reconnects(),
        );
    }
    emu.set_rate(0.0);
    emu.settle(Duration::from_secs(5)).await;
    // Let the pipeline hand the last events to the sink before stopping.
    let stats = emu.event_stats();
    let wait = tokio::time::Instant::now();
    while m.events_published.get() < stats.deliverable && wait.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let topics_at_end = m.topics_subscribed.get();
    shutdown.cancel();
    bridge.await.context("bridge task")??;
    emu.shutdown().await;

    let published = m.events_published.get();
    let summary = DemoSummary {
        generated: stats.published,
        deliverable: stats.deliverable,
        published,
        duplicates_removed: m.events_duplicate.get(),
        lost: stats.deliverable.saturating_sub(published),
        gaps: m.gap_seconds.get_sample_count(),
        gap_seconds: format!("{:.3}", m.gap_seconds.get_sample_sum()),
        topics_at_start,
        topics_at_end,
    };
    eprintln!(
        "[demo] summary: generated: {} deliverable: {} published: {} duplicates removed: {} lost: {} gaps: {} ({}s blind; events published while blind were never deliverable: {}) reconnects: {} topics: {} at start, {} at the end (5 users joined, 3 left)",
        summary.generated,
        summary.deliverable,
        summary.published,
        summary.duplicates_removed,
        summary.lost,
        summary.gaps,
        summary.gap_seconds,
        summary.generated - summary.deliverable,
        reconnects(),
        summary.topics_at_start,
        summary.topics_at_end,
    );
    Ok(summary)
}

fn reconnects() -> String {
    Reason::ALL
        .iter()
        .filter_map(|r| {
            let n = metrics().reconnects.with_label_values(&[r.as_str()]).get();
            (n > 0).then(|| format!("{r}={n}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}
