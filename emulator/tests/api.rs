//! REST behaviour: OAuth, channels, subscriptions, the catalogue, injected
//! HTTP failures, the request log and the control API.

mod common;

use std::time::Duration;

use common::*;
use genesys_emulator::{Config, DeathReason, Failure, RequestKind};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn oauth_issues_tokens_and_refuses_bad_requests() {
    let emu = start(Config {
        token_lifetime: Duration::from_secs(90),
        ..fast_config()
    })
    .await;
    let base = emu.base_url();

    let ok = token(&base, "emulator-client", "emulator-secret").await;
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.expect("json");
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 90);
    assert!(v["access_token"].as_str().is_some_and(|t| t.len() >= 20));

    let bad = token(&base, "emulator-client", "wrong").await;
    assert_eq!(bad.status(), 401);
    let v: Value = bad.json().await.expect("json");
    assert_eq!(v["error"], "invalid_client");
    assert!(v["description"].is_string());

    let http = reqwest::Client::new();
    let wrong_grant = http
        .post(format!("{base}/oauth/token"))
        .basic_auth("emulator-client", Some("emulator-secret"))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .expect("send");
    assert_eq!(wrong_grant.status(), 400);
    let v: Value = wrong_grant.json().await.expect("json");
    assert_eq!(v["error"], "unsupported_grant_type");

    let no_grant = http
        .post(format!("{base}/oauth/token"))
        .basic_auth("emulator-client", Some("emulator-secret"))
        .form(&[("scope", "x")])
        .send()
        .await
        .expect("send");
    assert_eq!(no_grant.status(), 400);
    let v: Value = no_grant.json().await.expect("json");
    assert_eq!(v["error"], "invalid_request");
    emu.shutdown().await;
}

