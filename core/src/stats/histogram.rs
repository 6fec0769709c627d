//! The RTT histogram with the Go system's buckets (5e-5 × 2^k s, k = 0..18, plus +Inf).
//! Agents ship one per probe result; the server merges them into
//! `prober_icmp_duration_seconds_total`. Counts and the sum are integers (nanoseconds), so
//! merging is exact, associative and commutative: the order results arrive in cannot change a
//! quantile.

use std::time::Duration;

use crate::model::time::duration_nanos;

/// Number of finite buckets.
pub const BUCKET_COUNT: usize = 19;

/// Upper bound of the smallest bucket: 50 µs.
const FIRST_BOUND_NANOS: u64 = 50_000;

/// The finite upper bounds (`le`), in nanoseconds: 50 µs × 2^k. All are whole nanoseconds, so
/// bucketing is exact integer comparison.
#[must_use]
pub const fn bucket_bounds_nanos() -> [u64; BUCKET_COUNT] {
    let mut bounds = [0; BUCKET_COUNT];
    let mut k = 0;
    while k < BUCKET_COUNT {
        bounds[k] = FIRST_BOUND_NANOS << k;
        k += 1;
    }
    bounds
}

/// The finite upper bounds in seconds, as Prometheus prints them (`0.00005` … `13.1072`).
#[must_use]
pub fn bucket_bounds_seconds() -> [f64; BUCKET_COUNT] {
    bucket_bounds_nanos().map(|nanos| nanos as f64 / 1e9)
}

/// Counts of observed round-trip times per bucket, non-cumulative, plus their exact sum.
#[derive(Clone, Debug, Default, Eq, Hash, PartialEq)]
pub struct RttHistogram {
    /// `counts[k]` for bucket k (`bounds[k-1] < rtt <= bounds[k]`); `counts[19]` is above the last
    /// bound (+Inf only).
    counts: [u64; BUCKET_COUNT + 1],
    /// Sum of every observed RTT, in nanoseconds.
    sum_nanos: u128,
}

