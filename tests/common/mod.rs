//! Shared test plumbing: the real local broker (started by scripts/test.sh,
//! or on demand through scripts/kafka-dev.sh), a reader that consumes whole
//! topics with explicit partition assignment (Tansu's consumer groups are not
//! dependable), and Java's murmur2 partitioner for checking keys.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared test broker's address.
pub fn brokers() -> String {
    if let Ok(brokers) = std::env::var("TEST_KAFKA_BROKERS") {
        return brokers;
    }
    kafka_dev(&["start", "--port", "19092"]);
    "127.0.0.1:19092".into()
}

pub fn kafka_dev(args: &[&str]) {
    let status = Command::new(repo().join("scripts/kafka-dev.sh"))
        .args(args)
        .status()
        .expect("scripts/kafka-dev.sh runs");
    assert!(status.success(), "kafka-dev.sh {args:?} failed");
}

/// A broker of a test's own (for stopping and restarting it); stopped on drop.
pub struct PrivateBroker {
    pub port: u16,
}

impl PrivateBroker {
    pub fn start(port: u16, storage: &str) -> Self {
        Self::start_advertising(port, storage, &format!("127.0.0.1:{port}"))
    }
    /// A broker that tells its clients to connect to `advertise` (a proxy).
    pub fn start_advertising(port: u16, storage: &str, advertise: &str) -> Self {
        let p = port.to_string();
        kafka_dev(&["stop", "--port", &p]);
        let _ = std::fs::remove_dir_all(repo().join(format!("target/kafka-dev/{port}")));
        kafka_dev(&[
            "start",
            "--port",
            &p,
            "--storage",
            storage,
            "--advertise",
            advertise,
        ]);
        Self { port }
    }
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn stop(&self) {
        kafka_dev(&["stop", "--port", &self.port.to_string()]);
    }
    /// Restarts it (data kept) telling clients to come to it directly.
    pub fn restart_advertising_itself(&self) {
        self.stop();
        let (p, storage) = (self.port.to_string(), self.storage());
        let advertise = format!("127.0.0.1:{p}");
        kafka_dev(&[
            "start",
            "--port",
            &p,
            "--storage",
            &storage,
            "--advertise",
            &advertise,
        ]);
    }
    pub fn restart_keeping_data(&self) {
        let (p, storage) = (self.port.to_string(), self.storage());
        kafka_dev(&["start", "--port", &p, "--storage", &storage]);
    }
    /// The storage it was started with (kafka-dev.sh records it).
    fn storage(&self) -> String {
        std::fs::read_to_string(repo().join(format!("target/kafka-dev/{}/storage", self.port)))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "sqlite".into())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A topic prefix no other test run uses.
pub fn unique_prefix(name: &str) -> String {
    format!(
        "t{}-{name}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Reads every record of `topics` (all partitions, from the start) until
/// `expected` records arrived or nothing came for `quiet`.
fn read_all(
    brokers: &str,
    topics: &[String],
    expected: usize,
    quiet: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "genesys-bridge-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("partition");
            }
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let mut last = Instant::now();
    while out.len() < expected && last.elapsed() < quiet {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(m.detach());
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// Every Kafka topic whose name starts with `prefix`.
pub fn topics_under(brokers: &str, prefix: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// Reads every record of `topics` from each partition's low to its high
/// watermark, and what follows it in the same batch: a slow first fetch is
/// not mistaken for silence, and nothing is missed. One consumer per
/// topic, one topic at a time: Tansu 0.6.0 stops answering a consumer that
/// fetches many large partitions at once, and its sqlite storage serves
/// reads slowly enough that parallel readers starve each other.
pub fn read_to_end(brokers: &str, topics: &[String]) -> Vec<OwnedMessage> {
    topics
        .iter()
        .flat_map(|topic| read_topic_to_end(brokers, topic))
        .collect()
}

fn read_topic_to_end(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "genesys-bridge-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
        .expect("consumer");
    let mut out = Vec::new();
    {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut ends = std::collections::HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .expect("watermarks");
                if high > low {
                    ends.insert(p.id(), (low, high));
                    assignment
                        .add_partition_offset(topic, p.id(), Offset::Offset(low))
                        .expect("partition");
                }
            }
        }
        if ends.is_empty() {
            return out;
        }
        consumer.assign(&assignment).expect("assign");
        // Tansu 0.6.0's high watermark lags while it runs: 1 on each of six
        // partitions that held 6 to 13 records written as one batch. Reaching
        // it shows the last batch is arriving, not that all of it came; the
        // rest of a fetched batch is queued with it (librdkafka queues a
        // response's records together), so a short quiet after it ends the
        // read. Before it, only a minute of silence does.
        // Then the watermarks are asked again, in case more was written.
        let mut last = Instant::now();
        loop {
            let behind = ends.values().any(|(next, high)| next < high);
            let patience = if behind { 60_000 } else { 200 };
            if last.elapsed() >= Duration::from_millis(patience) {
                if behind || !watermarks_rose(&consumer, topic, &mut ends) {
                    break;
                }
                last = Instant::now();
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if let Some(end) = ends.get_mut(&m.partition()) {
                        end.0 = m.offset() + 1;
                    }
                    out.push(m.detach());
                    last = Instant::now();
                }
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => {}
            }
        }
        for (partition, (next, high)) in ends {
            assert!(next >= high, "{topic}/{partition} read to {next} of {high}");
        }
    }
    out
}

/// Asks the high watermarks of `ends`' partitions again; true if one rose
/// past what was read.
fn watermarks_rose(
    consumer: &BaseConsumer,
    topic: &str,
    ends: &mut std::collections::HashMap<i32, (i64, i64)>,
) -> bool {
    let mut rose = false;
    for (partition, (next, high)) in ends.iter_mut() {
        let (_, now) = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(10))
            .expect("watermarks");
        if now > *next {
            *high = now;
            rose = true;
        }
    }
    rose
}

/// Waits (up to `patience` of silence) until `at_least` records are in, then
/// reads every partition to its high watermark until two reads a second
/// apart agree. A duplicate must not hide a missing record by filling the
/// count, and a consumer's slow first fetch (Tansu's after a restart can
/// take seconds) must not pass for silence: a quiet window on the second
/// read once found no records at all where 3,077 were stored.
pub fn read_settled(
    brokers: &str,
    topics: &[String],
    at_least: usize,
    patience: Duration,
) -> Vec<OwnedMessage> {
    read_all(brokers, topics, at_least, patience);
    let started = Instant::now();
    let mut read = read_to_end(brokers, topics);
    while started.elapsed() < patience {
        std::thread::sleep(Duration::from_secs(1));
        let again = read_to_end(brokers, topics);
        if again.len() == read.len() {
            return again;
        }
        read = again;
    }
    read
}

pub fn header<'a>(m: &'a OwnedMessage, name: &str) -> Option<&'a [u8]> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    (0..headers.count())
        .map(|i| headers.get(i))
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

