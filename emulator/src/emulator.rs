//! The [`Emulator`] handle: starts the server and its background tasks
//! (reaper, generator) and exposes the library API that tests and the
//! control endpoints use: publishing, records, faults, the directory and
//! the truth (presence, routing status, conversations now).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bodies::{self, Pools};
use crate::config::{Config, RecordMode};
use crate::directory::{
    Directory, DirectoryError, DirectorySnapshot, NewQueue, NewUser, UserState,
};
use crate::faults::{FailPlan, Failure, Malformed, RequestKind, Target};
use crate::generator;
use crate::http;
use crate::limit::SlidingWindow;
use crate::records::{
    ChannelInfo, EventLog, EventRecord, EventStats, Gap, RequestLog, RequestRecord,
};
use crate::state::{lock, Prepared, Shared, State};
use crate::topics::CATALOGUE;
use crate::truth::{ConversationState, PresenceState, RoutingState, Truth, UserCurrentState};

/// How often expiry of channels and tokens is checked (REST calls also
/// check on the spot).
const REAP_EVERY: Duration = Duration::from_millis(20);
/// How long shutdown waits for tasks before giving up on them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// A running emulator. Cheap to clone; every clone drives the same server.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

impl Emulator {
    /// Validates `config`, binds `addr` (port 0 picks a free port) and
    /// starts serving.
    pub async fn start(config: Config, addr: SocketAddr) -> io::Result<Emulator> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let base_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_owned();
        let ws_base = match base_url.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", base_url.trim_start_matches("http://")),
        };
        let (rate_tx, rate_rx) = watch::channel(config.rate);
        let mut state = State::new();
        state.directory = Directory::from_config(&config);
        state.truth = Truth::new(config.max_conversations);
        let born = SystemTime::now();
        for id in state.directory.user_ids() {
            state.truth.add_user(&id, born);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            log: Mutex::new(EventLog::new(config.record_mode, config.max_records, 1)),
            requests: Mutex::new(RequestLog::new(config.max_request_records)),
            faults: Mutex::new(FailPlan::default()),
            rest_limit: config
                .rest_requests_per_minute
                .map(|n| Mutex::new(SlidingWindow::new(n))),
            in_flight: AtomicU64::new(0),
            open_sockets: AtomicUsize::new(0),
            rate: rate_tx,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            base_url,
            ws_base,
            conversation_ids: crate::config::generated_ids(20),
            local_addr,
            config,
        });
        let app = http::router(shared.clone());
        let cancel = shared.cancel.clone();
        shared.tracker.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Emulator server failed.");
            }
        });
        let reaper = shared.clone();
        shared.tracker.spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            loop {
                tokio::select! {
                    _ = reaper.cancel.cancelled() => return,
                    _ = tick.tick() => lock(&reaper.state).reap(),
                }
            }
        });
        shared
            .tracker
            .spawn(generator::run(shared.clone(), rate_rx));
        tracing::info!(base_url = %shared.base_url, "Emulator listening.");
        Ok(Emulator { shared })
    }

    /// `http://127.0.0.1:PORT`: the base URL for both the API and the login.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Sets the generator rate (events per second, 0 = off). Takes effect
    /// at once: no event of the old rate is published after this returns.
    pub fn set_rate(&self, rate: f64) {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            0.0
        };
        // Bumping the epoch under the state lock fences off a batch the
        // generator built for the old rate (see `publish_prepared`).
        let mut st = lock(&self.shared.state);
        st.rate_epoch += 1;
        self.shared.rate.send_replace(rate);
        drop(st);
    }

    /// The generator rate now.
    pub fn rate(&self) -> f64 {
        *self.shared.rate.borrow()
    }

    fn pools(&self) -> Pools<'_> {
        let c = &self.shared.config;
        Pools {
            org_id: &c.org_id,
            user_ids: &c.user_ids,
            queue_ids: &c.queue_ids,
        }
    }

    /// A realistic body for `topic`, without publishing it (no sequence).
    pub fn sample_body(&self, topic: &str) -> Value {
        bodies::for_topic(&mut rand::rng(), &self.pools(), topic)
    }

    /// Publishes a generated body on `topic`; returns its sequence number.
    pub fn publish(&self, topic: &str) -> u64 {
        let body = self.sample_body(topic);
        self.publish_body(topic, body)
    }

    /// Publishes `body` on `topic`; an object body gets `emulatorSequence`
    /// (any value given for it is replaced). Returns the sequence number.
    ///
    /// A presence body (`presenceDefinition.systemPresence`,
    /// `modifiedDate`), a routing-status body (`routingStatus.status`,
    /// `startTime`) or a conversation body (`id`, `participants`) on a
    /// matching topic updates the truth; a time that is not after the
    /// user's previous one for that topic is published 1 ms after it.
    pub fn publish_body(&self, topic: &str, mut body: Value) -> u64 {
        if let Some(o) = body.as_object_mut() {
            o.remove("emulatorSequence");
        }
        let prepared = Prepared::from_value(topic, &body);
        self.shared
            .publish_prepared(vec![prepared], None)
            .first()
            .copied()
            .unwrap_or_default()
    }

    fn names(&self) -> Vec<String> {
        lock(&self.shared.state).names.clone()
    }

    /// Every retained event record (empty in `Compact` mode).
    pub fn events(&self) -> Vec<EventRecord> {
        self.events_since(0, usize::MAX)
    }

    /// Retained records from sequence `since` on, at most `limit`.
    pub fn events_since(&self, since: u64, limit: usize) -> Vec<EventRecord> {
        let names = self.names();
        lock(&self.shared.log).records(&names, since, limit)
    }

    /// The record of one event, if retained (`Full` mode).
    pub fn event(&self, seq: u64) -> Option<EventRecord> {
        let names = self.names();
        lock(&self.shared.log).record(seq, &names)
    }

    /// Sequence numbers of retained events that reached at least one socket.
    pub fn deliverable(&self) -> Vec<u64> {
        lock(&self.shared.log).deliverable_seqs()
    }

    /// Counters over all events since the last clear.
    pub fn event_stats(&self) -> EventStats {
        lock(&self.shared.log).stats()
    }

    /// Forgets all event records and counters (sequence numbers go on).
    pub fn clear_events(&self) {
        lock(&self.shared.log).clear();
    }

    /// Switches the record mode and bound; clears the records.
    pub fn set_record_mode(&self, mode: RecordMode, max_records: Option<usize>) {
        lock(&self.shared.log).set_mode(mode, max_records.filter(|&m| m > 0));
    }

    /// Waits until every frame queued to a socket was written or discarded,
    /// so that delivery records are final. False on timeout.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.in_flight.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Every recorded request, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).all()
    }

    /// Forgets the request records.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Every channel ever created, dead ones included, with socket history.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        lock(&self.shared.state).channel_infos()
    }

    /// Intervals after `topic` was first covered during which no healthy
    /// socket was subscribed to it.
    pub fn coverage_gaps(&self, topic: &str) -> Vec<Gap> {
        lock(&self.shared.state).coverage_gaps(topic)
    }

    /// Whether a healthy socket is subscribed to `topic` right now.
    pub fn covered(&self, topic: &str) -> bool {
        lock(&self.shared.state).covered(topic)
    }

    /// Fault: ends the targeted sockets' TCP without a close frame.
    /// Returns the number of sockets hit.
    pub fn drop_sockets(&self, target: Target) -> usize {
        lock(&self.shared.state).drop_sockets(&target)
    }

    /// Fault: the targeted sockets send nothing more (events, heartbeats,
    /// pongs) until the client closes them.
    pub fn stall_sockets(&self, target: Target) -> usize {
        lock(&self.shared.state).stall_sockets(&target)
    }

    /// Fault: `v2.system.socket_closing`, then close after the configured
    /// grace.
    pub fn socket_closing(&self, target: Target) -> usize {
        self.socket_closing_with_grace(target, self.shared.config.socket_closing_grace)
    }

    /// As [`Emulator::socket_closing`] with an explicit grace.
    pub fn socket_closing_with_grace(&self, target: Target, grace: Duration) -> usize {
        lock(&self.shared.state).socket_closing(&self.shared.config, &target, grace)
    }

    /// Fault: the targeted channels expire now.
    pub fn expire_channel(&self, target: Target) -> usize {
        lock(&self.shared.state).expire(&target)
    }

    /// Fault: revokes every token; all channels die with them.
    pub fn revoke_tokens(&self) -> usize {
        lock(&self.shared.state).revoke(&self.shared.config, |_, _| true)
    }

    /// Fault: revokes one token (by its value); its channels die.
    pub fn revoke_token(&self, token: &str) -> bool {
        lock(&self.shared.state).revoke(&self.shared.config, |value, _| value == token) > 0
    }

    /// Fault: revokes the token that created `channel_id`.
    pub fn revoke_channel_token(&self, channel_id: &str) -> bool {
        let mut st = lock(&self.shared.state);
        match st.channel_token(channel_id) {
            Some(id) => st.revoke(&self.shared.config, |_, t| t == id) > 0,
            None => false,
        }
    }

    /// Fault: the next `n` requests of `kind` fail with `failure`
    /// (`RequestKind::Any` for any request; `n = 0` cancels). Replaces the
    /// kind's earlier plan.
    pub fn fail_next(&self, kind: RequestKind, n: u32, failure: Failure) {
        self.fail_after(kind, 0, n, failure);
    }

    /// Fault: the next `skip` requests of `kind` pass, then `n` fail with
    /// `failure` (e.g. `fail_after(RequestKind::Directory, 2, 1, ..)`: the
    /// third page of a listing fails).
    pub fn fail_after(&self, kind: RequestKind, skip: u32, n: u32, failure: Failure) {
        lock(&self.shared.faults).add(kind, skip, n, failure);
    }

    /// Fault: once the failures planned for `kind` are answered, `n` more
    /// requests of `kind` fail with `failure` (e.g. a 500 on page 3, then a
    /// 429 on the retry).
    pub fn fail_then(&self, kind: RequestKind, n: u32, failure: Failure) {
        lock(&self.shared.faults).then(kind, 0, n, failure);
    }

    /// Cancels every planned failure.
    pub fn clear_failures(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Fault: writes a broken frame to the targeted sockets.
    pub fn send_malformed(&self, target: Target, malformed: Malformed) -> usize {
        lock(&self.shared.state).send_malformed(&target, malformed)
    }

    /// WebSocket connections open now.
    pub fn open_sockets(&self) -> usize {
        self.shared.open_sockets.load(Ordering::Relaxed)
    }

    /// Ids of the active users, in creation order (at start: the config's
    /// `user_ids`).
    pub fn user_ids(&self) -> Vec<String> {
        lock(&self.shared.state).directory.active_user_ids()
    }

    /// Ids of the queues, in creation order (at start: the config's
    /// `queue_ids`).
    pub fn queue_ids(&self) -> Vec<String> {
        lock(&self.shared.state).directory.queue_ids()
    }

    /// The whole directory: divisions, users (any state) and queues with
    /// their members.
    pub fn directory(&self) -> DirectorySnapshot {
        lock(&self.shared.state).directory.snapshot()
    }

    /// Adds a user; returns its id. From the moment this returns the
    /// generator fires its topics (if it is active and subscribed).
    pub fn add_user(&self, user: NewUser) -> Result<String, DirectoryError> {
        let mut st = lock(&self.shared.state);
        let id = st.directory.add_user(user)?;
        st.truth.add_user(&id, SystemTime::now());
        Ok(id)
    }

    /// Adds `n` active users with default names, in no queue; returns their
    /// ids.
    pub fn add_users(&self, n: usize) -> Vec<String> {
        let mut st = lock(&self.shared.state);
        let now = SystemTime::now();
        let ids: Vec<String> = (0..n)
            .filter_map(|_| st.directory.add_user(NewUser::default()).ok())
            .collect();
        for id in &ids {
            st.truth.add_user(id, now);
        }
        ids
    }

    /// Sets a user's state. Once this returns, the generator fires nothing
    /// more for a user who is no longer active.
    pub fn set_user_state(&self, id: &str, state: UserState) -> Result<(), DirectoryError> {
        lock(&self.shared.state).directory.set_user_state(id, state)
    }

    /// Removes a user and its queue memberships; the generator stops firing
    /// its topics once this returns. Subscriptions naming it stay.
    pub fn remove_user(&self, id: &str) -> Result<(), DirectoryError> {
        let mut st = lock(&self.shared.state);
        st.directory.remove_user(id)?;
        st.truth.remove_user(id);
        Ok(())
    }

    /// Adds a queue; returns its id.
    pub fn add_queue(&self, queue: NewQueue) -> Result<String, DirectoryError> {
        lock(&self.shared.state).directory.add_queue(queue)
    }

    /// Removes a queue; the generator stops firing its topics once this
    /// returns.
    pub fn remove_queue(&self, id: &str) -> Result<(), DirectoryError> {
        lock(&self.shared.state).directory.remove_queue(id)
    }

    /// Replaces a queue's members (user ids, any state; only active ones are
    /// listed by the members endpoint).
    pub fn set_queue_members(&self, id: &str, members: &[String]) -> Result<(), DirectoryError> {
        lock(&self.shared.state)
            .directory
            .set_queue_members(id, members)
    }

    // ---- the truth: what REST serves after a gap --------------------------

    /// A directory user's presence now: the last `v2.users.{id}.presence`
    /// event's body, or `Offline` since the user was created.
    pub fn presence_of(&self, user_id: &str) -> Option<PresenceState> {
        let st = lock(&self.shared.state);
        st.truth.user(user_id).map(|u| u.presence.clone())
    }

    /// A directory user's routing status now: the last
    /// `v2.users.{id}.routingStatus` event's, or `OFF_QUEUE` since the user
    /// was created.
    pub fn routing_status_of(&self, user_id: &str) -> Option<RoutingState> {
        let st = lock(&self.shared.state);
        st.truth.user(user_id).map(|u| u.routing_status.clone())
    }

    /// Both states of one directory user.
    pub fn current_user_state(&self, user_id: &str) -> Option<UserCurrentState> {
        lock(&self.shared.state).truth.user(user_id).cloned()
    }

    /// Every directory user's states (any user state), by user id, taken
    /// at one instant: no event is half applied. For convergence checks.
    pub fn current_user_states(&self) -> BTreeMap<String, UserCurrentState> {
        lock(&self.shared.state).truth.users()
    }

    /// Conversations with a participant on `queue_id`, in the order they
    /// were first seen.
    pub fn conversations_of_queue(&self, queue_id: &str) -> Vec<ConversationState> {
        lock(&self.shared.state).truth.conversations(|r| {
            r.participants
                .iter()
                .any(|p| p.queue_id.as_deref() == Some(queue_id))
        })
    }

    /// Conversations `user_id` takes part in, in the order they were first
    /// seen.
    pub fn conversations_of_user(&self, user_id: &str) -> Vec<ConversationState> {
        lock(&self.shared.state).truth.conversations(|r| {
            r.participants
                .iter()
                .any(|p| p.user_id.as_deref() == Some(user_id))
        })
    }

    /// Every kept conversation, in the order they were first seen.
    pub fn all_conversations(&self) -> Vec<ConversationState> {
        lock(&self.shared.state).truth.conversations(|_| true)
    }

    /// One conversation, if kept.
    pub fn conversation(&self, id: &str) -> Option<ConversationState> {
        lock(&self.shared.state).truth.conversation(id)
    }

    /// How many conversations are kept (at most `Config::max_conversations`).
    pub fn conversation_count(&self) -> usize {
        lock(&self.shared.state).truth.conversation_count()
    }

    /// The organization id used in system messages.
    pub fn org_id(&self) -> String {
        self.shared.config.org_id.clone()
    }

    /// `n` distinct valid topic names, cycling through the catalogue's
    /// subscribable templates and the active users and queues
    /// (deterministic for a given config and directory). Past the
    /// directory, synthetic ids keep the names distinct; the generator
    /// never fires those (no such user or queue).
    pub fn sample_topics(&self, n: usize) -> Vec<String> {
        let (user_ids, queue_ids) = {
            let st = lock(&self.shared.state);
            (st.directory.active_user_ids(), st.directory.queue_ids())
        };
        let templates: Vec<&str> = CATALOGUE
            .iter()
            .filter(|t| t.kind != crate::topics::BodyKind::System)
            .map(|t| t.id)
            .collect();
        let mut out = Vec::with_capacity(n);
        let mut round = 0usize;
        while out.len() < n {
            for t in &templates {
                if out.len() == n {
                    break;
                }
                let pool: &[String] = if t.starts_with("v2.users.") {
                    &user_ids
                } else if t.contains("queues.") {
                    &queue_ids
                } else {
                    &self.shared.conversation_ids
                };
                // Past the pool, synthetic ids keep the names distinct.
                let id = pool
                    .get(round)
                    .cloned()
                    .unwrap_or_else(|| format!("00000000-0000-4000-8000-{round:012x}"));
                out.push(t.replace("{id}", &id));
            }
            round += 1;
        }
        out
    }

    /// Stops everything: sockets get a close frame (1001), the listener
    /// stops, tasks end (waiting at most a few seconds).
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_DEADLINE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("Emulator tasks did not end within the shutdown deadline.");
        }
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Emulator {
        Emulator { shared }
    }
}
