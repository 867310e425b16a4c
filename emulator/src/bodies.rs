//! Realistic `eventBody` values, one builder per body kind. Each shape
//! follows the Genesys Python SDK model named in the catalogue (field names,
//! enum values, date formats), so that the SDK deserializes it; the fidelity
//! script checks that field by field.
//!
//! Bodies never carry `emulatorSequence`: the publisher adds it.

use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

use crate::time::{epoch_ms, rfc3339};
use crate::topics::{match_topic, BodyKind, Detail, Media};

/// The id pools bodies draw from.
pub(crate) struct Pools<'a> {
    pub org_id: &'a str,
    pub user_ids: &'a [String],
    pub queue_ids: &'a [String],
}

use crate::state::fast_uuid as uuid;

fn pick<'a, R: Rng>(rng: &mut R, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

fn pick_id<R: Rng>(rng: &mut R, ids: &[String]) -> String {
    ids.choose(rng).cloned().unwrap_or_else(uuid)
}

fn phone<R: Rng>(rng: &mut R) -> String {
    format!("+1317555{:04}", rng.random_range(0..10_000))
}

const SYSTEM_PRESENCES: &[&str] = &[
    "Available",
    "Away",
    "Busy",
    "Break",
    "Meal",
    "Meeting",
    "Training",
    "On Queue",
    "Idle",
];
const ROUTING_STATUSES: &[&str] = &[
    "OFF_QUEUE",
    "IDLE",
    "INTERACTING",
    "NOT_RESPONDING",
    "COMMUNICATING",
];

/// The body for `topic`: by its template, or a small generic one for a topic
/// no template matches.
pub(crate) fn for_topic<R: Rng>(rng: &mut R, pools: &Pools<'_>, topic: &str) -> Value {
    match match_topic(topic) {
        Some((t, ids)) => {
            let id = ids.first().cloned().unwrap_or_else(uuid);
            build(rng, pools, t.kind, &id)
        }
        None => json!({ "id": uuid(), "topic": topic }),
    }
}

/// A body of `kind` for the resource `id` taken from the topic.
pub(crate) fn build<R: Rng>(rng: &mut R, pools: &Pools<'_>, kind: BodyKind, id: &str) -> Value {
    let now = SystemTime::now();
    match kind {
        BodyKind::Presence => {
            let p = pick(rng, SYSTEM_PRESENCES);
            json!({
                "source": "PURECLOUD",
                "presenceDefinition": { "id": presence_id(p), "systemPresence": p },
                "primary": true,
                "message": "",
                "modifiedDate": rfc3339(now),
            })
        }
        BodyKind::RoutingStatus => json!({
            "id": id,
            "routingStatus": {
                "status": pick(rng, ROUTING_STATUSES),
                "startTime": rfc3339(now),
            },
        }),
        BodyKind::Activity => {
            let p = pick(rng, SYSTEM_PRESENCES);
            let queues: Vec<String> = (0..rng.random_range(1..=3))
                .map(|_| pick_id(rng, pools.queue_ids))
                .collect();
            json!({
                "id": id,
                "routingStatus": { "status": pick(rng, ROUTING_STATUSES), "startTime": rfc3339(now) },
                "presence": {
                    "presenceDefinition": { "id": presence_id(p), "systemPresence": p },
                    "presenceMessage": "",
                    "modifiedDate": rfc3339(now),
                },
                "outOfOffice": { "active": false, "modifiedDate": rfc3339(now - Duration::from_secs(86_400)) },
                "activeQueueIds": queues,
                "dateActiveQueuesChanged": rfc3339(now - Duration::from_secs(3_600)),
            })
        }
        BodyKind::UserConversation(_) | BodyKind::QueueConversation(_) => {
            match Conversation::start(rng, pools, kind, id) {
                Some(conv) => conv.body(rng, pools, None),
                None => json!({ "id": uuid() }),
            }
        }
        BodyKind::QueueMember => {
            let user = pick_id(rng, pools.user_ids);
            json!({
                "id": user,
                "user": { "id": user },
                "queueId": id,
                "joined": rng.random_bool(0.8),
            })
        }
        BodyKind::Detail(d) => detail(rng, pools, d, id, now),
        BodyKind::QueueObservations => observations(rng, id, now),
        BodyKind::ConversationMetrics => metrics(rng, pools, id, now),
        BodyKind::System => json!({
            "channelId": id,
            "organizationId": pools.org_id,
            "message": "System message",
        }),
    }
}

