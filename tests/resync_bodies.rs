//! Resync records as the bridge builds them, from the emulator's REST state,
//! written out for the SDK check: `scripts/sdk-fidelity.sh` reads
//! `target/sdk-check/resync-records.ndjson` and checks every record's
//! envelope and `eventBody` strictly against the model Genesys' Python SDK
//! maps its topic to (`emulator/sdk-check/check.py --records`).
//!
//! The emulator's generator runs a few seconds on presence, routing status
//! and user and queue conversation topics (nothing subscribed), then the
//! current state is read over REST (bulk presence, routing status, the
//! conversation details query per queue and per user) and mapped through
//! `genesys::state`, as the resync does. One NDJSON line per record:
//! `{"topic": "<single topic>", "value": <the notification-shaped value>}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use genesys_emulator::{Config as EmuConfig, Emulator};
use genesys_kafka_bridge::genesys::state::{
    conversation_body, notification_value, presence_body, routing_status_body,
};
use serde_json::{json, Value};

/// Where the SDK check looks for the records (`$ROOT/target`, as the
/// script's venv).
fn records_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("sdk-check")
        .join("resync-records.ndjson")
}

struct Rest {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Rest {
    async fn login(emu: &Emulator) -> Rest {
        let http = reqwest::Client::new();
        let base = emu.base_url();
        let reply: Value = http
            .post(format!("{base}/oauth/token"))
            .basic_auth(&emu.config().client_id, Some(&emu.config().client_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request")
            .error_for_status()
            .expect("token granted")
            .json()
            .await
            .expect("token JSON");
        let token = reply["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        Rest { http, base, token }
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET")
            .error_for_status()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .expect("GET JSON")
    }

    /// Every conversation whose segments match `dimension == value`, all pages.
    async fn conversations(&self, dimension: &str, value: &str) -> Vec<Value> {
        let mut all = Vec::new();
        for page in 1..=50u32 {
            let query = json!({
                "interval": "2000-01-01T00:00:00.000Z/2100-01-01T00:00:00.000Z",
                "order": "asc",
                "orderBy": "conversationStart",
                "segmentFilters": [{
                    "type": "and",
                    "predicates": [{"type": "dimension", "dimension": dimension, "operator": "matches", "value": value}]
                }],
                "paging": {"pageSize": 100, "pageNumber": page},
            });
            let reply: Value = self
                .http
                .post(format!(
                    "{}/api/v2/analytics/conversations/details/query",
                    self.base
                ))
                .bearer_auth(&self.token)
                .json(&query)
                .send()
                .await
                .expect("details query")
                .error_for_status()
                .expect("details query answered")
                .json()
                .await
                .expect("details query JSON");
            let got = reply["conversations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let n = got.len();
            all.extend(got);
            if n < 100 {
                break;
            }
        }
        all
    }
}

fn record(topic: String, body: Value) -> Value {
    let value: Value =
        serde_json::from_slice(&notification_value(&topic, body)).expect("a JSON notification");
    json!({"topic": topic, "value": value})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_records_for_the_sdk_check() {
    let users = genesys_emulator::config::generated_ids(4);
    let queues = genesys_emulator::config::generated_ids(2);
    let mut topics = Vec::new();
    for u in &users {
        for kind in ["presence", "routingStatus", "conversations"] {
            topics.push(format!("v2.users.{u}.{kind}"));
        }
    }
    for q in &queues {
        topics.push(format!("v2.routing.queues.{q}.conversations"));
    }
    let emu = Emulator::start(
        EmuConfig {
            rate: 60.0,
            generator_topics: topics,
            user_ids: users.clone(),
            queue_ids: queues.clone(),
            ..EmuConfig::default()
        },
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("emulator starts");

    // A few seconds of events, and at least until a queue's and a user's
    // conversation has ended.
    let ended =
        |convs: Vec<genesys_emulator::ConversationState>| convs.iter().any(|c| c.end.is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(queues.iter().any(|q| ended(emu.conversations_of_queue(q)))
        && users.iter().any(|u| ended(emu.conversations_of_user(u))))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ended queue and user conversation after 23 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    emu.set_rate(0.0);
    emu.settle(Duration::from_secs(1)).await;

    let rest = Rest::login(&emu).await;
    let mut records = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();

    let presences = rest
        .get(&format!(
            "/api/v2/users/presences/purecloud/bulk?id={}",
            users.join(",")
        ))
        .await;
    for p in presences.as_array().expect("bulk presence is an array") {
        let (user, body) = presence_body(p).unwrap_or_else(|| panic!("presence maps: {p}"));
        records.push(record(format!("v2.users.{user}.presence"), body));
        *counts.entry("presence").or_default() += 1;
    }

    for u in &users {
        let status = rest.get(&format!("/api/v2/users/{u}/routingstatus")).await;
        let body = routing_status_body(u, &status)
            .unwrap_or_else(|| panic!("routing status maps: {status}"));
        records.push(record(format!("v2.users.{u}.routingStatus"), body));
        *counts.entry("routingStatus").or_default() += 1;
    }

    let mut ended_records = 0;
    let parties = queues
        .iter()
        .map(|q| {
            (
                "queueId",
                q,
                format!("v2.routing.queues.{q}.conversations"),
                "queue conversations",
            )
        })
        .chain(users.iter().map(|u| {
            (
                "userId",
                u,
                format!("v2.users.{u}.conversations"),
                "user conversations",
            )
        }));
    for (dimension, id, topic, kind) in parties {
        for c in rest.conversations(dimension, id).await {
            let (_, body) =
                conversation_body(&c).unwrap_or_else(|| panic!("conversation maps: {c}"));
            if c.get("conversationEnd").is_some_and(|e| !e.is_null()) {
                ended_records += 1;
                assert!(
                    body["participants"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().all(|p| p.get("endTime").is_some())),
                    "an ended conversation's participants have endTime: {body}"
                );
            }
            records.push(record(topic.clone(), body));
            *counts.entry(kind).or_default() += 1;
        }
    }
    emu.shutdown().await;

    for kind in [
        "presence",
        "routingStatus",
        "queue conversations",
        "user conversations",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} records: {counts:?}"
        );
    }
    assert!(ended_records > 0, "no ended conversation among the records");

    let path = records_path();
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("create target/sdk-check");
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).expect("JSON"));
        text.push('\n');
    }
    // Whole or not at all: the script takes any file there as done.
    let tmp = path.with_extension("ndjson.tmp");
    std::fs::write(&tmp, text).expect("write the records");
    std::fs::rename(&tmp, &path).expect("move the records into place");
    eprintln!(
        "{} resync records ({counts:?}, {ended_records} ended conversations) in {}",
        records.len(),
        path.display()
    );
}
