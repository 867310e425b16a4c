//! What the emulator remembers for the tests to check: the event log (every
//! published event and the channels it was actually written to), the
//! request log, and the public record types for channels, sockets and
//! coverage gaps.
//!
//! The event log is built for long runs: in `Full` mode a record costs about
//! 64 bytes, in `Compact` mode one bit, and `max_records` bounds either.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::RecordMode;
use crate::faults::RequestKind;
use crate::time::{ser_opt_time, ser_time};

/// One published event, as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// The value of `eventBody.emulatorSequence`.
    pub seq: u64,
    /// The topic it was published on.
    pub topic: String,
    /// The instant it was published (one instant for every channel).
    #[serde(serialize_with = "ser_time")]
    pub published_at: SystemTime,
    /// Channels whose socket got the frame written and flushed while healthy
    /// (not stalled, dropped or dead).
    pub channels: Vec<String>,
}

impl EventRecord {
    /// Reached at least one socket: a bridge that never lost anything must
    /// have it.
    pub fn deliverable(&self) -> bool {
        !self.channels.is_empty()
    }
}

/// Counters over the whole run, kept in every record mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventStats {
    /// Events published since the last clear.
    pub published: u64,
    /// Of those, events that reached at least one socket.
    pub deliverable: u64,
    /// Records still held (the rest were cut by `max_records`).
    pub retained: u64,
    /// Sequence number the next event will get.
    pub next_seq: u64,
}

/// One HTTP or WebSocket request. Never holds a token or a query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// When the request arrived.
    #[serde(serialize_with = "ser_time")]
    pub at: SystemTime,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// What kind of request it was.
    pub kind: RequestKind,
    /// Status answered (101 for an accepted WebSocket).
    pub status: u16,
}

/// A stretch of time during which a topic that had been covered had no
/// healthy subscribed socket: events published then are lost for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// When the last healthy subscribed socket went away (or stalled).
    #[serde(serialize_with = "ser_time")]
    pub start: SystemTime,
    /// When a healthy subscribed socket came back; `None` while open.
    #[serde(serialize_with = "ser_opt_time")]
    pub end: Option<SystemTime>,
}

/// Why a socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client sent a close frame.
    ClientClosed,
    /// The connection ended without a close frame from the client.
    ConnectionLost,
    /// Fault: TCP ended without a close frame.
    Dropped,
    /// Closed after `v2.system.socket_closing` and its grace.
    SocketClosing,
    /// A second socket connected to the same channel.
    Replaced,
    /// The socket's queue overflowed and it was dropped.
    SlowConsumer,
    /// The emulator shut down.
    Shutdown,
}

/// Why a channel died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathReason {
    /// Its lifetime ran out, or the expire fault.
    Expired,
    /// The token that created it expired.
    TokenExpired,
    /// The token that created it was revoked.
    TokenRevoked,
    /// A newer channel pushed it out of the per-client limit.
    Evicted,
}

/// One socket's life on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketRecord {
    /// Emulator-wide socket number.
    pub socket_id: u64,
    /// When the upgrade was accepted.
    #[serde(serialize_with = "ser_time")]
    pub connected_at: SystemTime,
    /// When a stall fault hit it, if one did.
    #[serde(serialize_with = "ser_opt_time")]
    pub stalled_at: Option<SystemTime>,
    /// When it ended; `None` while open.
    #[serde(serialize_with = "ser_opt_time")]
    pub disconnected_at: Option<SystemTime>,
    /// Why it ended.
    pub reason: Option<DisconnectReason>,
    /// The channel was already dead when this socket connected.
    pub dead_channel: bool,
}

/// A channel as the tests see it, dead ones included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelInfo {
    /// `streaming-0-...`.
    pub id: String,
    /// When it was created.
    #[serde(serialize_with = "ser_time")]
    pub created_at: SystemTime,
    /// When it expires unless extended.
    #[serde(serialize_with = "ser_time")]
    pub expires_at: SystemTime,
    /// Subscribed topic strings, as given (combined ones unexpanded).
    pub topics: Vec<String>,
    /// Still alive.
    pub alive: bool,
    /// When and why it died.
    #[serde(serialize_with = "ser_opt_time")]
    pub died_at: Option<SystemTime>,
    /// Why it died.
    pub death: Option<DeathReason>,
    /// A socket is attached now.
    pub socket_open: bool,
    /// That socket is stalled.
    pub stalled: bool,
    /// Every socket it has had, oldest first.
    pub sockets: Vec<SocketRecord>,
}

