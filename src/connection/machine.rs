//! The connection manager's decisions, as a pure state machine: typed inputs
//! in (what a session reported, a token change, time passing), typed actions
//! out (open a session, stop one, a gap opened or closed, something to tell
//! the operator). No I/O, no clock of its own: the time comes in with every
//! input, so every rule here is checked by property tests over random
//! sequences (`tests` below), not by runs on the real clock. The supervisor
//! executes the actions; a session is socket I/O that reports events.
//!
//! Topics are split into shards of at most 1,000 (one channel's limit); each
//! shard has `redundancy` slots, and each slot keeps one channel receiving:
//! - planned moves (socket_closing, channel or token near expiry, token
//!   revoked, topics moved away) are make-before-break: a standby session on
//!   a new channel, and only when it is receiving is the old one stopped;
//! - unplanned ends (socket error, server close, heartbeat silence, channel
//!   gone) are retried with full-jitter backoff, reconnecting to the same
//!   channel when it still exists (the session HEADs it first).
//!
//! A shard with no receiving socket is blind: the interval, from the last
//! frame of the socket that stopped to the confirmation of its replacement,
//! is a gap, reported once when it closes. A socket stopped for a planned
//! move that turns out to have been blind already (its stop reports its
//! last frame) reports the blind time it hid. Sessions never exceed
//! Genesys' channel budget: a standby, and a replaced socket until its close
//! is done, hold one of the spares (`max_channels` - slots).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::backoff::{Backoff, Policy};
use crate::event::{Gap, Reason};
use crate::genesys::api::Channel;

/// A session, as the machine names it: never reused within a process.
pub type SessionId = u64;

/// Both clocks at one moment: the monotonic one for timers, the wall clock
/// for gap bounds (which consumers compare with event times).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn current() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A server's notice that a socket will stop: time to move make-before-break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `v2.system.socket_closing` (maintenance).
    SocketClosing,
    /// `no_longer_subscribed` because another channel took the topics.
    AnotherChannelSubscribed,
    /// `no_longer_subscribed` for any other reason.
    NoLongerSubscribed,
    /// `v2.system.token_revoked`: the channel dies with its token.
    TokenRevoked,
}

impl Notice {
    pub fn reason(self) -> Reason {
        match self {
            Notice::SocketClosing => Reason::SocketClosing,
            Notice::AnotherChannelSubscribed | Notice::NoLongerSubscribed => Reason::ChannelGone,
            Notice::TokenRevoked => Reason::TokenRefresh,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Notice::SocketClosing => "socket_closing",
            Notice::AnotherChannelSubscribed => "another_channel_subscribed",
            Notice::NoLongerSubscribed => "no_longer_subscribed",
            Notice::TokenRevoked => "token_revoked",
        }
    }
}

/// What a session reports. `Ended` and `Closed` are final: every session
/// sends exactly one of them, last.
#[derive(Debug)]
pub enum SessionEvent {
    /// Subscribed, and the socket answered a ping: receiving.
    Receiving(Subscription),
    /// The server announced the socket's end.
    Notice(Notice),
    /// A receiving socket's channel took a new topic list (the shard's
    /// topics changed): what Genesys answered.
    Resubscribed {
        accepted: usize,
        rejected: Vec<(String, String)>,
    },
    /// The session ended on its own.
    Ended(Ended),
    /// The session was stopped ([`Action::Stop`]) and has closed its socket.
    /// `blind_since`: the server did not show the channel alive at the close
    /// (no answer, or "channel not found"): its last frame, and why.
    Closed {
        blind_since: Option<(SystemTime, Reason)>,
    },
}

/// A channel's subscription, as Genesys answered it.
#[derive(Debug)]
pub struct Subscription {
    pub channel: Channel,
    /// Topics accepted.
    pub accepted: usize,
    /// Topics refused, with Genesys' reason.
    pub rejected: Vec<(String, String)>,
}

impl Subscription {
    /// Genesys refused every topic (an empty list refuses nothing: a shard
    /// whose topics all left the directory keeps its channel for new ones).
    pub fn refused(&self) -> bool {
        self.accepted == 0 && !self.rejected.is_empty()
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// It never got to receive (channel, subscription or socket set-up).
    Setup(String),
    /// A receiving socket was lost.
    Lost { reason: Reason, detail: String },
}

#[derive(Debug)]
pub struct Ended {
    pub cause: Cause,
    /// The last frame that showed the socket alive (for a stall, long
    /// before the end; for a 404, the frame before the answer).
    pub last_frame: SystemTime,
    /// The channel, if one was obtained (to reconnect to it).
    pub channel: Option<Channel>,
    pub retry_after: Option<Duration>,
    /// How long the socket was receiving.
    pub up_for: Duration,
}

/// How a new session gets its channel.
#[derive(Debug, Clone)]
pub enum Via {
    /// Create a channel and subscribe it.
    New,
    /// HEAD this channel: reconnect to it if it still exists (its
    /// subscriptions live on the server), else create a new one.
    Check(Channel),
}

pub enum Input {
    Session {
        id: SessionId,
        event: SessionEvent,
    },
    /// A new access token: channels made with older ones must move.
    Token {
        generation: u64,
    },
    /// Time passed: timers due at or before `now` fire.
    Tick,
    /// The topic lists of every shard, after a change of the topic set:
    /// the same shards first (a topic never moves between them), then any
    /// new ones, which get sessions of their own.
    Shards(Vec<Arc<[String]>>),
}

#[derive(Debug)]
pub enum Action {
    /// Start a session for `shard` after `delay`.
    Open {
        session: SessionId,
        shard: usize,
        via: Via,
        delay: Duration,
    },
    /// Stop a session: it closes its socket, handing on what the server
    /// already sent, and reports [`SessionEvent::Closed`].
    Stop {
        session: SessionId,
    },
    GapOpened {
        shard: usize,
        since: SystemTime,
        reason: Reason,
    },
    GapClosed {
        shard: usize,
        gap: Gap,
    },
    /// For the operator only: logs and metrics.
    Report(Report),
}

/// Happenings worth a log line or a metric; they change nothing.
#[derive(Debug)]
pub enum Report {
    Subscribed {
        shard: usize,
        accepted: usize,
        rejected: Vec<(String, String)>,
    },
    AllTopicsRejected {
        shard: usize,
    },
    /// A socket is being replaced (planned or not).
    Moving {
        shard: usize,
        channel: Option<Arc<str>>,
        reason: Reason,
        detail: String,
    },
    SetupFailed {
        shard: usize,
        channel: Option<Arc<str>>,
        detail: String,
        retry_in: Duration,
    },
    StandbyFailed {
        shard: usize,
        detail: String,
        retry_in: Duration,
    },
    SingleHolder {
        shard: usize,
    },
    BlindSocketReplaced {
        shard: usize,
        since: SystemTime,
        reason: Reason,
    },
}

/// What one slot is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// A session is being set up (at start, or after a loss, with backoff).
    Connecting { session: SessionId },
    /// Its session is receiving.
    Receiving { session: SessionId },
    /// Its session is up but Genesys refused every topic.
    Refused { session: SessionId },
    /// A planned move: `old` (if still up) keeps receiving until `standby`
    /// does; no standby before `not_before` (a spare is free, backoff).
    Rotating {
        old: Option<SessionId>,
        reason: Reason,
        standby: Option<SessionId>,
        not_before: Instant,
    },
    /// Parked: the server keeps one holder per topic, so a second channel
    /// for the shard only steals from the first. Woken when the shard goes
    /// blind.
    Dormant,
}

/// A shard's state as the operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Receiving,
    Blind,
    Rejected,
}

