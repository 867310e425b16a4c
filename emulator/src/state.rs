//! The emulated service's state and every rule that changes it: tokens,
//! channels (lifetime, the per-client limit, death), subscriptions (limits,
//! forbidden and invalid topics, combined topics, exclusive mode), sockets
//! attached to channels, publishing, and the per-topic coverage record. It
//! holds the directory (`directory.rs` has its rules) and the truth
//! (`truth.rs`), which publishing updates.
//!
//! One mutex guards [`State`]; the event log has its own so that socket
//! writers can record deliveries without touching the state. Lock order is
//! always state, then log.
//!
//! "Healthy" means: the channel is alive, a socket is attached and that
//! socket is not stalled. A channel's health is cached in `counted_healthy`
//! and every change goes through [`State::refresh_health`], which is what
//! keeps the per-topic healthy counts, and so the coverage gaps, exact.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_error::ApiError;
use crate::config::Config;
use crate::directory::Directory;
use crate::faults::{FailPlan, Malformed, Target};
use crate::limit::SlidingWindow;
use crate::records::{
    ChannelInfo, DeathReason, DisconnectReason, EventLog, Gap, RequestLog, SocketRecord,
};
use crate::time::rfc3339;
use crate::topics::{expand, glob, is_subscribable, match_topic, BodyKind};
use crate::truth::{self, Truth, Update};

/// Locks a mutex; a panic elsewhere must not take the emulator down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A v4 UUID from the thread-local RNG (no system call per id).
pub(crate) fn fast_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Something for a socket's writer to send, in order.
#[derive(Debug)]
pub(crate) enum Out {
    /// A published event: recorded as delivered once written and flushed.
    Event { seq: u64, text: Utf8Bytes },
    /// A system frame (not an event).
    System(Utf8Bytes),
}

/// Commands from faults and from the state to one socket task.
#[derive(Debug)]
pub(crate) enum Control {
    /// End TCP without a close frame.
    Drop,
    /// Another socket took the channel: close this one.
    Kick,
    /// Send `socket_closing`, then close after `grace`.
    Closing { grace: Duration, frame: Utf8Bytes },
    /// Write a broken frame.
    Malformed(Malformed),
    /// The queue overflowed: end TCP without a close frame.
    SlowConsumer,
}

/// Everything the tasks and handlers share.
pub(crate) struct Shared {
    pub config: Config,
    pub state: Mutex<State>,
    pub log: Mutex<EventLog>,
    pub requests: Mutex<RequestLog>,
    pub faults: Mutex<FailPlan>,
    /// The org REST rate limit, when the config sets one.
    pub rest_limit: Option<Mutex<SlidingWindow>>,
    /// Frames queued to sockets and not yet written or discarded.
    pub in_flight: AtomicU64,
    /// WebSocket connections open now (any channel, dead ones included).
    pub open_sockets: AtomicUsize,
    pub rate: watch::Sender<f64>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    /// `http://host:port`.
    pub base_url: String,
    /// `ws://host:port`.
    pub ws_base: String,
    /// Conversation ids for sample topics of conversation-scoped templates.
    pub conversation_ids: Vec<String>,
    pub local_addr: std::net::SocketAddr,
}

impl Shared {
    /// Records that `seqs` were written and flushed to channel `num`.
    pub(crate) fn mark_delivered(&self, num: u32, seqs: &[u64]) {
        if !seqs.is_empty() {
            lock(&self.log).mark(num, seqs);
        }
    }

    /// Publishes prepared frames, all under one lock, and returns their
    /// sequence numbers. With `fence`, publishes nothing if the generator
    /// rate or the directory changed since the batch was built.
    pub(crate) fn publish_prepared<P: Borrow<Prepared>>(
        &self,
        frames: Vec<P>,
        fence: Option<Fence>,
    ) -> Vec<u64> {
        let mut st = lock(&self.state);
        if fence.is_some_and(|f| f != st.fence()) {
            return Vec::new();
        }
        let mut log = lock(&self.log);
        let wall = SystemTime::now();
        let mut seqs = Vec::with_capacity(frames.len());
        let mut overflow = Vec::new();
        for p in frames {
            let p = p.borrow();
            let seq = st.next_seq;
            st.next_seq += 1;
            // The truth moves in the same step as the sequence, so it always
            // equals the last published body; a body whose time had to move
            // forward is published as moved.
            let retimed = p.update.as_ref().and_then(|u| st.truth.apply(u, seq, wall));
            let text = match retimed {
                Some(body) => {
                    Utf8Bytes::from(Prepared::new(&p.topic, &body.to_string()).assemble(seq))
                }
                None => Utf8Bytes::from(p.assemble(seq)),
            };
            let name = match st.topics.get(p.topic.as_str()) {
                Some(e) => e.name.clone(),
                None => Arc::from(p.topic.as_str()),
            };
            log.push(seq, name, wall);
            if let Some(entry) = st.topics.get(p.topic.as_str()) {
                for &num in &entry.subscribers {
                    let ch = &st.channels[num as usize];
                    if !ch.counted_healthy {
                        continue;
                    }
                    if let Some(slot) = &ch.socket {
                        match slot.out.try_send(Out::Event {
                            seq,
                            text: text.clone(),
                        }) {
                            Ok(()) => {
                                self.in_flight.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Full(_)) => overflow.push(num),
                            // The task is ending; it will detach itself.
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                }
            }
            seqs.push(seq);
            for num in overflow.drain(..) {
                st.detach(
                    num,
                    DisconnectReason::SlowConsumer,
                    Some(Control::SlowConsumer),
                );
            }
        }
        seqs
    }
}

/// What a generator batch was built for: the rate (its epoch) and the
/// directory (its version). A batch whose fence no longer holds is not
/// published, so no event is generated for a rate that was replaced or a
/// user who was removed once the change returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fence {
    pub rate_epoch: u64,
    pub directory: u64,
}

/// A frame built outside the lock; only the sequence number is missing.
pub(crate) struct Prepared {
    pub topic: String,
    head: String,
    tail: String,
    /// What publishing it changes in the truth (presence, routing status,
    /// conversations), taken from the body when it was built.
    update: Option<Update>,
}

impl Prepared {
    /// A frame for `body`, with the truth update it carries.
    pub(crate) fn from_value(topic: &str, body: &Value) -> Prepared {
        let text = body.to_string();
        let mut p = Prepared::new(topic, &text);
        p.update = truth::extract(topic, body, &text);
        p
    }

