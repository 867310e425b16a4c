//! The current state ("the truth") that Genesys serves over REST and that a
//! client reads after a gap: each directory user's presence and routing
//! status, and the conversations the queue and user conversation topics
//! have shown.
//!
//! The truth is derived from the events only: a frame built for
//! publishing carries an [`Update`] taken from its body (outside any lock),
//! and the publisher applies it under the state lock, in the same step that
//! gives the event its sequence number and hands it to the sockets. So the
//! truth at any moment equals the body of the last event published for that
//! user and topic. Timestamps (`modifiedDate`, `routingStatus.startTime`)
//! strictly increase per user and topic: a body whose time is not after the
//! previous one's is moved to 1 ms after it, and published that way.
//!
//! Users come and go with the directory (every state, not only active
//! users); events naming no directory user change nothing. Conversations
//! are kept up to `Config::max_conversations`; past that, the one that
//! ended first goes, or, when none has ended, the oldest.
//!
//! The REST shapes (`UcUserPresence`, `UserPresence`, `RoutingStatus`) are
//! rendered here; the analytics query lives in `analytics.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use crate::bodies::presence_id;
use crate::time::{epoch_ms, rfc3339, ser_opt_time, ser_time};
use crate::topics::{match_topic, BodyKind};

/// `sourceId` of the Genesys Cloud presence source in presence replies.
/// Genesys does not document the value; this is the emulator's constant.
pub const PURECLOUD_SOURCE_ID: &str = "e1b0ac4c-1d1d-4b7a-9b1a-6b2c0f3c0001";
/// System presence of a user nobody has published a presence for.
pub const INITIAL_PRESENCE: &str = "Offline";
/// Routing status of a user nobody has published a routing status for.
pub const INITIAL_ROUTING_STATUS: &str = "OFF_QUEUE";
/// Default of `Config::max_conversations`.
pub const DEFAULT_MAX_CONVERSATIONS: usize = 10_000;

/// A user's presence now, as the last `v2.users.{id}.presence` event showed
/// it (or the initial `Offline`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceState {
    /// The user.
    pub user_id: String,
    /// `presenceDefinition.systemPresence` (`Available`, `On Queue`, ...).
    pub system_presence: String,
    /// `presenceDefinition.id`.
    pub presence_definition_id: String,
    /// `message` (empty when the body had none).
    pub message: String,
    /// `modifiedDate`, as published (millisecond precision).
    #[serde(serialize_with = "ser_time")]
    pub modified_date: SystemTime,
    /// Sequence of the event that set it; `None` for the initial state.
    pub seq: Option<u64>,
}

/// A user's routing status now, as the last `v2.users.{id}.routingStatus`
/// event showed it (or the initial `OFF_QUEUE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingState {
    /// The user.
    pub user_id: String,
    /// `routingStatus.status` (`OFF_QUEUE`, `IDLE`, `INTERACTING`, ...).
    pub status: String,
    /// `routingStatus.startTime`, as published (millisecond precision).
    #[serde(serialize_with = "ser_time")]
    pub start_time: SystemTime,
    /// Sequence of the event that set it; `None` for the initial state.
    pub seq: Option<u64>,
}

/// Both states of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCurrentState {
    /// The user.
    pub user_id: String,
    /// Presence now.
    pub presence: PresenceState,
    /// Routing status now.
    pub routing_status: RoutingState,
}

/// One participant of a conversation, from the last event that showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantState {
    /// Participant id.
    pub id: String,
    /// `customer`, `acd`, `agent` ...
    pub purpose: String,
    /// The agent's user id.
    pub user_id: Option<String>,
    /// The queue of an ACD or agent leg.
    pub queue_id: Option<String>,
    /// Analytics media type (`voice`, `callback`, `chat`, `email`,
    /// `message`), from the participant's media list.
    pub media_type: Option<String>,
    /// `connectedTime`.
    #[serde(serialize_with = "ser_opt_time")]
    pub start: Option<SystemTime>,
    /// `endTime` (or the media's `disconnectedTime`).
    #[serde(serialize_with = "ser_opt_time")]
    pub end: Option<SystemTime>,
}

