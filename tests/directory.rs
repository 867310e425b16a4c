//! Topics that follow the organisation: `{user}` and `{queue}` templates
//! expanded from the emulator's directory, kept in step with it while the
//! bridge runs, against the real local broker. The tests run one at a
//! time: they read process-wide gauges (`/readyz`, unserved topics).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use genesys_emulator::{Config as EmuConfig, Emulator, Failure, NewQueue, RequestKind, UserState};
use genesys_kafka_bridge::config::{FileConfig, SinkKind};
use genesys_kafka_bridge::telemetry::metrics;
use rdkafka::Message;

use common::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const USER_TEMPLATE: &str = "v2.users.{user}?presence&routingStatus";
const QUEUE_TEMPLATE: &str = "v2.routing.queues.{queue}.conversations";

fn directory_emulator(users: usize, queues: usize) -> EmuConfig {
    EmuConfig {
        user_ids: genesys_emulator::config::generated_ids(users),
        queue_ids: genesys_emulator::config::generated_ids(queues),
        ..quick_emulator()
    }
}

/// Every single topic of the templates for the directory's active users
/// and queues, as the emulator names them.
fn expected_topics(emu: &Emulator) -> BTreeSet<String> {
    let mut topics = BTreeSet::new();
    for user in emu.user_ids() {
        topics.insert(format!("v2.users.{user}.presence"));
        topics.insert(format!("v2.users.{user}.routingStatus"));
    }
    for queue in emu.queue_ids() {
        topics.insert(format!("v2.routing.queues.{queue}.conversations"));
    }
    topics
}

/// Topics (single, combined ones expanded) subscribed on live channels,
/// and those channels' ids.
fn subscribed(emu: &Emulator) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut topics = BTreeSet::new();
    let mut channels = BTreeSet::new();
    for c in emu.channels().into_iter().filter(|c| c.alive) {
        if !c.topics.is_empty() {
            channels.insert(c.id.clone());
        }
        for t in c.topics {
            match t.split_once('?') {
                Some((base, kinds)) => {
                    topics.extend(kinds.split('&').map(|k| format!("{base}.{k}")));
                }
                None => {
                    topics.insert(t);
                }
            }
        }
    }
    (topics, channels)
}

async fn wait_subscribed(emu: &Emulator, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let want = expected_topics(emu);
        subscribed(emu).0 == want && want.iter().all(|t| emu.covered(t))
    })
    .await
}

fn requests_of(emu: &Emulator, kind: RequestKind, since: SystemTime) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r.kind == kind && r.at >= since)
        .count()
}

/// Publishes one event on each topic; returns their sequence numbers.
async fn publish_each(emu: &Emulator, topics: &BTreeSet<String>) -> BTreeSet<u64> {
    let seqs = topics.iter().map(|t| emu.publish(t)).collect();
    emu.settle(Duration::from_secs(10)).await;
    seqs
}