#[tokio::test]
async fn api_requires_a_valid_bearer_token() {
    let emu = start(Config {
        // Room for the three requests below on a busy machine.
        token_lifetime: Duration::from_secs(3),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let http = reqwest::Client::new();
    let url = api.url("/api/v2/notifications/channels");

    let none = http.post(&url).send().await.expect("send");
    assert_eq!(none.status(), 401);
    let v: Value = none.json().await.expect("json");
    assert_eq!(v["code"], "authentication.required");
    assert_eq!(v["status"], 401);

    let junk = http
        .post(&url)
        .bearer_auth("nope")
        .send()
        .await
        .expect("send");
    assert_eq!(junk.status(), 401);
    let v: Value = junk.json().await.expect("json");
    assert_eq!(v["code"], "bad.credentials");

    let good = http
        .post(&url)
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("send");
    assert_eq!(good.status(), 200);

    // The token lives three seconds.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = http
        .post(&url)
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("send");
    assert_eq!(expired.status(), 401);
    let v: Value = expired.json().await.expect("json");
    assert_eq!(v["code"], "bad.credentials");
    emu.shutdown().await;
}

#[tokio::test]
async fn channels_create_list_head_and_hide_other_tokens_ids() {
    let emu = start(fast_config()).await;
    let a = Api::login(&emu).await;
    let b = Api::login(&emu).await;
    let (id_a, uri_a) = a.create_channel().await;
    let (id_b, _) = b.create_channel().await;
    assert!(id_a.starts_with("streaming-0-"));
    assert_eq!(uri_a, format!("ws://{}/channels/{id_a}", emu.local_addr()));

    let created = a
        .http
        .post(a.url("/api/v2/notifications/channels"))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("send");
    let v: Value = created.json().await.expect("json");
    let expires = v["expires"].as_str().expect("expires");
    let expires = humantime::parse_rfc3339(expires).expect("RFC 3339");
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .expect("in the future");
    assert!(
        left > Duration::from_secs(86_000),
        "24 h lifetime, got {left:?}"
    );

    let list = |api: &Api, q: &'static str| {
        let req = api
            .http
            .get(api.url(&format!("/api/v2/notifications/channels{q}")))
            .bearer_auth(&api.token);
        async move {
            let v: Value = req.send().await.expect("send").json().await.expect("json");
            v["entities"].as_array().cloned().expect("entities")
        }
    };
    let mine = list(&a, "?includechannels=token").await;
    assert_eq!(mine.len(), 2);
    assert!(mine
        .iter()
        .all(|c| c["id"].is_string() && c["connectUri"].is_string()));
    assert_eq!(list(&a, "").await.len(), 2, "default is token");
    let all = list(&a, "?includechannels=oauthclient").await;
    assert_eq!(all.len(), 3);
    let anonymous: Vec<_> = all.iter().filter(|c| c.get("id").is_none()).collect();
    assert_eq!(anonymous.len(), 1, "b's channel is shown without its id");
    assert!(anonymous[0]["expires"].is_string());

    assert_eq!(a.head(&id_a).await, 200);
    assert_eq!(a.head(&id_b).await, 200);
    assert_eq!(a.head("streaming-0-doesnotexist").await, 404);
    emu.shutdown().await;
}

#[tokio::test]
async fn channel_expires_and_subscribing_extends_it() {
    let emu = start(Config {
        channel_lifetime: Duration::from_secs(2),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (keep, _) = api.create_channel().await;
    let (lapse, _) = api.create_channel().await;
    let topic = emu.sample_topics(1).remove(0);
    for _ in 0..3 {
        tokio::time::sleep(SEC).await;
        api.put(&keep, &[&topic]).await;
    }
    // 3 s after creation: the extended one lives, the other expired.
    assert_eq!(api.head(&keep).await, 200);
    assert_eq!(api.head(&lapse).await, 404);
    let info = emu
        .channels()
        .into_iter()
        .find(|c| c.id == lapse)
        .expect("info");
    assert_eq!(info.death, Some(DeathReason::Expired));
    // Dead channels refuse subscription calls too.
    let resp = api.subs(Method::GET, &lapse, &[], false).await;
    assert_eq!(resp.status(), 404);
    emu.shutdown().await;
}

#[tokio::test]
async fn channel_limit_evicts_least_recently_used_socketless_first() {
    let emu = start(Config {
        max_channels: 3,
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c1, uri1) = api.create_channel().await;
    let (c2, _) = api.create_channel().await;
    let (c3, _) = api.create_channel().await;
    // c1 is the oldest but has a socket; c3 was used last.
    let _ws = connect(&uri1).await;
    api.put(&c3, &["v2.users.u1.presence"]).await;
    let (c4, _) = api.create_channel().await;
    assert_eq!(api.head(&c2).await, 404, "oldest socketless channel goes");
    for c in [&c1, &c3, &c4] {
        assert_eq!(api.head(c).await, 200);
    }
    let info = emu.channels().into_iter().find(|c| c.id == c2).expect("c2");
    assert_eq!(info.death, Some(DeathReason::Evicted));
    // Next: c3 is socketless (c4 too, but used later).
    let (_c5, _) = api.create_channel().await;
    assert_eq!(api.head(&c3).await, 404);
    assert_eq!(api.head(&c1).await, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn channels_die_with_their_token() {
    let emu = start(Config {
        token_lifetime: Duration::from_secs(3),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c, _) = api.create_channel().await;
    // The later token outlives the first by 1.5 s: room for the checks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = Api::login(&emu).await;
    let (c_later, _) = later.create_channel().await;
    eventually("channel dies with its token", 5 * SEC, || {
        emu.channels()
            .iter()
            .any(|i| i.id == c && i.death == Some(DeathReason::TokenExpired))
    })
    .await;
    assert_eq!(later.head(&c).await, 404);
    assert_eq!(later.head(&c_later).await, 200);

    emu.shutdown().await;
}

#[tokio::test]
async fn revoking_tokens_kills_their_channels() {
    let emu = start(fast_config()).await;
    let a = Api::login(&emu).await;
    let b = Api::login(&emu).await;
    let (ca, _) = a.create_channel().await;
    let (cb, _) = b.create_channel().await;

    // One token, by value: only its channels die, and it is refused.
    assert!(emu.revoke_token(&a.token));
    assert_eq!(b.head(&ca).await, 404);
    assert_eq!(b.head(&cb).await, 200);
    let info = emu
        .channels()
        .into_iter()
        .find(|i| i.id == ca)
        .expect("info");
    assert_eq!(info.death, Some(DeathReason::TokenRevoked));
    let resp = a
        .http
        .get(a.url("/api/v2/notifications/channels"))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);

    // All tokens: every channel dies.
    let c = Api::login(&emu).await;
    let (cc, _) = c.create_channel().await;
    assert_eq!(emu.revoke_tokens(), 2);
    let fresh = Api::login(&emu).await;
    assert_eq!(fresh.head(&cb).await, 404);
    assert_eq!(fresh.head(&cc).await, 404);
    emu.shutdown().await;
}

#[tokio::test]
async fn subscriptions_get_post_put_delete() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (c, _) = api.create_channel().await;
    let u = emu.user_ids();
    let t1 = format!("v2.users.{}.presence", u[0]);
    let t2 = format!("v2.users.{}.routingStatus", u[1]);
    let t3 = format!("v2.routing.queues.{}.conversations", emu.queue_ids()[0]);
    let ids = |v: &Value| -> Vec<String> {
        v["entities"]
            .as_array()
            .expect("entities")
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect()
    };

    let v = api.put(&c, &[&t1, &t2]).await;
    assert_eq!(ids(&v), vec![t1.clone(), t2.clone()]);
    let e0 = &v["entities"][0];
    assert_eq!(e0["state"], "Permitted");
    assert!(e0["selfUri"].as_str().is_some_and(|s| s.contains(&c)));

    let resp = api.subs(Method::POST, &c, &[&t3, &t1], false).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(
        ids(&v),
        vec![t1.clone(), t2.clone(), t3.clone()],
        "POST adds, no duplicates"
    );

    let resp = api.subs(Method::GET, &c, &[], false).await;
    let v: Value = resp.json().await.expect("json");
    assert_eq!(ids(&v).len(), 3);

    let v = api.put(&c, &[&t2]).await;
    assert_eq!(ids(&v), vec![t2.clone()], "PUT replaces");
    let v = api.put(&c, &[]).await;
    assert!(ids(&v).is_empty(), "PUT [] clears");

    api.put(&c, &[&t1]).await;
    let del = api
        .http
        .delete(api.url(&format!("/api/v2/notifications/channels/{c}/subscriptions")))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("send");
    assert!(del.status().is_success());
    let v: Value = api
        .subs(Method::GET, &c, &[], false)
        .await
        .json()
        .await
        .expect("json");
    assert!(ids(&v).is_empty(), "DELETE removes all");
    emu.shutdown().await;
}

#[tokio::test]
async fn subscriptions_limit_forbidden_invalid_and_ignore_errors() {
    let emu = start(Config {
        max_topics_per_channel: 5,
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c, _) = api.create_channel().await;

    let six: Vec<String> = (0..6).map(|i| format!("v2.users.u{i}.presence")).collect();
    let six_ref: Vec<&str> = six.iter().map(String::as_str).collect();
    let resp = api.subs(Method::PUT, &c, &six_ref, false).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["status"], 400);
    assert!(v["message"].as_str().is_some_and(|m| m.contains('5')));
    api.put(&c, &six_ref[..5]).await;
    let resp = api
        .subs(Method::POST, &c, &["v2.users.u9.presence"], false)
        .await;
    assert_eq!(resp.status(), 400, "POST past the limit");

    let forbidden = "v2.users.forbidden-1.presence";
    let resp = api
        .subs(Method::PUT, &c, &["v2.users.u1.presence", forbidden], false)
        .await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["code"], "notification.unauthorized.topic");
    assert_eq!(v["status"], 403);
    // Nothing changed: the whole request failed.
    let v: Value = api
        .subs(Method::GET, &c, &[], false)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["entities"].as_array().map(Vec::len), Some(5));

    let resp = api
        .subs(
            Method::PUT,
            &c,
            &["v2.users.u1.presence", forbidden, "v2.bogus.topic"],
            true,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    let entities = v["entities"].as_array().expect("entities");
    let state = |id: &str| {
        entities
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["state"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(state("v2.users.u1.presence").as_deref(), Some("Permitted"));
    assert_eq!(state(forbidden).as_deref(), Some("Rejected"));
    assert_eq!(state("v2.bogus.topic").as_deref(), Some("Rejected"));
    let rejected = entities
        .iter()
        .find(|e| e["id"] == forbidden)
        .expect("rejected");
    assert!(rejected["rejectionReason"].is_string());

    let resp = api.subs(Method::PUT, &c, &["v2.bogus.topic"], false).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["code"], "notification.invalid.topic");
    emu.shutdown().await;
}

#[tokio::test]
async fn a_thousand_topics_fit_and_one_more_does_not() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (c, _) = api.create_channel().await;
    let topics = emu.sample_topics(1001);
    let distinct: std::collections::HashSet<&String> = topics.iter().collect();
    assert_eq!(distinct.len(), 1001, "sample topics are distinct");
    assert!(topics.iter().all(|t| genesys_emulator::is_valid_topic(t)));
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    assert_eq!(
        api.subs(Method::PUT, &c, &refs[..1000], false)
            .await
            .status(),
        200
    );
    assert_eq!(
        api.subs(Method::POST, &c, &refs[1000..], false)
            .await
            .status(),
        400
    );
    assert_eq!(api.subs(Method::PUT, &c, &refs, false).await.status(), 400);
    emu.shutdown().await;
}

#[tokio::test]
async fn combined_topics_count_once_and_cover_each_part() {
    let emu = start(Config {
        max_topics_per_channel: 1,
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let u = &emu.user_ids()[0];
    let combined = format!("v2.users.{u}?presence&routingStatus");
    let v = api.put(&c, &[&combined]).await;
    assert_eq!(v["entities"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["entities"][0]["id"], combined.as_str());

    let mut ws = connect(&uri).await;
    let s1 = emu.publish(&format!("v2.users.{u}.presence"));
    let s2 = emu.publish(&format!("v2.users.{u}.routingStatus"));
    let e1 = next_event(&mut ws, SEC).await.expect("presence event");
    let e2 = next_event(&mut ws, SEC).await.expect("routing event");
    assert_eq!(e1["eventBody"]["emulatorSequence"], s1);
    assert_eq!(e2["eventBody"]["emulatorSequence"], s2);
    assert_eq!(e2["topicName"], format!("v2.users.{u}.routingStatus"));

    // With ignoreErrors a bad part is rejected on its own, the rest stays.
    let mixed = format!("v2.users.{u}?presence&nonsense");
    let resp = api.subs(Method::PUT, &c, &[&mixed], true).await;
    let v: Value = resp.json().await.expect("json");
    let entities = v["entities"].as_array().expect("entities");
    assert!(entities
        .iter()
        .any(|e| e["id"] == mixed.as_str() && e["state"] == "Permitted"));
    assert!(entities
        .iter()
        .any(|e| e["id"] == format!("v2.users.{u}.nonsense") && e["state"] == "Rejected"));
    emu.shutdown().await;
}

#[tokio::test]
async fn available_topics_catalogue_with_expand() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let get = |q: &'static str| {
        let req = api
            .http
            .get(api.url(&format!("/api/v2/notifications/availabletopics{q}")))
            .bearer_auth(&api.token);
        async move {
            let resp = req.send().await.expect("send");
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.expect("json");
            v["entities"].as_array().cloned().expect("entities")
        }
    };
    let plain = get("").await;
    let ids: Vec<&str> = plain.iter().filter_map(|t| t["id"].as_str()).collect();
    for want in [
        "v2.users.{id}.presence",
        "v2.users.{id}.routingStatus",
        "v2.users.{id}.activity",
        "v2.users.{id}.conversations",
        "v2.users.{id}.conversations.calls",
        "v2.users.{id}.conversations.emails",
        "v2.routing.queues.{id}.conversations",
        "v2.routing.queues.{id}.conversations.chats",
        "v2.routing.queues.{id}.users",
        "v2.detail.events.conversation.{id}.acd.start",
        "v2.detail.events.conversation.{id}.customer.end",
        "v2.detail.events.conversation.{id}.user.start",
        "v2.analytics.queues.{id}.observations",
        "v2.analytics.conversation.{id}.metrics",
        "v2.system.socket_closing",
    ] {
        assert!(ids.contains(&want), "catalogue lacks {want}");
    }
    assert!(plain[0].get("description").is_none(), "not expanded");

    let full =
        get("?expand=description,schema,transports,topicParameters,requiresPermissions").await;
    let presence = full
        .iter()
        .find(|t| t["id"] == "v2.users.{id}.presence")
        .expect("presence");
    assert!(presence["description"].is_string());
    assert_eq!(presence["topicParameters"], json!(["id"]));
    assert!(presence["transports"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
    assert!(presence["schema"]["properties"]["presenceDefinition"].is_object());
    assert!(presence["requiresPermissions"].is_array());
    let conv = full
        .iter()
        .find(|t| t["id"] == "v2.users.{id}.conversations")
        .expect("conversations");
    assert!(conv["requiresPermissions"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    emu.shutdown().await;
}

#[tokio::test]
async fn injected_failures_429_and_5xx_then_recovery() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    emu.fail_next(
        RequestKind::CreateChannel,
        2,
        Failure::TooManyRequests {
            retry_after_secs: 7,
        },
    );
    for _ in 0..2 {
        let resp = api
            .http
            .post(api.url("/api/v2/notifications/channels"))
            .bearer_auth(&api.token)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 429);
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("7")
        );
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["code"], "too.many.requests");
        assert_eq!(v["status"], 429);
    }
    api.create_channel().await;

    emu.fail_next(RequestKind::Token, 1, Failure::Status { status: 503 });
    let resp = token(&api.base, "emulator-client", "emulator-secret").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        token(&api.base, "emulator-client", "emulator-secret")
            .await
            .status(),
        200
    );

    emu.fail_next(RequestKind::Any, 1, Failure::Status { status: 502 });
    assert_eq!(api.head("streaming-0-x").await, 502);
    assert_eq!(api.head("streaming-0-x").await, 404);

    for (kind, status) in [
        (RequestKind::Subscriptions, 500u16),
        (RequestKind::HeadChannel, 503),
        (RequestKind::ListChannels, 500),
        (RequestKind::AvailableTopics, 502),
    ] {
        emu.fail_next(kind, 1, Failure::Status { status });
        let (method, path) = match kind {
            RequestKind::Subscriptions => (
                Method::GET,
                "/api/v2/notifications/channels/x/subscriptions",
            ),
            RequestKind::HeadChannel => (Method::HEAD, "/api/v2/notifications/channels/x"),
            RequestKind::ListChannels => (Method::GET, "/api/v2/notifications/channels"),
            _ => (Method::GET, "/api/v2/notifications/availabletopics"),
        };
        let resp = api
            .http
            .request(method, api.url(path))
            .bearer_auth(&api.token)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), status, "{kind:?}");
    }

    // WebSocket upgrades can be refused too.
    let (_c, uri) = api.create_channel().await;
    emu.fail_next(
        RequestKind::WebsocketConnect,
        1,
        Failure::TooManyRequests {
            retry_after_secs: 1,
        },
    );
    let err = tokio_tungstenite::connect_async(&uri).await;
    match err {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected an HTTP 429, got {other:?}"),
    }
    let _ws = connect(&uri).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn request_log_records_kind_status_and_no_secrets() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    api.put(&c, &["v2.users.u1.presence"]).await;
    let _ = api
        .http
        .get(api.url("/api/v2/notifications/channels?includechannels=token"))
        .bearer_auth(&api.token)
        .send()
        .await;
    let _ws = connect(&uri).await;
    let _ = token(&api.base, "emulator-client", "bad").await;
    let log = emu.requests();
    let kinds: Vec<(RequestKind, u16)> = log.iter().map(|r| (r.kind, r.status)).collect();
    assert_eq!(
        kinds,
        vec![
            (RequestKind::Token, 200),
            (RequestKind::CreateChannel, 200),
            (RequestKind::Subscriptions, 200),
            (RequestKind::ListChannels, 200),
            (RequestKind::WebsocketConnect, 101),
            (RequestKind::Token, 401),
        ]
    );
    assert_eq!(log[2].method, "PUT");
    assert!(
        log.iter().all(|r| !r.path.contains('?')),
        "no query strings"
    );
    assert!(
        log.iter().all(|r| !r.path.contains(&api.token)),
        "no tokens"
    );
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    emu.clear_requests();
    assert!(emu.requests().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn control_api_drives_the_same_operations() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let topic = format!("v2.users.{}.presence", emu.user_ids()[0]);
    api.put(&c, &[&topic]).await;
    let mut ws = connect(&uri).await;

    let resp = api
        .control(Method::POST, "/publish", json!({ "topic": topic }))
        .await;
    assert_eq!(resp.status(), 200);
    let seq = resp.json::<Value>().await.expect("json")["seq"]
        .as_u64()
        .expect("seq");
    let ev = next_event(&mut ws, SEC).await.expect("event");
    assert_eq!(ev["eventBody"]["emulatorSequence"], seq);

    let resp = api
        .control(
            Method::POST,
            "/publish",
            json!({ "topic": topic, "body": { "custom": true } }),
        )
        .await;
    let seq2 = resp.json::<Value>().await.expect("json")["seq"]
        .as_u64()
        .expect("seq");
    let ev = next_event(&mut ws, SEC).await.expect("event");
    assert_eq!(
        ev["eventBody"],
        json!({ "emulatorSequence": seq2, "custom": true })
    );

    let settled: Value = api
        .control(Method::POST, "/settle", json!({ "timeoutMs": 2000 }))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(settled["settled"], true);
    let deliverable: Vec<u64> = api
        .control(Method::GET, "/deliverable", json!(null))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(deliverable, vec![seq, seq2]);
    let events: Value = api
        .control(Method::GET, "/events", json!(null))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(events[0]["channels"], json!([c]));

    let r: Value = api
        .control(Method::PUT, "/rate", json!({ "rate": 5.0 }))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(r["rate"], 5.0);
    assert_eq!(emu.rate(), 5.0);
    api.control(Method::PUT, "/rate", json!({ "rate": 0 }))
        .await;

    let body: Value = api
        .http
        .get(api.url(&format!("/_emulator/sample-body?topic={topic}")))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(body["body"]["presenceDefinition"]["systemPresence"].is_string());

    let r = api
        .control(
            Method::POST,
            "/faults/fail-next",
            json!({ "kind": "head_channel", "count": 1, "status": 429, "retryAfter": 2 }),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(api.head(&c).await, 429);

    let r: Value = api
        .control(
            Method::POST,
            "/faults/malformed",
            json!({ "channel": c, "kind": "invalid_json" }),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(r["affected"], 1);
    let m = next_msg(&mut ws, SEC).await.expect("malformed frame");
    assert!(serde_json::from_str::<Value>(m.to_text().expect("text")).is_err());

    let r: Value = api
        .control(Method::POST, "/faults/drop", json!({ "channel": c }))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(r["affected"], 1);
    let cov: Value = api
        .http
        .get(api.url(&format!("/_emulator/coverage?topic={topic}")))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(cov["covered"], false);
    assert_eq!(cov["gaps"].as_array().map(Vec::len), Some(1));

    let r: Value = api
        .control(
            Method::POST,
            "/faults/expire-channel",
            json!({ "channel": c }),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(r["affected"], 1);
    assert_eq!(api.head(&c).await, 404);

    let chans: Value = api
        .control(Method::GET, "/channels", json!(null))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(chans[0]["alive"], false);
    assert_eq!(chans[0]["sockets"][0]["reason"], "dropped");

    let bad = api
        .control(Method::POST, "/faults/drop", json!({ "chanel": "typo" }))
        .await;
    assert_eq!(bad.status(), 400, "unknown fields are refused");
    emu.shutdown().await;
}