    /// As [`Prepared::from_value`] for a topic already matched to its body
    /// kind and id (the generator's case: no second template match).
    pub(crate) fn from_kind(topic: &str, kind: BodyKind, id: &str, body: &Value) -> Prepared {
        let text = body.to_string();
        let mut p = Prepared::new(topic, &text);
        p.update = truth::extract_kind(kind, id, body, &text);
        p
    }

    /// `body` must be serialized JSON; an object gets `emulatorSequence` as
    /// its first field, anything else is sent as it is.
    pub(crate) fn new(topic: &str, body: &str) -> Prepared {
        let topic_json = Value::String(topic.to_owned()).to_string();
        let corr = fast_uuid();
        let trailer = format!(",\"metadata\":{{\"CorrelationId\":\"{corr}\"}}}}");
        match body.trim_start().strip_prefix('{') {
            Some(rest) => {
                let sep = if rest.trim_start().starts_with('}') {
                    ""
                } else {
                    ","
                };
                Prepared {
                    topic: topic.to_owned(),
                    head: format!(
                        "{{\"topicName\":{topic_json},\"version\":\"2\",\"eventBody\":{{\"emulatorSequence\":"
                    ),
                    tail: format!("{sep}{rest}{trailer}"),
                    update: None,
                }
            }
            None => Prepared {
                topic: topic.to_owned(),
                head: String::new(),
                tail: format!(
                    "{{\"topicName\":{topic_json},\"version\":\"2\",\"eventBody\":{body}{trailer}"
                ),
                update: None,
            },
        }
    }

    pub(crate) fn assemble(&self, seq: u64) -> String {
        if self.head.is_empty() {
            return self.tail.clone();
        }
        let mut s = String::with_capacity(self.head.len() + self.tail.len() + 20);
        s.push_str(&self.head);
        s.push_str(&seq.to_string());
        s.push_str(&self.tail);
        s
    }
}

/// A non-event frame in the notification envelope.
pub(crate) fn system_frame(topic: &str, body: Value) -> Utf8Bytes {
    Utf8Bytes::from(
        json!({
            "topicName": topic,
            "version": "2",
            "eventBody": body,
            "metadata": { "CorrelationId": fast_uuid() },
        })
        .to_string(),
    )
}

#[derive(Debug)]
struct Token {
    id: u64,
    expires_at: Instant,
    revoked: bool,
}

/// One subscribed topic string and the single topics it stands for.
#[derive(Debug, Clone)]
pub(crate) struct SubEntry {
    pub id: String,
    /// `Some(prefix)` for a combined topic `prefix?a&b`.
    prefix: Option<String>,
    pub parts: Vec<Arc<str>>,
}

struct Slot {
    socket_id: u64,
    out: mpsc::Sender<Out>,
    control: mpsc::UnboundedSender<Control>,
    stalled: Arc<AtomicBool>,
}

struct Channel {
    id: String,
    token_id: u64,
    /// Copied from the token so that expiry works after the token is pruned.
    token_expires_at: Instant,
    created_at: SystemTime,
    expires_at: Instant,
    expires_wall: SystemTime,
    /// For the per-client limit: the least recently used channel goes first.
    last_used: Instant,
    entries: Vec<SubEntry>,
    /// Single topic -> how many entries hold it.
    refs: HashMap<Arc<str>, u32>,
    death: Option<(SystemTime, DeathReason)>,
    /// Shared with the socket task so that it goes silent at once.
    dead_flag: Arc<AtomicBool>,
    socket: Option<Slot>,
    counted_healthy: bool,
    history: Vec<SocketRecord>,
}

impl Channel {
    fn alive(&self) -> bool {
        self.death.is_none()
    }

    fn healthy(&self) -> bool {
        self.alive()
            && self
                .socket
                .as_ref()
                .is_some_and(|s| !s.stalled.load(Ordering::Relaxed))
    }

    fn history_mut(&mut self, socket_id: u64) -> Option<&mut SocketRecord> {
        self.history.iter_mut().find(|h| h.socket_id == socket_id)
    }
}

#[derive(Debug)]
struct TopicEntry {
    name: Arc<str>,
    /// Channels (alive) subscribed to this topic.
    subscribers: Vec<u32>,
    /// How many of them are healthy.
    healthy: u32,
    ever_covered: bool,
    gaps: Vec<Gap>,
}

/// A channel as the REST API shows it.
#[derive(Debug, Clone)]
pub(crate) struct ChannelView {
    pub id: String,
    pub connect_uri: String,
    pub expires: SystemTime,
    /// Belongs to the token that asked.
    pub own: bool,
}

/// One entry of a subscriptions reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicState {
    pub id: String,
    pub rejection: Option<(String, Vec<String>)>,
}

