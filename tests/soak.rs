//! The chaos soak: the bridge binary (logging at `trace`) against the
//! emulator and a real broker, under a seeded random schedule of faults:
//! abrupt drops, stalls, socket_closing, channel expiry, token revocation,
//! 429 storms, 5xx on REST, broker stop/start and malformed frames, with
//! channel and token lifetimes short enough that planned moves happen too.
//!
//! At the end every Kafka topic is read back and one line of figures is
//! printed. It passes only with nothing lost, nothing duplicated, every gap
//! the emulator measured reported by one marker within 1 s at both ends (and
//! no other marker), every gap's resync complete and the last record per
//! user equal to the emulator's current presence and routing status
//! (convergence), and no secret in the logs. A failure prints the seed.
//!
//! `SOAK_DURATION` (default `2m`), `SOAK_SEED` (default: random) and
//! `SOAK_LOG` (default `trace`) steer it; `scripts/soak.sh --duration 2h
//! --seed N` is the long form. The bridge's log is kept in
//! `target/soak/<seed>/bridge.log`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use genesys_emulator::{Config as EmuConfig, Emulator, Failure, Malformed, RequestKind, Target};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use common::*;

const SECRET: &str = "s0ak-Secret-Never-Logged";
const BROKER_PORT: u16 = 19293;
const PROXY_PORT: u16 = 19294;
const TOPICS: usize = 20;
const RATE: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_soak() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .map(|s| s.parse().expect("SOAK_SEED is a u64"))
        .unwrap_or_else(rand::random::<u64>);
    let duration = std::env::var("SOAK_DURATION")
        .ok()
        .map(|d| humantime::parse_duration(&d).expect("SOAK_DURATION like 2m or 4h"))
        .unwrap_or(Duration::from_secs(120));
    println!(
        "soak: seed {seed}, {} of faults",
        humantime::format_duration(duration)
    );
    let _guard = SeedOnFailure(seed);
    let figures = soak(seed, duration).await;
    println!("{figures}");
    figures.assert_clean(seed);
}

/// Prints how to reproduce when the soak panics, whatever the panic was.
struct SeedOnFailure(u64);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "soak FAILED with seed {0}: reproduce with `SOAK_SEED={0} cargo test --test soak -- --nocapture` \
                 or `scripts/soak.sh --seed {0}`",
                self.0
            );
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fault {
    Drop,
    Stall,
    SocketClosing,
    ChannelExpiry,
    TokenRevoked,
    RateLimitStorm,
    ServerErrors,
    BrokerRestart,
    Malformed,
}

impl Fault {
    const ALL: [Fault; 9] = [
        Fault::Drop,
        Fault::Stall,
        Fault::SocketClosing,
        Fault::ChannelExpiry,
        Fault::TokenRevoked,
        Fault::RateLimitStorm,
        Fault::ServerErrors,
        Fault::BrokerRestart,
        Fault::Malformed,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Stall => "stall",
            Fault::SocketClosing => "socket_closing",
            Fault::ChannelExpiry => "channel_expiry",
            Fault::TokenRevoked => "token_revoked",
            Fault::RateLimitStorm => "429_storm",
            Fault::ServerErrors => "5xx",
            Fault::BrokerRestart => "broker_restart",
            Fault::Malformed => "malformed",
        }
    }
}

