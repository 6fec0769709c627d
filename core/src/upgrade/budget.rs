//! The server's bandwidth cap for sending releases (`-server.upgrade.max-bytes-per-second`):
//! a token bucket in integer bytes, refilled from the instants it is given (core reads no
//! clock). Batches bound how many agents download at once; this bounds the bytes per second
//! whatever the batch, the Go README's own open problem ("no bandwidth control").

use std::time::Duration;

use crate::model::UnixMillis;

/// A token bucket of bytes: at most `burst_bytes + rate × t` bytes are taken over any span
/// `t`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ByteBudget {
    rate_bytes_per_second: u64,
    burst_bytes: u64,
    available_bytes: u64,
    /// Refilled up to this instant; the fraction of a byte below a millisecond is kept in
    /// `carry_milli_bytes` so a slow rate still refills exactly.
    refilled_at: UnixMillis,
    carry_milli_bytes: u64,
}

impl ByteBudget {
    /// A full bucket at `now`: `rate_bytes_per_second` (at least 1), with a burst of one
    /// second of the rate but never less than `min_burst_bytes` (one chunk must fit).
    #[must_use]
    pub fn new(now: UnixMillis, rate_bytes_per_second: u64, min_burst_bytes: u64) -> Self {
        let rate = rate_bytes_per_second.max(1);
        let burst = rate.max(min_burst_bytes);
        Self {
            rate_bytes_per_second: rate,
            burst_bytes: burst,
            available_bytes: burst,
            refilled_at: now,
            carry_milli_bytes: 0,
        }
    }

    /// The rate.
    #[must_use]
    pub fn rate_bytes_per_second(&self) -> u64 {
        self.rate_bytes_per_second
    }

    /// The most taken at once.
    #[must_use]
    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    fn refill(&mut self, now: UnixMillis) {
        let elapsed_ms = now.as_millis().saturating_sub(self.refilled_at.as_millis());
        if elapsed_ms == 0 {
            return;
        }
        self.refilled_at = now;
        // bytes × 1000 gained: rate (bytes/s) × elapsed (ms).
        let milli_bytes = u128::from(self.rate_bytes_per_second) * u128::from(elapsed_ms)
            + u128::from(self.carry_milli_bytes);
        let gained = u64::try_from(milli_bytes / 1000).unwrap_or(u64::MAX);
        self.available_bytes = self
            .available_bytes
            .saturating_add(gained)
            .min(self.burst_bytes);
        self.carry_milli_bytes = if self.available_bytes == self.burst_bytes {
            0
        } else {
            u64::try_from(milli_bytes % 1000).unwrap_or(0)
        };
    }

    /// Takes `bytes` at `now` when the bucket holds them; whether it did. `bytes` above the
    /// burst are never granted, so callers ask for at most the burst.
    pub fn try_take(&mut self, now: UnixMillis, bytes: u64) -> bool {
        self.refill(now);
        if bytes > self.available_bytes {
            return false;
        }
        self.available_bytes -= bytes;
        true
    }

    /// The earliest instant at which `bytes` (at most the burst) can be taken, as of the
    /// last refill.
    #[must_use]
    pub fn ready_at(&self, bytes: u64) -> UnixMillis {
        let missing = bytes
            .min(self.burst_bytes)
            .saturating_sub(self.available_bytes);
        if missing == 0 {
            return self.refilled_at;
        }
        // The carry is under 1000 milli-bytes and `missing` at least one byte.
        let milli_bytes = u128::from(missing) * 1000 - u128::from(self.carry_milli_bytes);
        let rate = u128::from(self.rate_bytes_per_second);
        let wait_ms = u64::try_from(milli_bytes.div_ceil(rate)).unwrap_or(u64::MAX);
        self.refilled_at
            .saturating_add(Duration::from_millis(wait_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_bucket_grants_its_burst_then_the_rate() {
        let mut budget = ByteBudget::new(UnixMillis(0), 1000, 0);
        assert!(budget.try_take(UnixMillis(0), 1000));
        assert!(!budget.try_take(UnixMillis(0), 1));
        assert_eq!(budget.ready_at(500), UnixMillis(500));
        assert!(!budget.try_take(UnixMillis(499), 500));
        assert!(budget.try_take(UnixMillis(500), 1));
    }

    #[test]
    fn the_burst_holds_at_least_one_chunk() {
        let budget = ByteBudget::new(UnixMillis(0), 10, 256 * 1024);
        assert_eq!(budget.burst_bytes(), 256 * 1024);
        assert_eq!(budget.rate_bytes_per_second(), 10);
    }

    #[test]
    fn a_slow_rate_refills_exactly_over_many_short_steps() {
        // 3 bytes/s asked every millisecond: the carry keeps the fractions.
        let mut budget = ByteBudget::new(UnixMillis(0), 3, 3);
        assert!(budget.try_take(UnixMillis(0), 3));
        let mut taken = 0;
        for ms in 1..=10_000 {
            if budget.try_take(UnixMillis(ms), 1) {
                taken += 1;
            }
        }
        assert_eq!(taken, 30);
    }

    proptest! {
        /// Over any span, what was granted is at most the burst plus the rate times the span;
        /// and whatever was refused is granted at `ready_at`.
        #[test]
        fn grants_never_exceed_burst_plus_rate(
            rate in 1u64..5_000_000,
            min_burst in 0u64..1_000_000,
            asks in proptest::collection::vec((0u64..3_000, 1u64..2_000_000), 1..200),
        ) {
            let mut budget = ByteBudget::new(UnixMillis(0), rate, min_burst);
            let burst = budget.burst_bytes();
            let mut now = 0u64;
            let mut grants: Vec<(u64, u64)> = Vec::new();
            for (step_ms, bytes) in asks {
                now += step_ms;
                let bytes = bytes.min(burst);
                if budget.try_take(UnixMillis(now), bytes) {
                    grants.push((now, bytes));
                } else {
                    let ready = budget.ready_at(bytes);
                    prop_assert!(ready.as_millis() > now);
                    let mut probe = budget.clone();
                    prop_assert!(probe.try_take(ready, bytes), "ready_at {ready} was not ready");
                }
            }
            for (i, (start, _)) in grants.iter().enumerate() {
                let mut sum: u128 = 0;
                for (at, bytes) in &grants[i..] {
                    sum += u128::from(*bytes);
                    let span_ms = u128::from(at - start);
                    let allowed = u128::from(burst) + u128::from(rate) * span_ms / 1000 + 1;
                    prop_assert!(sum <= allowed, "{sum} bytes in {span_ms} ms at {rate}/s, burst {burst}");
                }
            }
        }
    }
}
