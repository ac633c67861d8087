//! The one retry schedule of every kinfer process: exponential backoff, optionally with full
//! jitter. The watcher waits with it between S3 requests, fetch attempts and admin calls; the
//! operator between reconciles of a failing object and between alert deliveries. One type so
//! that "how long until the next try" has one meaning everywhere.

use std::time::Duration;

/// Waits that double after each consecutive failure, from `base` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// A schedule from `base` doubling up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The wait after `failures` consecutive failures (1 for the first):
    /// `min(max, base · 2^(failures-1))`.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// [`Backoff::delay`] with full jitter: uniform in `[0, delay(failures)]`, spread by `seed`
    /// (callers that retry together pass different seeds, so they do not retry in step).
    pub fn jittered(&self, failures: u32, seed: u64) -> Duration {
        // xorshift: no RNG dependency, the spread is what matters.
        let mut x = seed ^ (u64::from(failures) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.delay(failures)
            .mul_f64((x % 1_000_000) as f64 / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitter_stays_below_it() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(350));
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(350));
        assert_eq!(b.delay(0), Duration::from_millis(100));
        for n in 1..10 {
            for seed in 0..50 {
                assert!(b.jittered(n, seed) <= b.delay(n));
            }
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|s| b.jittered(5, s)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }
}