/// Stable organization-presence id per system presence, so the same
/// presence always carries the same definition id.
pub(crate) fn presence_id(system_presence: &str) -> String {
    let n = system_presence
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("6a3af858-942f-489d-9700-{:012x}", n & 0xffff_ffff_ffff)
}

fn address(number: &str) -> Value {
    json!({
        "nameRaw": "",
        "addressNormalized": format!("tel:{number}"),
        "addressRaw": number,
        "addressDisplayable": number,
    })
}

/// The analytics-free name of a media list (`calls`, `chats`...): `Any`
/// picks one at random.
fn resolve_media<R: Rng>(rng: &mut R, media: Media) -> Media {
    match media {
        Media::Any => *[
            Media::Calls,
            Media::Callbacks,
            Media::Chats,
            Media::Emails,
            Media::Messages,
        ]
        .choose(rng)
        .unwrap_or(&Media::Calls),
        m => m,
    }
}

/// One media session of a participant: its id, when it connected and, once
/// it ended, when and how.
struct Session<'a> {
    id: &'a str,
    connected: &'a str,
    ended: Option<(&'a str, &'static str)>,
}

/// The media list of one participant (`calls`, `chats`...) and its key.
fn media_entry<R: Rng>(
    rng: &mut R,
    media: Media,
    session: &Session<'_>,
    customer: &str,
) -> (&'static str, Value) {
    let connected = session.connected;
    let id = session.id;
    let (key, mut entry) = match media {
        Media::Calls | Media::Any => (
            "calls",
            json!({
                "id": id,
                "state": "connected",
                "initialState": "alerting",
                "recording": false,
                "recordingState": "none",
                "muted": false,
                "confined": false,
                "held": false,
                "securePause": false,
                "direction": "inbound",
                "self": address("+13175550000"),
                "other": address(customer),
                "provider": "Edge",
                "connectedTime": connected,
                "disconnectReasons": [],
                "afterCallWorkRequired": false,
            }),
        ),
        Media::Callbacks => (
            "callbacks",
            json!({
                "id": id,
                "state": "connected",
                "initialState": "alerting",
                "direction": "outbound",
                "held": false,
                "callbackNumbers": [customer],
                "callbackUserName": "Pat Customer",
                "externalCampaign": false,
                "skipEnabled": true,
                "provider": "PureCloud Callback",
                "timeoutSeconds": 0,
                "connectedTime": connected,
                "afterCallWorkRequired": false,
            }),
        ),
        Media::Chats => (
            "chats",
            json!({
                "state": "connected",
                "initialState": "alerting",
                "id": id,
                "provider": "PureCloud Webchat v2",
                "roomId": format!("{}@conference.example.orgspan.com", id),
                "held": false,
                "connectedTime": connected,
                "afterCallWorkRequired": false,
            }),
        ),
        Media::Emails => (
            "emails",
            json!({
                "id": id,
                "state": "connected",
                "initialState": "alerting",
                "held": false,
                "autoGenerated": false,
                "subject": format!("Order {}", rng.random_range(10_000..99_999)),
                "provider": "PureCloud Email",
                "messagesSent": 0,
                "connectedTime": connected,
                "direction": "inbound",
                "spam": false,
                "afterCallWorkRequired": false,
            }),
        ),
        Media::Messages => (
            "messages",
            json!({
                "id": id,
                "state": "connected",
                "initialState": "alerting",
                "direction": "inbound",
                "held": false,
                "provider": "PureCloud Messaging",
                "connectedTime": connected,
                "toAddress": address("+13175550000"),
                "fromAddress": address(customer),
                "messages": [],
                "type": "sms",
                "afterCallWorkRequired": false,
            }),
        ),
    };
    if let (Some((at, how)), Some(o)) = (session.ended, entry.as_object_mut()) {
        o.insert("state".into(), json!("disconnected"));
        o.insert("disconnectedTime".into(), json!(at));
        o.insert("disconnectType".into(), json!(how));
    }
    (key, json!([entry]))
}

/// A conversation as the user and queue conversation topics carry it: a
/// customer, the ACD leg of `queue` and the agent `user`. The generator
/// keeps one from its start event to its end event, so both carry the same
/// ids and times.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub id: String,
    user: String,
    queue: String,
    /// Resolved: never `Any`.
    media: Media,
    /// The customer and ACD legs connected.
    started: SystemTime,
    /// The agent connected (and the ACD leg ended).
    connected: SystemTime,
    customer: String,
    /// Participant ids: customer, ACD, agent.
    participants: [String; 3],
    /// Their media session ids.
    sessions: [String; 3],
}

