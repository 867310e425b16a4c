//! A bounded window of event fingerprints. Make-before-break overlap and
//! redundant channels deliver the same event twice; the fingerprint is the
//! 128-bit xxh3 of topic name and event body (Genesys gives no event id, and
//! the correlation id is not documented as unique). The window is bounded by
//! age and by count, so memory stays bounded whatever the rate.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use tokio::time::Instant;
use xxhash_rust::xxh3::Xxh3;

/// A fingerprint is already a uniform hash: the set uses its low bits as is.
#[derive(Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

pub struct Dedup {
    /// The window's length, in the entries' unit (nanoseconds).
    window_nanos: u64,
    capacity: usize,
    /// Entry times count from the first event: 8 bytes, not an Instant's 16.
    base: Option<Instant>,
    seen: HashSet<u128, BuildHasherDefault<PassThrough>>,
    /// Oldest first.
    order: VecDeque<Entry>,
}

/// 24 bytes (a `(Instant, u128)` takes 32): at the default 100,000
/// fingerprints the window is 2.4 MB of entries plus 2.2 MB of set.
#[derive(Clone, Copy)]
struct Entry {
    at_nanos: u64,
    fingerprint: [u64; 2],
}

impl Entry {
    fn new(at_nanos: u64, fingerprint: u128) -> Self {
        Self {
            at_nanos,
            fingerprint: [(fingerprint >> 64) as u64, fingerprint as u64],
        }
    }

    fn fingerprint(&self) -> u128 {
        (u128::from(self.fingerprint[0]) << 64) | u128::from(self.fingerprint[1])
    }
}

/// Up to this many fingerprints, the window is allocated whole at start (its
/// pages are touched only as it fills): growing it by doubling would hold
/// the old and the new copy at once, raising the peak.
const PREALLOCATE_UP_TO: usize = 1 << 20;

impl Dedup {
    pub fn new(window: Duration, capacity: usize) -> Self {
        let initial = capacity.min(PREALLOCATE_UP_TO);
        Self {
            window_nanos: nanos(window),
            capacity,
            base: None,
            seen: HashSet::with_capacity_and_hasher(initial, Default::default()),
            order: VecDeque::with_capacity(initial),
        }
    }

    /// Nanoseconds from the first event to `now` (saturating).
    fn since_base(&mut self, now: Instant) -> u64 {
        let base = *self.base.get_or_insert(now);
        nanos(now.saturating_duration_since(base))
    }

    pub fn fingerprint(topic: &str, body: &str) -> u128 {
        let mut h = Xxh3::new();
        h.update(topic.as_bytes());
        h.update(&[0]);
        h.update(body.as_bytes());
        h.digest128()
    }

    /// True the first time an event is seen within the window.
    pub fn first_seen(&mut self, fingerprint: u128, now: Instant) -> bool {
        let now = self.since_base(now);
        self.expire(now);
        if !self.seen.insert(fingerprint) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest.fingerprint());
            }
        }
        self.order.push_back(Entry::new(now, fingerprint));
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now: u64) {
        while let Some(oldest) = self.order.front() {
            if now.saturating_sub(oldest.at_nanos) < self.window_nanos {
                break;
            }
            self.seen.remove(&oldest.fingerprint());
            self.order.pop_front();
        }
    }
}

/// A duration in nanoseconds, saturating (u64 holds 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn drops_repeats_within_the_window_only() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10), 100);
        let a = Dedup::fingerprint("v2.users.1.presence", r#"{"x":1}"#);
        assert!(d.first_seen(a, t0));
        assert!(!d.first_seen(a, t0 + Duration::from_secs(9)));
        assert!(d.first_seen(a, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn topic_and_body_both_matter() {
        let a = Dedup::fingerprint("v2.users.1.presence", "{}");
        let b = Dedup::fingerprint("v2.users.2.presence", "{}");
        let c = Dedup::fingerprint("v2.users.1.presence", "{ }");
        let d = Dedup::fingerprint("v2.users.1.presenc", "e{}");
        assert!(a != b && a != c && a != d);
    }

    #[test]
    fn capacity_bounds_memory_and_evicts_the_oldest() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(3600), 3);
        for i in 0..5u128 {
            assert!(d.first_seen(i << 64 | i, t0));
        }
        assert_eq!(d.len(), 3);
        assert!(d.first_seen(0, t0), "evicted, so new again");
        assert!(!d.first_seen(4 << 64 | 4, t0));
    }

    proptest! {
        /// The same answers as the plainest window there is: a list of
        /// (time, fingerprint), expired by age, evicted oldest first.
        #[test]
        fn agrees_with_a_naive_window(
            events in proptest::collection::vec((0u128..20, 0u64..400), 0..300),
            cap in 1usize..30,
        ) {
            let window = Duration::from_millis(1000);
            let t0 = Instant::now();
            let mut d = Dedup::new(window, cap);
            let mut naive: VecDeque<(u64, u128)> = VecDeque::new();
            let mut t = 0;
            for (id, step) in events {
                t += step;
                let fp = id << 70 | id; // both halves of the entry matter
                naive.retain(|&(at, _)| t - at < 1000);
                let new = !naive.iter().any(|&(_, f)| f == fp);
                if new {
                    if naive.len() == cap {
                        naive.pop_front();
                    }
                    naive.push_back((t, fp));
                }
                prop_assert_eq!(d.first_seen(fp, t0 + Duration::from_millis(t)), new);
            }
        }

        #[test]
        fn never_exceeds_capacity(ids in proptest::collection::vec(0u128..50, 0..400), cap in 1usize..20) {
            let t0 = Instant::now();
            let mut d = Dedup::new(Duration::from_secs(60), cap);
            for (i, id) in ids.iter().enumerate() {
                d.first_seen(*id, t0 + Duration::from_millis(i as u64));
                prop_assert!(d.len() <= cap);
                prop_assert_eq!(d.seen.len(), d.order.len());
            }
        }
    }
}