/// Every event of `seqs` is in Kafka exactly once.
fn assert_each_once(brokers: &str, topics: &[String], seqs: &BTreeSet<u64>) {
    let messages = read_settled(brokers, topics, seqs.len(), Duration::from_secs(60));
    let mut seen: HashSet<u64> = HashSet::new();
    let mut duplicated = 0;
    for m in &messages {
        if let Some(seq) = m.payload().and_then(seq_of) {
            if seqs.contains(&seq) && !seen.insert(seq) {
                duplicated += 1;
            }
        }
    }
    let lost = seqs.iter().filter(|s| !seen.contains(s)).count();
    println!(
        "events {} in kafka {} lost {lost} duplicated {duplicated}",
        seqs.len(),
        seen.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
}

fn with_templates(raw: &mut FileConfig, refresh: Duration) {
    raw.genesys.topics = vec![USER_TEMPLATE.into(), QUEUE_TEMPLATE.into()];
    raw.directory.refresh = refresh;
    // Not the subject here (tests/resync.rs): a start-up snapshot of
    // thousands of users at the default budget would write for minutes
    // into the topics these tests read to their end.
    raw.resync.enabled = false;
    raw.resync.on_start = false;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_users_and_two_hundred_queues_on_six_channels_each_event_once() {
    let _serial = SERIAL.lock().await;
    let emu = emulator(directory_emulator(5000, 200)).await;
    let brokers = brokers();
    let prefix = unique_prefix("dir-scale");
    let settings = kafka_settings(&emu, &[], &brokers, &prefix, |raw| {
        with_templates(raw, Duration::from_secs(300))
    });
    let mut bridge = Bridge::start(settings);
    assert!(
        wait_subscribed(&emu, Duration::from_secs(120)).await,
        "every template topic subscribed and covered"
    );
    let (topics, channels) = subscribed(&emu);
    println!(
        "{} single topics on {} channels",
        topics.len(),
        channels.len()
    );
    assert_eq!(topics.len(), 5000 * 2 + 200);
    assert_eq!(channels.len(), 6, "5,200 subscriptions need 6 channels");
    let seqs = publish_each(&emu, &topics).await;
    assert_each_once(&brokers, &bridge.topics, &seqs);
    bridge.stop().await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_changes_apply_without_touching_what_stays() {
    let _serial = SERIAL.lock().await;
    let emu = emulator(directory_emulator(950, 20)).await;
    let brokers = brokers();
    let prefix = unique_prefix("dir-change");
    let settings = kafka_settings(&emu, &[], &brokers, &prefix, |raw| {
        with_templates(raw, Duration::from_secs(2))
    });
    let mut bridge = Bridge::start(settings);
    assert!(wait_subscribed(&emu, Duration::from_secs(60)).await);
    let (before, channels_before) = subscribed(&emu);
    assert_eq!(before.len(), 950 * 2 + 20);
    assert_eq!(channels_before.len(), 1);

    // 100 join, 50 leave (deactivated), 5 queues are created: the 970
    // subscriptions (a combined topic is one) become 1,025, so the first
    // shard is filled up and a second one opens for the rest.
    let changed_at = SystemTime::now();
    let leaving: Vec<String> = emu.user_ids().into_iter().take(50).collect();
    for user in &leaving {
        emu.set_user_state(user, UserState::Inactive)
            .expect("user exists");
    }
    let joined = emu.add_users(100);
    let mut new_queues = Vec::new();
    for _ in 0..5 {
        new_queues.push(emu.add_queue(NewQueue::default()).expect("queue added"));
    }
    assert!(
        wait_subscribed(&emu, Duration::from_secs(30)).await,
        "the change applied"
    );
    let (after, channels_after) = subscribed(&emu);
    for user in &leaving {
        assert!(!after.contains(&format!("v2.users.{user}.presence")));
    }
    // No channel was rebuilt (one was added for the new shard), and no
    // topic that stayed was ever uncovered.
    assert_eq!(channels_after.len(), 2);
    assert!(channels_after.is_superset(&channels_before));
    assert_eq!(requests_of(&emu, RequestKind::CreateChannel, changed_at), 1);
    let stayed: Vec<&String> = before.intersection(&after).collect();
    assert_eq!(stayed.len(), 950 * 2 + 20 - 100);
    for topic in &stayed {
        assert!(
            emu.coverage_gaps(topic).is_empty(),
            "{topic} had a gap: {:?}",
            emu.coverage_gaps(topic)
        );
    }
    // Two shards changed: one call each (a PUT of the first shard's
    // remainder and new topics, as topics left it; the new shard's list).
    let calls = requests_of(&emu, RequestKind::Subscriptions, changed_at);
    println!("subscription calls for the change: {calls}");
    assert_eq!(calls, 2);

    // The new entities' events reach Kafka.
    let new_topics: BTreeSet<String> = joined
        .iter()
        .flat_map(|u| {
            [
                format!("v2.users.{u}.presence"),
                format!("v2.users.{u}.routingStatus"),
            ]
        })
        .chain(
            new_queues
                .iter()
                .map(|q| format!("v2.routing.queues.{q}.conversations")),
        )
        .collect();
    let seqs = publish_each(&emu, &new_topics).await;
    assert_each_once(&brokers, &bridge.topics, &seqs);

    // Refreshes with no change make no subscription call.
    let quiet_from = SystemTime::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            requests_of(&emu, RequestKind::Directory, quiet_from) >= 6
        })
        .await,
        "three more refreshes"
    );
    assert_eq!(requests_of(&emu, RequestKind::Subscriptions, quiet_from), 0);
    bridge.stop().await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_fails_midway_changes_nothing_until_a_good_one() {
    let _serial = SERIAL.lock().await;
    let emu = emulator(directory_emulator(250, 1)).await;
    let settings = settings(&emu, &[], |raw| {
        raw.genesys.topics = vec!["v2.users.{user}.presence".into()];
        raw.directory.refresh = Duration::from_secs(2);
        raw.directory.page_size = 100;
        raw.pipeline.sink = SinkKind::Stdout;
    });
    let mut bridge = Bridge::start(settings);
    let presence = |emu: &Emulator| -> BTreeSet<String> {
        emu.user_ids()
            .iter()
            .map(|u| format!("v2.users.{u}.presence"))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(30), || subscribed(&emu).0
            == presence(&emu))
        .await,
        "subscribed"
    );
    let errors = |result: &str| {
        metrics()
            .directory_refreshes
            .with_label_values(&[result])
            .get()
    };
    let (errors_before, limited_before) = (errors("error"), errors("rate_limited"));

    // Page 3 of the next listing fails, then the listing after is refused
    // with a Retry-After; the directory changes between two listings (a
    // listing is 3 pages at 100 a page; refresh 2 s).
    let last_listing = |emu: &Emulator| {
        emu.requests()
            .iter()
            .rev()
            .find(|r| r.kind == RequestKind::Directory)
            .map(|r| r.at)
    };
    assert!(
        wait_until(Duration::from_secs(20), || last_listing(&emu).is_some_and(
            |at| {
                SystemTime::now()
                    .duration_since(at)
                    .is_ok_and(|d| d > Duration::from_millis(500))
            }
        ))
        .await,
        "between two listings"
    );
    emu.fail_after(
        RequestKind::Directory,
        2,
        1,
        Failure::Status { status: 500 },
    );
    emu.fail_then(
        RequestKind::Directory,
        1,
        Failure::TooManyRequests {
            retry_after_secs: 3,
        },
    );
    let failing_from = SystemTime::now();
    let leaving: Vec<String> = emu.user_ids().into_iter().take(10).collect();
    for user in &leaving {
        emu.remove_user(user).expect("user exists");
    }
    emu.add_users(10);
    assert!(
        wait_until(Duration::from_secs(20), || emu
            .requests()
            .iter()
            .any(|r| r.kind == RequestKind::Directory && r.status == 429))
        .await,
        "page 3 failed, then a listing was rate-limited"
    );
    assert!(emu
        .requests()
        .iter()
        .any(|r| r.kind == RequestKind::Directory && r.status == 500));
    let limited_at = emu
        .requests()
        .iter()
        .rev()
        .find(|r| r.kind == RequestKind::Directory && r.status == 429)
        .map(|r| r.at)
        .expect("the 429");
    // Nothing changed on the channels while listings failed.
    assert_eq!(
        requests_of(&emu, RequestKind::Subscriptions, failing_from),
        0
    );
    assert!(subscribed(&emu)
        .0
        .contains(&format!("v2.users.{}.presence", leaving[0])));

    // The next good listing applies the change, no sooner than Retry-After.
    assert!(
        wait_until(Duration::from_secs(30), || subscribed(&emu).0
            == presence(&emu))
        .await,
        "the change applied after the failures"
    );
    let next = emu
        .requests()
        .into_iter()
        .find(|r| r.kind == RequestKind::Directory && r.at > limited_at)
        .expect("a listing after the 429");
    let waited = next.at.duration_since(limited_at).unwrap_or_default();
    println!("listing after the 429 came {waited:?} later");
    assert!(waited >= Duration::from_millis(2900), "waited {waited:?}");
    assert!(errors("error") > errors_before);
    assert!(errors("rate_limited") > limited_before);
    bridge.stop().await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_beyond_the_channel_budget_is_reported_and_the_rest_served() {
    let _serial = SERIAL.lock().await;
    // Redundancy 2: 9 shards of 1,000 fit in 19 channels; 9,050 do not.
    let emu = emulator(directory_emulator(9050, 1)).await;
    let settings = settings(&emu, &[], |raw| {
        raw.genesys.topics = vec!["v2.users.{user}.presence".into()];
        raw.genesys.redundancy = 2;
        raw.pipeline.sink = SinkKind::Stdout;
    });
    let mut bridge = Bridge::start(settings);
    assert!(
        wait_until(Duration::from_secs(120), || {
            subscribed(&emu).0.len() == 9000
                && metrics()
                    .health
                    .not_ready()
                    .is_some_and(|why| !why.contains("shards not receiving"))
        })
        .await,
        "9,000 served: {:?}",
        metrics().health.not_ready()
    );
    let why = metrics().health.not_ready().expect("not ready");
    println!("/readyz: {why}");
    assert!(why.contains("50 topics not subscribed"), "{why}");
    assert_eq!(metrics().topics_unserved.get(), 50);
    let (_, channels) = subscribed(&emu);
    assert_eq!(channels.len(), 18);
    bridge.stop().await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_expand_prints_the_expanded_set() {
    let _serial = SERIAL.lock().await;
    let emu = emulator(directory_emulator(30, 4)).await;
    let work = std::env::temp_dir().join(unique_prefix("dir-expand"));
    let run = bridge_command(
        &emu,
        &[USER_TEMPLATE.to_owned(), QUEUE_TEMPLATE.to_owned()],
        "127.0.0.1:1",
        "x",
        &work,
    );
    // The same environment, another subcommand.
    let mut command = tokio::process::Command::new(run.as_std().get_program());
    for (name, value) in run.as_std().get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let output = command
        .args(["topics", "--expand"])
        .output()
        .await
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut want: BTreeSet<String> = emu
        .user_ids()
        .iter()
        .map(|u| format!("v2.users.{u}?presence&routingStatus"))
        .collect();
    want.extend(
        emu.queue_ids()
            .iter()
            .map(|q| format!("v2.routing.queues.{q}.conversations")),
    );
    assert_eq!(printed, want);
    emu.shutdown().await;
}
