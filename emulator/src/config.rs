//! Emulator configuration: one plain struct with public fields and defaults
//! that match the real service (24 h tokens and channels, 30 s heartbeats,
//! 20 channels, 1,000 topics), plus the knobs that only an emulator has
//! (generator rate, the directory's initial users, queues and divisions, how
//! many event records to keep).
//!
//! Validation happens once, in [`Config::validate`], before any port is bound.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the emulator keeps its record of published events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    /// One record per event: sequence, topic, publish time and the channels it
    /// reached (about 64 bytes an event).
    #[default]
    Full,
    /// One bit per event (delivered to at least one socket or not), plus
    /// counters: for benchmarks with millions of events.
    Compact,
}

/// An authorization division: users and queues each belong to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Division {
    /// Division id (a UUID in Genesys).
    pub id: String,
    /// Display name (`Home` is the division every org starts with).
    pub name: String,
}

impl Division {
    /// A division with a fresh UUID.
    pub fn new(name: impl Into<String>) -> Self {
        Division {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
        }
    }
}

/// Everything the emulator can be told at start. `Default` gives the values
/// of the real service where there is one.
#[derive(Clone)]
pub struct Config {
    /// OAuth client id accepted by `POST /oauth/token`.
    pub client_id: String,
    /// OAuth client secret accepted by `POST /oauth/token` (never logged).
    pub client_secret: String,
    /// Lifetime of an access token. Reported in whole seconds (`expires_in`);
    /// when it ends, the token is refused and its channels die.
    pub token_lifetime: Duration,
    /// Lifetime of a channel from its creation or its last subscription.
    pub channel_lifetime: Duration,
    /// Interval of the `WebSocket Heartbeat` frame on each open socket.
    pub heartbeat_interval: Duration,
    /// Time between the `v2.system.socket_closing` frame and the close.
    pub socket_closing_grace: Duration,
    /// Live channels per OAuth client; creating one more evicts one.
    pub max_channels: usize,
    /// Topic strings per channel (a combined topic counts once).
    pub max_topics_per_channel: usize,
    /// Topics this client may not subscribe to: glob patterns where `*`
    /// matches any run of characters (dots included), matched against each
    /// single (expanded) topic name.
    pub forbidden_topics: Vec<String>,
    /// When true, a topic subscribed on one channel is taken away from every
    /// other channel that had it, and their sockets get a
    /// `v2.system.no_longer_subscribed.<channelId>` frame.
    pub exclusive_subscriptions: bool,
    /// When true, revoking a token first sends `v2.system.token_revoked.<id>`
    /// to the open sockets of its channels (whether Genesys does is
    /// unconfirmed, so it is off by default).
    pub send_token_revoked: bool,
    /// Generator rate in events per second; 0 turns it off.
    pub rate: f64,
    /// Topics the generator publishes to; empty means every topic that is
    /// subscribed on some channel at that moment.
    pub generator_topics: Vec<String>,
    /// Events that share one generated body on a topic. Each still gets its
    /// own `emulatorSequence`, so a client's dedup sees distinct events, but
    /// they keep the body's correlation id and timestamps (except presence
    /// and routing-status times, which strictly increase per user: those
    /// events get the time moved 1 ms on, and a correlation id of their
    /// own). 1 (the default)
    /// builds a fresh body for every event; more makes the generator
    /// cheaper, for benchmarks in which the emulator shares the machine with
    /// what it measures.
    pub body_reuse: u32,
    /// Organization id put into system messages.
    pub org_id: String,
    /// The directory's users at start: each becomes an active user named
    /// `Agent 0001`, `Agent 0002` ... in this order. Event bodies draw
    /// their user ids from this pool too.
    pub user_ids: Vec<String>,
    /// The directory's queues at start, in this order; user `i` is a member
    /// of queue `i mod n`, and odd users also of the next one. Event bodies
    /// draw their queue ids from this pool too.
    pub queue_ids: Vec<String>,
    /// Divisions of the directory; users and queues at start are spread
    /// over them in turn, and new ones go to the first unless told.
    pub divisions: Vec<Division>,
    /// Frames that may wait for one socket; a socket that falls this far
    /// behind is dropped as a slow consumer.
    pub socket_queue_capacity: usize,
    /// How published events are recorded.
    pub record_mode: RecordMode,
    /// Keep at most this many event records (oldest go first); `None` keeps
    /// all.
    pub max_records: Option<usize>,
    /// Keep at most this many request records (oldest go first).
    pub max_request_records: usize,
    /// Base URL to advertise instead of `http://<bound address>` (e.g. when
    /// listening on 0.0.0.0). `connectUri` uses the same host with `ws://`.
    pub public_url: Option<String>,
    /// Conversations the truth keeps for the analytics query and the
    /// library; past this many, the one that ended first goes (or the
    /// oldest, when none has ended).
    pub max_conversations: usize,
    /// An org REST rate limit: when set, every `/api/v2` request beyond
    /// this many in a sliding 60 s window answers 429 with `Retry-After`
    /// (refused requests do not count). `None` (the default) is no limit,
    /// so that tests can check a client keeps to a budget only when they
    /// mean to.
    pub rest_requests_per_minute: Option<u32>,
}

/// Default number of generated user ids.
pub const DEFAULT_USERS: usize = 50;
/// Default number of generated queue ids.
pub const DEFAULT_QUEUES: usize = 10;

