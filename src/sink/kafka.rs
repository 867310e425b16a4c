//! The Kafka sink: an idempotent producer (`acks=all`, murmur2 partitioner
//! like Java clients, no message expiry unless configured). An event counts
//! as published only on a successful delivery report. At most `kafka.buffer`
//! events wait for their reports; past that the sink stops taking records,
//! and back-pressure travels up the bounded channels to the sockets (or, with
//! `overflow = "drop_newest"`, new records are dropped, counted and logged).
//! A failed delivery is retried, never dropped.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode as Code;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Record;
use crate::config::{KafkaSection, OverflowPolicy};
use crate::telemetry::{events, metrics};
use crate::timer::sleep_until_opt;

/// A retried delivery waits this long first, so a broken topic is not a hot loop.
const RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
}

/// The producer settings: ours first, then the user's `[kafka.properties]`.
pub fn client_config(kafka: &KafkaSection) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        // No expiry while the process lives: a down broker means waiting, not loss.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set(
            "queue.buffering.max.messages",
            kafka.buffer.max(1000).to_string(),
        );
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

pub fn producer(kafka: &KafkaSection) -> Result<FutureProducer, KafkaSinkError> {
    Ok(client_config(kafka).create()?)
}

/// Creates the topics that do not exist yet (an existing one is fine).
pub async fn create_topics(kafka: &KafkaSection, topics: &[String]) -> Result<(), KafkaSinkError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                kafka.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(topic) => tracing::info!(topic, "Created Kafka topic."),
            Err((topic, Code::TopicAlreadyExists)) => {
                tracing::debug!(topic, "Kafka topic exists.")
            }
            Err((topic, code)) => {
                tracing::error!(topic, error = %code, "Could not create Kafka topic.");
                return Err(KafkaError::AdminOp(code).into());
            }
        }
    }
    Ok(())
}

/// Creates a Kafka topic the first time a record needs one that was not
/// created at start: a notification on a Genesys topic outside the
/// configured list (which Genesys should never send) would otherwise be
/// retried for ever against a topic that never comes.
pub struct NewTopics {
    kafka: KafkaSection,
    known: HashSet<Arc<str>>,
}

impl NewTopics {
    pub fn new(kafka: &KafkaSection, created: &[String]) -> Self {
        Self {
            kafka: kafka.clone(),
            known: created.iter().map(|t| Arc::from(t.as_str())).collect(),
        }
    }

    async fn ensure(&mut self, topic: &Arc<str>) {
        if !self.known.insert(topic.clone()) {
            return;
        }
        match create_topics(&self.kafka, &[topic.to_string()]).await {
            Ok(()) => tracing::warn!(
                topic = %topic,
                "An event came for a Kafka topic outside the configured ones; created it."
            ),
            Err(e) => {
                tracing::error!(topic = %topic, error = %e, "Could not create a Kafka topic an event needs.")
            }
        }
    }
}

/// Keeps `/readyz` told whether a broker answers.
pub async fn watch_reachability(producer: FutureProducer, cancel: CancellationToken) {
    loop {
        let client = producer.clone();
        let reachable = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        metrics()
            .health
            .kafka_reachable
            .store(reachable, Ordering::Relaxed);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// A delivery's outcome with its record (kept for a retry); `Err(None)` if
/// the report was lost with the producer.
type Pending = (Record, Result<(), Option<KafkaError>>);

/// Errors no retry can fix: the record is dropped (counted, logged) rather
/// than wedging the sink behind it.
fn permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::TopicAuthorizationFailed
                | C::InvalidTopic
                | C::InvalidRecord
        )
    )
}

