//! Exponential backoff with full jitter: `uniform(0, min(max, initial * 2^n))`,
//! with a floor set by a server's `Retry-After`. The attempt count resets only
//! after a connection stayed up for `stable_after`, so a socket that flaps
//! right after connecting keeps backing off instead of hammering the server.

use std::time::Duration;

use rand::Rng;

/// The numbers of a backoff, checked (the configuration makes them from
/// `[reconnect]`: every delay positive, `max` not below `initial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The first retry waits up to this long.
    pub initial: Duration,
    /// No retry waits longer (besides a server's Retry-After).
    pub max: Duration,
    /// A connection up this long resets the attempt count.
    pub stable_after: Duration,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    stable_after: Duration,
    attempt: u32,
    /// Jitter in [0, 1]: 1.0 is the full window; tests pin it.
    jitter: Option<f64>,
}

impl Backoff {
    pub fn new(policy: &Policy) -> Self {
        Self {
            initial: policy.initial,
            max: policy.max,
            stable_after: policy.stable_after,
            attempt: 0,
            jitter: None,
        }
    }

    /// A backoff whose random draw is always `fraction` of the window.
    pub fn with_fixed_jitter(mut self, fraction: f64) -> Self {
        self.jitter = Some(fraction.clamp(0.0, 1.0));
        self
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The cap of the current window: `min(max, initial * 2^attempt)`.
    pub fn window(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn from the current window (at least `retry_after`),
    /// and moves to the next attempt.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let window = self.window();
        let fraction = self
            .jitter
            .unwrap_or_else(|| rand::rng().random_range(0.0..=1.0));
        self.attempt = self.attempt.saturating_add(1);
        window
            .mul_f64(fraction)
            .max(retry_after.unwrap_or_default())
    }

    /// The longest delay there is: used where retrying sooner cannot help
    /// (rejected credentials).
    pub fn cap(&self) -> Duration {
        self.max
    }

    /// Records how long the last connection stayed up; a stable one resets
    /// the attempt count.
    pub fn connection_ended(&mut self, up_for: Duration) {
        if up_for >= self.stable_after {
            self.attempt = 0;
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(initial_ms: u64, max_ms: u64) -> Policy {
        Policy {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            stable_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn windows_double_up_to_the_cap() {
        let mut b = Backoff::new(&config(100, 1000)).with_fixed_jitter(1.0);
        let delays: Vec<u64> = (0..6)
            .map(|_| b.next_delay(None).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn zero_jitter_is_immediate_but_retry_after_is_a_floor() {
        let mut b = Backoff::new(&config(100, 1000)).with_fixed_jitter(0.0);
        assert_eq!(b.next_delay(None), Duration::ZERO);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn resets_only_after_a_stable_connection() {
        let mut b = Backoff::new(&config(100, 10_000)).with_fixed_jitter(1.0);
        for _ in 0..4 {
            b.next_delay(None);
        }
        b.connection_ended(Duration::from_secs(29));
        assert_eq!(b.attempt(), 4);
        b.connection_ended(Duration::from_secs(30));
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(None), Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn full_jitter_stays_in_its_window(initial in 1u64..5_000, max in 1u64..600_000,
                                           attempts in 0usize..80, retry in proptest::option::of(0u64..100_000)) {
            let max = max.max(initial);
            let mut b = Backoff::new(&config(initial, max));
            for _ in 0..attempts { b.next_delay(None); }
            let n = b.attempt();
            let expected_window = Duration::from_millis(initial)
                .saturating_mul(2u32.saturating_pow(n.min(31)))
                .min(Duration::from_millis(max));
            prop_assert_eq!(b.window(), expected_window);
            let retry = retry.map(Duration::from_millis);
            let d = b.next_delay(retry);
            prop_assert!(d <= expected_window.max(retry.unwrap_or_default()));
            if let Some(r) = retry { prop_assert!(d >= r); }
            prop_assert!(b.window() <= Duration::from_millis(max));
        }
    }
}