pub fn header_str(m: &OwnedMessage, name: &str) -> Option<String> {
    header(m, name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Java's `Utils.murmur2` (what the Java client's default partitioner uses).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len() as u32;
    let mut h: u32 = SEED ^ len;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java's default partitioner picks for a key.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

// ---------------------------------------------------------------------------
// The bridge against the emulator.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use genesys_emulator::{Config as EmuConfig, Emulator};
use genesys_kafka_bridge::app;
use genesys_kafka_bridge::config::{self, FileConfig, Secret, Settings, SinkKind};
use genesys_kafka_bridge::event::{Gap, Inbound};
use tokio_util::sync::CancellationToken;

pub async fn emulator(config: EmuConfig) -> Emulator {
    Emulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts")
}

/// An emulator config with quick heartbeats, for tests.
pub fn quick_emulator() -> EmuConfig {
    EmuConfig {
        heartbeat_interval: Duration::from_millis(500),
        socket_closing_grace: Duration::from_secs(3),
        ..EmuConfig::default()
    }
}

/// Bridge settings pointing at `emu`, with test-speed timers; `tweak` adjusts.
pub fn settings(
    emu: &Emulator,
    topics: &[String],
    tweak: impl FnOnce(&mut FileConfig),
) -> Settings {
    let mut raw = FileConfig::default();
    raw.genesys.api_base_url = Some(emu.base_url());
    raw.genesys.login_base_url = Some(emu.base_url());
    raw.genesys.client_id = emu.config().client_id.clone();
    raw.genesys.client_secret = Secret::new(emu.config().client_secret.clone());
    raw.genesys.topics = topics.to_vec();
    raw.genesys.ping_interval = Duration::from_millis(500);
    raw.genesys.heartbeat_timeout = Duration::from_secs(2);
    raw.reconnect.initial_delay = Duration::from_millis(200);
    raw.reconnect.max_delay = Duration::from_secs(2);
    raw.reconnect.stable_after = Duration::from_secs(5);
    raw.pipeline.sink = SinkKind::Stdout;
    raw.admin.listen = String::new();
    raw.shutdown_grace = Duration::from_secs(10);
    tweak(&mut raw);
    config::validate(raw).expect("test settings are valid")
}

/// What the connection manager handed on, in arrival order.
#[derive(Clone, Default)]
pub struct Collected {
    items: Arc<Mutex<Vec<Inbound>>>,
    /// When the test told the bridge to stop (gaps after it are the test's own).
    pub stopped_at: Arc<Mutex<Option<SystemTime>>>,
    collector: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Collected {
    pub fn spawn(mut rx: tokio::sync::mpsc::Receiver<Inbound>) -> Self {
        let me = Self::default();
        let store = me.items.clone();
        let collector = tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                store.lock().expect("lock").push(item);
            }
        });
        *me.collector.lock().expect("lock") = Some(collector);
        me
    }

    /// Waits until the input has ended (every sender dropped) and all of it
    /// is collected.
    pub async fn ended(&self) {
        let collector = self.collector.lock().expect("lock").take();
        if let Some(collector) = collector {
            tokio::time::timeout(Duration::from_secs(10), collector)
                .await
                .expect("the manager's output closes when it stops")
                .expect("collector");
        }
    }

    pub fn items(&self) -> Vec<Inbound> {
        self.items.lock().expect("lock").clone()
    }

    /// Sequence numbers of the events received (with repeats).
    pub fn seqs(&self) -> Vec<u64> {
        self.items
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|i| match i {
                Inbound::Event(n) => seq_of(&n.raw()),
                _ => None,
            })
            .collect()
    }

    pub fn gaps(&self) -> Vec<Gap> {
        self.items
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|i| match i {
                Inbound::Gap(g) => Some(g.clone()),
                _ => None,
            })
            .collect()
    }
}