/// What a socket connection gets.
pub(crate) enum Attach {
    Live(SocketParts),
    /// Unknown or dead channel: the socket answers 404 to every message.
    Dead {
        num: Option<u32>,
        socket_id: u64,
    },
}

/// The receiving ends handed to a new socket task.
pub(crate) struct SocketParts {
    pub num: u32,
    pub socket_id: u64,
    pub channel_id: String,
    pub out_rx: mpsc::Receiver<Out>,
    pub control_rx: mpsc::UnboundedReceiver<Control>,
    pub stalled: Arc<AtomicBool>,
    pub dead: Arc<AtomicBool>,
}

/// How a subscription request asks to change the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubOp {
    Add,
    Replace,
}

/// The verdict on the topics of one subscription request.
struct Judged {
    accepted: Vec<SubEntry>,
    rejected: Vec<TopicState>,
    first_forbidden: Option<String>,
    first_invalid: Option<String>,
}

/// The emulated service's state. See the module docs.
#[derive(Default)]
pub(crate) struct State {
    tokens: HashMap<String, Token>,
    next_token_id: u64,
    channels: Vec<Channel>,
    by_id: HashMap<String, u32>,
    /// Channel number -> id, for materializing event records.
    pub names: Vec<String>,
    topics: HashMap<Arc<str>, TopicEntry>,
    /// Bumped on every change of the set of subscribed topics.
    pub sub_version: u64,
    pub next_seq: u64,
    next_socket_id: u64,
    /// Bumped by every rate change; a generator batch built under an older
    /// epoch is discarded.
    pub rate_epoch: u64,
    /// Users, queues and memberships; under this lock so that a change and
    /// the generator's fence move together.
    pub directory: Directory,
    /// Presence, routing status and conversations now; under this lock so
    /// that publishing and the truth move together.
    pub truth: Truth,
}

impl State {
    pub(crate) fn new() -> Self {
        State {
            next_seq: 1,
            next_token_id: 1,
            next_socket_id: 1,
            ..State::default()
        }
    }

    /// The fence a generator batch built now must carry.
    pub(crate) fn fence(&self) -> Fence {
        Fence {
            rate_epoch: self.rate_epoch,
            directory: self.directory.version,
        }
    }

    // ---- tokens -------------------------------------------------------

    /// A fresh opaque token valid for `lifetime`.
    pub(crate) fn issue_token(&mut self, lifetime: Duration) -> String {
        let token = Alphanumeric.sample_string(&mut rand::rng(), 48);
        let id = self.next_token_id;
        self.next_token_id += 1;
        self.tokens.insert(
            token.clone(),
            Token {
                id,
                expires_at: Instant::now() + lifetime,
                revoked: false,
            },
        );
        token
    }

    /// The token's id and expiry, if it is valid now.
    pub(crate) fn check_token(&self, token: &str) -> Result<(u64, Instant), ApiError> {
        match self.tokens.get(token) {
            Some(t) if !t.revoked && Instant::now() < t.expires_at => Ok((t.id, t.expires_at)),
            _ => Err(ApiError::BadCredentials),
        }
    }

    /// Revokes the tokens `which` selects; their channels die. Returns how
    /// many tokens were revoked.
    pub(crate) fn revoke(&mut self, cfg: &Config, which: impl Fn(&str, u64) -> bool) -> usize {
        let mut ids = Vec::new();
        for (value, t) in self.tokens.iter_mut() {
            if !t.revoked && which(value, t.id) {
                t.revoked = true;
                ids.push(t.id);
            }
        }
        let victims: Vec<u32> = (0..self.channels.len() as u32)
            .filter(|&n| {
                let ch = &self.channels[n as usize];
                ch.alive() && ids.contains(&ch.token_id)
            })
            .collect();
        for num in victims {
            if cfg.send_token_revoked {
                let ch = &self.channels[num as usize];
                if let Some(slot) = &ch.socket {
                    let frame = system_frame(
                        &format!("v2.system.token_revoked.{}", ch.id),
                        json!({
                            "channelId": ch.id,
                            "systemTopicType": "token_revoked",
                            "reason": "user_tokens_revoked",
                            "correlationId": fast_uuid(),
                            "organizationId": cfg.org_id,
                            "oauthClientId": cfg.client_id,
                            "message": "The token used to create this channel was revoked.",
                        }),
                    );
                    let _ = slot.out.try_send(Out::System(frame));
                }
            }
            self.kill(num, DeathReason::TokenRevoked);
        }
        ids.len()
    }

    /// The token id that created channel `id`.
    pub(crate) fn channel_token(&self, id: &str) -> Option<u64> {
        self.by_id
            .get(id)
            .map(|&n| self.channels[n as usize].token_id)
    }

    // ---- channels -----------------------------------------------------

    /// Kills channels whose lifetime or token ran out and forgets expired
    /// tokens.
    pub(crate) fn reap(&mut self) {
        let now = Instant::now();
        for num in 0..self.channels.len() as u32 {
            self.check_expiry(num, now);
        }
        self.tokens.retain(|_, t| now < t.expires_at);
    }

    fn check_expiry(&mut self, num: u32, now: Instant) {
        let ch = &self.channels[num as usize];
        if !ch.alive() {
            return;
        }
        if now >= ch.token_expires_at {
            self.kill(num, DeathReason::TokenExpired);
        } else if now >= ch.expires_at {
            self.kill(num, DeathReason::Expired);
        }
    }

