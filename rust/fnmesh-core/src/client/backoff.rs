//! [`Backoff`]: how long the client waits before each reconnect attempt.

use std::time::Duration;

/// Reconnect schedule: the n-th retry waits `min(initial * factor^n, max)`, scaled by a random
/// factor in `1 ± jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Growth per attempt.
    pub factor: f64,
    /// Cap on the delay.
    pub max: Duration,
    /// Relative jitter, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    /// docs/protocol.md 1.5: 1 000 ms, x2, capped at 30 000 ms, ±30 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(1000),
            factor: 2.0,
            max: Duration::from_millis(30_000),
            jitter: 0.3,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(64) as i32);
        let capped = base.min(self.max.as_secs_f64()).max(0.0);
        let jitter = self.jitter.clamp(0.0, 1.0);
        // A uniform number in [-1, 1) from a v4 UUID: no extra dependency for one random draw.
        let unit = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
        let scaled = capped * (1.0 + jitter * (unit * 2.0 - 1.0));
        Duration::from_secs_f64(scaled.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff::default();
        for _ in 0..100 {
            let d0 = b.delay(0).as_secs_f64();
            assert!((0.7..=1.3).contains(&d0), "{d0}");
            let d10 = b.delay(10).as_secs_f64();
            assert!((21.0..=39.0).contains(&d10), "{d10}");
        }
        let none = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(none.delay(2), Duration::from_secs(4));
    }
}