impl Conversation {
    /// A conversation just answered, for a topic of `kind` about `id` (a
    /// user for user conversation topics, a queue for queue ones); `None`
    /// for other kinds.
    pub(crate) fn start<R: Rng>(
        rng: &mut R,
        pools: &Pools<'_>,
        kind: BodyKind,
        id: &str,
    ) -> Option<Conversation> {
        let (user, queue, media) = match kind {
            BodyKind::UserConversation(m) => (id.to_owned(), pick_id(rng, pools.queue_ids), m),
            BodyKind::QueueConversation(m) => (pick_id(rng, pools.user_ids), id.to_owned(), m),
            _ => return None,
        };
        let now = SystemTime::now();
        Some(Conversation {
            id: uuid(),
            user,
            queue,
            media: resolve_media(rng, media),
            started: now - Duration::from_secs(rng.random_range(5..600)),
            connected: now,
            customer: phone(rng),
            participants: [uuid(), uuid(), uuid()],
            sessions: [uuid(), uuid(), uuid()],
        })
    }

    /// Its body: connected, or with `ended`, every leg disconnected then.
    pub(crate) fn body<R: Rng>(
        &self,
        rng: &mut R,
        pools: &Pools<'_>,
        ended: Option<SystemTime>,
    ) -> Value {
        let started = rfc3339(self.started);
        let connected = rfc3339(self.connected);
        let end = ended.map(rfc3339);
        let end_of = |how| end.as_deref().map(|e| (e, how));
        let (queue, user, customer) = (&self.queue, &self.user, &self.customer);
        let session = |i: usize, connected, ended| Session {
            id: &self.sessions[i],
            connected,
            ended,
        };
        let (key, customer_media) = media_entry(
            rng,
            self.media,
            &session(0, &started, end_of("endpoint")),
            customer,
        );
        let (_, acd_media) = media_entry(
            rng,
            self.media,
            &session(1, &started, Some((&connected, "transfer"))),
            customer,
        );
        let (_, agent_media) = media_entry(
            rng,
            self.media,
            &session(2, &connected, end_of("client")),
            customer,
        );
        let division = pools.org_id;
        let mut body = json!({
            "id": self.id,
            "maxParticipants": 3,
            "participants": [
                {
                    "id": self.participants[0],
                    "connectedTime": started,
                    "name": "Pat Customer",
                    "purpose": "customer",
                    "address": format!("tel:{customer}"),
                    "wrapupRequired": false,
                    "mediaRoles": [],
                    "attributes": {},
                    key: customer_media,
                },
                {
                    "id": self.participants[1],
                    "connectedTime": started,
                    "endTime": connected,
                    "name": "Support",
                    "queueId": queue,
                    "purpose": "acd",
                    "wrapupRequired": false,
                    "conversationRoutingData": {
                        "queue": { "id": queue },
                        "priority": 0,
                        "skills": [],
                        "scoredAgents": [],
                    },
                    "mediaRoles": [],
                    "attributes": {},
                    key: acd_media,
                },
                {
                    "id": self.participants[2],
                    "connectedTime": connected,
                    "userId": user,
                    "name": "Agent",
                    "queueId": queue,
                    "purpose": "agent",
                    "wrapupRequired": true,
                    "wrapupExpected": true,
                    "alertingTimeoutMs": 8000,
                    "conversationRoutingData": {
                        "queue": { "id": queue },
                        "priority": 0,
                        "skills": [],
                        "scoredAgents": [{ "agent": { "id": user }, "score": 100 }],
                    },
                    "mediaRoles": [],
                    "attributes": {},
                    key: agent_media,
                }
            ],
            "recordingState": "none",
            "securePause": false,
            "recentTransfers": [],
            "divisions": [{
                "division": { "id": division, "selfUri": format!("/api/v2/authorization/divisions/{division}") },
                "entities": [{ "id": queue, "selfUri": format!("/api/v2/routing/queues/{queue}") }],
            }],
        });
        if let (Some(end), Some(ps)) = (&end, body["participants"].as_array_mut()) {
            for i in [0, 2] {
                if let Some(p) = ps.get_mut(i).and_then(Value::as_object_mut) {
                    p.insert("endTime".into(), json!(end));
                }
            }
        }
        body
    }

