//! Which members of a region pair to leave out: the robust estimator's outlier test.
//!
//! A *member* is one source agent, or one target host, of a region pair in one window.
//! A member is an outlier when its loss (or failure) ratio, or its mean latency, sits further
//! from the median of all members than noise can explain. Outliers are left out of that pair's
//! gauges only when they are a strict minority and there are at least
//! [`RobustConfig::min_members`] members; so a fault every member sees is shown in full, and
//! with one or two agents per region the result is the plain pooled mean.

use std::time::Duration;

/// Tuning of the outlier test. The defaults are documented in `docs/aggregation.md`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RobustConfig {
    /// Fewest members a dimension needs before any is left out (3).
    pub min_members: usize,
    /// Smallest loss-ratio difference from the median that can make an outlier (0.05 = 5 points).
    pub ratio_floor: f64,
    /// Binomial z-score a ratio difference must exceed (4).
    pub ratio_z: f64,
    /// Smallest latency difference from the median that can make an outlier (1 ms).
    pub latency_floor: Duration,
    /// Smallest latency difference relative to the median that can make an outlier (0.5 = 50 %).
    pub latency_relative: f64,
    /// Multiple of the scaled median absolute deviation a difference must exceed (3).
    pub mad_multiple: f64,
}

impl Default for RobustConfig {
    fn default() -> Self {
        Self {
            min_members: 3,
            ratio_floor: 0.05,
            ratio_z: 4.0,
            latency_floor: Duration::from_millis(1),
            latency_relative: 0.5,
            mad_multiple: 3.0,
        }
    }
}

/// What the test knows of one member.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct MemberStats {
    /// Bad events (lost packets, failed probes).
    pub(crate) bad: u64,
    /// Trials (packets sent, probes made).
    pub(crate) trials: u64,
    /// Mean latency of its successful measurements, in seconds; `None` when it has none.
    pub(crate) latency_seconds: Option<f64>,
}

impl MemberStats {
    fn ratio(&self) -> Option<f64> {
        (self.trials > 0).then(|| self.bad as f64 / self.trials as f64)
    }
}

/// Consistency constant that turns a median absolute deviation into a standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;

/// Indices of the members to leave out; empty when fewer than `min_members` or when the
/// would-be outliers are not a strict minority.
pub(crate) fn outliers(members: &[MemberStats], config: &RobustConfig) -> Vec<usize> {
    if members.len() < config.min_members.max(1) {
        return Vec::new();
    }
    let mut flagged = vec![false; members.len()];
    flag_ratio_outliers(members, config, &mut flagged);
    flag_latency_outliers(members, config, &mut flagged);
    let count = flagged.iter().filter(|f| **f).count();
    if count * 2 >= members.len() {
        return Vec::new();
    }
    flagged
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.then_some(i))
        .collect()
}

fn flag_ratio_outliers(members: &[MemberStats], config: &RobustConfig, flagged: &mut [bool]) {
    // One buffer serves every median of this test (the ratios, their deviations, the trials).
    let mut buffer = Vec::with_capacity(members.len());
    let ratios = members.iter().filter_map(MemberStats::ratio);
    let (Some(reference), Some(spread)) = median_and_mad(ratios, &mut buffer) else {
        return;
    };
    let trials = members
        .iter()
        .filter(|m| m.trials > 0)
        .map(|m| m.trials as f64);
    let reference_trials = median_with(trials, &mut buffer).unwrap_or(1.0).max(1.0);
    for (member, flag) in members.iter().zip(flagged.iter_mut()) {
        let Some(ratio) = member.ratio() else {
            continue;
        };
        // The difference of two binomial ratios, each with its own variance: the median's
        // variance alone underestimates the noise when the median happens to sit low (three
        // members at 12 % true loss can read 2.7, 4.1 and 17.6 %, and must all be kept), while
        // a member failing where every other succeeds (variance 0 on both sides) stays an
        // outlier above the floor.
        let variance = ratio * (1.0 - ratio) / member.trials as f64
            + reference * (1.0 - reference) / reference_trials;
        let binomial = config.ratio_z * variance.sqrt();
        let threshold = config
            .ratio_floor
            .max(binomial)
            .max(config.mad_multiple * MAD_TO_SIGMA * spread);
        if (ratio - reference).abs() > threshold {
            *flag = true;
        }
    }
}

