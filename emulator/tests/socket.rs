//! Socket behaviour: heartbeats, pings, over-socket subscribe, one socket
//! per channel, socket_closing, dead channels, system messages.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use genesys_emulator::{Config, DisconnectReason, Target};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn heartbeats_come_at_the_configured_interval() {
    let emu = start(Config {
        heartbeat_interval: Duration::from_millis(200),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (_c, uri) = api.create_channel().await;
    // Counted from before the upgrade, so that the first heartbeat's wait is
    // a lower bound however late this task runs; the spacing is checked on
    // average over ten intervals, which a busy machine cannot skew much.
    let started = Instant::now();
    let mut ws = connect(&uri).await;
    let mut at = Vec::new();
    while started.elapsed() < Duration::from_millis(2100) {
        if let Some(v) = next_json(&mut ws, Duration::from_millis(300)).await {
            assert_eq!(
                v,
                json!({"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}})
            );
            at.push(started.elapsed());
        }
    }
    assert!((7..=11).contains(&at.len()), "heartbeats at {at:?}");
    assert!(
        at[0] >= Duration::from_millis(200),
        "first one waits an interval: {at:?}"
    );
    let mean = (at[at.len() - 1] - at[0]) / (at.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(170) && mean <= Duration::from_millis(260),
        "mean {mean:?}: {at:?}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn ping_message_gets_pong_and_protocol_pings_get_pongs() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (_c, uri) = api.create_channel().await;
    let mut ws = connect(&uri).await;
    send_json(&mut ws, json!({ "message": "ping" })).await;
    let v = next_json(&mut ws, SEC).await.expect("pong");
    assert_eq!(
        v,
        json!({"topicName":"channel.metadata","eventBody":{"message":"pong"}})
    );

    ws.send(Message::Ping(bytes::Bytes::from_static(b"hi")))
        .await
        .expect("ping");
    let m = next_msg(&mut ws, SEC).await.expect("pong frame");
    assert_eq!(m, Message::Pong(bytes::Bytes::from_static(b"hi")));
    emu.shutdown().await;
}

#[tokio::test]
async fn over_socket_subscribe_replies_and_delivers() {
    let emu = start(Config {
        // Long enough for the exchanges below on a busy machine; the loop at
        // the end outlives it only through its extensions.
        channel_lifetime: Duration::from_secs(2),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let mut ws = connect(&uri).await;
    let topic = format!("v2.users.{}.presence", emu.user_ids()[0]);

    send_json(
        &mut ws,
        json!({ "message": "subscribe", "topics": [topic], "correlationId": "abc" }),
    )
    .await;
    let v = next_json(&mut ws, SEC).await.expect("reply");
    assert_eq!(
        v,
        json!({ "result": "200", "status": "subscribed", "topics": [topic], "correlationId": "abc" })
    );
    let seq = emu.publish(&topic);
    let ev = next_event(&mut ws, SEC).await.expect("event");
    assert_eq!(ev["eventBody"]["emulatorSequence"], seq);
    let listing: Value = api
        .subs(Method::GET, &c, &[], false)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listing["entities"][0]["id"], topic.as_str());

    send_json(
        &mut ws,
        json!({ "message": "subscribe", "topics": ["v2.users.forbidden-x.presence"], "correlationId": "f" }),
    )
    .await;
    let v = next_json(&mut ws, SEC).await.expect("reply");
    assert_eq!(v["result"], "400");
    assert_eq!(v["status"], "error");
    assert_eq!(v["topics"], json!([]));
    assert_eq!(v["correlationId"], "f");
    assert!(v["message"].is_string());

    send_json(
        &mut ws,
        json!({ "message": "subscribe", "correlationId": "m" }),
    )
    .await;
    let v = next_json(&mut ws, SEC).await.expect("reply");
    assert_eq!(v["result"], "400");
    assert_eq!(
        v["message"],
        "Required data missing from subscribe request."
    );

    // Over-socket subscribing also extends the channel's life.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        send_json(
            &mut ws,
            json!({ "message": "subscribe", "topics": [topic], "correlationId": "x" }),
        )
        .await;
        let v = next_event(&mut ws, SEC).await.expect("reply");
        assert_eq!(v["result"], "200");
    }
    assert_eq!(api.head(&c).await, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn second_socket_on_a_channel_closes_the_first() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let topic = emu.sample_topics(1).remove(0);
    api.put(&c, &[&topic]).await;
    let mut first = connect(&uri).await;
    let mut second = connect(&uri).await;

    let closed = loop {
        match next_msg(&mut first, SEC).await {
            Some(Message::Close(f)) => break f,
            Some(_) => continue,
            None => panic!("first socket was not closed"),
        }
    };
    assert!(closed.is_some());
    let seq = emu.publish(&topic);
    let ev = next_event(&mut second, SEC)
        .await
        .expect("second gets events");
    assert_eq!(ev["eventBody"]["emulatorSequence"], seq);
    assert!(emu.settle(SEC).await);
    assert_eq!(emu.event(seq).expect("record").channels, vec![c.clone()]);
    let info = emu
        .channels()
        .into_iter()
        .find(|i| i.id == c)
        .expect("info");
    assert_eq!(info.sockets.len(), 2);
    assert_eq!(info.sockets[0].reason, Some(DisconnectReason::Replaced));
    assert!(info.sockets[1].disconnected_at.is_none());
    emu.shutdown().await;
}

#[tokio::test]
async fn socket_closing_warns_then_closes_after_the_grace() {
    let emu = start(Config {
        socket_closing_grace: Duration::from_millis(500),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let topic = emu.sample_topics(1).remove(0);
    api.put(&c, &[&topic]).await;
    let mut ws = connect(&uri).await;
    let t0 = Instant::now();
    assert_eq!(emu.socket_closing(Target::All), 1);
    let warn = next_event(&mut ws, SEC)
        .await
        .expect("socket_closing frame");
    assert_eq!(warn["topicName"], "v2.system.socket_closing");
    assert_eq!(warn["eventBody"]["channelId"], c.as_str());
    assert!(warn["eventBody"]["message"].is_string());

    // Still delivering during the grace.
    let seq = emu.publish(&topic);
    let ev = next_event(&mut ws, SEC).await.expect("event in grace");
    assert_eq!(ev["eventBody"]["emulatorSequence"], seq);

    let close = loop {
        match next_msg(&mut ws, 2 * SEC).await {
            Some(Message::Close(f)) => break f,
            Some(_) => continue,
            None => panic!("no close frame"),
        }
    };
    let waited = t0.elapsed();
    // Keep reading so the client answers the close.
    while next_msg(&mut ws, SHORT).await.is_some() {}
    assert!(
        waited >= Duration::from_millis(450),
        "closed after {waited:?}"
    );
    assert!(waited < 3 * SEC, "closed after {waited:?}");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    eventually("socket record closes", SEC, || {
        emu.channels()[0].sockets[0].reason == Some(DisconnectReason::SocketClosing)
    })
    .await;
    // The channel itself lives on and can be reconnected.
    assert_eq!(api.head(&c).await, 200);
    let mut again = connect(&uri).await;
    let seq = emu.publish(&topic);
    let ev = next_event(&mut again, SEC)
        .await
        .expect("event after reconnect");
    assert_eq!(ev["eventBody"]["emulatorSequence"], seq);
    emu.shutdown().await;
}

#[tokio::test]
async fn dead_channel_sockets_go_silent_and_answer_404() {
    let emu = start(Config {
        heartbeat_interval: Duration::from_millis(100),
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let topic = emu.sample_topics(1).remove(0);
    api.put(&c, &[&topic]).await;
    let mut ws = connect(&uri).await;
    assert!(
        next_json(&mut ws, SEC).await.is_some(),
        "heartbeat while alive"
    );

    assert_eq!(emu.expire_channel(Target::channel(&c)), 1);
    assert_eq!(api.head(&c).await, 404);
    let seq = emu.publish(&topic);
    // Drain anything that was already on the wire, then expect silence.
    tokio::time::sleep(Duration::from_millis(150)).await;
    while next_msg(&mut ws, Duration::from_millis(50)).await.is_some() {}
    assert!(
        next_msg(&mut ws, Duration::from_millis(400))
            .await
            .is_none(),
        "no heartbeats, no events"
    );
    assert!(emu.settle(SEC).await);
    assert!(!emu.event(seq).expect("record").deliverable());

    send_json(&mut ws, json!({ "message": "ping" })).await;
    let v = next_json(&mut ws, SEC).await.expect("404 reply");
    assert_eq!(
        v,
        json!({ "result": "404", "message": "Channel not found" })
    );

    // A new socket on the dead channel is accepted and answers 404 too.
    let mut late = connect(&uri).await;
    send_json(
        &mut late,
        json!({ "message": "subscribe", "topics": [topic] }),
    )
    .await;
    assert_eq!(
        next_json(&mut late, SEC).await.expect("reply")["result"],
        "404"
    );
    let info = emu
        .channels()
        .into_iter()
        .find(|i| i.id == c)
        .expect("info");
    assert!(info.sockets.last().expect("late socket").dead_channel);

    // So does one on a channel that never existed.
    let bogus = uri.replace(&c, "streaming-0-neverexisted");
    let mut ghost = connect(&bogus).await;
    send_json(&mut ghost, json!({ "message": "ping" })).await;
    assert_eq!(
        next_json(&mut ghost, SEC).await.expect("reply")["result"],
        "404"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn subscriptions_survive_a_reconnect_to_the_same_channel() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let topic = emu.sample_topics(1).remove(0);
    api.put(&c, &[&topic]).await;
    let ws = connect(&uri).await;
    drop(ws);
    eventually("socket gone", SEC, || emu.open_sockets() == 0).await;
    let mut ws = connect(&uri).await;
    let seq = emu.publish(&topic);
    let ev = next_event(&mut ws, SEC).await.expect("event");
    assert_eq!(ev["eventBody"]["emulatorSequence"], seq);
    emu.shutdown().await;
}

#[tokio::test]
async fn exclusive_subscriptions_move_topics_to_the_newest_channel() {
    let emu = start(Config {
        exclusive_subscriptions: true,
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (old, old_uri) = api.create_channel().await;
    let (new, new_uri) = api.create_channel().await;
    let u = &emu.user_ids()[0];
    let presence = format!("v2.users.{u}.presence");
    let routing = format!("v2.users.{u}.routingStatus");
    api.put(&old, &[&format!("v2.users.{u}?presence&routingStatus")])
        .await;
    let mut old_ws = connect(&old_uri).await;
    let mut new_ws = connect(&new_uri).await;
    api.put(&new, &[&presence]).await;

    let msg = next_event(&mut old_ws, SEC)
        .await
        .expect("no_longer_subscribed");
    assert_eq!(
        msg["topicName"],
        format!("v2.system.no_longer_subscribed.{old}")
    );
    let body = &msg["eventBody"];
    assert_eq!(body["channelId"], old.as_str());
    assert_eq!(body["systemTopicType"], "no_longer_subscribed");
    assert_eq!(body["reason"], "another_channel_subscribed");
    assert_eq!(body["data"]["topics"], json!([presence]));

    let listing: Value = api
        .subs(Method::GET, &old, &[], false)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        listing["entities"],
        json!([{ "id": routing, "state": "Permitted", "selfUri": format!("/api/v2/notifications/channels/{old}/subscriptions") }])
    );

    let s = emu.publish(&presence);
    let ev = next_event(&mut new_ws, SEC).await.expect("new gets it");
    assert_eq!(ev["eventBody"]["emulatorSequence"], s);
    assert!(emu.settle(SEC).await);
    assert_eq!(emu.event(s).expect("record").channels, vec![new.clone()]);
    let r = emu.publish(&routing);
    let ev = next_event(&mut old_ws, SEC)
        .await
        .expect("old keeps routingStatus");
    assert_eq!(ev["eventBody"]["emulatorSequence"], r);
    emu.shutdown().await;
}

#[tokio::test]
async fn token_revoked_message_when_enabled() {
    let emu = start(Config {
        send_token_revoked: true,
        ..fast_config()
    })
    .await;
    let api = Api::login(&emu).await;
    let (c, uri) = api.create_channel().await;
    let mut ws = connect(&uri).await;
    assert!(emu.revoke_channel_token(&c));
    let msg = next_event(&mut ws, SEC).await.expect("token_revoked");
    assert_eq!(msg["topicName"], format!("v2.system.token_revoked.{c}"));
    assert_eq!(msg["eventBody"]["systemTopicType"], "token_revoked");
    assert_eq!(msg["eventBody"]["reason"], "user_tokens_revoked");
    send_json(&mut ws, json!({ "message": "ping" })).await;
    assert_eq!(
        next_json(&mut ws, SEC).await.expect("reply")["result"],
        "404"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let emu = start(fast_config()).await;
    let api = Api::login(&emu).await;
    let (_c, uri) = api.create_channel().await;
    let mut ws = connect(&uri).await;
    let e2 = emu.clone();
    let stop = tokio::spawn(async move { e2.shutdown().await });
    let close = loop {
        match next_msg(&mut ws, 2 * SEC).await {
            Some(Message::Close(f)) => break f,
            Some(_) => continue,
            None => panic!("no close frame on shutdown"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    drop(ws);
    stop.await.expect("shutdown task");
}