    /// Kills a channel: it stops counting for coverage, loses its
    /// subscribers, and its socket (if any) goes silent. Returns false when
    /// it was already dead.
    pub(crate) fn kill(&mut self, num: u32, reason: DeathReason) -> bool {
        let ch = &mut self.channels[num as usize];
        if !ch.alive() {
            return false;
        }
        ch.death = Some((SystemTime::now(), reason));
        ch.dead_flag.store(true, Ordering::Relaxed);
        self.refresh_health(num);
        let topics: Vec<Arc<str>> = self.channels[num as usize].refs.keys().cloned().collect();
        for t in topics {
            if let Some(e) = self.topics.get_mut(&t) {
                e.subscribers.retain(|&n| n != num);
            }
        }
        self.channels[num as usize].refs.clear();
        self.sub_version += 1;
        tracing::info!(channel = %self.channels[num as usize].id, ?reason, "Channel died.");
        true
    }

    /// Creates a channel for `token_id`, evicting the least recently used
    /// one (socketless first) when the client is at its limit.
    pub(crate) fn create_channel(
        &mut self,
        cfg: &Config,
        ws_base: &str,
        token_id: u64,
        token_expires_at: Instant,
    ) -> ChannelView {
        let now = Instant::now();
        for num in 0..self.channels.len() as u32 {
            self.check_expiry(num, now);
        }
        loop {
            let live: Vec<u32> = (0..self.channels.len() as u32)
                .filter(|&n| self.channels[n as usize].alive())
                .collect();
            if live.len() < cfg.max_channels {
                break;
            }
            let victim = live.into_iter().min_by_key(|&n| {
                let ch = &self.channels[n as usize];
                (ch.socket.is_some(), ch.last_used)
            });
            match victim {
                Some(v) => {
                    self.kill(v, DeathReason::Evicted);
                }
                None => break,
            }
        }
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 26)
            .to_ascii_lowercase();
        let id = format!("streaming-0-{suffix}");
        let num = self.channels.len() as u32;
        let created_at = SystemTime::now();
        self.channels.push(Channel {
            id: id.clone(),
            token_id,
            token_expires_at,
            created_at,
            expires_at: now + cfg.channel_lifetime,
            expires_wall: created_at + cfg.channel_lifetime,
            last_used: now,
            entries: Vec::new(),
            refs: HashMap::new(),
            death: None,
            dead_flag: Arc::new(AtomicBool::new(false)),
            socket: None,
            counted_healthy: false,
            history: Vec::new(),
        });
        self.by_id.insert(id.clone(), num);
        self.names.push(id.clone());
        tracing::info!(channel = %id, "Channel created.");
        ChannelView {
            connect_uri: format!("{ws_base}/channels/{id}"),
            id,
            expires: created_at + cfg.channel_lifetime,
            own: true,
        }
    }

    /// Live channels of the client; `all` = those of every token.
    pub(crate) fn list_channels(
        &mut self,
        ws_base: &str,
        token_id: u64,
        all: bool,
    ) -> Vec<ChannelView> {
        let now = Instant::now();
        for num in 0..self.channels.len() as u32 {
            self.check_expiry(num, now);
        }
        self.channels
            .iter()
            .filter(|ch| ch.alive() && (all || ch.token_id == token_id))
            .map(|ch| ChannelView {
                id: ch.id.clone(),
                connect_uri: format!("{ws_base}/channels/{}", ch.id),
                expires: ch.expires_wall,
                own: ch.token_id == token_id,
            })
            .collect()
    }

    /// The number of a live channel, or 404.
    pub(crate) fn live_channel(&mut self, id: &str) -> Result<u32, ApiError> {
        let num = *self
            .by_id
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("Channel {id} not found")))?;
        self.check_expiry(num, Instant::now());
        if self.channels[num as usize].alive() {
            Ok(num)
        } else {
            Err(ApiError::NotFound(format!("Channel {id} not found")))
        }
    }

    fn extend(&mut self, num: u32, cfg: &Config) {
        let ch = &mut self.channels[num as usize];
        let now = Instant::now();
        ch.expires_at = now + cfg.channel_lifetime;
        ch.expires_wall = SystemTime::now() + cfg.channel_lifetime;
        ch.last_used = now;
    }

    /// Channels matching `target` that are alive.
    fn targets(&self, target: &Target) -> Vec<u32> {
        (0..self.channels.len() as u32)
            .filter(|&n| {
                let ch = &self.channels[n as usize];
                ch.alive() && target.matches(&ch.id)
            })
            .collect()
    }

    /// Channels matching `target` that have a socket attached (alive or not).
    fn socket_targets(&self, target: &Target) -> Vec<u32> {
        (0..self.channels.len() as u32)
            .filter(|&n| {
                let ch = &self.channels[n as usize];
                ch.socket.is_some() && target.matches(&ch.id)
            })
            .collect()
    }

    pub(crate) fn expire(&mut self, target: &Target) -> usize {
        self.targets(target)
            .into_iter()
            .filter(|&n| self.kill(n, DeathReason::Expired))
            .count()
    }

    // ---- subscriptions ------------------------------------------------

    pub(crate) fn topic_states(&self, num: u32) -> Vec<TopicState> {
        self.channels[num as usize]
            .entries
            .iter()
            .map(|e| TopicState {
                id: e.id.clone(),
                rejection: None,
            })
            .collect()
    }

    fn judge(cfg: &Config, ids: &[String]) -> Judged {
        let mut j = Judged {
            accepted: Vec::new(),
            rejected: Vec::new(),
            first_forbidden: None,
            first_invalid: None,
        };
        for id in ids {
            let Some(parts) = expand(id) else {
                j.first_invalid.get_or_insert_with(|| id.clone());
                j.rejected.push(invalid_state(id));
                continue;
            };
            let mut ok = Vec::new();
            let mut bad = Vec::new();
            for p in &parts {
                if !is_subscribable(p) {
                    j.first_invalid.get_or_insert_with(|| p.clone());
                    bad.push(invalid_state(p));
                } else if cfg.forbidden_topics.iter().any(|g| glob(g, p)) {
                    j.first_forbidden.get_or_insert_with(|| p.clone());
                    bad.push(forbidden_state(p));
                } else {
                    ok.push(p.clone());
                }
            }
            let combined = parts.len() > 1 || id.contains('?');
            if ok.is_empty() {
                // Nothing usable: the string as a whole is rejected.
                let mut whole = bad.into_iter().next().unwrap_or_else(|| invalid_state(id));
                whole.id = id.clone();
                j.rejected.push(whole);
            } else {
                if combined {
                    j.rejected.extend(bad);
                }
                let prefix = id.split_once('?').map(|(p, _)| p.to_owned());
                j.accepted.push(SubEntry {
                    id: id.clone(),
                    prefix,
                    parts: ok.into_iter().map(|p| Arc::from(p.as_str())).collect(),
                });
            }
        }
        j
    }

    /// A REST subscription change. Returns the reply entities: every topic
    /// now on the channel, then this request's rejections.
    pub(crate) fn subscribe(
        &mut self,
        cfg: &Config,
        num: u32,
        ids: &[String],
        op: SubOp,
        ignore_errors: bool,
    ) -> Result<Vec<TopicState>, ApiError> {
        let j = Self::judge(cfg, ids);
        if !ignore_errors {
            if let Some(topic) = j.first_forbidden {
                return Err(ApiError::ForbiddenTopic { topic });
            }
            if let Some(topic) = j.first_invalid {
                return Err(ApiError::InvalidTopic(topic));
            }
        }
        self.apply(cfg, num, j.accepted, op)?;
        let mut out = self.topic_states(num);
        out.extend(j.rejected);
        Ok(out)
    }

    /// An over-socket subscribe: all or nothing. Returns the error message
    /// for a `"result":"400"` reply.
    pub(crate) fn socket_subscribe(
        &mut self,
        cfg: &Config,
        num: u32,
        ids: &[String],
    ) -> Result<(), String> {
        if !self.channels[num as usize].alive() {
            return Err("Channel not found".to_owned());
        }
        let j = Self::judge(cfg, ids);
        if let Some(t) = j.first_forbidden {
            return Err(format!("Not authorized to subscribe to topic {t}"));
        }
        if let Some(t) = j.first_invalid {
            return Err(format!("Invalid topic {t}"));
        }
        self.apply(cfg, num, j.accepted, SubOp::Add)
            .map_err(|e| e.to_string())
    }

    /// An over-socket unsubscribe of the given topic strings.
    pub(crate) fn socket_unsubscribe(&mut self, num: u32, ids: &[String]) {
        let keep: Vec<SubEntry> = self.channels[num as usize]
            .entries
            .iter()
            .filter(|e| !ids.contains(&e.id))
            .cloned()
            .collect();
        self.set_entries(num, keep);
    }

    fn apply(
        &mut self,
        cfg: &Config,
        num: u32,
        accepted: Vec<SubEntry>,
        op: SubOp,
    ) -> Result<(), ApiError> {
        let mut new_entries = match op {
            SubOp::Add => self.channels[num as usize].entries.clone(),
            SubOp::Replace => Vec::new(),
        };
        let mut added: Vec<Arc<str>> = Vec::new();
        for e in accepted {
            if new_entries.iter().any(|x| x.id == e.id) {
                continue;
            }
            added.extend(e.parts.iter().cloned());
            new_entries.push(e);
        }
        if new_entries.len() > cfg.max_topics_per_channel {
            return Err(ApiError::TooManyTopics(cfg.max_topics_per_channel));
        }
        self.set_entries(num, new_entries);
        self.extend(num, cfg);
        if cfg.exclusive_subscriptions {
            self.steal(cfg, num, &added);
        }
        Ok(())
    }

    /// Drops every subscription of a channel (REST DELETE).
    pub(crate) fn unsubscribe_all(&mut self, num: u32) {
        self.set_entries(num, Vec::new());
        self.channels[num as usize].last_used = Instant::now();
    }

    /// Replaces the entries; adds references before removing old ones so a
    /// topic kept across a PUT never looks uncovered.
    fn set_entries(&mut self, num: u32, entries: Vec<SubEntry>) {
        let new_parts: Vec<Arc<str>> = entries
            .iter()
            .flat_map(|e| e.parts.iter().cloned())
            .collect();
        let old_parts: Vec<Arc<str>> = self.channels[num as usize]
            .entries
            .iter()
            .flat_map(|e| e.parts.iter().cloned())
            .collect();
        for p in new_parts {
            self.add_ref(num, p);
        }
        for p in old_parts {
            self.remove_ref(num, &p);
        }
        self.channels[num as usize].entries = entries;
        self.sub_version += 1;
    }

    fn add_ref(&mut self, num: u32, topic: Arc<str>) {
        let entry = self
            .topics
            .entry(topic.clone())
            .or_insert_with(|| TopicEntry {
                name: topic.clone(),
                subscribers: Vec::new(),
                healthy: 0,
                ever_covered: false,
                gaps: Vec::new(),
            });
        let name = entry.name.clone();
        let ch = &mut self.channels[num as usize];
        let count = ch.refs.entry(name.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            let healthy = ch.counted_healthy;
            if let Some(e) = self.topics.get_mut(&name) {
                e.subscribers.push(num);
            }
            if healthy {
                self.inc_healthy(&name);
            }
        }
    }

    fn remove_ref(&mut self, num: u32, topic: &Arc<str>) {
        let ch = &mut self.channels[num as usize];
        let Some(count) = ch.refs.get_mut(topic) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        ch.refs.remove(topic);
        let healthy = ch.counted_healthy;
        if let Some(e) = self.topics.get_mut(topic) {
            e.subscribers.retain(|&n| n != num);
        }
        if healthy {
            self.dec_healthy(topic);
        }
    }

    /// Exclusive mode: takes `topics` away from every other live channel and
    /// tells their sockets.
    fn steal(&mut self, cfg: &Config, taker: u32, topics: &[Arc<str>]) {
        let mut stolen: HashMap<u32, Vec<String>> = HashMap::new();
        for t in topics {
            let holders: Vec<u32> = self
                .topics
                .get(t)
                .map(|e| {
                    e.subscribers
                        .iter()
                        .copied()
                        .filter(|&n| n != taker)
                        .collect()
                })
                .unwrap_or_default();
            for h in holders {
                let entries: Vec<SubEntry> = self.channels[h as usize]
                    .entries
                    .iter()
                    .filter_map(|e| without_part(e, t))
                    .collect();
                self.set_entries(h, entries);
                stolen.entry(h).or_default().push(t.to_string());
            }
        }
        for (h, topics) in stolen {
            let ch = &self.channels[h as usize];
            tracing::info!(channel = %ch.id, topics = topics.len(), "Topics moved to a newer channel.");
            if let Some(slot) = &ch.socket {
                let frame = system_frame(
                    &format!("v2.system.no_longer_subscribed.{}", ch.id),
                    json!({
                        "channelId": ch.id,
                        "systemTopicType": "no_longer_subscribed",
                        "reason": "another_channel_subscribed",
                        "correlationId": fast_uuid(),
                        "organizationId": cfg.org_id,
                        "oauthClientId": cfg.client_id,
                        "message": "Another channel subscribed to these topics.",
                        "data": { "topics": topics },
                    }),
                );
                let _ = slot.out.try_send(Out::System(frame));
            }
        }
    }

    // ---- health and coverage ------------------------------------------

    fn inc_healthy(&mut self, topic: &Arc<str>) {
        if let Some(e) = self.topics.get_mut(topic) {
            e.healthy += 1;
            if e.healthy == 1 {
                if e.ever_covered {
                    if let Some(g) = e.gaps.last_mut() {
                        if g.end.is_none() {
                            g.end = Some(SystemTime::now());
                        }
                    }
                }
                e.ever_covered = true;
            }
        }
    }

    fn dec_healthy(&mut self, topic: &Arc<str>) {
        if let Some(e) = self.topics.get_mut(topic) {
            e.healthy = e.healthy.saturating_sub(1);
            if e.healthy == 0 && e.ever_covered {
                e.gaps.push(Gap {
                    start: SystemTime::now(),
                    end: None,
                });
            }
        }
    }

    /// Recomputes a channel's health and moves its topics' counts with it.
    fn refresh_health(&mut self, num: u32) {
        let ch = &self.channels[num as usize];
        let now_healthy = ch.healthy();
        if now_healthy == ch.counted_healthy {
            return;
        }
        let topics: Vec<Arc<str>> = ch.refs.keys().cloned().collect();
        self.channels[num as usize].counted_healthy = now_healthy;
        for t in &topics {
            if now_healthy {
                self.inc_healthy(t);
            } else {
                self.dec_healthy(t);
            }
        }
    }

    pub(crate) fn coverage_gaps(&self, topic: &str) -> Vec<Gap> {
        self.topics
            .get(topic)
            .map(|e| e.gaps.clone())
            .unwrap_or_default()
    }

    /// Whether a healthy socket is subscribed to `topic` right now.
    pub(crate) fn covered(&self, topic: &str) -> bool {
        self.topics.get(topic).is_some_and(|e| e.healthy > 0)
    }

    /// Every single topic some live channel is subscribed to.
    pub(crate) fn subscribed_topics(&self) -> Vec<Arc<str>> {
        self.topics
            .values()
            .filter(|e| !e.subscribers.is_empty())
            .map(|e| e.name.clone())
            .collect()
    }

    // ---- sockets ------------------------------------------------------

    /// Registers a new socket on channel `id` (before the 101 goes out, so
    /// that an event published right after the client connects reaches it).
    pub(crate) fn attach(&mut self, cfg: &Config, id: &str) -> Attach {
        let socket_id = self.next_socket_id;
        self.next_socket_id += 1;
        let Some(&num) = self.by_id.get(id) else {
            return Attach::Dead {
                num: None,
                socket_id,
            };
        };
        self.check_expiry(num, Instant::now());
        let wall = SystemTime::now();
        let record = |dead_channel| SocketRecord {
            socket_id,
            connected_at: wall,
            stalled_at: None,
            disconnected_at: None,
            reason: None,
            dead_channel,
        };
        if !self.channels[num as usize].alive() {
            self.channels[num as usize].history.push(record(true));
            return Attach::Dead {
                num: Some(num),
                socket_id,
            };
        }
        let (out_tx, out_rx) = mpsc::channel(cfg.socket_queue_capacity);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let stalled = Arc::new(AtomicBool::new(false));
        let ch = &mut self.channels[num as usize];
        if let Some(old) = ch.socket.take() {
            let _ = old.control.send(Control::Kick);
            if let Some(h) = ch.history_mut(old.socket_id) {
                h.disconnected_at = Some(wall);
                h.reason = Some(DisconnectReason::Replaced);
            }
            tracing::info!(channel = %ch.id, "Second socket on channel; closing the first.");
        }
        ch.socket = Some(Slot {
            socket_id,
            out: out_tx,
            control: control_tx,
            stalled: stalled.clone(),
        });
        ch.history.push(record(false));
        ch.last_used = Instant::now();
        let parts = SocketParts {
            num,
            socket_id,
            channel_id: ch.id.clone(),
            out_rx,
            control_rx,
            stalled,
            dead: ch.dead_flag.clone(),
        };
        self.refresh_health(num);
        Attach::Live(parts)
    }

    /// Detaches the current socket of `num` (if any), records why, and sends
    /// it `command`.
    fn detach(&mut self, num: u32, reason: DisconnectReason, command: Option<Control>) -> bool {
        let ch = &mut self.channels[num as usize];
        let Some(slot) = ch.socket.take() else {
            return false;
        };
        if let Some(c) = command {
            let _ = slot.control.send(c);
        }
        if let Some(h) = ch.history_mut(slot.socket_id) {
            if h.disconnected_at.is_none() {
                h.disconnected_at = Some(SystemTime::now());
                h.reason = Some(reason);
            }
        }
        ch.last_used = Instant::now();
        self.refresh_health(num);
        true
    }

    /// A socket task ended.
    pub(crate) fn socket_ended(&mut self, num: u32, socket_id: u64, reason: DisconnectReason) {
        let current = self.channels[num as usize]
            .socket
            .as_ref()
            .is_some_and(|s| s.socket_id == socket_id);
        if current {
            self.detach(num, reason, None);
        } else if let Some(h) = self.channels[num as usize].history_mut(socket_id) {
            if h.disconnected_at.is_none() {
                h.disconnected_at = Some(SystemTime::now());
                h.reason = Some(reason);
            }
        }
    }

    pub(crate) fn drop_sockets(&mut self, target: &Target) -> usize {
        self.socket_targets(target)
            .into_iter()
            .filter(|&n| self.detach(n, DisconnectReason::Dropped, Some(Control::Drop)))
            .count()
    }

    pub(crate) fn stall_sockets(&mut self, target: &Target) -> usize {
        let mut count = 0;
        for n in self.socket_targets(target) {
            let ch = &mut self.channels[n as usize];
            let Some(slot) = &ch.socket else { continue };
            if slot.stalled.swap(true, Ordering::Relaxed) {
                continue;
            }
            let socket_id = slot.socket_id;
            if let Some(h) = ch.history_mut(socket_id) {
                h.stalled_at = Some(SystemTime::now());
            }
            self.refresh_health(n);
            count += 1;
        }
        count
    }

    pub(crate) fn socket_closing(
        &mut self,
        cfg: &Config,
        target: &Target,
        grace: Duration,
    ) -> usize {
        let mut count = 0;
        for n in self.socket_targets(target) {
            let ch = &self.channels[n as usize];
            if let Some(slot) = &ch.socket {
                let frame = system_frame(
                    "v2.system.socket_closing",
                    json!({
                        "channelId": ch.id,
                        "correlationId": fast_uuid(),
                        "organizationId": cfg.org_id,
                        "oauthClientId": cfg.client_id,
                        "message": format!(
                            "This socket will be closed in {} seconds for maintenance.",
                            grace.as_secs()
                        ),
                    }),
                );
                if slot.control.send(Control::Closing { grace, frame }).is_ok() {
                    count += 1;
                }
            }
        }
        count
    }

    pub(crate) fn send_malformed(&mut self, target: &Target, m: Malformed) -> usize {
        self.socket_targets(target)
            .into_iter()
            .filter(|&n| {
                self.channels[n as usize]
                    .socket
                    .as_ref()
                    .is_some_and(|s| s.control.send(Control::Malformed(m)).is_ok())
            })
            .count()
    }

    /// Topics for a malformed "valid but padded" frame: one the channel has.
    pub(crate) fn some_topic_of(&self, num: u32) -> Option<String> {
        self.channels[num as usize]
            .refs
            .keys()
            .next()
            .map(|t| t.to_string())
    }

    #[cfg(test)]
    pub(crate) fn channel_num(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    // ---- views --------------------------------------------------------

    pub(crate) fn channel_infos(&self) -> Vec<ChannelInfo> {
        self.channels
            .iter()
            .map(|ch| ChannelInfo {
                id: ch.id.clone(),
                created_at: ch.created_at,
                expires_at: ch.expires_wall,
                topics: ch.entries.iter().map(|e| e.id.clone()).collect(),
                alive: ch.alive(),
                died_at: ch.death.map(|(t, _)| t),
                death: ch.death.map(|(_, r)| r),
                socket_open: ch.socket.is_some(),
                stalled: ch
                    .socket
                    .as_ref()
                    .is_some_and(|s| s.stalled.load(Ordering::Relaxed)),
                sockets: ch.history.clone(),
            })
            .collect()
    }
}