/// A conversation as the conversation events showed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationState {
    /// Conversation id (the body's `id`).
    pub id: String,
    /// The earliest participant `connectedTime` seen for it.
    #[serde(serialize_with = "ser_time")]
    pub start: SystemTime,
    /// Set once an event showed every participant ended: the latest end.
    #[serde(serialize_with = "ser_opt_time")]
    pub end: Option<SystemTime>,
    /// The participants of the last event.
    pub participants: Vec<ParticipantState>,
    /// The last event's body (without `emulatorSequence`).
    pub last_body: Value,
    /// Sequence of the last event.
    pub last_seq: u64,
}

impl ConversationState {
    /// Whether a participant of it is on `queue_id`.
    pub fn has_queue(&self, queue_id: &str) -> bool {
        self.participants
            .iter()
            .any(|p| p.queue_id.as_deref() == Some(queue_id))
    }

    /// Whether `user_id` is a participant of it.
    pub fn has_user(&self, user_id: &str) -> bool {
        self.participants
            .iter()
            .any(|p| p.user_id.as_deref() == Some(user_id))
    }
}

// ---- updates, taken from bodies outside the lock ---------------------------

/// What one published body changes in the truth.
#[derive(Debug, Clone)]
pub(crate) enum Update {
    Presence(TimedUpdate),
    Routing(TimedUpdate),
    Conversation(ConversationUpdate),
}

/// A presence or routing-status body and its fields.
#[derive(Debug, Clone)]
pub(crate) struct TimedUpdate {
    user: String,
    /// `systemPresence` or `status`.
    value: String,
    /// Presence only: `presenceDefinition.id` and `message`.
    definition_id: String,
    message: String,
    /// The body's time, truncated to the millisecond.
    at: SystemTime,
    /// Its text as the body has it, to know whether publishing must
    /// rewrite it.
    at_text: String,
    /// Kept to re-serialize the body when its time must move.
    body: Arc<Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct ConversationUpdate {
    id: String,
    start: Option<SystemTime>,
    end: Option<SystemTime>,
    /// Shared with the record: applying under the lock copies no strings.
    participants: Arc<[ParticipantState]>,
    body: Arc<str>,
}

fn parse_time(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.as_str()?).ok()
}

