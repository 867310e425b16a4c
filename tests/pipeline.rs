//! The whole bridge (connection manager → dedup → routing → Kafka) against
//! the emulator and the real local broker: the record contract for every
//! topic kind, no overlap duplicates in Kafka, gap markers, SIGTERM with
//! nothing received left behind, and a broker restart mid-stream.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use genesys_emulator::{Emulator, Target};
use genesys_kafka_bridge::telemetry::metrics;
use genesys_kafka_bridge::{app, genesys::topic::is_uuid};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use common::*;

async fn covered(emu: &Emulator, topics: &[String]) {
    assert!(
        wait_until(Duration::from_secs(20), || topics
            .iter()
            .all(|t| emu.covered(t)))
        .await,
        "subscribed"
    );
}

/// Kafka records by emulator sequence (gap markers aside).
fn by_seq(messages: &[OwnedMessage]) -> BTreeMap<u64, Vec<&OwnedMessage>> {
    let mut out: BTreeMap<u64, Vec<&OwnedMessage>> = BTreeMap::new();
    for m in messages {
        if let Some(seq) = m.payload().and_then(seq_of) {
            out.entry(seq).or_default().push(m);
        }
    }
    out
}

/// Every deliverable event (published before `published_before`, if given)
/// is in Kafka, and at most `max_duplicated` of them more than once.
fn assert_delivered(
    emu: &Emulator,
    messages: &[OwnedMessage],
    published_before: Option<SystemTime>,
    max_duplicated: usize,
) {
    let seqs = by_seq(messages);
    let wanted: Vec<u64> = emu
        .events()
        .into_iter()
        .filter(|e| e.deliverable() && published_before.is_none_or(|t| e.published_at < t))
        .map(|e| e.seq)
        .collect();
    let lost: Vec<u64> = wanted
        .iter()
        .copied()
        .filter(|s| !seqs.contains_key(s))
        .collect();
    let duplicated: Vec<u64> = seqs
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(s, _)| *s)
        .collect();
    println!(
        "deliverable {} in kafka {} lost {} duplicated {}",
        wanted.len(),
        seqs.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(wanted.len() > 50, "the stream ran");
    assert!(lost.is_empty(), "lost {lost:?}");
    assert!(
        duplicated.len() <= max_duplicated,
        "duplicated {duplicated:?}"
    );
}