fn flag_latency_outliers(members: &[MemberStats], config: &RobustConfig, flagged: &mut [bool]) {
    let latencies = members.iter().filter_map(|m| m.latency_seconds);
    if latencies.clone().count() < config.min_members.max(1) {
        return;
    }
    let mut buffer = Vec::with_capacity(members.len());
    let (Some(reference), Some(spread)) = median_and_mad(latencies, &mut buffer) else {
        return;
    };
    let threshold = config
        .latency_floor
        .as_secs_f64()
        .max(config.latency_relative * reference)
        .max(config.mad_multiple * MAD_TO_SIGMA * spread);
    for (member, flag) in members.iter().zip(flagged.iter_mut()) {
        if member
            .latency_seconds
            .is_some_and(|latency| (latency - reference).abs() > threshold)
        {
            *flag = true;
        }
    }
}

/// Median of `values` (mean of the two middle ones for an even count), ignoring values that
/// are not finite; `None` when none is.
#[cfg(test)]
fn median(values: &[f64]) -> Option<f64> {
    median_with(
        values.iter().copied(),
        &mut Vec::with_capacity(values.len()),
    )
}

/// [`median`] of `values`, using `buffer` (cleared first) as scratch space.
fn median_with(values: impl Iterator<Item = f64>, buffer: &mut Vec<f64>) -> Option<f64> {
    buffer.clear();
    buffer.extend(values.filter(|v| v.is_finite()));
    if buffer.is_empty() {
        return None;
    }
    let mid = buffer.len() / 2;
    let even = buffer.len().is_multiple_of(2);
    // A selection, not a sort: `upper` is the value a sort would put at `mid`, and every value
    // in `lower` sorts at or before it, so their largest is the sorted `mid - 1`.
    let (lower, upper, _) = buffer.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    Some(match lower.iter().copied().max_by(f64::total_cmp) {
        Some(below) if even => f64::midpoint(below, upper),
        _ => upper,
    })
}