struct SessionState {
    slot: usize,
    channel: Option<Channel>,
    /// Since when the machine counts it as covering its shard.
    covering_since: Option<SystemTime>,
    /// When to move before the channel expires.
    rotate_at: Option<Instant>,
    /// A notice that came before it was the slot's receiving session.
    announced: Option<Notice>,
    /// Stopped after a replacement came up: when, and whether it was the
    /// shard's only covering socket then (if it was blind, so was the shard).
    retired: Option<Retired>,
}

#[derive(Clone, Copy)]
struct Retired {
    at: SystemTime,
    /// It was the shard's only covering socket when it was replaced.
    alone: bool,
    /// Until when the shard's other sockets covered (the latest stop among
    /// them): if this one turns out to have been blind, the shard was blind
    /// only from then on.
    others_until: Option<SystemTime>,
}

struct SlotState {
    shard: usize,
    phase: Phase,
    backoff: Backoff,
}

struct ShardState {
    topics: Arc<[String]>,
    gap: Option<(SystemTime, Reason)>,
    /// The latest moment a covering socket of this shard stopped: a gap
    /// starts when the last one stops, whichever order their ends are
    /// learnt in.
    last_stop: Option<SystemTime>,
    single_holder: bool,
    accepted: usize,
    rejected: usize,
    /// Genesys refused every topic of the last subscription.
    all_rejected: bool,
}

impl ShardState {
    fn new(topics: Arc<[String]>) -> Self {
        Self {
            topics,
            gap: None,
            last_stop: None,
            single_holder: false,
            accepted: 0,
            rejected: 0,
            all_rejected: false,
        }
    }
}

/// The decisions of the connection manager for every shard.
pub struct Machine {
    redundancy: usize,
    max_channels: usize,
    new_backoff: Box<dyn Fn() -> Backoff + Send>,
    spares: usize,
    shards: Vec<ShardState>,
    slots: Vec<SlotState>,
    sessions: BTreeMap<SessionId, SessionState>,
    next_id: SessionId,
    token: Option<u64>,
}

/// Retry a standby that could not get a spare this soon.
const SPARE_RETRY: Duration = Duration::from_millis(200);

impl Machine {
    /// `shards`: the topic lists; `max_channels`: Genesys' budget for the
    /// OAuth client (the configuration keeps slots below it).
    pub fn new(
        shards: Vec<Arc<[String]>>,
        redundancy: usize,
        max_channels: usize,
        backoff: impl Fn() -> Backoff + Send + 'static,
    ) -> Self {
        let redundancy = redundancy.max(1);
        let slots: Vec<SlotState> = (0..shards.len() * redundancy)
            .map(|i| SlotState {
                shard: i / redundancy,
                phase: Phase::Dormant,
                backoff: backoff(),
            })
            .collect();
        Self {
            redundancy,
            max_channels,
            spares: max_channels.saturating_sub(slots.len()).max(1),
            shards: shards.into_iter().map(ShardState::new).collect(),
            slots,
            new_backoff: Box::new(backoff),
            sessions: BTreeMap::new(),
            next_id: 0,
            token: None,
        }
    }

    /// A machine whose backoff follows `policy`.
    pub fn with_policy(
        shards: Vec<Arc<[String]>>,
        redundancy: usize,
        max_channels: usize,
        policy: &Policy,
    ) -> Self {
        let policy = policy.clone();
        Self::new(shards, redundancy, max_channels, move || {
            Backoff::new(&policy)
        })
    }

    /// New topic lists; shards beyond the current ones get slots and
    /// sessions. Existing sessions learn their list from the supervisor and
    /// report [`SessionEvent::Resubscribed`]. A new slot gets its first
    /// channel as a standby does: only while the spares held leave room,
    /// so sessions never exceed the budget even if the growth comes in the
    /// middle of moves (the reason is never reported: nothing is replaced).
    fn reshard(&mut self, shards: Vec<Arc<[String]>>, now: Now, out: &mut Vec<Action>) {
        let before = self.slots.len();
        for (index, topics) in shards.into_iter().enumerate() {
            match self.shards.get_mut(index) {
                Some(shard) => shard.topics = topics,
                None => {
                    self.shards.push(ShardState::new(topics));
                    for _ in 0..self.redundancy {
                        self.slots.push(SlotState {
                            shard: index,
                            phase: Phase::Dormant,
                            backoff: (self.new_backoff)(),
                        });
                    }
                }
            }
        }
        if self.slots.len() > before {
            self.spares = self.max_channels.saturating_sub(self.slots.len()).max(1);
            for slot in before..self.slots.len() {
                self.move_waits(slot, None, Reason::ChannelGone, now.at);
                self.start_standby(slot, now, out);
            }
        }
    }