/// `eventBody.emulatorSequence` of a frame.
pub fn seq_of(raw: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    v["eventBody"]["emulatorSequence"]
        .as_u64()
        .filter(|s| *s > 0)
}

/// Deliverable events the output is missing, and events it has more than once.
pub fn lost_and_duplicated(emu: &Emulator, seqs: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let mut counts = std::collections::BTreeMap::new();
    for s in seqs {
        *counts.entry(*s).or_insert(0u32) += 1;
    }
    let lost = emu
        .deliverable()
        .into_iter()
        .filter(|s| !counts.contains_key(s))
        .collect();
    let dup = counts
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(s, _)| s)
        .collect();
    (lost, dup)
}

/// Publishes to `topics` round-robin at about `rate` per second until `stop`.
pub fn publish_steadily(
    emu: &Emulator,
    topics: Vec<String>,
    rate: u64,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    let emu = emu.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        while !stop.is_cancelled() {
            tick.tick().await;
            emu.publish(&topics[(n as usize) % topics.len()]);
            n += 1;
        }
        n
    })
}

pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Fails if `logs` hold any of `secrets`, an authorization header, an
/// access token (or anything token-shaped), or a socket's connectUri on the
/// emulator at `emulator_port`. Hex dumps (`0x…`) are decoded and read too.
/// The hex dumps (`0x…`) in `text`, decoded, one per line.
fn hex_dumps(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| w.strip_prefix("0x"))
        .filter_map(|hex| {
            (0..hex.len() / 2 * 2)
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned() + "\n")
        .collect()
}

