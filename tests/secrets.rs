//! Secret hygiene: the whole bridge runs through token refreshes, a
//! revocation (401 mid-stream), socket_closing, an abrupt drop and rejected
//! credentials with every log at `trace`, and no line may hold the client
//! secret, a Kafka SASL password, an access token or a socket's connectUri.
//! Channel ids are capabilities too (a channel's socket opens without a
//! token, and closes ours): no record, header, bridge log line, `/metrics`
//! or `/readyz` reply may hold one the emulator issued.
//! One test per process, so that the capturing subscriber sees everything.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesys_emulator::{Config as EmuConfig, Target};
use genesys_kafka_bridge::app;
use genesys_kafka_bridge::config::{LogFormat, Secret, SinkKind};
use tokio_util::sync::CancellationToken;

use common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SECRET: &str = "s3cr3t-Never-Log-Me";
const KAFKA_SECRET: &str = "k4fka-Never-Log-Me";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_connect_uri_in_trace_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    // The bridge's own logging set-up, at trace for every crate.
    genesys_kafka_bridge::telemetry::init_logging_with(
        LogFormat::Json,
        tracing_subscriber::EnvFilter::new("trace"),
        move || writer.clone(),
        false,
    );

    let emu = emulator(EmuConfig {
        client_secret: SECRET.into(),
        token_lifetime: Duration::from_secs(6),
        ..quick_emulator()
    })
    .await;
    let topics = emu.sample_topics(6);
    let brokers = brokers();
    let prefix = unique_prefix("secrets");
    let good = settings(&emu, &topics, |raw| {
        raw.pipeline.sink = SinkKind::Kafka;
        raw.kafka.brokers = brokers.clone();
        raw.kafka.topic_prefix = prefix.clone();
        raw.kafka.create_topics = true;
        raw.kafka.replication_factor = 1;
        // Set but unused (Tansu has no SASL): it must not be logged either.
        raw.kafka
            .properties
            .insert("sasl.password".into(), KAFKA_SECRET.into());
    });
    let kafka_topics = app::kafka_topics(&good);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("admin port");
    let admin_url = format!("http://{}", admin.local_addr().expect("bound"));
    let shutdown = CancellationToken::new();
    let bridge = tokio::spawn(app::run(good, Some(admin), shutdown.clone()));
    assert!(
        wait_until(Duration::from_secs(15), || topics
            .iter()
            .all(|t| emu.covered(t)))
        .await
    );
    let mut scrapes = vec![scrape(&admin_url).await];
    emu.set_rate(100.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    emu.socket_closing(Target::All);
    tokio::time::sleep(Duration::from_secs(2)).await;
    emu.revoke_tokens();
    tokio::time::sleep(Duration::from_secs(3)).await;
    scrapes.push(scrape(&admin_url).await);
    emu.drop_sockets(Target::All);
    tokio::time::sleep(Duration::from_secs(6)).await;
    emu.set_rate(0.0);
    scrapes.push(scrape(&admin_url).await);
    shutdown.cancel();
    bridge.await.expect("bridge task").expect("bridge ran");
    let records = read_to_end(&brokers, &kafka_topics);

    // Rejected credentials: the wrong secret must not be logged either.
    let wrong = settings(&emu, &topics, |raw| {
        raw.genesys.client_secret = Secret::new("Wr0ng-Secret-Value");
    });
    let shutdown = CancellationToken::new();
    let bridge = tokio::spawn(app::run(wrong, None, shutdown.clone()));
    let said =
        |text: &str| String::from_utf8_lossy(&captured.0.lock().expect("lock")).contains(text);
    assert!(
        wait_until(Duration::from_secs(10), || said(
            "rejected the client credentials"
        ))
        .await
    );
    shutdown.cancel();
    bridge.await.expect("bridge task").expect("bridge ran");
    emu.shutdown().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    let lines = logs.lines().count();
    println!("captured {lines} log lines at trace");
    assert!(lines > 200, "logging was captured");
    assert!(
        logs.contains("Obtained an access token"),
        "the run got tokens"
    );
    assert!(
        logs.contains("rejected the client credentials"),
        "the bad run was said"
    );
    assert_no_secrets(
        &logs,
        &[SECRET, "Wr0ng-Secret-Value", KAFKA_SECRET],
        emu.local_addr().port(),
    );

    // Every channel id the emulator issued, searched for everywhere the
    // bridge writes. The emulator's own log lines are Genesys' side, and
    // name its channels: they are left out.
    let ids: Vec<String> = emu.channels().into_iter().map(|c| c.id).collect();
    assert!(ids.len() >= 3, "the run made several channels: {ids:?}");
    let bridge_logs: String = logs
        .lines()
        .filter(|line| !line.contains(r#""target":"genesys_emulator"#))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(records.len() > 100, "records were read: {}", records.len());
    let tags = assert_no_channel_id_in_records(&records, &ids);
    println!(
        "{} records from {} channel tags; {} channel ids issued",
        records.len(),
        tags.len(),
        ids.len()
    );
    assert!(tags.len() >= 2, "the moves show as new tags: {tags:?}");
    assert_no_channel_id(&bridge_logs, &ids, "the bridge's logs");
    for tag in &tags {
        assert!(
            bridge_logs.contains(tag.as_str()),
            "logs name channels by their tag: {tag}"
        );
    }
    for (i, text) in scrapes.iter().enumerate() {
        assert_no_channel_id(text, &ids, &format!("admin scrape {i}"));
    }
}

/// `/metrics` and `/readyz`, as one text.
async fn scrape(base: &str) -> String {
    let mut text = String::new();
    for path in ["/metrics", "/readyz"] {
        let body = reqwest::get(format!("{base}{path}"))
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("a body");
        text.push_str(&body);
    }
    assert!(text.contains("genesys_bridge_events_received_total"));
    text
}

/// The scan itself: it flags a token-shaped run, a secret, a hex-dumped
/// secret and a connectUri, and lets long padding through.
#[test]
fn the_scan_catches_what_it_must_and_only_that() {
    let fails =
        |text: &str| std::panic::catch_unwind(|| assert_no_secrets(text, &[SECRET], 8080)).is_err();
    assert!(fails(
        "token k3J9xQ2mZ7pL4vN8bR1tY6wC5sD0fG3hK9jU2iO7eA4qW8zX"
    ));
    assert!(fails(&format!("secret={SECRET}")));
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(fails(&format!("dump 0x{hex}")));
    assert!(fails("ws://127.0.0.1:8080/channels/streaming-0-abc"));
    assert!(!fails(&format!("padding {}", "x".repeat(2000))));
}

/// The channel-id scan flags an id, or its random part alone, and lets a
/// tag through.
#[test]
fn the_channel_id_scan_catches_an_id_and_its_random_part() {
    let ids = ["streaming-0-fmtdmf8cdis7jh14udg5p89t6z".to_owned()];
    let fails =
        |text: &str| std::panic::catch_unwind(|| assert_no_channel_id(text, &ids, "test")).is_err();
    assert!(fails(
        r#"{"channel":"streaming-0-fmtdmf8cdis7jh14udg5p89t6z"}"#
    ));
    assert!(fails("/channels/fmtdmf8cdis7jh14udg5p89t6z/subscriptions"));
    assert!(!fails(r#"{"channel":"3fa2b81c09d4"}"#));
}
