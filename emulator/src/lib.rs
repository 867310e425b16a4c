//! A local stand-in for the Genesys Cloud Notification API, for tests and
//! demos: OAuth client credentials, the notification REST API (channels,
//! subscriptions, available topics), the directory a client lists to know
//! what to subscribe (users, queues, queue members) and the channel
//! WebSocket, on one base URL, with fault injection, an event generator and
//! records of everything that happened.
//!
//! It is written from the contract (the shared `notification-api.md`) and
//! the shapes of Genesys' own SDK models; it imports nothing from the bridge.
//!
//! Layout:
//! - [`config`]: [`Config`] and its defaults (the real service's where
//!   there is one).
//! - `emulator`: [`Emulator`], the handle tests use; starts the server,
//!   the expiry reaper and the generator.
//! - `http`: OAuth, the REST API, request recording and failure injection.
//! - [`directory`]: users, queues and memberships; their listings and the
//!   generator's existence check.
//! - `socket`: the WebSocket upgrade and one task per socket.
//! - `state`: tokens, channels, subscriptions, sockets, publishing and
//!   coverage; every rule of the service lives here.
//! - `topics` and `bodies`: the catalogue and realistic event bodies.
//! - `generator`: publishes at a rate.
//! - `control`: the `/_emulator/...` JSON API.
//! - [`truth`]: the current state (presence, routing status,
//!   conversations) that publishing keeps equal to the last events, and
//!   its REST shapes; `analytics` answers the conversation details query
//!   from it; `limit` is the optional org REST rate limit.
//! - [`records`], [`faults`]: the public record and fault types.
//!
//! Conventions that are the emulator's own (the service does not document
//! them): forbidden topics are glob patterns (`*` matches anything) and the
//! default `v2.*.forbidden-*` forbids any topic whose id starts with
//! `forbidden-`; an invalid topic name is a 400 with code
//! `notification.invalid.topic`; every event body carries
//! `eventBody.emulatorSequence` (from 1); malformed frames that look like
//! notifications carry sequence 0 and are not events; a subscription to a
//! topic naming a user or queue that does not exist is `Permitted` and
//! simply never fires (our reading; unconfirmed).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use genesys_emulator::{Config, Emulator, Target};
//! let emu = Emulator::start(Config::default(), ([127, 0, 0, 1], 0).into()).await?;
//! let topic = emu.sample_topics(1).remove(0);
//! // ... point the client at emu.base_url(), let it subscribe to `topic` ...
//! let seq = emu.publish(&topic);
//! emu.drop_sockets(Target::All);
//! emu.shutdown().await;
//! # let _ = seq; Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod analytics;
mod api_error;
mod bodies;
pub mod config;
mod control;
pub mod directory;
mod emulator;
pub mod faults;
mod generator;
mod http;
mod limit;
pub mod records;
mod socket;
mod state;
pub mod time;
mod topics;
pub mod truth;

pub use config::{Config, ConfigError, Division, RecordMode};
pub use directory::{
    DirectoryError, DirectorySnapshot, NewQueue, NewUser, QueueInfo, UserInfo, UserState,
};
pub use emulator::Emulator;
pub use faults::{Failure, Malformed, RequestKind, Target};
pub use records::{
    ChannelInfo, DeathReason, DisconnectReason, EventRecord, EventStats, Gap, RequestRecord,
    SocketRecord,
};
pub use truth::{
    ConversationState, ParticipantState, PresenceState, RoutingState, UserCurrentState,
};

/// Catalogue template ids (`v2.users.{id}.presence` ...), subscribable
/// ones first, system topics last.
pub fn topic_templates() -> Vec<&'static str> {
    topics::CATALOGUE.iter().map(|t| t.id).collect()
}

/// Whether `topic` (a single topic, not a combined one) matches a
/// subscribable catalogue template.
pub fn is_valid_topic(topic: &str) -> bool {
    topics::is_subscribable(topic)
}
