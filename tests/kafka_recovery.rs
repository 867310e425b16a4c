//! Kafka unreachable for 10 s, then reachable again: a TCP proxy in front of
//! the broker resets every connection and stops listening (the broker itself
//! keeps running, so Tansu's restart defect is out of the way and the
//! producer stays idempotent). Nothing may be lost or duplicated, and the
//! delay from the broker being reachable again to the first delivery is
//! measured and printed (the bench reports it; no timed assertion here).
//! Its own process: it reads the process-wide metrics.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use genesys_kafka_bridge::config::KafkaSection;
use genesys_kafka_bridge::sink::{kafka, Record};
use genesys_kafka_bridge::telemetry::metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_for_ten_seconds_resumes_fast_and_loses_nothing() {
    let broker_port = 19194;
    // The broker advertises the proxy, so every connection goes through it.
    let upstream: SocketAddr = ([127, 0, 0, 1], broker_port).into();
    let mut proxy = KafkaProxy::start(upstream).await;
    let broker = PrivateBroker::start_advertising(broker_port, "memory", &proxy.addr.to_string());
    let prefix = unique_prefix("unreachable");
    let topic = format!("{prefix}.users.presence");
    let kafka_cfg = KafkaSection {
        brokers: proxy.addr.to_string(),
        topic_prefix: prefix.clone(),
        create_topics: true,
        partitions: 6,
        replication_factor: 1,
        properties: BTreeMap::new(),
        ..KafkaSection::default()
    };
    kafka::create_topics(&kafka_cfg, std::slice::from_ref(&topic))
        .await
        .expect("topics created");
    let producer = kafka::producer(&kafka_cfg).expect("producer");
    let (tx, rx) = mpsc::channel(64);
    let sink = tokio::spawn(kafka::run(
        producer,
        rx,
        kafka::Flow {
            buffer: 10_000,
            ..kafka::Flow::of(&kafka_cfg)
        },
        None,
        CancellationToken::new(),
    ));

    let total = 3000;
    let feeder = tokio::spawn({
        let topic = topic.clone();
        async move {
            for n in 0..total {
                let record = Record {
                    topic: Arc::from(topic.as_str()),
                    key: Some(Bytes::from(format!("user-{}", n % 50))),
                    value: Bytes::from(format!(r#"{{"n":{n}}}"#)),
                    headers: Vec::new(),
                    received_at: Some(SystemTime::now()),
                };
                tx.send(record).await.expect("sink alive");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let published = || metrics().events_published.get();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(published() > 100, "publishing before the outage");
    proxy.cut().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = published();
    proxy.resume().await;
    let back = Instant::now();
    let mut resumed = None;
    while back.elapsed() < Duration::from_secs(60) {
        if published() > during {
            resumed = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resumed = resumed.expect("publishing resumed after the outage");
    println!(
        "kafka unreachable 10 s: publishing resumed {:.2} s after it was reachable again",
        resumed.as_secs_f64()
    );
    feeder.await.expect("fed");
    tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("every delivery reported after the outage")
        .expect("sink ran");

    let got = read_settled(&broker.brokers(), &[topic], total, Duration::from_secs(20));
    let (lost, duplicated) = lost_and_duplicated_by_n(&got, total);
    println!(
        "sent {total}, read {}, lost {lost}, duplicated {duplicated}",
        got.len()
    );
    assert_eq!(lost, 0, "nothing received may be lost");
    assert_eq!(duplicated, 0, "the idempotent producer duplicates nothing");
}