/// Produces every record until the input closes and every delivery is
/// reported, or until `deadline` fires (then flushes what it can and says
/// how many were left).
pub async fn run(
    producer: FutureProducer,
    mut input: mpsc::Receiver<Record>,
    buffer: usize,
    overflow: OverflowPolicy,
    mut new_topics: Option<NewTopics>,
    deadline: CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut retries: VecDeque<(Instant, Record)> = VecDeque::new();
    let mut input_open = true;
    let gauge = &metrics().buffered_events;
    loop {
        let waiting = in_flight.len() + retries.len();
        gauge.set(waiting as i64);
        if !input_open && waiting == 0 {
            break;
        }
        let retry_at = retries.front().map(|(at, _)| *at);
        tokio::select! {
            biased;
            () = deadline.cancelled() => {
                let flushed = tokio::task::spawn_blocking({
                    let p = producer.clone();
                    move || p.flush(Duration::from_secs(1)).is_ok()
                }).await.unwrap_or(false);
                metrics().events_dropped.with_label_values(&["shutdown"]).inc_by(waiting as u64);
                tracing::error!(undelivered = waiting, flushed, "Shutdown deadline reached with events not yet acknowledged by Kafka.");
                return;
            }
            Some((record, result)) = in_flight.next() => {
                let (record, result): Pending = (record, result);
                match result {
                    Ok(()) => {
                        if let Some(at) = record.received_at {
                            events::published(1, SystemTime::now().duration_since(at).ok());
                        }
                    }
                    Err(Some(error)) if permanent(&error) => {
                        events::dropped("kafka_rejected", &record.topic);
                        tracing::error!(topic = %record.topic, error = %error, "Kafka refused the record for good.");
                    }
                    Err(error) => {
                        let text = error.map_or_else(|| "delivery report lost".to_owned(), |e| e.to_string());
                        events::delivery_error(&record.topic, &text);
                        retries.push_back((Instant::now() + RETRY_DELAY, record));
                    }
                }
            }
            () = sleep_until_opt(retry_at) => {
                if let Some((_, record)) = retries.pop_front() {
                    produce(&producer, record, &mut in_flight, track, &mut retries);
                }
            }
            record = input.recv(), if input_open && (waiting < buffer || overflow == OverflowPolicy::DropNewest) => {
                let Some(record) = record else {
                    input_open = false;
                    continue;
                };
                // Gap markers are never dropped: they are how consumers learn to resync.
                if waiting >= buffer && record.is_event() {
                    events::dropped("overflow", &record.topic);
                    continue;
                }
                if let Some(new_topics) = new_topics.as_mut() {
                    new_topics.ensure(&record.topic).await;
                }
                produce(&producer, record, &mut in_flight, track, &mut retries);
            }
        }
    }
    gauge.set(0);
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
}

/// Hands one record to librdkafka; a full local queue or a transient error
/// puts it on the retry queue (the sink's loop never blocks on it).
fn produce<F>(
    producer: &FutureProducer,
    record: Record,
    in_flight: &mut FuturesUnordered<F>,
    track: impl FnOnce(Record, DeliveryFuture) -> F,
    retries: &mut VecDeque<(Instant, Record)>,
) {
    let error = match producer.send_result(future_record(&record)) {
        Ok(delivery) => {
            in_flight.push(track(record, delivery));
            return;
        }
        Err((error, _)) => error,
    };
    if matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    ) {
        // librdkafka's own queue is full: wait for reports, never drop.
        retries.push_front((Instant::now() + Duration::from_millis(5), record));
    } else if permanent(&error) {
        events::dropped("kafka_rejected", &record.topic);
        tracing::error!(topic = %record.topic, error = %error, "Kafka refused the record for good.");
    } else {
        events::delivery_error(&record.topic, &error.to_string());
        retries.push_back((Instant::now() + RETRY_DELAY, record));
    }
}

fn future_record(record: &Record) -> FutureRecord<'_, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (key, value) in &record.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_ref()),
        });
    }
    let r = FutureRecord::to(&record.topic)
        .payload(record.value.as_ref())
        .headers(headers);
    match &record.key {
        Some(key) => r.key(key.as_ref()),
        None => r,
    }
}

async fn track(record: Record, delivery: DeliveryFuture) -> Pending {
    match delivery.await {
        Ok(Ok(_)) => (record, Ok(())),
        Ok(Err((error, _message))) => (record, Err(Some(error))),
        // The producer was dropped: cannot happen while this sink holds it.
        Err(_canceled) => (record, Err(None)),
    }
}
