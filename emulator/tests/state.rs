//! The current state a client reads after a gap, over real HTTP: presence
//! and routing status equal to the last published event (generator
//! running), bulk presence limits, 404s, the conversation details query
//! (interval, queue and user filters, paging), the org REST rate limit and
//! injected failures of `RequestKind::State`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use common::*;
use genesys_emulator::time::rfc3339;
use genesys_emulator::{Config, Failure, NewUser, RequestKind};
use reqwest::Method;
use serde_json::{json, Value};

impl Api {
    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.http
            .get(self.url(path_and_query))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("state request")
    }

    async fn get_json(&self, path_and_query: &str) -> Value {
        let resp = self.get(path_and_query).await;
        assert_eq!(resp.status(), 200, "GET {path_and_query}");
        resp.json().await.expect("json")
    }

    async fn query(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/v2/analytics/conversations/details/query"))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("query request")
    }

    async fn query_json(&self, body: &Value) -> Value {
        let resp = self.query(body).await;
        assert_eq!(resp.status(), 200, "query {body}");
        resp.json().await.expect("query json")
    }
}

fn time(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
}

/// Every event frame until the socket is quiet.
async fn events_until_quiet(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = next_event(ws, SHORT).await {
        out.push(v);
    }
    out
}

#[tokio::test]
async fn presence_and_routing_status_equal_the_last_published_bodies() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let users: Vec<String> = emu.user_ids().into_iter().take(3).collect();
    let mut topics = Vec::new();
    for u in &users {
        topics.push(format!("v2.users.{u}.presence"));
        topics.push(format!("v2.users.{u}.routingStatus"));
    }
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let (channel, uri) = api.create_channel().await;
    api.put(&channel, &refs).await;
    let mut ws = connect(&uri).await;

    // Snapshots taken while the generator runs, to be checked against the
    // events once they are all in.
    emu.set_rate(2_000.0);
    let mut snapshots = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        snapshots.push(emu.current_user_states());
    }
    emu.set_rate(0.0);
    assert!(emu.settle(2 * SEC).await);
    let frames = events_until_quiet(&mut ws).await;
    assert!(frames.len() > 100, "{} events", frames.len());

    let mut by_seq: HashMap<u64, &Value> = HashMap::new();
    let mut last: HashMap<&str, &Value> = HashMap::new();
    let mut previous_time: HashMap<&str, SystemTime> = HashMap::new();
    for f in &frames {
        let topic = f["topicName"].as_str().expect("topic");
        let body = &f["eventBody"];
        by_seq.insert(body["emulatorSequence"].as_u64().expect("seq"), body);
        last.insert(topic, body);
        let at = if topic.ends_with(".presence") {
            time(&body["modifiedDate"])
        } else {
            time(&body["routingStatus"]["startTime"])
        };
        if let Some(before) = previous_time.insert(topic, at) {
            assert!(at > before, "{topic}: times strictly increase");
        }
    }

    // Every snapshot shows, for each user, exactly the body of the event it
    // names: the truth moves with publishing, never between.
    for snap in &snapshots {
        for u in &users {
            let state = &snap[u];
            if let Some(seq) = state.presence.seq {
                let body = by_seq[&seq];
                assert_eq!(
                    body["presenceDefinition"]["systemPresence"],
                    state.presence.system_presence.as_str()
                );
                assert_eq!(body["modifiedDate"], rfc3339(state.presence.modified_date));
            }
            if let Some(seq) = state.routing_status.seq {
                let body = by_seq[&seq];
                assert_eq!(
                    body["routingStatus"]["status"],
                    state.routing_status.status.as_str()
                );
            }
        }
    }

    // Now: the library and REST both give the last body of each topic.
    let ids = users.join(",");
    let bulk = api
        .get_json(&format!("/api/v2/users/presences/purecloud/bulk?id={ids}"))
        .await;
    let bulk = bulk.as_array().expect("an array");
    assert_eq!(bulk.len(), users.len());
    for (u, entry) in users.iter().zip(bulk) {
        let body = last[format!("v2.users.{u}.presence").as_str()];
        let p = emu.presence_of(u).expect("presence");
        assert_eq!(
            body["presenceDefinition"]["systemPresence"],
            p.system_presence.as_str()
        );
        assert_eq!(body["modifiedDate"], rfc3339(p.modified_date));
        assert_eq!(entry["userId"], u.as_str());
        assert_eq!(entry["source"], "PURECLOUD");
        assert_eq!(entry["presenceDefinition"], body["presenceDefinition"]);
        assert_eq!(entry["modifiedDate"], body["modifiedDate"]);
        let one = api
            .get_json(&format!("/api/v2/users/{u}/presences/purecloud"))
            .await;
        assert_eq!(one["presenceDefinition"], body["presenceDefinition"]);
        assert_eq!(one["modifiedDate"], body["modifiedDate"]);

        let body = last[format!("v2.users.{u}.routingStatus").as_str()];
        let r = emu.routing_status_of(u).expect("routing status");
        assert_eq!(body["routingStatus"]["status"], r.status.as_str());
        let rest = api
            .get_json(&format!("/api/v2/users/{u}/routingstatus"))
            .await;
        assert_eq!(
            rest,
            json!({
                "userId": u,
                "status": body["routingStatus"]["status"],
                "startTime": body["routingStatus"]["startTime"],
            })
        );
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn publish_moves_a_time_that_does_not_move_forward() {
    let emu = start(fast_config()).await;
    let user = emu.user_ids().remove(0);
    let topic = format!("v2.users.{user}.presence");
    let at = "2030-01-01T00:00:00.000Z";
    let body = |p: &str| {
        json!({
            "source": "PURECLOUD",
            "presenceDefinition": { "id": "def-1", "systemPresence": p },
            "message": "lunch",
            "modifiedDate": at,
        })
    };
    let s1 = emu.publish_body(&topic, body("Busy"));
    let s2 = emu.publish_body(&topic, body("Away"));
    let p = emu.presence_of(&user).expect("presence");
    assert_eq!(p.seq, Some(s2));
    assert!(s2 > s1);
    assert_eq!(
        (p.system_presence.as_str(), p.message.as_str()),
        ("Away", "lunch")
    );
    assert_eq!(rfc3339(p.modified_date), "2030-01-01T00:00:00.001Z");
    // A body without the fields is published but changes nothing.
    emu.publish_body(&topic, json!({ "note": "no presence here" }));
    assert_eq!(emu.presence_of(&user).expect("presence").seq, Some(s2));
    emu.shutdown().await;
}

#[tokio::test]
async fn users_start_offline_and_off_queue_and_unknown_ones_are_404() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let before = SystemTime::now() - Duration::from_millis(1);
    let id = emu.add_user(NewUser::default()).expect("added");
    let p = api
        .get_json(&format!("/api/v2/users/{id}/presences/purecloud"))
        .await;
    assert_eq!(p["presenceDefinition"]["systemPresence"], "Offline");
    assert_eq!(p["source"], "PURECLOUD");
    let created = time(&p["modifiedDate"]);
    assert!(created >= before && created <= SystemTime::now());
    let r = api
        .get_json(&format!("/api/v2/users/{id}/routingstatus"))
        .await;
    assert_eq!(r["status"], "OFF_QUEUE");
    assert_eq!(time(&r["startTime"]), created);

    for path in [
        "/api/v2/users/nobody/routingstatus",
        "/api/v2/users/nobody/presences/purecloud",
    ] {
        let resp = api.get(path).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.expect("ErrorBody");
        assert_eq!(body["code"], "not.found");
    }
    emu.remove_user(&id).expect("removed");
    assert!(emu.presence_of(&id).is_none());
    let resp = api.get(&format!("/api/v2/users/{id}/routingstatus")).await;
    assert_eq!(resp.status(), 404);

    // Bearer token required, like every /api/v2 route.
    let resp = reqwest::Client::new()
        .get(api.url(&format!(
            "/api/v2/users/{}/routingstatus",
            emu.user_ids()[0]
        )))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);

    // The control API shows the same.
    let all = api
        .control(Method::GET, "/state/users", Value::Null)
        .await
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(all.as_object().map(|o| o.len()), Some(emu.user_ids().len()));
    emu.shutdown().await;
}

