//! The resync stage: after every gap (and when a shard first subscribes),
//! the current state of the resources behind its topics, from the REST API,
//! published as records consumers apply like notifications. It never delays
//! the live path: it is its own task, it talks to the pipeline through the
//! same bounded channel as the sockets, and its REST calls are paced by a
//! token bucket (`resync.max_requests_per_minute`) besides every
//! `Retry-After`.
//!
//! Overlapping resyncs are merged: a resource already waiting is fetched
//! once, for every resync that wants it. Resources are fetched oldest resync
//! first, presence 50 users a call. Memory is bounded: beyond
//! `resync.max_pending_resources` a resync is partial, and says so.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ResyncSection;
use crate::event::{Inbound, ResyncDone, ResyncJob, ResyncKind, ResyncRecord};
use crate::genesys::api::{Api, ApiError};
use crate::genesys::state::{self, Party, PRESENCE_BULK_MAX};
use crate::telemetry::events;

/// A resource whose state a topic stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    pub what: What,
    /// The user or queue id.
    pub id: Arc<str>,
    /// The single topic its records go to.
    pub topic: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum What {
    Presence,
    RoutingStatus,
    QueueConversations,
    UserConversations,
}

/// The resources behind `topics` (combined topics expanded); topics with
/// no REST state source (gap marker only) give none.
pub fn resources(topics: &[String]) -> Vec<Resource> {
    let mut out = Vec::new();
    for topic in topics {
        for single in crate::pipeline::route::expand_combined(topic) {
            let parts: Vec<&str> = single.split('.').collect();
            let what = match parts.as_slice() {
                ["v2", "users", _, "presence"] => What::Presence,
                ["v2", "users", _, "routingStatus"] => What::RoutingStatus,
                // The base topics only: a sub-kind (`.conversations.calls`)
                // has a model of its own, which the details query does not fill.
                ["v2", "users", _, "conversations"] => What::UserConversations,
                ["v2", "routing", "queues", _, "conversations"] => What::QueueConversations,
                _ => continue,
            };
            let id = match what {
                What::QueueConversations => parts[3],
                _ => parts[2],
            };
            out.push(Resource {
                what,
                id: id.into(),
                topic: single.as_str().into(),
            });
        }
    }
    out
}

struct JobState {
    resync_of: Arc<str>,
    since: SystemTime,
    until: SystemTime,
    only_active: bool,
    opened: Instant,
    total: usize,
    outstanding: usize,
    failed: usize,
}

struct Waiting {
    /// The resyncs that want it, oldest first.
    jobs: Vec<u64>,
    attempts: u32,
}

/// Paces requests: `per_minute` on average, bursts of a tenth of that.
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        let capacity = (per_minute / 10.0).max(1.0);
        Self {
            tokens: capacity,
            capacity,
            per_sec: per_minute / 60.0,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.at = now;
    }

    /// When a token will be there.
    fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
        }
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// The stage's state: resyncs in progress, resources waiting by kind (each
/// queue in the order resyncs came), and where records go.
pub struct Resync {
    api: Api,
    out: mpsc::Sender<Inbound>,
    settings: ResyncSection,
    jobs: HashMap<u64, JobState>,
    next_job: u64,
    waiting: HashMap<Resource, Waiting>,
    queues: [VecDeque<(u64, Resource)>; 3],
    pending: usize,
    bucket: Bucket,
    /// No request before this (a `Retry-After`, or a backoff after errors).
    hold_until: Option<Instant>,
}

/// Requests of one resource that fail (other than rate limits) before it
/// is given up, making its resync partial; the waits between them double
/// from 1 s (about 4 minutes in all).
const MAX_ATTEMPTS: u32 = 8;

impl Resync {
    pub fn new(api: Api, out: mpsc::Sender<Inbound>, settings: ResyncSection) -> Self {
        let bucket = Bucket::new(settings.max_requests_per_minute);
        Self {
            api,
            out,
            settings,
            jobs: HashMap::new(),
            next_job: 0,
            waiting: HashMap::new(),
            queues: Default::default(),
            pending: 0,
            bucket,
            hold_until: None,
        }
    }

    fn queue_of(what: What) -> usize {
        match what {
            What::Presence => 0,
            What::RoutingStatus => 1,
            What::QueueConversations | What::UserConversations => 2,
        }
    }

