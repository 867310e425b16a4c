//! One function per happening: each writes the structured log line and
//! updates its metrics, so a dashboard and a log search always tell the same
//! story. Fields are ids and fixed words, never secrets or `connectUri`s.

use std::time::{Duration, SystemTime};

use tracing::{debug, error, info, warn};

use super::{metrics, DropReason};
use crate::event::{Gap, Reason, ResyncKind};

pub fn token_obtained(expires_in_secs: u64) {
    metrics().token_refreshes.with_label_values(&["ok"]).inc();
    info!(expires_in_secs, "Obtained an access token.");
}

/// `say` is true for the first rejection in a row: the operator needs to be
/// told once, not every minute.
pub fn credentials_rejected(error: &dyn std::fmt::Display, say: bool) {
    metrics()
        .token_refreshes
        .with_label_values(&["rejected"])
        .inc();
    if say {
        error!(
            error = %error,
            "Genesys rejected the client credentials. Check genesys.client_id and the secret; \
             retrying only at the reconnect.max_delay pace."
        );
    } else {
        debug!(error = %error, "Credentials still rejected.");
    }
}

pub fn token_request_failed(error: &dyn std::fmt::Display) {
    metrics()
        .token_refreshes
        .with_label_values(&["error"])
        .inc();
    warn!(error = %error, "Token request failed; will retry.");
}

pub fn socket_receiving(shard: usize, channel: &str, reused: bool) {
    metrics().channels_connected.inc();
    info!(shard, channel, reused, "Socket receiving.");
}

pub fn socket_closed(shard: usize, channel: &str, was_receiving: bool) {
    if was_receiving {
        metrics().channels_connected.dec();
    }
    debug!(shard, channel, "Socket closed.");
}

pub fn reconnect(shard: usize, channel: &str, reason: Reason, detail: &str) {
    metrics()
        .reconnects
        .with_label_values(&[reason.as_str()])
        .inc();
    if reason.is_planned() {
        info!(shard, channel, reason = %reason, detail, "Moving to a new channel (make-before-break).");
    } else {
        warn!(shard, channel, reason = %reason, detail, "Socket lost; reconnecting.");
    }
}

pub fn connect_failed(shard: usize, channel: &str, error: &str, retry_in: Duration) {
    warn!(
        shard,
        channel,
        error,
        retry_in_ms = retry_in.as_millis() as u64,
        "Socket connect failed; retrying."
    );
}

pub fn standby_failed(shard: usize, error: &str, retry_in: Duration) {
    warn!(
        shard,
        error,
        retry_in_ms = retry_in.as_millis() as u64,
        "Standby channel failed; retrying."
    );
}

pub fn frame_invalid(channel: &str, why: &str, len: usize) {
    metrics().frames_invalid.inc();
    warn!(channel, why, len, "Skipped a frame the bridge cannot read.");
}

pub fn frame_too_large(channel: &str) {
    metrics().frames_invalid.inc();
    warn!(
        channel,
        "Frame above genesys.max_frame_bytes; recycling the socket."
    );
}

pub fn topics_subscribed(shard: usize, accepted: usize, rejected: &[(String, String)]) {
    for (topic, reason) in rejected {
        warn!(
            shard,
            topic, reason, "Genesys rejected a topic; it is not bridged."
        );
    }
    info!(shard, accepted, rejected = rejected.len(), "Subscribed.");
}

pub fn all_topics_rejected(shard: usize) {
    error!(
        shard,
        "Genesys rejected every topic of this shard; it cannot receive anything. Not ready."
    );
}

pub fn single_holder_detected(shard: usize) {
    error!(
        shard,
        "Genesys moved this shard's topics to our other channel: the server keeps one holder per \
         topic, so redundancy = 2 cannot work here. Keeping one channel per shard."
    );
}

pub fn gap_opened(shard: usize, reason: Reason, since: SystemTime) {
    let ago_ms = ms_ago(since);
    warn!(shard, reason = %reason, ago_ms, "Gap opened: no socket receiving this shard's topics.");
}

/// A socket stopped for a planned move was already blind (gone silent, or
/// its channel dead): the shard was blind from its last frame, though
/// neither the heartbeat timeout nor a 404 had said so.
pub fn blind_socket_replaced(shard: usize, since: SystemTime, reason: Reason) {
    let ago_ms = ms_ago(since);
    warn!(shard, reason = %reason, ago_ms, "A replaced socket was found blind at its close (no answer, or channel not found): the shard was blind from its last frame.");
}

fn ms_ago(since: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_millis() as u64
}

pub fn gap_closed(shard: usize, gap: &Gap) {
    let seconds = gap
        .ended_at
        .duration_since(gap.started_at)
        .unwrap_or_default()
        .as_secs_f64();
    let kind = if gap.reason.is_planned() {
        "planned"
    } else {
        "unplanned"
    };
    metrics().gaps.with_label_values(&[kind]).inc();
    metrics().gap_seconds.observe(seconds);
    warn!(shard, reason = %gap.reason, seconds, topics = gap.topics.len(), "Gap closed; events published meanwhile are lost.");
}

