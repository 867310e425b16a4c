//! The optional org REST rate limit (`Config::rest_requests_per_minute`):
//! a sliding 60 s window over admitted `/api/v2` requests. A request over
//! the limit is refused with the whole seconds until the oldest admitted
//! one leaves the window, and is not counted itself, so that a client that
//! honours `Retry-After` gets in.
//!
//! Time is `tokio::time::Instant`, so a paused-clock test can drive it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The window Genesys states its limits over.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Admitted request times within the last window.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    limit: usize,
    admitted: VecDeque<Instant>,
}

impl SlidingWindow {
    pub(crate) fn new(limit: u32) -> SlidingWindow {
        SlidingWindow {
            limit: limit.max(1) as usize,
            admitted: VecDeque::new(),
        }
    }

    /// Admits a request at `now`, or says how many whole seconds (at least
    /// 1) until a slot frees.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), u64> {
        while self
            .admitted
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= WINDOW)
        {
            self.admitted.pop_front();
        }
        if self.admitted.len() < self.limit {
            self.admitted.push_back(now);
            return Ok(());
        }
        let oldest = self.admitted.front().copied().unwrap_or(now);
        let wait = (oldest + WINDOW).saturating_duration_since(now);
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_until_the_oldest_leaves() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(3);
        assert_eq!(w.admit(t0), Ok(()));
        assert_eq!(w.admit(t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(w.admit(t0 + Duration::from_secs(20)), Ok(()));
        // The oldest leaves at t0 + 60 s: 29.5 s from here, said as 30.
        assert_eq!(w.admit(t0 + Duration::from_millis(30_500)), Err(30));
        // Refused requests do not count.
        assert_eq!(w.admit(t0 + Duration::from_millis(59_900)), Err(1));
        assert_eq!(w.admit(t0 + Duration::from_secs(60)), Ok(()));
        assert_eq!(w.admit(t0 + Duration::from_secs(61)), Err(9));
    }
}