struct Figures {
    seed: u64,
    generated: u64,
    deliverable: usize,
    published: usize,
    lost: Vec<u64>,
    duplicated: Vec<u64>,
    gaps_measured: Vec<(SystemTime, SystemTime)>,
    gaps_reported: Vec<(SystemTime, SystemTime)>,
    gaps_unmatched: Vec<String>,
    /// Users whose last presence or routing-status record is not the truth.
    diverged: Vec<String>,
    resynced: usize,
    faults: BTreeMap<&'static str, u32>,
    log_lines: usize,
    exit_ok: bool,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let blind: f64 = self
            .gaps_measured
            .iter()
            .map(|(s, e)| secs_between(*e, *s))
            .sum();
        write!(
            f,
            "soak figures: seed={} generated={} deliverable={} published={} lost={} duplicated={} \
             gaps reported={} measured={} unmatched={} (measured blind {blind:.3}s) resyncs={} \
             diverged={} faults: {} \
             | trace log lines={} clean exit={}",
            self.seed,
            self.generated,
            self.deliverable,
            self.published,
            self.lost.len(),
            self.duplicated.len(),
            self.gaps_reported.len(),
            self.gaps_measured.len(),
            self.gaps_unmatched.len(),
            self.resynced,
            self.diverged.len(),
            faults.join(","),
            self.log_lines,
            self.exit_ok,
        )
    }
}

impl Figures {
    fn assert_clean(&self, seed: u64) {
        let mut problems = Vec::new();
        let some = |seqs: &[u64]| {
            let shown: Vec<String> = seqs.iter().take(20).map(u64::to_string).collect();
            format!("{} (first: {})", seqs.len(), shown.join(" "))
        };
        if !self.lost.is_empty() {
            problems.push(format!("lost {}", some(&self.lost)));
        }
        if !self.duplicated.is_empty() {
            problems.push(format!("duplicated {}", some(&self.duplicated)));
        }
        if !self.gaps_unmatched.is_empty() {
            let shown = &self.gaps_unmatched[..self.gaps_unmatched.len().min(20)];
            problems.push(format!(
                "{} gaps not matched within 1 s: {shown:#?}",
                self.gaps_unmatched.len()
            ));
        }
        if !self.diverged.is_empty() {
            problems.push(format!(
                "{} users' last record is not their current state: {:?}",
                self.diverged.len(),
                &self.diverged[..self.diverged.len().min(10)]
            ));
        }
        if !self.exit_ok {
            problems.push("the bridge did not exit cleanly on SIGTERM".into());
        }
        if self.deliverable < 1000 {
            problems.push(format!(
                "only {} deliverable events: the stream did not run",
                self.deliverable
            ));
        }
        assert!(
            problems.is_empty(),
            "soak seed {seed}: {}",
            problems.join("; ")
        );
    }
}

