//! Connection management: keeps a receiving socket for every topic at every
//! moment it can, and accounts for every moment it could not. `backoff` is the
//! retry policy, `session` one socket, `supervisor` the shards and their
//! transitions. Everything received leaves through one bounded channel of
//! [`Inbound`] items.

pub mod backoff;
pub mod session;
pub mod supervisor;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::event::Inbound;
use crate::genesys::{self, api::Api, auth::Auth};
use session::SessionContext;

/// Runs the connection manager until `cancel`: tokens, channels, sockets.
/// Returns once every socket is closed (and so `out` is no longer held).
pub async fn run(settings: &Settings, out: mpsc::Sender<Inbound>, cancel: CancellationToken) {
    let g = &settings.genesys;
    let http = genesys::http_client();
    let auth = Auth::new(
        http.clone(),
        &g.login_base_url,
        &g.client_id,
        &g.client_secret,
        &settings.reconnect,
    );
    let refresher = tokio::spawn(auth.clone().run_refresher(cancel.clone()));
    let ctx = SessionContext {
        api: Api::new(http, &g.api_base_url, auth),
        out,
        ping_interval: g.ping_interval,
        heartbeat_timeout: g.heartbeat_timeout,
        max_frame_bytes: g.max_frame_bytes,
    };
    supervisor::run(
        ctx,
        g.topics.clone(),
        g.redundancy,
        settings.reconnect.clone(),
        cancel,
    )
    .await;
    let _ = refresher.await;
}