    /// Before [`Machine::start`]: a previous process last recorded `shard`
    /// receiving at `since`. Its gap (`process_down`) is open from then and
    /// closes at the shard's first subscription, as any gap does.
    pub fn down_since(&mut self, shard: usize, since: SystemTime) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.gap = Some((since, Reason::ProcessDown));
        }
    }

    /// The last moment `shard` was receiving: `now` while it is, the start
    /// of its open gap while it is blind, `None` if it never was.
    pub fn last_receiving(&self, shard: usize, now: SystemTime) -> Option<SystemTime> {
        if self.covering(shard) > 0 {
            return Some(now);
        }
        self.shards[shard].gap.map(|(since, _)| since)
    }

    /// The topics of `shard`, as the machine last heard them.
    pub fn topics(&self, shard: usize) -> &Arc<[String]> {
        &self.shards[shard].topics
    }

    /// Opens a session for every slot.
    pub fn start(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for slot in 0..self.slots.len() {
            let session = self.open(slot, Via::New, Duration::ZERO, &mut out);
            self.slots[slot].phase = Phase::Connecting { session };
        }
        out
    }

    /// One input, the actions it calls for.
    pub fn step(&mut self, input: Input, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Session { id, event } => self.on_session(id, event, now, &mut out),
            Input::Token { generation } => {
                self.token = Some(self.token.map_or(generation, |t| t.max(generation)));
                for slot in 0..self.slots.len() {
                    self.check_token(slot, now, &mut out);
                }
            }
            Input::Tick => {}
            Input::Shards(shards) => self.reshard(shards, now, &mut out),
        }
        self.fire_timers(now, &mut out);
        out
    }

    /// The earliest moment a [`Input::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|slot| match slot.phase {
                Phase::Receiving { session } | Phase::Refused { session } => {
                    self.sessions.get(&session)?.rotate_at
                }
                Phase::Rotating {
                    standby: None,
                    not_before,
                    ..
                } => Some(not_before),
                _ => None,
            })
            .min()
    }

    pub fn phase(&self, slot: usize) -> &Phase {
        &self.slots[slot].phase
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Sessions started and not yet ended or closed: each holds (or is
    /// about to hold) a channel.
    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn coverage(&self, shard: usize) -> Coverage {
        if self.covering(shard) > 0 {
            Coverage::Receiving
        } else if self.shards[shard].all_rejected {
            Coverage::Rejected
        } else {
            Coverage::Blind
        }
    }

    /// Since when the shard is blind, if a gap is open.
    pub fn open_gap(&self, shard: usize) -> Option<SystemTime> {
        self.shards[shard].gap.map(|(since, _)| since)
    }

    /// Topics accepted and rejected in the shard's last subscription.
    pub fn topic_counts(&self, shard: usize) -> (usize, usize) {
        let s = &self.shards[shard];
        (s.accepted, s.rejected)
    }

    fn covering(&self, shard: usize) -> usize {
        self.sessions
            .values()
            .filter(|s| self.slots[s.slot].shard == shard && s.covering_since.is_some())
            .count()
    }

    /// Live sessions beyond one per slot: standbys, replaced sockets still
    /// closing, a parked slot's socket closing while it is woken again.
    fn spares_held(&self) -> usize {
        let mut per_slot = vec![0usize; self.slots.len()];
        for s in self.sessions.values() {
            per_slot[s.slot] += 1;
        }
        per_slot.iter().map(|n| n.saturating_sub(1)).sum()
    }

    fn open(&mut self, slot: usize, via: Via, delay: Duration, out: &mut Vec<Action>) -> SessionId {
        let session = self.next_id;
        self.next_id += 1;
        self.sessions.insert(
            session,
            SessionState {
                slot,
                channel: None,
                covering_since: None,
                rotate_at: None,
                announced: None,
                retired: None,
            },
        );
        out.push(Action::Open {
            session,
            shard: self.slots[slot].shard,
            via,
            delay,
        });
        session
    }

    fn on_session(&mut self, id: SessionId, event: SessionEvent, now: Now, out: &mut Vec<Action>) {
        let Some(state) = self.sessions.get(&id) else {
            return; // stopped and forgotten (shutdown), or never ours
        };
        let slot = state.slot;
        if let Some(retired) = state.retired {
            // A replaced socket: only its end matters, and only to tell
            // whether it had been blind before its replacement came up.
            let blind_since = match event {
                SessionEvent::Closed { blind_since } => blind_since,
                SessionEvent::Ended(ended) => match ended.cause {
                    Cause::Lost { reason, .. } => Some((ended.last_frame, reason)),
                    Cause::Setup(_) => None,
                },
                SessionEvent::Receiving(_)
                | SessionEvent::Notice(_)
                | SessionEvent::Resubscribed { .. } => return,
            };
            self.sessions.remove(&id);
            let since = blind_since.map(|(since, reason)| {
                (
                    retired.others_until.map_or(since, |until| until.max(since)),
                    reason,
                )
            });
            if let Some((since, reason)) = since.filter(|&(since, _)| since < retired.at) {
                if retired.alone {
                    let shard = self.slots[slot].shard;
                    out.push(Action::Report(Report::BlindSocketReplaced {
                        shard,
                        since,
                        reason,
                    }));
                    self.report_gap(shard, since, retired.at, reason, out);
                }
            }
            return;
        }
        match event {
            SessionEvent::Receiving(subscription) => self.on_receiving(id, subscription, now, out),
            SessionEvent::Notice(notice) => self.on_notice(id, notice, now, out),
            SessionEvent::Resubscribed { accepted, rejected } => {
                let shard = self.slots[slot].shard;
                let current = matches!(
                    self.slots[slot].phase,
                    Phase::Receiving { session } | Phase::Refused { session } if session == id
                );
                if current {
                    let s = &mut self.shards[shard];
                    s.accepted = accepted;
                    s.rejected = rejected.len();
                    out.push(Action::Report(Report::Subscribed {
                        shard,
                        accepted,
                        rejected,
                    }));
                }
            }
            SessionEvent::Ended(ended) => {
                let covering = self
                    .sessions
                    .remove(&id)
                    .is_some_and(|s| s.covering_since.is_some());
                self.on_ended(slot, id, covering, ended, now, out);
            }
            SessionEvent::Closed { .. } => {
                // A session we stopped without replacing it (a refused
                // standby, a parked slot): nothing was covering through it.
                self.sessions.remove(&id);
            }
        }
    }

    fn on_receiving(&mut self, id: SessionId, sub: Subscription, now: Now, out: &mut Vec<Action>) {
        let refused = sub.refused();
        let slot = self.sessions[&id].slot;
        let shard = self.slots[slot].shard;
        match self.slots[slot].phase.clone() {
            Phase::Connecting { session } if session == id => {
                self.subscribed(id, sub, now, out);
                if refused {
                    self.slots[slot].phase = Phase::Refused { session: id };
                } else {
                    self.slots[slot].phase = Phase::Receiving { session: id };
                    self.cover(id, now, out);
                }
                if let Some(notice) = self.sessions.get_mut(&id).and_then(|s| s.announced.take()) {
                    self.on_notice(id, notice, now, out);
                }
                self.check_token(slot, now, out);
            }
            Phase::Rotating {
                old,
                reason,
                standby: Some(standby),
                ..
            } if standby == id => {
                let old_covering = old
                    .and_then(|o| self.sessions.get(&o))
                    .is_some_and(|o| o.covering_since.is_some());
                if refused && old_covering {
                    // The new channel would receive nothing: keep the old.
                    out.push(Action::Report(Report::AllTopicsRejected { shard }));
                    self.stop(id, out);
                    let delay = self.slots[slot].backoff.next_delay(None);
                    self.move_waits(slot, old, reason, now.at + delay);
                    return;
                }
                self.subscribed(id, sub, now, out);
                // The new socket covers before the old one stops, so a
                // planned move never opens a gap.
                if !refused {
                    self.cover(id, now, out);
                }
                let promoted = self.sessions.get_mut(&id).expect("the standby is live");
                let announced = promoted.announced.take();
                self.slots[slot].phase = if !refused {
                    Phase::Receiving { session: id }
                } else {
                    Phase::Refused { session: id }
                };
                if let Some(old) = old {
                    self.retire(old, reason, now, out);
                }
                if let Some(notice) = announced {
                    self.on_notice(id, notice, now, out);
                }
                self.check_token(slot, now, out);
            }
            _ => {}
        }
    }

    /// Bookkeeping of a subscription: counts, rejections, expiry timer.
    fn subscribed(&mut self, id: SessionId, sub: Subscription, now: Now, out: &mut Vec<Action>) {
        let refused = sub.refused();
        let Subscription {
            channel,
            accepted,
            rejected,
        } = sub;
        let slot = self.sessions[&id].slot;
        let shard = self.slots[slot].shard;
        let s = &mut self.shards[shard];
        s.accepted = accepted;
        s.rejected = rejected.len();
        s.all_rejected = refused;
        out.push(Action::Report(Report::Subscribed {
            shard,
            accepted,
            rejected,
        }));
        if refused {
            out.push(Action::Report(Report::AllTopicsRejected { shard }));
        }
        let state = self.sessions.get_mut(&id).expect("the session is live");
        state.rotate_at = rotation_time(&channel, now);
        state.channel = Some(channel);
    }

    /// `id` covers its shard from now: closes the shard's gap, if open.
    fn cover(&mut self, id: SessionId, now: Now, out: &mut Vec<Action>) {
        let shard = self.slots[self.sessions[&id].slot].shard;
        if let Some(state) = self.sessions.get_mut(&id) {
            state.covering_since = Some(now.wall);
        }
        if let Some((since, reason)) = self.shards[shard].gap.take() {
            self.report_gap(shard, since, now.wall, reason, out);
        }
    }

    /// `id` stops covering its shard at `since`: a gap opens if it was the
    /// last one covering it (the shard is blind since the latest stop).
    fn uncover(
        &mut self,
        id: SessionId,
        since: SystemTime,
        reason: Reason,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(state) = self.sessions.get_mut(&id) else {
            return;
        };
        let slot = state.slot;
        if state.covering_since.take().is_none() {
            return;
        }
        self.uncovered(slot, since, reason, now, out);
    }

    fn uncovered(
        &mut self,
        slot: usize,
        since: SystemTime,
        reason: Reason,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let shard = self.slots[slot].shard;
        let s = &mut self.shards[shard];
        let stop = s.last_stop.map_or(since, |last| last.max(since));
        s.last_stop = Some(stop);
        if self.covering(shard) > 0 || self.shards[shard].gap.is_some() {
            return;
        }
        self.shards[shard].gap = Some((stop, reason));
        out.push(Action::GapOpened {
            shard,
            since: stop,
            reason,
        });
        // A parked slot takes over. If its own socket is still closing, the
        // new one is beyond the slot's channel: it waits for a spare, as a
        // standby does.
        for other in 0..self.slots.len() {
            if self.slots[other].shard == shard && self.slots[other].phase == Phase::Dormant {
                if self.sessions.values().any(|s| s.slot == other) {
                    self.move_waits(other, None, reason, now.at);
                } else {
                    let session = self.open(other, Via::New, Duration::ZERO, out);
                    self.slots[other].phase = Phase::Connecting { session };
                }
            }
        }
    }

    fn report_gap(
        &mut self,
        shard: usize,
        started_at: SystemTime,
        ended_at: SystemTime,
        reason: Reason,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::GapClosed {
            shard,
            gap: Gap {
                id: Gap::new_id(),
                started_at,
                ended_at: ended_at.max(started_at),
                reason,
                topics: self.shards[shard].topics.clone(),
            },
        });
    }

    /// Stops the replaced session `old`: it counts against the spares until
    /// its close is done, and its close tells whether it had been blind.
    fn retire(&mut self, old: SessionId, reason: Reason, now: Now, out: &mut Vec<Action>) {
        let Some(state) = self.sessions.get_mut(&old) else {
            return;
        };
        let slot = state.slot;
        let was_covering = state.covering_since.take().is_some();
        let shard = self.slots[slot].shard;
        // The replacement already covers, so this opens no gap; whether the
        // old socket was the shard's only one decides whether its blind
        // time (if its close reveals any) was the shard's.
        let alone = was_covering && self.covering(shard) == 1;
        let others_until = self.shards[shard].last_stop;
        if was_covering {
            self.uncovered(slot, now.wall, reason, now, out);
        }
        if let Some(state) = self.sessions.get_mut(&old) {
            state.retired = Some(Retired {
                at: now.wall,
                alone,
                others_until,
            });
        }
        out.push(Action::Stop { session: old });
    }

    fn stop(&mut self, id: SessionId, out: &mut Vec<Action>) {
        // Stopped sessions report `Closed`; until then they count.
        if let Some(state) = self.sessions.get_mut(&id) {
            state.retired = Some(Retired {
                at: SystemTime::UNIX_EPOCH,
                alone: false,
                others_until: None,
            });
        }
        out.push(Action::Stop { session: id });
    }

    fn on_notice(&mut self, id: SessionId, notice: Notice, now: Now, out: &mut Vec<Action>) {
        let slot = self.sessions[&id].slot;
        let shard = self.slots[slot].shard;
        match self.slots[slot].phase.clone() {
            Phase::Receiving { session } | Phase::Refused { session } if session == id => {
                if notice == Notice::AnotherChannelSubscribed
                    && self.redundancy > 1
                    && self.covering(shard) > 1
                {
                    // Our other channel took the topics: the server keeps
                    // one holder. Moving back would steal them, forever.
                    if !std::mem::replace(&mut self.shards[shard].single_holder, true) {
                        out.push(Action::Report(Report::SingleHolder { shard }));
                    }
                    self.slots[slot].phase = Phase::Dormant;
                    self.uncover(id, now.wall, notice.reason(), now, out);
                    self.stop(id, out);
                    return;
                }
                self.plan_move(slot, notice.reason(), notice.as_str(), now, out);
            }
            // Acted on once it is the slot's receiving session (it still
            // receives until the server closes it).
            Phase::Connecting { session } if session == id => {
                self.remember(id, notice);
            }
            Phase::Rotating { standby, .. } if standby == Some(id) => self.remember(id, notice),
            // The old socket of a move already under way: nothing new.
            _ => {}
        }
    }

    fn remember(&mut self, id: SessionId, notice: Notice) {
        if let Some(state) = self.sessions.get_mut(&id) {
            state.announced.get_or_insert(notice);
        }
    }

    /// Starts a make-before-break move of a receiving (or refused) slot.
    fn plan_move(
        &mut self,
        slot: usize,
        reason: Reason,
        detail: &str,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let (Phase::Receiving { session } | Phase::Refused { session }) = self.slots[slot].phase
        else {
            return;
        };
        out.push(Action::Report(Report::Moving {
            shard: self.slots[slot].shard,
            channel: self.channel_tag(session),
            reason,
            detail: detail.to_owned(),
        }));
        self.move_waits(slot, Some(session), reason, now.at);
    }

    fn channel_tag(&self, id: SessionId) -> Option<Arc<str>> {
        let channel = self.sessions.get(&id)?.channel.as_ref()?;
        Some(channel.id.tag().clone())
    }

    /// A receiving slot whose channel was made with an older token moves
    /// to one made with the new token while the old one still works.
    fn check_token(&mut self, slot: usize, now: Now, out: &mut Vec<Action>) {
        let Phase::Receiving { session } = self.slots[slot].phase else {
            return;
        };
        let stale = self
            .sessions
            .get(&session)
            .and_then(|s| s.channel.as_ref())
            .zip(self.token)
            .is_some_and(|(c, generation)| c.token_generation < generation);
        if stale {
            self.plan_move(slot, Reason::TokenRefresh, "new token", now, out);
        }
    }

    fn fire_timers(&mut self, now: Now, out: &mut Vec<Action>) {
        for slot in 0..self.slots.len() {
            match self.slots[slot].phase {
                // A refused channel moves too: a fresh subscription may be
                // granted what the last one was not.
                Phase::Receiving { session } | Phase::Refused { session } => {
                    let due = self
                        .sessions
                        .get(&session)
                        .and_then(|s| s.rotate_at)
                        .is_some_and(|at| at <= now.at);
                    if due {
                        self.plan_move(
                            slot,
                            Reason::ChannelExpiry,
                            "channel near expiry",
                            now,
                            out,
                        );
                        self.start_standby(slot, now, out);
                    }
                }
                Phase::Rotating {
                    standby: None,
                    not_before,
                    ..
                } if not_before <= now.at => self.start_standby(slot, now, out),
                _ => {}
            }
        }
    }

    /// The slot's move waits for its standby until `not_before`.
    fn move_waits(
        &mut self,
        slot: usize,
        old: Option<SessionId>,
        reason: Reason,
        not_before: Instant,
    ) {
        self.slots[slot].phase = Phase::Rotating {
            old,
            reason,
            standby: None,
            not_before,
        };
    }

    fn start_standby(&mut self, slot: usize, now: Now, out: &mut Vec<Action>) {
        let Phase::Rotating {
            old,
            reason,
            standby: None,
            not_before,
        } = self.slots[slot].phase
        else {
            return;
        };
        if not_before > now.at {
            return;
        }
        if self.spares_held() >= self.spares {
            // Other slots are mid-move; try again shortly.
            self.move_waits(slot, old, reason, now.at + SPARE_RETRY);
            return;
        }
        let standby = self.open(slot, Via::New, Duration::ZERO, out);
        self.slots[slot].phase = Phase::Rotating {
            old,
            reason,
            standby: Some(standby),
            not_before,
        };
    }

    /// `id` ended on its own (and is already forgotten); `covering`: it
    /// was covering its shard until then.
    fn on_ended(
        &mut self,
        slot: usize,
        id: SessionId,
        covering: bool,
        ended: Ended,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let shard = self.slots[slot].shard;
        match self.slots[slot].phase.clone() {
            Phase::Connecting { session }
            | Phase::Receiving { session }
            | Phase::Refused { session }
                if session == id =>
            {
                let lost = match &ended.cause {
                    Cause::Lost { reason, detail } => Some((*reason, detail.clone())),
                    Cause::Setup(_) => None,
                };
                if covering {
                    if let Some((reason, detail)) = &lost {
                        out.push(Action::Report(Report::Moving {
                            shard,
                            channel: ended.channel.as_ref().map(|c| c.id.tag().clone()),
                            reason: *reason,
                            detail: detail.clone(),
                        }));
                    }
                    let reason = lost.as_ref().map_or(Reason::SocketError, |(r, _)| *r);
                    self.uncovered(slot, ended.last_frame, reason, now, out);
                }
                self.recover(slot, ended, true, Duration::ZERO, out);
            }
            Phase::Rotating {
                old: Some(old),
                reason,
                standby,
                not_before,
            } if old == id => {
                // The old socket of a planned move ended first: the move's
                // reason is what the operator asked about.
                if covering {
                    self.uncovered(slot, ended.last_frame, reason, now, out);
                }
                self.slots[slot].backoff.connection_ended(ended.up_for);
                match standby {
                    // A replacement is on its way; its arrival closes the gap.
                    Some(_) => {
                        self.slots[slot].phase = Phase::Rotating {
                            old: None,
                            reason,
                            standby,
                            not_before,
                        }
                    }
                    // A move was planned because this channel is going away
                    // (topics moved off it, its token is stale): never reuse
                    // it then.
                    None => {
                        let reusable =
                            !matches!(reason, Reason::ChannelGone | Reason::TokenRefresh);
                        // A standby refused with a Retry-After set `not_before`.
                        let owed = not_before.saturating_duration_since(now.at);
                        self.recover(slot, ended, reusable, owed, out);
                    }
                }
            }
            Phase::Rotating {
                old,
                reason,
                standby: Some(standby),
                ..
            } if standby == id => {
                let delay = self.slots[slot].backoff.next_delay(ended.retry_after);
                out.push(Action::Report(Report::StandbyFailed {
                    shard,
                    detail: detail_of(&ended.cause).to_owned(),
                    retry_in: delay,
                }));
                match old {
                    Some(old) => {
                        self.move_waits(slot, Some(old), reason, now.at + delay);
                    }
                    None => {
                        let session = self.open(slot, Via::New, delay, out);
                        self.slots[slot].phase = Phase::Connecting { session };
                    }
                }
            }
            _ => {}
        }
    }

    /// Starts a replacement for a session that ended without a standby. The
    /// old channel is reused (after a HEAD) only when its socket had been
    /// receiving: then its subscriptions are known to live on the server. A
    /// channel whose set-up failed may never have been subscribed, or may be
    /// dead while HEAD still says 200; it is replaced.
    /// `at_least`: a wait the slot already owes (a standby's Retry-After).
    fn recover(
        &mut self,
        slot: usize,
        ended: Ended,
        reusable: bool,
        at_least: Duration,
        out: &mut Vec<Action>,
    ) {
        let backoff = &mut self.slots[slot].backoff;
        backoff.connection_ended(ended.up_for);
        let delay = backoff.next_delay(ended.retry_after).max(at_least);
        let via = match (&ended.cause, ended.channel) {
            (Cause::Lost { reason, .. }, Some(channel))
                if reusable && *reason != Reason::ChannelGone =>
            {
                Via::Check(channel)
            }
            (Cause::Setup(detail), channel) => {
                out.push(Action::Report(Report::SetupFailed {
                    shard: self.slots[slot].shard,
                    channel: channel.map(|c| c.id.tag().clone()),
                    detail: detail.clone(),
                    retry_in: delay,
                }));
                Via::New
            }
            _ => Via::New,
        };
        let session = self.open(slot, via, delay, out);
        self.slots[slot].phase = Phase::Connecting { session };
    }
}