pub fn assert_no_secrets(logs: &str, secrets: &[&str], emulator_port: u16) {
    let decoded = hex_dumps(logs);
    println!("decoded {} bytes of hex dumps", decoded.len());
    for text in [logs, &decoded] {
        for needle in secrets
            .iter()
            .chain(&["ws://", "Bearer ", "Basic ", "access_token"])
        {
            assert!(!text.contains(needle), "log contains {needle:?}");
        }
        assert!(
            !text.contains(&format!("{emulator_port}/channels/")),
            "a connectUri was logged"
        );
        assert!(
            !text.contains("GET /channels/"),
            "a socket handshake (its path is the credential) was logged"
        );
        // Emulator tokens are 48 random alphanumerics; nothing else we log is
        // that shape (a padded test frame's "xxxx…" is long but not random).
        let token_shaped = text.lines().find(|line| {
            line.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|run| run.len() >= 40 && !run.starts_with("0x") && looks_random(run))
        });
        assert!(
            token_shaped.is_none(),
            "something token-shaped was logged: {}",
            token_shaped
                .unwrap_or_default()
                .chars()
                .take(400)
                .collect::<String>()
        );
    }
}

/// The bridge binary, set up through the environment as in production:
/// credentials and URLs of `emu`, the topics in `work/topics.txt`, Kafka at
/// `brokers` under `prefix` (3 partitions, replication 1), no admin port,
/// JSON logs. Callers add or override variables before spawning.
pub fn bridge_command(
    emu: &Emulator,
    topics: &[String],
    brokers: &str,
    prefix: &str,
    work: &std::path::Path,
) -> tokio::process::Command {
    std::fs::create_dir_all(work).expect("work dir");
    let topics_file = work.join("topics.txt");
    std::fs::write(&topics_file, topics.join("\n")).expect("topics file");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_genesys-kafka-bridge"));
    command
        .arg("run")
        .env("GENESYS_CLIENT_ID", &emu.config().client_id)
        .env("GENESYS_CLIENT_SECRET", &emu.config().client_secret)
        .env("GENESYS_BRIDGE_GENESYS__API_BASE_URL", emu.base_url())
        .env("GENESYS_BRIDGE_GENESYS__LOGIN_BASE_URL", emu.base_url())
        .env("GENESYS_BRIDGE_GENESYS__TOPICS_FILE", &topics_file)
        .env("GENESYS_BRIDGE_KAFKA__BROKERS", brokers)
        .env("GENESYS_BRIDGE_KAFKA__TOPIC_PREFIX", prefix)
        .env("GENESYS_BRIDGE_KAFKA__CREATE_TOPICS", "true")
        .env("GENESYS_BRIDGE_KAFKA__REPLICATION_FACTOR", "1")
        .env("GENESYS_BRIDGE_KAFKA__PARTITIONS", "3")
        .env("GENESYS_BRIDGE_ADMIN__LISTEN", "")
        .env("GENESYS_BRIDGE_LOG__FORMAT", "json")
        .kill_on_drop(true);
    command
}

/// At least 12 distinct characters: random base-62 text of 40 or more has
/// them; padding and repeated words do not.
fn looks_random(run: &str) -> bool {
    let mut seen = std::collections::HashSet::new();
    run.chars().any(|c| {
        seen.insert(c);
        seen.len() >= 12
    })
}

/// Fails if `text` (or a hex dump in it) holds any of the channel ids, or
/// the random part of one.
pub fn assert_no_channel_id(text: &str, ids: &[String], what: &str) {
    let decoded = hex_dumps(text);
    let text = &format!("{text}\n{decoded}");
    for id in ids {
        let random = id.rsplit('-').next().unwrap_or(id);
        assert!(
            random.len() >= 8,
            "the emulator's ids end in a random part: {id}"
        );
        if let Some(at) = text.find(random) {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            let context: String = text[start..].chars().take(400).collect();
            panic!("{what} holds channel id {id}: ...{context}...");
        }
    }
}

