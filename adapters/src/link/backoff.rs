//! Reconnect delays: exponential backoff with jitter, so agents cut off by the same outage do
//! not all knock on the server at the same instant when it comes back.

use std::time::Duration;

/// How an agent waits between connection attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// The first delay after a failure (default 0.5 s).
    pub initial: Duration,
    /// The longest delay (default 30 s).
    pub max: Duration,
    /// Each delay is multiplied by a random factor in `1 ± jitter_fraction` (default 0.2).
    pub jitter_fraction: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter_fraction: 0.2,
        }
    }
}

/// The delays of one run of failures: `initial`, doubling up to `max`, each jittered; back to
/// `initial` after [`Backoff::reset`] (a successful connection).
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    next_base: Duration,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            next_base: config.initial,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next_base.min(self.config.max);
        self.next_base = base.saturating_mul(2).min(self.config.max);
        let unit = getrandom::u32().map_or(0.5, |r| f64::from(r) / f64::from(u32::MAX));
        jittered(base, self.config.jitter_fraction, unit)
    }

    /// A connection succeeded: the next failure waits `initial` again.
    pub(crate) fn reset(&mut self) {
        self.next_base = self.config.initial;
    }
}

/// `base` times `1 + fraction × (2 × unit − 1)`, with `unit` in `[0, 1]` and `fraction`
/// clamped to `[0, 1]`.
#[must_use]
pub(crate) fn jittered(base: Duration, fraction: f64, unit: f64) -> Duration {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    base.mul_f64(1.0 + fraction * (2.0 * unit - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset() {
        let config = BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter_fraction: 0.0,
        };
        let mut backoff = Backoff::new(config);
        let delays: Vec<_> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(
            delays,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_the_fraction() {
        let base = Duration::from_secs(10);
        assert_eq!(jittered(base, 0.2, 0.0), Duration::from_secs(8));
        assert_eq!(jittered(base, 0.2, 1.0), Duration::from_secs(12));
        assert_eq!(jittered(base, 0.2, 0.5), base);
        assert_eq!(jittered(base, f64::NAN, 0.0), base);
        let mut backoff = Backoff::new(BackoffConfig::default());
        for _ in 0..100 {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_millis(400) && delay <= Duration::from_secs(36));
        }
    }
}
