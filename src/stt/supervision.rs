//! Restart policy for a call's STT stream: a budget of restarts per time window, and capped,
//! jittered exponential backoff between them. Pure; time and randomness are passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most `max` restarts within any `window`.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// A budget of `max` restarts per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            recent: VecDeque::with_capacity(max + 1),
        }
    }

    /// Records a restart at `now` if the budget allows it; false means give up.
    pub fn try_spend(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Restarts counted in the current window.
    pub fn spent(&self) -> usize {
        self.recent.len()
    }
}

/// Exponential backoff: `initial`, doubling up to `max`, each delay scaled by a jitter factor in
/// `[1 - jitter, 1 + jitter]` (still capped at `max`).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// 250 ms, 500 ms, 1 s, 2 s, 4 s, 5 s… with ±20 % jitter, by default.
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        Self {
            initial,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        base.mul_f64(factor).min(self.max)
    }

    /// Starts again from `initial` (after a stream proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_max_per_window_then_recovers() {
        let t0 = Instant::now();
        let mut budget = RestartBudget::new(3, Duration::from_secs(10));
        assert!(budget.try_spend(t0));
        assert!(budget.try_spend(t0 + Duration::from_secs(1)));
        assert!(budget.try_spend(t0 + Duration::from_secs(2)));
        assert!(
            !budget.try_spend(t0 + Duration::from_secs(3)),
            "fourth within 10 s is refused"
        );
        assert_eq!(budget.spent(), 3);
        assert!(
            budget.try_spend(t0 + Duration::from_secs(10)),
            "the first restart left the window"
        );
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(5), 0.0);
        let delays: Vec<u128> = (0..7).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(delays, vec![250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(250));

        let mut j = Backoff::new(Duration::from_millis(1000), Duration::from_secs(5), 0.2);
        assert_eq!(j.next_delay(0.0), Duration::from_millis(800));
        let mut j = Backoff::new(Duration::from_millis(1000), Duration::from_secs(5), 0.2);
        assert_eq!(j.next_delay(1.0), Duration::from_millis(1200));
        let mut capped = Backoff::new(Duration::from_secs(5), Duration::from_secs(5), 0.2);
        assert_eq!(
            capped.next_delay(1.0),
            Duration::from_secs(5),
            "jitter never exceeds the cap"
        );
    }
}