impl RttHistogram {
    /// The `q` quantile (0 to 1) as Prometheus' `histogram_quantile` estimates it: linear
    /// within the bucket holding the rank, the lowest bucket starting at 0; a rank in the +Inf
    /// bucket answers the last finite bound. `None` when empty or `q` is outside 0..=1.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let bounds = bucket_bounds_nanos();
        let rank = q * total as f64;
        let mut below = 0u64;
        for (k, count) in self.counts.iter().enumerate() {
            let upto = below + count;
            if (upto as f64) >= rank && *count > 0 {
                let Some(upper) = bounds.get(k) else {
                    return Some(Duration::from_nanos(bounds[BUCKET_COUNT - 1]));
                };
                let lower = if k == 0 { 0 } else { bounds[k - 1] };
                let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
                let nanos = lower as f64 + (upper - lower) as f64 * within;
                return Some(Duration::from_nanos(nanos as u64));
            }
            below = upto;
        }
        Some(Duration::from_nanos(bounds[BUCKET_COUNT - 1]))
    }

    /// What was observed since `earlier`, a previous state of this cumulative histogram;
    /// `None` when a count went down (the histogram restarted in between).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Option<Self> {
        let mut counts = [0u64; BUCKET_COUNT + 1];
        for ((out, now), before) in counts.iter_mut().zip(&self.counts).zip(&earlier.counts) {
            *out = now.checked_sub(*before)?;
        }
        Some(Self {
            counts,
            sum_nanos: self.sum_nanos.checked_sub(earlier.sum_nanos)?,
        })
    }

    /// An empty histogram.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a histogram from raw parts, as decoded from the wire.
    #[must_use]
    pub fn from_parts(counts: [u64; BUCKET_COUNT + 1], sum_nanos: u128) -> Self {
        Self { counts, sum_nanos }
    }

    /// Records one round-trip time.
    pub fn observe(&mut self, rtt: Duration) {
        let nanos = duration_nanos(rtt);
        let bucket = bucket_bounds_nanos()
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(BUCKET_COUNT);
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.sum_nanos = self.sum_nanos.saturating_add(u128::from(nanos));
    }

    /// Adds every observation of `other` to this histogram.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
    }

    /// Number of observations.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .fold(0, |total, c| total.saturating_add(*c))
    }

    /// Sum of the observations in nanoseconds.
    #[must_use]
    pub fn sum_nanos(&self) -> u128 {
        self.sum_nanos
    }

    /// Sum of the observations in seconds (`_sum`).
    #[must_use]
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// Per-bucket counts, non-cumulative; the last entry is the overflow (+Inf) bucket.
    #[must_use]
    pub fn counts(&self) -> &[u64; BUCKET_COUNT + 1] {
        &self.counts
    }

    /// Cumulative counts for each finite `le` bound (the `_bucket` series); `+Inf` is [`Self::count`].
    #[must_use]
    pub fn cumulative_counts(&self) -> [u64; BUCKET_COUNT] {
        let mut running = 0u64;
        let mut out = [0; BUCKET_COUNT];
        for (slot, count) in out.iter_mut().zip(self.counts.iter()) {
            running = running.saturating_add(*count);
            *slot = running;
        }
        out
    }

    /// Whether nothing was observed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        let mut h = RttHistogram::new();
        assert_eq!(h.quantile(0.5), None);
        // Four RTTs in (100 µs, 200 µs]: the median is half way through that bucket.
        for _ in 0..4 {
            h.observe(Duration::from_micros(150));
        }
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(150)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_micros(200)));
        h.observe(Duration::from_secs(60));
        assert_eq!(
            h.quantile(1.0),
            Some(Duration::from_nanos(bucket_bounds_nanos()[18]))
        );
        assert_eq!(h.quantile(1.5), None);
    }

    #[test]
    fn since_is_what_was_added_and_none_after_a_restart() {
        let mut earlier = RttHistogram::new();
        earlier.observe(Duration::from_millis(1));
        let mut later = earlier.clone();
        later.observe(Duration::from_millis(20));
        let mut added = RttHistogram::new();
        added.observe(Duration::from_millis(20));
        assert_eq!(later.since(&earlier), Some(added));
        assert_eq!(earlier.since(&later), None);
    }

    #[test]
    fn bounds_are_the_go_exponential_buckets() {
        let secs = bucket_bounds_seconds();
        assert_eq!(secs[0], 0.00005);
        assert_eq!(secs[1], 0.0001);
        assert_eq!(secs[11], 0.1024);
        assert_eq!(secs[18], 13.1072);
    }

    #[test]
    fn upper_bounds_are_inclusive_like_prometheus_le() {
        let mut h = RttHistogram::new();
        h.observe(Duration::from_micros(50)); // exactly le=5e-05
        h.observe(Duration::from_nanos(50_001)); // just above: next bucket
        h.observe(Duration::from_secs(20)); // above every bound: +Inf only
        assert_eq!(h.counts()[0], 1);
        assert_eq!(h.counts()[1], 1);
        assert_eq!(h.counts()[BUCKET_COUNT], 1);
        assert_eq!(h.cumulative_counts()[18], 2);
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum_nanos(), 50_000 + 50_001 + 20_000_000_000);
    }

    fn histogram_strategy() -> impl Strategy<Value = RttHistogram> {
        proptest::collection::vec(0u64..30_000_000_000, 0..40).prop_map(|rtts| {
            let mut h = RttHistogram::new();
            rtts.into_iter()
                .for_each(|n| h.observe(Duration::from_nanos(n)));
            h
        })
    }

    proptest! {
        #[test]
        fn merge_is_associative(a in histogram_strategy(), b in histogram_strategy(), c in histogram_strategy()) {
            let mut left = a.clone();
            left.merge(&b);
            left.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut right = a.clone();
            right.merge(&bc);
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_commutative(a in histogram_strategy(), b in histogram_strategy()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn merging_equals_observing_everything_once(xs in proptest::collection::vec(0u64..30_000_000_000, 0..60), split in 0usize..60) {
            let split = split.min(xs.len());
            let mut whole = RttHistogram::new();
            xs.iter().for_each(|n| whole.observe(Duration::from_nanos(*n)));
            let (mut left, mut right) = (RttHistogram::new(), RttHistogram::new());
            xs[..split].iter().for_each(|n| left.observe(Duration::from_nanos(*n)));
            xs[split..].iter().for_each(|n| right.observe(Duration::from_nanos(*n)));
            left.merge(&right);
            prop_assert_eq!(&left, &whole);
            prop_assert_eq!(whole.count(), xs.len() as u64);
            prop_assert_eq!(whole.sum_nanos(), xs.iter().map(|n| u128::from(*n)).sum::<u128>());
        }

        #[test]
        fn cumulative_counts_never_decrease(h in histogram_strategy()) {
            let cumulative = h.cumulative_counts();
            prop_assert!(cumulative.windows(2).all(|w| w[0] <= w[1]));
            prop_assert!(cumulative[BUCKET_COUNT - 1] <= h.count());
        }
    }
}