/// Fails if a record's value or a header holds a channel id; returns the
/// channel tags the records carry (`bridge-channel`).
pub fn assert_no_channel_id_in_records(
    records: &[OwnedMessage],
    ids: &[String],
) -> std::collections::BTreeSet<String> {
    use rdkafka::message::Headers;
    let mut tags = std::collections::BTreeSet::new();
    for m in records {
        let mut text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                text.push_str(&format!("\n{}={value}", h.key));
            }
        }
        assert_no_channel_id(&text, ids, "a Kafka record");
        if let Some(tag) = header_str(m, "bridge-channel") {
            tags.insert(tag);
        }
    }
    tags
}

/// A TCP proxy that can cut every connection (with a reset) and stop
/// listening, then listen again on the same port.
pub struct KafkaProxy {
    pub addr: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    accept: Option<tokio::task::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl KafkaProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        let mut proxy = Self {
            addr,
            upstream,
            accept: None,
            conns: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (upstream, conns) = (self.upstream, self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    // Linger zero: a drop resets the connection at once (it
                    // is a non-zero linger that blocks on drop).
                    #[allow(deprecated)]
                    let _ = (
                        client.set_linger(Some(Duration::ZERO)),
                        server.set_linger(Some(Duration::ZERO)),
                    );
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                conns.lock().expect("lock").push(conn);
            }
        }));
    }

    /// Resets every connection and stops listening.
    pub async fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let conns: Vec<_> = self.conns.lock().expect("lock").drain(..).collect();
        for conn in conns {
            // Dropping the sockets with linger 0 sends a reset.
            conn.abort();
            let _ = conn.await;
        }
    }

    /// Listens again on the same address.
    pub async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        self.serve(listener);
    }
}

/// Of records whose value is `{"n": <index>}` for 0..`total`: how many
/// indices are missing and how many came more than once.
pub fn lost_and_duplicated_by_n(messages: &[OwnedMessage], total: usize) -> (usize, usize) {
    let mut seen = vec![0u32; total];
    for m in messages {
        let v: serde_json::Value =
            serde_json::from_slice(m.payload().expect("value")).expect("json");
        seen[v["n"].as_u64().expect("n") as usize] += 1;
    }
    (
        seen.iter().filter(|c| **c == 0).count(),
        seen.iter().filter(|c| **c > 1).count(),
    )
}

pub const PARTITIONS: i32 = 3;

/// Settings of a whole bridge publishing to Kafka at `brokers`, under
/// `prefix`, with [`PARTITIONS`] partitions a topic.
pub fn kafka_settings(
    emu: &Emulator,
    topics: &[String],
    brokers: &str,
    prefix: &str,
    tweak: impl FnOnce(&mut FileConfig),
) -> Settings {
    settings(emu, topics, |raw| {
        raw.pipeline.sink = SinkKind::Kafka;
        raw.kafka.brokers = brokers.into();
        raw.kafka.topic_prefix = prefix.into();
        raw.kafka.create_topics = true;
        raw.kafka.partitions = PARTITIONS;
        raw.kafka.replication_factor = 1;
        raw.kafka.properties.insert("linger.ms".into(), "2".into());
        tweak(raw);
    })
}

/// A whole bridge ([`app::run`]) in this process.
pub struct Bridge {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub topics: Vec<String>,
    pub stopped_at: Option<SystemTime>,
}

impl Bridge {
    pub fn start(settings: Settings) -> Self {
        let topics = app::kafka_topics(&settings);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app::run(settings, None, shutdown.clone()));
        Self {
            shutdown,
            task,
            topics,
            stopped_at: None,
        }
    }

    pub async fn stop(&mut self) {
        self.stopped_at = Some(SystemTime::now());
        self.shutdown.cancel();
        (&mut self.task)
            .await
            .expect("bridge task")
            .expect("bridge ran cleanly");
    }
}