fn invalid_state(id: &str) -> TopicState {
    TopicState {
        id: id.to_owned(),
        rejection: Some((format!("Topic {id} is not a valid topic name"), Vec::new())),
    }
}

fn forbidden_state(id: &str) -> TopicState {
    let perms = match_topic(id)
        .map(|(t, _)| t.permissions.iter().map(|p| (*p).to_owned()).collect())
        .unwrap_or_default();
    TopicState {
        id: id.to_owned(),
        rejection: Some((
            format!("The user does not have permissions required for topic {id}"),
            perms,
        )),
    }
}

/// `e` without the single topic `t`; `None` when nothing is left.
fn without_part(e: &SubEntry, t: &Arc<str>) -> Option<SubEntry> {
    if !e.parts.contains(t) {
        return Some(e.clone());
    }
    let parts: Vec<Arc<str>> = e.parts.iter().filter(|p| *p != t).cloned().collect();
    if parts.is_empty() {
        return None;
    }
    let id = match &e.prefix {
        Some(prefix) => {
            let suffixes: Vec<&str> = parts
                .iter()
                .filter_map(|p| {
                    p.strip_prefix(prefix.as_str())
                        .and_then(|s| s.strip_prefix('.'))
                })
                .collect();
            match suffixes.as_slice() {
                [one] => format!("{prefix}.{one}"),
                many => format!("{prefix}?{}", many.join("&")),
            }
        }
        None => e.id.clone(),
    };
    Some(SubEntry {
        id,
        prefix: e.prefix.clone(),
        parts,
    })
}

