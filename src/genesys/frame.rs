//! Classifies one text frame from a notification socket into a closed set of
//! kinds. The parser borrows from the frame (no copy of the body), never
//! panics, and treats anything it does not understand as [`Frame::Invalid`]
//! or [`Frame::Unknown`] so that one bad frame costs a counter, not a socket.

use serde::Deserialize;
use serde_json::value::RawValue;

/// What one socket frame means to the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A notification for a subscribed topic.
    Notification(Notification<'a>),
    /// The server's periodic `channel.metadata` heartbeat.
    Heartbeat,
    /// The answer to our `{"message":"ping"}`.
    Pong,
    /// `v2.system.socket_closing`: the server closes this socket in about a minute.
    SocketClosing,
    /// `v2.system.no_longer_subscribed.*`: topics left this channel.
    NoLongerSubscribed { reason: Option<&'a str> },
    /// `v2.system.token_revoked.*`: the channel's token is gone.
    TokenRevoked,
    /// `{"result":"404",...}`: the channel no longer exists.
    ChannelGone,
    /// A reply to an over-socket request other than a 404 (e.g. subscribe).
    Reply { ok: bool },
    /// Well-formed JSON the bridge has no use for (another system topic, ...).
    Unknown,
    /// Not JSON, or JSON without the fields a frame must have.
    Invalid(&'static str),
}

/// A notification frame, borrowed from the raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification<'a> {
    pub topic: &'a str,
    /// The `eventBody` exactly as received (used for dedup and keys).
    pub body: &'a str,
    pub correlation_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "topicName", borrow, default)]
    topic_name: Option<&'a str>,
    #[serde(rename = "eventBody", borrow, default)]
    event_body: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
    #[serde(borrow, default)]
    result: Option<&'a str>,
    #[serde(borrow, default)]
    status: Option<&'a str>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(rename = "CorrelationId", borrow, default)]
    correlation_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct MessageBody<'a> {
    #[serde(borrow, default)]
    message: Option<&'a str>,
    #[serde(borrow, default)]
    reason: Option<&'a str>,
}

const SYSTEM_PREFIX: &str = "v2.system.";

/// Classifies one text frame.
pub fn classify(text: &str) -> Frame<'_> {
    let envelope: Envelope<'_> = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(_) => return Frame::Invalid("not a JSON object"),
    };
    let Some(topic) = envelope.topic_name else {
        return classify_reply(&envelope);
    };
    if topic == "channel.metadata" {
        let message = envelope
            .event_body
            .and_then(|raw| serde_json::from_str::<MessageBody<'_>>(raw.get()).ok())
            .and_then(|body| body.message);
        return match message {
            Some("pong") => Frame::Pong,
            Some(m) if m.contains("Heartbeat") => Frame::Heartbeat,
            _ => Frame::Unknown,
        };
    }
    if let Some(system) = topic.strip_prefix(SYSTEM_PREFIX) {
        return classify_system(system, envelope.event_body);
    }
    if !topic.starts_with("v2.") {
        return Frame::Invalid("topic is not a v2 topic");
    }
    let Some(body) = envelope.event_body else {
        return Frame::Invalid("notification without eventBody");
    };
    Frame::Notification(Notification {
        topic,
        body: body.get(),
        correlation_id: envelope.metadata.and_then(|m| m.correlation_id),
    })
}

fn classify_system<'a>(system: &'a str, body: Option<&'a RawValue>) -> Frame<'a> {
    if system == "socket_closing" {
        Frame::SocketClosing
    } else if system.starts_with("no_longer_subscribed") {
        let reason = body
            .and_then(|raw| serde_json::from_str::<MessageBody<'a>>(raw.get()).ok())
            .and_then(|b| b.reason);
        Frame::NoLongerSubscribed { reason }
    } else if system.starts_with("token_revoked") {
        Frame::TokenRevoked
    } else {
        Frame::Unknown
    }
}

fn classify_reply(envelope: &Envelope<'_>) -> Frame<'static> {
    match (envelope.result, envelope.status) {
        (Some("404"), _) => Frame::ChannelGone,
        (Some(result), status) => Frame::Reply {
            ok: result.starts_with('2') && !matches!(status, Some("error" | "failure")),
        },
        (None, Some(_)) => Frame::Reply { ok: false },
        (None, None) => Frame::Invalid("neither topicName nor result"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn notification_borrows_topic_body_and_correlation_id() {
        let text = r#"{"topicName":"v2.users.u1.presence","version":"2","eventBody":{"a":[1,2]},"metadata":{"CorrelationId":"c-1"}}"#;
        assert_eq!(
            classify(text),
            Frame::Notification(Notification {
                topic: "v2.users.u1.presence",
                body: r#"{"a":[1,2]}"#,
                correlation_id: Some("c-1"),
            })
        );
    }

    #[test]
    fn control_frames() {
        let heartbeat =
            r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
        let pong = r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;
        assert_eq!(classify(heartbeat), Frame::Heartbeat);
        assert_eq!(classify(pong), Frame::Pong);
        assert_eq!(
            classify(r#"{"topicName":"v2.system.socket_closing","eventBody":{"message":"bye"}}"#),
            Frame::SocketClosing
        );
        assert_eq!(
            classify(
                r#"{"topicName":"v2.system.no_longer_subscribed.streaming-0-x","eventBody":{"reason":"another_channel_subscribed"}}"#
            ),
            Frame::NoLongerSubscribed {
                reason: Some("another_channel_subscribed")
            }
        );
        assert_eq!(
            classify(r#"{"topicName":"v2.system.token_revoked.x","eventBody":{}}"#),
            Frame::TokenRevoked
        );
        assert_eq!(
            classify(r#"{"result":"404","message":"gone"}"#),
            Frame::ChannelGone
        );
        assert_eq!(
            classify(r#"{"result":"200","status":"subscribed"}"#),
            Frame::Reply { ok: true }
        );
        assert_eq!(
            classify(r#"{"result":"400","status":"error","topics":[]}"#),
            Frame::Reply { ok: false }
        );
    }

    #[test]
    fn malformed_frames_are_invalid_not_panics() {
        for text in [
            "",
            "not json",
            "[1,2]",
            "{}",
            r#"{"topicName":"v2.users.x.presence"}"#,
            r#"{"topicName":"users.x","eventBody":{}}"#,
            r#"{"topicName":17,"eventBody":{}}"#,
            r#"{"topicName":"v2.users.x.presence","eventBody":{"#,
        ] {
            assert!(
                matches!(classify(text), Frame::Invalid(_)),
                "{text:?} should be invalid"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,300}") {
            let _ = classify(&text);
        }

        #[test]
        fn any_json_body_round_trips(topic in "v2\\.[a-z]{1,8}\\.[a-f0-9-]{1,36}\\.[a-zA-Z]{1,12}",
                                     n in any::<i64>(), s in "[a-zA-Z0-9 ]{0,40}") {
            let body = serde_json::json!({"n": n, "s": s}).to_string();
            let text = format!(r#"{{"topicName":"{topic}","eventBody":{body}}}"#);
            match classify(&text) {
                Frame::Notification(n) => {
                    prop_assert_eq!(n.topic, topic.as_str());
                    prop_assert_eq!(n.body, body.as_str());
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
