//! The event generator: publishes generated bodies at the configured rate,
//! on the configured topics or on every topic subscribed at that moment,
//! as far as they name an active user or an existing queue (see
//! `Directory::fires`; conversation topics always fire).
//!
//! It works in ticks (at most every 2 ms) and publishes what the clock says
//! is due, building the frames outside the state lock and publishing a whole
//! tick's batch under one lock, so tens of thousands of events per second
//! stay cheap. A backlog larger than one second is dropped rather than
//! burst out. With `body_reuse` above 1, a topic's frame serves that many
//! events (each with its own sequence) before a new one is built.
//!
//! Conversation topics follow conversations through their lives: an event
//! on a user or queue conversation topic either answers a new conversation
//! or ends one that topic answered earlier (at most `MAX_OPEN` are open per
//! topic), so the truth sees conversations start and end, as the analytics
//! query shows them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::bodies::{self, Conversation, Pools};
use crate::state::{lock, Fence, Prepared, Shared};
use crate::topics::{expand, match_topic, BodyKind};

/// Shortest tick: fine enough for smooth rates, coarse enough to batch.
const MIN_TICK: Duration = Duration::from_millis(2);
/// Longest tick, so that a rate change is noticed quickly.
const MAX_TICK: Duration = Duration::from_millis(100);
/// Events built and published between two yields.
const CHUNK: usize = 256;
/// Conversations a conversation topic keeps open before it ends one.
const MAX_OPEN: usize = 3;

