//! The values that cross stages: what the connection manager hands the
//! pipeline. They live here so that no stage imports another to get them.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// One notification frame as it came off a socket.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The frame, byte for byte (it becomes the Kafka value unchanged).
    pub raw: Bytes,
    /// The channel whose socket delivered it.
    pub channel: Arc<str>,
    pub received_at: SystemTime,
}

/// An interval during which a shard's topics had no receiving socket:
/// events published then are lost for good, so consumers must resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
    /// Why the shard went blind.
    pub reason: Reason,
    pub topics: Arc<[String]>,
}

/// What flows from the connection manager into the pipeline.
#[derive(Debug, Clone)]
pub enum Inbound {
    Event(Notification),
    Gap(Gap),
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
