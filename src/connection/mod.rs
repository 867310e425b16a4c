//! Connection management: keeps a receiving socket for every topic at every
//! moment it can, and accounts for every moment it could not.
//! - [`machine`]: the decisions (when to open, move, retry; what is a gap),
//!   a pure state machine: typed inputs in, typed actions out;
//! - [`supervisor`]: the loop that feeds the machine and executes its
//!   actions (sessions, gap records, telemetry);
//! - [`session`]: one socket of one channel, as I/O that reports events.
//!
//! Everything received leaves through one bounded channel of [`Inbound`]
//! items.

pub mod machine;
pub mod plan;
pub mod session;
pub mod supervisor;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::event::{Inbound, ResyncJob};
use crate::genesys::auth::{Auth, AuthEvent};
use crate::genesys::{self, api::Api};
use crate::telemetry::events;
use session::SessionContext;

/// The REST API of `settings`' org, with its token source.
pub fn api(settings: &Settings) -> Api {
    let http = genesys::http_client();
    let auth = token_source(settings, http.clone());
    Api::new(http, &settings.genesys.api_base_url, auth)
}

/// Where the connection manager asks for resyncs: after every gap
/// (`after_gaps`), and when a shard first subscribes (`on_start`).
#[derive(Clone)]
pub struct ResyncRequests {
    pub jobs: mpsc::Sender<ResyncJob>,
    pub after_gaps: bool,
    pub on_start: bool,
    /// How far back a start-up snapshot looks for conversations.
    pub lookback: std::time::Duration,
}

/// The bridge's own record of when each shard was last receiving (see
/// `checkpoint`): its key, and what a previous process left.
#[derive(Clone)]
pub struct Checkpoints {
    pub key: Arc<str>,
    pub previous: Option<Vec<Option<std::time::SystemTime>>>,
}

/// The literal topics of `settings`, as a topic set that never changes
/// (for a bridge, or a test, without a directory).
pub fn fixed_topics(settings: &Settings) -> watch::Receiver<Arc<[String]>> {
    watch::channel(Arc::from(settings.genesys.topics.clone())).1
}

/// Runs the connection manager until `cancel`: tokens, channels, sockets,
/// following every change of the topic set `topics`. Returns once every
/// socket is closed (and so `out` is no longer held).
pub async fn run(
    settings: &Settings,
    api: Api,
    topics: watch::Receiver<Arc<[String]>>,
    out: mpsc::Sender<Inbound>,
    resync: Option<ResyncRequests>,
    checkpoints: Option<Checkpoints>,
    cancel: CancellationToken,
) {
    let g = &settings.genesys;
    let refresher = tokio::spawn(api.auth().clone().run_refresher(cancel.clone()));
    let ctx = SessionContext {
        api,
        out,
        ping_interval: g.ping_interval,
        heartbeat_timeout: g.heartbeat_timeout,
        max_frame_bytes: g.max_frame_bytes,
    };
    let extras = supervisor::Extras {
        resync,
        checkpoints,
    };
    supervisor::run(
        ctx,
        topics,
        g.redundancy,
        &settings.reconnect,
        extras,
        cancel,
    )
    .await;
    let _ = refresher.await;
}

/// The OAuth token source of `settings`, reporting to the logs and metrics.
pub fn token_source(settings: &Settings, http: reqwest::Client) -> Auth {
    let g = &settings.genesys;
    Auth::new(
        http,
        &g.login_base_url,
        &g.client_id,
        &g.client_secret,
        &settings.reconnect,
        Arc::new(|event| match event {
            AuthEvent::Obtained { expires_in_secs } => events::token_obtained(expires_in_secs),
            AuthEvent::Rejected { error, first } => events::credentials_rejected(error, first),
            AuthEvent::Failed { error } => events::token_request_failed(error),
        }),
    )
}