    /// Runs until `cancel` or until its input ends and nothing waits.
    pub async fn run(mut self, mut jobs: mpsc::Receiver<ResyncJob>, cancel: CancellationToken) {
        let mut open = true;
        loop {
            let next = (self.pending > 0).then(|| {
                let now = Instant::now();
                let ready = self.bucket.ready_at(now);
                self.hold_until.map_or(ready, |h| h.max(ready))
            });
            tokio::select! {
                () = cancel.cancelled() => return,
                job = jobs.recv(), if open => match job {
                    Some(job) => self.add(job).await,
                    None => open = false,
                },
                () = crate::timer::sleep_until_opt(next) => {
                    self.hold_until = None;
                    self.bucket.take();
                    if !self.fetch_next().await {
                        return;
                    }
                }
            }
            if !open && self.pending == 0 {
                return;
            }
        }
    }

    async fn add(&mut self, job: ResyncJob) {
        let id = self.next_job;
        self.next_job += 1;
        let mut state = JobState {
            resync_of: job.resync_of,
            since: job.since,
            until: job.until,
            only_active: job.only_active,
            opened: job.opened,
            total: 0,
            outstanding: 0,
            failed: 0,
        };
        for resource in resources(&job.topics) {
            state.total += 1;
            if let Some(w) = self.waiting.get_mut(&resource) {
                // Already waiting for an older resync: one fetch serves both.
                w.jobs.push(id);
                state.outstanding += 1;
                continue;
            }
            if self.pending >= self.settings.max_pending_resources {
                state.failed += 1;
                continue;
            }
            self.waiting.insert(
                resource.clone(),
                Waiting {
                    jobs: vec![id],
                    attempts: 0,
                },
            );
            self.queues[Self::queue_of(resource.what)].push_back((id, resource));
            self.pending += 1;
            state.outstanding += 1;
        }
        events::resync_started(&state.resync_of, state.total);
        events::resync_pending(self.pending);
        self.jobs.insert(id, state);
        self.finish_done(id).await;
    }

    /// The queue whose head belongs to the oldest resync.
    fn oldest_queue(&self) -> Option<usize> {
        (0..self.queues.len())
            .filter_map(|q| self.queues[q].front().map(|(job, _)| (*job, q)))
            .min()
            .map(|(_, q)| q)
    }

    /// Fetches the next batch; false if the pipeline is gone.
    async fn fetch_next(&mut self) -> bool {
        let Some(q) = self.oldest_queue() else {
            return true;
        };
        let take = if q == 0 { PRESENCE_BULK_MAX } else { 1 };
        let batch: Vec<Resource> = (0..take)
            .map_while(|_| self.queues[q].pop_front().map(|(_, r)| r))
            .collect();
        let fetched_at = SystemTime::now();
        let result = self.request(&batch, fetched_at).await;
        match result {
            Ok(records) => {
                events::resync_request(Ok(()));
                for record in records {
                    if self.out.send(Inbound::Resync(record)).await.is_err() {
                        return false;
                    }
                }
                for resource in batch {
                    self.done(&resource, false).await;
                }
            }
            Err(e) => {
                let rate_limited = matches!(e, ApiError::RateLimited { .. });
                events::resync_request(Err((&e, rate_limited)));
                let attempts = batch
                    .first()
                    .and_then(|r| self.waiting.get(r))
                    .map_or(0, |w| w.attempts);
                let backoff = Duration::from_secs(1 << attempts.min(6));
                let wait = e.retry_after().unwrap_or(backoff);
                self.hold_until = Some(Instant::now() + wait);
                // Back to the front, in order; a resource that keeps
                // failing (not rate limits) is given up.
                for resource in batch.into_iter().rev() {
                    let give_up = {
                        let w = self.waiting.get_mut(&resource).expect("waiting");
                        if !rate_limited {
                            w.attempts += 1;
                        }
                        w.attempts >= MAX_ATTEMPTS
                    };
                    if give_up {
                        self.done(&resource, true).await;
                    } else {
                        let job = self.waiting[&resource].jobs[0];
                        self.queues[q].push_front((job, resource));
                    }
                }
            }
        }
        events::resync_pending(self.pending);
        true
    }

