//! State resync against the emulator (which knows every user's current
//! presence and routing status) and the real broker: a consumer that keeps
//! the last record per key ends with the truth, after a gap, from an empty
//! topic at start, when a newer notification races a fetch, and after the
//! bridge itself was killed. The tests run one at a time (process-wide
//! metrics, and each is heavy for two cores).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use genesys_emulator::{Config as EmuConfig, Emulator, Failure, RequestKind, Target};
use genesys_kafka_bridge::config::FileConfig;
use genesys_kafka_bridge::telemetry::metrics;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use serde_json::Value;

use common::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const COMBINED: &str = "v2.users.{user}?presence&routingStatus";

fn users_emulator(users: usize) -> EmuConfig {
    EmuConfig {
        user_ids: genesys_emulator::config::generated_ids(users),
        queue_ids: genesys_emulator::config::generated_ids(1),
        ..quick_emulator()
    }
}

fn resync_settings(raw: &mut FileConfig, topics: &[&str], per_minute: u32) {
    raw.genesys.topics = topics.iter().map(|t| (*t).to_owned()).collect();
    raw.resync.max_requests_per_minute = per_minute;
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn parse_ms(text: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .map(ms)
}

/// The last record per key of one Kafka topic, in partition order: what a
/// consumer that keeps the latest state per resource holds.
fn last_per_key(messages: &[OwnedMessage], topic: &str) -> HashMap<String, Value> {
    let mut last = HashMap::new();
    for m in messages.iter().filter(|m| m.topic() == topic) {
        let (Some(key), Some(payload)) = (m.key(), m.payload()) else {
            continue;
        };
        if let Ok(value) = serde_json::from_slice::<Value>(payload) {
            last.insert(String::from_utf8_lossy(key).into_owned(), value);
        }
    }
    last
}

/// Users whose last presence or routing-status record differs from the
/// emulator's truth (a missing record differs too), and how many were checked.
fn mismatches(emu: &Emulator, messages: &[OwnedMessage], prefix: &str) -> (Vec<String>, usize) {
    let presence = last_per_key(messages, &format!("{prefix}.users.presence"));
    let routing = last_per_key(messages, &format!("{prefix}.users.routingStatus"));
    let mut wrong = Vec::new();
    let users = emu.user_ids();
    for user in &users {
        let truth_p = emu.presence_of(user).expect("a user has a presence");
        let truth_r = emu
            .routing_status_of(user)
            .expect("a user has a routing status");
        let p_ok = presence.get(user).is_some_and(|v| {
            let body = &v["eventBody"];
            body["presenceDefinition"]["systemPresence"] == truth_p.system_presence.as_str()
                && body["modifiedDate"].as_str().and_then(parse_ms)
                    == Some(ms(truth_p.modified_date))
        });
        let r_ok = routing.get(user).is_some_and(|v| {
            let body = &v["eventBody"]["routingStatus"];
            body["status"] == truth_r.status.as_str()
                && body["startTime"].as_str().and_then(parse_ms) == Some(ms(truth_r.start_time))
        });
        if !(p_ok && r_ok) {
            wrong.push(user.clone());
        }
    }
    (wrong, users.len())
}

/// The records of the gaps topic, parsed.
fn gap_records(messages: &[OwnedMessage], prefix: &str) -> Vec<Value> {
    let topic = format!("{prefix}.bridge.gaps");
    messages
        .iter()
        .filter(|m| m.topic() == topic)
        .filter_map(|m| serde_json::from_slice(m.payload()?).ok())
        .collect()
}

fn resyncs_complete() -> u64 {
    metrics().resyncs.with_label_values(&["complete"]).get()
}

/// Waits until `n` more resyncs than `before` have completed.
async fn resynced(before: u64, n: u64, timeout: Duration) -> bool {
    wait_until(timeout, || resyncs_complete() >= before + n).await
}

/// Stops the generator, lets every event reach Kafka, and reads it all.
async fn quiesce_and_read(emu: &Emulator, bridge: &mut Bridge, brokers: &str) -> Vec<OwnedMessage> {
    emu.set_rate(0.0);
    emu.settle(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    bridge.stop().await;
    let topics = bridge.topics.clone();
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || read_settled(&brokers, &topics, 1, Duration::from_secs(30)))
        .await
        .expect("reader")
}

/// 500 users at 200 events/s, a drop kept blind for 3 s; then the generator
/// stops, so nothing but the resync can repair what the gap lost. Returns
/// the users that do not match the truth, and how many were checked.
async fn a_gap_of_three_seconds(resync: bool) -> (Vec<String>, usize, Vec<Value>) {
    let emu = emulator(users_emulator(500)).await;
    let brokers = brokers();
    let prefix = unique_prefix(if resync {
        "resync-gap"
    } else {
        "no-resync-gap"
    });
    let settings = kafka_settings(&emu, &[], &brokers, &prefix, |raw| {
        resync_settings(raw, &[COMBINED], 6000);
        raw.resync.enabled = resync;
        raw.resync.on_start = resync;
    });
    let before = resyncs_complete();
    let mut bridge = Bridge::start(settings);
    assert!(
        wait_until(Duration::from_secs(30), || emu
            .user_ids()
            .iter()
            .all(|u| emu.covered(&format!("v2.users.{u}.routingStatus"))))
        .await,
        "subscribed"
    );
    if resync {
        assert!(
            resynced(before, 1, Duration::from_secs(60)).await,
            "start-up snapshot"
        );
    }
    emu.set_rate(200.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Abrupt: the sockets drop, and none can connect for 3 s.
    emu.fail_next(
        RequestKind::WebsocketConnect,
        10_000,
        Failure::Status { status: 503 },
    );
    emu.drop_sockets(Target::All);
    tokio::time::sleep(Duration::from_secs(3)).await;
    emu.clear_failures();
    let gaps_before = metrics().gap_seconds.get_sample_count();
    assert!(
        wait_until(Duration::from_secs(20), || metrics()
            .gap_seconds
            .get_sample_count()
            > gaps_before)
        .await,
        "the gap closed"
    );
    emu.set_rate(0.0);
    if resync {
        assert!(
            resynced(before, 2, Duration::from_secs(60)).await,
            "the gap's resync"
        );
    }
    let messages = quiesce_and_read(&emu, &mut bridge, &brokers).await;
    let (wrong, checked) = mismatches(&emu, &messages, &prefix);
    let gaps = gap_records(&messages, &prefix);
    emu.shutdown().await;
    (wrong, checked, gaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gap_the_last_record_per_user_is_the_truth() {
    let _serial = SERIAL.lock().await;
    let (wrong, checked, gaps) = a_gap_of_three_seconds(true).await;
    println!(
        "with resync: {} of {checked} users differ from the truth",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "differ: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    // The gap's marker names it, and its resync record says it completed.
    let marker = gaps
        .iter()
        .find(|g| g["type"] == "gap" && g["reason"] != "process_down")
        .expect("a gap marker");
    let id = marker["gap_id"].as_str().expect("gap_id");
    let done = gaps
        .iter()
        .find(|g| g["type"] == "resync" && g["gap_id"] == id)
        .expect("the gap's resync record");
    assert_eq!(done["status"], "complete");
    assert_eq!(done["resources"], 1000);
    assert!(gaps
        .iter()
        .any(|g| g["type"] == "resync" && g["gap_id"] == "startup" && g["status"] == "complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resync_the_same_gap_leaves_users_wrong() {
    let _serial = SERIAL.lock().await;
    let (wrong, checked, _) = a_gap_of_three_seconds(false).await;
    println!(
        "without resync: {} of {checked} users differ from the truth",
        wrong.len()
    );
    assert!(wrong.len() > checked / 10, "only {} differ", wrong.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_starting_empty_converges_even_for_users_that_never_change() {
    let _serial = SERIAL.lock().await;
    let emu = emulator(users_emulator(300)).await;
    let brokers = brokers();
    let prefix = unique_prefix("resync-start");
    let settings = kafka_settings(&emu, &[], &brokers, &prefix, |raw| {
        resync_settings(raw, &[COMBINED], 6000)
    });
    let before = resyncs_complete();
    let mut bridge = Bridge::start(settings);
    assert!(
        resynced(before, 1, Duration::from_secs(60)).await,
        "start-up snapshot"
    );
    let messages = quiesce_and_read(&emu, &mut bridge, &brokers).await;
    let (wrong, checked) = mismatches(&emu, &messages, &prefix);
    println!("start-up: {} of {checked} users differ", wrong.len());
    assert!(
        wrong.is_empty(),
        "differ: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    // Every resync record says where it comes from.
    let resync_records = messages
        .iter()
        .filter(|m| header_str(m, "bridge-source").as_deref() == Some("resync"))
        .count();
    assert_eq!(resync_records, 600);
    assert!(messages
        .iter()
        .filter(|m| header_str(m, "bridge-source").as_deref() == Some("resync"))
        .all(|m| header_str(m, "bridge-resync-of").as_deref() == Some("startup")));
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_newer_than_a_fetch_in_flight_stays_last() {
    let _serial = SERIAL.lock().await;
    let emu = emulator(users_emulator(1)).await;
    let user = emu.user_ids()[0].clone();
    let brokers = brokers();
    let prefix = unique_prefix("resync-race");
    // The start-up fetch of the routing status is answered with the state
    // of its arrival, 3 s late; meanwhile the status changes.
    emu.fail_next(RequestKind::State, 1, Failure::SlowReply { delay_ms: 3000 });
    let settings = kafka_settings(&emu, &[], &brokers, &prefix, |raw| {
        resync_settings(raw, &["v2.users.{user}.routingStatus"], 600)
    });
    let skipped = || {
        metrics()
            .resync_skipped
            .with_label_values(&["newer_notification"])
            .get()
    };
    let (skipped_before, before) = (skipped(), resyncs_complete());
    let mut bridge = Bridge::start(settings);
    let topic = format!("v2.users.{user}.routingStatus");
    assert!(wait_until(Duration::from_secs(20), || emu.covered(&topic)).await);
    // The snapshot's fetch follows the subscription within milliseconds;
    // its reply is held 3 s (the request log shows it only once answered).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seq = emu.publish(&topic);
    assert!(resynced(before, 1, Duration::from_secs(20)).await);
    let messages = quiesce_and_read(&emu, &mut bridge, &brokers).await;
    let last = last_per_key(&messages, &format!("{prefix}.users.routingStatus"));
    let last = last.get(&user).expect("a record for the user");
    assert_eq!(
        last["eventBody"]["emulatorSequence"], seq,
        "the notification is last: {last}"
    );
    assert_eq!(skipped(), skipped_before + 1);
    let (wrong, _) = mismatches_routing_only(&emu, &messages, &prefix);
    assert!(wrong.is_empty());
    emu.shutdown().await;
}

/// As [`mismatches`], routing status only.
fn mismatches_routing_only(
    emu: &Emulator,
    messages: &[OwnedMessage],
    prefix: &str,
) -> (Vec<String>, usize) {
    let routing = last_per_key(messages, &format!("{prefix}.users.routingStatus"));
    let users = emu.user_ids();
    let wrong = users
        .iter()
        .filter(|u| {
            let truth = emu.routing_status_of(u).expect("truth");
            !routing
                .get(*u)
                .is_some_and(|v| v["eventBody"]["routingStatus"]["status"] == truth.status.as_str())
        })
        .cloned()
        .collect();
    (wrong, users.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_users_resync_within_the_request_budget() {
    let _serial = SERIAL.lock().await;
    // The emulator refuses more than 3,600 requests a minute; the bridge's
    // budget is 3,000 (and a first burst of 300): 5,000 presences (100 calls) and routing statuses
    // (5,000 calls) with no 429.
    let emu = emulator(EmuConfig {
        rest_requests_per_minute: Some(3600),
        ..users_emulator(5000)
    })
    .await;
    let brokers = brokers();
    let prefix = unique_prefix("resync-rate");
    let settings = kafka_settings(&emu, &[], &brokers, &prefix, |raw| {
        resync_settings(raw, &[COMBINED], 3000)
    });
    let limited = || {
        metrics()
            .resync_requests
            .with_label_values(&["rate_limited"])
            .get()
    };
    let (limited_before, before) = (limited(), resyncs_complete());
    let started = std::time::Instant::now();
    let mut bridge = Bridge::start(settings);
    assert!(
        resynced(before, 5, Duration::from_secs(240)).await,
        "five shards' start-up snapshots"
    );
    let took = started.elapsed();
    let state_requests: Vec<SystemTime> = emu
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::State)
        .map(|r| r.at)
        .collect();
    println!(
        "5,000 users resynced in {:.1} s with {} requests, {} rate-limited",
        took.as_secs_f64(),
        state_requests.len(),
        limited() - limited_before
    );
    assert_eq!(state_requests.len(), 5100);
    assert_eq!(limited(), limited_before);
    // No 60 s window holds more than the budget (and its first burst).
    let mut per_window = BTreeMap::new();
    for (i, at) in state_requests.iter().enumerate() {
        let in_window = state_requests[i..]
            .iter()
            .take_while(|t| t.duration_since(*at).unwrap_or_default() < Duration::from_secs(60))
            .count();
        per_window.insert(i, in_window);
    }
    let worst = per_window.values().max().copied().unwrap_or(0);
    println!("most requests in any 60 s: {worst}");
    assert!(worst <= 3000 + 300, "{worst} requests in a minute");
    bridge.stop().await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_leaves_one_process_down_gap_and_converges_after_restart() {
    let _serial = SERIAL.lock().await;
    let emu = emulator(users_emulator(200)).await;
    let brokers = brokers();
    let prefix = unique_prefix("resync-down");
    let work = repo().join("target/test-work").join(&prefix);
    let start = |name: &str| {
        let dir = work.join(name);
        let mut command = bridge_command(&emu, &[COMBINED.to_owned()], &brokers, &prefix, &dir);
        let log = std::fs::File::create(dir.join("bridge.log")).expect("log file");
        command
            .env("GENESYS_BRIDGE_RESYNC__MAX_REQUESTS_PER_MINUTE", "6000")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        command.spawn().expect("the bridge starts")
    };
    let user = emu.user_ids()[0].clone();
    let topic = format!("v2.users.{user}.presence");
    let mut first = start("first");
    assert!(wait_until(Duration::from_secs(30), || emu.covered(&topic)).await);
    emu.set_rate(100.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut second = start("second");
    let gaps_topic = vec![format!("{prefix}.bridge.gaps")];
    let resynced_after_down = |brokers: String, topics: Vec<String>| {
        let records: Vec<Value> = read_to_end(&brokers, &topics)
            .iter()
            .filter_map(|m| serde_json::from_slice(m.payload()?).ok())
            .collect();
        let down: Vec<&Value> = records
            .iter()
            .filter(|g| g["reason"] == "process_down")
            .collect();
        down.first().is_some_and(|marker| {
            records
                .iter()
                .any(|g| g["type"] == "resync" && g["gap_id"] == marker["gap_id"])
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (b, t) = (brokers.clone(), gaps_topic.clone());
        if tokio::task::spawn_blocking(move || resynced_after_down(b, t))
            .await
            .expect("reader")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no process_down gap resynced"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    emu.set_rate(0.0);
    emu.settle(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &second.id().expect("pid").to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .expect("the bridge stops")
        .expect("exit status");
    assert!(status.success(), "{status}");

    let topics = vec![
        format!("{prefix}.users.presence"),
        format!("{prefix}.users.routingStatus"),
        format!("{prefix}.bridge.gaps"),
    ];
    let b = brokers.clone();
    let messages =
        tokio::task::spawn_blocking(move || read_settled(&b, &topics, 1, Duration::from_secs(30)))
            .await
            .expect("reader");
    let gaps = gap_records(&messages, &prefix);
    let down: Vec<&Value> = gaps
        .iter()
        .filter(|g| g["reason"] == "process_down")
        .collect();
    assert_eq!(down.len(), 1, "{gaps:?}");
    let marker = down[0];
    let bridge_start = marker["started_at"]
        .as_str()
        .and_then(parse_ms)
        .expect("start");
    let bridge_end = marker["ended_at"].as_str().and_then(parse_ms).expect("end");
    let truth = emu
        .coverage_gaps(&topic)
        .into_iter()
        .find(|g| g.end.is_some())
        .expect("the emulator saw the topic uncovered");
    let (truth_start, truth_end) = (ms(truth.start), ms(truth.end.expect("ended")));
    println!(
        "process_down gap: bridge {:.3}s .. {:.3}s, emulator {:.3}s .. {:.3}s (length {:.3}s)",
        0.0,
        (bridge_end - bridge_start) as f64 / 1000.0,
        (truth_start - bridge_start) as f64 / 1000.0,
        (truth_end - bridge_start) as f64 / 1000.0,
        (truth_end - truth_start) as f64 / 1000.0,
    );
    assert!(
        (bridge_start - truth_start).abs() <= 1000,
        "start off by {} ms",
        bridge_start - truth_start
    );
    assert!(
        (bridge_end - truth_end).abs() <= 1000,
        "end off by {} ms",
        bridge_end - truth_end
    );
    let (wrong, checked) = mismatches(&emu, &messages, &prefix);
    println!(
        "after the restart: {} of {checked} users differ",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "differ: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    emu.shutdown().await;
}
