//! The bridge's own downtime is a gap too. A restart, a deploy or a crash
//! leaves the topics unwatched, and the next process would start fresh
//! without a word. So the bridge keeps a small durable record in Kafka
//! itself: a compacted `<prefix>.bridge.state` topic, keyed by the OAuth
//! client and the topic plan, whose value is the last moment each shard was
//! receiving, written every [`INTERVAL`] and at shutdown. At start it is
//! read back: from each shard's last receiving moment to its first
//! subscription now is a `process_down` gap, with its marker, its metric
//! and its resync.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::{KafkaSection, Settings};

/// How often the record is written: the bound of a `process_down` gap's
/// start after a crash (a clean shutdown writes it last).
pub const INTERVAL: Duration = Duration::from_millis(500);

/// The topic: `<prefix>.bridge.state`.
pub fn topic(prefix: &str) -> String {
    format!("{prefix}.bridge.state")
}

/// The record's key: the OAuth client and a hash of the topic plan (the
/// configured topics and templates, and the redundancy), so another
/// configuration never reads this one's record.
pub fn key(settings: &Settings) -> Arc<str> {
    let g = &settings.genesys;
    let mut plan: Vec<String> = g
        .topics
        .iter()
        .cloned()
        .chain(g.templates.iter().map(ToString::to_string))
        .collect();
    plan.sort();
    plan.push(format!("redundancy={}", g.redundancy));
    let hash = xxhash_rust::xxh3::xxh3_64(plan.join("\n").as_bytes());
    format!("{}/{hash:016x}", g.client_id).into()
}

#[derive(Serialize, Deserialize)]
struct Value {
    /// Per shard: the last moment it was receiving (epoch ms), if ever.
    shards: Vec<Option<u64>>,
    written_at: u64,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The value for `shards`' last receiving moments.
pub fn value(shards: &[Option<SystemTime>], written_at: SystemTime) -> Bytes {
    let value = Value {
        shards: shards.iter().map(|t| t.map(ms)).collect(),
        written_at: ms(written_at),
    };
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// The shards' last receiving moments from a value; `None` if it is not one.
pub fn parse(bytes: &[u8]) -> Option<Vec<Option<SystemTime>>> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    Some(
        value
            .shards
            .into_iter()
            .map(|t| t.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
            .collect(),
    )
}

/// Reads the latest record of `key` from `topic` (to its end, within
/// `timeout`); `None` if there is none or Kafka cannot be read.
pub async fn read(
    kafka: &KafkaSection,
    topic: &str,
    key: &str,
    timeout: Duration,
) -> Option<Vec<Option<SystemTime>>> {
    let (kafka, topic, key) = (kafka.clone(), topic.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(&kafka, &topic, &key, timeout))
        .await
        .ok()
        .flatten()
}

fn read_blocking(
    kafka: &KafkaSection,
    topic: &str,
    key: &str,
    timeout: Duration,
) -> Option<Vec<Option<SystemTime>>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "genesys-kafka-bridge-state")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50");
    for (name, value) in &kafka.properties {
        // The producer's tuning is not for a consumer; the connection's is.
        if name.starts_with("security.") || name.starts_with("sasl.") || name.starts_with("ssl.") {
            config.set(name, value);
        }
    }
    let consumer: BaseConsumer = config.create().ok()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout).ok()?;
            if high > low {
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Offset(low))
                    .ok()?;
                ends.push((p.id(), high));
            }
        }
    }
    if ends.is_empty() {
        return None;
    }
    consumer.assign(&assignment).ok()?;
    let mut latest: Option<Vec<u8>> = None;
    let mut reached = std::time::Instant::now();
    loop {
        let now = std::time::Instant::now();
        // A while past the watermarks: a broker may report them behind
        // what it holds (Tansu does while it runs).
        let done = ends.is_empty() && now.duration_since(reached) > Duration::from_millis(300);
        if done || now >= deadline {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                // One key lives in one partition, read in offset order:
                // the last one seen is the latest.
                if m.key() == Some(key.as_bytes()) {
                    latest = Some(m.payload().unwrap_or_default().to_vec());
                }
                let before = ends.len();
                ends.retain(|(p, high)| !(*p == m.partition() && m.offset() + 1 >= *high));
                if ends.is_empty() && before > 0 {
                    reached = std::time::Instant::now();
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "Reading the state topic."),
            None => {}
        }
    }
    parse(&latest?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_reads_back() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let v = value(&[Some(t), None], t);
        assert_eq!(parse(&v), Some(vec![Some(t), None]));
        assert_eq!(parse(b"not json"), None);
    }
}
