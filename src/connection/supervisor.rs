//! Keeps every shard of topics covered. Topics are split into shards of at
//! most 1,000; each shard has `redundancy` slots, and each slot keeps one
//! channel receiving:
//!
//! - planned transitions (socket_closing, channel or token near expiry,
//!   token revoked, topics moved away) are make-before-break: a standby
//!   session is set up on a new channel, and only when it is receiving is the
//!   old socket closed;
//! - unplanned ends (socket error, server close, heartbeat silence, channel
//!   gone) are retried with full-jitter backoff, each slot on its own,
//!   reconnecting to the same channel when a HEAD says it still exists.
//!
//! A shard with no receiving socket is blind: the interval is a gap, sent to
//! the pipeline as a [`Gap`] record when it closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::session::{self, Ended, Farewell, Plan, SessionContext, SessionEvent};
use crate::config::{ReconnectSection, MAX_CHANNELS, MAX_TOPICS_PER_CHANNEL};
use crate::event::{Gap, Inbound, Reason};
use crate::genesys::api::Channel;
use crate::genesys::auth::Token;
use crate::telemetry::{events, metrics};
use crate::timer::sleep_until_opt;

/// Splits topics into shards of at most 1,000 (the per-channel limit).
pub fn shards(topics: &[String]) -> Vec<Arc<[String]>> {
    topics
        .chunks(MAX_TOPICS_PER_CHANNEL)
        .map(Arc::from)
        .collect()
}

