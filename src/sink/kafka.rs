//! The Kafka sink: an idempotent producer (`acks=all`, murmur2 partitioner
//! like Java clients, no message expiry unless configured). An event counts
//! as published only on a successful delivery report. At most `kafka.buffer`
//! events wait for their reports; past that the sink stops taking records,
//! and back-pressure travels up the bounded channels to the sockets (or, with
//! `overflow = "drop_newest"`, new records are dropped, counted and logged).
//! A failed delivery is retried, never dropped.
//!
//! Records reach librdkafka in batches: the first record of a batch waits
//! at most `kafka.batch_wait` (5 ms) for others, and librdkafka's own
//! `linger.ms` is 0. At the rates contact centres run (hundreds to a few
//! thousand events a second over a hundred partitions or more) a partition
//! rarely gets two records within a linger, so librdkafka sends one
//! request per record whatever its linger; what the batch changes is that
//! the requests of one batch go out on one wake-up of librdkafka's broker
//! thread instead of one each (see the README's Performance section).
//!
//! Delivery reports are collected by the sink's own task whenever it runs
//! anyway (after each batch of input, each batch handed over) and, while
//! deliveries are pending, at least every [`REPORT_TICK`]. No thread and no
//! signal wakes for each produce response: on this kind of machine a
//! thread's wake-up costs more than the bridge's own work on an event.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode as Code;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Record;
use crate::config::{KafkaSection, OverflowPolicy};
use crate::telemetry::{events, metrics, DropReason};
use crate::timer::sleep_until_opt;

/// A retried delivery waits this long first, so a broken topic is not a hot loop.
const RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("kafka client: {0}")]
    Client(KafkaError),
    /// A property librdkafka refused. Its value is never shown: it may be a
    /// credential (rdkafka's own error prints it).
    #[error("kafka.properties: librdkafka refused {key:?}: {description} (value not shown); fix its name or value, see librdkafka's CONFIGURATION.md")]
    Property { key: String, description: String },
}

impl From<KafkaError> for KafkaSinkError {
    fn from(error: KafkaError) -> Self {
        match error {
            KafkaError::ClientConfig(_, description, key, value) => {
                // librdkafka's text quotes an invalid value.
                let description = if value.is_empty() {
                    description
                } else {
                    description.replace(&value, "***")
                };
                Self::Property { key, description }
            }
            other => Self::Client(other),
        }
    }
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
        // The sink batches (`kafka.batch_wait`): a linger here would only
        // add to it.
        .set("linger.ms", "0")
        // Back within a second of the broker being reachable again:
        // librdkafka's reconnect backoff grows to 10 s by default, so a
        // 10 s outage stalled delivery for 11 s more.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
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

/// The producer the sink drives; clones share one librdkafka handle. Its
/// delivery reports and errors are served by the sink's task ([`run`]).
pub type KafkaProducer = Arc<BaseProducer<Reports>>;

pub fn producer(kafka: &KafkaSection) -> Result<KafkaProducer, KafkaSinkError> {
    Ok(Arc::new(BaseProducer::from_config_and_context(
        &client_config(kafka),
        Reports::default(),
    )?))
}

/// Delivery reports are collected at least this often while deliveries
/// are pending (and whenever the sink wakes for its input anyway).
const REPORT_TICK: Duration = Duration::from_millis(3);
/// The producer is served at least this often whatever happens.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Most events served by one collection, so other work is not starved.
const MAX_POLLS: usize = 4096;

/// The calls into librdkafka the bindings do not wrap, on the producer's
/// main queue (delivery reports, errors, log lines): the crate's one
/// audited exception to `deny(unsafe_code)`.
mod ffi {
    #![allow(unsafe_code)]

    use rdkafka::bindings::{self, rd_kafka_queue_t};
    use rdkafka::producer::Producer;

    use super::KafkaProducer;

    /// Runs `f` on a reference to the main queue; `None` if there is none.
    ///
    /// # Safety
    /// `f` may use the pointer only during the call.
    unsafe fn with_main_queue<T>(
        producer: &KafkaProducer,
        f: impl FnOnce(*mut rd_kafka_queue_t) -> T,
    ) -> Option<T> {
        // SAFETY: the client pointer is valid while `producer` lives.
        // rd_kafka_queue_get_main returns a new reference to the main
        // queue, released by rd_kafka_queue_destroy (the queue lives on).
        unsafe {
            let queue = bindings::rd_kafka_queue_get_main(producer.client().native_ptr());
            if queue.is_null() {
                return None;
            }
            let out = f(queue);
            bindings::rd_kafka_queue_destroy(queue);
            Some(out)
        }
    }

