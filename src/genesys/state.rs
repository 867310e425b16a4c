//! The current state of users and queues from the REST API, and its
//! mapping onto the notification bodies of the topics it stands for
//! (§10 of the API notes): a consumer applies a resync record with the
//! code it already has for notifications.
//! - presence: `GET /api/v2/users/presences/purecloud/bulk` (`UcUserPresence`)
//!   → `PresenceEventUserPresence`;
//! - routing status: `GET /api/v2/users/{id}/routingstatus` (`RoutingStatus`)
//!   → `UserRoutingStatusUserRoutingStatus`;
//! - conversations: `POST /api/v2/analytics/conversations/details/query`
//!   (`AnalyticsConversationWithoutAttributes`) → the participants of
//!   `QueueConversationEventTopicConversation` / `ConversationEventTopicConversation`.
//!
//! The state's own times are carried over (`modifiedDate`, `startTime`,
//! segment times), never the time of the fetch.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::api::{Api, ApiError};

/// The most ids one bulk presence call takes.
pub const PRESENCE_BULK_MAX: usize = 50;

/// `UcUserPresence` of each id (users Genesys does not know are absent).
pub async fn presences(api: &Api, user_ids: &[&str]) -> Result<Vec<Value>, ApiError> {
    // Comma-joined, as Genesys' SDK sends a list.
    let ids = user_ids.join(",");
    api.get_json("/api/v2/users/presences/purecloud/bulk", &[("id", &ids)])
        .await
}

