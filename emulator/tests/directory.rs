//! The directory: users, queues and queue members over real HTTP (paging,
//! filters, 404s, injected failures), changes through the control API and
//! the library, and the generator firing only for users and queues that
//! exist.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use genesys_emulator::{
    Config, DirectoryError, Failure, NewQueue, NewUser, RequestKind, UserState,
};
use reqwest::Method;
use serde_json::{json, Value};

impl Api {
    /// GET an API path (with its query) with the bearer token.
    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.http
            .get(self.url(path_and_query))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("directory request")
    }

    async fn get_json(&self, path_and_query: &str) -> Value {
        let resp = self.get(path_and_query).await;
        assert_eq!(resp.status(), 200, "GET {path_and_query}");
        resp.json().await.expect("listing json")
    }

    /// Follows `nextUri` from `first`; returns every page.
    async fn walk(&self, first: &str) -> Vec<Value> {
        let mut pages = vec![self.get_json(first).await];
        while let Some(next) = pages.last().and_then(|p| p["nextUri"].as_str()) {
            let next = next.to_owned();
            pages.push(self.get_json(&next).await);
            assert!(pages.len() < 1_000, "nextUri loops");
        }
        pages
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

fn names(page: &Value) -> Vec<String> {
    page["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect()
}

fn users_config(users: usize) -> Config {
    Config {
        user_ids: genesys_emulator::config::generated_ids(users),
        ..fast_config()
    }
}

#[tokio::test]
async fn users_page_with_totals_links_and_a_maximum() {
    let emu = start(users_config(60)).await;
    let api = Api::login(&emu).await;

    let unauthenticated = api
        .http
        .get(api.url("/api/v2/users"))
        .send()
        .await
        .expect("send");
    assert_eq!(unauthenticated.status(), 401);

    let first = api.get_json("/api/v2/users").await;
    assert_eq!(first["pageSize"], 25, "default page size");
    assert_eq!(first["pageNumber"], 1);
    assert_eq!(first["total"], 60);
    assert_eq!(first["pageCount"], 3);
    assert!(first.get("previousUri").is_none(), "no previous on page 1");
    assert_eq!(
        first["nextUri"],
        "/api/v2/users?pageSize=25&pageNumber=2&state=active"
    );
    assert_eq!(
        first["lastUri"],
        "/api/v2/users?pageSize=25&pageNumber=3&state=active"
    );
    assert_eq!(first["firstUri"], first["selfUri"]);
    let u = &first["entities"][0];
    assert_eq!(u["name"], "Agent 0001");
    assert_eq!(u["state"], "active");
    assert_eq!(u["email"], "agent0001@example.com");
    assert!(u["division"]["id"].is_string() && u["division"]["name"].is_string());
    assert!(u["version"].is_u64());
    assert_eq!(u["selfUri"], format!("/api/v2/users/{}", emu.user_ids()[0]));

    let pages = api.walk("/api/v2/users?pageSize=25").await;
    assert_eq!(pages.len(), 3);
    let last = &pages[2];
    assert_eq!(ids(last).len(), 10);
    assert!(last.get("nextUri").is_none(), "no next on the last page");
    assert_eq!(
        last["previousUri"],
        "/api/v2/users?pageSize=25&pageNumber=2&state=active"
    );
    let walked: Vec<String> = pages.iter().flat_map(ids).collect();
    assert_eq!(walked, emu.user_ids(), "creation order, each once");

    let past = api.get_json("/api/v2/users?pageNumber=9").await;
    assert_eq!(ids(&past).len(), 0);
    assert_eq!(past["total"], 60);

    let all = api.get_json("/api/v2/users?pageSize=500").await;
    assert_eq!(ids(&all).len(), 60);
    assert_eq!(all["pageCount"], 1);
    for bad in ["pageSize=501", "pageSize=0", "pageNumber=0", "pageSize=x"] {
        let resp = api.get(&format!("/api/v2/users?{bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["code"], "bad.request");
        assert_eq!(v["status"], 400);
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn users_filter_by_state() {
    let emu = start(users_config(10)).await;
    let api = Api::login(&emu).await;
    let users = emu.user_ids();
    emu.set_user_state(&users[1], UserState::Inactive)
        .expect("known");
    emu.set_user_state(&users[2], UserState::Inactive)
        .expect("known");
    emu.set_user_state(&users[3], UserState::Deleted)
        .expect("known");
    emu.remove_user(&users[4]).expect("known");
    assert_eq!(emu.user_ids().len(), 6, "user_ids() lists active users");

    let active = api.get_json("/api/v2/users").await;
    assert_eq!(active["total"], 6);
    let inactive = api.get_json("/api/v2/users?state=inactive").await;
    assert_eq!(ids(&inactive), vec![users[1].clone(), users[2].clone()]);
    assert_eq!(inactive["entities"][0]["state"], "inactive");
    assert_eq!(
        inactive["selfUri"],
        "/api/v2/users?pageSize=25&pageNumber=1&state=inactive"
    );
    let deleted = api.get_json("/api/v2/users?state=deleted").await;
    assert_eq!(ids(&deleted), vec![users[3].clone()]);
    let any = api.get_json("/api/v2/users?state=any").await;
    assert_eq!(any["total"], 9, "a removed user is gone for good");
    assert!(!ids(&any).contains(&users[4]));
    let v = emu
        .directory()
        .users
        .into_iter()
        .find(|u| u.id == users[1])
        .expect("listed");
    assert_eq!(v.version, 2, "a state change bumps the version");
    assert_eq!(api.get("/api/v2/users?state=gone").await.status(), 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn queues_sorted_by_name_with_wildcards_and_divisions() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let all = api.get_json("/api/v2/routing/queues?pageSize=100").await;
    assert_eq!(all["total"], 10);
    let listed = names(&all);
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "sorted by name");
    let q = &all["entities"][0];
    assert_eq!(q["name"], "Billing 003");
    assert!(q["dateCreated"].is_string() && q["memberCount"].is_u64());
    assert!(q["selfUri"]
        .as_str()
        .is_some_and(|s| s.starts_with("/api/v2/routing/queues/")));

    let by = |pattern: &'static str| {
        let api = &api;
        async move {
            names(
                &api.get_json(&format!("/api/v2/routing/queues?name={pattern}"))
                    .await,
            )
        }
    };
    assert_eq!(by("sup*").await, vec!["Support 002", "Support 007"]);
    assert_eq!(by("*002").await, vec!["Support 002"]);
    assert_eq!(by("*PPOR*").await, vec!["Support 002", "Support 007"]);
    assert_eq!(by("billing%20003").await, vec!["Billing 003"]);
    assert!(
        by("billing").await.is_empty(),
        "no wildcard: the whole name"
    );

    let divisions = emu.directory().divisions;
    let (home, sales) = (&divisions[0].id, &divisions[1].id);
    let in_home = api
        .get_json(&format!("/api/v2/routing/queues?divisionId={home}"))
        .await;
    assert_eq!(in_home["total"], 5);
    assert!(in_home["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .all(|q| q["division"]["id"] == home.as_str()));
    let both = api
        .get_json(&format!(
            "/api/v2/routing/queues?divisionId={home}&divisionId={sales}"
        ))
        .await;
    assert_eq!(both["total"], 10);
    let comma = api
        .get_json(&format!(
            "/api/v2/routing/queues?divisionId={home},{sales}&name=s*&pageSize=1"
        ))
        .await;
    assert_eq!(comma["total"], 4, "Sales x2, Support x2");
    assert_eq!(comma["pageCount"], 4);
    let next = comma["nextUri"].as_str().expect("next");
    assert!(next.contains("name=s*") && next.contains(&format!("divisionId={home},{sales}")));
    let pages = api.walk(next).await;
    assert_eq!(pages.len(), 3);
    emu.shutdown().await;
}

#[tokio::test]
async fn queue_members_page_without_totals_and_unknown_queue_is_404() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let users = emu.add_users(150);
    assert_eq!(users.len(), 150);
    assert_eq!(users.iter().collect::<HashSet<_>>().len(), 150);
    let queue = emu
        .add_queue(NewQueue {
            name: Some("Big".into()),
            members: users.clone(),
            ..NewQueue::default()
        })
        .expect("added");
    emu.set_user_state(&users[0], UserState::Inactive)
        .expect("known");

    let path = format!("/api/v2/routing/queues/{queue}/members?pageSize=100");
    let pages = api.walk(&path).await;
    assert_eq!(pages.len(), 2);
    let first = &pages[0];
    assert!(first.get("total").is_none() && first.get("pageCount").is_none());
    assert!(first.get("lastUri").is_none());
    assert!(first.get("previousUri").is_none());
    assert_eq!(
        first["nextUri"],
        format!("/api/v2/routing/queues/{queue}/members?pageSize=100&pageNumber=2")
    );
    assert_eq!(ids(first).len(), 100);
    assert_eq!(
        ids(&pages[1]).len(),
        49,
        "the inactive member is not listed"
    );
    assert!(pages[1].get("nextUri").is_none());
    assert!(pages[1]["previousUri"].is_string());
    let listed: Vec<String> = pages.iter().flat_map(ids).collect();
    assert!(!listed.contains(&users[0]));
    let listed_names: Vec<String> = pages.iter().flat_map(names).collect();
    let mut sorted = listed_names.clone();
    sorted.sort();
    assert_eq!(listed_names, sorted, "sorted by name");
    let m = &first["entities"][0];
    assert_eq!(m["memberBy"], "user");
    assert_eq!(m["joined"], true);
    assert_eq!(m["ringNumber"], 1);
    assert_eq!(m["user"]["id"], m["id"]);
    assert_eq!(m["user"]["name"], m["name"]);
    assert_eq!(
        m["selfUri"],
        format!(
            "/api/v2/routing/queues/{queue}/members/{}",
            m["id"].as_str().expect("id")
        )
    );
    let listing = api.get_json("/api/v2/routing/queues?name=big").await;
    assert_eq!(listing["entities"][0]["memberCount"], 149);

    let too_big = api
        .get(&format!(
            "/api/v2/routing/queues/{queue}/members?pageSize=101"
        ))
        .await;
    assert_eq!(too_big.status(), 400);
    let missing = api
        .get("/api/v2/routing/queues/no-such-queue/members")
        .await;
    assert_eq!(missing.status(), 404);
    let v: Value = missing.json().await.expect("json");
    assert_eq!(v["code"], "not.found");
    assert_eq!(v["status"], 404);

    // Each user of the start directory is in one or two queues.
    let snapshot = emu.directory();
    let start_users = &snapshot.users[..50];
    assert!(start_users
        .iter()
        .all(|u| (1..=2).contains(&u.queues.len())));
    emu.shutdown().await;
}

#[tokio::test]
async fn control_api_changes_show_in_the_listings() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let queue = emu.queue_ids()[0].clone();
    let sales = emu.directory().divisions[1].id.clone();

    let resp = api
        .control(
            Method::POST,
            "/directory/users",
            json!({ "name": "Zed Zulu", "divisionId": sales, "queues": [queue] }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let zed = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(uuid_like(&zed), "{zed}");
    let page = api.get_json("/api/v2/users?pageSize=500").await;
    let entry = page["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .find(|u| u["id"] == zed.as_str())
        .expect("listed")
        .clone();
    assert_eq!(entry["name"], "Zed Zulu");
    assert_eq!(entry["division"]["id"], sales.as_str());
    assert!(members_of(&api, &queue).await.contains(&zed));

    let r = api
        .control(
            Method::PUT,
            &format!("/directory/users/{zed}/state"),
            json!({ "state": "inactive" }),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert!(!ids(&api.get_json("/api/v2/users?pageSize=500").await).contains(&zed));
    assert!(!members_of(&api, &queue).await.contains(&zed));
    let r = api
        .control(
            Method::DELETE,
            &format!("/directory/users/{zed}"),
            json!(null),
        )
        .await;
    assert_eq!(r.status(), 204);
    let r = api
        .control(
            Method::DELETE,
            &format!("/directory/users/{zed}"),
            json!(null),
        )
        .await;
    assert_eq!(r.status(), 404);

    let bulk: Value = api
        .control(
            Method::POST,
            "/directory/users/bulk",
            json!({ "count": 100 }),
        )
        .await
        .json()
        .await
        .expect("json");
    let added: Vec<String> = serde_json::from_value(bulk["ids"].clone()).expect("ids");
    assert_eq!(added.len(), 100);
    assert_eq!(api.get_json("/api/v2/users").await["total"], 150);

    let resp = api
        .control(
            Method::POST,
            "/directory/queues",
            json!({ "id": "zeta-queue", "name": "Zeta", "members": [added[0], added[1]] }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let zeta = api.get_json("/api/v2/routing/queues?name=zeta").await;
    assert_eq!(ids(&zeta), vec!["zeta-queue".to_owned()]);
    assert_eq!(zeta["entities"][0]["memberCount"], 2);
    let r = api
        .control(
            Method::PUT,
            "/directory/queues/zeta-queue/members",
            json!({ "members": [added[2]] }),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        ids(&api
            .get_json("/api/v2/routing/queues/zeta-queue/members")
            .await),
        vec![added[2].clone()]
    );
    let snapshot: Value = api
        .control(Method::GET, "/directory", json!(null))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(snapshot["queues"].as_array().map(Vec::len), Some(11));
    assert_eq!(snapshot["users"].as_array().map(Vec::len), Some(150));

    // Refusals: a taken id, an id a topic cannot hold, unknown members.
    let r = api
        .control(
            Method::POST,
            "/directory/queues",
            json!({ "id": "zeta-queue" }),
        )
        .await;
    assert_eq!(r.status(), 409);
    let r = api
        .control(Method::POST, "/directory/users", json!({ "id": "a.b" }))
        .await;
    assert_eq!(r.status(), 400);
    let r = api
        .control(
            Method::PUT,
            "/directory/queues/zeta-queue/members",
            json!({ "members": ["ghost"] }),
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = api
        .control(Method::POST, "/directory/users", json!({ "nmae": "typo" }))
        .await;
    assert_eq!(r.status(), 400, "unknown fields are refused");

    let r = api
        .control(Method::DELETE, "/directory/queues/zeta-queue", json!(null))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        api.get("/api/v2/routing/queues/zeta-queue/members")
            .await
            .status(),
        404
    );
    assert_eq!(
        emu.set_queue_members("zeta-queue", &[]),
        Err(DirectoryError::UnknownQueue("zeta-queue".into()))
    );
    emu.shutdown().await;
}

async fn members_of(api: &Api, queue: &str) -> Vec<String> {
    ids(&api
        .get_json(&format!(
            "/api/v2/routing/queues/{queue}/members?pageSize=100"
        ))
        .await)
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn fail_next_with_skip_fails_a_later_page() {
    let emu = start(users_config(60)).await;
    let api = Api::login(&emu).await;
    emu.fail_after(
        RequestKind::Directory,
        2,
        1,
        Failure::Status { status: 500 },
    );
    let page = |n: u32| format!("/api/v2/users?pageSize=25&pageNumber={n}");
    assert_eq!(api.get(&page(1)).await.status(), 200);
    assert_eq!(api.get(&page(2)).await.status(), 200);
    assert_eq!(api.get(&page(3)).await.status(), 500, "page 3 fails");
    assert_eq!(api.get(&page(3)).await.status(), 200, "once");

    let r = api
        .control(
            Method::POST,
            "/faults/fail-next",
            json!({ "kind": "directory", "count": 1, "status": 429, "retryAfter": 3, "skip": 1 }),
        )
        .await;
    assert_eq!(r.status(), 204);
    let queues = "/api/v2/routing/queues";
    assert_eq!(api.get(queues).await.status(), 200);
    let limited = api.get(queues).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("3")
    );
    let v: Value = limited.json().await.expect("json");
    assert_eq!(v["code"], "too.many.requests");
    assert_eq!(api.get(queues).await.status(), 200);

    let statuses: Vec<u16> = emu
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::Directory)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![200, 200, 500, 200, 200, 429, 200]);
    emu.shutdown().await;
}

#[tokio::test]
async fn generator_fires_only_for_active_users_and_existing_queues() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (channel, _uri) = api.create_channel().await;
    let users = emu.user_ids();
    let queue = emu.queue_ids()[0].clone();
    let topic = |u: &String| format!("v2.users.{u}.presence");
    let removed = topic(&users[0]);
    let inactive = topic(&users[1]);
    let kept = topic(&users[2]);
    let queue_topic = format!("v2.routing.queues.{queue}.conversations");
    let ghost = "v2.users.no-such-user.presence".to_owned();
    let conversation = "v2.analytics.conversation.c0ffee.metrics".to_owned();
    let all = [
        &removed,
        &inactive,
        &kept,
        &queue_topic,
        &ghost,
        &conversation,
    ];
    let listing = api.put(&channel, &all.map(String::as_str)).await;
    // Genesys accepts a topic naming nobody; it simply never fires.
    assert!(listing["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .all(|t| t["state"] == "Permitted"));

    emu.set_rate(1_000.0);
    eventually("every live topic fired", 5 * SEC, || {
        let fired: HashSet<String> = emu.events().into_iter().map(|e| e.topic).collect();
        [&removed, &inactive, &kept, &queue_topic, &conversation]
            .iter()
            .all(|t| fired.contains(*t))
    })
    .await;
    emu.remove_user(&users[0]).expect("known");
    emu.set_user_state(&users[1], UserState::Inactive)
        .expect("known");
    emu.remove_queue(&queue).expect("known");
    let mark = emu.event_stats().next_seq;
    tokio::time::sleep(Duration::from_millis(400)).await;
    emu.set_rate(0.0);

    let before: Vec<String> = emu
        .events_since(0, usize::MAX)
        .into_iter()
        .filter(|e| e.seq < mark)
        .map(|e| e.topic)
        .collect();
    assert!(
        !before.contains(&ghost),
        "a topic naming nobody never fires"
    );
    let after: Vec<String> = emu
        .events_since(mark, usize::MAX)
        .into_iter()
        .map(|e| e.topic)
        .collect();
    assert!(
        after.len() >= 50,
        "{} events after the changes",
        after.len()
    );
    for gone in [&removed, &inactive, &queue_topic, &ghost] {
        assert!(!after.contains(gone), "{gone} fired after the change");
    }
    assert!(after.contains(&kept) && after.contains(&conversation));

    // Back to active: it fires again. Explicit publishing ignores the
    // directory.
    emu.set_user_state(&users[1], UserState::Active)
        .expect("known");
    let mark = emu.event_stats().next_seq;
    emu.set_rate(1_000.0);
    eventually("the reactivated user fires", 5 * SEC, || {
        emu.events_since(mark, usize::MAX)
            .iter()
            .any(|e| e.topic == inactive)
    })
    .await;
    emu.set_rate(0.0);
    let seq = emu.publish(&ghost);
    assert_eq!(emu.event(seq).map(|e| e.topic), Some(ghost.clone()));
    emu.shutdown().await;
}

#[tokio::test]
async fn generator_topics_from_config_are_filtered_too() {
    let config = fast_config();
    let user = config.user_ids[0].clone();
    let live = format!("v2.users.{user}?presence&routingStatus");
    let emu = start(Config {
        rate: 500.0,
        generator_topics: vec![live, "v2.users.nobody.presence".to_owned()],
        ..config
    })
    .await;
    eventually("events", 5 * SEC, || emu.event_stats().published >= 50).await;
    assert!(emu.events().iter().all(|e| e.topic.contains(&user)));
    let added = emu
        .add_user(NewUser {
            id: Some("nobody".into()),
            ..NewUser::default()
        })
        .expect("added");
    assert_eq!(added, "nobody");
    eventually("the added user fires", 5 * SEC, || {
        emu.events()
            .iter()
            .any(|e| e.topic == "v2.users.nobody.presence")
    })
    .await;
    emu.set_rate(0.0);
    emu.shutdown().await;
}