impl Default for Config {
    fn default() -> Self {
        Config {
            client_id: "emulator-client".to_owned(),
            client_secret: "emulator-secret".to_owned(),
            token_lifetime: Duration::from_secs(86_400),
            channel_lifetime: Duration::from_secs(86_400),
            heartbeat_interval: Duration::from_secs(30),
            socket_closing_grace: Duration::from_secs(60),
            max_channels: 20,
            max_topics_per_channel: 1000,
            forbidden_topics: vec!["v2.*.forbidden-*".to_owned()],
            exclusive_subscriptions: false,
            send_token_revoked: false,
            rate: 0.0,
            generator_topics: Vec::new(),
            body_reuse: 1,
            org_id: uuid::Uuid::new_v4().to_string(),
            user_ids: generated_ids(DEFAULT_USERS),
            queue_ids: generated_ids(DEFAULT_QUEUES),
            divisions: vec![Division::new("Home"), Division::new("Sales")],
            socket_queue_capacity: 65_536,
            record_mode: RecordMode::Full,
            max_records: None,
            max_request_records: 100_000,
            public_url: None,
            max_conversations: crate::truth::DEFAULT_MAX_CONVERSATIONS,
            rest_requests_per_minute: None,
        }
    }
}

/// `n` fresh random UUIDs, as strings.
pub fn generated_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

/// Whether `id` can stand for `{id}` in a topic name: not empty, and no
/// `.`, `?`, `&` or whitespace (they would change how the topic parses).
pub(crate) fn is_topic_safe_id(id: &str) -> bool {
    !id.is_empty()
        && !id
            .chars()
            .any(|c| c == '.' || c == '?' || c == '&' || c.is_whitespace())
}

// The secret must never reach a log line, and `{:?}` on a config is the
// easiest way for it to get there.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("token_lifetime", &self.token_lifetime)
            .field("channel_lifetime", &self.channel_lifetime)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("socket_closing_grace", &self.socket_closing_grace)
            .field("max_channels", &self.max_channels)
            .field("max_topics_per_channel", &self.max_topics_per_channel)
            .field("forbidden_topics", &self.forbidden_topics)
            .field("exclusive_subscriptions", &self.exclusive_subscriptions)
            .field("send_token_revoked", &self.send_token_revoked)
            .field("rate", &self.rate)
            .field("generator_topics", &self.generator_topics)
            .field("body_reuse", &self.body_reuse)
            .field("org_id", &self.org_id)
            .field("user_ids", &self.user_ids.len())
            .field("queue_ids", &self.queue_ids.len())
            .field("divisions", &self.divisions)
            .field("socket_queue_capacity", &self.socket_queue_capacity)
            .field("record_mode", &self.record_mode)
            .field("max_records", &self.max_records)
            .field("max_request_records", &self.max_request_records)
            .field("public_url", &self.public_url)
            .field("max_conversations", &self.max_conversations)
            .field("rest_requests_per_minute", &self.rest_requests_per_minute)
            .finish()
    }
}

/// A configuration value that cannot work, named by its field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The field must be positive.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The generator rate is negative or not a number.
    #[error("rate must be a finite number >= 0, got {0}")]
    Rate(f64),
    /// The id pools are used to build topic names.
    #[error("{0} must not be empty and must not contain '.', '?', '&' or whitespace")]
    BadIds(&'static str),
    /// At least one division, each with a non-empty id of its own.
    #[error("divisions must not be empty, and their ids must be non-empty and distinct")]
    Divisions,
    /// `public_url` must be an http(s) URL.
    #[error("public_url must start with http:// or https://")]
    PublicUrl,
}

impl Config {
    /// Checks every value once, before the server starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("token_lifetime", self.token_lifetime.is_zero()),
            ("channel_lifetime", self.channel_lifetime.is_zero()),
            ("heartbeat_interval", self.heartbeat_interval.is_zero()),
            ("max_channels", self.max_channels == 0),
            ("max_topics_per_channel", self.max_topics_per_channel == 0),
            ("socket_queue_capacity", self.socket_queue_capacity == 0),
            ("max_request_records", self.max_request_records == 0),
            ("max_records", self.max_records == Some(0)),
            ("body_reuse", self.body_reuse == 0),
            ("max_conversations", self.max_conversations == 0),
            (
                "rest_requests_per_minute",
                self.rest_requests_per_minute == Some(0),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(ConfigError::Zero(name));
        }
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(ConfigError::Rate(self.rate));
        }
        let bad_id = |id: &String| !is_topic_safe_id(id);
        if self.user_ids.is_empty() || self.user_ids.iter().any(bad_id) {
            return Err(ConfigError::BadIds("user_ids"));
        }
        if self.queue_ids.is_empty() || self.queue_ids.iter().any(bad_id) {
            return Err(ConfigError::BadIds("queue_ids"));
        }
        let mut division_ids: Vec<&str> = self.divisions.iter().map(|d| d.id.as_str()).collect();
        division_ids.sort_unstable();
        division_ids.dedup();
        if self.divisions.is_empty()
            || division_ids.len() != self.divisions.len()
            || division_ids.iter().any(|id| id.trim().is_empty())
        {
            return Err(ConfigError::Divisions);
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::PublicUrl);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_service() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.token_lifetime, Duration::from_secs(86_400));
        assert_eq!(c.max_channels, 20);
        assert_eq!(c.max_topics_per_channel, 1000);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = Config::default();
        let shown = format!("{c:?}");
        assert!(!shown.contains("emulator-secret"));
        assert!(shown.contains("***"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let c = Config {
            heartbeat_interval: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("heartbeat_interval")));
        let c = Config {
            rate: -1.0,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Rate(_))));
        let c = Config {
            user_ids: vec!["a.b".into()],
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::BadIds("user_ids")));
        let c = Config {
            divisions: Vec::new(),
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Divisions));
    }
}