/// `RoutingStatus` of one user; `None` if Genesys does not know the user.
pub async fn routing_status(api: &Api, user_id: &str) -> Result<Option<Value>, ApiError> {
    match api
        .get_json(&format!("/api/v2/users/{user_id}/routingstatus"), &[])
        .await
    {
        Ok(status) => Ok(Some(status)),
        Err(ApiError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whose conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party<'a> {
    Queue(&'a str),
    User(&'a str),
}

/// Conversations of `party` active in `[from, to]`, every page of them.
pub async fn conversations(
    api: &Api,
    party: Party<'_>,
    from: SystemTime,
    to: SystemTime,
) -> Result<(Vec<Value>, u32), ApiError> {
    const PAGE: u32 = 100;
    let (dimension, value) = match party {
        Party::Queue(id) => ("queueId", id),
        Party::User(id) => ("userId", id),
    };
    let interval = format!(
        "{}/{}",
        humantime::format_rfc3339_millis(from),
        humantime::format_rfc3339_millis(to.max(from))
    );
    let mut all = Vec::new();
    let mut requests = 0;
    for page in 1..=100u32 {
        let query = json!({
            "interval": interval,
            "order": "asc",
            "orderBy": "conversationStart",
            "segmentFilters": [{
                "type": "and",
                "predicates": [{"type": "dimension", "dimension": dimension, "operator": "matches", "value": value}]
            }],
            "paging": {"pageSize": PAGE, "pageNumber": page},
        });
        let reply: Value = api
            .post_json("/api/v2/analytics/conversations/details/query", &query)
            .await?;
        requests += 1;
        let got = match reply.get("conversations") {
            Some(Value::Array(c)) => c.clone(),
            _ => Vec::new(),
        };
        let total = reply.get("totalHits").and_then(Value::as_u64);
        let n = got.len();
        all.extend(got);
        if n < PAGE as usize || total.is_some_and(|t| all.len() as u64 >= t) {
            break;
        }
    }
    Ok((all, requests))
}

/// `UcUserPresence` → the body of `v2.users.{id}.presence`, with its user id.
pub fn presence_body(presence: &Value) -> Option<(String, Value)> {
    let user = presence
        .get("userId")
        .or_else(|| presence.get("id"))?
        .as_str()?;
    let definition = presence.get("presenceDefinition")?;
    let mut body = Map::new();
    if let Some(source) = presence.get("source") {
        body.insert("source".into(), source.clone());
    }
    body.insert(
        "presenceDefinition".into(),
        json!({
            "id": definition.get("id").cloned().unwrap_or(Value::Null),
            "systemPresence": definition.get("systemPresence")?.clone(),
        }),
    );
    if let Some(message) = presence.get("message") {
        body.insert("message".into(), message.clone());
    }
    body.insert("modifiedDate".into(), presence.get("modifiedDate")?.clone());
    Some((user.to_owned(), Value::Object(body)))
}

/// `RoutingStatus` → the body of `v2.users.{id}.routingStatus`.
pub fn routing_status_body(user_id: &str, status: &Value) -> Option<Value> {
    let mut routing = Map::new();
    routing.insert("status".into(), status.get("status")?.clone());
    if let Some(start) = status.get("startTime") {
        routing.insert("startTime".into(), start.clone());
    }
    Some(json!({
        "id": status.get("userId").and_then(Value::as_str).unwrap_or(user_id),
        "routingStatus": Value::Object(routing),
    }))
}

/// The media key of a conversation participant for an analytics `mediaType`.
fn media_key(media_type: &str) -> &'static str {
    match media_type {
        "chat" => "chats",
        "email" => "emails",
        "callback" => "callbacks",
        "message" => "messages",
        "cobrowse" => "cobrowsesessions",
        "screenshare" => "screenshares",
        "video" => "videos",
        _ => "calls",
    }
}

/// An analytics conversation → the body of a conversation topic: its id
/// and participants, each with its media sessions `connected` while the
/// conversation runs and `disconnected` once it ended. `None` without an id.
pub fn conversation_body(conversation: &Value) -> Option<(String, Value)> {
    let id = conversation.get("conversationId")?.as_str()?.to_owned();
    let ended = conversation.get("conversationEnd").is_some();
    let mut participants = Vec::new();
    for p in conversation
        .get("participants")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut out = Map::new();
        let copy = |out: &mut Map<String, Value>, from: &str, to: &str| {
            if let Some(v) = p.get(from).filter(|v| !v.is_null()) {
                out.insert(to.into(), v.clone());
            }
        };
        copy(&mut out, "participantId", "id");
        copy(&mut out, "participantName", "name");
        copy(&mut out, "purpose", "purpose");
        copy(&mut out, "userId", "userId");
        let sessions = p
            .get("sessions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let segments = || {
            sessions
                .iter()
                .filter_map(|s| s.get("segments").and_then(Value::as_array))
                .flatten()
        };
        if let Some(queue) = segments().find_map(|s| s.get("queueId")) {
            out.insert("queueId".into(), queue.clone());
        }
        let start = segments()
            .filter_map(|s| s.get("segmentStart")?.as_str())
            .min();
        let end = segments()
            .filter_map(|s| s.get("segmentEnd")?.as_str())
            .max();
        if let Some(start) = start {
            out.insert("connectedTime".into(), json!(start));
        }
        if let (true, Some(end)) = (ended, end) {
            out.insert("endTime".into(), json!(end));
        }
        let mut media: Map<String, Value> = Map::new();
        for session in &sessions {
            let key = media_key(
                session
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .unwrap_or("voice"),
            );
            let mut entry = Map::new();
            if let Some(sid) = session.get("sessionId") {
                entry.insert("id".into(), sid.clone());
            }
            entry.insert(
                "state".into(),
                json!(if ended { "disconnected" } else { "connected" }),
            );
            if let Some(start) = start {
                entry.insert("connectedTime".into(), json!(start));
            }
            if let (true, Some(end)) = (ended, end) {
                entry.insert("disconnectedTime".into(), json!(end));
            }
            if let Value::Array(list) = media.entry(key).or_insert_with(|| json!([])) {
                list.push(Value::Object(entry));
            }
        }
        out.extend(media);
        participants.push(Value::Object(out));
    }
    Some((id.clone(), json!({"id": id, "participants": participants})))
}

/// A notification-shaped value: what a consumer of the topic reads.
pub fn notification_value(topic: &str, body: Value) -> Vec<u8> {
    let value = json!({
        "topicName": topic,
        "version": "2",
        "eventBody": body,
        "metadata": {"CorrelationId": uuid::Uuid::new_v4().to_string()},
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_maps_onto_the_event_body_keeping_its_time() {
        let rest = json!({
            "id": "p1", "userId": "u1", "source": "PURECLOUD", "sourceId": "x",
            "presenceDefinition": {"id": "d1", "systemPresence": "Busy", "selfUri": "/x"},
            "message": "", "modifiedDate": "2026-12-03T10:00:00.123Z"
        });
        let (user, body) = presence_body(&rest).expect("maps");
        assert_eq!(user, "u1");
        assert_eq!(
            body,
            json!({
                "source": "PURECLOUD",
                "presenceDefinition": {"id": "d1", "systemPresence": "Busy"},
                "message": "",
                "modifiedDate": "2026-12-03T10:00:00.123Z"
            })
        );
        assert!(presence_body(&json!({"userId": "u1"})).is_none());
    }

    #[test]
    fn routing_status_wraps_the_rest_reply() {
        let rest =
            json!({"userId": "u1", "status": "IDLE", "startTime": "2026-12-03T10:00:00.000Z"});
        assert_eq!(
            routing_status_body("u1", &rest),
            Some(
                json!({"id": "u1", "routingStatus": {"status": "IDLE", "startTime": "2026-12-03T10:00:00.000Z"}})
            )
        );
    }

    #[test]
    fn a_conversation_keeps_its_participants_and_their_state() {
        let rest = json!({
            "conversationId": "c1",
            "conversationStart": "2026-12-03T10:00:00.000Z",
            "conversationEnd": "2026-12-03T10:05:00.000Z",
            "participants": [{
                "participantId": "p1", "purpose": "agent", "userId": "u1",
                "sessions": [{"mediaType": "voice", "sessionId": "s1", "segments": [
                    {"segmentStart": "2026-12-03T10:01:00.000Z", "segmentEnd": "2026-12-03T10:05:00.000Z", "queueId": "q1"}
                ]}]
            }]
        });
        let (id, body) = conversation_body(&rest).expect("maps");
        assert_eq!(id, "c1");
        let p = &body["participants"][0];
        assert_eq!(p["id"], "p1");
        assert_eq!(p["queueId"], "q1");
        assert_eq!(p["endTime"], "2026-12-03T10:05:00.000Z");
        assert_eq!(p["calls"][0]["state"], "disconnected");
        assert_eq!(p["calls"][0]["id"], "s1");
    }
}