/// Renders a channel for the REST API.
pub(crate) fn channel_json(v: &ChannelView) -> Value {
    if v.own {
        json!({ "id": v.id, "connectUri": v.connect_uri, "expires": rfc3339(v.expires) })
    } else {
        // Channels of other tokens are shown without their ids: they are
        // there to show that they exist, not to be used.
        json!({ "expires": rfc3339(v.expires) })
    }
}

/// Renders one subscriptions entity.
pub(crate) fn topic_json(channel_id: &str, t: &TopicState) -> Value {
    let self_uri = format!("/api/v2/notifications/channels/{channel_id}/subscriptions");
    match &t.rejection {
        None => json!({ "id": t.id, "state": "Permitted", "selfUri": self_uri }),
        Some((reason, perms)) => json!({
            "id": t.id,
            "state": "Rejected",
            "rejectionReason": reason,
            "missingPermissions": perms,
            "selfUri": self_uri,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            max_channels: 2,
            max_topics_per_channel: 3,
            ..Config::default()
        }
    }

    fn channel(st: &mut State, cfg: &Config) -> (String, u32) {
        let tok = st.issue_token(Duration::from_secs(60));
        let (tid, exp) = st.check_token(&tok).expect("token");
        let v = st.create_channel(cfg, "ws://x", tid, exp);
        let n = st.channel_num(&v.id).expect("num");
        (v.id, n)
    }

    #[test]
    fn prepared_frames_carry_the_sequence_first() {
        let p = Prepared::new("v2.users.u.presence", r#"{"a":1}"#);
        let s = p.assemble(42);
        let v: Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["eventBody"]["emulatorSequence"], 42);
        assert_eq!(v["eventBody"]["a"], 1);
        assert_eq!(v["version"], "2");
        assert!(v["metadata"]["CorrelationId"].is_string());
        let empty = Prepared::new("t", "{}").assemble(1);
        let v: Value = serde_json::from_str(&empty).expect("json");
        assert_eq!(v["eventBody"], json!({"emulatorSequence": 1}));
    }

    #[tokio::test]
    async fn limit_evicts_socketless_least_recently_used_first() {
        let cfg = cfg();
        let mut st = State::new();
        let (a, _) = channel(&mut st, &cfg);
        let (b, _) = channel(&mut st, &cfg);
        // a has a socket, b does not: b goes although a is older.
        assert!(matches!(st.attach(&cfg, &a), Attach::Live(_)));
        let (_c, _) = channel(&mut st, &cfg);
        let infos = st.channel_infos();
        let get = |id: &str| infos.iter().find(|i| i.id == id).cloned().expect("info");
        assert!(get(&a).alive);
        assert_eq!(get(&b).death, Some(DeathReason::Evicted));
    }

    #[tokio::test]
    async fn subscriptions_judge_limit_and_combined() {
        let cfg = cfg();
        let mut st = State::new();
        let (_, n) = channel(&mut st, &cfg);
        let ok = st
            .subscribe(
                &cfg,
                n,
                &["v2.users.u?presence&routingStatus".into()],
                SubOp::Replace,
                false,
            )
            .expect("ok");
        assert_eq!(ok.len(), 1);
        assert!(st
            .subscribed_topics()
            .iter()
            .any(|t| &**t == "v2.users.u.routingStatus"));
        let err = st
            .subscribe(
                &cfg,
                n,
                &["v2.users.forbidden-1.presence".into()],
                SubOp::Add,
                false,
            )
            .expect_err("forbidden");
        assert!(matches!(err, ApiError::ForbiddenTopic { .. }));
        let mixed = st
            .subscribe(
                &cfg,
                n,
                &["v2.users.v?presence&bogus".into(), "nope".into()],
                SubOp::Add,
                true,
            )
            .expect("ignore errors");
        let rejected: Vec<_> = mixed
            .iter()
            .filter(|t| t.rejection.is_some())
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(
            rejected,
            vec!["v2.users.v.bogus".to_string(), "nope".to_string()]
        );
        let too_many: Vec<String> = (0..4).map(|i| format!("v2.users.u{i}.presence")).collect();
        assert!(matches!(
            st.subscribe(&cfg, n, &too_many, SubOp::Replace, false),
            Err(ApiError::TooManyTopics(3))
        ));
    }

    #[test]
    fn without_part_rebuilds_combined_ids() {
        let e = SubEntry {
            id: "p?a&b&c".into(),
            prefix: Some("p".into()),
            parts: vec![Arc::from("p.a"), Arc::from("p.b"), Arc::from("p.c")],
        };
        let r = without_part(&e, &Arc::from("p.b")).expect("left");
        assert_eq!(r.id, "p?a&c");
        let r = without_part(&r, &Arc::from("p.a")).expect("left");
        assert_eq!(r.id, "p.c");
        assert!(without_part(&r, &Arc::from("p.c")).is_none());
    }
}