fn to_ms(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(epoch_ms(t))
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// The media list keys of conversation participants and their analytics
/// media types.
const MEDIA_KEYS: &[(&str, &str)] = &[
    ("calls", "voice"),
    ("callbacks", "callback"),
    ("chats", "chat"),
    ("emails", "email"),
    ("messages", "message"),
];

/// The truth update a body published on `topic` makes, if any. `text` is
/// `body` serialized (conversations keep it as their last body).
pub(crate) fn extract(topic: &str, body: &Value, text: &str) -> Option<Update> {
    let (template, ids) = match_topic(topic)?;
    extract_kind(template.kind, ids.first()?, body, text)
}

/// As [`extract`], for a topic already matched: its body kind and id.
pub(crate) fn extract_kind(kind: BodyKind, id: &str, body: &Value, text: &str) -> Option<Update> {
    match kind {
        BodyKind::Presence => {
            let def = body.get("presenceDefinition")?;
            let at_text = body.get("modifiedDate")?.as_str()?.to_owned();
            Some(Update::Presence(TimedUpdate {
                user: id.to_owned(),
                value: opt_str(def.get("systemPresence")?)?,
                definition_id: def.get("id").and_then(opt_str).unwrap_or_default(),
                message: body.get("message").and_then(opt_str).unwrap_or_default(),
                at: to_ms(humantime::parse_rfc3339_weak(&at_text).ok()?),
                at_text,
                body: Arc::new(body.clone()),
            }))
        }
        BodyKind::RoutingStatus => {
            let rs = body.get("routingStatus")?;
            let at_text = rs.get("startTime")?.as_str()?.to_owned();
            Some(Update::Routing(TimedUpdate {
                user: id.to_owned(),
                value: opt_str(rs.get("status")?)?,
                definition_id: String::new(),
                message: String::new(),
                at: to_ms(humantime::parse_rfc3339_weak(&at_text).ok()?),
                at_text,
                body: Arc::new(body.clone()),
            }))
        }
        BodyKind::UserConversation(_) | BodyKind::QueueConversation(_) => {
            conversation_update(body, text).map(Update::Conversation)
        }
        _ => None,
    }
}

fn conversation_update(body: &Value, text: &str) -> Option<ConversationUpdate> {
    let id = opt_str(body.get("id")?)?;
    let participants: Vec<ParticipantState> = body
        .get("participants")?
        .as_array()?
        .iter()
        .filter_map(participant)
        .collect();
    let start = participants.iter().filter_map(|p| p.start).min();
    let ended = !participants.is_empty() && participants.iter().all(|p| p.end.is_some());
    let end = if ended {
        participants.iter().filter_map(|p| p.end).max()
    } else {
        None
    };
    Some(ConversationUpdate {
        id,
        start,
        end,
        participants: participants.into(),
        body: Arc::from(text),
    })
}

fn participant(p: &Value) -> Option<ParticipantState> {
    let (media_type, sessions) = MEDIA_KEYS
        .iter()
        .find_map(|(key, media)| Some((Some((*media).to_owned()), p.get(*key)?.as_array()?)))
        .unwrap_or((None, &EMPTY));
    // A participant without `endTime` whose sessions all disconnected has
    // ended too, when the last of them did.
    let disconnected = !sessions.is_empty()
        && sessions.iter().all(|s| {
            matches!(
                s.get("state").and_then(Value::as_str),
                Some("disconnected" | "terminated")
            )
        });
    let end = p.get("endTime").and_then(parse_time).or_else(|| {
        disconnected
            .then(|| {
                sessions
                    .iter()
                    .filter_map(|s| s.get("disconnectedTime").and_then(parse_time))
                    .max()
            })
            .flatten()
    });
    Some(ParticipantState {
        id: opt_str(p.get("id")?)?,
        purpose: p.get("purpose").and_then(opt_str).unwrap_or_default(),
        user_id: p.get("userId").and_then(opt_str),
        queue_id: p.get("queueId").and_then(opt_str),
        media_type,
        start: p.get("connectedTime").and_then(parse_time),
        end,
    })
}

static EMPTY: Vec<Value> = Vec::new();

// ---- the truth --------------------------------------------------------------

/// Every user's states and the conversations. See the module docs.
pub(crate) struct Truth {
    users: HashMap<String, UserCurrentState>,
    conversations: Conversations,
}

impl Default for Truth {
    fn default() -> Self {
        Truth::new(DEFAULT_MAX_CONVERSATIONS)
    }
}

impl Truth {
    pub(crate) fn new(max_conversations: usize) -> Truth {
        Truth {
            users: HashMap::new(),
            conversations: Conversations::new(max_conversations),
        }
    }

    /// A user joins the directory: `Offline` and `OFF_QUEUE` since `now`.
    pub(crate) fn add_user(&mut self, id: &str, now: SystemTime) {
        let now = to_ms(now);
        self.users.insert(
            id.to_owned(),
            UserCurrentState {
                user_id: id.to_owned(),
                presence: PresenceState {
                    user_id: id.to_owned(),
                    system_presence: INITIAL_PRESENCE.to_owned(),
                    presence_definition_id: presence_id(INITIAL_PRESENCE),
                    message: String::new(),
                    modified_date: now,
                    seq: None,
                },
                routing_status: RoutingState {
                    user_id: id.to_owned(),
                    status: INITIAL_ROUTING_STATUS.to_owned(),
                    start_time: now,
                    seq: None,
                },
            },
        );
    }

    pub(crate) fn remove_user(&mut self, id: &str) {
        self.users.remove(id);
    }

    pub(crate) fn user(&self, id: &str) -> Option<&UserCurrentState> {
        self.users.get(id)
    }

    /// Every user's states, by user id.
    pub(crate) fn users(&self) -> BTreeMap<String, UserCurrentState> {
        self.users
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Applies the update of event `seq`. Returns the body to publish
    /// instead when its time had to move forward.
    pub(crate) fn apply(&mut self, update: &Update, seq: u64, wall: SystemTime) -> Option<Value> {
        match update {
            Update::Presence(u) => {
                let user = self.users.get_mut(&u.user)?;
                let p = &mut user.presence;
                let at = later(u.at, p.modified_date);
                p.system_presence.clone_from(&u.value);
                p.presence_definition_id.clone_from(&u.definition_id);
                p.message.clone_from(&u.message);
                p.modified_date = at;
                p.seq = Some(seq);
                retimed(u, at, &["modifiedDate"])
            }
            Update::Routing(u) => {
                let user = self.users.get_mut(&u.user)?;
                let r = &mut user.routing_status;
                let at = later(u.at, r.start_time);
                r.status.clone_from(&u.value);
                r.start_time = at;
                r.seq = Some(seq);
                retimed(u, at, &["routingStatus", "startTime"])
            }
            Update::Conversation(u) => {
                self.conversations.apply(u, seq, wall);
                None
            }
        }
    }

    pub(crate) fn conversation(&self, id: &str) -> Option<ConversationState> {
        self.conversations.by_id.get(id).map(Record::state)
    }

    /// Conversations `keep` selects, oldest first.
    pub(crate) fn conversations(&self, keep: impl Fn(&Record) -> bool) -> Vec<ConversationState> {
        self.records()
            .filter(|r| keep(r))
            .map(Record::state)
            .collect()
    }

    /// Every conversation record, in the order they were first seen.
    pub(crate) fn records(&self) -> impl Iterator<Item = &Record> {
        self.conversations
            .order
            .values()
            .filter_map(|id| self.conversations.by_id.get(id))
    }

    pub(crate) fn conversation_count(&self) -> usize {
        self.conversations.by_id.len()
    }
}

/// `at`, or 1 ms after `last` when `at` is not after it.
fn later(at: SystemTime, last: SystemTime) -> SystemTime {
    if at > last {
        at
    } else {
        last + Duration::from_millis(1)
    }
}

/// The body with its time set to `at`, when that changes its text.
fn retimed(u: &TimedUpdate, at: SystemTime, path: &[&str]) -> Option<Value> {
    let text = rfc3339(at);
    if text == u.at_text {
        return None;
    }
    let mut body = (*u.body).clone();
    let (last, parents) = path.split_last()?;
    let mut node = &mut body;
    for p in parents {
        node = node.get_mut(*p)?;
    }
    node.as_object_mut()?
        .insert((*last).to_owned(), json!(text));
    Some(body)
}

/// One conversation as kept.
pub(crate) struct Record {
    ord: u64,
    pub id: String,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub participants: Arc<[ParticipantState]>,
    last_body: Arc<str>,
    last_seq: u64,
}

impl Record {
    fn state(&self) -> ConversationState {
        ConversationState {
            id: self.id.clone(),
            start: self.start,
            end: self.end,
            participants: self.participants.to_vec(),
            last_body: serde_json::from_str(&self.last_body).unwrap_or(Value::Null),
            last_seq: self.last_seq,
        }
    }
}

/// Conversations by id, bounded.
struct Conversations {
    max: usize,
    by_id: HashMap<String, Record>,
    /// First-seen order -> id: the oldest goes first when none has ended.
    order: BTreeMap<u64, String>,
    /// (end, first-seen order) of ended ones: the first to end goes first.
    ended: BTreeSet<(SystemTime, u64)>,
    next: u64,
}

impl Conversations {
    fn new(max: usize) -> Conversations {
        Conversations {
            max: max.max(1),
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            ended: BTreeSet::new(),
            next: 0,
        }
    }

    fn apply(&mut self, u: &ConversationUpdate, seq: u64, wall: SystemTime) {
        if let Some(r) = self.by_id.get_mut(&u.id) {
            if let Some(end) = r.end {
                self.ended.remove(&(end, r.ord));
            }
            r.start = u.start.map_or(r.start, |s| s.min(r.start));
            r.end = u.end;
            r.participants = u.participants.clone();
            r.last_body = u.body.clone();
            r.last_seq = seq;
            if let Some(end) = r.end {
                self.ended.insert((end, r.ord));
            }
            return;
        }
        while self.by_id.len() >= self.max {
            self.evict();
        }
        let ord = self.next;
        self.next += 1;
        if let Some(end) = u.end {
            self.ended.insert((end, ord));
        }
        self.order.insert(ord, u.id.clone());
        self.by_id.insert(
            u.id.clone(),
            Record {
                ord,
                id: u.id.clone(),
                start: u.start.unwrap_or(wall),
                end: u.end,
                participants: u.participants.clone(),
                last_body: u.body.clone(),
                last_seq: seq,
            },
        );
    }

    fn evict(&mut self) {
        let ord = match self.ended.pop_first() {
            Some((_, ord)) => ord,
            None => match self.order.keys().next() {
                Some(&ord) => ord,
                None => return,
            },
        };
        if let Some(id) = self.order.remove(&ord) {
            if let Some(r) = self.by_id.remove(&id) {
                if let Some(end) = r.end {
                    self.ended.remove(&(end, r.ord));
                }
            }
        }
    }
}

// ---- REST shapes ------------------------------------------------------------

fn presence_definition(p: &PresenceState) -> Value {
    json!({ "id": p.presence_definition_id, "systemPresence": p.system_presence })
}

/// One entry of `GET /api/v2/users/presences/purecloud/bulk`
/// (`UcUserPresence`).
pub(crate) fn uc_user_presence_json(p: &PresenceState) -> Value {
    json!({
        "id": p.user_id,
        "userId": p.user_id,
        "source": "PURECLOUD",
        "sourceId": PURECLOUD_SOURCE_ID,
        "presenceDefinition": presence_definition(p),
        "message": p.message,
        "modifiedDate": rfc3339(p.modified_date),
        "selfUri": format!("/api/v2/users/{}/presences/purecloud", p.user_id),
    })
}

/// `GET /api/v2/users/{userId}/presences/purecloud` (`UserPresence`).
pub(crate) fn user_presence_json(p: &PresenceState) -> Value {
    json!({
        "id": p.user_id,
        "source": "PURECLOUD",
        "sourceId": PURECLOUD_SOURCE_ID,
        "primary": true,
        "presenceDefinition": presence_definition(p),
        "message": p.message,
        "modifiedDate": rfc3339(p.modified_date),
        "selfUri": format!("/api/v2/users/{}/presences/purecloud", p.user_id),
    })
}

/// `GET /api/v2/users/{userId}/routingstatus` (`RoutingStatus`).
pub(crate) fn routing_status_json(r: &RoutingState) -> Value {
    json!({
        "userId": r.user_id,
        "status": r.status,
        "startTime": rfc3339(r.start_time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn presence_body(p: &str, t: SystemTime) -> Value {
        json!({
            "source": "PURECLOUD",
            "presenceDefinition": { "id": presence_id(p), "systemPresence": p },
            "message": "",
            "modifiedDate": rfc3339(t),
        })
    }

    fn update(topic: &str, body: &Value) -> Update {
        extract(topic, body, &body.to_string()).expect("an update")
    }

    #[test]
    fn presence_follows_events_and_times_strictly_increase() {
        let mut t = Truth::new(10);
        t.add_user("u1", at(1_000));
        let u = update("v2.users.u1.presence", &presence_body("Busy", at(5_000)));
        assert!(t.apply(&u, 1, at(5_000)).is_none(), "a later time stays");
        let p = &t.user("u1").expect("user").presence;
        assert_eq!((p.system_presence.as_str(), p.seq), ("Busy", Some(1)));
        assert_eq!(p.modified_date, at(5_000));
        // Same millisecond: moved 1 ms on, and the body says so.
        let u = update("v2.users.u1.presence", &presence_body("Away", at(5_000)));
        let body = t.apply(&u, 2, at(5_000)).expect("rewritten");
        assert_eq!(body["modifiedDate"], rfc3339(at(5_001)));
        assert_eq!(body["presenceDefinition"]["systemPresence"], "Away");
        assert_eq!(
            t.user("u1").expect("user").presence.modified_date,
            at(5_001)
        );
        // Unknown users change nothing.
        let u = update("v2.users.ghost.presence", &presence_body("Busy", at(9_000)));
        assert!(t.apply(&u, 3, at(9_000)).is_none());
        assert!(t.user("ghost").is_none());
    }

    #[test]
    fn routing_status_rewrites_the_nested_start_time() {
        let mut t = Truth::new(10);
        t.add_user("u1", at(1_000));
        let body = json!({ "id": "u1", "routingStatus": { "status": "IDLE", "startTime": rfc3339(at(1_000)) } });
        let out = t
            .apply(&update("v2.users.u1.routingStatus", &body), 7, at(1_000))
            .expect("rewritten");
        assert_eq!(out["routingStatus"]["startTime"], rfc3339(at(1_001)));
        let r = &t.user("u1").expect("user").routing_status;
        assert_eq!((r.status.as_str(), r.start_time), ("IDLE", at(1_001)));
        // Bodies without the fields are not updates.
        let partial = json!({ "id": "u1", "routingStatus": { "status": "IDLE" } });
        assert!(extract("v2.users.u1.routingStatus", &partial, "").is_none());
    }

    fn conversation(id: &str, queue: &str, end: Option<u64>) -> Value {
        let end = end.map(|e| rfc3339(at(e)));
        json!({
            "id": id,
            "participants": [
                { "id": "p1", "purpose": "customer", "connectedTime": rfc3339(at(100)), "endTime": end,
                  "calls": [{ "state": "connected" }] },
                { "id": "p2", "purpose": "agent", "userId": "u1", "queueId": queue,
                  "connectedTime": rfc3339(at(200)), "endTime": end, "calls": [{ "state": "connected" }] },
            ],
        })
    }

    #[test]
    fn conversations_start_end_and_evict_ended_first() {
        let mut t = Truth::new(2);
        let topic = "v2.routing.queues.q1.conversations";
        t.apply(&update(topic, &conversation("c1", "q1", None)), 1, at(300));
        t.apply(
            &update(topic, &conversation("c2", "q1", Some(900))),
            2,
            at(900),
        );
        let c1 = t.conversation("c1").expect("c1");
        assert_eq!((c1.start, c1.end), (at(100), None));
        assert_eq!(c1.participants[1].media_type.as_deref(), Some("voice"));
        assert!(c1.has_queue("q1") && c1.has_user("u1"));
        assert_eq!(t.conversation("c2").expect("c2").end, Some(at(900)));
        // A third one evicts the ended c2, not the older open c1.
        t.apply(&update(topic, &conversation("c3", "q1", None)), 3, at(950));
        assert!(t.conversation("c2").is_none());
        assert!(t.conversation("c1").is_some());
        // c1 ends; a fourth evicts it (the only ended one).
        t.apply(
            &update(topic, &conversation("c1", "q1", Some(990))),
            4,
            at(990),
        );
        assert_eq!(t.conversation("c1").expect("c1").last_seq, 4);
        t.apply(&update(topic, &conversation("c4", "q1", None)), 5, at(995));
        assert!(t.conversation("c1").is_none());
        // None ended: the oldest goes.
        t.apply(&update(topic, &conversation("c5", "q1", None)), 6, at(999));
        assert!(t.conversation("c3").is_none());
        assert_eq!(t.conversation_count(), 2);
    }
}
