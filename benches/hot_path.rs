//! The per-event hot path, piece by piece: frame classification, topic →
//! resource key, dedup insert/lookup, and routing into a Kafka record.
//! `cargo bench --bench hot_path` prints ns per event for each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use genesys_kafka_bridge::event::Notification;
use genesys_kafka_bridge::genesys::frame::{self, Frame};
use genesys_kafka_bridge::genesys::topic;
use genesys_kafka_bridge::pipeline::dedup::Dedup;
use genesys_kafka_bridge::pipeline::route::Router;
use tokio_tungstenite::tungstenite::Utf8Bytes;

const PRESENCE: &str = r#"{"topicName":"v2.users.7b8e4a6c-2f0d-4b8e-9d1a-0c3e5f7a9b1d.presence","version":"2","eventBody":{"source":"PURECLOUD","presenceDefinition":{"id":"6a3af858-942f-489d-9700-5f9bcdcdae9b","systemPresence":"Available"},"message":"","modifiedDate":"2026-11-28T10:00:00.000Z","emulatorSequence":1},"metadata":{"CorrelationId":"26b2689f-bfef-478d-ad8e-8c7ffed0cafe"}}"#;

fn conversation() -> String {
    let participants: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"id":"p{i}","purpose":"agent","state":"connected","userId":"u{i}","queueId":"q","attributes":{{"a":"{}"}}}}"#, "x".repeat(200)))
        .collect();
    format!(
        r#"{{"topicName":"v2.routing.queues.1f2e3d4c-5b6a-4789-8abc-def012345678.conversations","version":"2","eventBody":{{"id":"a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d","participants":[{}]}},"metadata":{{"CorrelationId":"c"}}}}"#,
        participants.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let conversation = conversation();
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    for (name, text) in [
        ("presence", PRESENCE),
        ("conversation_5kb", conversation.as_str()),
    ] {
        group.bench_function(format!("classify/{name}"), |b| {
            b.iter(|| black_box(frame::classify(black_box(text))))
        });
        let Frame::Notification(n) = frame::classify(text) else {
            panic!("a notification");
        };
        group.bench_function(format!("resource_key/{name}"), |b| {
            b.iter(|| black_box(topic::resource(black_box(n.topic), black_box(n.body))))
        });
        group.bench_function(format!("fingerprint/{name}"), |b| {
            b.iter(|| black_box(Dedup::fingerprint(black_box(n.topic), black_box(n.body))))
        });
        let mut router = Router::new("genesys", BTreeMap::new());
        let notification = Notification::parse(
            Utf8Bytes::from(text.to_owned()),
            Arc::from("streaming-0-bench"),
            SystemTime::now(),
        )
        .expect("a notification");
        group.bench_function(format!("route/{name}"), |b| {
            b.iter(|| black_box(router.event(black_box(&notification))))
        });
    }
    // A full window: 100,000 fingerprints, the default capacity.
    let mut dedup = Dedup::new(Duration::from_secs(300), 100_000);
    let now = tokio::time::Instant::now();
    let mut next = 0u128;
    group.bench_function("dedup_insert_full_window", |b| {
        b.iter(|| {
            next += 1;
            black_box(dedup.first_seen(next.wrapping_mul(0x9E37_79B9_7F4A_7C15), now))
        })
    });
    group.bench_function("dedup_lookup_duplicate", |b| {
        b.iter(|| black_box(dedup.first_seen(next.wrapping_mul(0x9E37_79B9_7F4A_7C15), now)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
