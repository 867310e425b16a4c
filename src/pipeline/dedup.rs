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
struct PassThrough(u64);

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
    window: Duration,
    capacity: usize,
    seen: HashSet<u128, BuildHasherDefault<PassThrough>>,
    order: VecDeque<(Instant, u128)>,
}

impl Dedup {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            seen: HashSet::with_capacity_and_hasher(capacity.min(1 << 16), Default::default()),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
        }
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
        self.expire(now);
        if !self.seen.insert(fingerprint) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back((now, fingerprint));
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, fp)) = self.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&fp);
        }
    }
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
            assert!(d.first_seen(i, t0));
        }
        assert_eq!(d.len(), 3);
        assert!(d.first_seen(0, t0), "evicted, so new again");
        assert!(!d.first_seen(4, t0));
    }

    proptest! {
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
