//! The Kafka sink: an idempotent producer (`acks=all`, murmur2 partitioner
//! like Java clients, no message expiry unless configured). An event counts
//! as published only on a successful delivery report. At most `kafka.buffer`
//! events wait for their reports; past that the sink stops taking records,
//! and back-pressure travels up the bounded channels to the sockets (or, with
//! `overflow = "drop_newest"`, new records are dropped, counted and logged).
//! A failed delivery is retried, never dropped.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode as Code;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Record;
use crate::config::{KafkaSection, OverflowPolicy};
use crate::telemetry::{events, metrics};

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

/// A delivery's outcome; `Err(None)` if the report was lost with the producer.
type Pending = (
    Option<SystemTime>,
    Result<(), Option<(KafkaError, OwnedMessage)>>,
);

/// Produces every record until the input closes and every delivery is
/// reported, or until `deadline` fires (then flushes what it can and says
/// how many were left).
pub async fn run(
    producer: FutureProducer,
    mut input: mpsc::Receiver<Record>,
    buffer: usize,
    overflow: OverflowPolicy,
    deadline: CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut retries: VecDeque<(Instant, Option<SystemTime>, OwnedMessage)> = VecDeque::new();
    let mut input_open = true;
    let gauge = &metrics().buffered_events;
    loop {
        let waiting = in_flight.len() + retries.len();
        gauge.set(waiting as i64);
        if !input_open && waiting == 0 {
            break;
        }
        let retry_at = retries.front().map(|(at, _, _)| *at);
        tokio::select! {
            biased;
            () = deadline.cancelled() => {
                let left = waiting;
                let flushed = tokio::task::spawn_blocking({
                    let p = producer.clone();
                    move || p.flush(Duration::from_secs(1))
                }).await;
                tracing::error!(undelivered = left, flushed = ?flushed.map(|r| r.is_ok()).ok(), "Shutdown deadline reached with events not yet acknowledged by Kafka.");
                return;
            }
            Some((received_at, result)) = in_flight.next() => {
                let (received_at, result): Pending = (received_at, result);
                match result {
                    Ok(()) => {
                        if received_at.is_some() {
                            events::published(1, received_at.and_then(|t| SystemTime::now().duration_since(t).ok()));
                        }
                    }
                    Err(Some((error, message))) => {
                        events::delivery_error(message.topic(), &error.to_string());
                        retries.push_back((Instant::now() + RETRY_DELAY, received_at, message));
                    }
                    Err(None) => tracing::error!("A delivery report was lost with the producer."),
                }
            }
            () = sleep_until_opt(retry_at) => {
                if let Some((_, received_at, message)) = retries.pop_front() {
                    let record = FutureRecord::to(message.topic());
                    let record = match message.payload() { Some(p) => record.payload(p), None => record };
                    let record = match message.key() { Some(k) => record.key(k), None => record };
                    let record = match message.headers() { Some(h) => record.headers(h.clone()), None => record };
                    match producer.send_result(record) {
                        Ok(delivery) => in_flight.push(track(received_at, delivery)),
                        Err((_, _)) => {
                            let at = Instant::now() + Duration::from_millis(50);
                            retries.push_front((at, received_at, message));
                        }
                    }
                }
            }
            record = input.recv(), if input_open && (waiting < buffer || overflow == OverflowPolicy::DropNewest) => {
                let Some(record) = record else {
                    input_open = false;
                    continue;
                };
                if waiting >= buffer {
                    events::dropped("overflow", &record.topic);
                    continue;
                }
                let mut pending = rebuild(&record);
                loop {
                    match producer.send_result(pending) {
                        Ok(delivery) => {
                            in_flight.push(track(record.received_at, delivery));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            // librdkafka's own queue is full: wait for reports, never drop.
                            pending = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((error, _)) => {
                            events::delivery_error(&record.topic, &error.to_string());
                            tokio::time::sleep(RETRY_DELAY).await;
                            // Rebuild: the failed record was consumed by the error.
                            pending = rebuild(&record);
                        }
                    }
                }
            }
        }
    }
    gauge.set(0);
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
}

fn rebuild(record: &Record) -> FutureRecord<'_, [u8], [u8]> {
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

async fn track(
    received_at: Option<SystemTime>,
    delivery: rdkafka::producer::DeliveryFuture,
) -> Pending {
    match delivery.await {
        Ok(Ok(_)) => (received_at, Ok(())),
        Ok(Err(failed)) => (received_at, Err(Some(failed))),
        // The producer was dropped: cannot happen while this sink holds it.
        Err(_canceled) => (received_at, Err(None)),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
