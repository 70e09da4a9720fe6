//! Exponential backoff with full jitter: the n-th wait is uniform in `[0, min(max, initial·2ⁿ)]`,
//! so many gateways retrying at once spread out instead of stampeding the ingest. The one
//! backoff of the code base: the gateway's resends (`retry.*`) and both programs' setup loops
//! ([`SETUP`]: binding the edge consumer, checking the cloud stream).

use std::time::Duration;

/// Setup steps retried until they succeed (the edge stream and consumer, the cloud stream):
/// soon at first, at most every 5 s while a server is away.
pub const SETUP: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Upper bound of the wait before attempt `attempt` (0-based count of failures so far).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A jittered wait for `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let c: Vec<_> = (0..7).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(c, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
        for a in 0..40 {
            assert!(b.delay(a) <= b.ceiling(a));
        }
    }

    #[test]
    fn jitter_spreads_waits() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let waits: std::collections::BTreeSet<_> = (0..50).map(|_| b.delay(0)).collect();
        assert!(waits.len() > 40, "full jitter should rarely repeat");
    }
}