    /// Events waiting in the main queue.
    pub(super) fn main_queue_len(producer: &KafkaProducer) -> usize {
        // SAFETY: the queue is used during the call only;
        // rd_kafka_queue_length reads its length under its lock.
        unsafe { with_main_queue(producer, |queue| bindings::rd_kafka_queue_length(queue)) }
            .unwrap_or(0)
    }
}

/// A delivery's outcome with its record (kept for a retry).
type Pending = (Record, Result<(), KafkaError>);

/// Delivery reports waiting for the sink: filled while the producer is
/// polled (by the sink's task, or by a flush on a blocking thread), emptied
/// by the sink.
#[derive(Default)]
pub struct Reports {
    done: Mutex<Vec<Pending>>,
}

impl Reports {
    /// Swaps the collected reports into `into` (empty), keeping both buffers.
    fn take(&self, into: &mut Vec<Pending>) {
        if let Ok(mut done) = self.done.lock() {
            std::mem::swap(&mut *done, into);
        }
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Record>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Box<Record>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _message)) => Err(error.clone()),
        };
        if let Ok(mut done) = self.done.lock() {
            done.push((*record, outcome));
        }
    }
}

/// Creates the topics that do not exist yet (an existing one is fine).
pub async fn create_topics(kafka: &KafkaSection, topics: &[String]) -> Result<(), KafkaSinkError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(
                t,
                kafka.partitions,
                TopicReplication::Fixed(kafka.replication_factor),
            );
            // The bridge's state record: only the latest per key matters.
            if *t == crate::checkpoint::topic(&kafka.topic_prefix) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
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
pub async fn watch_reachability(producer: KafkaProducer, cancel: CancellationToken) {
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
        // While Kafka is away, look every second, so /readyz says it is
        // back as soon as it is.
        let next = if reachable {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(next) => {}
        }
    }
}

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

/// How the sink paces its input: how many events may wait for their
/// reports, what happens past that, and how long a batch waits for more.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub buffer: usize,
    pub overflow: OverflowPolicy,
    pub batch_wait: Duration,
}

impl Flow {
    pub fn of(kafka: &KafkaSection) -> Self {
        Self {
            buffer: kafka.buffer,
            overflow: kafka.overflow,
            batch_wait: kafka.batch_wait,
        }
    }
}

/// Kafka, set up: the producer, and the topics it creates on first use.
pub struct KafkaSink {
    producer: KafkaProducer,
    flow: Flow,
    new_topics: Option<NewTopics>,
}

impl KafkaSink {
    /// Creates the producer and, with `create_topics`, the `topics`.
    pub async fn open(kafka: &KafkaSection, topics: &[String]) -> Result<Self, KafkaSinkError> {
        let producer = producer(kafka)?;
        let new_topics = if kafka.create_topics {
            create_topics(kafka, topics).await?;
            Some(NewTopics::new(kafka, topics))
        } else {
            None
        };
        Ok(Self {
            producer,
            flow: Flow::of(kafka),
            new_topics,
        })
    }
}

impl super::Sink for KafkaSink {
    fn run(
        self: Box<Self>,
        input: mpsc::Receiver<Record>,
        deadline: CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            // Reachability is watched for as long as the sink runs.
            let watching = CancellationToken::new();
            let watch = tokio::spawn(watch_reachability(self.producer.clone(), watching.clone()));
            run(self.producer, input, self.flow, self.new_topics, deadline).await;
            watching.cancel();
            let _ = watch.await;
        })
    }
}