/// Runs every slot of every shard until `cancel`; returns when all sockets
/// are closed.
pub async fn run(
    ctx: SessionContext,
    topics: Vec<String>,
    redundancy: usize,
    reconnect: ReconnectSection,
    cancel: CancellationToken,
) {
    let shards = shards(&topics);
    let slots = shards.len() * redundancy;
    let health = &metrics().health;
    health
        .shards_total
        .store(shards.len() as i64, Ordering::Relaxed);
    // Planned rotations open a second socket for a while; never hold more
    // channels than Genesys allows, or the 21st evicts one of ours.
    let permits = Arc::new(Semaphore::new(MAX_CHANNELS.saturating_sub(slots).max(1)));
    let mut tasks = Vec::new();
    for (index, topics) in shards.into_iter().enumerate() {
        let shard = Arc::new(Shard::new(index, topics, ctx.out.clone()));
        for _ in 0..redundancy {
            let slot = Slot {
                shard: shard.clone(),
                ctx: ctx.clone(),
                backoff: Backoff::new(&reconnect),
                permits: permits.clone(),
                redundancy,
                tokens: ctx.api.auth().subscribe(),
                active: None,
                standby: None,
                rotation: None,
                dormant: false,
                standby_announced: None,
                retiring: Vec::new(),
            };
            tasks.push(tokio::spawn(slot.run(cancel.clone())));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// One shard's coverage: how many of its sockets are receiving, and the gap
/// that is open while none is.
pub struct Shard {
    index: usize,
    topics: Arc<[String]>,
    out: mpsc::Sender<Inbound>,
    coverage: Mutex<Coverage>,
    /// Woken when the shard goes blind (a dormant slot takes over).
    lost: Notify,
    /// Set once the server is seen moving topics between our own channels.
    single_holder: AtomicBool,
    all_rejected: AtomicBool,
    /// Rejected topics already reported: each is said once, not per rotation.
    reported: Mutex<std::collections::HashSet<String>>,
}

#[derive(Default)]
struct Coverage {
    receiving: usize,
    gap: Option<(SystemTime, Reason)>,
    /// Topic counts last reported, so the gauges move by the difference.
    accepted: i64,
    rejected: i64,
}

impl Shard {
    fn new(index: usize, topics: Arc<[String]>, out: mpsc::Sender<Inbound>) -> Self {
        Self {
            index,
            topics,
            out,
            coverage: Mutex::new(Coverage::default()),
            lost: Notify::new(),
            single_holder: AtomicBool::new(false),
            all_rejected: AtomicBool::new(false),
            reported: Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn receiving(&self) -> usize {
        self.coverage.lock().map_or(0, |c| c.receiving)
    }

    /// A socket of this shard started receiving; closes the open gap, if any.
    async fn up(&self) {
        let gap = {
            let Ok(mut c) = self.coverage.lock() else {
                return;
            };
            c.receiving += 1;
            if c.receiving != 1 {
                return;
            }
            let health = &metrics().health;
            health.shards_covered.fetch_add(1, Ordering::Relaxed);
            health.gap_closed(self.index);
            c.gap.take()
        };
        if let Some((started_at, reason)) = gap {
            self.close_gap(started_at, SystemTime::now(), reason).await;
        }
    }

    /// Reports a blind interval from `started_at` to `ended_at`.
    async fn close_gap(&self, started_at: SystemTime, ended_at: SystemTime, reason: Reason) {
        let gap = Gap {
            started_at,
            ended_at: ended_at.max(started_at),
            reason,
            topics: self.topics.clone(),
        };
        events::gap_closed(self.index, &gap);
        // The pipeline turns it into a marker record; if it is gone we
        // are shutting down and the log line above is what remains.
        let _ = self.out.send(Inbound::Gap(gap)).await;
    }

    /// A receiving socket was stopped by its slot because a replacement is
    /// already receiving; true if that replacement is now the only one.
    fn replaced(&self, reason: Reason) -> bool {
        let Ok(mut c) = self.coverage.lock() else {
            return false;
        };
        self.down_locked(&mut c, SystemTime::now(), reason);
        c.receiving == 1
    }

    /// Waits for a replaced socket's session to close it. If the server did
    /// not show the channel alive then (no answer, or "channel not found"),
    /// the socket had been blind since its last frame, and the shard from
    /// then until its replacement came up at `until`: a gap, already closed,
    /// that neither the heartbeat timeout nor a 404 reported.
    async fn retired(&self, session: JoinHandle<()>, farewell: Arc<Farewell>, until: SystemTime) {
        let _ = session.await;
        if let Some((since, reason)) = farewell.blind_since().filter(|&(since, _)| since < until) {
            events::blind_socket_replaced(self.index, since, reason);
            self.close_gap(since, until, reason).await;
        }
    }

    /// A receiving socket of this shard stopped at `since`.
    fn down(&self, since: SystemTime, reason: Reason) {
        if let Ok(mut c) = self.coverage.lock() {
            self.down_locked(&mut c, since, reason);
        }
    }

    fn down_locked(&self, c: &mut Coverage, since: SystemTime, reason: Reason) {
        c.receiving = c.receiving.saturating_sub(1);
        if c.receiving == 0 {
            let health = &metrics().health;
            health.shards_covered.fetch_sub(1, Ordering::Relaxed);
            health.gap_opened(self.index, since);
            c.gap = Some((since, reason));
            events::gap_opened(self.index, reason, since);
            self.lost.notify_waiters();
        }
    }

    fn subscribed(&self, accepted: usize, rejected: &[(String, String)]) {
        if let Ok(mut c) = self.coverage.lock() {
            let (a, r) = (accepted as i64, rejected.len() as i64);
            metrics().topics_subscribed.add(a - c.accepted);
            metrics().topics_rejected.add(r - c.rejected);
            (c.accepted, c.rejected) = (a, r);
        }
        let all_rejected = accepted == 0;
        if self.all_rejected.swap(all_rejected, Ordering::Relaxed) != all_rejected {
            metrics()
                .health
                .shards_rejected
                .fetch_add(if all_rejected { 1 } else { -1 }, Ordering::Relaxed);
        }
    }
}

/// A running session, as its slot sees it.
struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    channel: Option<Channel>,
    receiving: bool,
    /// When to move to a fresh channel before this one expires.
    rotate_at: Option<Instant>,
    farewell: Arc<Farewell>,
    /// Held by a standby while two sockets are open.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Running {
    async fn next(running: &mut Option<Running>) -> SessionEvent {
        match running {
            Some(r) => match r.events.recv().await {
                Some(event) => event,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    fn stop(self) -> JoinHandle<()> {
        self.cancel.cancel();
        self.handle
    }
}

struct Slot {
    shard: Arc<Shard>,
    ctx: SessionContext,
    backoff: Backoff,
    permits: Arc<Semaphore>,
    redundancy: usize,
    tokens: watch::Receiver<Option<Arc<Token>>>,
    /// The session that is (or is becoming) the receiving one.
    active: Option<Running>,
    /// A make-before-break replacement being set up.
    standby: Option<Running>,
    /// A planned move waiting for its standby: why, and not before when.
    rotation: Option<(Reason, Instant)>,
    /// Parked after the server showed it keeps one holder per topic.
    dormant: bool,
    /// A move the standby announced before it was promoted.
    standby_announced: Option<(Reason, &'static str)>,
    /// Replaced sessions closing their sockets (see [`Shard::retired`]).
    retiring: Vec<JoinHandle<()>>,
}

impl Slot {
    fn spawn(&self, plan: Plan, delay: Duration, permit: Option<OwnedSemaphorePermit>) -> Running {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let farewell = Arc::new(Farewell::default());
        let handle = tokio::spawn(session::run(
            self.ctx.clone(),
            self.shard.index,
            self.shard.topics.clone(),
            plan,
            delay,
            cancel.clone(),
            tx,
            farewell.clone(),
        ));
        Running {
            cancel,
            handle,
            events: rx,
            channel: None,
            receiving: false,
            rotate_at: None,
            farewell,
            _permit: permit,
        }
    }

    async fn run(mut self, cancel: CancellationToken) {
        self.active = Some(self.spawn(Plan::New, Duration::ZERO, None));
        let mut dormant_check = tokio::time::interval(Duration::from_secs(5));
        dormant_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let rotate_at = self
                .active
                .as_ref()
                .filter(|a| a.receiving && self.standby.is_none() && self.rotation.is_none())
                .and_then(|a| a.rotate_at);
            let rotation_due = self
                .rotation
                .filter(|_| self.standby.is_none())
                .map(|(_, at)| at);
            tokio::select! {
                () = cancel.cancelled() => break,
                event = Running::next(&mut self.active) => self.on_active(event).await,
                event = Running::next(&mut self.standby) => self.on_standby(event).await,
                () = sleep_until_opt(rotate_at) => self.plan_rotation(Reason::ChannelExpiry, "channel near expiry"),
                () = sleep_until_opt(rotation_due) => self.start_standby(),
                Ok(()) = self.tokens.changed() => self.on_new_token(),
                () = self.shard.lost.notified(), if self.dormant => self.wake(),
                _ = dormant_check.tick(), if self.dormant => {
                    if self.shard.receiving() == 0 { self.wake(); }
                }
            }
        }
        let handles: Vec<_> = [self.active.take(), self.standby.take()]
            .into_iter()
            .flatten()
            .map(Running::stop)
            .chain(self.retiring.drain(..))
            .collect();
        for handle in handles {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
    }

    async fn on_active(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Receiving {
                channel,
                reused,
                accepted,
                rejected,
            } => {
                let _ = reused;
                if let Some(active) = self.active.as_mut() {
                    Self::receiving(&self.shard, active, channel, accepted, &rejected).await;
                }
                // The token may have changed while this channel was set up.
                self.on_new_token();
            }
            SessionEvent::Planned { reason, detail } => self.on_planned(reason, detail),
            SessionEvent::Ended(ended) => {
                let Some(active) = self.active.take() else {
                    return;
                };
                let channel = ended.channel.as_ref().map(|c| c.id.tag().clone());
                if active.receiving {
                    let reason = self
                        .rotation
                        .map(|(r, _)| r)
                        .or(ended.reason)
                        .unwrap_or(Reason::SocketError);
                    if self.rotation.is_none() {
                        events::reconnect(
                            self.shard.index,
                            channel.as_deref().unwrap_or("-"),
                            reason,
                            &ended.detail,
                        );
                    }
                    self.shard.down(ended.since, reason);
                }
                self.backoff.connection_ended(ended.up_for);
                if self.dormant {
                    return;
                }
                if self.standby.is_some() {
                    // A replacement is on its way; its arrival closes the gap.
                    return;
                }
                // A move was planned because this channel is going away
                // (topics moved off it, its token is stale): never reuse it.
                let reusable = !matches!(
                    self.rotation.take(),
                    Some((Reason::ChannelGone | Reason::TokenRefresh, _))
                );
                self.recover(ended, reusable);
            }
        }
    }

    /// Starts a replacement for a session that ended without a standby. The
    /// old channel is reused (after a HEAD) only when its socket had been
    /// receiving: then its subscriptions are known to live on the server. A
    /// channel whose set-up failed may never have been subscribed, or may be
    /// dead while HEAD still says 200; it is replaced.
    fn recover(&mut self, ended: Ended, reusable: bool) {
        let delay = self.backoff.next_delay(ended.retry_after);
        if ended.reason.is_none() {
            match &ended.channel {
                Some(c) => {
                    events::connect_failed(self.shard.index, c.id.tag(), &ended.detail, delay)
                }
                None => tracing::warn!(
                    shard = self.shard.index,
                    error = %ended.detail,
                    retry_in_ms = delay.as_millis() as u64,
                    "Could not set up a channel; retrying."
                ),
            }
        }
        let plan = match (ended.reason, ended.channel) {
            (Some(reason), Some(channel)) if reusable && reason != Reason::ChannelGone => {
                Plan::Check(channel)
            }
            _ => Plan::New,
        };
        self.active = Some(self.spawn(plan, delay, None));
    }

    async fn on_standby(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Receiving {
                channel,
                accepted,
                rejected,
                ..
            } => {
                let Some(mut standby) = self.standby.take() else {
                    return;
                };
                let old_receiving = self.active.as_ref().is_some_and(|a| a.receiving);
                if accepted == 0 && old_receiving {
                    // The new channel would receive nothing: keep the old one.
                    events::all_topics_rejected(self.shard.index);
                    drop(standby.stop());
                    if let Some((reason, _)) = self.rotation {
                        let delay = self.backoff.next_delay(None);
                        self.rotation = Some((reason, Instant::now() + delay));
                    }
                    return;
                }
                Self::receiving(&self.shard, &mut standby, channel, accepted, &rejected).await;
                let reason = self
                    .rotation
                    .take()
                    .map_or(Reason::ChannelExpiry, |(r, _)| r);
                // The new socket counts as receiving before the old one stops,
                // so a planned move never opens a gap.
                standby._permit = None;
                if let Some(old) = self.active.replace(standby) {
                    let alone = old.receiving && self.shard.replaced(reason);
                    let farewell = old.farewell.clone();
                    let session = old.stop();
                    if alone {
                        // Was the old socket still live when it was replaced?
                        // Its close (a ping, then the close) answers that,
                        // within the drain timeout.
                        let shard = self.shard.clone();
                        let until = SystemTime::now();
                        self.retiring.retain(|h| !h.is_finished());
                        self.retiring.push(tokio::spawn(async move {
                            shard.retired(session, farewell, until).await;
                        }));
                    }
                }
                if let Some((reason, detail)) = self.standby_announced.take() {
                    self.plan_rotation(reason, detail);
                }
                self.on_new_token();
            }
            SessionEvent::Planned { reason, detail } => {
                // Acted on once it is the active one (it is still receiving
                // until the server closes it).
                self.standby_announced = Some((reason, detail));
            }
            SessionEvent::Ended(ended) => {
                self.standby = None;
                self.standby_announced = None;
                let delay = self.backoff.next_delay(ended.retry_after);
                tracing::warn!(shard = self.shard.index, error = %ended.detail, retry_in_ms = delay.as_millis() as u64, "Standby channel failed; retrying.");
                match (&self.active, self.rotation) {
                    (Some(_), Some((reason, _))) => {
                        self.rotation = Some((reason, Instant::now() + delay));
                    }
                    _ => {
                        self.rotation = None;
                        self.active = Some(self.spawn(Plan::New, delay, None));
                    }
                }
            }
        }
    }

    async fn receiving(
        shard: &Shard,
        running: &mut Running,
        channel: Channel,
        accepted: usize,
        rejected: &[(String, String)],
    ) {
        let new_rejections: Vec<(String, String)> = match shard.reported.lock() {
            Ok(mut reported) => rejected
                .iter()
                .filter(|(topic, _)| reported.insert(topic.clone()))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        events::topics_subscribed(shard.index, accepted, &new_rejections);
        shard.subscribed(accepted, rejected);
        running.rotate_at = rotation_time(&channel);
        running.channel = Some(channel);
        if accepted == 0 {
            // Nothing to receive: not covered, and no point in retrying fast.
            events::all_topics_rejected(shard.index);
            return;
        }
        running.receiving = true;
        shard.up().await;
    }

    fn on_planned(&mut self, reason: Reason, detail: &'static str) {
        if self.active.is_none() {
            return;
        }
        if detail == "another_channel_subscribed"
            && self.redundancy > 1
            && self.standby.is_none()
            && self.rotation.is_none()
            && self.shard.receiving() > 1
        {
            // Our other channel took the topics: the server keeps one holder.
            // Moving back would steal them again, forever. Park this slot.
            if !self.shard.single_holder.swap(true, Ordering::Relaxed) {
                events::single_holder_detected(self.shard.index);
            }
            if let Some(active) = self.active.take() {
                if active.receiving {
                    self.shard.down(SystemTime::now(), reason);
                }
                drop(active.stop());
            }
            self.dormant = true;
            return;
        }
        self.plan_rotation(reason, detail);
    }

    fn plan_rotation(&mut self, reason: Reason, detail: &str) {
        if self.rotation.is_some() || self.standby.is_none() && self.active.is_none() {
            return;
        }
        if self.standby.is_some() {
            return;
        }
        let channel = self
            .active
            .as_ref()
            .and_then(|a| a.channel.as_ref())
            .map_or("-".into(), |c| c.id.tag().clone());
        events::reconnect(self.shard.index, &channel, reason, detail);
        self.rotation = Some((reason, Instant::now()));
    }

    fn start_standby(&mut self) {
        let Some((reason, _)) = self.rotation else {
            return;
        };
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => self.standby = Some(self.spawn(Plan::New, Duration::ZERO, Some(permit))),
            // Other slots are mid-move; try again shortly.
            Err(_) => self.rotation = Some((reason, Instant::now() + Duration::from_millis(200))),
        }
    }

    fn on_new_token(&mut self) {
        let generation = self.tokens.borrow().as_ref().map(|t| t.generation);
        let stale = self
            .active
            .as_ref()
            .filter(|a| a.receiving)
            .and_then(|a| a.channel.as_ref())
            .zip(generation)
            .is_some_and(|(c, g)| c.token_generation < g);
        if stale {
            // The channel dies with the token that made it: move to one made
            // with the new token while the old still works.
            self.plan_rotation(Reason::TokenRefresh, "new token");
        }
    }

    fn wake(&mut self) {
        self.dormant = false;
        if self.active.is_none() && self.standby.is_none() {
            self.active = Some(self.spawn(Plan::New, Duration::ZERO, None));
        }
    }
}

/// When to rotate a channel ahead of its expiry: a quarter of its remaining
/// life early, at most five minutes early.
fn rotation_time(channel: &Channel) -> Option<Instant> {
    let left = channel.expires?.duration_since(SystemTime::now()).ok()?;
    let margin = (left / 4).min(Duration::from_secs(300));
    Some(Instant::now() + left - margin)
}