fn detail_of(cause: &Cause) -> &str {
    match cause {
        Cause::Setup(detail) | Cause::Lost { detail, .. } => detail,
    }
}

/// When to move a channel ahead of its expiry: a quarter of its remaining
/// life early, at most five minutes early.
fn rotation_time(channel: &Channel, now: Now) -> Option<Instant> {
    // Past its expiry already (a reused channel): move at once.
    let left = channel
        .expires?
        .duration_since(now.wall)
        .unwrap_or_default();
    let margin = (left / 4).min(Duration::from_secs(300));
    Some(now.at + left - margin)
}

#[cfg(test)]
mod tests {
    //! Property tests: random sequences of what sessions report, tokens and
    //! time, played against the machine by a small world that keeps the
    //! truth (which socket really receives when), and checks after every
    //! step what the bridge promises.

    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;
    use crate::genesys::api::ChannelId;

    const MAX_CHANNELS: usize = 20;

    fn policy() -> Policy {
        Policy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            stable_after: Duration::from_secs(30),
        }
    }

    /// What the world does next; indices pick among the sessions for which
    /// the move makes sense (modulo their number).
    #[derive(Debug, Clone)]
    enum Op {
        /// Time passes.
        Advance(u64),
        /// A session due to start comes up (`refused`: every topic rejected).
        Up {
            pick: usize,
            refused: bool,
            expires_in: Option<u64>,
        },
        /// A session's set-up fails, perhaps with a Retry-After.
        SetupFails {
            pick: usize,
            retry_after: Option<u64>,
        },
        /// The server announces a receiving socket's end.
        Notice { pick: usize, notice: usize },
        /// A receiving socket stops, as its session notices (if it had gone
        /// silent before, its last frame is that moment).
        Lose { pick: usize, reason: usize },
        /// A receiving socket goes silent; its session does not know yet.
        Stall { pick: usize },
        /// A stopped session finishes its close.
        Finish { pick: usize },
        /// A new access token.
        Token,
        /// The topic set grows by a shard (the directory grew), if the
        /// budget has room for it.
        Grow,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..3_000).prop_map(Op::Advance),
            6 => (any::<usize>(), prop::bool::weighted(0.08), prop::option::weighted(0.3, 5u64..120))
                .prop_map(|(pick, refused, expires_in)| Op::Up { pick, refused, expires_in }),
            2 => (any::<usize>(), prop::option::weighted(0.4, 1u64..10_000))
                .prop_map(|(pick, retry_after)| Op::SetupFails { pick, retry_after }),
            2 => (any::<usize>(), 0usize..4).prop_map(|(pick, notice)| Op::Notice { pick, notice }),
            2 => (any::<usize>(), 0usize..4).prop_map(|(pick, reason)| Op::Lose { pick, reason }),
            1 => any::<usize>().prop_map(|pick| Op::Stall { pick }),
            4 => any::<usize>().prop_map(|pick| Op::Finish { pick }),
            1 => Just(Op::Token),
            1 => Just(Op::Grow),
        ]
    }

    const NOTICES: [Notice; 4] = [
        Notice::SocketClosing,
        Notice::AnotherChannelSubscribed,
        Notice::NoLongerSubscribed,
        Notice::TokenRevoked,
    ];
    const LOST: [Reason; 4] = [
        Reason::SocketError,
        Reason::ServerClose,
        Reason::HeartbeatTimeout,
        Reason::ChannelGone,
    ];

    /// A session as the world sees it.
    struct Sim {
        shard: usize,
        via: Via,
        ready_at: Instant,
        channel: Option<Channel>,
        /// Up (said Receiving), with every topic accepted.
        covering: bool,
        /// Gone silent at this moment (the truth; the machine learns later).
        stalled: Option<SystemTime>,
        /// Told to stop.
        stopped: bool,
    }

    struct World {
        machine: Machine,
        now: Now,
        sims: BTreeMap<SessionId, Sim>,
        /// Per shard: sockets truly receiving, and since when none has been
        /// (after the first one came up).
        truth: Vec<(usize, Option<SystemTime>)>,
        ever_covered: Vec<bool>,
        truth_gaps: Vec<Vec<(SystemTime, SystemTime)>>,
        reported: Vec<Vec<(SystemTime, SystemTime)>>,
        open: Vec<Option<SystemTime>>,
        next_channel: u64,
        token: u64,
        stalls: usize,
        redundancy: usize,
        /// Per shard: the latest end of a Retry-After it was given.
        owed: Vec<Option<Instant>>,
    }

    fn channel(n: u64, generation: u64, now: Now, expires_in: Option<u64>) -> Channel {
        Channel {
            id: ChannelId::new(&format!("streaming-0-{n}")),
            connect_uri: serde_json::from_str(&format!(
                "\"ws://127.0.0.1:9/channels/streaming-0-{n}\""
            ))
            .expect("a JSON string"),
            expires: Some(now.wall + Duration::from_secs(expires_in.unwrap_or(86_400))),
            token_generation: generation,
            token_expires_at: now.at + Duration::from_secs(3600),
            subscribed: Arc::from(Vec::new()),
        }
    }

    impl World {
        fn new(shards: usize, redundancy: usize, jitter: f64) -> Self {
            let topics = (0..shards)
                .map(|s| Arc::from(vec![format!("v2.users.{s}.presence")]))
                .collect();
            let machine = Machine::new(topics, redundancy, MAX_CHANNELS, move || {
                Backoff::new(&policy()).with_fixed_jitter(jitter)
            });
            let mut world = Self {
                machine,
                now: Now::current(),
                sims: BTreeMap::new(),
                truth: vec![(0, None); shards],
                ever_covered: vec![false; shards],
                truth_gaps: vec![Vec::new(); shards],
                reported: vec![Vec::new(); shards],
                open: vec![None; shards],
                next_channel: 0,
                token: 1,
                stalls: 0,
                redundancy,
                owed: vec![None; shards],
            };
            let actions = world.machine.start();
            world.apply(actions, None);
            world.step(Input::Token { generation: 1 }, None);
            world
        }

        fn truly_down(&mut self, shard: usize, at: SystemTime) {
            let t = &mut self.truth[shard];
            t.0 -= 1;
            if t.0 == 0 {
                t.1 = Some(at);
            }
        }

        fn truly_up(&mut self, shard: usize, at: SystemTime) {
            let t = &mut self.truth[shard];
            if t.0 == 0 {
                if let Some(since) = t.1.take() {
                    self.truth_gaps[shard].push((since, at));
                }
            }
            t.0 += 1;
            self.ever_covered[shard] = true;
        }

        /// Feeds one input; checks every promise on what comes out.
        fn step(&mut self, input: Input, retry_after: Option<(usize, Duration)>) {
            if std::env::var_os("MACHINE_TRACE").is_some() {
                let what = match &input {
                    Input::Session { id, event } => format!("session {id}: {event:?}")
                        .chars()
                        .take(160)
                        .collect(),
                    Input::Token { generation } => format!("token {generation}"),
                    Input::Tick => "tick".into(),
                    Input::Shards(shards) => format!("{} shards", shards.len()),
                };
                eprintln!(
                    "t={:?} {what}",
                    self.now
                        .wall
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis()
                        % 100_000
                );
            }
            let actions = self.machine.step(input, self.now);
            if std::env::var_os("MACHINE_TRACE").is_some() {
                for a in &actions {
                    eprintln!(
                        "    -> {}",
                        format!("{a:?}").chars().take(160).collect::<String>()
                    );
                }
                eprintln!(
                    "    phases {:?} truth {:?}",
                    (0..self.machine.slot_count())
                        .map(|s| self.machine.phase(s).clone())
                        .collect::<Vec<_>>(),
                    self.truth.iter().map(|t| t.0).collect::<Vec<_>>()
                );
            }
            self.apply(actions, retry_after);
        }

        fn apply(&mut self, actions: Vec<Action>, retry_after: Option<(usize, Duration)>) {
            let mut opened = Vec::new();
            for action in actions {
                match action {
                    Action::Open {
                        session,
                        shard,
                        via,
                        delay,
                    } => {
                        // Never two live sessions on one channel.
                        if let Via::Check(c) = &via {
                            assert!(
                                !self
                                    .sims
                                    .values()
                                    .any(|s| s.channel.as_ref().is_some_and(|o| o.id == c.id)),
                                "a second session on a live channel"
                            );
                        }
                        // Backoff: never beyond its cap (but for a Retry-After,
                        // this step's or one the shard still owes).
                        let owed = self.owed[shard]
                            .map_or(Duration::ZERO, |t| t.saturating_duration_since(self.now.at));
                        let asked = retry_after.map_or(Duration::ZERO, |r| r.1);
                        assert!(delay <= policy().max.max(asked).max(owed), "{delay:?}");
                        opened.push((shard, delay));
                        self.sims.insert(
                            session,
                            Sim {
                                shard,
                                via,
                                ready_at: self.now.at + delay,
                                channel: None,
                                covering: false,
                                stalled: None,
                                stopped: false,
                            },
                        );
                    }
                    Action::Stop { session } => {
                        let now = self.now.wall;
                        let sim = self.sims.get_mut(&session).expect("stop a live session");
                        assert!(!sim.stopped, "stopped twice");
                        sim.stopped = true;
                        if sim.covering && sim.stalled.is_none() {
                            let shard = sim.shard;
                            self.truly_down(shard, now);
                        }
                    }
                    Action::GapOpened { shard, since, .. } => {
                        assert!(self.open[shard].is_none(), "a gap opened twice");
                        self.open[shard] = Some(since);
                    }
                    Action::GapClosed { shard, gap } => {
                        assert!(gap.started_at <= gap.ended_at);
                        self.reported[shard].push((gap.started_at, gap.ended_at));
                        if self.open[shard] == Some(gap.started_at) {
                            self.open[shard] = None;
                        }
                    }
                    Action::Report(_) => {}
                }
            }
            // A Retry-After is honoured: the retry of that shard waits.
            if let Some((shard, at_least)) = retry_after {
                if let Some(&(_, delay)) = opened.iter().find(|(s, _)| *s == shard) {
                    assert!(
                        delay >= at_least,
                        "retried after {delay:?}, asked {at_least:?}"
                    );
                }
            }
            // No gap is open while a socket of the shard truly receives:
            // a planned move, in particular, never opens one.
            for shard in 0..self.open.len() {
                if self.open[shard].is_some() {
                    assert_eq!(
                        self.truth[shard].0, 0,
                        "a gap open while shard {shard} receives"
                    );
                }
            }
            // Every reported blind interval was blind.
            for shard in 0..self.reported.len() {
                for &(a, b) in &self.reported[shard] {
                    assert!(
                        self.truth_gaps[shard]
                            .iter()
                            .chain(self.truth[shard].1.map(|s| (s, self.now.wall)).as_ref())
                            .any(|&(ta, tb)| ta <= a && b <= tb),
                        "reported gap {a:?}..{b:?} of shard {shard} was not blind: {:?}",
                        self.truth_gaps[shard]
                    );
                }
            }
            // Never more channels than Genesys allows, spares included.
            assert!(
                self.sims.len() <= MAX_CHANNELS,
                "{} sessions",
                self.sims.len()
            );
            assert_eq!(self.sims.len(), self.machine.live_sessions());
        }

        fn pick(&self, pick: usize, ok: impl Fn(&Sim) -> bool) -> Option<SessionId> {
            let ids: Vec<SessionId> = self
                .sims
                .iter()
                .filter(|(_, s)| ok(s))
                .map(|(id, _)| *id)
                .collect();
            (!ids.is_empty()).then(|| ids[pick % ids.len()])
        }

        fn advance(&mut self, by: Duration) {
            self.now.at += by;
            self.now.wall += by;
        }

        fn play(&mut self, op: Op) {
            let now = self.now;
            match op {
                Op::Grow => {
                    let shards = self.machine.shard_count();
                    if (shards + 1) * self.redundancy >= MAX_CHANNELS {
                        return;
                    }
                    let mut lists: Vec<Arc<[String]>> = (0..shards)
                        .map(|s| self.machine.topics(s).clone())
                        .collect();
                    lists.push(Arc::from(vec![format!("v2.users.{shards}.presence")]));
                    self.truth.push((0, None));
                    self.ever_covered.push(false);
                    self.truth_gaps.push(Vec::new());
                    self.reported.push(Vec::new());
                    self.open.push(None);
                    self.owed.push(None);
                    let live = self.sims.len();
                    self.step(Input::Shards(lists), None);
                    // The new shard's slots open (as the budget allows),
                    // and nothing else moves.
                    assert!(self.sims.len() <= live + self.redundancy);
                    assert_eq!(self.machine.shard_count(), shards + 1);
                }
                Op::Advance(ms) => {
                    self.advance(Duration::from_millis(ms));
                    self.step(Input::Tick, None);
                }
                Op::Up {
                    pick,
                    refused,
                    expires_in,
                } => {
                    let Some(id) = self.pick(pick, |s| {
                        !s.stopped && s.channel.is_none() && s.ready_at <= now.at
                    }) else {
                        return;
                    };
                    self.up(id, refused, expires_in);
                }
                Op::SetupFails { pick, retry_after } => {
                    let Some(id) = self.pick(pick, |s| {
                        !s.stopped && s.channel.is_none() && s.ready_at <= now.at
                    }) else {
                        return;
                    };
                    let sim = self.sims.remove(&id).expect("picked");
                    let retry_after = retry_after.map(Duration::from_millis);
                    if let Some(r) = retry_after {
                        let until = now.at + r;
                        let owed = &mut self.owed[sim.shard];
                        *owed = Some(owed.map_or(until, |t| t.max(until)));
                    }
                    let channel = match sim.via {
                        Via::Check(c) => Some(c),
                        Via::New => None,
                    };
                    self.step(
                        Input::Session {
                            id,
                            event: SessionEvent::Ended(Ended {
                                cause: Cause::Setup("refused".into()),
                                last_frame: now.wall,
                                channel,
                                retry_after,
                                up_for: Duration::ZERO,
                            }),
                        },
                        retry_after.map(|r| (sim.shard, r)),
                    );
                }
                Op::Notice { pick, notice } => {
                    let Some(id) = self.pick(pick, |s| {
                        !s.stopped && s.channel.is_some() && s.stalled.is_none()
                    }) else {
                        return;
                    };
                    self.step(
                        Input::Session {
                            id,
                            event: SessionEvent::Notice(NOTICES[notice]),
                        },
                        None,
                    );
                }
                Op::Lose { pick, reason } => {
                    // A stopped session may end on its own before its close.
                    let Some(id) = self.pick(pick, |s| s.channel.is_some()) else {
                        return;
                    };
                    let sim = self.sims.remove(&id).expect("picked");
                    if sim.covering && sim.stalled.is_none() && !sim.stopped {
                        self.truly_down(sim.shard, now.wall);
                    }
                    let last_frame = sim.stalled.unwrap_or(now.wall);
                    self.step(
                        Input::Session {
                            id,
                            event: SessionEvent::Ended(Ended {
                                cause: Cause::Lost {
                                    reason: LOST[reason],
                                    detail: "lost".into(),
                                },
                                last_frame,
                                channel: sim.channel,
                                retry_after: None,
                                up_for: Duration::from_secs(1),
                            }),
                        },
                        None,
                    );
                }
                Op::Stall { pick } => {
                    let Some(id) =
                        self.pick(pick, |s| !s.stopped && s.covering && s.stalled.is_none())
                    else {
                        return;
                    };
                    self.stalls += 1;
                    let sim = self.sims.get_mut(&id).expect("picked");
                    sim.stalled = Some(now.wall);
                    let shard = sim.shard;
                    self.truly_down(shard, now.wall);
                }
                Op::Finish { pick } => {
                    let Some(id) = self.pick(pick, |s| s.stopped) else {
                        return;
                    };
                    self.finish(id);
                }
                Op::Token => {
                    self.token += 1;
                    self.step(
                        Input::Token {
                            generation: self.token,
                        },
                        None,
                    );
                }
            }
        }

        fn up(&mut self, id: SessionId, refused: bool, expires_in: Option<u64>) {
            let now = self.now;
            let sim = self.sims.get_mut(&id).expect("a live session");
            let channel = match &sim.via {
                Via::Check(c) => c.clone(),
                Via::New => {
                    self.next_channel += 1;
                    channel(self.next_channel, self.token, now, expires_in)
                }
            };
            sim.channel = Some(channel.clone());
            sim.covering = !refused;
            let shard = sim.shard;
            if !refused {
                self.truly_up(shard, now.wall);
            }
            self.step(
                Input::Session {
                    id,
                    event: SessionEvent::Receiving(Subscription {
                        channel,
                        accepted: usize::from(!refused),
                        rejected: if refused {
                            vec![("v2.users.x.presence".into(), "forbidden".into())]
                        } else {
                            Vec::new()
                        },
                    }),
                },
                None,
            );
        }

        fn finish(&mut self, id: SessionId) {
            let sim = self.sims.remove(&id).expect("a live session");
            let blind_since = sim.stalled.map(|at| (at, Reason::HeartbeatTimeout));
            self.step(
                Input::Session {
                    id,
                    event: SessionEvent::Closed { blind_since },
                },
                None,
            );
        }

        /// No more faults: sessions come up, closes finish, timers fire.
        /// Every slot must settle receiving (or parked beside a receiving
        /// one): no state waits forever.
        fn calm(&mut self) {
            for _ in 0..5_000 {
                let stopped: Vec<SessionId> = self
                    .sims
                    .iter()
                    .filter(|(_, s)| s.stopped)
                    .map(|(id, _)| *id)
                    .collect();
                for id in stopped {
                    self.finish(id);
                }
                // A silent socket is found out by its watchdog.
                if let Some(id) = self.pick(0, |s| s.stalled.is_some()) {
                    self.play(Op::Lose { pick: 0, reason: 2 });
                    let _ = id;
                    continue;
                }
                let pending: Vec<(SessionId, Instant)> = self
                    .sims
                    .iter()
                    .filter(|(_, s)| s.channel.is_none())
                    .map(|(id, s)| (*id, s.ready_at))
                    .collect();
                if let Some(&(id, at)) = pending.iter().min_by_key(|(_, at)| *at) {
                    if at > self.now.at {
                        self.advance(at - self.now.at);
                    }
                    self.up(id, false, None);
                    continue;
                }
                let settled = (0..self.machine.slot_count()).all(|slot| {
                    matches!(
                        self.machine.phase(slot),
                        Phase::Receiving { .. } | Phase::Dormant
                    )
                });
                if settled {
                    break;
                }
                // Whatever waits, waits for a timer.
                let at = self
                    .machine
                    .next_deadline()
                    .expect("a state with nothing to wait for");
                if at > self.now.at {
                    self.advance(at - self.now.at);
                }
                self.step(Input::Tick, None);
            }
            for slot in 0..self.machine.slot_count() {
                assert!(
                    matches!(
                        self.machine.phase(slot),
                        Phase::Receiving { .. } | Phase::Dormant
                    ),
                    "slot {slot} wedged in {:?}",
                    self.machine.phase(slot)
                );
            }
            for shard in 0..self.open.len() {
                assert_eq!(self.machine.coverage(shard), Coverage::Receiving);
                assert!(self.open[shard].is_none());
            }
            assert_eq!(self.sims.len(), self.machine.live_sessions());
        }

        /// Every blind interval was reported once, with its true bounds.
        /// Exact with one slot per shard, or when no socket went silent: with
        /// two, a silent socket's blind time can hide behind the other
        /// one's (its end is learnt only when its watchdog fires).
        fn check_gaps(&self) {
            if self.redundancy > 1 && self.stalls > 0 {
                return;
            }
            // Instants are discrete here: a socket lost and its replacement
            // up at the same instant is no blind time, whoever reports it.
            let blind = |gaps: &[(SystemTime, SystemTime)]| {
                let mut gaps: Vec<_> = gaps.iter().copied().filter(|(a, b)| a < b).collect();
                gaps.sort();
                gaps
            };
            for shard in 0..self.truth_gaps.len() {
                let reported = blind(&self.reported[shard]);
                let truth = blind(&self.truth_gaps[shard]);
                assert_eq!(reported, truth, "shard {shard}: reported vs true gaps");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn the_machine_keeps_its_promises(
            shards in 1usize..4,
            redundancy in 1usize..3,
            jitter in 0.0f64..=1.0,
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut world = World::new(shards, redundancy, jitter);
            for op in ops {
                world.play(op);
            }
            world.calm();
            world.check_gaps();
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Nineteen slots, or eighteen as nine shards of two (the most a
        /// configuration allows): moves and parked slots wait for a spare
        /// instead of exceeding the budget.
        #[test]
        fn a_full_budget_is_never_exceeded(
            redundancy in 1usize..3,
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let shards = if redundancy == 1 { 19 } else { 9 };
            let mut world = World::new(shards, redundancy, 0.5);
            for op in ops {
                world.play(op);
            }
            world.calm();
        }
    }

    /// A planned move, step by step: the standby comes up before the old
    /// socket is stopped, so no gap; the old one's close says it was alive.
    #[test]
    fn socket_closing_moves_make_before_break() {
        let mut w = World::new(1, 1, 1.0);
        let first = 0;
        w.up(first, false, None);
        assert_eq!(w.machine.phase(0), &Phase::Receiving { session: first });
        w.play(Op::Notice { pick: 0, notice: 0 });
        let Phase::Rotating {
            standby: Some(standby),
            old: Some(old),
            ..
        } = *w.machine.phase(0)
        else {
            panic!("a standby at once: {:?}", w.machine.phase(0));
        };
        assert_eq!(old, first);
        w.advance(Duration::from_millis(300));
        w.up(standby, false, None);
        assert_eq!(w.machine.phase(0), &Phase::Receiving { session: standby });
        assert!(w.sims[&first].stopped, "the old socket is stopped after");
        w.finish(first);
        w.calm();
        assert!(w.reported[0].is_empty(), "no gap: {:?}", w.reported[0]);
    }

    /// A socket that went silent just before a planned move hid its blind
    /// time; its close reveals it and the gap is reported from its last frame.
    #[test]
    fn a_silent_socket_replaced_by_a_move_reports_its_gap() {
        let mut w = World::new(1, 1, 1.0);
        w.up(0, false, None);
        w.advance(Duration::from_secs(5));
        let silent_at = w.now.wall;
        w.play(Op::Stall { pick: 0 });
        w.advance(Duration::from_millis(1500));
        w.play(Op::Token);
        let Phase::Rotating {
            standby: Some(standby),
            ..
        } = *w.machine.phase(0)
        else {
            panic!("moving to the new token");
        };
        w.advance(Duration::from_millis(200));
        let up_at = w.now.wall;
        w.up(standby, false, None);
        assert!(w.reported[0].is_empty(), "unknown until the close");
        w.finish(0);
        assert_eq!(w.reported[0], [(silent_at, up_at)]);
        w.calm();
        w.check_gaps();
    }

    /// Set-up failures back off, and a Retry-After is a floor.
    #[test]
    fn failures_back_off_and_honour_retry_after() {
        let mut w = World::new(1, 1, 1.0);
        let mut delays = Vec::new();
        for retry_after in [None, None, None, Some(7_000), None] {
            let id = *w.sims.keys().next().expect("a session");
            let ready = w.sims[&id].ready_at;
            w.advance(ready.saturating_duration_since(w.now.at));
            w.play(Op::SetupFails {
                pick: 0,
                retry_after,
            });
            let next = w.sims.values().next().expect("a retry");
            delays.push((next.ready_at - w.now.at).as_millis());
        }
        assert_eq!(delays, [100, 200, 400, 7_000, 1_600]);
    }

    /// A standby refused with a Retry-After, then the old socket closes as
    /// announced: the replacement still waits what the server asked.
    #[test]
    fn a_retry_after_owed_by_a_move_outlives_the_old_socket() {
        let mut w = World::new(1, 1, 1.0);
        w.up(0, false, None);
        w.play(Op::Notice { pick: 0, notice: 0 });
        let Phase::Rotating {
            standby: Some(standby),
            ..
        } = *w.machine.phase(0)
        else {
            panic!("moving");
        };
        let pick = w.sims.keys().position(|&id| id == standby).expect("live");
        w.play(Op::SetupFails {
            pick,
            retry_after: Some(60_000),
        });
        w.advance(Duration::from_secs(2));
        w.play(Op::Lose { pick: 0, reason: 1 });
        let (_, next) = w.sims.iter().next().expect("a replacement");
        assert!(
            next.ready_at >= w.now.at + Duration::from_secs(58),
            "waits out the Retry-After: {:?}",
            next.ready_at - w.now.at
        );
    }

    /// A parked slot woken while its own socket is still closing waits for
    /// a spare like a standby: 9 shards x 2 slots, both spares in use.
    #[test]
    fn a_parked_slot_woken_while_closing_waits_for_a_spare() {
        let mut w = World::new(9, 2, 1.0);
        for id in 0..18 {
            w.up(id, false, None);
        }
        // Two other shards move: both spares in use.
        w.play(Op::Notice { pick: 2, notice: 0 });
        w.play(Op::Notice { pick: 4, notice: 0 });
        // Shard 0's second slot is parked; its socket is still closing.
        w.step(
            Input::Session {
                id: 1,
                event: SessionEvent::Notice(Notice::AnotherChannelSubscribed),
            },
            None,
        );
        assert_eq!(w.machine.phase(1), &Phase::Dormant);
        // Shard 0's first socket is lost: the parked slot must take over,
        // but not beyond the budget.
        w.play(Op::Lose { pick: 0, reason: 0 });
        assert!(w.sims.len() <= MAX_CHANNELS);
        w.calm();
    }

    /// The channel budget holds with every slot moving at once.
    #[test]
    fn moves_wait_for_a_spare_channel() {
        let mut w = World::new(19, 1, 1.0);
        for id in 0..19 {
            w.up(id, false, None);
        }
        w.play(Op::Token);
        let standbys = (0..19)
            .filter(|&s| {
                matches!(
                    w.machine.phase(s),
                    Phase::Rotating {
                        standby: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(standbys, 1, "one spare: one move at a time");
        w.calm();
        let by_shard: HashMap<usize, usize> = w.sims.values().fold(HashMap::new(), |mut m, s| {
            *m.entry(s.shard).or_default() += 1;
            m
        });
        assert!(by_shard.values().all(|&n| n == 1));
        let channels: BTreeSet<_> = w
            .sims
            .values()
            .filter_map(|s| s.channel.as_ref().map(|c| c.id.expose().to_owned()))
            .collect();
        assert_eq!(channels.len(), 19);
    }
}