    /// The records of one batch (every resource of it is one kind).
    async fn request(
        &self,
        batch: &[Resource],
        fetched_at: SystemTime,
    ) -> Result<Vec<ResyncRecord>, ApiError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let resync_of = |resource: &Resource| -> Arc<str> {
            self.waiting
                .get(resource)
                .and_then(|w| self.jobs.get(&w.jobs[0]))
                .map_or_else(|| Arc::from("startup"), |j| j.resync_of.clone())
        };
        let record = |resource: &Resource,
                      key: &str,
                      queue_id: Option<Arc<str>>,
                      kind: ResyncKind,
                      body: serde_json::Value| ResyncRecord {
            topic: resource.topic.clone(),
            resource: key.into(),
            queue_id,
            value: Bytes::from(state::notification_value(&resource.topic, body)),
            fetched_at,
            resync_of: resync_of(resource),
            kind,
        };
        let mut out = Vec::new();
        match first.what {
            What::Presence => {
                let ids: Vec<&str> = batch.iter().map(|r| &*r.id).collect();
                for presence in state::presences(&self.api, &ids).await? {
                    let Some((user, body)) = state::presence_body(&presence) else {
                        continue;
                    };
                    if let Some(resource) = batch.iter().find(|r| *r.id == *user) {
                        out.push(record(resource, &user, None, ResyncKind::Presence, body));
                    }
                }
            }
            What::RoutingStatus => {
                if let Some(status) = state::routing_status(&self.api, &first.id).await? {
                    if let Some(body) = state::routing_status_body(&first.id, &status) {
                        out.push(record(
                            first,
                            &first.id,
                            None,
                            ResyncKind::RoutingStatus,
                            body,
                        ));
                    }
                }
            }
            What::QueueConversations | What::UserConversations => {
                // The conversations active during the gaps that want them
                // (all of them, merged); a start-up snapshot, the ones
                // still running.
                let jobs: Vec<&JobState> = self
                    .waiting
                    .get(first)
                    .map(|w| w.jobs.iter().filter_map(|j| self.jobs.get(j)).collect())
                    .unwrap_or_default();
                let since = jobs.iter().map(|j| j.since).min().unwrap_or(fetched_at);
                let until = jobs
                    .iter()
                    .map(|j| j.until)
                    .max()
                    .unwrap_or(fetched_at)
                    .min(fetched_at);
                let only_active = jobs.iter().all(|j| j.only_active);
                let (party, queue_id) = match first.what {
                    What::QueueConversations => (Party::Queue(&first.id), Some(first.id.clone())),
                    _ => (Party::User(&first.id), None),
                };
                let (conversations, _) =
                    state::conversations(&self.api, party, since, until).await?;
                for conversation in conversations
                    .iter()
                    .filter(|c| !only_active || c.get("conversationEnd").is_none())
                {
                    if let Some((id, body)) = state::conversation_body(conversation) {
                        out.push(record(
                            first,
                            &id,
                            queue_id.clone(),
                            ResyncKind::Conversation,
                            body,
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `resource` is done (fetched, or given up): every resync waiting for
    /// it counts it, and those with nothing left end.
    async fn done(&mut self, resource: &Resource, failed: bool) {
        let Some(w) = self.waiting.remove(resource) else {
            return;
        };
        self.pending -= 1;
        for job in w.jobs {
            if let Some(state) = self.jobs.get_mut(&job) {
                state.outstanding -= 1;
                if failed {
                    state.failed += 1;
                }
            }
            self.finish_done(job).await;
        }
    }

    async fn finish_done(&mut self, job: u64) {
        if self.jobs.get(&job).is_none_or(|s| s.outstanding > 0) {
            return;
        }
        let Some(state) = self.jobs.remove(&job) else {
            return;
        };
        let complete = state.failed == 0;
        events::resync_finished(
            &state.resync_of,
            complete,
            state.total,
            state.opened.elapsed(),
        );
        let _ = self
            .out
            .send(Inbound::ResyncDone(ResyncDone {
                resync_of: state.resync_of,
                complete,
                resources: state.total,
                finished_at: SystemTime::now(),
            }))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_resources() {
        let topics: Vec<String> = [
            "v2.users.u1?presence&routingStatus",
            "v2.users.u2.conversations",
            "v2.users.u2.conversations.calls",
            "v2.routing.queues.q1.conversations",
            "v2.analytics.queues.q1.observations",
            "v2.users.u3.activity",
        ]
        .map(String::from)
        .to_vec();
        let got: Vec<(What, String, String)> = resources(&topics)
            .into_iter()
            .map(|r| (r.what, r.id.to_string(), r.topic.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (What::Presence, "u1".into(), "v2.users.u1.presence".into()),
                (
                    What::RoutingStatus,
                    "u1".into(),
                    "v2.users.u1.routingStatus".into()
                ),
                (
                    What::UserConversations,
                    "u2".into(),
                    "v2.users.u2.conversations".into()
                ),
                (
                    What::QueueConversations,
                    "q1".into(),
                    "v2.routing.queues.q1.conversations".into()
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_paces_to_its_rate_after_a_burst() {
        let mut bucket = Bucket::new(120);
        let start = Instant::now();
        let mut at = start;
        for _ in 0..32 {
            at = bucket.ready_at(Instant::now());
            tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
            bucket.take();
        }
        // 12 at once (a tenth of a minute's worth), then 2 a second.
        let secs = at.duration_since(start).as_secs_f64();
        assert!((9.9..=10.1).contains(&secs), "{secs}");
    }
}