/// A plain client of our own on a separate channel: it sees the exact bytes
/// the emulator sends, to compare Kafka values with.
async fn raw_listener(
    emu: &Emulator,
    topics: &[String],
    expected: usize,
) -> tokio::task::JoinHandle<HashMap<u64, String>> {
    let http = reqwest::Client::new();
    let base = emu.base_url();
    let token: serde_json::Value = http
        .post(format!("{base}/oauth/token"))
        .basic_auth(&emu.config().client_id, Some(&emu.config().client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let bearer = format!("Bearer {}", token["access_token"].as_str().expect("token"));
    let channel: serde_json::Value = http
        .post(format!("{base}/api/v2/notifications/channels"))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("channel")
        .json()
        .await
        .expect("channel json");
    let uri = channel["connectUri"].as_str().expect("uri").to_owned();
    let id = channel["id"].as_str().expect("id").to_owned();
    let (mut socket, _) = tokio_tungstenite::connect_async(uri).await.expect("socket");
    let body: Vec<serde_json::Value> = topics
        .iter()
        .map(|t| serde_json::json!({"id": t}))
        .collect();
    let status = http
        .put(format!(
            "{base}/api/v2/notifications/channels/{id}/subscriptions"
        ))
        .header("Authorization", &bearer)
        .json(&body)
        .send()
        .await
        .expect("subscribe")
        .status();
    assert!(status.is_success());
    tokio::spawn(async move {
        let mut frames = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while frames.len() < expected {
            let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await
            else {
                break;
            };
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                if let Some(seq) = seq_of(text.as_bytes()) {
                    frames.insert(seq, text.to_string());
                }
            }
        }
        let _ = socket.close(None).await;
        frames
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_contract_for_every_topic_kind() {
    let brokers = brokers();
    let emu = emulator(quick_emulator()).await;
    // One topic of every kind in the catalogue.
    let kinds = genesys_emulator::topic_templates()
        .iter()
        .filter(|t| !t.starts_with("v2.system."))
        .count();
    let topics = emu.sample_topics(kinds);
    let prefix = unique_prefix("contract");
    let mut bridge = Bridge::start(kafka_settings(&emu, &topics, &brokers, &prefix, |_| {}));
    covered(&emu, &topics).await;
    let listener = raw_listener(&emu, &topics, topics.len()).await;
    let started = SystemTime::now();
    for t in &topics {
        emu.publish(t);
    }
    let frames = listener.await.expect("listener");
    bridge.stop().await;
    // Notifications only: the start-up snapshot's resync records (their
    // own contract is tests/resync.rs's) and the state record aside.
    let all = read_to_end(&brokers, &bridge.topics);
    let messages: Vec<_> = all
        .into_iter()
        .filter(|m| header_str(m, "bridge-source").as_deref() == Some("notification"))
        .collect();
    assert_eq!(messages.len(), topics.len(), "one record per event");
    let channels: Vec<String> = emu.channels().into_iter().map(|c| c.id).collect();

    let expected_key = |template: &str, topic_id: &str, body_id: &str| -> String {
        match template {
            t if t.starts_with("v2.users.{id}.conversations") => body_id.into(),
            t if t.starts_with("v2.routing.queues.{id}.conversations") => body_id.into(),
            _ => topic_id.into(),
        }
    };
    let mut kinds_seen = std::collections::BTreeSet::new();
    let mut tags = std::collections::BTreeSet::new();
    for m in &messages {
        let value = std::str::from_utf8(m.payload().expect("value")).expect("utf-8");
        let seq = seq_of(value.as_bytes()).expect("an emulator event");
        assert_eq!(
            frames.get(&seq).map(String::as_str),
            Some(value),
            "value is the frame byte for byte"
        );
        let frame: serde_json::Value = serde_json::from_str(value).expect("json");
        let topic = frame["topicName"].as_str().expect("topicName");
        let topic_id = topic
            .split('.')
            .find(|s| is_uuid(s))
            .expect("an id in the topic");
        let template = topic.replace(topic_id, "{id}");
        kinds_seen.insert(template.clone());
        let body_id = frame["eventBody"]["id"].as_str().unwrap_or_default();
        let kafka_topic = format!(
            "{prefix}.{}",
            template.trim_start_matches("v2.").replace(".{id}", "")
        );
        assert_eq!(m.topic(), kafka_topic, "{topic}");
        let key = expected_key(&template, topic_id, body_id);
        assert_eq!(m.key(), Some(key.as_bytes()), "{topic}");
        assert_eq!(
            m.partition(),
            java_partition(key.as_bytes(), PARTITIONS),
            "{topic}: Java's partition"
        );
        assert_eq!(header_str(m, "genesys-topic").as_deref(), Some(topic));
        assert_eq!(
            header_str(m, "genesys-resource-id").as_deref(),
            Some(key.as_str())
        );
        assert_eq!(
            header_str(m, "genesys-correlation-id").as_deref(),
            frame["metadata"]["CorrelationId"].as_str()
        );
        // The channel is named by a tag: a channel id opens its socket
        // without a token, so it never goes into a record.
        assert_eq!(
            header(m, "genesys-channel-id"),
            None,
            "no channel id header"
        );
        let tag = header_str(m, "bridge-channel").expect("channel tag header");
        assert!(
            tag.len() == 12 && tag.chars().all(|c| c.is_ascii_hexdigit()),
            "a 12-hex-digit tag: {tag}"
        );
        assert!(!channels
            .iter()
            .any(|id| id.contains(&tag) || tag.contains(id.as_str())));
        tags.insert(tag);
        let at: u64 = header_str(m, "bridge-received-at")
            .expect("received-at")
            .parse()
            .expect("epoch ms");
        let start_ms = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("epoch")
            .as_millis() as u64;
        assert!(at >= start_ms && at < start_ms + 60_000);
        if template.starts_with("v2.routing.queues.{id}.conversations") {
            assert_eq!(header_str(m, "genesys-queue-id").as_deref(), Some(topic_id));
        }
    }
    assert_eq!(kinds_seen.len(), kinds, "every kind checked");
    // One shard, no move: one socket delivered everything.
    assert_eq!(tags.len(), 1, "one channel, one tag: {tags:?}");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_duplicates_never_reach_kafka() {
    let brokers = brokers();
    let emu = emulator(quick_emulator()).await;
    let topics = emu.sample_topics(10);
    let prefix = unique_prefix("overlap");
    // Two channels per shard: every event arrives twice, and a
    // make-before-break move adds a third copy for a moment.
    let mut bridge = Bridge::start(kafka_settings(&emu, &topics, &brokers, &prefix, |raw| {
        raw.genesys.redundancy = 2
    }));
    covered(&emu, &topics).await;
    assert!(wait_until(Duration::from_secs(10), || emu.open_sockets() == 2).await);
    let duplicates_before = metrics().events_duplicate.get();
    let stop = CancellationToken::new();
    let publisher = publish_steadily(&emu, topics.clone(), 200, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    emu.socket_closing(Target::All);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    publisher.await.expect("publisher");
    emu.settle(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    bridge.stop().await;
    let deliverable = emu.event_stats().deliverable as usize;
    let messages = read_settled(
        &brokers,
        &bridge.topics,
        deliverable,
        Duration::from_secs(15),
    );
    assert_delivered(&emu, &messages, None, 0);
    let removed = metrics().events_duplicate.get() - duplicates_before;
    println!("duplicates removed by dedup: {removed}");
    assert!(
        removed as usize >= deliverable / 2,
        "dedup saw the redundant copies: {removed}"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_produces_exactly_one_marker_with_its_bounds() {
    let brokers = brokers();
    let emu = emulator(quick_emulator()).await;
    let topics = emu.sample_topics(5);
    let prefix = unique_prefix("gaps");
    let mut bridge = Bridge::start(kafka_settings(&emu, &topics, &brokers, &prefix, |_| {}));
    covered(&emu, &topics).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    emu.drop_sockets(Target::All);
    tokio::time::sleep(Duration::from_secs(1)).await;
    covered(&emu, &topics).await;
    // The gap closes once the new socket has answered; its marker is read
    // while the bridge runs (a gap still open at shutdown has none).
    let markers = {
        let (brokers, topic) = (brokers.clone(), format!("{prefix}.bridge.gaps"));
        tokio::task::spawn_blocking(move || {
            read_settled(&brokers, &[topic], 1, Duration::from_secs(20))
        })
        .await
        .expect("reader")
    };
    bridge.stop().await;
    // Gap markers; the gaps topic also says when each resync ended.
    let markers: Vec<serde_json::Value> = markers
        .iter()
        .filter_map(|m| serde_json::from_slice(m.payload()?).ok())
        .filter(|v: &serde_json::Value| v["type"] == "gap")
        .collect();
    assert_eq!(markers.len(), 1, "exactly one marker");
    let marker = markers[0].clone();
    assert!(marker["gap_id"].as_str().is_some_and(|id| !id.is_empty()));
    println!("marker: {marker}");
    let stopped = bridge.stopped_at.expect("stopped");
    let theirs: Vec<_> = emu
        .coverage_gaps(&topics[0])
        .into_iter()
        .filter(|g| g.start < stopped)
        .collect();
    assert_eq!(theirs.len(), 1);
    let started_at = humantime::parse_rfc3339(marker["started_at"].as_str().expect("started_at"))
        .expect("rfc3339");
    let ended_at =
        humantime::parse_rfc3339(marker["ended_at"].as_str().expect("ended_at")).expect("rfc3339");
    assert!(secs_between(started_at, theirs[0].start).abs() <= 1.0);
    assert!(secs_between(ended_at, theirs[0].end.expect("closed")).abs() <= 1.0);
    let duration_ms = marker["duration_ms"].as_u64().expect("duration_ms");
    assert!((duration_ms as f64 / 1000.0 - secs_between(ended_at, started_at)).abs() < 0.002);
    assert_eq!(marker["reason"], "socket_error");
    assert_eq!(marker["topic_count"], 5);
    let listed: Vec<String> = serde_json::from_value(marker["topics"].clone()).expect("topics");
    assert_eq!(listed, topics);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_leaves_nothing_received_behind() {
    let brokers = brokers();
    let emu = emulator(quick_emulator()).await;
    let topics = emu.sample_topics(10);
    let prefix = unique_prefix("sigterm");
    let mut child = bridge_command(
        &emu,
        &topics,
        &brokers,
        &prefix,
        &std::env::temp_dir().join(&prefix),
    )
    .spawn()
    .expect("bridge binary starts");
    covered(&emu, &topics).await;
    let stop = CancellationToken::new();
    let publisher = publish_steadily(&emu, topics.clone(), 300, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let signalled_at = SystemTime::now();
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    publisher.await.expect("publisher");
    let exit = tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("exits within the shutdown grace")
        .expect("wait");
    assert!(exit.success(), "clean exit: {exit:?}");
    let settings = kafka_settings(&emu, &topics, &brokers, &prefix, |_| {});
    // The bridge has exited: every record is below the high watermarks.
    let messages = read_to_end(&brokers, &app::kafka_topics(&settings));
    assert_delivered(&emu, &messages, Some(signalled_at), 0);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_ten_seconds_mid_stream_loses_nothing() {
    let broker = PrivateBroker::start(19193, "sqlite");
    let emu = emulator(quick_emulator()).await;
    let topics = emu.sample_topics(10);
    let prefix = unique_prefix("outage");
    let mut bridge = Bridge::start(kafka_settings(
        &emu,
        &topics,
        &broker.brokers(),
        &prefix,
        |raw| {
            // Tansu 0.6.0 cannot restart under an idempotent producer with
            // batches in flight (see tests/kafka_sink.rs); real Kafka can.
            raw.kafka
                .properties
                .insert("enable.idempotence".into(), "false".into());
            raw.kafka
                .properties
                .insert("max.in.flight.requests.per.connection".into(), "1".into());
        },
    ));
    covered(&emu, &topics).await;
    let stop = CancellationToken::new();
    let publisher = publish_steadily(&emu, topics.clone(), 200, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.restart_keeping_data();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    publisher.await.expect("publisher");
    emu.settle(Duration::from_secs(5)).await;
    let deliverable = emu.event_stats().deliverable as usize;
    // What was buffered during the outage reaches Kafka while the bridge runs.
    let brokers = broker.brokers();
    let topics = bridge.topics.clone();
    let messages = tokio::task::spawn_blocking(move || {
        read_settled(&brokers, &topics, deliverable, Duration::from_secs(60))
    })
    .await
    .expect("reader");
    bridge.stop().await;
    // Idempotence is off here (Tansu's defect): a batch stored just before
    // the broker stopped may come again. Nothing may be missing.
    assert_delivered(&emu, &messages, None, 20);
    emu.shutdown().await;
}

/// A notification on a topic outside the configured ones (Genesys should
/// never send one) gets a Kafka topic of its own, and the bridge still
/// stops cleanly: found by the chaos soak, where its records were retried
/// for ever and ran out the shutdown grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_outside_the_configured_topics_is_published_not_wedged() {
    let brokers = brokers();
    let emu = emulator(quick_emulator()).await;
    let topics = emu.sample_topics(3);
    let prefix = unique_prefix("unknown");
    let settings = kafka_settings(&emu, &topics, &brokers, &prefix, |_| {});
    let configured = app::kafka_topics(&settings);
    let mut bridge = Bridge::start(settings);
    covered(&emu, &topics).await;
    assert_eq!(
        emu.send_malformed(Target::All, genesys_emulator::Malformed::UnknownTopic),
        1
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    bridge.stop().await;
    let new: Vec<String> = topics_under(&brokers, &prefix)
        .into_iter()
        .filter(|t| !configured.contains(t) && !t.ends_with(".bridge.state"))
        .collect();
    assert_eq!(new.len(), 1, "one new Kafka topic: {new:?}");
    let messages = read_to_end(&brokers, &new);
    assert_eq!(messages.len(), 1);
    let value: serde_json::Value =
        serde_json::from_slice(messages[0].payload().expect("value")).expect("json");
    assert!(!topics.iter().any(|t| value["topicName"] == t.as_str()));
    emu.shutdown().await;
}