pub fn event_received() {
    metrics().events_received.inc();
}

pub fn duplicate_dropped() {
    metrics().events_duplicate.inc();
}

pub fn published(n: u64, latency: Option<Duration>) {
    metrics().events_published.inc_by(n);
    if let Some(latency) = latency {
        metrics().publish_latency.observe(latency.as_secs_f64());
    }
}

pub fn dropped(reason: DropReason, topic: &str) {
    metrics()
        .events_dropped
        .with_label_values(&[reason.as_str()])
        .inc();
    warn!(reason = reason.as_str(), topic, "Dropped an event.");
}

pub fn delivery_error(topic: &str, error: &str) {
    metrics().kafka_delivery_errors.inc();
    warn!(topic, error, "Kafka delivery failed; retrying the event.");
}

pub fn subscription_changed(shard: usize, channel: &str, before: usize, after: usize) {
    debug!(shard, channel, before, after, "Channel's topics changed.");
}

pub fn subscription_change_failed(
    shard: usize,
    channel: &str,
    error: &dyn std::fmt::Display,
    retry_in: Duration,
) {
    warn!(
        shard,
        channel,
        error = %error,
        retry_in_secs = retry_in.as_secs_f64(),
        "Could not change a channel's topics; it keeps its current ones and will retry."
    );
}

pub fn directory_listed(users: usize, queues: usize, requests: u32, took: Duration) {
    let m = metrics();
    m.directory_refreshes.with_label_values(&["ok"]).inc();
    m.directory_entities
        .with_label_values(&["user"])
        .set(users as i64);
    m.directory_entities
        .with_label_values(&["queue"])
        .set(queues as i64);
    debug!(
        users,
        queues,
        requests,
        took_secs = took.as_secs_f64(),
        "Directory listed."
    );
}

pub fn directory_failed(error: &dyn std::fmt::Display, rate_limited: bool, retry_in: Duration) {
    let result = if rate_limited {
        "rate_limited"
    } else {
        "error"
    };
    metrics()
        .directory_refreshes
        .with_label_values(&[result])
        .inc();
    warn!(
        error = %error,
        retry_in_secs = retry_in.as_secs_f64(),
        "Directory listing failed; keeping the last good topic set."
    );
}

pub fn topics_changed(total: usize, added: usize, removed: usize, shards_changed: usize) {
    info!(
        total,
        added, removed, shards_changed, "Topic set changed; applying it shard by shard."
    );
}

/// `unserved` topics fit in no channel of the budget (0: all fit again).
pub fn topics_over_budget(unserved: usize, capacity: usize) {
    let m = metrics();
    m.topics_unserved.set(unserved as i64);
    m.health
        .topics_unserved
        .store(unserved as i64, std::sync::atomic::Ordering::Relaxed);
    if unserved > 0 {
        error!(
            unserved,
            capacity,
            "The directory needs more topics than Genesys' channel budget holds; serving the first \
             ones. Narrow the directory (queue_name, queue_division_ids, users_from) or use \
             combined topics (v2.users.{{user}}?presence&routingStatus)."
        );
    }
}

pub fn resync_record(kind: ResyncKind) {
    metrics()
        .resync_records
        .with_label_values(&[kind.as_str()])
        .inc();
}

/// A resync record not published: a newer notification came after its
/// fetch (`superseded`), or the fetch is too old to tell.
pub fn resync_record_skipped(superseded: bool) {
    let reason = if superseded {
        "newer_notification"
    } else {
        "stale"
    };
    metrics().resync_skipped.with_label_values(&[reason]).inc();
}

pub fn resync_request(result: Result<(), (&dyn std::fmt::Display, bool)>) {
    let label = match result {
        Ok(()) => "ok",
        Err((error, rate_limited)) => {
            debug!(error = %error, "Resync request failed; will retry.");
            if rate_limited {
                "rate_limited"
            } else {
                "error"
            }
        }
    };
    metrics().resync_requests.with_label_values(&[label]).inc();
}

pub fn resync_pending(resources: usize) {
    metrics().resync_pending.set(resources as i64);
}

pub fn resync_started(resync_of: &str, resources: usize) {
    info!(resync_of, resources, "Resync started.");
}

pub fn resync_finished(resync_of: &str, complete: bool, resources: usize, took: Duration) {
    let m = metrics();
    let status = if complete { "complete" } else { "partial" };
    m.resyncs.with_label_values(&[status]).inc();
    m.resync_seconds.observe(took.as_secs_f64());
    if complete {
        info!(
            resync_of,
            resources,
            took_secs = took.as_secs_f64(),
            "Resync complete."
        );
    } else {
        warn!(
            resync_of,
            resources,
            took_secs = took.as_secs_f64(),
            "Resync partial: some resources could not be fetched."
        );
    }
}