/// The channels one event reached, stored without a heap allocation in the
/// common case of one channel.
#[derive(Debug, Clone, Default)]
enum ChanSet {
    #[default]
    Empty,
    One(u32),
    Many(Vec<u32>),
}

impl ChanSet {
    /// Adds `c`; returns true when the set was empty before.
    fn insert(&mut self, c: u32) -> bool {
        match self {
            ChanSet::Empty => {
                *self = ChanSet::One(c);
                true
            }
            ChanSet::One(x) if *x == c => false,
            ChanSet::One(x) => {
                *self = ChanSet::Many(vec![*x, c]);
                false
            }
            ChanSet::Many(v) => {
                if !v.contains(&c) {
                    v.push(c);
                }
                false
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (one, many): (Option<u32>, &[u32]) = match self {
            ChanSet::Empty => (None, &[]),
            ChanSet::One(x) => (Some(*x), &[]),
            ChanSet::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    fn is_empty(&self) -> bool {
        matches!(self, ChanSet::Empty)
    }
}

#[derive(Debug)]
struct Rec {
    published_at: SystemTime,
    topic: Arc<str>,
    channels: ChanSet,
}

/// The event log. Sequence numbers are contiguous from `first_seq`.
#[derive(Debug)]
pub(crate) struct EventLog {
    mode: RecordMode,
    max_records: Option<usize>,
    /// Seq of `records[0]` (Full) or of bit 0 (Compact).
    first_seq: u64,
    /// Seq the next pushed event must have; also the count of events ever.
    next_seq: u64,
    records: VecDeque<Rec>,
    /// Compact mode: bit i = event `first_seq + i` was delivered.
    bits: VecDeque<u64>,
    bits_len: u64,
    published: u64,
    deliverable: u64,
}

impl EventLog {
    pub(crate) fn new(mode: RecordMode, max_records: Option<usize>, first_seq: u64) -> Self {
        EventLog {
            mode,
            max_records,
            first_seq,
            next_seq: first_seq,
            records: VecDeque::new(),
            bits: VecDeque::new(),
            bits_len: 0,
            published: 0,
            deliverable: 0,
        }
    }

    /// Forgets every record and counter; sequence numbers go on.
    pub(crate) fn clear(&mut self) {
        *self = EventLog::new(self.mode, self.max_records, self.next_seq);
    }

    pub(crate) fn set_mode(&mut self, mode: RecordMode, max_records: Option<usize>) {
        self.mode = mode;
        self.max_records = max_records;
        self.clear();
    }

    pub(crate) fn push(&mut self, seq: u64, topic: Arc<str>, published_at: SystemTime) {
        if seq != self.next_seq {
            // Cannot happen while seqs are assigned under the state lock;
            // restart the window rather than misattribute deliveries.
            *self = EventLog::new(self.mode, self.max_records, seq);
        }
        self.next_seq = seq + 1;
        self.published += 1;
        match self.mode {
            RecordMode::Full => {
                self.records.push_back(Rec {
                    published_at,
                    topic,
                    channels: ChanSet::Empty,
                });
                if let Some(max) = self.max_records {
                    while self.records.len() > max {
                        self.records.pop_front();
                        self.first_seq += 1;
                    }
                }
            }
            RecordMode::Compact => {
                if self.bits_len % 64 == 0 {
                    self.bits.push_back(0);
                }
                self.bits_len += 1;
                if let Some(max) = self.max_records {
                    // Trim whole words only, so bit positions stay simple.
                    while self.bits_len > max as u64 + 64 && self.bits.len() > 1 {
                        self.bits.pop_front();
                        self.bits_len -= 64;
                        self.first_seq += 64;
                    }
                }
            }
        }
    }

    /// Marks `seqs` as written to channel `chan`.
    pub(crate) fn mark(&mut self, chan: u32, seqs: &[u64]) {
        for &seq in seqs {
            if seq < self.first_seq || seq >= self.next_seq {
                continue;
            }
            let i = seq - self.first_seq;
            let first = match self.mode {
                RecordMode::Full => match self.records.get_mut(i as usize) {
                    Some(r) => r.channels.insert(chan),
                    None => false,
                },
                RecordMode::Compact => {
                    let (word, bit) = ((i / 64) as usize, i % 64);
                    match self.bits.get_mut(word) {
                        Some(w) => {
                            let was = *w & (1 << bit) != 0;
                            *w |= 1 << bit;
                            !was
                        }
                        None => false,
                    }
                }
            };
            if first {
                self.deliverable += 1;
            }
        }
    }

    pub(crate) fn stats(&self) -> EventStats {
        EventStats {
            published: self.published,
            deliverable: self.deliverable,
            retained: match self.mode {
                RecordMode::Full => self.records.len() as u64,
                RecordMode::Compact => self.bits_len,
            },
            next_seq: self.next_seq,
        }
    }

    /// Full records (empty in Compact mode), `names` maps channel numbers to
    /// ids.
    pub(crate) fn records(&self, names: &[String], since: u64, limit: usize) -> Vec<EventRecord> {
        let start = since.saturating_sub(self.first_seq) as usize;
        self.records
            .iter()
            .enumerate()
            .skip(start)
            .take(limit)
            .map(|(i, r)| self.materialize(i, r, names))
            .collect()
    }

    pub(crate) fn record(&self, seq: u64, names: &[String]) -> Option<EventRecord> {
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.records.get(i).map(|r| self.materialize(i, r, names))
    }

    fn materialize(&self, i: usize, r: &Rec, names: &[String]) -> EventRecord {
        EventRecord {
            seq: self.first_seq + i as u64,
            topic: r.topic.to_string(),
            published_at: r.published_at,
            channels: r
                .channels
                .iter()
                .filter_map(|c| names.get(c as usize).cloned())
                .collect(),
        }
    }

    /// Sequence numbers of retained events that reached a socket.
    pub(crate) fn deliverable_seqs(&self) -> Vec<u64> {
        match self.mode {
            RecordMode::Full => self
                .records
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.channels.is_empty())
                .map(|(i, _)| self.first_seq + i as u64)
                .collect(),
            RecordMode::Compact => {
                let mut out = Vec::new();
                for (w, word) in self.bits.iter().enumerate() {
                    let mut bits = *word;
                    while bits != 0 {
                        let b = u64::from(bits.trailing_zeros());
                        out.push(self.first_seq + w as u64 * 64 + b);
                        bits &= bits - 1;
                    }
                }
                out
            }
        }
    }
}

/// The request log, bounded.
#[derive(Debug)]
pub(crate) struct RequestLog {
    max: usize,
    records: VecDeque<RequestRecord>,
}

impl RequestLog {
    pub(crate) fn new(max: usize) -> Self {
        RequestLog {
            max,
            records: VecDeque::new(),
        }
    }

    pub(crate) fn push(&mut self, r: RequestRecord) {
        self.records.push_back(r);
        while self.records.len() > self.max {
            self.records.pop_front();
        }
    }

    pub(crate) fn all(&self) -> Vec<RequestRecord> {
        self.records.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        self.records.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["c0".into(), "c1".into()]
    }

    #[test]
    fn full_log_marks_and_counts() {
        let mut log = EventLog::new(RecordMode::Full, None, 1);
        let t: Arc<str> = Arc::from("t");
        for seq in 1..=3 {
            log.push(seq, t.clone(), SystemTime::now());
        }
        log.mark(0, &[1, 3]);
        log.mark(1, &[3]);
        log.mark(1, &[3]);
        assert_eq!(log.deliverable_seqs(), vec![1, 3]);
        let s = log.stats();
        assert_eq!((s.published, s.deliverable, s.next_seq), (3, 2, 4));
        let r = log.record(3, &names()).expect("record 3");
        assert_eq!(r.channels, vec!["c0".to_string(), "c1".to_string()]);
        assert!(!log.record(2, &names()).expect("record 2").deliverable());
        log.clear();
        assert_eq!(log.stats().published, 0);
        log.push(4, t, SystemTime::now());
        assert_eq!(log.record(4, &names()).map(|r| r.seq), Some(4));
    }

    #[test]
    fn full_log_is_bounded() {
        let mut log = EventLog::new(RecordMode::Full, Some(2), 1);
        let t: Arc<str> = Arc::from("t");
        for seq in 1..=5 {
            log.push(seq, t.clone(), SystemTime::now());
        }
        log.mark(0, &[1, 5]);
        assert_eq!(log.deliverable_seqs(), vec![5]);
        assert_eq!(log.stats().retained, 2);
        assert_eq!(log.stats().published, 5);
    }

    #[test]
    fn compact_log_uses_bits() {
        let mut log = EventLog::new(RecordMode::Compact, None, 1);
        let t: Arc<str> = Arc::from("t");
        for seq in 1..=200 {
            log.push(seq, t.clone(), SystemTime::now());
        }
        log.mark(0, &[1, 64, 65, 200]);
        log.mark(1, &[64]);
        assert_eq!(log.deliverable_seqs(), vec![1, 64, 65, 200]);
        assert_eq!(log.stats().deliverable, 4);
        assert!(log.records(&names(), 0, 10).is_empty());
    }
}