#[tokio::test]
async fn bulk_presence_takes_both_list_forms_up_to_fifty_and_skips_unknown_ids() {
    let emu = start(Config {
        user_ids: genesys_emulator::config::generated_ids(60),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let users = emu.user_ids();
    let path = "/api/v2/users/presences/purecloud/bulk";

    let comma = api
        .get_json(&format!("{path}?id={},ghost,{}", users[0], users[1]))
        .await;
    let repeated = api
        .get_json(&format!("{path}?id={}&id=ghost&id={}", users[0], users[1]))
        .await;
    assert_eq!(comma, repeated);
    let got: Vec<&str> = comma
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["userId"].as_str().expect("userId"))
        .collect();
    assert_eq!(got, vec![users[0].as_str(), users[1].as_str()]);

    let fifty = users[..50].join(",");
    let all = api.get_json(&format!("{path}?id={fifty}")).await;
    assert_eq!(all.as_array().map(Vec::len), Some(50));
    let fifty_one = users[..51].join(",");
    let resp = api.get(&format!("{path}?id={fifty_one}")).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("ErrorBody");
    assert_eq!(body["code"], "bad.request");
    assert_eq!(api.get(path).await.status(), 400, "no id at all");
    let nobody = api.get_json(&format!("{path}?id=ghost")).await;
    assert_eq!(nobody, json!([]));
    emu.shutdown().await;
}

/// A conversation body on a queue: a customer and an agent, from `start`
/// (ms since `base`), ended at `end` when given.
fn conversation(
    id: &str,
    queue: &str,
    user: &str,
    t: (u64, Option<u64>),
    base: SystemTime,
) -> Value {
    let at = |ms: u64| rfc3339(base + Duration::from_millis(ms));
    let end = t.1.map(at);
    json!({
        "id": id,
        "participants": [
            { "id": format!("{id}-c"), "purpose": "customer", "connectedTime": at(t.0),
              "endTime": end, "calls": [{ "id": "s1", "state": "connected" }] },
            { "id": format!("{id}-a"), "purpose": "agent", "userId": user, "queueId": queue,
              "connectedTime": at(t.0 + 100), "endTime": end,
              "calls": [{ "id": "s2", "state": "connected" }] },
        ],
    })
}

fn interval(base: SystemTime, from: u64, to: u64) -> String {
    format!(
        "{}/{}",
        rfc3339(base + Duration::from_millis(from)),
        rfc3339(base + Duration::from_millis(to))
    )
}

fn ids_of(reply: &Value) -> Vec<String> {
    reply["conversations"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["conversationId"].as_str().expect("id").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_details_query_filters_by_interval_queue_and_user() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (q1, q2) = (emu.queue_ids()[0].clone(), emu.queue_ids()[1].clone());
    let (u1, u2) = (emu.user_ids()[0].clone(), emu.user_ids()[1].clone());
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let on = |q: &str| format!("v2.routing.queues.{q}.conversations");
    // c1: 0-10 s on q1 by u1, ended. c2: 20 s-open on q1 by u2.
    // c3: 30-40 s on q2 by u1, ended.
    emu.publish_body(&on(&q1), conversation("c1", &q1, &u1, (0, None), base));
    emu.publish_body(
        &on(&q1),
        conversation("c1", &q1, &u1, (0, Some(10_000)), base),
    );
    emu.publish_body(&on(&q1), conversation("c2", &q1, &u2, (20_000, None), base));
    emu.publish_body(
        &on(&q2),
        conversation("c3", &q2, &u1, (30_000, Some(40_000)), base),
    );

    let of_q1: Vec<String> = emu
        .conversations_of_queue(&q1)
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(of_q1, ["c1", "c2"]);
    let c1 = emu.conversation("c1").expect("kept");
    assert_eq!(c1.end, Some(base + Duration::from_secs(10)));
    assert_eq!(c1.last_body["participants"][1]["userId"], u1.as_str());

    let seg = |dim: &str, v: &str| json!([{ "type": "and", "predicates": [{ "dimension": dim, "value": v }] }]);
    let all = api
        .query_json(&json!({ "interval": interval(base, 0, 60_000) }))
        .await;
    assert_eq!(ids_of(&all), ["c1", "c2", "c3"]);
    assert_eq!(all["totalHits"], 3);
    let c = &all["conversations"][0];
    assert_eq!(c["conversationStart"], rfc3339(base));
    assert_eq!(
        c["conversationEnd"],
        rfc3339(base + Duration::from_secs(10))
    );
    let agent = &c["participants"][1];
    assert_eq!(
        (agent["purpose"].as_str(), agent["userId"].as_str()),
        (Some("agent"), Some(u1.as_str()))
    );
    let segment = &agent["sessions"][0]["segments"][0];
    assert_eq!(agent["sessions"][0]["mediaType"], "voice");
    assert_eq!(segment["queueId"], q1.as_str());
    assert_eq!(segment["segmentType"], "interact");
    assert!(
        all["conversations"][1].get("conversationEnd").is_none(),
        "c2 is open"
    );

    // Overlap: 15-25 s meets only the open c2; 5-35 s all three.
    let mid = api
        .query_json(&json!({ "interval": interval(base, 15_000, 25_000) }))
        .await;
    assert_eq!(ids_of(&mid), ["c2"]);
    let late = api
        .query_json(&json!({ "interval": interval(base, 45_000, 50_000) }))
        .await;
    assert_eq!(ids_of(&late), ["c2"], "an open conversation reaches to now");

    let by_queue = api
        .query_json(&json!({ "interval": interval(base, 0, 60_000), "segmentFilters": seg("queueId", &q1) }))
        .await;
    assert_eq!(ids_of(&by_queue), ["c1", "c2"]);
    let by_user = api
        .query_json(&json!({ "interval": interval(base, 0, 60_000), "segmentFilters": seg("userId", &u1), "order": "desc" }))
        .await;
    assert_eq!(ids_of(&by_user), ["c3", "c1"]);
    let both = api
        .query_json(&json!({
            "interval": interval(base, 0, 60_000),
            "segmentFilters": [{ "type": "and", "predicates": [
                { "dimension": "queueId", "value": q1 }, { "dimension": "userId", "value": u1 }] }],
        }))
        .await;
    assert_eq!(ids_of(&both), ["c1"]);
    let either = api
        .query_json(&json!({
            "interval": interval(base, 0, 60_000),
            "conversationFilters": [{ "type": "or", "predicates": [
                { "dimension": "conversationId", "value": "c3" }, { "dimension": "conversationId", "value": "c2" }] }],
        }))
        .await;
    assert_eq!(ids_of(&either), ["c2", "c3"]);

    // Paging: totalHits counts every match; an empty page has no list.
    let page = |n: u32| json!({ "interval": interval(base, 0, 60_000), "paging": { "pageSize": 2, "pageNumber": n } });
    let p2 = api.query_json(&page(2)).await;
    assert_eq!(
        (ids_of(&p2), p2["totalHits"].as_u64()),
        (vec!["c3".to_owned()], Some(3))
    );
    let p3 = api.query_json(&page(3)).await;
    assert_eq!(p3, json!({ "totalHits": 3 }));

    for bad in [
        json!({}),
        json!({ "interval": "yesterday" }),
        json!({ "interval": interval(base, 10_000, 0) }),
        json!({ "interval": interval(base, 0, 1), "segmentFilters": seg("ani", "x") }),
        json!({ "interval": interval(base, 0, 1), "paging": { "pageSize": 0 } }),
        json!({ "interval": interval(base, 0, 1), "segmentFilters": "queueId" }),
    ] {
        let resp = api.query(&bad).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.expect("ErrorBody");
        assert_eq!(body["code"], "bad.request");
    }
    let resp = api
        .http
        .post(api.url("/api/v2/analytics/conversations/details/query"))
        .bearer_auth(&api.token)
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn generated_conversations_start_and_end_and_the_query_sees_them() {
    let emu = start(Config {
        max_conversations: 50,
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let queue = emu.queue_ids().remove(0);
    let topic = format!("v2.routing.queues.{queue}.conversations.calls");
    let (channel, _uri) = api.create_channel().await;
    api.put(&channel, &[topic.as_str()]).await;
    let since = SystemTime::now() - Duration::from_secs(3_600);
    emu.set_rate(1_000.0);
    eventually("conversations start and end", 5 * SEC, || {
        let cs = emu.conversations_of_queue(&queue);
        cs.iter().any(|c| c.end.is_some()) && cs.iter().any(|c| c.end.is_none())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    emu.set_rate(0.0);
    let kept = emu.conversations_of_queue(&queue);
    assert!(kept.len() <= 50, "bounded: {}", kept.len());
    assert_eq!(emu.conversation_count(), kept.len());
    for c in &kept {
        assert!(c.has_queue(&queue));
        if let Some(end) = c.end {
            assert!(end > c.start, "{}: ends after it starts", c.id);
            assert_eq!(
                c.last_body["participants"][2]["calls"][0]["state"],
                "disconnected"
            );
        }
    }
    let reply = api
        .query_json(&json!({
            "interval": format!("{}/{}", rfc3339(since), rfc3339(SystemTime::now() + Duration::from_secs(60))),
            "segmentFilters": [{ "type": "and", "predicates": [{ "dimension": "queueId", "value": queue }] }],
            "paging": { "pageSize": 100 },
        }))
        .await;
    assert_eq!(reply["totalHits"].as_u64(), Some(kept.len() as u64));
    emu.shutdown().await;
}

#[tokio::test]
async fn the_org_rest_limit_answers_429_with_retry_after() {
    let emu = start(Config {
        rest_requests_per_minute: Some(5),
        ..fast_config()
    })
    .await;
    // Login and control routes are not /api/v2: they do not count.
    let api = Api::login(&emu).await;
    let user = emu.user_ids().remove(0);
    let path = format!("/api/v2/users/{user}/routingstatus");
    for i in 0..5 {
        assert_eq!(api.get(&path).await.status(), 200, "request {i}");
    }
    let resp = api.get(&path).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((55..=60).contains(&retry), "Retry-After {retry}");
    let body: Value = resp.json().await.expect("ErrorBody");
    assert_eq!(body["code"], "too.many.requests");
    // Any /api/v2 route, not only the state ones.
    assert_eq!(api.get("/api/v2/users").await.status(), 429);
    assert_eq!(
        api.control(Method::GET, "/state", Value::Null)
            .await
            .status(),
        200
    );
    let limited = emu
        .requests()
        .iter()
        .filter(|r| r.status == 429 && r.kind == RequestKind::State)
        .count();
    assert_eq!(limited, 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn fail_next_state_fails_the_state_routes_only() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let user = emu.user_ids().remove(0);
    let resp = api
        .control(
            Method::POST,
            "/faults/fail-next",
            json!({ "kind": "state", "count": 2, "status": 503 }),
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        api.get("/api/v2/users").await.status(),
        200,
        "directory passes"
    );
    let presence = format!("/api/v2/users/presences/purecloud/bulk?id={user}");
    assert_eq!(api.get(&presence).await.status(), 503);
    let query = json!({ "interval": "2024-01-01T00:00:00Z/2024-01-02T00:00:00Z" });
    assert_eq!(api.query(&query).await.status(), 503);
    assert_eq!(api.get(&presence).await.status(), 200);
    assert_eq!(api.query(&query).await.status(), 200);

    emu.fail_next(
        RequestKind::State,
        1,
        Failure::TooManyRequests {
            retry_after_secs: 3,
        },
    );
    let resp = api
        .get(&format!("/api/v2/users/{user}/routingstatus"))
        .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let kinds: Vec<(RequestKind, u16)> = emu
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/v2/users/") || r.path.contains("analytics"))
        .map(|r| (r.kind, r.status))
        .collect();
    assert_eq!(
        kinds,
        [
            (RequestKind::State, 503),
            (RequestKind::State, 503),
            (RequestKind::State, 200),
            (RequestKind::State, 200),
            (RequestKind::State, 429),
        ]
    );
    emu.shutdown().await;
}