    /// When it started connecting: an end must come after it.
    pub(crate) fn connected(&self) -> SystemTime {
        self.connected
    }
}

fn detail<R: Rng>(rng: &mut R, pools: &Pools<'_>, d: Detail, conv: &str, now: SystemTime) -> Value {
    let user = pick_id(rng, pools.user_ids);
    let queue = pick_id(rng, pools.queue_ids);
    let ani = format!("tel:{}", phone(rng));
    let dnis = "tel:+13175550000";
    let mut v = json!({
        "eventTime": epoch_ms(now),
        "conversationId": conv,
        "participantId": uuid(),
        "sessionId": uuid(),
        "mediaType": "VOICE",
        "provider": "Edge",
        "direction": "INBOUND",
        "ani": ani,
        "dnis": dnis,
        "conversationExternalContactIds": [],
        "conversationExternalOrganizationIds": [],
    });
    let extra = match d {
        Detail::AcdStart => json!({
            "addressTo": dnis, "addressFrom": ani, "queueId": queue, "divisionId": pools.org_id,
            "routingPriority": 0, "requestedRoutingSkillIds": [], "skillExpressionApplied": false,
        }),
        Detail::AcdEnd => json!({
            "addressTo": dnis, "addressFrom": ani, "queueId": queue, "divisionId": pools.org_id,
            "disconnectType": "TRANSFER", "acdOutcome": "ANSWERED", "answeredUserId": user,
            "requestedRoutings": ["Standard"], "usedRouting": "STANDARD",
            "requestedRoutingSkillIds": [], "requestedRoutingUserIds": [], "routingPriority": 0,
            "connectedDurationMs": rng.random_range(1_000..60_000),
        }),
        Detail::Acw => json!({
            "addressTo": dnis, "addressFrom": ani, "userId": user, "queueId": queue,
            "wrapupCode": uuid(), "wrapupNotes": "", "wrapupDurationMs": rng.random_range(1_000..30_000),
        }),
        Detail::Attributes => {
            // This model has no session, media or address fields.
            return json!({
                "eventTime": epoch_ms(now),
                "conversationId": conv,
                "participantId": uuid(),
                "attributes": { "account": format!("{}", rng.random_range(1_000..9_999)) },
                "conversationExternalContactIds": [],
                "conversationExternalOrganizationIds": [],
                "communications": [{ "id": uuid(), "mediaType": "VOICE" }],
                "participantStartTime": epoch_ms(now - Duration::from_secs(60)),
            });
        }
        Detail::CustomerStart => json!({
            "addressTo": dnis, "addressFrom": ani, "divisionId": pools.org_id,
        }),
        Detail::CustomerEnd => json!({
            "addressTo": dnis, "addressFrom": ani, "divisionId": pools.org_id,
            "disconnectType": "ENDPOINT", "interactingDurationMs": rng.random_range(10_000..600_000),
        }),
        Detail::FlowStart => json!({
            "addressTo": dnis, "addressFrom": ani, "flowType": "INBOUNDCALL", "flowId": uuid(),
            "divisionId": pools.org_id, "flowVersion": "3.0",
        }),
        Detail::FlowEnd => json!({
            "addressTo": dnis, "addressFrom": ani, "flowType": "INBOUNDCALL", "flowId": uuid(),
            "divisionId": pools.org_id, "flowVersion": "3.0", "disconnectType": "TRANSFER",
            "connectedDurationMs": rng.random_range(1_000..60_000), "exitReason": "TRANSFER", "transferType": "ACD",
        }),
        Detail::Outbound => {
            let mut o = json!({
                "addressTo": ani, "addressFrom": dnis, "outboundCampaignId": uuid(), "divisionId": pools.org_id,
                "outboundContactListId": uuid(), "outboundContactId": uuid(),
            });
            if let Some(m) = o.as_object_mut() {
                m.insert("direction".into(), json!("OUTBOUND"));
            }
            o
        }
        Detail::UserStart => json!({
            "addressTo": dnis, "addressFrom": ani, "userId": user, "divisionId": pools.org_id, "queueId": queue,
        }),
        Detail::UserEnd => json!({
            "addressTo": dnis, "addressFrom": ani, "userId": user, "divisionId": pools.org_id, "queueId": queue,
            "disconnectType": "CLIENT", "interactingDurationMs": rng.random_range(10_000..600_000),
            "heldDurationMs": 0, "alertingDurationMs": rng.random_range(1_000..8_000),
            "contactingDurationMs": 0, "dialingDurationMs": 0, "callbackDurationMs": 0,
        }),
        Detail::VoicemailStart => json!({
            "userId": user, "queueId": queue, "divisionId": pools.org_id,
        }),
        Detail::VoicemailEnd => json!({
            "userId": user, "queueId": queue, "divisionId": pools.org_id,
            "disconnectType": "ENDPOINT", "voicemailDurationMs": rng.random_range(5_000..60_000),
        }),
    };
    if let (Some(base), Value::Object(extra)) = (v.as_object_mut(), extra) {
        base.extend(extra);
    }
    v
}