/// Produces every record until the input closes and every delivery is
/// reported, or until `deadline` fires (then flushes what it can and says
/// how many were left).
pub async fn run(
    producer: KafkaProducer,
    mut input: mpsc::Receiver<Record>,
    flow: Flow,
    mut new_topics: Option<NewTopics>,
    deadline: CancellationToken,
) {
    let Flow {
        buffer,
        overflow,
        batch_wait,
    } = flow;
    let mut in_flight = 0usize;
    let mut retries: VecDeque<(Instant, Record)> = VecDeque::new();
    let mut reports = Settled::new(&producer);
    let mut incoming: Vec<Record> = Vec::new();
    // The batch being gathered, and when it goes to librdkafka.
    let mut batch: Vec<Record> = Vec::new();
    let mut batch_due: Option<Instant> = None;
    let mut input_open = true;
    let gauge = &metrics().buffered_events;
    loop {
        let waiting = in_flight + retries.len() + batch.len();
        gauge.set(waiting as i64);
        if !input_open && waiting == 0 {
            break;
        }
        if !batch.is_empty() && (!input_open || batch.len() >= INPUT_BATCH) {
            batch_due = Some(Instant::now());
        }
        let retry_at = retries.front().map(|(at, _)| *at);
        let poll_at = reports.polled
            + if in_flight > 0 {
                REPORT_TICK
            } else {
                IDLE_POLL
            };
        // Take as many records as fit in the buffer (any number when
        // overflow drops), in batches, so a burst costs one wake-up.
        let room = if waiting < buffer {
            (buffer - waiting).min(INPUT_BATCH)
        } else {
            INPUT_BATCH
        };
        tokio::select! {
            biased;
            () = deadline.cancelled() => {
                hand_over(&producer, &mut batch, &mut new_topics, &mut in_flight, &mut retries).await;
                let flushed = tokio::task::spawn_blocking({
                    let p = producer.clone();
                    move || p.flush(Duration::from_secs(1)).is_ok()
                }).await.unwrap_or(false);
                metrics().events_dropped.with_label_values(&[DropReason::Shutdown.as_str()]).inc_by(waiting as u64);
                tracing::error!(undelivered = waiting, flushed, "Shutdown deadline reached with events not yet acknowledged by Kafka.");
                return;
            }
            () = sleep_until_opt(batch_due) => {
                batch_due = None;
                hand_over(&producer, &mut batch, &mut new_topics, &mut in_flight, &mut retries).await;
                reports.collect(&mut in_flight, &mut retries);
            }
            () = tokio::time::sleep_until(poll_at) => {
                reports.collect(&mut in_flight, &mut retries);
            }
            () = sleep_until_opt(retry_at) => {
                if let Some((_, record)) = retries.pop_front() {
                    produce(&producer, record, &mut in_flight, &mut retries);
                }
            }
            taken = input.recv_many(&mut incoming, room), if input_open && (waiting < buffer || overflow == OverflowPolicy::DropNewest) => {
                if taken == 0 {
                    input_open = false;
                    continue;
                }
                for record in incoming.drain(..) {
                    // Gap markers are never dropped: they are how consumers learn to resync.
                    if in_flight + retries.len() + batch.len() >= buffer && record.is_event() {
                        events::dropped(DropReason::Overflow, &record.topic);
                        continue;
                    }
                    batch.push(record);
                }
                if batch_due.is_none() && !batch.is_empty() {
                    batch_due = Some(Instant::now() + batch_wait);
                }
                // Awake anyway: take whatever reports have come meanwhile.
                reports.collect(&mut in_flight, &mut retries);
            }
        }
    }
    gauge.set(0);
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
}

/// The sink's side of delivery reports: polls the producer, settles what
/// came back and updates the metrics once per batch.
struct Settled {
    producer: KafkaProducer,
    taken: Vec<Pending>,
    latency: prometheus::local::LocalHistogram,
    /// When the producer was last polled.
    polled: Instant,
}

impl Settled {
    fn new(producer: &KafkaProducer) -> Self {
        Self {
            producer: producer.clone(),
            taken: Vec::new(),
            latency: metrics().publish_latency.local(),
            polled: Instant::now(),
        }
    }