/// The median of `values` and their median absolute deviation from it, using `buffer` as
/// scratch space.
fn median_and_mad(
    values: impl Iterator<Item = f64> + Clone,
    buffer: &mut Vec<f64>,
) -> (Option<f64>, Option<f64>) {
    let Some(center) = median_with(values.clone(), buffer) else {
        return (None, None);
    };
    (
        Some(center),
        median_with(values.map(|v| (v - center).abs()), buffer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(bad: u64, trials: u64, latency_ms: Option<f64>) -> MemberStats {
        MemberStats {
            bad,
            trials,
            latency_seconds: latency_ms.map(|ms| ms / 1000.0),
        }
    }

    #[test]
    fn one_dead_member_of_three_is_an_outlier() {
        let members = [
            member(0, 192, Some(10.0)),
            member(192, 192, None),
            member(1, 192, Some(10.2)),
        ];
        assert_eq!(outliers(&members, &RobustConfig::default()), vec![1]);
    }

    #[test]
    fn a_fault_every_member_sees_is_no_outlier() {
        let members = [
            member(19, 192, Some(10.0)),
            member(20, 192, Some(10.0)),
            member(18, 192, Some(10.0)),
        ];
        assert!(outliers(&members, &RobustConfig::default()).is_empty());
    }

    #[test]
    fn two_members_are_never_filtered() {
        let members = [member(0, 192, Some(10.0)), member(192, 192, None)];
        assert!(outliers(&members, &RobustConfig::default()).is_empty());
    }

    #[test]
    fn a_slow_member_is_an_outlier() {
        let members = [
            member(0, 64, Some(10.0)),
            member(0, 64, Some(10.5)),
            member(0, 64, Some(40.0)),
            member(0, 64, Some(9.8)),
        ];
        assert_eq!(outliers(&members, &RobustConfig::default()), vec![2]);
    }

    #[test]
    fn noise_around_a_low_median_is_not_an_outlier() {
        // 12 % true loss over 74 packets: one member reads 13 lost, the others 3 and 2. The
        // median's variance (at 4 %) alone would call 13 an outlier.
        let members = [
            member(13, 74, Some(10.0)),
            member(3, 74, Some(10.0)),
            member(2, 74, Some(10.0)),
        ];
        assert!(outliers(&members, &RobustConfig::default()).is_empty());
    }

    #[test]
    fn a_half_split_is_ambiguous_and_filters_nothing() {
        let members = [
            member(0, 64, Some(1.0)),
            member(0, 64, Some(1.0)),
            member(64, 64, None),
            member(64, 64, None),
        ];
        assert!(outliers(&members, &RobustConfig::default()).is_empty());
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    /// The sort-based median the selection replaced: the reference it must match.
    fn sorted_median(values: &[f64]) -> Option<f64> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        Some(if sorted.len().is_multiple_of(2) {
            f64::midpoint(sorted[mid - 1], sorted[mid])
        } else {
            sorted[mid]
        })
    }

    /// Values with many ties, signed zeros and non-finite ones, as well as ordinary ones.
    fn awkward_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e3f64..1e3,
            (0u8..4).prop_map(f64::from),
            Just(0.0),
            Just(-0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
    }

    proptest! {
        /// The selection-based median and MAD give bit for bit what sorting gives.
        #[test]
        fn median_and_mad_match_the_sorting_reference(values in proptest::collection::vec(awkward_value(), 0..40)) {
            let bits = |v: Option<f64>| v.map(f64::to_bits);
            prop_assert_eq!(bits(median(&values)), bits(sorted_median(&values)));
            let reference_mad = sorted_median(&values).and_then(|center| {
                sorted_median(&values.iter().map(|v| (v - center).abs()).collect::<Vec<_>>())
            });
            let mut buffer = Vec::new();
            let (center, spread) = median_and_mad(values.iter().copied(), &mut buffer);
            prop_assert_eq!(bits(center), bits(sorted_median(&values)));
            prop_assert_eq!(bits(spread), bits(reference_mad));
        }

        /// Binomial noise alone (same true loss everywhere) almost never makes an outlier:
        /// members drawn within ±2.5 standard deviations of a common loss are all kept.
        #[test]
        fn binomial_noise_is_not_an_outlier(true_loss in 0.0f64..0.5, trials in 64u64..2000, offsets in proptest::collection::vec(-2.5f64..2.5, 3..12)) {
            let sd = (true_loss * (1.0 - true_loss) / trials as f64).sqrt();
            let members: Vec<MemberStats> = offsets
                .iter()
                .map(|z| {
                    let ratio = (true_loss + z * sd).clamp(0.0, 1.0);
                    member((ratio * trials as f64).round() as u64, trials, Some(10.0))
                })
                .collect();
            prop_assert!(outliers(&members, &RobustConfig::default()).is_empty());
        }

        /// Whatever the data, outliers are always a strict minority.
        #[test]
        fn outliers_are_a_strict_minority(stats in proptest::collection::vec((0u64..100, 1u64..100, proptest::option::of(0.0f64..100.0)), 0..12)) {
            let members: Vec<MemberStats> = stats.into_iter().map(|(bad, trials, lat)| member(bad.min(trials), trials, lat)).collect();
            let out = outliers(&members, &RobustConfig::default());
            prop_assert!(out.len() * 2 < members.len() || out.is_empty());
        }
    }
}