pub(crate) async fn run(shared: Arc<Shared>, mut rate_rx: watch::Receiver<f64>) {
    let fixed: Vec<Arc<str>> = shared
        .config
        .generator_topics
        .iter()
        .flat_map(|t| expand(t).unwrap_or_default())
        .map(|t| Arc::from(t.as_str()))
        .collect();
    // The candidates (subscribed or fixed topics) and those of them the
    // directory lets fire, refreshed when either changes.
    let mut sub_version = u64::MAX;
    let mut dir_version = u64::MAX;
    let mut subscribed: Vec<Arc<str>> = Vec::new();
    let mut topics: Vec<Arc<str>> = Vec::new();
    let mut frames = Frames::new(shared.config.body_reuse);
    loop {
        // Read together with the epoch: `set_rate` changes both under the
        // state lock, so a batch can be tied to the rate it was built for.
        let (rate, epoch) = {
            let st = lock(&shared.state);
            (*rate_rx.borrow_and_update(), st.rate_epoch)
        };
        if rate <= 0.0 {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                changed = rate_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        tracing::info!(rate, "Generator running.");
        // Kept bodies carry the time they were built: none outlives a rate.
        frames.kept.clear();
        let tick = Duration::from_secs_f64(1.0 / rate).clamp(MIN_TICK, MAX_TICK);
        let mut ticker = interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = Instant::now();
        let mut emitted: u64 = 0;
        let cap = (rate.ceil() as u64).max(1);
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                changed = rate_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = ticker.tick() => {}
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            let mut n = due.saturating_sub(emitted);
            if n > cap {
                emitted = due - cap;
                n = cap;
            }
            if n == 0 {
                continue;
            }
            emitted += n;
            let fence = {
                let st = lock(&shared.state);
                let mut stale = st.directory.version != dir_version;
                if fixed.is_empty() && st.sub_version != sub_version {
                    sub_version = st.sub_version;
                    subscribed = st.subscribed_topics();
                    subscribed.sort_unstable();
                    frames.kept.clear();
                    stale = true;
                }
                if stale {
                    // One hash lookup per topic, only when something
                    // changed: never a scan per event.
                    dir_version = st.directory.version;
                    let candidates = if fixed.is_empty() {
                        &subscribed
                    } else {
                        &fixed
                    };
                    topics.clear();
                    topics.extend(candidates.iter().filter(|t| st.directory.fires(t)).cloned());
                    frames.forget_others(&topics);
                }
                Fence {
                    rate_epoch: epoch,
                    directory: dir_version,
                }
            };
            if topics.is_empty() {
                continue;
            }
            // Build and publish in chunks, yielding between them, so a big
            // tick never holds a runtime thread (sockets are served by the
            // same threads).
            let mut left = n as usize;
            while left > 0 {
                let k = left.min(CHUNK);
                left -= k;
                let batch = frames.build(&shared, &topics, k);
                if shared.publish_prepared(batch, Some(fence)).is_empty() {
                    break; // the rate or the directory changed meanwhile
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The frames the generator publishes, each kept for `reuse` events on its
/// topic.
struct Frames {
    reuse: u32,
    /// A topic's frame and how many more events it serves.
    kept: HashMap<Arc<str>, (Arc<Prepared>, u32)>,
    /// Conversations a conversation topic answered and has not ended yet,
    /// oldest first.
    open: HashMap<Arc<str>, VecDeque<Conversation>>,
}

impl Frames {
    fn new(reuse: u32) -> Self {
        Self {
            reuse,
            kept: HashMap::new(),
            open: HashMap::new(),
        }
    }

    /// Drops the open conversations of topics no longer generated, so that
    /// they do not pile up as subscriptions come and go.
    fn forget_others(&mut self, topics: &[Arc<str>]) {
        if self.open.is_empty() {
            return;
        }
        let live: HashSet<&Arc<str>> = topics.iter().collect();
        self.open.retain(|t, _| live.contains(t));
    }

    /// The next frame on `topic`: the next step of a conversation on
    /// conversation topics, a fresh body otherwise.
    fn frame<R: Rng>(&mut self, rng: &mut R, pools: &Pools<'_>, topic: &Arc<str>) -> Prepared {
        let Some((template, ids)) = match_topic(topic) else {
            return Prepared::from_value(topic, &bodies::for_topic(rng, pools, topic));
        };
        let kind = template.kind;
        let id = ids.first().map(String::as_str).unwrap_or_default();
        let body = if matches!(
            kind,
            BodyKind::UserConversation(_) | BodyKind::QueueConversation(_)
        ) {
            self.conversation_step(rng, pools, topic, kind, id)
        } else {
            bodies::build(rng, pools, kind, id)
        };
        Prepared::from_kind(topic, kind, id, &body)
    }

    /// Ends the oldest conversation `topic` keeps open (always when
    /// `MAX_OPEN` are, else by a coin), or answers a new one.
    fn conversation_step<R: Rng>(
        &mut self,
        rng: &mut R,
        pools: &Pools<'_>,
        topic: &Arc<str>,
        kind: BodyKind,
        id: &str,
    ) -> Value {
        let open = self.open.entry(topic.clone()).or_default();
        if !open.is_empty() && (open.len() >= MAX_OPEN || rng.random_bool(0.5)) {
            if let Some(conv) = open.pop_front() {
                let now = SystemTime::now().max(conv.connected() + Duration::from_millis(1));
                return conv.body(rng, pools, Some(now));
            }
        }
        match Conversation::start(rng, pools, kind, id) {
            Some(conv) => {
                let body = conv.body(rng, pools, None);
                open.push_back(conv);
                body
            }
            None => bodies::build(rng, pools, kind, id),
        }
    }

    /// `n` frames on topics drawn at random.
    fn build(&mut self, shared: &Shared, topics: &[Arc<str>], n: usize) -> Vec<Arc<Prepared>> {
        let c = &shared.config;
        let pools = Pools {
            org_id: &c.org_id,
            user_ids: &c.user_ids,
            queue_ids: &c.queue_ids,
        };
        let mut rng = rand::rng();
        (0..n)
            .filter_map(|_| {
                let topic = topics.choose(&mut rng)?;
                if let Some((frame, left)) = self.kept.get_mut(topic) {
                    if *left > 0 {
                        *left -= 1;
                        return Some(frame.clone());
                    }
                }
                let frame = Arc::new(self.frame(&mut rng, &pools, topic));
                if self.reuse > 1 {
                    self.kept
                        .insert(topic.clone(), (frame.clone(), self.reuse - 1));
                }
                Some(frame)
            })
            .collect()
    }
}
