//! The values that cross stages: what the connection manager hands the
//! pipeline. They live here so that no stage imports another to get them.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::genesys::frame;

/// One notification frame as it came off a socket, parsed once: the socket
/// loop had to classify it anyway, so the places of its parts travel with
/// it and later stages slice instead of parsing again.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The frame, byte for byte (it becomes the Kafka value unchanged).
    text: Utf8Bytes,
    spans: Spans,
    /// The tag of the channel whose socket delivered it (never the id:
    /// that is a capability, see `genesys::api::ChannelId`).
    pub channel: Arc<str>,
    pub received_at: SystemTime,
}

/// Where a notification's parts are in its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spans {
    topic: Range<usize>,
    body: Range<usize>,
    correlation_id: Option<Range<usize>>,
}

impl Spans {
    /// The places of `parsed`'s parts in `text`; `None` unless `parsed` was
    /// parsed from `text` (its parts are slices of it).
    pub fn of(text: &str, parsed: &frame::Notification<'_>) -> Option<Self> {
        Some(Self {
            topic: span(text, parsed.topic)?,
            body: span(text, parsed.body)?,
            correlation_id: match parsed.correlation_id {
                Some(c) => Some(span(text, c)?),
                None => None,
            },
        })
    }
}

fn span(outer: &str, inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len() && outer.is_char_boundary(start) && outer.is_char_boundary(end))
        .then_some(start..end)
}

impl Notification {
    pub fn new(text: Utf8Bytes, spans: Spans, channel: Arc<str>, received_at: SystemTime) -> Self {
        Self {
            text,
            spans,
            channel,
            received_at,
        }
    }

    /// Parses `text`; `None` if it is not a notification.
    pub fn parse(text: Utf8Bytes, channel: Arc<str>, received_at: SystemTime) -> Option<Self> {
        let spans = match frame::classify(text.as_str()) {
            frame::Frame::Notification(parsed) => Spans::of(text.as_str(), &parsed)?,
            _ => return None,
        };
        Some(Self::new(text, spans, channel, received_at))
    }

    /// The frame, byte for byte (shares the buffer, copies nothing).
    pub fn raw(&self) -> Bytes {
        self.text.clone().into()
    }

    /// The frame's topic, body and correlation id, as slices of it.
    pub fn parts(&self) -> frame::Notification<'_> {
        let text = self.text.as_str();
        let at = |r: &Range<usize>| text.get(r.clone()).unwrap_or_default();
        frame::Notification {
            topic: at(&self.spans.topic),
            body: at(&self.spans.body),
            correlation_id: self.spans.correlation_id.as_ref().map(at),
        }
    }
}

/// An interval during which a shard's topics had no receiving socket:
/// events published then are lost for good, so consumers must resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Names the gap in its marker and in the records of its resync.
    pub id: Arc<str>,
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
    /// Why the shard went blind.
    pub reason: Reason,
    pub topics: Arc<[String]>,
}

impl Gap {
    /// A fresh gap id (a UUID).
    pub fn new_id() -> Arc<str> {
        uuid::Uuid::new_v4().to_string().into()
    }
}

/// The current state of one resource, fetched from the REST API after a
/// gap (or at start), shaped as the notification it stands for.
#[derive(Debug, Clone)]
pub struct ResyncRecord {
    /// The single topic it stands for (`v2.users.<id>.presence`).
    pub topic: Arc<str>,
    /// The resource id (the Kafka key, as for the notification).
    pub resource: Arc<str>,
    /// For queue-conversation topics: the queue.
    pub queue_id: Option<Arc<str>>,
    /// `{"topicName":..,"version":"2","eventBody":{..},"metadata":{..}}`.
    pub value: Bytes,
    /// When the fetch was sent: a notification for the same topic and
    /// resource received after this is newer, and wins.
    pub fetched_at: SystemTime,
    /// The gap it repairs (`startup` for the start-up snapshot).
    pub resync_of: Arc<str>,
    pub kind: ResyncKind,
}

/// What a resync record holds (the `kind` label of its metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResyncKind {
    Presence,
    RoutingStatus,
    Conversation,
}

impl ResyncKind {
    pub const ALL: [ResyncKind; 3] = [
        ResyncKind::Presence,
        ResyncKind::RoutingStatus,
        ResyncKind::Conversation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResyncKind::Presence => "presence",
            ResyncKind::RoutingStatus => "routing_status",
            ResyncKind::Conversation => "conversation",
        }
    }
}

/// A resync to do: the current state of every resource behind `topics`.
#[derive(Debug, Clone)]
pub struct ResyncJob {
    /// The gap id, or `startup`.
    pub resync_of: Arc<str>,
    pub topics: Arc<[String]>,
    /// Conversations active between these moments are fetched (the gap's
    /// bounds).
    pub since: SystemTime,
    pub until: SystemTime,
    /// Only conversations still running (a start-up snapshot: a consumer
    /// starting empty needs the current ones, not the last hour's history).
    pub only_active: bool,
    /// When the gap closed (or the shard subscribed): `resync_seconds` runs from here.
    pub opened: tokio::time::Instant,
}

/// The end of one gap's resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncDone {
    pub resync_of: Arc<str>,
    /// Every resource was fetched (else some could not be: `partial`).
    pub complete: bool,
    pub resources: usize,
    pub finished_at: SystemTime,
}

/// What flows into the pipeline: from the connection manager, and from
/// the resync stage.
#[derive(Debug, Clone)]
pub enum Inbound {
    Event(Notification),
    Gap(Gap),
    Resync(ResyncRecord),
    ResyncDone(ResyncDone),
    /// The shards' last receiving moments, for the next process to find
    /// (see `checkpoint`).
    Checkpoint {
        key: Arc<str>,
        value: Bytes,
    },
}

/// Why a socket was replaced: the `reason` label of
/// `genesys_bridge_reconnects_total` and of gap records. A small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The socket failed (TCP reset, EOF without a close frame, protocol error).
    SocketError,
    /// The server closed the socket with a close frame.
    ServerClose,
    /// No frame for `heartbeat_timeout`: the socket is half-open or stalled.
    HeartbeatTimeout,
    /// `v2.system.socket_closing` (maintenance).
    SocketClosing,
    /// The channel is near its expiry.
    ChannelExpiry,
    /// The token that created the channel is near expiry, or was revoked.
    TokenRefresh,
    /// The channel no longer exists, or its topics left it.
    ChannelGone,
    /// The bridge itself was not running (a restart, a deploy, a crash):
    /// from the last moment a previous process recorded the shard
    /// receiving, to this process's first subscription. Never a reconnect.
    ProcessDown,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::SocketError,
        Reason::ServerClose,
        Reason::HeartbeatTimeout,
        Reason::SocketClosing,
        Reason::ChannelExpiry,
        Reason::TokenRefresh,
        Reason::ChannelGone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SocketError => "socket_error",
            Reason::ServerClose => "server_close",
            Reason::HeartbeatTimeout => "heartbeat_timeout",
            Reason::SocketClosing => "socket_closing",
            Reason::ChannelExpiry => "channel_expiry",
            Reason::TokenRefresh => "token_refresh",
            Reason::ChannelGone => "channel_gone",
            Reason::ProcessDown => "process_down",
        }
    }

    /// Planned reasons are announced ahead, so the bridge can move make-before-break.
    pub fn is_planned(self) -> bool {
        matches!(
            self,
            Reason::SocketClosing | Reason::ChannelExpiry | Reason::TokenRefresh
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