    /// Serves the producer's queue without waiting (delivery reports land
    /// in [`Reports`], errors are logged) and settles every report.
    fn collect(&mut self, in_flight: &mut usize, retries: &mut VecDeque<(Instant, Record)>) {
        // A poll without waiting serves one event (one produce response's
        // reports, an error or a log line). Serve until the queue is empty,
        // so that nothing waits behind a log line for the next collection.
        self.polled = Instant::now();
        let served_all = (0..MAX_POLLS).any(|_| {
            self.producer.poll(Duration::ZERO);
            ffi::main_queue_len(&self.producer) == 0
        });
        if !served_all {
            // The rest at the next turn of the loop, not the next tick.
            self.polled = self.polled.checked_sub(IDLE_POLL).unwrap_or(self.polled);
        }
        self.producer.context().take(&mut self.taken);
        if self.taken.is_empty() {
            return;
        }
        *in_flight = in_flight.saturating_sub(self.taken.len());
        let now = SystemTime::now();
        let mut published = 0;
        for (record, result) in self.taken.drain(..) {
            if let Some(received_at) = settle(record, result, retries) {
                published += 1;
                if let Ok(took) = now.duration_since(received_at) {
                    self.latency.observe(took.as_secs_f64());
                }
            }
        }
        metrics().events_published.inc_by(published);
        self.latency.flush();
    }
}

/// How many records the sink takes from its input at once.
const INPUT_BATCH: usize = 256;

/// Acts on one delivery outcome: published (returns when the event was
/// received; gap markers are not events), dropped for good, or retried.
fn settle(
    record: Record,
    result: Result<(), KafkaError>,
    retries: &mut VecDeque<(Instant, Record)>,
) -> Option<SystemTime> {
    match result {
        Ok(()) => return record.received_at,
        Err(error) if permanent(&error) => {
            events::dropped(DropReason::KafkaRejected, &record.topic);
            tracing::error!(topic = %record.topic, error = %error, "Kafka refused the record for good.");
        }
        Err(error) => {
            events::delivery_error(&record.topic, &error.to_string());
            retries.push_back((Instant::now() + RETRY_DELAY, record));
        }
    }
    None
}

/// Hands a gathered batch to librdkafka, each record's topic created first
/// if the sink creates topics.
async fn hand_over(
    producer: &KafkaProducer,
    batch: &mut Vec<Record>,
    new_topics: &mut Option<NewTopics>,
    in_flight: &mut usize,
    retries: &mut VecDeque<(Instant, Record)>,
) {
    for record in batch.drain(..) {
        if let Some(new_topics) = new_topics.as_mut() {
            new_topics.ensure(&record.topic).await;
        }
        produce(producer, record, in_flight, retries);
    }
}

/// Hands one record to librdkafka; a full local queue or a transient error
/// puts it on the retry queue (the sink's loop never blocks on it).
fn produce(
    producer: &KafkaProducer,
    record: Record,
    in_flight: &mut usize,
    retries: &mut VecDeque<(Instant, Record)>,
) {
    // librdkafka copies what it is given; the record itself travels as the
    // delivery's opaque and comes back with its report (or with the error).
    let headers = owned_headers(&record);
    let (topic, key, value) = (
        record.topic.clone(),
        record.key.clone(),
        record.value.clone(),
    );
    let mut base: BaseRecord<'_, [u8], [u8], Box<Record>> =
        BaseRecord::with_opaque_to(&topic, Box::new(record))
            .payload(value.as_ref())
            .headers(headers);
    if let Some(key) = &key {
        base = base.key(key.as_ref());
    }
    let (error, record) = match producer.send(base) {
        Ok(()) => {
            *in_flight += 1;
            return;
        }
        Err((error, base)) => (error, *base.delivery_opaque),
    };
    if matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    ) {
        // librdkafka's own queue is full: wait for reports, never drop.
        retries.push_front((Instant::now() + Duration::from_millis(5), record));
    } else {
        // Refused at once: the same outcome as a failed delivery report.
        settle(record, Err(error), retries);
    }
}

fn owned_headers(record: &Record) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (key, value) in &record.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_ref()),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        // An unknown name (a misspelt credential) and an invalid value.
        for (key, value) in [
            ("sasl.pasword", "hunter2-Never-Shown"),
            ("linger.ms", "soon-Never-Shown"),
        ] {
            let kafka = KafkaSection {
                properties: BTreeMap::from([(key.to_owned(), value.to_owned())]),
                ..KafkaSection::default()
            };
            let message = producer(&kafka).err().expect("refused").to_string();
            assert!(message.contains(key), "{message}");
            assert!(!message.contains("Never-Shown"), "{message}");
        }
    }
}