fn observations<R: Rng>(rng: &mut R, queue: &str, now: SystemTime) -> Value {
    let waiting = rng.random_range(0..20u32);
    let interacting = rng.random_range(0..30u32);
    let observations: Vec<Value> = (0..waiting.min(3))
        .map(|i| {
            json!({
                "observationDate": rfc3339(now - Duration::from_secs(30 * u64::from(i + 1))),
                "conversationId": uuid(),
                "sessionId": uuid(),
                "requestedRoutingSkillIds": [],
                "routingPriority": 0,
                "direction": "inbound",
                "addressFrom": "tel:+13175551234",
                "addressTo": "tel:+13175550000",
                "ani": "tel:+13175551234",
                "dnis": "tel:+13175550000",
                "requestedRoutings": ["Standard"],
                "usedRouting": "Standard",
            })
        })
        .collect();
    json!({
        "group": { "queueId": queue, "mediaType": "voice" },
        "data": [
            { "metric": "oWaiting", "stats": { "count": waiting }, "truncated": false, "observations": observations },
            { "metric": "oInteracting", "stats": { "count": interacting } },
            { "metric": "oAlerting", "stats": { "count": rng.random_range(0..5u32) } },
            { "metric": "oOnQueueUsers", "qualifier": "IDLE", "stats": { "count": rng.random_range(0..10u32) } },
            { "metric": "oServiceLevel", "stats": { "ratio": 0.8, "numerator": 8.0, "denominator": 10.0, "target": 0.8 } },
        ],
    })
}

fn metrics<R: Rng>(rng: &mut R, pools: &Pools<'_>, conv: &str, now: SystemTime) -> Value {
    let metric = pick(
        rng,
        &[
            "tAcd",
            "tAlert",
            "tAnswered",
            "tHandle",
            "tTalk",
            "tAcw",
            "nConnected",
            "nOffered",
        ],
    );
    let value: u64 = if metric.starts_with('n') {
        1
    } else {
        rng.random_range(1_000..300_000)
    };
    json!({
        "metric": metric,
        "metricDate": rfc3339(now),
        "value": value,
        "recordId": uuid(),
        "conversationId": conv,
        "sessionId": uuid(),
        "participantName": "Support",
        "mediaType": "voice",
        "direction": "inbound",
        "originatingDirection": "inbound",
        "purpose": "acd",
        "queueId": pick_id(rng, pools.queue_ids),
        "userId": pick_id(rng, pools.user_ids),
        "divisionIds": [pools.org_id],
        "requestedRoutings": ["Standard"],
        "usedRouting": "Standard",
        "mediaCount": 1,
        "provider": "Edge",
        "ani": "tel:+13175551234",
        "dnis": "tel:+13175550000",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::CATALOGUE;

    #[test]
    fn every_template_gets_an_object_body() {
        let users = vec!["u1".to_string()];
        let queues = vec!["q1".to_string()];
        let pools = Pools {
            org_id: "org",
            user_ids: &users,
            queue_ids: &queues,
        };
        let mut rng = rand::rng();
        for t in CATALOGUE {
            let topic = t.id.replace("{id}", "x1");
            let body = for_topic(&mut rng, &pools, &topic);
            assert!(body.is_object(), "{topic}");
            assert!(body.get("emulatorSequence").is_none());
        }
        let b = for_topic(&mut rng, &pools, "v2.users.u9.routingStatus");
        assert_eq!(b["id"], "u9");
        let b = for_topic(
            &mut rng,
            &pools,
            "v2.detail.events.conversation.c7.acd.start",
        );
        assert_eq!(b["conversationId"], "c7");
        assert!(b["eventTime"].is_u64());
        let b = for_topic(&mut rng, &pools, "v2.routing.queues.q7.conversations.calls");
        assert!(b["participants"][0]["calls"].is_array());
        assert_eq!(b["participants"][1]["queueId"], "q7");
    }
}