async fn soak(seed: u64, duration: Duration) -> Figures {
    let mut rng = StdRng::seed_from_u64(seed);
    let work = repo().join(format!("target/soak/{seed}"));
    std::fs::create_dir_all(&work).expect("work dir");

    // The broker tells clients to use the proxy, so every connection of the
    // bridge goes through it and the soak can take Kafka away.
    let broker =
        PrivateBroker::start_advertising(BROKER_PORT, "sqlite", &format!("127.0.0.1:{PROXY_PORT}"));
    let proxy = KafkaProxy::start(PROXY_PORT, BROKER_PORT).await;

    let emu = emulator(EmuConfig {
        client_secret: SECRET.into(),
        token_lifetime: Duration::from_secs(30),
        channel_lifetime: Duration::from_secs(45),
        // Every explicit publish on a conversation topic starts a
        // conversation that never ends; a real queue has tens running, and
        // each gap's resync republishes those (see tests/resync.rs).
        max_conversations: 40,
        ..quick_emulator()
    })
    .await;
    let topics = emu.sample_topics(TOPICS);
    let prefix = unique_prefix("soak");
    let bridge = BridgeProcess::spawn(&emu, &topics, &prefix, &work);
    wait_covered(&emu, &topics, Duration::from_secs(30)).await;

    let stop = CancellationToken::new();
    let publisher = publish_steadily(&emu, topics.clone(), RATE, stop.clone());
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
        let fault = Fault::ALL[rng.random_range(0..Fault::ALL.len())];
        *faults.entry(fault.name()).or_default() += 1;
        inject(fault, &mut rng, &emu, &broker, &proxy).await;
        // One fault at a time: the next starts once the bridge has every
        // topic again, so each measured gap has one cause.
        assert!(
            wait_covered(&emu, &topics, Duration::from_secs(60)).await,
            "the bridge did not come back after {}",
            fault.name()
        );
    }
    emu.clear_failures();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let generated = publisher.await.expect("publisher");
    emu.settle(Duration::from_secs(5)).await;
    // Every gap's resync done (its record on the gaps topic) before the
    // signal, so the records converge to the state the stream ended with.
    let gaps_topic = vec![format!("{prefix}.bridge.gaps")];
    let resynced_all = |brokers: String, topics: Vec<String>| {
        let records: Vec<serde_json::Value> = read_to_end(&brokers, &topics)
            .iter()
            .filter_map(|m| serde_json::from_slice(m.payload()?).ok())
            .collect();
        let done: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["type"] == "resync").collect();
        let all = records
            .iter()
            .filter(|r| r["type"] == "gap")
            .all(|g| done.iter().any(|d| d["gap_id"] == g["gap_id"]));
        (all && done.iter().any(|d| d["gap_id"] == "startup")).then_some(done.len())
    };
    let resync_deadline = Instant::now() + Duration::from_secs(180);
    let resynced = loop {
        let (b, t) = (format!("127.0.0.1:{PROXY_PORT}"), gaps_topic.clone());
        if let Some(n) = tokio::task::spawn_blocking(move || resynced_all(b, t))
            .await
            .expect("reader")
        {
            break n;
        }
        assert!(
            Instant::now() < resync_deadline,
            "resyncs did not finish in 3 minutes"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    // Let the last buffered records reach Kafka before the signal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped_at = SystemTime::now();
    let exit_ok = bridge.terminate().await;

    // Read from the broker itself, not through the fault injector.
    proxy.shutdown();
    broker.restart_advertising_itself();
    let kafka_topics: Vec<String> = topics_under(&broker.brokers(), &prefix);
    println!("soak: {} Kafka topics under {prefix}", kafka_topics.len());
    let messages = {
        let brokers = broker.brokers();
        tokio::task::spawn_blocking(move || read_to_end(&brokers, &kafka_topics))
            .await
            .expect("reader")
    };
    println!("soak: read {} records from Kafka", messages.len());
    let (deliverable, published, lost, duplicated) = tally(&emu, &messages);
    let gaps_measured: Vec<(SystemTime, SystemTime)> = emu
        .coverage_gaps(&topics[0])
        .into_iter()
        .filter(|g| g.start < stopped_at)
        .map(|g| (g.start, g.end.unwrap_or(stopped_at)))
        .collect();
    let gaps_reported = markers(&messages, &prefix, &topics[0]);
    let gaps_unmatched = match_gaps(&gaps_measured, &gaps_reported);
    let diverged = diverged(&emu, &topics, &messages, &prefix);

    let logs = std::fs::read(work.join("bridge.log")).expect("bridge log");
    let logs = String::from_utf8_lossy(&logs);
    assert_no_secrets(&logs, &[SECRET], emu.local_addr().port());
    // Channel ids are capabilities: none in the bridge's log or records.
    let ids: Vec<String> = emu.channels().into_iter().map(|c| c.id).collect();
    assert_no_channel_id(&logs, &ids, "the bridge's trace log");
    assert_no_channel_id_in_records(&messages, &ids);
    emu.shutdown().await;
    drop(broker);
    Figures {
        seed,
        generated,
        deliverable,
        published,
        lost,
        duplicated,
        gaps_measured,
        gaps_reported,
        gaps_unmatched,
        diverged,
        resynced,
        faults,
        log_lines: logs.lines().count(),
        exit_ok,
    }
}

async fn inject(
    fault: Fault,
    rng: &mut StdRng,
    emu: &Emulator,
    broker: &PrivateBroker,
    proxy: &KafkaProxy,
) {
    match fault {
        Fault::Drop => {
            emu.drop_sockets(Target::All);
        }
        Fault::Stall => {
            emu.stall_sockets(Target::All);
            // The watchdog needs heartbeat_timeout (2 s) to see it.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Fault::SocketClosing => {
            emu.socket_closing(Target::All);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Fault::ChannelExpiry => {
            emu.expire_channel(Target::All);
        }
        Fault::TokenRevoked => {
            emu.revoke_tokens();
        }
        Fault::RateLimitStorm => {
            let n = rng.random_range(2..6);
            let retry_after_secs = rng.random_range(1..3);
            emu.fail_next(
                RequestKind::Any,
                n,
                Failure::TooManyRequests { retry_after_secs },
            );
            emu.drop_sockets(Target::All);
        }
        Fault::ServerErrors => {
            let n = rng.random_range(1..5);
            let status = [500, 502, 503, 504][rng.random_range(0..4)];
            emu.fail_next(RequestKind::Any, n, Failure::Status { status });
            emu.drop_sockets(Target::All);
        }
        Fault::BrokerRestart => {
            // Kafka goes away for a while; the bridge must buffer and send
            // everything once it is back (see KafkaProxy for why the proxy
            // lets in-flight requests finish first).
            proxy.take_down().await;
            broker.stop();
            tokio::time::sleep(Duration::from_millis(rng.random_range(1000..6000))).await;
            broker.restart_keeping_data();
            proxy.bring_up();
        }
        Fault::Malformed => {
            let malformed = match rng.random_range(0..7) {
                0 => Malformed::InvalidJson,
                1 => Malformed::Binary,
                2 => Malformed::InvalidUtf8,
                3 => Malformed::TruncatedJson,
                4 => Malformed::UnknownTopic,
                5 => Malformed::Huge {
                    bytes: 2 * 1024 * 1024,
                },
                // Over max_frame_bytes (16 MiB): the socket is recycled.
                _ => Malformed::Huge {
                    bytes: 20 * 1024 * 1024,
                },
            };
            emu.send_malformed(Target::All, malformed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn wait_covered(emu: &Emulator, topics: &[String], timeout: Duration) -> bool {
    wait_until(timeout, || topics.iter().all(|t| emu.covered(t))).await
}

/// Deliverable, published (distinct events in Kafka), lost and duplicated.
fn tally(emu: &Emulator, messages: &[OwnedMessage]) -> (usize, usize, Vec<u64>, Vec<u64>) {
    let seqs: Vec<u64> = messages
        .iter()
        .filter_map(|m| m.payload().and_then(seq_of))
        .collect();
    let (lost, duplicated) = lost_and_duplicated(emu, &seqs);
    let published = seqs.iter().collect::<std::collections::HashSet<_>>().len();
    (emu.deliverable().len(), published, lost, duplicated)
}

/// The users of the soak's presence and routing-status topics whose last
/// record (in partition order, resync records included) differs from the
/// emulator's current state: what a consumer keeping the last record per
/// key would hold wrong.
fn diverged(
    emu: &Emulator,
    topics: &[String],
    messages: &[OwnedMessage],
    prefix: &str,
) -> Vec<String> {
    let last = |kafka_topic: String| {
        let mut last = std::collections::HashMap::new();
        for m in messages.iter().filter(|m| m.topic() == kafka_topic) {
            if let (Some(key), Some(Ok(v))) = (
                m.key(),
                m.payload().map(serde_json::from_slice::<serde_json::Value>),
            ) {
                last.insert(String::from_utf8_lossy(key).into_owned(), v);
            }
        }
        last
    };
    let presence = last(format!("{prefix}.users.presence"));
    let routing = last(format!("{prefix}.users.routingStatus"));
    let mut out = Vec::new();
    for topic in topics {
        let parts: Vec<&str> = topic.split('.').collect();
        let ok = match parts.as_slice() {
            ["v2", "users", user, "presence"] => {
                let truth = emu.presence_of(user).expect("truth");
                presence.get(*user).is_some_and(|v| {
                    v["eventBody"]["presenceDefinition"]["systemPresence"]
                        == truth.system_presence.as_str()
                })
            }
            ["v2", "users", user, "routingStatus"] => {
                let truth = emu.routing_status_of(user).expect("truth");
                routing.get(*user).is_some_and(|v| {
                    v["eventBody"]["routingStatus"]["status"] == truth.status.as_str()
                })
            }
            _ => continue,
        };
        if !ok {
            out.push(topic.clone());
        }
    }
    out
}

/// The bounds of the gap markers that name `topic`.
fn markers(messages: &[OwnedMessage], prefix: &str, topic: &str) -> Vec<(SystemTime, SystemTime)> {
    let gaps_topic = format!("{prefix}.bridge.gaps");
    let mut out: Vec<(SystemTime, SystemTime)> = messages
        .iter()
        .filter(|m| m.topic() == gaps_topic)
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(m.payload()?).ok())
        .filter(|v| {
            v["topics"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t == topic))
        })
        .map(|v| {
            let at = |k: &str| {
                humantime::parse_rfc3339(v[k].as_str().expect("marker bound")).expect("rfc3339")
            };
            (at("started_at"), at("ended_at"))
        })
        .collect();
    out.sort();
    out
}

/// Pairs each measured gap with a reported one whose both ends are within
/// 1 s; describes whatever is left over on either side.
fn match_gaps(
    measured: &[(SystemTime, SystemTime)],
    reported: &[(SystemTime, SystemTime)],
) -> Vec<String> {
    let mut unused: Vec<Option<&(SystemTime, SystemTime)>> = reported.iter().map(Some).collect();
    let mut problems = Vec::new();
    for m in measured {
        let close = |r: &(SystemTime, SystemTime)| {
            secs_between(r.0, m.0).abs() <= 1.0 && secs_between(r.1, m.1).abs() <= 1.0
        };
        match unused.iter_mut().find(|r| r.is_some_and(close)) {
            Some(slot) => *slot = None,
            None => problems.push(format!(
                "measured {} .. {} ({:.3}s) has no marker",
                humantime::format_rfc3339_millis(m.0),
                humantime::format_rfc3339_millis(m.1),
                secs_between(m.1, m.0)
            )),
        }
    }
    for r in unused.into_iter().flatten() {
        problems.push(format!(
            "marker {} .. {} ({:.3}s) matches no measured gap",
            humantime::format_rfc3339_millis(r.0),
            humantime::format_rfc3339_millis(r.1),
            secs_between(r.1, r.0)
        ));
    }
    problems
}

/// The bridge binary, configured through the environment as in production,
/// logging everything at `trace` into `work/bridge.log`.
struct BridgeProcess {
    child: tokio::process::Child,
}

impl BridgeProcess {
    fn spawn(emu: &Emulator, topics: &[String], prefix: &str, work: &std::path::Path) -> Self {
        let log = std::fs::File::create(work.join("bridge.log")).expect("log file");
        let level = std::env::var("SOAK_LOG").unwrap_or_else(|_| "trace".into());
        let child = bridge_command(
            emu,
            topics,
            &format!("127.0.0.1:{PROXY_PORT}"),
            prefix,
            work,
        )
        .env("RUST_LOG", level)
        .env("GENESYS_BRIDGE_GENESYS__PING_INTERVAL", "500ms")
        .env("GENESYS_BRIDGE_GENESYS__HEARTBEAT_TIMEOUT", "2s")
        .env("GENESYS_BRIDGE_RECONNECT__INITIAL_DELAY", "200ms")
        .env("GENESYS_BRIDGE_RECONNECT__MAX_DELAY", "2s")
        .env("GENESYS_BRIDGE_RECONNECT__STABLE_AFTER", "5s")
        .env("GENESYS_BRIDGE_RESYNC__MAX_REQUESTS_PER_MINUTE", "3000")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("bridge binary starts");
        Self { child }
    }

    /// SIGTERM; true if it exited 0 within its shutdown grace.
    async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("pid").to_string();
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success();
        match tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await {
            Ok(Ok(status)) => signalled && status.success(),
            _ => false,
        }
    }
}

/// A Kafka-aware TCP proxy in front of the broker. Taking it down stops
/// passing requests on, waits until every request already passed on has its
/// answer, then cuts every connection and refuses new ones.
///
/// Why drain first: Tansu 0.6.0 cannot take an idempotent producer's
/// in-flight batch across its own restart (the broker panics, see README),
/// and a client cannot tell whether a request cut in flight was stored, so
/// without idempotence that case may duplicate on any broker. Draining makes
/// the outage the case this soak is about: Kafka unreachable, the bridge
/// buffering, everything sent once it is back.
struct KafkaProxy {
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<ProxyConn>>>>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyConn {
    /// Requests passed to the broker and not answered yet.
    outstanding: AtomicI64,
    /// Held while a request is passed on, so that taking the proxy down
    /// cannot slip between the check and the write.
    open: tokio::sync::Mutex<bool>,
    cut: CancellationToken,
}

impl KafkaProxy {
    async fn start(port: u16, upstream: u16) -> Self {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("proxy port is free");
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<Arc<ProxyConn>>>> = Arc::default();
        let accept = {
            let (up, conns) = (up.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: connection closed at once
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    let conn = Arc::new(ProxyConn {
                        outstanding: AtomicI64::new(0),
                        open: tokio::sync::Mutex::new(true),
                        cut: CancellationToken::new(),
                    });
                    conns.lock().expect("lock").push(conn.clone());
                    tokio::spawn(conn.run(client, server));
                }
            })
        };
        Self { up, conns, accept }
    }

    async fn take_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let conns: Vec<Arc<ProxyConn>> = std::mem::take(&mut *self.conns.lock().expect("lock"));
        for c in &conns {
            *c.open.lock().await = false;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && conns
                .iter()
                .any(|c| c.outstanding.load(Ordering::SeqCst) > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for c in &conns {
            c.cut.cancel();
        }
    }

    fn bring_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    fn shutdown(self) {
        self.accept.abort();
        for c in self.conns.lock().expect("lock").iter() {
            c.cut.cancel();
        }
    }
}

impl ProxyConn {
    async fn run(self: Arc<Self>, client: TcpStream, server: TcpStream) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        let requests = {
            let me = self.clone();
            async move {
                while let Some(frame) = read_frame(&mut client_rx).await {
                    let open = me.open.lock().await;
                    if !*open {
                        // Never reached the broker (the client sends it
                        // again); stay idle until cut, as the answers to
                        // what did must still come back.
                        drop(open);
                        std::future::pending::<()>().await;
                    }
                    me.outstanding.fetch_add(1, Ordering::SeqCst);
                    if server_tx.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        };
        let answers = {
            let me = self.clone();
            async move {
                while let Some(frame) = read_frame(&mut server_rx).await {
                    if client_tx.write_all(&frame).await.is_err() {
                        break;
                    }
                    me.outstanding.fetch_sub(1, Ordering::SeqCst);
                }
            }
        };
        tokio::select! {
            _ = requests => {}
            _ = answers => {}
            _ = self.cut.cancelled() => {}
        }
    }
}

/// One Kafka frame (4-byte big-endian size, then the body), size included.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    r.read_exact(&mut size).await.ok()?;
    let n = u32::from_be_bytes(size) as usize;
    let mut frame = Vec::with_capacity(4 + n);
    frame.extend_from_slice(&size);
    frame.resize(4 + n, 0);
    r.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}
