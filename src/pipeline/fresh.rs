//! The last notification received per topic and resource: what a resync
//! record is checked against, so that a state fetched before a newer
//! notification arrived never lands after it (never older over newer).
//!
//! Two generations of a map from (topic, resource) to the receipt time,
//! rotated every `horizon`: every notification received since the older
//! generation began is remembered, memory stays bounded by the resources
//! seen in two horizons, and a resync record whose fetch is older than
//! that cannot be checked, so it is not published.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use xxhash_rust::xxh3::Xxh3;

use super::dedup::PassThrough;

/// What the check says of a resync record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No notification for it since the fetch: publish.
    Current,
    /// A notification received after the fetch is newer: skip.
    Superseded,
    /// The fetch is older than what is remembered: cannot tell, skip.
    Stale,
}

pub struct Freshness {
    current: HashMap<u64, SystemTime, BuildHasherDefault<PassThrough>>,
    previous: HashMap<u64, SystemTime, BuildHasherDefault<PassThrough>>,
    /// When each generation began (wall clock, as receipt times are).
    current_since: SystemTime,
    previous_since: SystemTime,
    rotated_at: Instant,
    horizon: Duration,
}

impl Freshness {
    pub fn new(horizon: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            current: HashMap::default(),
            previous: HashMap::default(),
            current_since: now,
            previous_since: now,
            rotated_at: Instant::now(),
            horizon,
        }
    }

    /// Called for every event: hashed in place, nothing allocated.
    fn key(topic: &str, resource: &[u8]) -> u64 {
        let mut h = Xxh3::new();
        h.update(topic.as_bytes());
        h.update(&[0]);
        h.update(resource);
        h.digest()
    }

    /// A notification for `topic` and `resource` was received at `at`.
    pub fn saw(&mut self, topic: &str, resource: &[u8], at: SystemTime, now: Instant) {
        if now.saturating_duration_since(self.rotated_at) >= self.horizon {
            self.previous = std::mem::take(&mut self.current);
            self.previous_since = self.current_since;
            self.current_since = at.min(SystemTime::now());
            self.rotated_at = now;
        }
        self.current.insert(Self::key(topic, resource), at);
    }

    /// Whether a state of `topic` and `resource` fetched at `fetched_at`
    /// is still the newest the bridge knows.
    pub fn judge(&self, topic: &str, resource: &[u8], fetched_at: SystemTime) -> Verdict {
        if fetched_at < self.previous_since {
            return Verdict::Stale;
        }
        let key = Self::key(topic, resource);
        let newer =
            |map: &HashMap<u64, SystemTime, _>| map.get(&key).is_some_and(|&at| at >= fetched_at);
        if newer(&self.current) || newer(&self.previous) {
            Verdict::Superseded
        } else {
            Verdict::Current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_after_the_fetch_wins_one_before_does_not() {
        let mut f = Freshness::new(Duration::from_secs(60));
        let t0 = SystemTime::now();
        let now = Instant::now();
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        f.saw("v2.users.u1.presence", b"u1", t(10), now);
        assert_eq!(
            f.judge("v2.users.u1.presence", b"u1", t(20)),
            Verdict::Current
        );
        assert_eq!(
            f.judge("v2.users.u1.presence", b"u1", t(5)),
            Verdict::Superseded
        );
        assert_eq!(
            f.judge("v2.users.u2.presence", b"u2", t(5)),
            Verdict::Current
        );
        assert_eq!(
            f.judge("v2.users.u1.routingStatus", b"u1", t(5)),
            Verdict::Current
        );
    }

    #[tokio::test(start_paused = true)]
    async fn entries_live_two_horizons_and_older_fetches_are_stale() {
        let mut f = Freshness::new(Duration::from_secs(30));
        let t0 = SystemTime::now();
        f.saw("a", b"1", t0, Instant::now());
        tokio::time::advance(Duration::from_secs(31)).await;
        let t1 = t0 + Duration::from_secs(31);
        f.saw("b", b"2", t1, Instant::now());
        // "a" moved to the previous generation: still known.
        assert_eq!(f.judge("a", b"1", t0), Verdict::Superseded);
        tokio::time::advance(Duration::from_secs(31)).await;
        f.saw("c", b"3", t1 + Duration::from_secs(31), Instant::now());
        // "a" is forgotten; a fetch from before the kept generations is stale.
        assert_eq!(f.judge("a", b"1", t0), Verdict::Stale);
        assert_eq!(f.judge("b", b"2", t1), Verdict::Superseded);
    }
}
